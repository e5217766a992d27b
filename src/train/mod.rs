//! The BYOL learner and its training step (paper section 3.1, algorithm 1). The step's
//! policies are types of their own, chosen once at construction: gradient accumulation
//! (`accumulate.rs`), fp16 loss scaling (`scaler.rs`), the non-finite loss guard (`guard.rs`)
//! and the backward plan (`backward.rs`).
pub mod accumulate;
pub mod backward;
pub mod guard;
mod inputs;
pub mod metrics;
pub mod scaler;

use crate::augment::rng::Rng;
use crate::augment::{Augment, Images, Layout};
use crate::config::{LearnerConfig, NonFiniteCheck};
use crate::distributed::Dist;
use crate::error::{value_error, Result};
use crate::loss::{self, Variant};
use crate::model::byol::OnlineTarget;
use crate::model::flat::FlatTensors;
use crate::model::norm::SyncHandle;
use crate::optim::{self, Optimizer};
use crate::schedule::{replanned_lr, replanned_tau, Replan};
use crate::shim;
use accumulate::{Accumulator, Progress};
use backward::{Backward, BackwardPlan};
use guard::{Call, GuardState, NonFiniteGuard, Verdict};
pub use metrics::{Reading, StepMetrics};
use scaler::{LossScaler, ScalerState};
use tch::{Device, Kind, Tensor};

pub struct Learner {
    config: LearnerConfig,
    device: Device,
    model: OnlineTarget,
    optimizer: Box<dyn Optimizer>,
    plan: BackwardPlan,
    accumulator: Accumulator,
    scaler: LossScaler,
    guard: Box<dyn NonFiniteGuard>,
    /// The last change of the run's length, from which the schedules continue (None: as planned).
    replan: Option<Replan>,
    /// The pipeline `step_images` applies; its RNG state is part of the training state.
    augment: Option<Augment>,
    /// The process group of a data-parallel run.
    dist: Option<Dist>,
}

/// The training state besides the tensors; a checkpoint keeps it.
#[derive(Clone, Debug)]
pub struct RunState {
    pub progress: Progress,
    pub scaler: ScalerState,
    pub guard: GuardState,
    pub replan: Option<Replan>,
    pub augment_rng: Option<Rng>,
}

impl Learner {
    pub fn new(config: LearnerConfig) -> Result<Self> {
        Self::with_dist(config, None)
    }

    /// A learner that is one rank of a data-parallel run: gradients are averaged across ranks
    /// before every update, so weights, optimizer state and target stay identical on all ranks.
    pub fn with_dist(config: LearnerConfig, dist: Option<Dist>) -> Result<Self> {
        let resolved = config.resolve().and_then(|c| c.device().map(|d| (c, d))).and_then(|(c, d)| {
            if dist.is_some() && c.nonfinite.nonfinite_check == NonFiniteCheck::Deferred {
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
            let mut shared = config.clone();
            shared.run.device = String::new();
            d.check_same("configuration (or sync_bn)", &format!("{}|sync_bn={}", shared.to_json(), d.sync_bn))?;
        }
        tch::manual_seed(config.run.seed);
        let sync = dist.as_ref().filter(|d| d.sync_bn && d.world_size() > 1).map(|d| SyncHandle(d.clone()));
        // cuDNN's and oneDNN's fast kernels are NHWC, so the conv weights live channels_last;
        // on CPU `channels_last=false` keeps NCHW, whose summation order the PyTorch default
        // shares (NHWC weight gradients differ by ~6e-5 relative). An NHWC input alone does not
        // switch oneDNN to NHWC when C is 1.
        let nhwc = device.is_cuda() || config.run.channels_last;
        let model = OnlineTarget::new(&config.network(), config.method.momentum, device, nhwc, sync.as_ref())?;
        let excluded: Vec<bool> = model.params.views.iter().map(|p| p.dim() == 1).collect();
        let optimizer = optim::build(&config.optim(), &model.params, &excluded)?;
        let augment = config.method.augment.clone().map(Augment::new).transpose()?;
        let deferred = guard::deferred(&config, device, dist.is_some());
        let mut learner = Self {
            plan: BackwardPlan::choose(&config, device, dist.is_some(), deferred),
            guard: guard::build(deferred, &config, device, dist.clone())?,
            scaler: LossScaler::new(&config),
            accumulator: Accumulator::new(config.method.accumulate),
            config,
            device,
            model,
            optimizer,
            replan: None,
            augment,
            dist,
        };
        if let Some(d) = &learner.dist {
            d.broadcast_from_rank0(&learner.model.params.flat)?;
            d.broadcast_from_rank0(&learner.model.buffers.flat)?;
        }
        learner.model.sync_target()?;
        learner.fork_rng_for_rank();
        Ok(learner)
    }

    /// Rank r draws augmentations from the seed's stream jumped r times (2^128 draws each),
    /// so ranks never share views and a checkpoint of rank 0's stream resumes every rank.
    fn fork_rng_for_rank(&mut self) {
        let rank = self.dist.as_ref().map_or(0, Dist::rank);
        if let Some(a) = self.augment.as_mut() {
            for _ in 0..rank {
                a.rng.jump();
            }
        }
    }

    /// One BYOL step on two augmented views of the same batch.
    pub fn step(&mut self, view1: &Tensor, view2: &Tensor) -> Result<StepMetrics> {
        self.settle(false)?;
        let checked = self.check_views(view1, view2);
        self.agree(checked)?;
        let rng = self.augment.as_ref().map(|a| a.rng.clone());
        self.train(view1, view2, rng)
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
        let out = self.agree(checked).and_then(|(v1, v2)| self.train(&v1, &v2, Some(saved.clone())));
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

    /// The step on checked views; `rng` is the augmentation RNG from before this call.
    fn train(&mut self, view1: &Tensor, view2: &Tensor, rng: Option<Rng>) -> Result<StepMetrics> {
        let (lr, tau) = self.schedules(view1.size()[0])?;
        let (stats, window_end) = (self.model.stats()?, self.accumulator.ends_window());
        let mut backward = Backward::new(self.plan, self.scaler.scale() / self.accumulator.window() as f64, self.device)?;
        // Up to the gradients, a failure or a refused loss leaves by one exit, which undoes the step.
        let judged = (|| -> Result<Verdict> {
            let views = [self.layout(view1)?, self.layout(view2)?];
            let autocast = self.config.autocast_kind().map(|k| shim::autocast(self.device, k)).transpose()?;
            let (targets, mut online_ahead) = self.model.targets(&views)?;
            // The symmetrised loss (eq. 2 and the sum below it): L(p1, z'2) + L(p2, z'1).
            let mut summed: Vec<(Tensor, Tensor)> = Vec::with_capacity(2); // per view: z, the loss up to it
            for (i, (view, target)) in [(&views[0], &targets[1]), (&views[1], &targets[0])].into_iter().enumerate() {
                let z = match online_ahead[i].take() { Some(z) => z, None => self.model.online.project(view, true)? };
                let p = self.model.online.predict(&z, true)?.f_to_kind(Kind::Float)?;
                let target = target.f_to_kind(Kind::Float)?;
                let l = loss::byol_loss_forward(&p, &target, Variant::CosineSimilarity)?;
                let so_far = match summed.last() { Some((_, l12)) => l12.f_add(&l.loss)?, None => l.loss.shallow_clone() };
                backward.view(p, target, l, &so_far)?;
                summed.push((z, so_far));
            }
            drop(autocast);
            let verdict = self.guard.check(&summed[1].1, &summed[0].0, Call { step: self.accumulator.step(), rng, stats: &stats })?;
            if let Verdict::Accepted { .. } = verdict {
                backward.finish()?;
                if window_end {
                    self.average_across_ranks()?;
                }
            }
            Ok(verdict)
        })();
        if !matches!(judged, Ok(Verdict::Accepted { .. })) {
            self.roll_back(&stats, backward.started())?;
        }
        let (loss, z_std) = match judged? {
            Verdict::Accepted { loss, z_std } => (loss, z_std),
            Verdict::Skipped { loss } => return Ok(self.metrics(Reading::Host(loss), Reading::Host(f64::NAN), lr, tau, false)),
        };
        self.accumulator.advance();
        if window_end {
            if !self.scaler.unscale_(&self.model.grads.flat)? {
                // fp16 overflow: the update is skipped and its gradients dropped.
                self.roll_back(&stats, true)?;
                return Ok(self.metrics(loss, z_std, lr, tau, false));
            }
            self.update(lr, tau)?;
        }
        Ok(self.metrics(loss, z_std, lr, tau, window_end))
    }

    /// The window's update: the optimizer, then the EMA (eq. 1), then the gradients cleared for
    /// the next window. It counts as a step unless the guard cancelled it on the device.
    fn update(&mut self, lr: f64, tau: f64) -> Result<()> {
        let mut state = vec![self.model.params.flat.shallow_clone(), self.model.target_params.flat.shallow_clone(), self.model.target_buffers.flat.shallow_clone()];
        state.extend(self.optimizer.flat_state());
        let t = self.accumulator.step() + 1;
        let counted = self.guard.update(&state, &mut || {
            self.optimizer.step(&self.model.params, &self.model.grads, lr, t)?;
            self.model.ema(tau, self.config.method.ema_bn_stats)?;
            self.model.zero_grads()
        })?;
        if counted {
            self.accumulator.count_update();
        }
        Ok(())
    }

    /// Data parallel, at the end of a window: the one gradient collective of the step, over the
    /// flat buffer. Without SyncBN each rank's running statistics follow its own shard;
    /// averaging them keeps every rank's model (and rank 0's checkpoint) the same.
    fn average_across_ranks(&self) -> Result<()> {
        let Some(d) = &self.dist else { return Ok(()) };
        d.average_(&self.model.grads.flat)?;
        if !d.sync_bn {
            d.average_(&self.model.buffers.flat)?;
            d.average_(&self.model.target_buffers.flat)?;
        }
        Ok(())
    }

    /// Undoes what a refused step changed: the BN running statistics and, once its backward
    /// may have run, the window's gradients, which cannot be told apart from earlier
    /// micro-steps' (the window starts again). Weights and optimizer state are untouched until
    /// the update.
    fn roll_back(&mut self, stats: &[(Tensor, Tensor)], drop_grads: bool) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (before, live) in stats {
            live.shallow_clone().f_copy_(before)?;
        }
        if drop_grads {
            self.model.zero_grads()?;
            self.accumulator.restart_window();
        }
        Ok(())
    }

    fn metrics(&self, loss: Reading, z_std: Reading, lr: f64, tau: f64, updated: bool) -> StepMetrics {
        let (step, skipped_steps, loss_scale) = (self.accumulator.step(), self.guard.state().skipped_steps, self.scaler.scale());
        StepMetrics { loss, lr, tau, step, z_std, updated, skipped_steps, loss_scale }
    }

    /// Acts on the non-finite checks that have reached the host (with `wait`, on all of them):
    /// a raised one puts the learner back to before its call, RNG and gradients included, and
    /// returns the error. Only the deferred check has any.
    pub fn settle(&mut self, wait: bool) -> Result<()> {
        let Some(rewind) = self.guard.settle(wait, &mut self.accumulator)? else { return Ok(()) };
        if let (Some(a), Some(rng)) = (self.augment.as_mut(), rewind.rng) {
            a.rng = rng;
        }
        self.model.zero_grads()?;
        Err(rewind.error)
    }

    /// The schedules' values for this call. SimSiam has no EMA; its target is the online
    /// network itself, i.e. tau = 0.
    fn schedules(&self, batch: i64) -> Result<(f64, f64)> {
        Ok((self.lr(batch)?, if self.model.target.is_some() { self.tau()? } else { 0.0 }))
    }

    pub fn lr(&self, batch: i64) -> Result<f64> {
        let c = &self.config;
        // The global batch: every rank of a data-parallel run sees `batch` images.
        let world = self.dist.as_ref().map_or(1, Dist::world_size);
        let images = c.schedule.batch_size.unwrap_or(batch * c.method.accumulate * world);
        let scaled = c.schedule.lr.unwrap_or(0.0) * images as f64 / 256.0;
        replanned_lr(self.replan.as_ref(), self.step_count(), c.schedule.total_steps, c.schedule.warmup_steps, scaled, c.schedule.final_lr)
    }

    pub fn tau(&self) -> Result<f64> {
        let c = &self.config;
        replanned_tau(self.replan.as_ref(), self.step_count(), c.schedule.total_steps, c.schedule.tau_base, c.schedule.tau_final)
    }

    /// Changes the schedules' length mid-run (a time-budgeted run re-planned from its measured
    /// speed). The warm-up stays; the rest of the lr and tau cosines stretches or shrinks from
    /// here on, starting from their current values (`schedule::Replan`).
    pub fn set_total_steps(&mut self, total: i64) -> Result<()> {
        if self.config.schedule.preset.is_some() {
            return Err(value_error("total_steps", "is fixed by the preset (its epochs times steps_per_epoch)"));
        }
        let step = self.step_count();
        let least = step.max(self.config.schedule.warmup_steps).max(1);
        if total < least {
            return Err(value_error("total_steps", format!("must be >= {least} (steps done, warm-up and 1), got {total}")));
        }
        if total != self.config.schedule.total_steps {
            self.replan = Some(Replan::at(self.replan.as_ref(), step, self.config.schedule.total_steps, self.config.schedule.warmup_steps));
            self.config.schedule.total_steps = total;
        }
        Ok(())
    }

    /// Eval-mode backbone features, without gradients.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.check_images(images, "x", true)?;
        let x = self.layout(images)?;
        Ok(crate::model::no_grad(|| self.model.online.backbone.forward(&x, false))?.f_contiguous()?)
    }

    /// The online backbone under torchvision's names (`OnlineTarget::backbone_state_dict`).
    pub fn backbone_state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        self.model.backbone_state_dict(self.step_count())
    }

    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    pub fn dist(&self) -> Option<&Dist> {
        self.dist.as_ref()
    }

    /// Optimizer updates done so far.
    pub fn step_count(&self) -> i64 {
        self.accumulator.step()
    }

    pub fn skipped_steps(&self) -> i64 {
        self.guard.state().skipped_steps
    }

    pub fn params(&self) -> &FlatTensors {
        &self.model.params
    }

    pub fn buffers(&self) -> &FlatTensors {
        &self.model.buffers
    }

    pub fn target_params(&self) -> &FlatTensors {
        &self.model.target_params
    }

    pub fn target_buffers(&self) -> &FlatTensors {
        &self.model.target_buffers
    }

    /// The window's accumulated gradients.
    pub fn grads(&self) -> &FlatTensors {
        &self.model.grads
    }

    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state()
    }

    pub fn run_state(&self) -> RunState {
        RunState {
            progress: self.accumulator.progress(),
            scaler: self.scaler.state(),
            guard: self.guard.state(),
            replan: self.replan,
            augment_rng: self.augment.as_ref().map(|a| a.rng.clone()),
        }
    }

    /// Takes over a saved run state (a checkpoint's); each rank then forks its augmentation stream.
    pub fn restore(&mut self, state: RunState) {
        self.accumulator.restore(state.progress);
        self.scaler.restore(state.scaler);
        self.guard.restore(state.guard);
        self.replan = state.replan;
        if let (Some(a), Some(rng)) = (self.augment.as_mut(), state.augment_rng) {
            a.rng = rng;
        }
        self.fork_rng_for_rank();
    }
}
