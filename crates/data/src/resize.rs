//! PIL's antialiased bilinear resize of 8-bit images, bit for bit.
//!
//! The original code (and the PyTorch reference) resized MNIST and
//! FashionMNIST from 28x28 to 32x32 with torchvision's `Resize(32)`, which is
//! Pillow's `Image.resize(..., BILINEAR)` on the uint8 image. Pillow computes
//! it in two passes, horizontal then vertical, each rounding to uint8; the
//! weights of each output pixel are a triangle filter (support 1, widened by
//! the scale when shrinking), normalised to sum 1 in `f64`, then turned into
//! fixed-point integers of 22 fractional bits. This module follows
//! `libImaging/Resample.c` step for step, so that the pixels, and the
//! checksums of the resized datasets, equal the reference's.

/// Fractional bits of Pillow's fixed-point weights (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel source window and fixed-point weights along one axis.
#[derive(Debug, Clone)]
struct Coefficients {
    /// `(first source index, count)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index.
    weights: Vec<i32>,
    ksize: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the
/// whole input range (`in0 = 0`, `in1 = in_size`).
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        bounds,
        weights,
        ksize,
    }
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes one channel, `src` of `(in_h, in_w)` into `(out_h, out_w)`, as
/// `PIL.Image.resize((out_w, out_h), Image.BILINEAR)` does on a mode `L`
/// image.
///
/// # Panics
/// If `src.len() != in_h * in_w` or a size is zero.
pub fn resize_bilinear_u8(
    src: &[u8],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), in_h * in_w, "image does not match its size");
    assert!(
        in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0,
        "empty image"
    );
    Resizer::new(in_h, in_w, out_h, out_w).resize(src)
}

/// A resize of one fixed size to another, with its weights computed once.
#[derive(Debug, Clone)]
pub struct Resizer {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    horiz: Option<Coefficients>,
    vert: Option<Coefficients>,
}

impl Resizer {
    /// Weights for resizing `(in_h, in_w)` images to `(out_h, out_w)`.
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Self {
        Resizer {
            in_h,
            in_w,
            out_h,
            out_w,
            horiz: (in_w != out_w).then(|| coefficients(in_w, out_w)),
            vert: (in_h != out_h).then(|| coefficients(in_h, out_h)),
        }
    }

    /// Resizes one channel of `in_h * in_w` bytes.
    ///
    /// # Panics
    /// If `src` has the wrong length.
    pub fn resize(&self, src: &[u8]) -> Vec<u8> {
        assert_eq!(
            src.len(),
            self.in_h * self.in_w,
            "image does not match its size"
        );
        let half = 1i32 << (PRECISION_BITS - 1);
        // Horizontal pass, over the source rows the vertical pass will read
        // (Pillow's ybox_first..ybox_last).
        let (row0, rows) = match &self.vert {
            Some(v) => {
                let first = v.bounds[0].0;
                let (lb, lc) = v.bounds[self.out_h - 1];
                (first, lb + lc - first)
            }
            None => (0, self.in_h),
        };
        let temp: Vec<u8> = match &self.horiz {
            Some(h) => {
                let mut t = vec![0u8; rows * self.out_w];
                for y in 0..rows {
                    let line = &src[(y + row0) * self.in_w..(y + row0 + 1) * self.in_w];
                    for (xx, &(xmin, count)) in h.bounds.iter().enumerate() {
                        let k = &h.weights[xx * h.ksize..xx * h.ksize + count];
                        let mut ss = half;
                        for (x, &w) in k.iter().enumerate() {
                            ss += line[xmin + x] as i32 * w;
                        }
                        t[y * self.out_w + xx] = clip8(ss);
                    }
                }
                t
            }
            None => src[row0 * self.in_w..(row0 + rows) * self.in_w].to_vec(),
        };
        match &self.vert {
            Some(v) => {
                let mut out = vec![0u8; self.out_h * self.out_w];
                for (yy, &(ymin, count)) in v.bounds.iter().enumerate() {
                    let k = &v.weights[yy * v.ksize..yy * v.ksize + count];
                    let ymin = ymin - row0;
                    for xx in 0..self.out_w {
                        let mut ss = half;
                        for (y, &w) in k.iter().enumerate() {
                            ss += temp[(ymin + y) * self.out_w + xx] as i32 * w;
                        }
                        out[yy * self.out_w + xx] = clip8(ss);
                    }
                }
                out
            }
            None => temp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant() {
        for v in [0u8, 1, 128, 255] {
            let out = resize_bilinear_u8(&[v; 28 * 28], 28, 28, 32, 32);
            assert!(out.iter().all(|&o| o == v), "{v}");
        }
    }

    #[test]
    fn same_size_is_identity() {
        let img: Vec<u8> = (0..=255).cycle().take(30 * 20).collect();
        assert_eq!(resize_bilinear_u8(&img, 30, 20, 30, 20), img);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(28, 32), (32, 28), (5, 3), (3, 7)] {
            let c = coefficients(i, o);
            for xx in 0..o {
                let s: i32 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    /// Expected values printed by Pillow 13.0 (`pip install pillow numpy`):
    /// `Image.fromarray(a).resize((w, h), Image.BILINEAR)` with
    /// `a = np.arange(9, dtype=np.uint8).reshape(3, 3) * 30` (upscale) and
    /// `b = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)`
    /// to 9 rows by 3 columns (shrinking one axis, stretching the other).
    #[test]
    fn matches_pillow() {
        let a: Vec<u8> = (0..9).map(|v| v * 30).collect();
        assert_eq!(
            resize_bilinear_u8(&a, 3, 3, 4, 4),
            [
                0, 19, 41, 60, 56, 75, 97, 116, 124, 143, 165, 184, 180, 199, 221, 240
            ]
        );
        let b = [
            95, 130, 194, 217, 207, 235, 15, 163, 33, 215, 217, 130, 248, 189, 16, 69, 184, 232,
            205, 78, 169, 61, 125, 10, 29, 240, 66, 19, 182, 39, 59, 4, 59, 81, 222,
        ];
        assert_eq!(
            resize_bilinear_u8(&b, 5, 7, 9, 3),
            [
                131, 205, 150, 127, 199, 167, 119, 189, 196, 99, 191, 174, 75, 196, 138, 77, 133,
                109, 80, 77, 91, 89, 51, 113, 94, 36, 127
            ]
        );
    }
}
