//! Optimizers over flat parameter buffers. All updates run under no_grad and issue no host
//! synchronisation (trust ratios stay on the device).
mod adamw;
mod lars;

pub use adamw::AdamW;
pub use lars::Lars;

use crate::config::schema::config_enum;
use crate::error::{value_error, Result};
use crate::model::flat::FlatTensors;
use serde::{Deserialize, Serialize};
use tch::Tensor;

config_enum! {
    /// The paper's LARS, plain SGD with momentum (LARS without the trust ratio), or AdamW.
    pub enum OptimizerKind { Lars = "lars", Sgd = "sgd", AdamW = "adamw" }
}

/// Hyperparameters of every optimizer (defaults: `config::OptimizerSettings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub name: OptimizerKind,
    pub weight_decay: f64,
    pub momentum: f64,
    /// LARS trust coefficient.
    pub eta: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

pub trait Optimizer: Send {
    /// Updates `params` in place from `grads` at learning rate `lr`. `t` counts updates from 1.
    fn step(&mut self, params: &FlatTensors, grads: &FlatTensors, lr: f64, t: i64) -> Result<()>;
    /// The state as named views (`<param>.<slot>`), for checkpoints and inspection.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// The state's flat buffers, which a cancelled update restores.
    fn flat_state(&self) -> Vec<Tensor>;
}

/// `excluded[i]` marks biases and BN parameters, which get neither weight decay nor LARS
/// adaptation.
pub fn build(cfg: &OptimConfig, params: &FlatTensors, excluded: &[bool]) -> Result<Box<dyn Optimizer>> {
    if !(cfg.weight_decay >= 0.0) {
        return Err(value_error("weight_decay", format!("must be >= 0, got {}", cfg.weight_decay)));
    }
    if !(0.0..1.0).contains(&cfg.momentum) {
        return Err(value_error("optimizer_momentum", format!("must lie in [0, 1), got {}", cfg.momentum)));
    }
    match cfg.name {
        OptimizerKind::Lars => {
            if !(cfg.eta > 0.0) {
                return Err(value_error("eta", format!("must be > 0, got {}", cfg.eta)));
            }
            Ok(Box::new(Lars::new(params, excluded, cfg.weight_decay, cfg.momentum, Some(cfg.eta))?))
        }
        OptimizerKind::Sgd => Ok(Box::new(Lars::new(params, excluded, cfg.weight_decay, cfg.momentum, None)?)),
        OptimizerKind::AdamW => {
            let (b1, b2) = cfg.betas;
            if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
                return Err(value_error("betas", format!("both must lie in [0, 1), got {:?}", cfg.betas)));
            }
            Ok(Box::new(AdamW::new(params, excluded, cfg.weight_decay, cfg.betas, cfg.eps)?))
        }
    }
}

/// `weight_decay` per parameter, 0 for `excluded` ones, as a `[P]` tensor beside the buffer.
fn decay_per_param(params: &FlatTensors, excluded: &[bool], weight_decay: f64) -> Result<Tensor> {
    let per_param: Vec<f64> = excluded.iter().map(|&e| if e { 0.0 } else { weight_decay }).collect();
    Ok(Tensor::from_slice(&per_param).f_to_device(params.flat.device())?.f_to_kind(params.flat.kind())?)
}

/// A 0-dim factor like `like`'s: a fill on its device, not a host-to-device copy (which would
/// synchronise a CUDA step).
fn device_scalar(x: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_full([], x, (like.kind(), like.device()))?)
}

/// Named views of a state buffer: `<param>.<slot>`.
fn named_state(slot: &str, buf: &FlatTensors) -> Vec<(String, Tensor)> {
    buf.named().map(|(n, t)| (format!("{n}.{slot}"), t.shallow_clone())).collect()
}
