//! `seli ufm` as a run: its checked configuration, its run directory, its execution and its
//! summary. The CLI, `seli reproduce`, `seli sweep` and the Python module all run UFM gradient
//! descent through [`execute`].
//!
//! Run directory ([`UfmDir`]):
//! - `config.json` ([`UfmRunConfig`], schema `seli.ufm-config.v1`): everything needed to
//!   regenerate the run, seed included. `--resume DIR` reads it back.
//! - `metrics.csv`: one row per recorded iteration; columns and meanings are
//!   `seli_core::track::UfmMetrics::columns` (listed in docs/formats.md).
//! - `checkpoint.safetensors`: the variables (see `seli_io::checkpoint`).
//! - `summary.json` ([`UfmSummary`], schema `seli.ufm-summary.v1`): how the run ended, its
//!   speed, the last metrics row and the SELI-vs-ETF reference distances.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Instant;

use seli_core::solve::ufm::{Params, Reduction, StepRule, UfmConfig, UfmSolver, UfmState};
use seli_core::solve::{
    Executor, InterruptFlag, IterState, Observer, Schedule, Solver, Termination,
};
use seli_core::track::{Tracker, UfmMetrics};
use seli_core::{Geometry, Profile, Scalar};
use seli_io::checkpoint::{load_checkpoint, save_checkpoint};
use seli_io::csvlog::CsvLog;
use seli_io::record::ProfileRecord;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::Device;
use crate::watch::Watch;

/// Schema tag of [`UfmRunConfig`].
pub const UFM_CONFIG_SCHEMA: &str = "seli.ufm-config.v1";
/// Schema tag of [`UfmSummary`].
pub const UFM_SUMMARY_SCHEMA: &str = "seli.ufm-summary.v1";
/// The `termination` of a run stopped by Ctrl-C (it resumes).
pub const INTERRUPTED: &str = "interrupted";
/// Default iteration limit.
pub const DEFAULT_ITERS: u64 = 10_000;

/// Floating-point type of the iterates (metrics are computed in f64 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

/// Text forms of the core types that `config.json` stores as strings.
pub(crate) mod text {
    use super::*;

    fn invalid<E: serde::de::Error>(e: seli_core::Error) -> E {
        E::custom(e.to_string())
    }

    pub mod step_rule {
        use super::*;
        pub fn serialize<S: serde::Serializer>(
            r: &StepRule,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_str(&r.spec())
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<StepRule, D::Error> {
            StepRule::parse(&String::deserialize(d)?).map_err(invalid)
        }
    }

    /// Runs written before the loss families trained plain cross-entropy.
    pub(crate) fn ce() -> seli_core::LossKind {
        seli_core::LossKind::Ce
    }

    pub mod loss_kind {
        use super::*;
        pub fn serialize<S: serde::Serializer>(
            k: &seli_core::LossKind,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_str(k.name())
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<seli_core::LossKind, D::Error> {
            String::deserialize(d)?.parse().map_err(invalid)
        }
    }

    pub mod reduction {
        use super::*;
        pub fn serialize<S: serde::Serializer>(
            r: &Reduction,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_str(r.name())
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Reduction, D::Error> {
            super::super::parse_reduction(&String::deserialize(d)?).map_err(invalid)
        }
    }

    pub mod record {
        use super::*;
        pub fn serialize<S: serde::Serializer>(
            r: &Schedule,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_str(&super::super::record_text(*r))
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Schedule, D::Error> {
            super::super::parse_record(&String::deserialize(d)?).map_err(invalid)
        }
    }
}

/// `"sum"` or `"mean"`.
///
/// # Errors
/// Anything else, named.
pub fn parse_reduction(s: &str) -> std::result::Result<Reduction, seli_core::Error> {
    match s {
        "sum" => Ok(Reduction::Sum),
        "mean" => Ok(Reduction::Mean),
        other => Err(seli_core::Error::InvalidParameter {
            name: "loss_reduction",
            value: other.into(),
            rule: "must be sum or mean",
        }),
    }
}

/// Parses `every:N` (N >= 1) or `log:P` (P >= 1 points per decade).
///
/// # Errors
/// Anything else, named.
pub fn parse_record(s: &str) -> std::result::Result<Schedule, seli_core::Error> {
    let bad = || seli_core::Error::InvalidParameter {
        name: "record",
        value: s.into(),
        rule: "expected every:N or log:P with N, P >= 1",
    };
    let (kind, num) = s.split_once(':').ok_or_else(bad)?;
    let v: u64 = num.trim().parse().map_err(|_| bad())?;
    match (kind.trim(), v) {
        (_, 0) => Err(bad()),
        ("every", n) => Ok(Schedule::Every(n)),
        ("log", p) => Ok(Schedule::LogSpaced { per_decade: u32::try_from(p).map_err(|_| bad())? }),
        _ => Err(bad()),
    }
}

/// The text form [`parse_record`] reads.
pub fn record_text(s: Schedule) -> String {
    match s {
        Schedule::Every(n) => format!("every:{n}"),
        Schedule::LogSpaced { per_decade } => format!("log:{per_decade}"),
        Schedule::Ends => "ends".into(),
    }
}

/// The recording schedule from the flags' two optional forms (`every` N iterations, or
/// `log_every` P rows per decade; default 10 per decade).
///
/// # Errors
/// Both given, or a zero.
pub fn record_schedule(every: Option<u64>, log_every: Option<u64>) -> Result<Schedule> {
    let text = match (every, log_every) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid("give every or log_every, not both".into()));
        }
        (Some(n), None) => format!("every:{n}"),
        (None, Some(p)) => format!("log:{p}"),
        (None, None) => "log:10".into(),
    };
    Ok(parse_record(&text)?)
}

/// The parameters of a UFM run, unchecked: what the CLI flags, a sweep point or a Python call
/// give. [`UfmParams::check`] turns them into a [`UfmRunConfig`]. On disk, `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UfmParams {
    /// Always [`UFM_CONFIG_SCHEMA`].
    pub schema: String,
    /// Version of the tool that started the run.
    pub seli_version: String,
    /// Class counts (samples are sorted by class in `H`).
    pub profile: ProfileRecord,
    /// Embedding dimension (at least k − 1).
    pub d: usize,
    /// Iteration limit.
    pub iters: u64,
    /// Base learning rate (> 0).
    pub lr: f64,
    /// Step-size rule: `constant`, `step:FACTOR@I1,I2,...`, `norm-grad` or `norm-loss` on disk
    /// (field `step_rule`; files written before 0.2 call it `schedule`).
    #[serde(with = "text::step_rule", alias = "schedule")]
    pub step_rule: StepRule,
    /// Ridge on W (>= 0).
    pub lambda_w: f64,
    /// Ridge on H (>= 0).
    pub lambda_h: f64,
    /// Whether a bias is trained.
    pub bias: bool,
    /// Loss family (`ce`, `cdt`, `ldt`, `la`, `vs`; docs/theory.md §10); `ce` in files
    /// written before it existed.
    #[serde(default = "text::ce", with = "text::loss_kind")]
    pub loss: seli_core::LossKind,
    /// `γ` of the family's `Δ`.
    #[serde(default)]
    pub gamma: f64,
    /// `τ` of the family's `ι`.
    #[serde(default)]
    pub tau: f64,
    /// `sum` or `mean` on disk: how the cross-entropy is reduced over samples.
    #[serde(with = "text::reduction")]
    pub loss_reduction: Reduction,
    /// `f32` or `f64`.
    pub dtype: Dtype,
    /// Seed of the Gaussian initialization.
    pub seed: u64,
    /// Standard deviation of the initialization (> 0).
    pub init_scale: f64,
    /// Stop when the gradient norm falls to this value (null: never).
    pub grad_tol: Option<f64>,
    /// When metrics rows are recorded: `every:N` or `log:P` (P points per decade) on disk.
    #[serde(with = "text::record")]
    pub record: Schedule,
    /// Iterations between checkpoints (>= 1).
    pub checkpoint_every: u64,
    /// Threads used (0: all cores; results do not depend on it).
    pub threads: usize,
    /// Where the iterations run (`cpu` in files written before devices existed). Like
    /// `threads`, not part of the run's identity: a run may resume on another device.
    #[serde(default)]
    pub device: Device,
}

impl UfmParams {
    /// The defaults of `seli ufm` for `profile`: d = 64, 10 000 iterations, normalized GD with
    /// lr 0.01, no ridge, no bias, summed loss, f64, seed 0, init 0.1, rows 10 per decade,
    /// checkpoints every 1000 iterations, all cores.
    pub fn new(profile: ProfileRecord) -> Self {
        UfmParams {
            schema: UFM_CONFIG_SCHEMA.into(),
            seli_version: env!("CARGO_PKG_VERSION").into(),
            profile,
            d: 64,
            iters: DEFAULT_ITERS,
            lr: 0.01,
            step_rule: StepRule::NormalizedGrad,
            lambda_w: 0.0,
            lambda_h: 0.0,
            bias: false,
            loss: seli_core::LossKind::Ce,
            gamma: 0.0,
            tau: 0.0,
            loss_reduction: Reduction::Sum,
            dtype: Dtype::F64,
            seed: 0,
            init_scale: 0.1,
            grad_tol: None,
            record: Schedule::LogSpaced { per_decade: 10 },
            checkpoint_every: 1000,
            threads: 0,
            device: Device::Cpu,
        }
    }

    /// The solver's part of the configuration.
    pub fn solver_config(&self) -> UfmConfig {
        UfmConfig {
            d: self.d,
            lr: self.lr,
            step_rule: self.step_rule.clone(),
            lambda_w: self.lambda_w,
            lambda_h: self.lambda_h,
            bias: self.bias,
            reduction: self.loss_reduction,
            init_scale: self.init_scale,
            seed: self.seed,
            grad_tol: self.grad_tol,
            loss: self.loss,
            gamma: self.gamma,
            tau: self.tau,
        }
    }

    /// Checks every parameter once, naming the bad value.
    ///
    /// # Errors
    /// A wrong schema, an invalid profile, d < k − 1, a non-positive learning rate or
    /// initialization, negative ridge, a zero checkpoint interval or record interval.
    pub fn check(self) -> Result<UfmRunConfig> {
        if self.schema != UFM_CONFIG_SCHEMA {
            return Err(Error::Invalid(format!(
                "schema '{}' is not {UFM_CONFIG_SCHEMA}",
                self.schema
            )));
        }
        let profile = self.profile.to_profile()?;
        self.solver_config().check(profile.k())?;
        if self.checkpoint_every == 0 {
            return Err(Error::Invalid("--checkpoint-every = 0: must be at least 1".into()));
        }
        if matches!(self.record, Schedule::Every(0) | Schedule::LogSpaced { per_decade: 0 }) {
            return Err(Error::Invalid(format!(
                "record {}: must be at least 1",
                record_text(self.record)
            )));
        }
        Ok(UfmRunConfig(self))
    }
}

/// A checked UFM configuration: every field of [`UfmParams`] valid together. Read its fields
/// through `Deref`; build one with [`UfmParams::check`] or [`UfmDir::read_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UfmParams", into = "UfmParams")]
pub struct UfmRunConfig(UfmParams);

impl TryFrom<UfmParams> for UfmRunConfig {
    type Error = Error;
    fn try_from(p: UfmParams) -> Result<Self> {
        p.check()
    }
}

impl From<UfmRunConfig> for UfmParams {
    fn from(c: UfmRunConfig) -> Self {
        c.0
    }
}

impl Deref for UfmRunConfig {
    type Target = UfmParams;
    fn deref(&self) -> &UfmParams {
        &self.0
    }
}

impl UfmRunConfig {
    /// The same run with another iteration limit, thread count and device: what `--resume`
    /// may change (`None` keeps the recorded value).
    ///
    /// # Errors
    /// None in practice (the other fields were checked); kept for the type's invariant.
    pub fn resumed_with(
        &self,
        iters: Option<u64>,
        threads: usize,
        device: Option<Device>,
    ) -> Result<Self> {
        let mut p = self.0.clone();
        if let Some(i) = iters {
            p.iters = i;
        }
        if let Some(d) = device {
            p.device = d;
        }
        p.threads = threads;
        p.check()
    }

    /// Whether `other` is the same run but for the thread count and the device.
    pub fn same_run(&self, other: &UfmRunConfig) -> bool {
        let mut a = self.0.clone();
        a.threads = other.threads;
        a.device = other.device;
        a == other.0
    }
}

/// The reference distances of the run's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// `dist(SELI G_W, ETF)`: where `dist_gw_etf` ends if training reaches SELI.
    pub dist_gw_seli_etf: f64,
    /// `dist(SELI G_M, ETF)`.
    pub dist_gm_seli_etf: f64,
    /// `‖Z_hat‖_*`.
    pub nuclear_norm: f64,
}

impl TargetRecord {
    /// The targets of `geometry`.
    pub fn of(geometry: &Geometry) -> Self {
        TargetRecord {
            dist_gw_seli_etf: geometry.dist_gram_w_etf(),
            dist_gm_seli_etf: geometry.dist_gram_m_etf(),
            nuclear_norm: geometry.nuclear_norm(),
        }
    }
}

/// `summary.json` of a UFM run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UfmSummary {
    /// Always [`UFM_SUMMARY_SCHEMA`].
    pub schema: String,
    /// Version of the tool.
    pub seli_version: String,
    /// `max-iters`, `converged` or `interrupted`.
    pub termination: String,
    /// Human-readable reason.
    pub message: String,
    /// Iterations completed.
    pub iters_done: u64,
    /// Iteration this invocation resumed from (null for a fresh run).
    pub resumed_from: Option<u64>,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// Iterations per second in this invocation (metrics and checkpoints included).
    pub iters_per_second: f64,
    /// The last metrics row, by column name.
    pub final_metrics: BTreeMap<String, Option<f64>>,
    /// The SELI-vs-ETF reference distances of the profile.
    pub targets: TargetRecord,
}

impl UfmSummary {
    /// Reads a `summary.json`.
    ///
    /// # Errors
    /// Unreadable, not a UFM summary, or of another schema.
    pub fn read(path: &Path) -> Result<Self> {
        let s: UfmSummary = crate::read_record(path, "a seli ufm summary")?;
        if s.schema != UFM_SUMMARY_SCHEMA {
            return Err(Error::record(
                path,
                format!("schema '{}' is not {UFM_SUMMARY_SCHEMA}", s.schema),
            ));
        }
        Ok(s)
    }

    /// The results-table cells of the run: `termination`, `iters_done`, every metric of the
    /// last row, and the targets.
    pub fn results(&self) -> Vec<(String, String)> {
        use crate::results::num;
        let mut out = vec![
            ("termination".to_string(), self.termination.clone()),
            ("iters_done".to_string(), self.iters_done.to_string()),
        ];
        out.extend(
            self.final_metrics.iter().map(|(k, v)| (k.clone(), v.map(num).unwrap_or_default())),
        );
        let t = &self.targets;
        for (k, v) in [
            ("dist_gw_seli_etf", t.dist_gw_seli_etf),
            ("dist_gm_seli_etf", t.dist_gm_seli_etf),
            ("nuclear_norm", t.nuclear_norm),
        ] {
            out.push((k.to_string(), num(v)));
        }
        out
    }
}

/// The files of a UFM run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UfmDir(pub PathBuf);

impl UfmDir {
    /// The files a fresh run replaces.
    pub const OUTPUTS: [&'static str; 3] =
        ["metrics.csv", "checkpoint.safetensors", "summary.json"];

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    /// `metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.csv")
    }
    /// `checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.0.join("summary.json")
    }

    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// Unreadable, not a UFM config, or invalid (the bad value named).
    pub fn read_config(&self) -> Result<UfmRunConfig> {
        crate::read_record(&self.config(), "a seli ufm config")
    }

    /// Writes `config.json` (atomically).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_config(&self, cfg: &UfmRunConfig) -> Result<()> {
        Ok(seli_io::write_json_atomic(&self.config(), "run config", cfg)?)
    }

    /// Whether the directory holds a checkpoint that `cfg` can resume.
    pub fn resumable_by(&self, cfg: &UfmRunConfig) -> bool {
        self.checkpoint().is_file() && self.read_config().is_ok_and(|old| old.same_run(cfg))
    }

    /// Creates the directory for a fresh run of `cfg`, refusing one that holds a run unless
    /// `force` (which removes the old run's outputs), and writes `config.json`.
    ///
    /// # Errors
    /// A run already there without `force`; the directory cannot be written.
    pub fn start(&self, cfg: &UfmRunConfig, force: bool) -> Result<()> {
        crate::prepare_run_dir(&self.0, force, crate::Command::Ufm, &Self::OUTPUTS)?;
        self.write_config(cfg)
    }
}

/// How a run ended, and its summary (written to `summary.json` when the run has a directory).
#[derive(Debug, Clone)]
pub struct UfmOutcome {
    /// How it ended.
    pub termination: Termination,
    /// Its summary.
    pub summary: UfmSummary,
}

/// Saves the variables every so often and at the end (also on Ctrl-C).
struct Checkpointer {
    path: PathBuf,
}

impl<T: Scalar> Observer<UfmState<T>> for Checkpointer {
    fn observe_iter(&mut self, s: &UfmState<T>) -> seli_core::Result<()> {
        save_checkpoint(&self.path, &s.params, s.iter)
            .map_err(|e| seli_core::Error::Observer(e.to_string()))
    }
    fn observe_final(&mut self, s: &UfmState<T>, _why: &Termination) -> seli_core::Result<()> {
        self.observe_iter(s)
    }
}

/// Passes everything to `inner` but the row at the start of a resumed run, unless the
/// recording schedule fires there: the uninterrupted run has a row at that iteration only
/// then, and the resumed log must equal it after any kind of stop (the rows at and after the
/// checkpoint were dropped when the log was reopened).
struct Resumed<O> {
    inner: O,
    record_start: bool,
}

impl<S, O: Observer<S>> Observer<S> for Resumed<O> {
    fn observe_init(&mut self, s: &S) -> seli_core::Result<()> {
        if self.record_start { self.inner.observe_init(s) } else { Ok(()) }
    }
    fn observe_iter(&mut self, s: &S) -> seli_core::Result<()> {
        self.inner.observe_iter(s)
    }
    fn observe_final(&mut self, s: &S, why: &Termination) -> seli_core::Result<()> {
        self.inner.observe_final(s, why)
    }
}

/// Hands every iteration to the caller's [`Watch`] (shared with the metrics recorder, which
/// hands it the rows; observers fire one at a time).
struct Ticks<'a, 'w>(&'a RefCell<&'w mut dyn Watch>);

impl<S: IterState> Observer<S> for Ticks<'_, '_> {
    fn observe_iter(&mut self, s: &S) -> seli_core::Result<()> {
        self.0.borrow_mut().progress(s.iter()).map_err(seli_core::Error::Observer)
    }
}

/// Where observers read a run's state, told to its engine before the run starts.
#[derive(Debug, Clone)]
pub struct Reads {
    /// The schedules of the observers that read the variables or the evaluation (the metrics
    /// recorder, the checkpointer); observers that read only the iteration count are not here.
    pub schedules: Vec<Schedule>,
    /// The iteration limit (the final observers read the state there).
    pub max_iters: u64,
    /// The run's Ctrl-C flag.
    pub interrupt: InterruptFlag,
}

impl Reads {
    /// Whether an observer reads the state after iteration `t`.
    pub fn at(&self, t: u64) -> bool {
        t >= self.max_iters || self.schedules.iter().any(|s| s.fires(t))
    }
}

/// What computes the iterations of a UFM run: seli-core's [`UfmSolver`] on the CPU, or an
/// engine on another device. Both advance a host [`UfmState`]. The CPU solver's state is
/// always current; a device engine copies its variables and evaluation to the host state
/// only at the iterations in [`Reads`] (and where its stopping rule fires), keeps
/// `state.iter` current always, and watches the interrupt flag itself so that a run never
/// stops on a stale state.
pub trait UfmEngine<T: Scalar>: Solver<State = UfmState<T>> {
    /// The seeded start.
    ///
    /// # Errors
    /// A non-finite start; a device that fails.
    fn init_state(&mut self) -> seli_core::Result<UfmState<T>>;

    /// The state at `params` after `iter` iterations (a resumed run).
    ///
    /// # Errors
    /// Shapes that do not match; a non-finite evaluation; a device that fails.
    fn state_at(&mut self, params: Params<T>, iter: u64) -> seli_core::Result<UfmState<T>>;

    /// Called once before the run. Returns the flag the executor should watch: `Some` when the
    /// state is always current (the executor stops at the flag), `None` when the engine stops
    /// at it itself (through [`Solver::terminate`], once it has copied the state back).
    fn plan(&mut self, reads: Reads) -> Option<InterruptFlag> {
        Some(reads.interrupt)
    }
}

impl<T: Scalar> UfmEngine<T> for UfmSolver<T> {
    fn init_state(&mut self) -> seli_core::Result<UfmState<T>> {
        UfmSolver::init_state(self)
    }
    fn state_at(&mut self, params: Params<T>, iter: u64) -> seli_core::Result<UfmState<T>> {
        UfmSolver::state_at(self, params, iter)
    }
}

/// Makes the engine of a run for its device.
pub trait Engines {
    /// The engine that runs `cfg` (on `cfg.device`, in precision `T`) for `profile`.
    ///
    /// # Errors
    /// A device this program cannot use (named, with how to get one that can); an invalid
    /// configuration.
    fn ufm<T: Scalar>(
        &self,
        cfg: &UfmRunConfig,
        profile: &Profile,
    ) -> Result<Box<dyn UfmEngine<T>>>;
}

/// The CPU solver only: what the Python module and this crate's own callers use.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuEngines;

impl Engines for CpuEngines {
    fn ufm<T: Scalar>(
        &self,
        cfg: &UfmRunConfig,
        profile: &Profile,
    ) -> Result<Box<dyn UfmEngine<T>>> {
        if cfg.device != Device::Cpu {
            return Err(Error::Invalid(format!(
                "device {}: only the seli command line runs UFMs on a GPU (built with \
                 scripts/build-cuda.sh); here they run on the CPU (device cpu)",
                cfg.device
            )));
        }
        Ok(Box::new(UfmSolver::<T>::new(cfg.solver_config(), profile, cfg.threads)?))
    }
}

/// Runs gradient descent for `cfg`: fresh, or resumed from the checkpoint in `dir` when
/// `resume`. With a directory, metrics rows go to `metrics.csv` as they are recorded,
/// checkpoints every `checkpoint_every` iterations and at the end, and the summary to
/// `summary.json`; without one (a Python call) nothing is written. Every row and every
/// iteration also reach `watch`; setting `interrupt` stops the run after the current iteration
/// (termination `interrupted`, checkpoint written).
///
/// The CPU solver runs it ([`CpuEngines`]); [`execute_with`] takes other engines.
///
/// # Errors
/// An unreadable checkpoint or directory, a diverging iterate (named), a failing watch, a
/// device other than the CPU.
pub fn execute(
    cfg: &UfmRunConfig,
    dir: Option<&UfmDir>,
    resume: bool,
    watch: &mut dyn Watch,
    interrupt: InterruptFlag,
) -> Result<UfmOutcome> {
    execute_with(&CpuEngines, cfg, dir, resume, watch, interrupt)
}

/// [`execute`] with the engine of `cfg.device` made by `engines`.
///
/// # Errors
/// Those of [`execute`], and those of the engine's device.
pub fn execute_with(
    engines: &impl Engines,
    cfg: &UfmRunConfig,
    dir: Option<&UfmDir>,
    resume: bool,
    watch: &mut dyn Watch,
    interrupt: InterruptFlag,
) -> Result<UfmOutcome> {
    match cfg.dtype {
        Dtype::F32 => execute_as::<f32>(engines, cfg, dir, resume, watch, interrupt),
        Dtype::F64 => execute_as::<f64>(engines, cfg, dir, resume, watch, interrupt),
    }
}

fn execute_as<T: Scalar>(
    engines: &impl Engines,
    cfg: &UfmRunConfig,
    dir: Option<&UfmDir>,
    resume: bool,
    watch: &mut dyn Watch,
    interrupt: InterruptFlag,
) -> Result<UfmOutcome> {
    let profile = cfg.profile.to_profile()?;
    let geometry = Geometry::new(&profile)?;
    let mut solver = engines.ufm::<T>(cfg, &profile)?;
    // The loss's own target (certified max-margin solve), unless it is SELI.
    let loss = cfg.solver_config().loss()?;
    let own = seli_core::implicit::LossTarget::solve(&profile, loss)?;
    let labels = profile.sorted_labels();
    // A run stopped before its first checkpoint has nothing to resume: it starts over (its
    // start is seeded, so the log and the end are those of an uninterrupted run).
    let (mut state, resumed_from) = match dir.filter(|d| resume && d.checkpoint().is_file()) {
        Some(dir) => {
            let (params, iter) = load_checkpoint::<T>(
                &dir.checkpoint(),
                cfg.d,
                profile.k(),
                labels.len(),
                cfg.bias,
            )?;
            (solver.state_at(params, iter)?, Some(iter))
        }
        None => (solver.init_state()?, None),
    };
    let header: Vec<&str> = UfmMetrics::columns().iter().map(|(c, _)| *c).collect();
    let mut csv = match (dir, resumed_from) {
        (Some(d), Some(it)) => Some(CsvLog::resume(&d.metrics(), &header, it as f64)?),
        (Some(d), None) => Some(CsvLog::create(&d.metrics(), &header)?),
        (None, _) => None,
    };
    watch.started(cfg.iters, state.iter);
    let start = Instant::now();
    let start_iter = state.iter;
    let watch = RefCell::new(watch);
    let (why, last) = {
        let mut tracker = Tracker::new(&labels, &geometry, |m: &UfmMetrics| {
            if let Some(csv) = csv.as_mut() {
                csv.append(&m.values).map_err(|e| e.to_string())?;
            }
            watch.borrow_mut().row(UfmMetrics::columns(), &m.values)
        });
        if let Some(own) = &own {
            tracker = tracker.with_loss_target(own);
        }
        let record_start = resumed_from.is_none_or(|it| cfg.record.fires(it));
        let mut schedules = vec![cfg.record];
        if dir.is_some() {
            schedules.push(Schedule::Every(cfg.checkpoint_every));
        }
        let watched = solver.plan(Reads { schedules, max_iters: cfg.iters, interrupt });
        let mut exec = Executor::new(solver, cfg.iters)
            .observe(Resumed { inner: &mut tracker, record_start }, cfg.record)
            .observe(Ticks(&watch), Schedule::Every(1));
        if let Some(d) = dir {
            exec = exec.observe(
                Checkpointer { path: d.checkpoint() },
                Schedule::Every(cfg.checkpoint_every),
            );
        }
        if let Some(flag) = watched {
            exec = exec.interrupt_on(flag);
        }
        let why = exec.run(&mut state);
        let last = tracker.last.take();
        drop(tracker);
        (why?, last.expect("the final state is always recorded"))
    };
    // A resumed run that had already ended (at its iteration limit, or converged) ends again
    // without an iteration: its summary, with the times of the invocation that ran it, stays
    // as it is (rewritten when missing or when it says otherwise).
    if let (Some(d), Some(from)) = (dir, resumed_from)
        && state.iter == from
        && let Ok(done) = UfmSummary::read(&d.summary())
        && done.iters_done == from
        && done.termination == why.name()
    {
        return Ok(UfmOutcome { termination: why, summary: done });
    }
    let wall = start.elapsed().as_secs_f64();
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
        targets: TargetRecord::of(&geometry),
    };
    if let Some(d) = dir {
        seli_io::write_json_atomic(&d.summary(), "run summary", &summary)?;
    }
    Ok(UfmOutcome { termination: why, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> UfmParams {
        let p = seli_core::Profile::step(4, 10.0, 0.5, 3).unwrap();
        UfmParams::new(ProfileRecord::new(&p, None))
    }

    /// The runs the tests execute: d = 6, `iters` iterations.
    fn small(iters: u64) -> UfmParams {
        let mut p = params();
        p.d = 6;
        p.iters = iters;
        p
    }

    /// A Ctrl-C flag nobody raises.
    fn no_interrupt() -> InterruptFlag {
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
    }

    #[test]
    fn record_schedules_parse_and_reject() {
        assert_eq!(parse_record("every:100").unwrap(), Schedule::Every(100));
        assert_eq!(parse_record("log:10").unwrap(), Schedule::LogSpaced { per_decade: 10 });
        for bad in ["every:0", "sometimes:3", "every", "log:x"] {
            assert!(parse_record(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
        assert!(record_schedule(Some(1), Some(2)).is_err());
    }

    #[test]
    fn config_round_trips_through_its_run_directory_and_old_files_still_read() {
        let mut p = params();
        p.step_rule = StepRule::parse("step:0.5@10,20").unwrap();
        p.loss_reduction = Reduction::Mean;
        p.dtype = Dtype::F32;
        p.record = Schedule::Every(7);
        let cfg = p.check().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = UfmDir(tmp.path().join("run"));
        dir.start(&cfg, false).unwrap();
        assert_eq!(dir.read_config().unwrap(), cfg);
        let text = std::fs::read_to_string(dir.config()).unwrap();
        for field in [
            "\"step_rule\": \"step:0.5@10,20\"",
            "\"loss_reduction\": \"mean\"",
            "\"dtype\": \"f32\"",
            "\"record\": \"every:7\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        // A config.json of seli 0.1 names the step rule `schedule`.
        std::fs::write(dir.config(), text.replace("\"step_rule\"", "\"schedule\"")).unwrap();
        assert_eq!(dir.read_config().unwrap(), cfg);
        // Invalid values are refused when the file is read, naming the value.
        std::fs::write(dir.config(), text.replace("\"mean\"", "\"median\"")).unwrap();
        let e = dir.read_config().unwrap_err().to_string();
        assert!(e.contains("median") && e.contains("config.json"), "{e}");
        std::fs::write(dir.config(), text.replace("\"d\": 64", "\"d\": 2")).unwrap();
        let e = dir.read_config().unwrap_err().to_string();
        assert!(e.contains("d = 2"), "{e}");
        // A second start without force is refused.
        let e = dir.start(&cfg, false).unwrap_err().to_string();
        assert!(e.contains("already holds a run") && e.contains("seli ufm --resume"), "{e}");
    }

    #[test]
    fn checks_name_the_bad_value() {
        let mut p = params();
        p.lr = -1.0;
        assert!(p.check().unwrap_err().to_string().contains("-1"));
        let mut p = params();
        p.checkpoint_every = 0;
        assert!(p.check().unwrap_err().to_string().contains("checkpoint-every"));
    }

    #[test]
    fn execute_without_a_directory_equals_the_run_with_one() {
        let mut p = small(60);
        p.record = Schedule::Every(20);
        let cfg = p.check().unwrap();
        struct Rows(Vec<Vec<Option<f64>>>);
        impl Watch for Rows {
            fn row(
                &mut self,
                _: &[(&str, &str)],
                v: &[Option<f64>],
            ) -> std::result::Result<(), String> {
                self.0.push(v.to_vec());
                Ok(())
            }
        }
        let mut mem = Rows(Vec::new());
        let a = execute(&cfg, None, false, &mut mem, no_interrupt()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = UfmDir(tmp.path().join("r"));
        dir.start(&cfg, false).unwrap();
        let b = execute(&cfg, Some(&dir), false, &mut crate::watch::Quiet, no_interrupt()).unwrap();
        assert_eq!(a.summary.final_metrics, b.summary.final_metrics);
        assert_eq!(mem.0.len(), 4, "rows at 0, 20, 40, 60");
        let (_, rows) = seli_io::csvlog::read_csv(&dir.metrics()).unwrap();
        assert_eq!(rows, mem.0);
        assert!(Command::Ufm.is_complete(&dir.0));
        use crate::Command;
    }

    #[test]
    fn a_resumed_log_equals_the_uninterrupted_one_after_any_stop() {
        // Log-spaced rows (10 per decade) and a checkpoint at 300, an iteration where the
        // schedule does not fire. A run stopped there (Ctrl-C writes a row at the stop; a
        // SIGKILL after the periodic checkpoint leaves rows past it) and resumed must end with
        // the uninterrupted run's metrics.csv, row for row.
        let mut p = small(400);
        p.checkpoint_every = 150;
        let full = p.clone().check().unwrap();
        assert!(!full.record.fires(300), "the test needs a checkpoint off the schedule");
        let tmp = tempfile::tempdir().unwrap();
        let a = UfmDir(tmp.path().join("a"));
        a.start(&full, false).unwrap();
        execute(&full, Some(&a), false, &mut crate::watch::Quiet, no_interrupt()).unwrap();
        let (_, want) = seli_io::csvlog::read_csv(&a.metrics()).unwrap();
        for killed in [false, true] {
            let b = UfmDir(tmp.path().join(format!("b{killed}")));
            let mut first = p.clone();
            first.iters = 300;
            let first = first.check().unwrap();
            b.start(&first, false).unwrap();
            execute(&first, Some(&b), false, &mut crate::watch::Quiet, no_interrupt()).unwrap();
            if killed {
                // Rows written after the checkpoint by a process that then died.
                let text = std::fs::read_to_string(b.metrics()).unwrap();
                let extra: String = std::fs::read_to_string(a.metrics())
                    .unwrap()
                    .lines()
                    .skip(1)
                    .filter(|l| l.split(',').next().unwrap().parse::<f64>().unwrap() > 300.0)
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(b.metrics(), text + &extra).unwrap();
            }
            let resumed = b.read_config().unwrap().resumed_with(Some(400), 0, None).unwrap();
            execute(&resumed, Some(&b), true, &mut crate::watch::Quiet, no_interrupt()).unwrap();
            let (_, got) = seli_io::csvlog::read_csv(&b.metrics()).unwrap();
            let iters =
                |r: &[Vec<Option<f64>>]| r.iter().map(|r| r[0].unwrap()).collect::<Vec<_>>();
            assert_eq!(iters(&got), iters(&want), "killed: {killed}");
            assert_eq!(got, want, "killed: {killed}");
        }
    }

    #[test]
    fn resuming_a_finished_run_keeps_its_summary() {
        // The summary of the invocation that ended the run (its times and throughput) survives
        // a resume that ends it again without an iteration: at its iteration limit, or
        // converged (even under a larger limit); a missing one is written again, as resumed.
        let mut at_limit = small(120);
        at_limit.checkpoint_every = 50;
        let mut converging = small(100_000);
        converging.step_rule = StepRule::NormalizedGrad;
        converging.lr = 0.1;
        converging.grad_tol = Some(1e-3);
        let tmp = tempfile::tempdir().unwrap();
        for (p, later_iters, ends) in [
            (at_limit, None, Termination::MaxIters.name()),
            (converging, Some(200_000), "converged"),
        ] {
            let cfg = p.check().unwrap();
            let dir = UfmDir(tmp.path().join(ends));
            dir.start(&cfg, false).unwrap();
            let run = |c: &UfmRunConfig, resume| {
                execute(c, Some(&dir), resume, &mut crate::watch::Quiet, no_interrupt()).unwrap()
            };
            let first = run(&cfg, false);
            assert_eq!(first.termination.name(), ends);
            assert!(first.summary.iters_done < 100_000, "{ends}: {}", first.summary.message);
            let summary = std::fs::read(dir.summary()).unwrap();
            let metrics = std::fs::read(dir.metrics()).unwrap();
            let again = cfg.resumed_with(later_iters, 1, None).unwrap();
            let done = run(&again, true);
            assert_eq!(done.termination.name(), ends);
            assert_eq!(done.summary, first.summary, "{ends}");
            assert_eq!(std::fs::read(dir.summary()).unwrap(), summary, "{ends}");
            assert_eq!(std::fs::read(dir.metrics()).unwrap(), metrics, "{ends}");
            // Without its summary the run ends as before, and says it was resumed.
            std::fs::remove_file(dir.summary()).unwrap();
            let rewritten = run(&again, true);
            assert_eq!(rewritten.summary.resumed_from, Some(first.summary.iters_done));
            assert_eq!(rewritten.summary.iters_done, first.summary.iters_done);
            assert_eq!(rewritten.summary.final_metrics, first.summary.final_metrics);
            assert_eq!(UfmSummary::read(&dir.summary()).unwrap(), rewritten.summary);
            assert_eq!(std::fs::read(dir.metrics()).unwrap(), metrics, "{ends}");
        }
    }
}
