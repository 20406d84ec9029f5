#!/usr/bin/env bash
# The GPU checks and measurements, in one script for a GPU machine that has no Rust toolchain and
# no registry: the CUDA build of seli (carried compressed) beside PyTorch on the same
# GPU, and a short real training run.
#
#   scripts/gpu-measure.sh --pack          here, after scripts/build-cuda.sh: target/gpu-carry,
#                                          what travels (the compressed binary, its sources id,
#                                          data/mnist compressed; about 21 MB; and the fusion
#                                          build when build-cuda.sh --fusion made a current one)
#   scripts/gpu-measure.sh OUT             on the GPU machine, with target/gpu-carry carried:
#                                          everything below, log in OUT/gpu.log
#   scripts/gpu-measure.sh --rehearse OUT  here, before spending device time: the same steps on
#                                          the CPU with target/release/seli and small sizes (the
#                                          GPU-only checks fail, as they should)
#
# Steps: the environment (nvidia-smi, where NVRTC and the CUDA headers are: the CUDA toolkit, or
# PyTorch's nvidia wheels), the refusal when the headers are missing, training throughput of
# both MLPs and ResNet-18 beside PyTorch (scripts/bench-train.py), UFM iterations beside PyTorch
# (scripts/bench-ufm.py), `seli ufm --device cuda` (a tracked run beside the CPU's, the large
# size in f32 and f64, Ctrl-C on the GPU and the end on the CPU), and a short MNIST run on the
# GPU that is interrupted and finished on the CPU from its checkpoint; last, when the fusion build
# travelled, `seli bench train` and `seli bench ufm` with the plain and the fusion build in turn
# (a second round when time is left).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == --pack ]]; then
    built="$(cat target/cuda/seli.sources 2>/dev/null || echo unknown)"
    now="$(scripts/build-cuda.sh --sources)"
    if [[ "$built" != "$now" || "$now" == uncommitted ]]; then
        echo "gpu-measure.sh: target/cuda/seli was built from sources $built, the checkout is at $now:" \
            "commit, then run scripts/build-cuda.sh" >&2
        exit 1
    fi
    # Only what travels (the uncompressed binary alone is over the 64 MiB a device run carries).
    carry=target/gpu-carry
    rm -rf "$carry" && mkdir -p "$carry"
    cp target/cuda/seli.xz target/cuda/seli.sources "$carry/"
    # The fusion build (scripts/build-cuda.sh --fusion), when there is a current one: timed
    # against the plain build in the same run.
    if [[ -f target/cuda/seli-fusion.xz ]]; then
        fused="$(cat target/cuda/seli-fusion.sources 2>/dev/null || echo unknown)"
        if [[ "$fused" == "$now" ]]; then
            cp target/cuda/seli-fusion.xz "$carry/"
        else
            echo "gpu-measure.sh: leaving out target/cuda/seli-fusion (built from sources $fused)" >&2
        fi
    fi
    tar -C data -cf - mnist | xz -T0 -6 >"$carry/mnist.tar.xz"
    ls -l "$carry"
    size="$(du -sm "$carry" | cut -f1)"
    if (( size > 60 )); then
        echo "gpu-measure.sh: $carry is $size MiB, over what a device run carries (64 MiB)" >&2
        exit 1
    fi
    echo "gpu-measure.sh: carry $carry ($size MiB); on the GPU machine: bash scripts/gpu-measure.sh \$OUT"
    exit 0
fi
rehearse=""
if [[ "${1:-}" == --rehearse ]]; then
    rehearse=1
    shift
fi
out="${1:?usage: scripts/gpu-measure.sh [--rehearse] OUT}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
exec > >(tee "$out/gpu.log") 2>&1
step() { echo; echo "=== $* ($(date +%T))"; }
work="$(mktemp -d)"
# Sizes: the issue's on the GPU; small ones for a rehearsal on the CPU.
if [[ -n "$rehearse" ]]; then
    dev=cpu seli="$PWD/target/release/seli" py="${PYTHON:-target/py-venv/bin/python}"
    train_steps=20 resnet_steps=0 ufm_iters=20 large_iters=4 stop_after=8 mnist_stop=20
    fused="$seli"
    small=(--step 4,10,0.5,20 --d 16) large=(--step 10,10,0.5,200 --d 64) epochs=3
    data="$PWD/data"
else
    dev=cuda seli="$work/seli" py=python3
    xz -dc target/gpu-carry/seli.xz >"$seli" && chmod +x "$seli"
    fused=""
    if [[ -f target/gpu-carry/seli-fusion.xz ]]; then
        fused="$work/seli-fusion"
        xz -dc target/gpu-carry/seli-fusion.xz >"$fused" && chmod +x "$fused"
    fi
    train_steps=200 resnet_steps=30 ufm_iters=2000 large_iters=500 stop_after=20 mnist_stop=20
    small=(--step 10,10,0.5,50 --d 64) large=(--step 100,10,0.5,200 --d 512) epochs=8
    data="$work/data"
    mkdir -p "$data" && xz -dc target/gpu-carry/mnist.tar.xz | tar -C "$data" -xf -
fi

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
"$seli" --version
[[ -z "$rehearse" ]] && echo "built from sources $(cat target/gpu-carry/seli.sources 2>/dev/null || echo unknown)"

# NVRTC and the headers: the toolkit when there is one, else PyTorch's nvidia/cu13 wheels.
if command -v nvcc >/dev/null; then
    cuda_root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
site="$("$py" -c 'import site; print(" ".join(site.getsitepackages()))')"
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
    # cubecl also searches include/cccl (where CUDA 13 keeps CCCL).
    if [[ -e "$CUDA_PATH/include/$h" || -e "$CUDA_PATH/include/cccl/$h" ]]; then
        echo "header $h: ok"
    else
        echo "header $h: MISSING"
    fi
done

step "refusals (expected to fail, each with a clear message)"
CUDA_PATH=/nonexistent "$seli" bench train --device cuda --mlp-steps 1 --resnet-steps 0 && echo UNEXPECTED-SUCCESS
"$seli" bench train --device cuda:7 --mlp-steps 1 --resnet-steps 0 && echo UNEXPECTED-SUCCESS

step "first kernels (compile time included)"
time timeout 180 "$seli" bench train --device "$dev" --mlp-steps 5 --resnet-steps "$(( resnet_steps > 0 ? 2 : 0 ))"

step "training throughput beside PyTorch"
timeout 300 "$py" scripts/bench-train.py --device "$dev" --seli "$seli" --steps "$train_steps" --pairs 2 \
    --resnet-steps "$resnet_steps" --json "$out/bench-train.json"

step "UFM gradient descent beside PyTorch (burn tensors on the GPU)"
# (A rehearsal times the same burn iteration on the CPU backend: --burn.)
timeout 240 "$py" scripts/bench-ufm.py --device "$dev" --seli "$seli" --iters "$ufm_iters" \
    ${rehearse:+--burn}

step "seli ufm on the GPU: a tracked run beside the same run on the CPU, then the large size"
u="$out/ufm"
for d in cpu "$dev"; do
    time "$seli" ufm "${small[@]}" --iters "$ufm_iters" --every "$(( ufm_iters / 4 ))" \
        --device "$d" --out "$u-small-$d" --force | tail -4
done
echo "last rows, cpu then $dev:"
tail -n1 "$u-small-cpu/metrics.csv"; tail -n1 "$u-small-$dev/metrics.csv"
for dt in f32 f64; do
    time timeout 120 "$seli" ufm "${large[@]}" --dtype "$dt" --iters "$large_iters" \
        --every "$large_iters" --schedule constant --lr 1e-3 --device "$dev" \
        --out "$u-large-$dt" --force | sed -n 1p
done
timeout --preserve-status -s INT "$stop_after" "$seli" ufm "${large[@]}" --dtype f32 --iters 1000000 \
    --every 1000 --device "$dev" --out "$u-stopped" --force | sed -n 1p
echo "exit ${PIPESTATUS[0]} (130: interrupted)"
done_iters="$("$py" -c "import json; s = json.load(open('$u-stopped/summary.json')); print(s['iters_done'])")"
grep -o '"termination": "[a-z-]*"' "$u-stopped/summary.json"
"$seli" ufm --resume "$u-stopped" --device cpu --iters "$(( done_iters + 2 ))" | sed -n 1p

step "a short MNIST run on the GPU, interrupted, finished on the CPU"
run="$out/mnist-gpu"
timeout --preserve-status -s INT "$mnist_stop" "$seli" train --device "$dev" --data-dir "$data" --epochs "$epochs" \
    --checkpoint-every 1 --every 1 --out "$run" --force
echo "exit $? (130: interrupted)"
time timeout 180 "$seli" train --resume "$run" --device cpu
cat "$run/summary.json" | head -40

if [[ -n "$fused" ]]; then
    step "burn's fusion and autotuning: the plain build, then the fusion build, in turn"
    "$fused" --version
    for round in 1 2; do
        # The second round only while the device run has time left (a device call lasts 600 s).
        if (( round == 2 && SECONDS > 420 )); then
            echo "--- round 2 left out: $SECONDS s used"
            break
        fi
        for b in "$seli" "$fused"; do
            echo "--- round $round: $(basename "$b")"
            timeout 200 "$b" bench train --device "$dev" --mlp-steps "$train_steps" \
                --resnet-steps "$resnet_steps"
            timeout 120 "$b" bench ufm --device "$dev" --iters "$ufm_iters" ${rehearse:+--burn}
        done
    done
fi
rm -rf "$work"
