//! The global optimum of the ridge-regularized UFM, at class level (docs/theory.md §6).
//!
//! For `d >= k − 1`, `min_{W,H} L(WᵀH) + (λ/2)(‖W‖² + ‖H‖²) = min_X L(X) + λ‖X‖_*` (with
//! `λ = sqrt(λ_W λ_H)` when the two differ), a convex problem. Its solution has equal columns
//! within a class, `X = C Y` with C k×k. Writing `B = C D^{1/2}` (so that `‖X‖_* = ‖B‖_*`,
//! because `XXᵀ = C D Cᵀ = BBᵀ`), the problem becomes, with no k×n object anywhere,
//!
//! ```text
//! min_B  f(B) + λ‖B‖_*,   f(B) = s Σ_c n_c ℓ(B e_c / √n_c, c),   s = 1 (sum) or 1/n (mean).
//! ```
//!
//! `∇f(B) e_c = s √n_c (softmax(z_c) − e_c)` with `z_c = B e_c / √n_c`, and `∇f` is
//! `s/2`-Lipschitz. We run FISTA with backtracking and function-value adaptive restart; the
//! proximal step is singular-value soft-thresholding of the k×k iterate.
//!
//! Certificate: Fenchel duality gives, for any `V` with `‖V‖_2 <= λ`, the lower bound
//! `D(V) = −f*(−V)`. From `V = −θ∇f(B)` with `θ = min(1, λ/‖∇f(B)‖_2)`,
//! `D = s Σ_c n_c H(p'_c)` where `p'_c = θ softmax(z_c) + (1−θ) e_c` and `H` is the entropy.
//! The run stops when the gap `F(B) − D <= tol·max(1, F(B))`, which bounds the suboptimality.
//!
//! From B: `X = B D^{-1/2} Y`, its singular values are those of B, the classifier Gram is
//! `G_W = (BBᵀ)^{1/2}` and the class-mean Gram `G_M = D^{-1/2}(BᵀB)^{1/2}D^{-1/2}`.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use super::{IterState, Solver, Termination};
use crate::error::{Error, Result};
use crate::metrics::{centering_projector, normalized_distance};
use crate::profile::{Group, Profile};
use crate::sel::Geometry;
use crate::solve::ufm::Reduction;
use crate::solve::{nuclear, svt};

/// Parameters of a ridge solve. Defaults: sum reduction, relative gap tolerance 1e-10.
#[derive(Debug, Clone, PartialEq)]
pub struct RidgeConfig {
    /// Effective regularization `λ = sqrt(λ_W λ_H)` (> 0).
    pub lambda: f64,
    /// Summed or mean loss.
    pub reduction: Reduction,
    /// Stop when the duality gap is at most `tol·max(1, F)`.
    pub tol: f64,
}

impl RidgeConfig {
    /// A configuration with `λ = sqrt(λ_W λ_H)`.
    ///
    /// # Errors
    /// A λ that is negative, zero or not finite (`λ = 0` is the max-margin problem).
    pub fn new(lambda_w: f64, lambda_h: f64, reduction: Reduction) -> Result<Self> {
        for (name, v) in [("lambda_w", lambda_w), ("lambda_h", lambda_h)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::InvalidParameter {
                    name,
                    value: v.to_string(),
                    rule: "must be a finite number > 0 (lambda = 0 is the max-margin problem)",
                });
            }
        }
        Ok(RidgeConfig { lambda: (lambda_w * lambda_h).sqrt(), reduction, tol: 1e-10 })
    }
}

/// Value and gradient of the smooth part `f`, and what the dual bound needs.
struct Smooth {
    value: f64,
    grad: Mat<f64>,
}

/// The FISTA iterate.
#[derive(Debug, Clone)]
pub struct RidgeState {
    /// Current point `B` (k×k).
    pub B: Mat<f64>,
    /// Extrapolated point.
    extra: Mat<f64>,
    /// FISTA momentum parameter.
    t: f64,
    /// Current step size.
    pub step: f64,
    /// Iterations done.
    pub iter: u64,
    /// `F(B)`.
    pub objective: f64,
    /// Duality gap at B.
    pub gap: f64,
    /// Momentum restarts so far.
    pub restarts: u64,
}

impl IterState for RidgeState {
    fn iter(&self) -> u64 {
        self.iter
    }
}

/// FISTA on the class-level ridge problem.
pub struct RidgeSolver {
    config: RidgeConfig,
    counts: Vec<f64>,
    s: f64,
}

impl RidgeSolver {
    /// A solver for `profile`.
    ///
    /// # Errors
    /// An invalid λ or tolerance.
    pub fn new(config: RidgeConfig, profile: &Profile) -> Result<Self> {
        if !(config.lambda.is_finite() && config.lambda > 0.0) {
            return Err(Error::InvalidParameter {
                name: "lambda",
                value: config.lambda.to_string(),
                rule: "must be a finite number > 0",
            });
        }
        if !(config.tol.is_finite() && config.tol > 0.0) {
            return Err(Error::InvalidParameter {
                name: "tol",
                value: config.tol.to_string(),
                rule: "must be a finite number > 0",
            });
        }
        let counts: Vec<f64> = profile.counts().iter().map(|&c| c as f64).collect();
        let s = match config.reduction {
            Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / profile.n() as f64,
        };
        Ok(RidgeSolver { config, counts, s })
    }

    fn smooth(&self, B: MatRef<'_, f64>) -> Smooth {
        let k = B.nrows();
        let mut value = 0.0;
        let mut grad = Mat::zeros(k, k);
        for c in 0..k {
            let sq = self.counts[c].sqrt();
            let z: Vec<f64> = (0..k).map(|j| B[(j, c)] / sq).collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            value += self.s * self.counts[c] * (max + sum.ln() - z[c]);
            for j in 0..k {
                let p = (z[j] - max).exp() / sum;
                grad[(j, c)] = self.s * sq * (p - f64::from(j == c));
            }
        }
        Smooth { value, grad }
    }

    /// The dual value `s Σ_c n_c H(p'_c)` of a dual point given by its gradient-like matrix
    /// `G` (`V = −G`, columns `s √n_c (p'_c − e_c)`); `None` if some `p'` leaves the simplex.
    fn dual_value(&self, G: MatRef<'_, f64>) -> Option<f64> {
        let k = G.nrows();
        let mut dual = 0.0;
        for c in 0..k {
            let scale = self.s * self.counts[c].sqrt();
            let mut h = 0.0;
            for j in 0..k {
                let p = G[(j, c)] / scale + f64::from(j == c);
                if p < 0.0 {
                    return None;
                }
                if p > 0.0 {
                    h -= p * p.ln();
                }
            }
            dual += self.s * self.counts[c] * h;
        }
        Some(dual)
    }

    /// The duality gap at B. Two feasible dual points are built on `−∇f(B)`: scaled into the
    /// ball `‖V‖_2 <= λ` (always in the domain of f*), and with its singular values clipped at λ
    /// (closer to the optimum, used when it stays in the domain); the better bound counts.
    fn gap(&self, B: MatRef<'_, f64>, objective: f64, sm: &Smooth) -> Result<f64> {
        let lambda = self.config.lambda;
        let svd =
            sm.grad.thin_svd().map_err(|_| Error::Decomposition { what: "SVD of the gradient" })?;
        let sv = svd.S().column_vector();
        let g = if sv.nrows() > 0 { sv[0] } else { 0.0 };
        let theta = if g > lambda { lambda / g } else { 1.0 };
        let scaled = &sm.grad * faer::Scale(theta);
        let mut dual = self.dual_value(scaled.as_ref()).unwrap_or(f64::NEG_INFINITY);
        if g > lambda {
            let (U, V) = (svd.U(), svd.V());
            let k = sm.grad.nrows();
            let clipped = Mat::from_fn(k, k, |i, j| {
                (0..sv.nrows()).map(|r| U[(i, r)] * sv[r].min(lambda) * V[(j, r)]).sum()
            });
            if let Some(d) = self.dual_value(clipped.as_ref()) {
                dual = dual.max(d);
            }
        }
        // The optimality condition −∇f(B*) ∈ λ∂‖B*‖_* suggests a third point: −λU_rV_rᵀ on the
        // range of B plus the rest of ∇f, clipped at λ, on the orthogonal complement.
        if let Some(d) = self.subgradient_dual(B, sm)? {
            dual = dual.max(d);
        }
        Ok((objective - dual).max(0.0))
    }

    fn subgradient_dual(&self, B: MatRef<'_, f64>, sm: &Smooth) -> Result<Option<f64>> {
        let lambda = self.config.lambda;
        let k = B.nrows();
        let svd = B.thin_svd().map_err(|_| Error::Decomposition { what: "SVD of the iterate" })?;
        let sv = svd.S().column_vector();
        let s_max = if sv.nrows() > 0 { sv[0] } else { 0.0 };
        let r = (0..sv.nrows()).filter(|&i| sv[i] > 1e-9 * s_max && s_max > 0.0).count();
        if r == 0 {
            return Ok(None);
        }
        let (U, V) = (svd.U(), svd.V());
        let proj = |M: MatRef<'_, f64>| {
            Mat::from_fn(k, k, |i, j| {
                f64::from(i == j) - (0..r).map(|q| M[(i, q)] * M[(j, q)]).sum::<f64>()
            })
        };
        let (Pu, Pv) = (proj(U), proj(V));
        let rest = &Pu * &sm.grad * &Pv;
        let rs = rest
            .thin_svd()
            .map_err(|_| Error::Decomposition { what: "SVD of the gradient remainder" })?;
        let (rv, ru, rw) = (rs.S().column_vector(), rs.U(), rs.V());
        let G = Mat::from_fn(k, k, |i, j| {
            let range: f64 = (0..r).map(|q| U[(i, q)] * V[(j, q)]).sum();
            let off: f64 =
                (0..rv.nrows()).map(|q| ru[(i, q)] * rv[q].min(lambda) * rw[(j, q)]).sum();
            -lambda * range + off
        });
        Ok(self.dual_value(G.as_ref()))
    }

    fn objective(&self, B: MatRef<'_, f64>) -> Result<(f64, Smooth)> {
        let sm = self.smooth(B);
        Ok((sm.value + self.config.lambda * nuclear(B)?, sm))
    }

    /// The state at `B = 0`, with the initial step `2/s` (one over the Lipschitz constant).
    pub fn init_state(&self) -> Result<RidgeState> {
        let k = self.counts.len();
        let B = Mat::zeros(k, k);
        let (objective, sm) = self.objective(B.as_ref())?;
        let gap = self.gap(B.as_ref(), objective, &sm)?;
        Ok(RidgeState {
            extra: B.clone(),
            B,
            t: 1.0,
            step: 2.0 / self.s,
            iter: 0,
            objective,
            gap,
            restarts: 0,
        })
    }

    /// Solves to the configured tolerance or `max_iters`.
    ///
    /// # Errors
    /// Decomposition failures.
    pub fn solve(self, max_iters: u64) -> Result<(RidgeSolution, Termination)> {
        let mut state = self.init_state()?;
        let counts = self.counts.clone();
        let config = self.config.clone();
        let why = super::Executor::new(self, max_iters).run(&mut state)?;
        let sol = RidgeSolution::from_state(&state, &counts, &config)?;
        Ok((sol, why))
    }
}

impl Solver for RidgeSolver {
    type State = RidgeState;

    fn next_iter(&mut self, st: &mut RidgeState) -> Result<()> {
        let lambda = self.config.lambda;
        let sm = self.smooth(st.extra.as_ref());
        let mut step = st.step;
        let (B_new, nuc) = loop {
            let point = &st.extra - &sm.grad * faer::Scale(step);
            let (cand, nuc) = svt(point.as_ref(), step * lambda)?;
            let diff = &cand - &st.extra;
            let bound = sm.value
                + (0..diff.ncols())
                    .map(|j| (0..diff.nrows()).map(|i| sm.grad[(i, j)] * diff[(i, j)]).sum::<f64>())
                    .sum::<f64>()
                + diff.squared_norm_l2() / (2.0 * step);
            if self.smooth(cand.as_ref()).value <= bound * (1.0 + 1e-14) + 1e-300 || step < 1e-30 {
                break (cand, nuc);
            }
            step *= 0.5;
        };
        let sm_new = self.smooth(B_new.as_ref());
        let objective = sm_new.value + lambda * nuc;
        let t_new = 0.5 * (1.0 + (1.0 + 4.0 * st.t * st.t).sqrt());
        if objective > st.objective {
            // Adaptive restart: the momentum overshot; continue from B_new without it.
            st.t = 1.0;
            st.extra = B_new.clone();
            st.restarts += 1;
        } else {
            let beta = (st.t - 1.0) / t_new;
            st.extra = &B_new + (&B_new - &st.B) * faer::Scale(beta);
            st.t = t_new;
        }
        st.B = B_new;
        st.objective = objective;
        st.gap = self.gap(st.B.as_ref(), objective, &sm_new)?;
        // Let the step grow back slowly after backtracking.
        st.step = (step * 1.05).min(2.0 / self.s * 4.0);
        st.iter += 1;
        if !objective.is_finite() {
            return Err(Error::Diverged { iter: st.iter, quantity: "objective", value: objective });
        }
        Ok(())
    }

    fn terminate(&self, st: &RidgeState) -> Option<Termination> {
        let target = self.config.tol * st.objective.abs().max(1.0);
        (st.gap <= target)
            .then(|| Termination::Converged(format!("duality gap {:.3e} <= {target:.1e}", st.gap)))
    }
}

/// The solved ridge problem at class level, with its geometry and certificate.
#[derive(Debug, Clone)]
pub struct RidgeSolution {
    /// Effective λ.
    pub lambda: f64,
    /// `B = C D^{1/2}`.
    pub B: Mat<f64>,
    /// `C`: the logits of every class's samples (column c).
    pub C: Mat<f64>,
    /// Singular values of X (those of B), non-increasing.
    pub singular_values: Vec<f64>,
    /// Numerical rank of X: singular values above `1e-8·σ_max` (0 when X = 0).
    pub rank: usize,
    /// `F = L(X) + λ‖X‖_*`.
    pub objective: f64,
    /// Duality gap: `objective − P* <= gap`.
    pub gap: f64,
    /// Iterations used.
    pub iters: u64,
    /// `G_W = (XXᵀ)^{1/2}`, k×k.
    pub gram_w: Mat<f64>,
    /// `G_M = D^{-1/2}(BᵀB)^{1/2}D^{-1/2}`, k×k.
    pub gram_m: Mat<f64>,
}

/// `(AAᵀ)^{1/2}` and `(AᵀA)^{1/2}` from one SVD, with singular values.
fn gram_roots(A: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>, Vec<f64>)> {
    let svd = A.thin_svd().map_err(|_| Error::Decomposition { what: "SVD of the solution" })?;
    let s: Vec<f64> =
        (0..svd.S().column_vector().nrows()).map(|i| svd.S().column_vector()[i]).collect();
    let (U, V) = (svd.U(), svd.V());
    let k = A.nrows();
    let left = Mat::from_fn(k, k, |i, j| (0..s.len()).map(|r| U[(i, r)] * s[r] * U[(j, r)]).sum());
    let right = Mat::from_fn(k, k, |i, j| (0..s.len()).map(|r| V[(i, r)] * s[r] * V[(j, r)]).sum());
    Ok((left, right, s))
}

impl RidgeSolution {
    fn from_state(st: &RidgeState, counts: &[f64], config: &RidgeConfig) -> Result<Self> {
        let k = counts.len();
        let (gram_w, right, s) = gram_roots(st.B.as_ref())?;
        let gram_m = Mat::from_fn(k, k, |i, j| right[(i, j)] / (counts[i] * counts[j]).sqrt());
        let s_max = s.first().copied().unwrap_or(0.0);
        let rank = s.iter().filter(|&&v| v > 1e-8 * s_max && s_max > 0.0).count();
        Ok(RidgeSolution {
            lambda: config.lambda,
            C: Mat::from_fn(k, k, |i, j| st.B[(i, j)] / counts[j].sqrt()),
            B: st.B.clone(),
            singular_values: s,
            rank,
            objective: st.objective,
            gap: st.gap,
            iters: st.iter,
            gram_w,
            gram_m,
        })
    }

    /// Whether X = 0 (all singular values negligible against the data scale).
    pub fn is_zero(&self) -> bool {
        self.rank == 0
    }

    /// Normalized distances `(G_W to SELI, G_W to ETF, G_M to SELI, G_M to ETF)`; `None`
    /// when X = 0.
    pub fn distances(&self, target: &Geometry) -> Option<[f64; 4]> {
        if self.is_zero() {
            return None;
        }
        let P = centering_projector(target.k());
        let d = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| normalized_distance(a, b).ok();
        Some([
            d(self.gram_w.as_ref(), target.gram_w())?,
            d(self.gram_w.as_ref(), P.as_ref())?,
            d(self.gram_m.as_ref(), target.gram_m())?,
            d(self.gram_m.as_ref(), P.as_ref())?,
        ])
    }

    /// Pairs of classes `(c, c')`, `c < c'`, whose classifiers coincide: `‖w_c − w_c'‖` below
    /// `1e-6` times the largest classifier norm. Collapse detection for any counts (for STEP
    /// profiles, compare [`lambda_minority_collapse`]). Empty when X = 0.
    pub fn collapsed_pairs(&self) -> Vec<(usize, usize)> {
        if self.is_zero() {
            return Vec::new();
        }
        let g = &self.gram_w;
        let k = g.nrows();
        let scale = (0..k).map(|c| g[(c, c)]).fold(0.0, f64::max).sqrt();
        let mut out = Vec::new();
        for i in 0..k {
            for j in (i + 1)..k {
                let d = (g[(i, i)] + g[(j, j)] - 2.0 * g[(i, j)]).max(0.0).sqrt();
                if d < 1e-6 * scale {
                    out.push((i, j));
                }
            }
        }
        out
    }

    /// Largest distance between classifiers of two minority classes, relative to the
    /// largest classifier norm: 0 when the minority classifiers have collapsed. `None` when
    /// there are fewer than two minority classes or X = 0.
    pub fn minority_spread(&self, groups: &[Group]) -> Option<f64> {
        let minor: Vec<usize> =
            (0..groups.len()).filter(|&c| groups[c] == Group::Minority).collect();
        if minor.len() < 2 || self.is_zero() {
            return None;
        }
        let g = &self.gram_w;
        let scale = (0..g.nrows()).map(|c| g[(c, c)]).fold(0.0, f64::max).sqrt();
        let mut worst: f64 = 0.0;
        for (a, &i) in minor.iter().enumerate() {
            for &j in &minor[a + 1..] {
                let d2 = (g[(i, i)] + g[(j, j)] - 2.0 * g[(i, j)]).max(0.0);
                worst = worst.max(d2.sqrt());
            }
        }
        Some(worst / scale)
    }
}

/// `λ* = s·σ_max(Ẑ)`: X = 0 is optimal iff `λ >= λ*` (`∇f(0) = −s P D^{1/2}`, whose spectral
/// norm is `s σ_max(Ẑ)`). Valid for any counts.
pub fn lambda_zero(target: &Geometry, reduction: Reduction) -> f64 {
    let s = match reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / target.profile().n() as f64,
    };
    s * target.singular_values()[0]
}

/// `λ_mc = s·√n_min`: minority classifiers collapse exactly iff `λ >= λ_mc` (docs/theory.md §6),
/// for STEP profiles.
pub fn lambda_minority_collapse(profile: &Profile, reduction: Reduction) -> f64 {
    let s = match reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / profile.n() as f64,
    };
    s * (profile.n_min() as f64).sqrt()
}
