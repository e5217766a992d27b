//! Convolution layers: ATen's, except 3x3 stride-1 ones on 4x4-pixel fp32 CPU feature maps
//! (ResNet's layer 4 at 32 px), which run through Winograd's F(2x2, 3x3) (`shim/winograd.cpp`).
//! On this 2-core AVX-512 CPU at batch 64, oneDNN's direct kernels reach about half of peak
//! there, and the Winograd op is 2.2x faster forward and 1.7x forward + backward. At 8x8 pixels
//! it is a little faster alone but made the step no faster; from 16x16 on its memory-bound
//! transforms lose.
use super::switched_on;
use crate::shim;
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use crate::error::Result;
use tch::nn::{self, Init};
use tch::Tensor;

/// `BYOL_RS_WINOGRAD=0` keeps every convolution on ATen, for PyTorch's own kernels and summation
/// order (bit-for-bit comparisons with a PyTorch model). Read on every call.
pub const WINOGRAD_ENV: &str = "BYOL_RS_WINOGRAD";

/// Feature maps of at most this many pixels (4x4) go through Winograd.
const WINOGRAD_MAX_PIXELS: i64 = 16;

/// torchvision's conv init: kaiming normal, fan out, ReLU gain.
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// A bias-free convolution with torchvision's init (the weight is `<path>.weight`).
#[derive(Debug)]
pub struct Conv {
    ws: Tensor,
    stride: i64,
    padding: i64,
    /// 3x3, stride 1, padding 1: a shape the Winograd op computes.
    winograd_shape: bool,
}

impl Conv {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        let cfg = nn::ConvConfig { stride, padding, bias: false, ws_init: CONV_INIT, ..Default::default() };
        Self { ws: nn::conv2d(p, c_in, c_out, k, cfg).ws, stride, padding, winograd_shape: (k, stride, padding) == (3, 1, 1) }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let small = x.dim() == 4 && x.size()[2] * x.size()[3] <= WINOGRAD_MAX_PIXELS;
        if self.winograd_shape && small && switched_on(WINOGRAD_ENV) {
            // None: not fp32 CPU NHWC with even sides, or autocast is on.
            if let Ok(Some(y)) = shim::winograd_conv3x3(x, &self.ws) {
                return Ok(y);
            }
        }
        let (s, p) = (self.stride, self.padding);
        Ok(x.f_conv2d::<Tensor>(&self.ws, None, [s, s], [p, p], [1, 1], 1)?)
    }
}
