//! The BYOL loss, paper eq. 2: `L = 2 - 2 * mean_i cos(p_i, sg(z_i))`.
//!
//! Forward and backward are each one pass over the rows. The forward saves four numbers per
//! row (`SAVED_COLUMNS`) from which the backward is analytic:
//! `dL/dp_i = -2 g / N * (z_i / |z_i| - cos_i * r_i * p_i) / |p_i|`, where the norms are clamped
//! at `eps` and `r_i` is `1 / |p_i|` where the norm is differentiated, 0 where it is not.
//! That reproduces both variants of solo-learn's `byol_loss_func`: `F.cosine_similarity`
//! (eps 1e-8, clamp invisible to autograd) and `F.normalize` (eps 1e-12, clamp cuts the grad).
use crate::error::{value_error, Result};
use tch::{Device, Kind, Tensor};

/// Columns of the saved tensor: `1/max(|p|,eps)`, `1/max(|z|,eps)`, `cos`, `r`.
pub const SAVED_COLUMNS: i64 = 4;

/// Which of the two reference formulas to reproduce at tiny norms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    /// `2 - 2 * F.cosine_similarity(p, z).mean()`.
    CosineSimilarity,
    /// `2 - 2 * (F.normalize(p) * F.normalize(z)).sum(1).mean()`.
    Normalize,
}

impl Variant {
    fn eps(self) -> f32 {
        match self {
            Variant::CosineSimilarity => 1e-8,
            Variant::Normalize => 1e-12,
        }
    }
}

/// The loss (0-d, in the inputs' dtype) and the per-row values the backward needs.
pub struct LossForward {
    pub loss: Tensor,
    pub saved: Tensor,
}

/// Checks that `p` and `z` are matching `[N, D]` floating tensors on one device.
pub fn check_pair(p: &Tensor, z: &Tensor, p_name: &str, z_name: &str) -> Result<()> {
    let (ps, zs) = (p.size(), z.size());
    if ps.len() != 2 {
        return Err(value_error(p_name, format!("expected a 2-D [batch, dim] tensor, got shape {ps:?}")));
    }
    if zs != ps {
        return Err(value_error(z_name, format!("shape {zs:?} does not match {p_name} shape {ps:?}")));
    }
    if ps[0] == 0 || ps[1] == 0 {
        return Err(value_error(p_name, format!("expected a non-empty tensor, got shape {ps:?}")));
    }
    for (name, t) in [(p_name, p), (z_name, z)] {
        if !t.is_floating_point() {
            return Err(value_error(name, format!("expected a floating-point tensor, got {:?}", t.kind())));
        }
    }
    if p.kind() != z.kind() {
        return Err(value_error(z_name, format!("dtype {:?} does not match {p_name} dtype {:?}", z.kind(), p.kind())));
    }
    if p.device() != z.device() {
        return Err(value_error(z_name, format!("device {:?} does not match {p_name} device {:?}", z.device(), p.device())));
    }
    Ok(())
}

/// Forward of the loss. `p` gets the gradient; `z` is the target (stop-gradient).
pub fn byol_loss_forward(p: &Tensor, z: &Tensor, variant: Variant) -> Result<LossForward> {
    check_pair(p, z, "p", "z")?;
    let kind = p.kind();
    let (pf, zf) = (as_f32(p)?, as_f32(z)?);
    let saved = if p.device() == Device::Cpu {
        cpu::forward(&pf, &zf, variant.eps())?
    } else {
        aten::forward(&pf, &zf, variant)?
    };
    let n = p.size()[0] as f64;
    let cos = saved.f_select(1, 2)?;
    let loss = (cos.f_sum(Kind::Float)? * (-2.0 / n) + 2.0).f_to_kind(kind)?;
    Ok(LossForward { loss, saved })
}

/// Gradient of the loss with respect to `p`, given the upstream gradient `grad` (0-d).
pub fn byol_loss_backward(grad: &Tensor, p: &Tensor, z: &Tensor, saved: &Tensor) -> Result<Tensor> {
    check_pair(p, z, "p", "z")?;
    let n = p.size()[0];
    if saved.size() != [n, SAVED_COLUMNS] || saved.kind() != Kind::Float {
        return Err(value_error("saved", format!("expected float32 [{n}, {SAVED_COLUMNS}] from the forward, got {:?} {:?}", saved.kind(), saved.size())));
    }
    if grad.numel() != 1 {
        return Err(value_error("grad", format!("expected one element, got shape {:?}", grad.size())));
    }
    let (pf, zf) = (as_f32(p)?, as_f32(z)?);
    let scale = grad.f_to_kind(Kind::Float)?.f_reshape([1])? * (-2.0 / n as f64);
    let g = if p.device() == Device::Cpu {
        cpu::backward(&pf, &zf, saved, scale.f_double_value(&[0])? as f32)?
    } else {
        aten::backward(&pf, &zf, saved, &scale)?
    };
    Ok(g.f_to_kind(p.kind())?)
}

fn as_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?)
}

/// The same two passes as ATen ops, for CUDA and other devices.
mod aten {
    use super::*;

    pub fn forward(p: &Tensor, z: &Tensor, variant: Variant) -> Result<Tensor> {
        let eps = variant.eps() as f64;
        let norm_p = p.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?.f_sqrt()?;
        let norm_z = z.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?.f_sqrt()?;
        let dot = (p * z).f_sum_dim_intlist(1, false, Kind::Float)?;
        let inv_p = norm_p.f_clamp_min(eps)?.f_reciprocal()?;
        let inv_z = norm_z.f_clamp_min(eps)?.f_reciprocal()?;
        let cos = &dot * &inv_p * &inv_z;
        let threshold = match variant {
            Variant::CosineSimilarity => 0.0,
            Variant::Normalize => eps,
        };
        let differentiated = match variant {
            Variant::CosineSimilarity => norm_p.f_gt(threshold)?,
            Variant::Normalize => norm_p.f_ge(threshold)?,
        };
        let r = norm_p.f_reciprocal()?.f_where_self(&differentiated, &norm_p.f_zeros_like()?)?;
        Ok(Tensor::f_stack(&[inv_p, inv_z, cos, r], 1)?)
    }

    pub fn backward(p: &Tensor, z: &Tensor, saved: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let col = |i: i64| saved.f_select(1, i).and_then(|c| c.f_unsqueeze(1));
        let (inv_p, inv_z, cos, r) = (col(0)?, col(1)?, col(2)?, col(3)?);
        let g = (z * inv_z - p * (cos * r)) * inv_p;
        Ok(g * scale)
    }
}

/// One pass per direction over contiguous fp32 rows, split across threads.
mod cpu {
    use super::*;

    use crate::parallel::{parallel_rows, Ptr};

    const LANES: usize = 8;

    fn dot3(p: &[f32], z: &[f32]) -> (f32, f32, f32) {
        let (mut pp, mut zz, mut pz) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        let (pc, zc) = (p.chunks_exact(LANES), z.chunks_exact(LANES));
        let (pr, zr) = (pc.remainder(), zc.remainder());
        for (a, b) in pc.zip(zc) {
            for l in 0..LANES {
                pp[l] += a[l] * a[l];
                zz[l] += b[l] * b[l];
                pz[l] += a[l] * b[l];
            }
        }
        let (mut spp, mut szz, mut spz) = (pp.iter().sum::<f32>(), zz.iter().sum::<f32>(), pz.iter().sum::<f32>());
        for (a, b) in pr.iter().zip(zr) {
            spp += a * a;
            szz += b * b;
            spz += a * b;
        }
        (spp, szz, spz)
    }

    pub fn forward(p: &Tensor, z: &Tensor, eps: f32) -> Result<Tensor> {
        let (n, d) = (p.size()[0] as usize, p.size()[1] as usize);
        let saved = Tensor::f_empty([n as i64, SAVED_COLUMNS], (Kind::Float, Device::Cpu))?;
        let (pp, zp, sp) = (Ptr(p.data_ptr() as *mut f32), Ptr(z.data_ptr() as *mut f32), Ptr(saved.data_ptr() as *mut f32));
        let normalize_cut = eps < 1e-9; // the F.normalize variant cuts the grad at the clamp
        parallel_rows(n, d, |start, rows| {
            let (pp, zp, sp) = (pp, zp, sp);
            // SAFETY: p and z are contiguous [n, d] fp32, saved is [n, 4]; blocks are disjoint.
            let p = unsafe { std::slice::from_raw_parts(pp.0.add(start * d), rows * d) };
            let z = unsafe { std::slice::from_raw_parts(zp.0.add(start * d), rows * d) };
            let out = unsafe { std::slice::from_raw_parts_mut(sp.0.add(start * 4), rows * 4) };
            for i in 0..rows {
                let (spp, szz, spz) = dot3(&p[i * d..(i + 1) * d], &z[i * d..(i + 1) * d]);
                let (np, nz) = (spp.sqrt(), szz.sqrt());
                let (inv_p, inv_z) = (1.0 / np.max(eps), 1.0 / nz.max(eps));
                let differentiated = if normalize_cut { np >= eps } else { np > 0.0 };
                out[i * 4] = inv_p;
                out[i * 4 + 1] = inv_z;
                out[i * 4 + 2] = spz * inv_p * inv_z;
                out[i * 4 + 3] = if differentiated { 1.0 / np } else { 0.0 };
            }
        });
        Ok(saved)
    }

    pub fn backward(p: &Tensor, z: &Tensor, saved: &Tensor, scale: f32) -> Result<Tensor> {
        let (n, d) = (p.size()[0] as usize, p.size()[1] as usize);
        let saved = saved.f_contiguous()?;
        let grad = Tensor::f_empty([n as i64, d as i64], (Kind::Float, Device::Cpu))?;
        let ptrs = (
            Ptr(p.data_ptr() as *mut f32),
            Ptr(z.data_ptr() as *mut f32),
            Ptr(saved.data_ptr() as *mut f32),
            Ptr(grad.data_ptr() as *mut f32),
        );
        parallel_rows(n, d, |start, rows| {
            let (pp, zp, sp, gp) = ptrs;
            // SAFETY: as in `forward`; grad is a fresh contiguous [n, d] buffer.
            let p = unsafe { std::slice::from_raw_parts(pp.0.add(start * d), rows * d) };
            let z = unsafe { std::slice::from_raw_parts(zp.0.add(start * d), rows * d) };
            let s = unsafe { std::slice::from_raw_parts(sp.0.add(start * 4), rows * 4) };
            let g = unsafe { std::slice::from_raw_parts_mut(gp.0.add(start * d), rows * d) };
            for i in 0..rows {
                let (inv_p, inv_z, cos, r) = (s[i * 4], s[i * 4 + 1], s[i * 4 + 2], s[i * 4 + 3]);
                let a = scale * inv_p * inv_z;
                let b = scale * inv_p * cos * r;
                let row = i * d..(i + 1) * d;
                for ((gj, pj), zj) in g[row.clone()].iter_mut().zip(&p[row.clone()]).zip(&z[row]) {
                    *gj = a * zj - b * pj;
                }
            }
        });
        Ok(grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_grad(p: &Tensor, z: &Tensor) -> (f64, Tensor) {
        let p = p.detach().set_requires_grad(true);
        let pn = &p / p.norm_scalaropt_dim(2, [1], true);
        let zn = z / z.norm_scalaropt_dim(2, [1], true);
        let cos = (pn * zn).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
        let loss: Tensor = -2.0 * cos + 2.0;
        loss.backward();
        (loss.double_value(&[]), p.grad())
    }

    #[test]
    fn cpu_kernel_and_aten_path_match_autograd() {
        tch::manual_seed(0);
        let p = Tensor::randn([300, 67], (Kind::Float, Device::Cpu));
        let z = Tensor::randn([300, 67], (Kind::Float, Device::Cpu));
        let (want_loss, want_grad) = reference_grad(&p, &z);
        let fwd = byol_loss_forward(&p, &z, Variant::CosineSimilarity).unwrap();
        assert!((fwd.loss.double_value(&[]) - want_loss).abs() < 1e-6);
        let one = Tensor::from(1.0f32);
        let grad = byol_loss_backward(&one, &p, &z, &fwd.saved).unwrap();
        let err = (&grad - &want_grad).abs().max().double_value(&[]);
        assert!(err < 1e-7 * want_grad.abs().max().double_value(&[]) * 10.0, "max err {err}");
        let saved = aten::forward(&p, &z, Variant::CosineSimilarity).unwrap();
        assert!(saved.allclose(&fwd.saved, 1e-6, 1e-7, false));
        let g2 = aten::backward(&p, &z, &saved, &Tensor::from_slice(&[-2.0f32 / 300.0])).unwrap();
        assert!(g2.allclose(&grad, 1e-5, 1e-9, false));
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let p = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let z = Tensor::zeros([4, 9], (Kind::Float, Device::Cpu));
        let err = byol_loss_forward(&p, &z, Variant::CosineSimilarity).err().unwrap();
        assert!(err.to_string().starts_with("z: shape"), "{err}");
    }
}
