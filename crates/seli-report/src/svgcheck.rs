//! Reading back the SVG documents the figures write, for tests: elements in document order with
//! their attributes and text, and the geometry tests check on them.

/// One SVG element.
#[derive(Debug, Clone)]
pub struct Element {
    /// Tag name (`rect`, `polyline`, `text`, ...).
    pub tag: String,
    /// Attributes in order.
    pub attrs: Vec<(String, String)>,
    /// Text content (of `text` elements), trimmed.
    pub text: String,
}

impl Element {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A numeric attribute (NaN when missing).
    pub fn num(&self, key: &str) -> f64 {
        self.attr(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    /// The `points` of a polyline or polygon.
    pub fn points(&self) -> Vec<(f64, f64)> {
        self.attr("points")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    }

    /// A rect's corners (x0, y0, x1, y1).
    pub fn rect(&self) -> (f64, f64, f64, f64) {
        let (x, y) = (self.num("x"), self.num("y"));
        (x, y, x + self.num("width"), y + self.num("height"))
    }

    /// Stroke or fill colour, whichever is not "none".
    pub fn colour(&self) -> Option<&str> {
        [self.attr("stroke"), self.attr("fill")].into_iter().flatten().find(|c| *c != "none")
    }
}

/// The elements of `svg` in document order.
pub fn elements(svg: &str) -> Vec<Element> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').expect("unclosed tag");
        let tag_text = &rest[..end];
        rest = &rest[end + 1..];
        if tag_text.starts_with('/') || tag_text.starts_with('?') {
            continue;
        }
        let body = tag_text.trim_end_matches('/');
        let (tag, mut attrs_text) = body.split_once(' ').unwrap_or((body, ""));
        let mut attrs = Vec::new();
        while let Some(eq) = attrs_text.find("=\"") {
            let key = attrs_text[..eq].trim().to_string();
            let after = &attrs_text[eq + 2..];
            let close = after.find('"').expect("unclosed attribute");
            attrs.push((key, after[..close].to_string()));
            attrs_text = &after[close + 1..];
        }
        let text = if tag == "text" {
            rest[..rest.find("</text>").expect("unclosed text")].trim().to_string()
        } else {
            String::new()
        };
        out.push(Element { tag: tag.to_string(), attrs, text });
    }
    out
}

/// Whether the segment from `a` to `b` passes through the interior of the rectangle
/// (x0, y0, x1, y1) shrunk by half a pixel (sampled every quarter pixel).
pub fn segment_enters(a: (f64, f64), b: (f64, f64), r: (f64, f64, f64, f64)) -> bool {
    let steps = (4.0 * (b.0 - a.0).abs().max((b.1 - a.1).abs())).ceil().max(1.0) as usize;
    (0..=steps).any(|s| {
        let t = s as f64 / steps as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        x > r.0 + 0.5 && x < r.2 - 0.5 && y > r.1 + 0.5 && y < r.3 - 0.5
    })
}

/// Whether point `p` lies inside the polygon (even-odd rule).
pub fn inside_polygon(p: (f64, f64), poly: &[(f64, f64)]) -> bool {
    let mut inside = false;
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < a.0 + (p.1 - a.1) / (b.1 - a.1) * (b.0 - a.0) {
            inside = !inside;
        }
    }
    inside
}

/// Whether an element is drawn in a palette colour (a curve, band, point or bar).
fn is_data(e: &Element) -> bool {
    e.colour().is_some_and(|c| {
        (0..8).any(|i| {
            let p = crate::figures::color(i);
            c == format!("#{:02X}{:02X}{:02X}", p.0, p.1, p.2)
        })
    })
}

/// The rightmost x of the curves and bands of a figure (those drawn before its legend).
pub fn data_right(svg: &str) -> f64 {
    let els = elements(svg);
    let opacity = crate::figures::LEGEND_OPACITY.to_string();
    let end = els.iter().position(|e| e.attr("opacity") == Some(&opacity)).unwrap_or(els.len());
    els[..end]
        .iter()
        .filter(|e| is_data(e))
        .flat_map(Element::points)
        .fold(f64::NEG_INFINITY, |a, p| a.max(p.0))
}

/// The legend box (the rect drawn with the legend's opacity) and the number of data elements
/// (curves, bands and bars in palette colours, drawn before the legend) that it covers; `None`
/// when the figure has no legend.
pub fn legend_overlaps(svg: &str) -> Option<((f64, f64, f64, f64), usize)> {
    let els = elements(svg);
    let opacity = crate::figures::LEGEND_OPACITY.to_string();
    let at = els.iter().position(|e| e.tag == "rect" && e.attr("opacity") == Some(&opacity))?;
    let r = els[at].rect();
    let palette: Vec<String> = (0..8)
        .map(|i| {
            let c = crate::figures::color(i);
            format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
        })
        .collect();
    let data =
        els[..at].iter().filter(|e| e.colour().is_some_and(|c| palette.iter().any(|p| p == c)));
    let corners = [
        (r.0 + 1.0, r.1 + 1.0),
        (r.2 - 1.0, r.1 + 1.0),
        (r.0 + 1.0, r.3 - 1.0),
        (r.2 - 1.0, r.3 - 1.0),
    ];
    let covered = data
        .filter(|e| match e.tag.as_str() {
            "polyline" => e.points().windows(2).any(|w| segment_enters(w[0], w[1], r)),
            "polygon" => {
                let p = e.points();
                let closed: Vec<_> = p.iter().chain(p.first()).copied().collect();
                closed.windows(2).any(|w| segment_enters(w[0], w[1], r))
                    || corners.iter().any(|&c| inside_polygon(c, &p))
            }
            "rect" => {
                let b = e.rect();
                b.0 < r.2 - 0.5 && b.2 > r.0 + 0.5 && b.1 < r.3 - 0.5 && b.3 > r.1 + 0.5
            }
            "circle" => {
                let (x, y) = (e.num("cx"), e.num("cy"));
                x > r.0 && x < r.2 && y > r.1 && y < r.3
            }
            _ => false,
        })
        .count();
    Some((r, covered))
}
