//! CUDA residual add forward vs. `cpu::residual` (bit-identical: one f32 add).

use super::{gpu_or_skip, SplitMix};
use genesis::cpu;
use genesis::gpu::residual::residual_forward;

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
