//! The real MNIST and Fashion-MNIST files, when `scripts/fetch-data.sh` has put them in the
//! data directory (`SELI_DATA_DIR`, else `data/` at the workspace root). Under CI (`CI` set)
//! their absence is a failure, so these checks cannot pass by being skipped.

use std::path::PathBuf;

use seli_io::dataset::{DatasetKind, load};

fn data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SELI_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    };
    if dir.join("mnist").is_dir() && dir.join("fashion-mnist").is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "CI must fetch the datasets first (scripts/fetch-data.sh): none in {}",
            dir.display()
        )
    } else {
        eprintln!("skipping: no fetched datasets in {}", dir.display());
        None
    }
}

#[test]
fn full_mnist_and_fashion_mnist_load_with_their_published_sizes() {
    let Some(dir) = data_dir() else { return };
    let mnist = load(DatasetKind::Mnist, &dir).unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
    assert_eq!((mnist.train.channels, mnist.train.height, mnist.train.width), (1, 28, 28));
    // Class counts of the MNIST training and test sets (as published with the dataset).
    assert_eq!(
        mnist.train.counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(mnist.test.counts(), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let fashion = load(DatasetKind::FashionMnist, &dir).unwrap();
    assert_eq!(fashion.train.counts(), vec![6000; 10]);
    assert_eq!(fashion.test.counts(), vec![1000; 10]);
    // Pixels are real images: mean intensity near the usual normalization constant.
    for (set, mean) in [(&mnist.train, 0.1307), (&fashion.train, 0.2860)] {
        let m = set.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / set.pixels.len() as f64;
        assert!((m / 255.0 - mean).abs() < 1e-3, "{m}");
    }
}
