#!/usr/bin/env python3
"""seli's feature-level measurement beside the PyTorch reference computation, in one run.

The reference computation is what the field's reference library (rhubarbwu/neural-collapse)
does for NC1, written here from its description: class sums by a one-hot product per batch,
then the within-class covariance accumulated batch by batch (X - M[y])^T (X - M[y]), then
Tr(pinv(Sigma_B) Sigma_W) / k with Sigma_B about the mean of class means. seli is timed
through `seli bench analyze` (every GEOMETRY column, both passes of `seli analyze`) and, when
the module is importable, `seli.metrics` on the same array as PyTorch. All on generated f32
features held in memory (h_i = 4 m_{y_i} + noise, y_i = i mod k, uniform entries in [-1, 1)),
on the same machine, one after the other, with the same thread count.

    python scripts/bench-analyze.py --n 1000000 --d 512 --k 100

Needs torch (and numpy for seli.metrics) in the running Python, and a release build of seli
(`cargo build --release`). Prints one table; --json writes the figures as JSON too.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def reference_nc1(H, y, k, chunk):
    """NC1 as the reference library computes it: two passes over batches of `chunk` rows."""
    import torch

    n, d = H.shape
    classes = torch.arange(k)
    totals = torch.zeros(k, d, dtype=H.dtype)
    counts = torch.zeros(k, dtype=H.dtype)
    for s in range(0, n, chunk):
        X, Y = H[s : s + chunk], y[s : s + chunk]
        onehot = (Y[:, None] == classes).to(H.dtype)
        totals += onehot.T @ X
        counts += onehot.sum(0)
    M = totals / counts[:, None]
    within = torch.zeros(d, d, dtype=H.dtype)
    for s in range(0, n, chunk):
        diff = H[s : s + chunk] - M[y[s : s + chunk]]
        within += diff.T @ diff
    within /= n
    Mc = M - M.mean(0)
    between = Mc.T @ Mc / k
    return float(torch.trace(torch.linalg.pinv(between) @ within)) / k


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seli", default=str(Path(__file__).resolve().parent.parent / "target/release/seli"))
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()

    rows = []
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.seli, "bench", "analyze", "--json", "--n", str(a.n), "--d", str(a.d), "--k", str(a.k),
           "--chunk", str(a.chunk), "--repeats", str(a.repeats)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    s = json.loads(out.strip().splitlines()[-1])
    rows.append(("seli bench analyze (every column)", s["median_s"], s["nc1"]))

    import torch

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    means = 4 * (2 * torch.rand(a.k, a.d, generator=g) - 1)
    y = torch.arange(a.n) % a.k
    H = torch.empty(a.n, a.d)
    for s0 in range(0, a.n, 65536):
        block = H[s0 : s0 + 65536]
        block.copy_(2 * torch.rand(block.shape, generator=g) - 1)
        block += means[y[s0 : s0 + 65536]]
    times, nc1 = [], None
    for _ in range(a.repeats):
        t = time.perf_counter()
        nc1 = reference_nc1(H, y, a.k, a.chunk)
        times.append(time.perf_counter() - t)
    torch_s = median(times)
    rows.append((f"PyTorch {torch.__version__} reference (NC1 only)", torch_s, nc1))

    try:
        import seli

        Hn, yn = H.numpy(), y.numpy()
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            m = seli.metrics(Hn, yn, chunk=a.chunk)
            times.append(time.perf_counter() - t)
        rows.append(("seli.metrics (every column)", median(times), m["values"]["nc1"]))
    except ImportError:
        pass

    print(f"n = {a.n}, d = {a.d}, k = {a.k}, f32, chunks of {a.chunk}, {a.threads} threads, "
          f"median of {a.repeats}")
    print(f"{'':44}{'seconds':>10}{'samples/s':>12}{'PyTorch/this':>14}{'nc1':>14}")
    for name, sec, v in rows:
        print(f"{name:44}{sec:10.2f}{a.n / sec:12.0f}{torch_s / sec:14.2f}{v:14.6e}")
    if a.json:
        Path(a.json).write_text(json.dumps({"n": a.n, "d": a.d, "k": a.k, "threads": a.threads,
                                            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
