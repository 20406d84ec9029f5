//! The engine's program on the reference kernels against burn's training step on the CPU
//! (`crate::run`'s: the network of `crate::model`, the fused loss and optimizer): the same
//! losses, parameters, running statistics and velocities after a few steps, the same features
//! and logits in evaluation mode, and checkpoints that pass between the two.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};

use super::cpu::Reference;
use super::*;
use crate::flex::testing::seq;
use crate::optim::SgdMomentum;

const MOMENTUM: f64 = 0.9;
const DECAY: f64 = 5e-3;

pub(super) struct Case {
    pub(super) cfg: ModelConfig,
    pub(super) image: [usize; 3],
    pub(super) classes: usize,
    pub(super) rows: usize,
    pub(super) transform: Transform,
}

fn mlp(batch_norm: bool, last_bias: bool) -> ModelConfig {
    ModelConfig { kind: ModelKind::Mlp, depth: 2, width: 6, batch_norm, last_bias }
}

pub(super) fn cases() -> Vec<Case> {
    let ldt =
        Transform { delta: vec![1.0, 0.7, 0.4], shift: vec![0.0, -0.3, 0.5], per_label: true };
    let cdt = Transform { per_label: false, ..ldt.clone() };
    vec![
        Case { cfg: mlp(true, false), image: [1, 3, 4], classes: 3, rows: 7, transform: cdt },
        Case { cfg: mlp(false, true), image: [2, 2, 2], classes: 3, rows: 5, transform: ldt },
        Case {
            cfg: ModelConfig {
                kind: ModelKind::ResNet18,
                depth: 1,
                width: 2,
                batch_norm: true,
                last_bias: false,
            },
            image: [3, 16, 12],
            classes: 4,
            rows: 4,
            transform: Transform::plain(4),
        },
    ]
}

/// Batch `b` of a case: images and labels (every class present).
pub(super) fn batch(case: &Case, b: usize) -> (Vec<f32>, Vec<u32>) {
    let per: usize = case.image.iter().product();
    let x = seq(case.rows * per, 0.37 + 0.11 * b as f32);
    let y = (0..case.rows).map(|i| ((i + b) % case.classes) as u32).collect();
    (x, y)
}

fn tensors(case: &Case, x: &[f32], y: &[u32], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let [c, h, w] = case.image;
    let xt = Tensor::from_data(TensorData::new(x.to_vec(), [y.len(), c, h, w]), device);
    let yv: Vec<i64> = y.iter().map(|&v| i64::from(v)).collect();
    (xt, Tensor::from_data(TensorData::new(yv, [y.len()]), device))
}

/// burn's step (as `crate::run` takes it): the loss.
fn burn_step(case: &Case, net: Net, optim: &mut ModuleOptimizer, b: usize, lr: f64) -> (Net, f64) {
    let device = Device::flex().autodiff();
    let (x, y) = batch(case, b);
    let (xt, yt) = tensors(case, &x, &y, &device);
    let z = net.forward(xt);
    let k = case.classes;
    let t = &case.transform;
    let m: Tensor<2> = if t.per_label {
        let v: Vec<f32> = y.iter().map(|&l| t.delta[l as usize]).collect();
        Tensor::from_data(TensorData::new(v, [y.len(), 1]), &device)
    } else {
        Tensor::from_data(TensorData::new(t.delta.clone(), [1, k]), &device)
    };
    let shift: Tensor<2> = Tensor::from_data(TensorData::new(t.shift.clone(), [1, k]), &device);
    let u = z * m + shift;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loss = crate::loss::cross_entropy(&loss_fn, u, yt);
    let value = loss.clone().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    (optim.step(lr, net, grads), value)
}

fn engine(case: &Case) -> Engine<Reference> {
    engine_on(Reference::new(), case)
}

/// The engine of `case` on `kernels`, for batches of up to 8 rows.
pub(super) fn engine_on<K: Kernels>(kernels: K, case: &Case) -> Engine<K> {
    let setup = Setup {
        model: &case.cfg,
        image: case.image,
        classes: case.classes,
        batch: 8,
        eval_batch: 8,
        momentum: MOMENTUM,
        weight_decay: DECAY,
        transform: case.transform.clone(),
    };
    Engine::new(kernels, &setup).unwrap()
}

pub(super) fn fresh(case: &Case) -> Net {
    let device = Device::flex().autodiff();
    Net::seeded(&case.cfg, case.image, case.classes, &device, 11).unwrap()
}

/// Every tensor of a network in traversal order.
pub(super) fn values(net: &Net) -> Vec<(u64, Vec<f32>)> {
    let mut c = Collect::default();
    // Running statistics are read after their latest update (`valid` syncs them).
    drop(net.valid());
    net.visit(&mut c);
    c.tensors.into_iter().map(|(id, _, v)| (id, v)).collect()
}

pub(super) fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} against {y} (scale {scale})");
    }
}

#[test]
fn the_program_trains_as_burns_step_does() {
    for case in cases() {
        let name = format!("{:?}", case.cfg.kind);
        let mut net = fresh(&case);
        let mut eng = engine(&case);
        eng.load(&net, None).unwrap();
        let mut optim = SgdMomentum::new(MOMENTUM, DECAY).init();
        let lrs = [0.1, 0.05, 0.05];
        for (b, &lr) in lrs.iter().enumerate() {
            let (n, loss) = burn_step(&case, net, &mut optim, b, lr);
            net = n;
            let (x, y) = batch(&case, b);
            eng.step(&x, &y, lr).unwrap();
            let (sum, _) = eng.totals().unwrap();
            let mean = sum / case.rows as f64;
            assert!(
                (mean - loss).abs() < 1e-5 * loss.abs().max(1.0),
                "{name}: step {b}: loss {mean} vs {loss}"
            );
        }
        let (stored, optim_bytes) = eng.store(fresh(&case)).unwrap();
        for ((id, a), (jd, b)) in values(&stored).iter().zip(values(&net)) {
            assert_eq!(*id, jd);
            close(&format!("{name} tensor {id}"), a, &b, 2e-4);
        }
        // The velocities, through burn's own record of them.
        let ours = velocities(Bytes::from_bytes_vec(optim_bytes.clone())).unwrap();
        let theirs = velocities(optim.into_bytes().unwrap()).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: velocities");
        for (id, v) in &theirs {
            let (_, w) = ours.iter().find(|(i, _)| i == id).expect("a velocity for each parameter");
            // Gradients: burn's f32 products (Winograd's transforms for ResNet-18) against the
            // reference's f64 sums, through batch norms over a few values each; a wiring error
            // is off by the whole value, not by 1e-3 of it.
            close(&format!("{name} velocity {id}"), w, v, 2e-3);
        }
        // Evaluation mode: features and logits of `net.valid()`.
        let (x, _) = batch(&case, 5);
        let (h, z) = eng.infer(&x, case.rows).unwrap();
        let valid = net.valid();
        let dev = Device::flex();
        let (xt, _) = tensors(&case, &x, &vec![0; case.rows], &dev);
        let feats = valid.features(xt);
        let logits = valid.classify(feats.clone());
        let f32s = |t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        close(&format!("{name} features"), &h, &f32s(feats), 2e-4);
        close(&format!("{name} logits"), &z, &f32s(logits), 2e-4);
    }
}

#[test]
fn checkpoints_pass_between_the_engine_and_burn() {
    // Two steps on the engine, stored; a third by burn from that record, against three by burn.
    for case in cases().into_iter().take(2) {
        let mut net = fresh(&case);
        let mut optim = SgdMomentum::new(MOMENTUM, DECAY).init();
        let mut eng = engine(&case);
        eng.load(&net, None).unwrap();
        for b in 0..2 {
            let (n, _) = burn_step(&case, net, &mut optim, b, 0.1);
            net = n;
            let (x, y) = batch(&case, b);
            eng.step(&x, &y, 0.1).unwrap();
        }
        let (moved, bytes) = eng.store(fresh(&case)).unwrap();
        let mut resumed = SgdMomentum::new(MOMENTUM, DECAY)
            .init()
            .from_bytes(Bytes::from_bytes_vec(bytes.clone()))
            .unwrap();
        let (moved, _) = burn_step(&case, moved, &mut resumed, 2, 0.1);
        let (net, _) = burn_step(&case, net, &mut optim, 2, 0.1);
        for ((_, a), (_, b)) in values(&moved).iter().zip(values(&net)) {
            close("resumed by burn", a, &b, 2e-4);
        }
        // And back: burn's record into a new engine, which then equals the first.
        let mut back = engine(&case);
        back.load(&moved, Some(resumed.into_bytes().unwrap())).unwrap();
        let (x, y) = batch(&case, 3);
        back.step(&x, &y, 0.1).unwrap();
        let (net, _) = burn_step(&case, net, &mut optim, 3, 0.1);
        let (stored, _) = back.store(fresh(&case)).unwrap();
        for ((_, a), (_, b)) in values(&stored).iter().zip(values(&net)) {
            close("loaded from burn", a, &b, 2e-4);
        }
    }
}

#[test]
fn bad_batches_and_networks_are_refused() {
    let case = &cases()[0];
    let mut eng = engine(case);
    let (x, y) = batch(case, 0);
    let e = eng.step(&x[1..], &y, 0.1).unwrap_err().to_string();
    assert!(e.contains("7 rows"), "{e}");
    let e = eng.step(&x, &[9; 7], 0.1).unwrap_err().to_string();
    assert!(e.contains("label 9"), "{e}");
    let other = Case { cfg: mlp(false, false), ..cases().remove(0) };
    let e = eng.load(&fresh(&other), None).unwrap_err().to_string();
    assert!(e.contains("tensors") || e.contains("shape"), "{e}");
}
