//! Run directories (`seli ufm`, `seli train`) turned into figures and one self-contained HTML
//! file, and several runs overlaid.
#![allow(non_snake_case)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use faer::Mat;
use seli_core::features::FeatureMoments;
use seli_core::metrics::{centering_projector, gram, normalized};
use seli_core::{Geometry, Profile};
use seli_io::csvlog::{Row, read_csv};
use seli_run::solutions::{RidgePathRecord, RidgePoint};
use seli_run::{Command, RunConfig};

use crate::figures::{Dash, Series, bar_chart, heatmaps, line_chart};

/// What produced a run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `seli ufm` (or one R of `seli reproduce`).
    Ufm,
    /// `seli train`.
    Train,
}

impl RunKind {
    /// Which class means the figures compare with SELI, as the infixes of their metric
    /// columns (`dist_{gm}_seli`, `norm_ratio_{mu}`) and in words: the raw means for the
    /// bias-free UFM (the paper's comparison), the means centered by their mean for deep
    /// features (docs/theory.md, "Centerings").
    pub fn means(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RunKind::Ufm => ("gm", "mu", "raw class means"),
            RunKind::Train => ("gmc", "muc", "class means centered by their mean"),
        }
    }
}

/// A run directory's records.
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its kind.
    pub kind: RunKind,
    /// `config.json`, checked.
    pub config: RunConfig,
    /// `summary.json`, when the run finished or was interrupted.
    pub summary: Option<serde_json::Value>,
    /// `metrics.csv` header.
    pub header: Vec<String>,
    /// `metrics.csv` rows.
    pub rows: Vec<Row>,
    /// The SELI geometry of the run's counts.
    pub geometry: Geometry,
}

/// A drawn figure.
pub struct Figure {
    /// File stem (`figures/NAME.svg`).
    pub name: String,
    /// Caption.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

impl Run {
    /// Reads `dir`.
    ///
    /// # Errors
    /// A directory without `config.json` / `metrics.csv`, or of an unknown kind.
    pub fn load(dir: &Path) -> Result<Run, String> {
        let config = RunConfig::read(dir).map_err(|e| e.to_string())?;
        // Training runs and series of per-epoch exports are both deep features over epochs.
        let kind = match config.command() {
            Some(Command::Ufm) => RunKind::Ufm,
            _ => RunKind::Train,
        };
        let (header, rows) = read_csv(&dir.join("metrics.csv")).map_err(|e| e.to_string())?;
        let summary = read_json(&dir.join("summary.json")).ok();
        let profile = config.profile().to_profile().map_err(|e| e.to_string())?;
        let geometry = Geometry::new(&profile).map_err(|e| e.to_string())?;
        Ok(Run { dir: dir.to_path_buf(), kind, config, summary, header, rows, geometry })
    }

    /// A short name for legends: the directory name.
    pub fn label(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(|| self.dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    fn x(&self) -> (&'static str, &'static str, bool) {
        match self.kind {
            RunKind::Ufm => ("iter", "iteration", true),
            RunKind::Train => ("epoch", "epoch", false),
        }
    }

    /// `(x, column)` points of a metrics column.
    pub fn curve(&self, col: &str) -> Vec<(f64, f64)> {
        let (xc, _, _) = self.x();
        let (Some(xi), Some(yi)) =
            (self.header.iter().position(|h| h == xc), self.header.iter().position(|h| h == col))
        else {
            return Vec::new();
        };
        self.rows.iter().filter_map(|r| Some((r[xi]?, r[yi]?))).collect()
    }

    /// What produced the run, in words.
    pub fn description(&self) -> &'static str {
        match self.config.command() {
            Some(Command::Ufm) => "UFM run",
            Some(_) => "training run",
            None => "series of per-epoch exports (seli analyze --epochs)",
        }
    }

    fn profile(&self) -> &Profile {
        self.geometry.profile()
    }
}

fn rows_of(m: faer::MatRef<'_, f64>) -> Vec<Vec<f64>> {
    (0..m.nrows()).map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect()).collect()
}

/// The last measured classifier and class-mean Grams: a UFM run's from its checkpoint (raw
/// means), a training run's from `grams.json` (centered means, [`RunKind::means`]).
fn run_grams(run: &Run) -> Option<(Mat<f64>, Mat<f64>)> {
    match run.kind {
        RunKind::Ufm => ufm_grams(run),
        RunKind::Train => {
            let g = seli_run::train::TrainDir { dir: run.dir.clone() }.read_grams().ok()?;
            let mat = |rows: &[Vec<f64>]| -> Option<Mat<f64>> {
                let k = rows.len();
                rows.iter().all(|r| r.len() == k).then(|| Mat::from_fn(k, k, |i, j| rows[i][j]))
            };
            // Files of seli 0.1 have no gram_mc: their gram_m was the centered one.
            Some((mat(&g.gram_w)?, mat(g.gram_mc.as_deref().unwrap_or(&g.gram_m))?))
        }
    }
}

fn ufm_grams(run: &Run) -> Option<(Mat<f64>, Mat<f64>)> {
    let RunConfig::Ufm(c) = &run.config else { return None };
    let (d, bias) = (c.d, c.bias);
    let p = run.profile();
    let (k, n) = (p.k(), p.n() as usize);
    let path = seli_run::ufm::UfmDir(run.dir.clone()).checkpoint();
    let (W, H) = if c.dtype == seli_run::ufm::Dtype::F32 {
        let (q, _) = seli_io::checkpoint::load_checkpoint::<f32>(&path, d, k, n, bias).ok()?;
        (
            Mat::from_fn(d, k, |i, j| f64::from(q.W[(i, j)])),
            Mat::from_fn(d, n, |i, j| f64::from(q.H[(i, j)])),
        )
    } else {
        let (q, _) = seli_io::checkpoint::load_checkpoint::<f64>(&path, d, k, n, bias).ok()?;
        (q.W, q.H)
    };
    let labels: Vec<u32> =
        p.counts().iter().enumerate().flat_map(|(c, &m)| vec![c as u32; m as usize]).collect();
    let M = FeatureMoments::of_matrix(H.as_ref(), &labels, k).ok()?.class_means().ok()?;
    Some((gram(W.as_ref()), gram(M.as_ref())))
}

/// A line-chart figure; `markers` are labelled vertical lines (thresholds).
fn line_figure(
    name: &str,
    caption: &str,
    title: &str,
    (x_label, y_label, log_x): (&str, &str, bool),
    series: &[Series],
    markers: &[(f64, &str)],
) -> Result<Figure, String> {
    Ok(Figure {
        name: name.into(),
        caption: caption.into(),
        svg: line_chart(title, x_label, y_label, log_x, series, markers)?,
    })
}

/// Every figure of one run.
///
/// # Errors
/// A drawing failure.
pub fn figures(run: &Run) -> Result<Vec<Figure>, String> {
    let stats = run.geometry.stats();
    let mut out = vec![distance_figure(run)?];
    if let Some(g) = &stats.by_group {
        out.extend(group_curves(run, g)?);
    }
    let grams = run_grams(run).filter(|(gw, _)| gw.nrows() == run.geometry.k());
    if let Some((gw, gm)) = &grams {
        out.extend(last_measurement_bars(run, &stats, gw, gm)?);
    }
    out.extend(gram_heatmaps(run, grams.as_ref())?);
    Ok(out)
}

/// A curve of metrics column `col` of `run`.
fn series(run: &Run, label: &str, col: &str, color: usize, dash: Dash) -> Series {
    Series::new(label, run.curve(col), color, dash)
}

/// The distances of G_W, G_M, the logits and W^T M to SELI and the ETF over the run.
fn distance_figure(run: &Run) -> Result<Figure, String> {
    let (_, x_label, log_x) = run.x();
    let (gm, _, means) = run.kind.means();
    let wtm = if gm == "gm" { "dist_wtm" } else { "dist_wtmc" };
    let s = |label: &str, col: &str, color: usize, dash: Dash| series(run, label, col, color, dash);
    line_figure(
        "distances",
        &format!(
            "Normalized distances to the SELI targets (solid) and to the ETF (dashed); logits and W^T M share one target. M: {means}."
        ),
        "Distance to SELI (solid) and to the ETF (dashed)",
        (x_label, "normalized distance", log_x),
        &[
            s("G_W to SELI", "dist_gw_seli", 0, Dash::Solid),
            s("G_W to ETF", "dist_gw_etf", 0, Dash::Dashed),
            s("G_M to SELI", &format!("dist_{gm}_seli"), 1, Dash::Solid),
            s("G_M to ETF", &format!("dist_{gm}_etf"), 1, Dash::Dashed),
            s("logits to SEL", "dist_z", 2, Dash::Solid),
            s("W^T M to P", wtm, 3, Dash::Solid),
        ],
        &[],
    )
}

/// Norm ratios against their SELI values, and classifier cosines by group pair, over the run
/// (profiles with majority and minority groups).
fn group_curves(run: &Run, g: &seli_core::metrics::GroupStats) -> Result<Vec<Figure>, String> {
    let (_, x_label, log_x) = run.x();
    let (_, mu, _) = run.kind.means();
    let s = |label: &str, col: &str, color: usize, dash: Dash| series(run, label, col, color, dash);
    let flat = |v: Option<f64>, color: usize, label: &str| Series {
        label: label.to_string(),
        points: v.map_or_else(Vec::new, |v| {
            run.curve("norm_ratio_w").iter().map(|&(x, _)| (x, v)).collect()
        }),
        color,
        dash: Dash::Dashed,
        band: Vec::new(),
    };
    Ok(vec![
        line_figure(
            "norm-ratios",
            "Majority/minority squared-norm ratios; dashed: the SELI values (the ETF's are 1).",
            "Norm ratios ||maj||^2 / ||min||^2",
            (x_label, "ratio", log_x),
            &[
                s("classifiers", "norm_ratio_w", 0, Dash::Solid),
                flat(g.norm_ratio_w, 0, "classifiers at SELI"),
                s("class means", &format!("norm_ratio_{mu}"), 1, Dash::Solid),
                flat(g.norm_ratio_m, 1, "class means at SELI"),
            ],
            &[],
        )?,
        line_figure(
            "cosines",
            "Mean classifier cosines by group pair; the ETF has -1/(k-1) for every pair.",
            "Classifier cosines by group",
            (x_label, "mean cos(w_c, w_c')", log_x),
            &[
                s("majority-majority", "cos_w_maj_maj", 0, Dash::Solid),
                s("minority-minority", "cos_w_min_min", 1, Dash::Solid),
                s("majority-minority", "cos_w_maj_min", 2, Dash::Solid),
            ],
            &[],
        )?,
    ])
}

/// Norms by class and cosines by group pair at the last measurement, beside SELI (and the
/// ETF): bar charts from the last classifier and class-mean Grams.
fn last_measurement_bars(
    run: &Run,
    stats: &seli_core::ClassStats,
    gw: &Mat<f64>,
    gm: &Mat<f64>,
) -> Result<Vec<Figure>, String> {
    let k = run.geometry.k();
    let (_, _, means) = run.kind.means();
    let (wn, mn) = (
        seli_core::metrics::norms_from_gram(gw.as_ref()),
        seli_core::metrics::norms_from_gram(gm.as_ref()),
    );
    let (sw, sm) = (&stats.w_norms, &stats.m_norms);
    let scale = |v: &[f64]| {
        let t: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / t).collect::<Vec<_>>()
    };
    let cats: Vec<String> = (0..k).map(|c| c.to_string()).collect();
    let mut out = vec![Figure {
        name: "norms".into(),
        caption: "Classifier and class-mean norms by class (each set scaled to unit total), last measurement beside SELI.".into(),
        svg: bar_chart(
            "Norms by class (scaled)",
            "||w_c||, ||mu_c||",
            &cats,
            &[("w last", scale(&wn)), ("w SELI", scale(sw)), ("mu last", scale(&mn)), ("mu SELI", scale(sm))],
        )?,
    }];
    if let (Some(groups), Some(target)) = (run.profile().groups(), stats.by_group.as_ref()) {
        let pairs = |g: &Mat<f64>| {
            seli_core::metrics::cosines_from_gram(g.as_ref(), "a class")
                .map(|c| seli_core::metrics::pair_means(c.as_ref(), groups))
                .ok()
        };
        let v = |p: Option<seli_core::metrics::PairMeans>| {
            p.map_or(vec![f64::NAN; 3], |p| {
                [p.maj_maj, p.min_min, p.maj_min].iter().map(|x| x.unwrap_or(f64::NAN)).collect()
            })
        };
        let etf = -1.0 / (k as f64 - 1.0);
        out.push(Figure {
            name: "cosines-by-group".into(),
            caption: format!("Mean cosines by group pair at the last measurement, beside SELI and the ETF (-1/(k-1)); {means}."),
            svg: bar_chart(
                "Cosines by group pair",
                "mean cosine",
                &["maj-maj".into(), "min-min".into(), "maj-min".into()],
                &[
                    ("w last", v(pairs(gw))),
                    ("w SELI", v(Some(target.cos_w))),
                    ("mu last", v(pairs(gm))),
                    ("mu SELI", v(Some(target.cos_m))),
                    ("ETF", vec![etf; 3]),
                ],
            )?,
        });
    }
    Ok(out)
}

/// The normalized classifier and class-mean Grams (the last measurement's, when there is
/// one) beside the SELI and ETF targets.
fn gram_heatmaps(run: &Run, grams: Option<&(Mat<f64>, Mat<f64>)>) -> Result<Vec<Figure>, String> {
    let (_, _, means) = run.kind.means();
    let P = centering_projector(run.geometry.k());
    let norm = |m: faer::MatRef<'_, f64>| {
        normalized(m, "gram").map(|x| rows_of(x.as_ref())).unwrap_or_default()
    };
    let mut panels_w = Vec::new();
    let mut panels_m = Vec::new();
    if let Some((gw, gm)) = grams {
        panels_w.push(("last measurement", norm(gw.as_ref())));
        panels_m.push(("last measurement", norm(gm.as_ref())));
    }
    panels_w.push(("SELI", norm(run.geometry.gram_w())));
    panels_w.push(("ETF", norm(P.as_ref())));
    panels_m.push(("SELI", norm(run.geometry.gram_m())));
    panels_m.push(("ETF", norm(P.as_ref())));
    Ok(vec![
        Figure {
            name: "gram-w".into(),
            caption: "Normalized classifier Gram W^T W: the run's (when its checkpoint holds W) beside the SELI and ETF targets.".into(),
            svg: heatmaps("Classifier Gram W^T W (normalized)", &panels_w)?,
        },
        Figure {
            name: "gram-m".into(),
            caption: format!(
                "Normalized class-mean Gram M^T M ({means}) beside the SELI and ETF targets."
            ),
            svg: heatmaps("Class-mean Gram M^T M (normalized)", &panels_m)?,
        },
    ])
}

/// Figures overlaying several runs: G_W and G_M distances to SELI (solid) and ETF (dashed).
///
/// # Errors
/// Runs of different kinds; a drawing failure.
pub fn compare_figures(runs: &[Run]) -> Result<Vec<Figure>, String> {
    let first = runs.first().ok_or("no run to compare")?;
    if runs.iter().any(|r| r.kind != first.kind) {
        return Err("--compare needs runs of one kind (all ufm or all train)".into());
    }
    let (_, x_label, log_x) = first.x();
    let mut out = Vec::new();
    for (name, m) in [("G_W", "gw"), ("G_M", first.kind.means().0)] {
        let series: Vec<Series> = runs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                [
                    Series {
                        label: format!("{} to SELI", r.label()),
                        points: r.curve(&format!("dist_{m}_seli")),
                        color: i,
                        dash: Dash::Solid,
                        band: Vec::new(),
                    },
                    Series {
                        label: format!("{} to ETF", r.label()),
                        points: r.curve(&format!("dist_{m}_etf")),
                        color: i,
                        dash: Dash::Dashed,
                        band: Vec::new(),
                    },
                ]
            })
            .collect();
        out.push(Figure {
            name: format!("compare-{m}"),
            caption: format!(
                "{name}: distance to SELI (solid) and to the ETF (dashed), one colour per run."
            ),
            svg: line_chart(
                &format!("{name}: SELI (solid) vs ETF (dashed)"),
                x_label,
                "normalized distance",
                log_x,
                &series,
                &[],
            )?,
        });
    }
    Ok(out)
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn last_row_table(run: &Run) -> String {
    let mut t = String::from("<table><tr><th>column</th><th>last value</th></tr>");
    if let Some(r) = run.rows.last() {
        for (h, v) in run.header.iter().zip(r) {
            let v = v.map_or("–".to_string(), seli_run::report::num);
            let _ = write!(t, "<tr><td>{}</td><td>{}</td></tr>", escape(h), v);
        }
    }
    t.push_str("</table>");
    t
}

/// A figure inlined in HTML, with its caption.
pub(crate) fn figure_html(f: &Figure) -> String {
    format!(
        "<figure id=\"{}\">{}<figcaption>{}</figcaption></figure>\n",
        escape(&f.name),
        f.svg.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").trim(),
        escape(&f.caption)
    )
}

/// The head of a report page, through its title.
pub(crate) fn html_head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         figure{{margin:1.5em 0}}figcaption{{color:#555}}table{{border-collapse:collapse;font-size:0.9em}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\
         </head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    )
}

/// A self-contained HTML page: title, figures inlined, the last metrics of each run, and each
/// run's config.
pub fn html(title: &str, runs: &[Run], figures: &[Figure]) -> String {
    let mut h = html_head(title);
    for run in runs {
        let g = &run.geometry;
        let _ = writeln!(
            h,
            "<p><b>{}</b>: {}, k = {}, n = {}; SELI vs ETF: G_W {:.4}, G_M {:.4}.</p>",
            escape(&run.dir.display().to_string()),
            run.description(),
            g.k(),
            g.profile().n(),
            g.dist_gram_w_etf(),
            g.dist_gram_m_etf()
        );
    }
    h.push_str("<h2>Figures</h2>\n");
    for f in figures {
        h.push_str(&figure_html(f));
    }
    for run in runs {
        let _ = write!(
            h,
            "<h2>{}</h2>\n<h3>Last metrics</h3>\n{}\n",
            escape(&run.label()),
            last_row_table(run)
        );
        if let Some(s) = &run.summary {
            let _ = writeln!(
                h,
                "<h3>summary.json</h3><pre>{}</pre>",
                escape(&serde_json::to_string_pretty(s).unwrap_or_default())
            );
        }
        let _ = writeln!(
            h,
            "<h3>config.json</h3><pre>{}</pre>",
            escape(&serde_json::to_string_pretty(&run.config.to_json()).unwrap_or_default())
        );
    }
    h.push_str("</body></html>\n");
    h
}

fn write_figures(dir: &Path, figures: &[Figure]) -> Result<(), String> {
    save_figures(&dir.join("figures"), figures).map(|_| ())
}

/// Writes `DIR/figures/*.svg` and `DIR/report.html` for the run in `dir`; returns the report's
/// path.
///
/// # Errors
/// Unreadable run files; a drawing or write failure.
pub fn write_report(dir: &Path) -> Result<PathBuf, String> {
    let run = Run::load(dir)?;
    let figs = figures(&run)?;
    write_figures(dir, &figs)?;
    let path = dir.join("report.html");
    let title = format!("seli report: {}", run.label());
    seli_io::write_atomic(&path, html(&title, std::slice::from_ref(&run), &figs).as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// Writes a comparison of the runs in `dirs` to `out` (HTML) and its figures beside it.
///
/// # Errors
/// Unreadable runs, runs of different kinds, drawing or write failures.
pub fn write_compare(dirs: &[PathBuf], out: &Path) -> Result<PathBuf, String> {
    let runs = dirs.iter().map(|d| Run::load(d)).collect::<Result<Vec<_>, _>>()?;
    let figs = compare_figures(&runs)?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    write_figures(parent, &figs)?;
    seli_io::write_atomic(out, html("seli report: comparison", &runs, &figs).as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(out.to_path_buf())
}

/// Figures of a `seli ridge-path` record (its JSON): distances to SELI and to the ETF against
/// lambda, and the classifier norm ratio and cosines by group, with the thresholds lambda*
/// (the optimum is 0 above it) and lambda_mc (minority collapse above it) marked.
///
/// # Errors
/// A record without points; a drawing failure.
pub fn ridge_path_figures(record: &RidgePathRecord) -> Result<Vec<Figure>, String> {
    if record.points.is_empty() {
        return Err("the ridge-path record has no points".into());
    }
    type Field = fn(&RidgePoint) -> Option<f64>;
    let curve = |f: Field| -> Vec<(f64, f64)> {
        record.points.iter().filter_map(|p| Some((p.lambda, f(p)?))).collect()
    };
    let th = &record.thresholds;
    let mut markers: Vec<(f64, &str)> = vec![(th.lambda_star, "λ*")];
    if let Some(l) = th.lambda_mc {
        markers.push((l, "λ_mc"));
    }
    let s = |label: &str, f: Field, color: usize, dash: Dash| Series {
        label: label.into(),
        points: curve(f),
        color,
        dash,
        band: Vec::new(),
    };
    let figure = |name: &str, caption: &str, title: &str, y: &str, series: &[Series]| {
        line_figure(name, caption, title, ("lambda", y, true), series, &markers)
    };
    Ok(vec![
        figure(
            "ridge-distances",
            "Exact ridge optimum: distances to SELI (solid) and to the ETF (dashed) against lambda; SELI is reached as lambda -> 0.",
            "Ridge optimum: distance to SELI (solid) and ETF (dashed)",
            "normalized distance",
            &[
                s("G_W to SELI", |p| p.dist_gw_seli, 0, Dash::Solid),
                s("G_W to ETF", |p| p.dist_gw_etf, 0, Dash::Dashed),
                s("G_M to SELI", |p| p.dist_gm_seli, 1, Dash::Solid),
                s("G_M to ETF", |p| p.dist_gm_etf, 1, Dash::Dashed),
            ],
        )?,
        figure(
            "ridge-cosines",
            "Classifier cosines by group along the path; minority classifiers collapse onto each other (cosine 1) above lambda_mc.",
            "Ridge optimum: classifier cosines by group",
            "mean cos(w_c, w_c')",
            &[
                s("min-min", |p| p.cos_w_min_min, 1, Dash::Solid),
                s("maj-maj", |p| p.cos_w_maj_maj, 0, Dash::Solid),
                s("maj-min", |p| p.cos_w_maj_min, 2, Dash::Solid),
            ],
        )?,
        figure(
            "ridge-norm-ratio",
            "Classifier norm ratio along the path (omitted where minority classifiers vanish, above lambda_mc).",
            "Ridge optimum: ||w_maj||^2 / ||w_min||^2",
            "ratio",
            &[Series {
                label: "norm ratio".into(),
                points: curve(|p| p.norm_ratio_w).into_iter().filter(|&(_, v)| v < 1e6).collect(),
                color: 0,
                dash: Dash::Solid,
                band: Vec::new(),
            }],
        )?,
    ])
}

/// Figures of a class-level geometry: the normalized SELI Grams beside the ETF, and, for a
/// STEP profile, the SELI classifier cosines and norm ratio against the imbalance ratio R
/// (k, rho and n_min fixed; R from 1 to 1000).
///
/// # Errors
/// A drawing failure.
pub fn geometry_figures(geometry: &Geometry) -> Result<Vec<Figure>, String> {
    let k = geometry.k();
    let P = centering_projector(k);
    let norm = |m: faer::MatRef<'_, f64>| {
        normalized(m, "gram").map(|x| rows_of(x.as_ref())).unwrap_or_default()
    };
    let mut out = vec![Figure {
        name: "seli-grams".into(),
        caption:
            "Normalized SELI Grams of this profile beside the ETF (blue negative, red positive)."
                .into(),
        svg: heatmaps(
            "SELI geometry (normalized Grams)",
            &[
                ("SELI G_W", norm(geometry.gram_w())),
                ("SELI G_M", norm(geometry.gram_m())),
                ("ETF", norm(P.as_ref())),
            ],
        )?,
    }];
    let p = geometry.profile();
    if let seli_core::ProfileKind::Step { rho, n_min, .. } = p.kind() {
        let mut pts: [Vec<(f64, f64)>; 4] = Default::default();
        // The normalized geometry depends on the ratio only: use 1000 samples per minority
        // class so that every R on the grid is realized (to 1e-3).
        let k_min = p
            .groups()
            .map_or(0, |g| g.iter().filter(|&&x| x == seli_core::Group::Minority).count());
        for i in 0..=30 {
            let n_maj = (10f64.powf(f64::from(i) / 10.0) * 1000.0).round() as u64;
            let r = n_maj as f64 / 1000.0;
            let counts: Vec<u64> =
                (0..k).map(|c| if c < k - k_min { n_maj } else { 1000 }).collect();
            let Ok(q) = Profile::from_counts(counts) else { continue };
            let Ok(g) = Geometry::new(&q) else { continue };
            let Some(b) = g.stats().by_group else { continue };
            for (j, v) in [b.cos_w.maj_maj, b.cos_w.min_min, b.cos_w.maj_min, b.norm_ratio_w]
                .into_iter()
                .enumerate()
            {
                if let Some(v) = v {
                    pts[j].push((r, v));
                }
            }
        }
        let names = ["cos maj-maj", "cos min-min", "cos maj-min", "||w_maj||^2/||w_min||^2"];
        let mut series: Vec<Series> = pts
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(i, (points, label))| Series {
                label: label.into(),
                points,
                color: i,
                dash: Dash::Solid,
                band: Vec::new(),
            })
            .collect();
        let ratio = series.pop().expect("four series");
        let what = format!("STEP(k = {k}, rho = {rho}, n_min = {n_min})");
        out.push(Figure {
            name: "seli-cosines-vs-ratio".into(),
            caption: format!("SELI classifier cosines by group of {what} against the imbalance ratio R; at R = 1 every cosine is the ETF's -1/(k-1)."),
            svg: line_chart("SELI classifier cosines against R", "R", "mean cos(w_c, w_c')", true, &series, &[])?,
        });
        out.push(Figure {
            name: "seli-norm-ratio-vs-ratio".into(),
            caption: format!(
                "SELI classifier norm ratio of {what} against R (1 at R = 1, the ETF)."
            ),
            svg: line_chart(
                "SELI ||w_maj||^2 / ||w_min||^2 against R",
                "R",
                "ratio",
                true,
                &[ratio],
                &[],
            )?,
        });
    }
    Ok(out)
}

/// Writes figures to `DIR/NAME.svg` and `DIR/NAME.png` (at twice the SVG's size; the PNG is
/// skipped, with a warning, when no system font is installed to draw its text); returns the
/// SVG paths.
///
/// # Errors
/// A write or rendering failure.
pub fn save_figures(dir: &Path, figures: &[Figure]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let png = crate::png::fonts_available();
    if !png {
        eprintln!("warning: no system fonts found; writing SVG figures only (no PNG)");
    }
    figures
        .iter()
        .map(|f| {
            let p = dir.join(format!("{}.svg", f.name));
            seli_io::write_atomic(&p, f.svg.as_bytes()).map_err(|e| e.to_string())?;
            if png {
                let bytes = crate::png::svg_to_png(&f.svg, 2.0)?;
                seli_io::write_atomic(&p.with_extension("png"), &bytes)
                    .map_err(|e| e.to_string())?;
            }
            Ok(p)
        })
        .collect()
}
