#!/usr/bin/python3
"""The engine's workloads beside PyTorch and ONNX Runtime, each peer at its best, in its own process.

  flock /tmp/dropnet-build.lock /usr/bin/python3 bench/compare_torch.py \
      --bench build/bin/dropnet-bench [--rounds 3] [--min-time 1]

Three sides on the same data (the first 12,800 Fashion-MNIST training rows, or noise):
- dropnet: build/bin/dropnet-bench (Google Benchmark, JSON), DROPNET_BENCH_THREADS=--threads, in
  the caller's environment;
- PyTorch (Debian's python3-torch with libopenblas0-openmp, /usr/bin/python3): this script again
  (--torch-worker) in a child process, once per configuration (TORCH_CONFIGS): OPENBLAS_L2_SIZE
  removed and OPENBLAS_CORETYPE removed (OpenBLAS detects the core itself: on a CPU whose model it
  does not know, such as a virtual "Intel Xeon Processor", it falls back to Prescott's SSE3 kernels),
  set to SkylakeX (AVX-512) at 1 and 2 threads, or set to Haswell (AVX2). Each child prints the
  OpenBLAS core it runs (openblas_get_corename of the libopenblas torch loaded); the best
  configuration per workload is reported;
- ONNX Runtime (onnxruntime-node 1.16.3, `npm install --ignore-scripts onnxruntime-node@1.16.3` in
  --ort-dir): bench/ort_bench.js on the same MLP exported from PyTorch in eval mode, 2 intra-op
  threads, eval at batch 1 and 256.

The sides alternate --rounds times; the table holds medians and ratios dropnet/peer (> 1: dropnet
faster). Workloads: the MLP 784-512-512-10 with dropout 0.5 trained with Adam at batch 128
(samples/s), evaluated at batch 1 (latency) and 256 (samples/s), and Monte-Carlo dropout T = 100
for one input, which PyTorch computes as one pass over 100 stacked copies or as a loop of 100
passes. Beside the table, the cores' multiply-add peak (dropnet-bench's BM_FmaPeak, same rounds)
and each side's batch-256 GFLOP/s as a share of it: the ceiling no kernel passes; and each round's
ratio against that round's best PyTorch configuration, to show the spread. The last line is
one JSON object of the medians and ratios.
"""
import argparse
import gzip
import json
import os
import platform
import subprocess
import statistics
import sys
import tempfile
import time

import numpy as np

ROWS = 12800
# Multiply-adds of one row through the MLP 784-512-512-10, as flops (2 a multiply-add).
MLP_FLOPS_PER_ROW = 2 * (784 * 512 + 512 * 512 + 512 * 10)
CNN_ROWS = 1280  # BM_CnnTrain's epoch


def load_rows(data_dir):
    """The first ROWS training rows of Fashion-MNIST, as the C++ side reads them, or noise."""
    images = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    if os.path.exists(images):
        with gzip.open(images, "rb") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:ROWS]
        with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), "rb") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:ROWS]
        return x.astype(np.float32) / 255.0, y.astype(np.int64)
    rng = np.random.default_rng(1)
    return rng.random((ROWS, 784), dtype=np.float32), np.arange(ROWS, dtype=np.int64) % 10


def cnn(nn):
    """The CNN of dropnet-experiment fashion-cnn (BM_CnnTrain)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Dropout2d(0.1),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10))


def mlp(nn):
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


def openblas_core():
    """openblas_get_corename() of the libopenblas this process loaded (through torch)."""
    import ctypes
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "libopenblas" in line}
    for lib in sorted(libs):
        fn = getattr(ctypes.CDLL(lib), "openblas_get_corename", None)
        if fn:
            fn.restype = ctypes.c_char_p
            return f"{fn().decode()} ({os.path.basename(lib)})"
    return "no libopenblas loaded"


def torch_train_rate(torch, model, x, y, rows, min_time):
    """Samples/s of Adam epochs over the first `rows` rows at batch 128.

    PyTorch's fastest loop here: one gather of the shuffled epoch, then contiguous slices of it
    (no index_select per step), gradients freed rather than zeroed, and Adam's multi-tensor
    (foreach) update instead of one small kernel per parameter."""
    nn = torch.nn
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    x, y = x[:rows], y[:rows]

    def epoch():
        model.train()
        perm = torch.randperm(rows)
        xs, ys = x[perm], y[perm]
        for i in range(0, rows, 128):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs[i:i + 128]), ys[i:i + 128]).backward()
            opt.step()

    return rows / timed(epoch, min_time)


def torch_worker(args):
    """One PyTorch measurement in this process; prints a JSON object."""
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xn, yn = load_rows(args.data_dir)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    nn = torch.nn
    model = mlp(nn)
    res = {"core": openblas_core(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "train": torch_train_rate(torch, model, x, y, ROWS, max(args.min_time, 2))}
    if args.cnn:
        res["cnn_train"] = torch_train_rate(torch, cnn(nn), x, y, CNN_ROWS, max(args.min_time, 2))
    model.eval()
    x1, x256 = x[:1].clone(), x[:256].clone()
    with torch.inference_mode():
        res["eval_b1"] = timed(lambda: torch.softmax(model(x1), 1), args.min_time)
        res["eval_b256"] = 256 / timed(lambda: torch.softmax(model(x256), 1), args.min_time)
        model.train()  # MC dropout: dropout on, no gradients

        def mc_loop():
            p = torch.stack([torch.softmax(model(x1), 1) for _ in range(100)])
            return p.mean(0), p.std(0)

        def mc_batched():
            p = torch.softmax(model(x1.expand(100, -1)), 1)
            return p.mean(0), p.std(0)

        res["mc_loop"] = timed(mc_loop, args.min_time)
        res["mc_batched"] = timed(mc_batched, args.min_time)
    if args.export:
        export_onnx(torch, model, x1, args.export)
    print(json.dumps(res))


def export_onnx(torch, model, x1, prefix):
    """The MLP as ONNX, in eval mode (PREFIX-eval.onnx) and in training mode (PREFIX-train.onnx)."""
    model.eval()
    common = dict(input_names=["x"], output_names=["logits"], opset_version=13,
                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    torch.onnx.export(model, x1, prefix + "-eval.onnx", **common)
    model.train()
    torch.onnx.export(model, x1, prefix + "-train.onnx", training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, **common)
    model.eval()


# name: (threads, environment changes) of each PyTorch configuration tried.
TORCH_CONFIGS = {
    "2 threads, OpenBLAS auto": (2, {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}),
    "1 thread, OpenBLAS SkylakeX": (1, {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_L2_SIZE": None}),
    "2 threads, OpenBLAS SkylakeX": (2, {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_L2_SIZE": None}),
    "2 threads, OpenBLAS Haswell": (2, {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": None}),
}


def peer_env(changes):
    """This process's environment with a configuration's changes (None: the variable unset)."""
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_torch(args, threads, changes, export=None):
    env = peer_env(changes)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--threads", str(threads),
           "--min-time", str(args.min_time), "--data-dir", args.data_dir]
    cmd += ["--cnn"] if args.cnn else []
    cmd += ["--export", export] if export else []
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(args):
    if not os.path.exists(args.bench):
        sys.exit(f"compare_torch: {args.bench} not found; build the dropnet-bench target or pass "
                 "--bench")
    env = dict(os.environ, DROPNET_BENCH_THREADS=str(args.threads), DROPNET_DATA_DIR=args.data_dir)
    pattern = "BM_Mlp|BM_FmaPeak|BM_CnnTrain" if args.cnn else "BM_Mlp|BM_FmaPeak"
    out = subprocess.run([args.bench, f"--benchmark_filter={pattern}", "--benchmark_format=json",
                          f"--benchmark_min_time={args.min_time}"],
                         env=env, check=True, capture_output=True, text=True).stdout
    bench = {b["name"].split("/min_time")[0].replace("/real_time", ""): b
             for b in json.loads(out)["benchmarks"]}

    def seconds(name):
        b = bench[name]
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        return b["real_time"] * scale

    res = {"cnn_train": bench["BM_CnnTrain"]["samples_per_second"]} if args.cnn else {}
    peak = {f"fma_peak_{t}": bench[f"BM_FmaPeak/threads:{t}"]["GFLOPS"]
            for t in (1, 2) if f"BM_FmaPeak/threads:{t}" in bench}
    return res | peak | {
        "train": bench["BM_MlpTrain"]["samples_per_second"],
        "eval_b1": seconds("BM_MlpEval/1"),
        "eval_b256": bench["BM_MlpEval/256"]["samples_per_second"],
        "mc": seconds("BM_MlpMonteCarlo/100"),
    }


def run_ort(args, model, inputs, copies=0):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ort_bench.js")
    cmd = ["node", script, model, inputs, "--threads", str(args.ort_threads),
           "--min-time", str(args.min_time)] + (["--copies", str(copies)] if copies else [])
    env = dict(os.environ, NODE_PATH=os.path.join(args.ort_dir, "node_modules"))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def speedup(ours, peer, higher):
    """dropnet's lead over the peer (> 1: dropnet faster) for a rate (higher) or a time."""
    return ours / peer if higher else peer / ours


# workload: (label, key in dropnet's results, key in the peer's, higher is better)
WORKLOADS = [
    ("train MLP, batch 128 (samples/s)", "train", "train", True),
    ("eval batch 1 (us per call)", "eval_b1", "eval_b1", False),
    ("eval batch 256 (samples/s)", "eval_b256", "eval_b256", True),
    ("MC T=100, 1 input; torch batched (us)", "mc", "mc_batched", False),
    ("MC T=100, 1 input; torch loop (us)", "mc", "mc_loop", False),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=os.path.join(os.environ.get("DROPNET_BUILD_DIR", "build"),
                                                    "bin", "dropnet-bench"))
    ap.add_argument("--threads", type=int, default=2, help="dropnet's threads")
    ap.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime's intra-op threads")
    ap.add_argument("--ort-dir", default="build/peers",
                    help="folder with node_modules/onnxruntime-node (empty: no ORT side)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--data-dir", default=os.environ.get("DROPNET_DATA_DIR",
                                                         "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--cnn", action="store_true", help="also train the CNN of fashion-cnn")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    tmp = tempfile.mkdtemp(prefix="dropnet-peers-")
    x, _ = load_rows(args.data_dir)
    inputs = os.path.join(tmp, "rows.f32")
    x[:256].tofile(inputs)
    with_ort = bool(args.ort_dir) and os.path.isdir(os.path.join(args.ort_dir, "node_modules",
                                                                 "onnxruntime-node"))
    results = {"dropnet": [], "ort": []} | {name: [] for name in TORCH_CONFIGS}
    for r in range(args.rounds):
        results["dropnet"].append(ours(args))
        for i, (name, (threads, changes)) in enumerate(TORCH_CONFIGS.items()):
            export = os.path.join(tmp, "mlp") if r == 0 and i == 0 else None
            results[name].append(run_torch(args, threads, changes, export))
        if with_ort:
            results["ort"].append(run_ort(args, os.path.join(tmp, "mlp-eval.onnx"), inputs))
        print(f"# round {r + 1} of {args.rounds} done", file=sys.stderr)

    def median(side, key):
        return statistics.median(run[key] for run in results[side])

    first = results[next(iter(TORCH_CONFIGS))][0]
    print(f"# CPU: {cpu_model()}; dropnet {args.threads} threads; torch {first['torch']}; "
          f"ONNX Runtime {args.ort_threads} intra-op threads; medians of {args.rounds} "
          "alternating rounds")
    for name in TORCH_CONFIGS:
        print(f"# torch config '{name}': OpenBLAS core {results[name][0]['core']}, "
              f"torch.get_num_threads() = {results[name][0]['threads']}")
    print(f"| {'workload':38} | {'dropnet':>9} | {'PyTorch best':>12} | {'torch config':28} "
          f"| {'x torch':>7} | {'ORT':>9} | {'x ORT':>6} |")
    print("|" + "|".join("-" * w for w in (40, 11, 14, 30, 9, 11, 8)) + "|")
    summary = {}
    for label, ok, pk, higher in WORKLOADS:
        o = median("dropnet", ok)
        per = {name: median(name, pk) for name in TORCH_CONFIGS}
        best = (max if higher else min)(per, key=per.get)
        t = per[best]
        ratio = speedup(o, t, higher)
        scale = 1 if higher else 1e6
        row = f"| {label:38} | {o * scale:9.1f} | {t * scale:12.1f} | {best:28} | {ratio:7.2f} |"
        summary[pk] = {"dropnet": o, "torch": t, "torch_config": best, "ratio_torch": ratio,
                       "torch_all": per}
        if with_ort and pk in ("eval_b1", "eval_b256"):
            e = median("ort", pk)
            ratio_ort = speedup(o, e, higher)
            row += f" {e * scale:9.1f} | {ratio_ort:6.2f} |"
            summary[pk] |= {"ort": e, "ratio_ort": ratio_ort}
        else:
            row += f" {'':9} | {'':6} |"
        print(row)
    # The spread: each round's ratio against that round's best PyTorch configuration.
    for label, ok, pk, higher in WORKLOADS:
        ratios = []
        for r in range(args.rounds):
            o = results["dropnet"][r][ok]
            t = (max if higher else min)(results[name][r][pk] for name in TORCH_CONFIGS)
            ratios.append(speedup(o, t, higher))
        print(f"# {label}, dropnet / PyTorch by round: " + ", ".join(f"{x:.2f}" for x in ratios))
        summary[pk]["ratio_torch_rounds"] = ratios
    if "fma_peak_2" in results["dropnet"][0]:
        # The ceiling of batch 256: multiply-adds a row, against the cores' FMA peak measured in
        # the same rounds (BM_FmaPeak: register-only 512-bit FMAs, 2 threads).
        peak1, peak = median("dropnet", "fma_peak_1"), median("dropnet", "fma_peak_2")
        rate = {"dropnet": summary["eval_b256"]["dropnet"], "PyTorch": summary["eval_b256"]["torch"]}
        rate |= {"ORT": summary["eval_b256"]["ort"]} if "ort" in summary["eval_b256"] else {}
        gflops = {side: r * MLP_FLOPS_PER_ROW / 1e9 for side, r in rate.items()}
        print(f"# FMA peak (BM_FmaPeak): {peak1:.1f} GFLOP/s on 1 thread, "
              f"{peak:.1f} on 2 (medians)")
        print("# eval batch 256, GFLOP/s (" + f"{MLP_FLOPS_PER_ROW:,} flops a row) and share of the "
              "2-thread peak: " + ", ".join(f"{side} {g:.1f} ({100 * g / peak:.0f}%)"
                                            for side, g in gflops.items()))
        need = {"1.5x PyTorch": 1.5 * gflops["PyTorch"]}
        need |= {"1.25x ORT": 1.25 * gflops["ORT"]} if "ORT" in gflops else {}
        print("# the batch-256 targets would need: " + ", ".join(
            f"{name} {g:.1f} GFLOP/s ({100 * g / peak:.0f}% of the peak)" for name, g in need.items()))
        summary["fma_peak"] = {"1": peak1, "2": peak}
        summary["eval_b256"]["gflops"] = gflops
    if args.cnn:
        o, t = median("dropnet", "cnn_train"), max(median(n, "cnn_train") for n in TORCH_CONFIGS)
        print(f"| {'train CNN, batch 128 (samples/s)':38} | {o:9.1f} | {t:12.1f} | {'':28} "
              f"| {o / t:7.2f} | {'':9} | {'':6} |")
    if with_ort:
        for mode in ("eval", "train"):
            d = run_ort(args, os.path.join(tmp, f"mlp-{mode}.onnx"), inputs, copies=100)
            print(f"# ORT, {mode}-mode export, 100 copies of one input: {d['distinct_rows']} "
                  "distinct output rows")
            summary[f"ort_distinct_rows_{mode}_export"] = d["distinct_rows"]
    print(json.dumps(summary))


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
