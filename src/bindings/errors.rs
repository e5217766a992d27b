//! The one place where engine errors become Python exceptions. The classes live in
//! `byol_rs/errors.py` so that each can derive from both `ByolError` and a builtin.
use crate::error::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn class_name(err: &Error) -> &'static str {
    match err {
        Error::Value { .. } => "ByolValueError",
        // Inputs are checked before they reach libtorch, so what it raises is a runtime failure:
        // out of memory, a CUDA or cuDNN error.
        Error::Torch(_) => "ByolRuntimeError",
        Error::Type { .. } => "ByolTypeError",
        Error::NonFiniteLoss { .. } => "NonFiniteLossError",
        Error::Checkpoint { .. } | Error::Io(_) => "CheckpointError",
        Error::Distributed(_) => "DistributedError",
    }
}

pub fn to_py(err: Error) -> PyErr {
    new_error(class_name(&err), err.to_string())
}

/// An instance of `byol_rs.errors.<class>`; a plain ValueError if that module cannot load.
fn new_error(class: &str, msg: String) -> PyErr {
    Python::with_gil(|py| {
        match py.import("byol_rs.errors").and_then(|m| m.getattr(class)) {
            Ok(class) => PyErr::from_value(class.call1((msg,)).unwrap_or_else(|e| e.into_value(py).into_bound(py).into_any())),
            Err(_) => PyValueError::new_err(msg),
        }
    })
}

/// Runs `f` with the GIL released; engine errors come back as Python exceptions. The engine
/// returns libtorch's failures (out of memory among them) as errors, so a panic is a bug: it is
/// caught as a last resort and raised as a `ByolRuntimeError`.
pub fn run<T: Send, F: FnOnce() -> crate::Result<T> + Send>(py: Python<'_>, f: F) -> PyResult<T> {
    // Autograd's mode is per thread, and Python's: put it back as it was if `f` panicked.
    let grad_enabled = unsafe { torch_sys::at_grad_set_enabled(1) };
    unsafe { torch_sys::at_grad_set_enabled(grad_enabled) };
    let out = py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            unsafe { torch_sys::at_grad_set_enabled(grad_enabled) };
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(new_error("ByolRuntimeError", format!("internal error in byol_rs (please report): {msg}")))
        }
    }
}
