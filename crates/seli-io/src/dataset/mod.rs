//! Image classification datasets in their published file layouts.
//!
//! - MNIST and Fashion-MNIST: IDX files ([`idx`]), raw or gzip-compressed (recognized by the
//!   gzip magic bytes, not the name), in `DATA_DIR/mnist/` and `DATA_DIR/fashion-mnist/`.
//! - CIFAR-10: the binary layout `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin` and
//!   the python-pickle layout `cifar-10-batches-py/{data_batch_1..5,test_batch}` that
//!   torchvision downloads ([`cifar`]); the binary one is used when both are present.
//!
//! Images are kept as the files store them: `u8` pixels, channel-major (`C×H×W` per image).
//! Every reader validates magic numbers, sizes and labels, and names the file in its error.

pub mod cifar;
pub mod idx;
pub mod pickle;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "SELI_DATA_DIR";

/// The data directory: `SELI_DATA_DIR` when set (and not empty), else `./data` (where
/// `scripts/fetch-data.sh` puts the files by default).
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("data"),
    }
}

/// The datasets `seli train` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST digits, 1×28×28.
    Mnist,
    /// Fashion-MNIST, 1×28×28.
    FashionMnist,
    /// CIFAR-10, 3×32×32.
    Cifar10,
}

impl DatasetKind {
    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// Parses [`DatasetKind::name`].
    ///
    /// # Errors
    /// An unknown name, listing the known ones.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" => Ok(DatasetKind::FashionMnist),
            "cifar10" => Ok(DatasetKind::Cifar10),
            _ => Err(format!("unknown dataset {s:?}: expected mnist, fashion-mnist or cifar10")),
        }
    }

    /// Per-channel mean and standard deviation of the training pixels (scaled to [0, 1]),
    /// the usual normalization constants of each dataset.
    pub fn normalization(self) -> (&'static [f32], &'static [f32]) {
        match self {
            DatasetKind::Mnist => (&[0.1307], &[0.3081]),
            DatasetKind::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetKind::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]),
        }
    }
}

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Pixels, `n × channels × height × width`, row-major.
    pub pixels: Vec<u8>,
    /// One label per image, in `0..classes`.
    pub labels: Vec<u32>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image, `channels × height × width`.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }

    /// Images per class.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &y in &self.labels {
            c[y as usize] += 1;
        }
        c
    }

    fn concat(path: &Path, parts: Vec<ImageSet>) -> Result<ImageSet> {
        let mut it = parts.into_iter();
        let mut first =
            it.next().ok_or_else(|| Error::format(path, "no batch file in the directory"))?;
        for p in it {
            first.pixels.extend_from_slice(&p.pixels);
            first.labels.extend_from_slice(&p.labels);
        }
        Ok(first)
    }
}

/// The training and test splits of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Which dataset.
    pub kind: DatasetKind,
    /// The directory the files came from.
    pub dir: PathBuf,
    /// Training split.
    pub train: ImageSet,
    /// Test split.
    pub test: ImageSet,
}

/// Loads `kind` from `data_dir` (see the module documentation for the expected layout).
///
/// # Errors
/// A missing directory or file (with a hint to run `scripts/fetch-data.sh`), or any format
/// error of [`idx`] / [`cifar`], naming the file.
pub fn load(kind: DatasetKind, data_dir: &Path) -> Result<Dataset> {
    let (dir, train, test) = match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let dir = data_dir.join(kind.name());
            let (train, test) = idx::load_split(&dir)?;
            (dir, train, test)
        }
        DatasetKind::Cifar10 => {
            let bin = data_dir.join("cifar-10-batches-bin");
            let py = data_dir.join("cifar-10-batches-py");
            if bin.is_dir() {
                let (train, test) = cifar::load_binary_dir(&bin)?;
                (bin, train, test)
            } else if py.is_dir() {
                let (train, test) = cifar::load_pickle_dir(&py)?;
                (py, train, test)
            } else {
                return Err(Error::format(
                    data_dir,
                    "no CIFAR-10 here: expected cifar-10-batches-bin/ or cifar-10-batches-py/ \
                     (CIFAR-10 is not fetched by scripts/fetch-data.sh; see docs/datasets.md)",
                ));
            }
        }
    };
    Ok(Dataset { kind, dir, train, test })
}

/// Reads a whole file, naming it on failure; a missing file gets a hint about the fetch script.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::format(
                path,
                "file not found (MNIST and Fashion-MNIST: run scripts/fetch-data.sh, or set \
                 --data-dir / SELI_DATA_DIR)",
            )
        } else {
            Error::io(path, e)
        }
    })
}
