//! Reading and writing the tensors of burn's flex backend (the CPU) directly, for the fused
//! operations of [`linear`](crate::linear), [`conv`](crate::conv), [`norm`](crate::norm),
//! [`activation`](crate::activation), [`loss`](crate::loss) and [`optim`](crate::optim), and
//! the matrix products of the first two.

use std::borrow::Cow;
use std::cell::RefCell;

use std::fmt::Debug;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bytes, DType, Shape, Tensor};
use burn_flex::{FlexTensor, Layout};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The f32 tensor's values in row-major order (copied only when it is not contiguous).
pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()),
    }
}

/// A contiguous f32 tensor holding `v` (its buffer, without a copy).
pub(crate) fn tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(shape), DType::F32)
}

/// `len` zeros, written on rayon's threads when there are many: the fused operations' large
/// buffers (activations of tens of MB in ResNet-18), which the allocator hands back used, so
/// zeroing them on one thread left the others idle (4–5 % of a ResNet-18 step).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::new();
    grow(&mut v, len);
    v
}

/// Entries per chunk of [`grow`]'s zeroing.
const ZERO_CHUNK: usize = 1 << 15;

/// Appends `len` zeros to `v` (on rayon's threads when there are many) and returns them: for
/// buffers filled block by block, each block zeroed just before it is written, while it still
/// sits in the cache, instead of the whole buffer in one pass first.
pub(crate) fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let start = v.len();
    if len < 4 * ZERO_CHUNK {
        v.resize(start + len, 0.0);
    } else {
        v.reserve(len);
        v.spare_capacity_mut()[..len]
            .par_chunks_mut(ZERO_CHUNK)
            .for_each(|c| c.fill(MaybeUninit::new(0.0)));
        // SAFETY: the `len` entries after the first `start` were all written just above.
        unsafe { v.set_len(start + len) };
    }
    &mut v[start..]
}

/// A new buffer of `len` entries cut into chunks of `chunk` (the last may be shorter), each
/// zeroed and then handed to `fill` with its index, on rayon's threads: for outputs that `fill`
/// overwrites, so that the zeros go to the cache just before the values do, instead of a whole
/// pass over the buffer first (tens of MB in ResNet-18, about 4 % of its training step).
pub(crate) fn filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
        c.fill(MaybeUninit::new(0.0));
        // SAFETY: every entry of `c` was written just above, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        let c = unsafe { &mut *(std::ptr::from_mut(c) as *mut [f32]) };
        fill(i, c);
    });
    // SAFETY: the first `len` entries were all written above (each chunk zeroed).
    unsafe { v.set_len(len) };
    v
}

thread_local! {
    /// [`with_scratch`]'s buffers on this thread.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// `f` given two work buffers of `a` and `b` entries that hold whatever an earlier call on this
/// thread left there (NaN in this crate's unit tests, so that a read before a write shows), for
/// intermediate values of which every entry is written before it is read: Winograd's
/// transformed tiles, tens of MB per block in ResNet-18, which new zeroed buffers for every
/// convolution wrote over once more for nothing. The buffers are taken out while `f` runs: a
/// call nested on the same thread (rayon runs other work while a thread waits) gets buffers of
/// its own.
pub(crate) fn with_scratch<R>(
    a: usize,
    b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    let [mut x, mut y] = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for (buf, len) in [(&mut x, a), (&mut y, b)] {
        if buf.len() < len {
            grow(buf, len - buf.len());
        }
        if cfg!(test) {
            buf[..len].fill(f32::NAN);
        }
    }
    let r = f(&mut x[..a], &mut y[..b]);
    SCRATCH.with(|s| *s.borrow_mut() = [x, y]);
    r
}

/// A contiguous f32 tensor that the caller owns alone: `t` itself when it already is one, else
/// a copy, so that it can be written in place.
pub(crate) fn owned(mut t: FlexTensor) -> FlexTensor {
    let n = t.layout().shape().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.try_storage_mut::<f32>().is_some() {
        t
    } else {
        tensor(values(&t).into_owned(), t.layout().shape().clone())
    }
}

/// `t` itself (a shared handle) when it is contiguous, else a contiguous copy.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t.clone(),
        None => tensor(values(t).into_owned(), t.layout().shape().clone()),
    }
}

/// `f()` compiled for AVX-512 where the processor has it, else for the build's baseline (SSE2):
/// for the element-wise loops of the fused operations, which the compiler then vectorizes 16
/// f32 or 8 f64 wide instead of 4 or 2. The results are the same either way: the loops are
/// vectorized across independent entries (no sum is reordered) and no multiply and add are
/// fused into one rounding.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has the one feature `wide` is compiled for.
            return unsafe { wide(f) };
        }
    }
    f()
}

/// `vzeroupper`: marks the upper halves of the vector registers clean after faer's AVX-512
/// kernels, which leave them dirty; until then every instruction of code compiled for the
/// baseline (SSE) pays a transition penalty.
#[inline]
pub(crate) fn clean_upper_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the processor has the one feature `zero_upper` is compiled for.
            unsafe { zero_upper() };
        }
    }
}

/// Products smaller than this many multiply-adds run on the calling thread alone; larger ones
/// are cut into pieces of at least a quarter of this and 64 rows or columns (so that no piece
/// falls to faer's kernels for tiny or one-row products, which may sum in another order).
const SPLIT_MIN_WORK: usize = 1 << 18;

/// `dst ← lhs rhs` (or `dst + lhs rhs`) on rayon's threads, for the fused operations of
/// [`linear`](crate::linear) and [`conv`](crate::conv). The output is cut along its longer side
/// into one piece per thread (multiples of 16 rows or columns), each piece one sequential faer
/// product: on two cores `seli bench train` ran 3–10 % faster than with faer's own parallel
/// split (README, "Training throughput"). Each entry is one sequential sum over the inner dimension,
/// whatever the pieces: results do not depend on the thread count.
pub(crate) fn product(
    dst: MatMut<'_, f32>,
    accum: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
) {
    let parts = parts(dst.nrows(), dst.ncols(), lhs.ncols());
    split_product(dst, accum, lhs, rhs, parts, Start::Values);
}

/// How many pieces [`product`] cuts an `m × n` output with inner dimension `k` into.
fn parts(m: usize, n: usize, k: usize) -> usize {
    let work = m * n * k;
    match work < SPLIT_MIN_WORK {
        true => 1,
        false => rayon::current_num_threads().min(m.max(n) / 64).min(4 * work / SPLIT_MIN_WORK),
    }
    .max(1)
}

/// [`product`] into `dst` read as the row-major matrix with `lhs`'s rows and `rhs`'s columns.
pub(crate) fn product_rows(
    dst: &mut [f32],
    accum: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
) {
    product(MatMut::from_row_major_slice_mut(dst, lhs.nrows(), rhs.ncols()), accum, lhs, rhs);
}

/// `lhs rhs`, plus `row` on every row when given (a bias), in a new row-major buffer, split as
/// [`product`] is. The buffer is not filled as a whole first (a pass over the output on one
/// thread, about 3 % of an MLP's training step): without `row`, each piece's product overwrites
/// its entries without reading them (faer's `Accum::Replace`, which its kernels implement as
/// stores alone); with `row`, each piece's thread copies its part of `row` into its rows just
/// before its product adds to them. Zeroing the pieces first, even on their own threads, cost
/// the batch-norm MLP about 10 % of its training step (a write pass over cold memory).
pub(crate) fn product_new(
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    row: Option<&[f32]>,
) -> Vec<f32> {
    let (m, n) = (lhs.nrows(), rhs.ncols());
    assert!(row.is_none_or(|r| r.len() == n), "a start row of {n} entries");
    if lhs.ncols() == 0 {
        return (0..m).flat_map(|_| (0..n).map(|j| row.map_or(0.0, |r| r[j]))).collect();
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the view spans the `m n` entries of the buffer's capacity, row-major, and the
    // pieces are disjoint; each piece is written before anything reads it: replaced by its
    // product (stores only), or its rows copied from `row` before the product adds to them.
    let dst = unsafe { MatMut::from_raw_parts_mut(out.as_mut_ptr(), m, n, n as isize, 1) };
    let start = Start::Fresh(row);
    split_product(dst, Accum::Replace, lhs, rhs, parts(m, n, lhs.ncols()), start);
    // SAFETY: every entry was written (see above).
    unsafe { out.set_len(m * n) };
    out
}

/// How `count` matrices of `rows × cols` lie in one row-major buffer (see [`products`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Entries {
    /// `[count][rows][cols]`: matrix `i` is the `i`-th block of `rows · cols` entries.
    Stacked { rows: usize, cols: usize },
    /// `[rows][count][cols]`: row `r` of matrix `i` starts at `(r · count + i) · cols`.
    Interleaved { rows: usize, cols: usize },
}

/// A pointer that may cross to rayon's threads (for the disjoint views of [`products`]).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used to build views of disjoint parts of one buffer, one per thread.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Shared`, not its field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst_i ← lhs_i rhs_i` (or `dst_i + lhs_i rhs_i`) for the `count` matrices `dst_i` of `dst`
/// laid out as `entries` says, `(lhs_i, rhs_i) = factors(i)`: Winograd's 16 products per block.
/// The products run side by side on rayon's threads, each cut into pieces only when there are
/// more threads than products, rather than one after the other with each cut in pieces: on two
/// cores 16 products of 64 × 64 by 64 × 1024 took 0.43 ms side by side and 1.5 ms one after the
/// other (a throwaway program). Every entry is still one sequential sum (as in [`product`]): the
/// results do not depend on the thread count.
pub(crate) fn products<'a>(
    dst: &mut [f32],
    entries: Entries,
    count: usize,
    accum: Accum,
    factors: impl Fn(usize) -> (MatRef<'a, f32>, MatRef<'a, f32>) + Sync,
) {
    let (Entries::Stacked { rows, cols } | Entries::Interleaved { rows, cols }) = entries;
    assert!(dst.len() >= count * rows * cols, "{count} matrices of {rows} x {cols} in the buffer");
    let threads = rayon::current_num_threads().div_ceil(count.max(1));
    let one = |i: usize, view: MatMut<'_, f32>| {
        let (lhs, rhs) = factors(i);
        assert!(lhs.nrows() == rows && rhs.ncols() == cols, "factors of a {rows} x {cols} matrix");
        let pieces = parts(rows, cols, lhs.ncols()).min(threads);
        split_product(view, accum, lhs, rhs, pieces, Start::Values);
    };
    match entries {
        Entries::Stacked { .. } => dst[..count * rows * cols]
            .par_chunks_mut((rows * cols).max(1))
            .enumerate()
            .for_each(|(i, d)| one(i, MatMut::from_row_major_slice_mut(d, rows, cols))),
        Entries::Interleaved { .. } => {
            let base = Shared(dst.as_mut_ptr());
            (0..count).into_par_iter().for_each(|i| {
                // SAFETY: matrix `i` holds the entries `(r · count + i) · cols + j` for r < rows,
                // j < cols: inside the buffer (asserted above) and disjoint from every other
                // matrix's, so each thread writes its own; `dst` is borrowed mutably throughout.
                let view = unsafe {
                    MatMut::from_raw_parts_mut(
                        base.at(i * cols),
                        rows,
                        cols,
                        (count * cols) as isize,
                        1,
                    )
                };
                one(i, view);
            });
        }
    }
}

/// What a product's destination holds before it.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Values (the caller's `Accum` says what to do with them).
    Values,
    /// Nothing yet, its columns unit-strided: the product replaces it (`None`), or each piece
    /// copies its part of this row into its rows first and the product adds to them.
    Fresh(Option<&'a [f32]>),
}

/// The product cut into `parts` pieces.
fn split_product(
    dst: MatMut<'_, f32>,
    accum: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    parts: usize,
    start: Start<'_>,
) {
    let (rows, cols) = (dst.nrows(), dst.ncols());
    let long = rows.max(cols);
    // The first piece: `first` of the `parts` shares, rounded to 16.
    let first = parts / 2;
    let cut = (long * first / parts.max(1)).div_ceil(16) * 16;
    if parts < 2 || cut == 0 || cut >= long {
        let accum = match start {
            Start::Values => accum,
            Start::Fresh(None) => Accum::Replace,
            Start::Fresh(Some(row)) => {
                assert_eq!(dst.col_stride(), 1, "a fresh product's rows are contiguous");
                for i in 0..rows {
                    // SAFETY: row `i` of the piece, `cols` entries in bounds and this piece's
                    // alone; `row` has `cols` entries.
                    unsafe {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), dst.ptr_at_mut(i, 0), cols)
                    };
                }
                Accum::Add
            }
        };
        matmul(dst, accum, lhs, rhs, 1.0, Par::Seq);
        clean_upper_state();
        return;
    }
    let rest = parts - first;
    if rows >= cols {
        let (top, bottom) = dst.split_at_row_mut(cut);
        let (upper, lower) = lhs.split_at_row(cut);
        rayon::join(
            || split_product(top, accum, upper, rhs, first, start),
            || split_product(bottom, accum, lower, rhs, rest, start),
        );
    } else {
        let (left, right) = dst.split_at_col_mut(cut);
        let (front, back) = rhs.split_at_col(cut);
        let (a, b) = match start {
            Start::Fresh(Some(r)) => (Start::Fresh(Some(&r[..cut])), Start::Fresh(Some(&r[cut..]))),
            other => (other, other),
        };
        rayon::join(
            || split_product(left, accum, lhs, front, first, a),
            || split_product(right, accum, lhs, back, rest, b),
        );
    }
}

/// `output` of the operation `op` on `parents`, registered with burn's autodiff: `op` gets
/// `state` back in the backward pass when some parent is tracked.
pub(crate) fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    parents: [NodeGuard; N],
    state: O::State,
    output: FlexTensor,
) -> Tensor<D> {
    let out = match op.prepare::<NoCheckpointing>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive::<Autodiff<Flex>>(out)
}

/// What an operation with two parents (an input and a weight) keeps for its backward pass.
pub(crate) trait TwoParents: Clone + Send + Debug + 'static {
    /// Registers the gradients of the parents that are tracked (`Some` node), given `dy`, the
    /// gradient of the output.
    fn backward(&self, dy: &FlexTensor, parents: [Option<NodeId>; 2], grads: &mut Gradients);
}

/// The operation whose backward pass is its state's ([`TwoParents`]).
#[derive(Debug)]
pub(crate) struct TwoParentOp<S>(PhantomData<S>);

impl<S> TwoParentOp<S> {
    pub(crate) fn new() -> Self {
        TwoParentOp(PhantomData)
    }
}

impl<S: TwoParents> Backward<Flex, 2> for TwoParentOp<S> {
    type State = S;

    fn backward(self, ops: Ops<S, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: FlexTensor = grads.consume::<Flex>(&ops.node);
        ops.state.backward(&dy, ops.parents.map(|p| p.map(|node| node.id)), grads);
    }
}

/// What an operation with one parent keeps for its backward pass.
pub(crate) trait OneParent: Clone + Send + Debug + 'static {
    /// The gradient of the parent, given `dy`, the gradient of the output.
    fn backward(self, dy: FlexTensor) -> FlexTensor;
}

/// The operation whose backward pass is its state's ([`OneParent`]).
#[derive(Debug)]
pub(crate) struct OneParentOp<S>(PhantomData<S>);

impl<S> OneParentOp<S> {
    pub(crate) fn new() -> Self {
        OneParentOp(PhantomData)
    }
}

impl<S: OneParent> Backward<Flex, 1> for OneParentOp<S> {
    type State = S;

    fn backward(self, ops: Ops<S, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: FlexTensor = grads.consume::<Flex>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<Flex>(node.id, ops.state.backward(dy));
        }
    }
}

/// Helpers of the tests of the fused operations.
#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::{Gradients, Tensor};

    /// The tensor's values in f64.
    pub(crate) fn f64s<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_into_vec::<f64>().expect("floats")
    }

    /// `sin(i a)` for `i < len`: values spread over [-1, 1] without a pattern the operations
    /// could be blind to.
    pub(crate) fn seq(len: usize, a: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * a).sin()).collect()
    }

    /// `y`, `∂W` and, when `x` is tracked, `∂x`, of `Σ y ⊙ r` with `r` a fixed pattern (`y` of
    /// `x` through a layer with weight `w`); the gradients for the rest.
    pub(crate) fn weighted_sum_grads<const D: usize, const E: usize>(
        y: Tensor<D>,
        w: &Tensor<E>,
        x: &Tensor<D>,
        track_x: bool,
    ) -> (Vec<Vec<f64>>, Gradients) {
        let r = Tensor::<D>::from_data(
            burn::tensor::TensorData::new(seq(y.shape().num_elements(), 1.3), y.dims()),
            &y.device(),
        );
        let grads = (y.clone() * r).sum().backward();
        let mut out = vec![f64s(y), f64s(w.grad(&grads).expect("∂W"))];
        if track_x {
            out.push(f64s(x.grad(&grads).expect("∂x")));
        } else {
            assert!(x.grad(&grads).is_none(), "an untracked input gets no gradient");
        }
        (out, grads)
    }

    /// `f` on a pool of `threads` threads.
    pub(crate) fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }
}

#[cfg(test)]
mod tests {
    use faer::Mat;

    use super::testing::{on_threads, seq};
    use super::*;

    /// The loops of batch norm and the optimizer give the same bits compiled for AVX-512 (where
    /// this processor has it) as for the baseline: an affine map in f32 and running f64 sums
    /// across channels, as in `norm`.
    #[test]
    fn vectorized_loops_give_the_baseline_bits() {
        let (x, z) = (seq(4096, 0.37), seq(4096, 0.91));
        let loops = || {
            let (mut s1, mut s2) = (vec![0.0f64; 64], vec![0.0f64; 64]);
            let mut out = vec![0.0f32; x.len()];
            for ((o, xr), zr) in out.chunks_exact_mut(64).zip(x.chunks_exact(64)).zip(z.chunks(64))
            {
                for (j, ((o, &u), &v)) in o.iter_mut().zip(xr).zip(zr).enumerate() {
                    *o = 1.7 * u + 0.3 * v - 0.2;
                    let d = f64::from(u) - 0.1;
                    s1[j] += d;
                    s2[j] += d * f64::from(v);
                }
            }
            (out, s1, s2)
        };
        let (wide, plain) = (vectorized(loops), loops());
        assert!(wide.0.iter().zip(&plain.0).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(wide.1.iter().zip(&plain.1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(wide.2.iter().zip(&plain.2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// New zero buffers are zeros at every size, also where the allocator hands back a block
    /// that held NaNs, on one thread and on three; so are the entries [`grow`] appends (the
    /// ones before kept) and those [`filled`]'s `fill` leaves alone, and `fill` gets every chunk
    /// once with its index.
    #[test]
    fn new_zero_buffers_are_zero() {
        let zero = |v: &[f32]| v.iter().all(|&x| x.to_bits() == 0);
        for len in [0, 5, (1 << 17) - 1, 1 << 17, 300_007] {
            for threads in [1, 3] {
                drop(vec![f32::NAN; len]);
                let v = on_threads(threads, || zeros(len));
                assert!(v.len() == len && zero(&v), "{len} entries");
                drop(vec![f32::NAN; len + 7]);
                let mut v = Vec::with_capacity(1);
                v.extend([1.0f32, 2.0]);
                let tail = on_threads(threads, || grow(&mut v, len)).len();
                assert!(tail == len && v[..2] == [1.0, 2.0] && zero(&v[2..]), "grow {len}");
                drop(vec![f32::NAN; len]);
                let chunk = 1000;
                let v = on_threads(threads, || {
                    filled(len, chunk, |i, c| {
                        assert!(zero(c) && c.len() == chunk.min(len - i * chunk));
                        c[0] = i as f32 + 1.0;
                    })
                });
                for (i, c) in v.chunks(chunk).enumerate() {
                    assert!(c[0] == i as f32 + 1.0 && zero(&c[1..]), "filled {len}, chunk {i}");
                }
                assert_eq!(v.len(), len);
            }
        }
    }

    /// Scratch buffers have the sizes asked for and NaN in every entry (under test), also
    /// when reused at another size; a nested call gets buffers of its own, and the outer
    /// call's writes are not disturbed by it.
    #[test]
    fn scratch_buffers_are_poisoned_and_not_shared() {
        for (a, b) in [(10, 3), (2, 300_000), (0, 7)] {
            with_scratch(a, b, |x, y| {
                assert!(x.len() == a && y.len() == b && x.iter().chain(&*y).all(|v| v.is_nan()));
                x.fill(1.0);
                y.fill(2.0);
                with_scratch(b, a, |u, w| {
                    assert!(u.len() == b && w.len() == a);
                    assert!(u.iter().chain(&*w).all(|v| v.is_nan()), "fresh nested buffers");
                    u.fill(3.0);
                });
                assert!(x.iter().all(|&v| v == 1.0) && y.iter().all(|&v| v == 2.0));
            });
        }
    }

    /// Products side by side equal faer's sequential products one by one, entry for entry,
    /// in both layouts, replacing and accumulating, with fewer products than threads and more,
    /// on 1 to 3 and 16 threads; the entries of the buffer beyond the matrices stay as they were.
    #[test]
    fn products_side_by_side_equal_the_sequential_products() {
        for (count, rows, inner, cols) in [(16, 70, 45, 130), (3, 129, 200, 64), (5, 1, 7, 3)] {
            let lhs: Vec<Mat<f32>> = (0..count)
                .map(|i| Mat::from_fn(rows, inner, |r, k| ((i * 7 + r * 3 + k) as f32 * 0.3).sin()))
                .collect();
            let rhs: Vec<Mat<f32>> = (0..count)
                .map(|i| Mat::from_fn(inner, cols, |k, c| ((i * 5 + k * 2 + c) as f32 * 0.7).sin()))
                .collect();
            let len = count * rows * cols;
            let start: Vec<f32> = (0..len + 9).map(|e| (e as f32 * 0.11).cos()).collect();
            let layouts = [Entries::Stacked { rows, cols }, Entries::Interleaved { rows, cols }];
            for entries in layouts {
                let at = |i: usize, r: usize, c: usize| match entries {
                    Entries::Stacked { .. } => (i * rows + r) * cols + c,
                    Entries::Interleaved { .. } => (r * count + i) * cols + c,
                };
                for accum in [Accum::Replace, Accum::Add] {
                    let mut want = start.clone();
                    for i in 0..count {
                        let mut m = Mat::from_fn(rows, cols, |r, c| start[at(i, r, c)]);
                        matmul(m.as_mut(), accum, lhs[i].as_ref(), rhs[i].as_ref(), 1.0, Par::Seq);
                        (0..rows * cols).for_each(|e| {
                            want[at(i, e / cols, e % cols)] = m[(e / cols, e % cols)]
                        });
                    }
                    for threads in [1, 2, 3, 16] {
                        let mut got = start.clone();
                        on_threads(threads, || {
                            products(&mut got, entries, count, accum, |i| {
                                (lhs[i].as_ref(), rhs[i].as_ref())
                            })
                        });
                        let what = format!("{count} of {rows}x{inner}x{cols}, {entries:?}");
                        assert!(got == want, "{what}, {accum:?}, {threads} threads");
                    }
                }
            }
        }
    }

    /// The split product equals faer's sequential one entry for entry (each entry one
    /// sequential sum whatever the pieces), into a given matrix or a new buffer (started with
    /// zeros or a repeated row), for tall and wide outputs, sizes not multiples of
    /// 16, an inner dimension past faer's blocks of 512, one row, one inner index or one column,
    /// transposed views, replacing and
    /// accumulating, on 1 to 5 and 16 threads; and equals the definition
    /// `Σ_l lhs[i, l] rhs[l, j]` in f64 to rounding.
    #[test]
    fn split_products_equal_the_sequential_product() {
        let cases =
            [(300, 70, 45), (37, 90, 260), (129, 129, 129), (5, 7, 3), (150, 1100, 200), (4, 0, 3)]
                .into_iter()
                // One row, one inner index, one column: faer's vector and rank-one paths.
                .chain([(1, 300, 260), (300, 1, 260), (260, 300, 1)]);
        for (m, k, n) in cases {
            let (av, bv) = (seq(m * k, 0.3), seq(n * k, 0.7));
            let a = Mat::<f32>::from_fn(m, k, |i, j| av[i * k + j]);
            let bt = Mat::<f32>::from_fn(n, k, |i, j| bv[i * k + j]);
            let (lhs, rhs) = (a.as_ref(), bt.as_ref().transpose());
            let start = Mat::<f32>::from_fn(m, n, |i, j| (i as f32 - j as f32) * 0.01);
            for accum in [Accum::Replace, Accum::Add] {
                let mut want = start.clone();
                matmul(want.as_mut(), accum, lhs, rhs, 1.0, Par::Seq);
                for threads in [1, 2, 3, 4, 5, 16] {
                    let mut got = start.clone();
                    on_threads(threads, || product(got.as_mut(), accum, lhs, rhs));
                    assert!(got == want, "{m}x{k}x{n}, {accum:?}, {threads} threads");
                    // Into a new buffer: replaced from zeros, or added to a repeated row (the
                    // first row of `start`).
                    let row: Vec<f32> = (0..n).map(|j| start[(0, j)]).collect();
                    let add = accum == Accum::Add;
                    // The allocator likely hands back this NaN-filled block: an entry read
                    // before it is written would show.
                    drop(vec![f32::NAN; m * n]);
                    let fresh =
                        on_threads(threads, || product_new(lhs, rhs, add.then_some(&row[..])));
                    // Against faer's sequential product into a row-major matrix, as the new
                    // buffer is (faer's one-row paths sum in an order that follows the layout).
                    let mut want: Vec<f32> =
                        (0..m * n).map(|e| if add { row[e % n] } else { 0.0 }).collect();
                    let view = MatMut::from_row_major_slice_mut(&mut want, m, n);
                    matmul(view, accum, lhs, rhs, 1.0, Par::Seq);
                    assert!(fresh == want, "{m}x{k}x{n}, new buffer, row {add}, {threads} threads");
                }
                for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3)] {
                    let sum: f64 =
                        (0..k).map(|l| f64::from(lhs[(i, l)]) * f64::from(rhs[(l, j)])).sum();
                    let base = if accum == Accum::Add { f64::from(start[(i, j)]) } else { 0.0 };
                    let close =
                        (f64::from(want[(i, j)]) - base - sum).abs() < 1e-4 * (1.0 + sum.abs());
                    assert!(close, "{m}x{k}x{n} entry ({i}, {j})");
                }
            }
        }
    }
}
