//! The class-level max-margin (nuclear-norm SVM) solver finds the SEL matrix (docs/theory.md §5)
//! for any counts, with a dual certificate.

use seli_core::Profile;
use seli_core::solve::svm::solve_svm;

#[test]
fn max_margin_solution_is_the_sel_matrix_with_a_certificate() {
    let profiles = [
        Profile::step(4, 10.0, 0.5, 1).unwrap(),
        Profile::step(10, 100.0, 0.5, 2).unwrap(),
        Profile::step(5, 10.0, 0.4, 3).unwrap(),
        Profile::long_tail(6, 200, 50.0).unwrap(),
        Profile::from_counts(vec![7, 3, 1, 12, 5]).unwrap(),
        Profile::from_counts(vec![4, 4, 4]).unwrap(),
    ];
    for p in &profiles {
        let sol = solve_svm(p, 1e-9, 200_000, 7).unwrap();
        let ctx = format!("{:?}", p.counts());
        assert!(
            sol.gap <= 1e-9 * sol.primal,
            "{ctx}: gap {} after {} iterations",
            sol.gap,
            sol.iters
        );
        let scale = (p.n_max() as f64).sqrt();
        assert!(
            sol.max_abs_diff_sel < 1e-6 * scale,
            "{ctx}: |B - P D^1/2| = {}",
            sol.max_abs_diff_sel
        );
        assert!(sol.dist_to_sel < 1e-6, "{ctx}");
        assert!(
            (sol.primal - sol.sel_nuclear_norm).abs() < 1e-8 * sol.primal,
            "{ctx}: {} vs {}",
            sol.primal,
            sol.sel_nuclear_norm
        );
        // The multipliers are nonnegative and all constraints are active (positive) at SEL.
        let k = p.k();
        for c in 0..k {
            for j in 0..k {
                if j != c {
                    assert!(sol.alpha[(j, c)] >= 0.0);
                }
            }
        }
    }
}
