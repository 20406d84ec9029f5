//! SVG figures drawn with plotters: line charts (linear or log x; one panel, or several side by
//! side on one y scale; curves with shaded bands), heatmaps of k×k matrices with a colour scale,
//! and grouped bar charts. Each function returns a complete SVG document.
//!
//! Legends never cover what is drawn: everything a chart draws in its plot area (curves, bands,
//! bars, marker lines and labels) is rasterized into an occupancy mask, the legend goes into the
//! first corner of the plot (then the middle of its top or bottom edge) where the mask is empty,
//! and when there is none, outside the plot on its right (the plot is narrowed to make room).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Figure size in pixels (a paper column at 2x).
pub const SIZE: (u32, u32) = (720, 440);

/// Size of each panel of a figure with panels side by side.
pub const PANEL: (u32, u32) = (480, 440);

/// Line style of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dash {
    /// Solid line (SELI targets).
    Solid,
    /// Dashed line (ETF targets).
    Dashed,
    /// Points only, no line (measurements over theory curves).
    Points,
}

/// One curve, with an optional band (for example the spread over seeds).
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
    /// Band (x, low, high) shaded in the series' colour; empty for none.
    pub band: Band,
}

impl Series {
    /// A curve without a band.
    pub fn new(
        label: impl Into<String>,
        points: Vec<(f64, f64)>,
        color: usize,
        dash: Dash,
    ) -> Self {
        Series { label: label.into(), points, color, dash, band: Vec::new() }
    }
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

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A point in pixels.
type Pixel = (i32, i32);

/// A band: (x, low, high) at each x.
pub type Band = Vec<(f64, f64, f64)>;

/// A rectangle in pixels (x0 <= x1, y0 <= y1, ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x0: i32,
    /// Top.
    pub y0: i32,
    /// Right.
    pub x1: i32,
    /// Bottom.
    pub y1: i32,
}

impl Rect {
    fn of_ranges((xs, ys): (std::ops::Range<i32>, std::ops::Range<i32>)) -> Rect {
        Rect { x0: xs.start, y0: ys.start, x1: xs.end - 1, y1: ys.end - 1 }
    }

    fn grow(self, by: i32) -> Rect {
        Rect { x0: self.x0 - by, y0: self.y0 - by, x1: self.x1 + by, y1: self.y1 + by }
    }
}

/// Which pixels of a plot area are drawn on.
struct Occupancy {
    area: Rect,
    width: usize,
    cells: Vec<bool>,
}

impl Occupancy {
    fn new(area: Rect) -> Self {
        let width = (area.x1 - area.x0 + 1).max(0) as usize;
        let height = (area.y1 - area.y0 + 1).max(0) as usize;
        Occupancy { area, width, cells: vec![false; width * height] }
    }

    /// Marks the pixels of `r` that lie in the area.
    fn mark_rect(&mut self, r: Rect) {
        let a = self.area;
        for y in r.y0.max(a.y0)..=r.y1.min(a.y1) {
            for x in r.x0.max(a.x0)..=r.x1.min(a.x1) {
                self.cells[(y - a.y0) as usize * self.width + (x - a.x0) as usize] = true;
            }
        }
    }

    /// Marks a segment `half` pixels thick on each side, sampled every half pixel.
    fn mark_segment(&mut self, (ax, ay): (i32, i32), (bx, by): (i32, i32), half: i32) {
        let steps = 2 * (bx - ax).abs().max((by - ay).abs()).max(1);
        for s in 0..=steps {
            let t = f64::from(s) / f64::from(steps);
            let x = (f64::from(ax) + t * f64::from(bx - ax)).round() as i32;
            let y = (f64::from(ay) + t * f64::from(by - ay)).round() as i32;
            self.mark_rect(Rect { x0: x, y0: y, x1: x, y1: y }.grow(half));
        }
    }

    /// Marks the region between two polylines over the same pixel columns: the band from
    /// (x, low, high) points already in pixels.
    fn mark_band(&mut self, pts: &[(Pixel, Pixel)]) {
        for w in pts.windows(2) {
            let ((ax, alo), (_, ahi)) = w[0];
            let ((bx, blo), (_, bhi)) = w[1];
            let (x0, x1) = (ax.min(bx), ax.max(bx));
            for x in x0..=x1 {
                let t = if bx == ax { 0.0 } else { f64::from(x - ax) / f64::from(bx - ax) };
                let lerp = |p: i32, q: i32| (f64::from(p) + t * f64::from(q - p)).round() as i32;
                let (l, h) = (lerp(alo, blo), lerp(ahi, bhi));
                self.mark_rect(Rect { x0: x, y0: l.min(h), x1: x, y1: l.max(h) });
            }
        }
    }

    /// Whether no pixel of `r` is drawn on (pixels outside the area count as free).
    fn free(&self, r: Rect) -> bool {
        let a = self.area;
        (r.y0.max(a.y0)..=r.y1.min(a.y1)).all(|y| {
            (r.x0.max(a.x0)..=r.x1.min(a.x1))
                .all(|x| !self.cells[(y - a.y0) as usize * self.width + (x - a.x0) as usize])
        })
    }
}

/// What a legend entry shows beside its label.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Line(RGBColor, Dash),
    Band(RGBColor, Dash),
    Block(RGBColor),
    Point(RGBColor),
}

struct Entry {
    label: String,
    swatch: Swatch,
}

const LEGEND_FONT: u32 = 14;
const LEGEND_ROW: i32 = 20;
const LEGEND_PAD: i32 = 8;
const SWATCH: i32 = 26;
/// Gap between a legend and the plot's edge (and the clearance kept around drawn pixels).
const LEGEND_GAP: i32 = 6;

/// A generous estimate of a text's width in pixels (sans-serif averages about 0.55 em).
fn text_width(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * 0.6 * f64::from(size)).ceil() as i32
}

fn legend_size(entries: &[Entry]) -> (i32, i32) {
    let label = entries.iter().map(|e| text_width(&e.label, LEGEND_FONT)).max().unwrap_or(0);
    (2 * LEGEND_PAD + SWATCH + 8 + label, 2 * LEGEND_PAD + LEGEND_ROW * entries.len() as i32)
}

/// Where a legend of `size` fits inside one of `plots` without covering a drawn pixel: the
/// corners (upper right, upper left, lower right, lower left), then the middles of the top and
/// bottom edges, of each plot in turn.
fn free_spot(plots: &[(Rect, Occupancy)], (w, h): (i32, i32)) -> Option<Rect> {
    for (p, occ) in plots {
        let (l, r) = (p.x0 + LEGEND_GAP, p.x1 - LEGEND_GAP - w);
        let (t, b) = (p.y0 + LEGEND_GAP, p.y1 - LEGEND_GAP - h);
        let c = (p.x0 + p.x1 - w) / 2;
        if r < l || b < t {
            continue;
        }
        for (x, y) in [(r, t), (l, t), (r, b), (l, b), (c, t), (c, b)] {
            let spot = Rect { x0: x, y0: y, x1: x + w, y1: y + h };
            if occ.free(spot.grow(LEGEND_GAP)) {
                return Some(spot);
            }
        }
    }
    None
}

/// The legend background's opacity: it identifies the legend box in the SVG (tests find it by
/// this value).
pub const LEGEND_OPACITY: f64 = 0.93;

fn draw_legend(root: &Area<'_>, at: Rect, entries: &[Entry]) -> Result<(), String> {
    let root = root.use_screen_coord();
    root.draw(&Rectangle::new(
        [(at.x0, at.y0), (at.x1, at.y1)],
        WHITE.mix(LEGEND_OPACITY).filled(),
    ))
    .map_err(err)?;
    root.draw(&Rectangle::new([(at.x0, at.y0), (at.x1, at.y1)], BLACK.mix(0.4).stroke_width(1)))
        .map_err(err)?;
    let font = ("sans-serif", LEGEND_FONT).into_font().color(&BLACK);
    let style = font.pos(Pos::new(HPos::Left, VPos::Center));
    for (i, e) in entries.iter().enumerate() {
        let y = at.y0 + LEGEND_PAD + LEGEND_ROW * i as i32 + LEGEND_ROW / 2;
        let x = at.x0 + LEGEND_PAD;
        let line = |c: RGBColor, dash: Dash| -> Result<(), String> {
            let s = c.stroke_width(2);
            match dash {
                Dash::Points => root.draw(&Circle::new((x + SWATCH / 2, y), 4, c.filled())),
                Dash::Solid => root.draw(&PathElement::new(vec![(x, y), (x + SWATCH, y)], s)),
                Dash::Dashed => {
                    root.draw(&PathElement::new(vec![(x, y), (x + 10, y)], s)).and_then(|()| {
                        root.draw(&PathElement::new(vec![(x + 16, y), (x + SWATCH, y)], s))
                    })
                }
            }
            .map_err(err)
        };
        match e.swatch {
            Swatch::Line(c, dash) => line(c, dash)?,
            Swatch::Band(c, dash) => {
                root.draw(&Rectangle::new([(x, y - 6), (x + SWATCH, y + 6)], c.mix(0.2).filled()))
                    .map_err(err)?;
                line(c, dash)?;
            }
            Swatch::Block(c) => root
                .draw(&Rectangle::new([(x + 7, y - 6), (x + 19, y + 6)], c.filled()))
                .map_err(err)?,
            Swatch::Point(c) => line(c, Dash::Points)?,
        }
        root.draw_text(&e.label, &style, (x + SWATCH + 8, y)).map_err(err)?;
    }
    Ok(())
}

/// Places the legend: inside a free spot of the plots, else (when `outside` is allowed: the
/// last plot was narrowed by the legend's width) on the right of the last plot. `None`: no
/// free spot and no room outside; draw again with room.
fn place_legend(
    root: &Area<'_>,
    plots: &[(Rect, Occupancy)],
    entries: &[Entry],
    outside: bool,
) -> Result<bool, String> {
    if entries.is_empty() {
        return Ok(true);
    }
    let size = legend_size(entries);
    let spot = free_spot(plots, size).or_else(|| {
        let p = plots.last()?.0;
        outside.then(|| {
            let x0 = p.x1 + 2 * LEGEND_GAP;
            Rect { x0, y0: p.y0, x1: x0 + size.0, y1: p.y0 + size.1 }
        })
    });
    match spot {
        Some(at) => draw_legend(root, at, entries).map(|()| true),
        None => Ok(false),
    }
}

/// Draws a figure of `size` with a legend of `entries`: `draw` draws the plots, given the
/// extra right margin its last plot leaves for a legend outside (0 on the first attempt), and
/// returns them with what they drew; the legend goes in a free spot, else a second drawing makes
/// room outside.
fn with_legend(
    size: (u32, u32),
    entries: &[Entry],
    draw: impl Fn(&Area<'_>, i32) -> Result<Vec<(Rect, Occupancy)>, String>,
) -> Result<String, String> {
    let (legend_w, _) = legend_size(entries);
    for outside in [false, true] {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let plots = draw(&root, if outside { legend_w } else { 0 })?;
            if !place_legend(&root, &plots, entries, outside)? {
                continue;
            }
            root.present().map_err(err)?;
        }
        return Ok(svg);
    }
    unreachable!("the second attempt always places the legend outside")
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

/// Height of a row of marker labels above a plot.
const MARKER_ROW: i32 = 17;

/// A tick of an axis spanning `span`: values within rounding error of zero (1e-9 of the span)
/// are 0.
fn axis_tick(v: f64, span: f64) -> String {
    tick(if v.abs() <= 1e-9 * span.abs() { 0.0 } else { v })
}

/// The axes and labelled vertical markers shared by the panels of a line figure.
struct Axes<'a> {
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    markers: &'a [(f64, &'a str)],
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes<'_> {
    fn keeps(&self, (x, y): (f64, f64)) -> bool {
        x.is_finite() && y.is_finite() && (!self.log_x || x > 0.0)
    }
}

/// The x and y ranges of `series` (their bands included) and the markers, y padded by 5 %.
fn ranges(
    series: &[&Series],
    markers: &[(f64, &str)],
    log_x: bool,
) -> Option<((f64, f64), (f64, f64))> {
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_x || x > 0.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| {
            let band = s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
            s.points.iter().copied().chain(band).filter(keep).collect::<Vec<_>>()
        })
        .collect();
    if pts.is_empty() {
        return None;
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        pts.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (mut x0, mut x1) = fold(|p| p.0);
    let (y0, y1) = fold(|p| p.1);
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
    Some(((x0, x1), ((y0 - pad).min(0.0_f64.max(y0 - pad)), y1 + pad)))
}

/// Draws one panel of a line figure in `area`, `right` pixels of extra right margin; returns its
/// plot rectangle and what was drawn in it.
fn line_panel(
    area: &Area<'_>,
    caption: (&str, u32),
    axes: &Axes<'_>,
    series: &[Series],
    right: i32,
) -> Result<(Rect, Occupancy), String> {
    let (y0, y1) = axes.y;
    let body = area.titled(caption.0, ("sans-serif", caption.1)).map_err(err)?;
    let mut builder = ChartBuilder::on(&body);
    builder
        .margin(12)
        // Room between the caption and the plot for the markers' labels (two rows).
        .margin_top(if axes.markers.is_empty() { 12 } else { 4 + 2 * MARKER_ROW as u32 })
        .margin_right(30 + right)
        .x_label_area_size(48)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_label_formatter(&|x| axis_tick(*x, axes.x.1 - axes.x.0))
                .y_label_formatter(&|y| axis_tick(*y, y1 - y0))
                .x_desc(axes.x_label)
                .y_desc(axes.y_label)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            let plot = Rect::of_ranges(chart.plotting_area().get_pixel_range());
            let mut occ = Occupancy::new(plot);
            let bands: Vec<Vec<(f64, f64, f64)>> = series
                .iter()
                .map(|s| {
                    let b: Vec<_> = s
                        .band
                        .iter()
                        .copied()
                        .filter(|&(x, lo, hi)| axes.keeps((x, lo)) && axes.keeps((x, hi)))
                        .collect();
                    if b.len() < 2 { Vec::new() } else { b }
                })
                .collect();
            let lines: Vec<Vec<(f64, f64)>> = series
                .iter()
                .map(|s| s.points.iter().copied().filter(|&q| axes.keeps(q)).collect())
                .collect();
            let mut markers: Vec<(f64, &str)> = axes
                .markers
                .iter()
                .copied()
                .filter(|(m, _)| m.is_finite() && (!axes.log_x || *m > 0.0))
                .collect();
            markers.sort_by(|a, b| a.0.total_cmp(&b.0));
            // What is drawn, in pixels, before drawing it.
            {
                let px = |p: (f64, f64)| chart.backend_coord(&p);
                for b in &bands {
                    let pix: Vec<_> =
                        b.iter().map(|&(x, lo, hi)| (px((x, lo)), px((x, hi)))).collect();
                    occ.mark_band(&pix);
                }
                for (m, _) in &markers {
                    occ.mark_segment(px((*m, y0)), px((*m, y1)), 1);
                }
                for (p, s) in lines.iter().zip(series) {
                    if s.dash == Dash::Points {
                        p.iter().for_each(|q| occ.mark_segment(px(*q), px(*q), 4));
                        continue;
                    }
                    for w in p.windows(2) {
                        occ.mark_segment(px(w[0]), px(w[1]), 1);
                    }
                    if let [one] = p.as_slice() {
                        occ.mark_segment(px(*one), px(*one), 3);
                    }
                }
            }
            for (s, b) in series.iter().zip(bands) {
                if b.is_empty() {
                    continue;
                }
                let outline: Vec<(f64, f64)> = b
                    .iter()
                    .map(|&(x, lo, _)| (x, lo))
                    .chain(b.iter().rev().map(|&(x, _, hi)| (x, hi)))
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        outline,
                        color(s.color).mix(0.2).filled(),
                    )))
                    .map_err(err)?;
            }
            // Marker labels above the plot, centred on their line; a label that would touch
            // the one before it goes a row higher.
            let base = body.get_base_pixel();
            let style = TextStyle::from(("sans-serif", 14).into_font())
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            let mut last: Option<(i32, i32)> = None;
            for (m, name) in markers {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(m, y0), (m, y1)],
                        4,
                        4,
                        BLACK.mix(0.6).stroke_width(1),
                    ))
                    .map_err(err)?;
                let x = chart.backend_coord(&(m, y1)).0 - base.0;
                let half = text_width(name, 14) / 2;
                let row = match last {
                    Some((right, row)) if x - half < right + 4 => (row + 1) % 2,
                    _ => 0,
                };
                let y = plot.y0 - base.1 - 3 - MARKER_ROW * row;
                body.draw_text(name, &style, (x, y)).map_err(err)?;
                last = Some((x + half, row));
            }
            for (s, p) in series.iter().zip(lines) {
                let c = color(s.color);
                let style = c.stroke_width(2);
                if let [one] = p.as_slice() {
                    chart
                        .draw_series(std::iter::once(Circle::new(*one, 3, c.filled())))
                        .map_err(err)?;
                }
                if s.dash == Dash::Points {
                    chart
                        .draw_series(p.into_iter().map(|q| Circle::new(q, 4, c.filled())))
                        .map_err(err)?;
                    continue;
                }
                match s.dash {
                    Dash::Solid | Dash::Points => {
                        chart.draw_series(LineSeries::new(p, style)).map_err(err)?
                    }
                    Dash::Dashed => {
                        chart.draw_series(DashedLineSeries::new(p, 7, 5, style)).map_err(err)?
                    }
                };
            }
            Ok((plot, occ))
        }};
    }
    if axes.log_x {
        finish!(builder.build_cartesian_2d((axes.x.0..axes.x.1).log_scale(), y0..y1).map_err(err)?)
    } else {
        finish!(builder.build_cartesian_2d(axes.x.0..axes.x.1, y0..y1).map_err(err)?)
    }
}

/// The legend entries of `series`: one per label (the first series of a label decides its
/// swatch), series with nothing to draw left out.
fn entries_of<'a>(series: impl Iterator<Item = &'a Series>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for s in series {
        if s.points.iter().all(|p| !p.0.is_finite() || !p.1.is_finite())
            || out.iter().any(|e| e.label == s.label)
        {
            continue;
        }
        let c = color(s.color);
        let swatch = if s.dash == Dash::Points {
            Swatch::Point(c)
        } else if s.band.len() >= 2 {
            Swatch::Band(c, s.dash)
        } else {
            Swatch::Line(c, s.dash)
        };
        out.push(Entry { label: s.label.clone(), swatch });
    }
    out
}

/// Draws `panels` side by side (one y scale, one legend), under `title` when there are several.
fn line_figure(
    title: &str,
    size: (u32, u32),
    (x_label, y_label, log_x): (&str, &str, bool),
    panels: &[(&str, &[Series])],
    markers: &[(f64, &str)],
) -> Result<String, String> {
    let all: Vec<&Series> = panels.iter().flat_map(|(_, s)| s.iter()).collect();
    let (x, y) = ranges(&all, markers, log_x).ok_or_else(|| format!("{title}: nothing to plot"))?;
    let axes = Axes { x_label, y_label, log_x, markers, x, y };
    let entries = entries_of(all.iter().copied());
    with_legend(size, &entries, |root, right| {
        let (body, caption) = if panels.len() == 1 {
            (root.clone(), (title, 22))
        } else {
            (root.titled(title, ("sans-serif", 22)).map_err(err)?, ("", 18))
        };
        let areas = body.split_evenly((1, panels.len().max(1)));
        let mut plots = Vec::new();
        for (i, (area, (name, series))) in areas.iter().zip(panels).enumerate() {
            let extra = if i + 1 == panels.len() { right } else { 0 };
            let cap = if panels.len() == 1 { caption } else { (*name, caption.1) };
            plots.push(line_panel(area, cap, &axes, series, extra)?);
        }
        Ok(plots)
    })
}

/// A line chart. With `log_x`, points with x <= 0 are dropped. `markers` are labelled vertical
/// lines (thresholds).
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
    line_figure(title, SIZE, (x_label, y_label, log_x), &[(title, series)], markers)
}

/// Line charts side by side on one y scale with one legend (series are matched across panels
/// by label): for example distances to SELI and to the ETF against a swept parameter.
///
/// # Errors
/// No finite point to draw; a drawing failure.
pub fn line_panels(
    title: &str,
    (x_label, y_label, log_x): (&str, &str, bool),
    panels: &[(&str, Vec<Series>)],
) -> Result<String, String> {
    let size = (PANEL.0 * panels.len().max(1) as u32, PANEL.1);
    let p: Vec<(&str, &[Series])> = panels.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    line_figure(title, size, (x_label, y_label, log_x), &p, &[])
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

/// `v` rounded to three significant digits, as a tick.
fn tick3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return tick(v);
    }
    let p = 10f64.powi(2 - v.abs().log10().floor() as i32);
    tick((v * p).round() / p)
}

/// Every `step`-th index of 0..k is labelled: the smallest of 1, 2, 5, 10, 20, 50, ... that
/// leaves at most 10 labels.
fn label_step(k: usize) -> usize {
    let mut base = 1;
    loop {
        for s in [base, 2 * base, 5 * base] {
            if k.div_ceil(s) <= 10 {
                return s;
            }
        }
        base *= 10;
    }
}

const HEAT_W: u32 = 250;
const HEAT_H: u32 = 300;
const HEAT_TOP: i32 = 30;
const HEAT_LEFT: i32 = 34;
const BAR_W: u32 = 96;

/// One heatmap: cell (i, j) of `m` at row i from the top, column j from the left, coloured on
/// the scale ±`scale`; index ticks at cell centres.
fn heat_panel(area: &Area<'_>, title: &str, m: &[Vec<f64>], scale: f64) -> Result<(), String> {
    let k = m.len();
    let (w, h) = area.dim_in_pixel();
    let side = (w as i32 - HEAT_LEFT - 12).min(h as i32 - HEAT_TOP - 28).max(k as i32);
    let (x0, y0) = (HEAT_LEFT, HEAT_TOP);
    let edge = |i: usize| (f64::from(side) * i as f64 / k.max(1) as f64).round() as i32;
    // Coordinates relative to the area (text is always drawn relative to it).
    let screen = area;
    let caption =
        TextStyle::from(("sans-serif", 17).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    screen.draw_text(title, &caption, (x0 + side / 2, 4)).map_err(err)?;
    for (i, row) in m.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let c = if v.is_finite() { diverging(v / scale) } else { RGBColor(160, 160, 160) };
            screen
                .draw(&Rectangle::new(
                    [(x0 + edge(j), y0 + edge(i)), (x0 + edge(j + 1), y0 + edge(i + 1))],
                    c.filled(),
                ))
                .map_err(err)?;
        }
    }
    screen
        .draw(&Rectangle::new([(x0, y0), (x0 + side, y0 + side)], BLACK.mix(0.5).stroke_width(1)))
        .map_err(err)?;
    let font = ("sans-serif", 12).into_font();
    let below = TextStyle::from(font.clone()).pos(Pos::new(HPos::Center, VPos::Top));
    let left = TextStyle::from(font).pos(Pos::new(HPos::Right, VPos::Center));
    for c in (0..k).step_by(label_step(k)) {
        let mid = (edge(c) + edge(c + 1)) / 2;
        let (cx, cy) = (x0 + mid, y0 + mid);
        let tick_style = BLACK.stroke_width(1);
        screen
            .draw(&PathElement::new(vec![(cx, y0 + side), (cx, y0 + side + 4)], tick_style))
            .map_err(err)?;
        screen.draw(&PathElement::new(vec![(x0 - 4, cy), (x0, cy)], tick_style)).map_err(err)?;
        screen.draw_text(&c.to_string(), &below, (cx, y0 + side + 6)).map_err(err)?;
        screen.draw_text(&c.to_string(), &left, (x0 - 6, cy)).map_err(err)?;
    }
    Ok(())
}

/// A vertical colour scale from -`scale` (bottom) to `scale` (top) in `area`, aligned with
/// the heatmaps' cells.
fn colour_bar(area: &Area<'_>, scale: f64) -> Result<(), String> {
    let (_, h) = area.dim_in_pixel();
    let (x0, y0) = (10, HEAT_TOP);
    let len = (h as i32 - HEAT_TOP - 28).min(HEAT_W as i32 - HEAT_LEFT - 12);
    // Coordinates relative to the area (text is always drawn relative to it).
    let screen = area;
    const STRIPS: i32 = 64;
    for s in 0..STRIPS {
        let v = 1.0 - 2.0 * (f64::from(s) + 0.5) / f64::from(STRIPS);
        let (a, b) = (y0 + len * s / STRIPS, y0 + len * (s + 1) / STRIPS);
        screen
            .draw(&Rectangle::new([(x0, a), (x0 + 16, b)], diverging(v).filled()))
            .map_err(err)?;
    }
    screen
        .draw(&Rectangle::new([(x0, y0), (x0 + 16, y0 + len)], BLACK.mix(0.5).stroke_width(1)))
        .map_err(err)?;
    let style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for t in [1.0, 0.5, 0.0, -0.5, -1.0] {
        let y = y0 + ((1.0 - t) / 2.0 * f64::from(len)).round() as i32;
        screen
            .draw(&PathElement::new(vec![(x0 + 16, y), (x0 + 20, y)], BLACK.stroke_width(1)))
            .map_err(err)?;
        screen.draw_text(&tick3(t * scale), &style, (x0 + 23, y)).map_err(err)?;
    }
    Ok(())
}

/// Heatmaps of k×k matrices side by side (rows top to bottom, index ticks at cell centres) on
/// one diverging colour scale, ±(the largest absolute entry of all panels): blue negative,
/// white zero, red positive; the scale is drawn on the right.
///
/// # Errors
/// A drawing failure.
pub fn heatmaps(title: &str, panels: &[(&str, Vec<Vec<f64>>)]) -> Result<String, String> {
    let scale = panels
        .iter()
        .flat_map(|(_, m)| m.iter().flatten())
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, v| a.max(v.abs()))
        .max(1e-300);
    let mut svg = String::new();
    {
        let w = HEAT_W * panels.len().max(1) as u32 + BAR_W;
        let root = SVGBackend::with_string(&mut svg, (w, HEAT_H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let body = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (maps, bar) = body.split_horizontally(HEAT_W * panels.len().max(1) as u32);
        for (area, (name, m)) in maps.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
            heat_panel(area, name, m, scale)?;
        }
        colour_bar(&bar, scale)?;
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
    let (y0, y1) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let m = series.len().max(1);
    let n = categories.len();
    let entries: Vec<Entry> = series
        .iter()
        .enumerate()
        .map(|(s, (name, _))| Entry { label: (*name).to_string(), swatch: Swatch::Block(color(s)) })
        .collect();
    with_legend(SIZE, &entries, |root, right| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .margin_right(12 + if right > 0 { right + 2 * LEGEND_GAP } else { 0 })
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
            .y_label_formatter(&|y| axis_tick(*y, y1 - y0))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(err)?;
        let plot = Rect::of_ranges(chart.plotting_area().get_pixel_range());
        let mut occ = Occupancy::new(plot);
        let w = 0.8 / m as f64;
        for (s, (_, v)) in series.iter().enumerate() {
            let bars: Vec<[(f64, f64); 2]> = v
                .iter()
                .enumerate()
                .filter(|(_, y)| y.is_finite())
                .map(|(i, &y)| {
                    let x = i as f64 - 0.4 + w * s as f64;
                    [(x, 0.0), (x + w * 0.92, y)]
                })
                .collect();
            for [a, b] in &bars {
                let (pa, pb) = (chart.backend_coord(a), chart.backend_coord(b));
                occ.mark_rect(Rect {
                    x0: pa.0.min(pb.0),
                    y0: pa.1.min(pb.1),
                    x1: pa.0.max(pb.0),
                    y1: pa.1.max(pb.1),
                });
            }
            let c = color(s);
            chart
                .draw_series(bars.into_iter().map(|r| Rectangle::new(r, c.filled())))
                .map_err(err)?;
        }
        Ok(vec![(plot, occ)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_compact() {
        let got: Vec<String> = [0.0, 1000.0, 10.0, 0.5, 0.125, 2.5e-5, 3e7, -20.0, 0.33333]
            .iter()
            .map(|&x| tick(x))
            .collect();
        assert_eq!(got, ["0", "1000", "10", "0.5", "0.125", "2.5e-5", "3e7", "-20", "0.3333"]);
        assert_eq!(axis_tick(-2.8e-17, 0.9), "0");
        assert_eq!(axis_tick(2.5e-5, 1e-4), "2.5e-5");
        assert_eq!(tick3(0.123_456), "0.123");
        assert_eq!(tick3(-45.678), "-45.7");
    }

    #[test]
    fn label_steps_leave_at_most_ten_labels() {
        let got: Vec<usize> = [1, 10, 11, 20, 21, 50, 51, 100, 101, 1000].map(label_step).to_vec();
        assert_eq!(got, [1, 1, 2, 2, 5, 5, 10, 10, 20, 100]);
    }

    #[test]
    fn occupancy_marks_segments_and_bands() {
        let mut o = Occupancy::new(Rect { x0: 0, y0: 0, x1: 99, y1: 99 });
        o.mark_segment((0, 0), (99, 99), 0);
        assert!(!o.free(Rect { x0: 50, y0: 50, x1: 50, y1: 50 }));
        assert!(o.free(Rect { x0: 60, y0: 0, x1: 99, y1: 30 }));
        o.mark_band(&[((10, 90), (10, 70)), ((30, 80), (30, 60))]);
        assert!(!o.free(Rect { x0: 20, y0: 75, x1: 20, y1: 75 }));
        assert!(o.free(Rect { x0: 20, y0: 86, x1: 20, y1: 99 }));
    }

    /// A small deterministic generator (xorshift64*) for figure cases.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() * n as f64) as usize % n
        }
    }

    /// Curves of every shape (random walks, lines through the corners, flat lines at the top
    /// and bottom, single points, bands, markers): the legend never covers a curve, band, point
    /// or bar, sits inside the figure, and both placements (inside the plot, outside it) occur.
    #[test]
    fn legends_never_cover_data() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let (mut inside, mut outside) = (0, 0);
        for case in 0..60 {
            let log_x = case % 3 == 0;
            let n_series = 1 + rng.below(6);
            let series: Vec<Series> = (0..n_series)
                .map(|i| {
                    let n = if rng.below(8) == 0 { 1 } else { 2 + rng.below(40) };
                    let xs: Vec<f64> =
                        (0..n)
                            .map(|j| {
                                if log_x { 10f64.powf(3.0 * j as f64 / n as f64) } else { j as f64 }
                            })
                            .collect();
                    let kind = rng.below(5);
                    let mut y = rng.next();
                    let points: Vec<(f64, f64)> = xs
                        .iter()
                        .enumerate()
                        .map(|(j, &x)| {
                            let t = j as f64 / n.max(2).saturating_sub(1) as f64;
                            let v = match kind {
                                0 => t,
                                1 => 1.0 - t,
                                2 => {
                                    y += rng.next() - 0.5;
                                    y
                                }
                                3 => 1.0,
                                _ => 0.0,
                            };
                            (x, v)
                        })
                        .collect();
                    let band = if rng.below(3) == 0 {
                        points.iter().map(|&(x, v)| (x, v - 0.1, v + 0.1 * rng.next())).collect()
                    } else {
                        Vec::new()
                    };
                    let dash = if rng.below(2) == 0 { Dash::Solid } else { Dash::Dashed };
                    Series {
                        label: format!("series number {i} {case}"),
                        points,
                        color: i,
                        dash,
                        band,
                    }
                })
                .collect();
            let markers =
                if case % 4 == 1 { vec![(if log_x { 10.0 } else { 3.0 }, "λ*")] } else { vec![] };
            let svg = line_chart("t", "x", "y", log_x, &series, &markers).unwrap();
            if !markers.is_empty() {
                // The marker's label sits above the plot, over its dashed line.
                let els = crate::svgcheck::elements(&svg);
                let label = els.iter().find(|e| e.tag == "text" && e.text == "λ*").unwrap();
                let line = els
                    .iter()
                    .filter(|e| e.tag == "polyline" && e.attr("opacity") == Some("0.6"))
                    .flat_map(crate::svgcheck::Element::points)
                    .collect::<Vec<_>>();
                let top = line.iter().fold(f64::INFINITY, |a, p| a.min(p.1));
                assert!(label.num("y") < top && (label.num("x") - line[0].0).abs() <= 1.0);
            }
            let (r, covered) = crate::svgcheck::legend_overlaps(&svg).expect("a legend");
            assert_eq!(covered, 0, "case {case}: the legend {r:?} covers data");
            assert!(
                r.0 >= 0.0 && r.2 <= f64::from(SIZE.0) && r.3 <= f64::from(SIZE.1),
                "case {case}: {r:?}"
            );
            if r.0 > crate::svgcheck::data_right(&svg) {
                outside += 1;
            } else {
                inside += 1;
            }
            // Bars of the same random heights.
            let cats: Vec<String> = (0..1 + rng.below(10)).map(|c| c.to_string()).collect();
            let bars: Vec<(&str, Vec<f64>)> = (0..1 + rng.below(5))
                .map(|_| ("bars", cats.iter().map(|_| rng.next() * 2.0 - 0.5).collect()))
                .collect();
            let svg = bar_chart("t", "y", &cats, &bars).unwrap();
            let (r, covered) = crate::svgcheck::legend_overlaps(&svg).expect("a legend");
            assert_eq!(covered, 0, "case {case}: the bar legend {r:?} covers a bar");
        }
        assert!(inside > 5 && outside > 5, "inside {inside}, outside {outside}");
    }

    /// Side-by-side panels share one legend and one y scale.
    #[test]
    fn panels_share_one_legend() {
        let a =
            vec![Series::new("G_W", vec![(1.0, 0.1), (10.0, 0.5), (100.0, 0.9)], 0, Dash::Solid)];
        let b =
            vec![Series::new("G_W", vec![(1.0, 0.2), (10.0, 0.3), (100.0, 0.4)], 0, Dash::Solid)];
        let svg = line_panels("t", ("R", "d", true), &[("to SELI", a), ("to the ETF", b)]).unwrap();
        let els = crate::svgcheck::elements(&svg);
        let legends =
            els.iter().filter(|e| e.attr("opacity") == Some(&LEGEND_OPACITY.to_string())).count();
        assert_eq!(legends, 1);
        assert_eq!(crate::svgcheck::legend_overlaps(&svg).unwrap().1, 0);
        for title in ["to SELI", "to the ETF"] {
            assert!(els.iter().any(|e| e.tag == "text" && e.text == title), "{title}");
        }
        // One y scale: both panels label the same ticks.
        let ticks = |lo: f64, hi: f64| -> Vec<String> {
            els.iter()
                .filter(|e| e.tag == "text" && e.attr("text-anchor") == Some("end"))
                .filter(|e| (lo..hi).contains(&e.num("x")))
                .map(|e| e.text.clone())
                .collect()
        };
        let w = f64::from(PANEL.0);
        assert!(!ticks(0.0, w).is_empty());
        assert_eq!(ticks(0.0, w), ticks(w, 2.0 * w));
    }

    /// Heatmap cells: row i from the top, column j from the left, coloured by value on one
    /// scale for all panels; index labels at cell centres; a colour bar labelled ±scale.
    #[test]
    fn heatmap_ticks_sit_on_cell_centres() {
        for k in [3usize, 7, 12, 40] {
            let m: Vec<Vec<f64>> = (0..k)
                .map(|i| (0..k).map(|j| (i as f64 - 2.0 * j as f64) / k as f64).collect())
                .collect();
            let half: Vec<Vec<f64>> =
                m.iter().map(|r| r.iter().map(|v| v / 2.0).collect()).collect();
            let svg = heatmaps("t", &[("A", m.clone()), ("B", half)]).unwrap();
            let els = crate::svgcheck::elements(&svg);
            let rects: Vec<_> = els.iter().filter(|e| e.tag == "rect").collect();
            // The background, then panel A's k*k cells row by row.
            let cell = |i: usize, j: usize| rects[1 + i * k + j].rect();
            let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
            for i in 0..k {
                for j in 0..k {
                    let c = diverging(m[i][j] / scale);
                    assert_eq!(
                        rects[1 + i * k + j].attr("fill").unwrap(),
                        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
                    );
                    let (x0, y0, x1, y1) = cell(i, j);
                    if j > 0 {
                        assert_eq!(x0, cell(i, j - 1).2);
                    }
                    if i > 0 {
                        assert_eq!(y0, cell(i - 1, j).3);
                    }
                    assert!(x1 > x0 && y1 > y0);
                }
            }
            let step = label_step(k);
            let labels: Vec<_> =
                els.iter().filter(|e| e.tag == "text" && e.text.parse::<usize>().is_ok()).collect();
            let (left, right) = (cell(0, 0).0, cell(0, k - 1).2);
            let mut seen = 0;
            for e in labels.iter().filter(|e| e.num("x") < right + 1.0) {
                let c: usize = e.text.parse().unwrap();
                assert_eq!(c % step, 0);
                if e.attr("text-anchor") == Some("middle") {
                    let (x0, _, x1, _) = cell(0, c);
                    assert!((e.num("x") - (x0 + x1) / 2.0).abs() <= 1.0, "k {k}: column {c}");
                } else {
                    let (_, y0, _, y1) = cell(c, 0);
                    assert!((e.num("y") - (y0 + y1) / 2.0).abs() <= 1.0, "k {k}: row {c}");
                    assert!(e.num("x") < left);
                }
                seen += 1;
            }
            assert_eq!(seen, 2 * k.div_ceil(step), "k {k}");
            for v in [scale, -scale, 0.0, scale / 2.0] {
                assert!(
                    els.iter().any(|e| e.tag == "text" && e.text == tick3(v)),
                    "k {k}: scale label {v}"
                );
            }
        }
    }
}
