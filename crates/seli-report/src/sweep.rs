//! The report of a `seli sweep`: its key results against the swept parameter (one line per
//! combination of the other parameters, seeds averaged), the comparison figures of its runs
//! (UFM and training sweeps), and the results table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seli_io::csv::Table;
use seli_run::sweep::SweepSpec;

use crate::figures::{Band, Dash, Series, line_chart, line_panels};
use crate::report::{Figure, Run, compare_figures, escape, figure_html, html_head, save_figures};

/// Most lines in one sweep figure (the palette's size).
pub const MAX_SERIES: usize = 8;

/// Most runs overlaid in the comparison figures of a UFM or training sweep (two legend entries
/// each; more would cover the curves: `seli report --compare` draws any chosen subset).
pub const MAX_COMPARE: usize = 4;

fn column(table: &Table, name: &str) -> Option<usize> {
    table.header.iter().position(|h| h == name)
}

fn numbers(table: &Table, c: usize) -> Option<Vec<f64>> {
    table.rows.iter().map(|r| r[c].parse::<f64>().ok()).collect()
}

/// The swept parameter on the x axis: of the varying keys (seeds aside) whose values are all
/// numbers, the one with the most distinct values (the first of equals); `None` when no such
/// key takes two values.
pub fn x_key(varying: &[String], table: &Table) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for k in varying.iter().filter(|k| *k != "seed") {
        let Some(mut xs) = column(table, k).and_then(|c| numbers(table, c)) else { continue };
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        if xs.len() > 1 && best.is_none_or(|(n, _)| xs.len() > n) {
            best = Some((xs.len(), k));
        }
    }
    best.map(|(_, k)| k.clone())
}

/// The points of a sweep's table grouped for plotting against its swept parameter.
struct Grouped<'a> {
    table: &'a Table,
    /// The swept parameter.
    x: String,
    /// Its value in each row.
    xs: Vec<f64>,
    /// The columns of the other varying parameters (seeds aside).
    others: Vec<usize>,
    /// The distinct combinations of the other parameters, in table order.
    groups: Vec<String>,
    /// Whether seeds vary (rows with one group and one x are averaged).
    seeds: bool,
    log_x: bool,
}

impl<'a> Grouped<'a> {
    fn new(spec: &SweepSpec, table: &'a Table) -> Result<Option<Self>, String> {
        let Some(x) = x_key(&spec.varying, table) else { return Ok(None) };
        let xc = column(table, &x).ok_or("x column missing")?;
        let xs = numbers(table, xc).ok_or("x column not numeric")?;
        let others: Vec<usize> = spec
            .varying
            .iter()
            .filter(|k| **k != x && *k != "seed")
            .filter_map(|k| column(table, k))
            .collect();
        let (lo, hi) =
            xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let mut g = Grouped {
            table,
            x,
            log_x: lo > 0.0 && hi / lo >= 50.0,
            xs,
            others,
            groups: Vec::new(),
            seeds: spec.varying.iter().any(|k| k == "seed"),
        };
        for r in &table.rows {
            let name = g.group_of(r);
            if !g.groups.contains(&name) {
                g.groups.push(name);
            }
        }
        Ok(Some(g))
    }

    fn group_of(&self, r: &[String]) -> String {
        self.others
            .iter()
            .map(|&c| format!("{}={}", self.table.header[c], r[c]))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Column `yc` of the rows of group `g` against x: the mean over seeds at each x, and
    /// the band from the smallest to the largest seed's value (empty when no x has two).
    fn curve(&self, g: &str, yc: usize) -> (Vec<(f64, f64)>, Band) {
        let mut acc: Vec<(f64, Vec<f64>)> = Vec::new();
        for (r, &xv) in self.table.rows.iter().zip(&self.xs) {
            let Ok(y) = r[yc].parse::<f64>() else { continue };
            if self.group_of(r) != g || !y.is_finite() {
                continue;
            }
            match acc.iter_mut().find(|(a, _)| *a == xv) {
                Some(e) => e.1.push(y),
                None => acc.push((xv, vec![y])),
            }
        }
        acc.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mean = acc.iter().map(|(x, v)| (*x, v.iter().sum::<f64>() / v.len() as f64)).collect();
        let spread = acc.iter().any(|(_, v)| v.len() > 1);
        let band = if spread {
            acc.iter()
                .map(|(x, v)| {
                    let (lo, hi) =
                        v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                            (a.min(y), b.max(y))
                        });
                    (*x, lo, hi)
                })
                .collect()
        } else {
            Vec::new()
        };
        (mean, band)
    }

    /// The caption's note on seeds and on groups left out of `shown`.
    fn note(&self, shown: usize) -> String {
        let mut n = String::new();
        if self.seeds {
            n.push_str("; lines: mean over seeds, bands: smallest to largest seed");
        }
        if self.groups.len() > shown {
            let _ =
                write!(n, "; the first {shown} of {} parameter combinations", self.groups.len());
        }
        n
    }
}

/// Names a distance quantity by its column's stem (`dist_gw`, `last_dist_gmc`).
fn quantity(stem: &str) -> String {
    let (last, core) = match stem.strip_prefix("last_") {
        Some(c) => (" (last)", c),
        None => ("", stem),
    };
    let name = match core {
        "dist_gw" => "G_W".to_string(),
        "dist_gm" => "G_M".to_string(),
        "dist_gmc" => "G_M (centered)".to_string(),
        other => other.to_string(),
    };
    format!("{name}{last}")
}

/// The stems of the command's key results that have both a distance to SELI (`STEM_seli`)
/// and one to the ETF (`STEM_etf`) in the table.
fn distance_stems(spec: &SweepSpec, table: &Table) -> Vec<String> {
    spec.command
        .key_results()
        .iter()
        .filter_map(|k| k.strip_suffix("_seli"))
        .filter(|stem| column(table, &format!("{stem}_etf")).is_some())
        .map(str::to_string)
        .collect()
}

/// One figure per key result against the swept parameter, and one with the distances to SELI
/// and to the ETF side by side on one scale; empty when no parameter is numeric. Where seeds
/// vary, lines are their mean and bands their spread.
///
/// # Errors
/// A drawing failure.
pub fn sweep_figures(spec: &SweepSpec, table: &Table) -> Result<Vec<Figure>, String> {
    let Some(g) = Grouped::new(spec, table)? else {
        return Ok(Vec::new());
    };
    let x = &g.x;
    let mut out = Vec::new();
    let stems = distance_stems(spec, table);
    if !stems.is_empty() {
        let shown = g.groups.len().min(MAX_SERIES / stems.len());
        let panel = |target: &str| -> Vec<Series> {
            let mut v = Vec::new();
            for (i, grp) in g.groups[..shown].iter().enumerate() {
                for (q, stem) in stems.iter().enumerate() {
                    let Some(yc) = column(table, &format!("{stem}_{target}")) else { continue };
                    let (points, band) = g.curve(grp, yc);
                    let label = if grp.is_empty() {
                        quantity(stem)
                    } else {
                        format!("{}, {grp}", quantity(stem))
                    };
                    let dash = if q == 0 { Dash::Solid } else { Dash::Dashed };
                    let color = if shown > 1 { i } else { q };
                    v.push(Series { label, points, color, dash, band });
                }
            }
            v
        };
        let panels = [("to SELI", panel("seli")), ("to the ETF", panel("etf"))];
        if panels.iter().any(|(_, s)| s.iter().any(|s| !s.points.is_empty())) {
            out.push(Figure {
                name: "sweep-distances".into(),
                caption: format!(
                    "Normalized distances to SELI (left) and to the ETF (right) against {x}, on one scale{}.",
                    g.note(shown)
                ),
                svg: line_panels(
                    &format!("Distance to SELI and to the ETF against {x}"),
                    (x, "normalized distance", g.log_x),
                    &panels,
                )?,
            });
        }
    }
    let shown = g.groups.len().min(MAX_SERIES);
    for metric in spec.command.key_results() {
        let Some(yc) = column(table, metric) else { continue };
        let series: Vec<Series> = g.groups[..shown]
            .iter()
            .enumerate()
            .map(|(i, grp)| {
                let (points, band) = g.curve(grp, yc);
                let label = if grp.is_empty() { (*metric).to_string() } else { grp.clone() };
                Series { label, points, color: i, dash: Dash::Solid, band }
            })
            .collect();
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        out.push(Figure {
            name: format!("sweep-{metric}"),
            caption: format!("{metric} against {x}{}.", g.note(shown)),
            svg: line_chart(&format!("{metric} vs {x}"), x, metric, g.log_x, &series, &[])?,
        });
    }
    Ok(out)
}

/// Points of the theory curves of [`theory_figures`].
pub const THEORY_POINTS: usize = 61;

/// For a UFM sweep over γ of a loss with `Δ` (cdt, ldt, vs) and nothing else varying but seeds:
/// the certified targets' group cosines (classifiers and class means side by side) and norm
/// ratios on a fine grid of γ, with the runs' end points on top (docs/theory.md §10). The
/// profile and loss come from the first run's config.json; empty when the sweep is of another
/// kind.
///
/// # Errors
/// A run directory that cannot be read; a target that cannot be solved; a drawing failure.
pub fn theory_figures(
    spec: &SweepSpec,
    table: &Table,
    dirs: &[PathBuf],
) -> Result<Vec<Figure>, String> {
    let Some(g) = Grouped::new(spec, table)? else { return Ok(Vec::new()) };
    if spec.command != seli_run::Command::Ufm || g.x != "gamma" || g.groups.len() != 1 {
        return Ok(Vec::new());
    }
    let Some(first) = dirs.first() else { return Ok(Vec::new()) };
    let run = Run::load(first)?;
    let seli_run::RunConfig::Ufm(cfg) = &run.config else { return Ok(Vec::new()) };
    let loss = cfg.solver_config().loss().map_err(|e| e.to_string())?;
    let profile = run.geometry.profile().clone();
    if !loss.kind.scales() || profile.groups().is_none() {
        return Ok(Vec::new());
    }
    let (lo, hi) =
        g.xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    // Theory: [cos_w maj-maj, min-min, maj-min, cos_m ..., norm ratio w, m] against γ.
    let mut theory: [Vec<(f64, f64)>; 8] = Default::default();
    for i in 0..THEORY_POINTS {
        let gamma = lo + (hi - lo) * i as f64 / (THEORY_POINTS - 1) as f64;
        let l = seli_core::Loss { gamma, ..loss };
        let t = seli_core::Target::certified(&profile, l).map_err(|e| e.to_string())?;
        let Some(b) = t.stats().map_err(|e| e.to_string())?.by_group else { continue };
        let vals = [
            b.cos_w.maj_maj,
            b.cos_w.min_min,
            b.cos_w.maj_min,
            b.cos_m.maj_maj,
            b.cos_m.min_min,
            b.cos_m.maj_min,
            b.norm_ratio_w,
            b.norm_ratio_m,
        ];
        for (curve, v) in theory.iter_mut().zip(vals) {
            if let Some(v) = v {
                curve.push((gamma, v));
            }
        }
    }
    let grp = &g.groups[0];
    let measured = |col: &str| column(table, col).map(|c| g.curve(grp, c)).unwrap_or_default();
    let pairs = [("maj-maj", "maj_maj"), ("min-min", "min_min"), ("maj-min", "maj_min")];
    let panel = |offset: usize, prefix: &str| -> Vec<Series> {
        let mut v = Vec::new();
        for (i, (name, key)) in pairs.iter().enumerate() {
            v.push(Series::new(
                format!("{name} (target)"),
                theory[offset + i].clone(),
                i,
                Dash::Solid,
            ));
            let (points, band) = measured(&format!("{prefix}_{key}"));
            v.push(Series {
                band,
                ..Series::new(format!("{name} (UFM)"), points, i, Dash::Points)
            });
        }
        v
    };
    let what = format!("{} on {:?}", loss.kind, profile.counts());
    let seeds = if g.seeds { ", mean over seeds (bands: their range)" } else { "" };
    let cosines = Figure {
        name: "sweep-theory-cosines".into(),
        caption: format!(
            "Group cosines of the certified {what} targets against gamma (lines; classifiers left, raw class means right) and of the UFM runs' last iterates (points{seeds})."
        ),
        svg: line_panels(
            &format!("Cosines by group against gamma: {} targets and UFM runs", loss.kind),
            ("gamma", "mean cosine", false),
            &[("classifiers w", panel(0, "cos_w")), ("class means mu", panel(3, "cos_mu"))],
        )?,
    };
    let mut ratio = Vec::new();
    for (i, (name, col, t)) in [
        ("||w_maj||^2/||w_min||^2", "norm_ratio_w", 6),
        ("||mu_maj||^2/||mu_min||^2", "norm_ratio_mu", 7),
    ]
    .into_iter()
    .enumerate()
    {
        ratio.push(Series::new(format!("{name} (target)"), theory[t].clone(), i, Dash::Solid));
        let (points, band) = measured(col);
        ratio
            .push(Series { band, ..Series::new(format!("{name} (UFM)"), points, i, Dash::Points) });
    }
    let ratios = Figure {
        name: "sweep-theory-norm-ratios".into(),
        caption: format!(
            "Norm ratios of the certified {what} targets against gamma (lines) and of the UFM runs' last iterates (points{seeds})."
        ),
        svg: line_chart("Norm ratios against gamma", "gamma", "ratio", false, &ratio, &[])?,
    };
    Ok(vec![cosines, ratios])
}

fn table_html(table: &Table, max_rows: usize) -> String {
    let mut h = String::from("<table><tr>");
    for c in &table.header {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr>\n");
    for r in table.rows.iter().take(max_rows) {
        h.push_str("<tr>");
        for c in r {
            let cell = c.parse::<f64>().ok().filter(|_| c.contains('.') || c.contains('e'));
            let text = cell.map_or_else(|| c.clone(), seli_run::report::num);
            let _ = write!(h, "<td>{}</td>", escape(&text));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    if table.rows.len() > max_rows {
        let _ = writeln!(
            h,
            "<p>The first {max_rows} of {} rows; all are in results.csv.</p>",
            table.rows.len()
        );
    }
    h
}

/// Writes `html` (the sweep's report) and its figures in `figures/` beside it; `dirs` are the
/// directories of the points in `table`, in its order.
///
/// # Errors
/// A drawing or write failure.
pub fn write_sweep_report(
    html: &Path,
    spec: &SweepSpec,
    table: &Table,
    dirs: &[PathBuf],
) -> Result<PathBuf, String> {
    let mut figs = theory_figures(spec, table, dirs)?;
    figs.extend(sweep_figures(spec, table)?);
    if spec.command.has_run_dir() && (2..=MAX_COMPARE).contains(&dirs.len()) {
        let runs = dirs.iter().map(|d| Run::load(d)).collect::<Result<Vec<_>, _>>()?;
        figs.extend(compare_figures(&runs)?);
    }
    let parent = html.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    save_figures(&parent.join("figures"), &figs)?;
    let mut h = html_head(&format!("seli sweep: {} points of {}", spec.points.len(), spec.command));
    let _ = writeln!(
        h,
        "<p>{} of {} points complete; varying: {}. Each point's files are in points/NAME/ \
         (point.json holds its flags and the equivalent command line).</p>",
        table.rows.len(),
        spec.points.len(),
        escape(&spec.varying.join(", "))
    );
    if !figs.is_empty() {
        h.push_str("<h2>Figures</h2>\n");
        for f in &figs {
            h.push_str(&figure_html(f));
        }
    }
    h.push_str("<h2>Results</h2>\n");
    h.push_str(&table_html(table, 2000));
    h.push_str("</body></html>\n");
    seli_io::write_atomic(html, h.as_bytes()).map_err(|e| e.to_string())?;
    Ok(html.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seli_run::sweep::Point;

    fn table(rows: &[[&str; 4]]) -> Table {
        Table {
            header: ["point", "ratio", "seed", "dist_gw_seli_etf"].map(String::from).to_vec(),
            rows: rows.iter().map(|r| r.map(String::from).to_vec()).collect(),
        }
    }

    #[test]
    fn sweep_figures_average_seeds_against_the_swept_key() {
        let spec = SweepSpec {
            command: seli_run::Command::Geometry,
            jobs: None,
            varying: vec!["ratio".into(), "seed".into()],
            points: Vec::<Point>::new(),
        };
        let t = table(&[
            ["a", "1", "0", "0"],
            ["b", "1", "1", "0.2"],
            ["c", "100", "0", "0.4"],
            ["d", "100", "1", "0.6"],
        ]);
        assert_eq!(x_key(&spec.varying, &t).as_deref(), Some("ratio"));
        let figs = sweep_figures(&spec, &t).unwrap();
        // Geometry sweeps have no distance to SELI: one figure, its seeds' mean and spread.
        assert_eq!(figs.len(), 1);
        assert!(figs[0].caption.contains("mean over seeds"), "{}", figs[0].caption);
        usvg_check(&figs[0].svg);
        // Only seeds vary: nothing to plot against.
        let spec2 = SweepSpec { varying: vec!["seed".into()], ..spec };
        assert!(sweep_figures(&spec2, &t).unwrap().is_empty());
    }

    /// A UFM sweep over ratio, rho and seed: the distances figure has the two panels, one line
    /// per quantity and rho, the seeds' mean as the line and their range as the band.
    #[test]
    fn sweep_distances_side_by_side_with_seed_bands() {
        let header = [
            "point",
            "ratio",
            "rho",
            "seed",
            "dist_gw_seli",
            "dist_gw_etf",
            "dist_gm_seli",
            "dist_gm_etf",
        ];
        let mut rows = Vec::new();
        for (r, ratio) in [1.0, 10.0, 100.0].iter().enumerate() {
            for rho in ["0.2", "0.5"] {
                for seed in 0..3 {
                    let v = |q: f64| format!("{}", q * (r as f64 + 1.0) + 0.01 * f64::from(seed));
                    rows.push(vec![
                        format!("p{r}{rho}{seed}"),
                        ratio.to_string(),
                        rho.into(),
                        seed.to_string(),
                        v(0.1),
                        v(0.2),
                        v(0.3),
                        v(0.4),
                    ]);
                }
            }
        }
        let t = Table { header: header.map(String::from).to_vec(), rows };
        let spec = SweepSpec {
            command: seli_run::Command::Ufm,
            jobs: None,
            varying: vec!["ratio".into(), "rho".into(), "seed".into()],
            points: Vec::<Point>::new(),
        };
        let g = Grouped::new(&spec, &t).unwrap().unwrap();
        assert_eq!(g.x, "ratio");
        assert_eq!(g.groups, ["rho=0.2", "rho=0.5"]);
        let (mean, band) = g.curve("rho=0.5", 6);
        // dist_gm_seli at ratio 10: 0.6 + 0.01 * seed over seeds 0, 1, 2.
        assert!(
            (mean[1].1 - 0.61).abs() < 1e-12
                && (band[1].1 - 0.6).abs() < 1e-12
                && (band[1].2 - 0.62).abs() < 1e-12
        );
        let figs = sweep_figures(&spec, &t).unwrap();
        assert_eq!(figs[0].name, "sweep-distances");
        assert!(figs[0].caption.contains("bands: smallest to largest seed"));
        let els = crate::svgcheck::elements(&figs[0].svg);
        for title in ["to SELI", "to the ETF"] {
            assert!(els.iter().any(|e| e.tag == "text" && e.text == title));
        }
        // Two quantities (G_W, G_M) x two rho values x two panels.
        assert_eq!(els.iter().filter(|e| e.tag == "polygon").count(), 8);
        assert!(els.iter().any(|e| e.tag == "text" && e.text == "G_M, rho=0.5"));
        assert_eq!(crate::svgcheck::legend_overlaps(&figs[0].svg).unwrap().1, 0);
        // One seed per point: lines without bands.
        let spec1 = SweepSpec { varying: vec!["ratio".into(), "rho".into()], ..spec };
        let t1 = Table {
            header: t.header.clone(),
            rows: t.rows.iter().filter(|r| r[3] == "0").cloned().collect(),
        };
        let figs = sweep_figures(&spec1, &t1).unwrap();
        assert!(!figs[0].svg.contains("<polygon") && !figs[0].caption.contains("seed"));
    }

    fn usvg_check(svg: &str) {
        assert!(svg.contains("<svg") && svg.contains("ratio"));
    }
}
