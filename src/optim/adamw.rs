//! AdamW (Loshchilov & Hutter, arXiv 1711.05101) with torch.optim.AdamW's update order:
//! decoupled decay `w *= 1 - lr * wd`, then the bias-corrected Adam step.
use super::{decay_per_element, named_state, Optimizer};
use crate::error::Result;
use crate::model::flat::FlatTensors;
use tch::Tensor;

pub struct AdamW {
    betas: (f64, f64),
    eps: f64,
    exp_avg: FlatTensors,
    exp_avg_sq: FlatTensors,
    /// `weight_decay` per element, 0 on excluded parameters.
    decay: Tensor,
}

impl AdamW {
    pub fn new(params: &FlatTensors, excluded: &[bool], weight_decay: f64, betas: (f64, f64), eps: f64) -> Result<Self> {
        let (exp_avg, exp_avg_sq) = (params.zeros_like()?, params.zeros_like()?);
        let decay = decay_per_element(params, excluded, &params.spans()?, weight_decay)?;
        Ok(Self { betas, eps, exp_avg, exp_avg_sq, decay })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &FlatTensors, grads: &FlatTensors, lr: f64, t: i64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (b1, b2) = self.betas;
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        let mut m_all = self.exp_avg.flat.shallow_clone();
        let mut v_all = self.exp_avg_sq.flat.shallow_clone();
        // Moments are elementwise: one kernel each over the flat buffers.
        let _ = m_all.f_mul_scalar_(b1)?.f_add_(&(&grads.flat * (1.0 - b1)))?;
        let _ = v_all.f_mul_scalar_(b2)?.f_add_(&(grads.flat.f_square()? * (1.0 - b2)))?;
        let mut w_all = params.flat.shallow_clone();
        let _ = w_all.f_mul_(&self.decay.f_mul_scalar(-lr)?.f_add_scalar(1.0)?)?;
        let denom = (v_all / c2).f_sqrt()? + self.eps;
        let _ = w_all.f_sub_(&((m_all / c1) / denom * lr))?;
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
