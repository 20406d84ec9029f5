#!/usr/bin/env bash
# The CUDA build of seli (`--device cuda`), offline apart from the crate registry.
#
#   scripts/build-cuda.sh            release build: target/cuda/seli (stripped) and seli.xz
#   scripts/build-cuda.sh --fusion   the same with burn's kernel fusion too:
#                                    target/cuda/seli-fusion and seli-fusion.xz
#   scripts/build-cuda.sh --check    type-check only (what CI runs)
#   scripts/build-cuda.sh --sources  print the id of the sources a build now would use (the
#                                    build writes it to target/cuda/seli.sources)
#
# burn's `cuda` feature pulls cubecl-cuda 0.11.3, which always depends on cubecl-llvm, whose build
# script downloads LLVM from outside the registries. patches/cubecl-cuda-0.11.3-cpp-only.patch
# removes that backend and keeps cubecl's CUDA C++ one (kernels compiled by NVRTC at run time).
# This script takes the crate from the registry (checksum from Cargo.lock), applies the patch in
# target/cuda-patch and builds with a cargo `[patch]` given on the command line, so the default
# build never sees it. Cargo.lock is restored afterwards.
#
# Environment: CUDARC_CUDA_VERSION (default 13000: the CUDA the binary expects at run time),
# CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
features=cuda
name=seli
for arg in "$@"; do
    case "$arg" in
        --check) mode=check ;;
        --fusion) features=cuda-fusion name=seli-fusion ;;
        --sources) mode=sources ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "build-cuda.sh: unknown argument $arg (--check, --fusion, --sources)" >&2; exit 2 ;;
    esac
done

# What the binary is built from: the committed crates, manifests, lock file and patches (a hash
# of their git trees), or "uncommitted" when the working tree differs there. A binary whose id
# is not the current one is stale (scripts/gpu-measure.sh --pack refuses to carry it).
sources_id() {
    if git diff --quiet HEAD -- crates Cargo.toml Cargo.lock patches \
        && [[ -z "$(git ls-files --others --exclude-standard -- crates patches)" ]]; then
        git rev-parse HEAD:crates HEAD:Cargo.toml HEAD:Cargo.lock HEAD:patches | sha256sum | cut -c1-16
    else
        echo uncommitted
    fi
}
if [[ "$mode" == sources ]]; then
    sources_id
    exit 0
fi
# Taken before the patch rewrites Cargo.lock for the build.
sources="$(sources_id)"

crate=cubecl-cuda
version=0.11.3
patch_file="$PWD/patches/$crate-$version-cpp-only.patch"
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
work="$target_dir/cuda-patch"
dest="$work/$crate-$version"

# The crate archive: cargo's download cache when it has it, else the registry.
sum="$(awk -v n="$crate" -v v="$version" '
    $0 == "name = \"" n "\"" { hit = 1; next }
    hit && $0 == "version = \"" v "\"" { ok = 1; next }
    hit && ok && /^checksum = / { gsub(/"/, "", $3); print $3; exit }
    /^\[\[package\]\]/ { hit = 0; ok = 0 }' Cargo.lock)"
[[ -n "$sum" ]] || { echo "build-cuda.sh: no checksum for $crate $version in Cargo.lock" >&2; exit 1; }
if [[ ! -f "$dest/.seli-patched-$sum" ]]; then
    mkdir -p "$work"
    archive="$work/$crate-$version.crate"
    cached="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$version.crate" 2>/dev/null | head -1 || true)"
    if [[ -n "$cached" ]]; then
        cp "$cached" "$archive"
    else
        curl -sSfL --retry 3 -o "$archive" "https://static.crates.io/crates/$crate/$crate-$version.crate"
    fi
    echo "$sum  $archive" | sha256sum -c --quiet - || {
        echo "build-cuda.sh: $archive does not match Cargo.lock's checksum $sum" >&2
        exit 1
    }
    rm -rf "$dest"
    tar -xzf "$archive" -C "$work"
    patch -s -d "$dest" -p1 <"$patch_file"
    touch "$dest/.seli-patched-$sum"
fi

# The patch re-resolves the graph (cubecl-llvm drops out): keep the committed lock file as it is.
cp Cargo.lock "$work/Cargo.lock.saved"
trap 'cp "$work/Cargo.lock.saved" Cargo.lock' EXIT
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
config="patch.crates-io.$crate.path=\"$dest\""

if [[ "$mode" == check ]]; then
    cargo check --release -p seli-cli --features "$features" --config "$config" --quiet
    echo "build-cuda.sh: the CUDA build ($features) type-checks"
    exit 0
fi

cargo build --release -p seli-cli --features "$features" --config "$config" \
    --target-dir "$target_dir/cuda-build"
mkdir -p "$target_dir/cuda"
out="$target_dir/cuda/$name"
cp "$target_dir/cuda-build/release/seli" "$out"
strip "$out"
xz -T0 -6 -c "$out" >"$out.xz"
echo "$sources" >"$out.sources"
ls -l "$out" "$out.xz"
echo "build-cuda.sh: built from sources $sources"
