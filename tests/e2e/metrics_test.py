"""GET /metrics of a real dropnet-server after a mixed load: promtool accepts the scrape, and the
counters move by exactly the calls made.

usage: metrics_test.py DROPNET_SERVER_BIN DROPNET_CLI_BIN SOURCE_DIR
"""

import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import observe_harness as h  # noqa: E402

SERVER_BIN, CLI_BIN, SOURCE = sys.argv[1:4]
PROMTOOL = shutil.which("promtool")

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset(labels)): value} of a scrape in Prometheus' text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.Server(SERVER_BIN, CLI_BIN)
        cls.inputs = os.path.join(cls.server.dir, "rows.csv")
        with open(cls.inputs, "w") as f:
            f.write(h.digits_rows(SOURCE, 5, with_labels=True))

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def scrape(self, token=h.PREDICT):
        status, body, headers = self.server.http("/metrics", token=token)
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"))
        return body.decode()

    def test_needs_a_token_unless_public(self):
        status, body, _ = self.server.http("/metrics", token=None)
        self.assertEqual(status, 401, body)
        status, _, _ = self.server.http("/metrics", token="not-a-known-token-at-all")
        self.assertEqual(status, 401)
        self.scrape(token=h.PREDICT)
        self.scrape(token=h.ADMIN)
        with h.Server(SERVER_BIN, CLI_BIN, ["--metrics-public"]) as public:
            status, body, _ = public.http("/metrics", token=None)
            self.assertEqual(status, 200)
            self.assertIn(b"process_start_time_seconds", body)
            # Only /metrics is public: the data still needs a token.
            self.assertEqual(public.http("/api/models", token=None)[0], 401)

    def test_mixed_load_moves_counters_exactly_and_promtool_accepts(self):
        s = self.server
        started = time.time()
        h.digits_model(s, SOURCE, epochs=2)
        before = parse(self.scrape())
        self.assertEqual(value(before, "dropnet_training_epochs_total", model="digits"), 2)
        self.assertEqual(value(before, "dropnet_models"), 1)
        self.assertEqual(value(before, "dropnet_model_versions", model="digits"), 3)
        self.assertEqual(value(before, "dropnet_requests_total", method="Train", model="digits",
                               code="OK"), 1)

        for _ in range(3):
            s.cli("predict", "digits", "--input", self.inputs, "--format", "json")
        s.cli("uncertainty", "digits", "--input", self.inputs, "--samples", "20", "--seed", "3",
              "--format", "json")
        bad = s.cli("models", "get", "no-such-model", check=False)
        self.assertNotEqual(bad.returncode, 0)
        too_many = s.cli("uncertainty", "digits", "--input", self.inputs, "--samples", "20000",
                         check=False)
        self.assertIn("RESOURCE_EXHAUSTED", too_many.stderr)
        denied = s.cli("models", "delete", "digits", token=h.PREDICT, check=False)
        self.assertNotEqual(denied.returncode, 0)
        s.cli("train", "digits", "--data", "digits", "--epochs", "1", "--seed", "2")

        text = self.scrape()
        after = parse(text)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(delta("dropnet_requests_total", method="Predict", model="digits",
                               code="OK"), 3)
        self.assertEqual(delta("dropnet_request_duration_seconds_count", method="Predict",
                               model="digits"), 3)
        self.assertEqual(delta("dropnet_requests_total", method="PredictUncertainty",
                               model="digits", code="OK"), 1)
        # An unknown model is not a label of its own.
        self.assertEqual(delta("dropnet_requests_total", method="GetModel", model="_other",
                               code="NOT_FOUND"), 1)
        self.assertEqual(delta("dropnet_requests_total", method="PredictUncertainty",
                               model="digits", code="RESOURCE_EXHAUSTED"), 1)
        self.assertFalse(any("no-such-model" in str(k) for k in after))
        # A call refused for its token is refused before its request is read: no model label.
        self.assertEqual(delta("dropnet_requests_total", method="DeleteModel", model="",
                               code="PERMISSION_DENIED"), 1)
        self.assertEqual(delta("dropnet_requests_total", method="Train", model="digits",
                               code="OK"), 1)
        # T of the calls that ran (the refused one never resolved its T).
        self.assertEqual(delta("dropnet_monte_carlo_samples_count",
                               method="PredictUncertainty"), 1)
        self.assertEqual(delta("dropnet_monte_carlo_samples_sum", method="PredictUncertainty"),
                         20)
        self.assertEqual(delta("dropnet_training_epochs_total", model="digits"), 1)
        self.assertEqual(value(after, "dropnet_model_versions", model="digits"), 4)
        # Histogram buckets are cumulative and end with +Inf = count.
        predict_buckets = sorted(
            (float(dict(k[1])["le"]), v) for k, v in after.items()
            if k[0] == "dropnet_request_duration_seconds_bucket"
            and dict(k[1]).get("method") == "Predict" and dict(k[1]).get("model") == "digits")
        self.assertEqual(predict_buckets[0][0], 0.00005)
        counts = [v for _, v in predict_buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(predict_buckets[-1], (float("inf"), value(
            after, "dropnet_request_duration_seconds_count", method="Predict", model="digits")))
        # Gauges and the process.
        self.assertEqual(value(after, "dropnet_trainings_running"), 0)
        self.assertEqual(value(after, "dropnet_calls_in_flight"), 0)
        self.assertEqual(value(after, "dropnet_queued_calls"), 0)
        store_bytes = sum(os.path.getsize(os.path.join(d, f))
                          for d, _, fs in os.walk(os.path.join(s.dir, "store")) for f in fs)
        self.assertEqual(value(after, "dropnet_store_bytes"), store_bytes)
        self.assertGreater(value(after, "process_cpu_seconds_total"), 0)
        self.assertGreater(value(after, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(after, "process_open_fds"), 3)
        start = value(after, "process_start_time_seconds")
        self.assertLess(abs(start - started), 60)

        if PROMTOOL is None:
            self.skipTest("promtool not found (Debian package prometheus)")
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
