//! The engine's kernels written plainly from their definitions (loops, sums in f64), on the
//! CPU: the reference the program is tested with against burn's training step, and against
//! which the GPU kernels are checked on a GPU (`seli bench engine`). Slow; not a training path.

use super::{At, ConvShape, Kernels, NormParams, NormShape};
use crate::error::Result;

/// Buffers in memory; the running totals; the current labels.
#[derive(Debug, Default)]
pub struct Reference {
    bufs: Vec<Vec<f32>>,
    labels: Vec<u32>,
    loss: f64,
    hits: u64,
}

impl Reference {
    /// No buffers yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, at: At, len: usize) -> Vec<f32> {
        self.bufs[at.buf][at.off..at.off + len].to_vec()
    }

    fn slice(&mut self, at: At, len: usize) -> &mut [f32] {
        &mut self.bufs[at.buf][at.off..at.off + len]
    }

    /// Writes `v` at `at`, or adds it when `acc`.
    fn put(&mut self, at: At, v: &[f32], acc: bool) {
        let dst = self.slice(at, v.len());
        if acc {
            dst.iter_mut().zip(v).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(v);
        }
    }
}

/// Channel `ch`'s values of row `i` in a `[rows, c, s]` tensor.
fn range(s: &NormShape, i: usize, ch: usize) -> std::ops::Range<usize> {
    let start = (i * s.c + ch) * s.s;
    start..start + s.s
}

impl Kernels for Reference {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        self.bufs.push(vec![0.0; len]);
        Ok(self.bufs.len() - 1)
    }

    fn write(&mut self, at: At, values: &[f32]) -> Result<()> {
        self.put(at, values, false);
        Ok(())
    }

    fn read(&mut self, at: At, len: usize) -> Result<Vec<f32>> {
        Ok(self.get(at, len))
    }

    fn labels(&mut self, labels: &[u32]) -> Result<()> {
        self.labels = labels.to_vec();
        Ok(())
    }

    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: At, w: At, y: At) -> Result<()> {
        let out = conv_forward(n, s, &self.get(x, n * s.input()), &self.get(w, s.weight()));
        self.put(y, &out, false);
        Ok(())
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
        let (wv, dyv) = (self.get(w, s.weight()), self.get(dy, n * s.output()));
        self.put(dx, &conv_backward_data(n, s, &wv, &dyv), acc);
        Ok(())
    }

    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: At,
        dy: At,
        dw: At,
    ) -> Result<()> {
        let (xv, dyv) = (self.get(x, n * s.input()), self.get(dy, n * s.output()));
        self.put(dw, &conv_backward_filter(n, s, &xv, &dyv), false);
        Ok(())
    }

    fn gemm(
        &mut self,
        ta: bool,
        tb: bool,
        [m, n, k]: [usize; 3],
        a: At,
        b: At,
        c: At,
        acc: bool,
    ) -> Result<()> {
        let (av, bv) = (self.get(a, m * k), self.get(b, k * n));
        let at = |i: usize, l: usize| if ta { av[l * m + i] } else { av[i * k + l] };
        let bt = |l: usize, j: usize| if tb { bv[j * k + l] } else { bv[l * n + j] };
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k).map(|l| f64::from(at(i, l)) * f64::from(bt(l, j))).sum();
                out[i * n + j] = sum as f32;
            }
        }
        self.put(c, &out, acc);
        Ok(())
    }

    fn add_bias(&mut self, rows: usize, cols: usize, b: At, y: At) -> Result<()> {
        let bv = self.get(b, cols);
        let bias: Vec<f32> = (0..rows).flat_map(|_| bv.iter().copied()).collect();
        self.put(y, &bias, true);
        Ok(())
    }

    fn bias_grad(&mut self, rows: usize, cols: usize, dy: At, db: At) -> Result<()> {
        let g = self.get(dy, rows * cols);
        let sums: Vec<f32> = (0..cols)
            .map(|j| (0..rows).map(|i| f64::from(g[i * cols + j])).sum::<f64>() as f32)
            .collect();
        self.put(db, &sums, false);
        Ok(())
    }

    fn relu(&mut self, len: usize, x: At, y: At) -> Result<()> {
        let v: Vec<f32> = self.get(x, len).into_iter().map(|v| v.max(0.0)).collect();
        self.put(y, &v, false);
        Ok(())
    }

    fn relu_backward(&mut self, len: usize, y: At, dy: At, dx: At, acc: bool) -> Result<()> {
        let (yv, g) = (self.get(y, len), self.get(dy, len));
        let v: Vec<f32> = yv.iter().zip(&g).map(|(&y, &g)| if y > 0.0 { g } else { 0.0 }).collect();
        self.put(dx, &v, acc);
        Ok(())
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
        let len = rows * s.c * s.s;
        let xv = self.get(x, len);
        let count = (rows * s.s) as f64;
        let mut mean = vec![0.0f32; s.c];
        let mut inv = vec![0.0f32; s.c];
        let mut var = vec![0.0f32; s.c];
        for ch in 0..s.c {
            let vals = || (0..rows).flat_map(|i| xv[range(s, i, ch)].iter().map(|&v| f64::from(v)));
            let m = vals().sum::<f64>() / count;
            let v = vals().map(|v| (v - m) * (v - m)).sum::<f64>() / count;
            mean[ch] = m as f32;
            var[ch] = v as f32;
            inv[ch] = (1.0 / (v + f64::from(eps)).sqrt()) as f32;
        }
        let mut running = self.get(p.running, 2 * s.c);
        for ch in 0..s.c {
            running[ch] = (1.0 - momentum) * running[ch] + momentum * mean[ch];
            running[s.c + ch] = (1.0 - momentum) * running[s.c + ch] + momentum * var[ch];
        }
        self.put(p.running, &running, false);
        let saved: Vec<f32> = mean.iter().chain(&inv).copied().collect();
        self.put(p.saved, &saved, false);
        let out = self.affine(rows, s, p, &xv, &mean, &inv, skip, relu);
        self.put(y, &out, false);
        Ok(())
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
        let xv = self.get(x, rows * s.c * s.s);
        let running = self.get(p.running, 2 * s.c);
        let mean = running[..s.c].to_vec();
        let inv: Vec<f32> = running[s.c..].iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
        let out = self.affine(rows, s, p, &xv, &mean, &inv, skip, relu);
        self.put(y, &out, false);
        Ok(())
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
        let len = rows * s.c * s.s;
        let (xv, yv, dyv) = (self.get(x, len), self.get(y, len), self.get(dy, len));
        let saved = self.get(p.saved, 2 * s.c);
        let gamma = self.get(p.gamma, s.c);
        let g: Vec<f32> =
            dyv.iter().zip(&yv).map(|(&d, &y)| if !relu || y > 0.0 { d } else { 0.0 }).collect();
        let count = (rows * s.s) as f64;
        let mut dgamma = vec![0.0f32; s.c];
        let mut dbeta = vec![0.0f32; s.c];
        let mut out = vec![0.0f32; len];
        for ch in 0..s.c {
            let (m, inv) = (f64::from(saved[ch]), f64::from(saved[s.c + ch]));
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for i in 0..rows {
                for j in range(s, i, ch) {
                    sg += f64::from(g[j]);
                    sgx += f64::from(g[j]) * (f64::from(xv[j]) - m) * inv;
                }
            }
            dbeta[ch] = sg as f32;
            dgamma[ch] = sgx as f32;
            let scale = f64::from(gamma[ch]) * inv;
            for i in 0..rows {
                for j in range(s, i, ch) {
                    let xh = (f64::from(xv[j]) - m) * inv;
                    out[j] = (scale * (f64::from(g[j]) - sg / count - xh * sgx / count)) as f32;
                }
            }
        }
        let grads: Vec<f32> = dgamma.into_iter().chain(dbeta).collect();
        self.put(p.grad, &grads, false);
        self.put(dx.0, &out, dx.1);
        if let Some((at, acc)) = dskip {
            self.put(at, &g, acc);
        }
        Ok(())
    }

    fn pool(&mut self, rows: usize, c: usize, s: usize, x: At, y: At) -> Result<()> {
        let xv = self.get(x, rows * c * s);
        let out: Vec<f32> = xv
            .chunks(s)
            .map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / s as f64) as f32)
            .collect();
        self.put(y, &out, false);
        Ok(())
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
        let g = self.get(dy, rows * c);
        let out: Vec<f32> = g.iter().flat_map(|&v| std::iter::repeat_n(v / s as f32, s)).collect();
        self.put(dx, &out, acc);
        Ok(())
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
        let (zv, dv, sv) = (self.get(z, rows * k), self.get(delta, k), self.get(shift, k));
        let mut grad = vec![0.0f32; rows * k];
        for i in 0..rows {
            let y = self.labels[i] as usize;
            let row = &zv[i * k..(i + 1) * k];
            let m = |c: usize| f64::from(if per_label { dv[y] } else { dv[c] });
            let u: Vec<f64> = (0..k).map(|c| m(c) * f64::from(row[c]) + f64::from(sv[c])).collect();
            let top = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = u.iter().map(|&v| (v - top).exp()).sum();
            self.loss += top + sum.ln() - u[y];
            for c in 0..k {
                let p = (u[c] - top).exp() / sum - if c == y { 1.0 } else { 0.0 };
                grad[i * k + c] = (p * m(c) / rows as f64) as f32;
            }
            let best = (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            self.hits += u64::from(best == y);
        }
        self.put(dz, &grad, false);
        Ok(())
    }

    fn totals(&mut self) -> Result<(f64, u64)> {
        Ok((std::mem::take(&mut self.loss), std::mem::take(&mut self.hits)))
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
        let (mut wv, gv, mut vv) = (self.get(w, len), self.get(g, len), self.get(v, len));
        for ((w, &g), v) in wv.iter_mut().zip(&gv).zip(vv.iter_mut()) {
            *v = momentum * *v + g + weight_decay * *w;
            *w -= lr * *v;
        }
        self.put(w, &wv, false);
        self.put(v, &vv, false);
        Ok(())
    }
}

impl Reference {
    /// `γ (x − mean) inv + β (+ skip)`, then ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn affine(
        &self,
        rows: usize,
        s: &NormShape,
        p: &NormParams,
        xv: &[f32],
        mean: &[f32],
        inv: &[f32],
        skip: Option<At>,
        relu: bool,
    ) -> Vec<f32> {
        let gb = self.get(p.gamma, 2 * s.c);
        let skip = skip.map(|at| self.get(at, xv.len()));
        let mut out = vec![0.0f32; xv.len()];
        for i in 0..rows {
            for ch in 0..s.c {
                for j in range(s, i, ch) {
                    let mut v = gb[ch] * (xv[j] - mean[ch]) * inv[ch] + gb[s.c + ch];
                    if let Some(sk) = &skip {
                        v += sk[j];
                    }
                    out[j] = if relu { v.max(0.0) } else { v };
                }
            }
        }
        out
    }
}

/// Calls `f(y, w, x)` with the indices of every product `w[·] x[·]` that adds to an output
/// entry `y[·]` of a convolution of `n` images.
fn each_product(n: usize, s: &ConvShape, mut f: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = (s.ho(), s.wo());
    for i in 0..n {
        for o in 0..s.o {
            for r in 0..ho {
                for q in 0..wo {
                    let yi = ((i * s.o + o) * ho + r) * wo + q;
                    for (c, a, b, xi) in taps(s, i, r, q) {
                        f(yi, ((o * s.c + c) * s.k + a) * s.k + b, xi);
                    }
                }
            }
        }
    }
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|v| v as f32).collect()
}

/// `conv(x, w)` of `n` images (NCHW, cross-correlation, zero padding), sums in f64.
pub(crate) fn conv_forward(n: usize, s: &ConvShape, xv: &[f32], wv: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f64; n * s.output()];
    each_product(n, s, |y, w, x| out[y] += f64::from(wv[w]) * f64::from(xv[x]));
    to_f32(out)
}

/// The input gradient of [`conv_forward`] for the output gradient `dyv`.
pub(crate) fn conv_backward_data(n: usize, s: &ConvShape, wv: &[f32], dyv: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f64; n * s.input()];
    each_product(n, s, |y, w, x| out[x] += f64::from(dyv[y]) * f64::from(wv[w]));
    to_f32(out)
}

/// The weight gradient of [`conv_forward`] for the output gradient `dyv`.
pub(crate) fn conv_backward_filter(n: usize, s: &ConvShape, xv: &[f32], dyv: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f64; s.weight()];
    each_product(n, s, |y, w, x| out[w] += f64::from(dyv[y]) * f64::from(xv[x]));
    to_f32(out)
}

/// The input entries a convolution output `(i, ·, r, q)` reads: `(c, a, b, index in x)` for
/// each kernel tap inside the image.
fn taps(
    s: &ConvShape,
    i: usize,
    r: usize,
    q: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
    (0..s.c).flat_map(move |c| {
        (0..s.k).flat_map(move |a| {
            (0..s.k).filter_map(move |b| {
                let row = (r * s.stride + a).checked_sub(s.pad).filter(|&v| v < s.h)?;
                let col = (q * s.stride + b).checked_sub(s.pad).filter(|&v| v < s.w)?;
                Some((c, a, b, ((i * s.c + c) * s.h + row) * s.w + col))
            })
        })
    })
}
