//! `byol_rs._core.Learner`: one engine `train::Learner` behind a mutex (tch tensors are not Sync).
use super::augment::{ImagesArg, OwnedImages};
use super::errors::run;
use crate::checkpoint;
use crate::config::LearnerConfig;
use crate::train::{Learner, Reading as StepReading, StepMetrics};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use std::path::PathBuf;
use crate::distributed::{Collective, Dist};
use std::sync::{Arc, Mutex};
use tch::Tensor;

/// A torch.distributed process group as Python hands it over.
#[derive(FromPyObject)]
pub struct GroupSpec(PyObject, i64, i64, bool);

impl GroupSpec {
    fn into_dist(self) -> Dist {
        let GroupSpec(all_reduce_sum, rank, world_size, sync_bn) = self;
        Dist::new(Arc::new(PyCollective { all_reduce_sum, rank, world_size }), sync_bn)
    }
}

/// Collectives through `torch.distributed`: a Python callable that sums a tensor in place.
struct PyCollective {
    all_reduce_sum: PyObject,
    rank: i64,
    world_size: i64,
}

impl Collective for PyCollective {
    fn rank(&self) -> i64 {
        self.rank
    }

    fn world_size(&self) -> i64 {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<(), String> {
        Python::with_gil(|py| {
            self.all_reduce_sum.call1(py, (PyTensor(t.shallow_clone()),)).map(drop).map_err(|e| e.to_string())
        })
    }
}

#[pyclass(name = "Learner", module = "byol_rs._core")]
pub struct PyLearner(Mutex<Learner>);

/// A metric still on the device goes to Python as a 0-d tensor; `byol_rs.StepMetrics` reads it
/// on first access, so that the step itself never waits for the device.
fn reading<'py>(py: Python<'py>, r: StepReading) -> PyResult<Bound<'py, PyAny>> {
    Ok(match r {
        StepReading::Host(v) => v.into_pyobject(py)?.into_any(),
        StepReading::Device(t) => PyTensor(t).into_pyobject(py)?.into_any(),
    })
}

fn metrics_dict(py: Python<'_>, m: StepMetrics) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("loss", reading(py, m.loss)?)?;
    d.set_item("lr", m.lr)?;
    d.set_item("tau", m.tau)?;
    d.set_item("step", m.step)?;
    d.set_item("z_std", reading(py, m.z_std)?)?;
    d.set_item("updated", m.updated)?;
    d.set_item("skipped_steps", m.skipped_steps)?;
    d.set_item("loss_scale", m.loss_scale)?;
    Ok(d)
}

fn named(py: Python<'_>, items: Vec<(String, Tensor)>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (k, t) in items {
        d.set_item(k, PyTensor(t))?;
    }
    Ok(d)
}

/// Name/tensor pairs that share storage with the engine's flat buffer.
fn shared(flat: &crate::model::flat::FlatTensors) -> Vec<(String, Tensor)> {
    flat.named().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

impl PyLearner {
    fn with<T>(&self, f: impl FnOnce(&mut Learner) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

#[pymethods]
impl PyLearner {
    /// Builds a learner from a JSON config (see `byol_rs.BYOL` for the fields). `group`, when
    /// given, is `(all_reduce_sum, rank, world_size, sync_bn)` for a data-parallel run.
    #[new]
    #[pyo3(signature = (config_json, group=None))]
    fn new(py: Python<'_>, config_json: String, group: Option<GroupSpec>) -> PyResult<Self> {
        let dist = group.map(GroupSpec::into_dist);
        let learner = run(py, move || Learner::with_dist(LearnerConfig::from_json(&config_json)?, dist))?;
        Ok(Self(Mutex::new(learner)))
    }

    /// One training step; returns the metrics as a dict.
    fn step<'py>(&self, py: Python<'py>, view1: PyTensor, view2: PyTensor) -> PyResult<Bound<'py, PyDict>> {
        let (v1, v2) = (view1.0, view2.0);
        let m = run(py, move || self.with(|l| l.step(&v1, &v2)))?;
        metrics_dict(py, m)
    }

    /// Augments `images` (a batch, or a list of images of any sizes) with the learner's
    /// pipeline, then steps.
    #[pyo3(signature = (images, layout="auto"))]
    fn step_images<'py>(&self, py: Python<'py>, images: ImagesArg, layout: &str) -> PyResult<Bound<'py, PyDict>> {
        let (images, layout) = (OwnedImages::from(images), layout.to_string());
        let m = run(py, move || self.with(|l| l.step_images(images.images(), crate::augment::Layout::parse(&layout)?)))?;
        metrics_dict(py, m)
    }

    /// Changes the length of the lr and tau schedules from here on.
    fn set_total_steps(&self, py: Python<'_>, total: i64) -> PyResult<()> {
        run(py, || self.with(|l| l.settle(true).and_then(|_| l.set_total_steps(total))))
    }

    /// Eval-mode backbone features of `x`.
    fn embed(&self, py: Python<'_>, x: PyTensor) -> PyResult<PyTensor> {
        let x = x.0;
        run(py, move || self.with(|l| l.embed(&x))).map(PyTensor)
    }

    fn named_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named(py, self.with(|l| shared(l.params())))
    }

    fn target_named_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named(py, self.with(|l| shared(l.target_params())))
    }

    fn named_buffers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named(py, self.with(|l| shared(l.buffers())))
    }

    fn target_named_buffers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named(py, self.with(|l| shared(l.target_buffers())))
    }

    fn optimizer_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        named(py, self.with(|l| l.optimizer_state()))
    }

    fn backbone_state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items = run(py, || self.with(|l| l.backbone_state_dict()))?;
        named(py, items)
    }

    /// The resolved config as JSON.
    fn config_json(&self) -> String {
        self.with(|l| l.config().to_json())
    }

    /// `(rank, world_size)`; `(0, 1)` outside a data-parallel run.
    #[getter]
    fn rank_world(&self) -> (i64, i64) {
        self.with(|l| l.dist().map_or((0, 1), |d| (d.rank(), d.world_size())))
    }

    /// Updates done so far; waits for the device's pending checks first.
    #[getter]
    fn step_count(&self, py: Python<'_>) -> PyResult<i64> {
        run(py, || self.with(|l| l.settle(true).map(|_| l.step_count())))
    }

    #[getter]
    fn skipped_steps(&self, py: Python<'_>) -> PyResult<i64> {
        run(py, || self.with(|l| l.settle(true).map(|_| l.skipped_steps())))
    }

    /// Waits until the device has checked every step so far; raises the pending non-finite
    /// loss error, if any.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        run(py, || self.with(|l| l.settle(true)))
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        run(py, || self.with(|l| l.settle(true).and_then(|_| checkpoint::save(l, &path))))
    }

    #[staticmethod]
    #[pyo3(signature = (path, device=None, group=None))]
    fn load(py: Python<'_>, path: PathBuf, device: Option<String>, group: Option<GroupSpec>) -> PyResult<Self> {
        let dist = group.map(GroupSpec::into_dist);
        let learner = run(py, move || checkpoint::load(&path, device.as_deref(), dist))?;
        Ok(Self(Mutex::new(learner)))
    }
}

