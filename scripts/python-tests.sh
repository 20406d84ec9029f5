#!/usr/bin/env bash
# Builds the Python wheel (crates/seli-py, maturin), installs it into a virtual environment
# under target/py-venv and runs the pytest suite, which compares the module with the seli CLI
# (target/release/seli: build it first, as `cargo test --release --workspace` does).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py-venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "maturin==1.16.0" numpy pytest
rm -f target/wheels/seli-*.whl
"$venv/bin/maturin" build --release -m crates/seli-py/Cargo.toml -i "$venv/bin/python" -o target/wheels
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/seli-*.whl
SELI_BIN="$PWD/target/release/seli" "$venv/bin/python" -m pytest -q crates/seli-py/tests
