//! 3×3 convolutions of stride 1 by Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray,
//! "Fast algorithms for convolutional neural networks", 2016): each 2×2 block of outputs from
//! the 4×4 block of inputs it reads, with 16 products per input and output channel instead of 36.
//!
//! With `Bᵀ`, `G` and `Aᵀ` the transforms below, a 4×4 input tile `d` and a 3×3 kernel `g` give
//! the 2×2 outputs `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (a correlation, as the network's convolution
//! is). Over channels, the 16 entries `ξ` are 16 independent matrix products:
//! `M_ξ = U_ξ V_ξ` with `U_ξ` (`[O, C]`) the transformed kernels and `V_ξ` (`[C, T]`) the
//! transformed input tiles of a block of `T` tiles. Backward, every step is linear and its
//! adjoint is applied in reverse: `∂M` from `∂y` (`A ∂y Aᵀ` per tile), `∂U_ξ = Σ_blocks ∂M_ξ V_ξᵀ`
//! then `∂g = Gᵀ ∂U G`, and `∂V_ξ = U_ξᵀ ∂M_ξ` then `∂d = B ∂V Bᵀ`, added onto the 16 inputs
//! each tile read (neighbouring tiles overlap by two rows and columns). These are the exact
//! gradients of the function computed; it differs from the direct sum only by rounding (tests
//! in the parent module compare it with burn's convolution and with the definition in f64).

use faer::{Accum, MatRef};
use rayon::prelude::*;

use super::Geometry;
use crate::flex::{Entries, grow, products, with_scratch, zeros};

/// `Bᵀ v` for a 4-vector.
#[inline(always)]
fn bt(v: [f32; 4]) -> [f32; 4] {
    [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]
}

/// `B v`, the adjoint of [`bt`].
#[inline(always)]
fn b(v: [f32; 4]) -> [f32; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], -v[3]]
}

/// `G v` for a 3-vector.
#[inline(always)]
fn g(v: [f32; 3]) -> [f32; 4] {
    [v[0], 0.5 * (v[0] + v[1] + v[2]), 0.5 * (v[0] - v[1] + v[2]), v[2]]
}

/// `Gᵀ v`, the adjoint of [`g`].
#[inline(always)]
fn gt(v: [f32; 4]) -> [f32; 3] {
    [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]]
}

/// `Aᵀ v` for a 4-vector.
#[inline(always)]
fn at(v: [f32; 4]) -> [f32; 2] {
    [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]
}

/// `L m R` for a square tile `m` (rows then columns), with `f` applied to every column and then
/// to every row.
fn both<const I: usize, const J: usize>(
    m: [[f32; I]; I],
    f: impl Fn([f32; I]) -> [f32; J],
) -> [[f32; J]; J] {
    let mut cols = [[0.0; J]; I];
    for s in 0..I {
        let out = f(std::array::from_fn(|r| m[r][s]));
        (0..J).for_each(|r| cols[s][r] = out[r]);
    }
    std::array::from_fn(|r| f(std::array::from_fn(|s| cols[s][r])))
}

/// Kernels per block of [`Geometry::transform_weight`]'s parallel loop.
const KERNEL_BLOCK: usize = 4096;

impl Geometry {
    /// Tiles per image: rows and columns of 2×2 output blocks.
    pub(super) fn tiles(&self) -> (usize, usize) {
        (self.ho.div_ceil(2), self.wo.div_ceil(2))
    }

    /// The input row that row `r` of tile row `y` reads (`2y + r` counting the padding), if
    /// it is inside the input.
    fn input_row(&self, y: usize, r: usize) -> Option<usize> {
        (2 * y + r).checked_sub(self.ph).filter(|&v| v < self.h)
    }

    /// The columns of a padded row of `wp` columns that hold input (from `pw`, at most `w`).
    fn input_columns(&self, wp: usize) -> std::ops::Range<usize> {
        self.pw..(self.pw + self.w).min(wp).max(self.pw)
    }

    /// Row `r` of the padded input of tile row `y` into `dst` (`2·tx + 2` columns, zero
    /// outside the input).
    fn padded_row(&self, plane: &[f32], y: usize, r: usize, dst: &mut [f32]) {
        match self.input_row(y, r) {
            Some(row) => {
                let cols = self.input_columns(dst.len());
                dst[..cols.start].fill(0.0);
                dst[cols.end..].fill(0.0);
                dst[cols.clone()].copy_from_slice(&plane[row * self.w..][..cols.len()]);
            }
            None => dst.fill(0.0),
        }
    }

    /// `V` of images `n0..n0 + g` of `x`: `[C][16][T]`, tile `t` of the block in column `t`.
    /// Per row of tiles: `Bᵀ` down the four input rows (whole rows at once), then `B` along
    /// them, tile by tile.
    fn transform_input(&self, x: &[f32], n0: usize, g: usize, v: &mut [f32]) {
        let (ty, tx) = self.tiles();
        let (t, wp) = (g * ty * tx, 2 * tx + 2);
        v[..self.c * 16 * t].par_chunks_mut(16 * t).enumerate().for_each(|(c, rows)| {
            let (mut d, mut tr) = (vec![0.0f32; 4 * wp], vec![0.0f32; 4 * wp]);
            let (mut ev, mut od) = (vec![0.0f32; tx + 1], vec![0.0f32; tx + 1]);
            for gi in 0..g {
                let plane = &x[((n0 + gi) * self.c + c) * self.h * self.w..][..self.h * self.w];
                for y in 0..ty {
                    for (r, dst) in d.chunks_exact_mut(wp).enumerate() {
                        self.padded_row(plane, y, r, dst);
                    }
                    columns(&d, &mut tr, wp, bt);
                    let base = (gi * ty + y) * tx;
                    for (i, t_i) in tr.chunks_exact(wp).enumerate() {
                        // Bᵀ along the row: tile x reads columns 2x..2x + 4, the even and odd
                        // ones apart so that every entry is a difference of two slices.
                        deinterleave(t_i, &mut ev, &mut od);
                        let (e0, e1, o0, o1) = (&ev[..tx], &ev[1..], &od[..tx], &od[1..]);
                        let row = |j: usize| (i * 4 + j) * t + base;
                        zip_into(&mut rows[row(0)..][..tx], e0, e1, |p, q| p - q);
                        zip_into(&mut rows[row(1)..][..tx], o0, e1, |p, q| p + q);
                        zip_into(&mut rows[row(2)..][..tx], e1, o0, |p, q| p - q);
                        zip_into(&mut rows[row(3)..][..tx], o0, o1, |p, q| p - q);
                    }
                }
            }
        });
    }

    /// Adds `B ∂V Bᵀ` of every tile onto the inputs it read: `dv` is `[C][16][T]`, `dx` the
    /// gradient of the block's images (`[g, C, H, W]`). The adjoint of
    /// [`transform_input`](Self::transform_input), step by step in reverse.
    fn transform_input_adjoint(&self, dv: &[f32], g: usize, dx: &mut [f32]) {
        let (ty, tx) = self.tiles();
        let (t, wp) = (g * ty * tx, 2 * tx + 2);
        dx.par_chunks_mut(self.h * self.w).enumerate().for_each(|(index, plane)| {
            let (gi, c) = (index / self.c, index % self.c);
            let rows = &dv[c * 16 * t..][..16 * t];
            let (mut dt, mut dd) = (vec![0.0f32; 4 * wp], vec![0.0f32; 4 * wp]);
            let (mut ev, mut od) = (vec![0.0f32; tx + 1], vec![0.0f32; tx + 1]);
            for y in 0..ty {
                let base = (gi * ty + y) * tx;
                for (i, dt_i) in dt.chunks_exact_mut(wp).enumerate() {
                    // B along the row, the adjoint of the forward step: even column x gets
                    // g0[x] and (g1 + g2 − g0)[x − 1], odd column x gets (g1 − g2 + g3)[x] and
                    // −g3[x − 1].
                    let e = |j: usize| &rows[(i * 4 + j) * t + base..][..tx];
                    let (g0, g1, g2, g3) = (e(0), e(1), e(2), e(3));
                    ev.fill(0.0);
                    od.fill(0.0);
                    for x in 0..tx {
                        ev[x] += g0[x];
                        ev[x + 1] += g1[x] + g2[x] - g0[x];
                        od[x] += g1[x] - g2[x] + g3[x];
                        od[x + 1] -= g3[x];
                    }
                    for (q, pair) in dt_i.chunks_exact_mut(2).enumerate() {
                        (pair[0], pair[1]) = (ev[q], od[q]);
                    }
                }
                columns(&dt, &mut dd, wp, b);
                let cols = self.input_columns(wp);
                for (r, src) in dd.chunks_exact(wp).enumerate() {
                    if let Some(row) = self.input_row(y, r) {
                        let dst = &mut plane[row * self.w..][..cols.len()];
                        dst.iter_mut().zip(&src[cols.clone()]).for_each(|(d, s)| *d += s);
                    }
                }
            }
        });
    }

    /// `U`: `[16][O][C]`, from the kernels `[O, C, 3, 3]`, blocks of kernels on rayon's
    /// threads.
    fn transform_weight(&self, w: &[f32]) -> Vec<f32> {
        let oc = self.o * self.c;
        let mut u = zeros(16 * oc);
        // Block `b` of every one of the 16 planes, for each block of kernels.
        let mut blocks: Vec<Vec<&mut [f32]>> =
            (0..oc.div_ceil(KERNEL_BLOCK)).map(|_| Vec::with_capacity(16)).collect();
        for plane in u.chunks_mut(oc) {
            plane.chunks_mut(KERNEL_BLOCK).zip(&mut blocks).for_each(|(c, b)| b.push(c));
        }
        blocks.into_par_iter().zip(w.par_chunks(9 * KERNEL_BLOCK)).for_each(|(mut planes, ws)| {
            for (i, k) in ws.chunks_exact(9).enumerate() {
                let tile = both(std::array::from_fn(|r| std::array::from_fn(|s| k[r * 3 + s])), g);
                for (plane, value) in planes.iter_mut().zip(tile.iter().flatten()) {
                    plane[i] = *value;
                }
            }
        });
        u
    }

    /// `Gᵀ ∂U G` for every kernel: `[O, C, 3, 3]` from `du` (`[16][O][C]`), on rayon's threads.
    fn transform_weight_adjoint(&self, du: &[f32]) -> Vec<f32> {
        let oc = self.o * self.c;
        let mut dw = zeros(9 * oc);
        dw.par_chunks_mut(9).enumerate().for_each(|(i, k)| {
            let tile = std::array::from_fn(|r| std::array::from_fn(|s| du[(r * 4 + s) * oc + i]));
            k.iter_mut().zip(both(tile, gt).iter().flatten()).for_each(|(d, v)| *d = *v);
        });
        dw
    }

    /// `∂M` of a block (`[O][16][T]`) from the gradient of its outputs (`dy`, `[g, O, Ho, Wo]`):
    /// `A ∂y Aᵀ` per tile, the rows and columns beyond the output zero.
    fn transform_output_adjoint(&self, dy: &[f32], g: usize, dm: &mut [f32]) {
        let (ty, tx) = self.tiles();
        let (t, p) = (g * ty * tx, self.ho * self.wo);
        dm[..self.o * 16 * t].par_chunks_mut(16 * t).enumerate().for_each(|(o, rows)| {
            let mut e = vec![0.0f32; 2 * 4 * tx];
            let mut padded = vec![0.0f32; 2 * tx + 2];
            let (mut ev, mut od) = (vec![0.0f32; tx + 1], vec![0.0f32; tx + 1]);
            for gi in 0..g {
                let plane = &dy[(gi * self.o + o) * p..][..p];
                for y in 0..ty {
                    // Along each of the two output rows, A per tile (the adjoint of Aᵀ:
                    // (y0, y1) → (y0, y0 + y1, y0 − y1, −y1)), into e[r][j][x].
                    for (r, e_r) in e.chunks_exact_mut(4 * tx).enumerate() {
                        let row = 2 * y + r;
                        padded.fill(0.0);
                        if row < self.ho {
                            padded[..self.wo].copy_from_slice(&plane[row * self.wo..][..self.wo]);
                        }
                        deinterleave(&padded, &mut ev, &mut od);
                        let (y0, y1) = (&ev[..tx], &od[..tx]);
                        let (e0, rest) = e_r.split_at_mut(tx);
                        let (e1, rest) = rest.split_at_mut(tx);
                        let (e2, e3) = rest.split_at_mut(tx);
                        e0.copy_from_slice(y0);
                        zip_into(e1, y0, y1, |p, q| p + q);
                        zip_into(e2, y0, y1, |p, q| p - q);
                        zip_into(e3, y0, y1, |_, q| -q);
                    }
                    // Down the rows: A again, entry (i, j) of every tile of the row at once.
                    let base = (gi * ty + y) * tx;
                    let (e0, e1) = e.split_at(4 * tx);
                    for j in 0..4 {
                        let (u, w) = (&e0[j * tx..][..tx], &e1[j * tx..][..tx]);
                        let row = |i: usize| (i * 4 + j) * t + base;
                        rows[row(0)..][..tx].copy_from_slice(u);
                        zip_into(&mut rows[row(1)..][..tx], u, w, |p, q| p + q);
                        zip_into(&mut rows[row(2)..][..tx], u, w, |p, q| p - q);
                        zip_into(&mut rows[row(3)..][..tx], u, w, |_, q| -q);
                    }
                }
            }
        });
    }

    /// The outputs of a block (`y`, `[g, O, Ho, Wo]`) from `M` (`[O][16][T]`): `Aᵀ m A`.
    fn transform_output(&self, m: &[f32], g: usize, y: &mut [f32]) {
        let (ty, tx) = self.tiles();
        let (t, p) = (g * ty * tx, self.ho * self.wo);
        y.par_chunks_mut(p).enumerate().for_each(|(index, plane)| {
            let (gi, o) = (index / self.o, index % self.o);
            let rows = &m[o * 16 * t..][..16 * t];
            // s[r][j][x]: Aᵀ down the four rows of entry column j of every tile of the row.
            let mut s = vec![0.0f32; 2 * 4 * tx];
            let (mut ev, mut od) = (vec![0.0f32; tx], vec![0.0f32; tx]);
            for yy in 0..ty {
                let base = (gi * ty + yy) * tx;
                let (s0, s1) = s.split_at_mut(4 * tx);
                for j in 0..4 {
                    let m_ij = |i: usize| &rows[(i * 4 + j) * t + base..][..tx];
                    let (m0, m1, m2, m3) = (m_ij(0), m_ij(1), m_ij(2), m_ij(3));
                    let (d0, d1) = (&mut s0[j * tx..][..tx], &mut s1[j * tx..][..tx]);
                    for xx in 0..tx {
                        let out = at([m0[xx], m1[xx], m2[xx], m3[xx]]);
                        (d0[xx], d1[xx]) = (out[0], out[1]);
                    }
                }
                for (r, s_r) in s.chunks_exact(4 * tx).enumerate() {
                    let row = 2 * yy + r;
                    if row >= self.ho {
                        continue;
                    }
                    // Aᵀ along the row: the even outputs s0 + s1 + s2, the odd s1 − s2 − s3.
                    let (s0, s1, s2, s3) =
                        (&s_r[..tx], &s_r[tx..2 * tx], &s_r[2 * tx..3 * tx], &s_r[3 * tx..]);
                    for x in 0..tx {
                        (ev[x], od[x]) = (s0[x] + s1[x] + s2[x], s1[x] - s2[x] - s3[x]);
                    }
                    let dst = &mut plane[row * self.wo..][..self.wo];
                    for (q, v) in dst.iter_mut().enumerate() {
                        *v = if q % 2 == 0 { ev[q / 2] } else { od[q / 2] };
                    }
                }
            }
        });
    }
}

/// The even and the odd entries of `src` (`2·len` long at least) into `ev` and `od`.
fn deinterleave(src: &[f32], ev: &mut [f32], od: &mut [f32]) {
    for ((pair, e), o) in src.chunks_exact(2).zip(ev.iter_mut()).zip(od.iter_mut()) {
        (*e, *o) = (pair[0], pair[1]);
    }
}

/// `dst[x] = f(p[x], q[x])`.
#[inline(always)]
fn zip_into(dst: &mut [f32], p: &[f32], q: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &p), &q) in dst.iter_mut().zip(p).zip(q) {
        *d = f(p, q);
    }
}

/// `f` applied down the columns of the four rows of `src` (each `wp` long), into the four rows
/// of `dst`.
fn columns(src: &[f32], dst: &mut [f32], wp: usize, f: impl Fn([f32; 4]) -> [f32; 4]) {
    let (s0, rest) = src.split_at(wp);
    let (s1, rest) = rest.split_at(wp);
    let (s2, s3) = rest.split_at(wp);
    let (d0, rest) = dst.split_at_mut(wp);
    let (d1, rest) = rest.split_at_mut(wp);
    let (d2, d3) = rest.split_at_mut(wp);
    for q in 0..wp {
        let out = f([s0[q], s1[q], s2[q], s3[q]]);
        (d0[q], d1[q], d2[q], d3[q]) = (out[0], out[1], out[2], out[3]);
    }
}

/// Entry `ξ` of a `[R][16][T]` array as the matrix `[R, T]`.
fn entry(v: &[f32], xi: usize, rows: usize, t: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice_with_stride(&v[xi * t..], rows, t, 16 * t)
}

/// Entry `ξ` of the transformed kernels `U` (`[16][O][C]`) as the matrix `[O, C]`.
fn kernel_entry(u: &[f32], xi: usize, o: usize, c: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&u[xi * o * c..][..o * c], o, c)
}

/// The output `[N, O, Ho, Wo]` of the convolution of `x` with the kernels `w`.
pub(super) fn forward(geo: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (o, c) = (geo.o, geo.c);
    let (ty, tx) = geo.tiles();
    let u = geo.transform_weight(w);
    let p = geo.ho * geo.wo;
    let mut y = Vec::with_capacity(geo.n * o * p);
    let tiles = 16 * geo.g * ty * tx;
    // `V` and `M` of each block, every entry written before it is read.
    with_scratch(c * tiles, o * tiles, |v, m| {
        for (n0, g) in geo.blocks() {
            let t = g * ty * tx;
            geo.transform_input(x, n0, g, v);
            let entries = Entries::Interleaved { rows: o, cols: t };
            products(m, entries, 16, Accum::Replace, |xi| {
                (kernel_entry(&u, xi, o, c), entry(v, xi, c, t))
            });
            geo.transform_output(m, g, grow(&mut y, g * o * p));
        }
    });
    y
}

/// `(∂x, ∂W)` given `∂y`; `∂x` only when `want_dx`, `∂W` only when `want_dw`.
pub(super) fn backward(
    geo: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (o, c) = (geo.o, geo.c);
    let (ty, tx) = geo.tiles();
    let u = geo.transform_weight(w);
    let p = geo.ho * geo.wo;
    let plane = c * geo.h * geo.w;
    let mut du = zeros(16 * o * c);
    let mut dx = want_dx.then(|| Vec::with_capacity(geo.n * plane));
    let tiles = 16 * geo.g * ty * tx;
    // `V` (then `∂V`) and `∂M` of each block, every entry written before it is read.
    with_scratch(c * tiles, o * tiles, |v, dm| {
        for (index, (n0, g)) in geo.blocks().enumerate() {
            let t = g * ty * tx;
            geo.transform_output_adjoint(&dy[n0 * o * p..(n0 + g) * o * p], g, dm);
            if want_dw {
                geo.transform_input(x, n0, g, v);
                let accum = if index == 0 { Accum::Replace } else { Accum::Add };
                let entries = Entries::Stacked { rows: o, cols: c };
                products(&mut du, entries, 16, accum, |xi| {
                    (entry(dm, xi, o, t), entry(v, xi, c, t).transpose())
                });
            }
            if let Some(dx) = dx.as_mut() {
                let entries = Entries::Interleaved { rows: c, cols: t };
                products(v, entries, 16, Accum::Replace, |xi| {
                    (kernel_entry(&u, xi, o, c).transpose(), entry(dm, xi, o, t))
                });
                // Zeroed block by block, just before the adjoint adds onto it.
                geo.transform_input_adjoint(v, g, grow(dx, g * plane));
            }
        }
    });
    (dx, want_dw.then(|| geo.transform_weight_adjoint(&du)))
}
