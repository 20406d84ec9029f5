//! The one CSV codec of seli: RFC 4180 tables of text cells ([`Table`]: `results.csv`), on which
//! the numeric logs (`crate::csvlog`: `metrics.csv`, `ridge-path.csv`) are built.

use std::path::Path;

use crate::error::{Error, Result};

/// A results table: a header and rows of cells (empty for a missing value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Builds a table from rows of `(column, cell)` pairs; the columns are the union of the
    /// rows' columns in order of first appearance.
    pub fn from_rows(rows: &[Vec<(String, String)>]) -> Table {
        let mut header: Vec<String> = Vec::new();
        for r in rows {
            for (c, _) in r {
                if !header.contains(c) {
                    header.push(c.clone());
                }
            }
        }
        let rows = rows
            .iter()
            .map(|r| {
                header
                    .iter()
                    .map(|h| {
                        r.iter().find(|(c, _)| c == h).map(|(_, v)| v.clone()).unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        Table { header, rows }
    }

    /// The table as CSV (RFC 4180 quoting where a cell needs it).
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            out.push_str(&row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    /// Parses CSV written by [`Table::to_csv`].
    ///
    /// # Errors
    /// Unbalanced quotes; a row whose width differs from the header's.
    pub fn from_csv(text: &str, path: &Path) -> Result<Table> {
        let mut records: Vec<Vec<String>> = Vec::new();
        let mut cell = String::new();
        let mut row: Vec<String> = Vec::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        let mut any = false;
        while let Some(c) = chars.next() {
            any = true;
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => cell.push(c),
                (false, '"') if cell.is_empty() => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut cell)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut cell));
                    records.push(std::mem::take(&mut row));
                    any = false;
                }
                (false, '\r') => {}
                (false, c) => cell.push(c),
            }
        }
        if quoted {
            return Err(Error::format(path, "unterminated quoted cell"));
        }
        if any {
            row.push(cell);
            records.push(row);
        }
        let mut it = records.into_iter();
        let header = it.next().unwrap_or_default();
        let rows: Vec<Vec<String>> = it.collect();
        for (i, r) in rows.iter().enumerate() {
            if r.len() != header.len() {
                return Err(Error::format(
                    path,
                    format!("line {}: {} cells, the header has {}", i + 2, r.len(), header.len()),
                ));
            }
        }
        Ok(Table { header, rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_tables_round_trip_with_quoting() {
        let t = Table::from_rows(&[
            vec![("point".into(), "a=1,b=2".into()), ("x".into(), "0.5".into())],
            vec![("point".into(), "q\"\"".into()), ("y".into(), "3".into())],
        ]);
        assert_eq!(t.header, ["point", "x", "y"]);
        let csv = t.to_csv();
        assert_eq!(Table::from_csv(&csv, Path::new("r.csv")).unwrap(), t);
        assert!(
            Table::from_csv("a,b\n1\n", Path::new("r.csv"))
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
    }
}
