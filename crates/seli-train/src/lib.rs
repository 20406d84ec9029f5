//! # seli-train
//!
//! Deep networks on imbalanced real data, measured against SELI every few epochs
//! (docs/theory.md §7 and §8): imbalanced subsets of MNIST, Fashion-MNIST and CIFAR-10 ([`data`]), an
//! MLP and a CIFAR-style ResNet-18 ([`model`]) built on burn's pure-Rust `flex` CPU backend,
//! SGD with momentum, weight decay and step decays, checkpoints and exact resume ([`run`]),
//! and the geometry of the penultimate features and last layer ([`eval`]). On the CPU the
//! convolutions ([`conv`]), linear layers ([`linear`]), batch norm ([`norm`]), the activation
//! ([`activation`]), the loss ([`loss`]) and the optimizer ([`optim`]) take fused
//! paths written here. On a GPU the networks train on [`engine`], seli's own program of cuDNN
//! convolutions, cuBLAS products and kernels of its own (burn's CUDA backend stays for
//! comparison). [`recycle`] is the `seli` binary's allocator, which keeps large freed blocks
//! for the next training step.
//!
//! This crate holds the deep-learning framework so that `seli-core` (the math) and `seli-io`
//! (the formats) stay free of it.
#![warn(missing_docs)]

pub mod activation;
pub mod bench;
pub mod config;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda_ufm;
pub mod data;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
mod flex;
pub mod linear;
pub mod loss;
pub mod model;
pub mod norm;
pub mod optim;
pub mod recycle;
pub mod run;
pub mod ufm;

pub use config::{
    Device, ModelConfig, ModelKind, TRAIN_CONFIG_SCHEMA, TrainConfig, default_milestones,
};
pub use error::{Error, Result};
pub use run::{Progress, Quiet, RunData, train};
pub use seli_run::train::{SubsetRecord, TrainDir, TrainSummary};
