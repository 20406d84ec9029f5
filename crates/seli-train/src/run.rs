//! A training run in its directory: `config.json`, `subset.json`, `metrics.csv`,
//! `grams.json`, `checkpoint.safetensors`, `summary.json` (all documented in docs/formats.md).
//!
//! The batch order of epoch e is a shuffle seeded by (seed, e) alone, and the checkpoint holds
//! the model (with batch-norm running statistics) and the optimizer's momentum, so resuming
//! from a checkpoint continues exactly as the uninterrupted run would have.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use faer::Mat;
use seli_core::Geometry;
use seli_core::random::{rng_from_seed, shuffle};
use seli_core::solve::{Executor, IterState, Observer, Schedule, Solver};
use seli_io::csvlog::CsvLog;
use seli_io::dataset::Dataset;
use seli_io::write_json_atomic;

use crate::config::TrainConfig;
use crate::data::{Prepared, subsample};
use crate::engine::Trainer;
use crate::error::{Error, Result};
use crate::eval::{self, FeatureModel, Split};
use crate::model::Net;
use crate::optim::SgdMomentum;
use seli_run::train::{
    SubsetRecord, TRAIN_CHECKPOINT_FORMAT, TRAIN_GRAMS_SCHEMA, TRAIN_SUBSET_SCHEMA,
    TRAIN_SUMMARY_SCHEMA, TrainDir, TrainGrams, TrainSummary,
};

/// Receives progress: a bar in the CLI, nothing in tests. `Send`: on the CPU, training runs on
/// a thread of rayon's pool ([`crate::device::on_compute_threads`]).
pub trait Progress: Send {
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
    fn features_and_logits(&self, split: Split, rows: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let data = if split == Split::Train { self.train } else { self.test };
        let (x, _) = data.batch(rows, self.device);
        let h = self.net.features(x);
        let z = self.net.classify(h.clone());
        Ok((to_vec(h), to_vec(z)))
    }
    fn classifier(&self) -> Result<(Mat<f64>, Option<Vec<f64>>)> {
        let (w, [d, _], b) = self.net.classifier_weights();
        Ok(classifier_matrix(&w, d, b))
    }
}

/// `W` (`d × k` row-major, burn's layout) and the bias in f64.
fn classifier_matrix(w: &[f32], d: usize, b: Option<Vec<f32>>) -> (Mat<f64>, Option<Vec<f64>>) {
    let k = w.len() / d.max(1);
    (
        Mat::from_fn(d, k, |r, c| f64::from(w[r * k + c])),
        b.map(|b| b.into_iter().map(f64::from).collect()),
    )
}

/// The network of a GPU run, in the engine, in evaluation mode over the run's two splits.
struct EngineProbe<'a> {
    engine: &'a RefCell<Box<dyn Trainer>>,
    train: &'a Prepared,
    test: &'a Prepared,
    d: usize,
}

impl FeatureModel for EngineProbe<'_> {
    fn dim(&self) -> usize {
        self.d
    }
    fn features_and_logits(&self, split: Split, rows: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let data = if split == Split::Train { self.train } else { self.test };
        self.engine.borrow_mut().infer(&data.rows(rows), rows.len())
    }
    fn classifier(&self) -> Result<(Mat<f64>, Option<Vec<f64>>)> {
        let (w, b) = self.engine.borrow_mut().classifier()?;
        Ok(classifier_matrix(&w, self.d, b))
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
    /// The run's loss target when it is not SELI (docs/theory.md §10): the `dist_*_target`
    /// columns.
    pub own: Option<seli_core::implicit::LossTarget>,
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
        let own = seli_core::implicit::LossTarget::solve(&profile, cfg.loss()?)?;
        let subset = SubsetRecord {
            schema: TRAIN_SUBSET_SCHEMA.into(),
            dataset: cfg.dataset,
            seed: cfg.seed,
            counts: profile.counts().to_vec(),
            indices,
        };
        Ok(RunData { subset, train, test, target, own })
    }
}

/// A training run after `epoch` epochs: the network, the optimizer, and what the last epoch
/// did. One iteration of the executor is one epoch.
pub struct TrainState {
    epoch: usize,
    /// Taken out while an epoch updates it (burn's optimizer consumes the module). In a GPU
    /// run the engine holds the network: this is its host copy, brought up to date when a
    /// checkpoint is written.
    net: Option<Net>,
    optim: ModuleOptimizer,
    /// The GPU engine (`crate::engine`), which trains a GPU run's network.
    engine: Option<RefCell<Box<dyn Trainer>>>,
    /// Learning rate and mean training loss of the epoch just completed.
    last_epoch: Option<(f64, f64)>,
    train_seconds: f64,
    trained_samples: usize,
}

impl IterState for TrainState {
    fn iter(&self) -> u64 {
        self.epoch as u64
    }
}

impl TrainState {
    fn net(&self) -> &Net {
        self.net.as_ref().expect("the network is back after every epoch")
    }
}

/// The solver: one epoch of mini-batch SGD per iteration. It polls the interrupt flag before
/// the epoch and after every mini-batch, so that Ctrl-C does not wait for the end of a long
/// epoch; an interrupted epoch is abandoned and the run resumes from its last checkpoint.
struct Epochs<'a, 'p> {
    cfg: &'a TrainConfig,
    data: &'a RunData,
    device: Device,
    /// Mini-batches whose loss and hit count stay on the device between read-backs
    /// ([`read_back_every`]).
    read_every: usize,
    loss_fn: burn::nn::loss::CrossEntropyLoss,
    /// The loss family's transform of the logits (None: cross-entropy).
    transform: Option<LogitTransform>,
    progress: &'a RefCell<&'p mut dyn Progress>,
    interrupt: &'a AtomicBool,
    failure: &'a Failure,
}

/// How many mini-batches' loss and hit count stay on the device before they are read back
/// together. On a GPU each read makes the host wait until the device has caught up, and the
/// device then idles while the host queues the next step's kernels; burn's CPU backend
/// computes as it goes, so there every batch is read at once (and the progress bar moves
/// every batch, which matters when a batch takes seconds).
fn read_back_every(device: seli_run::train::Device) -> usize {
    match device {
        seli_run::train::Device::Cpu => 1,
        seli_run::train::Device::Cuda(_) => 32,
    }
}

/// The training loss and correct count of an epoch's mini-batches: the values of the batches
/// since the last read-back stay on the device ([`Self::push`]) until [`Self::settle`] reads
/// them back with one wait and adds them in batch order, so the sums do not depend on how
/// often it reads.
#[derive(Default)]
struct BatchStats {
    /// Per pending batch: the mean loss (one value), the correct count (one value), the rows.
    pending: Vec<(Tensor<1>, Tensor<1, Int>, usize)>,
    /// Σ (batch mean loss × batch rows), in f64.
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl BatchStats {
    fn push(&mut self, loss: Tensor<1>, correct: Tensor<1, Int>, rows: usize) {
        self.pending.push((loss, correct, rows));
    }

    /// Whether to read back now: `read_every` batches are pending, or the epoch's last batch
    /// has been pushed.
    fn due(&self, read_every: usize, last: bool) -> bool {
        last || self.pending.len() >= read_every
    }

    /// Reads the pending batches back and adds them. `Ok(Err(value))` at the first loss that
    /// is not finite (the batches before it are added).
    ///
    /// # Errors
    /// The device could not hand the values back.
    fn settle(&mut self) -> std::result::Result<std::result::Result<(), f64>, String> {
        if self.pending.is_empty() {
            return Ok(Ok(()));
        }
        let (mut losses, mut hits, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (l, h, r) in self.pending.drain(..) {
            losses.push(l);
            hits.push(h);
            rows.push(r);
        }
        let read = |what: &str, data: std::result::Result<TensorData, _>| {
            data.map_err(|e| format!("reading the {what} back: {e:?}"))
        };
        let losses = read("training loss", Tensor::cat(losses, 0).try_into_data())?;
        let hits = read("correct count", Tensor::cat(hits, 0).try_into_data())?;
        for ((loss, hits), rows) in losses.iter::<f32>().zip(hits.iter::<i64>()).zip(rows) {
            let loss = f64::from(loss);
            if !loss.is_finite() {
                return Ok(Err(loss));
            }
            self.loss_sum += loss * rows as f64;
            self.correct += hits as usize;
            self.seen += rows;
        }
        Ok(Ok(()))
    }
}

/// How a loss family turns the network's logits z into those its cross-entropy sees (docs/theory.md
/// §10): `u = m ⊙ z + ι`, `m_c = Δ_c` (cdt, vs) or `Δ_y` for all c (ldt).
struct LogitTransform {
    delta: Vec<f32>,
    per_label: bool,
    shift: Vec<f32>,
}

impl LogitTransform {
    /// The transform of `cfg`'s loss; `None` for plain cross-entropy.
    fn of(cfg: &TrainConfig) -> seli_core::Result<Option<Self>> {
        let loss = cfg.loss().map_err(|e| seli_core::Error::Observer(e.to_string()))?;
        if loss.kind == seli_core::LossKind::Ce {
            return Ok(None);
        }
        let profile =
            cfg.profile.to_profile().map_err(|e| seli_core::Error::Observer(e.to_string()))?;
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Ok(Some(LogitTransform {
            delta: f32s(loss.delta(&profile)),
            per_label: loss.kind == seli_core::LossKind::Ldt,
            shift: f32s(loss.iota(&profile)),
        }))
    }

    /// `u` for a batch of logits whose samples have `labels`.
    fn apply(&self, logits: Tensor<2>, labels: &[u32], device: &Device) -> Tensor<2> {
        let k = self.delta.len();
        let m: Tensor<2> = if self.per_label {
            let v: Vec<f32> = labels.iter().map(|&y| self.delta[y as usize]).collect();
            Tensor::from_data(TensorData::new(v, [labels.len(), 1]), device)
        } else {
            Tensor::from_data(TensorData::new(self.delta.clone(), [1, k]), device)
        };
        let shift: Tensor<2> =
            Tensor::from_data(TensorData::new(self.shift.clone(), [1, k]), device);
        logits * m + shift
    }
}

impl Solver for Epochs<'_, '_> {
    type State = TrainState;

    fn next_iter(&mut self, s: &mut TrainState) -> seli_core::Result<()> {
        let (cfg, data) = (self.cfg, self.data);
        let epoch = s.epoch + 1;
        if self.interrupt.load(Ordering::SeqCst) {
            return Err(seli_core::Error::Interrupted { iter: epoch as u64 });
        }
        let lr = cfg.lr_at(epoch);
        let n = data.train.len();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut rng_from_seed(epoch_seed(cfg.seed, epoch)));
        let batches = n.div_ceil(cfg.batch_size);
        self.progress.borrow_mut().epoch_start(epoch, batches);
        let t = Instant::now();
        if let Some(engine) = &s.engine {
            let stats = self.engine_epoch(&mut engine.borrow_mut(), epoch, &order, lr)?;
            s.epoch = epoch;
            s.last_epoch = Some((lr, stats.loss_sum / n as f64));
            s.train_seconds += t.elapsed().as_secs_f64();
            s.trained_samples += n;
            return Ok(());
        }
        let mut stats = BatchStats::default();
        let mut net = s.net.take().expect("the network is back after every epoch");
        for (b, rows) in order.chunks(cfg.batch_size).enumerate() {
            let (x, y) = data.train.batch(rows, &self.device);
            let logits = net.forward(x);
            let u = match &self.transform {
                None => logits.clone(),
                Some(t) => {
                    let labels: Vec<u32> = rows.iter().map(|&r| data.train.labels[r]).collect();
                    t.apply(logits.clone(), &labels, &self.device)
                }
            };
            let loss = crate::loss::cross_entropy(&self.loss_fn, u, y.clone());
            let hits = logits.argmax(1).flatten::<1>(0, 1).equal(y).int().sum();
            stats.push(loss.clone().detach(), hits, rows.len());
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = s.optim.step(lr, net, grads);
            if stats.due(self.read_every, b + 1 == batches) {
                let settled = stats.settle().map_err(|e| {
                    fail(self.failure, Error::Device(format!("device {}: {e}", cfg.device)))
                })?;
                if let Err(value) = settled {
                    return Err(seli_core::Error::Diverged {
                        iter: epoch as u64,
                        quantity: "the training loss",
                        value,
                    });
                }
                let seen = stats.seen as f64;
                self.progress
                    .borrow_mut()
                    .batch(stats.loss_sum / seen, stats.correct as f64 / seen);
            }
            if self.interrupt.load(Ordering::SeqCst) {
                return Err(seli_core::Error::Interrupted { iter: epoch as u64 });
            }
        }
        s.net = Some(net);
        s.epoch = epoch;
        s.last_epoch = Some((lr, stats.loss_sum / n as f64));
        s.train_seconds += t.elapsed().as_secs_f64();
        s.trained_samples += n;
        Ok(())
    }
}

impl Epochs<'_, '_> {
    /// One epoch on the GPU engine over the batches of `order`: the batches' loss and hit
    /// totals, read back every [`read_back_every`] batches (and after the last).
    fn engine_epoch(
        &self,
        engine: &mut Box<dyn Trainer>,
        epoch: usize,
        order: &[usize],
        lr: f64,
    ) -> seli_core::Result<BatchStats> {
        let (cfg, data) = (self.cfg, self.data);
        // The engine's errors name the device already.
        let device = |e: Error| fail(self.failure, e);
        let batches = order.len().div_ceil(cfg.batch_size);
        let mut stats = BatchStats::default();
        let mut pending = 0;
        for (b, rows) in order.chunks(cfg.batch_size).enumerate() {
            let labels: Vec<u32> = rows.iter().map(|&r| data.train.labels[r]).collect();
            engine.step(&data.train.rows(rows), &labels, lr).map_err(device)?;
            pending += rows.len();
            if b + 1 == batches || (b + 1).is_multiple_of(self.read_every) {
                let (loss, hits) = engine.totals().map_err(device)?;
                if !loss.is_finite() {
                    return Err(seli_core::Error::Diverged {
                        iter: epoch as u64,
                        quantity: "the training loss",
                        value: loss,
                    });
                }
                stats.loss_sum += loss;
                stats.correct += hits as usize;
                stats.seen += pending;
                pending = 0;
                let seen = stats.seen as f64;
                self.progress
                    .borrow_mut()
                    .batch(stats.loss_sum / seen, stats.correct as f64 / seen);
            }
            if self.interrupt.load(Ordering::SeqCst) {
                return Err(seli_core::Error::Interrupted { iter: epoch as u64 });
            }
        }
        Ok(stats)
    }
}

/// The last metrics row written, with the epoch it belongs to.
type LastRow = RefCell<Option<(usize, Vec<Option<f64>>)>>;

/// The first error of an observer, kept with its type (the executor carries only text).
type Failure = RefCell<Option<Error>>;

fn fail(slot: &Failure, e: Error) -> seli_core::Error {
    let text = e.to_string();
    slot.borrow_mut().get_or_insert(e);
    seli_core::Error::Observer(text)
}

/// Measures the geometry (`metrics.csv` row, `grams.json`) at epoch 0 of a fresh run, every
/// `every` epochs and after the last (fired every epoch, it picks those itself so that the
/// last epoch's row is there before the epoch's other observers run).
struct MetricsLog<'a> {
    every: usize,
    epochs: usize,
    data: &'a RunData,
    run: &'a TrainDir,
    log: CsvLog,
    d: usize,
    eval_batch: usize,
    /// The last row written, and the epoch it belongs to.
    last: &'a LastRow,
    eval_seconds: f64,
    failure: &'a Failure,
    /// The run's device (without autodiff), where the measurement's forward passes run.
    device: &'a Device,
}

impl MetricsLog<'_> {
    fn measure(&mut self, s: &TrainState) -> Result<()> {
        if self.last.borrow().as_ref().is_some_and(|(e, _)| *e == s.epoch) {
            return Ok(());
        }
        let t = Instant::now();
        let (train, test, d) = (&self.data.train, &self.data.test, self.d);
        let probe: Box<dyn FeatureModel + '_> = match &s.engine {
            Some(engine) => Box::new(EngineProbe { engine, train, test, d }),
            None => Box::new(Probe { net: s.net().valid(), train, test, device: self.device, d }),
        };
        let data = self.data;
        let m = eval::evaluate(
            probe.as_ref(),
            &data.train.labels,
            &data.test.labels,
            &data.target,
            data.own.as_ref(),
            self.eval_batch,
        )
        .map_err(|e| match e {
            Error::Diverged { what, value, .. } => Error::Diverged { epoch: s.epoch, what, value },
            other => other,
        })?;
        let grams = TrainGrams {
            schema: TRAIN_GRAMS_SCHEMA.into(),
            epoch: s.epoch,
            gram_w: seli_io::record::rows(
                m.grams.gram_w.as_ref().expect("the evaluation passes W").as_ref(),
            ),
            gram_m: seli_io::record::rows(m.grams.gram_m.as_ref()),
            gram_mc: Some(seli_io::record::rows(m.grams.gram_mc.as_ref())),
        };
        write_json_atomic(&self.run.grams(), "class-level Grams", &grams)?;
        let (lr, loss) = s.last_epoch.map_or((None, None), |(lr, loss)| (Some(lr), Some(loss)));
        let mut row = vec![Some(s.epoch as f64), lr, loss];
        row.extend(m.values);
        self.log.append(&row)?;
        self.eval_seconds += t.elapsed().as_secs_f64();
        *self.last.borrow_mut() = Some((s.epoch, row));
        Ok(())
    }
}

impl Observer<TrainState> for MetricsLog<'_> {
    fn observe_init(&mut self, s: &TrainState) -> seli_core::Result<()> {
        if s.epoch == 0 { self.measure(s).map_err(|e| fail(self.failure, e)) } else { Ok(()) }
    }
    fn observe_iter(&mut self, s: &TrainState) -> seli_core::Result<()> {
        if s.epoch.is_multiple_of(self.every) || s.epoch == self.epochs {
            self.measure(s).map_err(|e| fail(self.failure, e))?;
        }
        Ok(())
    }
}

/// Saves the network and the optimizer every `every` epochs and after the last (fired every
/// epoch, like [`MetricsLog`]).
struct Checkpoints<'a> {
    path: PathBuf,
    every: usize,
    epochs: usize,
    failure: &'a Failure,
}

impl Observer<TrainState> for Checkpoints<'_> {
    fn observe_iter(&mut self, s: &TrainState) -> seli_core::Result<()> {
        if s.epoch.is_multiple_of(self.every) || s.epoch == self.epochs {
            save_checkpoint(&self.path, s, s.epoch).map_err(|e| fail(self.failure, e))?;
        }
        Ok(())
    }
}

/// Tells the caller's [`Progress`] that an epoch ended, with its metrics row when one was
/// measured at that epoch.
struct EpochEnds<'a, 'p> {
    progress: &'a RefCell<&'p mut dyn Progress>,
    last: &'a LastRow,
}

impl EpochEnds<'_, '_> {
    fn tell(&self, s: &TrainState) {
        let last = self.last.borrow();
        let row = last.as_ref().filter(|(e, _)| *e == s.epoch).map(|(_, r)| r.as_slice());
        self.progress.borrow_mut().epoch_end(s.epoch, row);
    }
}

impl Observer<TrainState> for EpochEnds<'_, '_> {
    fn observe_init(&mut self, s: &TrainState) -> seli_core::Result<()> {
        if s.epoch == 0 {
            self.tell(s);
        }
        Ok(())
    }
    fn observe_iter(&mut self, s: &TrainState) -> seli_core::Result<()> {
        self.tell(s);
        Ok(())
    }
}

/// Checks a resumed run's directory against `cfg` and loads its checkpoint into `net` and
/// `optim`; returns the checkpoint's epoch.
fn restore(
    run: &TrainDir,
    cfg: &TrainConfig,
    net: Net,
    optim: ModuleOptimizer,
) -> Result<(usize, Net, ModuleOptimizer)> {
    let text = std::fs::read_to_string(run.config())
        .map_err(|e| seli_io::Error::Io { path: run.config(), cause: e })?;
    let on_disk: TrainConfig = serde_json::from_str(&text).map_err(|e| seli_io::Error::Format {
        path: run.config(),
        reason: format!("not a train config: {e}"),
    })?;
    if !on_disk.same_run(cfg) {
        return Err(Error::Config(format!(
            "{} was written for another configuration; resume with the same flags, or \
             start a new --out directory",
            run.config().display()
        )));
    }
    let path = run.checkpoint();
    let (meta, blobs) = seli_io::checkpoint::load_blobs(&path, TRAIN_CHECKPOINT_FORMAT)?;
    let start: usize = meta
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
    let net = net
        .try_load_record(record)
        .map_err(|e| ckpt_err(&path, format!("model record does not fit the network: {e}")))?;
    let optim = optim
        .from_bytes(blob("optimizer")?)
        .map_err(|e| ckpt_err(&path, format!("optimizer record: {e}")))?;
    Ok((start, net, optim))
}

/// Runs (or, with `resume`, continues) the training run `cfg` in `dir` on `data`.
///
/// The loop is seli-core's executor over `Epochs` (one epoch per iteration) with observers
/// for the metrics log (a `metrics.csv` row and `grams.json` at epoch 0 and every `every`
/// epochs and after the last), the checkpoints (every `checkpoint_every` epochs and at the
/// end) and the caller's [`Progress`]. It writes `config.json`, `subset.json` and, at the end,
/// `summary.json`. `interrupt` is polled after each mini-batch: when set, the run stops and
/// returns [`Error::Interrupted`]; the last checkpoint stays for `resume`.
///
/// # Errors
/// An invalid config; on resume, a directory whose `config.json` differs from `cfg` or whose
/// checkpoint is damaged (a run stopped before its first checkpoint starts over); divergence (non-finite loss, named with its epoch); I/O.
pub fn train(
    dir: &Path,
    cfg: &TrainConfig,
    data: &RunData,
    resume: bool,
    progress: &mut dyn Progress,
    interrupt: &AtomicBool,
) -> Result<TrainSummary> {
    crate::device::on_compute_threads(cfg.device, || {
        train_here(dir, cfg, data, resume, progress, interrupt)
    })
}

/// [`train`] on the calling thread.
fn train_here(
    dir: &Path,
    cfg: &TrainConfig,
    data: &RunData,
    resume: bool,
    progress: &mut dyn Progress,
    interrupt: &AtomicBool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let run = TrainDir { dir: dir.to_path_buf() };
    let k = data.target.k();
    let transform = LogitTransform::of(cfg)?;
    // On a GPU the engine trains; burn's network stays on the CPU as its host copy (and is
    // initialized there, so a run starts from the same network on every device).
    let engine = crate::engine::on_device(
        cfg.device,
        &crate::engine::Setup {
            model: &cfg.model,
            image: data.train.shape,
            classes: k,
            batch: cfg.batch_size,
            eval_batch: cfg.eval_batch,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            transform: match &transform {
                Some(t) => crate::engine::Transform {
                    delta: t.delta.clone(),
                    shift: t.shift.clone(),
                    per_label: t.per_label,
                },
                None => crate::engine::Transform::plain(k),
            },
        },
    )?;
    let device = match engine {
        Some(_) => Device::flex(),
        None => crate::device::burn_device(cfg.device)?,
    };
    let train_device = if engine.is_some() { device.clone() } else { device.clone().autodiff() };
    let net = Net::seeded(&cfg.model, data.train.shape, k, &train_device, cfg.seed)?;
    let optim = SgdMomentum::new(cfg.momentum, cfg.weight_decay).init();
    let header = eval::header();
    // A run stopped before its first checkpoint has nothing to resume: it starts over (seeded,
    // so it retraces the uninterrupted run).
    let resume = resume && run.checkpoint().is_file();
    let (start, net, optim, log) = if resume {
        let (start, net, optim) = restore(&run, cfg, net, optim)?;
        // A finished run has nothing left to train: its summary, with the times of the
        // invocation that finished it, stays as it is (it is rewritten only when missing).
        if start == cfg.epochs
            && let Ok(done) = run.read_summary()
        {
            return Ok(done);
        }
        (start, net, optim, CsvLog::resume(&run.metrics(), &header, start as f64 + 0.5)?)
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| seli_io::Error::Io { path: dir.to_path_buf(), cause: e })?;
        write_json_atomic(&run.config(), "train config", cfg)?;
        write_json_atomic(&run.subset(), "subset record", &data.subset)?;
        (0, net, optim, CsvLog::create(&run.metrics(), &header)?)
    };
    let engine = match engine {
        Some(mut e) => {
            let velocities = match resume {
                true => Some(optim.into_bytes().map_err(|e| {
                    ckpt_err(&run.checkpoint(), format!("cannot read the optimizer: {e}"))
                })?),
                false => None,
            };
            e.load(&net, velocities)?;
            Some(RefCell::new(e))
        }
        None => None,
    };
    let mut state = TrainState {
        epoch: start,
        net: Some(net),
        optim,
        engine,
        last_epoch: None,
        train_seconds: 0.0,
        trained_samples: 0,
    };
    let d = cfg.model.feature_dim();
    let failure: Failure = RefCell::new(None);
    // On resume, the kept row of the checkpoint's epoch (if it was measured) is the last one.
    let kept = if resume { seli_io::csvlog::read_csv(&run.metrics())?.1.pop() } else { None };
    let last = RefCell::new(
        kept.filter(|r| r.first().copied().flatten() == Some(start as f64)).map(|r| (start, r)),
    );
    let progress = RefCell::new(progress);
    let mut metrics = MetricsLog {
        every: cfg.every,
        epochs: cfg.epochs,
        data,
        run: &run,
        log,
        d,
        eval_batch: cfg.eval_batch,
        last: &last,
        eval_seconds: 0.0,
        failure: &failure,
        device: &device,
    };
    let epochs = Epochs {
        cfg,
        data,
        device: train_device.clone(),
        loss_fn: CrossEntropyLossConfig::new().init(&train_device),
        transform,
        progress: &progress,
        interrupt,
        failure: &failure,
        read_every: read_back_every(cfg.device),
    };
    let outcome = Executor::new(epochs, cfg.epochs as u64)
        .observe(&mut metrics, Schedule::Every(1))
        .observe(
            Checkpoints {
                path: run.checkpoint(),
                every: cfg.checkpoint_every,
                epochs: cfg.epochs,
                failure: &failure,
            },
            Schedule::Every(1),
        )
        .observe(EpochEnds { progress: &progress, last: &last }, Schedule::Every(1))
        .run(&mut state);
    if let Some(e) = failure.borrow_mut().take() {
        return Err(e);
    }
    match outcome {
        Err(seli_core::Error::Interrupted { iter }) => {
            return Err(Error::Interrupted { epoch: iter as usize - 1 });
        }
        Err(seli_core::Error::Diverged { iter, quantity, value }) => {
            return Err(Error::Diverged { epoch: iter as usize, what: quantity, value });
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let eval_seconds = metrics.eval_seconds;
    drop(metrics);
    let last = match last.into_inner() {
        Some((_, r)) => r,
        None => {
            // Resumed after the end without a summary: the last logged row.
            let (_, rows) = seli_io::csvlog::read_csv(&run.metrics())?;
            rows.last().cloned().unwrap_or_default()
        }
    };
    let summary = TrainSummary {
        schema: TRAIN_SUMMARY_SCHEMA.into(),
        epochs: cfg.epochs,
        n_train: data.train.len(),
        n_test: data.test.len(),
        counts: data.subset.counts.clone(),
        d,
        parameters: state.net().num_params(),
        train_seconds: state.train_seconds,
        eval_seconds,
        samples_per_second: (state.train_seconds > 0.0)
            .then(|| state.trained_samples as f64 / state.train_seconds),
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

/// burn's optimizer record (a burnpack) with its tensors in name order. burn lists them in the
/// order of a hash map, which changes from process to process; sorted, equal optimizer states
/// are equal bytes, and a resumed run ends with the uninterrupted run's checkpoint. Loading
/// finds tensors by name, so the order is free.
fn in_name_order(bytes: Bytes) -> std::result::Result<Vec<u8>, String> {
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| e.to_string())?;
    let scalars = reader.scalars().clone();
    let metadata = reader.metadata().clone();
    let mut tensors = reader.into_tensors().map_err(|e| e.to_string())?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = burn_pack::Writer::new(tensors);
    for (k, v) in &scalars {
        writer = writer.with_scalar(k, *v);
    }
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    Ok(writer.into_bytes().map_err(|e| e.to_string())?.to_vec())
}

fn save_checkpoint(path: &Path, s: &TrainState, epoch: usize) -> Result<()> {
    let (net, opt) = match &s.engine {
        // The engine's network and velocities, in burn's records.
        Some(engine) => engine.borrow_mut().store(s.net().clone())?,
        None => {
            // Batch-norm running statistics keep their latest updates aside until synced, and
            // a record reads only the synced value: without this, a checkpoint taken between
            // measurements held stale statistics, and a resumed run measured different
            // features until they were averaged away (found by killing runs at random
            // moments). `valid()` syncs them (the statistics are shared with the network)
            // without changing what training computes.
            drop(s.net().valid());
            let opt = s
                .optim
                .into_bytes()
                .map_err(|e| e.to_string())
                .and_then(in_name_order)
                .map_err(|e| ckpt_err(path, format!("cannot encode the optimizer: {e}")))?;
            (s.net().clone(), opt)
        }
    };
    let model = net
        .into_record()
        .into_bytes()
        .map_err(|e| ckpt_err(path, format!("cannot encode the model: {e}")))?;
    seli_io::checkpoint::save_blobs(
        path,
        TRAIN_CHECKPOINT_FORMAT,
        &[("epoch", epoch.to_string())],
        &[("model", &model[..]), ("optimizer", &opt[..])],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU path of a run (the engine, here on its reference kernels and on the emulated
    /// GPU) against the CPU path (burn): the same metrics rows, and checkpoints that resume on
    /// the other path.
    mod engine_path {
        use super::*;
        use crate::engine::{ENGINE_ON_CPU, ON_CPU_EMULATED, ON_CPU_REFERENCE};
        use seli_io::dataset::{DatasetKind, ImageSet};
        use seli_io::record::ProfileRecord;

        fn config() -> TrainConfig {
            let profile = seli_core::Profile::from_counts(vec![40, 40, 10, 10]).unwrap();
            TrainConfig {
                schema: seli_run::train::TRAIN_CONFIG_SCHEMA.into(),
                dataset: DatasetKind::Mnist,
                data_dir: "synthetic".into(),
                profile: ProfileRecord::new(&profile, None),
                model: crate::ModelConfig {
                    kind: crate::ModelKind::Mlp,
                    depth: 2,
                    width: 12,
                    batch_norm: true,
                    last_bias: true,
                },
                epochs: 3,
                batch_size: 16,
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
                lr_decay: 0.1,
                milestones: vec![2],
                every: 1,
                checkpoint_every: 1,
                eval_batch: 32,
                seed: 5,
                device: seli_run::train::Device::Cpu,
                threads: 0,
                loss: seli_core::LossKind::Ce,
                gamma: 0.0,
                tau: 0.0,
            }
        }

        /// 4 classes of 5×5 images: a bright corner per class, plus a fixed pattern.
        fn data() -> Dataset {
            let split = |n: usize, salt: u32| {
                let (mut pixels, mut labels) = (Vec::new(), Vec::new());
                for i in 0..n {
                    let y = (i % 4) as u32;
                    labels.push(y);
                    for p in 0..25u32 {
                        let corner = (p / 5 < 2) as u32 * 2 + (p % 5 < 2) as u32 == y;
                        let noise = ((p * 89 + i as u32 * 37 + salt) % 90) as u8;
                        pixels.push(if corner { 150 + noise } else { noise });
                    }
                }
                ImageSet { pixels, labels, channels: 1, height: 5, width: 5, classes: 4 }
            };
            Dataset {
                kind: DatasetKind::Mnist,
                dir: PathBuf::from("synthetic"),
                train: split(200, 0),
                test: split(40, 3),
            }
        }

        /// Sets the flag at the end of epoch `at`.
        struct StopAt<'a>(usize, &'a AtomicBool);
        impl Progress for StopAt<'_> {
            fn epoch_end(&mut self, epoch: usize, _row: Option<&[Option<f64>]>) {
                if epoch == self.0 {
                    self.1.store(true, Ordering::SeqCst);
                }
            }
        }

        /// A run in `dir`, on the engine (`ON_CPU_*`) or not (0); with `stop`, interrupted
        /// after that epoch and resumed on the other path (burn's, or the reference engine).
        fn run(dir: &Path, engine: u8, stop: Option<usize>) -> Vec<Vec<Option<f64>>> {
            let cfg = config();
            let data = RunData::new(&cfg, &data()).unwrap();
            let never = AtomicBool::new(false);
            ENGINE_ON_CPU.store(engine, Ordering::SeqCst);
            if let Some(at) = stop {
                let flag = AtomicBool::new(false);
                let e = train(dir, &cfg, &data, false, &mut StopAt(at, &flag), &flag).unwrap_err();
                assert!(matches!(e, Error::Interrupted { .. }), "{e}");
                let other = if engine == 0 { ON_CPU_REFERENCE } else { 0 };
                ENGINE_ON_CPU.store(other, Ordering::SeqCst);
            }
            let resume = stop.is_some();
            let done = train(dir, &cfg, &data, resume, &mut Quiet, &never);
            ENGINE_ON_CPU.store(0, Ordering::SeqCst);
            done.unwrap();
            seli_io::csvlog::read_csv(&dir.join("metrics.csv")).unwrap().1
        }

        fn same(what: &str, a: &[Vec<Option<f64>>], b: &[Vec<Option<f64>>]) {
            assert_eq!(a.len(), b.len(), "{what}: rows");
            let header = eval::header();
            for (ra, rb) in a.iter().zip(b) {
                for ((x, y), name) in ra.iter().zip(rb).zip(&header) {
                    match (x, y) {
                        (Some(x), Some(y)) => assert!(
                            (x - y).abs() <= 2e-3 * x.abs().max(y.abs()).max(1e-2),
                            "{what}: {name} at epoch {:?}: {x} against {y}",
                            ra[0]
                        ),
                        _ => assert_eq!(x.is_some(), y.is_some(), "{what}: {name}"),
                    }
                }
            }
        }

        #[test]
        fn the_engine_trains_and_measures_as_the_cpu_path_and_resumes_on_it() {
            let tmp = tempfile::tempdir().unwrap();
            let cpu = run(&tmp.path().join("cpu"), 0, None);
            let engine = run(&tmp.path().join("engine"), ON_CPU_REFERENCE, None);
            assert_eq!(cpu.len(), 4, "epochs 0..=3");
            same("engine", &engine, &cpu);
            // The GPU's code (kernels.cu, the launches, the column-major products) emulated.
            same("emulated GPU", &run(&tmp.path().join("gpu"), ON_CPU_EMULATED, None), &cpu);
            // Interrupted on one path, resumed on the other.
            let e2c = run(&tmp.path().join("e2c"), ON_CPU_EMULATED, Some(1));
            same("emulated GPU, then cpu", &e2c, &cpu);
            same("cpu, then engine", &run(&tmp.path().join("c2e"), 0, Some(2)), &cpu);
        }
    }

    /// Batch losses and correct counts pushed as device tensors, read back every `every`
    /// batches as the epoch loop does: the sums, in f64 and batch order, equal the direct ones
    /// whatever `every` is; a loss that is not finite stops the sums just before it.
    #[test]
    fn batch_stats_add_every_batch_once_in_order_however_often_they_are_read() {
        let device = Device::flex();
        let batches: Vec<(f32, i64, usize)> = (0..11)
            .map(|i| (0.1 + 0.37 * i as f32, 3 + (i * 5) % 7, if i == 10 { 5 } else { 16 }))
            .collect();
        let push = |stats: &mut BatchStats, &(loss, hits, rows): &(f32, i64, usize)| {
            let loss = Tensor::<1>::from_data(TensorData::new(vec![loss], [1]), &device);
            let hits = Tensor::<1, Int>::from_data(TensorData::new(vec![hits], [1]), &device);
            stats.push(loss, hits, rows);
        };
        let want: f64 = batches.iter().map(|&(l, _, r)| f64::from(l) * r as f64).sum();
        for every in [1, 3, 4, 11, 32] {
            let mut stats = BatchStats::default();
            let mut reads = 0;
            for (b, batch) in batches.iter().enumerate() {
                push(&mut stats, batch);
                if stats.due(every, b + 1 == batches.len()) {
                    assert_eq!(stats.settle(), Ok(Ok(())));
                    reads += 1;
                }
            }
            assert!(stats.pending.is_empty(), "every = {every}");
            assert_eq!(reads, batches.len().div_ceil(every), "every = {every}");
            assert_eq!(stats.loss_sum, want, "every = {every}");
            assert_eq!(stats.correct, batches.iter().map(|b| b.1 as usize).sum::<usize>());
            assert_eq!(stats.seen, 16 * 10 + 5);
        }

        let mut stats = BatchStats::default();
        assert_eq!(stats.settle(), Ok(Ok(())), "nothing pending");
        for (i, batch) in batches.iter().enumerate().take(6) {
            push(&mut stats, &if i == 4 { (f32::INFINITY, 0, 16) } else { *batch });
        }
        assert_eq!(stats.settle(), Ok(Err(f64::INFINITY)));
        assert_eq!(stats.seen, 4 * 16, "the batches before the infinite loss are added");
    }

    #[test]
    fn only_a_gpu_keeps_batches_on_the_device() {
        assert_eq!(read_back_every(seli_run::train::Device::Cpu), 1);
        assert!(read_back_every(seli_run::train::Device::Cuda(0)) > 1);
    }
}
