//! The linear layers: burn's [`Linear`] module (its parameters and checkpoint encoding), with its
//! training step on the CPU as one autodiff operation whose matrix products (faer's) write
//! straight into their outputs.
//!
//! burn's flex backend allocates each product's output as zeroed bytes and then copies them
//! once more to realign the buffer: two extra passes over every activation, input gradient and
//! weight gradient, about 8 % of a training step of the MLPs. With `x` of shape `[N, d_in]`,
//! `W` of shape `[d_in, d_out]` (burn's layout) and an optional bias `b`, [`linear`] computes
//! `y = x W + b` (the bias written first, the product added onto it) and, backward,
//! `∂x = ∂y Wᵀ` (only when `x` is tracked: not for the input images), `∂W = xᵀ ∂y` and
//! `∂b = Σ_rows ∂y`, the transposes read in place. On other devices (CUDA) and outside training
//! it is burn's module unchanged.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::{Autodiff, Flex};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use faer::MatRef;

use crate::flex::{TwoParentOp, TwoParents, contiguous, product_new, record, tensor, values};

/// `layer` applied to `x` (`[N, d_in]`): the fused step when `x` is a tracked f32 tensor of the
/// flex backend, burn's [`Linear::forward`] otherwise.
pub fn linear(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    if x.device().is_autodiff()
        && let Some(y) = flex_linear(layer, &x)
    {
        return y;
    }
    layer.forward(x)
}

type Ad = Autodiff<Flex>;

/// The training step on the flex backend; `None` when the tensors are not f32 flex tensors.
fn flex_linear(layer: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
    let x = x.clone().try_into_primitive::<Ad>().ok()?;
    let w = layer.weight.val().try_into_primitive::<Ad>().ok()?;
    let b = match &layer.bias {
        Some(b) => Some(b.val().try_into_primitive::<Ad>().ok()?),
        None => None,
    };
    let f32s = [Some(&x), Some(&w), b.as_ref()];
    if f32s.iter().flatten().any(|t| t.primitive().dtype() != DType::F32) {
        return None;
    }
    // A mismatched input goes to burn's module, which names the shapes.
    let (xs, ws) = (x.primitive().layout().shape(), w.primitive().layout().shape());
    let bias_fits = b.as_ref().is_none_or(|b| b.primitive().layout().shape()[0] == ws[1]);
    if xs[1] != ws[0] || !bias_fits {
        return None;
    }
    let saved = Saved { x: contiguous(x.primitive()), w: contiguous(w.primitive()) };
    let (n, _, d_out) = saved.dims();
    let bias = b.as_ref().map(|b| values(b.primitive()));
    let y = product_new(saved.input(), saved.weight(), bias.as_deref());
    let y = tensor(y, [n, d_out].into());
    Some(match b {
        Some(b) => record(WithBias, [x.node(), w.node(), b.node()], saved, y),
        None => record(TwoParentOp::new(), [x.node(), w.node()], saved, y),
    })
}

/// What the backward pass needs: the input and the weight.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
}

impl Saved {
    /// `(N, d_in, d_out)`.
    fn dims(&self) -> (usize, usize, usize) {
        let (x, w) = (self.x.layout().shape(), self.w.layout().shape());
        (x[0], x[1], w[1])
    }

    fn input(&self) -> MatRef<'_, f32> {
        let (n, d_in, _) = self.dims();
        MatRef::from_row_major_slice(self.x.as_slice::<f32>().expect("contiguous input"), n, d_in)
    }

    fn weight(&self) -> MatRef<'_, f32> {
        let (_, d_in, d_out) = self.dims();
        MatRef::from_row_major_slice(
            self.w.as_slice::<f32>().expect("contiguous weight"),
            d_in,
            d_out,
        )
    }
}

impl TwoParents for Saved {
    fn backward(&self, dy: &FlexTensor, [x, w]: [Option<NodeId>; 2], grads: &mut Gradients) {
        let (n, d_in, d_out) = self.dims();
        let dys = values(dy);
        let g = MatRef::from_row_major_slice(&dys, n, d_out);
        if let Some(id) = x {
            let dx = product_new(g, self.weight().transpose(), None);
            grads.register::<Flex>(id, tensor(dx, [n, d_in].into()));
        }
        if let Some(id) = w {
            let dw = product_new(self.input().transpose(), g, None);
            grads.register::<Flex>(id, tensor(dw, [d_in, d_out].into()));
        }
    }
}

/// The operation with a bias; parents `x`, `W`, `b`.
#[derive(Debug)]
struct WithBias;

impl Backward<Flex, 3> for WithBias {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: FlexTensor = grads.consume::<Flex>(&ops.node);
        let [x, w, b] = ops.parents.map(|p| p.map(|node| node.id));
        ops.state.backward(&dy, [x, w], grads);
        if let Some(id) = b {
            let d_out = dy.layout().shape()[1];
            let mut db = vec![0.0f64; d_out];
            for row in values(&dy).chunks_exact(d_out) {
                db.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
            }
            let db = db.into_iter().map(|s| s as f32).collect();
            grads.register::<Flex>(id, tensor(db, [d_out].into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::flex::testing::{f64s, on_threads, seq, weighted_sum_grads};

    /// Output and gradients (x, W, b) of Σ y ⊙ r through `f`, for a 5×3 → 4 layer.
    fn run(
        bias: bool,
        track_x: bool,
        f: impl Fn(&Linear, Tensor<2>) -> Tensor<2>,
    ) -> Vec<Vec<f64>> {
        let device = Device::flex().autodiff();
        let mut layer = LinearConfig::new(3, 4).with_bias(bias).init(&device);
        let t2 =
            |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &device);
        layer.weight = Param::from_tensor(t2(seq(12, 0.7), [3, 4]));
        if bias {
            let b = Tensor::<1>::from_data(TensorData::new(seq(4, 2.1), [4]), &device);
            layer.bias = Some(Param::from_tensor(b));
        }
        let x = t2(seq(15, 0.37), [5, 3]);
        let x = if track_x { x.require_grad() } else { x };
        let (mut out, grads) =
            weighted_sum_grads(f(&layer, x.clone()), &layer.weight.val(), &x, track_x);
        if let Some(b) = &layer.bias {
            out.push(f64s(b.val().grad(&grads).expect("∂b")));
        }
        out
    }

    /// Reference: burn's own linear layer, differentiated by its autodiff.
    #[test]
    fn fused_step_matches_burns_module() {
        for bias in [false, true] {
            for track_x in [false, true] {
                let ours = run(bias, track_x, linear);
                let burns = run(bias, track_x, |l, x| l.forward(x));
                assert_eq!(ours.len(), burns.len());
                for (a, b) in ours.iter().zip(&burns) {
                    for (u, v) in a.iter().zip(b) {
                        assert!(
                            (u - v).abs() < 1e-5,
                            "bias {bias}, x tracked {track_x}: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }

    /// The products split their outputs, not their sums, over the threads: bit-identical
    /// results with one thread and with three (a resumed run retraces the uninterrupted one).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let run = || {
            let device = Device::flex().autodiff();
            let mut layer = LinearConfig::new(300, 200).init(&device);
            let w = TensorData::new(seq(300 * 200, 0.11), [300, 200]);
            layer.weight = Param::from_tensor(Tensor::from_data(w, &device));
            let b = TensorData::new(seq(200, 0.5), [200]);
            layer.bias = Some(Param::from_tensor(Tensor::from_data(b, &device)));
            let x = Tensor::<2>::from_data(TensorData::new(seq(64 * 300, 0.3), [64, 300]), &device)
                .require_grad();
            let y = linear(&layer, x.clone());
            let grads = y.clone().powi_scalar(2).sum().backward();
            let w = layer.weight.val().grad(&grads).expect("∂W");
            [f64s(y), f64s(x.grad(&grads).expect("∂x")), f64s(w)]
        };
        let on = |threads| on_threads(threads, run);
        let (one, three) = (on(1), on(3));
        for (k, name) in ["y", "∂x", "∂W"].iter().enumerate() {
            assert!(one[k] == three[k], "{name} differs between one thread and three");
        }
    }

    /// Reference: the definition y = x W + b, in f64.
    #[test]
    fn output_follows_the_definition() {
        let device = Device::flex().autodiff();
        let layer = LinearConfig::new(3, 2).init(&device);
        let (xs, ws) = (seq(6, 0.5), f64s(layer.weight.val()));
        let bs = f64s(layer.bias.as_ref().expect("a bias").val());
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [2, 3]), &device).require_grad();
        let y = f64s(linear(&layer, x));
        for i in 0..2 {
            for j in 0..2 {
                let want: f64 =
                    (0..3).map(|k| f64::from(xs[i * 3 + k]) * ws[k * 2 + j]).sum::<f64>() + bs[j];
                assert!(
                    (y[i * 2 + j] - want).abs() < 1e-6,
                    "y[{i},{j}] = {} vs {want}",
                    y[i * 2 + j]
                );
            }
        }
    }
}
