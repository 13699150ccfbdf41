//! Datasets as model inputs: images at the model's size, with labels.

use std::sync::Arc;

use crate::error::Result;
use crate::names::{DatasetName, Split};
use crate::resize::Resizer;
use crate::sources::{RawImages, read_raw};
use std::path::Path;

/// Images of one split at the model's input size, as bytes, with labels.
///
/// MNIST and FashionMNIST are resized from 28x28 to 32x32 exactly as the
/// original code did (PIL's antialiased bilinear filter, [`crate::resize`]);
/// CIFAR-10 is kept at 32x32. The bytes are what the `lookup` embedding
/// sees; [`Normalization`] turns them into the float input of the other
/// embeddings. Cloning is cheap (the storage is shared), and
/// [`ImageSet::subset`] makes views.
#[derive(Debug, Clone)]
pub struct ImageSet {
    dataset: DatasetName,
    channels: usize,
    height: usize,
    width: usize,
    pixels: Arc<[u8]>,
    labels: Arc<[u8]>,
    /// Which of the stored images this set holds, in order (`None`: all).
    indices: Option<Arc<[u32]>>,
}

impl ImageSet {
    /// Reads one split of `dataset` from the data folder `root` and brings
    /// it to the model's size.
    pub fn load(root: &Path, dataset: DatasetName, split: Split) -> Result<Self> {
        Ok(Self::from_raw(dataset, read_raw(root, dataset, split)?))
    }

    /// Brings raw images of `dataset` to the model's size
    /// ([`DatasetName::input_side`]).
    pub fn from_raw(dataset: DatasetName, raw: RawImages) -> Self {
        let side = dataset.input_side();
        let pixels: Vec<u8> = if raw.height == side && raw.width == side {
            raw.pixels
        } else {
            let resizer = Resizer::new(raw.height, raw.width, side, side);
            raw.pixels
                .chunks_exact(raw.height * raw.width)
                .flat_map(|plane| resizer.resize(plane))
                .collect()
        };
        ImageSet::new(dataset, raw.channels, side, side, pixels, raw.labels)
    }

    /// A set from images already at their final size, `(N, C, H, W)` bytes.
    ///
    /// # Panics
    /// If `pixels` and `labels` do not describe the same number of images.
    pub fn new(
        dataset: DatasetName,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Self {
        assert_eq!(
            pixels.len(),
            labels.len() * channels * height * width,
            "pixels do not match labels and shape"
        );
        ImageSet {
            dataset,
            channels,
            height,
            width,
            pixels: pixels.into(),
            labels: labels.into(),
            indices: None,
        }
    }

    /// The dataset the images come from.
    pub fn dataset(&self) -> DatasetName {
        self.dataset
    }

    /// `(channels, height, width)` of one image.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match &self.indices {
            Some(ix) => ix.len(),
            None => self.labels.len(),
        }
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn stored(&self, i: usize) -> usize {
        match &self.indices {
            Some(ix) => ix[i] as usize,
            None => i,
        }
    }

    /// The `i`-th image, `C * H * W` bytes.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.channels * self.height * self.width;
        let s = self.stored(i);
        &self.pixels[s * n..(s + 1) * n]
    }

    /// The `i`-th label.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[self.stored(i)]
    }

    /// All labels, in order.
    pub fn labels(&self) -> Vec<u8> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// A view of the images at `indices` (positions in this set), sharing
    /// the storage.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let ix: Vec<u32> = indices
            .iter()
            .map(|&i| {
                assert!(
                    i < self.len(),
                    "index {i} out of range for {} images",
                    self.len()
                );
                self.stored(i) as u32
            })
            .collect();
        ImageSet {
            indices: Some(ix.into()),
            ..self.clone()
        }
    }

    /// The first `n` images (all if there are fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// All pixels in order, `(N, C, H, W)` bytes (a copy for views).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.indices {
            None => self.pixels.to_vec(),
            Some(_) => (0..self.len())
                .flat_map(|i| self.image(i).iter().copied())
                .collect(),
        }
    }

    /// A copy with every image transformed by `f(image, label)`.
    pub fn map_images(&self, mut f: impl FnMut(&mut [u8])) -> ImageSet {
        let n = self.channels * self.height * self.width;
        let mut pixels = self.to_bytes();
        for img in pixels.chunks_exact_mut(n) {
            f(img);
        }
        ImageSet::new(
            self.dataset,
            self.channels,
            self.height,
            self.width,
            pixels,
            self.labels(),
        )
    }
}

/// How bytes become the float input of the models: `x / 255`, then, for
/// CIFAR-10, `(x - mean) / std` per channel, all in `f32` as torchvision's
/// `ToTensor` and `Normalize` compute it.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Per-channel mean subtracted after `/ 255` (empty: none).
    pub mean: Vec<f32>,
    /// Per-channel divisor after the mean (empty: none).
    pub std: Vec<f32>,
}

impl Normalization {
    /// The reference's normalisation of `dataset`.
    pub fn of(dataset: DatasetName) -> Self {
        match dataset {
            DatasetName::Cifar10 => Normalization {
                mean: vec![0.4914, 0.4822, 0.4465],
                std: vec![0.2470, 0.2435, 0.2616],
            },
            _ => Normalization {
                mean: vec![],
                std: vec![],
            },
        }
    }

    /// The float value of byte `v` in channel `c`.
    pub fn apply(&self, v: u8, c: usize) -> f32 {
        let x = v as f32 / 255.0;
        match (self.mean.get(c), self.std.get(c)) {
            (Some(m), Some(s)) => (x - m) / s,
            _ => x,
        }
    }

    /// A 256-entry table per channel: `table[c][v] = apply(v, c)`.
    pub fn table(&self, channels: usize) -> Vec<[f32; 256]> {
        (0..channels)
            .map(|c| {
                let mut t = [0f32; 256];
                for (v, slot) in t.iter_mut().enumerate() {
                    *slot = self.apply(v as u8, c);
                }
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        ImageSet::new(
            DatasetName::Mnist,
            1,
            2,
            2,
            (0..12).collect(),
            vec![3, 1, 4],
        )
    }

    #[test]
    fn views_share_and_index() {
        let s = tiny();
        let v = s.subset(&[2, 0]);
        assert_eq!(v.len(), 2);
        assert_eq!(v.image(0), &[8, 9, 10, 11]);
        assert_eq!(v.label(1), 3);
        let vv = v.subset(&[1]);
        assert_eq!(vv.image(0), &[0, 1, 2, 3]);
        assert_eq!(vv.to_bytes(), vec![0, 1, 2, 3]);
        assert_eq!(s.take(10).len(), 3);
    }

    #[test]
    fn from_raw_resizes_mnist_only() {
        let raw = RawImages {
            len: 1,
            channels: 1,
            height: 28,
            width: 28,
            pixels: vec![7; 784],
            labels: vec![1],
        };
        let s = ImageSet::from_raw(DatasetName::Mnist, raw);
        assert_eq!(s.shape(), (1, 32, 32));
        assert!(s.image(0).iter().all(|&v| v == 7));
        let raw = RawImages {
            len: 1,
            channels: 3,
            height: 32,
            width: 32,
            pixels: (0..3072).map(|i| i as u8).collect(),
            labels: vec![1],
        };
        let s = ImageSet::from_raw(DatasetName::Cifar10, raw.clone());
        assert_eq!(s.to_bytes(), raw.pixels);
    }

    #[test]
    fn normalisation_is_torchvision_s() {
        let n = Normalization::of(DatasetName::Mnist);
        assert_eq!(n.apply(255, 0), 1.0);
        assert_eq!(n.apply(51, 0), 0.2);
        let c = Normalization::of(DatasetName::Cifar10);
        assert_eq!(c.apply(0, 1), (0.0f32 - 0.4822) / 0.2435);
        assert_eq!(c.table(3)[2][200], (200.0f32 / 255.0 - 0.4465) / 0.2616);
    }
}
