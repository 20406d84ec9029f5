#!/usr/bin/env python3
"""The GPU engine's kernels (crates/seli-train/src/engine/kernels.cu) compiled by NVRTC, as a
CUDA build compiles them on the GPU at run time, without a GPU (CI has none).

NVRTC is the one from PyTorch's CUDA 13 wheels (nvidia/cu13/lib/libnvrtc.so.13 in the running
Python's site-packages, as the test virtualenv has it), or the first libnvrtc.so.13 the loader
finds. The source gets the prelude the engine gives it (`#define T 256`) and is compiled for
sm_90 (an H100/H200) and for NVRTC's default architecture; every kernel must appear in the PTX.

    target/py-venv/bin/python scripts/nvrtc-check.py

Exit 1 when NVRTC cannot be loaded, reports an error or drops a kernel.
"""

import ctypes
import re
import site
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "crates/seli-train/src/engine/kernels.cu"
# As engine/device.rs's THREADS.
PRELUDE = "#define T 256\n"


def load():
    for d in site.getsitepackages():
        lib = Path(d) / "nvidia/cu13/lib/libnvrtc.so.13"
        if lib.exists():
            return ctypes.CDLL(str(lib)), lib
    try:
        return ctypes.CDLL("libnvrtc.so.13"), "libnvrtc.so.13"
    except OSError as e:
        sys.exit(f"nvrtc-check: NVRTC (libnvrtc.so.13) not found: {e}")


def compile_ptx(nvrtc, source, options):
    prog = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"seli_engine.cu", 0, None, None)
    if status != 0:
        sys.exit(f"nvrtc-check: nvrtcCreateProgram failed ({status})")
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if status != 0:
        return None, log.value.decode(errors="replace")
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(), log.value.decode(errors="replace")


def main():
    nvrtc, where = load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    source = PRELUDE + SOURCE.read_text()
    kernels = re.findall(r'extern "C" __global__ void (\w+)\(', source)
    failed = False
    for options in (["--gpu-architecture=compute_90"], []):
        ptx, log = compile_ptx(nvrtc, source, options)
        label = " ".join(options) or "NVRTC's default architecture"
        if ptx is None:
            print(f"nvrtc-check: {SOURCE.name} does not compile ({label}):\n{log}")
            failed = True
            continue
        missing = [k for k in kernels if f".entry {k}(" not in ptx]
        if missing:
            print(f"nvrtc-check: kernels missing from the PTX ({label}): {missing}")
            failed = True
        else:
            warnings = f"; warnings:\n{log}" if log.strip() else ""
            print(f"nvrtc-check: {len(kernels)} kernels compile ({label}), {len(ptx)} bytes of PTX{warnings}")
    print(f"NVRTC {major.value}.{minor.value} from {where}")
    sys.exit(1 if failed else 0)


main()
