//! # seli-report
//!
//! Figures (SVG drawn with plotters, and PNG copies rasterized by resvg) and self-contained HTML reports of seli run directories:
//! distance-to-SELI and distance-to-ETF curves, norm ratios and cosines by group, heatmaps of
//! the normalized Grams beside their SELI and ETF targets, norms by class; and comparisons of
//! several runs.
#![warn(missing_docs)]

pub mod figures;
pub mod png;
pub mod report;
#[cfg(test)]
pub(crate) mod svgcheck;
pub mod sweep;

pub use report::{Run, write_compare, write_report};
