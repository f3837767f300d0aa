"""Active learning on digits with RankDataset: start from a few labelled rows, train, rank the
unlabelled pool by BALD (mutual information), label the top rows, retrain; against labelling
random rows. Several seeds, the same test rows and starting rows for both strategies.

As a test (ctest python_active_learning), it asserts that BALD's accuracy, averaged over the
rounds after the first acquisition and over the seeds, beats random's. As a script it prints the
learning curves as a Markdown table (docs/results.md):

    /usr/bin/python3 python/tests/test_active_learning.py [--build build]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

SEEDS = (1, 2, 3)
START, STEP, ROUNDS = 20, 20, 6  # 20 labelled rows, then 20 more a round: 20 .. 140
TEST_ROWS = 400
SAMPLES = 20  # Monte-Carlo passes per pool row
SPEC = {
    "inputShape": [64], "task": "TASK_CLASSIFICATION", "seed": 1,
    "layers": [{"type": "dense", "units": 128, "init": "he_uniform"}, {"type": "relu"},
               {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 10}],
}


def learning_curves(client, x: np.ndarray, y: np.ndarray) -> Dict[str, np.ndarray]:
    """Test accuracy after each round, [seeds, rounds + 1], for "bald" and "random"."""
    curves: Dict[str, List[List[float]]] = {"bald": [], "random": []}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        test, pool = order[:TEST_ROWS], order[TEST_ROWS:]
        start = rng.choice(len(pool), START, replace=False)
        client.upload("al-test", x[test], y[test], overwrite=True)
        client.upload("al-pool", x[pool], y[pool], overwrite=True)  # labels not read by rank
        for strategy in curves:
            pick = np.random.default_rng(1000 + seed)
            labelled = list(start)
            accuracy = []
            for round_ in range(ROUNDS + 1):
                rows = pool[labelled]
                client.upload("al-labelled", x[rows], y[rows], overwrite=True)
                try:
                    client.delete_model("al")
                except Exception:  # noqa: BLE001 - absent on the first round
                    pass
                client.create_model("al", SPEC)
                client.train("al", "al-labelled", epochs=60, batch_size=16, seed=seed,
                             learning_rate=0.003).wait()
                accuracy.append(client.evaluate("al", "al-test").accuracy)
                if round_ == ROUNDS:
                    break
                taken = set(labelled)
                if strategy == "bald":
                    r = client.rank("al", "al-pool", by="mutual_information",
                                    top=STEP + len(labelled), samples=SAMPLES, seed=seed)
                    new = [int(i) for i in r.indices if int(i) not in taken][:STEP]
                else:
                    free = np.array([i for i in range(len(pool)) if i not in taken])
                    new = [int(i) for i in pick.choice(free, STEP, replace=False)]
                labelled.extend(new)
            curves[strategy].append(accuracy)
    return {k: np.array(v) for k, v in curves.items()}


def load() -> tuple:
    data = np.loadtxt(Path(__file__).resolve().parents[2] / "data" / "digits.csv",
                      delimiter=",", skiprows=1)
    return (data[:, :-1] / 16.0).astype(np.float32), data[:, -1].astype(np.int64)


def area(curve: np.ndarray) -> float:
    """Mean accuracy over the rounds after the first acquisition and over the seeds."""
    return float(curve[:, 1:].mean())


def test_bald_beats_random(client):
    x, y = load()
    curves = learning_curves(client, x, y)
    bald, rand = area(curves["bald"]), area(curves["random"])
    print(markdown(curves))
    # Both start from the same rows and model: the first point is the same.
    np.testing.assert_array_equal(curves["bald"][:, 0], curves["random"][:, 0])
    assert bald > rand, f"BALD {bald:.4f} vs random {rand:.4f}"


def markdown(curves: Dict[str, np.ndarray]) -> str:
    lines = ["| labelled rows | BALD accuracy | random accuracy |", "|---|---|---|"]
    for i in range(ROUNDS + 1):
        lines.append(f"| {START + i * STEP} | {curves['bald'][:, i].mean():.4f} | "
                     f"{curves['random'][:, i].mean():.4f} |")
    lines.append(f"| mean after the first acquisition | {area(curves['bald']):.4f} | "
                 f"{area(curves['random']):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build", help="the build directory")
    args = parser.parse_args()
    os.environ["DROPNET_BUILD_DIR"] = str(Path(args.build).resolve())
    sys.path.insert(0, str(Path(args.build).resolve() / "python"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest  # noqa: E402
    import dropnet  # noqa: E402
    with tempfile.TemporaryDirectory() as tmp:
        server = conftest.Server(Path(tmp))
        try:
            with dropnet.Client(server.address, token="") as c:
                print(markdown(learning_curves(c, *load())))
        finally:
            server.stop()
