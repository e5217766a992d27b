//! Linear probe: multinomial logistic regression on frozen, standardised features, fitted
//! by L-BFGS in f64. The L2 strength is picked on a held-out part of the training set,
//! never on the test set. The objective is scikit-learn's, divided by C n:
//! mean cross-entropy + ||W||^2 / (2 C n), intercept unpenalised.
use super::check_features;
use crate::augment::rng::Rng;
use crate::error::{value_error, Result};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Candidate inverse regularisation strengths (scikit-learn's C).
    pub c_grid: Vec<f64>,
    /// Fraction of the training set held out to pick C.
    pub val_fraction: f64,
    pub max_iter: i64,
    /// Stop when the largest gradient entry falls below this.
    pub tol: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { c_grid: vec![0.01, 0.1, 1.0, 10.0], val_fraction: 0.1, max_iter: 100, tol: 1e-6, seed: 0 }
    }
}

/// A fitted probe: standardisation, weights and the C it chose.
pub struct LinearProbe {
    pub mean: Tensor,
    pub std: Tensor,
    /// `[D, classes]`
    pub weight: Tensor,
    pub bias: Tensor,
    pub c: f64,
    /// Accuracy on the held-out split for each candidate C, in `c_grid` order.
    pub val_accuracy: Vec<f64>,
}

struct Problem<'a> {
    x: &'a Tensor,
    onehot: Tensor,
    lambda: f64,
    d: i64,
    classes: i64,
}

impl Problem<'_> {
    fn split<'t>(&self, theta: &'t Tensor) -> Result<(Tensor, Tensor)> {
        let w = theta.f_narrow(0, 0, self.d * self.classes)?.f_view([self.d, self.classes])?;
        Ok((w, theta.f_narrow(0, self.d * self.classes, self.classes)?))
    }

    /// Objective and its gradient at `theta`.
    fn eval(&self, theta: &Tensor) -> Result<(f64, Tensor)> {
        let (w, b) = self.split(theta)?;
        let n = self.x.size()[0] as f64;
        let logits = self.x.f_matmul(&w)?.f_add(&b)?;
        let logp = logits.f_log_softmax(1, Kind::Double)?;
        let nll = -logp.f_mul(&self.onehot)?.f_sum(Kind::Double)?.f_double_value(&[])? / n;
        let penalty = 0.5 * self.lambda * w.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let g = logp.f_exp()?.f_sub(&self.onehot)?.f_div_scalar(n)?;
        let gw = self.x.f_tr()?.f_matmul(&g)?.f_add(&w.f_mul_scalar(self.lambda)?)?;
        let gb = g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?;
        Ok((nll + penalty, Tensor::f_cat(&[gw.f_flatten(0, -1)?, gb], 0)?))
    }
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(a.f_dot(b)?.f_double_value(&[])?)
}

/// Minimises the problem with L-BFGS (10 pairs of history, Armijo backtracking with
/// quadratic interpolation).
fn lbfgs(p: &Problem, max_iter: i64, tol: f64) -> Result<Tensor> {
    let mut theta = Tensor::f_zeros([p.d * p.classes + p.classes], (Kind::Double, Device::Cpu))?;
    let (mut f, mut g) = p.eval(&theta)?;
    let mut history: Vec<(Tensor, Tensor, f64)> = vec![];
    for _ in 0..max_iter {
        if g.f_abs()?.f_max()?.f_double_value(&[])? < tol {
            break;
        }
        // Two-loop recursion: direction = -H g.
        let mut q = g.f_neg()?;
        let mut alphas = vec![];
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q)?;
            q = q.f_sub(&y.f_mul_scalar(a)?)?;
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.last() {
            q = q.f_mul_scalar(dot(s, y)? / dot(y, y)?)?;
        } else {
            q = q.f_div_scalar(g.f_norm()?.f_double_value(&[])?.max(1e-12))?;
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &q)?;
            q = q.f_add(&s.f_mul_scalar(a - beta)?)?;
        }
        let slope = dot(&g, &q)?;
        if slope >= 0.0 {
            history.clear(); // not a descent direction: restart from steepest descent
            continue;
        }
        let mut step = 1.0;
        let (mut f_new, mut g_new, mut theta_new);
        loop {
            theta_new = theta.f_add(&q.f_mul_scalar(step)?)?;
            (f_new, g_new) = p.eval(&theta_new)?;
            if f_new <= f + 1e-4 * step * slope || step < 1e-10 {
                break;
            }
            // Minimiser of the quadratic through f, slope and f_new, kept within [0.01, 0.5] x step:
            // far fewer evaluations than halving when the step is orders of magnitude too long.
            let quad = -slope * step * step / (2.0 * (f_new - f - slope * step));
            step = if quad.is_finite() { quad.clamp(0.01 * step, 0.5 * step) } else { 0.01 * step };
        }
        let s = theta_new.f_sub(&theta)?;
        let y = g_new.f_sub(&g)?;
        let sy = dot(&s, &y)?;
        if sy > 1e-12 {
            history.push((s, y, 1.0 / sy));
            if history.len() > 10 {
                let _ = history.remove(0);
            }
        }
        let converged = (f - f_new).abs() <= 1e-12 * f.abs().max(1.0);
        (theta, f, g) = (theta_new, f_new, g_new);
        if converged {
            break;
        }
    }
    Ok(theta)
}

fn fit_one(x: &Tensor, y: &Tensor, classes: i64, c: f64, cfg: &ProbeConfig) -> Result<(Tensor, Tensor)> {
    let n = x.size()[0];
    let onehot = y.f_one_hot(classes)?.f_to_kind(Kind::Double)?;
    let p = Problem { x, onehot, lambda: 1.0 / (c * n as f64), d: x.size()[1], classes };
    let theta = lbfgs(&p, cfg.max_iter, cfg.tol)?;
    let (w, b) = p.split(&theta)?;
    Ok((w.f_contiguous()?, b.f_contiguous()?))
}

fn accuracy(x: &Tensor, y: &Tensor, w: &Tensor, b: &Tensor) -> Result<f64> {
    let pred = x.f_matmul(w)?.f_add(b)?.f_argmax(1, false)?;
    Ok(pred.f_eq_tensor(y)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?)
}

/// Features as f64 on the CPU, their per-dimension mean and std, and the standardised features.
fn standardise_fit(features: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let x = features.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    let mean = x.f_mean_dim([0i64].as_slice(), true, Kind::Double)?;
    let std = x.f_std_dim(Some([0i64].as_slice()), false, true)?.f_clamp_min(1e-8)?;
    let xs = x.f_sub(&mean)?.f_div(&std)?;
    Ok((mean, std, xs))
}

/// A seeded shuffle of 0..n from the host RNG (leaves torch's global generator alone).
fn shuffled(n: i64, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut idx: Vec<i64> = (0..n).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i as u64 + 1) as usize);
    }
    Tensor::from_slice(&idx)
}

impl LinearProbe {
    /// Standardises `features` with their own mean and std, picks C on a held-out split,
    /// then refits on all of them.
    pub fn fit(features: &Tensor, labels: &Tensor, cfg: &ProbeConfig) -> Result<Self> {
        let y = check_features(features, labels, "train")?.f_to_device(Device::Cpu)?;
        if cfg.c_grid.is_empty() || cfg.c_grid.iter().any(|&c| !(c > 0.0 && c.is_finite())) {
            return Err(value_error("c_grid", format!("expected positive values, got {:?}", cfg.c_grid)));
        }
        if !(cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0) {
            return Err(value_error("val_fraction", format!("expected a value in (0, 1), got {}", cfg.val_fraction)));
        }
        let n = y.size()[0];
        if n < 2 {
            return Err(value_error("train", "a linear probe needs at least 2 samples"));
        }
        let _guard = tch::no_grad_guard();
        let (mean, std, x) = standardise_fit(features)?;
        let classes = y.f_max()?.f_int64_value(&[])? + 1;
        let n_val = ((n as f64 * cfg.val_fraction).round() as i64).clamp(1, n - 1);
        let perm = shuffled(n, cfg.seed);
        let (val_idx, fit_idx) = (perm.f_narrow(0, 0, n_val)?, perm.f_narrow(0, n_val, n - n_val)?);
        let (xf, yf) = (x.f_index_select(0, &fit_idx)?, y.f_index_select(0, &fit_idx)?);
        let (xv, yv) = (x.f_index_select(0, &val_idx)?, y.f_index_select(0, &val_idx)?);
        let mut val_accuracy = vec![];
        for &c in &cfg.c_grid {
            let (w, b) = fit_one(&xf, &yf, classes, c, cfg)?;
            val_accuracy.push(accuracy(&xv, &yv, &w, &b)?);
        }
        // Ties go to the smallest C (the strongest regularisation).
        let best = (0..cfg.c_grid.len()).fold(0, |best, i| if val_accuracy[i] > val_accuracy[best] { i } else { best });
        let c = cfg.c_grid[best];
        let (weight, bias) = fit_one(&x, &y, classes, c, cfg)?;
        Ok(Self { mean, std, weight, bias, c, val_accuracy })
    }

    /// Fits with one fixed C on all the features (no held-out selection).
    pub fn fit_fixed(features: &Tensor, labels: &Tensor, c: f64, cfg: &ProbeConfig) -> Result<Self> {
        let y = check_features(features, labels, "train")?.f_to_device(Device::Cpu)?;
        if !(c > 0.0 && c.is_finite()) {
            return Err(value_error("c", format!("expected a positive value, got {c}")));
        }
        let _guard = tch::no_grad_guard();
        let (mean, std, x) = standardise_fit(features)?;
        let classes = y.f_max()?.f_int64_value(&[])? + 1;
        let (weight, bias) = fit_one(&x, &y, classes, c, cfg)?;
        Ok(Self { mean, std, weight, bias, c, val_accuracy: vec![] })
    }

    /// Class probabilities `[M, classes]` (f64).
    pub fn predict_proba(&self, features: &Tensor) -> Result<Tensor> {
        let x = self.standardise(features)?;
        Ok(x.f_matmul(&self.weight)?.f_add(&self.bias)?.f_softmax(1, Kind::Double)?)
    }

    pub fn accuracy(&self, features: &Tensor, labels: &Tensor) -> Result<f64> {
        let y = check_features(features, labels, "test")?.f_to_device(Device::Cpu)?;
        accuracy(&self.standardise(features)?, &y, &self.weight, &self.bias)
    }

    fn standardise(&self, features: &Tensor) -> Result<Tensor> {
        let d = self.weight.size()[0];
        if features.dim() != 2 || features.size()[1] != d {
            return Err(value_error("features", format!("expected [M, {d}] features, got shape {:?}", features.size())));
        }
        let x = features.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        Ok(x.f_sub(&self.mean)?.f_div(&self.std)?)
    }
}
