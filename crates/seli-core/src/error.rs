//! The one error type of `seli-core`.
//!
//! Every variant carries the offending value so that a message printed by the CLI names it.

use thiserror::Error;

/// Errors from building profiles, computing geometry and running solvers.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer than two classes.
    #[error("k = {k}: need at least 2 classes")]
    TooFewClasses {
        /// The number of classes given.
        k: usize,
    },
    /// More classes than a computation supports.
    #[error("k = {k} classes is more than {what} supports (at most {max})")]
    TooManyClasses {
        /// The number of classes given.
        k: usize,
        /// The limit.
        max: usize,
        /// What imposes it.
        what: &'static str,
    },
    /// A realization too large to hold in memory.
    #[error(
        "a realization in d = {d} dimensions with k = {k} classes has {entries} entries, \
             more than the {max} allowed"
    )]
    RealizationTooLarge {
        /// Requested dimension.
        d: usize,
        /// Number of classes.
        k: usize,
        /// d * k.
        entries: u128,
        /// Limit on d * k.
        max: u128,
    },
    /// A class with no samples.
    #[error("class {class} is empty (0 samples){context}")]
    EmptyClass {
        /// The empty class.
        class: usize,
        /// Extra explanation, starting with a separator, or empty.
        context: String,
    },
    /// The imbalance ratio R is not a finite number >= 1.
    #[error("imbalance ratio R = {ratio}: must be a finite number >= 1")]
    InvalidRatio {
        /// The ratio given.
        ratio: f64,
    },
    /// The minority fraction rho is not a finite number strictly between 0 and 1.
    #[error("minority fraction rho = {rho}: must be a finite number with 0 < rho < 1")]
    InvalidRho {
        /// The fraction given.
        rho: f64,
    },
    /// rho*k is not a positive integer, or (1-rho)*k is not.
    #[error(
        "STEP profile with k = {k}, rho = {rho}: {what} = {value} is not a positive integer \
         (need a whole number of minority and of majority classes)"
    )]
    StepClassSplit {
        /// Number of classes.
        k: usize,
        /// Minority fraction.
        rho: f64,
        /// Which product failed: `"rho*k"` or `"(1-rho)*k"`.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// R * n_min is not a whole number of samples.
    #[error(
        "STEP profile: R*n_min = {ratio}*{n_min} = {value} is not a whole number of samples \
         (pick n_min so that R*n_min is whole; the geometry depends on R only)"
    )]
    StepMajorityCount {
        /// Imbalance ratio.
        ratio: f64,
        /// Minority class size.
        n_min: u64,
        /// Their product.
        value: f64,
    },
    /// A class size parameter is zero.
    #[error("{name} = 0: must be at least 1")]
    ZeroSize {
        /// Which parameter (`n_min`, `n_max`).
        name: &'static str,
    },
    /// The total number of samples does not fit in a u64.
    #[error("total sample count overflows 64 bits")]
    CountOverflow,
    /// No labels were given.
    #[error("no labels given: cannot infer class counts from an empty label list")]
    NoLabels,
    /// A negative label.
    #[error("label {label} at position {index} is negative")]
    NegativeLabel {
        /// Position in the label list (0-based).
        index: usize,
        /// The label value.
        label: i64,
    },
    /// A label at or above the declared number of classes.
    #[error("label {label} at position {index} is out of range for k = {k} classes")]
    LabelOutOfRange {
        /// Position in the label list (0-based).
        index: usize,
        /// The label value.
        label: i64,
        /// Declared number of classes.
        k: usize,
    },
    /// Embedding dimension below k-1: SELI cannot be realized.
    #[error("embedding dimension d = {d} is below k-1 = {} (k = {k} classes)", k - 1)]
    DimensionTooSmall {
        /// Requested dimension.
        d: usize,
        /// Number of classes.
        k: usize,
    },
    /// Two matrices that must have the same shape do not.
    #[error("shape mismatch: {left} is {lr}x{lc} but {right} is {rr}x{rc}")]
    ShapeMismatch {
        /// Name of the first matrix.
        left: &'static str,
        /// Rows of the first.
        lr: usize,
        /// Columns of the first.
        lc: usize,
        /// Name of the second matrix.
        right: &'static str,
        /// Rows of the second.
        rr: usize,
        /// Columns of the second.
        rc: usize,
    },
    /// A matrix whose Frobenius norm is zero or not finite where a direction is needed.
    #[error("{what} has Frobenius norm {norm}: its direction is undefined")]
    DegenerateNorm {
        /// Which matrix.
        what: &'static str,
        /// Its norm.
        norm: f64,
    },
    /// A solver parameter outside its range.
    #[error("{name} = {value}: {rule}")]
    InvalidParameter {
        /// The parameter, as named on the command line where it has a flag.
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The iterates left the finite numbers.
    #[error("diverged at iteration {iter}: {quantity} = {value} (try a smaller learning rate)")]
    Diverged {
        /// The iteration at which a non-finite value appeared.
        iter: u64,
        /// What became non-finite.
        quantity: &'static str,
        /// Its value.
        value: f64,
    },
    /// An observer (file writer, checkpointer) failed; the message is its error chain.
    #[error("{0}")]
    Observer(String),
    /// The interrupt flag was raised in the middle of an iteration, which is left unfinished
    /// (solvers whose iterations are long, such as a training epoch, check it themselves).
    #[error("interrupted during iteration {iter}")]
    Interrupted {
        /// The unfinished iteration.
        iter: u64,
    },
    /// A decomposition from the linear-algebra backend failed to converge.
    #[error("{what} did not converge")]
    Decomposition {
        /// Which decomposition.
        what: &'static str,
    },
}

/// Result alias for `seli-core`.
pub type Result<T> = std::result::Result<T, Error>;
