//! The optimizer of the reference: Adam (betas 0.9 / 0.98, PyTorch's eps
//! 1e-8, no weight decay) after clipping the gradients by their global L2
//! norm, as `torch.nn.utils.clip_grad_norm_` does (Burn's own `Norm`
//! clipping is per parameter tensor).

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// Adam with the reference's betas and PyTorch's epsilon.
pub fn adam<B: AutodiffBackend, M: AutodiffModule<B>>() -> OptimizerAdaptor<Adam, M, B> {
    AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.98)
        .with_epsilon(1e-8)
        .init()
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
    ids: Vec<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
            self.ids.push(param.id);
        }
    }
}

/// The global L2 norm of `grads` over `module`'s parameters.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum
        .map(|s| s.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// Scales `grads` by `max_norm / (norm + 1e-6)` when their global norm is
/// above `max_norm` (PyTorch's `clip_grad_norm_`); returns the norm before
/// clipping. `max_norm` 0 turns clipping off.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm::<B, M>(module, grads);
    if max_norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            let mut s = Scale {
                grads,
                factor,
                ids: Vec::new(),
            };
            module.visit(&mut s);
        }
    }
    norm
}
