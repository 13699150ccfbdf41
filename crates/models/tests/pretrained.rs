//! The shipped runs under `results/pretrained/<DATASET>/<MODEL>/`. Those
//! imported from the PyTorch reference (by `crates/models/tools/export_pytorch.py`
//! and `examples/import_pytorch.rs`) reproduce the reference: logits on the
//! first 16 test images within 1e-4 (`tests/fixtures/pretrained_logits.json`,
//! made by `tests/fixtures/generate_logits.py`), and accuracy on the whole
//! test split within 0.1 points of the reference's. Those trained in Rust,
//! which replace an imported run once they beat it, score the test accuracy
//! their `results.json` records. Needs MNIST and
//! FashionMNIST in the data folder (fetched here if needed, as the data
//! crate's tests do).

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use relperf_data::{DatasetName, Fetcher, ImageBatch, ImageBatcher, ImageSet, Split, md5_bytes};
use relperf_models::{ImageClassifier, ModelConfig, ModelKind, load_record};
use serde_json::Value;

type B = NdArray<f32>;

fn data_root() -> PathBuf {
    std::env::var_os("RELATIVE_PERFORMER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")))
}

fn pretrained() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../results/pretrained"
    ))
}

fn load(dataset: &str, kind: ModelKind) -> ImageClassifier<B> {
    let dir = pretrained().join(dataset).join(kind.as_str());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = ModelConfig::from_json(&config["model_config"].to_string()).unwrap();
    load_record::<B>(&cfg, &dir.join("checkpoints/best.mpk"), &Default::default()).unwrap()
}

fn test_set(dataset: DatasetName) -> ImageSet {
    let root = data_root();
    Fetcher::new(&root)
        .fetch(dataset)
        .unwrap_or_else(|e| panic!("these tests need {dataset}: {e}"));
    ImageSet::load(&root, dataset, Split::Test).unwrap()
}

fn batch(set: &ImageSet, from: usize, len: usize) -> ImageBatch<B> {
    let items = (from..from + len).map(|i| set.get(i).unwrap()).collect();
    ImageBatcher::for_set(set).batch(items, &Default::default())
}

/// The shipped run's `results.json`.
fn results_json(dataset: &str, kind: ModelKind) -> Value {
    let path = pretrained()
        .join(dataset)
        .join(kind.as_str())
        .join("results.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether the shipped run holds the reference's weights, imported (its
/// `config.json` has an `imported` section), rather than weights trained by
/// `relperf-train`, which replace an imported run once they beat it.
fn is_imported(dataset: &str, kind: ModelKind) -> bool {
    let path = pretrained()
        .join(dataset)
        .join(kind.as_str())
        .join("config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config.get("imported").is_some()
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/pretrained_logits.json")).unwrap()
}

#[test]
fn imported_models_reproduce_the_reference_logits() {
    let fx = fixture();
    let mut compared = 0;
    for (ds_name, ds) in [
        ("MNIST", DatasetName::Mnist),
        ("FashionMNIST", DatasetName::FashionMnist),
    ] {
        let first = test_set(ds).take(16);
        assert_eq!(
            md5_bytes(&first.to_bytes()),
            fx["images"][ds_name]["md5_uint8"].as_str().unwrap(),
            "{ds_name}: not the reference's images"
        );
        let images = batch(&first, 0, 16).images;
        for run in fx["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dataset"] == ds_name)
        {
            let kind: ModelKind = run["model"].as_str().unwrap().parse().unwrap();
            if !is_imported(ds_name, kind) {
                println!("{ds_name} {kind}: trained in Rust, not the reference's weights");
                continue;
            }
            compared += 1;
            let want: Vec<f32> = run["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got: Vec<f32> = load(ds_name, kind)
                .forward(images.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            println!(
                "{ds_name} {kind}: max |logit difference| {err:.2e} (largest logit {scale:.1})"
            );
            assert!(err < 1e-4, "{ds_name} {kind}: logits differ by {err:e}");
        }
    }
    assert!(compared > 0, "no imported run left to compare");
}

/// glibc keeps freed memory, as `relative_performer::allocator` sets it for
/// the bundled programs (this crate cannot depend on the facade): without
/// it burn-ndarray's large buffers cost a page fault per page on every op.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tuning parameters.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Accuracy on a whole test split, in batches.
fn accuracy(model: &ImageClassifier<B>, set: &ImageSet) -> f64 {
    keep_freed_memory();
    let n = set.len();
    let mut correct = 0usize;
    // batch 64: the first 1000 images of both datasets through all ten
    // models took 106 s, against 179 s at batch 500 (larger buffers: more
    // page faults per image)
    let size = 64;
    for from in (0..n).step_by(size) {
        let b = batch(set, from, size.min(n - from));
        let predicted = model.forward(b.images).argmax(1).reshape([-1]);
        correct += predicted
            .equal(b.targets)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize;
    }
    correct as f64 / n as f64
}

/// The reference measured each exported run on the first 1000 test images
/// (`results.json`, `check`, its own features, fp32): the imported models
/// score the same within 0.1 points (one image). Measured: all ten equal it
/// exactly. About 90 s on a 2-core CPU; CI runs this one, and the
/// whole-split test below only by hand.
#[test]
fn imported_models_score_the_reference_accuracy_on_1000_test_images() {
    for (ds_name, ds) in [
        ("MNIST", DatasetName::Mnist),
        ("FashionMNIST", DatasetName::FashionMnist),
    ] {
        let full = test_set(ds);
        let set = full.subset(&(0..1000).collect::<Vec<_>>());
        for kind in ModelKind::ALL {
            if !is_imported(ds_name, kind) {
                continue; // the next test
            }
            let results = results_json(ds_name, kind);
            let check = &results["check"];
            assert_eq!(check["n_images"].as_u64(), Some(1000), "{ds_name} {kind}");
            assert_eq!(check["split"].as_str(), Some("test"), "{ds_name} {kind}");
            let reference = check["accuracy"].as_f64().unwrap();
            let acc = accuracy(&load(ds_name, kind), &set);
            println!(
                "{ds_name} {kind}: accuracy on the first 1000 test images {:.1}% (reference {:.1}%)",
                100.0 * acc,
                100.0 * reference
            );
            assert!(
                (acc - reference).abs() <= 0.001 + 1e-9,
                "{ds_name} {kind}: {acc} vs the reference's {reference} on the first 1000 test images"
            );
        }
    }
}

/// The shipped runs trained in Rust (`results/training/README.md` says how)
/// score the test accuracy their `results.json` records (written by
/// `relperf-train` when the run ended) within 0.1 points over the whole test
/// split: about 100 s for FashionMNIST `ExactRelativePerformer`.
#[test]
fn rust_trained_models_score_their_recorded_accuracy() {
    for (ds_name, ds) in [
        ("MNIST", DatasetName::Mnist),
        ("FashionMNIST", DatasetName::FashionMnist),
    ] {
        for kind in ModelKind::ALL {
            if is_imported(ds_name, kind) {
                continue;
            }
            let results = results_json(ds_name, kind);
            let recorded = results["test_acc"].as_f64().unwrap();
            assert_eq!(results["test_n"].as_u64(), Some(10_000), "{ds_name} {kind}");
            let acc = accuracy(&load(ds_name, kind), &test_set(ds));
            println!(
                "{ds_name} {kind} (trained in Rust): test accuracy {:.2}% (recorded {:.2}%)",
                100.0 * acc,
                100.0 * recorded
            );
            assert!(
                (acc - recorded).abs() <= 0.001,
                "{ds_name} {kind}: {acc} vs the recorded {recorded}"
            );
        }
    }
}

/// The ten runs over their whole test split (100,000 images in all), each
/// within 0.1 points of the reference's test accuracy: 818 s on the 2-core
/// CPU (0322c3e), almost half of CI's 28.5 minutes, so it left CI's run
/// again (it was in it from b73bb5f to 0322c3e; all ten within 0.1 points):
/// `cargo test --release -p relperf-models --test pretrained -- --ignored`.
#[test]
#[ignore = "the whole test splits, about 14 minutes: run with --ignored"]
fn imported_models_score_the_reference_accuracy() {
    let fx = fixture();
    for (ds_name, ds) in [
        ("MNIST", DatasetName::Mnist),
        ("FashionMNIST", DatasetName::FashionMnist),
    ] {
        let set = test_set(ds);
        for kind in ModelKind::ALL {
            if !is_imported(ds_name, kind) {
                continue; // the test above
            }
            let results = results_json(ds_name, kind);
            let measured = fx["runs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["dataset"] == ds_name && r["model"] == kind.as_str())
                .and_then(|r| r["test_acc"].as_f64());
            let reference = measured.or(results["test_acc"].as_f64()).unwrap();
            let acc = accuracy(&load(ds_name, kind), &set);
            println!(
                "{ds_name} {kind}: test accuracy {:.2}% (reference {:.2}%)",
                100.0 * acc,
                100.0 * reference
            );
            assert!(
                (acc - reference).abs() <= 0.001,
                "{ds_name} {kind}: {acc} vs the reference's {reference}"
            );
        }
    }
}
