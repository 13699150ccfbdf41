//! FAVOR+ against plain quadratic references written here, in f64 (its own
//! test binary: Burn 0.21 fixes one default float type per device and
//! process): outputs and gradients, the estimator's statistics.

mod common;

use burn::backend::{Autodiff, NdArray};
use common::*;
use relperf_favor::features::softmax_features;
use relperf_favor::{FeatureMapConfig, Kernel, linear_attention, softmax_attention};

type B64 = Autodiff<NdArray<f64>>;

#[test]
fn linear_attention_equals_the_quadratic_kernel_matrix_f64() {
    for kernel in [Kernel::Softmax, Kernel::Relu] {
        let err = compare::<B64>(kernel, [2, 3, 17, 8], 24);
        println!("{kernel:?}: relative max errors of output, dq, dk, dv: {err:?}");
        assert!(
            err.iter().all(|&e| e < 1e-10),
            "{kernel:?}: output, dq, dk, dv relative errors {err:?}"
        );
    }
}
/// Exact attention equals softmax written out by hand.
#[test]
fn exact_attention_is_softmax_attention() {
    type B = NdArray<f64>;
    let (q, k, v) = (
        randn::<B, 4>([1, 2, 9, 4], 1, 1.0),
        randn::<B, 4>([1, 2, 7, 4], 2, 1.0),
        randn::<B, 4>([1, 2, 7, 3], 3, 1.0),
    );
    let logits = q.clone().matmul(k.clone().swap_dims(2, 3)).div_scalar(2.0); // sqrt(4)
    let w = logits.exp();
    let reference = w.clone().matmul(v.clone()) / w.sum_dim(3);
    let err = max_abs_diff(softmax_attention(q, k, v), reference);
    assert!(err < 1e-12, "max error {err:e}");
}

/// `E_W[phi(q) . phi(k)] = exp(q . k / sqrt(d))`: the mean over `N` draws is
/// within 5 standard errors (estimated from the draws) of the kernel.
#[test]
fn the_estimator_is_unbiased() {
    type B = NdArray<f64>;
    let d = 6;
    let q = randn::<B, 4>([1, 1, 4, d], 21, 0.5);
    let k = randn::<B, 4>([1, 1, 4, d], 22, 0.5);
    let exact: Vec<f64> = q
        .clone()
        .matmul(k.clone().swap_dims(2, 3))
        .div_scalar((d as f64).sqrt())
        .exp()
        .into_data()
        .to_vec()
        .unwrap();
    let draws = 400;
    let mut samples: Vec<Vec<f64>> = vec![];
    for i in 0..draws {
        let map = FeatureMapConfig::new(d)
            .with_nb_features(Some(d))
            .init::<B>(1000 + i, &Default::default());
        let w = map.projection();
        let est = textbook_features(Kernel::Softmax, q.clone(), w.clone())
            .matmul(textbook_features(Kernel::Softmax, k.clone(), w).swap_dims(2, 3));
        samples.push(est.into_data().to_vec().unwrap());
    }
    for (p, &want) in exact.iter().enumerate() {
        let xs: Vec<f64> = samples.iter().map(|s| s[p]).collect();
        let mean = xs.iter().sum::<f64>() / draws as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (draws as f64 - 1.0)).sqrt();
        let se = sd / (draws as f64).sqrt();
        assert!(
            (mean - want).abs() < 5.0 * se,
            "pair {p}: mean {mean} vs exp(q.k/sqrt d) {want} (standard error {se})"
        );
    }
}

/// With many features FAVOR+ attention approaches exact softmax attention:
/// the error falls about as `1/sqrt(m)` (here from m = 16 to 4096: 16x more
/// features per step, so each step must cut the error at least 2.5x).
#[test]
fn favor_attention_approaches_softmax_attention() {
    type B = NdArray<f64>;
    let d = 8;
    let (q, k, v) = (
        randn::<B, 4>([1, 2, 30, d], 31, 0.4),
        randn::<B, 4>([1, 2, 30, d], 32, 0.4),
        randn::<B, 4>([1, 2, 30, 5], 33, 1.0),
    );
    let exact = softmax_attention(q.clone(), k.clone(), v.clone());
    let error = |m: usize| -> f64 {
        (0..8)
            .map(|s| {
                let map = FeatureMapConfig::new(d)
                    .with_nb_features(Some(m))
                    .init::<B>(500 + s, &Default::default());
                max_abs_diff(map.attend(q.clone(), k.clone(), v.clone()), exact.clone())
            })
            .sum::<f64>()
            / 8.0
    };
    let errors = [error(16), error(256), error(4096)];
    println!("mean max error at m = 16, 256, 4096: {errors:?}");
    assert!(
        errors[1] < errors[0] / 2.5 && errors[2] < errors[1] / 2.5 && errors[2] < 0.03,
        "mean max error at m = 16, 256, 4096: {errors:?}"
    );
}

/// The attention layers' cheaper features (up to cancelling factors) give
/// the output of the full features.
#[test]
fn up_to_scale_features_give_the_same_attention() {
    type B = NdArray<f64>;
    let map = FeatureMapConfig::new(8).init::<B>(4, &Default::default());
    let (q, k, v) = (
        randn::<B, 4>([2, 2, 12, 8], 61, 1.0),
        randn::<B, 4>([2, 2, 12, 8], 62, 1.0),
        randn::<B, 4>([2, 2, 12, 3], 63, 1.0),
    );
    let full = linear_attention(
        softmax_features(q.clone(), map.projection(), true),
        softmax_features(k.clone(), map.projection(), false),
        v.clone(),
    );
    let err = max_abs_diff(map.attend(q, k, v), full);
    assert!(err < 1e-12, "max error {err:e}");
}
