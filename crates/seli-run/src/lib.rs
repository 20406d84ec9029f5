//! # seli-run
//!
//! The run layer: what a seli command *is*, between the math (`seli-core`), the formats
//! (`seli-io`) and the front ends (the `seli` binary, `seli sweep`, the Python module,
//! `seli report`).
//!
//! - [`Command`]: the commands that produce runs, defined once (names, defaults, record
//!   files, completeness, key results).
//! - Checked configurations: [`ufm::UfmParams`] → [`ufm::UfmRunConfig`] (typed step rule,
//!   loss reduction, dtype, record schedule; checked once, when built or read back), and
//!   [`train::TrainConfig`] (typed dataset, model and device) with its records.
//! - Run directories that own their file names ([`ufm::UfmDir`], [`train::TrainDir`]), and
//!   [`ufm::execute`],
//!   the one driver of UFM runs, with a [`watch::Watch`] for progress.
//! - Summaries and their results-table rows ([`results`]).
//! - Sweep planning ([`sweep`]) and the claims that give each sweep point one writer among
//!   concurrent workers ([`claim`]).
//! - The drivers of the one-shot commands: the analysis of exported features ([`analyze`]),
//!   the exact solvers' records ([`solutions`]), profile specifications ([`spec`]) and plain
//!   text summaries ([`report`]).
#![warn(missing_docs)]

pub mod analyze;
pub mod claim;
pub mod command;
pub mod error;
pub mod report;
pub mod results;
pub mod solutions;
pub mod spec;
pub mod sweep;
pub mod train;
pub mod ufm;
pub mod watch;

use std::path::Path;

pub use command::Command;
pub use error::{Error, Result};

/// Reads a JSON record of type `T` from `path`; `what` names the expected kind in errors.
///
/// # Errors
/// Unreadable file; not JSON; not a `T` (serde's message, which names the bad field or value).
pub fn read_record<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(seli_io::Error::io(path, e)))?;
    serde_json::from_str(&text).map_err(|e| Error::record(path, format!("not {what}: {e}")))
}

/// Creates a run directory for `command`, refusing one that already holds a run
/// (`config.json`) unless `force`, in which case the `outputs` of the old run are removed.
///
/// # Errors
/// A run already there without `force`; the directory cannot be created or cleaned.
pub fn prepare_run_dir(dir: &Path, force: bool, command: Command, outputs: &[&str]) -> Result<()> {
    if dir.join("config.json").exists() && !force {
        return Err(Error::Invalid(format!(
            "{} already holds a run (config.json); continue it with seli {command} --resume {}, \
             or pass --force to start over",
            dir.display(),
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(seli_io::Error::io(dir, e)))?;
    for name in outputs {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::Io(seli_io::Error::io(&p, e)))?;
        }
    }
    Ok(())
}

/// The configuration of a run directory, of whichever command wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunConfig {
    /// A `seli ufm` run.
    Ufm(ufm::UfmRunConfig),
    /// A `seli train` run.
    Train(train::TrainConfig),
    /// A series of per-epoch exports measured by `seli analyze --epochs`.
    Series(analyze::SeriesConfig),
}

impl RunConfig {
    /// Reads and checks `dir/config.json`, recognizing the command by its schema tag.
    ///
    /// # Errors
    /// Unreadable, not a run configuration seli writes, or invalid (the bad value named).
    pub fn read(dir: &Path) -> Result<RunConfig> {
        let path = dir.join("config.json");
        let v: serde_json::Value = read_record(&path, "a seli run config")?;
        let tag = v.get("schema").or_else(|| v.get("format")).and_then(|t| t.as_str());
        match tag {
            Some(ufm::UFM_CONFIG_SCHEMA) => {
                Ok(RunConfig::Ufm(ufm::UfmDir(dir.to_path_buf()).read_config()?))
            }
            Some(train::TRAIN_CONFIG_SCHEMA) => {
                Ok(RunConfig::Train(train::TrainDir { dir: dir.to_path_buf() }.read_config()?))
            }
            Some(analyze::SERIES_CONFIG_SCHEMA) => {
                Ok(RunConfig::Series(read_record(&path, "a seli analyze --epochs config")?))
            }
            other => Err(Error::record(
                &path,
                format!("schema {other:?}: not a seli ufm, train or analyze --epochs run"),
            )),
        }
    }

    /// The sweepable command that writes such runs (`None` for a series of exports).
    pub fn command(&self) -> Option<Command> {
        match self {
            RunConfig::Ufm(_) => Some(Command::Ufm),
            RunConfig::Train(_) => Some(Command::Train),
            RunConfig::Series(_) => None,
        }
    }

    /// The class counts of the run.
    pub fn profile(&self) -> &seli_io::record::ProfileRecord {
        match self {
            RunConfig::Ufm(c) => &c.profile,
            RunConfig::Train(c) => &c.profile,
            RunConfig::Series(c) => &c.profile,
        }
    }

    /// The configuration as JSON, as `config.json` holds it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            RunConfig::Ufm(c) => serde_json::to_value(c),
            RunConfig::Train(c) => serde_json::to_value(c),
            RunConfig::Series(c) => serde_json::to_value(c),
        }
        .unwrap_or_default()
    }
}
