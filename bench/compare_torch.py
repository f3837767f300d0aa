#!/usr/bin/python3
"""The engine's workloads beside PyTorch, in one run, on the same data and the same threads.

  DROPNET_BUILD_DIR=build /usr/bin/python3 bench/compare_torch.py [--threads 2] [--min-time 2]

Runs build/bin/dropnet-bench (Google Benchmark, JSON output) and the same workloads in PyTorch
(Debian's python3-torch; install libopenblas0-openmp for its fast BLAS): the Fashion-MNIST MLP
784-512-512-10 with dropout 0.5 trained with Adam at batch 128 (samples/s), evaluated at batch 1
(latency) and batch 256 (samples/s), and Monte-Carlo dropout with T = 100 for one input, which
PyTorch computes either as a loop of 100 train-mode passes or as one pass over 100 copies. Prints
a table, then as its last line one JSON object of ratios (ours faster: ratio > 1). With --cnn the
table also has the CNN of `dropnet-experiment fashion-cnn` trained at batch 128.
"""
import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn

ROWS = 12800
CNN_ROWS = 1280  # BM_CnnTrain's epoch


def load_rows(data_dir):
    """The first ROWS training rows of Fashion-MNIST, as the C++ side reads them, or noise."""
    images = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    if os.path.exists(images):
        with gzip.open(images, "rb") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:ROWS]
        with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), "rb") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:ROWS]
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(1)
    return torch.rand(ROWS, 784, generator=g), torch.arange(ROWS) % 10


def cnn():
    """The CNN of dropnet-experiment fashion-cnn (BM_CnnTrain)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Dropout2d(0.1),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10))


def mlp():
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 512),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10))


def timed(fn, min_time):
    """Mean seconds per call of fn over at least min_time seconds, after a warm-up."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def train_rate(model, x, y, rows, min_time):
    """Samples/s of Adam epochs over the first `rows` rows at batch 128."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        model.train()
        perm = torch.randperm(rows)
        for i in range(0, rows, 128):
            idx = perm[i:i + 128]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()

    return rows / timed(epoch, max(min_time, 3))


def torch_side(x, y, min_time, with_cnn):
    model = mlp()
    res = {"train": train_rate(model, x, y, ROWS, min_time)}
    if with_cnn:
        res["cnn_train"] = train_rate(cnn(), x, y, CNN_ROWS, min_time)
    model.eval()
    x1, x256 = x[:1].clone(), x[:256].clone()
    with torch.no_grad():
        res["eval_b1"] = timed(lambda: torch.softmax(model(x1), 1), min_time)
        res["eval_b256"] = 256 / timed(lambda: torch.softmax(model(x256), 1), min_time)
        model.train()  # MC dropout: dropout on, no gradients

        def mc_loop():
            p = torch.stack([torch.softmax(model(x1), 1) for _ in range(100)])
            return p.mean(0), p.std(0)

        def mc_batched():
            p = torch.softmax(model(x1.expand(100, -1)), 1)
            return p.mean(0), p.std(0)

        res["mc_loop"] = timed(mc_loop, min_time)
        res["mc_batched"] = timed(mc_batched, min_time)
    return res


def ours(build_dir, threads, data_dir, min_time, with_cnn):
    exe = os.path.join(build_dir, "bin", "dropnet-bench")
    if not os.path.exists(exe):
        sys.exit(f"compare_torch: {exe} not found; build it (cmake --build {build_dir}) or set "
                 "DROPNET_BUILD_DIR")
    env = dict(os.environ, DROPNET_BENCH_THREADS=str(threads), DROPNET_DATA_DIR=data_dir)
    pattern = "BM_Mlp|BM_CnnTrain" if with_cnn else "BM_Mlp"
    out = subprocess.run([exe, f"--benchmark_filter={pattern}", "--benchmark_format=json",
                          f"--benchmark_min_time={min_time}"],
                         env=env, check=True, capture_output=True, text=True).stdout
    bench = {b["name"].split("/min_time")[0].replace("/real_time", ""): b
             for b in json.loads(out)["benchmarks"]}

    def seconds(name):
        b = bench[name]
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        return b["real_time"] * scale

    res = {"cnn_train": bench["BM_CnnTrain"]["samples_per_second"]} if with_cnn else {}
    return res | {
        "train": bench["BM_MlpTrain"]["samples_per_second"],
        "eval_b1": seconds("BM_MlpEval/1"),
        "eval_b256": bench["BM_MlpEval/256"]["samples_per_second"],
        "mc": seconds("BM_MlpMonteCarlo/100"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--data-dir", default=os.environ.get("DROPNET_DATA_DIR",
                                                         "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--cnn", action="store_true",
                    help="also train the CNN of fashion-cnn (a row of the table, not a ratio)")
    args = ap.parse_args()
    build_dir = os.environ.get("DROPNET_BUILD_DIR", "build")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_rows(args.data_dir)

    o = ours(build_dir, args.threads, args.data_dir, args.min_time, args.cnn)
    t = torch_side(x, y, args.min_time, args.cnn)
    ratios = {
        "train_ratio": o["train"] / t["train"],
        "eval_b1_ratio": t["eval_b1"] / o["eval_b1"],
        "eval_b256_ratio": o["eval_b256"] / t["eval_b256"],
        "mc_vs_torch_loop_ratio": t["mc_loop"] / o["mc"],
        "mc_vs_torch_batched_ratio": t["mc_batched"] / o["mc"],
    }
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    rows = [
        ("train MLP, batch 128 (samples/s)", o["train"], t["train"], ratios["train_ratio"]),
        ("eval batch 1 (us)", o["eval_b1"] * 1e6, t["eval_b1"] * 1e6, ratios["eval_b1_ratio"]),
        ("eval batch 256 (samples/s)", o["eval_b256"], t["eval_b256"], ratios["eval_b256_ratio"]),
        ("MC T=100, 1 input vs torch loop (us)", o["mc"] * 1e6, t["mc_loop"] * 1e6,
         ratios["mc_vs_torch_loop_ratio"]),
        ("MC T=100, 1 input vs torch batched (us)", o["mc"] * 1e6, t["mc_batched"] * 1e6,
         ratios["mc_vs_torch_batched_ratio"]),
    ]
    if args.cnn:
        rows.append(("train CNN, batch 128 (samples/s)", o["cnn_train"], t["cnn_train"],
                     o["cnn_train"] / t["cnn_train"]))
    print(f"| {'workload':40} | {'dropnet':>12} | {'pytorch':>12} | {'ratio':>6} |")
    print(f"|{'-' * 42}|{'-' * 14}|{'-' * 14}|{'-' * 8}|")
    for name, a, b, r in rows:
        print(f"| {name:40} | {a:12.1f} | {b:12.1f} | {r:6.2f} |")
    print(json.dumps({k: round(v, 3) for k, v in ratios.items()}))


if __name__ == "__main__":
    main()
