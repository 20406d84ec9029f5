//! End-to-end training runs: a tiny synthetic dataset (always), and real MNIST when
//! `scripts/fetch-data.sh` has fetched it (required under CI).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use seli_io::csvlog::read_csv;
use seli_io::dataset::{Dataset, DatasetKind, ImageSet};
use seli_io::record::ProfileRecord;
use seli_train::{
    Device, ModelConfig, ModelKind, Progress, Quiet, RunData, TRAIN_CONFIG_SCHEMA, TrainConfig,
    train,
};

fn config(profile: &seli_core::Profile, epochs: usize) -> TrainConfig {
    TrainConfig {
        schema: TRAIN_CONFIG_SCHEMA.into(),
        dataset: DatasetKind::Mnist,
        data_dir: "synthetic".into(),
        profile: ProfileRecord::new(profile, None),
        model: ModelConfig {
            kind: ModelKind::Mlp,
            depth: 2,
            width: 32,
            batch_norm: true,
            last_bias: false,
        },
        epochs,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        lr_decay: 0.1,
        milestones: seli_train::default_milestones(epochs),
        every: 1,
        checkpoint_every: 1,
        eval_batch: 50,
        seed: 3,
        device: Device::Cpu,
        threads: 0,
        loss: seli_core::LossKind::Ce,
        gamma: 0.0,
        tau: 0.0,
    }
}

/// 4 classes of 6×6 one-channel images: a class-specific bright square plus noise.
fn synthetic() -> Dataset {
    let split = |n: usize, salt: u32| {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = (i % 4) as u32;
            labels.push(y);
            for p in 0..36u32 {
                let (r, c) = (p / 6, p % 6);
                let inside = (r / 3) * 2 + c / 3 == y;
                let noise = (p * 97 + i as u32 * 31 + salt) % 60;
                pixels.push(if inside { 180 + noise as u8 } else { noise as u8 });
            }
        }
        ImageSet { pixels, labels, channels: 1, height: 6, width: 6, classes: 4 }
    };
    Dataset {
        kind: DatasetKind::Mnist,
        dir: PathBuf::from("synthetic"),
        train: split(400, 0),
        test: split(80, 7),
    }
}

/// Sets the interrupt flag when an epoch ends.
struct StopAfter<'a> {
    epoch: usize,
    flag: &'a AtomicBool,
}
impl Progress for StopAfter<'_> {
    fn epoch_end(&mut self, epoch: usize, _row: Option<&[Option<f64>]>) {
        if epoch == self.epoch {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let data = synthetic();
    let profile = seli_core::Profile::from_counts(vec![60, 60, 12, 12]).unwrap();
    let cfg = config(&profile, 4);
    let run = RunData::new(&cfg, &data).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let never = AtomicBool::new(false);
    let full = train(&a, &cfg, &run, false, &mut Quiet, &never).unwrap();

    let flag = AtomicBool::new(false);
    let e =
        train(&b, &cfg, &run, false, &mut StopAfter { epoch: 2, flag: &flag }, &flag).unwrap_err();
    assert!(e.to_string().contains("interrupted after epoch 2"), "{e}");
    let resumed = train(&b, &cfg, &run, true, &mut Quiet, &never).unwrap();
    let (ha, ra) = read_csv(&a.join("metrics.csv")).unwrap();
    let (hb, rb) = read_csv(&b.join("metrics.csv")).unwrap();
    assert_eq!(ha, hb);
    assert_eq!(ra.len(), 5, "epochs 0..=4");
    assert_eq!(ra, rb, "resumed run differs from the uninterrupted one");
    assert_eq!(full.last, resumed.last);
    // Resuming the finished run trains nothing and keeps its summary (the times of the
    // invocation that finished it, not zeros).
    let summary = std::fs::read(b.join("summary.json")).unwrap();
    assert!(resumed.train_seconds > 0.0);
    let again = train(&b, &cfg, &run, true, &mut Quiet, &never).unwrap();
    assert_eq!(again, resumed);
    assert_eq!(std::fs::read(b.join("summary.json")).unwrap(), summary);
    assert_eq!(read_csv(&b.join("metrics.csv")).unwrap().1, ra);

    // Another configuration cannot resume this directory.
    let mut other = cfg.clone();
    other.lr = 0.01;
    let e = train(&b, &other, &run, true, &mut Quiet, &never).unwrap_err().to_string();
    assert!(e.contains("another configuration"), "{e}");
    // A damaged checkpoint is refused, naming the file.
    let ck = b.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 3]).unwrap();
    let e = train(&b, &cfg, &run, true, &mut Quiet, &never).unwrap_err().to_string();
    assert!(e.contains("checkpoint.safetensors"), "{e}");
}

#[test]
fn synthetic_run_learns_and_logs_every_documented_column() {
    let data = synthetic();
    let profile = seli_core::Profile::from_counts(vec![80, 80, 16, 16]).unwrap();
    let mut cfg = config(&profile, 6);
    cfg.model.last_bias = true;
    cfg.every = 2;
    let run = RunData::new(&cfg, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = train(dir.path(), &cfg, &run, false, &mut Quiet, &AtomicBool::new(false)).unwrap();
    let (header, rows) = read_csv(&dir.path().join("metrics.csv")).unwrap();
    let names = seli_train::eval::header();
    assert_eq!(header, names);
    let epochs: Vec<f64> = rows.iter().map(|r| r[0].unwrap()).collect();
    assert_eq!(epochs, vec![0.0, 2.0, 4.0, 6.0]);
    let last = rows.last().unwrap();
    for (name, v) in names.iter().zip(last) {
        assert!(v.is_some_and(f64::is_finite), "{name} = {v:?}");
    }
    assert_eq!(s.last["train_acc"], serde_json::json!(1.0));
    assert!(s.last["test_acc"].as_f64().unwrap() > 0.9);
    assert_eq!(s.counts, vec![80, 80, 16, 16]);
    for f in ["config.json", "subset.json", "summary.json", "checkpoint.safetensors"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}

#[test]
fn real_mnist_small_mlp_learns_on_an_imbalanced_subset() {
    let dir = match std::env::var_os("SELI_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    };
    if !dir.join("mnist").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "CI must run scripts/fetch-data.sh first");
        eprintln!("skipping: no MNIST in {}", dir.display());
        return;
    }
    let data = seli_io::dataset::load(DatasetKind::Mnist, &dir).unwrap();
    let profile = seli_core::Profile::step(10, 10.0, 0.5, 20).unwrap();
    let mut cfg = config(&profile, 4);
    cfg.model.width = 64;
    cfg.batch_size = 32;
    cfg.every = 2;
    let run = RunData::new(&cfg, &data).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = train(out.path(), &cfg, &run, false, &mut Quiet, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.n_train, 1100);
    assert_eq!(s.n_test, 10_000);
    let acc = s.last["train_acc"].as_f64().unwrap();
    assert!(acc > 0.8, "training accuracy {acc} should be far above chance (0.1)");
    let (header, rows) = read_csv(&out.path().join("metrics.csv")).unwrap();
    assert_eq!(header.len(), seli_train::eval::columns().len());
    assert_eq!(rows.len(), 3);
    for (name, v) in header.iter().zip(rows.last().unwrap()) {
        assert!(v.is_some_and(f64::is_finite), "{name} = {v:?}");
    }
}

/// Every loss family trains a deep net (docs/theory.md §10): the run learns the synthetic task,
/// its config records the loss, and the training loss it reports is that family's (not plain
/// cross-entropy: the last epoch's loss differs from a ce run's from the same start).
#[test]
fn loss_families_train_deep_nets() {
    let data = synthetic();
    let profile = seli_core::Profile::from_counts(vec![80, 80, 16, 16]).unwrap();
    let last_loss = |cfg: &TrainConfig| {
        let run = RunData::new(cfg, &data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = train(dir.path(), cfg, &run, false, &mut Quiet, &AtomicBool::new(false)).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["loss"], cfg.loss.name());
        assert!(s.last["test_acc"].as_f64().unwrap() > 0.9, "{:?}: {:?}", cfg.loss, s.last);
        s.last["loss"].as_f64().unwrap()
    };
    let ce = last_loss(&config(&profile, 3));
    for (loss, gamma, tau) in [
        (seli_core::LossKind::Cdt, 1.0, 0.0),
        (seli_core::LossKind::Ldt, -1.0, 0.0),
        (seli_core::LossKind::La, 0.0, 1.0),
        (seli_core::LossKind::Vs, 0.5, 1.0),
    ] {
        let cfg = TrainConfig { loss, gamma, tau, ..config(&profile, 3) };
        let l = last_loss(&cfg);
        assert!(l.is_finite() && (l - ce).abs() > 1e-6, "{loss}: {l} vs ce {ce}");
    }
    let bad = TrainConfig { loss: seli_core::LossKind::Ce, gamma: 1.0, ..config(&profile, 3) };
    assert!(bad.validate().unwrap_err().to_string().contains("gamma = 1"));
}
