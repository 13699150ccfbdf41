//! Burn `Dataset`s of images and a `Batcher` that builds one tensor a batch.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;

use crate::images::{ImageSet, Normalization};

/// One image and its label, as the data loader hands it to the batcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// `C * H * W` bytes.
    pub pixels: Vec<u8>,
    /// Class, 0..9.
    pub label: u8,
}

impl Dataset<ImageItem> for ImageSet {
    fn get(&self, index: usize) -> Option<ImageItem> {
        (index < ImageSet::len(self)).then(|| ImageItem {
            pixels: self.image(index).to_vec(),
            label: self.label(index),
        })
    }

    fn len(&self) -> usize {
        ImageSet::len(self)
    }
}

/// A batch of images on a device.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Normalised images, `[batch, channels, height, width]`.
    pub images: Tensor<B, 4>,
    /// The same images as integer bytes 0..255 (for the `lookup`
    /// embedding), `[batch, channels, height, width]`; `None` unless the
    /// batcher was asked for them.
    pub pixels: Option<Tensor<B, 4, Int>>,
    /// Classes, `[batch]`.
    pub targets: Tensor<B, 1, Int>,
}

/// Builds [`ImageBatch`]es: one `TensorData` per batch and tensor, not one
/// tensor per image (one upload per batch on a GPU).
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    shape: (usize, usize, usize),
    table: Vec<[f32; 256]>,
    with_pixels: bool,
}

impl ImageBatcher {
    /// A batcher for images of `shape = (C, H, W)` normalised by `norm`.
    pub fn new(shape: (usize, usize, usize), norm: &Normalization) -> Self {
        ImageBatcher {
            shape,
            table: norm.table(shape.0),
            with_pixels: false,
        }
    }

    /// A batcher for `set`, with its dataset's normalisation.
    pub fn for_set(set: &ImageSet) -> Self {
        Self::new(set.shape(), &Normalization::of(set.dataset()))
    }

    /// Also put the integer bytes in each batch (the `lookup` embedding).
    pub fn with_pixels(mut self, yes: bool) -> Self {
        self.with_pixels = yes;
        self
    }

    /// The normalised floats of `items`, `(N, C, H, W)` in C order.
    pub fn floats(&self, items: &[ImageItem]) -> Vec<f32> {
        let (c, h, w) = self.shape;
        let plane = h * w;
        let mut out = Vec::with_capacity(items.len() * c * plane);
        for item in items {
            assert_eq!(
                item.pixels.len(),
                c * plane,
                "image of the wrong size for this batcher"
            );
            for (ch, px) in item.pixels.chunks_exact(plane).enumerate() {
                let t = &self.table[ch];
                out.extend(px.iter().map(|&v| t[v as usize]));
            }
        }
        out
    }
}

impl<B: Backend> Batcher<B, ImageItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> ImageBatch<B> {
        let (c, h, w) = self.shape;
        let n = items.len();
        let images = Tensor::from_data(TensorData::new(self.floats(&items), [n, c, h, w]), device);
        let pixels = self.with_pixels.then(|| {
            let ints: Vec<i64> = items
                .iter()
                .flat_map(|it| it.pixels.iter().map(|&v| v as i64))
                .collect();
            Tensor::from_data(TensorData::new(ints, [n, c, h, w]), device)
        });
        let labels: Vec<i64> = items.iter().map(|it| it.label as i64).collect();
        let targets = Tensor::from_data(TensorData::new(labels, [n]), device);
        ImageBatch {
            images,
            pixels,
            targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::DatasetName;
    use burn::data::dataloader::DataLoaderBuilder;

    type B = burn_ndarray::NdArray;

    #[test]
    fn batches_hold_the_normalised_images_in_order() {
        let set = ImageSet::new(
            DatasetName::Mnist,
            1,
            2,
            2,
            vec![0, 51, 255, 0, 102, 0, 0, 0, 1, 2, 3, 4],
            vec![7, 1, 2],
        );
        let batcher = ImageBatcher::for_set(&set).with_pixels(true);
        let items: Vec<ImageItem> = (0..2).map(|i| set.get(i).unwrap()).collect();
        let b: ImageBatch<B> = batcher.batch(items, &Default::default());
        assert_eq!(b.images.dims(), [2, 1, 2, 2]);
        let v = b.images.into_data().to_vec::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.2, 1.0, 0.0, 0.4, 0.0, 0.0, 0.0]);
        assert_eq!(b.targets.into_data().to_vec::<i64>().unwrap(), vec![7, 1]);
        assert_eq!(
            b.pixels.unwrap().into_data().to_vec::<i64>().unwrap(),
            vec![0, 51, 255, 0, 102, 0, 0, 0]
        );
        assert!(Dataset::get(&set, 3).is_none());
    }

    #[test]
    fn a_data_loader_visits_every_image_once() {
        let n = 37;
        let set = ImageSet::new(
            DatasetName::Mnist,
            1,
            1,
            1,
            (0..n as u8).collect(),
            (0..n).map(|i| (i % 10) as u8).collect(),
        );
        let loader = DataLoaderBuilder::<B, _, _>::new(ImageBatcher::for_set(&set))
            .batch_size(8)
            .shuffle(3)
            .build(set);
        let mut seen: Vec<u8> = loader
            .iter()
            .flat_map(|b: ImageBatch<B>| b.images.into_data().to_vec::<f32>().unwrap())
            .map(|x| (x * 255.0).round() as u8)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n as u8).collect::<Vec<_>>());
    }
}
