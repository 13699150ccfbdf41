//! The data loader alone: MNIST test images per second from the in-memory
//! set to a batch of tensors, on every CPU backend compiled in (and on
//! wgpu when `RELPERF_BENCH_WGPU=1`, for a machine with a GPU). It shows
//! that loading is never what a training step waits for.
//!
//! ```text
//! cargo bench --bench data                    # ndarray
//! cargo bench --features flex --bench data    # ndarray and flex
//! ```
//!
//! Needs MNIST in the data folder (`$RELATIVE_PERFORMER_DATA`, else
//! `./data`; `cargo run --release -p relperf-data-cli -- fetch MNIST`).

use std::hint::black_box;

use burn::data::dataloader::DataLoaderBuilder;
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::data::{
    DatasetName, Fetcher, ImageBatch, ImageBatcher, ImageSet, Split, resolve_root,
};

const IMAGES: usize = 1024;

struct LoaderBench<'a> {
    c: &'a mut Criterion,
    set: ImageSet,
    kind: BackendKind,
}

impl BackendTask for LoaderBench<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) {
        let mut group = self.c.benchmark_group(format!("{}/data_loader", self.kind));
        group.throughput(Throughput::Elements(IMAGES as u64));
        for batch_size in [16usize, 64] {
            let loader = DataLoaderBuilder::<B, _, _>::new(ImageBatcher::for_set(&self.set))
                .batch_size(batch_size)
                .set_device(device.clone())
                .build(self.set.clone());
            group.bench_with_input(
                BenchmarkId::new("mnist_1x32x32", batch_size),
                &batch_size,
                |b, _| {
                    b.iter(|| {
                        for batch in loader.iter() {
                            let batch: ImageBatch<B> = batch;
                            black_box(batch.images);
                        }
                        B::sync(&device).expect("device sync");
                    })
                },
            );
        }
        group.finish();
    }
}

fn bench(c: &mut Criterion) {
    let root = resolve_root(None);
    if let Err(e) = Fetcher::new(&root).fetch(DatasetName::Mnist) {
        panic!("the data-loader bench needs MNIST: {e}");
    }
    let set = ImageSet::load(&root, DatasetName::Mnist, Split::Test)
        .expect("MNIST test split")
        .take(IMAGES);
    let gpu = std::env::var("RELPERF_BENCH_WGPU").is_ok_and(|v| v == "1");
    for kind in BackendKind::compiled() {
        if kind == BackendKind::Wgpu && !gpu {
            continue;
        }
        run_on(
            kind,
            LoaderBench {
                c,
                set: set.clone(),
                kind,
            },
        )
        .expect("compiled backend");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
