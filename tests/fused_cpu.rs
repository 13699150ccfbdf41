//! The fused CPU feature maps (`relperf_favor::host`, on burn-ndarray)
//! against the plain tensor ops they replace, in f32 and against f64: features and
//! the gradient with respect to the input, queries and keys, on seeded
//! inputs, including a slice of 1025 tokens and a head dim widened as
//! strategy 1 does. (Whole models take the path in every other test on
//! these backends, e.g. the imported models' logits against PyTorch's.)

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::Element;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::favor::draw_projection;
use relative_performer::favor::features::{
    softmax_features_up_to_scale, softmax_features_up_to_scale_reference,
};
use relative_performer::favor::host::is_fused;
use std::cell::RefCell;

/// The f64 reference of the gradients.
type F64 = burn::backend::NdArray<f64>;

/// The features of `x` and `d/dx sum(features(x) * weights)` on backend
/// `A`, fused or plain, in f64.
fn features_and_grad<A: AutodiffBackend, B: Backend>(
    x: &Tensor<B, 4>,
    w: &Tensor<B, 2>,
    weights: &Tensor<B, 4>,
    is_query: bool,
    fused: bool,
) -> (Tensor<F64, 4>, Tensor<F64, 4>) {
    // `on` gives the dtype explicitly: Burn 0.21 keys a device's default
    // float dtype by the device type, which NdArray<f32> and NdArray<f64>
    // share, so the first backend to touch the CPU fixes it for the process.
    let dtype = <A::FloatElem as Element>::dtype();
    let xa = on::<A, B, 4>(x).require_grad();
    let wa = on::<A, B, 2>(w);
    let weights = on::<A, B, 4>(weights);
    let f = if fused {
        softmax_features_up_to_scale(xa.clone(), wa, is_query)
    } else {
        softmax_features_up_to_scale_reference(xa.clone(), wa, is_query)
    };
    let grads = (f.clone() * weights).sum().backward();
    let g = xa.grad(&grads).expect("x takes a gradient");
    assert_eq!(g.dtype(), dtype);
    (as_f64(f.inner()), as_f64(g))
}

thread_local! {
    /// This test thread's draws ([`seed_draws`], [`random`]).
    static DRAWS: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
}

/// Seeds the draws of [`random`] on this thread. (Burn's `Backend::seed`
/// seeds one generator for the whole process, which the tests running at the
/// same time on other threads draw from too: their inputs then depended on
/// the order the threads ran in.)
fn seed_draws(seed: u64) {
    DRAWS.with(|rng| *rng.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
}

/// A tensor of normal draws (Box-Muller) made on this thread after
/// [`seed_draws`].
fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
) -> Tensor<B, D> {
    let Distribution::Normal(mean, std) = distribution else {
        panic!("the tests draw normal values only, not {distribution:?}");
    };
    let count = shape.iter().product::<usize>();
    let values: Vec<f32> = DRAWS.with(|rng| {
        let mut rng = rng.borrow_mut();
        (0..count)
            .map(|_| {
                let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                let v: f64 = rng.random();
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                (mean + std * z) as f32
            })
            .collect()
    });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Largest `|a - b|` over the largest `|b|`.
fn rel_err<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let scale = b.clone().abs().max().into_scalar().elem::<f64>().max(1e-30);
    (a - b).abs().max().into_scalar().elem::<f64>() / scale
}

struct FeaturesCheck;

impl BackendTask for FeaturesCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        type A<B> = Autodiff<B>;
        assert!(
            is_fused::<B>(),
            "{} should take the fused path",
            B::name(&device)
        );
        assert!(
            is_fused::<A<B>>(),
            "Autodiff<{}> should take the fused path",
            B::name(&device)
        );
        let mut report = Vec::new();
        for (shape, m, scale) in [
            ([2, 3, 37, 8], 16, 1.0),
            ([2, 2, 1025, 32], 110, 1.0),
            ([1, 4, 257, 36], 129, 3.0), // strategy 1's widened head, large logits
        ] {
            let [_, _, _, d] = shape;
            for is_query in [true, false] {
                seed_draws(11);
                let x = random::<B, 4>(shape, Distribution::Normal(0.0, scale), &device);
                let w = Tensor::<B, 2>::from_data(
                    TensorData::new(draw_projection(m, d, 5, 0), [m, d]),
                    &device,
                );
                let weights = random::<B, 4>(
                    [shape[0], shape[1], shape[2], m],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                // fused and plain in f32 (with and without autodiff)
                // against the plain ops in f64
                let (f_fused, g_fused) =
                    features_and_grad::<A<B>, B>(&x, &w, &weights, is_query, true);
                let (f_plain, g_plain) =
                    features_and_grad::<A<B>, B>(&x, &w, &weights, is_query, false);
                let (f_exact, g_exact) =
                    features_and_grad::<A<F64>, B>(&x, &w, &weights, is_query, false);
                let inference =
                    as_f64(softmax_features_up_to_scale(x.clone(), w.clone(), is_query));
                let errs = [
                    rel_err(f_fused, f_exact.clone()),
                    rel_err(inference, f_exact.clone()),
                    rel_err(f_plain, f_exact),
                    rel_err(g_fused, g_exact.clone()),
                    rel_err(g_plain, g_exact),
                ];
                let line = format!(
                    "{} {shape:?} m {m} query {is_query}, relative errors against f64: features fused {:.1e} (inference {:.1e}), plain {:.1e}; dx fused {:.1e}, plain {:.1e}",
                    B::name(&device),
                    errs[0],
                    errs[1],
                    errs[2],
                    errs[3],
                    errs[4]
                );
                // as close to f64 as the plain ops in f32, to a few roundings
                let bound = |plain: f64| (4.0 * plain).max(2e-6);
                assert!(
                    errs[0] <= bound(errs[2])
                        && errs[1] <= bound(errs[2])
                        && errs[3] <= bound(errs[4]),
                    "{line}"
                );
                report.push(line);
            }
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_features_equal_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, FeaturesCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

struct FavorCheck;

impl BackendTask for FavorCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::favor::FeatureMapConfig;
        use relative_performer::favor::attention::{linear_attention, linear_attention_reference};
        use relative_performer::favor::host::favor_attention;
        let mut report = Vec::new();
        // the seed's heads (110 features, 1025 tokens: 8 tiles and one
        // row), a short slice, strategy 1's widened heads with odd widths
        for (shape, m, e) in [
            ([2, 2, 1025, 32], 110, 32),
            ([2, 3, 37, 8], 16, 8),
            ([1, 3, 257, 36], 129, 33),
        ] {
            seed_draws(29);
            let [b, h, n, d] = shape;
            let q = random::<B, 4>(shape, Distribution::Normal(0.0, 1.5), &device);
            let k = random::<B, 4>(shape, Distribution::Normal(0.0, 1.5), &device);
            let v = random::<B, 4>([b, h, n, e], Distribution::Normal(0.0, 1.0), &device);
            let map = FeatureMapConfig::new(d)
                .with_nb_features(Some(m))
                .init::<B>(7, &device);
            let fused = favor_attention(q.clone(), k.clone(), v.clone(), map.projection())
                .unwrap_or_else(|_| panic!("inference on {} is fused", B::name(&device)));
            let steps = linear_attention(
                map.features(q.clone(), true),
                map.features(k.clone(), false),
                v.clone(),
            );
            assert_eq!(fused.to_data(), steps.to_data(), "{shape:?} m {m} e {e}");
            assert_eq!(
                map.attend(q.clone(), k.clone(), v.clone()).to_data(),
                fused.to_data()
            );
            // against the plain ops in f64
            let w = on::<F64, B, 2>(&map.projection());
            let (q64, k64, v64) = (
                on::<F64, B, 4>(&q),
                on::<F64, B, 4>(&k),
                on::<F64, B, 4>(&v),
            );
            let exact = linear_attention_reference(
                softmax_features_up_to_scale_reference(q64, w.clone(), true),
                softmax_features_up_to_scale_reference(k64, w, false),
                v64,
            );
            let err = rel_err(as_f64(fused), exact);
            assert!(err <= 1e-5, "{shape:?} m {m} e {e}: {err:.1e}");
            report.push(format!(
                "{} fused FAVOR+ attention {shape:?} m {m} e {e}: bit-equal to features then linear attention, {err:.1e} from f64",
                B::name(&device)
            ));
        }
        // a gradient to take, another kernel, mismatched shapes: declined
        let q = random::<B, 4>([1, 2, 9, 8], Distribution::Normal(0.0, 1.0), &device);
        let map = FeatureMapConfig::new(8).init::<B>(7, &device);
        let tracked = on::<Autodiff<B>, B, 4>(&q).require_grad();
        let w = on::<Autodiff<B>, B, 2>(&map.projection());
        assert!(favor_attention(tracked.clone(), tracked.clone(), tracked, w).is_err());
        let v = random::<B, 4>([1, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        assert!(favor_attention(q.clone(), q.clone(), v, map.projection()).is_err());
        assert!(
            favor_attention(
                q.clone(),
                q.clone(),
                q.clone(),
                map.projection().narrow(1, 0, 4)
            )
            .is_err()
        );
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_favor_attention_equals_its_two_steps() {
    for line in run_on(BackendKind::Ndarray, FavorCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// The fused reshape: values and gradients equal to Burn's, from standard
/// and from strided layouts.
#[cfg(feature = "ndarray")]
#[test]
fn fused_reshape_equals_burns_values_and_gradients() {
    use relative_performer::favor::host::reshape;
    type N = burn::backend::NdArray<f32>;
    type A = Autodiff<N>;
    let device = Default::default();
    seed_draws(31);
    let x = random::<N, 4>([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
    let weights = random::<N, 2>([6, 20], Distribution::Normal(0.0, 1.0), &device);
    for strided in [false, true] {
        let run = |fused: bool| {
            let xa = on::<A, N, 4>(&x).require_grad();
            // a strided view (the axes swapped back) or the tensor itself
            let input = if strided {
                xa.clone().swap_dims(1, 2).swap_dims(1, 2)
            } else {
                xa.clone()
            };
            let y: Tensor<A, 2> = if fused {
                reshape(input, [6, 20])
            } else {
                input.reshape([6, 20])
            };
            let grads = (y.clone() * on::<A, N, 2>(&weights)).sum().backward();
            (
                y.inner().to_data(),
                xa.grad(&grads).expect("x takes a gradient").to_data(),
            )
        };
        assert_eq!(run(true), run(false), "strided {strided}");
    }
    let plain: Tensor<N, 3> = reshape(x.clone().swap_dims(0, 3), [5, 4, 6]);
    assert_eq!(
        plain.to_data(),
        x.clone().swap_dims(0, 3).reshape([5, 4, 6]).to_data()
    );
    let other: Tensor<F64, 1> = reshape(on::<F64, N, 4>(&x), [120]);
    assert_eq!(
        other.to_data(),
        on::<F64, N, 4>(&x).reshape([120]).to_data()
    );
}

/// The other backends and precisions run the plain ops.
#[test]
fn only_ndarray_in_f32_takes_the_fused_path() {
    assert!(!is_fused::<burn::backend::NdArray<f64>>());
    assert!(!is_fused::<Autodiff<burn::backend::NdArray<f64>>>());
    #[cfg(feature = "flex")]
    assert!(!is_fused::<burn::backend::Flex>());
}

/// `to_f64` for any rank.
fn as_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<F64, D> {
    let f64 = burn::tensor::DType::F64;
    Tensor::from_data(t.into_data().convert_dtype(f64), (&Default::default(), f64))
}

/// `t` on backend `A` in its float dtype, taking a gradient.
fn on<A: Backend, B: Backend, const D: usize>(t: &Tensor<B, D>) -> Tensor<A, D> {
    let dtype = <A::FloatElem as Element>::dtype();
    Tensor::from_data(
        t.to_data().convert_dtype(dtype),
        (&Default::default(), dtype),
    )
}

/// Linear attention's output and the gradients of `sum(out * weights)`
/// with respect to `phi(Q)`, `phi(K)` and `V`, on `A`, fused or plain, in
/// f64.
fn linear_and_grads<A: AutodiffBackend, B: Backend>(
    inputs: &[Tensor<B, 4>; 4],
    fused: bool,
) -> Vec<Tensor<F64, 4>> {
    use relative_performer::favor::attention::{linear_attention, linear_attention_reference};
    let [q, k, v] = [0, 1, 2].map(|i| on::<A, B, 4>(&inputs[i]).require_grad());
    let weights = on::<A, B, 4>(&inputs[3]);
    let out = if fused {
        linear_attention(q.clone(), k.clone(), v.clone())
    } else {
        linear_attention_reference(q.clone(), k.clone(), v.clone())
    };
    let grads = (out.clone() * weights).sum().backward();
    let mut all = vec![as_f64(out.inner())];
    for t in [q, k, v] {
        all.push(as_f64(t.grad(&grads).expect("a gradient")));
    }
    all
}

struct LinearCheck;

impl BackendTask for LinearCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        let mut report = Vec::new();
        for (b, h, n, m, e) in [(2, 3, 37, 16, 8), (1, 4, 1025, 110, 32)] {
            seed_draws(3);
            // positive features spanning orders of magnitude, as exp gives
            let features =
                || random::<B, 4>([b, h, n, m], Distribution::Normal(0.0, 2.0), &device).exp();
            let inputs = [
                features(),
                features(),
                random([b, h, n, e], Distribution::Normal(0.0, 1.0), &device),
                random([b, h, n, e], Distribution::Normal(0.0, 1.0), &device),
            ];
            let fused = linear_and_grads::<Autodiff<B>, B>(&inputs, true);
            let plain = linear_and_grads::<Autodiff<B>, B>(&inputs, false);
            let exact = linear_and_grads::<Autodiff<F64>, B>(&inputs, false);
            let names = ["out", "dQ'", "dK'", "dV"];
            let mut line = format!(
                "{} [{b}, {h}, {n}] m {m} e {e}, relative errors against f64 (fused / plain):",
                B::name(&device)
            );
            for i in 0..4 {
                let (f, p) = (
                    rel_err(fused[i].clone(), exact[i].clone()),
                    rel_err(plain[i].clone(), exact[i].clone()),
                );
                line += &format!(" {} {f:.1e} / {p:.1e}", names[i]);
                assert!(f <= (4.0 * p).max(2e-6), "{line}");
            }
            // without autodiff, the same output
            let inference = as_f64(relative_performer::favor::linear_attention(
                inputs[0].clone(),
                inputs[1].clone(),
                inputs[2].clone(),
            ));
            let err = rel_err(inference, exact[0].clone());
            assert!(err <= 2e-6, "inference {err:.1e}; {line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_linear_attention_equals_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, LinearCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

struct GeluCheck;

impl BackendTask for GeluCheck {
    type Output = String;
    fn run<B: Backend>(self, device: B::Device) -> String {
        use burn::tensor::activation::gelu;
        use relative_performer::favor::host;
        // every value in [-12, 12] at steps of 1/512, and 2^16 + 5 normal
        // draws (more than one task's chunk)
        let grid: Vec<f32> = (-6144..=6144).map(|i| i as f32 / 512.0).collect();
        let grid = Tensor::<B, 1>::from_data(TensorData::new(grid.clone(), [grid.len()]), &device);
        seed_draws(9);
        let draws = random::<B, 1>([65_541], Distribution::Normal(0.0, 3.0), &device);
        let x = Tensor::cat(vec![grid, draws], 0);
        let weights = random::<B, 1>(x.dims(), Distribution::Normal(0.0, 1.0), &device);
        // fused on Autodiff<B>
        let xa = on::<Autodiff<B>, B, 1>(&x).require_grad();
        let y = host::gelu(xa.clone()).expect("the fused path");
        let grads = (y.clone() * on::<Autodiff<B>, B, 1>(&weights))
            .sum()
            .backward();
        let (y, g) = (as_f64(y.inner()), as_f64(xa.grad(&grads).unwrap()));
        // exact in f64: x Phi(x), and g (Phi(x) + x phi(x))
        let x64 = as_f64(x.clone());
        let cdf = x64
            .clone()
            .div_scalar(std::f64::consts::SQRT_2)
            .erf()
            .add_scalar(1.0)
            .mul_scalar(0.5);
        let pdf = (x64.clone() * x64.clone())
            .mul_scalar(-0.5)
            .exp()
            .div_scalar((2.0 * std::f64::consts::PI).sqrt());
        let want_y = gelu(x64.clone());
        let want_g = (cdf + x64.clone() * pdf) * as_f64(weights);
        let inference = as_f64(host::gelu(x.clone()).expect("the fused path"));
        let plain = as_f64(gelu(x));
        let errs = [
            rel_err(y, want_y.clone()),
            rel_err(inference, want_y.clone()),
            rel_err(plain, want_y),
            rel_err(g, want_g),
        ];
        let line = format!(
            "{}: GELU relative errors against f64: fused {:.1e} (inference {:.1e}), Burn's f32 {:.1e}; gradient fused {:.1e}",
            B::name(&device),
            errs[0],
            errs[1],
            errs[2],
            errs[3]
        );
        assert!(
            errs[0] <= (4.0 * errs[2]).max(5e-7) && errs[1] == errs[0],
            "{line}"
        );
        assert!(errs[3] <= 1e-6, "{line}");
        line
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_gelu_equals_the_exact_gelu_and_its_derivative() {
    println!(
        "{}",
        run_on(BackendKind::Ndarray, GeluCheck).expect("ndarray is compiled in")
    );
}

struct RingCheck;

impl BackendTask for RingCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::positional::clipped::{ring_sums, ring_sums_reference};
        let mut report = Vec::new();
        for (b, h, height, width, e, rings) in [
            (2, 3, 7, 9, 5, 4),
            (1, 2, 5, 4, 3, 8),
            (2, 2, 32, 32, 33, 8),
        ] {
            let n = height * width;
            seed_draws(21);
            let v = random::<B, 4>([b, h, n, e], Distribution::Normal(0.0, 1.0), &device);
            let weights: Vec<Tensor<B, 4>> = (0..rings)
                .map(|_| random([b, h, n, e], Distribution::Normal(0.0, 1.0), &device))
                .collect();
            // the rings and d/dv sum_c sum(ring_c * weights_c), in f64
            fn run<A: AutodiffBackend, B: Backend>(
                v: &Tensor<B, 4>,
                weights: &[Tensor<B, 4>],
                (height, width, rings): (usize, usize, usize),
                fused: bool,
            ) -> (Vec<Tensor<F64, 4>>, Tensor<F64, 4>) {
                let va = on::<A, B, 4>(v).require_grad();
                let out = if fused {
                    ring_sums(va.clone(), height, width, rings)
                } else {
                    ring_sums_reference(va.clone(), height, width, rings)
                };
                let loss = out
                    .iter()
                    .zip(weights)
                    .map(|(r, w)| (r.clone() * on::<A, B, 4>(w)).sum())
                    .reduce(|a, b| a + b)
                    .expect("rings");
                let grads = loss.backward();
                let g = as_f64(va.grad(&grads).expect("a gradient"));
                (out.into_iter().map(|r| as_f64(r.inner())).collect(), g)
            }
            let dims = (height, width, rings);
            let (fused, g_fused) = run::<Autodiff<B>, B>(&v, &weights, dims, true);
            let (_, g_plain) = run::<Autodiff<B>, B>(&v, &weights, dims, false);
            let (exact, g_exact) = run::<Autodiff<F64>, B>(&v, &weights, dims, false);
            let inference = ring_sums(v.clone(), height, width, rings);
            let mut worst: f64 = 0.0;
            for ((f, x), i) in fused.into_iter().zip(&exact).zip(inference) {
                worst = worst
                    .max(rel_err(f, x.clone()))
                    .max(rel_err(as_f64(i), x.clone()));
            }
            let (gf, gp) = (rel_err(g_fused, g_exact.clone()), rel_err(g_plain, g_exact));
            let line = format!(
                "{} [{b}, {h}] {height}x{width} e {e} rings {rings}: relative errors against f64: rings {worst:.1e}; dv fused {gf:.1e}, plain {gp:.1e}",
                B::name(&device)
            );
            assert!(worst <= 2e-6 && gf <= (4.0 * gp).max(2e-6), "{line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_ring_sums_equal_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, RingCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// Strategy 2's window term, fused or plain, and the gradients of
/// `sum(out * weights)` with respect to `v` and `s`, on `A`, in f64.
fn window_and_grads<A: AutodiffBackend, B: Backend>(
    [v, s, weights]: [&Tensor<B, 4>; 3],
    (height, width): (usize, usize),
    fused: bool,
) -> [Tensor<F64, 4>; 3] {
    use relative_performer::positional::clipped::{window, window_reference};
    let va = on::<A, B, 4>(v).require_grad();
    let sa = on::<A, B, 4>(s).require_grad();
    let out = if fused {
        window(va.clone(), sa.clone(), height, width)
    } else {
        window_reference(va.clone(), sa.clone(), height, width)
    };
    let grads = (out.clone() * on::<A, B, 4>(weights)).sum().backward();
    let dv = as_f64(va.grad(&grads).expect("v takes a gradient"));
    let ds = as_f64(sa.grad(&grads).expect("s takes a gradient"));
    [as_f64(out.inner()), dv, ds]
}

struct WindowCheck;

impl BackendTask for WindowCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::positional::clipped::window;
        let mut report = Vec::new();
        // (b, h, height, width, e, C): rings wider than the image, odd
        // sides, one ring, and the shipped models' shape
        for (b, h, height, width, e, c) in [
            (2, 3, 7, 9, 5, 4),
            (1, 2, 5, 4, 3, 8),
            (2, 1, 6, 3, 4, 1),
            (2, 2, 28, 28, 9, 8),
        ] {
            let n = 1 + height * width;
            seed_draws(23);
            let normal =
                |shape: [usize; 4]| random::<B, 4>(shape, Distribution::Normal(0.0, 1.0), &device);
            let (v, s, weights) = (
                normal([b, h, n, e]),
                normal([b, h, n, c + 1]),
                normal([b, h, n, e]),
            );
            let inputs = [&v, &s, &weights];
            let fused = window_and_grads::<Autodiff<B>, B>(inputs, (height, width), true);
            let plain = window_and_grads::<Autodiff<B>, B>(inputs, (height, width), false);
            let exact = window_and_grads::<Autodiff<F64>, B>(inputs, (height, width), false);
            let inference = as_f64(window(v.clone(), s.clone(), height, width));
            let err = |i: usize, of: &[Tensor<F64, 4>; 3]| rel_err(of[i].clone(), exact[i].clone());
            let line = format!(
                "{} [{b}, {h}] {height}x{width} e {e} C {c}: relative errors against f64: out fused {:.1e} (inference {:.1e}), plain {:.1e}; dv fused {:.1e}, plain {:.1e}; ds fused {:.1e}, plain {:.1e}",
                B::name(&device),
                err(0, &fused),
                rel_err(inference.clone(), exact[0].clone()),
                err(0, &plain),
                err(1, &fused),
                err(1, &plain),
                err(2, &fused),
                err(2, &plain),
            );
            let bound = |plain: f64| (4.0 * plain).max(2e-6);
            assert!(
                err(0, &fused) <= bound(err(0, &plain))
                    && rel_err(inference, exact[0].clone()) <= bound(err(0, &plain))
                    && err(1, &fused) <= bound(err(1, &plain))
                    && err(2, &fused) <= bound(err(2, &plain)),
                "{line}"
            );
            // the class token neither receives nor gives anything
            let class_out = fused[0].clone().narrow(2, 0, 1).abs().max().into_scalar();
            let class_dv = fused[1].clone().narrow(2, 0, 1).abs().max().into_scalar();
            assert_eq!((class_out, class_dv), (0.0, 0.0), "{line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_clipped_window_equals_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, WindowCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// A dense layer's output and the gradients of `sum(out * weights)` with
/// respect to `x`, `W` and the bias, on `A`, fused or plain
/// (`x W + b` in Burn's ops, as `Linear::forward`), in f64.
fn dense_and_grads<A: AutodiffBackend, B: Backend>(
    x: &Tensor<B, 3>,
    w: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
    weights: &Tensor<B, 3>,
    fused: bool,
) -> Vec<Tensor<F64, 3>> {
    use relative_performer::favor::host::dense;
    let xa = on::<A, B, 3>(x).require_grad();
    let wa = on::<A, B, 2>(w).require_grad();
    let ba = on::<A, B, 1>(bias).require_grad();
    let out = if fused {
        dense(xa.clone(), wa.clone(), ba.clone())
            .unwrap_or_else(|_| panic!("the fused dense layer takes these shapes"))
    } else {
        xa.clone().matmul(wa.clone().unsqueeze()) + ba.clone().unsqueeze()
    };
    let grads = (out.clone() * on::<A, B, 3>(weights)).sum().backward();
    let gw = wa.grad(&grads).expect("W takes a gradient");
    let gb = ba.grad(&grads).expect("b takes a gradient");
    vec![
        as_f64(out.inner()),
        as_f64(xa.grad(&grads).expect("x takes a gradient")),
        as_f64(gw.unsqueeze()),
        as_f64(gb.unsqueeze()),
    ]
}

struct DenseCheck;

impl BackendTask for DenseCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        let mut report = Vec::new();
        for (b, n, input, output) in [(2, 37, 24, 40), (3, 1025, 32, 96), (1, 5, 128, 10)] {
            seed_draws(5);
            let normal = Distribution::Normal(0.0, 1.0);
            let x = random::<B, 3>([b, n, input], normal, &device);
            let w = random::<B, 2>([input, output], normal, &device);
            let bias = random::<B, 1>([output], normal, &device);
            let weights = random::<B, 3>([b, n, output], normal, &device);
            let fused = dense_and_grads::<Autodiff<B>, B>(&x, &w, &bias, &weights, true);
            let plain = dense_and_grads::<Autodiff<B>, B>(&x, &w, &bias, &weights, false);
            let exact = dense_and_grads::<Autodiff<F64>, B>(&x, &w, &bias, &weights, false);
            let mut line = format!(
                "{} dense [{b}, {n}, {input}] -> {output}, relative errors against f64 (fused / plain):",
                B::name(&device)
            );
            for (i, name) in ["out", "dx", "dW", "db"].iter().enumerate() {
                let f = rel_err(fused[i].clone(), exact[i].clone());
                let p = rel_err(plain[i].clone(), exact[i].clone());
                line += &format!(" {name} {f:.1e} / {p:.1e}");
                assert!(f <= (4.0 * p).max(2e-6), "{line}");
            }
            let inference = relative_performer::favor::host::dense(x, w, bias)
                .unwrap_or_else(|_| panic!("the fused dense layer takes these shapes"));
            let err = rel_err(as_f64(inference), exact[0].clone());
            assert!(err <= 2e-6, "inference {err:.1e}; {line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_dense_layer_equals_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, DenseCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

struct PermuteCheck;

impl BackendTask for PermuteCheck {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) {
        use relative_performer::favor::host::permute_contiguous;
        type A<B> = Autodiff<B>;
        seed_draws(9);
        let normal = Distribution::Normal(0.0, 1.0);
        // the heads' split and merge of the models, and a rank-3 case
        let x5 = random::<B, 5>([2, 37, 3, 4, 8], normal, &device);
        let w5 = random::<B, 5>([3, 2, 4, 37, 8], normal, &device);
        let x4 = random::<B, 4>([2, 4, 37, 8], normal, &device);
        let w4 = random::<B, 4>([2, 37, 4, 8], normal, &device);
        fn check<B: Backend, const D: usize>(
            x: &Tensor<B, D>,
            weights: &Tensor<B, D>,
            perm: [usize; D],
        ) {
            let run = |fused: bool| {
                let xa = on::<A<B>, B, D>(x).require_grad();
                let y = if fused {
                    permute_contiguous(xa.clone(), perm)
                        .unwrap_or_else(|_| panic!("the fused permutation takes {perm:?}"))
                } else {
                    xa.clone().permute(perm)
                };
                let grads = (y.clone() * on::<A<B>, B, D>(weights)).sum().backward();
                (
                    y.inner().into_data(),
                    xa.grad(&grads).expect("x's gradient").into_data(),
                )
            };
            let (fused, plain) = (run(true), run(false));
            // pure data movement: equal bit for bit, and the shapes too
            assert_eq!(fused.0, plain.0, "values of {perm:?}");
            assert_eq!(fused.1, plain.1, "gradients of {perm:?}");
            let inference = permute_contiguous(x.clone(), perm)
                .unwrap_or_else(|_| panic!("the fused permutation takes {perm:?}"));
            assert_eq!(inference.into_data(), plain.0, "inference of {perm:?}");
        }
        check(&x5, &w5, [2, 0, 3, 1, 4]);
        check(&x4, &w4, [0, 2, 1, 3]);
        let x3 = random::<B, 3>([5, 6, 7], normal, &device);
        let w3 = random::<B, 3>([6, 5, 7], normal, &device);
        check(&x3, &w3, [1, 0, 2]);
        // a permutation that moves the last axis is not taken
        assert!(permute_contiguous(x3.clone(), [2, 1, 0]).is_err());
        assert!(permute_contiguous(x3, [0, 0, 2]).is_err());
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_permutation_equals_burns_permute_values_and_gradients() {
    run_on(BackendKind::Ndarray, PermuteCheck).expect("ndarray is compiled in");
}

/// The inputs of the separable periodic sums: `phi(Q), phi(K) [b, h, n, m]`,
/// `V1 [b, h, n, e]`, `u [h, n, 2, p]`, `psi_y [height, p]`, `psi_x [width, p]`,
/// and the weights of the loss `[b, h, n, e]`.
struct PeriodicCase<B: Backend> {
    qf: Tensor<B, 4>,
    kf: Tensor<B, 4>,
    v1: Tensor<B, 4>,
    u: Tensor<B, 4>,
    psi_y: Tensor<B, 2>,
    psi_x: Tensor<B, 2>,
    weights: Tensor<B, 4>,
}

/// The separable sums and the gradients of `sum(out * weights)` with
/// respect to `phi(Q)`, `phi(K)`, `V1` and `u`, on `A`, fused or plain, in
/// f64.
fn periodic_and_grads<A: AutodiffBackend, B: Backend>(
    case: &PeriodicCase<B>,
    fused: bool,
) -> Vec<Tensor<F64, 4>> {
    use relative_performer::favor::host::separable_periodic;
    use relative_performer::positional::periodic::separable_product_reference;
    let [qf, kf, v1, u] =
        [&case.qf, &case.kf, &case.v1, &case.u].map(|t| on::<A, B, 4>(t).require_grad());
    let (psi_y, psi_x) = (on::<A, B, 2>(&case.psi_y), on::<A, B, 2>(&case.psi_x));
    let inputs = (qf.clone(), kf.clone(), v1.clone(), u.clone(), psi_y, psi_x);
    let out = if fused {
        separable_periodic(inputs).unwrap_or_else(|_| panic!("the fused kernel takes these shapes"))
    } else {
        let (qf, kf, v1, u, psi_y, psi_x) = inputs;
        separable_product_reference(qf, kf, v1, u, psi_y, psi_x)
    };
    let grads = (out.clone() * on::<A, B, 4>(&case.weights))
        .sum()
        .backward();
    let mut all = vec![as_f64(out.inner())];
    for t in [qf, kf, v1, u] {
        all.push(as_f64(t.grad(&grads).expect("a gradient")));
    }
    all
}

struct PeriodicCheck;

impl BackendTask for PeriodicCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::positional::periodic::axis_basis;
        let mut report = Vec::new();
        // (b, h, height, width, harmonics, m, e): a small non-square image,
        // and the models' 32 x 32 with the head dim's features
        for (b, h, hh, ww, harmonics, m, e) in [(2, 3, 5, 4, 2, 8, 9), (1, 2, 32, 32, 4, 32, 33)] {
            seed_draws(11);
            let n = 1 + hh * ww;
            let normal = Distribution::Normal(0.0, 1.0);
            let features =
                || random::<B, 4>([b, h, n, m], Distribution::Normal(0.0, 1.0), &device).exp();
            let psi_y = axis_basis::<B>(hh, harmonics, &device);
            let psi_x = axis_basis::<B>(ww, harmonics, &device);
            let p = psi_y.dims()[1];
            assert_eq!(psi_x.dims()[1], p);
            let case = PeriodicCase {
                qf: features(),
                kf: features(),
                v1: random([b, h, n, e], normal, &device),
                u: random([h, n, 2, p], normal, &device),
                psi_y,
                psi_x,
                weights: random([b, h, n, e], normal, &device),
            };
            let fused = periodic_and_grads::<Autodiff<B>, B>(&case, true);
            let plain = periodic_and_grads::<Autodiff<B>, B>(&case, false);
            let exact = periodic_and_grads::<Autodiff<F64>, B>(&case, false);
            let mut line = format!(
                "{} periodic [{b}, {h}] {hh}x{ww} p {p} m {m} e {e}, relative errors against f64 (fused / plain):",
                B::name(&device)
            );
            for (i, name) in ["out", "dQ'", "dK'", "dV1", "du"].iter().enumerate() {
                let f = rel_err(fused[i].clone(), exact[i].clone());
                let pl = rel_err(plain[i].clone(), exact[i].clone());
                line += &format!(" {name} {f:.1e} / {pl:.1e}");
                assert!(f <= (4.0 * pl).max(2e-6), "{line}");
            }
            let c = case;
            let inference = relative_performer::favor::host::separable_periodic((
                c.qf, c.kf, c.v1, c.u, c.psi_y, c.psi_x,
            ))
            .unwrap_or_else(|_| panic!("the fused kernel takes these shapes"));
            let err = rel_err(as_f64(inference), exact[0].clone());
            assert!(err <= 2e-6, "inference {err:.1e}; {line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_periodic_sums_equal_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, PeriodicCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

struct ConcatCheck;

impl BackendTask for ConcatCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::favor::host::concat_last;
        type A<B> = Autodiff<B>;
        seed_draws(13);
        let normal = Distribution::Normal(0.0, 1.0);
        let mut report = Vec::new();
        // strategy 1's queries ([1, h, n, e] extras) and keys ([1, 1, n, e]),
        // content-dependent extras (no broadcast), an empty first operand,
        // `with_ones`'s single broadcast element
        for (a_shape, b_shape) in [
            ([2, 3, 37, 8], [1, 3, 37, 5]),
            ([2, 3, 37, 8], [1, 1, 37, 5]),
            ([2, 3, 37, 8], [2, 3, 37, 16]),
            ([3, 2, 5, 0], [3, 1, 5, 4]),
            ([2, 3, 37, 9], [1, 1, 1, 1]),
        ] {
            let a = random::<B, 4>(a_shape, normal, &device);
            let b = random::<B, 4>(b_shape, normal, &device);
            let [d0, d1, d2, da] = a_shape;
            let db = b_shape[3];
            let weights = random::<B, 4>([d0, d1, d2, da + db], normal, &device);
            let run = |fused: bool| {
                let aa = on::<A<B>, B, 4>(&a).require_grad();
                let ba = on::<A<B>, B, 4>(&b).require_grad();
                let out = if fused {
                    concat_last(aa.clone(), ba.clone())
                        .unwrap_or_else(|_| panic!("the fused concatenation takes {a_shape:?}"))
                } else {
                    Tensor::cat(vec![aa.clone(), ba.clone().expand([d0, d1, d2, db])], 3)
                };
                let grads = (out.clone() * on::<A<B>, B, 4>(&weights)).sum().backward();
                let ga = aa.grad(&grads).map(as_f64);
                let gb = as_f64(ba.grad(&grads).expect("b takes a gradient"));
                (as_f64(out.inner()), ga, gb)
            };
            let (fo, fga, fgb) = run(true);
            let (po, pga, pgb) = run(false);
            assert_eq!(fo.to_data(), po.to_data(), "values {a_shape:?} {b_shape:?}");
            if da > 0 {
                let (f, p) = (fga.expect("a's gradient"), pga.expect("a's gradient"));
                assert_eq!(f.to_data(), p.to_data(), "da {a_shape:?} {b_shape:?}");
            }
            // b's gradient sums over the broadcast axes, in another order
            let err = rel_err(fgb, pgb);
            assert!(err <= 1e-6, "db {a_shape:?} {b_shape:?}: {err:.1e}");
            // without autodiff, the same values
            let inference = concat_last(a.clone(), b.clone())
                .unwrap_or_else(|_| panic!("the fused concatenation takes {a_shape:?}"));
            assert_eq!(as_f64(inference).to_data(), fo.to_data());
            report.push(format!(
                "{} concat {a_shape:?} + {b_shape:?}: values and a's gradient bit-equal, b's {err:.1e}",
                B::name(&device)
            ));
        }
        // `with_ones` takes this path and equals the plain concatenation
        let v = random::<B, 4>([2, 3, 37, 9], normal, &device);
        let plain = Tensor::cat(vec![v.clone(), Tensor::ones([2, 3, 37, 1], &device)], 3);
        let v1 = relative_performer::favor::attention::with_ones(v);
        assert_eq!(as_f64(v1).to_data(), as_f64(plain).to_data());
        // leading extents that neither match nor broadcast are handed back
        let a = Tensor::<B, 3>::zeros([2, 3, 4], &device);
        assert!(concat_last(a.clone(), Tensor::<B, 3>::zeros([2, 2, 4], &device)).is_err());
        assert!(concat_last(a, Tensor::<B, 3>::zeros([3, 1, 4], &device)).is_err());
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_concatenation_equals_burns_cat_values_and_gradients() {
    for line in run_on(BackendKind::Ndarray, ConcatCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// Layer normalisation's output and the gradients of `sum(out * weights)`
/// with respect to `x`, the scale and the shift, on `A`, fused or by Burn's
/// default body (the ops `LayerNorm::forward` runs on burn-ndarray), in f64.
fn norm_and_grads<A: AutodiffBackend, B: Backend>(
    x: &Tensor<B, 3>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    weights: &Tensor<B, 3>,
    fused: bool,
) -> Vec<Tensor<F64, 3>> {
    use relative_performer::favor::host::layer_norm;
    let eps = 1e-5;
    let xa = on::<A, B, 3>(x).require_grad();
    let ga = on::<A, B, 1>(gamma).require_grad();
    let ba = on::<A, B, 1>(beta).require_grad();
    let out = if fused {
        layer_norm(xa.clone(), ga.clone(), ba.clone(), eps)
            .unwrap_or_else(|_| panic!("the fused layer norm takes these shapes"))
    } else {
        let mean = xa.clone().mean_dim(2);
        let centered = xa.clone() - mean;
        let var = (centered.clone() * centered.clone()).mean_dim(2);
        centered / var.add_scalar(eps).sqrt() * ga.clone().unsqueeze() + ba.clone().unsqueeze()
    };
    let grads = (out.clone() * on::<A, B, 3>(weights)).sum().backward();
    vec![
        as_f64(out.inner()),
        as_f64(xa.grad(&grads).expect("x takes a gradient")),
        as_f64(ga.grad(&grads).expect("gamma takes a gradient").unsqueeze()),
        as_f64(ba.grad(&grads).expect("beta takes a gradient").unsqueeze()),
    ]
}

struct NormCheck;

impl BackendTask for NormCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        let mut report = Vec::new();
        // a row count that is not a multiple of the task size; rows far
        // from zero mean and unit scale
        for (b, n, width, offset) in [(2, 37, 24, 0.0), (3, 1025, 32, 3.0), (1, 700, 128, -2.0)] {
            seed_draws(17);
            let x = random::<B, 3>([b, n, width], Distribution::Normal(offset, 2.5), &device);
            let gamma = random::<B, 1>([width], Distribution::Normal(1.0, 0.5), &device);
            let beta = random::<B, 1>([width], Distribution::Normal(0.0, 1.0), &device);
            let weights = random::<B, 3>([b, n, width], Distribution::Normal(0.0, 1.0), &device);
            let fused = norm_and_grads::<Autodiff<B>, B>(&x, &gamma, &beta, &weights, true);
            let plain = norm_and_grads::<Autodiff<B>, B>(&x, &gamma, &beta, &weights, false);
            let exact = norm_and_grads::<Autodiff<F64>, B>(&x, &gamma, &beta, &weights, false);
            let mut line = format!(
                "{} layer norm [{b}, {n}, {width}], relative errors against f64 (fused / plain):",
                B::name(&device)
            );
            for (i, name) in ["out", "dx", "dgamma", "dbeta"].iter().enumerate() {
                let f = rel_err(fused[i].clone(), exact[i].clone());
                let p = rel_err(plain[i].clone(), exact[i].clone());
                line += &format!(" {name} {f:.1e} / {p:.1e}");
                assert!(f <= (4.0 * p).max(2e-6), "{line}");
            }
            let inference = relative_performer::favor::host::layer_norm(x, gamma, beta, 1e-5)
                .unwrap_or_else(|_| panic!("the fused layer norm takes these shapes"));
            let err = rel_err(as_f64(inference), exact[0].clone());
            assert!(err <= 2e-6, "inference {err:.1e}; {line}");
            report.push(line);
        }
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_layer_norm_equals_the_plain_ops_outputs_and_gradients() {
    for line in run_on(BackendKind::Ndarray, NormCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// The models' norms on the fused path equal Burn's `LayerNorm` module.
#[cfg(feature = "ndarray")]
#[test]
fn fused_layer_norm_equals_burns_module() {
    use burn::nn::LayerNormConfig;
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    seed_draws(3);
    let module = LayerNormConfig::new(16).init::<B>(&device);
    let x = random::<B, 3>([2, 9, 16], Distribution::Normal(1.0, 3.0), &device);
    let want = module.forward(x.clone());
    let got = relative_performer::favor::host::layer_norm(
        x,
        module.gamma.val(),
        module.beta.as_ref().expect("a shift").val(),
        LayerNormConfig::new(16).epsilon,
    )
    .unwrap_or_else(|_| panic!("fused"));
    let err = rel_err(got, want);
    assert!(err < 1e-6, "{err:e}");
}

struct RotateCheck;

impl BackendTask for RotateCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::favor::host::rotate_pairs;
        use relative_performer::positional::constrained::rotate;
        type A<B> = Autodiff<B>;
        seed_draws(17);
        let normal = Distribution::Normal(0.0, 1.0);
        let mut report = Vec::new();
        // (heads, tokens, axes x scales): a small case, and more tokens
        // than one task's rows (the parameters' sums cross tasks)
        for (h, n, p) in [(2, 5, 3), (4, 1025, 8)] {
            let f = random::<B, 3>([n, p, 2], normal, &device);
            let alpha = random::<B, 2>([h, p], normal, &device);
            let beta = random::<B, 2>([h, p], normal, &device);
            let weights = random::<B, 4>([h, n, p, 2], normal, &device);
            let run = |fused: bool| {
                let fa = on::<A<B>, B, 3>(&f).require_grad();
                let aa = on::<A<B>, B, 2>(&alpha).require_grad();
                let ba = on::<A<B>, B, 2>(&beta).require_grad();
                let out = if fused {
                    rotate_pairs(fa.clone(), aa.clone(), ba.clone())
                        .unwrap_or_else(|_| panic!("the fused rotation takes {h}x{n}x{p}"))
                } else {
                    let pos = fa.clone().reshape([1, n, p, 2]).expand([h, n, p, 2]);
                    rotate(
                        pos,
                        aa.clone().reshape([h, 1, p, 1]),
                        ba.clone().reshape([h, 1, p, 1]),
                    )
                };
                let grads = (out.clone() * on::<A<B>, B, 4>(&weights)).sum().backward();
                let df = as_f64(fa.grad(&grads).expect("f takes a gradient"));
                let da = as_f64(aa.grad(&grads).expect("alpha takes a gradient"));
                let db = as_f64(ba.grad(&grads).expect("beta takes a gradient"));
                (as_f64(out.inner()), df, da, db)
            };
            let (fo, fdf, fda, fdb) = run(true);
            let (po, pdf, pda, pdb) = run(false);
            let errs = [
                rel_err(fo.clone(), po),
                rel_err(fdf, pdf),
                rel_err(fda, pda),
                rel_err(fdb, pdb),
            ];
            for (err, name) in errs.iter().zip(["out", "df", "dalpha", "dbeta"]) {
                assert!(*err <= 1e-5, "{name} {h}x{n}x{p}: {err:.1e}");
            }
            // without autodiff, the same values
            let inference = rotate_pairs(f.clone(), alpha.clone(), beta.clone())
                .unwrap_or_else(|_| panic!("the fused rotation takes {h}x{n}x{p}"));
            assert_eq!(as_f64(inference).to_data(), fo.to_data());
            report.push(format!(
                "{} rotate {h} heads x {n} tokens x {p} pairs: out, df, dalpha, dbeta within {:.1e}",
                B::name(&device),
                errs.iter().copied().fold(0.0, f64::max)
            ));
        }
        // shapes that do not fit are handed back
        let f = Tensor::<B, 3>::zeros([3, 2, 2], &device);
        let ab = Tensor::<B, 2>::zeros([2, 3], &device);
        assert!(rotate_pairs(f, ab.clone(), ab).is_err());
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_rotation_equals_the_plain_ops_values_and_gradients() {
    for line in run_on(BackendKind::Ndarray, RotateCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

struct RotateLeadCheck;

impl BackendTask for RotateLeadCheck {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<String> {
        use relative_performer::favor::host::rotate_with_lead;
        use relative_performer::positional::constrained::rotate;
        type A<B> = Autodiff<B>;
        seed_draws(19);
        let normal = Distribution::Normal(0.0, 1.0);
        let mut report = Vec::new();
        // (heads, tokens, axes, scales): a small case, and the periodic
        // factor's at 32x32 (more tokens than one task's rows)
        for (h, n, a, s) in [(2, 5, 2, 3), (4, 1025, 2, 4), (3, 7, 1, 1)] {
            let f = random::<B, 4>([n, a, s, 2], normal, &device);
            let alpha = random::<B, 3>([h, a, s], normal, &device);
            let beta = random::<B, 3>([h, a, s], normal, &device);
            let lead = random::<B, 2>([h, a], normal, &device);
            let weights = random::<B, 4>([h, n, a, 1 + 2 * s], normal, &device);
            let run = |fused: bool| {
                let fa = on::<A<B>, B, 4>(&f).require_grad();
                let aa = on::<A<B>, B, 3>(&alpha).require_grad();
                let ba = on::<A<B>, B, 3>(&beta).require_grad();
                let la = on::<A<B>, B, 2>(&lead).require_grad();
                let out = if fused {
                    rotate_with_lead(fa.clone(), aa.clone(), ba.clone(), la.clone())
                        .unwrap_or_else(|_| panic!("the fused rotation takes {h}x{n}x{a}x{s}"))
                } else {
                    // PeriodicFactor::query_vectors' plain ops
                    let pos = fa.clone().reshape([1, n, a, s, 2]).expand([h, n, a, s, 2]);
                    let rotated = rotate(
                        pos,
                        aa.clone().reshape([h, 1, a, s, 1]),
                        ba.clone().reshape([h, 1, a, s, 1]),
                    )
                    .reshape([h, n, a, 2 * s]);
                    let l = la.clone().reshape([h, 1, a, 1]).expand([h, n, a, 1]);
                    Tensor::cat(vec![l, rotated], 3)
                };
                let grads = (out.clone() * on::<A<B>, B, 4>(&weights)).sum().backward();
                let df = as_f64(fa.grad(&grads).expect("f takes a gradient"));
                let da = as_f64(aa.grad(&grads).expect("alpha takes a gradient"));
                let db = as_f64(ba.grad(&grads).expect("beta takes a gradient"));
                let dl = as_f64(la.grad(&grads).expect("lead takes a gradient"));
                (as_f64(out.inner()), df, da, db, dl)
            };
            let (fo, fdf, fda, fdb, fdl) = run(true);
            let (po, pdf, pda, pdb, pdl) = run(false);
            let errs = [
                rel_err(fo.clone(), po),
                rel_err(fdf, pdf),
                rel_err(fda, pda),
                rel_err(fdb, pdb),
                rel_err(fdl, pdl),
            ];
            for (err, name) in errs.iter().zip(["out", "df", "dalpha", "dbeta", "dlead"]) {
                assert!(*err <= 1e-5, "{name} {h}x{n}x{a}x{s}: {err:.1e}");
            }
            let inference = rotate_with_lead(f.clone(), alpha.clone(), beta.clone(), lead.clone())
                .unwrap_or_else(|_| panic!("the fused rotation takes {h}x{n}x{a}x{s}"));
            assert_eq!(as_f64(inference).to_data(), fo.to_data());
            report.push(format!(
                "{} rotate with lead {h} heads x {n} tokens x {a} axes x {s} scales: out, df, dalpha, dbeta, dlead within {:.1e}",
                B::name(&device),
                errs.iter().copied().fold(0.0, f64::max)
            ));
        }
        // shapes that do not fit are handed back
        let f = Tensor::<B, 4>::zeros([3, 2, 2, 2], &device);
        let ab = Tensor::<B, 3>::zeros([2, 2, 3], &device);
        let lead = Tensor::<B, 2>::zeros([2, 2], &device);
        assert!(rotate_with_lead(f.clone(), ab.clone(), ab, lead.clone()).is_err());
        let ab = Tensor::<B, 3>::zeros([2, 2, 2], &device);
        assert!(rotate_with_lead(f, ab.clone(), ab, lead.narrow(1, 0, 1)).is_err());
        report
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn fused_rotation_with_lead_equals_the_periodic_factors_plain_ops() {
    for line in run_on(BackendKind::Ndarray, RotateLeadCheck).expect("ndarray is compiled in") {
        println!("{line}");
    }
}

/// `PeriodicFactor::query_vectors` of `ExactRelativePerformer`, which takes
/// the fused rotation on burn-ndarray in f32 (coefficients shared by the
/// batch), against its plain ops (`query_vectors_reference`): the vectors
/// and the gradients of the coefficients and margins, on an image whose
/// sides are not equal. (The plain ops are checked against the definition
/// in f64 by `crates/positional/tests/reference_f64.rs`; f64 cannot run
/// here beside f32: burn-ndarray's two share one device, whose default
/// float type the first tensor made fixes for the process.)
#[cfg(feature = "ndarray")]
#[test]
fn periodic_query_vectors_in_one_pass_equal_the_plain_ops() {
    use burn::module::{AutodiffModule, Param};
    use relative_performer::positional::periodic::PeriodicFactorConfig;
    type N = burn::backend::NdArray<f32>;
    type A = Autodiff<N>;
    let device = Default::default();
    seed_draws(23);
    let (h, s, height, width) = (4, 4, 9, 7);
    let n = 1 + height * width;
    let coefficients = random::<N, 4>([h, 2, s + 1, 2], Distribution::Normal(0.5, 0.5), &device);
    let floor = random::<N, 2>([h, 2], Distribution::Normal(-1.0, 0.5), &device);
    let weights = random::<N, 5>(
        [1, h, n, 2, 1 + 2 * s],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let mut factor = PeriodicFactorConfig::new(16, h, s).init::<A>(&device);
    factor.coefficients = Param::from_tensor(on::<A, N, 4>(&coefficients).require_grad());
    factor.floor = Param::from_tensor(on::<A, N, 2>(&floor).require_grad());
    let run = |fused: bool| {
        let x = Tensor::zeros([2, n, 16], &device);
        let u = if fused {
            factor.query_vectors(x, height, width)
        } else {
            factor.query_vectors_reference(x, height, width)
        };
        let grads = (u.clone() * on::<A, N, 5>(&weights)).sum().backward();
        (
            as_f64(u.inner()),
            as_f64(
                factor
                    .coefficients
                    .val()
                    .grad(&grads)
                    .expect("coefficients"),
            ),
            as_f64(factor.floor.val().grad(&grads).expect("floor")),
        )
    };
    let (u, dc, df) = run(true);
    let (u_ref, dc_ref, df_ref) = run(false);
    assert_eq!(u.dims(), [1, h, n, 2, 1 + 2 * s]);
    let errs = [rel_err(u, u_ref), rel_err(dc, dc_ref), rel_err(df, df_ref)];
    println!(
        "query vectors, d coefficients, d margins within {:.1e}, {:.1e}, {:.1e}",
        errs[0], errs[1], errs[2]
    );
    for (err, name) in errs.iter().zip(["u", "dcoefficients", "dfloor"]) {
        assert!(*err <= 1e-5, "{name}: {err:.1e}");
    }
    // without autodiff, the same vectors
    let inner = factor.valid();
    let plain = inner.query_vectors(Tensor::zeros([1, n, 16], &device), height, width);
    let reference =
        inner.query_vectors_reference(Tensor::zeros([1, n, 16], &device), height, width);
    assert!(rel_err(as_f64(plain), as_f64(reference)) <= 1e-6);
}

/// The fused dropout against the product with its mask built on the host
/// from the same seed (`dropout_kept`): values and gradients bit-equal, on
/// a length that is not a multiple of the kernel's chunks; the inference
/// path equal too; a mask that keeps about `keep` of the elements.
#[cfg(feature = "ndarray")]
#[test]
fn fused_dropout_equals_the_product_with_its_mask() {
    use relative_performer::favor::host::{dropout, dropout_kept, dropout_threshold};
    type N = burn::backend::NdArray<f32>;
    type A = Autodiff<N>;
    let device = Default::default();
    let shape = [3, 1025, 37];
    let count: usize = shape.iter().product();
    assert!(!count.is_multiple_of(2) && !count.is_multiple_of(1 << 14));
    let (keep, seed) = (0.9, 0x1234_5678_9abc_def0_u64);
    let threshold = dropout_threshold(keep);
    let mask: Vec<f32> = (0..count as u64)
        .map(|i| {
            if dropout_kept(seed, i, threshold) {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / count as f64;
    assert!((kept - keep).abs() < 0.005, "kept {kept}");
    seed_draws(4);
    let x = random::<N, 3>(shape, Distribution::Normal(0.0, 1.0), &device);
    let w = random::<N, 3>(shape, Distribution::Normal(0.0, 1.0), &device);
    let mask = Tensor::<N, 3>::from_data(TensorData::new(mask, shape), &device);
    let run = |fused: bool| {
        let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
        let y = if fused {
            dropout(xa.clone(), keep, seed).expect("ndarray f32 is fused")
        } else {
            xa.clone() * Tensor::from_inner(mask.clone())
        };
        let grads = (y.clone() * Tensor::from_inner(w.clone())).sum().backward();
        let g = xa.grad(&grads).expect("a gradient");
        (y.inner().into_data(), g.into_data())
    };
    let ((y_fused, g_fused), (y_plain, g_plain)) = (run(true), run(false));
    assert_eq!(y_fused, y_plain, "values");
    assert_eq!(g_fused, g_plain, "gradients");
    let inference = dropout(x.clone(), keep, seed).expect("ndarray f32 is fused");
    assert_eq!(inference.into_data(), y_plain);
    // another seed, another mask; other backends and keep = 0 decline
    let other = dropout(x.clone(), keep, seed + 1).expect("fused");
    assert_ne!(other.into_data(), y_plain);
    assert!(dropout(x.clone(), 0.0, seed).is_err());
    assert!(dropout(Tensor::<F64, 1>::ones([4], &device), keep, seed).is_err());
}
