//! Gradient accumulation: `accumulate` calls of `step` (micro-steps) add their gradients into
//! the one flat buffer, each scaled by `1 / accumulate`, and the last call of each window
//! updates the weights with their mean.
use serde::{Deserialize, Serialize};

/// How far training has come; a checkpoint keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer updates done.
    pub step: i64,
    /// Micro-steps whose gradients are in the buffer, waiting for the window's update.
    pub micro_step: i64,
}

pub struct Accumulator {
    /// Micro-steps per update.
    window: i64,
    progress: Progress,
}

impl Accumulator {
    pub fn new(window: i64) -> Self {
        Self { window, progress: Progress::default() }
    }

    pub fn window(&self) -> i64 {
        self.window
    }

    /// Optimizer updates done.
    pub fn step(&self) -> i64 {
        self.progress.step
    }

    /// Whether the coming micro-step is the last of its window, the one that updates the weights.
    pub fn ends_window(&self) -> bool {
        self.progress.micro_step + 1 == self.window
    }

    /// Counts a micro-step whose gradients reached the buffer; the window's last starts the next.
    pub fn advance(&mut self) {
        self.progress.micro_step = (self.progress.micro_step + 1) % self.window;
    }

    /// The window's gradients were dropped: it starts again.
    pub fn restart_window(&mut self) {
        self.progress.micro_step = 0;
    }

    pub fn count_update(&mut self) {
        self.progress.step += 1;
    }

    /// Takes back an update already counted (a deferred check found its loss non-finite).
    pub fn uncount_update(&mut self) {
        self.progress.step -= 1;
    }

    /// Back to the start of a window after `step` updates.
    pub fn rewind(&mut self, step: i64) {
        self.progress = Progress { step, micro_step: 0 };
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    pub fn restore(&mut self, progress: Progress) {
        self.progress = progress;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_third_micro_step_ends_a_window() {
        let mut a = Accumulator::new(3);
        let ends: Vec<bool> = (0..6)
            .map(|_| {
                let end = a.ends_window();
                a.advance();
                end
            })
            .collect();
        assert_eq!(ends, [false, false, true, false, false, true]);
        assert_eq!(a.progress(), Progress { step: 0, micro_step: 0 });
    }
}
