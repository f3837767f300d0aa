"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven through python3-selenium) loads the page of a live dropnet-server with a trained model,
and the test checks what it renders against the server's JSON API: the models table, the
training curves (also while a training runs), the evaluation view with its reliability diagram,
and the uncertainty explorer. Screenshots of each view go to SCREENSHOT_DIR.

usage: dashboard_test.py DROPNET_SERVER_BIN DROPNET_CLI_BIN SOURCE_DIR SCREENSHOT_DIR
"""

import math
import os
import shutil
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import observe_harness as h  # noqa: E402

SERVER_BIN, CLI_BIN, SOURCE, SHOTS = sys.argv[1:5]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

if CHROMIUM is None or CHROMEDRIVER is None:
    print("SKIPPED: chromium or chromedriver is not installed (Debian packages chromium and "
          "chromium-driver)")
    sys.exit(77)  # ctest's SKIP_RETURN_CODE

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# Pixels of a canvas that are not transparent: a chart that drew something has many.
PAINTED = """
const c = arguments[0];
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
return n;"""


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(SHOTS, exist_ok=True)
        cls.server = h.Server(SERVER_BIN, CLI_BIN)
        h.digits_model(cls.server, SOURCE, epochs=3)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,1000", "--force-device-scale-factor=1"]:
            opts.add_argument(a)
        cls.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        cls.driver.set_script_timeout(30)
        cls.wait = WebDriverWait(cls.driver, 30)
        cls.driver.get(cls.server.url + "/")
        # The token goes into the page's form and its sessionStorage, never into a URL.
        cls.wait.until(lambda d: "HTTP 401" in d.find_element(By.ID, "status").text)
        cls.driver.find_element(By.ID, "token").send_keys(h.PREDICT)
        cls.driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        cls.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-model=digits]"))

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        cls.server.stop()

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def shot(self, name):
        path = os.path.join(SHOTS, name + ".png")
        self.driver.save_screenshot(path)
        self.assertGreater(os.path.getsize(path), 5000)

    def show(self, view):
        self.driver.find_element(By.CSS_SELECTOR, f".tab[data-view={view}]").click()

    def test_1_models_and_training_curves(self):
        d = self.driver
        self.show("models")
        self.assertEqual(self.js("return sessionStorage.getItem('dropnet-token')"), h.PREDICT)
        self.assertNotIn(h.PREDICT, d.current_url)
        model = self.server.api("/api/models/digits")["model"]
        row = d.find_element(By.CSS_SELECTOR, "tr[data-model=digits]")
        cell = lambda f: row.find_element(By.CSS_SELECTOR, f"[data-field={f}]")  # noqa: E731
        self.assertEqual(cell("version").text, model["version"])
        self.assertEqual(cell("versions").text, str(len(model["versions"])))
        self.assertEqual(cell("parameter_count").text, model["parameter_count"])
        self.assertEqual(cell("epochs").text, str(len(model["history"])))
        # The curves are the model's history, drawn.
        loss = [r["loss"] for r in model["history"]]
        drawn = self.js("return Chart.getChart('loss-chart').data.datasets[0].data")
        self.assertEqual(len(drawn), 3)
        for a, b in zip(drawn, loss):
            self.assertAlmostEqual(a, b, places=9)
        val = self.js("return Chart.getChart('metric-chart').data.datasets[1].data")
        for a, r in zip(val, model["history"]):
            self.assertAlmostEqual(a, r["val_metric"], places=9)
        for canvas in ("loss-chart", "metric-chart"):
            self.assertGreater(self.js(PAINTED, d.find_element(By.ID, canvas)), 1000)
        self.shot("models")

    def test_2_curves_grow_while_training(self):
        # A training of 4 more epochs; the page polls and its curve grows without a reload.
        self.show("models")
        t = threading.Thread(target=lambda: self.server.cli(
            "train", "digits", "--data", "digits", "--epochs", "4", "--seed", "3",
            "--validation-split", "0.2", "--batch-size", "16"))
        t.start()
        try:
            seen = set()

            def grown(_):
                n = self.js("return Chart.getChart('loss-chart').data.datasets[0].data.length")
                seen.add(n)
                return n == 7
            self.wait.until(grown)
        finally:
            t.join()
        self.assertEqual(max(seen), 7)
        history = self.server.api("/api/models/digits")["model"]["history"]
        drawn = self.js("return Chart.getChart('loss-chart').data.datasets[0].data")
        self.assertEqual(len(drawn), len(history))
        for a, r in zip(drawn, history):
            self.assertAlmostEqual(a, r["loss"], places=9)

    def test_3_evaluation_eval_beside_monte_carlo(self):
        d = self.driver
        self.show("evaluate")
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#eval-dataset option"))
        Select(d.find_element(By.ID, "eval-model")).select_by_value("digits")
        Select(d.find_element(By.ID, "eval-dataset")).select_by_value("digits")
        for field, v in (("eval-samples", "20"), ("eval-limit", "400"), ("eval-seed", "11")):
            e = d.find_element(By.ID, field)
            e.clear()
            e.send_keys(v)
        d.find_element(By.CSS_SELECTOR, "#eval-form button").click()
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "td[data-mode=monte_carlo]"))
        base = {"model": "digits", "dataset": "digits", "limit": "400"}
        want = {"eval": self.server.api("/api/evaluate", dict(base, mode="EVAL_MODE_EVAL")),
                "monte_carlo": self.server.api("/api/evaluate", dict(
                    base, mode="EVAL_MODE_MONTE_CARLO", samples=20, seed="11"))}
        for mode, resp in want.items():
            for metric in ("accuracy", "nll", "brier", "ece"):
                cell = d.find_element(By.CSS_SELECTOR,
                                      f"td[data-metric={metric}][data-mode={mode}]")
                self.assertAlmostEqual(float(cell.get_attribute("data-value")), resp[metric],
                                       places=12, msg=f"{mode} {metric}")
                self.assertEqual(cell.text, f"{resp[metric]:.4f}")
        # The reliability diagram: the bins' accuracies of both modes, drawn.
        sets = self.js("return Chart.getChart('reliability-chart').data.datasets"
                       ".map(s => s.data)")
        self.assertEqual(len(sets), 3)
        for drawn, mode in zip(sets[1:], ("eval", "monte_carlo")):
            bins = want[mode]["reliability"]
            self.assertEqual(len(bins), 15)
            for a, b in zip(drawn, bins):
                if int(b["count"]) == 0:
                    self.assertIsNone(a)
                else:
                    self.assertAlmostEqual(a, b["accuracy"], places=12)
        canvas = d.find_element(By.ID, "reliability-chart")
        self.assertGreater(self.js(PAINTED, canvas), 1000)
        self.shot("evaluation")

    def test_4_uncertainty_explorer(self):
        d = self.driver
        self.show("uncertainty")
        Select(d.find_element(By.ID, "unc-model")).select_by_value("digits")
        csv = os.path.join(self.server.dir, "upload.csv")
        with open(csv, "w") as f:
            f.write(h.digits_rows(SOURCE, 3))
        d.find_element(By.ID, "unc-file").send_keys(csv)  # the upload fills the text area
        self.wait.until(lambda d: d.find_element(By.ID, "unc-rows").get_attribute("value"))
        for field, v in (("unc-samples", "40"), ("unc-seed", "5")):
            e = d.find_element(By.ID, field)
            e.clear()
            e.send_keys(v)
        d.find_element(By.CSS_SELECTOR, "#unc-form button").click()
        self.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas.sample-hist"
                                                      "[data-samples]")) == 3)
        rows = [[float(x) for x in line.split(",")]
                for line in h.digits_rows(SOURCE, 3).splitlines()[1:]]
        want = self.server.api("/api/uncertainty", {
            "model": "digits", "inputs": {"shape": ["3", "64"], "values": sum(rows, [])},
            "samples": 40, "seed": "5", "return_samples": True})
        cards = d.find_elements(By.CSS_SELECTOR, ".row-card")
        self.assertEqual(len(cards), 3)
        for i, card in enumerate(cards):
            def field(name):
                return float(card.find_element(By.CSS_SELECTOR, f"[data-field={name}]")
                             .get_attribute("data-value"))
            for name in ("predictive_entropy", "expected_entropy", "mutual_information",
                         "variation_ratio"):
                self.assertAlmostEqual(field(name), want[name][i], places=6, msg=name)
            # Entropy = aleatoric + epistemic.
            self.assertAlmostEqual(field("predictive_entropy"),
                                   field("expected_entropy") + field("mutual_information"),
                                   places=5)
            k = want["predicted_class"][i]
            self.assertEqual(field("predicted_class"), k)
            self.assertAlmostEqual(field(f"mean_{k}"), want["mean"]["values"][i * 10 + k],
                                   places=6)
            # The histogram holds the T sampled probabilities of the predicted class.
            hist = card.find_element(By.CSS_SELECTOR, "canvas.sample-hist")
            self.assertEqual(hist.get_attribute("data-samples"), "40")
            counts = self.js("return Chart.getChart(arguments[0]).data.datasets[0].data", hist)
            t, n, c = (int(x) for x in want["samples"]["shape"])
            sampled = [want["samples"]["values"][(s * n + i) * c + k] for s in range(t)]
            expect = [0] * 20
            for p in sampled:
                expect[min(19, max(0, math.floor(p * 20)))] += 1
            self.assertEqual(counts, expect)
            self.assertGreater(self.js(PAINTED, hist), 200)
            # 64 inputs: the 8x8 image, drawn.
            img = card.find_element(By.CSS_SELECTOR, "canvas.row-image")
            self.assertEqual((img.get_attribute("width"), img.get_attribute("height")),
                             ("8", "8"))
            self.assertEqual(self.js(PAINTED, img), 64)
        self.shot("uncertainty")

    def test_5_no_console_errors(self):
        # Chromium's log of the page: no script errors, nothing blocked by the page's policy.
        try:
            logs = self.driver.get_log("browser")
        except Exception:  # noqa: BLE001 - a driver without the log endpoint
            self.skipTest("the driver offers no browser log")
        errors = [e for e in logs if e["level"] == "SEVERE" and "401" not in e["message"]]
        self.assertEqual(errors, [])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
