//! Collapse diagnostics for a batch of embeddings.
use crate::error::{value_error, Result};
use tch::{Kind, Tensor};

/// Mean over dimensions of the std over samples of the l2-normalised embeddings
/// (solo-learn's z_std): 1/sqrt(D) for well-spread embeddings, 0 at collapse.
pub fn z_std(z: &Tensor) -> Result<f64> {
    Ok(z_std_on_device(z)?.f_double_value(&[])?)
}

/// `z_std` as a 0-d float tensor on `z`'s device: no host synchronisation.
pub fn z_std_on_device(z: &Tensor) -> Result<Tensor> {
    check(z)?;
    let z = z.f_to_kind(Kind::Float)?;
    let zn = z.f_div(&z.f_norm_scalaropt_dim(2, [1], true)?.f_clamp_min(1e-12)?)?;
    Ok(zn.f_std_dim(Some([0i64].as_slice()), true, false)?.f_mean(Kind::Float)?)
}

/// Effective rank (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): exp of the entropy of
/// the normalised singular values of the `[N, D]` embedding matrix. Between 1 and min(N, D).
pub fn effective_rank(z: &Tensor) -> Result<f64> {
    check(z)?;
    // Singular values as square roots of the Gram matrix's eigenvalues (tch's svdvals
    // wrapper always passes a driver, which CPU libtorch rejects).
    let z = z.f_to_kind(Kind::Double)?;
    let s = z.f_tr()?.f_matmul(&z)?.f_linalg_eigvalsh("L")?.f_clamp_min(0.0)?.f_sqrt()?;
    let total = s.f_sum(Kind::Double)?.f_double_value(&[])?;
    if !(total > 0.0) {
        return Ok(0.0); // all-zero embeddings: fully collapsed
    }
    let p = s.f_div_scalar(total)?;
    let entropy = p.f_mul(&p.f_clamp_min(1e-300)?.f_log()?)?.f_sum(Kind::Double)?.f_neg()?;
    Ok(entropy.f_exp()?.f_double_value(&[])?)
}

fn check(z: &Tensor) -> Result<()> {
    if z.dim() != 2 || z.size()[0] < 2 || !z.is_floating_point() {
        return Err(value_error("embeddings", format!("expected float [N >= 2, D] embeddings, got {:?} {:?}", z.kind(), z.size())));
    }
    Ok(())
}
