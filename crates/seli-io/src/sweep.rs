//! Sweep files (`seli sweep SWEEP.toml`): the file format. [`SweepFile::parse`] reads the
//! TOML, checks every key against the command's (the caller says which keys a command takes:
//! formats know no commands) and returns its sections with the values typed and their lines;
//! expanding them into named points is the run layer's (`seli_run::sweep`).
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
//! Keys are the command's long flags with `-` or `_` (`lambda-w` = `lambda_w`). Errors name
//! the file, the line and the key.

use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Error, Result};

/// The keys a command takes, or why the name is not a command (the caller knows the
/// commands; formats do not).
pub type KeysOf<'a> = &'a dyn Fn(&str) -> std::result::Result<Vec<String>, String>;

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
) -> Result<Vec<Setting>> {
    entries(t)
        .into_iter()
        .map(|(k, v)| {
            let key = check_key(cx, k, known, command)?;
            let value = scalar(cx, &key, v, false)?;
            Ok(Setting { key, value, line: line_of(cx.text, k.span().start) })
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

/// A key set to one value (`[base]`, a `[[list]]` entry), with its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key, normalized (`lambda_w`).
    pub key: String,
    /// Its value.
    pub value: Value,
    /// 1-based line in the file.
    pub line: usize,
}

/// A `[grid]` key and its values, with its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// The key, normalized.
    pub key: String,
    /// Its values, in order (ranges expanded).
    pub values: Vec<Value>,
    /// 1-based line in the file.
    pub line: usize,
}

/// A parsed sweep file: its sections, keys checked, values typed.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepFile {
    /// The command every point runs (one the caller's `keys` accepted).
    pub command: String,
    /// `jobs`, when given.
    pub jobs: Option<usize>,
    /// `[base]`.
    pub base: Vec<Setting>,
    /// The `[[list]]` entries (empty without a list).
    pub list: Vec<Vec<Setting>>,
    /// `[grid]`, in file order.
    pub grid: Vec<Axis>,
}

/// The top-level sections of a sweep file, before their keys are checked.
#[derive(Default)]
struct Sections<'i> {
    command: Option<(String, Vec<String>)>,
    jobs: Option<usize>,
    base: Option<&'i DeTable<'i>>,
    grid: Option<&'i DeTable<'i>>,
    list: Option<(std::ops::Range<usize>, Vec<&'i DeTable<'i>>)>,
}

/// Reads the top-level keys: `command` (checked by `keys`), `jobs`, `description`, and the
/// `[base]`, `[grid]`, `[[list]]` tables.
fn sections<'i>(cx: &Ctx<'_>, doc: &'i DeTable<'i>, keys: KeysOf<'_>) -> Result<Sections<'i>> {
    let mut s = Sections::default();
    for (k, v) in entries(doc) {
        match k.get_ref().as_ref() {
            "command" => match v.get_ref() {
                DeValue::String(c) => match keys(c) {
                    Ok(allowed) => s.command = Some((c.to_string(), allowed)),
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
                Some(Value::Int(n)) if (0..=4096).contains(&n) => s.jobs = Some(n as usize),
                _ => return Err(cx.err(v.span(), "jobs", "must be a whole number 0..4096")),
            },
            "description" => {
                if !matches!(v.get_ref(), DeValue::String(_)) {
                    return Err(cx.err(v.span(), "description", "must be a string"));
                }
            }
            "base" => s.base = Some(table(cx, "base", v)?),
            "grid" => s.grid = Some(table(cx, "grid", v)?),
            "list" => match v.get_ref() {
                DeValue::Array(a) => {
                    let t = a.iter().map(|e| table(cx, "list", e)).collect::<Result<Vec<_>>>()?;
                    s.list = Some((v.span(), t));
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
    Ok(s)
}

impl SweepFile {
    /// Reads the sweep file at `path`.
    ///
    /// # Errors
    /// An unreadable file, or any error of [`SweepFile::parse`].
    pub fn read(path: &Path, keys: KeysOf<'_>) -> Result<SweepFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::format(path, format!("not UTF-8 text: {e}")))?;
        Self::parse(text, path, keys)
    }

    /// Parses a sweep file's text (`path` names it in errors); `keys(command)` lists the keys
    /// a command takes, or says why the name is not a command.
    ///
    /// # Errors
    /// Invalid TOML, a missing or unknown command, unknown keys, values of the wrong type,
    /// empty grids or lists, bad ranges: each with the line and the key.
    pub fn parse(text: &str, path: &Path, keys: KeysOf<'_>) -> Result<SweepFile> {
        let cx = Ctx { text, path };
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            cx.err(at..at, "", format!("not valid TOML: {}", e.message()))
        })?;
        let s = sections(&cx, doc.get_ref(), keys)?;
        let (command, allowed) = s.command.ok_or_else(|| {
            let why = keys("").err().unwrap_or_default();
            cx.err(0..0, "command", format!("missing ({why})"))
        })?;
        let known = |k: &str| allowed.iter().any(|a| a == k);
        let base = match s.base {
            Some(t) => fixed(&cx, t, &known, &command)?,
            None => Vec::new(),
        };
        let mut list = Vec::new();
        if let Some((span, tables)) = &s.list {
            if tables.is_empty() {
                return Err(cx.err(span.clone(), "list", "empty list of points"));
            }
            for t in tables {
                list.push(fixed(&cx, t, &known, &command)?);
            }
        }
        let mut grid = Vec::new();
        if let Some(t) = s.grid {
            for (k, v) in entries(t) {
                let key = check_key(&cx, k, &known, &command)?;
                let values = grid_values(&cx, &key, v)?;
                grid.push(Axis { key, values, line: line_of(text, k.span().start) });
            }
        }
        Ok(SweepFile { command, jobs: s.jobs, base, list, grid })
    }
}
