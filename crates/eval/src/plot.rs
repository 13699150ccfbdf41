//! `plot-shifted`: accuracy against shift from `test-shifted` CSVs, the
//! original work's figure, as the reference's `plots.py` draws it: one
//! panel per (dataset, axis), one colour per run, the run's own random
//! features solid and each redraw dashed, a line labelled by its model (and
//! its run folder when several runs of one model share a panel).
//!
//! SVG or PNG, by the output's extension. The text of a PNG is drawn with
//! DejaVu Sans, bundled in this crate (`assets/`, with its license), so no
//! system font is needed; an SVG leaves the text to its viewer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, RunError, one_line};
use crate::table::check_output;

/// The bundled font (DejaVu Sans 2.37, `assets/DejaVuSans-LICENSE.txt`).
pub const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The columns a CSV needs to be plotted.
pub const PLOT_COLUMNS: [&str; 6] = [
    "run_dir",
    "model",
    "dataset",
    "axis",
    "shift",
    "accuracy_mean",
];

/// matplotlib's `tab10`: the colours of the runs, in order.
pub(crate) const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Pixels of one panel (matplotlib's 6.4 x 4.6 inches at 150 dpi).
pub(crate) const PANEL: (u32, u32) = (960, 690);

/// One row of a `test-shifted` CSV, as much as the figure needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftPoint {
    /// The run folder.
    pub run_dir: String,
    /// The model.
    pub model: String,
    /// The dataset.
    pub dataset: String,
    /// `x` or `y`.
    pub axis: String,
    /// The shift in pixels.
    pub shift: i64,
    /// The mean accuracy, a fraction.
    pub accuracy_mean: f64,
    /// The feature seed (`None`: the run's own features).
    pub feature_seed: Option<i64>,
    /// Images per shift, if the CSV says.
    pub n_images: Option<u64>,
    /// The labels, if the CSV says.
    pub labels: Option<String>,
}

fn number(path: &Path, line: usize, column: &str, text: &str) -> Result<f64> {
    text.trim().parse::<f64>().map_err(|_| {
        RunError::run(format!(
            "{} is not a test-shifted CSV: line {line}: {column} '{text}' is not a number",
            path.display()
        ))
    })
}

/// Reads `test-shifted` CSVs (this crate's or the reference's). A missing
/// file, a file that is no CSV, or a CSV without the columns of
/// [`PLOT_COLUMNS`] is a one-line error.
pub fn read_shift_csvs(paths: &[PathBuf]) -> Result<Vec<ShiftPoint>> {
    let mut points = Vec::new();
    for path in paths {
        if !path.is_file() {
            return Err(RunError::run(format!("{} does not exist", path.display())));
        }
        let unreadable = |e: &dyn std::fmt::Display| {
            RunError::run(format!(
                "{} is not a readable CSV file ({})",
                path.display(),
                one_line(&e.to_string())
            ))
        };
        let mut reader = csv::Reader::from_path(path).map_err(|e| unreadable(&e))?;
        let headers = reader.headers().map_err(|e| unreadable(&e))?.clone();
        let col = |name: &str| headers.iter().position(|h| h == name);
        let missing: Vec<&str> = PLOT_COLUMNS
            .iter()
            .copied()
            .filter(|c| col(c).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(RunError::run(format!(
                "{} is not a test-shifted CSV: columns {} are missing",
                path.display(),
                missing.join(", ")
            )));
        }
        let idx = |name: &str| col(name).expect("checked");
        let before = points.len();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| unreadable(&e))?;
            let line = i + 2;
            let get = |name: &str| col(name).and_then(|c| record.get(c)).unwrap_or("");
            let text = |name: &str| record.get(idx(name)).unwrap_or("").to_string();
            let seed = get("feature_seed").trim();
            points.push(ShiftPoint {
                run_dir: text("run_dir"),
                model: text("model"),
                dataset: text("dataset"),
                axis: text("axis"),
                shift: number(path, line, "shift", &text("shift"))?.round() as i64,
                accuracy_mean: number(path, line, "accuracy_mean", &text("accuracy_mean"))?,
                feature_seed: if seed.is_empty() || seed.eq_ignore_ascii_case("nan") {
                    None
                } else {
                    Some(number(path, line, "feature_seed", seed)? as i64)
                },
                n_images: get("n_images").trim().parse::<f64>().ok().map(|v| v as u64),
                labels: Some(get("labels").to_string()).filter(|s| !s.is_empty()),
            });
        }
        if points.len() == before {
            return Err(RunError::run(format!(
                "{} is a test-shifted CSV without rows",
                path.display()
            )));
        }
    }
    Ok(points)
}

/// The shortest tail of `run_dir` that tells it apart from `all`.
pub(crate) fn run_name(run_dir: &str, all: &[&str]) -> String {
    let parts: Vec<&str> = run_dir.split('/').filter(|p| !p.is_empty()).collect();
    let tail = |d: &str, n: usize| {
        let p: Vec<&str> = d.split('/').filter(|p| !p.is_empty()).collect();
        p[p.len().saturating_sub(n)..].join("/")
    };
    for n in 1..=parts.len() {
        let mine = tail(run_dir, n);
        if all.iter().filter(|d| tail(d, n) == mine).count() == 1 {
            return mine;
        }
    }
    run_dir.to_string()
}

/// One line of a panel, its points `(X, accuracy)` (`X`: the shift in
/// pixels here; training images in `plot-curves`).
#[derive(Debug, Clone, PartialEq)]
pub struct Line<X = i64> {
    /// Its legend entry.
    pub label: String,
    /// The run's colour (index into the palette).
    pub colour: usize,
    /// Drawn dashed (here: redrawn features).
    pub dashed: bool,
    /// `(x, accuracy)`, by x.
    pub points: Vec<(X, f64)>,
}

/// One panel: a dataset and axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// The axis (`x` or `y`).
    pub axis: String,
    /// Its lines.
    pub lines: Vec<Line>,
}

/// A run's lines by feature seed (`None`: its own features).
type Draws = BTreeMap<Option<i64>, Vec<(i64, f64)>>;

/// Groups points into panels and lines, as the reference does.
pub fn panels(points: &[ShiftPoint]) -> Vec<Panel> {
    let mut by_panel: BTreeMap<(&str, &str), Vec<&ShiftPoint>> = BTreeMap::new();
    for p in points {
        by_panel
            .entry((p.dataset.as_str(), p.axis.as_str()))
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for ((dataset, axis), pts) in by_panel {
        let mut runs: BTreeMap<(&str, &str), Draws> = BTreeMap::new();
        for p in &pts {
            runs.entry((p.model.as_str(), p.run_dir.as_str()))
                .or_default()
                .entry(p.feature_seed)
                .or_default()
                .push((p.shift, p.accuracy_mean));
        }
        let dirs: Vec<&str> = runs.keys().map(|(_, d)| *d).collect();
        let mut per_model: BTreeMap<&str, usize> = BTreeMap::new();
        for (m, _) in runs.keys() {
            *per_model.entry(m).or_default() += 1;
        }
        let mut lines = Vec::new();
        for (colour, ((model, run_dir), draws)) in runs.iter().enumerate() {
            let several = draws.len() > 1;
            for (seed, line) in draws {
                let mut label = model.to_string();
                if per_model[model] > 1 {
                    label += &format!(" ({})", run_name(run_dir, &dirs));
                }
                match seed {
                    None if several => label += " [own features]",
                    None => {}
                    Some(s) => label += &format!(" [features {s}]"),
                }
                let mut points = line.clone();
                points.sort_by_key(|p| p.0);
                lines.push(Line {
                    label,
                    colour,
                    dashed: seed.is_some(),
                    points,
                });
            }
        }
        let mut details = Vec::new();
        if let Some(l) = pts.iter().find_map(|p| p.labels.clone()) {
            details.push(format!("labels: {l}"));
        }
        if let Some(n) = pts.iter().find_map(|p| p.n_images) {
            details.push(format!("{n} images"));
        }
        let title = if details.is_empty() {
            dataset.to_string()
        } else {
            format!("{dataset} ({})", details.join(", "))
        };
        out.push(Panel {
            title,
            axis: axis.to_string(),
            lines,
        });
    }
    out
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Rows and columns of the figure for `n` panels: at most two side by
/// side (one dataset's x and y shifts in a row), so that a page shows it.
fn grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 2);
    (n.max(1).div_ceil(cols), cols)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    title: Option<&str>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let area = match title {
        Some(t) => root.titled(t, ("sans-serif", 28))?,
        None => root.clone(),
    };
    let (rows, cols) = grid(panels.len());
    let cells = area.split_evenly((rows, cols));
    for (cell, panel) in cells.iter().zip(panels) {
        let lo = panel
            .lines
            .iter()
            .flat_map(|l| &l.points)
            .map(|p| p.0)
            .min()
            .unwrap_or(0);
        let hi = panel
            .lines
            .iter()
            .flat_map(|l| &l.points)
            .map(|p| p.0)
            .max()
            .unwrap_or(0);
        let mut chart = ChartBuilder::on(cell)
            .caption(&panel.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d((lo - 1)..(hi + 1), -0.02f64..1.02f64)?;
        chart
            .configure_mesh()
            .x_desc(format!("shift along {} (pixels)", panel.axis))
            .y_desc("accuracy")
            .x_labels(((hi - lo) as usize + 3).min(11))
            .label_style(("sans-serif", 16))
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0, -0.02), (0, 1.02)],
            RGBColor(190, 190, 190),
        )))?;
        draw_lines(&mut chart, &panel.lines)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerMiddle)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()
}

/// Draws `lines` into `chart`: each in its palette colour, solid or dashed,
/// with a dot per point and a legend entry.
pub(crate) fn draw_lines<DB, X>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    lines: &[Line<X::ValueType>],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    X: Ranged,
    X::ValueType: Clone + 'static,
{
    for line in lines {
        let (r, g, b) = TAB10[line.colour % TAB10.len()];
        let colour = RGBColor(r, g, b);
        let style = colour.stroke_width(2);
        let pts = line.points.clone();
        let series = if line.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))?
        };
        let dashed = line.dashed;
        series.label(line.label.clone()).legend(move |(x, y)| {
            let end = if dashed { x + 8 } else { x + 20 };
            PathElement::new(vec![(x, y), (end, y)], colour.stroke_width(2))
        });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    Ok(())
}

/// Draws the figure of `points` into `output` (`.svg` or `.png`), through a
/// temporary file renamed into place.
pub fn plot_shifted(points: &[ShiftPoint], output: &Path, title: Option<&str>) -> Result<()> {
    figure_kind(output)?;
    let panels = panels(points);
    let (rows, cols) = grid(panels.len());
    let size = (
        (PANEL.0 * cols as u32).max(1050),
        PANEL.1 * rows as u32 + if title.is_some() { 40 } else { 0 },
    );
    write_figure(
        output,
        size,
        |area| draw(area, &panels, title).map_err(|e| e.to_string()),
        |area| draw(area, &panels, title).map_err(|e| e.to_string()),
    )
}

/// Checks that `output` names an SVG or PNG file that can be written (a
/// usage error otherwise), before any work.
pub(crate) fn figure_kind(output: &Path) -> Result<()> {
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "svg" && ext != "png" {
        return Err(RunError::usage(format!(
            "--output {}: give a file name ending in .svg or .png",
            output.display()
        )));
    }
    check_output(output)
}

/// Writes a figure of `size` pixels to `output` ([`figure_kind`] checked),
/// drawn by `svg` or `png` by its extension, through a temporary file
/// renamed into place (the PNG's text in the bundled font).
pub(crate) fn write_figure(
    output: &Path,
    size: (u32, u32),
    svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
    png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    figure_kind(output)?;
    register_font();
    let fail = |e: &dyn std::fmt::Display| {
        RunError::run(format!(
            "cannot draw {} ({})",
            output.display(),
            one_line(&e.to_string())
        ))
    };
    let is_svg = output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if is_svg {
        let mut text = String::new();
        svg(SVGBackend::with_string(&mut text, size).into_drawing_area()).map_err(|e| fail(&e))?;
        crate::run::write_atomic(output, text.as_bytes())
    } else {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = output.with_file_name(format!(".{name}.{}.tmp.png", std::process::id()));
        let drawn = png(BitMapBackend::new(&tmp, size).into_drawing_area()).map_err(|e| fail(&e));
        let moved = drawn.and_then(|_| std::fs::rename(&tmp, output).map_err(|e| fail(&e)));
        if moved.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(run: &str, model: &str, axis: &str, shift: i64, seed: Option<i64>) -> ShiftPoint {
        ShiftPoint {
            run_dir: run.into(),
            model: model.into(),
            dataset: "MNIST".into(),
            axis: axis.into(),
            shift,
            accuracy_mean: 1.0 - 0.05 * shift.abs() as f64,
            feature_seed: seed,
            n_images: Some(4),
            labels: Some("1".into()),
        }
    }

    fn sample() -> Vec<ShiftPoint> {
        let mut pts = Vec::new();
        for s in -3..=3 {
            pts.push(point("runs/a/Performer", "Performer", "x", s, None));
            pts.push(point("runs/b/Performer", "Performer", "x", s, None));
            pts.push(point(
                "runs/a/ExactRel",
                "ExactRelativePerformer",
                "x",
                s,
                None,
            ));
            pts.push(point(
                "runs/a/ExactRel",
                "ExactRelativePerformer",
                "x",
                s,
                Some(7),
            ));
            pts.push(point(
                "runs/a/ExactRel",
                "ExactRelativePerformer",
                "y",
                s,
                None,
            ));
        }
        pts
    }

    #[test]
    fn at_most_two_panels_side_by_side() {
        let got: Vec<_> = (0..=5).map(grid).collect();
        assert_eq!(got, [(1, 1), (1, 1), (1, 2), (2, 2), (2, 2), (3, 2)]);
    }

    #[test]
    fn panels_and_labels_as_the_reference() {
        let p = panels(&sample());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].title, "MNIST (labels: 1, 4 images)");
        let labels: Vec<&str> = p[0].lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "ExactRelativePerformer [own features]",
                "ExactRelativePerformer [features 7]",
                "Performer (a/Performer)",
                "Performer (b/Performer)",
            ]
        );
        assert_eq!(
            p[0].lines
                .iter()
                .map(|l| (l.colour, l.dashed))
                .collect::<Vec<_>>(),
            [(0, false), (0, true), (1, false), (2, false)]
        );
        assert_eq!(p[1].lines.len(), 1);
        assert_eq!(p[1].lines[0].label, "ExactRelativePerformer");
    }

    #[test]
    fn writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("figs/shift.svg");
        let png = dir.path().join("figs/shift.png");
        plot_shifted(&sample(), &svg, Some("a title")).unwrap();
        plot_shifted(&sample(), &png, None).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        for needle in [
            "Performer (a/Performer)",
            "ExactRelativePerformer [features 7]",
            "a title",
            "shift along y (pixels)",
        ] {
            assert!(text.contains(needle), "{needle} not in the SVG");
        }
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
            "{}",
            bytes.len()
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("figs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        let err = plot_shifted(&sample(), &dir.path().join("x.pdf"), None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn other_csvs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("x.csv");
        std::fs::write(&other, "a,b\n1,2\n").unwrap();
        let err = read_shift_csvs(&[other]).unwrap_err().to_string();
        assert!(err.contains("not a test-shifted CSV"), "{err}");
        let err = read_shift_csvs(&[dir.path().join("none.csv")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let good = dir.path().join("s.csv");
        std::fs::write(
            &good,
            "run_dir,model,dataset,axis,shift,n_images,accuracy_mean,feature_seed\nr,Performer,MNIST,x,-1,4,0.5,\nr,Performer,MNIST,x,0,4,1.0,3.0\n",
        )
        .unwrap();
        let pts = read_shift_csvs(&[good]).unwrap();
        assert_eq!(pts[1].feature_seed, Some(3));
        assert_eq!(pts[0].shift, -1);
    }
}
