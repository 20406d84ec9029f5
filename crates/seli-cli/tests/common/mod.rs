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
