//! The BYOL learner: online and target networks on flat buffers, and the training step
//! (paper section 3.1, algorithm 1).
use crate::augment::{Augment, Images, Layout};
use crate::config::LearnerConfig;
use crate::distributed::Dist;
use crate::ema;
use crate::error::{value_error, Error, Result};
use crate::loss::{self, Variant};
use crate::model::flat::FlatTensors;
use crate::model::network::{network, ordered_variables, Network};
use crate::model::norm::SyncHandle;
use crate::optim::{self, Optimizer};
use crate::schedule::{replanned_lr, replanned_tau, Replan};
use crate::shim;
use std::collections::VecDeque;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// A metric that may still be on the device. Reading a `Device` value waits for the device,
/// so the step hands it over unread and the caller reads it only when it needs it.
#[derive(Debug)]
pub enum Reading {
    Host(f64),
    Device(Tensor),
}

impl Reading {
    pub fn value(&self) -> Result<f64> {
        match self {
            Reading::Host(v) => Ok(*v),
            Reading::Device(t) => Ok(t.f_double_value(&[])?),
        }
    }
}

/// What one call of `step` reports.
#[derive(Debug)]
pub struct StepMetrics {
    pub loss: Reading,
    pub lr: f64,
    pub tau: f64,
    /// Optimizer updates done so far (after this call).
    pub step: i64,
    /// Mean over dimensions of the std of l2-normalised online projections; 1/sqrt(d) is ideal, 0 is collapse.
    pub z_std: Reading,
    /// Whether this call ended an accumulation cycle and updated the weights.
    pub updated: bool,
    pub skipped_steps: i64,
    /// fp16's dynamic loss scale after this call (1 for fp32 and bf16).
    pub loss_scale: f64,
}

/// The forward pass's outputs, in fp32: the online projection of view 1 (for z_std), the
/// online predictions and the (stop-gradient) targets.
/// Both directions of the symmetric loss, kept for the analytic backward, and their sum.
struct Losses {
    l12: loss::LossForward,
    l21: loss::LossForward,
    sum: Tensor,
}

/// `sum(p * dL/dp)` with dL/dp from the fused loss's analytic backward, scaled: its backward
/// pushes the loss's gradient through the online network.
fn surrogate(scale: &Tensor, p: &Tensor, t: &Tensor, l: &loss::LossForward) -> Result<Tensor> {
    let g = loss::byol_loss_backward(scale, p, t, &l.saved)?;
    Ok((p * g).f_sum(Kind::Float)?)
}

/// `live <- before` wherever `fault` (a 0-d bool on the device) is set: cancels an update
/// without the host knowing whether it must.
fn keep_where(fault: &Tensor, before: &Tensor, live: &Tensor) -> Result<()> {
    let _ = live.shallow_clone().f_copy_(&before.f_where_self(fault, live)?)?;
    Ok(())
}

struct Projections {
    z1: Tensor,
    p1: Tensor,
    p2: Tensor,
    t1: Tensor,
    t2: Tensor,
}

pub struct Learner {
    pub config: LearnerConfig,
    pub device: Device,
    _stores: (nn::VarStore, nn::VarStore),
    online: Network,
    /// `None` in SimSiam mode (`momentum=false`): the target is the online projection.
    target: Option<Network>,
    pub params: FlatTensors,
    pub target_params: FlatTensors,
    pub buffers: FlatTensors,
    pub target_buffers: FlatTensors,
    pub(crate) grads: FlatTensors,
    pub optimizer: Box<dyn Optimizer>,
    pub step: i64,
    pub micro_step: i64,
    pub skipped_steps: i64,
    /// fp16's dynamic loss scale, and the good updates since it last changed.
    pub loss_scale: f64,
    pub good_steps: i64,
    /// The last change of the run's length, from which the schedules continue (None: as planned).
    pub replan: Option<Replan>,
    /// The pipeline `step_images` applies; its RNG state is part of the training state.
    pub augment: Option<Augment>,
    /// The process group of a data-parallel run.
    pub dist: Option<Dist>,
    /// CUDA steps whose non-finite check is still on its way to the host, oldest first.
    pending: VecDeque<PendingCheck>,
    /// On the device: set by a non-finite loss, and while set every update is cancelled.
    fault: Option<Tensor>,
    /// Updates launched so far (counts cancelled ones too): names accumulation windows.
    windows: i64,
    /// The window whose cancelled update `skipped_steps` has already counted.
    counted_window: i64,
    /// The current window's update is known to be cancelled: it must not advance `step`.
    skip_window: bool,
}

/// A CUDA step's summed loss on its way to the host, with what undoing the step needs.
struct PendingCheck {
    loss: shim::HostCopy,
    step: i64,
    window: i64,
    rng: Option<crate::augment::rng::Rng>,
}

impl Learner {
    pub fn new(config: LearnerConfig) -> Result<Self> {
        Self::with_dist(config, None)
    }

    /// A learner that is one rank of a data-parallel run: gradients are averaged across ranks
    /// before every update, so weights, optimizer state and target stay identical on all ranks.
    pub fn with_dist(config: LearnerConfig, dist: Option<Dist>) -> Result<Self> {
        let resolved = config.resolve().and_then(|c| c.device().map(|d| (c, d))).and_then(|(c, d)| {
            if dist.is_some() && c.nonfinite_check == "deferred" {
                return Err(value_error("nonfinite_check", "'deferred' does not combine with a data-parallel run, whose ranks agree on every step on the host; use 'auto' or 'immediate'"));
            }
            Ok((c, d))
        });
        let (config, device) = match &dist {
            // A rank whose config is invalid must not leave the others waiting in a collective.
            Some(d) => d.agree(resolved)?,
            None => resolved?,
        };
        if let Some(d) = &dist {
            // Devices differ between ranks by design (cuda:0, cuda:1, ...); nothing else may.
            let shared = LearnerConfig { device: String::new(), ..config.clone() };
            d.check_same("configuration (or sync_bn)", &format!("{}|sync_bn={}", shared.to_json(), d.sync_bn))?;
        }
        tch::manual_seed(config.seed);
        let net_cfg = config.network();
        let sync = dist.as_ref().filter(|d| d.sync_bn && d.world_size() > 1).map(|d| SyncHandle(d.clone()));
        let online_vs = nn::VarStore::new(device);
        let online = network(&online_vs.root(), &net_cfg, true, sync.as_ref())?;
        let target_vs = nn::VarStore::new(device);
        let target = config.momentum.then(|| network(&target_vs.root(), &net_cfg, false, sync.as_ref())).transpose()?;
        let (online_p, online_b) = ordered_variables(&online_vs);
        let (target_p, target_b) = ordered_variables(&target_vs);
        // cuDNN's and oneDNN's fast kernels are NHWC, so the conv weights live channels_last;
        // on CPU `channels_last=false` keeps NCHW, whose summation order the PyTorch default
        // shares (NHWC weight gradients differ by ~6e-5 relative). An NHWC input alone does not
        // switch oneDNN to NHWC when C is 1.
        let nhwc = device.is_cuda() || config.channels_last;
        let params = FlatTensors::adopt(online_p, Kind::Float, device, nhwc)?;
        let buffers = FlatTensors::adopt(online_b, Kind::Float, device, false)?;
        let target_params = FlatTensors::adopt(target_p, Kind::Float, device, nhwc)?;
        let target_buffers = FlatTensors::adopt(target_b, Kind::Float, device, false)?;
        for t in &target_params.views {
            let _ = t.shallow_clone().f_set_requires_grad(false)?;
        }
        let grads = params.zeros_like()?;
        for (p, g) in params.views.iter().zip(&grads.views) {
            shim::set_grad(p, g)?;
        }
        let excluded: Vec<bool> = params.views.iter().map(|p| p.dim() == 1).collect();
        let optimizer = optim::build(&config.optim(), &params, &excluded)?;
        let augment = config.augment.clone().map(Augment::new).transpose()?;
        let loss_scale = if config.precision == "fp16" { config.loss_scale } else { 1.0 };
        let mut learner = Self {
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
            optimizer,
            step: 0,
            micro_step: 0,
            skipped_steps: 0,
            loss_scale,
            good_steps: 0,
            replan: None,
            augment,
            dist,
            pending: VecDeque::new(),
            fault: None,
            windows: 0,
            counted_window: -1,
            skip_window: false,
        };
        if let Some(d) = &learner.dist {
            d.broadcast_from_rank0(&learner.params.flat)?;
            d.broadcast_from_rank0(&learner.buffers.flat)?;
        }
        learner.sync_target()?;
        learner.fork_rng_for_rank();
        Ok(learner)
    }

    /// Rank r draws augmentations from the seed's stream jumped r times (2^128 draws each),
    /// so ranks never share views and a checkpoint of rank 0's stream resumes every rank.
    pub fn fork_rng_for_rank(&mut self) {
        let rank = self.dist.as_ref().map_or(0, Dist::rank);
        if let Some(a) = self.augment.as_mut() {
            for _ in 0..rank {
                a.rng.jump();
            }
        }
    }

    /// The target starts as an exact copy of the online encoder and projector.
    fn sync_target(&self) -> Result<()> {
        self.ema(0.0, true)
    }

    /// Target update, eq. 1: one lerp over each flat buffer. The target's tensors pair with a
    /// prefix of the online ones (the same names, in the same order).
    fn ema(&self, tau: f64, with_buffers: bool) -> Result<()> {
        let pairs = [(&self.target_params, &self.params), (&self.target_buffers, &self.buffers)];
        for (target, online) in pairs.into_iter().take(if with_buffers { 2 } else { 1 }) {
            debug_assert!(online.names[..target.names.len()] == target.names[..]);
            let prefix = online.flat.f_narrow(0, 0, target.numel())?;
            ema::ema_update_(&[target.flat.shallow_clone()], &[prefix], tau)?;
        }
        Ok(())
    }

    pub fn lr(&self, batch: i64) -> Result<f64> {
        let c = &self.config;
        // The global batch: every rank of a data-parallel run sees `batch` images.
        let world = self.dist.as_ref().map_or(1, Dist::world_size);
        let images = c.batch_size.unwrap_or(batch * c.accumulate * world);
        let scaled = c.lr.unwrap_or(0.0) * images as f64 / 256.0;
        replanned_lr(self.replan.as_ref(), self.step, c.total_steps, c.warmup_steps, scaled, c.final_lr)
    }

    /// Changes the schedules' length mid-run (a time-budgeted run re-planned from its measured
    /// speed). The warm-up stays; the rest of the lr and tau cosines stretches or shrinks from
    /// here on, starting from their current values (`schedule::Replan`).
    pub fn set_total_steps(&mut self, total: i64) -> Result<()> {
        if self.config.preset.is_some() {
            return Err(value_error("total_steps", "is fixed by the preset (its epochs times steps_per_epoch)"));
        }
        let least = self.step.max(self.config.warmup_steps).max(1);
        if total < least {
            return Err(value_error("total_steps", format!("must be >= {least} (steps done, warm-up and 1), got {total}")));
        }
        if total != self.config.total_steps {
            self.replan = Some(Replan::at(self.replan.as_ref(), self.step, self.config.total_steps, self.config.warmup_steps));
            self.config.total_steps = total;
        }
        Ok(())
    }

    pub fn tau(&self) -> Result<f64> {
        let c = &self.config;
        replanned_tau(self.replan.as_ref(), self.step, c.total_steps, c.tau_base, c.tau_final)
    }

    /// One BYOL step on two augmented views of the same batch.
    pub fn step(&mut self, view1: &Tensor, view2: &Tensor) -> Result<StepMetrics> {
        self.settle(false)?;
        let checked = self.check_views(view1, view2);
        self.agree(checked)?;
        self.step_checked(view1, view2)
    }

    /// Augments `images` into two views with the learner's pipeline, then steps. On any
    /// error the pipeline's RNG is rewound too, so a failed call changes nothing.
    pub fn step_images(&mut self, images: Images<'_>, layout: Layout) -> Result<StepMetrics> {
        self.settle(false)?;
        let Some(augment) = self.augment.as_mut() else {
            return Err(value_error("view2", "this learner has no augment pipeline: pass two views, or build it with augment=Augment(...)"));
        };
        let saved = augment.rng.clone();
        let views = augment.views(images, layout, self.device);
        let checked = views.and_then(|(v1, v2)| self.check_views(&v1, &v2).map(|_| (v1, v2)));
        let out = self.agree(checked).and_then(|(v1, v2)| self.step_checked_from(&v1, &v2, Some(saved.clone())));
        if out.is_err() {
            if let Some(a) = self.augment.as_mut() {
                a.rng = saved;
            }
        }
        out
    }

    /// In a data-parallel run every rank stops when any rank's local checks failed.
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        match &self.dist {
            Some(d) => d.agree(local),
            None => local,
        }
    }

    /// Whether the non-finite check runs behind the device instead of waiting for it
    /// (`nonfinite_check`; with `auto`, on CUDA except where the host must decide at once).
    fn deferred(&self) -> bool {
        match self.config.nonfinite_check.as_str() {
            "deferred" => true,
            "immediate" => false,
            _ => self.device.is_cuda() && self.dist.is_none() && self.config.precision != "fp16",
        }
    }

    fn check_views(&self, view1: &Tensor, view2: &Tensor) -> Result<()> {
        // A deferred step catches non-finite views through its loss, on the device.
        let finite = !self.deferred();
        self.check_images(view1, "view1", finite)?;
        self.check_images(view2, "view2", finite)?;
        if view1.size() != view2.size() {
            return Err(value_error("view2", format!("shape {:?} does not match view1 shape {:?}", view2.size(), view1.size())));
        }
        if view1.size()[0] < 2 {
            return Err(value_error("view1", "training needs a batch of at least 2 images (BatchNorm statistics)"));
        }
        Ok(())
    }

    fn step_checked(&mut self, view1: &Tensor, view2: &Tensor) -> Result<StepMetrics> {
        self.step_checked_from(view1, view2, self.augment.as_ref().map(|a| a.rng.clone()))
    }

    /// `rng` is the augmentation RNG as it was before this call, which undoing it restores.
    fn step_checked_from(&mut self, view1: &Tensor, view2: &Tensor, rng: Option<crate::augment::rng::Rng>) -> Result<StepMetrics> {
        if self.deferred() {
            self.step_deferred(view1, view2, rng)
        } else {
            self.step_synchronous(view1, view2)
        }
    }

    fn metrics(&self, loss: Reading, z_std: Reading, lr: f64, tau: f64, updated: bool) -> StepMetrics {
        StepMetrics { loss, lr, tau, step: self.step, z_std, updated, skipped_steps: self.skipped_steps, loss_scale: self.loss_scale }
    }

    /// The schedules' values for this call. SimSiam has no EMA; its target is the online
    /// network itself, i.e. tau = 0.
    fn schedules(&self, batch: i64) -> Result<(f64, f64)> {
        Ok((self.lr(batch)?, if self.target.is_some() { self.tau()? } else { 0.0 }))
    }

    /// The step that decides on the host: the loss is read before anything is updated, and a
    /// non-finite one is refused at once (CPU, fp16, data parallel).
    fn step_synchronous(&mut self, view1: &Tensor, view2: &Tensor) -> Result<StepMetrics> {
        let (lr, tau) = self.schedules(view1.size()[0])?;
        // Running statistics are put back if the step is rejected.
        let saved_stats = (self.buffers.flat.f_detach_copy()?, self.target_buffers.flat.f_detach_copy()?);
        if self.backward_per_view() {
            let (loss_value, z_std) = match self.forward_backward_per_view(view1, view2) {
                Ok(m) => m,
                Err(e) => return self.roll_back(&saved_stats, true).and(Err(e)),
            };
            if !loss_value.is_finite() {
                // View 1's gradients may be in the buffer: with one micro-step per update it
                // held zeros before, which dropping the gradients restores exactly.
                return self.refuse_nonfinite(loss_value, &saved_stats, true, lr, tau);
            }
            return self.finish(loss_value, z_std, lr, tau, &saved_stats);
        }
        let f = match self.forward(view1, view2) {
            Ok(f) => f,
            Err(e) => return self.roll_back(&saved_stats, false).and(Err(e)),
        };
        let losses = self.losses(&f)?;
        let local = (losses.sum.f_double_value(&[])?, crate::model::no_grad(|| crate::eval::diagnostics::z_std(&f.z1))?);
        let (loss_value, z_std) = match self.global_mean(local) {
            Ok(m) => m,
            Err(e) => return self.roll_back(&saved_stats, false).and(Err(e)),
        };
        if !loss_value.is_finite() {
            return self.refuse_nonfinite(loss_value, &saved_stats, false, lr, tau);
        }
        let updated = self.micro_step + 1 == self.config.accumulate;
        let mut backward = self.backward(&f, &losses);
        if let (Some(d), true, Ok(())) = (&self.dist, updated, &backward) {
            // The one gradient collective of the step, over the flat buffer.
            backward = d.average_(&self.grads.flat);
            if !d.sync_bn && backward.is_ok() {
                // Without SyncBN each rank's running statistics follow its own shard; averaging
                // them keeps every rank's model (and rank 0's checkpoint) the same.
                backward = d.average_(&self.buffers.flat).and_then(|_| d.average_(&self.target_buffers.flat));
            }
        }
        if let Err(e) = backward {
            // A failed collective or libtorch error; the pending accumulation is dropped.
            return self.roll_back(&saved_stats, true).and(Err(e));
        }
        self.finish(loss_value, z_std, lr, tau, &saved_stats)
    }

    /// A rejected step: everything it changed is put back, then it is counted or raised.
    fn refuse_nonfinite(&mut self, loss_value: f64, saved_stats: &(Tensor, Tensor), drop_grads: bool, lr: f64, tau: f64) -> Result<StepMetrics> {
        self.roll_back(saved_stats, drop_grads)?;
        if self.config.on_nonfinite == "skip" {
            self.skipped_steps += 1;
            return Ok(self.metrics(Reading::Host(loss_value), Reading::Host(f64::NAN), lr, tau, false));
        }
        Err(Error::NonFiniteLoss { loss: loss_value, step: self.step, cancelled: 0 })
    }

    /// After a good backward: the micro-step is counted, and on the last one of the window the
    /// optimizer and the EMA run.
    fn finish(&mut self, loss_value: f64, z_std: f64, lr: f64, tau: f64, saved_stats: &(Tensor, Tensor)) -> Result<StepMetrics> {
        let updated = self.micro_step + 1 == self.config.accumulate;
        self.micro_step += 1;
        let (loss, z_std) = (Reading::Host(loss_value), Reading::Host(z_std));
        if updated && self.config.precision == "fp16" && !self.unscale_grads()? {
            // Overflow: this update is skipped and the scale halved (dynamic loss scaling).
            self.roll_back(saved_stats, true)?;
            self.loss_scale /= 2.0;
            self.good_steps = 0;
            return Ok(self.metrics(loss, z_std, lr, tau, false));
        }
        if updated {
            self.update(lr, tau)?;
            self.step += 1;
        }
        Ok(self.metrics(loss, z_std, lr, tau, updated))
    }

    /// fp32 on the CPU, one micro-step per update, a target network and no process group: each
    /// view's backward runs straight after its forward, so one view's activations are alive at
    /// a time instead of two. The flat buffer then sums the views' gradients in place of
    /// autograd, which gives the same bits (fp32 addition commutes, and the buffer held zeros).
    fn backward_per_view(&self) -> bool {
        self.device == tch::Device::Cpu && self.config.accumulate == 1 && self.target.is_some()
            && self.dist.is_none() && self.config.precision == "fp32"
    }

    /// The targets of both views, then view 1 forward and backward, then view 2. Returns the
    /// summed loss and z_std as the joint step computes them; nothing is backpropagated once
    /// a loss is not finite.
    fn forward_backward_per_view(&self, view1: &Tensor, view2: &Tensor) -> Result<(f64, f64)> {
        let (v1, v2) = (self.layout(view1)?, self.layout(view2)?);
        let Some(target) = &self.target else {
            return Err(value_error("target", "the per-view backward needs a target network"));
        };
        let (t1, t2) = crate::model::no_grad(|| (target.project(&v1, true), target.project(&v2, true)));
        let scale = self.loss_scale_tensor()?;
        let (l12, z_std) = {
            let z1 = self.online.project(&v1, true);
            let p1 = self.online.predict(&z1, true);
            let z_std = crate::model::no_grad(|| crate::eval::diagnostics::z_std(&z1))?;
            let l12 = loss::byol_loss_forward(&p1, &t2, Variant::CosineSimilarity)?;
            if l12.loss.f_double_value(&[])?.is_finite() {
                surrogate(&scale, &p1, &t2, &l12)?.f_backward()?;
            }
            (l12, z_std)
        };
        let p2 = self.online.predict(&self.online.project(&v2, true), true);
        let l21 = loss::byol_loss_forward(&p2, &t1, Variant::CosineSimilarity)?;
        let loss_value = l12.loss.f_add(&l21.loss)?.f_double_value(&[])?;
        if loss_value.is_finite() {
            surrogate(&scale, &p2, &t1, &l21)?.f_backward()?;
        }
        Ok((loss_value, z_std))
    }

    /// The CUDA step: nothing waits for the device. The loss is checked on the device, where a
    /// non-finite one sets `fault`, and a set fault cancels the update (every buffer is put
    /// back with `where`). The host learns of it later, in `settle`, from a copy queued here.
    fn step_deferred(&mut self, view1: &Tensor, view2: &Tensor, rng: Option<crate::augment::rng::Rng>) -> Result<StepMetrics> {
        let (lr, tau) = self.schedules(view1.size()[0])?;
        let fault = match &self.fault {
            Some(f) => f.shallow_clone(),
            None => self.fault.insert(Tensor::f_zeros([], (Kind::Bool, self.device))?).shallow_clone(),
        };
        let saved_stats = (self.buffers.flat.f_detach_copy()?, self.target_buffers.flat.f_detach_copy()?);
        let f = match self.forward(view1, view2) {
            Ok(f) => f,
            Err(e) => return self.roll_back(&saved_stats, false).and(Err(e)),
        };
        let losses = self.losses(&f)?;
        let z_std = crate::model::no_grad(|| crate::eval::diagnostics::z_std_on_device(&f.z1))?;
        let check = shim::HostCopy::start(&losses.sum)?;
        {
            let _guard = tch::no_grad_guard();
            let _ = fault.shallow_clone().f_logical_or_(&losses.sum.f_isfinite()?.f_logical_not()?)?;
            keep_where(&fault, &saved_stats.0, &self.buffers.flat)?;
            keep_where(&fault, &saved_stats.1, &self.target_buffers.flat)?;
        }
        // Queued before backward, so that a fault this call set is reported even if backward fails.
        self.pending.push_back(PendingCheck { loss: check, step: self.step, window: self.windows, rng });
        if let Err(e) = self.backward(&f, &losses) {
            return self.roll_back(&saved_stats, true).and(Err(e));
        }
        self.micro_step += 1;
        let updated = self.micro_step == self.config.accumulate;
        if updated {
            let _guard = tch::no_grad_guard();
            let mut state = vec![self.params.flat.shallow_clone(), self.target_params.flat.shallow_clone(), self.target_buffers.flat.shallow_clone()];
            state.extend(self.optimizer.flat_state());
            let before = state.iter().map(|t| t.f_detach_copy()).collect::<std::result::Result<Vec<_>, _>>()?;
            self.update(lr, tau)?;
            for (b, live) in before.iter().zip(&state) {
                keep_where(&fault, b, live)?;
            }
            if self.config.on_nonfinite == "skip" {
                // Skipping cancels only this window's update; raising cancels all until settled.
                let _ = fault.shallow_clone().f_zero_()?;
            }
            self.windows += 1;
            if !std::mem::take(&mut self.skip_window) {
                self.step += 1;
            }
        }
        Ok(self.metrics(Reading::Device(losses.sum), Reading::Device(z_std), lr, tau, updated))
    }

    /// Reads the deferred checks the device has finished (with `wait`, all of them) and acts
    /// on a non-finite loss: `skip` counts it and takes its update off `step`; `raise` puts
    /// the learner back to before that call and returns the error. The device already
    /// cancelled the updates, so only the host's counters and RNG need undoing.
    pub fn settle(&mut self, wait: bool) -> Result<()> {
        // The device runs at most this far behind before the host waits for it.
        const MAX_PENDING: usize = 64;
        loop {
            let wait_now = wait || self.pending.len() > MAX_PENDING;
            let Some(front) = self.pending.front() else { return Ok(()) };
            let Some(host) = front.loss.get(wait_now)? else { return Ok(()) };
            let loss = host.f_double_value(&[])?;
            let entry = self.pending.pop_front().expect("front exists");
            if loss.is_finite() {
                continue;
            }
            if self.config.on_nonfinite == "skip" {
                if entry.window != self.counted_window {
                    self.counted_window = entry.window;
                    self.skipped_steps += 1;
                    if self.windows > entry.window {
                        self.step -= 1;
                    } else {
                        self.skip_window = true;
                    }
                }
                continue;
            }
            let cancelled = self.pending.len();
            self.pending.clear();
            self.step = entry.step;
            self.micro_step = 0;
            self.windows = entry.window;
            self.skip_window = false;
            if let (Some(a), Some(rng)) = (self.augment.as_mut(), entry.rng) {
                a.rng = rng;
            }
            let _guard = tch::no_grad_guard();
            let _ = self.grads.flat.f_zero_()?;
            if let Some(f) = &self.fault {
                let _ = f.shallow_clone().f_zero_()?;
            }
            return Err(Error::NonFiniteLoss { loss, step: entry.step, cancelled });
        }
    }

    /// The symmetrised loss (eq. 2 and the sum below it): L(p1, z'2) + L(p2, z'1).
    fn losses(&self, f: &Projections) -> Result<Losses> {
        let l12 = loss::byol_loss_forward(&f.p1, &f.t2, Variant::CosineSimilarity)?;
        let l21 = loss::byol_loss_forward(&f.p2, &f.t1, Variant::CosineSimilarity)?;
        let sum = l12.loss.f_add(&l21.loss)?;
        Ok(Losses { l12, l21, sum })
    }

    /// The analytic dL/dp, scaled for accumulation (and fp16's loss scale), pushed through
    /// autograd into the flat gradient buffer.
    fn backward(&self, f: &Projections, l: &Losses) -> Result<()> {
        let scale = self.loss_scale_tensor()?;
        let s = surrogate(&scale, &f.p1, &f.t2, &l.l12)? + surrogate(&scale, &f.p2, &f.t1, &l.l21)?;
        Ok(s.f_backward()?)
    }

    /// `loss_scale / accumulate` as a 0-d tensor: a fill on the device, not a host-to-device
    /// copy (which would synchronise).
    fn loss_scale_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::f_full([], self.loss_scale / self.config.accumulate as f64, (Kind::Float, self.device))?)
    }

    /// The optimizer, then the EMA, then the gradients cleared for the next window.
    fn update(&mut self, lr: f64, tau: f64) -> Result<()> {
        self.optimizer.step(&self.params, &self.grads, lr, self.step + 1)?;
        self.ema(tau, self.config.ema_bn_stats)?;
        let _ = crate::model::no_grad(|| self.grads.flat.f_zero_())?;
        self.micro_step = 0;
        Ok(())
    }

    /// Both branches on both views, returned in fp32. bf16 / fp16 run under autocast.
    fn forward(&self, view1: &Tensor, view2: &Tensor) -> Result<Projections> {
        let (v1, v2) = (self.layout(view1)?, self.layout(view2)?);
        let autocast = self.config.autocast_kind().map(|k| shim::autocast(self.device, k)).transpose()?;
        // Online network, each view on its own so that BN statistics are per view.
        let z1 = self.online.project(&v1, true);
        let z2 = self.online.project(&v2, true);
        let (p1, p2) = (self.online.predict(&z1, true), self.online.predict(&z2, true));
        // Target network under stop-gradient; in SimSiam mode the online projections.
        let (t1, t2) = match &self.target {
            Some(target) => crate::model::no_grad(|| (target.project(&v1, true), target.project(&v2, true))),
            None => (z1.detach(), z2.detach()),
        };
        drop(autocast);
        if let Some(d) = &self.dist {
            d.take_error()?;
        }
        let float = |t: Tensor| t.f_to_kind(Kind::Float);
        Ok(Projections { z1: float(z1)?, p1: float(p1)?, p2: float(p2)?, t1: float(t1)?, t2: float(t2)? })
    }

    /// `(loss, z_std)` averaged over the ranks of a data-parallel run, so that every rank
    /// accepts or rejects the step alike.
    fn global_mean(&self, local: (f64, f64)) -> Result<(f64, f64)> {
        let Some(d) = &self.dist else { return Ok(local) };
        let m = Tensor::from_slice(&[local.0, local.1]);
        d.average_(&m)?;
        Ok((m.f_double_value(&[0])?, m.f_double_value(&[1])?))
    }

    /// Undoes what a rejected step changed: the BN running statistics, and with `drop_grads`
    /// the gradients of the pending accumulation. Weights and optimizer state are untouched
    /// until the update, so nothing else needs undoing.
    fn roll_back(&mut self, saved_stats: &(Tensor, Tensor), drop_grads: bool) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.buffers.flat.shallow_clone().f_copy_(&saved_stats.0)?;
        self.target_buffers.flat.shallow_clone().f_copy_(&saved_stats.1)?;
        if drop_grads {
            let _ = self.grads.flat.f_zero_()?;
            self.micro_step = 0;
        }
        Ok(())
    }

    /// Divides the gradients by the loss scale; `false` when any is not finite. After a run of
    /// good updates the scale doubles again.
    fn unscale_grads(&mut self) -> Result<bool> {
        let _guard = tch::no_grad_guard();
        let _ = self.grads.flat.shallow_clone().f_mul_scalar_(1.0 / self.loss_scale)?;
        if !bool::try_from(self.grads.flat.f_isfinite()?.f_all()?)? {
            return Ok(false);
        }
        self.good_steps += 1;
        if self.good_steps == self.config.loss_scale_growth_interval {
            self.loss_scale *= 2.0;
            self.good_steps = 0;
        }
        Ok(true)
    }

    /// Eval-mode backbone features, without gradients.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.check_images(images, "x", true)?;
        let x = self.layout(images)?;
        Ok(crate::model::no_grad(|| self.online.backbone.forward_t(&x, false)).f_contiguous()?)
    }

    /// fp32 on the learner's device, NHWC in memory where that is faster.
    fn layout(&self, images: &Tensor) -> Result<Tensor> {
        let x = images.f_to_kind(Kind::Float)?;
        // cuDNN's tensor-core convolutions are NHWC; on CPU it is the user's choice.
        if self.device.is_cuda() || self.config.channels_last {
            return shim::channels_last(&x);
        }
        Ok(x)
    }

    /// Shape, dtype and device; with `finite`, also no NaN or inf (which reads the device).
    fn check_images(&self, x: &Tensor, arg: &str, finite: bool) -> Result<()> {
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
        let min_side = self.online.backbone.min_side();
        if size[2] < min_side || size[3] < min_side {
            return Err(value_error(arg, format!("the {} backbone needs images of at least {min_side}x{min_side} px, got shape {size:?}", self.config.backbone)));
        }
        if !x.is_floating_point() {
            return Err(value_error(arg, format!("expected a floating-point tensor (normalised images), got {:?}", x.kind())));
        }
        if x.device() != self.device {
            return Err(value_error(arg, format!("is on {:?} but the learner is on {:?}", x.device(), self.device)));
        }
        if finite && !bool::try_from(x.f_isfinite()?.f_all()?)? {
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
