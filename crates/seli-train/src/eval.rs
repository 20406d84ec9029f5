//! Geometry of a network every few epochs (docs/theory.md), from one streaming pass over the
//! (imbalanced) training set and one over the (balanced) test set.
//!
//! The training pass feeds each batch's penultimate features and logits to
//! [`FeatureGeometry`] (class means and within-class scatter, O(d² + dk) memory, and the logit
//! statistics); it also keeps them in `f32` (n × (d + k) × 4 bytes) for the second pass, which
//! needs the final class means: the NCC mismatch (NC4) and the exact `dist_z`. The classifier `W` is read from the last layer.
//! Everything class-level is k×k: distances of `G_W`, `G_M`, `WᵀM` to the SELI geometry of the
//! realized counts and to the ETF, NC1, the Papyan statistics, norms and cosines by group.
#![allow(non_snake_case)]

use faer::Mat;
use seli_core::Geometry;
use seli_core::features::{
    FeatureGeometry, GEOMETRY_COLUMNS, Grams, Precision, accuracies, predicts,
};

use crate::error::{Error, Result};

/// The run columns of `metrics.csv` that precede [`GEOMETRY_COLUMNS`] (whose `accuracy`
/// columns are named `train_acc` here: the training accuracy over the whole imbalanced
/// subset, evaluation mode).
pub const RUN_COLUMNS: &[(&str, &str)] = &[
    ("epoch", "epochs completed (0 = at initialization)"),
    ("lr", "learning rate of the epoch just completed (empty at epoch 0)"),
    (
        "loss",
        "mean training loss (the run's loss family; cross-entropy by default) over the epoch's mini-batches, in training mode",
    ),
    ("test_acc", "accuracy on the balanced test split"),
    ("test_acc_maj", "test accuracy over samples of majority classes"),
    ("test_acc_min", "test accuracy over samples of minority classes"),
];

/// Every column of `metrics.csv` with its meaning, in order (documented in docs/formats.md).
pub fn columns() -> Vec<(&'static str, &'static str)> {
    let train = |name: &'static str| match name {
        "accuracy" => {
            ("train_acc", "accuracy on the whole imbalanced training subset, evaluation mode")
        }
        "accuracy_maj" => ("train_acc_maj", "training accuracy over samples of majority classes"),
        "accuracy_min" => ("train_acc_min", "training accuracy over samples of minority classes"),
        _ => ("", ""),
    };
    RUN_COLUMNS
        .iter()
        .copied()
        .chain(
            GEOMETRY_COLUMNS
                .iter()
                .map(|&(n, m)| if n.starts_with("accuracy") { train(n) } else { (n, m) }),
        )
        .collect()
}

/// Column names only.
pub fn header() -> Vec<&'static str> {
    columns().iter().map(|(n, _)| *n).collect()
}

/// A model the evaluator can query: penultimate features and logits of a batch of samples
/// (rows of a split), and the last layer.
pub trait FeatureModel {
    /// Feature dimension d.
    fn dim(&self) -> usize;
    /// Features (`b × d`, row-major) and logits (`b × k`, row-major) of rows `rows`.
    ///
    /// # Errors
    /// The device could not compute them.
    fn features_and_logits(&self, split: Split, rows: &[usize]) -> Result<(Vec<f32>, Vec<f32>)>;
    /// Classifier `W` (d×k, column c is `w_c`) and bias.
    ///
    /// # Errors
    /// The device could not hand them back.
    fn classifier(&self) -> Result<(Mat<f64>, Option<Vec<f64>>)>;
}

/// Which split a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The imbalanced training subset.
    Train,
    /// The balanced test split.
    Test,
}

/// Column-major d×b (or k×b) matrix of a row-major `b × d` batch.
fn columns_of(x: &[f32], width: usize) -> Mat<f64> {
    let b = x.len() / width.max(1);
    Mat::from_fn(width, b, |r, i| f64::from(x[i * width + r]))
}

/// A measurement: the `metrics.csv` values after `loss`, and the class-level Grams.
pub struct Measurement {
    /// The test accuracies, then [`GEOMETRY_COLUMNS`] over the training samples.
    pub values: Vec<Option<f64>>,
    /// `G_W` of the last layer, `G_M` of the raw and of the centered class means.
    pub grams: Grams,
}

/// Evaluates the columns after `loss` for a model on `train_labels` / `test_labels` against
/// `target` (and `own`, the run's loss target when it is not SELI): the test accuracies, then
/// [`GEOMETRY_COLUMNS`] over the training samples.
///
/// # Errors
/// Non-finite features or logits (divergence), an empty class, decompositions failing.
pub fn evaluate(
    model: &dyn FeatureModel,
    train_labels: &[u32],
    test_labels: &[u32],
    target: &Geometry,
    own: Option<&seli_core::implicit::LossTarget>,
    batch: usize,
) -> Result<Measurement> {
    let k = target.k();
    let d = model.dim();
    let mut geo = FeatureGeometry::new(d, k);
    // Features and logits are kept (f32) for the NC4 pass against the final means.
    let mut kept: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let rows: Vec<usize> = (0..train_labels.len()).collect();
    for chunk in rows.chunks(batch.max(1)) {
        let (h, z) = model.features_and_logits(Split::Train, chunk)?;
        if let Some(v) = h.iter().chain(&z).find(|v| !v.is_finite()) {
            return Err(Error::Diverged {
                epoch: 0,
                what: "a feature or logit",
                value: f64::from(*v),
            });
        }
        let labels: Vec<u32> = chunk.iter().map(|&i| train_labels[i]).collect();
        geo.push(columns_of(&h, d).as_ref(), Some(columns_of(&z, k).as_ref()), &labels)?;
        kept.push((h, z));
    }
    for ((h, z), chunk) in kept.iter().zip(rows.chunks(batch.max(1))) {
        let labels: Vec<u32> = chunk.iter().map(|&i| train_labels[i]).collect();
        geo.push_second(
            columns_of(h, d).as_ref(),
            Some(columns_of(z, k).as_ref()),
            &labels,
            Precision::Double,
        )?;
    }
    let (mut tc, mut tt) = (vec![0u64; k], vec![0u64; k]);
    let test_rows: Vec<usize> = (0..test_labels.len()).collect();
    for chunk in test_rows.chunks(batch.max(1)) {
        let (_, z) = model.features_and_logits(Split::Test, chunk)?;
        for (j, &i) in chunk.iter().enumerate() {
            let y = test_labels[i] as usize;
            tt[y] += 1;
            tc[y] += u64::from(predicts(z[j * k..(j + 1) * k].iter().map(|&v| f64::from(v)), y));
        }
    }
    let (W, _) = model.classifier()?;
    let mut values: Vec<Option<f64>> = accuracies(&tc, &tt, target.profile().groups()).to_vec();
    values.extend(geo.values_with(Some(W.as_ref()), target, own)?);
    debug_assert_eq!(values.len(), RUN_COLUMNS.len() + GEOMETRY_COLUMNS.len() - 3);
    Ok(Measurement { values, grams: geo.grams(Some(W.as_ref()))? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_core::metrics::{centering_projector, gram, normalized_distance};
    use seli_core::random::{gaussian_matrix, rng_from_seed};
    use seli_core::{Group, Profile};

    /// Features are fixed vectors (an "identity" network) and logits `Wᵀh`.
    struct Fixed {
        train: Mat<f64>,
        test: Mat<f64>,
        W: Mat<f64>,
    }

    impl FeatureModel for Fixed {
        fn dim(&self) -> usize {
            self.W.nrows()
        }
        fn features_and_logits(
            &self,
            split: Split,
            rows: &[usize],
        ) -> Result<(Vec<f32>, Vec<f32>)> {
            let H = if split == Split::Train { &self.train } else { &self.test };
            let (d, k) = (self.W.nrows(), self.W.ncols());
            let mut h = Vec::new();
            let mut z = Vec::new();
            for &i in rows {
                h.extend((0..d).map(|r| H[(r, i)] as f32));
                z.extend((0..k).map(|c| {
                    (0..d).map(|r| f64::from(H[(r, i)] as f32) * self.W[(r, c)]).sum::<f64>() as f32
                }));
            }
            Ok((h, z))
        }
        fn classifier(&self) -> Result<(Mat<f64>, Option<Vec<f64>>)> {
            Ok((self.W.clone(), None))
        }
    }

    #[test]
    fn metrics_of_known_features_match_the_geometry_engine() {
        // SELI-exact class means plus within-class noise, a SELI classifier.
        let profile = Profile::step(4, 5.0, 0.5, 3).unwrap();
        let target = Geometry::new(&profile).unwrap();
        let real = target.realize(6, 2).unwrap();
        let labels: Vec<u32> = profile
            .counts()
            .iter()
            .enumerate()
            .flat_map(|(c, &m)| vec![c as u32; m as usize])
            .collect();
        let n = labels.len();
        let noise: Mat<f64> = gaussian_matrix(6, n, 0.05, &mut rng_from_seed(4));
        // Features exactly representable in f32, so the f32 pipeline loses nothing.
        let H = Mat::from_fn(6, n, |r, i| {
            f64::from((real.M[(r, labels[i] as usize)] + noise[(r, i)]) as f32)
        });
        let test_labels: Vec<u32> = (0..8).map(|i| i % 4).collect();
        let test = Mat::from_fn(6, 8, |r, i| real.M[(r, test_labels[i] as usize)]);
        let model = Fixed { train: H.clone(), test, W: real.W.clone() };
        let v = evaluate(&model, &labels, &test_labels, &target, None, 7).unwrap().values;
        let col = |name: &str| v[header().iter().position(|c| *c == name).unwrap() - 3];

        // The class-level columns from their definitions: means by direct sums, raw and
        // centered, and dense normalized distances.
        let mut M = Mat::<f64>::zeros(6, 4);
        for (i, &y) in labels.iter().enumerate() {
            for r in 0..6 {
                M[(r, y as usize)] += H[(r, i)] / profile.counts()[y as usize] as f64;
            }
        }
        let center: Vec<f64> =
            (0..6).map(|r| (0..4).map(|c| M[(r, c)]).sum::<f64>() / 4.0).collect();
        let Mc = Mat::from_fn(6, 4, |r, c| M[(r, c)] - center[r]);
        let P = centering_projector(4);
        let dist =
            |a: &Mat<f64>, b: faer::MatRef<'_, f64>| normalized_distance(a.as_ref(), b).unwrap();
        for (m, means) in [("gm", &M), ("gmc", &Mc)] {
            let g = gram(means.as_ref());
            let wtm = real.W.transpose() * means;
            let wtm_col = if m == "gm" { "dist_wtm" } else { "dist_wtmc" };
            for (name, want) in [
                (format!("dist_{m}_seli"), dist(&g, target.gram_m())),
                (format!("dist_{m}_etf"), dist(&g, P.as_ref())),
                (wtm_col.to_string(), dist(&wtm, P.as_ref())),
            ] {
                assert!((col(&name).unwrap() - want).abs() < 1e-9, "{name}");
            }
        }
        let Z = real.W.transpose() * &H;
        let sel = Mat::from_fn(4, n, |c, i| f64::from(c as u32 == labels[i]) - 0.25);
        let dz = dist(&Z, sel.as_ref());
        assert!((col("dist_z").unwrap() - dz).abs() < 1e-5, "{dz}");
        // NC1 itself is checked against its dense definition in seli-core; here it is small.
        assert!(col("nc1").unwrap() < 0.05 && col("nc1_global").unwrap() < 0.05);
        // The noise is small against the SELI means: the geometry is close to SELI, every
        // sample is classified right (test samples sit on the means) and NCC agrees.
        assert!(col("dist_gw_seli").unwrap() < 1e-12);
        assert!(col("dist_gmc_seli").unwrap() < 0.05);
        assert!(col("dist_gw_etf").unwrap() > 0.1);
        assert_eq!((col("train_acc"), col("test_acc")), (Some(1.0), Some(1.0)));
        assert_eq!(col("ncc_mismatch"), Some(0.0));
        assert!((col("w_norm_sq").unwrap() - real.W.squared_norm_l2()).abs() < 1e-12);
    }

    #[test]
    fn group_accuracies() {
        let g = [Group::Majority, Group::Minority, Group::Minority];
        let a = accuracies(&[3, 1, 0], &[4, 1, 1], Some(&g));
        assert_eq!(a, [Some(4.0 / 6.0), Some(0.75), Some(0.5)]);
        assert_eq!(accuracies(&[1], &[2], None), [Some(0.5), None, None]);
    }
}
