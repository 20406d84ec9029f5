//! The one error type of `seli-io`.

use std::path::PathBuf;

use thiserror::Error;

/// Errors reading inputs and writing outputs. Each names the file involved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what its format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offending value or position.
        reason: String,
    },
    /// Content that the math rejects (an empty class, a bad label).
    #[error("{}: {source}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// The rejection.
        #[source]
        source: seli_core::Error,
    },
    /// Serializing a record failed.
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn format(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Result alias for `seli-io`.
pub type Result<T> = std::result::Result<T, Error>;
