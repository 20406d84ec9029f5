//! The one error type of `seli-io`.

use std::path::PathBuf;

use thiserror::Error;

/// Errors reading inputs and writing outputs. Each names the file involved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a file.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (in the message, so not repeated as a source).
        cause: std::io::Error,
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
    #[error("{}: {cause}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// The rejection (in the message).
        cause: seli_core::Error,
    },
    /// Serializing a record failed.
    #[error("serializing {what}: {cause}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serializer's error (in the message).
        cause: serde_json::Error,
    },
}

impl Error {
    /// An I/O error on `path` (the OS error alone, without a temporary file's name).
    pub fn io(path: &std::path::Path, cause: std::io::Error) -> Self {
        // tempfile's errors repeat the temporary file's path; the OS error alone is enough.
        let cause = match cause.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => cause,
        };
        Error::Io { path: path.to_path_buf(), cause }
    }

    /// A [`Error::Format`] for `path`.
    pub fn format(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Result alias for `seli-io`.
pub type Result<T> = std::result::Result<T, Error>;
