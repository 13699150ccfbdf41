//! `test-shifted`: accuracy on shifted test images, the protocol of the
//! original `test_shifted.py` (as the reference's `evaluation/shifted.py`).
//!
//! For each run and each shift `s` in `-min_shift..=min_shift`: the test
//! images with a chosen label and at least `min_shift` empty columns (rows
//! for `y`) on both sides ([`relperf_data::shift`]) are rolled by `s`
//! pixels, and the mean and the population standard deviation (`ddof 0`)
//! over the images of the accuracy (0 or 1 per image) and of the
//! cross-entropy are reported, one row per shift ([`SHIFT_COLUMNS`]).
//!
//! A feature seed evaluates with freshly drawn random features
//! ([`ImageClassifier::with_feature_seed`]) instead of the checkpoint's own.

use burn::prelude::*;
use relperf_data::shift::{select_shiftable, shifted};
use relperf_data::{Axis, DatasetName, ImageSet, Labels};
use relperf_models::ImageClassifier;

use crate::error::{Result, RunError};
use crate::evaluate::{batcher_for, run_batch};
use crate::table::{Cell, Record};
use crate::test_run::{DataCache, EvalSplit, LoadedRun};

/// The columns of `test-shifted`, the reference's.
pub const SHIFT_COLUMNS: [&str; 13] = [
    "run_dir",
    "model",
    "dataset",
    "axis",
    "shift",
    "n_images",
    "accuracy_mean",
    "accuracy_std",
    "loss_mean",
    "loss_std",
    "labels",
    "min_shift",
    "feature_seed",
];

/// What `test-shifted` measures.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftOptions {
    /// The labels kept.
    pub labels: Labels,
    /// The largest shift, both ways.
    pub min_shift: usize,
    /// Columns (`x`) or rows (`y`).
    pub axis: Axis,
    /// Only the first this many qualifying images, in file order.
    pub max_images: Option<usize>,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl ShiftOptions {
    /// The shifts: `-min_shift..=min_shift`.
    pub fn shifts(&self) -> impl Iterator<Item = i64> + use<> {
        let m = self.min_shift as i64;
        -m..=m
    }
}

/// Mean and population standard deviation (`ddof 0`) of `values`; NaN
/// for none.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The feature draws to evaluate, as the reference: the checkpoint's own
/// (`None`), then one per `--feature-seed`; with `--redraw-features`, only
/// the given seeds, or one `random` seed if none is given.
pub fn feature_draws(
    seeds: &[u64],
    redraw: bool,
    random: impl FnOnce() -> u64,
) -> Vec<Option<u64>> {
    match (redraw, seeds.is_empty()) {
        (true, true) => vec![Some(random())],
        (true, false) => seeds.iter().copied().map(Some).collect(),
        (false, _) => std::iter::once(None)
            .chain(seeds.iter().copied().map(Some))
            .collect(),
    }
}

/// Checks that `run` can be shift-tested (MNIST or FashionMNIST).
pub fn check_shiftable<B: Backend>(run: &LoadedRun<B>) -> Result<DatasetName> {
    let dataset = run.dataset()?;
    if !dataset.shiftable() {
        return Err(RunError::usage(format!(
            "test-shifted supports MNIST and FashionMNIST only; {} was trained on {dataset}",
            run.run.path.display()
        )));
    }
    Ok(dataset)
}

/// The qualifying test images of `run`'s dataset, in file order (the first
/// `max_images` of them), checked against the model.
pub fn shift_set<B: Backend>(
    run: &LoadedRun<B>,
    cache: &mut DataCache,
    opts: &ShiftOptions,
) -> Result<ImageSet> {
    check_shiftable(run)?;
    run.check_fits()?;
    let test = cache.split(run, EvalSplit::Test)?;
    let (c, h, w) = test.shape();
    run.model.check_input(c, h, w)?;
    let mut picked = select_shiftable(&test, &opts.labels, opts.min_shift, opts.axis)?;
    if let Some(m) = opts.max_images {
        picked.truncate(m);
    }
    Ok(test.subset(&picked))
}

/// Per-image losses and hits of `model` on `set`.
pub fn per_image<B: Backend>(
    model: &ImageClassifier<B>,
    set: &ImageSet,
    batch_size: usize,
    device: &B::Device,
) -> (Vec<f64>, Vec<f64>) {
    let batcher = batcher_for(model, set);
    let (mut losses, mut hits) = (Vec::new(), Vec::new());
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let out = run_batch(model, set, &batcher, chunk, device);
        losses.extend(out.losses);
        hits.extend(out.correct.iter().map(|&c| if c { 1.0 } else { 0.0 }));
    }
    (losses, hits)
}

/// One row per shift for `run` with its own features (`feature_seed`
/// `None`) or features drawn from the seed; `progress` gets each row as it
/// is made.
pub fn shifted_rows<B: Backend>(
    run: &LoadedRun<B>,
    set: &ImageSet,
    opts: &ShiftOptions,
    feature_seed: Option<u64>,
    device: &B::Device,
    mut progress: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    let model = match feature_seed {
        Some(seed) => run.model.clone().with_feature_seed(seed),
        None => run.model.clone(),
    };
    let mut rows = Vec::new();
    for shift in opts.shifts() {
        let images = shifted(set, opts.axis, shift);
        let (losses, hits) = per_image(&model, &images, opts.batch_size, device);
        let (acc_mean, acc_std) = mean_std(&hits);
        let (loss_mean, loss_std) = mean_std(&losses);
        let mut row = Record::new();
        row.insert("run_dir".into(), run.run.path.display().to_string().into());
        row.insert("model".into(), run.config.model.as_str().into());
        row.insert("dataset".into(), run.config.dataset.clone().into());
        row.insert("axis".into(), opts.axis.to_string().into());
        row.insert("shift".into(), shift.into());
        row.insert("n_images".into(), set.len().into());
        row.insert("accuracy_mean".into(), acc_mean.into());
        row.insert("accuracy_std".into(), acc_std.into());
        row.insert("loss_mean".into(), loss_mean.into());
        row.insert("loss_std".into(), loss_std.into());
        row.insert("labels".into(), opts.labels.to_string().into());
        row.insert("min_shift".into(), opts.min_shift.into());
        row.insert(
            "feature_seed".into(),
            feature_seed.map_or(Cell::Empty, |s| Cell::Str(s.to_string())),
        );
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_population_ones() {
        let (m, s) = mean_std(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        assert!((s - 0.75f64.sqrt() * 0.5).abs() < 1e-15, "{s}"); // sqrt(p(1-p))
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m, s), (5.0, 2.0));
        assert_eq!(mean_std(&[3.5]), (3.5, 0.0));
        assert!(mean_std(&[]).0.is_nan());
    }

    #[test]
    fn feature_draws_as_the_reference() {
        assert_eq!(feature_draws(&[], false, || 9), vec![None]);
        assert_eq!(
            feature_draws(&[3, 4], false, || 9),
            vec![None, Some(3), Some(4)]
        );
        assert_eq!(feature_draws(&[], true, || 9), vec![Some(9)]);
        assert_eq!(feature_draws(&[3], true, || 9), vec![Some(3)]);
    }

    #[test]
    fn shifts_and_columns() {
        let opts = ShiftOptions {
            labels: Labels::Only(vec![1]),
            min_shift: 2,
            axis: Axis::X,
            max_images: None,
            batch_size: 8,
        };
        assert_eq!(opts.shifts().collect::<Vec<_>>(), vec![-2, -1, 0, 1, 2]);
        assert_eq!(SHIFT_COLUMNS.len(), 13);
        assert_eq!(SHIFT_COLUMNS[0], "run_dir");
        assert_eq!(SHIFT_COLUMNS[12], "feature_seed");
    }
}
