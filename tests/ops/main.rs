//! Every CPU op's backward checked against central finite differences of its forward, in f64.
//! One module per op, named as the op's file in src/cpu/ and its kernel in kernels/.
//!
//! Each check draws random inputs and a random upstream gradient `w`, takes the objective
//! L = sum(forward(inputs) * w), and compares the op's backward (fed dout = w) with
//! (L(x + h) - L(x - h)) / 2h for every input element. In f64 with h = 1e-5 the truncation and
//! rounding errors are near 1e-9 relative, so a wrong gradient cannot hide under the 1e-6 bound.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod adamw;
mod attention;
mod classifier;
mod embedding;
mod flash_attention;
mod gelu;
mod gpt;
mod layernorm;
mod matmul;
mod residual;

use genesis::rng::Rng;

pub const STEP: f64 = 1e-5;
pub const TOL: f64 = 1e-6;

pub fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with central differences of `objective` with respect to `x`, element by
/// element: |analytic - numeric| <= TOL * max(1, |numeric|) (scale-aware), and fails naming the op,
/// the input and the worst element.
pub fn check_grad(op: &str, input: &str, x: &[f64], analytic: &[f64], mut objective: impl FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{op}: gradient of {input} has the wrong length");
    assert!(!x.is_empty());
    let scale = analytic.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-3);
    let mut xp = x.to_vec();
    let mut worst = (0.0f64, 0usize, 0.0, 0.0);
    for i in 0..x.len() {
        xp[i] = x[i] + STEP;
        let up = objective(&xp);
        xp[i] = x[i] - STEP;
        let down = objective(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * STEP);
        let err = (analytic[i] - numeric).abs() / scale;
        if err > worst.0 || err.is_nan() {
            worst = (err, i, analytic[i], numeric);
        }
    }
    assert!(
        worst.0 <= TOL,
        "{op}: d/d{input}[{}] analytic {:.9e} vs finite difference {:.9e} (error {:.2e} of the gradient's scale {scale:.2e}, bound {TOL:e})",
        worst.1,
        worst.2,
        worst.3,
        worst.0
    );
    // A gradient that is zero everywhere would pass trivially against a constant objective.
    assert!(analytic.iter().any(|g| g.abs() > 1e-9), "{op}: gradient of {input} is all zero");
}
