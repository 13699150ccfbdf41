//! The demo: the paper's finding on your machine, then a model of your own.
//!
//! ```text
//! cargo run --release --example demo                 # 9.5 minutes from a fresh clone on a 2-core CPU, the build included
//! cargo run --release --example demo -- --help       # the options
//! ```
//!
//! 1. **Data.** MNIST into the data folder (`--data-dir`, else
//!    `$RELATIVE_PERFORMER_DATA`, else `./data`): nothing to do if it is
//!    there and verified; else the download, else the offline sources
//!    (`relperf_data::Fetcher`, the route `relperf-data fetch` takes).
//! 2. **Shifted images.** The shipped MNIST models `Performer`,
//!    `RelativePerformer` and `ExactRelativePerformer` (`results/pretrained`)
//!    classify test images rolled by up to 8 pixels along x and 4 along y
//!    (images with that many empty columns or rows on both sides), for
//!    label 1 and for all labels: the protocol of `relperf-eval
//!    test-shifted`, on the first `--max-images` qualifying images of each
//!    set. A table, two CSVs and two figures (SVG and PNG).
//! 3. **Training.** A small `RelativePerformer` (dim 32, depth 2) trained from
//!    scratch on MNIST for `--minutes` with the project's training code
//!    (`relperf_train::train`, a run folder `relperf-train --resume` can
//!    continue), then tested on the first `--test-images` test images.
//!
//! Everything goes to a new folder `--out/version_N`; nothing is
//! overwritten. Errors are one line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::prelude::Backend;
use clap::Parser;
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::data::{Axis, DatasetName, Fetcher, Labels, resolve_root, verify};
use relative_performer::eval::RunError;
use relative_performer::eval::plot::{plot_shifted, read_shift_csvs};
use relative_performer::eval::run::{DataSection, RunFolder, next_version};
use relative_performer::eval::shifted::{SHIFT_COLUMNS, ShiftOptions, shift_set, shifted_rows};
use relative_performer::eval::table::{Cell, Record, write_csv};
use relative_performer::eval::test_run::{DataCache, LoadedRun};
use relative_performer::models::{ModelConfig, ModelKind};
use relative_performer::train::{
    BatchLimit, RunSpec, RuntimeOptions, Schedule, Start, TrainOptions,
};

/// The demo: shift tests of the shipped models, then a model trained from
/// scratch (see the top of `examples/demo.rs`).
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Cli {
    /// Minutes of training for the model trained from scratch (0: skip it).
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Qualifying test images per shift set (label 1 / all labels, x / y).
    #[arg(long, default_value_t = 100, value_parser = positive)]
    max_images: usize,
    /// Test images the trained model is tested on (the first, in file order).
    #[arg(long, default_value_t = 2000, value_parser = positive)]
    test_images: usize,
    /// Where the output goes (a new `version_N` inside).
    #[arg(long, default_value = "demo-output")]
    out: PathBuf,
    /// The data folder (default: `$RELATIVE_PERFORMER_DATA`, else `./data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The backend (among those compiled in).
    #[arg(long, default_value_t = BackendKind::default().as_str().to_string())]
    backend: String,
    /// The seed of the model trained from scratch.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got '{s}'")),
    }
}

/// The shipped models the demo shift-tests.
const SHIFT_MODELS: [ModelKind; 3] = [
    ModelKind::Performer,
    ModelKind::RelativePerformer,
    ModelKind::ExactRelativePerformer,
];

fn pretrained(model: ModelKind) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("results/pretrained/MNIST")
        .join(model.as_str())
}

fn say(t0: Instant, msg: &str) {
    eprintln!("[{:>6.1} s] {msg}", t0.elapsed().as_secs_f64());
}

struct Demo {
    cli: Cli,
    out: PathBuf,
    t0: Instant,
}

impl BackendTask for Demo {
    type Output = Result<(), RunError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let unshifted = shift_tests::<B>(&self, &device)?;
        if self.cli.minutes > 0.0 {
            train_small::<B>(&self, &device, &unshifted)?;
        }
        Ok(())
    }
}

/// Step 2: every shipped model, label set and axis; returns each model's
/// accuracy at shift 0 on all labels along x.
fn shift_tests<B: Backend>(
    demo: &Demo,
    device: &B::Device,
) -> Result<Vec<(ModelKind, f64)>, RunError> {
    let t0 = demo.t0;
    let loaded = SHIFT_MODELS
        .iter()
        .map(|&m| LoadedRun::<B>::load(&RunFolder::new(pretrained(m)), device))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cache = DataCache::new(demo.cli.data_dir.clone());
    let sets = [
        ("label1", Labels::Only(vec![1]), "label 1"),
        ("all", Labels::All, "all labels"),
    ];
    let axes = [(Axis::X, 8usize), (Axis::Y, 4usize)];
    let mut table: Vec<[String; 7]> = Vec::new();
    let mut unshifted = Vec::new();
    for (file, labels, what) in &sets {
        let mut rows: Vec<Record> = Vec::new();
        for (axis, m) in axes {
            let opts = ShiftOptions {
                labels: labels.clone(),
                min_shift: m,
                axis,
                max_images: Some(demo.cli.max_images),
                batch_size: 50,
            };
            for run in &loaded {
                let set = shift_set(run, &mut cache, &opts)?;
                let model = run.config.model_config.model;
                say(
                    t0,
                    &format!(
                        "{model}: {what}, {} images shifted along {axis} by -{m}..={m}",
                        set.len()
                    ),
                );
                let r = shifted_rows(run, &set, &opts, None, device, |_| {})?;
                let acc = |s: i64| {
                    r.iter()
                        .find(|row| row["shift"] == Cell::Int(s))
                        .and_then(|row| match row["accuracy_mean"] {
                            Cell::Float(v) => Some(v),
                            _ => None,
                        })
                        .unwrap_or(f64::NAN)
                };
                let worst = r
                    .iter()
                    .filter_map(|row| match row["accuracy_mean"] {
                        Cell::Float(v) => Some(v),
                        _ => None,
                    })
                    .fold(f64::INFINITY, f64::min);
                if *file == "all" && axis == Axis::X {
                    unshifted.push((model, acc(0)));
                }
                table.push([
                    model.to_string(),
                    what.to_string(),
                    format!("{axis} ±{m}"),
                    format!("{:.1}", 100.0 * acc(-(m as i64))),
                    format!("{:.1}", 100.0 * acc(0)),
                    format!("{:.1}", 100.0 * acc(m as i64)),
                    format!("{:.1}", 100.0 * worst),
                ]);
                rows.extend(r);
            }
        }
        let csv = demo.out.join(format!("shifted_{file}.csv"));
        write_csv(&csv, &SHIFT_COLUMNS, &rows)?;
        let points = read_shift_csvs(std::slice::from_ref(&csv))?;
        let title = format!("Shipped MNIST models, {what}: accuracy on shifted test images");
        for ext in ["svg", "png"] {
            let fig = demo.out.join(format!("shifted_{file}.{ext}"));
            plot_shifted(&points, &fig, Some(&title))?;
        }
        say(
            t0,
            &format!("wrote {} and shifted_{file}.svg / .png", csv.display()),
        );
    }
    println!();
    println!("Accuracy (%) of the shipped MNIST models on shifted test images:");
    println!(
        "{:<24} {:<11} {:<6} {:>8} {:>8} {:>8} {:>8}",
        "model", "labels", "shifts", "-max", "0", "+max", "worst"
    );
    for r in &table {
        println!(
            "{:<24} {:<11} {:<6} {:>8} {:>8} {:>8} {:>8}",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        );
    }
    println!(
        "Performer (absolute positions) loses accuracy as the images move; the relative models keep theirs:\n\
         ExactRelativePerformer's logits are invariant to cyclic shifts for every draw of its random features.\n"
    );
    Ok(unshifted)
}

/// Step 3: a small model trained from scratch, tested.
fn train_small<B: Backend>(
    demo: &Demo,
    device: &B::Device,
    shipped: &[(ModelKind, f64)],
) -> Result<(), RunError> {
    let t0 = demo.t0;
    let mut mc = ModelConfig::new(ModelKind::RelativePerformer);
    mc.dim = 32;
    mc.depth = 2;
    mc.heads = 4;
    let batch_size = 32;
    let training = TrainOptions {
        batch_size,
        learning_rate: 1e-3,
        warmup: 100,
        schedule: Schedule::Noam,
        seed: Some(demo.cli.seed),
        ..TrainOptions::default()
    };
    let secs = (demo.cli.minutes * 60.0).round().max(1.0) as u64;
    let runtime = RuntimeOptions {
        max_time: Some(format!(
            "{:02}:{:02}:{:02}:{:02}",
            secs / 86_400,
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60
        )),
        limit_val_batches: Some(BatchLimit::Count(16)),
        limit_test_batches: Some(BatchLimit::Count(
            demo.cli.test_images.div_ceil(batch_size) as u64
        )),
        val_check_interval: Some(BatchLimit::Count(100)),
        log_every_n_steps: 20,
        progress: true,
        data_dir: demo.cli.data_dir.as_ref().map(|d| d.display().to_string()),
        backend: demo.cli.backend.clone(),
        ..RuntimeOptions::default()
    };
    let data = DataSection {
        data_dir: runtime.data_dir.clone(),
        embedding_type: mc.embedding_type.as_str().to_string(),
        val_size: training.val_size,
        split_seed: training.split_seed,
    };
    let folder = demo.out.join("train");
    say(
        t0,
        &format!(
            "training a RelativePerformer (dim 32, depth 2, heads 4, batch {batch_size}) from scratch on MNIST for {:.1} min into {}",
            demo.cli.minutes,
            folder.display()
        ),
    );
    let start = Start::New {
        folder: folder.clone(),
        spec: Box::new(RunSpec {
            model_config: mc,
            dataset: DatasetName::Mnist,
            training,
            runtime,
            data,
        }),
        init_from: None,
    };
    let stop = AtomicBool::new(false);
    let outcome = relative_performer::train::train::<Autodiff<B>>(
        start,
        "cargo run --release --example demo",
        device.clone(),
        &stop,
    )?;
    let results = outcome
        .results
        .ok_or_else(|| RunError::run("training was interrupted"))?;
    let f = |k: &str| results[k].as_f64().unwrap_or(f64::NAN);
    let steps = results["global_step"].as_u64().unwrap_or(0);
    say(
        t0,
        &format!(
            "trained {steps} steps ({} images); test accuracy on the first {} test images: {:.1}%",
            steps * batch_size as u64,
            demo.cli.test_images.min(10_000),
            100.0 * f("test_acc")
        ),
    );
    println!();
    println!(
        "Your RelativePerformer after {:.1} min: {:.1}% test accuracy (first {} test images).",
        demo.cli.minutes,
        100.0 * f("test_acc"),
        demo.cli.test_images.min(10_000)
    );
    for (model, acc) in shipped {
        println!(
            "  shipped {model} (dim 32, depth 4): {:.1}% on the all-labels shift set at shift 0",
            100.0 * acc
        );
    }
    println!(
        "Train longer: relperf-train --resume {} --max-time 00:01:00:00 (see README, Training).",
        folder.display()
    );
    Ok(())
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    // SAFETY: first thing in `main`: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        relative_performer::threads::gemm_on_rayon();
    }
    relative_performer::allocator::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments").to_string();
            return fail(
                &format!("{first} (see --help)").trim_start_matches("error: "),
                2,
            );
        }
    };
    if !(cli.minutes >= 0.0 && cli.minutes.is_finite()) {
        return fail(&"--minutes must be 0 (no training) or above", 2);
    }
    let kind: BackendKind = match cli.backend.parse() {
        Ok(k) => k,
        Err(e) => return fail(&e, 2),
    };
    let t0 = Instant::now();
    for m in SHIFT_MODELS {
        if !RunFolder::new(pretrained(m)).is_run() {
            return fail(
                &format!(
                    "{} is not a run folder: the shipped models come with the repository (git checkout -- results/pretrained)",
                    pretrained(m).display()
                ),
                1,
            );
        }
    }
    // 1. the data
    let root = resolve_root(cli.data_dir.as_deref());
    say(t0, &format!("MNIST in {}", root.display()));
    if verify(&root, DatasetName::Mnist).is_err() {
        say(t0, "fetching MNIST (download, else the offline sources)");
        if let Err(e) = Fetcher::new(&root).fetch(DatasetName::Mnist) {
            return fail(&e, 1);
        }
    }
    match verify(&root, DatasetName::Mnist) {
        Ok(report) => say(t0, &format!("MNIST: {report}")),
        Err(e) => return fail(&e, 1),
    }
    // the output folder
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        return fail(
            &format!("cannot make {}: {e}; give another --out", cli.out.display()),
            1,
        );
    }
    let out = cli.out.join(next_version(&cli.out));
    if let Err(e) = std::fs::create_dir_all(&out) {
        return fail(
            &format!("cannot make {}: {e}; give another --out", out.display()),
            1,
        );
    }
    say(t0, &format!("output in {} (backend {kind})", out.display()));
    let cli_minutes = cli.minutes;
    let demo = Demo {
        cli,
        out: out.clone(),
        t0,
    };
    match run_on(kind, demo) {
        Ok(Ok(())) => {
            say(
                t0,
                &format!(
                    "done: figures and CSVs in {}{}",
                    out.display(),
                    if cli_minutes > 0.0 {
                        ", the trained run in train/"
                    } else {
                        ""
                    }
                ),
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&e, e.exit_code() as u8),
        Err(e) => fail(&e, 2),
    }
}
