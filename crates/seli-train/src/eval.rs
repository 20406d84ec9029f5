//! Geometry of a network every few epochs (SPEC section 7), from one streaming pass over the
//! (imbalanced) training set and one over the (balanced) test set.
//!
//! The training pass feeds each batch's penultimate features to [`FeatureMoments`] (class
//! means and within-class scatter, O(d² + dk) memory) and accumulates the logit statistics;
//! it also keeps the features in `f32` (n × d × 4 bytes) for the one statistic that needs the
//! final class means, the NCC mismatch (NC4). The classifier `W` is read from the last layer.
//! Everything class-level is k×k: distances of `G_W`, `G_M`, `WᵀM` to the SELI geometry of the
//! realized counts and to the ETF, NC1, the Papyan statistics, norms and cosines by group.
#![allow(non_snake_case)]

use faer::Mat;
use seli_core::features::{FeatureMoments, collapse_stats, nearest_class_mean};
use seli_core::metrics::Centering;
use seli_core::track::ClassLevel;
use seli_core::{Geometry, Group};

use crate::error::{Error, Result};

/// Columns of `metrics.csv` with their meanings, in order (documented in docs/formats.md).
pub const COLUMNS: &[(&str, &str)] = &[
    ("epoch", "epochs completed (0 = at initialization)"),
    ("lr", "learning rate of the epoch just completed (empty at epoch 0)"),
    ("loss", "mean training cross-entropy over the epoch's mini-batches, in training mode"),
    ("train_acc", "accuracy on the whole imbalanced training subset, evaluation mode"),
    ("train_acc_maj", "training accuracy over samples of majority classes"),
    ("train_acc_min", "training accuracy over samples of minority classes"),
    ("test_acc", "accuracy on the balanced test split"),
    ("test_acc_maj", "test accuracy over samples of majority classes"),
    ("test_acc_min", "test accuracy over samples of minority classes"),
    ("w_norm_sq", "||W||_F^2 of the last layer"),
    ("dist_gw_seli", "dist(W^T W, SELI G_W)"),
    ("dist_gw_etf", "dist(W^T W, ETF P)"),
    ("dist_gm_seli", "dist(M^T M, SELI G_M), M = class means centered by their mean"),
    ("dist_gm_etf", "dist(M^T M, ETF P), same centered M"),
    ("dist_wtm", "dist(W^T M, P), same centered M: SELI and ETF share this target"),
    ("dist_z", "dist(logits Z, SEL matrix Z_hat) over training samples (bias included)"),
    ("nc1", "Tr(Sigma_W Sigma_B^+)/k, centered by the mean of class means"),
    ("nc1_global", "Tr(Sigma_W Sigma_B^+)/k, centered by the sample mean"),
    ("equinorm_mu", "std/mean of ||mu_c - mu_G|| (mu_G = mean of class means)"),
    ("equinorm_w", "std/mean of ||w_c||"),
    ("equiangular_mu", "std over c != c' of cos(mu_c - mu_G, mu_c' - mu_G)"),
    ("equiangular_w", "std over c != c' of cos(w_c, w_c')"),
    ("max_angle_mu", "mean over c != c' of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(k-1)|"),
    ("max_angle_w", "mean over c != c' of |cos(w_c, w_c') + 1/(k-1)|"),
    ("self_duality", "NC3: ||W/||W||_F - M/||M||_F||_F^2, centered M"),
    ("ncc_mismatch", "NC4: fraction of training samples where argmax logits != nearest class mean"),
    ("w_norm_sq_maj", "mean ||w_c||^2 over majority classes"),
    ("w_norm_sq_min", "mean ||w_c||^2 over minority classes"),
    ("mu_norm_sq_maj", "mean ||mu_c - mu_G||^2 over majority classes"),
    ("mu_norm_sq_min", "mean ||mu_c - mu_G||^2 over minority classes"),
    ("norm_ratio_w", "||w_maj||^2 / ||w_min||^2"),
    ("norm_ratio_mu", "||mu_maj - mu_G||^2 / ||mu_min - mu_G||^2"),
    ("cos_w_maj_maj", "mean cos(w_c, w_c') over majority pairs"),
    ("cos_w_min_min", "mean cos(w_c, w_c') over minority pairs"),
    ("cos_w_maj_min", "mean cos(w_c, w_c') over majority-minority pairs"),
    ("cos_mu_maj_maj", "mean cos of centered means over majority pairs"),
    ("cos_mu_min_min", "mean cos of centered means over minority pairs"),
    ("cos_mu_maj_min", "mean cos of centered means over majority-minority pairs"),
];

/// Column names only.
pub fn header() -> Vec<&'static str> {
    COLUMNS.iter().map(|(n, _)| *n).collect()
}

/// A model the evaluator can query: penultimate features and logits of a batch of samples
/// (rows `start..end` of a split), and the last layer.
pub trait FeatureModel {
    /// Feature dimension d.
    fn dim(&self) -> usize;
    /// Features (`b × d`, row-major) and logits (`b × k`, row-major) of rows `rows`.
    fn features_and_logits(&self, split: Split, rows: &[usize]) -> (Vec<f32>, Vec<f32>);
    /// Classifier `W` (d×k, column c is `w_c`) and bias.
    fn classifier(&self) -> (Mat<f64>, Option<Vec<f64>>);
}

/// Which split a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The imbalanced training subset.
    Train,
    /// The balanced test split.
    Test,
}

fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (c, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = c;
        }
    }
    best
}

/// Accuracy overall, over majority and over minority classes.
fn accuracies(correct: &[u64], total: &[u64], groups: Option<&[Group]>) -> [Option<f64>; 3] {
    let frac = |pick: &dyn Fn(usize) -> bool| {
        let (c, t) = (0..correct.len())
            .filter(|&i| pick(i))
            .fold((0u64, 0u64), |(c, t), i| (c + correct[i], t + total[i]));
        (t > 0).then(|| c as f64 / t as f64)
    };
    let group = |g: Group| groups.and_then(|gs| frac(&|i| gs[i] == g));
    [frac(&|_| true), group(Group::Majority), group(Group::Minority)]
}

/// Evaluates every column from `w_norm_sq` on, plus the accuracies (the columns after
/// `loss`), for a model on `train_labels` / `test_labels` against `target`.
///
/// # Errors
/// Non-finite features or logits (divergence), an empty class, decompositions failing.
pub fn evaluate(
    model: &dyn FeatureModel,
    train_labels: &[u32],
    test_labels: &[u32],
    target: &Geometry,
    batch: usize,
) -> Result<Vec<Option<f64>>> {
    let k = target.k();
    let d = model.dim();
    let groups = target.profile().groups();
    let mut moments = FeatureMoments::new(d, k);
    let mut feats: Vec<f32> = Vec::with_capacity(train_labels.len() * d);
    let mut preds: Vec<u32> = Vec::with_capacity(train_labels.len());
    let (mut correct, mut total) = (vec![0u64; k], vec![0u64; k]);
    let (mut zz, mut zs) = (0.0f64, 0.0f64);
    let off = 1.0 / k as f64;
    let rows: Vec<usize> = (0..train_labels.len()).collect();
    for chunk in rows.chunks(batch.max(1)) {
        let (h, z) = model.features_and_logits(Split::Train, chunk);
        if let Some(v) = h.iter().chain(&z).find(|v| !v.is_finite()) {
            return Err(Error::Diverged {
                epoch: 0,
                what: "a feature or logit",
                value: f64::from(*v),
            });
        }
        let labels: Vec<u32> = chunk.iter().map(|&i| train_labels[i]).collect();
        let H = Mat::from_fn(d, chunk.len(), |r, i| f64::from(h[i * d + r]));
        moments.push(H.as_ref(), &labels)?;
        for (i, &y) in labels.iter().enumerate() {
            let zi = &z[i * k..(i + 1) * k];
            let p = argmax(zi);
            preds.push(p as u32);
            total[y as usize] += 1;
            correct[y as usize] += u64::from(p == y as usize);
            for (c, &v) in zi.iter().enumerate() {
                let v = f64::from(v);
                zz += v * v;
                zs += v * (if c == y as usize { 1.0 - off } else { -off });
            }
        }
        feats.extend_from_slice(&h);
    }
    let train_acc = accuracies(&correct, &total, groups);

    let (mut tc, mut tt) = (vec![0u64; k], vec![0u64; k]);
    let test_rows: Vec<usize> = (0..test_labels.len()).collect();
    for chunk in test_rows.chunks(batch.max(1)) {
        let (_, z) = model.features_and_logits(Split::Test, chunk);
        for (j, &i) in chunk.iter().enumerate() {
            let y = test_labels[i] as usize;
            tt[y] += 1;
            tc[y] += u64::from(argmax(&z[j * k..(j + 1) * k]) == y);
        }
    }
    let test_acc = accuracies(&tc, &tt, groups);

    let M = moments.class_means()?;
    let center = moments.center(Centering::ClassMeans)?;
    let Mc = Mat::from_fn(d, k, |r, c| M[(r, c)] - center[r]);
    let (W, _) = model.classifier();
    let class = ClassLevel::compute(W.as_ref(), Mc.as_ref(), target);
    let n = train_labels.len() as f64;
    let sel_norm = (n * (1.0 - off)).sqrt();
    let dist_z = (zz > 0.0).then(|| (2.0 - 2.0 * zs / (zz.sqrt() * sel_norm)).max(0.0).sqrt());
    let collapse = collapse_stats(M.as_ref(), W.as_ref(), &center).ok();
    let mut mismatch = 0u64;
    let mut h64 = vec![0.0; d];
    for (i, &p) in preds.iter().enumerate() {
        for r in 0..d {
            h64[r] = f64::from(feats[i * d + r]);
        }
        mismatch += u64::from(nearest_class_mean(M.as_ref(), &h64) != p as usize);
    }

    let mut values: Vec<Option<f64>> = Vec::with_capacity(COLUMNS.len() - 3);
    values.extend(train_acc);
    values.extend(test_acc);
    values.push(Some(W.squared_norm_l2()));
    values.extend(class.distances);
    values.push(dist_z);
    values.push(moments.nc1(Centering::ClassMeans)?);
    values.push(moments.nc1(Centering::Samples)?);
    let c = collapse.as_ref();
    values.extend([
        c.map(|s| s.equinorm_mu),
        c.map(|s| s.equinorm_w),
        c.map(|s| s.equiangular_mu),
        c.map(|s| s.equiangular_w),
        c.map(|s| s.max_angle_mu),
        c.map(|s| s.max_angle_w),
        c.map(|s| s.self_duality),
    ]);
    values.push(Some(mismatch as f64 / n));
    values.extend(class.groups);
    debug_assert_eq!(values.len(), COLUMNS.len() - 3);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_core::Profile;
    use seli_core::metrics::{class_means, dist_to_sel, nc1};
    use seli_core::random::{gaussian_matrix, rng_from_seed};

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
        fn features_and_logits(&self, split: Split, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
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
            (h, z)
        }
        fn classifier(&self) -> (Mat<f64>, Option<Vec<f64>>) {
            (self.W.clone(), None)
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
        let v = evaluate(&model, &labels, &test_labels, &target, 7).unwrap();
        let col = |name: &str| v[COLUMNS.iter().position(|(c, _)| *c == name).unwrap() - 3];

        let M = class_means(H.as_ref(), &labels, 4).unwrap();
        let center: Vec<f64> =
            (0..6).map(|r| (0..4).map(|c| M[(r, c)]).sum::<f64>() / 4.0).collect();
        let Mc = Mat::from_fn(6, 4, |r, c| M[(r, c)] - center[r]);
        let direct = ClassLevel::compute(real.W.as_ref(), Mc.as_ref(), &target);
        for (name, want) in ClassLevel::DISTANCE_COLUMNS.iter().zip(direct.distances) {
            assert!((col(name).unwrap() - want.unwrap()).abs() < 1e-9, "{name}");
        }
        for (name, want) in ClassLevel::GROUP_COLUMNS.iter().zip(direct.groups) {
            assert!((col(name).unwrap() - want.unwrap()).abs() < 1e-9, "{name}");
        }
        let a = nc1(H.as_ref(), &labels, M.as_ref(), Centering::ClassMeans).unwrap().unwrap();
        assert!((col("nc1").unwrap() - a).abs() < 1e-9 * a);
        let a = nc1(H.as_ref(), &labels, M.as_ref(), Centering::Samples).unwrap().unwrap();
        assert!((col("nc1_global").unwrap() - a).abs() < 1e-9 * a);
        let Z = real.W.transpose() * &H;
        let dz = dist_to_sel(Z.as_ref(), &labels).unwrap();
        assert!((col("dist_z").unwrap() - dz).abs() < 1e-5, "{dz}");
        // The noise is small against the SELI means: the geometry is close to SELI, every
        // sample is classified right (test samples sit on the means) and NCC agrees.
        assert!(col("dist_gw_seli").unwrap() < 1e-12);
        assert!(col("dist_gm_seli").unwrap() < 0.05);
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
