//! fp16's dynamic loss scaling, as `torch.amp.GradScaler` does it: the loss is multiplied by
//! `scale` before backward so that small gradients survive fp16, and the gradients are divided
//! by it before the update. An update whose gradients overflowed is skipped and the scale
//! halves; after `growth_interval` good updates in a row it doubles.
use crate::config::{LearnerConfig, Precision};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The scale and its run of good updates; a checkpoint keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    pub scale: f64,
    /// Good updates since the scale last changed.
    pub good_steps: i64,
}

pub struct LossScaler {
    state: ScalerState,
    /// fp16; in fp32 and bf16 the scale stays 1 and nothing is unscaled.
    dynamic: bool,
    growth_interval: i64,
}

impl LossScaler {
    pub fn new(config: &LearnerConfig) -> Self {
        let dynamic = config.amp.precision == Precision::Fp16;
        let scale = if dynamic { config.amp.loss_scale } else { 1.0 };
        Self { state: ScalerState { scale, good_steps: 0 }, dynamic, growth_interval: config.amp.loss_scale_growth_interval }
    }

    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// Divides the window's gradients by the scale; `false` when any is not finite: the update
    /// must then be skipped, and the scale has halved.
    pub fn unscale_(&mut self, grads: &Tensor) -> Result<bool> {
        if !self.dynamic {
            return Ok(true);
        }
        let _guard = tch::no_grad_guard();
        let _ = grads.shallow_clone().f_mul_scalar_(1.0 / self.state.scale)?;
        if !bool::try_from(grads.f_isfinite()?.f_all()?)? {
            self.state = ScalerState { scale: self.state.scale / 2.0, good_steps: 0 };
            return Ok(false);
        }
        self.state.good_steps += 1;
        if self.state.good_steps == self.growth_interval {
            self.state = ScalerState { scale: self.state.scale * 2.0, good_steps: 0 };
        }
        Ok(true)
    }

    pub fn state(&self) -> ScalerState {
        self.state
    }

    pub fn restore(&mut self, state: ScalerState) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrecisionSettings;
    use tch::{Device, Kind};

    fn fp16(scale: f64, growth_interval: i64) -> LossScaler {
        LossScaler::new(&LearnerConfig { amp: PrecisionSettings { precision: Precision::Fp16, loss_scale: scale, loss_scale_growth_interval: growth_interval }, ..Default::default() })
    }

    #[test]
    fn overflow_halves_and_a_run_of_good_updates_doubles() {
        let mut s = fp16(8.0, 2);
        let grads = Tensor::from_slice(&[8.0f32, 16.0]);
        assert!(s.unscale_(&grads).unwrap());
        assert_eq!(Vec::<f32>::try_from(&grads).unwrap(), [1.0, 2.0]);
        assert!(s.unscale_(&Tensor::ones([2], (Kind::Float, Device::Cpu))).unwrap());
        assert_eq!(s.state(), ScalerState { scale: 16.0, good_steps: 0 });
        assert!(!s.unscale_(&Tensor::from_slice(&[f32::INFINITY])).unwrap());
        assert_eq!(s.state(), ScalerState { scale: 8.0, good_steps: 0 });
    }

    #[test]
    fn fp32_never_scales() {
        let mut s = LossScaler::new(&LearnerConfig { amp: PrecisionSettings { loss_scale: 8.0, ..Default::default() }, ..Default::default() });
        let grads = Tensor::from_slice(&[f32::NAN]);
        assert!(s.unscale_(&grads).unwrap() && s.scale() == 1.0);
    }
}
