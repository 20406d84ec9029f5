//! The UFM iteration on an NVIDIA GPU with cuBLAS (CUDA builds): the iteration of
//! [`crate::ufm::DeviceUfm`] (docs/theory.md §2 and §10) with its three products in cuBLAS and
//! the rest in kernels of our own (six; two run in a plain iteration), compiled by NVRTC once per
//! process.
//!
//! Column-major, as cuBLAS: `W` d×k, `H` d×n (a sample's features contiguous), `Z = WᵀH` k×n
//! (a sample's logits contiguous). One iteration without an evaluation is
//!
//! 1. `Z ← WᵀH` (GEMM);
//! 2. `softmax_grad`: `Z ← G = s·m ⊙ (softmax(u) − Y)` in place, one thread per sample, with
//!    `p_y − 1` formed as `−rest/(1 + rest)` where the label holds the maximum (as burn's);
//! 3. `∇W ← H Gᵀ` (GEMM), plus `λ_W W`; `∇b ← G 1` (GEMV) with a bias;
//! 4. `H ← (1 − ηλ_H) H − η W G` (one GEMM, in place: `∇H` is never stored), then
//!    `W ← W − η ∇W` and `b ← b − η ∇b`.
//!
//! When the evaluation is needed (a metrics row, a checkpoint, the gradient tolerance, the
//! normalized step rules) `∇H = W G + λ_H H` is formed in a buffer of its own for its norm, the
//! per-sample losses and margins are written by `softmax_grad`, and the sums are taken in f64
//! in two fixed-shape stages (deterministic: the same order at every call), the second of which
//! also forms the normalized step on the device, so that the host never waits between
//! iterations.

use std::sync::{Arc, OnceLock};

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, Gemv, GemvConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use faer::Mat;
use seli_core::Profile;
use seli_core::solve::ufm::{Params, StepRule, UfmConfig};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ufm::{DeviceIteration, Factor, Family, GRAD_NORM, H_NORM_SQ, HostState, eval_at};

/// Blocks of the first reduction stage (and threads of the second, which adds their partial
/// results): a fixed shape, so that every sum is taken in the same order at every call.
const BLOCKS: usize = 256;
/// Threads per block of every kernel.
const THREADS: u32 = 256;

/// Slots of the reduction stages: Σ loss, min margin, # margin > 0, ‖W‖², ‖H‖², ‖∇W‖²,
/// ‖∇H‖², ‖∇b‖².
const SLOTS: usize = 8;
const SLOT_W: usize = 3;
const SLOT_H: usize = 4;
const SLOT_GW: usize = 5;
const SLOT_GH: usize = 6;
const SLOT_GB: usize = 7;

/// The evaluation vector `finish` writes: the positions of `crate::ufm` (objective, loss,
/// correct, min margin, gradient norm, ‖H‖² under ridge on H), then the normalized rules' next
/// step.
const EVAL_ETA: usize = H_NORM_SQ + 1;
const EVAL_LEN: usize = EVAL_ETA + 1;

/// The kernels, for the element type that the prelude `#define`s (`REAL`, `EXP`, `LOG1P`) and
/// `RB` (= [`BLOCKS`]). No header is included: NVRTC alone compiles them.
const KERNELS: &str = r#"
#define DBL_BIG 1.7976931348623157e308

// s·m ⊙ (softmax(u) − Y) of one sample's logits u = m ⊙ (z + b) + ι, in place of z; with
// `evaluate`, its loss (before the factor s) and margin z_y − max_{c≠y} z_c.
extern "C" __global__ void softmax_grad(
    REAL* g, const REAL* b, const REAL* m_class, const REAL* m_sample, const REAL* iota,
    const unsigned* labels, int k, int n, REAL s, int evaluate,
    double* col_loss, double* col_margin)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    REAL* z = g + (size_t)i * k;
    int y = (int)labels[i];
    REAL ms = m_sample ? m_sample[i] : (REAL)1;
#define ZB(c) (z[c] + (b ? b[c] : (REAL)0))
#define MUL(c) (m_class ? m_class[c] : ms)
#define U(c) (MUL(c) * ZB(c) + (iota ? iota[c] : (REAL)0))
    REAL mx = U(0);
    for (int c = 1; c < k; ++c) { REAL u = U(c); mx = u > mx ? u : mx; }
    // Σ_{c≠argmax} e^{u_c − max}: every maximum but one counts 1, none is subtracted from 1.
    REAL rest = (REAL)0;
    int ties = 0;
    for (int c = 0; c < k; ++c) {
        REAL u = U(c);
        if (u == mx) ++ties; else rest += EXP(u - mx);
    }
    rest += (REAL)(ties - 1);
    REAL inv = s / ((REAL)1 + rest);
    if (evaluate) {
        col_loss[i] = (double)(mx - U(y) + LOG1P(rest));
        REAL other = ZB(y == 0 ? 1 : 0);
        for (int c = 0; c < k; ++c) {
            if (c != y) { REAL v = ZB(c); other = v > other ? v : other; }
        }
        col_margin[i] = (double)(ZB(y) - other);
    }
    for (int c = 0; c < k; ++c) {
        REAL u = U(c);
        REAL v = (u == mx && c == y) ? -rest * inv
                                     : EXP(u - mx) * inv - (c == y ? s : (REAL)0);
        z[c] = v * MUL(c);
    }
#undef U
#undef MUL
#undef ZB
}

__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ double block_min(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o && sh[threadIdx.x + o] < sh[threadIdx.x])
            sh[threadIdx.x] = sh[threadIdx.x + o];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

// First stage over the samples: per block Σ loss, min margin, # margin > 0 into slots 0, 1, 2.
extern "C" __global__ void reduce_cols(
    const double* loss, const double* margin, int n, double* partial)
{
    __shared__ double sh[256];
    double sum = 0.0, mn = DBL_BIG, count = 0.0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        sum += loss[i];
        double m = margin[i];
        mn = m < mn ? m : mn;
        count += m > 0.0 ? 1.0 : 0.0;
    }
    sum = block_sum(sum, sh);
    mn = block_min(mn, sh);
    count = block_sum(count, sh);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = sum;
        partial[RB + blockIdx.x] = mn;
        partial[2 * RB + blockIdx.x] = count;
    }
}

// First stage of Σ x² (in f64), per block into `partial`.
extern "C" __global__ void sumsq(const REAL* x, unsigned long long len, double* partial) {
    __shared__ double sh[256];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Second stage (one block of RB threads): the evaluation and the normalized rules' step
// (rule 1: lr/‖∇‖, rule 2: lr/objective, 0 at a zero gradient).
extern "C" __global__ void finish(
    const double* partial, double s, double lw, double lh, int rule, double lr, double* eval)
{
    __shared__ double sh[256];
    double v[8];
    for (int slot = 0; slot < 8; ++slot) {
        double x = partial[slot * RB + threadIdx.x];
        v[slot] = slot == 1 ? block_min(x, sh) : block_sum(x, sh);
    }
    if (threadIdx.x == 0) {
        double loss = v[0] * s;
        double objective = loss;
        if (lw != 0.0) objective += 0.5 * lw * v[3];
        if (lh != 0.0) objective += 0.5 * lh * v[4];
        double gn = sqrt(v[5] + v[6] + v[7]);
        eval[0] = objective;
        eval[1] = loss;
        eval[2] = v[2];
        eval[3] = v[1];
        eval[4] = gn;
        eval[5] = lh != 0.0 ? v[4] : 0.0;
        double by = rule == 1 ? gn : objective;
        eval[6] = (rule == 0 || gn == 0.0) ? 0.0 : lr / by;
    }
}

// x ← x − η g, η from the host or (when `eta_dev` is not null) from the device.
extern "C" __global__ void descend(
    REAL* x, const REAL* g, unsigned long long len, double eta, const double* eta_dev)
{
    REAL e = (REAL)(eta_dev ? *eta_dev : eta);
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * blockDim.x)
        x[i] = x[i] - g[i] * e;
}

// y ← y + a x.
extern "C" __global__ void axpy(REAL* y, const REAL* x, unsigned long long len, REAL a) {
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = y[i] + x[i] * a;
}
"#;

/// An element type of the device iteration.
trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Unpin + Send + Sync + 'static {
    /// The kernels' prelude for this type.
    const PRELUDE: &'static str;
    /// The kernels compiled for this type, once per process (a sweep places many UFMs).
    fn ptx() -> &'static OnceLock<Ptx>;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Elem for f32 {
    fn ptx() -> &'static OnceLock<Ptx> {
        static PTX: OnceLock<Ptx> = OnceLock::new();
        &PTX
    }
    const PRELUDE: &'static str = "#define REAL float\n#define EXP expf\n#define LOG1P log1pf\n";
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Elem for f64 {
    fn ptx() -> &'static OnceLock<Ptx> {
        static PTX: OnceLock<Ptx> = OnceLock::new();
        &PTX
    }
    const PRELUDE: &'static str = "#define REAL double\n#define EXP exp\n#define LOG1P log1p\n";
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// The compiled kernels.
struct Kernels {
    softmax_grad: CudaFunction,
    reduce_cols: CudaFunction,
    sumsq: CudaFunction,
    finish: CudaFunction,
    descend: CudaFunction,
    axpy: CudaFunction,
}

/// The next step size: known on the host (constant steps, step decay), or in the device's
/// evaluation vector (normalized rules).
#[derive(Clone, Copy)]
enum Eta {
    Host(f64),
    Device,
}

/// The iteration's buffers on the GPU, in `E`.
struct Placed<E> {
    index: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    d: usize,
    k: usize,
    n: usize,
    w: CudaSlice<E>,
    h: CudaSlice<E>,
    b: Option<CudaSlice<E>>,
    /// `Z`, then `G` (k×n).
    g: CudaSlice<E>,
    grad_w: CudaSlice<E>,
    grad_b: Option<CudaSlice<E>>,
    /// `∇H`, formed only when the pass evaluates (allocated at the first such pass).
    grad_h: Option<CudaSlice<E>>,
    /// Whether `grad_h` holds the gradient at the current point.
    grad_h_current: bool,
    /// Ones (n), for `∇b = G 1`, with a bias.
    ones: Option<CudaSlice<E>>,
    labels: CudaSlice<u32>,
    m_class: Option<CudaSlice<E>>,
    m_sample: Option<CudaSlice<E>>,
    iota: Option<CudaSlice<E>>,
    col_loss: CudaSlice<f64>,
    col_margin: CudaSlice<f64>,
    partial: CudaSlice<f64>,
    eval: CudaSlice<f64>,
    /// Whether `eval` holds the evaluation at the current point.
    eval_current: bool,
    eta: Eta,
    cfg: UfmConfig,
    scale: f64,
    iter: u64,
}

/// What failed on `cuda:index`, for the error message.
fn failed<T: std::fmt::Display>(index: usize, what: &'static str) -> impl FnOnce(T) -> Error {
    move |e| Error::Device(format!("device cuda:{index}: {what}: {e}"))
}

/// The device address of an optional buffer (0, a null pointer, for none).
fn address<E>(s: &Option<CudaSlice<E>>, stream: &CudaStream) -> u64 {
    s.as_ref().map_or(0, |s| s.device_ptr(stream).0)
}

/// cuBLAS's `C ← α op(A) op(B) + β C` for `C` m×n with inner dimension `inner`.
#[allow(clippy::too_many_arguments)]
fn product<E>(
    ops: (bool, bool),
    m: usize,
    n: usize,
    inner: usize,
    alpha: E,
    beta: E,
    ld: (usize, usize, usize),
) -> GemmConfig<E> {
    let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
    GemmConfig {
        transa: op(ops.0),
        transb: op(ops.1),
        m: m as i32,
        n: n as i32,
        k: inner as i32,
        alpha,
        lda: ld.0 as i32,
        ldb: ld.1 as i32,
        beta,
        ldc: ld.2 as i32,
    }
}

/// `x ← x − η g` on `stream`, `η` from the host (`eta.1` null) or at device address `eta.1`.
fn descend<E: Elem>(
    stream: &Arc<CudaStream>,
    kernel: &CudaFunction,
    eta: (f64, u64),
    x: &mut CudaSlice<E>,
    g: &CudaSlice<E>,
) -> std::result::Result<(), cudarc::driver::DriverError> {
    let len = x.len() as u64;
    let mut launch = stream.launch_builder(kernel);
    launch.arg(x).arg(g).arg(&len).arg(&eta.0).arg(&eta.1);
    // SAFETY: `x` and `g` hold `len` elements; the address is null or a live f64.
    unsafe { launch.launch(strided(len as usize)) }.map(drop)
}

/// `len` elements handled by a grid-stride kernel.
fn strided(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(THREADS as usize).clamp(1, 4096) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl<E: Elem> Placed<E>
where
    CudaBlas: Gemm<E> + Gemv<E>,
{
    fn at(
        profile: &Profile,
        cfg: &UfmConfig,
        index: usize,
        params: &Params<f64>,
        iter: u64,
    ) -> Result<Self> {
        let (d, k, n) = (cfg.d, profile.k(), profile.n() as usize);
        if [d, k, n].iter().any(|&v| i32::try_from(v).is_err()) {
            return Err(Error::Config(format!(
                "d = {d}, k = {k}, n = {n}: cuBLAS takes dimensions below 2^31"
            )));
        }
        let ctx = CudaContext::new(index).map_err(failed(index, "opening the GPU"))?;
        // SAFETY: every buffer is used on this one stream, in the order of the calls.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(failed(index, "starting cuBLAS"))?;
        let ptx = match E::ptx().get() {
            Some(ptx) => ptx.clone(),
            None => {
                let source = format!("{}#define RB {BLOCKS}\n{KERNELS}", E::PRELUDE);
                let opts =
                    CompileOptions { name: Some("seli_ufm.cu".into()), ..Default::default() };
                let ptx = compile_ptx_with_opts(source, opts)
                    .map_err(failed(index, "compiling the UFM kernels with NVRTC"))?;
                E::ptx().get_or_init(|| ptx).clone()
            }
        };
        let module = ctx.load_module(ptx).map_err(failed(index, "loading the UFM kernels"))?;
        let load = |name: &'static str| {
            module.load_function(name).map_err(failed(index, "finding a UFM kernel"))
        };
        let kernels = Kernels {
            softmax_grad: load("softmax_grad")?,
            reduce_cols: load("reduce_cols")?,
            sumsq: load("sumsq")?,
            finish: load("finish")?,
            descend: load("descend")?,
            axpy: load("axpy")?,
        };
        let upload = |v: Vec<f64>| {
            let v: Vec<E> = v.into_iter().map(E::from_f64).collect();
            stream.clone_htod(v.as_slice()).map_err(failed(index, "copying the UFM to the GPU"))
        };
        let col_major = |m: &Mat<f64>| {
            (0..m.ncols()).flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)])).collect()
        };
        let zeros = |len: usize| {
            stream.alloc_zeros::<E>(len).map_err(failed(index, "allocating GPU memory"))
        };
        let zeros_f64 = |len: usize| {
            stream.alloc_zeros::<f64>(len).map_err(failed(index, "allocating GPU memory"))
        };
        let Family { m, iota, scale } = Family::of(profile, cfg)?;
        let (m_class, m_sample) = match m {
            None => (None, None),
            Some(Factor::Class(v)) => (Some(upload(v)?), None),
            Some(Factor::Sample(v)) => (None, Some(upload(v)?)),
        };
        let labels = stream
            .clone_htod(profile.sorted_labels().as_slice())
            .map_err(failed(index, "copying the labels to the GPU"))?;
        let mut placed = Placed {
            index,
            w: upload(col_major(&params.W))?,
            h: upload(col_major(&params.H))?,
            b: params.b.clone().map(upload).transpose()?,
            g: zeros(k * n)?,
            grad_w: zeros(d * k)?,
            grad_b: if cfg.bias { Some(zeros(k)?) } else { None },
            grad_h: None,
            grad_h_current: false,
            ones: if cfg.bias { Some(upload(vec![1.0; n])?) } else { None },
            labels,
            m_class,
            m_sample,
            iota: iota.map(upload).transpose()?,
            col_loss: zeros_f64(n)?,
            col_margin: zeros_f64(n)?,
            partial: zeros_f64(SLOTS * BLOCKS)?,
            eval: zeros_f64(EVAL_LEN)?,
            eval_current: false,
            eta: Eta::Host(0.0),
            cfg: cfg.clone(),
            scale,
            iter,
            d,
            k,
            n,
            kernels,
            blas,
            stream,
        };
        placed.pass(true)?;
        Ok(placed)
    }

    fn normalized(&self) -> bool {
        matches!(self.cfg.step_rule, StepRule::NormalizedGrad | StepRule::NormalizedLoss)
    }

    /// `G` (in place of `Z`), `∇W` and `∇b` at the current point; `∇H` and the evaluation
    /// too when `evaluate` or when the step rule needs them; then the next step.
    fn pass(&mut self, evaluate: bool) -> Result<()> {
        let (d, k, n, index) = (self.d, self.k, self.n, self.index);
        let (one, zero) = (E::from_f64(1.0), E::from_f64(0.0));
        let lw = self.cfg.lambda_w;
        let cublas = failed(index, "a cuBLAS product failed");
        // Z = Wᵀ H.
        let cfg = product((true, false), k, n, d, one, zero, (d, d, k));
        // SAFETY: W is d×k (ld d), H d×n (ld d), Z k×n (ld k): the shapes allocated.
        unsafe { self.blas.gemm(cfg, &self.w, &self.h, &mut self.g) }.map_err(cublas)?;
        let stream = &self.stream;
        let (k, n) = (k as i32, n as i32);
        let (b, m_class, m_sample, iota) = (
            address(&self.b, stream),
            address(&self.m_class, stream),
            address(&self.m_sample, stream),
            address(&self.iota, stream),
        );
        let s = E::from_f64(self.scale);
        let ev = i32::from(evaluate);
        let mut launch = stream.launch_builder(&self.kernels.softmax_grad);
        launch
            .arg(&mut self.g)
            .arg(&b)
            .arg(&m_class)
            .arg(&m_sample)
            .arg(&iota)
            .arg(&self.labels)
            .arg(&k)
            .arg(&n)
            .arg(&s)
            .arg(&ev)
            .arg(&mut self.col_loss)
            .arg(&mut self.col_margin);
        let cols = LaunchConfig {
            grid_dim: ((self.n as u32).div_ceil(THREADS), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters; Z is k×n, the labels and the
        // per-sample buffers n, the optional factors k or n (or null).
        unsafe { launch.launch(cols) }.map_err(failed(index, "softmax_grad"))?;
        // ∇W = H Gᵀ + λ_W W.
        let (k, n) = (self.k, self.n);
        let cfg = product((false, true), d, k, n, one, zero, (d, k, d));
        // SAFETY: H d×n (ld d), G k×n (ld k), ∇W d×k (ld d).
        unsafe { self.blas.gemm(cfg, &self.h, &self.g, &mut self.grad_w) }
            .map_err(failed(index, "a cuBLAS product failed"))?;
        if lw != 0.0 {
            let len = (self.d * self.k) as u64;
            let a = E::from_f64(lw);
            let mut launch = self.stream.launch_builder(&self.kernels.axpy);
            launch.arg(&mut self.grad_w).arg(&self.w).arg(&len).arg(&a);
            // SAFETY: ∇W and W both hold d·k elements.
            unsafe { launch.launch(strided(len as usize)) }.map_err(failed(index, "axpy"))?;
        }
        if let (Some(grad_b), Some(ones)) = (&mut self.grad_b, &self.ones) {
            let cfg = GemvConfig {
                trans: CUBLAS_OP_N,
                m: k as i32,
                n: n as i32,
                alpha: one,
                lda: k as i32,
                incx: 1,
                beta: zero,
                incy: 1,
            };
            // SAFETY: G k×n (ld k), ones n, ∇b k.
            unsafe { self.blas.gemv(cfg, &self.g, ones, grad_b) }
                .map_err(failed(index, "a cuBLAS product failed"))?;
        }
        self.grad_h_current = false;
        self.eval_current = false;
        if evaluate || self.normalized() {
            self.form_grad_h()?;
        }
        if evaluate {
            self.evaluate()?;
        }
        self.eta = if self.normalized() {
            Eta::Device
        } else {
            Eta::Host(self.cfg.step_rule.step(self.cfg.lr, self.iter, 0.0, 0.0))
        };
        Ok(())
    }

    /// `∇H = W G + λ_H H` into its own buffer.
    fn form_grad_h(&mut self) -> Result<()> {
        let (d, k, n, index) = (self.d, self.k, self.n, self.index);
        let lh = self.cfg.lambda_h;
        // Allocated at the first evaluation, kept for the next (dropped on a failure).
        let mut grad_h = match self.grad_h.take() {
            Some(g) => g,
            None => self
                .stream
                .alloc_zeros::<E>(d * n)
                .map_err(failed(index, "allocating GPU memory"))?,
        };
        if lh != 0.0 {
            self.stream
                .memcpy_dtod(&self.h, &mut grad_h)
                .map_err(failed(index, "copying on the GPU"))?;
        }
        let cfg = product((false, false), d, n, k, E::from_f64(1.0), E::from_f64(lh), (d, k, d));
        // SAFETY: W d×k (ld d), G k×n (ld k), ∇H d×n (ld d).
        unsafe { self.blas.gemm(cfg, &self.w, &self.g, &mut grad_h) }
            .map_err(failed(index, "a cuBLAS product failed"))?;
        self.grad_h = Some(grad_h);
        self.grad_h_current = true;
        Ok(())
    }

    /// The evaluation at the current point (after [`Self::pass`] formed `G`, the per-sample
    /// losses and margins, and `∇H`), into `eval`.
    fn evaluate(&mut self) -> Result<()> {
        let stage = LaunchConfig {
            grid_dim: (BLOCKS as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = self.n as i32;
        let mut launch = self.stream.launch_builder(&self.kernels.reduce_cols);
        launch.arg(&self.col_loss).arg(&self.col_margin).arg(&n).arg(&mut self.partial);
        // SAFETY: n per-sample values each; `partial` holds SLOTS·BLOCKS.
        unsafe { launch.launch(stage) }.map_err(failed(self.index, "reduce_cols"))?;
        let grad_h =
            self.grad_h.as_ref().filter(|_| self.grad_h_current).ok_or_else(|| {
                Error::Config("the evaluation needs ∇H at the current point".into())
            })?;
        let mut squares = vec![(SLOT_W, &self.w), (SLOT_H, &self.h), (SLOT_GW, &self.grad_w)];
        squares.push((SLOT_GH, grad_h));
        if let Some(gb) = &self.grad_b {
            squares.push((SLOT_GB, gb));
        }
        for (slot, x) in squares {
            let len = x.len() as u64;
            let mut out = self.partial.slice_mut(slot * BLOCKS..(slot + 1) * BLOCKS);
            let mut launch = self.stream.launch_builder(&self.kernels.sumsq);
            launch.arg(x).arg(&len).arg(&mut out);
            // SAFETY: `x` holds `len` elements; `out` BLOCKS.
            unsafe { launch.launch(stage) }.map_err(failed(self.index, "sumsq"))?;
        }
        let rule = match self.cfg.step_rule {
            StepRule::NormalizedGrad => 1i32,
            StepRule::NormalizedLoss => 2,
            _ => 0,
        };
        let (s, lw, lh, lr) = (self.scale, self.cfg.lambda_w, self.cfg.lambda_h, self.cfg.lr);
        let mut launch = self.stream.launch_builder(&self.kernels.finish);
        launch.arg(&self.partial).arg(&s).arg(&lw).arg(&lh).arg(&rule).arg(&lr).arg(&mut self.eval);
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCKS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `partial` holds SLOTS·BLOCKS, `eval` EVAL_LEN; one block of BLOCKS threads.
        unsafe { launch.launch(one_block) }.map_err(failed(self.index, "finish"))?;
        self.eval_current = true;
        Ok(())
    }

    fn advance(&mut self, evaluate: bool) -> Result<()> {
        let index = self.index;
        let eta = match self.eta {
            Eta::Host(e) => (e, 0),
            Eta::Device => {
                let at = self.eval.device_ptr(&self.stream).0;
                (0.0, at + (EVAL_ETA * std::mem::size_of::<f64>()) as u64)
            }
        };
        match (&self.grad_h, self.grad_h_current, self.eta) {
            (Some(grad_h), true, _) => {
                descend(&self.stream, &self.kernels.descend, eta, &mut self.h, grad_h)
                    .map_err(failed(index, "descend"))?;
            }
            (_, _, Eta::Host(e)) => {
                // H ← (1 − ηλ_H) H − η W G, before W moves.
                let (d, k, n) = (self.d, self.k, self.n);
                let beta = E::from_f64(1.0 - e * self.cfg.lambda_h);
                let cfg = product((false, false), d, n, k, E::from_f64(-e), beta, (d, k, d));
                // SAFETY: W d×k (ld d), G k×n (ld k), H d×n (ld d).
                unsafe { self.blas.gemm(cfg, &self.w, &self.g, &mut self.h) }
                    .map_err(failed(index, "a cuBLAS product failed"))?;
            }
            (_, _, Eta::Device) => {
                return Err(Error::Config(
                    "a step computed on the device needs ∇H at the current point".into(),
                ));
            }
        }
        descend(&self.stream, &self.kernels.descend, eta, &mut self.w, &self.grad_w)
            .map_err(failed(index, "descend"))?;
        if let (Some(b), Some(gb)) = (&mut self.b, &self.grad_b) {
            descend(&self.stream, &self.kernels.descend, eta, b, gb)
                .map_err(failed(index, "descend"))?;
        }
        self.iter += 1;
        let evaluate = evaluate || self.normalized();
        self.pass(evaluate)
    }

    fn read(&self, what: &CudaSlice<E>) -> Result<Vec<f64>> {
        let v = self.stream.clone_dtoh(what).map_err(failed(self.index, "reading the UFM back"))?;
        Ok(v.into_iter().map(E::to_f64).collect())
    }

    fn read_eval(&self) -> Result<Vec<f64>> {
        if !self.eval_current {
            return Err(Error::Config("the last pass computed no evaluation to read".into()));
        }
        self.stream.clone_dtoh(&self.eval).map_err(failed(self.index, "reading the UFM back"))
    }

    fn host_state(&self) -> Result<HostState> {
        let v = self.read_eval()?;
        let eval = eval_at(&v);
        let step = match self.eta {
            Eta::Host(e) => e,
            Eta::Device => v[EVAL_ETA],
        };
        let mat = |v: Vec<f64>, r: usize, c: usize| Mat::from_fn(r, c, |i, j| v[j * r + i]);
        Ok(HostState {
            w: mat(self.read(&self.w)?, self.d, self.k),
            h: mat(self.read(&self.h)?, self.d, self.n),
            b: self.b.as_ref().map(|b| self.read(b)).transpose()?,
            eval,
            step,
        })
    }
}

/// The object-safe face of [`Placed`] (either element type).
trait Iterate {
    fn advance(&mut self, evaluate: bool) -> Result<()>;
    fn iter(&self) -> u64;
    fn sync(&self) -> Result<()>;
    fn grad_norm(&self) -> Result<f64>;
    fn host_state(&self) -> Result<HostState>;
}

impl<E: Elem> Iterate for Placed<E>
where
    CudaBlas: Gemm<E> + Gemv<E>,
{
    fn advance(&mut self, evaluate: bool) -> Result<()> {
        Placed::advance(self, evaluate)
    }
    fn iter(&self) -> u64 {
        self.iter
    }
    fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(failed(self.index, "the UFM iteration failed"))
    }
    fn grad_norm(&self) -> Result<f64> {
        Ok(self.read_eval()?[GRAD_NORM])
    }
    fn host_state(&self) -> Result<HostState> {
        Placed::host_state(self)
    }
}

/// The UFM on an NVIDIA GPU (`cuda:N`), in f32 or f64: cuBLAS products and seli's kernels.
pub struct CudaUfm(Box<dyn Iterate>);

/// The GPU index of `device`, once what the cuBLAS UFM needs there is checked.
fn usable_gpu(device: Device) -> Result<usize> {
    match device {
        Device::Cuda(index) => crate::device::check_cuda_ufm(index).map(|()| index),
        Device::Cpu => Err(Error::Device(format!("the cuBLAS UFM runs on cuda:N, not {device}"))),
    }
}

impl DeviceIteration for CudaUfm {
    fn check_device(device: Device) -> Result<()> {
        usable_gpu(device).map(drop)
    }

    fn place(
        profile: &Profile,
        cfg: &UfmConfig,
        device: Device,
        f64: bool,
        params: &Params<f64>,
        iter: u64,
    ) -> Result<Self> {
        let index = usable_gpu(device)?;
        Ok(CudaUfm(if f64 {
            Box::new(Placed::<f64>::at(profile, cfg, index, params, iter)?)
        } else {
            Box::new(Placed::<f32>::at(profile, cfg, index, params, iter)?)
        }))
    }

    fn advance(&mut self, evaluate: bool) -> Result<()> {
        self.0.advance(evaluate)
    }

    fn iter(&self) -> u64 {
        self.0.iter()
    }

    fn sync(&self) -> Result<()> {
        self.0.sync()
    }

    fn grad_norm(&self) -> Result<f64> {
        self.0.grad_norm()
    }

    fn host_state(&self) -> Result<HostState> {
        self.0.host_state()
    }
}
