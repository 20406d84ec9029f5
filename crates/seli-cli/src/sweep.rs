//! `seli sweep`: a grid or list of `geometry`, `ufm`, `ridge`, `ridge-path` or `train` runs
//! from one TOML file, run in parallel, each point in its own directory; resumable, shardable
//! across machines, merged into one `results.csv` and a comparison report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use rayon::prelude::*;
use seli_io::csv::Table;
use seli_io::dataset::{Dataset, DatasetKind};
use seli_io::sweep::Value;
use seli_run::Command;
use seli_run::claim::{Attempt, ClaimState, Claims};
use seli_run::sweep::{Point, SWEEP_SCHEMA, SweepSpec, parse_shard};
use seli_run::ufm::{UfmDir, UfmRunConfig};
use seli_train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::geometry::GeometryArgs;
use crate::profile_args::StepSpec;
use crate::ridge::{RidgeArgs, RidgePathArgs};
use crate::train::TrainArgs;
use crate::ufm::{UfmArgs, interrupt_flag};

/// Flags of `seli sweep`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:
  seli sweep examples/sweep-geometry.toml                 every point, all cores
  seli sweep sweep.toml --out runs/s --shard 0/4         points with index % 4 == 0
  seli sweep merge runs/s0 runs/s1 --out runs/s          one results.csv from shard outputs
  seli sweep --keys ufm                                   the keys a ufm sweep takes

A sweep file names a command and its flags (without --): [base] for every point, [grid] for
every combination (arrays, or ranges { from, to, step } / { from, to, num, log }), [[list]]
for explicit points; format in docs/formats.md. Each point runs in OUT/points/NAME; a point
already complete there is skipped, an interrupted one resumes from its checkpoint. Ctrl-C
stops after the running points save their state (exit code 130); the same command continues.

Several workers may run one sweep into one directory at once (pods, array tasks, two users on
a shared disk): each point is claimed (OUT/claims/NAME.json) before it runs, and a worker skips
a point another live worker holds (\"held elsewhere\"). A claim whose worker is gone (its
process ended on this machine, or its heartbeat is older than --lease) is taken over and the
point resumes from its checkpoint."
)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub merge: Option<SweepCommand>,

    /// The sweep file (TOML).
    #[arg(value_name = "SWEEP.toml", required_unless_present = "keys")]
    pub spec: Option<PathBuf>,

    /// Output directory [default: runs/ and the sweep file's name without .toml].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Points run at once (0: all cores) [default: the file's jobs, else all cores; 1 for
    /// train].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Run only shard I of N (0 <= I < N): the points whose index modulo N is I. Shards write
    /// results-shard-I-of-N.csv; seli sweep merge combines them.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,

    /// Start at most M pending points, then stop (the rest run on the next invocation).
    #[arg(long, value_name = "M")]
    pub max_points: Option<usize>,

    /// Print the points (index, shard, state, name) and exit.
    #[arg(long)]
    pub list: bool,

    /// Rerun points whose directory holds a run with other flags (the sweep file changed).
    #[arg(long)]
    pub force: bool,

    /// Seconds after which a claim without a heartbeat is taken over by another worker
    /// (heartbeats every sixth of it; hosts' clocks must agree well within it).
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, value_parser = parse_lease)]
    pub lease: f64,

    /// Print the keys a sweep of COMMAND takes, with their help, and exit.
    #[arg(long, value_name = "COMMAND", conflicts_with = "spec")]
    pub keys: Option<String>,
}

fn parse_lease(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}': not a number of seconds"))?;
    let min = seli_run::claim::MIN_LEASE.as_secs_f64();
    if !(v.is_finite() && v >= min) {
        return Err(format!("'{s}': must be at least {min} seconds"));
    }
    Ok(v)
}

/// `seli sweep merge`.
#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Combine the outputs of shards (or of copies of one sweep) into one results.csv and
    /// report.html.
    Merge(MergeArgs),
}

/// Flags of `seli sweep merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Sweep output directories (each with sweep.json and points/).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,

    /// Where results.csv and report.html go [default: the first DIR].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Merge even when some points are not complete in any DIR (their rows are left out).
    #[arg(long)]
    pub allow_missing: bool,
}

/// The commands a point runs, parsed with the same flag definitions as the CLI.
#[derive(Debug, Parser)]
#[command(name = "seli", no_binary_name = true)]
enum PointCli {
    Geometry(GeometryArgs),
    Ufm(Box<UfmArgs>),
    Ridge(RidgeArgs),
    RidgePath(RidgePathArgs),
    Train(Box<TrainArgs>),
}

/// Flags a sweep manages itself.
const MANAGED: [&str; 8] =
    ["out", "resume", "force", "json", "figures", "threads", "help", "version"];

/// Keys that build `--step K,R,RHO,N_MIN` so that each can be swept alone.
const STEP_KEYS: [&str; 4] = ["k", "ratio", "rho", "n_min"];

/// The keys a sweep of `command` takes: the command's flags but the managed ones, and the
/// STEP parts.
pub fn keys(command: &str) -> std::result::Result<Vec<String>, String> {
    let command: Command = command.parse()?;
    let cli = PointCli::command();
    let sub = cli.find_subcommand(command.name()).expect("every Command is a PointCli subcommand");
    let mut out: Vec<String> = sub
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter(|id| !MANAGED.contains(&id.as_str()))
        .collect();
    out.extend(STEP_KEYS.iter().map(|s| s.to_string()));
    Ok(out)
}

fn print_keys(command: &str) -> Result<()> {
    let command: Command = command.parse().map_err(|_: String| {
        anyhow!(
            "--keys {command}: not a sweep command (one of {})",
            Command::ALL.map(Command::name).join(", ")
        )
    })?;
    let cli = PointCli::command();
    let sub = cli.find_subcommand(command.name()).expect("every Command is a PointCli subcommand");
    println!("keys of a {command} sweep (the flags of seli {command}, without --):");
    for a in sub.get_arguments() {
        let id = a.get_id().as_str();
        if MANAGED.contains(&id) {
            continue;
        }
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let first = help.lines().next().unwrap_or("");
        println!("  {id:<18} {first}");
    }
    let default = command.default_step();
    println!(
        "  k, ratio, rho, n_min  parts of --step K,R,RHO,N_MIN, each sweepable (default {},{},{},{})",
        default.k, default.ratio, default.rho, default.n_min
    );
    Ok(())
}

/// The command line of a point (after `seli`), without the run directory.
fn argv(command: Command, point: &Point) -> Result<Vec<String>> {
    let mut args = vec![command.name().to_string()];
    let mut step: Vec<(&str, String)> = Vec::new();
    for (k, v) in &point.params {
        if STEP_KEYS.contains(&k.as_str()) {
            step.push((k, v.text()));
            continue;
        }
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            Value::Bool(true) => args.push(flag),
            Value::Bool(false) => {}
            v => {
                args.push(flag);
                args.push(v.text());
            }
        }
    }
    if !step.is_empty() {
        for other in ["step", "long_tail", "counts", "labels"] {
            if point.get(other).is_some() {
                bail!(
                    "{} set together with {other}: k, ratio, rho, n_min build --step, so give \
                     either them or {other}",
                    step.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let d: StepSpec = command.default_step();
        let get = |key: &str, default: String| {
            step.iter().find(|(k, _)| *k == key).map_or(default, |(_, v)| v.clone())
        };
        args.push("--step".into());
        args.push(format!(
            "{},{},{},{}",
            get("k", d.k.to_string()),
            get("ratio", d.ratio.to_string()),
            get("rho", d.rho.to_string()),
            get("n_min", d.n_min.to_string())
        ));
    }
    Ok(args)
}

/// What one point does, validated.
enum Job {
    Geometry(GeometryArgs),
    Ufm(Box<UfmRunConfig>),
    Ridge(RidgeArgs),
    RidgePath(RidgePathArgs),
    Train(Box<TrainConfig>),
}

/// Parses a point's flags like the CLI would and checks them.
fn job(command: Command, point: &Point, inner_threads: usize) -> Result<(Job, Vec<String>)> {
    let args = argv(command, point)?;
    let parsed = PointCli::try_parse_from(&args).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        anyhow!(first)
    })?;
    let job = match parsed {
        PointCli::Geometry(a) => {
            a.profile.resolve()?;
            Job::Geometry(a)
        }
        PointCli::Ridge(a) => {
            a.common.profile.resolve()?;
            let (lw, lh) = crate::ridge::lambdas(&a)?;
            seli_core::solve::ridge::RidgeConfig::new(lw, lh, a.common.loss_reduction.into())?;
            Job::Ridge(a)
        }
        PointCli::RidgePath(a) => {
            a.common.profile.resolve()?;
            if a.points < 2 {
                bail!("--points = {}: need at least 2", a.points);
            }
            if !(a.min_fraction > 0.0 && a.min_fraction < 1.0) {
                bail!("--min-fraction = {}: must be in (0, 1)", a.min_fraction);
            }
            Job::RidgePath(a)
        }
        PointCli::Ufm(a) => {
            let cfg = a.run_config()?.resumed_with(None, inner_threads, None)?;
            seli_train::ufm::check_device(cfg.device)?;
            Job::Ufm(Box::new(cfg))
        }
        PointCli::Train(a) => {
            let mut cfg = a.config()?;
            cfg.threads = 0;
            // A device this build or machine lacks fails the sweep before any point runs.
            seli_train::device::check_training(cfg.device)?;
            Job::Train(Box::new(cfg))
        }
    };
    Ok((job, args))
}

/// `point.json` of a point directory.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct PointRecord {
    schema: String,
    command: Command,
    index: usize,
    name: String,
    params: Vec<(String, Value)>,
    /// The equivalent command line.
    command_line: String,
}

const POINT_SCHEMA: &str = "seli.sweep-point.v1";

/// `sweep.json`: the expanded sweep, the same for every shard.
#[derive(Debug, Serialize, Deserialize)]
struct SweepRecord {
    schema: String,
    seli_version: String,
    #[serde(flatten)]
    spec: SweepSpec,
}

/// How a point ended in this invocation.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Complete before this invocation.
    Done,
    /// Run to completion now.
    Ran,
    /// Stopped by Ctrl-C; resumes next time.
    Interrupted,
    /// Not started (--max-points, or Ctrl-C before it began).
    NotStarted,
    /// Failed with this message.
    Failed(String),
    /// Skipped: another live worker holds its claim (described).
    Held(String),
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// Datasets loaded once per (kind, directory) and shared by the training points.
type DataCache = Mutex<HashMap<(DatasetKind, String), Arc<Dataset>>>;

fn dataset(cache: &DataCache, cfg: &TrainConfig) -> Result<Arc<Dataset>> {
    let key = (cfg.dataset, cfg.data_dir.clone());
    let mut c = cache.lock().map_err(|_| anyhow!("dataset cache poisoned"))?;
    if let Some(d) = c.get(&key) {
        return Ok(d.clone());
    }
    let d = Arc::new(seli_io::dataset::load(cfg.dataset, Path::new(&cfg.data_dir))?);
    c.insert(key, d.clone());
    Ok(d)
}

/// Runs one point in `dir` (fresh or resumed); `Ok(false)` when Ctrl-C stopped it.
fn run_point(job: &Job, dir: &Path, data: &DataCache) -> Result<bool> {
    match job {
        Job::Geometry(a) => {
            let rec = crate::geometry::compute(a)?.json()?;
            seli_io::write_json_atomic(&dir.join("geometry.json"), "geometry record", &rec)?;
        }
        Job::Ridge(a) => {
            let rec = crate::ridge::compute(a)?;
            seli_io::write_json_atomic(&dir.join("ridge.json"), "ridge record", &rec)?;
        }
        Job::RidgePath(a) => {
            let rec = crate::ridge::compute_path(a)?;
            crate::ridge::write_path(&dir.join("ridge-path.csv"), None, &rec)?;
        }
        Job::Ufm(cfg) => {
            let run = UfmDir(dir.to_path_buf());
            let resumable = run.resumable_by(cfg);
            if !resumable {
                run.start(cfg, true)?;
            }
            let outcome = seli_run::ufm::execute_with(
                &seli_train::ufm::AnyDevice::default(),
                cfg,
                Some(&run),
                resumable,
                &mut seli_run::watch::Quiet,
                interrupt_flag(),
            )?;
            return Ok(outcome.termination != seli_core::solve::Termination::Interrupted);
        }
        Job::Train(cfg) => {
            let run = seli_train::TrainDir { dir: dir.to_path_buf() };
            let resume = run.checkpoint().is_file() && run.config().is_file();
            if !resume {
                seli_run::prepare_run_dir(dir, true, Command::Train, &crate::train::STALE)?;
            }
            let d = dataset(data, cfg)?;
            let run_data = seli_train::RunData::new(cfg, &d)?;
            match seli_train::train(
                dir,
                cfg,
                &run_data,
                resume,
                &mut seli_train::Quiet,
                &interrupt_flag(),
            ) {
                Ok(_) => {}
                Err(seli_train::Error::Interrupted { .. }) => return Ok(false),
                Err(e) => bail!(e),
            }
        }
    }
    Ok(true)
}

/// Whether `dir/point.json` records `point` of a `command` sweep (`None`: no point.json).
fn recorded(command: Command, point: &Point, dir: &Path) -> Option<bool> {
    let path = dir.join("point.json");
    if !path.is_file() {
        return None;
    }
    let old: Option<PointRecord> =
        read_json(&path).ok().and_then(|v| serde_json::from_value(v).ok());
    Some(old.is_some_and(|o| o.command == command && o.params == point.params))
}

/// Prepares `dir` for `point` and runs it unless it is complete.
fn point_state(
    command: Command,
    point: &Point,
    job: &Job,
    args: &[String],
    dir: &Path,
    force: bool,
    data: &DataCache,
) -> Result<State> {
    let mut line = vec!["seli".to_string()];
    line.extend(args.iter().map(|a| shell_word(a)));
    line.push(match job {
        Job::Geometry(_) => {
            format!("--json {}", shell_word(&dir.join("geometry.json").display().to_string()))
        }
        Job::Ridge(_) => {
            format!("--json {}", shell_word(&dir.join("ridge.json").display().to_string()))
        }
        Job::RidgePath(_) => {
            format!("--out {}", shell_word(&dir.join("ridge-path.csv").display().to_string()))
        }
        _ => format!("--out {}", shell_word(&dir.display().to_string())),
    });
    let rec = PointRecord {
        schema: POINT_SCHEMA.into(),
        command,
        index: point.index,
        name: point.name.clone(),
        params: point.params.clone(),
        command_line: line.join(" "),
    };
    match recorded(command, point, dir) {
        Some(false) if !force => bail!(
            "{} holds a point with other flags (the sweep file changed); pass --force to rerun \
             it, or use another --out",
            dir.display()
        ),
        Some(false) => {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Some(true) if command.is_complete(dir) => return Ok(State::Done),
        _ => {}
    }
    seli_io::write_json_atomic(&dir.join("point.json"), "sweep point", &rec)?;
    Ok(if run_point(job, dir, data)? { State::Ran } else { State::Interrupted })
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The results row of a point: its name, index and varying flags, then its results.
fn row(
    spec: &SweepSpec,
    command: Command,
    point: &Point,
    dir: &Path,
) -> Result<Vec<(String, String)>> {
    let mut r =
        vec![("point".to_string(), point.name.clone()), ("index".into(), point.index.to_string())];
    for k in &spec.varying {
        r.push((k.clone(), point.get(k).map(Value::text).unwrap_or_default()));
    }
    for (c, v) in seli_run::results::results(command, dir)? {
        if !r.iter().any(|(k, _)| *k == c) {
            r.push((c, v));
        }
    }
    Ok(r)
}

fn points_dir(out: &Path) -> PathBuf {
    out.join("points")
}

/// Where the claims of a sweep's points (and of its results file) live.
fn claims_dir(out: &Path) -> PathBuf {
    out.join("claims")
}

/// Writes results (and, for a whole sweep, the report) from the complete points found in
/// `dirs`; returns the table and the directories of the points in it.
fn write_results(
    spec: &SweepSpec,
    points: &[&Point],
    dirs: &[PathBuf],
    csv: &Path,
    report: Option<&Path>,
) -> Result<(Table, usize)> {
    let command = spec.command;
    let mut rows = Vec::new();
    let mut found = Vec::new();
    for p in points {
        if let Some(d) =
            dirs.iter().map(|d| points_dir(d).join(&p.name)).find(|d| command.is_complete(d))
        {
            rows.push(row(spec, command, p, &d).with_context(|| format!("point {}", d.display()))?);
            found.push(d);
        }
    }
    let table = Table::from_rows(&rows);
    seli_io::write_atomic(csv, table.to_csv().as_bytes())?;
    if let Some(html) = report
        && !rows.is_empty()
    {
        seli_report::sweep::write_sweep_report(html, spec, &table, &found)
            .map_err(|e| anyhow!(e))?;
    }
    Ok((table, found.len()))
}

/// Runs `seli sweep` (or `seli sweep merge`).
pub fn run(args: &SweepArgs) -> Result<ExitCode> {
    if let Some(SweepCommand::Merge(m)) = &args.merge {
        return merge(m).map(|()| ExitCode::SUCCESS);
    }
    if let Some(c) = &args.keys {
        print_keys(c)?;
        return Ok(ExitCode::SUCCESS);
    }
    let spec_path = args.spec.as_ref().ok_or_else(|| anyhow!("give a sweep file"))?;
    let spec = SweepSpec::read(spec_path, &keys)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem =
            spec_path.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    let command = spec.command;
    let jobs = args.jobs.or(spec.jobs).or(command.default_jobs()).unwrap_or(0);
    let jobs =
        if jobs == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { jobs };
    // Points share the cores: one thread each when several run at once.
    let inner = if jobs > 1 { 1 } else { 0 };

    // Every point is checked before any runs, in every shard alike.
    let mut jobs_of = Vec::with_capacity(spec.points.len());
    for p in &spec.points {
        let j = job(command, p, inner)
            .with_context(|| format!("{}: point {} ({})", spec_path.display(), p.index, p.name))?;
        jobs_of.push(j);
    }
    let mine: Vec<&Point> = spec.shard(args.shard);
    let dir_of = |p: &Point| points_dir(&out).join(&p.name);
    let claims = Claims::new(Duration::from_secs_f64(args.lease))?;
    let claim_of = |p: &Point| claims_dir(&out).join(format!("{}.json", p.name));
    if args.list {
        println!("{:>6} {:>6} {:>10}  name", "index", "shard", "state");
        let now = seli_run::claim::now();
        for p in &spec.points {
            let shard = args.shard.map_or(0, |(_, n)| p.index % n);
            let claim = claims.inspect(&claim_of(p))?;
            let (state, note) = if command.is_complete(&dir_of(p)) {
                ("done", String::new())
            } else if let ClaimState::Live(h) = &claim {
                ("held", format!("  (by {})", h.describe(now)))
            } else if dir_of(p).join("point.json").is_file() {
                let note = match &claim {
                    ClaimState::Stale(_, why) => format!("  (stale claim: {why})"),
                    _ => String::new(),
                };
                ("started", note)
            } else {
                ("pending", String::new())
            };
            println!("{:>6} {:>6} {:>10}  {}{note}", p.index, shard, state, p.name);
        }
        return Ok(ExitCode::SUCCESS);
    }

    let record = SweepRecord {
        schema: SWEEP_SCHEMA.into(),
        seli_version: env!("CARGO_PKG_VERSION").into(),
        spec: spec.clone(),
    };
    seli_io::write_json_atomic(&out.join("sweep.json"), "sweep record", &record)?;
    let spec_copy =
        std::fs::read(spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    seli_io::write_atomic(&out.join("sweep.toml"), &spec_copy)?;

    // Temporaries of workers killed while creating or refreshing a claim.
    let cleaned = seli_run::claim::remove_leftovers(&claims_dir(&out), claims.lease())?;
    if cleaned > 0 {
        tracing::info!(files = cleaned, "removed leftovers of killed workers from the claims");
    }
    crate::ufm::hide_progress();
    let flag = interrupt_flag();
    let started = AtomicUsize::new(0);
    let limit = args.max_points.unwrap_or(usize::MAX);
    let bar = crate::ufm::points_bar(mine.len() as u64, 0);
    bar.set_message("points");
    let data: DataCache = Mutex::new(HashMap::new());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .context("building the sweep's thread pool")?;
    tracing::info!(points = mine.len(), jobs, out = %out.display(), "sweep starting");
    let complete = |p: &Point| {
        let dir = dir_of(p);
        recorded(command, p, &dir) == Some(true) && command.is_complete(&dir)
    };
    let states: Vec<State> = with_heartbeat(&claims, || {
        pool.install(|| {
            mine.par_iter()
                .with_max_len(1)
                .map(|p| {
                    if complete(p) {
                        // A worker killed between finishing the point and releasing its claim
                        // left the claim behind: clear it.
                        let claim = claim_of(p);
                        if let Ok(ClaimState::Stale(..)) = claims.inspect(&claim)
                            && let Ok(Attempt::Acquired { .. }) = claims.try_claim(&claim)
                            && let Err(e) = claims.release(&claim)
                        {
                            tracing::warn!(point = %p.name, "releasing a stale claim: {e}");
                        }
                        bar.inc(1);
                        return State::Done;
                    }
                    if flag.load(Ordering::Relaxed) {
                        return State::NotStarted;
                    }
                    let claim = claim_of(p);
                    match claims.try_claim(&claim) {
                        Err(e) => return State::Failed(format!("{e:#}")),
                        Ok(Attempt::Held(h)) => {
                            bar.inc(1);
                            return State::Held(h.describe(seli_run::claim::now()));
                        }
                        Ok(Attempt::Acquired { took_over: Some((h, why)) }) => tracing::warn!(
                            point = %p.name,
                            "took over the claim of pid {} on {} ({why}); the point resumes",
                            h.pid,
                            h.host
                        ),
                        Ok(Attempt::Acquired { took_over: None }) => {}
                    }
                    let s = if complete(p) {
                        // Another worker finished it between the check and the claim.
                        State::Done
                    } else if started.fetch_add(1, Ordering::SeqCst) >= limit {
                        State::NotStarted
                    } else {
                        let (job, argv) = &jobs_of[p.index];
                        point_state(command, p, job, argv, &dir_of(p), args.force, &data)
                            .unwrap_or_else(|e| State::Failed(format!("{e:#}")))
                    };
                    if let Err(e) = claims.release(&claim) {
                        tracing::warn!(point = %p.name, "releasing its claim: {e}");
                    }
                    if s != State::NotStarted {
                        bar.inc(1);
                    }
                    if let State::Failed(msg) = &s {
                        bar.suspend(|| eprintln!("point {} ({}) failed: {msg}", p.index, p.name));
                    }
                    s
                })
                .collect()
        })
    });
    bar.finish_and_clear();

    let count = |f: &dyn Fn(&State) -> bool| states.iter().filter(|s| f(s)).count();
    let done_before = count(&|s| *s == State::Done);
    let ran = count(&|s| *s == State::Ran);
    let interrupted = count(&|s| *s == State::Interrupted);
    let not_started = count(&|s| *s == State::NotStarted);
    let failed = count(&|s| matches!(s, State::Failed(_)));
    let held = count(&|s| matches!(s, State::Held(_)));
    let (csv, report) = match args.shard {
        None => (out.join("results.csv"), Some(out.join("report.html"))),
        Some((i, n)) => (out.join(format!("results-shard-{i}-of-{n}.csv")), None),
    };
    // One writer of the results at a time, each reading the points after the previous one
    // wrote: the last worker to finish writes the table with every point it saw complete.
    let results_claim = claims_dir(&out).join(format!(
        "{}.json",
        csv.file_name().map_or("results".into(), |n| n.to_string_lossy())
    ));
    claims.claim_waiting(&results_claim, Duration::from_millis(20), &|| false)?;
    let written = write_results(&spec, &mine, std::slice::from_ref(&out), &csv, report.as_deref());
    claims.release(&results_claim)?;
    let (_, rows) = written?;
    println!(
        "{} sweep{}: {} points; {} complete before, {} run now, {} interrupted, {} not started, {} failed, {} held elsewhere",
        spec.command,
        args.shard.map_or(String::new(), |(i, n)| format!(" (shard {i} of {n})")),
        mine.len(),
        done_before,
        ran,
        interrupted,
        not_started,
        failed,
        held
    );
    for (p, s) in mine.iter().zip(&states) {
        if let State::Held(by) = s {
            println!("point {} ({}) is held elsewhere: {by}", p.index, p.name);
        }
    }
    println!("results: {} ({rows} rows)", csv.display());
    if let Some(r) = report
        && rows > 0
    {
        println!("report: {}", r.display());
    }
    if failed > 0 {
        bail!("{failed} point(s) failed (listed above); rerun the same command to retry them");
    }
    if interrupted > 0 || (not_started > 0 && flag.load(Ordering::Relaxed)) {
        eprintln!("interrupted; rerun the same command to continue");
        return Ok(ExitCode::from(130));
    }
    if not_started > 0 {
        println!("{not_started} point(s) left for the next invocation (--max-points)");
    }
    if held > 0 && rows < mine.len() {
        println!(
            "{held} point(s) were running in other workers; the last worker to finish writes \
             their rows into {} (seli sweep --list shows their state)",
            csv.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` while a thread rewrites the heartbeat of every claim held.
fn with_heartbeat<T>(claims: &Claims, work: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < claims.heartbeat_every() {
                    continue;
                }
                last = Instant::now();
                match claims.refresh() {
                    Ok(lost) => {
                        for p in lost {
                            tracing::warn!(
                                claim = %p.display(),
                                "claim taken over by another worker (no heartbeat within the \
                                 lease): two workers may now write this point"
                            );
                        }
                    }
                    Err(e) => tracing::warn!("refreshing claims: {e}"),
                }
            }
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// Runs `seli sweep merge`.
fn merge(m: &MergeArgs) -> Result<()> {
    let mut spec: Option<(SweepSpec, PathBuf)> = None;
    for d in &m.dirs {
        let path = d.join("sweep.json");
        let rec: SweepRecord = serde_json::from_value(read_json(&path)?)
            .with_context(|| format!("{}: not a seli sweep record", path.display()))?;
        if rec.schema != SWEEP_SCHEMA {
            bail!("{}: schema '{}' is not {SWEEP_SCHEMA}", path.display(), rec.schema);
        }
        match &spec {
            None => spec = Some((rec.spec, d.clone())),
            Some((s, first)) => {
                if s.command != rec.spec.command || s.points != rec.spec.points {
                    bail!(
                        "{} and {} hold different sweeps (their sweep.json differ)",
                        first.display(),
                        d.display()
                    );
                }
            }
        }
    }
    let (spec, _) = spec.ok_or_else(|| anyhow!("no directories to merge"))?;
    let command = spec.command;
    let out = m.out.clone().unwrap_or_else(|| m.dirs[0].clone());
    let all: Vec<&Point> = spec.points.iter().collect();
    let missing: Vec<&Point> = all
        .iter()
        .copied()
        .filter(|p| !m.dirs.iter().any(|d| command.is_complete(&points_dir(d).join(&p.name))))
        .collect();
    if !missing.is_empty() && !m.allow_missing {
        let names: Vec<String> =
            missing.iter().take(5).map(|p| format!("{} ({})", p.index, p.name)).collect();
        bail!(
            "{} of {} points are not complete in any directory: {}{}; run their shards, or pass \
             --allow-missing",
            missing.len(),
            all.len(),
            names.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        );
    }
    let record = SweepRecord {
        schema: SWEEP_SCHEMA.into(),
        seli_version: env!("CARGO_PKG_VERSION").into(),
        spec: spec.clone(),
    };
    seli_io::write_json_atomic(&out.join("sweep.json"), "sweep record", &record)?;
    let csv = out.join("results.csv");
    let html = out.join("report.html");
    let (_, rows) = write_results(&spec, &all, &m.dirs, &csv, Some(&html))?;
    println!("merged {rows} of {} points from {} directories", all.len(), m.dirs.len());
    println!("results: {}", csv.display());
    if rows > 0 {
        println!("report: {}", html.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_io::sweep::normalize_key;

    fn point(params: &[(&str, Value)]) -> Point {
        Point {
            index: 0,
            name: "p".into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    #[test]
    fn keys_are_the_command_flags() {
        let k = keys("ufm").unwrap();
        for want in ["d", "lambda_w", "seed", "schedule", "ratio", "n_min", "counts"] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
        for managed in ["out", "resume", "threads", "force"] {
            assert!(!k.iter().any(|x| x == managed), "{managed}");
        }
        assert!(keys("train").unwrap().iter().any(|x| x == "epochs"));
        assert!(keys("fit").unwrap_err().contains("'fit'"));
        assert_eq!(normalize_key("lambda-w"), "lambda_w");
    }

    #[test]
    fn points_become_command_lines() {
        let p = point(&[
            ("ratio", Value::Int(100)),
            ("d", Value::Int(8)),
            ("bias", Value::Bool(true)),
            ("lambda_w", Value::Float(1e-3)),
            ("counts_unused", Value::Bool(false)),
        ]);
        assert_eq!(
            argv(Command::Ufm, &p).unwrap(),
            ["ufm", "--d", "8", "--bias", "--lambda-w", "0.001", "--step", "10,100,0.5,500"]
        );
        let p = point(&[("k", Value::Int(4)), ("counts", Value::List(vec![Value::Int(1)]))]);
        assert!(
            argv(Command::Geometry, &p).unwrap_err().to_string().contains("either them or counts")
        );
        let t = point(&[("rho", Value::Str("1/3".into()))]);
        assert_eq!(argv(Command::Train, &t).unwrap()[2], "10,10,1/3,200");
    }

    #[test]
    fn bad_values_are_named_before_anything_runs() {
        let p = point(&[("d", Value::Str("many".into()))]);
        let e = job(Command::Ufm, &p, 0).err().unwrap().to_string();
        assert!(e.contains("'many'") && e.contains("--d"), "{e}");
        let p = point(&[("ratio", Value::Int(-1))]);
        let e = format!("{:#}", job(Command::Geometry, &p, 0).err().unwrap());
        assert!(e.contains("-1"), "{e}");
        let p = point(&[("lambda", Value::Float(-1.0))]);
        let e = format!("{:#}", job(Command::Ridge, &p, 0).err().unwrap());
        assert!(e.contains("--step") || e.contains("lambda"), "{e}");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("runs/x=1,y=2"), "runs/x=1,y=2");
    }
}
