//! How the loss's gradient reaches the online network. The fused loss gives dL/dp analytically
//! (`loss.rs`); autograd pushes it through the network by backpropagating the surrogate
//! `sum(p * dL/dp)`. Whether each view's backward follows its forward at once or both views'
//! surrogates are summed and backpropagated once is the plan, chosen at construction.
use crate::config::{LearnerConfig, Precision};
use crate::error::Result;
use crate::loss::{self, LossForward};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BackwardPlan {
    /// Each view's backward straight after its forward, so that one view's activations are
    /// alive at a time instead of two. The flat buffer then sums the views' gradients in place
    /// of autograd, which gives the same bits (fp32 addition commutes, and the buffer held
    /// zeros); hence only in fp32 on the CPU, with one micro-step per update, a target network,
    /// no process group, and a loss read on the host at once (which skips a non-finite one's
    /// backward).
    PerView,
    /// Both views' surrogates summed, then one backward.
    Joint,
}

impl BackwardPlan {
    pub fn choose(config: &LearnerConfig, device: Device, data_parallel: bool, deferred_check: bool) -> Self {
        let per_view = device == Device::Cpu && config.method.accumulate == 1 && config.method.momentum && !data_parallel && config.amp.precision == Precision::Fp32 && !deferred_check;
        if per_view { BackwardPlan::PerView } else { BackwardPlan::Joint }
    }
}

/// One step's backward under a plan.
pub struct Backward {
    plan: BackwardPlan,
    /// `loss_scale / accumulate` as a 0-d tensor: a fill on the device, not a host-to-device
    /// copy (which would synchronise).
    scale: Tensor,
    /// The joint plan's views, `(p, target, loss)`, until `finish`.
    held: Vec<(Tensor, Tensor, LossForward)>,
    started: bool,
}

impl Backward {
    pub fn new(plan: BackwardPlan, scale: f64, device: Device) -> Result<Self> {
        Ok(Self { plan, scale: Tensor::f_full([], scale, (Kind::Float, device))?, held: vec![], started: false })
    }

    /// After a view's loss `l = L(p, target)`; `so_far` sums the losses up to this view. Per
    /// view, its backward runs now unless a loss so far is not finite.
    pub fn view(&mut self, p: Tensor, target: Tensor, l: LossForward, so_far: &Tensor) -> Result<()> {
        match self.plan {
            BackwardPlan::PerView => {
                if so_far.f_double_value(&[])?.is_finite() {
                    self.started = true;
                    surrogate(&self.scale, &p, &target, &l)?.f_backward()?;
                }
            }
            BackwardPlan::Joint => self.held.push((p, target, l)),
        }
        Ok(())
    }

    /// The joint plan's one backward, once the step's loss is accepted.
    pub fn finish(&mut self) -> Result<()> {
        let mut sum: Option<Tensor> = None;
        for (p, target, l) in std::mem::take(&mut self.held) {
            let s = surrogate(&self.scale, &p, &target, &l)?;
            sum = Some(match sum {
                Some(first) => first.f_add(&s)?,
                None => s,
            });
        }
        if let Some(sum) = sum {
            self.started = true;
            sum.f_backward()?;
        }
        Ok(())
    }

    /// Whether gradients may have reached the flat buffer.
    pub fn started(&self) -> bool {
        self.started
    }
}

/// `sum(p * dL/dp)` with dL/dp from the fused loss's analytic backward, scaled: its backward
/// pushes the loss's gradient through the online network.
fn surrogate(scale: &Tensor, p: &Tensor, target: &Tensor, l: &LossForward) -> Result<Tensor> {
    let g = loss::byol_loss_backward(scale, p, target, &l.saved)?;
    Ok(p.f_mul(&g)?.f_sum(Kind::Float)?)
}
