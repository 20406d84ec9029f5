//! The convolutions of ResNet-18: burn's [`Conv2d`] module (its parameters and checkpoint
//! encoding), with its training step on the CPU as one autodiff operation built on faer's matrix
//! products over blocks of several images, and its evaluation (forward pass alone) on the same
//! products.
//!
//! burn's flex backend convolves image by image (its weight repacked for every image, columns of
//! at most 512 output positions), differentiates the weight through a second convolution whose
//! kernel is the output gradient, and the input through a transposed convolution. Here, for
//! `x` of shape `[N, C, H, W]`, a weight `W` of shape `[O, C, kh, kw]`, stride `s` and zero
//! padding `p`, images are taken in blocks of `G` (`G` fixed by the shape, so that a block's
//! products have about 2 048 columns), and:
//!
//! - 3×3 kernels of stride 1 with at least 64 channels in and out (`WINOGRAD_MIN_CHANNELS`;
//!   thirteen of ResNet-18's twenty convolutions at width 64, all but the stem, and nearly all
//!   of its arithmetic) go through Winograd's F(2×2, 3×3) (`conv/winograd.rs`): 16 products
//!   per pair of channels and 2×2 outputs instead of 36;
//! - the others lay the input patches of the block side by side as the columns of `X_G`
//!   (`[K, G·P]`, `K = C·kh·kw`, `P = Ho·Wo`, `W` read as the matrix `[O, K]`): forward
//!   `Y_G = W X_G`; backward `∂W = Σ_G ∂Y_G X_Gᵀ` and, only when `x` is tracked (not for the
//!   input images), `∂X_G = Wᵀ ∂Y_G`, scattered back onto the input positions each column came
//!   from (`∂x[n, c, h, w] = Σ ∂X_G` over the patch entries that read `x[n, c, h, w]`).
//!
//! Either way the blocks' weight gradients are added in order and each product splits its
//! output entries, not its sums, over the threads: results do not depend on the thread count.
//! The columns (and Winograd's transformed tiles) are rebuilt in the backward pass rather than
//! kept (they are several times the input's size). Layers with a bias, groups, dilation or
//! `Same` padding, other devices (CUDA) and other float types are burn's module unchanged.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use faer::{Accum, MatRef};
use rayon::prelude::*;

mod winograd;

use crate::flex::{TwoParentOp, TwoParents, contiguous, grow, product_rows, record, tensor, zeros};

/// About this many columns (output positions of whole images) per block of the products.
const BLOCK_COLUMNS: usize = 2048;

/// Winograd's transforms cost a few passes over each input and output channel, its products
/// save work in proportion to both channel counts: with fewer channels than this, in or out (the
/// 3-channel stem, the first stages of narrow networks), the columns are faster. Measured on the
/// development machine: ResNet-18 of width 16 on Fashion-MNIST, one epoch of training, 12.7 s
/// from 64 against 14.2 s with every 3×3 convolution through Winograd and 14.5–15.0 s with none.
const WINOGRAD_MIN_CHANNELS: usize = 64;

/// `layer` applied to `x` (`[N, C, H, W]`): the fused step when `x` is an f32 tensor of the
/// flex backend (tracked or not) and the layer has no bias, one group, no dilation and explicit
/// (or no) padding; burn's [`Conv2d::forward`] otherwise.
pub fn conv2d(layer: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let fused =
        if x.device().is_autodiff() { flex_conv(layer, &x, None) } else { flex_infer(layer, &x) };
    fused.unwrap_or_else(|| layer.forward(x))
}

type Ad = Autodiff<Flex>;

/// The geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    /// Images, input channels, input height and width.
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    /// Output channels, kernel height and width.
    o: usize,
    kh: usize,
    kw: usize,
    /// Strides and the padding before the first row and column.
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    /// Output height and width.
    ho: usize,
    wo: usize,
    /// Images per block of columns.
    g: usize,
}

impl Geometry {
    /// Whether Winograd's F(2×2, 3×3) computes it ([`winograd`]): 3×3 kernels, stride 1, and
    /// at least [`WINOGRAD_MIN_CHANNELS`] channels in and out.
    fn winograd(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw) == (3, 3, 1, 1)
            && self.c.min(self.o) >= WINOGRAD_MIN_CHANNELS
    }

    /// `K`, the rows of the column matrices.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// `P`, the output positions of one image.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// The blocks: first image and number of images.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.n).step_by(self.g).map(|n0| (n0, self.g.min(self.n - n0)))
    }

    /// Writes into `cols` (`[K, g·P]`, row-major) the patches of images `n0..n0 + g` of `x`.
    fn im2col(&self, x: &[f32], n0: usize, g: usize, cols: &mut [f32]) {
        let l = g * self.p();
        cols[..self.k() * l]
            .par_chunks_mut(l)
            .enumerate()
            .for_each(|(row, dst)| self.im2col_row(x, n0, row, dst));
    }

    /// Row `row` of the patches of images `n0..`: kernel entry `(c, i, j)` at every output
    /// position.
    fn im2col_row(&self, x: &[f32], n0: usize, row: usize, dst: &mut [f32]) {
        let (c, i, j) = (row / (self.kh * self.kw), row / self.kw % self.kh, row % self.kw);
        for (gi, img) in dst.chunks_exact_mut(self.p()).enumerate() {
            let plane = &x[((n0 + gi) * self.c + c) * self.h * self.w..][..self.h * self.w];
            for (oh, out) in img.chunks_exact_mut(self.wo).enumerate() {
                match (oh * self.sh + i).checked_sub(self.ph).filter(|&r| r < self.h) {
                    Some(r) => self.fill_row(&plane[r * self.w..][..self.w], j, out),
                    None => out.fill(0.0),
                }
            }
        }
    }

    /// One output row of the patches: `out[ow] = src[ow·sw + j − pw]`, zero outside `src`.
    fn fill_row(&self, src: &[f32], j: usize, out: &mut [f32]) {
        let (first, end) = self.inside(j);
        out[..first].fill(0.0);
        out[end..].fill(0.0);
        if self.sw == 1 {
            let start = first + j - self.pw;
            out[first..end].copy_from_slice(&src[start..start + end - first]);
        } else {
            for (ow, v) in out.iter_mut().enumerate().take(end).skip(first) {
                *v = src[ow * self.sw + j - self.pw];
            }
        }
    }

    /// The output columns `first..end` whose kernel column `j` falls inside the input row.
    fn inside(&self, j: usize) -> (usize, usize) {
        let first = self.pw.saturating_sub(j).div_ceil(self.sw).min(self.wo);
        let end = match (self.w + self.pw).checked_sub(j + 1) {
            Some(last) => (last / self.sw + 1).min(self.wo),
            None => 0,
        };
        (first, end.max(first))
    }

    /// Adds the column gradients `dcols` (`[K, g·P]`) of images `n0..n0 + g` onto the input
    /// positions they came from, in `dx` (the gradient of those images, `[g, C, H, W]`).
    fn col2im(&self, dcols: &[f32], g: usize, dx: &mut [f32]) {
        let l = g * self.p();
        dx.par_chunks_mut(self.h * self.w)
            .enumerate()
            .for_each(|(index, plane)| self.col2im_plane(dcols, l, index, plane));
    }

    /// Adds onto plane `index` (image `index / C`, channel `index % C`) of the block's input
    /// gradient its part of the column gradients `dcols` (`l` columns).
    fn col2im_plane(&self, dcols: &[f32], l: usize, index: usize, plane: &mut [f32]) {
        let (p, gi, c) = (self.p(), index / self.c, index % self.c);
        for i in 0..self.kh {
            for j in 0..self.kw {
                let row = (c * self.kh + i) * self.kw + j;
                let src = &dcols[row * l + gi * p..][..p];
                let (first, end) = self.inside(j);
                for (oh, vals) in src.chunks_exact(self.wo).enumerate() {
                    let Some(r) = (oh * self.sh + i).checked_sub(self.ph) else { continue };
                    if r >= self.h {
                        continue;
                    }
                    let dst = &mut plane[r * self.w..][..self.w];
                    if self.sw == 1 {
                        let start = first + j - self.pw;
                        let dst = &mut dst[start..start + end - first];
                        dst.iter_mut().zip(&vals[first..end]).for_each(|(d, v)| *d += v);
                    } else {
                        for (ow, v) in vals.iter().enumerate().take(end).skip(first) {
                            dst[ow * self.sw + j - self.pw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The layer's geometry for `x`'s shape and `block` columns per product, `None` where the fused
/// step does not apply (bias, groups, dilation, `Same` padding, mismatched shapes: burn's module
/// then runs, and names a mismatch).
fn geometry(layer: &Conv2d, x: &[usize], wshape: &[usize], block: usize) -> Option<Geometry> {
    let (top, left, bottom, right) = match layer.padding {
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        PaddingConfig2d::Same => return None,
    };
    let plain = layer.bias.is_none() && layer.groups == 1 && layer.dilation == [1, 1];
    let [sh, sw] = layer.stride;
    if !plain || x.len() != 4 || wshape[1] != x[1] || sh == 0 || sw == 0 {
        return None;
    }
    let (kh, kw) = (wshape[2], wshape[3]);
    let ho = (x[2] + top + bottom).checked_sub(kh)? / sh + 1;
    let wo = (x[3] + left + right).checked_sub(kw)? / sw + 1;
    let (n, c, h, w, o) = (x[0], x[1], x[2], x[3], wshape[0]);
    let mut geo = Geometry { n, c, h, w, o, kh, kw, sh, sw, ph: top, pw: left, ho, wo, g: 1 };
    // Columns of the products per image: output positions, or Winograd's tiles (four outputs
    // each: half as many columns per block, as each holds 16 rows per channel, not 9).
    let (per_image, block) = match geo.winograd() {
        true => (geo.tiles().0 * geo.tiles().1, block.div_ceil(2)),
        false => (ho * wo, block),
    };
    geo.g = block.div_ceil(per_image).clamp(1, n.max(1));
    Some(geo)
}

/// The training step on the flex backend with blocks of about `block` columns (else
/// [`BLOCK_COLUMNS`]); `None` when the tensors are not f32 tensors of autodiff over flex or the
/// layer is not one the fused step covers.
fn flex_conv(layer: &Conv2d, x: &Tensor<4>, block: Option<usize>) -> Option<Tensor<4>> {
    let x = x.clone().try_into_primitive::<Ad>().ok()?;
    let w = layer.weight.val().try_into_primitive::<Ad>().ok()?;
    let saved = Saved::new(layer, x.primitive(), w.primitive(), block)?;
    let y = saved.forward();
    Some(record(TwoParentOp::new(), [x.node(), w.node()], saved, y))
}

/// The forward pass alone (evaluation) on plain flex tensors.
fn flex_infer(layer: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let x = x.clone().try_into_primitive::<Flex>().ok()?;
    let w = layer.weight.val().try_into_primitive::<Flex>().ok()?;
    Some(Tensor::from_primitive::<Flex>(Saved::new(layer, &x, &w, None)?.forward()))
}

/// What the backward pass needs: the input, the weight and the geometry.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    geo: Geometry,
}

impl Saved {
    /// The operation of `layer` on `x` with the weight `w`; `None` unless both are f32 and the
    /// layer is one the fused step covers.
    fn new(layer: &Conv2d, x: &FlexTensor, w: &FlexTensor, block: Option<usize>) -> Option<Self> {
        if [x, w].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        let geo = geometry(layer, xs.as_slice(), ws.as_slice(), block.unwrap_or(BLOCK_COLUMNS))?;
        Some(Saved { x: contiguous(x), w: contiguous(w), geo })
    }

    fn input(&self) -> &[f32] {
        self.x.as_slice::<f32>().expect("contiguous input")
    }

    /// The weight as the matrix `[O, K]`.
    fn weight(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(self.weights(), self.geo.o, self.geo.k())
    }

    fn weights(&self) -> &[f32] {
        self.w.as_slice::<f32>().expect("contiguous weight")
    }

    /// `y` (`[N, O, Ho, Wo]`).
    fn forward(&self) -> FlexTensor {
        let geo = &self.geo;
        let y = match geo.winograd() {
            true => winograd::forward(geo, self.input(), self.weights()),
            false => self.forward_by_columns(),
        };
        tensor(y, [geo.n, geo.o, geo.ho, geo.wo].into())
    }

    /// `y` through the patches laid out as columns.
    fn forward_by_columns(&self) -> Vec<f32> {
        let geo = &self.geo;
        let (o, k, p) = (geo.o, geo.k(), geo.p());
        let mut y = Vec::with_capacity(geo.n * o * p);
        let mut cols = zeros(k * geo.g * p);
        let mut block = if geo.g > 1 { zeros(o * geo.g * p) } else { Vec::new() };
        for (n0, g) in geo.blocks() {
            let l = g * p;
            geo.im2col(self.input(), n0, g, &mut cols);
            let rhs = MatRef::from_row_major_slice(&cols[..k * l], k, l);
            let out = grow(&mut y, o * l);
            if g == 1 {
                product_rows(out, Accum::Replace, self.weight(), rhs);
            } else {
                product_rows(&mut block[..o * l], Accum::Replace, self.weight(), rhs);
                // Column block gi of row oc is image n0 + gi's output channel oc.
                out.par_chunks_mut(p).enumerate().for_each(|(at, dst)| {
                    let (gi, oc) = (at / o, at % o);
                    dst.copy_from_slice(&block[oc * l + gi * p..][..p]);
                });
            }
        }
        y
    }

    /// `(∂x, ∂W)` through the patches laid out as columns, each when asked for.
    fn backward_by_columns(
        &self,
        dy: &[f32],
        want_dx: bool,
        want_dw: bool,
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let geo = &self.geo;
        let (o, k, p) = (geo.o, geo.k(), geo.p());
        let mut dw = vec![0.0f32; o * k];
        let plane = geo.c * geo.h * geo.w;
        let mut dx = want_dx.then(|| Vec::with_capacity(geo.n * plane));
        let mut cols = zeros(k * geo.g * p);
        let mut block = if geo.g > 1 { zeros(o * geo.g * p) } else { Vec::new() };
        for (index, (n0, g)) in geo.blocks().enumerate() {
            let l = g * p;
            let dyb = &dy[n0 * o * p..(n0 + g) * o * p];
            // ∂Y of the block as `[O, g·P]`: image gi's channel oc is column block gi of row oc.
            let dyb = if g == 1 {
                dyb
            } else {
                block[..o * l].par_chunks_mut(l).enumerate().for_each(|(oc, row)| {
                    for (gi, dst) in row.chunks_exact_mut(p).enumerate() {
                        dst.copy_from_slice(&dyb[(gi * o + oc) * p..][..p]);
                    }
                });
                &block[..o * l]
            };
            let dyb = MatRef::from_row_major_slice(dyb, o, l);
            if want_dw {
                geo.im2col(self.input(), n0, g, &mut cols);
                let xt = MatRef::from_row_major_slice(&cols[..k * l], k, l).transpose();
                let accum = if index == 0 { Accum::Replace } else { Accum::Add };
                product_rows(&mut dw, accum, dyb, xt);
            }
            if let Some(dx) = dx.as_mut() {
                let wt = self.weight().transpose();
                product_rows(&mut cols[..k * l], Accum::Replace, wt, dyb);
                // Zeroed block by block, just before `col2im` adds onto it.
                geo.col2im(&cols[..k * l], g, grow(dx, g * plane));
            }
        }
        (dx, want_dw.then_some(dw))
    }
}

impl TwoParents for Saved {
    fn backward(&self, dy: &FlexTensor, [x, w]: [Option<NodeId>; 2], grads: &mut Gradients) {
        let geo = &self.geo;
        let dy = contiguous(dy);
        let dy = dy.as_slice::<f32>().expect("contiguous output gradient");
        let (want_dx, want_dw) = (x.is_some(), w.is_some());
        let (dx, dw) = match geo.winograd() {
            true => winograd::backward(geo, self.input(), self.weights(), dy, want_dx, want_dw),
            false => self.backward_by_columns(dy, want_dx, want_dw),
        };
        if let (Some(id), Some(dx)) = (x, dx) {
            grads.register::<Flex>(id, tensor(dx, [geo.n, geo.c, geo.h, geo.w].into()));
        }
        if let (Some(id), Some(dw)) = (w, dw) {
            grads.register::<Flex>(id, tensor(dw, [geo.o, geo.c, geo.kh, geo.kw].into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::flex::testing::{f64s, on_threads, seq, weighted_sum_grads};

    /// A layer: `[O, C, kh, kw]`, stride, padding (top, left, bottom, right).
    struct Case {
        shape: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: (usize, usize, usize, usize),
    }

    /// Stride 1 and 2, 3×3 and 1×1 and 2×3 kernels, padding none, symmetric and not, inputs not
    /// square; the first block sizes give one image per block, the last every image in one.
    /// The last three cases (3×3, stride 1, 64 channels or more) go through Winograd's
    /// transforms, with odd output heights and widths (tiles half outside) and padding of 0 to
    /// 2; the first, 3×3 of stride 1 with 3 channels, through the columns.
    const CASES: [Case; 8] = [
        Case { shape: [5, 3, 7, 6], weight: [4, 3, 3, 3], stride: [1, 1], padding: (1, 1, 1, 1) },
        Case { shape: [5, 3, 7, 6], weight: [4, 3, 3, 3], stride: [2, 2], padding: (1, 1, 1, 1) },
        Case { shape: [4, 6, 5, 5], weight: [3, 6, 1, 1], stride: [2, 2], padding: (0, 0, 0, 0) },
        Case { shape: [3, 2, 6, 7], weight: [5, 2, 2, 3], stride: [1, 2], padding: (2, 0, 1, 1) },
        Case { shape: [3, 2, 4, 5], weight: [2, 2, 3, 3], stride: [3, 1], padding: (0, 2, 0, 0) },
        Case {
            shape: [3, 64, 5, 8],
            weight: [72, 64, 3, 3],
            stride: [1, 1],
            padding: (0, 2, 1, 0),
        },
        Case {
            shape: [2, 80, 9, 4],
            weight: [64, 80, 3, 3],
            stride: [1, 1],
            padding: (0, 0, 0, 0),
        },
        Case {
            shape: [2, 64, 6, 7],
            weight: [64, 64, 3, 3],
            stride: [1, 1],
            padding: (1, 1, 1, 1),
        },
    ];

    fn layer(case: &Case, device: &Device) -> Conv2d {
        let [o, c, kh, kw] = case.weight;
        let (t, l, b, r) = case.padding;
        let mut layer = Conv2dConfig::new([c, o], [kh, kw])
            .with_stride(case.stride)
            .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
            .with_bias(false)
            .init(device);
        let w = TensorData::new(seq(o * c * kh * kw, 0.7), case.weight);
        layer.weight = Param::from_tensor(Tensor::from_data(w, device));
        layer
    }

    /// Output and gradients (W, and x when tracked) of Σ y ⊙ r through `f`.
    fn run(
        case: &Case,
        track_x: bool,
        f: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>,
    ) -> Vec<Vec<f64>> {
        let device = Device::flex().autodiff();
        let layer = layer(case, &device);
        let len = case.shape.iter().product();
        let x = Tensor::<4>::from_data(TensorData::new(seq(len, 0.37), case.shape), &device);
        let x = if track_x { x.require_grad() } else { x };
        weighted_sum_grads(f(&layer, x.clone()), &layer.weight.val(), &x, track_x).0
    }

    fn fused(block: usize) -> impl Fn(&Conv2d, Tensor<4>) -> Tensor<4> {
        move |l, x| flex_conv(l, &x, Some(block)).expect("the fused step applies")
    }

    fn assert_close(ours: &[Vec<f64>], reference: &[Vec<f64>], tol: f64, what: &str) {
        let names = ["y", "∂W", "∂x"];
        assert_eq!(ours.len(), reference.len(), "{what}");
        for (k, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: {}", names[k]);
            for (i, (u, v)) in a.iter().zip(b).enumerate() {
                let close = (u - v).abs() < tol * (1.0 + v.abs());
                assert!(close, "{what}: {}[{i}] {u} vs {v}", names[k]);
            }
        }
    }

    /// Reference: burn's own convolution, differentiated by its autodiff.
    #[test]
    fn fused_step_matches_burns_module() {
        for (index, case) in CASES.iter().enumerate() {
            for track_x in [false, true] {
                let burns = run(case, track_x, |l, x| l.forward(x));
                for block in [1, 20, 10_000] {
                    let ours = run(case, track_x, fused(block));
                    let what = format!("case {index}, x tracked {track_x}, block {block}");
                    assert_close(&ours, &burns, 1e-4, &what);
                }
            }
        }
    }

    /// Reference: the definitions in f64, written as loops over the output positions:
    /// `y[n,o,a,b] = Σ_{c,i,j} W[o,c,i,j] x[n,c,a·sh+i−pt, b·sw+j−pl]` (zero outside `x`),
    /// `∂W[o,c,i,j] = Σ_{n,a,b} ∂y[n,o,a,b] x[n,c,…]` and `∂x[n,c,…] += Σ_o ∂y[n,o,a,b] W[o,c,i,j]`.
    #[test]
    fn output_and_gradients_follow_the_definition() {
        for (index, case) in CASES.iter().enumerate() {
            let [n, c, h, w] = case.shape;
            let [o, _, kh, kw] = case.weight;
            let (pt, pl, pb, pr) = case.padding;
            let [sh, sw] = case.stride;
            let (ho, wo) = ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1);
            let x: Vec<f64> = seq(n * c * h * w, 0.37).into_iter().map(f64::from).collect();
            let wt: Vec<f64> = seq(o * c * kh * kw, 0.7).into_iter().map(f64::from).collect();
            let r: Vec<f64> = seq(n * o * ho * wo, 1.3).into_iter().map(f64::from).collect();
            let (mut y, mut dw, mut dx) =
                (vec![0.0; r.len()], vec![0.0; wt.len()], vec![0.0; x.len()]);
            for (ni, oi, a, b) in itertools(n, o, ho, wo) {
                let at = ((ni * o + oi) * ho + a) * wo + b;
                for (ci, i, j) in (0..c)
                    .flat_map(|ci| (0..kh).flat_map(move |i| (0..kw).map(move |j| (ci, i, j))))
                {
                    let (row, col) =
                        ((a * sh + i) as isize - pt as isize, (b * sw + j) as isize - pl as isize);
                    if row < 0 || col < 0 || row as usize >= h || col as usize >= w {
                        continue;
                    }
                    let xi = ((ni * c + ci) * h + row as usize) * w + col as usize;
                    let wi = ((oi * c + ci) * kh + i) * kw + j;
                    y[at] += wt[wi] * x[xi];
                    dw[wi] += r[at] * x[xi];
                    dx[xi] += r[at] * wt[wi];
                }
            }
            let want = [y, dw, dx];
            for block in [1, 20, 10_000] {
                let ours = run(case, true, fused(block));
                assert_close(&ours, &want, 1e-4, &format!("case {index}, block {block}"));
            }
        }
    }

    fn itertools(
        n: usize,
        o: usize,
        ho: usize,
        wo: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..n).flat_map(move |ni| {
            (0..o)
                .flat_map(move |oi| (0..ho).flat_map(move |a| (0..wo).map(move |b| (ni, oi, a, b))))
        })
    }

    /// The products split their outputs, not their sums, and the blocks are added in order:
    /// bit-identical results with one thread and with three, through Winograd's transforms
    /// (stride 1) and through the columns (stride 2).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        for stride in [1, 2] {
            let case = Case {
                shape: [6, 64, 9, 9],
                weight: [72, 64, 3, 3],
                stride: [stride, stride],
                padding: (1, 1, 1, 1),
            };
            let on = |threads| on_threads(threads, || run(&case, true, fused(100)));
            let (one, three) = (on(1), on(3));
            for (k, name) in ["y", "∂W", "∂x"].iter().enumerate() {
                assert!(
                    one[k] == three[k],
                    "stride {stride}: {name} differs between thread counts"
                );
            }
        }
    }

    /// Winograd for 3×3 kernels of stride 1 with at least [`WINOGRAD_MIN_CHANNELS`] channels in
    /// and out (ResNet-18's stages of width 64 and more), the columns for the rest (the stem, the
    /// strided and 1×1 convolutions, narrow stages).
    #[test]
    fn winograd_takes_wide_three_by_three_convolutions_of_stride_one() {
        let device = Device::flex();
        let picks = |c: usize, o: usize, k: usize, stride: usize| {
            let layer = Conv2dConfig::new([c, o], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(&device);
            let wshape = [o, c, k, k];
            geometry(&layer, &[2, c, 8, 8], &wshape, BLOCK_COLUMNS).expect("fused").winograd()
        };
        assert!(picks(64, 64, 3, 1) && picks(128, 64, 3, 1) && picks(512, 512, 3, 1));
        assert!(!picks(3, 64, 3, 1), "the stem");
        assert!(!picks(32, 32, 3, 1) && !picks(64, 32, 3, 1), "narrow stages");
        assert!(!picks(64, 128, 3, 2) && !picks(64, 128, 1, 1), "strided and 1×1");
    }

    /// Evaluation (plain flex tensors, no autodiff): the forward pass alone, as burn's.
    #[test]
    fn evaluation_matches_burns_forward() {
        let device = Device::flex();
        for (index, case) in CASES.iter().enumerate() {
            let layer = layer(case, &device);
            let len = case.shape.iter().product();
            let x = Tensor::<4>::from_data(TensorData::new(seq(len, 0.37), case.shape), &device);
            assert!(flex_infer(&layer, &x).is_some(), "case {index}: the fused pass applies");
            let (ours, burns) = (f64s(conv2d(&layer, x.clone())), f64s(layer.forward(x)));
            assert_close(&[ours], &[burns], 1e-4, &format!("case {index}"));
        }
    }

    /// Layers the fused step does not cover run burn's module: a bias, `Same` padding.
    #[test]
    fn other_layers_fall_back_to_burn() {
        let device = Device::flex().autodiff();
        let x =
            Tensor::<4>::from_data(TensorData::new(seq(2 * 3 * 5 * 5, 0.3), [2, 3, 5, 5]), &device);
        let with_bias = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
        let same = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        for layer in [with_bias, same] {
            assert!(flex_conv(&layer, &x, None).is_none());
            let (ours, burns) = (f64s(conv2d(&layer, x.clone())), f64s(layer.forward(x.clone())));
            assert_eq!(ours, burns);
        }
    }
}
