//! cuBLASLt matmul forward (with the BIAS / GELU / GELU_BIAS epilogues) vs. the CPU reference,
//! computed in f64 so the error measured is the GPU's alone.

use super::common::assert_same_bits;
use super::{
    assert_overwrite_bits, check_bf16_close, download, gpu_or_skip, max_ref, nan_buffer, poisoned, rel_error, round,
    to_f64, widen, Uniform, BF16_U, TAIL,
};
use cudarc::driver::{CudaSlice, CudaViewMut};
use genesis::cpu;
use genesis::gpu::blas::Blas;
use genesis::gpu::device::Gpu;
use genesis::gpu::gelu::{gelu_backward, gelu_forward};
use genesis::gpu::matmul::{
    bias_grad_scratch_len, matmul_backward, matmul_backward_dgelu, matmul_backward_scratch_len, matmul_forward,
    matmul_forward_gelu_aux,
};
use genesis::gpu::{BiasGrad, Dinp, Float};
use genesis::rng::Rng;
use half::bf16;

/// Reference `inp @ weight^T + bias`, then tanh-GELU, in f64.
fn reference(inp: &[f32], weight: &[f32], bias: Option<&[f32]>, n: usize, c: usize, oc: usize, gelu: bool) -> Vec<f64> {
    let (inp, weight) = (to_f64(inp), to_f64(weight));
    let bias = bias.map(to_f64);
    let mut out = vec![0.0f64; n * oc];
    cpu::matmul::matmul_forward(&mut out, &inp, &weight, bias.as_deref(), n, c, oc);
    if gelu {
        let pre = out.clone();
        cpu::gelu::gelu_forward(&mut out, &pre);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check(gpu: &Gpu, blas: &Blas, rng: &mut Rng, n: usize, c: usize, oc: usize, with_bias: bool, gelu: bool, tol: f64) {
    let inp = rng.uniform_vec(n * c);
    let weight = rng.uniform_vec(oc * c);
    let bias = rng.uniform_vec(oc);
    let bias_opt = with_bias.then_some(bias.as_slice());
    let want = reference(&inp, &weight, bias_opt, n, c, oc, gelu);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_weight = stream.clone_htod(&weight).unwrap();
    let d_bias = stream.clone_htod(&bias).unwrap();
    // Poisoned output: any element the GEMM fails to write stays NaN.
    let mut d_out = nan_buffer::<f32>(gpu, n * oc);
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
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6d61_746d_756c_0001);
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
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_tf32_is_close() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, true).expect("Blas::new");
    assert!(blas.allow_tf32());
    let mut rng = Rng::new(0x6d61_746d_756c_0002);
    for &(n, c, oc) in &[(51usize, 768usize, 2304usize), (3, 37, 13), (64, 768, 3072)] {
        for (with_bias, gelu) in [(false, false), (true, false), (true, true)] {
            check(&gpu, &blas, &mut rng, n, c, oc, with_bias, gelu, TF32_TOL);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_on_offset_views() {
    // Sub-views of one buffer (as in the flat parameter layout): pointers only 4-byte aligned.
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6d61_746d_756c_0003);
    let (n, c, oc) = (9usize, 24usize, 40usize);
    let (w_off, b_off) = (1usize, 1 + oc * c + 3);
    let params = rng.uniform_vec(b_off + oc + 5);
    let inp = rng.uniform_vec(n * c + 1);
    let want = reference(&inp[1..], &params[w_off..w_off + oc * c], Some(&params[b_off..b_off + oc]), n, c, oc, true);

    let stream = gpu.stream();
    let d_params = stream.clone_htod(&params).unwrap();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let mut d_out = nan_buffer::<f32>(&gpu, n * oc + 2);
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
#[ignore = "needs a CUDA GPU"]
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
// `check_bf16_close` (main.rs) checks this, with the allowance for cuBLASLt rounding the product
// before a bias epilogue.

#[allow(clippy::too_many_arguments)]
fn check_bf16(gpu: &Gpu, blas: &Blas, rng: &mut Rng, n: usize, c: usize, oc: usize, with_bias: bool, gelu: bool) {
    let inp = round::<bf16>(&rng.uniform_vec(n * c));
    let weight = round::<bf16>(&rng.uniform_vec(oc * c));
    let bias = round::<bf16>(&rng.uniform_vec(oc));
    let bias_f32 = widen(&bias);
    let want = reference(&widen(&inp), &widen(&weight), with_bias.then_some(bias_f32.as_slice()), n, c, oc, gelu);
    let acc = reference(&widen(&inp), &widen(&weight), None, n, c, oc, false);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_weight = stream.clone_htod(&weight).unwrap();
    let d_bias = stream.clone_htod(&bias).unwrap();
    // Poisoned output: any element the GEMM fails to write stays NaN.
    let mut d_out = nan_buffer::<bf16>(gpu, n * oc);
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
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_matches_cpu_bf16() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6d61_746d_756c_0004);
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
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_bf16_on_offset_views() {
    // Sub-views of one bf16 buffer at odd element offsets: pointers only 2-byte aligned.
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6d61_746d_756c_0005);
    let (n, c, oc) = (9usize, 24usize, 40usize);
    let (w_off, b_off) = (1usize, 1 + oc * c + 3);
    let params = round::<bf16>(&rng.uniform_vec(b_off + oc + 5));
    let inp = round::<bf16>(&rng.uniform_vec(n * c + 1));
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
    let mut d_out = nan_buffer::<bf16>(&gpu, n * oc + 2);
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
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_bf16_rejects_short_buffers() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let inp = stream.alloc_zeros::<bf16>(4 * 8).unwrap();
    let weight = stream.alloc_zeros::<bf16>(8 * 8).unwrap();
    let mut out = stream.alloc_zeros::<bf16>(4 * 8 - 1).unwrap();
    assert!(matmul_forward(&gpu, &blas, &mut out, &inp, &weight, None, 4, 8, 8, false).is_err());
}

// ---- backward (fp32): dinp += dout @ weight, dweight += dout^T @ inp, dbias += colsum(dout) ----
//
// Every gradient buffer starts from random values (the backward accumulates), the reference is
// `cpu::matmul::matmul_backward` in f64 on the same prefilled values, and the error is measured
// relative to max |ref| per gradient, with TF32 off.

/// Tolerance for an fp32 GEMM with inner dimension `k`, relative to max |ref|. Sequential fp32
/// accumulation of k products gives a random-walk error of about 2^-24 k / sqrt(6) times the
/// products' spread against a result spread of sqrt(k) times it, i.e. relative ~1e-7 sqrt(k)
/// (times ~3 for the max over many elements vs. the max of the reference): below 1e-5 up to
/// k ~ 4096, ~2e-5 at k = 50304 (the classifier's dinp). Hence 1e-5, or 1e-7 sqrt(k) if larger.
fn backward_tol(k: usize) -> f64 {
    (1e-7 * (k as f64).sqrt()).max(1e-5)
}

struct BackwardRun {
    dinp: Vec<f32>,
    dweight: Vec<f32>,
    dbias: Option<Vec<f32>>,
}

/// Random inputs and prefilled gradients for one (N, C, OC) case. The values stored in the
/// storage type `T` of [`BackwardCase::new`] (dout, inp, weight and dinp's prefill) are drawn in
/// f32 and rounded through `T` (the identity for f32), so the reference sees exactly what is
/// uploaded; dweight0 and dbias0 are f32 for every `T` (parameter gradients are always f32).
struct BackwardCase {
    n: usize,
    c: usize,
    oc: usize,
    dout: Vec<f32>,
    inp: Vec<f32>,
    weight: Vec<f32>,
    dinp0: Vec<f32>,
    dweight0: Vec<f32>,
    dbias0: Vec<f32>,
}

impl BackwardCase {
    fn new<T: Float>(rng: &mut Rng, n: usize, c: usize, oc: usize) -> Self {
        let mut stored = |len: usize| widen(&round::<T>(&rng.uniform_vec(len)));
        // Drawn in the same order for every T (fields are evaluated as written).
        BackwardCase {
            n,
            c,
            oc,
            dout: stored(n * oc),
            inp: stored(n * c),
            weight: stored(oc * c),
            dinp0: stored(n * c),
            dweight0: rng.uniform_vec(oc * c),
            dbias0: rng.uniform_vec(oc),
        }
    }

    /// f64 reference: the prefilled gradients plus the CPU backward.
    fn reference(&self, with_bias: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut dinp, mut dweight, mut dbias) = (to_f64(&self.dinp0), to_f64(&self.dweight0), to_f64(&self.dbias0));
        cpu::matmul::matmul_backward(
            &mut dinp,
            &mut dweight,
            with_bias.then_some(dbias.as_mut_slice()),
            &to_f64(&self.dout),
            &to_f64(&self.inp),
            &to_f64(&self.weight),
            self.n,
            self.c,
            self.oc,
        );
        (dinp, dweight, dbias)
    }

    /// Runs `matmul_backward::<T>` on the GPU from the prefilled gradients (dout, inp, weight and
    /// dinp uploaded as `T`, exactly: the case was built with the same `T`), dinp written as
    /// `store` says, the bias gradient as `bias_grad` says. dbias is a view into a buffer with a
    /// sentinel element on each side (checked untouched); the scratch starts NaN, with
    /// [`TAIL`] NaNs past what `bias_grad` needs (checked untouched). dinp comes back widened to
    /// f32.
    fn run<T: Float>(&self, gpu: &Gpu, blas: &Blas, with_bias: bool, store: Dinp, bias_grad: BiasGrad) -> BackwardRun {
        let (n, c, oc) = (self.n, self.c, self.oc);
        let stream = gpu.stream();
        let d_dout = stream.clone_htod(&round::<T>(&self.dout)).unwrap();
        let d_inp = stream.clone_htod(&round::<T>(&self.inp)).unwrap();
        let d_weight = stream.clone_htod(&round::<T>(&self.weight)).unwrap();
        let mut d_dinp = stream.clone_htod(&round::<T>(&self.dinp0)).unwrap();
        let mut d_dweight = stream.clone_htod(&self.dweight0).unwrap();
        let mut padded = vec![f32::NAN; oc + 2];
        padded[1..=oc].copy_from_slice(&self.dbias0);
        let mut d_dbias = stream.clone_htod(&padded).unwrap();
        let scratch_len = bias_grad_scratch_len(n, oc, bias_grad).max(1);
        let mut d_scratch = nan_buffer::<f32>(gpu, scratch_len + TAIL);
        {
            let mut dbias_view = d_dbias.slice_mut(1..=oc);
            let dbias_arg = if with_bias { Some(&mut dbias_view) } else { None };
            matmul_backward(
                gpu,
                blas,
                &mut d_dinp,
                &mut d_dweight,
                dbias_arg,
                &mut d_scratch,
                &d_dout,
                &d_inp,
                &d_weight,
                n,
                c,
                oc,
                store,
                bias_grad,
            )
            .unwrap();
        }
        gpu.synchronize().unwrap();
        let scratch = stream.clone_dtoh(&d_scratch).unwrap();
        let past = &scratch[scratch_len..];
        assert!(past.iter().all(|x| x.is_nan()), "matmul_backward ({bias_grad}) wrote past its scratch: {past:?}");
        let dbias_all = stream.clone_dtoh(&d_dbias).unwrap();
        assert!(dbias_all[0].is_nan() && dbias_all[oc + 1].is_nan(), "matmul_backward wrote outside dbias's view");
        let dbias = dbias_all[1..=oc].to_vec();
        if !with_bias {
            assert_eq!(dbias, self.dbias0, "matmul_backward without dbias changed the bias buffer");
        }
        BackwardRun {
            dinp: widen(&stream.clone_dtoh(&d_dinp).unwrap()),
            dweight: stream.clone_dtoh(&d_dweight).unwrap(),
            dbias: with_bias.then_some(dbias),
        }
    }
}

fn check_backward(
    gpu: &Gpu,
    blas: &Blas,
    rng: &mut Rng,
    (n, c, oc): (usize, usize, usize),
    with_bias: bool,
    tf32_tol: Option<f64>,
) {
    let case = BackwardCase::new::<f32>(rng, n, c, oc);
    let (want_dinp, want_dweight, want_dbias) = case.reference(with_bias);
    let got = case.run::<f32>(gpu, blas, with_bias, Dinp::Accumulate, BiasGrad::Reduce);
    let what = format!("matmul_backward N={n} C={c} OC={oc} bias={with_bias} tf32={}", blas.allow_tf32());
    // dinp's GEMM sums over OC, dweight's and dbias's over N.
    let (tol_dinp, tol_dw) = match tf32_tol {
        Some(t) => (t, t),
        None => (backward_tol(oc), backward_tol(n)),
    };
    let err_dinp = rel_error(&got.dinp, &want_dinp, &format!("{what} dinp"));
    let err_dw = rel_error(&got.dweight, &want_dweight, &format!("{what} dweight"));
    let err_db = got.dbias.as_ref().map(|db| rel_error(db, &want_dbias, &format!("{what} dbias")));
    let db_text = err_db.map_or_else(|| "-".to_string(), |e| format!("{e:.3e}"));
    println!("{what}: rel err dinp {err_dinp:.3e}, dweight {err_dw:.3e}, dbias {db_text}");
    assert!(err_dinp < tol_dinp, "{what}: dinp relative error {err_dinp:.3e} >= {tol_dinp:.1e}");
    assert!(err_dw < tol_dw, "{what}: dweight relative error {err_dw:.3e} >= {tol_dw:.1e}");
    if let Some(err_db) = err_db {
        assert!(err_db < tol_dw, "{what}: dbias relative error {err_db:.3e} >= {tol_dw:.1e}");
    }
}

/// N > 256 exercises several chunks of the bias reduction, including a partial last one.
const BACKWARD_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 64, 64),
    (1, 37, 13),
    (3, 5, 7),
    (7, 33, 65),
    (51, 13, 100),
    (300, 24, 40),
    (600, 17, 33),
    (64, 768, 3072),
    (17, 3072, 768),
    (4, 768, 50304),
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6d61_746d_756c_0101);
    for &shape in BACKWARD_SHAPES {
        check_backward(&gpu, &blas, &mut rng, shape, true, None);
    }
    for &shape in &[(3usize, 5usize, 7usize), (51, 13, 100), (64, 768, 3072)] {
        check_backward(&gpu, &blas, &mut rng, shape, false, None);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_tf32_is_close() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, true).expect("Blas::new");
    let mut rng = Rng::new(0x6d61_746d_756c_0102);
    for &shape in &[(51usize, 768usize, 2304usize), (3, 37, 13), (64, 768, 3072)] {
        check_backward(&gpu, &blas, &mut rng, shape, true, Some(TF32_TOL));
    }
}

/// Runs each case twice with `T` storage (TF32 as `tf32` says), the bias gradient as `bias_grad`
/// says, and asserts dinp, dweight and dbias repeat bit for bit. dinp comes back widened to f32;
/// bf16 -> f32 widening is exact and injective, so equal f32 bits mean equal bf16 bits. `label`
/// names the op in the messages.
fn assert_backward_deterministic<T: Float>(seed: u64, label: &str, bias_grad: BiasGrad, tf32: bool) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, tf32).expect("Blas::new");
    let mut rng = Rng::new(seed);
    for &(n, c, oc) in &[(64usize, 768usize, 3072usize), (600, 17, 33), (4, 768, 50304)] {
        let case = BackwardCase::new::<T>(&mut rng, n, c, oc);
        let first = case.run::<T>(&gpu, &blas, true, Dinp::Accumulate, bias_grad);
        let second = case.run::<T>(&gpu, &blas, true, Dinp::Accumulate, bias_grad);
        let what = format!("{label} N={n} C={c} OC={oc}");
        assert_same_bits(&format!("{what}: dinp of the second run"), &second.dinp, &first.dinp);
        assert_same_bits(&format!("{what}: dweight of the second run"), &second.dweight, &first.dweight);
        let (dbias1, dbias2) = (first.dbias.as_deref().unwrap(), second.dbias.as_deref().unwrap());
        assert_same_bits(&format!("{what}: dbias of the second run"), dbias2, dbias1);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_is_deterministic() {
    assert_backward_deterministic::<f32>(0x6d61_746d_756c_0103, "matmul_backward", BiasGrad::Reduce, false);
}

/// `matmul_backward::<T>` rejects a dinp, a dweight or (with dbias) a scratch one element short.
/// dout, inp, weight and dinp are `T`; dweight, dbias and the scratch f32 for every `T`.
fn assert_backward_rejects_short_buffers<T: Float>() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let (n, c, oc) = (300usize, 8usize, 8usize);
    let inp = stream.alloc_zeros::<T>(n * c).unwrap();
    let weight = stream.alloc_zeros::<T>(oc * c).unwrap();
    let dout = stream.alloc_zeros::<T>(n * oc).unwrap();
    // Whether `matmul_backward` refuses these gradient buffers (dout, inp and weight being right).
    let rejects = |dinp: &mut CudaSlice<T>,
                   dweight: &mut CudaSlice<f32>,
                   dbias: Option<&mut CudaViewMut<'_, f32>>,
                   scratch: &mut CudaSlice<f32>| {
        let (store, bias_grad) = (Dinp::Accumulate, BiasGrad::Reduce);
        matmul_backward(&gpu, &blas, dinp, dweight, dbias, scratch, &dout, &inp, &weight, n, c, oc, store, bias_grad)
            .is_err()
    };
    let mut dinp = stream.alloc_zeros::<T>(n * c).unwrap();
    let mut dweight = stream.alloc_zeros::<f32>(oc * c).unwrap();
    let mut dbias = stream.alloc_zeros::<f32>(oc).unwrap();
    let mut scratch = stream.alloc_zeros::<f32>(matmul_backward_scratch_len(n, oc)).unwrap();
    let mut short_dinp = stream.alloc_zeros::<T>(n * c - 1).unwrap();
    assert!(rejects(&mut short_dinp, &mut dweight, None, &mut scratch), "a short dinp was accepted");
    let mut short_dweight = stream.alloc_zeros::<f32>(oc * c - 1).unwrap();
    assert!(rejects(&mut dinp, &mut short_dweight, None, &mut scratch), "a short dweight was accepted");
    let mut short_scratch = stream.alloc_zeros::<f32>(matmul_backward_scratch_len(n, oc) - 1).unwrap();
    let mut dbias_view = dbias.slice_mut(..);
    assert!(
        rejects(&mut dinp, &mut dweight, Some(&mut dbias_view), &mut short_scratch),
        "a short scratch (with dbias) was accepted"
    );
    // --bias-grad epilogue needs OC floats of scratch (the BGRADB output), not the reduction's.
    let mut epilogue_scratch = stream.alloc_zeros::<f32>(oc - 1).unwrap();
    let (store, bias_grad) = (Dinp::Accumulate, BiasGrad::Epilogue);
    let (dout, inp, weight, scratch) = (&dout, &inp, &weight, &mut epilogue_scratch);
    let dbias = Some(&mut dbias_view);
    let e = matmul_backward(
        &gpu,
        &blas,
        &mut dinp,
        &mut dweight,
        dbias,
        scratch,
        dout,
        inp,
        weight,
        n,
        c,
        oc,
        store,
        bias_grad,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains(&format!("scratch has {} < {oc}", oc - 1)), "{e:#}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_rejects_short_buffers() {
    assert_backward_rejects_short_buffers::<f32>();
}

// ---- backward, bf16 storage: dout, inp, weight, dinp bf16; dweight, dbias f32 ----
//
// The case's bf16 operands are drawn in f32 and rounded to bf16 (`round::<bf16>` then `widen`),
// and the f64 reference (`cpu::matmul::matmul_backward`, as for fp32, f64 being at least as exact
// as an f32 reference) runs on exactly those values, so input rounding is not part of the
// measured error. dinp, dweight and dbias are prefilled (random, bf16-exact for dinp) to check
// `+=`.
//
// - dinp (bf16 output, fp32 accumulation in `CUBLAS_COMPUTE_32F`, beta = 1): per element
//   |got - ref| <= 2^-8 (|ref| + 1.2 |acc|) + slack(OC) max|ref| ([`check_bf16_close`]), acc =
//   dout @ weight alone. 2^-8 |ref| is the one rounding of the fp32 result to bf16 (bf16 keeps 8
//   significant bits: half an ulp is 2^-9 to 2^-8 of the value, so 2^-8 is the bound). The
//   2^-8 |acc| term allows cuBLASLt to round the product to bf16 before adding C, as it was seen
//   to do before adding an epilogue bias (see [`check_bf16_close`]); the bf16 products are exact
//   in fp32 and split-K partial sums are kept in fp32 (`Blas::make_plan`), so bf16 accumulation
//   (many roundings) would still fail. slack(k) is the fp32 accumulation before the rounding.
// - dweight (f32 output of bf16 inputs: the products are exact in fp32, only the fp32 sum
//   rounds) and dbias (f32 sums of bf16-exact values, the same kernel code as fp32): max abs err
//   / max |ref| below the fp32 bound [`backward_tol`], for dweight raised to the 1e-8 k
//   tensor-core allowance of [`bf16_gemm_slack`] where that is larger (k = N here, at most
//   600: 6e-6, so in practice backward_tol). Both are 2-3 orders of magnitude below a bf16
//   rounding (2^-8), so an fp32 gradient that went through bf16 anywhere would fail.

/// fp32-accumulation error allowed for a bf16-input GEMM with inner dimension `k`, relative to
/// max |ref|: 1e-4 (10x the fp32 tests' 1e-5, for a different summation order and tensor-core
/// accumulation), or 1e-8 k if larger. Tensor cores add each k-block (16 on Hopper) of exact
/// bf16 products to the fp32 accumulator and may truncate instead of rounding that addition
/// (Fasi et al. 2021 measured this on V100 to A100): a bias of up to 2^-23 of the running sum per
/// block, so at most k/16 * 2^-23 ~ 7.5e-9 k of max|ref| if every block's error lines up (with
/// the running sums below max|ref|). 1e-8 k only matters for dinp of the classifier (k = 50304:
/// 5e-4, still far below bf16's 2^-8 = 3.9e-3).
fn bf16_gemm_slack(k: usize) -> f64 {
    1e-4f64.max(1e-8 * k as f64)
}

fn check_backward_bf16(gpu: &Gpu, blas: &Blas, rng: &mut Rng, (n, c, oc): (usize, usize, usize), with_bias: bool) {
    let case = BackwardCase::new::<bf16>(rng, n, c, oc);
    let (want_dinp, want_dweight, want_dbias) = case.reference(with_bias);
    let got = case.run::<bf16>(gpu, blas, with_bias, Dinp::Accumulate, BiasGrad::Reduce);
    let what = format!("matmul_backward bf16 N={n} C={c} OC={oc} bias={with_bias} tf32={}", blas.allow_tf32());
    // The GEMM's part of dinp alone (the reference minus its prefill), for the bound above.
    let acc: Vec<f64> = want_dinp.iter().zip(&case.dinp0).map(|(&w, &p)| w - f64::from(p)).collect();
    let err_dinp = check_bf16_close(&got.dinp, &want_dinp, Some(&acc), bf16_gemm_slack(oc), &format!("{what} dinp"));
    // dweight's GEMM and dbias's reduction sum over N; dbias is a plain fp32 kernel sum.
    let (tol_dw, tol_db) = (backward_tol(n).max(1e-8 * n as f64), backward_tol(n));
    let err_dw = rel_error(&got.dweight, &want_dweight, &format!("{what} dweight"));
    let err_db = got.dbias.as_ref().map(|db| rel_error(db, &want_dbias, &format!("{what} dbias")));
    let db_text = err_db.map_or_else(|| "-".to_string(), |e| format!("{e:.3e}"));
    println!(
        "{what}: dinp max abs err / max |ref| {err_dinp:.3e} = {:.2} * 2^-8; rel err dweight {err_dw:.3e}, dbias {db_text}",
        err_dinp / BF16_U
    );
    assert!(err_dw < tol_dw, "{what}: dweight relative error {err_dw:.3e} >= {tol_dw:.1e}");
    if let Some(err_db) = err_db {
        assert!(err_db < tol_db, "{what}: dbias relative error {err_db:.3e} >= {tol_db:.1e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_matches_cpu_bf16() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6d61_746d_756c_0201);
    // TF32 must make no difference to bf16 GEMMs (they always compute in plain fp32).
    for allow_tf32 in [false, true] {
        let blas = Blas::new(&gpu, allow_tf32).expect("Blas::new");
        for &shape in BACKWARD_SHAPES {
            check_backward_bf16(&gpu, &blas, &mut rng, shape, true);
        }
        for &shape in &[(3usize, 5usize, 7usize), (51, 13, 100), (64, 768, 3072)] {
            check_backward_bf16(&gpu, &blas, &mut rng, shape, false);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_is_deterministic_bf16() {
    assert_backward_deterministic::<bf16>(0x6d61_746d_756c_0203, "matmul_backward bf16", BiasGrad::Reduce, false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_rejects_short_buffers_bf16() {
    assert_backward_rejects_short_buffers::<bf16>();
}

// ---- backward with dinp overwritten (Dinp::Overwrite, beta = 0; used with --kernels vector) ----

/// For each shape, one case in `T` (TF32 off) run twice: dinp prefilled with zeros and accumulated
/// into (the path the backward takes by default, zeroing dinp first), and dinp prefilled with NaN
/// and overwritten. The overwrite must give the same dinp bits (a zero's sign aside, see
/// [`assert_overwrite_bits`]): the GEMM and its plan are the same, only beta differs, and
/// acc + 0 = acc. The NaN prefill is what catches a GEMM that still reads dinp: any read of it,
/// even a 0 * old, would carry the NaN into the result. dweight and dbias accumulate in both runs
/// from the same prefill and must also agree bit for bit.
fn check_backward_overwrite<T: Float>(seed: u64, label: &str) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(seed);
    for &(n, c, oc) in &[(3usize, 5usize, 7usize), (600, 17, 33), (64, 768, 3072), (17, 3072, 768), (4, 768, 50304)] {
        let mut case = BackwardCase::new::<T>(&mut rng, n, c, oc);
        case.dinp0 = vec![0.0; n * c];
        let zeroed = case.run::<T>(&gpu, &blas, true, Dinp::Accumulate, BiasGrad::Reduce);
        case.dinp0 = vec![f32::NAN; n * c];
        let overwritten = case.run::<T>(&gpu, &blas, true, Dinp::Overwrite, BiasGrad::Reduce);
        let what = format!("{label} N={n} C={c} OC={oc}");
        assert_overwrite_bits(
            &format!("{what}: dinp overwritten vs accumulated onto zeros"),
            &overwritten.dinp,
            &zeroed.dinp,
        );
        assert_same_bits(&format!("{what}: dweight"), &overwritten.dweight, &zeroed.dweight);
        let (db_o, db_z) = (overwritten.dbias.as_deref().unwrap(), zeroed.dbias.as_deref().unwrap());
        assert_same_bits(&format!("{what}: dbias"), db_o, db_z);
        println!("{what}: overwritten dinp bit-identical to accumulating onto zeros");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_overwrite_matches_accumulating_onto_zeros() {
    check_backward_overwrite::<f32>(0x6d61_746d_756c_0301, "matmul_backward overwrite");
    check_backward_overwrite::<bf16>(0x6d61_746d_756c_0302, "matmul_backward overwrite bf16");
}

// ---- the GELU in the epilogues (--gelu-fusion forward|both): GELU_AUX_BIAS and DGELU ----
//
// Each fused GEMM against the verified unfused ops it replaces, on the same inputs: the forward
// against `matmul_forward` with the bias (the pre-GELU values) then `gelu_forward`, the backward
// against `matmul_backward` (dinp overwritten) then `gelu_backward` (overwritten). Outputs start
// as NaN (with a NaN tail past their end), so an element the fused GEMM fails to write, or one it
// writes past the end, shows; the DGELU destination's NaN also catches a GEMM that reads it.

/// Per element, |fused - unfused| <= BF16_U * (1.01 (|fused| + |unfused|) + 1.2 |mid|) + atol,
/// `mid` being the value the unfused path rounds to bf16 in between (the pre-GELU value, or the
/// GELU output's gradient) and atol the fp32 arithmetic's part; returns the worst error over max
/// |unfused|. Why this form: the fused path rounds once, at the end; the unfused one rounds `mid`
/// to bf16 (an error of at most 2^-8 |mid|, carried through the GELU or its derivative, whose
/// slopes are at most 1.13 in magnitude, hence 1.2) and then its own output. Each output rounding
/// is at most 2^-8 of the value rounded, which is within 2^-8 of the stored result (hence 1.01).
/// So in bf16 the two differ by up to about one bf16 rounding of the output, never more.
fn assert_fused_close(what: &str, fused: &[f32], unfused: &[f32], mid: &[f32], atol: f64) -> f64 {
    assert_eq!(fused.len(), unfused.len(), "{what}: length");
    let scale = max_ref(&to_f64(unfused));
    let mut worst = 0.0f64;
    for (i, ((&f, &u), &m)) in fused.iter().zip(unfused).zip(mid).enumerate() {
        assert!(f.is_finite() && u.is_finite(), "{what}: element {i}: fused {f}, unfused {u} (unwritten?)");
        let err = (f64::from(f) - f64::from(u)).abs();
        let bound = BF16_U * (1.01 * (f64::from(f).abs() + f64::from(u).abs()) + 1.2 * f64::from(m).abs()) + atol;
        assert!(err <= bound, "{what}: element {i}: fused {f} vs unfused {u} (between: {m}): {err:.3e} > {bound:.3e}");
        worst = worst.max(err);
    }
    worst / scale.max(f64::MIN_POSITIVE)
}

/// fp32 (TF32 off): the largest |fused - unfused| over max |unfused|, asserted <= `tol`.
fn assert_fused_close_f32(what: &str, fused: &[f32], unfused: &[f32], tol: f64) -> f64 {
    assert_eq!(fused.len(), unfused.len(), "{what}: length");
    for (i, (&f, &u)) in fused.iter().zip(unfused).enumerate() {
        assert!(f.is_finite() && u.is_finite(), "{what}: element {i}: fused {f}, unfused {u} (unwritten?)");
    }
    let scale = max_ref(&to_f64(unfused));
    let err = super::max_abs_diff_f64(fused, unfused) / scale.max(f64::MIN_POSITIVE);
    assert!(err <= tol, "{what}: max |fused - unfused| / max |unfused| = {err:.3e} > {tol:.0e}");
    err
}

/// fp32 bound of the fused forward against the unfused one, relative to max |unfused|: 1e-6.
/// Both apply the tanh GELU to the same fp32 value (the same GEMM, whose pre-GELU output is
/// checked bit for bit), so only the two GELU evaluations differ: each is a handful of fp32
/// operations around an accurate tanhf (a few 2^-24 of the value), at most ~1e-7 of the output
/// where the GELU is steep and far less where it saturates. An epilogue evaluating tanh with the
/// hardware approximation (about 2^-11 relative, which `matmul_forward_matches_cpu_fp32`'s
/// GELU_TOL allows against f64) would show as some 1e-5 here and fail: then the fused GELU is not
/// the verified one to rounding, which is what this is here to find out.
const FUSED_F32_TOL: f64 = 1e-6;

/// (N, C, OC) for the fused forward: OC, the aux leading dimension, a multiple of 8 as cuBLASLt
/// requires; the last two are gpt2-124m's fc matmul (C = 768, OC = 4C) at a few rows.
const GELU_AUX_SHAPES: &[(usize, usize, usize)] =
    &[(1, 64, 64), (3, 5, 8), (7, 33, 72), (300, 24, 40), (51, 64, 256), (17, 768, 3072), (64, 768, 3072)];

/// `matmul_forward_gelu_aux` in `T` (TF32 off) against `matmul_forward` (bias, no GELU) followed by
/// `gelu_forward` on the same inputs: the pre-GELU values bit for bit (the same GEMM and bias:
/// cuBLASLt was asked for the same product, only the epilogue's extra output differs; should a
/// GPU show the heuristic picking another kernel, hence another summation order, for the aux
/// epilogue, this is where it shows), the GELU output within one bf16 rounding (bf16: the fused
/// GELU is applied to the fp32 value, the unfused one to the bf16-rounded pre-GELU value; see
/// [`assert_fused_close`]) or [`FUSED_F32_TOL`] (f32). Inputs uniform in [-1, 1): with C up to
/// 768 the pre-GELU values spread over about +-30, through the GELU's curved part and both tails.
fn check_gelu_aux<T: Float>(seed: u64) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(seed);
    let stream = gpu.stream();
    let label = std::any::type_name::<T>();
    for &(n, c, oc) in GELU_AUX_SHAPES {
        let d_inp = stream.clone_htod(&round::<T>(&rng.uniform_vec(n * c))).unwrap();
        let d_weight = stream.clone_htod(&round::<T>(&rng.uniform_vec(oc * c))).unwrap();
        let d_bias = stream.clone_htod(&round::<T>(&rng.uniform_vec(oc))).unwrap();
        let bias = d_bias.as_view();
        let len = n * oc;
        let (mut pre_ref, mut out_ref) = (poisoned::<T>(&gpu, len), poisoned::<T>(&gpu, len));
        matmul_forward(&gpu, &blas, &mut pre_ref, &d_inp, &d_weight, Some(&bias), n, c, oc, false).unwrap();
        gelu_forward(&gpu, &mut out_ref, &pre_ref, len).unwrap();
        let (mut pre, mut out) = (poisoned::<T>(&gpu, len), poisoned::<T>(&gpu, len));
        matmul_forward_gelu_aux(&gpu, &blas, &mut out, &mut pre, &d_inp, &d_weight, &bias, n, c, oc).unwrap();
        gpu.synchronize().unwrap();
        let what = format!("matmul_forward_gelu_aux<{label}> N={n} C={c} OC={oc}");
        let (pre_ref, out_ref) = (download(&gpu, "pre (Bias)", &pre_ref, len), download(&gpu, "gelu", &out_ref, len));
        let (pre, out) = (download(&gpu, &format!("{what} pre"), &pre, len), download(&gpu, &what, &out, len));
        assert_same_bits(&format!("{what}: pre-GELU aux vs the Bias epilogue's output"), &pre, &pre_ref);
        let err = if T::BYTES == 2 {
            assert_fused_close(&what, &out, &out_ref, &pre_ref, FUSED_F32_TOL * max_ref(&to_f64(&out_ref)))
        } else {
            assert_fused_close_f32(&what, &out, &out_ref, FUSED_F32_TOL)
        };
        println!("{what}: pre bit-identical; max |fused - unfused| / max |unfused| = {err:.3e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_gelu_aux_matches_the_unfused_ops() {
    check_gelu_aux::<f32>(0x6d61_746d_756c_0401);
    check_gelu_aux::<bf16>(0x6d61_746d_756c_0402);
}

/// (N, C, OC) for the DGELU backward, C (dinp's and the pre-GELU values' leading dimension) a
/// multiple of 8; N > 256 takes several chunks of the bias reduction; the last is gpt2-124m's
/// fcproj (C = 4 x 768 in, OC = 768 out).
const DGELU_SHAPES: &[(usize, usize, usize)] =
    &[(1, 8, 1), (3, 8, 5), (300, 24, 40), (600, 40, 33), (17, 256, 64), (64, 3072, 768)];

/// `matmul_backward_dgelu` in `T` (TF32 off) against `matmul_backward` (dinp overwritten, into a
/// scratch) followed by `gelu_backward` (overwritten) on the same random non-zero inputs: the
/// pre-GELU values uniform in [-3, 3) (the GELU's curved part and its tails), the rest in
/// [-1, 1); dweight and dbias accumulate from the same random prefill in both. Destinations start
/// as NaN: the fused dinp must be written everywhere and never read (DGELU is beta = 0).
/// - dweight and dbias: the same bits (the same GEMM and reduction).
/// - dinp, f32: `fused = acc * gelu'(pre)` against `unfused = gelu'(pre) * acc`, acc the fp32 GEMM
///   result. With the same kernel for both epilogues, acc has the same bits and only the two
///   derivative evaluations differ (~1e-7 of the value, as for the forward); the bound also
///   allows the heuristic a different kernel (another summation order over OC: up to
///   [`backward_tol`] of max |acc|, times the derivative's 1.13 at most), and is still below
///   what an approximate tanh in the derivative (~2^-11 of |acc|) would give.
/// - dinp, bf16: one rounding (fused) against two (acc rounded to bf16 in between):
///   [`assert_fused_close`] with `mid` = the unfused dinp of the GELU's output, plus the
///   different-kernel allowance in bf16 terms ([`bf16_gemm_slack`]).
///
/// Each fused run is repeated and must repeat bit for bit.
fn check_dgelu<T: Float>(seed: u64) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(seed);
    let stream = gpu.stream();
    let label = std::any::type_name::<T>();
    for &(n, c, oc) in DGELU_SHAPES {
        let case = BackwardCase::new::<T>(&mut rng, n, c, oc);
        let pre: Vec<f32> = rng.uniform_vec(n * c).iter().map(|x| 3.0 * x).collect();
        let d_pre = stream.clone_htod(&round::<T>(&pre)).unwrap();
        let (d_dout, d_inp, d_weight) = (
            stream.clone_htod(&round::<T>(&case.dout)).unwrap(),
            stream.clone_htod(&round::<T>(&case.inp)).unwrap(),
            stream.clone_htod(&round::<T>(&case.weight)).unwrap(),
        );
        // dinp (poisoned), dweight and dbias (the prefill), the bias scratch (NaN), for one run.
        let fresh = || {
            (
                poisoned::<T>(&gpu, n * c),
                stream.clone_htod(&case.dweight0).unwrap(),
                stream.clone_htod(&case.dbias0).unwrap(),
                nan_buffer::<f32>(&gpu, matmul_backward_scratch_len(n, oc).max(1)),
            )
        };
        let (mut dgelu_out, mut dw_ref, mut db_ref, mut scratch) = fresh();
        {
            let mut db = db_ref.slice_mut(..);
            let (dinp, dw) = (&mut dgelu_out, &mut dw_ref);
            let (dout, inp, w) = (&d_dout, &d_inp, &d_weight);
            matmul_backward(
                &gpu,
                &blas,
                dinp,
                dw,
                Some(&mut db),
                &mut scratch,
                dout,
                inp,
                w,
                n,
                c,
                oc,
                Dinp::Overwrite,
                BiasGrad::Reduce,
            )
            .unwrap();
        }
        let mut dpre_ref = poisoned::<T>(&gpu, n * c);
        gelu_backward(&gpu, &mut dpre_ref, &d_pre, &dgelu_out, n * c, Dinp::Overwrite).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (mut dpre, mut dw, mut db, mut scratch) = fresh();
            {
                let mut dbv = db.slice_mut(..);
                let (dout, inp, w, pre) = (&d_dout, &d_inp, &d_weight, &d_pre);
                let dbias = Some(&mut dbv);
                matmul_backward_dgelu(
                    &gpu,
                    &blas,
                    &mut dpre,
                    &mut dw,
                    dbias,
                    &mut scratch,
                    dout,
                    inp,
                    w,
                    pre,
                    n,
                    c,
                    oc,
                    BiasGrad::Reduce,
                )
                .unwrap();
            }
            gpu.synchronize().unwrap();
            let what = format!("matmul_backward_dgelu<{label}> N={n} C={c} OC={oc}");
            let dpre = download(&gpu, &what, &dpre, n * c);
            runs.push((dpre, stream.clone_dtoh(&dw).unwrap(), stream.clone_dtoh(&db).unwrap()));
        }
        let what = format!("matmul_backward_dgelu<{label}> N={n} C={c} OC={oc}");
        let (dpre, dw, db) = &runs[0];
        assert_same_bits(&format!("{what}: dinp of a second run"), &runs[1].0, dpre);
        let (dgelu_out, dpre_ref) =
            (download(&gpu, "dinp", &dgelu_out, n * c), download(&gpu, "gelu", &dpre_ref, n * c));
        assert_same_bits(&format!("{what}: dweight vs matmul_backward's"), dw, &stream.clone_dtoh(&dw_ref).unwrap());
        assert_same_bits(&format!("{what}: dbias vs matmul_backward's"), db, &stream.clone_dtoh(&db_ref).unwrap());
        let acc_scale = max_ref(&to_f64(&dgelu_out));
        let err = if T::BYTES == 2 {
            let atol = 1.2 * bf16_gemm_slack(oc) * acc_scale;
            assert_fused_close(&format!("{what} dinp"), dpre, &dpre_ref, &dgelu_out, atol)
        } else {
            let scale = max_ref(&to_f64(&dpre_ref));
            let tol = (1.2 * backward_tol(oc) * acc_scale) / scale + FUSED_F32_TOL;
            assert_fused_close_f32(&format!("{what} dinp"), dpre, &dpre_ref, tol)
        };
        println!("{what}: dweight, dbias bit-identical; dinp max |fused - unfused| / max |unfused| = {err:.3e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_dgelu_matches_the_unfused_ops() {
    check_dgelu::<f32>(0x6d61_746d_756c_0501);
    check_dgelu::<bf16>(0x6d61_746d_756c_0502);
}

/// The aux epilogues refuse a leading dimension cuBLASLt does not take (not a multiple of 8),
/// naming it, before queuing anything; the unfused ops take the same shapes.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_epilogues_refuse_a_leading_dimension_not_a_multiple_of_8() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let (n, c, oc) = (4usize, 8usize, 12usize);
    let (inp, weight, bias) = (
        stream.alloc_zeros::<f32>(n * c).unwrap(),
        stream.alloc_zeros::<f32>(oc * c).unwrap(),
        stream.alloc_zeros::<f32>(oc).unwrap(),
    );
    let (mut out, mut pre) = (stream.alloc_zeros::<f32>(n * oc).unwrap(), stream.alloc_zeros::<f32>(n * oc).unwrap());
    let e =
        matmul_forward_gelu_aux(&gpu, &blas, &mut out, &mut pre, &inp, &weight, &bias.as_view(), n, c, oc).unwrap_err();
    assert!(format!("{e:#}").contains("(ldd = 12) to be a multiple of 8"), "{e:#}");
    matmul_forward(&gpu, &blas, &mut out, &inp, &weight, Some(&bias.as_view()), n, c, oc, true).unwrap();
    // The backward's dinp of width 12 (the GELU's): dout (N, OC = 8), weight (8, 12).
    let (c, oc) = (12usize, 8usize);
    let (dout, inp, weight, pre) = (
        stream.alloc_zeros::<f32>(n * oc).unwrap(),
        stream.alloc_zeros::<f32>(n * c).unwrap(),
        stream.alloc_zeros::<f32>(oc * c).unwrap(),
        stream.alloc_zeros::<f32>(n * c).unwrap(),
    );
    let (mut dinp, mut dw) = (stream.alloc_zeros::<f32>(n * c).unwrap(), stream.alloc_zeros::<f32>(oc * c).unwrap());
    let mut scratch = stream.alloc_zeros::<f32>(1).unwrap();
    let e = matmul_backward_dgelu(
        &gpu,
        &blas,
        &mut dinp,
        &mut dw,
        None,
        &mut scratch,
        &dout,
        &inp,
        &weight,
        &pre,
        n,
        c,
        oc,
        BiasGrad::Reduce,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("(ldd = 12) to be a multiple of 8"), "{e:#}");
    gpu.synchronize().unwrap();
}

// ---- the bias gradient from the dweight GEMM's BGRADB epilogue (--bias-grad epilogue) ----
//
// Each case runs both ways from the same random, non-zero prefill of dinp, dweight and dbias:
// `BiasGrad::Reduce` (the verified reduction) and `BiasGrad::Epilogue` (BGRADB writes dout's
// column sums to the scratch, `matmul_bias_grad_add` adds them to dbias). The prefill makes the
// epilogue path show that it accumulates onto dbias rather than overwriting it; the scratch starts
// as NaN, so a sum BGRADB fails to write reaches dbias as NaN, with NaNs past its OC floats that
// must stay (`BackwardCase::run`, `download`).
//
// - dinp: the same bits. Its GEMM is the same call either way (no epilogue, the same plan).
// - dweight: its GEMM differs only in the epilogue, but the epilogue is part of the plan's key
//   and of the heuristic's query, so cuBLASLt may pick another kernel (one that can reduce B in
//   its epilogue: another tile shape or split-K, hence another summation order over N) and the
//   bits may differ. So it is held to the f64 reference with the tolerance the verified path
//   meets ([`dweight_tol`]), which puts the two within twice that of each other; whether they
//   came out identical is printed.
// - dbias: a sum of N + 1 f32 terms (the prefill and the N values of dout in its column), in
//   cuBLAS's order instead of the reduction's. Any summation tree of those N additions, each
//   off by at most one ulp of its result (2u, u = 2^-24: round-to-nearest gives u, and 2u also
//   covers an accumulator that truncates, as tensor cores may), is off by at most
//   gamma_N * (|dbias0[o]| + sum_n |dout[n,o]|), gamma_N = 2uN / (1 - 2uN) (Higham, Accuracy and
//   Stability of Numerical Algorithms, 2nd ed., §4.2, with 2u for u). That is asserted per
//   element against the f64 reference (plus the reference's own, 2^-29 times smaller, bound),
//   and twice it against the reduction's dbias. The worst case grows with N and is loose (a
//   missing, doubled or misplaced term, or a dbias overwritten instead of added to, exceeds it;
//   a bf16-rounded sum at large N need not), so the typical error is held as tightly as the
//   reduction's is: max |got - ref| < backward_tol(N) max |ref|, which a sum of TF32- or
//   bf16-rounded terms or a bf16 result would exceed. Under TF32 too: the verified bias gradient
//   is exact fp32 whatever TF32 says, and fp32 training runs with TF32, so a BGRADB that reduced
//   the TF32-rounded B it feeds the tensor cores fails here, and `epilogue` must then not be kept
//   for fp32.

/// (N, C, OC) for BGRADB: N = 1 (one row), N > 256 (several chunks of the reduction it is held
/// to, and a partial last one), OC not a multiple of 4, 8 or 16, and gpt2-124m's four matmuls
/// with a bias at 64 rows: qkv (768 -> 2304), attproj (768 -> 768), fc (768 -> 3072) and fcproj
/// (3072 -> 768).
const BGRAD_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 64, 64),
    (3, 5, 7),
    (7, 33, 65),
    (51, 13, 100),
    (300, 24, 40),
    (600, 17, 33),
    (1024, 64, 96),
    (64, 768, 2304),
    (64, 768, 768),
    (64, 768, 3072),
    (64, 3072, 768),
];

/// The bound on the relative error (against the sum of the magnitudes) of any summation of
/// `additions` + 1 terms with each addition off by at most `ulp` of its result: gamma = k ulp /
/// (1 - k ulp).
fn sum_gamma(additions: usize, ulp: f64) -> f64 {
    let k_ulp = additions as f64 * ulp;
    assert!(k_ulp < 0.5, "{additions} additions: the bound does not hold");
    k_ulp / (1.0 - k_ulp)
}

/// The dweight tolerance (max |got - ref| / max |ref|) the verified path meets: TF32's for an
/// fp32 GEMM with TF32 on, else [`backward_tol`] over k = N, for bf16 inputs raised to the
/// tensor-core allowance 1e-8 N (see `check_backward_bf16`).
fn dweight_tol<T: Float>(n: usize, tf32: bool) -> f64 {
    match (T::BYTES, tf32) {
        (4, true) => TF32_TOL,
        (4, false) => backward_tol(n),
        _ => backward_tol(n).max(1e-8 * n as f64),
    }
}

/// dbias from the epilogue path (`got`) against the f64 reference `want` and the reduction's
/// `reduced`, per element within the summation bound of the section comment and as a whole within
/// `backward_tol(N)`; returns the worst element's error as a fraction of its bound.
fn assert_bias_grad_close(what: &str, case: &BackwardCase, got: &[f32], reduced: &[f32], want: &[f64]) -> f64 {
    let (n, oc) = (case.n, case.oc);
    let gamma = sum_gamma(n, 2.0 * f64::powi(2.0, -24)) + sum_gamma(n, 2.0 * f64::powi(2.0, -53));
    let mut worst = 0.0f64;
    for o in 0..oc {
        let magnitude =
            f64::from(case.dbias0[o]).abs() + (0..n).map(|r| f64::from(case.dout[r * oc + o]).abs()).sum::<f64>();
        let bound = gamma * magnitude;
        let (g, w, r) = (f64::from(got[o]), want[o], f64::from(reduced[o]));
        assert!(g.is_finite(), "{what}: dbias[{o}] = {g} (BGRADB did not write its sum?)");
        let err = (g - w).abs();
        assert!(err <= bound, "{what}: dbias[{o}] = {g} vs exact {w}: {err:.3e} > gamma_N sum|terms| = {bound:.3e}");
        let apart = (g - r).abs();
        assert!(
            apart <= 2.0 * bound,
            "{what}: dbias[{o}] = {g} vs the reduction's {r}: {apart:.3e} > {:.3e}",
            2.0 * bound
        );
        worst = worst.max(err / bound);
    }
    let err = rel_error(got, want, &format!("{what} dbias"));
    let tol = backward_tol(n);
    assert!(err < tol, "{what}: dbias max |got - ref| / max |ref| = {err:.3e} >= {tol:.1e}");
    worst
}

/// One case in `T` both ways (see the section comment): dinp the same bits, dweight within
/// [`dweight_tol`] of the reference, dbias within the summation bounds.
fn check_bgradb<T: Float>(gpu: &Gpu, blas: &Blas, rng: &mut Rng, (n, c, oc): (usize, usize, usize)) {
    let tf32 = blas.allow_tf32();
    let label = std::any::type_name::<T>();
    let what = format!("matmul_backward<{label}> --bias-grad epilogue N={n} C={c} OC={oc} tf32={tf32}");
    let case = BackwardCase::new::<T>(rng, n, c, oc);
    let (_, want_dweight, want_dbias) = case.reference(true);
    let reduced = case.run::<T>(gpu, blas, true, Dinp::Accumulate, BiasGrad::Reduce);
    let got = case.run::<T>(gpu, blas, true, Dinp::Accumulate, BiasGrad::Epilogue);
    assert_same_bits(&format!("{what}: dinp vs the reduce path's"), &got.dinp, &reduced.dinp);
    let err_dw = rel_error(&got.dweight, &want_dweight, &format!("{what} dweight"));
    let tol_dw = dweight_tol::<T>(n, tf32);
    assert!(err_dw < tol_dw, "{what}: dweight relative error {err_dw:.3e} >= {tol_dw:.1e}");
    let same_dw = got.dweight.iter().zip(&reduced.dweight).all(|(a, b)| a.to_bits() == b.to_bits());
    let (db, db_reduced) = (got.dbias.as_deref().unwrap(), reduced.dbias.as_deref().unwrap());
    let worst = assert_bias_grad_close(&what, &case, db, db_reduced, &want_dbias);
    let same_db = db.iter().zip(db_reduced).all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "{what}: dinp bit-identical; dweight rel err {err_dw:.3e} ({} the reduce path's); dbias within {worst:.3} of \
         its bound ({} the reduction's)",
        if same_dw { "bit-identical to" } else { "other bits than" },
        if same_db { "bit-identical to" } else { "other bits than" }
    );
}

/// `--bias-grad epilogue`'s backward against the verified reduction (see the section comment), in
/// f32 with TF32 off and on (fp32 training runs with it) and in bf16.
#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_bgradb_matches_the_reduction() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6d61_746d_756c_0601);
    for tf32 in [false, true] {
        let blas = Blas::new(&gpu, tf32).expect("Blas::new");
        for &shape in BGRAD_SHAPES {
            check_bgradb::<f32>(&gpu, &blas, &mut rng, shape);
            check_bgradb::<bf16>(&gpu, &blas, &mut rng, shape);
        }
    }
}

/// `--bias-grad epilogue` repeats bit for bit: dinp, dweight and dbias of two identical runs, in
/// f32 with TF32 off and on and in bf16. Issue 15 §3 requires whatever is kept to be
/// deterministic, as the reduction is (`matmul_backward_is_deterministic`): if this fails on a
/// GPU, `--bias-grad epilogue` must not be kept on that architecture.
#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_bgradb_is_deterministic() {
    let label = "matmul_backward --bias-grad epilogue";
    assert_backward_deterministic::<f32>(0x6d61_746d_756c_0602, label, BiasGrad::Epilogue, false);
    assert_backward_deterministic::<f32>(0x6d61_746d_756c_0603, &format!("{label} tf32"), BiasGrad::Epilogue, true);
    assert_backward_deterministic::<bf16>(0x6d61_746d_756c_0604, &format!("{label} bf16"), BiasGrad::Epilogue, false);
}

/// `--gelu-fusion both` with `--bias-grad epilogue`, the fcproj backward's two epilogues at once
/// (DGELU on the dinp GEMM, BGRADB on the dweight GEMM), against the same call with the
/// reduction, in `T` (TF32 off), from the same prefill and pre-GELU values (uniform in [-3, 3)):
/// the DGELU output the same bits (the same dinp GEMM), dweight and dbias as in
/// [`check_bgradb`]. The two are independent: neither GEMM's epilogue touches the other's
/// buffers.
fn check_dgelu_bgradb<T: Float>(seed: u64) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(seed);
    let stream = gpu.stream();
    for &(n, c, oc) in DGELU_SHAPES {
        let case = BackwardCase::new::<T>(&mut rng, n, c, oc);
        let pre: Vec<f32> = rng.uniform_vec(n * c).iter().map(|x| 3.0 * x).collect();
        let up = |v: &[f32]| stream.clone_htod(&round::<T>(v)).unwrap();
        let (d_pre, d_dout, d_inp, d_weight) = (up(&pre), up(&case.dout), up(&case.inp), up(&case.weight));
        let run = |bias_grad: BiasGrad| {
            let mut dpre = poisoned::<T>(&gpu, n * c);
            let mut dw = stream.clone_htod(&case.dweight0).unwrap();
            let mut db = stream.clone_htod(&case.dbias0).unwrap();
            let mut scratch = nan_buffer::<f32>(&gpu, bias_grad_scratch_len(n, oc, bias_grad).max(1));
            {
                let mut dbv = db.slice_mut(..);
                let (dout, inp, w, pre) = (&d_dout, &d_inp, &d_weight, &d_pre);
                let (dinp, dbias) = (&mut dpre, Some(&mut dbv));
                matmul_backward_dgelu(
                    &gpu,
                    &blas,
                    dinp,
                    &mut dw,
                    dbias,
                    &mut scratch,
                    dout,
                    inp,
                    w,
                    pre,
                    n,
                    c,
                    oc,
                    bias_grad,
                )
                .unwrap();
            }
            gpu.synchronize().unwrap();
            let dpre = download(&gpu, &format!("dinp ({bias_grad})"), &dpre, n * c);
            (dpre, stream.clone_dtoh(&dw).unwrap(), stream.clone_dtoh(&db).unwrap())
        };
        let ((dpre_r, dw_r, db_r), (dpre, dw, db)) = (run(BiasGrad::Reduce), run(BiasGrad::Epilogue));
        let label = std::any::type_name::<T>();
        let what = format!("matmul_backward_dgelu<{label}> --bias-grad epilogue N={n} C={c} OC={oc}");
        assert_same_bits(&format!("{what}: dinp (DGELU) vs the reduce path's"), &dpre, &dpre_r);
        let (_, want_dw, want_db) = case.reference(true);
        let err_dw = rel_error(&dw, &want_dw, &format!("{what} dweight"));
        let tol_dw = dweight_tol::<T>(n, false);
        assert!(err_dw < tol_dw, "{what}: dweight relative error {err_dw:.3e} >= {tol_dw:.1e}");
        let err_dw_r = rel_error(&dw_r, &want_dw, &format!("{what} dweight (reduce)"));
        assert!(err_dw_r < tol_dw, "{what}: the reduce path's dweight relative error {err_dw_r:.3e} >= {tol_dw:.1e}");
        let worst = assert_bias_grad_close(&what, &case, &db, &db_r, &want_db);
        println!("{what}: dinp bit-identical; dweight rel err {err_dw:.3e}; dbias within {worst:.3} of its bound");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_dgelu_with_bgradb_matches_the_reduction() {
    check_dgelu_bgradb::<f32>(0x6d61_746d_756c_0605);
    check_dgelu_bgradb::<bf16>(0x6d61_746d_756c_0606);
}
