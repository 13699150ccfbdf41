//! # relative-performer
//!
//! Translation-equivariant kernelized (Performer, FAVOR+) attention on
//! images, after *Translational Equivariance in Kernelizable Attention*
//! (Horn et al., [arXiv 2102.07680](https://arxiv.org/abs/2102.07680)), in
//! Rust on [Burn](https://burn.dev) 0.21.
//!
//! This is the workspace's facade: it re-exports the library crates, which
//! can also be used one by one, and picks a Burn backend at run time among
//! those compiled in ([`backend`]). The crates:
//!
//! | crate | what it is for |
//! |---|---|
//! | [`relperf_data`] (re-exported as [`data`]) | MNIST, FashionMNIST, CIFAR-10: readers, checked downloads, offline sources, the reference's exact pixels, split, shifted test images, a Burn batcher |
//! | [`relperf_favor`] (re-exported as [`favor`]) | FAVOR+ attention: orthogonal random features drawn on the host, positive softmax and ReLU feature maps, linear attention, the exact softmax reference |
//! | [`relperf_positional`] (re-exported as [`positional`]) | positional strategies: absolute sinusoid, strategy 1, strategy 2 in linear time, the exact periodic factor, one `LayerStrategy` interface |
//! | [`relperf_models`] (re-exported as [`models`]) | the five models by name, `ModelConfig`, records, import of the PyTorch reference's checkpoints |
//! | [`relperf_eval`] (re-exported as [`eval`]) | evaluation: run folders, loss and accuracy, shifted images, the equivariance probe |
//! | [`relperf_train`] (re-exported as [`train`]) | training: the reference's recipe in a loop of our own, run folders that resume exactly |
#![warn(missing_docs)]

pub use relperf_data as data;
pub use relperf_eval as eval;
pub use relperf_favor as favor;
pub use relperf_models as models;
pub use relperf_positional as positional;
pub use relperf_train as train;

pub mod allocator;
pub mod backend;
pub mod threads;
