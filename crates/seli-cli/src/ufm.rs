//! `seli ufm`: gradient descent on the unconstrained-features model, tracked against SELI
//! and the ETF, into a run directory that can be resumed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seli_core::solve::ufm::{UfmSolver, UfmState};
use seli_core::solve::{Executor, InterruptFlag, Observer, Schedule, Termination};
use seli_core::track::{Tracker, UfmMetrics};
use seli_core::{Geometry, Scalar};
use seli_io::checkpoint::{load_checkpoint, save_checkpoint};
use seli_io::csvlog::CsvLog;
use seli_io::record::ProfileRecord;
use seli_io::run::{TargetRecord, UFM_CONFIG_SCHEMA, UFM_SUMMARY_SCHEMA, UfmRunConfig, UfmSummary};

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

impl From<LossReduction> for seli_core::solve::ufm::Reduction {
    fn from(r: LossReduction) -> Self {
        match r {
            LossReduction::Sum => seli_core::solve::ufm::Reduction::Sum,
            LossReduction::Mean => seli_core::solve::ufm::Reduction::Mean,
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

const RUN_FLAGS: [&str; 16] = [
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

    /// Run directory.
    #[arg(long, default_value = "runs/ufm", conflicts_with = "resume")]
    pub out: PathBuf,

    /// Replace a run already in --out.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,

    /// Continue the run in DIR from its last checkpoint, with its recorded configuration
    /// (only --iters and --threads may be given with it).
    #[arg(long, value_name = "DIR", conflicts_with_all = RUN_FLAGS)]
    pub resume: Option<PathBuf>,
}

/// Default iteration limit.
pub const DEFAULT_ITERS: u64 = 10_000;

impl UfmArgs {
    /// The run configuration these flags describe (validated by the solver when it starts).
    pub fn run_config(&self) -> Result<UfmRunConfig> {
        let (profile, source) = self.profile.resolve()?;
        let record = match (self.every, self.log_every) {
            (Some(n), _) => format!("every:{n}"),
            (None, Some(p)) => format!("log:{p}"),
            (None, None) => "log:10".to_string(),
        };
        let cfg = UfmRunConfig {
            schema: UFM_CONFIG_SCHEMA.into(),
            seli_version: env!("CARGO_PKG_VERSION").into(),
            profile: ProfileRecord::new(&profile, source.as_deref()),
            d: self.d,
            iters: self.iters.unwrap_or(DEFAULT_ITERS),
            lr: self.lr,
            schedule: self.schedule.clone(),
            lambda_w: self.lambda_w,
            lambda_h: self.lambda_h,
            bias: self.bias,
            loss_reduction: match self.loss_reduction {
                LossReduction::Sum => "sum",
                LossReduction::Mean => "mean",
            }
            .into(),
            dtype: match self.dtype {
                Dtype::F32 => "f32",
                Dtype::F64 => "f64",
            }
            .into(),
            seed: self.seed,
            init_scale: self.init_scale,
            grad_tol: self.grad_tol,
            record,
            checkpoint_every: self.checkpoint_every,
            threads: self.threads,
        };
        check_run_config(&cfg)?;
        Ok(cfg)
    }
}

/// Validates everything a run configuration says before any file is written.
pub fn check_run_config(cfg: &UfmRunConfig) -> Result<()> {
    let profile = cfg.profile.to_profile().context("invalid profile")?;
    cfg.ufm_config()?.check(profile.k())?;
    cfg.record_schedule()?;
    if cfg.checkpoint_every == 0 {
        bail!("--checkpoint-every = 0: must be at least 1");
    }
    if !matches!(cfg.dtype.as_str(), "f32" | "f64") {
        bail!("dtype = {}: must be f32 or f64", cfg.dtype);
    }
    Ok(())
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

/// Saves the variables every so often and at the end (also on Ctrl-C).
struct Checkpointer {
    path: PathBuf,
}

impl<T: Scalar> Observer<UfmState<T>> for Checkpointer {
    fn observe_iter(&mut self, s: &UfmState<T>) -> seli_core::Result<()> {
        save_checkpoint(&self.path, &s.params, s.iter)
            .map_err(|e| seli_core::Error::Observer(format!("{e:#}")))
    }
    fn observe_final(&mut self, s: &UfmState<T>, _why: &Termination) -> seli_core::Result<()> {
        self.observe_iter(s)
    }
}

/// Moves the progress bar.
struct Ticker(ProgressBar);

impl<S: seli_core::solve::IterState> Observer<S> for Ticker {
    fn observe_iter(&mut self, s: &S) -> seli_core::Result<()> {
        self.0.set_position(s.iter());
        Ok(())
    }
}

/// What a finished (or interrupted) run reports.
pub struct Outcome {
    /// How it ended.
    pub termination: Termination,
    /// Its summary, as written to summary.json.
    pub summary: UfmSummary,
}

/// Trains the run in `dir` (fresh, or resumed from its checkpoint) and writes its files.
pub fn train<T: Scalar>(cfg: &UfmRunConfig, dir: &Path, resume: bool) -> Result<Outcome> {
    let profile = cfg.profile.to_profile()?;
    let geometry = Geometry::new(&profile)?;
    let mut solver = UfmSolver::<T>::new(cfg.ufm_config()?, &profile, cfg.threads)?;
    let labels = solver.labels().to_vec();
    let ckpt = dir.join("checkpoint.safetensors");
    let (mut state, resumed_from) = if resume {
        let (params, iter) =
            load_checkpoint::<T>(&ckpt, cfg.d, profile.k(), labels.len(), cfg.bias)?;
        (solver.state_at(params, iter)?, Some(iter))
    } else {
        (solver.init_state()?, None)
    };
    let header: Vec<&str> = UfmMetrics::columns().iter().map(|(c, _)| *c).collect();
    let csv_path = dir.join("metrics.csv");
    let mut csv = match resumed_from {
        Some(it) => CsvLog::resume(&csv_path, &header, it as f64)?,
        None => CsvLog::create(&csv_path, &header)?,
    };
    let bar = progress_bar(cfg.iters, state.iter);
    let bar_msg = bar.clone();
    let mut tracker = Tracker::new(&labels, &geometry, |m: &UfmMetrics| {
        csv.append(&m.values).map_err(|e| format!("{e:#}"))?;
        let f = |name| m.get(name).map_or("-".to_string(), |v| format!("{v:.4}"));
        bar_msg.set_message(format!(
            "dist_gw_seli {} dist_gw_etf {}",
            f("dist_gw_seli"),
            f("dist_gw_etf")
        ));
        Ok(())
    });
    let tick = (cfg.iters / 500).max(1);
    let start = Instant::now();
    let start_iter = state.iter;
    let why = Executor::new(solver, cfg.iters)
        .observe(&mut tracker, cfg.record_schedule()?)
        .observe(Checkpointer { path: ckpt }, Schedule::Every(cfg.checkpoint_every))
        .observe(Ticker(bar.clone()), Schedule::Every(tick))
        .interrupt_on(interrupt_flag())
        .run(&mut state)
        .with_context(|| format!("run in {}", dir.display()))?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    let last = tracker.last.clone().expect("the final state is always recorded");
    let summary = UfmSummary {
        schema: UFM_SUMMARY_SCHEMA.into(),
        seli_version: env!("CARGO_PKG_VERSION").into(),
        termination: why.name().into(),
        message: why.to_string(),
        iters_done: state.iter,
        resumed_from,
        wall_seconds: wall,
        iters_per_second: (state.iter - start_iter) as f64 / wall.max(1e-9),
        final_metrics: UfmMetrics::columns()
            .iter()
            .map(|(c, _)| (c.to_string(), last.get(c)))
            .collect(),
        targets: TargetRecord {
            dist_gw_seli_etf: geometry.dist_gram_w_etf(),
            dist_gm_seli_etf: geometry.dist_gram_m_etf(),
            nuclear_norm: geometry.nuclear_norm(),
        },
    };
    seli_io::write_json_atomic(&dir.join("summary.json"), "run summary", &summary)?;
    Ok(Outcome { termination: why, summary })
}

/// Trains in the run's dtype.
pub fn train_any(cfg: &UfmRunConfig, dir: &Path, resume: bool) -> Result<Outcome> {
    match cfg.dtype.as_str() {
        "f32" => train::<f32>(cfg, dir, resume),
        _ => train::<f64>(cfg, dir, resume),
    }
}

/// Creates a fresh run directory for `cfg`, refusing to overwrite a run unless `force`.
pub fn start_run_dir(cfg: &UfmRunConfig, dir: &Path, force: bool) -> Result<()> {
    prepare_run_dir(dir, force, "ufm", &["metrics.csv", "checkpoint.safetensors", "summary.json"])?;
    seli_io::write_json_atomic(&dir.join("config.json"), "run config", cfg)?;
    Ok(())
}

/// Creates a run directory for `seli COMMAND`, refusing one that already holds a run unless
/// `force`, in which case the `stale` files of the old run are removed.
pub fn prepare_run_dir(dir: &Path, force: bool, command: &str, stale: &[&str]) -> Result<()> {
    if dir.join("config.json").exists() && !force {
        bail!(
            "{} already holds a run (config.json); continue it with seli {command} --resume {}, \
             or pass --force to start over",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in stale {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Reads a run's config.json.
pub fn read_run_config(dir: &Path) -> Result<UfmRunConfig> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: UfmRunConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a seli ufm config", path.display()))?;
    if cfg.schema != UFM_CONFIG_SCHEMA {
        bail!("{}: schema '{}' is not {UFM_CONFIG_SCHEMA}", path.display(), cfg.schema);
    }
    check_run_config(&cfg).with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

/// Prints the end of a run and chooses the exit code (130 when interrupted).
pub fn report(outcome: &Outcome, dir: &Path) -> ExitCode {
    let m = &outcome.summary.final_metrics;
    let get = |c: &str| m.get(c).copied().flatten().map_or("-".to_string(), seli_io::report::num);
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
        Some(dir) => {
            let mut cfg = read_run_config(dir)?;
            if let Some(iters) = args.iters {
                cfg.iters = iters;
            }
            cfg.threads = args.threads;
            seli_io::write_json_atomic(&dir.join("config.json"), "run config", &cfg)?;
            (cfg, dir.clone(), true)
        }
        None => {
            let cfg = args.run_config()?;
            start_run_dir(&cfg, &args.out, args.force)?;
            (cfg, args.out.clone(), false)
        }
    };
    let outcome = train_any(&cfg, &dir, resume)?;
    Ok(report(&outcome, &dir))
}
