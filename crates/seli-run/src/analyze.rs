//! The feature-level measurement of a model's exported arrays (`seli analyze`): features
//! (n×d), labels, and optionally the classifier, its bias and the logits, streamed in row
//! chunks through [`FeatureGeometry`] (two passes when logits are available, for NC4).
#![allow(non_snake_case)]

use std::path::Path;

use faer::Mat;
use seli_core::features::{FeatureGeometry, GEOMETRY_COLUMNS};
use seli_core::{Geometry, Profile};
use serde::Serialize;

use seli_io::arrays::{Array, RowSource};
use seli_io::error::{Error, Result};
use seli_io::labels::read_labels;
use seli_io::record::ProfileRecord;

/// Schema tag of the JSON record.
pub const ANALYZE_SCHEMA: &str = "seli.analyze.v1";

/// Reads labels from a text or `.npy` label file, or an integer vector of a `.npz` /
/// `.safetensors` file (`key` names it when the file holds several arrays).
///
/// # Errors
/// Those of [`read_labels`] and [`Array::open`].
pub fn read_label_array(path: &Path, key: Option<&str>) -> Result<Vec<i64>> {
    let is_array_file = key.is_some()
        || path.extension().is_some_and(|e| e == "npz" || e == "safetensors")
        || std::fs::read(path).map(|b| b.starts_with(b"PK\x03\x04")).unwrap_or(false);
    if is_array_file { Array::open(path, key)?.integers() } else { read_labels(path) }
}

/// Which way a classifier matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `(k, d)`: row c is `w_c`, as PyTorch's `nn.Linear.weight`.
    Kd,
    /// `(d, k)`: column c is `w_c`.
    Dk,
}

/// The classifier `W` (d×k, column c is `w_c`) from a matrix stored in `layout`.
///
/// # Errors
/// A shape other than `(k, d)` / `(d, k)` (both named).
pub fn classifier_matrix(
    a: &dyn RowSource,
    layout: Layout,
    d: usize,
    k: usize,
) -> Result<Mat<f64>> {
    let (r, c) = match a.shape()[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => (0, 0),
    };
    let want = match layout {
        Layout::Kd => (k, d),
        Layout::Dk => (d, k),
    };
    if a.shape().len() != 2 || (r, c) != want {
        return Err(Error::format(
            Path::new(a.name()),
            format!(
                "classifier of shape {:?}, expected {want:?} ({layout:?} layout for d = {d} features and k = {k} classes{})",
                a.shape(),
                if (r, c) == (want.1, want.0) {
                    "; the other --classifier-layout fits"
                } else {
                    ""
                }
            ),
        ));
    }
    let v = a.rows(0, r)?;
    Ok(match layout {
        Layout::Kd => Mat::from_fn(d, k, |i, j| v[j * d + i]),
        Layout::Dk => Mat::from_fn(d, k, |i, j| v[i * k + j]),
    })
}

/// Where the logits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogitSource {
    /// A `--logits` file.
    File,
    /// `Wᵀh + b` from the classifier (and bias).
    Classifier,
    /// None: accuracy, `dist_z` and NC4 are undefined.
    None,
}

/// The result of [`analyze`], and the JSON record `seli analyze --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// [`ANALYZE_SCHEMA`].
    pub schema: String,
    /// Samples.
    pub n: usize,
    /// Feature dimension.
    pub d: usize,
    /// Classes.
    pub k: usize,
    /// Class counts of the labels (the SELI target is that of these counts).
    pub profile: ProfileRecord,
    /// Where the logits came from.
    pub logits: LogitSource,
    /// `dist_gw_seli_etf` and `dist_gm_seli_etf`: where the ETF distances sit at exact SELI.
    pub seli_vs_etf: [f64; 2],
    /// The centering conventions used.
    pub centering: String,
    /// [`GEOMETRY_COLUMNS`] by name (`null` where undefined).
    pub values: serde_json::Map<String, serde_json::Value>,
}

impl Analysis {
    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).and_then(serde_json::Value::as_f64)
    }
}

/// Checks that `features` is n×d with one label each, and returns the class counts of
/// `labels` (read from `labels_from`): what [`analyze`] checks first, for callers that need k
/// before (to read a classifier).
///
/// # Errors
/// Features that are not a matrix or whose row count differs from the labels' (the features
/// named); a negative label, one out of `0..classes`, or an empty class (the labels named).
pub fn check_labels(
    features: &dyn RowSource,
    labels: &[i64],
    labels_from: &Path,
    classes: Option<usize>,
) -> Result<Profile> {
    let fpath = Path::new(features.name());
    let [n, _] = features.shape()[..] else {
        return Err(Error::format(
            fpath,
            format!("features of shape {:?}: expected (n, d)", features.shape()),
        ));
    };
    if labels.len() != n {
        return Err(Error::format(fpath, format!("{n} feature rows but {} labels", labels.len())));
    }
    Profile::from_labels(labels.to_vec(), classes)
        .map_err(|cause| Error::Content { path: labels_from.to_path_buf(), cause })
}

/// Measures `features` (an n×d array) with `labels` (in `0..k`, every class present; read from
/// `labels_from`, which errors about them name).
///
/// `W` (d×k) and `bias` (k) describe the last layer when known; `logits` (an n×k array) are
/// used when given, else computed as `Wᵀh + b` when `W` is. Rows are processed `chunk` at a
/// time in one pass (two with logits); memory is `O(chunk·d + d²)`.
///
/// # Errors
/// Shapes that disagree (the arrays named), a non-finite feature or logit (file, sample and
/// column named), an empty class, a label out of range.
#[allow(clippy::too_many_arguments)]
pub fn analyze(
    features: &dyn RowSource,
    labels: &[i64],
    labels_from: &Path,
    classes: Option<usize>,
    W: Option<&Mat<f64>>,
    bias: Option<&[f64]>,
    logits: Option<&dyn RowSource>,
    chunk: usize,
) -> Result<Analysis> {
    let fpath = Path::new(features.name());
    let profile = check_labels(features, labels, labels_from, classes)?;
    // check_labels saw an n×d matrix.
    let (n, d) = (features.shape()[0], features.shape()[1]);
    let k = profile.k();
    let target = Geometry::new(&profile)
        .map_err(|cause| Error::Content { path: fpath.to_path_buf(), cause })?;
    let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    if let Some(b) = bias
        && b.len() != k
    {
        return Err(Error::format(fpath, format!("bias of length {}, expected k = {k}", b.len())));
    }
    if let Some(z) = logits
        && z.shape() != [n, k]
    {
        return Err(Error::format(
            Path::new(z.name()),
            format!("logits of shape {:?}, expected (n, k) = ({n}, {k})", z.shape()),
        ));
    }
    let source = match (logits, W) {
        (Some(_), _) => LogitSource::File,
        (None, Some(_)) => LogitSource::Classifier,
        (None, None) => LogitSource::None,
    };
    let chunk = chunk.max(1);
    let batch = |start: usize, end: usize| -> Result<(Mat<f64>, Option<Mat<f64>>)> {
        let rows = features.rows(start, end)?;
        if let Some(p) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(
                fpath,
                format!(
                    "non-finite value {} at sample {}, feature {}",
                    rows[p],
                    start + p / d,
                    p % d
                ),
            ));
        }
        let H = Mat::from_fn(d, end - start, |r, i| rows[i * d + r]);
        let Z = match (logits, W) {
            (Some(z), _) => {
                let zr = z.rows(start, end)?;
                if let Some(p) = zr.iter().position(|v| !v.is_finite()) {
                    return Err(Error::format(
                        Path::new(z.name()),
                        format!(
                            "non-finite logit {} at sample {}, class {}",
                            zr[p],
                            start + p / k,
                            p % k
                        ),
                    ));
                }
                Some(Mat::from_fn(k, end - start, |c, i| zr[i * k + c]))
            }
            (None, Some(W)) => {
                let mut Z = W.transpose() * &H;
                if let Some(b) = bias {
                    for i in 0..end - start {
                        for c in 0..k {
                            Z[(c, i)] += b[c];
                        }
                    }
                }
                Some(Z)
            }
            (None, None) => None,
        };
        Ok((H, Z))
    };
    let content = |cause| Error::Content { path: fpath.to_path_buf(), cause };
    let mut geo = FeatureGeometry::new(d, k);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let (H, Z) = batch(start, end)?;
        geo.push(H.as_ref(), Z.as_ref().map(|z| z.as_ref()), &y[start..end]).map_err(content)?;
    }
    if source != LogitSource::None {
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            let (H, Z) = batch(start, end)?;
            geo.push_second(H.as_ref(), Z.expect("logits").as_ref(), &y[start..end])
                .map_err(content)?;
        }
    }
    let values = geo.values(W.map(|w| w.as_ref()), &target).map_err(content)?;
    Ok(Analysis {
        schema: ANALYZE_SCHEMA.into(),
        n,
        d,
        k,
        profile: ProfileRecord::new(&profile, None),
        logits: source,
        seli_vs_etf: [target.dist_gram_w_etf(), target.dist_gram_m_etf()],
        centering: "mu, gm, wtm columns use the raw class means; muc, gmc, wtmc and the Papyan \
                    statistics the means centered by mu_G, the mean of class means (zero at \
                    SELI); nc1 centers Sigma_B by mu_G, nc1_global by the sample mean"
            .into(),
        values: GEOMETRY_COLUMNS
            .iter()
            .zip(values)
            .map(|((name, _), v)| {
                let v = v
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                ((*name).to_string(), v)
            })
            .collect(),
    })
}
