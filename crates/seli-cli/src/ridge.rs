//! `seli ridge` and `seli ridge-path`: the exact optimum of the ridge-regularized UFM at class
//! level, with its duality-gap certificate, and its geometry along a λ grid (SPEC section 6).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use seli_core::metrics::ClassStats;
use seli_core::solve::ridge::{
    RidgeConfig, RidgeSolution, RidgeSolver, lambda_minority_collapse, lambda_zero,
};
use seli_core::{Geometry, Profile, ProfileKind};
use serde::Serialize;

use crate::profile_args::ProfileArgs;
use crate::ufm::LossReduction;

/// Flags shared by the ridge commands.
#[derive(Debug, Args)]
pub struct RidgeCommon {
    #[command(flatten)]
    pub profile: ProfileArgs,

    /// Whether the cross-entropy is summed or averaged over samples (thresholds differ by n).
    #[arg(long, value_enum, default_value = "sum")]
    pub loss_reduction: LossReduction,

    /// Relative duality-gap tolerance: stop when gap <= TOL * max(1, objective).
    #[arg(long, default_value_t = 1e-10)]
    pub tol: f64,

    /// Iteration limit per solve.
    #[arg(long, default_value_t = 200_000)]
    pub max_iters: u64,
}

/// Flags of `seli ridge`.
#[derive(Debug, Args)]
#[command(after_help = "Example: seli ridge --step 10,10,0.5 --lambda 0.5 --json ridge.json
With --lambda-w and --lambda-h instead of --lambda, the effective lambda is sqrt(lambda_w lambda_h).")]
pub struct RidgeArgs {
    #[command(flatten)]
    pub common: RidgeCommon,

    /// Ridge strength on both W and H.
    #[arg(long, conflicts_with_all = ["lambda_w", "lambda_h"], allow_negative_numbers = true)]
    pub lambda: Option<f64>,

    /// Ridge on W (with --lambda-h).
    #[arg(long, requires = "lambda_h", allow_negative_numbers = true)]
    pub lambda_w: Option<f64>,

    /// Ridge on H (with --lambda-w).
    #[arg(long, requires = "lambda_w", allow_negative_numbers = true)]
    pub lambda_h: Option<f64>,

    /// Write the solution and its certificate as JSON (schema seli.ridge.v1).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Flags of `seli ridge-path`.
#[derive(Debug, Args)]
#[command(after_help = "Example: seli ridge-path --step 10,10,0.5 --points 30 --out path.csv")]
pub struct RidgePathArgs {
    #[command(flatten)]
    pub common: RidgeCommon,

    /// Number of log-spaced lambda values from lambda* down to lambda* * MIN_FRACTION.
    #[arg(long, default_value_t = 25)]
    pub points: usize,

    /// Smallest lambda of the grid as a fraction of lambda*.
    #[arg(long, default_value_t = 1e-4)]
    pub min_fraction: f64,

    /// CSV file for the path (columns in docs/formats.md); a JSON twin is written beside it.
    #[arg(long, default_value = "ridge-path.csv")]
    pub out: PathBuf,

    /// Also draw the path (distances, norm ratio and cosines against lambda, thresholds
    /// marked) as SVG files in DIR.
    #[arg(long, value_name = "DIR")]
    pub figures: Option<PathBuf>,
}

/// One solved λ, as recorded (schema `seli.ridge.v1` for a single solve).
#[derive(Debug, Serialize)]
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

fn point(sol: &RidgeSolution, why: &str, g: &Geometry, p: &Profile) -> RidgePoint {
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
#[derive(Debug, Serialize)]
pub struct Thresholds {
    /// X = 0 iff λ >= lambda_star.
    pub lambda_star: f64,
    /// Minority classifiers collapse iff λ >= lambda_mc (STEP profiles).
    pub lambda_mc: Option<f64>,
}

fn thresholds(g: &Geometry, common: &RidgeCommon) -> Thresholds {
    let red = common.loss_reduction.into();
    let step = matches!(g.profile().kind(), ProfileKind::Step { .. });
    Thresholds {
        lambda_star: lambda_zero(g, red),
        lambda_mc: step.then(|| lambda_minority_collapse(g.profile(), red)),
    }
}

fn solve(p: &Profile, common: &RidgeCommon, lw: f64, lh: f64) -> Result<(RidgeSolution, String)> {
    let mut cfg = RidgeConfig::new(lw, lh, common.loss_reduction.into())?;
    cfg.tol = common.tol;
    let (sol, why) = RidgeSolver::new(cfg, p)?.solve(common.max_iters)?;
    if why.name() != "converged" {
        tracing::warn!("lambda = {}: {why}; gap {:.3e}", sol.lambda, sol.gap);
    }
    Ok((sol, why.name().to_string()))
}

/// The `seli ridge` record.
#[derive(Debug, Serialize)]
pub struct RidgeRecord {
    schema: &'static str,
    seli_version: &'static str,
    profile: seli_io::record::ProfileRecord,
    loss_reduction: &'static str,
    lambda_w: f64,
    lambda_h: f64,
    thresholds: Thresholds,
    solution: RidgePoint,
    /// C: class-level logits, column c for the samples of class c (arrays of rows).
    logits: Vec<Vec<f64>>,
    gram_w: Vec<Vec<f64>>,
    gram_m: Vec<Vec<f64>>,
}

/// The two ridge strengths the flags give.
pub fn lambdas(args: &RidgeArgs) -> Result<(f64, f64)> {
    match (args.lambda, args.lambda_w, args.lambda_h) {
        (Some(l), _, _) => Ok((l, l)),
        (None, Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("give --lambda L, or --lambda-w and --lambda-h"),
    }
}

/// Solves the ridge problem the flags describe (nothing printed or written).
pub fn compute(args: &RidgeArgs) -> Result<RidgeRecord> {
    let (p, source) = args.common.profile.resolve()?;
    let g = Geometry::new(&p)?;
    let (lw, lh) = lambdas(args)?;
    let (sol, why) = solve(&p, &args.common, lw, lh)?;
    let rows = |m: &faer::Mat<f64>| seli_io::record::rows(m.as_ref());
    Ok(RidgeRecord {
        schema: "seli.ridge.v1",
        seli_version: env!("CARGO_PKG_VERSION"),
        profile: seli_io::record::ProfileRecord::new(&p, source.as_deref()),
        loss_reduction: args.common.loss_reduction.name(),
        lambda_w: lw,
        lambda_h: lh,
        thresholds: thresholds(&g, &args.common),
        logits: rows(&sol.C),
        gram_w: rows(&sol.gram_w),
        gram_m: rows(&sol.gram_m),
        solution: point(&sol, &why, &g, &p),
    })
}

/// Runs `seli ridge`.
pub fn run(args: &RidgeArgs) -> Result<()> {
    let rec = compute(args)?;
    let (th, pt) = (&rec.thresholds, &rec.solution);
    let why = &pt.termination;
    let num = seli_io::report::num;
    let opt = |x: Option<f64>| x.map_or("-".to_string(), num);
    println!(
        "ridge optimum at class level: lambda = {} (sqrt(lambda_w lambda_h)), {} loss",
        num(pt.lambda),
        rec.loss_reduction
    );
    println!(
        "  thresholds         lambda* = {} (X = 0 above)   lambda_mc = {} (minority collapse above)",
        num(th.lambda_star),
        opt(th.lambda_mc)
    );
    println!(
        "  objective          {}   duality gap {:.3e} ({}, {} iterations)",
        num(pt.objective),
        pt.gap,
        why,
        pt.iters
    );
    println!(
        "  rank of X          {}   singular values {}",
        pt.rank,
        pt.singular_values.iter().map(|v| num(*v)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  dist_gw_seli {}   dist_gw_etf {}   dist_gm_seli {}   dist_gm_etf {}",
        opt(pt.dist_gw_seli),
        opt(pt.dist_gw_etf),
        opt(pt.dist_gm_seli),
        opt(pt.dist_gm_etf)
    );
    println!(
        "  norm ratio w {}   cos w maj-maj {}   min-min {}   maj-min {}",
        opt(pt.norm_ratio_w),
        opt(pt.cos_w_maj_maj),
        opt(pt.cos_w_min_min),
        opt(pt.cos_w_maj_min)
    );
    if !pt.collapsed_pairs.is_empty() {
        let pairs: Vec<String> =
            pt.collapsed_pairs.iter().map(|[a, b]| format!("{a}={b}")).collect();
        println!("  coinciding classifiers: {}", pairs.join(", "));
    }
    if let Some(c) = pt.collapsed {
        println!(
            "  minority classifiers {} (spread {})",
            if c { "collapsed" } else { "distinct" },
            opt(pt.minority_spread)
        );
    }
    if let Some(path) = &args.json {
        seli_io::write_json_atomic(path, "ridge record", &rec)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Columns of the ridge-path CSV (docs/formats.md).
const PATH_COLUMNS: [&str; 12] = [
    "lambda",
    "dist_gw_seli",
    "dist_gw_etf",
    "dist_gm_seli",
    "dist_gm_etf",
    "norm_ratio_w",
    "cos_w_maj_maj",
    "cos_w_min_min",
    "cos_w_maj_min",
    "rank",
    "collapsed",
    "gap",
];

/// Solves the path the flags describe; returns its record (schema seli.ridge-path.v1) and its
/// points. Nothing is printed or written.
pub fn compute_path(args: &RidgePathArgs) -> Result<(serde_json::Value, Vec<RidgePoint>)> {
    if args.points < 2 {
        bail!("--points = {}: need at least 2", args.points);
    }
    if !(args.min_fraction > 0.0 && args.min_fraction < 1.0) {
        bail!("--min-fraction = {}: must be in (0, 1)", args.min_fraction);
    }
    let (p, source) = args.common.profile.resolve()?;
    let g = Geometry::new(&p)?;
    let th = thresholds(&g, &args.common);
    let bar = crate::ufm::progress_bar(args.points as u64, 0);
    let mut points = Vec::with_capacity(args.points);
    for i in 0..args.points {
        let frac = args.min_fraction.powf(i as f64 / (args.points - 1) as f64);
        let lambda = th.lambda_star * frac;
        let (sol, why) = solve(&p, &args.common, lambda, lambda)?;
        points.push(point(&sol, &why, &g, &p));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rec = serde_json::json!({
        "schema": "seli.ridge-path.v1",
        "seli_version": env!("CARGO_PKG_VERSION"),
        "profile": seli_io::record::ProfileRecord::new(&p, source.as_deref()),
        "loss_reduction": args.common.loss_reduction.name(),
        "thresholds": th,
        "reference": { "dist_gw_seli_etf": g.dist_gram_w_etf(), "dist_gm_seli_etf": g.dist_gram_m_etf() },
        "points": points,
    });
    Ok((rec, points))
}

/// Writes the path as CSV to `out` and its record as JSON beside it (same stem); returns the
/// JSON's path.
pub fn write_path(out: &Path, rec: &serde_json::Value, points: &[RidgePoint]) -> Result<PathBuf> {
    let mut csv = seli_io::csvlog::CsvLog::create(out, &PATH_COLUMNS)?;
    for pt in points {
        csv.append(&[
            Some(pt.lambda),
            pt.dist_gw_seli,
            pt.dist_gw_etf,
            pt.dist_gm_seli,
            pt.dist_gm_etf,
            pt.norm_ratio_w,
            pt.cos_w_maj_maj,
            pt.cos_w_min_min,
            pt.cos_w_maj_min,
            Some(pt.rank as f64),
            pt.collapsed.map(f64::from),
            Some(pt.gap),
        ])?;
    }
    let json_path = out.with_extension("json");
    seli_io::write_json_atomic(&json_path, "ridge path", rec)?;
    Ok(json_path)
}

/// Runs `seli ridge-path`.
pub fn run_path(args: &RidgePathArgs) -> Result<()> {
    let (rec, points) = compute_path(args)?;
    let json_path = write_path(&args.out, &rec, &points)?;
    println!(
        "{:>12}{:>14}{:>14}{:>14}{:>6}{:>11}",
        "lambda", "dist_gw_seli", "dist_gw_etf", "cos_w_mn_mn", "rank", "collapsed"
    );
    for pt in &points {
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.6}"));
        println!(
            "{:>12.4e}{:>14}{:>14}{:>14}{:>6}{:>11}",
            pt.lambda,
            f(pt.dist_gw_seli),
            f(pt.dist_gw_etf),
            f(pt.cos_w_min_min),
            pt.rank,
            pt.collapsed.map_or("-".into(), |c| c.to_string())
        );
    }
    if let Some(dir) = &args.figures {
        let figs = seli_report::report::ridge_path_figures(&rec).map_err(|e| anyhow::anyhow!(e))?;
        for f in seli_report::report::save_figures(dir, &figs).map_err(|e| anyhow::anyhow!(e))? {
            println!("figure {}", f.display());
        }
    }
    let th = &rec["thresholds"];
    let sci = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |v| format!("{v:.6e}"));
    println!("lambda* = {}; lambda_mc = {}", sci(&th["lambda_star"]), sci(&th["lambda_mc"]));
    println!("wrote {} and {}", args.out.display(), json_path.display());
    Ok(())
}
