//! Attention forward (permute, cuBLAS batched GEMMs, causal softmax, unpermute) vs. the CPU
//! reference, computed in f64 so the error measured is the GPU's alone.

use super::{gpu_or_skip, SplitMix};
use genesis::cpu;
use genesis::gpu::attention::{attention_forward, scratch_len};
use genesis::gpu::blas::Blas;
use genesis::gpu::device::Gpu;

/// max |got - want| / max |want|, panicking on any non-finite value (an unwritten NaN).
fn rel_error(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max_err = 0.0f64;
    let mut max_ref = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (expected {w}): not written?");
        max_err = max_err.max((f64::from(g) - w).abs());
        max_ref = max_ref.max(w.abs());
    }
    assert!(max_ref > 0.0, "{what}: reference is all zeros");
    max_err / max_ref
}

fn check(gpu: &Gpu, blas: &Blas, rng: &mut SplitMix, (b, t, c, nh): (usize, usize, usize, usize), tol: f64) {
    // Scale the inputs up so the softmax is far from uniform.
    let qkv: Vec<f32> = rng.vec(b * t * 3 * c).into_iter().map(|x| 2.0 * x).collect();
    let qkv64: Vec<f64> = qkv.iter().map(|&x| f64::from(x)).collect();
    let mut want_out = vec![0.0f64; b * t * c];
    let mut want_att = vec![0.0f64; b * nh * t * t];
    cpu::attention::attention_forward(&mut want_out, &mut want_att, &qkv64, b, t, c, nh);

    let stream = gpu.stream();
    let d_qkv = stream.clone_htod(&qkv).unwrap();
    let mut d_out = stream.clone_htod(&vec![f32::NAN; b * t * c]).unwrap();
    let mut d_att = stream.clone_htod(&vec![f32::NAN; b * nh * t * t]).unwrap();
    let mut d_scratch = stream.clone_htod(&vec![f32::NAN; scratch_len(b, t, c)]).unwrap();
    attention_forward(gpu, blas, &mut d_out, &mut d_scratch, &mut d_att, &d_qkv, b, t, c, nh).unwrap();
    gpu.synchronize().unwrap();
    let out = stream.clone_dtoh(&d_out).unwrap();
    let att = stream.clone_dtoh(&d_att).unwrap();

    let what = format!("attention B={b} T={t} C={c} NH={nh} tf32={}", blas.allow_tf32());
    let err_out = rel_error(&out, &want_out, &format!("{what} out"));
    let err_att = rel_error(&att, &want_att, &format!("{what} att"));
    println!("{what}: out rel err {err_out:.3e}, att rel err {err_att:.3e}");
    assert!(err_out < tol, "{what}: out relative error {err_out:.3e} >= {tol:.0e}");
    assert!(err_att < tol, "{what}: att relative error {err_att:.3e} >= {tol:.0e}");

    // Probabilities: exactly zero above the diagonal, non-negative, each row summing to 1.
    for (r, row) in att.chunks(t).enumerate() {
        let t1 = r % t;
        assert!(row[t1 + 1..].iter().all(|&p| p == 0.0), "{what}: row {r} (t={t1}) has mass above the diagonal");
        assert!(row[..=t1].iter().all(|&p| p >= 0.0), "{what}: row {r} has a negative probability");
        let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{what}: row {r} sums to {sum}");
    }
}

const SHAPES: &[(usize, usize, usize, usize)] = &[(1, 1, 64, 4), (2, 17, 64, 4), (1, 33, 24, 3), (2, 64, 768, 12)];

#[test]
fn attention_forward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = SplitMix(0x6174_7465_6e74_0001);
    for &shape in SHAPES {
        check(&gpu, &blas, &mut rng, shape, 1e-5);
    }
}

#[test]
fn attention_forward_tf32_is_close() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, true).expect("Blas::new");
    let mut rng = SplitMix(0x6174_7465_6e74_0002);
    for &shape in &[(2usize, 17usize, 64usize, 4usize), (2, 64, 768, 12)] {
        check(&gpu, &blas, &mut rng, shape, 2e-2);
    }
}

#[test]
fn attention_forward_rejects_bad_shapes() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let (b, t, c, nh) = (1usize, 4usize, 64usize, 4usize);
    let qkv = stream.alloc_zeros::<f32>(b * t * 3 * c).unwrap();
    let mut out = stream.alloc_zeros::<f32>(b * t * c).unwrap();
    let mut att = stream.alloc_zeros::<f32>(b * nh * t * t).unwrap();
    let mut short = stream.alloc_zeros::<f32>(scratch_len(b, t, c) - 1).unwrap();
    assert!(attention_forward(&gpu, &blas, &mut out, &mut short, &mut att, &qkv, b, t, c, nh).is_err());
    let mut scratch = stream.alloc_zeros::<f32>(scratch_len(b, t, c)).unwrap();
    assert!(attention_forward(&gpu, &blas, &mut out, &mut scratch, &mut att, &qkv, b, t, c, 5).is_err());
}
