//! Random feature maps of the softmax kernel (FAVOR+) and the generalised
//! ReLU kernel, as functions of tensors.
//!
//! Shapes: `x` is `[b, h, n, d]` (batch, heads, tokens, head dim), the
//! projection `W` is `[m, d]` (`m` random features); features are
//! `[b, h, n, m]`.
//!
//! The softmax kernel `exp(q . k / sqrt(d))` is estimated by the positive
//! features `phi(x) = m^-1/2 exp(W x' - |x'|^2 / 2)` with `x' = x d^-1/4`, so
//! that `E_W[phi(q) . phi(k)] = exp(q . k / sqrt(d))` (Choromanski et al.,
//! *Rethinking Attention with Performers*, 2021, Lemma 1).
//! Stabilisers are subtracted before `exp` and detached: the maximum over the
//! features of each row for queries, and the maximum over all tokens and
//! features of each `(sample, head)` for keys, so that one sample's output
//! never depends on another's.

use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};

/// Which kernel the random features estimate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Kernel {
    /// `exp(q . k / sqrt(d))` by positive random features (FAVOR+).
    #[default]
    #[serde(rename = "softmax")]
    Softmax,
    /// Performer's generalised attention `relu(W q') . relu(W k')` (+ 1e-3
    /// per feature): not softmax, but positive and cheap.
    #[serde(rename = "relu")]
    Relu,
}

impl Kernel {
    /// `"softmax"` or `"relu"`, as in the configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Softmax => "softmax",
            Kernel::Relu => "relu",
        }
    }
}

impl std::str::FromStr for Kernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "softmax" => Ok(Kernel::Softmax),
            "relu" => Ok(Kernel::Relu),
            _ => Err(format!("unknown kernel '{s}': choose softmax or relu")),
        }
    }
}

/// The constant added to ReLU features (keeps the normaliser positive).
pub const RELU_EPS: f64 = 1e-3;

/// `W x'` for `x' = x d^-1/4`: `[b, h, n, d]`, `[m, d]` -> `[b, h, n, m]`.
pub fn projection_logits<B: Backend>(x: Tensor<B, 4>, projection: Tensor<B, 2>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let w = projection.mul_scalar((d as f64).powf(-0.25)); // fold the scale into the small matrix
    x.matmul(w.transpose().unsqueeze::<4>())
}

/// `|x'|^2 / 2`: `[b, h, n, d]` -> `[b, h, n, 1]`.
pub fn half_sq_norm<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    x.powi_scalar(2)
        .sum_dim(3)
        .mul_scalar(0.5 / (d as f64).sqrt())
}

/// The positive softmax-kernel features `m^-1/2 exp(W x' - |x'|^2/2 - s)`
/// with the detached stabiliser `s` (per row for queries, per
/// `(sample, head)` for keys): `[b, h, n, d]` -> `[b, h, n, m]`.
///
/// `phi(q) . phi(k)` estimates `exp(q . k / sqrt(d))` times the factors
/// `exp(-s)`, which cancel in normalised attention. For estimates of the
/// kernel itself use it on a single row, or compare ratios.
pub fn softmax_features<B: Backend>(
    x: Tensor<B, 4>,
    projection: Tensor<B, 2>,
    is_query: bool,
) -> Tensor<B, 4> {
    let m = projection.dims()[0];
    let exponent = projection_logits(x.clone(), projection) - half_sq_norm(x);
    let stabiliser = if is_query {
        exponent.clone().max_dim(3)
    } else {
        exponent.clone().max_dim(3).max_dim(2)
    };
    (exponent - stabiliser.detach())
        .exp()
        .mul_scalar((m as f64).powf(-0.5))
}

/// [`softmax_features`] without the factors that cancel in normalised
/// attention (cheaper): queries `softmax_m(W x')` (a positive factor per
/// row), keys `exp(W x' - |x'|^2/2 - s)` with `s` the detached maximum per
/// `(sample, head)` (a positive factor per sample and head).
///
/// On `burn-ndarray` in `f32` (this crate's feature `ndarray`) a fused,
/// multi-threaded CPU kernel computes it,
/// forward and backward ([`crate::host::is_fused`]); every other backend
/// runs [`softmax_features_up_to_scale_reference`].
pub fn softmax_features_up_to_scale<B: Backend>(
    x: Tensor<B, 4>,
    projection: Tensor<B, 2>,
    is_query: bool,
) -> Tensor<B, 4> {
    match crate::host::softmax_features(x, projection, is_query) {
        Ok(features) => features,
        Err((x, projection)) => softmax_features_up_to_scale_reference(x, projection, is_query),
    }
}

/// [`softmax_features_up_to_scale`] in plain tensor ops, on every backend:
/// the reference the fused CPU kernel is tested against.
pub fn softmax_features_up_to_scale_reference<B: Backend>(
    x: Tensor<B, 4>,
    projection: Tensor<B, 2>,
    is_query: bool,
) -> Tensor<B, 4> {
    if is_query {
        return softmax(projection_logits(x, projection), 3);
    }
    let exponent = projection_logits(x.clone(), projection) - half_sq_norm(x);
    let stabiliser = exponent.clone().max_dim(3).max_dim(2).detach();
    (exponent - stabiliser).exp()
}

/// Generalised-kernel features `relu(W x') + 1e-3`: `[b, h, n, d]` ->
/// `[b, h, n, m]` (no stabiliser needed).
pub fn relu_features<B: Backend>(x: Tensor<B, 4>, projection: Tensor<B, 2>) -> Tensor<B, 4> {
    relu(projection_logits(x, projection)).add_scalar(RELU_EPS)
}

/// The features of `kernel` as the attention layers use them (up to
/// cancelling factors for softmax).
pub fn kernel_features<B: Backend>(
    kernel: Kernel,
    x: Tensor<B, 4>,
    projection: Tensor<B, 2>,
    is_query: bool,
) -> Tensor<B, 4> {
    match kernel {
        Kernel::Softmax => softmax_features_up_to_scale(x, projection, is_query),
        Kernel::Relu => relu_features(x, projection),
    }
}
