//! Strategy 2 (paper section 3.2, `ClippedRelativePerformer`): learned
//! relative keys over clipped Manhattan distances, in linear time.
//!
//! Half of the heads (the first `h / 2`, rounded down) are ordinary content
//! heads. In the others, the key of pixel `j` seen from pixel `i` is a learned
//! vector `r[c(i, j)]` with `c(i, j) = min(|dy| + |dx|, C)` (`C =
//! clipping_dist`), the weight is `s_c(i) = phi(q_i) . phi(r[c])` (FAVOR+,
//! the layer's own features) or `exp(q_i . r[c] / sqrt(d))` (exact), and the
//! key contents are not used. All far pairs share `r[C]`, so
//!
//! ```text
//! out_i = [s_C(i) sum_j v1_j + sum_{c<C} (s_c(i) - s_C(i)) R_c(v1)_i]    (v1 = [v, 1], then normalised)
//! ```
//!
//! with `R_c(v)_i` the sum of `v` over the pixels at distance exactly `c`
//! from pixel `i` inside the image (zero-padded at the border, not
//! periodic): a global term plus a local window, `O(n e C^2)` with no
//! `n x n` tensor. The class token is at distance `C` from every token,
//! itself included.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use relperf_favor::FeatureMap;
use relperf_favor::attention::{normalise, with_ones};

/// Configuration of [`RelativeKeys`].
#[derive(Config, Debug)]
pub struct RelativeKeysConfig {
    /// Attention heads (the relative heads are the last `h - h / 2`).
    pub heads: usize,
    /// Head dimension.
    pub dim_head: usize,
    /// `C`: distances at or beyond it share one key.
    pub clipping_dist: usize,
}

impl RelativeKeysConfig {
    /// Keys `[h - h / 2, C + 1, d]` drawn from `N(0, 1)`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RelativeKeys<B> {
        let shape = [
            self.heads - self.heads / 2,
            self.clipping_dist + 1,
            self.dim_head,
        ];
        RelativeKeys {
            keys: Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            clipping_dist: self.clipping_dist,
        }
    }
}

/// One layer's learned relative keys.
#[derive(Module, Debug)]
pub struct RelativeKeys<B: Backend> {
    /// `[relative heads, C + 1, d]`.
    pub keys: Param<Tensor<B, 3>>,
    clipping_dist: usize,
}

impl<B: Backend> RelativeKeys<B> {
    /// `C`.
    pub fn clipping_dist(&self) -> usize {
        self.clipping_dist
    }

    /// The weights `s_c(i)` of the relative heads, `[b, hr, n, C + 1]`, for
    /// their queries `q [b, hr, n, d]`: FAVOR+ features of `map` (query rows
    /// against the keys' features, whose stabiliser is per head), or exact
    /// `exp(q . r_c / sqrt(d) - max_c)` when `map` is `None`.
    pub fn weights(&self, q: Tensor<B, 4>, map: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        let r = self.keys.val().unsqueeze::<4>(); // [1, hr, C + 1, d]
        match map {
            Some(map) => map
                .features(q, true)
                .matmul(map.features(r, false).swap_dims(2, 3)),
            None => {
                let d = q.dims()[3];
                let logits = q
                    .matmul(r.swap_dims(2, 3))
                    .mul_scalar((d as f64).powf(-0.5));
                let max = logits.clone().max_dim(3).detach();
                (logits - max).exp()
            }
        }
    }
}

/// The ring sums `R_c(v)` for `c = 0..C-1` over the pixels of a
/// `height x width` image: `v [b, h, height * width, e]` (pixels only,
/// row-major) -> `C` tensors `[b, h, height * width, e]`, each the sum of `v`
/// over the in-image pixels at Manhattan distance exactly `c`.
pub fn ring_sums<B: Backend>(
    v: Tensor<B, 4>,
    height: usize,
    width: usize,
    clipping_dist: usize,
) -> Vec<Tensor<B, 4>> {
    let [b, h, n, e] = v.dims();
    assert_eq!(n, height * width, "ring sums take the pixels only");
    let v = match relperf_favor::host::ring_sums(v.reshape([b, h, height, width, e]), clipping_dist)
    {
        Ok(rings) => {
            // [C, b, h, height, width, e]: each ring a contiguous block
            return (0..clipping_dist)
                .map(|c| rings.clone().narrow(0, c, 1).reshape([b, h, n, e]))
                .collect();
        }
        Err(v) => v.reshape([b, h, n, e]),
    };
    ring_sums_reference(v, height, width, clipping_dist)
}

/// [`ring_sums`] in plain tensor ops on every backend (one shifted view and
/// one addition per ring point): the reference of the fused CPU kernel
/// `relperf_favor::host::ring_sums`, which [`ring_sums`] takes on
/// burn-ndarray in `f32`.
pub fn ring_sums_reference<B: Backend>(
    v: Tensor<B, 4>,
    height: usize,
    width: usize,
    clipping_dist: usize,
) -> Vec<Tensor<B, 4>> {
    let [b, h, n, e] = v.dims();
    assert_eq!(n, height * width, "ring sums take the pixels only");
    let pad = clipping_dist.saturating_sub(1);
    let grid = v.reshape([b, h, height, width, e]);
    let device = grid.device();
    // zero padding of `pad` pixels on every side
    let pw = width + 2 * pad;
    let padded = if pad == 0 {
        grid.clone()
    } else {
        let side = Tensor::zeros([b, h, height, pad, e], (&device, grid.dtype()));
        let rows = Tensor::cat(vec![side.clone(), grid.clone(), side], 3);
        let top = Tensor::zeros([b, h, pad, pw, e], (&device, grid.dtype()));
        Tensor::cat(vec![top.clone(), rows, top], 2)
    };
    let shifted = |dy: isize, dx: isize| -> Tensor<B, 5> {
        let y0 = (pad as isize + dy) as usize;
        let x0 = (pad as isize + dx) as usize;
        padded.clone().narrow(2, y0, height).narrow(3, x0, width)
    };
    (0..clipping_dist)
        .map(|c| {
            let ring = if c == 0 {
                grid.clone()
            } else {
                let c = c as isize;
                let mut acc: Option<Tensor<B, 5>> = None;
                for dy in -c..=c {
                    let rest = c - dy.abs();
                    let dxs: &[isize] = if rest == 0 { &[0] } else { &[-rest, rest] };
                    for &dx in dxs {
                        let s = shifted(dy, dx);
                        acc = Some(match acc {
                            Some(a) => a + s,
                            None => s,
                        });
                    }
                }
                acc.expect("a ring has points")
            };
            ring.reshape([b, h, n, e])
        })
        .collect()
}

/// The window term of strategy 2: `v [b, h, n, e]` and the weights
/// `s [b, h, n, C + 1]` (token 0 the class token, then the `height x width`
/// pixels; `n = 1 + height * width`) -> `[b, h, n, e]`: zero for the class
/// token, and at pixel `i` the sum over `c < C` of
/// `(s[i, c] - s[i, C]) R_c(v)_i` ([`ring_sums`] over the pixels). On
/// burn-ndarray in `f32` one fused pass
/// (`relperf_favor::host::clipped_window`), else [`window_reference`].
pub fn window<B: Backend>(
    v: Tensor<B, 4>,
    s: Tensor<B, 4>,
    height: usize,
    width: usize,
) -> Tensor<B, 4> {
    match relperf_favor::host::clipped_window(v, s, height, width) {
        Ok(out) => out,
        Err((v, s)) => window_reference(v, s, height, width),
    }
}

/// [`window`] in plain tensor ops on every backend: the ring sums of the
/// pixels, each weighted by `s_c - s_C` and added up, under a zero row for
/// the class token.
pub fn window_reference<B: Backend>(
    v: Tensor<B, 4>,
    s: Tensor<B, 4>,
    height: usize,
    width: usize,
) -> Tensor<B, 4> {
    let [b, h, n, e] = v.dims();
    let c_max = s.dims()[3] - 1;
    let pixels = n - 1;
    let s_pix = s.narrow(2, 1, pixels);
    let far_pix = s_pix.clone().narrow(3, c_max, 1);
    let rings = ring_sums(v.narrow(2, 1, pixels), height, width, c_max);
    let mut window = Tensor::zeros([b, h, pixels, e], (&far_pix.device(), far_pix.dtype()));
    for (c, ring) in rings.into_iter().enumerate() {
        let w = s_pix.clone().narrow(3, c, 1) - far_pix.clone();
        window = window + w * ring;
    }
    let class_row = Tensor::zeros([b, h, 1, e], (&window.device(), window.dtype()));
    Tensor::cat(vec![class_row, window], 2)
}

/// Strategy 2's relative heads: `q [b, hr, n, d]` and `v [b, hr, n, e]`
/// (token 0 the class token, then the `height x width` pixels), their
/// weights `s [b, hr, n, C + 1]` from [`RelativeKeys::weights`] ->
/// `[b, hr, n, e]`, linear in `n`.
pub fn clipped_attention<B: Backend>(
    v: Tensor<B, 4>,
    s: Tensor<B, 4>,
    height: usize,
    width: usize,
) -> Tensor<B, 4> {
    let c_max = s.dims()[3] - 1;
    let v1 = with_ones(v);
    let total = v1.clone().sum_dim(2); // [b, h, 1, e]
    let far = s.clone().narrow(3, c_max, 1); // s_C, [b, h, n, 1]
    let global = far * total; // [b, h, n, e]
    if c_max == 0 {
        return normalise(global);
    }
    normalise(global + window(v1, s, height, width))
}
