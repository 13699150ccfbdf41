//! What the criterion benches share.

/// `criterion_main!`'s body with the GEMM threads set first
/// ([`relative_performer::threads::gemm_on_rayon`]), as the bundled
/// binaries run them.
pub fn main(benches: fn()) {
    // SAFETY: first thing in the bench's `main`: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        relative_performer::threads::gemm_on_rayon();
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
