//! cuBLASLt matmul forward (with the BIAS / GELU / GELU_BIAS epilogues) vs. the CPU reference,
//! computed in f64 so the error measured is the GPU's alone.

use super::{gpu_or_skip, SplitMix};
use genesis::cpu;
use genesis::gpu::blas::Blas;
use genesis::gpu::device::Gpu;
use genesis::gpu::matmul::matmul_forward;
use half::bf16;

/// Reference `inp @ weight^T + bias`, then tanh-GELU, in f64.
fn reference(inp: &[f32], weight: &[f32], bias: Option<&[f32]>, n: usize, c: usize, oc: usize, gelu: bool) -> Vec<f64> {
    let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let (inp, weight) = (to64(inp), to64(weight));
    let bias = bias.map(to64);
    let mut out = vec![0.0f64; n * oc];
    cpu::matmul::matmul_forward(&mut out, &inp, &weight, bias.as_deref(), n, c, oc);
    if gelu {
        let pre = out.clone();
        cpu::gelu::gelu_forward(&mut out, &pre);
    }
    out
}

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

#[allow(clippy::too_many_arguments)]
fn check(
    gpu: &Gpu,
    blas: &Blas,
    rng: &mut SplitMix,
    n: usize,
    c: usize,
    oc: usize,
    with_bias: bool,
    gelu: bool,
    tol: f64,
) {
    let inp = rng.vec(n * c);
    let weight = rng.vec(oc * c);
    let bias = rng.vec(oc);
    let bias_opt = with_bias.then_some(bias.as_slice());
    let want = reference(&inp, &weight, bias_opt, n, c, oc, gelu);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_weight = stream.clone_htod(&weight).unwrap();
    let d_bias = stream.clone_htod(&bias).unwrap();
    // Poisoned output: any element the GEMM fails to write stays NaN.
    let mut d_out = stream.clone_htod(&vec![f32::NAN; n * oc]).unwrap();
    let bias_view = d_bias.as_view();
    let bias_arg = with_bias.then_some(&bias_view);
    matmul_forward(gpu, blas, &mut d_out, &d_inp, &d_weight, bias_arg, n, c, oc, gelu).unwrap();
    gpu.synchronize().unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();

    let what = format!("matmul N={n} C={c} OC={oc} bias={with_bias} gelu={gelu} tf32={}", blas.allow_tf32());
    let err = rel_error(&got, &want, &what);
    println!("{what}: max abs err / max |ref| = {err:.3e}");
    assert!(err < tol, "{what}: relative error {err:.3e} >= {tol:.0e}");
}

/// Bound for GELU-epilogue cases (see `matmul_forward_matches_cpu_fp32`).
const GELU_TOL: f64 = 1e-3;

/// TF32 keeps 10 explicit mantissa bits; if the tensor cores truncate rather than round the
/// fp32 inputs, every product shrinks by ~2^-10 on average, a systematic ~1e-3 relative error.
const TF32_TOL: f64 = 3e-3;

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 64, 64),
    (1, 37, 13),
    (3, 5, 7),
    (7, 33, 65),
    (51, 768, 2304),
    (51, 13, 100),
    (64, 768, 3072),
    (17, 3072, 768),
    (4, 768, 50257),
];

#[test]
fn matmul_forward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = SplitMix(0x6d61_746d_756c_0001);
    for &(n, c, oc) in SHAPES {
        for (with_bias, gelu) in [(false, false), (true, false), (true, true), (false, true)] {
            // The GEMM and bias are exact fp32. cuBLASLt may evaluate the GELU's tanh with the
            // hardware approximation (~2^-11 relative), so GELU cases get a looser bound; the
            // printed error shows what this cuBLAS actually does.
            let tol = if gelu { GELU_TOL } else { 1e-5 };
            check(&gpu, &blas, &mut rng, n, c, oc, with_bias, gelu, tol);
        }
    }
}

#[test]
fn matmul_forward_tf32_is_close() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, true).expect("Blas::new");
    assert!(blas.allow_tf32());
    let mut rng = SplitMix(0x6d61_746d_756c_0002);
    for &(n, c, oc) in &[(51usize, 768usize, 2304usize), (3, 37, 13), (64, 768, 3072)] {
        for (with_bias, gelu) in [(false, false), (true, false), (true, true)] {
            check(&gpu, &blas, &mut rng, n, c, oc, with_bias, gelu, TF32_TOL);
        }
    }
}

#[test]
fn matmul_forward_on_offset_views() {
    // Sub-views of one buffer (as in the flat parameter layout): pointers only 4-byte aligned.
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = SplitMix(0x6d61_746d_756c_0003);
    let (n, c, oc) = (9usize, 24usize, 40usize);
    let (w_off, b_off) = (1usize, 1 + oc * c + 3);
    let params = rng.vec(b_off + oc + 5);
    let inp = rng.vec(n * c + 1);
    let want = reference(&inp[1..], &params[w_off..w_off + oc * c], Some(&params[b_off..b_off + oc]), n, c, oc, true);

    let stream = gpu.stream();
    let d_params = stream.clone_htod(&params).unwrap();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let mut d_out = stream.clone_htod(&vec![f32::NAN; n * oc + 2]).unwrap();
    let w = d_params.slice(w_off..w_off + oc * c);
    let bias = d_params.slice(b_off..b_off + oc);
    let x = d_inp.slice(1..);
    {
        let mut out = d_out.slice_mut(1..1 + n * oc);
        matmul_forward(&gpu, &blas, &mut out, &x, &w, Some(&bias), n, c, oc, true).unwrap();
    }
    gpu.synchronize().unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();
    assert!(got[0].is_nan() && got[n * oc + 1].is_nan(), "matmul wrote outside its output view");
    let err = rel_error(&got[1..1 + n * oc], &want, "offset views");
    assert!(err < 1e-5, "offset views: relative error {err:.3e}");
}

#[test]
fn matmul_forward_rejects_short_buffers() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let inp = stream.alloc_zeros::<f32>(4 * 8).unwrap();
    let weight = stream.alloc_zeros::<f32>(8 * 8).unwrap();
    let mut out = stream.alloc_zeros::<f32>(4 * 8 - 1).unwrap();
    assert!(matmul_forward(&gpu, &blas, &mut out, &inp, &weight, None, 4, 8, 8, false).is_err());
}

// ---- bf16 storage, fp32 accumulation ----
//
// Inputs are generated in f32, rounded to bf16 and uploaded as bf16; the f64 reference runs on
// the rounded values, so input rounding is not part of the measured error.
//
// Tolerance, per element: |got - ref| <= 2^-8 |ref| + slack * max|ref|.
// - 2^-8 is bf16's unit roundoff (8 significant bits, round-to-nearest-even): the one rounding
//   of the fp32 result to the bf16 output. (Relative to the value it is between 2^-9, at the top
//   of a binade, and 2^-8, just above a power of two, so 2^-8 is the bound, not 2^-9.)
// - slack covers what happens before that rounding, in fp32: accumulation in a different order
//   than the reference (the fp32 tests pass at 1e-5 of max|ref|; the bf16 products are exact in
//   fp32, and split-K partial sums are kept in fp32, see `Blas::make_plan`), so 1e-4; with the
//   GELU epilogue, cuBLASLt's possibly approximate tanh, the same GELU_TOL the fp32 test uses.
//   An fp32 error d before rounding moves the result by at most d + 2^-8 (|ref| + d), hence the
//   additive form.
// In max-norm terms this is max abs err <= (2^-8 + slack) * max|ref|: the GEMM's error is the
// output rounding, as it should be with fp32 accumulation; bf16 accumulation (e.g. split-K
// partial sums added in bf16) would show up as several 2^-8 and fail.

/// bf16 unit roundoff.
const BF16_U: f64 = 1.0 / 256.0;

/// Rounds to bf16 (round-to-nearest-even).
fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Widens bf16 values to f32 (exact).
fn widen(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Checks `|got - want| <= 2^-8 (|want| + 1.2 |acc|) + slack * max|want|` for every element and
/// returns max |got - want| / max |want|. `acc` is the product before the epilogue (bias, GELU):
/// cuBLASLt rounds it to bf16 before applying a bias epilogue (seen on an H200: an element of
/// -0.0209 made of a product near 0.5 and a bias near -0.52 came back 1.3e-3 off), so that rounding,
/// carried through GELU (slope at most 1.13), bounds the error too. Without an epilogue pass
/// `acc = None`. Panics on a non-finite value (an unwritten NaN).
fn check_bf16_close(got: &[f32], want: &[f64], acc: Option<&[f64]>, slack: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max_ref = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    assert!(max_ref > 0.0, "{what}: reference is all zeros");
    let mut max_err = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (expected {w}): not written?");
        let err = (f64::from(g) - w).abs();
        let bound = BF16_U * (w.abs() + acc.map_or(0.0, |a| 1.2 * a[i].abs())) + slack * max_ref;
        assert!(err <= bound, "{what}: element {i} = {g}, expected {w}: error {err:.3e} > bound {bound:.3e}");
        max_err = max_err.max(err);
    }
    max_err / max_ref
}

#[allow(clippy::too_many_arguments)]
fn check_bf16(gpu: &Gpu, blas: &Blas, rng: &mut SplitMix, n: usize, c: usize, oc: usize, with_bias: bool, gelu: bool) {
    let inp = to_bf16(&rng.vec(n * c));
    let weight = to_bf16(&rng.vec(oc * c));
    let bias = to_bf16(&rng.vec(oc));
    let bias_f32 = widen(&bias);
    let want = reference(&widen(&inp), &widen(&weight), with_bias.then_some(bias_f32.as_slice()), n, c, oc, gelu);
    let acc = reference(&widen(&inp), &widen(&weight), None, n, c, oc, false);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_weight = stream.clone_htod(&weight).unwrap();
    let d_bias = stream.clone_htod(&bias).unwrap();
    // Poisoned output: any element the GEMM fails to write stays NaN.
    let mut d_out = stream.clone_htod(&vec![bf16::NAN; n * oc]).unwrap();
    let bias_view = d_bias.as_view();
    let bias_arg = with_bias.then_some(&bias_view);
    matmul_forward(gpu, blas, &mut d_out, &d_inp, &d_weight, bias_arg, n, c, oc, gelu).unwrap();
    gpu.synchronize().unwrap();
    let got = widen(&stream.clone_dtoh(&d_out).unwrap());

    let what = format!("matmul bf16 N={n} C={c} OC={oc} bias={with_bias} gelu={gelu} tf32={}", blas.allow_tf32());
    let slack = if gelu { GELU_TOL } else { 1e-4 };
    let epilogue = with_bias || gelu;
    let err = check_bf16_close(&got, &want, epilogue.then_some(acc.as_slice()), slack, &what);
    println!("{what}: max abs err / max |ref| = {err:.3e} = {:.2} * 2^-8", err / BF16_U);
}

#[test]
fn matmul_forward_matches_cpu_bf16() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = SplitMix(0x6d61_746d_756c_0004);
    // TF32 must make no difference to bf16 GEMMs (they always compute in plain fp32).
    for allow_tf32 in [false, true] {
        let blas = Blas::new(&gpu, allow_tf32).expect("Blas::new");
        for &(n, c, oc) in SHAPES {
            for (with_bias, gelu) in [(false, false), (true, false), (true, true), (false, true)] {
                check_bf16(&gpu, &blas, &mut rng, n, c, oc, with_bias, gelu);
            }
        }
    }
}

#[test]
fn matmul_forward_bf16_on_offset_views() {
    // Sub-views of one bf16 buffer at odd element offsets: pointers only 2-byte aligned.
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = SplitMix(0x6d61_746d_756c_0005);
    let (n, c, oc) = (9usize, 24usize, 40usize);
    let (w_off, b_off) = (1usize, 1 + oc * c + 3);
    let params = to_bf16(&rng.vec(b_off + oc + 5));
    let inp = to_bf16(&rng.vec(n * c + 1));
    let (params_f32, inp_f32) = (widen(&params), widen(&inp));
    let want = reference(
        &inp_f32[1..],
        &params_f32[w_off..w_off + oc * c],
        Some(&params_f32[b_off..b_off + oc]),
        n,
        c,
        oc,
        true,
    );

    let stream = gpu.stream();
    let d_params = stream.clone_htod(&params).unwrap();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let mut d_out = stream.clone_htod(&vec![bf16::NAN; n * oc + 2]).unwrap();
    let w = d_params.slice(w_off..w_off + oc * c);
    let bias = d_params.slice(b_off..b_off + oc);
    let x = d_inp.slice(1..);
    {
        let mut out = d_out.slice_mut(1..1 + n * oc);
        matmul_forward(&gpu, &blas, &mut out, &x, &w, Some(&bias), n, c, oc, true).unwrap();
    }
    gpu.synchronize().unwrap();
    let got = widen(&stream.clone_dtoh(&d_out).unwrap());
    assert!(got[0].is_nan() && got[n * oc + 1].is_nan(), "bf16 matmul wrote outside its output view");
    let acc = reference(&inp_f32[1..], &params_f32[w_off..w_off + oc * c], None, n, c, oc, false);
    let err = check_bf16_close(&got[1..1 + n * oc], &want, Some(&acc), GELU_TOL, "bf16 offset views");
    println!("bf16 offset views: max abs err / max |ref| = {err:.3e}");
}

#[test]
fn matmul_forward_bf16_rejects_short_buffers() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let inp = stream.alloc_zeros::<bf16>(4 * 8).unwrap();
    let weight = stream.alloc_zeros::<bf16>(8 * 8).unwrap();
    let mut out = stream.alloc_zeros::<bf16>(4 * 8 - 1).unwrap();
    assert!(matmul_forward(&gpu, &blas, &mut out, &inp, &weight, None, 4, 8, 8, false).is_err());
}
