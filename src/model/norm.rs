//! Batch normalisation, optionally synchronised across ranks (paper section 3.3: "batch
//! normalization ... synchronised across devices"). Unsynchronised, it is tch's BatchNorm,
//! whose parameter names torchvision shares; in training on CPU it runs as one fused op with the
//! residual add and ReLU that follow it (`Norm::forward_act`, `shim/batch_norm.cpp`).
use crate::distributed::Dist;
use crate::error::Result;
use tch::nn;
use tch::{Kind, Tensor};

/// `nn::BatchNorm`'s defaults, which every layer here is built with.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;
const CUDNN: bool = true;

/// `BYOL_RS_FUSED_BN=0` turns the fused op off, for PyTorch's own BN kernels and summation
/// order (with `BYOL_RS_WINOGRAD=0`, bit-for-bit comparisons with a PyTorch model).
pub const FUSED_BN_ENV: &str = "BYOL_RS_FUSED_BN";

#[derive(Debug)]
pub struct Norm {
    bn: nn::BatchNorm,
    sync: Option<SyncHandle>,
}

/// The process group a synchronised layer reduces over.
#[derive(Clone)]
pub struct SyncHandle(pub Dist);

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncHandle(world_size={})", self.0.world_size())
    }
}

pub fn norm(p: nn::Path, channels: i64, dims: usize, sync: Option<&SyncHandle>) -> Norm {
    let bn = match dims {
        1 => nn::batch_norm1d(p, channels, Default::default()),
        _ => nn::batch_norm2d(p, channels, Default::default()),
    };
    Norm { bn, sync: sync.cloned() }
}

impl Norm {
    /// Batch normalisation alone: over all ranks' batches when synchronised and training.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (Some(s), true) = (&self.sync, train) {
            return self.synchronised(x, &s.0);
        }
        let bn = &self.bn;
        Ok(Tensor::f_batch_norm(x, bn.ws.as_ref(), bn.bs.as_ref(), Some(&bn.running_mean), Some(&bn.running_var), train, MOMENTUM, EPS, CUDNN)?)
    }

    /// `relu?(bn(x) + residual?)`: the BN and whatever follows it in the networks. Training-mode
    /// fp32 CPU activations in rows of channels (channels_last, or 2-D) take one fused op
    /// (`shim::batch_norm_act`); anything else runs ATen's BN, add and in-place ReLU, the latter
    /// two into the BN output, which BN's backward does not need.
    pub fn forward_act(&self, x: &Tensor, train: bool, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        if train && self.sync.is_none() && super::switched_on(FUSED_BN_ENV) {
            let (w, b) = (affine(&self.bn.ws)?, affine(&self.bn.bs)?);
            let fused = crate::shim::batch_norm_act(x, w, b, residual, &self.bn.running_mean, &self.bn.running_var, MOMENTUM, EPS, relu)?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        let mut h = self.forward(x, train)?;
        if let Some(r) = residual {
            let _ = h.f_add_(r)?;
        }
        if relu {
            h = h.f_relu_()?;
        }
        Ok(h)
    }

    /// Training-mode BN over the union of all ranks' batches. One all-reduce of
    /// [sum, sum of squares, count] per call, differentiable so that backward sums the
    /// statistics' gradients across ranks too. Sums are taken around the running mean, which
    /// every rank holds identically, to keep the variance's cancellation small.
    fn synchronised(&self, x: &Tensor, dist: &Dist) -> Result<Tensor> {
        let c = x.size()[1];
        let reduce: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; x.dim()];
        shape[1] = c;
        let (w, b) = (affine(&self.bn.ws)?, affine(&self.bn.bs)?);
        let shift = self.bn.running_mean.f_detach()?;
        let centred = x.f_sub(&shift.f_view(shape.as_slice())?)?;
        let local = Tensor::f_cat(
            &[
                centred.f_sum_dim_intlist(reduce.as_slice(), false, Kind::Float)?,
                centred.f_square()?.f_sum_dim_intlist(reduce.as_slice(), false, Kind::Float)?,
                Tensor::f_full([1], (x.numel() as i64 / c) as f64, (Kind::Float, x.device()))?,
            ],
            0,
        )?;
        let total = dist.differentiable_all_reduce_sum(&local)?;
        let n = total.f_narrow(0, 2 * c, 1)?;
        let mean_centred = total.f_narrow(0, 0, c)?.f_div(&n)?;
        let var = total.f_narrow(0, c, c)?.f_div(&n)?.f_sub(&mean_centred.f_square()?)?;
        let mean = shift.f_add(&mean_centred)?;
        crate::model::no_grad(|| -> Result<()> {
            let unbiased = var.f_mul(&n)?.f_div(&n.f_sub_scalar(1.0)?)?;
            let _ = self.bn.running_mean.shallow_clone().f_lerp_(&mean, MOMENTUM)?;
            let _ = self.bn.running_var.shallow_clone().f_lerp_(&unbiased, MOMENTUM)?;
            Ok(())
        })?;
        let scale = var.f_add_scalar(EPS)?.f_rsqrt()?.f_mul(w)?;
        let bias = b.f_sub(&mean.f_mul(&scale)?)?;
        Ok(x.f_mul(&scale.f_view(shape.as_slice())?)?.f_add(&bias.f_view(shape.as_slice())?)?)
    }
}

/// Every BN layer here is affine (tch's default), so its weight and bias exist.
fn affine(t: &Option<Tensor>) -> Result<&Tensor> {
    t.as_ref().ok_or_else(|| crate::error::value_error("batch norm", "expected an affine layer (weight and bias)"))
}
