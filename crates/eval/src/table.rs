//! CSV rows as the PyTorch reference wrote them (pandas `to_csv`): cells
//! in a fixed column order, `True` / `False` for booleans, an empty cell for
//! a missing value, floats in Python's `repr` (`0.001`, `1e-05`, `3.0`), so
//! old and new results compare line by line.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Result, RunError, one_line};
use crate::run::write_atomic;

/// One CSV cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value (pandas writes `None` and NaN as an empty cell).
    Empty,
    /// Text.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float, written as Python's `repr` would.
    Float(f64),
    /// `True` or `False`.
    Bool(bool),
}

impl Cell {
    /// The cell of a JSON value (objects and arrays as their JSON text).
    pub fn from_json(value: &Value) -> Cell {
        match value {
            Value::Null => Cell::Empty,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Cell::Int(i),
                (None, Some(u)) => Cell::Str(u.to_string()),
                _ => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Cell::Str(s.clone()),
            other => Cell::Str(other.to_string()),
        }
    }

    /// The cell's text in the CSV.
    pub fn text(&self) -> String {
        match self {
            Cell::Empty => String::new(),
            Cell::Str(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => py_float(*f),
            Cell::Bool(true) => "True".into(),
            Cell::Bool(false) => "False".into(),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Str(s.to_string())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Str(s)
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Float(v)
    }
}
impl From<usize> for Cell {
    fn from(v: usize) -> Self {
        Cell::Int(v as i64)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Empty, Into::into)
    }
}

/// `v` as Python's `repr(float)` writes it (shortest digits that read back
/// the same; scientific below 1e-4 and from 1e16 on); NaN as an empty
/// string, as pandas writes it.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return String::new();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{v:e}"); // shortest round-trip digits: "1.5e-5"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if (-4..16).contains(&exp) {
        let plain = format!("{v}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A CSV row: cells by column name.
pub type Record = BTreeMap<String, Cell>;

/// The CSV text of `rows` with `columns` in this order (a column a row lacks
/// is an empty cell).
pub fn csv_text(columns: &[&str], rows: &[Record]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(columns).expect("writing to memory");
    for row in rows {
        w.write_record(
            columns
                .iter()
                .map(|c| row.get(*c).map(Cell::text).unwrap_or_default()),
        )
        .expect("writing to memory");
    }
    w.into_inner().expect("writing to memory")
}

/// Checks, before any work, that `output` can be written: not a folder, and
/// its folder (created if missing) writable. A folder is a usage error.
pub fn check_output(output: &Path) -> Result<()> {
    if output.is_dir() {
        let example = output.join("results.csv");
        return Err(RunError::usage(format!(
            "--output {} is a folder; give a file name such as {}",
            output.display(),
            example.display()
        )));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let cannot = |e: &dyn std::fmt::Display| {
        RunError::run(format!(
            "cannot write --output {} ({}); choose a writable folder",
            output.display(),
            one_line(&e.to_string())
        ))
    };
    std::fs::create_dir_all(&parent).map_err(|e| cannot(&e))?;
    let probe = parent.join(format!(".relperf-eval-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| cannot(&e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `rows` to `output` atomically (a temporary file renamed into
/// place), creating its folder.
pub fn write_csv(output: &Path, columns: &[&str], rows: &[Record]) -> Result<()> {
    check_output(output)?;
    write_atomic(output, &csv_text(columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (v, want) in [
            (0.001, "0.001"),
            (1e-5, "1e-05"),
            (3.0, "3.0"),
            (0.9707000255584716, "0.9707000255584716"),
            (1.5e16, "1.5e+16"),
            (123456.0, "123456.0"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(v), want, "{v}");
        }
        assert_eq!(py_float(f64::NAN), "");
    }

    #[test]
    fn cells_from_json_and_rows_in_column_order() {
        let cells: Vec<String> = [
            Value::Null,
            true.into(),
            32.into(),
            0.1.into(),
            "noam".into(),
        ]
        .iter()
        .map(|v| Cell::from_json(v).text())
        .collect();
        assert_eq!(cells, ["", "True", "32", "0.1", "noam"]);
        let mut row = Record::new();
        row.insert("b".into(), Cell::from("x, y"));
        row.insert("a".into(), Cell::Int(1));
        let text = String::from_utf8(csv_text(&["a", "b", "c"], &[row])).unwrap();
        assert_eq!(text, "a,b,c\n1,\"x, y\",\n");
    }

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_output(dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("is a folder"), "{err}");
        let out = dir.path().join("new/folder/x.csv");
        write_csv(&out, &["a"], &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\n");
    }
}
