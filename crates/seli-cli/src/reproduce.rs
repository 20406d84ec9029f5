//! `seli reproduce`: the paper's UFM experiment in one command (docs/theory.md §8).
//!
//! STEP imbalance with k = 10, rho = 1/2, n_min = 5 and R in {1, 10, 100}: the exact SELI
//! geometry of each profile, then normalized gradient descent on the unregularized UFM from a
//! small random initialization, tracked against SELI and the ETF. Expected: distances to
//! SELI fall; under imbalance, distances to the ETF stall near the SELI-vs-ETF distance; the
//! larger R, the slower.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use seli_core::solve::Termination;
use seli_core::{Geometry, Profile};
use seli_io::csvlog::read_csv;
use seli_io::record::ProfileRecord;
use seli_run::ufm::{UfmDir, UfmOutcome as Outcome, UfmParams, UfmRunConfig};

/// Flags of `seli reproduce`.
#[derive(Debug, Args)]
#[command(after_help = "Writes one run directory per R (R1, R10, R100: config.json, metrics.csv,
checkpoint.safetensors, summary.json) and table.csv with the distances at powers of ten.
Earlier runs in --out are replaced.")]
pub struct ReproduceArgs {
    /// Directory for the runs.
    #[arg(long, default_value = "runs/reproduce")]
    pub out: PathBuf,

    /// Iteration limit per run (a run also stops at an exact floating-point fixed point).
    #[arg(long, default_value_t = 100_000)]
    pub iters: u64,

    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Imbalance ratios of the experiment.
pub const RATIOS: [f64; 3] = [1.0, 10.0, 100.0];

/// The run configuration of the experiment for ratio `r`.
pub fn experiment_config(r: f64, iters: u64, threads: usize) -> Result<UfmRunConfig> {
    let profile = Profile::step(10, r, 0.5, 5)?;
    let params = UfmParams {
        d: 32,
        iters,
        checkpoint_every: 10_000,
        threads,
        ..UfmParams::new(ProfileRecord::new(&profile, None))
    };
    Ok(params.check()?)
}

/// Value of `col` at the last row with `iter <= t`.
fn at(rows: &[Vec<Option<f64>>], header: &[String], col: &str, t: f64) -> Option<f64> {
    let c = header.iter().position(|h| h == col)?;
    rows.iter().take_while(|r| r[0].is_some_and(|i| i <= t)).last().and_then(|r| r[c])
}

/// Runs `seli reproduce`.
pub fn run(args: &ReproduceArgs) -> Result<ExitCode> {
    println!("SELI vs ETF at class level: STEP k = 10, rho = 1/2, n_min = 5 (seli geometry)");
    println!(
        "{:>6}{:>8}{:>18}{:>18}{:>16}{:>16}",
        "R", "n", "dist_gw_seli_etf", "dist_gm_seli_etf", "||w||^2 ratio", "cos w min-min"
    );
    for r in RATIOS {
        let p = Profile::step(10, r, 0.5, 5)?;
        let g = Geometry::new(&p)?;
        let by = g.stats().by_group.expect("STEP profiles have groups");
        println!(
            "{:>6}{:>8}{:>18.6}{:>18.6}{:>16.6}{:>16.6}",
            r,
            p.n(),
            g.dist_gram_w_etf(),
            g.dist_gram_m_etf(),
            by.norm_ratio_w.unwrap_or(f64::NAN),
            by.cos_w.min_min.unwrap_or(f64::NAN)
        );
    }
    println!();
    println!(
        "UFM gradient descent: normalized GD (lr 0.01), d = 32, summed cross-entropy, no ridge, no bias,\n\
         Gaussian init 0.1, seed 0, at most {} iterations per run; runs in {}",
        args.iters,
        args.out.display()
    );
    let mut results: Vec<(f64, PathBuf, Outcome)> = Vec::new();
    for r in RATIOS {
        let cfg = experiment_config(r, args.iters, args.threads)?;
        let dir = args.out.join(format!("R{r}"));
        let run = UfmDir(dir.clone());
        run.start(&cfg, true)?;
        let outcome = crate::ufm::execute(&cfg, &run, false)?;
        let interrupted = outcome.termination == Termination::Interrupted;
        results.push((r, dir, outcome));
        if interrupted {
            eprintln!("interrupted; the runs so far are in {}", args.out.display());
            return Ok(ExitCode::from(130));
        }
    }
    print_tables(&results, &args.out)?;
    // The report: one page overlaying the three runs, and one per run.
    let dirs: Vec<PathBuf> = results.iter().map(|(_, d, _)| d.clone()).collect();
    for d in &dirs {
        seli_report::write_report(d).map_err(|e| anyhow::anyhow!(e))?;
    }
    let report = seli_report::write_compare(&dirs, &args.out.join("report.html"))
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("report (figures and tables, one HTML file): {}", report.display());
    Ok(ExitCode::SUCCESS)
}

fn print_tables(results: &[(f64, PathBuf, Outcome)], out: &Path) -> Result<()> {
    let mut data = Vec::new();
    for (r, dir, _) in results {
        let (header, rows) = read_csv(&dir.join("metrics.csv")).context("reading back metrics")?;
        data.push((*r, header, rows));
    }
    let max_iter = results.iter().map(|(_, _, o)| o.summary.iters_done).max().unwrap_or(0);
    let mut marks: Vec<f64> =
        (1..).map(|e| 10f64.powi(e)).take_while(|&t| t < max_iter as f64).collect();
    marks.push(max_iter as f64);
    let mut table =
        String::from("R,iter,dist_gw_seli,dist_gw_etf,dist_gm_seli,dist_gm_etf,dist_z\n");
    for (title, seli, etf) in [
        ("classifier Gram: dist(W^T W, SELI) / dist(W^T W, ETF)", "dist_gw_seli", "dist_gw_etf"),
        ("class-mean Gram: dist(M^T M, SELI) / dist(M^T M, ETF)", "dist_gm_seli", "dist_gm_etf"),
    ] {
        println!();
        println!("{title}");
        print!("{:>10}", "iter");
        for (r, _, _) in results {
            print!("{:>22}", format!("R = {r}"));
        }
        println!();
        for &t in &marks {
            print!("{:>10}", t);
            for (_, header, rows) in &data {
                let cell = match (at(rows, header, seli, t), at(rows, header, etf, t)) {
                    (Some(a), Some(b)) => format!("{a:.4} / {b:.4}"),
                    _ => "-".into(),
                };
                print!("{cell:>22}");
            }
            println!();
        }
    }
    for (r, header, rows) in &data {
        for &t in &marks {
            let v = |c| at(rows, header, c, t).map_or(String::new(), |x| x.to_string());
            let it = rows
                .iter()
                .take_while(|row| row[0].is_some_and(|i| i <= t))
                .last()
                .and_then(|row| row[0]);
            table.push_str(&format!(
                "{r},{},{},{},{},{},{}\n",
                it.unwrap_or(0.0),
                v("dist_gw_seli"),
                v("dist_gw_etf"),
                v("dist_gm_seli"),
                v("dist_gm_etf"),
                v("dist_z")
            ));
        }
    }
    println!();
    for (r, _, o) in results {
        println!("R = {r}: {} after {} iterations", o.summary.message, o.summary.iters_done);
    }
    seli_io::write_atomic(&out.join("table.csv"), table.as_bytes())?;
    println!();
    println!(
        "Expected (docs/theory.md §8): distances to SELI fall; with imbalance (R = 10, 100) distances to the\n\
         ETF stall near the SELI-vs-ETF distance of the first table; convergence is slower for larger R.\n\
         Per-iteration metrics: {}/R*/metrics.csv; this table: {}",
        out.display(),
        out.join("table.csv").display()
    );
    Ok(())
}
