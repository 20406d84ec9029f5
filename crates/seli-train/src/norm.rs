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
//! burn's module unchanged. [`batch_norm_relu`] is the same operation followed by a residual
//! sum and a ReLU, which it applies in its output pass (and to the gradient in its backward
//! sums) instead of three more operations with their own passes over the activations.
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

use crate::flex::{contiguous, filled, owned, record, tensor, values, vectorized};

/// `bn` applied to `x` (`[N, C, ...]`): the fused training step when `x` is a tracked f32 tensor
/// of the flex backend and `bn` is in training mode, burn's [`BatchNorm::forward`] otherwise.
/// Updates the running statistics in training mode, as burn does.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    normalize(bn, x, None, false)
}

/// `relu(bn(x) + skip)`, `skip` (when given) of `x`'s shape: [`batch_norm`] with the sum and
/// the ReLU in its output pass and their gradients in its backward passes when it is fused (the
/// networks' batch norms before a ReLU, and a residual block's last one); burn's operations
/// after [`batch_norm`] otherwise. The values and gradients are those of the three operations
/// one after the other, bit for bit.
pub fn batch_norm_relu<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    skip: Option<Tensor<D>>,
) -> Tensor<D> {
    normalize(bn, x, skip, true)
}

/// `bn(x) (+ skip)`, then ReLU when `relu`.
fn normalize<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    skip: Option<Tensor<D>>,
    relu: bool,
) -> Tensor<D> {
    let fused = match x.device().is_autodiff() && bn.training.is_enabled() {
        true => flex_train(&x, skip.as_ref(), relu, bn.gamma.val(), bn.beta.val(), bn.epsilon),
        false => None,
    };
    let Some((y, mean, var)) = fused else {
        let y = bn.forward(x);
        let y = match skip {
            Some(skip) => y + skip,
            None => y,
        };
        return if relu { crate::activation::relu(y) } else { y };
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
/// variance per channel. `None` when the tensors are not f32 tensors of autodiff over flex, or
/// `skip` has another shape than `x`.
fn flex_train<const D: usize>(
    x: &Tensor<D>,
    skip: Option<&Tensor<D>>,
    relu: bool,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Option<(Tensor<D>, Vec<f32>, Vec<f32>)> {
    type Ad = Autodiff<Flex>;
    let x = x.clone().try_into_primitive::<Ad>().ok()?;
    let gamma = gamma.try_into_primitive::<Ad>().ok()?;
    let beta = beta.try_into_primitive::<Ad>().ok()?;
    let skip = match skip {
        Some(t) => Some(t.clone().try_into_primitive::<Ad>().ok()?),
        None => None,
    };
    let tensors = [Some(&x), Some(&gamma), Some(&beta), skip.as_ref()];
    if tensors.iter().flatten().any(|t| t.primitive().dtype() != DType::F32) {
        return None;
    }
    let shape = x.primitive().shape();
    if skip.as_ref().is_some_and(|t| t.primitive().shape() != shape) {
        return None;
    }
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
    let added = skip.as_ref().map(|t| values(t.primitive()));
    let then = Then { add: added.as_deref(), relu };
    let y = tensor(affine(&xs, None, c, s, &scale, &shift, then), shape.clone());
    drop((xs, added));
    let saved =
        Saved { x: input, gamma: g, mean: mean.clone(), inv_std, output: relu.then(|| y.clone()) };
    let (nx, ng, nb, op) = (x.node(), gamma.node(), beta.node(), FusedBatchNorm);
    let y = match skip {
        Some(skip) => record(op, [nx, ng, nb, skip.node()], saved, y),
        None => record(op, [nx, ng, nb], saved, y),
    };
    let f32s = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    Some((y, f32s(mean), f32s(var)))
}

/// Per-channel mean and biased variance of `x` (`[N, C, S]` row-major), in f64. The sums are
/// taken about each channel's first value, so that a large mean does not cancel the variance.
fn channel_moments(x: &[f32], c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    let pivot: Vec<f64> = (0..c).map(|j| f64::from(x[j * s])).collect();
    let part = part_len(c, s);
    let (s1, s2) = channel_sums(
        x.par_chunks(part),
        c,
        #[inline(always)]
        |xp, a, b| {
            for xr in xp.chunks_exact(c * s) {
                if s == 1 {
                    // One value per channel and row: the loop runs across channels (vectorized).
                    for (((&u, &p), a), b) in xr.iter().zip(&pivot).zip(&mut *a).zip(&mut *b) {
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
            }
        },
    );
    let m = (x.len() / c) as f64;
    let mean = (0..c).map(|j| pivot[j] + s1[j] / m).collect();
    let var = (0..c).map(|j| (s2[j] / m - (s1[j] / m).powi(2)).max(0.0)).collect();
    (mean, var)
}

/// Adds `(Σ ∂y, Σ ∂y (x − μ))` per channel over the rows of `dy` and `x` (`[rows, C, S]`
/// row-major) to `a` and `b`.
#[inline(always)]
fn add_gradient_sums(dy: &[f32], x: &[f32], s: usize, mean: &[f64], a: &mut [f64], b: &mut [f64]) {
    let width = a.len() * s;
    for (gr, xr) in dy.chunks_exact(width).zip(x.chunks_exact(width)) {
        if s == 1 {
            for ((((&g, &u), &m), a), b) in gr.iter().zip(xr).zip(mean).zip(&mut *a).zip(&mut *b) {
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
    }
}

/// Entries per part of the channel sums: whole rows of `C × S` entries, about 32 768 of them.
fn part_len(c: usize, s: usize) -> usize {
    const PART: usize = 1 << 15;
    let width = c * s;
    width * (PART / width).max(1)
}

/// Two per-channel sums: `part` adds one part's rows to the sums. The parts are whole rows of
/// [`part_len`] entries (fixed by the shape), summed on rayon's threads, and their sums added in
/// order: the result does not depend on the thread count or on which thread took which part,
/// so training is reproducible (a resumed run retraces the uninterrupted one).
fn channel_sums<P: Send>(
    parts: impl IndexedParallelIterator<Item = P>,
    c: usize,
    part: impl Fn(P, &mut [f64], &mut [f64]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f64>)> = parts
        .map(|p| {
            vectorized(
                #[inline(always)]
                || {
                    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
                    part(p, &mut a, &mut b);
                    (a, b)
                },
            )
        })
        .collect();
    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (p, q) in parts {
        a.iter_mut().zip(p).for_each(|(u, v)| *u += v);
        b.iter_mut().zip(q).for_each(|(u, v)| *u += v);
    }
    (a, b)
}

/// What the output pass does to each value after the affine map: add the entry of `add`, then
/// apply the ReLU when `relu`.
#[derive(Clone, Copy)]
struct Then<'a> {
    add: Option<&'a [f32]>,
    relu: bool,
}

impl Then<'_> {
    const NOTHING: Then<'static> = Then { add: None, relu: false };
}

/// `a_c x + k_c`, plus `b_c z` when `z` is given (`[N, C, S]` row-major), in f32, then `then`
/// (row by row, while the row is in the cache).
fn affine(
    x: &[f32],
    z: Option<(&[f32], &[f32])>,
    c: usize,
    s: usize,
    a: &[f32],
    k: &[f32],
    then: Then<'_>,
) -> Vec<f32> {
    let row = c * s;
    filled(x.len(), row, |i, o| {
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
            if let Some(add) = then.add {
                o.iter_mut().zip(&add[i * row..(i + 1) * row]).for_each(|(o, &v)| *o += v);
            }
            if then.relu {
                // As burn's ReLU (and `activation::relu`): NaN stays NaN.
                o.iter_mut().for_each(|o| *o = if *o <= 0.0 { 0.0 } else { *o });
            }
        })
    })
}

/// The fused operation's place in burn's autodiff graph; its parents are `x`, `γ`, `β` and,
/// when there are four, the tensor added before the ReLU.
#[derive(Debug)]
struct FusedBatchNorm;

/// What the backward pass needs: the input, `γ`, the batch statistics, and the output when a
/// ReLU gates the gradient.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: Vec<f32>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    output: Option<FlexTensor>,
}

impl<const N: usize> Backward<Flex, N> for FusedBatchNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut parents = ops.parents.into_iter();
        let mut parent = || parents.next().flatten();
        let (node_x, node_gamma, node_beta, node_skip) = (parent(), parent(), parent(), parent());
        let grad: FlexTensor = grads.consume::<Flex>(&ops.node);
        let Saved { x, gamma, mean, inv_std, output } = ops.state;
        let shape = x.shape();
        let (_, c, s) = ncs(&shape);
        let xs = values(&x);
        let m = (xs.len() / c) as f64;
        let part = part_len(c, s);
        // The gradient of the batch norm's output: `∂y`, zero where the ReLU gave zero (in
        // place, while each part's sums are taken), as burn's ReLU does.
        let (grad, (sum_dy, sum_dy_xc)) = match output {
            Some(y) => {
                let mut grad = owned(grad);
                let ys = values(&y);
                let n = ys.len();
                let gs = &mut grad.try_storage_mut::<f32>().expect("owned")[..n];
                let parts =
                    gs.par_chunks_mut(part).zip(ys.par_chunks(part)).zip(xs.par_chunks(part));
                let sums = channel_sums(
                    parts,
                    c,
                    #[inline(always)]
                    |((g, y), x), a, b| {
                        for (g, &v) in g.iter_mut().zip(y) {
                            *g = if v <= 0.0 { 0.0 } else { *g };
                        }
                        add_gradient_sums(g, x, s, &mean, a, b);
                    },
                );
                (grad, sums)
            }
            None => {
                let dy = values(&grad);
                let parts = dy.par_chunks(part).zip(xs.par_chunks(part));
                let sums = channel_sums(
                    parts,
                    c,
                    #[inline(always)]
                    |(g, x), a, b| add_gradient_sums(g, x, s, &mean, a, b),
                );
                drop(dy);
                (grad, sums)
            }
        };
        let beta_grad: Vec<f64> = sum_dy;
        let gamma_grad: Vec<f64> = (0..c).map(|j| sum_dy_xc[j] * inv_std[j]).collect();
        if let Some(node) = node_x {
            // ∂x = a ∂y + b x + k with a = γ/σ, b = −a ∂γ/(σ M), k = −a ∂β/M − b μ.
            let a: Vec<f64> = (0..c).map(|j| f64::from(gamma[j]) * inv_std[j]).collect();
            let b: Vec<f64> = (0..c).map(|j| -a[j] * inv_std[j] * gamma_grad[j] / m).collect();
            let k: Vec<f32> =
                (0..c).map(|j| (-a[j] * beta_grad[j] / m - b[j] * mean[j]) as f32).collect();
            let to32 = |v: &[f64]| v.iter().map(|&u| u as f32).collect::<Vec<f32>>();
            let dy = values(&grad);
            let dx = affine(&dy, Some((&xs, &to32(&b))), c, s, &to32(&a), &k, Then::NOTHING);
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
        if let Some(node) = node_skip {
            grads.register::<Flex>(node.id, grad);
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

    /// Output, running statistics and the gradients of `Σ y ⊙ w` with respect to `x`, `γ`, `β`
    /// and the skip tensor, of `y = f(bn, x, skip)` (skip of `x`'s shape, with a NaN and
    /// values that make the sum negative, zero and positive).
    fn run_relu<const D: usize>(
        shape: [usize; D],
        with_skip: bool,
        f: impl Fn(&BatchNorm, Tensor<D>, Option<Tensor<D>>) -> Tensor<D>,
    ) -> Vec<Vec<f64>> {
        let device = Device::flex().autodiff();
        let len: usize = shape.iter().product();
        let bn = layer(shape[1], &device);
        let data = |v: Vec<f32>| TensorData::new(v, shape);
        let x: Tensor<D> = Tensor::from_data(data(random(len, 1, 0.5)), &device).require_grad();
        let mut skip_values = random(len, 3, -0.5);
        skip_values[len / 2] = f32::NAN;
        let skip: Tensor<D> = Tensor::from_data(data(skip_values), &device).require_grad();
        let w: Tensor<D> = Tensor::from_data(data(random(len, 2, 0.5)), &device);
        let y = f(&bn, x.clone(), with_skip.then(|| skip.clone()));
        let grads = (y.clone() * w).sum().backward();
        let mut out = vec![
            values_of(y),
            values_of(bn.running_mean.value()),
            values_of(bn.running_var.value()),
            values_of(x.grad(&grads).unwrap()),
            values_of(bn.gamma.val().grad(&grads).unwrap()),
            values_of(bn.beta.val().grad(&grads).unwrap()),
        ];
        if with_skip {
            out.push(values_of(skip.grad(&grads).unwrap()));
        }
        out
    }

    /// `batch_norm_relu` is the batch norm, the sum and the ReLU one after the other (our
    /// batch norm, burn's sum, our ReLU, each checked against burn's above and in
    /// `activation`), bit for bit: values, running statistics and every gradient, NaN
    /// included, with and without the skip tensor, for the MLP's `[N, C]` and the networks'
    /// `[N, C, H, W]`, on one thread and on three. The output is then `max(·, 0)` of the batch
    /// norm's, and the gradient is zero exactly where the output is.
    #[test]
    fn fused_relu_is_the_three_operations_in_turn() {
        fn apart<const D: usize>(
            bn: &BatchNorm,
            x: Tensor<D>,
            skip: Option<Tensor<D>>,
        ) -> Tensor<D> {
            let y = batch_norm(bn, x);
            crate::activation::relu(match skip {
                Some(s) => y + s,
                None => y,
            })
        }
        let same = |a: &[Vec<f64>], b: &[Vec<f64>], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (k, (u, v)) in a.iter().zip(b).enumerate() {
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(u) == bits(v), "{what}: quantity {k} differs");
            }
        };
        for with_skip in [false, true] {
            for threads in [1, 3] {
                let fused = on_threads(threads, || run_relu([64, 24], with_skip, batch_norm_relu));
                same(&fused, &run_relu([64, 24], with_skip, apart), "[64, 24]");
                let shape = [96, 4, 9, 11];
                let fused = on_threads(threads, || run_relu(shape, with_skip, batch_norm_relu));
                same(&fused, &run_relu(shape, with_skip, apart), "[96, 4, 9, 11]");
                let (y, dx) = (&fused[0], &fused[3]);
                assert!(y.iter().all(|v| v.is_nan() || *v >= 0.0));
                assert!(y.iter().filter(|v| **v == 0.0).count() > y.len() / 4, "few zeros");
                if with_skip {
                    let dskip = &fused[6];
                    assert!(y.iter().zip(dskip).all(|(y, d)| (*y == 0.0) == (*d == 0.0)));
                    assert!(y[y.len() / 2].is_nan() && dskip[y.len() / 2] != 0.0);
                }
                // The NaN's gradient is `w`'s entry (as burn's ReLU lets it through): finite.
                assert!(dx.iter().all(|v| v.is_finite()), "∂x finite");
            }
        }
        // Off the autodiff device (evaluation): the module, the sum and the ReLU.
        let device = Device::flex();
        let bn = layer(3, &device);
        let t =
            |seed| Tensor::<2>::from_data(TensorData::new(random(12, seed, 0.0), [4, 3]), &device);
        let ours = values_of(batch_norm_relu(&bn, t(3), Some(t(4))));
        let want = values_of(burn::tensor::activation::relu(bn.forward(t(3)) + t(4)));
        assert_close("evaluation", &ours, &want, 0.0);
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
