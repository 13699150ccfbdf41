//! The positional strategies against quadratic references written here from
//! their definitions, in f64 (outputs and gradients), and the relative
//! properties each promises.

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::prelude::*;
use relperf_favor::draw::Gaussian;
use relperf_favor::{FeatureMap, FeatureMapConfig};
use relperf_positional::clipped::{RelativeKeysConfig, clipped_attention, ring_sums};
use relperf_positional::constrained::{ConstrainedProjectionConfig, rotate, widen};
use relperf_positional::grid::with_class_token;
use relperf_positional::periodic::{
    PeriodicFactor, PeriodicFactorConfig, exact_attention, generic_attention, outer_axes,
    separable_attention, token_basis,
};
use relperf_positional::sinusoid::{AbsoluteSinusoidConfig, GridSinusoidConfig};

type B = Autodiff<NdArray<f64>>;
type I = NdArray<f64>;

fn randn<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<Bk, D> {
    let mut g = Gaussian::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_data(
        TensorData::new(
            (0..n).map(|_| g.sample() * scale).collect::<Vec<_>>(),
            shape,
        ),
        &Default::default(),
    )
}

fn vec_of<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

fn rel_err<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f64 {
    let scale = b
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f64>()
        .max(1e-300);
    (a - b).abs().max().into_scalar().elem::<f64>() / scale
}

/// `(y, x)` of token `i` (class token: `None`).
fn pos(i: usize, w: usize) -> Option<(usize, usize)> {
    (i > 0).then(|| ((i - 1) / w, (i - 1) % w))
}

/// A periodic factor whose coefficients are far from their initial values.
fn random_factor<Bk: Backend>(heads: usize, s: usize, seed: u64) -> PeriodicFactor<Bk> {
    let mut f = PeriodicFactorConfig::new(16, heads, s).init::<Bk>(&Default::default());
    f.coefficients = Param::from_tensor(randn([heads, 2, s + 1, 2], seed, 1.0));
    f.floor = Param::from_tensor(randn([heads, 2], seed + 1, 1.0));
    f
}

/// `g_i(p_i - p_j)` for head `hd` from the definition: per axis
/// `|sum_k c_k exp(i k w t)|^2 + eps`, `eps = (softplus(floor) + 1e-4) r0 + 1e-6`;
/// the class token pairs get `prod_a (r0_a + eps_a)`.
#[allow(clippy::too_many_arguments)]
fn g_naive(
    c: &[f64],
    floor: &[f64],
    hd: usize,
    s: usize,
    i: usize,
    j: usize,
    h: usize,
    w: usize,
) -> f64 {
    let k = s + 1;
    let mut g = 1.0;
    for a in 0..2 {
        let coef = |kk: usize, t: usize| c[((hd * 2 + a) * k + kk) * 2 + t];
        let r0: f64 = (0..k)
            .map(|kk| coef(kk, 0).powi(2) + coef(kk, 1).powi(2))
            .sum();
        let fl = floor[hd * 2 + a];
        let eps = ((1.0 + fl.exp()).ln() + 1e-4) * r0 + 1e-6;
        let side = [h, w][a] as f64;
        let value = match (pos(i, w), pos(j, w)) {
            (Some(pi), Some(pj)) => {
                let t = [pi.0 as f64 - pj.0 as f64, pi.1 as f64 - pj.1 as f64][a];
                let omega = std::f64::consts::TAU / side;
                let (mut re, mut im) = (0.0, 0.0);
                for kk in 0..k {
                    let ang = kk as f64 * omega * t;
                    re += coef(kk, 0) * ang.cos() - coef(kk, 1) * ang.sin();
                    im += coef(kk, 0) * ang.sin() + coef(kk, 1) * ang.cos();
                }
                re * re + im * im + eps
            }
            _ => r0 + eps,
        };
        g *= value;
    }
    g
}

#[test]
fn the_factorised_periodic_factor_is_the_definition() {
    let (heads, s, h, w) = (3, 3, 4, 5);
    let f = random_factor::<I>(heads, s, 5);
    let x = Tensor::zeros([1, 1 + h * w, 16], &Default::default());
    let u = outer_axes(f.query_vectors(x, h, w)); // [1, h, n, P]
    let n = 1 + h * w;
    let p = 1 + 2 * s;
    let psi = outer_axes(token_basis::<I>(h, w, s, &Default::default()).reshape([1, 1, n, 2, p]))
        .reshape([n, p * p]);
    let g = vec_of(u.matmul(psi.transpose().unsqueeze::<4>()));
    let (c, fl) = (vec_of(f.coefficients.val()), vec_of(f.floor.val()));
    let mut worst: f64 = 0.0;
    for hd in 0..heads {
        for i in 0..n {
            for j in 0..n {
                let want = g_naive(&c, &fl, hd, s, i, j, h, w);
                let got = g[(hd * n + i) * n + j];
                assert!(got > 0.0);
                worst = worst.max((got - want).abs() / want);
            }
        }
    }
    assert!(worst < 1e-12, "largest relative error of g: {worst:e}");
}

/// Quadratic reference of the exactly relative FAVOR+ attention: the n x n
/// weights `phi(q_i) . phi(k_j) g_ij` made explicit.
fn periodic_naive<Bk: Backend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    u: Tensor<Bk, 4>,
    psi: Tensor<Bk, 2>,
    map: &FeatureMap<Bk>,
) -> Tensor<Bk, 4> {
    let [b, h, n, _] = q.dims();
    let g = u
        .matmul(psi.transpose().unsqueeze::<4>())
        .expand([b, h, n, n]);
    let wts = map
        .features(q, true)
        .matmul(map.features(k, false).swap_dims(2, 3))
        * g;
    let rows = wts.clone().sum_dim(3);
    wts.matmul(v) / rows
}

struct Grads {
    out: Tensor<I, 4>,
    grads: Vec<Tensor<I, 4>>,
}

/// Output and the gradients of `sum(out * G)` with respect to q, k, v.
fn with_grads(
    shape: [usize; 4],
    f: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
) -> Grads {
    let [b, h, n, d] = shape;
    let q = randn::<B, 4>(shape, 100, 0.7).require_grad();
    let k = randn::<B, 4>(shape, 101, 0.7).require_grad();
    let v = randn::<B, 4>([b, h, n, d], 102, 1.0).require_grad();
    let out = f(q.clone(), k.clone(), v.clone());
    let g = randn::<B, 4>(out.dims(), 103, 1.0);
    let grads = (out.clone() * g).sum().backward();
    // (a path that ignores an input gives it no gradient: zero)
    let grad = |t: &Tensor<B, 4>| {
        t.grad(&grads)
            .unwrap_or_else(|| t.clone().inner().zeros_like())
    };
    Grads {
        out: out.inner(),
        grads: vec![grad(&q), grad(&k), grad(&v)],
    }
}

fn assert_same(a: Grads, b: Grads, tol: f64, what: &str) {
    let mut errs = vec![rel_err(a.out, b.out)];
    errs.extend(a.grads.into_iter().zip(b.grads).map(|(x, y)| rel_err(x, y)));
    println!("{what}: relative max errors of output, dq, dk, dv: {errs:?}");
    assert!(
        errs.iter().all(|&e| e < tol),
        "{what}: output, dq, dk, dv relative errors {errs:?}"
    );
}

#[test]
fn separable_and_generic_periodic_attention_equal_the_quadratic_reference() {
    let (heads, s, h, w, d) = (2, 2, 3, 5, 4);
    let n = 1 + h * w;
    let f = random_factor::<B>(heads, s, 7);
    let map = FeatureMapConfig::new(d).init::<B>(3, &Default::default());
    let x = Tensor::zeros([1, n, 16], &Default::default());
    let u5 = f.query_vectors(x, h, w); // [1, h, n, 2, p]
    let p = 1 + 2 * s;
    let u = outer_axes(u5.clone());
    let psi = outer_axes(token_basis::<B>(h, w, s, &Default::default()).reshape([1, 1, n, 2, p]))
        .reshape([n, p * p]);
    let shape = [2, heads, n, d];
    let naive = with_grads(shape, |q, k, v| {
        periodic_naive(q, k, v, u.clone(), psi.clone(), &map)
    });
    let sep = with_grads(shape, |q, k, v| {
        separable_attention(
            q,
            k,
            v,
            u5.clone()
                .reshape([heads, n, 2 * p])
                .reshape([1, heads, n, 2 * p]),
            &map,
            h,
            w,
            s,
        )
    });
    let generic = with_grads(shape, |q, k, v| {
        generic_attention(q, k, v, u.clone(), psi.clone(), &map)
    });
    let naive2 = with_grads(shape, |q, k, v| {
        periodic_naive(q, k, v, u.clone(), psi.clone(), &map)
    });
    assert_same(sep, naive, 1e-11, "separable vs quadratic");
    assert_same(generic, naive2, 1e-11, "generic vs quadratic");
}

#[test]
fn content_dependent_periodic_attention_equals_the_quadratic_reference() {
    let (heads, s, h, w, d, dim) = (2, 2, 4, 3, 4, 16);
    let n = 1 + h * w;
    let mut f = PeriodicFactorConfig::new(dim, heads, s)
        .with_content_rel_attn(true)
        .init::<B>(&Default::default());
    // non-zero content weights (they start at zero)
    let lin = f.to_coefficients.take().unwrap();
    f.to_coefficients = Some(burn::nn::Linear {
        weight: Param::from_tensor(randn(lin.weight.dims(), 9, 0.2)),
        bias: lin.bias,
    });
    let map = FeatureMapConfig::new(d).init::<B>(4, &Default::default());
    let x = randn::<B, 3>([2, n, dim], 10, 1.0);
    let u = outer_axes(f.query_vectors(x, h, w)); // [2, h, n, P]
    let p = 1 + 2 * s;
    let psi = outer_axes(token_basis::<B>(h, w, s, &Default::default()).reshape([1, 1, n, 2, p]))
        .reshape([n, p * p]);
    let shape = [2, heads, n, d];
    let generic = with_grads(shape, |q, k, v| {
        generic_attention(q, k, v, u.clone(), psi.clone(), &map)
    });
    let naive = with_grads(shape, |q, k, v| {
        periodic_naive(q, k, v, u.clone(), psi.clone(), &map)
    });
    assert_same(
        generic,
        naive,
        1e-11,
        "content-dependent generic vs quadratic",
    );
}

#[test]
fn exact_periodic_attention_is_softmax_times_g() {
    let (heads, s, h, w, d) = (2, 2, 3, 3, 4);
    let n = 1 + h * w;
    let f = random_factor::<I>(heads, s, 11);
    let u = outer_axes(f.query_vectors(Tensor::zeros([1, n, 16], &Default::default()), h, w));
    let p = 1 + 2 * s;
    let psi = outer_axes(token_basis::<I>(h, w, s, &Default::default()).reshape([1, 1, n, 2, p]))
        .reshape([n, p * p]);
    let (q, k, v) = (
        randn::<I, 4>([1, heads, n, d], 1, 1.0),
        randn::<I, 4>([1, heads, n, d], 2, 1.0),
        randn::<I, 4>([1, heads, n, d], 3, 1.0),
    );
    let g = u.clone().matmul(psi.clone().transpose().unsqueeze::<4>());
    let wts = q
        .clone()
        .matmul(k.clone().swap_dims(2, 3))
        .div_scalar(2.0)
        .exp()
        * g;
    let reference = wts.clone().matmul(v.clone()) / wts.sum_dim(3);
    let err = rel_err(exact_attention(q, k, v, u, psi), reference);
    assert!(err < 1e-12, "relative max error {err:e}");
}

/// Rolls the pixel tokens of `[b, h, n, d]` by `(dy, dx)` on the torus.
fn roll_tokens<Bk: Backend>(
    t: Tensor<Bk, 4>,
    h: usize,
    w: usize,
    dy: usize,
    dx: usize,
) -> Tensor<Bk, 4> {
    let [b, hd, n, d] = t.dims();
    let mut index = vec![0i64];
    for y in 0..h {
        for x in 0..w {
            // the token that lands on (y, x) comes from (y - dy, x - dx)
            let (sy, sx) = ((y + h - dy % h) % h, (x + w - dx % w) % w);
            index.push((1 + sy * w + sx) as i64);
        }
    }
    let idx = Tensor::<Bk, 1, Int>::from_data(TensorData::new(index, [n]), &t.device());
    let _ = (b, hd, d);
    t.select(2, idx)
}

/// For every draw of the features, rolling the pixels moves the pixel
/// outputs with them and leaves the class token's output as it was.
#[test]
fn periodic_attention_is_invariant_to_cyclic_shifts_for_every_draw() {
    let (heads, s, h, w, d) = (2, 3, 5, 4, 6);
    let n = 1 + h * w;
    let f = random_factor::<I>(heads, s, 13);
    let u5 = f.query_vectors(Tensor::zeros([1, n, 16], &Default::default()), h, w);
    let p = 1 + 2 * s;
    let u = u5.reshape([1, heads, n, 2 * p]);
    let (q, k, v) = (
        randn::<I, 4>([2, heads, n, d], 21, 1.0),
        randn::<I, 4>([2, heads, n, d], 22, 1.0),
        randn::<I, 4>([2, heads, n, d], 23, 1.0),
    );
    for seed in [1u64, 2, 3] {
        let map = FeatureMapConfig::new(d).init::<I>(seed, &Default::default());
        let out = separable_attention(q.clone(), k.clone(), v.clone(), u.clone(), &map, h, w, s);
        for (dy, dx) in [(1, 0), (0, 1), (3, 2)] {
            let r = |t: Tensor<I, 4>| roll_tokens(t, h, w, dy, dx);
            let rolled = separable_attention(
                r(q.clone()),
                r(k.clone()),
                r(v.clone()),
                u.clone(),
                &map,
                h,
                w,
                s,
            );
            let err = rel_err(rolled, r(out.clone()));
            assert!(
                err < 1e-12,
                "draw {seed}, shift ({dy}, {dx}): relative change {err:e}"
            );
        }
    }
}

/// Quadratic reference of strategy 2's relative heads: the clipped distance
/// of every pair made explicit.
fn clipped_naive<Bk: Backend>(v: Tensor<Bk, 4>, s: Tensor<Bk, 4>, w: usize) -> Tensor<Bk, 4> {
    let [b, hd, n, _] = v.dims();
    let c_max = s.dims()[3] - 1;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let c = match (pos(i, w), pos(j, w)) {
                (Some(a), Some(bb)) => (a.0.abs_diff(bb.0) + a.1.abs_diff(bb.1)).min(c_max),
                _ => c_max,
            };
            idx.push(c as i64);
        }
    }
    let idx = Tensor::<Bk, 1, Int>::from_data(TensorData::new(idx, [n * n]), &v.device())
        .reshape([1, 1, n, n])
        .expand([b, hd, n, n]);
    let wts = s.gather(3, idx); // [b, h, n, n]: s_{c(i, j)}(i)
    let rows = wts.clone().sum_dim(3);
    wts.matmul(v) / rows
}

#[test]
fn clipped_attention_equals_the_quadratic_reference() {
    for (h, w, c) in [(4, 5, 3), (3, 3, 8)] {
        let (heads, d) = (2, 4);
        let n = 1 + h * w;
        let keys = RelativeKeysConfig::new(2 * heads, d, c).init::<B>(&Default::default());
        let map = FeatureMapConfig::new(d).init::<B>(6, &Default::default());
        for exact in [false, true] {
            let m = (!exact).then_some(&map);
            let shape = [2, heads, n, d];
            let fast = with_grads(shape, |q, _k, v| {
                clipped_attention(v, keys.weights(q, m), h, w)
            });
            let naive = with_grads(shape, |q, _k, v| clipped_naive(v, keys.weights(q, m), w));
            assert_same(
                fast,
                naive,
                1e-11,
                &format!("clipped {h}x{w}, C={c}, exact={exact}"),
            );
        }
    }
}

#[test]
fn ring_sums_count_the_in_image_pixels_at_each_distance() {
    let (h, w) = (4, 6);
    let ones = Tensor::<I, 4>::ones([1, 1, h * w, 1], &Default::default());
    let rings = ring_sums(ones, h, w, 4);
    for (c, ring) in rings.into_iter().enumerate() {
        let got = vec_of(ring);
        for y in 0..h {
            for x in 0..w {
                let want = (0..h)
                    .flat_map(|yy| (0..w).map(move |xx| (yy, xx)))
                    .filter(|&(yy, xx)| yy.abs_diff(y) + xx.abs_diff(x) == c)
                    .count();
                assert_eq!(got[y * w + x], want as f64, "c={c} at ({y}, {x})");
            }
        }
    }
}

/// Strategy 1: `rotate(f_i) . f_j = alpha cos(w (p_i - p_j)) + beta sin(w (p_i - p_j))`.
#[test]
fn rotated_features_give_relative_logits() {
    let (h, w, s) = (3, 4, 2);
    let feats = GridSinusoidConfig::new(s)
        .init::<I>(&Default::default())
        .features(h, w); // [n, 2, s, 2]
    let n = h * w;
    let alpha = randn::<I, 4>([1, 2, s, 1], 31, 1.0);
    let beta = randn::<I, 4>([1, 2, s, 1], 32, 1.0);
    let q = rotate(
        feats.clone(),
        alpha.clone().expand([n, 2, s, 1]),
        beta.clone().expand([n, 2, s, 1]),
    )
    .reshape([n, 4 * s]);
    let logits = vec_of(q.matmul(feats.reshape([n, 4 * s]).transpose()));
    let (a, bt) = (vec_of(alpha), vec_of(beta));
    let freqs = relperf_positional::grid::inverse_timescales(s, 64.0);
    for i in 0..n {
        for j in 0..n {
            let (pi, pj) = ((i / w, i % w), (j / w, j % w));
            let disp = [pi.0 as f64 - pj.0 as f64, pi.1 as f64 - pj.1 as f64];
            let want: f64 = (0..2)
                .flat_map(|ax| (0..s).map(move |sc| (ax, sc)))
                .map(|(ax, sc)| {
                    let t = freqs[sc] as f64 * disp[ax];
                    a[ax * s + sc] * t.cos() + bt[ax * s + sc] * t.sin()
                })
                .sum();
            assert!(
                (logits[i * n + j] - want).abs() < 1e-6,
                "({i}, {j}): {} vs {want}",
                logits[i * n + j]
            );
        }
    }
}

/// Strategy 1 with exact attention on a periodic grid is invariant to
/// cyclic shifts; with FAVOR+ features it is not (the documented leak: one
/// draw multiplies the positions).
#[test]
fn strategy_one_is_relative_with_exact_attention_only() {
    let (h, w, s, heads, d, dim) = (4, 4, 2, 2, 4, 8);
    let n = 1 + h * w;
    let grid = GridSinusoidConfig::new(s)
        .init::<I>(&Default::default())
        .make_periodic(h, w);
    let positions = with_class_token(grid.features(h, w));
    let proj = ConstrainedProjectionConfig::new(dim, heads, s).init::<I>(&Default::default());
    let (q, k, v) = (
        randn::<I, 4>([1, heads, n, d], 41, 1.0),
        randn::<I, 4>([1, heads, n, d], 42, 1.0),
        randn::<I, 4>([1, heads, n, d], 43, 1.0),
    );
    let x = Tensor::zeros([1, n, dim], &Default::default());
    let (qe, ke) = proj.extras(x, positions);
    let map = FeatureMapConfig::new(d + qe.dims()[3]).init::<I>(1, &Default::default());
    let attend = |q: Tensor<I, 4>, k: Tensor<I, 4>, v: Tensor<I, 4>, favor: bool| {
        let (q, k) = widen(q, k, qe.clone(), ke.clone());
        if favor {
            map.attend(q, k, v)
        } else {
            relperf_favor::softmax_attention(q, k, v)
        }
    };
    let class_change = |favor: bool| {
        let out = attend(q.clone(), k.clone(), v.clone(), favor).narrow(2, 0, 1);
        let r = |t: Tensor<I, 4>| roll_tokens(t, h, w, 1, 2);
        let rolled = attend(r(q.clone()), r(k.clone()), r(v.clone()), favor).narrow(2, 0, 1);
        rel_err(rolled, out)
    };
    let (exact, favor) = (class_change(false), class_change(true));
    assert!(
        exact < 1e-12,
        "exact attention: class output changed by {exact:e}"
    );
    assert!(
        favor > 1e-4,
        "FAVOR+: class output changed by only {favor:e}"
    );
}

#[test]
fn the_absolute_encoding_is_the_reference_s_layout() {
    let enc = AbsoluteSinusoidConfig::new(8)
        .init::<I>(&Default::default())
        .encode(2, 3); // [6, 8]
    let v = vec_of(enc);
    let f = relperf_positional::grid::inverse_timescales(2, 64.0);
    let (y, x, i) = (1.0f64, 2.0f64, 5); // pixel (1, 2)
    let want = [
        (f[0] as f64 * y).sin(),
        (f[1] as f64 * y).sin(),
        (f[0] as f64 * y).cos(),
        (f[1] as f64 * y).cos(),
        (f[0] as f64 * x).sin(),
        (f[1] as f64 * x).sin(),
        (f[0] as f64 * x).cos(),
        (f[1] as f64 * x).cos(),
    ];
    for (c, wv) in want.iter().enumerate() {
        assert!((v[i * 8 + c] - wv).abs() < 1e-6, "channel {c}");
    }
}
