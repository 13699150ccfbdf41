//! # relperf-favor
//!
//! FAVOR+ attention for [Burn](https://burn.dev): the positive random
//! features of Performers (Choromanski et al., *Rethinking Attention with
//! Performers*, ICLR 2021, [arXiv 2009.14794](https://arxiv.org/abs/2009.14794))
//! as used by *Translational Equivariance in Kernelizable Attention* (Horn
//! et al., [arXiv 2102.07680](https://arxiv.org/abs/2102.07680)).
//!
//! * [`draw`]: orthogonal Gaussian projections drawn on the host from a
//!   seed, identical on every backend; `int(d ln d)` features by default.
//! * [`features`]: the feature maps (positive softmax kernel, generalised
//!   ReLU kernel) with per-row and per-`(sample, head)` stabilisers.
//! * [`attention`]: linear attention in `O(n m d)` time and `O(n (m + d))`
//!   memory, and exact softmax attention, the quadratic reference.
//! * [`FeatureMap`]: a module holding one attention's projection as a frozen
//!   parameter (saved in records), with redraws.
//!
//! Generic over `B: Backend`; the crate turns on no backend.
#![warn(missing_docs)]

pub mod attention;
pub mod draw;
pub mod feature_map;
pub mod features;

pub use attention::{linear_attention, softmax_attention};
pub use draw::{default_nb_features, draw_projection};
pub use feature_map::{FeatureMap, FeatureMapConfig};
pub use features::Kernel;
