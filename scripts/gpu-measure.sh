#!/usr/bin/env bash
# The GPU checks and measurements, in one script for a GPU machine that has no Rust toolchain and
# no registry: the CUDA build of seli (carried as target/cuda/seli.xz) beside PyTorch on the same
# GPU, and a short real training run.
#
#   scripts/gpu-measure.sh --pack      here: target/cuda/mnist.tar.xz from data/mnist (after
#                                      scripts/build-cuda.sh made target/cuda/seli.xz)
#   scripts/gpu-measure.sh OUT         on the GPU machine: everything below, log in OUT/gpu.log
#
# Steps: the environment (nvidia-smi, where NVRTC and the CUDA headers are: the CUDA toolkit, or
# PyTorch's nvidia wheels), the refusal when the headers are missing, training throughput of
# both MLPs and ResNet-18 beside PyTorch (scripts/bench-train.py), UFM iterations beside PyTorch
# (scripts/bench-ufm.py), `seli ufm --device cuda` (a tracked run beside the CPU's, the large
# size in f32 and f64, Ctrl-C on the GPU and the end on the CPU), and a short MNIST run on the
# GPU that is interrupted and finished on the CPU from its checkpoint.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == --pack ]]; then
    tar -C data -cf - mnist | xz -T0 -6 >target/cuda/mnist.tar.xz
    ls -l target/cuda/
    exit 0
fi
out="${1:?usage: scripts/gpu-measure.sh OUT}"
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
work="$(mktemp -d)"
xz -dc target/cuda/seli.xz >"$work/seli" && chmod +x "$work/seli"
seli="$work/seli"
"$seli" --version

# NVRTC and the headers: the toolkit when there is one, else PyTorch's nvidia/cu13 wheels.
if command -v nvcc >/dev/null; then
    cuda_root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
site="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))')"
nvrtc="$(find "${cuda_root:-/nonexistent}" $site -name 'libnvrtc.so.13*' 2>/dev/null | head -1)"
echo "nvcc root: ${cuda_root:-none}; libnvrtc: ${nvrtc:-not found}"
[[ -n "$nvrtc" ]] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ -n "${cuda_root:-}" && -f "$cuda_root/include/cuda_fp16.h" ]]; then
    export CUDA_PATH="$cuda_root"
else
    # The wheels' include folders merged into one tree, as cubecl expects one CUDA_PATH.
    mkdir -p "$work/cuda/include"
    for inc in $(find $site -path '*nvidia*' -type d -name include 2>/dev/null); do
        cp -rn "$inc"/. "$work/cuda/include/" 2>/dev/null || true
    done
    export CUDA_PATH="$work/cuda"
fi
echo "CUDA_PATH=$CUDA_PATH"; ls "$CUDA_PATH/include" | head -30
for h in cuda_fp16.h mma.h cooperative_groups.h cuda/barrier; do
    [[ -e "$CUDA_PATH/include/$h" ]] && echo "header $h: ok" || echo "header $h: MISSING"
done

step "refusals (expected to fail, each with a clear message)"
CUDA_PATH=/nonexistent "$seli" bench train --device cuda --mlp-steps 1 --resnet-steps 0 && echo UNEXPECTED-SUCCESS
"$seli" bench train --device cuda:7 --mlp-steps 1 --resnet-steps 0 && echo UNEXPECTED-SUCCESS

step "first kernels (compile time included)"
time "$seli" bench train --device cuda --mlp-steps 5 --resnet-steps 2

step "training throughput beside PyTorch"
timeout 300 python3 scripts/bench-train.py --device cuda --seli "$seli" --steps 200 \
    --resnet-steps 30 --json "$out/bench-train.json"

step "UFM gradient descent beside PyTorch (burn tensors on the GPU)"
timeout 240 python3 scripts/bench-ufm.py --device cuda --seli "$seli" --iters 2000

step "seli ufm on the GPU: a tracked run beside the same run on the CPU, then the large size"
u="$out/ufm"
for dev in cpu cuda; do
    time "$seli" ufm --step 10,10,0.5,50 --d 64 --iters 2000 --every 500 --device "$dev" \
        --out "$u-small-$dev" --force | tail -4
done
paste -d'\n' <(tail -1 "$u-small-cpu/metrics.csv") <(tail -1 "$u-small-cuda/metrics.csv")
for dt in f32 f64; do
    time timeout 120 "$seli" ufm --step 100,10,0.5,200 --d 512 --dtype "$dt" --iters 500 \
        --every 250 --schedule constant --lr 1e-3 --device cuda --out "$u-large-$dt" --force \
        | head -1
done
timeout -s INT 20 "$seli" ufm --step 100,10,0.5,200 --d 512 --dtype f32 --iters 100000 \
    --every 1000 --device cuda --out "$u-stopped" --force | head -1
echo "exit ${PIPESTATUS[0]} (130: interrupted)"
"$seli" ufm --resume "$u-stopped" --device cpu --iters "$(( $(python3 -c "import json; print(json.load(open('$u-stopped/summary.json'))['iters_done'])") + 10 ))" | head -1

step "a short MNIST run on the GPU, interrupted, finished on the CPU"
mkdir -p "$work/data" && xz -dc target/cuda/mnist.tar.xz | tar -C "$work/data" -xf -
run="$out/mnist-gpu"
timeout -s INT 45 "$seli" train --device cuda --data-dir "$work/data" --epochs 20 \
    --checkpoint-every 1 --every 2 --out "$run" --force
echo "exit $? (130: interrupted)"
time "$seli" train --resume "$run" --device cpu
cat "$run/summary.json" | head -40
rm -rf "$work"
