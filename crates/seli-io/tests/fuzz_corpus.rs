//! The fuzz targets' inputs as ordinary tests (no nightly toolchain): every seed in
//! `fuzz/seeds/TARGET/` and every crasher kept in `fuzz/regressions/TARGET/` goes through the
//! same harness as `cargo fuzz run TARGET` and must not panic. The seeds themselves are
//! written by `write_seeds` (run by scripts/fuzz.sh) from the encoders below, so each is a
//! valid file of its format.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use seli_core::solve::ufm::Params;
use seli_io::arrays::{Dtype, encode_npy};
use seli_io::dataset::{cifar, idx, pickle};
use seli_io::harness::{TARGETS, run};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn npz(members: &[(&str, Vec<u8>, bool)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, deflate) in members {
        let method = if *deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn safetensors_file(dtype: safetensors::Dtype, shape: Vec<usize>, data: &[u8]) -> Vec<u8> {
    let view = safetensors::tensor::TensorView::new(dtype, shape, data).unwrap();
    safetensors::tensor::serialize([("features", view)], None).unwrap()
}

/// Valid files of every target (and a few boundary cases), small enough to mutate fast.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |t: &'static str, name: &str, b: Vec<u8>| out.push((t, name.to_string(), b));

    let pixels: Vec<u8> = (0..2 * 4 * 4).map(|i| (i * 7) as u8).collect();
    add("idx", "labels-idx1", idx::encode_idx(&[3], &[1, 2, 3]));
    add("idx", "images-idx3", idx::encode_idx(&[2, 4, 4], &pixels));
    add("idx", "labels-idx1.gz", gzip(&idx::encode_idx(&[3], &[0, 9, 4])));

    let px: Vec<u8> = (0..2 * cifar::IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    add("cifar_binary", "two-records.bin", cifar::encode_binary(&[3, 7], &px));
    let py2 = pickle::write::cifar_py2(&[3, 7], &px, cifar::IMAGE_BYTES);
    let py3 = pickle::write::cifar_py3(&[3, 7], &px, cifar::IMAGE_BYTES);
    add("cifar_pickle", "py2", py2.clone());
    add("cifar_pickle", "py3", py3.clone());
    let small: Vec<u8> = (0..2 * 6).map(|i| i as u8).collect();
    add("pickle", "py2-small", pickle::write::cifar_py2(&[1, 0], &small, 6));
    add("pickle", "py3-small", pickle::write::cifar_py3(&[1, 0], &small, 6));

    let vals: Vec<f64> = (0..12).map(|i| i as f64 * 0.25 - 1.0).collect();
    let ints: Vec<f64> = [0.0, 1.0, 2.0, 1.0, 0.0].to_vec();
    add("npy", "f32-c.npy", encode_npy(&[3, 4], &vals, Dtype::F32, false));
    add("npy", "f64-fortran.npy", encode_npy(&[4, 3], &vals, Dtype::F64, true));
    add("npy", "f16.npy", encode_npy(&[2, 6], &vals, Dtype::F16, false));
    add("npy", "i64-labels.npy", encode_npy(&[5], &ints, Dtype::Int(8), false));
    let member = encode_npy(&[3, 4], &vals, Dtype::F32, false);
    add("npz", "stored.npz", npz(&[("features.npy", member.clone(), false)]));
    add(
        "npz",
        "deflated-two.npz",
        npz(&[
            ("features.npy", member, true),
            ("labels.npy", encode_npy(&[5], &ints, Dtype::Int(8), false), true),
        ]),
    );
    let f32s: Vec<u8> = vals.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    add(
        "safetensors",
        "f32.safetensors",
        safetensors_file(safetensors::Dtype::F32, vec![3, 4], &f32s),
    );
    let i64s: Vec<u8> = ints.iter().flat_map(|v| (*v as i64).to_le_bytes()).collect();
    add(
        "safetensors",
        "i64.safetensors",
        safetensors_file(safetensors::Dtype::I64, vec![5], &i64s),
    );

    add("labels", "text.txt", b"# labels\n0\n1\n\n2\n1\n".to_vec());
    add("labels", "int-labels.npy", encode_npy(&[5], &ints, Dtype::Int(8), false));

    let p = dir.path().join("ckpt.safetensors");
    let params = Params::<f64> {
        W: faer::Mat::from_fn(3, 2, |i, j| (i + 2 * j) as f64 * 0.1),
        H: faer::Mat::from_fn(3, 4, |i, j| (i * j) as f64 * 0.01 - 0.02),
        b: None,
    };
    seli_io::checkpoint::save_checkpoint(&p, &params, 17).unwrap();
    add("checkpoint", "ufm-d3-k2-n4", std::fs::read(&p).unwrap());
    seli_io::checkpoint::save_blobs(
        &p,
        "seli.train-checkpoint.v1",
        &[("epoch", "3".into())],
        &[("model", &[1, 2, 3, 4]), ("momentum", &[9; 8])],
    )
    .unwrap();
    add("checkpoint", "train-blobs", std::fs::read(&p).unwrap());

    add(
        "metrics_csv",
        "metrics.csv",
        b"iter,loss,dist_gw_seli\n0,2.3,0.9\n10,1.5,\n100,0.25,0.01\n".to_vec(),
    );
    add(
        "results_csv",
        "results.csv",
        b"point,index,ratio,termination\n\"ratio=1,seed=0\",0,1,max-iters\n\"q\"\"x\",1,10,converged\n"
            .to_vec(),
    );
    add(
        "sweep",
        "grid.toml",
        b"command = \"ufm\"\njobs = 2\n[base]\nd = 8\n[grid]\nratio = [1, 10]\nseed = { from = 0, to = 2, step = 1 }\n\
          lambda = { from = 1e-3, to = 1e-1, num = 3, log = true }\n"
            .to_vec(),
    );
    add(
        "sweep",
        "list.toml",
        b"command = \"geometry\"\n[[list]]\ncounts = [5, 5, 1]\n[[list]]\nk = 4\nrho = \"1/2\"\n[grid]\nn_min = [1, 2]\n".to_vec(),
    );
    for example in ["sweep-geometry.toml", "sweep-ufm.toml"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(example);
        add("sweep", example, std::fs::read(p).unwrap());
    }
    out
}

#[test]
fn every_target_has_valid_seeds() {
    let seeds = seeds();
    for (t, _) in TARGETS {
        let mine: Vec<_> = seeds.iter().filter(|(s, _, _)| *s == t).collect();
        assert!(!mine.is_empty(), "no seed for {t}");
        for (_, name, bytes) in mine {
            assert!(run(t, bytes), "{t}: seed {name} is not accepted by its parser");
        }
    }
}

/// Replays every file under `fuzz/seeds/TARGET` and `fuzz/regressions/TARGET`.
#[test]
fn fuzz_seeds_and_crashers_replay_without_panics() {
    let mut files = 0;
    for (t, _) in TARGETS {
        let seeds = fuzz_dir().join("seeds").join(t);
        let found = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
        assert!(found > 0, "{} is empty: run scripts/fuzz.sh --seeds", seeds.display());
        for sub in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir().join(sub).join(t)) else { continue };
            for e in dir.flatten() {
                let bytes = std::fs::read(e.path()).unwrap();
                let outcome = catch_unwind(AssertUnwindSafe(|| run(t, &bytes)));
                assert!(outcome.is_ok(), "{t}: {} panics", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files >= TARGETS.len());
}

/// The committed seeds are the ones the encoders write now (run scripts/fuzz.sh --seeds after
/// changing a format).
#[test]
fn committed_seeds_are_current() {
    for (t, name, bytes) in seeds() {
        if t == "checkpoint" {
            continue; // safetensors metadata order is not fixed between writes
        }
        let p = fuzz_dir().join("seeds").join(t).join(&name);
        assert_eq!(std::fs::read(&p).ok().as_deref(), Some(&bytes[..]), "{} is stale", p.display());
    }
}

/// Writes the seeds into `fuzz/seeds/` (scripts/fuzz.sh runs this first).
#[test]
#[ignore = "writes into the source tree; run by scripts/fuzz.sh"]
fn write_seeds() {
    for (t, name, bytes) in seeds() {
        let d = fuzz_dir().join("seeds").join(t);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }
}
