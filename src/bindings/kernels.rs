//! Free functions: the fused loss, the fused EMA and the schedules.
use super::errors::run;
use crate::{ema, loss, schedule};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

fn variant(simplified: bool) -> loss::Variant {
    if simplified { loss::Variant::CosineSimilarity } else { loss::Variant::Normalize }
}

/// Forward of the BYOL loss: returns `(loss, saved)`; `saved` feeds the backward.
#[pyfunction]
#[pyo3(signature = (p, z, simplified=true))]
fn byol_loss_forward(py: Python<'_>, p: PyTensor, z: PyTensor, simplified: bool) -> PyResult<(PyTensor, PyTensor)> {
    let out = run(py, move || loss::byol_loss_forward(&p, &z, variant(simplified)))?;
    Ok((PyTensor(out.loss), PyTensor(out.saved)))
}

/// Analytic gradient of the BYOL loss with respect to `p`.
#[pyfunction]
fn byol_loss_backward(py: Python<'_>, grad: PyTensor, p: PyTensor, z: PyTensor, saved: PyTensor) -> PyResult<PyTensor> {
    run(py, move || loss::byol_loss_backward(&grad, &p, &z, &saved)).map(PyTensor)
}

/// `target[i] <- tau * target[i] + (1 - tau) * online[i]`, in place, under no_grad.
#[pyfunction]
fn ema_update_(py: Python<'_>, target: Vec<PyTensor>, online: Vec<PyTensor>, tau: f64) -> PyResult<()> {
    let target: Vec<_> = target.into_iter().map(|t| t.0).collect();
    let online: Vec<_> = online.into_iter().map(|t| t.0).collect();
    run(py, move || ema::ema_update_(&target, &online, tau))
}

/// The paper's target decay: rises from `base` to `final` on a cosine.
#[pyfunction]
#[pyo3(signature = (step, total_steps, base=0.996, r#final=1.0))]
fn cosine_tau(py: Python<'_>, step: i64, total_steps: i64, base: f64, r#final: f64) -> PyResult<f64> {
    run(py, move || schedule::cosine_tau(step, total_steps, base, r#final))
}

/// Linear warm-up to `base_lr`, then cosine decay to `final_lr`.
#[pyfunction]
#[pyo3(signature = (step, total_steps, warmup_steps, base_lr, final_lr=0.0))]
fn warmup_cosine_lr(py: Python<'_>, step: i64, total_steps: i64, warmup_steps: i64, base_lr: f64, final_lr: f64) -> PyResult<f64> {
    run(py, move || schedule::warmup_cosine_lr(step, total_steps, warmup_steps, base_lr, final_lr))
}

/// The engine's fused training-mode `relu?(batch_norm(x) + residual?)` (for tests and benches):
/// `None` where the inputs are not fp32 CPU rows of channels and the engine would use ATen.
#[pyfunction]
#[pyo3(signature = (x, weight, bias, running_mean, running_var, residual=None, relu=true, momentum=0.1, eps=1e-5))]
#[allow(clippy::too_many_arguments)]
fn _batch_norm_act(
    py: Python<'_>,
    x: PyTensor,
    weight: PyTensor,
    bias: PyTensor,
    running_mean: PyTensor,
    running_var: PyTensor,
    residual: Option<PyTensor>,
    relu: bool,
    momentum: f64,
    eps: f64,
) -> PyResult<Option<PyTensor>> {
    let out = run(py, move || {
        crate::shim::batch_norm_act(&x, &weight, &bias, residual.as_deref(), &running_mean, &running_var, momentum, eps, relu)
    })?;
    Ok(out.map(PyTensor))
}

/// The engine's Winograd F(2x2, 3x3) convolution, stride 1, padding 1, no bias (for tests and
/// benches): `None` where the inputs are not fp32 CPU NHWC with even height and width.
#[pyfunction]
fn _winograd_conv3x3(py: Python<'_>, x: PyTensor, weight: PyTensor) -> PyResult<Option<PyTensor>> {
    let out = run(py, move || crate::shim::winograd_conv3x3(&x, &weight))?;
    Ok(out.map(PyTensor))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_batch_norm_act, m)?)?;
    m.add_function(wrap_pyfunction!(_winograd_conv3x3, m)?)?;
    m.add_function(wrap_pyfunction!(byol_loss_forward, m)?)?;
    m.add_function(wrap_pyfunction!(byol_loss_backward, m)?)?;
    m.add_function(wrap_pyfunction!(ema_update_, m)?)?;
    m.add_function(wrap_pyfunction!(cosine_tau, m)?)?;
    m.add_function(wrap_pyfunction!(warmup_cosine_lr, m)?)?;
    Ok(())
}
