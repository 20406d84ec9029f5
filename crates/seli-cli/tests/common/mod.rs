//! Helpers shared by the CLI tests: run the real `seli` binary and read what it wrote.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `seli` with `args`.
pub fn seli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seli")).args(args).output().expect("the seli binary runs")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = seli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "seli {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = seli(args);
    assert!(!out.status.success(), "seli {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Parses a JSON file.
pub fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Sends `sig` (a name such as `INT` or `STOP`) to process `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "kill -{sig} {pid}: {status:?}");
}

/// Kills a run with SIGKILL at pseudo-random moments and resumes it, `kills` times, then lets
/// it finish: `start` begins the run (used again while `dir` has no `config.json`, that is
/// when a kill landed before the run wrote anything), `resume` continues it. Each delay is
/// drawn from `seed` in `delays_ms`. Returns how many kills landed on a running process.
pub fn kill_at_random_moments(
    start: &[&str],
    resume: &[&str],
    dir: &Path,
    kills: usize,
    delays_ms: (u64, u64),
    seed: u64,
) -> usize {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut landed = 0;
    for _ in 0..kills {
        let args = if dir.join("config.json").is_file() { resume } else { start };
        let mut child = Command::new(env!("CARGO_BIN_EXE_seli"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the seli binary runs");
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(delays_ms.0 + x % (delays_ms.1 - delays_ms.0));
        let t = Instant::now();
        while t.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            landed += 1;
        }
        child.wait().unwrap();
    }
    let args = if dir.join("config.json").is_file() { resume } else { start };
    ok(args);
    landed
}

/// A summary record without the fields that time the invocation (wall time, speed, where it
/// resumed from): what must equal between an interrupted and an uninterrupted run.
pub fn summary_without_timing(path: &Path) -> Value {
    let mut v = json(path);
    let obj = v.as_object_mut().expect("a JSON object");
    obj.retain(|k, _| {
        !matches!(
            k.as_str(),
            "wall_seconds"
                | "iters_per_second"
                | "resumed_from"
                | "train_seconds"
                | "eval_seconds"
                | "samples_per_second"
        )
    });
    v
}
