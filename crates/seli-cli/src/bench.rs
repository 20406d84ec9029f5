//! `seli bench`: timings of the hot paths, for the README's figures.
//!
//! `seli bench geometry` times the whole class-level computation (profile to geometry,
//! statistics and ETF distances) at n = 10^7 for k = 10, 100, 1000, and, for contrast, the
//! dense route a naive implementation would take: build the explicit k×n SEL matrix and take
//! its thin SVD, at sizes where it fits in memory.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use faer::Mat;
use seli_core::{Geometry, Profile};

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Class-level SELI geometry against the dense SVD of the explicit SEL matrix.
    Geometry(BenchGeometryArgs),
}

/// Flags of `seli bench geometry`.
#[derive(Debug, Args)]
pub struct BenchGeometryArgs {
    /// Time budget per case, in seconds (each case runs at least 3 times after a warm-up).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub budget: f64,

    /// Small sizes and one run per case: checks that the benchmark works, measures nothing.
    #[arg(long)]
    pub quick: bool,
}

/// Runs a `seli bench` subcommand.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Geometry(a) => bench_geometry(a),
    }
}

/// Median wall time of `f` over repeated runs after one warm-up.
fn time<T>(budget: Duration, min_runs: usize, mut f: impl FnMut() -> T) -> (Duration, usize) {
    std::hint::black_box(f());
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_runs || (start.elapsed() < budget && samples.len() < 10_000) {
        let t = Instant::now();
        std::hint::black_box(f());
        samples.push(t.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples.len())
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// STEP with R = 10, rho = 1/2 and n_min chosen so that n is close to `n`.
fn step_near(k: usize, n: u64) -> Result<Profile> {
    let n_min = (2 * n / (11 * k as u64)).max(1);
    Ok(Profile::step(k, 10.0, 0.5, n_min)?)
}

/// Everything `seli geometry` computes, without I/O.
fn class_level(p: &Profile) -> f64 {
    let g = Geometry::new(p).expect("eigendecomposition converges");
    let s = g.stats();
    g.dist_gram_w_etf() + g.dist_gram_m_etf() + s.w_norms[0]
}

/// The dense route: explicit k×n SEL matrix, thin SVD, G_W = U Σ Uᵀ.
fn dense(p: &Profile) -> f64 {
    let k = p.k();
    let labels: Vec<usize> = p
        .counts()
        .iter()
        .enumerate()
        .flat_map(|(c, &m)| std::iter::repeat_n(c, m as usize))
        .collect();
    let z = Mat::from_fn(k, labels.len(), |c, i| f64::from(c == labels[i]) - 1.0 / k as f64);
    let svd = z.thin_svd().expect("SVD converges");
    let (u, s) = (svd.U(), svd.S().column_vector());
    let gw =
        Mat::from_fn(k, k, |a, b| (0..k - 1).map(|i| u[(a, i)] * s[i] * u[(b, i)]).sum::<f64>());
    gw[(0, 0)]
}

fn bench_geometry(a: &BenchGeometryArgs) -> Result<()> {
    let budget = Duration::from_secs_f64(if a.quick { 0.0 } else { a.budget.max(0.0) });
    let min_runs = if a.quick { 1 } else { 3 };
    let (big_n, ks, dense_cases): (u64, &[usize], &[(usize, u64)]) = if a.quick {
        (10_000, &[10, 30], &[(10, 1_000)])
    } else {
        (10_000_000, &[10, 100, 1000], &[(10, 100_000), (100, 10_000), (100, 100_000)])
    };
    println!("seli bench geometry: STEP R = 10, rho = 1/2; median wall time per call, one thread");
    println!();
    println!("{:<34}{:>6}{:>12}{:>12}{:>7}", "route", "k", "n", "median", "runs");
    for &k in ks {
        let p = step_near(k, big_n)?;
        let (t, runs) = time(budget, min_runs, || class_level(&p));
        println!(
            "{:<34}{:>6}{:>12}{:>12}{:>7}",
            "class level (k x k eigen)",
            k,
            p.n(),
            fmt(t),
            runs
        );
    }
    println!();
    println!(
        "{:<34}{:>6}{:>12}{:>12}{:>7}{:>14}{:>10}",
        "route", "k", "n", "median", "runs", "class level", "ratio"
    );
    for &(k, n) in dense_cases {
        let p = step_near(k, n)?;
        let (td, rd) = time(budget, min_runs, || dense(&p));
        let (tc, _) = time(budget, min_runs, || class_level(&p));
        println!(
            "{:<34}{:>6}{:>12}{:>12}{:>7}{:>14}{:>9.0}x",
            "dense (explicit k x n, thin SVD)",
            k,
            p.n(),
            fmt(td),
            rd,
            fmt(tc),
            td.as_secs_f64() / tc.as_secs_f64().max(1e-12)
        );
    }
    println!();
    println!(
        "at n = 10^7 the dense route would hold a {:.1} GB matrix for k = 100; the class level holds k x k.",
        8.0 * 100.0 * 1e7 / 1e9
    );
    Ok(())
}
