//! UFM checkpoints: a safetensors file with the variables and the iteration count.
//!
//! Tensors (little-endian, the run's dtype `F32` or `F64`, row-major as safetensors defines):
//! `W` of shape `[k, d]` (row c is the classifier `w_c`, as in a PyTorch `nn.Linear` weight),
//! `H` of shape `[n, d]` (row i is the embedding `h_i`, samples sorted by class), and `b` of
//! shape `[k]` when the run trains a bias. Metadata: `format` = `seli.ufm-checkpoint.v1`,
//! `iter` (iterations completed), `dtype`, and `checksum`, the FNV-1a 64-bit hash of the tensor
//! bytes in the order W, H, b, so that a damaged file is refused rather than resumed from.
//! Written atomically; loadable from Python with `safetensors.torch.load_file`.
#![allow(non_snake_case)]

use std::collections::HashMap;
use std::path::Path;

use faer::Mat;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use seli_core::Scalar;
use seli_core::solve::ufm::Params;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};

/// Format tag stored in the metadata.
pub const CHECKPOINT_FORMAT: &str = "seli.ufm-checkpoint.v1";

/// FNV-1a, 64 bits, over the concatenation of `parts`: the checksum of checkpoint files and a
/// stable short hash for names.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn dtype_of<T: Scalar>() -> Dtype {
    if T::NAME == "f32" { Dtype::F32 } else { Dtype::F64 }
}

fn to_bytes<T: Scalar>(values: impl Iterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if T::NAME == "f32" {
            out.extend_from_slice(&(v.to_f64() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_f64().to_le_bytes());
        }
    }
    out
}

fn from_bytes<T: Scalar>(bytes: &[u8]) -> Vec<T> {
    if T::NAME == "f32" {
        bytes
            .chunks_exact(4)
            .map(|c| T::from_f64(f32::from_le_bytes(c.try_into().unwrap()) as f64))
            .collect()
    } else {
        bytes
            .chunks_exact(8)
            .map(|c| T::from_f64(f64::from_le_bytes(c.try_into().unwrap())))
            .collect()
    }
}

/// Column-major d×m matrix as row-major `[m, d]` bytes.
fn mat_bytes<T: Scalar>(m: &Mat<T>) -> Vec<u8> {
    to_bytes((0..m.ncols()).flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)])))
}

/// Writes a checkpoint of `params` after `iter` iterations.
///
/// # Errors
/// The file cannot be written.
pub fn save_checkpoint<T: Scalar>(path: &Path, params: &Params<T>, iter: u64) -> Result<()> {
    let (d, k, n) = (params.W.nrows(), params.W.ncols(), params.H.ncols());
    let w = mat_bytes(&params.W);
    let h = mat_bytes(&params.H);
    let b = params.b.as_ref().map(|b| to_bytes(b.iter().copied()));
    let mut parts: Vec<&[u8]> = vec![&w, &h];
    if let Some(b) = &b {
        parts.push(b);
    }
    let meta = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("iter".to_string(), iter.to_string()),
        ("dtype".to_string(), T::NAME.to_string()),
        ("checksum".to_string(), format!("{:016x}", fnv1a(&parts))),
    ]);
    let bad = |e: safetensors::SafeTensorError| {
        Error::format(path, format!("cannot encode checkpoint: {e}"))
    };
    let mut tensors = vec![
        ("W".to_string(), TensorView::new(dtype_of::<T>(), vec![k, d], &w).map_err(bad)?),
        ("H".to_string(), TensorView::new(dtype_of::<T>(), vec![n, d], &h).map_err(bad)?),
    ];
    if let Some(b) = &b {
        tensors.push(("b".to_string(), TensorView::new(dtype_of::<T>(), vec![k], b).map_err(bad)?));
    }
    let bytes = safetensors::tensor::serialize(tensors, Some(meta)).map_err(bad)?;
    write_atomic(path, &canonical_header(path, bytes)?)
}

/// Reads a checkpoint for a run with dimensions `d`, `k`, `n` and the given bias setting.
/// Returns the variables and the iteration count.
///
/// # Errors
/// A missing, truncated or corrupt file; another format, dtype or shape than the run's; a
/// checksum mismatch. Each message names the file.
pub fn load_checkpoint<T: Scalar>(
    path: &Path,
    d: usize,
    k: usize,
    n: usize,
    bias: bool,
) -> Result<(Params<T>, u64)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (st, meta) = open_checked(path, &bytes, CHECKPOINT_FORMAT)?;
    let get = |key: &str| meta_get(path, &meta, key);
    if get("dtype")? != T::NAME {
        return Err(Error::format(
            path,
            format!("checkpoint holds {} but the run is {}", get("dtype")?, T::NAME),
        ));
    }
    let iter: u64 = get("iter")?
        .parse()
        .map_err(|_| Error::format(path, "metadata 'iter' is not a whole number"))?;
    let tensor = |name: &str, shape: Vec<usize>| -> Result<Vec<u8>> {
        let t = st
            .tensor(name)
            .map_err(|_| Error::format(path, format!("checkpoint has no tensor '{name}'")))?;
        if t.dtype() != dtype_of::<T>() || t.shape() != shape.as_slice() {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{name}' is {:?} {:?}, expected {:?} {shape:?}",
                    t.dtype(),
                    t.shape(),
                    dtype_of::<T>()
                ),
            ));
        }
        Ok(t.data().to_vec())
    };
    let w = tensor("W", vec![k, d])?;
    let h = tensor("H", vec![n, d])?;
    let b = if bias { Some(tensor("b", vec![k])?) } else { None };
    let mut parts: Vec<&[u8]> = vec![&w, &h];
    if let Some(b) = &b {
        parts.push(b);
    }
    verify_checksum(path, &meta, &parts)?;
    let (wv, hv) = (from_bytes::<T>(&w), from_bytes::<T>(&h));
    let params = Params {
        W: Mat::from_fn(d, k, |i, j| wv[j * d + i]),
        H: Mat::from_fn(d, n, |i, j| hv[j * d + i]),
        b: b.map(|b| from_bytes::<T>(&b)),
    };
    Ok((params, iter))
}

fn meta_get(path: &Path, meta: &HashMap<String, String>, key: &str) -> Result<String> {
    meta.get(key)
        .cloned()
        .ok_or_else(|| Error::format(path, format!("checkpoint metadata lacks '{key}'")))
}

/// Parses a safetensors checkpoint and checks its `format` tag.
fn open_checked<'a>(
    path: &Path,
    bytes: &'a [u8],
    format: &str,
) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(path, format!("not a readable checkpoint (truncated or corrupt?): {e}"))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("unreadable checkpoint header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let found = meta_get(path, &meta, "format")?;
    if found != format {
        return Err(Error::format(path, format!("format '{found}' is not {format}")));
    }
    Ok((st, meta))
}

fn verify_checksum(path: &Path, meta: &HashMap<String, String>, parts: &[&[u8]]) -> Result<()> {
    let sum = format!("{:016x}", fnv1a(parts));
    let on_file = meta_get(path, meta, "checksum")?;
    if on_file != sum {
        return Err(Error::format(
            path,
            format!("checksum mismatch ({on_file} on file, {sum} computed): the file is damaged"),
        ));
    }
    Ok(())
}

/// The safetensors file `bytes` with its JSON header's keys sorted (the metadata comes from a
/// hash map, whose order changes from process to process): equal checkpoints are then equal
/// files, byte for byte, whichever process wrote them. The header keeps the format's padding
/// (spaces up to a multiple of 8 bytes), and the data that follows is unchanged.
fn canonical_header(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::format(path, format!("cannot encode checkpoint: {why}"));
    let len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| bad("no header"))?) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + len]).map_err(|e| bad(&e.to_string()))?;
    // serde_json's map is ordered by key.
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(&e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// Writes named byte blobs (stored as `U8` tensors) and string metadata to a checksummed
/// safetensors file, atomically. `format` tags the file; `checksum` (FNV-1a 64 over the
/// blobs in the given order) is added to the metadata. Used by training checkpoints, whose
/// model and optimizer states are opaque serialized records.
///
/// # Errors
/// The file cannot be written; a metadata key named `format` or `checksum`.
pub fn save_blobs(
    path: &Path,
    format: &str,
    meta: &[(&str, String)],
    blobs: &[(&str, &[u8])],
) -> Result<()> {
    write_atomic(path, &encode_blobs(path, format, meta, blobs)?)
}

/// The bytes [`save_blobs`] writes, in memory (`path` names the data in errors).
///
/// # Errors
/// A metadata key named `format`, `checksum` or `order`; an encoding failure.
pub fn encode_blobs(
    path: &Path,
    format: &str,
    meta: &[(&str, String)],
    blobs: &[(&str, &[u8])],
) -> Result<Vec<u8>> {
    let parts: Vec<&[u8]> = blobs.iter().map(|(_, b)| *b).collect();
    let mut m: HashMap<String, String> =
        meta.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
    for reserved in ["format", "checksum", "order"] {
        if m.contains_key(reserved) {
            return Err(Error::format(path, format!("metadata key '{reserved}' is reserved")));
        }
    }
    m.insert("format".into(), format.into());
    m.insert("checksum".into(), format!("{:016x}", fnv1a(&parts)));
    let order: Vec<&str> = blobs.iter().map(|(n, _)| *n).collect();
    m.insert("order".into(), order.join(","));
    let bad = |e: safetensors::SafeTensorError| {
        Error::format(path, format!("cannot encode checkpoint: {e}"))
    };
    let tensors = blobs
        .iter()
        .map(|(n, b)| {
            Ok(((*n).to_string(), TensorView::new(Dtype::U8, vec![b.len()], b).map_err(bad)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(tensors, Some(m)).map_err(bad)?;
    canonical_header(path, bytes)
}

/// A named blob of a [`save_blobs`] file.
pub type Blob = (String, Vec<u8>);

/// Reads a file written by [`save_blobs`]: its metadata (without `format`, `checksum` and
/// `order`) and blobs in their saved order.
///
/// # Errors
/// A missing, truncated or corrupt file; another format; a checksum mismatch. Each message
/// names the file.
pub fn load_blobs(path: &Path, format: &str) -> Result<(HashMap<String, String>, Vec<Blob>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_blobs(path, &bytes, format)
}

/// Decodes bytes written by [`encode_blobs`] (`path` names them in errors).
///
/// # Errors
/// Truncated or corrupt bytes; another format; a checksum mismatch.
pub fn decode_blobs(
    path: &Path,
    bytes: &[u8],
    format: &str,
) -> Result<(HashMap<String, String>, Vec<Blob>)> {
    let (st, mut meta) = open_checked(path, bytes, format)?;
    let order = meta_get(path, &meta, "order")?;
    let mut blobs = Vec::new();
    for name in order.split(',').filter(|n| !n.is_empty()) {
        let t = st
            .tensor(name)
            .map_err(|_| Error::format(path, format!("checkpoint has no tensor '{name}'")))?;
        blobs.push((name.to_string(), t.data().to_vec()));
    }
    let parts: Vec<&[u8]> = blobs.iter().map(|(_, b)| b.as_slice()).collect();
    verify_checksum(path, &meta, &parts)?;
    for k in ["format", "checksum", "order"] {
        meta.remove(k);
    }
    Ok((meta, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<T: Scalar>(bias: bool) -> Params<T> {
        Params::init(3, 4, 7, 0.5, 11, bias)
    }

    #[test]
    fn round_trip_is_exact_in_both_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ckpt.safetensors");
        let a = params::<f64>(true);
        save_checkpoint(&p, &a, 42).unwrap();
        let (b, it) = load_checkpoint::<f64>(&p, 3, 4, 7, true).unwrap();
        assert_eq!((a, 42), (b, it));
        let a = params::<f32>(false);
        save_checkpoint(&p, &a, 7).unwrap();
        assert_eq!(load_checkpoint::<f32>(&p, 3, 4, 7, false).unwrap(), (a, 7));
    }

    #[test]
    fn equal_checkpoints_are_equal_files() {
        // The metadata passes through hash maps (a new random order each time); the header is
        // written sorted, so the bytes depend on the content only.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let meta = [("epoch", "3".to_string()), ("seed", "9".to_string()), ("z", "1".into())];
        for _ in 0..16 {
            save_checkpoint(&a, &params::<f64>(true), 42).unwrap();
            save_checkpoint(&b, &params::<f64>(true), 42).unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            save_blobs(&a, "x.v1", &meta, &[("m", b"abc"), ("o", b"defgh")]).unwrap();
            save_blobs(&b, "x.v1", &meta, &[("m", b"abc"), ("o", b"defgh")]).unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        }
        let bytes = std::fs::read(&a).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0, "header padded to 8 bytes");
        let (m, blobs) = load_blobs(&a, "x.v1").unwrap();
        assert_eq!(m.get("seed").map(String::as_str), Some("9"));
        assert_eq!(
            blobs,
            [("m".to_string(), b"abc".to_vec()), ("o".to_string(), b"defgh".to_vec())]
        );
    }

    #[test]
    fn damaged_or_mismatched_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ckpt.safetensors");
        save_checkpoint(&p, &params::<f64>(false), 5).unwrap();
        let e = load_checkpoint::<f32>(&p, 3, 4, 7, false).unwrap_err().to_string();
        assert!(e.contains("holds f64 but the run is f32"), "{e}");
        let e = load_checkpoint::<f64>(&p, 3, 4, 8, false).unwrap_err().to_string();
        assert!(e.contains("tensor 'H'") && e.contains("[8, 3]"), "{e}");
        let e = load_checkpoint::<f64>(&p, 3, 4, 7, true).unwrap_err().to_string();
        assert!(e.contains("no tensor 'b'"), "{e}");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        let e = load_checkpoint::<f64>(&p, 3, 4, 7, false).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&p, &bytes).unwrap();
        let e = load_checkpoint::<f64>(&p, 3, 4, 7, false).unwrap_err().to_string();
        assert!(e.contains("ckpt.safetensors") && e.contains("truncated or corrupt"), "{e}");
    }

    #[test]
    fn blobs_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.safetensors");
        let (a, b) = (vec![1u8, 2, 3], vec![9u8; 40]);
        save_blobs(&p, "test.v1", &[("epoch", "4".into())], &[("model", &a), ("optim", &b)])
            .unwrap();
        let (meta, blobs) = load_blobs(&p, "test.v1").unwrap();
        assert_eq!(meta.get("epoch").map(String::as_str), Some("4"));
        assert_eq!(blobs, vec![("model".to_string(), a), ("optim".to_string(), b)]);
        let e = load_blobs(&p, "other.v1").unwrap_err().to_string();
        assert!(e.contains("format 'test.v1' is not other.v1"), "{e}");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(load_blobs(&p, "test.v1").unwrap_err().to_string().contains("checksum mismatch"));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(load_blobs(&p, "test.v1").unwrap_err().to_string().contains("truncated"));
    }
}
