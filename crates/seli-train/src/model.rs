//! The networks: an MLP and a CIFAR-style ResNet-18, each split into a feature extractor
//! (everything up to the penultimate layer) and a linear classifier, bias-free by default.

use crate::activation::relu;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::config::{ModelConfig, ModelKind};
use crate::conv::conv2d;
use crate::error::Result;
use crate::linear::linear;
use crate::norm::{batch_norm, batch_norm_relu};

/// A hidden layer of the MLP: linear, optional batch norm, ReLU.
#[derive(Module, Debug)]
pub struct Hidden {
    linear: Linear,
    norm: Option<BatchNorm>,
}

/// Multi-layer perceptron on flattened images.
#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Vec<Hidden>,
}

impl Mlp {
    fn new(input: usize, cfg: &ModelConfig, device: &Device) -> Self {
        let hidden = (0..cfg.depth)
            .map(|i| {
                let d_in = if i == 0 { input } else { cfg.width };
                Hidden {
                    linear: LinearConfig::new(d_in, cfg.width)
                        .with_bias(!cfg.batch_norm)
                        .init(device),
                    norm: cfg.batch_norm.then(|| BatchNormConfig::new(cfg.width).init(device)),
                }
            })
            .collect();
        Mlp { hidden }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h: Tensor<2> = x.flatten(1, 3);
        for layer in &self.hidden {
            h = linear(&layer.linear, h);
            h = match &layer.norm {
                Some(n) => batch_norm_relu(n, h, None),
                None => relu(h),
            };
        }
        h
    }
}

fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// The ResNet basic block: two 3×3 convolutions with batch norm, and a shortcut (a strided
/// 1×1 convolution with batch norm when the shape changes).
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Shortcut>,
}

/// The projection shortcut of a block that changes shape.
#[derive(Module, Debug)]
pub struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| Shortcut {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        BasicBlock {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = batch_norm_relu(&self.bn1, conv2d(&self.conv1, x.clone()), None);
        let skip = match &self.shortcut {
            Some(s) => batch_norm(&s.bn, conv2d(&s.conv, x)),
            None => x,
        };
        batch_norm_relu(&self.bn2, conv2d(&self.conv2, out), Some(skip))
    }
}

/// ResNet-18 for small images (CIFAR style): a 3×3 stem without max-pooling, four stages of
/// two basic blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pooling.
#[derive(Module, Debug)]
pub struct ResNet18 {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
}

impl ResNet18 {
    fn new(channels: usize, width: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = width;
        for (stage, stride) in [1usize, 2, 2, 2].into_iter().enumerate() {
            let c_out = width << stage;
            blocks.push(BasicBlock::new(c_in, c_out, stride, device));
            blocks.push(BasicBlock::new(c_out, c_out, 1, device));
            c_in = c_out;
        }
        ResNet18 {
            stem: conv3x3(channels, width, 1, device),
            stem_bn: BatchNormConfig::new(width).init(device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = batch_norm_relu(&self.stem_bn, conv2d(&self.stem, x), None);
        for b in &self.blocks {
            h = b.forward(h);
        }
        self.pool.forward(h).flatten(1, 3)
    }
}

/// Feature extractor of either kind.
// One value per network, never in a collection: the size difference costs nothing, and
// burn's Module derive does not see through a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    /// See [`Mlp`].
    Mlp(Mlp),
    /// See [`ResNet18`].
    ResNet18(ResNet18),
}

/// A classifier network: backbone (features) and a linear last layer.
#[derive(Module, Debug)]
pub struct Net {
    backbone: Backbone,
    classifier: Linear,
}

/// Reads every float parameter, so that burn's lazy initialization draws them now.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Numbers every parameter in traversal order (from 1).
struct StableIds(u64);

impl StableIds {
    fn next(&mut self) -> ParamId {
        self.0 += 1;
        ParamId::from(self.0)
    }

    /// Batch-norm running statistics: buffers that a mapper cannot renumber.
    fn batch_norm(&mut self, bn: &mut BatchNorm) {
        bn.running_mean = RunningState::with_id(self.next(), bn.running_mean.value());
        bn.running_var = RunningState::with_id(self.next(), bn.running_var.value());
    }
}

impl ModuleMapper for StableIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, value, mapper) = param.consume();
        Param::from_mapped_value(self.next(), value, mapper)
    }
}

impl Net {
    /// The network with its parameters numbered in traversal order instead of burn's random
    /// ids. Checkpoints record the ids (of the model's tensors and, as keys, of the
    /// optimizer's state), so with random ids two runs that computed the same numbers wrote
    /// different files; numbered, an interrupted and resumed run ends with the uninterrupted
    /// run's checkpoint, byte for byte.
    fn with_stable_ids(self) -> Self {
        let mut ids = StableIds(0);
        let mut net = self.map(&mut ids);
        match &mut net.backbone {
            Backbone::Mlp(m) => {
                for h in &mut m.hidden {
                    if let Some(bn) = &mut h.norm {
                        ids.batch_norm(bn);
                    }
                }
            }
            Backbone::ResNet18(r) => {
                ids.batch_norm(&mut r.stem_bn);
                for b in &mut r.blocks {
                    ids.batch_norm(&mut b.bn1);
                    ids.batch_norm(&mut b.bn2);
                    if let Some(s) = &mut b.shortcut {
                        ids.batch_norm(&mut s.bn);
                    }
                }
            }
        }
        net
    }

    /// A freshly initialized network for `channels × height × width` images and `classes`
    /// classes, its parameters drawn from `device`'s generator seeded with `seed`.
    ///
    /// burn keeps one generator per backend for the whole process and draws parameters
    /// lazily, on first use: two networks initialized at once (parallel tests, a sweep's
    /// concurrent points, Python threads) would interleave their draws. Seeding, building and
    /// drawing every parameter happen under one process-wide lock, so the network depends on
    /// `seed` alone.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn seeded(
        cfg: &ModelConfig,
        image: [usize; 3],
        classes: usize,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        device.seed(seed);
        let net = Self::new(cfg, image, classes, device)?;
        net.visit(&mut Materialize);
        Ok(net.with_stable_ids())
    }

    fn new(cfg: &ModelConfig, image: [usize; 3], classes: usize, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let backbone = match cfg.kind {
            ModelKind::Mlp => Backbone::Mlp(Mlp::new(image.iter().product(), cfg, device)),
            ModelKind::ResNet18 => Backbone::ResNet18(ResNet18::new(image[0], cfg.width, device)),
        };
        let classifier =
            LinearConfig::new(cfg.feature_dim(), classes).with_bias(cfg.last_bias).init(device);
        Ok(Net { backbone, classifier })
    }

    /// Penultimate features, `[batch, d]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        match &self.backbone {
            Backbone::Mlp(m) => m.forward(x),
            Backbone::ResNet18(r) => r.forward(x),
        }
    }

    /// Logits of features, `[batch, k]`.
    pub fn classify(&self, h: Tensor<2>) -> Tensor<2> {
        linear(&self.classifier, h)
    }

    /// Logits, `[batch, k]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.classify(self.features(x))
    }

    /// The classifier as `(W, b)`: `W` row-major `[d, k]` (column c is `w_c`, burn's `Linear`
    /// layout), `b` when the last layer has a bias.
    pub fn classifier_weights(&self) -> (Vec<f32>, [usize; 2], Option<Vec<f32>>) {
        let w = self.classifier.weight.val();
        let dims = w.dims();
        let values = w.into_data().try_into_vec::<f32>().expect("f32 weights");
        let b = self
            .classifier
            .bias
            .as_ref()
            .map(|b| b.val().into_data().try_into_vec::<f32>().expect("f32 bias"));
        (values, dims, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;

    #[test]
    fn one_seed_gives_one_checkpoint_encoding() {
        // Parameters and batch-norm statistics are numbered, not given burn's random ids, so
        // two networks of one seed encode to the same bytes.
        let cfg = ModelConfig {
            kind: ModelKind::Mlp,
            depth: 2,
            width: 8,
            batch_norm: true,
            last_bias: false,
        };
        let device = Device::flex();
        let bytes = || {
            let net = Net::seeded(&cfg, [1, 4, 4], 3, &device, 5).unwrap();
            net.into_record().into_bytes().unwrap().to_vec()
        };
        assert_eq!(bytes(), bytes());
        let net = Net::seeded(&cfg, [1, 4, 4], 3, &device, 5).unwrap();
        let mut ids = Vec::new();
        struct Ids<'a>(&'a mut Vec<u64>);
        impl ModuleVisitor for Ids<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.push(p.id.val());
            }
        }
        net.visit(&mut Ids(&mut ids));
        // Two linear weights, two batch norms (gamma, beta, running mean, running var), the
        // classifier: 11 small distinct numbers (the mapper numbers every tensor it meets,
        // then the running statistics get their own).
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 11);
        assert!(ids.iter().all(|&i| (1..=15).contains(&i)), "{ids:?}");
    }
}
