#!/usr/bin/env python3
"""The certified class-level target of a loss family (`seli svm --loss ...`) beside a
sample-level solve of the same max-margin problem with cvxpy, the way such targets are
computed today: min ||X||_* over X (k x n) subject to every sample's margin constraints
(docs/theory.md §10). Both run here, in one process each, on the same machine; the optimal
values must agree (to cvxpy's solver tolerance).

    target/py-venv/bin/pip install cvxpy          # once
    target/py-venv/bin/python scripts/bench-targets.py [--k 10] [--ratio 10] [--rho 0.5]
        [--n-min 2] [--loss cdt] [--gamma 0.5] [--bias] [--json]

Needs target/release/seli (cargo build --release). Times are wall-clock seconds: seli's is the
whole `seli svm` command (process start included), cvxpy's the `problem.solve()` call.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--n-min", type=int, default=2)
    ap.add_argument("--loss", default="cdt", choices=["ce", "cdt", "ldt"])
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--seli", default=str(ROOT / "target" / "release" / "seli"))
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    a = ap.parse_args()
    try:
        import cvxpy as cp
    except ImportError:
        sys.exit("bench-targets: needs cvxpy (target/py-venv/bin/pip install cvxpy)")

    step = f"{a.k},{a.ratio:g},{a.rho:g},{a.n_min}"
    flags = ["--step", step, "--loss", a.loss]
    if a.loss != "ce":
        flags += ["--gamma", f"{a.gamma:g}"]
    if a.bias:
        flags.append("--bias")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "svm.json"
        t = time.perf_counter()
        subprocess.run([a.seli, "svm", *flags, "--json", str(out)], check=True, capture_output=True)
        t_seli = time.perf_counter() - t
        rec = json.loads(out.read_text())
    counts = rec["profile"]["counts"]
    delta = np.array(rec["loss"]["delta"])
    k, n = len(counts), sum(counts)
    y = np.repeat(np.arange(k), counts)

    # The sample-level problem, written from the margins of docs/theory.md §10.
    X = cp.Variable((k, n))
    b = cp.Variable(k) if a.bias else None
    cons = []
    others = np.array([[c for c in range(k) if c != yi] for yi in y])  # n x (k-1)
    for j in range(k - 1):
        c = others[:, j]
        true = cp.hstack([X[y[i], i] for i in range(n)])
        other = cp.hstack([X[c[i], i] for i in range(n)])
        if a.loss == "cdt":
            lhs = cp.multiply(delta[y], true) - cp.multiply(delta[c], other)
            rhs = np.ones(n)
        elif a.loss == "ldt":
            lhs = true - other
            rhs = 1.0 / delta[y]
        else:
            lhs = true - other
            rhs = np.ones(n)
        if b is not None:
            lhs = lhs + b[y] - b[c]
        cons.append(lhs >= rhs)
    problem = cp.Problem(cp.Minimize(cp.normNuc(X)), cons)
    t = time.perf_counter()
    value = problem.solve()
    t_cvx = time.perf_counter() - t
    result = {
        "k": k,
        "n": n,
        "loss": a.loss,
        "gamma": a.gamma if a.loss != "ce" else 0.0,
        "bias": a.bias,
        "seli_seconds": t_seli,
        "seli_nuclear_norm": rec["primal"],
        "seli_gap": rec["gap"],
        "cvxpy_seconds": t_cvx,
        "cvxpy_nuclear_norm": value,
        "cvxpy_solver": problem.solver_stats.solver_name,
        "relative_difference": abs(value - rec["primal"]) / rec["primal"],
        "speedup": t_cvx / t_seli,
    }
    if a.json:
        print(json.dumps(result))
        return
    print(f"max-margin target of {a.loss}" + (f" (gamma {a.gamma:g})" if a.loss != "ce" else "")
          + (", free bias" if a.bias else "") + f": STEP {step}, k = {k}, n = {n}")
    print(f"  seli svm (class level, certified, whole command) {t_seli:9.3f} s   ||X||_* = {rec['primal']:.8f}  (gap {rec['gap']:.1e})")
    print(f"  cvxpy {result['cvxpy_solver']:<10} (sample level, k x n)      {t_cvx:9.3f} s   ||X||_* = {value:.8f}")
    print(f"  ratio {result['speedup']:.0f}x; optimal values differ by {result['relative_difference']:.1e} (relative)")


if __name__ == "__main__":
    main()
