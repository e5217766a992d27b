//! The learner's configuration: the paper's defaults, its presets by epoch count, and the
//! refusal of settings known to collapse.
use crate::augment::config::AugmentConfig;
use crate::error::{value_error, Result};
use crate::model::backbone::BackboneConfig;
use crate::model::network::NetworkConfig;
use crate::optim::OptimConfig;
use serde::{Deserialize, Serialize};
use tch::Device;

/// Everything that defines a BYOL run. Field names are the Python keyword arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnerConfig {
    pub backbone: String,
    pub in_channels: i64,
    pub small_image: bool,
    pub projector_hidden: i64,
    pub projection_dim: i64,
    pub predictor_hidden: i64,
    pub optimizer: String,
    /// Base learning rate per 256 images; `None` picks the optimizer's usual value.
    pub lr: Option<f64>,
    /// Images per update for the `lr * batch / 256` scaling; `None` uses the views' batch
    /// size times `accumulate`.
    pub batch_size: Option<i64>,
    pub weight_decay: f64,
    /// Momentum of LARS / SGD (the paper's 0.9).
    pub optimizer_momentum: f64,
    pub eta: f64,
    pub betas: (f64, f64),
    pub adam_eps: f64,
    pub total_steps: i64,
    pub warmup_steps: i64,
    pub final_lr: f64,
    pub tau_base: f64,
    pub tau_final: f64,
    /// `true`: the target is a momentum (EMA) copy, as in BYOL. `false`: SimSiam (Chen & He,
    /// arXiv 2011.10566): the target is the online projection under stop-gradient, with no
    /// EMA and no second network in memory.
    pub momentum: bool,
    /// Optimizer updates happen on every `accumulate`-th call of `step`.
    pub accumulate: i64,
    /// Also EMA the target's BN running statistics (off: the target keeps its own, as in lightly).
    pub ema_bn_stats: bool,
    /// `raise` or `skip` on a non-finite loss.
    pub on_nonfinite: String,
    /// Where the non-finite check happens: `immediate` (the step reads the loss back and
    /// refuses at once), `deferred` (the device cancels the update itself and the host hears
    /// of it later, so the step never waits for the device), or `auto`: deferred on CUDA
    /// unless fp16 or data parallel needs the host to decide, immediate elsewhere.
    pub nonfinite_check: String,
    /// `fp32`, `bf16` or `fp16`: the forward runs under autocast in that dtype (weights, optimizer
    /// state and the loss stay fp32). For `fp16` the loss is scaled dynamically.
    pub precision: String,
    /// fp16's initial loss scale; halved after a step whose gradients overflow (that step is
    /// skipped), doubled after `loss_scale_growth_interval` good steps in a row.
    pub loss_scale: f64,
    pub loss_scale_growth_interval: i64,
    pub device: String,
    pub seed: i64,
    /// Run convolutions in NHWC memory order on CPU (always on for CUDA). On by default: oneDNN's
    /// NHWC kernels (and max-pool) are 1.4x faster for a ConvNet step here; off matches
    /// PyTorch's default NCHW summation order (benches/RESULTS.md).
    pub channels_last: bool,
    /// Accept settings refused as known to collapse.
    pub allow_unsafe: bool,
    /// `40ep`, `100ep`, `300ep` or `1000ep`: the paper's lr, weight decay and tau for that
    /// length, with 10 warm-up epochs; needs `steps_per_epoch`.
    pub preset: Option<String>,
    pub steps_per_epoch: Option<i64>,
    /// The augmentation pipeline `step(images)` applies; `None` means views are passed in.
    pub augment: Option<AugmentConfig>,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        let optim = OptimConfig::default();
        let net = NetworkConfig::default();
        Self {
            backbone: net.backbone.name,
            in_channels: 3,
            small_image: false,
            projector_hidden: net.projector_hidden,
            projection_dim: net.projection_dim,
            predictor_hidden: net.predictor_hidden,
            optimizer: optim.name,
            lr: None,
            batch_size: None,
            weight_decay: optim.weight_decay,
            optimizer_momentum: optim.momentum,
            eta: optim.eta,
            betas: optim.betas,
            adam_eps: optim.eps,
            total_steps: 1000,
            warmup_steps: 0,
            final_lr: 0.0,
            tau_base: 0.996,
            tau_final: 1.0,
            momentum: true,
            accumulate: 1,
            ema_bn_stats: false,
            on_nonfinite: "raise".into(),
            nonfinite_check: "auto".into(),
            precision: "fp32".into(),
            loss_scale: 65536.0,
            loss_scale_growth_interval: 2000,
            device: "cpu".into(),
            seed: 0,
            channels_last: true,
            allow_unsafe: false,
            preset: None,
            steps_per_epoch: None,
            augment: None,
        }
    }
}

/// The paper's settings by length (appendix, table of presets): epochs, lr, weight decay, tau.
const PRESETS: [(&str, i64, f64, f64, f64); 4] = [
    ("40ep", 40, 0.45, 1e-6, 0.97),
    ("100ep", 100, 0.45, 1e-6, 0.99),
    ("300ep", 300, 0.3, 1e-6, 0.99),
    ("1000ep", 1000, 0.2, 1.5e-6, 0.996),
];
const WARMUP_EPOCHS: i64 = 10;

impl LearnerConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| value_error("config", e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Applies the preset and the per-optimizer default lr, then validates.
    pub fn resolve(mut self) -> Result<Self> {
        if let Some(name) = self.preset.clone() {
            let Some(&(_, epochs, lr, wd, tau)) = PRESETS.iter().find(|p| p.0 == name) else {
                return Err(value_error("preset", format!("expected one of 40ep, 100ep, 300ep, 1000ep; got {name:?}")));
            };
            let Some(spe) = self.steps_per_epoch.filter(|&s| s > 0) else {
                return Err(value_error("steps_per_epoch", "a preset needs the number of optimizer steps per epoch (> 0)"));
            };
            self.lr = Some(lr);
            self.weight_decay = wd;
            self.tau_base = tau;
            self.total_steps = epochs * spe;
            self.warmup_steps = (WARMUP_EPOCHS * spe).min(self.total_steps);
        }
        if self.lr.is_none() {
            self.lr = Some(match self.optimizer.as_str() {
                "adamw" => 1e-3,
                "sgd" => 0.05,
                _ => 0.2,
            });
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        self.network().validate()?;
        if let Some(aug) = &self.augment {
            aug.validate()?;
            if aug.mean.len() > 1 && aug.mean.len() as i64 != self.in_channels {
                return Err(value_error("augment", format!("normalises {} channels but in_channels is {}; give it a mean/std per channel", aug.mean.len(), self.in_channels)));
            }
        }
        let lr = self.lr.unwrap_or(0.0);
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(value_error("lr", format!("must be finite and >= 0, got {lr}")));
        }
        if self.total_steps < 1 {
            return Err(value_error("total_steps", format!("must be >= 1, got {}", self.total_steps)));
        }
        if self.warmup_steps < 0 || self.warmup_steps > self.total_steps {
            return Err(value_error("warmup_steps", format!("must lie in [0, total_steps={}], got {}", self.total_steps, self.warmup_steps)));
        }
        for (arg, v) in [("tau_base", self.tau_base), ("tau_final", self.tau_final)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(value_error(arg, format!("must lie in [0, 1], got {v}")));
            }
        }
        if self.accumulate < 1 {
            return Err(value_error("accumulate", format!("must be >= 1, got {}", self.accumulate)));
        }
        if let Some(b) = self.batch_size {
            if b < 1 {
                return Err(value_error("batch_size", format!("must be >= 1, got {b}")));
            }
        }
        if !["raise", "skip"].contains(&self.on_nonfinite.as_str()) {
            return Err(value_error("on_nonfinite", format!("expected 'raise' or 'skip', got {:?}", self.on_nonfinite)));
        }
        if !["auto", "immediate", "deferred"].contains(&self.nonfinite_check.as_str()) {
            return Err(value_error("nonfinite_check", format!("expected 'auto', 'immediate' or 'deferred', got {:?}", self.nonfinite_check)));
        }
        if self.nonfinite_check == "deferred" && self.precision == "fp16" {
            return Err(value_error("nonfinite_check", "'deferred' does not combine with precision='fp16', whose dynamic loss scale is decided on the host; use 'auto' or 'immediate'"));
        }
        if !["fp32", "bf16", "fp16"].contains(&self.precision.as_str()) {
            return Err(value_error("precision", format!("expected 'fp32', 'bf16' or 'fp16', got {:?}", self.precision)));
        }
        if !(self.loss_scale.is_finite() && self.loss_scale > 0.0) {
            return Err(value_error("loss_scale", format!("must be finite and > 0, got {}", self.loss_scale)));
        }
        if self.loss_scale_growth_interval < 1 {
            return Err(value_error("loss_scale_growth_interval", format!("must be >= 1, got {}", self.loss_scale_growth_interval)));
        }
        self.device()?;
        self.optim().validate_name()?;
        if !self.allow_unsafe {
            self.refuse_known_collapses(lr)?;
        }
        Ok(())
    }

    /// Settings that are known to diverge or collapse; `allow_unsafe=True` accepts them.
    fn refuse_known_collapses(&self, lr: f64) -> Result<()> {
        if self.optimizer == "adamw" && lr >= 0.2 {
            return Err(value_error("lr", format!("{lr} is a LARS-scale learning rate; AdamW at 0.2 or more diverges and the representation collapses. Use about 1e-3 with AdamW, or pass allow_unsafe=True")));
        }
        if self.optimizer != "adamw" && lr > 10.0 {
            return Err(value_error("lr", format!("{lr} per 256 images is far above the paper's 0.2-0.45 and diverges; pass allow_unsafe=True to insist")));
        }
        if self.momentum && self.tau_base < 0.9 {
            return Err(value_error("tau_base", format!("{} makes the target follow the online network too closely, which the paper shows collapses (table 5a); use 0.9 or more, or pass allow_unsafe=True", self.tau_base)));
        }
        Ok(())
    }

    pub fn network(&self) -> NetworkConfig {
        NetworkConfig {
            backbone: BackboneConfig { name: self.backbone.clone(), in_channels: self.in_channels, small_image: self.small_image },
            projector_hidden: self.projector_hidden,
            projection_dim: self.projection_dim,
            predictor_hidden: self.predictor_hidden,
        }
    }

    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            name: self.optimizer.clone(),
            weight_decay: self.weight_decay,
            momentum: self.optimizer_momentum,
            eta: self.eta,
            betas: self.betas,
            eps: self.adam_eps,
        }
    }

    /// The autocast dtype, or `None` for fp32.
    pub fn autocast_kind(&self) -> Option<tch::Kind> {
        match self.precision.as_str() {
            "bf16" => Some(tch::Kind::BFloat16),
            "fp16" => Some(tch::Kind::Half),
            _ => None,
        }
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
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

impl OptimConfig {
    fn validate_name(&self) -> Result<()> {
        match self.name.as_str() {
            "lars" | "sgd" | "adamw" => Ok(()),
            other => Err(value_error("optimizer", format!("expected lars, sgd or adamw; got {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sets_paper_values() {
        let c = LearnerConfig { preset: Some("300ep".into()), steps_per_epoch: Some(10), ..Default::default() }.resolve().unwrap();
        assert_eq!((c.lr, c.weight_decay, c.tau_base, c.total_steps, c.warmup_steps), (Some(0.3), 1e-6, 0.99, 3000, 100));
    }

    #[test]
    fn adam_with_lars_lr_is_refused_unless_allowed() {
        let c = LearnerConfig { optimizer: "adamw".into(), lr: Some(0.2), ..Default::default() };
        assert!(c.clone().resolve().unwrap_err().to_string().starts_with("lr: 0.2 is a LARS-scale"));
        assert!(LearnerConfig { allow_unsafe: true, ..c }.resolve().is_ok());
    }
}
