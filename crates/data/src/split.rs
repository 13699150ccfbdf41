//! The train / validation split.
//!
//! The reference held out 5,000 of the 60,000 (or 50,000) training images
//! with `torch.randperm(n, Generator().manual_seed(42))`. Reproducing torch's
//! generator bit for bit is not needed (parity tests use the test split), so
//! this split is our own, documented and stable across platforms and
//! versions: a Fisher-Yates shuffle of `0..n` driven by ChaCha8 seeded with
//! `seed` (`rand_chacha::ChaCha8Rng::seed_from_u64`), where step `i` (from
//! `n - 1` down to 1) swaps `i` with `next_u64() % (i + 1)`. The last
//! `val_size` positions of the shuffled order are the validation set, the
//! first `n - val_size` the training set, each in shuffled order.

use rand::{RngCore, SeedableRng};

/// The reference's validation size.
pub const DEFAULT_VAL_SIZE: usize = 5000;
/// The reference's split seed.
pub const DEFAULT_SPLIT_SEED: u64 = 42;

/// The documented permutation of `0..n` for `seed`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// `(train, validation)` indices into `0..n`, disjoint and covering it.
///
/// # Panics
/// If `val_size > n`.
pub fn train_val_indices(n: usize, val_size: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    assert!(
        val_size <= n,
        "validation size {val_size} exceeds the {n} training images"
    );
    let mut p = permutation(n, seed);
    let val = p.split_off(n - val_size);
    (p, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_a_partition_and_stable() {
        let (tr, va) = train_val_indices(1000, 100, 42);
        assert_eq!((tr.len(), va.len()), (900, 100));
        let mut all = [tr.clone(), va.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(train_val_indices(1000, 100, 42), (tr.clone(), va));
        assert_ne!(train_val_indices(1000, 100, 43).0, tr);
    }

    /// Golden values: the split must not change between versions, or
    /// validation figures of old runs would no longer compare.
    #[test]
    fn golden_first_indices() {
        let (tr, va) = train_val_indices(60000, 5000, 42);
        assert_eq!(&tr[..5], GOLDEN_TRAIN);
        assert_eq!(&va[..5], GOLDEN_VAL);
    }
    const GOLDEN_TRAIN: &[usize] = &[53333, 31746, 50338, 50634, 17886];
    const GOLDEN_VAL: &[usize] = &[14669, 34532, 49300, 45562, 52532];
}
