//! Loads a dataset with `relperf-data` and runs one pass of a Burn data
//! loader over it, on any compiled backend:
//!
//! ```text
//! cargo run --release --example data_loader -- --dataset FashionMNIST --split val
//! cargo run --release --features flex --example data_loader -- --backend flex
//! ```
//!
//! It fetches the data if needed (same routes as `relperf-data fetch`),
//! prints the first batch's tensor shapes and the images per second of the
//! whole pass.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::prelude::*;
use clap::Parser;
use relative_performer::backend::{BackendKind, BackendTask, run_on};
use relative_performer::data::split::{DEFAULT_SPLIT_SEED, DEFAULT_VAL_SIZE, train_val_indices};
use relative_performer::data::{
    DatasetName, Fetcher, ImageBatch, ImageBatcher, ImageSet, Split, resolve_root,
};

#[derive(Debug, Parser)]
struct Args {
    /// MNIST, FashionMNIST or CIFAR10.
    #[arg(long, default_value = "MNIST")]
    dataset: DatasetName,
    /// train (55,000 or 45,000 images), val (5,000) or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Burn backend among those compiled in.
    #[arg(long, default_value_t = BackendKind::default().to_string())]
    backend: String,
    /// Data folder (default: $RELATIVE_PERFORMER_DATA, else ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct Pass {
    set: ImageSet,
    batch_size: usize,
}

impl BackendTask for Pass {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) {
        let n = self.set.len();
        let loader = DataLoaderBuilder::<B, _, _>::new(ImageBatcher::for_set(&self.set))
            .batch_size(self.batch_size)
            .set_device(device)
            .build(self.set);
        let start = Instant::now();
        let mut counts = [0usize; 10];
        for (i, batch) in loader.iter().enumerate() {
            let batch: ImageBatch<B> = batch;
            if i == 0 {
                println!(
                    "first batch: images {:?}, targets {:?}",
                    batch.images.dims(),
                    batch.targets.dims()
                );
            }
            for t in batch.targets.into_data().iter::<i64>() {
                counts[t as usize] += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{n} images in {secs:.2} s ({:.0} images/s); per class {counts:?}",
            n as f64 / secs
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kind: BackendKind = match args.backend.parse() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let root = resolve_root(args.data_dir.as_deref());
    let load = || -> relative_performer::data::Result<ImageSet> {
        let report = Fetcher::new(&root).fetch(args.dataset)?;
        println!("{}: {}", args.dataset, report.route);
        let split = if args.split == "test" {
            Split::Test
        } else {
            Split::Train
        };
        let set = ImageSet::load(&root, args.dataset, split)?;
        Ok(match args.split.as_str() {
            "test" | "train-all" => set,
            "val" | "train" => {
                let (train, val) =
                    train_val_indices(set.len(), DEFAULT_VAL_SIZE, DEFAULT_SPLIT_SEED);
                set.subset(if args.split == "val" { &val } else { &train })
            }
            other => {
                return Err(relative_performer::data::DataError::UnknownSplit(
                    other.to_string(),
                ));
            }
        })
    };
    let set = match load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "{} {} images of {:?} on {kind}",
        set.len(),
        args.split,
        set.shape()
    );
    match run_on(
        kind,
        Pass {
            set,
            batch_size: args.batch_size,
        },
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
