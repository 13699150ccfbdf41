//! # relperf-train
//!
//! Training of the models of `relperf-models` with the PyTorch reference's
//! recipe, on any Burn autodiff backend: Adam (betas 0.9 / 0.98, eps 1e-8)
//! after global-norm gradient clipping ([`optim`]), `constant` and `noam`
//! schedules with warm-up ([`options::Schedule`]), an exponential moving
//! average of the weights ([`ema`]), early stopping on validation accuracy,
//! the best checkpoint by validation accuracy, random features redrawn every
//! `feature_redraw_interval` steps, and run folders that continue exactly
//! after a stop ([`checkpoint`], [`trainer`]).
//!
//! The loop is our own rather than Burn's `Learner`: Burn 0.21 has no
//! per-step hook (the feature redraws), clips per tensor rather than by the
//! global norm, and checkpoints per epoch only.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod ema;
pub mod metrics;
pub mod optim;
pub mod options;
pub mod trainer;

pub use options::{BatchLimit, RuntimeOptions, Schedule, TrainOptions};
pub use trainer::{Outcome, RunSpec, Start, train};
