//! # relperf-eval
//!
//! Evaluation of the models of `relperf-models`, the library of the
//! `relperf-eval` binary: run folders ([`run`]: the layout `relperf-train`
//! writes and every evaluation command reads), loss and accuracy on an image
//! set ([`mod@evaluate`]), `test` / `test-recursive` rows ([`mod@test_run`]),
//! accuracy on shifted test images ([`shifted`]), the shift figure
//! ([`plot`]), learning curves from `metrics.csv` ([`curves`]), CSVs in
//! the PyTorch reference's format ([`table`]), and the
//! equivariance probe ([`equivariance`]), the table of the reference's
//! `relative-performer equivariance`.
#![warn(missing_docs)]

pub mod curves;
pub mod equivariance;
pub mod error;
pub mod evaluate;
pub mod plot;
pub mod run;
pub mod shifted;
pub mod table;
pub mod test_run;

pub use error::{Result, RunError};
pub use evaluate::{Metrics, evaluate};
pub use run::{RunConfig, RunFolder, find_runs};
pub use shifted::{SHIFT_COLUMNS, ShiftOptions};
pub use table::{Cell, Record, write_csv};
pub use test_run::{DataCache, LoadedRun, TEST_COLUMNS, test_run};
