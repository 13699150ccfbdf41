//! # relperf-models
//!
//! The model zoo of *Translational Equivariance in Kernelizable Attention*
//! (Horn et al., [arXiv 2102.07680](https://arxiv.org/abs/2102.07680)) for
//! [Burn](https://burn.dev): five models by name ([`ModelKind`]), one image
//! classifier ([`ImageClassifier`]) whose attention layers take the model's
//! positional strategy from `relperf-positional` and FAVOR+ features from
//! `relperf-favor`, and the serde [`ModelConfig`] with the PyTorch
//! reference's field names.
//!
//! ```
//! use burn::prelude::*;
//! use relperf_models::{ModelConfig, ModelKind};
//!
//! type B = burn::backend::NdArray;
//! let device = Default::default();
//! let config = ModelConfig { dim: 32, depth: 2, ..ModelConfig::new(ModelKind::ExactRelativePerformer) };
//! let model = config.init::<B>(7, &device).unwrap();
//! let images = Tensor::<B, 4>::zeros([2, 1, 32, 32], &device); // 1025 tokens each
//! assert_eq!(model.forward(images).dims(), [2, 10]);
//! ```
#![warn(missing_docs)]

pub mod classifier;
pub mod config;
pub mod error;
pub mod import;
pub mod registry;
pub mod store;

pub use classifier::{ImageClassifier, LayerPositions};
pub use config::{EmbeddingType, ModelConfig};
pub use error::ModelError;
pub use import::{PytorchExport, import};
pub use registry::ModelKind;
pub use store::{MODEL_FILE, load_record, save_record};
