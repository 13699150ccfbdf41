//! One configuration of the side-by-side benchmark (issue 24): times the
//! training step or the inference of one model on one backend, in a process of
//! its own, and prints one JSON line. `benches/compare/compare.py` runs it once
//! per configuration and round, next to the PyTorch peers.
//!
//! ```text
//! cargo build --release --features flex --example bench_step
//! target/release/examples/bench_step --model Performer --backend ndarray --mode train --reps 5
//! ```
//!
//! * Train step: forward in training mode (dropout on), cross-entropy (mean
//!   over the batch), backward, and an Adam step (`relperf_train::optim::adam`:
//!   betas 0.9 / 0.98, eps 1e-8; learning rate 1e-3; no clipping, as the
//!   reference's `benchmarks/bench.py`). Each step ends by reading the loss.
//! * Inference: the `model.valid()` forward (dropout off, no autodiff), ending
//!   by reading the logits.
//!
//! Random images (uniform in [0, 1)) and labels, drawn from `--seed` on the
//! backend's RNG and the host. `--warmup` untimed steps first, then `--reps`
//! timed ones; the JSON has their median and minimum.
//!
//! Memory from `/proc/self/status`: `peak_rss_bytes` is the process's
//! high-water mark (`VmHWM`); `step_peak_bytes` is how far the steps raised it
//! above the resident set after building the model, optimizer and batch
//! (`VmHWM - VmRSS`, the high-water mark reset through `/proc/self/clear_refs`
//! when the kernel allows it; `hwm_reset` says whether it did). That is what the
//! reference's benchmark reports as peak memory. Linux only (elsewhere the
//! memory fields are null).
//!
//! Errors are one line on stderr, exit code 2 for usage and 1 otherwise.

use std::process::ExitCode;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use relative_performer::backend::{BackendError, BackendKind, BackendTask, run_on_device};
use relative_performer::eval::evaluate::cross_entropy;
use relative_performer::models::{ImageClassifier, ModelConfig, ModelKind};
use relative_performer::train::optim::adam;
use serde_json::json;

/// What to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Forward, cross-entropy, backward, Adam step.
    Train,
    /// `model.valid()` forward.
    Infer,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Infer => "infer",
        }
    }
}

/// Times one model's training step or inference on one backend and prints
/// one JSON line.
#[derive(Debug, Parser)]
#[command(name = "bench_step")]
struct Cli {
    /// Performer, NoposPerformer, RelativePerformer, ClippedRelativePerformer or ExactRelativePerformer.
    #[arg(long)]
    model: String,
    /// Burn backend among those compiled in (ndarray, flex, wgpu).
    #[arg(long, default_value_t = BackendKind::default().to_string())]
    backend: String,
    /// train or infer.
    #[arg(long, value_enum, default_value_t = Mode::Train)]
    mode: Mode,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Image side in pixels (one channel): side * side + 1 tokens.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Exact softmax attention instead of FAVOR+ (the model's `no_projection`;
    /// quadratic in the tokens).
    #[arg(long)]
    exact_softmax: bool,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the parameters, random features, images and labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Clap's error as one line, exit code 2; help as clap prints it.
fn parse_cli() -> Result<Cli, ExitCode> {
    let result = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
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
                .trim_start_matches("error: ")
                .to_string();
            eprintln!("error: {first} (see bench_step --help)");
            Err(ExitCode::from(2))
        }
    }
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let rest = line.strip_prefix(field)?.trim_start_matches(':').trim();
    let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the high-water mark `VmHWM` to the current resident set (Linux
/// 4.0+); false where the kernel refuses.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The median of `xs` (not empty).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// splitmix64: the labels, drawn on the host so that every backend gets the
/// same ones.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The timings and memory of one configuration.
#[derive(Debug)]
struct Measured {
    seconds: Vec<f64>,
    baseline_rss: Option<u64>,
    peak_rss: Option<u64>,
    hwm_reset: bool,
    params: usize,
}

struct Step {
    config: ModelConfig,
    mode: Mode,
    batch: usize,
    size: usize,
    warmup: usize,
    reps: usize,
    seed: u64,
}

impl Step {
    fn batch_data<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let images = Tensor::<B, 4>::random(
            [self.batch, self.config.in_channels, self.size, self.size],
            Distribution::Default,
            device,
        );
        let mut state = self.seed ^ 0x5EED_1AB5;
        let classes = self.config.num_classes as u64;
        let labels: Vec<i64> = (0..self.batch)
            .map(|_| (splitmix(&mut state) % classes) as i64)
            .collect();
        let labels = Tensor::from_data(TensorData::new(labels, [self.batch]), device);
        (images, labels)
    }

    /// Runs `step` `warmup + reps` times, timing the last `reps`, with the
    /// memory around them.
    fn measure(&self, mut step: impl FnMut()) -> (Vec<f64>, Option<u64>, Option<u64>, bool) {
        let hwm_reset = reset_hwm();
        let baseline = status_bytes("VmRSS");
        for _ in 0..self.warmup {
            step();
        }
        let mut seconds = Vec::with_capacity(self.reps);
        for _ in 0..self.reps {
            let start = Instant::now();
            step();
            seconds.push(start.elapsed().as_secs_f64());
        }
        (seconds, baseline, status_bytes("VmHWM"), hwm_reset)
    }

    fn train<B: Backend>(self, device: B::Device) -> Result<Measured, String> {
        type A<B> = Autodiff<B>;
        A::<B>::seed(&device, self.seed);
        let mut model: Option<ImageClassifier<A<B>>> = Some(
            self.config
                .init(self.seed, &device)
                .map_err(|e| e.to_string())?,
        );
        let params = model.as_ref().map_or(0, |m| m.trainable_params());
        let mut optim = adam::<A<B>, ImageClassifier<A<B>>>();
        let (images, labels) = self.batch_data::<A<B>>(&device);
        let mut bad = None;
        let (seconds, baseline_rss, peak_rss, hwm_reset) = self.measure(|| {
            let m = model
                .take()
                .expect("the model is put back after every step");
            let logits = m.forward(images.clone());
            let loss = cross_entropy(logits, labels.clone()).mean();
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() && bad.is_none() {
                bad = Some(value);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            let m = optim.step(1e-3, m, grads);
            let _ = B::sync(&device);
            model = Some(m);
        });
        if let Some(v) = bad {
            return Err(format!("the training loss became {v}"));
        }
        Ok(Measured {
            seconds,
            baseline_rss,
            peak_rss,
            hwm_reset,
            params,
        })
    }

    fn infer<B: Backend>(self, device: B::Device) -> Result<Measured, String> {
        Autodiff::<B>::seed(&device, self.seed);
        let trained: ImageClassifier<Autodiff<B>> = self
            .config
            .init(self.seed, &device)
            .map_err(|e| e.to_string())?;
        let params = trained.trainable_params();
        let model: ImageClassifier<B> = trained.valid();
        let (images, _) = self.batch_data::<B>(&device);
        let mut bad = false;
        let (seconds, baseline_rss, peak_rss, hwm_reset) = self.measure(|| {
            let logits = model.forward(images.clone()).into_data();
            if let Ok(values) = logits.as_slice::<f32>() {
                bad |= values.iter().any(|v| !v.is_finite());
            }
        });
        if bad {
            return Err("the logits are not finite".to_string());
        }
        Ok(Measured {
            seconds,
            baseline_rss,
            peak_rss,
            hwm_reset,
            params,
        })
    }
}

/// Set when the timed work starts: a panic before it is `run_on_device`'s
/// probe of the wgpu adapter, which reports itself as one line.
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl BackendTask for Step {
    type Output = Result<Measured, String>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.mode {
            Mode::Train => self.train::<B>(device),
            Mode::Infer => self.infer::<B>(device),
        }
    }
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
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let kind: ModelKind = match cli.model.parse() {
        Ok(k) => k,
        Err(e) => return usage(e.to_string()),
    };
    let backend: BackendKind = match cli.backend.parse() {
        Ok(b) => b,
        Err(e) => return usage(e.to_string()),
    };
    for (name, v) in [("batch", cli.batch), ("size", cli.size), ("reps", cli.reps)] {
        if v == 0 {
            return usage(format!("--{name} must be at least 1"));
        }
    }
    let config = ModelConfig {
        dim: cli.dim,
        depth: cli.depth,
        heads: cli.heads,
        no_projection: cli.exact_softmax,
        ..ModelConfig::new(kind)
    };
    if let Err(e) = config.validate() {
        return usage(e.to_string());
    }
    let step = Step {
        config,
        mode: cli.mode,
        batch: cli.batch,
        size: cli.size,
        warmup: cli.warmup,
        reps: cli.reps,
        seed: cli.seed,
    };
    // A panic inside Burn (a backend failing) becomes one line; the device
    // probe's panics are silent (its error says what to do).
    std::panic::set_hook(Box::new(|info| {
        if !STARTED.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error: {}",
            msg.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_on_device(backend, None, step)
    }));
    let m = match outcome {
        Err(_) => return ExitCode::from(1),
        Ok(Err(e @ BackendError::Device(_))) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        Ok(Err(e)) => return usage(e.to_string()),
        Ok(Ok(Err(e))) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        Ok(Ok(Ok(m))) => m,
    };
    let med = median(&m.seconds);
    let min = m.seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let tokens = cli.size * cli.size + 1;
    let step_peak = match (m.peak_rss, m.baseline_rss) {
        (Some(p), Some(b)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    let line = json!({
        "impl": "rust",
        "model": kind.as_str(),
        "attention": if cli.exact_softmax { "softmax" } else { "favor+" },
        "backend": backend.as_str(),
        "mode": cli.mode.as_str(),
        "batch": cli.batch,
        "size": cli.size,
        "tokens": tokens,
        "dim": cli.dim,
        "depth": cli.depth,
        "heads": cli.heads,
        "params": m.params,
        "warmup": cli.warmup,
        "reps": cli.reps,
        "seconds": m.seconds,
        "median_s": med,
        "min_s": min,
        "images_per_s": cli.batch as f64 / med,
        "peak_rss_bytes": m.peak_rss,
        "baseline_rss_bytes": m.baseline_rss,
        "step_peak_bytes": step_peak,
        "hwm_reset": m.hwm_reset,
    });
    println!("{line}");
    ExitCode::SUCCESS
}
