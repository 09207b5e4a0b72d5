//! CUDA residual add forward and backward vs. `cpu::residual` (bit-identical: one f32 add).

use super::{gpu_or_skip, SplitMix};
use genesis::cpu;
use genesis::gpu::residual::{residual_backward, residual_forward};
use half::bf16;

#[test]
fn residual_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    const TAIL: usize = 5;
    let mut rng = SplitMix(0x6164_6469_7469_6f6e);
    let stream = gpu.stream();
    for n in [1usize, 31, 1000, 12_289, (1 << 20) + 3] {
        let a: Vec<f32> = (0..n).map(|_| 3.0 * rng.next_f32() + 0.5).collect();
        let b = rng.vec(n);
        let mut want = vec![0.0f32; n];
        cpu::residual::residual_forward(&mut want, &a, &b);

        let d_a = stream.clone_htod(&a).unwrap();
        let d_b = stream.clone_htod(&b).unwrap();
        let mut d_out = stream.clone_htod(&vec![f32::NAN; n + TAIL]).unwrap();
        residual_forward(&gpu, &mut d_out, &d_a, &d_b, n).unwrap();
        gpu.synchronize().unwrap();
        let got = stream.clone_dtoh(&d_out).unwrap();

        assert!(got[n..].iter().all(|x| x.is_nan()), "N={n}: written past the end");
        for (i, (g, e)) in got[..n].iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), e.to_bits(), "N={n}: mismatch at {i}: gpu {g} vs cpu {e}");
        }
        println!("residual_forward N={n}: bit-identical");
    }
}

/// bf16 storage: the kernel adds the two bf16 values in f32 and rounds the sum to bf16 once
/// (round-to-nearest-even, as `bf16::from_f32`). The CPU's f32 sum of the same bf16 inputs, rounded
/// the same way, is the same value, so the comparison is exact.
#[test]
fn residual_forward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    const TAIL: usize = 5;
    let mut rng = SplitMix(0x6266_3136_7265_7369);
    let stream = gpu.stream();
    for n in [1usize, 31, 1000, 12_289, (1 << 20) + 3] {
        let a: Vec<bf16> = (0..n).map(|_| bf16::from_f32(3.0 * rng.next_f32() + 0.5)).collect();
        let b: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.next_f32())).collect();
        let (a32, b32): (Vec<f32>, Vec<f32>) =
            (a.iter().map(|x| x.to_f32()).collect(), b.iter().map(|x| x.to_f32()).collect());
        let mut sum = vec![0.0f32; n];
        cpu::residual::residual_forward(&mut sum, &a32, &b32);
        let want: Vec<bf16> = sum.into_iter().map(bf16::from_f32).collect();

        let d_a = stream.clone_htod(&a).unwrap();
        let d_b = stream.clone_htod(&b).unwrap();
        let mut d_out = stream.clone_htod(&vec![bf16::NAN; n + TAIL]).unwrap();
        residual_forward(&gpu, &mut d_out, &d_a, &d_b, n).unwrap();
        gpu.synchronize().unwrap();
        let got = stream.clone_dtoh(&d_out).unwrap();

        assert!(got[n..].iter().all(|x| x.is_nan()), "N={n}: written past the end");
        for (i, (g, e)) in got[..n].iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), e.to_bits(), "N={n}: mismatch at {i}: gpu {g} vs cpu {e}");
        }
        println!("residual_forward_bf16 N={n}: bit-identical");
    }
}

/// Backward accumulates: both gradients pre-filled with random values (plus a random tail that must
/// stay as it is), one f32 add each, so bit-identical to the CPU.
#[test]
fn residual_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    const TAIL: usize = 5;
    let mut rng = SplitMix(0x7265_7362_6163_6b01);
    let stream = gpu.stream();
    for n in [1usize, 31, 1000, 12_289, (1 << 20) + 3] {
        let dout: Vec<f32> = (0..n).map(|_| 2.0 * rng.next_f32()).collect();
        let dinp1 = rng.vec(n + TAIL);
        let dinp2: Vec<f32> = (0..n + TAIL).map(|_| 0.01 * rng.next_f32()).collect();
        let (mut want1, mut want2) = (dinp1.clone(), dinp2.clone());
        cpu::residual::residual_backward(&mut want1[..n], &mut want2[..n], &dout);

        let d_dout = stream.clone_htod(&dout).unwrap();
        let mut d_dinp1 = stream.clone_htod(&dinp1).unwrap();
        let mut d_dinp2 = stream.clone_htod(&dinp2).unwrap();
        residual_backward(&gpu, &mut d_dinp1, &mut d_dinp2, &d_dout, n).unwrap();
        gpu.synchronize().unwrap();
        let got1 = stream.clone_dtoh(&d_dinp1).unwrap();
        let got2 = stream.clone_dtoh(&d_dinp2).unwrap();

        for (what, got, want) in [("dinp1", &got1, &want1), ("dinp2", &got2, &want2)] {
            for (i, (g, e)) in got.iter().zip(want.iter()).enumerate() {
                let place = if i < n { "" } else { " (tail: written past the end)" };
                assert_eq!(g.to_bits(), e.to_bits(), "{what} N={n}: mismatch at {i}{place}: gpu {g} vs cpu {e}");
            }
        }
        println!("residual_backward N={n}: bit-identical");
    }
}
