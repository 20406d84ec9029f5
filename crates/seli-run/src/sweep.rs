//! Sweep planning: a sweep file (`seli_io::sweep::SweepFile`) expanded into an ordered list of
//! named points of one [`Command`], checked for keys set twice and duplicate points, and split
//! into shards. Running the points is the caller's (`seli sweep`).

use std::fmt::Write as _;
use std::path::Path;

use seli_io::error::Error;
use seli_io::sweep::{Axis, KeysOf, Setting, SweepFile, Value};
use serde::{Deserialize, Serialize};

use crate::command::Command;

type Result<T> = std::result::Result<T, Error>;

/// Schema tag of `sweep.json`.
pub const SWEEP_SCHEMA: &str = "seli.sweep.v1";

/// Most points one sweep may expand to.
pub const MAX_POINTS: usize = 1_000_000;

/// One point of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Position in the sweep's order (0-based); shard `i` of `n` runs the points with
    /// `index % n == i`.
    pub index: usize,
    /// Directory name: the varying keys and their values (`ratio=10,seed=0`).
    pub name: String,
    /// Every flag of the point, `[key, value]` in order: base, list entry, grid.
    pub params: Vec<(String, Value)>,
}

impl Point {
    /// The value of `key`, if the point sets it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether shard `shard` of `count` runs this point.
    pub fn in_shard(&self, shard: usize, count: usize) -> bool {
        self.index % count == shard
    }
}

/// An expanded sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The command every point runs.
    pub command: Command,
    /// Points run at once (`jobs` in the file; 0: all cores; absent: the command's default).
    pub jobs: Option<usize>,
    /// The keys that vary between points (list keys, then grid keys), in file order.
    pub varying: Vec<String>,
    /// The points, in sweep order.
    pub points: Vec<Point>,
}

/// FNV-1a, 64 bits: a stable short hash for long point names.
fn fnv1a(bytes: &[u8]) -> u64 {
    seli_io::checkpoint::fnv1a(&[bytes])
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(
            |c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_') {
                    c
                } else {
                    '-'
                }
            },
        )
        .collect()
}

fn canonical(params: &[(String, Value)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", v.text())).collect::<Vec<_>>().join("\n")
}

/// A key lives in one place (`[base]`, the list entries, or `[grid]`) and once there
/// (`lambda-w` and `lambda_w` are one key).
fn check_places(f: &SweepFile, path: &Path) -> Result<()> {
    let once = |keys: &mut dyn Iterator<Item = (&String, usize)>| -> Result<()> {
        let mut seen: Vec<(&String, usize)> = Vec::new();
        for (k, l) in keys {
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == k) {
                return Err(Error::format(
                    path,
                    format!("line {l}: key '{k}': already set at line {first}"),
                ));
            }
            seen.push((k, l));
        }
        Ok(())
    };
    fn of(s: &Setting) -> (&String, usize) {
        (&s.key, s.line)
    }
    once(&mut f.base.iter().map(of))?;
    once(&mut f.grid.iter().map(|a| (&a.key, a.line)))?;
    for e in &f.list {
        once(&mut e.iter().map(of))?;
    }
    let places: [(&str, Vec<(&String, usize)>); 3] = [
        ("[base]", f.base.iter().map(of).collect()),
        ("[[list]]", f.list.iter().flatten().map(of).collect()),
        ("[grid]", f.grid.iter().map(|a| (&a.key, a.line)).collect()),
    ];
    for (i, (place, keys)) in places.iter().enumerate() {
        for (later, later_keys) in &places[i + 1..] {
            for (k, l) in later_keys {
                if let Some((_, first)) = keys.iter().find(|(k2, _)| k2 == k) {
                    return Err(Error::format(
                        path,
                        format!(
                            "line {l}: key '{k}' in {later}: also set in {place} at line {first}; \
                             set it in one place"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The number of points, at most [`MAX_POINTS`].
fn count_points(f: &SweepFile, path: &Path) -> Result<usize> {
    let mut total: usize = f.list.len().max(1);
    for a in &f.grid {
        total =
            total.checked_mul(a.values.len()).filter(|&t| t <= MAX_POINTS).ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "line {}: key '{}': the sweep would have more than {MAX_POINTS} points",
                        a.line, a.key
                    ),
                )
            })?;
    }
    Ok(total)
}

/// The keys that vary between points: list keys, then grid keys, in file order.
fn varying(f: &SweepFile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in f.list.iter().flatten() {
        if !out.contains(&s.key) {
            out.push(s.key.clone());
        }
    }
    out.extend(f.grid.iter().map(|a| a.key.clone()));
    out
}

/// Every point: each list entry (or none) crossed with every grid combination, the last
/// grid key varying fastest; flags in order base, list entry, grid.
fn expand(base: &[Setting], list: &[Vec<Setting>], grid: &[Axis], total: usize) -> Vec<Point> {
    let none = Vec::new();
    let entries: Vec<&Vec<Setting>> =
        if list.is_empty() { vec![&none] } else { list.iter().collect() };
    let combos: usize = grid.iter().map(|a| a.values.len()).product();
    let mut points = Vec::with_capacity(total);
    for entry in entries {
        for c in 0..combos {
            let mut params: Vec<(String, Value)> =
                base.iter().chain(entry.iter()).map(|s| (s.key.clone(), s.value.clone())).collect();
            // Mixed radix, last axis fastest.
            let mut rest = c;
            let mut picks = vec![0; grid.len()];
            for (i, a) in grid.iter().enumerate().rev() {
                picks[i] = rest % a.values.len();
                rest /= a.values.len();
            }
            for (i, a) in grid.iter().enumerate() {
                params.push((a.key.clone(), a.values[picks[i]].clone()));
            }
            points.push(Point { index: points.len(), name: String::new(), params });
        }
    }
    points
}

impl SweepSpec {
    /// Reads, checks and expands the sweep file at `path`; `keys(command)` lists the keys a
    /// command takes, or says why the name is not a command.
    ///
    /// # Errors
    /// An unreadable file, or any error of [`SweepSpec::parse`].
    pub fn read(path: &Path, keys: KeysOf<'_>) -> Result<SweepSpec> {
        Self::plan(SweepFile::read(path, keys)?, path)
    }

    /// Parses and expands a sweep file's text (`path` names it in errors).
    ///
    /// # Errors
    /// Those of `SweepFile::parse`; keys set twice, duplicate points, more than
    /// [`MAX_POINTS`] points: each with the line and the key.
    pub fn parse(text: &str, path: &Path, keys: KeysOf<'_>) -> Result<SweepSpec> {
        Self::plan(SweepFile::parse(text, path, keys)?, path)
    }

    /// Expands a parsed sweep file into its named points.
    ///
    /// # Errors
    /// A command that is not a [`Command`]; keys set twice; duplicate points; too many points.
    pub fn plan(f: SweepFile, path: &Path) -> Result<SweepSpec> {
        let command: Command =
            f.command.parse().map_err(|e: String| Error::format(path, format!("command: {e}")))?;
        check_places(&f, path)?;
        let total = count_points(&f, path)?;
        let varying = varying(&f);
        let mut points = expand(&f.base, &f.list, &f.grid, total);
        name_points(&mut points, &varying, path)?;
        Ok(SweepSpec { command, jobs: f.jobs, varying, points })
    }

    /// The points of shard `shard` of `count` (all of them for `None`).
    pub fn shard(&self, shard: Option<(usize, usize)>) -> Vec<&Point> {
        self.points.iter().filter(|p| shard.is_none_or(|(i, n)| p.in_shard(i, n))).collect()
    }
}

/// Names points after their varying keys; a long or clashing name gets a hash suffix.
fn name_points(points: &mut [Point], varying: &[String], path: &Path) -> Result<()> {
    let mut by_params = std::collections::HashMap::new();
    for p in points.iter() {
        if let Some(first) = by_params.insert(canonical(&p.params), p.index) {
            return Err(Error::format(
                path,
                format!(
                    "points {first} and {} have the same flags ({}): remove the duplicate",
                    p.index,
                    canonical(&p.params).replace('\n', ", ")
                ),
            ));
        }
    }
    for p in points.iter_mut() {
        let mut name = String::new();
        for k in varying {
            if let Some(v) = p.get(k) {
                if !name.is_empty() {
                    name.push(',');
                }
                let _ = write!(name, "{k}={}", sanitize(&v.text()));
            }
        }
        if name.is_empty() {
            name = "point".into();
        }
        if name.len() > 100 {
            name.truncate(80);
            let _ = write!(name, "-{:016x}", fnv1a(canonical(&p.params).as_bytes()));
        }
        p.name = name;
    }
    let mut count = std::collections::HashMap::new();
    for p in points.iter() {
        *count.entry(p.name.clone()).or_insert(0) += 1;
    }
    for p in points.iter_mut() {
        if count[&p.name] > 1 {
            let _ = write!(p.name, "-{:016x}", fnv1a(canonical(&p.params).as_bytes()));
        }
    }
    Ok(())
}

/// Parses `I/N` (0 <= I < N).
///
/// # Errors
/// Anything else, named.
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("--shard '{s}': expected I/N with 0 <= I < N (I counts from 0)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) =
        (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cmd: &str) -> std::result::Result<Vec<String>, String> {
        let k: &[&str] = match cmd {
            "ufm" => &["d", "iters", "ratio", "seed", "lambda_w", "schedule", "counts", "k"],
            "geometry" => &["ratio", "rho", "k", "n_min", "counts"],
            "train" => &["ratio", "seed"],
            _ => return Err("must be one of ufm, geometry, train".into()),
        };
        Ok(k.iter().map(|s| s.to_string()).collect())
    }

    fn parse(text: &str) -> Result<SweepSpec> {
        SweepSpec::parse(text, Path::new("s.toml"), &keys)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn grid_expands_in_file_order_with_ranges() {
        let s = parse(
            "command = \"ufm\"\n[base]\nd = 8\n[grid]\nratio = [1, 10]\nseed = { from = 0, to = 2, step = 1 }\n\
             lambda-w = { from = 1e-4, to = 1e-2, num = 3, log = true }\n",
        )
        .unwrap();
        assert_eq!(s.points.len(), 2 * 3 * 3);
        assert_eq!(s.varying, ["ratio", "seed", "lambda_w"]);
        let p = &s.points[4];
        assert_eq!(p.get("ratio"), Some(&Value::Int(1)));
        assert_eq!(p.get("seed"), Some(&Value::Int(1)));
        // Log-spaced: 1e-4 * 100^(1/2) = 1e-3 (to rounding).
        let l = p.get("lambda_w").unwrap().as_f64().unwrap();
        assert!((l - 1e-3).abs() < 1e-15, "{l}");
        assert_eq!(s.points[2].get("lambda_w"), Some(&Value::Float(1e-2)));
        assert_eq!(p.name, format!("ratio=1,seed=1,lambda_w={}", sanitize(&format!("{l:?}"))));
        assert_eq!(p.params[0], ("d".into(), Value::Int(8)));
    }

    #[test]
    fn list_entries_cross_the_grid() {
        let s = parse(
            "command = \"ufm\"\n[[list]]\nschedule = \"constant\"\n[[list]]\nschedule = \"norm-grad\"\n\
             d = 4\n[grid]\nseed = [0, 1]\n",
        )
        .unwrap();
        assert_eq!(s.points.len(), 4);
        assert_eq!(s.points[3].name, "schedule=norm-grad,d=4,seed=1");
        assert_eq!(s.points[1].name, "schedule=constant,seed=1");
        assert!(s.points[1].in_shard(1, 2));
        assert_eq!(s.shard(Some((0, 2))).len(), 2);
    }

    #[test]
    fn malformed_files_name_line_and_key() {
        let cases = [
            (
                "command = \"ufm\"\n[grid]\nratoi = [1]\n",
                "line 3: key 'ratoi': unknown key for ufm",
            ),
            ("command = \"ufm\"\n[base]\nd = 3\nlamda = 1\n", "line 4: key 'lamda': unknown key"),
            ("command = \"ufm\"\n\n[grid]\nseed = []\n", "line 4: key 'seed': empty grid"),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 5, to = 1, step = 1 }\n",
                "line 3: key 'seed': bad range: to = 1 is below from = 5",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 1, step = 0 }\n",
                "line 3: key 'seed': step = 0 must be positive",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 1, num = 0 }\n",
                "line 3: key 'seed.num': must be a whole number",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 1 }\n",
                "line 3: key 'seed': a range needs step or num",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, upto = 1, num = 2 }\n",
                "line 3: key 'seed.upto': unknown range key",
            ),
            (
                "command = \"ufm\"\n[grid]\nlambda_w = { from = 0, to = 1, num = 3, log = true }\n",
                "line 3: key 'lambda_w': log = true needs from > 0",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = 3\n",
                "line 3: key 'seed': an integer is not a grid",
            ),
            ("command = \"fit\"\n", "line 1: key 'command': must be one of"),
            ("[grid]\nseed = [1]\n", "key 'command': missing"),
            ("command = \"ufm\"\ngird = 3\n", "line 2: key 'gird': unknown key"),
            (
                "command = \"ufm\"\n[base]\nseed = 1\n[grid]\nseed = [1, 2]\n",
                "line 5: key 'seed' in [grid]: also set in [base] at line 3",
            ),
            ("command = \"ufm\"\n[grid]\nseed = [1, 1]\n", "have the same flags"),
            ("command = \"ufm\"\n[grid\n", "line 2: not valid TOML"),
            ("command = \"ufm\"\n[base]\nd = nan\n", "line 3: key 'd': NaN is not a finite number"),
            (
                "command = \"ufm\"\n[base]\nd = 1979-05-27\n",
                "line 3: key 'd': a date is not allowed",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 1e9, step = 1 }\n",
                "at most 100000",
            ),
            (
                "command = \"ufm\"\n[grid]\nseed = { from = 0, to = 999, step = 1 }\n\
                 d = { from = 0, to = 999, step = 1 }\nk = { from = 0, to = 999, step = 1 }\n",
                "line 5: key 'k': the sweep would have more than 1000000 points",
            ),
            ("command = \"ufm\"\njobs = -1\n", "line 2: key 'jobs'"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.starts_with("s.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}\n  got: {e}\n  want: {want}");
        }
    }

    #[test]
    fn names_stay_short_and_unique() {
        let s = parse("command = \"ufm\"\n[grid]\nschedule = [\"a/b\", \"a-b\"]\n").unwrap();
        assert_ne!(s.points[0].name, s.points[1].name);
        assert!(s.points[0].name.starts_with("schedule=a-b-"), "{}", s.points[0].name);
        let long = format!("command = \"ufm\"\n[grid]\nschedule = [\"{}\"]\n", "x".repeat(300));
        let s = parse(&long).unwrap();
        assert_eq!(s.points[0].name.len(), 80 + 17);
        let s = parse("command = \"ufm\"\n[base]\nd = 3\n").unwrap();
        assert_eq!(s.points[0].name, "point");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = parse(
            "command = \"geometry\"\n[grid]\nratio = [1.5, 10]\ncounts = [[5, 5, 1], [3, 2]]\n",
        )
        .unwrap();
        let back: SweepSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.points[1].get("counts").unwrap().text(), "3,2");
    }

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).unwrap_err().contains(bad));
        }
    }
}
