//! CPU kernels for burn-ndarray, forward and backward, each a Burn autodiff
//! op of its own:
//!
//! * the softmax-kernel feature maps fused into one pass: projection,
//!   stabiliser and `exp` of each `(sample, head)` slice in one task, the
//!   slices spread over rayon's threads, `exp` by a polynomial the compiler
//!   vectorises;
//! * normalised linear attention ([`crate::attention::linear_attention`]):
//!   both products and the normaliser of a slice in one task;
//! * in inference, both feature maps and linear attention in one pass per
//!   slice ([`favor_attention`]), the features never written out;
//! * GELU ([`gelu`]), for the models' feed-forward layers, and dropout
//!   ([`dropout`]): the mask drawn where it is applied and drawn again in
//!   the backward from its seed, never stored;
//! * the ring sums of strategy 2 ([`ring_sums`]) and its whole window term
//!   ([`clipped_window`]);
//! * dense layers ([`dense`]: `x W + b` in one GEMM, its backward read in
//!   place) and permutations that keep the last axis, written out in
//!   standard layout ([`permute_contiguous`]: the heads' split and merge),
//!   and last-axis concatenations with a broadcast operand ([`concat_last`]:
//!   strategy 1's widened queries and keys);
//! * strategy 1's rotated position features ([`rotate_pairs`]);
//! * the separable sums of `ExactRelativePerformer`'s periodic attention
//!   ([`separable_periodic`]);
//! * layer normalisation over the last axis ([`layer_norm`]), a row per
//!   loop instead of seven tensor ops.
//!
//! Measured with `examples/bench_step` (dim 128, depth 4, batch 16, medians
//! of 3 steps, 2-core CPU, each column with the allocator setting of
//! `relative_performer::allocator` on): the fused linear attention and GELU
//! together took `Performer` inference from 1.27 to 1.00 s and its train
//! step from 3.55 to 2.80 s. Then (one run, commits a7b2b8e -> 7b6c050)
//! dense layers, permutations and the separable periodic sums took
//! `Performer` from 1.05 to 0.78 s (inference) and 3.07 to 2.31 s (train),
//! `ExactRelativePerformer` from 2.44 to 1.19 s and 6.46 to 3.00 s; the
//! broadcast concatenation took `RelativePerformer` from 1.49 to 1.03 s and
//! 3.36 to 2.69 s. The fused layer norm (3 alternating runs of each binary,
//! against 54a3bac, medians): `Performer` inference 0.74 -> 0.66 s,
//! train 2.04 -> 1.89 s.
//!
//! The kernels' loops then vectorised only four lanes wide and kept their
//! reductions in one chain: `exp`'s `k as i32` (a saturating cast) compiled
//! to scalar compares, float sums and maxima to one add or max per element,
//! and no `a * b + c` to an FMA. Now the `simd` module's `fast` runs each slice's
//! body compiled again for AVX2 and FMA where the CPU has them (checked at
//! run time; the build stays baseline x86-64), `exp` takes `2^k` from the
//! rounding constant's bits, the reductions keep eight accumulators, and
//! the per-slice products (`[n, d] x [d, m]`, `phi(K)^T V`, `phi(Q) C` and
//! the backward's) are plain register-blocked loops: at dim 32 (head dim
//! 8) matrixmultiply spent more time packing these thin operands than
//! multiplying. Measured back to back (`relperf-eval test` of the imported
//! MNIST runs, batch 64, `--limit-batches 8`, data loading included, two
//! alternating rounds of a0f71d1's binary against 926ca4f's): `Performer`
//! 7.75 / 8.24 -> 6.45 / 7.10 s, `RelativePerformer` 17.67 / 17.60 ->
//! 12.35 / 13.18 s. The
//! unpacked products against matrixmultiply alone (`bench_step`, medians of
//! 3, alternating binaries) were within the machine's noise at dim 128 and
//! dim 32, and are kept as the simpler path with no packing buffers.
//!
//! Strategy 2's window term ([`clipped_window`]) then replaced the ring
//! sums' plain weighting (slices of the pixels and weights, `C` products
//! and sums, the class row put back: about 20% of
//! `ClippedRelativePerformer`'s inference in burn-ndarray's copies):
//! `examples/bench_step --model ClippedRelativePerformer --dim 32 --size 28
//! --batch 64` (the shipped runs' shape), two alternating rounds of
//! medians of 5 against 8c7bc38's binary, inference 0.88 / 0.84 -> 0.58 /
//! 0.54 s, and the train step (medians of 3) 2.32 -> 1.46 s.
//!
//! At 128x128 pixels a slice's features (`16385 x 185` floats for
//! `RelativePerformer` at dim 128) no longer fit in cache, and each step of
//! the feature map and of linear attention streamed them from memory: both
//! now go through a slice 128 rows at a time, and linear attention's
//! backward makes one pass over the query tiles and one over the key tiles.
//! Strategy 1's rotated position features, per token and not per image,
//! became one op ([`rotate_pairs`]), and matrixmultiply's AVX-512 kernel
//! (compiled out by burn-ndarray's dependency without default features) is
//! turned on. Measured with `examples/bench_step` (dim 128, medians of 3,
//! two alternating rounds of each binary): `RelativePerformer`'s train step
//! at 128x128 batch 1 3.21 / 3.14 -> 3.01 / 2.89 s (tiles) -> 2.25 / 2.19 s
//! (rotation), at 32x32 batch 16 2.23 / 2.19 -> 2.12 / 2.12 s; `Performer`'s
//! at 32x32 batch 16 1.85 / 1.84 -> 1.67 / 1.67 s (AVX-512 GEMM), its
//! inference 0.64 / 0.65 -> 0.57 / 0.57 s.
//!
//! On CPUs with AVX-512F the kernels' bodies run a third copy, compiled for
//! it (sixteen lanes; the per-slice products hold 32 columns in registers):
//! on an Intel Xeon with AVX-512, `bench_step` at dim 128, 32x32, batch 16,
//! two alternating rounds of medians of 3 against the AVX2 build,
//! `RelativePerformer` train 1.97 / 1.92 -> 1.83 / 1.78 s, inference 0.65 /
//! 0.65 -> 0.59 / 0.61 s; `Performer` inference 0.51 / 0.51 -> 0.47 / 0.50
//! s, its train step unchanged (1.61 / 1.59 against 1.59 / 1.60 s: the
//! dense layers' GEMMs and memory traffic dominate it).
//!
//! A loop written as an iterator's `for_each` inside a `fast` body may be
//! left out of line by the compiler (its `fold` is big once `exp` is
//! inlined into it), and then runs compiled for baseline x86-64: two-lane
//! SSE, no FMA. GELU's backward did so (5% of a `Performer` train step, in
//! `Zip::fold`); its loops are `for` loops now, which inline, and the train
//! step went 1.39 -> 1.34 s. A profile that shows a generic iterator symbol
//! beside `with_avx512` points to another such loop.
//!
//! Then two passes per output went away. Dropout ([`dropout`]) drew its
//! mask into a tensor that burn-ndarray multiplied in, and multiplied again
//! in the backward; now the op draws the mask where it applies it and draws
//! it again from its seed in the backward. And the kernels' outputs are no
//! longer zeroed before the kernels overwrite them (`written`, through
//! [`MaybeUninit`]; `memset` and the page faults of fresh pages were 7.8%
//! of a `Performer` train step in `perf`). `bench_step --model Performer
//! --mode train` (dim 128, 32x32, batch 16, medians of 3, three alternating
//! rounds of each binary): 1.37 / 1.40 / 1.44 -> 1.35 / 1.34 / 1.42 s
//! (dropout), then 1.28 / 1.29 / 1.26 -> 1.09 / 1.10 / 1.12 s (outputs not
//! zeroed first; the machine ran slower in the first pair). The mask's
//! draws then became one SplitMix64 output per element, from its index
//! ([`dropout_kept`]), instead of a xoshiro stream per chunk, which ran
//! one element at a time in baseline x86-64 (8% of the step in `perf`);
//! now the loop vectorises: 1.04 / 1.09 / 1.09 -> 1.03 / 1.05 / 1.08 s.
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
//! The tests (`tests/fused_cpu.rs` of the workspace) compare each kernel
//! with the plain ops and with `f64`, outputs and gradients, on seeded
//! inputs.

// Without the `ndarray` feature no backend takes the fused path, and its
// helpers are compiled but unused.
#![cfg_attr(not(feature = "ndarray"), allow(unused))]

use std::any::{Any, TypeId};
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use burn::tensor::TensorMetadata;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

mod dense;
mod norm;
mod periodic;
mod rotate;
mod simd;
pub use dense::{concat_last, dense, gemm_on_rayon, permute_contiguous, reshape};
pub use norm::layer_norm;
pub use periodic::{PeriodicInputs, separable_periodic};
pub use rotate::{rotate_pairs, rotate_with_lead};
use simd::{Fma, fast};

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
    /// `(W d^-1/4)^T` (`[d, m]`), the forward's operand.
    wt: Arc<Vec<f32>>,
    /// `0.5 / sqrt(d)`: keys' `|x d^-1/4|^2 / 2 = c |x|^2`.
    c: f32,
    is_query: bool,
}

impl Kernel {
    fn new(dims: Dims, projection: &[f32], is_query: bool) -> Self {
        let scale = (dims.d as f32).powf(-0.25);
        let w: Vec<f32> = projection.iter().map(|v| v * scale).collect();
        Kernel {
            dims,
            wt: Arc::new(simd::transpose(&w, dims.m, dims.d)),
            w: Arc::new(w),
            c: 0.5 / (dims.d as f32).sqrt(),
            is_query,
        }
    }

    /// Features `[slices, n, m]` of `x [slices, n, d]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let Dims { n, d, m, .. } = self.dims;
        // SAFETY: `forward_slice` writes its whole slice (it checks the
        // lengths), and the slices pair up with `x`'s and cover the output.
        #[allow(unsafe_code)]
        let [out] = unsafe {
            written([x.len() / d * m], |[out]| {
                out.par_chunks_mut(n * m)
                    .zip(x.par_chunks(n * d))
                    .for_each(|(f, xs)| {
                        fast(
                            #[inline(always)]
                            |fma| self.forward_slice(xs, f, fma),
                        )
                    })
            })
        };
        out
    }

    /// The features of one slice, tile by tile: each tile's product and
    /// its row-wise steps while its rows are in cache (the keys' `exp` waits
    /// for the slice's maximum: one more pass).
    #[inline(always)]
    ///
    /// Queries may come as any whole rows of a slice (each row's features
    /// are its own); keys come as a whole slice (one stabiliser for all).
    fn forward_slice(&self, xs: &[f32], f: &mut [MaybeUninit<f32>], fma: Fma) {
        let Dims { n, d, m, .. } = self.dims;
        let rows = if self.is_query {
            xs.len() / d.max(1)
        } else {
            n
        };
        assert_eq!((xs.len(), f.len()), (rows * d, rows * m));
        let mut max = f32::NEG_INFINITY;
        for (xt, ft) in xs.chunks(TILE * d).zip(f.chunks_mut(TILE * m)) {
            let ft = simd::gemm_nn_init(xt, &self.wt, ft, d, m, fma);
            if self.is_query {
                // softmax over the features of each row
                for row in ft.chunks_exact_mut(m) {
                    let max = simd::max(row);
                    row.iter_mut().for_each(|v| *v = exp(*v - max));
                    let sum = simd::sum(row);
                    row.iter_mut().for_each(|v| *v /= sum);
                }
            } else {
                // W x' - c |x|^2, and the slice's maximum s so far
                for (row, xr) in ft.chunks_exact_mut(m).zip(xt.chunks_exact(d)) {
                    let norm = self.c * simd::dot(xr, xr, fma);
                    row.iter_mut().for_each(|v| *v -= norm);
                    max = max.max(simd::max(row));
                }
            }
        }
        if !self.is_query {
            // SAFETY: the tiles above cover `f` (`n` rows of `xs` and of
            // `f`, checked) and `gemm_nn_init` wrote each of them.
            #[allow(unsafe_code)]
            let f = unsafe { simd::init_mut(f) };
            // exp(W x' - c |x|^2 - s)
            f.iter_mut().for_each(|v| *v = exp(*v - max));
        }
    }

    /// The gradient `[slices, n, d]` with respect to `x` of the features
    /// `f`, given theirs, `g`.
    fn backward(&self, x: &[f32], f: &[f32], g: &[f32]) -> Vec<f32> {
        let Dims { n, d, m, .. } = self.dims;
        // SAFETY: `backward_slice` writes its whole slice (it checks the
        // lengths), and the slices pair up with `x`'s and cover the output.
        #[allow(unsafe_code)]
        let [out] = unsafe {
            written([x.len()], |[out]| {
                out.par_chunks_mut(n * d)
                    .zip(x.par_chunks(n * d))
                    .zip(f.par_chunks(n * m).zip(g.par_chunks(n * m)))
                    .for_each(|((gx, xs), (fs, gs))| {
                        fast(
                            #[inline(always)]
                            |fma| self.backward_slice(xs, fs, gs, gx, fma),
                        )
                    })
            })
        };
        out
    }

    /// The gradient of one slice, tile by tile (the exponent's gradient of
    /// a tile stays in cache for its product with `W`).
    #[inline(always)]
    fn backward_slice(
        &self,
        xs: &[f32],
        fs: &[f32],
        gs: &[f32],
        gx: &mut [MaybeUninit<f32>],
        fma: Fma,
    ) {
        let Dims { n, d, m, .. } = self.dims;
        assert_eq!(
            (xs.len(), fs.len(), gs.len(), gx.len()),
            (n * d, n * m, n * m, n * d)
        );
        let mut gp = vec![0.0f32; TILE.min(n) * m];
        let mut row_sums = vec![0.0f32; TILE.min(n)];
        let tiles = fs.chunks(TILE * m).zip(gs.chunks(TILE * m));
        for ((ft, gt), (xt, gxt)) in tiles.zip(xs.chunks(TILE * d).zip(gx.chunks_mut(TILE * d))) {
            let rows = ft.len() / m;
            let (gp, row_sums) = (&mut gp[..rows * m], &mut row_sums[..rows]);
            // gradient of the exponent (the stabiliser is detached)
            for (((row, fr), gr), rs) in gp
                .chunks_exact_mut(m)
                .zip(ft.chunks_exact(m))
                .zip(gt.chunks_exact(m))
                .zip(row_sums.iter_mut())
            {
                row.iter_mut()
                    .zip(fr)
                    .zip(gr)
                    .for_each(|((p, f), g)| *p = f * g);
                let s = simd::sum(row);
                if self.is_query {
                    // softmax: f (g - sum(g f))
                    row.iter_mut().zip(fr).for_each(|(v, f)| *v -= f * s);
                } else {
                    *rs = s;
                }
            }
            let gxt = simd::gemm_nn_init(gp, &self.w, gxt, m, d, fma);
            if !self.is_query {
                let two_c = 2.0 * self.c;
                for ((gr, xr), rs) in gxt
                    .chunks_exact_mut(d)
                    .zip(xt.chunks_exact(d))
                    .zip(row_sums.iter())
                {
                    gr.iter_mut()
                        .zip(xr)
                        .for_each(|(g, x)| *g -= two_c * rs * x);
                }
            }
        }
    }
}

/// `exp(x)` by Cephes' `expf` polynomial after reduction by powers of
/// two, written branch-free and inlined so that loops calling it vectorise
/// (relative error below 2e-7 for inputs in `[-87, 88]`; smaller inputs
/// give about `1e-38` instead of 0, larger ones about `1.6e38`; NaN stays
/// NaN).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding and subtracting 1.5 * 2^23 rounds to the nearest integer
    const ROUND: f32 = 12_582_912.0;
    let a = x.clamp(-87.0, 88.0);
    // `a log2(e)` rounded, held in the low mantissa bits of `shifted`
    let shifted = a * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = a - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // 2^k from the bits of `shifted` (`0x4b40_0000 + k`), whose high bits
    // the shift drops: integer ops that vectorise, where `k as i32`
    // (saturating, NaN to 0) compiles to scalar compares and moves
    let two_k = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    e * two_k
}

/// The standard normal CDF `Phi(x) = erfc(-x / sqrt 2) / 2`, with `erfc`
/// by the Chebyshev fit of *Numerical Recipes* (`erfcc`: relative error
/// below 1.2e-7 for every argument), branch-free.
// the coefficients as published (rounded to f32 by the compiler)
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77f32;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_87;
    let p = p * t - 1.135_203_98;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_68;
    let p = p * t - 1.265_512_23;
    // Phi(-|x|)
    let tail = 0.5 * t * exp(p - z * z);
    if x < 0.0 { tail } else { 1.0 - tail }
}

/// Elements per rayon task of the elementwise kernels.
const CHUNK: usize = 1 << 14;

/// `N` vectors of the given lengths, each element written once by `fill`
/// (through [`MaybeUninit::write`]) without a zeroing pass first: zeroing
/// the outputs that the kernels overwrite anyway (`memset`, and the page
/// faults of fresh pages) took about 6% of a `Performer` train step.
///
/// # Safety
/// `fill` must write every element of the slices it gets.
#[allow(unsafe_code)]
unsafe fn written<const N: usize>(
    lens: [usize; N],
    fill: impl FnOnce([&mut [MaybeUninit<f32>]; N]),
) -> [Vec<f32>; N] {
    let mut out = lens.map(Vec::<f32>::with_capacity);
    let mut slices = out.each_mut().map(|v| v.spare_capacity_mut());
    for (slice, &len) in slices.iter_mut().zip(&lens) {
        let whole = std::mem::take(slice);
        *slice = &mut whole[..len];
        // debug builds poison the elements first, so that one left
        // unwritten shows in the tests as NaN
        if cfg!(debug_assertions) {
            slice.iter_mut().for_each(|v| {
                v.write(f32::NAN);
            });
        }
    }
    fill(slices);
    for (v, len) in out.iter_mut().zip(lens) {
        // SAFETY: by the caller's contract `fill` wrote the first `len`
        // elements (the capacity is at least `len`).
        unsafe { v.set_len(len) };
    }
    out
}

/// `src` written into `dst` (of the same length).
#[inline(always)]
fn put(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Rows per rayon task of the row-wise kernels (dense, layout, layer norm),
/// where a pass is memory-bound.
const ROWS_PER_TASK: usize = 256;

/// Rows per tile of a `(sample, head)` slice in the feature map and linear
/// attention kernels: each pass over a slice goes tile by tile, so that a
/// tile's rows of features (`TILE x m`, about 95 KB at `m = 185`) are
/// reused from cache by the steps that follow, instead of each step
/// streaming the whole slice (`n x m`: 12 MB at 128x128 pixels) from memory.
const TILE: usize = 128;

/// GELU `x Phi(x)` of every element.
fn gelu_forward(x: &[f32]) -> Vec<f32> {
    // SAFETY: the chunks of the output and of `x` pair up one to one (equal
    // lengths) and every element is written.
    #[allow(unsafe_code)]
    let [out] = unsafe {
        written([x.len()], |[out]| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| {
                    fast(
                        #[inline(always)]
                        |_| {
                            for (o, &x) in o.iter_mut().zip(x) {
                                o.write(x * normal_cdf(x));
                            }
                        },
                    );
                })
        })
    };
    out
}

/// `g (Phi(x) + x phi(x))`, the gradient of GELU at `x` given the output's
/// `g`.
fn gelu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    debug_assert_eq!(x.len(), g.len());
    // SAFETY: the chunks of the output, `x` and `g` pair up one to one
    // (equal lengths) and every element is written.
    #[allow(unsafe_code)]
    let [out] = unsafe {
        written([x.len()], |[out]| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| {
                    fast(
                        #[inline(always)]
                        |_| {
                            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                                let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
                                o.write(g * (normal_cdf(x) + x * pdf));
                            }
                        },
                    );
                })
        })
    };
    out
}

/// Whether element `index` of the dropout mask of `seed` is kept: its
/// 32-bit draw, the high half of the SplitMix64 output for counter
/// `index + 1` from `seed`, falls below `threshold` ([`dropout_threshold`]).
///
/// Each element has its own draw, computed from its index alone, so a mask
/// depends on its seed only (not on threads or chunks), and the loops that
/// apply it vectorise.
#[inline(always)]
pub fn dropout_kept(seed: u64, index: u64, threshold: u64) -> bool {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) < threshold
}

/// The threshold of [`dropout_kept`] for a keep probability: `keep 2^32`,
/// rounded.
pub fn dropout_threshold(keep: f64) -> u64 {
    (keep * 4_294_967_296.0).round() as u64
}

/// `x` times the dropout mask of `seed` (`1 / keep` where kept, `0`
/// elsewhere), chunk by chunk in parallel.
fn dropout_forward(x: &[f32], keep: f64, seed: u64) -> Vec<f32> {
    let threshold = dropout_threshold(keep);
    let on = (1.0 / keep) as f32;
    // SAFETY: the chunks of the output and of `x` pair up one to one (equal
    // lengths) and every element is written.
    #[allow(unsafe_code)]
    let [out] = unsafe {
        written([x.len()], |[out]| {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(i, (o, x))| {
                    let start = (i * CHUNK) as u64;
                    fast(
                        #[inline(always)]
                        |_| {
                            for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                                let kept = dropout_kept(seed, start + j as u64, threshold);
                                o.write(x * if kept { on } else { 0.0 });
                            }
                        },
                    );
                })
        })
    };
    out
}

/// How the kernel reads and writes a backend's `f32` tensors on the host.
trait HostIo: Backend {
    /// `f` of `t`'s elements in row-major order (no copy where the backend
    /// holds them so).
    fn with_slice<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R;
    /// A tensor of `shape` holding `v` (row-major).
    fn from_vec(v: Vec<f32>, shape: &[usize], device: &Self::Device) -> FloatTensor<Self>;
    /// `t` as `shape` (the same number of elements), its buffer kept where
    /// it is in row-major order and not shared.
    fn reshape(t: FloatTensor<Self>, shape: &[usize]) -> FloatTensor<Self>;
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

    fn from_vec(v: Vec<f32>, shape: &[usize], _: &Self::Device) -> FloatTensor<Self> {
        ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(shape), v)
            .expect("length matches the shape")
            .into()
    }

    fn reshape(t: FloatTensor<Self>, shape: &[usize]) -> FloatTensor<Self> {
        match t {
            burn_ndarray::NdArrayTensor::F32(storage) => {
                // the array itself where the storage owns it (a copy of
                // borrowed bytes otherwise), then new dimensions on it
                let array = storage.into_shared();
                if array.is_standard_layout() {
                    array
                        .into_shape_with_order(ndarray::IxDyn(shape))
                        .expect("as many elements as the shape")
                        .into()
                } else {
                    Self::float_reshape(array.into(), shape.into())
                }
            }
            other => Self::float_reshape(other, shape.into()),
        }
    }
}

/// Registers each tracked parent's gradient (`gs[i]`, row-major, of
/// `shapes[i]`) with the backward pass (`parents`: the ids of those
/// tracked).
fn register_all<I: HostIo>(
    parents: impl IntoIterator<Item = Option<burn::backend::autodiff::NodeId>>,
    gs: impl IntoIterator<Item = Vec<f32>>,
    shapes: impl IntoIterator<Item = Vec<usize>>,
    device: &I::Device,
    grads: &mut Gradients,
) {
    for ((parent, g), shape) in parents.into_iter().zip(gs).zip(shapes) {
        if let Some(id) = parent {
            grads.register::<I>(id, I::from_vec(g, &shape, device));
        }
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
            I::from_vec(gx, &state.shape, &device)
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
    I::from_vec(f, &[b, h, n, m], &I::float_device(&x))
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
    let output = I::from_vec(f, &[b, h, n, m], &I::float_device(&x.primitive));
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

#[derive(Debug)]
struct GeluBackward;

impl<I: HostIo> Backward<I, 1> for GeluBackward {
    /// The input and its shape.
    type State = (FloatTensor<I>, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, shape) = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let device = I::float_device(&grad);
            let gx = I::with_slice(&x, |x| I::with_slice(&grad, |g| gelu_backward(x, g)));
            I::from_vec(gx, &shape, &device)
        });
    }
}

/// GELU on `I`, without autodiff.
fn gelu_plain<I: HostIo>(x: FloatTensor<I>) -> FloatTensor<I> {
    let shape = x.shape().to_vec();
    let y = I::with_slice(&x, gelu_forward);
    I::from_vec(y, &shape, &I::float_device(&x))
}

/// GELU on `Autodiff<I>`, with [`GeluBackward`].
fn gelu_tracked<I: HostIo>(x: FloatTensor<Autodiff<I>>) -> FloatTensor<Autodiff<I>> {
    let shape = x.primitive.shape().to_vec();
    let y = I::with_slice(&x.primitive, gelu_forward);
    let output = I::from_vec(y, &shape, &I::float_device(&x.primitive));
    match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive.clone(), shape), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// GELU `x Phi(x)` (the erf form of `burn::nn::Gelu`, whose gradient is
/// the exact `Phi(x) + x phi(x)`, as PyTorch's) in one multi-threaded pass,
/// forward and backward, when [`is_fused`]; the input back otherwise.
///
/// `Phi` by a branch-free `erfc` fit of relative error below 1.2e-7 and the
/// vectorised `exp` of this module: about a tenth of the time of
/// burn-ndarray's scalar `erf` and the four passes around it.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_fused::<B>() {
        return Err(x);
    }
    macro_rules! on {
        ($inner:ty) => {
            if TypeId::of::<B>() == TypeId::of::<$inner>() {
                let prim: FloatTensor<$inner> = same(x.into_primitive().tensor());
                let out = gelu_plain::<$inner>(prim);
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner>>() {
                let prim: FloatTensor<Autodiff<$inner>> = same(x.into_primitive().tensor());
                let out = gelu_tracked::<$inner>(prim);
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err(x)
}

#[derive(Debug)]
struct DropoutBackward;

impl<I: HostIo> Backward<I, 1> for DropoutBackward {
    /// The keep probability, the mask's seed and the input's shape.
    type State = (f64, u64, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (keep, seed, shape) = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let device = I::float_device(&grad);
            let gx = I::with_slice(&grad, |g| dropout_forward(g, keep, seed));
            I::from_vec(gx, &shape, &device)
        });
    }
}

/// Dropout on `Autodiff<I>`, with [`DropoutBackward`].
fn dropout_tracked<I: HostIo>(
    x: FloatTensor<Autodiff<I>>,
    keep: f64,
    seed: u64,
) -> FloatTensor<Autodiff<I>> {
    let shape = x.primitive.shape().to_vec();
    let y = I::with_slice(&x.primitive, |x| dropout_forward(x, keep, seed));
    let output = I::from_vec(y, &shape, &I::float_device(&x.primitive));
    match DropoutBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((keep, seed, shape), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Dropout with the mask of `seed` ([`dropout_kept`]: each element kept
/// with probability `keep`, then scaled by `1 / keep`) in one pass, forward
/// and backward, when [`is_fused`] and `keep` is in `(0, 1]`; the input
/// back otherwise.
///
/// The backward draws the mask again from the seed instead of keeping it:
/// no mask tensor is written, stored or read. The result equals `x` times
/// the mask as a tensor of `1 / keep` and `0` (as `f32`), bit for bit.
pub fn dropout<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    keep: f64,
    seed: u64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !(is_fused::<B>() && keep > 0.0 && keep <= 1.0) {
        return Err(x);
    }
    macro_rules! on {
        ($inner:ty) => {
            if TypeId::of::<B>() == TypeId::of::<$inner>() {
                let prim: FloatTensor<$inner> = same(x.into_primitive().tensor());
                let shape = prim.shape().to_vec();
                let y = <$inner as HostIo>::with_slice(&prim, |x| dropout_forward(x, keep, seed));
                let out = <$inner as HostIo>::from_vec(y, &shape, &<$inner>::float_device(&prim));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner>>() {
                let prim: FloatTensor<Autodiff<$inner>> = same(x.into_primitive().tensor());
                let out = dropout_tracked::<$inner>(prim, keep, seed);
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err(x)
}

/// The shape of one `(sample, head)` slice of linear attention: `n` query
/// and key tokens, `m` features, `e` value channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinearDims {
    n: usize,
    m: usize,
    e: usize,
}

impl LinearDims {
    /// `C = phi(K)^T V` (`[m, e]`) and `s = phi(K)^T 1` (`[m]`) of a slice,
    /// summed tile by tile.
    #[inline(always)]
    fn context(&self, k: &[f32], v: &[f32], fma: Fma) -> (Vec<f32>, Vec<f32>) {
        let LinearDims { n, m, e } = *self;
        debug_assert_eq!((k.len(), v.len()), (n * m, n * e));
        let mut c = vec![0.0f32; m * e];
        let mut part = vec![0.0f32; m * e];
        let mut sums = vec![0.0f32; m];
        for (kt, vt) in k.chunks(TILE * m).zip(v.chunks(TILE * e)) {
            simd::gemm_tn(kt, vt, &mut part, m, e, fma);
            c.iter_mut().zip(&part).for_each(|(c, p)| *c += p);
            for row in kt.chunks_exact(m) {
                sums.iter_mut().zip(row).for_each(|(s, k)| *s += k);
            }
        }
        (c, sums)
    }

    /// `out = (phi(Q) C) / (phi(Q) s)` of a slice's rows (all or a tile),
    /// the normaliser clamped to the smallest positive `f32`; returns the
    /// normalisers, negative where clamped.
    #[inline(always)]
    fn forward_slice<'o>(
        &self,
        q: &[f32],
        c: &[f32],
        sums: &[f32],
        out: &'o mut [MaybeUninit<f32>],
        fma: Fma,
    ) -> (&'o mut [f32], Vec<f32>) {
        let LinearDims { m, e, .. } = *self;
        let rows = q.len() / m;
        debug_assert_eq!((q.len(), out.len()), (rows * m, rows * e));
        let out = simd::gemm_nn_init(q, c, out, m, e, fma);
        let mut dens = vec![0.0f32; rows];
        for ((row, qr), den) in out
            .chunks_exact_mut(e)
            .zip(q.chunks_exact(m))
            .zip(&mut dens)
        {
            let raw = simd::dot(qr, sums, fma);
            // NaN stays NaN, as in the plain ops' clamp
            *den = if raw < f32::MIN_POSITIVE {
                -f32::MIN_POSITIVE
            } else {
                raw
            };
            let d = den.abs();
            row.iter_mut().for_each(|v| *v /= d);
        }
        (out, dens)
    }

    /// The gradients `(dQ', dK', dV)` of a slice given the output's `g`:
    /// one pass over the query tiles (the output recomputed, `dQ'` and the
    /// sums `dC`, `ds`), then one over the key tiles (`dK'`, `dV`).
    #[inline(always)]
    fn backward_slice(
        &self,
        (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
        [dq, dk, dv]: [&mut [MaybeUninit<f32>]; 3],
        fma: Fma,
    ) {
        let LinearDims { n, m, e } = *self;
        assert_eq!(
            (q.len(), k.len(), v.len(), g.len()),
            (n * m, n * m, n * e, n * e)
        );
        assert_eq!((dq.len(), dk.len(), dv.len()), (n * m, n * m, n * e));
        let (c, sums) = self.context(k, v, fma);
        let ct = simd::transpose(&c, m, e);
        let tile = TILE.min(n);
        let mut out = vec![MaybeUninit::<f32>::uninit(); tile * e];
        let mut dnum = vec![0.0f32; tile * e];
        let mut dden = vec![0.0f32; tile];
        let (mut dc, mut part) = (vec![0.0f32; m * e], vec![0.0f32; m * e]);
        let mut ds = vec![0.0f32; m];
        for ((qt, gt), dqt) in q
            .chunks(TILE * m)
            .zip(g.chunks(TILE * e))
            .zip(dq.chunks_mut(TILE * m))
        {
            let rows = qt.len() / m;
            let (out, dnum, dden) = (
                &mut out[..rows * e],
                &mut dnum[..rows * e],
                &mut dden[..rows],
            );
            let (out, dens) = self.forward_slice(qt, &c, &sums, out, fma);
            // d num = g / den; d den = -sum(g out) / den (0 where clamped)
            for (i, &den_raw) in dens.iter().enumerate() {
                let den = den_raw.abs();
                let (gr, or) = (&gt[i * e..(i + 1) * e], &out[i * e..(i + 1) * e]);
                dnum[i * e..(i + 1) * e]
                    .iter_mut()
                    .zip(gr)
                    .for_each(|(d, g)| *d = g / den);
                dden[i] = if den_raw > 0.0 {
                    -simd::dot(gr, or, fma) / den
                } else {
                    0.0
                };
            }
            // dQ' = dnum C^T + dden s^T
            let dqt = simd::gemm_nn_init(dnum, &ct, dqt, e, m, fma);
            for (row, dd) in dqt.chunks_exact_mut(m).zip(dden.iter()) {
                row.iter_mut().zip(&sums).for_each(|(d, s)| *d += dd * s);
            }
            // dC += Q'^T dnum, ds += Q'^T dden
            simd::gemm_tn(qt, dnum, &mut part, m, e, fma);
            dc.iter_mut().zip(&part).for_each(|(d, p)| *d += p);
            for (qr, dd) in qt.chunks_exact(m).zip(dden.iter()) {
                ds.iter_mut().zip(qr).for_each(|(d, q)| *d += q * dd);
            }
        }
        let dct = simd::transpose(&dc, m, e);
        for ((kt, vt), (dkt, dvt)) in k
            .chunks(TILE * m)
            .zip(v.chunks(TILE * e))
            .zip(dk.chunks_mut(TILE * m).zip(dv.chunks_mut(TILE * e)))
        {
            // dK' = V dC^T + 1 ds^T
            let dkt = simd::gemm_nn_init(vt, &dct, dkt, e, m, fma);
            for row in dkt.chunks_exact_mut(m) {
                row.iter_mut().zip(&ds).for_each(|(d, s)| *d += s);
            }
            // dV = K' dC
            simd::gemm_nn_init(kt, &dc, dvt, m, e, fma);
        }
    }

    /// The attention output `[slices, n, e]`.
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let LinearDims { n, m, e } = *self;
        // SAFETY: `forward_slice` writes each tile (`gemm_nn_init` checks
        // the lengths); the tiles of a slice pair up with the query tiles
        // (`n` rows each), and the slices cover the output.
        #[allow(unsafe_code)]
        let [out] = unsafe {
            written([v.len()], |[out]| {
                out.par_chunks_mut(n * e)
                    .zip(q.par_chunks(n * m))
                    .zip(k.par_chunks(n * m).zip(v.par_chunks(n * e)))
                    .for_each(|((o, q), (k, v))| {
                        assert_eq!((q.len(), o.len()), (n * m, n * e));
                        fast(
                            #[inline(always)]
                            |fma| {
                                let (c, sums) = self.context(k, v, fma);
                                for (qt, ot) in q.chunks(TILE * m).zip(o.chunks_mut(TILE * e)) {
                                    self.forward_slice(qt, &c, &sums, ot, fma);
                                }
                            },
                        )
                    })
            })
        };
        out
    }

    /// `(dQ', dK', dV)`, each as its input.
    fn backward(&self, q: &[f32], k: &[f32], v: &[f32], g: &[f32]) -> [Vec<f32>; 3] {
        let LinearDims { n, m, e } = *self;
        // SAFETY: `backward_slice` writes its three outputs whole (it
        // checks the lengths), and the slices cover them.
        #[allow(unsafe_code)]
        unsafe {
            written([q.len(), k.len(), v.len()], |[dq, dk, dv]| {
                dq.par_chunks_mut(n * m)
                    .zip(dk.par_chunks_mut(n * m))
                    .zip(dv.par_chunks_mut(n * e))
                    .zip(
                        q.par_chunks(n * m)
                            .zip(k.par_chunks(n * m))
                            .zip(v.par_chunks(n * e).zip(g.par_chunks(n * e))),
                    )
                    .for_each(|(((dq, dk), dv), ((q, k), (v, g)))| {
                        fast(
                            #[inline(always)]
                            |fma| self.backward_slice((q, k, v, g), [dq, dk, dv], fma),
                        );
                    })
            })
        }
    }
}

#[derive(Debug)]
struct LinearBackward;

/// Linear attention's inputs (`phi(Q)`, `phi(K)`, `V`) and their shapes.
type LinearState<I> = (LinearDims, [FloatTensor<I>; 3], [Vec<usize>; 3]);

impl<I: HostIo> Backward<I, 3> for LinearBackward {
    type State = LinearState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [q, k, v], shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&q, |q| {
            I::with_slice(&k, |k| {
                I::with_slice(&v, |v| I::with_slice(&grad, |g| dims.backward(q, k, v, g)))
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

/// The dims of linear attention on `q' [b, h, n, m]`, `k' [b, h, j, m]`,
/// `v [b, h, j, e]`, if the fused kernel takes these shapes (self-attention,
/// `j = n`).
fn linear_dims(q: &[usize], k: &[usize], v: &[usize]) -> Option<LinearDims> {
    let (n, m, e) = (q[2], q[3], v[3]);
    let fits = q.len() == 4 && k == q && v[..3] == q[..3] && n > 0 && m > 0 && e > 0;
    fits.then_some(LinearDims { n, m, e })
}

/// Normalised linear attention `phi(Q) (phi(K)^T [V, 1])` of
/// [`crate::attention::linear_attention`] in one multi-threaded pass per
/// `(sample, head)` slice, forward and backward, when [`is_fused`] and the
/// keys are the queries' tokens; the inputs back otherwise.
///
/// The plain ops append a column of ones to `V` (a copy of the values),
/// take two batched products, slice the normaliser off and divide: five
/// passes over `[b, h, n, e]` tensors and as many in the backward. Here a
/// slice's `C = phi(K)^T V` and `s = phi(K)^T 1` stay in cache between its
/// products.
#[allow(clippy::type_complexity)]
pub(crate) fn linear_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let Some(dims) = linear_dims(&q.dims(), &k.dims(), &v.dims()) else {
        return Err((q, k, v));
    };
    if !is_fused::<B>() {
        return Err((q, k, v));
    }
    let shapes = [q.dims().to_vec(), k.dims().to_vec(), v.dims().to_vec()];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let [q, k, v]: [FloatTensor<I>; 3] =
                    [q, k, v].map(|t| same(t.into_primitive().tensor()));
                let out = I::with_slice(&q, |qs| {
                    I::with_slice(&k, |ks| I::with_slice(&v, |vs| dims.forward(qs, ks, vs)))
                });
                let out = I::from_vec(out, &shapes[2], &I::float_device(&q));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let [q, k, v]: [FloatTensor<Autodiff<I>>; 3] =
                    [q, k, v].map(|t| same(t.into_primitive().tensor()));
                let out = I::with_slice(&q.primitive, |qs| {
                    I::with_slice(&k.primitive, |ks| {
                        I::with_slice(&v.primitive, |vs| dims.forward(qs, ks, vs))
                    })
                });
                let out = I::from_vec(out, &shapes[2], &I::float_device(&q.primitive));
                let out = match <LinearBackward as Backward<I, 3>>::prepare::<NoCheckpointing>(
                    LinearBackward,
                    [q.node.clone(), k.node.clone(), v.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        prep.finish((dims, [q.primitive, k.primitive, v.primitive], shapes), out)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((q, k, v))
}

/// FAVOR+ softmax-kernel attention of `[slices, n, d]` queries and keys
/// and `[slices, n, e]` values, slice by slice, without the features in
/// memory: a slice's key features (`n x m`, 451 KB at 32x32 pixels and the
/// seed's 110 features) are made, summed into `C` and `s` and dropped while
/// they are in cache, and each tile of query features meets `C` as soon as
/// it is made. The separate kernels write both feature tensors out and read
/// them back (58 MB per layer of the seed's inference step at batch 16).
/// The same products in the same order: bit-equal to [`Kernel::forward`]
/// of both, then [`LinearDims::forward`].
fn favor_forward(
    queries: &Kernel,
    keys: &Kernel,
    e: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
) -> Vec<f32> {
    let Dims { n, d, m } = queries.dims;
    assert_eq!(keys.dims, queries.dims);
    assert!(n > 0 && d > 0 && e > 0);
    assert_eq!((q.len(), k.len()), (v.len() / e * d, v.len() / e * d));
    let linear = LinearDims { n, m, e };
    // SAFETY: each slice's query tiles pair up with its output tiles, which
    // `LinearDims::forward_slice` writes whole (`gemm_nn_init` checks the
    // lengths); the slices cover `out`.
    #[allow(unsafe_code)]
    let [out] = unsafe {
        written([v.len()], |[out]| {
            out.par_chunks_mut(n * e)
                .zip(q.par_chunks(n * d))
                .zip(k.par_chunks(n * d).zip(v.par_chunks(n * e)))
                .for_each(|((o, q), (k, v))| {
                    let mut kf = vec![MaybeUninit::<f32>::uninit(); n * m];
                    let mut qf = vec![MaybeUninit::<f32>::uninit(); TILE.min(n) * m];
                    fast(
                        #[inline(always)]
                        |fma| {
                            keys.forward_slice(k, &mut kf, fma);
                            // SAFETY: `forward_slice` wrote its whole
                            // output (`n` rows of `m`, checked).
                            let kf = simd::init_mut(&mut kf);
                            let (c, sums) = linear.context(kf, v, fma);
                            for (qt, ot) in q.chunks(TILE * d).zip(o.chunks_mut(TILE * e)) {
                                let qf = &mut qf[..qt.len() / d * m];
                                queries.forward_slice(qt, qf, fma);
                                // SAFETY: as above, for this tile's rows.
                                let qf = simd::init_mut(qf);
                                linear.forward_slice(qf, &c, &sums, ot, fma);
                            }
                        },
                    )
                })
        })
    };
    out
}

/// FAVOR+ attention with the softmax kernel (`q`, `k [b, h, n, d]`, `v
/// [b, h, n, e]`, `projection [m, d]`), as
/// [`crate::attention::linear_attention`] of the two feature maps
/// ([`crate::features::softmax_features_up_to_scale`]), in one pass per
/// `(sample, head)` slice that keeps the features in cache, when
/// [`is_fused`] and nothing takes a gradient (inference); the inputs back
/// otherwise. Bit-equal to the two fused steps.
#[allow(clippy::type_complexity)]
pub fn favor_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    projection: Tensor<B, 2>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 2>)> {
    let [qd, kd, vd] = [q.dims(), k.dims(), v.dims()];
    let [m, pd] = projection.dims();
    let fits = qd == kd
        && vd[..3] == qd[..3]
        && pd == qd[3]
        && qd.iter().chain(&vd).all(|&x| x > 0)
        && m > 0;
    let tracked = [&q, &k, &v].iter().any(|t| t.is_require_grad()) || projection.is_require_grad();
    if !fits || tracked || !is_fused::<B>() {
        return Err((q, k, v, projection));
    }
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let [b, h, n, d] = qd;
                let w = host_vec(projection);
                let queries = Kernel::new(Dims { n, d, m }, &w, true);
                let keys = Kernel::new(Dims { n, d, m }, &w, false);
                let [q, k, v]: [FloatTensor<I>; 3] =
                    [q, k, v].map(|t| same(t.into_primitive().tensor()));
                let out = I::with_slice(&q, |qs| {
                    I::with_slice(&k, |ks| {
                        I::with_slice(&v, |vs| favor_forward(&queries, &keys, vd[3], (qs, ks, vs)))
                    })
                });
                let out = I::from_vec(out, &[b, h, n, vd[3]], &I::float_device(&q));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((q, k, v, projection))
}

/// The ring sums of [`ring_sums`] on `slices` images of `height x width`
/// pixels with `e` channels each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingDims {
    slices: usize,
    height: usize,
    width: usize,
    e: usize,
    rings: usize,
}

impl RingDims {
    fn image(&self) -> usize {
        self.height * self.width * self.e
    }

    /// Adds ring `c` of `src` (one image) to `dst`: every pixel gets the
    /// sum of the pixels at L1 distance exactly `c` (zero outside the
    /// image), row segments at a time.
    fn add_ring(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, e) = (self.height as isize, self.width as isize, self.e);
        let c = c as isize;
        if c == 0 {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            return;
        }
        for dy in -c..=c {
            let rest = c - dy.abs();
            let dxs: &[isize] = if rest == 0 { &[0] } else { &[-rest, rest] };
            for &dx in dxs {
                let (x0, x1) = (0.max(-dx), w.min(w - dx));
                if x0 >= x1 {
                    continue;
                }
                let len = (x1 - x0) as usize * e;
                for y in 0.max(-dy)..h.min(h - dy) {
                    let to = ((y * w + x0) as usize) * e;
                    let from = (((y + dy) * w + x0 + dx) as usize) * e;
                    dst[to..to + len]
                        .iter_mut()
                        .zip(&src[from..from + len])
                        .for_each(|(d, s)| *d += s);
                }
            }
        }
    }

    /// `[rings, slices, height width, e]` of `v [slices, height width, e]`.
    fn forward(&self, v: &[f32]) -> Vec<f32> {
        let image = self.image();
        let mut out = vec![0.0f32; self.rings * v.len()];
        out.par_chunks_mut(image).enumerate().for_each(|(i, dst)| {
            let (c, slice) = (i / self.slices, i % self.slices);
            self.add_ring(c, &v[slice * image..(slice + 1) * image], dst);
        });
        out
    }

    /// The gradient with respect to `v` given the rings' `g`: each ring is
    /// symmetric (its offsets come in pairs `o`, `-o`), so its adjoint is
    /// itself.
    fn backward(&self, g: &[f32]) -> Vec<f32> {
        let image = self.image();
        let mut dv = vec![0.0f32; self.slices * image];
        dv.par_chunks_mut(image)
            .enumerate()
            .for_each(|(slice, dst)| {
                for c in 0..self.rings {
                    let at = (c * self.slices + slice) * image;
                    self.add_ring(c, &g[at..at + image], dst);
                }
            });
        dv
    }
}

#[derive(Debug)]
struct RingBackward;

impl<I: HostIo> Backward<I, 1> for RingBackward {
    /// The dims and the input's shape.
    type State = (RingDims, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dims, shape) = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let device = I::float_device(&grad);
            let dv = I::with_slice(&grad, |g| dims.backward(g));
            I::from_vec(dv, &shape, &device)
        });
    }
}

/// The ring sums of strategy 2 (the positional crate's `ring_sums`) in one
/// multi-threaded pass, forward and backward, when [`is_fused`]; the input
/// back otherwise.
///
/// `v [b, h, height, width, e]` -> `[rings, b, h, height, width, e]`, ring
/// `c` (`0..rings`) holding at each pixel the sum of `v` over the pixels at
/// L1 distance exactly `c` (zero padding). The plain ops take one shifted
/// copy and one addition of the whole tensor per ring point (112 of each for
/// clipping distance 8); here each image adds row segments in place.
pub fn ring_sums<B: Backend>(v: Tensor<B, 5>, rings: usize) -> Result<Tensor<B, 6>, Tensor<B, 5>> {
    if !is_fused::<B>() || rings == 0 {
        return Err(v);
    }
    let [b, h, height, width, e] = v.dims();
    let dims = RingDims {
        slices: b * h,
        height,
        width,
        e,
        rings,
    };
    let out_shape = [rings, b, h, height, width, e];
    let in_shape = v.dims().to_vec();
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let x: FloatTensor<I> = same(v.into_primitive().tensor());
                let out = I::with_slice(&x, |vs| dims.forward(vs));
                let out = I::from_vec(out, &out_shape, &I::float_device(&x));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let x: FloatTensor<Autodiff<I>> = same(v.into_primitive().tensor());
                let out = I::with_slice(&x.primitive, |vs| dims.forward(vs));
                let out = I::from_vec(out, &out_shape, &I::float_device(&x.primitive));
                let out = match <RingBackward as Backward<I, 1>>::prepare::<NoCheckpointing>(
                    RingBackward,
                    [x.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((dims, in_shape), out),
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err(v)
}

/// Strategy 2's window term ([`clipped_window`]) on `slices` sequences of
/// a class token and `height x width` pixels, `e` channels, `rings + 1`
/// weights per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WindowDims {
    ring: RingDims,
}

impl WindowDims {
    /// Values per slice (`n e`, the class token's row first) and weights
    /// per slice (`n (rings + 1)`).
    fn lens(&self) -> (usize, usize) {
        let n = 1 + self.ring.height * self.ring.width;
        (n * self.ring.e, n * (self.ring.rings + 1))
    }

    /// `out [slices, n, e]`: zero for the class token; at pixel `i`,
    /// `sum_{c < C} (s[i, c] - s[i, C]) R_c(v)_i` over the pixels' values.
    /// One slice per task: each ring is summed into a scratch image that
    /// stays in cache and is weighted into the output at once.
    fn forward(&self, v: &[f32], s: &[f32]) -> Vec<f32> {
        let RingDims { rings, e, .. } = self.ring;
        let (values, weights) = self.lens();
        let mut out = vec![0.0f32; v.len()];
        out.par_chunks_mut(values)
            .zip(v.par_chunks(values))
            .zip(s.par_chunks(weights))
            .for_each(|((out, v), s)| {
                let (out, v, s) = (&mut out[e..], &v[e..], &s[rings + 1..]);
                let mut ring = vec![0.0f32; v.len()];
                for c in 0..rings {
                    ring.fill(0.0);
                    self.ring.add_ring(c, v, &mut ring);
                    for ((o, r), si) in out
                        .chunks_exact_mut(e)
                        .zip(ring.chunks_exact(e))
                        .zip(s.chunks_exact(rings + 1))
                    {
                        let w = si[c] - si[rings];
                        o.iter_mut().zip(r).for_each(|(o, r)| *o += w * r);
                    }
                }
            });
        out
    }

    /// The gradients with respect to `v` and `s` given the output's `g`:
    /// over the pixels, `dv = sum_c R_c(w_c g)` (each ring is its own
    /// adjoint), `ds[i, c] = R_c(v)_i . g_i` and `ds[i, C] = -sum_c ds[i,
    /// c]`; zero for the class token.
    fn backward(&self, v: &[f32], s: &[f32], g: &[f32]) -> [Vec<f32>; 2] {
        let RingDims { rings, e, .. } = self.ring;
        let (values, weights) = self.lens();
        let mut dv = vec![0.0f32; v.len()];
        let mut ds = vec![0.0f32; s.len()];
        dv.par_chunks_mut(values)
            .zip(ds.par_chunks_mut(weights))
            .zip(v.par_chunks(values).zip(s.par_chunks(weights)))
            .zip(g.par_chunks(values))
            .for_each(|(((dv, ds), (v, s)), g)| {
                let (dv, v, g) = (&mut dv[e..], &v[e..], &g[e..]);
                let (ds, s) = (&mut ds[rings + 1..], &s[rings + 1..]);
                let mut ring = vec![0.0f32; v.len()];
                let mut weighted = vec![0.0f32; v.len()];
                for c in 0..rings {
                    ring.fill(0.0);
                    self.ring.add_ring(c, v, &mut ring);
                    for ((((r, gi), si), dsi), t) in ring
                        .chunks_exact(e)
                        .zip(g.chunks_exact(e))
                        .zip(s.chunks_exact(rings + 1))
                        .zip(ds.chunks_exact_mut(rings + 1))
                        .zip(weighted.chunks_exact_mut(e))
                    {
                        let d: f32 = r.iter().zip(gi).map(|(r, g)| r * g).sum();
                        dsi[c] = d;
                        dsi[rings] -= d;
                        let w = si[c] - si[rings];
                        t.iter_mut().zip(gi).for_each(|(t, g)| *t = w * g);
                    }
                    self.ring.add_ring(c, &weighted, dv);
                }
            });
        [dv, ds]
    }
}

#[derive(Debug)]
struct WindowBackward;

/// The window's inputs (`v`, `s`) and their shapes.
type WindowState<I> = (WindowDims, [FloatTensor<I>; 2], [Vec<usize>; 2]);

impl<I: HostIo> Backward<I, 2> for WindowBackward {
    type State = WindowState<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<I>(&ops.node);
        let (dims, [v, s], shapes) = ops.state;
        let device = I::float_device(&grad);
        let gs = I::with_slice(&v, |v| {
            I::with_slice(&s, |s| I::with_slice(&grad, |g| dims.backward(v, s, g)))
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

/// Strategy 2's window term in one multi-threaded pass per `(sample,
/// head)` slice, forward and backward, when [`is_fused`]; the inputs back
/// otherwise.
///
/// `v [b, h, n, e]` and `s [b, h, n, C + 1]` (token 0 the class token, then
/// the `height x width` pixels row-major; `n = 1 + height width`) ->
/// `[b, h, n, e]`: zero for the class token, and at pixel `i` the sum over
/// `c < C` of `(s[i, c] - s[i, C]) R_c(v)_i`, `R_c` the ring sums of
/// [`ring_sums`] over the pixels. The plain ops slice the pixels and the
/// weights out, take the `C` rings and weight and add them one by one, and
/// put the class row back: about `4 C` passes over `[b, h, n, e]` tensors,
/// each a copy. Here each ring lives in a per-slice scratch image and is
/// weighted into the output while in cache.
#[allow(clippy::type_complexity)]
pub fn clipped_window<B: Backend>(
    v: Tensor<B, 4>,
    s: Tensor<B, 4>,
    height: usize,
    width: usize,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    let [b, h, n, e] = v.dims();
    let [sb, sh, sn, weights] = s.dims();
    let fits = (sb, sh, sn) == (b, h, n) && n == 1 + height * width && weights > 1 && e > 0;
    if !fits || !is_fused::<B>() {
        return Err((v, s));
    }
    let dims = WindowDims {
        ring: RingDims {
            slices: b * h,
            height,
            width,
            e,
            rings: weights - 1,
        },
    };
    let shapes = [v.dims().to_vec(), s.dims().to_vec()];
    macro_rules! on {
        ($inner:ty) => {
            type I = $inner;
            if TypeId::of::<B>() == TypeId::of::<I>() {
                let v: FloatTensor<I> = same(v.into_primitive().tensor());
                let s: FloatTensor<I> = same(s.into_primitive().tensor());
                let out = I::with_slice(&v, |vs| I::with_slice(&s, |ss| dims.forward(vs, ss)));
                let out = I::from_vec(out, &shapes[0], &I::float_device(&v));
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<I>>() {
                let v: FloatTensor<Autodiff<I>> = same(v.into_primitive().tensor());
                let s: FloatTensor<Autodiff<I>> = same(s.into_primitive().tensor());
                let out = I::with_slice(&v.primitive, |vs| {
                    I::with_slice(&s.primitive, |ss| dims.forward(vs, ss))
                });
                let out = I::from_vec(out, &shapes[0], &I::float_device(&v.primitive));
                let out = match <WindowBackward as Backward<I, 2>>::prepare::<NoCheckpointing>(
                    WindowBackward,
                    [v.node.clone(), s.node.clone()],
                )
                .compute_bound()
                .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        prep.finish((dims, [v.primitive, s.primitive], shapes), out)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                return Ok(Tensor::from_primitive(TensorPrimitive::Float(same(out))));
            }
        };
    }
    #[cfg(feature = "ndarray")]
    on!(burn_ndarray::NdArray<f32>);
    Err((v, s))
}

#[cfg(test)]
mod tests {
    use super::exp;

    /// Debug builds fill `written`'s outputs with NaN first, so that a
    /// kernel that leaves an element unwritten fails its tests (run with
    /// `cargo test` without `--release`).
    #[cfg(debug_assertions)]
    #[test]
    fn written_outputs_start_as_nan_in_debug_builds() {
        // SAFETY: in debug builds every element is written (the poison)
        // before `fill` runs.
        #[allow(unsafe_code)]
        let [a, b] = unsafe {
            super::written([3, 2], |[a, b]| {
                a[0].write(1.0);
                a[2].write(3.0);
                b[1].write(5.0);
            })
        };
        assert_eq!((a[0], a[2], b[1]), (1.0, 3.0, 5.0));
        assert!(a[1].is_nan() && b[0].is_nan());
    }

    fn exp_in_place(v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = exp(*x));
    }

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
        assert!(exp(f32::NAN).is_nan());
    }
}
