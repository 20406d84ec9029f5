//! # seli-core
//!
//! The mathematics of the SELI geometry (Simplex-Encoded-Labels Interpolation) of
//! Thrampoulidis, Kini, Vakilian and Behnia, "Imbalance Trouble: Revisiting Neural-Collapse
//! Geometry" (NeurIPS 2022): class-count profiles, the exact SELI and ETF targets at class
//! level, and the normalized distances and Gram statistics that compare a model to them.
//!
//! This crate does no I/O, prints nothing and knows no deep-learning framework.
#![warn(missing_docs)]

pub mod error;
pub mod features;
pub mod implicit;
pub mod loss;
pub mod metrics;
pub mod profile;
pub mod random;
pub mod scalar;
pub mod sel;
pub mod solve;
pub mod track;

pub use error::{Error, Result};
pub use implicit::Target;
pub use loss::{Loss, LossKind};
pub use metrics::ClassStats;
pub use profile::{Group, Profile, ProfileKind};
pub use scalar::Scalar;
pub use sel::{Geometry, Realization};
