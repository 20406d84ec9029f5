//! Records of the exact class-level solutions: the ridge optimum (`seli.ridge.v1`), the ridge
//! path (`seli.ridge-path.v1`) and the max-margin solution (`seli.svm.v1`), shared by the CLI
//! and the Python module so that both write the same numbers.

use std::path::Path;

use seli_core::metrics::ClassStats;
use seli_core::solve::ridge::{
    RidgeConfig, RidgeSolution, RidgeSolver, lambda_minority_collapse, lambda_zero,
};
use seli_core::solve::ufm::Reduction;
use seli_core::{Geometry, Profile, ProfileKind};
use serde::{Deserialize, Serialize};

use seli_io::record::{ProfileRecord, rows};

/// Schema tag of the `seli ridge` record.
pub const RIDGE_SCHEMA: &str = "seli.ridge.v1";
/// Schema tag of the `seli ridge-path` record.
pub const RIDGE_PATH_SCHEMA: &str = "seli.ridge-path.v1";
/// Schema tag of the `seli svm` record.
pub const SVM_SCHEMA: &str = "seli.svm.v1";

/// One solved λ, as recorded (schema `seli.ridge.v1` for a single solve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgePoint {
    /// Effective λ.
    pub lambda: f64,
    /// `max-iters` or `converged`.
    pub termination: String,
    /// Iterations used.
    pub iters: u64,
    /// `L(X) + λ‖X‖_*`.
    pub objective: f64,
    /// Duality gap, an upper bound on `objective − optimum`.
    pub gap: f64,
    /// Numerical rank of X.
    pub rank: usize,
    /// Singular values of X.
    pub singular_values: Vec<f64>,
    /// `dist(G_W, SELI)`, null when X = 0.
    pub dist_gw_seli: Option<f64>,
    /// `dist(G_W, ETF)`.
    pub dist_gw_etf: Option<f64>,
    /// `dist(G_M, SELI)`.
    pub dist_gm_seli: Option<f64>,
    /// `dist(G_M, ETF)`.
    pub dist_gm_etf: Option<f64>,
    /// `‖w_maj‖²/‖w_min‖²` when groups are defined.
    pub norm_ratio_w: Option<f64>,
    /// Mean classifier cosines by group pair.
    pub cos_w_maj_maj: Option<f64>,
    /// Minority–minority.
    pub cos_w_min_min: Option<f64>,
    /// Majority–minority.
    pub cos_w_maj_min: Option<f64>,
    /// Largest distance between two minority classifiers over the largest classifier norm.
    pub minority_spread: Option<f64>,
    /// Minority classifiers collapsed (spread below 1e-6).
    pub collapsed: Option<bool>,
    /// Every pair of classes whose classifiers coincide (any counts).
    pub collapsed_pairs: Vec<[usize; 2]>,
}

/// The recorded summary of one ridge solution (`why`: how the solver ended).
pub fn point(sol: &RidgeSolution, why: &str, g: &Geometry, p: &Profile) -> RidgePoint {
    let d = sol.distances(g);
    let stats = (!sol.is_zero())
        .then(|| {
            ClassStats::from_grams(
                sol.gram_w.as_ref(),
                sol.gram_m.as_ref(),
                sol.C.as_ref(),
                p.groups(),
            )
            .ok()
        })
        .flatten();
    let by = stats.as_ref().and_then(|s| s.by_group.as_ref());
    let spread = p.groups().and_then(|gr| sol.minority_spread(gr));
    RidgePoint {
        lambda: sol.lambda,
        termination: why.into(),
        iters: sol.iters,
        objective: sol.objective,
        gap: sol.gap,
        rank: sol.rank,
        singular_values: sol.singular_values.clone(),
        dist_gw_seli: d.map(|d| d[0]),
        dist_gw_etf: d.map(|d| d[1]),
        dist_gm_seli: d.map(|d| d[2]),
        dist_gm_etf: d.map(|d| d[3]),
        norm_ratio_w: by.and_then(|b| b.norm_ratio_w),
        cos_w_maj_maj: by.and_then(|b| b.cos_w.maj_maj),
        cos_w_min_min: by.and_then(|b| b.cos_w.min_min),
        cos_w_maj_min: by.and_then(|b| b.cos_w.maj_min),
        minority_spread: spread,
        collapsed: spread.map(|s| s < 1e-6),
        collapsed_pairs: sol.collapsed_pairs().into_iter().map(|(a, b)| [a, b]).collect(),
    }
}

/// Thresholds of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// X = 0 iff λ >= lambda_star.
    pub lambda_star: f64,
    /// Minority classifiers collapse iff λ >= lambda_mc (STEP profiles).
    pub lambda_mc: Option<f64>,
}

/// lambda* and, for STEP profiles, lambda_mc of `g`'s profile under `red`.
pub fn thresholds(g: &Geometry, red: Reduction) -> Thresholds {
    let step = matches!(g.profile().kind(), ProfileKind::Step { .. });
    Thresholds {
        lambda_star: lambda_zero(g, red),
        lambda_mc: step.then(|| lambda_minority_collapse(g.profile(), red)),
    }
}

/// Solves the ridge problem for `p` with strengths `lw`, `lh`; returns the solution and how
/// the solver ended (`converged` or `max-iters`).
///
/// # Errors
/// Invalid strengths or profile.
pub fn solve(
    p: &Profile,
    red: Reduction,
    (lw, lh): (f64, f64),
    tol: f64,
    max_iters: u64,
) -> seli_core::Result<(RidgeSolution, String)> {
    let mut cfg = RidgeConfig::new(lw, lh, red)?;
    cfg.tol = tol;
    let (sol, why) = RidgeSolver::new(cfg, p)?.solve(max_iters)?;
    Ok((sol, why.name().to_string()))
}

/// The `seli ridge` record (schema `seli.ridge.v1`).
#[derive(Debug, Serialize)]
pub struct RidgeRecord {
    /// `seli.ridge.v1`.
    pub schema: &'static str,
    /// Version of the tool.
    pub seli_version: &'static str,
    /// Class counts.
    pub profile: ProfileRecord,
    /// `sum` or `mean`.
    pub loss_reduction: &'static str,
    /// Ridge on W.
    pub lambda_w: f64,
    /// Ridge on H.
    pub lambda_h: f64,
    /// lambda* and lambda_mc.
    pub thresholds: Thresholds,
    /// The optimum and its certificate.
    pub solution: RidgePoint,
    /// C: class-level logits, column c for the samples of class c (arrays of rows).
    pub logits: Vec<Vec<f64>>,
    /// Classifier Gram.
    pub gram_w: Vec<Vec<f64>>,
    /// Class-mean Gram.
    pub gram_m: Vec<Vec<f64>>,
}

/// Solves the ridge problem of `p` and records it.
///
/// # Errors
/// Invalid strengths, tolerance or profile.
pub fn ridge_record(
    p: &Profile,
    source: Option<&Path>,
    red: Reduction,
    lambdas: (f64, f64),
    tol: f64,
    max_iters: u64,
) -> seli_core::Result<RidgeRecord> {
    let g = Geometry::new(p)?;
    let (sol, why) = solve(p, red, lambdas, tol, max_iters)?;
    Ok(RidgeRecord {
        schema: RIDGE_SCHEMA,
        seli_version: env!("CARGO_PKG_VERSION"),
        profile: ProfileRecord::new(p, source),
        loss_reduction: red.name(),
        lambda_w: lambdas.0,
        lambda_h: lambdas.1,
        thresholds: thresholds(&g, red),
        logits: rows(sol.C.as_ref()),
        gram_w: rows(sol.gram_w.as_ref()),
        gram_m: rows(sol.gram_m.as_ref()),
        solution: point(&sol, &why, &g, p),
    })
}

/// The ridge path of `p`: `points` log-spaced strengths from lambda* down to
/// lambda* x `min_fraction`; `tick` is called after each solve. Returns the record (schema
/// `seli.ridge-path.v1`) and its points.
///
/// # Errors
/// `points < 2`, `min_fraction` outside (0, 1), an invalid profile or tolerance.
#[allow(clippy::too_many_arguments)]
pub fn ridge_path(
    p: &Profile,
    source: Option<&Path>,
    red: Reduction,
    tol: f64,
    max_iters: u64,
    points: usize,
    min_fraction: f64,
    mut tick: impl FnMut(),
) -> seli_core::Result<RidgePathRecord> {
    if points < 2 {
        return Err(seli_core::Error::InvalidParameter {
            name: "points",
            value: points.to_string(),
            rule: "need at least 2",
        });
    }
    if !(min_fraction > 0.0 && min_fraction < 1.0) {
        return Err(seli_core::Error::InvalidParameter {
            name: "min_fraction",
            value: min_fraction.to_string(),
            rule: "must be in (0, 1)",
        });
    }
    let g = Geometry::new(p)?;
    let th = thresholds(&g, red);
    let mut out = Vec::with_capacity(points);
    for i in 0..points {
        let frac = min_fraction.powf(i as f64 / (points - 1) as f64);
        let lambda = th.lambda_star * frac;
        let (sol, why) = solve(p, red, (lambda, lambda), tol, max_iters)?;
        out.push(point(&sol, &why, &g, p));
        tick();
    }
    Ok(RidgePathRecord {
        schema: RIDGE_PATH_SCHEMA.into(),
        seli_version: env!("CARGO_PKG_VERSION").into(),
        profile: ProfileRecord::new(p, source),
        loss_reduction: red.name().into(),
        thresholds: th,
        reference: SeliVsEtf {
            dist_gw_seli_etf: g.dist_gram_w_etf(),
            dist_gm_seli_etf: g.dist_gram_m_etf(),
        },
        points: out,
    })
}

/// Where the ETF distances sit when the geometry is exactly SELI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeliVsEtf {
    /// `dist(SELI G_W, ETF)`.
    pub dist_gw_seli_etf: f64,
    /// `dist(SELI G_M, ETF)`.
    pub dist_gm_seli_etf: f64,
}

/// The `seli ridge-path` record (schema `seli.ridge-path.v1`): the exact ridge optimum along a
/// log-spaced λ grid from λ* down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgePathRecord {
    /// [`RIDGE_PATH_SCHEMA`].
    pub schema: String,
    /// Version of the tool.
    pub seli_version: String,
    /// The class counts.
    pub profile: ProfileRecord,
    /// `sum` or `mean`.
    pub loss_reduction: String,
    /// λ* and λ_mc.
    pub thresholds: Thresholds,
    /// The SELI-vs-ETF distances of the profile.
    pub reference: SeliVsEtf,
    /// One solved λ each, from λ* down.
    pub points: Vec<RidgePoint>,
}

/// The max-margin solution of `p` for `loss` (plain cross-entropy: the nuclear-norm SVM) with
/// its certificate (schema `seli.svm.v1`): `logits` are `B D^{-1/2}` (column c: class c's
/// logits before the bias), `dist_to_sel` and `max_abs_diff_sel` compare `B` with the SEL
/// matrix `P D^{1/2}`.
///
/// # Errors
/// An invalid profile or tolerance.
pub fn svm_record(
    p: &Profile,
    source: Option<&Path>,
    loss: &seli_core::Loss,
    tol: f64,
    max_iters: u64,
    seed: u64,
) -> seli_core::Result<serde_json::Value> {
    let problem = loss.margin_problem(p);
    let sol = seli_core::solve::svm::solve_margin(&problem, tol, max_iters, seed)?;
    let certified = sol.gap <= tol * sol.primal.max(1.0);
    let k = p.k();
    let proj = seli_core::metrics::centering_projector(k);
    let sel = faer::Mat::from_fn(k, k, |i, j| proj[(i, j)] * problem.sqrt_n[j]);
    let sel_nuclear_norm: f64 = sel
        .singular_values()
        .map_err(|_| seli_core::Error::Decomposition { what: "singular values" })?
        .iter()
        .sum();
    let logits = faer::Mat::from_fn(k, k, |i, j| sol.B[(i, j)] / problem.sqrt_n[j]);
    Ok(serde_json::json!({
        "schema": SVM_SCHEMA,
        "seli_version": env!("CARGO_PKG_VERSION"),
        "profile": ProfileRecord::new(p, source),
        "loss": seli_io::record::LossRecord::new(loss, p),
        "primal": sol.primal,
        "dual": sol.dual,
        "gap": sol.gap,
        "certified": certified,
        "iters": sol.iters,
        "sel_nuclear_norm": sel_nuclear_norm,
        "dist_to_sel": seli_core::metrics::normalized_distance(sol.B.as_ref(), sel.as_ref())?,
        "max_abs_diff_sel": (&sol.B - &sel).norm_max(),
        "bias": sol.b,
        "logits": rows(logits.as_ref()),
        "alpha": rows(sol.alpha.as_ref()),
    }))
}
