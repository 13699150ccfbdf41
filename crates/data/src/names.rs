//! The three datasets, their splits and their fixed facts.

use std::fmt;
use std::str::FromStr;

use crate::error::DataError;

/// One of the datasets the paper trains on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum DatasetName {
    /// LeCun et al.'s handwritten digits.
    #[serde(rename = "MNIST")]
    Mnist,
    /// Zalando Research's clothing images.
    #[serde(rename = "FashionMNIST")]
    FashionMnist,
    /// Krizhevsky's 32x32 colour images in 10 classes.
    #[serde(rename = "CIFAR10")]
    Cifar10,
}

/// The two official splits. The validation set is carved out of `Train`
/// (see [`crate::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The official training images.
    Train,
    /// The official test images.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownSplit(s.to_string())),
        }
    }
}

/// MNIST's images per class, train then test (the official release).
const MNIST_COUNTS: [[usize; 10]; 2] = [
    [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
];

impl DatasetName {
    /// All three, in the order the binaries list them.
    pub const ALL: [DatasetName; 3] = [
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
    ];

    /// The canonical spelling (`MNIST`, `FashionMNIST`, `CIFAR10`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "MNIST",
            DatasetName::FashionMnist => "FashionMNIST",
            DatasetName::Cifar10 => "CIFAR10",
        }
    }

    /// Colour channels of the model input (1 or 3).
    pub fn channels(self) -> usize {
        match self {
            DatasetName::Cifar10 => 3,
            _ => 1,
        }
    }

    /// Number of classes (10 for all three).
    pub fn num_classes(self) -> usize {
        10
    }

    /// Side of the stored images (28 for MNIST and FashionMNIST, 32 for
    /// CIFAR-10).
    pub fn stored_side(self) -> usize {
        match self {
            DatasetName::Cifar10 => 32,
            _ => 28,
        }
    }

    /// Side of the model input: 32 for all three (MNIST and FashionMNIST are
    /// resized, as the original code did).
    pub fn input_side(self) -> usize {
        32
    }

    /// Images per class in the official split.
    pub fn class_counts(self, split: Split) -> [usize; 10] {
        let i = match split {
            Split::Train => 0,
            Split::Test => 1,
        };
        match self {
            DatasetName::Mnist => MNIST_COUNTS[i],
            DatasetName::FashionMnist => [[6000; 10], [1000; 10]][i],
            DatasetName::Cifar10 => [[5000; 10], [1000; 10]][i],
        }
    }

    /// Images in the official split.
    pub fn split_len(self, split: Split) -> usize {
        self.class_counts(split).iter().sum()
    }

    /// Whether `test-shifted` applies: the images have an empty background
    /// that a shift moves across the border (MNIST and FashionMNIST).
    pub fn shiftable(self) -> bool {
        !matches!(self, DatasetName::Cifar10)
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    /// Case-insensitive: `mnist`, `fashionmnist` and `cifar10` work too.
    fn from_str(s: &str) -> Result<Self, DataError> {
        DatasetName::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DataError::UnknownDataset(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("mnist".parse::<DatasetName>().unwrap(), DatasetName::Mnist);
        assert_eq!(
            "FASHIONMNIST".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "cifar10".parse::<DatasetName>().unwrap(),
            DatasetName::Cifar10
        );
        let e = "Nope".parse::<DatasetName>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown dataset 'Nope': choose one of MNIST, FashionMNIST, CIFAR10"
        );
    }

    #[test]
    fn counts_add_up() {
        assert_eq!(DatasetName::Mnist.split_len(Split::Train), 60000);
        assert_eq!(DatasetName::Mnist.split_len(Split::Test), 10000);
        assert_eq!(DatasetName::Cifar10.split_len(Split::Train), 50000);
    }
}
