//! `seli train` as a run: its checked configuration, its run directory and its records. The
//! training itself (burn) is `seli-train`'s, which reads and writes these types.
//!
//! Run directory ([`TrainDir`]): `config.json` ([`TrainConfig`]), `subset.json`
//! ([`SubsetRecord`]), `metrics.csv`, `grams.json`, `checkpoint.safetensors`, `summary.json`
//! ([`TrainSummary`]); all documented in docs/formats.md.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use seli_io::dataset::DatasetKind;
use seli_io::record::ProfileRecord;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Schema tag of `config.json`.
pub const TRAIN_CONFIG_SCHEMA: &str = "seli.train-config.v1";
/// Schema tag of `summary.json`.
pub const TRAIN_SUMMARY_SCHEMA: &str = "seli.train-summary.v1";
/// Schema tag of `grams.json`.
pub const TRAIN_GRAMS_SCHEMA: &str = "seli.train-grams.v1";
/// Schema tag of `subset.json`.
pub const TRAIN_SUBSET_SCHEMA: &str = "seli.train-subset.v1";
/// Format tag of the checkpoint file (in its safetensors metadata).
pub const TRAIN_CHECKPOINT_FORMAT: &str = "seli.train-checkpoint.v1";

/// Where a run computes: `cpu`, or `cuda:N` (the N-th NVIDIA GPU; `cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// burn's flex backend on the CPU cores.
    #[default]
    Cpu,
    /// An NVIDIA GPU by index.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("device {s:?}: expected cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// Multi-layer perceptron on flattened images.
    #[serde(rename = "mlp")]
    Mlp,
    /// CIFAR-style ResNet-18.
    #[serde(rename = "resnet18")]
    ResNet18,
}

impl ModelKind {
    /// `mlp` or `resnet18`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::ResNet18 => "resnet18",
        }
    }
}

/// Which network, and its size (recorded in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The network.
    pub kind: ModelKind,
    /// MLP: number of hidden layers (the last one's output are the features). Unused by
    /// ResNet-18.
    pub depth: usize,
    /// MLP: hidden width (= feature dimension d). ResNet-18: channels of the first stage (64 in
    /// the standard network; the features have 8 × width dimensions).
    pub width: usize,
    /// MLP: batch normalization after each hidden linear layer (ResNet-18 always has it).
    pub batch_norm: bool,
    /// A bias in the last (classifier) layer.
    pub last_bias: bool,
}

impl ModelConfig {
    /// Checks the sizes.
    ///
    /// # Errors
    /// Zero depth (MLP) or width.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 {
            return Err(Error::Invalid("model width must be at least 1".into()));
        }
        if self.kind == ModelKind::Mlp && self.depth == 0 {
            return Err(Error::Invalid("MLP depth must be at least 1 hidden layer".into()));
        }
        Ok(())
    }

    /// Feature dimension d of the penultimate layer.
    pub fn feature_dim(&self) -> usize {
        match self.kind {
            ModelKind::Mlp => self.width,
            ModelKind::ResNet18 => 8 * self.width,
        }
    }
}

/// Everything that determines a training run. Two runs with equal configs produce the same
/// numbers (on the same build and thread count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// [`TRAIN_CONFIG_SCHEMA`] (files of seli 0.1 call this field `format`).
    #[serde(alias = "format")]
    pub schema: String,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Directory the dataset was read from.
    pub data_dir: String,
    /// Class counts of the training subset (majorities first for STEP); the test split is
    /// used whole.
    pub profile: ProfileRecord,
    /// The network.
    pub model: ModelConfig,
    /// Training epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum (PyTorch convention, no dampening).
    pub momentum: f64,
    /// Weight decay (L2 added to the gradient).
    pub weight_decay: f64,
    /// Factor applied to the learning rate at each milestone.
    pub lr_decay: f64,
    /// Epochs after which the learning rate is multiplied by `lr_decay`.
    pub milestones: Vec<usize>,
    /// Measure the geometry every this many epochs (and after the last one).
    pub every: usize,
    /// Write a checkpoint every this many epochs (and after the last one).
    pub checkpoint_every: usize,
    /// Batch size of the evaluation passes.
    pub eval_batch: usize,
    /// Seed of the subset draw, the initialization and the batch order.
    pub seed: u64,
    /// Where the run computes.
    pub device: Device,
    /// Worker threads (the arithmetic's summation order may depend on it).
    pub threads: usize,
    /// Loss family (docs/theory.md §10); `ce` in files written before it existed.
    #[serde(default = "crate::ufm::text::ce", with = "crate::ufm::text::loss_kind")]
    pub loss: seli_core::LossKind,
    /// `γ` of the family's `Δ`.
    #[serde(default)]
    pub gamma: f64,
    /// `τ` of the family's `ι`.
    #[serde(default)]
    pub tau: f64,
}

impl TrainConfig {
    /// The run's loss (family, γ, τ; a free bias when the last layer has one), checked.
    ///
    /// # Errors
    /// γ or τ not finite, or given to a family that does not use it.
    pub fn loss(&self) -> Result<seli_core::Loss> {
        Ok(seli_core::Loss::new(self.loss, self.gamma, self.tau, self.model.last_bias)?)
    }
}

/// The reference recipe's milestones (docs/theory.md §8): 1/3 and 2/3 of training.
pub fn default_milestones(epochs: usize) -> Vec<usize> {
    let mut m = vec![epochs / 3, 2 * epochs / 3];
    m.retain(|&e| e > 0);
    m.dedup();
    m
}

impl TrainConfig {
    /// Checks every field, naming the bad value.
    ///
    /// # Errors
    /// Another schema; zero epochs, batch size, `every` or `checkpoint_every`; a non-finite
    /// or non-positive learning rate; momentum outside [0, 1); negative weight decay; a decay
    /// factor outside (0, 1]; milestones that are not increasing epochs within the run; a
    /// device this build has no backend for; an invalid model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        self.loss()?;
        if self.schema != TRAIN_CONFIG_SCHEMA {
            return bad(format!("config schema {:?} is not {TRAIN_CONFIG_SCHEMA}", self.schema));
        }
        for (name, v) in [
            ("epochs", self.epochs),
            ("batch size", self.batch_size),
            ("--every", self.every),
            ("--checkpoint-every", self.checkpoint_every),
            ("evaluation batch", self.eval_batch),
        ] {
            if v == 0 {
                return bad(format!("{name} = 0: must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive and finite", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} must lie in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {} must be >= 0 and finite", self.weight_decay));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return bad(format!("learning-rate decay factor {} must lie in (0, 1]", self.lr_decay));
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1])
            || self.milestones.iter().any(|&m| m == 0 || m >= self.epochs)
        {
            return bad(format!(
                "milestones {:?} must be increasing epochs in 1..{}",
                self.milestones, self.epochs
            ));
        }
        self.model.validate()
    }

    /// Whether `other` describes the same run: every setting but where it computes (`device`,
    /// `threads`), which a resumed run may change (a run started on a GPU continues on the CPU
    /// and the reverse; docs/formats.md).
    pub fn same_run(&self, other: &TrainConfig) -> bool {
        let mut a = self.clone();
        a.device = other.device;
        a.threads = other.threads;
        &a == other
    }

    /// Learning rate during epoch `epoch` (1-based): `lr · decay^(milestones < epoch)`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m < epoch).count();
        self.lr * self.lr_decay.powi(passed as i32)
    }
}

/// The subset drawn for a run, `subset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetRecord {
    /// [`TRAIN_SUBSET_SCHEMA`] (`format` in files of seli 0.1).
    #[serde(alias = "format")]
    pub schema: String,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Seed of the draw.
    pub seed: u64,
    /// Realized images per class.
    pub counts: Vec<u64>,
    /// Indices into the training split, grouped by class.
    pub indices: Vec<usize>,
}

/// `summary.json`: the last metrics row and how the run went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// [`TRAIN_SUMMARY_SCHEMA`] (`format` in files of seli 0.1).
    #[serde(alias = "format")]
    pub schema: String,
    /// Epochs completed.
    pub epochs: usize,
    /// Training samples (the subset), test samples.
    pub n_train: usize,
    /// Test samples.
    pub n_test: usize,
    /// Realized class counts of the training subset.
    pub counts: Vec<u64>,
    /// Feature dimension.
    pub d: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Seconds spent in training steps in this process (excluding evaluation).
    pub train_seconds: f64,
    /// Seconds spent measuring the geometry in this process.
    pub eval_seconds: f64,
    /// Training throughput in this process, samples per second.
    pub samples_per_second: Option<f64>,
    /// The last metrics row, by column name.
    pub last: serde_json::Map<String, serde_json::Value>,
}

/// `grams.json`: the class-level Grams of the last measurement, k×k, as arrays of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainGrams {
    /// [`TRAIN_GRAMS_SCHEMA`] (`format` in files of seli 0.1).
    #[serde(alias = "format")]
    pub schema: String,
    /// The epoch of the measurement.
    pub epoch: usize,
    /// `WᵀW` of the last layer.
    pub gram_w: Vec<Vec<f64>>,
    /// `MᵀM` of the raw class means.
    pub gram_m: Vec<Vec<f64>>,
    /// `M̃ᵀM̃` of the class means centered by their mean (absent in files of seli 0.1, whose
    /// `gram_m` was this one).
    #[serde(default)]
    pub gram_mc: Option<Vec<Vec<f64>>>,
}

/// The files of a training run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainDir {
    /// The directory.
    pub dir: PathBuf,
}

impl TrainDir {
    /// The files a fresh run in the same directory replaces.
    pub const OUTPUTS: [&'static str; 5] =
        ["metrics.csv", "checkpoint.safetensors", "summary.json", "subset.json", "grams.json"];

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `subset.json`.
    pub fn subset(&self) -> PathBuf {
        self.dir.join("subset.json")
    }
    /// `metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    /// `checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    /// `grams.json`: the class-level Grams of the last measurement.
    pub fn grams(&self) -> PathBuf {
        self.dir.join("grams.json")
    }

    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// Unreadable, not a training config, or invalid (the bad value named).
    pub fn read_config(&self) -> Result<TrainConfig> {
        let cfg: TrainConfig = crate::read_record(&self.config(), "a seli train config")?;
        cfg.validate().map_err(|e| Error::record(&self.config(), e.to_string()))?;
        Ok(cfg)
    }

    /// Reads `grams.json`.
    ///
    /// # Errors
    /// Unreadable, or not a training run's Grams.
    pub fn read_grams(&self) -> Result<TrainGrams> {
        crate::read_record(&self.grams(), "a seli train grams record")
    }

    /// Reads `summary.json`.
    ///
    /// # Errors
    /// Unreadable, or not a training summary.
    pub fn read_summary(&self) -> Result<TrainSummary> {
        let s: TrainSummary = crate::read_record(&self.summary(), "a seli train summary")?;
        if s.schema != TRAIN_SUMMARY_SCHEMA {
            return Err(Error::record(
                &self.summary(),
                format!("schema '{}' is not {TRAIN_SUMMARY_SCHEMA}", s.schema),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> TrainConfig {
        let p = seli_core::Profile::step(10, 10.0, 0.5, 2).unwrap();
        TrainConfig {
            schema: TRAIN_CONFIG_SCHEMA.into(),
            dataset: DatasetKind::Mnist,
            data_dir: "data".into(),
            profile: ProfileRecord::new(&p, None),
            model: ModelConfig {
                kind: ModelKind::Mlp,
                depth: 2,
                width: 16,
                batch_norm: true,
                last_bias: false,
            },
            epochs: 9,
            batch_size: 8,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_decay: 0.1,
            milestones: default_milestones(9),
            every: 1,
            checkpoint_every: 1,
            eval_batch: 64,
            seed: 0,
            device: Device::Cpu,
            threads: 1,
            loss: seli_core::LossKind::Ce,
            gamma: 0.0,
            tau: 0.0,
        }
    }

    #[test]
    fn schedule_and_validation() {
        let c = config();
        assert_eq!(c.milestones, vec![3, 6]);
        let lrs: Vec<f64> = (1..=9).map(|e| c.lr_at(e)).collect();
        let want = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        c.validate().unwrap();
        let check = |f: &dyn Fn(&mut TrainConfig), msg: &str| {
            let mut c = config();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        };
        check(&|c| c.epochs = 0, "epochs = 0");
        check(&|c| c.lr = f64::NAN, "learning rate NaN");
        check(&|c| c.momentum = 1.0, "momentum 1");
        check(&|c| c.milestones = vec![6, 3], "milestones [6, 3]");
        check(&|c| c.milestones = vec![9], "milestones [9]");
        // Where a run computes is not part of what it is: a resumed run may move.
        let mut gpu = config();
        gpu.device = Device::Cuda(0);
        gpu.validate().unwrap();
        assert!(gpu.same_run(&config()) && config().same_run(&gpu));
        gpu.seed += 1;
        assert!(!gpu.same_run(&config()));
        check(&|c| c.model.width = 0, "width");
        check(&|c| c.lr_decay = 0.0, "decay factor 0");
        check(&|c| c.weight_decay = -1.0, "weight decay -1");
        assert_eq!(default_milestones(2), vec![1]);
        assert_eq!(default_milestones(1), Vec::<usize>::new());
    }

    #[test]
    fn config_round_trips_and_files_of_seli_0_1_still_read() {
        let c = config();
        let text = serde_json::to_string_pretty(&c).unwrap();
        for field in [
            "\"schema\": \"seli.train-config.v1\"",
            "\"dataset\": \"mnist\"",
            "\"kind\": \"mlp\"",
            "\"device\": \"cpu\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), c);
        let old = text.replace("\"schema\"", "\"format\"");
        assert_eq!(serde_json::from_str::<TrainConfig>(&old).unwrap(), c);
        let tmp = tempfile::tempdir().unwrap();
        let run = TrainDir { dir: tmp.path().to_path_buf() };
        std::fs::write(run.config(), text.replace("\"mnist\"", "\"imagenet\"")).unwrap();
        let e = run.read_config().unwrap_err().to_string();
        assert!(e.contains("imagenet") && e.contains("config.json"), "{e}");
        for (s, d) in [("cpu", Device::Cpu), ("cuda", Device::Cuda(0)), ("cuda:3", Device::Cuda(3))]
        {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert!("tpu".parse::<Device>().unwrap_err().contains("tpu"));
        let fashion = serde_json::to_string(&DatasetKind::FashionMnist).unwrap();
        assert_eq!(
            (fashion.as_str(), DatasetKind::FashionMnist.name()),
            ("\"fashion-mnist\"", "fashion-mnist")
        );
        assert_eq!(serde_json::to_string(&DatasetKind::Cifar10).unwrap(), "\"cifar10\"");
    }
}
