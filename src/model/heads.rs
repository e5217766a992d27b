//! The projector g and predictor q: Linear-BN-ReLU-Linear (paper section 3.3, 4096 / 256).
//! Module indices 0, 1, 3 match `nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)`.
use crate::error::Result;
use tch::nn;
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

impl Mlp {
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = x.f_linear(&self.hidden.ws, self.hidden.bs.as_ref())?;
        let h = self.bn.forward_act(&h, train, None, true)?;
        Ok(h.f_linear(&self.out.ws, self.out.bs.as_ref())?)
    }
}
