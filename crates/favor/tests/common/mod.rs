//! Helpers shared by the reference tests: seeded inputs, the textbook
//! features and the quadratic reference.
#![allow(dead_code)]

use burn::prelude::*;
use burn::tensor::activation::relu;
use relperf_favor::draw::Gaussian;
use relperf_favor::features::{RELU_EPS, half_sq_norm, projection_logits};
use relperf_favor::{FeatureMapConfig, Kernel};

/// A seeded standard-normal tensor times `scale`.
pub fn randn<B: Backend, const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<B, D> {
    let mut g = Gaussian::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| g.sample() * scale).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

/// The textbook features, without any stabiliser:
/// `m^-1/2 exp(W x' - |x'|^2 / 2)` (softmax) or `relu(W x') + eps`.
pub fn textbook_features<B: Backend>(
    kernel: Kernel,
    x: Tensor<B, 4>,
    w: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let m = w.dims()[0] as f64;
    match kernel {
        Kernel::Softmax => (projection_logits(x.clone(), w) - half_sq_norm(x))
            .exp()
            .mul_scalar(m.powf(-0.5)),
        Kernel::Relu => relu(projection_logits(x, w)).add_scalar(RELU_EPS),
    }
}

/// The quadratic reference: the `n x j` kernel matrix `A = phi(Q) phi(K)^T`
/// made explicit, then `A V / A 1`.
pub fn quadratic<B: Backend>(
    kernel: Kernel,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    w: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let a = textbook_features(kernel, q, w.clone())
        .matmul(textbook_features(kernel, k, w).swap_dims(2, 3));
    let rows = a.clone().sum_dim(3);
    a.matmul(v) / rows
}

pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    (a - b).abs().max().into_scalar().elem::<f64>()
}

pub fn max_abs<B: Backend, const D: usize>(a: Tensor<B, D>) -> f64 {
    a.abs().max().into_scalar().elem::<f64>()
}

/// Relative max error of outputs and of the gradients of `sum(out * g)`
/// with respect to q, k and v: fast path vs quadratic reference.
pub fn compare<B: burn::tensor::backend::AutodiffBackend>(
    kernel: Kernel,
    shape: [usize; 4],
    m: usize,
) -> [f64; 4] {
    let [b, h, n, d] = shape;
    let map = FeatureMapConfig::new(d)
        .with_nb_features(Some(m))
        .with_kernel(kernel)
        .init::<B>(3, &Default::default());
    let run = |fast: bool| {
        let q = randn::<B, 4>(shape, 10, 0.7).require_grad();
        let k = randn::<B, 4>([b, h, n + 3, d], 11, 0.7).require_grad();
        let v = randn::<B, 4>([b, h, n + 3, d + 1], 12, 1.0).require_grad();
        let out = if fast {
            map.attend(q.clone(), k.clone(), v.clone())
        } else {
            quadratic(kernel, q.clone(), k.clone(), v.clone(), map.projection())
        };
        let g = randn::<B, 4>([b, h, n, d + 1], 13, 1.0);
        let grads = (out.clone() * g).sum().backward();
        (
            out.inner(),
            q.grad(&grads).unwrap(),
            k.grad(&grads).unwrap(),
            v.grad(&grads).unwrap(),
        )
    };
    let (o1, q1, k1, v1) = run(true);
    let (o2, q2, k2, v2) = run(false);
    let rel = |a: Tensor<B::InnerBackend, 4>, b: Tensor<B::InnerBackend, 4>| {
        max_abs_diff(a, b.clone()) / max_abs(b).max(1e-30)
    };
    [rel(o1, o2), rel(q1, q2), rel(k1, k2), rel(v1, v2)]
}
