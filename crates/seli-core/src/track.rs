//! The metrics recorded while a UFM run trains, and the observer that records them.
//!
//! Every metric is evaluated at the same iterate `θ_t`, in `f64` whatever the training type.
//! Targets come from the class-level [`Geometry`] of the run's profile.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::metrics::{
    Centering, ClassStats, centering_projector, class_means, dist_to_sel, gram, nc1,
    normalized_distance,
};
use crate::scalar::Scalar;
use crate::sel::Geometry;
use crate::solve::Observer;
use crate::solve::ufm::UfmState;

/// One row of `metrics.csv`. Names are the CSV headers; see [`UfmMetrics::COLUMNS`].
#[derive(Debug, Clone, PartialEq)]
pub struct UfmMetrics {
    /// Values in [`UfmMetrics::COLUMNS`] order; `None` where undefined.
    pub values: Vec<Option<f64>>,
}

impl UfmMetrics {
    /// Column names and meanings, in order. These are the documented `metrics.csv` headers.
    pub const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("iter", "iterations completed"),
        ("step", "step size applied by the next iteration"),
        ("objective", "loss plus ridge terms"),
        ("loss", "cross-entropy, summed or mean as recorded in config.json"),
        ("accuracy", "fraction of samples whose true logit is strictly the largest"),
        ("min_margin", "min over samples of z_y - max_{c != y} z_c"),
        ("grad_norm", "Frobenius norm of the full gradient"),
        ("w_norm_sq", "||W||_F^2"),
        ("h_norm_sq", "||H||_F^2"),
        ("dist_gw_seli", "dist(W^T W, SELI G_W)"),
        ("dist_gw_etf", "dist(W^T W, ETF P)"),
        ("dist_gm_seli", "dist(M^T M, SELI G_M), M = class means of H"),
        ("dist_gm_etf", "dist(M^T M, ETF P)"),
        ("dist_wtm", "dist(W^T M, P): SELI and ETF share this target"),
        ("dist_z", "dist(W^T H + b 1^T, Z_hat): SELI and ETF share this target"),
        ("nc1", "Tr(Sigma_W Sigma_B^+)/k, centered by the mean of class means"),
        ("nc1_global", "Tr(Sigma_W Sigma_B^+)/k, centered by the sample mean"),
        ("w_norm_sq_maj", "mean ||w_c||^2 over majority classes"),
        ("w_norm_sq_min", "mean ||w_c||^2 over minority classes"),
        ("mu_norm_sq_maj", "mean ||mu_c||^2 over majority classes"),
        ("mu_norm_sq_min", "mean ||mu_c||^2 over minority classes"),
        ("norm_ratio_w", "||w_maj||^2 / ||w_min||^2"),
        ("norm_ratio_mu", "||mu_maj||^2 / ||mu_min||^2"),
        ("cos_w_maj_maj", "mean cos(w_c, w_c') over majority pairs"),
        ("cos_w_min_min", "mean cos(w_c, w_c') over minority pairs"),
        ("cos_w_maj_min", "mean cos(w_c, w_c') over majority-minority pairs"),
        ("cos_mu_maj_maj", "mean cos(mu_c, mu_c') over majority pairs"),
        ("cos_mu_min_min", "mean cos(mu_c, mu_c') over minority pairs"),
        ("cos_mu_maj_min", "mean cos(mu_c, mu_c') over majority-minority pairs"),
    ];

    /// The value of column `name`.
    ///
    /// # Panics
    /// If `name` is not a column.
    pub fn get(&self, name: &str) -> Option<f64> {
        let i = Self::COLUMNS
            .iter()
            .position(|(c, _)| *c == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        self.values[i]
    }

    /// Evaluates every metric at `state`'s iterate.
    ///
    /// # Errors
    /// Degenerate iterates (a zero classifier matrix or identical class means make the
    /// normalized distances undefined); decompositions failing.
    pub fn compute<T: Scalar>(
        state: &UfmState<T>,
        labels: &[u32],
        target: &Geometry,
    ) -> Result<Self> {
        let p = &state.params;
        let k = target.k();
        let n = labels.len();
        let W = Mat::from_fn(p.W.nrows(), k, |i, j| p.W[(i, j)].to_f64());
        let H = Mat::from_fn(p.H.nrows(), n, |i, j| p.H[(i, j)].to_f64());
        let M = class_means(H.as_ref(), labels, k)?;
        let mut Z = W.transpose() * &H;
        if let Some(b) = &p.b {
            for i in 0..n {
                for c in 0..k {
                    Z[(c, i)] += b[c].to_f64();
                }
            }
        }
        let class = ClassLevel::compute(W.as_ref(), M.as_ref(), target);
        let e = &state.eval;
        let mut values = vec![
            Some(state.iter as f64),
            Some(state.step),
            Some(e.objective),
            Some(e.loss),
            Some(e.correct as f64 / n as f64),
            Some(e.min_margin),
            Some(e.grad_norm),
            Some(W.squared_norm_l2()),
            Some(H.squared_norm_l2()),
        ];
        values.extend(class.distances);
        values.extend([
            dist_to_sel(Z.as_ref(), labels).ok(),
            nc1(H.as_ref(), labels, M.as_ref(), Centering::ClassMeans)?,
            nc1(H.as_ref(), labels, M.as_ref(), Centering::Samples)?,
        ]);
        values.extend(class.groups);
        debug_assert_eq!(values.len(), Self::COLUMNS.len());
        Ok(UfmMetrics { values })
    }
}

/// The class-level metrics of classifiers `W` and class means `M` (both d×k) against a
/// geometry's SELI and ETF targets, shared by UFM runs and trained networks.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassLevel {
    /// `dist_gw_seli, dist_gw_etf, dist_gm_seli, dist_gm_etf, dist_wtm`, in that order.
    pub distances: [Option<f64>; 5],
    /// [`ClassLevel::GROUP_COLUMNS`], in that order (`None` without majority/minority groups).
    pub groups: [Option<f64>; 12],
}

impl ClassLevel {
    /// Names of [`ClassLevel::distances`].
    pub const DISTANCE_COLUMNS: [&'static str; 5] =
        ["dist_gw_seli", "dist_gw_etf", "dist_gm_seli", "dist_gm_etf", "dist_wtm"];
    /// Names of [`ClassLevel::groups`].
    pub const GROUP_COLUMNS: [&'static str; 12] = [
        "w_norm_sq_maj",
        "w_norm_sq_min",
        "mu_norm_sq_maj",
        "mu_norm_sq_min",
        "norm_ratio_w",
        "norm_ratio_mu",
        "cos_w_maj_maj",
        "cos_w_min_min",
        "cos_w_maj_min",
        "cos_mu_maj_maj",
        "cos_mu_min_min",
        "cos_mu_maj_min",
    ];

    /// Distances of `G_W = WᵀW`, `G_M = MᵀM` and `WᵀM` to their targets (undefined ones, of a
    /// zero matrix, are `None`) and the majority/minority statistics.
    pub fn compute(W: MatRef<'_, f64>, M: MatRef<'_, f64>, target: &Geometry) -> Self {
        let gw = gram(W);
        let gm = gram(M);
        let wtm = W.transpose() * M;
        let P = centering_projector(target.k());
        let dist = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| normalized_distance(a, b).ok();
        let stats = ClassStats::from_grams(
            gw.as_ref(),
            gm.as_ref(),
            wtm.as_ref(),
            target.profile().groups(),
        )
        .ok();
        let by = stats.as_ref().and_then(|s| s.by_group.as_ref());
        ClassLevel {
            distances: [
                dist(gw.as_ref(), target.gram_w()),
                dist(gw.as_ref(), P.as_ref()),
                dist(gm.as_ref(), target.gram_m()),
                dist(gm.as_ref(), P.as_ref()),
                dist(wtm.as_ref(), P.as_ref()),
            ],
            groups: [
                by.and_then(|b| b.w_norm_sq.majority),
                by.and_then(|b| b.w_norm_sq.minority),
                by.and_then(|b| b.m_norm_sq.majority),
                by.and_then(|b| b.m_norm_sq.minority),
                by.and_then(|b| b.norm_ratio_w),
                by.and_then(|b| b.norm_ratio_m),
                by.and_then(|b| b.cos_w.maj_maj),
                by.and_then(|b| b.cos_w.min_min),
                by.and_then(|b| b.cos_w.maj_min),
                by.and_then(|b| b.cos_m.maj_maj),
                by.and_then(|b| b.cos_m.min_min),
                by.and_then(|b| b.cos_m.maj_min),
            ],
        }
    }
}

/// The metrics-recorder observer: evaluates [`UfmMetrics`] when fired, keeps the latest row,
/// and hands each row to a sink (a CSV writer, a progress bar).
pub struct Tracker<'a, F> {
    labels: &'a [u32],
    target: &'a Geometry,
    sink: F,
    /// The most recent row.
    pub last: Option<UfmMetrics>,
}

impl<'a, F: FnMut(&UfmMetrics) -> std::result::Result<(), String>> Tracker<'a, F> {
    /// A recorder for a run on `labels` against `target`'s SELI geometry.
    pub fn new(labels: &'a [u32], target: &'a Geometry, sink: F) -> Self {
        Tracker { labels, target, sink, last: None }
    }

    fn record<T: Scalar>(&mut self, state: &UfmState<T>) -> Result<()> {
        if self.last.as_ref().is_some_and(|m| m.get("iter") == Some(state.iter as f64)) {
            return Ok(());
        }
        let m = UfmMetrics::compute(state, self.labels, self.target)?;
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
