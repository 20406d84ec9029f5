//! The report of a `seli sweep`: its key results against the swept parameter (one line per
//! combination of the other parameters, seeds averaged), the comparison figures of its runs
//! (UFM and training sweeps), and the results table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seli_io::csv::Table;
use seli_run::sweep::SweepSpec;

use crate::figures::{Dash, Series, line_chart};
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

/// One figure per key result against the swept parameter; empty when no parameter is
/// numeric.
///
/// # Errors
/// A drawing failure.
pub fn sweep_figures(spec: &SweepSpec, table: &Table) -> Result<Vec<Figure>, String> {
    let Some(x) = x_key(&spec.varying, table) else {
        return Ok(Vec::new());
    };
    let xc = column(table, &x).ok_or("x column missing")?;
    let xs = numbers(table, xc).ok_or("x column not numeric")?;
    let others: Vec<usize> = spec
        .varying
        .iter()
        .filter(|k| **k != x && *k != "seed")
        .filter_map(|k| column(table, k))
        .collect();
    let group_of = |r: &Vec<String>| {
        others
            .iter()
            .map(|&c| format!("{}={}", table.header[c], r[c]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut groups: Vec<String> = Vec::new();
    for r in &table.rows {
        let g = group_of(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let shown = groups.len().min(MAX_SERIES);
    let positive = xs.iter().all(|&v| v > 0.0);
    let (lo, hi) =
        xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let log_x = positive && hi / lo >= 50.0;
    let seeds = spec.varying.iter().any(|k| k == "seed");
    let mut out = Vec::new();
    for metric in spec.command.key_results() {
        let Some(yc) = column(table, metric) else { continue };
        let series: Vec<Series> = groups[..shown]
            .iter()
            .enumerate()
            .map(|(i, g)| {
                // Mean over rows with the same group and x (the seeds).
                let mut acc: Vec<(f64, f64, usize)> = Vec::new();
                for (r, &xv) in table.rows.iter().zip(&xs) {
                    let Ok(y) = r[yc].parse::<f64>() else { continue };
                    if group_of(r) != *g || !y.is_finite() {
                        continue;
                    }
                    match acc.iter_mut().find(|(a, _, _)| *a == xv) {
                        Some(e) => {
                            e.1 += y;
                            e.2 += 1;
                        }
                        None => acc.push((xv, y, 1)),
                    }
                }
                let mut points: Vec<(f64, f64)> =
                    acc.into_iter().map(|(a, s, n)| (a, s / n as f64)).collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: if g.is_empty() { (*metric).to_string() } else { g.clone() },
                    points,
                    color: i,
                    dash: Dash::Solid,
                }
            })
            .collect();
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let mut caption = format!("{metric} against {x}");
        if seeds {
            caption.push_str(", averaged over seeds");
        }
        if groups.len() > shown {
            let _ = write!(caption, "; the first {shown} of {} lines", groups.len());
        }
        caption.push('.');
        out.push(Figure {
            name: format!("sweep-{metric}"),
            caption,
            svg: line_chart(&format!("{metric} vs {x}"), &x, metric, log_x, &series, &[])?,
        });
    }
    Ok(out)
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
    let mut figs = sweep_figures(spec, table)?;
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
        assert_eq!(figs.len(), 1);
        assert!(figs[0].caption.contains("averaged over seeds"));
        usvg_check(&figs[0].svg);
        // Only seeds vary: nothing to plot against.
        let spec2 = SweepSpec { varying: vec!["seed".into()], ..spec };
        assert!(sweep_figures(&spec2, &t).unwrap().is_empty());
    }

    fn usvg_check(svg: &str) {
        assert!(svg.contains("<svg") && svg.contains("ratio"));
    }
}
