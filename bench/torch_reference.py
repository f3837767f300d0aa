#!/usr/bin/python3
"""PyTorch's side of the engine's reference experiments, on the same data and set-up.

  /usr/bin/python3 bench/torch_reference.py fashion-mlp --epochs 3 --mc-samples 100
  /usr/bin/python3 bench/torch_reference.py small-data --train-size 1000 --epochs 100 --seeds 5
  /usr/bin/python3 bench/torch_reference.py fashion-rnn --cell lstm --epochs 3
  /usr/bin/python3 bench/torch_reference.py fashion-cnn --epochs 3 --mc-samples 30

Needs Debian's python3-torch (and libopenblas0-openmp for a fast BLAS). Prints the same tables as
build/bin/dropnet-experiment so the two can be read side by side.
"""
import argparse
import gzip
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_idx(images, labels):
    with gzip.open(images, "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    with gzip.open(labels, "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def load_fashion(d):
    return (load_idx(f"{d}/train-images-idx3-ubyte.gz", f"{d}/train-labels-idx1-ubyte.gz"),
            load_idx(f"{d}/t10k-images-idx3-ubyte.gz", f"{d}/t10k-labels-idx1-ubyte.gz"))


def mlp(p):
    layers = [nn.Linear(784, 512), nn.ReLU()]
    if p > 0:
        layers.append(nn.Dropout(p))
    layers += [nn.Linear(512, 512), nn.ReLU()]
    if p > 0:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(512, 10))
    return nn.Sequential(*layers)


def scores(probs, y, bins=15):
    conf, pred = probs.max(1)
    acc = (pred == y).double().mean().item()
    nll = -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).double().mean().item()
    onehot = F.one_hot(y, probs.shape[1]).float()
    brier = ((probs - onehot) ** 2).sum(1).double().mean().item()
    ece = 0.0
    b = torch.clamp((conf * bins).long(), max=bins - 1)
    for i in range(bins):
        m = b == i
        if m.any():
            ece += abs((pred[m] == y[m]).double().sum().item() - conf[m].double().sum().item())
    return acc, nll, brier, ece / len(y)


def train(model, x, y, epochs, seed, batch=128):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        t0 = time.time()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        yield epoch + 1, total / len(x), time.time() - t0


def evaluate(model, x, y, mc_samples):
    model.eval()
    with torch.no_grad():
        det = scores(F.softmax(model(x), 1), y)
        mc = None
        if mc_samples:
            model.train()  # the PyTorch idiom for MC dropout (no BatchNorm here to break)
            mean = torch.zeros(len(x), 10)
            for _ in range(mc_samples):
                mean += F.softmax(model(x), 1)
            mc = scores(mean / mc_samples, y)
            model.eval()
    return det, mc


class RowRnn(nn.Module):
    """Fashion-MNIST read row by row: 28 steps of 28 pixels, LSTM(units) or GRU(units), Linear."""

    def __init__(self, cell, units):
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(28, units, batch_first=True)
        self.out = nn.Linear(units, 10)

    def forward(self, x):
        y, _ = self.rnn(x.view(-1, 28, 28))
        return self.out(y[:, -1])


def cnn():
    """conv32-conv64 (3x3, ReLU), Dropout2d 0.1, max-pool 2, dense 128, dropout 0.5: as
    dropnet-experiment fashion-cnn."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Dropout2d(0.1),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10))


def batched_probs(model, x, batch=500):
    return torch.cat([F.softmax(model(x[i:i + batch]), 1) for i in range(0, len(x), batch)])


def fashion_cnn(args, xtr, ytr, xte, yte):
    torch.manual_seed(args.seed)
    model = cnn()
    print(f"PyTorch {torch.__version__}, {args.threads} threads: CNN conv32-conv64 3x3, Dropout2d "
          f"0.1, max-pool 2, dense 128, dropout 0.5; Adam 1e-3, batch 128, {args.epochs} epochs")
    t = 0.0
    for epoch, loss, secs in train(model, xtr, ytr, args.epochs, args.seed):
        t += secs
        print(f"epoch {epoch}/{args.epochs}  loss {loss:.4f}  {len(xtr) / secs:.0f} samples/s  "
              f"{secs:.1f} s", flush=True)
    print(f"training took {t:.1f} s ({t / args.epochs:.1f} s an epoch)\n")
    model.eval()
    with torch.no_grad():
        det = scores(batched_probs(model, xte), yte)
        print("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|")
        print("| deterministic (eval) | %.4f | %.4f | %.4f | %.4f |" % det)
        if args.mc_samples:
            model.train()  # no BatchNorm here, so this only turns the dropout layers on
            mean = sum(batched_probs(model, xte) for _ in range(args.mc_samples)) / args.mc_samples
            model.eval()
            print(f"| MC dropout, T = {args.mc_samples} | %.4f | %.4f | %.4f | %.4f |"
                  % scores(mean, yte))


def fashion_rnn(args, xtr, ytr, xte, yte):
    torch.manual_seed(args.seed)
    model = RowRnn(args.cell, args.units)
    print(f"PyTorch {torch.__version__}, {args.threads} threads: {args.cell.upper()}({args.units}) "
          f"+ Linear({args.units}, 10) over 28 rows of 28 pixels, Adam 1e-3, batch 128, "
          f"{args.epochs} epochs")
    t = 0.0
    for epoch, loss, secs in train(model, xtr, ytr, args.epochs, args.seed):
        t += secs
        print(f"epoch {epoch}/{args.epochs}  loss {loss:.4f}  {secs:.1f} s")
    print(f"training took {t:.1f} s ({t / args.epochs:.1f} s an epoch)\n")
    det, _ = evaluate(model, xte, yte, 0)
    print("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|")
    print("| deterministic (eval) | %.4f | %.4f | %.4f | %.4f |" % det)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("fashion-mlp")
    a.add_argument("--epochs", type=int, default=3)
    a.add_argument("--mc-samples", type=int, default=100)
    a.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("small-data")
    b.add_argument("--train-size", type=int, default=1000)
    b.add_argument("--epochs", type=int, default=100)
    b.add_argument("--seeds", type=int, default=5)
    k = sub.add_parser("fashion-cnn")
    k.add_argument("--epochs", type=int, default=3)
    k.add_argument("--mc-samples", type=int, default=30)
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--train-rows", type=int, default=0, help="first N training images (0: all)")
    c = sub.add_parser("fashion-rnn")
    c.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    c.add_argument("--units", type=int, default=128)
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (xtr, ytr), (xte, yte) = load_fashion(args.data_dir)

    if args.cmd == "fashion-cnn":
        if args.train_rows:
            xtr, ytr = xtr[:args.train_rows], ytr[:args.train_rows]
        return fashion_cnn(args, xtr, ytr, xte, yte)
    if args.cmd == "fashion-rnn":
        fashion_rnn(args, xtr, ytr, xte, yte)
    elif args.cmd == "fashion-mlp":
        torch.manual_seed(args.seed)
        model = mlp(0.5)
        print(f"PyTorch {torch.__version__}, {args.threads} threads: MLP 784-512-512-10, dropout 0.5, "
              f"Adam 1e-3, batch 128, {args.epochs} epochs")
        t = 0.0
        for epoch, loss, secs in train(model, xtr, ytr, args.epochs, args.seed):
            t += secs
            print(f"epoch {epoch}/{args.epochs}  loss {loss:.4f}  {len(xtr) / secs:.0f} samples/s")
        print(f"training took {t:.1f} s ({t / args.epochs:.1f} s an epoch)\n")
        det, mc = evaluate(model, xte, yte, args.mc_samples)
        print("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|")
        print("| deterministic (eval) | %.4f | %.4f | %.4f | %.4f |" % det)
        if mc:
            print(f"| MC dropout, T = {args.mc_samples} | %.4f | %.4f | %.4f | %.4f |" % mc)
    else:
        print("| seed | acc p=0.5 | acc p=0 | NLL p=0.5 | NLL p=0 | ECE p=0.5 | ECE p=0 |")
        print("|---|---|---|---|---|---|---|")
        sums = np.zeros(6)
        for s in range(1, args.seeds + 1):
            g = torch.Generator().manual_seed(1000 + s)
            rows = torch.randperm(len(xtr), generator=g)[:args.train_size]
            res = []
            for p in (0.5, 0.0):
                torch.manual_seed(s)
                model = mlp(p)
                for _ in train(model, xtr[rows], ytr[rows], args.epochs, s):
                    pass
                res.append(evaluate(model, xte, yte, 0)[0])
            v = [res[0][0], res[1][0], res[0][1], res[1][1], res[0][3], res[1][3]]
            sums += v
            print("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |" % (s, *v))
        print("| mean | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |" % tuple(sums / args.seeds))


if __name__ == "__main__":
    main()
