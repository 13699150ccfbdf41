//! `plot-curves`: learning curves of runs from their `metrics.csv`, the
//! validation accuracy against the training images seen, one panel per
//! dataset and one line per run, as a figure (SVG or PNG) and a tidy CSV.
//!
//! The x axis counts images, not steps, so that runs with other batch sizes
//! share a panel: a validation logged at step `s` (0-based, as Lightning
//! and `relperf-train` write it) comes after `(s + 1) * batch_size` images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, RunError, one_line};
use crate::plot::{Line, PANEL, draw_lines, figure_kind, run_name, write_figure};
use crate::run::{RunFolder, find_folders};
use crate::table::{Cell, Record};

/// The columns of the CSV [`curve_rows`] makes.
pub const CURVE_COLUMNS: [&str; 10] = [
    "run_dir",
    "model",
    "dataset",
    "batch_size",
    "step",
    "images",
    "val_acc",
    "val_loss",
    "pytorch",
    "continued",
];

/// One validation of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// The optimizer step it followed (0-based).
    pub step: u64,
    /// Training images seen by then.
    pub images: u64,
    /// Validation accuracy, a fraction.
    pub val_acc: f64,
    /// Validation loss, if logged.
    pub val_loss: Option<f64>,
}

/// A run's learning curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The run folder, as given.
    pub run_dir: String,
    /// The model.
    pub model: String,
    /// The dataset.
    pub dataset: String,
    /// Images per optimizer step.
    pub batch_size: u64,
    /// Whether the PyTorch reference trained the run (imported into this
    /// workspace, or a reference run folder as it wrote it).
    pub pytorch: bool,
    /// Whether the run started from another run's weights (`init_from`):
    /// its curve is then the last part of a longer training.
    pub continued: bool,
    /// Its validations, by step.
    pub points: Vec<CurvePoint>,
}

/// The folders below `roots` (each included) that hold `config.json` and
/// `metrics.csv`, sorted: run folders of `relperf-train` or of the PyTorch
/// reference, with or without checkpoints. A root that is not a folder, or
/// roots without any such folder, are one-line errors.
pub fn find_curve_runs(roots: &[PathBuf]) -> Result<Vec<RunFolder>> {
    find_folders(
        roots,
        |run| run.config_path().is_file() && run.metrics_path().is_file(),
        "run folders with config.json and metrics.csv",
    )
}

/// Reads the learning curve of `run`: its config (model, dataset, batch
/// size) and the validation rows of its `metrics.csv`. A run without
/// `metrics.csv`, or whose `metrics.csv` lacks the columns `step` and
/// `val/acc` or holds no validation, is a one-line error.
pub fn read_curve(run: &RunFolder) -> Result<Curve> {
    let config = run.read_config()?;
    let batch_size = config
        .training_option("batch_size")
        .as_u64()
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            RunError::run(format!(
                "{} has no training batch_size: cannot count the images seen",
                run.config_path().display()
            ))
        })?;
    let path = run.metrics_path();
    if !path.is_file() {
        return Err(RunError::run(format!(
            "{} has no metrics.csv: it has no learning curve",
            run.path.display()
        )));
    }
    let unreadable = |e: &dyn std::fmt::Display| {
        RunError::run(format!(
            "{} is not a readable CSV file ({})",
            path.display(),
            one_line(&e.to_string())
        ))
    };
    let mut reader = csv::Reader::from_path(&path).map_err(|e| unreadable(&e))?;
    let headers = reader.headers().map_err(|e| unreadable(&e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(step_col), Some(acc_col)) = (col("step"), col("val/acc")) else {
        return Err(RunError::run(format!(
            "{} is not a metrics file: it needs the columns step and val/acc",
            path.display()
        )));
    };
    let loss_col = col("val/loss");
    let mut points = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| unreadable(&e))?;
        let acc = record.get(acc_col).unwrap_or("").trim();
        if acc.is_empty() {
            continue;
        }
        let bad = |what: &str, text: &str| {
            RunError::run(format!(
                "{}: line {}: {what} '{text}' is not a number",
                path.display(),
                i + 2
            ))
        };
        let step_text = record.get(step_col).unwrap_or("").trim();
        let step: u64 = step_text.parse().map_err(|_| bad("step", step_text))?;
        let val_acc: f64 = acc.parse().map_err(|_| bad("val/acc", acc))?;
        let val_loss = loss_col
            .and_then(|c| record.get(c))
            .and_then(|t| t.trim().parse::<f64>().ok());
        points.push(CurvePoint {
            step,
            images: (step + 1) * batch_size,
            val_acc,
            val_loss,
        });
    }
    if points.is_empty() {
        return Err(RunError::run(format!(
            "{} holds no validation (no val/acc values)",
            path.display()
        )));
    }
    points.sort_by_key(|p| p.step);
    Ok(Curve {
        run_dir: run.path.display().to_string(),
        model: config.model.to_string(),
        dataset: config.dataset.clone(),
        batch_size,
        pytorch: config.rest.contains_key("imported")
            || config
                .rest
                .get("command")
                .and_then(|c| c.as_str())
                .is_some_and(|c| c.starts_with("relative-performer ")),
        continued: config.rest.get("init_from").is_some_and(|v| !v.is_null()),
        points,
    })
}

/// The CSV rows of `curves`, one per validation ([`CURVE_COLUMNS`]).
pub fn curve_rows(curves: &[Curve]) -> Vec<Record> {
    let mut rows = Vec::new();
    for c in curves {
        for p in &c.points {
            let mut r = Record::new();
            r.insert("run_dir".into(), Cell::Str(c.run_dir.clone()));
            r.insert("model".into(), Cell::Str(c.model.clone()));
            r.insert("dataset".into(), Cell::Str(c.dataset.clone()));
            r.insert("batch_size".into(), Cell::Int(c.batch_size as i64));
            r.insert("step".into(), Cell::Int(p.step as i64));
            r.insert("images".into(), Cell::Int(p.images as i64));
            r.insert("val_acc".into(), Cell::Float(p.val_acc));
            if let Some(l) = p.val_loss {
                r.insert("val_loss".into(), Cell::Float(l));
            }
            r.insert("pytorch".into(), Cell::Bool(c.pytorch));
            r.insert("continued".into(), Cell::Bool(c.continued));
            rows.push(r);
        }
    }
    rows
}

/// Panels by dataset; in each, a colour per model and a label per run
/// (its model, and its folder where a model has several runs); the
/// PyTorch reference's runs dashed.
fn curve_panels(curves: &[Curve]) -> Vec<(String, Vec<Line<f64>>)> {
    let mut by_dataset: BTreeMap<&str, Vec<&Curve>> = BTreeMap::new();
    for c in curves {
        by_dataset.entry(c.dataset.as_str()).or_default().push(c);
    }
    let models: Vec<&str> = {
        let mut m: Vec<&str> = curves.iter().map(|c| c.model.as_str()).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    by_dataset
        .into_iter()
        .map(|(dataset, runs)| {
            let dirs: Vec<&str> = runs.iter().map(|c| c.run_dir.as_str()).collect();
            let lines = runs
                .iter()
                .map(|c| {
                    let several = runs.iter().filter(|o| o.model == c.model).count() > 1;
                    let mut label = c.model.clone();
                    if several {
                        label += &format!(" ({})", run_name(&c.run_dir, &dirs));
                    }
                    match (c.pytorch, c.continued) {
                        (true, true) => label += " [PyTorch, continued]",
                        (true, false) => label += " [PyTorch]",
                        (false, true) => label += " [continued]",
                        (false, false) => {}
                    }
                    Line {
                        label,
                        colour: models.iter().position(|m| *m == c.model).unwrap_or(0),
                        dashed: c.pytorch,
                        points: c
                            .points
                            .iter()
                            .map(|p| (p.images as f64 / 1000.0, p.val_acc))
                            .collect(),
                    }
                })
                .collect();
            (dataset.to_string(), lines)
        })
        .collect()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[(String, Vec<Line<f64>>)],
    title: Option<&str>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let area = match title {
        Some(t) => root.titled(t, ("sans-serif", 28))?,
        None => root.clone(),
    };
    let cells = area.split_evenly((1, panels.len().max(1)));
    for (cell, (dataset, lines)) in cells.iter().zip(panels) {
        let pts = || lines.iter().flat_map(|l| &l.points);
        let x_max = pts().map(|p| p.0).fold(1.0f64, f64::max) * 1.03;
        let y_min = pts().map(|p| p.1).fold(1.0f64, f64::min);
        let y_lo = ((y_min * 20.0).floor() / 20.0).clamp(0.0, 0.95);
        let mut chart = ChartBuilder::on(cell)
            .caption(dataset, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, y_lo..1.0f64)?;
        chart
            .configure_mesh()
            .x_desc("training images seen (thousands)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("validation accuracy")
            .label_style(("sans-serif", 16))
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        draw_lines(&mut chart, lines)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()
}

/// Draws the learning curves into `output` (`.svg` or `.png`), through a
/// temporary file renamed into place.
pub fn plot_curves(curves: &[Curve], output: &Path, title: Option<&str>) -> Result<()> {
    figure_kind(output)?;
    let panels = curve_panels(curves);
    let size = (
        (PANEL.0 * panels.len().max(1) as u32).max(1050),
        PANEL.1 + if title.is_some() { 40 } else { 0 },
    );
    write_figure(
        output,
        size,
        |area| draw(area, &panels, title).map_err(|e| e.to_string()),
        |area| draw(area, &panels, title).map_err(|e| e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(dir: &Path, config: &str, metrics: Option<&str>) -> RunFolder {
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        if let Some(m) = metrics {
            std::fs::write(dir.join("metrics.csv"), m).unwrap();
        }
        RunFolder::new(dir)
    }

    fn shipped_config() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join("results/pretrained/MNIST/Performer/config.json"))
            .unwrap()
    }

    #[test]
    fn validations_become_points_counted_in_images() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = "epoch,lr-Adam,step,test/acc,test/loss,train/acc,train/loss_epoch,train/loss_step,val/acc,val/loss\n\
            ,0.0001,49,,,,,,,\n\
            0,,499,,,,,,0.5,1.25\n\
            0,,49,,,,,0.3,,\n\
            1,,999,,,,,,0.75,\n";
        let run = run_with(tmp.path(), &shipped_config(), Some(metrics));
        let curve = read_curve(&run).unwrap();
        assert_eq!(curve.model, "Performer");
        assert_eq!(curve.dataset, "MNIST");
        assert_eq!(curve.batch_size, 64);
        assert!(curve.pytorch);
        assert!(!curve.continued);
        assert_eq!(
            curve.points,
            vec![
                CurvePoint {
                    step: 499,
                    images: 500 * 64,
                    val_acc: 0.5,
                    val_loss: Some(1.25)
                },
                CurvePoint {
                    step: 999,
                    images: 1000 * 64,
                    val_acc: 0.75,
                    val_loss: None
                },
            ]
        );
        let rows = curve_rows(std::slice::from_ref(&curve));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["images"], Cell::Int(32000));
        let svg = tmp.path().join("curves.svg");
        plot_curves(&[curve], &svg, Some("t")).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("Performer [PyTorch]"), "legend: {text:.200}");
    }

    #[test]
    fn curve_runs_need_a_config_and_metrics_but_no_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let reference = tmp.path().join("ref/MNIST/Performer");
        std::fs::create_dir_all(&reference).unwrap();
        std::fs::write(reference.join("config.json"), shipped_config()).unwrap();
        std::fs::write(reference.join("metrics.csv"), "step,val/acc\n9,0.5\n").unwrap();
        let config_only = tmp.path().join("ref/MNIST/Other");
        std::fs::create_dir_all(&config_only).unwrap();
        std::fs::write(config_only.join("config.json"), shipped_config()).unwrap();
        let found = find_curve_runs(&[tmp.path().to_path_buf()]).unwrap();
        assert_eq!(found, vec![RunFolder::new(&reference)]);
        let e = find_curve_runs(std::slice::from_ref(&config_only))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no run folders with config.json and metrics.csv"),
            "{e}"
        );
        let e = find_curve_runs(&[tmp.path().join("nowhere")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a folder"), "{e}");
    }

    #[test]
    fn runs_without_a_curve_are_one_line_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let none = run_with(&tmp.path().join("a"), &shipped_config(), None);
        let e = read_curve(&none).unwrap_err().to_string();
        assert!(e.contains("has no metrics.csv"), "{e}");
        let empty = run_with(
            &tmp.path().join("b"),
            &shipped_config(),
            Some("step,val/acc\n49,\n"),
        );
        let e = read_curve(&empty).unwrap_err().to_string();
        assert!(e.contains("holds no validation"), "{e}");
        let bad = run_with(
            &tmp.path().join("c"),
            &shipped_config(),
            Some("step,val/acc\nx,0.5\n"),
        );
        let e = read_curve(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2: step 'x' is not a number"), "{e}");
        let other = run_with(&tmp.path().join("d"), &shipped_config(), Some("a,b\n1,2\n"));
        let e = read_curve(&other).unwrap_err().to_string();
        assert!(e.contains("needs the columns step and val/acc"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let bad_ext = plot_curves(&[], &tmp.path().join("x.pdf"), None).unwrap_err();
        assert!(bad_ext.to_string().contains(".svg or .png"));
    }
}
