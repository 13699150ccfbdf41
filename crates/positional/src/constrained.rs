//! Strategy 1 (paper section 3.1, `RelativePerformer`): rotation-constrained
//! query projections of the position features.
//!
//! Keys get the position features `f_j = [sin(w p_j), cos(w p_j)]`
//! unchanged; queries get them multiplied, per head, axis and scale, by
//! `[[alpha, -beta], [beta, alpha]]`. The positional part of `q_i . k_j` is
//! then `sum alpha cos(w (p_i - p_j)) + beta sin(w (p_i - p_j))`: a function
//! of the displacement only. With exact softmax attention the model sees
//! relative positions only; FAVOR+ features multiply the widened queries and
//! keys by a random matrix, so for one draw the weights depend on absolute
//! positions, and only their expectation over draws is relative.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::grid::AXES;

/// `[[alpha, -beta], [beta, alpha]]` applied to the `(sin, cos)` pairs:
/// `features [..., a, s, 2]`, `alpha`, `beta` `[..., a, s, 1]` (broadcast)
/// -> `[..., a, s, 2]` with `rotate(f_i) . f_j = alpha cos(w (p_i - p_j)) +
/// beta sin(w (p_i - p_j))`.
pub fn rotate<B: Backend, const D: usize>(
    features: Tensor<B, D>,
    alpha: Tensor<B, D>,
    beta: Tensor<B, D>,
) -> Tensor<B, D> {
    let sin = features.clone().narrow(D - 1, 0, 1);
    let cos = features.narrow(D - 1, 1, 1);
    let first = alpha.clone() * sin.clone() - beta.clone() * cos.clone();
    let second = alpha * cos + beta * sin;
    Tensor::cat(vec![first, second], D - 1)
}

/// Configuration of [`ConstrainedProjection`].
#[derive(Config, Debug)]
pub struct ConstrainedProjectionConfig {
    /// Model width (input of the content-dependent block).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Frequency scales per axis.
    pub scales: usize,
    /// Add a block whose `alpha, beta` a linear layer predicts from the
    /// query token's content.
    #[config(default = false)]
    pub content_rel_attn: bool,
}

impl ConstrainedProjectionConfig {
    /// Per-head `alpha, beta` `[h, 2, s]` drawn from `N(0, 1)`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConstrainedProjection<B> {
        let shape = [self.heads, AXES, self.scales];
        ConstrainedProjection {
            alpha: Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            beta: Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            to_alpha_beta: self.content_rel_attn.then(|| {
                LinearConfig::new(self.dim, self.heads * AXES * self.scales * 2).init(device)
            }),
            heads: self.heads,
            scales: self.scales,
        }
    }

    /// How many channels each head's queries and keys grow by.
    pub fn extra_dim(&self) -> usize {
        AXES * self.scales * 2 * if self.content_rel_attn { 2 } else { 1 }
    }
}

/// One layer's widening of queries and keys by (rotated) position features.
#[derive(Module, Debug)]
pub struct ConstrainedProjection<B: Backend> {
    /// `[h, 2, s]`.
    pub alpha: Param<Tensor<B, 3>>,
    /// `[h, 2, s]`.
    pub beta: Param<Tensor<B, 3>>,
    /// `Linear(dim, h * 2 * s * 2)` with `content_rel_attn`, output layout
    /// `(h a s t)`, `t = (alpha, beta)`.
    pub to_alpha_beta: Option<Linear<B>>,
    heads: usize,
    scales: usize,
}

impl<B: Backend> ConstrainedProjection<B> {
    /// How many channels each head's queries and keys grow by.
    pub fn extra_dim(&self) -> usize {
        AXES * self.scales * 2 * if self.to_alpha_beta.is_some() { 2 } else { 1 }
    }

    /// The channels that widen queries and keys: `q_extra [b or 1, h, n, E]`
    /// and `k_extra [1, 1, n, E]` for the normed layer input `x [b, n, dim]`
    /// and `positions [n, 2, s, 2]` (zeros for the class token).
    pub fn extras(&self, x: Tensor<B, 3>, positions: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [n, a, s, _] = positions.dims();
        let h = self.heads;
        let block = a * s * 2;
        let pairs = positions.clone().reshape([n, a * s, 2]);
        let (alpha, beta) = (self.alpha.val(), self.beta.val());
        let rotated = relperf_favor::host::rotate_pairs(
            pairs,
            alpha.reshape([h, a * s]),
            beta.reshape([h, a * s]),
        )
        .unwrap_or_else(|(pairs, alpha, beta)| {
            let pos = pairs.reshape([1, n, a, s, 2]).expand([h, n, a, s, 2]);
            rotate(
                pos,
                alpha.reshape([h, 1, a, s, 1]),
                beta.reshape([h, 1, a, s, 1]),
            )
            .reshape([h, n, a * s, 2])
        });
        let mut q_extra = rotated.reshape([1, h, n, block]);
        let mut k_extra = positions.clone().reshape([1, 1, n, block]);
        if let Some(linear) = &self.to_alpha_beta {
            let b = x.dims()[0];
            let ab = linear
                .forward(x)
                .reshape([b, n, h, a, s, 2])
                .permute([0, 2, 1, 3, 4, 5]); // [b, h, n, a, s, t]
            let alpha = ab.clone().narrow(5, 0, 1);
            let beta = ab.narrow(5, 1, 1);
            let pos6 = positions
                .reshape([1, 1, n, a, s, 2])
                .expand([b, h, n, a, s, 2]);
            let content = rotate(pos6, alpha, beta).reshape([b, h, n, block]);
            q_extra = Tensor::cat(vec![q_extra.expand([b, h, n, block]), content], 3);
            k_extra = Tensor::cat(vec![k_extra.clone(), k_extra], 3);
        }
        (q_extra, k_extra)
    }
}

/// `q, k [b, h, n, d]` widened by extras broadcastable to `[b, h, n, E]`
/// -> `[b, h, n, d + E]` each.
pub fn widen<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    q_extra: Tensor<B, 4>,
    k_extra: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let cat = |x: Tensor<B, 4>, extra: Tensor<B, 4>| {
        relperf_favor::host::concat_last(x, extra).unwrap_or_else(|(x, extra)| {
            let [b, h, n, _] = x.dims();
            let e = extra.dims()[3];
            Tensor::cat(vec![x, extra.expand([b, h, n, e])], 3)
        })
    };
    (cat(q, q_extra), cat(k, k_extra))
}
