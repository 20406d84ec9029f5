//! Errors of the run layer: those of the math and of the formats, and invalid configurations
//! or records, each naming the bad value and, for records, the file.

use std::path::{Path, PathBuf};

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong when configuring, running or reading a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The math refused (an invalid parameter, a diverging iterate, ...).
    #[error(transparent)]
    Core(#[from] seli_core::Error),
    /// A file could not be read or written, or is malformed.
    #[error(transparent)]
    Io(#[from] seli_io::Error),
    /// An invalid configuration; the message names the value.
    #[error("{0}")]
    Invalid(String),
    /// A record file that is not what it should be.
    #[error("{}: {message}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// A [`Error::Record`] for `path`.
    pub fn record(path: &Path, message: impl Into<String>) -> Self {
        Error::Record { path: path.to_path_buf(), message: message.into() }
    }
}
