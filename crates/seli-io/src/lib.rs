//! # seli-io
//!
//! File formats for seli, and nothing else: datasets (IDX, CIFAR-10), arrays (`.npy`, `.npz`,
//! `.safetensors`), label files, the JSON records and CSV logs the tool writes (each documented
//! next to its type), checkpoints (safetensors), sweep files, and atomic output. Formats know no
//! commands: running them is `seli-run`'s.
#![warn(missing_docs)]

pub mod accumulator;
pub mod arrays;
pub mod atomic;
pub mod checkpoint;
pub mod csv;
pub mod csvlog;
pub mod dataset;
pub mod error;
pub mod harness;
pub mod labels;
pub mod record;
pub mod sweep;

pub use atomic::{create_new_atomic, write_atomic, write_json_atomic};
pub use error::{Error, Result};
pub use labels::{profile_from_label_file, read_labels};
pub use record::{GeometryRecord, LossGeometryRecord};
