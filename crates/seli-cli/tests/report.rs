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

/// A short UFM run of the STEP profile `step` (K,R,RHO,N_MIN) into `dir`.
fn small_ufm(dir: &std::path::Path, step: &str) -> std::path::PathBuf {
    let out = dir.to_str().unwrap();
    ok(&["ufm", "--step", step, "--d", "8", "--iters", "300", "--every", "30", "--out", out]);
    dir.to_path_buf()
}

#[test]
fn ufm_runs_get_figures_reports_and_a_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for r in ["1", "10"] {
        dirs.push(small_ufm(&tmp.path().join(format!("R{r}")), &format!("4,{r},0.5,2")));
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

/// Headless Chromium (Debian's package; `SELI_CHROMIUM` overrides the path), or `None` where
/// it is not installed. CI installs it (scripts/install-browser.sh) and fails without it.
fn chromium() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("SELI_CHROMIUM")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(std::path::PathBuf::from));
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Chromium first (scripts/install-browser.sh)"
        );
        eprintln!("skipped: no Chromium here (scripts/install-browser.sh installs it)");
    }
    found
}

/// Loads `html` in headless Chromium with scripts/figure-check.js appended and returns what
/// the check found: (figures, legends, problems).
fn browser_check(browser: &std::path::Path, html: &std::path::Path) -> (u64, u64, Vec<String>) {
    let page = html.with_extension("check.html");
    let mut text = std::fs::read_to_string(html).unwrap();
    text.push_str("<script>\n");
    text.push_str(include_str!("../../../scripts/figure-check.js"));
    text.push_str("</script>\n");
    std::fs::write(&page, text).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .expect("Chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.rfind("<pre id=\"seli-check\">").unwrap_or_else(|| {
        panic!("no check result in the page: {}", String::from_utf8_lossy(&out.stderr))
    }) + "<pre id=\"seli-check\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let problems = v["problems"].as_array().unwrap().iter().map(|p| p.to_string()).collect();
    (v["figures"].as_u64().unwrap(), v["legends"].as_u64().unwrap(), problems)
}

/// One page inlining the SVG figures of `dirs` (what `--figures` writes).
fn figure_page(dirs: &[&std::path::Path], out: &std::path::Path) {
    let mut html = String::from("<!DOCTYPE html><html><body>\n");
    for d in dirs {
        let mut files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "svg"))
            .collect();
        files.sort();
        for p in files {
            let svg = std::fs::read_to_string(&p).unwrap();
            let svg = svg.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
            let name = p.file_stem().unwrap().to_string_lossy();
            html.push_str(&format!("<figure id=\"{name}\">{svg}</figure>\n"));
        }
    }
    html.push_str("</body></html>\n");
    std::fs::write(out, html).unwrap();
}

/// Every report and figure, as Chromium renders it: no text cut off at a figure's edge, no two
/// texts overlapping (ticks, labels, titles, marker labels), legend labels inside their box and
/// no curve, band or bar under a legend.
#[test]
fn reports_read_well_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = |name: &str, step: &str| small_ufm(&t.join(name), step);
    let (a, b) = (run("a", "4,1,0.5,2"), run("b", "6,20,0.5,2"));
    ok(&["report", b.to_str().unwrap()]);
    let cmp = t.join("cmp.html");
    ok(&[
        "report",
        "--compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    let sweep = t.join("sweep.toml");
    std::fs::write(
        &sweep,
        "command = \"ufm\"\n[base]\nk = 4\nn_min = 2\nd = 8\niters = 200\n\
         [grid]\nratio = [1, 10, 100]\nrho = [0.25, 0.5]\nseed = [0, 1]\n",
    )
    .unwrap();
    ok(&["sweep", sweep.to_str().unwrap(), "--out", t.join("sw").to_str().unwrap()]);
    let (g10, g100, rp) = (t.join("g10"), t.join("g100"), t.join("rp"));
    ok(&["geometry", "--step", "10,10,0.5", "--figures", g10.to_str().unwrap()]);
    ok(&["geometry", "--long-tail", "100,5000,100", "--figures", g100.to_str().unwrap()]);
    ok(&[
        "ridge-path",
        "--step",
        "4,10,0.5,1",
        "--out",
        t.join("p.csv").to_str().unwrap(),
        "--figures",
        rp.to_str().unwrap(),
    ]);
    let figs = t.join("figures.html");
    figure_page(&[&g10, &g100, &rp], &figs);
    let pages = [
        (b.join("report.html"), 7, 5),
        (cmp, 2, 2),
        (t.join("sw/report.html"), 5, 5),
        (figs, 7, 5),
    ];
    for (page, figures, legends) in pages {
        let (f, l, problems) = browser_check(&browser, &page);
        assert!(problems.is_empty(), "{}: {problems:#?}", page.display());
        assert_eq!((f, l), (figures, legends), "{}: figures and legends checked", page.display());
    }
}
