//! PNG copies of the SVG figures, rasterized by resvg with the system's fonts.

use std::sync::OnceLock;

use resvg::{tiny_skia, usvg};

/// Rasterization options with the system fonts loaded once (`sans-serif` maps to DejaVu Sans
/// or Liberation Sans when installed).
fn options() -> &'static usvg::Options<'static> {
    static OPTIONS: OnceLock<usvg::Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut opt = usvg::Options::default();
        let db = opt.fontdb_mut();
        db.load_system_fonts();
        let has = |name: &str| db.faces().any(|f| f.families.iter().any(|(n, _)| n == name));
        if let Some(family) =
            ["DejaVu Sans", "Liberation Sans", "Noto Sans"].into_iter().find(|n| has(n))
        {
            db.set_sans_serif_family(family);
        }
        opt
    })
}

/// True when some system font is available, so that PNG figures carry their text.
pub fn fonts_available() -> bool {
    !options().fontdb.is_empty()
}

/// Renders an SVG document to PNG at `scale` times its size.
///
/// # Errors
/// An SVG the renderer rejects; an empty image.
pub fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    let tree =
        usvg::Tree::from_str(svg, options()).map_err(|e| format!("cannot render the SVG: {e}"))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or("empty figure")?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty figure")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("PNG encoding failed: {e}"))
}

/// Checks that `svg` is a well-formed SVG document the renderer accepts; returns its size.
///
/// # Errors
/// A document the SVG parser rejects.
pub fn svg_size(svg: &str) -> Result<(f32, f32), String> {
    let tree = usvg::Tree::from_str(svg, options()).map_err(|e| format!("invalid SVG: {e}"))?;
    Ok((tree.size().width(), tree.size().height()))
}

/// Decodes a PNG file's bytes; returns its size.
///
/// # Errors
/// Bytes that are not a decodable PNG.
pub fn png_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    let p = tiny_skia::Pixmap::decode_png(bytes).map_err(|e| format!("invalid PNG: {e}"))?;
    Ok((p.width(), p.height()))
}
