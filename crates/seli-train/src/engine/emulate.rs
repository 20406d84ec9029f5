//! The GPU engine without a GPU (tests): [`Emulator`] is a [`Device`] whose kernels are
//! `kernels.cu` itself, compiled by the system C++ compiler under a small emulation of CUDA's
//! launch model (blocks one after the other; a block's threads in turn, or as fibers that
//! yield at `__syncthreads` where the kernel synchronizes), whose products follow cuBLAS's
//! column-major `sgemm` and whose convolutions are cuDNN's from their definition (the
//! reference's). [`OnDevice`] drives it exactly as it drives the GPU: the same launches, the
//! same arguments, the same column-major products. What only a GPU checks: NVRTC's compilation,
//! cuBLAS and cuDNN themselves (`seli bench train --check` on a GPU compares them with the
//! reference).

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use super::cpu::{Reference, conv_backward_data, conv_backward_filter, conv_forward};
use super::device::{Arg, Device, Grid, OnDevice, SOURCE, THREADS};
use super::tests::{batch, cases, close, engine_on, fresh, values};
use super::*;

/// What the kernels need from CUDA, for a C++ compiler.
const SHIM: &str = r#"
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <mutex>
#include <ucontext.h>
#include <vector>
struct D3 { unsigned x, y, z; };
static D3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __shared__ static
static inline float f32_of(unsigned long long s) { unsigned u = (unsigned)s; float f; std::memcpy(&f, &u, 4); return f; }
// A block that synchronizes runs its threads as fibers (ucontext), in turn: each runs until
// its next __syncthreads (or its end), then the next; a round ends when all have reached it.
static ucontext_t scheduler;
static std::vector<ucontext_t> fibers;
static std::vector<std::vector<char>> stacks;
static std::vector<char> finished;
static unsigned current;
static std::function<void()> job;
static void fiber_main() { job(); finished[current] = 1; }
static inline void __syncthreads() { swapcontext(&fibers[current], &scheduler); }
template <class F> static void run(unsigned grid, unsigned block, bool sync, F f) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    if (sync) {
        job = f;
        fibers.resize(block);
        stacks.resize(block);
        finished.assign(block, 0);
    }
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        if (!sync) {
            for (unsigned t = 0; t < block; ++t) { threadIdx = {t, 0, 0}; f(); }
            continue;
        }
        for (unsigned t = 0; t < block; ++t) {
            stacks[t].resize(1 << 16);
            getcontext(&fibers[t]);
            fibers[t].uc_stack.ss_sp = stacks[t].data();
            fibers[t].uc_stack.ss_size = stacks[t].size();
            fibers[t].uc_link = &scheduler;
            makecontext(&fibers[t], fiber_main, 0);
            finished[t] = 0;
        }
        for (bool live = true; live;) {
            live = false;
            for (unsigned t = 0; t < block; ++t) {
                if (finished[t]) continue;
                live = true;
                current = t;
                threadIdx = {t, 0, 0};
                swapcontext(&scheduler, &fibers[t]);
            }
        }
    }
}
// One launch at a time (the tests run in parallel; the launch model's state is global).
static std::mutex launching;
"#;

/// The C++ expression turning slot `i` into a parameter of type `ty`.
fn slot(ty: &str, i: usize) -> String {
    match ty {
        t if t.ends_with('*') => format!("({t})(uintptr_t)s[{i}]"),
        "u32" | "unsigned" => format!("(u32)s[{i}]"),
        "int" => format!("(int)(long long)s[{i}]"),
        "float" => format!("f32_of(s[{i}])"),
        other => panic!("kernel parameter type {other} has no emulation"),
    }
}

/// `emu_launch(name, grid, block, slots, count)`: each kernel of the source, its parameters
/// read from 64-bit slots in order; 1 for an unknown kernel, 2 for a wrong number of slots.
fn dispatcher() -> String {
    let mut out = String::from(
        "extern \"C\" int emu_launch(const char* name, unsigned grid, unsigned block, \
         const unsigned long long* s, unsigned count) {\n  \
         std::lock_guard<std::mutex> lock(launching);\n",
    );
    for part in SOURCE.split("extern \"C\" __global__ void ").skip(1) {
        let name = &part[..part.find('(').expect("a kernel's parameters")];
        let params = &part[name.len() + 1..part.find(')').expect("a kernel's parameters")];
        let body = &part[part.find('{').expect("a kernel's body")..];
        let body = &body[..body.find("\nextern \"C\"").unwrap_or(body.len())];
        let sync = body.contains("block_sum") || body.contains("__syncthreads");
        let args: Vec<String> = params
            .split(',')
            .enumerate()
            .map(|(i, p)| {
                let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
                let ty = p[..p.rfind(' ').expect("a type and a name")].to_string();
                slot(&ty, i)
            })
            .collect();
        out += &format!(
            "  if (!std::strcmp(name, \"{name}\")) {{ if (count != {n}) return 2; \
             run(grid, block, {sync}, [&] {{ {name}({args}); }}); return 0; }}\n",
            n = args.len(),
            args = args.join(", "),
        );
    }
    out + "  return 1;\n}\n"
}

type Launch = unsafe extern "C" fn(*const c_char, u32, u32, *const u64, u32) -> i32;

/// The kernels compiled for this machine, once per test process.
fn library() -> Launch {
    static LIB: OnceLock<(PathBuf, usize)> = OnceLock::new();
    let (_, f) = LIB.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("seli-engine-emulation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("kernels.cpp");
        let text = format!("{SHIM}#define T {THREADS}\n{SOURCE}\n{}", dispatcher());
        std::fs::write(&src, text).unwrap();
        let lib = dir.join("libkernels.so");
        let out = std::process::Command::new("c++")
            .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-o"])
            .arg(&lib)
            .arg(&src)
            .output()
            .expect("a C++ compiler (c++) to emulate the GPU kernels");
        assert!(
            out.status.success(),
            "the kernels do not compile for the CPU:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: dlopen/dlsym with valid C strings; the library stays loaded for the process.
        let f = unsafe {
            let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
            assert!(!h.is_null(), "cannot load the emulated kernels");
            libc::dlsym(h, c"emu_launch".as_ptr())
        };
        assert!(!f.is_null(), "no emu_launch in the emulated kernels");
        (dir, f as usize)
    });
    // SAFETY: `emu_launch` has the signature of `Launch` (written in `dispatcher`).
    unsafe { std::mem::transmute::<*mut c_void, Launch>(*f as *mut c_void) }
}

/// Host memory as the device's, the kernels of [`library`].
#[derive(Default)]
pub(crate) struct Emulator {
    bufs: Vec<Vec<f32>>,
    labels: Vec<u32>,
    rowwise: Vec<f64>,
    totals: Box<[f64; 2]>,
    scratch: Vec<f64>,
}

/// `len` f32 at address `p` (host memory of the emulator).
///
/// # Safety
/// `p` addresses `len` live f32 of one of the emulator's buffers.
unsafe fn at<'a>(p: u64, len: usize) -> &'a mut [f32] {
    unsafe { std::slice::from_raw_parts_mut(p as *mut f32, len) }
}

impl Device for Emulator {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        self.bufs.push(vec![0.0; len.max(1)]);
        Ok(self.bufs.len() - 1)
    }

    fn addr(&self, a: At) -> u64 {
        self.bufs[a.buf][a.off..].as_ptr() as u64
    }

    fn write(&mut self, a: At, values: &[f32]) -> Result<()> {
        self.bufs[a.buf][a.off..a.off + values.len()].copy_from_slice(values);
        Ok(())
    }

    fn read(&mut self, a: At, len: usize) -> Result<Vec<f32>> {
        Ok(self.bufs[a.buf][a.off..a.off + len].to_vec())
    }

    fn labels(&mut self, labels: &[u32]) -> Result<(u64, u64)> {
        self.labels = labels.to_vec();
        // NaN: the kernel writes every entry it reads.
        self.rowwise = vec![f64::NAN; 2 * labels.len()];
        Ok((self.labels.as_ptr() as u64, self.rowwise.as_ptr() as u64))
    }

    fn totals_addr(&self) -> u64 {
        self.totals.as_ptr() as u64
    }

    fn take_totals(&mut self) -> Result<[f64; 2]> {
        Ok(std::mem::take(&mut *self.totals))
    }

    fn scratch(&mut self, len: usize) -> Result<u64> {
        // NaN: a kernel that reads an entry before writing it shows.
        self.scratch = vec![f64::NAN; len.max(1)];
        Ok(self.scratch.as_ptr() as u64)
    }

    fn launch(&mut self, name: &'static str, grid: Grid, args: &[Arg]) -> Result<()> {
        let slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(v) => v,
                Arg::U32(v) => u64::from(v),
                Arg::I32(v) => i64::from(v) as u64,
                Arg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        let c = CString::new(name).unwrap();
        // SAFETY: the slots are the kernel's arguments; their addresses are the emulator's.
        let status = unsafe {
            library()(c.as_ptr(), grid.blocks, grid.threads, slots.as_ptr(), slots.len() as u32)
        };
        match status {
            0 => Ok(()),
            1 => Err(Error::Device(format!("no kernel {name} in kernels.cu"))),
            _ => Err(Error::Device(format!("kernel {name} takes other arguments than {args:?}"))),
        }
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
        // Column-major, as cuBLAS: op(A)[i, l] = A[i + l·lda], or A[l + i·lda] transposed.
        let (ra, ca) = if ta { (k, m) } else { (m, k) };
        let (rb, cb) = if tb { (n, k) } else { (k, n) };
        assert!(a.1 >= ra && b.1 >= rb && c.1 >= m, "leading dimensions");
        // SAFETY: the addresses hold column-major matrices of these sizes.
        let (av, bv) = unsafe { (at(a.0, a.1 * (ca - 1) + ra), at(b.0, b.1 * (cb - 1) + rb)) };
        let (av, bv) = (av.to_vec(), bv.to_vec());
        let cv = unsafe { at(c.0, c.1 * (n - 1) + m) };
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|l| {
                        let x = if ta { av[l + i * a.1] } else { av[i + l * a.1] };
                        let y = if tb { bv[j + l * b.1] } else { bv[l + j * b.1] };
                        f64::from(x) * f64::from(y)
                    })
                    .sum();
                let dst = &mut cv[i + j * c.1];
                *dst = sum as f32 + if beta == 0.0 { 0.0 } else { beta * *dst };
            }
        }
        Ok(())
    }

    fn conv_forward(&mut self, n: usize, s: &ConvShape, x: u64, w: u64, y: u64) -> Result<()> {
        // SAFETY: the program's buffers hold these shapes.
        let (xv, wv, yv) =
            unsafe { (at(x, n * s.input()), at(w, s.weight()), at(y, n * s.output())) };
        yv.copy_from_slice(&conv_forward(n, s, xv, wv));
        Ok(())
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
        // SAFETY: as in `conv_forward`.
        let (wv, dyv, dxv) =
            unsafe { (at(w, s.weight()), at(dy, n * s.output()), at(dx, n * s.input())) };
        for (d, v) in dxv.iter_mut().zip(conv_backward_data(n, s, wv, dyv)) {
            *d = v + if beta == 0.0 { 0.0 } else { beta * *d };
        }
        Ok(())
    }

    fn conv_backward_filter(
        &mut self,
        n: usize,
        s: &ConvShape,
        x: u64,
        dy: u64,
        dw: u64,
    ) -> Result<()> {
        // SAFETY: as in `conv_forward`.
        let (xv, dyv, dwv) =
            unsafe { (at(x, n * s.input()), at(dy, n * s.output()), at(dw, s.weight())) };
        dwv.copy_from_slice(&conv_backward_filter(n, s, xv, dyv));
        Ok(())
    }
}

#[test]
fn the_gpu_kernels_train_as_the_reference_does() {
    for case in cases() {
        let name = format!("{:?}", case.cfg.kind);
        let net = fresh(&case);
        let mut gpu = engine_on(OnDevice::new(Emulator::default()), &case);
        let mut reference = engine_on(Reference::new(), &case);
        gpu.load(&net, None).unwrap();
        reference.load(&net, None).unwrap();
        for (b, lr) in [0.1, 0.05, 0.05].into_iter().enumerate() {
            let (x, y) = batch(&case, b);
            gpu.step(&x, &y, lr).unwrap();
            reference.step(&x, &y, lr).unwrap();
            let ((lg, hg), (lr_, hr)) = (gpu.totals().unwrap(), reference.totals().unwrap());
            assert!((lg - lr_).abs() < 1e-5 * lr_.abs(), "{name}: step {b}: loss {lg} vs {lr_}");
            assert_eq!(hg, hr, "{name}: step {b}: hits");
        }
        let (a, oa) = gpu.store(fresh(&case)).unwrap();
        let (b, ob) = reference.store(fresh(&case)).unwrap();
        for ((id, x), (_, y)) in values(&a).iter().zip(values(&b)) {
            close(&format!("{name} tensor {id}"), x, &y, 1e-4);
        }
        let (va, vb) = (
            velocities(Bytes::from_bytes_vec(oa)).unwrap(),
            velocities(Bytes::from_bytes_vec(ob)).unwrap(),
        );
        for ((id, x), (_, y)) in va.iter().zip(&vb) {
            close(&format!("{name} velocity {id}"), x, y, 1e-3);
        }
        let (x, _) = batch(&case, 4);
        let (hg, zg) = gpu.infer(&x, case.rows).unwrap();
        let (hr, zr) = reference.infer(&x, case.rows).unwrap();
        close(&format!("{name} features"), &hg, &hr, 1e-4);
        close(&format!("{name} logits"), &zg, &zr, 1e-4);
        let ((wg, bg), (wr, br)) = (gpu.classifier().unwrap(), reference.classifier().unwrap());
        close(&format!("{name} classifier"), &wg, &wr, 1e-4);
        assert_eq!(bg.is_some(), br.is_some());
    }
}

#[test]
fn row_major_products_go_through_the_column_major_call() {
    let (m, n, k) = (3, 5, 4);
    for (ta, tb, acc) in
        [(false, false, false), (true, false, true), (false, true, false), (true, true, true)]
    {
        let mut gpu = OnDevice::new(Emulator::default());
        let mut reference = Reference::new();
        let a = crate::flex::testing::seq(m * k, 0.7);
        let b = crate::flex::testing::seq(k * n, 1.9);
        let c = crate::flex::testing::seq(m * n, 0.3);
        let mut outs = Vec::new();
        for kern in [&mut gpu as &mut dyn Kernels, &mut reference] {
            let [ab, bb, cb] = [
                kern.alloc(m * k).unwrap(),
                kern.alloc(k * n).unwrap(),
                kern.alloc(m * n + 2).unwrap(),
            ];
            kern.write(At { buf: ab, off: 0 }, &a).unwrap();
            kern.write(At { buf: bb, off: 0 }, &b).unwrap();
            kern.write(At { buf: cb, off: 2 }, &c).unwrap();
            let (pa, pb, pc) =
                (At { buf: ab, off: 0 }, At { buf: bb, off: 0 }, At { buf: cb, off: 2 });
            kern.gemm(ta, tb, [m, n, k], pa, pb, pc, acc).unwrap();
            outs.push(kern.read(pc, m * n).unwrap());
        }
        close(&format!("ta {ta} tb {tb} acc {acc}"), &outs[0], &outs[1], 1e-6);
        // And against the definition.
        let want: Vec<f32> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let s: f32 = (0..k)
                    .map(|l| {
                        let x = if ta { a[l * m + i] } else { a[i * k + l] };
                        let y = if tb { b[j * k + l] } else { b[l * n + j] };
                        x * y
                    })
                    .sum();
                s + if acc { c[ij] } else { 0.0 }
            })
            .collect();
        close("definition", &outs[1], &want, 1e-5);
    }
}

#[test]
fn a_launch_with_the_wrong_arguments_is_refused() {
    let mut e = Emulator::default();
    let grid = Grid { blocks: 1, threads: THREADS };
    let err = e.launch("relu", grid, &[Arg::U32(0)]).unwrap_err().to_string();
    assert!(err.contains("kernel relu takes other arguments"), "{err}");
    let err = e.launch("nothing", grid, &[]).unwrap_err().to_string();
    assert!(err.contains("no kernel nothing"), "{err}");
}

#[test]
fn the_device_check_finds_the_emulated_gpu_close_and_a_broken_one_far() {
    let close = super::check::against_reference(|| Ok(OnDevice::new(Emulator::default()))).unwrap();
    assert_eq!(close.len(), 3);
    for d in &close {
        assert!(d.loss < 1e-5 && d.parameters < 1e-4 && d.outputs < 1e-4, "{d:?}");
    }
    // A device whose products forget to accumulate: far off.
    struct NoAccumulate(Emulator);
    impl Device for NoAccumulate {
        fn alloc(&mut self, len: usize) -> Result<usize> {
            self.0.alloc(len)
        }
        fn addr(&self, a: At) -> u64 {
            self.0.addr(a)
        }
        fn write(&mut self, a: At, v: &[f32]) -> Result<()> {
            self.0.write(a, v)
        }
        fn read(&mut self, a: At, len: usize) -> Result<Vec<f32>> {
            self.0.read(a, len)
        }
        fn labels(&mut self, l: &[u32]) -> Result<(u64, u64)> {
            self.0.labels(l)
        }
        fn totals_addr(&self) -> u64 {
            self.0.totals_addr()
        }
        fn take_totals(&mut self) -> Result<[f64; 2]> {
            self.0.take_totals()
        }
        fn scratch(&mut self, len: usize) -> Result<u64> {
            self.0.scratch(len)
        }
        fn launch(&mut self, name: &'static str, grid: Grid, args: &[Arg]) -> Result<()> {
            self.0.launch(name, grid, args)
        }
        fn sgemm(
            &mut self,
            ta: bool,
            tb: bool,
            mnk: [usize; 3],
            a: (u64, usize),
            b: (u64, usize),
            _beta: f32,
            c: (u64, usize),
        ) -> Result<()> {
            self.0.sgemm(ta, tb, mnk, a, b, 0.0, c)
        }
        fn conv_forward(&mut self, n: usize, s: &ConvShape, x: u64, w: u64, y: u64) -> Result<()> {
            self.0.conv_forward(n, s, x, w, y)
        }
        fn conv_backward_data(
            &mut self,
            n: usize,
            s: &ConvShape,
            w: u64,
            dy: u64,
            _beta: f32,
            dx: u64,
        ) -> Result<()> {
            self.0.conv_backward_data(n, s, w, dy, 0.0, dx)
        }
        fn conv_backward_filter(
            &mut self,
            n: usize,
            s: &ConvShape,
            x: u64,
            dy: u64,
            dw: u64,
        ) -> Result<()> {
            self.0.conv_backward_filter(n, s, x, dy, dw)
        }
    }
    let far =
        super::check::against_reference(|| Ok(OnDevice::new(NoAccumulate(Emulator::default()))))
            .unwrap();
    // The ResNet's blocks add two gradients into their input: without it, far off.
    let resnet = &far[2];
    assert!(resnet.parameters > super::check::TOLERANCE, "{resnet:?}");
}

#[test]
fn batch_norm_sums_split_over_blocks_match_the_reference() {
    // 4 800 values per channel: the channel sums split over 4 blocks each (two-stage), with a
    // skip, a ReLU, and the gradient accumulated onto both inputs.
    let (rows, c, sp) = (8, 3, 600);
    let s = NormShape { c, s: sp };
    let len = rows * c * sp;
    let run = |k: &mut dyn Kernels| -> Vec<Vec<f32>> {
        let seq = crate::flex::testing::seq;
        let buf = |v: &[f32], k: &mut dyn Kernels| {
            let b = k.alloc(v.len()).unwrap();
            k.write(At { buf: b, off: 0 }, v).unwrap();
            At { buf: b, off: 0 }
        };
        let x = buf(&seq(len, 0.37).iter().map(|v| 3.0 * v + 1.5).collect::<Vec<_>>(), k);
        let skip = buf(&seq(len, 1.1), k);
        let dy = buf(&seq(len, 0.23), k);
        let (y, dx, dskip) =
            (buf(&vec![0.0; len], k), buf(&seq(len, 0.5), k), buf(&seq(len, 0.7), k));
        let gamma = buf(&[0.5, 1.5, -1.0, 0.1, 0.2, 0.3], k);
        let p = NormParams {
            gamma,
            grad: buf(&[0.0; 6], k),
            running: buf(&[0.2, -0.1, 0.0, 1.0, 2.0, 0.5], k),
            saved: buf(&[0.0; 6], k),
        };
        k.norm_train(rows, &s, &p, x, Some(skip), true, y, 0.1, 1e-5).unwrap();
        k.norm_backward(rows, &s, &p, x, y, true, dy, (dx, true), Some((dskip, true))).unwrap();
        let mut out = Vec::new();
        for (at, n) in
            [(y, len), (p.saved, 6), (p.running, 6), (p.grad, 6), (dx, len), (dskip, len)]
        {
            out.push(k.read(at, n).unwrap());
        }
        let eval = buf(&vec![0.0; len], k);
        k.norm_eval(rows, &s, &p, x, None, false, eval, 1e-5).unwrap();
        out.push(k.read(eval, len).unwrap());
        out
    };
    let emulated = run(&mut OnDevice::new(Emulator::default()));
    let reference = run(&mut Reference::new());
    for (i, (a, b)) in emulated.iter().zip(&reference).enumerate() {
        close(&format!("output {i}"), a, b, 1e-5);
    }
}
