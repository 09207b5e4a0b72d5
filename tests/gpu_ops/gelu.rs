//! CUDA GELU forward and backward vs. `cpu::gelu` run in f64, in f32 and in bf16 (the reference on
//! the bf16-rounded values).

use super::common::assert_same_bits;
use super::{
    assert_elementwise, assert_overwrite_bits, download, gpu_or_skip, max_abs_error, max_ref, poisoned, round, to_f64,
    widen, Uniform, BF16_U, TAIL,
};
use genesis::cpu;
use genesis::gpu::device::Gpu;
use genesis::gpu::gelu::{gelu_backward, gelu_forward};
use genesis::gpu::{Dinp, Float, Kernels};
use genesis::rng::Rng;
use half::bf16;

/// Far tails (tanh = +-1), around the kink, and tiny inputs.
const FIXED: [f32; 10] = [-30.0, -10.0, -3.0, -0.5, 1e-4, -1e-4, 0.5, 3.0, 10.0, 30.0];

/// GELU of `x` on the GPU in `T` (output poisoned with NaN first, tail checked untouched), widened
/// to f32.
fn run_gelu<T: Float>(gpu: &Gpu, x: &[T]) -> Vec<f32> {
    let n = x.len();
    let d_inp = gpu.stream().clone_htod(x).unwrap();
    let mut d_out = poisoned::<T>(gpu, n);
    gelu_forward(gpu, &mut d_out, &d_inp, n).unwrap();
    gpu.synchronize().unwrap();
    download(gpu, &format!("N={n}"), &d_out, n)
}

fn reference(x: &[f32]) -> Vec<f64> {
    let mut out = vec![0.0f64; x.len()];
    cpu::gelu::gelu_forward(&mut out, &to_f64(x));
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6765_6c75_0000_0001);
    for n in [1usize, 31, 1000, 12_289, 4 * 64 * 3072 + 7] {
        let x = gelu_inputs(&mut rng, n);
        let want = reference(&x);
        let got = run_gelu(&gpu, &x);
        if let Some(i) = got.iter().position(|g| !g.is_finite()) {
            panic!("N={n}: element {i} is {} (unwritten?), expected {}", got[i], want[i]);
        }
        let max_ref = max_ref(&want);
        let (worst, max_err) = max_abs_error(&got, &want);
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
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_saturates() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let x = FIXED;
    let want = reference(&x);
    let got = run_gelu(&gpu, &x);
    for ((&xi, &g), &w) in x.iter().zip(&got).zip(&want) {
        assert!((g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "gelu({xi}): gpu {g} vs ref {w}");
    }
}

/// bf16 storage, checked per element against the f64 reference on the bf16-rounded inputs.
///
/// The kernel computes y32 = gelu(x) in f32 and stores bf16(y32), rounded to nearest. bf16 has an
/// 8-bit significand (7 stored bits), so that rounding moves y32 by at most half an ulp, which is
/// at most 2^-8 |y32| (unit roundoff 2^-8). With the f32 error |y32 - ref| <= d, the stored value
/// is within 2^-8 |ref| + (1 + 2^-8) d of ref. d is what the f32 test bounds: 1e-5 * max |ref|
/// (the tanh form loses relative accuracy where 1 + tanh cancels, for negative x); doubled here
/// for margin.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6765_6c75_6266_3136);
    // Far tails, around the kink and tiny inputs ([`FIXED`]) first, then random ones.
    for n in [FIXED.len(), 31, 1000, 12_289, 4 * 64 * 3072 + 7] {
        let x: Vec<bf16> = round(&fixed_or_random(&mut rng, n));
        let x32 = widen(&x);
        let want = reference(&x32);
        let got = run_gelu(&gpu, &x);
        let worst = assert_elementwise(&format!("N={n}"), &got, &want, BF16_U, 2e-5 * max_ref(&want));
        println!("gelu_forward_bf16 N={n}: worst error {worst:.2} of its tolerance");
    }
}

/// GELU backward on the GPU in `T`: `dinp` (`dinp0` plus a tail) accumulated into or overwritten
/// as `store` says; returns it with its tail.
fn run_gelu_backward<T: Float>(gpu: &Gpu, x: &[T], dout: &[T], dinp0: &[T], store: Dinp) -> Vec<T> {
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(x).unwrap();
    let d_dout = stream.clone_htod(dout).unwrap();
    let mut d_dinp = stream.clone_htod(dinp0).unwrap();
    gelu_backward(gpu, &mut d_dinp, &d_inp, &d_dout, x.len(), store).unwrap();
    gpu.synchronize().unwrap();
    stream.clone_dtoh(&d_dinp).unwrap()
}

/// `cpu::gelu::gelu_backward` in f64 on the same values (without the tail).
fn backward_reference(x: &[f32], dout: &[f32], dinp0: &[f32]) -> Vec<f64> {
    let mut dinp = to_f64(&dinp0[..x.len()]);
    cpu::gelu::gelu_backward(&mut dinp, &to_f64(x), &to_f64(dout));
    dinp
}

/// `n` GELU inputs: the [`FIXED`] points when `n` is their count, else 5 U(-1, 1).
fn fixed_or_random(rng: &mut Rng, n: usize) -> Vec<f32> {
    if n == FIXED.len() {
        FIXED.to_vec()
    } else {
        gelu_inputs(rng, n)
    }
}

/// `n` GELU inputs in 5 U(-1, 1): the far tails, the kink and everything between.
fn gelu_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 5.0 * rng.uniform()).collect()
}

/// The backward tests' sizes: the [`FIXED`] points first, then random inputs.
const BACKWARD_NS: [usize; 6] = [FIXED.len(), 1, 31, 1000, 12_289, 4 * 64 * 3072 + 7];

/// One backward case as run in `T`, every value widened to f32 (exact).
struct BackwardCase {
    x: Vec<f32>,
    dout: Vec<f32>,
    /// The GPU's dinp, without the tail (checked untouched) and all finite.
    got: Vec<f32>,
    want: Vec<f64>,
    /// The largest |dinp0| + |gelu'(x) * dout|: the scale of the two terms added, not of their sum,
    /// which can cancel (N = 1 has a single element).
    scale: f64,
}

/// Draws a backward case of `n` elements in `T` (x the [`FIXED`] points when `n` is their count,
/// else 5 U(-1, 1); dout and dinp0, with a [`TAIL`], U(-1, 1); all rounded to `T`), runs it on the
/// GPU and computes the f64 reference on exactly the rounded values. Asserts the tail stayed bit for
/// bit (compared widened to f32, which is exact and, for finite values, injective) and every other
/// value is finite.
fn backward_case<T: Float>(gpu: &Gpu, rng: &mut Rng, n: usize) -> BackwardCase {
    let x = fixed_or_random(rng, n);
    let (h_x, h_dout, h_dinp0) =
        (round::<T>(&x), round::<T>(&rng.uniform_vec(n)), round::<T>(&rng.uniform_vec(n + TAIL)));
    let (x, dout, dinp0) = (widen(&h_x), widen(&h_dout), widen(&h_dinp0));
    let want = backward_reference(&x, &dout, &dinp0);
    let mut got = widen(&run_gelu_backward(gpu, &h_x, &h_dout, &h_dinp0, Dinp::Accumulate));
    assert_same_bits(&format!("N={n}: the tail past dinp (written past the end?)"), &got[n..], &dinp0[n..]);
    got.truncate(n);
    if let Some(i) = got.iter().position(|g| !g.is_finite()) {
        panic!("N={n}: element {i} is {}, expected {}", got[i], want[i]);
    }
    let scale = want.iter().zip(&dinp0).fold(0.0f64, |m, (&w, &d)| m.max(d.abs() as f64 + (w - d as f64).abs()));
    BackwardCase { x, dout, got, want, scale }
}

/// Backward vs. the f64 CPU, gradients pre-filled with random values (accumulation) and a tail
/// that must stay bit for bit; fixed points (far tails, the kink, tiny inputs) first.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6765_6c75_6261_636b);
    for n in BACKWARD_NS {
        let BackwardCase { x, dout, got, want, scale, .. } = backward_case::<f32>(&gpu, &mut rng, n);
        let (worst, max_err) = max_abs_error(&got, &want);
        assert!(
            max_err <= 1e-5 * scale,
            "N={n}: max abs error {max_err:e} at {worst} (x = {}, dout = {}, gpu {} vs ref {}) exceeds 1e-5 * {scale}",
            x[worst],
            dout[worst],
            got[worst],
            want[worst]
        );
        println!("gelu_backward N={n}: max abs err {max_err:.1e} (scale {scale:.2})");
    }
}

/// bf16 backward: x, dout and the pre-filled dinp (with a tail that must stay bit for bit) rounded
/// to bf16, the f64 reference on exactly those values.
///
/// The kernel forms y32 = dinp0 + gelu'(x) * dout in f32, the f32 kernel's arithmetic on the same
/// values, so |y32 - ref| <= d with d the f32 test's bound, 1e-5 * scale (scale the largest
/// |dinp0| + |gelu'(x) * dout|, the terms added, since their sum can cancel). It stores bf16(y32),
/// rounded once to nearest: bf16 keeps 8 significant bits, so that moves y32 by at most half an
/// ulp <= 2^-8 |y32| <= 2^-8 (|ref| + d). Hence |gpu - ref| <= 2^-8 |ref| + (1 + 2^-8) d, checked
/// per element as rtol = 2^-8 ([`BF16_U`]) and atol = 2e-5 * scale (d doubled for margin). A kernel
/// that overwrote instead of adding would be off by |dinp0| ~ 0.5, far outside.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_backward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6765_6c75_6266_6277);
    for n in BACKWARD_NS {
        let BackwardCase { got, want, scale, .. } = backward_case::<bf16>(&gpu, &mut rng, n);
        let worst = assert_elementwise(&format!("N={n}"), &got, &want, BF16_U, 2e-5 * scale);
        println!("gelu_backward_bf16 N={n}: worst error {worst:.2} of its tolerance (scale {scale:.2})");
    }
}

// ---- --kernels vector: gelu_forward_vec / gelu_backward_vec ----

/// Sizes for the vectorised kernels: below one pack, whole packs of 4 and 8, and tails (N % 8 of
/// 1..7), up to a GPT-2 MLP activation plus a tail.
const VEC_NS: [usize; 8] = [1, 3, 8, 12, 1000, 1003, 12_289, 4 * 64 * 3072 + 7];

/// Runs `f` with the GPU set to `kernels`, then back to scalar.
fn with_kernels<R>(gpu: &Gpu, kernels: Kernels, f: impl FnOnce() -> R) -> R {
    gpu.set_kernels(kernels);
    let r = f();
    gpu.set_kernels(Kernels::Scalar);
    r
}

/// The vectorised forward in `T` on random inputs: bit for bit the scalar kernel (the same
/// per-element expression; only the access width differs) and, as that one, within the scalar
/// tests' tolerance of the f64 CPU reference: max abs error 1e-5 * max |ref| in f32, per element
/// 2^-8 |ref| + 2e-5 max |ref| in bf16 (see gelu_forward_bf16_matches_cpu). Outputs poisoned,
/// tail checked untouched ([`run_gelu`]).
fn check_forward_vec<T: Float>(gpu: &Gpu, rng: &mut Rng) {
    for n in VEC_NS {
        let x: Vec<T> = round(&gelu_inputs(rng, n));
        let scalar = run_gelu(gpu, &x);
        let vector = with_kernels(gpu, Kernels::Vector, || run_gelu(gpu, &x));
        let what = format!("gelu_forward_vec{} N={n}", T::SUFFIX);
        assert_same_bits(&format!("{what} vs the scalar kernel"), &vector, &scalar);
        let want = reference(&widen(&x));
        let (rtol, atol) = if T::BYTES == 2 { (BF16_U, 2e-5) } else { (0.0, 1e-5) };
        let worst = assert_elementwise(&what, &vector, &want, rtol, atol * max_ref(&want));
        println!("{what}: bit-identical to scalar, worst error {worst:.2} of its tolerance");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_vec_matches_scalar_and_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6765_6c75_7665_6331);
    check_forward_vec::<f32>(&gpu, &mut rng);
    check_forward_vec::<bf16>(&gpu, &mut rng);
}

/// The vectorised backward in `T`: the same case (same seed) run with the scalar and the vector
/// kernels must give the same bits (dinp accumulated onto random values; the tail past N checked
/// untouched by [`backward_case`]), and the vector result is within the scalar tests' tolerance of
/// the f64 CPU reference (1e-5 * scale in f32; 2^-8 |ref| + 2e-5 scale per element in bf16).
fn check_backward_vec<T: Float>(gpu: &Gpu, seed: u64) {
    for n in VEC_NS {
        let scalar = backward_case::<T>(gpu, &mut Rng::new(seed ^ n as u64), n);
        let vector = with_kernels(gpu, Kernels::Vector, || backward_case::<T>(gpu, &mut Rng::new(seed ^ n as u64), n));
        let what = format!("gelu_backward_vec{} N={n}", T::SUFFIX);
        assert_same_bits(&format!("{what} vs the scalar kernel"), &vector.got, &scalar.got);
        let (rtol, atol) = if T::BYTES == 2 { (BF16_U, 2e-5) } else { (0.0, 1e-5) };
        let worst = assert_elementwise(&what, &vector.got, &vector.want, rtol, atol * vector.scale);
        println!("{what}: bit-identical to scalar, worst error {worst:.2} of its tolerance");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_backward_vec_matches_scalar_and_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward_vec::<f32>(&gpu, 0x6765_6c75_7662_3332);
    check_backward_vec::<bf16>(&gpu, 0x6765_6c75_7662_6266);
}

// ---- gelu_backward_overwrite[_vec] (Dinp::Overwrite; used with --kernels vector) ----

/// The overwriting backward in `T`, scalar and vector kernels: on the same x and dout (drawn as in
/// [`backward_case`]), dinp prefilled with NaN and overwritten must give the bits of dinp
/// prefilled with zeros and accumulated into (a zero's sign aside, see [`assert_overwrite_bits`]),
/// and leave the NaN tail past N alone. The NaN prefill catches a kernel that still reads dinp:
/// any read, even a 0 * old, would carry it into the result.
fn check_backward_overwrite<T: Float>(gpu: &Gpu, seed: u64) {
    for kernels in [Kernels::Scalar, Kernels::Vector] {
        for n in VEC_NS {
            let mut rng = Rng::new(seed ^ n as u64);
            let (x, dout) = (round::<T>(&gelu_inputs(&mut rng, n)), round::<T>(&rng.uniform_vec(n)));
            let run = |fill: f32, store: Dinp| {
                let dinp0 = vec![T::from_f32(fill); n + TAIL];
                widen(&with_kernels(gpu, kernels, || run_gelu_backward(gpu, &x, &dout, &dinp0, store)))
            };
            let (zeroed, overwritten) = (run(0.0, Dinp::Accumulate), run(f32::NAN, Dinp::Overwrite));
            let what = format!("gelu_backward_overwrite{} ({kernels}) N={n}", T::SUFFIX);
            assert!(overwritten[n..].iter().all(|v| v.is_nan()), "{what}: wrote past N");
            assert_overwrite_bits(&format!("{what} vs accumulating onto zeros"), &overwritten[..n], &zeroed[..n]);
        }
        println!("gelu_backward_overwrite{} ({kernels}): bit-identical to accumulating onto zeros", T::SUFFIX);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_backward_overwrite_matches_accumulating_onto_zeros() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward_overwrite::<f32>(&gpu, 0x6765_6c75_6f77_3332);
    check_backward_overwrite::<bf16>(&gpu, 0x6765_6c75_6f77_6266);
}
