"""import_model and export_model against a real server, on the ONNX files PyTorch wrote for the
interop tests (tests/interop/fixtures, made by make_onnx_fixtures.py), read back with the
``onnx`` module (python3-onnx)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

import dropnet
from conftest import SOURCE

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

FIXTURES = SOURCE / "tests" / "interop" / "fixtures"


def reference(model: str) -> dict:
    return json.loads((FIXTURES / f"{model}.json").read_text())


def inputs(ref: dict) -> np.ndarray:
    return np.asarray(ref["input"], dtype=np.float32).reshape([ref["rows"], *ref["input_shape"]])


def layer_types(info: dropnet.ModelInfo) -> list:
    return [layer["type"] for layer in info.spec["layers"]]


def test_import_pytorch_file_and_export_it_back(client, tmp_path):
    ref = reference("gelu_mlp")
    info = client.import_model("torch-gelu", FIXTURES / "gelu_mlp_train_op13.onnx")
    assert info.stochastic and info.version == 1 and info.task == "regression"
    assert layer_types(info) == ["dense", "gelu", "dropout", "dense", "gelu", "dropout", "dense"]
    assert client.get_model("torch-gelu").stochastic
    x = inputs(ref)
    out = client.predict("torch-gelu", x).outputs
    np.testing.assert_allclose(out.ravel(), ref["eval_output"], rtol=1e-5, atol=1e-7)
    u = client.uncertainty("torch-gelu", x, samples=200, seed=3)
    assert np.all(u.std > 0)  # dropout on: the passes differ

    path = tmp_path / "back.onnx"
    exported = client.export_model("torch-gelu", path, mode="train")
    assert (exported.model, exported.version, exported.mode) == ("torch-gelu", 1, "train")
    assert exported.warnings == ()
    assert path.read_bytes() == exported.onnx_model
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dropouts = [n for n in proto.graph.node if n.op_type == "Dropout"]
    assert [float(inits[n.input[1]]) for n in dropouts] == pytest.approx(ref["rates"])
    assert all(bool(inits[n.input[2]]) for n in dropouts)  # training_mode
    assert [n.op_type for n in proto.graph.node].count("Erf") == 2  # the two GELUs

    # The exported model (given as an onnx.ModelProto) is the same model: outputs bit for bit.
    back = client.import_model("torch-gelu-back", proto)
    assert back.stochastic and layer_types(back) == layer_types(info)
    np.testing.assert_array_equal(client.predict("torch-gelu-back", x).outputs, out)


def test_eval_export_without_dropout_is_not_stochastic(client):
    ref = reference("mlp")
    with open(FIXTURES / "mlp_eval_op17.onnx", "rb") as f:
        info = client.import_model("torch-mlp-eval", f.read(), description="no dropout")
    assert not info.stochastic and info.task == "classification"
    assert info.spec["description"] == "no dropout"
    with pytest.raises(dropnet.FailedPrecondition):
        client.uncertainty("torch-mlp-eval", inputs(ref), samples=10)
    exported = client.export_model("torch-mlp-eval", version=1)
    assert exported.mode == "eval"
    proto = onnx.load_from_string(exported.onnx_model)
    assert not [n for n in proto.graph.node if n.op_type == "Dropout"]


def test_import_and_export_errors(client):
    with pytest.raises(dropnet.InvalidArgument) as e:
        client.import_model("torch-elu", FIXTURES / "unsupported_elu_eval_op13.onnx")
    assert "node '/1/Elu' (Elu)" in e.value.message
    with pytest.raises(dropnet.NotFound):
        client.get_model("torch-elu")
    with pytest.raises(dropnet.InvalidArgument):
        client.import_model("torch-junk", b"not an onnx file")
    with pytest.raises(dropnet.InvalidArgument):
        client.import_model("torch-junk", 42)
    with pytest.raises(dropnet.NotFound):
        client.export_model("no-such-model")
    with pytest.raises(dropnet.InvalidArgument):
        client.export_model("no-such-model", mode="sideways")


def test_async_import_and_export(server):
    data = (FIXTURES / "lstm_train_op17.onnx").read_bytes()

    async def calls():
        async with dropnet.AsyncClient(server.address, token="") as c:
            info = await c.import_model("async-lstm", data, task="classification")
            exported = await c.export_model("async-lstm", mode="train")
            return info, exported

    info, exported = asyncio.run(calls())
    assert info.stochastic and layer_types(info)[0] == "lstm"
    proto = onnx.load_from_string(exported.onnx_model)
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 1
    assert [n.op_type for n in proto.graph.node].count("Dropout") == 1


def test_readme_pytorch_example(client, tmp_path):
    """README's "Serve your PyTorch model with uncertainty": examples/pytorch_digits.py trains
    and exports a GELU + dropout MLP with Debian's PyTorch; dropnet serves it with MC dropout."""
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("PyTorch (python3-torch) is not installed")
    out = tmp_path / "digits.onnx"
    run = subprocess.run([sys.executable, str(SOURCE / "examples" / "pytorch_digits.py"),
                          str(out)], cwd=SOURCE, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout
    info = client.import_model("readme-torch-digits", out)
    assert info.stochastic and info.task == "classification"
    assert layer_types(info) == ["dense", "gelu", "dropout", "dense", "softmax"]
    data = np.loadtxt(SOURCE / "data" / "digits.csv", delimiter=",", skiprows=1)
    x, y = data[:200, :-1], data[:200, -1]
    assert np.mean(client.predict("readme-torch-digits", x).predicted_class == y) > 0.95
    u = client.uncertainty("readme-torch-digits", x[:5], samples=100, seed=1)
    assert u.mutual_information.max() > 0
