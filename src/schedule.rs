//! Learning-rate and target-decay schedules, as in the official BYOL code
//! (deepmind-research/byol/utils/schedules.py) and the paper, section 3.2 / appendix J.
use crate::error::{value_error, Result};
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

#[cfg(test)]
mod tests {
    use super::*;

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
