//! The softmax-kernel feature maps fused into one pass on the CPU, forward
//! and backward: projection, stabiliser and `exp` of each `(sample, head)`
//! slice in one task, the slices spread over rayon's threads, `exp` by a
//! polynomial the compiler vectorises.
//!
//! [`crate::features::softmax_features_up_to_scale_reference`] is the
//! reference, in plain tensor ops, for every backend. On burn-ndarray it
//! takes about ten passes over the `[b, h, n, m]` features (projection,
//! norm, two maxima, subtraction, a scalar `exp`, and as many in the
//! backward), each on one thread; here one task per slice keeps its rows in
//! cache, and the tensors are read and written in place (no copy).
//!
//! Measured on a 2-core CPU (`benches/attention.rs`, `RELPERF_FUSED=0`
//! against the default): the `favor_softmax` layer at 32x32 forward
//! 36.7 -> 31.6 ms, forward+backward 79.6 -> 65.1 ms (batch 2); the
//! `Performer` train step (batch 16) about 10% faster. On burn-flex the same
//! kernel, fed through `TensorData` copies, measured no faster than flex's
//! own ops, so flex runs the reference.
//!
//! # Which backends take this path
//! `burn-ndarray` in `f32`, with and without Burn's autodiff (this crate's
//! cargo feature `ndarray` names the type), when the projection takes no
//! gradient. The backend is recognised
//! by its type at run time ([`std::any::TypeId`]), so no extension trait
//! bound reaches the models' or the users' generic code: every other
//! backend (wgpu, `f64`, a user's own) runs the reference unchanged.
//! Setting `RELPERF_FUSED=0` turns the path off (for comparisons);
//! [`is_fused`] tells whether a backend takes it.
//!
//! The tests compare it with the reference, outputs and gradients, on
//! seeded inputs.

// Without the `ndarray` feature no backend takes the fused path, and its
// helpers are compiled but unused.
#![cfg_attr(not(feature = "ndarray"), allow(unused))]

use std::any::{Any, TypeId};
use std::sync::{Arc, OnceLock};

use burn::tensor::TensorMetadata;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

/// The shape of one `(sample, head)` slice: `n x d` rows, `m` features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    n: usize,
    d: usize,
    m: usize,
}

/// `W d^-1/4` (`[m, d]`, row-major) and what the kernel needs besides.
#[derive(Debug, Clone)]
struct Kernel {
    dims: Dims,
    w: Arc<Vec<f32>>,
    /// `0.5 / sqrt(d)`: keys' `|x d^-1/4|^2 / 2 = c |x|^2`.
    c: f32,
    is_query: bool,
}

impl Kernel {
    fn new(dims: Dims, projection: &[f32], is_query: bool) -> Self {
        let scale = (dims.d as f32).powf(-0.25);
        Kernel {
            dims,
            w: Arc::new(projection.iter().map(|v| v * scale).collect()),
            c: 0.5 / (dims.d as f32).sqrt(),
            is_query,
        }
    }

    fn w(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.dims.m, self.dims.d), &self.w).expect("projection shape")
    }

    /// Features `[slices, n, m]` of `x [slices, n, d]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let Dims { n, d, m, .. } = self.dims;
        let mut out = vec![0.0f32; x.len() / d * m];
        out.par_chunks_mut(n * m)
            .zip(x.par_chunks(n * d))
            .for_each(|(f, xs)| self.forward_slice(xs, f));
        out
    }

    fn forward_slice(&self, xs: &[f32], f: &mut [f32]) {
        let Dims { n, d, m, .. } = self.dims;
        let xv = ArrayView2::from_shape((n, d), xs).expect("slice shape");
        let mut p = ArrayViewMut2::from_shape((n, m), &mut *f).expect("slice shape");
        general_mat_mul(1.0, &xv, &self.w().t(), 0.0, &mut p);
        if self.is_query {
            // softmax over the features of each row
            for row in f.chunks_exact_mut(m) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|v| *v -= max);
                exp_in_place(row);
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
        } else {
            // exp(W x' - c |x|^2 - s), s the maximum over the slice
            let mut max = f32::NEG_INFINITY;
            for (row, xr) in f.chunks_exact_mut(m).zip(xs.chunks_exact(d)) {
                let norm = self.c * xr.iter().map(|v| v * v).sum::<f32>();
                for v in row.iter_mut() {
                    *v -= norm;
                    max = max.max(*v);
                }
            }
            f.iter_mut().for_each(|v| *v -= max);
            exp_in_place(f);
        }
    }

    /// The gradient `[slices, n, d]` with respect to `x` of the features
    /// `f`, given theirs, `g`.
    fn backward(&self, x: &[f32], f: &[f32], g: &[f32]) -> Vec<f32> {
        let Dims { n, d, m, .. } = self.dims;
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(n * d)
            .zip(x.par_chunks(n * d))
            .zip(f.par_chunks(n * m).zip(g.par_chunks(n * m)))
            .for_each(|((gx, xs), (fs, gs))| self.backward_slice(xs, fs, gs, gx));
        out
    }

    fn backward_slice(&self, xs: &[f32], fs: &[f32], gs: &[f32], gx: &mut [f32]) {
        let Dims { n, d, m, .. } = self.dims;
        // gradient of the exponent (the stabiliser is detached)
        let mut gp: Vec<f32> = fs.iter().zip(gs).map(|(f, g)| f * g).collect();
        let mut row_sums = vec![0.0f32; n];
        for ((row, fr), rs) in gp
            .chunks_exact_mut(m)
            .zip(fs.chunks_exact(m))
            .zip(&mut row_sums)
        {
            let s: f32 = row.iter().sum();
            if self.is_query {
                // softmax: f (g - sum(g f))
                row.iter_mut().zip(fr).for_each(|(v, f)| *v -= f * s);
            } else {
                *rs = s;
            }
        }
        let gpv = ArrayView2::from_shape((n, m), &gp).expect("slice shape");
        let mut gxv = ArrayViewMut2::from_shape((n, d), &mut *gx).expect("slice shape");
        general_mat_mul(1.0, &gpv, &self.w(), 0.0, &mut gxv);
        if !self.is_query {
            let two_c = 2.0 * self.c;
            for ((gr, xr), rs) in gx
                .chunks_exact_mut(d)
                .zip(xs.chunks_exact(d))
                .zip(&row_sums)
            {
                gr.iter_mut()
                    .zip(xr)
                    .for_each(|(g, x)| *g -= two_c * rs * x);
            }
        }
    }
}

/// `exp` of every element, by Cephes' `expf` polynomial after reduction
/// by powers of two, written branch-free so that it vectorises (relative
/// error below 2e-7 for inputs in `[-87, 88]`; smaller inputs give about
/// `1e-38` instead of 0, larger ones about `1.6e38`).
pub(crate) fn exp_in_place(v: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding and subtracting 1.5 * 2^23 rounds to the nearest integer
    const ROUND: f32 = 12_582_912.0;
    for x in v.iter_mut() {
        let a = x.clamp(-87.0, 88.0);
        let k = (a * LOG2E + ROUND) - ROUND;
        let r = a - k * LN2_HI - k * LN2_LO;
        let p = 1.987_569_1e-4f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 5e-1;
        let e = p * r * r + r + 1.0;
        let two_k = f32::from_bits(((k as i32 + 127) as u32) << 23);
        *x = e * two_k;
    }
}

/// How the kernel reads and writes a backend's `f32` tensors on the host.
trait HostIo: Backend {
    /// `f` of `t`'s elements in row-major order (no copy where the backend
    /// holds them so).
    fn with_slice<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R;
    /// A tensor of `shape` holding `v` (row-major).
    fn from_vec(v: Vec<f32>, shape: [usize; 4], device: &Self::Device) -> FloatTensor<Self>;
}

#[cfg(feature = "ndarray")]
impl HostIo for burn_ndarray::NdArray<f32> {
    fn with_slice<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
        match t {
            burn_ndarray::NdArrayTensor::F32(storage) => {
                let view = storage.view();
                match view.as_slice() {
                    Some(s) => f(s),
                    None => f(view
                        .as_standard_layout()
                        .as_slice()
                        .expect("standard layout")),
                }
            }
            // another dtype on an f32 backend: through Burn's conversion
            other => f(&host_vec(Tensor::<Self, 4>::from_primitive(
                TensorPrimitive::Float(other.clone()),
            ))),
        }
    }

    fn from_vec(v: Vec<f32>, shape: [usize; 4], _: &Self::Device) -> FloatTensor<Self> {
        ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&shape), v)
            .expect("length matches the shape")
            .into()
    }
}

/// What one call hands the backward pass: the input and the features, as
/// the backend holds them (no copy).
#[derive(Debug, Clone)]
struct State<I: Backend> {
    kernel: Kernel,
    x: FloatTensor<I>,
    features: FloatTensor<I>,
    shape: [usize; 4],
}

#[derive(Debug)]
struct FeaturesBackward;

impl<I: HostIo> Backward<I, 1> for FeaturesBackward {
    type State = State<I>;

    fn backward(self, ops: Ops<State<I>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let device = I::float_device(&grad);
            let gx = I::with_slice(&state.x, |x| {
                I::with_slice(&state.features, |f| {
                    I::with_slice(&grad, |g| state.kernel.backward(x, f, g))
                })
            });
            I::from_vec(gx, state.shape, &device)
        });
    }
}

fn host_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("f32 tensor on an f32 backend")
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("RELPERF_FUSED").map_or(true, |v| v != "0"))
}

/// Moves `t` into the type `U` it is (checked by the caller).
fn same<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("types checked equal"))
}

/// The fused features of `x` on `I`, without autodiff.
fn plain<I: HostIo>(
    x: FloatTensor<I>,
    projection: &[f32],
    m: usize,
    is_query: bool,
) -> FloatTensor<I> {
    let [b, h, n, d] = x.shape().dims::<4>();
    let kernel = Kernel::new(Dims { n, d, m }, projection, is_query);
    let f = I::with_slice(&x, |xs| kernel.forward(xs));
    I::from_vec(f, [b, h, n, m], &I::float_device(&x))
}

/// The fused features on `Autodiff<I>`, with [`FeaturesBackward`].
fn tracked<I: HostIo>(
    x: FloatTensor<Autodiff<I>>,
    projection: &[f32],
    m: usize,
    is_query: bool,
) -> FloatTensor<Autodiff<I>> {
    let [b, h, n, d] = x.primitive.shape().dims::<4>();
    let kernel = Kernel::new(Dims { n, d, m }, projection, is_query);
    let f = I::with_slice(&x.primitive, |xs| kernel.forward(xs));
    let output = I::from_vec(f, [b, h, n, m], &I::float_device(&x.primitive));
    match FeaturesBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = State {
                kernel,
                x: x.primitive.clone(),
                features: output.clone(),
                shape: [b, h, n, d],
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Whether `B` takes the fused path: `burn-ndarray` in `f32`, plain or
/// under `Autodiff`, with this crate's cargo feature `ndarray` on (and
/// `RELPERF_FUSED` not `0`).
pub fn is_fused<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    #[cfg(feature = "ndarray")]
    {
        type I = burn_ndarray::NdArray<f32>;
        if id == TypeId::of::<I>() || id == TypeId::of::<Autodiff<I>>() {
            return enabled();
        }
    }
    let _ = id;
    false
}

/// The fused softmax-kernel features of `x` (`[b, h, n, d]`, projection
/// `[m, d]`), as [`crate::features::softmax_features_up_to_scale_reference`]
/// computes them, when [`is_fused`]; the inputs back otherwise.
pub(crate) fn softmax_features<B: Backend>(
    x: Tensor<B, 4>,
    projection: Tensor<B, 2>,
    is_query: bool,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 2>)> {
    if !is_fused::<B>() || projection.is_require_grad() || x.dims()[3] != projection.dims()[1] {
        return Err((x, projection));
    }
    macro_rules! on {
        ($inner:ty) => {
            let m = projection.dims()[0];
            if TypeId::of::<B>() == TypeId::of::<$inner>() {
                let w = host_vec(projection);
                let prim: FloatTensor<$inner> = same(x.into_primitive().tensor());
                let out = plain::<$inner>(prim, &w, m, is_query);
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner>>() {
                let w = host_vec(projection);
                let prim: FloatTensor<Autodiff<$inner>> = same(x.into_primitive().tensor());
                let out = tracked::<$inner>(prim, &w, m, is_query);
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((x, projection))
}

#[cfg(test)]
mod tests {
    use super::exp_in_place;

    #[test]
    fn exp_matches_the_standard_library() {
        let xs: Vec<f32> = (-8700..=8800).map(|i| i as f32 * 0.01).collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        let worst = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| ((*y as f64 - (*x as f64).exp()) / (*x as f64).exp()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 3e-7, "relative error {worst}");
        let mut tiny = [-200.0f32, -1e30];
        exp_in_place(&mut tiny);
        assert!(tiny.iter().all(|v| *v >= 0.0 && *v < 2e-38), "{tiny:?}");
    }
}
