//! BYOL's two networks (paper section 3.1, figure 2): the online network (encoder f, projector
//! g, predictor q) and the target (f and g), each laid out in flat buffers (`flat.rs`), with the
//! target's update, eq. 1.
use super::flat::FlatTensors;
use super::network::{network, ordered_variables, Network, NetworkConfig};
use super::norm::SyncHandle;
use crate::ema;
use crate::error::Result;
use crate::shim;
use tch::{nn, Device, Kind, Tensor};

pub struct OnlineTarget {
    _stores: (nn::VarStore, nn::VarStore),
    pub online: Network,
    /// `None` in SimSiam mode (`momentum=false`): the target is the online projection.
    pub target: Option<Network>,
    pub params: FlatTensors,
    pub buffers: FlatTensors,
    pub target_params: FlatTensors,
    pub target_buffers: FlatTensors,
    /// The online parameters' `.grad`, into which autograd accumulates.
    pub grads: FlatTensors,
}

/// The stop-gradient targets `[z'1, z'2]`, and in SimSiam the online projections they are.
pub type Targets = ([Tensor; 2], [Option<Tensor>; 2]);

impl OnlineTarget {
    /// Both networks (the target's weights still to be copied from the online ones, `sync_target`).
    /// With `nhwc` the convolution weights are channels_last inside the flat buffers.
    pub fn new(cfg: &NetworkConfig, momentum: bool, device: Device, nhwc: bool, sync: Option<&SyncHandle>) -> Result<Self> {
        let online_vs = nn::VarStore::new(device);
        let online = network(&online_vs.root(), cfg, true, sync)?;
        let target_vs = nn::VarStore::new(device);
        let target = momentum.then(|| network(&target_vs.root(), cfg, false, sync)).transpose()?;
        let (online_p, online_b) = ordered_variables(&online_vs);
        let (target_p, target_b) = ordered_variables(&target_vs);
        let params = FlatTensors::adopt(online_p, Kind::Float, device, nhwc)?;
        let buffers = FlatTensors::adopt(online_b, Kind::Float, device, false)?;
        let target_params = FlatTensors::adopt(target_p, Kind::Float, device, nhwc)?;
        let target_buffers = FlatTensors::adopt(target_b, Kind::Float, device, false)?;
        for t in &target_params.views {
            let _ = t.shallow_clone().f_set_requires_grad(false)?;
        }
        let grads = params.zeros_like()?;
        for (p, g) in params.views.iter().zip(&grads.views) {
            shim::set_grad(p, g)?;
        }
        Ok(Self { _stores: (online_vs, target_vs), online, target, params, buffers, target_params, target_buffers, grads })
    }

    /// The target becomes an exact copy of the online encoder and projector.
    pub fn sync_target(&self) -> Result<()> {
        self.ema(0.0, true)
    }

    /// Target update, eq. 1: one lerp over each flat buffer. The target's tensors pair with a
    /// prefix of the online ones (the same names, in the same order).
    pub fn ema(&self, tau: f64, with_buffers: bool) -> Result<()> {
        let pairs = [(&self.target_params, &self.params), (&self.target_buffers, &self.buffers)];
        for (target, online) in pairs.into_iter().take(if with_buffers { 2 } else { 1 }) {
            debug_assert!(online.names[..target.names.len()] == target.names[..]);
            let prefix = online.flat.f_narrow(0, 0, target.numel())?;
            ema::ema_update_(&[target.flat.shallow_clone()], &[prefix], tau)?;
        }
        Ok(())
    }

    /// The targets of both views under stop-gradient. A momentum target projects them with its
    /// own network; SimSiam's targets are the online projections, returned too so that the
    /// step uses them rather than projecting (and updating BN statistics) twice.
    pub fn targets(&self, views: &[Tensor; 2]) -> Result<Targets> {
        match &self.target {
            Some(target) => {
                let t = super::no_grad(|| Ok::<_, crate::Error>([target.project(&views[0], true)?, target.project(&views[1], true)?]))?;
                Ok((t, [None, None]))
            }
            None => {
                let z = [self.online.project(&views[0], true)?, self.online.project(&views[1], true)?];
                let t = [z[0].f_detach()?, z[1].f_detach()?];
                let [z1, z2] = z;
                Ok((t, [Some(z1), Some(z2)]))
            }
        }
    }

    /// Both networks' BN running statistics as `(copy, live buffer)` pairs, so that a step
    /// can put them back.
    pub fn stats(&self) -> Result<Vec<(Tensor, Tensor)>> {
        [&self.buffers, &self.target_buffers].iter().map(|b| Ok((b.flat.f_detach_copy()?, b.flat.shallow_clone()))).collect()
    }

    pub fn zero_grads(&self) -> Result<()> {
        let _ = super::no_grad(|| self.grads.flat.shallow_clone().f_zero_())?;
        Ok(())
    }

    /// Backbone weights and BN statistics under torchvision's names (no `fc`), plus the
    /// `num_batches_tracked` counters torchvision's BN layers carry (`steps` updates).
    pub fn backbone_state_dict(&self, steps: i64) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (name, t) in self.params.named().chain(self.buffers.named()) {
            if let Some(key) = name.strip_prefix("backbone.") {
                out.push((key.to_string(), t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?));
                if let Some(bn) = key.strip_suffix(".running_mean") {
                    out.push((format!("{bn}.num_batches_tracked"), Tensor::from(steps)));
                }
            }
        }
        Ok(out)
    }
}
