//! The JSON record of `seli geometry` (schema `seli.geometry.v1`).
//!
//! Written by `seli geometry --json PATH`. Matrices are arrays of rows; classes are indexed
//! `0..k-1` in profile order (STEP: majorities first). Quantities that a profile does not
//! define are `null` (group statistics without groups, within-group cosines of a group with
//! one class). All Grams are at the SELI scale α = 1 (docs/theory.md §3), so
//! `‖W‖_F² = ‖Z_hat‖_*`.
//!
//! ```text
//! {
//!   "schema": "seli.geometry.v1",
//!   "seli_version": "0.1.0",
//!   "profile": {
//!     "kind": "step" | "long-tail" | "counts" | "labels",
//!     "k": 10, "n": 27500,
//!     "counts": [5000, ..., 500],          // n_c
//!     "groups": ["majority", ..., "minority"] | null,
//!     "ratio": 10.0 | null,                  // R (step, long-tail)
//!     "rho": 0.5 | null,                     // minority fraction (step)
//!     "n_min": 500 | null,                   // minority size (step)
//!     "n_max": 5000 | null,                  // largest class (long-tail)
//!     "source": "labels.npy" | null          // label file (labels)
//!   },
//!   "sel": {
//!     "rank": 9,                             // k-1
//!     "singular_values": [...],              // k-1 values of Z_hat, non-increasing
//!     "nuclear_norm": 424.73,                // ||Z_hat||_* = ||W||_F^2 = ||H||_F^2
//!     "frobenius_norm_sq": 24750.0           // ||Z_hat||_F^2 = n (1 - 1/k)
//!   },
//!   "classes": [                             // one per class
//!     { "class": 0, "count": 5000, "group": "majority" | null,
//!       "w_norm": ..., "mu_norm": ...,       // ||w_c||, ||mu_c|| at SELI
//!       "cos_w_mu": ... }                    // cos(w_c, mu_c)
//!   ],
//!   "groups": null | {
//!     "w_norm_sq":  { "majority": ..., "minority": ... },   // group means of ||w_c||^2
//!     "mu_norm_sq": { "majority": ..., "minority": ... },   // group means of ||mu_c||^2
//!     "cos_w_mu":   { "majority": ..., "minority": ... },
//!     "norm_ratio_w": ...,                   // ||w_maj||^2 / ||w_min||^2
//!     "norm_ratio_mu": ...,                  // ||mu_maj||^2 / ||mu_min||^2
//!     "cos_w":  { "maj_maj": ... | null, "min_min": ... | null, "maj_min": ... },
//!     "cos_mu": { "maj_maj": ... | null, "min_min": ... | null, "maj_min": ... }
//!   },
//!   "distances": {                           // normalized: ||A/||A|| - B/||B|| ||_F
//!     "dist_gw_seli_etf": ...,               // SELI G_W vs ETF G_W
//!     "dist_gm_seli_etf": ...                // SELI G_M vs ETF G_M
//!   },
//!   "matrices": {                            // k x k, arrays of rows
//!     "gram_w": [[...]],                     // G_W = (P D P)^{1/2}
//!     "gram_m": [[...]],                     // G_M = ((P D P)^+)^{1/2}
//!     "logits": [[...]],                     // W^T M = P = I - 11^T/k
//!     "etf_gram_w": [[...]],                 // sqrt(n/k) P
//!     "etf_gram_m": [[...]],                 // P / sqrt(n/k)
//!     "cos_w": [[...]],                      // cos(w_c, w_c')
//!     "cos_mu": [[...]]                      // cos(mu_c, mu_c')
//!   },
//!   "realization": null | {                  // with --d D [--seed S]
//!     "d": 16, "seed": 0,
//!     "w": [[...]],                          // d x k classifiers (column c is w_c)
//!     "m": [[...]],                          // d x k class means
//!     "wtm_residual": 1e-15                  // max |W^T M - P|
//!   }
//! }
//! ```

use std::path::Path;

use faer::MatRef;
use seli_core::metrics::{GroupMeans, PairMeans};
use seli_core::{ClassStats, Geometry, Loss, Profile, ProfileKind, Realization, Target};
use serde::{Deserialize, Serialize};

/// Schema tag of [`GeometryRecord`].
pub const GEOMETRY_SCHEMA: &str = "seli.geometry.v1";

/// A k×k or d×k matrix as an array of rows.
///
/// ```
/// let m = faer::Mat::from_fn(2, 3, |i, j| (10 * i + j) as f64);
/// assert_eq!(seli_io::record::rows(m.as_ref()), vec![vec![0.0, 1.0, 2.0], vec![10.0, 11.0, 12.0]]);
/// ```
pub fn rows(m: MatRef<'_, f64>) -> Vec<Vec<f64>> {
    (0..m.nrows()).map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect()).collect()
}

/// Everything `seli geometry` computes (see the module docs for the schema).
#[derive(Debug, Clone, Serialize)]
pub struct GeometryRecord {
    /// Always [`GEOMETRY_SCHEMA`].
    pub schema: &'static str,
    /// Version of the tool that wrote the record.
    pub seli_version: &'static str,
    /// The class-count profile.
    pub profile: ProfileRecord,
    /// The SEL matrix's spectrum.
    pub sel: SelRecord,
    /// Per-class statistics.
    pub classes: Vec<ClassRecord>,
    /// Majority/minority summaries, when groups are defined.
    pub groups: Option<GroupRecord>,
    /// Normalized distances.
    pub distances: DistanceRecord,
    /// Full k×k matrices.
    pub matrices: MatricesRecord,
    /// A concrete realization, when asked for.
    pub realization: Option<RealizationRecord>,
}

/// The profile part of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// `step`, `long-tail`, `counts` or `labels`.
    pub kind: String,
    /// Number of classes.
    pub k: usize,
    /// Number of samples.
    pub n: u64,
    /// Class counts.
    pub counts: Vec<u64>,
    /// `majority`/`minority` per class, when defined.
    pub groups: Option<Vec<String>>,
    /// Imbalance ratio R (step, long-tail).
    pub ratio: Option<f64>,
    /// Minority fraction (step).
    pub rho: Option<f64>,
    /// Minority class size (step).
    pub n_min: Option<u64>,
    /// Largest class (long-tail).
    pub n_max: Option<u64>,
    /// Label file the counts came from (labels).
    pub source: Option<String>,
}

/// Spectrum of the SEL matrix.
#[derive(Debug, Clone, Serialize)]
pub struct SelRecord {
    /// k − 1.
    pub rank: usize,
    /// Nonzero singular values, non-increasing.
    pub singular_values: Vec<f64>,
    /// Their sum.
    pub nuclear_norm: f64,
    /// Sum of their squares, `n(1 − 1/k)`.
    pub frobenius_norm_sq: f64,
}

/// One class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassRecord {
    /// Class index.
    pub class: usize,
    /// Its sample count.
    pub count: u64,
    /// Its group, when defined.
    pub group: Option<&'static str>,
    /// `‖w_c‖`.
    pub w_norm: f64,
    /// `‖μ_c‖`.
    pub mu_norm: f64,
    /// `cos(w_c, μ_c)`.
    pub cos_w_mu: f64,
}

impl ClassRecord {
    /// One record per class of `profile` from its statistics.
    pub fn all(profile: &Profile, stats: &ClassStats) -> Vec<ClassRecord> {
        (0..profile.k())
            .map(|c| ClassRecord {
                class: c,
                count: profile.counts()[c],
                group: profile.group(c).map(|x| x.name()),
                w_norm: stats.w_norms[c],
                mu_norm: stats.m_norms[c],
                cos_w_mu: stats.cos_w_mu[c],
            })
            .collect()
    }
}

/// Group means of a per-class quantity.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GroupPair {
    /// Majority mean.
    pub majority: Option<f64>,
    /// Minority mean.
    pub minority: Option<f64>,
}

impl From<GroupMeans> for GroupPair {
    fn from(g: GroupMeans) -> Self {
        GroupPair { majority: g.majority, minority: g.minority }
    }
}

/// Cosines averaged over group pairs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CosinePairs {
    /// Between distinct majority classes.
    pub maj_maj: Option<f64>,
    /// Between distinct minority classes.
    pub min_min: Option<f64>,
    /// Between a majority and a minority class.
    pub maj_min: Option<f64>,
}

impl From<PairMeans> for CosinePairs {
    fn from(p: PairMeans) -> Self {
        CosinePairs { maj_maj: p.maj_maj, min_min: p.min_min, maj_min: p.maj_min }
    }
}

/// Majority/minority summaries.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRecord {
    /// Mean `‖w_c‖²` by group.
    pub w_norm_sq: GroupPair,
    /// Mean `‖μ_c‖²` by group.
    pub mu_norm_sq: GroupPair,
    /// Mean `cos(w_c, μ_c)` by group.
    pub cos_w_mu: GroupPair,
    /// `‖w_maj‖²/‖w_min‖²`.
    pub norm_ratio_w: Option<f64>,
    /// `‖μ_maj‖²/‖μ_min‖²`.
    pub norm_ratio_mu: Option<f64>,
    /// Classifier cosines by group pair.
    pub cos_w: CosinePairs,
    /// Class-mean cosines by group pair.
    pub cos_mu: CosinePairs,
}

impl GroupRecord {
    /// The group summaries of `stats`, when its classes have groups.
    pub fn of(stats: &ClassStats) -> Option<GroupRecord> {
        stats.by_group.as_ref().map(|b| GroupRecord {
            w_norm_sq: b.w_norm_sq.into(),
            mu_norm_sq: b.m_norm_sq.into(),
            cos_w_mu: b.cos_w_mu.into(),
            norm_ratio_w: b.norm_ratio_w,
            norm_ratio_mu: b.norm_ratio_m,
            cos_w: b.cos_w.into(),
            cos_mu: b.cos_m.into(),
        })
    }
}

/// Normalized distances between SELI and the ETF.
#[derive(Debug, Clone, Serialize)]
pub struct DistanceRecord {
    /// `dist(G_W^SELI, G_W^ETF)`.
    pub dist_gw_seli_etf: f64,
    /// `dist(G_M^SELI, G_M^ETF)`.
    pub dist_gm_seli_etf: f64,
}

/// The k×k matrices.
#[derive(Debug, Clone, Serialize)]
pub struct MatricesRecord {
    /// SELI `G_W`.
    pub gram_w: Vec<Vec<f64>>,
    /// SELI `G_M`.
    pub gram_m: Vec<Vec<f64>>,
    /// `WᵀM = P`.
    pub logits: Vec<Vec<f64>>,
    /// ETF `G_W` at the same n.
    pub etf_gram_w: Vec<Vec<f64>>,
    /// ETF `G_M` at the same n.
    pub etf_gram_m: Vec<Vec<f64>>,
    /// Classifier cosines.
    pub cos_w: Vec<Vec<f64>>,
    /// Class-mean cosines.
    pub cos_mu: Vec<Vec<f64>>,
}

/// A realization in d dimensions.
#[derive(Debug, Clone, Serialize)]
pub struct RealizationRecord {
    /// Dimension.
    pub d: usize,
    /// Seed of the frame.
    pub seed: u64,
    /// d×k classifiers.
    pub w: Vec<Vec<f64>>,
    /// d×k class means.
    pub m: Vec<Vec<f64>>,
    /// `max |WᵀM − P|`.
    pub wtm_residual: f64,
}

impl ProfileRecord {
    /// The record of a profile; `source` names the label file it came from, if any.
    pub fn new(p: &seli_core::Profile, source: Option<&Path>) -> Self {
        let (mut ratio, mut rho, mut n_min, mut n_max) = (None, None, None, None);
        match *p.kind() {
            ProfileKind::Step { ratio: r, rho: q, n_min: m } => {
                (ratio, rho, n_min) = (Some(r), Some(q), Some(m));
            }
            ProfileKind::LongTail { n_max: m, ratio: r } => (n_max, ratio) = (Some(m), Some(r)),
            _ => {}
        }
        ProfileRecord {
            kind: p.kind().name().to_string(),
            k: p.k(),
            n: p.n(),
            counts: p.counts().to_vec(),
            groups: p.groups().map(|g| g.iter().map(|x| x.name().to_string()).collect()),
            ratio,
            rho,
            n_min,
            n_max,
            source: source.map(|s| s.display().to_string()),
        }
    }
}

impl ProfileRecord {
    /// Rebuilds the profile this record describes (STEP and long-tail from their parameters,
    /// so that groups come back too; others from the counts) and checks the counts agree.
    ///
    /// # Errors
    /// Parameters that no longer validate, or counts that differ from the parameters'.
    pub fn to_profile(&self) -> std::result::Result<seli_core::Profile, seli_core::Error> {
        use seli_core::Profile;
        let p = match (self.kind.as_str(), self.ratio, self.rho, self.n_min, self.n_max) {
            ("step", Some(r), Some(rho), Some(m), _) => Profile::step(self.k, r, rho, m)?,
            ("long-tail", Some(r), _, _, Some(m)) => Profile::long_tail(self.k, m, r)?,
            _ => Profile::from_counts(self.counts.clone())?,
        };
        if p.counts() != self.counts.as_slice() {
            return Err(seli_core::Error::InvalidParameter {
                name: "profile counts",
                value: format!("{:?}", self.counts),
                rule: "do not match the recorded profile parameters",
            });
        }
        Ok(p)
    }
}

impl GeometryRecord {
    /// The record of a geometry, its statistics and an optional realization.
    ///
    /// ```
    /// use seli_core::{Geometry, Profile};
    /// let g = Geometry::new(&Profile::step(4, 10.0, 0.5, 1).unwrap()).unwrap();
    /// let rec = seli_io::GeometryRecord::new(&g, &g.stats(), None, None);
    /// let json = serde_json::to_value(&rec).unwrap();
    /// assert_eq!(json["schema"], "seli.geometry.v1");
    /// assert_eq!(json["profile"]["counts"], serde_json::json!([10, 10, 1, 1]));
    /// ```
    pub fn new(
        g: &Geometry,
        stats: &ClassStats,
        realization: Option<&Realization>,
        source: Option<&Path>,
    ) -> Self {
        let p = g.profile();
        let classes = ClassRecord::all(p, stats);
        let groups = GroupRecord::of(stats);
        GeometryRecord {
            schema: GEOMETRY_SCHEMA,
            seli_version: env!("CARGO_PKG_VERSION"),
            profile: ProfileRecord::new(p, source),
            sel: SelRecord {
                rank: g.k() - 1,
                singular_values: g.singular_values().to_vec(),
                nuclear_norm: g.nuclear_norm(),
                frobenius_norm_sq: g.frobenius_sq(),
            },
            classes,
            groups,
            distances: DistanceRecord {
                dist_gw_seli_etf: g.dist_gram_w_etf(),
                dist_gm_seli_etf: g.dist_gram_m_etf(),
            },
            matrices: MatricesRecord {
                gram_w: rows(g.gram_w()),
                gram_m: rows(g.gram_m()),
                logits: rows(g.logit_target().as_ref()),
                etf_gram_w: rows(g.etf_gram_w().as_ref()),
                etf_gram_m: rows(g.etf_gram_m().as_ref()),
                cos_w: rows(stats.cos_w.as_ref()),
                cos_mu: rows(stats.cos_m.as_ref()),
            },
            realization: realization.map(|r| RealizationRecord {
                d: r.d,
                seed: r.seed,
                w: rows(r.W.as_ref()),
                m: rows(r.M.as_ref()),
                wtm_residual: r.wtm_residual,
            }),
        }
    }
}

/// Schema tag of [`LossGeometryRecord`].
pub const LOSS_GEOMETRY_SCHEMA: &str = "seli.loss-geometry.v1";

/// The loss part of a record.
#[derive(Debug, Clone, Serialize)]
pub struct LossRecord {
    /// `ce`, `cdt`, `ldt`, `la` or `vs`.
    pub loss: &'static str,
    /// Exponent of `Δ`.
    pub gamma: f64,
    /// Scale of `ι`.
    pub tau: f64,
    /// Whether the logits have a free bias.
    pub bias: bool,
    /// `Δ_c` (mean 1).
    pub delta: Vec<f64>,
    /// `ι_c`.
    pub iota: Vec<f64>,
}

impl LossRecord {
    /// The record of `loss` for `profile`.
    pub fn new(loss: &Loss, profile: &Profile) -> Self {
        LossRecord {
            loss: loss.kind.name(),
            gamma: loss.gamma,
            tau: loss.tau,
            bias: loss.bias,
            delta: loss.delta(profile),
            iota: loss.iota(profile),
        }
    }
}

/// The certified max-margin solution behind a loss's target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRecord {
    /// Rank of the target's logits.
    pub rank: usize,
    /// Singular values of `B` (k of them, non-increasing).
    pub singular_values: Vec<f64>,
    /// `‖B‖_* = ½(‖W‖² + ‖H‖²)` at margins 1.
    pub nuclear_norm: f64,
    /// `‖Ẑ‖_*`, plain cross-entropy's optimum.
    pub sel_nuclear_norm: f64,
    /// Dual objective of the certificate.
    pub dual: f64,
    /// `nuclear_norm − dual`.
    pub gap: f64,
    /// Whether the gap is within the tolerance (relative).
    pub certified: bool,
    /// ADMM iterations.
    pub iters: u64,
    /// The bias at the target (mean zero), with a free bias.
    pub bias: Option<Vec<f64>>,
}

/// Normalized distances of a loss's target to SELI and to the ETF.
#[derive(Debug, Clone, Serialize)]
pub struct TargetDistanceRecord {
    /// `dist(G_W^target, G_W^SELI)`.
    pub dist_gw_seli: f64,
    /// `dist(G_M^target, G_M^SELI)`.
    pub dist_gm_seli: f64,
    /// `dist(G_W^target, G_W^ETF)`.
    pub dist_gw_etf: f64,
    /// `dist(G_M^target, G_M^ETF)`.
    pub dist_gm_etf: f64,
}

/// The k×k matrices of a loss's target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetMatricesRecord {
    /// `G_W`.
    pub gram_w: Vec<Vec<f64>>,
    /// `G_M`.
    pub gram_m: Vec<Vec<f64>>,
    /// `WᵀM = B D^{-1/2}`.
    pub logits: Vec<Vec<f64>>,
    /// Classifier cosines.
    pub cos_w: Vec<Vec<f64>>,
    /// Class-mean cosines.
    pub cos_mu: Vec<Vec<f64>>,
    /// The dual multipliers (entry (j, c): class c's constraint against j).
    pub alpha: Vec<Vec<f64>>,
}

/// `seli geometry --loss ...` as JSON (schema [`LOSS_GEOMETRY_SCHEMA`]): the implicit-geometry
/// target of a loss (docs/theory.md §10) beside SELI and the ETF.
#[derive(Debug, Clone, Serialize)]
pub struct LossGeometryRecord {
    /// Always [`LOSS_GEOMETRY_SCHEMA`].
    pub schema: &'static str,
    /// Version of the tool that wrote the record.
    pub seli_version: &'static str,
    /// The class-count profile.
    pub profile: ProfileRecord,
    /// The loss.
    pub loss: LossRecord,
    /// The certified solution.
    pub target: TargetRecord,
    /// Per-class statistics of the target.
    pub classes: Vec<ClassRecord>,
    /// Majority/minority summaries of the target, when groups are defined.
    pub groups: Option<GroupRecord>,
    /// Distances of the target to SELI and to the ETF.
    pub distances: TargetDistanceRecord,
    /// Full k×k matrices.
    pub matrices: TargetMatricesRecord,
}

impl LossGeometryRecord {
    /// Solves the target of `loss` for `profile` ([`Target::certified`]) and records it beside
    /// SELI.
    ///
    /// # Errors
    /// A solve or decomposition failing.
    pub fn solve(profile: &Profile, loss: Loss, source: Option<&Path>) -> seli_core::Result<Self> {
        let target = Target::certified(profile, loss)?;
        let seli = Geometry::new(profile)?;
        Self::new(&target, &seli, seli_core::implicit::TARGET_TOL, source)
    }

    /// The record of a loss's target, its statistics and the SELI geometry of the same profile;
    /// `tol` is the relative gap the certificate was asked for.
    ///
    /// # Errors
    /// A target with a zero classifier or class mean (no cosines).
    pub fn new(
        t: &Target,
        seli: &Geometry,
        tol: f64,
        source: Option<&Path>,
    ) -> seli_core::Result<Self> {
        let stats = t.stats()?;
        let p = t.profile();
        let sol = t.solution();
        let d = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| {
            seli_core::metrics::normalized_distance(a, b).unwrap_or(f64::NAN)
        };
        Ok(LossGeometryRecord {
            schema: LOSS_GEOMETRY_SCHEMA,
            seli_version: env!("CARGO_PKG_VERSION"),
            profile: ProfileRecord::new(p, source),
            loss: LossRecord::new(&t.loss(), p),
            target: TargetRecord {
                rank: t.rank(),
                singular_values: t.singular_values().to_vec(),
                nuclear_norm: sol.primal,
                sel_nuclear_norm: seli.nuclear_norm(),
                dual: sol.dual,
                gap: sol.gap,
                certified: sol.gap <= tol * sol.primal.max(1.0),
                iters: sol.iters,
                bias: t.bias().map(<[f64]>::to_vec),
            },
            classes: ClassRecord::all(p, &stats),
            groups: GroupRecord::of(&stats),
            distances: TargetDistanceRecord {
                dist_gw_seli: d(t.gram_w(), seli.gram_w()),
                dist_gm_seli: d(t.gram_m(), seli.gram_m()),
                dist_gw_etf: d(t.gram_w(), seli.etf_gram_w().as_ref()),
                dist_gm_etf: d(t.gram_m(), seli.etf_gram_m().as_ref()),
            },
            matrices: TargetMatricesRecord {
                gram_w: rows(t.gram_w()),
                gram_m: rows(t.gram_m()),
                logits: rows(t.logit_target()),
                cos_w: rows(stats.cos_w.as_ref()),
                cos_mu: rows(stats.cos_m.as_ref()),
                alpha: rows(sol.alpha.as_ref()),
            },
        })
    }
}
