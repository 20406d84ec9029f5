//! Command-line flags that choose a class-count profile, shared by every subcommand that
//! needs one.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use seli_core::Profile;

/// The profile used when no profile flag is given: STEP with k = 10, R = 10, rho = 1/2,
/// n_min = 500 (5 classes of 5000 and 5 of 500, MNIST-sized).
pub const DEFAULT_STEP: StepSpec = StepSpec { k: 10, ratio: 10.0, rho: 0.5, n_min: 500 };

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

/// Class counts from `--counts` (a newtype so that clap takes the list as one value).
#[derive(Debug, Clone, PartialEq)]
pub struct CountList(pub Vec<u64>);

/// The profile flags. At most one of --step, --long-tail, --counts, --labels may be given.
#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// (R, rho)-STEP profile: K classes, the first (1-RHO)K majorities with R*N_MIN samples
    /// each, the last RHO*K minorities with N_MIN each (N_MIN defaults to 1). RHO may be a
    /// fraction such as 1/3. Default profile: --step 10,10,0.5,500 (seli train: 10,10,0.5,200).
    ///
    /// Example: --step 10,100,0.5 (5 classes of 100, 5 of 1)
    #[arg(long, value_name = "K,R,RHO[,N_MIN]", value_parser = parse_step,
          conflicts_with_all = ["long_tail", "counts", "labels"])]
    pub step: Option<StepSpec>,

    /// Exponential long tail: n_c = round(N_MAX * R^(-c/(K-1))) for c = 0..K-1.
    ///
    /// Example: --long-tail 10,5000,100
    #[arg(long, value_name = "K,N_MAX,R", value_parser = parse_long_tail,
          conflicts_with_all = ["counts", "labels"])]
    pub long_tail: Option<LongTailSpec>,

    /// Explicit class counts, comma-separated, one per class (all positive).
    ///
    /// Example: --counts 5000,5000,500,500
    #[arg(long, value_name = "N0,N1,...", value_parser = parse_counts, conflicts_with = "labels")]
    pub counts: Option<CountList>,

    /// Count classes in a label file: one integer label per line (text; blank lines and
    /// lines starting with # are skipped), or a 1-D integer NumPy .npy array.
    ///
    /// Example: --labels train_labels.npy
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// With --labels: the number of classes K (labels must lie in 0..K; a class without
    /// labels is an error). Without it, K is the largest label plus one.
    #[arg(long, value_name = "K", requires = "labels")]
    pub classes: Option<usize>,
}

impl ProfileArgs {
    /// Builds and validates the chosen profile; also returns the label file it came from.
    pub fn resolve(&self) -> Result<(Profile, Option<PathBuf>)> {
        self.resolve_or(DEFAULT_STEP)
    }

    /// [`ProfileArgs::resolve`] with another default STEP profile.
    pub fn resolve_or(&self, default: StepSpec) -> Result<(Profile, Option<PathBuf>)> {
        if let Some(path) = &self.labels {
            let p = seli_io::profile_from_label_file(path, self.classes)?;
            return Ok((p, Some(path.clone())));
        }
        let p = if let Some(c) = &self.counts {
            Profile::from_counts(c.0.clone()).context("invalid --counts")?
        } else if let Some(t) = self.long_tail {
            Profile::long_tail(t.k, t.n_max, t.ratio).context("invalid --long-tail")?
        } else {
            let s = self.step.unwrap_or(default);
            Profile::step(s.k, s.ratio, s.rho, s.n_min).context("invalid --step")?
        };
        Ok((p, None))
    }
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
pub fn parse_counts(s: &str) -> Result<CountList, String> {
    let counts: Result<Vec<u64>, String> = s
        .split(',')
        .enumerate()
        .map(|(c, v)| whole(&format!("count of class {c}"), v.trim()))
        .collect();
    counts.map(CountList)
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
