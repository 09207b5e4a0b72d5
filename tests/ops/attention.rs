use super::*;
use genesis::cpu::attention::{attention_backward, attention_forward};

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let (b, t, c, nh) = (2, 5, 8, 2);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let w = randn(&mut rng, b * t * c, 1.0);
    let f = |qkv: &[f64]| {
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention_forward(&mut out, &mut att, qkv, b, t, c, nh);
        (dot(&out, &w), att)
    };
    let (_, att) = f(&qkv);
    let mut dqkv = vec![0.0; b * t * 3 * c];
    attention_backward(&mut dqkv, &w, &qkv, &att, b, t, c, nh);
    check_grad("attention", "qkv", &qkv, &dqkv, |x| f(x).0);
}

#[test]
fn attention_is_causal_and_rows_sum_to_one() {
    let mut rng = Rng::new(10);
    let (b, t, c, nh) = (1, 6, 8, 2);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention_forward(&mut out, &mut att, &qkv, b, t, c, nh);
    for row in att.chunks(t).enumerate() {
        let (t1, r) = (row.0 % t, row.1);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(r[t1 + 1..].iter().all(|&p| p == 0.0));
    }
    // Changing a later token's k/v must not change an earlier output.
    let mut later = qkv.clone();
    for x in &mut later[(t - 1) * 3 * c..] {
        *x += 1.0;
    }
    let (mut out2, mut att2) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention_forward(&mut out2, &mut att2, &later, b, t, c, nh);
    assert_eq!(&out[..(t - 1) * c], &out2[..(t - 1) * c]);
}

/// The never-run attention kernels' own source (`kernels/attention.cu`), compiled for the CPU by
/// `scripts/kernel_emu/run.sh attention` (g++ against a small CUDA stand-in: real threads per block,
/// warp shuffles through per-warp barriers) and launched as `src/gpu/attention.rs` launches them,
/// f32 and bf16, against the verified scalar kernels: the 128-bit permutes (forward and backward,
/// the dqkv unpermute accumulating) bit for bit, the overwriting dqkv unpermutes (scalar and
/// 128-bit) bit for bit against accumulating onto zeros, the 128-bit causal softmax forward and
/// backward (sums in another order) within first-order rounding bounds, doubled (`attention.cpp`
/// derives them), with exact zeros above the diagonal. Heads of 40 and 8, T = 132 (f32) and 264
/// (bf16) rows of 33 packs, T = 8. Outputs start as NaN, the softmax inputs hold NaN above the
/// diagonal, guards on both sides. Planted bugs each fail it (v copied from k's slot, the
/// overwriting unpermute reading the old dqkv, the diagonal left out of the forward sum, the
/// backward writing only up to the diagonal's pack, a wrong column within a head in the
/// unpermute, one column past the diagonal in the backward's dot product). `attention_decode` is not
/// covered. It cannot see the GPU's memory system, timing, or nvcc's FMA contraction. Needs bash
/// and g++ (C++20).
#[test]
fn attention_vec_and_overwrite_kernels_pass_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/kernel_emu/run.sh"))
        .arg("attention")
        .env_remove("KERNEL_EMU_SRC")
        .output()
        .expect("bash runs scripts/kernel_emu/run.sh attention (it needs g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the attention kernels failed their CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 32, "{text}");
}
