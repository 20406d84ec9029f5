//! What a caller sees of a run while it goes: the iteration or epoch reached, and each metrics
//! row as it is recorded. The CLI draws progress bars from it, the Python module checks for
//! Ctrl-C, sweeps and tests watch nothing ([`Quiet`]). Writing files is the run's own business
//! (its observers), not a watcher's.

/// Receives a run's progress. Every method has a do-nothing default.
pub trait Watch {
    /// The run starts (or resumes) at `done` of `total` steps.
    fn started(&mut self, _total: u64, _done: u64) {}

    /// A step (iteration, epoch) finished; `done` steps so far. An error stops the run.
    ///
    /// # Errors
    /// Whatever the watcher wants to stop the run with.
    fn progress(&mut self, _done: u64) -> Result<(), String> {
        Ok(())
    }

    /// A metrics row was recorded, `values` in `columns` order. An error stops the run.
    ///
    /// # Errors
    /// Whatever the watcher wants to stop the run with.
    fn row(&mut self, _columns: &[(&str, &str)], _values: &[Option<f64>]) -> Result<(), String> {
        Ok(())
    }
}

/// Watches nothing.
pub struct Quiet;

impl Watch for Quiet {}
