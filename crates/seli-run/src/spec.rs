//! The profile specifications the CLI flags and the Python module take: `K,R,RHO[,N_MIN]`
//! (STEP), `K,N_MAX,R` (long tail), explicit counts, or a label file; parsed here once so that
//! both report the same errors.

use std::path::{Path, PathBuf};

use seli_core::Profile;

/// Parameters of `--step K,R,RHO[,N_MIN]`, parsed but not yet validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSpec {
    /// Number of classes.
    pub k: usize,
    /// Imbalance ratio.
    pub ratio: f64,
    /// Minority fraction.
    pub rho: f64,
    /// Minority class size.
    pub n_min: u64,
}

/// Parameters of `--long-tail K,N_MAX,R`, parsed but not yet validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongTailSpec {
    /// Number of classes.
    pub k: usize,
    /// Largest class.
    pub n_max: u64,
    /// Ratio between largest and smallest class.
    pub ratio: f64,
}

/// The default STEP profile: k = 10, R = 10, rho = 1/2, n_min = 500 (5 classes of 5000 and
/// 5 of 500, MNIST-sized).
pub const DEFAULT_STEP: StepSpec = StepSpec { k: 10, ratio: 10.0, rho: 0.5, n_min: 500 };

/// Builds and validates a profile from at most one of the specifications (`default` when none
/// is given); also returns the label file it came from. Messages name the flag
/// (`invalid --step: k = 1: need at least 2 classes`).
///
/// # Errors
/// An invalid profile, an unreadable or bad label file.
pub fn resolve(
    step: Option<StepSpec>,
    long_tail: Option<LongTailSpec>,
    counts: Option<&[u64]>,
    labels: Option<&Path>,
    classes: Option<usize>,
    default: StepSpec,
) -> Result<(Profile, Option<PathBuf>), String> {
    let given = [step.is_some(), long_tail.is_some(), counts.is_some(), labels.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err("give at most one of step, long_tail, counts, labels".into());
    }
    if let Some(path) = labels {
        let p = seli_io::profile_from_label_file(path, classes).map_err(|e| e.to_string())?;
        return Ok((p, Some(path.to_path_buf())));
    }
    if classes.is_some() {
        return Err("classes is only used with labels".into());
    }
    let p = if let Some(c) = counts {
        Profile::from_counts(c.to_vec()).map_err(|e| format!("invalid --counts: {e}"))?
    } else if let Some(t) = long_tail {
        Profile::long_tail(t.k, t.n_max, t.ratio)
            .map_err(|e| format!("invalid --long-tail: {e}"))?
    } else {
        let s = step.unwrap_or(default);
        Profile::step(s.k, s.ratio, s.rho, s.n_min).map_err(|e| format!("invalid --step: {e}"))?
    };
    Ok((p, None))
}

fn fields<'a>(s: &'a str, names: &[&str], min: usize) -> Result<Vec<&'a str>, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() < min || parts.len() > names.len() {
        return Err(format!(
            "expected {} comma-separated values {}, got {} in '{s}'",
            if min == names.len() { format!("{min}") } else { format!("{min} or {}", names.len()) },
            names.join(","),
            parts.len()
        ));
    }
    Ok(parts)
}

fn whole<T: std::str::FromStr>(name: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{name} = '{s}' is not a non-negative whole number"))
}

/// A finite or non-finite real number, or a fraction `a/b`. Range checks happen when the
/// profile is built, so that the message states the rule.
fn real(name: &str, s: &str) -> Result<f64, String> {
    let bad = || format!("{name} = '{s}' is not a number");
    match s.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) =
                (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
            if b == 0.0 {
                return Err(format!("{name} = '{s}' divides by zero"));
            }
            Ok(a / b)
        }
        None => s.parse().map_err(|_| bad()),
    }
}

/// Parses `K,R,RHO[,N_MIN]`.
pub fn parse_step(s: &str) -> Result<StepSpec, String> {
    let f = fields(s, &["K", "R", "RHO", "N_MIN"], 3)?;
    Ok(StepSpec {
        k: whole("K", f[0])?,
        ratio: real("R", f[1])?,
        rho: real("RHO", f[2])?,
        n_min: f.get(3).map_or(Ok(1), |v| whole("N_MIN", v))?,
    })
}

/// Parses `K,N_MAX,R`.
pub fn parse_long_tail(s: &str) -> Result<LongTailSpec, String> {
    let f = fields(s, &["K", "N_MAX", "R"], 3)?;
    Ok(LongTailSpec { k: whole("K", f[0])?, n_max: whole("N_MAX", f[1])?, ratio: real("R", f[2])? })
}

/// Parses `N0,N1,...`.
pub fn parse_counts(s: &str) -> Result<Vec<u64>, String> {
    let counts: Result<Vec<u64>, String> = s
        .split(',')
        .enumerate()
        .map(|(c, v)| whole(&format!("count of class {c}"), v.trim()))
        .collect();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_spec_parses_with_defaults_and_fractions() {
        assert_eq!(
            parse_step("10,100,0.5").unwrap(),
            StepSpec { k: 10, ratio: 100.0, rho: 0.5, n_min: 1 }
        );
        let s = parse_step("9, 2, 1/3, 4").unwrap();
        assert_eq!((s.k, s.n_min), (9, 4));
        assert!((s.rho - 1.0 / 3.0).abs() < 1e-16);
    }

    #[test]
    fn malformed_specs_name_the_field() {
        assert!(parse_step("10,100").unwrap_err().contains("got 2 in '10,100'"));
        assert!(parse_step("10,x,0.5").unwrap_err().contains("R = 'x' is not a number"));
        assert!(parse_step("ten,2,0.5").unwrap_err().contains("K = 'ten'"));
        assert!(parse_step("10,2,0.5,-3").unwrap_err().contains("N_MIN = '-3'"));
        assert!(parse_step("10,2,1/0").unwrap_err().contains("divides by zero"));
        assert!(parse_long_tail("10,5000").unwrap_err().contains("expected 3"));
        assert!(parse_counts("5,,3").unwrap_err().contains("count of class 1 = ''"));
        assert!(parse_counts("5,-1").unwrap_err().contains("count of class 1 = '-1'"));
    }
}
