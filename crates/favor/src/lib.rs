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
//! * [`host`]: the softmax feature maps fused on the CPU (`burn-ndarray`),
//!   forward and backward, tested against the plain ops.
//! * [`FeatureMap`]: a module holding one attention's projection as a frozen
//!   parameter (saved in records), with redraws.
//!
//! Generic over `B: Backend`; the crate turns on no backend.
//!
//! # FAVOR+ in your own Burn model
//! A multi-head self-attention whose cost is linear in the number of tokens:
//! keep a [`FeatureMap`] beside the projections, and call
//! [`FeatureMap::attend`] where softmax attention would be.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::prelude::*;
//! use relperf_favor::{FeatureMap, FeatureMapConfig};
//!
//! #[derive(Module, Debug)]
//! struct LinearSelfAttention<B: Backend> {
//!     to_qkv: Linear<B>,
//!     to_out: Linear<B>,
//!     features: FeatureMap<B>,
//!     heads: usize,
//! }
//!
//! impl<B: Backend> LinearSelfAttention<B> {
//!     fn new(dim: usize, heads: usize, seed: u64, device: &B::Device) -> Self {
//!         LinearSelfAttention {
//!             to_qkv: LinearConfig::new(dim, 3 * dim).init(device),
//!             to_out: LinearConfig::new(dim, dim).init(device),
//!             features: FeatureMapConfig::new(dim / heads).init(seed, device), // int(d ln d) features
//!             heads,
//!         }
//!     }
//!
//!     /// `[batch, tokens, dim]` -> `[batch, tokens, dim]`.
//!     fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
//!         let [b, n, dim] = x.dims();
//!         let (h, d) = (self.heads, dim / self.heads);
//!         let qkv = self.to_qkv.forward(x).reshape([b, n, 3, h, d]).permute([2, 0, 3, 1, 4]); // [3, b, h, n, d]
//!         let part = |i| qkv.clone().narrow(0, i, 1).reshape([b, h, n, d]);
//!         let out = self.features.attend(part(0), part(1), part(2)); // [b, h, n, d]
//!         self.to_out.forward(out.swap_dims(1, 2).reshape([b, n, dim]))
//!     }
//! }
//!
//! type B = burn::backend::NdArray;
//! let device = Default::default();
//! let attention = LinearSelfAttention::<B>::new(64, 4, 0, &device);
//! let tokens = Tensor::<B, 3>::random([2, 1025, 64], burn::tensor::Distribution::Default, &device);
//! assert_eq!(attention.forward(tokens).dims(), [2, 1025, 64]);
//! // every `feature_redraw_interval` training steps: attention.features = attention.features.redraw();
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod draw;
pub mod feature_map;
pub mod features;
pub mod host;

pub use attention::{linear_attention, softmax_attention};
pub use draw::{default_nb_features, draw_projection};
pub use feature_map::{FeatureMap, FeatureMapConfig};
pub use features::Kernel;
