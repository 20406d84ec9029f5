//! The serialized feature accumulator (format `seli.accumulator.v1`): what a worker or rank
//! sends so that accumulators merge into the single-pass measurement.
//!
//! The bytes are a checksummed safetensors container ([`crate::checkpoint::encode_blobs`]) of
//! little-endian blobs: `counts`, `correct`, `total` (u64, k each), `means` (f64, k×d, row c
//! the mean of class c), `scatter` (f64, d×d; only with the full within-class scatter),
//! `class_ss` (f64, k: per class the sum of squared distances to its mean), during a second
//! pass with the projected scatter `second_scatter` (f64, r×r, r from
//! [`seli_core::features::projection_rank`]; lower triangle significant) and `class_mismatch`
//! (u64, k: the second pass's NCC disagreements per class), and when present
//! `classifier` (f64, k×d, row c is `w_c`) and `bias` (f64, k). Metadata: `d`, `k`,
//! `scatter` (`full` or `projected`; `full` when absent), `logits` (`none`, `given`,
//! `classifier`), `logit_samples`, the sums `zz` and `zs` as the hexadecimal bits of their
//! f64 (exact), and, during a second pass, `second` (`MISMATCH,SEEN,SQ_BITS`). Equal
//! accumulators encode to equal bytes.
#![allow(non_snake_case)]

use std::path::Path;

use faer::Mat;
use seli_core::features::{GeometryState, SecondPass, projection_rank};

use crate::checkpoint::{decode_blobs, encode_blobs};
use crate::error::{Error, Result};

/// Format tag of a serialized accumulator.
pub const ACCUMULATOR_FORMAT: &str = "seli.accumulator.v1";

/// Everything an accumulator holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulatorRecord {
    /// The measurement's sums.
    pub state: GeometryState,
    /// The classifier `W` (d×k, column c is `w_c`), when the accumulator has one.
    pub classifier: Option<Mat<f64>>,
    /// Its bias.
    pub bias: Option<Vec<f64>>,
    /// Where the logits of its batches came from: `none`, `given` or `classifier`.
    pub logits: String,
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64s(v: impl Iterator<Item = f64>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// Row-major k×d bytes of a d×k matrix (row c is column c of `m`).
fn columns(m: &Mat<f64>) -> Vec<u8> {
    f64s((0..m.ncols()).flat_map(|c| (0..m.nrows()).map(move |r| m[(r, c)])))
}

/// Encodes `rec` (`name` names it in errors).
///
/// # Errors
/// An encoding failure.
pub fn encode(name: &Path, rec: &AccumulatorRecord) -> Result<Vec<u8>> {
    let s = &rec.state;
    let (d, k) = (s.means.nrows(), s.means.ncols());
    let mut meta = vec![
        ("d", d.to_string()),
        ("k", k.to_string()),
        ("logits", rec.logits.clone()),
        ("logit_samples", s.logit_samples.to_string()),
        ("zz", format!("{:016x}", s.zz.to_bits())),
        ("zs", format!("{:016x}", s.zs.to_bits())),
        ("scatter", if s.scatter.is_some() { "full" } else { "projected" }.into()),
    ];
    if let Some(p) = &s.second {
        meta.push(("second", format!("{},{},{:016x}", p.mismatch, p.seen, p.sq.to_bits())));
    }
    let (counts, correct, total) = (u64s(&s.counts), u64s(&s.correct), u64s(&s.total));
    let means = columns(&s.means);
    let scatter = s.scatter.as_ref().map(columns);
    let second_scatter = s.second.as_ref().and_then(|p| p.scatter.as_ref()).map(columns);
    let class_mismatch = s.second.as_ref().map(|p| u64s(&p.class_mismatch));
    let class_ss = f64s(s.class_ss.iter().copied());
    let classifier = rec.classifier.as_ref().map(columns);
    let bias = rec.bias.as_ref().map(|b| f64s(b.iter().copied()));
    let mut blobs: Vec<(&str, &[u8])> = vec![
        ("counts", &counts),
        ("correct", &correct),
        ("total", &total),
        ("means", &means),
        ("class_ss", &class_ss),
    ];
    if let Some(b) = &scatter {
        blobs.push(("scatter", b));
    }
    if let Some(b) = &second_scatter {
        blobs.push(("second_scatter", b));
    }
    if let Some(b) = &class_mismatch {
        blobs.push(("class_mismatch", b));
    }
    if let Some(w) = &classifier {
        blobs.push(("classifier", w));
    }
    if let Some(b) = &bias {
        blobs.push(("bias", b));
    }
    encode_blobs(name, ACCUMULATOR_FORMAT, &meta, &blobs)
}

/// Decodes bytes written by [`encode`] (`name` names them in errors).
///
/// # Errors
/// Truncated or corrupt bytes, another format, a checksum mismatch, blobs of the wrong size,
/// malformed metadata: each named.
pub fn decode(name: &Path, bytes: &[u8]) -> Result<AccumulatorRecord> {
    let (meta, blobs) = decode_blobs(name, bytes, ACCUMULATOR_FORMAT)?;
    let bad = |why: String| Error::format(name, why);
    let get =
        |key: &str| meta.get(key).ok_or_else(|| bad(format!("accumulator metadata lacks '{key}'")));
    let int = |key: &str| -> Result<u64> {
        get(key)?.parse().map_err(|_| bad(format!("metadata '{key}' is not a whole number")))
    };
    let bits = |key: &str, text: &str| -> Result<f64> {
        u64::from_str_radix(text, 16)
            .map(f64::from_bits)
            .map_err(|_| bad(format!("metadata '{key}': '{text}' is not 16 hex digits")))
    };
    let (d, k) = (int("d")? as usize, int("k")? as usize);
    let blob = |n: &str, len: usize| -> Result<Option<&[u8]>> {
        match blobs.iter().find(|(b, _)| b == n) {
            None => Ok(None),
            Some((_, b)) if b.len() == len * 8 => Ok(Some(b.as_slice())),
            Some((_, b)) => Err(bad(format!(
                "blob '{n}' has {} bytes, expected {} for d = {d}, k = {k}",
                b.len(),
                len * 8
            ))),
        }
    };
    let need = |n: &str, len: usize| -> Result<&[u8]> {
        blob(n, len)?.ok_or_else(|| bad(format!("accumulator has no '{n}'")))
    };
    let words = |b: &[u8]| -> Vec<[u8; 8]> {
        b.chunks_exact(8).map(|c| c.try_into().expect("8 bytes")).collect()
    };
    let to_u64 = |b: &[u8]| words(b).into_iter().map(u64::from_le_bytes).collect::<Vec<_>>();
    let to_f64 = |b: &[u8]| words(b).into_iter().map(f64::from_le_bytes).collect::<Vec<_>>();
    let matrix = |b: &[u8], rows: usize, cols: usize| {
        let v = to_f64(b);
        Mat::from_fn(rows, cols, |r, c| v[c * rows + r])
    };
    let second = match meta.get("second") {
        None => None,
        Some(t) => {
            let parts: Vec<&str> = t.split(',').collect();
            let [m, seen, sq] = parts[..] else {
                return Err(bad(format!("metadata 'second': '{t}' is not MISMATCH,SEEN,SQ")));
            };
            let n =
                |x: &str| x.parse::<u64>().map_err(|_| bad(format!("metadata 'second': '{t}'")));
            let r = projection_rank(d, k);
            Some(SecondPass {
                mismatch: n(m)?,
                class_mismatch: to_u64(need("class_mismatch", k)?),
                seen: n(seen)?,
                sq: bits("second", sq)?,
                scatter: blob("second_scatter", r * r)?.map(|b| matrix(b, r, r)),
            })
        }
    };
    let full = match meta.get("scatter").map(String::as_str) {
        None | Some("full") => true,
        Some("projected") => false,
        Some(t) => return Err(bad(format!("metadata 'scatter': '{t}' is not full or projected"))),
    };
    let logits = get("logits")?.clone();
    if !matches!(logits.as_str(), "none" | "given" | "classifier") {
        return Err(bad(format!("metadata 'logits': '{logits}' is not none, given or classifier")));
    }
    Ok(AccumulatorRecord {
        state: GeometryState {
            counts: to_u64(need("counts", k)?),
            means: matrix(need("means", k * d)?, d, k),
            scatter: if full { Some(matrix(need("scatter", d * d)?, d, d)) } else { None },
            class_ss: to_f64(need("class_ss", k)?),
            correct: to_u64(need("correct", k)?),
            total: to_u64(need("total", k)?),
            zz: bits("zz", get("zz")?)?,
            zs: bits("zs", get("zs")?)?,
            logit_samples: int("logit_samples")?,
            second,
        },
        classifier: blob("classifier", k * d)?.map(|b| matrix(b, d, k)),
        bias: blob("bias", k)?.map(to_f64),
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_round_trip_bit_for_bit_and_damage_is_named() {
        let (d, k) = (3, 2);
        let rec = AccumulatorRecord {
            state: GeometryState {
                counts: vec![4, 5],
                means: Mat::from_fn(d, k, |r, c| 0.1 * (r + 3 * c) as f64 + 1e-17),
                scatter: None,
                class_ss: vec![0.75, 1.0 / 3.0],
                correct: vec![3, 5],
                total: vec![4, 5],
                zz: 1.0 / 3.0,
                zs: -2.0f64.sqrt(),
                logit_samples: 9,
                second: Some(SecondPass {
                    mismatch: 1,
                    class_mismatch: vec![0, 1],
                    seen: 9,
                    sq: 0.125,
                    scatter: Some(Mat::from_fn(d, d, |r, c| (r * c) as f64 / 3.0)),
                }),
            },
            classifier: Some(Mat::from_fn(d, k, |r, c| (r as f64 - c as f64) / 7.0)),
            bias: Some(vec![0.5, -0.25]),
            logits: "classifier".into(),
        };
        let name = Path::new("acc");
        // Both kinds of within-class scatter.
        let mut full = rec.clone();
        full.state.scatter = Some(Mat::from_fn(d, d, |r, c| (r + c) as f64 / 7.0));
        full.state.second.as_mut().unwrap().scatter = None;
        let bytes = encode(name, &full).unwrap();
        assert_eq!(decode(name, &bytes).unwrap(), full);
        let bytes = encode(name, &rec).unwrap();
        assert_eq!(decode(name, &bytes).unwrap(), rec);
        assert_eq!(encode(name, &rec).unwrap(), bytes, "equal records, equal bytes");
        let mut damaged = bytes.clone();
        let last = damaged.len() - 5;
        damaged[last] ^= 1;
        let e = decode(name, &damaged).unwrap_err().to_string();
        assert!(e.contains("acc") && e.contains("checksum mismatch"), "{e}");
        let e = decode(name, &bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(e.contains("acc"), "{e}");
        let e = decode(name, b"not an accumulator").unwrap_err().to_string();
        assert!(e.contains("acc"), "{e}");
    }
}
