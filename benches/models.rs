//! The five models at the seed's defaults (`dim 128`, `depth 4`, `heads 4`,
//! batch 16 of 1x32x32 images, fp32): one training step (forward,
//! cross-entropy, backward, global-norm clipping at 0.5 and the Adam step,
//! as `relperf-train` does) and inference (`model.valid()` forward), on
//! every CPU backend compiled in (and on wgpu when `RELPERF_BENCH_WGPU=1`).
//!
//! Groups are `<backend>/<model>`, ids `train_step/b16_1x32x32` and
//! `inference/b16_1x32x32`; throughput is in images.
//!
//! ```text
//! cargo bench --bench models                                # ndarray
//! cargo bench --features flex --bench models              # ndarray and flex
//! cargo bench --bench models -- 'ndarray/Performer/'        # exactly one model
//! ```

use std::hint::black_box;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::eval::evaluate::cross_entropy;
use relative_performer::models::{ModelConfig, ModelKind};
use relative_performer::train::optim::{adam, clip_grad_norm};

const BATCH: usize = 16;
const SIDE: usize = 32;
const CLASSES: usize = 10;
const LEARNING_RATE: f64 = 1e-4;
const CLIP: f64 = 0.5;

struct ModelBench<'a> {
    c: &'a mut Criterion,
    kind: BackendKind,
}

impl BackendTask for ModelBench<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) {
        type A<B> = Autodiff<B>;
        let id = format!("b{BATCH}_1x{SIDE}x{SIDE}");
        for model_kind in ModelKind::ALL {
            let mut group =
                self.c
                    .benchmark_group(format!("{}/{}", self.kind, model_kind.as_str()));
            group.sample_size(10);
            group.throughput(Throughput::Elements(BATCH as u64));
            let config = ModelConfig::new(model_kind);

            B::seed(&device, 0);
            let images =
                Tensor::<A<B>, 4>::random([BATCH, 1, SIDE, SIDE], Distribution::Default, &device);
            let targets = Tensor::<A<B>, 1, Int>::from_data(
                TensorData::new(
                    (0..BATCH as i64).map(|i| i % CLASSES as i64).collect(),
                    [BATCH],
                ),
                &device,
            );
            let mut model = Some(
                config
                    .init::<A<B>>(0, &device)
                    .unwrap_or_else(|e| panic!("{}: {e}", model_kind.as_str())),
            );
            let mut optimizer = adam::<A<B>, _>();
            group.bench_function(BenchmarkId::new("train_step", &id), |b| {
                b.iter(|| {
                    let m = model.take().expect("model");
                    let loss = cross_entropy(m.forward(images.clone()), targets.clone()).mean();
                    let mut grads = GradientsParams::from_grads(loss.backward(), &m);
                    clip_grad_norm::<A<B>, _>(&m, &mut grads, CLIP);
                    let m = optimizer.step(LEARNING_RATE, m, grads);
                    B::sync(&device).expect("device sync");
                    model = Some(m);
                })
            });

            let inference = model.take().expect("model").valid();
            let images = images.inner();
            group.bench_function(BenchmarkId::new("inference", &id), |b| {
                b.iter(|| {
                    let logits = inference.forward(images.clone());
                    B::sync(&device).expect("device sync");
                    black_box(logits);
                })
            });
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
        run_on(kind, ModelBench { c, kind }).expect("compiled backend");
    }
}

criterion_group!(benches, bench);
mod common;

fn main() {
    common::main(benches);
}
