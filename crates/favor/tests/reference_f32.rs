//! FAVOR+ in f32, the precision models train in: outputs and gradients
//! against the quadratic reference, batch independence, overflow,
//! determinism, redraws, record round trips, frozen features.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use common::*;
use relperf_favor::features::softmax_features;
use relperf_favor::{FeatureMapConfig, Kernel};

type B32 = Autodiff<NdArray<f32>>;

#[test]
fn linear_attention_equals_the_quadratic_kernel_matrix_f32() {
    for kernel in [Kernel::Softmax, Kernel::Relu] {
        let err = compare::<B32>(kernel, [2, 2, 33, 16], 44);
        println!("{kernel:?}: relative max errors of output, dq, dk, dv: {err:?}");
        assert!(
            err.iter().all(|&e| e < 2e-4),
            "{kernel:?}: output, dq, dk, dv relative errors {err:?}"
        );
    }
}

/// The key stabiliser is per (sample, head): changing one sample (even by
/// making its keys huge, which would shift a stabiliser taken over the
/// batch by hundreds) leaves the others' outputs as they were, to rounding.
/// (Within rounding rather than bit for bit: burn-ndarray's elementwise
/// kernels may take SIMD or scalar paths depending on buffer alignment.)
#[test]
fn samples_are_independent() {
    type B = NdArray<f32>;
    let map = FeatureMapConfig::new(8).init::<B>(9, &Default::default());
    let q = randn::<B, 4>([3, 2, 20, 8], 41, 1.0);
    let k = randn::<B, 4>([3, 2, 20, 8], 42, 1.0);
    let v = randn::<B, 4>([3, 2, 20, 8], 43, 1.0);
    let out = map.attend(q.clone(), k.clone(), v.clone());
    let again = map.attend(q.clone(), k.clone(), v.clone());
    let noise = max_abs_diff(out.clone(), again);
    assert!(noise < 1e-6, "two identical calls differ by {noise:e}");
    let k2 = k.clone().slice_assign(
        [1..2, 0..2, 0..20, 0..8],
        randn::<B, 4>([1, 2, 20, 8], 44, 30.0),
    );
    let out2 = map.attend(q, k2, v);
    for s in [0usize, 2] {
        let err = max_abs_diff(out.clone().narrow(0, s, 1), out2.clone().narrow(0, s, 1));
        assert!(err < 1e-6, "sample {s} changed by {err:e}");
    }
    let changed = max_abs_diff(out.narrow(0, 1, 1), out2.narrow(0, 1, 1));
    assert!(
        changed > 1e-2,
        "the changed sample did not change ({changed:e})"
    );
}

/// Extreme inputs give finite, positive features and finite outputs.
#[test]
fn stabilisers_prevent_overflow() {
    type B = NdArray<f32>;
    let map = FeatureMapConfig::new(8).init::<B>(2, &Default::default());
    let x = randn::<B, 4>([2, 1, 16, 8], 51, 40.0);
    for is_query in [true, false] {
        let f = map.features(x.clone(), is_query);
        assert!(
            f.clone().is_finite().all().into_scalar(),
            "non-finite features"
        );
        assert!(f.clone().greater_equal_elem(0.0).all().into_scalar());
        let full = softmax_features(x.clone(), map.projection(), is_query);
        assert!(full.is_finite().all().into_scalar());
    }
    let out = map.attend(x.clone(), x.clone(), x);
    assert!(out.is_finite().all().into_scalar());
}

#[test]
fn draws_are_seeded_and_redraws_deterministic() {
    type B = NdArray<f32>;
    let cfg = FeatureMapConfig::new(8);
    let (a, b, c) = (
        cfg.init::<B>(7, &Default::default()),
        cfg.init::<B>(7, &Default::default()),
        cfg.init::<B>(8, &Default::default()),
    );
    assert_eq!(a.projection().into_data(), b.projection().into_data());
    assert_ne!(a.projection().into_data(), c.projection().into_data());
    assert_eq!((a.seed(), a.draw_index(), a.nb_features()), (7, 0, 16));
    let twice = a.clone().redraw().redraw();
    assert_eq!(twice.draw_index(), 2);
    assert_eq!(
        twice.projection().into_data(),
        cfg.init::<B>(7, &Default::default())
            .with_draw(7, 2)
            .projection()
            .into_data()
    );
    assert_ne!(twice.projection().into_data(), a.projection().into_data());
    // seeds beyond 32 bits survive the limbs
    let big = cfg
        .init::<B>(u64::MAX - 12345, &Default::default())
        .with_draw(0x3fff_ffff_ffff_fff1, 70_000);
    assert_eq!(
        (big.seed(), big.draw_index()),
        (0x3fff_ffff_ffff_fff1, 70_000)
    );
}

/// A record keeps the features: a map loaded into one of another seed has
/// the saved projection, seed and draw index, and gives the same outputs.
#[test]
fn records_keep_the_features() {
    type B = NdArray<f32>;
    let device = Default::default();
    let cfg = FeatureMapConfig::new(8).with_kernel(Kernel::Relu);
    let map = cfg.init::<B>(11, &device).redraw();
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(map.clone().into_record(), ()).unwrap();
    let loaded = cfg
        .init::<B>(99, &device)
        .load_record(recorder.load(bytes, &device).unwrap());
    assert_eq!((loaded.seed(), loaded.draw_index()), (11, 1));
    assert_eq!(
        loaded.projection().into_data(),
        map.projection().into_data()
    );
    let x = randn::<B, 4>([1, 2, 10, 8], 71, 1.0);
    assert_eq!(
        loaded.attend(x.clone(), x.clone(), x.clone()).into_data(),
        map.attend(x.clone(), x.clone(), x).into_data()
    );
}

/// The projection is frozen: no gradient reaches it.
#[test]
fn the_projection_gets_no_gradient() {
    let map = FeatureMapConfig::new(4).init::<B32>(1, &Default::default());
    let x = randn::<B32, 4>([1, 1, 5, 4], 81, 1.0).require_grad();
    let grads = map.attend(x.clone(), x.clone(), x.clone()).sum().backward();
    assert!(x.grad(&grads).is_some());
    assert!(map.projection().grad(&grads).is_none());
}
