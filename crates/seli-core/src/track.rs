//! The metrics recorded while a UFM run trains, and the observer that records them.
//!
//! Every metric is evaluated at the same iterate `θ_t`, in `f64` whatever the training type.
//! Targets come from the class-level [`Geometry`] of the run's profile.
#![allow(non_snake_case)]

use std::sync::LazyLock;

use faer::Mat;

use crate::error::{Error, Result};
use crate::features::{FeatureGeometry, GEOMETRY_COLUMNS};
use crate::scalar::Scalar;
use crate::sel::Geometry;
use crate::solve::Observer;
use crate::solve::ufm::UfmState;

/// The columns of a UFM run's own, before [`GEOMETRY_COLUMNS`].
pub const RUN_COLUMNS: &[(&str, &str)] = &[
    ("iter", "iterations completed"),
    ("step", "step size applied by the next iteration"),
    ("objective", "loss plus ridge terms"),
    ("loss", "cross-entropy, summed or mean as recorded in config.json"),
    ("min_margin", "min over samples of z_y - max_{c != y} z_c"),
    ("grad_norm", "Frobenius norm of the full gradient"),
    ("h_norm_sq", "||H||_F^2"),
];

static COLUMNS: LazyLock<Vec<(&'static str, &'static str)>> =
    LazyLock::new(|| RUN_COLUMNS.iter().chain(GEOMETRY_COLUMNS).copied().collect());

pub use crate::implicit::LossTarget;

/// One row of `metrics.csv`. Names are the CSV headers; see [`UfmMetrics::columns`].
#[derive(Debug, Clone, PartialEq)]
pub struct UfmMetrics {
    /// Values in [`UfmMetrics::columns`] order; `None` where undefined.
    pub values: Vec<Option<f64>>,
}

impl UfmMetrics {
    /// Column names and meanings, in order: [`RUN_COLUMNS`], then the feature-level
    /// [`GEOMETRY_COLUMNS`] shared with `seli train` and `seli analyze`. These are the
    /// documented `metrics.csv` headers.
    pub fn columns() -> &'static [(&'static str, &'static str)] {
        &COLUMNS
    }

    /// The value of column `name`.
    ///
    /// # Panics
    /// If `name` is not a column.
    pub fn get(&self, name: &str) -> Option<f64> {
        let i = Self::columns()
            .iter()
            .position(|(c, _)| *c == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        self.values[i]
    }

    /// Evaluates every metric at `state`'s iterate: the run's own columns from the solver's
    /// evaluation, the geometry by [`FeatureGeometry`] over the embeddings `H` as features
    /// and `WᵀH + b1ᵀ` as logits (the same code `seli analyze` runs on exported files).
    ///
    /// # Errors
    /// Non-finite iterates; decompositions failing.
    pub fn compute<T: Scalar>(
        state: &UfmState<T>,
        labels: &[u32],
        target: &Geometry,
        own: Option<&LossTarget>,
    ) -> Result<Self> {
        let p = &state.params;
        let k = target.k();
        let n = labels.len();
        let W = Mat::from_fn(p.W.nrows(), k, |i, j| p.W[(i, j)].to_f64());
        let H = Mat::from_fn(p.H.nrows(), n, |i, j| p.H[(i, j)].to_f64());
        let mut Z = W.transpose() * &H;
        if let Some(b) = &p.b {
            for i in 0..n {
                for c in 0..k {
                    Z[(c, i)] += b[c].to_f64();
                }
            }
        }
        let geometry = FeatureGeometry::of_matrices(H.as_ref(), Z.as_ref(), labels)?;
        let e = &state.eval;
        let mut values = vec![
            Some(state.iter as f64),
            Some(state.step),
            Some(e.objective),
            Some(e.loss),
            Some(e.min_margin),
            Some(e.grad_norm),
            Some(H.squared_norm_l2()),
        ];
        values.extend(geometry.values_with(Some(W.as_ref()), target, own)?);
        debug_assert_eq!(values.len(), Self::columns().len());
        Ok(UfmMetrics { values })
    }
}

/// The metrics-recorder observer: evaluates [`UfmMetrics`] when fired, keeps the latest row,
/// and hands each row to a sink (a CSV writer, a progress bar).
pub struct Tracker<'a, F> {
    labels: &'a [u32],
    target: &'a Geometry,
    own: Option<&'a LossTarget>,
    sink: F,
    /// The most recent row.
    pub last: Option<UfmMetrics>,
}

impl<'a, F: FnMut(&UfmMetrics) -> std::result::Result<(), String>> Tracker<'a, F> {
    /// A recorder for a run on `labels` against `target`'s SELI geometry.
    pub fn new(labels: &'a [u32], target: &'a Geometry, sink: F) -> Self {
        Tracker { labels, target, own: None, sink, last: None }
    }

    /// Also compares with the run's loss target (the `dist_*_target` columns; SELI without it).
    pub fn with_loss_target(mut self, own: &'a LossTarget) -> Self {
        self.own = Some(own);
        self
    }

    fn record<T: Scalar>(&mut self, state: &UfmState<T>) -> Result<()> {
        if self.last.as_ref().is_some_and(|m| m.get("iter") == Some(state.iter as f64)) {
            return Ok(());
        }
        let m = UfmMetrics::compute(state, self.labels, self.target, self.own)?;
        (self.sink)(&m).map_err(Error::Observer)?;
        self.last = Some(m);
        Ok(())
    }
}

impl<T: Scalar, F: FnMut(&UfmMetrics) -> std::result::Result<(), String>> Observer<UfmState<T>>
    for Tracker<'_, F>
{
    fn observe_init(&mut self, state: &UfmState<T>) -> Result<()> {
        self.record(state)
    }
    fn observe_iter(&mut self, state: &UfmState<T>) -> Result<()> {
        self.record(state)
    }
    fn observe_final(
        &mut self,
        state: &UfmState<T>,
        _why: &crate::solve::Termination,
    ) -> Result<()> {
        self.record(state)
    }
}
