#!/usr/bin/env python3
"""The CUDA UFM's kernels checked on the CPU, against `seli ufm` on the CPU (CI has no GPU).

crates/seli-train/src/cuda_ufm.rs holds the kernels as CUDA C++ source (compiled by NVRTC on the
GPU at run time). This script takes that source from the Rust file, compiles it with the system
C++ compiler under a small emulation of CUDA's launch model (one std::thread per CUDA thread of
a block where the kernel synchronizes, __syncthreads as a barrier; in turn where it does not),
and drives it as cuda_ufm.rs does: the same buffers (column-major), the same kernel arguments
and launch shapes, and each cuBLAS call (GEMM, GEMV) as a NumPy product with the same
transposes, leading dimensions, alpha and beta. Each case starts from the checkpoint of a short
`seli ufm` run and iterates to the end of a longer one (the evaluation every few iterations, so
that both the fused H update and the explicit one run), then compares the evaluations with
that run's metrics rows and the variables with its last checkpoint.

    target/py-venv/bin/python scripts/cuda-ufm-emulate.py [--seli target/release/seli]

Needs numpy and g++ (C++20). Exit 1 when a quantity differs by more than its tolerance
(relative; f64 1e-12, f32 1e-5, the minimum margin 1e-9 / 1e-3 as a difference of logits).
"""

import argparse
import csv
import ctypes
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# As in cuda_ufm.rs.
BLOCKS, THREADS, SLOTS = 256, 256, 8

SHIM = r"""
#include <cmath>
#include <cstddef>
#include <barrier>
#include <thread>
#include <vector>
struct D3 { unsigned x, y, z; };
thread_local D3 threadIdx;
D3 blockIdx, blockDim, gridDim;
std::barrier<>* bar;
#define __global__
#define __device__
#define __shared__ static
static inline void __syncthreads() { bar->arrive_and_wait(); }
using std::exp; using std::log1p; using std::sqrt;
"""

# Kernel numbers for `launch`, and whether the kernel synchronizes its block.
KERNELS = {"softmax_grad": (0, False), "reduce_cols": (1, True), "sumsq": (2, True),
           "finish": (3, True), "descend": (4, False), "axpy": (5, False)}

LAUNCHER = r"""
static void call(int which, void** a) {
    switch (which) {
    case 0: softmax_grad((REAL*)a[0], (const REAL*)a[1], (const REAL*)a[2], (const REAL*)a[3],
                         (const REAL*)a[4], (const unsigned*)a[5], *(int*)a[6], *(int*)a[7],
                         *(REAL*)a[8], *(int*)a[9], (double*)a[10], (double*)a[11]); break;
    case 1: reduce_cols((const double*)a[0], (const double*)a[1], *(int*)a[2], (double*)a[3]); break;
    case 2: sumsq((const REAL*)a[0], *(unsigned long long*)a[1], (double*)a[2]); break;
    case 3: finish((const double*)a[0], *(double*)a[1], *(double*)a[2], *(double*)a[3],
                   *(int*)a[4], *(double*)a[5], (double*)a[6]); break;
    case 4: descend((REAL*)a[0], (const REAL*)a[1], *(unsigned long long*)a[2], *(double*)a[3],
                    (const double*)a[4]); break;
    case 5: axpy((REAL*)a[0], (const REAL*)a[1], *(unsigned long long*)a[2], *(REAL*)a[3]); break;
    }
}
extern "C" void launch(int which, int threaded, unsigned grid, unsigned block, void** a) {
    gridDim = {grid, 1, 1}; blockDim = {block, 1, 1};
    for (unsigned bx = 0; bx < grid; ++bx) {
        blockIdx = {bx, 0, 0};
        if (!threaded) {
            for (unsigned tx = 0; tx < block; ++tx) { threadIdx = {tx, 0, 0}; call(which, a); }
            continue;
        }
        std::barrier<> b(block); bar = &b;
        std::vector<std::thread> ts;
        for (unsigned tx = 0; tx < block; ++tx)
            ts.emplace_back([=] { threadIdx = {tx, 0, 0}; call(which, a); });
        for (auto& t : ts) t.join();
    }
}
"""

PRELUDES = {  # as Elem::PRELUDE in cuda_ufm.rs
    "f32": "#define REAL float\n#define EXP expf\n#define LOG1P log1pf\n",
    "f64": "#define REAL double\n#define EXP exp\n#define LOG1P log1p\n",
}


def build(tmp):
    rs = (ROOT / "crates/seli-train/src/cuda_ufm.rs").read_text()
    m = re.search(r'const KERNELS: &str = r#"(.*?)"#;', rs, re.S)
    assert m, "no KERNELS source in cuda_ufm.rs"
    for name in ("softmax_grad", "reduce_cols", "sumsq", "finish", "descend", "axpy"):
        assert f"void {name}(" in m.group(1), f"kernel {name} not in cuda_ufm.rs"
    libs = {}
    for dt, prelude in PRELUDES.items():
        src = Path(tmp) / f"k_{dt}.cpp"
        src.write_text(SHIM + prelude + f"#define RB {BLOCKS}\n" + m.group(1) + LAUNCHER)
        so = Path(tmp) / f"k_{dt}.so"
        subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-o", str(so), str(src),
                        "-lpthread"], check=True)
        libs[dt] = ctypes.CDLL(str(so))
    return libs


def checkpoint(path):
    b = Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    head, body = json.loads(b[8:8 + n]), b[8 + n:]
    out = {}
    for name, t in head.items():
        if name != "__metadata__":
            s, e = t["data_offsets"]
            dt = {"F64": np.float64, "F32": np.float32}[t["dtype"]]
            out[name] = np.frombuffer(body[s:e], dtype=dt).reshape(t["shape"]).astype(np.float64)
    return out, int(head["__metadata__"]["iter"])


class Buf:
    """A device buffer: a flat NumPy array (matrices column-major, as cuBLAS)."""

    def __init__(self, a, dt):
        self.a = np.array(np.asarray(a, dtype=dt).ravel(order="F"), copy=True)

    @property
    def p(self):
        return ctypes.c_void_p(self.a.ctypes.data)

    def at(self, offset):
        return ctypes.c_void_p(self.a.ctypes.data + offset * self.a.itemsize)

    def cols(self, rows, cols, ld):
        return np.lib.stride_tricks.as_strided(self.a, (rows, cols), (self.a.itemsize, ld * self.a.itemsize))


def gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """cuBLAS's C <- alpha op(A) op(B) + beta C, column-major (a zero beta ignores C)."""
    assert lda >= (k if ta else m) and ldb >= (n if tb else k) and ldc >= m
    opA = A.cols(k, m, lda).T if ta else A.cols(m, k, lda)
    opB = B.cols(n, k, ldb).T if tb else B.cols(k, n, ldb)
    Cv = C.cols(m, n, ldc)
    r = alpha * (opA.astype(np.float64) @ opB.astype(np.float64))
    if beta != 0:
        r += beta * Cv.astype(np.float64)
    Cv[...] = r.astype(C.a.dtype)


class Emulated:
    """cuda_ufm.rs's Placed: at, pass, evaluate, advance."""

    def __init__(self, lib, dt, cfg, start, iter0):
        self.lib, self.dt, self.cfg = lib, np.float64 if dt == "f64" else np.float32, cfg
        counts = cfg["profile"]["counts"]
        k, n, d = len(counts), sum(counts), cfg["d"]
        self.d, self.k, self.n, self.iter = d, k, n, iter0
        labels = np.repeat(np.arange(k), counts)
        self.labels = Buf(labels, np.uint32)
        # The checkpoint holds W as k×d and H as n×d, row-major: d×k and d×n column-major.
        self.w, self.h = Buf(start["W"].T, self.dt), Buf(start["H"].T, self.dt)
        self.b = Buf(start["b"], self.dt) if "b" in start else None
        # The family (seli-core's LossSpec::delta and iota).
        loss, gamma, tau = cfg["loss"], cfg["gamma"], cfg["tau"]
        delta = np.ones(k)
        if loss in ("cdt", "ldt", "vs") and gamma != 0:
            raw = (np.array(counts) / min(counts)) ** gamma
            delta = raw / raw.mean()
        iota = tau * np.log(np.array(counts) / n) if loss in ("la", "vs") else np.zeros(k)
        self.m_class = self.m_sample = None
        if not np.all(delta == 1):
            if loss == "ldt":
                self.m_sample = Buf(delta[labels], self.dt)
            else:
                self.m_class = Buf(delta, self.dt)
        self.iota = Buf(iota, self.dt) if np.any(iota != 0) else None
        self.scale = 1.0 if cfg["loss_reduction"] == "sum" else 1.0 / n
        zeros = lambda size, t=self.dt: Buf(np.zeros(size), t)  # noqa: E731
        self.g, self.grad_w = zeros(k * n), zeros(d * k)
        self.grad_b = zeros(k) if self.b else None
        self.ones = Buf(np.ones(n), self.dt) if self.b else None
        self.grad_h, self.grad_h_current = None, False
        self.col_loss, self.col_margin = zeros(n, np.float64), zeros(n, np.float64)
        self.partial, self.eval = zeros(SLOTS * BLOCKS, np.float64), zeros(7, np.float64)
        self.pass_(True)

    def launch(self, name, grid, block, args):
        which, threaded = KERNELS[name]
        arr = (ctypes.c_void_p * len(args))(*[ctypes.cast(a, ctypes.c_void_p) for a in args])
        self.lib.launch(which, int(threaded), grid, block, arr)

    def real(self, v):
        return ctypes.byref((ctypes.c_double if self.dt == np.float64 else ctypes.c_float)(v))

    def normalized(self):
        return self.cfg["step_rule"] in ("norm-grad", "norm-loss")

    def host_step(self):
        rule, lr = self.cfg["step_rule"], self.cfg["lr"]
        if rule == "constant":
            return lr
        factor, at = rule[len("step:"):].split("@")
        return lr * float(factor) ** sum(self.iter >= int(m) for m in at.split(","))

    def pass_(self, evaluate):
        d, k, n = self.d, self.k, self.n
        i32 = lambda v: ctypes.byref(ctypes.c_int(v))  # noqa: E731
        u64 = lambda v: ctypes.byref(ctypes.c_ulonglong(v))  # noqa: E731
        f64 = lambda v: ctypes.byref(ctypes.c_double(v))  # noqa: E731
        ptr = lambda b: b.p if b is not None else ctypes.c_void_p(0)  # noqa: E731
        gemm(True, False, k, n, d, 1.0, self.w, d, self.h, d, 0.0, self.g, k)
        self.launch("softmax_grad", -(-n // THREADS), THREADS,
                    [self.g.p, ptr(self.b), ptr(self.m_class), ptr(self.m_sample), ptr(self.iota),
                     self.labels.p, i32(k), i32(n), self.real(self.scale), i32(int(evaluate)),
                     self.col_loss.p, self.col_margin.p])
        gemm(False, True, d, k, n, 1.0, self.h, d, self.g, k, 0.0, self.grad_w, d)
        lw, lh = self.cfg["lambda_w"], self.cfg["lambda_h"]
        if lw != 0:
            self.launch("axpy", min(-(-(d * k) // THREADS), 4096), THREADS,
                        [self.grad_w.p, self.w.p, u64(d * k), self.real(lw)])
        if self.b:  # GEMV: G (k×n, ld k) times ones
            self.grad_b.a[:] = (self.g.cols(k, n, k).astype(np.float64) @ self.ones.a.astype(np.float64)).astype(self.dt)
        self.grad_h_current = False
        if evaluate or self.normalized():
            if self.grad_h is None:
                self.grad_h = Buf(np.zeros(d * n), self.dt)
            if lh != 0:
                self.grad_h.a[:] = self.h.a
            gemm(False, False, d, n, k, 1.0, self.w, d, self.g, k, lh, self.grad_h, d)
            self.grad_h_current = True
        if evaluate:
            # The first stages run one thread per block here (the same grid-stride sums); the
            # block-wide tree runs with all its threads in `finish`.
            self.launch("reduce_cols", BLOCKS, 1, [self.col_loss.p, self.col_margin.p, i32(n), self.partial.p])
            squares = [(3, self.w), (4, self.h), (5, self.grad_w), (6, self.grad_h)]
            for slot, x in squares + ([(7, self.grad_b)] if self.b else []):
                self.launch("sumsq", BLOCKS, 1, [x.p, u64(x.a.size), self.partial.at(slot * BLOCKS)])
            rule = {"norm-grad": 1, "norm-loss": 2}.get(self.cfg["step_rule"], 0)
            self.launch("finish", 1, BLOCKS, [self.partial.p, f64(self.scale), f64(lw), f64(lh), i32(rule),
                                              f64(self.cfg["lr"]), self.eval.p])
        self.eta = None if self.normalized() else self.host_step()

    def descend(self, x, g):
        eta, dev = (0.0, self.eval.at(6)) if self.eta is None else (self.eta, ctypes.c_void_p(0))
        size = x.a.size
        self.launch("descend", min(-(-size // THREADS), 4096), THREADS,
                    [x.p, g.p, ctypes.byref(ctypes.c_ulonglong(size)), ctypes.byref(ctypes.c_double(eta)), dev])

    def advance(self, evaluate):
        d, k, n = self.d, self.k, self.n
        if self.grad_h_current:
            self.descend(self.h, self.grad_h)
        else:
            e = self.eta
            assert e is not None, "a device step without the gradient of H"
            gemm(False, False, d, n, k, -e, self.w, d, self.g, k, 1.0 - e * self.cfg["lambda_h"], self.h, d)
        self.descend(self.w, self.grad_w)
        if self.b:
            self.descend(self.b, self.grad_b)
        self.iter += 1
        self.pass_(evaluate or self.normalized())


CASES = [
    "--counts 5,3,2 --d 4 --lr 0.1 --schedule constant",
    "--counts 5,3,2 --d 4 --lr 0.1 --loss cdt --gamma 0.5 --bias --lambda-w 0.01 --lambda-h 0.02",
    "--step 4,10,0.5,3 --d 6 --lr 0.05 --schedule constant --lambda-w 5e-3 --lambda-h 1e-2",
    "--step 4,10,0.5,3 --d 6 --lr 0.1 --schedule norm-loss",
    "--step 4,10,0.5,3 --d 6 --lr 2 --schedule step:0.5@15,25 --loss-reduction mean",
    "--step 4,10,0.5,3 --d 6 --lr 0.05 --loss ldt --gamma 0.5 --lambda-h 1e-3 --schedule constant",
    "--step 4,10,0.5,3 --d 6 --lr 0.05 --loss la --tau 1 --bias --schedule constant",
    "--step 4,10,0.5,3 --d 6 --lr 0.1 --loss vs --gamma 0.3 --tau 0.5 --bias --schedule norm-grad",
    # More samples than a block has threads (two blocks of softmax_grad).
    "--step 10,10,0.5,30 --d 16 --lr 0.01 --schedule constant",
]


def check(seli, libs, tmp, dt, case, start_at=10, end=40):
    base = [seli, "ufm", "--force", "--every", "1", "--dtype", dt] + case.split()
    a, b = Path(tmp) / "start", Path(tmp) / "end"
    subprocess.run(base + ["--iters", str(start_at), "--out", str(a)], check=True, capture_output=True)
    subprocess.run(base + ["--iters", str(end), "--out", str(b)], check=True, capture_output=True)
    cfg = json.loads((a / "config.json").read_text())
    start, it0 = checkpoint(a / "checkpoint.safetensors")
    emu = Emulated(libs[dt], dt, cfg, start, it0)
    rows = {int(float(r["iter"])): r for r in csv.DictReader(open(b / "metrics.csv"))}
    worst = {}

    def compare():
        e = emu.eval.a
        step = 0.0 if e[4] == 0 else (e[6] if emu.eta is None else emu.eta)
        got = {"objective": e[0], "loss": e[1], "accuracy": e[2] / emu.n, "min_margin": e[3],
               "grad_norm": e[4], "step": step}
        if cfg["lambda_h"] != 0:  # the evaluation's ‖H‖² is 0 without ridge on H
            got["h_norm_sq"] = e[5]
        for key, v in got.items():
            want = float(rows[emu.iter][key])
            worst[key] = max(worst.get(key, 0.0), abs(v - want) / max(abs(want), 1e-300))

    compare()
    while emu.iter < end:
        evaluate = (emu.iter + 1) % 7 == 0 or emu.iter + 1 == end
        emu.advance(evaluate)
        if evaluate:
            compare()
    last, it1 = checkpoint(b / "checkpoint.safetensors")
    assert it1 == emu.iter, (it1, emu.iter)
    ours = {"W": emu.w.a.reshape(emu.k, emu.d), "H": emu.h.a.reshape(emu.n, emu.d)}
    if emu.b:
        ours["b"] = emu.b.a
    for key, v in ours.items():
        worst[key] = float(np.abs(v - last[key]).max() / np.abs(last[key]).max())
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seli", default=str(ROOT / "target/release/seli"))
    a = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(tmp)
        for dt in ("f64", "f32"):
            tol = 1e-12 if dt == "f64" else 1e-5
            for case in CASES:
                worst = check(a.seli, libs, tmp, dt, case)
                bad = {k: v for k, v in worst.items()
                       if v > (tol * 1e3 if dt == "f64" and k == "min_margin" else 1e-3 if k == "min_margin" else tol)}
                failed += bool(bad)
                print(f"{'FAIL' if bad else 'ok  '} {dt} {case}: largest relative difference "
                      f"{max(worst.values()):.1e} ({max(worst, key=worst.get)})" + (f"; over tolerance: {bad}" if bad else ""))
    if failed:
        sys.exit(f"cuda-ufm-emulate.py: {failed} case(s) differ from seli ufm on the CPU")
    print("cuda-ufm-emulate.py: the CUDA UFM's kernels retrace seli ufm on the CPU in every case")


if __name__ == "__main__":
    main()
