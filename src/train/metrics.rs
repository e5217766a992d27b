//! What a step reports, read from the device only when asked.
use crate::error::Result;
use tch::Tensor;

/// A metric that may still be on the device. Reading a `Device` value waits for the device,
/// so the step hands it over unread and the caller reads it only when it needs it.
#[derive(Debug)]
pub enum Reading {
    Host(f64),
    Device(Tensor),
}

impl Reading {
    pub fn value(&self) -> Result<f64> {
        match self {
            Reading::Host(v) => Ok(*v),
            Reading::Device(t) => Ok(t.f_double_value(&[])?),
        }
    }
}

/// What one call of `step` reports.
#[derive(Debug)]
pub struct StepMetrics {
    pub loss: Reading,
    pub lr: f64,
    pub tau: f64,
    /// Optimizer updates done so far (after this call).
    pub step: i64,
    /// Mean over dimensions of the std of l2-normalised online projections; 1/sqrt(d) is ideal, 0 is collapse.
    pub z_std: Reading,
    /// Whether this call ended an accumulation window and updated the weights.
    pub updated: bool,
    pub skipped_steps: i64,
    /// fp16's dynamic loss scale after this call (1 for fp32 and bf16).
    pub loss_scale: f64,
}
