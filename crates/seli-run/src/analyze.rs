//! The feature-level measurement of a model's exported arrays (`seli analyze`): features
//! (n×d), labels, and optionally the classifier, its bias and the logits, streamed in row
//! chunks through [`FeatureGeometry`] (two passes when logits are available, for NC4).
#![allow(non_snake_case)]

use std::path::{Path, PathBuf};

use faer::Mat;
use rayon::prelude::*;
use seli_core::features::{FeatureGeometry, GEOMETRY_COLUMNS, HeldOut, Precision, WithinScatter};
use seli_core::{Geometry, Profile};
use serde::Serialize;

use seli_io::accumulator::AccumulatorRecord;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The loss whose target the `dist_*_target` columns compare with (docs/theory.md §10):
    /// `loss`, `gamma`, `tau`, `bias` (a free bias when the classifier has one).
    pub target_loss: serde_json::Value,
    /// Held-out samples against the training class means ([`Accumulator::held_out`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<HeldOutRecord>,
    /// Out-of-distribution features against the class means ([`Accumulator::ood`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodRecord>,
}

/// Held-out samples measured against the class means of the training samples (docs/theory.md,
/// "Held-out and out-of-distribution data").
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutRecord {
    /// Held-out samples.
    pub n: u64,
    /// Fraction whose true logit is strictly the largest (with logits or a classifier).
    pub accuracy: Option<f64>,
    /// Fraction whose nearest training class mean is their class.
    pub ncc_accuracy: f64,
    /// NC4 on held-out data: fraction whose argmax logit differs from their nearest training
    /// class mean (with logits or a classifier).
    pub ncc_mismatch: Option<f64>,
}

/// NC5 of out-of-distribution features.
#[derive(Debug, Clone, Serialize)]
pub struct OodRecord {
    /// Out-of-distribution samples.
    pub n: u64,
    /// Mean over classes of `|cos(μ_c − μ_G, μ_OOD − μ_G)|`; `null` when a vector is zero.
    pub nc5: Option<f64>,
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
/// time in two passes: class means and per-class sums first (O(n·d)), then the within-class
/// scatter projected onto the span of the class means, NC4 and the exact `dist_z`
/// (O(n·d·min(k, d)), [`WithinScatter::Projected`]); f32 (or narrower) features are
/// multiplied in f32 with f64 sums ([`Precision::Single`]). Memory is
/// `O(chunk·d + d·k + min(k, d)²)`. Returns the accumulator after both passes:
/// [`Accumulator::analysis`] is the record, [`Accumulator::per_class`],
/// [`Accumulator::held_out`] and [`Accumulator::ood`] the further views.
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
) -> Result<Accumulator> {
    let fpath = Path::new(features.name());
    let profile = check_labels(features, labels, labels_from, classes)?;
    // check_labels saw an n×d matrix.
    let (n, d) = (features.shape()[0], features.shape()[1]);
    // The accumulator checks the bias and the logits' shape, naming the features.
    let mut acc = Accumulator::named(fpath, profile.k(), d, W.cloned(), bias.map(<[f64]>::to_vec))?
        .with_within_scatter(WithinScatter::Projected)?;
    // At least one part per thread's worth of rows per chunk.
    let chunk = chunk.max(part_rows(d, profile.k()) * rayon::current_num_threads().min(4));
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        acc.add_rows(features, logits, &labels[start..end], start, end)?;
    }
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        acc.add_second_rows(features, logits, &labels[start..end], start, end)?;
    }
    Ok(acc)
}

/// The per-class columns of `seli analyze --per-class` and `seli.metrics(per_class=True)`, in
/// order, with their meanings (docs/formats.md).
pub const PER_CLASS_COLUMNS: &[(&str, &str)] = &[
    ("class", "class index"),
    ("count", "samples of the class"),
    ("group", "maj or min when the counts form two groups, else empty"),
    ("w_norm", "||w_c||"),
    ("muc_norm", "||mu_c - mu_G||"),
    ("cos_w_seli", "cos(w_c, R w*_c), w* the SELI classifier factor rotated to fit W best"),
    ("cos_w_etf", "cos(w_c, R e_c), e the simplex ETF rotated to fit W best"),
    ("cos_muc_seli", "cos(mu_c - mu_G, R m*_c), m* the SELI class-mean factor rotated to fit"),
    ("cos_muc_etf", "cos(mu_c - mu_G, R e_c), the simplex ETF rotated to fit the centered means"),
    ("within_var", "(1/n_c) sum over the class of ||h_i - mu_c||^2"),
    ("within_share", "the class's share of Tr(Sigma_W): its sum of squares over all classes'"),
    ("ncc_agreement", "fraction of the class's samples whose argmax logit is their nearest mean"),
];

/// One row of the per-class view, as recorded: [`PER_CLASS_COLUMNS`] by name in JSON (`null`
/// where undefined), cells in CSV.
#[derive(Debug, Clone)]
pub struct PerClassRow(pub seli_core::features::PerClass);

impl PerClassRow {
    /// The numeric columns after `class`, `count` and `group`, in [`PER_CLASS_COLUMNS`] order.
    fn values(&self) -> [Option<f64>; 9] {
        let p = &self.0;
        [
            p.w_norm,
            Some(p.muc_norm),
            p.cos_w_seli,
            p.cos_w_etf,
            p.cos_muc_seli,
            p.cos_muc_etf,
            Some(p.within_var),
            p.within_share,
            p.ncc_agreement,
        ]
    }

    /// The row's cells in [`PER_CLASS_COLUMNS`] order (empty where undefined; floats in
    /// Rust's shortest round-trip form).
    pub fn cells(&self) -> Vec<String> {
        let p = &self.0;
        let mut out = vec![p.class.to_string(), p.count.to_string(), p.group.unwrap_or("").into()];
        out.extend(self.values().iter().map(|v| v.map(|x| x.to_string()).unwrap_or_default()));
        out
    }
}

impl Serialize for PerClassRow {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(PER_CLASS_COLUMNS.len()))?;
        m.serialize_entry("class", &self.0.class)?;
        m.serialize_entry("count", &self.0.count)?;
        m.serialize_entry("group", &self.0.group)?;
        for ((name, _), v) in PER_CLASS_COLUMNS[3..].iter().zip(self.values()) {
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

/// Rows per part of a batch measured on its own thread (parts merge in order): at least
/// 1024, and twice the side of the second pass's scatter, so that adding a part's r×r scatter
/// stays small beside the part's products.
fn part_rows(d: usize, k: usize) -> usize {
    1024.max(2 * seli_core::features::projection_rank(d, k))
}

/// `start..end` cut into parts of [`part_rows`] rows.
fn part_ranges(start: usize, end: usize, d: usize, k: usize) -> Vec<(usize, usize)> {
    let size = part_rows(d, k);
    (start..end).step_by(size).map(|s| (s, (s + size).min(end))).collect()
}

/// The centering conventions of the measurement, as recorded.
const CENTERING: &str = "mu, gm, wtm columns use the raw class means; muc, gmc, wtmc and the \
                         Papyan statistics the means centered by mu_G, the mean of class means \
                         (zero at SELI); nc1 centers Sigma_B by mu_G, nc1_global by the sample \
                         mean";

/// The measurement of [`analyze`] fed batch by batch (from a training loop, or by several
/// workers whose accumulators [`Accumulator::merge`] into the single-pass result), in memory
/// `O(d² + dk)` whatever the number of samples.
///
/// Pass 1 ([`Accumulator::add`]) takes features, labels and, when available, logits (else
/// `Wᵀh + b` from the classifier given at construction): class means, NC1, the Grams and
/// their distances, accuracy. Some columns need the final class means, hence a second pass
/// over the same samples ([`Accumulator::add_second`], any batching): `ncc_mismatch` (NC4),
/// the exact form of `dist_z` (pass 1 alone gives its streaming form, equal up to about
/// 1e-8 near an exact match), and, with [`WithinScatter::Projected`]
/// ([`Accumulator::with_within_scatter`]), `nc1` and `nc1_global` at O(n·d·k) cost instead of
/// the O(n·d²) of the d×d scatter pass 1 keeps by default. Accumulators serialize
/// ([`Accumulator::to_bytes`]) so that ranks can send them.
#[derive(Debug, Clone)]
pub struct Accumulator {
    d: usize,
    k: usize,
    W: Option<Mat<f64>>,
    bias: Option<Vec<f64>>,
    geo: FeatureGeometry,
    /// Where the logits of the batches came from (set by the first batch).
    source: Option<LogitSource>,
    /// Names the features in errors.
    pub name: std::path::PathBuf,
}

impl Accumulator {
    /// An empty accumulator for `d`-dimensional features of `k` classes, with the classifier
    /// `W` (d×k) and its bias when known.
    ///
    /// # Errors
    /// `k < 2` or `d = 0`; a classifier or bias of another shape, or not finite (named).
    pub fn new(k: usize, d: usize, W: Option<Mat<f64>>, bias: Option<Vec<f64>>) -> Result<Self> {
        Self::named(Path::new("accumulator"), k, d, W, bias)
    }

    /// As [`Accumulator::new`], with `name` naming the data in errors.
    ///
    /// # Errors
    /// As [`Accumulator::new`].
    pub fn named(
        name: &Path,
        k: usize,
        d: usize,
        W: Option<Mat<f64>>,
        bias: Option<Vec<f64>>,
    ) -> Result<Self> {
        let name = name.to_path_buf();
        let bad = |why: String| Error::format(&name, why);
        if k < 2 || d == 0 {
            return Err(bad(format!("k = {k}, d = {d}: need k >= 2 classes and d >= 1")));
        }
        if let Some(w) = &W {
            if (w.nrows(), w.ncols()) != (d, k) {
                return Err(bad(format!(
                    "classifier of shape ({}, {}) as d x k, expected ({d}, {k})",
                    w.nrows(),
                    w.ncols()
                )));
            }
            if (0..d).any(|r| (0..k).any(|c| !w[(r, c)].is_finite())) {
                return Err(bad("classifier has a non-finite entry".into()));
            }
        }
        if let Some(b) = &bias {
            if b.len() != k {
                return Err(bad(format!("bias of length {}, expected k = {k}", b.len())));
            }
            if W.is_none() {
                return Err(bad("a bias without a classifier".into()));
            }
            if let Some(v) = b.iter().find(|v| !v.is_finite()) {
                return Err(bad(format!("bias has the non-finite entry {v}")));
            }
        }
        Ok(Accumulator { d, k, W, bias, geo: FeatureGeometry::new(d, k), source: None, name })
    }

    /// The same empty accumulator with NC1's within-class scatter kept as `scatter` says.
    ///
    /// # Errors
    /// An accumulator that has already taken samples.
    pub fn with_within_scatter(mut self, scatter: WithinScatter) -> Result<Self> {
        if self.n() > 0 {
            return Err(Error::format(
                &self.name,
                "the within-class scatter is chosen before the first batch".to_string(),
            ));
        }
        self.geo = FeatureGeometry::with_scatter(self.d, self.k, scatter);
        Ok(self)
    }

    /// How NC1's within-class scatter is kept.
    pub fn within_scatter(&self) -> WithinScatter {
        self.geo.moments().scatter_kind()
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Classes.
    pub fn classes(&self) -> usize {
        self.k
    }

    /// Samples of pass 1 so far.
    pub fn n(&self) -> u64 {
        self.geo.moments().n()
    }

    /// Samples per class so far.
    pub fn counts(&self) -> &[u64] {
        self.geo.moments().counts()
    }

    fn labels(&self, labels: &[i64]) -> Result<Vec<u32>> {
        labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                u32::try_from(l).ok().filter(|&v| (v as usize) < self.k).ok_or_else(|| {
                    Error::format(
                        Path::new("labels"),
                        format!(
                            "label {l} at position {i} of the batch is outside 0..{} (k = {})",
                            self.k, self.k
                        ),
                    )
                })
            })
            .collect()
    }

    /// Rows `start..end` of `features` (and of `logits`) as d×b and k×b matrices, checked.
    fn batch(
        &self,
        features: &dyn RowSource,
        logits: Option<&dyn RowSource>,
        start: usize,
        end: usize,
    ) -> Result<(Vec<f64>, Option<Mat<f64>>)> {
        let (d, k) = (self.d, self.k);
        let fpath = Path::new(features.name());
        match features.shape()[..] {
            [_, c] if c == d => {}
            _ => {
                return Err(Error::format(
                    fpath,
                    format!(
                        "shape {:?}: expected (b, d), a batch of d = {d} features per row",
                        features.shape()
                    ),
                ));
            }
        }
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
        // Row-major b×d rows are the column-major d×b matrix.
        let H = faer::MatRef::from_column_major_slice(&rows, d, end - start);
        let Z = match (logits, &self.W) {
            (Some(z), _) => {
                if z.shape() != [features.shape()[0], k] {
                    return Err(Error::format(
                        Path::new(z.name()),
                        format!(
                            "logits of shape {:?}, expected (n, k) = ({}, {k})",
                            z.shape(),
                            features.shape()[0]
                        ),
                    ));
                }
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
                let mut Z = W.transpose() * H;
                if let Some(b) = &self.bias {
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
        Ok((rows, Z))
    }

    fn source_of(&mut self, logits: bool) -> Result<LogitSource> {
        let now = match (logits, self.W.is_some()) {
            (true, _) => LogitSource::File,
            (false, true) => LogitSource::Classifier,
            (false, false) => LogitSource::None,
        };
        match self.source {
            None => self.source = Some(now),
            Some(s) if s != now => {
                return Err(Error::format(
                    &self.name,
                    format!(
                        "a batch {} logits after batches {} them: give logits with every batch \
                         or with none",
                        if logits { "with" } else { "without" },
                        if logits { "without" } else { "with" }
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(now)
    }

    /// Rows `start..end` of `features` (and `logits`) cut into parts of [`part_rows`] rows,
    /// each read, checked and measured by `f` (features as a d×b view, logits k×b, the part's
    /// rows counted from `start`) on every core; the results in row order, so that what is
    /// merged from them does not depend on the thread count.
    fn map_parts<T: Send>(
        &self,
        features: &dyn RowSource,
        logits: Option<&dyn RowSource>,
        (start, end): (usize, usize),
        f: impl Fn(
            faer::MatRef<'_, f64>,
            Option<faer::MatRef<'_, f64>>,
            std::ops::Range<usize>,
        ) -> Result<T>
        + Sync,
    ) -> Result<Vec<T>> {
        part_ranges(start, end, self.d, self.k)
            .into_par_iter()
            .map(|(s, e)| {
                let (rows, Z) = self.batch(features, logits, s, e)?;
                let H = faer::MatRef::from_column_major_slice(&rows, self.d, e - s);
                f(H, Z.as_ref().map(|z| z.as_ref()), s - start..e - start)
            })
            .collect()
    }

    /// Pass 1: rows `start..end` of `features` (n×d) and of `logits` (n×k, when given) with
    /// their `labels`.
    ///
    /// # Errors
    /// Shapes that disagree, a non-finite value, a label outside `0..k` (each named); logits
    /// given with some batches and not others; a batch after the second pass began.
    pub fn add_rows(
        &mut self,
        features: &dyn RowSource,
        logits: Option<&dyn RowSource>,
        labels: &[i64],
        start: usize,
        end: usize,
    ) -> Result<()> {
        if self.geo.second_seen().is_some() {
            return Err(Error::format(
                &self.name,
                "a first-pass batch after the second pass began: add every batch first".to_string(),
            ));
        }
        self.source_of(logits.is_some())?;
        let y = self.labels(labels)?;
        let (d, k, kind) = (self.d, self.k, self.within_scatter());
        let fpath = Path::new(features.name());
        let content = |cause| Error::Content { path: fpath.to_path_buf(), cause };
        let parts = self.map_parts(features, logits, (start, end), |H, Z, r| {
            let mut g = FeatureGeometry::with_scatter(d, k, kind);
            g.push(H, Z, &y[r]).map_err(content)?;
            Ok(g)
        })?;
        for part in &parts {
            self.geo.merge(part).map_err(content)?;
        }
        Ok(())
    }

    /// Pass 1 over a whole batch: `features` (b×d), `labels` (b), `logits` (b×k) if given.
    ///
    /// # Errors
    /// As [`Accumulator::add_rows`], and labels whose count is not the batch's.
    pub fn add(
        &mut self,
        features: &dyn RowSource,
        labels: &[i64],
        logits: Option<&dyn RowSource>,
    ) -> Result<()> {
        let b = self.batch_rows(features, labels)?;
        self.add_rows(features, logits, labels, 0, b)
    }

    fn batch_rows(&self, features: &dyn RowSource, labels: &[i64]) -> Result<usize> {
        let b = features.shape().first().copied().unwrap_or(0);
        if labels.len() != b {
            return Err(Error::format(
                Path::new(features.name()),
                format!("{b} feature rows but {} labels", labels.len()),
            ));
        }
        Ok(b)
    }

    /// Pass 2: rows `start..end` again (the same samples as pass 1, in any batching), for
    /// NC4 and the exact `dist_z`, and NC1 with [`WithinScatter::Projected`]. Features of f32
    /// precision or less are multiplied in f32 with f64 sums ([`Precision::Single`]).
    ///
    /// # Errors
    /// Nothing to do: no logits in pass 1 and the full scatter kept; a class empty after
    /// pass 1; shapes that disagree; more samples than pass 1 saw.
    pub fn add_second_rows(
        &mut self,
        features: &dyn RowSource,
        logits: Option<&dyn RowSource>,
        labels: &[i64],
        start: usize,
        end: usize,
    ) -> Result<()> {
        if matches!(self.source, None | Some(LogitSource::None))
            && self.within_scatter() == WithinScatter::Full
        {
            return Err(Error::format(
                &self.name,
                "a second pass needs logits (given, or from a classifier) in the first, or the \
                 projected within-class scatter"
                    .to_string(),
            ));
        }
        self.source_of(logits.is_some())?;
        let y = self.labels(labels)?;
        let fpath = Path::new(features.name());
        let content = |cause| Error::Content { path: fpath.to_path_buf(), cause };
        let precision = if features.single() { Precision::Single } else { Precision::Double };
        self.geo.prepare_second().map_err(content)?;
        let geo = &self.geo;
        let parts = self.map_parts(features, logits, (start, end), |H, Z, r| {
            geo.second_part(H, Z, &y[r], precision).map_err(content)
        })?;
        for part in &parts {
            self.geo.add_second_part(part).map_err(content)?;
        }
        let seen = self.geo.second_seen().unwrap_or(0);
        if seen > self.n() {
            return Err(Error::format(
                &self.name,
                format!("the second pass has seen {seen} samples, the first only {}", self.n()),
            ));
        }
        Ok(())
    }

    /// Pass 2 over a whole batch.
    ///
    /// # Errors
    /// As [`Accumulator::add_second_rows`].
    pub fn add_second(
        &mut self,
        features: &dyn RowSource,
        labels: &[i64],
        logits: Option<&dyn RowSource>,
    ) -> Result<()> {
        let b = self.batch_rows(features, labels)?;
        self.add_second_rows(features, logits, labels, 0, b)
    }

    /// Merges `other` (another worker's accumulator of other samples) into this one: the
    /// result equals one accumulator fed both sample sets, up to rounding (1e-10 relative in
    /// the tests). Second passes merge between accumulators that started them from the same
    /// merged first pass.
    ///
    /// # Errors
    /// Another k or d, another classifier or bias, logits from another source (each named);
    /// passes that do not match.
    pub fn merge(&mut self, other: &Accumulator) -> Result<()> {
        let bad = |why: String| Error::format(&self.name, why);
        if (self.k, self.d) != (other.k, other.d) {
            return Err(bad(format!(
                "cannot merge an accumulator of k = {}, d = {} into one of k = {}, d = {}",
                other.k, other.d, self.k, self.d
            )));
        }
        if self.W != other.W || self.bias != other.bias {
            return Err(bad(
                "cannot merge accumulators with different classifiers or biases (their \
                 targets and logits differ)"
                    .into(),
            ));
        }
        match (self.source, other.source) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "cannot merge accumulators whose logits came from different sources ({} \
                     and {})",
                    source_name(a),
                    source_name(b)
                )));
            }
            (None, b) => self.source = b,
            _ => {}
        }
        self.geo
            .merge(&other.geo)
            .map_err(|cause| Error::Content { path: self.name.clone(), cause })
    }

    /// The measurement so far, as [`analyze`] records it (every class must have samples).
    ///
    /// # Errors
    /// A class without samples (named); decompositions failing.
    pub fn analysis(&self) -> Result<Analysis> {
        self.analysis_with(seli_core::LossKind::Ce, 0.0, 0.0)
    }

    /// [`Accumulator::analysis`] with the `dist_*_target` columns against the target of the
    /// loss family `kind` with `gamma` and `tau` (a free bias when the classifier has one).
    ///
    /// # Errors
    /// As [`Accumulator::analysis`]; an invalid loss.
    pub fn analysis_with(
        &self,
        kind: seli_core::LossKind,
        gamma: f64,
        tau: f64,
    ) -> Result<Analysis> {
        let content = |cause| Error::Content { path: self.name.clone(), cause };
        let counts: Vec<u64> = self.counts().to_vec();
        if let Some(c) = counts.iter().position(|&m| m == 0) {
            return Err(Error::format(
                &self.name,
                format!(
                    "class {c} has no samples (counts {counts:?}): the SELI target needs every class"
                ),
            ));
        }
        let profile = Profile::from_counts(counts).map_err(content)?;
        let target = Geometry::new(&profile).map_err(content)?;
        let loss = seli_core::Loss::new(kind, gamma, tau, self.bias.is_some()).map_err(content)?;
        let own = seli_core::implicit::LossTarget::solve(&profile, loss).map_err(content)?;
        let values = self
            .geo
            .values_with(self.W.as_ref().map(|w| w.as_ref()), &target, own.as_ref())
            .map_err(content)?;
        Ok(Analysis {
            schema: ANALYZE_SCHEMA.into(),
            n: self.n() as usize,
            d: self.d,
            k: self.k,
            profile: ProfileRecord::new(&profile, None),
            logits: self.source.unwrap_or(LogitSource::None),
            seli_vs_etf: [target.dist_gram_w_etf(), target.dist_gram_m_etf()],
            centering: CENTERING.into(),
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
            target_loss: serde_json::json!({
                "loss": loss.kind.name(),
                "gamma": loss.gamma,
                "tau": loss.tau,
                "bias": loss.bias,
            }),
            eval: None,
            ood: None,
        })
    }

    /// Held-out samples (`features`, n'×d; `labels` read from `labels_from`; `logits` n'×k
    /// when given, else `Wᵀh + b` from the classifier) against the class means of pass 1:
    /// accuracy, nearest-class-mean accuracy and NC4.
    ///
    /// # Errors
    /// A class empty in pass 1; shapes that disagree, a non-finite value, a label outside
    /// `0..k` (each named).
    pub fn held_out(
        &self,
        features: &dyn RowSource,
        labels: &[i64],
        labels_from: &Path,
        logits: Option<&dyn RowSource>,
    ) -> Result<HeldOutRecord> {
        let fpath = Path::new(features.name());
        let n = match features.shape()[..] {
            [n, c] if c == self.d => n,
            _ => {
                return Err(Error::format(
                    fpath,
                    format!(
                        "held-out features of shape {:?}: expected (n, {})",
                        features.shape(),
                        self.d
                    ),
                ));
            }
        };
        if labels.len() != n {
            return Err(Error::format(
                fpath,
                format!("{n} held-out feature rows but {} labels", labels.len()),
            ));
        }
        let y = self.labels(labels).map_err(|e| match e {
            Error::Format { reason, .. } => Error::format(labels_from, reason),
            e => e,
        })?;
        let content = |cause| Error::Content { path: fpath.to_path_buf(), cause };
        let precision = if features.single() { Precision::Single } else { Precision::Double };
        let mut geo = self.geo.clone();
        geo.prepare_second().map_err(content)?;
        let parts = self.map_parts(features, logits, (0, n), |H, Z, r| {
            geo.held_out(H, Z, &y[r], precision).map_err(content)
        })?;
        let mut total = HeldOut::default();
        for p in &parts {
            total.add(p);
        }
        let frac = |c: u64| c as f64 / total.n.max(1) as f64;
        Ok(HeldOutRecord {
            n: total.n,
            accuracy: total.logit_correct.map(frac),
            ncc_accuracy: frac(total.ncc_correct),
            ncc_mismatch: total.mismatch.map(frac),
        })
    }

    /// NC5 of out-of-distribution `features` (n'×d) against the class means of pass 1.
    ///
    /// # Errors
    /// A class empty in pass 1; features of another width, none, or a non-finite value.
    pub fn ood(&self, features: &dyn RowSource) -> Result<OodRecord> {
        let fpath = Path::new(features.name());
        let n = match features.shape()[..] {
            [n, c] if c == self.d && n > 0 => n,
            _ => {
                return Err(Error::format(
                    fpath,
                    format!(
                        "OOD features of shape {:?}: expected (n, {}) with n >= 1",
                        features.shape(),
                        self.d
                    ),
                ));
            }
        };
        let d = self.d;
        let parts = self.map_parts(features, None, (0, n), |H, _, _| {
            Ok((0..d).map(|r| H.row(r).iter().sum::<f64>()).collect::<Vec<f64>>())
        })?;
        let mut mean = vec![0.0; d];
        for p in &parts {
            for (m, v) in mean.iter_mut().zip(p) {
                *m += v;
            }
        }
        let content = |cause| Error::Content { path: fpath.to_path_buf(), cause };
        let (Mc, center) = self
            .geo
            .moments()
            .centered_means(seli_core::metrics::Centering::ClassMeans)
            .map_err(content)?;
        let ood: Vec<f64> = mean.iter().zip(&center).map(|(m, c)| m / n as f64 - c).collect();
        Ok(OodRecord { n: n as u64, nc5: seli_core::features::nc5(Mc.as_ref(), &ood) })
    }

    /// The per-class view (docs/theory.md, "Per-class view"), one row per class.
    ///
    /// # Errors
    /// A class without samples (named); decompositions failing.
    pub fn per_class(&self) -> Result<Vec<PerClassRow>> {
        let content = |cause| Error::Content { path: self.name.clone(), cause };
        let counts: Vec<u64> = self.counts().to_vec();
        let profile = Profile::from_counts(counts).map_err(content)?;
        let target = Geometry::new(&profile).map_err(content)?;
        let rows =
            self.geo.per_class(self.W.as_ref().map(|w| w.as_ref()), &target).map_err(content)?;
        Ok(rows.into_iter().map(PerClassRow).collect())
    }

    /// The class-level Grams of the measurement (`WᵀW` with a classifier, `MᵀM`, `M̃ᵀM̃`).
    ///
    /// # Errors
    /// A class without samples.
    pub fn grams(&self) -> Result<seli_core::features::Grams> {
        self.geo
            .grams(self.W.as_ref().map(|w| w.as_ref()))
            .map_err(|cause| Error::Content { path: self.name.clone(), cause })
    }

    /// The serialized accumulator (format `seli.accumulator.v1`, docs/formats.md).
    ///
    /// # Errors
    /// An encoding failure.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seli_io::accumulator::encode(
            &self.name,
            &AccumulatorRecord {
                state: self.geo.state(),
                classifier: self.W.clone(),
                bias: self.bias.clone(),
                logits: self.source.map_or("none", source_name).into(),
            },
        )
    }

    /// An accumulator from bytes of [`Accumulator::to_bytes`] (`name` names them in errors).
    ///
    /// # Errors
    /// Bytes that are not an accumulator, damaged, or inconsistent (named).
    pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Self> {
        let rec = seli_io::accumulator::decode(name, bytes)?;
        let (d, k) = (rec.state.means.nrows(), rec.state.means.ncols());
        let mut acc = Accumulator::named(name, k, d, rec.classifier, rec.bias)?;
        let had_samples = rec.state.counts.iter().any(|&c| c > 0);
        acc.source = match rec.logits.as_str() {
            "given" => Some(LogitSource::File),
            "classifier" => Some(LogitSource::Classifier),
            _ if had_samples => Some(LogitSource::None),
            _ => None,
        };
        acc.geo = FeatureGeometry::from_state(rec.state)
            .map_err(|cause| Error::Content { path: name.to_path_buf(), cause })?;
        Ok(acc)
    }
}

fn source_name(s: LogitSource) -> &'static str {
    match s {
        LogitSource::File => "given",
        LogitSource::Classifier => "classifier",
        LogitSource::None => "none",
    }
}

/// Schema tag of the `config.json` of a series of per-epoch exports ([`analyze_series`]).
pub const SERIES_CONFIG_SCHEMA: &str = "seli.analyze-series.v1";

/// One epoch of a series: its number and the export it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SeriesEpoch {
    /// The epoch (the last number in the export's name).
    pub epoch: u64,
    /// The export: a `.npz` file or a directory of `.npy` files, inside the series directory.
    pub entry: String,
}

/// `config.json` of a series directory written by `seli analyze --epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SeriesConfig {
    /// [`SERIES_CONFIG_SCHEMA`].
    pub schema: String,
    /// The directory of exports, as given.
    pub source: String,
    /// The epochs, in order.
    pub epochs: Vec<SeriesEpoch>,
    /// How the classifiers are stored.
    pub classifier_layout: Layout,
    /// `--classes`, when given.
    pub classes: Option<usize>,
    /// The class counts of the labels (every epoch's must be these).
    pub profile: ProfileRecord,
}

/// The columns of a series' `metrics.csv`: `epoch`, `n`, then [`GEOMETRY_COLUMNS`].
pub fn series_header() -> Vec<&'static str> {
    let mut h = vec!["epoch", "n"];
    h.extend(GEOMETRY_COLUMNS.iter().map(|(n, _)| *n));
    h
}

/// The files of one export: `(path, array name)` for each array.
#[derive(Debug, Clone)]
struct ExportFiles {
    features: (PathBuf, Option<String>),
    labels: (PathBuf, Option<String>),
    classifier: Option<(PathBuf, Option<String>)>,
    bias: Option<(PathBuf, Option<String>)>,
    logits: Option<(PathBuf, Option<String>)>,
}

/// The per-epoch exports in `dir`: `.npz` files and subdirectories, each numbered by the last
/// run of digits in its name, in epoch order.
///
/// # Errors
/// An unreadable directory; none found; an export without a number or two with the same one
/// (both named).
pub fn scan_exports(dir: &Path) -> Result<Vec<SeriesEpoch>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out: Vec<SeriesEpoch> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let is_npz = path.extension().is_some_and(|x| x == "npz");
        if name.starts_with('.') || !(path.is_dir() || is_npz) {
            continue;
        }
        let stem = if is_npz { name.trim_end_matches(".npz") } else { name.as_str() };
        let digits: String = stem
            .chars()
            .rev()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let epoch: u64 = digits.parse().map_err(|_| {
            Error::format(
                &path,
                "no epoch number in the name (e.g. epoch-012.npz or ep12/)".to_string(),
            )
        })?;
        if let Some(other) = out.iter().find(|s| s.epoch == epoch) {
            return Err(Error::format(
                &path,
                format!("epoch {epoch} again (also {}): one export per epoch", other.entry),
            ));
        }
        out.push(SeriesEpoch { epoch, entry: name });
    }
    if out.is_empty() {
        return Err(Error::format(
            dir,
            "no per-epoch exports (.npz files or subdirectories of .npy files) in it".to_string(),
        ));
    }
    out.sort_by_key(|s| s.epoch);
    Ok(out)
}

/// The arrays of the export at `entry`: an `.npz` with members `features` and `labels` (and
/// `classifier`, `bias`, `logits` when present), or a directory with `features.npy` and
/// `labels.npy` or `labels.txt` (and `classifier.npy`, `bias.npy`, `logits.npy`).
fn export_files(entry: &Path) -> Result<ExportFiles> {
    if entry.is_dir() {
        let need = |name: &str| -> Result<PathBuf> {
            let p = entry.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::format(entry, format!("no {name} in the export")))
            }
        };
        let maybe = |name: &str| Some(entry.join(name)).filter(|p| p.exists()).map(|p| (p, None));
        let labels = need("labels.npy").or_else(|_| need("labels.txt")).map_err(|_| {
            Error::format(entry, "no labels.npy or labels.txt in the export".to_string())
        })?;
        Ok(ExportFiles {
            features: (need("features.npy")?, None),
            labels: (labels, None),
            classifier: maybe("classifier.npy"),
            bias: maybe("bias.npy"),
            logits: maybe("logits.npy"),
        })
    } else {
        let members = Array::npz_members(entry)?;
        let has = |n: &str| members.iter().any(|m| m == n);
        let member = |n: &str| has(n).then(|| (entry.to_path_buf(), Some(n.to_string())));
        for n in ["features", "labels"] {
            if !has(n) {
                return Err(Error::format(
                    entry,
                    format!(
                        "no '{n}' array (it has {}); name them with np.savez(path, features=..., labels=..., classifier=...)",
                        members.join(", ")
                    ),
                ));
            }
        }
        Ok(ExportFiles {
            features: member("features").expect("checked"),
            labels: member("labels").expect("checked"),
            classifier: member("classifier"),
            bias: member("bias"),
            logits: member("logits"),
        })
    }
}

/// Epochs measured and epochs already in the directory by [`analyze_series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesOutcome {
    /// Epochs measured now.
    pub measured: usize,
    /// Epochs found already measured (a resumed series).
    pub kept: usize,
}

/// Measures every per-epoch export in `dir` ([`scan_exports`]) as [`analyze`] does and writes
/// `out/config.json` ([`SeriesConfig`]), `out/metrics.csv` (one row per epoch,
/// [`series_header`]) and `out/grams.json` (the Grams of the last epoch, in the format of a
/// training run's), so that `seli report out` draws the curves of a training run. A series
/// interrupted midway resumes: epochs whose rows are complete are kept. `progress` hears of
/// each epoch done: its number, the epochs done so far (kept ones included) and their total.
///
/// # Errors
/// Those of the exports (each named); labels whose class counts differ between epochs; an
/// `out` that holds another series.
pub fn analyze_series(
    dir: &Path,
    out: &Path,
    layout: Layout,
    classes: Option<usize>,
    chunk: usize,
    progress: &mut dyn FnMut(u64, usize, usize),
) -> Result<SeriesOutcome> {
    let epochs = scan_exports(dir)?;
    let first = export_files(&dir.join(&epochs[0].entry))?;
    let labels0 = read_label_array(&first.labels.0, first.labels.1.as_deref())?;
    let profile = Profile::from_labels(labels0, classes)
        .map_err(|cause| Error::Content { path: first.labels.0.clone(), cause })?;
    let config = SeriesConfig {
        schema: SERIES_CONFIG_SCHEMA.into(),
        source: dir.display().to_string(),
        epochs: epochs.clone(),
        classifier_layout: layout,
        classes,
        profile: ProfileRecord::new(&profile, None),
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.json");
    let header = series_header();
    let metrics = out.join("metrics.csv");
    let mut done: Vec<u64> = Vec::new();
    if cfg_path.exists() {
        // Compared as written (floats in the profile would not survive a parse exactly).
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let want = serde_json::to_string_pretty(&config)
            .map_err(|cause| Error::Serialize { what: "series config", cause })?;
        if text.trim_end() != want {
            return Err(Error::format(
                &cfg_path,
                "holds another series (other exports, classes or layout): choose another --out \
                 or remove it"
                    .to_string(),
            ));
        }
        if metrics.exists() {
            let (h, rows) = seli_io::csvlog::read_csv(&metrics)?;
            if h == header {
                done = rows.iter().filter_map(|r| r[0]).map(|e| e as u64).collect();
            }
        }
    } else {
        seli_io::write_json_atomic(&cfg_path, "series config", &config)?;
    }
    // Epochs are written in order: the rows kept are a prefix of them.
    let start = epochs.iter().take_while(|e| done.contains(&e.epoch)).count();
    let mut log = match epochs.get(start) {
        Some(next) if metrics.exists() && start > 0 => {
            seli_io::csvlog::CsvLog::resume(&metrics, &header, next.epoch as f64)?
        }
        Some(_) => seli_io::csvlog::CsvLog::create(&metrics, &header)?,
        None => return Ok(SeriesOutcome { measured: 0, kept: start }),
    };
    for (i, e) in epochs.iter().enumerate().skip(start) {
        let entry = dir.join(&e.entry);
        let files = export_files(&entry)?;
        let features = Array::open(&files.features.0, files.features.1.as_deref())?;
        let labels = read_label_array(&files.labels.0, files.labels.1.as_deref())?;
        let p = check_labels(&features, &labels, &files.labels.0, classes)?;
        if p.counts() != profile.counts() {
            return Err(Error::format(
                &files.labels.0,
                format!(
                    "class counts {:?}, but epoch {} had {:?}: every epoch exports the same \
                     training set",
                    p.counts(),
                    epochs[0].epoch,
                    profile.counts()
                ),
            ));
        }
        let d = features.shape()[1];
        let W = match &files.classifier {
            Some((path, key)) => {
                Some(classifier_matrix(&Array::open(path, key.as_deref())?, layout, d, p.k())?)
            }
            None => None,
        };
        let bias = match &files.bias {
            Some((path, key)) => {
                let b = Array::open(path, key.as_deref())?;
                if b.shape() != [p.k()] {
                    return Err(Error::format(
                        path,
                        format!("bias of shape {:?}, expected ({},)", b.shape(), p.k()),
                    ));
                }
                Some(b.rows(0, p.k())?)
            }
            None => None,
        };
        let logits = files
            .logits
            .as_ref()
            .map(|(path, key)| Array::open(path, key.as_deref()))
            .transpose()?;
        let acc = analyze(
            &features,
            &labels,
            &files.labels.0,
            classes,
            W.as_ref(),
            bias.as_deref(),
            logits.as_ref().map(|z| z as &dyn RowSource),
            chunk,
        )?;
        let a = acc.analysis()?;
        let mut row = vec![Some(e.epoch as f64), Some(a.n as f64)];
        row.extend(GEOMETRY_COLUMNS.iter().map(|(n, _)| a.get(n)));
        log.append(&row)?;
        let g = acc.grams()?;
        let rows = |m: &Mat<f64>| -> Vec<Vec<f64>> {
            (0..m.nrows()).map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect()).collect()
        };
        let grams = crate::train::TrainGrams {
            schema: crate::train::TRAIN_GRAMS_SCHEMA.into(),
            epoch: e.epoch as usize,
            gram_w: g.gram_w.as_ref().map(rows).unwrap_or_default(),
            gram_m: rows(&g.gram_m),
            gram_mc: Some(rows(&g.gram_mc)),
        };
        seli_io::write_json_atomic(&out.join("grams.json"), "grams", &grams)?;
        progress(e.epoch, i + 1, epochs.len());
    }
    Ok(SeriesOutcome { measured: epochs.len() - start, kept: start })
}
