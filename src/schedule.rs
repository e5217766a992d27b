//! Learning-rate and target-decay schedules, as in the official BYOL code
//! (deepmind-research/byol/utils/schedules.py) and the paper, section 3.2 / appendix J.
use crate::error::{value_error, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

fn check_progress(step: i64, total_steps: i64) -> Result<()> {
    if total_steps <= 0 {
        return Err(value_error("total_steps", format!("must be positive, got {total_steps}")));
    }
    if step < 0 {
        return Err(value_error("step", format!("must be >= 0, got {step}")));
    }
    Ok(())
}

/// `(1 + cos(pi * min(step, total) / total)) / 2`: falls from 1 to 0 over `total` steps.
fn cosine_decay(step: i64, total_steps: i64) -> f64 {
    let k = step.min(total_steps) as f64;
    0.5 * (1.0 + (PI * k / total_steps as f64).cos())
}

/// Target decay rate: `tau = final - (final - base) * (cos(pi k / K) + 1) / 2` (paper eq. in 3.2).
pub fn cosine_tau(step: i64, total_steps: i64, base: f64, final_: f64) -> Result<f64> {
    check_progress(step, total_steps)?;
    for (arg, v) in [("base", base), ("final", final_)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(value_error(arg, format!("tau must lie in [0, 1], got {v}")));
        }
    }
    Ok(final_ - (final_ - base) * cosine_decay(step, total_steps))
}

/// Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine decay to `final_lr`
/// at `total_steps`.
pub fn warmup_cosine_lr(
    step: i64,
    total_steps: i64,
    warmup_steps: i64,
    base_lr: f64,
    final_lr: f64,
) -> Result<f64> {
    check_progress(step, total_steps)?;
    if warmup_steps < 0 || warmup_steps > total_steps {
        return Err(value_error(
            "warmup_steps",
            format!("must lie in [0, total_steps={total_steps}], got {warmup_steps}"),
        ));
    }
    if !(base_lr >= 0.0 && base_lr.is_finite()) {
        return Err(value_error("base_lr", format!("must be finite and >= 0, got {base_lr}")));
    }
    if !(final_lr >= 0.0 && final_lr.is_finite()) {
        return Err(value_error("final_lr", format!("must be finite and >= 0, got {final_lr}")));
    }
    if step < warmup_steps {
        return Ok(base_lr * step as f64 / warmup_steps as f64);
    }
    let decay_steps = total_steps - warmup_steps;
    if decay_steps == 0 {
        return Ok(final_lr);
    }
    Ok(final_lr + (base_lr - final_lr) * cosine_decay(step - warmup_steps, decay_steps))
}

/// Where a change of the run's length (`Learner::set_total_steps`) re-planned the schedules.
/// From `lr_from` (and `tau_from`) on, the rest of each cosine, from the phase it had reached
/// there to its end, is stretched over the new length, so lr and tau carry on from their current
/// values; only their rate of change moves. Simply changing `total_steps` would jump both (a
/// 2,567-step plan cut to 1,943 at step 951 dropped lr from 0.855 to 0.645 in one step).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replan {
    pub lr_from: i64,
    pub lr_phase: f64,
    pub tau_from: i64,
    pub tau_phase: f64,
}

/// Fraction of a cosine done at `step` when it reached `phase0` at `from` and ends at `total`.
fn stretched_phase(step: i64, total: i64, from: i64, phase0: f64) -> f64 {
    if total <= from {
        return 1.0;
    }
    let done = (step.min(total) - from) as f64 / (total - from) as f64;
    (phase0 + (1.0 - phase0) * done).min(1.0)
}

/// `(1 + cos(pi * phase)) / 2`: the cosine's remaining share at a phase in [0, 1].
fn cosine_at(phase: f64) -> f64 {
    0.5 * (1.0 + (PI * phase).cos())
}

impl Replan {
    /// The lr cosine's phase at `step` (after the warm-up).
    fn lr_phase_at(plan: Option<&Replan>, step: i64, total: i64, warmup: i64) -> f64 {
        match plan {
            Some(r) if step >= r.lr_from => stretched_phase(step, total, r.lr_from, r.lr_phase),
            _ => stretched_phase(step, total, warmup, 0.0),
        }
    }

    fn tau_phase_at(plan: Option<&Replan>, step: i64, total: i64) -> f64 {
        match plan {
            Some(r) if step >= r.tau_from => stretched_phase(step, total, r.tau_from, r.tau_phase),
            _ => stretched_phase(step, total, 0, 0.0),
        }
    }

    /// The re-plan that keeps both schedules continuous when, at `step`, the length changes
    /// from `total`. During the warm-up the lr cosine has not begun, so its anchor is the
    /// warm-up's end at phase 0 (which is the plain schedule over the new length).
    pub fn at(previous: Option<&Replan>, step: i64, total: i64, warmup: i64) -> Replan {
        let lr_from = step.max(warmup);
        Replan {
            lr_from,
            lr_phase: Replan::lr_phase_at(previous, lr_from, total, warmup),
            tau_from: step,
            tau_phase: Replan::tau_phase_at(previous, step, total),
        }
    }
}

/// `warmup_cosine_lr` after re-plans (`plan`); identical to it, bit for bit, without one.
pub fn replanned_lr(plan: Option<&Replan>, step: i64, total: i64, warmup: i64, base_lr: f64, final_lr: f64) -> Result<f64> {
    let plain = warmup_cosine_lr(step, total, warmup, base_lr, final_lr)?; // also checks the arguments
    match plan {
        Some(r) if step >= r.lr_from => {
            Ok(final_lr + (base_lr - final_lr) * cosine_at(Replan::lr_phase_at(plan, step, total, warmup)))
        }
        _ => Ok(plain),
    }
}

/// `cosine_tau` after re-plans (`plan`); identical to it, bit for bit, without one.
pub fn replanned_tau(plan: Option<&Replan>, step: i64, total: i64, base: f64, final_: f64) -> Result<f64> {
    let plain = cosine_tau(step, total, base, final_)?; // also checks the arguments
    match plan {
        Some(r) if step >= r.tau_from => Ok(final_ - (final_ - base) * cosine_at(Replan::tau_phase_at(plan, step, total))),
        _ => Ok(plain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replan_keeps_lr_and_tau_continuous_and_ends_on_time() {
        let (w, base, fin) = (100, 1.0, 0.0);
        let lr = |p: Option<&Replan>, k, t| replanned_lr(p, k, t, w, base, fin).unwrap();
        let tau = |p: Option<&Replan>, k, t| replanned_tau(p, k, t, 0.98, 1.0).unwrap();
        let plan = Replan::at(None, 951, 2567, w);
        // At the re-plan the values are those of the old plan; at the new end, the final ones.
        assert!((lr(Some(&plan), 951, 1943) - lr(None, 951, 2567)).abs() < 1e-12);
        assert!((tau(Some(&plan), 951, 1943) - tau(None, 951, 2567)).abs() < 1e-12);
        assert!(lr(Some(&plan), 1943, 1943).abs() < 1e-12);
        assert!((tau(Some(&plan), 1943, 1943) - 1.0).abs() < 1e-12);
        // A second re-plan composes with the first.
        let again = Replan::at(Some(&plan), 1500, 1943, w);
        assert!((lr(Some(&again), 1500, 3000) - lr(Some(&plan), 1500, 1943)).abs() < 1e-12);
        // Before the anchor, and without one, the plain schedules hold bit for bit.
        assert_eq!(lr(Some(&plan), 900, 1943).to_bits(), lr(None, 900, 1943).to_bits());
        assert_eq!(lr(None, 500, 2567).to_bits(), warmup_cosine_lr(500, 2567, w, base, fin).unwrap().to_bits());
        // In the warm-up, the anchor is the warm-up's end at phase 0: the plain schedule.
        let early = Replan::at(None, 50, 2567, w);
        assert_eq!((early.lr_from, early.lr_phase), (w, 0.0));
        assert!((lr(Some(&early), 700, 1943) - lr(None, 700, 1943)).abs() < 1e-12);
    }

    #[test]
    fn tau_runs_from_base_to_final() {
        assert_eq!(cosine_tau(0, 100, 0.996, 1.0).unwrap(), 0.996);
        assert!((cosine_tau(50, 100, 0.996, 1.0).unwrap() - 0.998).abs() < 1e-15);
        assert_eq!(cosine_tau(100, 100, 0.996, 1.0).unwrap(), 1.0);
        assert_eq!(cosine_tau(500, 100, 0.996, 1.0).unwrap(), 1.0);
        assert!(cosine_tau(0, 0, 0.996, 1.0).is_err());
        assert!(cosine_tau(0, 10, 1.5, 1.0).is_err());
    }

    #[test]
    fn lr_warms_up_then_decays() {
        assert_eq!(warmup_cosine_lr(0, 100, 10, 1.0, 0.0).unwrap(), 0.0);
        assert!((warmup_cosine_lr(5, 100, 10, 1.0, 0.0).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(warmup_cosine_lr(10, 100, 10, 1.0, 0.0).unwrap(), 1.0);
        assert!((warmup_cosine_lr(55, 100, 10, 1.0, 0.0).unwrap() - 0.5).abs() < 1e-12);
        assert!((warmup_cosine_lr(100, 100, 10, 1.0, 0.1).unwrap() - 0.1).abs() < 1e-15);
        assert!(warmup_cosine_lr(0, 100, 101, 1.0, 0.0).is_err());
    }
}
