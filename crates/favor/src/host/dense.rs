//! Dense layers and layout changes on the host: the two places where the
//! models' plain ops spend their time copying rather than computing.
//!
//! * [`dense`]: `x W + b` as one GEMM onto the broadcast bias, and in the
//!   backward `g W^T`, `x^T g` and the bias's column sums read in place. The
//!   plain ops add the bias in a second, broadcasting pass (burn-ndarray's
//!   slow general path), copy transposed operands to standard layout before
//!   each batched product of the backward, and sum the weight's gradient
//!   over the batch afterwards.
//! * [`permute_contiguous`]: a permutation that keeps the innermost axis,
//!   written out in standard layout by row copies. The models split heads
//!   (`[b, n, 3, h, d] -> [3, b, h, n, d]`) and merge them back
//!   (`[b, h, n, d] -> [b, n, h, d]`); the plain ops leave a strided view
//!   that the next reshape copies element by element.
//! * [`concat_last`]: a concatenation along the last axis whose second
//!   operand is broadcast over the leading axes (strategy 1's widening of
//!   queries and keys by the position channels), row by row.

use super::*;
use std::mem::MaybeUninit;

/// `[rows, input] x [input, output] + [output]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DenseDims {
    rows: usize,
    input: usize,
    output: usize,
}

impl DenseDims {
    fn forward(&self, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let (rows, input, output) = (self.rows, self.input, self.output);
        assert_eq!(
            (x.len(), w.len(), bias.len()),
            (rows * input, input * output, output)
        );
        if output == 0 {
            return Vec::new();
        }
        if gemm_on_rayon() {
            // a block of rows per task: its bias rows, then its product
            // onto them while they are in cache
            // SAFETY: each task writes the bias into every row of its
            // block, then only adds to them; the blocks cover `y`.
            #[allow(unsafe_code)]
            let [y] = unsafe {
                written([rows * output], |[y]| {
                    y.par_chunks_mut(output * ROWS_PER_TASK)
                        .zip(x.par_chunks(input.max(1) * ROWS_PER_TASK))
                        .for_each(|(y, x)| {
                            let y = bias_rows(y, bias);
                            gemm_add(y, (y.len() / output, input, output), x, w);
                        })
                })
            };
            return y;
        }
        // one parallel pass writes the bias rows (no zeroing first)
        // SAFETY: every row of every task's chunk gets the bias, and
        // the chunks cover `y`; nothing reads it here.
        #[allow(unsafe_code)]
        let [mut y] = unsafe {
            written([rows * output], |[y]| {
                y.par_chunks_mut(output * ROWS_PER_TASK).for_each(|rows| {
                    bias_rows(rows, bias);
                })
            })
        };
        gemm_add(&mut y, (rows, input, output), x, w);
        y
    }

    /// The gradients of `x`, `w` and the bias given the output's `g`.
    fn backward(&self, x: &[f32], w: &[f32], g: &[f32]) -> [Vec<f32>; 3] {
        let (rows, input, output) = (self.rows, self.input, self.output);
        assert_eq!(
            (x.len(), w.len(), g.len()),
            (rows * input, input * output, rows * output)
        );
        let row_major = |cols: usize| [cols as isize, 1];
        let col_major = |rows: usize| [1, rows as isize];
        let split = gemm_on_rayon() && input > 0 && output > 0;
        // gx = g W^T, gw = x^T g
        // SAFETY: `gemm_into` writes every element of its output: of the
        // whole of `gx` and `gw`, or of each block of `gx`'s rows (the
        // blocks cover it); `put` writes all of `gw`.
        #[allow(unsafe_code)]
        let [gx, gw] = unsafe {
            written([rows * input, input * output], |[gx, gw]| {
                if !split {
                    gemm_into(
                        gx,
                        (rows, output, input),
                        (g, row_major(output)),
                        (w, col_major(output)),
                    );
                    gemm_into(
                        gw,
                        (input, rows, output),
                        (x, col_major(input)),
                        (g, row_major(output)),
                    );
                    return;
                }
                gx.par_chunks_mut(input * ROWS_PER_TASK)
                    .zip(g.par_chunks(output * ROWS_PER_TASK))
                    .for_each(|(gx, g)| {
                        let block = g.len() / output;
                        gemm_into(
                            gx,
                            (block, output, input),
                            (g, row_major(output)),
                            (w, col_major(output)),
                        )
                    });
                // the sum over the rows split among the threads, each
                // part's product into its own buffer: matrixmultiply's own
                // threads split the small output instead and meet after
                // every block of the long sum (120 against 200 GFLOP/s
                // at 128 x 16400 x 384 on two cores)
                let parts = rayon::current_num_threads().max(1);
                let per_part = rows.div_ceil(parts).max(1);
                let sum = x
                    .par_chunks(input * per_part)
                    .zip(g.par_chunks(output * per_part))
                    .map(|(x, g)| {
                        let block = x.len() / input;
                        // SAFETY: `gemm_into` writes all of `part`.
                        let [part] = written([input * output], |[part]| {
                            gemm_into(
                                part,
                                (input, block, output),
                                (x, col_major(input)),
                                (g, row_major(output)),
                            )
                        });
                        part
                    })
                    .reduce_with(|mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    })
                    .unwrap_or_else(|| vec![0.0; input * output]);
                put(gw, &sum);
            })
        };
        let gb = if output == 0 {
            Vec::new()
        } else {
            g.par_chunks(output * ROWS_PER_TASK)
                .map(|chunk| {
                    let mut sums = vec![0.0f32; output];
                    for row in chunk.chunks(output) {
                        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    sums
                })
                .reduce(
                    || vec![0.0f32; output],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(s, v)| *s += v);
                        a
                    },
                )
        };
        [gx, gw, gb]
    }
}

/// Whether the fused dense layers ([`dense`]) split their GEMMs among
/// rayon's threads themselves: where matrixmultiply runs single-threaded
/// (`MATMUL_NUM_THREADS=1`, which the bundled binaries set through
/// `relative_performer::threads::gemm_on_rayon`), so that its threads and
/// rayon's do not take turns on the same cores. Otherwise each GEMM is one
/// call on matrixmultiply's own threads.
pub fn gemm_on_rayon() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("MATMUL_NUM_THREADS").is_ok_and(|v| v.trim() == "1")
            && rayon::current_num_threads() > 1
    })
}

/// `bias` written into every row of `rows` (whole rows of its length),
/// which it returns as written.
fn bias_rows<'a>(rows: &'a mut [MaybeUninit<f32>], bias: &[f32]) -> &'a mut [f32] {
    assert!(
        !bias.is_empty() && rows.len().is_multiple_of(bias.len()),
        "whole rows"
    );
    for row in rows.chunks_exact_mut(bias.len()) {
        put(row, bias);
    }
    // SAFETY: the rows cover `rows` (checked above) and each got the bias.
    #[allow(unsafe_code)]
    unsafe {
        simd::init_mut(rows)
    }
}

/// `y += a b` for `a [m, k]`, `b [k, n]`, `y [m, n]`, all row-major.
fn gemm_add(y: &mut [f32], (m, k, n): (usize, usize, usize), a: &[f32], b: &[f32]) {
    assert_eq!((y.len(), a.len(), b.len()), (m * n, m * k, k * n));
    if m == 0 || k == 0 || n == 0 {
        return;
    }
    let a = ArrayView2::from_shape((m, k), a).expect("a's length");
    let b = ArrayView2::from_shape((k, n), b).expect("b's length");
    let mut yv = ArrayViewMut2::from_shape((m, n), y).expect("y's length");
    general_mat_mul(1.0, &a, &b, 1.0, &mut yv);
}

/// `out = a b` for `a [m, k]` and `b [k, n]` addressed by their `[row,
/// column]` strides, `out [m, n]` row-major, every element of `out` written:
/// a GEMM with beta = 0 (matrixmultiply does not read its output then),
/// zeros where `k == 0`.
///
/// # Panics
/// If `out` is not `m x n` or a stride reaches past its operand.
fn gemm_into(
    out: &mut [MaybeUninit<f32>],
    (m, k, n): (usize, usize, usize),
    (a, [rsa, csa]): (&[f32], [isize; 2]),
    (b, [rsb, csb]): (&[f32], [isize; 2]),
) {
    assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.iter_mut().for_each(|v| {
            v.write(0.0);
        });
        return;
    }
    // the last element each operand's strides reach
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows - 1) * rs as usize + (cols - 1) * cs as usize
    };
    assert!(rsa > 0 && csa > 0 && rsb > 0 && csb > 0);
    assert!(last(m, k, rsa, csa) < a.len() && last(k, n, rsb, csb) < b.len());
    // SAFETY: the strides stay within `a` and `b` (checked above), `out`
    // holds `m x n` elements written row-major, and with beta = 0
    // matrixmultiply writes every element of it without reading it.
    #[allow(unsafe_code)]
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            out.as_mut_ptr().cast::<f32>(),
            n as isize,
            1,
        );
    }
}

#[derive(Debug)]
struct DenseBackward;

/// The dense layer's inputs (`x`, `W`, bias) and their shapes.
type DenseState<I> = (DenseDims, [FloatTensor<I>; 2], [Vec<usize>; 3]);

impl<I: HostIo> Backward<I, 3> for DenseBackward {
    type State = DenseState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [x, w], shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&x, |x| {
            I::with_slice(&w, |w| I::with_slice(&grad, |g| dims.backward(x, w, g)))
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

/// `x W + b` (`x [..., input]`, `W [input, output]`, `b [output]`: Burn's
/// `Linear` with its default row layout) as one GEMM onto the broadcast
/// bias, forward and backward, when [`is_fused`]; the inputs back
/// otherwise.
///
/// Burn's `Linear::forward` computes the same; the models call this first
/// (`relperf_models`'s blocks, embedding and head).
#[allow(clippy::type_complexity)]
pub fn dense<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 2>, Tensor<B, 1>)> {
    let xs = x.dims();
    let [input, output] = weight.dims();
    if !is_fused::<B>() || D < 1 || xs[D - 1] != input || bias.dims()[0] != output {
        return Err((x, weight, bias));
    }
    let rows = xs[..D - 1].iter().product();
    let dims = DenseDims {
        rows,
        input,
        output,
    };
    let mut out_shape = xs.to_vec();
    out_shape[D - 1] = output;
    let shapes = [xs.to_vec(), vec![input, output], vec![output]];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let x: FloatTensor<I> = same(x.into_primitive().tensor());
                let w: FloatTensor<I> = same(weight.into_primitive().tensor());
                let b: FloatTensor<I> = same(bias.into_primitive().tensor());
                let y = I::with_slice(&x, |x| {
                    I::with_slice(&w, |w| I::with_slice(&b, |b| dims.forward(x, w, b)))
                });
                let y = I::from_vec(y, &out_shape, &I::float_device(&x));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let x: FloatTensor<Autodiff<I>> = same(x.into_primitive().tensor());
                let w: FloatTensor<Autodiff<I>> = same(weight.into_primitive().tensor());
                let b: FloatTensor<Autodiff<I>> = same(bias.into_primitive().tensor());
                let y = I::with_slice(&x.primitive, |xp| {
                    I::with_slice(&w.primitive, |wp| {
                        I::with_slice(&b.primitive, |bp| dims.forward(xp, wp, bp))
                    })
                });
                let y = I::from_vec(y, &out_shape, &I::float_device(&x.primitive));
                let y = match <DenseBackward as Backward<I, 3>>::prepare::<NoCheckpointing>(
                    DenseBackward,
                    [x.node.clone(), w.node.clone(), b.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        prep.finish((dims, [x.primitive, w.primitive], shapes), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((x, weight, bias))
}

/// `x` of `shape` permuted by `perm` (output axis `i` is input axis
/// `perm[i]`; the last axis stays last), in standard layout.
fn permute_rows(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let inner = shape[rank - 1];
    if x.is_empty() || inner == 0 {
        return vec![0.0; x.len()];
    }
    let mut strides = vec![1usize; rank];
    for a in (0..rank - 1).rev() {
        strides[a] = strides[a + 1] * shape[a + 1];
    }
    // the input stride of each output axis, and the output's extents
    let from: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let extent: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let task = x.len() / extent[0];
    // SAFETY: every row of every task's chunk is copied into, and the
    // chunks cover the output; nothing reads it here.
    #[allow(unsafe_code)]
    let [out] = unsafe {
        written([x.len()], |[out]| {
            out.par_chunks_mut(task).enumerate().for_each(|(i0, dst)| {
                // an odometer over output axes 1..rank-1, the input offset kept
                // in step with it
                let mut index = vec![0usize; rank];
                let mut at = i0 * from[0];
                for row in dst.chunks_mut(inner) {
                    put(row, &x[at..at + inner]);
                    let mut a = rank - 1;
                    while a > 1 {
                        a -= 1;
                        index[a] += 1;
                        at += from[a];
                        if index[a] < extent[a] {
                            break;
                        }
                        at -= from[a] * extent[a];
                        index[a] = 0;
                    }
                }
            })
        })
    };
    out
}

#[derive(Debug)]
struct PermuteBackward;

impl<I: HostIo> Backward<I, 1> for PermuteBackward {
    /// The output's shape and the inverse permutation.
    type State = (Vec<usize>, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (out_shape, inverse) = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let device = I::float_device(&grad);
            let gx = I::with_slice(&grad, |g| permute_rows(g, &out_shape, &inverse));
            let in_shape: Vec<usize> = inverse.iter().map(|&p| out_shape[p]).collect();
            I::from_vec(gx, &in_shape, &device)
        });
    }
}

/// `x.permute(perm)` written out in standard layout, forward and backward,
/// when [`is_fused`] and the permutation keeps the last axis last; the
/// input back otherwise (so `x.permute(perm)` is the fallback on every
/// backend, equal in value).
///
/// Narrowing the result along its first axis, or reshaping it with
/// [`reshape`], is then free (no copy); on burn-ndarray the plain
/// permutation's strided view is copied element by element by the next
/// reshape or kernel.
pub fn permute_contiguous<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    perm: [usize; D],
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let mut seen = [false; D];
    let valid = D >= 1
        && perm[D - 1] == D - 1
        && perm
            .iter()
            .all(|&p| p < D && !std::mem::replace(&mut seen[p], true));
    if !valid || !is_fused::<B>() {
        return Err(x);
    }
    let in_shape = x.dims().to_vec();
    let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let mut inverse = vec![0usize; D];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let x: FloatTensor<I> = same(x.into_primitive().tensor());
                let y = I::with_slice(&x, |xs| permute_rows(xs, &in_shape, &perm));
                let y = I::from_vec(y, &out_shape, &I::float_device(&x));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let x: FloatTensor<Autodiff<I>> = same(x.into_primitive().tensor());
                let y = I::with_slice(&x.primitive, |xs| permute_rows(xs, &in_shape, &perm));
                let y = I::from_vec(y, &out_shape, &I::float_device(&x.primitive));
                let y = match <PermuteBackward as Backward<I, 1>>::prepare::<NoCheckpointing>(
                    PermuteBackward,
                    [x.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((out_shape, inverse), y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err(x)
}

#[derive(Debug)]
struct ReshapeBackward;

impl<I: HostIo> Backward<I, 1> for ReshapeBackward {
    /// The input's shape.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let in_shape = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            I::reshape(grad, &in_shape)
        });
    }
}

/// `x.reshape(shape)`, forward and backward, without a copy where `x` is in
/// standard layout, when [`is_fused`]; `x.reshape(shape)` otherwise.
///
/// burn-ndarray 0.21's reshape copies every tensor it reshapes (its
/// `to_shape` view is turned into an owned array), on one thread: four
/// times per layer of the models' attention (the heads' split and merge),
/// 8.4 MB each at the seed's sizes, and as many times in the backward.
/// Dimensions given as `-1` or `0` are not taken (unlike
/// [`Tensor::reshape`]): `shape` holds the extents.
///
/// # Panics
/// If `shape` does not hold as many elements as `x`.
pub fn reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    let in_shape = x.dims().to_vec();
    assert_eq!(
        in_shape.iter().product::<usize>(),
        shape.iter().product::<usize>(),
        "reshape of {in_shape:?} to {shape:?}"
    );
    if !is_fused::<B>() {
        return x.reshape(shape);
    }
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let x: FloatTensor<I> = same(x.into_primitive().tensor());
                let y = I::reshape(x, &shape);
                return Tensor::from_primitive(TensorPrimitive::Float(same(y)));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let x: FloatTensor<Autodiff<I>> = same(x.into_primitive().tensor());
                let y = I::reshape(x.primitive, &shape);
                let y = match <ReshapeBackward as Backward<I, 1>>::prepare::<NoCheckpointing>(
                    ReshapeBackward,
                    [x.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(in_shape, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
                return Tensor::from_primitive(TensorPrimitive::Float(same(y)));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    x.reshape(shape)
}

/// The rows of a last-axis concatenation `[a, b]`: `a [rows, da]`, `b`
/// broadcast over the leading axes where its extent is 1.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConcatDims {
    /// `a`'s leading extents (the output's).
    lead: Vec<usize>,
    /// `b`'s row stride per leading axis (0 where it broadcasts).
    b_strides: Vec<usize>,
    /// `b`'s rows.
    b_rows: usize,
    da: usize,
    db: usize,
}

impl ConcatDims {
    fn rows(&self) -> usize {
        self.lead.iter().product()
    }

    /// `b`'s row for output row `r`.
    fn b_row(&self, mut r: usize) -> usize {
        let mut at = 0;
        for (extent, stride) in self.lead.iter().zip(&self.b_strides).rev() {
            at += (r % extent) * stride;
            r /= extent;
        }
        at
    }

    fn forward(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (da, db) = (self.da, self.db);
        let width = da + db;
        if width == 0 {
            return Vec::new();
        }
        // SAFETY: both parts of every row are copied into, and the chunks
        // cover the output; nothing reads it here.
        #[allow(unsafe_code)]
        let [out] = unsafe {
            written([self.rows() * width], |[out]| {
                out.par_chunks_mut(width * ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(t, chunk)| {
                        for (i, row) in chunk.chunks_mut(width).enumerate() {
                            let r = t * ROWS_PER_TASK + i;
                            put(&mut row[..da], &a[r * da..(r + 1) * da]);
                            let br = self.b_row(r);
                            put(&mut row[da..], &b[br * db..(br + 1) * db]);
                        }
                    })
            })
        };
        out
    }

    /// The gradients of `a` and `b` given the output's `g` (`b`'s summed
    /// over the axes it was broadcast along).
    fn backward(&self, g: &[f32]) -> [Vec<f32>; 2] {
        let (da, db) = (self.da, self.db);
        let width = da + db;
        let rows = self.rows();
        let mut ga = vec![0.0f32; rows * da];
        let mut gb = vec![0.0f32; self.b_rows * db];
        if width == 0 {
            return [ga, gb];
        }
        if da > 0 {
            ga.par_chunks_mut(da * ROWS_PER_TASK)
                .enumerate()
                .for_each(|(t, chunk)| {
                    for (i, row) in chunk.chunks_mut(da).enumerate() {
                        let r = t * ROWS_PER_TASK + i;
                        row.copy_from_slice(&g[r * width..r * width + da]);
                    }
                });
        }
        if db > 0 {
            for r in 0..rows {
                let br = self.b_row(r);
                let src = &g[r * width + da..(r + 1) * width];
                gb[br * db..(br + 1) * db]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(s, v)| *s += v);
            }
        }
        [ga, gb]
    }
}

#[derive(Debug)]
struct ConcatBackward;

impl<I: HostIo> Backward<I, 2> for ConcatBackward {
    /// The sizes and the shapes of `a` and `b`.
    type State = (ConcatDims, [Vec<usize>; 2]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&grad, |g| dims.backward(g));
        register_all::<I>(
            ops.parents.map(|p| p.map(|node| node.id)),
            gs,
            shapes,
            &device,
            grads,
        );
    }
}

/// `cat([a, b.expand(..)], D - 1)`: `a [..., da]` and `b [..., db]`, whose
/// leading extents each equal `a`'s or are 1 (broadcast), written out row
/// by row in standard layout, forward and backward, when [`is_fused`]; the
/// inputs back otherwise (then `Tensor::cat` with `b` expanded is the
/// fallback on every backend, equal in value).
///
/// Strategy 1 widens every head's queries and keys by position channels
/// shared by the batch; burn-ndarray's concatenation copies a broadcast
/// operand element by element.
#[allow(clippy::type_complexity)]
pub fn concat_last<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let (sa, sb) = (a.dims(), b.dims());
    let valid = D >= 1
        && sa[..D - 1]
            .iter()
            .zip(&sb[..D - 1])
            .all(|(&x, &y)| x == y || y == 1);
    if !valid || !is_fused::<B>() {
        return Err((a, b));
    }
    let mut b_strides = vec![0usize; D - 1];
    let mut stride = 1;
    for i in (0..D - 1).rev() {
        b_strides[i] = if sb[i] == 1 { 0 } else { stride };
        stride *= sb[i];
    }
    let dims = ConcatDims {
        lead: sa[..D - 1].to_vec(),
        b_strides,
        b_rows: stride,
        da: sa[D - 1],
        db: sb[D - 1],
    };
    let mut out_shape = sa.to_vec();
    out_shape[D - 1] = dims.da + dims.db;
    let shapes = [sa.to_vec(), sb.to_vec()];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let a: FloatTensor<I> = same(a.into_primitive().tensor());
                let b: FloatTensor<I> = same(b.into_primitive().tensor());
                let y = I::with_slice(&a, |x| I::with_slice(&b, |y| dims.forward(x, y)));
                let y = I::from_vec(y, &out_shape, &I::float_device(&a));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let a: FloatTensor<Autodiff<I>> = same(a.into_primitive().tensor());
                let b: FloatTensor<Autodiff<I>> = same(b.into_primitive().tensor());
                let y = I::with_slice(&a.primitive, |x| {
                    I::with_slice(&b.primitive, |y| dims.forward(x, y))
                });
                let y = I::from_vec(y, &out_shape, &I::float_device(&a.primitive));
                let y = match <ConcatBackward as Backward<I, 2>>::prepare::<NoCheckpointing>(
                    ConcatBackward,
                    [a.node.clone(), b.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((dims, shapes), y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(y))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((a, b))
}

#[cfg(test)]
mod tests {
    use super::permute_rows;

    #[test]
    fn permute_rows_matches_index_arithmetic() {
        let shape = [2, 3, 4, 5, 2];
        let perm = [2, 0, 3, 1, 4];
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| i as f32)
            .collect();
        let y = permute_rows(&x, &shape, &perm);
        let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let mut k = 0;
        for a in 0..out[0] {
            for b in 0..out[1] {
                for c in 0..out[2] {
                    for d in 0..out[3] {
                        for e in 0..out[4] {
                            // output (a, b, c, d, e) is input index with
                            // axis perm[i] = the i-th output index
                            let mut idx = [0usize; 5];
                            idx[perm[0]] = a;
                            idx[perm[1]] = b;
                            idx[perm[2]] = c;
                            idx[perm[3]] = d;
                            idx[perm[4]] = e;
                            let flat =
                                (((idx[0] * 3 + idx[1]) * 4 + idx[2]) * 5 + idx[3]) * 2 + idx[4];
                            assert_eq!(y[k], flat as f32, "at {:?}", (a, b, c, d, e));
                            k += 1;
                        }
                    }
                }
            }
        }
    }
}
