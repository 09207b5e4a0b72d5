//! CUDA GELU forward vs. `cpu::gelu` run in f64.

use super::{gpu_or_skip, SplitMix};
use genesis::cpu;
use genesis::gpu::device::Gpu;
use genesis::gpu::gelu::gelu_forward;

const TAIL: usize = 5;

/// GELU of `x` on the GPU (output poisoned with NaN first, tail checked untouched).
fn run_gelu(gpu: &Gpu, x: &[f32]) -> Vec<f32> {
    let n = x.len();
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(x).unwrap();
    let mut d_out = stream.clone_htod(&vec![f32::NAN; n + TAIL]).unwrap();
    gelu_forward(gpu, &mut d_out, &d_inp, n).unwrap();
    gpu.synchronize().unwrap();
    let mut got = stream.clone_dtoh(&d_out).unwrap();
    assert!(got[n..].iter().all(|v| v.is_nan()), "N={n}: written past the end");
    got.truncate(n);
    got
}

fn reference(x: &[f32]) -> Vec<f64> {
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut out = vec![0.0f64; x.len()];
    cpu::gelu::gelu_forward(&mut out, &x64);
    out
}

#[test]
fn gelu_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = SplitMix(0x6765_6c75_0000_0001);
    for n in [1usize, 31, 1000, 12_289, 4 * 64 * 3072 + 7] {
        let x: Vec<f32> = (0..n).map(|_| 5.0 * rng.next_f32()).collect();
        let want = reference(&x);
        let got = run_gelu(&gpu, &x);
        if let Some(i) = got.iter().position(|g| !g.is_finite()) {
            panic!("N={n}: element {i} is {} (unwritten?), expected {}", got[i], want[i]);
        }
        let max_ref = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let (worst, max_err) = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .enumerate()
            .fold((0, 0.0f64), |best, (i, e)| if e > best.1 { (i, e) } else { best });
        assert!(
            max_err <= 1e-5 * max_ref,
            "N={n}: max abs error {max_err:e} at {worst} (x = {}, gpu {} vs ref {}) exceeds 1e-5 * {max_ref}",
            x[worst],
            got[worst],
            want[worst]
        );
        println!("gelu_forward N={n}: max abs err {max_err:.1e} (max |ref| {max_ref:.2})");
    }
}

#[test]
fn gelu_forward_saturates() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    // Far tails (tanh = +-1), around the kink, and tiny inputs.
    let x = [-30.0f32, -10.0, -3.0, -0.5, 1e-4, -1e-4, 0.5, 3.0, 10.0, 30.0];
    let want = reference(&x);
    let got = run_gelu(&gpu, &x);
    for ((&xi, &g), &w) in x.iter().zip(&got).zip(&want) {
        assert!((g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "gelu({xi}): gpu {g} vs ref {w}");
    }
}
