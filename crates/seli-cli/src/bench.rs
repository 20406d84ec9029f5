//! `seli bench`: timings of the hot paths, for the README's figures.
//!
//! `seli bench geometry` times the whole class-level computation (profile to geometry,
//! statistics and ETF distances) at n = 10^7 for k = 10, 100, 1000, and, for contrast, the
//! dense route a naive implementation would take: build the explicit k×n SEL matrix and take
//! its thin SVD, at sizes where it fits in memory. `seli bench train` times SGD steps of the
//! deep networks on random data. `seli bench analyze` times the feature-level measurement of
//! `seli analyze` (both passes) on generated f32 features held in memory;
//! `scripts/bench-analyze.py` runs it beside the PyTorch reference computation.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use faer::Mat;
use seli_core::solve::Solver;
use seli_core::solve::ufm::{UfmConfig, UfmSolver};
use seli_core::{Geometry, Loss, LossKind, Profile, Scalar, Target};

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Class-level SELI geometry against the dense SVD of the explicit SEL matrix.
    Geometry(BenchGeometryArgs),
    /// Full-batch UFM gradient descent: iterations per second and GFLOP/s.
    Ufm(BenchUfmArgs),
    /// Deep-net training throughput (samples/s) on random data: the MLPs and ResNet-18.
    Train(BenchTrainArgs),
    /// The feature-level measurement of `seli analyze` (every metric, both passes) on
    /// generated f32 features in memory: seconds and samples/s.
    Analyze(BenchAnalyzeArgs),
}

/// Flags of `seli bench analyze`.
#[derive(Debug, Args)]
pub struct BenchAnalyzeArgs {
    /// Samples.
    #[arg(long, default_value_t = 1_000_000)]
    pub n: usize,

    /// Feature dimension.
    #[arg(long, default_value_t = 512)]
    pub d: usize,

    /// Classes (balanced labels, i mod k).
    #[arg(long, default_value_t = 100)]
    pub k: usize,

    /// Rows per chunk.
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,

    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,

    /// Also measure with a classifier (logits W^T h, NC4, accuracy): more work than the
    /// reference computation does.
    #[arg(long)]
    pub classifier: bool,

    /// One JSON line instead of the table (for scripts/bench-analyze.py).
    #[arg(long)]
    pub json: bool,

    /// Tiny sizes, one repetition: checks that the benchmark works, measures nothing.
    #[arg(long)]
    pub quick: bool,
}

/// Flags of `seli bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Timed SGD steps per stretch for the MLPs (batch 128; median of 5 stretches).
    #[arg(long, default_value_t = 40)]
    pub mlp_steps: usize,

    /// Timed SGD steps for ResNet-18 on 3x32x32 images (batch 128; 0 skips it: each step takes
    /// seconds on a CPU).
    #[arg(long, default_value_t = 3)]
    pub resnet_steps: usize,

    /// Where to train: cpu, cuda or cuda:N (a CUDA build: scripts/build-cuda.sh). On a GPU the
    /// steps are seli's engine (cuDNN convolutions, cuBLAS products), what `seli train` runs.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: seli_train::Device,

    /// On a GPU, time burn's CUDA backend instead of seli's engine (its kernels are tuned in
    /// the first process: minutes for ResNet-18).
    #[arg(long)]
    pub burn: bool,

    /// Instead of timing: compare the engine on --device (a GPU) with its reference kernels on
    /// small networks (three SGD steps, then evaluation mode) and print the largest relative
    /// differences; exit 1 when one passes 5e-2.
    #[arg(long)]
    pub check: bool,

    /// Tiny sizes and one step each: checks that the benchmark works, measures nothing.
    #[arg(long)]
    pub quick: bool,
}

/// `seli bench train --check`: the engine on `device` against its reference kernels.
fn check_engine(device: seli_train::Device) -> Result<()> {
    use seli_train::engine::check::{TOLERANCE, on_device};
    let rows = on_device(device)?;
    println!(
        "seli's engine on {device} against its reference kernels (largest relative differences)"
    );
    println!("{:<36} {:>10} {:>12} {:>10}", "network", "loss", "parameters", "outputs");
    let mut worst = 0.0f64;
    for d in &rows {
        println!("{:<36} {:>10.2e} {:>12.2e} {:>10.2e}", d.name, d.loss, d.parameters, d.outputs);
        worst = worst.max(d.loss).max(d.parameters).max(d.outputs);
    }
    if worst > TOLERANCE {
        return Err(anyhow::anyhow!(
            "the engine on {device} differs from its reference kernels by {worst:.2e} (more than {TOLERANCE:.0e})"
        ));
    }
    Ok(())
}

/// Flags of `seli bench ufm`.
#[derive(Debug, Args)]
pub struct BenchUfmArgs {
    /// Iterations timed for the reference size (k = 10, d = 64, n = 2750), in five stretches
    /// whose median rate is reported; the n = 10^5 case runs a fifth of them, and on the CPU
    /// the k = 100, d = 512, n = 110 000 case a hundredth (at least 5).
    #[arg(long, default_value_t = 1000)]
    pub iters: u64,

    /// cpu: seli's solver (what `seli ufm` runs). cuda or cuda:N: the same iteration on that GPU
    /// (a CUDA build; cuBLAS products and seli's kernels, what `seli ufm --device cuda` runs),
    /// at k = 10, d = 64, n = 2750 and at k = 100, d = 512, n = 110 000.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: seli_train::Device,

    /// Time the iteration written with burn tensors on --device instead (on the CPU burn's flex
    /// backend, slower than seli's solver; on a GPU burn's CUDA backend, slower than cuBLAS).
    #[arg(long)]
    pub burn: bool,

    /// Small sizes and few iterations: checks that the benchmark works, measures nothing.
    #[arg(long)]
    pub quick: bool,
}

/// Flags of `seli bench geometry`.
#[derive(Debug, Args)]
pub struct BenchGeometryArgs {
    /// Time budget per case, in seconds (each case runs at least 3 times after a warm-up).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub budget: f64,

    /// Small sizes and one run per case: checks that the benchmark works, measures nothing.
    #[arg(long)]
    pub quick: bool,
}

/// Runs a `seli bench` subcommand.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Geometry(a) => bench_geometry(a),
        BenchCommand::Ufm(a) => bench_ufm(a),
        BenchCommand::Train(a) => bench_train(a),
        BenchCommand::Analyze(a) => bench_analyze(a),
    }
}

/// Generated f32 features in memory, row-major n×d.
struct GeneratedRows {
    data: Vec<f32>,
    shape: [usize; 2],
}

impl seli_io::arrays::RowSource for GeneratedRows {
    fn name(&self) -> &str {
        "generated features"
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn rows(&self, start: usize, end: usize) -> seli_io::Result<Vec<f64>> {
        let d = self.shape[1];
        Ok(self.data[start * d..end * d].iter().map(|&v| f64::from(v)).collect())
    }
    fn single(&self) -> bool {
        true
    }
}

/// A uniform value in [-1, 1) from a 64-bit hash of `x` (splitmix64's finalizer).
fn uniform(x: u64) -> f32 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Features `h_i = 4 m_{y_i} + noise`, `y_i = i mod k`, every entry of `m_c` and of the noise
/// uniform in [-1, 1).
fn generated(n: usize, d: usize, k: usize) -> (GeneratedRows, Vec<i64>) {
    use rayon::prelude::*;
    let means: Vec<f32> = (0..k * d).map(|j| 4.0 * uniform(j as u64 ^ 0xfeed_0000_0000)).collect();
    let mut data = vec![0f32; n * d];
    data.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let c = i % k;
        for (r, v) in row.iter_mut().enumerate() {
            *v = means[c * d + r] + uniform((i * d + r) as u64);
        }
    });
    let labels = (0..n).map(|i| (i % k) as i64).collect();
    (GeneratedRows { data, shape: [n, d] }, labels)
}

fn bench_analyze(a: &BenchAnalyzeArgs) -> Result<()> {
    let (n, d, k) = if a.quick { (2000, 16, 4) } else { (a.n, a.d, a.k) };
    let repeats = if a.quick { 1 } else { a.repeats.max(1) };
    anyhow::ensure!(k >= 2 && d >= 1 && n >= k, "need k >= 2, d >= 1, n >= k (got {k}, {d}, {n})");
    let t = Instant::now();
    let (rows, labels) = generated(n, d, k);
    let generate_s = t.elapsed().as_secs_f64();
    let classifier = a
        .classifier
        .then(|| Mat::from_fn(d, k, |r, c| f64::from(uniform((r * k + c) as u64 ^ 0xabc))));
    let threads = rayon::current_num_threads();
    let mut times = Vec::new();
    let mut nc1 = f64::NAN;
    for _ in 0..repeats {
        let t = Instant::now();
        let an = seli_run::analyze::analyze(
            &rows,
            &labels,
            std::path::Path::new("generated labels"),
            Some(k),
            classifier.as_ref(),
            None,
            None,
            a.chunk,
        )?
        .analysis()?;
        times.push(t.elapsed().as_secs_f64());
        nc1 = an.get("nc1").unwrap_or(f64::NAN);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tool": "seli", "n": n, "d": d, "k": k, "chunk": a.chunk, "threads": threads,
                "classifier": a.classifier, "seconds": times, "median_s": median, "nc1": nc1,
            })
        );
        return Ok(());
    }
    println!(
        "seli bench analyze: n = {n}, d = {d}, k = {k}, f32 features in memory ({:.1} GB, \
         generated in {generate_s:.1} s), chunks of {}, {threads} threads{}",
        (n * d * 4) as f64 / 1e9,
        a.chunk,
        if a.classifier { ", with a classifier" } else { "" }
    );
    println!("every GEOMETRY column, both passes; median of {repeats}");
    println!("{:>10}{:>14}{:>14}", "seconds", "samples/s", "nc1");
    println!("{median:>10.2}{:>14.0}{nc1:>14.6e}", n as f64 / median);
    Ok(())
}

/// Median wall time of `f` over repeated runs after one warm-up.
fn time<T>(budget: Duration, min_runs: usize, mut f: impl FnMut() -> T) -> (Duration, usize) {
    std::hint::black_box(f());
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_runs || (start.elapsed() < budget && samples.len() < 10_000) {
        let t = Instant::now();
        std::hint::black_box(f());
        samples.push(t.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples.len())
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// STEP with R = 10, rho = 1/2 and n_min chosen so that n is close to `n`.
fn step_near(k: usize, n: u64) -> Result<Profile> {
    let n_min = (2 * n / (11 * k as u64)).max(1);
    Ok(Profile::step(k, 10.0, 0.5, n_min)?)
}

/// Everything `seli geometry` computes, without I/O.
fn class_level(p: &Profile) -> f64 {
    let g = Geometry::new(p).expect("eigendecomposition converges");
    let s = g.stats();
    g.dist_gram_w_etf() + g.dist_gram_m_etf() + s.w_norms[0]
}

/// The dense route: explicit k×n SEL matrix, thin SVD, G_W = U Σ Uᵀ.
fn dense(p: &Profile) -> f64 {
    let k = p.k();
    let labels: Vec<usize> = p
        .counts()
        .iter()
        .enumerate()
        .flat_map(|(c, &m)| std::iter::repeat_n(c, m as usize))
        .collect();
    let z = Mat::from_fn(k, labels.len(), |c, i| f64::from(c == labels[i]) - 1.0 / k as f64);
    let svd = z.thin_svd().expect("SVD converges");
    let (u, s) = (svd.U(), svd.S().column_vector());
    let gw =
        Mat::from_fn(k, k, |a, b| (0..k - 1).map(|i| u[(a, i)] * s[i] * u[(b, i)]).sum::<f64>());
    gw[(0, 0)]
}

fn bench_geometry(a: &BenchGeometryArgs) -> Result<()> {
    let budget = Duration::from_secs_f64(if a.quick { 0.0 } else { a.budget.max(0.0) });
    let min_runs = if a.quick { 1 } else { 3 };
    let (big_n, ks, dense_cases): (u64, &[usize], &[(usize, u64)]) = if a.quick {
        (10_000, &[10, 30], &[(10, 1_000)])
    } else {
        (10_000_000, &[10, 100, 1000], &[(10, 100_000), (100, 10_000), (100, 100_000)])
    };
    println!("seli bench geometry: STEP R = 10, rho = 1/2; median wall time per call, one thread");
    println!();
    println!("{:<34}{:>6}{:>12}{:>12}{:>7}", "route", "k", "n", "median", "runs");
    for &k in ks {
        let p = step_near(k, big_n)?;
        let (t, runs) = time(budget, min_runs, || class_level(&p));
        println!(
            "{:<34}{:>6}{:>12}{:>12}{:>7}",
            "class level (k x k eigen)",
            k,
            p.n(),
            fmt(t),
            runs
        );
    }
    println!();
    println!(
        "{:<34}{:>6}{:>12}{:>12}{:>7}{:>14}{:>10}",
        "route", "k", "n", "median", "runs", "class level", "ratio"
    );
    for &(k, n) in dense_cases {
        let p = step_near(k, n)?;
        let (td, rd) = time(budget, min_runs, || dense(&p));
        let (tc, _) = time(budget, min_runs, || class_level(&p));
        println!(
            "{:<34}{:>6}{:>12}{:>12}{:>7}{:>14}{:>9.0}x",
            "dense (explicit k x n, thin SVD)",
            k,
            p.n(),
            fmt(td),
            rd,
            fmt(tc),
            td.as_secs_f64() / tc.as_secs_f64().max(1e-12)
        );
    }
    println!();
    println!(
        "at n = 10^7 the dense route would hold a {:.1} GB matrix for k = 100; the class level holds k x k.",
        8.0 * 100.0 * 1e7 / 1e9
    );
    // The certified targets of the other losses (docs/theory.md §10): class-level solves whose
    // cost does not depend on n (scripts/bench-targets.py times a sample-level cvxpy solve).
    println!();
    println!(
        "{:<34}{:>6}{:>12}{:>12}{:>7}{:>12}",
        "loss target (certified)", "k", "n", "median", "runs", "rel. gap"
    );
    let ks: &[usize] = if a.quick { &[4] } else { &[10, 100] };
    let losses = [
        ("cdt, gamma 0.5", Loss::new(LossKind::Cdt, 0.5, 0.0, false)?),
        ("ldt, gamma 1", Loss::new(LossKind::Ldt, 1.0, 0.0, false)?),
        ("ce, free bias", Loss::new(LossKind::Ce, 0.0, 0.0, true)?),
    ];
    for &k in ks {
        let p = Profile::step(k, 10.0, 0.5, 5)?;
        for (name, loss) in &losses {
            let mut gap = f64::NAN;
            let (t, runs) = time(budget, min_runs, || {
                let t = Target::certified(&p, *loss).expect("the target solves");
                gap = t.solution().gap / t.nuclear_norm();
                gap
            });
            println!("{:<34}{:>6}{:>12}{:>12}{:>7}{:>12.1e}", name, k, p.n(), fmt(t), runs, gap);
        }
    }
    Ok(())
}

/// Iterations per second of UFM gradient descent (the pass that `seli ufm` runs): the median
/// of five timed stretches of `iters / 5` iterations, after a warm-up of a tenth.
fn ufm_rate<T: Scalar>(profile: &Profile, d: usize, iters: u64, threads: usize) -> Result<f64> {
    let cfg = UfmConfig { d, lr: 1e-4, ..UfmConfig::default() };
    let mut solver = UfmSolver::<T>::new(cfg, profile, threads)?;
    let mut state = solver.init_state()?;
    for _ in 0..(iters / 10).max(1) {
        solver.next_iter(&mut state)?;
    }
    let stretch = (iters / 5).max(1);
    let mut rates = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..stretch {
            solver.next_iter(&mut state)?;
        }
        rates.push(stretch as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[2])
}

fn bench_ufm(a: &BenchUfmArgs) -> Result<()> {
    use seli_train::ufm::DeviceUfm;
    match (a.burn, a.device) {
        (true, _) => return bench_device_ufm::<DeviceUfm>(a, "burn tensors"),
        #[cfg(feature = "cuda")]
        (false, seli_train::Device::Cuda(_)) => {
            return bench_device_ufm::<seli_train::cuda_ufm::CudaUfm>(a, "cuBLAS");
        }
        // Refused by the device check, with how to get a CUDA build.
        #[cfg(not(feature = "cuda"))]
        (false, seli_train::Device::Cuda(_)) => return bench_device_ufm::<DeviceUfm>(a, ""),
        (false, seli_train::Device::Cpu) => {}
    }
    let iters = if a.quick { 5 } else { a.iters.max(1) };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut one_and_all = vec![1, cores];
    one_and_all.dedup();
    // (profile, d, iterations, thread counts): STEP 500/50 (the reference size of the issue that
    // specified the solver), n close to 10^5, and the large size of `seli bench ufm --device`
    // (k = 100, d = 512, STEP 2000/200) on every core only (about a second per iteration).
    let cases = [
        (Profile::step(10, 10.0, 0.5, 50)?, 64, iters, one_and_all.clone()),
        (step_near(10, 100_000)?, 64, (iters / 5).max(1), one_and_all),
        (Profile::step(100, 10.0, 0.5, 200)?, 512, (iters / 100).max(5), vec![cores]),
    ];
    let cases = if a.quick { &cases[..1] } else { &cases[..] };
    println!("seli bench ufm: full-batch GD on the UFM, summed CE, no ridge, no bias");
    println!("one iteration = 3 products of k x d x n (logits, grad W, grad H) = 6 k d n flop");
    println!();
    println!("(median rate of five timed stretches after a warm-up; a busy machine lowers it)");
    println!();
    println!(
        "{:>5}{:>6}{:>9}{:>6}{:>9}{:>8}{:>12}{:>10}",
        "k", "d", "n", "type", "threads", "iters", "iter/s", "GFLOP/s"
    );
    for (p, d, iters, threads) in cases {
        let flop = 6.0 * (p.k() * d) as f64 * p.n() as f64;
        for &threads in threads {
            for (name, rate) in [
                ("f64", ufm_rate::<f64>(p, *d, *iters, threads)?),
                ("f32", ufm_rate::<f32>(p, *d, *iters, threads)?),
            ] {
                println!(
                    "{:>5}{:>6}{:>9}{:>6}{:>9}{:>8}{:>12.1}{:>10.1}",
                    p.k(),
                    d,
                    p.n(),
                    name,
                    threads,
                    iters,
                    rate,
                    rate * flop / 1e9
                );
            }
        }
    }
    Ok(())
}

/// `seli bench ufm --device cuda` (or `--burn`): a device iteration `U` (`what` it is written
/// with) on `--device`, iterations per second over a timed stretch after a warm-up, finished on
/// the device.
fn bench_device_ufm<U: seli_train::ufm::DeviceIteration>(
    a: &BenchUfmArgs,
    what: &str,
) -> Result<()> {
    U::check_device(a.device)?;
    let iters = if a.quick { 2 } else { a.iters.max(1) };
    let cases = if a.quick {
        vec![(Profile::step(4, 10.0, 0.5, 3)?, 4, iters)]
    } else {
        vec![
            (Profile::step(10, 10.0, 0.5, 50)?, 64, iters),
            (Profile::step(100, 10.0, 0.5, 200)?, 512, (iters / 5).max(1)),
        ]
    };
    println!("seli bench ufm --device {}: full-batch GD on the UFM with {what}", a.device);
    println!("summed CE, no ridge, no bias, constant steps; 6 k d n flop per iteration");
    println!();
    println!(
        "{:>5}{:>6}{:>9}{:>6}{:>8}{:>12}{:>10}",
        "k", "d", "n", "type", "iters", "iter/s", "GFLOP/s"
    );
    for (p, d, iters) in cases {
        let cfg = seli_core::solve::ufm::UfmConfig { d, lr: 1e-3, ..Default::default() };
        let flop = 6.0 * (p.k() * d) as f64 * p.n() as f64;
        for (name, f64) in [("f32", false), ("f64", true)] {
            let mut ufm = U::new(&p, &cfg, a.device, f64)?;
            for _ in 0..3 {
                ufm.advance(false)?;
            }
            ufm.sync()?;
            let t = std::time::Instant::now();
            for _ in 0..iters {
                ufm.advance(false)?;
            }
            ufm.sync()?;
            let rate = iters as f64 / t.elapsed().as_secs_f64();
            println!(
                "{:>5}{:>6}{:>9}{:>6}{:>8}{:>12.1}{:>10.1}",
                p.k(),
                d,
                p.n(),
                name,
                iters,
                rate,
                rate * flop / 1e9
            );
        }
    }
    Ok(())
}

fn bench_train(a: &BenchTrainArgs) -> Result<()> {
    use seli_train::ModelConfig;
    if a.check {
        return check_engine(a.device);
    }
    use seli_train::bench::training_throughput;
    let mlp = |depth: usize, width: usize, batch_norm: bool| ModelConfig {
        kind: seli_train::ModelKind::Mlp,
        depth,
        width,
        batch_norm,
        last_bias: false,
    };
    // A device this build or machine lacks fails before anything is printed.
    match a.burn {
        false => seli_train::device::check_training(a.device)?,
        true => drop(seli_train::device::burn_device(a.device)?),
    }
    let (batch, width, resnet_width) = if a.quick { (8, 16, 2) } else { (128, 512, 64) };
    let (steps, rounds) = if a.quick { (1, 1) } else { (a.mlp_steps, 5) };
    match a.device {
        seli_train::Device::Cpu => println!(
            "training throughput, f32, batch {batch}, SGD with momentum, cpu, {} threads",
            rayon::current_num_threads()
        ),
        gpu => println!(
            "training throughput, f32, batch {batch}, SGD with momentum, {gpu}, {}",
            if a.burn { "burn's CUDA backend" } else { "seli's engine (cuDNN, cuBLAS)" }
        ),
    }
    println!("{:<44} {:>12}", "model", "samples/s");
    for (name, cfg) in [
        (format!("MLP 784-{width}-{width}-10 (no batch norm)"), mlp(2, width, false)),
        (format!("MLP 784-{width}x3-10 + batch norm (seli train)"), mlp(3, width, true)),
    ] {
        let r = training_throughput(
            a.device,
            &cfg,
            [1, 28, 28],
            10,
            batch,
            3.min(steps),
            steps,
            rounds,
            a.burn,
        )?;
        println!("{name:<44} {r:>12.0}");
    }
    if a.resnet_steps > 0 {
        let cfg = ModelConfig {
            kind: seli_train::ModelKind::ResNet18,
            depth: 0,
            width: resnet_width,
            batch_norm: true,
            last_bias: false,
        };
        let steps = if a.quick { 1 } else { a.resnet_steps };
        let r = training_throughput(a.device, &cfg, [3, 32, 32], 10, batch, 1, steps, 1, a.burn)?;
        println!("{:<44} {r:>12.1}", format!("ResNet-18 (width {resnet_width}) on 3x32x32"));
    }
    Ok(())
}
