//! # seli-run
//!
//! The run layer: what a seli command *is*, between the math (`seli-core`), the formats
//! (`seli-io`) and the front ends (the `seli` binary, `seli sweep`, the Python module,
//! `seli report`).
//!
//! - [`Command`]: the commands that produce runs, defined once (names, defaults, record
//!   files, completeness, key results).
//! - Checked configurations: [`ufm::UfmParams`] → [`ufm::UfmRunConfig`] (typed step rule,
//!   loss reduction, dtype, record schedule; checked once, when built or read back).
//! - Run directories that own their file names ([`ufm::UfmDir`]), and [`ufm::execute`],
//!   the one driver of UFM runs, with a [`watch::Watch`] for progress.
//! - Summaries and their results-table rows ([`results`]).
//! - The drivers of the one-shot commands: the analysis of exported features ([`analyze`]),
//!   the exact solvers' records ([`solutions`]), profile specifications ([`spec`]) and plain
//!   text summaries ([`report`]).
#![warn(missing_docs)]

pub mod analyze;
pub mod command;
pub mod error;
pub mod report;
pub mod results;
pub mod solutions;
pub mod spec;
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
