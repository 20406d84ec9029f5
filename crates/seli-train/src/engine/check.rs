//! The engine on a device against the reference kernels ([`super::cpu::Reference`]), for
//! `seli bench train --check` on a GPU: what the CPU's tests cannot reach there (NVRTC's
//! compilation of `kernels.cu`, cuBLAS's products, cuDNN's convolutions and the algorithms it
//! picks) on small networks, after a few SGD steps and in evaluation mode.

use burn::module::Module;
use burn::tensor::Device;

use super::cpu::Reference;
use super::{Collect, Engine, Kernels, Setup, Transform};
use crate::config::{ModelConfig, ModelKind};
use crate::error::Result;
use crate::model::Net;

/// The largest relative differences of one network (relative to the largest magnitude of
/// the reference's values).
#[derive(Clone, Debug)]
pub struct Difference {
    /// The network.
    pub name: String,
    /// Of the batches' summed losses.
    pub loss: f64,
    /// Of the parameters and running statistics after the steps.
    pub parameters: f64,
    /// Of the features and logits in evaluation mode.
    pub outputs: f64,
}

/// `(a − b)` at its largest, over the largest `|b|`.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(1e-6f64, |m, v| m.max(f64::from(v.abs())));
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max) / scale
}

/// Every tensor of `net`, one after the other.
fn flat(net: &Net) -> Vec<f32> {
    let mut c = Collect::default();
    net.visit(&mut c);
    c.tensors.into_iter().flat_map(|(_, _, v)| v).collect()
}

/// The networks: the MLPs with and without batch norm (the latter with a bias and the LDT
/// transform), a narrow ResNet-18 on 16×16 images.
fn cases() -> Vec<(String, ModelConfig, [usize; 3], Transform)> {
    let mlp = |batch_norm| ModelConfig {
        kind: ModelKind::Mlp,
        depth: 2,
        width: 64,
        batch_norm,
        last_bias: !batch_norm,
    };
    let ldt = Transform {
        delta: (0..10).map(|c| 1.0 - 0.05 * c as f32).collect(),
        shift: (0..10).map(|c| 0.1 * c as f32 - 0.4).collect(),
        per_label: true,
    };
    let resnet = ModelConfig {
        kind: ModelKind::ResNet18,
        depth: 0,
        width: 4,
        batch_norm: true,
        last_bias: false,
    };
    vec![
        ("MLP 784-64x2-10 + batch norm".into(), mlp(true), [1, 28, 28], Transform::plain(10)),
        ("MLP 784-64x2-10, bias, LDT loss".into(), mlp(false), [1, 28, 28], ldt),
        ("ResNet-18 width 4 on 3x16x16".into(), resnet, [3, 16, 16], Transform::plain(10)),
    ]
}

/// The most a difference of [`against_reference`] may be on a GPU: cuDNN may compute f32
/// convolutions in TF32 (10-bit mantissas), while a wiring error is off by the whole value.
pub const TOLERANCE: f64 = 5e-2;

/// Three SGD steps and an evaluation of each of three networks (the MLPs with and without batch
/// norm, the latter with a bias and the LDT loss; a ResNet-18 of width 4) on `kernels()` and on the
/// reference, from the same initial network and batches (16 rows).
///
/// # Errors
/// The device's.
pub fn against_reference<K: Kernels>(
    mut kernels: impl FnMut() -> Result<K>,
) -> Result<Vec<Difference>> {
    let rows = 16;
    let mut out = Vec::new();
    for (name, model, image, transform) in cases() {
        let setup = Setup {
            model: &model,
            image,
            classes: 10,
            batch: rows,
            eval_batch: rows,
            momentum: 0.9,
            weight_decay: 5e-4,
            transform,
        };
        let net = Net::seeded(&model, image, 10, &Device::flex(), 7)?;
        let mut dev = Engine::new(kernels()?, &setup)?;
        let mut reference = Engine::new(Reference::new(), &setup)?;
        dev.load(&net, None)?;
        reference.load(&net, None)?;
        let per: usize = image.iter().product();
        let mut loss = 0.0f64;
        for step in 0..4 {
            let x: Vec<f32> =
                (0..rows * per).map(|i| ((i * 7 + step * 13) as f32 * 0.37).sin()).collect();
            let labels: Vec<u32> = (0..rows).map(|i| ((i + step) % 10) as u32).collect();
            if step == 3 {
                let (h, z) = dev.infer(&x, rows)?;
                let (hr, zr) = reference.infer(&x, rows)?;
                let outputs = relative(&h, &hr).max(relative(&z, &zr));
                let (a, _) = dev.store(net.clone())?;
                let (b, _) = reference.store(net.clone())?;
                let parameters = relative(&flat(&a), &flat(&b));
                out.push(Difference { name: name.clone(), loss, parameters, outputs });
                break;
            }
            dev.step(&x, &labels, 0.05)?;
            reference.step(&x, &labels, 0.05)?;
            let ((l, _), (lr, _)) = (dev.totals()?, reference.totals()?);
            loss = loss.max((l - lr).abs() / lr.abs().max(1e-12));
        }
    }
    Ok(out)
}

/// [`against_reference`] on `device`'s engine.
///
/// # Errors
/// `cpu` (whose training is not the engine's), a build without CUDA, the device's.
pub fn on_device(device: crate::device::Device) -> Result<Vec<Difference>> {
    match device {
        crate::device::Device::Cpu => Err(crate::error::Error::Config(
            "the check compares the GPU engine with the reference kernels: give --device cuda"
                .into(),
        )),
        #[cfg(feature = "cuda")]
        crate::device::Device::Cuda(index) => against_reference(|| super::cuda::kernels(index)),
        #[cfg(not(feature = "cuda"))]
        crate::device::Device::Cuda(index) => Err(crate::device::no_cuda(index)),
    }
}
