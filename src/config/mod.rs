//! The learner's configuration: the paper's defaults, its presets by epoch count, and the
//! refusal of settings known to collapse.
use crate::augment::config::AugmentConfig;
use crate::error::{value_error, Result};
use crate::model::backbone::{BackboneConfig, BackboneKind};
use crate::model::network::NetworkConfig;
use crate::optim::{OptimConfig, OptimizerKind};
use serde::{Deserialize, Serialize};
use tch::Device;

pub mod schema;

use schema::{config_enum, settings, Field};

config_enum! {
    /// The forward passes' autocast dtype; weights, optimizer state and the loss stay fp32.
    pub enum Precision { Fp32 = "fp32", Bf16 = "bf16", Fp16 = "fp16" }
}

config_enum! {
    /// What a non-finite loss does: raise (and change nothing) or count a skipped step.
    pub enum OnNonFinite { Raise = "raise", Skip = "skip" }
}

config_enum! {
    /// Where the non-finite check happens (see `NonFiniteSettings::nonfinite_check`).
    pub enum NonFiniteCheck { Auto = "auto", Immediate = "immediate", Deferred = "deferred" }
}

settings! {
    /// The online network; the target copies its backbone and projector.
    pub struct NetworkSettings {
        /// The encoder: a torchvision ResNet, or the small-image ConvNet.
        backbone: BackboneKind = BackboneKind::ResNet50,
        /// 1 for grayscale, 3 for colour.
        in_channels: i64 = 3,
        /// 3x3 stride-1 stem and no max-pool, for images of 64 px or less.
        small_image: bool = false,
        projector_hidden: i64 = 4096,
        projection_dim: i64 = 256,
        predictor_hidden: i64 = 4096,
    }
}

settings! {
    /// The optimizer's own hyperparameters: the paper's LARS by default.
    pub struct OptimizerSettings {
        /// The paper's LARS, SGD with momentum (LARS without the trust ratio), or AdamW.
        optimizer: OptimizerKind = OptimizerKind::Lars,
        weight_decay: f64 = 1.5e-6,
        /// Momentum of LARS / SGD (the paper's 0.9).
        optimizer_momentum: f64 = 0.9,
        /// LARS trust coefficient.
        eta: f64 = 1e-3,
        betas: (f64, f64) = (0.9, 0.999),
        adam_eps: f64 = 1e-8,
    }
}

settings! {
    /// The learning rate and tau over the run.
    pub struct ScheduleSettings {
        /// Base learning rate per 256 images; `None` picks the optimizer's usual value.
        lr: Option<f64> = None,
        /// Images per update for the `lr * batch / 256` scaling; `None` uses the views' batch
        /// size times `accumulate`.
        batch_size: Option<i64> = None,
        total_steps: i64 = 1000,
        warmup_steps: i64 = 0,
        final_lr: f64 = 0.0,
        tau_base: f64 = 0.996,
        tau_final: f64 = 1.0,
        /// The paper's lr, weight decay and tau for that length, with 10 warm-up epochs; needs
        /// `steps_per_epoch`.
        preset: Option<Preset> = None,
        steps_per_epoch: Option<i64> = None,
    }
}

settings! {
    /// Mixed precision and fp16's dynamic loss scale.
    pub struct PrecisionSettings {
        /// `fp32`, `bf16` or `fp16`: the forward runs under autocast in that dtype. For `fp16`
        /// the loss is scaled dynamically.
        precision: Precision = Precision::Fp32,
        /// fp16's initial loss scale; halved after a step whose gradients overflow (that step is
        /// skipped), doubled after `loss_scale_growth_interval` good steps in a row.
        loss_scale: f64 = 65536.0,
        loss_scale_growth_interval: i64 = 2000,
    }
}

settings! {
    /// What a non-finite loss does, and where it is noticed.
    pub struct NonFiniteSettings {
        /// `raise` or `skip` on a non-finite loss.
        on_nonfinite: OnNonFinite = OnNonFinite::Raise,
        /// `immediate` (the step reads the loss back and refuses at once), `deferred` (the device
        /// cancels the update itself and the host hears of it later, so the step never waits for
        /// the device), or `auto`: deferred on CUDA unless fp16 or data parallel needs the host to
        /// decide, immediate elsewhere.
        nonfinite_check: NonFiniteCheck = NonFiniteCheck::Auto,
    }
}

settings! {
    /// BYOL or SimSiam, and what one call of `step` does.
    pub struct MethodSettings {
        /// `true`: the target is a momentum (EMA) copy, as in BYOL. `false`: SimSiam (Chen & He,
        /// arXiv 2011.10566): the target is the online projection under stop-gradient, with no
        /// EMA and no second network in memory.
        momentum: bool = true,
        /// Optimizer updates happen on every `accumulate`-th call of `step`.
        accumulate: i64 = 1,
        /// Also EMA the target's BN running statistics (off: the target keeps its own, as in lightly).
        ema_bn_stats: bool = false,
        /// The augmentation pipeline `step(images)` applies; `None` means views are passed in.
        augment: Option<AugmentConfig> = None,
    }
}

settings! {
    /// Where and how the run executes.
    pub struct RunSettings {
        device: String = "cpu".into(),
        seed: i64 = 0,
        /// Run convolutions in NHWC memory order on CPU (always on for CUDA). On by default:
        /// oneDNN's NHWC kernels (and max-pool) are 1.4x faster for a ConvNet step here; off
        /// matches PyTorch's default NCHW summation order (benches/RESULTS.md).
        channels_last: bool = true,
        /// Accept settings refused as known to collapse.
        allow_unsafe: bool = false,
    }
}

/// Everything that defines a BYOL run, by concern. The JSON (and the Python keyword arguments)
/// are flat: one name per field, as listed by `LearnerConfig::fields`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerConfig {
    #[serde(flatten)]
    pub network: NetworkSettings,
    #[serde(flatten)]
    pub optim: OptimizerSettings,
    #[serde(flatten)]
    pub schedule: ScheduleSettings,
    #[serde(flatten)]
    pub amp: PrecisionSettings,
    #[serde(flatten)]
    pub nonfinite: NonFiniteSettings,
    #[serde(flatten)]
    pub method: MethodSettings,
    #[serde(flatten)]
    pub run: RunSettings,
}

config_enum! {
    /// A training length of the paper's (appendix, table of presets).
    pub enum Preset { Ep40 = "40ep", Ep100 = "100ep", Ep300 = "300ep", Ep1000 = "1000ep" }
}

impl Preset {
    /// Epochs, lr, weight decay and tau.
    fn settings(self) -> (i64, f64, f64, f64) {
        match self {
            Preset::Ep40 => (40, 0.45, 1e-6, 0.97),
            Preset::Ep100 => (100, 0.45, 1e-6, 0.99),
            Preset::Ep300 => (300, 0.3, 1e-6, 0.99),
            Preset::Ep1000 => (1000, 0.2, 1.5e-6, 0.996),
        }
    }
}
const WARMUP_EPOCHS: i64 = 10;

impl LearnerConfig {
    /// Every field, section by section: the schema Python reads through `_core.config_schema()`.
    pub fn fields() -> Vec<Field> {
        [
            NetworkSettings::fields("network"),
            OptimizerSettings::fields("optimizer"),
            ScheduleSettings::fields("schedule"),
            PrecisionSettings::fields("precision"),
            NonFiniteSettings::fields("nonfinite"),
            MethodSettings::fields("method"),
            RunSettings::fields("run"),
        ]
        .concat()
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| value_error("config", e.to_string()))?;
        let Some(object) = value.as_object() else {
            return Err(value_error("config", format!("expected a JSON object, got {value}")));
        };
        schema::check_object(&Self::fields(), object)?;
        serde_json::from_value(value).map_err(|e| value_error("config", e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Applies the preset and the per-optimizer default lr, then validates.
    pub fn resolve(mut self) -> Result<Self> {
        let s = &mut self.schedule;
        if let Some(preset) = s.preset {
            let (epochs, lr, wd, tau) = preset.settings();
            let Some(spe) = s.steps_per_epoch.filter(|&v| v > 0) else {
                return Err(value_error("steps_per_epoch", "a preset needs the number of optimizer steps per epoch (> 0)"));
            };
            s.lr = Some(lr);
            self.optim.weight_decay = wd;
            s.tau_base = tau;
            s.total_steps = epochs * spe;
            s.warmup_steps = (WARMUP_EPOCHS * spe).min(s.total_steps);
        }
        if s.lr.is_none() {
            s.lr = Some(match self.optim.optimizer {
                OptimizerKind::AdamW => 1e-3,
                OptimizerKind::Sgd => 0.05,
                OptimizerKind::Lars => 0.2,
            });
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let s = &self.schedule;
        self.network().validate()?;
        if let Some(aug) = &self.method.augment {
            aug.validate()?;
            if aug.mean.len() > 1 && aug.mean.len() as i64 != self.network.in_channels {
                return Err(value_error("augment", format!("normalises {} channels but in_channels is {}; give it a mean/std per channel", aug.mean.len(), self.network.in_channels)));
            }
        }
        let lr = s.lr.unwrap_or(0.0);
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(value_error("lr", format!("must be finite and >= 0, got {lr}")));
        }
        if s.total_steps < 1 {
            return Err(value_error("total_steps", format!("must be >= 1, got {}", s.total_steps)));
        }
        if s.warmup_steps < 0 || s.warmup_steps > s.total_steps {
            return Err(value_error("warmup_steps", format!("must lie in [0, total_steps={}], got {}", s.total_steps, s.warmup_steps)));
        }
        for (arg, v) in [("tau_base", s.tau_base), ("tau_final", s.tau_final)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(value_error(arg, format!("must lie in [0, 1], got {v}")));
            }
        }
        if self.method.accumulate < 1 {
            return Err(value_error("accumulate", format!("must be >= 1, got {}", self.method.accumulate)));
        }
        if let Some(b) = s.batch_size {
            if b < 1 {
                return Err(value_error("batch_size", format!("must be >= 1, got {b}")));
            }
        }
        if self.nonfinite.nonfinite_check == NonFiniteCheck::Deferred && self.amp.precision == Precision::Fp16 {
            return Err(value_error("nonfinite_check", "'deferred' does not combine with precision='fp16', whose dynamic loss scale is decided on the host; use 'auto' or 'immediate'"));
        }
        let amp = &self.amp;
        if !(amp.loss_scale.is_finite() && amp.loss_scale > 0.0) {
            return Err(value_error("loss_scale", format!("must be finite and > 0, got {}", amp.loss_scale)));
        }
        if amp.loss_scale_growth_interval < 1 {
            return Err(value_error("loss_scale_growth_interval", format!("must be >= 1, got {}", amp.loss_scale_growth_interval)));
        }
        self.device()?;
        if !self.run.allow_unsafe {
            self.refuse_known_collapses(lr)?;
        }
        Ok(())
    }

    /// Settings that are known to diverge or collapse; `allow_unsafe=True` accepts them.
    fn refuse_known_collapses(&self, lr: f64) -> Result<()> {
        let adamw = self.optim.optimizer == OptimizerKind::AdamW;
        if adamw && lr >= 0.2 {
            return Err(value_error("lr", format!("{lr} is a LARS-scale learning rate; AdamW at 0.2 or more diverges and the representation collapses. Use about 1e-3 with AdamW, or pass allow_unsafe=True")));
        }
        if !adamw && lr > 10.0 {
            return Err(value_error("lr", format!("{lr} per 256 images is far above the paper's 0.2-0.45 and diverges; pass allow_unsafe=True to insist")));
        }
        if self.method.momentum && self.schedule.tau_base < 0.9 {
            return Err(value_error("tau_base", format!("{} makes the target follow the online network too closely, which the paper shows collapses (table 5a); use 0.9 or more, or pass allow_unsafe=True", self.schedule.tau_base)));
        }
        Ok(())
    }

    pub fn network(&self) -> NetworkConfig {
        let n = &self.network;
        NetworkConfig {
            backbone: BackboneConfig { name: n.backbone, in_channels: n.in_channels, small_image: n.small_image },
            projector_hidden: n.projector_hidden,
            projection_dim: n.projection_dim,
            predictor_hidden: n.predictor_hidden,
        }
    }

    pub fn optim(&self) -> OptimConfig {
        let o = &self.optim;
        OptimConfig {
            name: o.optimizer,
            weight_decay: o.weight_decay,
            momentum: o.optimizer_momentum,
            eta: o.eta,
            betas: o.betas,
            eps: o.adam_eps,
        }
    }

    /// The autocast dtype, or `None` for fp32.
    pub fn autocast_kind(&self) -> Option<tch::Kind> {
        match self.amp.precision {
            Precision::Bf16 => Some(tch::Kind::BFloat16),
            Precision::Fp16 => Some(tch::Kind::Half),
            Precision::Fp32 => None,
        }
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.run.device)
    }
}

/// `cpu`, `cuda` or `cuda:N`, checked to exist on this machine.
pub fn parse_device(d: &str) -> Result<Device> {
    if d == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = match d {
        "cuda" => Some(0),
        _ => d.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()),
    };
    let Some(index) = index else {
        return Err(value_error("device", format!("expected 'cpu', 'cuda' or 'cuda:N', got {d:?}")));
    };
    if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
        return Err(value_error("device", format!("{d:?} is not available on this machine")));
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sets_paper_values() {
        let mut c = LearnerConfig::default();
        (c.schedule.preset, c.schedule.steps_per_epoch) = (Some(Preset::Ep300), Some(10));
        let c = c.resolve().unwrap();
        let s = &c.schedule;
        assert_eq!((s.lr, c.optim.weight_decay, s.tau_base, s.total_steps, s.warmup_steps), (Some(0.3), 1e-6, 0.99, 3000, 100));
    }

    #[test]
    fn adam_with_lars_lr_is_refused_unless_allowed() {
        let mut c = LearnerConfig::default();
        (c.optim.optimizer, c.schedule.lr) = (OptimizerKind::AdamW, Some(0.2));
        assert!(c.clone().resolve().unwrap_err().to_string().starts_with("lr: 0.2 is a LARS-scale"));
        c.run.allow_unsafe = true;
        assert!(c.resolve().is_ok());
    }
}
