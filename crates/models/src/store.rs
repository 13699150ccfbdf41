//! Saving and loading models: a Burn record (`model.mpk`, named
//! MessagePack, full precision) whose config lives beside it.

use std::path::Path;

use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};

use crate::classifier::ImageClassifier;
use crate::config::ModelConfig;
use crate::error::ModelError;

/// The record's file name in a model folder.
pub const MODEL_FILE: &str = "model.mpk";

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Writes `model`'s record to `path` (a `.mpk` file), through a temporary
/// file renamed into place.
pub fn save_record<B: Backend>(model: &ImageClassifier<B>, path: &Path) -> Result<(), ModelError> {
    // the recorder sets the extension ".mpk": it writes .NAME-tmp.mpk, renamed to PATH
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = path.with_file_name(format!(".{name}-tmp"));
    let fail = |e: &dyn std::fmt::Display| {
        ModelError::Input(format!("{}: cannot write the model ({e})", path.display()))
    };
    recorder()
        .record(model.clone().into_record(), stem.clone())
        .map_err(|e| fail(&e))?;
    std::fs::rename(stem.with_extension("mpk"), path).map_err(|e| fail(&e))
}

/// The model of `config` with the record at `path` loaded into it. A
/// missing, corrupt or foreign record is a one-line error.
pub fn load_record<B: Backend>(
    config: &ModelConfig,
    path: &Path,
    device: &B::Device,
) -> Result<ImageClassifier<B>, ModelError> {
    if !path.exists() {
        return Err(ModelError::Input(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let model: ImageClassifier<B> = config.init(0, device)?;
    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        recorder().load(path.with_extension(""), device)
    }))
    .map_err(|_| {
        ModelError::Input(format!(
            "{} does not fit a {} of this config: it is from another model or corrupt",
            path.display(),
            config.model
        ))
    })?
    .map_err(|e| {
        ModelError::Input(format!(
            "{} is corrupt or not a model record ({})",
            path.display(),
            one_line(&e.to_string())
        ))
    })?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.load_record(record))).map_err(
        |_| {
            ModelError::Input(format!(
                "{} does not fit a {} of this config: it is from another model",
                path.display(),
                config.model
            ))
        },
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
