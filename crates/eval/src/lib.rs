//! # relperf-eval
//!
//! Evaluation of the models of `relperf-models`: run folders ([`run`]: the
//! layout `relperf-train` writes and every evaluation command reads), loss
//! and accuracy on an image set ([`evaluate`]), and the equivariance probe
//! ([`equivariance`]), the table of the reference's
//! `relative-performer equivariance`.
#![warn(missing_docs)]

pub mod equivariance;
pub mod error;
pub mod evaluate;
pub mod run;

pub use error::{Result, RunError};
pub use evaluate::{Metrics, evaluate};
pub use run::{RunConfig, RunFolder, find_runs};
