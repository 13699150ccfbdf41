//! The image classifier all models share: pixels as tokens, a learned class
//! token, pre-norm blocks whose attention takes the model's positional
//! strategy, the class token's output into a linear head.
//!
//! Tokens are the class token followed by the `height x width` pixels in
//! row-major order; positions are computed from each batch's image size, so a
//! model runs on images of any height and width.

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Gelu, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::prelude::*;
use burn::tensor::Distribution;
use relperf_favor::draw::Gaussian;
use relperf_favor::{FeatureMap, FeatureMapConfig};
use relperf_positional::clipped::{RelativeKeys, RelativeKeysConfig};
use relperf_positional::constrained::{ConstrainedProjection, ConstrainedProjectionConfig};
use relperf_positional::grid::with_class_token;
use relperf_positional::periodic::{PeriodicFactor, PeriodicFactorConfig};
use relperf_positional::sinusoid::{
    AbsoluteSinusoid, AbsoluteSinusoidConfig, GridSinusoid, GridSinusoidConfig,
};
use relperf_positional::{AttentionInput, ContentOnly, LayerStrategy};

use crate::config::{EmbeddingType, ModelConfig};
use crate::error::ModelError;
use crate::registry::ModelKind;

/// A two-layer pixel embedding: `Linear`, GELU, `Linear`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `channels -> dim`.
    pub first: Linear<B>,
    /// `dim -> dim`.
    pub second: Linear<B>,
}

/// How pixel values become token embeddings (`embedding_type`).
// one per model: the size difference of the variants costs nothing
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ContentEmbedding<B: Backend> {
    /// `Linear(channels, dim)`.
    Linear(Linear<B>),
    /// [`Mlp`].
    Mlp(Mlp<B>),
    /// `Embedding(256 * channels, dim)`, summed over channels.
    Lookup(Embedding<B>),
}

/// The positional strategy of one attention layer, as the registry builds
/// it. A sixth strategy adds a variant here and an arm in
/// [`ModelConfig::init`]; the blocks do not change.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LayerPositions<B: Backend> {
    /// Content only (`Performer`, `NoposPerformer`).
    Content(ContentOnly),
    /// Strategy 1.
    Constrained(ConstrainedProjection<B>),
    /// Strategy 2.
    Clipped(RelativeKeys<B>),
    /// The exact periodic factor.
    Periodic(PeriodicFactor<B>),
}

impl<B: Backend> LayerStrategy<B> for LayerPositions<B> {
    fn qk_extra_dim(&self) -> usize {
        match self {
            LayerPositions::Content(s) => LayerStrategy::<B>::qk_extra_dim(s),
            LayerPositions::Constrained(s) => s.qk_extra_dim(),
            LayerPositions::Clipped(s) => s.qk_extra_dim(),
            LayerPositions::Periodic(s) => s.qk_extra_dim(),
        }
    }

    fn attend(&self, input: AttentionInput<B>, features: Option<&FeatureMap<B>>) -> Tensor<B, 4> {
        match self {
            LayerPositions::Content(s) => s.attend(input, features),
            LayerPositions::Constrained(s) => s.attend(input, features),
            LayerPositions::Clipped(s) => s.attend(input, features),
            LayerPositions::Periodic(s) => s.attend(input, features),
        }
    }
}

/// Multi-head self-attention with a positional strategy: FAVOR+ (or exact
/// softmax with `no_projection`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `dim -> 3 dim`, packed `(t h d)`: q of heads 0..h, then k, then v.
    pub to_qkv: Linear<B>,
    /// `dim -> dim`.
    pub to_out: Linear<B>,
    /// The layer's random features (`None`: exact softmax attention).
    pub features: Option<FeatureMap<B>>,
    /// The layer's positional strategy.
    pub positions: LayerPositions<B>,
    /// On the attention output (FAVOR+ never forms the attention matrix to
    /// drop from), as in performer-pytorch.
    pub dropout: Dropout,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `x [b, n, dim]` (normed) -> `[b, n, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        height: usize,
        width: usize,
        positions: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [q, k, v] = self.split_heads(x.clone());
        let [b, n, dim] = x.dims();
        let input = AttentionInput {
            q,
            k,
            v,
            x,
            height,
            width,
            positions,
        };
        let out = self.positions.attend(input, self.features.as_ref());
        dropout(
            &self.dropout,
            linear(
                &self.to_out,
                reshape(permute(out, [0, 2, 1, 3]), [b, n, dim]),
            ),
        )
    }

    /// Queries, keys and values `[b, h, n, d]` of `x [b, n, dim]`.
    ///
    /// On the fused path ([`relperf_favor::host::is_fused`]) each is its own
    /// dense layer on its third of `to_qkv`'s weight and bias, split into
    /// heads by one copy: burn-ndarray copies every `narrow` of the joint
    /// `[3, b, h, n, d]` projection, and in the backward fills a zero tensor
    /// of the joint size per part and adds the three. Elsewhere one
    /// projection, split by `narrow`.
    fn split_heads(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 3] {
        let [b, n, dim] = x.dims();
        let (h, d) = (self.heads, dim / self.heads);
        if let (true, Some(bias)) = (relperf_favor::host::is_fused::<B>(), &self.to_qkv.bias) {
            let (weight, bias) = (self.to_qkv.weight.val(), bias.val());
            return [0, 1, 2].map(|i| {
                let w = weight.clone().narrow(1, i * dim, dim);
                let bi = bias.clone().narrow(0, i * dim, dim);
                let y = match relperf_favor::host::dense(x.clone(), w, bi) {
                    Ok(y) => y,
                    Err((x, w, bi)) => x.matmul(w.unsqueeze()) + bi.unsqueeze(),
                };
                permute(reshape(y, [b, n, h, d]), [0, 2, 1, 3])
            });
        }
        let qkv = permute(
            linear(&self.to_qkv, x).reshape([b, n, 3, h, d]),
            [2, 0, 3, 1, 4],
        );
        [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).reshape([b, h, n, d]))
    }
}

/// Pre-norm block: `x + attn(norm(x))`, then `x + ff(norm(x))` with the
/// feed-forward `Linear, GELU, Dropout, Linear` and dropout after it (the
/// reference applies `ff_dropout` twice).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Before the attention.
    pub attn_norm: LayerNorm<B>,
    /// The attention.
    pub attn: Attention<B>,
    /// Before the feed-forward.
    pub ff_norm: LayerNorm<B>,
    /// `dim -> ff_mult dim`.
    pub ff_up: Linear<B>,
    /// `ff_mult dim -> dim`.
    pub ff_down: Linear<B>,
    /// Inside and after the feed-forward.
    pub ff_dropout: Dropout,
    /// Kept for the record layout; the block calls [`gelu`], which is
    /// `Gelu::forward` with the exact derivative on every backend.
    gelu: Gelu,
}

/// Whether the backend computes GELU's backward by Burn's default body: the
/// derivative of the tanh approximation (not of the erf GELU the forward
/// computes), in about 15 passes with `tanh` and `powf` (burn-ndarray 0.21;
/// burn-flex has an exact fused one).
fn default_gelu_backward<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("ndarray")
}

/// GELU `x Phi(x)` (erf form, the value of `burn::nn::Gelu`) whose
/// gradient is the exact `Phi(x) + x phi(x)`, as PyTorch's.
///
/// `l.forward(x)`; on burn-ndarray in `f32` the fused dense layer
/// [`relperf_favor::host::dense`] (one GEMM onto the bias, forward and
/// backward), the same value.
fn linear<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let Some(bias) = l
        .bias
        .as_ref()
        .filter(|_| relperf_favor::host::is_fused::<B>())
    else {
        return l.forward(x);
    };
    match relperf_favor::host::dense(x, l.weight.val(), bias.val()) {
        Ok(y) => y,
        Err((x, _, _)) => l.forward(x),
    }
}

/// `l.forward(x)`; on burn-ndarray in `f32` one pass over the rows
/// ([`relperf_favor::host::layer_norm`]). The models build every norm with
/// [`NORM_EPSILON`] (Burn keeps a module's epsilon private).
fn norm<B: Backend, const D: usize>(l: &LayerNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let Some(beta) = l
        .beta
        .as_ref()
        .filter(|_| relperf_favor::host::is_fused::<B>())
    else {
        return l.forward(x);
    };
    match relperf_favor::host::layer_norm(x, l.gamma.val(), beta.val(), NORM_EPSILON) {
        Ok(y) => y,
        Err((x, _, _)) => l.forward(x),
    }
}

/// The epsilon of every `LayerNorm` of the models: PyTorch's `1e-5`.
const NORM_EPSILON: f64 = 1e-5;

/// `x.reshape(shape)`; on burn-ndarray in `f32` without the copy its
/// reshape makes ([`relperf_favor::host::reshape`]).
fn reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    relperf_favor::host::reshape(x, shape)
}

/// `x.permute(perm)`; on burn-ndarray in `f32` written out in standard
/// layout ([`relperf_favor::host::permute_contiguous`]), so that the narrow
/// and reshape after it copy nothing.
fn permute<B: Backend, const D: usize>(x: Tensor<B, D>, perm: [usize; D]) -> Tensor<B, D> {
    relperf_favor::host::permute_contiguous(x, perm).unwrap_or_else(|x| x.permute(perm))
}

/// On backends with Burn's default GELU backward ([`default_gelu_backward`])
/// the training forward computes the slope `s` on a detached copy `x_d`
/// and returns `gelu(x_d) + (x - x_d) s`: the same value (`x - x_d` is
/// exactly zero), and a backward of one product instead of the default's
/// fifteen passes (a third of the ndarray train step's elementwise time).
/// Elsewhere, and without autodiff, Burn's GELU. On burn-ndarray in `f32`
/// the fused CPU kernel [`relperf_favor::host::gelu`] takes its place,
/// forward and backward.
fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = match relperf_favor::host::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let device = x.device();
    if !B::ad_enabled(&device) || !default_gelu_backward::<B>(&device) {
        return burn::tensor::activation::gelu(x);
    }
    let xd = x.clone().detach();
    // Burn's gelu is (x (erf(x / sqrt 2) + 1)) / 2: the same rounding as
    // x ((erf(x / sqrt 2) + 1) / 2), halving being exact
    let cdf = xd
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    let value = xd.clone() * cdf.clone();
    let pdf = (xd.clone() * xd.clone())
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let slope = cdf + xd.clone() * pdf;
    value + (x - xd) * slope
}

/// Whether masks are drawn on the host: CPU backends, whose `random` draws
/// each element through Burn's generic sampler (a tenth of the train step).
fn host_masks<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("ndarray") || name.contains("flex")
}

/// `burn::nn::Dropout::forward` in one product: the input times a mask of
/// `0` and `1 / (1 - prob)`, only when autodiff is on (training).
///
/// On CPU backends ([`host_masks`]) the mask is drawn on the host by a
/// xoshiro256++ generator whose seed is drawn from the backend's RNG (so
/// `Backend::seed` still makes the masks reproducible), each element kept
/// when a 32-bit draw falls below `(1 - prob) 2^32`
/// ([`relperf_favor::host::dropout_kept`]); burn-ndarray in `f32` applies
/// it in one fused op whose backward draws the mask again
/// ([`relperf_favor::host::dropout`]), the other CPU backends multiply by
/// it as a tensor. Elsewhere it is the backend's Bernoulli draw.
fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device) || dropout.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - dropout.prob;
    if !host_masks::<B>(&device) {
        let mask = x.random_like(Distribution::Bernoulli(keep));
        return x * mask * (1.0 / keep);
    }
    let draw: Vec<f32> = Tensor::<B, 1>::random([2], Distribution::Default, &device)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 draws");
    let seed = draw.iter().fold(0u64, |s, &u| {
        (s << 24) | ((u * 16_777_216.0) as u64 & 0xff_ffff)
    });
    let x = match relperf_favor::host::dropout(x, keep, seed) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let shape = x.shape();
    let mask = host_mask::<B::FloatElem>(shape.num_elements(), keep, seed);
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}

/// `count` values, each `1 / keep` with probability `keep` and `0`
/// otherwise: the mask of `seed` ([`relperf_favor::host::dropout_kept`]),
/// filled in parallel, for the CPU backends that do not take the fused
/// [`relperf_favor::host::dropout`] (which equals `x` times this).
fn host_mask<E: burn::tensor::Element>(count: usize, keep: f64, seed: u64) -> Vec<E> {
    use rayon::prelude::*;
    use relperf_favor::host::{dropout_kept, dropout_threshold};
    let threshold = dropout_threshold(keep);
    let (on, off): (E, E) = ((1.0 / keep).elem(), 0.0.elem());
    (0..count as u64)
        .into_par_iter()
        .map(|i| {
            if dropout_kept(seed, i, threshold) {
                on
            } else {
                off
            }
        })
        .collect()
}

impl<B: Backend> Block<B> {
    /// `[b, n, dim]` -> `[b, n, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        height: usize,
        width: usize,
        positions: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .attn
                .forward(norm(&self.attn_norm, x), height, width, positions);
        let hidden = dropout(
            &self.ff_dropout,
            gelu(linear(&self.ff_up, norm(&self.ff_norm, x.clone()))),
        );
        x + dropout(&self.ff_dropout, linear(&self.ff_down, hidden))
    }
}

/// One of the five models: see [`ModelKind`].
#[derive(Module, Debug)]
pub struct ImageClassifier<B: Backend> {
    /// Pixel embedding.
    pub content: ContentEmbedding<B>,
    /// `[1, 1, dim]`.
    pub class_token: Param<Tensor<B, 3>>,
    /// `Performer`'s absolute encoding.
    pub absolute: Option<AbsoluteSinusoid<B>>,
    /// Strategy 1's position features, shared by the layers.
    pub grid: Option<GridSinusoid<B>>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Before the head.
    pub norm: LayerNorm<B>,
    /// `dim -> classes`.
    pub output_layer: Linear<B>,
    #[module(skip)]
    config: ModelConfig,
}

impl ModelConfig {
    /// The model this config describes, with its random features drawn from
    /// `seed` (each layer's feature map gets its own seed from that stream);
    /// parameters are initialised by the backend's RNG.
    pub fn init<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<ImageClassifier<B>, ModelError> {
        self.validate()?;
        let dim = self.dim;
        let d = self.dim_head();
        let content = match self.embedding_type {
            EmbeddingType::Linear => {
                ContentEmbedding::Linear(LinearConfig::new(self.in_channels, dim).init(device))
            }
            EmbeddingType::Mlp => ContentEmbedding::Mlp(Mlp {
                first: LinearConfig::new(self.in_channels, dim).init(device),
                second: LinearConfig::new(dim, dim).init(device),
            }),
            EmbeddingType::Lookup => ContentEmbedding::Lookup(
                EmbeddingConfig::new(256 * self.in_channels, dim).init(device),
            ),
        };
        let mut seeds = Gaussian::new(seed);
        let blocks = (0..self.depth)
            .map(|_| {
                let positions = match self.model {
                    ModelKind::Performer | ModelKind::NoposPerformer => {
                        LayerPositions::Content(ContentOnly)
                    }
                    ModelKind::RelativePerformer => LayerPositions::Constrained(
                        ConstrainedProjectionConfig::new(dim, self.heads, self.pos_scales)
                            .with_content_rel_attn(self.content_rel_attn)
                            .init(device),
                    ),
                    ModelKind::ClippedRelativePerformer => LayerPositions::Clipped(
                        RelativeKeysConfig::new(self.heads, d, self.clipping_dist).init(device),
                    ),
                    ModelKind::ExactRelativePerformer => LayerPositions::Periodic(
                        PeriodicFactorConfig::new(dim, self.heads, self.pos_scales)
                            .with_content_rel_attn(self.content_rel_attn)
                            .init(device),
                    ),
                };
                let kernel_dim = d + positions.qk_extra_dim();
                let nb_features = match self.model {
                    ModelKind::ExactRelativePerformer => Some(self.nb_features.unwrap_or(d)),
                    _ => self.nb_features,
                };
                let feature_seed = seeds.next_u64();
                let features = (!self.no_projection).then(|| {
                    FeatureMapConfig::new(kernel_dim)
                        .with_nb_features(nb_features)
                        .with_kernel(self.kernel)
                        .init(feature_seed, device)
                });
                Block {
                    attn_norm: LayerNormConfig::new(dim)
                        .with_epsilon(NORM_EPSILON)
                        .init(device),
                    attn: Attention {
                        to_qkv: LinearConfig::new(dim, 3 * dim).init(device),
                        to_out: LinearConfig::new(dim, dim).init(device),
                        features,
                        positions,
                        dropout: DropoutConfig::new(self.attn_dropout).init(),
                        heads: self.heads,
                    },
                    ff_norm: LayerNormConfig::new(dim)
                        .with_epsilon(NORM_EPSILON)
                        .init(device),
                    ff_up: LinearConfig::new(dim, dim * self.ff_mult).init(device),
                    ff_down: LinearConfig::new(dim * self.ff_mult, dim).init(device),
                    ff_dropout: DropoutConfig::new(self.ff_dropout).init(),
                    gelu: Gelu::new(),
                }
            })
            .collect();
        let class_token = Tensor::random([1, 1, dim], Distribution::Normal(0.0, 0.02), device);
        let model = ImageClassifier {
            content,
            class_token: Param::initialized(ParamId::new(), class_token.require_grad()),
            absolute: (self.model == ModelKind::Performer)
                .then(|| AbsoluteSinusoidConfig::new(dim).init(device)),
            grid: (self.model == ModelKind::RelativePerformer)
                .then(|| GridSinusoidConfig::new(self.pos_scales).init(device)),
            blocks,
            norm: LayerNormConfig::new(dim)
                .with_epsilon(NORM_EPSILON)
                .init(device),
            output_layer: LinearConfig::new(dim, self.num_classes).init(device),
            config: self.clone(),
        };
        // Burn initialises parameters lazily, at first use, and a clone made
        // before that draws its own values: materialise them now, so that a
        // model and its clones (and the records made of them) agree.
        model.visit(&mut Materialise);
        Ok(model)
    }
}

/// Reads every parameter once (see [`ModelConfig::init`]).
struct Materialise;

impl<B: Backend> ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

impl<B: Backend> ImageClassifier<B> {
    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Checks that images of `[channels, height, width]` fit the model
    /// (one line saying what to do otherwise).
    pub fn check_input(
        &self,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(), ModelError> {
        if channels != self.config.in_channels {
            return Err(ModelError::Input(format!(
                "the model takes images of {} channel(s), these have {channels}: it was built for another dataset",
                self.config.in_channels
            )));
        }
        if height == 0 || width == 0 {
            return Err(ModelError::Input(format!(
                "images of {height}x{width} pixels have no pixel to attend to"
            )));
        }
        Ok(())
    }

    /// Class logits `[b, classes]` of float images `[b, channels, height,
    /// width]` (normalised as the data crate's batcher makes them).
    ///
    /// # Panics
    /// If the model uses the `lookup` embedding (use
    /// [`ImageClassifier::forward_bytes`]) or the images do not fit
    /// ([`ImageClassifier::check_input`]).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = images.dims();
        let pixels = images.reshape([b, c, h * w]).swap_dims(1, 2); // [b, n, c]
        let embedded = match &self.content {
            ContentEmbedding::Linear(l) => linear(l, pixels),
            ContentEmbedding::Mlp(m) => linear(&m.second, gelu(linear(&m.first, pixels))),
            ContentEmbedding::Lookup(_) => {
                panic!("the lookup embedding takes bytes: call forward_bytes")
            }
        };
        self.head(embedded, h, w)
    }

    /// Class logits of byte images `[b, channels, height, width]` (values
    /// 0..255) for the `lookup` embedding; other embeddings take the bytes
    /// divided by 255.
    pub fn forward_bytes(&self, pixels: Tensor<B, 4, Int>) -> Tensor<B, 2> {
        let [b, c, h, w] = pixels.dims();
        match &self.content {
            ContentEmbedding::Lookup(table) => {
                let offsets = Tensor::<B, 1, Int>::arange(0..c as i64, &pixels.device())
                    .mul_scalar(256)
                    .reshape([1, c, 1]);
                let ids = pixels.reshape([b, c, h * w]) + offsets; // [b, c, n]
                let rows = table.forward(ids.reshape([b, c * h * w])); // [b, c n, dim]
                let dim = rows.dims()[2];
                let summed = rows
                    .reshape([b, c, h * w, dim])
                    .sum_dim(1)
                    .reshape([b, h * w, dim]);
                self.head(summed, h, w)
            }
            _ => self.forward(pixels.float().div_scalar(255.0)),
        }
    }

    /// Pixel embeddings `[b, n, dim]` -> logits.
    fn head(&self, pixels: Tensor<B, 3>, height: usize, width: usize) -> Tensor<B, 2> {
        let [b, _, dim] = pixels.dims();
        let pixels = match &self.absolute {
            Some(enc) => pixels + enc.encode(height, width).unsqueeze::<3>(),
            None => pixels,
        };
        let mut x = Tensor::cat(vec![self.class_token.val().expand([b, 1, dim]), pixels], 1);
        let positions = self
            .grid
            .as_ref()
            .map(|g| with_class_token(g.features(height, width)));
        for block in &self.blocks {
            x = block.forward(x, height, width, positions.clone());
        }
        let class = x.narrow(1, 0, 1).reshape([b, dim]);
        linear(&self.output_layer, norm(&self.norm, class))
    }

    /// Every attention's random features, in layer order.
    pub fn feature_maps(&self) -> Vec<&FeatureMap<B>> {
        self.blocks
            .iter()
            .filter_map(|b| b.attn.features.as_ref())
            .collect()
    }

    fn map_features(mut self, mut f: impl FnMut(FeatureMap<B>) -> FeatureMap<B>) -> Self {
        for block in &mut self.blocks {
            block.attn.features = block.attn.features.take().map(&mut f);
        }
        self
    }

    /// The same weights with exact softmax attention in every layer (the
    /// random features removed; quadratic in the tokens).
    pub fn without_features(mut self) -> Self {
        for block in &mut self.blocks {
            block.attn.features = None;
        }
        self.config.no_projection = true;
        self
    }

    /// Draws the next random features in every attention module.
    pub fn redraw_features(self) -> Self {
        self.map_features(|m| m.redraw())
    }

    /// Fresh random features for evaluation: each layer's map gets a seed
    /// from the stream of `seed`, draw 1.
    pub fn with_feature_seed(self, seed: u64) -> Self {
        let mut seeds = Gaussian::new(seed);
        self.map_features(|m| m.with_draw(seeds.next_u64(), 1))
    }

    /// Trainable parameters (all but the random features), as the reference
    /// counts them.
    pub fn trainable_params(&self) -> usize {
        let frozen: usize = self
            .feature_maps()
            .iter()
            .map(|m| m.dim() * m.nb_features())
            .sum();
        self.num_params() - frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;

    type F64 = Autodiff<burn::backend::NdArray<f64>>;

    #[test]
    fn gelu_has_the_value_of_burns_and_the_exact_derivative() {
        let device = Default::default();
        let v: Vec<f64> = (0..41).map(|i| (i as f64 - 20.0) / 4.0).collect();
        let x = Tensor::<F64, 1>::from_data(TensorData::new(v.clone(), [v.len()]), &device)
            .require_grad();
        let y = gelu(x.clone());
        let burn_y = burn::tensor::activation::gelu(x.clone().detach());
        y.clone()
            .into_data()
            .assert_approx_eq::<f64>(&burn_y.into_data(), burn::tensor::Tolerance::absolute(0.0));
        let grads = y.sum().backward();
        let g: Vec<f64> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (x, g) in v.iter().zip(g) {
            let cdf = 0.5 * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((g - (cdf + x * pdf)).abs() < 1e-12, "x {x}: {g}");
        }
    }

    /// erf by its series (|x| <= 5 / sqrt 2 here), for the test only.
    fn libm_erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn dropout_masks_keep_the_mean_and_follow_the_backend_seed() {
        let device = Default::default();
        let layer = DropoutConfig::new(0.1).init();
        let x = Tensor::<F64, 1>::ones([200_000], &device);
        let draw = || {
            <F64 as Backend>::seed(&device, 5);
            let y: Vec<f64> = dropout(&layer, x.clone()).into_data().to_vec().unwrap();
            y
        };
        let (a, b) = (draw(), draw());
        assert_eq!(a, b, "the same backend seed gives the same mask");
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.9).abs() < 0.004, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || v == 1.0 / 0.9));
        // the mask is no repeating pattern, and another seed another mask
        assert_ne!(a[..1000], a[1000..2000]);
        <F64 as Backend>::seed(&device, 6);
        let c: Vec<f64> = dropout(&layer, x.clone()).into_data().to_vec().unwrap();
        assert_ne!(a, c);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
        // without autodiff (evaluation) dropout is the identity
        let plain = Tensor::<burn::backend::NdArray<f64>, 1>::ones([10], &device);
        assert_eq!(
            dropout(&layer, plain).into_data().to_vec::<f64>().unwrap(),
            vec![1.0; 10]
        );
    }
}
