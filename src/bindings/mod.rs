//! The PyO3 layer: argument extraction, GIL release and error mapping only. No math here.
mod augment;
mod config;
mod errors;
mod eval;
mod kernels;
mod learner;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Tensors may only be wrapped once torch's Python side is initialised (tch-rs #723).
    m.py().import("torch")?;
    m.add("__torch_version__", crate::TORCH_VERSION)?;
    kernels::register(m)?;
    augment::register(m)?;
    eval::register(m)?;
    config::register(m)?;
    m.add_class::<learner::PyLearner>()?;
    Ok(())
}
