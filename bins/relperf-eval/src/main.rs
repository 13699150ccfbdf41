//! `relperf-eval test | test-recursive | test-shifted | plot-shifted |
//! equivariance`: evaluate relative-performer's runs, as the PyTorch
//! reference's commands of the same names did, with the same CSV columns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use burn::prelude::Backend;
use clap::{Args, Parser, Subcommand};
use relative_performer::backend::{BackendError, BackendKind, BackendTask, run_on_device};
use relperf_data::{Axis, Labels};
use relperf_eval::curves::{CURVE_COLUMNS, curve_rows, find_curve_runs, plot_curves, read_curve};
use relperf_eval::equivariance::{ProbeConfig, ProbeRow, probe, table};
use relperf_eval::plot::{plot_shifted, read_shift_csvs};
use relperf_eval::shifted::{
    SHIFT_COLUMNS, ShiftOptions, check_shiftable, feature_draws, shift_set, shifted_rows,
};
use relperf_eval::table::{Cell, Record, check_output, write_csv};
use relperf_eval::test_run::{DataCache, LoadedRun, TEST_COLUMNS, test_run};
use relperf_eval::{RunError, RunFolder, find_runs};
use relperf_models::ModelKind;

/// Evaluate relative-performer's runs: loss and accuracy on the validation
/// and test splits, accuracy on shifted test images and its figure, and the
/// equivariance probe.
///
/// A run folder is one with config.json and checkpoints/ (as relperf-train
/// writes them; results/pretrained holds ten). Evaluation loads
/// checkpoints/best.mpk, in eval mode, without an autodiff graph. CSVs have
/// the PyTorch reference's columns. Errors are one line on stderr; the exit
/// code is 2 for a usage error, 1 for anything else.
#[derive(Debug, Parser)]
#[command(name = "relperf-eval", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate one run on the val and test splits with its best checkpoint: one CSV row.
    Test(TestArgs),
    /// Evaluate every run folder below the given folders: one CSV row each (unusable runs are skipped with a warning).
    TestRecursive(TestRecursiveArgs),
    /// Accuracy on shifted test images (MNIST and FashionMNIST): one CSV row per run and shift.
    TestShifted(ShiftArgs),
    /// Plot test-shifted CSVs: accuracy against shift, one panel per dataset and axis.
    PlotShifted(PlotArgs),
    /// Learning curves: validation accuracy against training images seen, from each run's metrics.csv; a figure and a CSV.
    PlotCurves(CurvesArgs),
    /// How far each model's class logits move under cyclic shifts of the image: exact attention vs random features.
    Equivariance(EquivarianceArgs),
}

#[derive(Debug, Args)]
struct Compute {
    /// Burn backend, among those compiled into this build: ndarray, flex, wgpu.
    #[arg(long, value_name = "NAME", default_value_t = BackendKind::default(), value_parser = parse_backend)]
    backend: BackendKind,
    /// Device of the backend: default (or cpu) on the CPU backends; with wgpu default, discrete[:N], integrated[:N], virtual[:N] or cpu.
    #[arg(long, value_name = "DEVICE", default_value = "default")]
    device: String,
}

#[derive(Debug, Args)]
struct Data {
    /// Data folder (default: the run's own if it still exists, else $RELATIVE_PERFORMER_DATA, else ./data).
    #[arg(long = "data-dir", alias = "data_dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long = "batch-size", alias = "batch_size", value_name = "N", default_value_t = 64, value_parser = positive)]
    batch_size: usize,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The run folder (LOG_PATH/EXP_NAME/VERSION).
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    #[command(flatten)]
    test: TestOptions,
}

#[derive(Debug, Args)]
struct TestRecursiveArgs {
    /// Folders to search for run folders.
    #[arg(value_name = "DIR", required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    #[command(flatten)]
    test: TestOptions,
}

#[derive(Debug, Args)]
struct TestOptions {
    /// CSV file to write (its folder is created; written atomically).
    #[arg(long, value_name = "CSV")]
    output: PathBuf,
    /// Evaluate only this many batches of each split, a quick check (default: all).
    #[arg(long = "limit-batches", alias = "limit_batches", value_name = "N", value_parser = positive)]
    limit_batches: Option<usize>,
    #[command(flatten)]
    data: Data,
    #[command(flatten)]
    compute: Compute,
}

#[derive(Debug, Args)]
struct ShiftArgs {
    /// Run folders, or folders to search for runs.
    #[arg(value_name = "RUN_DIR", required = true, num_args = 1..)]
    run_dirs: Vec<PathBuf>,
    /// Class labels to shift (0..9), or 'all'.
    #[arg(long, value_name = "LABEL", num_args = 1.., default_value = "1")]
    labels: Vec<String>,
    /// Largest shift in pixels, in both directions; only images with this many empty columns (rows) on both sides.
    #[arg(
        long = "min-shift",
        alias = "min_shift",
        value_name = "PIXELS",
        default_value_t = 10
    )]
    min_shift: usize,
    /// Shift columns (x) or rows (y).
    #[arg(long, value_name = "x|y", default_value = "x", value_parser = parse_axis)]
    axis: Axis,
    /// CSV file to write (its folder is created; written atomically).
    #[arg(long, value_name = "CSV")]
    output: PathBuf,
    /// Also evaluate with random features redrawn from each SEED (rows get feature_seed; default: the checkpoint's own only).
    #[arg(long = "feature-seed", alias = "feature_seed", value_name = "SEED", num_args = 1..)]
    feature_seed: Vec<u64>,
    /// Use only the first N qualifying test images, in file order (quicker; default: all).
    #[arg(long = "max-images", alias = "max_images", value_name = "N", value_parser = positive)]
    max_images: Option<usize>,
    /// Evaluate with one fresh random draw of the features (seed printed and saved) instead of the checkpoint's; with --feature-seed, only those draws.
    #[arg(long = "redraw-features", alias = "redraw_features")]
    redraw_features: bool,
    #[command(flatten)]
    data: Data,
    #[command(flatten)]
    compute: Compute,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// CSV files written by test-shifted.
    #[arg(value_name = "CSV", required = true, num_args = 1..)]
    csvs: Vec<PathBuf>,
    /// Image file to write, .svg or .png (its folder is created).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Figure title (default: none).
    #[arg(long, value_name = "TEXT")]
    title: Option<String>,
}

#[derive(Debug, Args)]
struct CurvesArgs {
    /// Run folders, or folders to search below for runs (folders with config.json and metrics.csv: relperf-train's or the PyTorch reference's).
    #[arg(value_name = "DIR", required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    /// Image file to write, .svg or .png (its folder is created).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Also write the curves as a CSV file, one row per validation.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Figure title (default: none).
    #[arg(long, value_name = "TEXT")]
    title: Option<String>,
}

#[derive(Debug, Args)]
struct EquivarianceArgs {
    /// Models to measure (default: all five).
    #[arg(long, value_name = "MODEL", num_args = 1.., value_parser = parse_model)]
    models: Vec<ModelKind>,
    /// Image side in pixels (at least 4).
    #[arg(long, value_name = "PIXELS", default_value_t = 16)]
    side: usize,
    /// Random-feature draws per model.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive)]
    draws: usize,
    /// Seed of the weights, features and images.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    seed: u64,
    /// Also write the measurements as CSV (model, attention, draw, max_relative_logit_change).
    #[arg(long, value_name = "CSV")]
    output: Option<PathBuf>,
    #[command(flatten)]
    compute: Compute,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse::<BackendKind>().map_err(|e| e.to_string())
}

fn parse_axis(s: &str) -> Result<Axis, String> {
    s.parse::<Axis>().map_err(|e| e.to_string())
}

fn parse_model(s: &str) -> Result<ModelKind, String> {
    s.parse::<ModelKind>().map_err(|e| e.to_string())
}

/// The last panic's message, for the one-line error.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn main() -> ExitCode {
    // SAFETY: first thing in `main`: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        relative_performer::threads::gemm_on_rayon();
    }
    relative_performer::allocator::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut p) = PANIC.lock() {
            *p = Some(format!(
                "{}{at}",
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command)));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
        Err(_) => {
            let msg = PANIC
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .unwrap_or_default();
            eprintln!("error: internal failure: {msg}; nothing was written");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<(), RunError> {
    match command {
        Command::Test(a) => test(vec![a.run_dir], false, a.test),
        Command::TestRecursive(a) => test(a.dirs, true, a.test),
        Command::TestShifted(a) => test_shifted(a),
        Command::PlotShifted(a) => plot(a),
        Command::PlotCurves(a) => curves(a),
        Command::Equivariance(a) => equivariance(a),
    }
}

/// Runs `task` on the chosen backend and device.
fn on_backend<T: BackendTask<Output = Result<O, RunError>>, O>(
    compute: &Compute,
    task: T,
) -> Result<O, RunError> {
    run_on_device(compute.backend, Some(&compute.device), task).map_err(backend_error)?
}

/// A backend or device that is not there: usage (2), but a GPU that does
/// not work is the machine's (1).
fn backend_error(e: BackendError) -> RunError {
    match &e {
        BackendError::Device(m) if m.contains("no working adapter") => RunError::run(e.to_string()),
        _ => RunError::usage(e.to_string()),
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------- test

struct TestTask {
    runs: Vec<RunFolder>,
    recursive: bool,
    data_dir: Option<PathBuf>,
    batch_size: usize,
    limit_batches: Option<usize>,
}

impl BackendTask for TestTask {
    type Output = Result<Vec<Record>, RunError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let mut cache = DataCache::new(self.data_dir);
        let mut rows = Vec::new();
        for run in &self.runs {
            let start = Instant::now();
            let loaded = match LoadedRun::<B>::load(run, &device) {
                Ok(l) => l,
                Err(e) if self.recursive => {
                    eprintln!("warning: skipping {}: {e}", run.path.display());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (row, [val, test]) = test_run(
                &loaded,
                &mut cache,
                self.batch_size,
                self.limit_batches,
                &device,
            )?;
            eprintln!(
                "{}: val/acc {:.4} ({} images), test/acc {:.4} ({} images) [{}]",
                run.path.display(),
                val.accuracy,
                val.n,
                test.accuracy,
                test.n,
                seconds(start)
            );
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(RunError::run("no run could be tested"));
        }
        Ok(rows)
    }
}

fn test(dirs: Vec<PathBuf>, recursive: bool, opts: TestOptions) -> Result<(), RunError> {
    check_output(&opts.output)?;
    let runs = if recursive {
        find_runs(&dirs)?
    } else {
        dirs.into_iter().map(RunFolder::new).collect()
    };
    refuse_run_files(&opts.output, &runs)?;
    let rows = on_backend(
        &opts.compute,
        TestTask {
            runs,
            recursive,
            data_dir: opts.data.data_dir,
            batch_size: opts.data.batch_size,
            limit_batches: opts.limit_batches,
        },
    )?;
    write_csv(&opts.output, &TEST_COLUMNS, &rows)?;
    println!(
        "Wrote {} row{} to {}",
        rows.len(),
        plural(rows.len()),
        opts.output.display()
    );
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// An --output inside a run folder that is one of its own files would
/// overwrite the run.
fn refuse_run_files(output: &Path, runs: &[RunFolder]) -> Result<(), RunError> {
    let canon = |p: &Path| p.canonicalize().ok();
    let Some(out) = canon(output) else {
        return Ok(()); // a new file
    };
    for run in runs {
        let own = [run.config_path(), run.results_path(), run.metrics_path()];
        let inside = canon(&run.checkpoints()).is_some_and(|c| out.starts_with(c));
        if inside || own.iter().any(|f| canon(f).as_ref() == Some(&out)) {
            return Err(RunError::usage(format!(
                "--output {} is a file of the run {}: write the CSV elsewhere",
                output.display(),
                run.path.display()
            )));
        }
    }
    Ok(())
}

// --------------------------------------------------------- test-shifted

struct ShiftTask {
    runs: Vec<RunFolder>,
    data_dir: Option<PathBuf>,
    opts: ShiftOptions,
    draws: Vec<Option<u64>>,
}

impl BackendTask for ShiftTask {
    type Output = Result<Vec<Record>, RunError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        // every run is loaded and checked before any is evaluated
        let loaded = self
            .runs
            .iter()
            .map(|r| {
                let l = LoadedRun::<B>::load(r, &device)?;
                check_shiftable(&l)?;
                Ok(l)
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let mut cache = DataCache::new(self.data_dir);
        let m = self.opts.min_shift as i64;
        let mut rows = Vec::new();
        for run in &loaded {
            let set = shift_set(run, &mut cache, &self.opts)?;
            for &seed in &self.draws {
                let features = seed.map_or(String::new(), |s| format!(" [features {s}]"));
                let name = format!("{}{features}", run.run.path.display());
                let mut clock = Instant::now();
                let run_rows = shifted_rows(run, &set, &self.opts, seed, &device, |row| {
                    eprintln!(
                        "{name}: shift {}: accuracy {} (std {}), loss {} [{}]",
                        row["shift"].text(),
                        fmt3(&row["accuracy_mean"]),
                        fmt3(&row["accuracy_std"]),
                        fmt3(&row["loss_mean"]),
                        seconds(clock)
                    );
                    clock = Instant::now();
                })?;
                let at = |s: i64| {
                    run_rows
                        .iter()
                        .find(|r| r["shift"] == Cell::Int(s))
                        .map_or(String::new(), |r| fmt3(&r["accuracy_mean"]))
                };
                eprintln!(
                    "{name}: {} images, accuracy at shift {} / 0 / {m}: {} / {} / {}",
                    set.len(),
                    -m,
                    at(-m),
                    at(0),
                    at(m)
                );
                rows.extend(run_rows);
            }
        }
        Ok(rows)
    }
}

fn fmt3(c: &Cell) -> String {
    match c {
        Cell::Float(v) => format!("{v:.3}"),
        other => other.text(),
    }
}

fn test_shifted(a: ShiftArgs) -> Result<(), RunError> {
    let labels = Labels::parse(&a.labels).map_err(|e| RunError::usage(format!("--labels: {e}")))?;
    check_output(&a.output)?;
    let runs = find_runs(&a.run_dirs)?;
    refuse_run_files(&a.output, &runs)?;
    let draws = feature_draws(&a.feature_seed, a.redraw_features, || {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % ((1u64 << 31) - 1);
        eprintln!("Redrawing the random features with seed {seed}");
        seed
    });
    let opts = ShiftOptions {
        labels,
        min_shift: a.min_shift,
        axis: a.axis,
        max_images: a.max_images,
        batch_size: a.data.batch_size,
    };
    let rows = on_backend(
        &a.compute,
        ShiftTask {
            runs,
            data_dir: a.data.data_dir,
            opts,
            draws,
        },
    )?;
    write_csv(&a.output, &SHIFT_COLUMNS, &rows)?;
    println!("Wrote {} rows to {}", rows.len(), a.output.display());
    Ok(())
}

// --------------------------------------------------------- plot-shifted

fn plot(a: PlotArgs) -> Result<(), RunError> {
    let out = a.output.canonicalize().ok();
    if out.is_some() && a.csvs.iter().any(|c| c.canonicalize().ok() == out) {
        return Err(RunError::usage(format!(
            "--output {} is one of the CSVs to plot: give another file name",
            a.output.display()
        )));
    }
    let points = read_shift_csvs(&a.csvs)?;
    plot_shifted(&points, &a.output, a.title.as_deref())?;
    println!("Wrote {}", a.output.display());
    Ok(())
}

// --------------------------------------------------------- plot-curves

fn curves(a: CurvesArgs) -> Result<(), RunError> {
    if let Some(csv) = &a.csv {
        check_output(csv)?;
    }
    let runs = find_curve_runs(&a.dirs)?;
    let curves = runs
        .iter()
        .map(read_curve)
        .collect::<Result<Vec<_>, RunError>>()?;
    plot_curves(&curves, &a.output, a.title.as_deref())?;
    println!("Wrote {}", a.output.display());
    if let Some(csv) = &a.csv {
        let rows = curve_rows(&curves);
        write_csv(csv, &CURVE_COLUMNS, &rows)?;
        println!("Wrote {} rows to {}", rows.len(), csv.display());
    }
    for c in &curves {
        let best = c
            .points
            .iter()
            .max_by(|x, y| x.val_acc.total_cmp(&y.val_acc))
            .expect("a curve has a point");
        let last = c.points.last().expect("a curve has a point");
        println!(
            "{}: {} validations, best val/acc {:.4} after {} images (step {}), last {:.4} after {} images",
            c.run_dir,
            c.points.len(),
            best.val_acc,
            best.images,
            best.step,
            last.val_acc,
            last.images
        );
    }
    Ok(())
}

// --------------------------------------------------------- equivariance

struct ProbeTask(ProbeConfig);

impl BackendTask for ProbeTask {
    type Output = Result<Vec<ProbeRow>, RunError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        Ok(probe::<B>(&self.0, &device))
    }
}

fn equivariance(a: EquivarianceArgs) -> Result<(), RunError> {
    if a.side < 4 {
        return Err(RunError::usage(format!(
            "--side must be at least 4 (got {})",
            a.side
        )));
    }
    if let Some(out) = &a.output {
        check_output(out)?;
    }
    let cfg = ProbeConfig {
        models: if a.models.is_empty() {
            ModelKind::ALL.to_vec()
        } else {
            a.models
        },
        side: a.side,
        draws: a.draws,
        seed: a.seed,
        ..ProbeConfig::default()
    };
    let start = Instant::now();
    let rows = probe_rows(&a.compute, cfg)?;
    print!("{}", table(&rows));
    eprintln!("[{}]", seconds(start));
    if let Some(out) = &a.output {
        let records: Vec<Record> = rows
            .iter()
            .map(|r| {
                let mut rec = Record::new();
                rec.insert("model".into(), r.model.as_str().into());
                rec.insert("attention".into(), r.attention.into());
                rec.insert("draw".into(), r.draw.into());
                rec.insert(
                    "max_relative_logit_change".into(),
                    r.max_relative_logit_change.into(),
                );
                rec
            })
            .collect();
        let columns = ["model", "attention", "draw", "max_relative_logit_change"];
        write_csv(out, &columns, &records)?;
        println!("Wrote {}", out.display());
    }
    Ok(())
}

/// The probe in float64 on ndarray, as the reference (float32 elsewhere).
fn probe_rows(compute: &Compute, cfg: ProbeConfig) -> Result<Vec<ProbeRow>, RunError> {
    #[cfg(feature = "ndarray")]
    if compute.backend == BackendKind::Ndarray {
        let device = compute.device.trim().to_ascii_lowercase();
        if device != "default" && device != "cpu" {
            return Err(RunError::usage(format!(
                "--device {}: the ndarray backend runs on the CPU only; leave --device out, or use --backend wgpu",
                compute.device
            )));
        }
        return Ok(probe::<burn::backend::NdArray<f64>>(
            &cfg,
            &Default::default(),
        ));
    }
    on_backend(compute, ProbeTask(cfg))
}

/// Clap's error as one line (its first), exit code 2; help and version as
/// clap prints them, exit code 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{first} (see relperf-eval --help)");
            ExitCode::from(2)
        }
    }
}
