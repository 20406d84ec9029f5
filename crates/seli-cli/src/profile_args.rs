//! Command-line flags that choose a class-count profile, shared by every subcommand that
//! needs one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use seli_core::Profile;
pub use seli_run::spec::{DEFAULT_STEP, LongTailSpec, StepSpec, parse_long_tail, parse_step};

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
        seli_run::spec::resolve(
            self.step,
            self.long_tail,
            self.counts.as_ref().map(|c| c.0.as_slice()),
            self.labels.as_deref(),
            self.classes,
            default,
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Parses `N0,N1,...`.
pub fn parse_counts(s: &str) -> Result<CountList, String> {
    seli_run::spec::parse_counts(s).map(CountList)
}
