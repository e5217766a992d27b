//! Backbones with torchvision's module layout, so that VarStore names equal torchvision's
//! state-dict keys (He et al., "Deep Residual Learning", arXiv 1512.03385; torchvision v1.5
//! bottleneck with the stride on the 3x3 conv). The classifier `fc` is left out.
use crate::config::schema::config_enum;
use crate::error::{value_error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;
use super::conv::Conv;
use super::norm::{norm, Norm, SyncHandle};

config_enum! {
    /// The encoder: a torchvision ResNet, or the small-image ConvNet.
    pub enum BackboneKind { ResNet18 = "resnet18", ResNet34 = "resnet34", ResNet50 = "resnet50", ConvNet = "convnet" }
}

/// Which encoder, and how its stem is shaped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneConfig {
    pub name: BackboneKind,
    /// 1 for grayscale, 3 for colour.
    pub in_channels: i64,
    /// 3x3 stride-1 stem and no max-pool, for images of 64 px or less.
    pub small_image: bool,
}

impl BackboneConfig {
    /// Width of the feature vector the backbone returns.
    pub fn feature_dim(&self) -> i64 {
        match self.name {
            BackboneKind::ResNet18 | BackboneKind::ResNet34 => 512,
            BackboneKind::ResNet50 => 2048,
            BackboneKind::ConvNet => 256,
        }
    }
}

fn bn(p: nn::Path, c: i64, sync: Option<&SyncHandle>) -> Norm {
    norm(p, c, 2, sync)
}

/// A residual block: `relu(body(x) + shortcut(x))`.
#[derive(Debug)]
pub struct Block {
    convs: Vec<(Conv, Norm)>,
    downsample: Option<(Conv, Norm)>,
}

impl Block {
    fn basic(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, sync: Option<&SyncHandle>) -> Self {
        let convs = vec![
            (Conv::new(p / "conv1", c_in, c_out, 3, stride, 1), bn(p / "bn1", c_out, sync)),
            (Conv::new(p / "conv2", c_out, c_out, 3, 1, 1), bn(p / "bn2", c_out, sync)),
        ];
        Self { convs, downsample: Self::shortcut(p, c_in, c_out, stride, sync) }
    }

    fn bottleneck(p: &nn::Path, c_in: i64, width: i64, stride: i64, sync: Option<&SyncHandle>) -> Self {
        let c_out = width * 4;
        let convs = vec![
            (Conv::new(p / "conv1", c_in, width, 1, 1, 0), bn(p / "bn1", width, sync)),
            (Conv::new(p / "conv2", width, width, 3, stride, 1), bn(p / "bn2", width, sync)),
            (Conv::new(p / "conv3", width, c_out, 1, 1, 0), bn(p / "bn3", c_out, sync)),
        ];
        Self { convs, downsample: Self::shortcut(p, c_in, c_out, stride, sync) }
    }

    fn shortcut(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, sync: Option<&SyncHandle>) -> Option<(Conv, Norm)> {
        (stride != 1 || c_in != c_out)
            .then(|| (Conv::new(p / "downsample" / "0", c_in, c_out, 1, stride, 0), bn(p / "downsample" / "1", c_out, sync)))
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let skip = match &self.downsample {
            Some((c, b)) => b.forward_act(&c.forward(x)?, train, None, false)?,
            None => x.shallow_clone(),
        };
        let last = self.convs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            // The last BN takes the shortcut and the block's ReLU into its fused op.
            h = b.forward_act(&c.forward(&h)?, train, (i == last).then_some(&skip), true)?;
        }
        Ok(h)
    }
}

/// The feature extractor: ResNet or the compact ConvNet.
#[derive(Debug)]
pub enum Backbone {
    ResNet { stem: (Conv, Norm), max_pool: bool, blocks: Vec<Block> },
    /// Four conv3x3-BN-ReLU blocks of 32-64-128-256 channels, 2x2 max-pool after the first three.
    ConvNet { blocks: Vec<(Conv, Norm)> },
}

impl Backbone {
    /// The smallest image side the forward accepts: the ConvNet's three 2x2 max-pools need 8
    /// px; ResNet's padded strided layers take any size.
    pub fn min_side(&self) -> i64 {
        match self {
            Backbone::ResNet { .. } => 1,
            Backbone::ConvNet { blocks } => 1 << (blocks.len() - 1),
        }
    }
}

/// Builds the backbone under `p` with torchvision's parameter names.
pub fn backbone(p: &nn::Path, cfg: &BackboneConfig, sync: Option<&SyncHandle>) -> Result<Backbone> {
    if cfg.in_channels < 1 {
        return Err(value_error("in_channels", format!("must be >= 1, got {}", cfg.in_channels)));
    }
    let (layers, bottleneck): (&[i64], bool) = match cfg.name {
        BackboneKind::ResNet18 => (&[2, 2, 2, 2], false),
        BackboneKind::ResNet34 => (&[3, 4, 6, 3], false),
        BackboneKind::ResNet50 => (&[3, 4, 6, 3], true),
        BackboneKind::ConvNet => return Ok(convnet(p, cfg.in_channels, sync)),
    };
    let stem = if cfg.small_image {
        (Conv::new(p / "conv1", cfg.in_channels, 64, 3, 1, 1), bn(p / "bn1", 64, sync))
    } else {
        (Conv::new(p / "conv1", cfg.in_channels, 64, 7, 2, 3), bn(p / "bn1", 64, sync))
    };
    let mut blocks = vec![];
    let mut c_in = 64;
    for (stage, &n) in layers.iter().enumerate() {
        let width = 64 << stage;
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let bp = p / format!("layer{}", stage + 1) / i;
            if bottleneck {
                blocks.push(Block::bottleneck(&bp, c_in, width, stride, sync));
                c_in = width * 4;
            } else {
                blocks.push(Block::basic(&bp, c_in, width, stride, sync));
                c_in = width;
            }
        }
    }
    Ok(Backbone::ResNet { stem, max_pool: !cfg.small_image, blocks })
}

fn convnet(p: &nn::Path, in_channels: i64, sync: Option<&SyncHandle>) -> Backbone {
    let mut c_in = in_channels;
    let blocks = [32, 64, 128, 256]
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let bp = p / "layers" / i;
            let block = (Conv::new(&bp / "conv", c_in, c, 3, 1, 1), bn(&bp / "bn", c, sync));
            c_in = c;
            block
        })
        .collect();
    Backbone::ConvNet { blocks }
}

impl Backbone {
    /// The features `[N, feature_dim]`. ReLU runs before max-pool, fused with the BN before it
    /// (`Norm::forward_act`); the two commute exactly, values and gradients alike.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match self {
            Backbone::ResNet { stem, max_pool, blocks } => {
                let mut h = stem.1.forward_act(&stem.0.forward(x)?, train, None, true)?;
                if *max_pool {
                    h = h.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
                }
                for b in blocks {
                    h = b.forward(&h, train)?;
                }
                h
            }
            Backbone::ConvNet { blocks } => {
                let last = blocks.len() - 1;
                let mut h = x.shallow_clone();
                for (i, (c, b)) in blocks.iter().enumerate() {
                    h = b.forward_act(&c.forward(&h)?, train, None, true)?;
                    if i < last {
                        h = h.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
                    }
                }
                h
            }
        };
        Ok(h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
    }
}
