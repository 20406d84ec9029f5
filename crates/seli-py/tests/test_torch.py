"""seli.Accumulator with PyTorch: the README's training-loop example run as written, tensors of
every float dtype and layout read in place, tensors off the CPU refused. scripts/python-tests.sh
installs torch (from the package registry) into the test environment; under CI a missing torch
is an error, elsewhere these tests skip."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

import seli

if os.environ.get("CI"):
    import torch
else:
    torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]


def readme_example():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- torch-example:start -->\n```python\n(.*?)```\n<!-- torch-example:end -->", text, re.S)
    assert block, "README.md lost its torch example"
    return block.group(1)


class Net(torch.nn.Module):
    def __init__(self, d_in, d, k):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.ReLU(), torch.nn.Linear(32, d), torch.nn.ReLU())
        self.fc = torch.nn.Linear(d, k)

    def forward(self, x):
        return self.fc(self.body(x))


def test_the_readme_training_loop_runs_and_measures_what_seli_metrics_measures(capsys):
    torch.manual_seed(0)
    k, d_in, d, n = 4, 10, 16, 400
    # STEP-imbalanced labels (two majority classes, R = 4) and separable inputs.
    y = torch.tensor([0] * 160 + [1] * 160 + [2] * 40 + [3] * 40)
    x = torch.randn(k, d_in)[y] * 3 + 0.3 * torch.randn(n, d_in)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    model = Net(d_in, d, k)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scope = {"model": model, "opt": opt, "loader": loader, "k": k, "epochs": 3}
    exec(readme_example(), scope)
    printed = capsys.readouterr().out
    assert printed.count("dist to SELI") == 3, printed
    # The last epoch's accumulator against seli.metrics on all the features at once.
    with torch.no_grad():
        H = model.body(x).numpy()
    W, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    want = seli.metrics(H, y.numpy(), W, bias=b)["values"]
    got = scope["acc"].metrics()["values"]
    for c, w in want.items():
        if c in ("ncc_mismatch", "dist_z"):  # second-pass columns (the example makes one pass)
            continue
        g = got[c]
        assert (g is None) == (w is None), c
        if w is not None:
            # float32 features summed in another order (shuffled batches): f32 rounding.
            assert abs(g - w) <= 1e-4 * max(abs(w), 1e-3), (c, g, w)


def test_tensors_of_every_dtype_and_layout_are_read_in_place():
    torch.manual_seed(1)
    k, d, n = 3, 5, 90
    y = torch.arange(n) % k
    H = torch.randn(k, d)[y] * 4 + 0.2 * torch.randn(n, d)
    W = torch.randn(k, d, requires_grad=True)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        h = H.to(dtype)
        ref = seli.metrics(h.to(torch.float64).numpy(), y.numpy(), W.detach().numpy().astype(np.float64))["values"]
        # Row-major, column-major, and a strided view (every other element of a wider tensor).
        for view in (h, h.t().contiguous().t(), torch.stack([h, -h], 2)[:, :, 0]):
            acc = seli.Accumulator(k, d, W)
            acc.add(view, y)
            got = acc.metrics()["values"]
            # The values the tensor holds, exactly: the same as their float64.
            for c in ref:
                if c in ("ncc_mismatch", "dist_z"):
                    continue
                assert (got[c] is None and ref[c] is None) or abs(got[c] - ref[c]) <= 1e-12 * max(abs(ref[c]), 1e-6), (dtype, c)
    # seli.metrics takes tensors too, and a tensor with requires_grad.
    Hg = H.clone().requires_grad_(True)
    assert seli.metrics(Hg, y)["n"] == n


def test_tensors_off_the_cpu_are_refused_with_the_way_to_move_them():
    acc = seli.Accumulator(3, 4)
    off = torch.empty(6, 4, device="meta")
    with pytest.raises(ValueError, match=r"features: a tensor on device 'meta': seli reads tensors in CPU memory; pass features.cpu\(\)"):
        acc.add(off, torch.arange(6) % 3)
    with pytest.raises(ValueError, match=r"labels: a tensor on device 'meta'"):
        acc.add(torch.zeros(6, 4), torch.empty(6, dtype=torch.int64, device="meta"))


def test_the_benchmark_script_runs_and_seli_matches_the_pytorch_reference_nc1(tmp_path):
    """scripts/bench-analyze.py at a small size: the reference computation (one-hot class sums,
    batched within-class covariance, Tr(pinv(Sigma_B) Sigma_W)/k, written in PyTorch) and
    seli.metrics on the same array give the same NC1."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(root / "scripts/bench-analyze.py"), "--n", "3000", "--d", "24", "--k", "5",
           "--chunk", "512", "--repeats", "1", "--json", str(out)]
    env = dict(os.environ)
    if "SELI_BIN" in env:
        cmd += ["--seli", env["SELI_BIN"]]
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "PyTorch/this" in printed
    rows = {name: (sec, nc1) for name, sec, nc1 in json.loads(out.read_text())["rows"]}
    torch_nc1 = next(v for k, v in rows.items() if k.startswith("PyTorch"))[1]
    seli_nc1 = rows["seli.metrics (every column)"][1]
    # float32 products on both sides.
    assert abs(seli_nc1 - torch_nc1) <= 1e-5 * torch_nc1, (seli_nc1, torch_nc1)


def test_the_ufm_benchmark_times_the_ufm_gradient_step_beside_seli(tmp_path):
    """scripts/bench-ufm.py: the step PyTorch times is gradient descent on the summed
    cross-entropy (checked against autograd), and the script runs beside seli's solver and
    beside its burn iteration, one PyTorch figure and ratio per seli row."""
    import importlib.util
    import subprocess
    import sys

    path = ROOT / "scripts/bench-ufm.py"
    spec = importlib.util.spec_from_file_location("bench_ufm", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    H = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3])
    Y = torch.nn.functional.one_hot(y, 4).T.to(torch.float64)
    torch.nn.functional.cross_entropy((W.T @ H).T, y, reduction="sum").backward()
    W1, H1 = bench.ufm_step(W.detach(), H.detach(), Y, 0.1)
    assert torch.allclose(W1, W.detach() - 0.1 * W.grad, rtol=0, atol=1e-12)
    assert torch.allclose(H1, H.detach() - 0.1 * H.grad, rtol=0, atol=1e-12)

    # seli's solver: one and every thread (one row each when there is one core), f64 and f32.
    for extra, rows in [([], {2, 4}), (["--burn"], {2})]:
        cmd = [sys.executable, str(path), "--device", "cpu", "--quick", *extra]
        if "SELI_BIN" in os.environ:
            cmd += ["--seli", os.environ["SELI_BIN"]]
        printed = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        ratios = re.findall(r"^\s*\d+\s+\d+\s+\d+\s+f(?:32|64)\s.*\s([0-9.]+)x$", printed, re.M)
        assert len(ratios) in rows and all(float(r) > 0 for r in ratios), printed
