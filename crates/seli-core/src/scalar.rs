//! The floating-point types the solvers run in: `f32` and `f64`.
//!
//! Storage and matrix products use the chosen type; reductions that decide anything (losses,
//! norms, step sizes) are accumulated in `f64` whatever the storage type.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real floating-point type usable by the solvers.
pub trait Scalar:
    faer::traits::RealField
    + Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// `"f32"` or `"f64"`, as recorded in outputs.
    const NAME: &'static str;
    /// Conversion from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Conversion to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `x ← e^x` for every `x <= 0` of `xs` (the shifted logits of a softmax). Results within
    /// a factor 2 of the smallest normal number and below (x < −708 in f64, x < −87 in f32)
    /// are flushed to 0, which keeps the slow subnormal path of
    /// libm out of the hot loop; everything else is accurate to a few ulps. Branch-free and
    /// always inlined, so it vectorizes with whatever SIMD its caller is compiled for (the UFM
    /// pass chooses at run time); every path gives the same bits.
    fn exp_nonpos_in_place(xs: &mut [Self]);
}

/// Sum of squares of `xs`, accumulated in f64 with eight interleaved partial sums so that the
/// loop vectorizes (the order is fixed, so results are reproducible).
#[inline(always)]
pub fn sum_sq<T: Scalar>(xs: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let v = x.to_f64();
            *a += v * v;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        let v = x.to_f64();
        *a += v * v;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// `e^x` for `x <= 0` in f64: Cody–Waite reduction `x = n ln2 + r`, `|r| <= ln2/2`, a
/// degree-13 Taylor polynomial for `e^r` (truncation below 1e-17), and `2^n` built from the
/// exponent bits. Branch-free so that loops over it vectorize.
#[inline(always)]
fn exp_nonpos_f64(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    const LOW: f64 = -708.0; // e^-708 ≈ 3.3e-308, still normal
    let xc = if x < LOW { LOW } else { x };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for inv_fact in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + inv_fact;
    }
    let ni = (t.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let scale = f64::from_bits(((ni + 1023) << 52) as u64);
    if x < LOW { 0.0 } else { p * scale }
}

/// `e^x` for `x <= 0` in f32: as [`exp_nonpos_f64`] with a degree-7 polynomial.
#[inline(always)]
fn exp_nonpos_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LOW: f32 = -87.0; // e^-87 ≈ 1.6e-38, still normal
    let xc = if x < LOW { LOW } else { x };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for inv_fact in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + inv_fact;
    }
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) << 23) as u32);
    if x < LOW { 0.0 } else { p * scale }
}

impl Scalar for f64 {
    const NAME: &'static str = "f64";
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_nonpos_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = exp_nonpos_f64(*x));
    }
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_nonpos_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = exp_nonpos_f32(*x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_matches_libm() {
        let xs: Vec<f64> =
            (0..20_000).map(|i| -(i as f64) * 0.0375).chain([0.0, -1e-300, -707.9]).collect();
        let mut ys = xs.clone();
        f64::exp_nonpos_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = x.exp();
            if x < -708.0 {
                assert_eq!(y, 0.0, "x = {x}");
            } else {
                assert!((y - want).abs() <= 4.0 * f64::EPSILON * want, "x = {x}: {y} vs {want}");
            }
        }
        let xs: Vec<f32> = (0..5_000).map(|i| -(i as f32) * 0.0211).collect();
        let mut ys = xs.clone();
        f32::exp_nonpos_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if x < -87.0 {
                assert_eq!(y, 0.0, "x = {x}");
            } else {
                assert!(
                    (y as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want,
                    "x = {x}: {y} vs {want}"
                );
            }
        }
    }

    #[test]
    fn sum_of_squares() {
        let xs: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let want: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((sum_sq(&xs) - want).abs() < 1e-12 * want);
        assert_eq!(sum_sq::<f64>(&[]), 0.0);
    }
}
