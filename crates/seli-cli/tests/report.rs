//! `seli report` on small UFM runs: every figure is written as SVG and inlined in the HTML.

mod common;

use common::{fails, ok};

/// A complete SVG document that an SVG parser (usvg) accepts, with text in it.
fn svg_ok(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with("<svg") || t.starts_with("<?xml"))
        && t.ends_with("</svg>")
        && t.contains("<text")
        && seli_report::png::svg_size(text).is_ok()
}

/// Every figure in `dir` is a valid SVG, and, where the machine has fonts, has a decodable
/// PNG twice its size beside it. Returns the figure names.
fn figures_ok(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "svg") {
            let svg = std::fs::read_to_string(&p).unwrap();
            assert!(svg_ok(&svg), "{} is not a valid SVG", p.display());
            if seli_report::png::fonts_available() {
                let (w, h) = seli_report::png::svg_size(&svg).unwrap();
                let png = std::fs::read(p.with_extension("png")).unwrap();
                let size = seli_report::png::png_size(&png).unwrap();
                let want = ((2.0 * w).round() as u32, (2.0 * h).round() as u32);
                assert_eq!(size, want, "{}", p.display());
            } else {
                eprintln!("no system fonts: PNG figures not checked");
            }
            names.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

#[test]
fn ufm_runs_get_figures_reports_and_a_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for r in ["1", "10"] {
        let dir = tmp.path().join(format!("R{r}"));
        ok(&[
            "ufm",
            "--step",
            &format!("4,{r},0.5,2"),
            "--d",
            "8",
            "--iters",
            "300",
            "--every",
            "30",
            "--out",
            dir.to_str().unwrap(),
        ]);
        dirs.push(dir);
    }
    let out = ok(&["report", dirs[1].to_str().unwrap()]);
    assert!(out.contains("report.html"), "{out}");
    let html = std::fs::read_to_string(dirs[1].join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for fig in
        ["distances", "norm-ratios", "cosines", "norms", "cosines-by-group", "gram-w", "gram-m"]
    {
        let svg = std::fs::read_to_string(dirs[1].join(format!("figures/{fig}.svg"))).unwrap();
        assert!(svg_ok(&svg), "{fig}.svg is not a complete SVG");
        assert!(html.contains(&format!("<figure id=\"{fig}\"><svg")), "{fig} not inlined");
    }
    assert!(html.contains("config.json") && html.contains("dist_gw_seli"));
    // The figures carry their legends and axis labels.
    let d = std::fs::read_to_string(dirs[1].join("figures/distances.svg")).unwrap();
    for label in ["G_W to SELI", "G_M to ETF", "iteration", "normalized distance"] {
        assert!(d.contains(label), "distances.svg lacks '{label}'");
    }

    let names = figures_ok(&dirs[1].join("figures"));
    assert_eq!(names.len(), 7, "{names:?}");

    let cmp = tmp.path().join("cmp.html");
    ok(&[
        "report",
        "--compare",
        dirs[0].to_str().unwrap(),
        dirs[1].to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&cmp).unwrap();
    assert_eq!(html.matches("<figure").count(), 2);
    assert!(html.contains("R1 to SELI") && html.contains("R10 to ETF"));
    assert_eq!(figures_ok(&tmp.path().join("figures")), vec!["compare-gm", "compare-gw"]);

    let e = fails(&["report", tmp.path().to_str().unwrap()]);
    assert!(e.contains("config.json"), "{e}");
    let e = fails(&["report", "--compare", dirs[0].to_str().unwrap()]);
    assert!(e.contains("at least two"), "{e}");
}

#[test]
fn geometry_and_ridge_path_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("g");
    ok(&["geometry", "--step", "6,10,0.5,2", "--figures", g.to_str().unwrap()]);
    assert_eq!(
        figures_ok(&g),
        vec!["seli-cosines-vs-ratio", "seli-grams", "seli-norm-ratio-vs-ratio"]
    );
    let r = tmp.path().join("r");
    ok(&[
        "ridge-path",
        "--step",
        "4,10,0.5,1",
        "--points",
        "5",
        "--out",
        tmp.path().join("p.csv").to_str().unwrap(),
        "--figures",
        r.to_str().unwrap(),
    ]);
    assert_eq!(figures_ok(&r), vec!["ridge-cosines", "ridge-distances", "ridge-norm-ratio"]);
    for f in ["ridge-distances", "ridge-cosines", "ridge-norm-ratio"] {
        let svg = std::fs::read_to_string(r.join(format!("{f}.svg"))).unwrap();
        assert!(svg.contains("λ*") && svg.contains("λ_mc"), "{f}: thresholds not marked");
        assert!(svg.contains("lambda"), "{f}: no axis label");
    }
}
