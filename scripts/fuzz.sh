#!/usr/bin/env bash
# Coverage-guided fuzzing of every file parser with cargo fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh                 every target for 60 s
#   scripts/fuzz.sh 300 npy sweep   the npy and sweep targets for 300 s each
#   scripts/fuzz.sh --seeds         only rewrite the seed corpus in fuzz/seeds/
#
# Targets (fuzz/fuzz_targets/, one per parser): idx, cifar_binary, cifar_pickle, pickle, npy,
# npz, safetensors, labels, checkpoint, metrics_csv, results_csv, sweep. Each starts from the
# valid files in fuzz/seeds/TARGET (written by the encoders, committed) and grows a working
# corpus in fuzz/corpus/TARGET (not committed). A crash stops the script: the input is copied
# to fuzz/regressions/TARGET/, where `cargo test` replays it (crates/seli-io/tests/
# fuzz_corpus.rs) once the bug is fixed, with no nightly toolchain.
#
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them. The fuzz crate is its own workspace (the main build never sees it).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release -q -p seli-io --test fuzz_corpus -- --ignored write_seeds >/dev/null
echo "seeds written to fuzz/seeds/"
if [[ "${1:-}" == "--seeds" ]]; then
    exit 0
fi

secs=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build >/dev/null

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="target/fuzz-$t.log"
    echo "== $t: ${secs} s"
    if cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        grep -E "^Done [0-9]+ runs" "$log" | tail -1 || true
        echo "   corpus: $(find "corpus/$t" -type f | wc -l) inputs"
    else
        status=1
        echo "   FAILED; last lines of $log:"
        tail -30 "$log"
        mkdir -p "regressions/$t"
        for a in artifacts/"$t"/*; do
            [[ -f "$a" ]] || continue
            cp "$a" "regressions/$t/"
            echo "   kept $a as fuzz/regressions/$t/$(basename "$a")"
        done
    fi
done
exit $status
