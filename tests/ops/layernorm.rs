use super::*;
use genesis::cpu::layernorm::{layernorm_backward, layernorm_forward};

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let (n, c) = (7, 16);
    let x: Vec<f64> = randn(&mut rng, n * c, 2.0).iter().map(|v| v + 0.5).collect();
    let (weight, bias) = (randn(&mut rng, c, 1.0), randn(&mut rng, c, 1.0));
    let w = randn(&mut rng, n * c, 1.0);
    let f = |x: &[f64], weight: &[f64], bias: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, weight, bias, n, c);
        (dot(&out, &w), mean, rstd)
    };
    let (_, mean, rstd) = f(&x, &weight, &bias);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &weight, &mean, &rstd, n, c);
    check_grad("layernorm", "inp", &x, &dx, |v| f(v, &weight, &bias).0);
    check_grad("layernorm", "weight", &weight, &dw, |v| f(&x, v, &bias).0);
    check_grad("layernorm", "bias", &bias, &db, |v| f(&x, &weight, v).0);
}

#[test]
fn layernorm_forward_normalises_rows() {
    let mut rng = Rng::new(5);
    let (n, c) = (3, 64);
    let x = randn(&mut rng, n * c, 3.0);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &vec![1.0; c], &vec![0.0; c], n, c);
    for row in out.chunks(c) {
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        assert!(mu.abs() < 1e-12 && (var - 1.0).abs() < 1e-3, "mean {mu} var {var}");
    }
}

/// The never-run 128-bit LayerNorm kernels' own source (`kernels/layernorm.cu`), compiled for the
/// CPU by `scripts/kernel_emu/run.sh layernorm` (g++ against a small CUDA stand-in: real threads per
/// block, warp shuffles through per-warp barriers, checked first against the PTX lane rules) and
/// launched as `src/gpu/layernorm.rs` launches them, f32 and bf16, against the verified scalar
/// kernels: `residual_layernorm_forward_vec`'s residual and `layernorm_backward_vec`'s partial sums,
/// dweight and dbias bit for bit; the forwards' mean, rstd and out and the backward's dinp (row sums
/// in another order) within first-order rounding bounds, doubled (`layernorm.cpp` derives them).
/// C = 264 with N = 75 (lanes go round a row, a partial block of rows, three chunks) and C = 8,
/// N = 3. Outputs start as NaN with guards on both sides. Planted bugs each fail it (the fused
/// forward summing a instead of the stored residual, a chunk's last row skipped, dbias partials
/// given the dweight ones, the dnorm*norm mean left unreduced across the warp, a lane stride of 16,
/// the last pack of a row not stored, eps 3e-5 for 1e-5 in the packed forward; that last one only
/// at C = 8, where the bound is tighter). It cannot see the GPU's memory system, timing, or nvcc's
/// FMA contraction. Needs bash and g++ (C++20).
#[test]
fn layernorm_vec_kernels_pass_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/kernel_emu/run.sh"))
        .arg("layernorm")
        .env_remove("KERNEL_EMU_SRC")
        .output()
        .expect("bash runs scripts/kernel_emu/run.sh layernorm (it needs g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the LayerNorm kernels failed their CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 13, "{text}");
}
