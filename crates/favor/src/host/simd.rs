//! What the kernels need to vectorise: reductions with eight independent
//! accumulators (a float sum or maximum over one accumulator is a chain
//! the compiler must keep in order, one element per step), and code paths
//! compiled for AVX2 and FMA, taken where the CPU has them.
//!
//! The build targets baseline x86-64 (SSE2: four lanes, no fused
//! multiply-add), so that the binaries run on any x86-64 CPU; [`fast`] runs
//! a kernel's body compiled again with AVX-512 (sixteen lanes) or with AVX2
//! and FMA (eight lanes), whichever the CPU reports at run time.

use std::mem::MaybeUninit;

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

/// `sum((v - m)^2)`, eight elements at a time.
#[inline(always)]
pub(crate) fn sum_sq_dev(v: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|x| (x - m) * (x - m)).sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += (x - m) * (x - m);
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

/// An output element the products write: `f32`, or a not yet initialised
/// one ([`MaybeUninit`]), which the kernels' outputs are before their first
/// write (no zeroing pass).
pub(crate) trait Store {
    /// Sets the element to `v`.
    fn store(&mut self, v: f32);
}

impl Store for f32 {
    #[inline(always)]
    fn store(&mut self, v: f32) {
        *self = v;
    }
}

impl Store for MaybeUninit<f32> {
    #[inline(always)]
    fn store(&mut self, v: f32) {
        self.write(v);
    }
}

/// [`gemm_nn`] into a not yet initialised `out`, which it then returns as
/// written.
///
/// # Panics
/// If `out` does not have `a.len() / k * n` elements (then some would stay
/// unwritten).
#[inline(always)]
pub(crate) fn gemm_nn_init<'a>(
    a: &[f32],
    b: &[f32],
    out: &'a mut [MaybeUninit<f32>],
    k: usize,
    n: usize,
    fma: Fma,
) -> &'a mut [f32] {
    let covered = if n == 0 {
        out.is_empty()
    } else {
        k == 0 || out.len() == a.len() / k * n
    };
    assert!(
        covered,
        "gemm_nn_init: an output of {} elements for {} x {} by {} x {}",
        out.len(),
        a.len() / k.max(1),
        k,
        k,
        n
    );
    gemm_nn(a, b, out, k, n, fma);
    // SAFETY: `gemm_nn` wrote every element: none where `n == 0` (`out`
    // is empty then, checked above), all of them where `k == 0`, and
    // otherwise each of the `a.len() / k` rows of `n` (the length checked
    // above).
    #[allow(unsafe_code)]
    unsafe {
        init_mut(out)
    }
}

/// `s` as the `f32`s it holds.
///
/// # Safety
/// Every element of `s` has been written.
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) unsafe fn init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and by the
    // caller's contract every element is initialised.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `out = a b`: `a [rows, k]`, `b [k, n]`, `out [rows, n]`, row-major.
///
/// For the products of one `(sample, head)` slice, whose inner or outer
/// extents are the head's few channels or features: four output rows at a
/// time are built in blocks of 16, 8, 4 and 1 columns held in registers across
/// `k`, with no packing of the operands (matrixmultiply's packing took more time
/// than its kernel on these shapes).
///
/// Every element of `out` is written (it need not hold values before:
/// [`gemm_nn_init`]), when `out` has `a.len() / k * n` elements.
#[inline(always)]
pub(crate) fn gemm_nn<T: Store>(a: &[f32], b: &[f32], out: &mut [T], k: usize, n: usize, fma: Fma) {
    if n == 0 {
        return;
    }
    if k == 0 {
        out.iter_mut().for_each(|o| o.store(0.0));
        return;
    }
    debug_assert_eq!(b.len(), k * n);
    let tail = Tail::of_rows(b, k, n, fma);
    // four rows at a time: each row of `b` loaded once serves four output
    // rows (the loads, not the multiplies, bound one row at a time)
    let mut rows = a.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * n));
    for (a4, o4) in &mut rows {
        rows_of::<4, T>(a4, b, o4, (k, n), &tail, fma);
    }
    let rest = a.len() / k % 4;
    let (a_done, out_done) = (a.len() - rest * k, out.len() - rest * n);
    let (a, out) = (&a[a_done..], &mut out[out_done..]);
    for (arow, orow) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        rows_of::<1, T>(arow, b, orow, (k, n), &tail, fma);
    }
}

/// Columns past the last full block of 16 (or 32) that one more block of
/// 16 computes from a copy of them padded with zeros: a `k x 16` copy per
/// product. Block by block at widths 8, 4 and 1 instead, the 14 columns
/// left of 110 features (the seed's heads) cost as much as 64 in full
/// blocks: the one-column blocks run one scalar multiply-add per row and
/// step of `k`, and a 16-column block runs one vector one.
struct Tail {
    /// The first column of the tail.
    col: usize,
    /// `k x 16`: the tail's columns, then zeros; empty for no tail.
    padded: Vec<f32>,
}

/// The width of [`Tail`]'s padded block.
const TAIL: usize = 16;

impl Tail {
    /// The tail of `b [k, n]` (row-major), on the vector paths; none on the
    /// baseline path (16 columns are four SSE vectors there), where the
    /// blocks of 8, 4 and 1 take the columns left.
    #[inline(always)]
    fn of_rows(b: &[f32], k: usize, n: usize, fma: Fma) -> Tail {
        let full = if fma.wide { n / 32 * 32 } else { n / 16 * 16 };
        let col = if n - full >= TAIL { full + TAIL } else { full };
        if !fma.fused || col == n {
            return Tail {
                col: n,
                padded: Vec::new(),
            };
        }
        let mut padded = vec![0.0f32; k * TAIL];
        for (dst, row) in padded.chunks_exact_mut(TAIL).zip(b.chunks_exact(n)) {
            dst[..n - col].copy_from_slice(&row[col..]);
        }
        Tail { col, padded }
    }
}

/// All `n` columns of `R` consecutive output rows of [`gemm_nn`], in
/// [`block`]s of 16, 8, 4 and 1 columns (and 32 first on the AVX-512 path:
/// four rows of 16 columns are four 512-bit sums, too few chains to keep
/// both FMA units busy; 32 columns are eight).
#[inline(always)]
fn rows_of<const R: usize, T: Store>(
    a: &[f32],
    b: &[f32],
    out: &mut [T],
    (k, n): (usize, usize),
    tail: &Tail,
    fma: Fma,
) {
    let mut col = 0;
    if fma.wide {
        while col + 32 <= n {
            block::<R, 32, T>(a, b, out, (k, n, col), fma);
            col += 32;
        }
    }
    while col + 16 <= n {
        block::<R, 16, T>(a, b, out, (k, n, col), fma);
        col += 16;
    }
    if col == tail.col && col < n {
        // the padded tail: all 16 columns summed, the real ones stored
        let acc = sums::<R, TAIL>(a, &tail.padded, (k, TAIL, 0), fma);
        for (r, acc) in acc.iter().enumerate() {
            for (o, &v) in out[r * n + col..(r + 1) * n].iter_mut().zip(acc) {
                o.store(v);
            }
        }
        return;
    }
    if col + 8 <= n {
        block::<R, 8, T>(a, b, out, (k, n, col), fma);
        col += 8;
    }
    if col + 4 <= n {
        block::<R, 4, T>(a, b, out, (k, n, col), fma);
        col += 4;
    }
    while col < n {
        block::<R, 1, T>(a, b, out, (k, n, col), fma);
        col += 1;
    }
}

/// Columns `col..col + W` of `R` consecutive output rows of [`gemm_nn`]
/// (`a` holds their `R` rows of `k`, `out` their `R` rows of `n`), the
/// `R x W` sums held in registers across `k`.
#[inline(always)]
fn block<const R: usize, const W: usize, T: Store>(
    a: &[f32],
    b: &[f32],
    out: &mut [T],
    (k, n, col): (usize, usize, usize),
    fma: Fma,
) {
    let acc = sums::<R, W>(a, b, (k, n, col), fma);
    for (r, acc) in acc.iter().enumerate() {
        for (o, &v) in out[r * n + col..r * n + col + W].iter_mut().zip(acc) {
            o.store(v);
        }
    }
}

/// The `R x W` sums of [`block`], held in registers across `k`.
#[inline(always)]
fn sums<const R: usize, const W: usize>(
    a: &[f32],
    b: &[f32],
    (k, n, col): (usize, usize, usize),
    fma: Fma,
) -> [[f32; W]; R] {
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
    acc
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
    let tail = Tail::of_rows(a, rows, m, fma);
    let mut col = 0;
    while col < m {
        if col == tail.col {
            // the padded tail's 16 columns, the real ones copied into `ct`
            let mut part = vec![0.0f32; e * TAIL];
            panel::<TAIL>(&bt, &tail.padded, &mut part, (rows, TAIL, 0), fma);
            for (dst, src) in ct.chunks_exact_mut(m).zip(part.chunks_exact(TAIL)) {
                dst[col..].copy_from_slice(&src[..m - col]);
            }
            break;
        }
        col += match m - col {
            32.. if fma.wide => panel::<32>(&bt, a, &mut ct, (rows, m, col), fma),
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
        block::<4, W, f32>(a4, b, o4, (k, n, col), fma);
    }
    let rest = a.len() / k % 4;
    let (a_done, out_done) = (a.len() - rest * k, out.len() - rest * n);
    for (arow, orow) in a[a_done..]
        .chunks_exact(k)
        .zip(out[out_done..].chunks_exact_mut(n))
    {
        block::<1, W, f32>(arow, b, orow, (k, n, col), fma);
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

/// The vector extensions this CPU runs (checked once): 2 for AVX-512F,
/// 1 for AVX2 and FMA, 0 for neither.
#[cfg(target_arch = "x86_64")]
fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if avx2 && std::is_x86_feature_detected!("avx512f") {
            2
        } else {
            u8::from(avx2)
        }
    })
}

/// What a code path of [`fast`] has: whether it multiplies and adds in one
/// rounding ([`Fma::mul_add`]: only inside the AVX2 and AVX-512 paths, where
/// `f32::mul_add` is one instruction; elsewhere it is a library call, and
/// the compiler never fuses `a * b + c` by itself), and whether its
/// registers are 512 bits wide (the products then hold 32 columns in
/// registers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fma {
    fused: bool,
    wide: bool,
}

impl Fma {
    /// The baseline path: no FMA, 128-bit registers.
    pub(crate) const PLAIN: Fma = Fma {
        fused: false,
        wide: false,
    };

    /// `a * b + c`, fused where the path has FMA.
    #[inline(always)]
    pub(crate) fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        if self.fused {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

/// `f(fma)` compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2_fma<R>(f: impl FnOnce(Fma) -> R) -> R {
    f(Fma {
        fused: true,
        wide: false,
    })
}

/// `f(fma)` compiled with AVX-512F (and AVX2, FMA) enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<R>(f: impl FnOnce(Fma) -> R) -> R {
    f(Fma {
        fused: true,
        wide: true,
    })
}

/// `f(fma)`, compiled with AVX-512 or else AVX2 and FMA enabled where the
/// CPU has them (the closure and what it inlines: mark the closure
/// `#[inline(always)]`, and write hot loops as `for` loops: an iterator's
/// `for_each` over a big body may stay out of line, compiled for the
/// baseline), as the baseline build otherwise; `fma` tells the body which
/// (a constant in each copy, so its branches fold away).
#[inline(always)]
pub(crate) fn fast<R>(f: impl FnOnce(Fma) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            // SAFETY: the CPU reports AVX-512F, AVX2 and FMA (checked in
            // `level`), the only requirement of calling this
            // `target_feature` function.
            #[allow(unsafe_code)]
            2 => return unsafe { with_avx512(f) },
            // SAFETY: the CPU reports AVX2 and FMA (checked in `level`).
            #[allow(unsafe_code)]
            1 => return unsafe { with_avx2_fma(f) },
            _ => {}
        }
    }
    f(Fma::PLAIN)
}

/// Runs `f` on every path of [`fast`] this CPU has, baseline first.
#[cfg(test)]
pub(crate) fn each_path(mut f: impl FnMut(Fma)) {
    f(Fma::PLAIN);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `fast`.
        #[allow(unsafe_code)]
        if level() >= 1 {
            unsafe { with_avx2_fma(&mut f) }
        }
        // SAFETY: as in `fast`.
        #[allow(unsafe_code)]
        if level() >= 2 {
            unsafe { with_avx512(&mut f) }
        }
    }
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
            let seq_dev: f32 = v.iter().map(|x| (x - 0.3) * (x - 0.3)).sum();
            assert!(
                (sum_sq_dev(&v, 0.3) - seq_dev).abs() <= 1e-4 * (1.0 + seq_dev),
                "{n}"
            );
            assert!(
                (sum(&v) - seq_sum).abs() <= 1e-4 * (1.0 + seq_sum.abs()),
                "{n}"
            );
            assert!(
                (dot(&v, &w, Fma::PLAIN) - seq_dot).abs() <= 1e-4 * (1.0 + seq_dot.abs()),
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
            (9, 32, 110),
            (130, 33, 65),
            (6, 110, 32),
        ] {
            let a = values(rows * k);
            let b: Vec<f32> = values(k * n + 3)[3..].to_vec();
            let want = naive(&a, &b, rows, k, n);
            let close = |got: &[f32], want: &[f32]| {
                got.iter()
                    .zip(want)
                    .all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs()))
            };
            each_path(|fma| {
                let mut out = vec![f32::NAN; rows * n];
                gemm_nn(&a, &b, &mut out, k, n, fma);
                assert!(close(&out, &want), "nn {rows}x{k}x{n} {fma:?}");
                let at = transpose(&a, rows, k);
                let mut out_tn = vec![f32::NAN; rows * n];
                gemm_tn(&at, &b, &mut out_tn, rows, n, fma);
                assert!(close(&out_tn, &want), "tn {rows}x{k}x{n} {fma:?}");
            });
            let mut plain = vec![f32::NAN; rows * n];
            gemm_nn(&a, &b, &mut plain, k, n, Fma::PLAIN);
            assert!(close(&plain, &want), "nn {rows}x{k}x{n} without FMA");
            // a^T b with a^T = [k, rows] given as a [rows', k'] = [k, rows]
            let at = transpose(&a, rows, k);
            let mut out_tn = vec![f32::NAN; rows * n];
            gemm_tn(&at, &b, &mut out_tn, rows, n, Fma::PLAIN);
            assert!(close(&out_tn, &want), "tn {rows}x{k}x{n}");
            assert_eq!(transpose(&at, k, rows), a);
        }
    }
}
