//! `test` and `test-recursive`: a run's best model on the validation and
//! test splits, one CSV row per run in the reference's columns
//! ([`TEST_COLUMNS`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use relperf_data::split::train_val_indices;
use relperf_data::{DatasetName, ImageSet, Split, resolve_root};
use relperf_models::{ImageClassifier, load_record};
use serde_json::Value;

use crate::error::{Result, RunError};
use crate::evaluate::{Metrics, evaluate};
use crate::run::{RunConfig, RunFolder};
use crate::table::{Cell, Record};

/// The columns of `test` / `test-recursive`, the reference's.
pub const TEST_COLUMNS: [&str; 31] = [
    "run_dir",
    "model",
    "dataset",
    "embedding_type",
    "dim",
    "depth",
    "heads",
    "ff_mult",
    "attn_dropout",
    "ff_dropout",
    "feature_redraw_interval",
    "no_projection",
    "nb_features",
    "kernel",
    "pos_scales",
    "content_rel_attn",
    "clipping_dist",
    "learning_rate",
    "warmup",
    "schedule",
    "batch_size",
    "seed",
    "parameters",
    "epochs",
    "val_loss",
    "val_acc",
    "val_n",
    "test_loss",
    "test_acc",
    "test_n",
    "checkpoint",
];

/// The training options that go into every row.
const HYPERPARAMETERS: [&str; 5] = ["learning_rate", "warmup", "schedule", "batch_size", "seed"];

/// Runs `f` with the panic message printer switched off: Burn reports a
/// record that does not fit by panicking, which `load_record` catches and
/// turns into a one-line error; the default hook would print it first.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;
    struct Restore(Option<Hook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(hook) = self.0.take() {
                std::panic::set_hook(hook);
            }
        }
    }
    let _restore = Restore(Some(std::panic::take_hook()));
    std::panic::set_hook(Box::new(|_| {}));
    f()
}

/// A run with its best model loaded, in eval mode.
#[derive(Debug)]
pub struct LoadedRun<B: Backend> {
    /// The run folder.
    pub run: RunFolder,
    /// Its `config.json`.
    pub config: RunConfig,
    /// The best model.
    pub model: ImageClassifier<B>,
    /// The checkpoint loaded (`checkpoints/best.mpk`).
    pub checkpoint: PathBuf,
}

impl<B: Backend> LoadedRun<B> {
    /// Reads the run's config and loads its best checkpoint on `device`;
    /// a missing folder, a folder that is no run, a newer config format, a
    /// missing, truncated or foreign checkpoint are one-line errors.
    pub fn load(run: &RunFolder, device: &B::Device) -> Result<Self> {
        let config = run.read_config()?;
        let checkpoint = run.best_checkpoint()?;
        let model = quietly(|| load_record::<B>(&config.model_config, &checkpoint, device))?;
        Ok(LoadedRun {
            run: run.clone(),
            config,
            model,
            checkpoint,
        })
    }

    /// The dataset the run was trained on.
    pub fn dataset(&self) -> Result<DatasetName> {
        self.config.dataset()
    }

    /// Checks, before any data is read, that the dataset's images fit the
    /// model (channels).
    pub fn check_fits(&self) -> Result<()> {
        let ds = self.dataset()?;
        let side = ds.input_side();
        self.model
            .check_input(ds.channels(), side, side)
            .map_err(|e| RunError::run(format!("{}: {e}", self.run.path.display())))
    }

    /// The data folder: `explicit` (`--data-dir`), else the one the run was
    /// trained on if it still exists, else `$RELATIVE_PERFORMER_DATA`, else
    /// `./data`.
    pub fn data_root(&self, explicit: Option<&Path>) -> PathBuf {
        if let Some(dir) = explicit {
            return dir.to_path_buf();
        }
        match &self.config.data.data_dir {
            Some(d) if Path::new(d).is_dir() => PathBuf::from(d),
            _ => resolve_root(None),
        }
    }

    /// The first columns of every row: the run, its model config (less
    /// model, channels and classes), training options, parameters, epochs.
    pub fn row(&self) -> Result<Record> {
        let mut row = Record::new();
        row.insert("run_dir".into(), self.run.path.display().to_string().into());
        row.insert("model".into(), self.config.model.as_str().into());
        row.insert("dataset".into(), self.config.dataset.clone().into());
        let model_config = serde_json::to_value(&self.config.model_config)
            .map_err(|e| RunError::run(format!("cannot encode the model config ({e})")))?;
        if let Value::Object(fields) = model_config {
            for (k, v) in fields {
                if !matches!(k.as_str(), "model" | "in_channels" | "num_classes") {
                    row.insert(k, Cell::from_json(&v));
                }
            }
        }
        for name in HYPERPARAMETERS {
            let mut v = self.config.training_option(name);
            if name == "seed" && v.is_null() {
                v = self.config.seed.map_or(Value::Null, Value::from);
            }
            row.insert(name.into(), Cell::from_json(&v));
        }
        row.insert("parameters".into(), self.model.trainable_params().into());
        let epochs = self
            .run
            .read_results()?
            .and_then(|r| r.get("epochs").cloned())
            .unwrap_or(Value::Null);
        row.insert("epochs".into(), Cell::from_json(&epochs));
        Ok(row)
    }
}

/// The split `test` evaluates: `val` (held out of the training images by
/// the run's `val_size` and `split_seed`) or `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalSplit {
    /// The validation images.
    Val,
    /// The official test split.
    Test,
}

impl EvalSplit {
    /// `val` or `test`: the prefix of its columns.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalSplit::Val => "val",
            EvalSplit::Test => "test",
        }
    }
}

type CacheKey = (DatasetName, EvalSplit, PathBuf, usize, u64);

/// Image sets read once per command, shared by its runs.
#[derive(Debug, Default)]
pub struct DataCache {
    explicit_root: Option<PathBuf>,
    sets: HashMap<CacheKey, ImageSet>,
    train: HashMap<(DatasetName, PathBuf), ImageSet>,
}

impl DataCache {
    /// A cache reading from `explicit_root` (`--data-dir`), else each run's
    /// own data folder ([`LoadedRun::data_root`]).
    pub fn new(explicit_root: Option<PathBuf>) -> Self {
        DataCache {
            explicit_root,
            ..Default::default()
        }
    }

    /// The images of `split` for `run`. Data not fetched is an error that
    /// names `relperf-data fetch DATASET`.
    pub fn split<B: Backend>(&mut self, run: &LoadedRun<B>, split: EvalSplit) -> Result<ImageSet> {
        let dataset = run.dataset()?;
        let root = run.data_root(self.explicit_root.as_deref());
        let (val_size, seed) = (run.config.data.val_size, run.config.data.split_seed);
        let key = (dataset, split, root.clone(), val_size, seed);
        if let Some(set) = self.sets.get(&key) {
            return Ok(set.clone());
        }
        let set = match split {
            EvalSplit::Test => ImageSet::load(&root, dataset, Split::Test)?,
            EvalSplit::Val => {
                let n = dataset.split_len(Split::Train);
                if val_size > n {
                    return Err(RunError::run(format!(
                        "{}: val_size {val_size} is larger than the {n} training images of {dataset}",
                        run.run.config_path().display()
                    )));
                }
                let train = match self.train.get(&(dataset, root.clone())) {
                    Some(t) => t.clone(),
                    None => {
                        let t = ImageSet::load(&root, dataset, Split::Train)?;
                        self.train.insert((dataset, root.clone()), t.clone());
                        t
                    }
                };
                let (_, val) = train_val_indices(train.len(), val_size, seed);
                train.subset(&val)
            }
        };
        self.sets.insert(key, set.clone());
        Ok(set)
    }
}

/// Evaluates `run` on the validation and test splits (at most
/// `limit_batches` batches each) and returns its CSV row.
pub fn test_run<B: Backend>(
    run: &LoadedRun<B>,
    cache: &mut DataCache,
    batch_size: usize,
    limit_batches: Option<usize>,
    device: &B::Device,
) -> Result<(Record, [Metrics; 2])> {
    run.check_fits()?;
    let mut row = run.row()?;
    let mut metrics = Vec::new();
    for split in [EvalSplit::Val, EvalSplit::Test] {
        let set = cache.split(run, split)?;
        let m = evaluate(
            &run.model,
            &set,
            batch_size,
            limit_batches,
            device,
            |_, _| {},
        )?;
        let p = split.as_str();
        let nan_if_empty = |v: f64| if m.n == 0 { f64::NAN } else { v };
        row.insert(format!("{p}_loss"), nan_if_empty(m.loss).into());
        row.insert(format!("{p}_acc"), nan_if_empty(m.accuracy).into());
        row.insert(format!("{p}_n"), m.n.into());
        metrics.push(m);
    }
    row.insert(
        "checkpoint".into(),
        run.checkpoint.display().to_string().into(),
    );
    Ok((row, [metrics[0], metrics[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn a_shipped_run_gives_every_column_but_the_metrics() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../results/pretrained/MNIST/ExactRelativePerformer"
        ));
        let run = LoadedRun::<NdArray>::load(&RunFolder::new(&dir), &Default::default()).unwrap();
        let row = run.row().unwrap();
        let missing: Vec<&str> = TEST_COLUMNS
            .iter()
            .copied()
            .filter(|c| !row.contains_key(*c))
            .collect();
        assert_eq!(
            missing,
            [
                "val_loss",
                "val_acc",
                "val_n",
                "test_loss",
                "test_acc",
                "test_n",
                "checkpoint"
            ]
        );
        assert_eq!(row.len(), TEST_COLUMNS.len() - missing.len());
        let text = |c: &str| row[c].text();
        assert_eq!(text("model"), "ExactRelativePerformer");
        assert_eq!(text("dim"), "32");
        assert_eq!(text("nb_features"), "");
        assert_eq!(text("no_projection"), "False");
        assert_eq!(text("kernel"), "softmax");
        assert_eq!(
            text("learning_rate"),
            crate::table::py_float(run.config.training["learning_rate"].as_f64().unwrap())
        );
        assert_eq!(text("schedule"), "constant");
        assert_eq!(text("parameters"), run.config.parameters.to_string());
        assert!(!text("epochs").is_empty());
    }
}
