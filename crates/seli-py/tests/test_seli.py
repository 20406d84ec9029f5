"""The Python module against the seli CLI: same records, same errors; NumPy inputs of every
dtype and layout; Ctrl-C and the GIL. Run by .ci/run after installing the wheel:

    SELI_BIN=target/release/seli python -m pytest crates/seli-py/tests
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import seli

ROOT = Path(__file__).resolve().parents[3]
SELI_BIN = os.environ.get("SELI_BIN", str(ROOT / "target" / "release" / "seli"))


def cli_json(tmp_path, *args):
    """Runs `seli ARGS --json FILE` and returns the record."""
    out = tmp_path / "out.json"
    subprocess.run([SELI_BIN, *args, "--json", str(out)], check=True, capture_output=True)
    return json.loads(out.read_text())


def cli_error(*args):
    """The first line seli prints to stderr for a failing command, without 'error: '."""
    res = subprocess.run([SELI_BIN, *args], capture_output=True, text=True)
    assert res.returncode != 0
    return res.stderr.splitlines()[0].removeprefix("error: ")


def plain(x):
    """A Python record with NumPy arrays turned back into lists (the JSON shape)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


# --- same records as the CLI ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,flags",
    [
        ({"step": "10,100,0.5"}, ["--step", "10,100,0.5"]),
        ({"step": (9, 10, "1/3", 4)}, ["--step", "9,10,1/3,4"]),
        ({"counts": [50, 50, 5, 5, 1]}, ["--counts", "50,50,5,5,1"]),
        ({"long_tail": "6,500,50"}, ["--long-tail", "6,500,50"]),
        ({"step": "5,10,0.4,2", "d": 7, "seed": 3}, ["--step", "5,10,0.4,2", "--d", "7", "--seed", "3"]),
    ],
)
def test_geometry_equals_cli_json(tmp_path, kw, flags):
    py = plain(seli.geometry(**kw))
    cli = cli_json(tmp_path, "geometry", *flags)
    assert py == cli


@pytest.mark.parametrize(
    "kw,flags",
    [
        ({"loss": "cdt", "gamma": 0.5}, ["--loss", "cdt", "--gamma", "0.5"]),
        ({"loss": "ldt", "gamma": -1.0, "bias": True}, ["--loss", "ldt", "--gamma", "-1", "--bias"]),
        ({"bias": True}, ["--bias"]),
    ],
)
def test_loss_targets_equal_cli_json(tmp_path, kw, flags):
    py = plain(seli.geometry(step="4,10,0.5,1", **kw))
    cli = cli_json(tmp_path, "geometry", "--step", "4,10,0.5,1", *flags)
    assert py == cli and py["schema"] == "seli.loss-geometry.v1" and py["target"]["certified"]
    py = plain(seli.svm(step="4,10,0.5,1", **kw))
    assert py == cli_json(tmp_path, "svm", "--step", "4,10,0.5,1", *flags)
    with pytest.raises(ValueError, match="tau = 1: applies to the losses la and vs only"):
        seli.geometry(step="4,10,0.5,1", loss="cdt", tau=1.0)
    with pytest.raises(ValueError, match="loss = focal"):
        seli.svm(step="4,10,0.5,1", loss="focal")


def test_geometry_of_label_arrays_and_files(tmp_path):
    y = np.array([0, 0, 0, 1, 2, 2], dtype=np.int32)
    f = tmp_path / "y.txt"
    f.write_text("\n".join(map(str, y)) + "\n")
    a = seli.geometry(labels=y)
    b = seli.geometry(labels=str(f))
    cli = cli_json(tmp_path, "geometry", "--labels", str(f))
    assert a["profile"]["counts"] == [3, 1, 2]
    assert plain(b) == cli
    assert plain(a)["distances"] == cli["distances"]


def test_ridge_and_svm_equal_cli_json(tmp_path):
    py = plain(seli.ridge(step="4,10,0.5,2", lam=0.3))
    assert py == cli_json(tmp_path, "ridge", "--step", "4,10,0.5,2", "--lambda", "0.3")
    py = plain(seli.ridge(counts=[6, 3, 1], lambda_w=0.1, lambda_h=0.4, loss_reduction="mean"))
    cli = cli_json(
        tmp_path, "ridge", "--counts", "6,3,1", "--lambda-w", "0.1", "--lambda-h", "0.4",
        "--loss-reduction", "mean",
    )
    assert py == cli
    py = plain(seli.svm(counts=[7, 3, 1, 12, 5]))
    assert py == cli_json(tmp_path, "svm", "--counts", "7,3,1,12,5")


def test_ridge_path_equals_cli(tmp_path):
    out = tmp_path / "p.csv"
    subprocess.run(
        [SELI_BIN, "ridge-path", "--step", "4,10,0.5,2", "--points", "6", "--out", str(out)],
        check=True, capture_output=True,
    )
    cli = json.loads(out.with_suffix(".json").read_text())
    assert plain(seli.ridge_path(step="4,10,0.5,2", points=6)) == cli


def features(n_per=(40, 40, 8, 8), d=6, seed=0):
    """Features near a known class structure, labels, and a classifier (k, d)."""
    rng = np.random.default_rng(seed)
    k = len(n_per)
    means = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n_per)
    H = means[y] + 0.3 * rng.normal(size=(len(y), d))
    W = means + 0.1 * rng.normal(size=(k, d))
    return H, y, W


def test_metrics_equal_cli_analyze(tmp_path):
    H, y, W = features()
    b = np.linspace(-0.1, 0.1, 4)
    for name, arr in [("h.npy", H.astype(np.float32)), ("y.npy", y), ("w.npy", W), ("b.npy", b)]:
        np.save(tmp_path / name, arr)
    cli = cli_json(
        tmp_path, "analyze", "--features", str(tmp_path / "h.npy"), "--labels", str(tmp_path / "y.npy"),
        "--classifier", str(tmp_path / "w.npy"), "--bias", str(tmp_path / "b.npy"), "--chunk", "16",
    )
    py = plain(seli.metrics(H.astype(np.float32), y, W, bias=b, chunk=16))
    assert py["values"] == cli["values"]
    assert py["profile"]["counts"] == cli["profile"]["counts"] == [40, 40, 8, 8]
    assert (py["n"], py["d"], py["k"], py["logits"]) == (96, 6, 4, "classifier")


# --- NumPy inputs ---------------------------------------------------------------------------


def test_metrics_take_every_dtype_and_layout():
    H, y, W = features()
    ref = seli.metrics(H, y, W)["values"]
    # float64 C, Fortran, a non-contiguous slice of a wider array: the same numbers.
    wide = np.zeros((H.shape[0], 2 * H.shape[1]))
    wide[:, ::2] = H
    for X in [np.ascontiguousarray(H), np.asfortranarray(H), wide[:, ::2]]:
        assert seli.metrics(X, y, W)["values"] == ref
    # Every other row (strided rows) matches a contiguous copy of those rows.
    sub = seli.metrics(H[::2], y[::2], W)["values"]
    assert sub == seli.metrics(np.ascontiguousarray(H[::2]), y[::2].copy(), W)["values"]
    # float32 in any layout: equal to each other, close to float64.
    H32 = H.astype(np.float32)
    r32 = seli.metrics(H32, y, W.astype(np.float32))["values"]
    assert seli.metrics(np.asfortranarray(H32), y.astype(np.uint8), W.astype(np.float32).T.copy(), layout="dk")["values"] == r32
    assert abs(r32["dist_gw_seli"] - ref["dist_gw_seli"]) < 1e-6  # W rounded to float32
    assert abs(r32["nc1"] - ref["nc1"]) < 1e-4 * ref["nc1"]
    # Lists work too; labels in any integer dtype.
    assert seli.metrics(H.tolist(), y.astype(np.int16).tolist(), W.tolist())["values"] == ref


def test_unsupported_arrays_get_clear_errors():
    H, y, W = features()
    with pytest.raises(ValueError, match=r"features: dtype complex128 is not supported \(float16, bfloat16, float32 or float64"):
        seli.metrics(H.astype(np.complex128), y)
    # float16 is read as it is (exactly); NC1's projections of float16/float32 features are
    # float32 products with float64 sums, every other column is computed in float64.
    h16 = H.astype(np.float16)
    got, want = seli.metrics(h16, y)["values"], seli.metrics(h16.astype(np.float64), y)["values"]
    for col in ("nc1", "nc1_global"):
        g, w = got.pop(col), want.pop(col)
        assert abs(g - w) <= 1e-5 * abs(w), (col, g, w)
    assert got == want
    with pytest.raises(ValueError, match=r"features of shape \[2, 48, 6\]: expected a matrix"):
        seli.metrics(H.reshape(2, 48, 6), y)
    with pytest.raises(ValueError, match=r"labels: dtype float64 is not an integer type"):
        seli.metrics(H, y.astype(float))
    with pytest.raises(ValueError, match="features: 96 feature rows but 95 labels"):
        seli.metrics(H, y[:-1])
    with pytest.raises(ValueError, match=r"classifier of shape \[6, 4\], expected \(4, 6\).*the other --classifier-layout fits"):
        seli.metrics(H, y, W.T)
    Hn = H.copy()
    Hn[5, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value NaN at sample 5, feature 2"):
        seli.metrics(Hn, y)


# --- bad inputs: ValueError with the CLI's message ---------------------------------------------


@pytest.mark.parametrize(
    "call,flags",
    [
        (lambda: seli.geometry(step="1,10,0.5"), ["geometry", "--step", "1,10,0.5"]),
        (lambda: seli.geometry(step="10,10,1.5"), ["geometry", "--step", "10,10,1.5"]),
        (lambda: seli.geometry(counts=[5, 0, 3]), ["geometry", "--counts", "5,0,3"]),
        (lambda: seli.geometry(long_tail="10,5000"), ["geometry", "--long-tail", "10,5000"]),
        (lambda: seli.ufm(step="10,10,0.5", d=5), ["ufm", "--step", "10,10,0.5", "--d", "5", "--out", "/nonexistent/x"]),
        (lambda: seli.ufm(lr=-1.0), ["ufm", "--lr", "-1", "--out", "/nonexistent/x"]),
        (lambda: seli.ufm(schedule="step:0.1@x"), ["ufm", "--schedule", "step:0.1@x", "--out", "/nonexistent/x"]),
        (lambda: seli.ridge(step="4,10,0.5", lam=-1.0), ["ridge", "--step", "4,10,0.5", "--lambda", "-1"]),
    ],
)
def test_bad_inputs_raise_value_error_with_the_cli_message(call, flags):
    with pytest.raises(ValueError) as e:
        call()
    message = cli_error(*flags)
    # clap prefixes its own wording for flag values it rejects itself
    message = message.split("': ")[-1] if message.startswith("invalid value") else message
    assert message in str(e.value)


def test_label_errors_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="class 1 is empty"):
        seli.geometry(labels=np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="label -1 at position 1 is negative"):
        seli.geometry(labels=[0, -1])
    with pytest.raises(ValueError, match="missing.txt"):
        seli.geometry(labels=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="give at most one of step, long_tail, counts, labels"):
        seli.geometry(step="4,2,0.5", counts=[1, 2])
    with pytest.raises(ValueError, match="give lam, or lambda_w and lambda_h"):
        seli.ridge(step="4,2,0.5")
    # Labels are vectors: a column, a row or one-hot labels are refused with how to fix them.
    y = np.arange(12) % 3
    with pytest.raises(ValueError, match=r"shape \[12, 1\]; labels must be a vector of shape \(n,\); flatten it"):
        seli.geometry(labels=y[:, None])
    with pytest.raises(ValueError, match=r"shape \[1, 12\]"):
        seli.metrics(np.ones((12, 4)), y[None, :])
    with pytest.raises(ValueError, match=r"one-hot labels\? save y.argmax\(1\)"):
        seli.metrics(np.ones((12, 4)), np.eye(3, dtype=np.int64)[y])


# --- UFM, the GIL and Ctrl-C -----------------------------------------------------------------


def test_ufm_returns_its_metrics_table():
    r = seli.ufm(step="4,10,0.5,3", d=8, iters=500, every=50)
    m = r["metrics"]
    assert r["termination"] == "max-iters" and r["iters_done"] == 500
    assert list(m["iter"]) == list(range(0, 501, 50))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in m.values())
    assert m["dist_gw_seli"][-1] < m["dist_gw_seli"][0]
    assert r["targets"]["dist_gw_seli_etf"] == seli.geometry(step="4,10,0.5,3")["distances"]["dist_gw_seli_etf"]
    # Results do not depend on threads; f32 runs too.
    again = seli.ufm(step="4,10,0.5,3", d=8, iters=500, every=50, threads=1)
    assert np.array_equal(again["metrics"]["loss"], m["loss"])
    assert seli.ufm(step="4,10,0.5,3", d=8, iters=50, dtype="f32")["iters_done"] == 50
    # Plain cross-entropy's own target is SELI.
    assert np.array_equal(m["dist_gw_target"], m["dist_gw_seli"])


def test_ufm_with_a_loss_family_heads_to_its_own_target(tmp_path):
    r = seli.ufm(step="4,10,0.5,2", d=8, iters=3000, lr=0.2, loss="cdt", gamma=1.0, every=3000)
    m = r["metrics"]
    assert r["config"]["loss"] == "cdt" and r["config"]["gamma"] == 1.0
    assert m["dist_gw_target"][-1] < 0.25 < m["dist_gw_seli"][-1]
    # The same run from the CLI writes the same metrics.
    out = tmp_path / "run"
    subprocess.run(
        [SELI_BIN, "ufm", "--step", "4,10,0.5,2", "--d", "8", "--iters", "3000", "--lr", "0.2",
         "--loss", "cdt", "--gamma", "1", "--every", "3000", "--out", str(out)],
        check=True, capture_output=True,
    )
    last = (out / "metrics.csv").read_text().splitlines()
    header, row = last[0].split(","), last[-1].split(",")
    assert float(row[header.index("dist_gw_target")]) == m["dist_gw_target"][-1]
    with pytest.raises(ValueError, match="gamma = 1: applies to the losses cdt, ldt and vs only"):
        seli.ufm(step="4,10,0.5,2", d=8, iters=10, loss="la", gamma=1.0)


def read_safetensors(path):
    """The tensors of a .safetensors file as NumPy arrays (the format is an 8-byte header
    length, a JSON header, then the raw little-endian data)."""
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    dtypes = {"F64": "<f8", "F32": "<f4"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + size + a : 8 + size + b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def test_ufm_tracker_cli_analyze_and_python_metrics_agree(tmp_path):
    # One set of features measured three ways: the UFM tracker's last metrics.csv row (through
    # the CLI), `seli analyze` on the exported checkpoint arrays, and `seli.metrics` on the same
    # arrays in memory. Every column of the same name holds the same value.
    run = tmp_path / "run"
    subprocess.run(
        [SELI_BIN, "ufm", "--step", "4,10,0.5,3", "--d", "6", "--iters", "300", "--out", str(run)],
        check=True,
        capture_output=True,
    )
    lines = (run / "metrics.csv").read_text().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    tracked = {h: (float(v) if v else None) for h, v in zip(header, last)}
    t = read_safetensors(run / "checkpoint.safetensors")
    y = np.repeat(np.arange(4), [30, 30, 3, 3])
    np.save(tmp_path / "y.npy", y)
    ckpt = str(run / "checkpoint.safetensors")
    cli = cli_json(
        tmp_path, "analyze", "--features", ckpt, "--features-key", "H", "--labels", str(tmp_path / "y.npy"),
        "--classifier", ckpt, "--classifier-key", "W",
    )["values"]
    py = seli.metrics(t["H"], y, t["W"])["values"]
    assert set(py) == set(cli) and set(py) <= set(tracked)
    for name in py:
        values = [tracked[name], cli[name], py[name]]
        assert None not in values, name
        assert np.allclose(values, values[0], rtol=1e-9, atol=1e-12), (name, values)


def test_cli_sweep_and_python_build_the_same_ufm_config(tmp_path):
    # One configuration from the same flags, whoever builds it: `seli ufm`'s config.json, a
    # sweep point's run directory, and seli.ufm's "config" (threads left at their default: a
    # sweep manages them).
    flags = ["--step", "4,10,0.5,3", "--d", "6", "--iters", "20", "--lr", "0.05", "--schedule",
             "step:0.5@10", "--loss-reduction", "mean", "--dtype", "f32", "--every", "5"]
    subprocess.run([SELI_BIN, "ufm", *flags, "--out", str(tmp_path / "cli")], check=True, capture_output=True)
    cli = json.loads((tmp_path / "cli" / "config.json").read_text())
    spec = tmp_path / "s.toml"
    spec.write_text(
        'command = "ufm"\njobs = 1\n[base]\nstep = "4,10,0.5,3"\nd = 6\niters = 20\nlr = 0.05\n'
        'schedule = "step:0.5@10"\nloss_reduction = "mean"\ndtype = "f32"\nevery = 5\n'
    )
    subprocess.run([SELI_BIN, "sweep", str(spec), "--out", str(tmp_path / "sw")], check=True, capture_output=True)
    (point,) = (tmp_path / "sw" / "points").iterdir()
    swept = json.loads((point / "config.json").read_text())
    py = plain(seli.ufm(step="4,10,0.5,3", d=6, iters=20, lr=0.05, schedule="step:0.5@10",
                        loss_reduction="mean", dtype="f32", every=5)["config"])
    assert cli == swept == py
    assert cli["step_rule"] == "step:0.5@10" and cli["record"] == "every:5"


def test_ufm_releases_the_gil():
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    before = len(ticks)
    seli.ufm(step="10,100,0.5,10", d=32, iters=3000, threads=1)
    done.set()
    t.join()
    # Python code ran while the Rust loop did (it could not, had the GIL been held).
    assert len(ticks) - before > 20


def test_ctrl_c_interrupts_a_long_ufm_run():
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        seli.ufm(step="10,100,0.5,10", d=64, iters=10_000_000)
    assert time.monotonic() - start < 5.0


def test_whole_number_lists_stay_lists():
    # A ridge strength above lambda_mc collapses the minority classifiers: pairs of classes.
    r = seli.ridge(step="4,10,0.5,2", lam=3.0)
    pairs = r["solution"]["collapsed_pairs"]
    assert pairs == [[2, 3]] and isinstance(pairs[0][0], int)
    assert isinstance(r["profile"]["counts"], list)
    assert isinstance(r["gram_w"], np.ndarray) and r["gram_w"].dtype == np.float64


# --- Accumulators ----------------------------------------------------------------------------


def _collapsing(k=4, d=6, n=600, seed=0):
    """Features near their class means (far from the origin), a classifier and a bias."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    H = 10 * rng.standard_normal((k, d))[y] + 0.05 * rng.standard_normal((n, d))
    return H, y, rng.standard_normal((k, d)), rng.standard_normal(k)


def _close(got, want, rel=1e-10):
    bad = {}
    for c, w in want.items():
        g = got[c]
        if (g is None) != (w is None) or (w is not None and abs(g - w) > rel * max(abs(w), 1e-6)):
            bad[c] = (g, w)
    return bad


def test_accumulators_in_any_batching_and_merge_order_equal_one_pass():
    H, y, W, b = _collapsing()
    n, (k, d) = len(y), W.shape
    want = seli.metrics(H, y, W, bias=b)["values"]
    rng = np.random.default_rng(1)
    for trial in range(4):
        cuts = np.unique(np.r_[0, rng.integers(1, n, 7), n])
        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            a = seli.Accumulator(k, d, W, bias=b)
            # Any layout: every other batch arrives as a Fortran-order float32 copy.
            a.add(np.asfortranarray(H[lo:hi]) if trial % 2 else H[lo:hi], y[lo:hi])
            parts.append(a)
        order = rng.permutation(len(parts))
        merged = parts[order[0]]
        for i in order[1:]:
            # Workers send their accumulators as bytes.
            merged.merge(seli.Accumulator.from_bytes(parts[i].to_bytes()))
        assert merged.n == n and merged.counts == list(np.bincount(y, minlength=k))
        # Second pass: two workers start from the merged first pass, then merge.
        first = merged.to_bytes()
        w1, w2 = seli.Accumulator.from_bytes(first), seli.Accumulator.from_bytes(first)
        w1.add_second(H[: n // 3], y[: n // 3])
        w2.add_second(H[n // 3 :], y[n // 3 :])
        w1.merge(w2)
        assert _close(w1.metrics()["values"], want) == {}, trial
    # Without a second pass, NC4 is missing and dist_z is its streaming form.
    one = seli.Accumulator(k, d, W, bias=b)
    one.add(H, y)
    v = one.metrics()["values"]
    assert v["ncc_mismatch"] is None and abs(v["dist_z"] - want["dist_z"]) < 1e-6
    one_pass = [c for c in want if c not in ("ncc_mismatch", "dist_z")]
    assert _close({c: v[c] for c in one_pass}, {c: want[c] for c in one_pass}) == {}
    # Pickling goes through the same bytes.
    import pickle

    again = pickle.loads(pickle.dumps(one))
    assert again.metrics()["values"] == v
    assert repr(again) == f"seli.Accumulator(k={k}, d={d}, n={n})"


def test_projected_accumulators_need_the_second_pass_for_nc1_and_then_agree():
    H, y, W, b = _collapsing(seed=5)
    n, (k, d) = len(y), W.shape
    want = seli.metrics(H, y, W, bias=b)["values"]
    parts = []
    for lo, hi in [(0, n // 4), (n // 4, n // 2), (n // 2, n)]:
        a = seli.Accumulator(k, d, W, bias=b, scatter="projected")
        a.add(H[lo:hi], y[lo:hi])
        parts.append(a)
    merged = parts[2]
    merged.merge(parts[0])
    merged.merge(pickle.loads(pickle.dumps(parts[1])))
    assert merged.metrics()["values"]["nc1"] is None
    w1, w2 = pickle.loads(pickle.dumps(merged)), merged
    w1.add_second(H[: n // 2], y[: n // 2])
    w2.add_second(H[n // 2 :], y[n // 2 :])
    w2.merge(w1)
    assert _close(w2.metrics()["values"], want) == {}
    # Without a classifier the second pass is for NC1 alone; float32 features are multiplied in
    # float32 with float64 sums: within 1e-5 of the float64 measurement of the same values.
    h32 = H.astype(np.float32)
    f = seli.Accumulator(k, d, scatter="projected")
    f.add(h32, y)
    f.add_second(h32, y)
    exact = seli.metrics(h32.astype(np.float64), y)["values"]
    for col in ("nc1", "nc1_global"):
        assert abs(f.metrics()["values"][col] - exact[col]) <= 1e-5 * abs(exact[col]), col
    with pytest.raises(ValueError, match=r"scatter 'dense': expected 'full' or 'projected'"):
        seli.Accumulator(k, d, scatter="dense")
    with pytest.raises(ValueError, match=r"a second pass needs logits"):
        g = seli.Accumulator(k, d)
        g.add(H, y)
        g.add_second(H, y)


def test_accumulators_take_half_precision_and_given_logits():
    H, y, W, b = _collapsing(seed=3)
    k, d = W.shape
    h16 = H.astype(np.float16)
    a = seli.Accumulator(k, d)
    a.add(h16, y)
    # float16 is read exactly: the same as its float64 values.
    assert _close(a.metrics()["values"], seli.metrics(h16.astype(np.float64), y)["values"], 1e-12) == {}
    Z = H @ W.T + b
    g = seli.Accumulator(k, d, W)
    g.add(H, y, logits=Z)
    g.add_second(H, y, logits=Z)
    assert _close(g.metrics()["values"], seli.metrics(H, y, W, logits=Z)["values"]) == {}
    assert g.metrics()["logits"] == "file"


def test_accumulator_errors_name_the_value():
    H, y, W, b = _collapsing(seed=4)
    k, d = W.shape
    a = seli.Accumulator(k, d, W)
    a.add(H[:50], y[:50])
    with pytest.raises(ValueError, match=rf"shape \[10, {d - 1}\]: expected \(b, d\)"):
        a.add(H[:10, :-1], y[:10])
    with pytest.raises(ValueError, match=rf"label {k + 3} at position 1 of the batch is outside 0..{k}"):
        a.add(H[:2], [0, k + 3])
    with pytest.raises(ValueError, match=r"3 feature rows but 2 labels"):
        a.add(H[:3], y[:2])
    bad = H[:5].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value nan at sample 2, feature 1|non-finite value NaN at sample 2, feature 1"):
        a.add(bad, y[:5])
    with pytest.raises(ValueError, match=rf"cannot merge an accumulator of k = {k}, d = {d + 1}"):
        a.merge(seli.Accumulator(k, d + 1))
    with pytest.raises(ValueError, match=r"different classifiers"):
        a.merge(seli.Accumulator(k, d, -W))
    with pytest.raises(ValueError, match=r"logits.*with every batch or with none"):
        a.add(H[:4], y[:4], logits=H[:4] @ W.T)
    with pytest.raises(ValueError, match=r"classifier of shape \[4, 6\], expected \(5, 6\)"):
        seli.Accumulator(5, d, W)
    with pytest.raises(ValueError, match=r"class 1 has no samples"):
        e = seli.Accumulator(k, d)
        e.add(H[y != 1][:20], y[y != 1][:20])
        e.metrics()
    raw = bytearray(a.to_bytes())
    raw[-3] ^= 1
    with pytest.raises(ValueError, match=r"accumulator bytes: checksum mismatch"):
        seli.Accumulator.from_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"dtype int64 is not supported"):
        a.add(np.ones((2, d), dtype=np.int64), y[:2])


def test_cdnv_and_trace_quotient_against_numpy_definitions():
    H, y, W, b = _collapsing(k=5, d=7, n=700, seed=8)
    k = 5
    v = seli.metrics(H, y, W)["values"]
    M = np.stack([H[y == c].mean(0) for c in range(k)])
    var = np.array([((H[y == c] - M[c]) ** 2).sum(1).mean() for c in range(k)])
    pairs = [(var[a] + var[c]) / (2 * ((M[a] - M[c]) ** 2).sum()) for a in range(k) for c in range(a + 1, k)]
    assert abs(v["cdnv"] - np.mean(pairs)) <= 1e-10 * np.mean(pairs)
    Mc = M - M.mean(0)
    sw = ((H - M[y]) ** 2).sum() / len(y)
    sb = (Mc**2).sum() / k
    assert abs(v["nc1_quotient"] - sw / sb) <= 1e-10 * (sw / sb)
    # Every sample on its class mean: both are 0.
    z = seli.metrics(M[y], y)["values"]
    assert z["cdnv"] < 1e-20 and z["nc1_quotient"] < 1e-20


def test_gnc2_and_unc3_against_numpy_definitions():
    H, y, W, b = _collapsing(k=5, d=4, n=500, seed=11)
    k, d = 5, 4
    v = seli.metrics(H, y, W)["values"]
    M = np.stack([H[y == c].mean(0) for c in range(k)])
    Mc = M - M.mean(0)
    m = Mc / np.linalg.norm(Mc, axis=1, keepdims=True)
    dist = np.array([np.linalg.norm(m[a] - m[c]) for a in range(k) for c in range(a + 1, k)])
    for col, kern in (("gnc2_log", lambda x: np.log(1 / x)), ("gnc2_riesz", lambda x: x ** (-(d - 2)))):
        want = np.var(kern(dist))
        assert abs(v[col] - want) <= 1e-10 * abs(want), col
    cos = (W * Mc).sum(1) / (np.linalg.norm(W, axis=1) * np.linalg.norm(Mc, axis=1))
    assert abs(v["unc3"] - np.var(cos)) <= 1e-10 * np.var(cos)
    # Without a classifier UNC3 is undefined; the GNC2 columns need only the means.
    assert seli.metrics(H, y)["values"]["unc3"] is None


def test_held_out_ood_and_per_class_from_numpy_definitions():
    rng = np.random.default_rng(7)
    k, d = 4, 6
    means = 3 * rng.standard_normal((k, d))
    y = rng.integers(0, k, 400)
    H = means[y] + 0.3 * rng.standard_normal((400, d))
    W, b = rng.standard_normal((k, d)), rng.standard_normal(k)
    ye = rng.integers(0, k, 300)
    He = means[ye] + 2.0 * rng.standard_normal((300, d))
    Ho = rng.standard_normal((80, d)) + 1.5
    m = seli.metrics(H, y, W, bias=b, per_class=True, eval_features=He, eval_labels=ye, ood_features=Ho)
    M = np.stack([H[y == c].mean(0) for c in range(k)])
    Z = He @ W.T + b
    ncc = ((He[:, None, :] - M[None]) ** 2).sum(-1).argmin(1)
    e = m["eval"]
    assert e["n"] == 300
    assert e["accuracy"] == np.mean(Z.argmax(1) == ye)
    assert e["ncc_accuracy"] == np.mean(ncc == ye)
    assert e["ncc_mismatch"] == np.mean(ncc != Z.argmax(1)) and e["ncc_mismatch"] > 0
    g = M.mean(0)
    o = Ho.mean(0) - g
    Mc = M - g
    nc5 = np.mean(np.abs(Mc @ o) / (np.linalg.norm(Mc, axis=1) * np.linalg.norm(o)))
    assert abs(m["ood"]["nc5"] - nc5) < 1e-12 and m["ood"]["n"] == 80
    ss = np.array([((H[y == c] - M[c]) ** 2).sum() for c in range(k)])
    for c, row in enumerate(m["per_class"]):
        assert row["class"] == c and row["count"] == np.sum(y == c)
        assert abs(row["within_var"] - ss[c] / np.sum(y == c)) < 1e-10 * row["within_var"]
        assert abs(row["within_share"] - ss[c] / ss.sum()) < 1e-12
        assert abs(row["w_norm"] - np.linalg.norm(W[c])) < 1e-12
        assert abs(row["muc_norm"] - np.linalg.norm(Mc[c])) < 1e-10
        Zc = H[y == c] @ W.T + b
        nccc = ((H[y == c][:, None, :] - M[None]) ** 2).sum(-1).argmin(1)
        assert abs(row["ncc_agreement"] - np.mean(Zc.argmax(1) == nccc)) < 1e-12
        for col in ("cos_w_seli", "cos_w_etf", "cos_muc_seli", "cos_muc_etf"):
            assert -1 <= row[col] <= 1 + 1e-12
    # Features placed at the simplex ETF with classifiers along them: every ETF cosine is 1.
    etf = np.eye(k) - 1 / k
    He2 = np.hstack([etf, np.zeros((k, d - k))])[np.repeat(np.arange(k), 5)]
    p = seli.metrics(He2, np.repeat(np.arange(k), 5), np.hstack([etf, np.zeros((k, d - k))]), per_class=True)
    for row in p["per_class"]:
        assert abs(row["cos_w_etf"] - 1) < 1e-9 and abs(row["cos_muc_etf"] - 1) < 1e-9
        assert abs(row["cos_w_seli"] - 1) < 1e-9  # balanced: SELI is the ETF
    with pytest.raises(ValueError, match="eval_features and eval_labels go together"):
        seli.metrics(H, y, eval_features=He)
    # The same views from an accumulator fed in batches (both passes, merged from two halves).
    parts = []
    for idx in (np.arange(0, 150), np.arange(150, 400)):
        a = seli.Accumulator(k, d, W, bias=b)
        for lo in range(0, len(idx), 64):
            a.add(H[idx[lo:lo + 64]], y[idx[lo:lo + 64]])
        parts.append(a)
    acc = parts[0]
    acc.merge(parts[1])
    for lo in range(0, 400, 100):
        acc.add_second(H[lo:lo + 100], y[lo:lo + 100])
    for key, value in acc.held_out(He, ye).items():
        assert abs(value - e[key]) <= 1e-12 * max(1, abs(e[key])), key
    assert abs(acc.ood(Ho)["nc5"] - nc5) < 1e-12
    for row, want in zip(acc.per_class(), m["per_class"]):
        for key, value in want.items():
            got = row[key]
            if isinstance(value, (int, float)):
                assert abs(got - value) <= 1e-9 * max(1, abs(value)), key
            else:
                assert got == value, key
    with pytest.raises(ValueError, match="eval_labels|labels"):
        acc.held_out(He, np.full(300, k))
    with pytest.raises(ValueError, match="ood_features"):
        acc.ood(Ho[:, :3])


@pytest.mark.parametrize(
    "flags",
    [
        ["--loss", "cdt", "--gamma", "0.5"],
        ["--loss", "cdt", "--gamma", "-1"],
        ["--loss", "ldt", "--gamma", "1"],
        ["--loss", "ce", "--bias"],
        ["--loss", "cdt", "--gamma", "0.5", "--bias"],
    ],
)
def test_class_level_targets_equal_a_sample_level_solve(flags):
    """The class-level reduction (docs/theory.md §10) against the sample-level max-margin
    problem written from the margins and solved by cvxpy (scripts/bench-targets.py)."""
    pytest.importorskip("cvxpy")
    script = ROOT / "scripts" / "bench-targets.py"
    res = subprocess.run(
        [sys.executable, str(script), "--k", "4", "--n-min", "2", "--seli", SELI_BIN, "--json", *flags],
        check=True, capture_output=True, text=True,
    )
    r = json.loads(res.stdout)
    assert r["n"] == 44 and r["relative_difference"] < 1e-4, r


def test_features_at_a_loss_target_are_at_distance_zero_from_it():
    """Features and classifiers built from the certified cdt target (its B = U S V^T:
    W = S^1/2 U^T, class means S^1/2 V^T D^-1/2) measure 0 against that target and not 0
    against SELI; the same with a bias (the model then has one)."""
    for bias in (False, True):
        g = seli.geometry(step="4,10,0.5,2", loss="cdt", gamma=1.0, bias=bias)
        counts = np.array(g["profile"]["counts"])
        C = np.array(g["matrices"]["logits"])
        B = C * np.sqrt(counts)[None, :]
        U, S, Vt = np.linalg.svd(B)
        W = np.sqrt(S)[:, None] * U.T                      # d x k (d = k)
        M = (np.sqrt(S)[:, None] * Vt) / np.sqrt(counts)[None, :]
        y = np.repeat(np.arange(4), counts)
        H = M[:, y].T                                      # n x d
        b = np.array(g["target"]["bias"]) if bias else None
        # The features are at their class means exactly: the classifier's own bias applies.
        m = seli.metrics(H, y, W.T, bias=b, loss="cdt", gamma=1.0)
        v = m["values"]
        assert m["target_loss"] == {"loss": "cdt", "gamma": 1.0, "tau": 0.0, "bias": bias}
        assert v["dist_gw_target"] < 1e-6 and v["dist_gm_target"] < 1e-6, v
        assert v["dist_gw_seli"] > 0.1
        # Without the loss, the target is SELI's (with a bias: the bias target).
        plain = seli.metrics(H, y, W.T, bias=b)["values"]
        assert plain["dist_gw_target"] > 0.1
    with pytest.raises(ValueError, match="tau = 1"):
        seli.metrics(H, y, W.T, loss="cdt", tau=1.0)
