//! Training throughput on random data, for `seli bench train` and the README's figures.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use seli_core::random::{gaussian_matrix, rng_from_seed};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::Net;
use crate::optim::SgdMomentum;

/// Samples per second of SGD steps (forward, backward, momentum update) of `cfg` on `device`
/// on one random batch of `batch` images of shape `image` with `classes` classes: `warmup` untimed
/// steps, then the median rate over `rounds` timed stretches of `steps` steps each. On a GPU
/// the steps are the engine's (`crate::engine`, what `seli train` runs there; each step copies
/// its batch to the GPU, as in a run), or burn's CUDA backend's with `burn`.
///
/// # Errors
/// An invalid model configuration; a device that cannot be used.
#[allow(clippy::too_many_arguments)]
pub fn training_throughput(
    device: crate::device::Device,
    cfg: &ModelConfig,
    image: [usize; 3],
    classes: usize,
    batch: usize,
    warmup: usize,
    steps: usize,
    rounds: usize,
    burn: bool,
) -> Result<f64> {
    let named = device;
    let size: usize = image.iter().product();
    let x: Vec<f32> = gaussian_matrix(size, batch, 1.0, &mut rng_from_seed(1))
        .col_iter()
        .flat_map(|c| c.iter().map(|&v| v as f32).collect::<Vec<_>>())
        .collect();
    let setup = crate::engine::Setup {
        model: cfg,
        image,
        classes,
        batch,
        eval_batch: batch,
        momentum: 0.9,
        weight_decay: 0.0,
        transform: crate::engine::Transform::plain(classes),
    };
    if !burn && let Some(mut engine) = crate::engine::on_device(device, &setup)? {
        let net = Net::seeded(cfg, image, classes, &burn::tensor::Device::flex(), 0)?;
        engine.load(&net, None)?;
        let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
        for _ in 0..warmup {
            engine.step(&x, &labels, 0.01)?;
        }
        // Reading the totals waits for every queued kernel.
        engine.totals()?;
        let mut rates = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            for _ in 0..steps {
                engine.step(&x, &labels, 0.01)?;
            }
            engine.totals()?;
            rates.push((steps * batch) as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        return Ok(rates[rates.len() / 2]);
    }
    crate::device::on_compute_threads(device, || {
        let device = crate::device::burn_device(device)?.autodiff();
        let mut net = Net::seeded(cfg, image, classes, &device, 0)?;
        let y: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
        let x: Tensor<4> = Tensor::from_data(
            TensorData::new(x.clone(), [batch, image[0], image[1], image[2]]),
            &device,
        );
        let y: Tensor<1, Int> = Tensor::from_data(TensorData::new(y, [batch]), &device);
        let mut optim = SgdMomentum::new(0.9, 0.0).init();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let mut step = |net: Net| {
            let loss = crate::loss::cross_entropy(&loss_fn, net.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            optim.step(0.01, net, grads)
        };
        for _ in 0..warmup {
            net = step(net);
        }
        let mut rates = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            for _ in 0..steps {
                net = step(net);
            }
            // Wait until every queued kernel of the stretch has run (a read of one tensor waits
            // only for what that tensor needs under burn's fusion) before stopping the clock.
            device.sync().map_err(|e| {
                crate::error::Error::Device(format!("the training step failed on {named}: {e}"))
            })?;
            rates.push((steps * batch) as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    })
}
