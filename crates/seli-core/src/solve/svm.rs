//! The max-margin problem at class level: the nuclear-norm SVM (docs/theory.md §5).
//!
//! For `d >= k − 1` the UF-SVM is equivalent to `min ‖X‖_*` subject to
//! `X[y_i, i] − X[c, i] >= 1` for every sample and every other class. By the same class-level
//! symmetry as the ridge problem (convex, invariant to permuting samples of a class) the
//! solution is `X = C Y`; with `B = C D^{1/2}`:
//!
//! ```text
//! min_B ‖B‖_*   subject to   B[c,c] − B[j,c] >= √n_c   for every class c and j ≠ c.
//! ```
//!
//! The paper's theorem says the unique solution is the SEL matrix, `B = P D^{1/2}`. This
//! module does not assume it: it solves the problem by ADMM (singular-value thresholding
//! alternating with an exact projection onto the constraints, with residual balancing), and
//! certifies the result with a dual feasible point. The dual is
//! `max Σ_{c, j≠c} α_{cj} √n_c` over `α >= 0` with `‖Γ(α)‖_2 <= 1`, where column c of `Γ(α)` is
//! `Σ_j α_{cj}(e_c − e_j)`. The candidate `α` is read off the polar factor `U Vᵀ` of the
//! solution (the KKT conditions force `Γ = U Vᵀ`), clipped at 0 and scaled into the ball.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::metrics::{centering_projector, normalized_distance};
use crate::profile::Profile;
use crate::solve::{nuclear, svt};

/// The solved max-margin problem.
#[derive(Debug, Clone)]
pub struct SvmSolution {
    /// The feasible solution `B` (k×k), `X = B D^{-1/2} Y`.
    pub B: Mat<f64>,
    /// `‖X‖_* = ‖B‖_*` at the feasible point.
    pub primal: f64,
    /// Dual objective of the certificate (a lower bound on the optimum).
    pub dual: f64,
    /// `primal − dual >= 0`: bounds the suboptimality.
    pub gap: f64,
    /// ADMM iterations.
    pub iters: u64,
    /// The dual multipliers `α` (k×k, zero diagonal): entry `(j, c)` for the constraint of
    /// class c against class j.
    pub alpha: Mat<f64>,
    /// Normalized distance between X and the SEL matrix `Ẑ`.
    pub dist_to_sel: f64,
    /// `max |B − P D^{1/2}|`: the distance to the SEL matrix at its own scale.
    pub max_abs_diff_sel: f64,
    /// `‖Ẑ‖_*`, the optimum the theorem predicts.
    pub sel_nuclear_norm: f64,
}

/// Projection of `a` onto `{b : b_c − b_j >= t for all j ≠ c}`: `b_c = β`, `b_j = min(a_j, β − t)`
/// with β from the optimality condition over the sorted entries.
fn project_column(a: &mut [f64], c: usize, t: f64) {
    let mut others: Vec<f64> =
        a.iter().enumerate().filter(|&(j, _)| j != c).map(|(_, &v)| v).collect();
    others.sort_by(|x, y| y.total_cmp(x));
    let mut sum = a[c];
    let mut beta = a[c];
    for (m, &v) in others.iter().enumerate() {
        // With the top m entries active, β = (a_c + Σ_top (a_j + t)) / (1 + m).
        beta = sum / (1 + m) as f64;
        if v <= beta - t {
            break;
        }
        sum += v + t;
        beta = sum / (m + 2) as f64;
    }
    for (j, x) in a.iter_mut().enumerate() {
        if j == c {
            *x = beta;
        } else {
            *x = x.min(beta - t);
        }
    }
}

fn project(A: &Mat<f64>, sqrt_n: &[f64]) -> Mat<f64> {
    let k = A.nrows();
    let mut out = A.clone();
    for c in 0..k {
        let mut col: Vec<f64> = (0..k).map(|j| A[(j, c)]).collect();
        project_column(&mut col, c, sqrt_n[c]);
        for j in 0..k {
            out[(j, c)] = col[j];
        }
    }
    out
}

/// The dual certificate for a feasible `B`: multipliers from its polar factor, scaled into
/// the feasible set; returns `(α, dual objective)`.
fn certificate(B: MatRef<'_, f64>, sqrt_n: &[f64]) -> Result<(Mat<f64>, f64)> {
    let k = B.nrows();
    let svd = B.thin_svd().map_err(|_| Error::Decomposition { what: "SVD of the solution" })?;
    let s = svd.S().column_vector();
    let s_max = if s.nrows() > 0 { s[0] } else { 0.0 };
    let (U, V) = (svd.U(), svd.V());
    let r = (0..s.nrows()).filter(|&i| s[i] > 1e-9 * s_max).count();
    let polar = Mat::from_fn(k, k, |i, j| (0..r).map(|q| U[(i, q)] * V[(j, q)]).sum::<f64>());
    let alpha = Mat::from_fn(k, k, |j, c| if j == c { 0.0 } else { (-polar[(j, c)]).max(0.0) });
    let gamma = Mat::from_fn(k, k, |j, c| {
        if j == c {
            (0..k).filter(|&i| i != c).map(|i| alpha[(i, c)]).sum()
        } else {
            -alpha[(j, c)]
        }
    });
    let norm =
        gamma.singular_values().map_err(|_| Error::Decomposition { what: "singular values" })?[0];
    if norm.is_nan() || norm <= 0.0 {
        return Ok((alpha, 0.0));
    }
    let alpha = &alpha * faer::Scale(1.0 / norm.max(1.0));
    let dual = (0..k)
        .map(|c| sqrt_n[c] * (0..k).filter(|&j| j != c).map(|j| alpha[(j, c)]).sum::<f64>())
        .sum();
    Ok((alpha, dual))
}

/// Solves the class-level nuclear-norm SVM of `profile` to a relative duality gap `tol`.
///
/// ADMM starts from the projection of a seeded random matrix (`seed`), not from the
/// projection of 0: that one is the SEL matrix itself (the feasible point of least Frobenius
/// norm), and starting there would assume the answer instead of finding it.
///
/// # Errors
/// `tol` not positive; decomposition failures.
pub fn solve_svm(profile: &Profile, tol: f64, max_iters: u64, seed: u64) -> Result<SvmSolution> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::InvalidParameter {
            name: "tol",
            value: tol.to_string(),
            rule: "must be a finite number > 0",
        });
    }
    let k = profile.k();
    let sqrt_n: Vec<f64> = profile.counts().iter().map(|&c| (c as f64).sqrt()).collect();
    let scale = sqrt_n.iter().sum::<f64>() / k as f64;
    let start =
        crate::random::gaussian_matrix(k, k, 2.0 * scale, &mut crate::random::rng_from_seed(seed));
    let mut Z = project(&start, &sqrt_n);
    let mut U = Mat::<f64>::zeros(k, k);
    let mut rho = 1.0 / scale;
    let mut iters = 0;
    let mut best: Option<(Mat<f64>, f64, Mat<f64>, f64)> = None;
    while iters < max_iters {
        iters += 1;
        let (B, _) = svt((&Z - &U).as_ref(), 1.0 / rho)?;
        let Z_old = Z.clone();
        Z = project(&(&B + &U), &sqrt_n);
        U = &U + &B - &Z;
        let r_primal = (&B - &Z).norm_l2();
        let r_dual = rho * (&Z - &Z_old).norm_l2();
        if iters % 10 == 0 || iters == max_iters {
            let primal = nuclear(Z.as_ref())?;
            let (alpha, dual) = certificate(Z.as_ref(), &sqrt_n)?;
            if best.as_ref().is_none_or(|b| primal - dual < b.1 - b.3) {
                best = Some((Z.clone(), primal, alpha, dual));
            }
            if primal - dual <= tol * primal.max(1.0) {
                break;
            }
        }
        // Residual balancing: keep the primal and dual residuals within a factor 10.
        if r_primal > 10.0 * r_dual {
            rho *= 2.0;
            U = &U * faer::Scale(0.5);
        } else if r_dual > 10.0 * r_primal {
            rho *= 0.5;
            U = &U * faer::Scale(2.0);
        }
    }
    let (B, primal, alpha, dual) = best.expect("at least one certificate is computed");
    let P = centering_projector(k);
    let sel = Mat::from_fn(k, k, |i, j| P[(i, j)] * sqrt_n[j]);
    Ok(SvmSolution {
        dist_to_sel: normalized_distance(B.as_ref(), sel.as_ref())?,
        max_abs_diff_sel: (&B - &sel).norm_max(),
        sel_nuclear_norm: nuclear(sel.as_ref())?,
        gap: (primal - dual).max(0.0),
        B,
        primal,
        dual,
        iters,
        alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_feasible_and_closest() {
        let mut a = vec![0.3, 1.0, -0.2, 0.9];
        project_column(&mut a, 0, 1.0);
        for j in 1..4 {
            assert!(a[0] - a[j] >= 1.0 - 1e-12, "{a:?}");
        }
        // Hand solution: β = (0.3 + (1 + 1) + (0.9 + 1)) / 3 = 1.4; b = (1.4, 0.4, −0.2, 0.4).
        for (x, y) in a.iter().zip([1.4, 0.4, -0.2, 0.4]) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        let mut b = vec![5.0, 0.0, 1.0];
        project_column(&mut b, 0, 1.0);
        assert_eq!(b, vec![5.0, 0.0, 1.0], "feasible points stay");
    }
}
