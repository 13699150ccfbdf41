//! The random features of one attention module, as a Burn module whose
//! record keeps them.

use burn::module::{Param, ParamId};
use burn::prelude::*;

use crate::attention::linear_attention;
use crate::draw::{default_nb_features, draw_projection};
use crate::features::{Kernel, kernel_features};

/// Configuration of a [`FeatureMap`].
#[derive(Config, Debug, PartialEq)]
pub struct FeatureMapConfig {
    /// Dimension `d` of the queries and keys the features are taken of.
    pub dim: usize,
    /// Random features `m`; `None`: [`default_nb_features`]`(dim)`, i.e.
    /// `int(d ln d)`.
    #[config(default = "None")]
    pub nb_features: Option<usize>,
    /// The kernel the features estimate.
    #[config(default = "Kernel::Softmax")]
    pub kernel: Kernel,
}

impl FeatureMapConfig {
    /// The number of features this config gives.
    pub fn features(&self) -> usize {
        self.nb_features
            .unwrap_or_else(|| default_nb_features(self.dim))
    }

    /// A feature map with its first draw (index 0) for `seed`.
    ///
    /// # Panics
    /// If `dim` or the number of features is 0.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> FeatureMap<B> {
        let m = self.features();
        assert!(
            self.dim > 0 && m > 0,
            "a feature map needs dim >= 1 and nb_features >= 1"
        );
        FeatureMap {
            projection: frozen(projection_tensor(m, self.dim, seed, 0, device)),
            draw: Param::initialized(ParamId::new(), draw_state(seed, 0, device)),
            kernel: self.kernel,
            dim: self.dim,
            nb_features: m,
        }
    }
}

fn frozen<B: Backend>(t: Tensor<B, 2>) -> Param<Tensor<B, 2>> {
    Param::initialized(ParamId::new(), t)
}

fn projection_tensor<B: Backend>(
    m: usize,
    d: usize,
    seed: u64,
    index: u64,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(draw_projection(m, d, seed, index), [m, d]),
        device,
    )
}

/// `(seed, draw index)` as six 16-bit limbs (exact in the `i32` integers of
/// GPU backends too).
fn draw_state<B: Backend>(seed: u64, index: u64, device: &B::Device) -> Tensor<B, 1, Int> {
    let limbs: Vec<i64> = (0..4)
        .map(|i| ((seed >> (16 * i)) & 0xffff) as i64)
        .chain((0..2).map(|i| ((index >> (16 * i)) & 0xffff) as i64))
        .collect();
    Tensor::from_data(TensorData::new(limbs, [6]), device)
}

/// The random features of one attention module (Choromanski et al. 2021):
/// an `(m, d)` orthogonal Gaussian projection drawn on the host from
/// `(seed, draw index)`, so that every backend draws the same matrix.
///
/// The projection and the `(seed, draw index)` are frozen parameters: a
/// saved record keeps them (a plain tensor field would not be saved), and no
/// optimizer touches them. [`FeatureMap::redraw`] draws the next projection;
/// the training loop calls it every `feature_redraw_interval` steps, and
/// evaluation never does.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::prelude::*;
/// use relperf_favor::{FeatureMapConfig, Kernel};
///
/// let device = Default::default();
/// let map = FeatureMapConfig::new(16).init::<NdArray>(42, &device); // m = int(16 ln 16) = 44
/// let q = Tensor::<NdArray, 4>::random([2, 4, 100, 16], burn::tensor::Distribution::Default, &device);
/// let (k, v) = (q.clone(), q.clone());
/// let out = map.attend(q, k, v); // FAVOR+ attention, linear in the 100 tokens
/// assert_eq!(out.dims(), [2, 4, 100, 16]);
/// let map = map.redraw(); // the next draw of the features
/// assert_eq!(map.draw_index(), 1);
/// ```
#[derive(Module, Debug)]
pub struct FeatureMap<B: Backend> {
    /// `[m, d]`, frozen.
    projection: Param<Tensor<B, 2>>,
    /// `(seed, draw index)` in 16-bit limbs, frozen.
    draw: Param<Tensor<B, 1, Int>>,
    kernel: Kernel,
    dim: usize,
    nb_features: usize,
}

impl<B: Backend> FeatureMap<B> {
    /// The projection `W`, `[m, d]`.
    pub fn projection(&self) -> Tensor<B, 2> {
        self.projection.val()
    }

    /// The kernel.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `d`, the dimension of the queries and keys.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `m`, the number of random features.
    pub fn nb_features(&self) -> usize {
        self.nb_features
    }

    fn limbs(&self) -> Vec<u64> {
        self.draw
            .val()
            .into_data()
            .iter::<i64>()
            .map(|v| v as u64)
            .collect()
    }

    /// The seed the draws derive from.
    pub fn seed(&self) -> u64 {
        self.limbs()[..4]
            .iter()
            .enumerate()
            .map(|(i, l)| l << (16 * i))
            .sum()
    }

    /// Which draw the projection is (0 for the first; +1 per redraw).
    pub fn draw_index(&self) -> u64 {
        self.limbs()[4..]
            .iter()
            .enumerate()
            .map(|(i, l)| l << (16 * i))
            .sum()
    }

    /// The same map with draw `index` of `seed` (for evaluation with fresh
    /// features, or to continue a draw sequence).
    pub fn with_draw(self, seed: u64, index: u64) -> Self {
        let device = self.projection.device();
        let projection = projection_tensor(self.nb_features, self.dim, seed, index, &device);
        FeatureMap {
            projection: Param::initialized(self.projection.id, projection),
            draw: Param::initialized(self.draw.id, draw_state(seed, index, &device)),
            ..self
        }
    }

    /// The next draw of the same seed.
    pub fn redraw(self) -> Self {
        let (seed, index) = (self.seed(), self.draw_index());
        self.with_draw(seed, index + 1)
    }

    /// The same map with a given projection `[m, d]` (as imported from a
    /// checkpoint) and its `(seed, draw index)`.
    ///
    /// # Panics
    /// If the projection's shape is not `[m, d]`.
    pub fn with_projection(self, projection: Tensor<B, 2>, seed: u64, index: u64) -> Self {
        assert_eq!(
            projection.dims(),
            [self.nb_features, self.dim],
            "projection of the wrong shape"
        );
        let device = self.projection.device();
        FeatureMap {
            projection: Param::initialized(self.projection.id, projection.detach()),
            draw: Param::initialized(self.draw.id, draw_state(seed, index, &device)),
            ..self
        }
    }

    /// The features of `x` (`[b, h, n, d]` -> `[b, h, n, m]`) as attention
    /// uses them: up to factors that cancel in the normalised output
    /// ([`crate::features::softmax_features_up_to_scale`]).
    pub fn features(&self, x: Tensor<B, 4>, is_query: bool) -> Tensor<B, 4> {
        kernel_features(self.kernel, x, self.projection(), is_query)
    }

    /// FAVOR+ attention: `q [b, h, n, d]`, `k [b, h, j, d]`, `v [b, h, j, e]`
    /// -> `[b, h, n, e]`, linear in `n` and `j`.
    ///
    /// On the fused CPU path in inference (nothing takes a gradient), with
    /// the softmax kernel, one pass that keeps the features in cache
    /// (bit-equal to the two steps).
    pub fn attend(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let (q, k, v) = match self.kernel {
            Kernel::Softmax => match crate::host::favor_attention(q, k, v, self.projection()) {
                Ok(out) => return out,
                Err((q, k, v, _)) => (q, k, v),
            },
            _ => (q, k, v),
        };
        linear_attention(self.features(q, true), self.features(k, false), v)
    }
}
