//! Linear (kernelized) attention and the exact softmax reference.

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// `[v, 1]`: `[b, h, n, e]` -> `[b, h, n, e + 1]`; the column of ones carries
/// the normaliser through the same products as the values.
///
/// On the fused CPU path one row-by-row copy ([`crate::host::concat_last`]
/// with a broadcast `1`): burn-ndarray's `cat` took 11% of
/// `ExactRelativePerformer`'s inference.
pub fn with_ones<B: Backend>(v: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, n, _] = v.dims();
    // v's dtype: Burn 0.21 keys a device's default float dtype by device type
    let one = Tensor::ones([1, 1, 1, 1], (&v.device(), v.dtype()));
    match crate::host::concat_last(v, one) {
        Ok(v1) => v1,
        Err((v, one)) => Tensor::cat(vec![v, one.expand([b, h, n, 1])], 3),
    }
}

/// `[..., e + 1]` numerator and normaliser -> `[..., e]`: the numerator
/// divided by the normaliser (clamped to the smallest positive `f32`).
///
/// A division, not a multiplication by `recip()`: burn-ndarray 0.21's
/// `recip` is an approximate reciprocal (relative error up to 5e-5 in f32,
/// measured), which alone would break parity with the reference at 1e-5.
pub fn normalise<B: Backend>(out: Tensor<B, 4>) -> Tensor<B, 4> {
    let e1 = out.dims()[3];
    let numerator = out.clone().narrow(3, 0, e1 - 1);
    let denominator = out.narrow(3, e1 - 1, 1).clamp_min(f32::MIN_POSITIVE as f64);
    numerator / denominator
}

/// Non-causal kernelized attention `phi(Q) (phi(K)^T [V, 1])`, normalised:
/// `q_features [b, h, n, m]`, `k_features [b, h, j, m]`, `v [b, h, j, e]`
/// -> `[b, h, n, e]`, in `O(n m e)` time and `O(n (m + e))` memory; no
/// `n x j` tensor.
pub fn linear_attention<B: Backend>(
    q_features: Tensor<B, 4>,
    k_features: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let (q_features, k_features, v) = match crate::host::linear_attention(q_features, k_features, v)
    {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    linear_attention_reference(q_features, k_features, v)
}

/// [`linear_attention`] in plain tensor ops on every backend: the
/// reference the fused CPU kernel ([`crate::host`]) is tested against.
pub fn linear_attention_reference<B: Backend>(
    q_features: Tensor<B, 4>,
    k_features: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let context = k_features.swap_dims(2, 3).matmul(with_ones(v)); // [b, h, m, e + 1]
    normalise(q_features.matmul(context))
}

/// Exact softmax attention `softmax(q k^T / sqrt(d)) v` (`[b, h, n, d]`,
/// `[b, h, j, d]`, `[b, h, j, e]` -> `[b, h, n, e]`): the `--no_projection`
/// path and the reference of the estimators. Quadratic in time and memory.
pub fn softmax_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let d = q.dims()[3];
    let logits = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((d as f64).powf(-0.5));
    softmax(logits, 3).matmul(v)
}
