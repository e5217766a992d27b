//! Weighted kNN on cosine similarity (Wu et al. 2018, InstDisc; solo-learn's protocol):
//! each of the k nearest training features votes for its class with weight exp(sim / T).
use super::check_features;
use crate::error::{value_error, Result};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct KnnConfig {
    pub k: i64,
    pub temperature: f64,
    /// Queries per similarity block: the block is `chunk x N_train` floats.
    pub chunk: i64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self { k: 200, temperature: 0.1, chunk: 512 }
    }
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = x.f_to_kind(Kind::Float)?;
    Ok(x.f_div(&x.f_norm_scalaropt_dim(2, [1], true)?.f_clamp_min(1e-12)?)?)
}

/// Predicted class of every query.
pub fn knn_predict(train: &Tensor, train_labels: &Tensor, queries: &Tensor, cfg: KnnConfig) -> Result<Tensor> {
    let labels = check_features(train, train_labels, "train")?;
    if queries.dim() != 2 || queries.size()[1] != train.size()[1] {
        return Err(value_error("queries", format!("expected [M, {}] features, got shape {:?}", train.size()[1], queries.size())));
    }
    if cfg.k < 1 || !(cfg.temperature > 0.0) || cfg.chunk < 1 {
        return Err(value_error("k", format!("need k >= 1, temperature > 0, chunk >= 1; got {cfg:?}")));
    }
    let _guard = tch::no_grad_guard();
    let bank = l2_normalize(train)?;
    let labels = labels.f_to_device(bank.device())?;
    let classes = labels.f_max()?.f_int64_value(&[])? + 1;
    let k = cfg.k.min(bank.size()[0]);
    let q = l2_normalize(&queries.f_to_device(bank.device())?)?;
    let mut preds = vec![];
    for start in (0..q.size()[0]).step_by(cfg.chunk as usize) {
        let block = q.f_narrow(0, start, cfg.chunk.min(q.size()[0] - start))?;
        let sim = block.f_matmul(&bank.f_tr()?)?;
        let (top_sim, top_idx) = sim.f_topk(k, 1, true, true)?;
        let weights = top_sim.f_div_scalar(cfg.temperature)?.f_exp()?;
        let votes = Tensor::f_zeros([block.size()[0], classes], (Kind::Float, bank.device()))?;
        let top_labels = labels.f_index_select(0, &top_idx.f_flatten(0, -1)?)?.f_view_as(&top_idx)?;
        let votes = votes.f_scatter_add(1, &top_labels, &weights)?;
        preds.push(votes.f_argmax(1, false)?);
    }
    Ok(Tensor::f_cat(&preds, 0)?)
}

/// Fraction of queries whose kNN prediction equals their label.
pub fn knn_accuracy(train: &Tensor, train_labels: &Tensor, test: &Tensor, test_labels: &Tensor, cfg: KnnConfig) -> Result<f64> {
    let test_labels = check_features(test, test_labels, "test")?;
    let preds = knn_predict(train, train_labels, test, cfg)?;
    Ok(preds.f_eq_tensor(&test_labels.f_to_device(preds.device())?)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?)
}
