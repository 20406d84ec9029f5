//! The engine's device on an NVIDIA GPU (CUDA builds): convolutions by cuDNN (its legacy
//! convolution API, each shape's algorithms chosen by timing them once, as PyTorch's
//! `cudnn.benchmark` does), products by cuBLAS, the kernels of `kernels.cu` compiled by NVRTC
//! once per process; all on one stream. Nothing waits for the GPU except reads (the metrics'
//! features, the checkpoints, the loss totals).
//!
//! cuDNN runs in its default math mode, in which it may use TF32 tensor cores for f32
//! convolutions (PyTorch's default for convolutions, `torch.backends.cudnn.allow_tf32 = True`);
//! cuBLAS in its default mode (no TF32, PyTorch's default for products).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, result as blas};
use cudarc::cudnn::sys as dnn;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::device::{Arg, Device, Grid, OnDevice, SOURCE, THREADS};
use super::{At, ConvShape};
use crate::error::{Error, Result};

/// The most workspace a convolution algorithm may ask for (bytes).
const WORKSPACE_LIMIT: usize = 1 << 30;

/// The kernels compiled, once per process.
static PTX: OnceLock<Ptx> = OnceLock::new();

/// One convolution shape's cuDNN descriptors and the algorithms chosen for it (with their
/// workspaces), each direction's when it is first needed (evaluation batches need only the
/// forward one).
struct Plan {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
    forward: Option<(dnn::cudnnConvolutionFwdAlgo_t, usize)>,
    data: Option<(dnn::cudnnConvolutionBwdDataAlgo_t, usize)>,
    filter: Option<(dnn::cudnnConvolutionBwdFilterAlgo_t, usize)>,
}

/// A method `$name(n, s)` of [`Gpu`]: the algorithm of direction `$field` of the plan of `s`
/// for `n` images, the fastest of cuDNN's `$find` results that succeeded within
/// [`WORKSPACE_LIMIT`] (timed at the first call, kept in the plan), with its workspace.
macro_rules! algorithm {
    ($(#[$doc:meta])* $name:ident, $field:ident, $what:literal, $algo:ident, $perf:ident,
     $find:ident, [$($desc:ident),*]) => {
        $(#[$doc])*
        fn $name(&mut self, n: usize, s: &ConvShape) -> Result<(dnn::$algo, usize)> {
            let (h, i) = (self.dnn, self.index);
            let p = self.plan(n, s)?;
            if let Some(a) = p.$field {
                return Ok(a);
            }
            let mut count = 0;
            // SAFETY: zeroed results are valid (status 0 is success, algorithm 0 exists); the
            // call writes at most 8 with the plan's live descriptors.
            let mut r = [unsafe { std::mem::zeroed::<dnn::$perf>() }; 8];
            let status =
                unsafe { dnn::$find(h, $(p.$desc),*, 8, &mut count, r.as_mut_ptr()) };
            check(i, concat!("timing ", $what, " algorithms"), status)?;
            let a = r[..count as usize]
                .iter()
                .find(|r| ok(r.status) && r.memory <= WORKSPACE_LIMIT)
                .map(|r| (r.algo, r.memory))
                .ok_or_else(|| none(i, $what, s, n))?;
            tracing::debug!(concat!("cuDNN ", $what, " algorithm for {} images of {:?}: {:?}"), n, s, a);
            p.$field = Some(a);
            Ok(a)
        }
    };
}

/// An NVIDIA GPU as the engine's device.
pub struct Gpu {
    index: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    dnn: dnn::cudnnHandle_t,
    module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    bufs: Vec<CudaSlice<f32>>,
    labels: Option<(CudaSlice<u32>, CudaSlice<f64>)>,
    totals: CudaSlice<f64>,
    scratch: Option<CudaSlice<f64>>,
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<(usize, ConvShape), Plan>,
}

/// A cuDNN status as a result.
fn check(index: usize, what: &str, status: dnn::cudnnStatus_t) -> Result<()> {
    match status {
        dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS => Ok(()),
        other => Err(Error::Device(format!("device cuda:{index}: cuDNN {what}: {other:?}"))),
    }
}

fn failed<T: std::fmt::Display>(index: usize, what: &'static str) -> impl FnOnce(T) -> Error {
    move |e| Error::Device(format!("device cuda:{index}: {what}: {e}"))
}

fn dims(v: &[usize]) -> Vec<i32> {
    v.iter().map(|&d| d as i32).collect()
}

/// The engine's kernels on `cuda:index`.
///
/// # Errors
/// [`Error::Device`] naming what is missing or what failed.
pub fn kernels(index: usize) -> Result<OnDevice<Gpu>> {
    Gpu::new(index).map(OnDevice::new)
}

impl Gpu {
    /// `cuda:index`, after checking that the driver, NVRTC, cuBLAS and cuDNN are there.
    ///
    /// # Errors
    /// [`Error::Device`] naming what is missing or what failed.
    pub fn new(index: usize) -> Result<Self> {
        crate::device::check_cuda_engine(index)?;
        let ctx = CudaContext::new(index).map_err(failed(index, "opening the GPU"))?;
        // SAFETY: every buffer is used on this one stream, in the order of the calls.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(failed(index, "starting cuBLAS"))?;
        let mut handle: dnn::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: cudnnCreate writes a handle; cudnnSetStream takes the live stream.
        unsafe {
            check(index, "starting", dnn::cudnnCreate(&mut handle))?;
            let raw = stream.cu_stream() as dnn::cudaStream_t;
            check(index, "setting the stream", dnn::cudnnSetStream(handle, raw))?;
        }
        let ptx = match PTX.get() {
            Some(p) => p.clone(),
            None => {
                let source = format!("#define T {THREADS}\n{SOURCE}");
                let opts =
                    CompileOptions { name: Some("seli_engine.cu".into()), ..Default::default() };
                let ptx = compile_ptx_with_opts(source, opts)
                    .map_err(failed(index, "compiling the engine's kernels with NVRTC"))?;
                PTX.get_or_init(|| ptx).clone()
            }
        };
        let module = ctx.load_module(ptx).map_err(failed(index, "loading the engine's kernels"))?;
        let totals =
            stream.alloc_zeros::<f64>(2).map_err(failed(index, "allocating GPU memory"))?;
        Ok(Gpu {
            index,
            stream,
            blas,
            dnn: handle,
            module,
            functions: HashMap::new(),
            bufs: Vec::new(),
            labels: None,
            totals,
            scratch: None,
            workspace: None,
            plans: HashMap::new(),
        })
    }

    /// A workspace of at least `bytes`, and its address (0 when none is needed).
    fn workspace(&mut self, bytes: usize) -> Result<u64> {
        if bytes == 0 {
            return Ok(0);
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            let w = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(failed(self.index, "allocating a convolution workspace"))?;
            self.workspace = Some(w);
        }
        let w = self.workspace.as_ref().expect("allocated above");
        Ok(w.device_ptr(&self.stream).0)
    }

    /// The plan of `s` for `n` images (its descriptors made at the first call).
    fn plan(&mut self, n: usize, s: &ConvShape) -> Result<&mut Plan> {
        let key = (n, *s);
        if !self.plans.contains_key(&key) {
            let plan = self.new_plan(n, s)?;
            self.plans.insert(key, plan);
        }
        Ok(self.plans.get_mut(&key).expect("inserted above"))
    }

    algorithm! {
        /// The forward algorithm of `s` for `n` images: the fastest within
        /// [`WORKSPACE_LIMIT`], timed by cuDNN at the first call.
        forward_algo, forward, "forward", cudnnConvolutionFwdAlgo_t,
        cudnnConvolutionFwdAlgoPerf_t, cudnnFindConvolutionForwardAlgorithm, [x, w, conv, y]
    }

    algorithm! {
        /// The backward-data algorithm, as [`Gpu::forward_algo`].
        data_algo, data, "backward-data", cudnnConvolutionBwdDataAlgo_t,
        cudnnConvolutionBwdDataAlgoPerf_t, cudnnFindConvolutionBackwardDataAlgorithm,
        [w, y, conv, x]
    }

    algorithm! {
        /// The backward-filter algorithm, as [`Gpu::forward_algo`].
        filter_algo, filter, "backward-filter", cudnnConvolutionBwdFilterAlgo_t,
        cudnnConvolutionBwdFilterAlgoPerf_t, cudnnFindConvolutionBackwardFilterAlgorithm,
        [x, y, conv, w]
    }

    fn new_plan(&mut self, n: usize, s: &ConvShape) -> Result<Plan> {
        use dnn::cudnnDataType_t::CUDNN_DATA_FLOAT as F32;
        use dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
        let i = self.index;
        let (k, p, st) = (s.k as i32, s.pad as i32, s.stride as i32);
        let x = dims(&[n, s.c, s.h, s.w]);
        let y = dims(&[n, s.o, s.ho(), s.wo()]);
        let mut plan = Plan {
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
            forward: None,
            data: None,
            filter: None,
        };
        // SAFETY: descriptors created and set with their documented arguments.
        unsafe {
            check(i, "tensor descriptor", dnn::cudnnCreateTensorDescriptor(&mut plan.x))?;
            check(i, "tensor descriptor", dnn::cudnnCreateTensorDescriptor(&mut plan.y))?;
            check(i, "filter descriptor", dnn::cudnnCreateFilterDescriptor(&mut plan.w))?;
            check(
                i,
                "convolution descriptor",
                dnn::cudnnCreateConvolutionDescriptor(&mut plan.conv),
            )?;
            check(
                i,
                "input shape",
                dnn::cudnnSetTensor4dDescriptor(plan.x, NCHW, F32, x[0], x[1], x[2], x[3]),
            )?;
            check(
                i,
                "output shape",
                dnn::cudnnSetTensor4dDescriptor(plan.y, NCHW, F32, y[0], y[1], y[2], y[3]),
            )?;
            check(
                i,
                "filter shape",
                dnn::cudnnSetFilter4dDescriptor(plan.w, F32, NCHW, s.o as i32, s.c as i32, k, k),
            )?;
            check(
                i,
                "convolution",
                dnn::cudnnSetConvolution2dDescriptor(
                    plan.conv,
                    p,
                    p,
                    st,
                    st,
                    1,
                    1,
                    dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    F32,
                ),
            )?;
            check(
                i,
                "math type",
                dnn::cudnnSetConvolutionMathType(
                    plan.conv,
                    dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH,
                ),
            )?;
            let mut out = [0i32; 4];
            check(
                i,
                "output dimensions",
                dnn::cudnnGetConvolution2dForwardOutputDim(
                    plan.conv,
                    plan.x,
                    plan.w,
                    &mut out[0],
                    &mut out[1],
                    &mut out[2],
                    &mut out[3],
                ),
            )?;
            if out[..] != y[..] {
                return Err(Error::Device(format!(
                    "device cuda:{i}: cuDNN gives output {out:?} for the convolution {s:?} of \
                     {n} images, the engine {y:?}"
                )));
            }
        }
        Ok(plan)
    }
}

fn ok(status: dnn::cudnnStatus_t) -> bool {
    status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS
}

fn none(index: usize, what: &str, s: &ConvShape, n: usize) -> Error {
    Error::Device(format!(
        "device cuda:{index}: cuDNN has no {what} algorithm for the convolution {s:?} of {n} \
         images within {WORKSPACE_LIMIT} bytes of workspace"
    ))
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: each descriptor and the handle were created by this value and are destroyed
        // once; the stream's work is finished first.
        unsafe {
            let _ = self.stream.synchronize();
            for plan in self.plans.values() {
                dnn::cudnnDestroyTensorDescriptor(plan.x);
                dnn::cudnnDestroyTensorDescriptor(plan.y);
                dnn::cudnnDestroyFilterDescriptor(plan.w);
                dnn::cudnnDestroyConvolutionDescriptor(plan.conv);
            }
            dnn::cudnnDestroy(self.dnn);
        }
    }
}

impl Device for Gpu {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        let b = self
            .stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(failed(self.index, "allocating GPU memory"))?;
        self.bufs.push(b);
        Ok(self.bufs.len() - 1)
    }

    fn addr(&self, at: At) -> u64 {
        let (p, _) = self.bufs[at.buf].device_ptr(&self.stream);
        p + (at.off * std::mem::size_of::<f32>()) as u64
    }

    fn write(&mut self, at: At, values: &[f32]) -> Result<()> {
        let stream = self.stream.clone();
        let mut dst = self.bufs[at.buf].slice_mut(at.off..at.off + values.len());
        stream.memcpy_htod(values, &mut dst).map_err(failed(self.index, "copying to the GPU"))
    }

    fn read(&mut self, at: At, len: usize) -> Result<Vec<f32>> {
        let src = self.bufs[at.buf].slice(at.off..at.off + len);
        self.stream.clone_dtoh(&src).map_err(failed(self.index, "copying from the GPU"))
    }

    fn labels(&mut self, labels: &[u32]) -> Result<(u64, u64)> {
        let n = labels.len();
        if self.labels.as_ref().is_none_or(|(l, _)| l.len() < n) {
            let alloc = failed(self.index, "allocating GPU memory");
            let l = self.stream.alloc_zeros::<u32>(n.max(1)).map_err(alloc)?;
            let alloc = failed(self.index, "allocating GPU memory");
            let r = self.stream.alloc_zeros::<f64>(2 * n.max(1)).map_err(alloc)?;
            self.labels = Some((l, r));
        }
        let stream = self.stream.clone();
        let (l, r) = self.labels.as_mut().expect("allocated above");
        stream
            .memcpy_htod(labels, &mut l.slice_mut(..n))
            .map_err(failed(self.index, "copying the labels to the GPU"))?;
        Ok((l.device_ptr(&stream).0, r.device_ptr(&stream).0))
    }

    fn totals_addr(&self) -> u64 {
        self.totals.device_ptr(&self.stream).0
    }

    fn scratch(&mut self, len: usize) -> Result<u64> {
        if self.scratch.as_ref().is_none_or(|b| b.len() < len) {
            let b = self
                .stream
                .alloc_zeros::<f64>(len.max(1))
                .map_err(failed(self.index, "allocating GPU memory"))?;
            self.scratch = Some(b);
        }
        Ok(self.scratch.as_ref().expect("allocated above").device_ptr(&self.stream).0)
    }

    fn take_totals(&mut self) -> Result<[f64; 2]> {
        let t =
            self.stream.clone_dtoh(&self.totals).map_err(failed(self.index, "reading the loss"))?;
        self.stream
            .memset_zeros(&mut self.totals)
            .map_err(failed(self.index, "resetting the loss"))?;
        Ok([t[0], t[1]])
    }

    fn launch(&mut self, name: &'static str, grid: Grid, args: &[Arg]) -> Result<()> {
        if !self.functions.contains_key(name) {
            let f = self
                .module
                .load_function(name)
                .map_err(failed(self.index, "finding an engine kernel"))?;
            self.functions.insert(name, f);
        }
        let f = &self.functions[name];
        let mut l = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) => l.arg(v),
                Arg::U32(v) => l.arg(v),
                Arg::I32(v) => l.arg(v),
                Arg::F32(v) => l.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.blocks, 1, 1),
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `OnDevice` pushes the arguments in the kernel's order and types, addresses
        // of live buffers holding the lengths the program gave (checked on the CPU by the
        // emulation's tests).
        unsafe { l.launch(cfg) }
            .map(drop)
            .map_err(|e| Error::Device(format!("device cuda:{}: kernel {name}: {e}", self.index)))
    }

    fn sgemm(
        &mut self,
        ta: bool,
        tb: bool,
        [m, n, k]: [usize; 3],
        a: (u64, usize),
        b: (u64, usize),
        beta: f32,
        c: (u64, usize),
    ) -> Result<()> {
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let one = 1.0f32;
        // SAFETY: the addresses hold the matrices the dimensions and leading dimensions
        // describe.
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &one,
                a.0 as *const f32,
                a.1 as i32,
                b.0 as *const f32,
                b.1 as i32,
                &beta,
                c.0 as *mut f32,
                c.1 as i32,
            )
        }
        .map_err(failed(self.index, "a cuBLAS product failed"))
    }

    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: u64, w: u64, y: u64) -> Result<()> {
        let (algo, bytes) = self.forward_algo(n, s)?;
        let ws = self.workspace(bytes)?;
        let p = &self.plans[&(n, *s)];
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: the addresses hold the shapes the descriptors describe; the workspace has
        // the bytes the algorithm asked for.
        let status = unsafe {
            dnn::cudnnConvolutionForward(
                self.dnn,
                (&one as *const f32).cast(),
                p.x,
                x as *const _,
                p.w,
                w as *const _,
                p.conv,
                algo,
                ws as *mut _,
                bytes,
                (&zero as *const f32).cast(),
                p.y,
                y as *mut _,
            )
        };
        check(self.index, "convolution forward", status)
    }

    fn conv_backward_data(
        &mut self,
        n: usize,
        s: &ConvShape,
        w: u64,
        dy: u64,
        beta: f32,
        dx: u64,
    ) -> Result<()> {
        let (algo, bytes) = self.data_algo(n, s)?;
        let ws = self.workspace(bytes)?;
        let p = &self.plans[&(n, *s)];
        let one = 1.0f32;
        // SAFETY: as in `conv_forward`.
        let status = unsafe {
            dnn::cudnnConvolutionBackwardData(
                self.dnn,
                (&one as *const f32).cast(),
                p.w,
                w as *const _,
                p.y,
                dy as *const _,
                p.conv,
                algo,
                ws as *mut _,
                bytes,
                (&beta as *const f32).cast(),
                p.x,
                dx as *mut _,
            )
        };
        check(self.index, "convolution backward (data)", status)
    }

    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: u64,
        dy: u64,
        dw: u64,
    ) -> Result<()> {
        let (algo, bytes) = self.filter_algo(n, s)?;
        let ws = self.workspace(bytes)?;
        let p = &self.plans[&(n, *s)];
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: as in `conv_forward`.
        let status = unsafe {
            dnn::cudnnConvolutionBackwardFilter(
                self.dnn,
                (&one as *const f32).cast(),
                p.x,
                x as *const _,
                p.y,
                dy as *const _,
                p.conv,
                algo,
                ws as *mut _,
                bytes,
                (&zero as *const f32).cast(),
                p.w,
                dw as *mut _,
            )
        };
        check(self.index, "convolution backward (filter)", status)
    }
}
