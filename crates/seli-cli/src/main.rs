//! The `seli` command-line tool: flag parsing and dispatch. The work lives in the library
//! crates (`seli-core` for the math, `seli-io` for files and reports).

mod analyze;
mod bench;
mod failure;
mod geometry;
mod loss_args;
mod profile_args;
mod report;
mod reproduce;
mod ridge;
mod svm;
mod sweep;
mod train;
mod ufm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Large freed blocks are kept for the next request of the same size (training steps allocate
/// the same buffers every time): `seli_train::recycle`.
#[global_allocator]
static ALLOCATOR: seli_train::recycle::Recycling = seli_train::recycle::Recycling::new();

/// SELI geometry of classifiers under class imbalance (Thrampoulidis et al., NeurIPS 2022).
///
/// Computes the exact SELI target for any label distribution and compares it with the
/// simplex ETF of neural collapse.
#[derive(Debug, Parser)]
#[command(name = "seli", version, propagate_version = true)]
struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug). The SELI_LOG environment variable,
    /// in tracing's filter syntax, overrides this.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exact SELI geometry of a class-count profile: singular values of the SEL matrix,
    /// classifier and class-mean Grams, norms and cosines by group, distance to the ETF.
    Geometry(geometry::GeometryArgs),
    /// The paper's UFM experiment in one command: SELI geometry and gradient descent for
    /// STEP k = 10, rho = 1/2, R in {1, 10, 100}.
    Reproduce(reproduce::ReproduceArgs),
    /// Gradient descent on the unconstrained-features model, tracked against SELI and the ETF.
    Ufm(Box<ufm::UfmArgs>),
    /// Exact optimum of the ridge-regularized UFM at class level, with a duality-gap
    /// certificate and the thresholds lambda* (X = 0) and lambda_mc (minority collapse).
    Ridge(ridge::RidgeArgs),
    /// The ridge optimum's geometry along a log-spaced lambda grid from lambda* down.
    RidgePath(ridge::RidgePathArgs),
    /// Max-margin (nuclear-norm SVM) solution at class level with a dual certificate; the
    /// paper's theorem says it is the SEL matrix.
    Svm(svm::SvmArgs),
    /// Train an MLP or ResNet-18 on an imbalanced subset of MNIST, Fashion-MNIST or CIFAR-10
    /// and measure the last layer's geometry against SELI and the ETF every few epochs.
    Train(Box<train::TrainArgs>),
    /// A model's exported features (.npy/.npz/.safetensors), labels and last layer against
    /// SELI and the ETF: distances, NC1-NC4, norms and cosines by group.
    Analyze(Box<analyze::AnalyzeArgs>),
    /// Figures (SVG) and a self-contained HTML report of run directories, or of several
    /// runs overlaid (--compare).
    Report(report::ReportArgs),
    /// A grid or list of geometry, ufm, ridge, ridge-path or train runs from one TOML file:
    /// parallel, resumable, shardable across machines, merged into results.csv and a report.
    Sweep(Box<sweep::SweepArgs>),
    /// Time the hot paths (numbers for the README; needs a quiet machine).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("SELI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    failure::install();
    // Rust ignores SIGPIPE, which turns a closed stdout (`seli sweep --list | head`) into a
    // panic in println!; the default action ends the process quietly, as other tools do.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread starts; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Streaming measurements allocate and free buffers of tens of MB per chunk; glibc would
    // map and unmap each one (or trim the heap after it), paying a page fault per 4 KiB on
    // every chunk. Keep freed memory in the heap instead (a few chunk buffers at most).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    // faer's own operations run on one thread: seli parallelizes its hot loops itself, and
    // faer's threading only adds overhead at class-level sizes (k x k).
    faer::set_global_parallelism(faer::Par::Seq);
    let result = match &cli.command {
        Command::Geometry(a) => geometry::run(a).map(|()| ExitCode::SUCCESS),
        Command::Ufm(a) => ufm::run(a),
        Command::Reproduce(a) => reproduce::run(a),
        Command::Ridge(a) => ridge::run(a).map(|()| ExitCode::SUCCESS),
        Command::RidgePath(a) => ridge::run_path(a).map(|()| ExitCode::SUCCESS),
        Command::Svm(a) => svm::run(a).map(|()| ExitCode::SUCCESS),
        Command::Train(a) => train::run(a),
        Command::Report(a) => report::run(a).map(|()| ExitCode::SUCCESS),
        Command::Analyze(a) => analyze::run(a).map(|()| ExitCode::SUCCESS),
        Command::Sweep(a) => sweep::run(a),
        Command::Bench(b) => bench::run(b).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
