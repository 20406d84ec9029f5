//! `seli analyze`: a model's exported features (and last layer) against SELI and the ETF.
#![allow(non_snake_case)]

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use seli_core::features::GEOMETRY_COLUMNS;
use seli_io::arrays::Array;
use seli_run::analyze::{
    Layout, PER_CLASS_COLUMNS, analyze, check_labels, classifier_matrix, read_label_array,
};

/// Classifier storage.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// (k, d): row c is w_c, as PyTorch's nn.Linear.weight.
    Kd,
    /// (d, k): column c is w_c.
    Dk,
}

/// Flags of `seli analyze`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seli analyze --features feats.npy --labels labels.npy --classifier fc_weight.npy
  seli analyze --features export.npz --features-key h --labels export.npz --labels-key y \\
               --classifier export.npz --classifier-key W --json out.json --csv out.csv
  seli analyze --features model.safetensors --features-key features --labels y.txt

Formats: .npy (f16/f32/f64, C or Fortran order), .npz (savez or savez_compressed), .safetensors;
labels also as text, one integer per line. Files are memory-mapped and read --chunk rows at a
time, so features larger than memory work (deflated .npz members are decompressed into memory).
The JSON and CSV outputs are documented in docs/formats.md.")]
pub struct AnalyzeArgs {
    /// Features, one row per sample (n x d).
    #[arg(long, value_name = "FILE", required_unless_present = "epochs")]
    pub features: Option<PathBuf>,
    /// Array name in --features (.npz member or safetensors tensor).
    #[arg(long, value_name = "NAME")]
    pub features_key: Option<String>,
    /// Labels (n integers): text, .npy, .npz or .safetensors.
    #[arg(long, value_name = "FILE", required_unless_present = "epochs")]
    pub labels: Option<PathBuf>,
    /// Array name in --labels.
    #[arg(long, value_name = "NAME")]
    pub labels_key: Option<String>,
    /// Number of classes K (labels in 0..K, each present). Default: largest label + 1.
    #[arg(long, value_name = "K")]
    pub classes: Option<usize>,
    /// Last-layer weights.
    #[arg(long, value_name = "FILE")]
    pub classifier: Option<PathBuf>,
    /// Array name in --classifier.
    #[arg(long, value_name = "NAME", requires = "classifier")]
    pub classifier_key: Option<String>,
    /// How --classifier is stored: kd = (k, d), PyTorch nn.Linear.weight; dk = (d, k).
    #[arg(long, value_enum, default_value = "kd")]
    pub classifier_layout: LayoutArg,
    /// Last-layer bias (k values), used for logits computed from --classifier.
    #[arg(long, value_name = "FILE", requires = "classifier")]
    pub bias: Option<PathBuf>,

    /// The loss the model was trained with: the dist_*_target columns compare with its target
    /// (docs/theory.md §10; a free bias when --bias is given)
    #[command(flatten)]
    pub loss: crate::loss_args::LossArgs,
    /// Array name in --bias.
    #[arg(long, value_name = "NAME", requires = "bias")]
    pub bias_key: Option<String>,
    /// Logits (n x k); default: W^T h + b from --classifier and --bias.
    #[arg(long, value_name = "FILE")]
    pub logits: Option<PathBuf>,
    /// Array name in --logits.
    #[arg(long, value_name = "NAME", requires = "logits")]
    pub logits_key: Option<String>,
    /// Rows per chunk (raised to at least one part per thread: parts of 1024 rows, or twice
    /// the side of the projected scatter when that is larger).
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
    /// Write the result as JSON (seli.analyze.v1).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the result as a one-row CSV (header: n, d, k and the metric columns).
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Held-out features (n' x d), measured against the training class means: accuracy,
    /// nearest-class-mean accuracy, NC4 (needs --eval-labels).
    #[arg(long, value_name = "FILE", requires = "eval_labels")]
    pub eval_features: Option<PathBuf>,
    /// Array name in --eval-features.
    #[arg(long, value_name = "NAME", requires = "eval_features")]
    pub eval_features_key: Option<String>,
    /// Labels of --eval-features.
    #[arg(long, value_name = "FILE", requires = "eval_features")]
    pub eval_labels: Option<PathBuf>,
    /// Array name in --eval-labels.
    #[arg(long, value_name = "NAME", requires = "eval_labels")]
    pub eval_labels_key: Option<String>,
    /// Out-of-distribution features (n'' x d): NC5 against the training class means.
    #[arg(long, value_name = "FILE")]
    pub ood_features: Option<PathBuf>,
    /// Array name in --ood-features.
    #[arg(long, value_name = "NAME", requires = "ood_features")]
    pub ood_features_key: Option<String>,
    /// A directory of per-epoch exports instead of --features: one .npz (arrays features,
    /// labels and optionally classifier, bias, logits) or one subdirectory (features.npy,
    /// labels.npy or labels.txt, classifier.npy, bias.npy, logits.npy) per epoch, numbered by
    /// the last number in its name. Writes --out/metrics.csv (one row per epoch), config.json,
    /// grams.json and the report (report.html, figures/): the curves `seli train` draws.
    #[arg(long, value_name = "DIR", requires = "out", conflicts_with_all = ["features", "labels", "classifier", "bias", "logits", "eval_features", "ood_features", "per_class", "json", "csv"])]
    pub epochs: Option<PathBuf>,
    /// Output directory of --epochs (an interrupted series resumes there).
    #[arg(long, value_name = "DIR", requires = "epochs")]
    pub out: Option<PathBuf>,
    /// Write the per-class view (norms, aligned cosines to SELI and the ETF, within-class
    /// variance and share) to PATH: CSV, or JSON when PATH ends in .json.
    #[arg(long, value_name = "PATH")]
    pub per_class: Option<PathBuf>,
}

/// Runs `seli analyze`.
pub fn run(a: &AnalyzeArgs) -> Result<()> {
    let layout = match a.classifier_layout {
        LayoutArg::Kd => Layout::Kd,
        LayoutArg::Dk => Layout::Dk,
    };
    if let (Some(dir), Some(out)) = (&a.epochs, &a.out) {
        return run_series(dir, out, layout, a);
    }
    let (Some(features_path), Some(labels_path)) = (&a.features, &a.labels) else {
        anyhow::bail!("--features and --labels are required (or --epochs DIR --out DIR)");
    };
    let features = Array::open(features_path, a.features_key.as_deref())?;
    let (_, d) = features.matrix_shape()?;
    let labels = read_label_array(labels_path, a.labels_key.as_deref())?;
    // The labels are checked first, so that their errors name their own file.
    let k = check_labels(&features, &labels, labels_path, a.classes)?.k();
    let W = match &a.classifier {
        Some(p) => {
            Some(classifier_matrix(&Array::open(p, a.classifier_key.as_deref())?, layout, d, k)?)
        }
        None => None,
    };
    let bias = match &a.bias {
        Some(p) => {
            let arr = Array::open(p, a.bias_key.as_deref())?;
            let (m, c) = arr.matrix_shape()?;
            if c != 1 || m != k {
                anyhow::bail!("{}: bias of shape {:?}, expected ({k},)", arr.name(), arr.shape());
            }
            Some(arr.rows(0, m)?)
        }
        None => None,
    };
    let logits = match &a.logits {
        Some(p) => Some(Array::open(p, a.logits_key.as_deref())?),
        None => None,
    };
    let acc = analyze(
        &features,
        &labels,
        labels_path,
        a.classes,
        W.as_ref(),
        bias.as_deref(),
        logits.as_ref().map(|z| z as &dyn seli_io::arrays::RowSource),
        a.chunk,
    )?;
    let loss = a.loss.resolve(bias.is_some())?;
    let mut r = acc.analysis_with(loss.kind, loss.gamma, loss.tau)?;
    if let (Some(f), Some(l)) = (&a.eval_features, &a.eval_labels) {
        let feats = Array::open(f, a.eval_features_key.as_deref())?;
        let labels = read_label_array(l, a.eval_labels_key.as_deref())?;
        r.eval = Some(acc.held_out(&feats, &labels, l, None)?);
    }
    if let Some(f) = &a.ood_features {
        r.ood = Some(acc.ood(&Array::open(f, a.ood_features_key.as_deref())?)?);
    }
    println!(
        "{} samples, d = {}, k = {}, counts {:?}; logits: {}",
        r.n,
        r.d,
        r.k,
        r.profile.counts,
        match r.logits {
            seli_run::analyze::LogitSource::File => "from --logits",
            seli_run::analyze::LogitSource::Classifier => "W^T h + b from --classifier",
            seli_run::analyze::LogitSource::None => "none (accuracy, dist_z, NC4 undefined)",
        }
    );
    println!(
        "SELI vs ETF for these counts: G_W {:.6}, G_M {:.6} (the ETF distances at exact SELI)",
        r.seli_vs_etf[0], r.seli_vs_etf[1]
    );
    println!("{}", r.centering);
    for (name, meaning) in GEOMETRY_COLUMNS {
        let v = r.get(name).map_or("-".to_string(), seli_run::report::num);
        println!("  {name:<16} {v:>14}   {meaning}");
    }
    let cell = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(e) = &r.eval {
        println!(
            "held-out ({} samples, against the training class means): accuracy {}, NCC accuracy \
             {}, NC4 mismatch {}",
            e.n,
            e.accuracy.map_or("-".into(), seli_run::report::num),
            seli_run::report::num(e.ncc_accuracy),
            e.ncc_mismatch.map_or("-".into(), seli_run::report::num),
        );
        extra.extend([
            ("eval_n", e.n.to_string()),
            ("eval_accuracy", cell(e.accuracy)),
            ("eval_ncc_accuracy", cell(Some(e.ncc_accuracy))),
            ("eval_ncc_mismatch", cell(e.ncc_mismatch)),
        ]);
    }
    if let Some(o) = &r.ood {
        println!(
            "out-of-distribution ({} samples): nc5 {}   mean over c of |cos(mu_c - mu_G, mu_OOD - mu_G)|",
            o.n,
            o.nc5.map_or("-".into(), seli_run::report::num)
        );
        extra.extend([("ood_n", o.n.to_string()), ("nc5", cell(o.nc5))]);
    }
    if let Some(p) = &a.json {
        seli_io::write_json_atomic(p, "analysis", &r)?;
    }
    if let Some(p) = &a.csv {
        let mut header = vec!["n".to_string(), "d".into(), "k".into()];
        header.extend(GEOMETRY_COLUMNS.iter().map(|(n, _)| (*n).to_string()));
        header.extend(extra.iter().map(|(n, _)| (*n).to_string()));
        let mut row = vec![r.n.to_string(), r.d.to_string(), r.k.to_string()];
        row.extend(GEOMETRY_COLUMNS.iter().map(|(n, _)| cell(r.get(n))));
        row.extend(extra.iter().map(|(_, v)| v.clone()));
        seli_io::write_atomic(p, format!("{}\n{}\n", header.join(","), row.join(",")).as_bytes())?;
    }
    if let Some(p) = &a.per_class {
        let rows = acc.per_class()?;
        if p.extension().is_some_and(|e| e == "json") {
            seli_io::write_json_atomic(p, "per-class view", &rows)?;
        } else {
            let mut text = PER_CLASS_COLUMNS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(",");
            text.push('\n');
            for row in &rows {
                text.push_str(&row.cells().join(","));
                text.push('\n');
            }
            seli_io::write_atomic(p, text.as_bytes())?;
        }
    }
    Ok(())
}

/// `seli analyze --epochs DIR --out OUT`: every per-epoch export, then the report.
fn run_series(
    dir: &std::path::Path,
    out: &std::path::Path,
    layout: Layout,
    a: &AnalyzeArgs,
) -> Result<()> {
    let bar = crate::ufm::progress_bar(0, 0);
    let outcome = seli_run::analyze::analyze_series(
        dir,
        out,
        layout,
        a.classes,
        a.chunk,
        &mut |epoch, done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("epoch {epoch}"));
            tracing::info!(epoch, "measured");
        },
    )?;
    bar.finish_and_clear();
    let report = seli_report::write_report(out).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "{} epochs measured{} -> {} and {}",
        outcome.measured,
        if outcome.kept > 0 {
            format!(" ({} kept from before)", outcome.kept)
        } else {
            String::new()
        },
        out.join("metrics.csv").display(),
        report.display()
    );
    Ok(())
}
