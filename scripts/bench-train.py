#!/usr/bin/env python3
"""seli's training throughput beside PyTorch's, same models, same device, in one run.

Both sides train the networks of `seli bench train` on one random batch (f32, batch 128, SGD
with momentum 0.9, cross-entropy, learning rate 0.01), forward + backward + update per step:

  - MLP 784-512-512-10 without batch norm (hidden layers with biases),
  - MLP 784-512x3-10 with batch norm after each hidden linear layer (no bias there), the
    `seli train` default,
  - ResNet-18, CIFAR style (3x3 stem without max-pool, widths 64-128-256-512), 3x32x32 images,

the last layer without a bias in every case. On a GPU, ResNet-18 is also timed with PyTorch's
`torch.backends.cudnn.benchmark = True` (cuDNN measures its convolution algorithms on the first
step, as seli's engine does for each convolution shape; CIFAR training scripts commonly set it),
a second row beside the default one. On a GPU seli's steps are its engine's (cuDNN
convolutions, cuBLAS products, kernels of its own), or burn's CUDA backend's with --burn.
Rates are samples/s, the median over `--rounds` stretches of `--steps` steps after a few
untimed steps (both sides wait for the GPU before reading the clock). seli is timed by `seli bench train --device DEV` in a subprocess, then
PyTorch in this process, on the same thread count (`--threads`, default 2); that pair is
repeated `--pairs` times (seli, PyTorch, seli, PyTorch, ...), and each model's row gives the
medians of both sides and the median of the ratios pair by pair, with their range. On a shared
machine whose speed drifts, the pairwise ratio is the figure to quote.

    python scripts/bench-train.py                      # CPU, 2 threads
    python scripts/bench-train.py --device cuda --resnet-steps 20 --pairs 2 --seli target/cuda/seli

Needs torch in the running Python and a release build of seli (`cargo build --release`, or a
CUDA build from scripts/build-cuda.sh for --device cuda). seli's steps copy their batch to the
GPU each time, as a training run does; PyTorch's batch stays on the GPU. Each pair is printed as it is measured;
--json writes the figures as JSON, rewritten after each pair (`pairs_done` says how many).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

MODELS = {
    "mlp": "MLP 784-512-512-10 (no batch norm)",
    "mlp_bn": "MLP 784-512x3-10 + batch norm (seli train)",
    "resnet18": "ResNet-18 (width 64) on 3x32x32",
}
# The PyTorch-only setting timed on a GPU, and the seli row it is compared with.
TUNED = "resnet18_cudnn_benchmark"
SELI_ROW = {TUNED: "resnet18"}


def torch_models():
    import torch.nn as nn

    def mlp(depth, width, batch_norm):
        layers, d_in = [nn.Flatten()], 784
        for _ in range(depth):
            layers.append(nn.Linear(d_in, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            d_in = width
        layers.append(nn.Linear(width, 10, bias=False))
        return nn.Sequential(*layers)

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(c_out)
            self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(c_out)
            self.short = None
            if stride != 1 or c_in != c_out:
                self.short = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x):
            h = self.b2(self.c2(self.b1(self.c1(x)).relu()))
            return (h + (x if self.short is None else self.short(x))).relu()

    class ResNet18(nn.Module):
        def __init__(self, width=64):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
            blocks, c_in = [], width
            for stage, stride in enumerate([1, 2, 2, 2]):
                c_out = width << stage
                blocks += [Block(c_in, c_out, stride), Block(c_out, c_out, 1)]
                c_in = c_out
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(c_in, 10, bias=False)

        def forward(self, x):
            h = self.blocks(self.stem(x))
            return self.head(h.mean((2, 3)))

    return {
        "mlp": (lambda: mlp(2, 512, False), (1, 28, 28)),
        "mlp_bn": (lambda: mlp(3, 512, True), (1, 28, 28)),
        "resnet18": (lambda: ResNet18(), (3, 32, 32)),
    }


def torch_rate(build, shape, device, batch, warmup, steps, rounds, cudnn_benchmark=False):
    import torch

    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.manual_seed(0)
    net = build().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, *shape, device=device)
    y = torch.arange(batch, device=device) % 10
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * batch / (time.perf_counter() - t))
    return sorted(rates)[len(rates) // 2]


def seli_rates(seli, device, threads, mlp_steps, resnet_steps, burn=False):
    cmd = [seli, "bench", "train", "--device", device, "--mlp-steps", str(mlp_steps)]
    cmd += ["--resnet-steps", str(resnet_steps)] + (["--burn"] if burn else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.strip()}")
    out = r.stdout
    rates = {}
    for key, name in MODELS.items():
        m = re.search(re.escape(name) + r"\s+([0-9.]+)\s*$", out, re.M)
        if m:
            rates[key] = float(m.group(1))
    return rates, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both sides)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per stretch (MLPs)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resnet-steps", type=int, default=3, help="0 skips ResNet-18")
    ap.add_argument("--pairs", type=int, default=5, help="seli-then-PyTorch measurements, alternated")
    ap.add_argument("--seli", default=str(Path(__file__).resolve().parent.parent / "target/release/seli"))
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--burn", action="store_true",
                    help="on a GPU, time seli's steps on burn's CUDA backend instead of its engine")
    a = ap.parse_args()
    if a.pairs < 1:
        sys.exit(f"--pairs {a.pairs}: at least one pair")

    import torch

    torch.set_num_threads(a.threads)
    device = "cuda:0" if a.device == "cuda" else a.device
    models = torch_models()
    names = list(MODELS.items()) + [(TUNED, "  - PyTorch with cudnn.benchmark")]

    def summary(pairs):
        """One row per model: the medians of both sides and of the pairwise ratios."""
        rows = []
        for key, name in names:
            if key not in pairs[0][1]:
                continue
            ours = [s.get(SELI_ROW.get(key, key), float("nan")) for s, _ in pairs]
            theirs = [p[key] for _, p in pairs]
            ratios = [o / t for o, t in zip(ours, theirs)]
            rows.append({"model": key, "name": name, "seli": median(ours), "pytorch": median(theirs),
                         "ratio": median(ratios), "range": (min(ratios), max(ratios)),
                         "pairs": [{"seli": o, "pytorch": t} for o, t in zip(ours, theirs)]})
        return rows

    def write_json(rows):
        if a.json:
            doc = {"device": a.device, "threads": a.threads, "pairs_done": len(pairs),
                   "rows": [{k: r[k] for k in ("model", "seli", "pytorch", "ratio", "pairs")} for r in rows]}
            Path(a.json).write_text(json.dumps(doc, indent=1))

    # Each pair is printed, and the JSON rewritten, as soon as it is measured: a run cut short
    # (a time limit on a GPU machine) keeps what it measured.
    pairs = []
    for i in range(a.pairs):
        seli, seli_out = seli_rates(a.seli, a.device, a.threads, a.steps, a.resnet_steps, a.burn)
        if not seli:
            print(seli_out, file=sys.stderr)
            sys.exit("no seli figures parsed from `seli bench train`")
        peer = {}
        for key in ("mlp", "mlp_bn"):
            build, shape = models[key]
            peer[key] = torch_rate(build, shape, device, a.batch, 3, a.steps, a.rounds)
        if a.resnet_steps > 0:
            build, shape = models["resnet18"]
            warm = 1 if device == "cpu" else 5
            peer["resnet18"] = torch_rate(build, shape, device, a.batch, warm, a.resnet_steps, 1)
            if device.startswith("cuda"):
                peer[TUNED] = torch_rate(build, shape, device, a.batch, warm, a.resnet_steps, 1,
                                         cudnn_benchmark=True)
        pairs.append((seli, peer))
        figures = ", ".join(f"{k} {seli.get(SELI_ROW.get(k, k), float('nan')):.1f} vs {v:.1f}"
                            for k, v in peer.items())
        print(f"pair {i + 1}/{a.pairs} (seli vs PyTorch, samples/s): {figures}", flush=True)
        write_json(summary(pairs))

    print(f"training throughput, f32, batch {a.batch}, {a.device}, {a.threads} threads, {a.pairs} pairs")
    print(f"torch {torch.__version__}; seli: {a.seli}")
    print(f"{'model':<46} {'seli':>10} {'PyTorch':>10} {'ratio':>7}  ratio range")
    for r in summary(pairs):
        lo, hi = r["range"]
        print(f"{r['name']:<46} {r['seli']:>10.1f} {r['pytorch']:>10.1f} {r['ratio']:>6.2f}x"
              f"  {lo:.2f}-{hi:.2f}")


if __name__ == "__main__":
    main()
