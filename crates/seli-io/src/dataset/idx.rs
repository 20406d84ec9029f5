//! IDX files (the MNIST format): `0x00 0x00 TYPE NDIM`, NDIM big-endian `u32` sizes, then the
//! data. Only unsigned bytes (`TYPE = 0x08`) are used by MNIST and Fashion-MNIST: labels are
//! `NDIM = 1` (magic 2049), images `NDIM = 3` (magic 2051). A file starting with the gzip
//! magic bytes `1f 8b` is decompressed first, whatever its name.

use std::io::Read;
use std::path::Path;

use super::{ImageSet, read_file};
use crate::error::{Error, Result};

/// Number of classes of MNIST and Fashion-MNIST.
pub const CLASSES: usize = 10;

/// Magic number of an IDX label file (`u8`, one dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Magic number of an IDX image file (`u8`, three dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Sizes, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with `ndim` dimensions (gzip or raw).
///
/// # Errors
/// The file cannot be read; a corrupt gzip stream; a magic number other than
/// `0x000008NN` with `NN = ndim`; a data section shorter (truncated) or longer than the sizes
/// say.
pub fn read_idx(path: &Path, ndim: usize) -> Result<IdxArray> {
    let raw = read_file(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip data: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, ndim).map_err(|reason| Error::format(path, reason))
}

fn parse_idx(bytes: &[u8], ndim: usize) -> std::result::Result<IdxArray, String> {
    let word = |i: usize| -> Option<u32> {
        bytes.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = word(0).ok_or_else(|| {
        format!("truncated: {} bytes, shorter than the 4-byte IDX magic number", bytes.len())
    })?;
    let expected = 0x0800 | ndim as u32;
    if magic != expected {
        return Err(format!(
            "wrong IDX magic number 0x{magic:08x}: expected 0x{expected:08x} (unsigned bytes, \
             {ndim} dimension{})",
            if ndim == 1 { "" } else { "s" }
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    for i in 0..ndim {
        let d = word(1 + i)
            .ok_or_else(|| format!("truncated header: size {} of {ndim} missing", i + 1))?;
        dims.push(d as usize);
    }
    let header = 4 * (1 + ndim);
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("sizes overflow")?;
    let have = bytes.len() - header;
    if have < want {
        return Err(format!(
            "truncated: sizes {dims:?} need {want} data bytes, the file has {have}"
        ));
    }
    if have > want {
        return Err(format!(
            "{} trailing bytes after the {want} data bytes that sizes {dims:?} describe",
            have - want
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Reads an IDX image file and its label file into an [`ImageSet`] of one channel.
///
/// # Errors
/// Those of [`read_idx`]; image and label counts that differ; a label `>= 10` (its position
/// named).
pub fn read_pair(images: &Path, labels: &Path) -> Result<ImageSet> {
    let img = read_idx(images, 3)?;
    let lab = read_idx(labels, 1)?;
    if img.dims[0] != lab.dims[0] {
        return Err(Error::format(
            labels,
            format!("{} labels for {} images in {}", lab.dims[0], img.dims[0], images.display()),
        ));
    }
    if let Some(i) = lab.data.iter().position(|&y| y as usize >= CLASSES) {
        return Err(Error::format(
            labels,
            format!("label {} at position {i} is out of range 0..{CLASSES}", lab.data[i]),
        ));
    }
    Ok(ImageSet {
        pixels: img.data,
        labels: lab.data.iter().map(|&y| u32::from(y)).collect(),
        channels: 1,
        height: img.dims[1],
        width: img.dims[2],
        classes: CLASSES,
    })
}

/// Finds `name` or `name.gz` in `dir`.
fn locate(dir: &Path, name: &str) -> std::path::PathBuf {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if !raw.exists() && gz.exists() { gz } else { raw }
}

/// Loads the standard four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or `.gz`) from `dir`.
///
/// # Errors
/// Those of [`read_pair`].
pub fn load_split(dir: &Path) -> Result<(ImageSet, ImageSet)> {
    let pair = |prefix: &str| {
        read_pair(
            &locate(dir, &format!("{prefix}-images-idx3-ubyte")),
            &locate(dir, &format!("{prefix}-labels-idx1-ubyte")),
        )
    };
    Ok((pair("train")?, pair("t10k")?))
}

/// Encodes an IDX file of unsigned bytes (used by tests and tools that write subsets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * (1 + dims.len()) + data.len());
    out.extend_from_slice(&(0x0800u32 | dims.len() as u32).to_be_bytes());
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7 % 256) as u8).collect();
        (encode_idx(&[3, 4, 5], &pixels), encode_idx(&[3], &[7, 0, 9]))
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = sample();
        let a = read_pair(&write(dir.path(), "i", &img), &write(dir.path(), "l", &lab)).unwrap();
        assert_eq!((a.len(), a.channels, a.height, a.width), (3, 1, 4, 5));
        assert_eq!(a.labels, vec![7, 0, 9]);
        assert_eq!(a.image(1), &(20..40).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>()[..]);
        let b = read_pair(
            &write(dir.path(), "i.gz", &gzip(&img)),
            &write(dir.path(), "l.gz", &gzip(&lab)),
        )
        .unwrap();
        assert_eq!(a, b);
        // The standard names, gzipped or not, are found by load_split.
        write(dir.path(), "train-images-idx3-ubyte.gz", &gzip(&img));
        write(dir.path(), "train-labels-idx1-ubyte", &lab);
        write(dir.path(), "t10k-images-idx3-ubyte", &img);
        write(dir.path(), "t10k-labels-idx1-ubyte.gz", &gzip(&lab));
        let (train, test) = load_split(dir.path()).unwrap();
        assert_eq!((train, test), (a.clone(), a));
    }

    #[test]
    fn corrupt_files_are_rejected_with_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = sample();
        let err = |i: &[u8], l: &[u8]| {
            read_pair(&write(dir.path(), "img", i), &write(dir.path(), "lab", l))
                .unwrap_err()
                .to_string()
        };
        let e = err(&img[..img.len() - 3], &lab);
        assert!(e.contains("img") && e.contains("truncated") && e.contains("57"), "{e}");
        let e = err(&img[..10], &lab);
        assert!(e.contains("truncated header"), "{e}");
        let e = err(&img[..2], &lab);
        assert!(e.contains("truncated") && e.contains("magic"), "{e}");
        let mut wrong = img.clone();
        wrong[3] = 1;
        let e = err(&wrong, &lab);
        assert!(e.contains("wrong IDX magic number 0x00000801"), "{e}");
        let mut long = img.clone();
        long.push(0);
        assert!(err(&long, &lab).contains("1 trailing bytes"));
        let e = err(&img, &encode_idx(&[3], &[1, 10, 2]));
        assert!(e.contains("lab") && e.contains("label 10 at position 1"), "{e}");
        let e = err(&img, &encode_idx(&[2], &[1, 2]));
        assert!(e.contains("2 labels for 3 images"), "{e}");
        let mut gz = gzip(&img);
        gz.truncate(gz.len() / 2);
        assert!(err(&gz, &lab).contains("corrupt gzip data"));
        let missing = read_idx(&dir.path().join("nope"), 1).unwrap_err().to_string();
        assert!(missing.contains("nope") && missing.contains("fetch-data.sh"), "{missing}");
    }
}
