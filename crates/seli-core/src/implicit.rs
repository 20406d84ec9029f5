//! The implicit-geometry target of a loss (docs/theory.md §10): the certified solution `B` of
//! the loss's class-level max-margin problem, turned into the Grams of the classifiers and of
//! the class means that a bias-free-regularization UFM reaches in direction.
//!
//! With `B = U Σ Vᵀ` (k×k) the logits are `X = B D^{-1/2} Y`, and the balanced factorization
//! `X = WᵀH` of least `½(‖W‖² + ‖H‖²) = ‖B‖_*` gives `G_W = WᵀW = U Σ Uᵀ`,
//! `G_M = MᵀM = D^{-1/2} V Σ Vᵀ D^{-1/2}` and `WᵀM = B D^{-1/2}`. For plain cross-entropy
//! `B = P D^{1/2}` and these are the SELI Grams.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::metrics::ClassStats;
use crate::profile::Profile;
use crate::solve::svm::{MarginSolution, solve_margin};

/// Relative duality gap of the targets seli reports ([`Target::certified`]).
pub const TARGET_TOL: f64 = 1e-10;

/// The certified max-margin geometry of a loss for a profile.
#[derive(Debug, Clone)]
pub struct Target {
    loss: Loss,
    profile: Profile,
    solution: MarginSolution,
    singular_values: Vec<f64>,
    gram_w: Mat<f64>,
    gram_m: Mat<f64>,
    wtm: Mat<f64>,
}

impl Target {
    /// Solves the max-margin problem of `loss` for `profile` to a relative duality gap `tol`.
    ///
    /// # Errors
    /// `tol` not positive; decompositions failing.
    pub fn solve(
        profile: &Profile,
        loss: Loss,
        tol: f64,
        max_iters: u64,
        seed: u64,
    ) -> Result<Self> {
        let problem = loss.margin_problem(profile);
        let solution = solve_margin(&problem, tol, max_iters, seed)?;
        let k = profile.k();
        let svd = solution
            .B
            .thin_svd()
            .map_err(|_| Error::Decomposition { what: "SVD of the max-margin solution" })?;
        let (U, V) = (svd.U(), svd.V());
        let s: Vec<f64> = (0..k).map(|i| svd.S().column_vector()[i]).collect();
        let inv_sqrt_n: Vec<f64> = problem.sqrt_n.iter().map(|x| 1.0 / x).collect();
        let sym = |f: &dyn Fn(usize, usize) -> f64| {
            let G = Mat::from_fn(k, k, f);
            Mat::from_fn(k, k, |i, j| 0.5 * (G[(i, j)] + G[(j, i)]))
        };
        let gram_w = sym(&|i, j| (0..k).map(|q| U[(i, q)] * s[q] * U[(j, q)]).sum());
        let gram_m = sym(&|i, j| {
            inv_sqrt_n[i]
                * inv_sqrt_n[j]
                * (0..k).map(|q| V[(i, q)] * s[q] * V[(j, q)]).sum::<f64>()
        });
        let wtm = Mat::from_fn(k, k, |i, j| solution.B[(i, j)] * inv_sqrt_n[j]);
        Ok(Target {
            loss,
            profile: profile.clone(),
            solution,
            singular_values: s,
            gram_w,
            gram_m,
            wtm,
        })
    }

    /// The target every command reports: solved to the relative gap [`TARGET_TOL`] (at most
    /// 200 000 ADMM iterations, seed 0).
    ///
    /// # Errors
    /// Decompositions failing.
    pub fn certified(profile: &Profile, loss: Loss) -> Result<Self> {
        Target::solve(profile, loss, TARGET_TOL, 200_000, 0)
    }

    /// The loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Number of classes.
    pub fn k(&self) -> usize {
        self.profile.k()
    }

    /// The certified solution (`B`, bias, primal, dual, gap, iterations, multipliers).
    pub fn solution(&self) -> &MarginSolution {
        &self.solution
    }

    /// Singular values of `B` (non-increasing): the target's spectrum; `rank` counts those
    /// above `1e-6` of the largest.
    pub fn singular_values(&self) -> &[f64] {
        &self.singular_values
    }

    /// Rank of the target's logits (singular values above 1e-6 of the largest).
    pub fn rank(&self) -> usize {
        let top = self.singular_values.first().copied().unwrap_or(0.0);
        self.singular_values.iter().filter(|&&s| s > 1e-6 * top).count()
    }

    /// `‖B‖_* = ½(‖W‖² + ‖H‖²)` at the target (margins at least 1).
    pub fn nuclear_norm(&self) -> f64 {
        self.solution.primal
    }

    /// Classifier Gram `WᵀW` (k×k).
    pub fn gram_w(&self) -> MatRef<'_, f64> {
        self.gram_w.as_ref()
    }

    /// Class-mean Gram `MᵀM` (k×k).
    pub fn gram_m(&self) -> MatRef<'_, f64> {
        self.gram_m.as_ref()
    }

    /// Class-level logits `WᵀM = B D^{-1/2}` (column c: the logits of class c's samples, before
    /// the bias).
    pub fn logit_target(&self) -> MatRef<'_, f64> {
        self.wtm.as_ref()
    }

    /// The bias at the target (mean zero), when the loss has a free one.
    pub fn bias(&self) -> Option<&[f64]> {
        self.solution.b.as_deref()
    }

    /// Norms, cosines and group summaries of the target's classifiers and class means.
    ///
    /// # Errors
    /// A class whose classifier or mean is zero at the target.
    pub fn stats(&self) -> Result<ClassStats> {
        ClassStats::from_grams(
            self.gram_w(),
            self.gram_m(),
            self.logit_target(),
            self.profile.groups(),
        )
    }
}

/// The Grams a measurement is compared with besides SELI and the ETF: a loss's implicit-geometry
/// target (the `dist_*_target` columns).
#[derive(Debug, Clone)]
pub struct LossTarget {
    /// Classifier Gram.
    pub gram_w: Mat<f64>,
    /// Class-mean Gram.
    pub gram_m: Mat<f64>,
}

impl LossTarget {
    /// The target of a certified solve.
    pub fn of(t: &Target) -> Self {
        LossTarget { gram_w: t.gram_w().to_owned(), gram_m: t.gram_m().to_owned() }
    }

    /// SELI's Grams (the target of cross-entropy without a bias).
    pub fn seli(g: &crate::Geometry) -> Self {
        LossTarget { gram_w: g.gram_w().to_owned(), gram_m: g.gram_m().to_owned() }
    }

    /// The target of `loss` for `profile`: `None` when it is SELI's
    /// ([`Loss::target_is_seli`]), else [`Target::certified`].
    ///
    /// # Errors
    /// A solve that fails.
    pub fn solve(profile: &Profile, loss: Loss) -> Result<Option<Self>> {
        if loss.target_is_seli() {
            return Ok(None);
        }
        Ok(Some(LossTarget::of(&Target::certified(profile, loss)?)))
    }
}
