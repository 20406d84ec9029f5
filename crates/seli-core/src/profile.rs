//! Class-count profiles (docs/theory.md §4).
//!
//! A [`Profile`] is the vector of class counts `n_0..n_{k-1}` (all positive, `k >= 2`) that
//! the whole SELI geometry depends on, plus, where the profile defines one, the split of the
//! classes into majorities and minorities. Profiles are checked once, when built: every
//! constructor returns an [`Error`] naming the bad value instead of a profile that would make
//! the geometry meaningless.
//!
//! - (R, ρ)-STEP: the first `(1-ρ)k` classes are majorities with `R·n_min` samples, the last
//!   `ρk` classes minorities with `n_min` samples ([`Profile::step`]).
//! - Exponential long tail: `n_c = round(n_max · R^{-c/(k-1)})` ([`Profile::long_tail`]).
//! - Explicit counts ([`Profile::from_counts`]) or counts of a label list
//!   ([`Profile::from_labels`]).

use crate::error::{Error, Result};

/// Whether a class is a majority or a minority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// One of the large classes.
    Majority,
    /// One of the small classes.
    Minority,
}

impl Group {
    /// Lower-case name, stable for file formats: `"majority"` or `"minority"`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Majority => "majority",
            Group::Minority => "minority",
        }
    }
}

/// How a profile was specified, with its parameters, for records and reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileKind {
    /// (R, ρ)-STEP imbalance.
    Step {
        /// Imbalance ratio R = n_maj / n_min (>= 1).
        ratio: f64,
        /// Minority fraction ρ: the share of classes that are minorities.
        rho: f64,
        /// Size of each minority class.
        n_min: u64,
    },
    /// Exponential long tail.
    LongTail {
        /// Size of class 0, the largest.
        n_max: u64,
        /// Ratio between the largest and the smallest class before rounding.
        ratio: f64,
    },
    /// Explicit class counts.
    Counts,
    /// Counts of a list of labels.
    Labels,
}

impl ProfileKind {
    /// Stable lower-case name: `step`, `long-tail`, `counts` or `labels`.
    pub fn name(&self) -> &'static str {
        match self {
            ProfileKind::Step { .. } => "step",
            ProfileKind::LongTail { .. } => "long-tail",
            ProfileKind::Counts => "counts",
            ProfileKind::Labels => "labels",
        }
    }
}

/// A checked class-count profile: `k >= 2` classes, every one non-empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    counts: Vec<u64>,
    groups: Option<Vec<Group>>,
    kind: ProfileKind,
}

/// Tolerance for "this floating-point product is a whole number": a few ulps of the value.
fn near_integer(x: f64) -> Option<u64> {
    let r = x.round();
    let tol = 8.0 * f64::EPSILON * r.abs().max(1.0);
    ((x - r).abs() <= tol && r >= 0.0 && r < u64::MAX as f64).then_some(r as u64)
}

/// Largest number of classes a profile may have (its count vector is allocated up front).
pub const MAX_PROFILE_CLASSES: usize = 1_000_000;

fn check_k(k: usize) -> Result<()> {
    if k < 2 {
        return Err(Error::TooFewClasses { k });
    }
    if k > MAX_PROFILE_CLASSES {
        return Err(Error::TooManyClasses { k, max: MAX_PROFILE_CLASSES, what: "a profile" });
    }
    Ok(())
}

fn check_ratio(ratio: f64) -> Result<()> {
    if !ratio.is_finite() || ratio < 1.0 {
        return Err(Error::InvalidRatio { ratio });
    }
    Ok(())
}

impl Profile {
    /// The (R, ρ)-STEP profile: `(1-ρ)k` majority classes of `R·n_min` samples first, then
    /// `ρk` minority classes of `n_min` samples. `R = 1` is balanced (the groups are still
    /// defined by position).
    ///
    /// # Errors
    /// `k < 2`; `R` not finite or below 1; `ρ` not in (0, 1); `ρk` or `(1-ρ)k` not a
    /// positive integer; `n_min = 0`; `R·n_min` not a whole number.
    ///
    /// ```
    /// use seli_core::{Group, Profile};
    /// let p = Profile::step(4, 10.0, 0.5, 2).unwrap();
    /// assert_eq!(p.counts(), &[20, 20, 2, 2]);
    /// assert_eq!(p.group(3), Some(Group::Minority));
    /// assert!(Profile::step(10, 10.0, 0.25, 1).is_err()); // rho*k = 2.5
    /// ```
    pub fn step(k: usize, ratio: f64, rho: f64, n_min: u64) -> Result<Self> {
        check_k(k)?;
        check_ratio(ratio)?;
        if !rho.is_finite() || rho <= 0.0 || rho >= 1.0 {
            return Err(Error::InvalidRho { rho });
        }
        let split = |what, value: f64| match near_integer(value) {
            Some(v) if v >= 1 => Ok(v as usize),
            _ => Err(Error::StepClassSplit { k, rho, what, value }),
        };
        let k_min = split("rho*k", rho * k as f64)?;
        let k_maj = split("(1-rho)*k", (1.0 - rho) * k as f64)?;
        if k_min + k_maj != k {
            // Only reachable through rounding at the very edge of the tolerance.
            return Err(Error::StepClassSplit { k, rho, what: "rho*k", value: rho * k as f64 });
        }
        if n_min == 0 {
            return Err(Error::ZeroSize { name: "n_min" });
        }
        let maj = ratio * n_min as f64;
        let n_maj =
            near_integer(maj).ok_or(Error::StepMajorityCount { ratio, n_min, value: maj })?;
        let mut counts = vec![n_maj; k_maj];
        counts.extend(std::iter::repeat_n(n_min, k_min));
        let mut groups = vec![Group::Majority; k_maj];
        groups.extend(std::iter::repeat_n(Group::Minority, k_min));
        Self::build(counts, Some(groups), ProfileKind::Step { ratio, rho, n_min })
    }

    /// The exponential long tail `n_c = round(n_max · R^{-c/(k-1)})`, `c = 0..k-1`.
    /// Majority/minority groups are not defined for it.
    ///
    /// # Errors
    /// `k < 2`; `n_max = 0`; `R` not finite or below 1; a class that rounds to 0 samples.
    ///
    /// ```
    /// use seli_core::Profile;
    /// let p = Profile::long_tail(3, 100, 100.0).unwrap();
    /// assert_eq!(p.counts(), &[100, 10, 1]);
    /// ```
    pub fn long_tail(k: usize, n_max: u64, ratio: f64) -> Result<Self> {
        check_k(k)?;
        if n_max == 0 {
            return Err(Error::ZeroSize { name: "n_max" });
        }
        check_ratio(ratio)?;
        let mut counts = Vec::with_capacity(k);
        for c in 0..k {
            let exact = n_max as f64 * ratio.powf(-(c as f64) / (k - 1) as f64);
            let n = exact.round() as u64;
            if n == 0 {
                return Err(Error::EmptyClass {
                    class: c,
                    context: format!(
                        " (long tail: n_max*R^(-c/(k-1)) = {n_max}*{ratio}^(-{c}/{}) = {exact:.4} \
                         rounds to 0; raise n_max or lower R)",
                        k - 1
                    ),
                });
            }
            counts.push(n);
        }
        Self::build(counts, None, ProfileKind::LongTail { n_max, ratio })
    }

    /// Explicit class counts. When the counts take exactly two distinct values, the classes
    /// with the larger one are majorities and the others minorities (the profile is a STEP
    /// in disguise); otherwise groups are undefined.
    ///
    /// # Errors
    /// Fewer than two counts; a zero count.
    pub fn from_counts(counts: Vec<u64>) -> Result<Self> {
        let groups = two_level_groups(&counts);
        Self::build(counts, groups, ProfileKind::Counts)
    }

    /// Class counts of a label list, with labels in `0..k`. When `num_classes` is `None`,
    /// `k` is the largest label plus one. Groups as in [`Profile::from_counts`].
    ///
    /// # Errors
    /// No labels; a negative label; a label `>= num_classes`; fewer than two classes; a
    /// class in `0..k` with no label.
    ///
    /// ```
    /// use seli_core::Profile;
    /// let p = Profile::from_labels([0, 1, 1, 2, 1], None).unwrap();
    /// assert_eq!(p.counts(), &[1, 3, 1]);
    /// ```
    pub fn from_labels<I>(labels: I, num_classes: Option<usize>) -> Result<Self>
    where
        I: IntoIterator<Item = i64>,
    {
        let labels: Vec<i64> = labels.into_iter().collect();
        if labels.is_empty() {
            return Err(Error::NoLabels);
        }
        let mut max = 0;
        for (index, &label) in labels.iter().enumerate() {
            if label < 0 {
                return Err(Error::NegativeLabel { index, label });
            }
            if let Some(k) = num_classes.filter(|&k| label as u64 >= k as u64) {
                return Err(Error::LabelOutOfRange { index, label, k });
            }
            max = max.max(label as u64);
        }
        let k = match num_classes {
            Some(k) => k as u64,
            None => max + 1,
        };
        // With more classes than labels some class is empty: find it without allocating k.
        if k > labels.len() as u64 {
            let seen: std::collections::BTreeSet<u64> = labels.iter().map(|&l| l as u64).collect();
            let class = (0..).find(|c| !seen.contains(c)).expect("fewer labels than classes");
            return Err(Error::EmptyClass {
                class: class as usize,
                context: format!(" (k = {k} classes but only {} labels)", labels.len()),
            });
        }
        let mut counts = vec![0u64; k as usize];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        let groups = two_level_groups(&counts);
        Self::build(counts, groups, ProfileKind::Labels)
    }

    fn build(counts: Vec<u64>, groups: Option<Vec<Group>>, kind: ProfileKind) -> Result<Self> {
        check_k(counts.len())?;
        if let Some(class) = counts.iter().position(|&n| n == 0) {
            return Err(Error::EmptyClass { class, context: String::new() });
        }
        counts.iter().try_fold(0u64, |acc, &n| acc.checked_add(n)).ok_or(Error::CountOverflow)?;
        Ok(Profile { counts, groups, kind })
    }

    /// Number of classes `k`.
    pub fn k(&self) -> usize {
        self.counts.len()
    }

    /// Class counts `n_0..n_{k-1}`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The label of every sample with the samples sorted by class (class 0's first): the
    /// column order of the UFM's `H`.
    pub fn sorted_labels(&self) -> Vec<u32> {
        self.counts()
            .iter()
            .enumerate()
            .flat_map(|(c, &m)| std::iter::repeat_n(c as u32, m as usize))
            .collect()
    }

    /// Total number of samples `n`.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Smallest class count.
    pub fn n_min(&self) -> u64 {
        *self.counts.iter().min().expect("a profile has k >= 2 classes")
    }

    /// Largest class count.
    pub fn n_max(&self) -> u64 {
        *self.counts.iter().max().expect("a profile has k >= 2 classes")
    }

    /// Per-class groups, where the profile defines them.
    pub fn groups(&self) -> Option<&[Group]> {
        self.groups.as_deref()
    }

    /// Group of class `c`, where defined.
    pub fn group(&self, c: usize) -> Option<Group> {
        self.groups.as_ref().map(|g| g[c])
    }

    /// How the profile was specified.
    pub fn kind(&self) -> &ProfileKind {
        &self.kind
    }

    /// The same profile with classes reordered: class `c` of the result is class `perm[c]`
    /// of `self`. The kind becomes [`ProfileKind::Counts`].
    ///
    /// # Panics
    /// If `perm` is not a permutation of `0..k`.
    pub fn permuted(&self, perm: &[usize]) -> Profile {
        let mut hit = vec![false; self.k()];
        assert_eq!(perm.len(), self.k(), "permutation length must equal k");
        for &p in perm {
            assert!(p < self.k() && !hit[p], "not a permutation of 0..k: {perm:?}");
            hit[p] = true;
        }
        Profile {
            counts: perm.iter().map(|&p| self.counts[p]).collect(),
            groups: self.groups.as_ref().map(|g| perm.iter().map(|&p| g[p]).collect()),
            kind: ProfileKind::Counts,
        }
    }
}

/// Majority/minority split of counts that take exactly two distinct values.
fn two_level_groups(counts: &[u64]) -> Option<Vec<Group>> {
    let hi = *counts.iter().max()?;
    let lo = *counts.iter().min()?;
    if hi == lo || counts.iter().any(|&n| n != hi && n != lo) {
        return None;
    }
    Some(counts.iter().map(|&n| if n == hi { Group::Majority } else { Group::Minority }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_layout_majorities_first() {
        let p = Profile::step(10, 100.0, 0.5, 3).unwrap();
        assert_eq!(p.counts(), &[300, 300, 300, 300, 300, 3, 3, 3, 3, 3]);
        assert_eq!(p.n(), 1515);
        assert_eq!(p.groups().unwrap().iter().filter(|g| **g == Group::Minority).count(), 5);
    }

    #[test]
    fn step_single_minority_and_fractional_rho() {
        let p = Profile::step(10, 10.0, 0.1, 1).unwrap();
        assert_eq!(p.group(9), Some(Group::Minority));
        assert_eq!(p.group(8), Some(Group::Majority));
        // rho = 1/3 with k = 9 is 3 minorities despite 1/3 being inexact in binary.
        let p = Profile::step(9, 2.0, 1.0 / 3.0, 5).unwrap();
        assert_eq!(p.counts(), &[10, 10, 10, 10, 10, 10, 5, 5, 5]);
        // Non-integer R is fine when R*n_min is whole.
        assert_eq!(Profile::step(2, 2.5, 0.5, 2).unwrap().counts(), &[5, 2]);
    }

    #[test]
    fn step_rejections_name_the_value() {
        let e = Profile::step(10, 10.0, 0.25, 1).unwrap_err();
        assert!(e.to_string().contains("rho*k = 2.5"), "{e}");
        let e = Profile::step(1, 10.0, 0.5, 1).unwrap_err();
        assert!(e.to_string().contains("k = 1"), "{e}");
        let e = Profile::step(4, 0.5, 0.5, 1).unwrap_err();
        assert!(e.to_string().contains("R = 0.5"), "{e}");
        let e = Profile::step(4, f64::NAN, 0.5, 1).unwrap_err();
        assert!(e.to_string().contains("R = NaN"), "{e}");
        let e = Profile::step(4, 10.0, 1.0, 1).unwrap_err();
        assert!(e.to_string().contains("rho = 1"), "{e}");
        let e = Profile::step(4, 10.0, 0.0, 1).unwrap_err();
        assert!(e.to_string().contains("rho = 0"), "{e}");
        let e = Profile::step(4, 10.0, 0.5, 0).unwrap_err();
        assert!(e.to_string().contains("n_min = 0"), "{e}");
        let e = Profile::step(4, 2.5, 0.5, 1).unwrap_err();
        assert!(e.to_string().contains("= 2.5 is not a whole number"), "{e}");
        let e = Profile::step(3, 10.0, 0.9, 1).unwrap_err();
        assert!(e.to_string().contains("rho*k = 2.7"), "{e}");
    }

    #[test]
    fn long_tail_counts_and_rejections() {
        let p = Profile::long_tail(5, 1000, 100.0).unwrap();
        // 1000 * 100^(-c/4) = 1000, 316.23, 100, 31.62, 10
        assert_eq!(p.counts(), &[1000, 316, 100, 32, 10]);
        assert!(p.groups().is_none());
        let e = Profile::long_tail(3, 1, 10.0).unwrap_err();
        assert!(e.to_string().contains("class 1 is empty"), "{e}");
        assert!(Profile::long_tail(1, 10, 2.0).is_err());
        assert!(Profile::long_tail(3, 0, 2.0).unwrap_err().to_string().contains("n_max = 0"));
        assert!(Profile::long_tail(3, 10, f64::INFINITY).unwrap_err().to_string().contains("inf"));
    }

    #[test]
    fn counts_groups_only_for_two_levels() {
        let p = Profile::from_counts(vec![50, 5, 50, 5]).unwrap();
        assert_eq!(
            p.groups().unwrap(),
            &[Group::Majority, Group::Minority, Group::Majority, Group::Minority]
        );
        assert!(Profile::from_counts(vec![3, 3, 3]).unwrap().groups().is_none());
        assert!(Profile::from_counts(vec![3, 2, 1]).unwrap().groups().is_none());
        let e = Profile::from_counts(vec![3, 0, 1]).unwrap_err();
        assert!(e.to_string().contains("class 1 is empty"), "{e}");
        assert!(Profile::from_counts(vec![7]).unwrap_err().to_string().contains("k = 1"));
        assert!(Profile::from_counts(vec![u64::MAX, 1]).is_err());
    }

    #[test]
    fn labels_counted_and_checked() {
        let p = Profile::from_labels([2, 0, 2, 1, 2], None).unwrap();
        assert_eq!(p.counts(), &[1, 1, 3]);
        assert_eq!(p.kind(), &ProfileKind::Labels);
        let e = Profile::from_labels([0, 1, -4], None).unwrap_err();
        assert!(e.to_string().contains("label -4 at position 2"), "{e}");
        let e = Profile::from_labels([0, 1, 5], Some(3)).unwrap_err();
        assert!(e.to_string().contains("label 5 at position 2"), "{e}");
        let e = Profile::from_labels([0, 2, 2], None).unwrap_err();
        assert!(e.to_string().contains("class 1 is empty"), "{e}");
        let e = Profile::from_labels([0, 1], Some(3)).unwrap_err();
        assert!(e.to_string().contains("class 2 is empty"), "{e}");
        assert!(matches!(Profile::from_labels([], None).unwrap_err(), Error::NoLabels));
        assert!(Profile::from_labels([0, 0], None).unwrap_err().to_string().contains("k = 1"));
        // Huge labels or class counts are caught without allocating k counters.
        let e = Profile::from_labels([0, 1, 1_000_000_000_000], None).unwrap_err();
        assert!(
            e.to_string()
                .contains("class 2 is empty (0 samples) (k = 1000000000001 classes but only 3"),
            "{e}"
        );
        let e = Profile::from_labels([1, 0], Some(usize::MAX)).unwrap_err();
        assert!(e.to_string().contains("class 2 is empty"), "{e}");
        let e = Profile::step(1 << 40, 2.0, 0.5, 1).unwrap_err();
        assert!(e.to_string().contains("at most 1000000"), "{e}");
    }

    #[test]
    fn permutation_moves_counts_and_groups() {
        let p = Profile::step(4, 10.0, 0.5, 1).unwrap();
        let q = p.permuted(&[2, 0, 3, 1]);
        assert_eq!(q.counts(), &[1, 10, 1, 10]);
        assert_eq!(q.group(0), Some(Group::Minority));
    }
}
