//! byol-rs: BYOL (Grill et al., "Bootstrap Your Own Latent", arXiv 2006.07733) on libtorch.
//!
//! The engine is plain Rust over tch; `bindings` is the thin PyO3 layer that maturin builds
//! into `byol_rs._core`.

pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod ema;
pub mod error;
pub mod eval;
pub mod huge_pages;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod schedule;
pub mod shim;
pub mod train;

#[cfg(feature = "python")]
mod bindings;

pub use error::{Error, Result};

/// The torch release this build links against; tch 0.24 pairs with exactly this one.
pub const TORCH_VERSION: &str = "2.11.0";
