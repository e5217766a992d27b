//! The configuration schema, for Python's signatures, type checks and view defaults.
use crate::augment::config::AugmentConfig;
use crate::config::{schema, LearnerConfig};
use pyo3::prelude::*;

/// The learner's fields as a JSON list: name, section, type, optional, choices, default, doc.
#[pyfunction]
fn config_schema() -> String {
    schema::to_json(&LearnerConfig::fields())
}

/// The augmentation pipeline's defaults (the paper's two views) as JSON.
#[pyfunction]
fn augment_defaults() -> String {
    serde_json::to_string(&AugmentConfig::default()).expect("config serialises")
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(config_schema, m)?)?;
    m.add_function(wrap_pyfunction!(augment_defaults, m)?)
}
