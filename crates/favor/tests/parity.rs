//! Parity with the PyTorch reference: `tests/fixtures/favor.json` holds its
//! features, FAVOR+ outputs and exact attention on seeded f32 inputs with a
//! fixed projection (made by `tests/fixtures/generate.py`; see the README
//! there). The Rust functions reproduce them within 1e-5 (relative to the
//! largest value) in f32.

use burn::backend::NdArray;
use burn::prelude::*;
use relperf_favor::{FeatureMapConfig, Kernel, softmax_attention};

type B = NdArray<f32>;

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    kernel: String,
    shape: [usize; 4],
    j: usize,
    e: usize,
    m: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    projection: Vec<f32>,
    features_q: Vec<f32>,
    features_k: Vec<f32>,
    out: Vec<f32>,
    exact: Vec<f32>,
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// Largest absolute difference relative to the largest reference value.
fn rel(got: Tensor<B, 4>, want: &[f32]) -> f64 {
    let got: Vec<f32> = got.into_data().to_vec().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |a, &w| a.max(w.abs() as f64));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn favor_matches_the_pytorch_reference() {
    let cases: Vec<Case> = serde_json::from_str(include_str!("fixtures/favor.json")).unwrap();
    assert_eq!(cases.len(), 3);
    for c in cases {
        let [b, h, n, d] = c.shape;
        let kernel: Kernel = c.kernel.parse().unwrap();
        let map = FeatureMapConfig::new(d)
            .with_nb_features(Some(c.m))
            .with_kernel(kernel)
            .init::<B>(0, &Default::default());
        let map = map.with_projection(tensor(&c.projection, [c.m, d]), 0, 0);
        let q = tensor(&c.q, [b, h, n, d]);
        let k = tensor(&c.k, [b, h, c.j, d]);
        let v = tensor(&c.v, [b, h, c.j, c.e]);
        let errors = [
            rel(map.features(q.clone(), true), &c.features_q),
            rel(map.features(k.clone(), false), &c.features_k),
            rel(map.attend(q.clone(), k.clone(), v.clone()), &c.out),
            rel(softmax_attention(q, k, v), &c.exact),
        ];
        println!(
            "{}: relative max errors of features_q, features_k, favor, exact: {errors:?}",
            c.name
        );
        assert!(errors.iter().all(|&e| e < 1e-5), "{}: {errors:?}", c.name);
    }
}
