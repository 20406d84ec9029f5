//! Iterative solvers in three pieces (after argmin): a [`Solver`] computes one iteration
//! from a state; the [`Executor`] owns the loop, the iteration limit, the solver's stopping
//! rule and interruption; [`Observer`]s (metrics recorders, file writers, progress bars,
//! checkpointers) are fired on their own [`Schedule`], so the math never prints.

pub mod ridge;
pub mod svm;
pub mod ufm;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use faer::{Mat, MatRef};

use crate::error::{Error, Result};

/// What every solver state exposes to the executor and observers.
pub trait IterState {
    /// Iterations completed so far (0 before the first).
    fn iter(&self) -> u64;
}

/// Computes one iteration at a time.
pub trait Solver {
    /// The state it advances.
    type State: IterState;

    /// Advances `state` by one iteration.
    ///
    /// # Errors
    /// Numerical failure (divergence, NaN), with the iteration named.
    fn next_iter(&mut self, state: &mut Self::State) -> Result<()>;

    /// The solver's own stopping rule, checked before every iteration (and once at the end).
    fn terminate(&self, _state: &Self::State) -> Option<Termination> {
        None
    }
}

/// A boxed solver solves (so that a run can choose its solver at run time).
impl<S: Solver + ?Sized> Solver for Box<S> {
    type State = S::State;
    fn next_iter(&mut self, state: &mut Self::State) -> Result<()> {
        (**self).next_iter(state)
    }
    fn terminate(&self, state: &Self::State) -> Option<Termination> {
        (**self).terminate(state)
    }
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Termination {
    /// The iteration limit was reached.
    MaxIters,
    /// The solver's stopping rule fired; the text says which and with what value.
    Converged(String),
    /// The interrupt flag was raised (Ctrl-C).
    Interrupted,
}

impl Termination {
    /// Stable lower-case name for records: `max-iters`, `converged`, `interrupted`.
    pub fn name(&self) -> &'static str {
        match self {
            Termination::MaxIters => "max-iters",
            Termination::Converged(_) => "converged",
            Termination::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Termination::MaxIters => write!(f, "reached the iteration limit"),
            Termination::Converged(why) => write!(f, "converged: {why}"),
            Termination::Interrupted => write!(f, "interrupted"),
        }
    }
}

/// When an observer fires, by iteration number. Every schedule fires at the start of a run
/// and at its end, whatever the iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Every `n` iterations (`n >= 1`).
    Every(u64),
    /// About `per_decade` times per factor of ten, on integer iterations (1, 2, 3, ...,
    /// then spreading out), so that log-x plots get even coverage.
    LogSpaced {
        /// Points per decade (>= 1).
        per_decade: u32,
    },
    /// Only at the start and the end.
    Ends,
}

impl Schedule {
    /// Whether to fire at iteration `t` (start and end are handled by the executor).
    pub fn fires(&self, t: u64) -> bool {
        match *self {
            Schedule::Every(n) => n > 0 && t.is_multiple_of(n),
            Schedule::LogSpaced { per_decade } => {
                if t == 0 {
                    return true;
                }
                // t fires when a grid point 10^(j/per_decade) lies in (t-1, t], i.e. when
                // the number of grid points <= t changes: so powers of ten always fire.
                let p = per_decade.max(1) as f64;
                let idx = |x: u64| (p * (x as f64).log10() + 1e-9).floor() as i64;
                t == 1 || idx(t) != idx(t - 1)
            }
            Schedule::Ends => false,
        }
    }
}

/// Something fired while a solver runs. All methods default to doing nothing.
pub trait Observer<S> {
    /// Before the first iteration (also on resume, at the resumed iteration).
    fn observe_init(&mut self, _state: &S) -> Result<()> {
        Ok(())
    }
    /// After an iteration on which the observer's schedule fires.
    fn observe_iter(&mut self, _state: &S) -> Result<()> {
        Ok(())
    }
    /// When the run stops for any reason other than an error.
    fn observe_final(&mut self, _state: &S, _why: &Termination) -> Result<()> {
        Ok(())
    }
}

/// A borrowed observer observes too, so that its owner can read it after the run.
impl<S, O: Observer<S> + ?Sized> Observer<S> for &mut O {
    fn observe_init(&mut self, state: &S) -> Result<()> {
        (**self).observe_init(state)
    }
    fn observe_iter(&mut self, state: &S) -> Result<()> {
        (**self).observe_iter(state)
    }
    fn observe_final(&mut self, state: &S, why: &Termination) -> Result<()> {
        (**self).observe_final(state, why)
    }
}

/// Singular-value soft-thresholding: `U max(Σ − τ, 0) Vᵀ` (the prox of `τ‖·‖_*`), and the
/// nuclear norm of the result.
#[allow(non_snake_case)]
pub(crate) fn svt(A: MatRef<'_, f64>, tau: f64) -> Result<(Mat<f64>, f64)> {
    let svd = A
        .thin_svd()
        .map_err(|_| Error::Decomposition { what: "SVD in singular-value thresholding" })?;
    let s = svd.S().column_vector();
    let shrunk: Vec<f64> = (0..s.nrows()).map(|i| (s[i] - tau).max(0.0)).collect();
    let (U, V) = (svd.U(), svd.V());
    // U diag(shrunk) Vᵀ over the singular values that survive, as one matrix product.
    let r = shrunk.iter().take_while(|&&x| x > 0.0).count();
    let us = Mat::from_fn(A.nrows(), r, |i, q| U[(i, q)] * shrunk[q]);
    let out = us * V.subcols(0, r).transpose();
    Ok((out, shrunk.iter().sum()))
}

#[allow(non_snake_case)]
pub(crate) fn nuclear(A: MatRef<'_, f64>) -> Result<f64> {
    Ok(A.singular_values()
        .map_err(|_| Error::Decomposition { what: "singular values" })?
        .iter()
        .sum())
}

type BoxedObserver<'a, S> = Box<dyn Observer<S> + 'a>;

/// A raised flag asks the executor to stop after the current iteration.
pub type InterruptFlag = Arc<AtomicBool>;

/// Owns the loop: runs a solver until its iteration limit, its stopping rule or an interrupt,
/// firing observers on their schedules.
pub struct Executor<'a, S: Solver> {
    solver: S,
    max_iters: u64,
    observers: Vec<(BoxedObserver<'a, S::State>, Schedule)>,
    interrupt: Option<InterruptFlag>,
}

impl<'a, S: Solver> Executor<'a, S> {
    /// An executor that stops once the state has completed `max_iters` iterations.
    pub fn new(solver: S, max_iters: u64) -> Self {
        Executor { solver, max_iters, observers: Vec::new(), interrupt: None }
    }

    /// Adds an observer fired on `schedule`.
    pub fn observe(mut self, observer: impl Observer<S::State> + 'a, schedule: Schedule) -> Self {
        self.observers.push((Box::new(observer), schedule));
        self
    }

    /// Stops the run at the next iteration boundary once `flag` is raised.
    pub fn interrupt_on(mut self, flag: InterruptFlag) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Runs from `state` (which may be a resumed one) and returns why it stopped.
    ///
    /// # Errors
    /// The first error of the solver or of an observer; the run stops there.
    pub fn run(mut self, state: &mut S::State) -> Result<Termination> {
        for (o, _) in &mut self.observers {
            o.observe_init(state)?;
        }
        let why = loop {
            if let Some(t) = self.solver.terminate(state) {
                break t;
            }
            if state.iter() >= self.max_iters {
                break Termination::MaxIters;
            }
            if self.interrupt.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
                break Termination::Interrupted;
            }
            self.solver.next_iter(state)?;
            let t = state.iter();
            for (o, sched) in &mut self.observers {
                if sched.fires(t) {
                    o.observe_iter(state)?;
                }
            }
        };
        for (o, _) in &mut self.observers {
            o.observe_final(state, &why)?;
        }
        Ok(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Count(u64);
    impl IterState for Count {
        fn iter(&self) -> u64 {
            self.0
        }
    }
    struct Incr {
        stop_at: Option<u64>,
    }
    impl Solver for Incr {
        type State = Count;
        fn next_iter(&mut self, s: &mut Count) -> Result<()> {
            s.0 += 1;
            Ok(())
        }
        fn terminate(&self, s: &Count) -> Option<Termination> {
            self.stop_at.filter(|&n| s.0 >= n).map(|n| Termination::Converged(format!("at {n}")))
        }
    }
    struct Log(Rc<RefCell<Vec<String>>>);
    impl Observer<Count> for Log {
        fn observe_init(&mut self, s: &Count) -> Result<()> {
            self.0.borrow_mut().push(format!("init {}", s.0));
            Ok(())
        }
        fn observe_iter(&mut self, s: &Count) -> Result<()> {
            self.0.borrow_mut().push(format!("{}", s.0));
            Ok(())
        }
        fn observe_final(&mut self, s: &Count, why: &Termination) -> Result<()> {
            self.0.borrow_mut().push(format!("final {} {}", s.0, why.name()));
            Ok(())
        }
    }

    #[test]
    fn observers_fire_on_schedule_and_at_both_ends() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut s = Count(0);
        let why = Executor::new(Incr { stop_at: None }, 7)
            .observe(Log(log.clone()), Schedule::Every(3))
            .run(&mut s)
            .unwrap();
        assert_eq!(why, Termination::MaxIters);
        assert_eq!(*log.borrow(), ["init 0", "3", "6", "final 7 max-iters"]);
    }

    #[test]
    fn stopping_rule_and_interrupt_and_resume() {
        let mut s = Count(0);
        let why = Executor::new(Incr { stop_at: Some(4) }, 100).run(&mut s).unwrap();
        assert_eq!((s.0, why.name()), (4, "converged"));
        let flag: InterruptFlag = Arc::new(AtomicBool::new(true));
        let mut s = Count(5);
        let why =
            Executor::new(Incr { stop_at: None }, 100).interrupt_on(flag).run(&mut s).unwrap();
        assert_eq!((s.0, why), (5, Termination::Interrupted));
        // A resumed state continues to the same limit.
        let why = Executor::new(Incr { stop_at: None }, 9).run(&mut s).unwrap();
        assert_eq!((s.0, why), (9, Termination::MaxIters));
    }

    #[test]
    fn log_spaced_schedule_is_dense_early_and_sparse_late() {
        let s = Schedule::LogSpaced { per_decade: 10 };
        let fired: Vec<u64> = (0..=1000).filter(|&t| s.fires(t)).collect();
        assert_eq!(&fired[..8], &[0, 1, 2, 3, 4, 6, 7, 8]);
        assert!(s.fires(10) && s.fires(100) && s.fires(1000));
        // About 10 points per decade between 100 and 1000.
        let late = fired.iter().filter(|&&t| t > 100).count();
        assert!((9..=11).contains(&late), "{fired:?}");
        assert!(!Schedule::Ends.fires(10) && Schedule::Every(5).fires(10));
    }
}
