//! Gradient descent on the unconstrained-features model on a device: the iteration of
//! seli-core's UFM solver (docs/theory.md §2 and §10) from the same seeded start
//! ([`seli_core::solve::ufm::Params::init`]), for every configuration it takes (loss families,
//! bias, summed or mean loss, every step rule, ridge). With `G = s·m ⊙ (softmax(u) − Y)` (by
//! column; `u = m ⊙ z + ι` the family's logits of `z = WᵀH + b1ᵀ`),
//!
//! ```text
//! W ← W − η (H Gᵀ + λ_W W),   H ← H − η (W G + λ_H H),   b ← b − η G1.
//! ```
//!
//! A [`DeviceIteration`] holds the variables and gradients on the device: [`DeviceUfm`] with
//! burn tensors on any backend, or (CUDA builds) `cuda_ufm::CudaUfm` with cuBLAS, which
//! `seli ufm --device cuda` runs. [`DeviceSolver`] runs either as a [`UfmEngine`]: it copies
//! the variables and the evaluation to the host state only where the run reads them (metrics
//! rows, checkpoints, the end, Ctrl-C, the gradient tolerance), so that the device is not
//! waiting on the host between those.
#![allow(non_snake_case)]

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use burn::tensor::{Bool, DType, Tensor, TensorData};
use faer::Mat;
use seli_core::solve::ufm::{
    Eval, Params, StepRule, UfmConfig, UfmSolver, UfmState, check_finite, stopping_rule,
};
use seli_core::solve::{InterruptFlag, Solver, Termination};
use seli_core::{LossKind, Profile, Scalar};
use seli_run::ufm::{Engines, Reads, UfmEngine, UfmRunConfig};

use crate::device::{Device, burn_device};
use crate::error::{Error, Result};

/// The step size of the next iteration: known on the host (constant steps, step decay), or a
/// 1×1 tensor computed on the device from the evaluation (normalized rules).
enum Eta {
    Host(f64),
    Device(Box<Tensor<2>>),
}

/// Positions in the device evaluation vector (both device iterations).
const OBJECTIVE: usize = 0;
const LOSS: usize = 1;
const CORRECT: usize = 2;
const MIN_MARGIN: usize = 3;
pub(crate) const GRAD_NORM: usize = 4;
pub(crate) const H_NORM_SQ: usize = 5;

/// The evaluation held in a device evaluation vector read back.
pub(crate) fn eval_at(v: &[f64]) -> Eval {
    Eval {
        objective: v[OBJECTIVE],
        loss: v[LOSS],
        correct: v[CORRECT] as u64,
        min_margin: v[MIN_MARGIN],
        grad_norm: v[GRAD_NORM],
        h_norm_sq: v[H_NORM_SQ],
    }
}

/// A UFM iteration whose variables live on a device: burn's tensors ([`DeviceUfm`], any
/// backend) or, in CUDA builds, cuBLAS products and our own kernels (`cuda_ufm::CudaUfm`).
/// [`DeviceSolver`] runs either as the engine of a `seli ufm` run; both start from seli-core's
/// seeded start and take the same iteration.
pub trait DeviceIteration: Sized {
    /// Fails when `device` cannot run this iteration (what is missing, named), before anything
    /// is placed there.
    ///
    /// # Errors
    /// The device cannot be used.
    fn check_device(device: Device) -> Result<()>;

    /// `cfg` on `profile` at `params` after `iter` iterations, in f64 on the device when
    /// `f64` (else f32), with the gradients (and the evaluation) at that point computed: the
    /// configuration and the shapes are checked here, then [`Self::place`] puts it on the device.
    ///
    /// # Errors
    /// An invalid configuration, shapes that do not match it, or a device that cannot be used.
    fn at(
        profile: &Profile,
        cfg: &UfmConfig,
        device: Device,
        f64: bool,
        params: &Params<f64>,
        iter: u64,
    ) -> Result<Self> {
        cfg.check(profile.k())?;
        check_shapes(params, cfg.d, profile.k(), profile.n() as usize, cfg.bias)?;
        Self::place(profile, cfg, device, f64, params, iter)
    }

    /// [`Self::at`] after its checks: a valid `cfg` and `params` of its shapes.
    ///
    /// # Errors
    /// The device cannot be used.
    fn place(
        profile: &Profile,
        cfg: &UfmConfig,
        device: Device,
        f64: bool,
        params: &Params<f64>,
        iter: u64,
    ) -> Result<Self>;

    /// One gradient-descent iteration, queued on the device (nothing is read back). The
    /// evaluation at the new point is computed when `evaluate` or when the step rule needs it.
    ///
    /// # Errors
    /// The device refused the work.
    fn advance(&mut self, evaluate: bool) -> Result<()>;

    /// Iterations done.
    fn iter(&self) -> u64;

    /// Waits until every queued iteration has been computed.
    ///
    /// # Errors
    /// The device reported a failure.
    fn sync(&self) -> Result<()>;

    /// The gradient norm at the current point, read back (one number).
    ///
    /// # Errors
    /// No evaluation at this point; the device could not hand the value back.
    fn grad_norm(&self) -> Result<f64>;

    /// The variables, the evaluation and the next step at the current point, copied to the
    /// host in f64.
    ///
    /// # Errors
    /// No evaluation at this point; the device could not hand the values back.
    fn host_state(&self) -> Result<HostState>;

    /// The seeded start of `cfg` on `profile` (samples sorted by class, as seli-core orders
    /// them) on `device`.
    ///
    /// # Errors
    /// As [`Self::at`].
    fn new(profile: &Profile, cfg: &UfmConfig, device: Device, f64: bool) -> Result<Self> {
        let (k, n) = (profile.k(), profile.n() as usize);
        let p = Params::<f64>::init(cfg.d, k, n, cfg.init_scale, cfg.seed, cfg.bias);
        Self::at(profile, cfg, device, f64, &p, 0)
    }

    /// The host state at the current point in `T` (see [`HostState::into_state`]).
    ///
    /// # Errors
    /// As [`Self::host_state`] and [`HostState::into_state`].
    fn state<T: Scalar>(&self) -> Result<UfmState<T>> {
        self.host_state()?.into_state(self.iter())
    }
}

/// A device iteration's point copied to the host: `W` (d×k), `H` (d×n), the bias, the
/// evaluation there and the step the rule gives next (before the zero-gradient rule).
#[derive(Debug, Clone)]
pub struct HostState {
    /// `W`, d×k.
    pub w: Mat<f64>,
    /// `H`, d×n.
    pub h: Mat<f64>,
    /// `b`, when a bias is trained.
    pub b: Option<Vec<f64>>,
    /// The evaluation at this point.
    pub eval: Eval,
    /// The next step size.
    pub step: f64,
}

impl HostState {
    /// seli-core's state after `iter` iterations, in `T`; the step is 0 at an exactly zero
    /// gradient (as seli-core's).
    ///
    /// # Errors
    /// An evaluation or step that is not finite (named with the iteration).
    pub fn into_state<T: Scalar>(self, iter: u64) -> Result<UfmState<T>> {
        let cast = |m: Mat<f64>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| T::from_f64(m[(i, j)]));
        check_finite(iter, &self.eval)?;
        let step = if self.eval.grad_norm == 0.0 { 0.0 } else { self.step };
        if !(step.is_finite() && step >= 0.0) {
            return Err(
                seli_core::Error::Diverged { iter, quantity: "step size", value: step }.into()
            );
        }
        let b = self.b.map(|b| b.into_iter().map(T::from_f64).collect());
        Ok(UfmState {
            params: Params { W: cast(self.w), H: cast(self.h), b },
            iter,
            eval: self.eval,
            step,
        })
    }
}

/// The UFM variables, their gradients and the labels on a device.
pub struct DeviceUfm {
    w: Tensor<2>,
    h: Tensor<2>,
    /// k×1, when a bias is trained.
    b: Option<Tensor<2>>,
    grad_w: Tensor<2>,
    grad_h: Tensor<2>,
    grad_b: Option<Tensor<2>>,
    /// One-hot labels, k×n.
    y: Tensor<2>,
    /// `s·Y`.
    y_scaled: Tensor<2>,
    /// The same as a mask.
    y_mask: Tensor<2, Bool>,
    /// `m` of the family's logits `u = m ⊙ z + ι`: k×1 (`Δ_c`: cdt, vs) or 1×n (`Δ_{y_i}`:
    /// ldt); `None` when every `Δ` is 1.
    m: Option<Tensor<2>>,
    /// `ι`, k×1; `None` when it is 0.
    iota: Option<Tensor<2>>,
    /// The evaluation at the current point (objective, loss, correct, min margin, gradient
    /// norm, ‖H‖² under ridge on H), when the last pass computed it.
    eval: Option<Tensor<1>>,
    eta: Eta,
    cfg: UfmConfig,
    /// `s`: 1 (summed loss) or 1/n (mean).
    scale: f64,
    iter: u64,
    device: Device,
}

impl DeviceIteration for DeviceUfm {
    fn check_device(device: Device) -> Result<()> {
        burn_device(device).map(drop)
    }

    fn place(
        profile: &Profile,
        cfg: &UfmConfig,
        device: Device,
        f64: bool,
        params: &Params<f64>,
        iter: u64,
    ) -> Result<Self> {
        let (d, k, n) = (cfg.d, profile.k(), profile.n() as usize);
        let dev = burn_device(device)?;
        let dtype = if f64 { DType::F64 } else { DType::F32 };
        let upload = |r: usize, c: usize, v: Vec<f64>| {
            Tensor::<2>::from_data(TensorData::new(v, [r, c]), (&dev, dtype))
        };
        let mat = |m: &Mat<f64>| {
            let (r, c) = (m.nrows(), m.ncols());
            upload(r, c, (0..r).flat_map(|i| (0..c).map(move |j| m[(i, j)])).collect())
        };
        let labels = profile.sorted_labels();
        let mut onehot = vec![0.0; k * n];
        for (i, &c) in labels.iter().enumerate() {
            onehot[c as usize * n + i] = 1.0;
        }
        let y = upload(k, n, onehot);
        let Family { m, iota, scale } = Family::of(profile, cfg)?;
        let m = m.map(|m| match m {
            Factor::Sample(v) => upload(1, n, v),
            Factor::Class(v) => upload(k, 1, v),
        });
        let iota = iota.map(|v| upload(k, 1, v));
        let b = params.b.as_ref().map(|b| upload(k, 1, b.clone()));
        let zeros = |r: usize, c: usize| Tensor::<2>::zeros([r, c], (&dev, dtype));
        let mut ufm = DeviceUfm {
            w: mat(&params.W),
            h: mat(&params.H),
            grad_b: b.as_ref().map(|_| zeros(k, 1)),
            b,
            grad_w: zeros(d, k),
            grad_h: zeros(d, n),
            y_mask: y.clone().equal_elem(1.0),
            y_scaled: if scale == 1.0 { y.clone() } else { y.clone().mul_scalar(scale) },
            y,
            m,
            iota,
            eval: None,
            eta: Eta::Host(0.0),
            cfg: cfg.clone(),
            scale,
            iter,
            device,
        };
        ufm.pass(true);
        Ok(ufm)
    }

    fn advance(&mut self, evaluate: bool) -> Result<()> {
        let eta = std::mem::replace(&mut self.eta, Eta::Host(0.0));
        let step = |x: Tensor<2>, g: Tensor<2>| match &eta {
            Eta::Host(e) => x - g.mul_scalar(*e),
            Eta::Device(e) => x - g * (**e).clone(),
        };
        self.w = step(self.w.clone(), self.grad_w.clone());
        self.h = step(self.h.clone(), self.grad_h.clone());
        if let (Some(b), Some(g)) = (self.b.take(), self.grad_b.clone()) {
            self.b = Some(step(b, g));
        }
        self.iter += 1;
        let evaluate = evaluate || self.step_needs_eval();
        self.pass(evaluate);
        Ok(())
    }

    fn iter(&self) -> u64 {
        self.iter
    }

    /// Reads one number back (burn has no other wait).
    fn sync(&self) -> Result<()> {
        self.to_host(self.w.clone().sum() + self.h.clone().sum()).map(drop)
    }

    fn grad_norm(&self) -> Result<f64> {
        let e = self.eval.as_ref().ok_or_else(|| {
            Error::Config(
                "the last pass computed no evaluation to read the gradient norm of".into(),
            )
        })?;
        Ok(self.to_host(e.clone().narrow(0, GRAD_NORM, 1))?[0])
    }

    fn host_state(&self) -> Result<HostState> {
        let b = match &self.b {
            Some(b) => Some(self.to_host(b.clone())?),
            None => None,
        };
        let e = self.eval.as_ref().ok_or_else(|| {
            Error::Config("the last pass computed no evaluation to copy to the host".into())
        })?;
        let eval = eval_at(&self.to_host(e.clone())?);
        let step = match &self.eta {
            Eta::Host(e) => *e,
            Eta::Device(t) => self.to_host((**t).clone())?[0],
        };
        Ok(HostState { w: self.download(&self.w)?, h: self.download(&self.h)?, b, eval, step })
    }
}

impl DeviceUfm {
    /// Whether the step rule needs the evaluation at every iteration.
    fn step_needs_eval(&self) -> bool {
        matches!(self.cfg.step_rule, StepRule::NormalizedGrad | StepRule::NormalizedLoss)
    }

    /// Gradients (and, when `evaluate`, the evaluation) at the current point, and the step
    /// that follows from them.
    fn pass(&mut self, evaluate: bool) {
        let [k, n] = self.y.shape().dims();
        let s = self.scale;
        let mut z = self.w.clone().transpose().matmul(self.h.clone());
        if let Some(b) = &self.b {
            z = z + b.clone();
        }
        let mut u = z.clone();
        if let Some(m) = &self.m {
            u = u * m.clone();
        }
        if let Some(iota) = &self.iota {
            u = u + iota.clone();
        }
        let max = u.clone().max_dim(0);
        let e = (u.clone() - max.clone()).exp();
        let is_max = u.clone().equal(max.clone().expand([k, n]));
        // Σ_{c≠argmax} e^{u_c − max}, formed without subtracting from the maximum's 1 (every
        // maximum but one counts 1), so that it stays accurate when it is far below ε.
        let ties = e.zeros_like().mask_fill(is_max.clone(), 1.0).sum_dim(0);
        let rest = e.clone().mask_fill(is_max.clone(), 0.0).sum_dim(0) + ties.sub_scalar(1.0);
        let inv = rest.clone().add_scalar(1.0).recip().mul_scalar(s);
        // s·(p − Y); where the label is the maximum, p_y − 1 = −rest/(1 + rest) exactly.
        let at_max = (rest.clone().neg() * inv.clone()).expand([k, n]);
        let mut g = (e * inv - self.y_scaled.clone())
            .mask_where(self.y_mask.clone().bool_and(is_max), at_max);
        if let Some(m) = &self.m {
            g = g * m.clone();
        }
        let (lw, lh) = (self.cfg.lambda_w, self.cfg.lambda_h);
        let mut grad_w = self.h.clone().matmul(g.clone().transpose());
        let mut grad_h = self.w.clone().matmul(g.clone());
        if lw != 0.0 {
            grad_w = grad_w + self.w.clone().mul_scalar(lw);
        }
        if lh != 0.0 {
            grad_h = grad_h + self.h.clone().mul_scalar(lh);
        }
        (self.grad_w, self.grad_h) = (grad_w, grad_h);
        if self.b.is_some() {
            self.grad_b = Some(g.sum_dim(1));
        }
        self.eval = None;
        if evaluate {
            let loss = (max - (u * self.y.clone()).sum_dim(0) + rest.log1p()).sum().mul_scalar(s);
            let zy = (z.clone() * self.y.clone()).sum_dim(0);
            let margin = zy - z.mask_fill(self.y_mask.clone(), f64::NEG_INFINITY).max_dim(0);
            let correct =
                margin.zeros_like().mask_fill(margin.clone().greater_elem(0.0), 1.0).sum();
            let h_sq = self.h.clone().square().sum();
            let mut objective = loss.clone();
            if lw != 0.0 {
                objective = objective + self.w.clone().square().sum().mul_scalar(0.5 * lw);
            }
            if lh != 0.0 {
                objective = objective + h_sq.clone().mul_scalar(0.5 * lh);
            }
            let mut grad_sq =
                self.grad_w.clone().square().sum() + self.grad_h.clone().square().sum();
            if let Some(gb) = &self.grad_b {
                grad_sq = grad_sq + gb.clone().square().sum();
            }
            let grad_norm = grad_sq.sqrt();
            let h_norm_sq = if lh != 0.0 { h_sq } else { h_sq.mul_scalar(0.0) };
            let parts = [objective, loss, correct, margin.min(), grad_norm, h_norm_sq];
            // The normalized rules' step: lr over the gradient norm or the objective, 0 at an
            // exactly zero gradient (as seli-core's).
            let lr = self.cfg.lr;
            self.eta = match self.cfg.step_rule {
                StepRule::NormalizedGrad | StepRule::NormalizedLoss => {
                    let gn = parts[GRAD_NORM].clone().reshape([1, 1]);
                    let by = match self.cfg.step_rule {
                        StepRule::NormalizedGrad => gn.clone(),
                        _ => parts[OBJECTIVE].clone().reshape([1, 1]),
                    };
                    Eta::Device(Box::new(
                        by.recip().mul_scalar(lr).mask_fill(gn.equal_elem(0.0), 0.0),
                    ))
                }
                _ => Eta::Host(self.cfg.step_rule.step(lr, self.iter, 0.0, 0.0)),
            };
            self.eval = Some(Tensor::cat(parts.to_vec(), 0));
        } else {
            self.eta = Eta::Host(self.cfg.step_rule.step(self.cfg.lr, self.iter, 0.0, 0.0));
        }
    }

    fn download(&self, t: &Tensor<2>) -> Result<Mat<f64>> {
        let [r, c] = t.shape().dims();
        let v = self.to_host(t.clone())?;
        Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
    }

    /// A tensor's entries on the host in f64, row-major.
    fn to_host<const D: usize>(&self, t: Tensor<D>) -> Result<Vec<f64>> {
        t.into_data().convert::<f64>().try_to_vec::<f64>().map_err(|e| {
            Error::Device(format!("device {}: reading the UFM back: {e:?}", self.device))
        })
    }
}

/// The factors of the family's logits `u = m ⊙ z + ι` and of the loss, on the host.
pub(crate) struct Family {
    /// `m`; `None` when every `Δ` is 1.
    pub m: Option<Factor>,
    /// `ι` (k); `None` when it is 0.
    pub iota: Option<Vec<f64>>,
    /// `s`: 1 (summed loss) or 1/n (mean).
    pub scale: f64,
}

/// `m` by class (`Δ_c`: cdt, vs) or by sample (`Δ_{y_i}`: ldt; samples sorted by class).
pub(crate) enum Factor {
    Class(Vec<f64>),
    Sample(Vec<f64>),
}

impl Family {
    pub(crate) fn of(profile: &Profile, cfg: &UfmConfig) -> Result<Self> {
        let loss = cfg.loss()?;
        let (delta, iota) = (loss.delta(profile), loss.iota(profile));
        let m = if delta.iter().all(|&v| v == 1.0) {
            None
        } else if loss.kind == LossKind::Ldt {
            Some(Factor::Sample(
                profile.sorted_labels().iter().map(|&c| delta[c as usize]).collect(),
            ))
        } else {
            Some(Factor::Class(delta))
        };
        let scale = match cfg.reduction {
            seli_core::solve::ufm::Reduction::Sum => 1.0,
            seli_core::solve::ufm::Reduction::Mean => 1.0 / profile.n() as f64,
        };
        Ok(Family { m, iota: iota.iter().any(|&v| v != 0.0).then_some(iota), scale })
    }
}

fn check_shapes(p: &Params<f64>, d: usize, k: usize, n: usize, bias: bool) -> Result<()> {
    let bad = |what: &str, got: String, want: String| {
        Err(Error::Config(format!("{what} is {got}, the configuration needs {want}")))
    };
    if (p.W.nrows(), p.W.ncols()) != (d, k) {
        return bad("W", format!("{}x{}", p.W.nrows(), p.W.ncols()), format!("{d}x{k}"));
    }
    if (p.H.nrows(), p.H.ncols()) != (d, n) {
        return bad("H", format!("{}x{}", p.H.nrows(), p.H.ncols()), format!("{d}x{n}"));
    }
    match (&p.b, bias) {
        (Some(b), true) if b.len() == k => Ok(()),
        (None, false) => Ok(()),
        (b, _) => bad(
            "the bias",
            b.as_ref().map_or("absent".into(), |b| format!("of length {}", b.len())),
            if bias { format!("length {k}") } else { "none".into() },
        ),
    }
}

/// A [`DeviceIteration`] as the engine of a `seli ufm` run, with host state in `T`: it reads
/// the device's state back only where the run needs it.
pub struct DeviceSolver<T, U = DeviceUfm> {
    ufm: Option<U>,
    profile: Profile,
    cfg: UfmConfig,
    device: Device,
    f64: bool,
    reads: Option<Reads>,
    /// Whether the host state equals the device's.
    current: bool,
    _t: PhantomData<T>,
}

fn core_err(e: Error) -> seli_core::Error {
    match e {
        Error::Math(e) => e,
        other => seli_core::Error::Observer(other.to_string()),
    }
}

impl<T: Scalar, U: DeviceIteration> DeviceSolver<T, U> {
    /// The engine of `cfg` on `device`; the device is checked here, the variables are placed
    /// there by [`UfmEngine::init_state`] or [`UfmEngine::state_at`].
    ///
    /// # Errors
    /// An invalid configuration; a device that cannot be used (what is missing, named).
    pub fn new(cfg: &UfmConfig, profile: &Profile, device: Device) -> Result<Self> {
        cfg.check(profile.k())?;
        U::check_device(device)?;
        Ok(DeviceSolver {
            ufm: None,
            profile: profile.clone(),
            cfg: cfg.clone(),
            device,
            f64: T::NAME == "f64",
            reads: None,
            current: true,
            _t: PhantomData,
        })
    }

    fn placed(&mut self, ufm: U) -> seli_core::Result<UfmState<T>> {
        let state = ufm.state().map_err(core_err)?;
        self.ufm = Some(ufm);
        self.current = true;
        Ok(state)
    }
}

impl<T: Scalar, U: DeviceIteration> Solver for DeviceSolver<T, U> {
    type State = UfmState<T>;

    fn next_iter(&mut self, state: &mut UfmState<T>) -> seli_core::Result<()> {
        let ufm = self.ufm.as_mut().ok_or_else(|| {
            seli_core::Error::Observer("the device UFM was not placed (init_state first)".into())
        })?;
        let t = state.iter + 1;
        let mut read =
            self.reads.as_ref().is_none_or(|r| r.at(t) || r.interrupt.load(Ordering::Relaxed));
        ufm.advance(read || self.cfg.grad_tol.is_some()).map_err(core_err)?;
        state.iter = t;
        if let (false, Some(tol)) = (read, self.cfg.grad_tol) {
            // The tolerance is checked at every iteration (one number read back); a NaN reads
            // the state too, so that the divergence is reported where it appeared.
            read = ufm.grad_norm().map_err(core_err)?.partial_cmp(&tol).is_none_or(|o| o.is_le());
        }
        self.current = read;
        if read {
            *state = ufm.state().map_err(core_err)?;
        }
        Ok(())
    }

    fn terminate(&self, state: &UfmState<T>) -> Option<Termination> {
        if !self.current {
            return None;
        }
        if let Some(r) = &self.reads
            && state.iter < r.max_iters
            && r.interrupt.load(Ordering::Relaxed)
        {
            return Some(Termination::Interrupted);
        }
        stopping_rule::<T>(&self.cfg, &state.eval)
    }
}

impl<T: Scalar, U: DeviceIteration + 'static> UfmEngine<T> for DeviceSolver<T, U> {
    fn init_state(&mut self) -> seli_core::Result<UfmState<T>> {
        let ufm = U::new(&self.profile, &self.cfg, self.device, self.f64).map_err(core_err)?;
        self.placed(ufm)
    }

    fn state_at(&mut self, params: Params<T>, iter: u64) -> seli_core::Result<UfmState<T>> {
        let cast = |m: &Mat<T>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].to_f64());
        let p = Params {
            W: cast(&params.W),
            H: cast(&params.H),
            b: params.b.map(|b| b.iter().map(|v| v.to_f64()).collect()),
        };
        let ufm =
            U::at(&self.profile, &self.cfg, self.device, self.f64, &p, iter).map_err(core_err)?;
        self.placed(ufm)
    }

    fn plan(&mut self, reads: Reads) -> Option<InterruptFlag> {
        self.reads = Some(reads);
        None
    }
}

/// Fails when `seli ufm` cannot run on `device` (what is missing, named): on the CPU it always
/// can; on `cuda:N` a CUDA build needs the driver, the GPU, NVRTC and cuBLAS.
///
/// # Errors
/// [`Error::Device`] naming what is missing and how to provide it.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => crate::cuda_ufm::CudaUfm::check_device(device),
        _ => DeviceUfm::check_device(device),
    }
}

/// The engines of `seli ufm`: seli-core's solver on the CPU; on an NVIDIA GPU (CUDA builds)
/// [`DeviceSolver`] over `cuda_ufm::CudaUfm` (cuBLAS products).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyDevice {
    /// Run burn's iteration ([`DeviceUfm`]) on the CPU (burn's flex backend: slower than
    /// seli-core's solver; the tests use it to check the device run without a GPU).
    pub burn_on_cpu: bool,
}

impl Engines for AnyDevice {
    fn ufm<T: Scalar>(
        &self,
        cfg: &UfmRunConfig,
        profile: &Profile,
    ) -> seli_run::Result<Box<dyn UfmEngine<T>>> {
        let solver = cfg.solver_config();
        if cfg.device == Device::Cpu && !self.burn_on_cpu {
            return Ok(Box::new(UfmSolver::<T>::new(solver, profile, cfg.threads)?));
        }
        let engine: Result<Box<dyn UfmEngine<T>>> = match cfg.device {
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                DeviceSolver::<T, crate::cuda_ufm::CudaUfm>::new(&solver, profile, cfg.device)
                    .map(|s| Box::new(s) as _)
            }
            _ => DeviceSolver::<T, DeviceUfm>::new(&solver, profile, cfg.device)
                .map(|s| Box::new(s) as _),
        };
        engine.map_err(|e| match e {
            Error::Math(e) => e.into(),
            e => seli_run::Error::Invalid(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_core::solve::ufm::Reduction;

    fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        (a - b).norm_l2() / b.norm_l2()
    }

    /// The burn iteration on the CPU backend retraces seli-core's solver: same start, same
    /// iterates, evaluations and steps (f64, to rounding), for every loss family, with and
    /// without bias and ridge, summed and mean, under every step rule.
    #[test]
    fn the_device_iteration_is_seli_cores() {
        let p = Profile::step(4, 10.0, 0.5, 3).unwrap();
        let base = UfmConfig { d: 6, lr: 0.05, ..UfmConfig::default() };
        let cases = [
            UfmConfig { ..base.clone() },
            UfmConfig { lambda_w: 5e-3, lambda_h: 1e-2, ..base.clone() },
            UfmConfig { step_rule: StepRule::NormalizedGrad, lr: 0.1, ..base.clone() },
            UfmConfig { step_rule: StepRule::NormalizedLoss, lr: 0.1, ..base.clone() },
            UfmConfig {
                step_rule: StepRule::parse("step:0.5@10,25").unwrap(),
                reduction: Reduction::Mean,
                lr: 2.0,
                ..base.clone()
            },
            UfmConfig { loss: LossKind::Cdt, gamma: 0.5, ..base.clone() },
            UfmConfig { loss: LossKind::Ldt, gamma: 0.5, lambda_h: 1e-3, ..base.clone() },
            UfmConfig { loss: LossKind::La, tau: 1.0, bias: true, ..base.clone() },
            UfmConfig {
                loss: LossKind::Vs,
                gamma: 0.3,
                tau: 0.5,
                bias: true,
                step_rule: StepRule::NormalizedGrad,
                lr: 0.1,
                ..base.clone()
            },
        ];
        for cfg in cases {
            let mut dev = DeviceUfm::new(&p, &cfg, Device::Cpu, true).unwrap();
            let mut core = UfmSolver::<f64>::new(cfg.clone(), &p, 1).unwrap();
            let mut state = core.init_state().unwrap();
            for _ in 0..40 {
                dev.advance(false).unwrap();
                core.next_iter(&mut state).unwrap();
            }
            dev.pass(true);
            let got: UfmState<f64> = dev.state().unwrap();
            let want = &state;
            let name = format!("{cfg:?}");
            assert_eq!(got.iter, want.iter, "{name}");
            assert!(rel(&got.params.W, &want.params.W) < 1e-11, "W: {name}");
            assert!(rel(&got.params.H, &want.params.H) < 1e-11, "H: {name}");
            if let (Some(a), Some(b)) = (&got.params.b, &want.params.b) {
                let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
                assert!(d < 1e-10, "b: {name}");
            }
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
            let (g, w) = (&got.eval, &want.eval);
            for (what, a, b) in [
                ("objective", g.objective, w.objective),
                ("loss", g.loss, w.loss),
                ("min_margin", g.min_margin, w.min_margin),
                ("grad_norm", g.grad_norm, w.grad_norm),
                ("h_norm_sq", g.h_norm_sq, w.h_norm_sq),
                ("step", got.step, want.step),
            ] {
                assert!(close(a, b), "{what}: {a} vs {b} in {name}");
            }
            assert_eq!(g.correct, w.correct, "{name}");
            // It moved: 40 steps are not the start.
            let start = Params::<f64>::init(6, 4, p.n() as usize, cfg.init_scale, cfg.seed, false);
            assert!(rel(&got.params.W, &start.W) > 1e-2, "{name}");
        }
    }

    mod runs {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;

        use seli_io::record::ProfileRecord;
        use seli_run::ufm::{UfmDir, UfmParams, execute_with};
        use seli_run::watch::{Quiet, Watch};

        use super::*;

        fn params() -> UfmParams {
            let p = Profile::step(4, 10.0, 0.5, 3).unwrap();
            let mut u = UfmParams::new(ProfileRecord::new(&p, None));
            u.d = 6;
            u.iters = 60;
            u.lr = 0.1;
            u.checkpoint_every = 25;
            u.loss = LossKind::Cdt;
            u.gamma = 0.5;
            u
        }

        fn flag() -> InterruptFlag {
            Arc::new(AtomicBool::new(false))
        }

        fn rows(dir: &UfmDir) -> Vec<Vec<Option<f64>>> {
            seli_io::csvlog::read_csv(&dir.metrics()).unwrap().1
        }

        fn run(
            cfg: &UfmRunConfig,
            dir: &UfmDir,
            burn: bool,
            resume: bool,
            watch: &mut dyn Watch,
            interrupt: InterruptFlag,
        ) -> seli_run::ufm::UfmOutcome {
            if !resume {
                dir.start(cfg, true).unwrap();
            }
            let engines = AnyDevice { burn_on_cpu: burn };
            execute_with(&engines, cfg, Some(dir), resume, watch, interrupt).unwrap()
        }

        fn checkpoint_iter(cfg: &UfmRunConfig, dir: &UfmDir) -> u64 {
            let n = cfg.profile.to_profile().unwrap().n() as usize;
            let path = dir.checkpoint();
            seli_io::checkpoint::load_checkpoint::<f64>(&path, cfg.d, 4, n, false).unwrap().1
        }

        fn assert_close(a: &[Vec<Option<f64>>], b: &[Vec<Option<f64>>], tol: f64) {
            assert_eq!(a.len(), b.len());
            for (ra, rb) in a.iter().zip(b) {
                for (x, y) in ra.iter().zip(rb) {
                    match (x, y) {
                        (Some(x), Some(y)) => assert!(
                            (x - y).abs() <= tol * y.abs().max(1e-6),
                            "{x} vs {y} in rows {ra:?} / {rb:?}"
                        ),
                        _ => assert_eq!(x, y),
                    }
                }
            }
        }

        /// The run layer over the device engine writes what it writes over seli-core's
        /// solver: the same rows at the same iterations (recorded log-spaced and at the end,
        /// with checkpoints off the schedule), the same ending.
        #[test]
        fn a_device_run_records_what_the_cpu_run_records() {
            let cfg = params().check().unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (UfmDir(tmp.path().join("cpu")), UfmDir(tmp.path().join("burn")));
            let ca = run(&cfg, &a, false, false, &mut Quiet, flag());
            let cb = run(&cfg, &b, true, false, &mut Quiet, flag());
            assert_eq!(ca.summary.termination, "max-iters");
            assert_eq!(cb.summary.termination, ca.summary.termination);
            assert_eq!(cb.summary.iters_done, 60);
            assert!(rows(&a).len() > 10, "log-spaced rows");
            assert_close(&rows(&b), &rows(&a), 1e-8);
            assert_eq!(checkpoint_iter(&cfg, &b), 60);
        }

        /// Raises the flag once iteration `at` is done.
        struct StopAt(u64, InterruptFlag);
        impl Watch for StopAt {
            fn progress(&mut self, done: u64) -> std::result::Result<(), String> {
                if done == self.0 {
                    self.1.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
        }

        /// Ctrl-C on a device run stops it at the next iteration with the state copied back
        /// (checkpoint and last row at the stop); resuming it gives the uninterrupted run's
        /// log, row for row.
        #[test]
        fn an_interrupted_device_run_resumes_to_the_uninterrupted_one() {
            let cfg = params().check().unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (UfmDir(tmp.path().join("full")), UfmDir(tmp.path().join("stopped")));
            run(&cfg, &a, true, false, &mut Quiet, flag());
            let f = flag();
            let out = run(&cfg, &b, true, false, &mut StopAt(37, f.clone()), f);
            assert_eq!(out.summary.termination, "interrupted");
            assert_eq!(out.summary.iters_done, 38, "the iteration after the flag");
            let last = rows(&b).last().unwrap()[0];
            assert_eq!(last, Some(38.0), "a row at the stop");
            assert_eq!(checkpoint_iter(&cfg, &b), 38);
            // Resumed on the device, and (the other way) on seli-core's CPU solver.
            let c = UfmDir(tmp.path().join("stopped-cpu"));
            std::fs::create_dir_all(&c.0).unwrap();
            for f in ["config.json", "metrics.csv", "checkpoint.safetensors"] {
                std::fs::copy(b.0.join(f), c.0.join(f)).unwrap();
            }
            let done = run(&cfg, &b, true, true, &mut Quiet, flag());
            assert_eq!(done.summary.resumed_from, Some(38));
            assert_close(&rows(&b), &rows(&a), 1e-12);
            run(&cfg, &c, false, true, &mut Quiet, flag());
            assert_close(&rows(&c), &rows(&a), 1e-8);
        }

        /// The gradient tolerance stops a device run where it stops the CPU run.
        #[test]
        fn the_gradient_tolerance_stops_both_at_the_same_iteration() {
            let mut p = params();
            p.loss = LossKind::Ce;
            p.gamma = 0.0;
            p.step_rule = StepRule::Constant;
            p.lambda_w = 0.05;
            p.lambda_h = 0.05;
            p.iters = 5000;
            p.grad_tol = Some(1e-3);
            let cfg = p.check().unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (UfmDir(tmp.path().join("cpu")), UfmDir(tmp.path().join("burn")));
            let ca = run(&cfg, &a, false, false, &mut Quiet, flag());
            let cb = run(&cfg, &b, true, false, &mut Quiet, flag());
            assert_eq!(ca.summary.termination, "converged", "{}", ca.summary.message);
            assert!(ca.summary.iters_done < 5000);
            assert_eq!(cb.summary.termination, "converged");
            assert_eq!(cb.summary.iters_done, ca.summary.iters_done);
            assert_close(&rows(&b), &rows(&a), 1e-8);
        }

        /// `seli ufm`'s device check: the CPU always; cuda:N in a CPU-only build never, with
        /// how to get a CUDA build (in a CUDA build without a GPU, what is missing).
        #[test]
        fn the_ufm_device_check_names_what_is_missing() {
            assert!(check_device(Device::Cpu).is_ok());
            let e = check_device(Device::Cuda(2)).err().map(|e| e.to_string());
            let e = e.expect("no GPU in the tests");
            assert!(e.starts_with("device cuda:2: "), "{e}");
            if !crate::device::CUDA_BUILD {
                assert!(e.contains("scripts/build-cuda.sh"), "{e}");
            }
        }

        /// A device the engines cannot use is refused before anything runs, naming it.
        #[test]
        fn a_missing_device_is_named() {
            let mut p = params();
            p.device = Device::Cuda(3);
            let cfg = p.check().unwrap();
            let prof = cfg.profile.to_profile().unwrap();
            let e = AnyDevice::default().ufm::<f32>(&cfg, &prof).err().unwrap().to_string();
            assert!(e.contains("cuda:3") || e.contains("CUDA"), "{e}");
            let e = seli_run::ufm::CpuEngines.ufm::<f32>(&cfg, &prof).err().unwrap().to_string();
            assert!(e.contains("cuda:3"), "{e}");
        }
    }

    /// The host state both device iterations hand over: the step is 0 at an exactly zero
    /// gradient; a non-finite evaluation or step is a divergence named with the iteration;
    /// `W` (d×k), `H` (d×n) and the bias are cast as they are.
    #[test]
    fn host_states_become_seli_cores_states() {
        let eval = eval_at(&[2.5, 2.0, 7.0, -0.25, 0.5, 0.0]);
        assert_eq!((eval.correct, eval.min_margin, eval.grad_norm), (7, -0.25, 0.5));
        let w = Mat::from_fn(3, 2, |i, j| (i + 10 * j) as f64);
        let h = Mat::from_fn(3, 4, |i, j| (i * j) as f64 - 1.5);
        let host = |eval: Eval, step: f64| HostState {
            w: w.clone(),
            h: h.clone(),
            b: Some(vec![0.5, -0.5]),
            eval,
            step,
        };
        let s: UfmState<f32> = host(eval, 0.125).into_state(9).unwrap();
        assert_eq!((s.iter, s.step, s.eval.objective), (9, 0.125, 2.5));
        assert_eq!((s.params.W[(2, 1)], s.params.H[(2, 3)]), (12.0, 4.5));
        assert_eq!(s.params.b, Some(vec![0.5f32, -0.5]));
        let still = Eval { grad_norm: 0.0, ..eval };
        assert_eq!(host(still, 0.125).into_state::<f64>(3).unwrap().step, 0.0);
        let nan = Eval { objective: f64::NAN, ..eval };
        let e = host(nan, 0.1).into_state::<f64>(4).err().unwrap().to_string();
        assert!(e.contains("objective") && e.contains('4'), "{e}");
        let e = host(eval, f64::INFINITY).into_state::<f64>(5).err().unwrap().to_string();
        assert!(e.contains("step size") && e.contains('5'), "{e}");
    }

    #[test]
    fn mismatched_shapes_and_invalid_configurations_are_refused() {
        let p = Profile::step(4, 10.0, 0.5, 3).unwrap();
        let cfg = UfmConfig { d: 6, bias: true, ..UfmConfig::default() };
        let params = Params::<f64>::init(6, 4, p.n() as usize, 0.1, 0, false);
        let e = DeviceUfm::at(&p, &cfg, Device::Cpu, true, &params, 3).err().unwrap().to_string();
        assert!(e.contains("bias is absent") && e.contains("length 4"), "{e}");
        let cfg = UfmConfig { d: 2, ..UfmConfig::default() };
        assert!(DeviceUfm::new(&p, &cfg, Device::Cpu, true).is_err());
    }
}
