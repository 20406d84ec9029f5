//! The results-table row of a complete run: what `seli sweep` writes to `results.csv` for each
//! point, by [`Command`]. Cells hold Rust's shortest round-trip notation for numbers (a value
//! read back is the value written), whole numbers without a decimal point, empty where a value
//! is undefined; nested records are flattened with `_` in field order; timing is left out, so
//! an interrupted and an uninterrupted sweep give identical rows.

use std::path::Path;

use serde::Deserialize;

use crate::command::Command;
use crate::error::{Error, Result};
use crate::train::TrainDir;
use crate::ufm::{UfmDir, UfmSummary};

/// A number for a cell: shortest round-trip notation, as `f64`'s `Debug` writes it.
pub fn num(v: f64) -> String {
    format!("{v:?}")
}

/// Formats a JSON scalar for a cell.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => num(f),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Appends the scalars of `v` (objects flattened with `_`, arrays left out).
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}_{k}") };
                flatten(&name, x, out);
            }
        }
        serde_json::Value::Array(_) => {}
        scalar => out.push((prefix.to_string(), cell(scalar))),
    }
}

/// A typed record as a JSON value, for flattening into cells (object keys in sorted order).
fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// The class counts every record carries.
#[derive(Deserialize)]
struct Counts {
    k: usize,
    n: u64,
}

/// A record file of `command`, checked for its schema tag, kept as JSON for flattening.
fn record(command: Command, path: &Path, schema: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = crate::read_record(path, &format!("a seli {command} record"))?;
    let tag = v.get("schema").and_then(|t| t.as_str());
    if tag != Some(schema) {
        return Err(Error::record(path, format!("schema {tag:?} is not {schema}")));
    }
    Ok(v)
}

fn counts(path: &Path, v: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let c = Counts::deserialize(&v["profile"])
        .map_err(|e| Error::record(path, format!("profile: {e}")))?;
    Ok(vec![("k".into(), c.k.to_string()), ("n".into(), c.n.to_string())])
}

/// The results of the complete run of `command` in `dir`, as `(column, cell)` pairs: `k`,
/// `n`, then per command (docs/formats.md, "seli sweep output directory").
///
/// # Errors
/// A record file missing, unreadable or of another kind.
pub fn results(command: Command, dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join(command.record_file());
    let mut out;
    match command {
        Command::Geometry => {
            // SELI's record, or a loss target's (docs/formats.md).
            let loss = seli_io::record::LOSS_GEOMETRY_SCHEMA;
            let r: serde_json::Value = crate::read_record(&path, "a seli geometry record")?;
            let tag = r.get("schema").and_then(|t| t.as_str()).unwrap_or_default();
            if tag != loss && tag != seli_io::record::GEOMETRY_SCHEMA {
                return Err(Error::record(
                    &path,
                    format!("schema {tag:?} is not {} or {loss}", seli_io::record::GEOMETRY_SCHEMA),
                ));
            }
            let schema = tag;
            out = counts(&path, &r)?;
            if schema == loss {
                // A loss's target: its certificate (nuclear_norm, gap, ...), its distances to
                // SELI and the ETF, its group summaries (docs/formats.md).
                let t = &r["target"];
                for key in ["rank", "nuclear_norm", "sel_nuclear_norm", "gap", "certified", "iters"]
                {
                    flatten(key, &t[key], &mut out);
                }
            } else {
                flatten("", &r["sel"], &mut out);
            }
            flatten("", &r["distances"], &mut out);
            flatten("", &r["groups"], &mut out);
        }
        Command::Ridge => {
            let r = record(command, &path, crate::solutions::RIDGE_SCHEMA)?;
            out = counts(&path, &r)?;
            flatten("", &r["thresholds"], &mut out);
            flatten("", &r["solution"], &mut out);
        }
        Command::RidgePath => {
            let r: crate::solutions::RidgePathRecord =
                crate::read_record(&path, "a seli ridge-path record")?;
            if r.schema != crate::solutions::RIDGE_PATH_SCHEMA {
                return Err(Error::record(
                    &path,
                    format!("schema '{}' is not a ridge path", r.schema),
                ));
            }
            out =
                vec![("k".into(), r.profile.k.to_string()), ("n".into(), r.profile.n.to_string())];
            flatten("", &json(&r.thresholds), &mut out);
            flatten("", &json(&r.reference), &mut out);
            out.push(("lambdas".into(), r.points.len().to_string()));
            if let Some(last) = r.points.last() {
                flatten("last", &json(last), &mut out);
            }
        }
        Command::Ufm => {
            let run = UfmDir(dir.to_path_buf());
            let cfg = run.read_config()?;
            out = vec![
                ("k".into(), cfg.profile.k.to_string()),
                ("n".into(), cfg.profile.n.to_string()),
            ];
            out.extend(UfmSummary::read(&run.summary())?.results());
        }
        Command::Train => {
            let run = TrainDir { dir: dir.to_path_buf() };
            let cfg = run.read_config()?;
            out = vec![
                ("k".into(), cfg.profile.k.to_string()),
                ("n".into(), cfg.profile.n.to_string()),
            ];
            let s = run.read_summary()?;
            for (key, v) in [
                ("epochs", s.epochs),
                ("n_train", s.n_train),
                ("n_test", s.n_test),
                ("d", s.d),
                ("parameters", s.parameters),
            ] {
                out.push((key.into(), v.to_string()));
            }
            flatten("", &serde_json::Value::Object(s.last), &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_flattens_to_cells() {
        let v = serde_json::json!({"a": {"b": 1, "c": [1, 2], "d": null}, "e": 0.5, "f": "x"});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        let want: Vec<(String, String)> = [("a_b", "1"), ("a_d", ""), ("e", "0.5"), ("f", "x")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(out, want);
        assert_eq!(num(1.0), "1.0");
    }
}
