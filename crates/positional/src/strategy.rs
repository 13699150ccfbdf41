//! The one interface through which an attention layer takes any positional
//! strategy.
//!
//! A layer projects its normed input `x [b, n, dim]` to queries, keys and
//! values `[b, h, n, d]` and hands them, with the image's size and the
//! forward pass's shared position features, to its strategy's
//! [`LayerStrategy::attend`], together with its random features (or `None`
//! for exact softmax attention). The strategy returns the heads' outputs
//! `[b, h, n, d]`; the layer merges the heads. Every strategy of the paper
//! implements it:
//!
//! | strategy | implementation |
//! |---|---|
//! | content only (`Performer`, whose absolute encoding is added to the pixel embeddings before the blocks, and `NoposPerformer`) | [`ContentOnly`] |
//! | strategy 1 | [`ConstrainedProjection`] (widens q and k by [`LayerStrategy::qk_extra_dim`] channels) |
//! | strategy 2 | [`RelativeKeys`] |
//! | exact periodic factor | [`PeriodicFactor`] |
//!
//! # Adding a sixth strategy
//! Implement [`LayerStrategy`] for a Burn module holding the strategy's
//! per-layer parameters, and build it wherever the model chooses a layer's
//! strategy (the model zoo's registry). The attention layer and the blocks
//! do not change. For example, a strategy that attends only to the tokens of
//! the same image row (exact attention with a mask) needs no parameters:
//!
//! ```
//! use burn::prelude::*;
//! use burn::tensor::activation::softmax;
//! use relperf_favor::FeatureMap;
//! use relperf_positional::strategy::{AttentionInput, LayerStrategy};
//!
//! #[derive(Module, Debug, Clone)]
//! struct SameRow;
//!
//! impl<B: Backend> LayerStrategy<B> for SameRow {
//!     fn attend(&self, input: AttentionInput<B>, _features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
//!         let AttentionInput { q, k, v, width, .. } = input;
//!         let [_, _, n, d] = q.dims();
//!         let row = |i: usize| if i == 0 { usize::MAX } else { (i - 1) / width };
//!         let mask: Vec<f32> = (0..n * n).map(|p| if row(p / n) == row(p % n) || p / n == p % n { 0.0 } else { -1e9 }).collect();
//!         let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, n]), &q.device()).unsqueeze::<4>();
//!         let logits = q.matmul(k.swap_dims(2, 3)).mul_scalar((d as f64).powf(-0.5)) + mask;
//!         softmax(logits, 3).matmul(v)
//!     }
//! }
//!
//! type B = burn::backend::NdArray;
//! let t = Tensor::<B, 4>::ones([1, 2, 1 + 2 * 3, 4], &Default::default());
//! let input = AttentionInput { q: t.clone(), k: t.clone(), v: t.clone(), x: Tensor::zeros([1, 7, 8], &Default::default()), height: 2, width: 3, positions: None };
//! assert_eq!(SameRow.attend(input, None).dims(), [1, 2, 7, 4]);
//! ```

use burn::prelude::*;
use relperf_favor::{FeatureMap, softmax_attention};

use crate::clipped::{RelativeKeys, clipped_attention};
use crate::constrained::{ConstrainedProjection, widen};
use crate::periodic::{
    PeriodicFactor, exact_attention, generic_attention, outer_axes, separable_attention,
    token_basis,
};

/// What a layer hands its strategy in one forward pass.
#[derive(Debug, Clone)]
pub struct AttentionInput<B: Backend> {
    /// Queries `[b, h, n, d]` (token 0 the class token, then the pixels
    /// row-major).
    pub q: Tensor<B, 4>,
    /// Keys `[b, h, n, d]`.
    pub k: Tensor<B, 4>,
    /// Values `[b, h, n, d]`.
    pub v: Tensor<B, 4>,
    /// The layer's normed input `[b, n, dim]` (content-dependent positions
    /// read it).
    pub x: Tensor<B, 3>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Position features shared by the layers of a forward pass, with the
    /// class token's zero row first: strategy 1's `[n, 2, s, 2]`; `None` for
    /// the others.
    pub positions: Option<Tensor<B, 4>>,
}

/// A positional strategy of one attention layer (see the module docs).
pub trait LayerStrategy<B: Backend> {
    /// Channels added to each head's queries and keys before the random
    /// features are taken (the layer draws its features for `d + this`).
    fn qk_extra_dim(&self) -> usize {
        0
    }

    /// The heads' outputs `[b, h, n, d]`. `features` is the layer's FAVOR+
    /// feature map, or `None` for exact softmax attention.
    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4>;
}

/// Attention by content only: FAVOR+ or exact softmax over `q, k, v`.
#[derive(Module, Debug, Clone, Default)]
pub struct ContentOnly;

/// FAVOR+ of `features`, or exact softmax attention without them.
fn content_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    features: Option<&FeatureMap<B>>,
) -> Tensor<B, 4> {
    match features {
        Some(map) => map.attend(q, k, v),
        None => softmax_attention(q, k, v),
    }
}

impl<B: Backend> LayerStrategy<B> for ContentOnly {
    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        content_attention(input.q, input.k, input.v, features)
    }
}

impl<B: Backend> LayerStrategy<B> for ConstrainedProjection<B> {
    fn qk_extra_dim(&self) -> usize {
        self.extra_dim()
    }

    /// # Panics
    /// If `input.positions` is `None` (strategy 1 needs the grid features).
    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        let AttentionInput {
            q,
            k,
            v,
            x,
            positions,
            ..
        } = input;
        let positions =
            positions.expect("strategy 1 needs the position features of the forward pass");
        let (q_extra, k_extra) = self.extras(x, positions);
        let (q, k) = widen(q, k, q_extra, k_extra);
        content_attention(q, k, v, features)
    }
}

impl<B: Backend> LayerStrategy<B> for RelativeKeys<B> {
    /// The first `h / 2` heads attend by content; the others through the
    /// clipped relative keys ([`clipped_attention`]).
    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        let AttentionInput {
            q,
            k,
            v,
            height,
            width,
            ..
        } = input;
        let h = q.dims()[1];
        let content_heads = h / 2;
        let rel = h - content_heads;
        let relative = {
            let (qr, vr) = (
                q.clone().narrow(1, content_heads, rel),
                v.clone().narrow(1, content_heads, rel),
            );
            clipped_attention(vr, self.weights(qr, features), height, width)
        };
        if content_heads == 0 {
            return relative;
        }
        let content = content_attention(
            q.narrow(1, 0, content_heads),
            k.narrow(1, 0, content_heads),
            v.narrow(1, 0, content_heads),
            features,
        );
        Tensor::cat(vec![content, relative], 1)
    }
}

impl<B: Backend> LayerStrategy<B> for PeriodicFactor<B> {
    /// FAVOR+ of contents times the exact periodic factor: separable sums
    /// without `content_rel_attn`, the generic path with it; the exact
    /// path (quadratic) without random features.
    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        let AttentionInput {
            q,
            k,
            v,
            x,
            height,
            width,
            ..
        } = input;
        let [_, h, n, _] = q.dims();
        let s = self.harmonics();
        let p = 1 + 2 * s;
        let u = self.query_vectors(x, height, width); // [b|1, h, n, 2, p]
        match features {
            Some(map) if !self.is_content_dependent() => {
                // a view where the CPU kernels run (burn-ndarray's reshape copies)
                let u = relperf_favor::host::reshape(u, [1, h, n, 2 * p]);
                separable_attention(q, k, v, u, map, height, width, s)
            }
            _ => {
                let psi = token_basis::<B>(height, width, s, &q.device()).reshape([1, 1, n, 2, p]);
                let psi = outer_axes(psi).reshape([n, p * p]);
                let u = outer_axes(u);
                match features {
                    Some(map) => generic_attention(q, k, v, u, psi, map),
                    None => exact_attention(q, k, v, u, psi),
                }
            }
        }
    }
}
