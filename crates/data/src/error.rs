//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, reading or checking data.
///
/// Each message is one line that says what to do: the binaries print it as
/// it is. Messages that name a file also name the command that repairs it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset name that is none of MNIST, FashionMNIST, CIFAR10.
    #[error("unknown dataset '{0}': choose one of MNIST, FashionMNIST, CIFAR10")]
    UnknownDataset(String),

    /// A split name that is neither `train` nor `test`.
    #[error("unknown split '{0}': choose train or test")]
    UnknownSplit(String),

    /// A file that should be there is not: the data was never fetched.
    #[error("{dataset} is not in {folder}: {file} is missing; run `relperf-data fetch {dataset}` first", folder = .path.parent().map(|p| p.display().to_string()).unwrap_or_default(), file = .path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())]
    NotFetched {
        /// Canonical dataset name.
        dataset: &'static str,
        /// The missing file.
        path: PathBuf,
    },

    /// A file that exists but is damaged (truncated, wrong magic number,
    /// bad gzip, wrong checksum, wrong counts...).
    #[error("{path} {what}: delete it and run `relperf-data fetch {dataset}` again")]
    Corrupt {
        /// Canonical dataset name.
        dataset: &'static str,
        /// The damaged file (or folder).
        path: PathBuf,
        /// What is wrong with it, in a few words.
        what: String,
    },

    /// Every route to the data failed; `tried` says what each gave.
    #[error("could not get {dataset} ({tried}); {hint}")]
    FetchFailed {
        /// Canonical dataset name.
        dataset: &'static str,
        /// One clause per route tried, joined by `; `.
        tried: String,
        /// What the user can do instead.
        hint: String,
    },

    /// The test-shift selection cannot be made as asked.
    #[error("{0}")]
    Shift(String),

    /// An I/O error on a named path (permissions, disk full...).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        dataset: &'static str,
        path: impl Into<PathBuf>,
        what: impl Into<String>,
    ) -> Self {
        DataError::Corrupt {
            dataset,
            path: path.into(),
            what: one_line(&what.into()),
        }
    }
}

/// Collapses whitespace so that a message stays on one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
