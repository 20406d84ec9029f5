//! Feature-level statistics of a trained model, accumulated in one streaming pass.
//!
//! [`FeatureMoments`] takes the penultimate features batch by batch and keeps, per class, the
//! count and running mean, and the total within-class scatter `Σ_i (h_i − μ_{y_i})(h_i −
//! μ_{y_i})ᵀ` (d×d). Batches are merged with Chan, Golub and LeVeque's pairwise update, so the
//! scatter never suffers the cancellation of `Σ h hᵀ − n μ μᵀ` — important in the terminal
//! phase, where within-class variability is many orders below the means. Memory is
//! `O(d² + dk)` whatever the number of samples.
//!
//! From the moments: class means `M`, NC1 with either centering ([`Centering`]), and the
//! Papyan–Han–Donoho statistics ([`CollapseStats`], docs/theory.md) with the classifier.
//!
//! NC1 needs `Σ_W` only on the span of the centered class means (at most k−1 directions).
//! With [`WithinScatter::Projected`] the first pass keeps no d×d scatter (O(n·d) work); a
//! second pass over the same samples, once the class means are final, accumulates `Σ_W`
//! projected onto an orthonormal basis of the span of the class means (O(n·d·k) work instead
//! of O(n·d²)), exactly the quantities NC1 reads.
#![allow(non_snake_case)]

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

use crate::error::{Error, Result};
use crate::metrics::{
    Centering, between_class_directions, centering_projector, check_same_shape, cosines_from_gram,
    gram, group_means, normalized_distance, pair_means,
};
use crate::profile::Group;
use crate::sel::Geometry;

/// Where NC1's within-class covariance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WithinScatter {
    /// The d×d within-class scatter kept in the first pass: NC1 after one pass, O(n·d²) work
    /// and O(d²) memory.
    #[default]
    Full,
    /// No d×d scatter in the first pass: NC1 from the second pass, which projects each
    /// sample's deviation from its class mean onto an orthonormal basis of the span of the
    /// class means (O(n·d·min(k, d)) work, O(k²) memory for the scatter).
    Projected,
}

/// Arithmetic of the second pass's large products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f64 throughout.
    #[default]
    Double,
    /// Products of blocks of at most [`SINGLE_BLOCK`] samples in f32, summed in f64: for
    /// features that carry no more than f32 precision (float32, float16, bfloat16 exports).
    /// Deviations from the class means are formed in f64 before rounding, so the relative
    /// error is that of f32 on the within-class quantities themselves.
    Single,
}

/// Samples per f32 product block of [`Precision::Single`] (its sums go to f64).
pub const SINGLE_BLOCK: usize = 1024;

/// Streaming per-class moments of d-dimensional features with labels in `0..k`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMoments {
    counts: Vec<u64>,
    means: Mat<f64>,
    /// The d×d within-class scatter ([`WithinScatter::Full`]).
    scatter: Option<Mat<f64>>,
    /// Per class, `Σ_{i in c} ‖h_i − μ_c‖²` (the trace of that class's scatter).
    class_ss: Vec<f64>,
}

impl FeatureMoments {
    /// Empty moments for `d`-dimensional features of `k` classes, keeping the d×d scatter.
    pub fn new(d: usize, k: usize) -> Self {
        Self::with_scatter(d, k, WithinScatter::Full)
    }

    /// Empty moments; `scatter` says whether the d×d within-class scatter is kept.
    pub fn with_scatter(d: usize, k: usize, scatter: WithinScatter) -> Self {
        FeatureMoments {
            counts: vec![0; k],
            means: Mat::zeros(d, k),
            scatter: (scatter == WithinScatter::Full).then(|| Mat::zeros(d, d)),
            class_ss: vec![0.0; k],
        }
    }

    /// Whether these moments keep the d×d scatter.
    pub fn scatter_kind(&self) -> WithinScatter {
        if self.scatter.is_some() { WithinScatter::Full } else { WithinScatter::Projected }
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.means.nrows()
    }

    /// Number of classes k.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Samples per class so far.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Samples so far.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The moments of features `H` (d×n) held in memory, as one batch.
    ///
    /// # Errors
    /// As [`FeatureMoments::push`].
    pub fn of_matrix(H: MatRef<'_, f64>, labels: &[u32], k: usize) -> Result<Self> {
        let mut fm = FeatureMoments::new(H.nrows(), k);
        fm.push(H, labels)?;
        Ok(fm)
    }

    /// Adds a batch: `H` is d×B (one column per sample), `labels` its B labels.
    ///
    /// # Errors
    /// A label `>= k` (its position in the batch named); a non-finite feature; `H` whose row
    /// count is not d or whose column count is not the number of labels.
    pub fn push(&mut self, H: MatRef<'_, f64>, labels: &[u32]) -> Result<()> {
        let (d, k) = (self.dim(), self.classes());
        if H.nrows() != d || H.ncols() != labels.len() {
            return Err(Error::ShapeMismatch {
                left: "feature batch",
                lr: H.nrows(),
                lc: H.ncols(),
                right: "(feature dimension, batch labels)",
                rr: d,
                rc: labels.len(),
            });
        }
        let b = labels.len();
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, y)| **y as usize >= k) {
            return Err(Error::LabelOutOfRange { index: i, label: i64::from(y), k });
        }
        let mut store = None;
        let H = contiguous(H, &mut store);
        let col = |i: usize| column(H, i);
        let mut bcount = vec![0u64; k];
        let mut bmean = Mat::<f64>::zeros(d, k);
        for (i, &y) in labels.iter().enumerate() {
            let (h, c) = (col(i), y as usize);
            bcount[c] += 1;
            let m = bmean.col_mut(c).try_as_col_major_mut().expect("owned").as_slice_mut();
            let mut finite = true;
            for (m, &v) in m.iter_mut().zip(h) {
                finite &= v.is_finite();
                *m += v;
            }
            if !finite {
                let r = (0..d).find(|&r| !h[r].is_finite()).unwrap_or(0);
                return Err(Error::InvalidParameter {
                    name: "feature",
                    value: format!("{} (row {r} of sample {i} of the batch)", h[r]),
                    rule: "finite",
                });
            }
        }
        for c in 0..k {
            if bcount[c] > 0 {
                let inv = 1.0 / bcount[c] as f64;
                let mut m = bmean.col_mut(c);
                for r in 0..d {
                    m[r] *= inv;
                }
            }
        }
        // Per-class sums of squared deviations from the batch class means; with the full
        // scatter, the deviations' d×d product (lower half, then mirrored); then the batch
        // merges in as any other moments.
        let mut class_ss = vec![0.0; k];
        for (i, &y) in labels.iter().enumerate() {
            let c = y as usize;
            let m = column(bmean.as_ref(), c);
            class_ss[c] += col(i).iter().zip(m).map(|(h, m)| (h - m) * (h - m)).sum::<f64>();
        }
        let scatter = self.scatter.as_ref().map(|_| {
            let X = Mat::from_fn(d, b, |r, i| H[(r, i)] - bmean[(r, labels[i] as usize)]);
            let mut S = Mat::<f64>::zeros(d, d);
            lower_product(S.as_mut(), X.as_ref(), Accum::Replace);
            mirror_lower(&mut S);
            S
        });
        let batch = FeatureMoments { counts: bcount, means: bmean, scatter, class_ss };
        self.merge(&batch)?;
        Ok(())
    }

    /// Merges `other` (moments of other samples) into these: the result equals the moments
    /// of both sample sets pushed into one accumulator, up to rounding (Chan, Golub and
    /// LeVeque's pairwise update, the same as between batches).
    ///
    /// # Errors
    /// Moments of another dimension or class count (both named).
    pub fn merge(&mut self, other: &FeatureMoments) -> Result<()> {
        let (d, k) = (self.dim(), self.classes());
        if other.dim() != d || other.classes() != k {
            return Err(Error::ShapeMismatch {
                left: "accumulator (d, k)",
                lr: d,
                lc: k,
                right: "the one merged into it",
                rr: other.dim(),
                rc: other.classes(),
            });
        }
        if self.scatter.is_some() != other.scatter.is_some() {
            return Err(Error::InvalidParameter {
                name: "accumulators",
                value: "one keeps the d x d within-class scatter, the other projects it".into(),
                rule: "merged with the same within-class scatter (full or projected)",
            });
        }
        // Chan et al.'s correction Σ_c w_c δ_c δ_cᵀ as one product D Dᵀ, D = [√w_c δ_c] (with
        // the full scatter only).
        let full = self.scatter.is_some();
        let mut D = Mat::<f64>::zeros(if full { d } else { 0 }, if full { k } else { 0 });
        for c in 0..k {
            let (na, nb) = (self.counts[c] as f64, other.counts[c] as f64);
            if nb == 0.0 {
                continue;
            }
            let delta: Vec<f64> =
                (0..d).map(|r| other.means[(r, c)] - self.means[(r, c)]).collect();
            self.class_ss[c] += other.class_ss[c];
            if na > 0.0 {
                let w = na * nb / (na + nb);
                self.class_ss[c] += w * delta.iter().map(|x| x * x).sum::<f64>();
                if full {
                    let sw = w.sqrt();
                    for r in 0..d {
                        D[(r, c)] = sw * delta[r];
                    }
                }
            }
            for r in 0..d {
                self.means[(r, c)] += delta[r] * nb / (na + nb);
            }
            self.counts[c] += other.counts[c];
        }
        if let (Some(S), Some(So)) = (&mut self.scatter, &other.scatter) {
            *S += So;
            let mut C = Mat::<f64>::zeros(d, d);
            lower_product(C.as_mut(), D.as_ref(), Accum::Replace);
            mirror_lower(&mut C);
            *S += &C;
        }
        Ok(())
    }

    /// Per class, the within-class variance `σ²_c = (1/n_c) Σ_{i in c} ‖h_i − μ_c‖²` (0 for a
    /// class without samples).
    pub fn class_variances(&self) -> Vec<f64> {
        self.class_ss
            .iter()
            .zip(&self.counts)
            .map(|(&ss, &n)| if n > 0 { ss / n as f64 } else { 0.0 })
            .collect()
    }

    /// CDNV (Galanti, György and Hutter 2021): the mean over class pairs `c < c'` of
    /// `(σ²_c + σ²_c') / (2 ‖μ_c − μ_c'‖²)`; `None` when two class means coincide.
    ///
    /// # Errors
    /// An empty class.
    pub fn cdnv(&self) -> Result<Option<f64>> {
        let M = self.class_means()?;
        let var = self.class_variances();
        let (d, k) = (self.dim(), self.classes());
        let cols: Vec<Vec<f64>> = (0..k).map(|c| (0..d).map(|r| M[(r, c)]).collect()).collect();
        let mut total = 0.0;
        for a in 0..k {
            for b in a + 1..k {
                let dist: f64 = cols[a].iter().zip(&cols[b]).map(|(x, y)| (x - y) * (x - y)).sum();
                if dist <= 0.0 {
                    return Ok(None);
                }
                total += (var[a] + var[b]) / (2.0 * dist);
            }
        }
        Ok(Some(total / (k * (k - 1) / 2) as f64))
    }

    /// NC1 as the quotient of traces (Tirer, Huang and Niles-Weed 2023):
    /// `Tr(Σ_W) / Tr(Σ_B)`, `Σ_B` about the mean of class means; `None` when the means
    /// coincide.
    ///
    /// # Errors
    /// An empty class.
    pub fn nc1_quotient(&self) -> Result<Option<f64>> {
        let (Mc, _) = self.centered_means(Centering::ClassMeans)?;
        let tb = Mc.squared_norm_l2() / self.classes() as f64;
        let tw = self.class_ss.iter().sum::<f64>() / self.n().max(1) as f64;
        Ok((tb > 0.0).then(|| tw / tb))
    }

    /// The class means `M` (d×k).
    ///
    /// # Errors
    /// A class with no sample (its index named).
    pub fn class_means(&self) -> Result<Mat<f64>> {
        if let Some(c) = self.counts.iter().position(|&m| m == 0) {
            return Err(Error::EmptyClass { class: c, context: String::new() });
        }
        Ok(self.means.clone())
    }

    /// The center `μ_G` of between-class statistics under `centering`.
    ///
    /// # Errors
    /// An empty class.
    pub fn center(&self, centering: Centering) -> Result<Vec<f64>> {
        let M = self.class_means()?;
        let (d, k) = (self.dim(), self.classes());
        let n = self.n() as f64;
        Ok((0..d)
            .map(|r| match centering {
                Centering::ClassMeans => (0..k).map(|c| M[(r, c)]).sum::<f64>() / k as f64,
                Centering::Samples => {
                    (0..k).map(|c| M[(r, c)] * self.counts[c] as f64).sum::<f64>() / n
                }
            })
            .collect())
    }

    /// The class means centered by [`FeatureMoments::center`] (d×k), and that center.
    ///
    /// # Errors
    /// An empty class.
    pub fn centered_means(&self, centering: Centering) -> Result<(Mat<f64>, Vec<f64>)> {
        let M = self.class_means()?;
        let center = self.center(centering)?;
        let Mc = Mat::from_fn(self.dim(), self.classes(), |r, c| M[(r, c)] - center[r]);
        Ok((Mc, center))
    }

    /// The within-class covariance `Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ` (d×d),
    /// when these moments keep the d×d scatter ([`WithinScatter::Full`]).
    pub fn within_covariance(&self) -> Option<Mat<f64>> {
        let n = self.n().max(1) as f64;
        self.scatter.as_ref().map(|S| Mat::from_fn(self.dim(), self.dim(), |i, j| S[(i, j)] / n))
    }

    /// NC1 = `Tr(Σ_W Σ_B^†)/k`, with `Σ_B = (1/k) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ` about the
    /// center of `centering` and the pseudo-inverse on its top k−1 directions: with the thin
    /// SVD `M̃ = U S Vᵀ` of the centered means, `NC1 = Σ_j u_jᵀ Σ_W u_j / s_j²`. Directions
    /// whose singular value is negligible (below `ε·s_max·max(d, k)`) are dropped. `None` when
    /// the class means coincide.
    ///
    /// `None` also when these moments keep no d×d scatter ([`WithinScatter::Projected`]: NC1
    /// then comes from [`FeatureGeometry`]'s second pass).
    ///
    /// # Errors
    /// An empty class; the SVD failing.
    pub fn nc1(&self, centering: Centering) -> Result<Option<f64>> {
        let Some(sw) = self.within_covariance() else { return Ok(None) };
        self.nc1_by(centering, |U| {
            let SU = &sw * U;
            (0..U.ncols()).map(|j| (0..self.dim()).map(|r| U[(r, j)] * SU[(r, j)]).sum()).collect()
        })
    }

    /// NC1 with `quad(U)` giving `u_jᵀ Σ_W u_j` for each column of the orthonormal `U`.
    fn nc1_by(
        &self,
        centering: Centering,
        quad: impl FnOnce(MatRef<'_, f64>) -> Vec<f64>,
    ) -> Result<Option<f64>> {
        let M = self.class_means()?;
        let center = self.center(centering)?;
        let Some((U, s)) = between_class_directions(M.as_ref(), &center)? else {
            return Ok(None);
        };
        let q = quad(U.as_ref());
        Ok(Some(q.iter().zip(&s).map(|(q, s_j)| q / (s_j * s_j)).sum()))
    }
}

/// `H` itself when its columns are contiguous, else a contiguous copy held in `store`.
fn contiguous<'a>(H: MatRef<'a, f64>, store: &'a mut Option<Mat<f64>>) -> MatRef<'a, f64> {
    if H.row_stride() == 1 { H } else { store.insert(H.to_owned()).as_ref() }
}

/// Column `i` of `H` (contiguous columns, as [`contiguous`] gives and owned matrices have).
fn column<'a>(H: MatRef<'a, f64>, i: usize) -> &'a [f64] {
    H.col(i).try_as_col_major().expect("unit row stride").as_slice()
}

/// `dst (+)= X Xᵀ` on the lower triangle (the upper one is left as it was), on every core.
fn lower_product<T: faer::traits::ComplexField>(
    dst: faer::MatMut<'_, T>,
    X: MatRef<'_, T>,
    accum: Accum,
) {
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        accum,
        X,
        BlockStructure::Rectangular,
        X.transpose(),
        BlockStructure::Rectangular,
        T::one_impl(),
        Par::rayon(0),
    );
}

/// Copies the lower triangle of the square `S` onto its upper one.
fn mirror_lower(S: &mut Mat<f64>) {
    for j in 0..S.ncols() {
        for i in 0..j {
            S[(i, j)] = S[(j, i)];
        }
    }
}

/// The Papyan–Han–Donoho neural-collapse statistics (docs/theory.md) of class means `M`
/// (d×k) and classifiers `W` (d×k, column c is `w_c`) about a center `μ_G`. Standard
/// deviations are population ones (divide by the count). Under imbalance these do not go to 0
/// even at exact SELI.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseStats {
    /// `std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖`.
    pub equinorm_mu: f64,
    /// `std_c ‖w_c‖ / mean_c ‖w_c‖`.
    pub equinorm_w: f64,
    /// Std over pairs c ≠ c' of `cos(μ_c − μ_G, μ_c' − μ_G)`.
    pub equiangular_mu: f64,
    /// Std over pairs c ≠ c' of `cos(w_c, w_c')`.
    pub equiangular_w: f64,
    /// Mean over pairs c ≠ c' of `|cos(μ_c − μ_G, μ_c' − μ_G) + 1/(k−1)|`.
    pub max_angle_mu: f64,
    /// Mean over pairs c ≠ c' of `|cos(w_c, w_c') + 1/(k−1)|`.
    pub max_angle_w: f64,
    /// NC3: `‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²` with `M̃ = [μ_c − μ_G]`.
    pub self_duality: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Norm-ratio, pairwise-cosine statistics of the columns of `X` (d×k).
fn column_geometry(X: MatRef<'_, f64>, what: &'static str) -> Result<(f64, f64, f64)> {
    let k = X.ncols();
    let norms: Vec<f64> = (0..k).map(|c| X.col(c).norm_l2()).collect();
    if let Some(c) = norms.iter().position(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(Error::DegenerateNorm { what, norm: norms[c] });
    }
    let (mean, std) = mean_std(&norms);
    let G = X.transpose() * X;
    let mut cos = Vec::with_capacity(k * (k - 1));
    for i in 0..k {
        for j in 0..k {
            if i != j {
                cos.push(G[(i, j)] / (norms[i] * norms[j]));
            }
        }
    }
    let (_, cos_std) = mean_std(&cos);
    let max_angle =
        cos.iter().map(|c| (c + 1.0 / (k as f64 - 1.0)).abs()).sum::<f64>() / cos.len() as f64;
    Ok((std / mean, cos_std, max_angle))
}

/// The statistics of [`CollapseStats`].
///
/// # Errors
/// `M` and `W` of different shapes or `center` of the wrong length; fewer than two classes; a
/// zero classifier or a class mean at the center.
pub fn collapse_stats(
    M: MatRef<'_, f64>,
    W: MatRef<'_, f64>,
    center: &[f64],
) -> Result<CollapseStats> {
    check_same_shape(M, "class means M", W, "classifiers W")?;
    let (d, k) = (M.nrows(), M.ncols());
    if k < 2 {
        return Err(Error::TooFewClasses { k });
    }
    assert_eq!(center.len(), d, "center lives in the feature space");
    let Mc = Mat::from_fn(d, k, |r, c| M[(r, c)] - center[r]);
    let (equinorm_mu, equiangular_mu, max_angle_mu) =
        column_geometry(Mc.as_ref(), "a centered class mean mu_c - mu_G")?;
    let (equinorm_w, equiangular_w, max_angle_w) = column_geometry(W, "a classifier w_c")?;
    let (wn, mn) = (W.norm_l2(), Mc.norm_l2());
    let self_duality =
        Mat::from_fn(d, k, |r, c| W[(r, c)] / wn - Mc[(r, c)] / mn).squared_norm_l2();
    Ok(CollapseStats {
        equinorm_mu,
        equinorm_w,
        equiangular_mu,
        equiangular_w,
        max_angle_mu,
        max_angle_w,
        self_duality,
    })
}

/// The nearest class mean to `h` (Euclidean), the NCC classifier of NC4; ties go to the lower
/// class index.
pub fn nearest_class_mean(M: MatRef<'_, f64>, h: &[f64]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for c in 0..M.ncols() {
        let d2: f64 = h.iter().enumerate().map(|(r, x)| (x - M[(r, c)]).powi(2)).sum();
        if d2 < best.0 {
            best = (d2, c);
        }
    }
    best.1
}

/// The geometry columns of every feature-level measurement (`seli ufm`'s and `seli train`'s
/// metrics rows, `seli analyze`, `seli.metrics`), in [`FeatureGeometry::values`] order, with
/// their meanings. One name, one quantity: `mu`/`gm`/`wtm` use the raw class means `μ_c`;
/// `muc`/`gmc`/`wtmc` the means centered by their unweighted mean `μ_G = (1/k) Σ_c μ_c`
/// (docs/theory.md, "Centerings"). At SELI both coincide (`Σ_c μ_c = 0`).
pub const GEOMETRY_COLUMNS: &[(&str, &str)] = &[
    ("accuracy", "fraction of samples whose true logit is strictly the largest (needs logits)"),
    ("accuracy_maj", "accuracy over samples of majority classes"),
    ("accuracy_min", "accuracy over samples of minority classes"),
    ("w_norm_sq", "||W||_F^2 of the classifier"),
    ("dist_gw_seli", "dist(W^T W, SELI G_W)"),
    ("dist_gw_etf", "dist(W^T W, ETF P)"),
    ("dist_gm_seli", "dist(M^T M, SELI G_M), M = raw class means"),
    ("dist_gm_etf", "dist(M^T M, ETF P), raw M"),
    ("dist_wtm", "dist(W^T M, P), raw M: SELI and ETF share this target"),
    ("dist_gmc_seli", "dist(Mc^T Mc, SELI G_M), Mc = class means minus mu_G"),
    ("dist_gmc_etf", "dist(Mc^T Mc, ETF P), centered Mc"),
    ("dist_wtmc", "dist(W^T Mc, P), centered Mc"),
    ("dist_z", "dist(logits Z, SEL matrix Z_hat) over the samples (bias included)"),
    ("nc1", "Tr(Sigma_W Sigma_B^+)/k, Sigma_B about mu_G (mean of class means)"),
    ("nc1_global", "Tr(Sigma_W Sigma_B^+)/k, Sigma_B about the sample mean"),
    ("nc1_quotient", "Tr(Sigma_W)/Tr(Sigma_B), Sigma_B about mu_G (Tirer et al. 2023)"),
    ("cdnv", "mean over c < c' of (var_c + var_c')/(2 ||mu_c - mu_c'||^2) (Galanti et al. 2021)"),
    ("equinorm_muc", "std/mean of ||mu_c - mu_G||"),
    ("equinorm_w", "std/mean of ||w_c||"),
    ("equiangular_muc", "std over c != c' of cos(mu_c - mu_G, mu_c' - mu_G)"),
    ("equiangular_w", "std over c != c' of cos(w_c, w_c')"),
    ("max_angle_muc", "mean over c != c' of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(k-1)|"),
    ("max_angle_w", "mean over c != c' of |cos(w_c, w_c') + 1/(k-1)|"),
    ("self_duality", "NC3: ||W/||W||_F - Mc/||Mc||_F||_F^2, centered Mc"),
    ("gnc2_log", "GNC2: variance over c < c' of log(1/||m_c - m_c'||), m_c = (mu_c - mu_G)/||.||"),
    ("gnc2_riesz", "GNC2: variance over c < c' of ||m_c - m_c'||^-(d-2) (Riesz kernel)"),
    ("unc3", "UNC3: variance over c of cos(w_c, mu_c - mu_G)"),
    ("ncc_mismatch", "NC4: fraction of samples where argmax logits != nearest class mean"),
    ("w_norm_sq_maj", "mean ||w_c||^2 over majority classes"),
    ("w_norm_sq_min", "mean ||w_c||^2 over minority classes"),
    ("norm_ratio_w", "||w_maj||^2 / ||w_min||^2 (group means)"),
    ("cos_w_maj_maj", "mean cos(w_c, w_c') over majority pairs"),
    ("cos_w_min_min", "mean cos(w_c, w_c') over minority pairs"),
    ("cos_w_maj_min", "mean cos(w_c, w_c') over majority-minority pairs"),
    ("mu_norm_sq_maj", "mean ||mu_c||^2 over majority classes, raw means"),
    ("mu_norm_sq_min", "mean ||mu_c||^2 over minority classes, raw means"),
    ("norm_ratio_mu", "||mu_maj||^2 / ||mu_min||^2, raw means"),
    ("cos_mu_maj_maj", "mean cos(mu_c, mu_c') over majority pairs, raw means"),
    ("cos_mu_min_min", "mean cos(mu_c, mu_c') over minority pairs, raw means"),
    ("cos_mu_maj_min", "mean cos(mu_c, mu_c') over majority-minority pairs, raw means"),
    ("muc_norm_sq_maj", "mean ||mu_c - mu_G||^2 over majority classes"),
    ("muc_norm_sq_min", "mean ||mu_c - mu_G||^2 over minority classes"),
    ("norm_ratio_muc", "||mu_maj - mu_G||^2 / ||mu_min - mu_G||^2"),
    ("cos_muc_maj_maj", "mean cos(mu_c - mu_G, mu_c' - mu_G) over majority pairs"),
    ("cos_muc_min_min", "mean cos(mu_c - mu_G, mu_c' - mu_G) over minority pairs"),
    ("cos_muc_maj_min", "mean cos(mu_c - mu_G, mu_c' - mu_G) over majority-minority pairs"),
    (
        "dist_gw_target",
        "dist(W^T W, the loss target's G_W): the run's own loss (docs/theory.md §10); SELI for ce",
    ),
    ("dist_gm_target", "dist(M^T M, the loss target's G_M), raw M"),
    ("dist_gmc_target", "dist(Mc^T Mc, the loss target's G_M), centered Mc"),
];

/// The position of column `name` in [`GEOMETRY_COLUMNS`].
///
/// # Panics
/// If `name` is not a column.
pub fn geometry_column(name: &str) -> usize {
    GEOMETRY_COLUMNS
        .iter()
        .position(|(c, _)| *c == name)
        .unwrap_or_else(|| panic!("no geometry column {name}"))
}

/// Whether logits `z` classify label `y` right: the true logit strictly the largest (a tie is
/// an error). The one accuracy rule of every column.
pub fn predicts(z: impl Iterator<Item = f64>, y: usize) -> bool {
    let (mut zy, mut other) = (f64::NAN, f64::NEG_INFINITY);
    for (c, v) in z.enumerate() {
        if c == y {
            zy = v;
        } else {
            other = other.max(v);
        }
    }
    zy > other
}

/// Norms and pair cosines of the columns behind a Gram matrix, by group:
/// `[norm_sq_maj, norm_sq_min, norm_ratio, cos_maj_maj, cos_min_min, cos_maj_min]`.
fn group_columns(g: MatRef<'_, f64>, groups: Option<&[Group]>) -> [Option<f64>; 6] {
    let Some(groups) = groups else { return [None; 6] };
    let sq: Vec<f64> = (0..g.nrows()).map(|c| g[(c, c)]).collect();
    let norms = group_means(&sq, groups);
    let ratio = norms.majority.zip(norms.minority).map(|(a, b)| a / b);
    let cos = cosines_from_gram(g, "a column").ok().map(|c| pair_means(c.as_ref(), groups));
    [
        norms.majority,
        norms.minority,
        ratio,
        cos.and_then(|c| c.maj_maj),
        cos.and_then(|c| c.min_min),
        cos.and_then(|c| c.maj_min),
    ]
}

/// `[dist_gm_seli, dist_gm_etf, dist_wtm]` of class means `M` (raw or centered) and their Gram
/// `gm`, with the classifier `W` when there is one, against the SELI `G_M` and the ETF `P`.
fn mean_distances(
    (M, gm): (MatRef<'_, f64>, MatRef<'_, f64>),
    W: Option<MatRef<'_, f64>>,
    seli_gm: MatRef<'_, f64>,
    P: MatRef<'_, f64>,
) -> [Option<f64>; 3] {
    [
        normalized_distance(gm, seli_gm).ok(),
        normalized_distance(gm, P).ok(),
        W.and_then(|W| normalized_distance((W.transpose() * M).as_ref(), P).ok()),
    ]
}

/// Accuracy overall, over majority and over minority classes, from per-class counts of
/// correct predictions and of samples (`None` where a group has no sample).
pub fn accuracies(correct: &[u64], total: &[u64], groups: Option<&[Group]>) -> [Option<f64>; 3] {
    let frac = |pick: &dyn Fn(usize) -> bool| {
        let (c, t) = (0..correct.len())
            .filter(|&i| pick(i))
            .fold((0u64, 0u64), |(c, t), i| (c + correct[i], t + total[i]));
        (t > 0).then(|| c as f64 / t as f64)
    };
    let group = |g: Group| groups.and_then(|gs| frac(&|i| gs[i] == g));
    [frac(&|_| true), group(Group::Majority), group(Group::Minority)]
}

fn argmax(z: impl Iterator<Item = f64>) -> usize {
    let mut best = (f64::NEG_INFINITY, 0);
    for (c, v) in z.enumerate() {
        if v > best.0 {
            best = (v, c);
        }
    }
    best.1
}

/// The first index of the smallest value.
fn argmin(z: impl Iterator<Item = f64>) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (c, v) in z.enumerate() {
        if v < best.0 {
            best = (v, c);
        }
    }
    best.1
}

/// GNC2, hyperspherical uniformity (Liu et al. 2023): the population variance over class pairs
/// `c < c'` of `kernel(‖m̂_c − m̂_c'‖)`, `m̂_c` the centered class means `Mc` (d×k) normalized
/// to unit length. 0 when every pair is equally far apart (a simplex ETF); `None` when a
/// centered mean is zero or a kernel value is not finite.
pub fn gnc2(Mc: MatRef<'_, f64>, kernel: impl Fn(f64) -> f64) -> Option<f64> {
    let (d, k) = (Mc.nrows(), Mc.ncols());
    let cols: Vec<Vec<f64>> = (0..k).map(|c| (0..d).map(|r| Mc[(r, c)]).collect()).collect();
    let mut unit = Vec::with_capacity(k);
    for v in &cols {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return None;
        }
        unit.push(v.iter().map(|x| x / norm).collect::<Vec<f64>>());
    }
    let mut vals = Vec::with_capacity(k * (k - 1) / 2);
    for a in 0..k {
        for b in a + 1..k {
            let dist =
                unit[a].iter().zip(&unit[b]).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
            vals.push(kernel(dist));
        }
    }
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    var.is_finite().then_some(var)
}

/// UNC3, uniform duality (Wu and Papyan 2024): the population variance over classes of
/// `cos(w_c, μ_c − μ_G)`. 0 when every classifier makes the same angle with its centered
/// mean; `None` when a vector is zero.
pub fn uniform_duality(W: MatRef<'_, f64>, Mc: MatRef<'_, f64>) -> Option<f64> {
    let (d, k) = (Mc.nrows(), Mc.ncols());
    let mut cos = Vec::with_capacity(k);
    for c in 0..k {
        let (mut dot, mut ww, mut mm) = (0.0, 0.0, 0.0);
        for r in 0..d {
            dot += W[(r, c)] * Mc[(r, c)];
            ww += W[(r, c)] * W[(r, c)];
            mm += Mc[(r, c)] * Mc[(r, c)];
        }
        if ww == 0.0 || mm == 0.0 {
            return None;
        }
        cos.push(dot / (ww.sqrt() * mm.sqrt()));
    }
    let mean = cos.iter().sum::<f64>() / k as f64;
    Some(cos.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k as f64)
}

/// One class's row of the per-class view ([`FeatureGeometry::per_class`]; docs/theory.md,
/// "Per-class view").
#[derive(Debug, Clone, PartialEq)]
pub struct PerClass {
    /// Class index.
    pub class: usize,
    /// Samples of the class.
    pub count: u64,
    /// `maj` or `min` when the counts form two groups, else `None`.
    pub group: Option<&'static str>,
    /// `‖w_c‖` (with a classifier).
    pub w_norm: Option<f64>,
    /// `‖μ_c − μ_G‖`.
    pub muc_norm: f64,
    /// `cos(w_c, R w*_c)`: `w*` the SELI classifier Gram's factor, `R` the rotation that aligns
    /// it best with W (orthogonal Procrustes).
    pub cos_w_seli: Option<f64>,
    /// The same against the simplex ETF.
    pub cos_w_etf: Option<f64>,
    /// `cos(μ_c − μ_G, R m*_c)` against the SELI class-mean Gram, aligned the same way.
    pub cos_muc_seli: Option<f64>,
    /// The same against the simplex ETF.
    pub cos_muc_etf: Option<f64>,
    /// `σ²_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²`.
    pub within_var: f64,
    /// The class's share of `Tr(Σ_W)`: `Σ_{i∈c} ‖h_i − μ_c‖² / Σ_i ‖h_i − μ_{y_i}‖²`.
    pub within_share: Option<f64>,
    /// NCC agreement: the fraction of the class's samples whose argmax logit is their nearest
    /// class mean (with logits and a complete second pass).
    pub ncc_agreement: Option<f64>,
}

/// Per column c of `X` (d×k), the cosine between `x_c` and column c of the factor of the Gram
/// `G` (k×k, positive semidefinite) rotated to fit `X` best: with `T = G^{1/2}` and the thin
/// SVD `X T = U S Vᵀ`, `R = U Vᵀ` maximizes `Σ_c ⟨x_c, R t_c⟩` over maps with orthonormal
/// columns (or rows, when d < k), so the cosines measure what no rotation explains. `None` for a
/// zero column, or when a decomposition fails.
pub fn aligned_cosines(X: MatRef<'_, f64>, G: MatRef<'_, f64>) -> Option<Vec<Option<f64>>> {
    let evd = G.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let (vals, vecs) = (evd.S().column_vector(), evd.U());
    let k = G.nrows();
    let root = Mat::from_fn(k, k, |i, j| {
        (0..k).map(|m| vecs[(i, m)] * vals[m].max(0.0).sqrt() * vecs[(j, m)]).sum::<f64>()
    });
    let C = X * &root;
    let svd = C.thin_svd().ok()?;
    let R = svd.U() * svd.V().transpose();
    let A = &R * &root;
    Some(
        (0..X.ncols())
            .map(|c| {
                let (x, a) = (X.col(c), A.col(c));
                let (nx, na) = (x.norm_l2(), a.norm_l2());
                (nx > 0.0 && na > 0.0).then(|| (x.transpose() * a) / (nx * na))
            })
            .collect(),
    )
}

/// The class-level Grams of a measurement: `G_W = WᵀW` (with a classifier), `G_M = MᵀM` of
/// the raw class means and `G_Mc = M̃ᵀM̃` of the means centered by their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Grams {
    /// `WᵀW`, when a classifier was given.
    pub gram_w: Option<Mat<f64>>,
    /// `MᵀM`, raw class means.
    pub gram_m: Mat<f64>,
    /// `M̃ᵀM̃`, class means minus their unweighted mean.
    pub gram_mc: Mat<f64>,
}

/// The feature-level measurement of docs/theory.md ("Measuring a model") in two streaming
/// passes over the samples.
///
/// Pass 1 ([`FeatureGeometry::push`]): features `H` (d×b) with, when available, logits `Z`
/// (k×b) and labels, into [`FeatureMoments`], accuracy counts and the logit/SEL inner
/// products. Pass 2 ([`FeatureGeometry::push_second`], optional): the same samples again, to
/// count NC4 disagreements against the final class means and to take `dist_z` in its exact
/// form (pass 1 alone gives the streaming form `sqrt(2 − 2 cos)`, whose floor near an exact
/// match is about 1e-8). Then [`FeatureGeometry::values`] gives [`GEOMETRY_COLUMNS`] with the
/// classifier `W` (d×k) when there is one. Memory is `O(d² + dk)` whatever n; a matrix held
/// in memory is measured as one batch.
#[derive(Debug, Clone)]
pub struct FeatureGeometry {
    moments: FeatureMoments,
    correct: Vec<u64>,
    total: Vec<u64>,
    zz: f64,
    zs: f64,
    logit_samples: u64,
    /// Pass 2 so far.
    second: Option<SecondPass>,
    /// The basis pass 2 projects onto, from the final class means (built when pass 2 starts).
    basis: Option<Basis>,
}

/// What the second pass accumulates.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondPass {
    /// Samples whose argmax logit differs from their nearest class mean (NC4).
    pub mismatch: u64,
    /// The same, per class (k counts adding to `mismatch`).
    pub class_mismatch: Vec<u64>,
    /// Samples seen.
    pub seen: u64,
    /// `Σ (z/‖Z‖ − ẑ/‖Ẑ‖)²` over the logits (the exact `dist_z`).
    pub sq: f64,
    /// With [`WithinScatter::Projected`]: `Σ_i Qᵀ(h_i − μ_{y_i})(h_i − μ_{y_i})ᵀQ` (r×r), `Q`
    /// the basis of [`projection_rank`] columns that [`FeatureGeometry`] builds from the class
    /// means.
    pub scatter: Option<Mat<f64>>,
}

impl SecondPass {
    /// Nothing seen yet, for k classes, with an r×r projected scatter when `side` is `Some(r)`.
    fn empty(k: usize, side: Option<usize>) -> Self {
        SecondPass {
            mismatch: 0,
            class_mismatch: vec![0; k],
            seen: 0,
            sq: 0.0,
            scatter: side.map(|r| Mat::zeros(r, r)),
        }
    }

    /// Adds the counts and sums of `other` (another part of the same second pass).
    fn add(&mut self, other: &SecondPass) -> Result<()> {
        let same_scatter = match (&self.scatter, &other.scatter) {
            (Some(S), Some(P)) => (S.nrows(), S.ncols()) == (P.nrows(), P.ncols()),
            (None, None) => true,
            _ => false,
        };
        if !same_scatter || self.class_mismatch.len() != other.class_mismatch.len() {
            return Err(Error::InvalidParameter {
                name: "second-pass part",
                value: "a projected scatter or class count of another shape".into(),
                rule: "parts of this measurement's second pass",
            });
        }
        if let (Some(S), Some(P)) = (&mut self.scatter, &other.scatter) {
            *S += P;
        }
        for (a, b) in self.class_mismatch.iter_mut().zip(&other.class_mismatch) {
            *a += b;
        }
        self.mismatch += other.mismatch;
        self.seen += other.seen;
        self.sq += other.sq;
        Ok(())
    }
}

/// Held-out samples measured against the class means of a measurement
/// ([`FeatureGeometry::held_out`]); parts add with [`HeldOut::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldOut {
    /// Samples.
    pub n: u64,
    /// Samples whose nearest class mean is their class.
    pub ncc_correct: u64,
    /// Samples whose true logit is strictly the largest (with logits).
    pub logit_correct: Option<u64>,
    /// Samples whose argmax logit differs from their nearest class mean (with logits).
    pub mismatch: Option<u64>,
}

impl HeldOut {
    /// The counts of both parts.
    pub fn add(&mut self, other: &HeldOut) {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, None) if other.n == 0 => a,
            (None, b) if self.n == 0 => b,
            _ => None,
        };
        self.logit_correct = sum(self.logit_correct, other.logit_correct);
        self.mismatch = sum(self.mismatch, other.mismatch);
        self.n += other.n;
        self.ncc_correct += other.ncc_correct;
    }
}

/// NC5, out-of-distribution orthogonality (Ammar et al., ICLR 2024): the mean over classes of
/// `|cos(μ_c − μ_G, μ_OOD − μ_G)|`, `Mc` the class means centered by `μ_G` (d×k) and `ood`
/// the mean of the out-of-distribution features minus `μ_G`. `None` when a vector is zero.
pub fn nc5(Mc: MatRef<'_, f64>, ood: &[f64]) -> Option<f64> {
    let no = ood.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut total = 0.0;
    for c in 0..Mc.ncols() {
        let m = Mc.col(c);
        let nm = m.norm_l2();
        if nm == 0.0 || no == 0.0 {
            return None;
        }
        total += ((0..ood.len()).map(|r| m[r] * ood[r]).sum::<f64>() / (nm * no)).abs();
    }
    Some(total / Mc.ncols() as f64)
}

/// Per sample (column of `MX = MᵀX`, deviations `x = h − μ_y` from the labelled class), the
/// nearest class mean: `‖h − μ_c‖² − ‖h − μ_y‖² = ‖μ_c − μ_y‖² − 2 (μ_c − μ_y)ᵀx`, the first
/// class on ties.
fn nearest_means(basis: &Basis, MX: &Mat<f64>, labels: &[u32]) -> Vec<usize> {
    let k = MX.nrows();
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let y = y as usize;
            let mx = MX.col(i);
            argmin(
                (0..k)
                    .map(|c| if c == y { 0.0 } else { basis.gaps[(c, y)] - 2.0 * (mx[c] - mx[y]) }),
            )
        })
        .collect()
}

/// Columns of the basis the second pass projects deviations onto: k (an orthonormal basis
/// of the span of the class means, from their QR factorization) when `k < 0.4·d`, else d
/// (the identity: the full scatter costs less than the projection then).
pub fn projection_rank(d: usize, k: usize) -> usize {
    if 5 * k < 2 * d { k } else { d }
}

/// The second pass's fixed matrices, from the class means `M` (d×k).
#[derive(Debug, Clone)]
struct Basis {
    /// `Q` (d×r), orthonormal, spanning the class means; `None` is the identity.
    q: Option<Mat<f64>>,
    /// `QᵀM` (r×k): the means in the basis, so that `Mᵀx = (QᵀM)ᵀ(Qᵀx)` for x in its span.
    coords: Mat<f64>,
    /// `‖μ_c − μ_y‖²` (k×k).
    gaps: Mat<f64>,
    /// f32 copies of `q` and `coords` for [`Precision::Single`].
    q32: Option<Mat<f32>>,
    coords32: Mat<f32>,
}

impl Basis {
    fn of_means(M: MatRef<'_, f64>) -> Result<Self> {
        let (d, k) = (M.nrows(), M.ncols());
        let q = (projection_rank(d, k) < d).then(|| M.qr().compute_thin_Q());
        let coords = match &q {
            Some(q) => q.transpose() * M,
            None => M.to_owned(),
        };
        let G = gram(M);
        let gaps = Mat::from_fn(k, k, |c, y| (G[(c, c)] + G[(y, y)] - 2.0 * G[(c, y)]).max(0.0));
        let to32 = |m: &Mat<f64>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32);
        Ok(Basis { q32: q.as_ref().map(to32), coords32: to32(&coords), q, coords, gaps })
    }

    fn rank(&self, d: usize) -> usize {
        self.q.as_ref().map_or(d, Mat::ncols)
    }
}

/// The products of the second pass over deviations `X` (d×b, precision `T`): the projection
/// `P = QᵀX` (X itself for the identity basis), `scatter += P Pᵀ` (lower triangle, in f64,
/// from products of `block` samples at a time), and, when `with_means`, `MᵀX` (k×b).
fn second_products<T>(
    q: Option<&Mat<T>>,
    coords: &Mat<T>,
    X: MatRef<'_, T>,
    scatter: Option<&mut Mat<f64>>,
    with_means: bool,
    block: usize,
) -> Option<Mat<T>>
where
    T: faer::traits::RealField + Copy + Into<f64>,
{
    let par = Par::rayon(0);
    let owned;
    let P = match q {
        Some(q) => {
            let mut P = Mat::<T>::zeros(q.ncols(), X.ncols());
            matmul(P.as_mut(), Accum::Replace, q.transpose(), X, T::one_impl(), par);
            owned = P;
            owned.as_ref()
        }
        None => X,
    };
    if let Some(S) = scatter {
        let r = P.nrows();
        let mut B = Mat::<T>::zeros(r, r);
        for start in (0..P.ncols()).step_by(block.max(1)) {
            let w = block.min(P.ncols() - start);
            lower_product(B.as_mut(), P.subcols(start, w), Accum::Replace);
            for j in 0..r {
                let (src, mut dst) = (B.col(j), S.col_mut(j));
                for i in j..r {
                    dst[i] += src[i].into();
                }
            }
        }
    }
    with_means.then(|| {
        let mut MX = Mat::<T>::zeros(coords.ncols(), X.ncols());
        matmul(MX.as_mut(), Accum::Replace, coords.transpose(), P, T::one_impl(), par);
        MX
    })
}

/// The deviations `h_i − μ_{y_i}` of the columns of `H` (d×b) as a column-major d×b buffer
/// of `T`, formed in f64 and then rounded; or the first non-finite feature as an error.
fn deviations<T: Copy + Send + Sync + Default>(
    H: MatRef<'_, f64>,
    M: &Mat<f64>,
    labels: &[u32],
    cast: fn(f64) -> T,
) -> Result<Vec<T>> {
    let mut store = None;
    let H = contiguous(H, &mut store);
    let d = H.nrows();
    let mut X = vec![T::default(); d * labels.len()];
    let bad = X
        .chunks_mut(d.max(1))
        .enumerate()
        .map(|(i, x)| {
            let (h, m) = (column(H, i), column(M.as_ref(), labels[i] as usize));
            let mut finite = true;
            for ((x, &v), &m) in x.iter_mut().zip(h).zip(m) {
                finite &= v.is_finite();
                *x = cast(v - m);
            }
            if finite { None } else { (0..d).find(|&r| !h[r].is_finite()).map(|r| (r, i, h[r])) }
        })
        .find(Option::is_some)
        .flatten();
    match bad {
        Some((r, i, v)) => Err(Error::InvalidParameter {
            name: "feature",
            value: format!("{v} (row {r} of sample {i} of the batch)"),
            rule: "finite",
        }),
        None => Ok(X),
    }
}

/// Everything a [`FeatureGeometry`] holds, to serialize it (workers and ranks send their
/// accumulators to one another) and rebuild it with [`FeatureGeometry::from_state`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeometryState {
    /// Samples per class.
    pub counts: Vec<u64>,
    /// Running class means (d×k; a class without samples has a zero column).
    pub means: Mat<f64>,
    /// Total within-class scatter about the running means (d×d), with [`WithinScatter::Full`].
    pub scatter: Option<Mat<f64>>,
    /// Per class, the sum of squared distances to the running class mean.
    pub class_ss: Vec<f64>,
    /// Samples with logits predicted correctly, per class.
    pub correct: Vec<u64>,
    /// Samples with logits, per class.
    pub total: Vec<u64>,
    /// `Σ z²` over every logit.
    pub zz: f64,
    /// `Σ z ẑ` (logits against the SEL matrix).
    pub zs: f64,
    /// Samples that came with logits.
    pub logit_samples: u64,
    /// Pass 2 so far.
    pub second: Option<SecondPass>,
}

impl FeatureGeometry {
    /// Everything this measurement holds.
    pub fn state(&self) -> GeometryState {
        GeometryState {
            counts: self.moments.counts.clone(),
            means: self.moments.means.clone(),
            scatter: self.moments.scatter.clone(),
            class_ss: self.moments.class_ss.clone(),
            correct: self.correct.clone(),
            total: self.total.clone(),
            zz: self.zz,
            zs: self.zs,
            logit_samples: self.logit_samples,
            second: self.second.clone(),
        }
    }

    /// A measurement from its state, checked: shapes that agree (d×k means, d×d scatter, k
    /// counts), finite sums, `correct <= total <= counts` per class and `Σ total` equal to the
    /// logit samples, a second pass over no more samples than the first.
    ///
    /// # Errors
    /// The first inconsistency, named.
    pub fn from_state(s: GeometryState) -> Result<Self> {
        let (d, k) = (s.means.nrows(), s.means.ncols());
        let bad = |what: &str| Error::InvalidParameter {
            name: "accumulator state",
            value: what.to_string(),
            rule: "consistent (as written by FeatureGeometry::state)",
        };
        if s.class_ss.len() != k || s.class_ss.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(bad(&format!(
                "{} per-class sums of squares for k = {k} classes, each finite and >= 0",
                s.class_ss.len()
            )));
        }
        if s.counts.len() != k || s.correct.len() != k || s.total.len() != k {
            return Err(bad(&format!(
                "{} counts, {} correct, {} totals for k = {k} classes",
                s.counts.len(),
                s.correct.len(),
                s.total.len()
            )));
        }
        if let Some(S) = &s.scatter
            && (S.nrows() != d || S.ncols() != d)
        {
            return Err(bad(&format!("scatter {}x{} for d = {d}", S.nrows(), S.ncols())));
        }
        let finite =
            |m: &Mat<f64>| (0..m.nrows()).all(|i| (0..m.ncols()).all(|j| m[(i, j)].is_finite()));
        if !finite(&s.means)
            || !s.scatter.as_ref().is_none_or(finite)
            || !s.zz.is_finite()
            || !s.zs.is_finite()
        {
            return Err(bad("a non-finite sum"));
        }
        for c in 0..k {
            if s.correct[c] > s.total[c] || s.total[c] > s.counts[c] {
                return Err(bad(&format!(
                    "class {c}: {} correct of {} with logits of {} samples",
                    s.correct[c], s.total[c], s.counts[c]
                )));
            }
        }
        if s.total.iter().sum::<u64>() != s.logit_samples {
            return Err(bad(&format!(
                "{} samples with logits, per-class totals add to {}",
                s.logit_samples,
                s.total.iter().sum::<u64>()
            )));
        }
        let n: u64 = s.counts.iter().sum();
        if let Some(p) = &s.second {
            if p.mismatch > p.seen
                || p.seen > n
                || !p.sq.is_finite()
                || p.class_mismatch.len() != k
                || p.class_mismatch.iter().sum::<u64>() != p.mismatch
            {
                return Err(bad(&format!(
                    "second pass: {} disagreements in {} samples of {n}, sum {}",
                    p.mismatch, p.seen, p.sq
                )));
            }
            let r = projection_rank(d, k);
            match (&s.scatter, &p.scatter) {
                (None, Some(S)) if S.nrows() == r && S.ncols() == r && finite(S) => {}
                (Some(_), None) => {}
                (_, S) => {
                    return Err(bad(&format!(
                        "second-pass scatter {} with {} first-pass scatter (expected {r}x{r}, \
                         finite, exactly when the first pass keeps none)",
                        S.as_ref().map_or("absent".into(), |S| format!(
                            "{}x{}",
                            S.nrows(),
                            S.ncols()
                        )),
                        if s.scatter.is_some() { "a" } else { "no" }
                    )));
                }
            }
        }
        Ok(FeatureGeometry {
            moments: FeatureMoments {
                counts: s.counts,
                means: s.means,
                scatter: s.scatter,
                class_ss: s.class_ss,
            },
            correct: s.correct,
            total: s.total,
            zz: s.zz,
            zs: s.zs,
            logit_samples: s.logit_samples,
            second: s.second,
            basis: None,
        })
    }

    /// Merges `other`, a measurement of other samples, into this one.
    ///
    /// First passes merge as moments do ([`FeatureMoments::merge`]) and their counts and sums
    /// add. Second passes need the final class means, so they merge only between
    /// measurements whose first passes are identical (every worker's second pass starts from
    /// the merged first pass); their counts and sums add.
    ///
    /// # Errors
    /// Another dimension or class count; one side in its second pass and the other not; second
    /// passes over different first passes.
    pub fn merge(&mut self, other: &FeatureGeometry) -> Result<()> {
        match (&self.second, &other.second) {
            (None, None) => {
                self.moments.merge(&other.moments)?;
                for c in 0..self.correct.len() {
                    self.correct[c] += other.correct[c];
                    self.total[c] += other.total[c];
                }
                self.zz += other.zz;
                self.zs += other.zs;
                self.logit_samples += other.logit_samples;
                Ok(())
            }
            (Some(a), Some(b)) => {
                let (mut x, mut y) = (self.state(), other.state());
                x.second = None;
                y.second = None;
                if x != y {
                    return Err(Error::InvalidParameter {
                        name: "second-pass accumulators",
                        value: "built on different first passes".into(),
                        rule: "merged only when every second pass started from the same \
                               (merged) first pass",
                    });
                }
                let mut sum = a.clone();
                sum.add(b)?;
                self.second = Some(sum);
                Ok(())
            }
            _ => Err(Error::InvalidParameter {
                name: "accumulators",
                value: "one in its second pass, the other not".into(),
                rule: "merged in the same pass (first passes before any second pass starts)",
            }),
        }
    }

    /// Empty measurement of d-dimensional features of k classes, keeping the d×d scatter
    /// (NC1 after one pass).
    pub fn new(d: usize, k: usize) -> Self {
        Self::with_scatter(d, k, WithinScatter::Full)
    }

    /// Empty measurement; with [`WithinScatter::Projected`] NC1 needs the second pass.
    pub fn with_scatter(d: usize, k: usize, scatter: WithinScatter) -> Self {
        FeatureGeometry {
            moments: FeatureMoments::with_scatter(d, k, scatter),
            correct: vec![0; k],
            total: vec![0; k],
            zz: 0.0,
            zs: 0.0,
            logit_samples: 0,
            second: None,
            basis: None,
        }
    }

    /// Both passes over features `H` (d×n) and logits `Z` (k×n) held in memory: the
    /// measurement of a UFM iterate or of any model whose features fit in memory.
    ///
    /// # Errors
    /// As [`FeatureGeometry::push`] and [`FeatureGeometry::push_second`].
    pub fn of_matrices(H: MatRef<'_, f64>, Z: MatRef<'_, f64>, labels: &[u32]) -> Result<Self> {
        let mut geo = FeatureGeometry::new(H.nrows(), Z.nrows());
        geo.push(H, Some(Z), labels)?;
        geo.push_second(H, Some(Z), labels, Precision::Double)?;
        Ok(geo)
    }

    /// Samples seen by the second pass, once it has begun.
    pub fn second_seen(&self) -> Option<u64> {
        self.second.as_ref().map(|s| s.seen)
    }

    /// The moments accumulated so far.
    pub fn moments(&self) -> &FeatureMoments {
        &self.moments
    }

    fn check_logits(Z: MatRef<'_, f64>, k: usize, b: usize) -> Result<()> {
        if Z.nrows() != k || Z.ncols() != b {
            return Err(Error::ShapeMismatch {
                left: "logit batch",
                lr: Z.nrows(),
                lc: Z.ncols(),
                right: "(classes, batch samples)",
                rr: k,
                rc: b,
            });
        }
        for i in 0..b {
            for c in 0..k {
                let v = Z[(c, i)];
                if !v.is_finite() {
                    return Err(Error::InvalidParameter {
                        name: "logit",
                        value: format!("{v} (class {c} of sample {i} of the batch)"),
                        rule: "finite",
                    });
                }
            }
        }
        Ok(())
    }

    /// The SEL matrix entry `Ẑ[c, i]` of a sample of class `y`.
    fn sel(c: usize, y: usize, k: usize) -> f64 {
        f64::from(u8::from(c == y)) - 1.0 / k as f64
    }

    /// Pass 1: a batch of features (d×b), optional logits (k×b) and labels.
    ///
    /// # Errors
    /// Shapes that disagree, a label out of range, a non-finite feature or logit.
    pub fn push(
        &mut self,
        H: MatRef<'_, f64>,
        Z: Option<MatRef<'_, f64>>,
        labels: &[u32],
    ) -> Result<()> {
        let k = self.moments.classes();
        if let Some(Z) = Z {
            Self::check_logits(Z, k, labels.len())?;
        }
        self.moments.push(H, labels)?;
        let Some(Z) = Z else { return Ok(()) };
        for (i, &y) in labels.iter().enumerate() {
            let y = y as usize;
            self.total[y] += 1;
            self.correct[y] += u64::from(predicts((0..k).map(|c| Z[(c, i)]), y));
            for c in 0..k {
                let v = Z[(c, i)];
                self.zz += v * v;
                self.zs += v * Self::sel(c, y, k);
            }
        }
        self.logit_samples += labels.len() as u64;
        Ok(())
    }

    /// Pass 2: the same samples' features, logits and labels again, in any batching: counts
    /// where the argmax logit differs from the nearest class mean (of pass 1), sums `dist_z`
    /// in its exact form, and, with [`WithinScatter::Projected`], accumulates the projected
    /// within-class scatter NC1 reads. Logits come exactly when pass 1 had them.
    /// `precision` is that of the large products (see [`Precision`]).
    ///
    /// # Errors
    /// An empty class after pass 1; shapes that disagree; a label out of range; logits given
    /// when pass 1 had none or the reverse; a non-finite feature.
    pub fn push_second(
        &mut self,
        H: MatRef<'_, f64>,
        Z: Option<MatRef<'_, f64>>,
        labels: &[u32],
        precision: Precision,
    ) -> Result<()> {
        self.prepare_second()?;
        let part = self.second_part(H, Z, labels, precision)?;
        self.add_second_part(&part)
    }

    /// Fixes what pass 2 projects onto, from the final class means of pass 1: called by
    /// [`FeatureGeometry::push_second`], or once before [`FeatureGeometry::second_part`]s run
    /// in parallel.
    ///
    /// # Errors
    /// An empty class; the QR factorization failing.
    pub fn prepare_second(&mut self) -> Result<()> {
        if self.basis.is_none() {
            self.basis = Some(Basis::of_means(self.moments.class_means()?.as_ref())?);
        }
        Ok(())
    }

    /// Adds the contribution of [`FeatureGeometry::second_part`] to pass 2.
    ///
    /// # Errors
    /// A part of another shape (its scatter).
    pub fn add_second_part(&mut self, part: &SecondPass) -> Result<()> {
        let mut pass = match self.second.take() {
            Some(p) => p,
            None => {
                SecondPass::empty(part.class_mismatch.len(), part.scatter.as_ref().map(Mat::nrows))
            }
        };
        let added = pass.add(part);
        self.second = Some(pass);
        added
    }

    /// Checks that a classifier is d×k.
    fn check_classifier(&self, W: Option<MatRef<'_, f64>>) -> Result<()> {
        let (d, k) = (self.moments.dim(), self.moments.classes());
        match W {
            Some(W) if W.nrows() != d || W.ncols() != k => Err(Error::ShapeMismatch {
                left: "classifier W",
                lr: W.nrows(),
                lc: W.ncols(),
                right: "(feature dimension, classes)",
                rr: d,
                rc: k,
            }),
            _ => Ok(()),
        }
    }

    /// Checks a batch against this measurement: `H` d×b with b labels in `0..k`, logits k×b
    /// when given (`what` names the batch).
    fn check_batch(
        &self,
        H: MatRef<'_, f64>,
        Z: Option<MatRef<'_, f64>>,
        labels: &[u32],
        what: &'static str,
    ) -> Result<()> {
        let (d, k) = (self.moments.dim(), self.moments.classes());
        if H.nrows() != d || labels.len() != H.ncols() {
            return Err(Error::ShapeMismatch {
                left: what,
                lr: H.nrows(),
                lc: H.ncols(),
                right: "(feature dimension, batch labels)",
                rr: d,
                rc: labels.len(),
            });
        }
        if let Some(Z) = Z {
            Self::check_logits(Z, k, H.ncols())?;
        }
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, y)| **y as usize >= k) {
            return Err(Error::LabelOutOfRange { index: i, label: i64::from(y), k });
        }
        Ok(())
    }

    /// The basis fixed by [`FeatureGeometry::prepare_second`], else one built from `M`.
    fn basis_of(&self, M: &Mat<f64>) -> Result<std::borrow::Cow<'_, Basis>> {
        Ok(match &self.basis {
            Some(b) => std::borrow::Cow::Borrowed(b),
            None => std::borrow::Cow::Owned(Basis::of_means(M.as_ref())?),
        })
    }

    /// The contribution of one batch to pass 2, without changing the measurement: batches
    /// can be measured on several threads and their parts added in order
    /// ([`FeatureGeometry::add_second_part`]). Builds the projection basis when
    /// [`FeatureGeometry::prepare_second`] has not.
    ///
    /// # Errors
    /// As [`FeatureGeometry::push_second`].
    pub fn second_part(
        &self,
        H: MatRef<'_, f64>,
        Z: Option<MatRef<'_, f64>>,
        labels: &[u32],
        precision: Precision,
    ) -> Result<SecondPass> {
        let M = self.moments.class_means()?;
        let (d, k) = (self.moments.dim(), self.moments.classes());
        if Z.is_some() != (self.logit_samples > 0) {
            return Err(Error::InvalidParameter {
                name: "second-pass batch",
                value: format!(
                    "{} logits after a first pass {} them",
                    if Z.is_some() { "with" } else { "without" },
                    if Z.is_some() { "without" } else { "with" }
                ),
                rule: "logits in the second pass exactly when the first pass had them",
            });
        }
        self.check_batch(H, Z, labels, "feature batch")?;
        let projected = self.moments.scatter.is_none();
        let mut pass = SecondPass::empty(k, projected.then(|| projection_rank(d, k)));
        if projected || Z.is_some() {
            let basis = self.basis_of(&M)?;
            let basis = basis.as_ref();
            let MX = self.projections(
                &M,
                basis,
                H,
                labels,
                precision,
                pass.scatter.as_mut(),
                Z.is_some(),
            )?;
            if let (Some(Z), Some(MX)) = (Z, MX) {
                for (i, ncc) in nearest_means(basis, &MX, labels).into_iter().enumerate() {
                    let differ = u64::from(ncc != argmax((0..k).map(|c| Z[(c, i)])));
                    pass.mismatch += differ;
                    pass.class_mismatch[labels[i] as usize] += differ;
                }
            }
        }
        if let Some(Z) = Z {
            let z_norm = self.zz.sqrt();
            let sel_norm = (self.logit_samples as f64 * (1.0 - 1.0 / k as f64)).sqrt();
            for (i, &y) in labels.iter().enumerate() {
                for c in 0..k {
                    let diff = Z[(c, i)] / z_norm - Self::sel(c, y as usize, k) / sel_norm;
                    pass.sq += diff * diff;
                }
            }
        }
        pass.seen += labels.len() as u64;
        Ok(pass)
    }

    /// The products of pass 2 over a batch: deviations from the class means `M`, projected in
    /// `precision`; the projected scatter added to `scatter`; `MᵀX` when `with_means`.
    #[allow(clippy::too_many_arguments)]
    fn projections(
        &self,
        M: &Mat<f64>,
        basis: &Basis,
        H: MatRef<'_, f64>,
        labels: &[u32],
        precision: Precision,
        scatter: Option<&mut Mat<f64>>,
        with_means: bool,
    ) -> Result<Option<Mat<f64>>> {
        let (d, b) = (self.moments.dim(), labels.len());
        debug_assert_eq!(basis.rank(d), projection_rank(d, self.moments.classes()));
        Ok(match precision {
            Precision::Double => {
                let X = deviations(H, M, labels, |v| v)?;
                second_products(
                    basis.q.as_ref(),
                    &basis.coords,
                    MatRef::from_column_major_slice(&X, d, b),
                    scatter,
                    with_means,
                    usize::MAX,
                )
            }
            Precision::Single => {
                let X = deviations(H, M, labels, |v| v as f32)?;
                second_products(
                    basis.q32.as_ref(),
                    &basis.coords32,
                    MatRef::from_column_major_slice(&X, d, b),
                    scatter,
                    with_means,
                    SINGLE_BLOCK,
                )
                .map(|m| Mat::from_fn(m.nrows(), m.ncols(), |i, j| f64::from(m[(i, j)])))
            }
        })
    }

    /// Held-out samples (features `H`, d×b, logits `Z` when available, labels) against the
    /// class means of pass 1: how many the nearest class mean classifies right, how many the
    /// logits classify right, and how many disagree between the two (NC4 on held-out data).
    ///
    /// # Errors
    /// An empty class; shapes that disagree; a label out of range; a non-finite value.
    pub fn held_out(
        &self,
        H: MatRef<'_, f64>,
        Z: Option<MatRef<'_, f64>>,
        labels: &[u32],
        precision: Precision,
    ) -> Result<HeldOut> {
        let M = self.moments.class_means()?;
        let k = self.moments.classes();
        self.check_batch(H, Z, labels, "held-out feature batch")?;
        let basis = self.basis_of(&M)?;
        let basis = basis.as_ref();
        let MX =
            self.projections(&M, basis, H, labels, precision, None, true)?.expect("with means");
        let ncc = nearest_means(basis, &MX, labels);
        let mut out = HeldOut {
            n: labels.len() as u64,
            ncc_correct: ncc.iter().zip(labels).filter(|(p, y)| **p == **y as usize).count() as u64,
            logit_correct: None,
            mismatch: None,
        };
        if let Some(Z) = Z {
            let (mut right, mut differ) = (0, 0);
            for (i, &y) in labels.iter().enumerate() {
                right += u64::from(predicts((0..k).map(|c| Z[(c, i)]), y as usize));
                differ += u64::from(ncc[i] != argmax((0..k).map(|c| Z[(c, i)])));
            }
            out.logit_correct = Some(right);
            out.mismatch = Some(differ);
        }
        Ok(out)
    }

    /// NCC disagreements and the exact `dist_z`, when pass 2 covered every sample of pass 1.
    fn second_pass(&self) -> Option<&SecondPass> {
        self.second.as_ref().filter(|p| p.seen == self.moments.n())
    }

    /// NC1 under `centering`: from the d×d scatter of pass 1, or from the projected scatter
    /// of a complete pass 2 ([`WithinScatter::Projected`]); `None` otherwise.
    fn nc1(&self, centering: Centering) -> Result<Option<f64>> {
        if self.moments.scatter.is_some() {
            return self.moments.nc1(centering);
        }
        let Some(S) = self.second_pass().and_then(|p| p.scatter.as_ref()) else {
            return Ok(None);
        };
        let n = self.moments.n() as f64;
        let M = self.moments.class_means()?;
        let basis = match &self.basis {
            Some(b) => b.clone(),
            None => Basis::of_means(M.as_ref())?,
        };
        self.moments.nc1_by(centering, |U| {
            // U lies in the span of the class means: U = Q (QᵀU); u_jᵀ Σ_W u_j = a_jᵀ (S/n) a_j
            // with A = QᵀU, from one product with the symmetric S (its lower triangle mirrored).
            let A = match &basis.q {
                Some(q) => q.transpose() * U,
                None => U.to_owned(),
            };
            let mut full = S.clone();
            mirror_lower(&mut full);
            let mut SA = Mat::<f64>::zeros(A.nrows(), A.ncols());
            matmul(SA.as_mut(), Accum::Replace, full.as_ref(), A.as_ref(), 1.0, Par::rayon(0));
            (0..A.ncols())
                .map(|j| {
                    let (a, sa) = (A.col(j), SA.col(j));
                    (0..a.nrows()).map(|r| a[r] * sa[r]).sum::<f64>() / n
                })
                .collect()
        })
    }

    /// The class-level Grams the distances use.
    ///
    /// # Errors
    /// An empty class.
    pub fn grams(&self, W: Option<MatRef<'_, f64>>) -> Result<Grams> {
        let M = self.moments.class_means()?;
        let (Mc, _) = self.moments.centered_means(Centering::ClassMeans)?;
        Ok(Grams { gram_w: W.map(gram), gram_m: gram(M.as_ref()), gram_mc: gram(Mc.as_ref()) })
    }

    /// The per-class view against `target` (docs/theory.md, "Per-class view"): which class
    /// collapses, which drifts from its SELI position. Columns that need `W` are `None`
    /// without it.
    ///
    /// # Errors
    /// An empty class; a classifier of the wrong shape.
    pub fn per_class(
        &self,
        W: Option<MatRef<'_, f64>>,
        target: &Geometry,
    ) -> Result<Vec<PerClass>> {
        let k = self.moments.classes();
        self.check_classifier(W)?;
        let (Mc, _) = self.moments.centered_means(Centering::ClassMeans)?;
        let P = centering_projector(k);
        let none = || vec![None; k];
        let cos =
            |X: MatRef<'_, f64>, G: MatRef<'_, f64>| aligned_cosines(X, G).unwrap_or_else(none);
        let (w_seli, w_etf) = match W {
            Some(W) => (cos(W, target.gram_w()), cos(W, P.as_ref())),
            None => (none(), none()),
        };
        let (m_seli, m_etf) = (cos(Mc.as_ref(), target.gram_m()), cos(Mc.as_ref(), P.as_ref()));
        let var = self.moments.class_variances();
        let total: f64 = self.moments.class_ss.iter().sum();
        let groups = target.profile().groups();
        Ok((0..k)
            .map(|c| PerClass {
                class: c,
                count: self.moments.counts[c],
                group: groups.map(|g| match g[c] {
                    crate::profile::Group::Majority => "maj",
                    crate::profile::Group::Minority => "min",
                }),
                w_norm: W.map(|W| W.col(c).norm_l2()),
                muc_norm: Mc.col(c).norm_l2(),
                cos_w_seli: w_seli[c],
                cos_w_etf: w_etf[c],
                cos_muc_seli: m_seli[c],
                cos_muc_etf: m_etf[c],
                within_var: var[c],
                within_share: (total > 0.0).then(|| self.moments.class_ss[c] / total),
                ncc_agreement: self
                    .second_pass()
                    .filter(|_| self.logit_samples == self.moments.n())
                    .map(|p| 1.0 - p.class_mismatch[c] as f64 / self.moments.counts[c] as f64),
            })
            .collect())
    }

    /// [`GEOMETRY_COLUMNS`] against `target` (the SELI geometry of the samples' class
    /// counts). Columns that need logits or `W` are `None` without them; NC4 is `None` unless
    /// pass 2 covered every sample.
    ///
    /// # Errors
    /// An empty class, a classifier of the wrong shape, decompositions failing.
    pub fn values(
        &self,
        W: Option<MatRef<'_, f64>>,
        target: &Geometry,
    ) -> Result<Vec<Option<f64>>> {
        self.values_with(W, target, None)
    }

    /// [`FeatureGeometry::values`] with the `dist_*_target` columns against `own`, a loss's
    /// target (against SELI when `None`).
    ///
    /// # Errors
    /// As [`FeatureGeometry::values`].
    pub fn values_with(
        &self,
        W: Option<MatRef<'_, f64>>,
        target: &Geometry,
        own: Option<&crate::implicit::LossTarget>,
    ) -> Result<Vec<Option<f64>>> {
        let (d, k) = (self.moments.dim(), self.moments.classes());
        self.check_classifier(W)?;
        let groups = target.profile().groups();
        let M = self.moments.class_means()?;
        let (Mc, center) = self.moments.centered_means(Centering::ClassMeans)?;
        let P = centering_projector(k);
        let gw = W.map(gram);
        let mut values = Vec::with_capacity(GEOMETRY_COLUMNS.len());
        if self.logit_samples > 0 {
            values.extend(accuracies(&self.correct, &self.total, groups));
        } else {
            values.extend([None, None, None]);
        }
        values.push(W.map(|W| W.squared_norm_l2()));
        values
            .push(gw.as_ref().and_then(|g| normalized_distance(g.as_ref(), target.gram_w()).ok()));
        values.push(gw.as_ref().and_then(|g| normalized_distance(g.as_ref(), P.as_ref()).ok()));
        let (gm, gmc) = (gram(M.as_ref()), gram(Mc.as_ref()));
        for means in [(M.as_ref(), gm.as_ref()), (Mc.as_ref(), gmc.as_ref())] {
            values.extend(mean_distances(means, W, target.gram_m(), P.as_ref()));
        }
        let second = self.second_pass();
        values.push(match second {
            Some(p) if self.zz > 0.0 => Some(p.sq.sqrt()),
            _ => {
                // Streaming form from pass 1 alone.
                let sel_norm = (self.logit_samples as f64 * (1.0 - 1.0 / k as f64)).sqrt();
                (self.zz > 0.0)
                    .then(|| (2.0 - 2.0 * self.zs / (self.zz.sqrt() * sel_norm)).max(0.0).sqrt())
            }
        });
        values.push(self.nc1(Centering::ClassMeans)?);
        values.push(self.nc1(Centering::Samples)?);
        values.push(self.moments.nc1_quotient()?);
        values.push(self.moments.cdnv()?);
        let st = W.and_then(|W| collapse_stats(M.as_ref(), W, &center).ok());
        let st = st.as_ref();
        values.extend([
            st.map(|s| s.equinorm_mu),
            st.map(|s| s.equinorm_w),
            st.map(|s| s.equiangular_mu),
            st.map(|s| s.equiangular_w),
            st.map(|s| s.max_angle_mu),
            st.map(|s| s.max_angle_w),
            st.map(|s| s.self_duality),
        ]);
        values.push(gnc2(Mc.as_ref(), |x| -x.ln()));
        let s = d as f64 - 2.0;
        values.push(gnc2(Mc.as_ref(), |x| if s == 0.0 { 1.0 } else { s.signum() * x.powf(-s) }));
        values.push(W.and_then(|W| uniform_duality(W, Mc.as_ref())));
        values.push(
            second
                .filter(|_| self.logit_samples == self.moments.n())
                .map(|p| p.mismatch as f64 / self.moments.n() as f64),
        );
        match &gw {
            Some(g) => values.extend(group_columns(g.as_ref(), groups)),
            None => values.extend([None; 6]),
        }
        values.extend(group_columns(gm.as_ref(), groups));
        values.extend(group_columns(gmc.as_ref(), groups));
        let (tw, tm) = match own {
            Some(t) => (t.gram_w.as_ref(), t.gram_m.as_ref()),
            None => (target.gram_w(), target.gram_m()),
        };
        values.push(gw.as_ref().and_then(|g| normalized_distance(g.as_ref(), tw).ok()));
        values.push(normalized_distance(gm.as_ref(), tm).ok());
        values.push(normalized_distance(gmc.as_ref(), tm).ok());
        debug_assert_eq!(values.len(), GEOMETRY_COLUMNS.len());
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{gaussian_matrix, rng_from_seed};

    /// Class means by direct sums (the definition), d×k.
    fn reference_means(H: MatRef<'_, f64>, labels: &[u32], k: usize) -> Mat<f64> {
        let mut M = Mat::<f64>::zeros(H.nrows(), k);
        let mut m = vec![0.0; k];
        for (i, &y) in labels.iter().enumerate() {
            m[y as usize] += 1.0;
            for r in 0..H.nrows() {
                M[(r, y as usize)] += H[(r, i)];
            }
        }
        Mat::from_fn(H.nrows(), k, |r, c| M[(r, c)] / m[c])
    }

    /// NC1 from its definition with dense d×d matrices: `Σ_W`, `Σ_B` about `center`, and the
    /// pseudo-inverse of `Σ_B` from its eigendecomposition, on its top k−1 eigenvalues.
    fn reference_nc1(H: MatRef<'_, f64>, labels: &[u32], k: usize, center: &[f64]) -> f64 {
        let (d, n) = (H.nrows(), H.ncols());
        let M = reference_means(H, labels, k);
        let mut sw = Mat::<f64>::zeros(d, d);
        for (i, &y) in labels.iter().enumerate() {
            let dev: Vec<f64> = (0..d).map(|r| H[(r, i)] - M[(r, y as usize)]).collect();
            sw += Mat::from_fn(d, d, |a, b| dev[a] * dev[b] / n as f64);
        }
        let mut sb = Mat::<f64>::zeros(d, d);
        for c in 0..k {
            let dev: Vec<f64> = (0..d).map(|r| M[(r, c)] - center[r]).collect();
            sb += Mat::from_fn(d, d, |a, b| dev[a] * dev[b] / k as f64);
        }
        let evd = sb.self_adjoint_eigen(faer::Side::Lower).unwrap();
        let (vals, vecs) = (evd.S().column_vector(), evd.U());
        let mut pinv = Mat::<f64>::zeros(d, d);
        for j in (d - (k - 1)..d).rev() {
            let u = vecs.col(j);
            pinv += Mat::from_fn(d, d, |a, b| u[a] * u[b] / vals[j]);
        }
        let prod = &sw * &pinv;
        (0..d).map(|i| prod[(i, i)]).sum::<f64>() / k as f64
    }

    #[test]
    fn streaming_moments_equal_the_definitions() {
        let (d, k, n) = (7, 4, 203);
        let mut rng = rng_from_seed(3);
        let mut H: Mat<f64> = gaussian_matrix(d, n, 1.0, &mut rng);
        let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 5) % k) as u32).collect();
        // Class offsets 1e4 times the spread: Σ h hᵀ − n μ μᵀ would keep only ~8 digits.
        for i in 0..n {
            for r in 0..d {
                H[(r, i)] = 10.0 * ((r + labels[i] as usize) % 3 + r * (labels[i] as usize)) as f64
                    + 1e-3 * H[(r, i)];
            }
        }
        let M = reference_means(H.as_ref(), &labels, k);
        let mut fm = FeatureMoments::new(d, k);
        for start in (0..n).step_by(17) {
            let end = (start + 17).min(n);
            fm.push(H.subcols(start, end - start), &labels[start..end]).unwrap();
        }
        assert_eq!(fm.n(), n as u64);
        let Ms = fm.class_means().unwrap();
        assert!((&Ms - &M).norm_l2() < 1e-12 * M.norm_l2());
        let class_center: Vec<f64> =
            (0..d).map(|r| (0..k).map(|c| M[(r, c)]).sum::<f64>() / k as f64).collect();
        let sample_center: Vec<f64> =
            (0..d).map(|r| (0..n).map(|i| H[(r, i)]).sum::<f64>() / n as f64).collect();
        for (centering, center) in
            [(Centering::ClassMeans, class_center), (Centering::Samples, sample_center)]
        {
            let a = reference_nc1(H.as_ref(), &labels, k, &center);
            let b = fm.nc1(centering).unwrap().unwrap();
            assert!((a - b).abs() < 1e-8 * a, "{centering:?}: {a} vs {b}");
        }
        // Whole-batch push equals the chunked one.
        let whole = FeatureMoments::of_matrix(H.as_ref(), &labels, k).unwrap();
        let sw = whole.within_covariance().unwrap();
        let sc = fm.within_covariance().unwrap();
        assert!((&sw - &sc).norm_l2() < 1e-9 * sw.norm_l2());
    }

    #[test]
    fn nc1_on_hand_examples() {
        // Two classes in R^2: class 0 at (1, 0) ± (0, 0.1), class 1 at (-1, 0) ± (0, 0.1).
        let H = Mat::from_fn(2, 4, |r, i| [[1.0, 1.0, -1.0, -1.0], [0.1, -0.1, 0.1, -0.1]][r][i]);
        let y = [0, 0, 1, 1];
        let fm = FeatureMoments::of_matrix(H.as_ref(), &y, 2).unwrap();
        let M = fm.class_means().unwrap();
        assert_eq!((M[(0, 0)], M[(1, 0)], M[(0, 1)]), (1.0, 0.0, -1.0));
        // Σ_B = diag(1, 0) (centered means ±e1); the top k−1 = 1 direction is e1, along which
        // the within-class deviations are 0: NC1 = 0, although Σ_W = diag(0, 0.01).
        let v = fm.nc1(Centering::ClassMeans).unwrap().unwrap();
        assert!(v.abs() < 1e-15, "{v}");
        // Deviations along e1: each sample off its mean by ±0.2 e1 -> Σ_W[0,0] = 0.04, Σ_B^† =
        // diag(1, 0), so Tr(Σ_W Σ_B^†)/k = 0.04 / 2 = 0.02.
        let H2 = Mat::from_fn(2, 4, |r, i| [[1.2, 0.8, -0.8, -1.2], [0.0; 4]][r][i]);
        let fm2 = FeatureMoments::of_matrix(H2.as_ref(), &y, 2).unwrap();
        let v = fm2.nc1(Centering::Samples).unwrap().unwrap();
        assert!((v - 0.02).abs() < 1e-15, "{v}");
        let one = FeatureMoments::of_matrix(H.as_ref(), &[0, 0, 0, 0], 2).unwrap();
        assert!(one.class_means().unwrap_err().to_string().contains("class 1 is empty"));
        let same = Mat::from_fn(2, 2, |_, _| 1.0);
        let fm = FeatureMoments::of_matrix(same.as_ref(), &[0, 1], 2).unwrap();
        assert_eq!(fm.nc1(Centering::ClassMeans).unwrap(), None);
    }

    #[test]
    fn dist_z_is_zero_on_the_sel_matrix_and_exact_with_two_passes() {
        let y = [0u32, 2, 1, 1, 0];
        let H = Mat::from_fn(2, 5, |r, i| (r as f64 + 1.0) * (i as f64 - 2.0) + y[i] as f64);
        let col = |g: &FeatureGeometry| {
            let p = crate::Profile::from_counts(vec![2, 2, 1]).unwrap();
            g.values(None, &crate::Geometry::new(&p).unwrap()).unwrap()[geometry_column("dist_z")]
                .unwrap()
        };
        let sel = Mat::from_fn(3, 5, |c, i| 4.0 * (f64::from(c as u32 == y[i]) - 1.0 / 3.0));
        let g = FeatureGeometry::of_matrices(H.as_ref(), sel.as_ref(), &y).unwrap();
        assert!(col(&g) < 1e-15, "{}", col(&g));
        // Any logits: both passes give the normalized distance to the SEL matrix formed
        // densely; pass 1 alone gives the streaming form, equal away from 0.
        let z = Mat::from_fn(3, 5, |c, i| (c * i) as f64 - 0.5 * c as f64 + 0.1 * i as f64);
        let dense = Mat::from_fn(3, 5, |c, i| f64::from(c as u32 == y[i]) - 1.0 / 3.0);
        let want = normalized_distance(z.as_ref(), dense.as_ref()).unwrap();
        let g = FeatureGeometry::of_matrices(H.as_ref(), z.as_ref(), &y).unwrap();
        assert!((col(&g) - want).abs() < 1e-15, "{} vs {want}", col(&g));
        let mut one = FeatureGeometry::new(2, 3);
        one.push(H.as_ref(), Some(z.as_ref()), &y).unwrap();
        assert!((col(&one) - want).abs() < 1e-12);
    }

    /// Features far from the origin with small within-class spread (the terminal phase, where
    /// cancellation shows), logits, labels covering every class.
    fn sample(d: usize, k: usize, n: usize, seed: u64) -> (Mat<f64>, Mat<f64>, Vec<u32>) {
        let mut rng = rng_from_seed(seed);
        let g: Mat<f64> = gaussian_matrix(d, n, 1.0, &mut rng);
        let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 5) % k) as u32).collect();
        let H = Mat::from_fn(d, n, |r, i| {
            100.0 * ((r * 3 + labels[i] as usize) % 4) as f64 + 1e-2 * g[(r, i)]
        });
        let W: Mat<f64> = gaussian_matrix(d, k, 1.0, &mut rng);
        let Z = W.transpose() * &H;
        (H, Z, labels)
    }

    /// Splits `0..n` at pseudo-random points.
    fn cuts(n: usize, seed: u64) -> Vec<usize> {
        let mut x = seed | 1;
        let mut out = vec![0];
        while *out.last().unwrap() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push((out.last().unwrap() + 1 + (x % 37) as usize).min(n));
        }
        out
    }

    /// The SELI geometry of the class counts of `labels`.
    fn target_of(labels: &[u32], k: usize) -> crate::Geometry {
        let labels: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        crate::Geometry::new(&crate::Profile::from_labels(labels, Some(k)).unwrap()).unwrap()
    }

    fn close(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
        a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-10 * x.abs().max(y.abs()).max(1e-6),
            (None, None) => true,
            _ => false,
        })
    }

    #[test]
    fn any_batching_and_merge_order_give_the_single_pass_values() {
        let (d, k, n) = (6, 4, 317);
        let (H, Z, labels) = sample(d, k, n, 9);
        let target = target_of(&labels, k);
        let whole = FeatureGeometry::of_matrices(H.as_ref(), Z.as_ref(), &labels).unwrap();
        let want = whole.values(None, &target).unwrap();
        for seed in 1..6u64 {
            // Each batch its own accumulator (a worker), merged in a seed-dependent order.
            let bounds = cuts(n, seed);
            let mut parts: Vec<FeatureGeometry> = bounds
                .windows(2)
                .map(|w| {
                    let mut g = FeatureGeometry::new(d, k);
                    let cols = w[0]..w[1];
                    g.push(
                        H.subcols(w[0], w[1] - w[0]),
                        Some(Z.subcols(w[0], w[1] - w[0])),
                        &labels[cols],
                    )
                    .unwrap();
                    g
                })
                .collect();
            let rot = seed as usize % parts.len();
            parts.rotate_left(rot);
            if seed % 2 == 0 {
                parts.reverse();
            }
            let mut merged = parts.remove(0);
            for p in &parts {
                merged.merge(p).unwrap();
            }
            // Second pass, split across two workers that both start from the merged first
            // pass, then merged.
            let (mut a, mut b) = (merged.clone(), merged);
            let half = n / 2;
            a.push_second(
                H.subcols(0, half),
                Some(Z.subcols(0, half)),
                &labels[..half],
                Precision::Double,
            )
            .unwrap();
            b.push_second(
                H.subcols(half, n - half),
                Some(Z.subcols(half, n - half)),
                &labels[half..],
                Precision::Double,
            )
            .unwrap();
            a.merge(&b).unwrap();
            let got = a.values(None, &target).unwrap();
            assert!(close(&got, &want), "seed {seed}: {got:?} vs {want:?}");
            assert_eq!(a.moments().counts(), whole.moments().counts());
            // A state survives its round trip exactly.
            let back = FeatureGeometry::from_state(a.state()).unwrap();
            assert_eq!(back.state(), a.state());
        }
    }

    /// The projected second pass against the d×d scatter of pass 1, split into uneven
    /// batches and merged across workers: every column equal to 1e-10, in both bases (k <
    /// 0.4·d: the QR basis of the means; otherwise the identity), with and without logits.
    #[test]
    fn projected_scatter_gives_the_full_scatter_values() {
        for (d, k, n) in [(12, 3, 211), (6, 4, 317)] {
            assert_eq!(projection_rank(d, k), if d == 12 { 3 } else { 6 });
            let (H, Z, labels) = sample(d, k, n, 31);
            let target = target_of(&labels, k);
            for with_logits in [true, false] {
                let z = |a: usize, b: usize| with_logits.then(|| Z.subcols(a, b - a));
                let mut full = FeatureGeometry::new(d, k);
                full.push(H.as_ref(), z(0, n), &labels).unwrap();
                if with_logits {
                    full.push_second(H.as_ref(), z(0, n), &labels, Precision::Double).unwrap();
                }
                let want = full.values(None, &target).unwrap();
                let nc1 = geometry_column("nc1");
                assert!(want[nc1].is_some());
                let bounds = cuts(n, 5);
                let mut merged = FeatureGeometry::with_scatter(d, k, WithinScatter::Projected);
                for w in bounds.windows(2) {
                    let mut part = FeatureGeometry::with_scatter(d, k, WithinScatter::Projected);
                    part.push(H.subcols(w[0], w[1] - w[0]), z(w[0], w[1]), &labels[w[0]..w[1]])
                        .unwrap();
                    merged.merge(&part).unwrap();
                }
                let before = merged.values(None, &target).unwrap();
                assert_eq!(before[nc1], None, "NC1 waits for the second pass");
                let (mut a, mut b) = (merged.clone(), merged);
                for w in bounds.windows(2) {
                    let g = if w[0] % 2 == 0 { &mut a } else { &mut b };
                    g.push_second(
                        H.subcols(w[0], w[1] - w[0]),
                        z(w[0], w[1]),
                        &labels[w[0]..w[1]],
                        Precision::Double,
                    )
                    .unwrap();
                }
                // A serialized worker merges the same.
                let b = FeatureGeometry::from_state(b.state()).unwrap();
                a.merge(&b).unwrap();
                let got = a.values(None, &target).unwrap();
                assert!(close(&got, &want), "d {d}, logits {with_logits}: {got:?} vs {want:?}");
            }
        }
    }

    /// f32 products on f32-valued features agree with f64 to f32 accuracy on the
    /// within-class quantities, although the means are 1e4 times the spread.
    #[test]
    fn single_precision_products_keep_the_within_class_accuracy() {
        let (d, k, n) = (40, 5, 3000);
        let (H, Z, labels) = sample(d, k, n, 8);
        let H = Mat::from_fn(d, n, |r, i| f64::from(H[(r, i)] as f32));
        let target = target_of(&labels, k);
        let run = |precision| {
            let mut g = FeatureGeometry::with_scatter(d, k, WithinScatter::Projected);
            g.push(H.as_ref(), Some(Z.as_ref()), &labels).unwrap();
            g.push_second(H.as_ref(), Some(Z.as_ref()), &labels, precision).unwrap();
            g.values(None, &target).unwrap()
        };
        let (a, b) = (run(Precision::Double), run(Precision::Single));
        for name in ["nc1", "nc1_global", "ncc_mismatch"] {
            let c = geometry_column(name);
            let (x, y) = (a[c].unwrap(), b[c].unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-12), "{name}: {x} vs {y}");
        }
    }

    /// NC4 through the class-mean gaps equals the count from direct distances.
    #[test]
    fn ncc_mismatch_equals_direct_nearest_means() {
        let (d, k, n) = (5, 4, 400);
        let mut rng = rng_from_seed(12);
        let g: Mat<f64> = gaussian_matrix(d, n, 1.0, &mut rng);
        let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        // Overlapping classes, so that many samples sit nearer another mean.
        let H = Mat::from_fn(d, n, |r, i| 0.5 * ((r + labels[i] as usize) % 3) as f64 + g[(r, i)]);
        let W: Mat<f64> = gaussian_matrix(d, k, 1.0, &mut rng);
        let Z = W.transpose() * &H;
        let M = reference_means(H.as_ref(), &labels, k);
        let direct = (0..n)
            .filter(|&i| {
                let h: Vec<f64> = (0..d).map(|r| H[(r, i)]).collect();
                nearest_class_mean(M.as_ref(), &h) != argmax((0..k).map(|c| Z[(c, i)]))
            })
            .count();
        assert!(direct > n / 10, "{direct}");
        let target =
            crate::Geometry::new(&crate::Profile::from_counts(vec![100; 4]).unwrap()).unwrap();
        for scatter in [WithinScatter::Full, WithinScatter::Projected] {
            let mut geo = FeatureGeometry::with_scatter(d, k, scatter);
            geo.push(H.as_ref(), Some(Z.as_ref()), &labels).unwrap();
            geo.push_second(H.as_ref(), Some(Z.as_ref()), &labels, Precision::Double).unwrap();
            let v = geo.values(Some(W.as_ref()), &target).unwrap()[geometry_column("ncc_mismatch")];
            assert_eq!(v, Some(direct as f64 / n as f64), "{scatter:?}");
        }
    }

    #[test]
    fn second_pass_logits_must_match_the_first_and_mixed_scatters_do_not_merge() {
        let (H, Z, labels) = sample(4, 3, 30, 2);
        let mut g = FeatureGeometry::with_scatter(4, 3, WithinScatter::Projected);
        g.push(H.as_ref(), None, &labels).unwrap();
        let e = g
            .push_second(H.as_ref(), Some(Z.as_ref()), &labels, Precision::Double)
            .unwrap_err()
            .to_string();
        assert!(e.contains("with logits after a first pass without"), "{e}");
        let e = g.merge(&FeatureGeometry::new(4, 3)).unwrap_err().to_string();
        assert!(e.contains("full or projected"), "{e}");
        let mut bad = H.clone();
        bad[(2, 7)] = f64::INFINITY;
        let e =
            g.push_second(bad.as_ref(), None, &labels, Precision::Double).unwrap_err().to_string();
        assert!(e.contains("inf") && e.contains("sample 7"), "{e}");
        // A state whose second-pass scatter has the wrong size is refused.
        g.push_second(H.as_ref(), None, &labels, Precision::Double).unwrap();
        let mut st = g.state();
        st.second.as_mut().unwrap().scatter = Some(Mat::zeros(2, 2));
        let e = FeatureGeometry::from_state(st).unwrap_err().to_string();
        assert!(e.contains("second-pass scatter 2x2"), "{e}");
    }

    /// A factor `F` (k×k) with `FᵀF = G`, from the SVD of the Gram.
    fn factor(G: MatRef<'_, f64>) -> Mat<f64> {
        let svd = G.thin_svd().unwrap();
        let (u, sv) = (svd.U(), svd.S().column_vector());
        Mat::from_fn(G.nrows(), G.ncols(), |i, j| sv[i].max(0.0).sqrt() * u[(j, i)])
    }

    /// The per-class view on exact geometries: a classifier and class means placed at SELI by
    /// an arbitrary rotation have every aligned SELI cosine 1; the ETF cosines fall below 1
    /// under imbalance and equal the SELI ones for balanced counts; a rotation of the features
    /// changes nothing; within-class statistics match their definitions.
    #[test]
    fn per_class_view_on_exact_geometries() {
        let (d, k) = (9, 4);
        for counts in [vec![30u64, 30, 3, 3], vec![6; 4]] {
            let p = crate::Profile::from_counts(counts.clone()).unwrap();
            let target = crate::Geometry::new(&p).unwrap();
            let mut rng = rng_from_seed(4);
            let g: Mat<f64> = gaussian_matrix(d, d, 1.0, &mut rng);
            let rot = g.qr().compute_thin_Q();
            let embed = |F: &Mat<f64>| rot.subcols(0, k) * F;
            let W = embed(&factor(target.gram_w()));
            let Mc = embed(&factor(target.gram_m()));
            // Samples at their class mean (shifted by a common offset) plus ±e spread in one
            // coordinate for class 0 only.
            let labels: Vec<u32> =
                (0..k).flat_map(|c| std::iter::repeat_n(c as u32, counts[c] as usize)).collect();
            let n = labels.len();
            let mut H = Mat::from_fn(d, n, |r, i| Mc[(r, labels[i] as usize)] + 0.5);
            for i in 0..counts[0] as usize {
                H[(0, i)] += if i % 2 == 0 { 0.1 } else { -0.1 };
            }
            let mut geo = FeatureGeometry::new(d, k);
            geo.push(H.as_ref(), None, &labels).unwrap();
            let rows = geo.per_class(Some(W.as_ref()), &target).unwrap();
            let imbalanced = counts[0] != counts[2];
            for r in &rows {
                assert!((r.cos_w_seli.unwrap() - 1.0).abs() < 1e-9, "{r:?}");
                assert!((r.w_norm.unwrap() - W.col(r.class).norm_l2()).abs() < 1e-12);
                if !imbalanced {
                    assert!((r.cos_w_etf.unwrap() - r.cos_w_seli.unwrap()).abs() < 1e-9);
                    assert!((r.cos_muc_etf.unwrap() - r.cos_muc_seli.unwrap()).abs() < 1e-9);
                }
                let var = if r.class == 0 { 0.01 } else { 0.0 };
                assert!((r.within_var - var).abs() < 1e-12, "{r:?}");
                let share = if r.class == 0 { 1.0 } else { 0.0 };
                assert!((r.within_share.unwrap() - share).abs() < 1e-12, "{r:?}");
                assert_eq!(
                    r.group,
                    if imbalanced { Some(["maj", "min"][r.class / 2]) } else { None }
                );
                assert_eq!(r.count, counts[r.class]);
                assert_eq!(r.ncc_agreement, None, "no logits");
            }
            // Class 0's mean moved by its ±0.1 spread only: still at SELI up to the spread.
            assert!(rows.iter().all(|r| r.cos_muc_seli.unwrap() > 1.0 - 1e-9), "{rows:?}");
            if imbalanced {
                assert!(rows.iter().any(|r| r.cos_w_etf.unwrap() < 0.999), "{rows:?}");
            }
            // Rotating features and classifier together changes no cosine.
            let g2: Mat<f64> = gaussian_matrix(d, d, 1.0, &mut rng);
            let q = g2.qr().compute_thin_Q();
            let mut geo2 = FeatureGeometry::new(d, k);
            geo2.push((&q * &H).as_ref(), None, &labels).unwrap();
            let rows2 = geo2.per_class(Some((&q * &W).as_ref()), &target).unwrap();
            for (a, b) in rows.iter().zip(&rows2) {
                for (x, y) in [(a.cos_w_etf, b.cos_w_etf), (a.cos_muc_etf, b.cos_muc_etf)] {
                    assert!((x.unwrap() - y.unwrap()).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn merging_mismatched_accumulators_is_refused() {
        let (H, Z, labels) = sample(3, 3, 30, 2);
        let mut a = FeatureGeometry::new(3, 3);
        a.push(H.as_ref(), Some(Z.as_ref()), &labels).unwrap();
        let e = a.merge(&FeatureGeometry::new(4, 3)).unwrap_err().to_string();
        assert!(e.contains("accumulator (d, k)") && e.contains('4'), "{e}");
        let e = a.merge(&FeatureGeometry::new(3, 5)).unwrap_err().to_string();
        assert!(e.contains('5'), "{e}");
        let mut second = a.clone();
        second.push_second(H.as_ref(), Some(Z.as_ref()), &labels, Precision::Double).unwrap();
        let e = a.merge(&second).unwrap_err().to_string();
        assert!(e.contains("one in its second pass"), "{e}");
        let mut s2 = FeatureGeometry::new(3, 3);
        s2.push(H.as_ref(), Some(Z.as_ref()), &labels).unwrap();
        s2.push(H.subcols(0, 1), Some(Z.subcols(0, 1)), &labels[..1]).unwrap();
        s2.push_second(H.as_ref(), Some(Z.as_ref()), &labels, Precision::Double).unwrap();
        let e = second.merge(&s2).unwrap_err().to_string();
        assert!(e.contains("different first passes"), "{e}");
        // Inconsistent states are refused, named.
        let mut st = a.state();
        st.correct[0] = st.total[0] + 1;
        let e = FeatureGeometry::from_state(st).unwrap_err().to_string();
        assert!(e.contains("class 0") && e.contains("correct"), "{e}");
        let mut st = a.state();
        st.zz = f64::NAN;
        assert!(FeatureGeometry::from_state(st).unwrap_err().to_string().contains("non-finite"));
    }

    #[test]
    fn cdnv_and_the_trace_quotient_equal_their_definitions() {
        let (d, k, n) = (5, 4, 157);
        let (H, _, labels) = sample(d, k, n, 21);
        // Streamed in uneven batches.
        let mut fm = FeatureMoments::new(d, k);
        let b = cuts(n, 3);
        for w in b.windows(2) {
            fm.push(H.subcols(w[0], w[1] - w[0]), &labels[w[0]..w[1]]).unwrap();
        }
        // Direct sums over the samples.
        let M = reference_means(H.as_ref(), &labels, k);
        let mut ss = vec![0.0; k];
        let mut nc = vec![0.0; k];
        for (i, &y) in labels.iter().enumerate() {
            let c = y as usize;
            nc[c] += 1.0;
            ss[c] += (0..d).map(|r| (H[(r, i)] - M[(r, c)]).powi(2)).sum::<f64>();
        }
        let var: Vec<f64> = (0..k).map(|c| ss[c] / nc[c]).collect();
        let mut pairs = Vec::new();
        for a in 0..k {
            for b in a + 1..k {
                let dist: f64 = (0..d).map(|r| (M[(r, a)] - M[(r, b)]).powi(2)).sum();
                pairs.push((var[a] + var[b]) / (2.0 * dist));
            }
        }
        let cdnv = pairs.iter().sum::<f64>() / pairs.len() as f64;
        let mu_g: Vec<f64> =
            (0..d).map(|r| (0..k).map(|c| M[(r, c)]).sum::<f64>() / k as f64).collect();
        let tb: f64 =
            (0..k).map(|c| (0..d).map(|r| (M[(r, c)] - mu_g[r]).powi(2)).sum::<f64>()).sum::<f64>()
                / k as f64;
        let tw = ss.iter().sum::<f64>() / n as f64;
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(rel(fm.cdnv().unwrap().unwrap(), cdnv) < 1e-10);
        assert!(rel(fm.nc1_quotient().unwrap().unwrap(), tw / tb) < 1e-10);
        for c in 0..k {
            assert!(rel(fm.class_variances()[c], var[c]) < 1e-10);
        }

        // Every sample on its class mean: both vanish.
        let on_means = Mat::from_fn(d, n, |r, i| M[(r, labels[i] as usize)]);
        let fm0 = FeatureMoments::of_matrix(on_means.as_ref(), &labels, k).unwrap();
        assert!(fm0.cdnv().unwrap().unwrap() < 1e-24);
        assert!(fm0.nc1_quotient().unwrap().unwrap() < 1e-24);
        // Class 0 collapsed onto its mean: its variance drops out of CDNV.
        let part = Mat::from_fn(d, n, |r, i| if labels[i] == 0 { M[(r, 0)] } else { H[(r, i)] });
        let fm1 = FeatureMoments::of_matrix(part.as_ref(), &labels, k).unwrap();
        assert!(fm1.class_variances()[0] < 1e-24);
        let mut want = 0.0;
        for a in 0..k {
            for b in a + 1..k {
                let dist: f64 = (0..d).map(|r| (M[(r, a)] - M[(r, b)]).powi(2)).sum();
                let (va, vb) = (if a == 0 { 0.0 } else { var[a] }, var[b]);
                want += (va + vb) / (2.0 * dist);
            }
        }
        assert!(rel(fm1.cdnv().unwrap().unwrap(), want / 6.0) < 1e-10);
    }

    #[test]
    fn hyperspherical_uniformity_and_uniform_duality_on_exact_cases() {
        // A simplex ETF (columns of the centering projector, k = 4 in d = 4): every pair equally
        // far apart, so both GNC2 variances vanish; W proportional to it: UNC3 vanishes.
        let k = 4;
        let etf = centering_projector(k);
        assert!(gnc2(etf.as_ref(), |x| -x.ln()).unwrap() < 1e-28);
        assert!(gnc2(etf.as_ref(), |x| x.powf(-2.0)).unwrap() < 1e-28);
        let w = Mat::from_fn(k, k, |r, c| 3.0 * etf[(r, c)]);
        assert!(uniform_duality(w.as_ref(), etf.as_ref()).unwrap() < 1e-28);
        // By hand: e1, e2, -e1 (distances sqrt 2, 2, sqrt 2): the log kernel's variance is
        // (ln 2)^2 / 18.
        let m = Mat::from_fn(2, 3, |r, c| match (r, c) {
            (0, 0) => 1.0,
            (1, 1) => 1.0,
            (0, 2) => -1.0,
            _ => 0.0,
        });
        let want = 2f64.ln().powi(2) / 18.0;
        assert!((gnc2(m.as_ref(), |x| -x.ln()).unwrap() - want).abs() < 1e-15);
        // Cosines 1, 0, -1 with their means: variance 2/3.
        let w = Mat::from_fn(2, 3, |r, c| match (r, c) {
            (0, 0) => 2.0,
            (0, 1) => 1.0,
            (0, 2) => 1.0,
            _ => 0.0,
        });
        assert!((uniform_duality(w.as_ref(), m.as_ref()).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        // A zero centered mean leaves them undefined.
        let z = Mat::from_fn(2, 3, |r, c| if c == 1 { 0.0 } else { m[(r, c)] });
        assert_eq!(gnc2(z.as_ref(), |x| -x.ln()), None);
        assert_eq!(uniform_duality(w.as_ref(), z.as_ref()), None);
    }

    #[test]
    fn bad_batches_and_empty_classes_are_named() {
        let mut fm = FeatureMoments::new(2, 3);
        let H = Mat::from_fn(2, 2, |r, i| (r + i) as f64);
        let e = fm.push(H.as_ref(), &[0, 3]).unwrap_err().to_string();
        assert!(e.contains('3'), "{e}");
        let mut nan = H.clone();
        nan[(1, 1)] = f64::NAN;
        let e = fm.push(nan.as_ref(), &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("NaN") && e.contains("sample 1"), "{e}");
        fm.push(H.as_ref(), &[0, 1]).unwrap();
        assert!(fm.class_means().unwrap_err().to_string().contains("class 2 is empty"));
        assert!(fm.push(H.as_ref(), &[0]).is_err());
    }

    #[test]
    fn collapse_statistics_vanish_on_a_simplex_etf_and_not_under_imbalance() {
        // ETF means and self-dual classifiers: every statistic is 0.
        let k = 4;
        let P = crate::metrics::centering_projector(k);
        let st = collapse_stats(P.as_ref(), (&P * faer::Scale(3.0)).as_ref(), &[0.0; 4]).unwrap();
        for v in [
            st.equinorm_mu,
            st.equinorm_w,
            st.equiangular_mu,
            st.equiangular_w,
            st.max_angle_mu,
            st.max_angle_w,
            st.self_duality,
        ] {
            assert!(v.abs() < 1e-12, "{st:?}");
        }
        // SELI of a STEP profile: W and M have unequal norms, so equinorm is not 0.
        let p = crate::Profile::step(4, 10.0, 0.5, 1).unwrap();
        let g = crate::Geometry::new(&p).unwrap();
        let r = g.realize(6, 1).unwrap();
        let st = collapse_stats(r.M.as_ref(), r.W.as_ref(), &[0.0; 6]).unwrap();
        assert!(st.equinorm_w > 0.1 && st.equinorm_mu > 0.1, "{st:?}");
        // Hand value: norms 1 and 3 -> mean 2, std 1 -> equinorm 0.5.
        let X = Mat::from_fn(2, 2, |r, c| if r == c { [1.0, 3.0][c] } else { 0.0 });
        let st = collapse_stats(X.as_ref(), X.as_ref(), &[0.0, 0.0]).unwrap();
        assert!((st.equinorm_w - 0.5).abs() < 1e-15);
        // Orthogonal pair: cos = 0, |0 + 1/(k-1)| = 1.
        assert!((st.max_angle_w - 1.0).abs() < 1e-15);
        assert_eq!(nearest_class_mean(X.as_ref(), &[0.9, 0.2]), 0);
        assert_eq!(nearest_class_mean(X.as_ref(), &[0.1, 2.0]), 1);
    }

    #[test]
    fn feature_geometry_without_classifier_or_logits() {
        // Noise-free SELI class means as features: G_M is exactly SELI's, NC1 is 0, and the
        // columns that need W or logits are undefined.
        let p = crate::Profile::step(4, 10.0, 0.5, 2).unwrap();
        let g = crate::Geometry::new(&p).unwrap();
        let r = g.realize(5, 3).unwrap();
        let labels: Vec<u32> =
            p.counts().iter().enumerate().flat_map(|(c, &m)| vec![c as u32; m as usize]).collect();
        let H = Mat::from_fn(5, labels.len(), |i, j| r.M[(i, labels[j] as usize)]);
        let mut fg = FeatureGeometry::new(5, 4);
        fg.push(H.as_ref(), None, &labels).unwrap();
        let v = fg.values(None, &g).unwrap();
        let col = |n: &str| v[geometry_column(n)];
        // SELI means sum to zero: raw and centered columns coincide.
        for m in ["gm", "gmc"] {
            assert!(col(&format!("dist_{m}_seli")).unwrap() < 1e-12, "{v:?}");
            assert!((col(&format!("dist_{m}_etf")).unwrap() - g.dist_gram_m_etf()).abs() < 1e-12);
        }
        assert!(col("nc1").unwrap().abs() < 1e-20);
        for n in ["accuracy", "w_norm_sq", "dist_gw_seli", "dist_z", "equinorm_w", "ncc_mismatch"] {
            assert_eq!(col(n), None, "{n}");
        }
        // With the SELI classifier and its logits: every sample right, NC4 agreement.
        let Z = r.W.transpose() * &H;
        let mut fg = FeatureGeometry::new(5, 4);
        fg.push(H.as_ref(), Some(Z.as_ref()), &labels).unwrap();
        fg.push_second(H.as_ref(), Some(Z.as_ref()), &labels, Precision::Double).unwrap();
        let v = fg.values(Some(r.W.as_ref()), &g).unwrap();
        let col = |n: &str| v[geometry_column(n)];
        assert_eq!((col("accuracy"), col("ncc_mismatch")), (Some(1.0), Some(0.0)));
        assert!(col("dist_z").unwrap() < 1e-12 && col("dist_gw_seli").unwrap() < 1e-12);
        let e = fg.values(Some(Mat::<f64>::zeros(4, 4).as_ref()), &g).unwrap_err().to_string();
        assert!(e.contains("classifier W"), "{e}");
    }

    #[test]
    fn centered_columns_ignore_a_common_shift_and_raw_ones_do_not() {
        // Translating every feature by one vector moves the raw class means but not the
        // centered ones: every `muc`/`gmc`/`wtmc` column, NC1 and the Papyan statistics stay.
        let p = crate::Profile::step(4, 10.0, 0.5, 2).unwrap();
        let g = crate::Geometry::new(&p).unwrap();
        let r = g.realize(5, 3).unwrap();
        let labels: Vec<u32> =
            p.counts().iter().enumerate().flat_map(|(c, &m)| vec![c as u32; m as usize]).collect();
        let noise: Mat<f64> = gaussian_matrix(5, labels.len(), 0.1, &mut rng_from_seed(9));
        let H = Mat::from_fn(5, labels.len(), |i, j| r.M[(i, labels[j] as usize)] + noise[(i, j)]);
        let shifted =
            Mat::from_fn(5, labels.len(), |i, j| H[(i, j)] + [3.0, -1.0, 0.5, 2.0, 1.0][i]);
        let measure = |H: &Mat<f64>| {
            let Z = r.W.transpose() * H;
            let fg = FeatureGeometry::of_matrices(H.as_ref(), Z.as_ref(), &labels).unwrap();
            fg.values(Some(r.W.as_ref()), &g).unwrap()
        };
        let (a, b) = (measure(&H), measure(&shifted));
        for (j, (name, _)) in GEOMETRY_COLUMNS.iter().enumerate() {
            let centered = name.contains("muc")
                || name.contains("gmc")
                || name.contains("wtmc")
                || name.starts_with("nc1")
                || name == &"self_duality";
            if centered {
                assert!((a[j].unwrap() - b[j].unwrap()).abs() < 1e-9, "{name}");
            }
        }
        let raw = geometry_column("dist_gm_seli");
        assert!((a[raw].unwrap() - b[raw].unwrap()).abs() > 1e-2, "{:?} {:?}", a[raw], b[raw]);
    }
}
