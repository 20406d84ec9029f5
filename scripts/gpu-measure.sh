#!/usr/bin/env bash
# The GPU checks and measurements, in one script for a GPU machine that has no Rust toolchain and
# no registry: the CUDA build of seli (carried compressed) beside PyTorch on the same
# GPU, and a short real training run.
#
#   scripts/gpu-measure.sh --pack [ENV]    here, after scripts/build-cuda.sh: target/gpu-carry,
#                                          what travels (the compressed binary, its sources id,
#                                          data/mnist compressed; about 27 MB; the fusion build
#                                          when build-cuda.sh --fusion made a current one; and
#                                          cubecl's tuning cache: ENV, an environment.tar.xz an
#                                          earlier device run returned, kept in target/gpu-env
#                                          for later packs)
#   scripts/gpu-measure.sh OUT [ufm] [train] [burn] [profile]
#                                          on the GPU machine, with target/gpu-carry carried:
#                                          the UFM part and the networks' part (or the parts
#                                          named), log in OUT/gpu.log; `burn` and `profile`
#                                          (only when named): the networks on burn's CUDA
#                                          backend (its autotuning: minutes), and where its
#                                          training step's time goes, kernel by kernel
#                                          (cubecl's profiler, OUT/profile.log)
#   GPU_MEASURE_DEADLINE=S scripts/gpu-measure.sh OUT ...
#                                          the same, ending within S seconds (a device call's
#                                          limit): the long steps' timeouts shrink to fit
#   scripts/gpu-measure.sh --rehearse OUT  here, before spending device time: the same steps on
#                                          the CPU with target/release/seli and small sizes (the
#                                          GPU-only checks fail, as they should)
#
# Steps, most decisive first (a device call lasts at most 600 s; the log is written as it goes and
# comes back even on a timeout): the environment (nvidia-smi, where NVRTC and the CUDA headers and
# cuBLAS are: the CUDA toolkit, or PyTorch's nvidia wheels); the UFM part: `seli ufm` on the GPU
# (cuBLAS) beside the CPU for five configurations in f64 and f32, UFM iterations beside PyTorch
# (scripts/bench-ufm.py), the large UFM in f32 and f64 with Ctrl-C on the GPU and the end on the
# CPU; the networks' part (seli's engine: cuDNN, cuBLAS, kernels.cu): the refusals, the engine
# against its reference kernels (`seli bench train --check`), the MLPs' and ResNet-18's training
# throughput beside PyTorch (scripts/bench-train.py), a short MNIST run interrupted on the GPU
# and finished on the CPU, a ResNet-18 epoch on MNIST; the `burn` part: the same throughput on
# burn's CUDA backend after its autotuning (the fusion build when it travelled, else the plain
# one), for the record. cubecl's autotuning decisions are logged to OUT/autotune-BUILD.log.
# cubecl keeps its tuning decisions and compiled kernels in target/environment (the build's
# `persistence`), which the machine keeps between calls; after each tuning step the script copies
# it to OUT/environment.tar.xz, and `--pack ENV` carries such a copy to a later run, so tuning
# cut short by a time limit is not repeated.
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
    # cubecl's tuning cache from an earlier device run: kept here, carried with every pack.
    if [[ -n "${2:-}" ]]; then
        mkdir -p target/gpu-env && cp "$2" target/gpu-env/environment.tar.xz
    fi
    [[ -f target/gpu-env/environment.tar.xz ]] && cp target/gpu-env/environment.tar.xz "$carry/"
    tar -C data -cf - mnist | xz -T0 -6 >"$carry/mnist.tar.xz"
    ls -l "$carry"
    size="$(du -sm "$carry" | cut -f1)"
    if (( size > 60 )) && [[ -f "$carry/environment.tar.xz" ]]; then
        echo "gpu-measure.sh: leaving out the tuning cache (the carry would be $size MiB)" >&2
        rm "$carry/environment.tar.xz"
        size="$(du -sm "$carry" | cut -f1)"
    fi
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
out="${1:?usage: scripts/gpu-measure.sh [--rehearse] OUT [ufm] [train] [burn] [profile]}"
shift
# The parts to run (the UFM and the networks by default), so that one device call can take the
# UFM and another the networks when device time is short.
parts=" ${*:-ufm train} "
want() { [[ "$parts" == *" $1 "* ]]; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
exec > >(tee "$out/gpu.log") 2>&1
step() { echo; echo "=== $* ($(date +%T), ${SECONDS}s)"; }
# GPU_MEASURE_DEADLINE=S: the script should end within S seconds (a device call's limit); the
# long steps' timeouts shrink to fit, keeping 20 s for saving what they made. limit N: N
# seconds, or what is left before the deadline if less (at least 1).
deadline="${GPU_MEASURE_DEADLINE:-0}"
limit() {
    local n="$1" left=$(( deadline - SECONDS - 20 ))
    (( deadline > 0 && left < n )) && n=$(( left > 1 ? left : 1 ))
    echo "$n"
}
# Python's output reaches the log as it is printed (a step killed by its timeout keeps it).
export PYTHONUNBUFFERED=1
work="$(mktemp -d)"
# cubecl (burn's GPU runtime) reads its settings from cubecl.toml in the working directory. For
# the whole script: compiled kernels kept in its environment beside the tuning decisions, so a
# later process skips NVRTC too. with_cubecl_config TOML CMD... adds TOML for CMD alone (its
# logs' levels and files).
# cubecl_config [TOML]: the script's cubecl.toml, with TOML added.
cubecl_config() { printf '%s\n' '[compilation]' 'cache = true' "$@" >cubecl.toml; }
cubecl_config
with_cubecl_config() {
    cubecl_config "$1"
    shift
    "$@"
    local rc=$?
    cubecl_config
    return $rc
}
trap 'rm -f cubecl.toml' EXIT
# cubecl's environment (tuning decisions, compiled kernels: target/environment, beside the
# workspace's Cargo.toml): one carried from an earlier run starts this one, unless the machine
# still has its own from an earlier call; save_environment copies it to OUT after a step.
if [[ -f target/gpu-carry/environment.tar.xz && ! -d target/environment ]]; then
    mkdir -p target && tar -C target -xJf target/gpu-carry/environment.tar.xz
fi
save_environment() {
    if [[ -d target/environment ]]; then
        tar -C target -cf - environment | xz -T0 -6 >"$out/environment.tar.xz.part" \
            && mv "$out/environment.tar.xz.part" "$out/environment.tar.xz" \
            && echo "cubecl environment saved: $(du -k "$out/environment.tar.xz" | cut -f1) KiB in environment.tar.xz"
    fi
}
# Sizes: the issue's on the GPU; small ones for a rehearsal on the CPU.
if [[ -n "$rehearse" ]]; then
    dev=cpu plain="$PWD/target/release/seli" py="${PYTHON:-target/py-venv/bin/python}"
    train_steps=20 resnet_steps=1 ufm_iters=20 large_iters=4 stop_after=8 mnist_stop=3
    resnet_width=4 resnet_epochs=1 resnet_profile=10,10,0.5,5
    fused="$plain" burn=--burn
    small=(--step 4,10,0.5,20 --d 16) large=(--step 10,10,0.5,200 --d 64) epochs=3
    data="$PWD/data"
else
    dev=cuda plain="$work/seli" py=python3 burn=""
    xz -dc target/gpu-carry/seli.xz >"$plain" && chmod +x "$plain"
    fused=""
    if [[ -f target/gpu-carry/seli-fusion.xz ]]; then
        fused="$work/seli-fusion"
        xz -dc target/gpu-carry/seli-fusion.xz >"$fused" && chmod +x "$fused"
    fi
    train_steps=200 resnet_steps=20 ufm_iters=3000 large_iters=1000 stop_after=15 mnist_stop=6
    resnet_width=64 resnet_epochs=1 resnet_profile=10,10,0.5,500
    small=(--step 10,10,0.5,50 --d 64) large=(--step 100,10,0.5,200 --d 512) epochs=8
    data="$work/data"
    mkdir -p "$data" && xz -dc target/gpu-carry/mnist.tar.xz | tar -C "$data" -xf -
fi
# The build measured and used for the runs: the plain one (the engine does not use burn's GPU
# backend); the fusion build, when it travelled, is the one the `burn` part times.
seli="$plain"

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
"$seli" --version
[[ -z "$rehearse" ]] && echo "built from sources $(cat target/gpu-carry/seli.sources 2>/dev/null || echo unknown);" \
    "measured beside PyTorch: $(basename "$seli")"

# NVRTC and the headers: the toolkit when there is one, else PyTorch's nvidia/cu13 wheels.
if command -v nvcc >/dev/null; then
    cuda_root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
site="$("$py" -c 'import site; print(" ".join(site.getsitepackages()))')"
nvrtc="$(find "${cuda_root:-/nonexistent}" $site -name 'libnvrtc.so.13*' 2>/dev/null | head -1)"
echo "nvcc root: ${cuda_root:-none}; libnvrtc: ${nvrtc:-not found}"
[[ -n "$nvrtc" ]] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cuBLAS (the products): the toolkit's lib64, else PyTorch's nvidia-cublas wheel.
cublas="$(find "${cuda_root:-/nonexistent}" $site -name 'libcublas.so.13*' 2>/dev/null | head -1)"
echo "libcublas: ${cublas:-not found}"
if [[ -n "$cublas" && "$(dirname "$cublas")" != "$(dirname "${nvrtc:-/}")" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$cublas"):$LD_LIBRARY_PATH"
fi
# cuDNN 9 (the engine's convolutions): the system's, else PyTorch's nvidia-cudnn-cu13 wheel.
before_cudnn="${LD_LIBRARY_PATH:-}"
cudnn="$(find /usr/lib /usr/local "${cuda_root:-/nonexistent}" $site -name 'libcudnn.so.9*' 2>/dev/null | head -1)"
echo "libcudnn: ${cudnn:-not found}"
[[ -n "$cudnn" ]] && export LD_LIBRARY_PATH="$(dirname "$cudnn"):$LD_LIBRARY_PATH"
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
echo "CUDA_PATH=$CUDA_PATH"
for h in cuda_fp16.h mma.h cooperative_groups.h cuda/barrier; do
    # cubecl also searches include/cccl (where CUDA 13 keeps CCCL).
    if [[ -e "$CUDA_PATH/include/$h" || -e "$CUDA_PATH/include/cccl/$h" ]]; then
        echo "header $h: ok"
    else
        echo "header $h: MISSING"
    fi
done

# The largest relative difference between the last metrics rows (every column, geometry
# included) of two runs: compare_last_rows CPU.csv GPU.csv LABEL.
compare_last_rows() {
    "$py" - "$@" <<'PY'
import csv, math, sys
head = next(csv.reader(open(sys.argv[1])))
rows = [list(csv.reader(open(f)))[-1] for f in sys.argv[1:3]]
diffs = [(abs(float(a) - float(b)) / max(abs(float(a)), 1e-300), h)
         for h, a, b in zip(head, *rows) if a and b and math.isfinite(float(a))]
worst = max(diffs, default=(0.0, "-"))
print(f"{sys.argv[3]}: iter {rows[0][0]} vs {rows[1][0]}, largest relative difference {worst[0]:.3g} ({worst[1]})")
PY
}

# Runs in the scratch folder: only the log and a few small files go to OUT (a device run returns
# at most 8 files).
u="$work/ufm"
if want ufm; then
    step "seli ufm on the GPU (cuBLAS) beside the same run on the CPU: loss families, bias, ridge, step rules; f64 and f32"
    # Each case: the largest relative difference between the last metrics rows (every column,
    # geometry included) of the GPU run and the CPU run.
    cases=(
        "--schedule constant --lr 1e-3"
        "--loss cdt --gamma 0.5 --bias --lambda-w 1e-2 --lambda-h 2e-2 --lr 1e-3 --schedule constant"
        "--schedule norm-grad --lr 0.1 --grad-tol 1e-30"
        "--loss ldt --gamma 0.5 --lambda-h 1e-3 --schedule step:0.5@50,100 --lr 2e-3"
        "--loss vs --gamma 0.3 --tau 0.5 --bias --schedule norm-loss --lr 0.1 --loss-reduction mean"
    )
    for dt in f64 f32; do
        for c in "${cases[@]}"; do
            ok=1
            for d in cpu "$dev"; do
                rm -rf "$u-$d"
                # shellcheck disable=SC2086
                timeout 60 "$seli" ufm "${small[@]}" $c --dtype "$dt" --iters 150 --every 50 \
                    --device "$d" --out "$u-$d" --force >/dev/null || { echo "FAILED: --device $d $c"; ok=""; }
            done
            [[ -n "$ok" ]] && compare_last_rows "$u-cpu/metrics.csv" "$u-$dev/metrics.csv" "$dt $c"
        done
    done

    step "UFM gradient descent beside PyTorch (cuBLAS on the GPU; $(basename "$seli"))"
    timeout "$(limit 150)" "$py" scripts/bench-ufm.py --device "$dev" --seli "$seli" --iters "$ufm_iters" $burn

    step "seli ufm at the large size on the GPU (f32, f64), then Ctrl-C there and the end on the CPU"
    for dt in f32 f64; do
        time timeout 60 "$seli" ufm "${large[@]}" --dtype "$dt" --iters "$large_iters" \
            --every "$large_iters" --schedule constant --lr 1e-3 --device "$dev" \
            --out "$u-large-$dt" --force | sed -n 1p
    done
    timeout --preserve-status -s INT "$stop_after" "$seli" ufm "${large[@]}" --dtype f32 --iters 1000000 \
        --every 1000 --device "$dev" --out "$u-stopped" --force | sed -n 1p
    echo "exit ${PIPESTATUS[0]} (130: interrupted)"
    done_iters="$("$py" -c "import json; s = json.load(open('$u-stopped/summary.json')); print(s['iters_done'])")"
    grep -o '"termination": "[a-z-]*"' "$u-stopped/summary.json"
    timeout 60 "$seli" ufm --resume "$u-stopped" --device cpu --iters "$(( done_iters + 2 ))" | sed -n 1p
fi

# The networks on seli's engine: no tuning beyond cuDNN's timing of each convolution shape's
# algorithms in the first step.
if want train; then
    step "refusals (expected to fail, each with a clear message)"
    "$seli" bench train --device cuda:7 --mlp-steps 1 --resnet-steps 0 && echo UNEXPECTED-SUCCESS
    if [[ -n "${cudnn:-}" ]]; then
        LD_LIBRARY_PATH="$before_cudnn" "$seli" bench train --check --device "$dev" && echo UNEXPECTED-SUCCESS
    fi
    CUDA_PATH=/nonexistent "$seli" bench train --burn --device "$dev" --mlp-steps 1 --resnet-steps 0 \
        && echo UNEXPECTED-SUCCESS

    step "the engine on the GPU against its reference kernels (NVRTC's kernels, cuBLAS, cuDNN)"
    timeout "$(limit 120)" "$seli" bench train --check --device "$dev"

    step "training throughput beside PyTorch: the MLPs and ResNet-18 (seli's engine)"
    timeout "$(limit 240)" "$py" scripts/bench-train.py --device "$dev" --seli "$seli" --steps "$train_steps" \
        --pairs 3 --resnet-steps "$resnet_steps" --json "$out/bench-train.json"

    step "a short MNIST run on the GPU, interrupted, finished on the CPU"
    run="$work/mnist-gpu"
    timeout --preserve-status -s INT "$mnist_stop" "$seli" train --device "$dev" --data-dir "$data" --epochs "$epochs" \
        --checkpoint-every 1 --every 1 --out "$run" --force
    echo "exit $? (130: interrupted)"
    time timeout "$(limit 120)" "$seli" train --resume "$run" --device cpu
    head -c 600 "$run/summary.json"; echo
    step "the same run uninterrupted on the GPU"
    time timeout "$(limit 120)" "$seli" train --device "$dev" --data-dir "$data" --epochs "$epochs" \
        --every "$epochs" --out "$work/mnist-gpu-whole" --force
    head -c 600 "$work/mnist-gpu-whole/summary.json"; echo

    step "ResNet-18 on MNIST on the GPU (a real run: STEP $resnet_profile, ${resnet_epochs} epoch(s), metrics at the end)"
    time timeout "$(limit 180)" "$seli" train --device "$dev" --data-dir "$data" --model resnet18 --step "$resnet_profile" \
        --width "$resnet_width" --epochs "$resnet_epochs" --every "$resnet_epochs" --out "$work/mnist-resnet" --force
    head -c 600 "$work/mnist-resnet/summary.json"; echo
fi

# burn's CUDA backend, for the record: its autotuning measures candidate kernels the first time
# it meets a shape and keeps the choice in target/environment, so later processes start tuned.
# tune BUILD MLP-STEPS RESNET-STEPS SECONDS: that build's first kernels and tuning on the
# networks the steps name, decisions logged, the environment saved after it.
tune() {
    local log="autotune-$(basename "$1").log"
    step "first kernels and autotuning: $(basename "$1"), --mlp-steps $2 --resnet-steps $3 (compile and tuning time included)"
    time with_cubecl_config "[autotune.logger]
level = \"minimal\"
file = \"$out/$log\"
append = true" \
        timeout "$(limit "$4")" "$1" bench train --burn --device "$dev" --mlp-steps "$2" --resnet-steps "$3"
    [[ -f "$out/$log" ]] && echo "autotuning decisions: $(wc -l <"$out/$log") lines in $log"
    save_environment
}

if want burn; then
    burnt="${fused:-$plain}"
    tune "$burnt" 5 "$(( resnet_steps > 0 ? 2 : 0 ))" 420
    step "training throughput on burn's CUDA backend beside PyTorch ($(basename "$burnt"))"
    timeout "$(limit 200)" "$py" scripts/bench-train.py --device "$dev" --seli "$burnt" --burn --steps "$train_steps" \
        --pairs 2 --resnet-steps "$resnet_steps" --json "$out/bench-train-burn.json"
fi

if want profile; then
    # The plain build: its kernels keep the names of burn's operations (the fusion build's are
    # generated). The profiler times each kernel on the device and waits for it, so the rates
    # printed here are not the throughput figures; its tables are (one per wait of the
    # benchmark: the MLPs' rounds, ResNet-18's warm-up step, then its timed steps, the last
    # table). Autotuning first, unprofiled (quick when the networks' part left its choices in
    # target/environment), so that the profile holds no tuning runs.
    step "where burn's training step's time goes, kernel by kernel ($(basename "$plain"), cubecl's profiler)"
    timeout 240 "$plain" bench train --burn --device "$dev" --mlp-steps 2 --resnet-steps "$(( resnet_steps > 0 ? 1 : 0 ))" >/dev/null
    with_cubecl_config "[profiling.logger]
level = \"basic\"
file = \"$out/profile.log\"" \
        timeout 150 "$plain" bench train --burn --device "$dev" --mlp-steps 2 --resnet-steps "$(( resnet_steps > 0 ? 3 : 0 ))"
    if [[ -f "$out/profile.log" ]]; then
        echo "the last table of profile.log ($(wc -l <"$out/profile.log") lines):"
        tac "$out/profile.log" | sed -n '/Name/{p;q};p' | tac | head -n 45
    fi
fi
# Only the log and the small files travel back.
rm -rf "$work"
