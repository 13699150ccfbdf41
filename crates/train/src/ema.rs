//! The exponential moving average of the weights (`--ema-decay`), as the
//! reference keeps it: after optimizer step `n` (from 1),
//! `ema += (1 - d_n) (w - ema)` with `d_n = min(d, (1 + n) / (10 + n))`.
//! Only trainable parameters are averaged; the random features stay the
//! current draw.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The average, on the backend without autodiff.
#[derive(Debug, Clone)]
pub struct Ema<B: Backend> {
    /// The decay `d`.
    pub decay: f64,
    /// Updates so far.
    pub updates: u64,
    weights: HashMap<ParamId, Tensor<B, 1>>,
}

struct Trainable<B: AutodiffBackend> {
    out: Vec<(ParamId, Tensor<B::InnerBackend, 1>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Trainable<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let n = t.shape().num_elements();
            self.out.push((param.id, t.inner().reshape([n])));
        }
    }
}

fn trainable<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
) -> Vec<(ParamId, Tensor<B::InnerBackend, 1>)> {
    let mut v = Trainable::<B> { out: Vec::new() };
    module.visit(&mut v);
    v.out
}

struct Swap<'a, B: Backend> {
    weights: &'a HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleMapper<B> for Swap<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.weights.get(&param.id) {
            Some(w) => {
                let w = w.clone();
                param.map(|t| w.reshape(t.shape()))
            }
            None => param,
        }
    }
}

impl<B: Backend> Ema<B> {
    /// The average starting at `module`'s trainable weights.
    pub fn new<A, M>(decay: f64, module: &M) -> Self
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        Ema {
            decay,
            updates: 0,
            weights: trainable::<A, M>(module).into_iter().collect(),
        }
    }

    /// One update after an optimizer step.
    pub fn update<A, M>(&mut self, module: &M)
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (id, w) in trainable::<A, M>(module) {
            let avg = match self.weights.remove(&id) {
                Some(e) => e.clone() + (w - e).mul_scalar(1.0 - d),
                None => w,
            };
            self.weights.insert(id, avg);
        }
    }

    /// `module` (on the backend without autodiff) with the averaged weights
    /// in place of its trainable ones.
    pub fn apply<M: Module<B>>(&self, module: M) -> M {
        module.map(&mut Swap {
            weights: &self.weights,
        })
    }

    /// The average held by `averaged` (a module [`Ema::apply`] made, e.g.
    /// read back from a checkpoint), for the parameters of `module`.
    pub fn restore<A, M>(decay: f64, updates: u64, module: &M, averaged: &M::InnerModule) -> Self
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        struct Collect<B: Backend> {
            out: HashMap<ParamId, Tensor<B, 1>>,
        }
        impl<B: Backend> ModuleVisitor<B> for Collect<B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let t = param.val();
                let n = t.shape().num_elements();
                self.out.insert(param.id, t.reshape([n]));
            }
        }
        let ids: Vec<ParamId> = trainable::<A, M>(module)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut c = Collect {
            out: HashMap::new(),
        };
        averaged.visit(&mut c);
        let weights = ids
            .into_iter()
            .filter_map(|id| c.out.remove(&id).map(|t| (id, t)))
            .collect();
        Ema {
            decay,
            updates,
            weights,
        }
    }
}
