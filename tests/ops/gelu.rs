use super::*;
use genesis::cpu::gelu::{gelu_backward, gelu_forward};

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let n = 300;
    let (x, w) = (randn(&mut rng, n, 2.0), randn(&mut rng, n, 1.0));
    let mut dx = vec![0.0; n];
    gelu_backward(&mut dx, &x, &w);
    check_grad("gelu", "inp", &x, &dx, |x| {
        let mut out = vec![0.0; n];
        gelu_forward(&mut out, x);
        dot(&out, &w)
    });
}

#[test]
fn gelu_forward_matches_known_values() {
    // tanh-approximated GELU at a few points (values from the closed form).
    let x = [-3.0f64, -1.0, 0.0, 0.5, 2.0];
    let mut out = [0.0f64; 5];
    gelu_forward(&mut out, &x);
    let expect = [-0.003637392, -0.158808009, 0.0, 0.345714010, 1.954597694];
    for (o, e) in out.iter().zip(expect) {
        assert!((o - e).abs() < 1e-8, "{o} vs {e}");
    }
}

/// The never-run GELU kernels' own source (`kernels/gelu.cu`), compiled for the CPU by
/// `scripts/kernel_emu/run.sh gelu` (g++ against a small CUDA stand-in: real threads per block, the
/// arithmetic as unfused IEEE operations) and launched as `src/gpu/gelu.rs` launches them: the
/// 128-bit `gelu_forward_vec`, `gelu_backward_vec` and `gelu_backward_overwrite[_vec]`, f32 and
/// bf16, give the bits of the verified scalar `gelu_forward` / `gelu_backward` (the overwriting ones
/// those of accumulating onto zeros, up to a zero's sign) for N = 3001 and 7 (whole packs and a
/// tail) and on a 2-block grid (the stride loops go round). Outputs start as NaN, so an element not
/// written or an old value read shows; guards on both sides catch writes past the ends; a 128-bit
/// access at an unaligned address stops the run. Planted bugs each fail it (the tail loop skipping
/// its first element, accumulating without the old dinp, the overwriting kernel reading the old
/// dinp, a pack loaded one element off, one pack too many, a changed constant in the packed
/// forward). It cannot see the GPU's memory system, timing, or how nvcc contracts multiply-adds
/// into FMAs (the emulation keeps every operation rounded on its own). Needs bash and g++ (C++20).
#[test]
fn gelu_vec_and_overwrite_kernels_pass_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/kernel_emu/run.sh"))
        .arg("gelu")
        .env_remove("KERNEL_EMU_SRC")
        .output()
        .expect("bash runs scripts/kernel_emu/run.sh gelu (it needs g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the GELU kernels failed their CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 24, "{text}");
}
