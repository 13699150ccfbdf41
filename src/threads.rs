//! One pool of threads for the CPU's GEMMs.
//!
//! burn-ndarray multiplies matrices with matrixmultiply, which has threads
//! of its own beside rayon's: on a dense layer's GEMM its threads work
//! while rayon's spin and yield on the same cores, and for the weight's
//! gradient (`x^T g`, a sum over all 16,400 rows of a batch into a
//! `128 x 384` output) it splits the small output and has its threads meet
//! after every block of the sum. [`gemm_on_rayon`] makes matrixmultiply
//! single-threaded (`MATMUL_NUM_THREADS=1`, read once at its first use), and
//! the fused dense layers of [`relperf_favor::host`] then split each GEMM
//! among rayon's threads themselves: blocks of rows, and the weight's
//! gradient as one partial sum per thread (measured on 2 cores, all the
//! GEMMs of a dim-128 layer: 89 -> 73 ms; the weight gradients 120 -> 200
//! GFLOP/s).
//!
//! The bundled binaries, examples and benches call it first thing. Other
//! GEMMs of burn-ndarray (its batched `matmul` runs the batch on rayon) are
//! then single-threaded each. It changes no result beyond the order of
//! the weight gradients' sums.

/// Sets `MATMUL_NUM_THREADS=1` unless it is set already; returns whether
/// matrixmultiply will then run single-threaded (the dense layers then
/// split their GEMMs on rayon's threads).
///
/// # Safety
/// Call it before any other thread of the process starts (first thing in
/// `main`): it changes the process's environment, which other threads may
/// be reading ([`std::env::set_var`]).
#[allow(unsafe_code)]
pub unsafe fn gemm_on_rayon() -> bool {
    match std::env::var("MATMUL_NUM_THREADS") {
        Ok(v) => v.trim() == "1",
        Err(_) => {
            // SAFETY: by the caller's contract no other thread runs yet.
            unsafe { std::env::set_var("MATMUL_NUM_THREADS", "1") };
            true
        }
    }
}
