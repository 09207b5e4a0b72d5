//! CUDA LayerNorm forward (plain and with the fused residual add) and backward vs.
//! `cpu::layernorm` run in f64, in f32 and in bf16 (the reference on the bf16-rounded values).

use super::common::{assert_same_bits, max_abs};
use super::{
    assert_close, assert_close_floor, assert_elementwise, download, gpu_or_skip, max_ref, poisoned, round, to_f64,
    widen, Uniform, BF16_U, TAIL,
};
use genesis::cpu;
use genesis::gpu::device::Gpu;
use genesis::gpu::layernorm::{
    layernorm_backward, layernorm_backward_scratch_len, layernorm_forward, residual_layernorm_forward,
};
use genesis::gpu::{Float, Kernels};
use genesis::rng::Rng;
use half::bf16;

/// (N, C): single row, C not a multiple of 32, GPT-2 widths, C = 1, N not a multiple of 8.
const SHAPES: &[(usize, usize)] = &[(1, 768), (7, 37), (64, 768), (33, 1024), (5, 1600), (3, 1), (130, 96)];
const TOL: f64 = 1e-5;

/// Rows with a non-zero mean (|offset| in [1, 2]) and varied spread, weight around 1, small bias.
fn inputs(rng: &mut Rng, n: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut inp = Vec::with_capacity(n * c);
    for _ in 0..n {
        let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        let offset = sign * (1.5 + 0.5 * rng.uniform());
        let spread = 1.0 + 0.9 * rng.uniform();
        inp.extend((0..c).map(|_| offset + spread * rng.uniform()));
    }
    let weight = (0..c).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
    let bias = (0..c).map(|_| 0.3 * rng.uniform()).collect();
    (inp, weight, bias)
}

/// The CPU reference in f64: (out, mean, rstd).
fn reference(inp: &[f32], weight: &[f32], bias: &[f32], n: usize, c: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    cpu::layernorm::layernorm_forward(
        &mut out,
        &mut mean,
        &mut rstd,
        &to_f64(inp),
        &to_f64(weight),
        &to_f64(bias),
        n,
        c,
    );
    (out, mean, rstd)
}

/// Every [`SHAPES`] case of LayerNorm forward in storage type `T`, drawn from `seed`: the inputs
/// ([`inputs`]) rounded through `T` (the identity for f32) and the f64 reference on exactly those
/// values. With `fused`, a second addend in U(-1, 1) (also through `T`) goes through the fused
/// `residual_layernorm_forward`: its residual must equal the CPU's f32 sum rounded through `T` (one
/// f32 add, one round-to-nearest-even: exact), and LayerNorm is of that residual. `out` (in `T`) is
/// checked by `check_out` (which returns its part of the printed line); mean and rstd are f32
/// outputs of f32 arithmetic on the same values for every `T`, so they get TOL. Every output is
/// [`poisoned`] and its tail checked. `label` starts the printed line.
fn check_forward<T: Float>(seed: u64, label: &str, fused: bool, check_out: impl Fn(&str, &[f32], &[f64]) -> String) {
    check_forward_with::<T>(Kernels::Scalar, seed, label, fused, check_out)
}

/// [`check_forward`] with the GPU set to `kernels`; with [`Kernels::Vector`] only the [`SHAPES`]
/// whose C is a whole number of 128-bit packs (the `_vec` kernels' requirement).
fn check_forward_with<T: Float>(
    kernels: Kernels,
    seed: u64,
    label: &str,
    fused: bool,
    check_out: impl Fn(&str, &[f32], &[f64]) -> String,
) {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    gpu.set_kernels(kernels);
    let mut rng = Rng::new(seed);
    let stream = gpu.stream();
    let in_t = |v: &[f32]| widen(&round::<T>(v));
    let upload = |v: &[f32]| stream.clone_htod(&round::<T>(v)).unwrap();
    for &(n, c) in SHAPES {
        if kernels == Kernels::Vector && !c.is_multiple_of(T::VEC) {
            continue;
        }
        let (inp, weight, bias) = inputs(&mut rng, n, c);
        let addend = fused.then(|| rng.uniform_vec(n * c));
        let (inp, weight, bias) = (in_t(&inp), in_t(&weight), in_t(&bias));
        let (d_weight, d_bias) = (upload(&weight), upload(&bias));
        let mut d_out = poisoned::<T>(&gpu, n * c);
        let mut d_mean = poisoned::<f32>(&gpu, n);
        let mut d_rstd = poisoned::<f32>(&gpu, n);
        let shape = format!("N={n} C={c}");
        // What LayerNorm normalises: the input, or the fused residual (checked exact).
        let normalised = match addend {
            None => {
                layernorm_forward(&gpu, &mut d_out, &mut d_mean, &mut d_rstd, &upload(&inp), &d_weight, &d_bias, n, c)
                    .unwrap();
                gpu.synchronize().unwrap();
                inp
            }
            Some(addend) => {
                let addend = in_t(&addend);
                let mut sum = vec![0.0f32; n * c];
                cpu::residual::residual_forward(&mut sum, &inp, &addend);
                let residual = in_t(&sum);
                let mut d_residual = poisoned::<T>(&gpu, n * c);
                residual_layernorm_forward(
                    &gpu,
                    &mut d_residual,
                    &mut d_out,
                    &mut d_mean,
                    &mut d_rstd,
                    &upload(&inp),
                    &upload(&addend),
                    &d_weight,
                    &d_bias,
                    n,
                    c,
                )
                .unwrap();
                gpu.synchronize().unwrap();
                // Widened to f32, exactly and injectively: equal f32 bits are equal bf16 bits.
                let got_residual = download(&gpu, "residual", &d_residual, n * c);
                assert_same_bits(&format!("residual ({shape})"), &got_residual, &residual);
                residual
            }
        };
        let (want_out, want_mean, want_rstd) = reference(&normalised, &weight, &bias, n, c);
        let out_text = check_out(&format!("out ({shape})"), &download(&gpu, "out", &d_out, n * c), &want_out);
        let e_mean = assert_close(&format!("mean ({shape})"), &download(&gpu, "mean", &d_mean, n), &want_mean, TOL);
        let e_rstd = assert_close(&format!("rstd ({shape})"), &download(&gpu, "rstd", &d_rstd, n), &want_rstd, TOL);
        let residual_text = if fused { "residual exact, " } else { "" };
        println!("{label} {shape}: {residual_text}{out_text}, rel err mean {e_mean:.1e}, rstd {e_rstd:.1e}");
    }
}

/// The f32 check of `out`: max abs error within TOL of max |ref|.
fn out_fp32(what: &str, got: &[f32], want: &[f64]) -> String {
    format!("rel err out {:.1e}", assert_close(what, got, want, TOL))
}

/// Per-element check of a bf16 output (already widened to f32) against the f64 reference computed
/// on the same bf16 inputs. The kernel computes y32 in f32 and stores bf16(y32), rounded to
/// nearest: bf16 has an 8-bit significand (7 stored bits), so that moves y32 by at most half an
/// ulp <= 2^-8 |y32|. With the f32 error |y32 - ref| <= d, the stored value is within
/// 2^-8 |ref| + (1 + 2^-8) d of ref. d is what the f32 test bounds, TOL * max |ref| (the output's
/// f32 error is absolute, from (x - mean) * rstd * weight + bias with terms up to max |ref|);
/// doubled here for margin. Returns the worst error as a fraction of its tolerance.
fn assert_bf16_close(what: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_elementwise(what, got, want, BF16_U, 2.0 * TOL * max_ref(want))
}

/// The bf16 check of `out`, [`assert_bf16_close`].
fn out_bf16(what: &str, got: &[f32], want: &[f64]) -> String {
    format!("out worst {:.2} of tolerance", assert_bf16_close(what, got, want))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_matches_cpu() {
    check_forward::<f32>(0x6c61_7965_726e_6f72, "layernorm_forward", false, out_fp32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_matches_cpu() {
    check_forward::<f32>(0x7265_7369_6475_616c, "residual_layernorm_forward", true, out_fp32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_rejects_short_buffers() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (n, c) = (4, 48);
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&vec![1.0f32; n * c - 1]).unwrap();
    let d_param = stream.clone_htod(&vec![1.0f32; c]).unwrap();
    let (mut d_out, mut d_mean, mut d_rstd) = (poisoned(&gpu, n * c), poisoned(&gpu, n), poisoned(&gpu, n));
    let err = layernorm_forward(&gpu, &mut d_out, &mut d_mean, &mut d_rstd, &d_inp, &d_param, &d_param, n, c)
        .expect_err("a short inp must be rejected");
    assert!(err.to_string().contains("inp"), "{err}");
}

/// bf16 activations and parameters: inputs rounded to bf16, the reference in f64 on the rounded
/// values. `out` per element as [`assert_bf16_close`]; mean and rstd are f32 outputs of f32
/// arithmetic on the same values, so they get the f32 test's TOL.
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_bf16_matches_cpu() {
    check_forward::<bf16>(0x6c6e_6266_3136_0001, "layernorm_forward_bf16", false, out_bf16);
}

/// The fused kernel in bf16: the residual must equal the CPU's f32 sum of the two bf16 inputs
/// rounded to bf16 (one f32 add, one round-to-nearest-even: exact), and LayerNorm is of that
/// rounded residual, checked as in [`layernorm_forward_bf16_matches_cpu`].
#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_bf16_matches_cpu() {
    check_forward::<bf16>(0x726c_6e62_6631_3602, "residual_layernorm_forward_bf16", true, out_bf16);
}

/// (N, C) for the backward: single row, odd C, GPT-2 widths, C = 1, N not a multiple of the 32-row
/// chunks, and N large enough (> 16384) that the chunks grow past 32 rows.
/// No C = 1: a one-channel LayerNorm normalises everything to 0, its input gradient is rounding noise
/// times rstd = 1/sqrt(eps) = 316 (seen on the H200: 1.5e-5 apart from the f64 reference), so there
/// is nothing to compare. C = 2 is the smallest real case.
const BACKWARD_SHAPES: &[(usize, usize)] =
    &[(1, 768), (1, 2), (7, 37), (64, 768), (33, 1024), (3, 2), (130, 96), (515, 37), (4096, 768), (20001, 3)];

/// Everything one LayerNorm backward reads and the gradients it accumulates into, on the host.
/// `mean` and `rstd` are the f64 forward's rounded to f32, so the GPU and the f64 reference use
/// the same statistics. The gradients come pre-filled with random values (the kernels must add to
/// them) and [`TAIL`] extra random elements (which must stay as they are).
///
/// Built for a storage type `T` (`BackwardCase::new::<T>`): the values the kernel reads or
/// accumulates in `T` (dout, inp, weight, dinp) are rounded to `T` and kept here widened back to
/// f32 (exact), so [`BackwardCase::run`] uploads exactly them and the reference sees exactly them.
/// dweight and dbias are f32 parameter gradients for every `T`. For `T = f32` nothing changes.
struct BackwardCase {
    n: usize,
    c: usize,
    dout: Vec<f32>,
    inp: Vec<f32>,
    weight: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dinp: Vec<f32>,
    dweight: Vec<f32>,
    dbias: Vec<f32>,
}

impl BackwardCase {
    fn new<T: Float>(rng: &mut Rng, n: usize, c: usize) -> BackwardCase {
        let in_t = |v: Vec<f32>| widen(&round::<T>(&v));
        let (inp, weight, bias) = inputs(rng, n, c);
        let (inp, weight) = (in_t(inp), in_t(weight));
        let (_, mean, rstd) = reference(&inp, &weight, &bias, n, c);
        BackwardCase {
            n,
            c,
            dout: in_t(rng.uniform_vec(n * c)),
            inp,
            weight,
            mean: mean.iter().map(|&v| v as f32).collect(),
            rstd: rstd.iter().map(|&v| v as f32).collect(),
            dinp: in_t(rng.uniform_vec(n * c + TAIL)),
            dweight: rng.uniform_vec(c + TAIL),
            dbias: rng.uniform_vec(c + TAIL),
        }
    }

    /// `cpu::layernorm::layernorm_backward` in f64 on the same values: (dinp, dweight, dbias)
    /// without their tails.
    fn reference(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, c) = (self.n, self.c);
        let mut dinp = to_f64(&self.dinp[..n * c]);
        let mut dweight = to_f64(&self.dweight[..c]);
        let mut dbias = to_f64(&self.dbias[..c]);
        cpu::layernorm::layernorm_backward(
            &mut dinp,
            &mut dweight,
            &mut dbias,
            &to_f64(&self.dout),
            &to_f64(&self.inp),
            &to_f64(&self.weight),
            &to_f64(&self.mean),
            &to_f64(&self.rstd),
            n,
            c,
        );
        (dinp, dweight, dbias)
    }

    /// Runs the GPU backward once in `T` (the `T` the case was built for; scratch poisoned with
    /// NaN, so an unwritten slot shows) and returns (dinp widened to f32, dweight, dbias) with
    /// their tails, after checking the scratch tail is untouched.
    fn run<T: Float>(&self, gpu: &Gpu) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, c) = (self.n, self.c);
        let stream = gpu.stream();
        let d_dout = stream.clone_htod(&round::<T>(&self.dout)).unwrap();
        let d_inp = stream.clone_htod(&round::<T>(&self.inp)).unwrap();
        let d_weight = stream.clone_htod(&round::<T>(&self.weight)).unwrap();
        let d_mean = stream.clone_htod(&self.mean).unwrap();
        let d_rstd = stream.clone_htod(&self.rstd).unwrap();
        let mut d_dinp = stream.clone_htod(&round::<T>(&self.dinp)).unwrap();
        let mut d_dweight = stream.clone_htod(&self.dweight).unwrap();
        let mut d_dbias = stream.clone_htod(&self.dbias).unwrap();
        let scratch_len = layernorm_backward_scratch_len(n, c);
        let mut d_scratch = poisoned::<f32>(gpu, scratch_len);
        layernorm_backward(
            gpu,
            &mut d_dinp,
            &mut d_dweight,
            &mut d_dbias,
            &mut d_scratch,
            &d_dout,
            &d_inp,
            &d_weight,
            &d_mean,
            &d_rstd,
            n,
            c,
        )
        .unwrap();
        gpu.synchronize().unwrap();
        download(gpu, "scratch", &d_scratch, scratch_len);
        (
            widen(&stream.clone_dtoh(&d_dinp).unwrap()),
            stream.clone_dtoh(&d_dweight).unwrap(),
            stream.clone_dtoh(&d_dbias).unwrap(),
        )
    }
}

/// Splits a gradient downloaded with its tail into the first `len` values, after checking the
/// tail still holds the pre-filled values bit for bit.
fn untouched_tail<'a>(what: &str, got: &'a [f32], prefill: &[f32], len: usize) -> &'a [f32] {
    assert_same_bits(&format!("{what} past its first {len} elements (written there?)"), &got[len..], &prefill[len..]);
    &got[..len]
}

/// Runs every [`BACKWARD_SHAPES`] case in `T` against the f64 CPU backward: the tails must be
/// untouched, dinp is checked by `check_dinp` (which returns its part of the printed line), dweight
/// and dbias (f32 for every `T`) within reduction_tol = max(TOL, 4 eps_f32 sqrt(N)) relative to
/// max(max |ref|, largest pre-filled value). `label` starts the printed line.
fn check_backward<T: Float>(
    gpu: &Gpu,
    rng: &mut Rng,
    label: &str,
    check_dinp: impl Fn(&str, &[f32], &[f64]) -> String,
) {
    for &(n, c) in BACKWARD_SHAPES {
        if gpu.kernels() == Kernels::Vector && !c.is_multiple_of(T::VEC) {
            continue;
        }
        let case = BackwardCase::new::<T>(rng, n, c);
        let (want_dinp, want_dweight, want_dbias) = case.reference();
        let (dinp, dweight, dbias) = case.run::<T>(gpu);

        let shape = format!("N={n} C={c}");
        let dinp = untouched_tail("dinp", &dinp, &case.dinp, n * c);
        let dweight = untouched_tail("dweight", &dweight, &case.dweight, c);
        let dbias = untouched_tail("dbias", &dbias, &case.dbias, c);
        let dinp_text = check_dinp(&format!("dinp ({shape})"), dinp, &want_dinp);
        let reduction_tol = TOL.max(4.0 * f32::EPSILON as f64 * (n as f64).sqrt());
        let floor = |x: &[f32]| f64::from(max_abs(&x[..c]));
        let e_dweight = assert_close_floor(
            &format!("dweight ({shape})"),
            dweight,
            &want_dweight,
            reduction_tol,
            floor(&case.dweight),
        );
        let e_dbias =
            assert_close_floor(&format!("dbias ({shape})"), dbias, &want_dbias, reduction_tol, floor(&case.dbias));
        println!(
            "{label} {shape}: {dinp_text}, dweight {e_dweight:.1e}, dbias {e_dbias:.1e} \
             (reduction tol {reduction_tol:.1e})"
        );
    }
}

/// GPU backward vs. the f64 CPU backward. dinp rows are reduced over C in a different order than
/// the CPU; dweight and dbias over N rows (chunked), so their tolerance grows by a few ulps *
/// sqrt(N) when that exceeds TOL.
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward::<f32>(&gpu, &mut Rng::new(0x6c6e_6261_636b_0001), "layernorm_backward", |what, got, want| {
        format!("rel err dinp {:.1e}", assert_close(what, got, want, TOL))
    });
}

/// Same inputs, same bits: the dweight/dbias reductions use a fixed partition and order, no
/// atomics.
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_is_deterministic() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    assert_backward_deterministic::<f32>(&gpu, &mut Rng::new(0x6c6e_6465_7465_726d), "layernorm_backward");
}

/// Runs each case three times in `T` and asserts every output bit (tails included) repeats.
fn assert_backward_deterministic<T: Float>(gpu: &Gpu, rng: &mut Rng, label: &str) {
    for &(n, c) in &[(4096usize, 768usize), (20001, 3), (515, 37)] {
        let case = BackwardCase::new::<T>(rng, n, c);
        let first = case.run::<T>(gpu);
        for run in 1..3 {
            let again = case.run::<T>(gpu);
            for (what, a, b) in
                [("dinp", &first.0, &again.0), ("dweight", &first.1, &again.1), ("dbias", &first.2, &again.2)]
            {
                assert_same_bits(&format!("{what} (N={n} C={c}) run {run}"), b, a);
            }
        }
        println!("{label} N={n} C={c}: three runs bit-identical");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_rejects_short_scratch() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (n, c) = (100, 48);
    let stream = gpu.stream();
    let d_nc = stream.clone_htod(&vec![1.0f32; n * c]).unwrap();
    let d_c = stream.clone_htod(&vec![1.0f32; c]).unwrap();
    let d_n = stream.clone_htod(&vec![1.0f32; n]).unwrap();
    let (mut d_dinp, mut d_dweight, mut d_dbias) = (poisoned(&gpu, n * c), poisoned(&gpu, c), poisoned(&gpu, c));
    let mut d_scratch = stream.alloc_zeros::<f32>(layernorm_backward_scratch_len(n, c) - 1).unwrap();
    let err = layernorm_backward(
        &gpu,
        &mut d_dinp,
        &mut d_dweight,
        &mut d_dbias,
        &mut d_scratch,
        &d_nc,
        &d_nc,
        &d_c,
        &d_n,
        &d_n,
        n,
        c,
    )
    .expect_err("a short scratch must be rejected");
    assert!(err.to_string().contains("scratch"), "{err}");
}

/// bf16 backward: dout, inp, weight and the pre-filled dinp rounded to bf16, the f64 reference on
/// exactly those values (mean and rstd the f64 forward's on them, rounded to f32, as in the f32
/// test); dweight and dbias are f32 in both.
///
/// - dinp (bf16, accumulated): the kernel forms y32 = dinp0 + update in f32, which is the f32
///   kernel's arithmetic on the same values, so |y32 - ref| <= d with d the f32 test's bound,
///   TOL * max |ref| (absolute over the tensor; max |ref| includes the pre-filled values). It
///   stores bf16(y32), rounded once to nearest: bf16 keeps 8 significant bits, so that moves y32
///   by at most half an ulp <= 2^-8 |y32| <= 2^-8 (|ref| + d). Hence
///   |gpu - ref| <= 2^-8 |ref| + (1 + 2^-8) d, checked per element by [`assert_bf16_close`] as
///   rtol = 2^-8 ([`BF16_U`]), atol = 2 * TOL * max |ref| (d doubled for margin). A kernel that
///   overwrote instead of adding would be off by |dinp0| ~ 0.5, far outside.
/// - dweight, dbias (f32): the kernels widen the bf16 values exactly and then do the f32 kernel's
///   arithmetic in the same order, so these are the f32 kernel's results on the same values and
///   get the f32 test's tolerance unchanged: reduction_tol = max(TOL, 4 eps_f32 sqrt(N)) relative
///   to max(max |ref|, largest pre-filled value).
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward::<bf16>(&gpu, &mut Rng::new(0x6c6e_6262_6631_3603), "layernorm_backward_bf16", |what, got, want| {
        format!("dinp worst {:.2} of tolerance", assert_bf16_close(what, got, want))
    });
}

/// bf16 in, f32 parameter gradients out: still a fixed partition and order, so the same bits every
/// run (dinp compared as its bf16 values widened, an injective map).
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_bf16_is_deterministic() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    assert_backward_deterministic::<bf16>(&gpu, &mut Rng::new(0x6c6e_6462_6631_3604), "layernorm_backward_bf16");
}

// ---- --kernels vector: layernorm_forward_vec, residual_layernorm_forward_vec, layernorm_backward_vec ----
//
// The vector kernels split each row among the lanes by 128-bit packs instead of by element, so
// the row sums (mean, variance; in the backward the two dnorm means) are added in another order
// and out, mean, rstd and dinp differ from the scalar kernels' in the last bits. Both are held
// to the same f64 reference with the scalar tests' tolerances (TOL for f32; the bf16 bounds as
// derived above), which the reordering does not loosen: the f32 rounding error of a sum of C
// terms is bounded by the same C-proportional term whatever the order. The fused residual is
// still checked exact, and dweight/dbias, whose per-channel order is unchanged, bit for bit.

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_vec_matches_cpu() {
    check_forward_with::<f32>(Kernels::Vector, 0x6c6e_7665_6331, "layernorm_forward_vec", false, out_fp32);
    check_forward_with::<bf16>(Kernels::Vector, 0x6c6e_7665_6332, "layernorm_forward_vec_bf16", false, out_bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_vec_matches_cpu() {
    check_forward_with::<f32>(Kernels::Vector, 0x726c_7665_6331, "residual_layernorm_forward_vec", true, out_fp32);
    check_forward_with::<bf16>(
        Kernels::Vector,
        0x726c_7665_6332,
        "residual_layernorm_forward_vec_bf16",
        true,
        out_bf16,
    );
}

/// C not a whole number of 128-bit packs: the vector path refuses with an error naming the
/// requirement and the way out, before touching anything.
#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_vec_rejects_c_not_a_multiple_of_the_vector_width() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    gpu.set_kernels(Kernels::Vector);
    let (n, c) = (4, 37);
    let (mut out, mut mean, mut rstd) =
        (poisoned::<f32>(&gpu, n * c), poisoned::<f32>(&gpu, n), poisoned::<f32>(&gpu, n));
    let (inp, w, b) = (poisoned::<f32>(&gpu, n * c), poisoned::<f32>(&gpu, c), poisoned::<f32>(&gpu, c));
    let e = layernorm_forward(&gpu, &mut out, &mut mean, &mut rstd, &inp, &w, &b, n, c).unwrap_err().to_string();
    assert!(e.contains("C = 37 is not a multiple of 4") && e.contains("--kernels scalar"), "{e}");
}

/// The vector backward: against the f64 CPU backward with the scalar test's tolerances
/// ([`check_backward`] with the GPU set to vector), then against the scalar kernel on the same
/// case: dweight and dbias bit for bit (same per-channel summation order: rows in order within
/// each fixed chunk, chunks in order), dinp within 2 TOL of max |dinp| (both are within TOL of the
/// reference); and run twice, every output bit-identical.
fn check_backward_vec<T: Float>(
    gpu: &Gpu,
    seed: u64,
    label: &str,
    check_dinp: impl Fn(&str, &[f32], &[f64]) -> String,
) {
    gpu.set_kernels(Kernels::Vector);
    check_backward::<T>(gpu, &mut Rng::new(seed), label, check_dinp);
    let mut rng = Rng::new(seed ^ 1);
    for &(n, c) in &[(64, 768), (515, 40), (4096, 768), (33, 1024)] {
        let case = BackwardCase::new::<T>(&mut rng, n, c);
        gpu.set_kernels(Kernels::Scalar);
        let (s_dinp, s_dweight, s_dbias) = case.run::<T>(gpu);
        gpu.set_kernels(Kernels::Vector);
        let (v_dinp, v_dweight, v_dbias) = case.run::<T>(gpu);
        let shape = format!("{label} N={n} C={c}");
        assert_same_bits(&format!("dweight ({shape}) vs the scalar kernel"), &v_dweight, &s_dweight);
        assert_same_bits(&format!("dbias ({shape}) vs the scalar kernel"), &v_dbias, &s_dbias);
        let scale = f64::from(max_abs(&s_dinp));
        let diff = v_dinp.iter().zip(&s_dinp).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let allowed = if T::BYTES == 2 { 2.0 * (BF16_U + 2.0 * TOL) * scale } else { 2.0 * TOL * scale };
        assert!(diff <= allowed, "dinp ({shape}): vector vs scalar differ by {diff:e} > {allowed:e}");
        let again = case.run::<T>(gpu);
        assert_same_bits(&format!("dinp ({shape}) second run"), &again.0, &v_dinp);
        assert_same_bits(&format!("dweight ({shape}) second run"), &again.1, &v_dweight);
        assert_same_bits(&format!("dbias ({shape}) second run"), &again.2, &v_dbias);
        println!("{shape}: dweight, dbias bit-identical to scalar and across runs; dinp within {diff:.1e} of scalar");
    }
    gpu.set_kernels(Kernels::Scalar);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_vec_matches_scalar_and_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward_vec::<f32>(&gpu, 0x6c6e_6276_6563_3332, "layernorm_backward_vec", |what, got, want| {
        format!("rel err dinp {:.1e}", assert_close(what, got, want, TOL))
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_vec_bf16_matches_scalar_and_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_backward_vec::<bf16>(&gpu, 0x6c6e_6276_6562_6631, "layernorm_backward_vec_bf16", |what, got, want| {
        format!("dinp worst {:.2} of tolerance", assert_bf16_close(what, got, want))
    });
}
