//! # relperf-positional
//!
//! The positional strategies of *Translational Equivariance in Kernelizable
//! Attention* (Horn et al., [arXiv 2102.07680](https://arxiv.org/abs/2102.07680))
//! for [Burn](https://burn.dev), on the FAVOR+ kernels of `relperf-favor`:
//!
//! | strategy | model | module |
//! |---|---|---|
//! | absolute learnable 2-D sinusoid added to the pixel embeddings | `Performer` | [`sinusoid::AbsoluteSinusoid`] |
//! | none | `NoposPerformer` | — |
//! | strategy 1: sinusoid position features, rotation-constrained on the query side (section 3.1) | `RelativePerformer` | [`sinusoid::GridSinusoid`], [`constrained::ConstrainedProjection`] |
//! | strategy 2: learned keys over clipped Manhattan distances, in linear time (section 3.2) | `ClippedRelativePerformer` | [`clipped::RelativeKeys`], [`clipped::clipped_attention`] |
//! | exactly relative periodic factor, for every feature draw (ours) | `ExactRelativePerformer` | [`periodic::PeriodicFactor`] |
//!
//! An attention layer takes any of them through one interface,
//! [`strategy::LayerStrategy`] (its docs show how to add a sixth).
//!
//! Tokens are the class token followed by the pixels, row-major; height and
//! width are separate everywhere (images need not be square). Generic over
//! `B: Backend`; the crate turns on no backend.
#![warn(missing_docs)]

pub mod clipped;
pub mod constrained;
pub mod grid;
pub mod periodic;
pub mod sinusoid;
pub mod strategy;

pub use strategy::{AttentionInput, ContentOnly, LayerStrategy};
