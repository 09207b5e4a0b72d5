//! The optimizer step: AdamW with decoupled weight decay on the 2-D weights only, and gradient
//! clipping by global norm. All of it elementwise or reduced in a fixed order, so a step gives the
//! same bits whatever the thread count. `gpu::adamw` and `kernels/adamw.cu` are its GPU twins.

use crate::model::ParamLayout;
use rayon::prelude::*;

/// Elements per task for elementwise work and partial sums (fixed: results must not depend on threads).
const CHUNK: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// AdamW state: both moments in the parameter layout, and the number of updates taken.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, num_params: usize) -> Self {
        AdamW { cfg, m: vec![0.0; num_params], v: vec![0.0; num_params], t: 0 }
    }

    /// One update, in PyTorch's order: decay p by lr*wd, then p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    pub fn update(&mut self, layout: &ParamLayout, params: &mut [f32], grads: &[f32], lr: f32) {
        assert!(params.len() == layout.total && grads.len() == layout.total);
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        for spec in &layout.tensors {
            let decay = if spec.param.decays() { 1.0 - lr * c.weight_decay } else { 1.0 };
            let r = spec.range();
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(self.m[r.clone()].par_chunks_mut(CHUNK).zip(self.v[r].par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                        let denom = v[i].sqrt() * inv_sqrt_bc2 + c.eps;
                        p[i] = p[i] * decay - step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// L2 norm of the whole gradient, accumulated in f64 in a fixed order.
pub fn global_norm(grads: &[f32]) -> f64 {
    let partial: Vec<f64> =
        grads.par_chunks(CHUNK).map(|ch| ch.iter().map(|&g| g as f64 * g as f64).sum::<f64>()).collect();
    partial.iter().sum::<f64>().sqrt()
}

/// Scales gradients down so their global norm is at most `max_norm` (as torch's clip_grad_norm_);
/// returns the norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let coef = clip_factor(norm, max_norm);
    if coef < 1.0 {
        grads.par_chunks_mut(CHUNK).for_each(|ch| ch.iter_mut().for_each(|g| *g *= coef));
    }
    norm
}

/// The factor [`clip_grad_norm`] multiplies the gradients by: min(1, max_norm / (norm + 1e-6)) in
/// f64, rounded to f32, when `max_norm > 0` and the norm is finite; 1 otherwise. The GPU uses the
/// same expression (`gpu::adamw::clip_grad_norm`, and `step_decide` in `kernels/adamw.cu`).
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 && norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0) as f32
    } else {
        1.0
    }
}
