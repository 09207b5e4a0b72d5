//! The CPU optimizer step (`src/cpu/adamw.rs`): clipping by global norm and AdamW's first update
//! with its weight-decay mask. Its GPU twin is checked bit for bit in `tests/gpu_ops/adamw.rs`.

use genesis::cpu::adamw::{clip_grad_norm, global_norm, AdamW, AdamWConfig};
use genesis::model::{ModelConfig, Param, ParamLayout};

#[test]
fn clipping_caps_the_norm_and_reports_the_original() {
    let mut g = vec![3.0f32, 4.0];
    assert!((clip_grad_norm(&mut g, 1.0) - 5.0).abs() < 1e-9);
    assert!((global_norm(&g) - 1.0).abs() < 1e-5);
    let mut small = vec![0.3f32, 0.4];
    clip_grad_norm(&mut small, 1.0);
    assert_eq!(small, vec![0.3, 0.4]);
}

#[test]
fn adamw_first_step_and_decay_mask() {
    // First step: m/bc1 = g, sqrt(v/bc2) = |g|, so each parameter moves by lr*sign(g) (plus decay).
    let cfg = ModelConfig::preset("tiny").unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut p = vec![1.0f32; layout.total];
    let g = vec![0.5f32; layout.total];
    let mut opt = AdamW::new(AdamWConfig::default(), layout.total);
    opt.update(&layout, &mut p, &g, 0.01);
    let w = layout.get(Param::Qkvw).offset;
    let b = layout.get(Param::Qkvb).offset;
    assert!((p[w] - (1.0 * (1.0 - 0.01 * 0.1) - 0.01)).abs() < 1e-6, "{}", p[w]);
    assert!((p[b] - (1.0 - 0.01)).abs() < 1e-6, "{}", p[b]);
}

/// The optimizer kernels' own source (`kernels/adamw.cu` with `kernels/vec.cuh`), compiled for the
/// CPU by `scripts/kernel_emu/run.sh adamw` (g++ against a small stand-in for the CUDA runtime: indices,
/// block barriers, the `_rn` intrinsics as unfused IEEE operations): `--sync step`'s device path
/// (loss sum, norm, `step_decide`, one `adamw_step` launch over a table of tensors, scalar and
/// 128-bit, f32 and bf16) gives the bits of the verified path (norm read back, `grad_scale`,
/// per-tensor `adamw_update`) with clipping active, inactive and disabled, and the per-tensor
/// `adamw_update_vec[_bf16]` of `--kernels vector` gives `adamw_update`'s bits; a poisoned step writes
/// nothing; the recorded loss, norm and clip factor are the host's. Planted bugs each fail it (the
/// clip factor not applied, the skip ignored, a tensor's offset dropped, decay on every tensor,
/// the poison ignored, the loss sum overwritten, the rounding index of a pack's elements). It
/// cannot see the GPU's memory system or timing. Needs bash and g++ (C++20).
#[test]
fn optimizer_kernel_source_passes_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/kernel_emu/run.sh"))
        .arg("adamw")
        .output()
        .expect("bash runs scripts/kernel_emu/run.sh adamw (it needs g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the optimizer kernels failed their CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 24, "{text}");
}
