#!/usr/bin/env bash
# Builds the Python wheel (crates/seli-py, maturin), installs it into a virtual environment
# under target/py-venv and runs the pytest suite, which compares the module with the seli CLI
# (target/release/seli: build it first, as `cargo test --release` does).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py-venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# No pip cache: every wheel would otherwise sit on the disk twice (PyTorch's are about 3 GB).
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir "$@"; }
pip_install "maturin==1.16.0" numpy pytest
# cvxpy: the sample-level solves the class-level loss targets are checked against.
pip_install cvxpy
# PyTorch for the accumulator tests (from the registry, about 3.5 minutes the first time; kept
# in the virtual environment afterwards). The registry's Linux wheel brings CUDA's libraries:
# 5.8 GB installed, and about 3 GB more of downloads while it installs.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    free_kb="$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')"
    if (( free_kb < 10 * 1024 * 1024 )); then
        echo "python-tests: PyTorch needs about 9 GB free while it installs; $venv's disk has $((free_kb / 1024)) MB" >&2
    fi
    pip_install torch
fi
rm -f target/wheels/seli-*.whl
"$venv/bin/maturin" build --release -m crates/seli-py/Cargo.toml -i "$venv/bin/python" -o target/wheels
# One wheel for every CPython >= 3.9: the stable ABI, and its tag in the file name.
wheels=(target/wheels/seli-*-cp39-abi3-*.whl)
if [[ ! -f "${wheels[0]}" ]]; then
    echo "python-tests: expected an abi3 wheel (seli-*-cp39-abi3-*.whl), found: $(ls target/wheels)" >&2
    exit 1
fi
pip_install --force-reinstall --no-deps "${wheels[0]}"
SELI_BIN="$PWD/target/release/seli" "$venv/bin/python" -m pytest -q crates/seli-py/tests

# The same wheel imported and used by the oldest and newest other CPythons on this machine
# (pyenv's, where present), each in its own virtual environment with NumPy from the registry.
for version in 3.9 3.13; do
    python="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 2>/dev/null | tail -n 1 || true)"
    if [[ -z "$python" ]]; then
        echo "python-tests: no CPython $version here; the abi3 wheel was tested on $("$venv/bin/python" -V) only"
        continue
    fi
    other="target/py-venv-$version"
    [[ -x "$other/bin/python" ]] || "$python" -m venv "$other"
    "$other/bin/pip" install -q --disable-pip-version-check --no-cache-dir numpy
    "$other/bin/pip" install -q --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "${wheels[0]}"
    "$other/bin/python" - <<'PY'
import sys
from pathlib import Path
import numpy as np
import seli
ext = [p.name for p in Path(seli.__file__).parent.glob("*.so")]
assert len(ext) == 1 and ext[0].endswith(".abi3.so"), ext
# Reference values: the README's first table (STEP k = 10, R = 100); balanced counts give the ETF.
g = seli.geometry(step="10,100,0.5")
assert abs(g["distances"]["dist_gw_seli_etf"] - 0.633919) < 1e-6, g["distances"]
assert seli.geometry(counts=[5] * 4)["distances"]["dist_gw_seli_etf"] < 1e-12
rng = np.random.default_rng(0)
m = seli.metrics(rng.standard_normal((40, 6)).astype(np.float32), np.arange(40) % 4)
assert m["n"] == 40, m.keys()
print(f"python-tests: abi3 wheel works on Python {sys.version.split()[0]}, NumPy {np.__version__}")
PY
done
