//! Label files: one integer label per line (text), or a 1-D integer `.npy` array.
//!
//! Text: leading and trailing blanks are ignored, as are empty lines and lines starting with
//! `#`. NumPy: any integer dtype (`i1..i8`, `u1..u8`, either byte order), shape `(n,)` (a
//! column `(n, 1)` is refused with how to flatten it, so that a wrong export is not read as
//! something else). The format is recognized by the `.npy` magic bytes, not the file name.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use seli_core::Profile;

use crate::error::{Error, Result};

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads all labels of a label file.
///
/// # Errors
/// The file cannot be read; a line that is not an integer (its number and text are named);
/// a `.npy` with a non-integer dtype, a shape other than a vector, a truncated data section,
/// or a label that does not fit in an `i64`.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 6];
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    if got == NPY_MAGIC.len() && head == NPY_MAGIC {
        read_npy_labels(path)
    } else {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        read_text_labels(path, BufReader::new(file))
    }
}

/// The class-count profile of a label file (see [`Profile::from_labels`]).
///
/// # Errors
/// Those of [`read_labels`], and the profile's own (empty class, label out of range), with
/// the file named.
pub fn profile_from_label_file(path: &Path, num_classes: Option<usize>) -> Result<Profile> {
    let labels = read_labels(path)?;
    Profile::from_labels(labels, num_classes)
        .map_err(|cause| Error::Content { path: path.to_path_buf(), cause })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn read_text_labels(path: &Path, reader: impl BufRead) -> Result<Vec<i64>> {
    let mut labels = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::format(
                path,
                format!("line {}: not valid UTF-8 text (is this a label file?)", i + 1),
            ),
            _ => Error::io(path, e),
        })?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let label = t.parse::<i64>().map_err(|_| {
            Error::format(path, format!("line {}: '{t}' is not an integer label", i + 1))
        })?;
        labels.push(label);
    }
    Ok(labels)
}

/// A `.npy` label vector, through the same memory-mapped reader as feature files (which
/// checks the header against the file's size before using it).
fn read_npy_labels(path: &Path) -> Result<Vec<i64>> {
    crate::arrays::Array::open(path, None)?.integers()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal version-1.0 `.npy` file, written by hand so the test does not trust the
    /// reader's own library for the format.
    pub(crate) fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn text_labels_with_blanks_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "y.txt", b"# labels\n0\n 2 \n\n1\r\n2\n");
        assert_eq!(read_labels(&p).unwrap(), vec![0, 2, 1, 2]);
        assert_eq!(profile_from_label_file(&p, None).unwrap().counts(), &[1, 1, 2]);
    }

    #[test]
    fn text_errors_name_line_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "bad.txt", b"0\n1\nthree\n");
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(e.contains("bad.txt") && e.contains("line 3: 'three'"), "{e}");
        let p = write(&dir, "bin.txt", &[0xff, 0xfe, b'\n']);
        assert!(read_labels(&p).unwrap_err().to_string().contains("not valid UTF-8"));
        let p = write(&dir, "gap.txt", b"0\n0\n2\n");
        let e = profile_from_label_file(&p, None).unwrap_err().to_string();
        assert!(e.contains("gap.txt") && e.contains("class 1 is empty"), "{e}");
        let e = read_labels(&dir.path().join("missing.txt")).unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn npy_integer_dtypes_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let le: Vec<u8> = [3i64, 0, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(&dir, "a.npy", &npy_bytes("<i8", "(4,)", &le));
        assert_eq!(read_labels(&p).unwrap(), vec![3, 0, 1, 1]);
        let be: Vec<u8> = [2i32, 0, 1].iter().flat_map(|v| v.to_be_bytes()).collect();
        let p = write(&dir, "b.npy", &npy_bytes(">i4", "(3,)", &be));
        assert_eq!(read_labels(&p).unwrap(), vec![2, 0, 1]);
        let p = write(&dir, "c.bin", &npy_bytes("|u1", "(3,)", &[1, 0, 1]));
        assert_eq!(read_labels(&p).unwrap(), vec![1, 0, 1]);
        let u: Vec<u8> = [5u16, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(&dir, "d.npy", &npy_bytes("<u2", "(2,)", &u));
        assert_eq!(read_labels(&p).unwrap(), vec![5, 4]);
    }

    #[test]
    fn npy_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let f: Vec<u8> = [0.0f64, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(&dir, "f.npy", &npy_bytes("<f8", "(2,)", &f));
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(e.contains("f.npy") && e.contains("<f8") && e.contains("not an integer"), "{e}");
        let p = write(&dir, "m.npy", &npy_bytes("<i8", "(2, 2)", &[0; 32]));
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(e.contains("m.npy") && e.contains("shape [2, 2]") && e.contains("one-hot"), "{e}");
        // Columns and rows are refused too, with how to flatten them.
        for shape in ["(3, 1)", "(1, 3)"] {
            let p = write(&dir, "col.npy", &npy_bytes("|u1", shape, &[1, 0, 1]));
            let e = read_labels(&p).unwrap_err().to_string();
            assert!(
                e.contains("col.npy")
                    && e.contains("must be a vector of shape (n,)")
                    && e.contains("reshape(-1)"),
                "{shape}: {e}"
            );
        }
        let p = write(&dir, "t.npy", &npy_bytes("<i8", "(4,)", &[0; 20]));
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(
            e.contains("truncated") && e.contains("needs 32 data bytes, the file has 20"),
            "{e}"
        );
        let mut bytes = npy_bytes("<i8", "(4,)", &[0; 32]);
        bytes.truncate(20);
        let p = write(&dir, "h.npy", &bytes);
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(e.contains("h.npy") && e.contains("header"), "{e}");
        // A header length far beyond the file (found by the labels fuzz target: it made the
        // earlier reader allocate 3.7 GB) is refused before anything is allocated.
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&0xdf27_0076_u32.to_le_bytes());
        huge.extend_from_slice(b"{'descr': '<i8'");
        let p = write(&dir, "huge.npy", &huge);
        assert!(read_labels(&p).unwrap_err().to_string().contains("huge.npy"));
        let big: Vec<u8> = u64::MAX.to_le_bytes().to_vec();
        let p = write(&dir, "u.npy", &npy_bytes("<u8", "(1,)", &big));
        assert!(read_labels(&p).unwrap_err().to_string().contains("does not fit"));
    }
}
