//! # relperf-eval
//!
//! Evaluation of the models of `relperf-models`. So far: the equivariance
//! probe ([`equivariance`]), the table of the reference's
//! `relative-performer equivariance`.
#![warn(missing_docs)]

pub mod equivariance;
