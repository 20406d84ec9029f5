//! Loss families that reweight or shift logits per class (docs/theory.md §10), and the
//! class-level max-margin problem each one's implicit bias leads to.
//!
//! With class counts `n_c`, `Δ_c = (n_c / min n)^γ` rescaled to mean 1 and `ι_c = τ log(n_c / n)`:
//! - `ce`: `CE(x, y)`;
//! - `cdt` (class-dependent temperature): `CE(Δ ⊙ x, y)`;
//! - `ldt` (label-dependent temperature): `CE(Δ_y x, y)`;
//! - `la` (logit adjustment): `CE(x + ι, y)`;
//! - `vs` (vector scaling): `CE(Δ ⊙ x + ι, y)`.
//!
//! Under separability gradient descent on such a loss converges in direction to the max-margin
//! solution of its margins: `Δ_y x_y − Δ_c x_c >= 1` (cdt, vs), `x_y − x_c >= 1/Δ_y` (ldt),
//! `x_y − x_c >= 1` (ce, la): additive terms stop mattering as the logits grow.

use crate::error::{Error, Result};
use crate::profile::Profile;
use crate::solve::svm::MarginProblem;

/// A loss family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Plain cross-entropy.
    Ce,
    /// Class-dependent temperature: logit c multiplied by `Δ_c`.
    Cdt,
    /// Label-dependent temperature: a sample's logits multiplied by its own class's `Δ`.
    Ldt,
    /// Logit adjustment: `ι_c` added to logit c.
    La,
    /// Vector scaling: `Δ_c x_c + ι_c`.
    Vs,
}

impl LossKind {
    /// Every family, in the order the docs list them.
    pub const ALL: [LossKind; 5] =
        [LossKind::Ce, LossKind::Cdt, LossKind::Ldt, LossKind::La, LossKind::Vs];

    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Ce => "ce",
            LossKind::Cdt => "cdt",
            LossKind::Ldt => "ldt",
            LossKind::La => "la",
            LossKind::Vs => "vs",
        }
    }

    /// Whether the family scales logits by `Δ` (takes γ).
    pub fn scales(self) -> bool {
        matches!(self, LossKind::Cdt | LossKind::Ldt | LossKind::Vs)
    }

    /// Whether the family adds `ι` (takes τ).
    pub fn shifts(self) -> bool {
        matches!(self, LossKind::La | LossKind::Vs)
    }
}

impl std::str::FromStr for LossKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        LossKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| Error::InvalidParameter {
            name: "loss",
            value: s.to_string(),
            rule: "must be one of ce, cdt, ldt, la, vs",
        })
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A loss: its family, `γ` (of `Δ`), `τ` (of `ι`) and whether the logits have a free bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// The family.
    pub kind: LossKind,
    /// Exponent of `Δ_c = (n_c / min n)^γ` (0 for families without `Δ`).
    pub gamma: f64,
    /// Scale of `ι_c = τ log(n_c / n)` (0 for families without `ι`).
    pub tau: f64,
    /// A free, unregularized bias `b` in the logits `Wᵀh + b`.
    pub bias: bool,
}

impl Default for Loss {
    fn default() -> Self {
        Loss::ce()
    }
}

impl Loss {
    /// Plain cross-entropy without a bias (the paper's model).
    pub fn ce() -> Self {
        Loss { kind: LossKind::Ce, gamma: 0.0, tau: 0.0, bias: false }
    }

    /// A checked loss.
    ///
    /// # Errors
    /// `γ` or `τ` not finite; a nonzero `γ` for a family without `Δ` (ce, la) or a nonzero
    /// `τ` for one without `ι` (ce, cdt, ldt).
    pub fn new(kind: LossKind, gamma: f64, tau: f64, bias: bool) -> Result<Self> {
        let bad = |name: &'static str, v: f64, rule: &'static str| Error::InvalidParameter {
            name,
            value: v.to_string(),
            rule,
        };
        if !gamma.is_finite() {
            return Err(bad("gamma", gamma, "must be a finite number"));
        }
        if !tau.is_finite() {
            return Err(bad("tau", tau, "must be a finite number"));
        }
        if gamma != 0.0 && !kind.scales() {
            return Err(bad("gamma", gamma, "applies to the losses cdt, ldt and vs only"));
        }
        if tau != 0.0 && !kind.shifts() {
            return Err(bad("tau", tau, "applies to the losses la and vs only"));
        }
        Ok(Loss { kind, gamma, tau, bias })
    }

    /// Whether this is plain cross-entropy without a bias (whose target is SELI).
    pub fn is_plain(&self) -> bool {
        self.kind == LossKind::Ce && !self.bias
    }

    /// Whether the max-margin problem is plain cross-entropy's (no bias, and `Δ` all ones or
    /// not used: ce, la, and γ = 0), whose solution is the SEL matrix: its target is SELI.
    pub fn target_is_seli(&self) -> bool {
        !self.bias && (self.gamma == 0.0 || !self.kind.scales())
    }

    /// `Δ_c = (n_c / min n)^γ`, rescaled to mean 1 (all ones for families without `Δ`).
    pub fn delta(&self, profile: &Profile) -> Vec<f64> {
        let k = profile.k();
        if !self.kind.scales() || self.gamma == 0.0 {
            return vec![1.0; k];
        }
        let n_min = profile.n_min() as f64;
        let raw: Vec<f64> =
            profile.counts().iter().map(|&c| (c as f64 / n_min).powf(self.gamma)).collect();
        let mean = raw.iter().sum::<f64>() / k as f64;
        raw.iter().map(|d| d / mean).collect()
    }

    /// `ι_c = τ log(n_c / n)` (all zeros for families without `ι`).
    pub fn iota(&self, profile: &Profile) -> Vec<f64> {
        let n = profile.n() as f64;
        profile
            .counts()
            .iter()
            .map(|&c| if self.kind.shifts() { self.tau * (c as f64 / n).ln() } else { 0.0 })
            .collect()
    }

    /// The class-level max-margin problem of this loss's separable limit:
    /// `Δ_c B[c,c] − Δ_j B[j,c] >= √n_c` (cdt, vs), `B[c,c] − B[j,c] >= √n_c / Δ_c` (ldt),
    /// `B[c,c] − B[j,c] >= √n_c` (ce, la), each with `√n_c (b_c − b_j)` added on the left when
    /// the bias is free.
    pub fn margin_problem(&self, profile: &Profile) -> MarginProblem {
        let mut p = MarginProblem::ce(profile);
        let delta = self.delta(profile);
        match self.kind {
            LossKind::Cdt | LossKind::Vs => p.a = delta,
            LossKind::Ldt => p.t = p.t.iter().zip(&delta).map(|(t, d)| t / d).collect(),
            LossKind::Ce | LossKind::La => {}
        }
        p.bias = self.bias;
        p
    }

    /// A short description: `cdt (gamma 0.5, bias)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.kind.scales() {
            parts.push(format!("gamma {}", self.gamma));
        }
        if self.kind.shifts() {
            parts.push(format!("tau {}", self.tau));
        }
        if self.bias {
            parts.push("bias".to_string());
        }
        if parts.is_empty() {
            self.kind.name().to_string()
        } else {
            format!("{} ({})", self.kind, parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_have_mean_one_and_follow_the_counts() {
        let p = Profile::step(4, 10.0, 0.5, 2).unwrap();
        let l = Loss::new(LossKind::Cdt, 0.5, 0.0, false).unwrap();
        let d = l.delta(&p);
        // Majorities (n = 20) carry 10^0.5 times the minorities' Δ; the mean is 1.
        assert!((d[0] / d[3] - 10f64.sqrt()).abs() < 1e-12);
        assert!((d.iter().sum::<f64>() / 4.0 - 1.0).abs() < 1e-15);
        assert_eq!(Loss::ce().delta(&p), vec![1.0; 4]);
        let la = Loss::new(LossKind::La, 0.0, 1.0, false).unwrap();
        assert!((la.iota(&p)[0] - (20.0f64 / 44.0).ln()).abs() < 1e-15);
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = Loss::new(LossKind::Ce, 0.5, 0.0, false).unwrap_err().to_string();
        assert!(e.contains("gamma") && e.contains("0.5"), "{e}");
        let e = Loss::new(LossKind::Cdt, 0.0, 1.0, false).unwrap_err().to_string();
        assert!(e.contains("tau"), "{e}");
        let e = Loss::new(LossKind::Ldt, f64::NAN, 0.0, false).unwrap_err().to_string();
        assert!(e.contains("gamma") && e.contains("NaN"), "{e}");
        let e = "focal".parse::<LossKind>().unwrap_err().to_string();
        assert!(e.contains("focal") && e.contains("cdt"), "{e}");
    }
}
