//! The README's table of bad inputs is a test: every row's command runs here, in a directory
//! holding the damaged files below, and must fail with the row's error text (and no panic).
//! Edit a message and this test points at the row to update.

use std::path::Path;
use std::process::Command;

use seli_io::arrays::{Dtype, encode_npy};
use seli_io::dataset::{cifar, idx};

/// The damaged inputs the table's commands use (paths relative to the test's directory).
fn fixtures(dir: &Path) {
    let w = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    w("empty.txt", b"");
    w("labels-text.txt", b"0\n1\n1\nseven\n");
    w("labels-gap.txt", b"0\n0\n2\n2\n");
    w("labels-neg.txt", b"0\n-1\n");
    let vals: Vec<f64> = (0..18).map(|i| i as f64 / 7.0).collect();
    let feats = encode_npy(&[6, 3], &vals, Dtype::F32, false);
    w("feats.npy", &feats);
    w("feats-cut.npy", &feats[..feats.len() - 10]);
    let mut nan = vals.clone();
    nan[4] = f64::NAN;
    w("feats-nan.npy", &encode_npy(&[6, 3], &nan, Dtype::F64, false));
    w("labels5.npy", &encode_npy(&[5], &[0.0, 1.0, 2.0, 0.0, 1.0], Dtype::Int(8), false));
    w("labels6.npy", &encode_npy(&[6], &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0], Dtype::Int(8), false));
    w("labels-float.npy", &encode_npy(&[6], &[0.0; 6], Dtype::F32, false));
    w(
        "labels-column.npy",
        &encode_npy(&[6, 1], &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0], Dtype::Int(8), false),
    );
    w("labels-huge.npy", &encode_npy(&[6], &[0.0, 1.0, 2.0, 0.0, 1.0, 1e9], Dtype::Int(8), false));
    w("classifier-bad.npy", &encode_npy(&[4, 4], &[0.5; 16], Dtype::F64, false));
    w("garbage.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{not json");
    w("mnist/mnist/train-images-idx3-ubyte", &idx::encode_idx(&[3, 28, 28], &[7; 3 * 784])[..900]);
    w("mnist/mnist/train-labels-idx1-ubyte", &idx::encode_idx(&[3], &[1, 2, 3]));
    w("mnist/mnist/t10k-images-idx3-ubyte", &idx::encode_idx(&[1, 28, 28], &[7; 784]));
    w("mnist/mnist/t10k-labels-idx1-ubyte", &idx::encode_idx(&[1], &[1]));
    w("gz/mnist/train-images-idx3-ubyte.gz", b"\x1f\x8b\x08\x00garbage");
    let px = vec![9u8; cifar::IMAGE_BYTES];
    let rec = cifar::encode_binary(&[3], &px);
    w("cifar/cifar-10-batches-bin/data_batch_1.bin", &rec[..rec.len() - 1]);
    w("sweep-key.toml", b"command = \"ufm\"\n[grid]\nratio = [1, 10]\nseeds = [0, 1]\n");
    w("sweep-range.toml", b"command = \"ridge\"\n[base]\nlambda = 0.1\n[grid]\nratio = { from = 100, to = 1, step = 10 }\n");
    w("sweep-empty.toml", b"command = \"geometry\"\n[grid]\nrho = []\n");
    w("sweep-value.toml", b"command = \"geometry\"\n[grid]\nratio = [10, 0.5]\n");
    // A UFM run whose checkpoint is then damaged.
    let seli = env!("CARGO_BIN_EXE_seli");
    let st = Command::new(seli)
        .args(["ufm", "--step", "3,2,1/3,2", "--d", "4", "--iters", "20", "--out", "run"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let ck = dir.join("run/checkpoint.safetensors");
    let mut b = std::fs::read(&ck).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x55;
    std::fs::write(ck, b).unwrap();
}

/// Rows of the README table between its markers: (command, expected error text).
fn table() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("<!-- bad-inputs:start -->").expect("the table's start marker");
    let end = readme.find("<!-- bad-inputs:end -->").expect("the table's end marker");
    let code = |cell: &str| cell.trim().trim_matches('`').replace("\\|", "|");
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| input") && !l.starts_with("|--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 3, "a table row has 3 cells: {l}");
            (code(cells[1]), code(cells[2]))
        })
        .collect()
}

/// Splits a command cell into words (single quotes group).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmd.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn every_bad_input_in_the_readme_gets_its_error() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let rows = table();
    assert!(rows.len() >= 20, "the table lists {} inputs", rows.len());
    let mut wrong = Vec::new();
    for (cmd, want) in &rows {
        let w = words(cmd);
        assert_eq!(w[0], "seli", "{cmd}");
        let out = Command::new(env!("CARGO_BIN_EXE_seli"))
            .args(&w[1..])
            .current_dir(dir.path())
            .env("SELI_DATA_DIR", dir.path().join("nowhere"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        if out.status.success() || out.status.code() == Some(101) || !err.contains(want.as_str()) {
            wrong.push(format!("{cmd}\n    table:  {want}\n    actual: {first}"));
        }
    }
    assert!(wrong.is_empty(), "README rows that do not match:\n{}", wrong.join("\n"));
}
