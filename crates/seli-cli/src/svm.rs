//! `seli svm`: the max-margin (nuclear-norm SVM) solution at class level, with its dual
//! certificate and its distance to the SEL matrix (docs/theory.md §5).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::loss_args::LossArgs;
use crate::profile_args::ProfileArgs;

/// Flags of `seli svm`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seli svm --counts 7,3,1,12,5 --json svm.json
  seli svm --loss cdt --gamma 0.5                the max-margin problem of cdt
  seli svm --bias                                 with a free, unregularized bias")]
pub struct SvmArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,

    #[command(flatten)]
    pub loss: LossArgs,

    /// Logits with a free, unregularized bias b
    #[arg(long)]
    pub bias: bool,

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
    let loss = args.loss.resolve(args.bias)?;
    let (p, source) = args.profile.resolve()?;
    let rec = seli_run::solutions::svm_record(
        &p,
        source.as_deref(),
        &loss,
        args.tol,
        args.max_iters,
        args.seed,
    )?;
    let f = |k: &str| rec[k].as_f64().unwrap_or(f64::NAN);
    let certified = rec["certified"].as_bool().unwrap_or(false);
    println!(
        "max-margin (nuclear-norm SVM) solution at class level, k = {}, n = {}, loss {}",
        p.k(),
        p.n(),
        loss.describe()
    );
    println!(
        "  ||X||_*             {:.12}   (||Z_hat||_* = {:.12})",
        f("primal"),
        f("sel_nuclear_norm")
    );
    println!(
        "  dual certificate    {:.12}   gap {:.3e} ({}; {} ADMM iterations)",
        f("dual"),
        f("gap"),
        if certified { "optimal to the tolerance" } else { "NOT certified: raise --max-iters" },
        rec["iters"]
    );
    println!(
        "  distance to Z_hat   {:.3e} (normalized)   max |B - P D^1/2| = {:.3e}",
        f("dist_to_sel"),
        f("max_abs_diff_sel")
    );
    if let Some(b) = rec["bias"].as_array() {
        let b: Vec<String> =
            b.iter().map(|x| format!("{:.6}", x.as_f64().unwrap_or(f64::NAN))).collect();
        println!("  bias b              {}", b.join(", "));
    }
    if let Some(path) = &args.json {
        seli_io::write_json_atomic(path, "svm record", &rec)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
