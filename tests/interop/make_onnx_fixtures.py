#!/usr/bin/python3
"""Makes the ONNX fixtures of the interop tests with PyTorch (Debian's python3-torch 1.13).

Run with /usr/bin/python3 from the repository root: python3 tests/interop/make_onnx_fixtures.py.
Writes into tests/interop/fixtures/: for each model (mlp, cnn, cnn1d, lstm, gelu_mlp), opset (13, 17) and export
mode (eval: TrainingMode.EVAL with constant folding, where PyTorch leaves dropout out and folds
BatchNorm into the convolution before it; train: TrainingMode.TRAINING without constant folding,
which keeps Dropout and BatchNormalization nodes), <model>_<mode>_op<opset>.onnx, and <model>.json with the reference data:
the input rows, PyTorch's eval-mode outputs, the dropout rates of its modules, and, for the
models whose dropout PyTorch can export, the mean, variance and fourth central moment of T
train-mode (Monte-Carlo dropout) samples of every output. An export PyTorch refuses is recorded
in the JSON ("export_errors") instead of a file. The weights are seeded: running it again gives
the same files. unsupported_elu_eval_op13.onnx holds an operator (Elu) that dropnet cannot map.
"""
import copy
import io
import json
import os
import warnings

import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

warnings.simplefilter("ignore")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
OPSETS = (13, 17)
MC_SAMPLES = 4000


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8),
                                 nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3), nn.Softmax(dim=1))

    def forward(self, x):
        return self.net(x)


class GeluMlp(nn.Module):
    """nn.GELU (exact, erf form), which PyTorch writes below opset 20 as
    Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 12), nn.GELU(), nn.Dropout(0.25), nn.Linear(12, 8),
                                 nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Dropout2d(0.25), nn.Flatten(),
                                 nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 3),
                                 nn.Softmax(dim=1))

    def forward(self, x):
        return self.net(x)


class Cnn1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(2, 4, 3, stride=1, padding=1), nn.BatchNorm1d(4),
                                 nn.LeakyReLU(0.1), nn.AvgPool1d(2), nn.Flatten(), nn.Dropout(0.2),
                                 nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


class LstmClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(8, 3)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.softmax(self.fc(self.drop(h[-1])))


def rates(model):
    return [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def export(model, x, name, mode, opset):
    training = torch.onnx.TrainingMode.TRAINING if mode == "train" else torch.onnx.TrainingMode.EVAL
    model.train(mode == "train")
    buf = io.BytesIO()
    # Tracing runs the model, which in train mode updates BatchNorm's running statistics before
    # they are written: the model is given back its state, and the file the statistics it had.
    state = copy.deepcopy(model.state_dict())
    try:
        torch.onnx.export(model, x, buf, opset_version=opset, training=training,
                          do_constant_folding=(mode == "eval"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    finally:
        model.load_state_dict(state)
    proto = onnx.load_from_string(buf.getvalue())
    for init in proto.graph.initializer:
        if init.name.endswith(("running_mean", "running_var")) and init.name in state:
            init.CopyFrom(numpy_helper.from_array(state[init.name].numpy(), init.name))
    onnx.save(proto, os.path.join(OUT, f"{name}_{mode}_op{opset}.onnx"))


def mc_moments(model, x):
    # Train mode switches on dropout only (BatchNorm is put back in eval mode), T samples.
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad():
        samples = torch.stack([model(x) for _ in range(MC_SAMPLES)]).double()
    model.eval()
    mean = samples.mean(0)
    centered = samples - mean
    return {"samples": MC_SAMPLES, "mean": mean.flatten().tolist(),
            "var": centered.pow(2).mean(0).flatten().tolist(),
            "m4": centered.pow(4).mean(0).flatten().tolist()}


def make(name, model, x, train_bn_stats=None):
    torch.manual_seed(1)
    if train_bn_stats is not None:  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(train_bn_stats)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    ref = {"input_shape": list(x.shape[1:]), "input": x.flatten().tolist(),
           "rows": x.shape[0], "eval_output": eval_out.flatten().tolist(),
           "outputs": eval_out.shape[1], "rates": rates(model), "export_errors": {}}
    for opset in OPSETS:
        for mode in ("eval", "train"):
            try:
                export(model, x, name, mode, opset)
            except Exception as e:  # pylint: disable=broad-except
                ref["export_errors"][f"{mode}_op{opset}"] = str(e).split("\n")[0][:200]
    if not ref["export_errors"]:
        torch.manual_seed(2)
        ref["mc"] = mc_moments(model, x)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(ref, f, indent=0)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    make("mlp", Mlp(), torch.randn(5, 6))
    torch.manual_seed(0)
    make("cnn", Cnn(), torch.randn(3, 1, 8, 8), train_bn_stats=torch.randn(16, 1, 8, 8) * 2 + 0.5)
    torch.manual_seed(0)
    make("cnn1d", Cnn1d(), torch.randn(3, 2, 8), train_bn_stats=torch.randn(16, 2, 8) * 2 + 0.5)
    torch.manual_seed(0)
    make("lstm", LstmClassifier(), torch.randn(4, 5, 4))
    torch.manual_seed(0)
    make("gelu_mlp", GeluMlp(), torch.randn(6, 5) * 2)
    # A model with an operator dropnet has no layer for (Elu), to be refused by name.
    torch.manual_seed(0)
    export(nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2)), torch.randn(2, 3),
           "unsupported_elu", "eval", 13)


if __name__ == "__main__":
    main()
