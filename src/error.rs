//! The engine's one error type. The Python bindings map each variant to one exception class
//! (`bindings/errors.rs`), so messages here are written for the user.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A value the caller passed is wrong: names the argument and what was expected.
    #[error("{arg}: {msg}")]
    Value { arg: String, msg: String },
    /// An argument of the wrong kind (for example an int where a tensor was expected).
    #[error("{arg}: {msg}")]
    Type { arg: String, msg: String },
    /// The loss was NaN or infinite; nothing was updated.
    #[error("non-finite loss ({loss}) at step {step}: online weights, target weights and optimizer state were left unchanged{}", cancelled_note(*cancelled, *step))]
    NonFiniteLoss { loss: f64, step: i64, cancelled: usize },
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    /// A collective across ranks failed, or another rank rejected its part of the step.
    #[error("distributed: {0}")]
    Distributed(String),
    /// An error raised inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for `Error::Value`.
pub fn value_error(arg: &str, msg: impl Into<String>) -> Error {
    Error::Value { arg: arg.to_string(), msg: msg.into() }
}

/// On CUDA the check runs behind the device, so the calls made since were cancelled too.
fn cancelled_note(cancelled: usize, step: i64) -> String {
    match cancelled {
        0 => String::new(),
        n => format!(" (found on the device after {n} later call(s) had been queued; they were cancelled as well, so the learner is as it was before step {step})"),
    }
}
