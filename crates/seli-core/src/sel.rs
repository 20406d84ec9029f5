//! The SEL matrix and the SELI geometry, at class level (docs/theory.md §3).
//!
//! The SEL matrix `Ẑ = PY` (k×n) has rank k−1 and equal columns within a class, so all of
//! its geometry follows from the k×k matrix `A = ẐẐᵀ = P D P` with `D = diag(n_c)`:
//!
//! - singular values of `Ẑ`: square roots of the k−1 nonzero eigenvalues of `A`;
//! - classifier Gram `G_W = WᵀW = A^{1/2}`;
//! - class-mean Gram `G_M = MᵀM = (A^†)^{1/2}`;
//! - `WᵀM = P` (the class-level logit target), so `M = W (WᵀW)^†`.
//!
//! `A` is positive definite on `1^⊥` (there `xᵀAx = xᵀDx >= n_min ‖x‖²`) and `A1 = 0`,
//! so the one zero eigenvalue is separated from the others by at least `n_min`: dropping the
//! smallest eigenpair is exact, not a rank guess. Cost: one symmetric eigendecomposition of
//! a k×k matrix, O(k³) time and O(k²) memory, whatever n is. Nothing n×n or k×n is formed.
#![allow(non_snake_case)]

use faer::{Mat, MatRef, Side};

use crate::error::{Error, Result};
use crate::metrics::{ClassStats, centering_projector, normalized_distance};
use crate::profile::Profile;
use crate::random::{random_orthonormal, rng_from_seed};

/// Largest k for which [`Geometry::new`] forms its k×k matrices (a few of them, 800 MB each
/// at this size, and an O(k³) eigendecomposition of minutes).
pub const MAX_GEOMETRY_CLASSES: usize = 10_000;

/// Largest `d·k` of a [`Realization`] (two d×k matrices of f64, 800 MB each at this size).
pub const MAX_REALIZATION_ENTRIES: u128 = 100_000_000;

/// The exact SELI geometry of a class-count profile (scale α = 1).
///
/// Guarantees: `singular_values` has k−1 entries, positive and non-increasing; column `i` of
/// [`Geometry::left_singular_vectors`] belongs to `singular_values[i]` and is orthogonal to
/// the all-ones vector; `gram_w` and `gram_m` are symmetric, annihilate the all-ones vector
/// and satisfy `G_W G_M = P` to rounding.
///
/// Accuracy: the eigensolver is backward stable, with absolute eigenvalue error about
/// `ε·n_max`, while the smallest nonzero eigenvalue is at least `n_min`. With
/// `κ = n_max/n_min`, entries of `G_W` are accurate to about `ε·√κ·‖G_W‖` and entries of
/// `G_M` to about `ε·κ·‖G_M‖` (ε the machine epsilon): 1e-12 relative at R = 10⁴.
///
/// ```
/// use seli_core::{Geometry, Profile};
/// let g = Geometry::new(&Profile::step(4, 10.0, 0.5, 1).unwrap()).unwrap();
/// // docs/theory.md §9: singular values (sqrt 10, sqrt 5.5, 1).
/// assert!((g.singular_values()[0] - 10f64.sqrt()).abs() < 1e-12);
/// assert!((g.nuclear_norm() - 6.507486).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Geometry {
    profile: Profile,
    singular_values: Vec<f64>,
    U: Mat<f64>,
    gram_w: Mat<f64>,
    gram_m: Mat<f64>,
}

/// A concrete SELI realization in `d` dimensions: classifiers `W` and class means `M`.
#[derive(Debug, Clone)]
pub struct Realization {
    /// Embedding dimension.
    pub d: usize,
    /// Seed of the random orthonormal frame.
    pub seed: u64,
    /// Classifiers, d×k (column c is `w_c`).
    pub W: Mat<f64>,
    /// Class means, d×k (column c is `μ_c`).
    pub M: Mat<f64>,
    /// `max |WᵀM − P|`, the check that the realization has the SELI logits.
    pub wtm_residual: f64,
}

impl Geometry {
    /// The SELI geometry of `profile`.
    ///
    /// # Errors
    /// [`Error::TooManyClasses`] above [`MAX_GEOMETRY_CLASSES`]; [`Error::Decomposition`] if
    /// the eigensolver fails to converge.
    pub fn new(profile: &Profile) -> Result<Self> {
        let k = profile.k();
        if k > MAX_GEOMETRY_CLASSES {
            return Err(Error::TooManyClasses {
                k,
                max: MAX_GEOMETRY_CLASSES,
                what: "the k x k geometry",
            });
        }
        let n: Vec<f64> = profile.counts().iter().map(|&c| c as f64).collect();
        let total: f64 = n.iter().sum();
        let kf = k as f64;
        // A = P D P, entrywise: n_i δ_ij − (n_i + n_j)/k + N/k².
        let A = Mat::from_fn(k, k, |i, j| {
            let diag = if i == j { n[i] } else { 0.0 };
            diag - (n[i] + n[j]) / kf + total / (kf * kf)
        });
        let evd = A.self_adjoint_eigen(Side::Lower).map_err(|_| Error::Decomposition {
            what: "symmetric eigendecomposition of A = P D P",
        })?;
        let (eigvals, eigvecs) = (evd.S().column_vector(), evd.U());
        // Eigenvalues ascend; index 0 is the null direction 1/sqrt(k). Reverse the rest.
        let order: Vec<usize> = (1..k).rev().collect();
        let singular_values: Vec<f64> = order.iter().map(|&i| eigvals[i].max(0.0).sqrt()).collect();
        let U = Mat::from_fn(k, k - 1, |r, c| eigvecs[(r, order[c])]);
        let gram_w = spectral(U.as_ref(), &singular_values, |s| s);
        let gram_m = spectral(U.as_ref(), &singular_values, |s| 1.0 / s);
        Ok(Geometry { profile: profile.clone(), singular_values, U, gram_w, gram_m })
    }

    /// The profile this geometry belongs to.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Number of classes.
    pub fn k(&self) -> usize {
        self.profile.k()
    }

    /// The k−1 nonzero singular values of `Ẑ`, non-increasing.
    pub fn singular_values(&self) -> &[f64] {
        &self.singular_values
    }

    /// Left singular vectors `U` of `Ẑ` (k×(k−1)), column `i` for `singular_values()[i]`.
    pub fn left_singular_vectors(&self) -> MatRef<'_, f64> {
        self.U.as_ref()
    }

    /// `‖Ẑ‖_*`, the sum of the singular values (= `‖W‖_F² = ‖H‖_F²` at SELI).
    pub fn nuclear_norm(&self) -> f64 {
        self.singular_values.iter().sum()
    }

    /// `‖Ẑ‖_F² = n(1 − 1/k)`, computed from the spectrum as a consistency check.
    pub fn frobenius_sq(&self) -> f64 {
        self.singular_values.iter().map(|s| s * s).sum()
    }

    /// SELI classifier Gram `G_W = WᵀW = (P D P)^{1/2}` (k×k).
    pub fn gram_w(&self) -> MatRef<'_, f64> {
        self.gram_w.as_ref()
    }

    /// SELI class-mean Gram `G_M = MᵀM = ((P D P)^†)^{1/2}` (k×k).
    pub fn gram_m(&self) -> MatRef<'_, f64> {
        self.gram_m.as_ref()
    }

    /// The class-level logit target `WᵀM = P = I − 11ᵀ/k` (the SEL matrix's columns by class).
    /// The ETF has the same logit target, up to scale.
    pub fn logit_target(&self) -> Mat<f64> {
        centering_projector(self.k())
    }

    /// The ETF classifier Gram at the same total sample count: `sqrt(n/k) P` (the SELI `G_W`
    /// of a balanced profile with n/k samples per class). Only its direction matters for
    /// normalized distances.
    pub fn etf_gram_w(&self) -> Mat<f64> {
        centering_projector(self.k()) * faer::Scale(self.balanced_scale())
    }

    /// The ETF class-mean Gram at the same total sample count: `P / sqrt(n/k)`.
    pub fn etf_gram_m(&self) -> Mat<f64> {
        centering_projector(self.k()) * faer::Scale(1.0 / self.balanced_scale())
    }

    fn balanced_scale(&self) -> f64 {
        (self.profile.n() as f64 / self.k() as f64).sqrt()
    }

    /// `dist(G_W^SELI, G_W^ETF)`: how far SELI classifiers are from the simplex ETF.
    pub fn dist_gram_w_etf(&self) -> f64 {
        normalized_distance(self.gram_w(), self.etf_gram_w().as_ref())
            .expect("SELI and ETF Grams are nonzero k×k matrices")
    }

    /// `dist(G_M^SELI, G_M^ETF)`: how far SELI class means are from the simplex ETF.
    pub fn dist_gram_m_etf(&self) -> f64 {
        normalized_distance(self.gram_m(), self.etf_gram_m().as_ref())
            .expect("SELI and ETF Grams are nonzero k×k matrices")
    }

    /// Norms, cosines and group summaries of the SELI classifiers and class means.
    pub fn stats(&self) -> ClassStats {
        ClassStats::from_grams(
            self.gram_w(),
            self.gram_m(),
            self.logit_target().as_ref(),
            self.profile.groups(),
        )
        .expect("SELI Grams are k×k with positive diagonals")
    }

    /// A concrete realization in `d >= k−1` dimensions: `W = R Λ^{1/2} Uᵀ`,
    /// `M = R Λ^{-1/2} Uᵀ` with `R` a seeded random d×(k−1) orthonormal frame. Then
    /// `WᵀW = G_W`, `MᵀM = G_M` and `WᵀM = P`; the last is measured into `wtm_residual`.
    ///
    /// # Errors
    /// [`Error::DimensionTooSmall`] if `d < k−1`; [`Error::RealizationTooLarge`] if `d·k`
    /// exceeds [`MAX_REALIZATION_ENTRIES`].
    pub fn realize(&self, d: usize, seed: u64) -> Result<Realization> {
        let k = self.k();
        if d < k - 1 {
            return Err(Error::DimensionTooSmall { d, k });
        }
        let entries = d as u128 * k as u128;
        if entries > MAX_REALIZATION_ENTRIES {
            return Err(Error::RealizationTooLarge { d, k, entries, max: MAX_REALIZATION_ENTRIES });
        }
        let R = random_orthonormal(d, k - 1, &mut rng_from_seed(seed));
        let scaled = |f: fn(f64) -> f64| {
            let coef = Mat::from_fn(k - 1, k, |i, c| f(self.singular_values[i]) * self.U[(c, i)]);
            &R * &coef
        };
        let W = scaled(|s| s.sqrt());
        let M = scaled(|s| 1.0 / s.sqrt());
        let wtm = W.transpose() * &M;
        let wtm_residual = (&wtm - &self.logit_target()).norm_max();
        Ok(Realization { d, seed, W, M, wtm_residual })
    }
}

/// `U diag(f(σ)) Uᵀ`, symmetrized.
fn spectral(U: MatRef<'_, f64>, sigma: &[f64], f: impl Fn(f64) -> f64) -> Mat<f64> {
    let scaled = Mat::from_fn(U.nrows(), U.ncols(), |r, c| U[(r, c)] * f(sigma[c]));
    let G = &scaled * U.transpose();
    Mat::from_fn(G.nrows(), G.ncols(), |i, j| 0.5 * (G[(i, j)] + G[(j, i)]))
}
