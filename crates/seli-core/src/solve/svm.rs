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

/// A class-level max-margin problem (docs/theory.md §5 and §10):
///
/// ```text
/// min ‖B‖_*  over B (k×k) [and a free b ∈ R^k when `bias`]  subject to
///     a_c B[c,c] − a_j B[j,c] + s_c (b_c − b_j) >= t_c     for every class c and j ≠ c,
/// ```
///
/// with `s_c = √n_c`. Column c of `B` is `√n_c` times the logits of class c's samples,
/// `X = B D^{-1/2} Y`. Plain cross-entropy: `a = 1`, `t_c = √n_c`, no bias; its solution is the
/// SEL matrix `P D^{1/2}`.
#[derive(Debug, Clone, PartialEq)]
pub struct MarginProblem {
    /// `√n_c`.
    pub sqrt_n: Vec<f64>,
    /// Row weights `a_c > 0` (the logit scales Δ of CDT; 1 otherwise).
    pub a: Vec<f64>,
    /// Thresholds `t_c > 0`.
    pub t: Vec<f64>,
    /// Whether the logits have a free (unregularized) bias.
    pub bias: bool,
}

impl MarginProblem {
    /// Plain cross-entropy without a bias: `a = 1`, `t_c = √n_c`.
    pub fn ce(profile: &Profile) -> Self {
        let sqrt_n: Vec<f64> = profile.counts().iter().map(|&c| (c as f64).sqrt()).collect();
        MarginProblem { a: vec![1.0; sqrt_n.len()], t: sqrt_n.clone(), sqrt_n, bias: false }
    }

    /// Number of classes.
    pub fn k(&self) -> usize {
        self.sqrt_n.len()
    }

    fn check(&self) -> Result<()> {
        let k = self.k();
        let positive = |v: &[f64]| v.len() == k && v.iter().all(|x| x.is_finite() && *x > 0.0);
        if k < 2 || !positive(&self.sqrt_n) || !positive(&self.a) || !positive(&self.t) {
            return Err(Error::InvalidParameter {
                name: "margin problem",
                value: format!("k = {k}, a = {:?}, t = {:?}", self.a, self.t),
                rule: "needs k >= 2 and positive finite counts, weights and thresholds",
            });
        }
        Ok(())
    }

    /// Thresholds of column c's constraints against each j when the bias is fixed at `b`:
    /// `t_c − s_c (b_c − b_j)`.
    fn fixed_bias_thresholds(&self, c: usize, b: &[f64]) -> Vec<f64> {
        (0..self.k()).map(|j| self.t[c] - self.sqrt_n[c] * (b[c] - b[j])).collect()
    }
}

/// The solved class-level max-margin problem.
#[derive(Debug, Clone)]
pub struct MarginSolution {
    /// The feasible solution `B` (k×k).
    pub B: Mat<f64>,
    /// The bias (mean zero), when the problem has one.
    pub b: Option<Vec<f64>>,
    /// `‖B‖_*` at the feasible point.
    pub primal: f64,
    /// Dual objective of the certificate (a lower bound on the optimum).
    pub dual: f64,
    /// `primal − dual >= 0`.
    pub gap: f64,
    /// ADMM iterations.
    pub iters: u64,
    /// The dual multipliers `α` (k×k, zero diagonal): entry `(j, c)` for the constraint of
    /// class c against class j.
    pub alpha: Mat<f64>,
}

/// Projects column c of a candidate onto its constraints: `x` (column c of B) and, with a bias,
/// `v` (the bias copy of this column), both moved in place; `t[j]` is the threshold of the
/// constraint against j. With `u = a_c x_c + s v_c` every other constraint reads
/// `a_j x_j + s v_j <= u − t_j`; for a given u each violated one moves along its normal, and u
/// minimizes a convex piecewise quadratic whose breakpoints are visited in descending order.
fn project_column(x: &mut [f64], v: Option<&mut [f64]>, c: usize, a: &[f64], s: f64, t: &[f64]) {
    let k = x.len();
    let s = if v.is_some() { s } else { 0.0 };
    let vv = |j: usize, v: &Option<&mut [f64]>| v.as_ref().map_or(0.0, |v| v[j]);
    let p: Vec<f64> = (0..k).map(|j| a[j] * x[j] + s * vv(j, &v)).collect();
    let q: Vec<f64> = (0..k).map(|j| a[j] * a[j] + s * s).collect();
    let mut order: Vec<usize> = (0..k).filter(|&j| j != c).collect();
    let e = |j: usize| p[j] + t[j];
    order.sort_by(|&i, &j| e(j).total_cmp(&e(i)));
    let (mut num, mut den) = (p[c] / q[c], 1.0 / q[c]);
    let mut u = p[c];
    for &j in &order {
        if e(j) <= u {
            break;
        }
        num += e(j) / q[j];
        den += 1.0 / q[j];
        u = num / den;
    }
    let mut v = v;
    let mut shift = |j: usize, by: f64| {
        x[j] += by * a[j];
        if let Some(v) = v.as_mut() {
            v[j] += by * s;
        }
    };
    shift(c, (u - p[c]) / q[c]);
    for &j in &order {
        if e(j) > u {
            shift(j, -(e(j) - u) / q[j]);
        }
    }
}

/// Column by column, the projection of `A` (and, with a bias, of the per-column bias copies
/// `V`, column c for column c) onto the constraints; `fixed` gives the bias when it is held
/// fixed instead.
fn project(
    p: &MarginProblem,
    A: &Mat<f64>,
    V: Option<&mut Mat<f64>>,
    fixed: Option<&[f64]>,
) -> Mat<f64> {
    let k = A.nrows();
    let mut out = A.clone();
    let mut V = V;
    for c in 0..k {
        let mut col: Vec<f64> = (0..k).map(|j| A[(j, c)]).collect();
        let t = match fixed {
            Some(b) => p.fixed_bias_thresholds(c, b),
            None => vec![p.t[c]; k],
        };
        match V.as_mut() {
            Some(V) => {
                let mut vc: Vec<f64> = (0..k).map(|j| V[(j, c)]).collect();
                project_column(&mut col, Some(&mut vc), c, &p.a, p.sqrt_n[c], &t);
                for j in 0..k {
                    V[(j, c)] = vc[j];
                }
            }
            None => project_column(&mut col, None, c, &p.a, 0.0, &t),
        }
        for j in 0..k {
            out[(j, c)] = col[j];
        }
    }
    out
}

/// Scales a nonnegative matrix `F` (zero diagonal) by `X F X^{-1}` (X diagonal, Osborne's
/// iteration) until each node's column sum equals its row sum: a circulation. `None` when the
/// sums cannot be balanced (a node with flow only one way).
fn balance(F: &Mat<f64>) -> Option<Mat<f64>> {
    let k = F.nrows();
    let mut x = vec![1.0f64; k];
    for _ in 0..1_000 {
        let mut worst = 0.0f64;
        for m in 0..k {
            let row: f64 = (0..k).filter(|&c| c != m).map(|c| F[(m, c)] * x[m] / x[c]).sum();
            let col: f64 = (0..k).filter(|&j| j != m).map(|j| F[(j, m)] * x[j] / x[m]).sum();
            if row == 0.0 && col == 0.0 {
                continue;
            }
            if row == 0.0 || col == 0.0 {
                return None;
            }
            worst = worst.max((row - col).abs() / (row + col));
            x[m] *= (col / row).sqrt();
        }
        if worst < 1e-14 {
            break;
        }
    }
    Some(Mat::from_fn(k, k, |j, c| if j == c { 0.0 } else { F[(j, c)] * x[j] / x[c] }))
}

/// A dual point from a candidate subgradient `G` of the nuclear norm: multipliers read off its
/// off-diagonal entries (nonnegative; balanced into a circulation when the bias is free, so that
/// the bias drops out of the dual), scaled into `‖Γ(α)‖_2 <= 1`; returns `(α, Σ α_{jc} t_c)`.
fn dual_point(p: &MarginProblem, G: &Mat<f64>) -> Result<(Mat<f64>, f64)> {
    let k = G.nrows();
    let mut alpha =
        Mat::from_fn(k, k, |j, c| if j == c { 0.0 } else { (-G[(j, c)] / p.a[j]).max(0.0) });
    if p.bias {
        let flow = Mat::from_fn(k, k, |j, c| alpha[(j, c)] * p.sqrt_n[c]);
        let Some(balanced) = balance(&flow) else {
            return Ok((Mat::zeros(k, k), 0.0));
        };
        alpha = Mat::from_fn(k, k, |j, c| balanced[(j, c)] / p.sqrt_n[c]);
    }
    let gamma = Mat::from_fn(k, k, |j, c| {
        if j == c {
            p.a[c] * (0..k).filter(|&i| i != c).map(|i| alpha[(i, c)]).sum::<f64>()
        } else {
            -p.a[j] * alpha[(j, c)]
        }
    });
    let norm =
        gamma.singular_values().map_err(|_| Error::Decomposition { what: "singular values" })?[0];
    if norm.is_nan() || norm <= 0.0 {
        return Ok((alpha, 0.0));
    }
    let alpha = &alpha * faer::Scale(1.0 / norm.max(1.0));
    let dual = (0..k)
        .map(|c| p.t[c] * (0..k).filter(|&j| j != c).map(|j| alpha[(j, c)]).sum::<f64>())
        .sum();
    Ok((alpha, dual))
}

/// The dual certificate for a feasible `B`: the subgradients of `‖B‖_*` are `U_r V_rᵀ` (its
/// polar factor) plus any contraction on its null space; with a one-dimensional null space
/// `w u₀ v₀ᵀ`, `|w| <= 1` is searched (when `search`) for the best dual (a grid, then golden
/// sections).
fn certificate(p: &MarginProblem, B: MatRef<'_, f64>, search: bool) -> Result<(Mat<f64>, f64)> {
    let k = B.nrows();
    let svd = B.svd().map_err(|_| Error::Decomposition { what: "SVD of the solution" })?;
    let s = svd.S().column_vector();
    let s_max = if s.nrows() > 0 { s[0] } else { 0.0 };
    let (U, V) = (svd.U(), svd.V());
    let r = (0..s.nrows()).filter(|&i| s[i] > 1e-9 * s_max).count();
    let polar = Mat::from_fn(k, k, |i, j| (0..r).map(|q| U[(i, q)] * V[(j, q)]).sum::<f64>());
    let base = dual_point(p, &polar)?;
    if r + 1 != k || !search {
        return Ok(base);
    }
    let with = |w: f64| {
        dual_point(p, &Mat::from_fn(k, k, |i, j| polar[(i, j)] + w * U[(i, r)] * V[(j, r)]))
    };
    let mut best = (0.0, base);
    for i in 0..=20 {
        let w = -1.0 + 0.1 * f64::from(i);
        let cand = with(w)?;
        if cand.1 > best.1.1 {
            best = (w, cand);
        }
    }
    let (mut lo, mut hi) = ((best.0 - 0.1f64).max(-1.0), (best.0 + 0.1f64).min(1.0));
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    for _ in 0..60 {
        let (x1, x2) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
        let (d1, d2) = (with(x1)?, with(x2)?);
        if d1.1 >= d2.1 {
            hi = x2;
            if d1.1 > best.1.1 {
                best = (x1, d1);
            }
        } else {
            lo = x1;
            if d2.1 > best.1.1 {
                best = (x2, d2);
            }
        }
    }
    Ok(best.1)
}

/// With a free bias, equal row weights and thresholds proportional to `√n_c` (cross-entropy
/// and logit adjustment: `t = κ√n`), the candidate `X = κ Y (I − 11ᵀ/N)`, the label matrix
/// centered over samples (`B = κ (I − n1ᵀ/N) D^{1/2}`, `b = κ (n/N − 1/k)`; every margin is
/// tight), returned when its dual certificate closes the gap to `tol` (docs/theory.md §10).
/// `None` for other problems, or when the certificate does not close the gap, so that ADMM
/// decides.
fn centered_labels(p: &MarginProblem, tol: f64) -> Result<Option<MarginSolution>> {
    let k = p.k();
    let kappa = p.t[0] / p.sqrt_n[0];
    let proportional = (0..k).all(|c| {
        (p.a[c] - p.a[0]).abs() <= 1e-12 * p.a[0]
            && (p.t[c] / p.sqrt_n[c] - kappa).abs() <= 1e-12 * kappa
    });
    if !p.bias || !proportional {
        return Ok(None);
    }
    let n: Vec<f64> = p.sqrt_n.iter().map(|s| s * s).collect();
    let total: f64 = n.iter().sum();
    // The row weight scales B only: a(B[c,c] − B[j,c]) = κ s_c (1 − (n_c − n_j)/N), and the
    // bias makes up the rest, s_c (b_c − b_j) = κ s_c (n_c − n_j)/N.
    let B = Mat::from_fn(k, k, |i, c| {
        kappa / p.a[0] * p.sqrt_n[c] * (f64::from(u8::from(i == c)) - n[i] / total)
    });
    let b: Vec<f64> = n.iter().map(|&ni| kappa * (ni / total - 1.0 / k as f64)).collect();
    let primal = nuclear(B.as_ref())?;
    // The polar factor alone first; the null-space search (many more SVDs) only when needed.
    let mut cert = certificate(p, B.as_ref(), false)?;
    if primal - cert.1 > tol * primal.max(1.0) {
        cert = certificate(p, B.as_ref(), true)?;
    }
    let (alpha, dual) = cert;
    let gap = primal - dual;
    Ok((gap <= tol * primal.max(1.0)).then(|| MarginSolution {
        B,
        b: Some(b),
        primal,
        dual,
        gap: gap.max(0.0),
        iters: 0,
        alpha,
    }))
}

/// Solves a class-level max-margin problem to a relative duality gap `tol` by ADMM:
/// singular-value thresholding alternating with the exact column-wise projection onto the
/// constraints (with a free bias, each column keeps its own copy of b, held to their mean by
/// consensus), residual balancing, and every 10 iterations a feasible point (the columns
/// projected with the bias fixed at the copies' mean) and its dual certificate. Starts from
/// the projection of a seeded random matrix (`seed`).
///
/// # Errors
/// `tol` not positive; an ill-formed problem; decomposition failures.
pub fn solve_margin(
    p: &MarginProblem,
    tol: f64,
    max_iters: u64,
    seed: u64,
) -> Result<MarginSolution> {
    checked(p, tol)?;
    match centered_labels(p, tol)? {
        Some(sol) => Ok(sol),
        None => admm(p, tol, max_iters, seed),
    }
}

/// [`solve_margin`] by ADMM alone, without trying the centered-label candidate first: the
/// independent check that the candidate is the optimum.
///
/// # Errors
/// As [`solve_margin`].
pub fn solve_margin_admm(
    p: &MarginProblem,
    tol: f64,
    max_iters: u64,
    seed: u64,
) -> Result<MarginSolution> {
    checked(p, tol)?;
    admm(p, tol, max_iters, seed)
}

/// The checks both entries make: `tol` positive and finite, the problem well formed.
fn checked(p: &MarginProblem, tol: f64) -> Result<()> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::InvalidParameter {
            name: "tol",
            value: tol.to_string(),
            rule: "must be a finite number > 0",
        });
    }
    p.check()
}

/// [`solve_margin`]'s ADMM (the problem checked).
fn admm(p: &MarginProblem, tol: f64, max_iters: u64, seed: u64) -> Result<MarginSolution> {
    let k = p.k();
    let scale = p.t.iter().sum::<f64>() / k as f64;
    let start =
        crate::random::gaussian_matrix(k, k, 2.0 * scale, &mut crate::random::rng_from_seed(seed));
    // Per-column bias copies (column c for column c) and their scaled duals.
    let mut Bc = Mat::<f64>::zeros(k, k);
    let mut Uc = Mat::<f64>::zeros(k, k);
    let mut b = vec![0.0; k];
    let mut Z = project(p, &start, p.bias.then_some(&mut Bc), None);
    let mut U = Mat::<f64>::zeros(k, k);
    let mut rho = 1.0 / scale;
    let mut iters = 0;
    let mut best: Option<MarginSolution> = None;
    let mut improved = 0;
    while iters < max_iters {
        iters += 1;
        let (B, _) = svt((&Z - &U).as_ref(), 1.0 / rho)?;
        if p.bias {
            for (i, bi) in b.iter_mut().enumerate() {
                *bi = (0..k).map(|c| Bc[(i, c)] - Uc[(i, c)]).sum::<f64>() / k as f64;
            }
        }
        let (Z_old, Bc_old) = (Z.clone(), Bc.clone());
        let mut V = Mat::from_fn(k, k, |i, c| b[i] + Uc[(i, c)]);
        Z = project(p, &(&B + &U), p.bias.then_some(&mut V), None);
        U = &U + &B - &Z;
        let mut r_primal = (&B - &Z).norm_l2().powi(2);
        let mut r_dual = (&Z - &Z_old).norm_l2().powi(2);
        if p.bias {
            Bc = V;
            Uc = Mat::from_fn(k, k, |i, c| Uc[(i, c)] + b[i] - Bc[(i, c)]);
            r_primal += Mat::from_fn(k, k, |i, c| b[i] - Bc[(i, c)]).norm_l2().powi(2);
            r_dual += (&Bc - &Bc_old).norm_l2().powi(2);
        }
        let (r_primal, r_dual) = (r_primal.sqrt(), rho * r_dual.sqrt());
        // Certificates cost an SVD (and, with a free bias, a balancing): every 10 iterations,
        // every 50 with a bias.
        let every = if p.bias { 50 } else { 10 };
        if iters % every == 0 || iters == max_iters {
            let (feasible, bias) = if p.bias {
                let mut mean: Vec<f64> =
                    (0..k).map(|i| (0..k).map(|c| Bc[(i, c)]).sum::<f64>() / k as f64).collect();
                let m = mean.iter().sum::<f64>() / k as f64;
                mean.iter_mut().for_each(|x| *x -= m);
                (project(p, &Z, None, Some(&mean)), Some(mean))
            } else {
                (Z.clone(), None)
            };
            let primal = nuclear(feasible.as_ref())?;
            // The null-space search of the certificate costs about 80 SVDs: every 20th
            // certificate only.
            let (alpha, dual) = certificate(p, feasible.as_ref(), iters % (20 * every) == 0)?;
            let gap = primal - dual;
            if best.as_ref().is_none_or(|b| gap < b.gap) {
                if best.as_ref().is_none_or(|b| gap < 0.99 * b.gap) {
                    improved = iters;
                }
                best =
                    Some(MarginSolution { B: feasible, b: bias, primal, dual, gap, iters, alpha });
            }
            if primal - dual <= tol * primal.max(1.0) {
                break;
            }
            // Stalled: no 1 % improvement of the gap in 10000 iterations (the gap reached is
            // reported).
            if iters - improved > 10_000 {
                break;
            }
        }
        // Residual balancing: keep the primal and dual residuals within a factor 10 (with a
        // free bias only every 50 iterations of the first 5000: changing ρ more often makes
        // the consensus iteration cycle).
        let adapt = !p.bias || (iters % 50 == 0 && iters < 5_000);
        if adapt && r_primal > 10.0 * r_dual {
            rho *= 2.0;
            U = &U * faer::Scale(0.5);
            Uc = &Uc * faer::Scale(0.5);
        } else if adapt && r_dual > 10.0 * r_primal {
            rho *= 0.5;
            U = &U * faer::Scale(2.0);
            Uc = &Uc * faer::Scale(2.0);
        }
    }
    let best = best.expect("at least one certificate is computed");
    Ok(MarginSolution { gap: best.gap.max(0.0), iters, ..best })
}

/// Solves the class-level nuclear-norm SVM of `profile` (plain cross-entropy, no bias) to a
/// relative duality gap `tol`, and compares it with the SEL matrix.
///
/// ADMM starts from the projection of a seeded random matrix (`seed`), not from the
/// projection of 0: that one is the SEL matrix itself (the feasible point of least Frobenius
/// norm), and starting there would assume the answer instead of finding it.
///
/// # Errors
/// `tol` not positive; decomposition failures.
pub fn solve_svm(profile: &Profile, tol: f64, max_iters: u64, seed: u64) -> Result<SvmSolution> {
    let p = MarginProblem::ce(profile);
    let sol = solve_margin(&p, tol, max_iters, seed)?;
    let k = profile.k();
    let P = centering_projector(k);
    let sel = Mat::from_fn(k, k, |i, j| P[(i, j)] * p.sqrt_n[j]);
    Ok(SvmSolution {
        dist_to_sel: normalized_distance(sol.B.as_ref(), sel.as_ref())?,
        max_abs_diff_sel: (&sol.B - &sel).norm_max(),
        sel_nuclear_norm: nuclear(sel.as_ref())?,
        gap: sol.gap,
        B: sol.B,
        primal: sol.primal,
        dual: sol.dual,
        iters: sol.iters,
        alpha: sol.alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_feasible_and_closest() {
        let mut a = vec![0.3, 1.0, -0.2, 0.9];
        project_column(&mut a, None, 0, &[1.0; 4], 0.0, &[1.0; 4]);
        for j in 1..4 {
            assert!(a[0] - a[j] >= 1.0 - 1e-12, "{a:?}");
        }
        // Hand solution: β = (0.3 + (1 + 1) + (0.9 + 1)) / 3 = 1.4; b = (1.4, 0.4, −0.2, 0.4).
        for (x, y) in a.iter().zip([1.4, 0.4, -0.2, 0.4]) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        let mut b = vec![5.0, 0.0, 1.0];
        project_column(&mut b, None, 0, &[1.0; 3], 0.0, &[1.0; 3]);
        assert_eq!(b, vec![5.0, 0.0, 1.0], "feasible points stay");
    }
}
