//! # relperf-data
//!
//! The datasets of *Translational Equivariance in Kernelizable Attention*
//! (Horn et al., [arXiv 2102.07680](https://arxiv.org/abs/2102.07680)) for
//! Rust and [Burn](https://burn.dev): MNIST, FashionMNIST and CIFAR-10, read
//! from their official files, fetched by checked download or from offline
//! sources, turned into exactly the pixels the original PyTorch pipeline fed
//! its models, split into train / validation, shifted for the paper's shift
//! test, and batched into Burn tensors. It depends on no Burn backend and is
//! usable on its own.
//!
//! ```no_run
//! use relperf_data::{DatasetName, Fetcher, ImageBatcher, ImageSet, Split};
//! let root = relperf_data::resolve_root(None); // --data-dir, $RELATIVE_PERFORMER_DATA or ./data
//! Fetcher::new(&root).fetch(DatasetName::Mnist)?;
//! let test = ImageSet::load(&root, DatasetName::Mnist, Split::Test)?; // 10000 images, 1x32x32
//! let batcher = ImageBatcher::for_set(&test); // a burn Batcher<B, ImageItem, ImageBatch<B>>
//! # Ok::<(), relperf_data::DataError>(())
//! ```
//!
//! Modules, in the order data flows: [`sources`] (layout, fetch routes,
//! raw readers) with [`idx`] and [`pickle`]; [`mod@verify`]; [`resize`] and
//! [`images`] (model-size bytes and their float normalisation); [`split`];
//! [`shift`]; [`batch`] (Burn `Dataset` and `Batcher`).
#![warn(missing_docs)]

pub mod batch;
pub mod error;
mod fs;
pub mod idx;
pub mod images;
pub mod names;
pub mod pickle;
pub mod resize;
pub mod shift;
pub mod sources;
pub mod split;
pub mod verify;

pub use batch::{ImageBatch, ImageBatcher, ImageItem};
pub use error::{DataError, Result};
pub use fs::{md5_bytes, md5_file, write_atomic};
pub use images::{ImageSet, Normalization};
pub use names::{DatasetName, Split};
pub use shift::{Axis, Labels};
pub use sources::{FetchReport, Fetcher, RawImages, Route, resolve_root};
pub use verify::{VerifyReport, verify};
