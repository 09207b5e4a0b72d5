//! The learning-rate schedule: linear warmup, then cosine decay to a floor.

/// Linear warmup to `max_lr` over `warmup` steps, then cosine decay to `min_lr` at `total` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LrSchedule {
    /// Learning rate for the 0-based `step`.
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.max_lr * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.total {
            return self.min_lr;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let progress = (step - self.warmup) as f64 / span;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + cosine * (self.max_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_floor() {
        let s = LrSchedule { max_lr: 1.0, min_lr: 0.1, warmup: 10, total: 110 };
        assert!((s.at(0) - 0.1).abs() < 1e-12);
        assert!((s.at(9) - 1.0).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12);
        assert!((s.at(60) - 0.55).abs() < 1e-12);
        assert!((s.at(110) - 0.1).abs() < 1e-12 && (s.at(1000) - 0.1).abs() < 1e-12);
        assert!((10..110).all(|i| s.at(i + 1) <= s.at(i)));
    }
}
