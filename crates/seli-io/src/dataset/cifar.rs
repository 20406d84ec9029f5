//! CIFAR-10 in its two published layouts.
//!
//! - Binary (`cifar-10-batches-bin`): `data_batch_1.bin` … `data_batch_5.bin` and
//!   `test_batch.bin`, each a sequence of 3073-byte records: one label byte, then 1024 red,
//!   1024 green and 1024 blue pixels (rows of 32).
//! - Python pickle (`cifar-10-batches-py`, as torchvision downloads it): `data_batch_1` …
//!   `data_batch_5` and `test_batch`, each a pickled dict with `data`, a `uint8` NumPy array of
//!   shape `(n, 3072)` in the same pixel order, and `labels`, a list of `n` integers.
//!
//! The standard files hold 10 000 images each; other counts are accepted (subsets).

use std::path::Path;

use super::pickle::{self, Value};
use super::{ImageSet, read_file};
use crate::error::{Error, Result};

/// Number of classes.
pub const CLASSES: usize = 10;
/// Pixels per image (3×32×32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per record of the binary layout (label + image).
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// Training batch file stems, in order.
pub const TRAIN_BATCHES: [&str; 5] =
    ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"];
/// Test batch file stem.
pub const TEST_BATCH: &str = "test_batch";

fn image_set(pixels: Vec<u8>, labels: Vec<u32>) -> ImageSet {
    ImageSet { pixels, labels, channels: 3, height: 32, width: 32, classes: CLASSES }
}

fn check_label(path: &Path, i: usize, y: i64) -> Result<u32> {
    if (0..CLASSES as i64).contains(&y) {
        Ok(y as u32)
    } else {
        Err(Error::format(path, format!("label {y} of image {i} is out of range 0..{CLASSES}")))
    }
}

/// Reads one binary batch file.
///
/// # Errors
/// A size that is not a whole number of 3073-byte records (truncated), an empty file, a
/// label byte `>= 10` (its record named).
pub fn read_binary_batch(path: &Path) -> Result<ImageSet> {
    let bytes = read_file(path)?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(Error::format(
            path,
            format!(
                "truncated or not a CIFAR-10 binary batch: {} bytes is not a positive multiple \
                 of the {RECORD_BYTES}-byte record ({} whole records and {} bytes over)",
                bytes.len(),
                bytes.len() / RECORD_BYTES,
                bytes.len() % RECORD_BYTES
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        labels.push(check_label(path, i, i64::from(rec[0]))?);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(image_set(pixels, labels))
}

/// Reads one python-pickle batch file.
///
/// # Errors
/// A corrupt or truncated pickle; no `data` or `labels` entry; `data` not a C-ordered
/// `uint8` array of shape `(n, 3072)`; a label count other than `n`; a label out of range.
pub fn read_pickle_batch(path: &Path) -> Result<ImageSet> {
    let bytes = read_file(path)?;
    let v = pickle::parse(&bytes).map_err(|e| Error::format(path, format!("bad pickle: {e}")))?;
    let bad = |reason: String| Error::format(path, reason);
    let data = match v.get("data") {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(format!("'data' is a {}, not a numpy array", other.kind()))),
        None => return Err(bad(format!("no 'data' entry (the pickle holds a {})", v.kind()))),
    };
    if data.dtype != "u1" || data.shape.len() != 2 || data.shape[1] != IMAGE_BYTES || data.fortran {
        return Err(bad(format!(
            "'data' is a {}{} array of shape {:?}: expected uint8 of shape (n, {IMAGE_BYTES}) in C order",
            data.dtype,
            if data.fortran { " Fortran-ordered" } else { "" },
            data.shape
        )));
    }
    let n = data.shape[0];
    if data.data.len() != n * IMAGE_BYTES {
        return Err(bad(format!(
            "'data' holds {} bytes, its shape {:?} needs {}",
            data.data.len(),
            data.shape,
            n * IMAGE_BYTES
        )));
    }
    let labels: Vec<i64> = match v.get("labels") {
        Some(Value::List(l)) => l
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                o => Err(bad(format!("a label is a {}, not an int", o.kind()))),
            })
            .collect::<Result<_>>()?,
        Some(Value::Array(a)) if a.dtype == "u1" => a.data.iter().map(|&b| i64::from(b)).collect(),
        Some(other) => return Err(bad(format!("'labels' is a {}, not a list", other.kind()))),
        None => return Err(bad("no 'labels' entry".into())),
    };
    if labels.len() != n {
        return Err(bad(format!("{} labels for {n} images", labels.len())));
    }
    let labels =
        labels.iter().enumerate().map(|(i, &y)| check_label(path, i, y)).collect::<Result<_>>()?;
    Ok(image_set(data.data.to_vec(), labels))
}

fn load_dir(
    dir: &Path,
    suffix: &str,
    read: fn(&Path) -> Result<ImageSet>,
) -> Result<(ImageSet, ImageSet)> {
    let parts = TRAIN_BATCHES
        .iter()
        .map(|b| read(&dir.join(format!("{b}{suffix}"))))
        .collect::<Result<Vec<_>>>()?;
    let train = ImageSet::concat(dir, parts)?;
    let test = read(&dir.join(format!("{TEST_BATCH}{suffix}")))?;
    Ok((train, test))
}

/// Loads `cifar-10-batches-bin`: the five training batches concatenated, and the test batch.
///
/// # Errors
/// Those of [`read_binary_batch`] for any file.
pub fn load_binary_dir(dir: &Path) -> Result<(ImageSet, ImageSet)> {
    load_dir(dir, ".bin", read_binary_batch)
}

/// Loads `cifar-10-batches-py`: the five training batches concatenated, and the test batch.
///
/// # Errors
/// Those of [`read_pickle_batch`] for any file.
pub fn load_pickle_dir(dir: &Path) -> Result<(ImageSet, ImageSet)> {
    load_dir(dir, "", read_pickle_batch)
}

/// Encodes images and labels in the binary record layout (tests and tools).
pub fn encode_binary(labels: &[u8], pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), labels.len() * IMAGE_BYTES, "one image per label");
    let mut out = Vec::with_capacity(labels.len() * RECORD_BYTES);
    for (y, img) in labels.iter().zip(pixels.chunks_exact(IMAGE_BYTES)) {
        out.push(*y);
        out.extend_from_slice(img);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seed: u8, n: usize) -> (Vec<u8>, Vec<u8>) {
        let labels: Vec<u8> = (0..n).map(|i| ((i * 3 + seed as usize) % CLASSES) as u8).collect();
        let pixels: Vec<u8> =
            (0..n * IMAGE_BYTES).map(|i| (i as u32 * 31 + u32::from(seed)) as u8).collect();
        (labels, pixels)
    }

    #[test]
    fn both_layouts_round_trip_to_the_same_dataset() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("cifar-10-batches-bin");
        let py = root.path().join("cifar-10-batches-py");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&py).unwrap();
        let stems: Vec<&str> = TRAIN_BATCHES.iter().copied().chain([TEST_BATCH]).collect();
        for (s, stem) in stems.iter().enumerate() {
            let (labels, pixels) = batch(s as u8, 3 + s);
            std::fs::write(bin.join(format!("{stem}.bin")), encode_binary(&labels, &pixels))
                .unwrap();
            let pkl = if s % 2 == 0 {
                pickle::write::cifar_py2(&labels, &pixels, IMAGE_BYTES)
            } else {
                pickle::write::cifar_py3(&labels, &pixels, IMAGE_BYTES)
            };
            std::fs::write(py.join(stem), pkl).unwrap();
        }
        let (train_b, test_b) = load_binary_dir(&bin).unwrap();
        let (train_p, test_p) = load_pickle_dir(&py).unwrap();
        assert_eq!(train_b, train_p);
        assert_eq!(test_b, test_p);
        assert_eq!(train_b.len(), 3 + 4 + 5 + 6 + 7);
        assert_eq!(test_b.len(), 8);
        let (labels, pixels) = batch(1, 4);
        assert_eq!(train_b.image(3), &pixels[..IMAGE_BYTES]);
        assert_eq!(train_b.labels[3], u32::from(labels[0]));
        // The binary layout wins when both are present.
        let d = crate::dataset::load(crate::dataset::DatasetKind::Cifar10, root.path()).unwrap();
        assert_eq!(d.dir, bin);
    }

    #[test]
    fn corrupt_batches_are_rejected_with_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (labels, pixels) = batch(0, 2);
        let write = |name: &str, b: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            p
        };
        let good = encode_binary(&labels, &pixels);
        let e =
            read_binary_batch(&write("t.bin", &good[..good.len() - 5])).unwrap_err().to_string();
        assert!(
            e.contains("t.bin") && e.contains("truncated") && e.contains("1 whole records"),
            "{e}"
        );
        let mut bad = good.clone();
        bad[RECORD_BYTES] = 10;
        let e = read_binary_batch(&write("l.bin", &bad)).unwrap_err().to_string();
        assert!(e.contains("label 10 of image 1"), "{e}");
        assert!(
            read_binary_batch(&write("e.bin", &[])).unwrap_err().to_string().contains("0 bytes")
        );

        let pkl = pickle::write::cifar_py2(&labels, &pixels, IMAGE_BYTES);
        let e = read_pickle_batch(&write("p", &pkl[..pkl.len() / 2])).unwrap_err().to_string();
        assert!(e.contains("bad pickle") && e.contains("truncated"), "{e}");
        let bad_labels = pickle::write::cifar_py2(&[1, 12], &pixels, IMAGE_BYTES);
        let e = read_pickle_batch(&write("q", &bad_labels)).unwrap_err().to_string();
        assert!(e.contains("label 12 of image 1"), "{e}");
        let wrong_row = pickle::write::cifar_py2(&labels, &pixels, 1024);
        let e = read_pickle_batch(&write("r", &wrong_row)).unwrap_err().to_string();
        assert!(e.contains("shape [2, 1024]"), "{e}");
        let e = read_pickle_batch(&write("s", b"\x80\x02}q\x01.")).unwrap_err().to_string();
        assert!(e.contains("no 'data' entry"), "{e}");
        let e = load_binary_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin") && e.contains("not found"), "{e}");
    }
}
