//! CUDA softmax cross-entropy forward (and its in-place dlogits) vs. an f64 reference of
//! `cpu::classifier`'s softmax / -log p(target) over the first V of Vp logits.

use super::{gpu_or_skip, SplitMix};
use genesis::gpu::classifier::classifier_forward;
use genesis::gpu::device::Gpu;
use genesis::gpu::Float;
use half::bf16;

/// (N, V, Vp, logit range): GPT-2's padded vocabulary, a small padded one, no padding, V = 1,
/// V below one warp, and wide logit ranges that exercise the max subtraction.
const SHAPES: &[(usize, usize, usize, f32)] = &[
    (4, 50257, 50304, 4.0),
    (37, 50257, 50304, 12.0),
    (3, 100, 128, 4.0),
    (6, 100, 128, 30.0),
    (5, 1000, 1000, 4.0),
    (9, 3000, 3072, 8.0),
    (2, 1, 32, 4.0),
    (1, 17, 20, 4.0),
];
const TOL: f64 = 1e-5;

/// Random logits over all Vp entries (the padding too, so leaving it alone or zeroing it shows) and
/// random targets in 0..V.
fn inputs(rng: &mut SplitMix, n: usize, v: usize, vp: usize, range: f32) -> (Vec<f32>, Vec<i32>) {
    let logits = (0..n * vp).map(|_| range * rng.next_f32()).collect();
    let targets = (0..n).map(|_| (rng.next_u64() % v as u64) as i32).collect();
    (logits, targets)
}

/// f64 reference: per-row losses (NaN for a target outside 0..V) and dlogits (N,Vp) for `scale`:
/// scale * (softmax - onehot) over the first V, 0 in the padding.
fn reference(logits: &[f32], targets: &[i32], v: usize, vp: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let n = targets.len();
    let (mut losses, mut dlogits) = (vec![0.0f64; n], vec![0.0f64; n * vp]);
    for row in 0..n {
        let x: Vec<f64> = logits[row * vp..row * vp + v].iter().map(|&l| l as f64).collect();
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = x.iter().map(|&l| (l - max).exp()).sum();
        let target = usize::try_from(targets[row]).ok().filter(|&t| t < v);
        losses[row] = match target {
            Some(t) => sum.ln() + max - x[t],
            None => f64::NAN,
        };
        for (i, &l) in x.iter().enumerate() {
            let onehot = if Some(i) == target { 1.0 } else { 0.0 };
            dlogits[row * vp + i] = scale * ((l - max).exp() / sum - onehot);
        }
    }
    (losses, dlogits)
}

/// Max abs error relative to max |want| (every `got` finite, else panic); NaN entries of `want`
/// must be NaN in `got` and are left out of the comparison.
fn assert_close(what: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} is {g}, expected NaN");
        } else {
            assert!(g.is_finite(), "{what}: element {i} is {g} (unwritten?), expected {w}");
        }
    }
    let max_ref = want.iter().filter(|w| !w.is_nan()).fold(0.0f64, |m, w| m.max(w.abs()));
    let (worst, max_err) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| if w.is_nan() { 0.0 } else { (g as f64 - w).abs() })
        .enumerate()
        .fold((0, 0.0f64), |best, (i, e)| if e > best.1 { (i, e) } else { best });
    assert!(
        max_err <= TOL * max_ref,
        "{what}: max abs error {max_err:e} at {worst} (gpu {} vs ref {}) exceeds {TOL:e} * max |ref| {max_ref}",
        got[worst],
        want[worst]
    );
    if max_ref > 0.0 {
        max_err / max_ref
    } else {
        0.0
    }
}

/// dlogits check: [`assert_close`] plus a per-element relative bound, so the tiny probabilities are
/// checked too, not only the dominant -1 entries; padding must be exactly 0.
fn assert_dlogits(what: &str, got: &[f32], want: &[f64], v: usize, vp: usize) -> f64 {
    let rel = assert_close(what, got, want);
    let max_ref = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if i % vp >= v {
            assert_eq!(g.to_bits(), 0.0f32.to_bits(), "{what}: padding at row {} col {} is {g}", i / vp, i % vp);
        } else {
            let err = (g as f64 - w).abs();
            assert!(
                err <= 1e-4 * w.abs() + 1e-7 * max_ref,
                "{what}: row {} col {}: gpu {g} vs ref {w} (rel err {:e})",
                i / vp,
                i % vp,
                err / w.abs()
            );
        }
    }
    rel
}

/// Runs the kernel on fresh copies of `logits` / `targets` with `losses` poisoned with `poison`;
/// returns (losses, logits after the call).
fn run<T: Float>(
    gpu: &Gpu,
    logits: &[T],
    targets: &[i32],
    v: usize,
    vp: usize,
    scale: Option<f32>,
    poison: f32,
) -> (Vec<f32>, Vec<T>) {
    let n = targets.len();
    let stream = gpu.stream();
    let mut d_logits = stream.clone_htod(logits).unwrap();
    let d_targets = stream.clone_htod(targets).unwrap();
    let mut d_losses = stream.clone_htod(&vec![poison; n]).unwrap();
    classifier_forward(gpu, &mut d_losses, &mut d_logits, &d_targets, n, v, vp, scale).unwrap();
    gpu.synchronize().unwrap();
    (stream.clone_dtoh(&d_losses).unwrap(), stream.clone_dtoh(&d_logits).unwrap())
}

fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i} changed from {w} to {g}");
    }
}

#[test]
fn classifier_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = SplitMix(0x636c_6173_7369_6679);
    for &(n, v, vp, range) in SHAPES {
        let (logits, targets) = inputs(&mut rng, n, v, vp, range);
        let scale = 0.75 / n as f32;
        let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);
        let shape = format!("N={n} V={v} Vp={vp} range={range}");

        let (losses, after) = run(&gpu, &logits, &targets, v, vp, None, f32::NAN);
        let e_loss = assert_close(&format!("losses ({shape})"), &losses, &want_losses);
        assert_bits_equal(&format!("logits without dlogits ({shape})"), &after, &logits);

        let (losses, dlogits) = run(&gpu, &logits, &targets, v, vp, Some(scale), f32::NAN);
        let e_loss2 = assert_close(&format!("losses with dlogits ({shape})"), &losses, &want_losses);
        let e_dl = assert_dlogits(&format!("dlogits ({shape})"), &dlogits, &want_dlogits, v, vp);
        println!("classifier_forward {shape}: rel err losses {e_loss:.1e} / {e_loss2:.1e}, dlogits {e_dl:.1e}");
    }
}

#[test]
fn classifier_without_scale_leaves_logits_unchanged() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = SplitMix(0x756e_6368_616e_6765);
    for &(n, v, vp) in &[(8usize, 50257usize, 50304usize), (5, 100, 128)] {
        let (logits, targets) = inputs(&mut rng, n, v, vp, 6.0);
        let (losses, after) = run(&gpu, &logits, &targets, v, vp, None, f32::NAN);
        assert!(losses.iter().all(|l| l.is_finite() && *l >= 0.0), "losses {losses:?}");
        assert_bits_equal(&format!("logits (N={n} V={v} Vp={vp})"), &after, &logits);
    }
}

#[test]
fn classifier_out_of_range_targets_give_nan_loss() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (v, vp) = (100usize, 128usize);
    // Negative, first padded entry, last padded entry, just past the row, far out; then valid ones.
    let targets = [-1i32, v as i32, vp as i32 - 1, vp as i32, i32::MAX, i32::MIN, 0, v as i32 - 1];
    let n = targets.len();
    let mut rng = SplitMix(0x6f75_7472_616e_6765);
    let (logits, _) = inputs(&mut rng, n, v, vp, 4.0);
    let scale = 0.5f32;
    let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);

    // Poisoned with a finite value here, since the expected losses include NaN.
    let (losses, after) = run(&gpu, &logits, &targets, v, vp, None, 1.0e30);
    assert_close("losses", &losses, &want_losses);
    assert_bits_equal("logits without dlogits", &after, &logits);

    let (losses, dlogits) = run(&gpu, &logits, &targets, v, vp, Some(scale), 1.0e30);
    assert_close("losses with dlogits", &losses, &want_losses);
    assert_dlogits("dlogits", &dlogits, &want_dlogits, v, vp);
}

/// bf16's unit roundoff: round-to-nearest moves a value by at most this times its magnitude.
const BF16_U: f64 = 1.0 / 256.0;

/// bf16 dlogits (widened to f32) per element. The kernel computes g32 in f32 and stores bf16(g32),
/// rounded to nearest: bf16 has an 8-bit significand (7 stored bits), so that moves g32 by at most
/// half an ulp <= 2^-8 |g32|. With the f32 error |g32 - ref| <= d the stored value is within
/// 2^-8 |ref| + (1 + 2^-8) d of ref, where d is the f32 test's per-element bound
/// 1e-4 |ref| + 1e-7 max |ref| ([`assert_dlogits`]), doubled here for margin. Padding exactly 0.
fn assert_dlogits_bf16(what: &str, got: &[f32], want: &[f64], v: usize, vp: usize) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max_ref = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if i % vp >= v {
            assert_eq!(g.to_bits(), 0.0f32.to_bits(), "{what}: padding at row {} col {} is {g}", i / vp, i % vp);
            continue;
        }
        assert!(g.is_finite(), "{what}: row {} col {} is {g} (unwritten?), expected {w}", i / vp, i % vp);
        let err = (g as f64 - w).abs();
        let tol = (BF16_U + 2e-4) * w.abs() + 2e-7 * max_ref;
        assert!(err <= tol, "{what}: row {} col {}: gpu {g} vs ref {w}, error {err:e} > {tol:e}", i / vp, i % vp);
        worst = worst.max(err / tol);
    }
    worst
}

/// `x` rounded to bf16, and those values back in f32 (exact) for the reference.
fn to_bf16(x: &[f32]) -> (Vec<bf16>, Vec<f32>) {
    let h: Vec<bf16> = super::round(x);
    let back = super::widen(&h);
    (h, back)
}

fn widen(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// bf16 logits: the inputs rounded to bf16 and the f64 reference computed on the rounded values.
/// Losses are f32 outputs of f32 arithmetic on the same values, so they get the f32 test's TOL;
/// dlogits are stored in bf16 and checked by [`assert_dlogits_bf16`]. Without a scale the bf16
/// logits must come back bit for bit.
#[test]
fn classifier_forward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = SplitMix(0x6365_6266_3136_0001);
    for &(n, v, vp, range) in SHAPES {
        let (logits, targets) = inputs(&mut rng, n, v, vp, range);
        let (h_logits, logits) = to_bf16(&logits);
        let scale = 0.75 / n as f32;
        let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);
        let shape = format!("N={n} V={v} Vp={vp} range={range}");

        let (losses, after) = run(&gpu, &h_logits, &targets, v, vp, None, f32::NAN);
        let e_loss = assert_close(&format!("losses ({shape})"), &losses, &want_losses);
        for (i, (g, w)) in after.iter().zip(&h_logits).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "logits without dlogits ({shape}): element {i} changed from {w} to {g}"
            );
        }

        let (losses, dlogits) = run(&gpu, &h_logits, &targets, v, vp, Some(scale), f32::NAN);
        let e_loss2 = assert_close(&format!("losses with dlogits ({shape})"), &losses, &want_losses);
        let e_dl = assert_dlogits_bf16(&format!("dlogits ({shape})"), &widen(&dlogits), &want_dlogits, v, vp);
        println!(
            "classifier_forward_bf16 {shape}: rel err losses {e_loss:.1e} / {e_loss2:.1e}, dlogits worst {e_dl:.2} \
             of tolerance"
        );
    }
}

/// Out-of-range targets in bf16: NaN loss, no one-hot term, as in f32.
#[test]
fn classifier_bf16_out_of_range_targets_give_nan_loss() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (v, vp) = (100usize, 128usize);
    let targets = [-1i32, v as i32, vp as i32 - 1, vp as i32, i32::MAX, i32::MIN, 0, v as i32 - 1];
    let n = targets.len();
    let mut rng = SplitMix(0x6f6f_7262_6631_3603);
    let (logits, _) = inputs(&mut rng, n, v, vp, 4.0);
    let (h_logits, logits) = to_bf16(&logits);
    let scale = 0.5f32;
    let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);

    let (losses, dlogits) = run(&gpu, &h_logits, &targets, v, vp, Some(scale), 1.0e30);
    assert_close("losses with dlogits", &losses, &want_losses);
    assert_dlogits_bf16("dlogits", &widen(&dlogits), &want_dlogits, v, vp);
}
