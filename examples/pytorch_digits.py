#!/usr/bin/python3
"""A PyTorch model with dropout, trained and exported to ONNX so that dropnet can serve it with
Monte-Carlo dropout uncertainty (README: "Serve your PyTorch model with uncertainty").

Run with Debian's /usr/bin/python3 (python3-torch) from the repository root:

    /usr/bin/python3 examples/pytorch_digits.py digits.onnx

It trains a 64-128-10 MLP (GELU, dropout 0.3) on data/digits.csv for 30 epochs (seeded: the same
file every run), then exports it the way dropnet needs: in training mode and without constant
folding, so that nn.Dropout stays a Dropout node, with the softmax in the graph, so that dropnet
sees a classifier answering probabilities, and with a free batch dimension.
"""
import sys

import numpy as np
import torch
import torch.nn as nn

EPOCHS = 30


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "digits.onnx"
    torch.manual_seed(0)
    data = np.loadtxt("data/digits.csv", delimiter=",", skiprows=1, dtype=np.float32)
    x = torch.from_numpy(data[:, :-1])
    y = torch.from_numpy(data[:, -1]).long()
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Dropout(0.3), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"trained {EPOCHS} epochs, training accuracy {accuracy:.4f}")

    classifier = nn.Sequential(model, nn.Softmax(dim=1))
    torch.onnx.export(classifier, x[:1], out, opset_version=13,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
