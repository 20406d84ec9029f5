//! `seli train`: a deep network on an imbalanced subset of a real dataset, with the last
//! layer's geometry measured against SELI and the ETF every few epochs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use seli_io::dataset::{DatasetKind, default_data_dir};
use seli_io::record::ProfileRecord;
use seli_train::{
    ModelConfig, ModelKind, Progress, RunData, TRAIN_CONFIG_SCHEMA, TrainConfig, TrainSummary,
    default_milestones,
};

use crate::profile_args::ProfileArgs;
use crate::ufm::{interrupt_flag, progress_bar};

/// The training profile when no profile flag is given (`seli_run::command::TRAIN_DEFAULT_STEP`:
/// 5 x 2000 + 5 x 200 = 11000 images, sized so that the default run, 350 epochs of the
/// paper's recipe, finishes in about ten minutes on two cores).
use seli_run::command::TRAIN_DEFAULT_STEP;

/// The files of an earlier run that a fresh run in the same directory removes.
pub const STALE: [&str; 5] =
    ["metrics.csv", "checkpoint.safetensors", "summary.json", "subset.json", "grams.json"];

/// Datasets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DatasetArg {
    /// MNIST digits (scripts/fetch-data.sh).
    Mnist,
    /// Fashion-MNIST (scripts/fetch-data.sh).
    FashionMnist,
    /// CIFAR-10 (binary or python layout, placed by hand).
    Cifar10,
}

impl DatasetArg {
    fn kind(self) -> DatasetKind {
        match self {
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
            DatasetArg::Cifar10 => DatasetKind::Cifar10,
        }
    }
}

/// Networks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    /// Multi-layer perceptron on flattened images.
    Mlp,
    /// CIFAR-style ResNet-18 (3x3 stem, no max-pool).
    Resnet18,
}

const RUN_FLAGS: [&str; 24] = [
    "loss",
    "gamma",
    "tau",
    "dataset",
    "step",
    "long_tail",
    "counts",
    "labels",
    "model",
    "depth",
    "width",
    "no_batch_norm",
    "last_bias",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_decay",
    "milestones",
    "every",
    "checkpoint_every",
    "eval_batch",
    "seed",
];

/// Flags of `seli train`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  scripts/fetch-data.sh                       MNIST and Fashion-MNIST into ./data (once)
  seli train                                  MLP on STEP(R=10, rho=1/2) MNIST, 200 per minority
  seli train --dataset fashion-mnist --step 10,100,0.5,50 --epochs 200 --out runs/fm-r100
  seli train --dataset cifar10 --model resnet18 --step 10,10,0.5,500 --epochs 350
  seli train --resume runs/train              continue from the last checkpoint

Run directory: config.json (every setting and the seed), subset.json (the images drawn),
metrics.csv (one row per measured epoch, columns in docs/formats.md), grams.json (the last
measurement's class-level Grams), checkpoint.safetensors, summary.json; seli report DIR draws it. Ctrl-C stops the run (exit code 130); --resume continues from the last
checkpoint and reproduces the uninterrupted run's numbers.")]
pub struct TrainArgs {
    /// Dataset, read from --data-dir.
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: DatasetArg,

    /// Data directory (default: $SELI_DATA_DIR, else ./data, where scripts/fetch-data.sh
    /// puts MNIST and Fashion-MNIST).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Class counts of the training subset (default here: --step 10,10,0.5,200).
    #[command(flatten)]
    pub profile: ProfileArgs,

    /// Network.
    #[arg(long, value_enum, default_value = "mlp")]
    pub model: ModelArg,

    /// MLP hidden layers.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,

    /// MLP hidden width (the feature dimension), or ResNet-18's first-stage channels
    /// (features: 8 x width). Default 512 for the MLP, 64 for ResNet-18.
    #[arg(long)]
    pub width: Option<usize>,

    /// MLP without batch normalization.
    #[arg(long)]
    pub no_batch_norm: bool,

    /// Give the last layer a bias (bias-free by default, as in the paper).
    #[arg(long)]
    pub last_bias: bool,

    #[command(flatten)]
    pub loss: crate::loss_args::LossArgs,

    /// Training epochs (the paper's recipe).
    #[arg(long, default_value_t = 350)]
    pub epochs: usize,

    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,

    /// Initial learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,

    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,

    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,

    /// Learning-rate factor at each milestone.
    #[arg(long, default_value_t = 0.1)]
    pub lr_decay: f64,

    /// Epochs after which the learning rate decays, comma-separated (default: 1/3 and 2/3
    /// of --epochs).
    #[arg(long, value_name = "E1,E2,...", value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,

    /// Measure the geometry every this many epochs (and after the last).
    #[arg(long, default_value_t = 10)]
    pub every: usize,

    /// Checkpoint every this many epochs (and after the last).
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,

    /// Batch size of the measuring passes.
    #[arg(long, default_value_t = 1000)]
    pub eval_batch: usize,

    /// Seed of the subset, the initialization and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Where to train: cpu (burn's flex backend on all cores, or --threads), cuda or cuda:N
    /// (the N-th NVIDIA GPU; needs a CUDA build, scripts/build-cuda.sh). With --resume: where
    /// to continue (default: where the run started); checkpoints move between devices.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<seli_train::Device>,

    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// Run directory.
    #[arg(long, default_value = "runs/train", conflicts_with = "resume")]
    pub out: PathBuf,

    /// Replace a run already in --out.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,

    /// Continue the run in DIR from its last checkpoint, with its recorded configuration.
    #[arg(long, value_name = "DIR", conflicts_with_all = RUN_FLAGS)]
    pub resume: Option<PathBuf>,
}

impl TrainArgs {
    /// The run configuration these flags describe.
    pub fn config(&self) -> Result<TrainConfig> {
        let (profile, source) = self.profile.resolve_or(TRAIN_DEFAULT_STEP)?;
        let kind = self.dataset.kind();
        let model = match self.model {
            ModelArg::Mlp => ModelKind::Mlp,
            ModelArg::Resnet18 => ModelKind::ResNet18,
        };
        let cfg = TrainConfig {
            schema: TRAIN_CONFIG_SCHEMA.into(),
            dataset: kind,
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir).display().to_string(),
            profile: ProfileRecord::new(&profile, source.as_deref()),
            model: ModelConfig {
                kind: model,
                depth: self.depth,
                width: self.width.unwrap_or(if model == ModelKind::Mlp { 512 } else { 64 }),
                batch_norm: !self.no_batch_norm,
                last_bias: self.last_bias,
            },
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            lr_decay: self.lr_decay,
            milestones: self.milestones.clone().unwrap_or_else(|| default_milestones(self.epochs)),
            every: self.every,
            checkpoint_every: self.checkpoint_every,
            eval_batch: self.eval_batch,
            seed: self.seed,
            device: self.device.unwrap_or_default(),
            threads: self.threads,
            loss: self.loss.resolve(self.last_bias)?.kind,
            gamma: self.loss.gamma,
            tau: self.loss.tau,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A progress bar per epoch with the running loss and accuracy.
struct Bars {
    epochs: usize,
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        let bar = progress_bar(batches as u64, 0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} batches {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{}", self.epochs));
        self.bar = Some(bar);
    }
    fn batch(&mut self, loss: f64, accuracy: f64) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(format!("loss {loss:.4} acc {accuracy:.4}"));
        }
    }
    fn epoch_end(&mut self, epoch: usize, row: Option<&[Option<f64>]>) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(row) = row {
            let get = |c: &str| {
                let i = seli_train::eval::header().iter().position(|n| *n == c);
                i.and_then(|i| row[i]).map_or("-".to_string(), |v| format!("{v:.4}"))
            };
            tracing::info!(
                "epoch {epoch}: train_acc {} test_acc {} dist_gw_seli {} dist_gw_etf {} \
                 dist_gmc_seli {} dist_gmc_etf {}",
                get("train_acc"),
                get("test_acc"),
                get("dist_gw_seli"),
                get("dist_gw_etf"),
                get("dist_gmc_seli"),
                get("dist_gmc_etf")
            );
        }
    }
}

fn read_config(dir: &Path) -> Result<TrainConfig> {
    Ok(seli_train::TrainDir { dir: dir.to_path_buf() }.read_config()?)
}

fn report(s: &TrainSummary, cfg: &TrainConfig, dir: &Path) {
    let get = |c: &str| s.last.get(c).and_then(serde_json::Value::as_f64);
    let f = |c: &str| get(c).map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "{}{} on {} images of {} ({} epochs, d = {}, {} parameters)",
        cfg.model.kind.name(),
        if cfg.model.last_bias { " with last-layer bias" } else { "" },
        s.n_train,
        cfg.dataset.name(),
        s.epochs,
        s.d,
        s.parameters
    );
    println!(
        "  train accuracy {} (majority {}, minority {})   test accuracy {} (majority {}, minority {})",
        f("train_acc"),
        f("train_acc_maj"),
        f("train_acc_min"),
        f("test_acc"),
        f("test_acc_maj"),
        f("test_acc_min")
    );
    println!("                 to SELI   to ETF");
    for (name, a, b) in
        [("G_W", "dist_gw_seli", "dist_gw_etf"), ("G_Mc", "dist_gmc_seli", "dist_gmc_etf")]
    {
        println!("  dist {name:<8} {:>9} {:>8}", f(a), f(b));
    }
    println!("  dist W^T Mc {:>8} (shared target)   dist Z {:>8}", f("dist_wtmc"), f("dist_z"));
    println!("  (Mc: class means centered by their mean; the raw-mean columns are in metrics.csv)");
    println!(
        "  nc1 {}   norm ratio ||w_maj||^2/||w_min||^2 {}   ncc mismatch {}",
        f("nc1"),
        f("norm_ratio_w"),
        f("ncc_mismatch")
    );
    if let Some(r) = s.samples_per_second {
        println!(
            "  training {:.1} s ({r:.0} samples/s), measuring {:.1} s",
            s.train_seconds, s.eval_seconds
        );
    }
    println!("files in {}", dir.display());
}

/// Checks with `check` (the command's device check) that a run in `dir` can continue on
/// `device`, or says how to move it to the CPU (`command`: `train` or `ufm`).
///
/// # Errors
/// A device this build or machine lacks, named, with the `--resume ... --device cpu` line.
pub fn resume_device(
    device: seli_train::Device,
    check: impl Fn(seli_train::Device) -> seli_train::Result<()>,
    dir: &Path,
    command: &str,
) -> Result<()> {
    if let Err(e) = check(device) {
        bail!(
            "{e}\n(the run in {} continues on {device}; its checkpoint continues on any device: \
             seli {command} --resume {} --device cpu)",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Runs `seli train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let (cfg, dir, resume) = match &args.resume {
        Some(dir) => {
            let mut cfg = read_config(dir)?;
            cfg.device = args.device.unwrap_or(cfg.device);
            let check = seli_train::device::check_training;
            resume_device(cfg.device, check, dir, "train")?;
            (cfg, dir.clone(), true)
        }
        None => {
            let cfg = args.config()?;
            // Before the run directory exists: a device this build or machine lacks leaves
            // nothing behind.
            seli_train::device::check_training(cfg.device)?;
            seli_run::prepare_run_dir(&args.out, args.force, seli_run::Command::Train, &STALE)?;
            (cfg, args.out.clone(), false)
        }
    };
    if cfg.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build_global()
            .context("setting the thread count")?;
    }
    let data = seli_io::dataset::load(cfg.dataset, Path::new(&cfg.data_dir))?;
    let run_data = RunData::new(&cfg, &data)?;
    let flag = interrupt_flag();
    let mut bars = Bars { epochs: cfg.epochs, bar: None };
    match seli_train::train(&dir, &cfg, &run_data, resume, &mut bars, &flag) {
        Ok(summary) => {
            report(&summary, &cfg, &dir);
            Ok(ExitCode::SUCCESS)
        }
        Err(seli_train::Error::Interrupted { epoch }) => {
            eprintln!(
                "interrupted in epoch {}; continue with: seli train --resume {} (from the last \
                 checkpoint)",
                epoch + 1,
                dir.display()
            );
            Ok(ExitCode::from(130))
        }
        Err(e) => bail!(e),
    }
}
