"""The peer service of bench/peer_server.py (grpcio + PyTorch) answers dropnet.v1 as the `dropnet`
command line and `dropnet bench` expect: a real dropnet-server with a digits model trained one
epoch (standardised inputs), the peer copying it, then the CLI against both. Predict of the peer
equals dropnet's (the same weights and input transform in eval mode); its PredictUncertainty has
the answer's shape and fields, a spread > 0 (the dropout masks really sample), the same answer for
the same seed and another for another seed; `dropnet bench` counts no error against it.

usage: peer_server_test.py DROPNET_SERVER_BIN DROPNET_CLI_BIN SOURCE_DIR BUILD_DIR
Exit 77 (skipped) when /usr/bin/python3 lacks torch, grpc or onnx.
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

try:
    import grpc  # noqa: F401
    import onnx  # noqa: F401
    import torch  # noqa: F401
except ImportError as e:
    print(f"skipped: {e} (python3-torch, python3-grpcio and python3-onnx are needed)")
    sys.exit(77)

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import observe_harness as h  # noqa: E402

SERVER_BIN, CLI_BIN, SOURCE, BUILD = sys.argv[1:5]
ROWS = 5


class PeerServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.Server(SERVER_BIN, CLI_BIN)
        h.digits_model(cls.server, SOURCE, epochs=1)
        cls.rows = os.path.join(cls.server.dir, "rows.csv")
        with open(cls.rows, "w") as f:
            f.write(h.digits_rows(SOURCE, ROWS))
        cls.peer_log = os.path.join(cls.server.dir, "peer.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
        cls.peer_out = open(cls.peer_log, "w")
        cls.peer = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(SOURCE, "bench", "peer_server.py"), "--source",
             f"127.0.0.1:{cls.server.grpc_port}", "--model", "digits", "--token", h.ADMIN,
             "--threads", "1", "--workers", "4", "--stubs", os.path.join(BUILD, "python")],
            stdout=cls.peer_out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        cls.peer_target = None
        while time.time() < deadline and cls.peer_target is None:
            with open(cls.peer_log) as f:
                m = re.search(r"peer: serving on (\S+)", f.read())
            cls.peer_target = m and m.group(1)
            if cls.peer.poll() is not None:
                break
            time.sleep(0.1)
        if cls.peer_target is None:
            with open(cls.peer_log) as f:
                log = f.read()
            cls.tearDownClass()
            raise RuntimeError("the peer server did not start:\n" + log)

    @classmethod
    def tearDownClass(cls):
        if cls.peer.poll() is None:
            cls.peer.terminate()
            cls.peer.wait(timeout=30)
        cls.peer_out.close()
        cls.server.stop()

    def cli(self, target, *args, check=True):
        env = dict(os.environ, DROPNET_SERVER=target, DROPNET_TOKEN=h.PREDICT)
        r = subprocess.run([CLI_BIN, *args], env=env, capture_output=True, text=True, timeout=120)
        if check:
            self.assertEqual(r.returncode, 0, f"dropnet {' '.join(args)}: {r.stderr}")
        return r

    def json_rows(self, target, *args):
        return json.loads(self.cli(target, *args, "-o", "json").stdout)

    def uncertainty(self, seed):
        return self.json_rows(self.peer_target, "uncertainty", "digits", "--input", self.rows,
                              "--samples", "100", "--seed", str(seed))

    def test_predict_equals_dropnet(self):
        ours = self.json_rows(f"127.0.0.1:{self.server.grpc_port}", "predict", "digits",
                              "--input", self.rows)
        peer = self.json_rows(self.peer_target, "predict", "digits", "--input", self.rows)
        self.assertEqual(len(peer), ROWS)
        for a, b in zip(ours, peer):
            self.assertEqual(len(b["probabilities"]), 10)
            self.assertEqual(a["version"], b["version"])
            self.assertEqual(a["class"], b["class"])
            np.testing.assert_allclose(b["probabilities"], a["probabilities"], atol=2e-5)

    def test_uncertainty_samples_the_masks(self):
        first = self.uncertainty(seed=7)
        self.assertEqual(len(first), ROWS)
        for r in first:
            p = np.array(r["probabilities"])
            self.assertEqual(p.shape, (10,))
            self.assertAlmostEqual(p.sum(), 1.0, places=4)
            self.assertEqual(r["prediction"], int(p.argmax()))
            self.assertGreater(r["std"], 0.0, r)
            self.assertGreaterEqual(r["mutual_information"], -1e-6)  # float32 rounding
            self.assertLessEqual(r["mutual_information"], r["entropy"] + 1e-5)
            self.assertAlmostEqual(r["entropy"] - r["expected_entropy"], r["mutual_information"],
                                   places=5)
            self.assertTrue(0.0 <= r["variation_ratio"] < 1.0)
        self.assertEqual(first, self.uncertainty(seed=7))
        self.assertNotEqual([r["probabilities"] for r in first],
                            [r["probabilities"] for r in self.uncertainty(seed=8)])

    def test_bench_counts_no_error(self):
        r = self.cli(self.peer_target, "bench", "digits", "--workloads",
                     "health,predict,uncertainty", "--concurrency", "2", "--count", "20",
                     "--warmup", "0", "--json", "--quiet")
        results = json.loads(r.stdout)["results"]
        self.assertEqual(len(results), 3)
        for x in results:
            self.assertEqual(x["errors"], 0, x)
            self.assertEqual(x["calls"], 20, x)

    def test_unknown_model_is_not_found(self):
        r = self.cli(self.peer_target, "predict", "nope", "--input", self.rows, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("NOT_FOUND", r.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
