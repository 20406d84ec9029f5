//! `seli train` end to end on small dataset files written by the tests (MNIST IDX and the
//! CIFAR-10 binary layout), independent of the fetched datasets.

mod common;

use std::path::Path;

use common::{fails, json, kill_at_random_moments, ok, summary_without_timing};
use seli_io::dataset::cifar::{IMAGE_BYTES, encode_binary};
use seli_io::dataset::idx::encode_idx;

/// Writes an MNIST-layout directory: `per_class` training and 2 test images per class, each
/// class a distinct bright band.
fn write_mnist(root: &Path, per_class: usize) {
    let dir = root.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let split = |n: usize, salt: usize| {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = i % 10;
            labels.push(y as u8);
            for p in 0..28 * 28 {
                let band = (p / 28) / 3 == y;
                let noise = ((p * 13 + i * 7 + salt) % 50) as u8;
                pixels.push(if band { 200 + noise } else { noise });
            }
        }
        (encode_idx(&[n, 28, 28], &pixels), encode_idx(&[n], &labels))
    };
    let (ti, tl) = split(10 * per_class, 0);
    let (si, sl) = split(20, 3);
    for (name, bytes) in [
        ("train-images-idx3-ubyte", ti),
        ("train-labels-idx1-ubyte", tl),
        ("t10k-images-idx3-ubyte", si),
        ("t10k-labels-idx1-ubyte", sl),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn trains_an_mlp_writes_the_run_and_resumes_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), 12);
    let data = tmp.path().to_str().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let args = [
        "train",
        "--data-dir",
        data,
        "--step",
        "10,4,0.5,3",
        "--depth",
        "1",
        "--width",
        "16",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--every",
        "1",
        "--threads",
        "1",
        "--out",
        out_s,
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("train accuracy") && stdout.contains("dist G_W"), "{stdout}");
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["schema"], "seli.train-config.v1");
    assert_eq!(cfg["model"]["last_bias"], false);
    assert_eq!(cfg["milestones"], serde_json::json!([1, 2]));
    let subset = json(&out.join("subset.json"));
    assert_eq!(subset["counts"], serde_json::json!([12, 12, 12, 12, 12, 3, 3, 3, 3, 3]));
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["n_train"], 75);
    assert!(summary["last"]["dist_gw_seli"].is_number());
    // The same --out again is refused; a finished run resumes to the same summary.
    let e = fails(&args);
    assert!(e.contains("already holds a run") && e.contains("seli train --resume"), "{e}");
    ok(&["train", "--resume", out_s]);
    assert_eq!(json(&out.join("summary.json"))["last"], summary["last"]);
    // Checkpoints move between devices: a run recorded as started on a GPU continues on the
    // CPU with --device cpu (a build or machine without that GPU says so, and how).
    let mut on_gpu = cfg.clone();
    on_gpu["device"] = "cuda:0".into();
    std::fs::write(out.join("config.json"), serde_json::to_string(&on_gpu).unwrap()).unwrap();
    if !cfg!(feature = "cuda") {
        let e = fails(&["train", "--resume", out_s]);
        assert!(e.contains("continues on cuda:0") && e.contains("--device cpu"), "{e}");
    }
    ok(&["train", "--resume", out_s, "--device", "cpu"]);
    assert_eq!(json(&out.join("summary.json"))["last"], summary["last"]);
    // A training run's report: curves over epochs and the target heatmaps.
    ok(&["report", out_s]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for fig in
        ["distances", "norm-ratios", "cosines", "gram-w", "gram-m", "norms", "cosines-by-group"]
    {
        assert!(html.contains(&format!("<figure id=\"{fig}\"><svg")), "{fig} missing");
    }
    let grams = json(&out.join("grams.json"));
    assert_eq!(
        (grams["schema"].as_str(), grams["epoch"].as_u64()),
        (Some("seli.train-grams.v1"), Some(3))
    );
    assert!(html.contains("last measurement"), "the trained network's Grams are drawn");
    assert!(std::fs::read_to_string(out.join("figures/distances.svg")).unwrap().contains("epoch"));
    // Every metrics column is documented.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/formats.md"))
            .unwrap();
    for (col, _) in seli_train::eval::columns() {
        assert!(doc.contains(&format!("| `{col}` |")), "docs/formats.md does not document {col}");
    }
}

#[test]
fn resnet18_trains_on_the_cifar_binary_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for (b, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    .iter()
    .enumerate()
    {
        let labels: Vec<u8> = (0..10).map(|i| i as u8).collect();
        let pixels: Vec<u8> = (0..10 * IMAGE_BYTES)
            .map(|p| {
                let (img, ch) = (p / IMAGE_BYTES, (p % IMAGE_BYTES) / 1024);
                ((img * 25 + ch * 40 + b + p % 7) % 256) as u8
            })
            .collect();
        std::fs::write(dir.join(format!("{name}.bin")), encode_binary(&labels, &pixels)).unwrap();
    }
    let out = tmp.path().join("run");
    ok(&[
        "train",
        "--dataset",
        "cifar10",
        "--model",
        "resnet18",
        "--width",
        "2",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--step",
        "10,2,0.5,2",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    let s = json(&out.join("summary.json"));
    assert_eq!((s["n_train"].as_u64(), s["d"].as_u64()), (Some(30), Some(16)));
    assert!(s["last"]["nc1"].is_number());
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), 3);
    let data = tmp.path().to_str().unwrap();
    let out = tmp.path().join("r");
    let run = |extra: &[&str]| {
        let mut a = vec!["train", "--data-dir", data, "--out", out.to_str().unwrap(), "--force"];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = run(&["--step", "10,10,0.5,1"]);
    assert!(e.contains("class 0 asks for 10 training images, the dataset has 3"), "{e}");
    if !cfg!(feature = "cuda") {
        // The default build refuses a GPU and says how to get a CUDA build.
        let e = run(&["--step", "10,2,0.5,1", "--device", "cuda:1"]);
        assert!(e.contains("device cuda:1") && e.contains("scripts/build-cuda.sh"), "{e}");
    }
    let e = run(&["--step", "10,2,0.5,1", "--device", "gpu"]);
    assert!(e.contains("\"gpu\"") && e.contains("cpu, cuda or cuda:N"), "{e}");
    let e = run(&["--step", "10,2,0.5,1", "--milestones", "5", "--epochs", "3"]);
    assert!(e.contains("milestones [5]"), "{e}");
    let e = run(&["--step", "4,2,0.5,1"]);
    assert!(e.contains("4 classes, the dataset 10"), "{e}");
    let labels = tmp.path().join("mnist/train-labels-idx1-ubyte");
    let bytes = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &bytes[..bytes.len() - 2]).unwrap();
    let e = run(&["--step", "10,2,0.5,1"]);
    assert!(e.contains("train-labels-idx1-ubyte") && e.contains("truncated"), "{e}");
    let e =
        fails(&["train", "--data-dir", "/nonexistent", "--out", out.to_str().unwrap(), "--force"]);
    assert!(e.contains("not found") && e.contains("fetch-data.sh"), "{e}");
}

/// `seli train` killed with SIGKILL at random moments and resumed, over and over, ends with the
/// uninterrupted run's files byte for byte: the metrics log, the Grams, the checkpoint (network,
/// batch-norm statistics, optimizer state), the subset, and the summary (timing fields aside).
#[test]
fn sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), 30);
    let data = tmp.path().to_str().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    let args = |dir: &Path| -> Vec<String> {
        [
            "train",
            "--data-dir",
            data,
            "--step",
            "10,4,0.5,6",
            "--depth",
            "1",
            "--width",
            "16",
            "--batch-size",
            "16",
            "--epochs",
            "1500",
            "--every",
            "100",
            "--checkpoint-every",
            "7",
            "--out",
            dir.to_str().unwrap(),
            "--force",
        ]
        .map(String::from)
        .to_vec()
    };
    let start = args(&cut);
    let start: Vec<&str> = start.iter().map(String::as_str).collect();
    let resume = ["train", "--resume", cut.to_str().unwrap()];
    let landed = kill_at_random_moments(&start, &resume, &cut, 6, (20, 500), 11);
    assert!(landed >= 3, "only {landed} kills landed on a running process");
    let whole = args(&full);
    ok(&whole.iter().map(String::as_str).collect::<Vec<_>>());
    for f in ["metrics.csv", "grams.json", "checkpoint.safetensors", "subset.json", "config.json"] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
        assert!(read(&cut) == read(&full), "{f} differs after {landed} kills");
    }
    assert_eq!(
        summary_without_timing(&cut.join("summary.json")),
        summary_without_timing(&full.join("summary.json"))
    );
}

/// A training sweep killed while a point is mid-run (SIGKILL once a checkpoint exists without a
/// summary) and restarted gives the uninterrupted sweep's results.
#[test]
fn killed_training_sweep_resumes_to_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), 12);
    let spec = tmp.path().join("train.toml");
    std::fs::write(
        &spec,
        format!(
            "command = \"train\"\njobs = 1\n[base]\ndata_dir = \"{}\"\nk = 10\nratio = 2\nn_min = 6\n\
             width = 16\ndepth = 1\nbatch_size = 16\nepochs = 30\nevery = 5\ncheckpoint_every = 2\n\
             [grid]\nseed = [0, 1, 2]\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let whole = tmp.path().join("whole");
    ok(&["sweep", &s(&spec), "--out", &s(&whole)]);
    let cut = tmp.path().join("cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seli"))
        .args(["sweep", &s(&spec), "--out", &s(&cut)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mid_run = |d: &Path| {
        std::fs::read_dir(d.join("points")).is_ok_and(|it| {
            it.flatten().any(|e| {
                e.path().join("checkpoint.safetensors").is_file()
                    && !e.path().join("summary.json").is_file()
            })
        })
    };
    let start = std::time::Instant::now();
    while !mid_run(&cut) && start.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = ok(&["sweep", &s(&spec), "--out", &s(&cut)]);
    assert!(out.contains("3 points"), "{out}");
    let read = |d: &Path| std::fs::read_to_string(d.join("results.csv")).unwrap();
    assert_eq!(read(&cut), read(&whole));
    assert_eq!(read(&whole).lines().count(), 4);
    assert!(whole.join("report.html").is_file());
}
