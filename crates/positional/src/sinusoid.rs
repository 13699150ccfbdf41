//! Sinusoid features of 2-D positions with learnable frequencies: the
//! absolute encoding of `Performer` and the position features of strategy 1.

use burn::module::Param;
use burn::prelude::*;

use crate::grid::{AXES, grid_positions, inverse_timescales};

/// The maximum timescale of the initial frequencies.
pub const MAX_TIMESCALE: f64 = 64.0;

/// Configuration of [`AbsoluteSinusoid`].
#[derive(Config, Debug)]
pub struct AbsoluteSinusoidConfig {
    /// Model width; must be divisible by 4.
    pub dim: usize,
}

impl AbsoluteSinusoidConfig {
    /// The encoding with `dim / 4` frequencies initialised to
    /// [`inverse_timescales`].
    ///
    /// # Panics
    /// If `dim` is not a positive multiple of 4 (checked by the model
    /// config before this is reached).
    pub fn init<B: Backend>(&self, device: &B::Device) -> AbsoluteSinusoid<B> {
        assert!(
            self.dim > 0 && self.dim.is_multiple_of(4),
            "the absolute sinusoid encoding needs dim divisible by 4 (got {})",
            self.dim
        );
        let f = inverse_timescales(self.dim / 4, MAX_TIMESCALE);
        let n = f.len();
        AbsoluteSinusoid {
            frequencies: Param::from_data(TensorData::new(f, [n]), device),
        }
    }
}

/// Absolute 2-D encoding of `dim` channels added to the pixel embeddings
/// (`Performer`): `[sin(w y), cos(w y), sin(w x), cos(w x)]`, each block
/// `dim / 4` wide, with `dim / 4` learnable frequencies `w` shared by the two
/// axes (the original's `LearnableSinusoidEncoding`).
#[derive(Module, Debug)]
pub struct AbsoluteSinusoid<B: Backend> {
    /// `[dim / 4]`.
    pub frequencies: Param<Tensor<B, 1>>,
}

impl<B: Backend> AbsoluteSinusoid<B> {
    /// The encoding of the pixels of a `height x width` image:
    /// `[height * width, dim]`, row-major.
    pub fn encode(&self, height: usize, width: usize) -> Tensor<B, 2> {
        let w = self.frequencies.val();
        let f = w.dims()[0];
        let pos = grid_positions::<B>(height, width, &w.device()); // [n, 2]
        let n = height * width;
        let angles = pos.reshape([n, AXES, 1]) * w.reshape([1, 1, f]); // [n, a, f]
        Tensor::cat(vec![angles.clone().sin(), angles.cos()], 2).reshape([n, AXES * 2 * f])
    }
}

/// Configuration of [`GridSinusoid`].
#[derive(Config, Debug)]
pub struct GridSinusoidConfig {
    /// Frequency scales `s` per axis (`pos_scales`).
    pub scales: usize,
}

impl GridSinusoidConfig {
    /// Features with frequencies `[2, s]` initialised to
    /// [`inverse_timescales`] on both axes.
    pub fn init<B: Backend>(&self, device: &B::Device) -> GridSinusoid<B> {
        let f = inverse_timescales(self.scales, MAX_TIMESCALE);
        let both: Vec<f32> = f.iter().chain(f.iter()).copied().collect();
        GridSinusoid {
            frequencies: Param::from_data(TensorData::new(both, [AXES, self.scales]), device),
        }
    }
}

/// Strategy 1's position features: per axis `a` and scale `s`,
/// `[sin(w_as p_a), cos(w_as p_a)]`, with learnable frequencies `[2, s]`
/// shared by all layers.
#[derive(Module, Debug)]
pub struct GridSinusoid<B: Backend> {
    /// `[2, s]`.
    pub frequencies: Param<Tensor<B, 2>>,
}

impl<B: Backend> GridSinusoid<B> {
    /// `[height * width, 2, s, 2]` features of the pixels (last axis: sin,
    /// cos).
    pub fn features(&self, height: usize, width: usize) -> Tensor<B, 4> {
        let w = self.frequencies.val();
        let n = height * width;
        let pos = grid_positions::<B>(height, width, &w.device());
        let angles = pos.reshape([n, AXES, 1]) * w.unsqueeze::<3>(); // [n, a, s]
        Tensor::stack(vec![angles.clone().sin(), angles.cos()], 3)
    }

    /// Rounds the frequencies to positive multiples of `2 pi / side` per axis
    /// (a periodic grid, for cyclic-shift tests of exact relativity).
    pub fn make_periodic(self, height: usize, width: usize) -> Self {
        let w = self.frequencies.val();
        let device = w.device();
        let v: Vec<f32> = w
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 frequencies");
        let s = v.len() / AXES;
        // f64 values: a backend in f64 keeps the multiples of 2 pi / side exact
        let rounded: Vec<f64> = v
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let base = std::f64::consts::TAU / [height, width][i / s] as f64;
                (f as f64 / base).round().max(1.0) * base
            })
            .collect();
        GridSinusoid {
            frequencies: Param::from_data(TensorData::new(rounded, [AXES, s]), &device),
        }
    }
}
