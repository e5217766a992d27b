//! Evaluation (`byol_rs.eval`) and dataset readers.
use super::errors::run;
use crate::data::idx;
use crate::eval::linear::{LinearProbe, ProbeConfig};
use crate::eval::{diagnostics, knn};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use std::path::PathBuf;
use std::sync::Mutex;

#[pyfunction]
#[pyo3(signature = (train, train_labels, queries, k=200, temperature=0.1, chunk=512))]
fn knn_predict(py: Python<'_>, train: PyTensor, train_labels: PyTensor, queries: PyTensor, k: i64, temperature: f64, chunk: i64) -> PyResult<PyTensor> {
    let cfg = knn::KnnConfig { k, temperature, chunk };
    run(py, move || knn::knn_predict(&train, &train_labels, &queries, cfg)).map(PyTensor)
}

#[pyfunction]
#[pyo3(signature = (train, train_labels, test, test_labels, k=200, temperature=0.1, chunk=512))]
#[allow(clippy::too_many_arguments)]
fn knn_accuracy(py: Python<'_>, train: PyTensor, train_labels: PyTensor, test: PyTensor, test_labels: PyTensor, k: i64, temperature: f64, chunk: i64) -> PyResult<f64> {
    let cfg = knn::KnnConfig { k, temperature, chunk };
    run(py, move || knn::knn_accuracy(&train, &train_labels, &test, &test_labels, cfg))
}

#[pyfunction]
fn z_std(py: Python<'_>, embeddings: PyTensor) -> PyResult<f64> {
    run(py, move || diagnostics::z_std(&embeddings))
}

#[pyfunction]
fn effective_rank(py: Python<'_>, embeddings: PyTensor) -> PyResult<f64> {
    run(py, move || diagnostics::effective_rank(&embeddings))
}

#[pyfunction]
fn read_idx(py: Python<'_>, path: PathBuf) -> PyResult<PyTensor> {
    run(py, move || idx::read_idx(&path)).map(PyTensor)
}

#[pyclass(name = "LinearProbe", module = "byol_rs._core")]
pub struct PyLinearProbe(Mutex<LinearProbe>);

#[pymethods]
impl PyLinearProbe {
    /// Fits on `features`/`labels`; with one value in `c_grid` and `select=False`, no held-out split.
    #[staticmethod]
    #[pyo3(signature = (features, labels, c_grid, val_fraction=0.1, max_iter=100, tol=1e-6, seed=0, select=true))]
    #[allow(clippy::too_many_arguments)]
    fn fit(py: Python<'_>, features: PyTensor, labels: PyTensor, c_grid: Vec<f64>, val_fraction: f64, max_iter: i64, tol: f64, seed: u64, select: bool) -> PyResult<Self> {
        let cfg = ProbeConfig { c_grid, val_fraction, max_iter, tol, seed };
        let probe = run(py, move || {
            if select {
                LinearProbe::fit(&features, &labels, &cfg)
            } else {
                let c = *cfg.c_grid.first().ok_or_else(|| crate::error::value_error("c_grid", "needs one value"))?;
                LinearProbe::fit_fixed(&features, &labels, c, &cfg)
            }
        })?;
        Ok(Self(Mutex::new(probe)))
    }

    fn predict_proba(&self, py: Python<'_>, features: PyTensor) -> PyResult<PyTensor> {
        run(py, move || self.0.lock().unwrap().predict_proba(&features)).map(PyTensor)
    }

    fn accuracy(&self, py: Python<'_>, features: PyTensor, labels: PyTensor) -> PyResult<f64> {
        run(py, move || self.0.lock().unwrap().accuracy(&features, &labels))
    }

    #[getter]
    fn c(&self) -> f64 {
        self.0.lock().unwrap().c
    }

    #[getter]
    fn val_accuracy(&self) -> Vec<f64> {
        self.0.lock().unwrap().val_accuracy.clone()
    }

    /// `(weight [D, classes], bias [classes])` on standardised features.
    #[getter]
    fn coef(&self) -> (PyTensor, PyTensor) {
        let p = self.0.lock().unwrap();
        (PyTensor(p.weight.shallow_clone()), PyTensor(p.bias.shallow_clone()))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLinearProbe>()?;
    for f in [
        wrap_pyfunction!(knn_predict, m)?,
        wrap_pyfunction!(knn_accuracy, m)?,
        wrap_pyfunction!(z_std, m)?,
        wrap_pyfunction!(effective_rank, m)?,
        wrap_pyfunction!(read_idx, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
