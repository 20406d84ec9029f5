//! `seli analyze` on feature files written by the test in every supported format.
#![allow(non_snake_case)]

mod common;

use std::io::Write;
use std::path::Path;

use common::{fails, json, ok};
use faer::Mat;
use seli_core::random::{gaussian_matrix, rng_from_seed};
use seli_core::{Geometry, Profile};
use seli_io::arrays::{Dtype, encode_npy};

struct Case {
    labels: Vec<u32>,
    H: Mat<f64>,
    W: Mat<f64>,
    geometry: Geometry,
}

/// SELI-exact class means (d = 8, STEP k = 4, R = 5, rho = 1/2, n_min = 40) plus isotropic
/// within-class noise of standard deviation `sigma`, and the SELI classifier.
fn case(sigma: f64) -> Case {
    let p = Profile::step(4, 5.0, 0.5, 40).unwrap();
    let geometry = Geometry::new(&p).unwrap();
    let r = geometry.realize(8, 5).unwrap();
    let labels: Vec<u32> =
        p.counts().iter().enumerate().flat_map(|(c, &m)| vec![c as u32; m as usize]).collect();
    let noise: Mat<f64> = gaussian_matrix(8, labels.len(), sigma, &mut rng_from_seed(9));
    let H = Mat::from_fn(8, labels.len(), |i, j| r.M[(i, labels[j] as usize)] + noise[(i, j)]);
    Case { labels, H, W: r.W.clone(), geometry }
}

fn rows_of(X: &Mat<f64>) -> Vec<f64> {
    (0..X.ncols()).flat_map(|j| (0..X.nrows()).map(move |i| X[(i, j)])).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// Writes features, labels and W (k, d) as .npy; returns their paths.
fn npy_inputs(dir: &Path, c: &Case, dtype: Dtype, fortran: bool) -> [String; 3] {
    let n = c.labels.len();
    let y: Vec<f64> = c.labels.iter().map(|&v| f64::from(v)).collect();
    [
        write(dir, "h.npy", &encode_npy(&[n, 8], &rows_of(&c.H), dtype, fortran)),
        write(dir, "y.npy", &encode_npy(&[n], &y, Dtype::Int(8), false)),
        write(dir, "w.npy", &encode_npy(&[4, 8], &rows_of(&c.W), Dtype::F64, false)),
    ]
}

fn analyze(args: &[&str], out: &Path) -> serde_json::Value {
    let o = out.to_str().unwrap();
    let mut a = vec!["analyze", "--json", o];
    a.extend_from_slice(args);
    ok(&a);
    json(out)
}

#[test]
fn seli_features_are_at_distance_zero_and_nc1_matches_the_noise() {
    let dir = tempfile::tempdir().unwrap();
    let c = case(0.0);
    let [h, y, w] = npy_inputs(dir.path(), &c, Dtype::F64, false);
    let out = dir.path().join("a.json");
    let r = analyze(&["--features", &h, "--labels", &y, "--classifier", &w], &out);
    let v = &r["values"];
    for col in
        ["dist_gw_seli", "dist_gm_seli", "dist_wtm", "dist_gmc_seli", "dist_wtmc", "ncc_mismatch"]
    {
        assert!(v[col].as_f64().unwrap() < 1e-9, "{col} = {}", v[col]);
    }
    // dist_z in its exact two-pass form.
    assert!(v["dist_z"].as_f64().unwrap() < 1e-12, "{}", v["dist_z"]);
    assert_eq!(v["accuracy"], 1.0);
    assert!((v["dist_gw_etf"].as_f64().unwrap() - c.geometry.dist_gram_w_etf()).abs() < 1e-9);
    assert_eq!(r["schema"], "seli.analyze.v1");
    assert_eq!(r["profile"]["counts"], serde_json::json!([200, 200, 40, 40]));

    // Isotropic noise sigma^2 I: NC1 = sigma^2 sum_j 1/s_j^2 over the k-1 singular values of
    // the centered means.
    let sigma = 0.05;
    let c = case(sigma);
    let [h, y, w] = npy_inputs(dir.path(), &c, Dtype::F64, false);
    let r = analyze(&["--features", &h, "--labels", &y, "--classifier", &w], &out);
    // The centered SELI means' squared singular values are the nonzero eigenvalues of G_M.
    let ev = c.geometry.gram_m().self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    let top = ev.iter().copied().fold(0.0, f64::max);
    let expected: f64 = ev.iter().filter(|&&x| x > 1e-9 * top).map(|x| sigma * sigma / x).sum();
    let nc1 = r["values"]["nc1"].as_f64().unwrap();
    assert!((nc1 / expected - 1.0).abs() < 0.15, "nc1 {nc1} vs injected {expected}");
    // The centered means ignore the noise's common offset; the raw ones carry it.
    assert!(r["values"]["dist_gmc_seli"].as_f64().unwrap() < 0.02);
}

#[test]
fn every_format_order_and_chunk_size_gives_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let c = case(0.1);
    let n = c.labels.len();
    let [h, y, w] = npy_inputs(dir.path(), &c, Dtype::F64, false);
    let out = dir.path().join("ref.json");
    let reference = analyze(&["--features", &h, "--labels", &y, "--classifier", &w], &out);
    let compare = |r: &serde_json::Value, tol: f64, what: &str| {
        for (col, want) in reference["values"].as_object().unwrap() {
            let (a, b) = (r["values"][col].as_f64(), want.as_f64());
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what} {col}: {a} vs {b}")
                }
                _ => assert_eq!(a, b, "{what} {col}"),
            }
        }
    };
    // Chunks of 7 rows: same numbers up to summation order.
    compare(
        &analyze(&["--features", &h, "--labels", &y, "--classifier", &w, "--chunk", "7"], &out),
        1e-12,
        "chunk 7",
    );
    // Fortran order, f32 and f16.
    for (dtype, fortran, tol) in
        [(Dtype::F64, true, 1e-12), (Dtype::F32, true, 1e-5), (Dtype::F16, false, 2e-2)]
    {
        let d2 = tempfile::tempdir().unwrap();
        let [h2, _, _] = npy_inputs(d2.path(), &c, dtype, fortran);
        let r = analyze(
            &["--features", &h2, "--labels", &y, "--classifier", &w, "--chunk", "50"],
            &out,
        );
        compare(&r, tol, &format!("{dtype:?} fortran={fortran}"));
    }
    // .npz, stored and deflated, everything in one archive; W stored (d, k).
    let y_vals: Vec<f64> = c.labels.iter().map(|&v| f64::from(v)).collect();
    let wt = Mat::from_fn(4, 8, |i, j| c.W[(j, i)]);
    for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
        let p = dir.path().join("all.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        let o = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file("h.npy", o).unwrap();
        z.write_all(&encode_npy(&[n, 8], &rows_of(&c.H), Dtype::F64, false)).unwrap();
        z.start_file("y.npy", o).unwrap();
        z.write_all(&encode_npy(&[n], &y_vals, Dtype::Int(4), false)).unwrap();
        z.start_file("W.npy", o).unwrap();
        z.write_all(&encode_npy(&[8, 4], &rows_of(&wt), Dtype::F64, false)).unwrap();
        z.finish().unwrap();
        let p = p.to_str().unwrap();
        let r = analyze(
            &[
                "--features",
                p,
                "--features-key",
                "h",
                "--labels",
                p,
                "--labels-key",
                "y",
                "--classifier",
                p,
                "--classifier-key",
                "W",
                "--classifier-layout",
                "dk",
            ],
            &out,
        );
        compare(&r, 1e-12, &format!("npz {method:?}"));
    }
    // safetensors (f32), with text labels.
    let bytes: Vec<u8> = rows_of(&c.H).iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, 8], &bytes).unwrap();
    let st = write(
        dir.path(),
        "h.safetensors",
        &safetensors::tensor::serialize([("features", view)], None).unwrap(),
    );
    let text: String = c.labels.iter().map(|l| format!("{l}\n")).collect();
    let yt = write(dir.path(), "y.txt", text.as_bytes());
    compare(
        &analyze(&["--features", &st, "--labels", &yt, "--classifier", &w], &out),
        1e-5,
        "safetensors",
    );
    // CSV: one row with the documented header.
    let csv = dir.path().join("a.csv");
    ok(&["analyze", "--features", &h, "--labels", &y, "--csv", csv.to_str().unwrap()]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("n,d,k,accuracy,accuracy_maj"));
    assert!(lines.next().unwrap().starts_with(&format!("{n},8,4,,,,")));
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/formats.md"))
            .unwrap();
    for (col, _) in seli_core::features::GEOMETRY_COLUMNS {
        assert!(doc.contains(&format!("| `{col}` |")), "docs/formats.md does not document {col}");
    }
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = case(0.1);
    let n = c.labels.len();
    let [h, y, w] = npy_inputs(dir.path(), &c, Dtype::F64, false);
    let run = |args: &[&str]| {
        let mut a = vec!["analyze"];
        a.extend_from_slice(args);
        fails(&a)
    };
    let short = write(
        dir.path(),
        "short.npy",
        &encode_npy(&[n - 1], &vec![0.0; n - 1], Dtype::Int(8), false),
    );
    let e = run(&["--features", &h, "--labels", &short]);
    assert!(
        e.contains("h.npy") && e.contains(&format!("{n} feature rows but {} labels", n - 1)),
        "{e}"
    );
    let mut vals = rows_of(&c.H);
    vals[8 * 17 + 3] = f64::NAN;
    let nan = write(dir.path(), "nan.npy", &encode_npy(&[n, 8], &vals, Dtype::F64, false));
    let e = run(&["--features", &nan, "--labels", &y]);
    assert!(
        e.contains("nan.npy") && e.contains("non-finite value NaN at sample 17, feature 3"),
        "{e}"
    );
    let e = run(&["--features", &h, "--labels", &y, "--classes", "3"]);
    assert!(e.contains("out of range") && e.contains("y.npy"), "{e}");
    let e = run(&["--features", &h, "--labels", &y, "--classes", "5"]);
    assert!(e.contains("class 4 is empty") && e.contains("y.npy"), "{e}");
    // A huge label: the labels file is named, not the features or the classifier.
    let mut big: Vec<f64> = c.labels.iter().map(|&v| f64::from(v)).collect();
    big[5] = 1e9;
    let big = write(dir.path(), "big.npy", &encode_npy(&[n], &big, Dtype::Int(8), false));
    for extra in [&[][..], &["--classifier", w.as_str()][..]] {
        let mut args = vec!["--features", h.as_str(), "--labels", big.as_str()];
        args.extend_from_slice(extra);
        let e = run(&args);
        assert!(e.contains("big.npy") && e.contains("1000000001"), "{e}");
        assert!(!e.contains("h.npy") && !e.contains("w.npy"), "{e}");
    }
    let e =
        run(&["--features", &h, "--labels", &y, "--classifier", &w, "--classifier-layout", "dk"]);
    assert!(e.contains("w.npy") && e.contains("the other --classifier-layout fits"), "{e}");
    let cube = write(dir.path(), "cube.npy", &encode_npy(&[2, 2, 2], &[0.0; 8], Dtype::F64, false));
    let e = run(&["--features", &cube, "--labels", &y]);
    assert!(e.contains("cube.npy") && e.contains("[2, 2, 2]"), "{e}");
    let bytes = std::fs::read(&h).unwrap();
    let cut = write(dir.path(), "cut.npy", &bytes[..bytes.len() - 100]);
    let e = run(&["--features", &cut, "--labels", &y]);
    assert!(e.contains("cut.npy") && e.contains("truncated"), "{e}");
}

/// Held-out data, out-of-distribution data and the per-class view, from the CLI, against
/// direct computations from their definitions.
#[test]
fn held_out_ood_and_per_class_match_their_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let c = case(0.6);
    let [h, y, w] = npy_inputs(dir.path(), &c, Dtype::F64, false);
    // Held-out samples: the same class means, more noise, and some labels shifted so that
    // the nearest mean and the logits disagree with them.
    let t = case(1.5);
    let ty: Vec<u32> = t
        .labels
        .iter()
        .enumerate()
        .map(|(i, &l)| if i % 7 == 0 { (l + 1) % 4 } else { l })
        .collect();
    let n = ty.len();
    let eh = write(dir.path(), "eh.npy", &encode_npy(&[n, 8], &rows_of(&t.H), Dtype::F32, false));
    let tyf: Vec<f64> = ty.iter().map(|&v| f64::from(v)).collect();
    let ey = write(dir.path(), "ey.npy", &encode_npy(&[n], &tyf, Dtype::Int(8), false));
    // OOD: a cloud around a fixed point.
    let ood: Mat<f64> = gaussian_matrix(8, 50, 0.3, &mut rng_from_seed(2));
    let ood = Mat::from_fn(8, 50, |i, j| ood[(i, j)] + if i == 3 { 2.0 } else { 0.5 });
    let oh = write(dir.path(), "ood.npy", &encode_npy(&[50, 8], &rows_of(&ood), Dtype::F64, false));
    let out = dir.path().join("a.json");
    let pc = dir.path().join("pc.csv");
    let pcj = dir.path().join("pc.json");
    let csv = dir.path().join("a.csv");
    let args = [
        "--features",
        &h,
        "--labels",
        &y,
        "--classifier",
        &w,
        "--eval-features",
        &eh,
        "--eval-labels",
        &ey,
        "--ood-features",
        &oh,
        "--per-class",
        pc.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ];
    let v = analyze(&args, &out);
    let mut args2 = args.to_vec();
    args2[13] = pcj.to_str().unwrap();
    analyze(&args2, &dir.path().join("b.json"));

    // Training class means and their center, from the definitions.
    let k = 4;
    let mut M = Mat::<f64>::zeros(8, k);
    let mut counts = [0.0; 4];
    for (j, &l) in c.labels.iter().enumerate() {
        counts[l as usize] += 1.0;
        for i in 0..8 {
            M[(i, l as usize)] += c.H[(i, j)];
        }
    }
    for l in 0..k {
        for i in 0..8 {
            M[(i, l)] /= counts[l];
        }
    }
    let Eh = Mat::from_fn(8, n, |i, j| f64::from(t.H[(i, j)] as f32));
    let (mut right, mut ncc_right, mut differ) = (0, 0, 0);
    for j in 0..n {
        let z: Vec<f64> = (0..k).map(|l| (0..8).map(|i| c.W[(i, l)] * Eh[(i, j)]).sum()).collect();
        let arg = (0..k).fold(0, |b, l| if z[l] > z[b] { l } else { b });
        let dist = |l: usize| (0..8).map(|i| (Eh[(i, j)] - M[(i, l)]).powi(2)).sum::<f64>();
        let ncc = (0..k).fold(0, |b, l| if dist(l) < dist(b) { l } else { b });
        right += usize::from(arg == ty[j] as usize);
        ncc_right += usize::from(ncc == ty[j] as usize);
        differ += usize::from(arg != ncc);
    }
    let e = &v["eval"];
    assert_eq!(e["n"], n);
    assert!(differ > 0 && ncc_right < n, "{differ} {ncc_right}");
    assert_eq!(e["accuracy"].as_f64().unwrap(), right as f64 / n as f64);
    assert_eq!(e["ncc_accuracy"].as_f64().unwrap(), ncc_right as f64 / n as f64);
    assert_eq!(e["ncc_mismatch"].as_f64().unwrap(), differ as f64 / n as f64);
    // NC5 from its definition.
    let g: Vec<f64> = (0..8).map(|i| (0..k).map(|l| M[(i, l)]).sum::<f64>() / k as f64).collect();
    let o: Vec<f64> =
        (0..8).map(|i| (0..50).map(|j| ood[(i, j)]).sum::<f64>() / 50.0 - g[i]).collect();
    let no = o.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nc5 = (0..k)
        .map(|l| {
            let m: Vec<f64> = (0..8).map(|i| M[(i, l)] - g[i]).collect();
            let nm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
            (m.iter().zip(&o).map(|(a, b)| a * b).sum::<f64>() / (nm * no)).abs()
        })
        .sum::<f64>()
        / k as f64;
    let got = v["ood"]["nc5"].as_f64().unwrap();
    assert!((got - nc5).abs() < 1e-12, "{got} vs {nc5}");
    assert_eq!(v["ood"]["n"], 50);
    // The one-row CSV carries the same figures under their own names.
    let text = std::fs::read_to_string(&csv).unwrap();
    let (head, row) = text.trim_end().split_once('\n').unwrap();
    let cells: std::collections::HashMap<&str, &str> =
        head.split(',').zip(row.split(',')).collect();
    assert_eq!(cells["eval_ncc_mismatch"].parse::<f64>().unwrap(), differ as f64 / n as f64);
    assert_eq!(cells["nc5"].parse::<f64>().unwrap(), got);
    // Per-class view: the classifier is exactly at SELI (cosine 1); within-class variance and
    // share from the definitions; CSV and JSON agree.
    let text = std::fs::read_to_string(&pc).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(head[..4], ["class", "count", "group", "w_norm"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let pj = json(&pcj);
    let mut ss = [0.0; 4];
    for (j, &l) in c.labels.iter().enumerate() {
        ss[l as usize] += (0..8).map(|i| (c.H[(i, j)] - M[(i, l as usize)]).powi(2)).sum::<f64>();
    }
    // NCC agreement per class from direct distances on the training samples.
    let mut agree = [0.0; 4];
    for (j, &l) in c.labels.iter().enumerate() {
        let z: Vec<f64> = (0..k).map(|m| (0..8).map(|i| c.W[(i, m)] * c.H[(i, j)]).sum()).collect();
        let arg = (0..k).fold(0, |b, m| if z[m] > z[b] { m } else { b });
        let dist = |m: usize| (0..8).map(|i| (c.H[(i, j)] - M[(i, m)]).powi(2)).sum::<f64>();
        let ncc = (0..k).fold(0, |b, m| if dist(m) < dist(b) { m } else { b });
        agree[l as usize] += f64::from(u8::from(arg == ncc)) / counts[l as usize];
    }
    for (l, r) in rows.iter().enumerate() {
        let a: f64 = r[col("ncc_agreement")].parse().unwrap();
        assert!((a - agree[l]).abs() < 1e-12, "class {l}: {a} vs {}", agree[l]);
        assert_eq!(r[col("group")], ["maj", "min"][l / 2]);
        let cos: f64 = r[col("cos_w_seli")].parse().unwrap();
        assert!((cos - 1.0).abs() < 1e-9, "{cos}");
        let var: f64 = r[col("within_var")].parse().unwrap();
        assert!((var - ss[l] / counts[l]).abs() < 1e-9 * var, "{var}");
        let share: f64 = r[col("within_share")].parse().unwrap();
        assert!((share - ss[l] / ss.iter().sum::<f64>()).abs() < 1e-12);
        assert_eq!(pj[l]["within_var"].as_f64().unwrap(), var);
        assert_eq!(pj[l]["class"], l);
    }
    // Bad held-out input is named.
    let short =
        write(dir.path(), "short.npy", &encode_npy(&[3], &[0.0, 1.0, 2.0], Dtype::Int(8), false));
    let e = fails(&[
        "analyze",
        "--features",
        &h,
        "--labels",
        &y,
        "--eval-features",
        &eh,
        "--eval-labels",
        &short,
    ]);
    assert!(e.contains("eh.npy") && e.contains("labels"), "{e}");
    let wide = write(dir.path(), "wide.npy", &encode_npy(&[2, 9], &[0.0; 18], Dtype::F64, false));
    let e = fails(&["analyze", "--features", &h, "--labels", &y, "--ood-features", &wide]);
    assert!(e.contains("wide.npy") && e.contains("expected (n, 8)"), "{e}");
}

/// `seli analyze --epochs`: a directory of per-epoch exports (.npz files and a subdirectory of
/// .npy files) gives one metrics row per epoch, each equal to `seli analyze` on that export,
/// the Grams of the last epoch and the report; an interrupted series resumes; bad exports are
/// named.
#[test]
fn a_directory_of_epoch_exports_gives_the_training_curves() {
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    let mut singles = Vec::new();
    for (epoch, sigma) in [(2u32, 1.0), (10, 0.3), (5, 0.6)] {
        let c = case(sigma);
        let n = c.labels.len();
        let y: Vec<f64> = c.labels.iter().map(|&v| f64::from(v)).collect();
        let feats = encode_npy(&[n, 8], &rows_of(&c.H), Dtype::F32, false);
        let labels = encode_npy(&[n], &y, Dtype::Int(8), false);
        let wt = Mat::from_fn(4, 8, |i, j| c.W[(j, i)]);
        let w = encode_npy(&[4, 8], &rows_of(&wt.transpose().to_owned()), Dtype::F64, false);
        if epoch == 5 {
            let sub = exports.join("ep5");
            std::fs::create_dir(&sub).unwrap();
            std::fs::write(sub.join("features.npy"), &feats).unwrap();
            std::fs::write(sub.join("labels.npy"), &labels).unwrap();
            std::fs::write(sub.join("classifier.npy"), &w).unwrap();
        } else {
            let p = exports.join(format!("epoch-{epoch:03}.npz"));
            let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            for (name, bytes) in
                [("features.npy", &feats), ("labels.npy", &labels), ("classifier.npy", &w)]
            {
                z.start_file(name, o).unwrap();
                z.write_all(bytes).unwrap();
            }
            z.finish().unwrap();
        }
        // The same export measured alone.
        let one = dir.path().join(format!("one{epoch}"));
        std::fs::create_dir(&one).unwrap();
        let h = write(&one, "h.npy", &feats);
        let yl = write(&one, "y.npy", &labels);
        let wl = write(&one, "w.npy", &w);
        singles.push((
            epoch,
            analyze(&["--features", &h, "--labels", &yl, "--classifier", &wl], &one.join("a.json")),
        ));
    }
    singles.sort_by_key(|s| s.0);
    let out = dir.path().join("series");
    let (e, o) = (exports.to_str().unwrap(), out.to_str().unwrap());
    let printed = ok(&["analyze", "--epochs", e, "--out", o]);
    assert!(printed.contains("3 epochs measured"), "{printed}");
    let (header, rows) = seli_io::csvlog::read_csv(&out.join("metrics.csv")).unwrap();
    assert_eq!(header[..3], ["epoch", "n", "accuracy"]);
    assert_eq!(rows.iter().map(|r| r[0].unwrap()).collect::<Vec<_>>(), [2.0, 5.0, 10.0]);
    for (row, (epoch, single)) in rows.iter().zip(&singles) {
        assert_eq!(row[0], Some(f64::from(*epoch)));
        for (i, name) in header.iter().enumerate().skip(2) {
            // serde_json reads floats to within an ulp (no float_roundtrip feature).
            let (a, b) = (row[i], single["values"][name].as_f64());
            let same = match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()),
                (a, b) => a == b,
            };
            assert!(same, "epoch {epoch} {name}: {a:?} vs {b:?}");
        }
    }
    assert!(rows[2][header.iter().position(|h| h == "dist_gw_seli").unwrap()].unwrap() < 1e-12);
    let grams = json(&out.join("grams.json"));
    assert_eq!(grams["epoch"], 10);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") || out.join("figures").read_dir().unwrap().count() > 0);
    assert!(html.contains("series of per-epoch exports"), "the report names what it measured");
    // Interrupted after two epochs: the third is measured again, the first two kept.
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(out.join("metrics.csv"), format!("{}\n", cut.join("\n"))).unwrap();
    let printed = ok(&["analyze", "--epochs", e, "--out", o]);
    assert!(printed.contains("1 epochs measured (2 kept from before)"), "{printed}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.csv")).unwrap(), text);
    // Another series into the same directory is refused; bad exports are named.
    std::fs::write(exports.join("epoch-7.npz"), b"not a zip").unwrap();
    let err = fails(&["analyze", "--epochs", e, "--out", o]);
    assert!(err.contains("holds another series"), "{err}");
    let err = fails(&["analyze", "--epochs", e, "--out", dir.path().join("s1").to_str().unwrap()]);
    assert!(err.contains("epoch-7.npz"), "{err}");
    std::fs::remove_file(exports.join("epoch-7.npz")).unwrap();
    std::fs::create_dir(exports.join("final")).unwrap();
    let err = fails(&["analyze", "--epochs", e, "--out", dir.path().join("s2").to_str().unwrap()]);
    assert!(err.contains("final") && err.contains("no epoch number"), "{err}");
    std::fs::remove_dir(exports.join("final")).unwrap();
    std::fs::remove_file(exports.join("ep5/labels.npy")).unwrap();
    let err = fails(&["analyze", "--epochs", e, "--out", dir.path().join("s3").to_str().unwrap()]);
    assert!(err.contains("ep5") && err.contains("labels.npy or labels.txt"), "{err}");
}
