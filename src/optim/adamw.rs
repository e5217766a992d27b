//! AdamW (Loshchilov & Hutter, arXiv 1711.05101) with torch.optim.AdamW's update order:
//! decoupled decay `w *= 1 - lr * wd`, then the bias-corrected Adam step, computed as its
//! single-tensor path does (`lerp_`, `addcmul_`, `sqrt / sqrt(c2) + eps`, `addcdiv_`).
use super::{decay_per_param, device_scalar, named_state, Optimizer};
use crate::error::Result;
use crate::model::flat::FlatTensors;
use tch::Tensor;

pub struct AdamW {
    betas: (f64, f64),
    eps: f64,
    exp_avg: FlatTensors,
    exp_avg_sq: FlatTensors,
    /// `weight_decay` per parameter, 0 on excluded ones, and each parameter's element count.
    decay: Tensor,
    spans: Tensor,
}

impl AdamW {
    pub fn new(params: &FlatTensors, excluded: &[bool], weight_decay: f64, betas: (f64, f64), eps: f64) -> Result<Self> {
        let (exp_avg, exp_avg_sq) = (params.zeros_like()?, params.zeros_like()?);
        let decay = decay_per_param(params, excluded, weight_decay)?;
        Ok(Self { betas, eps, exp_avg, exp_avg_sq, decay, spans: params.spans()? })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &FlatTensors, grads: &FlatTensors, lr: f64, t: i64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (b1, b2) = self.betas;
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        // In place throughout, as LARS: the gradient buffer, cleared after the update anyway,
        // holds g^2 and then the step; no buffer-sized temporaries (fresh memory page-faults on CPU).
        let w = params.flat.shallow_clone();
        let mut g = grads.flat.shallow_clone();
        let (mut m, mut v) = (self.exp_avg.flat.shallow_clone(), self.exp_avg_sq.flat.shallow_clone());
        params.mul_slices_(&w, &self.decay.f_mul_scalar(-lr)?.f_add_scalar(1.0)?, &self.spans)?;
        let _ = m.f_lerp_(&g, 1.0 - b1)?;
        let _ = g.f_mul_(&g.shallow_clone())?;
        let _ = v.f_mul_scalar_(b2)?.f_addcmul_(&g, &device_scalar(1.0 - b2, &w)?)?;
        let _ = v.f_sqrt_out(&g)?;
        let _ = g.f_div_scalar_(c2.sqrt())?.f_add_scalar_(self.eps)?;
        let _ = m.f_div_out(&g, &g)?;
        let _ = w.shallow_clone().f_addcmul_(&g, &device_scalar(-lr / c1, &w)?)?;
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named_state("exp_avg", &self.exp_avg);
        s.extend(named_state("exp_avg_sq", &self.exp_avg_sq));
        s
    }

    fn flat_state(&self) -> Vec<Tensor> {
        vec![self.exp_avg.flat.shallow_clone(), self.exp_avg_sq.flat.shallow_clone()]
    }
}
