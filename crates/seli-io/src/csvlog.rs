//! Append-only CSV logs of numeric rows (`metrics.csv`), on the one CSV codec
//! ([`crate::csv::Table`]).
//!
//! The first line is the header; every later line is one row, values in Rust's shortest
//! round-trip notation (so a value read back is the value written), empty where undefined.
//! Each row is flushed as it is written, so a run can be watched live; a crash may leave a
//! torn last line, which [`CsvLog::resume`] drops.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};

/// An open CSV log.
#[derive(Debug)]
pub struct CsvLog {
    path: PathBuf,
    file: std::fs::File,
    width: usize,
}

fn line(values: &[Option<f64>]) -> String {
    let cells: Vec<String> =
        values.iter().map(|v| v.map_or_else(String::new, |x| x.to_string())).collect();
    cells.join(",")
}

impl CsvLog {
    /// Creates (or replaces) the log with `header`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn create(path: &Path, header: &[&str]) -> Result<Self> {
        write_atomic(path, format!("{}\n", header.join(",")).as_bytes())?;
        Self::open_append(path, header.len())
    }

    /// Reopens an existing log for a resumed run: keeps the header and the complete rows whose
    /// first column is below `before` (rows at or after it will be written again), rewrites the
    /// file atomically and appends from there.
    ///
    /// # Errors
    /// The file cannot be read or written; its header differs from `header`.
    pub fn resume(path: &Path, header: &[&str], before: f64) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.split_inclusive('\n');
        let head = lines.next().unwrap_or("").trim_end();
        if head != header.join(",") {
            return Err(Error::format(
                path,
                format!("header '{head}' is not the one this version writes"),
            ));
        }
        let mut kept = format!("{head}\n");
        for l in lines {
            let complete = l.ends_with('\n') && l.trim_end().split(',').count() == header.len();
            let first = l.split(',').next().and_then(|v| v.trim().parse::<f64>().ok());
            if complete && first.is_some_and(|v| v < before) {
                kept.push_str(l);
            }
        }
        write_atomic(path, kept.as_bytes())?;
        Self::open_append(path, header.len())
    }

    fn open_append(path: &Path, width: usize) -> Result<Self> {
        let file =
            std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(CsvLog { path: path.to_path_buf(), file, width })
    }

    /// Appends one row and flushes it.
    ///
    /// # Panics
    /// If the row's length differs from the header's.
    pub fn append(&mut self, values: &[Option<f64>]) -> Result<()> {
        assert_eq!(values.len(), self.width, "row width must match the header");
        writeln!(self.file, "{}", line(values))
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// A numeric row; `None` for an empty cell.
pub type Row = Vec<Option<f64>>;

/// Reads a CSV log back: the header and the rows (`None` for empty cells). A last line
/// without its newline is a row being written (or torn by a crash) and is left out.
///
/// # Errors
/// Unreadable file; a cell that is not a number; a row whose width differs from the
/// header's.
pub fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Row>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A last line without its newline is a row being written: leave it out.
    let complete = match text.rfind('\n') {
        Some(end) if !text.ends_with('\n') => &text[..=end],
        Some(_) => &text[..],
        None => "",
    };
    let table =
        crate::csv::Table::from_csv(if complete.is_empty() { &text } else { complete }, path)?;
    let rows = table
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .map(|c| if c.is_empty() { Ok(None) } else { c.parse::<f64>().map(Some) })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::format(
                        path,
                        format!("line {}: a cell is not a number: '{}'", i + 2, r.join(",")),
                    )
                })
        })
        .collect::<Result<Vec<Row>>>()?;
    Ok((table.header, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_resume_drops_later_and_torn_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        let mut log = CsvLog::create(&p, &["iter", "x"]).unwrap();
        for i in 0..5 {
            log.append(&[Some(i as f64), if i == 2 { None } else { Some(0.1 + i as f64 / 3.0) }])
                .unwrap();
        }
        drop(log);
        let (h, rows) = read_csv(&p).unwrap();
        assert_eq!(h, ["iter", "x"]);
        assert_eq!(rows[1][1], Some(0.1 + 1.0 / 3.0));
        assert_eq!(rows[2][1], None);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"5,0.12").unwrap();
        // Readers leave out the torn last row; a short complete row is an error.
        assert_eq!(read_csv(&p).unwrap().1.len(), 5);
        let mut log = CsvLog::resume(&p, &["iter", "x"], 3.0).unwrap();
        log.append(&[Some(3.0), Some(9.0)]).unwrap();
        let (_, rows) = read_csv(&p).unwrap();
        assert_eq!(rows.iter().map(|r| r[0].unwrap()).collect::<Vec<_>>(), [0.0, 1.0, 2.0, 3.0]);
        assert!(
            CsvLog::resume(&p, &["iter", "y"], 1.0).unwrap_err().to_string().contains("header")
        );
        std::fs::write(&p, "iter,x\n0,1\n2\n").unwrap();
        assert!(
            read_csv(&p).unwrap_err().to_string().contains("line 3: 1 cells, the header has 2")
        );
    }

    #[test]
    fn a_full_disk_is_reported_with_the_path() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut log = CsvLog::open_append(full, 1).unwrap();
        let e = log.append(&[Some(1.0)]).unwrap_err().to_string();
        assert!(e.starts_with("/dev/full: ") && e.contains("No space left on device"), "{e}");
    }
}
