//! The one error type of `seli-train`.

use thiserror::Error;

/// Errors setting up, running or resuming a training run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid training configuration (the message names the value and the rule).
    #[error("{0}")]
    Config(String),
    /// The device cannot be used (CUDA missing from the build, no driver, NVRTC, headers or
    /// GPU); the message says what is missing and how to provide it.
    #[error("{0}")]
    Device(String),
    /// A dataset or output file problem.
    #[error(transparent)]
    Io(#[from] seli_io::Error),
    /// The math rejected something (an empty class, a degenerate geometry).
    #[error(transparent)]
    Math(#[from] seli_core::Error),
    /// The loss or the features stopped being finite.
    #[error("training diverged at epoch {epoch}: {what} is {value}")]
    Diverged {
        /// Epoch (1-based) in which it happened.
        epoch: usize,
        /// What became non-finite.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// A checkpoint that does not belong to this run or cannot be restored.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The run was interrupted (Ctrl-C) after saving a checkpoint.
    #[error("interrupted after epoch {epoch}; resume with --resume")]
    Interrupted {
        /// Last completed epoch.
        epoch: usize,
    },
}

impl From<seli_run::Error> for Error {
    fn from(e: seli_run::Error) -> Self {
        match e {
            seli_run::Error::Core(e) => Error::Math(e),
            seli_run::Error::Io(e) => Error::Io(e),
            other => Error::Config(other.to_string()),
        }
    }
}

/// Result alias for `seli-train`.
pub type Result<T> = std::result::Result<T, Error>;
