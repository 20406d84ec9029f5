//! `seli ridge` and `seli ridge-path`: the exact optimum of the ridge-regularized UFM at class
//! level, with its duality-gap certificate, and its geometry along a λ grid (docs/theory.md §6).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use seli_run::solutions::{RidgePathRecord, RidgePoint, RidgeRecord, ridge_path, ridge_record};

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

    /// CSV file for the path (columns in docs/formats.md).
    #[arg(long, default_value = "ridge-path.csv")]
    pub out: PathBuf,

    /// The path's JSON record (seli.ridge-path.v1), like every other command's --json
    /// [default: beside --out, with the extension .json].
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also draw the path (distances, norm ratio and cosines against lambda, thresholds
    /// marked) as SVG files in DIR.
    #[arg(long, value_name = "DIR")]
    pub figures: Option<PathBuf>,
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
    let c = &args.common;
    let rec = ridge_record(
        &p,
        source.as_deref(),
        c.loss_reduction.into(),
        lambdas(args)?,
        c.tol,
        c.max_iters,
    )?;
    warn_unconverged(&rec.solution);
    Ok(rec)
}

fn warn_unconverged(pt: &RidgePoint) {
    if pt.termination != "converged" {
        tracing::warn!("lambda = {}: {}; gap {:.3e}", pt.lambda, pt.termination, pt.gap);
    }
}

/// Runs `seli ridge`.
pub fn run(args: &RidgeArgs) -> Result<()> {
    let rec = compute(args)?;
    let (th, pt) = (&rec.thresholds, &rec.solution);
    let why = &pt.termination;
    let num = seli_run::report::num;
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

/// Solves the path the flags describe; returns its record (schema seli.ridge-path.v1, with its
/// points). Nothing is printed or written.
pub fn compute_path(args: &RidgePathArgs) -> Result<RidgePathRecord> {
    let (p, source) = args.common.profile.resolve()?;
    let c = &args.common;
    let bar = crate::ufm::progress_bar(args.points as u64, 0);
    let out = ridge_path(
        &p,
        source.as_deref(),
        c.loss_reduction.into(),
        c.tol,
        c.max_iters,
        args.points,
        args.min_fraction,
        || bar.inc(1),
    )
    .map_err(|e| match e {
        seli_core::Error::InvalidParameter { name, value, rule } => {
            anyhow::anyhow!("--{} = {value}: {rule}", name.replace('_', "-"))
        }
        e => e.into(),
    })?;
    bar.finish_and_clear();
    out.points.iter().for_each(warn_unconverged);
    Ok(out)
}

/// Writes the path as CSV to `out` and its record as JSON to `json` (default: beside `out`,
/// same stem); returns the JSON's path.
pub fn write_path(out: &Path, json: Option<&Path>, rec: &RidgePathRecord) -> Result<PathBuf> {
    let mut csv = seli_io::csvlog::CsvLog::create(out, &PATH_COLUMNS)?;
    for pt in &rec.points {
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
    let json_path = json.map_or_else(|| out.with_extension("json"), Path::to_path_buf);
    seli_io::write_json_atomic(&json_path, "ridge path", rec)?;
    Ok(json_path)
}

/// Runs `seli ridge-path`.
pub fn run_path(args: &RidgePathArgs) -> Result<()> {
    let rec = compute_path(args)?;
    let json_path = write_path(&args.out, args.json.as_deref(), &rec)?;
    println!(
        "{:>12}{:>14}{:>14}{:>14}{:>6}{:>11}",
        "lambda", "dist_gw_seli", "dist_gw_etf", "cos_w_mn_mn", "rank", "collapsed"
    );
    for pt in &rec.points {
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
    let th = &rec.thresholds;
    let sci = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.6e}"));
    println!("lambda* = {}; lambda_mc = {}", sci(Some(th.lambda_star)), sci(th.lambda_mc));
    println!("wrote {} and {}", args.out.display(), json_path.display());
    Ok(())
}
