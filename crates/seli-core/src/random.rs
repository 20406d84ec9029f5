//! Seeded randomness shared by every seli computation.
//!
//! One generator, ChaCha8 seeded from a `u64`, so that a recorded seed regenerates the same
//! numbers on every platform and with every build.

use faer::Mat;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The generator every seeded seli computation uses.
pub type SeliRng = ChaCha8Rng;

/// The generator for `seed`.
pub fn rng_from_seed(seed: u64) -> SeliRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Shuffles `v` in place (Fisher–Yates), the same way for the same generator state on every
/// platform.
pub fn shuffle<T>(v: &mut [T], rng: &mut SeliRng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// A `rows × cols` matrix of independent standard normal entries scaled by `scale`, filled
/// column by column.
pub fn gaussian_matrix(rows: usize, cols: usize, scale: f64, rng: &mut SeliRng) -> Mat<f64> {
    let mut m = Mat::zeros(rows, cols);
    for j in 0..cols {
        for i in 0..rows {
            let z: f64 = rng.sample(StandardNormal);
            m[(i, j)] = scale * z;
        }
    }
    m
}

/// A `d × r` matrix with orthonormal columns (`d >= r`), uniformly distributed up to the
/// column signs fixed by the QR factorization of a Gaussian matrix.
///
/// # Panics
/// If `d < r`.
pub fn random_orthonormal(d: usize, r: usize, rng: &mut SeliRng) -> Mat<f64> {
    assert!(d >= r, "need d >= r for {r} orthonormal columns in R^{d}");
    gaussian_matrix(d, r, 1.0, rng).qr().compute_thin_Q()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthonormal_columns_and_reproducible() {
        let q = random_orthonormal(7, 4, &mut rng_from_seed(3));
        let qtq = q.transpose() * &q;
        let eye = Mat::<f64>::identity(4, 4);
        assert!((&qtq - &eye).norm_max() < 1e-14);
        let again = random_orthonormal(7, 4, &mut rng_from_seed(3));
        assert_eq!(q, again);
        let other = random_orthonormal(7, 4, &mut rng_from_seed(4));
        assert!((&q - &other).norm_max() > 1e-3);
    }
}
