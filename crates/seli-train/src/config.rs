//! The resolved configuration of a training run, `config.json` in its run directory
//! (`seli.train-config.v1`, documented in docs/formats.md).

use seli_io::record::ProfileRecord;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Format tag of `config.json`.
pub const TRAIN_CONFIG_FORMAT: &str = "seli.train-config.v1";

/// Everything that determines a training run. Two runs with equal configs produce the same
/// numbers (on the same build and thread count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// [`TRAIN_CONFIG_FORMAT`].
    pub format: String,
    /// `mnist`, `fashion-mnist` or `cifar10`.
    pub dataset: String,
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
    /// `cpu`.
    pub device: String,
    /// Worker threads (the arithmetic's summation order may depend on it).
    pub threads: usize,
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
    /// Zero epochs, batch size, `every` or `checkpoint_every`; a non-finite or non-positive
    /// learning rate; momentum outside [0, 1); negative weight decay; a decay factor outside
    /// (0, 1]; milestones that are not increasing epochs within the run; an unknown device or
    /// dataset; an invalid model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.format != TRAIN_CONFIG_FORMAT {
            return bad(format!("config format {:?} is not {TRAIN_CONFIG_FORMAT}", self.format));
        }
        seli_io::dataset::DatasetKind::parse(&self.dataset).map_err(Error::Config)?;
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
        if self.device != "cpu" {
            return bad(format!(
                "device {:?}: this build trains on the CPU only (no CUDA backend is compiled \
                 in; see the README's GPU section)",
                self.device
            ));
        }
        self.model.validate()
    }

    /// Learning rate during epoch `epoch` (1-based): `lr · decay^(milestones < epoch)`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m < epoch).count();
        self.lr * self.lr_decay.powi(passed as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> TrainConfig {
        let p = seli_core::Profile::step(10, 10.0, 0.5, 2).unwrap();
        TrainConfig {
            format: TRAIN_CONFIG_FORMAT.into(),
            dataset: "mnist".into(),
            data_dir: "data".into(),
            profile: ProfileRecord::new(&p, None),
            model: ModelConfig {
                kind: "mlp".into(),
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
            device: "cpu".into(),
            threads: 1,
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
        check(&|c| c.device = "cuda".into(), "CPU only");
        check(&|c| c.dataset = "imagenet".into(), "imagenet");
        check(&|c| c.model.kind = "vit".into(), "vit");
        check(&|c| c.lr_decay = 0.0, "decay factor 0");
        check(&|c| c.weight_decay = -1.0, "weight decay -1");
        assert_eq!(default_milestones(2), vec![1]);
        assert_eq!(default_milestones(1), Vec::<usize>::new());
    }
}
