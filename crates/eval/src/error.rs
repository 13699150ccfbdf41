//! The one error type of the evaluation and training crates' user-facing
//! parts: one line each, with the exit code a command should end with.

/// What went wrong, as one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The command was called wrongly (an option out of range, an unknown
    /// name, options that do not go together): exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Something on disk or in the data is not as it should be (a missing
    /// or corrupt run folder, checkpoint or data file): exit code 1.
    #[error("{0}")]
    Run(String),
}

impl RunError {
    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        RunError::Usage(msg.into())
    }

    /// A run or data error.
    pub fn run(msg: impl Into<String>) -> Self {
        RunError::Run(msg.into())
    }

    /// 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Usage(_) => 2,
            RunError::Run(_) => 1,
        }
    }
}

impl From<relperf_data::DataError> for RunError {
    fn from(e: relperf_data::DataError) -> Self {
        use relperf_data::DataError as D;
        match e {
            D::UnknownDataset(_) | D::UnknownSplit(_) | D::Shift(_) => {
                RunError::Usage(e.to_string())
            }
            other => RunError::Run(other.to_string()),
        }
    }
}

impl From<relperf_models::ModelError> for RunError {
    fn from(e: relperf_models::ModelError) -> Self {
        match e {
            relperf_models::ModelError::Input(m) => RunError::Run(m),
            other => RunError::Usage(other.to_string()),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// `s` on one line (whitespace runs collapsed).
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
