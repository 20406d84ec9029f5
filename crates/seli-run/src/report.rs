//! Plain-text summaries printed by the CLI, rendered from the same records that go to JSON so
//! the two never disagree.

use std::fmt::Write;

use seli_io::record::{
    ClassRecord, CosinePairs, GeometryRecord, GroupPair, GroupRecord, LossGeometryRecord,
    ProfileRecord,
};

/// At most this many classes get a per-class table.
const PER_CLASS_MAX: usize = 12;
/// At most this many distinct singular values are listed.
const SPECTRUM_MAX: usize = 8;

/// A number for tables: six decimals, or scientific notation when very large or small.
pub fn num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e5 || x.abs() < 1e-3 {
        format!("{x:.4e}")
    } else {
        format!("{x:.6}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), num)
}

/// Runs of (value, multiplicity) of a non-increasing list, merging values equal to a relative
/// 1e-9.
fn runs(values: &[f64]) -> Vec<(f64, usize)> {
    let mut out: Vec<(f64, usize)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((u, m)) if (v - *u).abs() <= 1e-9 * u.abs().max(v.abs()) => *m += 1,
            _ => out.push((v, 1)),
        }
    }
    out
}

fn spectrum(values: &[f64]) -> String {
    let r = runs(values);
    let mut parts: Vec<String> = r
        .iter()
        .take(SPECTRUM_MAX)
        .map(|&(v, m)| if m > 1 { format!("{} (x{m})", num(v)) } else { num(v) })
        .collect();
    if r.len() > SPECTRUM_MAX {
        parts.push(format!("... ({} distinct values; all in --json)", r.len()));
    }
    parts.join(", ")
}

fn profile_line(p: &ProfileRecord) -> String {
    // Parameters as the user typed them (10, 0.5), not in table precision.
    let plain = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| v.to_string());
    let params = match p.kind.as_str() {
        "step" => format!(
            "R = {}, rho = {}, n_min = {}",
            plain(p.ratio),
            plain(p.rho),
            p.n_min.unwrap_or_default()
        ),
        "long-tail" => format!("n_max = {}, R = {}", p.n_max.unwrap_or_default(), plain(p.ratio)),
        "labels" => format!("from {}", p.source.as_deref().unwrap_or("labels")),
        _ => "explicit counts".into(),
    };
    format!("profile   {} (k = {}, n = {}): {params}", p.kind, p.k, p.n)
}

fn group_line(out: &mut String, label: &str, g: &GroupPair) {
    let _ = writeln!(out, "  {label:<22}{:>14}{:>14}", opt(g.majority), opt(g.minority));
}

fn cosine_line(out: &mut String, label: &str, c: &CosinePairs, etf: f64) {
    let _ = writeln!(
        out,
        "  {label:<22}{:>14}{:>14}{:>14}{:>14}",
        opt(c.maj_maj),
        opt(c.min_min),
        opt(c.maj_min),
        num(etf)
    );
}

/// The human-readable summary of `seli geometry`.
pub fn geometry_summary(rec: &GeometryRecord) -> String {
    let mut out = String::new();
    let p = &rec.profile;
    let k = p.k;
    let _ = writeln!(out, "SELI geometry (exact, class level, scale alpha = 1)");
    let _ = writeln!(out, "{}", profile_line(&rec.profile));
    let counts: Vec<(f64, usize)> = runs(&p.counts.iter().map(|&c| c as f64).collect::<Vec<_>>());
    if counts.len() <= SPECTRUM_MAX {
        let desc: Vec<String> = counts.iter().map(|(v, m)| format!("{m} x {v}")).collect();
        let _ = writeln!(out, "counts    {}", desc.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "SEL matrix Z_hat = P Y (k x n, rank {})", rec.sel.rank);
    let _ = writeln!(out, "  singular values       {}", spectrum(&rec.sel.singular_values));
    let _ = writeln!(
        out,
        "  nuclear norm          {}   (= ||W||_F^2 = ||H||_F^2)",
        num(rec.sel.nuclear_norm)
    );
    let _ = writeln!(
        out,
        "  ||Z_hat||_F^2         {}   (= n (1 - 1/k))",
        num(rec.sel.frobenius_norm_sq)
    );

    shape_tables(
        &mut out,
        k,
        rec.groups.as_ref(),
        &rec.classes,
        (&rec.matrices.cos_w, &rec.matrices.cos_mu),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "distance from SELI to the simplex ETF (normalized Frobenius; 0 = same shape, 2 = max)"
    );
    let _ = writeln!(
        out,
        "  dist_gw_seli_etf      {}   (classifier Gram G_W)",
        num(rec.distances.dist_gw_seli_etf)
    );
    let _ = writeln!(
        out,
        "  dist_gm_seli_etf      {}   (class-mean Gram G_M)",
        num(rec.distances.dist_gm_seli_etf)
    );
    if let Some(r) = &rec.realization {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "realization in d = {} (seed {}): W and M are d x k; max |W^T M - P| = {:.2e}",
            r.d, r.seed, r.wtm_residual
        );
    }
    out
}

/// Group norms and cosines, the per-class table (small k) or the cosine range (no groups).
fn shape_tables(
    out: &mut String,
    k: usize,
    groups: Option<&GroupRecord>,
    classes: &[ClassRecord],
    cos: (&[Vec<f64>], &[Vec<f64>]),
) {
    if let Some(g) = groups {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<22}{:>14}{:>14}", "by group", "majority", "minority");
        group_line(out, "||w_c||^2", &g.w_norm_sq);
        group_line(out, "||mu_c||^2", &g.mu_norm_sq);
        group_line(out, "cos(w_c, mu_c)", &g.cos_w_mu);
        let _ = writeln!(
            out,
            "  norm ratios           ||w_maj||^2/||w_min||^2 = {}   ||mu_maj||^2/||mu_min||^2 = {}",
            opt(g.norm_ratio_w),
            opt(g.norm_ratio_mu)
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<22}{:>14}{:>14}{:>14}{:>14}",
            "cosines", "maj-maj", "min-min", "maj-min", "ETF"
        );
        let etf = -1.0 / (k as f64 - 1.0);
        cosine_line(out, "classifiers w", &g.cos_w, etf);
        cosine_line(out, "class means mu", &g.cos_mu, etf);
    }
    if k <= PER_CLASS_MAX {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:>5} {:>10} {:>9} {:>14}{:>14}{:>14}",
            "class", "count", "group", "||w_c||", "||mu_c||", "cos(w_c,mu_c)"
        );
        for c in classes {
            let _ = writeln!(
                out,
                "  {:>5} {:>10} {:>9} {:>14}{:>14}{:>14}",
                c.class,
                c.count,
                c.group.unwrap_or("-"),
                num(c.w_norm),
                num(c.mu_norm),
                num(c.cos_w_mu)
            );
        }
    }
    if groups.is_none() {
        let off = |m: &[Vec<f64>]| {
            let v: Vec<f64> = (0..k)
                .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| m[i][j])
                .collect();
            (
                v.iter().cloned().fold(f64::INFINITY, f64::min),
                v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        let (wl, wh) = off(cos.0);
        let (ml, mh) = off(cos.1);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  cosines between classes (no majority/minority groups for this profile)"
        );
        let _ = writeln!(
            out,
            "  classifiers w         from {} to {}   (ETF: {})",
            num(wl),
            num(wh),
            num(-1.0 / (k as f64 - 1.0))
        );
        let _ = writeln!(out, "  class means mu        from {} to {}", num(ml), num(mh));
    }
}

/// The human-readable summary of `seli geometry --loss ...`: the loss, the certificate, the
/// target's shape and its distances to SELI and to the ETF.
pub fn loss_geometry_summary(rec: &LossGeometryRecord) -> String {
    let mut out = String::new();
    let k = rec.profile.k;
    let l = &rec.loss;
    let mut what = vec![format!("loss {}", l.loss)];
    if l.gamma != 0.0 || matches!(l.loss, "cdt" | "ldt" | "vs") {
        what.push(format!("gamma = {}", l.gamma));
    }
    if l.tau != 0.0 || matches!(l.loss, "la" | "vs") {
        what.push(format!("tau = {}", l.tau));
    }
    if l.bias {
        what.push("free bias".into());
    }
    let _ =
        writeln!(out, "implicit geometry of {} (max-margin limit, class level)", what.join(", "));
    let _ = writeln!(out, "{}", profile_line(&rec.profile));
    if k <= SPECTRUM_MAX {
        let _ = writeln!(
            out,
            "Delta     {}",
            l.delta.iter().map(|d| num(*d)).collect::<Vec<_>>().join(", ")
        );
    }
    let t = &rec.target;
    let _ = writeln!(out);
    let _ = writeln!(out, "max-margin solution B (k x k, rank {})", t.rank);
    let _ = writeln!(out, "  singular values       {}", spectrum(&t.singular_values));
    let _ = writeln!(
        out,
        "  ||B||_*               {}   (= ||W||_F^2 = ||H||_F^2; SELI: {})",
        num(t.nuclear_norm),
        num(t.sel_nuclear_norm)
    );
    let _ = writeln!(
        out,
        "  dual certificate      {}   gap {:.3e} ({}; {} ADMM iterations)",
        num(t.dual),
        t.gap,
        if t.certified { "optimal to the tolerance" } else { "NOT certified" },
        t.iters
    );
    if let Some(b) = &t.bias
        && k <= SPECTRUM_MAX
    {
        let _ = writeln!(
            out,
            "  bias b                {}",
            b.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", ")
        );
    }
    shape_tables(
        &mut out,
        k,
        rec.groups.as_ref(),
        &rec.classes,
        (&rec.matrices.cos_w, &rec.matrices.cos_mu),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "distance of the target to SELI and to the ETF (normalized Frobenius)");
    let d = &rec.distances;
    let _ = writeln!(
        out,
        "  dist_gw_seli          {}   dist_gw_etf   {}   (classifier Gram G_W)",
        num(d.dist_gw_seli),
        num(d.dist_gw_etf)
    );
    let _ = writeln!(
        out,
        "  dist_gm_seli          {}   dist_gm_etf   {}   (class-mean Gram G_M)",
        num(d.dist_gm_seli),
        num(d.dist_gm_etf)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_equal_values() {
        assert_eq!(runs(&[3.0, 3.0, 2.0, 1.0, 1.0 + 1e-12]), vec![(3.0, 2), (2.0, 1), (1.0, 2)]);
        assert_eq!(spectrum(&[2.0, 2.0, 1.0]), "2.000000 (x2), 1.000000");
    }

    #[test]
    fn numbers_switch_to_scientific_at_the_extremes() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1.5), "1.500000");
        assert_eq!(num(2e-5), "2.0000e-5");
        assert_eq!(num(3e7), "3.0000e7");
    }
}
