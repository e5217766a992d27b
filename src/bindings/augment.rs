//! `byol_rs._core.Augment` (the pipeline) and the per-sample functional ops it is built from.
use super::errors::run;
use crate::augment::config::AugmentConfig;
use crate::augment::params::{CropBox, SampleParams};
use crate::augment::{ops, to_unit_nchw, Augment, Images, Layout};
use crate::error::{value_error, Result};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// A batch tensor or a list of images, as Python passes them.
#[derive(FromPyObject)]
pub enum ImagesArg {
    Batch(PyTensor),
    List(Vec<PyTensor>),
}

/// `ImagesArg`'s tensors, owned, to move into a call that releases the GIL.
pub enum OwnedImages {
    Batch(Tensor),
    List(Vec<Tensor>),
}

impl From<ImagesArg> for OwnedImages {
    fn from(arg: ImagesArg) -> Self {
        match arg {
            ImagesArg::Batch(t) => Self::Batch(t.0),
            ImagesArg::List(v) => Self::List(v.into_iter().map(|t| t.0).collect()),
        }
    }
}

impl OwnedImages {
    pub fn images(&self) -> Images<'_> {
        match self {
            Self::Batch(t) => Images::Batch(t),
            Self::List(v) => Images::List(v),
        }
    }

    /// Where the views go when the caller names no device: where the images are.
    fn device(&self) -> tch::Device {
        match self {
            Self::Batch(t) => t.device(),
            Self::List(v) => v.first().map_or(tch::Device::Cpu, |t| t.device()),
        }
    }
}

#[pyclass(name = "Augment", module = "byol_rs._core")]
pub struct PyAugment(Mutex<Augment>);

impl PyAugment {
    fn with<T>(&self, f: impl FnOnce(&mut Augment) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Per-sample parameters as `[N, ...]` CPU tensors, for inspection and statistical tests.
fn params_dict<'py>(py: Python<'py>, ps: &[SampleParams]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let boxes: Vec<i64> = ps.iter().flat_map(|p| [p.crop.top, p.crop.left, p.crop.height, p.crop.width]).collect();
    d.set_item("crop", PyTensor(Tensor::from_slice(&boxes).view([-1, 4])))?;
    let flag = |f: &dyn Fn(&SampleParams) -> bool| Tensor::from_slice(&ps.iter().map(f).collect::<Vec<bool>>());
    d.set_item("flip", PyTensor(flag(&|p| p.flip)))?;
    d.set_item("jitter", PyTensor(flag(&|p| p.jitter.is_some())))?;
    d.set_item("grayscale", PyTensor(flag(&|p| p.grayscale)))?;
    d.set_item("solarize", PyTensor(flag(&|p| p.solarize)))?;
    let order: Vec<i64> = ps.iter().flat_map(|p| p.jitter.as_ref().map_or([-1; 4], |j| j.order.map(|o| o as i64))).collect();
    d.set_item("jitter_order", PyTensor(Tensor::from_slice(&order).view([-1, 4])))?;
    let factors: Vec<f64> = ps.iter().flat_map(|p| p.jitter.as_ref().map_or([f64::NAN; 4], |j| j.factors)).collect();
    d.set_item("jitter_factors", PyTensor(Tensor::from_slice(&factors).view([-1, 4])))?;
    let sigma: Vec<f64> = ps.iter().map(|p| p.blur_sigma.unwrap_or(f64::NAN)).collect();
    d.set_item("blur_sigma", PyTensor(Tensor::from_slice(&sigma)))?;
    Ok(d)
}

#[pymethods]
impl PyAugment {
    #[new]
    fn new(py: Python<'_>, config_json: String) -> PyResult<Self> {
        let aug = run(py, move || Augment::new(AugmentConfig::from_json(&config_json)?))?;
        Ok(Self(Mutex::new(aug)))
    }

    /// Two augmented views of a batch or of a list of images, on `device` (default: the images').
    #[pyo3(signature = (images, layout="auto", device=None))]
    fn __call__(&self, py: Python<'_>, images: ImagesArg, layout: &str, device: Option<String>) -> PyResult<(PyTensor, PyTensor)> {
        let (images, layout) = (OwnedImages::from(images), layout.to_string());
        let (a, b) = run(py, move || {
            let device = device.as_deref().map_or(Ok(images.device()), crate::config::parse_device)?;
            self.with(|aug| aug.views(images.images(), Layout::parse(&layout)?, device))
        })?;
        Ok((PyTensor(a), PyTensor(b)))
    }

    /// Draws (and consumes) both views' parameters for `n` images of `height` x `width`, or,
    /// with `sizes`, for one image of each `(height, width)` in turn.
    #[pyo3(signature = (n=None, height=None, width=None, sizes=None))]
    fn sample_params<'py>(
        &self,
        py: Python<'py>,
        n: Option<i64>,
        height: Option<i64>,
        width: Option<i64>,
        sizes: Option<Vec<(i64, i64)>>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let sizes = match (n, height, width, sizes) {
            (Some(n), Some(h), Some(w), None) if n >= 1 && h >= 1 && w >= 1 => vec![(h, w); n as usize],
            (None, None, None, Some(sizes)) if !sizes.is_empty() && sizes.iter().all(|&(h, w)| h >= 1 && w >= 1) => sizes,
            _ => return Err(super::errors::to_py(value_error("n", "give n, height and width, all positive, or sizes, a non-empty list of positive (height, width)"))),
        };
        let (p1, p2) = self.with(|aug| aug.sample_sizes(&sizes));
        Ok((params_dict(py, &p1)?, params_dict(py, &p2)?))
    }

    fn config_json(&self) -> String {
        self.with(|aug| aug.config.to_json())
    }

    #[getter]
    fn rng_state(&self) -> [u64; 4] {
        self.with(|aug| aug.rng.state())
    }

    #[setter]
    fn set_rng_state(&self, state: [u64; 4]) {
        self.with(|aug| aug.rng = crate::augment::rng::Rng::from_state(state));
    }
}

impl PyAugment {
    pub fn config(&self) -> AugmentConfig {
        self.with(|aug| aug.config.clone())
    }
}

/// Float NCHW images and a `[N]` float parameter on their device.
fn batch_and_factor(images: &Tensor, factor: &Tensor, arg: &str) -> Result<(Tensor, Tensor)> {
    let x = to_unit_nchw(images, Layout::Nchw, false)?;
    let n = x.size()[0];
    if factor.size() != [n] {
        return Err(value_error(arg, format!("expected one value per image, shape [{n}], got {:?}", factor.size())));
    }
    Ok((x.shallow_clone(), factor.f_to_kind(Kind::Float)?.f_to_device(x.device())?))
}

fn one_minus(f: &Tensor) -> Result<Tensor> {
    Ok(f.f_to_kind(Kind::Double)?.f_neg()?.f_add_scalar(1.0)?.f_to_kind(Kind::Float)?)
}

#[pyfunction]
#[pyo3(signature = (images, boxes, size, interpolation="bilinear", method="auto"))]
fn resized_crop(py: Python<'_>, images: PyTensor, boxes: PyTensor, size: (i64, i64), interpolation: &str, method: &str) -> PyResult<PyTensor> {
    let method = method.to_string();
    let (images, boxes, interpolation) = (images.0, boxes.0, interpolation.to_string());
    run(py, move || {
        let x = to_unit_nchw(&images, Layout::Nchw, false)?;
        if boxes.size() != [x.size()[0], 4] {
            return Err(value_error("boxes", format!("expected [N, 4] (top, left, height, width), got {:?}", boxes.size())));
        }
        let b = Vec::<i64>::try_from(boxes.f_to_kind(Kind::Int64)?.f_flatten(0, -1)?)?;
        let boxes: Vec<CropBox> = b.chunks(4).map(|c| CropBox { top: c[0], left: c[1], height: c[2], width: c[3] }).collect();
        if size.0 < 1 || size.1 < 1 {
            return Err(value_error("size", format!("expected a positive size, got {size:?}")));
        }
        let bicubic = match interpolation.as_str() {
            "bilinear" => false,
            "bicubic" => true,
            other => return Err(value_error("interpolation", format!("expected 'bilinear' or 'bicubic', got {other:?}"))),
        };
        let method = match method.as_str() {
            "auto" => ops::CropMethod::for_device(x.device()),
            "matmul" => ops::CropMethod::Matmul,
            "cpu" => ops::CropMethod::Cpu,
            "aten" => ops::CropMethod::Aten,
            other => return Err(value_error("method", format!("expected 'auto', 'matmul', 'cpu' or 'aten', got {other:?}"))),
        };
        ops::resized_crop_with(method, &x, &boxes, size, bicubic)
    })
    .map(PyTensor)
}

#[pyfunction]
fn adjust_brightness(py: Python<'_>, images: PyTensor, factor: PyTensor) -> PyResult<PyTensor> {
    let (images, factor) = (images.0, factor.0);
    run(py, move || {
        let (x, f) = batch_and_factor(&images, &factor, "factor")?;
        ops::adjust_brightness(&x, &f)
    })
    .map(PyTensor)
}

#[pyfunction]
fn adjust_contrast(py: Python<'_>, images: PyTensor, factor: PyTensor) -> PyResult<PyTensor> {
    let (images, factor) = (images.0, factor.0);
    run(py, move || {
        let (x, f) = batch_and_factor(&images, &factor, "factor")?;
        ops::adjust_contrast(&x, &f, &one_minus(&factor)?.f_to_device(x.device())?)
    })
    .map(PyTensor)
}

#[pyfunction]
fn adjust_saturation(py: Python<'_>, images: PyTensor, factor: PyTensor) -> PyResult<PyTensor> {
    let (images, factor) = (images.0, factor.0);
    run(py, move || {
        let (x, f) = batch_and_factor(&images, &factor, "factor")?;
        ops::adjust_saturation(&x, &f, &one_minus(&factor)?.f_to_device(x.device())?)
    })
    .map(PyTensor)
}

#[pyfunction]
fn adjust_hue(py: Python<'_>, images: PyTensor, shift: PyTensor) -> PyResult<PyTensor> {
    let (images, shift) = (images.0, shift.0);
    run(py, move || {
        let (x, s) = batch_and_factor(&images, &shift, "shift")?;
        ops::adjust_hue(&x, &s)
    })
    .map(PyTensor)
}

#[pyfunction]
fn rgb_to_grayscale(py: Python<'_>, images: PyTensor) -> PyResult<PyTensor> {
    let images = images.0;
    run(py, move || ops::grayscale(&to_unit_nchw(&images, Layout::Nchw, false)?)).map(PyTensor)
}

#[pyfunction]
fn hflip(py: Python<'_>, images: PyTensor) -> PyResult<PyTensor> {
    let images = images.0;
    run(py, move || ops::hflip(&to_unit_nchw(&images, Layout::Nchw, false)?)).map(PyTensor)
}

#[pyfunction]
fn gaussian_blur(py: Python<'_>, images: PyTensor, kernel_size: i64, sigma: PyTensor) -> PyResult<PyTensor> {
    let (images, sigma) = (images.0, sigma.0);
    run(py, move || {
        if kernel_size < 1 || kernel_size % 2 == 0 {
            return Err(value_error("kernel_size", format!("expected an odd positive size, got {kernel_size}")));
        }
        let (x, s) = batch_and_factor(&images, &sigma, "sigma")?;
        ops::gaussian_blur(&x, kernel_size, &s)
    })
    .map(PyTensor)
}

#[pyfunction]
fn solarize(py: Python<'_>, images: PyTensor, threshold: f64) -> PyResult<PyTensor> {
    let images = images.0;
    run(py, move || ops::solarize(&to_unit_nchw(&images, Layout::Nchw, false)?, threshold)).map(PyTensor)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAugment>()?;
    for f in [
        wrap_pyfunction!(resized_crop, m)?,
        wrap_pyfunction!(adjust_brightness, m)?,
        wrap_pyfunction!(adjust_contrast, m)?,
        wrap_pyfunction!(adjust_saturation, m)?,
        wrap_pyfunction!(adjust_hue, m)?,
        wrap_pyfunction!(rgb_to_grayscale, m)?,
        wrap_pyfunction!(hflip, m)?,
        wrap_pyfunction!(gaussian_blur, m)?,
        wrap_pyfunction!(solarize, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
