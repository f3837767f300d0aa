"""The Open Inference Protocol (KServe v2) end to end, from clients no one wrote for dropnet:
a Python gRPC client generated here by protoc and grpc_python_plugin from
proto/inference/grpc_predict_v2.proto, and curl with JSON. A real dropnet-server on free ports
(gRPC and HTTP) with a temporary store; a digits model created and trained briefly through
dropnet.v1; then eval and Monte-Carlo answers of both transports compared with dropnet.v1's
Predict and PredictUncertainty for the same rows and seed (bitwise for gRPC's fp32, and for JSON
after reading its shortest round-trip decimals back as float32)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

SOURCE = Path(os.environ.get("DROPNET_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("DROPNET_BUILD_DIR", SOURCE / "build"))
PROTOC = os.environ.get("PROTOC", "protoc")
PLUGIN = os.environ.get("GRPC_PYTHON_PLUGIN", "/usr/bin/grpc_python_plugin")
TOKEN = "predict-token-for-oip-test"
ADMIN = "admin-token-for-the-oip-test"

sys.path.insert(0, str(BUILD / "python"))
from dropnet.v1 import model_pb2, service_pb2, service_pb2_grpc  # noqa: E402  the reference
import dropnet  # noqa: E402


@pytest.fixture(scope="module")
def oip(tmp_path_factory):
    """The inference modules, generated now from the .proto."""
    out = tmp_path_factory.mktemp("stubs")
    proto_dir = SOURCE / "proto"
    subprocess.run([PROTOC, f"-I{proto_dir}", f"--python_out={out}", f"--grpc_out={out}",
                    f"--plugin=protoc-gen-grpc={PLUGIN}",
                    str(proto_dir / "inference" / "grpc_predict_v2.proto")], check=True)
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("inference.grpc_predict_v2_pb2")
    pb2_grpc = importlib.import_module("inference.grpc_predict_v2_pb2_grpc")
    return pb2, pb2_grpc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    log_path = d / "server.log"
    log = open(log_path, "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPNET_")}
    env["DROPNET_PREDICT_TOKEN"] = TOKEN
    env["DROPNET_ADMIN_TOKEN"] = ADMIN
    proc = subprocess.Popen(
        [str(BUILD / "bin" / "dropnet-server"), "--listen", "127.0.0.1:0", "--store",
         str(d / "store"), "--threads", "1", "--http-listen", "127.0.0.1:0",
         "--http-max-body", "200000", "--drain-delay", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    ports = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(ports) < 2:
        text = log_path.read_text(errors="replace")
        for kind, port in re.findall(r"serving (\S+) .*?\(port (\d+)\)", text):
            ports["http" if kind == "HTTP" else "grpc"] = int(port)
        assert proc.poll() is None, text
        time.sleep(0.02)
    assert len(ports) == 2, log_path.read_text()
    # A model trained briefly through dropnet.v1.
    client = dropnet.Client(f"127.0.0.1:{ports['grpc']}", token=ADMIN)
    client.create_model("digits", str(SOURCE / "examples" / "digits_mlp.json"))
    client.upload("digits", str(SOURCE / "data" / "digits.csv"))
    client.train("digits", "digits", epochs=2, standardize=True).wait()
    yield {"grpc": f"127.0.0.1:{ports['grpc']}", "http": f"http://127.0.0.1:{ports['http']}",
           "proc": proc, "log": log_path}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
    log.close()


ROWS = np.loadtxt(SOURCE / "data" / "digits.csv", delimiter=",", skiprows=1,
                  dtype=np.float32)[:5, :-1]
AUTH = [("authorization", f"Bearer {TOKEN}")]


def v1_stub(server):
    return service_pb2_grpc.DropnetStub(grpc.insecure_channel(server["grpc"]))


def v1_tensor(rows):
    return model_pb2.Tensor(shape=list(rows.shape), values=rows.ravel().tolist())


def infer_request(pb2, rows, raw=False, **params):
    req = pb2.ModelInferRequest(model_name="digits", id="r1")
    t = req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    if raw:
        req.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        t.contents.fp32_contents.extend(rows.ravel().tolist())
    for k, v in params.items():
        if isinstance(v, float):
            req.parameters[k].double_param = v
        else:
            req.parameters[k].int64_param = v
    return req


def output(resp, name, raw):
    i = [o.name for o in resp.outputs].index(name)
    o = resp.outputs[i]
    if raw:
        dtype = "<f4" if o.datatype == "FP32" else "<i8"
        return np.frombuffer(resp.raw_output_contents[i], dtype=dtype).reshape(list(o.shape))
    if o.datatype == "INT64":
        return np.array(o.contents.int64_contents, dtype=np.int64).reshape(list(o.shape))
    return np.array(o.contents.fp32_contents, dtype=np.float32).reshape(list(o.shape))


def curl(server, path, body=None, token=TOKEN, extra=()):
    cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", f"{server['http']}{path}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    cmd += list(extra)
    r = subprocess.run(cmd, input=body.encode() if body is not None else None,
                       capture_output=True, check=True)
    text, code = r.stdout.decode().rsplit("\n", 1)
    return int(code), json.loads(text)


def test_health_and_metadata(server, oip):
    pb2, pb2_grpc = oip
    stub = pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server["grpc"]))
    assert stub.ServerLive(pb2.ServerLiveRequest()).live
    assert stub.ServerReady(pb2.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb2.ServerMetadataRequest(), metadata=AUTH)
    assert meta.name == "dropnet" and "mc_dropout" in meta.extensions
    assert stub.ModelReady(pb2.ModelReadyRequest(name="digits"), metadata=AUTH).ready
    m = stub.ModelMetadata(pb2.ModelMetadataRequest(name="digits"), metadata=AUTH)
    assert m.inputs[0].datatype == "FP32" and list(m.inputs[0].shape) == [-1, 64]
    assert [o.name for o in m.outputs][:2] == ["probabilities", "predicted_class"]
    assert list(m.outputs[0].shape) == [-1, 10]
    assert json.loads(m.parameters["stochastic_layers"].string_param) == ["2:dropout"]
    # digits.csv's labels are numbers, so the classes have no names (inference_convert_test
    # checks named ones).
    assert json.loads(m.parameters["class_names"].string_param) == []
    assert m.parameters["task"].string_param == "classification"
    # REST
    assert curl(server, "/v2/health/ready", token=None) == (200, {"ready": True})
    code, body = curl(server, "/v2/models/digits")
    assert code == 200 and body["inputs"][0]["shape"] == [-1, 64]
    assert body["parameters"]["stochastic_layers"] == ["2:dropout"]
    code, body = curl(server, "/v2/models/digits/versions/" + m.versions[0] + "/ready")
    assert (code, body["ready"]) == (200, True)


def test_eval_and_mc_equal_dropnet_v1_over_grpc(server, oip):
    pb2, pb2_grpc = oip
    stub = pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server["grpc"]))
    v1 = v1_stub(server)
    ref = v1.Predict(service_pb2.PredictRequest(model="digits", inputs=v1_tensor(ROWS)),
                     metadata=AUTH)
    ref_probs = np.array(ref.outputs.values, dtype=np.float32).reshape(5, 10)
    for raw in (False, True):
        r = stub.ModelInfer(infer_request(pb2, ROWS, raw=raw), metadata=AUTH)
        assert output(r, "probabilities", raw).tobytes() == ref_probs.tobytes()
        assert list(output(r, "predicted_class", raw)) == list(ref.predicted_class)
        assert r.parameters["version"].int64_param == ref.version
    u = v1.PredictUncertainty(service_pb2.PredictUncertaintyRequest(
        model="digits", inputs=v1_tensor(ROWS), samples=40, seed=1234), metadata=AUTH)
    for raw in (False, True):
        r = stub.ModelInfer(infer_request(pb2, ROWS, raw=raw, mc_samples=40, seed=1234),
                            metadata=AUTH)
        assert r.parameters["seed"].int64_param == 1234
        assert r.parameters["mc_samples"].int64_param == 40
        assert output(r, "probabilities", raw).tobytes() == \
            np.array(u.mean.values, dtype=np.float32).tobytes()
        assert output(r, "std", raw).tobytes() == \
            np.array(u.stddev.values, dtype=np.float32).tobytes()
        for name in ("predictive_entropy", "mutual_information", "variation_ratio"):
            assert output(r, name, raw).tobytes() == \
                np.array(getattr(u, name), dtype=np.float32).tobytes(), name
        assert list(output(r, "predicted_class", raw)) == list(u.predicted_class)


def test_rest_infer_equals_dropnet_v1(server):
    v1 = v1_stub(server)
    u = v1.PredictUncertainty(service_pb2.PredictUncertaintyRequest(
        model="digits", inputs=v1_tensor(ROWS), samples=30, seed=99), metadata=AUTH)
    body = json.dumps({"id": "c1", "parameters": {"mc_samples": 30, "seed": 99},
                       "inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32",
                                   "data": ROWS.tolist()}],
                       "outputs": [{"name": "probabilities"}, {"name": "mutual_information"},
                                   {"name": "samples"}]})
    code, r = curl(server, "/v2/models/digits/infer", body)
    assert code == 200, r
    assert r["id"] == "c1" and r["parameters"]["seed"] == 99
    out = {o["name"]: o for o in r["outputs"]}
    assert list(out) == ["probabilities", "mutual_information", "samples"]
    probs = np.array(out["probabilities"]["data"], dtype=np.float32)
    assert probs.tobytes() == np.array(u.mean.values, dtype=np.float32).tobytes()
    mi = np.array(out["mutual_information"]["data"], dtype=np.float32)
    assert mi.tobytes() == np.array(u.mutual_information, dtype=np.float32).tobytes()
    assert out["samples"]["shape"] == [30, 5, 10]
    # Eval mode, and the version pinned.
    ref = v1.Predict(service_pb2.PredictRequest(model="digits", inputs=v1_tensor(ROWS)),
                     metadata=AUTH)
    body = json.dumps({"inputs": [{"name": "x", "shape": [5, 64], "datatype": "FP32",
                                   "data": ROWS.ravel().tolist()}]})
    code, r = curl(server, f"/v2/models/digits/versions/{ref.version}/infer", body)
    assert code == 200, r
    probs = np.array(r["outputs"][0]["data"], dtype=np.float32)
    assert probs.tobytes() == np.array(ref.outputs.values, dtype=np.float32).tobytes()


def test_errors_map_to_codes(server, oip):
    pb2, pb2_grpc = oip
    stub = pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server["grpc"]))
    with pytest.raises(grpc.RpcError) as e:
        req = infer_request(pb2, ROWS)
        req.model_name = "nope"
        stub.ModelInfer(req, metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(infer_request(pb2, ROWS[:, :10]), metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected [-1, 64]" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        req = infer_request(pb2, ROWS)
        req.model_version = "999"
        stub.ModelInfer(req, metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no version 999" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(infer_request(pb2, ROWS))  # no token
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # REST
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                                   "data": [1, 2, 3]}]})
    code, r = curl(server, "/v2/models/digits/infer", body)
    assert code == 400 and "expected [-1, 64]" in r["error"]
    assert curl(server, "/v2/models/nope/infer", body)[0] == 404
    assert curl(server, "/v2/models/digits/infer", body, token=None)[0] == 401
    assert curl(server, "/v2/models/digits/infer", "{not json")[0] == 400
    big = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                  "data": [0.5] * 60000}]})
    assert curl(server, "/v2/models/digits/infer", big)[0] == 413


def test_draining_turns_ready_false(server):
    server["proc"].terminate()
    time.sleep(0.3)
    code, body = curl(server, "/v2/health/ready", token=None)
    assert (code, body) == (503, {"ready": False})
    server["proc"].wait(timeout=30)
