//! Each attention of the five models, alone, forward and forward+backward,
//! at 16x16, 32x32, 64x64 and 128x128 pixel tokens (plus the class token),
//! on every CPU backend compiled in (and on wgpu when
//! `RELPERF_BENCH_WGPU=1`, for a machine with a GPU).
//!
//! One attention layer at the seed's defaults (`dim 128`, `heads 4`, head
//! dim 32, `int(d ln d)` random features, fp32) on a batch of 2 token
//! sequences, its projections and output layer included:
//!
//! | group `<backend>/<op>` | the layer |
//! |---|---|
//! | `favor_softmax` | FAVOR+ positive softmax features (`Performer`, `NoposPerformer`) |
//! | `favor_relu` | FAVOR+ with the generalised ReLU kernel (`kernel relu`) |
//! | `strategy1` | rotation-constrained projections (`RelativePerformer`) |
//! | `strategy2` | clipped relative keys in linear time (`ClippedRelativePerformer`) |
//! | `exact_periodic` | FAVOR+ times the exact periodic factor (`ExactRelativePerformer`) |
//! | `softmax_exact` | exact softmax attention through Burn's `attention` op: the quadratic baseline (q, k, v only; up to 64x64, whose logits already take 268 MB a sample) |
//!
//! Benchmark ids are `forward/<side>x<side>` and
//! `forward_backward/<side>x<side>`; throughput is in tokens.
//!
//! ```text
//! cargo bench --bench attention                              # ndarray
//! cargo bench --features flex --bench attention -- flex/     # flex only
//! cargo bench --bench attention -- 'favor_softmax/forward/'  # one op
//! ```

use std::hint::black_box;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::favor::Kernel;
use relative_performer::models::{ImageClassifier, ModelConfig, ModelKind};
use relative_performer::positional::grid::with_class_token;

const BATCH: usize = 2;
const DIM: usize = 128;
const HEADS: usize = 4;
const SIDES: [usize; 4] = [16, 32, 64, 128];
/// Exact softmax attention stops here: at 128x128 its logits alone would
/// take 4.3 GB a head and sample.
const EXACT_MAX_SIDE: usize = 64;

/// The attentions benchmarked, by group name.
#[derive(Debug, Clone, Copy)]
enum Op {
    FavorSoftmax,
    FavorRelu,
    Strategy1,
    Strategy2,
    ExactPeriodic,
    SoftmaxExact,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::FavorSoftmax,
        Op::FavorRelu,
        Op::Strategy1,
        Op::Strategy2,
        Op::ExactPeriodic,
        Op::SoftmaxExact,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::FavorSoftmax => "favor_softmax",
            Op::FavorRelu => "favor_relu",
            Op::Strategy1 => "strategy1",
            Op::Strategy2 => "strategy2",
            Op::ExactPeriodic => "exact_periodic",
            Op::SoftmaxExact => "softmax_exact",
        }
    }

    /// The one-layer model whose attention this op is (`None` for the
    /// exact softmax baseline, which runs Burn's op on q, k, v).
    fn config(self) -> Option<ModelConfig> {
        let (kind, kernel) = match self {
            Op::FavorSoftmax => (ModelKind::NoposPerformer, Kernel::Softmax),
            Op::FavorRelu => (ModelKind::NoposPerformer, Kernel::Relu),
            Op::Strategy1 => (ModelKind::RelativePerformer, Kernel::Softmax),
            Op::Strategy2 => (ModelKind::ClippedRelativePerformer, Kernel::Softmax),
            Op::ExactPeriodic => (ModelKind::ExactRelativePerformer, Kernel::Softmax),
            Op::SoftmaxExact => return None,
        };
        Some(ModelConfig {
            depth: 1,
            dim: DIM,
            heads: HEADS,
            kernel,
            ..ModelConfig::new(kind)
        })
    }
}

/// One attention layer ready to run on `[BATCH, 1 + side^2, DIM]` tokens.
struct Layer<B: Backend> {
    model: Option<ImageClassifier<B>>,
    side: usize,
}

impl<B: Backend> Layer<B> {
    fn new(op: Op, side: usize, device: &B::Device) -> Self {
        let model = op.config().map(|c| {
            c.init::<B>(0, device)
                .unwrap_or_else(|e| panic!("{}: {e}", op.name()))
        });
        Layer { model, side }
    }

    fn tokens(&self) -> usize {
        1 + self.side * self.side
    }

    /// The layer's output for `x [BATCH, n, DIM]`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let side = self.side;
        match &self.model {
            Some(model) => {
                let positions = model
                    .grid
                    .as_ref()
                    .map(|g| with_class_token(g.features(side, side)));
                model.blocks[0].attn.forward(x, side, side, positions)
            }
            None => {
                let n = self.tokens();
                let d = DIM / HEADS;
                let heads = x.reshape([BATCH, n, HEADS, d]).swap_dims(1, 2);
                let out = attention(
                    heads.clone(),
                    heads.clone(),
                    heads,
                    None,
                    None,
                    AttentionModuleOptions::default(),
                );
                out.swap_dims(1, 2).reshape([BATCH, n, DIM])
            }
        }
    }
}

struct AttentionBench<'a> {
    c: &'a mut Criterion,
    kind: BackendKind,
}

impl BackendTask for AttentionBench<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) {
        for op in Op::ALL {
            let mut group = self
                .c
                .benchmark_group(format!("{}/{}", self.kind, op.name()));
            group.sample_size(10);
            for side in SIDES {
                if matches!(op, Op::SoftmaxExact) && side > EXACT_MAX_SIDE {
                    continue;
                }
                let id = format!("{side}x{side}");
                let n = 1 + side * side;
                group.throughput(Throughput::Elements((BATCH * n) as u64));

                let layer = Layer::<B>::new(op, side, &device);
                let x = Tensor::<B, 3>::random([BATCH, n, DIM], Distribution::Default, &device);
                group.bench_function(BenchmarkId::new("forward", &id), |b| {
                    b.iter(|| {
                        let out = layer.forward(x.clone());
                        B::sync(&device).expect("device sync");
                        black_box(out);
                    })
                });
                drop(layer);

                let layer = Layer::<Autodiff<B>>::new(op, side, &device);
                let x = Tensor::<Autodiff<B>, 3>::random(
                    [BATCH, n, DIM],
                    Distribution::Default,
                    &device,
                )
                .require_grad();
                group.bench_function(BenchmarkId::new("forward_backward", &id), |b| {
                    b.iter(|| {
                        let grads = layer.forward(x.clone()).sum().backward();
                        B::sync(&device).expect("device sync");
                        black_box(grads);
                    })
                });
            }
            group.finish();
        }
    }
}

fn bench(c: &mut Criterion) {
    relative_performer::allocator::keep_freed_memory();
    let gpu = std::env::var("RELPERF_BENCH_WGPU").is_ok_and(|v| v == "1");
    for kind in BackendKind::compiled() {
        if kind == BackendKind::Wgpu && !gpu {
            continue;
        }
        run_on(kind, AttentionBench { c, kind }).expect("compiled backend");
    }
}

criterion_group!(benches, bench);
mod common;

fn main() {
    common::main(benches);
}
