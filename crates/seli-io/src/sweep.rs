//! Sweep files (`seli sweep SWEEP.toml`): a grid or a list of points over one command's flags,
//! expanded into an ordered list of named points; and the merged results table.
//!
//! The format (documented with examples in docs/formats.md):
//!
//! ```toml
//! command = "ufm"            # geometry | ufm | ridge | ridge-path | train
//! jobs = 0                   # points run at once (0: all cores); optional
//!
//! [base]                     # flags every point shares (the command's flags, without --)
//! d = 32
//! iters = 2000
//!
//! [grid]                     # every combination, first key slowest
//! ratio = [1, 10, 100]
//! seed = { from = 0, to = 3, step = 1 }
//! lambda_w = { from = 1e-4, to = 1e-1, num = 4, log = true }
//!
//! [[list]]                   # explicit points, each crossed with the grid
//! schedule = "constant"
//! ```
//!
//! Keys are the command's long flags with `-` or `_` (`lambda-w` = `lambda_w`); which keys a
//! command takes is the caller's business ([`SweepSpec::parse`] takes the list). Errors name
//! the file, the line and the key.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Error, Result};

/// Schema tag of `sweep.json`.
pub const SWEEP_SCHEMA: &str = "seli.sweep.v1";

/// The keys a command takes, or why the name is not a command (the caller knows the
/// commands; formats do not).
pub type KeysOf<'a> = &'a dyn Fn(&str) -> std::result::Result<Vec<String>, String>;

/// Most points one sweep may expand to.
pub const MAX_POINTS: usize = 1_000_000;

/// Most values one range may produce.
pub const MAX_RANGE: usize = 100_000;

/// A flag's value at one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// `true` gives the flag, `false` leaves it out.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A real number.
    Float(f64),
    /// Text (paths, schedules, `K,R,RHO` specs).
    Str(String),
    /// A list, given to the flag comma-separated (`counts`, `milestones`).
    List(Vec<Value>),
}

impl Value {
    /// The value as a command-line argument: integers in decimal, reals in Rust's shortest
    /// round-trip notation, lists comma-separated.
    pub fn text(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) => s.clone(),
            Value::List(v) => v.iter().map(Value::text).collect::<Vec<_>>().join(","),
        }
    }

    /// The value as a number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

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
    pub command: String,
    /// Points run at once (`jobs` in the file; 0: all cores; absent: the command's default).
    pub jobs: Option<usize>,
    /// The keys that vary between points (list keys, then grid keys), in file order.
    pub varying: Vec<String>,
    /// The points, in sweep order.
    pub points: Vec<Point>,
}

/// Keys are compared with `-` read as `_`.
pub fn normalize_key(key: &str) -> String {
    key.replace('-', "_")
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, key: &str, msg: impl std::fmt::Display) -> Error {
        let line = line_of(self.text, span.start);
        if key.is_empty() {
            Error::format(self.path, format!("line {line}: {msg}"))
        } else {
            Error::format(self.path, format!("line {line}: key '{key}': {msg}"))
        }
    }
}

type Entry<'i> = (&'i Spanned<std::borrow::Cow<'i, str>>, &'i Spanned<DeValue<'i>>);

/// A table's entries in file order (the parser keeps keys sorted).
fn entries<'i>(t: &'i DeTable<'i>) -> Vec<Entry<'i>> {
    let mut v: Vec<Entry<'i>> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn number(v: &DeValue<'_>) -> Option<Value> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(Value::Int),
        DeValue::Float(f) => f.as_str().parse::<f64>().ok().map(Value::Float),
        _ => None,
    }
}

/// A scalar, or an array of scalars (one list value).
fn scalar(cx: &Ctx<'_>, key: &str, v: &Spanned<DeValue<'_>>, nested: bool) -> Result<Value> {
    match v.get_ref() {
        DeValue::String(s) => Ok(Value::Str(s.to_string())),
        DeValue::Boolean(b) => Ok(Value::Bool(*b)),
        DeValue::Integer(_) | DeValue::Float(_) => {
            let n =
                number(v.get_ref()).ok_or_else(|| cx.err(v.span(), key, "number out of range"))?;
            if let Value::Float(f) = n
                && !f.is_finite()
            {
                return Err(cx.err(v.span(), key, format!("{f} is not a finite number")));
            }
            Ok(n)
        }
        DeValue::Array(a) if !nested => {
            if a.is_empty() {
                return Err(cx.err(v.span(), key, "empty list"));
            }
            a.iter().map(|e| scalar(cx, key, e, true)).collect::<Result<Vec<_>>>().map(Value::List)
        }
        other => Err(cx.err(v.span(), key, format!("{} is not allowed here", kind(other)))),
    }
}

/// The values of a grid key: a non-empty array, or a range table.
fn grid_values(cx: &Ctx<'_>, key: &str, v: &Spanned<DeValue<'_>>) -> Result<Vec<Value>> {
    match v.get_ref() {
        DeValue::Array(a) => {
            if a.is_empty() {
                return Err(cx.err(v.span(), key, "empty grid: give at least one value"));
            }
            a.iter().map(|e| scalar(cx, key, e, false)).collect()
        }
        DeValue::Table(t) => range(cx, key, v.span(), t),
        other => Err(cx.err(
            v.span(),
            key,
            format!(
                "{} is not a grid: give an array of values or a range {{ from, to, step | num }}",
                kind(other)
            ),
        )),
    }
}

/// `{ from, to, step }` or `{ from, to, num [, log] }`.
fn range(
    cx: &Ctx<'_>,
    key: &str,
    span: std::ops::Range<usize>,
    t: &DeTable<'_>,
) -> Result<Vec<Value>> {
    let mut from = None;
    let mut to = None;
    let mut step = None;
    let mut num = None;
    let mut log = false;
    for (k, v) in entries(t) {
        let name = format!("{key}.{}", k.get_ref());
        let bad = |what: &str| cx.err(v.span(), &name, format!("must be {what}"));
        match k.get_ref().as_ref() {
            "from" => from = Some(number(v.get_ref()).ok_or_else(|| bad("a number"))?),
            "to" => to = Some(number(v.get_ref()).ok_or_else(|| bad("a number"))?),
            "step" => step = Some(number(v.get_ref()).ok_or_else(|| bad("a number"))?),
            "num" => match number(v.get_ref()) {
                Some(Value::Int(n)) if n >= 1 && n as usize <= MAX_RANGE => num = Some(n as usize),
                _ => return Err(bad(&format!("a whole number from 1 to {MAX_RANGE}"))),
            },
            "log" => log = v.get_ref().as_bool().ok_or_else(|| bad("true or false"))?,
            other => {
                return Err(cx.err(
                    k.span(),
                    &name,
                    format!("unknown range key '{other}' (known: from, to, step, num, log)"),
                ));
            }
        }
    }
    let (Some(a), Some(b)) = (from, to) else {
        return Err(cx.err(span, key, "a range needs both from and to"));
    };
    let (fa, fb) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
    if !fa.is_finite() || !fb.is_finite() {
        return Err(cx.err(span, key, "range ends must be finite"));
    }
    let ints = matches!((&a, &b), (Value::Int(_), Value::Int(_)));
    match (step, num) {
        (Some(_), Some(_)) => Err(cx.err(span, key, "give step or num, not both")),
        (None, None) => Err(cx.err(span, key, "a range needs step or num")),
        (Some(s), None) => {
            if log {
                return Err(cx.err(span, key, "log = true goes with num, not step"));
            }
            let fs = s.as_f64().unwrap_or(f64::NAN);
            if !(fs.is_finite() && fs > 0.0) {
                return Err(cx.err(span, key, format!("step = {} must be positive", s.text())));
            }
            if fb < fa {
                return Err(cx.err(
                    span,
                    key,
                    format!("bad range: to = {} is below from = {}", b.text(), a.text()),
                ));
            }
            let count = ((fb - fa) / fs * (1.0 + 1e-12) + 1e-9).floor() + 1.0;
            if count > MAX_RANGE as f64 {
                return Err(cx.err(
                    span,
                    key,
                    format!("range of {count} values; at most {MAX_RANGE}"),
                ));
            }
            let count = count as usize;
            Ok(match (ints, &a, &s) {
                (true, Value::Int(a0), Value::Int(s0)) => {
                    (0..count as i64).map(|i| Value::Int(a0 + i * s0)).collect()
                }
                _ => (0..count).map(|i| Value::Float(fa + i as f64 * fs)).collect(),
            })
        }
        (None, Some(n)) => {
            if log && !(fa > 0.0 && fb > 0.0) {
                return Err(cx.err(span, key, "log = true needs from > 0 and to > 0"));
            }
            let at = |i: usize| -> f64 {
                if i + 1 == n {
                    return fb;
                }
                let t = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
                if log {
                    // Interpolated in log10, like numpy.logspace: decades come out exact.
                    10f64.powf(fa.log10() + (fb.log10() - fa.log10()) * t)
                } else {
                    fa + (fb - fa) * t
                }
            };
            let vals: Vec<f64> = (0..n).map(|i| if i == 0 { fa } else { at(i) }).collect();
            if ints && vals.iter().all(|v| v.fract() == 0.0 && v.abs() < 9e15) {
                Ok(vals.into_iter().map(|v| Value::Int(v as i64)).collect())
            } else {
                Ok(vals.into_iter().map(Value::Float).collect())
            }
        }
    }
}

/// A `[base]` table or a `[[list]]` entry: keys checked, values scalars or lists.
fn fixed<'i>(
    cx: &Ctx<'_>,
    t: &'i DeTable<'i>,
    known: &dyn Fn(&str) -> bool,
    command: &str,
) -> Result<Vec<(String, Value, usize)>> {
    entries(t)
        .into_iter()
        .map(|(k, v)| {
            let key = check_key(cx, k, known, command)?;
            Ok((key.clone(), scalar(cx, &key, v, false)?, line_of(cx.text, k.span().start)))
        })
        .collect()
}

fn check_key(
    cx: &Ctx<'_>,
    k: &Spanned<std::borrow::Cow<'_, str>>,
    known: &dyn Fn(&str) -> bool,
    command: &str,
) -> Result<String> {
    let key = normalize_key(k.get_ref());
    if !known(&key) {
        return Err(cx.err(
            k.span(),
            k.get_ref(),
            format!("unknown key for {command} (seli sweep --keys {command} lists them)"),
        ));
    }
    Ok(key)
}

fn table<'a, 'i>(cx: &Ctx<'_>, key: &str, v: &'a Spanned<DeValue<'i>>) -> Result<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Ok(t),
        other => Err(cx.err(v.span(), key, format!("must be a table, not {}", kind(other)))),
    }
}

/// FNV-1a, 64 bits: a stable short hash for long point names.
fn fnv1a(bytes: &[u8]) -> u64 {
    crate::checkpoint::fnv1a(&[bytes])
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

impl SweepSpec {
    /// Reads and expands the sweep file at `path`; `keys(command)` lists the keys a command
    /// takes, or says why the name is not a command.
    ///
    /// # Errors
    /// An unreadable file, or any error of [`SweepSpec::parse`].
    pub fn read(path: &Path, keys: KeysOf<'_>) -> Result<SweepSpec> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::format(path, format!("not UTF-8 text: {e}")))?;
        Self::parse(text, path, keys)
    }

    /// Parses and expands a sweep file's text (`path` names it in errors).
    ///
    /// # Errors
    /// Invalid TOML, unknown keys, keys set twice, empty grids, bad ranges, duplicate points,
    /// more than [`MAX_POINTS`] points: each with the line and the key.
    pub fn parse(text: &str, path: &Path, keys: KeysOf<'_>) -> Result<SweepSpec> {
        let cx = Ctx { text, path };
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            cx.err(at..at, "", format!("not valid TOML: {}", e.message()))
        })?;
        let doc = doc.get_ref();
        let mut command = None;
        let mut jobs = None;
        let mut base = None;
        let mut grid = None;
        let mut list = None;
        for (k, v) in entries(doc) {
            match k.get_ref().as_ref() {
                "command" => match v.get_ref() {
                    DeValue::String(s) => match keys(s) {
                        Ok(allowed) => command = Some((s.to_string(), allowed)),
                        Err(why) => return Err(cx.err(v.span(), "command", why)),
                    },
                    other => {
                        return Err(cx.err(
                            v.span(),
                            "command",
                            format!("must be a string, not {}", kind(other)),
                        ));
                    }
                },
                "jobs" => match number(v.get_ref()) {
                    Some(Value::Int(n)) if (0..=4096).contains(&n) => jobs = Some(n as usize),
                    _ => return Err(cx.err(v.span(), "jobs", "must be a whole number 0..4096")),
                },
                "description" => {
                    if !matches!(v.get_ref(), DeValue::String(_)) {
                        return Err(cx.err(v.span(), "description", "must be a string"));
                    }
                }
                "base" => base = Some(table(&cx, "base", v)?),
                "grid" => grid = Some(table(&cx, "grid", v)?),
                "list" => match v.get_ref() {
                    DeValue::Array(a) => {
                        let t =
                            a.iter().map(|e| table(&cx, "list", e)).collect::<Result<Vec<_>>>()?;
                        list = Some((v.span(), t));
                    }
                    other => {
                        return Err(cx.err(
                            v.span(),
                            "list",
                            format!("must be [[list]] tables, not {}", kind(other)),
                        ));
                    }
                },
                other => {
                    return Err(cx.err(
                        k.span(),
                        other,
                        "unknown key (known: command, jobs, description, [base], [grid], [[list]])",
                    ));
                }
            }
        }
        let (command, allowed) = command.ok_or_else(|| {
            let why = keys("").err().unwrap_or_default();
            cx.err(0..0, "command", format!("missing ({why})"))
        })?;
        let known = |k: &str| allowed.iter().any(|a| a == k);

        let base = match base {
            Some(t) => fixed(&cx, t, &known, &command)?,
            None => Vec::new(),
        };
        let mut entries_list: Vec<Vec<(String, Value, usize)>> = Vec::new();
        if let Some((span, tables)) = &list {
            if tables.is_empty() {
                return Err(cx.err(span.clone(), "list", "empty list of points"));
            }
            for t in tables {
                entries_list.push(fixed(&cx, t, &known, &command)?);
            }
        }
        let mut axes: Vec<(String, Vec<Value>, usize)> = Vec::new();
        if let Some(t) = grid {
            for (k, v) in entries(t) {
                let key = check_key(&cx, k, &known, &command)?;
                let vals = grid_values(&cx, &key, v)?;
                axes.push((key, vals, line_of(text, k.span().start)));
            }
        }
        // A key lives in one place ([base], the list entries, or [grid]) and once there
        // (`lambda-w` and `lambda_w` are one key).
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
        once(&mut base.iter().map(|(k, _, l)| (k, *l)))?;
        once(&mut axes.iter().map(|(k, _, l)| (k, *l)))?;
        for e in &entries_list {
            once(&mut e.iter().map(|(k, _, l)| (k, *l)))?;
        }
        let places: [(&str, Vec<(&String, usize)>); 3] = [
            ("[base]", base.iter().map(|(k, _, l)| (k, *l)).collect()),
            ("[[list]]", entries_list.iter().flatten().map(|(k, _, l)| (k, *l)).collect()),
            ("[grid]", axes.iter().map(|(k, _, l)| (k, *l)).collect()),
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

        let mut total: usize = entries_list.len().max(1);
        for (k, vals, l) in &axes {
            total = total.checked_mul(vals.len()).filter(|&t| t <= MAX_POINTS).ok_or_else(|| {
                Error::format(
                    path,
                    format!("line {l}: key '{k}': the sweep would have more than {MAX_POINTS} points"),
                )
            })?;
        }

        let mut varying: Vec<String> = Vec::new();
        for (k, _, _) in entries_list.iter().flatten() {
            if !varying.contains(k) {
                varying.push(k.clone());
            }
        }
        varying.extend(axes.iter().map(|(k, _, _)| k.clone()));

        let empty = Vec::new();
        let entry_iter: Vec<&Vec<(String, Value, usize)>> =
            if entries_list.is_empty() { vec![&empty] } else { entries_list.iter().collect() };
        let mut points = Vec::with_capacity(total);
        for entry in entry_iter {
            let combos: usize = axes.iter().map(|(_, v, _)| v.len()).product();
            for c in 0..combos {
                let mut params: Vec<(String, Value)> = base
                    .iter()
                    .chain(entry.iter())
                    .map(|(k, v, _)| (k.clone(), v.clone()))
                    .collect();
                // Mixed radix, last axis fastest.
                let mut rest = c;
                let mut picks = vec![0; axes.len()];
                for (i, (_, vals, _)) in axes.iter().enumerate().rev() {
                    picks[i] = rest % vals.len();
                    rest /= vals.len();
                }
                for (i, (k, vals, _)) in axes.iter().enumerate() {
                    params.push((k.clone(), vals[picks[i]].clone()));
                }
                let index = points.len();
                points.push(Point { index, name: String::new(), params });
            }
        }
        name_points(&mut points, &varying, path)?;
        Ok(SweepSpec { command, jobs, varying, points })
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

/// A results table: a header and rows of cells (empty for a missing value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Builds a table from rows of `(column, cell)` pairs; the columns are the union of the
    /// rows' columns in order of first appearance.
    pub fn from_rows(rows: &[Vec<(String, String)>]) -> Table {
        let mut header: Vec<String> = Vec::new();
        for r in rows {
            for (c, _) in r {
                if !header.contains(c) {
                    header.push(c.clone());
                }
            }
        }
        let rows = rows
            .iter()
            .map(|r| {
                header
                    .iter()
                    .map(|h| {
                        r.iter().find(|(c, _)| c == h).map(|(_, v)| v.clone()).unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        Table { header, rows }
    }

    /// The table as CSV (RFC 4180 quoting where a cell needs it).
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            out.push_str(&row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    /// Parses CSV written by [`Table::to_csv`].
    ///
    /// # Errors
    /// Unbalanced quotes; a row whose width differs from the header's.
    pub fn from_csv(text: &str, path: &Path) -> Result<Table> {
        let mut records: Vec<Vec<String>> = Vec::new();
        let mut cell = String::new();
        let mut row: Vec<String> = Vec::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        let mut any = false;
        while let Some(c) = chars.next() {
            any = true;
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => cell.push(c),
                (false, '"') if cell.is_empty() => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut cell)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut cell));
                    records.push(std::mem::take(&mut row));
                    any = false;
                }
                (false, '\r') => {}
                (false, c) => cell.push(c),
            }
        }
        if quoted {
            return Err(Error::format(path, "unterminated quoted cell"));
        }
        if any {
            row.push(cell);
            records.push(row);
        }
        let mut it = records.into_iter();
        let header = it.next().unwrap_or_default();
        let rows: Vec<Vec<String>> = it.collect();
        for (i, r) in rows.iter().enumerate() {
            if r.len() != header.len() {
                return Err(Error::format(
                    path,
                    format!("line {}: {} cells, the header has {}", i + 2, r.len(), header.len()),
                ));
            }
        }
        Ok(Table { header, rows })
    }
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

    #[test]
    fn csv_tables_round_trip_with_quoting() {
        let t = Table::from_rows(&[
            vec![("point".into(), "a=1,b=2".into()), ("x".into(), "0.5".into())],
            vec![("point".into(), "q\"\"".into()), ("y".into(), "3".into())],
        ]);
        assert_eq!(t.header, ["point", "x", "y"]);
        let csv = t.to_csv();
        assert_eq!(Table::from_csv(&csv, Path::new("r.csv")).unwrap(), t);
        assert!(
            Table::from_csv("a,b\n1\n", Path::new("r.csv"))
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
    }
}
