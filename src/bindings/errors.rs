//! The one place where engine errors become Python exceptions. The classes live in
//! `byol_rs/errors.py` so that each can derive from both `ByolError` and a builtin.
use crate::error::Error;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

fn class_name(err: &Error) -> &'static str {
    match err {
        Error::Value { .. } | Error::Torch(_) => "ByolValueError",
        Error::Type { .. } => "ByolTypeError",
        Error::NonFiniteLoss { .. } => "NonFiniteLossError",
        Error::Checkpoint { .. } | Error::Io(_) => "CheckpointError",
        Error::Distributed(_) => "DistributedError",
    }
}

pub fn to_py(err: Error) -> PyErr {
    Python::with_gil(|py| {
        let class = py
            .import("byol_rs.errors")
            .and_then(|m| m.getattr(class_name(&err)));
        match class {
            Ok(class) => PyErr::from_value(class.call1((err.to_string(),)).unwrap_or_else(|e| e.into_value(py).into_bound(py).into_any())),
            Err(_) => PyValueError::new_err(err.to_string()),
        }
    })
}

/// Runs `f` with the GIL released; engine errors and panics come back as Python exceptions.
pub fn run<T: Send, F: FnOnce() -> crate::Result<T> + Send>(py: Python<'_>, f: F) -> PyResult<T> {
    let out = py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!("internal error in byol_rs (please report): {msg}")))
        }
    }
}
