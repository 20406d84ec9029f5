//! The `seli` binary end to end: real processes, files in a temporary directory.

use serde_json::Value;

mod common;
use common::{fails, json, ok};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn default_geometry_prints_the_summary() {
    let out = ok(&["geometry"]);
    assert!(out.contains("step (k = 10, n = 27500): R = 10, rho = 0.5, n_min = 500"), "{out}");
    assert!(out.contains("counts    5 x 5000, 5 x 500"), "{out}");
    assert!(out.contains("dist_gw_seli_etf"), "{out}");
}

#[test]
fn json_record_holds_the_spec_reference_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/geometry.json");
    let out = ok(&["geometry", "--step", "4,10,0.5", "--json", path.to_str().unwrap()]);
    assert!(out.contains("wrote"), "{out}");
    let v = json(&path);
    assert_eq!(v["schema"], "seli.geometry.v1");
    assert_eq!(v["profile"]["counts"], serde_json::json!([10, 10, 1, 1]));
    assert_eq!(v["profile"]["groups"][3], "minority");
    // docs/theory.md §9: singular values (3.162278, 2.345208, 1), nuclear norm 6.507486,
    // cosines maj-maj -0.458991, min-min 0.079446, maj-min -0.382096.
    let sv: Vec<f64> = v["sel"]["singular_values"].as_array().unwrap().iter().map(f).collect();
    for (got, want) in sv.iter().zip([3.162278, 2.345208, 1.0]) {
        assert!((got - want).abs() < 1e-6, "{sv:?}");
    }
    assert!((f(&v["sel"]["nuclear_norm"]) - 6.507486).abs() < 1e-6);
    let cw = &v["groups"]["cos_w"];
    assert!((f(&cw["maj_maj"]) + 0.458991).abs() < 1e-6);
    assert!((f(&cw["min_min"]) - 0.079446).abs() < 1e-6);
    assert!((f(&cw["maj_min"]) + 0.382096).abs() < 1e-6);
    assert_eq!(v["matrices"]["gram_w"].as_array().unwrap().len(), 4);
    assert_eq!(v["realization"], Value::Null);
    // Only the target file is left behind: the write went through a renamed temporary.
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn realization_in_d_dimensions_has_the_sel_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.json");
    let p = path.to_str().unwrap();
    let out = ok(&["geometry", "--counts", "50,20,5", "--d", "6", "--seed", "9", "--json", p]);
    assert!(out.contains("realization in d = 6 (seed 9)"), "{out}");
    let v = json(&path);
    let r = &v["realization"];
    let mat = |m: &Value| -> Vec<Vec<f64>> {
        m.as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(f).collect())
            .collect()
    };
    let (w, m) = (mat(&r["w"]), mat(&r["m"]));
    assert_eq!((w.len(), w[0].len()), (6, 3));
    for a in 0..3 {
        for b in 0..3 {
            let wtm: f64 = (0..6).map(|i| w[i][a] * m[i][b]).sum();
            let p = if a == b { 2.0 / 3.0 } else { -1.0 / 3.0 };
            assert!((wtm - p).abs() < 1e-12, "W^T M [{a},{b}] = {wtm}");
        }
    }
    assert!(f(&r["wtm_residual"]) < 1e-12);
}

#[test]
fn every_profile_flag_gives_the_same_counts() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("y.txt");
    std::fs::write(&txt, "1\n0\n1\n2\n1\n").unwrap();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for l in [1i32, 0, 1, 2, 1] {
        npy.extend_from_slice(&l.to_le_bytes());
    }
    let npy_path = dir.path().join("y.npy");
    std::fs::write(&npy_path, npy).unwrap();
    let counts = |args: &[&str]| {
        let path = dir.path().join("out.json");
        let mut a = vec!["geometry", "--json", path.to_str().unwrap()];
        a.extend_from_slice(args);
        ok(&a);
        json(&path)["profile"]["counts"].clone()
    };
    let want = serde_json::json!([1, 3, 1]);
    assert_eq!(counts(&["--counts", "1,3,1"]), want);
    assert_eq!(counts(&["--labels", txt.to_str().unwrap()]), want);
    assert_eq!(counts(&["--labels", npy_path.to_str().unwrap(), "--classes", "3"]), want);
    assert_eq!(counts(&["--long-tail", "3,100,100"]), serde_json::json!([100, 10, 1]));
    assert_eq!(counts(&["--step", "6,3,1/3,2"]), serde_json::json!([6, 6, 6, 6, 2, 2]));
}

#[test]
fn validation_errors_name_the_bad_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["--step", "10,10,0.25"], "rho*k = 2.5 is not a positive integer"),
        (&["--step", "1,10,0.5"], "k = 1: need at least 2 classes"),
        (&["--step", "4,0.5,0.5"], "R = 0.5"),
        (&["--step", "4,inf,0.5"], "R = inf"),
        (&["--step", "4,10,1.5"], "rho = 1.5"),
        (&["--step", "4,10,0.5,0"], "n_min = 0"),
        (&["--step", "4,2.5,0.5"], "R*n_min = 2.5*1 = 2.5 is not a whole number"),
        (&["--step", "10,x,0.5"], "R = 'x' is not a number"),
        (&["--step", "10,100"], "expected 3 or 4 comma-separated values"),
        (&["--counts", "5,0,3"], "class 1 is empty"),
        (&["--counts", "5,abc"], "count of class 1 = 'abc'"),
        (&["--counts", "5"], "k = 1"),
        (&["--long-tail", "3,1,10"], "class 1 is empty"),
        (&["--long-tail", "3,0,10"], "n_max = 0"),
        (&["--step", "4,10,0.5", "--d", "2"], "d = 2 is below k-1 = 3"),
        (&["--step", "4,10,0.5", "--counts", "1,2"], "cannot be used with"),
        (&["--classes", "3"], "--labels"),
        (&["--labels", "/nonexistent/labels.txt"], "/nonexistent/labels.txt"),
    ];
    for (args, want) in cases {
        let mut a = vec!["geometry"];
        a.extend_from_slice(args);
        let err = fails(&a);
        assert!(err.contains(want), "seli {a:?}: expected '{want}' in: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "0\n1\n1.5\n").unwrap();
    let err = fails(&["geometry", "--labels", bad.to_str().unwrap()]);
    assert!(err.contains("bad.txt: line 3: '1.5' is not an integer label"), "{err}");
    let out = fails(&["geometry", "--labels", bad.to_str().unwrap(), "--classes", "0"]);
    assert!(out.contains("bad.txt"), "{out}");
    let gap = dir.path().join("gap.txt");
    std::fs::write(&gap, "0\n3\n").unwrap();
    let err = fails(&["geometry", "--labels", gap.to_str().unwrap()]);
    assert!(err.contains("gap.txt: class 1 is empty"), "{err}");
    let err = fails(&["geometry", "--labels", gap.to_str().unwrap(), "--classes", "2"]);
    assert!(err.contains("label 3 at position 1 is out of range for k = 2"), "{err}");
}

#[test]
fn help_explains_options_with_examples() {
    let out = ok(&["geometry", "--help"]);
    for want in
        ["--step", "--long-tail", "--counts", "--labels", "--json", "Example: --step 10,100,0.5"]
    {
        assert!(out.contains(want), "help lacks {want}: {out}");
    }
}

#[test]
fn bench_geometry_quick_runs() {
    let out = ok(&["bench", "geometry", "--quick"]);
    assert!(out.contains("class level (k x k eigen)"), "{out}");
    assert!(out.contains("dense (explicit k x n, thin SVD)"), "{out}");
    let out = ok(&["bench", "ufm", "--quick"]);
    assert!(out.contains("GFLOP/s") && out.contains("2750"), "{out}");
    // The burn iteration (what --device cuda times), here on the CPU backend.
    let out = ok(&["bench", "ufm", "--quick", "--burn"]);
    assert!(out.contains("with burn tensors") && out.contains("f64"), "{out}");
    if !cfg!(feature = "cuda") {
        assert!(fails(&["bench", "ufm", "--device", "cuda"]).contains("scripts/build-cuda.sh"));
        for args in [
            &["bench", "train", "--device", "cuda:1"][..],
            &["bench", "train", "--check", "--device", "cuda"],
        ] {
            let e = fails(args);
            assert!(e.contains("device cuda:") && e.contains("scripts/build-cuda.sh"), "{e}");
        }
    }
    // The engine check is for a GPU's engine; the CPU trains without it.
    let e = fails(&["bench", "train", "--check"]);
    assert!(e.contains("give --device cuda"), "{e}");
    let out = ok(&["bench", "analyze", "--quick"]);
    assert!(out.contains("n = 2000, d = 16, k = 4") && out.contains("samples/s"), "{out}");
    let out = ok(&["bench", "analyze", "--quick", "--json", "--classifier"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["nc1"].as_f64().unwrap() > 0.0 && v["median_s"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn ridge_solves_with_a_certificate_and_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let out =
        ok(&["ridge", "--step", "4,10,0.5", "--lambda", "0.5", "--json", path.to_str().unwrap()]);
    assert!(out.contains("lambda* = 3.162278"), "{out}");
    let v = json(&path);
    assert_eq!(v["schema"], "seli.ridge.v1");
    let sol = &v["solution"];
    assert_eq!(sol["termination"], "converged");
    assert!(f(&sol["gap"]) <= 1e-10 * f(&sol["objective"]).max(1.0));
    assert_eq!(sol["rank"], 3);
    assert!((f(&v["thresholds"]["lambda_mc"]) - 1.0).abs() < 1e-15);
    // Above lambda* = sqrt(10) the optimum is X = 0; unequal lambdas combine as sqrt(lw lh).
    ok(&[
        "ridge",
        "--step",
        "4,10,0.5",
        "--lambda-w",
        "4",
        "--lambda-h",
        "2.6",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert_eq!(json(&path)["solution"]["rank"], 0);
    let err = fails(&["ridge", "--step", "4,10,0.5", "--lambda", "-1"]);
    assert!(err.contains("lambda_w = -1"), "{err}");
    let csv = dir.path().join("path.csv");
    let out =
        ok(&["ridge-path", "--step", "4,10,0.5", "--points", "5", "--out", csv.to_str().unwrap()]);
    assert!(out.contains("lambda_mc = 1.000000e0"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("lambda,dist_gw_seli,dist_gw_etf,"), "{text}");
    assert_eq!(text.lines().count(), 6);
    assert_eq!(json(&csv.with_extension("json"))["schema"], "seli.ridge-path.v1");
    // --json PATH like every other command: the same record where asked.
    let rec = dir.path().join("elsewhere.json");
    let csv2 = dir.path().join("p2.csv");
    let (c2, r2) = (csv2.to_str().unwrap(), rec.to_str().unwrap());
    ok(&["ridge-path", "--step", "4,10,0.5", "--points", "5", "--out", c2, "--json", r2]);
    assert_eq!(json(&rec), json(&csv.with_extension("json")));
    assert!(!csv2.with_extension("json").exists());
}

#[test]
fn svm_finds_the_sel_matrix_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svm.json");
    let out = ok(&["svm", "--counts", "7,3,1,12,5", "--json", path.to_str().unwrap()]);
    assert!(out.contains("optimal to the tolerance"), "{out}");
    let v = json(&path);
    assert_eq!(v["schema"], "seli.svm.v1");
    assert_eq!(v["certified"], true);
    assert!(f(&v["dist_to_sel"]) < 1e-8);
    assert!((f(&v["primal"]) - f(&v["sel_nuclear_norm"])).abs() < 1e-8);
    // Class-level logits of the SEL matrix: column c is P e_c (diagonal 1 - 1/k).
    assert!((f(&v["logits"][2][2]) - 0.8).abs() < 1e-8);
    let err = fails(&["svm", "--counts", "3", "--tol", "1e-9"]);
    assert!(err.contains("k = 1"), "{err}");
}
