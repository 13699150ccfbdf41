//! Strategy 1's rotated position features (`relperf_positional`'s
//! `ConstrainedProjection`) in one pass, forward and backward.
//!
//! With the position features `f [n, P, 2]` (`(sin, cos)` pairs, `P` = axes
//! x scales) and per head `alpha, beta [h, P]`:
//!
//! ```text
//! out[h, i, p] = (alpha sin - beta cos, alpha cos + beta sin)
//! ```
//!
//! The plain ops build it from slices of `f`, a broadcast to `[h, n, P, 2]`,
//! four products, two differences and a concatenation, and take as many
//! passes in the backward (the broadcast's gradient a sum over the heads,
//! the parameters' a sum over the tokens). Their cost is per token, not per
//! image: at batch 1 and 128x128 pixels it was a tenth of
//! `RelativePerformer`'s train step.

use super::*;

/// One call's sizes: `h` heads, `n` tokens, `p` `(sin, cos)` pairs each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RotateDims {
    h: usize,
    n: usize,
    p: usize,
}

impl RotateDims {
    /// `[h, n, P, 2]` from `f [n, P, 2]`, `alpha`, `beta [h, P]`.
    fn forward(&self, f: &[f32], alpha: &[f32], beta: &[f32]) -> Vec<f32> {
        let RotateDims { n, p, .. } = *self;
        let mut out = vec![0.0f32; self.h * n * p * 2];
        out.par_chunks_mut(n * p * 2)
            .zip(alpha.par_chunks(p).zip(beta.par_chunks(p)))
            .for_each(|(o, (a, b))| {
                for (orow, frow) in o.chunks_exact_mut(p * 2).zip(f.chunks_exact(p * 2)) {
                    for (((o, f), a), b) in orow
                        .chunks_exact_mut(2)
                        .zip(frow.chunks_exact(2))
                        .zip(a)
                        .zip(b)
                    {
                        let (sin, cos) = (f[0], f[1]);
                        o[0] = a * sin - b * cos;
                        o[1] = a * cos + b * sin;
                    }
                }
            });
        out
    }

    /// `(df, dalpha, dbeta)` given the output's `g [h, n, P, 2]`: `df` sums
    /// over the heads, `dalpha`, `dbeta` over the tokens (per task of
    /// [`ROWS_PER_TASK`] tokens, then over the tasks).
    fn backward(&self, f: &[f32], alpha: &[f32], beta: &[f32], g: &[f32]) -> [Vec<f32>; 3] {
        let RotateDims { h, n, p } = *self;
        let width = p * 2;
        let mut df = vec![0.0f32; n * width];
        let sums = df
            .par_chunks_mut(ROWS_PER_TASK * width)
            .enumerate()
            .map(|(t, dft)| {
                let first = t * ROWS_PER_TASK;
                let rows = dft.len() / width;
                let frows = &f[first * width..(first + rows) * width];
                // [dalpha; dbeta] of this task's tokens
                let mut part = vec![0.0f32; 2 * h * p];
                let (da, db) = part.split_at_mut(h * p);
                for head in 0..h {
                    let (a, b) = (&alpha[head * p..][..p], &beta[head * p..][..p]);
                    let (da, db) = (&mut da[head * p..][..p], &mut db[head * p..][..p]);
                    let grows = &g[(head * n + first) * width..][..rows * width];
                    for ((dfr, fr), gr) in dft
                        .chunks_exact_mut(width)
                        .zip(frows.chunks_exact(width))
                        .zip(grows.chunks_exact(width))
                    {
                        for j in 0..p {
                            let (sin, cos) = (fr[2 * j], fr[2 * j + 1]);
                            let (g0, g1) = (gr[2 * j], gr[2 * j + 1]);
                            dfr[2 * j] += g0 * a[j] + g1 * b[j];
                            dfr[2 * j + 1] += g1 * a[j] - g0 * b[j];
                            da[j] += g0 * sin + g1 * cos;
                            db[j] += g1 * sin - g0 * cos;
                        }
                    }
                }
                part
            })
            .reduce(
                || vec![0.0f32; 2 * h * p],
                |mut x, y| {
                    x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
                    x
                },
            );
        let (da, db) = sums.split_at(h * p);
        [df, da.to_vec(), db.to_vec()]
    }
}

#[derive(Debug)]
struct RotateBackward;

/// The rotation's inputs (`f`, `alpha`, `beta`) and their shapes.
type RotateState<I> = (RotateDims, [FloatTensor<I>; 3], [Vec<usize>; 3]);

impl<I: HostIo> Backward<I, 3> for RotateBackward {
    type State = RotateState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [f, alpha, beta], shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&f, |f| {
            I::with_slice(&alpha, |a| {
                I::with_slice(&beta, |b| {
                    I::with_slice(&grad, |g| dims.backward(f, a, b, g))
                })
            })
        });
        register_all::<I>(
            ops.parents.map(|p| p.map(|node| node.id)),
            gs,
            shapes,
            &device,
            grads,
        );
    }
}

/// Strategy 1's rotation of the position features `f [n, P, 2]` (`(sin,
/// cos)` pairs) by each head's `alpha, beta [h, P]`: `[h, n, P, 2]` with
/// `(alpha sin - beta cos, alpha cos + beta sin)`, in one pass forward and
/// backward, when [`is_fused`]; the inputs back otherwise (and for shapes
/// that do not fit).
#[allow(clippy::type_complexity)]
pub fn rotate_pairs<B: Backend>(
    f: Tensor<B, 3>,
    alpha: Tensor<B, 2>,
    beta: Tensor<B, 2>,
) -> Result<Tensor<B, 4>, (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 2>)> {
    let [n, p, two] = f.dims();
    let [h, pa] = alpha.dims();
    if !is_fused::<B>() || two != 2 || pa != p || beta.dims() != [h, p] {
        return Err((f, alpha, beta));
    }
    let dims = RotateDims { h, n, p };
    let out_shape = [h, n, p, 2];
    let shapes = [f.dims().to_vec(), vec![h, p], vec![h, p]];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let [a, b]: [FloatTensor<I>; 2] =
                    [alpha, beta].map(|t| same(t.into_primitive().tensor()));
                let f: FloatTensor<I> = same(f.into_primitive().tensor());
                let out = I::with_slice(&f, |f| {
                    I::with_slice(&a, |a| I::with_slice(&b, |b| dims.forward(f, a, b)))
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&f));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let [a, b]: [FloatTensor<Autodiff<I>>; 2] =
                    [alpha, beta].map(|t| same(t.into_primitive().tensor()));
                let f: FloatTensor<Autodiff<I>> = same(f.into_primitive().tensor());
                let out = I::with_slice(&f.primitive, |fp| {
                    I::with_slice(&a.primitive, |ap| {
                        I::with_slice(&b.primitive, |bp| dims.forward(fp, ap, bp))
                    })
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&f.primitive));
                let out = match <RotateBackward as Backward<I, 3>>::prepare::<NoCheckpointing>(
                    RotateBackward,
                    [f.node.clone(), a.node.clone(), b.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        prep.finish((dims, [f.primitive, a.primitive, b.primitive], shapes), out)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((f, alpha, beta))
}
