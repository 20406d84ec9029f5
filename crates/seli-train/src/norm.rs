//! Batch normalization for the networks: burn's [`BatchNorm`] module (its parameters, running
//! statistics and checkpoint encoding), with its training step computed by one fused operation
//! on the CPU.
//!
//! In training mode burn's flex backend normalizes through its generic decomposition: transposed
//! copies, separate reductions for the mean and the variance, and five broadcast passes forward;
//! nine more passes backward. That was about a tenth of a training step of the batch-norm MLP.
//! [`batch_norm`] computes the same function on flex tensors in two passes forward (channel sums,
//! then the affine map) and two backward (two channel sums, then the input gradient), registered
//! with burn's autodiff as one operation; on other devices (CUDA) and in evaluation mode it is
//! burn's module unchanged.
//!
//! With `x` of shape `[N, C, ...]` and `M = N × (spatial size)` values per channel `c`, training
//! mode computes `μ_c`, the biased variance `σ²_c` over those values, `x̂ = (x − μ_c)/√(σ²_c + ε)`
//! and `y = γ_c x̂ + β_c`; differentiating through `μ_c` and `σ²_c` gives the gradients
//! `∂β_c = Σ ∂y`, `∂γ_c = Σ ∂y x̂` and
//! `∂x = γ_c/√(σ²_c + ε) · (∂y − ∂β_c/M − x̂ ∂γ_c/M)` (the tests check them against burn's own
//! batch norm, differentiated by its autodiff, and check that `∂x` is orthogonal, per channel,
//! to the constants and to `x̂`).
//! Channel sums are accumulated in f64; the running statistics move as in burn's module
//! (`r ← (1 − m) r + m s`, with the biased batch variance).

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex::{contiguous, record, tensor, values, vectorized, zeros};

/// `bn` applied to `x` (`[N, C, ...]`): the fused training step when `x` is a tracked f32 tensor
/// of the flex backend and `bn` is in training mode, burn's [`BatchNorm::forward`] otherwise.
/// Updates the running statistics in training mode, as burn does.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return bn.forward(x);
    }
    let Some((y, mean, var)) = flex_train(&x, bn.gamma.val(), bn.beta.val(), bn.epsilon) else {
        return bn.forward(x);
    };
    let device = x.device();
    let c = mean.len();
    let m = bn.momentum;
    let update = |running: Tensor<1>, batch: Vec<f32>| {
        let batch: Tensor<1> = Tensor::from_data(TensorData::new(batch, [c]), &device);
        running.to_device(&device).mul_scalar(1.0 - m).add(batch.mul_scalar(m)).detach()
    };
    bn.running_mean.update(update(bn.running_mean.value_sync(), mean));
    bn.running_var.update(update(bn.running_var.value_sync(), var));
    y
}

/// The shape `[N, C, ...]` read as `(N, C, S)`, `S` the product of the trailing dimensions.
fn ncs(shape: &Shape) -> (usize, usize, usize) {
    let dims = shape.as_slice();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// The training step on the flex backend: the output (tracked), and the batch mean and biased
/// variance per channel. `None` when the tensors are not f32 tensors of autodiff over flex.
fn flex_train<const D: usize>(
    x: &Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Option<(Tensor<D>, Vec<f32>, Vec<f32>)> {
    type Ad = Autodiff<Flex>;
    let x = x.clone().try_into_primitive::<Ad>().ok()?;
    let gamma = gamma.try_into_primitive::<Ad>().ok()?;
    let beta = beta.try_into_primitive::<Ad>().ok()?;
    if [x.primitive(), gamma.primitive(), beta.primitive()].iter().any(|t| t.dtype() != DType::F32)
    {
        return None;
    }
    let shape = x.primitive().shape();
    let (n, c, s) = ncs(&shape);
    if n * s == 0 {
        return None;
    }
    let input = contiguous(x.primitive());
    let xs = values(&input);
    let (mean, var) = channel_moments(&xs, c, s);
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    let g = values(gamma.primitive()).into_owned();
    let b = values(beta.primitive());
    let scale: Vec<f32> = (0..c).map(|j| (f64::from(g[j]) * inv_std[j]) as f32).collect();
    let shift: Vec<f32> =
        (0..c).map(|j| (f64::from(b[j]) - mean[j] * f64::from(g[j]) * inv_std[j]) as f32).collect();
    let y = tensor(affine(&xs, None, c, s, &scale, &shift), shape.clone());
    drop(xs);
    let saved = Saved { x: input, gamma: g, mean: mean.clone(), inv_std };
    let y = record(FusedBatchNorm, [x.node(), gamma.node(), beta.node()], saved, y);
    let f32s = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    Some((y, f32s(mean), f32s(var)))
}

/// Per-channel mean and biased variance of `x` (`[N, C, S]` row-major), in f64. The sums are
/// taken about each channel's first value, so that a large mean does not cancel the variance.
fn channel_moments(x: &[f32], c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    let pivot: Vec<f64> = (0..c).map(|j| f64::from(x[j * s])).collect();
    let (s1, s2) = channel_sums(x, x, c, s, |xr, _, a, b| {
        if s == 1 {
            // One value per channel and row: the loop runs across channels (vectorized).
            for (((&u, &p), a), b) in xr.iter().zip(&pivot).zip(a).zip(b) {
                let d = f64::from(u) - p;
                *a += d;
                *b += d * d;
            }
        } else {
            for (j, xs) in xr.chunks_exact(s).enumerate() {
                let (mut sa, mut sb) = (0.0, 0.0);
                for &u in xs {
                    let d = f64::from(u) - pivot[j];
                    sa += d;
                    sb += d * d;
                }
                a[j] += sa;
                b[j] += sb;
            }
        }
    });
    let m = (x.len() / c) as f64;
    let mean = (0..c).map(|j| pivot[j] + s1[j] / m).collect();
    let var = (0..c).map(|j| (s2[j] / m - (s1[j] / m).powi(2)).max(0.0)).collect();
    (mean, var)
}

/// `(Σ ∂y, Σ ∂y (x − μ))` per channel, in f64 (`[N, C, S]` row-major).
fn gradient_sums(dy: &[f32], x: &[f32], c: usize, s: usize, mean: &[f64]) -> (Vec<f64>, Vec<f64>) {
    channel_sums(dy, x, c, s, |gr, xr, a, b| {
        if s == 1 {
            for ((((&g, &u), &m), a), b) in gr.iter().zip(xr).zip(mean).zip(a).zip(b) {
                let g = f64::from(g);
                *a += g;
                *b += g * (f64::from(u) - m);
            }
        } else {
            for (j, (gs, xs)) in gr.chunks_exact(s).zip(xr.chunks_exact(s)).enumerate() {
                let (mut sa, mut sb) = (0.0, 0.0);
                for (&g, &u) in gs.iter().zip(xs) {
                    let g = f64::from(g);
                    sa += g;
                    sb += g * (f64::from(u) - mean[j]);
                }
                a[j] += sa;
                b[j] += sb;
            }
        }
    })
}

/// Two per-channel sums over the rows of `x` and `y` (both `[N, C, S]` row-major): `row` adds
/// one row of each to the sums. The rows are cut into parts of a size fixed by the shape, summed
/// on rayon's threads, and the parts' sums added in order: the result does not depend on the
/// thread count or on which thread took which part, so training is reproducible (a resumed run
/// retraces the uninterrupted one).
fn channel_sums(
    x: &[f32],
    y: &[f32],
    c: usize,
    s: usize,
    row: impl Fn(&[f32], &[f32], &mut [f64], &mut [f64]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    const PART: usize = 1 << 15;
    let width = c * s;
    let part = width * (PART / width).max(1);
    let parts: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(part)
        .zip(y.par_chunks(part))
        .map(|(xp, yp)| {
            vectorized(|| {
                let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
                for (xr, yr) in xp.chunks_exact(width).zip(yp.chunks_exact(width)) {
                    row(xr, yr, &mut a, &mut b);
                }
                (a, b)
            })
        })
        .collect();
    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (p, q) in parts {
        a.iter_mut().zip(p).for_each(|(u, v)| *u += v);
        b.iter_mut().zip(q).for_each(|(u, v)| *u += v);
    }
    (a, b)
}

/// `a_c x + k_c`, plus `b_c z` when `z` is given (`[N, C, S]` row-major), in f32.
fn affine(
    x: &[f32],
    z: Option<(&[f32], &[f32])>,
    c: usize,
    s: usize,
    a: &[f32],
    k: &[f32],
) -> Vec<f32> {
    let mut out = zeros(x.len());
    let row = c * s;
    out.par_chunks_mut(row).enumerate().for_each(|(i, o)| {
        vectorized(|| {
            let xr = &x[i * row..(i + 1) * row];
            let zr = z.map(|(z, b)| (&z[i * row..(i + 1) * row], b));
            // Channel j's coefficients on its stretch of `s` values; for s = 1 the loop runs
            // across channels, element by element (vectorized).
            match (zr, s) {
                (Some((zr, b)), 1) => {
                    for ((((o, &u), &v), &a), (&b, &k)) in
                        o.iter_mut().zip(xr).zip(zr).zip(a).zip(b.iter().zip(k))
                    {
                        *o = a * u + b * v + k;
                    }
                }
                (None, 1) => {
                    for (((o, &u), &a), &k) in o.iter_mut().zip(xr).zip(a).zip(k) {
                        *o = a * u + k;
                    }
                }
                (Some((zr, b)), _) => {
                    let stretches =
                        o.chunks_exact_mut(s).zip(xr.chunks_exact(s)).zip(zr.chunks_exact(s));
                    for (j, ((o, xs), zs)) in stretches.enumerate() {
                        let (a, b, k) = (a[j], b[j], k[j]);
                        for ((o, &u), &v) in o.iter_mut().zip(xs).zip(zs) {
                            *o = a * u + b * v + k;
                        }
                    }
                }
                (None, _) => {
                    for (j, (o, xs)) in o.chunks_exact_mut(s).zip(xr.chunks_exact(s)).enumerate() {
                        let (a, k) = (a[j], k[j]);
                        for (o, &u) in o.iter_mut().zip(xs) {
                            *o = a * u + k;
                        }
                    }
                }
            }
        })
    });
    out
}

/// The fused operation's place in burn's autodiff graph; its parents are `x`, `γ` and `β`.
#[derive(Debug)]
struct FusedBatchNorm;

/// What the backward pass needs: the input, `γ`, and the batch statistics.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: Vec<f32>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl Backward<Flex, 3> for FusedBatchNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad: FlexTensor = grads.consume::<Flex>(&ops.node);
        let Saved { x, gamma, mean, inv_std } = ops.state;
        let shape = x.shape();
        let (_, c, s) = ncs(&shape);
        let (xs, dy) = (values(&x), values(&grad));
        let m = (xs.len() / c) as f64;
        let (sum_dy, sum_dy_xc) = gradient_sums(&dy, &xs, c, s, &mean);
        let beta_grad: Vec<f64> = sum_dy;
        let gamma_grad: Vec<f64> = (0..c).map(|j| sum_dy_xc[j] * inv_std[j]).collect();
        if let Some(node) = node_x {
            // ∂x = a ∂y + b x + k with a = γ/σ, b = −a ∂γ/(σ M), k = −a ∂β/M − b μ.
            let a: Vec<f64> = (0..c).map(|j| f64::from(gamma[j]) * inv_std[j]).collect();
            let b: Vec<f64> = (0..c).map(|j| -a[j] * inv_std[j] * gamma_grad[j] / m).collect();
            let k: Vec<f32> =
                (0..c).map(|j| (-a[j] * beta_grad[j] / m - b[j] * mean[j]) as f32).collect();
            let to32 = |v: &[f64]| v.iter().map(|&u| u as f32).collect::<Vec<f32>>();
            let dx = affine(&dy, Some((&xs, &to32(&b))), c, s, &to32(&a), &k);
            grads.register::<Flex>(node.id, tensor(dx, shape.clone()));
        }
        let per_channel =
            |v: Vec<f64>| tensor(v.into_iter().map(|u| u as f32).collect(), [c].into());
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, per_channel(gamma_grad));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, per_channel(beta_grad));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Tensor, TensorData};
    use seli_core::random::{gaussian_matrix, rng_from_seed};

    use super::*;
    use crate::flex::testing::on_threads;

    fn values_of<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data()
            .try_into_vec::<f32>()
            .expect("f32 tensor")
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn random(len: usize, seed: u64, offset: f64) -> Vec<f32> {
        let g = gaussian_matrix(len, 1, 1.0, &mut rng_from_seed(seed));
        (0..len).map(|i| (g[(i, 0)] + offset) as f32).collect()
    }

    /// A batch norm with non-trivial γ, β and running statistics on `device`.
    fn layer(c: usize, device: &Device) -> BatchNorm {
        let mut bn = BatchNormConfig::new(c).with_momentum(0.3).init(device);
        let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), device);
        bn.gamma = Param::from_tensor(t(random(c, 11, 1.0)));
        bn.beta = Param::from_tensor(t(random(c, 12, 0.0)));
        bn.running_mean.update(t(random(c, 13, 0.0)));
        bn
    }

    /// Output, running statistics and the gradients of Σ y ⊙ w with respect to x, γ and β,
    /// computed by `f` (the fused operation or burn's module).
    fn run<const D: usize>(
        shape: [usize; D],
        offset: f64,
        f: impl Fn(&BatchNorm, Tensor<D>) -> Tensor<D>,
    ) -> [Vec<f64>; 6] {
        let device = Device::flex().autodiff();
        let len: usize = shape.iter().product();
        let bn = layer(shape[1], &device);
        let x: Tensor<D> =
            Tensor::from_data(TensorData::new(random(len, 1, offset), shape), &device)
                .require_grad();
        let w: Tensor<D> = Tensor::from_data(TensorData::new(random(len, 2, 0.5), shape), &device);
        let y = f(&bn, x.clone());
        let grads = (y.clone() * w).sum().backward();
        let grad = |t: &Tensor<1>| values_of(t.grad(&grads).unwrap());
        [
            values_of(y),
            values_of(bn.running_mean.value()),
            values_of(bn.running_var.value()),
            values_of(x.grad(&grads).unwrap()),
            grad(&bn.gamma.val()),
            grad(&bn.beta.val()),
        ]
    }

    fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert!((u - v).abs() <= tol * scale, "{what}[{i}]: {u} against {v}");
        }
    }

    /// Reference: burn's own batch norm (its generic decomposition on the same backend).
    #[test]
    fn fused_training_step_matches_burns_module() {
        let names = ["output", "running mean", "running variance", "∂x", "∂γ", "∂β"];
        for offset in [0.0, 300.0] {
            let ours = run([16, 5], offset, batch_norm);
            let burns = run([16, 5], offset, |bn, x| bn.forward(x));
            for (k, name) in names.iter().enumerate() {
                // A mean of 300 costs burn's f32 sums about 1e-4 relative in the variance.
                let tol = if offset == 0.0 { 2e-5 } else { 2e-3 };
                assert_close(&format!("2-d {name}, mean {offset}"), &ours[k], &burns[k], tol);
            }
            let ours = run([4, 3, 5, 2], offset, batch_norm);
            let burns = run([4, 3, 5, 2], offset, |bn, x| bn.forward(x));
            for (k, name) in names.iter().enumerate() {
                let tol = if offset == 0.0 { 2e-5 } else { 2e-3 };
                assert_close(&format!("4-d {name}, mean {offset}"), &ours[k], &burns[k], tol);
            }
        }
    }

    /// Reference: the definition, in f64 (mean, biased variance, affine map), with a mean large
    /// against the spread, where f32 sums about zero would lose digits.
    #[test]
    fn fused_output_follows_the_definition() {
        let (n, c, s) = (6, 3, 4);
        let device = Device::flex().autodiff();
        let bn = layer(c, &device);
        let xs = random(n * c * s, 5, 1000.0);
        let x: Tensor<3> =
            Tensor::from_data(TensorData::new(xs.clone(), [n, c, s]), &device).require_grad();
        let y = values_of(batch_norm(&bn, x));
        let gamma = values_of(bn.gamma.val());
        let beta = values_of(bn.beta.val());
        for j in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..s).map(move |t| (i * c + j) * s + t))
                .map(|i| f64::from(xs[i]))
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for i in 0..n {
                for t in 0..s {
                    let at = (i * c + j) * s + t;
                    let want =
                        gamma[j] * (f64::from(xs[at]) - mean) / (var + 1e-5).sqrt() + beta[j];
                    assert!((y[at] - want).abs() < 1e-4, "y[{at}] = {} against {want}", y[at]);
                }
            }
        }
    }

    /// Properties of the input gradient: per channel it is orthogonal to the constants and to
    /// x̂ (the output does not move when x shifts or scales within a channel).
    #[test]
    fn input_gradient_is_orthogonal_to_shifts_and_scales() {
        let (n, c) = (32, 4);
        let [_, _, _, dx, ..] = run([n, c], 2.0, batch_norm);
        let xs = random(n * c, 1, 2.0);
        for j in 0..c {
            let col: Vec<f64> = (0..n).map(|i| f64::from(xs[i * c + j])).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            // Against the sums of magnitudes: what f32 rounding of each term can leave.
            let (shift, shift_size): (f64, f64) =
                (0..n).map(|i| dx[i * c + j]).fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
            let (scale, scale_size): (f64, f64) = (0..n)
                .map(|i| dx[i * c + j] * (col[i] - mean))
                .fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
            assert!(shift.abs() < 1e-5 * shift_size, "channel {j}: Σ ∂x = {shift}");
            assert!(scale.abs() < 1e-5 * scale_size, "channel {j}: Σ ∂x (x − μ) = {scale}");
        }
    }

    /// The sums are cut into parts by the shape, not by the threads: bit-identical results
    /// with one thread and with three, over several parts.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let x = random(256 * 4 * 96, 4, 3.0);
        let on = |threads| {
            on_threads(threads, || (channel_moments(&x, 4, 96), run([256, 4, 96], 3.0, batch_norm)))
        };
        let (one, three) = (on(1), on(3));
        assert!(one.0 == three.0, "moments: {:?} against {:?}", one.0, three.0);
        assert!(one.1 == three.1, "the outputs or gradients differ");
    }

    /// Off the autodiff device (evaluation) the running statistics are used and left alone.
    #[test]
    fn evaluation_uses_the_running_statistics() {
        let device = Device::flex();
        let bn = layer(3, &device);
        let before = values_of(bn.running_mean.value());
        let x: Tensor<2> = Tensor::from_data(TensorData::new(random(12, 3, 0.0), [4, 3]), &device);
        let ours = values_of(batch_norm(&bn, x.clone()));
        assert_close("evaluation", &ours, &values_of(bn.forward(x)), 0.0);
        assert_eq!(values_of(bn.running_mean.value()), before);
    }
}
