//! Gradient descent on the unconstrained-features model: gradients against finite
//! differences, convergence toward SELI, ridge stationarity, determinism and resume.
#![allow(non_snake_case)]

use faer::Mat;
use seli_core::solve::ufm::{Params, Reduction, StepRule, UfmConfig, UfmSolver, UfmState};
use seli_core::solve::{Executor, Schedule, Termination};
use seli_core::track::{Tracker, UfmMetrics};
use seli_core::{Geometry, LossKind, Profile};

fn config(d: usize) -> UfmConfig {
    UfmConfig { d, ..UfmConfig::default() }
}

/// Objective at `params` (a fresh evaluation).
fn objective(solver: &mut UfmSolver<f64>, params: &Params<f64>) -> f64 {
    solver.state_at(params.clone(), 0).unwrap().eval.objective
}

/// Central finite differences of the objective against the hand-derived gradients, for every
/// entry of W, H and b. Tolerance: the O(h²) truncation plus rounding of a few objective ulps
/// divided by h.
fn check_gradients(cfg: UfmConfig, counts: Vec<u64>) {
    let profile = Profile::from_counts(counts).unwrap();
    let mut solver = UfmSolver::<f64>::new(cfg.clone(), &profile, 1).unwrap();
    let mut state = solver.init_state().unwrap();
    // Move away from the tiny initialization so that the softmax is not uniform.
    state.params.W = &state.params.W * faer::Scale(10.0);
    state.params.H = &state.params.H * faer::Scale(10.0);
    if let Some(b) = state.params.b.as_mut() {
        for (c, v) in b.iter_mut().enumerate() {
            *v = 0.3 * c as f64 - 0.2;
        }
    }
    let p0 = state.params.clone();
    let base = solver.state_at(p0.clone(), 0).unwrap();
    let (gW, gH, gb) = {
        let (a, b, c) = solver.gradients();
        (a.to_owned(), b.to_owned(), c.to_vec())
    };
    let h = 1e-5;
    let tol = |g: f64| 1e-6 * (1.0 + g.abs()) + 1e-9 * base.eval.objective.abs() / h;
    let mut worst: f64 = 0.0;
    let mut fd = |perturb: &dyn Fn(&mut Params<f64>, f64), analytic: f64| {
        let mut plus = p0.clone();
        perturb(&mut plus, h);
        let mut minus = p0.clone();
        perturb(&mut minus, -h);
        let num = (objective(&mut solver, &plus) - objective(&mut solver, &minus)) / (2.0 * h);
        let err = (num - analytic).abs();
        assert!(err < tol(analytic), "{cfg:?}: finite difference {num} vs analytic {analytic}");
        worst = worst.max(err);
    };
    for i in 0..gW.nrows() {
        for j in 0..gW.ncols() {
            fd(&|p, e| p.W[(i, j)] += e, gW[(i, j)]);
        }
    }
    for i in 0..gH.nrows() {
        for j in 0..gH.ncols() {
            fd(&|p, e| p.H[(i, j)] += e, gH[(i, j)]);
        }
    }
    for c in 0..gb.len() {
        fd(&|p, e| p.b.as_mut().unwrap()[c] += e, gb[c]);
    }
    // The gradient norm reported is the norm of these gradients.
    let norm =
        (gW.squared_norm_l2() + gH.squared_norm_l2() + gb.iter().map(|g| g * g).sum::<f64>())
            .sqrt();
    assert!((norm - base.eval.grad_norm).abs() < 1e-12 * norm);
}

#[test]
fn gradients_match_finite_differences() {
    let counts = vec![4, 2, 1];
    check_gradients(config(3), counts.clone());
    check_gradients(UfmConfig { bias: true, ..config(3) }, counts.clone());
    check_gradients(UfmConfig { lambda_w: 0.3, lambda_h: 0.05, ..config(4) }, counts.clone());
    check_gradients(
        UfmConfig {
            lambda_w: 0.2,
            lambda_h: 0.1,
            bias: true,
            reduction: Reduction::Mean,
            ..config(2)
        },
        counts,
    );
    // More samples than one chunk, so that the chunked reduction is exercised.
    check_gradients(UfmConfig { lambda_h: 0.01, bias: true, ..config(2) }, vec![150, 30, 20]);
}

/// Every loss family's gradients against finite differences, and its loss value against the
/// definition `Σ_i CE(u_i, y_i)` with `u = m ⊙ (Wᵀh + b) + ι` (docs/theory.md §10) computed here.
#[test]
fn loss_families_match_their_definitions_and_finite_differences() {
    let counts = vec![4u64, 2, 1];
    let families = [
        (LossKind::Cdt, 0.7, 0.0),
        (LossKind::Ldt, -0.8, 0.0),
        (LossKind::La, 0.0, 1.3),
        (LossKind::Vs, 0.5, -0.6),
    ];
    for (loss, gamma, tau) in families {
        for bias in [false, true] {
            let cfg = UfmConfig { loss, gamma, tau, bias, ..config(3) };
            check_gradients(cfg.clone(), counts.clone());
            check_gradients(UfmConfig { lambda_w: 0.1, ..cfg.clone() }, vec![150, 30, 20]);
            // The loss value from its definition.
            let profile = Profile::from_counts(counts.clone()).unwrap();
            let mut solver = UfmSolver::<f64>::new(cfg.clone(), &profile, 1).unwrap();
            let mut state = solver.init_state().unwrap();
            state.params.W = &state.params.W * faer::Scale(10.0);
            state.params.H = &state.params.H * faer::Scale(10.0);
            if let Some(b) = state.params.b.as_mut() {
                b.iter_mut().enumerate().for_each(|(c, v)| *v = 0.2 * c as f64);
            }
            let got = solver.state_at(state.params.clone(), 0).unwrap().eval.loss;
            let l = cfg.loss().unwrap();
            let (delta, iota) = (l.delta(&profile), l.iota(&profile));
            let n: f64 = counts.iter().sum::<u64>() as f64;
            for (c, d) in delta.iter().enumerate() {
                let want = (counts[c] as f64 / 1.0).powf(gamma);
                let mean: f64 = counts.iter().map(|&m| (m as f64).powf(gamma)).sum::<f64>() / 3.0;
                assert!((d - want / mean).abs() < 1e-12);
                let t = if matches!(loss, LossKind::La | LossKind::Vs) { tau } else { 0.0 };
                assert!((iota[c] - t * (counts[c] as f64 / n).ln()).abs() < 1e-12);
            }
            let (W, H) = (&state.params.W, &state.params.H);
            let labels: Vec<usize> =
                counts.iter().enumerate().flat_map(|(c, &m)| vec![c; m as usize]).collect();
            let mut want = 0.0;
            for (i, &y) in labels.iter().enumerate() {
                let u: Vec<f64> = (0..3)
                    .map(|c| {
                        let z: f64 = (0..W.nrows()).map(|r| W[(r, c)] * H[(r, i)]).sum::<f64>()
                            + state.params.b.as_ref().map_or(0.0, |b| b[c]);
                        let m = if loss == LossKind::Ldt { delta[y] } else { delta[c] };
                        m * z + iota[c]
                    })
                    .collect();
                let top = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                want += top + u.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - u[y];
            }
            assert!((got - want).abs() < 1e-10 * want.abs().max(1.0), "{loss}: {got} vs {want}");
        }
    }
}

fn run(
    cfg: UfmConfig,
    profile: &Profile,
    iters: u64,
    threads: usize,
) -> (UfmState<f64>, Termination) {
    let mut solver = UfmSolver::<f64>::new(cfg, profile, threads).unwrap();
    let mut state = solver.init_state().unwrap();
    let why = Executor::new(solver, iters).run(&mut state).unwrap();
    (state, why)
}

fn metrics(state: &UfmState<f64>, profile: &Profile) -> UfmMetrics {
    let geometry = Geometry::new(profile).unwrap();
    let solver = UfmSolver::<f64>::new(config(state.params.W.nrows()), profile, 1).unwrap();
    UfmMetrics::compute(state, solver.labels(), &geometry, None).unwrap()
}

#[test]
fn imbalanced_gd_heads_to_seli_not_the_etf() {
    // STEP k = 4, R = 10, rho = 1/2: SELI and the ETF differ by dist 0.387 in G_W (docs/theory.md §9
    // profile; see seli geometry). Normalized GD, 3000 iterations.
    let profile = Profile::step(4, 10.0, 0.5, 2).unwrap();
    let cfg =
        UfmConfig { d: 8, lr: 0.2, step_rule: StepRule::NormalizedGrad, ..UfmConfig::default() };
    let (state, _) = run(cfg, &profile, 3000, 2);
    let m = metrics(&state, &profile);
    let (seli, etf) = (m.get("dist_gw_seli").unwrap(), m.get("dist_gw_etf").unwrap());
    assert_eq!(m.get("accuracy"), Some(1.0));
    assert!(seli < 0.1 && etf > 0.3 && seli < etf / 4.0, "dist to SELI {seli}, to ETF {etf}");
    assert!(m.get("dist_z").unwrap() < 0.15, "{m:?}");
}

#[test]
fn balanced_gd_goes_to_the_etf() {
    let profile = Profile::from_counts(vec![5, 5, 5]).unwrap();
    let cfg =
        UfmConfig { d: 4, lr: 0.2, step_rule: StepRule::NormalizedGrad, ..UfmConfig::default() };
    let (state, _) = run(cfg.clone(), &profile, 200, 1);
    let early = metrics(&state, &profile).get("dist_gw_etf").unwrap();
    let (state, _) = run(cfg, &profile, 3000, 1);
    let m = metrics(&state, &profile);
    let (seli, etf) = (m.get("dist_gw_seli").unwrap(), m.get("dist_gw_etf").unwrap());
    assert!((seli - etf).abs() < 1e-12, "targets coincide when balanced");
    assert!(etf < 0.05 && etf < early, "dist {etf} (after 200: {early})");
    assert!(m.get("nc1").unwrap() < 1e-3);
}

#[test]
fn ridge_gd_converges_to_a_stationary_point() {
    let profile = Profile::step(4, 5.0, 0.5, 1).unwrap();
    let cfg = UfmConfig {
        d: 6,
        lr: 0.05,
        lambda_w: 0.1,
        lambda_h: 0.1,
        init_scale: 0.5,
        grad_tol: Some(1e-9),
        ..UfmConfig::default()
    };
    let (state, why) = run(cfg.clone(), &profile, 200_000, 1);
    assert_eq!(why.name(), "converged", "{why}");
    assert!(state.eval.grad_norm <= 1e-9);
    // Stationarity checked independently: a fresh evaluation's gradients vanish entrywise.
    let mut solver = UfmSolver::<f64>::new(cfg, &profile, 1).unwrap();
    let again = solver.state_at(state.params.clone(), state.iter).unwrap();
    let (gW, gH, _) = solver.gradients();
    assert!(gW.norm_max() < 1e-9 && gH.norm_max() < 1e-9);
    // At a ridge stationary point ‖W‖² = ‖H‖² when λ_W = λ_H (balanced factorization).
    let w = state.params.W.squared_norm_l2();
    assert!((w - again.eval.h_norm_sq).abs() < 1e-7 * w, "{w} vs {}", again.eval.h_norm_sq);
}

#[test]
fn results_do_not_depend_on_threads_and_resume_is_exact() {
    let profile = Profile::step(6, 10.0, 0.5, 40).unwrap(); // n = 1320: several chunks
    let cfg = UfmConfig { d: 8, lr: 0.05, bias: true, lambda_w: 1e-3, ..UfmConfig::default() };
    let (one, _) = run(cfg.clone(), &profile, 60, 1);
    let (two, _) = run(cfg.clone(), &profile, 60, 2);
    assert_eq!(one.params, two.params);
    // Stop at 25, rebuild everything from (params, iter), continue to 60.
    let (half, _) = run(cfg.clone(), &profile, 25, 2);
    let mut solver = UfmSolver::<f64>::new(cfg, &profile, 2).unwrap();
    let mut resumed = solver.state_at(half.params.clone(), half.iter).unwrap();
    Executor::new(solver, 60).run(&mut resumed).unwrap();
    assert_eq!(resumed.iter, 60);
    assert_eq!(resumed.params, one.params);
    assert_eq!(resumed.eval, one.eval);
}

#[test]
fn f32_tracks_f64() {
    let profile = Profile::step(4, 10.0, 0.5, 3).unwrap();
    let cfg = UfmConfig { d: 6, lr: 0.1, ..UfmConfig::default() };
    let (s64, _) = run(cfg.clone(), &profile, 300, 1);
    let mut solver = UfmSolver::<f32>::new(cfg, &profile, 1).unwrap();
    let mut s32 = solver.init_state().unwrap();
    Executor::new(solver, 300).run(&mut s32).unwrap();
    let w32 = Mat::from_fn(6, 4, |i, j| s32.params.W[(i, j)] as f64);
    let rel = (&w32 - &s64.params.W).norm_l2() / s64.params.W.norm_l2();
    assert!(rel < 1e-4, "relative difference {rel}");
}

#[test]
fn bad_configurations_are_rejected_by_name() {
    let profile = Profile::step(10, 10.0, 0.5, 1).unwrap();
    let err = |cfg: UfmConfig| UfmSolver::<f64>::new(cfg, &profile, 1).err().unwrap().to_string();
    assert!(err(config(8)).contains("d = 8 is below k-1 = 9"));
    assert!(
        err(UfmConfig { lr: 0.0, ..config(9) }).contains("lr = 0: must be a finite number > 0")
    );
    assert!(err(UfmConfig { lr: f64::NAN, ..config(9) }).contains("lr = NaN"));
    assert!(err(UfmConfig { lambda_w: -1.0, ..config(9) }).contains("lambda_w = -1"));
    assert!(err(UfmConfig { init_scale: f64::INFINITY, ..config(9) }).contains("init_scale = inf"));
    let bad = StepRule::StepDecay { factor: 0.1, milestones: vec![5, 5] };
    assert!(err(UfmConfig { step_rule: bad, ..config(9) }).contains("strictly increasing"));
    assert!(StepRule::parse("step:0.1@x").unwrap_err().to_string().contains("whole iteration"));
    assert!(StepRule::parse("cosine").unwrap_err().to_string().contains("schedule = cosine"));
    assert_eq!(StepRule::parse("step:0.1@10,20").unwrap().spec(), "step:0.1@10,20");
}

#[test]
fn divergence_names_the_iteration() {
    let profile = Profile::step(4, 10.0, 0.5, 3).unwrap();
    let cfg = UfmConfig { d: 4, lr: 1e200, init_scale: 1.0, ..UfmConfig::default() };
    let mut solver = UfmSolver::<f64>::new(cfg, &profile, 1).unwrap();
    let mut state = solver.init_state().unwrap();
    let e = Executor::new(solver, 100).run(&mut state).unwrap_err().to_string();
    assert!(e.starts_with("diverged at iteration "), "{e}");
}

#[test]
fn tracker_records_on_schedule_and_at_the_end() {
    let profile = Profile::step(4, 10.0, 0.5, 3).unwrap();
    let geometry = Geometry::new(&profile).unwrap();
    let mut solver = UfmSolver::<f64>::new(config(4), &profile, 1).unwrap();
    let labels = solver.labels().to_vec();
    let mut state = solver.init_state().unwrap();
    let mut rows = Vec::new();
    let tracker = Tracker::new(&labels, &geometry, |m: &UfmMetrics| {
        rows.push(m.get("iter").unwrap());
        Ok(())
    });
    Executor::new(solver, 25).observe(tracker, Schedule::Every(10)).run(&mut state).unwrap();
    assert_eq!(rows, vec![0.0, 10.0, 20.0, 25.0]);
}

#[test]
fn gradient_stays_consistent_when_the_loss_is_below_epsilon() {
    // Scale a separating iterate until the loss is ~1e-40: the true-class gradient must still
    // balance the others (Σ_c g_c = 0 for every sample, so ∇_b sums to zero), rather than
    // rounding to zero as 1/(1+rest) − 1 would.
    let profile = Profile::step(4, 10.0, 0.5, 2).unwrap();
    let cfg = UfmConfig {
        d: 6,
        lr: 0.2,
        bias: true,
        step_rule: StepRule::NormalizedGrad,
        ..UfmConfig::default()
    };
    let (state, _) = run(cfg.clone(), &profile, 60, 1);
    assert_eq!(state.eval.correct, profile.n());
    let mut solver = UfmSolver::<f64>::new(cfg, &profile, 1).unwrap();
    let mut p = state.params.clone();
    let mut loss = solver.state_at(p.clone(), 0).unwrap().eval.loss;
    assert!(loss > 1e-20, "start above the target: {loss}");
    while loss > 1e-40 {
        p.W = &p.W * faer::Scale(1.5);
        loss = solver.state_at(p.clone(), 0).unwrap().eval.loss;
    }
    assert!(loss > 0.0, "still representable");
    let (_, _, gb) = solver.gradients();
    let scale: f64 = gb.iter().map(|g| g.abs()).sum();
    assert!(scale > 0.0, "loss {loss}, grad_b {gb:?}");
    assert!(gb.iter().sum::<f64>().abs() < 1e-12 * scale, "{gb:?}");
}

/// The evaluation and the gradients over several chunks (n = 263: two whole chunks of 128 and
/// a partial one) on 1 and 3 threads, against the definitions computed here sample by sample:
/// loss, correct count and smallest margin of the logits z = Wᵀh + b, and
/// G = s·m ⊙ (softmax(u) − Y) with u = m ⊙ z + ι, ∇_W = H Gᵀ, ∇_H = W G, ∇_b = G 1. Some
/// samples have all-zero embeddings, so their logits tie (margin 0: not correct; uniform
/// softmax without a bias).
#[test]
fn evaluation_and_gradients_match_their_definitions_across_chunks() {
    let counts = vec![150u64, 90, 23];
    let profile = Profile::from_counts(counts.clone()).unwrap();
    let labels: Vec<usize> =
        counts.iter().enumerate().flat_map(|(c, &m)| vec![c; m as usize]).collect();
    let k = counts.len();
    for (loss, gamma) in [(LossKind::Ce, 0.0), (LossKind::Cdt, 0.6), (LossKind::Ldt, -0.5)] {
        for bias in [false, true] {
            for threads in [1, 3] {
                let cfg = UfmConfig { loss, gamma, bias, reduction: Reduction::Mean, ..config(4) };
                let mut solver = UfmSolver::<f64>::new(cfg.clone(), &profile, threads).unwrap();
                let mut p = solver.init_state().unwrap().params;
                p.W = &p.W * faer::Scale(20.0);
                p.H = &p.H * faer::Scale(20.0);
                for i in [0, 127, 128, 200, 262] {
                    p.H.col_mut(i).fill(0.0);
                }
                if let Some(b) = p.b.as_mut() {
                    b.iter_mut().enumerate().for_each(|(c, v)| *v = 0.1 - 0.3 * c as f64);
                }
                let e = solver.state_at(p.clone(), 0).unwrap().eval;
                let (gW, gH, gb) = solver.gradients();
                let l = cfg.loss().unwrap();
                let (delta, iota) = (l.delta(&profile), l.iota(&profile));
                let n = labels.len();
                let (mut want_loss, mut correct, mut min_margin) = (0.0, 0u64, f64::INFINITY);
                let mut G = Mat::<f64>::zeros(k, n);
                for (i, &y) in labels.iter().enumerate() {
                    let z: Vec<f64> = (0..k)
                        .map(|c| {
                            (0..4).map(|r| p.W[(r, c)] * p.H[(r, i)]).sum::<f64>()
                                + p.b.as_ref().map_or(0.0, |b| b[c])
                        })
                        .collect();
                    let other = (0..k).filter(|&c| c != y).map(|c| z[c]).fold(f64::MIN, f64::max);
                    min_margin = min_margin.min(z[y] - other);
                    correct += u64::from(z[y] > other);
                    let m = |c: usize| if loss == LossKind::Ldt { delta[y] } else { delta[c] };
                    let u: Vec<f64> = (0..k).map(|c| m(c) * z[c] + iota[c]).collect();
                    let top = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = u.iter().map(|v| (v - top).exp()).sum();
                    want_loss += (top + sum.ln() - u[y]) / n as f64;
                    for c in 0..k {
                        let p_c = (u[c] - top).exp() / sum;
                        G[(c, i)] = m(c) * (p_c - f64::from(c == y)) / n as f64;
                    }
                }
                let ctx = format!("{loss} bias {bias} threads {threads}");
                assert!((e.loss - want_loss).abs() < 1e-12 * want_loss, "{ctx}: {}", e.loss);
                assert_eq!(e.correct, correct, "{ctx}");
                assert!(correct < n as u64 - 5 && correct > 0, "{ctx}: {correct}");
                assert!((e.min_margin - min_margin).abs() < 1e-12, "{ctx}: {}", e.min_margin);
                let close = |a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>, what: &str| {
                    let err = (a - b).norm_max();
                    assert!(err < 1e-13 * (1.0 + b.norm_max()), "{ctx}: {what} off by {err}");
                };
                close(gW, (&p.H * G.transpose()).as_ref(), "grad W");
                close(gH, (&p.W * &G).as_ref(), "grad H");
                for c in 0..gb.len() {
                    let want: f64 = (0..n).map(|i| G[(c, i)]).sum();
                    assert!((gb[c] - want).abs() < 1e-14, "{ctx}: grad b[{c}] {} vs {want}", gb[c]);
                }
                assert_eq!(gb.len(), if bias { k } else { 0 });
            }
        }
    }
}
