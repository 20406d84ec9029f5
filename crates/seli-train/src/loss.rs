//! The training loss: burn's [`CrossEntropyLoss`] (the batch mean of `log Σ_c exp(u_c) − u_y`
//! for logits `u` and label `y`), computed on the CPU as one autodiff operation.
//!
//! burn's loss goes through log-softmax, a gather and a mean: about a dozen tensor operations
//! forward and backward, each an allocation and a graph node, and `exp` in f32 down to its
//! slow subnormal results once the logits of a well-fitted batch are far apart. [`cross_entropy`]
//! computes each row's log-sum-exp `ℓ_i = m_i + log Σ_c exp(u_ic − m_i)` (`m_i` the row's
//! largest logit; the exponentials in f32, 0 below `e⁻⁸⁷`, their sum in f64) and the mean
//! `L = (1/N) Σ_i (ℓ_i − u_{i,y_i})`, and backward `∂u_ic = ∂L (softmax(u_i)_c − [c = y_i]) / N`
//! from the saved softmax. With class weights, label smoothing, padding tokens, probabilities
//! instead of logits, on other devices (CUDA) or outside training it is burn's loss unchanged.

use burn::backend::{Autodiff, Flex};
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{DType, Int, Tensor};
use burn_flex::FlexTensor;

use crate::flex::{OneParent, OneParentOp, record, tensor, values};

/// `loss` of `logits` (`[N, K]`) against `targets` (`[N]`): the fused operation when the logits
/// are a tracked f32 tensor of the flex backend and `loss` is plain cross-entropy on logits,
/// burn's [`CrossEntropyLoss::forward`] otherwise.
pub fn cross_entropy(
    loss: &CrossEntropyLoss,
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
) -> Tensor<1> {
    let plain = loss.logits
        && loss.weights.is_none()
        && loss.smoothing.is_none()
        && loss.pad_tokens.is_none();
    if plain
        && logits.device().is_autodiff()
        && let Some(value) = flex_cross_entropy(&logits, &targets)
    {
        return value;
    }
    loss.forward(logits, targets)
}

/// The fused operation; `None` when the logits are not f32 flex tensors or a target is not a
/// class (burn's loss then names the problem).
fn flex_cross_entropy(logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Option<Tensor<1>> {
    let u = logits.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    if u.primitive().dtype() != DType::F32 {
        return None;
    }
    let [n, k] = logits.dims();
    let labels: Vec<usize> = targets
        .clone()
        .into_data()
        .iter::<i64>()
        .map(|y| usize::try_from(y).ok().filter(|&y| y < k))
        .collect::<Option<_>>()?;
    if labels.len() != n || n == 0 || k == 0 {
        return None;
    }
    let us = values(u.primitive());
    let mut softmax = vec![0.0f32; n * k];
    let mut total = 0.0f64;
    for ((row, p), &y) in us.chunks_exact(k).zip(softmax.chunks_exact_mut(k)).zip(&labels) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // exp(v − m) in [0, 1]; 0 below −87, where it would be subnormal (under 1.2·10⁻³⁸,
        // against a sum of at least 1) and slow to compute.
        p.iter_mut().zip(row).for_each(|(p, &v)| {
            let d = v - m;
            *p = if d < -87.0 { 0.0 } else { d.exp() };
        });
        let sum: f64 = p.iter().map(|&e| f64::from(e)).sum();
        total += f64::from(m) + sum.ln() - f64::from(row[y]);
        p.iter_mut().for_each(|e| *e = (f64::from(*e) / sum) as f32);
    }
    let value = tensor(vec![(total / n as f64) as f32], [1].into());
    Some(record(OneParentOp::new(), [u.node()], Saved { softmax, labels, k }, value))
}

/// What the backward pass needs: the softmax of every row and the labels; the operation has
/// one parent, the logits.
#[derive(Clone, Debug)]
struct Saved {
    softmax: Vec<f32>,
    labels: Vec<usize>,
    k: usize,
}

impl OneParent for Saved {
    fn backward(self, dy: FlexTensor) -> FlexTensor {
        let Saved { mut softmax, labels, k } = self;
        let n = labels.len();
        let scale = values(&dy)[0] / n as f32;
        for (p, &y) in softmax.chunks_exact_mut(k).zip(&labels) {
            p[y] -= 1.0;
            p.iter_mut().for_each(|v| *v *= scale);
        }
        tensor(softmax, [n, k].into())
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::flex::testing::{f64s, seq};

    /// Value and logit gradient of the loss (times 1.7, so that ∂L is not 1) through `f`.
    fn run(
        f: impl Fn(&CrossEntropyLoss, Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
        labels: &[i64],
        k: usize,
    ) -> (f64, Vec<f64>) {
        let device = Device::flex().autodiff();
        let n = labels.len();
        let u: Vec<f32> = seq(n * k, 0.77).iter().map(|v| 6.0 * v).collect();
        let u = Tensor::<2>::from_data(TensorData::new(u, [n, k]), &device).require_grad();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &device);
        let loss = f(&CrossEntropyLossConfig::new().init(&device), u.clone(), y);
        let grads = loss.clone().mul_scalar(1.7).backward();
        (f64s(loss)[0], f64s(u.grad(&grads).expect("∂u")))
    }

    /// Reference: burn's own loss, differentiated by its autodiff.
    #[test]
    fn fused_loss_matches_burns() {
        let labels = [0, 3, 1, 1, 2, 0, 3];
        let ours = run(cross_entropy, &labels, 4);
        let burns = run(|l, u, y| l.forward(u, y), &labels, 4);
        let close = (ours.0 - burns.0).abs() < 1e-6 * burns.0.abs().max(1.0);
        assert!(close, "{} vs {}", ours.0, burns.0);
        for (a, b) in ours.1.iter().zip(&burns.1) {
            assert!((a - b).abs() < 1e-6, "∂u: {a} vs {b}");
        }
    }

    /// Reference: the definition in f64, `(1/N) Σ_i log Σ_c exp(u_ic) − u_{i,y_i}`, and its
    /// derivative `(softmax(u_i)_c − [c = y_i]) / N`, for logits up to ±60 (where exp in f32
    /// without the row maximum would overflow, and some differences pass −87).
    #[test]
    fn loss_and_gradient_follow_the_definition() {
        let (n, k) = (5, 3);
        let labels = [2, 0, 1, 2, 2];
        let device = Device::flex().autodiff();
        let u: Vec<f32> = seq(n * k, 1.9).iter().map(|v| 60.0 * v).collect();
        let t = Tensor::<2>::from_data(TensorData::new(u.clone(), [n, k]), &device).require_grad();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &device);
        let loss = cross_entropy(&CrossEntropyLossConfig::new().init(&device), t.clone(), y);
        let grads = loss.clone().backward();
        let (value, du) = (f64s(loss)[0], f64s(t.grad(&grads).expect("∂u")));
        let mut want = 0.0;
        for (i, &label) in labels.iter().enumerate() {
            let row: Vec<f64> = u[i * k..][..k].iter().map(|&v| f64::from(v)).collect();
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            want += (lse - row[label as usize]) / n as f64;
            for (c, &v) in row.iter().enumerate() {
                let hit = f64::from(u8::from(c == label as usize));
                let g = ((v - lse).exp() - hit) / n as f64;
                let got = du[i * k + c];
                assert!((got - g).abs() < 1e-6, "∂u[{i},{c}] = {got} vs {g}");
            }
        }
        assert!((value - want).abs() < 1e-5 * want.max(1.0), "{value} vs {want}");
    }

    /// Smoothing goes to burn's loss; a target that is not a class is not fused (burn's loss
    /// reports it).
    #[test]
    fn other_losses_and_bad_targets_go_to_burn() {
        let device = Device::flex().autodiff();
        let u = Tensor::<2>::from_data(TensorData::new(seq(6, 0.3), [2, 3]), &device);
        let u = u.require_grad();
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let smoothed = CrossEntropyLossConfig::new().with_smoothing(Some(0.1)).init(&device);
        let a = f64s(cross_entropy(&smoothed, u.clone(), y.clone()))[0];
        let b = f64s(smoothed.forward(u.clone(), y))[0];
        assert_eq!(a, b);
        let bad = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3], [2]), &device);
        assert!(flex_cross_entropy(&u, &bad).is_none());
    }
}
