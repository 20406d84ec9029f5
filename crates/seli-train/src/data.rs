//! Imbalanced training subsets and mini-batches.
//!
//! A subset applies a class-count profile to a dataset's training split: class c keeps
//! `counts[c]` of its images, drawn without replacement by a seeded shuffle (the same seed
//! gives the same images). Pixels are scaled to [0, 1] and normalized per channel with the
//! dataset's usual mean and standard deviation once, up front.

use burn::tensor::{Device, Int, Tensor, TensorData};
use seli_core::random::{rng_from_seed, shuffle};
use seli_io::dataset::{DatasetKind, ImageSet};

use crate::error::{Error, Result};

/// Draws `counts[c]` images of each class c of `set` (seeded). Returns the chosen indices,
/// grouped by class, increasing within a class.
///
/// # Errors
/// A number of counts other than the dataset's classes; a class asked for more images than
/// the split has (class, request and availability named).
pub fn subsample(set: &ImageSet, counts: &[u64], seed: u64) -> Result<Vec<usize>> {
    if counts.len() != set.classes {
        return Err(Error::Config(format!(
            "the profile has {} classes, the dataset {}",
            counts.len(),
            set.classes
        )));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); set.classes];
    for (i, &y) in set.labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    let mut rng = rng_from_seed(seed);
    let mut out = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
    for (c, (pool, &want)) in by_class.iter_mut().zip(counts).enumerate() {
        if want as usize > pool.len() {
            return Err(Error::Config(format!(
                "class {c} asks for {want} training images, the dataset has {}",
                pool.len()
            )));
        }
        shuffle(pool, &mut rng);
        let mut chosen = pool[..want as usize].to_vec();
        chosen.sort_unstable();
        out.extend(chosen);
    }
    Ok(out)
}

/// Normalized images ready for batching.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `n × channels × height × width` normalized values.
    pub x: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
}

impl Prepared {
    /// Scales and normalizes the images of `set` (all of them, or those at `indices`).
    pub fn new(set: &ImageSet, kind: DatasetKind, indices: Option<&[usize]>) -> Self {
        let (mean, std) = kind.normalization();
        let plane = set.height * set.width;
        let size = set.image_size();
        let all: Vec<usize>;
        let idx = match indices {
            Some(i) => i,
            None => {
                all = (0..set.len()).collect();
                &all
            }
        };
        let mut x = Vec::with_capacity(idx.len() * size);
        for &i in idx {
            for (j, &p) in set.image(i).iter().enumerate() {
                let ch = j / plane;
                x.push((f32::from(p) / 255.0 - mean[ch]) / std[ch]);
            }
        }
        Prepared {
            x,
            labels: idx.iter().map(|&i| set.labels[i]).collect(),
            shape: [set.channels, set.height, set.width],
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `rows`, one after the other (`[b, c, h, w]` row-major).
    pub fn rows(&self, rows: &[usize]) -> Vec<f32> {
        let size: usize = self.shape.iter().product();
        let mut x = Vec::with_capacity(rows.len() * size);
        for &r in rows {
            x.extend_from_slice(&self.x[r * size..(r + 1) * size]);
        }
        x
    }

    /// The images at `rows` as a `[b, c, h, w]` tensor and their labels.
    pub fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let x = self.rows(rows);
        let [c, h, w] = self.shape;
        let images = Tensor::from_data(TensorData::new(x, [rows.len(), c, h, w]), device);
        let y: Vec<i64> = rows.iter().map(|&r| i64::from(self.labels[r])).collect();
        let labels = Tensor::from_data(TensorData::new(y, [rows.len()]), device);
        (images, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> ImageSet {
        ImageSet {
            pixels: (0..12 * 4).map(|i| i as u8).collect(),
            labels: vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2],
            channels: 1,
            height: 2,
            width: 2,
            classes: 3,
        }
    }

    #[test]
    fn subsets_have_the_asked_counts_and_depend_only_on_the_seed() {
        let set = toy();
        let a = subsample(&set, &[4, 2, 1], 7).unwrap();
        assert_eq!(a.len(), 7);
        let counts = set.select(&a).counts();
        assert_eq!(counts, vec![4, 2, 1]);
        assert_eq!(a, subsample(&set, &[4, 2, 1], 7).unwrap());
        let others: Vec<_> = (0..20).map(|s| subsample(&set, &[4, 2, 1], s).unwrap()).collect();
        assert!(others.iter().any(|o| *o != a), "the seed changes the draw");
        let e = subsample(&set, &[5, 1, 1], 0).unwrap_err().to_string();
        assert!(e.contains("class 0 asks for 5") && e.contains("has 4"), "{e}");
        assert!(subsample(&set, &[1, 1], 0).unwrap_err().to_string().contains("2 classes"));
    }

    #[test]
    fn normalization_and_batches() {
        let set = toy();
        let p = Prepared::new(&set, DatasetKind::Mnist, Some(&[3, 1]));
        assert_eq!(p.labels, vec![0, 1]);
        let v = (12.0 / 255.0 - 0.1307) / 0.3081;
        assert!((p.x[0] - v).abs() < 1e-6);
        let dev = Device::flex();
        let (x, y) = p.batch(&[1, 0], &dev);
        assert_eq!(x.dims(), [2, 1, 2, 2]);
        assert_eq!(y.into_data().convert::<i64>().try_into_vec::<i64>().unwrap(), vec![1, 0]);
    }
}
