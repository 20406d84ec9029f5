#!/usr/bin/env python3
"""UFM gradient descent in PyTorch beside `seli bench ufm --device DEV`, in one run.

The iteration both time (docs/theory.md §2; plain cross-entropy summed over samples, constant
steps, no ridge, no bias): G = softmax(W^T H) - Y by column, W <- W - lr H G^T,
H <- H - lr W G, at k = 10, d = 64, n = 2750 (STEP 500/50) and k = 100, d = 512, n = 110 000
(STEP 2000/200), in f32 and f64. PyTorch: the gradients written out (no autograd), the device
synchronized before the clock is read; seli's figures are parsed from its own output.

    python scripts/bench-ufm.py --device cuda --seli target/cuda/seli

Needs torch in the running Python and a seli build that has the device (scripts/build-cuda.sh
for cuda; --device cpu compares PyTorch's CPU with `seli bench ufm --burn`).
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path


def counts(k, n_min):
    return [10 * n_min] * (k // 2) + [n_min] * (k - k // 2)


def torch_rate(k, d, n_min, dtype, device, iters):
    import torch

    c = counts(k, n_min)
    n = sum(c)
    y = torch.repeat_interleave(torch.arange(k), torch.tensor(c)).to(device)
    Y = torch.nn.functional.one_hot(y, k).T.to(dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    W = (0.1 * torch.randn(d, k, generator=g, dtype=dtype)).to(device)
    H = (0.1 * torch.randn(d, n, generator=g, dtype=dtype)).to(device)
    lr = 1e-3

    def step(W, H):
        G = torch.softmax(W.T @ H, dim=0) - Y
        return W - lr * (H @ G.T), H - lr * (W @ G)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        W, H = step(W, H)
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        W, H = step(W, H)
    sync()
    return iters / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=1000, help="small case; the large runs a fifth")
    ap.add_argument("--seli", default=str(Path(__file__).resolve().parent.parent / "target/release/seli"))
    a = ap.parse_args()
    import torch

    cmd = [a.seli, "bench", "ufm", "--device", a.device, "--iters", str(a.iters)]
    if a.device == "cpu":
        cmd.append("--burn")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.strip()}")
    out = r.stdout
    seli = {}
    for m in re.finditer(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(f32|f64)\s+\d+\s+([0-9.]+)", out, re.M):
        seli[(int(m.group(1)), m.group(4))] = float(m.group(5))
    device = "cuda:0" if a.device == "cuda" else a.device
    print(f"UFM gradient descent, {a.device}; torch {torch.__version__}; seli {a.seli}")
    print(f"{'k':>5}{'d':>6}{'n':>9}{'type':>6}{'seli it/s':>12}{'PyTorch it/s':>14}{'ratio':>8}")
    for k, d, n_min, iters in [(10, 64, 50, a.iters), (100, 512, 200, max(a.iters // 5, 1))]:
        for name, dtype in [("f32", torch.float32), ("f64", torch.float64)]:
            p = torch_rate(k, d, n_min, dtype, device, iters)
            s = seli.get((k, name), float("nan"))
            print(f"{k:>5}{d:>6}{sum(counts(k, n_min)):>9}{name:>6}{s:>12.1f}{p:>14.1f}{s / p:>7.2f}x")


if __name__ == "__main__":
    main()
