//! Parity with the PyTorch reference: `tests/fixtures/positional.json` holds
//! the reference's absolute encoding, strategy 1 extras (with and without
//! content-dependent rotations), the periodic factor's query vectors and
//! attention (separable FAVOR+ and exact), and strategy 2's weights and
//! outputs (FAVOR+ and exact), on seeded inputs with fixed parameters (made
//! by `tests/fixtures/generate.py`; see the README there). The Rust modules
//! reproduce them within 1e-5, relative to the largest value, in f32.

use burn::backend::NdArray;
use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use relperf_favor::{FeatureMap, FeatureMapConfig};
use relperf_positional::clipped::{RelativeKeysConfig, clipped_attention};
use relperf_positional::constrained::ConstrainedProjectionConfig;
use relperf_positional::grid::with_class_token;
use relperf_positional::periodic::PeriodicFactorConfig;
use relperf_positional::sinusoid::{AbsoluteSinusoidConfig, GridSinusoidConfig};
use relperf_positional::{AttentionInput, LayerStrategy};
use serde_json::Value;

type B = NdArray<f32>;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/positional.json")).unwrap()
}

fn t<const D: usize>(v: &Value) -> Tensor<B, D> {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f32> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let shape: [usize; D] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn n(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// Largest absolute difference relative to the largest reference value.
fn rel<const D: usize>(got: Tensor<B, D>, want: &Value) -> f64 {
    let want = t::<D>(want);
    assert_eq!(got.dims(), want.dims());
    let scale = want.clone().abs().max().into_scalar().elem::<f64>();
    (got - want).abs().max().into_scalar().elem::<f64>() / scale
}

fn check(name: &str, err: f64) {
    println!("{name}: relative max error {err:e}");
    assert!(err < 1e-5, "{name}: relative max error {err:e}");
}

fn map_with(projection: &Value) -> FeatureMap<B> {
    let w = t::<2>(projection);
    let [m, d] = w.dims();
    FeatureMapConfig::new(d)
        .with_nb_features(Some(m))
        .init::<B>(0, &Default::default())
        .with_projection(w, 0, 0)
}

#[test]
fn absolute_encoding() {
    let f = &fixtures()["absolute"];
    let mut enc = AbsoluteSinusoidConfig::new(n(&f["dim"])).init::<B>(&Default::default());
    enc.frequencies = Param::from_tensor(t(&f["frequencies"]));
    check(
        "absolute encoding",
        rel(enc.encode(n(&f["height"]), n(&f["width"])), &f["encoding"]),
    );
}

#[test]
fn strategy_one_extras() {
    let f = &fixtures()["strategy1"];
    let device = Default::default();
    let (h, w) = (n(&f["height"]), n(&f["width"]));
    let mut grid = GridSinusoidConfig::new(n(&f["scales"])).init::<B>(&device);
    grid.frequencies = Param::from_tensor(t(&f["frequencies"]));
    let positions = with_class_token(grid.features(h, w));
    check(
        "strategy 1 positions",
        rel(positions.clone(), &f["positions"]),
    );
    let cfg = ConstrainedProjectionConfig::new(n(&f["dim"]), n(&f["heads"]), n(&f["scales"]));
    let mut proj = cfg.init::<B>(&device);
    proj.alpha = Param::from_tensor(t(&f["alpha"]));
    proj.beta = Param::from_tensor(t(&f["beta"]));
    let x = Tensor::zeros([1, 1 + h * w, n(&f["dim"])], &device);
    let (q, k) = proj.extras(x, positions.clone());
    check("strategy 1 q_extra", rel(q, &f["q_extra"]));
    check("strategy 1 k_extra", rel(k, &f["k_extra"]));

    let c = &f["content"];
    let mut proj = cfg.with_content_rel_attn(true).init::<B>(&device);
    proj.alpha = Param::from_tensor(t(&f["alpha"]));
    proj.beta = Param::from_tensor(t(&f["beta"]));
    // PyTorch's Linear weight is (out, in); Burn's is (in, out)
    proj.to_alpha_beta = Some(Linear {
        weight: Param::from_tensor(t::<2>(&c["weight"]).transpose()),
        bias: Some(Param::from_tensor(t(&c["bias"]))),
    });
    let (q, k) = proj.extras(t(&c["x"]), positions);
    check("strategy 1 content q_extra", rel(q, &c["q_extra"]));
    check("strategy 1 content k_extra", rel(k, &c["k_extra"]));
}

#[test]
fn periodic_factor() {
    let f = &fixtures()["periodic"];
    let device = Default::default();
    let (h, w, heads, s, dim) = (
        n(&f["height"]),
        n(&f["width"]),
        n(&f["heads"]),
        n(&f["pos_scales"]),
        n(&f["dim"]),
    );
    let mut factor = PeriodicFactorConfig::new(dim, heads, s).init::<B>(&device);
    factor.coefficients = Param::from_tensor(t(&f["coefficients"]));
    factor.floor = Param::from_tensor(t(&f["floor"]));
    let x = Tensor::zeros([1, 1 + h * w, dim], &device);
    check(
        "periodic u",
        rel(factor.query_vectors(x.clone(), h, w), &f["u"]),
    );
    let input = AttentionInput {
        q: t(&f["q"]),
        k: t(&f["k"]),
        v: t(&f["v"]),
        x,
        height: h,
        width: w,
        positions: None,
    };
    let map = map_with(&f["projection"]);
    check(
        "periodic separable FAVOR+",
        rel(factor.attend(input.clone(), Some(&map)), &f["separable"]),
    );
    check(
        "periodic exact",
        rel(factor.attend(input, None), &f["exact"]),
    );
}

#[test]
fn clipped_relative_heads() {
    let f = &fixtures()["clipped"];
    let device = Default::default();
    let (h, w, c) = (n(&f["height"]), n(&f["width"]), n(&f["clipping_dist"]));
    let r = t::<3>(&f["relative_keys"]);
    let d = r.dims()[2];
    let mut keys = RelativeKeysConfig::new(2 * r.dims()[0], d, c).init::<B>(&device);
    keys.keys = Param::from_tensor(r);
    let map = map_with(&f["projection"]);
    let (q, v) = (t::<4>(&f["q"]), t::<4>(&f["v"]));
    for (features, tag) in [(Some(&map), "favor"), (None, "exact")] {
        let s = keys.weights(q.clone(), features);
        check(
            &format!("clipped weights ({tag})"),
            rel(s.clone(), &f[format!("weights_{tag}")]),
        );
        check(
            &format!("clipped output ({tag})"),
            rel(
                clipped_attention(v.clone(), s, h, w),
                &f[format!("out_{tag}")],
            ),
        );
    }
}
