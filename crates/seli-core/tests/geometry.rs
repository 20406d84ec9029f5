//! The exact SELI geometry against closed forms, a dense SVD and invariances.
//!
//! Reference values come from docs/theory.md §3, §4 and §9; every closed form is restated where
//! it is used.

use faer::Mat;
use proptest::prelude::*;
use seli_core::metrics::{centering_projector, gram, normalized_distance};
use seli_core::{Geometry, Group, Profile};

fn max_abs_diff(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> f64 {
    (a - b).norm_max()
}

/// Relative tolerance for k×k results: a few hundred ulps of the largest entry, times k.
fn tol(scale: f64, k: usize) -> f64 {
    256.0 * f64::EPSILON * scale * k as f64
}

/// Tolerance for results whose accuracy degrades with kappa = n_max/n_min: the eigensolver's
/// absolute error is about eps·‖A‖ = eps·n_max while the smallest nonzero eigenvalue is
/// about n_min, so G_W is good to eps·sqrt(kappa) and G_M to eps·kappa, relatively
/// (see the accuracy note on `Geometry`).
fn tol_kappa(scale: f64, k: usize, kappa: f64) -> f64 {
    tol(scale, k) * kappa
}

/// docs/theory.md §4: the closed-form STEP Grams for n_min = 1, scaled by sqrt(n_min) (G_W) and
/// 1/sqrt(n_min) (G_M). `inv` selects G_M, which is G_W with sqrt R -> 1/sqrt R, s -> 1/s.
fn step_closed_form(k: usize, r: f64, rho: f64, n_min: u64, inv: bool) -> Mat<f64> {
    let k_maj = ((1.0 - rho) * k as f64).round();
    let k_min = (rho * k as f64).round();
    let kf = k as f64;
    let s0 = (1.0 + (r - 1.0) * rho).sqrt();
    let (sr, s) = if inv { (1.0 / r.sqrt(), 1.0 / s0) } else { (r.sqrt(), s0) };
    let scale = if inv { 1.0 / (n_min as f64).sqrt() } else { (n_min as f64).sqrt() };
    let maj_sq = sr * (1.0 - 1.0 / k_maj) + s * rho / ((1.0 - rho) * kf);
    let min_sq = (1.0 - 1.0 / k_min) + s * (1.0 - rho) / (rho * kf);
    let maj_maj = -sr / k_maj + s * rho / ((1.0 - rho) * kf);
    let min_min = -1.0 / k_min + s * (1.0 - rho) / (rho * kf);
    let maj_min = -s / kf;
    let is_maj = |c: usize| (c as f64) < k_maj;
    Mat::from_fn(k, k, |i, j| {
        scale
            * match (is_maj(i), is_maj(j), i == j) {
                (true, true, true) => maj_sq,
                (false, false, true) => min_sq,
                (true, true, false) => maj_maj,
                (false, false, false) => min_min,
                _ => maj_min,
            }
    })
}

/// (k, rho) pairs with integer splits, including k = 2 and a single minority class.
fn step_shapes() -> Vec<(usize, f64)> {
    let mut v =
        vec![(2, 0.5), (3, 1.0 / 3.0), (3, 2.0 / 3.0), (10, 0.1), (10, 0.9), (9, 1.0 / 3.0)];
    for k in [4, 6, 10, 20] {
        for m in 1..k {
            if k <= 6 || m % 3 == 1 {
                v.push((k, m as f64 / k as f64));
            }
        }
    }
    v
}

#[test]
fn step_closed_forms_for_many_profiles() {
    let mut checked = 0;
    for (k, rho) in step_shapes() {
        for r in [1.0, 2.0, 7.0, 10.0, 100.0, 1e4] {
            for n_min in [1, 2, 3, 7] {
                let p = Profile::step(k, r, rho, n_min).unwrap();
                let g = Geometry::new(&p).unwrap();
                let gw = step_closed_form(k, r, rho, n_min, false);
                let gm = step_closed_form(k, r, rho, n_min, true);
                let ctx = format!("k={k} R={r} rho={rho} n_min={n_min}");
                let err_w = max_abs_diff(g.gram_w(), gw.as_ref());
                assert!(err_w < tol_kappa(gw.norm_max(), k, r.sqrt()), "G_W {ctx}: {err_w}");
                let err_m = max_abs_diff(g.gram_m(), gm.as_ref());
                assert!(err_m < tol_kappa(gm.norm_max(), k, r), "G_M {ctx}: {err_m}");

                // Spectrum: sqrt(R n_min) x (k_M-1), sqrt(n_min) x (k_m-1), s sqrt(n_min) x 1.
                let k_maj = ((1.0 - rho) * k as f64).round() as usize;
                let s = (1.0 + (r - 1.0) * rho).sqrt();
                let nm = n_min as f64;
                let mut expect = vec![(r * nm).sqrt(); k_maj - 1];
                expect.extend(vec![nm.sqrt(); k - k_maj - 1]);
                expect.push(s * nm.sqrt());
                expect.sort_by(|a, b| b.partial_cmp(a).unwrap());
                for (got, want) in g.singular_values().iter().zip(&expect) {
                    assert!((got - want).abs() < tol(expect[0], k), "sigma {ctx}: {got} vs {want}");
                }
                let nuclear =
                    nm.sqrt() * (r.sqrt() * (k_maj as f64 - 1.0) + (k - k_maj) as f64 - 1.0 + s);
                assert!((g.nuclear_norm() - nuclear).abs() < tol(nuclear, k), "nuclear {ctx}");
                let n = p.n() as f64;
                let fro = n * (1.0 - 1.0 / k as f64);
                assert!((g.frobenius_sq() - fro).abs() < tol(fro, k), "||Z||_F^2 {ctx}");
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} profiles checked");
}

#[test]
fn step_qualitative_consequences() {
    // docs/theory.md §4: majority classifiers are longer, minority means are longer, and the
    // minority-minority classifier cosine crosses 0 at R* = 1 + (2-rho)/(1-rho)^2.
    // Counts are whole numbers, so R is taken on a grid of 1/20 with n_min = 20.
    for (k, rho) in [(4, 0.5), (10, 0.5), (10, 0.2), (6, 1.0 / 3.0)] {
        let r_star = 1.0 + (2.0 - rho) / ((1.0 - rho) * (1.0 - rho));
        for (f, sign) in [(0.95f64, -1.0f64), (1.05, 1.0)] {
            let r = (r_star * f * 20.0).round() / 20.0;
            let g = Geometry::new(&Profile::step(k, r, rho, 20).unwrap()).unwrap();
            let st = g.stats().by_group.unwrap();
            assert!(st.norm_ratio_w.unwrap() > 1.0, "k={k} rho={rho} R={r}");
            assert!(st.norm_ratio_m.unwrap() < 1.0, "k={k} rho={rho} R={r}");
            let min_min = st.cos_w.min_min.unwrap();
            assert!(min_min * sign > 0.0, "k={k} rho={rho} R={r}: cos {min_min}");
        }
    }
    // No collapse at finite R: minority classifiers stay distinct even at R = 1e4.
    let st = Geometry::new(&Profile::step(10, 1e4, 0.5, 1).unwrap()).unwrap().stats();
    assert!(st.by_group.unwrap().cos_w.min_min.unwrap() < 0.99);
}

#[test]
fn spec_section_9_reference_values() {
    // docs/theory.md §9: STEP k = 4, R = 10, rho = 1/2, n_min = 1.
    let g = Geometry::new(&Profile::step(4, 10.0, 0.5, 1).unwrap()).unwrap();
    let sv = g.singular_values();
    for (got, want) in sv.iter().zip([3.162278, 2.345208, 1.0]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!((g.nuclear_norm() - 6.507486).abs() < 1e-6);
    let st = g.stats().by_group.unwrap();
    assert!((st.cos_w.maj_maj.unwrap() - -0.458991).abs() < 1e-6);
    assert!((st.cos_w.min_min.unwrap() - 0.079446).abs() < 1e-6);
    assert!((st.cos_w.maj_min.unwrap() - -0.382096).abs() < 1e-6);
}

#[test]
fn balanced_is_the_etf() {
    // docs/theory.md §9: balanced, m per class: G_W = sqrt(m) P, cosines -1/(k-1),
    // ||Z||_* = (k-1) sqrt(m).
    for k in [2, 3, 5, 10, 50] {
        for m in [1, 4, 1000] {
            let p = Profile::from_counts(vec![m; k]).unwrap();
            let g = Geometry::new(&p).unwrap();
            let mf = m as f64;
            let p_k = centering_projector(k);
            let gw = &p_k * faer::Scale(mf.sqrt());
            let gm = &p_k * faer::Scale(1.0 / mf.sqrt());
            assert!(max_abs_diff(g.gram_w(), gw.as_ref()) < tol(mf.sqrt(), k), "k={k} m={m}");
            assert!(max_abs_diff(g.gram_m(), gm.as_ref()) < tol(1.0, k), "k={k} m={m}");
            assert!(g.dist_gram_w_etf() < 1e-12 && g.dist_gram_m_etf() < 1e-12);
            let nuclear = (k - 1) as f64 * mf.sqrt();
            assert!((g.nuclear_norm() - nuclear).abs() < tol(nuclear, k));
            let st = g.stats();
            for i in 0..k {
                for j in 0..k {
                    let want = if i == j { 1.0 } else { -1.0 / (k - 1) as f64 };
                    assert!((st.cos_w[(i, j)] - want).abs() < 1e-12);
                    assert!((st.cos_m[(i, j)] - want).abs() < 1e-12);
                }
            }
        }
    }
    // A balanced STEP (R = 1) still has groups, and its group cosines are the ETF's.
    let st = Geometry::new(&Profile::step(6, 1.0, 0.5, 9).unwrap()).unwrap().stats();
    let by = st.by_group.unwrap();
    assert!((by.cos_w.maj_min.unwrap() + 0.2).abs() < 1e-12);
    assert!((by.norm_ratio_w.unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn single_classes_per_group_have_no_within_group_pairs() {
    // k = 2: one majority, one minority. G_W = sqrt((n0+n1)/2) * P.
    let g = Geometry::new(&Profile::step(2, 100.0, 0.5, 3).unwrap()).unwrap();
    let by = g.stats().by_group.unwrap();
    assert_eq!((by.cos_w.maj_maj, by.cos_w.min_min), (None, None));
    assert!((by.cos_w.maj_min.unwrap() + 1.0).abs() < 1e-12);
    let want = centering_projector(2) * faer::Scale((303.0f64 / 2.0).sqrt());
    assert!(max_abs_diff(g.gram_w(), want.as_ref()) < 1e-12);
}

/// The explicit k×n SEL matrix (test only: the library never forms it).
fn dense_sel(labels: &[usize], k: usize) -> Mat<f64> {
    Mat::from_fn(k, labels.len(), |c, i| {
        if c == labels[i] { 1.0 - 1.0 / k as f64 } else { -1.0 / k as f64 }
    })
}

#[test]
fn class_level_agrees_with_dense_svd_of_the_sel_matrix() {
    for counts in [vec![5u64, 3, 1, 2], vec![4, 4, 4], vec![30, 30, 3, 3, 3], vec![1, 9]] {
        let k = counts.len();
        // Interleave the classes so that samples of one class are not contiguous.
        let mut labels = Vec::new();
        let mut left = counts.clone();
        while left.iter().any(|&c| c > 0) {
            for c in 0..k {
                if left[c] > 0 {
                    labels.push(c);
                    left[c] -= 1;
                }
            }
        }
        let z = dense_sel(&labels, k);
        let svd = z.thin_svd().unwrap();
        let sv: Vec<f64> = (0..k).map(|i| svd.S().column_vector()[i]).collect();
        let g = Geometry::new(&Profile::from_counts(counts.clone()).unwrap()).unwrap();
        for i in 0..k - 1 {
            assert!((sv[i] - g.singular_values()[i]).abs() < 1e-12, "{counts:?} sigma_{i}");
        }
        assert!(sv[k - 1] < 1e-12, "rank of Z_hat is k-1");
        // G_W = U Λ Uᵀ and HᵀH = V Λ Vᵀ from the dense SVD (top k−1 triplets).
        let (u, v) = (svd.U(), svd.V());
        let lam = |i: usize| sv[i];
        let gw: Mat<f64> =
            Mat::from_fn(k, k, |a, b| (0..k - 1).map(|i| u[(a, i)] * lam(i) * u[(b, i)]).sum());
        assert!(max_abs_diff(g.gram_w(), gw.as_ref()) < 1e-12, "{counts:?} G_W");
        let n = labels.len();
        let hth: Mat<f64> =
            Mat::from_fn(n, n, |a, b| (0..k - 1).map(|i| v[(a, i)] * lam(i) * v[(b, i)]).sum());
        // Restricted to one representative per class, the embedding Gram is G_M; and every
        // sample of a class has the same row (NC1 at SELI).
        let rep: Vec<usize> =
            (0..k).map(|c| labels.iter().position(|&l| l == c).unwrap()).collect();
        for a in 0..n {
            for b in 0..n {
                let want = g.gram_m()[(labels[a], labels[b])];
                assert!((hth[(a, b)] - want).abs() < 1e-12, "{counts:?} H^T H[{a},{b}]");
            }
        }
        let restricted = Mat::from_fn(k, k, |a, b| hth[(rep[a], rep[b])]);
        assert!(max_abs_diff(restricted.as_ref(), g.gram_m()) < 1e-12);
    }
}

#[test]
fn realization_has_the_grams_and_the_sel_logits() {
    let g = Geometry::new(&Profile::step(6, 100.0, 0.5, 2).unwrap()).unwrap();
    for d in [5, 6, 32] {
        let r = g.realize(d, 7).unwrap();
        assert_eq!((r.W.nrows(), r.W.ncols(), r.M.nrows()), (d, 6, d));
        assert!(r.wtm_residual < 1e-12, "d={d}: {}", r.wtm_residual);
        assert!(max_abs_diff(gram(r.W.as_ref()).as_ref(), g.gram_w()) < 1e-11);
        assert!(max_abs_diff(gram(r.M.as_ref()).as_ref(), g.gram_m()) < 1e-12);
        // Both sum to zero over classes (docs/theory.md §3).
        for i in 0..d {
            assert!((0..6).map(|c| r.W[(i, c)]).sum::<f64>().abs() < 1e-11);
            assert!((0..6).map(|c| r.M[(i, c)]).sum::<f64>().abs() < 1e-12);
        }
    }
    // The seed is the whole story: same seed, same matrices; another seed, another frame.
    assert_eq!(g.realize(8, 1).unwrap().W, g.realize(8, 1).unwrap().W);
    assert!((&g.realize(8, 1).unwrap().W - &g.realize(8, 2).unwrap().W).norm_max() > 1e-3);
    let e = g.realize(4, 0).unwrap_err();
    assert_eq!(e.to_string(), "embedding dimension d = 4 is below k-1 = 5 (k = 6 classes)");
    let e = g.realize(1 << 40, 0).unwrap_err();
    assert!(e.to_string().contains("d = 1099511627776"), "{e}");
    let big = Profile::from_counts(vec![1; 20_000]).unwrap();
    let e = Geometry::new(&big).unwrap_err();
    assert!(e.to_string().contains("k = 20000 classes is more than the k x k geometry"), "{e}");
}

#[test]
fn imbalance_moves_away_from_the_etf() {
    let d =
        |r: f64| Geometry::new(&Profile::step(10, r, 0.5, 1).unwrap()).unwrap().dist_gram_w_etf();
    assert!(d(1.0) < 1e-12);
    assert!(d(1.0) < d(10.0) && d(10.0) < d(100.0) && d(100.0) < d(1e4));
}

fn counts_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(1u64..200, 2..9)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn permuting_classes_permutes_everything(
        (counts, perm) in counts_strategy().prop_flat_map(|c| {
            let k = c.len();
            (Just(c), Just((0..k).collect::<Vec<_>>()).prop_shuffle())
        })
    ) {
        let p = Profile::from_counts(counts).unwrap();
        let g = Geometry::new(&p).unwrap();
        let q = Geometry::new(&p.permuted(&perm)).unwrap();
        let k = p.k();
        let scale = g.gram_w().norm_max();
        for i in 0..k {
            for j in 0..k {
                prop_assert!((q.gram_w()[(i, j)] - g.gram_w()[(perm[i], perm[j])]).abs() < tol(scale, k));
                prop_assert!((q.gram_m()[(i, j)] - g.gram_m()[(perm[i], perm[j])]).abs() < tol(1.0, k));
            }
        }
        for (a, b) in q.singular_values().iter().zip(g.singular_values()) {
            prop_assert!((a - b).abs() < tol(scale, k));
        }
    }

    #[test]
    fn scaling_counts_scales_the_grams(counts in counts_strategy(), c in 2u64..50) {
        let g = Geometry::new(&Profile::from_counts(counts.clone()).unwrap()).unwrap();
        let scaled: Vec<u64> = counts.iter().map(|n| n * c).collect();
        let h = Geometry::new(&Profile::from_counts(scaled).unwrap()).unwrap();
        let k = counts.len();
        let cf = c as f64;
        let gw = g.gram_w() * faer::Scale(cf.sqrt());
        let gm = g.gram_m() * faer::Scale(1.0 / cf.sqrt());
        prop_assert!(max_abs_diff(h.gram_w(), gw.as_ref()) < tol(gw.norm_max(), k));
        prop_assert!(max_abs_diff(h.gram_m(), gm.as_ref()) < tol(gm.norm_max(), k));
        // Directions do not change at all.
        prop_assert!(normalized_distance(h.gram_w(), g.gram_w()).unwrap() < 1e-12);
    }

    #[test]
    fn dual_frame_identity_holds_for_any_counts(counts in counts_strategy()) {
        // G_W G_M = P (docs/theory.md §3: WᵀM = P with M = W (WᵀW)^†).
        let g = Geometry::new(&Profile::from_counts(counts).unwrap()).unwrap();
        let prod = g.gram_w() * g.gram_m();
        let k = g.k();
        prop_assert!(max_abs_diff(prod.as_ref(), g.logit_target().as_ref()) < tol(1.0, k) * 10.0);
        let st = g.stats();
        for c in 0..k {
            // cos(w_c, mu_c) = (1 - 1/k) / (|w_c| |mu_c|), positive.
            let want = (1.0 - 1.0 / k as f64) / (st.w_norms[c] * st.m_norms[c]);
            prop_assert!((st.cos_w_mu[c] - want).abs() < 1e-12 && st.cos_w_mu[c] > 0.0);
        }
    }
}

#[test]
fn groups_follow_two_level_counts() {
    let g = Geometry::new(&Profile::from_counts(vec![5, 50, 5, 50]).unwrap()).unwrap();
    let st = g.stats();
    let by = st.by_group.unwrap();
    assert!(by.norm_ratio_w.unwrap() > 1.0);
    // Same numbers as the STEP profile listing majorities first, up to the permutation.
    let step = Geometry::new(&Profile::step(4, 10.0, 0.5, 5).unwrap()).unwrap().stats();
    let sb = step.by_group.unwrap();
    assert!((by.cos_w.min_min.unwrap() - sb.cos_w.min_min.unwrap()).abs() < 1e-12);
    assert_eq!(g.profile().group(0), Some(Group::Minority));
}
