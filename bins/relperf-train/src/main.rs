//! `relperf-train MODEL DATASET [OPTIONS]`: trains one of the five models
//! into a run folder `LOG_PATH/EXP_NAME/VERSION`; `--resume RUN_DIR`
//! continues a run exactly; `--finish RUN_DIR` ends a stopped one (tests its
//! best checkpoint, writes `results.json`); `--init-from RUN_DIR` starts a
//! new run from another's weights. Every user error is one line on stderr with exit code
//! 2 (usage) or 1 (files, data); Ctrl-C saves the state and exits with 130.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use burn::prelude::Backend;
use clap::{CommandFactory, FromArgMatches, Parser};
use relative_performer::backend::{BackendKind, BackendTask, run_on_device};
use relperf_data::DatasetName;
use relperf_eval::RunError;
use relperf_eval::run::{DataSection, RunFolder, next_version, version_name};
use relperf_models::{EmbeddingType, ModelConfig, ModelKind};
use relperf_train::options::{BatchLimit, parse_max_time};
use relperf_train::{Outcome, RunSpec, RuntimeOptions, Schedule, Start, TrainOptions};

static STOP: AtomicBool = AtomicBool::new(false);

/// Train a translation-equivariant Performer on images.
///
/// Trains MODEL on DATASET with the reference's recipe (Adam 0.9/0.98,
/// global-norm clipping, constant or noam schedule, early stopping on
/// validation accuracy, random features redrawn every
/// --feature-redraw-interval steps) into the run folder
/// LOG_PATH/EXP_NAME/VERSION: config.json, metrics.csv,
/// checkpoints/best.mpk (best validation accuracy), checkpoints/last.ckpt
/// (to --resume), results.json (test accuracy of the best checkpoint; a run
/// stopped by Ctrl-C gets it from --resume, or from --finish without more
/// training).
/// Options also accept the reference's underscore spellings (--batch_size).
#[derive(Debug, Parser)]
#[command(
    name = "relperf-train",
    version,
    max_term_width = 100,
    allow_negative_numbers = true
)]
struct Cli {
    /// Performer, NoposPerformer, RelativePerformer, ClippedRelativePerformer or ExactRelativePerformer (not with --resume or --finish; optional with --init-from).
    model: Option<String>,
    /// MNIST, FashionMNIST or CIFAR10 (case-insensitive; not with --resume or --finish).
    dataset: Option<String>,

    /// Continue the run in RUN_DIR from its checkpoints/last.ckpt (only runtime options may change).
    #[arg(long, value_name = "RUN_DIR", help_heading = "Run folder")]
    resume: Option<PathBuf>,
    /// End the stopped run in RUN_DIR without training: test its best checkpoint and write results.json (the state from last.ckpt, or from metrics.csv where last.ckpt is lost).
    #[arg(
        long,
        value_name = "RUN_DIR",
        help_heading = "Run folder",
        conflicts_with = "resume"
    )]
    finish: Option<PathBuf>,
    /// Start a new run from the best weights and random features of RUN_DIR (its model and model options; --feature-redraw-interval, --attn-dropout and --ff-dropout may change).
    #[arg(
        long,
        alias = "init_from",
        value_name = "RUN_DIR",
        help_heading = "Run folder"
    )]
    init_from: Option<PathBuf>,
    /// Parent of the experiment folders [default: lightning_logs].
    #[arg(long, alias = "log_path", help_heading = "Run folder")]
    log_path: Option<PathBuf>,
    /// Experiment folder [default: default].
    #[arg(long, alias = "exp_name", help_heading = "Run folder")]
    exp_name: Option<String>,
    /// Run folder name: N means version_N, any other name is used as is [default: the next free version_N].
    #[arg(long, help_heading = "Run folder")]
    version: Option<String>,

    /// Images per optimizer step [default: 16].
    #[arg(long, alias = "batch_size", help_heading = "Data")]
    batch_size: Option<usize>,
    /// Pixel embedding: linear, MLP or lookup [default: linear].
    #[arg(long, alias = "embedding_type", help_heading = "Data")]
    embedding_type: Option<String>,
    /// Data folder [default: $RELATIVE_PERFORMER_DATA, else ./data].
    #[arg(long, alias = "data_dir", help_heading = "Data")]
    data_dir: Option<String>,
    /// Validation images held out of the training split [default: 5000].
    #[arg(long, alias = "val_size", help_heading = "Data")]
    val_size: Option<usize>,
    /// Seed of the train/validation split [default: 42].
    #[arg(long, alias = "split_seed", help_heading = "Data")]
    split_seed: Option<u64>,
    /// Accepted for the reference's command lines; batches are built on the training thread (the data loader makes millions of images per second).
    #[arg(long, alias = "num_workers", help_heading = "Data")]
    num_workers: Option<usize>,

    /// Adam's learning rate, after warm-up [default: 1e-3].
    #[arg(long, alias = "learning_rate", help_heading = "Optimisation")]
    learning_rate: Option<f64>,
    /// Linear warm-up steps [default: 0].
    #[arg(long, help_heading = "Optimisation")]
    warmup: Option<u64>,
    /// constant (after warm-up) or noam (warm-up, then 1/sqrt(step)) [default: constant].
    #[arg(long, help_heading = "Optimisation")]
    schedule: Option<String>,
    /// Clip the gradients' global L2 norm to this (0: off) [default: 0.5].
    #[arg(long, alias = "gradient_clip_val", help_heading = "Optimisation")]
    gradient_clip_val: Option<f64>,
    /// Validate, test and checkpoint an exponential moving average of the weights with this decay (0: off) [default: 0].
    #[arg(long, alias = "ema_decay", help_heading = "Optimisation")]
    ema_decay: Option<f64>,
    /// Stop after this many validations without a better validation accuracy [default: 20].
    #[arg(long, help_heading = "Optimisation")]
    patience: Option<u64>,
    /// Seed of weights, features, data order and dropout [default: drawn at random, printed and saved].
    #[arg(long, help_heading = "Optimisation")]
    seed: Option<u64>,

    /// Model width [default: 128].
    #[arg(long, help_heading = "Model")]
    dim: Option<usize>,
    /// Blocks [default: 4].
    #[arg(long, help_heading = "Model")]
    depth: Option<usize>,
    /// Attention heads [default: 4].
    #[arg(long, help_heading = "Model")]
    heads: Option<usize>,
    /// Feed-forward width multiplier [default: 4].
    #[arg(long, alias = "ff_mult", help_heading = "Model")]
    ff_mult: Option<usize>,
    /// Dropout on the attention output, in [0, 1] [default: 0.1].
    #[arg(long, alias = "attn_dropout", help_heading = "Model")]
    attn_dropout: Option<f64>,
    /// Dropout in and after the feed-forward, in [0, 1] [default: 0.1].
    #[arg(long, alias = "ff_dropout", help_heading = "Model")]
    ff_dropout: Option<f64>,
    /// Redraw the random features every this many steps (0: never) [default: 1000].
    #[arg(long, alias = "feature_redraw_interval", help_heading = "Model")]
    feature_redraw_interval: Option<usize>,
    /// Exact softmax attention instead of FAVOR+ (quadratic in the tokens).
    #[arg(long, alias = "no_projection", help_heading = "Model")]
    no_projection: bool,
    /// Random features per head [default: int(d ln d) of the dim the kernel sees].
    #[arg(long, alias = "nb_features", help_heading = "Model")]
    nb_features: Option<usize>,
    /// softmax (FAVOR+) or relu [default: softmax].
    #[arg(long, help_heading = "Model")]
    kernel: Option<String>,
    /// RelativePerformer, ExactRelativePerformer: frequency scales per axis [default: 4].
    #[arg(long, alias = "pos_scales", help_heading = "Model")]
    pos_scales: Option<usize>,
    /// RelativePerformer, ExactRelativePerformer: content-dependent relative positions.
    #[arg(long, alias = "content_rel_attn", help_heading = "Model")]
    content_rel_attn: bool,
    /// ClippedRelativePerformer: clipping distance of the relative embeddings [default: 8].
    #[arg(long, alias = "clipping_dist", help_heading = "Model")]
    clipping_dist: Option<usize>,

    /// Stop after this many epochs [default: 1000].
    #[arg(long, alias = "max_epochs", help_heading = "Budget and logging")]
    max_epochs: Option<u64>,
    /// Stop after this many optimizer steps (-1: no limit) [default: -1].
    #[arg(
        long,
        alias = "max_steps",
        allow_hyphen_values = true,
        help_heading = "Budget and logging"
    )]
    max_steps: Option<i64>,
    /// Stop after this much training time, DD:HH:MM:SS (summed over resumed sessions).
    #[arg(long, alias = "max_time", help_heading = "Budget and logging")]
    max_time: Option<String>,
    /// Training batches per epoch: a count, or a fraction like 0.1 [default: all].
    #[arg(
        long,
        alias = "limit_train_batches",
        help_heading = "Budget and logging"
    )]
    limit_train_batches: Option<String>,
    /// Batches per validation: a count or a fraction [default: all].
    #[arg(long, alias = "limit_val_batches", help_heading = "Budget and logging")]
    limit_val_batches: Option<String>,
    /// Batches of the final test: a count or a fraction [default: all].
    #[arg(
        long,
        alias = "limit_test_batches",
        help_heading = "Budget and logging"
    )]
    limit_test_batches: Option<String>,
    /// Validate every this many training batches, or this fraction of an epoch [default: once per epoch].
    #[arg(
        long,
        alias = "val_check_interval",
        help_heading = "Budget and logging"
    )]
    val_check_interval: Option<String>,
    /// Write checkpoints/last.ckpt every this many steps (also after each validation and at the end) [default: 500].
    #[arg(
        long,
        alias = "checkpoint_every_n_steps",
        help_heading = "Budget and logging"
    )]
    checkpoint_every_n_steps: Option<u64>,
    /// A metrics row (and a progress line when stderr is not a terminal) every this many steps [default: 50].
    #[arg(long, alias = "log_every_n_steps", help_heading = "Budget and logging")]
    log_every_n_steps: Option<u64>,
    /// No progress output (events such as validations are still printed).
    #[arg(long, alias = "no_progress_bar", help_heading = "Budget and logging")]
    no_progress_bar: bool,
    /// Numeric precision; only 32-true (fp32) on Burn 0.21's backends here [default: 32-true].
    #[arg(long, help_heading = "Budget and logging")]
    precision: Option<String>,

    /// Burn backend: ndarray, flex or wgpu, among those compiled in [default: the first compiled in: ndarray].
    #[arg(long, help_heading = "Backend")]
    backend: Option<String>,
    /// wgpu device: default, discrete[:N], integrated[:N], virtual[:N] or cpu [default: default].
    #[arg(long, help_heading = "Backend")]
    device: Option<String>,
}

/// A usage error.
fn usage(msg: impl Into<String>) -> RunError {
    RunError::usage(msg)
}

struct TrainTask {
    start: Start,
    command: String,
}

impl BackendTask for TrainTask {
    type Output = Result<Outcome, RunError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        relperf_train::train::<Autodiff<B>>(self.start, &self.command, device, &STOP)
    }
}

fn parse_limit(option: &str, v: &Option<String>) -> Result<Option<BatchLimit>, RunError> {
    v.as_deref()
        .map(|s| BatchLimit::parse(option, s))
        .transpose()
}

/// The runtime options of this session, from the command line over `base`.
fn runtime(cli: &Cli, base: RuntimeOptions) -> Result<RuntimeOptions, RunError> {
    if let Some(p) = &cli.precision
        && p != "32-true"
    {
        return Err(usage(format!(
            "--precision {p} is not available: Burn 0.21's backends train in fp32 here (--precision 32-true)"
        )));
    }
    if let Some(t) = &cli.max_time {
        parse_max_time(t)?;
    }
    let backend = match &cli.backend {
        Some(b) => b.parse::<BackendKind>().map_err(|e| usage(e.to_string()))?,
        None => BackendKind::default(),
    };
    let rt = RuntimeOptions {
        max_epochs: cli.max_epochs.unwrap_or(base.max_epochs),
        max_steps: cli.max_steps.unwrap_or(base.max_steps),
        max_time: cli.max_time.clone().or(base.max_time),
        limit_train_batches: parse_limit("--limit-train-batches", &cli.limit_train_batches)?
            .or(base.limit_train_batches),
        limit_val_batches: parse_limit("--limit-val-batches", &cli.limit_val_batches)?
            .or(base.limit_val_batches),
        limit_test_batches: parse_limit("--limit-test-batches", &cli.limit_test_batches)?
            .or(base.limit_test_batches),
        val_check_interval: parse_limit("--val-check-interval", &cli.val_check_interval)?
            .or(base.val_check_interval),
        checkpoint_every_n_steps: cli
            .checkpoint_every_n_steps
            .unwrap_or(base.checkpoint_every_n_steps),
        log_every_n_steps: cli.log_every_n_steps.unwrap_or(base.log_every_n_steps),
        progress: !cli.no_progress_bar,
        data_dir: cli.data_dir.clone().or(base.data_dir),
        backend: backend.as_str().to_string(),
        device: cli.device.clone(),
    };
    rt.validate()?;
    Ok(rt)
}

/// The model and training options given on the command line, as
/// `(option, value)` pairs (for the --resume check).
fn fixed_options(cli: &Cli) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let mut out = Vec::new();
    let mut put = |name: &'static str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            out.push((name, v));
        }
    };
    put("batch_size", cli.batch_size.map(|v| json!(v)));
    put(
        "embedding_type",
        cli.embedding_type.clone().map(|v| json!(v)),
    );
    put("val_size", cli.val_size.map(|v| json!(v)));
    put("split_seed", cli.split_seed.map(|v| json!(v)));
    put("learning_rate", cli.learning_rate.map(|v| json!(v)));
    put("warmup", cli.warmup.map(|v| json!(v)));
    put("schedule", cli.schedule.clone().map(|v| json!(v)));
    put("gradient_clip_val", cli.gradient_clip_val.map(|v| json!(v)));
    put("ema_decay", cli.ema_decay.map(|v| json!(v)));
    put("patience", cli.patience.map(|v| json!(v)));
    put("seed", cli.seed.map(|v| json!(v)));
    put("dim", cli.dim.map(|v| json!(v)));
    put("depth", cli.depth.map(|v| json!(v)));
    put("heads", cli.heads.map(|v| json!(v)));
    put("ff_mult", cli.ff_mult.map(|v| json!(v)));
    put("attn_dropout", cli.attn_dropout.map(|v| json!(v)));
    put("ff_dropout", cli.ff_dropout.map(|v| json!(v)));
    put(
        "feature_redraw_interval",
        cli.feature_redraw_interval.map(|v| json!(v)),
    );
    put("no_projection", cli.no_projection.then_some(json!(true)));
    put("nb_features", cli.nb_features.map(|v| json!(v)));
    put("kernel", cli.kernel.clone().map(|v| json!(v)));
    put("pos_scales", cli.pos_scales.map(|v| json!(v)));
    put(
        "content_rel_attn",
        cli.content_rel_attn.then_some(json!(true)),
    );
    put("clipping_dist", cli.clipping_dist.map(|v| json!(v)));
    out
}

/// The value of option `name` saved in a run's config.json.
fn saved_option(config: &relperf_eval::RunConfig, name: &str) -> serde_json::Value {
    let mc = serde_json::to_value(&config.model_config).unwrap_or_default();
    let data = serde_json::to_value(&config.data).unwrap_or_default();
    for section in [&mc, &config.training, &data] {
        if let Some(v) = section.get(name) {
            return v.clone();
        }
    }
    serde_json::Value::Null
}

fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn option_name(name: &str) -> String {
    format!("--{}", name.replace('_', "-"))
}

/// Applies the model options of the command line to `mc`, rejecting those
/// of other models.
fn model_config(cli: &Cli, mut mc: ModelConfig) -> Result<ModelConfig, RunError> {
    let kind = mc.model;
    let relative = matches!(
        kind,
        ModelKind::RelativePerformer | ModelKind::ExactRelativePerformer
    );
    let owned = [
        (
            "--pos-scales",
            cli.pos_scales.is_some(),
            relative,
            "RelativePerformer and ExactRelativePerformer",
        ),
        (
            "--content-rel-attn",
            cli.content_rel_attn,
            relative,
            "RelativePerformer and ExactRelativePerformer",
        ),
        (
            "--clipping-dist",
            cli.clipping_dist.is_some(),
            kind == ModelKind::ClippedRelativePerformer,
            "ClippedRelativePerformer",
        ),
    ];
    for (opt, given, allowed, owners) in owned {
        if given && !allowed {
            return Err(usage(format!(
                "{opt} is an option of {owners}, not of {kind}; leave it out"
            )));
        }
    }
    if let Some(v) = cli.dim {
        mc.dim = v;
    }
    if let Some(v) = cli.depth {
        mc.depth = v;
    }
    if let Some(v) = cli.heads {
        mc.heads = v;
    }
    if let Some(v) = cli.ff_mult {
        mc.ff_mult = v;
    }
    if let Some(v) = cli.attn_dropout {
        mc.attn_dropout = v;
    }
    if let Some(v) = cli.ff_dropout {
        mc.ff_dropout = v;
    }
    if let Some(v) = cli.feature_redraw_interval {
        mc.feature_redraw_interval = v;
    }
    if cli.no_projection {
        mc.no_projection = true;
    }
    if let Some(v) = cli.nb_features {
        mc.nb_features = Some(v);
    }
    if let Some(k) = &cli.kernel {
        mc.kernel = k
            .parse()
            .map_err(|_| usage(format!("unknown kernel '{k}': choose softmax or relu")))?;
    }
    if let Some(v) = cli.pos_scales {
        mc.pos_scales = v;
    }
    if cli.content_rel_attn {
        mc.content_rel_attn = true;
    }
    if let Some(v) = cli.clipping_dist {
        mc.clipping_dist = v;
    }
    if let Some(e) = &cli.embedding_type {
        mc.embedding_type = e.parse::<EmbeddingType>()?;
    }
    mc.validate()?;
    Ok(mc)
}

fn training_options(cli: &Cli) -> Result<TrainOptions, RunError> {
    let d = TrainOptions::default();
    let seed = match cli.seed {
        Some(s) => s,
        None => {
            // a fresh seed in [0, 2^31 - 1), as the reference draws it
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let mixed = nanos ^ (u64::from(std::process::id()) << 32);
            mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % ((1u64 << 31) - 1)
        }
    };
    let t = TrainOptions {
        batch_size: cli.batch_size.unwrap_or(d.batch_size),
        learning_rate: cli.learning_rate.unwrap_or(d.learning_rate),
        warmup: cli.warmup.unwrap_or(d.warmup),
        schedule: match &cli.schedule {
            Some(s) => s.parse::<Schedule>()?,
            None => d.schedule,
        },
        gradient_clip_val: cli.gradient_clip_val.unwrap_or(d.gradient_clip_val),
        ema_decay: cli.ema_decay.unwrap_or(d.ema_decay),
        patience: cli.patience.unwrap_or(d.patience),
        seed: Some(seed),
        val_size: cli.val_size.unwrap_or(d.val_size),
        split_seed: cli.split_seed.unwrap_or(d.split_seed),
    };
    t.validate()?;
    Ok(t)
}

fn resolve(cli: &Cli) -> Result<Start, RunError> {
    let existing = match (&cli.resume, &cli.finish) {
        (Some(dir), _) => Some((false, dir)),
        (None, Some(dir)) => Some((true, dir)),
        (None, None) => None,
    };
    if let Some((finish, run_dir)) = existing {
        let flag = if finish { "--finish" } else { "--resume" };
        if cli.init_from.is_some() {
            return Err(usage(format!(
                "{flag} and --init-from: give one of them (--resume continues a run, --finish ends one, --init-from starts a new one from its weights)",
            )));
        }
        if cli.model.is_some() || cli.dataset.is_some() {
            return Err(usage(format!(
                "{flag} takes the model and dataset from the run: leave MODEL and DATASET out",
            )));
        }
        for (given, opt) in [
            (cli.log_path.is_some(), "--log-path"),
            (cli.exp_name.is_some(), "--exp-name"),
            (cli.version.is_some(), "--version"),
        ] {
            if given {
                return Err(usage(format!(
                    "{flag} cannot be combined with {opt}: the run stays in {}",
                    run_dir.display()
                )));
            }
        }
        let run = RunFolder::new(run_dir);
        let config = run.read_config()?;
        for (name, value) in fixed_options(cli) {
            let saved = saved_option(&config, name);
            if !same_value(&saved, &value) {
                return Err(usage(format!(
                    "{} {value} differs from the run's {saved}: only runtime options (budgets, limits, logging, backend) may change with {flag}; start a new run (--init-from {}) instead",
                    option_name(name),
                    run_dir.display()
                )));
            }
        }
        let base: RuntimeOptions = config
            .rest
            .get("runtime")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let rt = runtime(
            cli,
            RuntimeOptions {
                device: None,
                ..base
            },
        )?;
        return Ok(if finish {
            Start::Finish { run, runtime: rt }
        } else {
            Start::Resume { run, runtime: rt }
        });
    }

    let init_from = match &cli.init_from {
        Some(dir) => {
            let run = RunFolder::new(dir);
            let cfg = run.read_config()?;
            run.best_checkpoint()?;
            Some((run, cfg))
        }
        None => None,
    };
    let (kind, dataset_name) = match (&cli.model, &cli.dataset, &init_from) {
        (Some(m), Some(d), _) => (m.parse::<ModelKind>()?, d.clone()),
        (Some(only), None, Some((_, cfg))) => {
            // `--init-from RUN DATASET` or `--init-from RUN MODEL`
            match only.parse::<ModelKind>() {
                Ok(k) => (k, cfg.dataset.clone()),
                Err(_) => (cfg.model, only.clone()),
            }
        }
        (None, None, Some((_, cfg))) => (cfg.model, cfg.dataset.clone()),
        (None, _, None) => {
            return Err(usage(format!(
                "give MODEL and DATASET (models: {}; datasets: MNIST, FashionMNIST, CIFAR10), or --resume RUN_DIR",
                relperf_train::trainer::model_names()
            )));
        }
        (Some(m), None, None) => {
            m.parse::<ModelKind>()?;
            return Err(usage(
                "give DATASET after MODEL: MNIST, FashionMNIST or CIFAR10",
            ));
        }
        (None, Some(_), Some(_)) => unreachable!("clap fills MODEL before DATASET"),
    };
    let dataset: DatasetName = dataset_name
        .parse()
        .map_err(|e: relperf_data::DataError| usage(e.to_string()))?;
    let mut mc = ModelConfig {
        in_channels: dataset.channels(),
        num_classes: dataset.num_classes(),
        ..ModelConfig::new(kind)
    };
    if let Some((run, cfg)) = &init_from {
        if cfg.model != kind {
            return Err(usage(format!(
                "{} holds a {}, not a {kind}: leave MODEL out to continue its model",
                run.path.display(),
                cfg.model
            )));
        }
        let src_ds = cfg.dataset()?;
        if src_ds.channels() != dataset.channels() || src_ds.num_classes() != dataset.num_classes()
        {
            return Err(usage(format!(
                "{} was trained on {src_ds} ({} channel(s)), which does not fit {dataset} ({} channel(s)); pick a dataset of the same shape",
                run.path.display(),
                src_ds.channels(),
                dataset.channels()
            )));
        }
        let tunable = ["feature_redraw_interval", "attn_dropout", "ff_dropout"];
        for (name, value) in fixed_options(cli) {
            let is_model_option = serde_json::to_value(&cfg.model_config)
                .ok()
                .and_then(|v| v.get(name).cloned())
                .is_some();
            if is_model_option && !tunable.contains(&name) {
                let saved = saved_option(cfg, name);
                if !same_value(&saved, &value) {
                    return Err(usage(format!(
                        "{} {value} differs from {}'s {saved}: with --init-from only --feature-redraw-interval, --attn-dropout and --ff-dropout may change",
                        option_name(name),
                        run.path.display()
                    )));
                }
            }
        }
        mc = model_config(&clone_cli_model_tunables(cli), cfg.model_config.clone())?;
    } else {
        mc = model_config(cli, mc)?;
    }
    let training = training_options(cli)?;
    let rt = runtime(cli, RuntimeOptions::default())?;
    let data = DataSection {
        data_dir: rt.data_dir.clone(),
        embedding_type: mc.embedding_type.as_str().to_string(),
        val_size: training.val_size,
        split_seed: training.split_seed,
    };
    let log_path = cli
        .log_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("lightning_logs"));
    let exp = cli.exp_name.clone().unwrap_or_else(|| "default".into());
    version_name(&exp)
        .map_err(|_| usage(format!("--exp-name '{exp}' is not a valid folder name")))?;
    let parent = log_path.join(&exp);
    let version = match &cli.version {
        Some(v) => version_name(v)?,
        None => next_version(&parent),
    };
    Ok(Start::New {
        folder: parent.join(version),
        spec: Box::new(RunSpec {
            model_config: mc,
            dataset,
            training,
            runtime: rt,
            data,
        }),
        init_from: init_from.map(|(run, _)| run),
    })
}

/// Only the options --init-from may change, from `cli`.
fn clone_cli_model_tunables(cli: &Cli) -> Cli {
    let mut c = Cli::parse_from(["relperf-train"]);
    c.feature_redraw_interval = cli.feature_redraw_interval;
    c.attn_dropout = cli.attn_dropout;
    c.ff_dropout = cli.ff_dropout;
    c
}

/// Clap's error as one line (its first), exit code 2; help and version as
/// clap prints them, exit code 0.
fn parse_cli() -> Result<Cli, ExitCode> {
    let matches = Cli::command().try_get_matches();
    let result = matches.and_then(|m| Cli::from_arg_matches(&m));
    match result {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim()
                .trim_start_matches("error: ");
            eprintln!("error: {first} (see relperf-train --help)");
            Err(ExitCode::from(2))
        }
    }
}

fn fail(e: &RunError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code() as u8)
}

fn main() -> ExitCode {
    // SAFETY: first thing in `main`: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        relative_performer::threads::gemm_on_rayon();
    }
    relative_performer::allocator::keep_freed_memory();
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = std::iter::once("relperf-train".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let start = match resolve(&cli) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let backend: BackendKind = match &start {
        Start::New { spec, .. } => spec.runtime.backend.parse(),
        Start::Resume { runtime, .. } | Start::Finish { runtime, .. } => runtime.backend.parse(),
    }
    .unwrap_or_default();
    let device = match &start {
        Start::New { spec, .. } => spec.runtime.device.clone(),
        Start::Resume { runtime, .. } | Start::Finish { runtime, .. } => runtime.device.clone(),
    };
    if let Err(e) = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            // a second Ctrl-C: the user insists
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step (the state will be saved; Ctrl-C again to quit at once)"
        );
    }) {
        eprintln!("warning: Ctrl-C will not save the state ({e})");
    }
    // panics (a bug, or a backend failing) become one line, not a trace
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error{place}: {}; the last checkpoint is kept, please report this",
            msg.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }));
    let task = TrainTask { start, command };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_on_device(backend, device.as_deref(), task)
    }));
    match outcome {
        Err(_) => ExitCode::from(101),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(Ok(Err(e))) => fail(&e),
        Ok(Ok(Ok(o))) if o.interrupted => ExitCode::from(130),
        Ok(Ok(Ok(_))) => ExitCode::SUCCESS,
    }
}
