//! What the kernels need to vectorise: reductions with eight independent
//! accumulators (a float sum or maximum over one accumulator is a chain
//! the compiler must keep in order, one element per step), and code paths
//! compiled for AVX2 and FMA, taken where the CPU has them.
//!
//! The build targets baseline x86-64 (SSE2: four lanes, no fused
//! multiply-add), so that the binaries run on any x86-64 CPU; [`fast`] runs
//! a kernel's body compiled again with AVX2 and FMA (eight lanes) when the
//! CPU reports both at run time.

/// Accumulator lanes of the reductions.
const LANES: usize = 8;

/// `sum(v)`, eight elements at a time.
#[inline(always)]
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `sum(a * b)` over the shorter of the two, eight elements at a time.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32], fma: Fma) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s = fma.mul_add(*x, *y, *s);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `max(v)` (`-inf` for no elements), eight elements at a time. A NaN in
/// `v` is skipped, as `f32::max` skips it.
#[inline(always)]
pub(crate) fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

/// `out = a b`: `a [rows, k]`, `b [k, n]`, `out [rows, n]`, row-major.
///
/// For the products of one `(sample, head)` slice, whose inner or outer
/// extents are the head's few channels or features: four output rows at a
/// time are built in blocks of 16, 8, 4 and 1 columns held in registers across
/// `k`, with no packing of the operands (matrixmultiply's packing took more time
/// than its kernel on these shapes).
#[inline(always)]
pub(crate) fn gemm_nn(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize, fma: Fma) {
    if n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    debug_assert_eq!(b.len(), k * n);
    // four rows at a time: each row of `b` loaded once serves four output
    // rows (the loads, not the multiplies, bound one row at a time)
    let mut rows = a.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * n));
    for (a4, o4) in &mut rows {
        rows_of::<4>(a4, b, o4, (k, n), fma);
    }
    let rest = a.len() / k % 4;
    let (a_done, out_done) = (a.len() - rest * k, out.len() - rest * n);
    let (a, out) = (&a[a_done..], &mut out[out_done..]);
    for (arow, orow) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        rows_of::<1>(arow, b, orow, (k, n), fma);
    }
}

/// All `n` columns of `R` consecutive output rows of [`gemm_nn`], in
/// [`block`]s of 16, 8, 4 and 1 columns.
#[inline(always)]
fn rows_of<const R: usize>(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (k, n): (usize, usize),
    fma: Fma,
) {
    let mut col = 0;
    while col + 16 <= n {
        block::<R, 16>(a, b, out, (k, n, col), fma);
        col += 16;
    }
    if col + 8 <= n {
        block::<R, 8>(a, b, out, (k, n, col), fma);
        col += 8;
    }
    if col + 4 <= n {
        block::<R, 4>(a, b, out, (k, n, col), fma);
        col += 4;
    }
    while col < n {
        block::<R, 1>(a, b, out, (k, n, col), fma);
        col += 1;
    }
}

/// Columns `col..col + W` of `R` consecutive output rows of [`gemm_nn`]
/// (`a` holds their `R` rows of `k`, `out` their `R` rows of `n`), the
/// `R x W` sums held in registers across `k`.
#[inline(always)]
fn block<const R: usize, const W: usize>(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (k, n, col): (usize, usize, usize),
    fma: Fma,
) {
    let mut acc = [[0.0f32; W]; R];
    for (i, brow) in b.chunks_exact(n).enumerate() {
        let brow: &[f32; W] = brow[col..col + W].try_into().expect("W columns");
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a[r * k + i];
            for (s, v) in acc.iter_mut().zip(brow) {
                *s = fma.mul_add(x, *v, *s);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * n + col..r * n + col + W].copy_from_slice(acc);
    }
}

/// `out = a^T b`: `a [rows, m]`, `b [rows, e]`, `out [m, e]`, row-major.
///
/// As `(b^T a)^T` with the sums in registers across the `rows` (a rank-1
/// update of `out` per row loads and stores every element of `out` for
/// each row: it ran at a store per four products). `a` is the large
/// operand (`phi(K)`, `n x m`), so the loop over its column blocks is the
/// outer one: each block of `a`'s columns is read once, from cache, for all
/// of `b`'s columns. (The other order read the whole of `a` once per four
/// of `b`'s columns, from memory once `a` outgrew the cache:
/// `RelativePerformer`'s dim-128 train step at 128x128, `phi(K)` 16385 x
/// 185, took 3.64 / 3.66 s against 2.74 / 3.14 s this way.)
#[inline(always)]
pub(crate) fn gemm_tn(a: &[f32], b: &[f32], out: &mut [f32], m: usize, e: usize, fma: Fma) {
    let rows = a.len() / m.max(1);
    if m == 0 || e == 0 || rows == 0 {
        out.fill(0.0);
        return;
    }
    let bt = transpose(b, rows, e); // [e, rows]: the product's left operand
    let mut ct = vec![0.0f32; e * m]; // [e, m]
    let mut col = 0;
    while col < m {
        col += match m - col {
            16.. => panel::<16>(&bt, a, &mut ct, (rows, m, col), fma),
            8.. => panel::<8>(&bt, a, &mut ct, (rows, m, col), fma),
            4.. => panel::<4>(&bt, a, &mut ct, (rows, m, col), fma),
            _ => panel::<1>(&bt, a, &mut ct, (rows, m, col), fma),
        };
    }
    for (r, row) in ct.chunks_exact(m).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * e + r] = v;
        }
    }
}

/// Columns `col..col + W` of every row of `out = a b` (`a [rows, k]`, `b
/// [k, n]`, `out [rows, n]`), four rows at a time; returns `W`.
#[inline(always)]
fn panel<const W: usize>(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (k, n, col): (usize, usize, usize),
    fma: Fma,
) -> usize {
    let mut groups = a.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * n));
    for (a4, o4) in &mut groups {
        block::<4, W>(a4, b, o4, (k, n, col), fma);
    }
    let rest = a.len() / k % 4;
    let (a_done, out_done) = (a.len() - rest * k, out.len() - rest * n);
    for (arow, orow) in a[a_done..]
        .chunks_exact(k)
        .zip(out[out_done..].chunks_exact_mut(n))
    {
        block::<1, W>(arow, b, orow, (k, n, col), fma);
    }
    W
}

/// `a^T`: `a [rows, cols]` -> `[cols, rows]`, row-major.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (r, row) in a.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// Whether this CPU runs the AVX2 and FMA code paths (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    })
}

/// Whether a code path multiplies and adds in one rounding
/// ([`Fma::mul_add`]): only inside [`fast`]'s AVX2 and FMA path, where
/// `f32::mul_add` is one instruction (elsewhere it is a library call, and
/// the compiler never fuses `a * b + c` by itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fma(bool);

impl Fma {
    /// `a * b + c`, fused where the path has FMA.
    #[inline(always)]
    pub(crate) fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        if self.0 { a.mul_add(b, c) } else { a * b + c }
    }
}

/// `f(fma)`, compiled with AVX2 and FMA enabled where the CPU has them (the
/// closure and what it inlines: mark the closure `#[inline(always)]`), as
/// the baseline build otherwise; `fma` tells the body which (a constant in
/// each copy, so its branches fold away).
#[inline(always)]
pub(crate) fn fast<R>(f: impl FnOnce(Fma) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2_fma<R>(f: impl FnOnce(Fma) -> R) -> R {
            f(Fma(true))
        }
        if has_avx2_fma() {
            // SAFETY: the CPU reports AVX2 and FMA (checked above), the
            // only requirement of calling a `target_feature` function.
            #[allow(unsafe_code)]
            return unsafe { with_avx2_fma(f) };
        }
    }
    f(Fma(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1)
            .collect()
    }

    #[test]
    fn reductions_match_the_sequential_ones() {
        for n in [0, 1, 7, 8, 9, 31, 100] {
            let v = values(n);
            let w: Vec<f32> = v.iter().map(|x| x * 0.5 + 1.0).collect();
            let seq_sum: f32 = v.iter().sum();
            let seq_dot: f32 = v.iter().zip(&w).map(|(a, b)| a * b).sum();
            let seq_max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(
                (sum(&v) - seq_sum).abs() <= 1e-4 * (1.0 + seq_sum.abs()),
                "{n}"
            );
            assert!(
                (dot(&v, &w, Fma(false)) - seq_dot).abs() <= 1e-4 * (1.0 + seq_dot.abs()),
                "{n}"
            );
            assert_eq!(max(&v), seq_max, "{n}");
            assert_eq!(fast(|_| sum(&v)), sum(&v), "{n}");
            let fused = fast(|fma| dot(&v, &w, fma));
            assert!(
                (fused - seq_dot).abs() <= 1e-4 * (1.0 + seq_dot.abs()),
                "{n}"
            );
        }
        let mut v = values(20);
        v[3] = f32::NAN;
        assert_eq!(max(&v[..0]), f32::NEG_INFINITY);
        v[17] = 99.0;
        assert_eq!(max(&v), 99.0);
    }

    /// `out[i][j] = sum_l a[i][l] b[l][j]`, by the index formula.
    fn naive(a: &[f32], b: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * n];
        for i in 0..rows {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn small_products_match_the_index_formula() {
        for (rows, k, n) in [
            (5, 3, 37),
            (7, 24, 76),
            (3, 16, 8),
            (4, 8, 16),
            (13, 9, 25),
            (8, 24, 4),
            (2, 1, 1),
            (3, 0, 5),
        ] {
            let a = values(rows * k);
            let b: Vec<f32> = values(k * n + 3)[3..].to_vec();
            let want = naive(&a, &b, rows, k, n);
            let close = |got: &[f32], want: &[f32]| {
                got.iter()
                    .zip(want)
                    .all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs()))
            };
            let mut out = vec![f32::NAN; rows * n];
            fast(|fma| gemm_nn(&a, &b, &mut out, k, n, fma));
            assert!(close(&out, &want), "nn {rows}x{k}x{n}");
            let mut plain = vec![f32::NAN; rows * n];
            gemm_nn(&a, &b, &mut plain, k, n, Fma(false));
            assert!(close(&plain, &want), "nn {rows}x{k}x{n} without FMA");
            // a^T b with a^T = [k, rows] given as a [rows', k'] = [k, rows]
            let at = transpose(&a, rows, k);
            let mut out_tn = vec![f32::NAN; rows * n];
            gemm_tn(&at, &b, &mut out_tn, rows, n, Fma(false));
            assert!(close(&out_tn, &want), "tn {rows}x{k}x{n}");
            assert_eq!(transpose(&at, k, rows), a);
        }
    }
}
