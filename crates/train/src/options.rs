//! The options of a training run, with the PyTorch reference's names and
//! defaults: [`TrainOptions`] fix the run (they may not change on
//! `--resume`), [`RuntimeOptions`] say how this session runs (they may).

use std::time::Duration;

use relperf_eval::RunError;
use relperf_eval::error::Result;
use serde::{Deserialize, Serialize};

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The learning rate, after a linear warm-up of `warmup` steps.
    #[default]
    Constant,
    /// `lr * min((s+1)/W, sqrt(W/(s+1)))`: warm-up, then inverse square root.
    Noam,
}

impl Schedule {
    /// `constant` or `noam`.
    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Noam => "noam",
        }
    }

    /// The factor on the learning rate for the step after `steps` optimizer
    /// steps (the reference's `LambdaLR`).
    pub fn factor(self, steps: u64, warmup: u64) -> f64 {
        let s = steps as f64 + 1.0;
        match self {
            Schedule::Constant if warmup == 0 => 1.0,
            Schedule::Constant => (s / warmup as f64).min(1.0),
            Schedule::Noam => {
                let w = warmup.max(1) as f64;
                (s / w).min((w / s).sqrt())
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "noam" => Ok(Schedule::Noam),
            _ => Err(RunError::usage(format!(
                "unknown schedule '{s}': choose constant or noam"
            ))),
        }
    }
}

/// The options that define a run: they are saved in `config.json` under
/// `training` and must not change when a run is resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Adam's learning rate (the peak, after warm-up).
    pub learning_rate: f64,
    /// Linear warm-up steps (0: none).
    pub warmup: u64,
    /// `constant` or `noam`.
    pub schedule: Schedule,
    /// Gradients are scaled so that their global L2 norm is at most this
    /// (0: no clipping).
    pub gradient_clip_val: f64,
    /// Decay of the exponential moving average of the weights (0: off).
    pub ema_decay: f64,
    /// Validations without a better validation accuracy before stopping.
    pub patience: u64,
    /// The seed of weights, features, data order and dropout.
    pub seed: Option<u64>,
    /// Validation images held out of the training split.
    pub val_size: usize,
    /// Seed of the train / validation split.
    pub split_seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            batch_size: 16,
            learning_rate: 1e-3,
            warmup: 0,
            schedule: Schedule::Constant,
            gradient_clip_val: 0.5,
            ema_decay: 0.0,
            patience: 20,
            seed: None,
            val_size: 5000,
            split_seed: 42,
        }
    }
}

impl TrainOptions {
    /// Checks every value; the error names the option.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 1 {
            return Err(RunError::usage("--batch-size must be at least 1 (got 0)"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(RunError::usage(format!(
                "--learning-rate must be above 0 (got {})",
                self.learning_rate
            )));
        }
        if !(self.gradient_clip_val >= 0.0 && self.gradient_clip_val.is_finite()) {
            return Err(RunError::usage(format!(
                "--gradient-clip-val must be 0 (off) or above (got {})",
                self.gradient_clip_val
            )));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(RunError::usage(format!(
                "--ema-decay must be in [0, 1) (got {}); 0 turns the average off",
                self.ema_decay
            )));
        }
        if self.patience < 1 {
            return Err(RunError::usage("--patience must be at least 1 (got 0)"));
        }
        Ok(())
    }

    /// The learning rate of the step after `steps` optimizer steps.
    pub fn learning_rate_at(&self, steps: u64) -> f64 {
        self.learning_rate * self.schedule.factor(steps, self.warmup)
    }
}

/// A limit on batches: a count, or a fraction of the split's batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchLimit {
    /// At most this many batches.
    Count(u64),
    /// This fraction of the batches (at least one).
    Fraction(f64),
}

impl BatchLimit {
    /// The number of batches out of `total`.
    pub fn of(self, total: usize) -> usize {
        match self {
            BatchLimit::Count(n) => (n as usize).min(total),
            BatchLimit::Fraction(f) => ((total as f64 * f).round() as usize).clamp(1, total),
        }
    }

    /// Parses `N` (a count) or `0.25` (a fraction in (0, 1]).
    pub fn parse(option: &str, s: &str) -> Result<Self> {
        let bad = || {
            RunError::usage(format!(
                "{option} takes a number of batches (an integer of at least 1) or a fraction in (0, 1] (got '{s}')"
            ))
        };
        if s.contains('.') || s.contains('e') {
            let f: f64 = s.parse().map_err(|_| bad())?;
            if f > 0.0 && f <= 1.0 {
                return Ok(BatchLimit::Fraction(f));
            }
            return Err(bad());
        }
        match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(BatchLimit::Count(n)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for BatchLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchLimit::Count(n) => write!(f, "{n}"),
            BatchLimit::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// How this session runs: budgets, limits, logging, backend. They may
/// change on `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeOptions {
    /// Stop after this many epochs.
    pub max_epochs: u64,
    /// Stop after this many optimizer steps (-1: no limit).
    pub max_steps: i64,
    /// Stop after this much training time, `DD:HH:MM:SS` (summed over
    /// sessions).
    pub max_time: Option<String>,
    /// Training batches per epoch.
    pub limit_train_batches: Option<BatchLimit>,
    /// Batches per validation.
    pub limit_val_batches: Option<BatchLimit>,
    /// Batches of the test at the end.
    pub limit_test_batches: Option<BatchLimit>,
    /// Validate every this many training batches (or this fraction of an
    /// epoch); `None`: once per epoch.
    pub val_check_interval: Option<BatchLimit>,
    /// Write `checkpoints/last.ckpt` every this many steps.
    pub checkpoint_every_n_steps: u64,
    /// A metrics row and a progress line every this many steps.
    pub log_every_n_steps: u64,
    /// Progress on stderr.
    pub progress: bool,
    /// The data folder (`None`: `$RELATIVE_PERFORMER_DATA`, else `./data`).
    pub data_dir: Option<String>,
    /// `ndarray`, `flex` or `wgpu`.
    pub backend: String,
    /// The device of the backend (`None`: its default).
    pub device: Option<String>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            max_epochs: 1000,
            max_steps: -1,
            max_time: None,
            limit_train_batches: None,
            limit_val_batches: None,
            limit_test_batches: None,
            val_check_interval: None,
            checkpoint_every_n_steps: 500,
            log_every_n_steps: 50,
            progress: true,
            data_dir: None,
            backend: "ndarray".into(),
            device: None,
        }
    }
}

impl RuntimeOptions {
    /// Checks every value; the error names the option.
    pub fn validate(&self) -> Result<()> {
        if self.max_epochs < 1 {
            return Err(RunError::usage("--max-epochs must be at least 1 (got 0)"));
        }
        if self.max_steps == 0 || self.max_steps < -1 {
            return Err(RunError::usage(format!(
                "--max-steps must be at least 1, or -1 for no limit (got {})",
                self.max_steps
            )));
        }
        if let Some(t) = &self.max_time {
            parse_max_time(t)?;
        }
        if self.checkpoint_every_n_steps < 1 {
            return Err(RunError::usage(
                "--checkpoint-every-n-steps must be at least 1 (got 0)",
            ));
        }
        if self.log_every_n_steps < 1 {
            return Err(RunError::usage(
                "--log-every-n-steps must be at least 1 (got 0)",
            ));
        }
        Ok(())
    }

    /// `max_time` as a duration.
    pub fn max_time(&self) -> Option<Duration> {
        self.max_time
            .as_deref()
            .and_then(|t| parse_max_time(t).ok())
    }
}

/// Parses `DD:HH:MM:SS` (the reference's `--max_time`).
pub fn parse_max_time(s: &str) -> Result<Duration> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || {
        RunError::usage(format!(
            "--max-time takes DD:HH:MM:SS, e.g. 00:01:30:00 for 90 minutes (got '{s}')"
        ))
    };
    if parts.len() != 4 {
        return Err(bad());
    }
    let mut n = [0u64; 4];
    for (slot, p) in n.iter_mut().zip(&parts) {
        *slot = p.parse().map_err(|_| bad())?;
    }
    if n[1] >= 24 || n[2] >= 60 || n[3] >= 60 {
        return Err(bad());
    }
    let secs = ((n[0] * 24 + n[1]) * 60 + n[2]) * 60 + n[3];
    if secs == 0 {
        return Err(RunError::usage("--max-time must be above 00:00:00:00"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_the_references() {
        // constant with warm-up 4: 1/4, 2/4, 3/4, 1, 1
        let f: Vec<f64> = (0..5).map(|s| Schedule::Constant.factor(s, 4)).collect();
        assert_eq!(f, vec![0.25, 0.5, 0.75, 1.0, 1.0]);
        assert_eq!(Schedule::Constant.factor(0, 0), 1.0);
        // noam with warm-up 4: rises to 1 at step 4, then sqrt(4/(s+1))
        assert_eq!(Schedule::Noam.factor(3, 4), 1.0);
        assert!((Schedule::Noam.factor(15, 4) - 0.5).abs() < 1e-12);
        assert!((Schedule::Noam.factor(0, 4) - 0.25).abs() < 1e-12);
        // warm-up 0 means 1 for noam: 1/sqrt(s+1)
        assert!((Schedule::Noam.factor(3, 0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn max_time_and_limits_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_max_time("00:01:30:05").unwrap(),
            Duration::from_secs(5405)
        );
        for bad in ["1:00", "00:25:00:00", "a:b:c:d", "00:00:00:00"] {
            let e = parse_max_time(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
        }
        assert_eq!(BatchLimit::parse("--x", "3").unwrap().of(10), 3);
        assert_eq!(BatchLimit::parse("--x", "0.25").unwrap().of(10), 3);
        assert_eq!(BatchLimit::parse("--x", "0.01").unwrap().of(10), 1);
        assert!(BatchLimit::parse("--x", "0").is_err());
        assert!(BatchLimit::parse("--x", "1.5").is_err());
    }

    #[test]
    fn out_of_range_options_are_usage_errors() {
        let ok = TrainOptions::default();
        ok.validate().unwrap();
        for bad in [
            TrainOptions {
                batch_size: 0,
                ..ok.clone()
            },
            TrainOptions {
                learning_rate: 0.0,
                ..ok.clone()
            },
            TrainOptions {
                learning_rate: -1.0,
                ..ok.clone()
            },
            TrainOptions {
                ema_decay: 1.0,
                ..ok.clone()
            },
            TrainOptions {
                ema_decay: -0.1,
                ..ok.clone()
            },
            TrainOptions {
                gradient_clip_val: -1.0,
                ..ok.clone()
            },
        ] {
            assert_eq!(bad.validate().unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let rt = RuntimeOptions::default();
        rt.validate().unwrap();
        assert!(
            RuntimeOptions {
                max_steps: 0,
                ..rt.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            RuntimeOptions {
                max_epochs: 0,
                ..rt
            }
            .validate()
            .is_err()
        );
    }
}
