//! What a non-finite loss does to a step (`on_nonfinite`: raise, or skip and count). Two
//! guards, chosen once at construction (`nonfinite_check`): `Immediate` reads the loss on the
//! host and refuses the step at once; `Deferred` lets nothing wait for the device: a non-finite
//! loss cancels its update on the device, and the host acts on it later, in `settle`.
use super::accumulate::Accumulator;
use super::metrics::Reading;
use crate::augment::rng::Rng;
use crate::config::{LearnerConfig, NonFiniteCheck, OnNonFinite, Precision};
use crate::distributed::Dist;
use crate::error::{Error, Result};
use crate::eval::diagnostics::{z_std, z_std_on_device};
use crate::model::no_grad;
use crate::shim::HostCopy;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

/// The guard's counter; a checkpoint keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Steps whose non-finite loss was skipped.
    pub skipped_steps: i64,
}

/// What the guard makes of a step's loss.
pub enum Verdict {
    /// The step goes on, with its loss and z_std (read on the host, or still on the device).
    Accepted { loss: Reading, z_std: Reading },
    /// Skipped and counted: the step must put back what it changed.
    Skipped { loss: f64 },
}

/// The step a guard checks.
pub struct Call<'a> {
    /// Optimizer updates done before it.
    pub step: i64,
    /// The augmentation RNG as it was before it.
    pub rng: Option<Rng>,
    /// The BN statistics as `(before the call, live)`.
    pub stats: &'a [(Tensor, Tensor)],
}

/// A raised non-finite loss found after the fact: the learner goes back to before its call.
pub struct Rewind {
    pub rng: Option<Rng>,
    pub error: Error,
}

pub trait NonFiniteGuard: Send {
    /// Whether the views must be checked for NaN and inf on the host (which reads the device);
    /// a deferred check catches them through the loss instead.
    fn checks_inputs(&self) -> bool;

    /// Judges the summed loss once both views' forwards are done, before the joint backward.
    /// `z1` is view 1's online projection, for z_std.
    fn check(&mut self, loss: &Tensor, z1: &Tensor, call: Call<'_>) -> Result<Verdict>;

    /// Runs a window's update (`update`: optimizer and EMA over the tensors `state`); returns
    /// whether it counts as an optimizer step.
    fn update(&mut self, state: &[Tensor], update: &mut dyn FnMut() -> Result<()>) -> Result<bool>;

    /// Acts on the checks that have reached the host (with `wait`, on all of them).
    fn settle(&mut self, wait: bool, accumulator: &mut Accumulator) -> Result<Option<Rewind>>;

    fn state(&self) -> GuardState;

    fn restore(&mut self, state: GuardState);
}

/// Whether the check runs behind the device: `nonfinite_check`, where `auto` means on CUDA
/// unless the host must decide at once (fp16's loss scale, data parallel ranks agreeing).
pub fn deferred(config: &LearnerConfig, device: Device, data_parallel: bool) -> bool {
    match config.nonfinite.nonfinite_check {
        NonFiniteCheck::Deferred => true,
        NonFiniteCheck::Immediate => false,
        NonFiniteCheck::Auto => device.is_cuda() && !data_parallel && config.amp.precision != Precision::Fp16,
    }
}

pub fn build(deferred: bool, config: &LearnerConfig, device: Device, dist: Option<Dist>) -> Result<Box<dyn NonFiniteGuard>> {
    let skip = config.nonfinite.on_nonfinite == OnNonFinite::Skip;
    if deferred {
        return Ok(Box::new(Deferred::new(skip, device)?));
    }
    Ok(Box::new(Immediate { skip, dist, state: GuardState::default() }))
}

/// Reads the loss back in every step (CPU, fp16, data parallel) and refuses a non-finite one
/// before anything is updated.
pub struct Immediate {
    skip: bool,
    /// Ranks average the loss, so that all accept or refuse the step alike.
    dist: Option<Dist>,
    state: GuardState,
}

impl NonFiniteGuard for Immediate {
    fn checks_inputs(&self) -> bool {
        true
    }

    fn check(&mut self, loss: &Tensor, z1: &Tensor, call: Call<'_>) -> Result<Verdict> {
        let local = (loss.f_double_value(&[])?, no_grad(|| z_std(z1))?);
        let (loss, z_std) = global_mean(self.dist.as_ref(), local)?;
        if loss.is_finite() {
            return Ok(Verdict::Accepted { loss: Reading::Host(loss), z_std: Reading::Host(z_std) });
        }
        if !self.skip {
            return Err(Error::NonFiniteLoss { loss, step: call.step, cancelled: 0 });
        }
        self.state.skipped_steps += 1;
        Ok(Verdict::Skipped { loss })
    }

    fn update(&mut self, _state: &[Tensor], update: &mut dyn FnMut() -> Result<()>) -> Result<bool> {
        update()?;
        Ok(true)
    }

    fn settle(&mut self, _wait: bool, _accumulator: &mut Accumulator) -> Result<Option<Rewind>> {
        Ok(None)
    }

    fn state(&self) -> GuardState {
        self.state
    }

    fn restore(&mut self, state: GuardState) {
        self.state = state;
    }
}

/// `(loss, z_std)` averaged over the ranks of a data-parallel run.
fn global_mean(dist: Option<&Dist>, local: (f64, f64)) -> Result<(f64, f64)> {
    let Some(d) = dist else { return Ok(local) };
    let m = Tensor::from_slice(&[local.0, local.1]);
    d.average_(&m)?;
    Ok((m.f_double_value(&[0])?, m.f_double_value(&[1])?))
}

/// The CUDA check: the loss is tested on the device, where a non-finite one sets `fault`, and
/// a set fault cancels the update (every buffer is put back with `where`). A copy of the loss
/// travels to the host behind the work; `settle` reads it and acts.
pub struct Deferred {
    skip: bool,
    state: GuardState,
    /// On the device: set by a non-finite loss, and while set every update is cancelled.
    fault: Tensor,
    /// Steps whose check is still on its way to the host, oldest first.
    pending: VecDeque<PendingCheck>,
    /// Updates launched so far (counts cancelled ones too): names accumulation windows.
    windows: i64,
    /// The window whose cancelled update `skipped_steps` has already counted.
    counted_window: i64,
    /// The current window's update is known to be cancelled: it must not count as a step.
    skip_window: bool,
}

/// A step's summed loss on its way to the host, with what undoing the step needs.
struct PendingCheck {
    loss: HostCopy,
    step: i64,
    window: i64,
    rng: Option<Rng>,
}

/// The device runs at most this many steps ahead of the host's checks before the host waits.
const MAX_PENDING: usize = 64;

impl Deferred {
    fn new(skip: bool, device: Device) -> Result<Self> {
        let fault = Tensor::f_zeros([], (Kind::Bool, device))?;
        Ok(Self { skip, state: GuardState::default(), fault, pending: VecDeque::new(), windows: 0, counted_window: -1, skip_window: false })
    }
}

impl NonFiniteGuard for Deferred {
    fn checks_inputs(&self) -> bool {
        false
    }

    fn check(&mut self, loss: &Tensor, z1: &Tensor, call: Call<'_>) -> Result<Verdict> {
        let z_std = no_grad(|| z_std_on_device(z1))?;
        let copy = HostCopy::start(loss)?;
        {
            let _guard = tch::no_grad_guard();
            let _ = self.fault.shallow_clone().f_logical_or_(&loss.f_isfinite()?.f_logical_not()?)?;
            for (before, live) in call.stats {
                keep_where(&self.fault, before, live)?;
            }
        }
        // Queued before backward, so that a fault this call set is reported even if backward fails.
        self.pending.push_back(PendingCheck { loss: copy, step: call.step, window: self.windows, rng: call.rng });
        Ok(Verdict::Accepted { loss: Reading::Device(loss.shallow_clone()), z_std: Reading::Device(z_std) })
    }

    fn update(&mut self, state: &[Tensor], update: &mut dyn FnMut() -> Result<()>) -> Result<bool> {
        let _guard = tch::no_grad_guard();
        let before = state.iter().map(|t| t.f_detach_copy()).collect::<std::result::Result<Vec<_>, _>>()?;
        update()?;
        for (b, live) in before.iter().zip(state) {
            keep_where(&self.fault, b, live)?;
        }
        if self.skip {
            // Skipping cancels only this window's update; raising cancels all until settled.
            let _ = self.fault.shallow_clone().f_zero_()?;
        }
        self.windows += 1;
        Ok(!std::mem::take(&mut self.skip_window))
    }

    /// `skip` counts a non-finite loss and takes its window's update off the step count;
    /// `raise` rewinds the counters to before that call and returns the error. The device
    /// already cancelled the updates, so only the host's side needs undoing.
    fn settle(&mut self, wait: bool, accumulator: &mut Accumulator) -> Result<Option<Rewind>> {
        loop {
            let wait_now = wait || self.pending.len() > MAX_PENDING;
            let Some(front) = self.pending.front() else { return Ok(None) };
            let Some(host) = front.loss.get(wait_now)? else { return Ok(None) };
            let loss = host.f_double_value(&[])?;
            let Some(entry) = self.pending.pop_front() else { return Ok(None) };
            if loss.is_finite() {
                continue;
            }
            if self.skip {
                if entry.window != self.counted_window {
                    self.counted_window = entry.window;
                    self.state.skipped_steps += 1;
                    if self.windows > entry.window {
                        accumulator.uncount_update();
                    } else {
                        self.skip_window = true;
                    }
                }
                continue;
            }
            let cancelled = self.pending.len();
            self.pending.clear();
            accumulator.rewind(entry.step);
            self.windows = entry.window;
            self.skip_window = false;
            let _ = no_grad(|| self.fault.shallow_clone().f_zero_())?;
            return Ok(Some(Rewind { rng: entry.rng, error: Error::NonFiniteLoss { loss, step: entry.step, cancelled } }));
        }
    }

    fn state(&self) -> GuardState {
        self.state
    }

    fn restore(&mut self, state: GuardState) {
        self.state = state;
    }
}

/// `live <- before` wherever `fault` (a 0-d bool on the device) is set: cancels an update
/// without the host knowing whether it must.
fn keep_where(fault: &Tensor, before: &Tensor, live: &Tensor) -> Result<()> {
    live.shallow_clone().f_copy_(&before.f_where_self(fault, live)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z1() -> Tensor {
        Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).f_view([2, 2]).unwrap()
    }

    #[test]
    fn immediate_raises_or_skips_a_non_finite_loss_at_once() {
        let nan = Tensor::from(f32::NAN);
        let mut raise = Immediate { skip: false, dist: None, state: GuardState::default() };
        let err = raise.check(&nan, &z1(), Call { step: 7, rng: None, stats: &[] }).err().unwrap();
        assert!(matches!(err, Error::NonFiniteLoss { step: 7, cancelled: 0, .. }), "{err}");
        let mut skip = Immediate { skip: true, dist: None, state: GuardState::default() };
        assert!(matches!(skip.check(&nan, &z1(), Call { step: 7, rng: None, stats: &[] }).unwrap(), Verdict::Skipped { .. }));
        assert_eq!(skip.state().skipped_steps, 1);
    }

    #[test]
    fn deferred_cancels_the_update_on_the_device_and_counts_it_when_settled() {
        let mut guard = Deferred::new(true, Device::Cpu).unwrap();
        let mut progress = Accumulator::new(1);
        let (w, stat) = (Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[3.0f32]));
        let stats = [(stat.copy(), stat.shallow_clone())];
        let _ = stat.shallow_clone().f_add_scalar_(1.0).unwrap(); // the forward moved a BN statistic
        let verdict = guard.check(&Tensor::from(f32::NAN), &z1(), Call { step: 0, rng: None, stats: &stats }).unwrap();
        assert!(matches!(verdict, Verdict::Accepted { loss: Reading::Device(_), .. }));
        let mut add_one = || -> Result<()> {
            let _ = w.shallow_clone().f_add_scalar_(1.0)?;
            Ok(())
        };
        let counted = guard.update(&[w.shallow_clone()], &mut add_one).unwrap();
        assert!(counted);
        progress.count_update();
        assert_eq!((Vec::<f32>::try_from(&w).unwrap(), Vec::<f32>::try_from(&stat).unwrap()), (vec![1.0, 2.0], vec![3.0]));
        assert!(guard.settle(true, &mut progress).unwrap().is_none());
        assert_eq!((guard.state().skipped_steps, progress.step()), (1, 0));
    }
}
