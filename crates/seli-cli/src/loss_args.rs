//! Flags that choose a loss family (docs/theory.md §10), shared by the commands that take one.

use anyhow::Result;
use clap::Args;
use seli_core::{Loss, LossKind};

/// `--loss`, `--gamma`, `--tau`.
#[derive(Debug, Clone, Args)]
pub struct LossArgs {
    /// Loss family: ce (plain cross-entropy), cdt (logit c times Delta_c), ldt (a sample's
    /// logits times its own class's Delta), la (logit c plus iota_c), vs (both). Delta_c =
    /// (n_c/n_min)^gamma at mean 1, iota_c = tau log(n_c/n)
    #[arg(long, value_name = "LOSS", default_value = "ce")]
    pub loss: String,

    /// gamma of Delta (cdt, ldt, vs); 0 is plain cross-entropy
    #[arg(long, value_name = "G", default_value_t = 0.0, allow_negative_numbers = true)]
    pub gamma: f64,

    /// tau of iota (la, vs)
    #[arg(long, value_name = "T", default_value_t = 0.0, allow_negative_numbers = true)]
    pub tau: f64,
}

impl LossArgs {
    /// The checked loss, with or without a free bias.
    ///
    /// # Errors
    /// An unknown family, a non-finite gamma or tau, or one the family does not use.
    pub fn resolve(&self, bias: bool) -> Result<Loss> {
        let kind: LossKind = self.loss.parse()?;
        Ok(Loss::new(kind, self.gamma, self.tau, bias)?)
    }
}
