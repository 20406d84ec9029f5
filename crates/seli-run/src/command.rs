//! The commands that produce runs, defined once: their names, defaults, output files, when a
//! run is complete, and the results a sweep reports. Every other crate holds a [`Command`],
//! never its name as a string.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::spec::{DEFAULT_STEP, StepSpec};

/// A command whose output a sweep can hold as a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// `seli geometry`: the exact SELI geometry of a profile.
    Geometry,
    /// `seli ufm`: gradient descent on the unconstrained-features model.
    Ufm,
    /// `seli ridge`: the exact ridge optimum.
    Ridge,
    /// `seli ridge-path`: the ridge optimum along a λ grid.
    RidgePath,
    /// `seli train`: a deep network on an imbalanced dataset.
    Train,
}

/// The default STEP profile of `seli train`: like [`DEFAULT_STEP`] with 200 samples per
/// minority class (11 000 images), so that the default run takes minutes on a CPU.
pub const TRAIN_DEFAULT_STEP: StepSpec = StepSpec { k: 10, ratio: 10.0, rho: 0.5, n_min: 200 };

impl Command {
    /// Every command, in the order the documentation lists them.
    pub const ALL: [Command; 5] =
        [Command::Geometry, Command::Ufm, Command::Ridge, Command::RidgePath, Command::Train];

    /// The subcommand's name (`seli NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Command::Geometry => "geometry",
            Command::Ufm => "ufm",
            Command::Ridge => "ridge",
            Command::RidgePath => "ridge-path",
            Command::Train => "train",
        }
    }

    /// The STEP profile used when a sweep gives only some of `k`, `ratio`, `rho`, `n_min`.
    pub fn default_step(self) -> StepSpec {
        if self == Command::Train { TRAIN_DEFAULT_STEP } else { DEFAULT_STEP }
    }

    /// Points run at once when a sweep does not say: one for training (which uses every
    /// core itself), else all cores (`None`).
    pub fn default_jobs(self) -> Option<usize> {
        (self == Command::Train).then_some(1)
    }

    /// Whether the command writes a run directory (`--out DIR`) rather than one record file.
    pub fn has_run_dir(self) -> bool {
        matches!(self, Command::Ufm | Command::Train)
    }

    /// The file a point of this command writes its record to, inside its point directory
    /// (for run-directory commands, `summary.json`).
    pub fn record_file(self) -> &'static str {
        match self {
            Command::Geometry => "geometry.json",
            Command::Ridge => "ridge.json",
            Command::RidgePath => "ridge-path.json",
            Command::Ufm | Command::Train => "summary.json",
        }
    }

    /// The results a sweep report plots against the swept key.
    pub fn key_results(self) -> &'static [&'static str] {
        match self {
            // SELI's distance to the ETF; a loss's target's distances to SELI and the ETF.
            Command::Geometry => &[
                "dist_gw_seli_etf",
                "dist_gm_seli_etf",
                "dist_gw_seli",
                "dist_gw_etf",
                "norm_ratio_w",
                "cos_w_min_min",
            ],
            Command::Ridge => &["dist_gw_seli", "dist_gw_etf", "norm_ratio_w", "cos_w_min_min"],
            Command::RidgePath => {
                &["lambda_star", "lambda_mc", "last_dist_gw_seli", "last_dist_gw_etf"]
            }
            Command::Ufm => &["dist_gw_seli", "dist_gw_etf", "dist_gm_seli", "dist_gm_etf"],
            Command::Train => &["dist_gw_seli", "dist_gw_etf", "test_acc", "dist_gmc_seli"],
        }
    }

    /// Whether `dir` holds a complete run of this command: its record exists (a UFM summary
    /// that does not say `interrupted`).
    pub fn is_complete(self, dir: &Path) -> bool {
        let record = dir.join(self.record_file());
        match self {
            Command::Ufm => crate::ufm::UfmSummary::read(&record)
                .is_ok_and(|s| s.termination != crate::ufm::INTERRUPTED),
            _ => record.is_file(),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Command::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!(
                "'{s}' is not a command a sweep runs (one of {})",
                Command::ALL.map(Command::name).join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for c in Command::ALL {
            assert_eq!(c.name().parse::<Command>().unwrap(), c);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.name()));
        }
        let e = "svd".parse::<Command>().unwrap_err();
        assert!(e.contains("'svd'") && e.contains("ridge-path"), "{e}");
    }
}
