//! The resolved configuration of a training run, `config.json` in its run directory
//! (`seli.train-config.v1`, documented in docs/formats.md). The types are the run layer's
//! (`seli_run::train`), shared with the CLI, sweeps and reports; re-exported here.

pub use seli_run::train::{
    Device, ModelConfig, ModelKind, TRAIN_CONFIG_SCHEMA, TrainConfig, default_milestones,
};
