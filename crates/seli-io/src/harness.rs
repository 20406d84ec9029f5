//! Entry points shared by the coverage-guided fuzz targets (`fuzz/`, run by
//! `scripts/fuzz.sh`) and by the tests that replay their seeds and past crashers
//! (`tests/fuzz_corpus.rs`): each feeds arbitrary bytes to one file parser, exactly as a file
//! on disk would reach it, and reads everything the parser returns. A parser may return an
//! error; it must never panic, loop or allocate without bound.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::arrays::Array;
use crate::dataset::{cifar, idx, pickle};

/// Every fuzz target: its name and the file name the bytes are given under.
pub const TARGETS: [(&str, &str); 12] = [
    ("idx", "data-idx1-ubyte"),
    ("cifar_binary", "data_batch_1.bin"),
    ("cifar_pickle", "data_batch_1"),
    ("pickle", "object.pkl"),
    ("npy", "features.npy"),
    ("npz", "features.npz"),
    ("safetensors", "features.safetensors"),
    ("labels", "labels.txt"),
    ("checkpoint", "checkpoint.safetensors"),
    ("metrics_csv", "metrics.csv"),
    ("results_csv", "results.csv"),
    ("sweep", "sweep.toml"),
];

/// The keys the sweep target accepts (a sample of the commands' flags).
const SWEEP_KEYS: [&str; 16] = [
    "k",
    "ratio",
    "rho",
    "n_min",
    "counts",
    "seed",
    "d",
    "iters",
    "lr",
    "schedule",
    "lambda",
    "lambda_w",
    "checkpoint_every",
    "epochs",
    "width",
    "dataset",
];

/// Elements read back from an array input at most (bounds the work per input).
const MAX_READ: usize = 1 << 20;

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes `bytes` to `name` in this thread's scratch directory.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        let dir = d.get_or_insert_with(|| {
            tempfile::Builder::new().prefix("seli-fuzz-").tempdir().expect("a scratch directory")
        });
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("writing the scratch file");
        p
    })
}

fn read_array(a: &Array) {
    if let Ok((rows, cols)) = a.matrix_shape()
        && rows.saturating_mul(cols) <= MAX_READ
    {
        let _ = a.rows(0, rows);
    }
    if a.shape()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .is_some_and(|n| n <= MAX_READ)
    {
        let _ = a.integers();
    }
}

/// Feeds `bytes` to the parser of `target` (one of [`TARGETS`]); returns whether it accepted
/// them.
///
/// # Panics
/// On an unknown target name (a parser's panic propagates: that is what fuzzing looks for).
pub fn run(target: &str, bytes: &[u8]) -> bool {
    let name = TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("unknown fuzz target '{target}'"))
        .1;
    match target {
        "pickle" => pickle::parse(bytes).is_ok(),
        "sweep" => {
            let Ok(text) = std::str::from_utf8(bytes) else { return false };
            // The CLI passes each command's flags; a fixed set exercises the same paths.
            let keys = |_: &str| Ok(SWEEP_KEYS.map(String::from).to_vec());
            crate::sweep::SweepFile::parse(text, Path::new(name), &keys).is_ok()
        }
        "results_csv" => {
            let Ok(text) = std::str::from_utf8(bytes) else { return false };
            crate::csv::Table::from_csv(text, Path::new(name)).is_ok()
        }
        _ => {
            let path = scratch(name, bytes);
            match target {
                "idx" => idx::read_idx(&path, 1).is_ok() | idx::read_idx(&path, 3).is_ok(),
                "cifar_binary" => cifar::read_binary_batch(&path).is_ok(),
                "cifar_pickle" => cifar::read_pickle_batch(&path).is_ok(),
                // With several arrays in the file, the one named "features".
                "npy" | "npz" | "safetensors" => match Array::open(&path, None)
                    .or_else(|_| Array::open(&path, Some("features")))
                {
                    Ok(a) => {
                        read_array(&a);
                        true
                    }
                    Err(_) => false,
                },
                "labels" => crate::labels::read_labels(&path).is_ok(),
                "checkpoint" => {
                    let a =
                        crate::checkpoint::load_checkpoint::<f64>(&path, 3, 2, 4, false).is_ok();
                    let b =
                        crate::checkpoint::load_blobs(&path, "seli.train-checkpoint.v1").is_ok();
                    a || b
                }
                "metrics_csv" => crate::csvlog::read_csv(&path).is_ok(),
                other => panic!("unknown fuzz target '{other}'"),
            }
        }
    }
}
