//! `ModelConfig`: the typed configuration every model is built from, with
//! the JSON names of the PyTorch reference's `model_config`, so its
//! `config.json` files load unchanged.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::registry::ModelKind;

/// The version of the config format (the reference's `config_version`).
pub const CONFIG_VERSION: u32 = 1;

/// How pixel values become token embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EmbeddingType {
    /// `Linear(channels, dim)` of the normalised values.
    #[default]
    #[serde(rename = "linear")]
    Linear,
    /// `Linear(channels, dim)`, GELU, `Linear(dim, dim)`.
    #[serde(rename = "MLP")]
    Mlp,
    /// One learned row per byte value 0..255 and channel, summed over
    /// channels (integer input).
    #[serde(rename = "lookup")]
    Lookup,
}

impl EmbeddingType {
    /// `linear`, `MLP` or `lookup`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingType::Linear => "linear",
            EmbeddingType::Mlp => "MLP",
            EmbeddingType::Lookup => "lookup",
        }
    }
}

impl std::str::FromStr for EmbeddingType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "linear" => Ok(EmbeddingType::Linear),
            "MLP" => Ok(EmbeddingType::Mlp),
            "lookup" => Ok(EmbeddingType::Lookup),
            _ => Err(ModelError::Config(format!(
                "unknown embedding_type '{s}': choose one of linear, MLP, lookup"
            ))),
        }
    }
}

/// Hyperparameters of an image classifier. Defaults are the original CLI's
/// (`dim 128, depth 4, heads 4`, dropouts 0.1, features redrawn every 1000
/// steps, `pos_scales 4`, `clipping_dist 8`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Which model of the registry.
    pub model: ModelKind,
    /// Image channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// Pixel embedding.
    pub embedding_type: EmbeddingType,
    /// Model width.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width multiplier.
    pub ff_mult: usize,
    /// Dropout on the attention output.
    pub attn_dropout: f64,
    /// Dropout in and after the feed-forward.
    pub ff_dropout: f64,
    /// Redraw the random features every this many training steps (0: never).
    pub feature_redraw_interval: usize,
    /// Exact softmax attention instead of FAVOR+ (quadratic).
    pub no_projection: bool,
    /// Random features per head; `None`: `int(d ln d)` of the dim the kernel
    /// sees (the head dim for `ExactRelativePerformer`).
    pub nb_features: Option<usize>,
    /// `softmax` (FAVOR+) or `relu`.
    pub kernel: relperf_favor::Kernel,
    /// Frequency scales (strategy 1) or harmonics (periodic factor) per axis.
    pub pos_scales: usize,
    /// Content-dependent relative positions (strategy 1, periodic factor).
    pub content_rel_attn: bool,
    /// Strategy 2's clipping distance.
    pub clipping_dist: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model: ModelKind::Performer,
            in_channels: 1,
            num_classes: 10,
            embedding_type: EmbeddingType::Linear,
            dim: 128,
            depth: 4,
            heads: 4,
            ff_mult: 4,
            attn_dropout: 0.1,
            ff_dropout: 0.1,
            feature_redraw_interval: 1000,
            no_projection: false,
            nb_features: None,
            kernel: relperf_favor::Kernel::Softmax,
            pos_scales: 4,
            content_rel_attn: false,
            clipping_dist: 8,
        }
    }
}

impl ModelConfig {
    /// The defaults for `model`.
    pub fn new(model: ModelKind) -> Self {
        ModelConfig {
            model,
            ..Default::default()
        }
    }

    /// `dim / heads`.
    pub fn dim_head(&self) -> usize {
        self.dim / self.heads.max(1)
    }

    /// Checks every field; the error names the option and what to do.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, v) in [
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("pos_scales", self.pos_scales),
            ("ff_mult", self.ff_mult),
            ("clipping_dist", self.clipping_dist),
        ] {
            if v < 1 {
                return bad(format!("--{name} must be at least 1 (got {v})"));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "--dim {} is not divisible by --heads {}; pick a dim that is a multiple of heads",
                self.dim, self.heads
            ));
        }
        if self.model == ModelKind::Performer && !self.dim.is_multiple_of(4) {
            return bad(format!(
                "Performer's absolute sinusoid encoding needs --dim divisible by 4 (got {})",
                self.dim
            ));
        }
        for (name, p) in [
            ("attn_dropout", self.attn_dropout),
            ("ff_dropout", self.ff_dropout),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("--{name} must be in [0, 1] (got {p})"));
            }
        }
        if self.nb_features == Some(0) {
            return bad(
                "--nb_features must be at least 1 (leave it out for the default)".to_string(),
            );
        }
        Ok(())
    }

    /// Parses a `model_config` JSON object (unknown fields are an error: they
    /// mean another version of the format).
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let cfg: ModelConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("model config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }
}
