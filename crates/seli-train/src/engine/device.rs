//! The engine's kernels on an accelerator, whatever runs them: [`OnDevice`] turns each
//! primitive of [`Kernels`] into launches of the kernels of `kernels.cu`, cuBLAS-style products
//! (column-major) and cuDNN-style convolutions, addressed by raw device addresses, over a
//! [`Device`] that provides those three and the memory. On a GPU the device is
//! `engine::cuda::Gpu` (NVRTC, cuBLAS, cuDNN); in the tests it is `engine::emulate`, which runs
//! the same kernel source compiled for the CPU, column-major products and convolutions written
//! from their definitions: everything but the vendor libraries is checked without a GPU.

use super::{At, ConvShape, Kernels, NormParams, NormShape};
use crate::error::Result;

/// The kernels' CUDA C++ source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block of every kernel (`T` in the source).
pub const THREADS: u32 = 256;

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address (a pointer; 0 is null).
    Ptr(u64),
    /// An `unsigned` (`u32`).
    U32(u32),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
}

/// A launch: the kernel's name, blocks and threads per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Blocks.
    pub blocks: u32,
    /// Threads per block.
    pub threads: u32,
}

impl Grid {
    /// `len` elements handled by a grid-stride kernel.
    fn strided(len: usize) -> Grid {
        Grid { blocks: len.div_ceil(THREADS as usize).clamp(1, 8192) as u32, threads: THREADS }
    }

    /// One thread per channel.
    fn channels(c: usize) -> Grid {
        Grid { blocks: c.div_ceil(THREADS as usize).max(1) as u32, threads: THREADS }
    }
}

/// What runs the engine's kernels: memory, kernel launches, products, convolutions.
pub trait Device {
    /// A new buffer of `len` f32 zeros; its index.
    fn alloc(&mut self, len: usize) -> Result<usize>;
    /// The address of `at`.
    fn addr(&self, at: At) -> u64;
    /// Copies `values` to `at`.
    fn write(&mut self, at: At, values: &[f32]) -> Result<()>;
    /// The `len` values at `at`.
    fn read(&mut self, at: At, len: usize) -> Result<Vec<f32>>;
    /// Copies the labels to the device; the addresses of the labels (u32) and of a scratch
    /// buffer of `2 × labels` f64.
    fn labels(&mut self, labels: &[u32]) -> Result<(u64, u64)>;
    /// The address of the two f64 running totals.
    fn totals_addr(&self) -> u64;
    /// The address of a scratch buffer of at least `len` f64 (its contents undefined), for
    /// the partial sums of batch norm; valid until the next call.
    fn scratch(&mut self, len: usize) -> Result<u64>;
    /// The totals, which are then reset to zero.
    fn take_totals(&mut self) -> Result<[f64; 2]>;
    /// Runs kernel `name` of [`SOURCE`] with `args` in its parameters' order.
    fn launch(&mut self, name: &'static str, grid: Grid, args: &[Arg]) -> Result<()>;
    /// Column-major `C ← op(A) op(B) + β C` (`C` m×n, inner dimension k), as cuBLAS's
    /// `sgemm` with α = 1.
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &mut self,
        ta: bool,
        tb: bool,
        mnk: [usize; 3],
        a: (u64, usize),
        b: (u64, usize),
        beta: f32,
        c: (u64, usize),
    ) -> Result<()>;
    /// `y = conv(x, w)` for `n` images (NCHW, cross-correlation).
    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: u64, w: u64, y: u64) -> Result<()>;
    /// `∂x ← conv_backward_data(w, ∂y) + β ∂x`.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward_data(
        &mut self,
        n: usize,
        s: &ConvShape,
        w: u64,
        dy: u64,
        beta: f32,
        dx: u64,
    ) -> Result<()>;
    /// `∂w ← conv_backward_filter(x, ∂y)`.
    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: u64,
        dy: u64,
        dw: u64,
    ) -> Result<()>;
}

/// The engine's [`Kernels`] on a [`Device`].
pub struct OnDevice<D: Device> {
    /// The device.
    pub device: D,
    /// The labels' and the loss's scratch addresses, set by [`Kernels::labels`].
    labels: (u64, u64),
}

/// Blocks per channel for batch norm's channel sums over `m` values per channel: about 512
/// blocks in all (several per multiprocessor of a large GPU), at least 1024 values each.
fn parts(c: usize, m: usize) -> usize {
    (512 / c.max(1)).min(m / 1024).max(1)
}

/// A size as a kernel's `unsigned` (the engine keeps every tensor below 2^32 entries).
fn n32(v: usize) -> Arg {
    Arg::U32(u32::try_from(v).expect("the engine's tensors have fewer than 2^32 entries"))
}

impl<D: Device> OnDevice<D> {
    /// The kernels on `device`.
    pub fn new(device: D) -> Self {
        OnDevice { device, labels: (0, 0) }
    }

    fn p(&self, at: At) -> Arg {
        Arg::Ptr(self.device.addr(at))
    }

    /// `norm_apply` with the batch statistics (`stats` = saved mean and inverse deviation) or
    /// the running ones (`is_var`).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rows: usize,
        s: &NormShape,
        gamma: At,
        stats: At,
        x: At,
        skip: Option<At>,
        relu: bool,
        y: At,
        is_var: bool,
        eps: f32,
    ) -> Result<()> {
        let skip = Arg::Ptr(skip.map_or(0, |k| self.device.addr(k)));
        let args = [
            self.p(x),
            skip,
            self.p(y),
            self.p(gamma),
            self.p(stats),
            n32(rows),
            n32(s.c),
            n32(s.s),
            Arg::I32(relu.into()),
            Arg::I32(is_var.into()),
            Arg::F32(eps),
        ];
        self.device.launch("norm_apply", Grid::strided(rows * s.c * s.s), &args)
    }
}

/// Row-major `C (m×n) (+)= op(A) op(B)` as a column-major product: row-major `C` is
/// column-major `Cᵀ` (n×m) `= op(B)ᵀ op(A)ᵀ`, and a row-major matrix read column-major is its
/// transpose, so the product takes `B` then `A` as stored, each transposed when its `op` says
/// so. Returns the column-major `(ta, tb, [m, n, k], lda, ldb, ldc)` with `A` := `B`, `B` := `A`.
pub fn column_major(
    ta: bool,
    tb: bool,
    [m, n, k]: [usize; 3],
) -> (bool, bool, [usize; 3], [usize; 3]) {
    let lda = if tb { k } else { n };
    let ldb = if ta { m } else { k };
    (tb, ta, [n, m, k], [lda, ldb, n])
}

impl<D: Device> Kernels for OnDevice<D> {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        self.device.alloc(len)
    }

    fn write(&mut self, at: At, values: &[f32]) -> Result<()> {
        self.device.write(at, values)
    }

    fn read(&mut self, at: At, len: usize) -> Result<Vec<f32>> {
        self.device.read(at, len)
    }

    fn labels(&mut self, labels: &[u32]) -> Result<()> {
        self.labels = self.device.labels(labels)?;
        Ok(())
    }

    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: At, w: At, y: At) -> Result<()> {
        let (x, w, y) = (self.device.addr(x), self.device.addr(w), self.device.addr(y));
        self.device.conv_forward(n, s, x, w, y)
    }

    fn conv_backward_data(
        &mut self,
        n: usize,
        s: &ConvShape,
        w: At,
        dy: At,
        dx: At,
        acc: bool,
    ) -> Result<()> {
        let (w, dy, dx) = (self.device.addr(w), self.device.addr(dy), self.device.addr(dx));
        self.device.conv_backward_data(n, s, w, dy, if acc { 1.0 } else { 0.0 }, dx)
    }

    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: At,
        dy: At,
        dw: At,
    ) -> Result<()> {
        let (x, dy, dw) = (self.device.addr(x), self.device.addr(dy), self.device.addr(dw));
        self.device.conv_backward_filter(n, s, x, dy, dw)
    }

    fn gemm(
        &mut self,
        ta: bool,
        tb: bool,
        mnk: [usize; 3],
        a: At,
        b: At,
        c: At,
        acc: bool,
    ) -> Result<()> {
        let (ca, cb, dims, [lda, ldb, ldc]) = column_major(ta, tb, mnk);
        let (a, b, c) = (self.device.addr(a), self.device.addr(b), self.device.addr(c));
        self.device.sgemm(ca, cb, dims, (b, lda), (a, ldb), if acc { 1.0 } else { 0.0 }, (c, ldc))
    }

    fn add_bias(&mut self, rows: usize, cols: usize, b: At, y: At) -> Result<()> {
        let args = [self.p(y), self.p(b), n32(rows), n32(cols)];
        self.device.launch("add_bias", Grid::strided(rows * cols), &args)
    }

    fn bias_grad(&mut self, rows: usize, cols: usize, dy: At, db: At) -> Result<()> {
        let args = [self.p(dy), self.p(db), n32(rows), n32(cols)];
        let grid = Grid { blocks: cols.div_ceil(THREADS as usize).max(1) as u32, threads: THREADS };
        self.device.launch("bias_grad", grid, &args)
    }

    fn relu(&mut self, len: usize, x: At, y: At) -> Result<()> {
        let args = [self.p(x), self.p(y), n32(len)];
        self.device.launch("relu", Grid::strided(len), &args)
    }

    fn relu_backward(&mut self, len: usize, y: At, dy: At, dx: At, acc: bool) -> Result<()> {
        let args = [self.p(y), self.p(dy), self.p(dx), n32(len), Arg::I32(acc.into())];
        self.device.launch("relu_backward", Grid::strided(len), &args)
    }

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
    ) -> Result<()> {
        let parts = parts(s.c, rows * s.s);
        let partial = Arg::Ptr(self.device.scratch(2 * s.c * parts)?);
        let dims = [n32(rows), n32(s.c), n32(s.s), n32(parts)];
        let mut args = vec![self.p(x)];
        args.extend(dims);
        args.push(partial);
        let grid = Grid { blocks: (s.c * parts) as u32, threads: THREADS };
        self.device.launch("norm_partial", grid, &args)?;
        let mut args = vec![partial];
        args.extend(dims);
        args.extend([self.p(p.saved), self.p(p.running), Arg::F32(momentum), Arg::F32(eps)]);
        self.device.launch("norm_finish", Grid::channels(s.c), &args)?;
        self.apply(rows, s, p.gamma, p.saved, x, skip, relu, y, false, eps)
    }

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
    ) -> Result<()> {
        self.apply(rows, s, p.gamma, p.running, x, skip, relu, y, true, eps)
    }

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
    ) -> Result<()> {
        let parts = parts(s.c, rows * s.s);
        let partial = Arg::Ptr(self.device.scratch(2 * s.c * parts)?);
        let dims = [n32(rows), n32(s.c), n32(s.s)];
        let mut args = vec![self.p(x), self.p(y), self.p(dy), self.p(p.saved)];
        args.extend(dims);
        args.extend([n32(parts), Arg::I32(relu.into()), partial]);
        let grid = Grid { blocks: (s.c * parts) as u32, threads: THREADS };
        self.device.launch("norm_grad_partial", grid, &args)?;
        let args = [partial, n32(s.c), n32(parts), self.p(p.grad)];
        self.device.launch("norm_grad_finish", Grid::channels(s.c), &args)?;
        let skip = dskip.map_or(0, |d| self.device.addr(d.0));
        let mut args = vec![
            self.p(x),
            self.p(y),
            self.p(dy),
            self.p(p.saved),
            self.p(p.gamma),
            self.p(p.grad),
        ];
        args.extend(dims);
        args.extend([
            Arg::I32(relu.into()),
            self.p(dx.0),
            Arg::I32(dx.1.into()),
            Arg::Ptr(skip),
            Arg::I32(dskip.is_some_and(|d| d.1).into()),
        ]);
        self.device.launch("norm_grad_input", Grid::strided(rows * s.c * s.s), &args)
    }

    fn pool(&mut self, rows: usize, c: usize, s: usize, x: At, y: At) -> Result<()> {
        let args = [self.p(x), self.p(y), n32(rows * c), n32(s)];
        self.device.launch("pool", Grid::strided(rows * c), &args)
    }

    fn pool_backward(
        &mut self,
        rows: usize,
        c: usize,
        s: usize,
        dy: At,
        dx: At,
        acc: bool,
    ) -> Result<()> {
        let args = [self.p(dy), self.p(dx), n32(rows * c), n32(s), Arg::I32(acc.into())];
        self.device.launch("pool_backward", Grid::strided(rows * c * s), &args)
    }

    fn cross_entropy(
        &mut self,
        rows: usize,
        k: usize,
        z: At,
        delta: At,
        shift: At,
        per_label: bool,
        dz: At,
    ) -> Result<()> {
        let (labels, rowwise) = self.labels;
        let args = [
            self.p(z),
            Arg::Ptr(labels),
            self.p(delta),
            self.p(shift),
            Arg::I32(per_label.into()),
            n32(rows),
            n32(k),
            self.p(dz),
            Arg::Ptr(rowwise),
            Arg::Ptr(self.device.totals_addr()),
        ];
        self.device.launch("cross_entropy", Grid { blocks: 1, threads: THREADS }, &args)
    }

    fn totals(&mut self) -> Result<(f64, u64)> {
        let [loss, hits] = self.device.take_totals()?;
        Ok((loss, hits as u64))
    }

    fn sgd(
        &mut self,
        len: usize,
        w: At,
        g: At,
        v: At,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        let args = [
            self.p(w),
            self.p(g),
            self.p(v),
            n32(len),
            Arg::F32(lr),
            Arg::F32(momentum),
            Arg::F32(weight_decay),
        ];
        self.device.launch("sgd", Grid::strided(len), &args)
    }
}
