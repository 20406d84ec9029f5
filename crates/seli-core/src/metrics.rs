//! Normalized distances and class-level Gram statistics (docs/theory.md, "Measuring a model").
//!
//! The normalized distance `dist(A, B) = ‖A/‖A‖_F − B/‖B‖_F‖_F` compares shapes up to scale:
//! 0 means equal up to a positive factor, the maximum is 2 (opposite matrices).
//!
//! Everything here works on k×k Grams: from `G_W = WᵀW`, `G_M = MᵀM` and `WᵀM` come
//! per-class norms, all pairwise cosines, their averages over majority/minority pairs, the
//! majority/minority norm ratio and the classifier–mean alignment `cos(w_c, μ_c)`. The same
//! functions serve exact targets ([`crate::Geometry`]) and measured models. Feature-level
//! statistics (class means, NC1, the distance of logits to the SEL matrix) live in
//! [`crate::features`], one streaming implementation for features in memory and on disk.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::profile::Group;

/// The centering projector `P = I_k − 11ᵀ/k`: the class-level SEL logit target `WᵀM`.
pub fn centering_projector(k: usize) -> Mat<f64> {
    let off = 1.0 / k as f64;
    Mat::from_fn(k, k, |i, j| if i == j { 1.0 - off } else { -off })
}

/// Frobenius norm.
pub fn frobenius(a: MatRef<'_, f64>) -> f64 {
    a.norm_l2()
}

/// `A / ‖A‖_F`.
///
/// # Errors
/// [`Error::DegenerateNorm`] when `‖A‖_F` is zero or not finite; `what` names `A`.
pub fn normalized(a: MatRef<'_, f64>, what: &'static str) -> Result<Mat<f64>> {
    let norm = frobenius(a);
    if !(norm.is_finite() && norm > 0.0) {
        return Err(Error::DegenerateNorm { what, norm });
    }
    Ok(Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] / norm))
}

/// The normalized distance `‖A/‖A‖_F − B/‖B‖_F‖_F`, in `[0, 2]`.
///
/// # Errors
/// Different shapes; either matrix with zero or non-finite norm.
///
/// ```
/// use seli_core::metrics::{centering_projector, normalized_distance};
/// let p = centering_projector(3);
/// let twice = &p * faer::Scale(2.0);
/// assert!(normalized_distance(p.as_ref(), twice.as_ref()).unwrap() < 1e-15);
/// ```
pub fn normalized_distance(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Result<f64> {
    check_same_shape(a, "first matrix", b, "second matrix")?;
    let (a, b) = (normalized(a, "first matrix")?, normalized(b, "second matrix")?);
    Ok(frobenius((&a - &b).as_ref()))
}

/// Errors with [`Error::ShapeMismatch`] unless `a` and `b` have the same shape.
pub fn check_same_shape(
    a: MatRef<'_, f64>,
    left: &'static str,
    b: MatRef<'_, f64>,
    right: &'static str,
) -> Result<()> {
    if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
        return Err(Error::ShapeMismatch {
            left,
            lr: a.nrows(),
            lc: a.ncols(),
            right,
            rr: b.nrows(),
            rc: b.ncols(),
        });
    }
    Ok(())
}

/// The Gram matrix of the columns, `XᵀX`.
pub fn gram(x: MatRef<'_, f64>) -> Mat<f64> {
    x.transpose() * x
}

/// Column norms read off a Gram matrix: `sqrt(G[c, c])`.
pub fn norms_from_gram(g: MatRef<'_, f64>) -> Vec<f64> {
    (0..g.nrows()).map(|c| g[(c, c)].max(0.0).sqrt()).collect()
}

/// Cosines between columns, read off a Gram matrix: `G[i,j] / sqrt(G[i,i] G[j,j])`.
///
/// # Errors
/// [`Error::DegenerateNorm`] when a column has zero or non-finite norm.
pub fn cosines_from_gram(g: MatRef<'_, f64>, what: &'static str) -> Result<Mat<f64>> {
    let norms = norms_from_gram(g);
    if let Some(&norm) = norms.iter().find(|n| !(n.is_finite() && **n > 0.0)) {
        return Err(Error::DegenerateNorm { what, norm });
    }
    Ok(Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
        if i == j { 1.0 } else { g[(i, j)] / (norms[i] * norms[j]) }
    }))
}

/// Means of the off-diagonal entries of a symmetric k×k matrix over class pairs, grouped.
/// A field is `None` when its group has no pair (one majority class, say).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairMeans {
    /// Mean over pairs of distinct majority classes.
    pub maj_maj: Option<f64>,
    /// Mean over pairs of distinct minority classes.
    pub min_min: Option<f64>,
    /// Mean over (majority, minority) pairs.
    pub maj_min: Option<f64>,
}

/// Group means of the off-diagonal entries of `m` (see [`PairMeans`]).
///
/// # Panics
/// If `groups.len()` differs from the size of `m`.
pub fn pair_means(m: MatRef<'_, f64>, groups: &[Group]) -> PairMeans {
    assert_eq!(m.nrows(), groups.len(), "one group per class");
    let mut sums = [(0.0, 0usize); 3];
    for i in 0..groups.len() {
        for j in (i + 1)..groups.len() {
            let slot = match (groups[i], groups[j]) {
                (Group::Majority, Group::Majority) => 0,
                (Group::Minority, Group::Minority) => 1,
                _ => 2,
            };
            sums[slot].0 += m[(i, j)];
            sums[slot].1 += 1;
        }
    }
    let mean = |(s, n): (f64, usize)| (n > 0).then(|| s / n as f64);
    PairMeans { maj_maj: mean(sums[0]), min_min: mean(sums[1]), maj_min: mean(sums[2]) }
}

/// Per-group means of a per-class quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupMeans {
    /// Mean over majority classes (`None` if there are none).
    pub majority: Option<f64>,
    /// Mean over minority classes (`None` if there are none).
    pub minority: Option<f64>,
}

/// Means of `values` over the majority and over the minority classes.
///
/// # Panics
/// If `values` and `groups` have different lengths.
pub fn group_means(values: &[f64], groups: &[Group]) -> GroupMeans {
    assert_eq!(values.len(), groups.len(), "one group per class");
    let mean = |g: Group| {
        let v: Vec<f64> =
            values.iter().zip(groups).filter(|(_, h)| **h == g).map(|(v, _)| *v).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    GroupMeans { majority: mean(Group::Majority), minority: mean(Group::Minority) }
}

/// Class-level statistics of classifiers `W` and class means `M`, from their Grams.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStats {
    /// `‖w_c‖` for each class.
    pub w_norms: Vec<f64>,
    /// `‖μ_c‖` for each class.
    pub m_norms: Vec<f64>,
    /// `cos(w_c, w_c')`, k×k.
    pub cos_w: Mat<f64>,
    /// `cos(μ_c, μ_c')`, k×k.
    pub cos_m: Mat<f64>,
    /// `cos(w_c, μ_c)` for each class.
    pub cos_w_mu: Vec<f64>,
    /// Group summaries, when the classes have majority/minority groups.
    pub by_group: Option<GroupStats>,
}

/// Majority/minority summaries of [`ClassStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// Classifier cosines averaged over group pairs.
    pub cos_w: PairMeans,
    /// Class-mean cosines averaged over group pairs.
    pub cos_m: PairMeans,
    /// Mean `‖w_c‖²` by group.
    pub w_norm_sq: GroupMeans,
    /// Mean `‖μ_c‖²` by group.
    pub m_norm_sq: GroupMeans,
    /// Mean `cos(w_c, μ_c)` by group.
    pub cos_w_mu: GroupMeans,
    /// `‖w_maj‖² / ‖w_min‖²` (group means of squared norms).
    pub norm_ratio_w: Option<f64>,
    /// `‖μ_maj‖² / ‖μ_min‖²` (group means of squared norms).
    pub norm_ratio_m: Option<f64>,
}

fn ratio(g: GroupMeans) -> Option<f64> {
    Some(g.majority? / g.minority?)
}

impl ClassStats {
    /// Statistics from `G_W = WᵀW`, `G_M = MᵀM` and `WᵀM` (all k×k).
    ///
    /// # Errors
    /// Shapes that are not all k×k with the same k; a class whose classifier or mean is zero.
    pub fn from_grams(
        gram_w: MatRef<'_, f64>,
        gram_m: MatRef<'_, f64>,
        wtm: MatRef<'_, f64>,
        groups: Option<&[Group]>,
    ) -> Result<Self> {
        check_same_shape(gram_w, "G_W", gram_m, "G_M")?;
        check_same_shape(gram_w, "G_W", wtm, "W^T M")?;
        if gram_w.nrows() != gram_w.ncols() {
            return Err(Error::ShapeMismatch {
                left: "G_W",
                lr: gram_w.nrows(),
                lc: gram_w.ncols(),
                right: "its transpose",
                rr: gram_w.ncols(),
                rc: gram_w.nrows(),
            });
        }
        if let Some(g) = groups {
            assert_eq!(g.len(), gram_w.nrows(), "one group per class");
        }
        let w_norms = norms_from_gram(gram_w);
        let m_norms = norms_from_gram(gram_m);
        let cos_w = cosines_from_gram(gram_w, "a classifier w_c")?;
        let cos_m = cosines_from_gram(gram_m, "a class mean mu_c")?;
        let cos_w_mu: Vec<f64> =
            (0..w_norms.len()).map(|c| wtm[(c, c)] / (w_norms[c] * m_norms[c])).collect();
        let by_group = groups.map(|g| {
            let sq = |v: &[f64]| v.iter().map(|x| x * x).collect::<Vec<_>>();
            let w_norm_sq = group_means(&sq(&w_norms), g);
            let m_norm_sq = group_means(&sq(&m_norms), g);
            GroupStats {
                cos_w: pair_means(cos_w.as_ref(), g),
                cos_m: pair_means(cos_m.as_ref(), g),
                w_norm_sq,
                m_norm_sq,
                cos_w_mu: group_means(&cos_w_mu, g),
                norm_ratio_w: ratio(w_norm_sq),
                norm_ratio_m: ratio(m_norm_sq),
            }
        });
        Ok(ClassStats { w_norms, m_norms, cos_w, cos_m, cos_w_mu, by_group })
    }
}

/// The center `μ_G` used by between-class statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Centering {
    /// Unweighted mean of the class means, `(1/k) Σ_c μ_c`: zero at SELI, the choice that
    /// does not distort imbalanced geometry (docs/theory.md, "Centerings").
    ClassMeans,
    /// Sample mean `(1/n) Σ_i h_i` (Papyan, Han and Donoho's convention).
    Samples,
}

/// The top k−1 left singular vectors `U` (d×r) and singular values of the centered class
/// means `M − center 1ᵀ`, dropping negligible directions (below `ε·s_max·max(d, k)`): the
/// support of `Σ_B^†` in NC1. `None` when the means coincide.
pub(crate) fn between_class_directions(
    M: MatRef<'_, f64>,
    center: &[f64],
) -> Result<Option<(Mat<f64>, Vec<f64>)>> {
    let (d, k) = (M.nrows(), M.ncols());
    let Mc = Mat::from_fn(d, k, |r, c| M[(r, c)] - center[r]);
    let svd = Mc
        .thin_svd()
        .map_err(|_| Error::Decomposition { what: "SVD of the centered class means" })?;
    let s = svd.S().column_vector();
    let s_max = if s.nrows() > 0 { s[0] } else { 0.0 };
    let cutoff = f64::EPSILON * s_max * d.max(k) as f64;
    let keep: Vec<usize> = (0..s.nrows().min(k - 1)).filter(|&j| s[j] > cutoff).collect();
    if keep.is_empty() {
        return Ok(None);
    }
    let U = Mat::from_fn(d, keep.len(), |r, j| svd.U()[(r, keep[j])]);
    Ok(Some((U, keep.iter().map(|&j| s[j]).collect())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_scale_invariant_and_bounded() {
        let a = Mat::from_fn(3, 2, |i, j| (i + 2 * j) as f64 - 1.5);
        let b = Mat::from_fn(3, 2, |i, j| (i * j) as f64 + 0.25);
        let d = normalized_distance(a.as_ref(), b.as_ref()).unwrap();
        let a7 = &a * faer::Scale(7.0);
        assert!((normalized_distance(a7.as_ref(), b.as_ref()).unwrap() - d).abs() < 1e-14);
        let neg = &a * faer::Scale(-1.0);
        assert!((normalized_distance(a.as_ref(), neg.as_ref()).unwrap() - 2.0).abs() < 1e-14);
        assert!(normalized_distance(a.as_ref(), a.as_ref()).unwrap() < 1e-15);
    }

    #[test]
    fn distance_rejects_zero_and_shape_mismatch() {
        let z = Mat::<f64>::zeros(2, 2);
        let e = normalized_distance(z.as_ref(), centering_projector(2).as_ref()).unwrap_err();
        assert!(e.to_string().contains("first matrix has Frobenius norm 0"), "{e}");
        let e =
            normalized_distance(centering_projector(3).as_ref(), centering_projector(2).as_ref())
                .unwrap_err();
        assert!(e.to_string().contains("is 3x3 but second matrix is 2x2"), "{e}");
    }

    #[test]
    fn projector_is_idempotent_and_centers() {
        let p = centering_projector(5);
        let pp = &p * &p;
        assert!(frobenius((&pp - &p).as_ref()) < 1e-15);
        for i in 0..5 {
            assert!((0..5).map(|j| p[(i, j)]).sum::<f64>().abs() < 1e-15);
        }
    }

    #[test]
    fn cosines_and_group_means_by_hand() {
        // Columns (1,0), (0,2), (-1,-1): norms 1, 2, sqrt 2.
        let x = Mat::from_fn(2, 3, |i, j| [[1.0, 0.0, -1.0], [0.0, 2.0, -1.0]][i][j]);
        let g = gram(x.as_ref());
        assert_eq!(norms_from_gram(g.as_ref()), vec![1.0, 2.0, 2f64.sqrt()]);
        let c = cosines_from_gram(g.as_ref(), "x").unwrap();
        assert!((c[(0, 2)] + 1.0 / 2f64.sqrt()).abs() < 1e-15);
        assert!(c[(0, 1)].abs() < 1e-15);
        let groups = [Group::Majority, Group::Majority, Group::Minority];
        let pm = pair_means(c.as_ref(), &groups);
        assert_eq!(pm.maj_maj, Some(0.0));
        assert_eq!(pm.min_min, None);
        let expect = (-1.0 / 2f64.sqrt() - 2.0 / (2.0 * 2f64.sqrt())) / 2.0;
        assert!((pm.maj_min.unwrap() - expect).abs() < 1e-15);
        let gm = group_means(&[1.0, 3.0, 5.0], &groups);
        assert_eq!((gm.majority, gm.minority), (Some(2.0), Some(5.0)));
        let zero_col = Mat::from_fn(2, 2, |i, _| i as f64 * 0.0);
        assert!(cosines_from_gram(gram(zero_col.as_ref()).as_ref(), "w").is_err());
    }
}
