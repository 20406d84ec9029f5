//! `seli report`: figures and a self-contained HTML report of run directories.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args;

/// Flags of `seli report`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seli report runs/train                       runs/train/report.html and runs/train/figures/*.svg
  seli report --compare runs/reproduce/R1 runs/reproduce/R10 runs/reproduce/R100 --out cmp.html")]
pub struct ReportArgs {
    /// Run directories (seli ufm, seli train, one R of seli reproduce).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub dirs: Vec<PathBuf>,

    /// Overlay the runs in one report instead of one report per run.
    #[arg(long)]
    pub compare: bool,

    /// With --compare: the HTML file to write (figures go beside it, in figures/).
    #[arg(long, default_value = "report.html", requires = "compare")]
    pub out: PathBuf,
}

/// Runs `seli report`.
pub fn run(a: &ReportArgs) -> Result<()> {
    if a.compare {
        if a.dirs.len() < 2 {
            bail!("--compare needs at least two run directories");
        }
        let p = seli_report::write_compare(&a.dirs, &a.out).map_err(|e| anyhow!(e))?;
        println!("report: {}", p.display());
    } else {
        for d in &a.dirs {
            let p = seli_report::write_report(d).map_err(|e| anyhow!(e))?;
            println!("report: {}", p.display());
        }
    }
    Ok(())
}
