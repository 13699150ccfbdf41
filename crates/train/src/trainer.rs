//! The training loop and its run folder: a new run, a run continued with
//! `--resume`, a run started from another's weights with `--init-from`.
//!
//! Everything random is a function of the run's seed and the step, so a run
//! continued from its last checkpoint takes the same steps as one that never
//! stopped: the model is initialised after `B::seed(seed)`, each epoch's
//! data order is the permutation of `(seed, epoch)`, and the backend's
//! generator (dropout) is reseeded from `(seed, step)` before every step.
//! Burn's generator is one per backend and process: two trainings in threads
//! of one process draw from each other's stream and lose this property.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use relperf_data::split::{permutation, train_val_indices};
use relperf_data::{DatasetName, ImageSet, Split};
use relperf_eval::RunError;
use relperf_eval::error::Result;
use relperf_eval::evaluate::{batcher_for, cross_entropy, evaluate, logits};
use relperf_eval::run::{DataSection, RunConfig, RunFolder, write_json_atomic};
use relperf_eval::{Metrics, run};
use relperf_models::{ImageClassifier, ModelConfig, ModelKind, load_record, save_record};
use serde_json::{Value, json};

use crate::checkpoint::{Checkpoint, TrainState, record_bytes, record_from_bytes};
use crate::ema::Ema;
use crate::metrics::{MetricsLog, Row};
use crate::optim::{adam, clip_grad_norm};
use crate::options::{RuntimeOptions, TrainOptions};

/// What a new run is made of.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The model.
    pub model_config: ModelConfig,
    /// The dataset.
    pub dataset: DatasetName,
    /// The options that define the run (seed resolved).
    pub training: TrainOptions,
    /// How this session runs.
    pub runtime: RuntimeOptions,
    /// The data section of `config.json`.
    pub data: DataSection,
}

/// How a session starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run in `folder` (which must not exist or be empty), optionally
    /// from the best weights of the run `init_from`.
    New {
        /// The run folder to make.
        folder: PathBuf,
        /// The run's spec.
        spec: Box<RunSpec>,
        /// A finished run whose weights and features start this one.
        init_from: Option<RunFolder>,
    },
    /// Continue `run` from `checkpoints/last.ckpt` with new runtime options.
    Resume {
        /// The run.
        run: RunFolder,
        /// This session's runtime options.
        runtime: RuntimeOptions,
    },
    /// End a stopped `run` without training: test its best checkpoint and
    /// write `results.json`, as a run that ends by itself does. The loop
    /// state comes from `checkpoints/last.ckpt`, or, where that is lost,
    /// from `metrics.csv` (then the training time is unknown: `null`).
    Finish {
        /// The run.
        run: RunFolder,
        /// This session's runtime options (backend, data folder, test limit).
        runtime: RuntimeOptions,
    },
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run.
    pub run: RunFolder,
    /// `results.json` (`None` if interrupted).
    pub results: Option<Value>,
    /// Stopped by Ctrl-C / SIGTERM: `last.ckpt` holds the state.
    pub interrupted: bool,
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS+00:00`.
pub fn iso_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now() -> String {
    iso_time(std::time::SystemTime::now())
}

/// A stream of seeds from the run's seed and a purpose.
fn mix(seed: u64, purpose: u64, index: u64) -> u64 {
    // splitmix64 of the three
    let mut z = seed
        .wrapping_add(purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const DATA_ORDER: u64 = 1;
const DROPOUT: u64 = 2;

/// The train, validation and test sets of a run.
#[derive(Debug)]
pub struct RunData {
    /// Training images (the training split minus validation).
    pub train: ImageSet,
    /// Validation images (held out of the training split).
    pub val: ImageSet,
    /// The official test split.
    pub test: ImageSet,
}

/// Loads the dataset and splits it as the run says.
pub fn load_data(
    dataset: DatasetName,
    data: &DataSection,
    runtime: &RuntimeOptions,
) -> Result<RunData> {
    let root = relperf_data::resolve_root(runtime.data_dir.as_deref().map(Path::new));
    let full = ImageSet::load(&root, dataset, Split::Train)?;
    if data.val_size < 1 || data.val_size >= full.len() {
        return Err(RunError::usage(format!(
            "--val-size must be between 1 and {} for {dataset} (got {})",
            full.len() - 1,
            data.val_size
        )));
    }
    let (train_idx, val_idx) = train_val_indices(full.len(), data.val_size, data.split_seed);
    let test = ImageSet::load(&root, dataset, Split::Test)?;
    Ok(RunData {
        train: full.subset(&train_idx),
        val: full.subset(&val_idx),
        test,
    })
}

/// Progress on stderr: a line redrawn in place in a terminal, otherwise
/// one line every `log_every_n_steps` steps.
#[derive(Debug)]
struct Progress {
    enabled: bool,
    tty: bool,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn step(&self, line: &str, logged: bool) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else if logged {
            eprintln!("{line}");
        }
    }

    fn event(&self, line: &str) {
        if self.tty && self.enabled {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{line}");
    }
}

/// Everything the loop carries.
struct Session<B: AutodiffBackend> {
    run: RunFolder,
    model_config: ModelConfig,
    dataset: DatasetName,
    training: TrainOptions,
    runtime: RuntimeOptions,
    seed: u64,
    device: B::Device,
    state: TrainState,
    metrics: MetricsLog,
    progress: Progress,
    _b: std::marker::PhantomData<B>,
}

fn write_model_checkpoint<B: AutodiffBackend, O>(
    s: &Session<B>,
    model: &ImageClassifier<B>,
    optim: &O,
    ema: Option<&Ema<B::InnerBackend>>,
) -> Result<()>
where
    O: Optimizer<ImageClassifier<B>, B>,
{
    let mut state = s.state.clone();
    state.ema_updates = ema.map_or(0, |e| e.updates);
    let ema_bytes = match ema {
        Some(e) => record_bytes::<B::InnerBackend, _>(e.apply(model.valid()).into_record())?,
        None => Vec::new(),
    };
    Checkpoint {
        state,
        model: record_bytes::<B, _>(model.clone().into_record())?,
        optimizer: record_bytes::<B, _>(optim.to_record())?,
        ema: ema_bytes,
    }
    .write(&s.run.last())
}

/// The model configured by `spec`, built and checked against one image of
/// the dataset before anything is written.
fn build_model<B: AutodiffBackend>(
    config: &ModelConfig,
    seed: u64,
    data: &RunData,
    device: &B::Device,
) -> Result<ImageClassifier<B>> {
    B::seed(device, seed);
    let model = config.init::<B>(seed, device)?;
    let (c, h, w) = data.train.shape();
    model.check_input(c, h, w)?;
    Ok(model)
}

fn machine(runtime: &RuntimeOptions) -> Value {
    json!({
        "backend": runtime.backend,
        "device": runtime.device,
        "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "relperf_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Makes `folder` (refusing a non-empty one), writes `config.json`.
fn make_run_folder(
    folder: &Path,
    spec: &RunSpec,
    parameters: usize,
    command: &str,
    init_from: Option<Value>,
) -> Result<RunFolder> {
    if folder.exists()
        && std::fs::read_dir(folder)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(RunError::usage(format!(
            "{} already exists and is not empty; continue it with `relperf-train --resume {}` or pick another --version",
            folder.display(),
            folder.display()
        )));
    }
    let run = RunFolder::new(folder);
    std::fs::create_dir_all(run.checkpoints()).map_err(|e| {
        RunError::run(format!(
            "cannot make the run folder {} ({e}); check that --log-path is writable",
            folder.display()
        ))
    })?;
    let created = now();
    let mut config = json!({
        "format": run::FORMAT,
        "package_version": env!("CARGO_PKG_VERSION"),
        "model": spec.model_config.model,
        "dataset": spec.dataset.as_str(),
        "config_version": relperf_models::config::CONFIG_VERSION,
        "model_config": spec.model_config,
        "training": spec.training,
        "runtime": spec.runtime,
        "data": spec.data,
        "seed": spec.training.seed,
        "parameters": parameters,
        "command": command,
        "created": created,
        "sessions": [{
            "started": created,
            "command": command,
            "runtime": spec.runtime,
            "machine": machine(&spec.runtime),
        }],
    });
    if let Some(init) = init_from {
        config["init_from"] = init;
    }
    write_json_atomic(&run.config_path(), &config)?;
    Ok(run)
}

/// Runs a training session to its end (a budget, early stopping) or until
/// `stop` is set (Ctrl-C): then `last.ckpt` is written and the outcome says
/// `interrupted`. `command` is the command line, saved in `config.json`.
pub fn train<B: AutodiffBackend>(
    start: Start,
    command: &str,
    device: B::Device,
    stop: &AtomicBool,
) -> Result<Outcome> {
    match start {
        Start::New {
            folder,
            spec,
            init_from,
        } => {
            spec.training.validate()?;
            spec.runtime.validate()?;
            spec.model_config.validate()?;
            let seed = spec.training.seed.ok_or_else(|| {
                RunError::usage("the run's seed must be resolved before training")
            })?;
            let data = load_data(spec.dataset, &spec.data, &spec.runtime)?;
            let mut model = build_model::<B>(&spec.model_config, seed, &data, &device)?;
            let mut init_json = None;
            if let Some(src) = &init_from {
                let src_config = src.read_config()?;
                let best = src.best_checkpoint()?;
                let loaded = load_record::<B>(&spec.model_config, &best, &device)?;
                model = loaded;
                // the steps that led to its best weights, as the reference's
                // init_from records them (for the budget of a chain of runs)
                let best_steps = src
                    .read_results()
                    .ok()
                    .flatten()
                    .and_then(|r| r.get("best_step").and_then(Value::as_u64))
                    .map(|step| step + 1);
                init_json = Some(json!({
                    "run_dir": src.path.display().to_string(),
                    "checkpoint": best.display().to_string(),
                    "model": src_config.model,
                    "dataset": src_config.dataset,
                    "seed": src_config.seed,
                    "global_step": best_steps,
                    "command": src_config.rest.get("command"),
                    "init_from": src_config.rest.get("init_from"),
                }));
            }
            let parameters = model.trainable_params();
            let run = make_run_folder(&folder, &spec, parameters, command, init_json)?;
            let metrics = MetricsLog::create(&run.metrics_path())?;
            let progress = Progress::new(spec.runtime.progress);
            progress.event(&format!(
                "training {} on {} in {} (seed {seed}, {parameters} parameters, {} training / {} validation images)",
                spec.model_config.model,
                spec.dataset,
                run.path.display(),
                data.train.len(),
                data.val.len()
            ));
            let session = Session::<B> {
                run,
                model_config: spec.model_config.clone(),
                dataset: spec.dataset,
                training: spec.training.clone(),
                runtime: spec.runtime.clone(),
                seed,
                device,
                state: TrainState {
                    model: spec.model_config.model.to_string(),
                    dataset: spec.dataset.to_string(),
                    ..Default::default()
                },
                metrics,
                progress,
                _b: std::marker::PhantomData,
            };
            let optim = adam::<B, ImageClassifier<B>>();
            let ema = (spec.training.ema_decay > 0.0)
                .then(|| Ema::new::<B, _>(spec.training.ema_decay, &model));
            run_loop(session, model, optim, ema, &data, stop)
        }
        Start::Resume { run, runtime } => {
            runtime.validate()?;
            let config = run.read_config()?;
            let (training, seed) = training_of(&run, &config)?;
            if !run.last().is_file() {
                return Err(RunError::run(format!(
                    "{} has no {}: nothing to resume from (it stopped before its first checkpoint); start a new run",
                    run.path.display(),
                    run::LAST_FILE
                )));
            }
            let ckpt = Checkpoint::read(&run.last())?;
            if ckpt.state.model != config.model.as_str() || ckpt.state.dataset != config.dataset {
                return Err(RunError::run(format!(
                    "{} holds a {} on {}, but config.json says {} on {}",
                    run.last().display(),
                    ckpt.state.model,
                    ckpt.state.dataset,
                    config.model,
                    config.dataset
                )));
            }
            let dataset = config.dataset()?;
            let data = load_data(dataset, &config.data, &runtime)?;
            let model = build_model::<B>(&config.model_config, seed, &data, &device)?;
            let corrupt = |why: String| {
                RunError::run(format!(
                    "{} is corrupt: {why}; delete it to restart the run, or train a new one",
                    run.last().display()
                ))
            };
            let model = model.load_record(
                record_from_bytes::<B, _>(ckpt.model, &device, "model record").map_err(corrupt)?,
            );
            let optim = adam::<B, ImageClassifier<B>>();
            let optim = optim.load_record(
                record_from_bytes::<B, _>(ckpt.optimizer, &device, "optimizer record")
                    .map_err(corrupt)?,
            );
            let ema = if training.ema_decay > 0.0 {
                if ckpt.ema.is_empty() {
                    return Err(corrupt(
                        "it has no weight average, but the run uses --ema-decay".into(),
                    ));
                }
                let averaged = config
                    .model_config
                    .init::<B::InnerBackend>(seed, &device)?
                    .load_record(
                        record_from_bytes::<B::InnerBackend, _>(
                            ckpt.ema,
                            &device,
                            "weight average",
                        )
                        .map_err(corrupt)?,
                    );
                Some(Ema::restore::<B, _>(
                    training.ema_decay,
                    ckpt.state.ema_updates,
                    &model,
                    &averaged,
                ))
            } else {
                None
            };
            let mut state = ckpt.state;
            if state.stopped_by.as_deref() == Some("early_stopping") {
                return Err(RunError::usage(format!(
                    "{} has finished: early stopping after {} validations without improvement; start a new run (--init-from {} to start from its weights)",
                    run.path.display(),
                    state.bad_validations,
                    run.path.display()
                )));
            }
            let session_check = budget_left(&state, &runtime);
            if let Some(why) = session_check {
                return Err(RunError::usage(format!(
                    "{} has finished at step {} (epoch {}) and this budget is spent ({why}); raise --max-steps, --max-epochs or --max-time to continue it",
                    run.path.display(),
                    state.global_step,
                    state.epoch
                )));
            }
            state.stopped_by = None;
            let metrics = MetricsLog::resume(&run.metrics_path(), state.global_step)?;
            add_session(
                &run,
                command,
                &runtime,
                json!({ "resumed_from_step": state.global_step }),
            )?;
            let progress = Progress::new(runtime.progress);
            progress.event(&format!(
                "resuming {} on {} in {} at step {} (epoch {})",
                config.model,
                dataset,
                run.path.display(),
                state.global_step,
                state.epoch
            ));
            let session = Session::<B> {
                run,
                model_config: config.model_config.clone(),
                dataset,
                training,
                runtime,
                seed,
                device,
                state,
                metrics,
                progress,
                _b: std::marker::PhantomData,
            };
            run_loop(session, model, optim, ema, &data, stop)
        }
        Start::Finish { run, runtime } => finish_stopped::<B>(run, runtime, command, device),
    }
}

/// The training options of an existing run and its seed.
fn training_of(run: &RunFolder, config: &RunConfig) -> Result<(TrainOptions, u64)> {
    let training: TrainOptions = serde_json::from_value(config.training.clone()).map_err(|e| {
        RunError::run(format!(
            "{}: its training options are not relperf-train's ({e}); was it trained by another program?",
            run.config_path().display()
        ))
    })?;
    let seed = training
        .seed
        .or(config.seed)
        .ok_or_else(|| RunError::run(format!("{} has no seed", run.config_path().display())))?;
    Ok((training, seed))
}

/// Appends this session (its start, command, runtime, machine and the
/// fields of `extra`) to the run's `config.json`.
fn add_session(
    run: &RunFolder,
    command: &str,
    runtime: &RuntimeOptions,
    extra: Value,
) -> Result<()> {
    let mut config_json = run::read_json(&run.config_path())?;
    let mut session = json!({
        "started": now(),
        "command": command,
        "runtime": runtime,
        "machine": machine(runtime),
    });
    if let (Some(entry), Value::Object(more)) = (session.as_object_mut(), extra) {
        entry.extend(more);
    }
    match config_json
        .get_mut("sessions")
        .and_then(Value::as_array_mut)
    {
        Some(list) => list.push(session),
        None => config_json["sessions"] = json!([session]),
    }
    write_json_atomic(&run.config_path(), &config_json)
}

/// [`Start::Finish`]: tests the best checkpoint of a stopped run and writes
/// its `results.json`.
fn finish_stopped<B: AutodiffBackend>(
    run: RunFolder,
    runtime: RuntimeOptions,
    command: &str,
    device: B::Device,
) -> Result<Outcome> {
    runtime.validate()?;
    let config = run.read_config()?;
    if run.is_finished() {
        return Err(RunError::usage(format!(
            "{} has finished already (it has {}): nothing to finish",
            run.path.display(),
            run.results_path().display()
        )));
    }
    run.best_checkpoint()?;
    let (training, seed) = training_of(&run, &config)?;
    let (mut state, state_from) = if run.last().is_file() {
        (Checkpoint::read(&run.last())?.state, run::LAST_FILE)
    } else {
        (state_from_metrics(&run.metrics_path())?, "metrics.csv")
    };
    state.model = config.model.to_string();
    state.dataset = config.dataset.clone();
    if state.stopped_by.is_none() {
        state.stopped_by = Some("interrupted".into());
    }
    let dataset = config.dataset()?;
    let data = load_data(dataset, &config.data, &runtime)?;
    let metrics = MetricsLog::resume(&run.metrics_path(), state.global_step)?;
    add_session(
        &run,
        command,
        &runtime,
        json!({ "finished_at_step": state.global_step, "state_from": state_from }),
    )?;
    let progress = Progress::new(runtime.progress);
    progress.event(&format!(
        "finishing {} on {} in {} (stopped at step {}; state from {state_from}): testing its best checkpoint",
        config.model,
        dataset,
        run.path.display(),
        state.global_step
    ));
    let session = Session::<B> {
        run,
        model_config: config.model_config.clone(),
        dataset,
        training,
        runtime,
        seed,
        device,
        state,
        metrics,
        progress,
        _b: std::marker::PhantomData,
    };
    let finished_by = json!({ "command": command, "state_from": state_from });
    finish(session, &data, Some(finished_by))
}

/// The loop state of a run whose `last.ckpt` is lost, from its
/// `metrics.csv`: the steps and epoch of the last row, the validations and
/// the best of them (the first of equal accuracies, as training keeps it).
/// The training time is not in the file: `NaN` (`null` in `results.json`).
pub fn state_from_metrics(path: &Path) -> Result<TrainState> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::run(format!("cannot read {} ({e})", path.display())))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            RunError::run(format!(
                "{} has no column {name}: not relperf-train's metrics",
                path.display()
            ))
        })
    };
    let (epoch, step, acc, loss) = (
        col("epoch")?,
        col("step")?,
        col("val/acc")?,
        col("val/loss")?,
    );
    let mut state = TrainState {
        train_seconds: f64::NAN,
        ..Default::default()
    };
    let mut rows = 0;
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let bad = || {
            RunError::run(format!(
                "{} line {} is not a metrics row: {line}",
                path.display(),
                i + 2
            ))
        };
        let number = |c: usize| -> Result<Option<f64>> {
            match cells.get(c).copied().unwrap_or_default() {
                "" => Ok(None),
                v => v.parse::<f64>().map(Some).map_err(|_| bad()),
            }
        };
        let (Some(e), Some(s)) = (number(epoch)?, number(step)?) else {
            return Err(bad());
        };
        let (e, s) = (e as u64, s as u64);
        rows += 1;
        state.epoch = state.epoch.max(e);
        state.global_step = state.global_step.max(s + 1);
        if let Some(a) = number(acc)? {
            state.validations += 1;
            if state.best_val_acc.is_none_or(|b| a > b) {
                state.best_val_acc = Some(a);
                state.best_val_loss = number(loss)?;
                state.best_epoch = Some(e);
                state.best_step = Some(s);
                state.bad_validations = 0;
            } else {
                state.bad_validations += 1;
            }
        }
    }
    if rows == 0 {
        return Err(RunError::run(format!(
            "{} has no rows: the run has nothing to finish",
            path.display()
        )));
    }
    Ok(state)
}

/// `Some(reason)` when the budget of `runtime` is already spent at `state`.
fn budget_left(state: &TrainState, runtime: &RuntimeOptions) -> Option<&'static str> {
    if runtime.max_steps >= 0 && state.global_step >= runtime.max_steps as u64 {
        return Some("max_steps");
    }
    if state.epoch >= runtime.max_epochs {
        return Some("max_epochs");
    }
    if let Some(t) = runtime.max_time()
        && state.train_seconds >= t.as_secs_f64()
    {
        return Some("max_time");
    }
    None
}

fn validate<B: AutodiffBackend, O: Optimizer<ImageClassifier<B>, B>>(
    s: &mut Session<B>,
    model: &ImageClassifier<B>,
    optim: &O,
    ema: Option<&Ema<B::InnerBackend>>,
    data: &RunData,
) -> Result<bool> {
    let eval_model = match ema {
        Some(e) => e.apply(model.valid()),
        None => model.valid(),
    };
    let limit = s
        .runtime
        .limit_val_batches
        .map(|l| l.of(data.val.len().div_ceil(s.training.batch_size)));
    let m = evaluate(
        &eval_model,
        &data.val,
        s.training.batch_size,
        limit,
        &s.device,
        |_, _| {},
    )?;
    s.state.validations += 1;
    s.metrics.write(
        &Row::new()
            .set("epoch", s.state.epoch)
            .set("step", s.state.global_step.saturating_sub(1))
            .set("val/acc", m.accuracy)
            .set("val/loss", m.loss),
    )?;
    let better = s.state.best_val_acc.is_none_or(|b| m.accuracy > b);
    if better {
        save_record(&eval_model, &s.run.best())?;
        s.state.best_val_acc = Some(m.accuracy);
        s.state.best_val_loss = Some(m.loss);
        s.state.best_epoch = Some(s.state.epoch);
        s.state.best_step = Some(s.state.global_step.saturating_sub(1));
        s.state.bad_validations = 0;
    } else {
        s.state.bad_validations += 1;
    }
    s.progress.event(&format!(
        "step {} epoch {}: val/acc {:.4} val/loss {:.4} ({}){}",
        s.state.global_step,
        s.state.epoch,
        m.accuracy,
        m.loss,
        m.n,
        if better { ", best so far" } else { "" }
    ));
    write_model_checkpoint(s, model, optim, ema)?;
    Ok(s.state.bad_validations >= s.training.patience)
}

fn run_loop<B: AutodiffBackend, O: Optimizer<ImageClassifier<B>, B>>(
    mut s: Session<B>,
    mut model: ImageClassifier<B>,
    mut optim: O,
    mut ema: Option<Ema<B::InnerBackend>>,
    data: &RunData,
    stop: &AtomicBool,
) -> Result<Outcome> {
    let bs = s.training.batch_size;
    let n_train = data.train.len();
    let full_batches = n_train.div_ceil(bs);
    let epoch_batches = s
        .runtime
        .limit_train_batches
        .map_or(full_batches, |l| l.of(full_batches));
    let val_every = s
        .runtime
        .val_check_interval
        .map(|v| v.of(epoch_batches).max(1));
    let batcher = batcher_for(&model, &data.train);
    let max_time = s.runtime.max_time();
    let session_start = Instant::now();
    let clock_base = s.state.train_seconds;
    let redraw = s.model_config.feature_redraw_interval as u64;
    let mut interrupted = false;
    let mut early_stopped = false;
    let mut last_ckpt_step = s.state.global_step;
    let mut session_images = 0u64;

    'epochs: while budget_left(&s.state, &s.runtime).is_none() {
        let order = permutation(n_train, mix(s.seed, DATA_ORDER, s.state.epoch));
        while (s.state.batch_in_epoch as usize) < epoch_batches {
            s.state.train_seconds = clock_base + session_start.elapsed().as_secs_f64();
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break 'epochs;
            }
            if let Some(reason) = budget_left(&s.state, &s.runtime) {
                s.state.stopped_by = Some(reason.into());
                break 'epochs;
            }
            let bi = s.state.batch_in_epoch as usize;
            let indices = &order[bi * bs..((bi + 1) * bs).min(n_train)];
            let items = indices
                .iter()
                .filter_map(|&i| burn::data::dataset::Dataset::get(&data.train, i))
                .collect();
            let batch = burn::data::dataloader::batcher::Batcher::<B, _, _>::batch(
                &batcher, items, &s.device,
            );
            B::seed(&s.device, mix(s.seed, DROPOUT, s.state.global_step));
            let lr = s.training.learning_rate_at(s.state.global_step);
            let out = logits(&model, &batch);
            let hits: i64 = out
                .clone()
                .argmax(1)
                .reshape([indices.len()])
                .equal(batch.targets.clone())
                .int()
                .sum()
                .into_scalar()
                .elem();
            let loss = cross_entropy(out, batch.targets).mean();
            let loss_value: f64 = loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                write_model_checkpoint(&s, &model, &optim, ema.as_ref())?;
                return Err(RunError::run(format!(
                    "the training loss became {loss_value} at step {}; lower --learning-rate (the last checkpoint is kept in {})",
                    s.state.global_step,
                    s.run.last().display()
                )));
            }
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            clip_grad_norm::<B, _>(&model, &mut grads, s.training.gradient_clip_val);
            model = optim.step(lr, model, grads);
            s.state.global_step += 1;
            s.state.batch_in_epoch += 1;
            s.state.epoch_loss_sum += loss_value;
            s.state.epoch_hits += hits as u64;
            s.state.epoch_images += indices.len() as u64;
            session_images += indices.len() as u64;
            if redraw > 0 && s.state.global_step.is_multiple_of(redraw) {
                model = model.redraw_features();
            }
            if let Some(e) = ema.as_mut() {
                e.update::<B, _>(&model);
            }
            let step = s.state.global_step;
            let logged = step.is_multiple_of(s.runtime.log_every_n_steps);
            if logged {
                s.metrics.write(
                    &Row::new()
                        .set("epoch", s.state.epoch)
                        .set("lr-Adam", lr)
                        .set("step", step - 1)
                        .set("train/loss_step", loss_value),
                )?;
            }
            let elapsed = session_start.elapsed().as_secs_f64();
            s.progress.step(
                &format!(
                    "epoch {} batch {}/{} step {step}: loss {loss_value:.4} lr {lr:.2e} ({:.1} img/s)",
                    s.state.epoch,
                    bi + 1,
                    epoch_batches,
                    session_images as f64 / elapsed.max(1e-9)
                ),
                logged,
            );
            let mut validated = false;
            if let Some(every) = val_every
                && (bi + 1).is_multiple_of(every)
                && bi + 1 < epoch_batches
            {
                s.state.train_seconds = clock_base + session_start.elapsed().as_secs_f64();
                validated = true;
                if validate(&mut s, &model, &optim, ema.as_ref(), data)? {
                    early_stopped = true;
                    break 'epochs;
                }
                last_ckpt_step = step;
            }
            if !validated && step - last_ckpt_step >= s.runtime.checkpoint_every_n_steps {
                s.state.train_seconds = clock_base + session_start.elapsed().as_secs_f64();
                write_model_checkpoint(&s, &model, &optim, ema.as_ref())?;
                last_ckpt_step = step;
            }
            if let Some(t) = max_time
                && clock_base + session_start.elapsed().as_secs_f64() >= t.as_secs_f64()
            {
                s.state.stopped_by = Some("max_time".into());
            }
            if s.state.stopped_by.is_some() {
                break 'epochs;
            }
        }
        // the epoch is complete
        let images = s.state.epoch_images.max(1) as f64;
        let batches = s.state.batch_in_epoch.max(1) as f64;
        s.metrics.write(
            &Row::new()
                .set("epoch", s.state.epoch)
                .set("step", s.state.global_step.saturating_sub(1))
                .set("train/acc", s.state.epoch_hits as f64 / images)
                .set("train/loss_epoch", s.state.epoch_loss_sum / batches),
        )?;
        s.state.epoch += 1;
        s.state.batch_in_epoch = 0;
        s.state.epoch_loss_sum = 0.0;
        s.state.epoch_hits = 0;
        s.state.epoch_images = 0;
        s.state.train_seconds = clock_base + session_start.elapsed().as_secs_f64();
        // validate at the end of each epoch
        if validate(&mut s, &model, &optim, ema.as_ref(), data)? {
            early_stopped = true;
            break 'epochs;
        }
        last_ckpt_step = s.state.global_step;
    }
    s.state.train_seconds = clock_base + session_start.elapsed().as_secs_f64();
    if interrupted {
        write_model_checkpoint(&s, &model, &optim, ema.as_ref())?;
        s.progress.event(&format!(
            "interrupted at step {}; the state is saved: continue with `relperf-train --resume {}`, or end it here with `relperf-train --finish {}` (tests the best checkpoint)",
            s.state.global_step,
            s.run.path.display(),
            s.run.path.display()
        ));
        return Ok(Outcome {
            run: s.run,
            results: None,
            interrupted: true,
        });
    }
    if early_stopped {
        s.state.stopped_by = Some("early_stopping".into());
    }
    if s.state.stopped_by.is_none() {
        s.state.stopped_by = budget_left(&s.state, &s.runtime).map(String::from);
    }
    if s.state.validations == 0 || !s.run.best().is_file() {
        validate(&mut s, &model, &optim, ema.as_ref(), data)?;
    }
    write_model_checkpoint(&s, &model, &optim, ema.as_ref())?;
    finish(s, data, None)
}

/// Tests the best checkpoint and writes `results.json` (with
/// `finished_by` when a `--finish` session ended the run).
fn finish<B: AutodiffBackend>(
    mut s: Session<B>,
    data: &RunData,
    finished_by: Option<Value>,
) -> Result<Outcome> {
    let best = load_record::<B::InnerBackend>(&s.model_config, &s.run.best(), &s.device)?;
    let limit = s
        .runtime
        .limit_test_batches
        .map(|l| l.of(data.test.len().div_ceil(s.training.batch_size)));
    let test: Metrics = evaluate(
        &best,
        &data.test,
        s.training.batch_size,
        limit,
        &s.device,
        |_, _| {},
    )?;
    s.metrics.write(
        &Row::new()
            .set("epoch", s.state.epoch)
            .set("step", s.state.global_step)
            .set("test/acc", test.accuracy)
            .set("test/loss", test.loss),
    )?;
    let mut results = json!({
        "model": s.model_config.model,
        "dataset": s.dataset.as_str(),
        "run_dir": s.run.path.display().to_string(),
        "best_val_acc": s.state.best_val_acc,
        "best_val_loss": s.state.best_val_loss,
        "best_epoch": s.state.best_epoch,
        "best_step": s.state.best_step,
        "test_acc": test.accuracy,
        "test_loss": test.loss,
        "test_n": test.n,
        "parameters": best.trainable_params(),
        "epochs": s.state.epoch,
        "global_step": s.state.global_step,
        "stopped_by": s.state.stopped_by,
        "train_seconds": (s.state.train_seconds * 10.0).round() / 10.0,
        "best_checkpoint": format!("{}/{}", run::CHECKPOINT_DIR, run::BEST_FILE),
        "finished": now(),
    });
    if let Some(by) = finished_by {
        results["finished_by"] = by;
    }
    write_json_atomic(&s.run.results_path(), &results)?;
    s.progress.event(&format!(
        "done ({}): step {}, best val/acc {:.4}, test/acc {:.4} on {} images; results in {}",
        s.state.stopped_by.as_deref().unwrap_or("finished"),
        s.state.global_step,
        s.state.best_val_acc.unwrap_or(f64::NAN),
        test.accuracy,
        test.n,
        s.run.results_path().display()
    ));
    Ok(Outcome {
        run: s.run,
        results: Some(results),
        interrupted: false,
    })
}

/// The run config of a finished or running run, for `--init-from` checks.
pub fn read_run(run: &RunFolder) -> Result<RunConfig> {
    run.read_config()
}

/// The registry's names, for messages.
pub fn model_names() -> String {
    ModelKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn state_from_metrics_takes_the_steps_and_the_first_best_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let header = crate::metrics::COLUMNS.join(",");
        std::fs::write(
            &path,
            format!(
                "{header}\n0,0.1,49,,,,,2.3,,\n0,,99,,,,,,0.5,1.2\n1,,199,,,,,,0.7,0.9\n1,,299,,,,,,0.7,0.8\n1,0.1,349,,,,,0.4,,\n"
            ),
        )
        .unwrap();
        let s = state_from_metrics(&path).unwrap();
        assert_eq!(
            (s.global_step, s.epoch, s.validations, s.bad_validations),
            (350, 1, 3, 1)
        );
        assert_eq!(
            (s.best_val_acc, s.best_val_loss, s.best_step, s.best_epoch),
            (Some(0.7), Some(0.9), Some(199), Some(1))
        );
        assert!(s.train_seconds.is_nan());
        for (text, needle) in [
            (format!("{header}\n"), "has no rows"),
            (
                format!("{header}\n0,,x,,,,,,0.5,1.2\n"),
                "line 2 is not a metrics row",
            ),
            ("epoch,step\n0,1\n".to_string(), "has no column val/acc"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = state_from_metrics(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let missing = dir.path().join("none.csv");
        assert!(state_from_metrics(&missing).is_err());
    }

    #[test]
    fn iso_time_is_utc_calendar_time() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_764_806_400 + 3_661);
        assert_eq!(iso_time(t), "2025-12-04T01:01:01+00:00");
        assert_eq!(iso_time(std::time::UNIX_EPOCH), "1970-01-01T00:00:00+00:00");
    }
}
