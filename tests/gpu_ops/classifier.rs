//! CUDA softmax cross-entropy forward (and its in-place dlogits) vs. an f64 reference of
//! `cpu::classifier`'s softmax / -log p(target) over the first V of Vp logits.

use super::common::assert_same_bits;
use super::{assert_close, assert_elementwise, gpu_or_skip, max_ref, round, to_bf16, widen, Uniform, BF16_U};
use genesis::gpu::classifier::classifier_forward;
use genesis::gpu::device::Gpu;
use genesis::gpu::{Float, Kernels};
use genesis::rng::Rng;
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
fn inputs(rng: &mut Rng, n: usize, v: usize, vp: usize, range: f32) -> (Vec<f32>, Vec<i32>) {
    let logits = (0..n * vp).map(|_| range * rng.uniform()).collect();
    let targets = (0..n).map(|_| rng.below(v as u64) as i32).collect();
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

/// Padding (columns V..Vp of each row) exactly +0.0, and elsewhere per element
/// |got - want| <= rtol |want| + atol_frac max |want| ([`assert_elementwise`]); returns the worst
/// error as a fraction of its bound.
fn assert_dlogits_within(
    what: &str,
    got: &[f32],
    want: &[f64],
    (v, vp): (usize, usize),
    rtol: f64,
    atol_frac: f64,
) -> f64 {
    for (i, &g) in got.iter().enumerate().filter(|(i, _)| i % vp >= v) {
        assert_eq!(g.to_bits(), 0.0f32.to_bits(), "{what}: padding at row {} col {} is {g}", i / vp, i % vp);
    }
    assert_elementwise(what, got, want, rtol, atol_frac * max_ref(want))
}

/// dlogits check: [`assert_close`] (returned) plus a per-element bound of 1e-4 |ref| + 1e-7 max |ref|,
/// so the tiny probabilities are checked too, not only the dominant -1 entries; padding must be
/// exactly 0.
fn assert_dlogits(what: &str, got: &[f32], want: &[f64], v: usize, vp: usize) -> f64 {
    let rel = assert_close(what, got, want, TOL);
    assert_dlogits_within(what, got, want, (v, vp), 1e-4, 1e-7);
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

/// Every [`SHAPES`] case with the logits stored in `T`, drawn from `seed` ([`inputs`]) and rounded
/// through `T` (the identity for f32), the f64 reference on exactly those values. Losses are f32
/// outputs of f32 arithmetic for every `T`, so they get TOL; without a scale the logits must come
/// back bit for bit; dlogits (in `T`, widened) are checked by `check_dlogits` (which returns its
/// part of the printed line). `label` starts the printed line.
fn check_forward<T: Float>(
    seed: u64,
    label: &str,
    check_dlogits: impl Fn(&str, &[f32], &[f64], usize, usize) -> String,
) {
    check_forward_with::<T>(Kernels::Scalar, seed, label, check_dlogits)
}

/// [`check_forward`] with the GPU set to `kernels`; with [`Kernels::Vector`] only the [`SHAPES`]
/// whose Vp is a whole number of 128-bit packs.
fn check_forward_with<T: Float>(
    kernels: Kernels,
    seed: u64,
    label: &str,
    check_dlogits: impl Fn(&str, &[f32], &[f64], usize, usize) -> String,
) {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    gpu.set_kernels(kernels);
    let mut rng = Rng::new(seed);
    for &(n, v, vp, range) in SHAPES {
        if kernels == Kernels::Vector && !vp.is_multiple_of(T::VEC) {
            continue;
        }
        let (logits, targets) = inputs(&mut rng, n, v, vp, range);
        let t_logits = round::<T>(&logits);
        let logits = widen(&t_logits);
        let scale = 0.75 / n as f32;
        let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);
        let shape = format!("N={n} V={v} Vp={vp} range={range}");

        let (losses, after) = run(&gpu, &t_logits, &targets, v, vp, None, f32::NAN);
        let e_loss = assert_close(&format!("losses ({shape})"), &losses, &want_losses, TOL);
        // Widened to f32, exactly and injectively: equal f32 bits are equal bf16 bits.
        assert_same_bits(&format!("logits without dlogits ({shape})"), &widen(&after), &logits);

        let (losses, dlogits) = run(&gpu, &t_logits, &targets, v, vp, Some(scale), f32::NAN);
        let e_loss2 = assert_close(&format!("losses with dlogits ({shape})"), &losses, &want_losses, TOL);
        let dl_text = check_dlogits(&format!("dlogits ({shape})"), &widen(&dlogits), &want_dlogits, v, vp);
        println!("{label} {shape}: rel err losses {e_loss:.1e} / {e_loss2:.1e}, {dl_text}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_forward_matches_cpu() {
    check_forward::<f32>(0x636c_6173_7369_6679, "classifier_forward", |what, got, want, v, vp| {
        format!("dlogits {:.1e}", assert_dlogits(what, got, want, v, vp))
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_without_scale_leaves_logits_unchanged() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x756e_6368_616e_6765);
    for &(n, v, vp) in &[(8usize, 50257usize, 50304usize), (5, 100, 128)] {
        let (logits, targets) = inputs(&mut rng, n, v, vp, 6.0);
        let (losses, after) = run(&gpu, &logits, &targets, v, vp, None, f32::NAN);
        assert!(losses.iter().all(|l| l.is_finite() && *l >= 0.0), "losses {losses:?}");
        assert_same_bits(&format!("logits (N={n} V={v} Vp={vp})"), &after, &logits);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_out_of_range_targets_give_nan_loss() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (v, vp) = (100usize, 128usize);
    // Negative, first padded entry, last padded entry, just past the row, far out; then valid ones.
    let targets = [-1i32, v as i32, vp as i32 - 1, vp as i32, i32::MAX, i32::MIN, 0, v as i32 - 1];
    let n = targets.len();
    let mut rng = Rng::new(0x6f75_7472_616e_6765);
    let (logits, _) = inputs(&mut rng, n, v, vp, 4.0);
    let scale = 0.5f32;
    let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);

    // Poisoned with a finite value here, since the expected losses include NaN.
    let (losses, after) = run(&gpu, &logits, &targets, v, vp, None, 1.0e30);
    assert_close("losses", &losses, &want_losses, TOL);
    assert_same_bits("logits without dlogits", &after, &logits);

    let (losses, dlogits) = run(&gpu, &logits, &targets, v, vp, Some(scale), 1.0e30);
    assert_close("losses with dlogits", &losses, &want_losses, TOL);
    assert_dlogits("dlogits", &dlogits, &want_dlogits, v, vp);
}

/// bf16 dlogits (widened to f32) per element. The kernel computes g32 in f32 and stores bf16(g32),
/// rounded to nearest: bf16 has an 8-bit significand (7 stored bits), so that moves g32 by at most
/// half an ulp <= 2^-8 |g32|. With the f32 error |g32 - ref| <= d the stored value is within
/// 2^-8 |ref| + (1 + 2^-8) d of ref, where d is the f32 test's per-element bound
/// 1e-4 |ref| + 1e-7 max |ref| ([`assert_dlogits`]), doubled here for margin. Padding exactly 0.
fn assert_dlogits_bf16(what: &str, got: &[f32], want: &[f64], v: usize, vp: usize) -> f64 {
    assert_dlogits_within(what, got, want, (v, vp), BF16_U + 2e-4, 2e-7)
}

/// bf16 logits: the inputs rounded to bf16 and the f64 reference computed on the rounded values.
/// Losses are f32 outputs of f32 arithmetic on the same values, so they get the f32 test's TOL;
/// dlogits are stored in bf16 and checked by [`assert_dlogits_bf16`]. Without a scale the bf16
/// logits must come back bit for bit.
#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_forward_bf16_matches_cpu() {
    check_forward::<bf16>(0x6365_6266_3136_0001, "classifier_forward_bf16", |what, got, want, v, vp| {
        format!("dlogits worst {:.2} of tolerance", assert_dlogits_bf16(what, got, want, v, vp))
    });
}

/// Out-of-range targets in bf16: NaN loss, no one-hot term, as in f32.
#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_bf16_out_of_range_targets_give_nan_loss() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (v, vp) = (100usize, 128usize);
    let targets = [-1i32, v as i32, vp as i32 - 1, vp as i32, i32::MAX, i32::MIN, 0, v as i32 - 1];
    let n = targets.len();
    let mut rng = Rng::new(0x6f6f_7262_6631_3603);
    let (logits, _) = inputs(&mut rng, n, v, vp, 4.0);
    let (h_logits, logits) = to_bf16(&logits);
    let scale = 0.5f32;
    let (want_losses, want_dlogits) = reference(&logits, &targets, v, vp, scale as f64);

    let (losses, dlogits) = run(&gpu, &h_logits, &targets, v, vp, Some(scale), 1.0e30);
    assert_close("losses with dlogits", &losses, &want_losses, TOL);
    assert_dlogits_bf16("dlogits", &widen(&dlogits), &want_dlogits, v, vp);
}

/// --kernels vector: classifier_forward_vec, f32 and bf16, every shape with Vp a whole number of
/// packs (V = 1, 17, 100, 3000, 50257: the live columns end inside a pack), against the f64
/// reference with the scalar tests' tolerances: losses TOL, dlogits per element, padding exactly
/// 0, logits unchanged bit for bit without a scale. Each thread sums another set of columns than
/// in the scalar kernel, so the row sum is reordered; the bounds do not rest on an order (the
/// scalar kernel's strided, tree-merged sum already differs from the CPU's sequential one).
#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_forward_vec_matches_cpu() {
    check_forward_with::<f32>(
        Kernels::Vector,
        0x636c_7665_6300_0001,
        "classifier_forward_vec",
        |what, got, want, v, vp| format!("dlogits {:.1e}", assert_dlogits(what, got, want, v, vp)),
    );
    check_forward_with::<bf16>(
        Kernels::Vector,
        0x636c_7665_6300_0002,
        "classifier_forward_vec_bf16",
        |what, got, want, v, vp| {
            format!("dlogits worst {:.2} of tolerance", assert_dlogits_bf16(what, got, want, v, vp))
        },
    );
}
