//! A training run in its directory: `config.json`, `subset.json`, `metrics.csv`,
//! `grams.json`, `checkpoint.safetensors`, `summary.json` (all documented in docs/formats.md).
//!
//! The batch order of epoch e is a shuffle seeded by (seed, e) alone, and the checkpoint holds
//! the model (with batch-norm running statistics) and the optimizer's momentum, so resuming
//! from a checkpoint continues exactly as the uninterrupted run would have.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use faer::Mat;
use seli_core::Geometry;
use seli_core::random::{rng_from_seed, shuffle};
use seli_io::csvlog::CsvLog;
use seli_io::dataset::Dataset;
use seli_io::write_json_atomic;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{Prepared, subsample};
use crate::error::{Error, Result};
use crate::eval::{self, FeatureModel, Split};
use crate::model::Net;

/// Format tag of the checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "seli.train-checkpoint.v1";
/// Format tag of `summary.json`.
pub const SUMMARY_FORMAT: &str = "seli.train-summary.v1";
/// Format tag of `grams.json`.
pub const GRAMS_FORMAT: &str = "seli.train-grams.v1";
/// Format tag of `subset.json`.
pub const SUBSET_FORMAT: &str = "seli.train-subset.v1";

/// Receives progress: a bar in the CLI, nothing in tests.
pub trait Progress {
    /// Epoch `epoch` (1-based) starts with `batches` mini-batches.
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    /// A mini-batch finished; running mean loss and accuracy of the epoch so far.
    fn batch(&mut self, _loss: f64, _accuracy: f64) {}
    /// Epoch finished; the metrics row when the geometry was measured.
    fn epoch_end(&mut self, _epoch: usize, _row: Option<&[Option<f64>]>) {}
}

/// Progress that goes nowhere.
pub struct Quiet;
impl Progress for Quiet {}

/// The subset drawn for a run, `subset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetRecord {
    /// [`SUBSET_FORMAT`].
    pub format: String,
    /// Dataset name.
    pub dataset: String,
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
    /// [`SUMMARY_FORMAT`].
    pub format: String,
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

/// The files of a run directory.
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
}

impl RunDir {
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
}

/// A network in evaluation mode over the run's two splits.
struct Probe<'a> {
    net: Net,
    train: &'a Prepared,
    test: &'a Prepared,
    device: &'a Device,
    d: usize,
}

impl FeatureModel for Probe<'_> {
    fn dim(&self) -> usize {
        self.d
    }
    fn features_and_logits(&self, split: Split, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let data = if split == Split::Train { self.train } else { self.test };
        let (x, _) = data.batch(rows, self.device);
        let h = self.net.features(x);
        let z = self.net.classify(h.clone());
        (to_vec(h), to_vec(z))
    }
    fn classifier(&self) -> (Mat<f64>, Option<Vec<f64>>) {
        let (w, [d, k], b) = self.net.classifier_weights();
        (
            Mat::from_fn(d, k, |r, c| f64::from(w[r * k + c])),
            b.map(|b| b.into_iter().map(f64::from).collect()),
        )
    }
}

fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

/// Prepares the data of a run: the dataset, the subset, normalized splits, the target.
pub struct RunData {
    /// The subset record.
    pub subset: SubsetRecord,
    /// Normalized training subset.
    pub train: Prepared,
    /// Normalized test split.
    pub test: Prepared,
    /// SELI geometry of the realized counts.
    pub target: Geometry,
}

impl RunData {
    /// Draws the subset of `cfg` from `data`.
    ///
    /// # Errors
    /// The profile asking for more images than a class has; a degenerate profile.
    pub fn new(cfg: &TrainConfig, data: &Dataset) -> Result<Self> {
        let profile = cfg.profile.to_profile()?;
        let indices = subsample(&data.train, profile.counts(), cfg.seed)?;
        let train = Prepared::new(&data.train, data.kind, Some(&indices));
        let test = Prepared::new(&data.test, data.kind, None);
        let target = Geometry::new(&profile)?;
        let subset = SubsetRecord {
            format: SUBSET_FORMAT.into(),
            dataset: cfg.dataset.clone(),
            seed: cfg.seed,
            counts: profile.counts().to_vec(),
            indices,
        };
        Ok(RunData { subset, train, test, target })
    }
}

/// Runs (or, with `resume`, continues) the training run `cfg` in `dir` on `data`.
///
/// Writes `config.json`, `subset.json`, a `metrics.csv` row at epoch 0 and every `every`
/// epochs, a checkpoint every `checkpoint_every` epochs, and `summary.json` at the end.
/// `interrupt` is polled after each mini-batch: when set, the run stops and returns
/// [`Error::Interrupted`]; the last checkpoint stays for `resume`.
///
/// # Errors
/// An invalid config; on resume, a directory whose `config.json` differs from `cfg` or whose
/// checkpoint is missing or damaged; divergence (non-finite loss, named with its epoch); I/O.
pub fn train(
    dir: &Path,
    cfg: &TrainConfig,
    data: &RunData,
    resume: bool,
    progress: &mut dyn Progress,
    interrupt: &AtomicBool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let run = RunDir { dir: dir.to_path_buf() };
    let k = data.target.k();
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let mut net = Net::seeded(&cfg.model, data.train.shape, k, &train_device, cfg.seed)?;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: cfg.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig { penalty: cfg.weight_decay as f32 }))
        .init();
    let header = eval::header();
    let mut start = 0usize;
    let mut log = if resume {
        let text = std::fs::read_to_string(run.config())
            .map_err(|e| seli_io::Error::Io { path: run.config(), cause: e })?;
        let on_disk: TrainConfig =
            serde_json::from_str(&text).map_err(|e| seli_io::Error::Format {
                path: run.config(),
                reason: format!("not a train config: {e}"),
            })?;
        if &on_disk != cfg {
            return Err(Error::Config(format!(
                "{} was written for another configuration; resume with the same flags, or \
                 start a new --out directory",
                run.config().display()
            )));
        }
        let path = run.checkpoint();
        let (meta, blobs) = seli_io::checkpoint::load_blobs(&path, CHECKPOINT_FORMAT)?;
        start = meta
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| ckpt_err(&path, "no epoch in its metadata"))?;
        if start > cfg.epochs {
            return Err(ckpt_err(&path, format!("epoch {start} is past the run's {}", cfg.epochs)));
        }
        let blob = |name: &str| {
            blobs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| Bytes::from_bytes_vec(b.clone()))
                .ok_or_else(|| ckpt_err(&path, format!("no '{name}' blob")))
        };
        let record = ModuleRecord::from_bytes(blob("model")?)
            .map_err(|e| ckpt_err(&path, format!("model record: {e}")))?;
        net = net
            .try_load_record(record)
            .map_err(|e| ckpt_err(&path, format!("model record does not fit the network: {e}")))?;
        optim = optim
            .from_bytes(blob("optimizer")?)
            .map_err(|e| ckpt_err(&path, format!("optimizer record: {e}")))?;
        CsvLog::resume(&run.metrics(), &header, start as f64 + 0.5)?
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| seli_io::Error::Io { path: dir.to_path_buf(), cause: e })?;
        write_json_atomic(&run.config(), "train config", cfg)?;
        write_json_atomic(&run.subset(), "subset record", &data.subset)?;
        CsvLog::create(&run.metrics(), &header)?
    };
    let d = cfg.model.feature_dim();
    let eval_batch = cfg.eval_batch;
    let measure = |net: &Net, epoch: usize| -> Result<Vec<Option<f64>>> {
        let probe =
            Probe { net: net.valid(), train: &data.train, test: &data.test, device: &device, d };
        let m =
            eval::evaluate(&probe, &data.train.labels, &data.test.labels, &data.target, eval_batch)
                .map_err(|e| match e {
                    Error::Diverged { what, value, .. } => Error::Diverged { epoch, what, value },
                    other => other,
                })?;
        let grams = serde_json::json!({
            "format": GRAMS_FORMAT,
            "epoch": epoch,
            "gram_w": m.grams.gram_w.as_ref().map(|g| seli_io::record::rows(g.as_ref())),
            "gram_m": seli_io::record::rows(m.grams.gram_m.as_ref()),
            "gram_mc": seli_io::record::rows(m.grams.gram_mc.as_ref()),
        });
        write_json_atomic(&run.grams(), "class-level Grams", &grams)?;
        Ok(m.values)
    };
    let (mut train_seconds, mut eval_seconds) = (0.0, 0.0);
    let mut last_row: Option<Vec<Option<f64>>> = None;
    if start == 0 {
        let t = Instant::now();
        let mut row = vec![Some(0.0), None, None];
        row.extend(measure(&net, 0)?);
        eval_seconds += t.elapsed().as_secs_f64();
        log.append(&row)?;
        progress.epoch_end(0, Some(&row));
        last_row = Some(row);
    }
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let n = data.train.len();
    let batches = n.div_ceil(cfg.batch_size);
    let mut trained_samples = 0usize;
    for epoch in start + 1..=cfg.epochs {
        let lr = cfg.lr_at(epoch);
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut rng_from_seed(epoch_seed(cfg.seed, epoch)));
        progress.epoch_start(epoch, batches);
        let t = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (b, rows) in order.chunks(cfg.batch_size).enumerate() {
            let (x, y) = data.train.batch(rows, &train_device);
            let logits = net.forward(x);
            let loss = loss_fn.forward(logits.clone(), y.clone());
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(Error::Diverged { epoch, what: "the training loss", value });
            }
            let hits: i64 = logits.argmax(1).flatten::<1>(0, 1).equal(y).int().sum().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            loss_sum += value * rows.len() as f64;
            correct += hits as usize;
            let seen = (b * cfg.batch_size + rows.len()) as f64;
            progress.batch(loss_sum / seen, correct as f64 / seen);
            if interrupt.load(Ordering::SeqCst) {
                return Err(Error::Interrupted { epoch: epoch - 1 });
            }
        }
        train_seconds += t.elapsed().as_secs_f64();
        trained_samples += n;
        let mut row = None;
        if epoch % cfg.every == 0 || epoch == cfg.epochs {
            let t = Instant::now();
            let mut r = vec![Some(epoch as f64), Some(lr), Some(loss_sum / n as f64)];
            r.extend(measure(&net, epoch)?);
            eval_seconds += t.elapsed().as_secs_f64();
            log.append(&r)?;
            row = Some(r);
        }
        if epoch % cfg.checkpoint_every == 0 || epoch == cfg.epochs {
            save_checkpoint(&run.checkpoint(), &net, &optim, epoch)?;
        }
        progress.epoch_end(epoch, row.as_deref());
        if row.is_some() {
            last_row = row;
        }
    }
    let last = match last_row {
        Some(r) => r,
        None => {
            // Resumed after the end: the last logged row.
            let (_, rows) = seli_io::csvlog::read_csv(&run.metrics())?;
            rows.last().cloned().unwrap_or_default()
        }
    };
    let summary = TrainSummary {
        format: SUMMARY_FORMAT.into(),
        epochs: cfg.epochs,
        n_train: n,
        n_test: data.test.len(),
        counts: data.subset.counts.clone(),
        d,
        parameters: net.num_params(),
        train_seconds,
        eval_seconds,
        samples_per_second: (train_seconds > 0.0).then(|| trained_samples as f64 / train_seconds),
        last: header
            .iter()
            .zip(&last)
            .map(|(h, v)| {
                let v = v
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                ((*h).to_string(), v)
            })
            .collect(),
    };
    write_json_atomic(&run.summary(), "train summary", &summary)?;
    Ok(summary)
}

/// Seed of epoch `epoch`'s batch order.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn save_checkpoint(
    path: &Path,
    net: &Net,
    optim: &burn::optim::ModuleOptimizer,
    epoch: usize,
) -> Result<()> {
    let model = net
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| ckpt_err(path, format!("cannot encode the model: {e}")))?;
    let opt = optim
        .into_bytes()
        .map_err(|e| ckpt_err(path, format!("cannot encode the optimizer: {e}")))?;
    seli_io::checkpoint::save_blobs(
        path,
        CHECKPOINT_FORMAT,
        &[("epoch", epoch.to_string())],
        &[("model", &model[..]), ("optimizer", &opt[..])],
    )?;
    Ok(())
}
