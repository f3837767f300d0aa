#!/usr/bin/python3
"""dropnet-server against the peer service (bench/peer_server.py: grpcio + PyTorch), one bench.

  flock /tmp/dropnet-build.lock /usr/bin/python3 bench/peer_service_bench.py \
      [--rounds 3] [--concurrency 1,8] [--duration 3] [--warmup 1] [--samples 100] \
      [--peer-config '2 threads, OpenBLAS SkylakeX'] [--peer-workers 8] [--peer-all-at-once]
      [--no-peer] [--out DIR]

Starts dropnet-server on a temporary store on loopback with --example (Fashion-MNIST imported,
the example MLP 784-512-512-10 with dropout 0.5 trained for one epoch), then the peer server,
which copies that model (GetModel and ExportModel to ONNX) into PyTorch. The peer runs in one of
bench/compare_torch.py's PyTorch configurations (TORCH_CONFIGS: its thread count and OpenBLAS
environment; default SkylakeX kernels on 2 threads when the CPU has AVX-512, Haswell's
otherwise, OPENBLAS_L2_SIZE unset), on 8 gRPC threads, with its calls taking turns in PyTorch
(peer_server.py --one-at-a-time; side by side, --peer-all-at-once, every call's OpenMP team
competes for the same cores: see docs/performance.md); dropnet-server runs in the caller's
environment with its defaults. Then, --rounds times, dropnet first and the peer second,

  dropnet bench fashion-mlp --workloads health,predict,uncertainty --samples T \
      --concurrency 1,8 --duration D --warmup W --data fashion-test.csv --json

against each (the same binary, the same requests: the first 1,000 Fashion-MNIST test images).
Prints the CPU, the medians over the rounds of p50 and calls/s per workload and concurrency, and
the ratios (peer p50 / dropnet p50, dropnet calls/s / peer calls/s: above 1, dropnet is ahead).
Every round's bench JSON and both servers' logs go to --out (default: a temporary directory that
is removed). Then the peer's stages of one call, timed in its own process
(peer_server.py --time-stages). The last line is one JSON object of the medians. --no-peer
measures dropnet-server alone (a baseline at other concurrency levels).
"""
import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_torch import TORCH_CONFIGS, cpu_model, peer_env  # noqa: E402  the peer's configurations

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_rows(path, input_scale, limit=1000):
    """The first `limit` Fashion-MNIST test images as a CSV, in the units the model takes."""
    raw = gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read()
    _, n, h, w = struct.unpack(">IIII", raw[:16])
    raw_pixels = abs(input_scale * 255 - 1) < 1e-6  # the model scales 0..255 itself
    with open(path, "w") as out:
        out.write(",".join(f"p{i}" for i in range(h * w)) + "\n")
        for i in range(min(n, limit)):
            px = raw[16 + i * h * w:16 + (i + 1) * h * w]
            out.write(",".join(str(b) if raw_pixels else "%g" % (b / 255) for b in px) + "\n")


def wait_for(log_path, pattern, proc, seconds, what):
    """The first match of pattern in the log, waiting while proc runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = Path(log_path).read_text(errors="replace")
        m = re.search(pattern, text)
        if m:
            return m
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode}):\n{text}")
        time.sleep(0.1)
    sys.exit(f"{what}: no '{pattern}' after {seconds} s:\n{Path(log_path).read_text()}")


def default_config():
    flags = Path("/proc/cpuinfo").read_text()
    return ("2 threads, OpenBLAS SkylakeX" if " avx512f" in flags else
            "2 threads, OpenBLAS Haswell")


def peer_command(args, source):
    """The peer's command line and environment (its PyTorch configuration)."""
    threads, changes = TORCH_CONFIGS[args.peer_config]
    env = peer_env(changes)
    cmd = ["/usr/bin/python3", str(HERE / "peer_server.py"), "--source", source, "--model",
           args.model, "--threads", str(threads), "--workers", str(args.peer_workers),
           "--stubs", str(Path(args.build) / "python")]
    cmd += [] if args.peer_all_at_once else ["--one-at-a-time"]
    return cmd, env


def start_peer(args, source, log):
    cmd, env = peer_command(args, source)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    m = wait_for(log.name, r"peer: serving on (\S+)", proc, 120, "peer_server.py")
    return proc, m.group(1)


def peer_stages(args, source):
    """The peer's stages of one call, timed in its own process (peer_server.py --time-stages)."""
    cmd, env = peer_command(args, source)
    out = subprocess.run(cmd + ["--time-stages", str(args.samples)], env=env, check=True,
                         capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    print(f"\npeer, in process, one row (peer_server.py --time-stages {args.samples}; OpenBLAS "
          f"core {res['openblas_core']}, {res['threads']} threads): median per stage\n")
    print("| stage | µs |\n|---|---|")
    for name, us in res["stages_us"].items():
        print(f"| {name} | {us:,.1f} |")
    return res


def bench(args, target, rows_csv):
    cmd = [str(Path(args.build) / "bin" / "dropnet"), "bench", args.model, "--workloads",
           "health,predict,uncertainty", "--samples", str(args.samples), "--concurrency",
           args.concurrency, "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--data", rows_csv, "--json", "--quiet"]
    env = dict(os.environ, DROPNET_SERVER=target)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if not out.stdout.strip():
        sys.exit(f"dropnet bench against {target} failed ({out.returncode}): {out.stderr}")
    return json.loads(out.stdout)


def summarize(runs):
    """{(workload, concurrency): {side: {"p50_ms": median, "calls_per_second": median, ...}}}."""
    table = {}
    for side, reports in runs.items():
        for report in reports:
            for r in report["results"]:
                key = (r["workload"], r["concurrency"])
                cell = table.setdefault(key, {}).setdefault(
                    side, {"name": r["name"], "p50": [], "cps": [], "errors": 0})
                cell["p50"].append(r["p50_ms"])
                cell["cps"].append(r["calls_per_second"])
                cell["errors"] += r["errors"]
    for sides in table.values():
        for cell in sides.values():
            cell["p50_ms"] = statistics.median(cell["p50"])
            cell["calls_per_second"] = statistics.median(cell["cps"])
    return table


def print_table(table, rounds):
    print(f"\nmedians of {rounds} alternating rounds (p50 in ms; ratios above 1: dropnet ahead)\n")
    print("| workload | concurrency | dropnet p50 | peer p50 | peer / dropnet p50 | dropnet calls/s "
          "| peer calls/s | dropnet / peer calls/s | errors (dropnet, peer) |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for (workload, c), sides in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        d, p = sides["dropnet"], sides["peer"]
        row = {"workload": workload, "name": d["name"], "concurrency": c,
               "dropnet_p50_ms": d["p50_ms"], "peer_p50_ms": p["p50_ms"],
               "dropnet_calls_per_second": d["calls_per_second"],
               "peer_calls_per_second": p["calls_per_second"],
               "p50_ratio": p["p50_ms"] / d["p50_ms"],
               "throughput_ratio": d["calls_per_second"] / max(p["calls_per_second"], 1e-9),
               "dropnet_all": {"p50_ms": d["p50"], "calls_per_second": d["cps"]},
               "peer_all": {"p50_ms": p["p50"], "calls_per_second": p["cps"]}}
        summary.append(row)
        print(f"| {d['name']} | {c} | {d['p50_ms']:.3f} | {p['p50_ms']:.3f} | "
              f"{row['p50_ratio']:.2f}x | {d['calls_per_second']:,.0f} | "
              f"{p['calls_per_second']:,.0f} | {row['throughput_ratio']:.2f}x | "
              f"{d['errors']}, {p['errors']} |")
    return summary


def print_dropnet(table, rounds):
    """The dropnet side alone (--no-peer)."""
    print(f"\nmedians of {rounds} rounds, dropnet-server alone\n")
    print("| workload | concurrency | p50 ms | calls/s | errors |\n|---|---|---|---|---|")
    rows = []
    for (workload, c), sides in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        d = sides["dropnet"]
        rows.append({"workload": workload, "concurrency": c, "p50_ms": d["p50_ms"],
                     "calls_per_second": d["calls_per_second"], "all_p50_ms": d["p50"],
                     "all_calls_per_second": d["cps"]})
        print(f"| {d['name']} | {c} | {d['p50_ms']:.3f} | {d['calls_per_second']:,.0f} | "
              f"{d['errors']} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("DROPNET_BUILD_DIR", "build"))
    ap.add_argument("--model", default="fashion-mlp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--samples", type=int, default=100, help="T of PredictUncertainty")
    ap.add_argument("--peer-config", default=default_config(), choices=list(TORCH_CONFIGS),
                    help="PyTorch configuration of the peer (bench/compare_torch.py)")
    ap.add_argument("--peer-workers", type=int, default=8,
                    help="the peer's gRPC ThreadPoolExecutor threads")
    ap.add_argument("--peer-all-at-once", action="store_true",
                    help="the peer's calls run in PyTorch side by side, each with its own OpenMP "
                         "team (default: they take turns, peer_server.py --one-at-a-time)")
    ap.add_argument("--no-peer", action="store_true", help="measure dropnet-server alone")
    ap.add_argument("--out", help="keep the bench JSON and the logs here")
    args = ap.parse_args()
    for binary in ("dropnet-server", "dropnet"):
        if not (Path(args.build) / "bin" / binary).exists():
            sys.exit(f"{args.build}/bin/{binary} is missing: build it first")

    tmp = Path(tempfile.mkdtemp(prefix="dropnet-peer-bench-"))
    out = Path(args.out) if args.out else tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        server_log = open(out / "dropnet-server.log", "w")
        server = subprocess.Popen(
            [str(Path(args.build) / "bin" / "dropnet-server"), "--listen", "127.0.0.1:0",
             "--store", str(tmp / "store"), "--example", "--data-root", "/usr/share/datasets"],
            stdout=server_log, stderr=subprocess.STDOUT)
        procs.append(server)
        port = wait_for(server_log.name, r"\(port (\d+)\)", server, 60, "dropnet-server").group(1)
        wait_for(server_log.name, r"example: model 'fashion-mlp' is trained and ready", server, 300,
                 "dropnet-server")
        source = f"127.0.0.1:{port}"
        info = json.loads(subprocess.run(
            [str(Path(args.build) / "bin" / "dropnet"), "models", "get", args.model, "-o", "json"],
            env=dict(os.environ, DROPNET_SERVER=source), check=True, capture_output=True,
            text=True).stdout)
        rows_csv = str(tmp / "fashion-test.csv")
        write_rows(rows_csv, float(info.get("inputScale", 1.0)))
        sides = [("dropnet", source)]
        print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        print(f"dropnet-server: defaults, model version {info.get('version')}, input scale "
              f"{info.get('inputScale', 1.0)}")
        if not args.no_peer:
            peer, peer_target = start_peer(args, source, open(out / "peer-server.log", "w"))
            procs.append(peer)
            sides.append(("peer", peer_target))
            for line in (out / "peer-server.log").read_text().splitlines():
                if line.startswith("peer: model"):
                    print(line)
            turns = "calls side by side" if args.peer_all_at_once else "one call at a time"
            print(f"peer: config '{args.peer_config}', {args.peer_workers} gRPC workers, {turns} "
                  "in PyTorch")
        print(f"each side: dropnet bench {args.model} --workloads health,predict,uncertainty "
              f"--samples {args.samples} --concurrency {args.concurrency} --duration "
              f"{args.duration} --warmup {args.warmup} --data fashion-test.csv")
        runs = {side: [] for side, _ in sides}
        for r in range(args.rounds):
            for side, target in sides:
                report = bench(args, target, rows_csv)
                (out / f"bench-{side}-{r + 1}.json").write_text(json.dumps(report, indent=1))
                runs[side].append(report)
            print(f"# round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        if args.no_peer:
            print(json.dumps({"cpu": cpu_model(), "rows": print_dropnet(summarize(runs),
                                                                        args.rounds)}))
            return
        summary = print_table(summarize(runs), args.rounds)
        stages = peer_stages(args, source)
        print(json.dumps({"cpu": cpu_model(), "peer_config": args.peer_config, "rows": summary,
                          "peer_stages_us": stages["stages_us"]}))
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
