//! The exactly relative factor of `ExactRelativePerformer` (ours):
//! content-only random features times a positive periodic function of the
//! displacement, for every draw of the features.
//!
//! # The weight
//! Between tokens `i` and `j` the attention weight is
//!
//! ```text
//! w_ij = phi(q_i) . phi(k_j) * g_i(p_i - p_j),    g_i(D) = g_iy(D_y) g_ix(D_x)
//! g_ia(t) = |P_ia(t)|^2 + eps_a,                  P_ia(t) = sum_{k=0..s} c_iak exp(i k w_a t)
//! ```
//!
//! with `w_a = 2 pi / side_a` (the image's height or width), complex
//! coefficients `c` learned per head and axis (with `content_rel_attn`, plus
//! a linear function of the query token's content, zero at initialisation),
//! `s = pos_scales`, and the margin
//! `eps_a = (softplus(floor_a) + 1e-4) r_0a + 1e-6` relative to
//! `r_0a = sum_k |c_ak|^2`, the mean of `|P_a|^2`. The
//! features `phi` see contents only and `g` sees the displacement only (and
//! the query's own content), so for every draw the weight depends on the two
//! contents and their displacement alone: no random feature ever multiplies
//! a position.
//!
//! # Positive by construction
//! `|P|^2 >= 0` and `eps >= 1e-6`, so `g > 0` for every displacement and
//! every parameter value. By the Fejer-Riesz theorem every non-negative
//! trigonometric polynomial of degree `s` is some `|P|^2`: the factor can be
//! any of them plus `eps`, in particular sharply local. At initialisation all
//! `c_ak` are about 1, so `|P|^2` is the Fejer kernel of order `s + 1`: a
//! bump at `D = 0` of half-width `side / (s + 1)` and peak `(s + 1) r_0`, and
//! `eps` is about `0.7 r_0 / (s + 1)` (the `floor` starts at
//! `softplus^-1(0.7 / (s + 1))`).
//!
//! # Linear in the number of tokens
//! Expanding the square, `|P(t)|^2 = r_0 + 2 sum_{f=1..s} Re(r_f exp(i f w t))`
//! with the autocorrelation `r_f = sum_l c_{l+f} conj(c_l)` ([`autocorrelation`]).
//! Hence `g_ia(p_ia - p_ja) = u_ia . psi_a(p_ja)` with the key basis
//! `psi_a(t) = [1, sin(f w t), cos(f w t) for f = 1..s]` (length `1 + 2s`)
//! and `u_ia = [r_0 + eps, rotate(psi_a(p_ia), 2 Re r, -2 Im r)]` (strategy
//! 1's [`crate::constrained::rotate`]), and `g_i = (u_iy (x) u_ix) . (psi_y
//! (x) psi_x)`. The weights are a linear attention over the product features
//! `phi(q_i) (x) u_i` and `phi(k_j) (x) psi(p_j)`; without `content_rel_attn`
//! the sums over keys are taken one axis at a time ([`separable_attention`]),
//! `O(n m e (1 + 2s))`, and no tensor is larger than `n max(p, q) m` per head.
//!
//! The class token has zero position features (`psi = [1, 0, ...]` per
//! axis): it attends to and is attended by every token with the constant
//! `prod_a (r_0a + eps_a)`, the mean of `g`. The harmonics are multiples of
//! `2 pi / side`: positions live on a torus of the image's size, so the
//! model is exactly invariant to cyclic shifts, hence to every shift that
//! moves only empty rows or columns across the border.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{softmax, softplus};
use relperf_favor::FeatureMap;
use relperf_favor::attention::{normalise, with_ones};

use crate::constrained::rotate;
use crate::grid::{AXES, with_class_token};

/// `eps_a >= RELATIVE_MARGIN r_0a + ABSOLUTE_MARGIN`.
pub const RELATIVE_MARGIN: f64 = 1e-4;
/// See [`RELATIVE_MARGIN`].
pub const ABSOLUTE_MARGIN: f64 = 1e-6;

/// `[sin, cos](2 pi f t / side)` for `f = 1..harmonics` along one axis:
/// `[side, harmonics, 2]` values (computed in `f64`).
fn axis_harmonics(side: usize, harmonics: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(side * harmonics * 2);
    for t in 0..side {
        for f in 1..=harmonics {
            let angle = std::f64::consts::TAU * (t as f64 / side as f64) * f as f64;
            v.extend([angle.sin(), angle.cos()]);
        }
    }
    v
}

/// Position features of the pixels `[height * width, 2, s, 2]`:
/// `[sin, cos](2 pi f p_a / side_a)`, `f = 1..s`, row-major (computed in
/// `f64`, stored in the device's float type).
pub fn periodic_basis<B: Backend>(
    height: usize,
    width: usize,
    harmonics: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (hy, hx) = (
        axis_harmonics(height, harmonics),
        axis_harmonics(width, harmonics),
    );
    let per = harmonics * 2;
    let mut v = Vec::with_capacity(height * width * 2 * per);
    for y in 0..height {
        for x in 0..width {
            v.extend_from_slice(&hy[y * per..(y + 1) * per]);
            v.extend_from_slice(&hx[x * per..(x + 1) * per]);
        }
    }
    Tensor::from_data(
        TensorData::new(v, [height * width, AXES, harmonics, 2]),
        device,
    )
}

/// The key basis of one axis, `psi(t) = [1, sin(f w t), cos(f w t)...]`:
/// `[side, 1 + 2s]`.
pub fn axis_basis<B: Backend>(side: usize, harmonics: usize, device: &B::Device) -> Tensor<B, 2> {
    let h = axis_harmonics(side, harmonics);
    let per = harmonics * 2;
    let v: Vec<f64> = (0..side)
        .flat_map(|t| std::iter::once(1.0).chain(h[t * per..(t + 1) * per].iter().copied()))
        .collect();
    Tensor::from_data(TensorData::new(v, [side, 1 + per]), device)
}

/// The per-axis key basis of all tokens, class token first:
/// `[n, 2, 1 + 2s]` (the class token's is `[1, 0, ...]` on both axes).
pub fn token_basis<B: Backend>(
    height: usize,
    width: usize,
    harmonics: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let basis = with_class_token(periodic_basis::<B>(height, width, harmonics, device)); // [n, a, s, 2]
    let n = basis.dims()[0];
    let ones = Tensor::ones([n, AXES, 1], device);
    Tensor::cat(vec![ones, basis.reshape([n, AXES, harmonics * 2])], 2)
}

/// `c [..., k, 2]` complex coefficients `(re, im)` along the last two dims
/// of a rank-6 tensor -> `r_0 [..., 1, 1]` and `r_f [..., k - 1, 2]` for
/// `f = 1..k-1`, with `r_f = sum_l c_{l+f} conj(c_l)`, so that
/// `|sum_k c_k e^{ikx}|^2 = r_0 + 2 sum_f Re(r_f e^{ifx})`.
pub fn autocorrelation<B: Backend>(c: Tensor<B, 6>) -> (Tensor<B, 6>, Tensor<B, 6>) {
    let k = c.dims()[4];
    let cr = c.clone().narrow(5, 0, 1);
    let ci = c.narrow(5, 1, 1);
    let r0 = (cr.clone().powi_scalar(2) + ci.clone().powi_scalar(2)).sum_dim(4);
    let mut rs = Vec::with_capacity(k.saturating_sub(1));
    for f in 1..k {
        let (ar, ai) = (
            cr.clone().narrow(4, f, k - f),
            ci.clone().narrow(4, f, k - f),
        );
        let (br, bi) = (
            cr.clone().narrow(4, 0, k - f),
            ci.clone().narrow(4, 0, k - f),
        );
        let re = (ar.clone() * br.clone() + ai.clone() * bi.clone()).sum_dim(4);
        let im = (ai * br - ar * bi).sum_dim(4);
        rs.push(Tensor::cat(vec![re, im], 5));
    }
    (r0, Tensor::cat(rs, 4))
}

/// Configuration of [`PeriodicFactor`].
#[derive(Config, Debug)]
pub struct PeriodicFactorConfig {
    /// Model width (input of the content-dependent coefficients).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Harmonics per axis `s` (`pos_scales`).
    pub harmonics: usize,
    /// Add coefficients predicted from the query token's content (a linear
    /// layer, zero at initialisation).
    #[config(default = false)]
    pub content_rel_attn: bool,
}

impl PeriodicFactorConfig {
    /// Coefficients `1 + 0.1 N(0, 1)` (real parts) and `0.1 N(0, 1)`
    /// (imaginary parts), margins `softplus^-1(0.7 / (s + 1))`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PeriodicFactor<B> {
        let k = self.harmonics + 1;
        let shape = [self.heads, AXES, k, 2];
        let base: Vec<f32> = (0..self.heads * AXES * k)
            .flat_map(|_| [1.0f32, 0.0])
            .collect();
        let base = Tensor::<B, 4>::from_data(TensorData::new(base, shape), device);
        let noise = Tensor::random(shape, Distribution::Normal(0.0, 1.0), device).mul_scalar(0.1);
        let floor = (0.7 / k as f64).exp_m1().ln();
        // zero at initialisation: training starts from the content-free factor
        let to_coefficients = self.content_rel_attn.then(|| {
            LinearConfig::new(self.dim, self.heads * AXES * k * 2)
                .with_initializer(Initializer::Zeros)
                .init(device)
        });
        PeriodicFactor {
            coefficients: Param::from_tensor(base + noise),
            floor: Param::from_tensor(Tensor::full([self.heads, AXES], floor, device)),
            to_coefficients,
            heads: self.heads,
            harmonics: self.harmonics,
        }
    }
}

/// The learned part of one layer's periodic relative factor.
#[derive(Module, Debug)]
pub struct PeriodicFactor<B: Backend> {
    /// `[h, 2 axes (y, x), s + 1, 2 (re, im)]`.
    pub coefficients: Param<Tensor<B, 4>>,
    /// `[h, 2]`: `softplus(floor)` sets the margin `eps`.
    pub floor: Param<Tensor<B, 2>>,
    /// `Linear(dim, h * 2 * (s + 1) * 2)`, layout `(h a k t)`, with
    /// `content_rel_attn`.
    pub to_coefficients: Option<Linear<B>>,
    heads: usize,
    harmonics: usize,
}

impl<B: Backend> PeriodicFactor<B> {
    /// Harmonics per axis.
    pub fn harmonics(&self) -> usize {
        self.harmonics
    }

    /// Whether the coefficients depend on the query's content.
    pub fn is_content_dependent(&self) -> bool {
        self.to_coefficients.is_some()
    }

    /// The query vectors `u [b or 1, h, n, 2, 1 + 2s]` with
    /// `u_ia . psi_a(p_ja) = g_ia(p_ia - p_ja)`, for the normed layer input
    /// `x [b, n, dim]` of an image of `height x width` (token 0 the class
    /// token).
    ///
    /// Without content-dependent coefficients the vectors are shared by the
    /// batch, and on burn-ndarray in `f32` one fused op
    /// (`relperf_favor::host::rotate_with_lead`) builds them, forward and
    /// backward; [`PeriodicFactor::query_vectors_reference`] is the plain ops
    /// it replaces.
    pub fn query_vectors(&self, x: Tensor<B, 3>, height: usize, width: usize) -> Tensor<B, 5> {
        self.query_vectors_with(x, height, width, true)
    }

    /// [`PeriodicFactor::query_vectors`] in plain tensor ops on every
    /// backend (the reference of its fused path).
    pub fn query_vectors_reference(
        &self,
        x: Tensor<B, 3>,
        height: usize,
        width: usize,
    ) -> Tensor<B, 5> {
        self.query_vectors_with(x, height, width, false)
    }

    fn query_vectors_with(
        &self,
        x: Tensor<B, 3>,
        height: usize,
        width: usize,
        fused: bool,
    ) -> Tensor<B, 5> {
        let device = self.coefficients.device();
        let (h, s) = (self.heads, self.harmonics);
        let k = s + 1;
        let basis = with_class_token(periodic_basis::<B>(height, width, s, &device)); // [n, a, s, 2]
        let n = basis.dims()[0];
        let mut c = self.coefficients.val().reshape([1, h, 1, AXES, k, 2]);
        if let Some(linear) = &self.to_coefficients {
            let b = x.dims()[0];
            let extra = linear
                .forward(x)
                .reshape([b, n, h, AXES, k, 2])
                .permute([0, 2, 1, 3, 4, 5]);
            c = c + extra; // [b, h, n, a, k, 2]
        }
        let [b, _, nc, _, _, _] = c.dims();
        let (r0, r) = autocorrelation(c); // [b, h, nc, a, 1, 1], [b, h, nc, a, s, 2]
        let margin = softplus(self.floor.val(), 1.0)
            .add_scalar(RELATIVE_MARGIN)
            .reshape([1, h, 1, AXES, 1, 1]);
        let a0 = (r0.clone() + margin * r0).add_scalar(ABSOLUTE_MARGIN); // r0 + eps
        let alpha = r.clone().narrow(5, 0, 1).mul_scalar(2.0); // [b, h, nc, a, s, 1]
        let beta = r.narrow(5, 1, 1).mul_scalar(-2.0);
        let (basis, alpha, beta) = if fused && b == 1 && nc == 1 {
            // shared by the batch and the tokens: one pass on the CPU
            // backend (the plain ops below otherwise)
            match relperf_favor::host::rotate_with_lead(
                basis,
                alpha.reshape([h, AXES, s]),
                beta.reshape([h, AXES, s]),
                a0.clone().reshape([h, AXES]),
            ) {
                Ok(u) => return relperf_favor::host::reshape(u, [1, h, n, AXES, 1 + 2 * s]),
                Err((basis, alpha, beta, _)) => (
                    basis,
                    alpha.reshape([1, h, 1, AXES, s, 1]),
                    beta.reshape([1, h, 1, AXES, s, 1]),
                ),
            }
        } else {
            (basis, alpha, beta)
        };
        let rotated = rotate(
            basis
                .reshape([1, 1, n, AXES, s, 2])
                .expand([b, h, n, AXES, s, 2]),
            alpha.expand([b, h, n, AXES, s, 1]),
            beta.expand([b, h, n, AXES, s, 1]),
        )
        .reshape([b, h, n, AXES, 2 * s]);
        let a0 = a0.reshape([b, h, nc, AXES, 1]).expand([b, h, n, AXES, 1]);
        Tensor::cat(vec![a0, rotated], 4)
    }
}

/// `[..., 2, p]` -> `[..., p * p]`: the product over the two axes, y major.
pub fn outer_axes<B: Backend>(per_axis: Tensor<B, 5>) -> Tensor<B, 4> {
    let [b, h, n, _, p] = per_axis.dims();
    let y = per_axis.clone().narrow(3, 0, 1).reshape([b, h, n, p, 1]);
    let x = per_axis.narrow(3, 1, 1).reshape([b, h, n, 1, p]);
    (y * x).reshape([b, h, n, p * p])
}

/// Exactly relative attention, the exact-softmax variant (`--no_projection`,
/// quadratic): `softmax(q k^T / sqrt(d) + log(u psi^T)) v` with `u [b|1, h,
/// n, P]`, `psi [n, P]` the product bases (`g_ij = u_i . psi_j > 0`).
pub fn exact_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    u: Tensor<B, 4>,
    psi: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let [b, h, n, d] = q.dims();
    let g = u.matmul(psi.transpose().unsqueeze::<4>()); // [b|1, h, n, n]
    let g = g.expand([b, h, n, n]);
    let logits = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((d as f64).powf(-0.5))
        + g.log();
    softmax(logits, 3).matmul(v)
}

/// Exactly relative FAVOR+ attention for any `u [b|1, h, n, P]` (the path
/// with `content_rel_attn`): the key-value products `phi(k_j) (x) [v_j, 1]`
/// summed against `psi [n, P]`, read out with `u` and `phi(q)`;
/// `O(n m e P)`.
pub fn generic_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    u: Tensor<B, 4>,
    psi: Tensor<B, 2>,
    map: &FeatureMap<B>,
) -> Tensor<B, 4> {
    let qf = map.features(q, true); // [b, h, n, m]
    let kf = map.features(k, false);
    let v1 = with_ones(v); // [b, h, n, e]
    let [b, h, n, m] = kf.dims();
    let e = v1.dims()[3];
    let p = psi.dims()[1];
    let kv = (kf.reshape([b, h, n, m, 1]) * v1.reshape([b, h, n, 1, e])).reshape([b, h, n, m * e]);
    let context = psi.transpose().unsqueeze::<4>().matmul(kv); // [b, h, P, m e]
    let u = u.expand([b, h, n, p]);
    let y = u.matmul(context).reshape([b, h, n, m, e]);
    let out = (qf.reshape([b, h, n, m, 1]) * y)
        .sum_dim(3)
        .reshape([b, h, n, e]);
    normalise(out)
}

/// Exactly relative FAVOR+ attention for `u` shared by the batch (no
/// `content_rel_attn`), summing one axis at a time:
/// `q, k, v [b, h, n, d]` (token 0 the class token, then the pixels
/// row-major), `u [h, n, 2, p]` -> `[b, h, n, d]`.
///
/// The sums are [`separable_product_reference`]'s; on burn-ndarray in `f32`
/// the fused CPU kernel `relperf_favor::host::separable_periodic` computes
/// them, forward and backward, one `(sample, head)` slice per task.
#[allow(clippy::too_many_arguments)]
pub fn separable_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    u: Tensor<B, 4>,
    map: &FeatureMap<B>,
    height: usize,
    width: usize,
    harmonics: usize,
) -> Tensor<B, 4> {
    let device = q.device();
    let qf = map.features(q, true); // [b, h, n, m]
    let kf = map.features(k, false);
    let v1 = with_ones(v);
    let [_, h, n, _] = kf.dims();
    assert_eq!(
        n,
        1 + height * width,
        "tokens must be the class token and the height x width pixels"
    );
    let psi_y = axis_basis::<B>(height, harmonics, &device); // [y, p]
    let psi_x = axis_basis::<B>(width, harmonics, &device); // [x, q]
    let p = psi_y.dims()[1];
    let u = relperf_favor::host::reshape(u, [h, n, AXES, p]); // no copy on the CPU
    let out = match relperf_favor::host::separable_periodic((qf, kf, v1, u, psi_y, psi_x)) {
        Ok(out) => out,
        Err((qf, kf, v1, u, psi_y, psi_x)) => {
            separable_product_reference(qf, kf, v1, u, psi_y, psi_x)
        }
    };
    normalise(out)
}

/// The unnormalised sums of [`separable_attention`] in plain tensor ops
/// (every backend; the reference of the fused CPU kernel):
/// `phi(Q), phi(K) [b, h, n, m]`, `V1 = [V, 1] [b, h, n, e]`,
/// `u [h, n, 2, p]`, the axis bases `psi_y [height, p]`, `psi_x [width, p]`
/// -> `[b, h, n, e]`.
///
/// Keys: `S[p, q] = sum_yx psi_y[y, p] psi_x[x, q] phi(k_yx) (x) v1_yx`, summed
/// over `x` by one product of `psi_x (x) phi(k)` (`n x q m`) with `v1`, then
/// over `y`. Queries: `R[p, x] = sum_q u_x[x, q] S[p, q]`, then `out_yx =
/// sum_{p, m} (u_y[y, p] phi(q_yx)_m) R[p, x, m, :]`, one product per column.
pub fn separable_product_reference<B: Backend>(
    qf: Tensor<B, 4>,
    kf: Tensor<B, 4>,
    v1: Tensor<B, 4>,
    u: Tensor<B, 4>,
    psi_y: Tensor<B, 2>,
    psi_x: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let [b, h, n, m] = kf.dims();
    let e = v1.dims()[3];
    let (hh, ww) = (psi_y.dims()[0], psi_x.dims()[0]);
    assert_eq!(
        n,
        1 + hh * ww,
        "tokens must be the class token and the height x width pixels"
    );
    let p = psi_y.dims()[1];
    let u_pix = u
        .clone()
        .narrow(1, 1, hh * ww)
        .reshape([h, hh, ww, AXES, p]);
    let u_y = u_pix
        .clone()
        .narrow(2, 0, 1)
        .narrow(3, 0, 1)
        .reshape([h, hh, p]); // rows: first pixel of each row
    let u_x = u_pix.narrow(1, 0, 1).narrow(3, 1, 1).reshape([h, ww, p]); // columns: the first row's pixels

    // keys: [b, h, y, x, q, m] -> [b, h, y, q m, x] @ [b, h, y, x, e] -> [b, h, y, q m, e]
    let kpix = kf
        .clone()
        .narrow(2, 1, hh * ww)
        .reshape([b, h, hh, ww, 1, m]);
    let keys = (kpix * psi_x.clone().reshape([1, 1, 1, ww, p, 1]))
        .reshape([b, h, hh, ww, p * m])
        .swap_dims(3, 4);
    let rows_summed = keys.matmul(v1.clone().narrow(2, 1, hh * ww).reshape([b, h, hh, ww, e])); // [b, h, y, q m, e]
    let context = psi_y
        .transpose()
        .unsqueeze::<4>()
        .matmul(rows_summed.reshape([b, h, hh, p * m * e])); // [b, h, p, q m e]
    let context = context.reshape([b, h, p, p, m * e]);
    // the class token's psi is e_0 (x) e_0: its key-value adds to the (0, 0) entry
    let class_kv = (kf.narrow(2, 0, 1).reshape([b, h, m, 1])
        * v1.narrow(2, 0, 1).reshape([b, h, 1, e]))
    .reshape([b, h, 1, 1, m * e]);
    let corner = context.clone().narrow(2, 0, 1).narrow(3, 0, 1) + class_kv;
    let context = context.slice_assign([0..b, 0..h, 0..1, 0..1, 0..m * e], corner);

    // queries: per column x, R[p, x] = sum_q u_x[x, q] S[p, q]
    let per_column = u_x.reshape([1, h, 1, ww, p]).matmul(context.clone()); // [b, h, p, x, m e]
    let per_column = per_column
        .reshape([b, h, p, ww, m, e])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b, h, ww, p * m, e]);
    let qpix = qf
        .clone()
        .narrow(2, 1, hh * ww)
        .reshape([b, h, hh, ww, m])
        .swap_dims(2, 3); // [b, h, x, y, m]
    let queries = (qpix.reshape([b, h, ww, hh, 1, m]) * u_y.reshape([1, h, 1, hh, p, 1]))
        .reshape([b, h, ww, hh, p * m]);
    let pixels_out = queries
        .matmul(per_column)
        .swap_dims(2, 3)
        .reshape([b, h, hh * ww, e]); // [b, h, y x, e]

    // the class token's query: u_0 = [a0, 0...] per axis, so only S[0, 0]
    let u0 = u.narrow(1, 0, 1); // [h, 1, a, p]
    let a0 = (u0.clone().narrow(2, 0, 1).narrow(3, 0, 1) * u0.narrow(2, 1, 1).narrow(3, 0, 1))
        .reshape([1, h, 1, 1]);
    let class_context = context
        .narrow(2, 0, 1)
        .narrow(3, 0, 1)
        .reshape([b, h, m, e])
        * a0;
    let class_out = (qf.narrow(2, 0, 1).reshape([b, h, m, 1]) * class_context).sum_dim(2); // [b, h, 1, e]
    Tensor::cat(vec![class_out, pixels_out], 2)
}
