#!/usr/bin/env python3
"""UFM gradient descent in PyTorch beside `seli bench ufm --device DEV`, in one run.

The iteration both time (docs/theory.md §2; plain cross-entropy summed over samples, constant
steps, no ridge, no bias): G = softmax(W^T H) - Y by column, W <- W - lr H G^T,
H <- H - lr W G, at every size seli's output lists (k = 10, d = 64, n = 2750 (STEP 500/50) and
k = 100, d = 512, n = 110 000 (STEP 2000/200); on the CPU also k = 10, d = 64, n = 99 990), in
f32 and f64. PyTorch: the gradients written out (no autograd), the device synchronized before
the clock is read, on the CPU with as many threads as seli's row; timed as seli times that
row (the median of five stretches on the CPU, one stretch on a GPU), for as many iterations.
seli's figures are parsed from its own output.

    python scripts/bench-ufm.py --device cuda --seli target/cuda/seli   # cuBLAS (what `seli ufm` runs)
    python scripts/bench-ufm.py --device cpu           # seli's own solver (what `seli ufm` runs)
    python scripts/bench-ufm.py --device cpu --burn    # the burn iteration on burn's CPU backend

Needs torch in the running Python and a seli build that has the device (scripts/build-cuda.sh
for cuda).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path


def counts(k, n_min):
    return [10 * n_min] * (k // 2) + [n_min] * (k - k // 2)


def ufm_step(W, H, Y, lr):
    """One step of gradient descent on the summed cross-entropy of logits W^T H (labels one-hot
    in the columns of Y), with the gradients written out: G = softmax - Y by column."""
    import torch

    G = torch.softmax(W.T @ H, dim=0) - Y
    return W - lr * (H @ G.T), H - lr * (W @ G)


def torch_rate(k, d, n_min, dtype, device, iters, stretches):
    import torch

    c = counts(k, n_min)
    n = sum(c)
    y = torch.repeat_interleave(torch.arange(k), torch.tensor(c)).to(device)
    Y = torch.nn.functional.one_hot(y, k).T.to(dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    W = (0.1 * torch.randn(d, k, generator=g, dtype=dtype)).to(device)
    H = (0.1 * torch.randn(d, n, generator=g, dtype=dtype)).to(device)
    step = lambda W, H: ufm_step(W, H, Y, 1e-3)  # noqa: E731
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        W, H = step(W, H)
    sync()
    per = max(iters // stretches, 1)
    rates = []
    for _ in range(stretches):
        t = time.perf_counter()
        for _ in range(per):
            W, H = step(W, H)
        sync()
        rates.append(per / (time.perf_counter() - t))
    return sorted(rates)[len(rates) // 2]


def seli_rows(out):
    """The table under seli's header line (k d n type [threads] iters iter/s GFLOP/s), as dicts."""
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.split()[:3] == ["k", "d", "n"])
    names = lines[i].split()
    rows = [dict(zip(names, l.split())) for l in lines[i + 1 :] if len(l.split()) == len(names)]
    assert rows, f"no rows under seli's header:\n{out}"
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=1000, help="seli bench ufm --iters: the small size's; seli runs fewer at the larger sizes, PyTorch as many as seli's row")
    ap.add_argument("--seli", default=str(Path(__file__).resolve().parent.parent / "target/release/seli"))
    ap.add_argument("--burn", action="store_true", help="time seli's iteration written with burn tensors (not what seli ufm runs)")
    ap.add_argument("--quick", action="store_true", help="seli's smallest sizes: checks the script")
    a = ap.parse_args()
    import torch

    cmd = [a.seli, "bench", "ufm", "--device", a.device, "--iters", str(a.iters)]
    cmd += ["--burn"] * a.burn + ["--quick"] * a.quick
    # seli's table is echoed line by line as it comes (a run cut short keeps seli's figures), its
    # errors go straight to stderr; PyTorch runs after seli has exited, so the two never share
    # the device.
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            print(f"  seli | {line.rstrip()}", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {proc.returncode} (its message above)")
    rows = seli_rows("".join(lines))
    device = "cuda:0" if a.device == "cuda" else a.device
    native = a.device == "cpu" and not a.burn
    what = "seli's burn iteration" if a.burn else ("seli's solver" if native else "seli's cuBLAS iteration")
    print(f"UFM gradient descent, {a.device}, {what}; torch {torch.__version__}; seli {a.seli}")
    print(f"{'k':>5}{'d':>6}{'n':>9}{'type':>6}{'threads':>9}{'iters':>7}{'seli it/s':>12}{'PyTorch it/s':>14}{'ratio':>8}")
    for row in rows:
        k, d, n, iters = int(row["k"]), int(row["d"]), int(row["n"]), int(row["iters"])
        threads = row.get("threads", "-")
        if threads != "-":
            torch.set_num_threads(int(threads))
        dtype = {"f32": torch.float32, "f64": torch.float64}[row["type"]]
        n_min = round(n / (5.5 * k))
        assert sum(counts(k, n_min)) == n, f"n = {n} is not STEP 10/0.5 with k = {k}"
        p = torch_rate(k, d, n_min, dtype, device, iters, 5 if native else 1)
        s = float(row["iter/s"])
        print(f"{k:>5}{d:>6}{n:>9}{row['type']:>6}{threads:>9}{iters:>7}{s:>12.1f}{p:>14.1f}{s / p:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
