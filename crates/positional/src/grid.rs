//! Pixel grids: positions, frequencies and the tensors built from them on
//! the host.
//!
//! Tokens are the class token (index 0) followed by the `height x width`
//! pixels in row-major order: pixel `(y, x)` is token `1 + y * width + x`.

use burn::prelude::*;

/// The two position axes, in the order every tensor here uses them.
pub const AXES: usize = 2;

/// `count` frequencies `1 / T`, timescales `T` geometric from 1 to
/// `max_timescale` (`max_timescale^(-k / (count - 1))`, computed in `f64`);
/// `[1.0]` for `count == 1`. The default maximum, 64, is about twice the side
/// of a 32x32 image, so the slowest sinusoid does not wrap within it.
pub fn inverse_timescales(count: usize, max_timescale: f64) -> Vec<f32> {
    if count == 1 {
        return vec![1.0];
    }
    (0..count)
        .map(|k| max_timescale.powf(-(k as f64) / (count - 1) as f64) as f32)
        .collect()
}

/// `(y, x)` of every pixel, row-major, as `[height * width, 2]`.
pub fn grid_positions<B: Backend>(height: usize, width: usize, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..height)
        .flat_map(|y| (0..width).flat_map(move |x| [y as f32, x as f32]))
        .collect();
    Tensor::from_data(TensorData::new(v, [height * width, AXES]), device)
}

/// Prepends a zero row (the class token's position features) along dim 0.
pub fn with_class_token<B: Backend, const D: usize>(pixels: Tensor<B, D>) -> Tensor<B, D> {
    let mut shape = pixels.dims();
    shape[0] = 1;
    let zeros = Tensor::zeros(shape, &pixels.device());
    Tensor::cat(vec![zeros, pixels], 0)
}
