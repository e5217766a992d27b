//! LARS (You et al., arXiv 1708.03888) exactly as the official BYOL code chains it
//! (byol/utils/optimizers.py): add weight decay, scale by the trust ratio
//! `eta * |w| / |g|` (1 where either norm is 0), momentum `m = mu * m + g`, then `w -= lr * m`.
//! With no `eta` it is SGD with momentum and decoupled-from-nothing L2 decay, as torch.optim.SGD.
//!
//! The update runs over the flat buffers: weight decay is one `_foreach_add_` over the decayed
//! parameters' slices, trust ratios are applied to each parameter's span
//! (`FlatTensors::mul_slices_`), and all norms come from one `_foreach_norm`, so a step is a
//! dozen kernels whatever the number of parameters.
use super::{device_scalar, named_state, Optimizer};
use crate::error::Result;
use crate::model::flat::FlatTensors;
use crate::shim;
use tch::Tensor;

pub struct Lars {
    momentum: f64,
    eta: Option<f64>,
    buffers: FlatTensors,
    weight_decay: f64,
    /// Indices of the parameters that get weight decay (not biases or BN parameters).
    decayed: Vec<usize>,
    /// Per parameter: its element count, and whether LARS adapts it.
    spans: Tensor,
    adapted: Tensor,
}

impl Lars {
    pub fn new(params: &FlatTensors, excluded: &[bool], weight_decay: f64, momentum: f64, eta: Option<f64>) -> Result<Self> {
        let spans = params.spans()?;
        let adapted = Tensor::from_slice(&excluded.iter().map(|&e| !e).collect::<Vec<_>>()).f_to_device(params.flat.device())?;
        let decayed = excluded.iter().enumerate().filter(|(_, &e)| !e).map(|(i, _)| i).collect();
        Ok(Self { momentum, eta, buffers: params.zeros_like()?, weight_decay, decayed, spans, adapted })
    }
}

impl Optimizer for Lars {
    fn step(&mut self, params: &FlatTensors, grads: &FlatTensors, lr: f64, _t: i64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        // In place throughout: the gradients are cleared after the update anyway, and on CPU
        // each buffer-sized temporary is fresh memory whose page faults cost more than the math
        // (three of them took 12 % of a ResNet-18 step).
        let w = &params.flat;
        let g = grads.flat.shallow_clone();
        if self.weight_decay > 0.0 {
            // Per slice, not through a buffer-sized decay tensor: that one cost as much memory
            // as the weights.
            let pick = |all: Vec<Tensor>| self.decayed.iter().map(|&i| all[i].shallow_clone()).collect::<Vec<_>>();
            shim::foreach_add_(&pick(params.slices_of(&g)?), &pick(params.slices_of(w)?), self.weight_decay)?;
        }
        if let Some(eta) = self.eta {
            let wn = shim::foreach_norm(&params.slices_of(w)?)?;
            let gn = shim::foreach_norm(&params.slices_of(&g)?)?;
            let one = wn.f_ones_like()?;
            let usable = self.adapted.f_logical_and(&wn.f_gt(0.0)?)?.f_logical_and(&gn.f_gt(0.0)?)?;
            let ratio = (&wn * eta).f_div(&gn)?.f_where_self(&usable, &one)?.f_to_kind(g.kind())?;
            params.mul_slices_(&g, &ratio, &self.spans)?;
        }
        let mut m = self.buffers.flat.shallow_clone();
        let _ = m.f_mul_scalar_(self.momentum)?.f_add_(&g)?;
        let _ = w.shallow_clone().f_addcmul_(&m, &device_scalar(-lr, w)?)?;
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        named_state("momentum_buffer", &self.buffers)
    }

    fn flat_state(&self) -> Vec<Tensor> {
        vec![self.buffers.flat.shallow_clone()]
    }
}
