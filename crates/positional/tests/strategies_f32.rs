//! Every strategy through the one interface, in f32: shapes, batch
//! independence, record round trips, and strategy 2's translation
//! equivariance away from the borders for every draw.

use burn::backend::NdArray;
use burn::module::Module;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use relperf_favor::draw::Gaussian;
use relperf_favor::{FeatureMap, FeatureMapConfig};
use relperf_positional::clipped::{RelativeKeys, RelativeKeysConfig};
use relperf_positional::constrained::ConstrainedProjectionConfig;
use relperf_positional::grid::with_class_token;
use relperf_positional::periodic::PeriodicFactorConfig;
use relperf_positional::sinusoid::GridSinusoidConfig;
use relperf_positional::{AttentionInput, ContentOnly, LayerStrategy};

type B = NdArray<f32>;
const DIM: usize = 16;

fn randn<const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<B, D> {
    let mut g = Gaussian::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_data(
        TensorData::new(
            (0..n)
                .map(|_| (g.sample() * scale) as f32)
                .collect::<Vec<_>>(),
            shape,
        ),
        &Default::default(),
    )
}

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    (a - b).abs().max().into_scalar().elem::<f64>()
}

fn input(
    b: usize,
    h: usize,
    d: usize,
    height: usize,
    width: usize,
    seed: u64,
    positions: Option<Tensor<B, 4>>,
) -> AttentionInput<B> {
    let n = 1 + height * width;
    AttentionInput {
        q: randn([b, h, n, d], seed, 1.0),
        k: randn([b, h, n, d], seed + 1, 1.0),
        v: randn([b, h, n, d], seed + 2, 1.0),
        x: randn([b, n, DIM], seed + 3, 1.0),
        height,
        width,
        positions,
    }
}

/// Changes sample 1 of every input tensor.
fn perturb_sample_one(mut i: AttentionInput<B>) -> AttentionInput<B> {
    let [b, h, n, d] = i.q.dims();
    let big = randn([1, h, n, d], 99, 10.0);
    i.q = i.q.slice_assign([1..2, 0..h, 0..n, 0..d], big.clone());
    i.k = i.k.slice_assign([1..2, 0..h, 0..n, 0..d], big);
    i.x =
        i.x.slice_assign([1..2, 0..n, 0..DIM], randn([1, n, DIM], 98, 5.0));
    let _ = b;
    i
}

fn check<S: LayerStrategy<B>>(name: &str, strategy: &S, positions: Option<Tensor<B, 4>>, d: usize) {
    let (height, width, heads) = (4, 5, 4);
    let n = 1 + height * width;
    let map = FeatureMapConfig::new(d + strategy.qk_extra_dim()).init::<B>(3, &Default::default());
    for features in [Some(&map), None] {
        let inp = input(3, heads, d, height, width, 10, positions.clone());
        let out = strategy.attend(inp.clone(), features);
        assert_eq!(out.dims(), [3, heads, n, d], "{name}");
        assert!(
            out.clone().is_finite().all().into_scalar(),
            "{name}: non-finite output"
        );
        let changed = strategy.attend(perturb_sample_one(inp), features);
        for s in [0, 2] {
            let err = max_diff(out.clone().narrow(0, s, 1), changed.clone().narrow(0, s, 1));
            assert!(
                err < 1e-6,
                "{name} (favor: {}): sample {s} changed by {err:e}",
                features.is_some()
            );
        }
        assert!(
            max_diff(out.narrow(0, 1, 1), changed.narrow(0, 1, 1)) > 1e-3,
            "{name}: the perturbed sample did not change"
        );
    }
}

#[test]
fn every_strategy_through_the_interface() {
    let device = Default::default();
    let d = 8;
    check("content only", &ContentOnly, None, d);
    let positions = with_class_token(GridSinusoidConfig::new(2).init::<B>(&device).features(4, 5));
    for content in [false, true] {
        let s1 = ConstrainedProjectionConfig::new(DIM, 4, 2)
            .with_content_rel_attn(content)
            .init::<B>(&device);
        check("strategy 1", &s1, Some(positions.clone()), d);
        let p = PeriodicFactorConfig::new(DIM, 4, 3)
            .with_content_rel_attn(content)
            .init::<B>(&device);
        check("periodic", &p, None, d);
    }
    check(
        "strategy 2",
        &RelativeKeysConfig::new(4, d, 3).init::<B>(&device),
        None,
        d,
    );
}

fn round_trip<M: Module<B>>(module: M, fresh: M) -> M {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(module.into_record(), ()).unwrap();
    fresh.load_record(recorder.load(bytes, &Default::default()).unwrap())
}

#[test]
fn records_keep_the_strategies() {
    let device = Default::default();
    let d = 8;
    let map = FeatureMapConfig::new(d).init::<B>(5, &device);
    let inp = input(2, 4, d, 3, 4, 40, None);
    let p = PeriodicFactorConfig::new(DIM, 4, 2).init::<B>(&device);
    let loaded = round_trip(
        p.clone(),
        PeriodicFactorConfig::new(DIM, 4, 2).init::<B>(&device),
    );
    assert_eq!(
        p.attend(inp.clone(), Some(&map)).into_data(),
        loaded.attend(inp.clone(), Some(&map)).into_data()
    );
    let r = RelativeKeysConfig::new(4, d, 3).init::<B>(&device);
    let loaded = round_trip(
        r.clone(),
        RelativeKeysConfig::new(4, d, 3).init::<B>(&device),
    );
    assert_eq!(
        r.attend(inp.clone(), Some(&map)).into_data(),
        loaded.attend(inp, Some(&map)).into_data()
    );
}

/// Rolls the pixel tokens of `[b, h, n, d]` by `(dy, dx)` on the torus.
fn roll(t: Tensor<B, 4>, h: usize, w: usize, dy: usize, dx: usize) -> Tensor<B, 4> {
    let n = t.dims()[2];
    let mut index = vec![0i64];
    for y in 0..h {
        for x in 0..w {
            index.push((1 + ((y + h - dy) % h) * w + (x + w - dx) % w) as i64);
        }
    }
    t.select(
        2,
        Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &Default::default()),
    )
}

/// Strategy 2 is translation-equivariant away from the borders, for every
/// draw: after a roll, the pixels whose clipped window stays inside the
/// image in both places have the outputs of their sources.
#[test]
fn strategy_two_is_equivariant_away_from_the_borders() {
    let (h, w, c, d) = (9, 10, 3, 8);
    let keys: RelativeKeys<B> = RelativeKeysConfig::new(2, d, c).init(&Default::default());
    let inp = input(1, 2, d, h, w, 60, None);
    let (dy, dx) = (2, 3);
    let r = |t: Tensor<B, 4>| roll(t, h, w, dy, dx);
    let mut checked = 0;
    for seed in [1, 2] {
        let map: FeatureMap<B> = FeatureMapConfig::new(d).init(seed, &Default::default());
        let out = keys.attend(inp.clone(), Some(&map));
        let rolled = keys.attend(
            AttentionInput {
                q: r(inp.q.clone()),
                k: r(inp.k.clone()),
                v: r(inp.v.clone()),
                ..inp.clone()
            },
            Some(&map),
        );
        let interior = |y: usize, x: usize| y + 1 >= c && y + c <= h && x + 1 >= c && x + c <= w;
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = ((y + h - dy) % h, (x + w - dx) % w);
                if !(interior(y, x) && interior(sy, sx)) {
                    continue;
                }
                let a = rolled.clone().narrow(2, 1 + y * w + x, 1).narrow(1, 1, 1);
                let b = out.clone().narrow(2, 1 + sy * w + sx, 1).narrow(1, 1, 1);
                let err = max_diff(a, b);
                assert!(err < 1e-5, "draw {seed}, pixel ({y}, {x}): {err:e}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 18, "only {checked} interior pixels checked");
}
