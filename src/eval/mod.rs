//! Evaluation of frozen representations: weighted kNN, a linear probe, collapse diagnostics.
pub mod diagnostics;
pub mod knn;
pub mod linear;

use crate::error::{value_error, Result};
use tch::{Kind, Tensor};

/// Checks `[N, D]` features and `[N]` integer labels; returns labels as int64.
pub(crate) fn check_features(features: &Tensor, labels: &Tensor, arg: &str) -> Result<Tensor> {
    let fs = features.size();
    if fs.len() != 2 || fs[0] < 1 || fs[1] < 1 {
        return Err(value_error(arg, format!("expected non-empty [N, D] features, got shape {fs:?}")));
    }
    if !features.is_floating_point() {
        return Err(value_error(arg, format!("expected floating-point features, got {:?}", features.kind())));
    }
    let label_arg = format!("{arg}_labels");
    if labels.size() != [fs[0]] {
        return Err(value_error(&label_arg, format!("expected [{}] labels, got shape {:?}", fs[0], labels.size())));
    }
    if labels.is_floating_point() || labels.kind() == Kind::Bool {
        return Err(value_error(&label_arg, format!("expected integer class labels, got {:?}", labels.kind())));
    }
    let labels = labels.f_to_kind(Kind::Int64)?;
    if labels.f_min()?.f_int64_value(&[])? < 0 {
        return Err(value_error(&label_arg, "labels must be >= 0"));
    }
    Ok(labels)
}
