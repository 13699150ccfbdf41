//! Layer normalisation over the last axis, forward and backward, in one
//! pass over the rows each.
//!
//! Burn 0.21's `layer_norm` on burn-ndarray is its default body: seven
//! tensor ops (two means, a subtraction, a product, a square root, a
//! division, the scale and the shift), the last four broadcasting through
//! ndarray's general path, and under autodiff as many backward nodes. Here a
//! row's mean, variance, normalisation, scale and shift are one loop over the
//! row while it is in cache, and the backward is one more (plus the column
//! sums of the scale's and shift's gradients).

use super::*;

/// `rows` rows of `width` channels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct NormDims {
    rows: usize,
    width: usize,
    epsilon: f32,
}

impl NormDims {
    /// The output, and each row's mean and `1 / sqrt(var + eps)` for the
    /// backward.
    fn forward(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w = self.width;
        if w == 0 {
            return (Vec::new(), vec![0.0; self.rows], vec![0.0; self.rows]);
        }
        // SAFETY: each row of `y`, and its mean and scale, are written in
        // the row's loop, and the tasks' chunks cover all rows; nothing
        // reads them here.
        #[allow(unsafe_code)]
        let [y, mean, rstd] = unsafe {
            written([self.rows * w, self.rows, self.rows], |[y, mean, rstd]| {
                y.par_chunks_mut(w * ROWS_PER_TASK)
                    .zip(x.par_chunks(w * ROWS_PER_TASK))
                    .zip(
                        mean.par_chunks_mut(ROWS_PER_TASK)
                            .zip(rstd.par_chunks_mut(ROWS_PER_TASK)),
                    )
                    .for_each(|((y, x), (mean, rstd))| {
                        // the row sums in eight chains (one chain ran a
                        // scalar add per element, 3% of a `Performer`
                        // inference step), compiled for the CPU's vectors
                        fast(
                            #[inline(always)]
                            |_| {
                                for (((y, x), mu), r) in y
                                    .chunks_mut(w)
                                    .zip(x.chunks(w))
                                    .zip(mean.iter_mut())
                                    .zip(rstd.iter_mut())
                                {
                                    let m = simd::sum(x) / w as f32;
                                    let var = simd::sum_sq_dev(x, m) / w as f32;
                                    let s = 1.0 / (var + self.epsilon).sqrt();
                                    for (((y, &x), &g), &b) in
                                        y.iter_mut().zip(x).zip(gamma).zip(beta)
                                    {
                                        y.write((x - m) * s * g + b);
                                    }
                                    mu.write(m);
                                    r.write(s);
                                }
                            },
                        )
                    })
            })
        };
        (y, mean, rstd)
    }

    /// The gradients of `x`, the scale and the shift given the output's `g`.
    fn backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        g: &[f32],
    ) -> [Vec<f32>; 3] {
        let w = self.width;
        if w == 0 {
            return [Vec::new(), Vec::new(), Vec::new()];
        }
        let inv_w = 1.0 / w as f32;
        let mut sums = (Vec::new(), Vec::new());
        // SAFETY: each row of `gx` is written in its row's last loop, and
        // the tasks' chunks cover all rows; nothing reads it here.
        #[allow(unsafe_code)]
        let [gx] = unsafe {
            written([self.rows * w], |[gx]| {
                sums = gx
                    .par_chunks_mut(w * ROWS_PER_TASK)
                    .zip(x.par_chunks(w * ROWS_PER_TASK))
                    .zip(g.par_chunks(w * ROWS_PER_TASK))
                    .zip(
                        mean.par_chunks(ROWS_PER_TASK)
                            .zip(rstd.par_chunks(ROWS_PER_TASK)),
                    )
                    .map(|(((gx, x), g), (mean, rstd))| {
                        let mut gg = vec![0.0f32; w];
                        let mut gb = vec![0.0f32; w];
                        let mut xhat = vec![0.0f32; w];
                        for ((((gx, x), g), &m), &s) in gx
                            .chunks_mut(w)
                            .zip(x.chunks(w))
                            .zip(g.chunks(w))
                            .zip(mean)
                            .zip(rstd)
                        {
                            // dxhat = g gamma; dx = s (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
                            let mut sum_d = 0.0f32;
                            let mut sum_dx = 0.0f32;
                            for ((((xh, &x), &g), &ga), (ggi, gbi)) in xhat
                                .iter_mut()
                                .zip(x)
                                .zip(g)
                                .zip(gamma)
                                .zip(gg.iter_mut().zip(gb.iter_mut()))
                            {
                                *xh = (x - m) * s;
                                let d = g * ga;
                                sum_d += d;
                                sum_dx += d * *xh;
                                *ggi += g * *xh;
                                *gbi += g;
                            }
                            let (a, c) = (sum_d * inv_w, sum_dx * inv_w);
                            for (((gx, &xh), &g), &ga) in gx.iter_mut().zip(&xhat).zip(g).zip(gamma)
                            {
                                gx.write(s * (g * ga - a - xh * c));
                            }
                        }
                        (gg, gb)
                    })
                    .reduce(
                        || (vec![0.0f32; w], vec![0.0f32; w]),
                        |(mut a, mut b), (c, d)| {
                            a.iter_mut().zip(&c).for_each(|(s, v)| *s += v);
                            b.iter_mut().zip(&d).for_each(|(s, v)| *s += v);
                            (a, b)
                        },
                    );
            })
        };
        let (gg, gb) = sums;
        [gx, gg, gb]
    }
}

#[derive(Debug)]
struct NormBackward;

/// The input and the scale as the backend holds them, each row's mean and
/// inverse standard deviation, and the three parents' shapes.
type NormState<I> = (
    NormDims,
    [FloatTensor<I>; 2],
    Arc<(Vec<f32>, Vec<f32>)>,
    [Vec<usize>; 3],
);

impl<I: HostIo> Backward<I, 3> for NormBackward {
    type State = NormState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [x, gamma], stats, shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&x, |x| {
            I::with_slice(&gamma, |ga| {
                I::with_slice(&grad, |g| dims.backward(x, ga, &stats.0, &stats.1, g))
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

/// Layer normalisation of `x` over its last axis (`[..., width]`), scaled
/// by `gamma` and shifted by `beta` (`[width]`): `(x - mean) / sqrt(var +
/// epsilon) * gamma + beta` with the biased variance, as Burn's
/// `LayerNorm` and PyTorch's `nn.LayerNorm`, forward and backward, when
/// [`is_fused`]; the inputs back otherwise.
#[allow(clippy::type_complexity)]
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 1>, Tensor<B, 1>)> {
    let xs = x.dims();
    let [width] = gamma.dims();
    if !is_fused::<B>() || D < 1 || xs[D - 1] != width || beta.dims()[0] != width {
        return Err((x, gamma, beta));
    }
    let dims = NormDims {
        rows: xs[..D - 1].iter().product(),
        width,
        epsilon: epsilon as f32,
    };
    let shapes = [xs.to_vec(), vec![width], vec![width]];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let x: FloatTensor<I> = same(x.into_primitive().tensor());
                let ga: FloatTensor<I> = same(gamma.into_primitive().tensor());
                let be: FloatTensor<I> = same(beta.into_primitive().tensor());
                let (y, _, _) = I::with_slice(&x, |x| {
                    I::with_slice(&ga, |ga| I::with_slice(&be, |be| dims.forward(x, ga, be)))
                });
                let y = I::from_vec(y, &xs, &I::float_device(&x));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let x: FloatTensor<Autodiff<I>> = same(x.into_primitive().tensor());
                let ga: FloatTensor<Autodiff<I>> = same(gamma.into_primitive().tensor());
                let be: FloatTensor<Autodiff<I>> = same(beta.into_primitive().tensor());
                let (y, mean, rstd) = I::with_slice(&x.primitive, |xp| {
                    I::with_slice(&ga.primitive, |gp| {
                        I::with_slice(&be.primitive, |bp| dims.forward(xp, gp, bp))
                    })
                });
                let y = I::from_vec(y, &xs, &I::float_device(&x.primitive));
                let y = match <NormBackward as Backward<I, 3>>::prepare::<NoCheckpointing>(
                    NormBackward,
                    [x.node.clone(), ga.node.clone(), be.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(
                        (
                            dims,
                            [x.primitive, ga.primitive],
                            Arc::new((mean, rstd)),
                            shapes,
                        ),
                        y,
                    ),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((x, gamma, beta))
}
