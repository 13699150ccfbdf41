//! Keeps freed tensor memory in the process instead of handing it back to
//! the kernel after every operation.
//!
//! Burn's CPU backends allocate a fresh buffer for almost every tensor op,
//! many of them megabytes (a `[16, 1025, 512]` feed-forward activation is
//! 34 MB). glibc's `malloc` serves such sizes with `mmap` and returns them
//! with `munmap` (or trims the heap) on `free`, so every op pays page faults
//! and zeroing of fresh pages: about a sixth of a CPU train step here, in
//! the kernel. [`keep_freed_memory`] turns both off (`M_MMAP_MAX = 0`,
//! `M_TRIM_THRESHOLD` = the largest value), the same as running with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295`.
//!
//! Measured with `examples/bench_step` (`Performer`, dim 128, depth 4,
//! batch 16, ndarray, medians of 3 steps on a 2-core CPU): inference 1.60 ->
//! 1.32 s, train step 4.2 -> 3.6 s; peak memory within 5%.
//!
//! The bundled binaries, examples and benches call it first thing; a program
//! of one's own may call it too. It changes only how much memory the process
//! keeps between allocations, never a result.

/// Asks glibc's `malloc` to keep freed memory for reuse (see the module
/// docs). Returns whether the allocator took the settings: `false` on other
/// C libraries and systems, where it does nothing.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's tuning parameters; it takes
        // two integers, touches no memory of ours, and is thread-safe (it
        // takes the arena locks).
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        };
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
