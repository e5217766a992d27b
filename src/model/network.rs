//! One BYOL branch: encoder f, projector g and (online only) predictor q (paper section 3.1).
use super::backbone::{backbone, Backbone, BackboneConfig};
use super::heads::{mlp, Mlp};
use super::norm::SyncHandle;
use crate::error::{value_error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub backbone: BackboneConfig,
    pub projector_hidden: i64,
    pub projection_dim: i64,
    pub predictor_hidden: i64,
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("projector_hidden", self.projector_hidden),
            ("projection_dim", self.projection_dim),
            ("predictor_hidden", self.predictor_hidden),
        ] {
            if v < 1 {
                return Err(value_error(arg, format!("must be >= 1, got {v}")));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Network {
    pub backbone: Backbone,
    pub projector: Mlp,
    pub predictor: Option<Mlp>,
}

/// Top-level module names in the order their parameters are laid out in flat buffers: the
/// target's (backbone, projector) then form a prefix of the online's.
pub const MODULE_ORDER: [&str; 3] = ["backbone", "projector", "predictor"];

pub fn network(p: &nn::Path, cfg: &NetworkConfig, with_predictor: bool, sync: Option<&SyncHandle>) -> Result<Network> {
    cfg.validate()?;
    let feat = cfg.backbone.feature_dim();
    Ok(Network {
        backbone: backbone(&(p / "backbone"), &cfg.backbone, sync)?,
        projector: mlp(&(p / "projector"), feat, cfg.projector_hidden, cfg.projection_dim, sync),
        predictor: with_predictor
            .then(|| mlp(&(p / "predictor"), cfg.projection_dim, cfg.predictor_hidden, cfg.projection_dim, sync)),
    })
}

impl Network {
    /// `z = g(f(x))`.
    pub fn project(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.projector.forward(&self.backbone.forward(x, train)?, train)
    }

    /// `q(z)`; the target network has no predictor and returns `z` unchanged.
    pub fn predict(&self, z: &Tensor, train: bool) -> Result<Tensor> {
        match &self.predictor {
            Some(q) => q.forward(z, train),
            None => Ok(z.shallow_clone()),
        }
    }
}

/// The VarStore's variables split into (trainable, buffers), each in `MODULE_ORDER`, then by name.
pub fn ordered_variables(vs: &nn::VarStore) -> (Vec<(String, Tensor)>, Vec<(String, Tensor)>) {
    let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let rank = |name: &str| MODULE_ORDER.iter().position(|m| name.starts_with(&format!("{m}."))).unwrap_or(MODULE_ORDER.len());
    all.sort_by(|(a, _), (b, _)| (rank(a), a).cmp(&(rank(b), b)));
    all.into_iter().partition(|(_, t)| t.requires_grad())
}
