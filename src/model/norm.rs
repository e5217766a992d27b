//! Batch normalisation, optionally synchronised across ranks (paper section 3.3: "batch
//! normalization ... synchronised across devices"). Unsynchronised, it is tch's BatchNorm,
//! whose parameter names torchvision shares.
use crate::distributed::Dist;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// `nn::BatchNorm`'s defaults, which every layer here is built with.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

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
        tch::no_grad(|| {
            let unbiased = &var * &n / (&n - 1.0);
            let _ = self.bn.running_mean.shallow_clone().lerp_(&mean, MOMENTUM);
            let _ = self.bn.running_var.shallow_clone().lerp_(&unbiased, MOMENTUM);
        });
        let scale = (var + EPS).rsqrt() * self.bn.ws.as_ref().expect("affine BN");
        let bias = self.bn.bs.as_ref().expect("affine BN") - &mean * &scale;
        x * scale.view(shape.as_slice()) + bias.view(shape.as_slice())
    }
}
