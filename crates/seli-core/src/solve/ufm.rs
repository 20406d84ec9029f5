//! Full-batch gradient descent on the unconstrained-features model (docs/theory.md §2).
//!
//! Variables: classifiers `W` (d×k), embeddings `H` (d×n), optional bias `b` (k). Logits
//! `Z = WᵀH + b1ᵀ`, cross-entropy `ℓ(z, y) = log Σ_c exp(z_c) − z_y`, objective
//!
//! ```text
//! F(W, H, b) = s · Σ_i ℓ(Wᵀh_i + b, y_i) + (λ_W/2)‖W‖_F² + (λ_H/2)‖H‖_F²
//! ```
//!
//! with `s = 1` (summed loss) or `s = 1/n` (mean loss). The gradients, derived by hand:
//! with `G = s·(softmax(Z) − Y)` (k×n, softmax by column),
//!
//! ```text
//! ∇_W F = H Gᵀ + λ_W W,    ∇_H F = W G + λ_H H,    ∇_b F = G 1.
//! ```
//!
//! One iteration is one parallel pass over column chunks of `H`: each chunk applies the
//! previous step to its columns, computes its logits, softmax, loss, accuracy and margin,
//! its part of `∇_W` (reduced afterwards in a fixed order) and its columns of `∇_H`. The
//! chunk size is a constant, so results do not depend on the number of threads. No
//! allocation happens per iteration.
#![allow(non_snake_case)]

use faer::linalg::matmul::matmul;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{IterState, Solver, Termination};
use crate::error::{Error, Result};
use crate::loss::{Loss, LossKind};
use crate::profile::Profile;
use crate::random::{gaussian_matrix, rng_from_seed};
use crate::scalar::{Scalar, sum_sq};

/// Columns of `H` per work item. Fixed, so that reductions happen in the same order on any
/// number of threads (and a resumed run repeats an uninterrupted one bit for bit).
pub const CHUNK: usize = 128;

/// How the calling thread waits for the workers before blocking: this many checks with a pause
/// instruction between them (tens of microseconds), then as many with a yield of its core
/// (so that a worker waiting for a core, when other programs share them, gets it).
const SPIN_WAIT: u32 = 1024;

/// Whether the loss is summed or averaged over samples. Every λ threshold differs by a
/// factor n between the two (docs/theory.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// `Σ_i ℓ_i`.
    Sum,
    /// `(1/n) Σ_i ℓ_i`.
    Mean,
}

impl Reduction {
    /// `"sum"` or `"mean"`.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        }
    }
}

/// How the step size `η_t` is chosen from the base learning rate `lr`.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRule {
    /// `η_t = lr`.
    Constant,
    /// `η_t = lr · factor^m` where `m` is the number of milestones `<= t`.
    StepDecay {
        /// Multiplier at each milestone, in (0, 1].
        factor: f64,
        /// Iterations at which the step is multiplied, strictly increasing.
        milestones: Vec<u64>,
    },
    /// `η_t = lr / ‖∇F(θ_t)‖_F` (normalized gradient descent).
    NormalizedGrad,
    /// `η_t = lr / F(θ_t)`: on separable data the loss decays like the gradient norm, and
    /// this speeds up directional convergence.
    NormalizedLoss,
}

impl StepRule {
    /// Compact text form, the one `--schedule` parses: `constant`, `step:0.1@1000,2000`,
    /// `norm-grad`, `norm-loss`.
    pub fn spec(&self) -> String {
        match self {
            StepRule::Constant => "constant".into(),
            StepRule::StepDecay { factor, milestones } => {
                let m: Vec<String> = milestones.iter().map(|m| m.to_string()).collect();
                format!("step:{factor}@{}", m.join(","))
            }
            StepRule::NormalizedGrad => "norm-grad".into(),
            StepRule::NormalizedLoss => "norm-loss".into(),
        }
    }

    /// Parses [`StepRule::spec`]'s format.
    ///
    /// # Errors
    /// Unknown names, a malformed factor or milestone list (the bad part is named).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |rule: &'static str| Error::InvalidParameter {
            name: "schedule",
            value: s.into(),
            rule,
        };
        match s.trim() {
            "constant" => Ok(StepRule::Constant),
            "norm-grad" => Ok(StepRule::NormalizedGrad),
            "norm-loss" => Ok(StepRule::NormalizedLoss),
            t => {
                let rest = t.strip_prefix("step:").ok_or(bad(
                    "expected constant, norm-grad, norm-loss or step:FACTOR@ITER1,ITER2,...",
                ))?;
                let (f, ms) =
                    rest.split_once('@').ok_or(bad("step decay needs step:FACTOR@ITER1,..."))?;
                let factor: f64 = f.trim().parse().map_err(|_| bad("FACTOR is not a number"))?;
                let milestones = ms
                    .split(',')
                    .map(|m| m.trim().parse::<u64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad("milestones must be whole iteration numbers"))?;
                let rule = StepRule::StepDecay { factor, milestones };
                rule.check()?;
                Ok(rule)
            }
        }
    }

    fn check(&self) -> Result<()> {
        if let StepRule::StepDecay { factor, milestones } = self {
            if !(factor.is_finite() && *factor > 0.0 && *factor <= 1.0) {
                return Err(Error::InvalidParameter {
                    name: "schedule decay factor",
                    value: factor.to_string(),
                    rule: "must be a number in (0, 1]",
                });
            }
            if milestones.is_empty() || milestones.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::InvalidParameter {
                    name: "schedule milestones",
                    value: format!("{milestones:?}"),
                    rule: "must be a non-empty, strictly increasing list",
                });
            }
        }
        Ok(())
    }

    /// The step size at iteration `t` given the objective and gradient norm there.
    pub fn step(&self, lr: f64, t: u64, objective: f64, grad_norm: f64) -> f64 {
        match self {
            StepRule::Constant => lr,
            StepRule::StepDecay { factor, milestones } => {
                let m = milestones.iter().filter(|&&m| m <= t).count();
                lr * factor.powi(m as i32)
            }
            StepRule::NormalizedGrad => lr / grad_norm,
            StepRule::NormalizedLoss => lr / objective,
        }
    }
}

/// Parameters of a UFM gradient-descent run. Defaults: d = 64, lr = 0.5, constant steps, no
/// ridge, no bias, summed loss, init scale 0.1, seed 0, no gradient tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct UfmConfig {
    /// Embedding dimension (>= k − 1, so that SELI is reachable).
    pub d: usize,
    /// Base learning rate (> 0).
    pub lr: f64,
    /// Step-size rule.
    pub step_rule: StepRule,
    /// Ridge on `W` (>= 0).
    pub lambda_w: f64,
    /// Ridge on `H` (>= 0).
    pub lambda_h: f64,
    /// Train a bias `b` (the paper's model has none).
    pub bias: bool,
    /// Summed or mean loss.
    pub reduction: Reduction,
    /// Standard deviation of the Gaussian initialization of `W` and `H` (> 0).
    pub init_scale: f64,
    /// Seed of the initialization.
    pub seed: u64,
    /// Stop once `‖∇F‖_F <= grad_tol` (None: never).
    pub grad_tol: Option<f64>,
    /// Loss family (docs/theory.md §10); cross-entropy by default.
    pub loss: LossKind,
    /// `γ` of the family's `Δ` (0 for ce and la).
    pub gamma: f64,
    /// `τ` of the family's `ι` (0 for ce, cdt and ldt).
    pub tau: f64,
}

impl Default for UfmConfig {
    fn default() -> Self {
        UfmConfig {
            d: 64,
            lr: 0.5,
            step_rule: StepRule::Constant,
            lambda_w: 0.0,
            lambda_h: 0.0,
            bias: false,
            reduction: Reduction::Sum,
            init_scale: 0.1,
            seed: 0,
            grad_tol: None,
            loss: LossKind::Ce,
            gamma: 0.0,
            tau: 0.0,
        }
    }
}

fn check_positive(name: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::InvalidParameter {
            name,
            value: v.to_string(),
            rule: "must be a finite number > 0",
        });
    }
    Ok(())
}

fn check_non_negative(name: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::InvalidParameter {
            name,
            value: v.to_string(),
            rule: "must be a finite number >= 0",
        });
    }
    Ok(())
}

impl UfmConfig {
    /// Checks every parameter for a problem with `k` classes.
    ///
    /// # Errors
    /// `d < k − 1` ([`Error::DimensionTooSmall`]: SELI needs `d >= k − 1`); `lr`,
    /// `init_scale` or `grad_tol` not finite and positive; a negative or non-finite λ; a bad
    /// step-decay schedule.
    pub fn check(&self, k: usize) -> Result<()> {
        if self.d < k - 1 || self.d == 0 {
            return Err(Error::DimensionTooSmall { d: self.d, k });
        }
        check_positive("lr", self.lr)?;
        check_positive("init_scale", self.init_scale)?;
        check_non_negative("lambda_w", self.lambda_w)?;
        check_non_negative("lambda_h", self.lambda_h)?;
        if let Some(t) = self.grad_tol {
            check_positive("grad_tol", t)?;
        }
        self.loss()?;
        self.step_rule.check()
    }

    /// The run's loss (family, γ, τ and the bias flag), checked.
    ///
    /// # Errors
    /// γ or τ not finite, or given to a family that does not use it.
    pub fn loss(&self) -> Result<Loss> {
        Loss::new(self.loss, self.gamma, self.tau, self.bias)
    }
}

/// The UFM variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Params<T> {
    /// Classifiers, d×k.
    pub W: Mat<T>,
    /// Embeddings, d×n (column i is sample i; samples sorted by class).
    pub H: Mat<T>,
    /// Bias (k entries), when trained.
    pub b: Option<Vec<T>>,
}

impl<T: Scalar> Params<T> {
    /// Gaussian initialization with standard deviation `scale`: `W` first (column by column),
    /// then `H`, from the seeded generator; `b = 0`.
    pub fn init(d: usize, k: usize, n: usize, scale: f64, seed: u64, bias: bool) -> Self {
        let mut rng = rng_from_seed(seed);
        let W = gaussian_matrix(d, k, scale, &mut rng);
        let H = gaussian_matrix(d, n, scale, &mut rng);
        Params {
            W: Mat::from_fn(d, k, |i, j| T::from_f64(W[(i, j)])),
            H: Mat::from_fn(d, n, |i, j| T::from_f64(H[(i, j)])),
            b: bias.then(|| vec![T::from_f64(0.0); k]),
        }
    }
}

/// The objective and first-order quantities at one point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Eval {
    /// `F`, with ridge terms.
    pub objective: f64,
    /// The data term `s·Σ ℓ_i`.
    pub loss: f64,
    /// Samples whose true logit is strictly the largest.
    pub correct: u64,
    /// `min_i (z_{y_i} − max_{c≠y_i} z_c)`.
    pub min_margin: f64,
    /// `‖∇F‖_F` over all variables.
    pub grad_norm: f64,
    /// `‖H‖_F²` when `λ_H > 0` (the objective needs it); 0 otherwise, to save a pass.
    pub h_norm_sq: f64,
}

/// The state of a UFM run: the iterate, its evaluation, and the step that comes next.
#[derive(Debug, Clone)]
pub struct UfmState<T> {
    /// Current variables `θ_t`.
    pub params: Params<T>,
    /// Iterations done.
    pub iter: u64,
    /// Evaluation at `θ_t`.
    pub eval: Eval,
    /// Step size `η_t` that the next iteration applies.
    pub step: f64,
}

impl<T> IterState for UfmState<T> {
    fn iter(&self) -> u64 {
        self.iter
    }
}

/// Per-chunk partial results, reduced in chunk order.
struct ChunkAcc<T> {
    grad_w: Mat<T>,
    /// Per column of the chunk: the position of the largest logit, the largest logit, and
    /// scratch (the largest logit of another class, then Σ of the other exponentials).
    amax: Vec<u32>,
    max: Vec<T>,
    aux: Vec<T>,
    grad_b: Vec<f64>,
    loss: f64,
    correct: u64,
    min_margin: f64,
    h_norm_sq: f64,
    grad_h_norm_sq: f64,
}

/// Gradient descent on the UFM: the [`Solver`] for [`UfmState`].
pub struct UfmSolver<T: Scalar> {
    config: UfmConfig,
    labels: Vec<u32>,
    k: usize,
    scale: f64,
    /// `s·(softmax − Y)` at the current point, one contiguous k×cols block per chunk, stored
    /// by class (row-major: a class's entries for the chunk's samples side by side), so that
    /// the softmax's loops run across samples in SIMD lanes and the exponentials over the
    /// whole block in one pass.
    g_buf: Vec<T>,
    /// `∇_H F` at the current point, d×n.
    grad_h: Mat<T>,
    /// `∇_W F`, d×k.
    grad_w: Mat<T>,
    /// `∇_b F` (empty without a bias).
    grad_b: Vec<T>,
    acc: Vec<ChunkAcc<T>>,
    /// The loss family's transform of the logits (None: cross-entropy).
    transform: Option<LossTransform<T>>,
    /// Workers besides the calling thread (at least one, idle when `threads == 1`).
    pool: rayon::ThreadPool,
    threads: usize,
}

fn col<T>(m: MatRef<'_, T>, j: usize) -> &[T] {
    m.try_as_col_major().expect("faer matrices are column-major").col(j).as_slice()
}

fn col_mut<'a, T>(m: &'a mut MatMut<'_, T>, j: usize) -> &'a mut [T] {
    m.rb_mut()
        .try_as_col_major_mut()
        .expect("faer matrices are column-major")
        .col_mut(j)
        .as_slice_mut()
}

fn sum_sq_mat<T: Scalar>(m: MatRef<'_, T>) -> f64 {
    (0..m.ncols()).map(|j| sum_sq(col(m, j))).sum()
}

/// One worker's contiguous run of chunks in a pass.
struct Part<'a, T> {
    h: MatMut<'a, T>,
    g: &'a mut [T],
    gh: MatMut<'a, T>,
    y: &'a [u32],
    acc: &'a mut [ChunkAcc<T>],
}

/// How a loss family turns the model's logits z into the logits its cross-entropy sees:
/// `u_c = m_c z_c + ι_c`, with `m_c = Δ_c` (cdt, vs) or `m_c = Δ_y` for every c (ldt).
struct LossTransform<T> {
    /// `Δ` (k).
    delta: Vec<T>,
    /// Whether a sample's logits all take its own class's `Δ` (ldt).
    per_label: bool,
    /// `ι` (k).
    shift: Vec<T>,
}

impl<T: Scalar> LossTransform<T> {
    /// The transform of `loss` for `profile`; `None` for plain cross-entropy.
    fn of(loss: &Loss, profile: &Profile) -> Option<Self> {
        if loss.kind == LossKind::Ce {
            return None;
        }
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
        Some(LossTransform {
            delta: cast(loss.delta(profile)),
            per_label: loss.kind == LossKind::Ldt,
            shift: cast(loss.iota(profile)),
        })
    }
}

/// What every chunk of a pass shares.
struct PassCtx<'a, T> {
    W: MatRef<'a, T>,
    b: Option<&'a [T]>,
    /// The loss family's transform of the logits (None: cross-entropy).
    tr: Option<&'a LossTransform<T>>,
    /// The pending step on H, if any.
    eta: Option<T>,
    lambda_h: f64,
    scale: f64,
    k: usize,
}

/// The arguments of one chunk's work.
struct ChunkJob<'c, 'a, T> {
    ctx: &'c PassCtx<'a, T>,
    Hc: MatMut<'c, T>,
    g: &'c mut [T],
    gHc: MatMut<'c, T>,
    yc: &'c [u32],
    a: &'c mut ChunkAcc<T>,
}

/// One chunk of a pass, compiled for the widest SIMD the processor has (chosen at run time;
/// the loops are plain IEEE arithmetic in a fixed order, so every path gives the same bits).
fn process_chunk<T: Scalar>(job: ChunkJob<'_, '_, T>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Scalar>(job: ChunkJob<'_, '_, T>) {
            chunk_body(job)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Scalar>(job: ChunkJob<'_, '_, T>) {
            chunk_body(job)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { avx512(job) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(job) };
        }
    }
    chunk_body(job)
}

/// The work of one chunk: pending step on H, logits, softmax, partial ∇_W, columns of ∇_H.
#[inline(always)]
fn chunk_body<T: Scalar>(job: ChunkJob<'_, '_, T>) {
    let ChunkJob { ctx, mut Hc, g, mut gHc, yc, a } = job;
    let (k, cols) = (ctx.k, Hc.ncols());
    let one = T::from_f64(1.0);
    // 1. The pending step on this chunk's embeddings.
    if let Some(eta) = ctx.eta {
        for j in 0..cols {
            let gh = col(gHc.rb(), j);
            for (h, &d) in col_mut(&mut Hc, j).iter_mut().zip(gh) {
                *h -= eta * d;
            }
        }
    }
    // 2. Logits Z = WᵀH (+ b) into the chunk's block of G, then softmax in place.
    let mut Gc = MatMut::from_row_major_slice_mut(g, k, cols);
    matmul(Gc.rb_mut(), Accum::Replace, ctx.W.transpose(), Hc.rb(), one, Par::Seq);
    softmax_block(g, yc, ctx.b, ctx.tr, ctx.scale, a);
    let Gc = MatRef::from_row_major_slice(g, k, cols);
    // 3. This chunk's part of ∇_W = H Gᵀ.
    matmul(a.grad_w.as_mut(), Accum::Replace, Hc.rb(), Gc.transpose(), one, Par::Seq);
    // 4. Its columns of ∇_H = W G + λ_H H, and the squared norms of H and ∇_H.
    matmul(gHc.rb_mut(), Accum::Replace, ctx.W, Gc, one, Par::Seq);
    let lam = T::from_f64(ctx.lambda_h);
    a.h_norm_sq = 0.0;
    a.grad_h_norm_sq = 0.0;
    for j in 0..cols {
        let h = col(Hc.rb(), j);
        let gh = col_mut(&mut gHc, j);
        if ctx.lambda_h != 0.0 {
            for (d, &hv) in gh.iter_mut().zip(h) {
                *d += lam * hv;
            }
        }
        if ctx.lambda_h != 0.0 {
            a.h_norm_sq += sum_sq(h);
        }
        a.grad_h_norm_sq += sum_sq(gh);
    }
}

/// `sqrt(Σ x²)` over matrices and a vector, computed as `m·sqrt(Σ (x/m)²)` with `m` the
/// largest magnitude, so that it does not underflow for tiny gradients.
fn scaled_norm<T: Scalar>(mats: &[MatRef<'_, T>], v: &[T]) -> f64 {
    let all = || {
        mats.iter()
            .flat_map(|m| (0..m.ncols()).flat_map(move |j| col(*m, j).iter()))
            .chain(v.iter())
            .map(|x| x.to_f64().abs())
    };
    let m = all().fold(0.0, f64::max);
    if m == 0.0 {
        return 0.0;
    }
    m * all().map(|x| (x / m) * (x / m)).sum::<f64>().sqrt()
}

/// Softmax cross-entropy on a k×cols block of logits `g` (row-major: class c's logits are
/// `g[c·cols..(c+1)·cols]`), in place: on return `g = s·(softmax − Y)` (with a loss transform
/// `u = m ⊙ z + ι`, the cross-entropy of u and its gradient with respect to z,
/// `m ⊙ s·(softmax(u) − Y)`), and `a` holds the block's loss, correct count, minimum margin
/// (of the model's logits z) and bias-gradient sums.
///
/// Each sample's arithmetic is the same sequence of IEEE operations whatever the layout
/// (classes in order, loss terms in sample order); the loops over classes run across the
/// samples side by side, which vectorizes for any k.
#[inline(always)]
fn softmax_block<T: Scalar>(
    g: &mut [T],
    labels: &[u32],
    b: Option<&[T]>,
    tr: Option<&LossTransform<T>>,
    s: f64,
    a: &mut ChunkAcc<T>,
) {
    let cols = labels.len();
    let s_t = T::from_f64(s);
    let zero = T::from_f64(0.0);
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    a.loss = 0.0;
    a.correct = 0;
    a.min_margin = f64::INFINITY;
    a.grad_b.iter_mut().for_each(|v| *v = 0.0);
    let (amax, max, other) = (&mut a.amax[..cols], &mut a.max[..cols], &mut a.aux[..cols]);
    // Pass 1: bias; the maximum, its first position and the largest logit of another class,
    // by branch-free selects (logits near initialization are random and would defeat the
    // branch predictor).
    if let Some(b) = b {
        for (row, &bc) in g.chunks_exact_mut(cols).zip(b) {
            row.iter_mut().for_each(|z| *z += bc);
        }
    }
    max.fill(neg_inf);
    other.fill(neg_inf);
    for (c, row) in g.chunks_exact(cols).enumerate() {
        let c32 = c as u32;
        for (((m, o), &z), &y) in max.iter_mut().zip(other.iter_mut()).zip(row).zip(labels) {
            *m = if z > *m { z } else { *m };
            *o = if (z > *o) & (c32 != y) { z } else { *o };
        }
    }
    first_max_positions(g, cols, max, amax);
    for (j, (&y, &o)) in labels.iter().zip(other.iter()).enumerate() {
        let margin = (g[y as usize * cols + j] - o).to_f64();
        a.correct += u64::from(margin > 0.0);
        a.min_margin = a.min_margin.min(margin);
    }
    if let Some(t) = tr {
        // The family's logits u = m ⊙ z + ι; the loss and its softmax are over u.
        max.fill(neg_inf);
        for (c, row) in g.chunks_exact_mut(cols).enumerate() {
            let shift = t.shift[c];
            if t.per_label {
                for ((z, m), &y) in row.iter_mut().zip(max.iter_mut()).zip(labels) {
                    *z = t.delta[y as usize] * *z + shift;
                    *m = if *z > *m { *z } else { *m };
                }
            } else {
                let dc = t.delta[c];
                for (z, m) in row.iter_mut().zip(max.iter_mut()) {
                    *z = dc * *z + shift;
                    *m = if *z > *m { *z } else { *m };
                }
            }
        }
        first_max_positions(g, cols, max, amax);
    }
    for (j, (&y, &m)) in labels.iter().zip(max.iter()).enumerate() {
        a.loss += (m - g[y as usize * cols + j]).to_f64();
    }
    for row in g.chunks_exact_mut(cols) {
        for (z, &m) in row.iter_mut().zip(max.iter()) {
            *z -= m;
        }
    }
    // Pass 2: all exponentials of the block at once.
    T::exp_nonpos_in_place(g);
    // Pass 3: log Σ exp(z_c) − max = log1p(Σ_{c≠argmax} e^{z_c − max}), accurate even when
    // the loss is far below machine epsilon; then normalize and subtract Y.
    let rest = other;
    rest.fill(zero);
    for (c, row) in g.chunks_exact(cols).enumerate() {
        let c32 = c as u32;
        for ((r, &e), &am) in rest.iter_mut().zip(row).zip(amax.iter()) {
            *r += if c32 != am { e } else { zero };
        }
    }
    let mut product = 1.0f64;
    let inv = max;
    for (&rest, inv) in rest.iter().zip(inv.iter_mut()) {
        // ln(1 + rest): a short series when rest is small (error below rest⁶/6, relative
        // 1e-21 at the 1e-4 cutoff); otherwise into a running product whose logarithm is
        // taken once per chunk, keeping libm's log out of the per-sample loop.
        let r = rest.to_f64();
        if r < 1e-4 {
            a.loss += r * (1.0 - r * (0.5 - r * (1.0 / 3.0 - r * (0.25 - r * 0.2))));
        } else {
            product *= 1.0 + r;
            if product > 1e250 {
                a.loss += product.ln();
                product = 1.0;
            }
        }
        *inv = s_t / (rest + T::from_f64(1.0));
    }
    for row in g.chunks_exact_mut(cols) {
        for (z, &i) in row.iter_mut().zip(inv.iter()) {
            *z *= i;
        }
    }
    // g_y = s(p_y − 1). When y is the argmax, p_y = 1/(1 + rest) and p_y − 1 must be formed as
    // −rest/(1 + rest): subtracting from 1 would round to 0 once the loss is below machine
    // epsilon, and the gradient would no longer sum to zero over classes.
    for (j, (((&y, &am), &r), &i)) in
        labels.iter().zip(amax.iter()).zip(rest.iter()).zip(inv.iter()).enumerate()
    {
        let gy = &mut g[y as usize * cols + j];
        *gy = if y == am { -(r * i) } else { *gy - s_t };
    }
    if let Some(t) = tr {
        for (c, row) in g.chunks_exact_mut(cols).enumerate() {
            if t.per_label {
                for (z, &y) in row.iter_mut().zip(labels) {
                    *z *= t.delta[y as usize];
                }
            } else {
                let dc = t.delta[c];
                row.iter_mut().for_each(|z| *z *= dc);
            }
        }
    }
    if b.is_some() {
        for (gb, row) in a.grad_b.iter_mut().zip(g.chunks_exact(cols)) {
            for &gc in row {
                *gb += gc.to_f64();
            }
        }
    }
    a.loss = (a.loss + product.ln()) * s;
}

/// `amax[j]` = the first class c with `g[c·cols + j] == max[j]` (0 when none: a NaN maximum).
#[inline(always)]
fn first_max_positions<T: Scalar>(g: &[T], cols: usize, max: &[T], amax: &mut [u32]) {
    amax.fill(0);
    for (c, row) in g.chunks_exact(cols).enumerate().rev() {
        let c32 = c as u32;
        for ((am, &z), &m) in amax.iter_mut().zip(row).zip(max) {
            *am = if z == m { c32 } else { *am };
        }
    }
}

impl<T: Scalar> UfmSolver<T> {
    /// A solver for `profile`'s labels (samples sorted by class), running on `threads`
    /// threads (0: all cores).
    ///
    /// # Errors
    /// An invalid configuration (see [`UfmConfig::check`]); a thread pool that cannot start.
    pub fn new(config: UfmConfig, profile: &Profile, threads: usize) -> Result<Self> {
        let k = profile.k();
        config.check(k)?;
        let labels = profile.sorted_labels();
        let n = labels.len();
        let d = config.d;
        let scale = match config.reduction {
            Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / n as f64,
        };
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.saturating_sub(1).max(1))
            .build()
            .map_err(|e| Error::Observer(format!("cannot start {threads} worker threads: {e}")))?;
        let chunks = n.div_ceil(CHUNK);
        let bias_len = if config.bias { k } else { 0 };
        let transform = LossTransform::of(&config.loss()?, profile);
        let acc = (0..chunks)
            .map(|_| ChunkAcc {
                grad_w: Mat::zeros(d, k),
                amax: vec![0; CHUNK],
                max: vec![T::from_f64(0.0); CHUNK],
                aux: vec![T::from_f64(0.0); CHUNK],
                grad_b: vec![0.0; k],
                loss: 0.0,
                correct: 0,
                min_margin: f64::INFINITY,
                h_norm_sq: 0.0,
                grad_h_norm_sq: 0.0,
            })
            .collect();
        Ok(UfmSolver {
            config,
            labels,
            k,
            scale,
            g_buf: vec![T::from_f64(0.0); k * n],
            grad_h: Mat::zeros(d, n),
            grad_w: Mat::zeros(d, k),
            grad_b: vec![T::from_f64(0.0); bias_len],
            acc,
            transform,
            pool,
            threads,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UfmConfig {
        &self.config
    }

    /// Labels of the samples, in column order of `H`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The initial state: Gaussian init from the configured seed.
    pub fn init_state(&mut self) -> Result<UfmState<T>> {
        let c = &self.config;
        let params = Params::init(c.d, self.k, self.labels.len(), c.init_scale, c.seed, c.bias);
        self.state_at(params, 0)
    }

    /// The state at given variables after `iter` iterations (a resumed run).
    ///
    /// # Errors
    /// Shapes that do not match the configuration; a non-finite evaluation.
    pub fn state_at(&mut self, params: Params<T>, iter: u64) -> Result<UfmState<T>> {
        let (d, k, n) = (self.config.d, self.k, self.labels.len());
        let shape_err =
            |what: &'static str, r: usize, c: usize, er: usize, ec: usize| Error::ShapeMismatch {
                left: what,
                lr: r,
                lc: c,
                right: "the configured shape",
                rr: er,
                rc: ec,
            };
        if params.W.nrows() != d || params.W.ncols() != k {
            return Err(shape_err("W", params.W.nrows(), params.W.ncols(), d, k));
        }
        if params.H.nrows() != d || params.H.ncols() != n {
            return Err(shape_err("H", params.H.nrows(), params.H.ncols(), d, n));
        }
        match (&params.b, self.config.bias) {
            (Some(b), true) if b.len() == k => {}
            (None, false) => {}
            (b, _) => {
                return Err(shape_err(
                    "b",
                    b.as_ref().map_or(0, |b| b.len()),
                    1,
                    if self.config.bias { k } else { 0 },
                    1,
                ));
            }
        }
        let mut params = params;
        let eval = self.pass(&mut params, None);
        check_finite(iter, &eval)?;
        let step = self.next_step(&eval, iter);
        Ok(UfmState { params, iter, eval, step })
    }

    /// Evaluates the objective and gradients at `params`, after first applying a step of size
    /// `eta` along the stored gradients to `H` (the caller updates `W` and `b`).
    fn pass(&mut self, params: &mut Params<T>, eta: Option<f64>) -> Eval {
        let k = self.k;
        let scale = self.scale;
        let lambda_h = self.config.lambda_h;
        let ctx = PassCtx {
            W: params.W.as_ref(),
            b: params.b.as_deref(),
            tr: self.transform.as_ref(),
            eta: eta.map(T::from_f64),
            lambda_h,
            scale,
            k,
        };
        let H = params.H.as_mut();
        let grad_h = self.grad_h.as_mut();
        let labels = &self.labels;
        let g_buf = &mut self.g_buf;
        let acc = &mut self.acc;
        // Static partition: worker w always gets the same contiguous run of chunks, so its
        // slice of H, G and ∇_H stays in its core's cache from one iteration to the next.
        let workers = self.threads.min(acc.len()).max(1);
        let per = acc.len().div_ceil(workers);
        let mut parts = Vec::with_capacity(workers);
        let (mut H, mut g_rest, mut gH, mut y_rest, mut a_rest) =
            (H, &mut g_buf[..], grad_h, &labels[..], &mut acc[..]);
        for _ in 0..workers {
            let chunks = per.min(a_rest.len());
            let cols = (chunks * CHUNK).min(H.ncols());
            let (h0, h1) = H.split_at_col_mut(cols);
            let (g0, g1) = std::mem::take(&mut g_rest).split_at_mut(cols * k);
            let (gh0, gh1) = gH.split_at_col_mut(cols);
            let (y0, y1) = y_rest.split_at(cols);
            let (a0, a1) = std::mem::take(&mut a_rest).split_at_mut(chunks);
            parts.push(std::sync::Mutex::new(Part { h: h0, g: g0, gh: gh0, y: y0, acc: a0 }));
            (H, g_rest, gH, y_rest, a_rest) = (h1, g1, gh1, y1, a1);
        }
        let run = |part: &std::sync::Mutex<_>| {
            let mut guard = part.lock().expect("a worker panicked");
            let Part { h, g, gh, y, acc: a } = &mut *guard;
            let mut col0 = 0;
            for (i, a) in a.iter_mut().enumerate() {
                let cols = CHUNK.min(h.ncols() - col0);
                let hc = h.rb_mut().subcols_mut(col0, cols);
                let gc = &mut g[i * CHUNK * k..(i * CHUNK + cols) * k];
                let ghc = gh.rb_mut().subcols_mut(col0, cols);
                process_chunk(ChunkJob {
                    ctx: &ctx,
                    Hc: hc,
                    g: gc,
                    gHc: ghc,
                    yc: &y[col0..col0 + cols],
                    a,
                });
                col0 += cols;
            }
        };
        // The calling thread takes part 0 itself; the pool's threads − 1 workers take the rest.
        match parts.split_first() {
            Some((first, [])) => run(first),
            Some((first, rest)) => {
                // The scope's end blocks the calling thread on a lock until the last worker is
                // done, and a blocked caller must be woken by the kernel: tens of microseconds
                // each iteration, as long as a whole pass at small n. The caller spins on a
                // count of finished parts first (a short while: the parts are the same size).
                let done = AtomicUsize::new(0);
                let (run, done) = (&run, &done);
                self.pool.in_place_scope(|scope| {
                    for part in rest {
                        scope.spawn(move |_| {
                            run(part);
                            done.fetch_add(1, Ordering::Release);
                        });
                    }
                    run(first);
                    for i in 0..2 * SPIN_WAIT {
                        if done.load(Ordering::Acquire) == rest.len() {
                            break;
                        }
                        if i < SPIN_WAIT {
                            std::hint::spin_loop();
                        } else {
                            std::thread::yield_now();
                        }
                    }
                });
            }
            None => {}
        }
        // Reduce in chunk order.
        let mut e = Eval { min_margin: f64::INFINITY, ..Eval::default() };
        let mut grad_h_sq = 0.0;
        let mut grad_b = vec![0.0; k];
        self.grad_w.fill(T::from_f64(0.0));
        for a in &self.acc {
            e.loss += a.loss;
            e.correct += a.correct;
            e.min_margin = e.min_margin.min(a.min_margin);
            e.h_norm_sq += a.h_norm_sq;
            grad_h_sq += a.grad_h_norm_sq;
            self.grad_w += &a.grad_w;
            for (g, v) in grad_b.iter_mut().zip(&a.grad_b) {
                *g += v;
            }
        }
        let lambda_w = self.config.lambda_w;
        if lambda_w != 0.0 {
            self.grad_w += params.W.as_ref() * faer::Scale(T::from_f64(lambda_w));
        }
        let w_sq = sum_sq_mat(params.W.as_ref());
        for (g, v) in self.grad_b.iter_mut().zip(&grad_b) {
            *g = T::from_f64(*v);
        }
        let b_sq: f64 = if params.b.is_some() { grad_b.iter().map(|v| v * v).sum() } else { 0.0 };
        e.objective = e.loss + 0.5 * lambda_w * w_sq + 0.5 * lambda_h * e.h_norm_sq;
        let grad_sq = sum_sq_mat(self.grad_w.as_ref()) + grad_h_sq + b_sq;
        e.grad_norm = if grad_sq < 1e-250 {
            // Squares of gradients this small lose digits to underflow: take the norm with
            // the entries scaled by their maximum (cheap, and only near the end of a run).
            scaled_norm(&[self.grad_w.as_ref(), self.grad_h.as_ref()], &self.grad_b)
        } else {
            grad_sq.sqrt()
        };
        e
    }

    /// The step from a point with evaluation `e` after `iter` iterations; 0 at an exact
    /// fixed point (a gradient that vanished in floating point), where the run terminates.
    fn next_step(&self, e: &Eval, iter: u64) -> f64 {
        if e.grad_norm == 0.0 {
            return 0.0;
        }
        self.config.step_rule.step(self.config.lr, iter, e.objective, e.grad_norm)
    }

    /// The gradients at the state's point, as computed by the last evaluation:
    /// `(∇_W F, ∇_H F, ∇_b F)`.
    pub fn gradients(&self) -> (MatRef<'_, T>, MatRef<'_, T>, &[T]) {
        (self.grad_w.as_ref(), self.grad_h.as_ref(), &self.grad_b)
    }
}

/// Refuses an evaluation that left the finite numbers, naming the iteration and the quantity.
///
/// # Errors
/// [`Error::Diverged`] when the objective or the gradient norm is not finite.
pub fn check_finite(iter: u64, e: &Eval) -> Result<()> {
    for (quantity, value) in [("objective", e.objective), ("gradient norm", e.grad_norm)] {
        if !value.is_finite() {
            return Err(Error::Diverged { iter, quantity, value });
        }
    }
    Ok(())
}

impl<T: Scalar> Solver for UfmSolver<T> {
    type State = UfmState<T>;

    fn next_iter(&mut self, state: &mut UfmState<T>) -> Result<()> {
        let eta = state.step;
        let eta_t = T::from_f64(eta);
        state.params.W -= self.grad_w.as_ref() * faer::Scale(eta_t);
        if let Some(b) = state.params.b.as_mut() {
            for (bc, &g) in b.iter_mut().zip(&self.grad_b) {
                *bc -= eta_t * g;
            }
        }
        let eval = self.pass(&mut state.params, Some(eta));
        state.iter += 1;
        state.eval = eval;
        check_finite(state.iter, &eval)?;
        state.step = self.next_step(&eval, state.iter);
        if !(state.step.is_finite() && state.step >= 0.0) {
            return Err(Error::Diverged {
                iter: state.iter,
                quantity: "step size",
                value: state.step,
            });
        }
        Ok(())
    }

    fn terminate(&self, state: &UfmState<T>) -> Option<Termination> {
        stopping_rule::<T>(&self.config, &state.eval)
    }
}

/// The UFM's stopping rule at an evaluation: an exactly zero gradient (a fixed point of GD in
/// `T`), or a gradient norm at most `grad_tol`.
pub fn stopping_rule<T: Scalar>(config: &UfmConfig, e: &Eval) -> Option<Termination> {
    if e.grad_norm == 0.0 {
        return Some(Termination::Converged(format!(
            "the gradient is exactly zero in {} (the loss underflowed): a fixed point of GD",
            T::NAME
        )));
    }
    let tol = config.grad_tol?;
    (e.grad_norm <= tol)
        .then(|| Termination::Converged(format!("gradient norm {:.3e} <= {tol:.1e}", e.grad_norm)))
}
