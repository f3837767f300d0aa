#!/usr/bin/python3
"""PyTorch's side of the engine's reference experiments, on the same data and set-up.

  /usr/bin/python3 bench/torch_reference.py fashion-mlp --epochs 3 --mc-samples 100
  /usr/bin/python3 bench/torch_reference.py small-data --train-size 1000 --epochs 100 --seeds 5

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (xtr, ytr), (xte, yte) = load_fashion(args.data_dir)

    if args.cmd == "fashion-mlp":
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
