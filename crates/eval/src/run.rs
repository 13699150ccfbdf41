//! The layout of a training run's folder: `relperf-train` writes it, the
//! evaluation commands read it.
//!
//! ```text
//! <log_path>/<exp_name>/<version>/
//!     config.json         model, dataset, the full ModelConfig, training and
//!                         runtime options, seed, command lines, sessions
//!     checkpoints/
//!         best.mpk        best by validation accuracy: the model record that
//!                         evaluation loads (a plain Burn NamedMpk record)
//!         last.ckpt       the latest training state, for --resume
//!     metrics.csv         train / val / test metrics, the reference's columns
//!     results.json        written when the run ends: best val, test, time
//! ```
//!
//! A folder is a run when it holds `config.json` and a `checkpoints` folder.
//! `config.json` keeps the PyTorch reference's format (`format` 1,
//! `config_version` 1), so the reference's run folders read the same way
//! (their `.ckpt` checkpoints need importing first: see `relperf-models`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use relperf_data::DatasetName;
use relperf_models::{ImageClassifier, ModelConfig, ModelKind, load_record};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, RunError, one_line};

/// `config.json`.
pub const CONFIG_FILE: &str = "config.json";
/// `results.json`.
pub const RESULTS_FILE: &str = "results.json";
/// `metrics.csv`.
pub const METRICS_FILE: &str = "metrics.csv";
/// `checkpoints`.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The best model's record in `checkpoints/`.
pub const BEST_FILE: &str = "best.mpk";
/// The training state in `checkpoints/`.
pub const LAST_FILE: &str = "last.ckpt";
/// Numbered versions are `version_N`.
pub const VERSION_PREFIX: &str = "version_";
/// The `format` this crate writes and reads.
pub const FORMAT: u32 = 1;

/// Writes `value` as pretty JSON through a temporary file renamed into place.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| RunError::run(format!("{}: cannot encode JSON ({e})", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same folder
/// renamed into place: a reader sees the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    relperf_data::write_atomic(path, bytes).map_err(|e| {
        RunError::run(format!(
            "cannot write {} ({}); check that its folder is writable",
            path.display(),
            one_line(&e.to_string())
        ))
    })
}

/// Reads a JSON object.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunError::run(format!("{} does not exist", path.display()))
        } else {
            RunError::run(format!("{} is not readable ({e})", path.display()))
        }
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        RunError::run(format!(
            "{} is not readable JSON ({e}); restore it or delete the run",
            path.display()
        ))
    })?;
    if !value.is_object() {
        return Err(RunError::run(format!(
            "{} does not hold a JSON object",
            path.display()
        )));
    }
    Ok(value)
}

/// The data section of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSection {
    /// The data folder given at training time (`None`: the default).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// `linear`, `MLP` or `lookup`.
    #[serde(default = "default_embedding")]
    pub embedding_type: String,
    /// Validation images held out of the training split.
    #[serde(default = "default_val_size")]
    pub val_size: usize,
    /// Seed of the train / validation split.
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
}

fn default_embedding() -> String {
    "linear".into()
}
fn default_val_size() -> usize {
    5000
}
fn default_split_seed() -> u64 {
    42
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            data_dir: None,
            embedding_type: default_embedding(),
            val_size: default_val_size(),
            split_seed: default_split_seed(),
        }
    }
}

/// `config.json`: the typed part every command needs, and everything else
/// kept as it was read (so rewriting the file loses nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The file format (1).
    pub format: u32,
    /// The model config version (1).
    pub config_version: u32,
    /// The model's name.
    pub model: ModelKind,
    /// The dataset's name.
    pub dataset: String,
    /// The full model config.
    pub model_config: ModelConfig,
    /// How the data was split and fed.
    #[serde(default)]
    pub data: DataSection,
    /// The training seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Trainable parameters.
    #[serde(default)]
    pub parameters: usize,
    /// The training options (`relperf-train`'s `TrainOptions`, or the
    /// reference's `TrainingConfig`).
    #[serde(default)]
    pub training: Value,
    /// Everything else (`runtime`, `command`, `sessions`, `created`, ...).
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl RunConfig {
    /// The dataset, parsed.
    pub fn dataset(&self) -> Result<DatasetName> {
        self.dataset.parse().map_err(|_| {
            RunError::run(format!(
                "config.json names an unknown dataset '{}'",
                self.dataset
            ))
        })
    }

    /// A training option as JSON (`Value::Null` if absent).
    pub fn training_option(&self, name: &str) -> Value {
        self.training.get(name).cloned().unwrap_or(Value::Null)
    }
}

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunFolder {
    /// Its path.
    pub path: PathBuf,
}

impl RunFolder {
    /// The run folder at `path` (nothing is checked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunFolder { path: path.into() }
    }

    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// `results.json`.
    pub fn results_path(&self) -> PathBuf {
        self.path.join(RESULTS_FILE)
    }

    /// `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join(CHECKPOINT_DIR)
    }

    /// `checkpoints/best.mpk`.
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join(BEST_FILE)
    }

    /// `checkpoints/last.ckpt`.
    pub fn last(&self) -> PathBuf {
        self.checkpoints().join(LAST_FILE)
    }

    /// Whether the folder holds `config.json` and `checkpoints/`.
    pub fn is_run(&self) -> bool {
        self.config_path().is_file() && self.checkpoints().is_dir()
    }

    /// Whether the run has ended (`results.json` exists).
    pub fn is_finished(&self) -> bool {
        self.results_path().is_file()
    }

    /// Reads and checks `config.json`: a missing folder, a folder that is not
    /// a run, a newer format or an unknown model are one-line errors.
    pub fn read_config(&self) -> Result<RunConfig> {
        if !self.path.is_dir() {
            return Err(RunError::run(format!(
                "run folder {} does not exist",
                self.path.display()
            )));
        }
        if !self.config_path().is_file() {
            return Err(RunError::run(format!(
                "{} is not a run folder: it has no {CONFIG_FILE}",
                self.path.display()
            )));
        }
        let value = read_json(&self.config_path())?;
        let path = self.config_path();
        for (key, supported) in [
            ("format", FORMAT),
            ("config_version", relperf_models::config::CONFIG_VERSION),
        ] {
            match value.get(key).and_then(Value::as_u64) {
                Some(v) if v <= supported as u64 => {}
                Some(v) => {
                    return Err(RunError::run(format!(
                        "{} has {key} {v}, newer than this version of relative-performer reads ({supported}); update relative-performer",
                        path.display()
                    )));
                }
                None => {
                    return Err(RunError::run(format!(
                        "{} has no {key}: it is not a relative-performer run config",
                        path.display()
                    )));
                }
            }
        }
        let config: RunConfig = serde_json::from_value(value).map_err(|e| {
            RunError::run(format!(
                "{} is not a run config this version reads ({})",
                path.display(),
                one_line(&e.to_string())
            ))
        })?;
        if config.model_config.model != config.model {
            return Err(RunError::run(format!(
                "{}: model {} but model_config.model {}; the file was edited by hand",
                path.display(),
                config.model,
                config.model_config.model
            )));
        }
        config
            .model_config
            .validate()
            .map_err(|e| RunError::run(format!("{}: {e}", path.display())))?;
        config.dataset()?;
        Ok(config)
    }

    /// `results.json`, if the run has ended.
    pub fn read_results(&self) -> Result<Option<Value>> {
        if self.is_finished() {
            read_json(&self.results_path()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The checkpoint evaluation loads: `checkpoints/best.mpk`.
    pub fn best_checkpoint(&self) -> Result<PathBuf> {
        let best = self.best();
        if best.is_file() {
            return Ok(best);
        }
        let hint = if self.last().is_file() {
            format!(
                " (only {LAST_FILE}: the run stopped before its first validation; continue it with `relperf-train --resume {}`)",
                self.path.display()
            )
        } else {
            String::new()
        };
        Err(RunError::run(format!(
            "{} has no checkpoint {CHECKPOINT_DIR}/{BEST_FILE}{hint}",
            self.path.display()
        )))
    }

    /// The run's config and its best model, in eval mode on `device`.
    pub fn load_best<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(RunConfig, ImageClassifier<B>)> {
        let config = self.read_config()?;
        let path = self.best_checkpoint()?;
        let model = load_record::<B>(&config.model_config, &path, device)?;
        Ok((config, model))
    }
}

/// `3` -> `version_3`; other names stay as given (not empty, no `/`).
pub fn version_name(version: &str) -> Result<String> {
    if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = version
            .parse()
            .map_err(|_| RunError::usage(format!("--version {version} is too large")))?;
        return Ok(format!("{VERSION_PREFIX}{n}"));
    }
    if version.is_empty()
        || version.contains('/')
        || version.contains('\\')
        || version == "."
        || version == ".."
    {
        return Err(RunError::usage(format!(
            "--version '{version}' is not a valid folder name"
        )));
    }
    Ok(version.to_string())
}

/// `version_X` with X one more than the highest `version_<int>` in `parent`
/// (0 if none).
pub fn next_version(parent: &Path) -> String {
    let highest = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(VERSION_PREFIX))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max();
    format!("{VERSION_PREFIX}{}", highest.map_or(0, |n| n + 1))
}

/// Every run folder at or below `roots`, sorted by path, without
/// duplicates. A root that is not a folder is an error; no run at all is an
/// error naming the roots.
pub fn find_runs(roots: &[PathBuf]) -> Result<Vec<RunFolder>> {
    find_folders(
        roots,
        RunFolder::is_run,
        "run folders (config.json and checkpoints/)",
    )
}

/// The folders at or below `roots` (each included; `checkpoints/` folders
/// not searched) for which `wanted` holds, sorted by path, each once however
/// it is reached. A root that is not a folder, or no such folder at all
/// (`what` names them in the message), is a one-line error.
pub fn find_folders(
    roots: &[PathBuf],
    wanted: impl Fn(&RunFolder) -> bool,
    what: &str,
) -> Result<Vec<RunFolder>> {
    let mut found: BTreeMap<PathBuf, RunFolder> = BTreeMap::new();
    for root in roots {
        if !root.is_dir() {
            return Err(RunError::run(format!("{} is not a folder", root.display())));
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let run = RunFolder::new(&dir);
            if wanted(&run) {
                let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                found.entry(key).or_insert(run);
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() && e.file_name() != CHECKPOINT_DIR {
                        stack.push(p);
                    }
                }
            }
        }
    }
    let mut runs: Vec<RunFolder> = found.into_values().collect();
    runs.sort();
    if runs.is_empty() {
        let names: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(RunError::run(format!(
            "no {what} under {}",
            names.join(", ")
        )));
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_or_named() {
        assert_eq!(version_name("3").unwrap(), "version_3");
        assert_eq!(version_name("mine").unwrap(), "mine");
        assert!(version_name("a/b").is_err());
        assert!(version_name("..").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_version(dir.path()), "version_0");
        std::fs::create_dir(dir.path().join("version_4")).unwrap();
        std::fs::create_dir(dir.path().join("version_x")).unwrap();
        assert_eq!(next_version(dir.path()), "version_5");
    }

    #[test]
    fn the_shipped_runs_read_and_a_missing_one_says_so() {
        let root = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../results/pretrained"
        ));
        let runs = find_runs(std::slice::from_ref(&root)).unwrap();
        assert_eq!(runs.len(), 10);
        for run in &runs {
            let cfg = run.read_config().unwrap();
            assert_eq!(cfg.model_config.dim, 32);
            assert!(run.best_checkpoint().is_ok());
        }
        let err = RunFolder::new("/nonexistent/run")
            .read_config()
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = RunFolder::new(dir.path()).read_config().unwrap_err();
        assert!(err.to_string().contains("not a run folder"), "{err}");
        assert!(find_runs(&[dir.path().to_path_buf()]).is_err());
    }

    #[test]
    fn a_newer_config_format_is_refused() {
        let root = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../results/pretrained/MNIST/Performer"
        ));
        let mut value = read_json(&root.join(CONFIG_FILE)).unwrap();
        value["config_version"] = 999.into();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(CHECKPOINT_DIR)).unwrap();
        write_json_atomic(&dir.path().join(CONFIG_FILE), &value).unwrap();
        let err = RunFolder::new(dir.path()).read_config().unwrap_err();
        assert!(err.to_string().contains("config_version 999"), "{err}");
        let err = RunFolder::new(dir.path()).best_checkpoint().unwrap_err();
        assert!(err.to_string().contains("no checkpoint"), "{err}");
    }
}
