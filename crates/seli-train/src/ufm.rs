//! Gradient descent on the unconstrained-features model with burn tensors, on any device:
//! the same iteration as seli-core's UFM solver (docs/theory.md §2) for plain cross-entropy,
//! summed over samples, constant steps and no bias,
//!
//! ```text
//! G = softmax(WᵀH) − Y (by column),   W ← W − η (H Gᵀ + λ_W W),   H ← H − η (W G + λ_H H),
//! ```
//!
//! from the same seeded start ([`seli_core::solve::ufm::Params::init`]). It is what
//! `seli bench ufm --device` times on a GPU; `seli ufm` itself runs seli-core's solver on the
//! CPU (tracking, checkpoints and the loss families live there).
#![allow(non_snake_case)]

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor, TensorData};
use faer::Mat;
use seli_core::Profile;
use seli_core::solve::ufm::{Params, Reduction, StepRule, UfmConfig};

use crate::device::{Device, burn_device};
use crate::error::{Error, Result};

/// The UFM variables on a device, and the one-hot labels.
pub struct DeviceUfm {
    w: Tensor<2>,
    h: Tensor<2>,
    y: Tensor<2>,
    lr: f64,
    lambda_w: f64,
    lambda_h: f64,
}

impl DeviceUfm {
    /// The start of `cfg` on `profile` (samples sorted by class, as seli-core orders them) on
    /// `device`, in f64 when `f64` (else f32).
    ///
    /// # Errors
    /// A configuration this iteration does not cover (a loss family, a bias, mean reduction,
    /// another step rule), an invalid one, or a device that cannot be used.
    pub fn new(profile: &Profile, cfg: &UfmConfig, device: Device, f64: bool) -> Result<Self> {
        cfg.check(profile.k())?;
        let plain = cfg.loss()?.is_plain()
            && !cfg.bias
            && cfg.reduction == Reduction::Sum
            && cfg.step_rule == StepRule::Constant;
        if !plain {
            return Err(Error::Config(
                "the device UFM covers plain cross-entropy, summed, with constant steps and no \
                 bias"
                    .into(),
            ));
        }
        let dev = burn_device(device)?;
        let dtype = if f64 { DType::F64 } else { DType::F32 };
        let (k, n) = (profile.k(), profile.n() as usize);
        let p = Params::<f64>::init(cfg.d, k, n, cfg.init_scale, cfg.seed, false);
        let upload = |m: &Mat<f64>| {
            let (r, c) = (m.nrows(), m.ncols());
            let v: Vec<f64> = (0..r).flat_map(|i| (0..c).map(move |j| m[(i, j)])).collect();
            Tensor::<2>::from_data(TensorData::new(v, [r, c]), (&dev, dtype))
        };
        let mut onehot = Mat::<f64>::zeros(k, n);
        let mut i = 0;
        for (c, &count) in profile.counts().iter().enumerate() {
            for _ in 0..count as usize {
                onehot[(c, i)] = 1.0;
                i += 1;
            }
        }
        Ok(DeviceUfm {
            w: upload(&p.W),
            h: upload(&p.H),
            y: upload(&onehot),
            lr: cfg.lr,
            lambda_w: cfg.lambda_w,
            lambda_h: cfg.lambda_h,
        })
    }

    /// One gradient step (queued on the device; [`Self::params`] waits for it).
    pub fn step(&mut self) {
        let (w, h) = (self.w.clone(), self.h.clone());
        let g = softmax(w.clone().transpose().matmul(h.clone()), 0) - self.y.clone();
        let mut grad_w = h.clone().matmul(g.clone().transpose());
        let mut grad_h = w.clone().matmul(g);
        if self.lambda_w > 0.0 {
            grad_w = grad_w + w.clone().mul_scalar(self.lambda_w);
        }
        if self.lambda_h > 0.0 {
            grad_h = grad_h + h.clone().mul_scalar(self.lambda_h);
        }
        self.w = w - grad_w.mul_scalar(self.lr);
        self.h = h - grad_h.mul_scalar(self.lr);
    }

    /// Waits until every queued step has been computed (reads one number back).
    ///
    /// # Errors
    /// The device could not hand the value back.
    pub fn sync(&self) -> Result<f64> {
        Ok(to_host(self.w.clone().sum() + self.h.clone().sum())?[0])
    }

    /// `W` (d×k) and `H` (d×n) copied to the host, in f64.
    ///
    /// # Errors
    /// The device could not hand the values back.
    pub fn params(&self) -> Result<(Mat<f64>, Mat<f64>)> {
        let download = |t: &Tensor<2>| -> Result<Mat<f64>> {
            let [r, c] = t.shape().dims();
            let v = to_host(t.clone())?;
            Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
        };
        Ok((download(&self.w)?, download(&self.h)?))
    }
}

/// A tensor's entries on the host in f64, row-major.
fn to_host<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| Error::Device(format!("reading the UFM back: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_core::solve::Solver;
    use seli_core::solve::ufm::UfmSolver;

    /// The burn iteration on the CPU backend retraces seli-core's solver: same start, same
    /// iterates (f64, to rounding), with and without ridge.
    #[test]
    fn the_device_iteration_is_seli_cores() {
        let p = Profile::step(4, 10.0, 0.5, 3).unwrap();
        for (lambda_w, lambda_h) in [(0.0, 0.0), (5e-3, 1e-2)] {
            let cfg = UfmConfig { d: 6, lr: 0.05, lambda_w, lambda_h, ..UfmConfig::default() };
            let mut dev = DeviceUfm::new(&p, &cfg, Device::Cpu, true).unwrap();
            let mut core = UfmSolver::<f64>::new(cfg.clone(), &p, 1).unwrap();
            let mut state = core.init_state().unwrap();
            for _ in 0..40 {
                dev.step();
                core.next_iter(&mut state).unwrap();
            }
            let (W, H) = dev.params().unwrap();
            let rel = |a: &Mat<f64>, b: &Mat<f64>| (a - b).norm_l2() / b.norm_l2();
            assert!(rel(&W, &state.params.W) < 1e-12, "W: {}", rel(&W, &state.params.W));
            assert!(rel(&H, &state.params.H) < 1e-12, "H: {}", rel(&H, &state.params.H));
            // It moved: 40 steps are not the start.
            let start = Params::<f64>::init(6, 4, p.n() as usize, cfg.init_scale, cfg.seed, false);
            assert!(rel(&W, &start.W) > 1e-2);
        }
    }

    #[test]
    fn what_it_does_not_cover_is_refused() {
        let p = Profile::step(4, 10.0, 0.5, 3).unwrap();
        let cfg = UfmConfig { d: 6, bias: true, ..UfmConfig::default() };
        let e = DeviceUfm::new(&p, &cfg, Device::Cpu, true).err().unwrap().to_string();
        assert!(e.contains("no bias"), "{e}");
        let cfg = UfmConfig { d: 2, ..UfmConfig::default() };
        assert!(DeviceUfm::new(&p, &cfg, Device::Cpu, true).is_err());
    }
}
