#!/usr/bin/python3
"""The peer service: dropnet.v1's Predict and PredictUncertainty served by PyTorch from Python.

  /usr/bin/python3 bench/peer_server.py --source HOST:PORT --model NAME [--listen 127.0.0.1:0]
      [--threads 2] [--workers 8] [--one-at-a-time] [--stubs build/python] [--token T]

What one would write to serve an MC-dropout MLP without dropnet: a grpcio server on a
ThreadPoolExecutor (--workers threads), PyTorch (Debian's python3-torch, --threads intra-op
threads), the model as an nn.Sequential. It copies one model from a running dropnet-server
(--source): its ModelInfo (GetModel, answered as is, so `dropnet` and `dropnet bench` see the same
model) and its weights (ExportModel to ONNX, read with the onnx module into torch.nn.Linear
layers), with the input transform the model applies (input_scale, input_standardization).

- Predict: the network without its dropout layers (eval mode), softmax for classification.
- PredictUncertainty: the input rows replicated T times in one batch through the network with its
  dropout layers in train mode, under torch.inference_mode(); mean, standard deviation (1/T),
  predictive and expected entropy, mutual information, variation ratio and the argmax of the mean
  for classification; mean, std, total variance (+ 1/tau), Gaussian interval for regression. The
  eval and Monte-Carlo networks share the Linear layers and never switch mode, so concurrent calls
  do not race on a train()/eval() flag. A request with a seed sets torch.manual_seed under a lock,
  so the same seed gives the same answer while no unseeded call samples at the same time (PyTorch
  has one global generator); without a seed, the global generator's state is used.
- --one-at-a-time: a lock around the forward passes, so that concurrent calls take turns instead
  of running an OpenMP team of --threads threads each on the same cores.
- grpc.health.v1 Check (SERVING), stubs generated at start-up from Debian's grpc-proto.

The dropnet.v1 modules come from the Python package's build (--stubs, default
$DROPNET_BUILD_DIR/python or build/python), or are generated at start-up with protoc and
grpc_python_plugin when that folder has none. The process prints "peer: serving on HOST:PORT"
on stderr once it accepts calls, with the OpenBLAS core it runs. OpenBLAS is chosen by the
environment (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) as bench/compare_torch.py does for its PyTorch
process: bench/peer_service_bench.sh starts this server with the best configuration.
"""
import argparse
import contextlib
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent
HEALTH_PROTO = Path("/usr/share/grpc-proto/grpc/health/v1/health.proto")


def generate(out, proto_root, protos):
    """protoc --python_out and --grpc_out (grpc_python_plugin) of protos into out."""
    plugin = os.environ.get("GRPC_PYTHON_PLUGIN", "/usr/bin/grpc_python_plugin")
    protoc = os.environ.get("PROTOC", "protoc")
    subprocess.run([protoc, f"-I{proto_root}", f"--python_out={out}", f"--grpc_out={out}",
                    f"--plugin=protoc-gen-grpc={plugin}"] + [str(p) for p in protos], check=True)


def load_stubs(stubs_dir):
    """(model_pb2, service_pb2, service_pb2_grpc, health_pb2, health_pb2_grpc)."""
    gen = tempfile.mkdtemp(prefix="dropnet-peer-stubs-")
    if not (Path(stubs_dir) / "dropnet" / "v1" / "service_pb2_grpc.py").exists():
        proto = SOURCE / "proto"
        generate(gen, proto, [proto / "dropnet/v1/model.proto", proto / "dropnet/v1/service.proto"])
        stubs_dir = gen
    sys.path.insert(0, str(stubs_dir))
    mods = [importlib.import_module(f"dropnet.v1.{m}")
            for m in ("model_pb2", "service_pb2", "service_pb2_grpc")]
    health = [None, None]
    if HEALTH_PROTO.exists():
        # Under a package of its own: grpc.health.v1's modules would be looked up in grpcio.
        (Path(gen) / "peer_health").mkdir()
        shutil.copy(HEALTH_PROTO, Path(gen) / "peer_health" / "health.proto")
        generate(gen, gen, [Path(gen) / "peer_health" / "health.proto"])
        sys.path.insert(0, gen)
        health = [importlib.import_module(f"peer_health.{m}")
                  for m in ("health_pb2", "health_pb2_grpc")]
    shutil.rmtree(gen, ignore_errors=True)  # imported: the files are no longer needed
    return mods + health


class Network:
    """The MLP of an ONNX graph as torch layers: eval and Monte-Carlo forms sharing weights."""

    def __init__(self, torch, onnx_bytes, info):
        import onnx
        from onnx import numpy_helper
        nn = torch.nn
        graph = onnx.load_from_string(onnx_bytes).graph
        init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        consts = {}
        for n in graph.node:
            if n.op_type == "Constant":
                consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        init.update(consts)
        eval_layers, mc_layers = [], []
        pre_mean = pre_scale = None
        pending_matmul = None
        for n in graph.node:
            op = n.op_type
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if op == "Constant":
                continue
            if op == "Sub" and not eval_layers:
                pre_mean = init[n.input[1]]
            elif op == "Div" and not eval_layers:
                pre_scale = init[n.input[1]]
            elif op == "Gemm":
                w = init[n.input[1]]
                w = w if attrs.get("transB", 0) else w.T
                b = init[n.input[2]] if len(n.input) > 2 else None
                lin = self._linear(torch, w, b)
                eval_layers.append(lin)
                mc_layers.append(lin)
            elif op == "MatMul":
                pending_matmul = init[n.input[1]].T
            elif op == "Add" and pending_matmul is not None:
                lin = self._linear(torch, pending_matmul, init[n.input[1]])
                pending_matmul = None
                eval_layers.append(lin)
                mc_layers.append(lin)
            elif op in ("Relu", "Tanh", "Sigmoid"):
                act = {"Relu": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid}[op]()
                eval_layers.append(act)
                mc_layers.append(act)
            elif op == "Dropout":
                ratio = attrs.get("ratio", 0.5)
                if len(n.input) > 1 and n.input[1]:
                    ratio = float(init[n.input[1]])
                mc_layers.append(nn.Dropout(float(ratio)))
            elif op in ("Softmax", "LogSoftmax", "Flatten", "Identity"):
                # Classification answers softmax probabilities whether the graph ends in one or not.
                continue
            else:
                raise ValueError(f"node '{n.name}' ({op}) is not supported by the peer server")
        if pending_matmul is not None:
            eval_layers.append(self._linear(torch, pending_matmul, None))
            mc_layers.append(eval_layers[-1])
        self.eval_net = nn.Sequential(*eval_layers).eval()
        self.mc_net = nn.Sequential(*mc_layers).train()
        self.stochastic = len(mc_layers) > len(eval_layers)
        scale = info.input_scale if info.input_scale not in (0.0, 1.0) else 1.0
        std = info.input_standardization
        mean = np.asarray(std.mean, np.float32) if len(std.mean) else pre_mean
        div = np.asarray(std.scale, np.float32) if len(std.scale) else pre_scale
        # x' = (x * input_scale - mean) / scale as one multiply and one add.
        self.mul = torch.full((1,), scale) if div is None else torch.from_numpy(
            (scale / div).astype(np.float32))
        self.add = None if mean is None else torch.from_numpy(
            (-mean / (1.0 if div is None else div)).astype(np.float32))
        ts = info.target_standardization
        self.y_mean = np.asarray(ts.mean, np.float32) if len(ts.mean) else None
        self.y_scale = np.asarray(ts.scale, np.float32) if len(ts.scale) else None

    @staticmethod
    def _linear(torch, w, b):
        """nn.Linear with w as [out, in]."""
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(np.asarray(b, np.float32).reshape(-1)))
        lin.requires_grad_(False)
        return lin

    def prepare(self, x):
        """The model's input transform."""
        return x * self.mul if self.add is None else x * self.mul + self.add


class Peer:
    """The dropnet.v1 handlers over one Network."""

    def __init__(self, torch, pb, info, net, one_at_a_time):
        self.torch, self.pb, self.info, self.net = torch, pb, info, net
        # --one-at-a-time: the calls take turns in PyTorch instead of each running its own
        # OpenMP team of --threads threads on the same cores.
        self.compute = threading.Lock() if one_at_a_time else contextlib.nullcontext()
        self.width = math.prod(info.spec.input_shape)
        self.classify = info.spec.task != pb["model"].TASK_REGRESSION
        self.seed_lock = threading.Lock()
        self.seed_rng = np.random.default_rng()

    # --- validation ---------------------------------------------------------------------------
    def _check(self, request, context):
        if request.model != self.info.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model}' not found")
        if request.version not in ("", str(self.info.version)):
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"model '{request.model}' has no version or label '{request.version}'")
        shape = list(request.inputs.shape)
        if not shape or any(d <= 0 for d in shape):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs.shape {shape}: every dimension must be > 0")
        rows, per_row = shape[0], math.prod(shape[1:])
        if per_row != self.width:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs.shape {shape}: model '{self.info.name}' takes {self.width} "
                          "values per row")
        x = np.asarray(request.inputs.values, dtype=np.float32)
        if x.size != rows * per_row:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs.values has {x.size} values, inputs.shape {shape} needs "
                          f"{rows * per_row}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs.values[{bad}] = {x[bad]} is not finite")
        return self.net.prepare(self.torch.from_numpy(x.reshape(rows, per_row)))

    @staticmethod
    def _tensor(msg, array):
        msg.shape.extend(array.shape)
        msg.values.extend(array.reshape(-1).tolist())

    # --- RPCs ---------------------------------------------------------------------------------
    def GetModel(self, request, context):
        if request.name != self.info.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.name}' not found")
        return self.pb["service"].GetModelResponse(model=self.info)

    def Predict(self, request, context):
        torch = self.torch
        x = self._check(request, context)
        with self.compute, torch.inference_mode():
            y = self.net.eval_net(x)
            y = torch.softmax(y, 1) if self.classify else y
        out = y.numpy()
        resp = self.pb["service"].PredictResponse(version=self.info.version,
                                                  task=self._task())
        if self.classify:
            resp.predicted_class.extend(out.argmax(1).tolist())
            resp.class_names.extend(self.info.class_names)
        else:
            out = self._target_units(out)
        self._tensor(resp.outputs, out)
        return resp

    def PredictUncertainty(self, request, context):
        x = self._check(request, context)
        t = request.samples or 50
        if t < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"samples = {request.samples}: must be >= 0 (0 means 50)")
        if not self.net.stochastic:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model '{self.info.name}' has no stochastic layer: use Predict")
        interval = request.interval or 0.95
        if not 0 < interval < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"interval = {request.interval}: must be in (0, 1)")
        if request.HasField("seed"):
            seed = request.seed
            with self.seed_lock:
                self.torch.manual_seed(seed)
                p = self._samples(x, t)
        else:
            seed = int(self.seed_rng.integers(0, 2**63))
            p = self._samples(x, t)
        resp = self.pb["service"].PredictUncertaintyResponse(
            num_samples=t, seed=seed, version=self.info.version, task=self._task())
        if self.classify:
            self._classification(p, resp)
        else:
            self._regression(p, interval, resp)
        if request.return_samples:
            self._tensor(resp.samples, p)
        return resp

    def _samples(self, x, t):
        """[T, rows, outputs]: one pass over the rows replicated T times, dropout on."""
        torch = self.torch
        rows = x.shape[0]
        with self.compute, torch.inference_mode():
            y = self.net.mc_net(x.repeat(t, 1))
            if self.classify:
                y = torch.softmax(y, 1)
        return y.reshape(t, rows, -1).numpy()

    def _classification(self, p, resp):
        mean = p.mean(0)
        std = p.std(0)  # 1/T
        logp = np.log(np.clip(p, 1e-30, None))
        predictive = -(mean * np.log(np.clip(mean, 1e-30, None))).sum(1)
        expected = -(p * logp).sum(2).mean(0)
        votes = p.argmax(2)  # [T, rows]
        classes = p.shape[2]
        counts = np.stack([np.bincount(votes[:, r], minlength=classes)
                           for r in range(votes.shape[1])])
        self._tensor(resp.mean, mean)
        self._tensor(resp.stddev, std)
        resp.predictive_entropy.extend(predictive.tolist())
        resp.expected_entropy.extend(expected.tolist())
        resp.mutual_information.extend((predictive - expected).tolist())
        resp.variation_ratio.extend((1.0 - counts.max(1) / p.shape[0]).tolist())
        resp.predicted_class.extend(mean.argmax(1).tolist())
        resp.class_names.extend(self.info.class_names)

    def _regression(self, y, interval, resp):
        y = self._target_units(y)
        mean, var = y.mean(0), y.var(0)
        tau = self.info.spec.tau
        total = var + (1.0 / tau if tau > 0 else 0.0) * (
            1.0 if self.net.y_scale is None else self.net.y_scale ** 2)
        z = statistics.NormalDist().inv_cdf((1 + interval) / 2)
        self._tensor(resp.mean, mean)
        self._tensor(resp.stddev, np.sqrt(var))
        self._tensor(resp.total_variance, total)
        self._tensor(resp.lower, mean - z * np.sqrt(total))
        self._tensor(resp.upper, mean + z * np.sqrt(total))

    def _target_units(self, y):
        if self.net.y_scale is not None:
            y = y * self.net.y_scale
        if self.net.y_mean is not None:
            y = y + self.net.y_mean
        return y

    def _task(self):
        return self.pb["model"].TASK_CLASSIFICATION if self.classify else \
            self.pb["model"].TASK_REGRESSION


class _Context:
    """A stand-in for grpc.ServicerContext when the handlers are timed in process."""

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def time_stages(peer, pb, samples, seconds=1.0):
    """{stage: median microseconds} of one Predict of one row and one PredictUncertainty of one row
    with T = samples, in this process: what a call costs the peer beyond gRPC's transport."""
    import time
    rng = np.random.default_rng(1)
    scale = peer.info.input_scale if peer.info.input_scale not in (0.0, 1.0) else 1.0
    row = (rng.random((1, peer.width)) / scale).astype(np.float32)
    svc = pb["service"]
    predict = svc.PredictRequest(model=peer.info.name)
    Peer._tensor(predict.inputs, row)
    unc = svc.PredictUncertaintyRequest(model=peer.info.name, samples=samples)
    Peer._tensor(unc.inputs, row)
    wire_p, wire_u = predict.SerializeToString(), unc.SerializeToString()
    ctx = _Context()
    torch = peer.torch
    x = peer._check(predict, ctx)

    def eval_forward():
        with torch.inference_mode():
            return torch.softmax(peer.net.eval_net(x), 1)

    p = peer._samples(x, samples)
    stages = {
        "Predict: parse the request": lambda: svc.PredictRequest.FromString(wire_p),
        "Predict: inputs to a tensor (check, transform)": lambda: peer._check(predict, ctx),
        "Predict: eval forward and softmax": eval_forward,
        "Predict: whole handler, answer serialised":
            lambda: peer.Predict(predict, ctx).SerializeToString(),
        "PredictUncertainty: Monte-Carlo forward (T copies in one batch)":
            lambda: peer._samples(x, samples),
        "PredictUncertainty: statistics":
            lambda: peer._classification(p, svc.PredictUncertaintyResponse()),
        "PredictUncertainty: whole handler, answer serialised":
            lambda: peer.PredictUncertainty(svc.PredictUncertaintyRequest.FromString(wire_u),
                                            ctx).SerializeToString(),
    }
    out = {}
    for name, fn in stages.items():
        fn()
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e6
    return out


def fetch_model(pb, source, model, token):
    """(ModelInfo, ONNX bytes) of the model's current version on a dropnet-server."""
    meta = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(source) as channel:
        stub = pb["service_grpc"].DropnetStub(channel)
        info = stub.GetModel(pb["service"].GetModelRequest(name=model), metadata=meta,
                             timeout=30).model
        export = stub.ExportModel(pb["service"].ExportModelRequest(
            name=model, version=info.version, format=pb["service"].MODEL_FORMAT_ONNX),
            metadata=meta, timeout=60)
    return info, export.onnx_model


def openblas_core():
    """The OpenBLAS core torch loaded (bench/compare_torch.py's openblas_core)."""
    sys.path.insert(0, str(HERE))
    try:
        from compare_torch import openblas_core as core
        return core()
    finally:
        sys.path.remove(str(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="dropnet-server HOST:PORT to copy the model from")
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", default=os.environ.get("DROPNET_TOKEN", ""))
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--workers", type=int, default=8, help="the gRPC ThreadPoolExecutor's threads")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="one call computes at a time (a lock around the forward passes)")
    ap.add_argument("--time-stages", type=int, metavar="T",
                    help="print the median time of each stage of a call (PredictUncertainty with "
                         "T samples) in this process as JSON, and exit instead of serving")
    ap.add_argument("--stubs", default=str(Path(os.environ.get(
        "DROPNET_BUILD_DIR", SOURCE / "build")) / "python"))
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    model_pb2, service_pb2, service_grpc, health_pb2, health_grpc = load_stubs(args.stubs)
    pb = {"model": model_pb2, "service": service_pb2, "service_grpc": service_grpc}
    info, onnx_bytes = fetch_model(pb, args.source, args.model, args.token)
    peer = Peer(torch, pb, info, Network(torch, onnx_bytes, info), args.one_at_a_time)
    if args.time_stages:
        print(json.dumps({"openblas_core": openblas_core(), "threads": torch.get_num_threads(),
                          "stages_us": time_stages(peer, pb, args.time_stages)}))
        return

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    servicer = type("PeerDropnet", (service_grpc.DropnetServicer,), {
        "GetModel": lambda self, r, c: peer.GetModel(r, c),
        "Predict": lambda self, r, c: peer.Predict(r, c),
        "PredictUncertainty": lambda self, r, c: peer.PredictUncertainty(r, c)})()
    service_grpc.add_DropnetServicer_to_server(servicer, server)
    if health_grpc is not None:
        serving = health_pb2.HealthCheckResponse.SERVING
        health = type("PeerHealth", (health_grpc.HealthServicer,), {
            "Check": lambda self, r, c: health_pb2.HealthCheckResponse(status=serving)})()
        health_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"peer: cannot listen on {args.listen}")
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"peer: model '{info.name}' version {info.version} from {args.source}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, OpenBLAS core "
          f"{openblas_core()}, {args.workers} gRPC workers", file=sys.stderr)
    print(f"peer: serving on {host}:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
