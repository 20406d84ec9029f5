//! `seli ufm`: gradient descent on the unconstrained-features model, tracked against SELI
//! and the ETF, into a run directory that can be resumed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seli_core::solve::ufm::{Reduction, StepRule};
use seli_core::solve::{InterruptFlag, Termination};
use seli_io::record::ProfileRecord;
use seli_run::ufm::{DEFAULT_ITERS, UfmDir, UfmOutcome, UfmParams, UfmRunConfig, record_schedule};
use seli_run::watch::Watch;

use crate::profile_args::ProfileArgs;

/// Loss reduction over samples.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossReduction {
    /// Σ_i ℓ_i (the paper's model).
    Sum,
    /// (1/n) Σ_i ℓ_i: every λ threshold is n times smaller than with sum.
    Mean,
}

impl LossReduction {
    /// `"sum"` or `"mean"`.
    pub fn name(self) -> &'static str {
        match self {
            LossReduction::Sum => "sum",
            LossReduction::Mean => "mean",
        }
    }
}

impl From<LossReduction> for Reduction {
    fn from(r: LossReduction) -> Self {
        match r {
            LossReduction::Sum => Reduction::Sum,
            LossReduction::Mean => Reduction::Mean,
        }
    }
}

/// Floating-point type of the iterates.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dtype {
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

impl From<Dtype> for seli_run::ufm::Dtype {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => seli_run::ufm::Dtype::F32,
            Dtype::F64 => seli_run::ufm::Dtype::F64,
        }
    }
}

const RUN_FLAGS: [&str; 19] = [
    "loss",
    "gamma",
    "tau",
    "step",
    "long_tail",
    "counts",
    "labels",
    "d",
    "lr",
    "schedule",
    "lambda_w",
    "lambda_h",
    "bias",
    "loss_reduction",
    "dtype",
    "seed",
    "init_scale",
    "every",
    "log_every",
];

/// Flags of `seli ufm`. A flag given twice takes its last value.
#[derive(Debug, Args)]
#[command(
    args_override_self = true,
    after_help = "Examples:
  seli ufm --step 10,100,0.5,5 --d 32 --iters 50000 --out runs/r100
  seli ufm --step 4,10,0.5 --schedule constant --lr 0.05 --lambda-w 1e-3 --lambda-h 1e-3
  seli ufm --resume runs/r100 --iters 100000      continue (and extend) a run
  seli ufm --loss cdt --gamma 1 --out runs/cdt     GD on cdt, tracked against its own target

Run directory: config.json (everything needed to rerun, seed included), metrics.csv (one row
per recorded iteration, columns in docs/formats.md), checkpoint.safetensors and summary.json.
Ctrl-C stops after the current iteration, saves a checkpoint and exits with code 130."
)]
pub struct UfmArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,

    /// Embedding dimension d (at least k-1, so that SELI is reachable).
    #[arg(long, default_value_t = 64)]
    pub d: usize,

    /// Iteration limit. With --resume, a larger value extends the run.
    #[arg(long)]
    pub iters: Option<u64>,

    /// Base learning rate (> 0).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.01)]
    pub lr: f64,

    /// Step rule: norm-grad (lr / ||grad||, normalized GD), norm-loss (lr / loss), constant,
    /// or step:FACTOR@ITER1,ITER2,... (multiply by FACTOR at each listed iteration).
    #[arg(long, default_value = "norm-grad", value_name = "RULE")]
    pub schedule: String,

    /// Ridge on W: adds (lambda_w/2)||W||_F^2.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub lambda_w: f64,

    /// Ridge on H: adds (lambda_h/2)||H||_F^2.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub lambda_h: f64,

    /// Train a bias b (the paper's model has none; a bias changes the answer).
    #[arg(long)]
    pub bias: bool,

    #[command(flatten)]
    pub loss: crate::loss_args::LossArgs,

    /// Whether the cross-entropy is summed or averaged over samples.
    #[arg(long, value_enum, default_value = "sum")]
    pub loss_reduction: LossReduction,

    /// Floating-point type of the iterates (metrics are computed in f64 either way).
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Dtype,

    /// Seed of the Gaussian initialization.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Standard deviation of the initialization of W and H.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    pub init_scale: f64,

    /// Record a metrics row every N iterations [default: log-spaced, 10 per decade].
    #[arg(long, value_name = "N", conflicts_with = "log_every")]
    pub every: Option<u64>,

    /// Record P log-spaced rows per decade of iterations (dense early, sparse late).
    #[arg(long, value_name = "P")]
    pub log_every: Option<u64>,

    /// Iterations between checkpoints (one is also written at the end and on Ctrl-C).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,

    /// Stop once the gradient norm is at most this.
    #[arg(long, allow_negative_numbers = true)]
    pub grad_tol: Option<f64>,

    /// Worker threads (0: all cores). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// Where the iterations run: cpu (seli's solver, all cores or --threads), cuda or cuda:N
    /// (the N-th NVIDIA GPU, with burn tensors; needs a CUDA build, scripts/build-cuda.sh).
    /// With --resume: where to continue (default: where the run was); checkpoints move
    /// between devices.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<seli_train::Device>,

    /// Run directory.
    #[arg(long, default_value = "runs/ufm", conflicts_with = "resume")]
    pub out: PathBuf,

    /// Replace a run already in --out.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,

    /// Continue the run in DIR from its last checkpoint, with its recorded configuration
    /// (only --iters, --threads and --device may be given with it).
    #[arg(long, value_name = "DIR", conflicts_with_all = RUN_FLAGS)]
    pub resume: Option<PathBuf>,
}

impl UfmArgs {
    /// The checked run configuration these flags describe.
    ///
    /// # Errors
    /// An invalid profile or parameter, named.
    pub fn run_config(&self) -> Result<UfmRunConfig> {
        let (profile, source) = self.profile.resolve()?;
        let params = UfmParams {
            d: self.d,
            iters: self.iters.unwrap_or(DEFAULT_ITERS),
            lr: self.lr,
            step_rule: StepRule::parse(&self.schedule)?,
            lambda_w: self.lambda_w,
            lambda_h: self.lambda_h,
            bias: self.bias,
            loss: self.loss.resolve(self.bias)?.kind,
            gamma: self.loss.gamma,
            tau: self.loss.tau,
            loss_reduction: self.loss_reduction.into(),
            dtype: self.dtype.into(),
            seed: self.seed,
            init_scale: self.init_scale,
            grad_tol: self.grad_tol,
            record: record_schedule(self.every, self.log_every)?,
            checkpoint_every: self.checkpoint_every,
            threads: self.threads,
            device: self.device.unwrap_or_default(),
            ..UfmParams::new(ProfileRecord::new(&profile, source.as_deref()))
        };
        Ok(params.check()?)
    }
}

/// The process-wide Ctrl-C flag (the handler is installed once).
pub fn interrupt_flag() -> InterruptFlag {
    static FLAG: OnceLock<InterruptFlag> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag: InterruptFlag = std::sync::Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::Relaxed)) {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
        flag
    })
    .clone()
}

/// Set while `seli sweep` runs points: their own bars stay hidden under the sweep's.
static HIDE_PROGRESS: AtomicBool = AtomicBool::new(false);

/// Hides every later [`progress_bar`] but the ones made with [`points_bar`].
pub fn hide_progress() {
    HIDE_PROGRESS.store(true, Ordering::Relaxed);
}

/// A progress bar on stderr when it is a terminal and not under CI; hidden otherwise.
pub fn progress_bar(len: u64, pos: u64) -> ProgressBar {
    if HIDE_PROGRESS.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    points_bar(len, pos)
}

/// [`progress_bar`], shown even under [`hide_progress`] (the sweep's own bar).
pub fn points_bar(len: u64, pos: u64) -> ProgressBar {
    let visible = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} it {per_sec:>10} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}

/// A progress bar that follows the run and shows its latest distances.
pub struct Bar(pub ProgressBar);

impl Watch for Bar {
    fn started(&mut self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn progress(&mut self, done: u64) -> std::result::Result<(), String> {
        self.0.set_position(done);
        Ok(())
    }
    fn row(
        &mut self,
        columns: &[(&str, &str)],
        values: &[Option<f64>],
    ) -> std::result::Result<(), String> {
        let f = |name: &str| {
            columns
                .iter()
                .position(|(c, _)| *c == name)
                .and_then(|i| values[i])
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        };
        self.0.set_message(format!(
            "dist_gw_seli {} dist_gw_etf {}",
            f("dist_gw_seli"),
            f("dist_gw_etf")
        ));
        Ok(())
    }
}

/// Runs `cfg` in `dir` (fresh or resumed) with a progress bar; Ctrl-C stops it.
///
/// # Errors
/// Those of [`seli_run::ufm::execute_with`], with the directory named.
pub fn execute(cfg: &UfmRunConfig, dir: &UfmDir, resume: bool) -> Result<UfmOutcome> {
    let mut bar = Bar(progress_bar(cfg.iters, 0));
    let engines = seli_train::ufm::AnyDevice::default();
    let out =
        seli_run::ufm::execute_with(&engines, cfg, Some(dir), resume, &mut bar, interrupt_flag());
    bar.0.finish_and_clear();
    out.map_err(|e| anyhow::Error::new(e).context(format!("run in {}", dir.0.display())))
}

/// Prints the end of a run and chooses the exit code (130 when interrupted).
pub fn report(outcome: &UfmOutcome, dir: &Path) -> ExitCode {
    let m = &outcome.summary.final_metrics;
    let get = |c: &str| m.get(c).copied().flatten().map_or("-".to_string(), seli_run::report::num);
    println!(
        "{} after {} iterations ({:.0} it/s)",
        outcome.summary.message, outcome.summary.iters_done, outcome.summary.iters_per_second
    );
    println!(
        "  loss {}   accuracy {}   min margin {}",
        get("loss"),
        get("accuracy"),
        get("min_margin")
    );
    println!(
        "  dist_gw_seli {}   dist_gw_etf {}   (SELI vs ETF: {:.6})",
        get("dist_gw_seli"),
        get("dist_gw_etf"),
        outcome.summary.targets.dist_gw_seli_etf
    );
    println!(
        "  dist_gm_seli {}   dist_gm_etf {}   (SELI vs ETF: {:.6})",
        get("dist_gm_seli"),
        get("dist_gm_etf"),
        outcome.summary.targets.dist_gm_seli_etf
    );
    println!(
        "  dist_gw_target {}   dist_gm_target {}   (the loss's own target; SELI for ce)",
        get("dist_gw_target"),
        get("dist_gm_target")
    );
    println!("  dist_z {}   nc1 {}", get("dist_z"), get("nc1"));
    println!("files in {}", dir.display());
    if outcome.termination == Termination::Interrupted {
        eprintln!(
            "interrupted at iteration {}; continue with: seli ufm --resume {}",
            outcome.summary.iters_done,
            dir.display()
        );
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}

/// Runs `seli ufm`.
pub fn run(args: &UfmArgs) -> Result<ExitCode> {
    let (cfg, dir, resume) = match &args.resume {
        Some(path) => {
            let dir = UfmDir(path.clone());
            let cfg = dir.read_config()?.resumed_with(args.iters, args.threads, args.device)?;
            let check = seli_train::ufm::check_device;
            crate::train::resume_device(cfg.device, check, path, "ufm")?;
            dir.write_config(&cfg)?;
            (cfg, dir, true)
        }
        None => {
            let cfg = args.run_config()?;
            // Before the run directory exists: a device this build or machine lacks leaves
            // nothing behind.
            seli_train::ufm::check_device(cfg.device)?;
            let dir = UfmDir(args.out.clone());
            dir.start(&cfg, args.force)?;
            (cfg, dir, false)
        }
    };
    let outcome = execute(&cfg, &dir, resume)?;
    Ok(report(&outcome, &dir.0))
}
