//! The networks' training step and evaluation as a fixed program of operations on flat f32
//! buffers, run by a set of primitive kernels ([`Kernels`]): on the GPU cuDNN's convolutions,
//! cuBLAS's products and kernels of our own (`engine::cuda`, in builds with the `cuda`
//! feature), and on the CPU a plain reference implementation ([`cpu::Reference`]) written from
//! the definitions, against which the program itself is tested.
//!
//! burn's CUDA backend trains the MLPs at about PyTorch's speed but ResNet-18 at a small
//! fraction of it (README, "GPU"): its convolutions are cubecl's own kernels, while PyTorch's
//! are cuDNN's. This engine gives the GPU the operations PyTorch uses, without burn's graph
//! in between: the network is known in advance, so the forward pass, the backward pass and
//! the optimizer are a list of calls over buffers allocated once.
//!
//! The program computes the function the CPU's training step computes (`crate::model`,
//! `crate::norm`, `crate::loss`, `crate::optim`): batch norm with the biased batch variance
//! (sums in f64) and running statistics moved by `r ← (1 − m) r + m s`; the mean cross-entropy of
//! the loss family's transformed logits `u = m ⊙ z + ι`; SGD with momentum and weight decay on
//! every trainable parameter; its sums are taken in other orders, so the numbers agree to
//! rounding, not bit for bit. Parameters, running statistics and velocities come from a
//! [`Net`] and burn's optimizer record and go back into them ([`Engine::load`],
//! [`Engine::store`]), so checkpoints keep one format and a run moves between devices.
//!
//! Layout: activations are `[rows, ...]` row-major (images `[rows, C, H, W]`), a convolution's
//! weight `[O, C, kh, kw]`, a linear layer's weight `[d_in, d_out]` (burn's layout), so that
//! every tensor is copied to and from burn's as it is.

pub mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
#[cfg(test)]
mod emulate;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Bytes, DType, Tensor, TensorData};

use crate::config::{ModelConfig, ModelKind};
use crate::error::{Error, Result};
use crate::model::Net;

/// A tensor's place: a buffer of the kernels and an offset in f32 entries inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// The buffer (from [`Kernels::alloc`]).
    pub buf: usize,
    /// Entries before the tensor's first.
    pub off: usize,
}

impl At {
    /// `n` entries further.
    pub fn plus(self, n: usize) -> At {
        At { buf: self.buf, off: self.off + n }
    }
}

/// A convolution without bias, groups or dilation, of one image: `[C, H, W]` into
/// `[O, Ho, Wo]` with an `[O, C, K, K]` kernel, stride and zero padding on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Input channels, height, width.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height and width.
    pub k: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (every side).
    pub pad: usize,
}

impl ConvShape {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Entries of one image's input.
    pub fn input(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Entries of one image's output.
    pub fn output(&self) -> usize {
        self.o * self.ho() * self.wo()
    }

    /// Entries of the weight.
    pub fn weight(&self) -> usize {
        self.o * self.c * self.k * self.k
    }
}

/// A batch norm over `rows × c × s` values (`s` positions per channel: 1 after a linear
/// layer), with its parameters and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    /// Channels.
    pub c: usize,
    /// Positions per channel and row.
    pub s: usize,
}

/// Where a batch norm's numbers are: `γ`, `β`, running mean and variance (each `c`), and the
/// batch mean and `1/√(σ² + ε)` kept from the forward pass for the backward (`2c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormParams {
    /// `γ`; `β` follows it.
    pub gamma: At,
    /// `∂γ`; `∂β` follows it.
    pub grad: At,
    /// Running mean; the running variance follows it.
    pub running: At,
    /// Batch mean, then `1/√(σ² + ε)`.
    pub saved: At,
}

/// The primitive operations the program is made of. Buffers hold f32; a tensor is an [`At`]
/// and a length the program knows. "Accumulate" adds into the output instead of overwriting
/// it (a gradient with two contributions: a block's input feeds its convolution and its
/// shortcut).
pub trait Kernels {
    /// A new buffer of `len` zeros; its index.
    fn alloc(&mut self, len: usize) -> Result<usize>;
    /// Copies `values` to `at`.
    fn write(&mut self, at: At, values: &[f32]) -> Result<()>;
    /// The `len` values at `at`.
    fn read(&mut self, at: At, len: usize) -> Result<Vec<f32>>;
    /// The labels of the next [`Kernels::cross_entropy`].
    fn labels(&mut self, labels: &[u32]) -> Result<()>;
    /// `y = conv(x, w)` for `n` images.
    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: At, w: At, y: At) -> Result<()>;
    /// `∂x` (accumulated when `acc`) from `∂y`.
    fn conv_backward_data(
        &mut self,
        n: usize,
        s: &ConvShape,
        w: At,
        dy: At,
        dx: At,
        acc: bool,
    ) -> Result<()>;
    /// `∂w` from `x` and `∂y`.
    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: At,
        dy: At,
        dw: At,
    ) -> Result<()>;
    /// Row-major `C (+)= op(A) op(B)`, `C` of `m × n`, `op(A)` of `m × k` (`A` stored `k × m`
    /// when `ta`), `op(B)` of `k × n` (`B` stored `n × k` when `tb`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        ta: bool,
        tb: bool,
        dims: [usize; 3],
        a: At,
        b: At,
        c: At,
        acc: bool,
    ) -> Result<()>;
    /// `y[i, j] += b[j]` over `rows × cols`.
    fn add_bias(&mut self, rows: usize, cols: usize, b: At, y: At) -> Result<()>;
    /// `db[j] = Σ_i dy[i, j]`.
    fn bias_grad(&mut self, rows: usize, cols: usize, dy: At, db: At) -> Result<()>;
    /// `y = max(x, 0)` over `len` entries.
    fn relu(&mut self, len: usize, x: At, y: At) -> Result<()>;
    /// `∂x (+)= ∂y ⊙ [y > 0]`.
    fn relu_backward(&mut self, len: usize, y: At, dy: At, dx: At, acc: bool) -> Result<()>;
    /// Training-mode batch norm of `rows` rows: `y = γ x̂ + β (+ skip)`, then ReLU when `relu`;
    /// keeps the batch mean and `1/√(σ² + ε)` in `p.saved` and moves the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn norm_train(
        &mut self,
        rows: usize,
        s: &NormShape,
        p: &NormParams,
        x: At,
        skip: Option<At>,
        relu: bool,
        y: At,
        momentum: f32,
        eps: f32,
    ) -> Result<()>;
    /// Evaluation-mode batch norm (running statistics), with the same sum and ReLU.
    #[allow(clippy::too_many_arguments)]
    fn norm_eval(
        &mut self,
        rows: usize,
        s: &NormShape,
        p: &NormParams,
        x: At,
        skip: Option<At>,
        relu: bool,
        y: At,
        eps: f32,
    ) -> Result<()>;
    /// The backward of [`Kernels::norm_train`]: `g = ∂y ⊙ [y > 0]` (or `∂y`), `∂γ`, `∂β` into
    /// `p.grad`, `∂x (+)= ` the input gradient, and `∂skip (+)= g` when given.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &mut self,
        rows: usize,
        s: &NormShape,
        p: &NormParams,
        x: At,
        y: At,
        relu: bool,
        dy: At,
        dx: (At, bool),
        dskip: Option<(At, bool)>,
    ) -> Result<()>;
    /// `y[i, ch] = mean_p x[i, ch, p]` over `s` positions.
    fn pool(&mut self, rows: usize, c: usize, s: usize, x: At, y: At) -> Result<()>;
    /// `∂x[i, ch, p] (+)= ∂y[i, ch] / s`.
    fn pool_backward(
        &mut self,
        rows: usize,
        c: usize,
        s: usize,
        dy: At,
        dx: At,
        acc: bool,
    ) -> Result<()>;
    /// The loss of logits `z` (`rows × k`) against the labels of [`Kernels::labels`]: `u = m ⊙
    /// z + ι` (`m_c = delta[c]`, or `delta[y_i]` for every c when `per_label`; `ι = shift`),
    /// `ℓ_i = log Σ_c exp(u_ic) − u_{i,y_i}`; writes `∂z = (softmax(u) − e_y) ⊙ m / rows` and adds
    /// `Σ_i ℓ_i` and the number of rows whose largest logit `z` is their label's to the
    /// running totals ([`Kernels::totals`]).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &mut self,
        rows: usize,
        k: usize,
        z: At,
        delta: At,
        shift: At,
        per_label: bool,
        dz: At,
    ) -> Result<()>;
    /// The running totals (loss sum, hits) since the last call, which resets them.
    fn totals(&mut self) -> Result<(f64, u64)>;
    /// SGD with momentum over `len` entries: `v ← μ v + g + λ w`, `w ← w − η v`.
    #[allow(clippy::too_many_arguments)]
    fn sgd(
        &mut self,
        len: usize,
        w: At,
        g: At,
        v: At,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()>;
}

/// An activation of the program: its buffer (values; gradient when it has one) and its
/// entries per row.
#[derive(Clone, Copy, Debug)]
struct Act {
    per: usize,
}

/// One operation; `x`, `y`, `skip` index the activations.
#[derive(Clone, Copy, Debug)]
enum Op {
    Conv { x: usize, y: usize, w: usize, s: ConvShape },
    Linear { x: usize, y: usize, w: usize, b: Option<usize>, din: usize, dout: usize },
    Norm { x: usize, y: usize, skip: Option<usize>, relu: bool, s: NormShape, p: usize },
    Relu { x: usize, y: usize },
    Pool { x: usize, y: usize, c: usize, s: usize },
}

/// A tensor of the network as burn's module lists it (traversal order): trainable (an offset
/// in the parameter buffer) or a running statistic (an offset in the statistics buffer).
#[derive(Clone, Debug)]
struct Slot {
    dims: Vec<usize>,
    trainable: bool,
    off: usize,
}

impl Slot {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Batch norm's momentum and ε, burn's defaults, which `crate::model` uses.
pub const NORM_MOMENTUM: f32 = 0.1;
/// See [`NORM_MOMENTUM`].
pub const NORM_EPSILON: f32 = 1e-5;

/// The network as a program: its tensors, activations and operations.
#[derive(Clone, Debug, Default)]
struct Program {
    slots: Vec<Slot>,
    params: usize,
    stats: usize,
    acts: Vec<Act>,
    ops: Vec<Op>,
    /// Batch norms: (`γ` offset, statistics offset, saved offset, channels).
    norms: Vec<[usize; 4]>,
    saved: usize,
    features: usize,
    logits: usize,
}

/// Every tensor starts a multiple of this many entries (256 bytes) into its buffer: cuDNN's
/// and cuBLAS's fastest kernels read aligned vectors. The gaps hold zeros, which SGD keeps.
const ALIGN: usize = 64;

impl Program {
    fn tensor(&mut self, dims: &[usize]) -> usize {
        self.params = self.params.next_multiple_of(ALIGN);
        let off = self.params;
        self.params += dims.iter().product::<usize>();
        self.slots.push(Slot { dims: dims.to_vec(), trainable: true, off });
        off
    }

    fn act(&mut self, per: usize) -> usize {
        self.acts.push(Act { per });
        self.acts.len() - 1
    }

    /// A batch norm's four tensors in burn's order (γ, β, running mean, running variance).
    fn norm_params(&mut self, c: usize) -> usize {
        // γ and β side by side (the kernels read β at γ + c).
        let gamma = self.tensor(&[2 * c]);
        self.slots.last_mut().expect("just pushed").dims = vec![c];
        self.slots.push(Slot { dims: vec![c], trainable: true, off: gamma + c });
        self.stats = self.stats.next_multiple_of(ALIGN);
        let running = self.stats;
        for _ in 0..2 {
            self.slots.push(Slot { dims: vec![c], trainable: false, off: self.stats });
            self.stats += c;
        }
        let saved = self.saved.next_multiple_of(ALIGN);
        self.saved = saved + 2 * c;
        self.norms.push([gamma, running, saved, c]);
        self.norms.len() - 1
    }

    fn norm(&mut self, x: usize, p: usize, s: usize, skip: Option<usize>, relu: bool) -> usize {
        let c = self.norms[p][3];
        let y = self.act(self.acts[x].per);
        self.ops.push(Op::Norm { x, y, skip, relu, s: NormShape { c, s }, p });
        y
    }

    fn conv(&mut self, x: usize, w: usize, s: ConvShape) -> usize {
        let y = self.act(s.output());
        self.ops.push(Op::Conv { x, y, w, s });
        y
    }

    /// The program of `cfg` for `image` (`[C, H, W]`) and `classes`, its tensors in the order
    /// of [`Net`]'s.
    fn new(cfg: &ModelConfig, image: [usize; 3], classes: usize) -> Result<Self> {
        cfg.validate()?;
        let mut p = Program::default();
        let input = p.act(image.iter().product());
        let features = match cfg.kind {
            ModelKind::Mlp => {
                let mut h = input;
                for _ in 0..cfg.depth {
                    let din = p.acts[h].per;
                    let w = p.tensor(&[din, cfg.width]);
                    let b = (!cfg.batch_norm).then(|| p.tensor(&[cfg.width]));
                    let y = p.act(cfg.width);
                    p.ops.push(Op::Linear { x: h, y, w, b, din, dout: cfg.width });
                    h = match cfg.batch_norm {
                        true => {
                            let n = p.norm_params(cfg.width);
                            p.norm(y, n, 1, None, true)
                        }
                        false => {
                            let r = p.act(cfg.width);
                            p.ops.push(Op::Relu { x: y, y: r });
                            r
                        }
                    };
                }
                h
            }
            ModelKind::ResNet18 => p.resnet18(input, image, cfg.width),
        };
        let d = p.acts[features].per;
        if d != cfg.feature_dim() {
            return Err(Error::Config(format!(
                "the engine's network has {d} features, the configuration {}",
                cfg.feature_dim()
            )));
        }
        let w = p.tensor(&[d, classes]);
        let b = cfg.last_bias.then(|| p.tensor(&[classes]));
        let logits = p.act(classes);
        p.ops.push(Op::Linear { x: features, y: logits, w, b, din: d, dout: classes });
        p.features = features;
        p.logits = logits;
        Ok(p)
    }

    /// `crate::model::ResNet18`: stem, four stages of two basic blocks, global average pool.
    fn resnet18(&mut self, input: usize, [c, h, w]: [usize; 3], width: usize) -> usize {
        let conv = |c: usize, h: usize, w: usize, o: usize, k: usize, stride: usize| ConvShape {
            c,
            h,
            w,
            o,
            k,
            stride,
            pad: k / 2,
        };
        let stem = conv(c, h, w, width, 3, 1);
        let sw = self.tensor(&[width, c, 3, 3]);
        let sbn = self.norm_params(width);
        let x = self.conv(input, sw, stem);
        let mut x = self.norm(x, sbn, h * w, None, true);
        let (mut c, mut h, mut w) = (width, h, w);
        for (stage, stride) in [1usize, 2, 2, 2].into_iter().enumerate() {
            let o = width << stage;
            for block in 0..2 {
                let stride = if block == 0 { stride } else { 1 };
                let s1 = conv(c, h, w, o, 3, stride);
                let (ho, wo) = (s1.ho(), s1.wo());
                let s2 = conv(o, ho, wo, o, 3, 1);
                // burn's order: conv1, bn1, conv2, bn2, shortcut (conv, bn).
                let w1 = self.tensor(&[o, c, 3, 3]);
                let n1 = self.norm_params(o);
                let w2 = self.tensor(&[o, o, 3, 3]);
                let n2 = self.norm_params(o);
                let short = (stride != 1 || c != o).then(|| {
                    let ws = self.tensor(&[o, c, 1, 1]);
                    (ws, self.norm_params(o), conv(c, h, w, o, 1, stride))
                });
                let y1 = self.conv(x, w1, s1);
                let y1 = self.norm(y1, n1, ho * wo, None, true);
                let skip = match short {
                    Some((ws, ns, ss)) => {
                        let z = self.conv(x, ws, ss);
                        self.norm(z, ns, ho * wo, None, false)
                    }
                    None => x,
                };
                let y2 = self.conv(y1, w2, s2);
                x = self.norm(y2, n2, ho * wo, Some(skip), true);
                (c, h, w) = (o, ho, wo);
            }
        }
        let pooled = self.act(c);
        self.ops.push(Op::Pool { x, y: pooled, c, s: h * w });
        pooled
    }
}

/// The loss family's logit transform (`crate::run`'s `LogitTransform`): `m` and `ι` per
/// class, `m` indexed by the label when `per_label`.
#[derive(Clone, Debug)]
pub struct Transform {
    /// `Δ` (or 1 for plain cross-entropy).
    pub delta: Vec<f32>,
    /// `ι` (or 0).
    pub shift: Vec<f32>,
    /// `m_c = Δ_{y}` for every c (LDT) instead of `Δ_c`.
    pub per_label: bool,
}

impl Transform {
    /// Plain cross-entropy over `k` classes.
    pub fn plain(k: usize) -> Self {
        Transform { delta: vec![1.0; k], shift: vec![0.0; k], per_label: false }
    }
}

/// Buffers of the kernels.
#[derive(Clone, Copy, Debug)]
struct Buffers {
    params: usize,
    grads: usize,
    velocity: usize,
    stats: usize,
    saved: usize,
    transform: usize,
}

/// A network on a set of [`Kernels`]: its parameters, velocities and running statistics, and
/// buffers for training batches of up to `batch` rows and evaluation batches of up to
/// `eval_batch`.
pub struct Engine<K: Kernels> {
    kernels: K,
    prog: Program,
    bufs: Buffers,
    act_bufs: Vec<(usize, usize)>,
    batch: usize,
    eval_batch: usize,
    momentum: f32,
    weight_decay: f32,
    per_label: bool,
    classes: usize,
}

/// The most entries of one tensor (kernels index them with 32-bit integers).
const MAX_ENTRIES: usize = u32::MAX as usize;

impl<K: Kernels> Engine<K> {
    /// The engine of `setup` on `kernels`. Its parameters are zero until [`Engine::load`].
    ///
    /// # Errors
    /// An invalid configuration; a batch whose activations would pass 2^32 − 1 entries; the
    /// kernels' allocation.
    pub fn new(mut kernels: K, setup: &Setup<'_>) -> Result<Self> {
        let (classes, transform) = (setup.classes, &setup.transform);
        let prog = Program::new(setup.model, setup.image, classes)?;
        if transform.delta.len() != classes || transform.shift.len() != classes {
            return Err(Error::Config(format!(
                "the loss transform has {} classes, the network {classes}",
                transform.delta.len()
            )));
        }
        let (batch, eval_batch) = (setup.batch.max(1), setup.eval_batch.max(1));
        let rows = batch.max(eval_batch);
        let widest = prog.acts.iter().map(|a| a.per).max().unwrap_or(1);
        if rows.saturating_mul(widest) > MAX_ENTRIES || prog.params > MAX_ENTRIES {
            return Err(Error::Config(format!(
                "batches of {rows} rows make activations of {} values; the engine takes at \
                 most {MAX_ENTRIES} per tensor (a smaller --batch-size or --eval-batch)",
                rows.saturating_mul(widest)
            )));
        }
        let params = kernels.alloc(prog.params)?;
        let grads = kernels.alloc(prog.params)?;
        let velocity = kernels.alloc(prog.params)?;
        let stats = kernels.alloc(prog.stats.max(1))?;
        let saved = kernels.alloc(prog.saved.max(1))?;
        let tr = kernels.alloc(2 * classes)?;
        kernels.write(At { buf: tr, off: 0 }, &transform.delta)?;
        kernels.write(At { buf: tr, off: classes }, &transform.shift)?;
        let mut act_bufs = Vec::with_capacity(prog.acts.len());
        for (i, a) in prog.acts.iter().enumerate() {
            let v = kernels.alloc(rows * a.per)?;
            // Gradients for training batches only; the input needs none.
            let g = if i == 0 { v } else { kernels.alloc(batch * a.per)? };
            act_bufs.push((v, g));
        }
        let bufs = Buffers { params, grads, velocity, stats, saved, transform: tr };
        Ok(Engine {
            kernels,
            prog,
            bufs,
            act_bufs,
            batch,
            eval_batch: rows,
            momentum: setup.momentum as f32,
            weight_decay: setup.weight_decay as f32,
            per_label: transform.per_label,
            classes,
        })
    }

    /// The kernels (for their own checks and timings).
    pub fn kernels(&mut self) -> &mut K {
        &mut self.kernels
    }

    /// Parameters (trainable entries) of the network.
    pub fn parameters(&self) -> usize {
        self.prog.params
    }

    fn value(&self, act: usize) -> At {
        At { buf: self.act_bufs[act].0, off: 0 }
    }

    fn grad(&self, act: usize) -> At {
        At { buf: self.act_bufs[act].1, off: 0 }
    }

    fn param(&self, off: usize) -> At {
        At { buf: self.bufs.params, off }
    }

    fn norm_params(&self, p: usize) -> NormParams {
        let [gamma, running, saved, _] = self.prog.norms[p];
        NormParams {
            gamma: At { buf: self.bufs.params, off: gamma },
            grad: At { buf: self.bufs.grads, off: gamma },
            running: At { buf: self.bufs.stats, off: running },
            saved: At { buf: self.bufs.saved, off: saved },
        }
    }

    /// Checks a batch of `rows` rows against the engine's `most` rows.
    fn check_rows(&self, rows: usize, most: usize, x: &[f32]) -> Result<()> {
        let per = self.prog.acts[0].per;
        if rows == 0 || rows > most || x.len() != rows * per {
            return Err(Error::Config(format!(
                "a batch of {rows} rows ({} values) for an engine of at most {most} rows of {per}",
                x.len(),
            )));
        }
        Ok(())
    }

    /// The forward pass over the `rows` rows already in the input, in training mode or not.
    fn forward(&mut self, rows: usize, train: bool) -> Result<()> {
        for i in 0..self.prog.ops.len() {
            let op = self.prog.ops[i];
            match op {
                Op::Conv { x, y, w, s } => {
                    let (x, y, w) = (self.value(x), self.value(y), self.param(w));
                    self.kernels.conv_forward(rows, &s, x, w, y)?;
                }
                Op::Linear { x, y, w, b, din, dout } => {
                    let (xv, yv) = (self.value(x), self.value(y));
                    self.kernels.gemm(
                        false,
                        false,
                        [rows, dout, din],
                        xv,
                        self.param(w),
                        yv,
                        false,
                    )?;
                    if let Some(b) = b {
                        self.kernels.add_bias(rows, dout, self.param(b), yv)?;
                    }
                }
                Op::Norm { x, y, skip, relu, s, p } => {
                    let np = self.norm_params(p);
                    let (xv, yv, sk) = (self.value(x), self.value(y), skip.map(|k| self.value(k)));
                    match train {
                        true => self.kernels.norm_train(
                            rows,
                            &s,
                            &np,
                            xv,
                            sk,
                            relu,
                            yv,
                            NORM_MOMENTUM,
                            NORM_EPSILON,
                        )?,
                        false => {
                            self.kernels.norm_eval(rows, &s, &np, xv, sk, relu, yv, NORM_EPSILON)?
                        }
                    }
                }
                Op::Relu { x, y } => {
                    let len = rows * self.prog.acts[x].per;
                    self.kernels.relu(len, self.value(x), self.value(y))?;
                }
                Op::Pool { x, y, c, s } => {
                    self.kernels.pool(rows, c, s, self.value(x), self.value(y))?;
                }
            }
        }
        Ok(())
    }

    /// The backward pass from the logits' gradient: every parameter's gradient.
    fn backward(&mut self, rows: usize) -> Result<()> {
        let mut written = vec![false; self.prog.acts.len()];
        written[self.prog.logits] = true;
        let grads = self.bufs.grads;
        for i in (0..self.prog.ops.len()).rev() {
            let op = self.prog.ops[i];
            match op {
                Op::Conv { x, y, w, s } => {
                    let dy = self.grad(y);
                    let dw = At { buf: grads, off: w };
                    self.kernels.conv_backward_filter(rows, &s, self.value(x), dy, dw)?;
                    if x != 0 {
                        let acc = std::mem::replace(&mut written[x], true);
                        self.kernels.conv_backward_data(
                            rows,
                            &s,
                            self.param(w),
                            dy,
                            self.grad(x),
                            acc,
                        )?;
                    }
                }
                Op::Linear { x, y, w, b, din, dout } => {
                    let dy = self.grad(y);
                    let dw = At { buf: grads, off: w };
                    self.kernels.gemm(
                        true,
                        false,
                        [din, dout, rows],
                        self.value(x),
                        dy,
                        dw,
                        false,
                    )?;
                    if let Some(b) = b {
                        self.kernels.bias_grad(rows, dout, dy, At { buf: grads, off: b })?;
                    }
                    if x != 0 {
                        let acc = std::mem::replace(&mut written[x], true);
                        self.kernels.gemm(
                            false,
                            true,
                            [rows, din, dout],
                            dy,
                            self.param(w),
                            self.grad(x),
                            acc,
                        )?;
                    }
                }
                Op::Norm { x, y, skip, relu, s, p } => {
                    let np = self.norm_params(p);
                    let dx = (self.grad(x), std::mem::replace(&mut written[x], true));
                    let dskip =
                        skip.map(|k| (self.grad(k), std::mem::replace(&mut written[k], true)));
                    self.kernels.norm_backward(
                        rows,
                        &s,
                        &np,
                        self.value(x),
                        self.value(y),
                        relu,
                        self.grad(y),
                        dx,
                        dskip,
                    )?;
                }
                Op::Relu { x, y } => {
                    let len = rows * self.prog.acts[x].per;
                    let acc = std::mem::replace(&mut written[x], true);
                    self.kernels.relu_backward(
                        len,
                        self.value(y),
                        self.grad(y),
                        self.grad(x),
                        acc,
                    )?;
                }
                Op::Pool { x, y, c, s } => {
                    let acc = std::mem::replace(&mut written[x], true);
                    self.kernels.pool_backward(rows, c, s, self.grad(y), self.grad(x), acc)?;
                }
            }
        }
        Ok(())
    }

    /// One training step on the batch `x` (`rows × C·H·W`) with `labels`, learning rate `lr`:
    /// forward, loss, backward, SGD. The loss and hits are added to the totals
    /// ([`Engine::totals`]); nothing is read back.
    ///
    /// # Errors
    /// A batch of the wrong size; the kernels'.
    pub fn step(&mut self, x: &[f32], labels: &[u32], lr: f64) -> Result<()> {
        let rows = labels.len();
        self.check_rows(rows, self.batch, x)?;
        if let Some(&y) = labels.iter().find(|&&y| y as usize >= self.classes) {
            return Err(Error::Config(format!(
                "label {y} of a network with {} classes",
                self.classes
            )));
        }
        self.kernels.write(self.value(0), x)?;
        self.kernels.labels(labels)?;
        self.forward(rows, true)?;
        let tr = At { buf: self.bufs.transform, off: 0 };
        let (z, dz) = (self.value(self.prog.logits), self.grad(self.prog.logits));
        let k = self.classes;
        self.kernels.cross_entropy(rows, k, z, tr, tr.plus(k), self.per_label, dz)?;
        self.backward(rows)?;
        let b = self.bufs;
        self.kernels.sgd(
            self.prog.params,
            At { buf: b.params, off: 0 },
            At { buf: b.grads, off: 0 },
            At { buf: b.velocity, off: 0 },
            lr as f32,
            self.momentum,
            self.weight_decay,
        )
    }

    /// The loss sum and hit count of the steps since the last call.
    ///
    /// # Errors
    /// The kernels'.
    pub fn totals(&mut self) -> Result<(f64, u64)> {
        self.kernels.totals()
    }

    /// Evaluation mode on `rows` rows of `x`: the penultimate features (`rows × d`) and the
    /// logits (`rows × k`).
    ///
    /// # Errors
    /// A batch of the wrong size; the kernels'.
    pub fn infer(&mut self, x: &[f32], rows: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check_rows(rows, self.eval_batch, x)?;
        self.kernels.write(self.value(0), x)?;
        self.forward(rows, false)?;
        let d = self.prog.acts[self.prog.features].per;
        let h = self.kernels.read(self.value(self.prog.features), rows * d)?;
        let z = self.kernels.read(self.value(self.prog.logits), rows * self.classes)?;
        Ok((h, z))
    }

    /// Takes the network's parameters and running statistics, and the velocities of burn's
    /// optimizer record `optim` (a parameter it has none for starts at zero, as SGD's first
    /// step does).
    ///
    /// # Errors
    /// A network or record that does not fit the program.
    pub fn load(&mut self, net: &Net, optim: Option<Bytes>) -> Result<()> {
        let mut seen = Collect::default();
        net.visit(&mut seen);
        if seen.tensors.len() != self.prog.slots.len() {
            return Err(Error::Config(format!(
                "the network has {} tensors, the engine's program {}",
                seen.tensors.len(),
                self.prog.slots.len()
            )));
        }
        let mut params = vec![0.0f32; self.prog.params];
        let mut stats = vec![0.0f32; self.prog.stats];
        let mut ids = Vec::with_capacity(seen.tensors.len());
        for ((id, dims, values), slot) in seen.tensors.into_iter().zip(&self.prog.slots) {
            if dims != slot.dims {
                return Err(Error::Config(format!(
                    "tensor {id} of the network has shape {dims:?}, the engine expects {:?}",
                    slot.dims
                )));
            }
            let dst = if slot.trainable { &mut params } else { &mut stats };
            dst[slot.off..slot.off + slot.len()].copy_from_slice(&values);
            ids.push(id);
        }
        let mut velocity = vec![0.0f32; self.prog.params];
        if let Some(bytes) = optim {
            for (id, values) in velocities(bytes)? {
                let at = ids.iter().position(|&i| i == id).map(|i| &self.prog.slots[i]);
                match at {
                    Some(s) if s.trainable && s.len() == values.len() => {
                        velocity[s.off..s.off + s.len()].copy_from_slice(&values);
                    }
                    _ => {
                        return Err(Error::Config(format!(
                            "the optimizer record has a velocity of {} values for tensor {id}, \
                             which the network does not train with that size",
                            values.len()
                        )));
                    }
                }
            }
        }
        let b = self.bufs;
        self.kernels.write(At { buf: b.params, off: 0 }, &params)?;
        self.kernels.write(At { buf: b.velocity, off: 0 }, &velocity)?;
        if !stats.is_empty() {
            self.kernels.write(At { buf: b.stats, off: 0 }, &stats)?;
        }
        Ok(())
    }

    /// `net` with the engine's parameters and running statistics, and burn's optimizer record
    /// (burnpack bytes, tensors in name order) of the engine's velocities for `net`'s
    /// parameter ids.
    ///
    /// # Errors
    /// A network that does not fit the program; the kernels'.
    pub fn store(&mut self, net: Net) -> Result<(Net, Vec<u8>)> {
        let b = self.bufs;
        let params = self.kernels.read(At { buf: b.params, off: 0 }, self.prog.params)?;
        let velocity = self.kernels.read(At { buf: b.velocity, off: 0 }, self.prog.params)?;
        let stats = match self.prog.stats {
            0 => Vec::new(),
            n => self.kernels.read(At { buf: b.stats, off: 0 }, n)?,
        };
        let mut seen = Collect::default();
        net.visit(&mut seen);
        if seen.tensors.len() != self.prog.slots.len() {
            return Err(Error::Config("the network does not fit the engine's program".into()));
        }
        let mut tensors = Vec::new();
        let mut rank = Vec::new();
        for ((id, _, _), slot) in seen.tensors.iter().zip(&self.prog.slots) {
            if slot.trainable {
                let v = &velocity[slot.off..slot.off + slot.len()];
                let bytes = Bytes::from_elems(v.to_vec());
                let name = format!("{id}.momentum.velocity");
                tensors.push(burn_pack::Tensor::new(
                    name,
                    DType::F32,
                    slot.dims.clone(),
                    Some(*id),
                    bytes,
                ));
                rank.push((format!("{id}.__rank"), slot.dims.len()));
            }
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut writer = burn_pack::Writer::new(tensors);
        for (key, r) in &rank {
            writer = writer.with_scalar(key, burn_pack::Scalar::from(*r));
        }
        let optim = writer
            .into_bytes()
            .map_err(|e| Error::Config(format!("cannot encode the optimizer record: {e}")))?
            .to_vec();
        let mut put = Put { slots: &self.prog.slots, params: &params, stats: &stats, next: 0 };
        let net = net.map(&mut put);
        Ok((net, optim))
    }
}

impl<K: Kernels> Engine<K> {
    /// The classifier's `W` (`d × k` row-major, burn's layout) and bias.
    ///
    /// # Errors
    /// The kernels'.
    pub fn classifier(&mut self) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let Some(&Op::Linear { w, b, din, dout, .. }) = self.prog.ops.last() else {
            unreachable!("every program ends with its classifier");
        };
        let wv = self.kernels.read(self.param(w), din * dout)?;
        let bv = b.map(|b| self.kernels.read(self.param(b), dout)).transpose()?;
        Ok((wv, bv))
    }
}

/// An [`Engine`] whatever its kernels: what a training run and `seli bench train` use.
pub trait Trainer {
    /// See [`Engine::step`].
    fn step(&mut self, x: &[f32], labels: &[u32], lr: f64) -> Result<()>;
    /// See [`Engine::totals`].
    fn totals(&mut self) -> Result<(f64, u64)>;
    /// See [`Engine::infer`].
    fn infer(&mut self, x: &[f32], rows: usize) -> Result<(Vec<f32>, Vec<f32>)>;
    /// See [`Engine::load`].
    fn load(&mut self, net: &Net, optim: Option<Bytes>) -> Result<()>;
    /// See [`Engine::store`].
    fn store(&mut self, net: Net) -> Result<(Net, Vec<u8>)>;
    /// See [`Engine::classifier`].
    fn classifier(&mut self) -> Result<(Vec<f32>, Option<Vec<f32>>)>;
}

impl<K: Kernels> Trainer for Engine<K> {
    fn step(&mut self, x: &[f32], labels: &[u32], lr: f64) -> Result<()> {
        Engine::step(self, x, labels, lr)
    }
    fn totals(&mut self) -> Result<(f64, u64)> {
        Engine::totals(self)
    }
    fn infer(&mut self, x: &[f32], rows: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Engine::infer(self, x, rows)
    }
    fn load(&mut self, net: &Net, optim: Option<Bytes>) -> Result<()> {
        Engine::load(self, net, optim)
    }
    fn store(&mut self, net: Net) -> Result<(Net, Vec<u8>)> {
        Engine::store(self, net)
    }
    fn classifier(&mut self) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        Engine::classifier(self)
    }
}

/// What an engine is built for: the network, its input, the batch size it takes at most, the
/// optimizer's settings and the loss.
#[derive(Clone, Debug)]
pub struct Setup<'a> {
    /// The network.
    pub model: &'a ModelConfig,
    /// `[C, H, W]` of an image.
    pub image: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// The most rows of a training batch.
    pub batch: usize,
    /// The most rows of an evaluation batch.
    pub eval_batch: usize,
    /// SGD's momentum.
    pub momentum: f64,
    /// SGD's weight decay.
    pub weight_decay: f64,
    /// The loss family's logit transform.
    pub transform: Transform,
}

/// The engine of `setup` on `kernels`, boxed.
#[cfg_attr(not(any(test, feature = "cuda")), allow(dead_code))]
fn build<K: Kernels + 'static>(kernels: K, s: &Setup<'_>) -> Result<Box<dyn Trainer>> {
    Ok(Box::new(Engine::new(kernels, s)?))
}

/// Tests of a run's GPU path on the CPU: while [`ON_CPU_REFERENCE`] or [`ON_CPU_EMULATED`],
/// `cpu` gets the engine on the reference kernels or on the emulated GPU (process-wide: a run
/// trains on a thread of rayon's pool; one unit test sets it).
#[cfg(test)]
pub(crate) static ENGINE_ON_CPU: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
/// See [`ENGINE_ON_CPU`].
#[cfg(test)]
pub(crate) const ON_CPU_REFERENCE: u8 = 1;
/// See [`ENGINE_ON_CPU`].
#[cfg(test)]
pub(crate) const ON_CPU_EMULATED: u8 = 2;

/// The engine for `device`: `None` on the CPU (where training is burn's with the fused
/// operations), the GPU engine on `cuda:N` in CUDA builds.
///
/// # Errors
/// `cuda:N` in a build without CUDA (saying how to get one); what the GPU lacks.
pub fn on_device(
    device: crate::device::Device,
    setup: &Setup<'_>,
) -> Result<Option<Box<dyn Trainer>>> {
    match device {
        #[cfg(test)]
        crate::device::Device::Cpu
            if ENGINE_ON_CPU.load(std::sync::atomic::Ordering::SeqCst) != 0 =>
        {
            match ENGINE_ON_CPU.load(std::sync::atomic::Ordering::SeqCst) {
                ON_CPU_REFERENCE => build(cpu::Reference::new(), setup).map(Some),
                _ => build(device::OnDevice::new(emulate::Emulator::default()), setup).map(Some),
            }
        }
        crate::device::Device::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        crate::device::Device::Cuda(index) => build(cuda::kernels(index)?, setup).map(Some),
        #[cfg(not(feature = "cuda"))]
        crate::device::Device::Cuda(index) => {
            let _ = setup;
            Err(crate::device::no_cuda(index))
        }
    }
}

/// Every float tensor of a module in traversal order: id, shape, values.
#[derive(Default)]
struct Collect {
    tensors: Vec<(u64, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let dims = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        self.tensors.push((param.id.val(), dims, values));
    }
}

/// Replaces every float tensor of a module, in traversal order, by the engine's values.
struct Put<'a> {
    slots: &'a [Slot],
    params: &'a [f32],
    stats: &'a [f32],
    next: usize,
}

impl ModuleMapper for Put<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let slot = &self.slots[self.next];
        self.next += 1;
        let (id, value, mapper) = param.consume();
        let src = if slot.trainable { self.params } else { self.stats };
        let values = src[slot.off..slot.off + slot.len()].to_vec();
        let data = TensorData::new(values, value.shape());
        let fresh = Tensor::from_data(data, &value.device());
        let fresh = if value.is_require_grad() { fresh.require_grad() } else { fresh };
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// The velocities of burn's optimizer record: (parameter id, values).
fn velocities(bytes: Bytes) -> Result<Vec<(u64, Vec<f32>)>> {
    let bad = |e: String| Error::Config(format!("optimizer record: {e}"));
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for t in reader.into_tensors().map_err(|e| bad(e.to_string()))? {
        let (name, dtype, shape, id, bytes) = t.into_parts().map_err(|e| bad(e.to_string()))?;
        if !name.ends_with(".momentum.velocity") {
            continue;
        }
        let id = id.ok_or_else(|| bad(format!("tensor {name} has no parameter id")))?;
        let data = TensorData::from_bytes(bytes, shape, dtype).convert::<f32>();
        let values = data.try_into_vec::<f32>().map_err(|e| bad(format!("{name}: {e:?}")))?;
        out.push((id, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
