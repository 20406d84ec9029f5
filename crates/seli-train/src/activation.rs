//! The networks' activation, `relu(x) = max(x, 0)`, as one autodiff operation on the CPU whose
//! loops run on rayon's threads.
//!
//! burn's flex backend applies it, and its derivative backward, on the calling thread alone,
//! while the pool's other threads wait: in the MLPs' training step those loops were about a
//! sixth of the time the second core idled. [`relu`] computes `y = max(x, 0)` forward and
//! `∂x = ∂y · [y > 0]` backward (in place in `∂y` when nothing else holds it) in chunks on
//! rayon's threads; like burn's, it keeps a NaN (`y = x` unless `x ≤ 0`) and passes the
//! gradient where `y` is NaN, so a diverging run still shows. On other devices (CUDA) and
//! outside training it is burn's.

use burn::backend::TensorMetadata;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex::{OneParent, OneParentOp, filled, owned, record, tensor, values, vectorized};

/// Entries per chunk of the parallel loops.
const CHUNK: usize = 1 << 14;

/// `max(x, 0)` entry by entry: the fused operation when `x` is a tracked f32 tensor of the
/// flex backend, burn's [`relu`](burn::tensor::activation::relu) otherwise.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.device().is_autodiff()
        && let Some(y) = flex_relu(&x)
    {
        return y;
    }
    burn::tensor::activation::relu(x)
}

fn flex_relu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let x = x.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    if x.primitive().dtype() != DType::F32 {
        return None;
    }
    let xs = values(x.primitive());
    let y = filled(xs.len(), CHUNK, |i, y| {
        vectorized(|| {
            for (y, &v) in y.iter_mut().zip(&xs[i * CHUNK..]) {
                *y = if v <= 0.0 { 0.0 } else { v };
            }
        })
    });
    let y = tensor(y, x.primitive().shape());
    Some(record(OneParentOp::new(), [x.node()], Saved(y.clone()), y))
}

/// The output, whose sign gates the gradient.
#[derive(Clone, Debug)]
struct Saved(FlexTensor);

impl OneParent for Saved {
    fn backward(self, dy: FlexTensor) -> FlexTensor {
        let ys = values(&self.0);
        let mut dx = owned(dy);
        let n = ys.len();
        let ds = &mut dx.try_storage_mut::<f32>().expect("owned")[..n];
        ds.par_chunks_mut(CHUNK).zip(ys.par_chunks(CHUNK)).for_each(|(d, y)| {
            vectorized(|| {
                for (d, &v) in d.iter_mut().zip(y) {
                    if v <= 0.0 {
                        *d = 0.0;
                    }
                }
            })
        });
        dx
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::flex::testing::{f64s, on_threads, seq};

    /// Output and input gradient of `Σ relu(x) ⊙ r` (a fixed pattern `r`) through `f`, for a
    /// `[3, 5, 7, 11]` input (several chunks) with zeros, negatives and a NaN.
    fn run(f: impl Fn(Tensor<4>) -> Tensor<4>) -> (Vec<f64>, Vec<f64>) {
        let device = Device::flex().autodiff();
        let shape = [3, 5, 7, 11];
        let len = shape.iter().product();
        let mut xs = seq(len, 0.37);
        xs[5] = 0.0;
        xs[17] = f32::NAN;
        let x = Tensor::<4>::from_data(TensorData::new(xs, shape), &device).require_grad();
        let r = Tensor::<4>::from_data(TensorData::new(seq(len, 1.3), shape), &device);
        let y = f(x.clone());
        let grads = (y.clone() * r).sum().backward();
        (f64s(y), f64s(x.grad(&grads).expect("∂x")))
    }

    /// Reference: burn's relu, differentiated by its autodiff, entry for entry (NaN included),
    /// on one thread and on three.
    #[test]
    fn fused_relu_matches_burns() {
        let burns = run(burn::tensor::activation::relu);
        for threads in [1, 3] {
            let ours = on_threads(threads, || run(relu));
            for (a, b) in [(&ours.0, &burns.0), (&ours.1, &burns.1)] {
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(b) {
                    assert!(u == v || (u.is_nan() && v.is_nan()), "{u} vs {v}");
                }
            }
        }
        // The definition: max(x, 0), the gradient r where x > 0.
        let (y, dx) = &burns;
        assert!(y[17].is_nan() && y[5] == 0.0);
        let (xs, rs) = (seq(3 * 5 * 7 * 11, 0.37), seq(3 * 5 * 7 * 11, 1.3));
        for i in [0, 1, 2, 100, 1000] {
            let want = if xs[i] > 0.0 { f64::from(rs[i]) } else { 0.0 };
            assert_eq!(dx[i], want, "∂x[{i}]");
            assert_eq!(y[i], f64::from(xs[i].max(0.0)), "y[{i}]");
        }
    }
}
