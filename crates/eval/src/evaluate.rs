//! Loss and accuracy of a model on a set of images, in batches, without an
//! autodiff graph (call it with `model.valid()` on an autodiff backend).

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use relperf_data::{ImageBatch, ImageBatcher, ImageItem, ImageSet};
use relperf_models::{EmbeddingType, ImageClassifier};

use crate::error::Result;

/// Mean cross-entropy and accuracy over `n` images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy (natural log).
    pub loss: f64,
    /// Fraction of images classified right.
    pub accuracy: f64,
    /// Images evaluated.
    pub n: usize,
}

/// Per-image losses and hits of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Cross-entropy of each image.
    pub losses: Vec<f64>,
    /// Whether each image was classified right.
    pub correct: Vec<bool>,
}

/// The model's logits of a batch: bytes into a `lookup` embedding, the
/// normalised images otherwise.
pub fn logits<B: Backend>(model: &ImageClassifier<B>, batch: &ImageBatch<B>) -> Tensor<B, 2> {
    match (model.config().embedding_type, &batch.pixels) {
        (EmbeddingType::Lookup, Some(pixels)) => model.forward_bytes(pixels.clone()),
        (EmbeddingType::Lookup, None) => panic!("a lookup model needs a batcher with_pixels(true)"),
        _ => model.forward(batch.images.clone()),
    }
}

/// The batcher a model needs for `set` (with bytes for `lookup`).
pub fn batcher_for<B: Backend>(model: &ImageClassifier<B>, set: &ImageSet) -> ImageBatcher {
    ImageBatcher::for_set(set).with_pixels(model.config().embedding_type == EmbeddingType::Lookup)
}

/// Per-image cross-entropy `[b]` of `logits [b, classes]` against `targets [b]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, targets.reshape([b, 1]))
        .reshape([b])
        .neg()
}

/// Losses and hits of the images `indices` of `set`.
pub fn run_batch<B: Backend>(
    model: &ImageClassifier<B>,
    set: &ImageSet,
    batcher: &ImageBatcher,
    indices: &[usize],
    device: &B::Device,
) -> BatchOutcome {
    let items: Vec<ImageItem> = indices.iter().filter_map(|&i| set.get(i)).collect();
    let batch: ImageBatch<B> = batcher.batch(items, device);
    let logits = logits(model, &batch);
    let predicted = logits.clone().argmax(1).reshape([indices.len()]);
    let correct = predicted
        .equal(batch.targets.clone())
        .into_data()
        .iter::<bool>()
        .collect();
    let losses = cross_entropy(logits, batch.targets)
        .into_data()
        .iter::<f64>()
        .collect();
    BatchOutcome { losses, correct }
}

/// Loss and accuracy of `model` on `set` in batches of `batch_size`, at most
/// `max_batches` of them (`None`: all), calling `progress(done, total)` after
/// each batch. The images must fit the model (checked first).
pub fn evaluate<B: Backend>(
    model: &ImageClassifier<B>,
    set: &ImageSet,
    batch_size: usize,
    max_batches: Option<usize>,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Metrics> {
    let (c, h, w) = set.shape();
    model.check_input(c, h, w)?;
    let batcher = batcher_for(model, set);
    let batch_size = batch_size.max(1);
    let mut total = set.len().div_ceil(batch_size);
    if let Some(m) = max_batches {
        total = total.min(m);
    }
    let (mut loss, mut hits, mut n) = (0.0f64, 0usize, 0usize);
    for b in 0..total {
        let indices: Vec<usize> = (b * batch_size..((b + 1) * batch_size).min(set.len())).collect();
        let out = run_batch(model, set, &batcher, &indices, device);
        loss += out.losses.iter().sum::<f64>();
        hits += out.correct.iter().filter(|&&c| c).count();
        n += indices.len();
        progress(b + 1, total);
    }
    let n_f = n.max(1) as f64;
    Ok(Metrics {
        loss: loss / n_f,
        accuracy: hits as f64 / n_f,
        n,
    })
}
