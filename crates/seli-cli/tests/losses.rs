//! `seli geometry` and `seli svm` with a loss family or a free bias (docs/theory.md §10):
//! records, the exact cases, and bad flags named.

mod common;

use common::{fails, json, ok};

/// Runs `seli COMMAND --step 4,10,0.5,1 FLAGS --json DIR/NAME.json`; returns its stdout and
/// the record.
fn step4(
    dir: &std::path::Path,
    name: &str,
    command: &str,
    flags: &[&str],
) -> (String, serde_json::Value) {
    let path = dir.join(format!("{name}.json"));
    let mut args = vec![command, "--step", "4,10,0.5,1"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--json", path.to_str().unwrap()]);
    let out = ok(&args);
    (out, json(&path))
}

#[test]
fn geometry_of_a_loss_is_certified_and_reduces_to_seli_at_gamma_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (_, seli) = step4(t, "seli", "geometry", &[]);
    // cdt at gamma 0: the certified target is SELI (distance ~0, same group cosines).
    let (_, z) = step4(t, "cdt0", "geometry", &["--loss", "cdt", "--gamma", "0"]);
    assert_eq!(z["schema"], "seli.loss-geometry.v1");
    assert!(z["distances"]["dist_gw_seli"].as_f64().unwrap() < 1e-6);
    assert!(z["distances"]["dist_gm_seli"].as_f64().unwrap() < 1e-6);
    for pair in ["maj_maj", "min_min", "maj_min"] {
        let (a, b) = (&z["groups"]["cos_w"][pair], &seli["groups"]["cos_w"][pair]);
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6, "{pair}");
    }
    let (out, r) = step4(t, "cdt", "geometry", &["--loss", "cdt", "--gamma", "0.5"]);
    assert!(
        out.contains("implicit geometry of loss cdt, gamma = 0.5")
            && out.contains("optimal to the tolerance"),
        "{out}"
    );
    assert_eq!(r["schema"], "seli.loss-geometry.v1");
    assert_eq!(r["loss"]["loss"], "cdt");
    assert_eq!(r["target"]["certified"], true);
    let tr = &r["target"];
    assert!(tr["gap"].as_f64().unwrap() <= 1e-10 * tr["nuclear_norm"].as_f64().unwrap());
    assert_eq!(tr["sel_nuclear_norm"], seli["sel"]["nuclear_norm"]);
    assert!(r["distances"]["dist_gw_seli"].as_f64().unwrap() > 0.1);
    let values = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let delta = values(&r["loss"]["delta"]);
    assert!((delta[0] / delta[3] - 10f64.sqrt()).abs() < 1e-12, "{delta:?}");
    // A free bias: below ||Z_hat||_*, b = n/N - 1/k.
    let (_, r) = step4(t, "bias", "geometry", &["--bias"]);
    assert!(r["target"]["nuclear_norm"].as_f64().unwrap() < 6.507486 - 1e-3);
    let bias = values(&r["target"]["bias"]);
    assert!((bias[0] - (10.0 / 22.0 - 0.25)).abs() < 1e-6, "{bias:?}");
    // ldt: SELI of the effective counts n_c / Delta_c^2 (B = P diag(sqrt(n_c)/Delta_c)): column
    // c of the logits is P e_c / Delta_c.
    let (_, r) = step4(t, "ldt", "svm", &["--loss", "ldt", "--gamma", "1"]);
    let d = values(&r["loss"]["delta"]);
    for c in 0..4 {
        for i in 0..4 {
            let want = if i == c { 0.75 } else { -0.25 } / d[c];
            assert!((r["logits"][i][c].as_f64().unwrap() - want).abs() < 1e-5, "({i},{c})");
        }
    }
}

#[test]
fn bad_loss_flags_are_named() {
    let e = fails(&["geometry", "--loss", "focal"]);
    assert!(e.contains("focal") && e.contains("cdt"), "{e}");
    let e = fails(&["geometry", "--gamma", "0.5"]);
    assert!(e.contains("gamma = 0.5") && e.contains("cdt, ldt and vs"), "{e}");
    let e = fails(&["svm", "--loss", "cdt", "--tau", "1"]);
    assert!(e.contains("tau = 1") && e.contains("la and vs"), "{e}");
    let e = fails(&["geometry", "--loss", "cdt", "--gamma", "nan"]);
    assert!(e.contains("gamma = NaN"), "{e}");
    let e = fails(&["geometry", "--bias", "--figures", "x"]);
    assert!(e.contains("--figures"), "{e}");
}

/// A sweep over gamma of the cdt target: results.csv has the target's columns and the report
/// draws its distances to SELI and to the ETF side by side.
#[test]
fn a_gamma_sweep_of_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("s.toml");
    std::fs::write(&toml, "command = \"geometry\"\n[base]\nk = 4\nratio = 10\nrho = 0.5\nn_min = 1\nloss = \"cdt\"\n[grid]\ngamma = [-1, -0.5, 0.5, 1]\n").unwrap();
    let out = tmp.path().join("out");
    ok(&["sweep", toml.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for col in [
        "gamma",
        "nuclear_norm",
        "gap",
        "certified",
        "dist_gw_seli",
        "dist_gw_etf",
        "norm_ratio_w",
        "cos_w_min_min",
    ] {
        assert!(header.contains(&col), "{col} missing: {header:?}");
    }
    assert_eq!(csv.lines().count(), 5);
    assert!(out.join("figures/sweep-distances.svg").is_file());
}

/// A UFM sweep over gamma of cdt (examples/sweep-cdt.toml, smaller): the report draws the
/// certified targets' cosines and norm ratios against gamma with the runs' end points on top,
/// and every run records its distances to its own target.
#[test]
fn a_ufm_gamma_sweep_draws_theory_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("s.toml");
    std::fs::write(
        &toml,
        "command = \"ufm\"\n[base]\nk = 4\nratio = 10\nrho = 0.5\nn_min = 2\nd = 8\niters = 2000\n\
         lr = 0.2\nloss = \"cdt\"\n[grid]\ngamma = [-1, 0, 1]\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    ok(&["sweep", toml.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in csv.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let num = |name: &str| cells[col(name)].parse::<f64>().unwrap();
        // gamma = 0 is plain cross-entropy: its target is SELI.
        if num("gamma") == 0.0 {
            assert_eq!(num("dist_gw_target"), num("dist_gw_seli"));
        } else {
            assert!(num("dist_gw_target") < num("dist_gw_seli"), "{row}");
        }
    }
    let svg = std::fs::read_to_string(out.join("figures/sweep-theory-cosines.svg")).unwrap();
    // Three runs x three group pairs x two panels of end points, and three legend dots.
    assert_eq!(svg.matches("<circle").count(), 3 * 3 * 2 + 3, "end points");
    for label in ["classifiers w", "class means mu", "maj-maj (target)", "min-min (UFM)", "gamma"] {
        assert!(svg.contains(label), "{label}");
    }
    assert!(out.join("figures/sweep-theory-norm-ratios.svg").is_file());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"sweep-theory-cosines\""));
}
