//! How far a model's class logits move under cyclic shifts of its input.
//!
//! Random-weight models with periodic positions (strategy 1's frequencies
//! rounded to multiples of `2 pi / side`; the exactly relative model is
//! periodic by construction), so that an exactly relative model is exactly
//! invariant to rolling the image and every deviation measured is the random
//! features' doing. Each model is measured with exact softmax attention (the
//! same weights, features removed) and with FAVOR+ for several draws.

use burn::prelude::*;
use relperf_favor::draw::Gaussian;
use relperf_models::{ImageClassifier, ModelConfig, ModelKind};

/// The probe's settings (the reference's defaults).
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Models to measure.
    pub models: Vec<ModelKind>,
    /// Image side.
    pub side: usize,
    /// Model width.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Heads.
    pub heads: usize,
    /// FAVOR+ draws (the worst is reported).
    pub draws: usize,
    /// Images.
    pub batch: usize,
    /// Seed of weights, features and images.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            models: ModelKind::ALL.to_vec(),
            side: 16,
            dim: 32,
            depth: 2,
            heads: 4,
            draws: 3,
            batch: 8,
            seed: 0,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// The model.
    pub model: ModelKind,
    /// `exact` or `favor+`.
    pub attention: &'static str,
    /// The feature draw (0 for exact attention).
    pub draw: usize,
    /// `max |logits(roll(x)) - logits(x)| / max |logits(x)|` over the shifts.
    pub max_relative_logit_change: f64,
}

/// Rolls images `[b, c, h, w]` by `(dy, dx)` (positive: down, right).
pub fn roll<B: Backend>(images: Tensor<B, 4>, dy: usize, dx: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = images.dims();
    let (dy, dx) = (dy % h, dx % w);
    let rows = if dy == 0 {
        images
    } else {
        Tensor::cat(
            vec![
                images.clone().narrow(2, h - dy, dy),
                images.narrow(2, 0, h - dy),
            ],
            2,
        )
    };
    if dx == 0 {
        rows
    } else {
        Tensor::cat(
            vec![
                rows.clone().narrow(3, w - dx, dx),
                rows.narrow(3, 0, w - dx),
            ],
            3,
        )
    }
}

/// The largest relative change of the logits over `shifts`.
pub fn shift_error<B: Backend>(
    model: &ImageClassifier<B>,
    images: Tensor<B, 4>,
    shifts: &[(usize, usize)],
) -> f64 {
    let reference = model.forward(images.clone());
    let scale = reference
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f64>()
        .max(1e-12);
    shifts
        .iter()
        .map(|&(dy, dx)| {
            let moved = model.forward(roll(images.clone(), dy, dx));
            (moved - reference.clone())
                .abs()
                .max()
                .into_scalar()
                .elem::<f64>()
                / scale
        })
        .fold(0.0, f64::max)
}

/// Measures every model of `cfg` (see the module docs). The shifts are the
/// reference's: `(1, 0), (0, 1), (3, side - 2), (side / 2, side / 3)`.
pub fn probe<B: Backend>(cfg: &ProbeConfig, device: &B::Device) -> Vec<ProbeRow> {
    let side = cfg.side;
    let shifts = [(1, 0), (0, 1), (3, side - 2), (side / 2, side / 3)];
    let mut g = Gaussian::new(cfg.seed);
    let pixels: Vec<f64> = (0..cfg.batch * side * side)
        .map(|_| (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect();
    let images =
        Tensor::<B, 4>::from_data(TensorData::new(pixels, [cfg.batch, 1, side, side]), device);
    let mut rows = Vec::new();
    for &kind in &cfg.models {
        B::seed(device, cfg.seed);
        let mc = ModelConfig {
            dim: cfg.dim,
            depth: cfg.depth,
            heads: cfg.heads,
            attn_dropout: 0.0,
            ff_dropout: 0.0,
            ..ModelConfig::new(kind)
        };
        let mut model: ImageClassifier<B> = mc
            .init(cfg.seed, device)
            .expect("the probe's config is valid");
        model.grid = model.grid.take().map(|g| g.make_periodic(side, side));
        let exact = model.clone().without_features();
        rows.push(ProbeRow {
            model: kind,
            attention: "exact",
            draw: 0,
            max_relative_logit_change: shift_error(&exact, images.clone(), &shifts),
        });
        for draw in 0..cfg.draws {
            if draw > 0 {
                model = model.redraw_features();
            }
            rows.push(ProbeRow {
                model: kind,
                attention: "favor+",
                draw,
                max_relative_logit_change: shift_error(&model, images.clone(), &shifts),
            });
        }
    }
    rows
}

/// The largest change measured for `model` with `attention` (`exact` or
/// `favor+`) over its draws; NaN if there is none.
pub fn worst(rows: &[ProbeRow], model: ModelKind, attention: &str) -> f64 {
    rows.iter()
        .filter(|r| r.model == model && r.attention == attention)
        .map(|r| r.max_relative_logit_change)
        .fold(f64::NAN, f64::max)
}

/// The table of the reference's `equivariance` command: per model, the
/// exact column and the worst FAVOR+ draw, `%.1e`.
pub fn table(rows: &[ProbeRow]) -> String {
    let mut out = format!("{:<25}{:>8}{:>8}\n", "attention", "exact", "favor+");
    let mut models: Vec<ModelKind> = rows.iter().map(|r| r.model).collect();
    models.dedup();
    for m in models {
        let (exact, favor) = (worst(rows, m, "exact"), worst(rows, m, "favor+"));
        out.push_str(&format!(
            "{:<25}{:>8.1e}{:>8.1e}\n",
            m.as_str(),
            exact,
            favor
        ));
    }
    out
}
