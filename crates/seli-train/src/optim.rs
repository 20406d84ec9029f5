//! SGD with momentum and weight decay, the optimizer of the paper's deep-net runs, as one pass
//! over each parameter on the CPU.
//!
//! The update (PyTorch's `SGD(momentum=μ, weight_decay=λ)`, dampening 0, and burn's
//! `Sgd` with the same settings) is, for a parameter `w` with gradient `g` and velocity `v`,
//!
//! ```text
//! v ← μ v + g + λ w      (v ← g + λ w at the first step)
//! w ← w − η v
//! ```
//!
//! burn's `Sgd` makes five passes over every parameter for it (weight decay, momentum and the
//! update as separate tensor operations, two of them into fresh allocations): about 8 % of a
//! training step of the MLPs. On the flex backend [`SgdMomentum`] updates `v` and `w` in place in
//! one pass; elsewhere (CUDA) it makes the same update with tensor operations. Its state is
//! recorded under the names burn's `Sgd` uses (`momentum.velocity`), so checkpoints written by
//! either resume with the other.

use burn::backend::Flex;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::flex::{owned, tensor, values, vectorized};

/// SGD with momentum `momentum` and weight decay `weight_decay` (the `λ w` added to the
/// gradient).
#[derive(Clone, Debug)]
pub struct SgdMomentum {
    momentum: f32,
    weight_decay: f32,
}

impl SgdMomentum {
    /// The optimizer with these settings.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        SgdMomentum { momentum: momentum as f32, weight_decay: weight_decay as f32 }
    }

    /// The optimizer for a whole module (burn's [`ModuleOptimizer`], which records the state).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// The velocity of one parameter.
#[derive(Clone, Debug)]
pub struct Velocity<const D: usize> {
    velocity: Tensor<D>,
}

/// burn's `Sgd` records its velocity at `<param>.momentum.velocity`; so does this.
const GROUP: &str = "momentum";
const LEAF: &str = "velocity";

impl<const D: usize> RecordState for Velocity<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        let path = burn::optim::join_path(prefix, GROUP);
        out.push_tensor(&path, LEAF, self.velocity.clone().into_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let path = burn::optim::join_path(prefix, GROUP);
        let data = src.take_tensor(&path, LEAF)?;
        Some(Velocity { velocity: Tensor::from_data(data, device) })
    }
}

impl Optimizer for SgdMomentum {
    type State<const D: usize> = Velocity<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Velocity<D>>,
    ) -> (Tensor<D>, Option<Velocity<D>>) {
        let velocity = state.map(|s| s.velocity);
        let (w, v) = if in_place(&tensor, &grad, velocity.as_ref()) {
            flex_step(self, lr as f32, tensor, grad, velocity)
        } else {
            self.tensor_step(lr, tensor, grad, velocity)
        };
        (w, Some(Velocity { velocity: v }))
    }

    fn to_device<const D: usize>(state: Velocity<D>, device: &Device) -> Velocity<D> {
        Velocity { velocity: state.velocity.to_device(device) }
    }
}

impl SgdMomentum {
    /// The update with tensor operations, on any device.
    fn tensor_step<const D: usize>(
        &self,
        lr: LearningRate,
        w: Tensor<D>,
        g: Tensor<D>,
        v: Option<Tensor<D>>,
    ) -> (Tensor<D>, Tensor<D>) {
        let g =
            if self.weight_decay == 0.0 { g } else { g + w.clone().mul_scalar(self.weight_decay) };
        let v = match v {
            Some(v) => v.mul_scalar(self.momentum) + g,
            None => g,
        };
        (w - v.clone().mul_scalar(lr), v)
    }
}

/// Whether [`flex_step`] applies: f32 tensors of one shape on the flex backend.
fn in_place<const D: usize>(w: &Tensor<D>, g: &Tensor<D>, v: Option<&Tensor<D>>) -> bool {
    let is_flex = |t: &Tensor<D>| {
        matches!(t.device().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
            && !t.device().is_autodiff()
            && t.dtype() == DType::F32
            && t.shape() == w.shape()
    };
    is_flex(w) && is_flex(g) && v.is_none_or(is_flex)
}

/// The update on flex f32 tensors ([`in_place`]) in one pass: the parameter and the velocity
/// are written where they are when nothing else holds them.
fn flex_step<const D: usize>(
    opt: &SgdMomentum,
    lr: f32,
    w: Tensor<D>,
    g: Tensor<D>,
    v: Option<Tensor<D>>,
) -> (Tensor<D>, Tensor<D>) {
    let flex = |t: Tensor<D>| t.try_into_primitive::<Flex>().expect("a flex tensor");
    let n = w.shape().num_elements();
    let mut wt = owned(flex(w));
    let gp = flex(g);
    let gs = values(&gp);
    let (first, mut vt) = match v {
        Some(v) => (false, owned(flex(v))),
        None => (true, tensor(vec![0.0; n], wt.layout().shape().clone())),
    };
    let (mu, wd) = (if first { 0.0 } else { opt.momentum }, opt.weight_decay);
    {
        let ws = &mut wt.try_storage_mut::<f32>().expect("owned")[..n];
        let vs = &mut vt.try_storage_mut::<f32>().expect("owned")[..n];
        const CHUNK: usize = 1 << 14;
        ws.par_chunks_mut(CHUNK).zip(vs.par_chunks_mut(CHUNK)).zip(gs.par_chunks(CHUNK)).for_each(
            |((w, v), g)| {
                vectorized(|| {
                    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                        *v = mu * *v + g + wd * *w;
                        *w -= lr * *v;
                    }
                })
            },
        );
    }
    (Tensor::from_primitive::<Flex>(wt), Tensor::from_primitive::<Flex>(vt))
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::TensorData;

    use super::*;

    const MOMENTUM: f64 = 0.9;
    const DECAY: f64 = 0.05;

    /// burn's own optimizer with the same settings: the reference.
    fn burns() -> ModuleOptimizer {
        SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: MOMENTUM,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay(Some(WeightDecayConfig { penalty: DECAY as f32 }))
            .init()
    }

    fn ours() -> ModuleOptimizer {
        SgdMomentum::new(MOMENTUM, DECAY).init()
    }

    fn data(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// SGD steps at learning rates `lrs` on a fixed least-squares-like loss.
    fn train(mut m: Linear, optim: &mut ModuleOptimizer, lrs: &[f64]) -> Linear {
        let device = Device::flex().autodiff();
        let x = data((0..15).map(|i| (i as f32 * 0.37).sin()).collect(), [5, 3], &device);
        let t = data((0..10).map(|i| (i as f32 * 0.71).cos()).collect(), [5, 2], &device);
        for &lr in lrs {
            let loss = (m.forward(x.clone()) - t.clone()).powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optim.step(lr, m, grads);
        }
        m
    }

    fn weights(m: &Linear) -> Vec<f64> {
        let mut v: Vec<f64> =
            m.weight.val().into_data().convert::<f64>().try_into_vec::<f64>().unwrap();
        if let Some(b) = &m.bias {
            v.extend(b.val().into_data().convert::<f64>().try_into_vec::<f64>().unwrap());
        }
        v
    }

    fn start() -> Linear {
        LinearConfig::new(3, 2).init(&Device::flex().autodiff())
    }

    fn assert_close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "[{i}]: {u} against {v}");
        }
    }

    /// Reference: burn's `Sgd` (momentum, weight decay, a learning-rate change).
    #[test]
    fn steps_match_burns_sgd() {
        let m = start();
        let lrs = [0.1, 0.1, 0.05, 0.05];
        let a = train(m.clone(), &mut ours(), &lrs);
        let b = train(m.clone(), &mut burns(), &lrs);
        assert_close(&weights(&a), &weights(&b));
        assert!(weights(&a) != weights(&m), "the weights moved");
    }

    /// A checkpoint of either optimizer resumes with the other: the same state names.
    #[test]
    fn state_round_trips_with_burns_sgd() {
        let m = start();
        let whole = train(m.clone(), &mut burns(), &[0.1, 0.1, 0.05]);
        for (mut first, second) in [(burns(), ours()), (ours(), burns())] {
            let half = train(m.clone(), &mut first, &[0.1, 0.1]);
            let bytes = first.into_bytes().expect("encodes");
            let mut second = second.from_bytes(bytes).expect("decodes");
            let rest = train(half, &mut second, &[0.05]);
            assert_close(&weights(&rest), &weights(&whole));
        }
    }

    /// Reference: the definition, elementwise in f64; both paths (in place on flex tensors,
    /// and tensor operations) and both cases (first step, later step).
    #[test]
    fn one_step_follows_the_definition() {
        let device = Device::flex();
        let opt = SgdMomentum::new(MOMENTUM, DECAY);
        let w0: Vec<f32> = vec![0.5, -1.0, 2.0, 0.25];
        let g0: Vec<f32> = vec![0.1, 0.2, -0.3, 0.4];
        let v0: Vec<f32> = vec![-0.2, 0.0, 0.7, 1.5];
        let lr = 0.3;
        let t = |v: &[f32]| data(v.to_vec(), [2, 2], &device);
        let f64s = |t: Tensor<2>| t.into_data().convert::<f64>().try_into_vec::<f64>().unwrap();
        for with_velocity in [false, true] {
            let (want_w, want_v): (Vec<f64>, Vec<f64>) = (0..4)
                .map(|i| {
                    let (w, g) = (f64::from(w0[i]), f64::from(g0[i]));
                    let prev = if with_velocity { f64::from(v0[i]) } else { 0.0 };
                    let mu = if with_velocity { MOMENTUM } else { 0.0 };
                    let v = mu * prev + g + DECAY * w;
                    (w - lr * v, v)
                })
                .unzip();
            let v = || with_velocity.then(|| t(&v0));
            let (fw, fv) = flex_step(&opt, lr as f32, t(&w0), t(&g0), v());
            let (tw, tv) = opt.tensor_step(lr, t(&w0), t(&g0), v());
            for got in [f64s(fw), f64s(tw)] {
                assert_close(&got, &want_w);
            }
            for got in [f64s(fv), f64s(tv)] {
                assert_close(&got, &want_v);
            }
        }
    }
}
