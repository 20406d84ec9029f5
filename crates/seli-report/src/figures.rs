//! SVG figures drawn with plotters: line charts (linear or log x), heatmaps of k×k matrices
//! side by side, and grouped bar charts. Each function returns a complete SVG document.

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

/// Figure size in pixels (a paper column at 2x).
pub const SIZE: (u32, u32) = (720, 440);

/// Line style of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dash {
    /// Solid line (SELI targets).
    Solid,
    /// Dashed line (ETF targets).
    Dashed,
}

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
    /// Palette index.
    pub color: usize,
    /// Solid or dashed.
    pub dash: Dash,
}

/// A colour-blind-safe palette (Okabe–Ito).
pub fn color(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (230, 159, 0),
        (0, 158, 115),
        (204, 121, 167),
        (86, 180, 233),
        (213, 94, 0),
        (240, 228, 66),
        (0, 0, 0),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing failed: {e}")
}

/// Draws the legend box of a chart's labelled series (upper right).
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)
}

/// An axis tick: whole numbers without a decimal point ("1000", not "1000."), very large or
/// small ones in exponent form, others in the shortest form.
pub fn tick(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{x:e}")
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A line chart. With `log_x`, points with x <= 0 are dropped.
///
/// # Errors
/// No finite point to draw; a drawing failure.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
    markers: &[(f64, &str)],
) -> Result<String, String> {
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_x || x > 0.0);
    let pts: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied().filter(keep)).collect();
    if pts.is_empty() {
        return Err(format!("{title}: nothing to plot"));
    }
    let (mut x0, mut x1) =
        pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) =
        pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    for (m, _) in markers {
        if m.is_finite() && (!log_x || *m > 0.0) {
            x0 = x0.min(*m);
            x1 = x1.max(*m);
        }
    }
    if x1 <= x0 {
        x1 = if log_x { x0 * 10.0 } else { x0 + 1.0 };
    }
    let pad = 0.05 * (y1 - y0).max(1e-12);
    y0 = (y0 - pad).min(0.0_f64.max(y0 - pad));
    y1 += pad;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .margin_right(30)
            .x_label_area_size(48)
            .y_label_area_size(64);
        macro_rules! finish {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_label_formatter(&|x| tick(*x))
                    .x_desc(x_label)
                    .y_desc(y_label)
                    .label_style(("sans-serif", 15))
                    .axis_desc_style(("sans-serif", 17))
                    .light_line_style(WHITE.mix(0.0))
                    .draw()
                    .map_err(err)?;
                for (m, name) in markers {
                    if m.is_finite() && (!log_x || *m > 0.0) {
                        chart
                            .draw_series(DashedLineSeries::new(
                                vec![(*m, y0), (*m, y1)],
                                4,
                                4,
                                BLACK.mix(0.6).stroke_width(1),
                            ))
                            .map_err(err)?;
                        chart
                            .draw_series(std::iter::once(Text::new(
                                (*name).to_string(),
                                (*m, y0 + pad * 1.5),
                                ("sans-serif", 14).into_font(),
                            )))
                            .map_err(err)?;
                    }
                }
                for s in series {
                    let c = color(s.color);
                    let style = c.stroke_width(2);
                    let p: Vec<(f64, f64)> = s.points.iter().copied().filter(keep).collect();
                    let drawn = match s.dash {
                        Dash::Solid => chart.draw_series(LineSeries::new(p, style)).map_err(err)?,
                        Dash::Dashed => {
                            chart.draw_series(DashedLineSeries::new(p, 7, 5, style)).map_err(err)?
                        }
                    };
                    let dash = s.dash;
                    drawn.label(s.label.clone()).legend(move |(x, y)| {
                        let end = if dash == Dash::Solid { x + 24 } else { x + 10 };
                        PathElement::new(vec![(x, y), (end, y)], c.stroke_width(2))
                    });
                }
                legend(&mut chart)?;
            }};
        }
        if log_x {
            finish!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1).map_err(err)?);
        } else {
            finish!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Diverging blue–white–red colour of `v` in [-1, 1].
fn diverging(v: f64) -> RGBColor {
    let t = v.clamp(-1.0, 1.0);
    let mix =
        |a: u8, b: u8, s: f64| (f64::from(a) + (f64::from(b) - f64::from(a)) * s).round() as u8;
    if t >= 0.0 {
        RGBColor(mix(255, 178, t), mix(255, 24, t), mix(255, 43, t))
    } else {
        RGBColor(mix(255, 33, -t), mix(255, 102, -t), mix(255, 172, -t))
    }
}

fn heat_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    m: &[Vec<f64>],
) -> Result<(), String> {
    let k = m.len();
    let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-300);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(28)
        .build_cartesian_2d(0..k, 0..k)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(k.min(10))
        .y_labels(k.min(10))
        // Cells are labelled at their lower-left corner; rows count from the top.
        .x_label_formatter(&|x| if *x < k { x.to_string() } else { String::new() })
        .y_label_formatter(&|y| if *y < k { (k - 1 - y).to_string() } else { String::new() })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series((0..k).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| {
            // Row i at the top, as a matrix is read.
            Rectangle::new([(j, k - 1 - i), (j + 1, k - i)], diverging(m[i][j] / scale).filled())
        }))
        .map_err(err)?;
    Ok(())
}

/// Heatmaps of k×k matrices side by side, each scaled by its largest absolute entry (blue
/// negative, white zero, red positive); rows top to bottom.
///
/// # Errors
/// A drawing failure.
pub fn heatmaps(title: &str, panels: &[(&str, Vec<Vec<f64>>)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let w = 260 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (w, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, (name, m)) in areas.iter().zip(panels) {
            heat_panel(area, name, m)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Grouped bar chart: one group per category, one bar per series in it.
///
/// # Errors
/// A drawing failure.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<String, String> {
    let vals = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = 0.08 * (hi - lo).max(1e-12);
    // Headroom above the bars for the legend box.
    let (y0, y1) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + 0.4 * (hi - lo).max(1e-12) + pad);
    let m = series.len().max(1);
    let n = categories.len();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, y0..y1)
            .map_err(err)?;
        let cats = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            // Ticks at the integers, each under its group of bars.
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(err)?;
        for (s, (name, v)) in series.iter().enumerate() {
            let c = color(s);
            let w = 0.8 / m as f64;
            chart
                .draw_series(v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(|(i, &y)| {
                    let x = i as f64 - 0.4 + w * s as f64;
                    Rectangle::new([(x, 0.0), (x + w * 0.92, y)], c.filled())
                }))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        legend(&mut chart)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::tick;

    #[test]
    fn ticks_are_compact() {
        let got: Vec<String> = [0.0, 1000.0, 10.0, 0.5, 0.125, 2.5e-5, 3e7, -20.0, 0.33333]
            .iter()
            .map(|&x| tick(x))
            .collect();
        assert_eq!(got, ["0", "1000", "10", "0.5", "0.125", "2.5e-5", "3e7", "-20", "0.3333"]);
    }
}
