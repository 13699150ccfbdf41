//! The one error type of this crate.

/// What can go wrong building or feeding a model; one line each.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// An unknown model name.
    #[error(
        "unknown model '{0}': choose one of Performer, NoposPerformer, RelativePerformer, ClippedRelativePerformer, ExactRelativePerformer"
    )]
    UnknownModel(String),
    /// A configuration value out of range or unknown.
    #[error("{0}")]
    Config(String),
    /// Input that does not fit the model.
    #[error("{0}")]
    Input(String),
}
