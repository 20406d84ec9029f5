//! Feature-level statistics of a trained model, accumulated in one streaming pass.
//!
//! [`FeatureMoments`] takes the penultimate features batch by batch and keeps, per class, the
//! count and running mean, and the total within-class scatter `Σ_i (h_i − μ_{y_i})(h_i −
//! μ_{y_i})ᵀ` (d×d). Batches are merged with Chan, Golub and LeVeque's pairwise update, so the
//! scatter never suffers the cancellation of `Σ h hᵀ − n μ μᵀ` — important in the terminal
//! phase, where within-class variability is many orders below the means. Memory is
//! `O(d² + dk)` whatever the number of samples.
//!
//! From the moments: class means `M`, NC1 with either centering ([`Centering`]), and the
//! Papyan–Han–Donoho statistics ([`CollapseStats`], SPEC section 7) with the classifier.
#![allow(non_snake_case)]

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::metrics::{Centering, between_class_directions, check_same_shape};

/// Streaming per-class moments of d-dimensional features with labels in `0..k`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMoments {
    counts: Vec<u64>,
    means: Mat<f64>,
    scatter: Mat<f64>,
}

impl FeatureMoments {
    /// Empty moments for `d`-dimensional features of `k` classes.
    pub fn new(d: usize, k: usize) -> Self {
        FeatureMoments { counts: vec![0; k], means: Mat::zeros(d, k), scatter: Mat::zeros(d, d) }
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.means.nrows()
    }

    /// Number of classes k.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Samples per class so far.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Samples so far.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds a batch: `H` is d×B (one column per sample), `labels` its B labels.
    ///
    /// # Errors
    /// A label `>= k` (its position in the batch named); a non-finite feature; `H` whose row
    /// count is not d or whose column count is not the number of labels.
    pub fn push(&mut self, H: MatRef<'_, f64>, labels: &[u32]) -> Result<()> {
        let (d, k) = (self.dim(), self.classes());
        if H.nrows() != d || H.ncols() != labels.len() {
            return Err(Error::ShapeMismatch {
                left: "feature batch",
                lr: H.nrows(),
                lc: H.ncols(),
                right: "(feature dimension, batch labels)",
                rr: d,
                rc: labels.len(),
            });
        }
        let mut bcount = vec![0u64; k];
        let mut bmean = Mat::<f64>::zeros(d, k);
        for (i, &y) in labels.iter().enumerate() {
            let c = y as usize;
            if c >= k {
                return Err(Error::LabelOutOfRange { index: i, label: i64::from(y), k });
            }
            bcount[c] += 1;
            for r in 0..d {
                let v = H[(r, i)];
                if !v.is_finite() {
                    return Err(Error::InvalidParameter {
                        name: "feature",
                        value: format!("{v} (row {r} of sample {i} of the batch)"),
                        rule: "finite",
                    });
                }
                bmean[(r, c)] += v;
            }
        }
        for c in 0..k {
            if bcount[c] > 0 {
                for r in 0..d {
                    bmean[(r, c)] /= bcount[c] as f64;
                }
            }
        }
        // Within-batch scatter about the batch class means, in one d×B by B×d product.
        let X = Mat::from_fn(d, labels.len(), |r, i| H[(r, i)] - bmean[(r, labels[i] as usize)]);
        self.scatter += &X * X.transpose();
        // Merge each class's batch moments into the running ones (Chan et al.).
        for c in 0..k {
            let (na, nb) = (self.counts[c] as f64, bcount[c] as f64);
            if nb == 0.0 {
                continue;
            }
            let delta: Vec<f64> = (0..d).map(|r| bmean[(r, c)] - self.means[(r, c)]).collect();
            let w = na * nb / (na + nb);
            if na > 0.0 {
                for j in 0..d {
                    let dj = w * delta[j];
                    for i in 0..d {
                        self.scatter[(i, j)] += delta[i] * dj;
                    }
                }
            }
            for r in 0..d {
                self.means[(r, c)] += delta[r] * nb / (na + nb);
            }
            self.counts[c] += bcount[c];
        }
        Ok(())
    }

    /// The class means `M` (d×k).
    ///
    /// # Errors
    /// A class with no sample (its index named).
    pub fn class_means(&self) -> Result<Mat<f64>> {
        if let Some(c) = self.counts.iter().position(|&m| m == 0) {
            return Err(Error::EmptyClass { class: c, context: String::new() });
        }
        Ok(self.means.clone())
    }

    /// The center `μ_G` of between-class statistics under `centering`.
    ///
    /// # Errors
    /// An empty class.
    pub fn center(&self, centering: Centering) -> Result<Vec<f64>> {
        let M = self.class_means()?;
        let (d, k) = (self.dim(), self.classes());
        let n = self.n() as f64;
        Ok((0..d)
            .map(|r| match centering {
                Centering::ClassMeans => (0..k).map(|c| M[(r, c)]).sum::<f64>() / k as f64,
                Centering::Samples => {
                    (0..k).map(|c| M[(r, c)] * self.counts[c] as f64).sum::<f64>() / n
                }
            })
            .collect())
    }

    /// The within-class covariance `Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ` (d×d).
    pub fn within_covariance(&self) -> Mat<f64> {
        let n = self.n().max(1) as f64;
        Mat::from_fn(self.dim(), self.dim(), |i, j| self.scatter[(i, j)] / n)
    }

    /// NC1 = `Tr(Σ_W Σ_B^†)/k` (the definition of [`crate::metrics::nc1`], which this equals
    /// on the same samples); `None` when the class means coincide.
    ///
    /// # Errors
    /// An empty class; the SVD failing.
    pub fn nc1(&self, centering: Centering) -> Result<Option<f64>> {
        let M = self.class_means()?;
        let center = self.center(centering)?;
        let Some((U, s)) = between_class_directions(M.as_ref(), &center)? else {
            return Ok(None);
        };
        let SU = self.within_covariance() * &U;
        let mut total = 0.0;
        for (j, s_j) in s.iter().enumerate() {
            let quad: f64 = (0..self.dim()).map(|r| U[(r, j)] * SU[(r, j)]).sum();
            total += quad / (s_j * s_j);
        }
        Ok(Some(total))
    }
}

/// The Papyan–Han–Donoho neural-collapse statistics (SPEC section 7) of class means `M`
/// (d×k) and classifiers `W` (d×k, column c is `w_c`) about a center `μ_G`. Standard
/// deviations are population ones (divide by the count). Under imbalance these do not go to 0
/// even at exact SELI.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseStats {
    /// `std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖`.
    pub equinorm_mu: f64,
    /// `std_c ‖w_c‖ / mean_c ‖w_c‖`.
    pub equinorm_w: f64,
    /// Std over pairs c ≠ c' of `cos(μ_c − μ_G, μ_c' − μ_G)`.
    pub equiangular_mu: f64,
    /// Std over pairs c ≠ c' of `cos(w_c, w_c')`.
    pub equiangular_w: f64,
    /// Mean over pairs c ≠ c' of `|cos(μ_c − μ_G, μ_c' − μ_G) + 1/(k−1)|`.
    pub max_angle_mu: f64,
    /// Mean over pairs c ≠ c' of `|cos(w_c, w_c') + 1/(k−1)|`.
    pub max_angle_w: f64,
    /// NC3: `‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²` with `M̃ = [μ_c − μ_G]`.
    pub self_duality: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Norm-ratio, pairwise-cosine statistics of the columns of `X` (d×k).
fn column_geometry(X: MatRef<'_, f64>, what: &'static str) -> Result<(f64, f64, f64)> {
    let k = X.ncols();
    let norms: Vec<f64> = (0..k).map(|c| X.col(c).norm_l2()).collect();
    if let Some(c) = norms.iter().position(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(Error::DegenerateNorm { what, norm: norms[c] });
    }
    let (mean, std) = mean_std(&norms);
    let G = X.transpose() * X;
    let mut cos = Vec::with_capacity(k * (k - 1));
    for i in 0..k {
        for j in 0..k {
            if i != j {
                cos.push(G[(i, j)] / (norms[i] * norms[j]));
            }
        }
    }
    let (_, cos_std) = mean_std(&cos);
    let max_angle =
        cos.iter().map(|c| (c + 1.0 / (k as f64 - 1.0)).abs()).sum::<f64>() / cos.len() as f64;
    Ok((std / mean, cos_std, max_angle))
}

/// The statistics of [`CollapseStats`].
///
/// # Errors
/// `M` and `W` of different shapes or `center` of the wrong length; fewer than two classes; a
/// zero classifier or a class mean at the center.
pub fn collapse_stats(
    M: MatRef<'_, f64>,
    W: MatRef<'_, f64>,
    center: &[f64],
) -> Result<CollapseStats> {
    check_same_shape(M, "class means M", W, "classifiers W")?;
    let (d, k) = (M.nrows(), M.ncols());
    if k < 2 {
        return Err(Error::TooFewClasses { k });
    }
    assert_eq!(center.len(), d, "center lives in the feature space");
    let Mc = Mat::from_fn(d, k, |r, c| M[(r, c)] - center[r]);
    let (equinorm_mu, equiangular_mu, max_angle_mu) =
        column_geometry(Mc.as_ref(), "a centered class mean mu_c - mu_G")?;
    let (equinorm_w, equiangular_w, max_angle_w) = column_geometry(W, "a classifier w_c")?;
    let (wn, mn) = (W.norm_l2(), Mc.norm_l2());
    let self_duality =
        Mat::from_fn(d, k, |r, c| W[(r, c)] / wn - Mc[(r, c)] / mn).squared_norm_l2();
    Ok(CollapseStats {
        equinorm_mu,
        equinorm_w,
        equiangular_mu,
        equiangular_w,
        max_angle_mu,
        max_angle_w,
        self_duality,
    })
}

/// The nearest class mean to `h` (Euclidean), the NCC classifier of NC4; ties go to the lower
/// class index.
pub fn nearest_class_mean(M: MatRef<'_, f64>, h: &[f64]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for c in 0..M.ncols() {
        let d2: f64 = h.iter().enumerate().map(|(r, x)| (x - M[(r, c)]).powi(2)).sum();
        if d2 < best.0 {
            best = (d2, c);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{class_means, nc1};
    use crate::random::{gaussian_matrix, rng_from_seed};

    #[test]
    fn streaming_moments_equal_the_in_memory_statistics() {
        let (d, k, n) = (7, 4, 203);
        let mut rng = rng_from_seed(3);
        let mut H: Mat<f64> = gaussian_matrix(d, n, 1.0, &mut rng);
        let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 5) % k) as u32).collect();
        // Class offsets 1e4 times the spread: Σ h hᵀ − n μ μᵀ would keep only ~8 digits.
        for i in 0..n {
            for r in 0..d {
                H[(r, i)] = 10.0 * ((r + labels[i] as usize) % 3) as f64 + 1e-3 * H[(r, i)];
            }
        }
        let M = class_means(H.as_ref(), &labels, k).unwrap();
        let mut fm = FeatureMoments::new(d, k);
        for start in (0..n).step_by(17) {
            let end = (start + 17).min(n);
            fm.push(H.subcols(start, end - start), &labels[start..end]).unwrap();
        }
        assert_eq!(fm.n(), n as u64);
        let Ms = fm.class_means().unwrap();
        assert!((&Ms - &M).norm_l2() < 1e-9 * M.norm_l2());
        for centering in [Centering::ClassMeans, Centering::Samples] {
            let a = nc1(H.as_ref(), &labels, M.as_ref(), centering).unwrap().unwrap();
            let b = fm.nc1(centering).unwrap().unwrap();
            assert!((a - b).abs() < 1e-9 * a, "{centering:?}: {a} vs {b}");
        }
        // Whole-batch push equals the chunked one.
        let mut whole = FeatureMoments::new(d, k);
        whole.push(H.as_ref(), &labels).unwrap();
        let sw = whole.within_covariance();
        let sc = fm.within_covariance();
        assert!((&sw - &sc).norm_l2() < 1e-9 * sw.norm_l2());
    }

    #[test]
    fn bad_batches_and_empty_classes_are_named() {
        let mut fm = FeatureMoments::new(2, 3);
        let H = Mat::from_fn(2, 2, |r, i| (r + i) as f64);
        let e = fm.push(H.as_ref(), &[0, 3]).unwrap_err().to_string();
        assert!(e.contains('3'), "{e}");
        let mut nan = H.clone();
        nan[(1, 1)] = f64::NAN;
        let e = fm.push(nan.as_ref(), &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("NaN") && e.contains("sample 1"), "{e}");
        fm.push(H.as_ref(), &[0, 1]).unwrap();
        assert!(fm.class_means().unwrap_err().to_string().contains("class 2 is empty"));
        assert!(fm.push(H.as_ref(), &[0]).is_err());
    }

    #[test]
    fn collapse_statistics_vanish_on_a_simplex_etf_and_not_under_imbalance() {
        // ETF means and self-dual classifiers: every statistic is 0.
        let k = 4;
        let P = crate::metrics::centering_projector(k);
        let st = collapse_stats(P.as_ref(), (&P * faer::Scale(3.0)).as_ref(), &[0.0; 4]).unwrap();
        for v in [
            st.equinorm_mu,
            st.equinorm_w,
            st.equiangular_mu,
            st.equiangular_w,
            st.max_angle_mu,
            st.max_angle_w,
            st.self_duality,
        ] {
            assert!(v.abs() < 1e-12, "{st:?}");
        }
        // SELI of a STEP profile: W and M have unequal norms, so equinorm is not 0.
        let p = crate::Profile::step(4, 10.0, 0.5, 1).unwrap();
        let g = crate::Geometry::new(&p).unwrap();
        let r = g.realize(6, 1).unwrap();
        let st = collapse_stats(r.M.as_ref(), r.W.as_ref(), &[0.0; 6]).unwrap();
        assert!(st.equinorm_w > 0.1 && st.equinorm_mu > 0.1, "{st:?}");
        // Hand value: norms 1 and 3 -> mean 2, std 1 -> equinorm 0.5.
        let X = Mat::from_fn(2, 2, |r, c| if r == c { [1.0, 3.0][c] } else { 0.0 });
        let st = collapse_stats(X.as_ref(), X.as_ref(), &[0.0, 0.0]).unwrap();
        assert!((st.equinorm_w - 0.5).abs() < 1e-15);
        // Orthogonal pair: cos = 0, |0 + 1/(k-1)| = 1.
        assert!((st.max_angle_w - 1.0).abs() < 1e-15);
        assert_eq!(nearest_class_mean(X.as_ref(), &[0.9, 0.2]), 0);
        assert_eq!(nearest_class_mean(X.as_ref(), &[0.1, 2.0]), 1);
    }
}
