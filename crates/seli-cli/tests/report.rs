//! `seli report` on small UFM runs: every figure is written as SVG and inlined in the HTML.

mod common;

use common::{fails, ok};

fn svg_ok(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with("<svg") || t.starts_with("<?xml"))
        && t.ends_with("</svg>")
        && t.contains("<text")
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
    // PNG copies, rasterized with the system fonts (present on the development and CI machines).
    if seli_report::png::fonts_available() {
        for fig in ["distances", "gram-w"] {
            let png = std::fs::read(dirs[1].join(format!("figures/{fig}.png"))).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000, "{fig}.png");
        }
    } else {
        eprintln!("no system fonts: PNG figures not checked");
    }
    // The figures carry their legends and axis labels.
    let d = std::fs::read_to_string(dirs[1].join("figures/distances.svg")).unwrap();
    for label in ["G_W to SELI", "G_M to ETF", "iteration", "normalized distance"] {
        assert!(d.contains(label), "distances.svg lacks '{label}'");
    }

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
    assert!(svg_ok(&std::fs::read_to_string(tmp.path().join("figures/compare-gw.svg")).unwrap()));

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
    for f in ["seli-grams", "seli-cosines-vs-ratio", "seli-norm-ratio-vs-ratio"] {
        let svg = std::fs::read_to_string(g.join(format!("{f}.svg"))).unwrap();
        assert!(svg_ok(&svg), "{f}");
    }
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
    for f in ["ridge-distances", "ridge-cosines", "ridge-norm-ratio"] {
        let svg = std::fs::read_to_string(r.join(format!("{f}.svg"))).unwrap();
        assert!(svg_ok(&svg), "{f}");
        assert!(svg.contains("λ*") && svg.contains("λ_mc"), "{f}: thresholds not marked");
        assert!(svg.contains("lambda"), "{f}: no axis label");
    }
}
