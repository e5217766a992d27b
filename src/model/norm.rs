//! Batch normalisation, optionally synchronised across ranks (paper section 3.3: "batch
//! normalization ... synchronised across devices"). Unsynchronised, it is tch's BatchNorm,
//! whose parameter names torchvision shares; in training on CPU it runs as one fused op with the
//! residual add and ReLU that follow it (`Norm::forward_act`, `shim/batch_norm.cpp`).
use crate::distributed::Dist;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// `nn::BatchNorm`'s defaults, which every layer here is built with.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

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

impl ModuleT for Norm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match (&self.sync, train) {
            (Some(s), true) => self.synchronised(x, &s.0),
            _ => x.apply_t(&self.bn, train),
        }
    }
}

impl Norm {
    /// `relu?(bn(x) + residual?)`: the BN and whatever follows it in the networks. Training-mode
    /// fp32 CPU activations in rows of channels (channels_last, or 2-D) take one fused op
    /// (`shim::batch_norm_act`); anything else runs ATen's BN, add and in-place ReLU, the latter
    /// two into the BN output, which BN's backward does not need.
    pub fn forward_act(&self, x: &Tensor, train: bool, residual: Option<&Tensor>, relu: bool) -> Tensor {
        if train && self.sync.is_none() && super::switched_on(FUSED_BN_ENV) {
            let (w, b) = (self.bn.ws.as_ref().expect("affine BN"), self.bn.bs.as_ref().expect("affine BN"));
            let fused = crate::shim::batch_norm_act(
                x, w, b, residual, &self.bn.running_mean, &self.bn.running_var, MOMENTUM, EPS, relu,
            );
            // tch's own ops panic on ATen errors too; the bindings turn panics into exceptions.
            if let Some(y) = fused.unwrap_or_else(|e| panic!("batch norm: {e}")) {
                return y;
            }
        }
        let mut h = self.forward_t(x, train);
        if let Some(r) = residual {
            h += r;
        }
        if relu {
            h = h.relu_();
        }
        h
    }

    /// Training-mode BN over the union of all ranks' batches. One all-reduce of
    /// [sum, sum of squares, count] per call, differentiable so that backward sums the
    /// statistics' gradients across ranks too. Sums are taken around the running mean, which
    /// every rank holds identically, to keep the variance's cancellation small.
    fn synchronised(&self, x: &Tensor, dist: &Dist) -> Tensor {
        let c = x.size()[1];
        let reduce: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; x.dim()];
        shape[1] = c;
        let shift = self.bn.running_mean.detach();
        let centred = x - shift.view(shape.as_slice());
        let local = Tensor::cat(
            &[
                centred.sum_dim_intlist(reduce.as_slice(), false, Kind::Float),
                centred.square().sum_dim_intlist(reduce.as_slice(), false, Kind::Float),
                Tensor::full([1], (x.numel() as i64 / c) as f64, (Kind::Float, x.device())),
            ],
            0,
        );
        let total = dist.differentiable_all_reduce_sum(&local);
        let n = total.narrow(0, 2 * c, 1);
        let mean_centred = total.narrow(0, 0, c) / &n;
        let var = total.narrow(0, c, c) / &n - mean_centred.square();
        let mean = &shift + &mean_centred;
        crate::model::no_grad(|| {
            let unbiased = &var * &n / (&n - 1.0);
            let _ = self.bn.running_mean.shallow_clone().lerp_(&mean, MOMENTUM);
            let _ = self.bn.running_var.shallow_clone().lerp_(&unbiased, MOMENTUM);
        });
        let scale = (var + EPS).rsqrt() * self.bn.ws.as_ref().expect("affine BN");
        let bias = self.bn.bs.as_ref().expect("affine BN") - &mean * &scale;
        x * scale.view(shape.as_slice()) + bias.view(shape.as_slice())
    }
}
