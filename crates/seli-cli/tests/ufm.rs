//! `seli ufm` and `seli reproduce` end to end: run directories, resume, Ctrl-C, bad input.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails, json, kill_at_random_moments, ok, seli, signal, summary_without_timing};

fn last_row(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("metrics.csv")).unwrap().lines().last().unwrap().to_string()
}

const SMALL: &[&str] =
    &["ufm", "--step", "4,10,0.5,3", "--d", "6", "--every", "10", "--checkpoint-every", "50"];

fn small(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = SMALL.iter().map(|s| s.to_string()).collect();
    a.extend(["--out".into(), dir.to_str().unwrap().into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_small(dir: &Path, extra: &[&str]) -> String {
    let a = small(dir, extra);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_run_writes_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = run_small(
        &dir,
        &["--iters", "200", "--bias", "--loss-reduction", "mean", "--dtype", "f32"],
    );
    assert!(out.contains("reached the iteration limit after 200 iterations"), "{out}");
    let cfg = json(&dir.join("config.json"));
    assert_eq!(cfg["schema"], "seli.ufm-config.v1");
    assert_eq!(
        (cfg["bias"].as_bool(), cfg["loss_reduction"].as_str(), cfg["dtype"].as_str()),
        (Some(true), Some("mean"), Some("f32"))
    );
    assert_eq!(cfg["seed"], 0);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("iter,step,objective,loss,min_margin,grad_norm,h_norm_sq,accuracy"),
        "{header}"
    );
    assert!(header.contains(
        "dist_gw_seli,dist_gw_etf,dist_gm_seli,dist_gm_etf,dist_wtm,dist_gmc_seli,dist_gmc_etf,\
         dist_wtmc,dist_z,nc1,nc1_global"
    ));
    let iters: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(iters.len(), 21, "rows at 0, 10, ..., 200");
    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["termination"], "max-iters");
    assert_eq!(summary["iters_done"], 200);
    assert!(summary["final_metrics"]["dist_gw_seli"].as_f64().unwrap() < 1.5);
    assert!((summary["targets"]["dist_gw_seli_etf"].as_f64().unwrap() - 0.387469).abs() < 1e-6);
    assert!(dir.join("checkpoint.safetensors").exists());
    // The same directory is not overwritten by accident.
    let a = small(&dir, &["--iters", "10"]);
    let out = seli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
    run_small(&dir, &["--iters", "10", "--force"]);
}

#[test]
fn resume_gives_the_uninterrupted_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_small(&a, &["--iters", "300", "--bias"]);
    run_small(&b, &["--iters", "120", "--bias"]);
    let out = ok(&["ufm", "--resume", b.to_str().unwrap(), "--iters", "300"]);
    assert!(out.contains("after 300 iterations"), "{out}");
    assert_eq!(
        std::fs::read(a.join("metrics.csv")).unwrap(),
        std::fs::read(b.join("metrics.csv")).unwrap()
    );
    let load = |d: &Path| {
        seli_io::checkpoint::load_checkpoint::<f64>(
            &d.join("checkpoint.safetensors"),
            6,
            4,
            66,
            true,
        )
        .unwrap()
    };
    assert_eq!(load(&a), load(&b));
    assert_eq!(json(&b.join("summary.json"))["resumed_from"], 120);
}

#[test]
fn ctrl_c_checkpoints_and_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let iters = "400000";
    let base = [
        "ufm",
        "--step",
        "4,10,0.5,3",
        "--d",
        "6",
        "--every",
        "1000",
        "--schedule",
        "constant",
        "--lr",
        "1e-4",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_seli"))
        .args(base)
        .args(["--iters", iters, "--out", cut.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few rows are on file, then interrupt as Ctrl-C would.
    let start = Instant::now();
    while std::fs::read_to_string(cut.join("metrics.csv")).map_or(0, |s| s.lines().count()) < 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("continue with: seli ufm --resume"), "{stderr}");
    let summary = json(&cut.join("summary.json"));
    assert_eq!(summary["termination"], "interrupted");
    let stopped = summary["iters_done"].as_u64().unwrap();
    assert!(stopped > 0 && stopped < 400_000);
    // Resume to a fixed limit past the interruption; compare with one uninterrupted run.
    let target = (stopped + 2500).to_string();
    ok(&["ufm", "--resume", cut.to_str().unwrap(), "--iters", &target]);
    ok(&[&base[..], &["--iters", &target, "--out", full.to_str().unwrap()]].concat());
    assert_eq!(last_row(&cut), last_row(&full));
    // The whole log, too: the row written at the interruption is not in the uninterrupted log.
    let log = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
    assert_eq!(log(&cut), log(&full));
}

/// SIGKILL (no chance to save anything) at random moments, then `--resume`, over and over: the
/// log, the checkpoint and the summary end equal to the uninterrupted run's, byte for byte
/// (timing fields aside). Kills land before the first checkpoint too (the run starts over),
/// between checkpoints (rows past the checkpoint are rewritten) and at off-schedule
/// checkpoints.
#[test]
fn sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let run = |dir: &Path| -> Vec<String> {
        [
            "ufm",
            "--step",
            "10,100,0.5,5",
            "--d",
            "32",
            "--iters",
            "12000",
            "--checkpoint-every",
            "700",
            "--out",
            dir.to_str().unwrap(),
            "--force",
        ]
        .map(String::from)
        .to_vec()
    };
    let start = run(&cut);
    let start: Vec<&str> = start.iter().map(String::as_str).collect();
    let resume = ["ufm", "--resume", cut.to_str().unwrap()];
    let landed = kill_at_random_moments(&start, &resume, &cut, 6, (20, 900), 7);
    assert!(landed >= 3, "only {landed} kills landed on a running process");
    let whole = run(&full);
    ok(&whole.iter().map(String::as_str).collect::<Vec<_>>());
    for f in ["metrics.csv", "checkpoint.safetensors", "config.json"] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
        assert!(read(&cut) == read(&full), "{f} differs after {landed} kills");
    }
    assert_eq!(
        summary_without_timing(&cut.join("summary.json")),
        summary_without_timing(&full.join("summary.json"))
    );
}

/// `--device`: recorded in config.json, refused by a build or machine without it before the run
/// directory exists, and a run recorded on a GPU continues on the CPU with `--device cpu` to
/// the numbers of a run that never left it.
#[test]
fn devices_are_recorded_refused_and_runs_move_between_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_small(&a, &["--iters", "100", "--device", "cpu"]);
    assert_eq!(json(&a.join("config.json"))["device"], "cpu");
    let e = fails(&small(&b, &["--device", "gpu"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("\"gpu\"") && e.contains("cpu, cuda or cuda:N"), "{e}");
    if !cfg!(feature = "cuda") {
        let args = small(&b, &["--device", "cuda:1"]);
        let e = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(e.contains("device cuda:1") && e.contains("scripts/build-cuda.sh"), "{e}");
        assert!(!b.exists(), "nothing is written for a device the build lacks");
    }
    // Half the run, then recorded as if it had run on a GPU.
    run_small(&b, &["--iters", "50"]);
    let mut cfg = json(&b.join("config.json"));
    cfg["device"] = "cuda:0".into();
    std::fs::write(b.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let bs = b.to_str().unwrap();
    if !cfg!(feature = "cuda") {
        let e = fails(&["ufm", "--resume", bs, "--iters", "100"]);
        assert!(e.contains("continues on cuda:0") && e.contains("--device cpu"), "{e}");
    }
    ok(&["ufm", "--resume", bs, "--iters", "100", "--device", "cpu"]);
    assert_eq!(json(&b.join("config.json"))["device"], "cpu");
    assert_eq!(
        std::fs::read(a.join("metrics.csv")).unwrap(),
        std::fs::read(b.join("metrics.csv")).unwrap()
    );
    // config.json of a version before devices (no "device") reads as the CPU.
    let mut old = json(&a.join("config.json"));
    old.as_object_mut().unwrap().remove("device");
    std::fs::write(a.join("config.json"), serde_json::to_string(&old).unwrap()).unwrap();
    ok(&["ufm", "--resume", a.to_str().unwrap(), "--iters", "110"]);
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("x");
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "0"], "lr = 0: must be a finite number > 0"),
        (&["--lr", "NaN"], "lr = NaN"),
        (&["--lambda-w", "-1"], "lambda_w = -1"),
        (&["--step", "10,10,0.5"], "d = 6 is below k-1 = 9"),
        (&["--schedule", "cosine"], "schedule = cosine"),
        (&["--schedule", "step:0.1@50,20"], "strictly increasing"),
        (&["--every", "0"], "record = every:0"),
        (&["--init-scale", "0"], "init_scale = 0"),
        (&["--step", "4,10,0.3"], "rho*k = 1.2"),
    ];
    for (extra, want) in cases {
        let a = small(&d, extra);
        let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains(want), "{extra:?}: expected '{want}' in {err}");
        assert!(!d.join("config.json").exists(), "{extra:?}: nothing is written for a bad config");
    }
    let a = small(
        &d,
        &["--schedule", "constant", "--lr", "1e200", "--init-scale", "1", "--iters", "100"],
    );
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("diverged at iteration"), "{err}");
    let err = fails(&["ufm", "--resume", tmp.path().join("nothing").to_str().unwrap()]);
    assert!(err.contains("nothing/config.json"), "{err}");
    let err = fails(&["ufm", "--resume", "/tmp", "--lr", "0.1"]);
    assert!(err.contains("cannot be used with"), "{err}");
    // A damaged checkpoint is refused with the file named.
    let good = tmp.path().join("good");
    run_small(&good, &["--iters", "20"]);
    let ck = good.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["ufm", "--resume", good.to_str().unwrap(), "--iters", "40"]);
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
fn reproduce_writes_three_runs_and_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&["reproduce", "--iters", "3000", "--out", tmp.path().to_str().unwrap()]);
    assert!(out.contains("classifier Gram: dist(W^T W, SELI) / dist(W^T W, ETF)"), "{out}");
    for r in ["R1", "R10", "R100"] {
        assert!(tmp.path().join(r).join("summary.json").exists(), "{r}");
    }
    let table = std::fs::read_to_string(tmp.path().join("table.csv")).unwrap();
    assert!(table.starts_with("R,iter,dist_gw_seli,dist_gw_etf"));
    // After 3000 iterations the imbalanced runs are already closer to SELI than to the ETF.
    let s = json(&tmp.path().join("R10/summary.json"));
    let m = &s["final_metrics"];
    assert!(m["dist_gw_seli"].as_f64().unwrap() < m["dist_gw_etf"].as_f64().unwrap(), "{m}");
}

#[test]
fn every_metrics_column_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/formats.md"))
            .unwrap();
    for (col, _) in seli_core::track::UfmMetrics::columns() {
        assert!(doc.contains(&format!("| `{col}` |")), "docs/formats.md does not document {col}");
    }
}

#[test]
fn the_tracker_and_seli_analyze_agree_on_every_shared_column() {
    // One vocabulary, one implementation: the UFM tracker's last row and `seli analyze` on
    // the same iterate's exported arrays (the checkpoint's H and W, labels sorted by class)
    // give the same value under every column name they share. With a bias the logits differ
    // (analyze would need b too), so the run has none.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_small(&dir, &["--iters", "300"]);
    let summary = json(&dir.join("summary.json"));
    let tracked = &summary["final_metrics"];
    // STEP 4,10,0.5,3: counts 30, 30, 3, 3, samples sorted by class.
    let labels: String = [30, 30, 3, 3]
        .iter()
        .enumerate()
        .flat_map(|(c, &m)| std::iter::repeat_n(format!("{c}\n"), m))
        .collect();
    let y = tmp.path().join("y.txt");
    std::fs::write(&y, labels).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let out = tmp.path().join("a.json");
    ok(&[
        "analyze",
        "--features",
        ckpt.to_str().unwrap(),
        "--features-key",
        "H",
        "--labels",
        y.to_str().unwrap(),
        "--classifier",
        ckpt.to_str().unwrap(),
        "--classifier-key",
        "W",
        "--chunk",
        "7",
        "--json",
        out.to_str().unwrap(),
    ]);
    let analyzed = json(&out);
    let mut shared = 0;
    for (name, _) in seli_core::features::GEOMETRY_COLUMNS {
        let (a, b) = (&tracked[name], &analyzed["values"][name]);
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                assert!((x - y).abs() <= 1e-9 * x.abs().max(1e-3), "{name}: ufm {x}, analyze {y}");
                shared += 1;
            }
            _ => assert_eq!(a, b, "{name}: defined in one and not the other"),
        }
    }
    assert_eq!(shared, seli_core::features::GEOMETRY_COLUMNS.len(), "every column defined here");
}
