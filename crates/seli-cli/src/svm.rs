//! `seli svm`: the max-margin (nuclear-norm SVM) solution at class level, with its dual
//! certificate and its distance to the SEL matrix (SPEC section 5).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use seli_core::solve::svm::solve_svm;
use serde_json::json;

use crate::profile_args::ProfileArgs;

/// Flags of `seli svm`.
#[derive(Debug, Args)]
#[command(after_help = "Example: seli svm --counts 7,3,1,12,5 --json svm.json")]
pub struct SvmArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,

    /// Relative duality-gap tolerance.
    #[arg(long, default_value_t = 1e-10)]
    pub tol: f64,

    /// ADMM iteration limit.
    #[arg(long, default_value_t = 200_000)]
    pub max_iters: u64,

    /// Seed of the random starting point.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Write the solution and certificate as JSON (schema seli.svm.v1).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Runs `seli svm`.
pub fn run(args: &SvmArgs) -> Result<()> {
    let (p, source) = args.profile.resolve()?;
    let sol = solve_svm(&p, args.tol, args.max_iters, args.seed)?;
    let certified = sol.gap <= args.tol * sol.primal.max(1.0);
    println!("max-margin (nuclear-norm SVM) solution at class level, k = {}, n = {}", p.k(), p.n());
    println!(
        "  ||X||_*             {:.12}   (||Z_hat||_* = {:.12})",
        sol.primal, sol.sel_nuclear_norm
    );
    println!(
        "  dual certificate    {:.12}   gap {:.3e} ({}; {} ADMM iterations)",
        sol.dual,
        sol.gap,
        if certified { "optimal to the tolerance" } else { "NOT certified: raise --max-iters" },
        sol.iters
    );
    println!(
        "  distance to Z_hat   {:.3e} (normalized)   max |B - P D^1/2| = {:.3e}",
        sol.dist_to_sel, sol.max_abs_diff_sel
    );
    if let Some(path) = &args.json {
        let rows = |m: &faer::Mat<f64>| seli_io::record::rows(m.as_ref());
        let rec = json!({
            "schema": "seli.svm.v1",
            "seli_version": env!("CARGO_PKG_VERSION"),
            "profile": seli_io::record::ProfileRecord::new(&p, source.as_deref()),
            "primal": sol.primal,
            "dual": sol.dual,
            "gap": sol.gap,
            "certified": certified,
            "iters": sol.iters,
            "sel_nuclear_norm": sol.sel_nuclear_norm,
            "dist_to_sel": sol.dist_to_sel,
            "max_abs_diff_sel": sol.max_abs_diff_sel,
            "logits": rows(&faer::Mat::from_fn(p.k(), p.k(), |i, j| sol.B[(i, j)] / (p.counts()[j] as f64).sqrt())),
            "alpha": rows(&sol.alpha),
        });
        seli_io::write_json_atomic(path, "svm record", &rec)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
