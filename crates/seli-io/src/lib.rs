//! # seli-io
//!
//! File formats for seli: label files (text and `.npy`), the JSON records and CSV logs the
//! tool writes (each documented next to its type), UFM checkpoints (safetensors), plain-text
//! summaries, and atomic output.
#![warn(missing_docs)]

pub mod analyze;
pub mod arrays;
pub mod atomic;
pub mod checkpoint;
pub mod csvlog;
pub mod dataset;
pub mod error;
pub mod harness;
pub mod labels;
pub mod record;
pub mod report;
pub mod run;
pub mod solutions;
pub mod spec;
pub mod sweep;

pub use atomic::{write_atomic, write_json_atomic};
pub use error::{Error, Result};
pub use labels::{profile_from_label_file, read_labels};
pub use record::GeometryRecord;
