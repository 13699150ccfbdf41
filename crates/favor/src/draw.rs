//! Random projections drawn on the host: the same seed gives the same
//! matrix on every backend and platform.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Performer's default number of random features for head dimension `d`:
/// `int(d ln d)` (at least 1; 1 for `d <= 1`).
pub fn default_nb_features(d: usize) -> usize {
    if d > 1 {
        ((d as f64) * (d as f64).ln()).floor().max(1.0) as usize
    } else {
        1
    }
}

/// A seeded source of standard normal samples: ChaCha8 (stable across
/// platforms and versions of this crate's dependencies) and the Box-Muller
/// transform of two uniforms in `(0, 1]`.
#[derive(Debug, Clone)]
pub struct Gaussian {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

impl Gaussian {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Gaussian {
            rng: ChaCha8Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        // 53 random bits, shifted into (0, 1]
        ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// The next standard normal sample.
    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// A raw 64-bit draw (for deriving seeds).
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// An `(m, d)` matrix (row-major, `f64`) of stacked random orthogonal
/// `(d, d)` blocks whose rows are rescaled to the norms of independent
/// `d`-dimensional Gaussian vectors (chi(d) norms), as in Choromanski et al.
/// 2021, section 2.4: each row is marginally `N(0, I)`, rows within a block
/// are orthogonal.
///
/// Each block is `Q^T` for `Q` the orthogonal factor of a Gaussian `(d, d)`
/// matrix with a positive diagonal in `R` (Gram-Schmidt of its columns; Haar
/// distributed), like the reference's `torch.linalg.qr` with the sign fix.
pub fn orthogonal_gaussian(m: usize, d: usize, g: &mut Gaussian) -> Vec<f64> {
    let mut rows: Vec<f64> = Vec::with_capacity(m.div_ceil(d.max(1)) * d * d);
    while rows.len() < m * d {
        // columns of a Gaussian matrix, orthonormalised (modified Gram-Schmidt, twice for accuracy)
        let mut cols: Vec<Vec<f64>> = (0..d)
            .map(|_| (0..d).map(|_| g.sample()).collect())
            .collect();
        for j in 0..d {
            let (done, rest) = cols.split_at_mut(j);
            let col = &mut rest[0];
            for _ in 0..2 {
                for prev in done.iter() {
                    let dot: f64 = col.iter().zip(prev).map(|(a, b)| a * b).sum();
                    for (c, p) in col.iter_mut().zip(prev) {
                        *c -= dot * p;
                    }
                }
            }
            let norm = col.iter().map(|v| v * v).sum::<f64>().sqrt();
            for v in col.iter_mut() {
                *v /= norm;
            }
        }
        // rows of the block are the columns of Q
        for c in cols {
            rows.extend(c);
        }
    }
    rows.truncate(m * d);
    for r in rows.chunks_exact_mut(d) {
        let norm = (0..d).map(|_| g.sample().powi(2)).sum::<f64>().sqrt();
        for v in r {
            *v *= norm;
        }
    }
    rows
}

/// The projection of draw `index` for a feature map seeded with `seed`:
/// [`orthogonal_gaussian`] from the stream `seed + 1_000_003 * index`
/// (wrapping), as `f32`, `(m, d)` row-major.
pub fn draw_projection(m: usize, d: usize, seed: u64, index: u64) -> Vec<f32> {
    let mut g = Gaussian::new(seed.wrapping_add(1_000_003u64.wrapping_mul(index)));
    orthogonal_gaussian(m, d, &mut g)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_match_the_reference() {
        // int(d ln d): 8 -> 16, 24 -> 76, 32 -> 110, 48 -> 185
        assert_eq!(
            [1, 2, 8, 24, 32, 48].map(default_nb_features),
            [1, 1, 16, 76, 110, 185]
        );
    }

    #[test]
    fn blocks_are_orthogonal_with_chi_norms() {
        let (m, d) = (20, 8);
        let w = orthogonal_gaussian(m, d, &mut Gaussian::new(7));
        let row = |i: usize| &w[i * d..(i + 1) * d];
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for blk in 0..m.div_ceil(d) {
            for i in blk * d..((blk + 1) * d).min(m) {
                for j in blk * d..i {
                    assert!(dot(row(i), row(j)).abs() < 1e-10, "rows {i} {j}");
                }
            }
        }
        // chi(d) norms: positive, of the right size on average
        let mean_sq: f64 = (0..m).map(|i| dot(row(i), row(i))).sum::<f64>() / m as f64;
        assert!(mean_sq > 3.0 && mean_sq < 14.0, "{mean_sq}");
    }

    #[test]
    fn gaussian_moments() {
        let mut g = Gaussian::new(1);
        let xs: Vec<f64> = (0..200_000).map(|_| g.sample()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        // 5 standard errors
        assert!(mean.abs() < 5.0 / (xs.len() as f64).sqrt(), "{mean}");
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0 / xs.len() as f64).sqrt(),
            "{var}"
        );
    }

    #[test]
    fn draws_are_deterministic_and_distinct() {
        assert_eq!(draw_projection(16, 8, 5, 0), draw_projection(16, 8, 5, 0));
        assert_ne!(draw_projection(16, 8, 5, 0), draw_projection(16, 8, 5, 1));
        assert_ne!(draw_projection(16, 8, 5, 0), draw_projection(16, 8, 6, 0));
    }
}
