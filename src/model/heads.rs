//! The projector g and predictor q: Linear-BN-ReLU-Linear (paper section 3.3, 4096 / 256).
//! Module indices 0, 1, 3 match `nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)`.
use tch::nn::{self, ModuleT};
use tch::Tensor;
use super::norm::{norm, Norm, SyncHandle};

#[derive(Debug)]
pub struct Mlp {
    hidden: nn::Linear,
    bn: Norm,
    out: nn::Linear,
}

pub fn mlp(p: &nn::Path, in_dim: i64, hidden: i64, out: i64, sync: Option<&SyncHandle>) -> Mlp {
    Mlp {
        hidden: nn::linear(p / "0", in_dim, hidden, Default::default()),
        bn: norm(p / "1", hidden, 1, sync),
        out: nn::linear(p / "3", hidden, out, Default::default()),
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_act(&x.apply(&self.hidden), train, None, true).apply(&self.out)
    }
}
