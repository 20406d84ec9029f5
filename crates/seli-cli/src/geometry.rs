//! `seli geometry`: the exact SELI geometry of a profile, as a table and as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use seli_core::Geometry;
use seli_io::{GeometryRecord, LossGeometryRecord};

use crate::loss_args::LossArgs;
use crate::profile_args::ProfileArgs;

/// Flags of `seli geometry`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seli geometry                                   default STEP 10,10,0.5,500
  seli geometry --step 10,100,0.5 --json out.json
  seli geometry --long-tail 10,5000,100
  seli geometry --counts 5000,5000,500,500 --d 16 --seed 3 --json seli.json
  seli geometry --labels train_labels.npy --classes 10
  seli geometry --loss cdt --gamma 0.5            the target of cdt (certified max-margin solve)
  seli geometry --bias --json bias.json           plain cross-entropy with a free bias")]
pub struct GeometryArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,

    #[command(flatten)]
    pub loss: LossArgs,

    /// Logits with a free, unregularized bias b (the target then comes from the certified
    /// max-margin solve with b)
    #[arg(long)]
    pub bias: bool,

    /// Write everything (spectrum, per-class and group statistics, all k x k matrices, the
    /// realization) as JSON to PATH (schema seli.geometry.v1, see docs/formats.md).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also build concrete classifiers W and class means M in R^D (D >= k-1) from a seeded
    /// random orthonormal frame, and check W^T M = P.
    #[arg(long, value_name = "D")]
    pub d: Option<usize>,

    /// Seed of the random frame used with --d.
    #[arg(long, default_value_t = 0, requires = "d")]
    pub seed: u64,

    /// Also draw the SELI Grams beside the ETF and, for STEP profiles, the SELI classifier
    /// cosines and norm ratio against R, as SVG files in DIR.
    #[arg(long, value_name = "DIR")]
    pub figures: Option<PathBuf>,
}

/// What `seli geometry` computed: SELI (plain cross-entropy), or another loss's target.
pub enum Computed {
    /// SELI and its record.
    Seli(Box<(Geometry, GeometryRecord)>),
    /// The record of a loss's certified target.
    Loss(Box<LossGeometryRecord>),
}

impl Computed {
    /// The record as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(match self {
            Computed::Seli(g) => serde_json::to_value(&g.1)?,
            Computed::Loss(r) => serde_json::to_value(r)?,
        })
    }
}

/// The geometry and its record for these flags (nothing printed or written).
pub fn compute(args: &GeometryArgs) -> Result<Computed> {
    let loss = args.loss.resolve(args.bias)?;
    if !loss.is_plain() {
        if args.d.is_some() {
            anyhow::bail!(
                "--d realizes SELI only; leave it out with --loss {} or --bias",
                loss.kind
            );
        }
        let (profile, source) = args.profile.resolve()?;
        let start = std::time::Instant::now();
        let rec = LossGeometryRecord::solve(&profile, loss, source.as_deref())?;
        tracing::info!(k = profile.k(), loss = %loss.describe(), iters = rec.target.iters, elapsed = ?start.elapsed(), "target solved");
        return Ok(Computed::Loss(Box::new(rec)));
    }
    Ok(Computed::Seli(Box::new(compute_seli(args)?)))
}

/// SELI and its record for these flags.
fn compute_seli(args: &GeometryArgs) -> Result<(Geometry, GeometryRecord)> {
    let (profile, source) = args.profile.resolve()?;
    let start = std::time::Instant::now();
    let geometry = Geometry::new(&profile)?;
    let stats = geometry.stats();
    let realization =
        args.d.map(|d| geometry.realize(d, args.seed)).transpose().context("invalid --d")?;
    tracing::info!(k = profile.k(), n = profile.n(), elapsed = ?start.elapsed(), "geometry computed");
    let record = GeometryRecord::new(&geometry, &stats, realization.as_ref(), source.as_deref());
    Ok((geometry, record))
}

/// Runs `seli geometry`.
pub fn run(args: &GeometryArgs) -> Result<()> {
    if args.figures.is_some() && !args.loss.resolve(args.bias)?.is_plain() {
        anyhow::bail!("--figures draws SELI only; leave it out with --loss or --bias");
    }
    let computed = compute(args)?;
    match &computed {
        Computed::Seli(g) => print!("{}", seli_run::report::geometry_summary(&g.1)),
        Computed::Loss(r) => print!("{}", seli_run::report::loss_geometry_summary(r)),
    }
    if let Some(path) = &args.json {
        seli_io::write_json_atomic(path, "geometry record", &computed.json()?)?;
        println!("\nwrote {}", path.display());
    }
    let Computed::Seli(seli) = &computed else {
        return Ok(());
    };
    if let Some(dir) = &args.figures {
        let figs =
            seli_report::report::geometry_figures(&seli.0).map_err(|e| anyhow::anyhow!(e))?;
        for f in seli_report::report::save_figures(dir, &figs).map_err(|e| anyhow::anyhow!(e))? {
            println!("figure {}", f.display());
        }
    }
    Ok(())
}
