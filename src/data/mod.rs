//! Datasets on disk.
pub mod idx;
