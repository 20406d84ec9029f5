//! Every file parser on damaged copies of valid files: all short truncations and thousands of
//! seeded byte mutations. Each must return a value or an error, never panic. (The seeded
//! mutations make this a deterministic regression corpus; coverage-guided fuzzing is separate.)

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use seli_io::arrays::{Array, Dtype, encode_npy};
use seli_io::dataset::{cifar, idx, pickle};

/// Deterministic mutations: (position, new byte) pairs from a 64-bit LCG.
fn mutations(len: usize, count: usize, seed: u64) -> Vec<(usize, u8)> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) as usize % len.max(1), (s >> 17) as u8)
        })
        .collect()
}

/// Damaged variants of `good`: every truncation up to 600 bytes (then every 97th), and
/// `count` single-byte mutations.
fn variants(good: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> =
        (0..good.len()).filter(|&n| n < 600 || n % 97 == 0).map(|n| good[..n].to_vec()).collect();
    for (i, b) in mutations(good.len(), count, good.len() as u64) {
        let mut m = good.to_vec();
        m[i] = b;
        v.push(m);
    }
    v
}

/// Runs `parse` on a file holding each variant; panics name the variant.
fn survive(dir: &Path, name: &str, good: &[u8], count: usize, parse: impl Fn(&Path)) {
    let path = dir.join(name);
    for (i, bytes) in variants(good, count).iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        if catch_unwind(AssertUnwindSafe(|| parse(&path))).is_err() {
            let keep = dir.join(format!("crash-{name}-{i}"));
            std::fs::write(&keep, bytes).unwrap();
            panic!("{name}: variant {i} ({} bytes) panicked", bytes.len());
        }
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn dataset_parsers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 4 * 4).map(|i| i as u8).collect();
    let images = idx::encode_idx(&[3, 4, 4], &pixels);
    let labels = idx::encode_idx(&[3], &[1, 2, 3]);
    survive(dir.path(), "img", &images, 1500, |p| drop(idx::read_idx(p, 3)));
    survive(dir.path(), "lab", &labels, 500, |p| drop(idx::read_idx(p, 1)));
    survive(dir.path(), "img.gz", &gzip(&images), 1500, |p| drop(idx::read_idx(p, 3)));
    let img_path = dir.path().join("good-img");
    std::fs::write(&img_path, &images).unwrap();
    survive(dir.path(), "pair-lab", &labels, 500, |p| drop(idx::read_pair(&img_path, p)));

    let px: Vec<u8> = (0..2 * cifar::IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    survive(dir.path(), "c.bin", &cifar::encode_binary(&[3, 7], &px), 300, |p| {
        drop(cifar::read_binary_batch(p))
    });
    for (name, good) in [
        ("py2", pickle::write::cifar_py2(&[3, 7], &px, cifar::IMAGE_BYTES)),
        ("py3", pickle::write::cifar_py3(&[3, 7], &px, cifar::IMAGE_BYTES)),
    ] {
        // The pickle reader on bytes (fast: every truncation of the header region and many
        // mutations), then the batch reader on files.
        for (i, v) in variants(&good[..good.len().min(400)], 20_000).iter().enumerate() {
            assert!(catch_unwind(|| drop(pickle::parse(v))).is_ok(), "{name} bytes variant {i}");
        }
        survive(dir.path(), name, &good, 300, |p| drop(cifar::read_pickle_batch(p)));
    }
}

#[test]
fn array_and_label_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<f64> = (0..12).map(|i| f64::from(i) * 0.5 - 2.0).collect();
    let open = |p: &Path| {
        if let Ok(a) = Array::open(p, None) {
            if let Ok((n, _)) = a.matrix_shape() {
                let _ = a.rows(0, n);
            }
            let _ = a.integers();
        }
    };
    for (name, good) in [
        ("c.npy", encode_npy(&[4, 3], &vals, Dtype::F32, false)),
        ("f.npy", encode_npy(&[4, 3], &vals, Dtype::F16, true)),
        ("l.npy", encode_npy(&[12], &vals, Dtype::Int(8), false)),
    ] {
        survive(dir.path(), name, &good, 3000, open);
    }
    let bytes: Vec<u8> = vals.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 3], &bytes).unwrap();
    let st = safetensors::tensor::serialize([("h", view)], None).unwrap();
    survive(dir.path(), "a.safetensors", &st, 3000, open);
    for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("h.npy", zip::write::SimpleFileOptions::default().compression_method(method))
            .unwrap();
        z.write_all(&encode_npy(&[4, 3], &vals, Dtype::F64, false)).unwrap();
        z.finish().unwrap();
        survive(dir.path(), "a.npz", buf.get_ref(), 2000, open);
    }
    survive(dir.path(), "labels.txt", b"0\n1\n# comment\n2\n\n1\n", 500, |p| {
        drop(seli_io::read_labels(p))
    });
}
