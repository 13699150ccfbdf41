//! `metrics.csv` with the reference's columns (Lightning's CSVLogger):
//! one row per logged step, validation, epoch end and test.

use std::io::Write;
use std::path::{Path, PathBuf};

use relperf_eval::RunError;
use relperf_eval::error::Result;

/// The columns, in order.
pub const COLUMNS: [&str; 10] = [
    "epoch",
    "lr-Adam",
    "step",
    "test/acc",
    "test/loss",
    "train/acc",
    "train/loss_epoch",
    "train/loss_step",
    "val/acc",
    "val/loss",
];

/// One row: the values of some columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    values: Vec<(&'static str, String)>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Row::default()
    }

    /// Sets a column (one of [`COLUMNS`]).
    pub fn set(mut self, column: &'static str, value: impl ToString) -> Self {
        debug_assert!(COLUMNS.contains(&column), "unknown column {column}");
        self.values.push((column, value.to_string()));
        self
    }

    fn line(&self) -> String {
        COLUMNS
            .iter()
            .map(|c| {
                self.values
                    .iter()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The metrics file of a run, appended to row by row.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Starts `path` with the header (a new run).
    pub fn create(path: &Path) -> Result<Self> {
        relperf_eval::run::write_atomic(path, format!("{}\n", COLUMNS.join(",")).as_bytes())?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
        })
    }

    /// Continues `path` after `step`: rows of later steps (written after the
    /// checkpoint a resumed run starts from) are dropped.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut out = format!("{}\n", COLUMNS.join(","));
        for line in text.lines().skip(1) {
            let keep = line
                .split(',')
                .nth(2)
                .and_then(|s| s.parse::<u64>().ok())
                .is_none_or(|s| s <= step);
            if keep && !line.trim().is_empty() {
                out.push_str(line);
                out.push('\n');
            }
        }
        relperf_eval::run::write_atomic(path, out.as_bytes())?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
        })
    }

    /// Appends a row.
    pub fn write(&mut self, row: &Row) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| RunError::run(format!("cannot write {} ({e})", self.path.display())))?;
        writeln!(f, "{}", row.line())
            .map_err(|e| RunError::run(format!("cannot write {} ({e})", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fill_their_columns_and_resume_drops_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let mut log = MetricsLog::create(&path).unwrap();
        log.write(&Row::new().set("step", 4).set("train/loss_step", 2.5))
            .unwrap();
        log.write(&Row::new().set("step", 9).set("val/acc", 0.5))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().nth(1).unwrap(), ",,4,,,,,2.5,,");
        MetricsLog::resume(&path, 5).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
