//! The files of a `seli ufm` run directory.
//!
//! - `config.json` ([`UfmRunConfig`], schema `seli.ufm-config.v1`): everything needed to
//!   regenerate the run, seed included. `--resume DIR` reads it back.
//! - `metrics.csv`: one row per recorded iteration; columns and meanings are
//!   `seli_core::track::UfmMetrics::columns` (listed in docs/formats.md).
//! - `checkpoint.safetensors`: the variables (see [`crate::checkpoint`]).
//! - `summary.json` ([`UfmSummary`], schema `seli.ufm-summary.v1`): how the run ended, its
//!   speed, the last metrics row and the SELI-vs-ETF reference distances.

use std::collections::BTreeMap;

use seli_core::solve::Schedule;
use seli_core::solve::ufm::{Reduction, StepRule, UfmConfig};
use serde::{Deserialize, Serialize};

use crate::record::ProfileRecord;

/// Schema tag of [`UfmRunConfig`].
pub const UFM_CONFIG_SCHEMA: &str = "seli.ufm-config.v1";
/// Schema tag of [`UfmSummary`].
pub const UFM_SUMMARY_SCHEMA: &str = "seli.ufm-summary.v1";

/// `config.json` of a UFM run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UfmRunConfig {
    /// Always [`UFM_CONFIG_SCHEMA`].
    pub schema: String,
    /// Version of the tool that started the run.
    pub seli_version: String,
    /// Class counts (samples are sorted by class in `H`).
    pub profile: ProfileRecord,
    /// Embedding dimension.
    pub d: usize,
    /// Iteration limit.
    pub iters: u64,
    /// Base learning rate.
    pub lr: f64,
    /// Step rule: `constant`, `step:FACTOR@I1,I2,...`, `norm-grad` or `norm-loss`.
    pub schedule: String,
    /// Ridge on W.
    pub lambda_w: f64,
    /// Ridge on H.
    pub lambda_h: f64,
    /// Whether a bias is trained.
    pub bias: bool,
    /// `sum` or `mean`: how the cross-entropy is reduced over samples.
    pub loss_reduction: String,
    /// `f32` or `f64`.
    pub dtype: String,
    /// Seed of the Gaussian initialization.
    pub seed: u64,
    /// Standard deviation of the initialization.
    pub init_scale: f64,
    /// Stop when the gradient norm falls to this value (null: never).
    pub grad_tol: Option<f64>,
    /// When metrics rows are recorded: `every:N` or `log:P` (P points per decade).
    pub record: String,
    /// Iterations between checkpoints.
    pub checkpoint_every: u64,
    /// Threads used (results do not depend on it).
    pub threads: usize,
}

impl UfmRunConfig {
    /// The solver configuration.
    ///
    /// # Errors
    /// An unknown schedule or loss reduction.
    pub fn ufm_config(&self) -> Result<UfmConfig, seli_core::Error> {
        let reduction = match self.loss_reduction.as_str() {
            "sum" => Reduction::Sum,
            "mean" => Reduction::Mean,
            other => {
                return Err(seli_core::Error::InvalidParameter {
                    name: "loss_reduction",
                    value: other.into(),
                    rule: "must be sum or mean",
                });
            }
        };
        Ok(UfmConfig {
            d: self.d,
            lr: self.lr,
            step_rule: StepRule::parse(&self.schedule)?,
            lambda_w: self.lambda_w,
            lambda_h: self.lambda_h,
            bias: self.bias,
            reduction,
            init_scale: self.init_scale,
            seed: self.seed,
            grad_tol: self.grad_tol,
        })
    }

    /// The recording schedule.
    ///
    /// # Errors
    /// A malformed `record` field.
    pub fn record_schedule(&self) -> Result<Schedule, seli_core::Error> {
        parse_record(&self.record)
    }
}

/// Parses `every:N` (N >= 1) or `log:P` (P >= 1 points per decade).
///
/// # Errors
/// Anything else, named.
pub fn parse_record(s: &str) -> Result<Schedule, seli_core::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_schedules_parse_and_reject() {
        assert_eq!(parse_record("every:100").unwrap(), Schedule::Every(100));
        assert_eq!(parse_record("log:10").unwrap(), Schedule::LogSpaced { per_decade: 10 });
        for bad in ["every:0", "sometimes:3", "every", "log:x"] {
            assert!(parse_record(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }
}
