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

/// One call's sizes: `h` heads, `n` tokens, `p` `(sin, cos)` pairs each,
/// in groups of `group` pairs, each group led by one value per head when
/// `lead` (the periodic factor's query vectors: `[a0, rotated pairs]` per
/// axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RotateDims {
    h: usize,
    n: usize,
    p: usize,
    group: usize,
    lead: bool,
}

impl RotateDims {
    fn groups(&self) -> usize {
        self.p / self.group
    }

    /// Output values per token and head.
    fn width(&self) -> usize {
        2 * self.p + if self.lead { self.groups() } else { 0 }
    }

    /// `[h, n, width]` from `f [n, P, 2]`, `alpha`, `beta [h, P]` and, with
    /// `lead`, `l [h, groups]`.
    fn forward(&self, f: &[f32], alpha: &[f32], beta: &[f32], l: &[f32]) -> Vec<f32> {
        let RotateDims { n, p, group, .. } = *self;
        let (width, groups) = (self.width(), self.groups());
        let lead = usize::from(self.lead);
        let mut out = vec![0.0f32; self.h * n * width];
        out.par_chunks_mut(n * width)
            .enumerate()
            .for_each(|(head, o)| {
                let (a, b) = (&alpha[head * p..][..p], &beta[head * p..][..p]);
                for (orow, frow) in o.chunks_exact_mut(width).zip(f.chunks_exact(p * 2)) {
                    for gi in 0..groups {
                        let og = &mut orow[gi * (lead + 2 * group)..][..lead + 2 * group];
                        if lead == 1 {
                            og[0] = l[head * groups + gi];
                        }
                        let range = gi * group..(gi + 1) * group;
                        for (((o, f), a), b) in og[lead..]
                            .chunks_exact_mut(2)
                            .zip(frow[2 * range.start..2 * range.end].chunks_exact(2))
                            .zip(&a[range.clone()])
                            .zip(&b[range])
                        {
                            let (sin, cos) = (f[0], f[1]);
                            o[0] = a * sin - b * cos;
                            o[1] = a * cos + b * sin;
                        }
                    }
                }
            });
        out
    }

    /// `[df, dalpha, dbeta, dl]` given the output's `g [h, n, width]`: `df`
    /// sums over the heads, the others over the tokens (per task of
    /// [`ROWS_PER_TASK`] tokens, then over the tasks); `dl` is empty without
    /// `lead`.
    fn backward(&self, f: &[f32], alpha: &[f32], beta: &[f32], g: &[f32]) -> [Vec<f32>; 4] {
        let RotateDims { h, n, p, group, .. } = *self;
        let (width, groups) = (self.width(), self.groups());
        let lead = usize::from(self.lead);
        let fw = p * 2;
        let nl = if self.lead { h * groups } else { 0 };
        let mut df = vec![0.0f32; n * fw];
        let sums = df
            .par_chunks_mut(ROWS_PER_TASK * fw)
            .enumerate()
            .map(|(t, dft)| {
                let first = t * ROWS_PER_TASK;
                let rows = dft.len() / fw;
                let frows = &f[first * fw..(first + rows) * fw];
                // [dalpha; dbeta; dl] of this task's tokens
                let mut part = vec![0.0f32; 2 * h * p + nl];
                let (da, rest) = part.split_at_mut(h * p);
                let (db, dl) = rest.split_at_mut(h * p);
                for head in 0..h {
                    let (a, b) = (&alpha[head * p..][..p], &beta[head * p..][..p]);
                    let (da, db) = (&mut da[head * p..][..p], &mut db[head * p..][..p]);
                    let grows = &g[(head * n + first) * width..][..rows * width];
                    for ((dfr, fr), gr) in dft
                        .chunks_exact_mut(fw)
                        .zip(frows.chunks_exact(fw))
                        .zip(grows.chunks_exact(width))
                    {
                        for gi in 0..groups {
                            let gg = &gr[gi * (lead + 2 * group)..][..lead + 2 * group];
                            if lead == 1 {
                                dl[head * groups + gi] += gg[0];
                            }
                            for k in 0..group {
                                let j = gi * group + k;
                                let (sin, cos) = (fr[2 * j], fr[2 * j + 1]);
                                let (g0, g1) = (gg[lead + 2 * k], gg[lead + 2 * k + 1]);
                                dfr[2 * j] += g0 * a[j] + g1 * b[j];
                                dfr[2 * j + 1] += g1 * a[j] - g0 * b[j];
                                da[j] += g0 * sin + g1 * cos;
                                db[j] += g1 * sin - g0 * cos;
                            }
                        }
                    }
                }
                part
            })
            .reduce(
                || vec![0.0f32; 2 * h * p + nl],
                |mut x, y| {
                    x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
                    x
                },
            );
        let (da, rest) = sums.split_at(h * p);
        let (db, dl) = rest.split_at(h * p);
        [df, da.to_vec(), db.to_vec(), dl.to_vec()]
    }
}

#[derive(Debug)]
struct RotateBackward;

#[derive(Debug)]
struct RotateLeadBackward;

/// The rotation's inputs (`f`, `alpha`, `beta`) and the shapes of its
/// parents (`f`, `alpha`, `beta` and, with a lead, `l`).
type RotateState<I> = (RotateDims, [FloatTensor<I>; 3], Vec<Vec<usize>>);

/// The parents' gradients, in their order.
fn rotate_grads<I: HostIo>(
    grad: &FloatTensor<I>,
    (dims, [f, alpha, beta], _): &RotateState<I>,
) -> [Vec<f32>; 4] {
    I::with_slice(f, |f| {
        I::with_slice(alpha, |a| {
            I::with_slice(beta, |b| I::with_slice(grad, |g| dims.backward(f, a, b, g)))
        })
    })
}

impl<I: HostIo> Backward<I, 3> for RotateBackward {
    type State = RotateState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let device = I::float_device(&grad);
        let [df, da, db, _] = rotate_grads::<I>(&grad, &ops.state);
        register_all::<I>(
            ops.parents.map(|p| p.map(|node| node.id)),
            [df, da, db],
            ops.state.2,
            &device,
            grads,
        );
    }
}

impl<I: HostIo> Backward<I, 4> for RotateLeadBackward {
    type State = RotateState<I>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let device = I::float_device(&grad);
        let gs = rotate_grads::<I>(&grad, &ops.state);
        register_all::<I>(
            ops.parents.map(|p| p.map(|node| node.id)),
            gs,
            ops.state.2,
            &device,
            grads,
        );
    }
}

/// The rotation on the backend's own tensors, the output shaped
/// `out_shape`; `None` where `B` is not a fused backend.
fn rotate_fused<B: Backend, const D: usize>(
    dims: RotateDims,
    f: &Tensor<B, 3>,
    alpha: &Tensor<B, 2>,
    beta: &Tensor<B, 2>,
    lead: Option<&Tensor<B, 2>>,
    out_shape: [usize; D],
) -> Option<Tensor<B, D>> {
    let mut shapes = vec![
        f.dims().to_vec(),
        alpha.dims().to_vec(),
        beta.dims().to_vec(),
    ];
    shapes.extend(lead.map(|l| l.dims().to_vec()));
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let f: FloatTensor<I> = same(f.clone().into_primitive().tensor());
                let [a, b]: [FloatTensor<I>; 2] =
                    [alpha, beta].map(|t| same(t.clone().into_primitive().tensor()));
                let l: Option<FloatTensor<I>> =
                    lead.map(|l| same(l.clone().into_primitive().tensor()));
                let out = I::with_slice(&f, |f| {
                    I::with_slice(&a, |a| {
                        I::with_slice(&b, |b| match &l {
                            Some(l) => I::with_slice(l, |l| dims.forward(f, a, b, l)),
                            None => dims.forward(f, a, b, &[]),
                        })
                    })
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&f));
                return Some(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let f: FloatTensor<Autodiff<I>> = same(f.clone().into_primitive().tensor());
                let [a, b]: [FloatTensor<Autodiff<I>>; 2] =
                    [alpha, beta].map(|t| same(t.clone().into_primitive().tensor()));
                let l: Option<FloatTensor<Autodiff<I>>> =
                    lead.map(|l| same(l.clone().into_primitive().tensor()));
                let out = I::with_slice(&f.primitive, |fp| {
                    I::with_slice(&a.primitive, |ap| {
                        I::with_slice(&b.primitive, |bp| match &l {
                            Some(l) => {
                                I::with_slice(&l.primitive, |lp| dims.forward(fp, ap, bp, lp))
                            }
                            None => dims.forward(fp, ap, bp, &[]),
                        })
                    })
                });
                let out = I::from_vec(out, &out_shape, &I::float_device(&f.primitive));
                let state = (dims, [f.primitive, a.primitive, b.primitive], shapes);
                let out = match l {
                    None => match <RotateBackward as Backward<I, 3>>::prepare::<NoCheckpointing>(
                        RotateBackward,
                        [f.node.clone(), a.node.clone(), b.node.clone()],
                    )
                    .compute_bound()
                    .stateful()
                    {
                        OpsKind::Tracked(prep) => prep.finish(state, out),
                        OpsKind::UnTracked(prep) => prep.finish(out),
                    },
                    Some(l) => {
                        match <RotateLeadBackward as Backward<I, 4>>::prepare::<NoCheckpointing>(
                            RotateLeadBackward,
                            [
                                f.node.clone(),
                                a.node.clone(),
                                b.node.clone(),
                                l.node.clone(),
                            ],
                        )
                        .compute_bound()
                        .stateful()
                        {
                            OpsKind::Tracked(prep) => prep.finish(state, out),
                            OpsKind::UnTracked(prep) => prep.finish(out),
                        }
                    }
                };
                return Some(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    None
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
    if !is_fused::<B>() || two != 2 || pa != p || p == 0 || beta.dims() != [h, p] {
        return Err((f, alpha, beta));
    }
    let dims = RotateDims {
        h,
        n,
        p,
        group: p,
        lead: false,
    };
    rotate_fused(dims, &f, &alpha, &beta, None, [h, n, p, 2]).ok_or((f, alpha, beta))
}

/// The periodic factor's query vectors (`relperf_positional`'s
/// `PeriodicFactor::query_vectors` without content-dependent coefficients):
/// the position features `f [n, A, s, 2]` (`A` axes of `s` `(sin, cos)`
/// pairs) rotated by each head's `alpha, beta [h, A, s]`, each axis led by
/// the head's `lead [h, A]`: `[h, n, A, 1 + 2s]` with `[lead, alpha sin -
/// beta cos, alpha cos + beta sin, ...]`, in one pass forward and backward,
/// when [`is_fused`]; the inputs back otherwise.
///
/// The plain ops broadcast `f` to every head, rotate it in six passes,
/// broadcast `lead` to every token and concatenate, and take as many
/// passes in the backward: per token, not per image. At batch 1 and
/// 128x128 pixels this op (and the copies of burn-ndarray's reshape on
/// either side, now views) took `ExactRelativePerformer`'s train step from
/// 1.98 to 1.39 s (`examples/bench_step`, 2 cores).
#[allow(clippy::type_complexity)]
pub fn rotate_with_lead<B: Backend>(
    f: Tensor<B, 4>,
    alpha: Tensor<B, 3>,
    beta: Tensor<B, 3>,
    lead: Tensor<B, 2>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 2>)> {
    let [n, a, s, two] = f.dims();
    let h = alpha.dims()[0];
    if !is_fused::<B>()
        || two != 2
        || s == 0
        || alpha.dims() != [h, a, s]
        || beta.dims() != [h, a, s]
        || lead.dims() != [h, a]
    {
        return Err((f, alpha, beta, lead));
    }
    let dims = RotateDims {
        h,
        n,
        p: a * s,
        group: s,
        lead: true,
    };
    // the same buffers (burn-ndarray's own reshape copies)
    let (f3, al, be) = (
        reshape(f.clone(), [n, a * s, 2]),
        reshape(alpha.clone(), [h, a * s]),
        reshape(beta.clone(), [h, a * s]),
    );
    rotate_fused(dims, &f3, &al, &be, Some(&lead), [h, n, a, 1 + 2 * s])
        .ok_or((f, alpha, beta, lead))
}
