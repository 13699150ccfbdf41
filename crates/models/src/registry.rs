//! The one list of models: the binaries' choices, the tests and checkpoint
//! loading all read it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// A model of the zoo. All five share one classifier and differ only in
/// their positional strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelKind {
    /// Absolute positions: a learnable 2-D sinusoid encoding added to the
    /// pixel embeddings.
    Performer,
    /// No positions: attention by content only.
    NoposPerformer,
    /// Strategy 1: rotation-constrained query projections of sinusoid
    /// position features (relative with exact attention; on average over
    /// feature draws with FAVOR+).
    RelativePerformer,
    /// Strategy 2: learned relative keys over clipped Manhattan distances on
    /// half of the heads.
    ClippedRelativePerformer,
    /// Ours: content random features times a positive periodic relative
    /// factor; relative for every feature draw.
    ExactRelativePerformer,
}

impl ModelKind {
    /// The five, in the order the binaries list them.
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Performer,
        ModelKind::NoposPerformer,
        ModelKind::RelativePerformer,
        ModelKind::ClippedRelativePerformer,
        ModelKind::ExactRelativePerformer,
    ];

    /// The model's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Performer => "Performer",
            ModelKind::NoposPerformer => "NoposPerformer",
            ModelKind::RelativePerformer => "RelativePerformer",
            ModelKind::ClippedRelativePerformer => "ClippedRelativePerformer",
            ModelKind::ExactRelativePerformer => "ExactRelativePerformer",
        }
    }

    /// One line on what the model is.
    pub fn summary(self) -> &'static str {
        match self {
            ModelKind::Performer => {
                "absolute positions: learnable 2-D sinusoid encoding added to the content"
            }
            ModelKind::NoposPerformer => "no positional information (attention by content only)",
            ModelKind::RelativePerformer => {
                "strategy 1: rotation-constrained query projections of sinusoid position features"
            }
            ModelKind::ClippedRelativePerformer => {
                "strategy 2: learned relative keys over clipped Manhattan distances on half of the heads"
            }
            ModelKind::ExactRelativePerformer => {
                "exactly relative for every feature draw: content random features times a positive periodic relative factor"
            }
        }
    }

    /// Config fields beyond the common ones that this model reads.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            ModelKind::RelativePerformer | ModelKind::ExactRelativePerformer => {
                &["pos_scales", "content_rel_attn"]
            }
            ModelKind::ClippedRelativePerformer => &["clipping_dist"],
            _ => &[],
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        ModelKind::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ModelError::UnknownModel(s.to_string()))
    }
}
