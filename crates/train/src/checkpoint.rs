//! `checkpoints/last.ckpt`: everything a run needs to continue exactly, in
//! one file written through a temporary file renamed into place (a kill at
//! any moment leaves the previous checkpoint or the new one).
//!
//! Layout: the magic line `relperf-ckpt 1\n`, then four sections, each a
//! little-endian `u64` length and its bytes: the [`TrainState`] as JSON, the
//! model record, the optimizer record and the weight average's record
//! (empty without `--ema-decay`). Records are Burn's bincode records at full
//! precision.

use std::path::Path;

use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use relperf_eval::RunError;
use relperf_eval::error::{Result, one_line};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"relperf-ckpt 1\n";

/// Where training stands: the loop counters, early stopping, the clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// The model's name (checked against `config.json` on resume).
    pub model: String,
    /// The dataset's name.
    pub dataset: String,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The epoch in progress (from 0).
    pub epoch: u64,
    /// Batches of this epoch already trained.
    pub batch_in_epoch: u64,
    /// Sum of the training losses of this epoch's batches.
    pub epoch_loss_sum: f64,
    /// Correct training predictions this epoch.
    pub epoch_hits: u64,
    /// Training images seen this epoch.
    pub epoch_images: u64,
    /// Best validation accuracy so far (`None`: no validation yet).
    pub best_val_acc: Option<f64>,
    /// Its validation loss.
    pub best_val_loss: Option<f64>,
    /// Its epoch.
    pub best_epoch: Option<u64>,
    /// Its step.
    pub best_step: Option<u64>,
    /// Validations since the best one (early stopping).
    pub bad_validations: u64,
    /// Validations so far.
    pub validations: u64,
    /// Seconds of training over all sessions.
    pub train_seconds: f64,
    /// EMA updates so far.
    pub ema_updates: u64,
    /// Why the run stopped (`None`: it has not).
    pub stopped_by: Option<String>,
}

/// The byte sections of a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Loop state.
    pub state: TrainState,
    /// The model record.
    pub model: Vec<u8>,
    /// The optimizer record.
    pub optimizer: Vec<u8>,
    /// The weight average's model record (empty: none).
    pub ema: Vec<u8>,
}

fn recorder() -> BinBytesRecorder<FullPrecisionSettings> {
    BinBytesRecorder::<FullPrecisionSettings>::default()
}

/// A record as bytes.
pub fn record_bytes<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>> {
    Recorder::<B>::record(&recorder(), record, ())
        .map_err(|e| RunError::run(format!("cannot encode a checkpoint record ({e})")))
}

/// A record from bytes; a foreign or damaged record is an error, not a
/// panic.
pub fn record_from_bytes<B: Backend, R: Record<B>>(
    bytes: Vec<u8>,
    device: &B::Device,
    what: &str,
) -> std::result::Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Recorder::<B>::load::<R>(&recorder(), bytes, device)
    }))
    .map_err(|_| format!("its {what} does not fit this model"))?
    .map_err(|e| format!("its {what} is unreadable ({})", one_line(&e.to_string())))
}

impl Checkpoint {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let state = serde_json::to_vec(&self.state).expect("the state is JSON");
        let mut out = MAGIC.to_vec();
        for section in [&state, &self.model, &self.optimizer, &self.ema] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        out
    }

    /// Writes the checkpoint atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        relperf_eval::run::write_atomic(path, &self.to_bytes())
    }

    /// Reads a checkpoint; a truncated or foreign file is a one-line error.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| RunError::run(format!("{} cannot be read ({e})", path.display())))?;
        let corrupt = |why: &str| {
            RunError::run(format!(
                "{} is corrupt ({why}); delete it to restart the run, or train a new one",
                path.display()
            ))
        };
        let mut rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("not a relperf-train checkpoint"))?;
        let mut sections: Vec<Vec<u8>> = Vec::with_capacity(4);
        for _ in 0..4 {
            if rest.len() < 8 {
                return Err(corrupt("truncated"));
            }
            let (len, tail) = rest.split_at(8);
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            if tail.len() < len {
                return Err(corrupt("truncated"));
            }
            let (section, tail) = tail.split_at(len);
            sections.push(section.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(corrupt("longer than its sections"));
        }
        let ema = sections.pop().expect("4 sections");
        let optimizer = sections.pop().expect("4 sections");
        let model = sections.pop().expect("4 sections");
        let state: TrainState =
            serde_json::from_slice(&sections[0]).map_err(|e| corrupt(&format!("state: {e}")))?;
        Ok(Checkpoint {
            state,
            model,
            optimizer,
            ema,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        let ckpt = Checkpoint {
            state: TrainState {
                model: "Performer".into(),
                global_step: 7,
                best_val_acc: Some(0.5),
                ..Default::default()
            },
            model: vec![1, 2, 3],
            optimizer: vec![4; 10],
            ema: vec![],
        };
        ckpt.write(&path).unwrap();
        let back = Checkpoint::read(&path).unwrap();
        assert_eq!(back.state, ckpt.state);
        assert_eq!(back.model, ckpt.model);
        assert_eq!(back.optimizer, ckpt.optimizer);
        assert!(back.ema.is_empty());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        let e = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a relperf-train checkpoint"), "{e}");
    }
}
