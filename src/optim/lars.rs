//! LARS (You et al., arXiv 1708.03888) exactly as the official BYOL code chains it
//! (byol/utils/optimizers.py): add weight decay, scale by the trust ratio
//! `eta * |w| / |g|` (1 where either norm is 0), momentum `m = mu * m + g`, then `w -= lr * m`.
//! With no `eta` it is SGD with momentum and decoupled-from-nothing L2 decay, as torch.optim.SGD.
use super::{named_state, Optimizer};
use crate::error::Result;
use crate::model::flat::FlatTensors;
use tch::Tensor;

pub struct Lars {
    weight_decay: f64,
    momentum: f64,
    eta: Option<f64>,
    buffers: FlatTensors,
}

impl Lars {
    pub fn new(params: &FlatTensors, weight_decay: f64, momentum: f64, eta: Option<f64>) -> Result<Self> {
        Ok(Self { weight_decay, momentum, eta, buffers: params.zeros_like()? })
    }
}

/// `eta * |w| / |g|`, with 1 where either norm is zero; stays on the device.
fn trust_ratio(w: &Tensor, g: &Tensor, eta: f64) -> Result<Tensor> {
    let (wn, gn) = (w.f_norm()?, g.f_norm()?);
    let one = wn.f_ones_like()?;
    let ratio = (&wn * eta).f_div(&gn)?;
    Ok(ratio.f_where_self(&gn.f_gt(0.0)?, &one)?.f_where_self(&wn.f_gt(0.0)?, &one)?)
}

impl Optimizer for Lars {
    fn step(&mut self, params: &FlatTensors, grads: &FlatTensors, excluded: &[bool], lr: f64, _t: i64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (((w, g), m), &skip) in params.views.iter().zip(&grads.views).zip(&self.buffers.views).zip(excluded) {
            let mut g = g.shallow_clone();
            if !skip {
                g = g.f_add(&(w * self.weight_decay))?;
                if let Some(eta) = self.eta {
                    g = g.f_mul(&trust_ratio(w, &g, eta)?)?;
                }
            }
            let mut m = m.shallow_clone();
            let _ = m.f_mul_scalar_(self.momentum)?.f_add_(&g)?;
            let mut w = w.shallow_clone();
            let _ = w.f_sub_(&(&m * lr))?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        named_state("momentum_buffer", &self.buffers)
    }
}
