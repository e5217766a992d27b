//! The BYOL learner: online and target networks on flat buffers, and the training step
//! (paper section 3.1, algorithm 1).
use crate::augment::{Augment, Layout};
use crate::config::LearnerConfig;
use crate::ema;
use crate::error::{value_error, Error, Result};
use crate::loss::{self, Variant};
use crate::model::flat::FlatTensors;
use crate::model::network::{network, ordered_variables, Network};
use crate::optim::{self, Optimizer};
use crate::schedule::{cosine_tau, warmup_cosine_lr};
use crate::shim;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// What one call of `step` reports.
#[derive(Clone, Debug)]
pub struct StepMetrics {
    pub loss: f64,
    pub lr: f64,
    pub tau: f64,
    /// Optimizer updates done so far (after this call).
    pub step: i64,
    /// Mean over dimensions of the std of l2-normalised online projections; 1/sqrt(d) is ideal, 0 is collapse.
    pub z_std: f64,
    /// Whether this call ended an accumulation cycle and updated the weights.
    pub updated: bool,
    pub skipped_steps: i64,
}

pub struct Learner {
    pub config: LearnerConfig,
    pub device: Device,
    _stores: (nn::VarStore, nn::VarStore),
    online: Network,
    target: Network,
    pub params: FlatTensors,
    pub target_params: FlatTensors,
    pub buffers: FlatTensors,
    pub target_buffers: FlatTensors,
    pub(crate) grads: FlatTensors,
    /// Biases and BN parameters (all 1-D parameters): no weight decay, no LARS adaptation.
    excluded: Vec<bool>,
    pub optimizer: Box<dyn Optimizer>,
    pub step: i64,
    pub micro_step: i64,
    pub skipped_steps: i64,
    /// The pipeline `step_images` applies; its RNG state is part of the training state.
    pub augment: Option<Augment>,
}

impl Learner {
    pub fn new(config: LearnerConfig) -> Result<Self> {
        let config = config.resolve()?;
        let device = config.device()?;
        tch::manual_seed(config.seed);
        let net_cfg = config.network();
        let online_vs = nn::VarStore::new(device);
        let online = network(&online_vs.root(), &net_cfg, true)?;
        let target_vs = nn::VarStore::new(device);
        let target = network(&target_vs.root(), &net_cfg, false)?;
        let (online_p, online_b) = ordered_variables(&online_vs);
        let (target_p, target_b) = ordered_variables(&target_vs);
        let params = FlatTensors::adopt(online_p, Kind::Float, device)?;
        let buffers = FlatTensors::adopt(online_b, Kind::Float, device)?;
        let target_params = FlatTensors::adopt(target_p, Kind::Float, device)?;
        let target_buffers = FlatTensors::adopt(target_b, Kind::Float, device)?;
        for t in &target_params.views {
            let _ = t.shallow_clone().f_set_requires_grad(false)?;
        }
        let grads = params.zeros_like()?;
        for (p, g) in params.views.iter().zip(&grads.views) {
            shim::set_grad(p, g)?;
        }
        let excluded = params.views.iter().map(|p| p.dim() == 1).collect();
        let optimizer = optim::build(&config.optim(), &params)?;
        let augment = config.augment.clone().map(Augment::new).transpose()?;
        let learner = Self {
            config,
            device,
            _stores: (online_vs, target_vs),
            online,
            target,
            params,
            target_params,
            buffers,
            target_buffers,
            grads,
            excluded,
            optimizer,
            step: 0,
            micro_step: 0,
            skipped_steps: 0,
            augment,
        };
        learner.sync_target()?;
        Ok(learner)
    }

    /// The target starts as an exact copy of the online encoder and projector.
    fn sync_target(&self) -> Result<()> {
        ema::ema_update_(&self.target_params.views, self.online_prefix(&self.params, &self.target_params)?, 0.0)?;
        ema::ema_update_(&self.target_buffers.views, self.online_prefix(&self.buffers, &self.target_buffers)?, 0.0)
    }

    /// The online tensors that pair with the target's: the same names, laid out as a prefix.
    fn online_prefix<'a>(&self, online: &'a FlatTensors, target: &FlatTensors) -> Result<&'a [Tensor]> {
        let k = target.views.len();
        debug_assert!(online.names[..k] == target.names[..]);
        Ok(&online.views[..k])
    }

    pub fn lr(&self, batch: i64) -> Result<f64> {
        let c = &self.config;
        let images = c.batch_size.unwrap_or(batch * c.accumulate);
        let scaled = c.lr.unwrap_or(0.0) * images as f64 / 256.0;
        warmup_cosine_lr(self.step, c.total_steps, c.warmup_steps, scaled, c.final_lr)
    }

    pub fn tau(&self) -> Result<f64> {
        cosine_tau(self.step, self.config.total_steps, self.config.tau_base, self.config.tau_final)
    }

    /// One BYOL step on two augmented views of the same batch.
    pub fn step(&mut self, view1: &Tensor, view2: &Tensor) -> Result<StepMetrics> {
        self.check_images(view1, "view1")?;
        self.check_images(view2, "view2")?;
        if view1.size() != view2.size() {
            return Err(value_error("view2", format!("shape {:?} does not match view1 shape {:?}", view2.size(), view1.size())));
        }
        let batch = view1.size()[0];
        if batch < 2 {
            return Err(value_error("view1", "training needs a batch of at least 2 images (BatchNorm statistics)"));
        }
        let (lr, tau) = (self.lr(batch)?, self.tau()?);
        // Running statistics are restored if the loss turns out non-finite.
        let saved_stats = (self.buffers.flat.f_detach_copy()?, self.target_buffers.flat.f_detach_copy()?);
        let (v1, v2) = (self.layout(view1)?, self.layout(view2)?);

        // Online network, each view on its own so that BN statistics are per view.
        let z1 = self.online.project(&v1, true);
        let z2 = self.online.project(&v2, true);
        let (p1, p2) = (self.online.predict(&z1, true), self.online.predict(&z2, true));
        // Target network, under stop-gradient.
        let (t1, t2) = tch::no_grad(|| (self.target.project(&v1, true), self.target.project(&v2, true)));
        // Symmetrised loss (eq. 2 and the sum below it): L(p1, z'2) + L(p2, z'1).
        let l12 = loss::byol_loss_forward(&p1, &t2, Variant::CosineSimilarity)?;
        let l21 = loss::byol_loss_forward(&p2, &t1, Variant::CosineSimilarity)?;
        let loss_value = l12.loss.double_value(&[]) + l21.loss.double_value(&[]);
        if !loss_value.is_finite() {
            let _guard = tch::no_grad_guard();
            self.buffers.flat.f_copy_(&saved_stats.0)?;
            self.target_buffers.flat.f_copy_(&saved_stats.1)?;
            if self.config.on_nonfinite == "skip" {
                self.skipped_steps += 1;
                return Ok(StepMetrics { loss: loss_value, lr, tau, step: self.step, z_std: f64::NAN, updated: false, skipped_steps: self.skipped_steps });
            }
            return Err(Error::NonFiniteLoss { loss: loss_value, step: self.step });
        }
        // Backward: the analytic dL/dp, scaled for accumulation, pushed through autograd.
        let scale = Tensor::from(1.0f32 / self.config.accumulate as f32).f_to_device(self.device)?;
        let g1 = loss::byol_loss_backward(&scale, &p1, &t2, &l12.saved)?;
        let g2 = loss::byol_loss_backward(&scale, &p2, &t1, &l21.saved)?;
        let surrogate = (&p1 * g1).f_sum(Kind::Float)? + (&p2 * g2).f_sum(Kind::Float)?;
        surrogate.f_backward()?;
        let z_std = tch::no_grad(|| crate::eval::diagnostics::z_std(&z1))?;

        self.micro_step += 1;
        let updated = self.micro_step == self.config.accumulate;
        if updated {
            self.optimizer.step(&self.params, &self.grads, &self.excluded, lr, self.step + 1)?;
            // Target update, eq. 1: one lerp_ over the flat buffers.
            ema::ema_update_(&self.target_params.views, self.online_prefix(&self.params, &self.target_params)?, tau)?;
            if self.config.ema_bn_stats {
                ema::ema_update_(&self.target_buffers.views, self.online_prefix(&self.buffers, &self.target_buffers)?, tau)?;
            }
            let _ = tch::no_grad(|| self.grads.flat.f_zero_())?;
            self.micro_step = 0;
            self.step += 1;
        }
        Ok(StepMetrics { loss: loss_value, lr, tau, step: self.step, z_std, updated, skipped_steps: self.skipped_steps })
    }

    /// Augments `images` into two views with the learner's pipeline, then steps. On any
    /// error the pipeline's RNG is rewound too, so a failed call changes nothing.
    pub fn step_images(&mut self, images: &Tensor, layout: Layout) -> Result<StepMetrics> {
        let Some(augment) = self.augment.as_mut() else {
            return Err(value_error("view2", "this learner has no augment pipeline: pass two views, or build it with augment=Augment(...)"));
        };
        let saved = augment.rng.clone();
        let views = augment.views(&images.f_to_device(self.device)?, layout);
        let out = views.and_then(|(v1, v2)| self.step(&v1, &v2));
        if out.is_err() {
            if let Some(a) = self.augment.as_mut() {
                a.rng = saved;
            }
        }
        out
    }

    /// Eval-mode backbone features, without gradients.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.check_images(images, "x")?;
        let x = self.layout(images)?;
        Ok(tch::no_grad(|| self.online.backbone.forward_t(&x, false)).f_contiguous()?)
    }

    /// fp32 on the learner's device, NHWC in memory where that is faster.
    fn layout(&self, images: &Tensor) -> Result<Tensor> {
        let x = images.f_to_kind(Kind::Float)?;
        if self.config.channels_last && self.device == Device::Cpu {
            return shim::channels_last(&x);
        }
        Ok(x)
    }

    fn check_images(&self, x: &Tensor, arg: &str) -> Result<()> {
        let size = x.size();
        if size.len() != 4 {
            return Err(value_error(arg, format!("expected a 4-D [batch, channels, height, width] tensor, got shape {size:?}")));
        }
        if size[1] != self.config.in_channels {
            return Err(value_error(arg, format!("expected {} channels (in_channels), got shape {size:?}", self.config.in_channels)));
        }
        if size[0] < 1 || size[2] < 1 || size[3] < 1 {
            return Err(value_error(arg, format!("expected a non-empty batch, got shape {size:?}")));
        }
        if !x.is_floating_point() {
            return Err(value_error(arg, format!("expected a floating-point tensor (normalised images), got {:?}", x.kind())));
        }
        if x.device() != self.device {
            return Err(value_error(arg, format!("is on {:?} but the learner is on {:?}", x.device(), self.device)));
        }
        if !bool::try_from(x.f_isfinite()?.f_all()?)? {
            return Err(value_error(arg, "contains NaN or infinite values"));
        }
        Ok(())
    }

    /// Backbone weights and BN statistics under torchvision's names (no `fc`), plus the
    /// `num_batches_tracked` counters torchvision's BN layers carry.
    pub fn backbone_state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (name, t) in self.params.named().chain(self.buffers.named()) {
            if let Some(key) = name.strip_prefix("backbone.") {
                out.push((key.to_string(), t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?));
                if let Some(bn) = key.strip_suffix(".running_mean") {
                    out.push((format!("{bn}.num_batches_tracked"), Tensor::from(self.step)));
                }
            }
        }
        Ok(out)
    }
}
