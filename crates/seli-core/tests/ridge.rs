//! The class-level ridge solver: certificates, thresholds (docs/theory.md §6), ETF for balanced
//! data, the regularization path toward SELI.

use seli_core::solve::ridge::{RidgeConfig, RidgeSolver, lambda_minority_collapse, lambda_zero};
use seli_core::solve::ufm::Reduction;
use seli_core::{Geometry, Profile};

fn solve(p: &Profile, lambda: f64, red: Reduction) -> seli_core::solve::ridge::RidgeSolution {
    let cfg = RidgeConfig::new(lambda, lambda, red).unwrap();
    let (sol, why) = RidgeSolver::new(cfg, p).unwrap().solve(200_000).unwrap();
    assert_eq!(
        why.name(),
        "converged",
        "lambda {lambda}: {why} after {} iterations, gap {}",
        sol.iters,
        sol.gap
    );
    sol
}

#[test]
fn balanced_optimum_is_the_etf_below_lambda_star() {
    for (k, m) in [(3, 5), (5, 2), (10, 4)] {
        let p = Profile::from_counts(vec![m; k]).unwrap();
        let g = Geometry::new(&p).unwrap();
        let star = lambda_zero(&g, Reduction::Sum);
        for f in [0.9, 0.5, 0.1, 0.01] {
            let sol = solve(&p, f * star, Reduction::Sum);
            let d = sol.distances(&g).unwrap();
            assert!(d[1] < 1e-6 && d[3] < 1e-6, "k={k} m={m} lambda={}·λ*: {d:?}", f);
        }
    }
}

#[test]
fn thresholds_match_the_closed_forms() {
    for (k, r, rho, n_min) in [
        (4, 10.0, 0.5, 1),
        (6, 100.0, 0.5, 2),
        (10, 10.0, 0.4, 3),
        (10, 100.0, 0.5, 1),
        (5, 10.0, 0.4, 2),
    ] {
        let p = Profile::step(k, r, rho, n_min).unwrap();
        let g = Geometry::new(&p).unwrap();
        for red in [Reduction::Sum, Reduction::Mean] {
            let star = lambda_zero(&g, red);
            let ctx = format!("k={k} R={r} rho={rho} n_min={n_min} {red:?}");
            assert!(solve(&p, 1.01 * star, red).is_zero(), "{ctx}: X != 0 above λ*");
            assert!(!solve(&p, 0.99 * star, red).is_zero(), "{ctx}: X = 0 below λ*");
            let mc = lambda_minority_collapse(&p, red);
            let groups = p.groups().unwrap();
            let above = solve(&p, 1.01 * mc, red).minority_spread(groups).unwrap();
            let below = solve(&p, 0.99 * mc, red).minority_spread(groups).unwrap();
            assert!(above < 1e-6, "{ctx}: minority spread {above} above λ_mc");
            assert!(below > 1e-4, "{ctx}: minority spread {below} below λ_mc");
        }
    }
}

#[test]
fn regularization_path_approaches_seli() {
    let p = Profile::step(6, 10.0, 0.5, 1).unwrap();
    let g = Geometry::new(&p).unwrap();
    let star = lambda_zero(&g, Reduction::Sum);
    let mut last = f64::INFINITY;
    for e in 1..=8 {
        let lambda = star * 10f64.powf(-(e as f64) * 0.5);
        let sol = solve(&p, lambda, Reduction::Sum);
        let d = sol.distances(&g).unwrap()[0];
        assert!(d <= last + 1e-7, "λ = {lambda}: dist to SELI {d} after {last}");
        last = d;
    }
    // The approach is slow (logarithmic in 1/λ, docs/theory.md §6): 0.35 at λ*/√10, 0.068 at 1e-4 λ*.
    assert!(last < 0.07, "{last}");
}

#[test]
fn gradient_descent_on_the_ridge_ufm_reaches_the_convex_optimum() {
    // docs/theory.md §6: GD on the non-convex factored problem ends at the global optimum's
    // geometry. Compare Grams from GD's W and class means with the convex solver's.
    use seli_core::features::FeatureMoments;
    use seli_core::metrics::{gram, normalized_distance};
    use seli_core::solve::Executor;
    use seli_core::solve::ufm::{UfmConfig, UfmSolver};
    let p = Profile::step(4, 10.0, 0.5, 2).unwrap();
    let lambda = 0.3;
    let convex = solve(&p, lambda, Reduction::Sum);
    let cfg = UfmConfig {
        d: 5,
        lr: 0.05,
        lambda_w: lambda,
        lambda_h: lambda,
        init_scale: 0.5,
        grad_tol: Some(1e-10),
        ..UfmConfig::default()
    };
    let mut gd = UfmSolver::<f64>::new(cfg, &p, 1).unwrap();
    let labels = gd.labels().to_vec();
    let mut state = gd.init_state().unwrap();
    let why = Executor::new(gd, 500_000).run(&mut state).unwrap();
    assert_eq!(why.name(), "converged", "{why}");
    let gw = gram(state.params.W.as_ref());
    let moments = FeatureMoments::of_matrix(state.params.H.as_ref(), &labels, 4).unwrap();
    let m = moments.class_means().unwrap();
    let gm = gram(m.as_ref());
    let dw = normalized_distance(gw.as_ref(), convex.gram_w.as_ref()).unwrap();
    let dm = normalized_distance(gm.as_ref(), convex.gram_m.as_ref()).unwrap();
    assert!(dw < 1e-4 && dm < 1e-4, "GD vs convex optimum: G_W {dw}, G_M {dm}");
    // Same objective too: ‖W‖² = ‖H‖² = ‖X‖_* at the optimum of the factored problem.
    assert!((state.eval.objective - convex.objective).abs() < 1e-7 * convex.objective);
}

#[test]
fn collapse_is_detected_for_any_counts() {
    // Three class sizes (no majority/minority groups): above √5 (docs/theory.md §6: λ_mc = √n_min for the
    // smallest classes) the three classes of 5 samples share one classifier; far below, none do.
    let p = Profile::from_counts(vec![100, 60, 5, 5, 5]).unwrap();
    assert!(p.groups().is_none());
    let high = solve(&p, 1.2 * 5f64.sqrt(), Reduction::Sum);
    let low = solve(&p, 0.8 * 5f64.sqrt(), Reduction::Sum);
    assert_eq!(high.collapsed_pairs(), vec![(2, 3), (2, 4), (3, 4)], "rank {}", high.rank);
    assert!(low.collapsed_pairs().is_empty(), "{:?}", low.collapsed_pairs());
}
