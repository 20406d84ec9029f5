//! `seli sweep`: interrupted and restarted sweeps, shards and merge, malformed sweep files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fails, json, ok, seli, signal};

/// 12 short UFM runs: 3 imbalance ratios x 4 seeds.
const UFM_SWEEP: &str = r#"
command = "ufm"
[base]
k = 4
n_min = 3
d = 8
iters = 400
checkpoint_every = 50
[grid]
ratio = [1, 10, 100]
seed = { from = 0, to = 3, step = 1 }
"#;

/// 12 exact ridge solves: 3 ratios x 4 lambdas.
const RIDGE_SWEEP: &str = r#"
command = "ridge"
[base]
k = 4
n_min = 2
[grid]
ratio = [1, 5, 20]
lambda = { from = 1e-3, to = 1, num = 4, log = true }
"#;

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn results(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("results.csv")).unwrap()
}

/// The cell of `results.csv` in row `row` (0: the first point) and column `col`.
fn cell(dir: &Path, row: usize, col: &str) -> String {
    let t = seli_io::csv::Table::from_csv(&results(dir), Path::new("results.csv")).unwrap();
    let c = t.header.iter().position(|h| h == col).unwrap_or_else(|| panic!("no column {col}"));
    t.rows[row][c].clone()
}

#[test]
fn stopped_and_restarted_sweep_gives_the_uninterrupted_results() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "ufm.toml", UFM_SWEEP);
    let whole = tmp.path().join("whole");
    ok(&["sweep", s(&spec), "--out", s(&whole)]);
    let reference = results(&whole);
    assert_eq!(reference.lines().count(), 13, "{reference}");
    assert!(reference.starts_with("point,index,ratio,seed,k,n,termination,iters_done,"));

    // Stop after 5 points, then after 4 more, then finish: the same table.
    let parts = tmp.path().join("parts");
    let out = ok(&["sweep", s(&spec), "--out", s(&parts), "--max-points", "5", "--jobs", "2"]);
    assert!(out.contains("5 run now") && out.contains("7 not started"), "{out}");
    assert_eq!(results(&parts).lines().count(), 6);
    let out = ok(&["sweep", s(&spec), "--out", s(&parts), "--max-points", "4"]);
    assert!(out.contains("5 complete before, 4 run now"), "{out}");
    let out = ok(&["sweep", s(&spec), "--out", s(&parts)]);
    assert!(out.contains("9 complete before, 3 run now"), "{out}");
    assert_eq!(results(&parts), reference);
    // Idempotent: nothing left to run, same table again.
    let out = ok(&["sweep", s(&spec), "--out", s(&parts)]);
    assert!(out.contains("12 complete before, 0 run now"), "{out}");
    assert_eq!(results(&parts), reference);

    // A point interrupted midway (checkpoint at iteration 200, torn metrics row, no summary)
    // resumes from its checkpoint and ends where the uninterrupted run ended.
    let point = parts.join("points/ratio=100,seed=2");
    std::fs::remove_file(point.join("summary.json")).unwrap();
    let metrics = std::fs::read_to_string(point.join("metrics.csv")).unwrap();
    // Keep the rows up to the first one past iteration 200 (a run killed a little later).
    let mut torn = String::new();
    for l in metrics.split_inclusive('\n') {
        torn.push_str(l);
        if l.split(',').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|i| i > 200.0) {
            break;
        }
    }
    torn.push_str("250,0.12");
    std::fs::write(point.join("metrics.csv"), torn).unwrap();
    let ckpt = whole.join("points/ratio=100,seed=2");
    // The checkpoint of iteration 200 from a run of the same point stopped there.
    let early = tmp.path().join("early");
    let cfg = json(&ckpt.join("config.json"));
    let step = format!(
        "{},{},{},{}",
        cfg["profile"]["k"],
        cfg["profile"]["ratio"],
        cfg["profile"]["rho"],
        cfg["profile"]["n_min"]
    );
    ok(&["ufm", "--step", &step, "--d", "8", "--iters", "200", "--seed", "2", "--out", s(&early)]);
    std::fs::copy(early.join("checkpoint.safetensors"), point.join("checkpoint.safetensors"))
        .unwrap();
    let out = ok(&["sweep", s(&spec), "--out", s(&parts)]);
    assert!(out.contains("11 complete before, 1 run now"), "{out}");
    assert_eq!(json(&point.join("summary.json"))["resumed_from"], 200);
    assert_eq!(
        std::fs::read_to_string(point.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(ckpt.join("metrics.csv")).unwrap()
    );
    assert_eq!(results(&parts), reference);
}

#[test]
fn killed_sweep_restarts_without_losing_work() {
    let tmp = tempfile::tempdir().unwrap();
    // Longer points so that the kill lands while some are running.
    let spec = write_spec(
        tmp.path(),
        "ufm.toml",
        &UFM_SWEEP
            .replace("iters = 400", "iters = 3000")
            .replace("checkpoint_every = 50", "checkpoint_every = 100"),
    );
    let whole = tmp.path().join("whole");
    ok(&["sweep", s(&spec), "--out", s(&whole), "--jobs", "2"]);
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_seli"))
        .args(["sweep", s(&spec), "--out", s(&killed), "--jobs", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no chance to clean up) once a point is complete and another is held
    // mid-run (claimed, with a checkpoint and no summary).
    let start = Instant::now();
    let points = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d.join("points"))
            .map(|it| it.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let claimed_mid_run = |d: &Path, p: &Path| {
        let name = p.file_name().unwrap().to_str().unwrap();
        d.join("claims").join(format!("{name}.json")).is_file()
            && p.join("checkpoint.safetensors").is_file()
            && !p.join("summary.json").is_file()
    };
    let ready = |d: &Path| {
        let ps = points(d);
        ps.iter().any(|p| p.join("summary.json").is_file())
            && ps.iter().any(|p| claimed_mid_run(d, p))
    };
    // The points are short: a point seen mid-run can end before a kill lands. So the sweep is
    // frozen (SIGSTOP) first, the state checked while nothing moves, and killed only if it is
    // still the wanted one (else it goes on: SIGCONT).
    loop {
        assert!(start.elapsed() < Duration::from_secs(120), "no kill point within 120 s");
        if ready(&killed) {
            freeze(child.id());
            if ready(&killed) {
                break;
            }
            signal(child.id(), "CONT");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listing = ok(&["sweep", s(&spec), "--out", s(&killed), "--list"]);
    assert!(listing.contains("done"), "{listing}");
    assert!(
        listing.contains("started")
            && listing.contains("(stale claim: process ")
            && listing.contains("has ended)"),
        "{listing}"
    );
    let out = seli(&["sweep", s(&spec), "--out", s(&killed)]);
    assert!(out.status.success());
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains(" 0 complete before"), "{stdout}");
    assert!(stdout.contains(" 0 held elsewhere"), "{stdout}");
    assert!(stderr.contains("took over the claim of pid"), "{stderr}");
    assert_eq!(results(&killed), results(&whole));
    // Every claim released (a temporary of the killed worker may remain until it is older
    // than the lease).
    assert_eq!(claim_files(&killed), 0);
}

/// Stops process `pid` (SIGSTOP) and waits until every one of its threads has stopped
/// (state `T` in /proc/PID/task/TID/stat).
fn freeze(pid: u32) {
    signal(pid, "STOP");
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    };
    let start = Instant::now();
    while !stopped() {
        assert!(start.elapsed() < Duration::from_secs(10), "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Claim files (not temporaries) in a sweep's claims directory.
fn claim_files(out: &Path) -> usize {
    std::fs::read_dir(out.join("claims"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
            !name.starts_with('.')
        })
        .count()
}

/// The count before `what` in a sweep summary (`... 4 run now, ...`).
fn count(summary: &str, what: &str) -> usize {
    let line = summary.lines().find(|l| l.contains(" points; ")).expect("a summary line");
    let at = line.find(what).unwrap_or_else(|| panic!("no '{what}' in {line}"));
    line[..at].trim_end().rsplit([' ', ';', ',']).next().unwrap().parse().unwrap()
}

#[test]
fn concurrent_sweeps_on_one_directory_run_each_point_once() {
    let tmp = tempfile::tempdir().unwrap();
    let spec =
        write_spec(tmp.path(), "ufm.toml", &UFM_SWEEP.replace("iters = 400", "iters = 1500"));
    let whole = tmp.path().join("whole");
    ok(&["sweep", s(&spec), "--out", s(&whole), "--jobs", "1"]);
    let shared = tmp.path().join("shared");
    let worker = || {
        Command::new(env!("CARGO_BIN_EXE_seli"))
            .args(["sweep", s(&spec), "--out", s(&shared), "--jobs", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (worker(), worker());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut ran = 0;
    for o in &outs {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
        // Each worker accounts for every point: run, found complete, or held by the other.
        let seen = count(&text, "complete before")
            + count(&text, "run now")
            + count(&text, "held elsewhere");
        assert_eq!(seen, 12, "{text}");
        assert_eq!(count(&text, "failed") + count(&text, "interrupted"), 0, "{text}");
        ran += count(&text, "run now");
    }
    assert_eq!(ran, 12, "every point ran exactly once between the two workers");
    assert_eq!(results(&shared), results(&whole));
    // Nothing left behind, not even a temporary.
    assert_eq!(std::fs::read_dir(shared.join("claims")).unwrap().count(), 0);
}

#[test]
fn two_shards_merged_equal_the_unsharded_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "ridge.toml", RIDGE_SWEEP);
    let whole = tmp.path().join("whole");
    ok(&["sweep", s(&spec), "--out", s(&whole)]);
    let reference = results(&whole);
    assert_eq!(reference.lines().count(), 13);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out = ok(&["sweep", s(&spec), "--out", s(&a), "--shard", "0/2"]);
    assert!(out.contains("(shard 0 of 2): 6 points"), "{out}");
    ok(&["sweep", s(&spec), "--out", s(&b), "--shard", "1/2"]);
    assert!(a.join("results-shard-0-of-2.csv").is_file());
    assert!(!a.join("results.csv").exists());
    // Point index i runs in shard i % 2.
    assert!(a.join("points/ratio=1,lambda=0.001").is_dir());
    assert!(b.join("points/ratio=1,lambda=0.01").is_dir());

    let err = fails(&["sweep", "merge", s(&a)]);
    assert!(
        err.contains("6 of 12 points are not complete") && err.contains("1 (ratio=1,lambda=0.01)"),
        "{err}"
    );
    let merged = tmp.path().join("merged");
    let out = ok(&["sweep", "merge", s(&a), s(&b), "--out", s(&merged)]);
    assert!(out.contains("merged 12 of 12 points"), "{out}");
    assert_eq!(results(&merged), reference);
    assert!(merged.join("report.html").is_file());

    // Shards sharing one output directory (a cluster's shared disk) merge in place.
    let shared = tmp.path().join("shared");
    for i in ["0/2", "1/2"] {
        ok(&["sweep", s(&spec), "--out", s(&shared), "--shard", i]);
    }
    ok(&["sweep", "merge", s(&shared)]);
    assert_eq!(results(&shared), reference);

    // Outputs of different sweeps do not merge.
    let other = write_spec(tmp.path(), "other.toml", &RIDGE_SWEEP.replace("[1, 5, 20]", "[1, 5]"));
    let c = tmp.path().join("c");
    ok(&["sweep", s(&other), "--out", s(&c)]);
    let err = fails(&["sweep", "merge", s(&a), s(&c)]);
    assert!(err.contains("hold different sweeps"), "{err}");
}

#[test]
fn results_match_the_single_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "g.toml",
        "command = \"geometry\"\n[[list]]\ncounts = [50, 50, 5]\n[[list]]\nk = 6\nratio = 10\nrho = \"1/3\"\n",
    );
    let out = tmp.path().join("g");
    ok(&["sweep", s(&spec), "--out", s(&out)]);
    let table = results(&out);
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[..7], ["point", "index", "counts", "k", "ratio", "rho", "n"]);
    let single = tmp.path().join("single.json");
    // k, ratio, rho build --step K,R,RHO,N_MIN with the default N_MIN = 500.
    ok(&["geometry", "--step", "6,10,1/3,500", "--json", s(&single)]);
    let want = json(&single)["distances"]["dist_gw_seli_etf"].as_f64().unwrap();
    let got: f64 = cell(&out, 1, "dist_gw_seli_etf").parse().unwrap();
    assert_eq!(got, want);
    assert_eq!(cell(&out, 0, "n"), "105");
    assert_eq!(cell(&out, 0, "counts"), "50,50,5");
    // Each point records the command line that reproduces it.
    let p = json(&out.join("points/k=6,ratio=10,rho=1-3/point.json"));
    assert!(
        p["command_line"].as_str().unwrap().starts_with("seli geometry --step 6,10,1/3,500 --json")
    );
}

#[test]
fn malformed_sweep_files_are_rejected_with_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "command = \"ufm\"\n[grid]\nratio = [1, 10]\nsed = [0, 1]\n",
            "line 4: key 'sed': unknown key for ufm",
        ),
        (
            "command = \"ridge\"\n[base]\nlambda = 0.1\n[grid]\nratio = []\n",
            "line 5: key 'ratio': empty grid",
        ),
        (
            "command = \"ufm\"\n[grid]\nlr = { from = 0.1, to = 0.01, step = 0.01 }\n",
            "line 3: key 'lr': bad range: to = 0.01 is below from = 0.1",
        ),
        (
            "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 3 }\n",
            "line 3: key 'seed': a range needs step or num",
        ),
        ("command = \"ufm\"\n[base]\nout = \"x\"\n", "line 3: key 'out': unknown key for ufm"),
        (
            "command = \"ufm\"\n[grid]\nd = [\"wide\"]\n",
            "point 0 (d=wide): invalid value 'wide' for '--d <D>'",
        ),
        (
            "command = \"geometry\"\n[grid]\nratio = [10, -1]\n",
            "point 1 (ratio=-1): invalid --step",
        ),
        ("command = \"ridge\"\n[grid]\nratio = [1, 2]\n", "give --lambda L"),
        (
            "command = \"train\"\n[grid]\ndevice = [\"cpu\", \"gpu\"]\n",
            "point 1 (device=gpu): invalid value 'gpu' for '--device <DEVICE>'",
        ),
    ];
    // A device the build lacks stops the sweep before any point runs.
    let mut cases = cases.to_vec();
    if !cfg!(feature = "cuda") {
        cases.push((
            "command = \"train\"\n[base]\ndevice = \"cuda:2\"\n",
            "device cuda:2: this seli was built without the CUDA backend; build one with \
             scripts/build-cuda.sh",
        ));
        cases.push((
            "command = \"ufm\"\n[grid]\ndevice = [\"cpu\", \"cuda\"]\n",
            "device cuda:0: this seli was built without the CUDA backend",
        ));
    }
    for (i, (text, want)) in cases.iter().enumerate() {
        let spec = write_spec(tmp.path(), &format!("bad{i}.toml"), text);
        let out = tmp.path().join(format!("out{i}"));
        let err = fails(&["sweep", s(&spec), "--out", s(&out)]);
        assert!(err.contains(want), "case {i}: {err}");
        assert!(err.contains(&format!("bad{i}.toml")), "case {i} names the file: {err}");
        assert!(!out.exists(), "case {i}: nothing is written for a bad sweep file");
    }
}

#[test]
fn a_changed_sweep_file_does_not_reuse_stale_points() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "r.toml", RIDGE_SWEEP);
    let out = tmp.path().join("r");
    ok(&["sweep", s(&spec), "--out", s(&out), "--jobs", "1"]);
    // Same point names, other base flags: refused (names the point), rerun with --force.
    write_spec(tmp.path(), "r.toml", &RIDGE_SWEEP.replace("n_min = 2", "n_min = 3"));
    let res = seli(&["sweep", s(&spec), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(err.contains("holds a point with other flags") && err.contains("--force"), "{err}");
    let out2 = ok(&["sweep", s(&spec), "--out", s(&out), "--force"]);
    assert!(out2.contains("12 run now"), "{out2}");
    // k = 4, rho = 1/2, ratio 1, n_min 3: n = 4 * 3 = 12.
    assert_eq!(cell(&out, 0, "n"), "12");
}

#[test]
fn keys_and_shard_flags_are_checked() {
    let out = ok(&["sweep", "--keys", "ufm"]);
    assert!(out.contains("lambda_w") && out.contains("k, ratio, rho, n_min"), "{out}");
    assert!(fails(&["sweep", "--keys", "fit"]).contains("--keys fit: not a sweep command"));
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "r.toml", RIDGE_SWEEP);
    let err = fails(&["sweep", s(&spec), "--shard", "2/2"]);
    assert!(err.contains("--shard '2/2'"), "{err}");
    let err = fails(&["sweep", "merge", s(&tmp.path().join("nowhere"))]);
    assert!(err.contains("nowhere/sweep.json"), "{err}");
}

/// Runs `seli ARGS` in `dir` with a file-size limit of 0 blocks, so that every write to a
/// regular file fails as on a full disk (EFBIG; SIGXFSZ ignored).
fn seli_with_full_disk(dir: &Path, args: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f 0; trap '' XFSZ; exec \"$0\" {args}"))
        .arg(env!("CARGO_BIN_EXE_seli"))
        .current_dir(dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn write_failures_name_the_path_and_leave_no_partial_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok_, err) = seli_with_full_disk(tmp.path(), "geometry --json out.json");
    assert!(!ok_);
    assert!(err.contains("error: out.json: File too large (os error 27)"), "{err}");
    let spec = write_spec(tmp.path(), "g.toml", "command = \"geometry\"\n[grid]\nratio = [1, 2]\n");
    let (ok_, err) = seli_with_full_disk(tmp.path(), "sweep g.toml --out sw");
    assert!(!ok_);
    assert!(err.contains("sw/sweep.json: File too large"), "{err}");
    // Atomic writes: no output file exists at all, not even an empty or partial one.
    let mut leftovers = Vec::new();
    for e in walk(tmp.path()) {
        if e != spec {
            leftovers.push(e);
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A directory that cannot be created is named.
    let err = fails(&["sweep", s(&spec), "--out", "/proc/seli-no-such/sweep"]);
    assert!(err.contains("/proc/seli-no-such/sweep"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The README's Slurm script and Kubernetes manifest, run here as their schedulers would run
/// them (two array tasks / two indexed pods on one machine), then merged.
#[test]
fn slurm_and_kubernetes_examples_run_shards_that_merge_to_the_whole_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "ridge.toml", RIDGE_SWEEP);
    let whole = tmp.path().join("whole");
    ok(&["sweep", s(&spec), "--out", s(&whole)]);
    let bin = env!("CARGO_BIN_EXE_seli");

    let slurm_out = tmp.path().join("slurm");
    for task in ["0", "1"] {
        let st = Command::new("bash")
            .arg(examples().join("slurm-sweep.sh"))
            .args([s(&spec), s(&slurm_out)])
            .env("SELI", bin)
            .env("SLURM_ARRAY_TASK_ID", task)
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_CPUS_PER_TASK", "1")
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }
    ok(&["sweep", "merge", s(&slurm_out)]);
    assert_eq!(results(&slurm_out), results(&whole));

    // The manifest's container command, with the manifest's SHARDS = completions.
    let yaml = std::fs::read_to_string(examples().join("k8s-sweep-job.yaml")).unwrap();
    let field = |key: &str| {
        yaml.lines().map(str::trim).find_map(|l| l.strip_prefix(key)).unwrap().trim().to_string()
    };
    let completions = field("completions:");
    let shards_line = yaml.lines().position(|l| l.trim() == "- name: SHARDS").unwrap();
    let shards = yaml.lines().nth(shards_line + 1).unwrap().trim().trim_start_matches("value: ");
    assert_eq!(shards.trim_matches('"'), completions, "SHARDS must equal completions");
    assert!(yaml.contains("completionMode: Indexed"));
    let command = field("- seli sweep");
    let k8s_out = tmp.path().join("k8s");
    let path = format!(
        "{}:{}",
        Path::new(bin).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for index in ["0", "1"] {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("seli sweep {command}"))
            .env("PATH", &path)
            .env("SWEEP", &spec)
            .env("OUT", &k8s_out)
            .env("SHARDS", "2")
            .env("JOB_COMPLETION_INDEX", index)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }
    ok(&["sweep", "merge", s(&k8s_out)]);
    assert_eq!(results(&k8s_out), results(&whole));
}
