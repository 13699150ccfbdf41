//! The fused dense layer with its GEMMs split among rayon's threads (the
//! bundled binaries' setting, `relative_performer::threads::gemm_on_rayon`):
//! outputs and gradients against the plain ops in `f64`. A test binary of
//! its own, because matrixmultiply reads its thread count once per process.

#![cfg(feature = "ndarray")]

use burn::backend::Autodiff;
use burn::prelude::*;
use relative_performer::favor::host::{dense, gemm_on_rayon};

type N = burn::backend::NdArray<f32>;
type F64 = burn::backend::NdArray<f64>;

/// `[dims]` of smooth, non-trivial values (no generator needed).
fn values<B: Backend, const D: usize>(dims: [usize; D], phase: f64) -> Tensor<B, D> {
    let count = dims.iter().product::<usize>();
    let v: Vec<f64> = (0..count)
        .map(|i| (i as f64 * 0.618 + phase).sin() + 0.1 * ((i % 7) as f64 - 3.0))
        .collect();
    Tensor::<B, 1>::from_data(
        TensorData::new(v, [count]).convert::<B::FloatElem>(),
        &Default::default(),
    )
    .reshape(dims)
}

/// The output and the gradients of `x`, `W`, `b` of `sum(dense(x) * weights)`.
fn run<B: Backend>(dims: (usize, usize, usize, usize), fused: bool) -> Vec<Vec<f64>> {
    let (b, n, input, output) = dims;
    let x = values::<Autodiff<B>, 3>([b, n, input], 0.3).require_grad();
    let w = values::<Autodiff<B>, 2>([input, output], 1.1)
        .mul_scalar(0.2)
        .require_grad();
    let bias = values::<Autodiff<B>, 1>([output], 2.0).require_grad();
    let weights = values::<Autodiff<B>, 3>([b, n, output], 0.7);
    let y = if fused {
        dense(x.clone(), w.clone(), bias.clone())
            .unwrap_or_else(|_| panic!("ndarray f32 takes the fused dense layer"))
    } else {
        x.clone().matmul(w.clone().unsqueeze()) + bias.clone().unsqueeze()
    };
    let grads = (y.clone() * weights).sum().backward();
    let host = |d: TensorData| d.convert::<f64>().into_vec::<f64>().expect("f64");
    vec![
        host(y.inner().into_data()),
        host(x.grad(&grads).expect("dx").into_data()),
        host(w.grad(&grads).expect("dW").into_data()),
        host(bias.grad(&grads).expect("db").into_data()),
    ]
}

#[test]
fn split_gemms_equal_the_plain_ops_in_f64() {
    // SAFETY: set before the test touches matrixmultiply or rayon (this
    // binary's only test); nothing else reads the environment meanwhile.
    #[allow(unsafe_code)]
    unsafe {
        assert!(relative_performer::threads::gemm_on_rayon());
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", "2");
        }
    }
    assert!(gemm_on_rayon(), "the dense layers split their GEMMs");
    // rows that are not a multiple of the 256-row blocks, one block, fewer
    // rows than threads
    for dims in [
        (3, 1025, 32, 96),
        (2, 700, 128, 384),
        (1, 256, 40, 24),
        (1, 1, 16, 8),
    ] {
        let fused = run::<N>(dims, true);
        let plain = run::<N>(dims, false);
        let exact = run::<F64>(dims, false);
        let err = |got: &[f64], want: &[f64]| {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            got.iter()
                .zip(want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
                / scale
        };
        for (i, name) in ["y", "dx", "dW", "db"].iter().enumerate() {
            let (f, p) = (err(&fused[i], &exact[i]), err(&plain[i], &exact[i]));
            // as close to f64 as the plain ops in f32, to a few roundings
            // (or within f32 sums of 3,000 terms where those are exact)
            assert!(
                f <= (4.0 * p).max(1e-5),
                "{dims:?} {name}: fused {f:.1e}, plain {p:.1e} from f64"
            );
        }
    }
}
