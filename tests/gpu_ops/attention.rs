//! Attention forward (permute, cuBLAS batched GEMMs, causal softmax, unpermute) vs. the CPU
//! reference, computed in f64 so the error measured is the GPU's alone.

use super::common::assert_same_bits;
use super::{
    assert_overwrite_bits, check_bf16_close, gpu_or_skip, nan_buffer, rel_error, round, to_f64, widen, Uniform, BF16_U,
};
use genesis::cpu;
use genesis::gpu::attention::{
    attention_backward, attention_backward_scratch_len, attention_decode, attention_forward, scratch_len,
};
use genesis::gpu::blas::Blas;
use genesis::gpu::device::Gpu;
use genesis::gpu::{Dinp, Float, Kernels};
use genesis::rng::Rng;
use half::bf16;

/// `n` attention inputs (q, k, v) in 2 U(-1, 1): scaled up so the softmax is far from uniform.
fn qkv_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.uniform_vec(n).into_iter().map(|x| 2.0 * x).collect()
}

fn check(gpu: &Gpu, blas: &Blas, rng: &mut Rng, (b, t, c, nh): (usize, usize, usize, usize), tol: f64) {
    let qkv = qkv_values(rng, b * t * 3 * c);
    let qkv64 = to_f64(&qkv);
    let mut want_out = vec![0.0f64; b * t * c];
    let mut want_att = vec![0.0f64; b * nh * t * t];
    cpu::attention::attention_forward(&mut want_out, &mut want_att, &qkv64, b, t, c, nh);

    let stream = gpu.stream();
    let d_qkv = stream.clone_htod(&qkv).unwrap();
    let mut d_out = nan_buffer::<f32>(gpu, b * t * c);
    let mut d_att = nan_buffer::<f32>(gpu, b * nh * t * t);
    let mut d_scratch = nan_buffer::<f32>(gpu, scratch_len(b, t, c));
    attention_forward(gpu, blas, &mut d_out, &mut d_scratch, &mut d_att, &d_qkv, b, t, c, nh).unwrap();
    gpu.synchronize().unwrap();
    let out = stream.clone_dtoh(&d_out).unwrap();
    let att = stream.clone_dtoh(&d_att).unwrap();

    let what = format!("attention B={b} T={t} C={c} NH={nh} tf32={}", blas.allow_tf32());
    let err_out = rel_error(&out, &want_out, &format!("{what} out"));
    let err_att = rel_error(&att, &want_att, &format!("{what} att"));
    println!("{what}: out rel err {err_out:.3e}, att rel err {err_att:.3e}");
    assert!(err_out < tol, "{what}: out relative error {err_out:.3e} >= {tol:.0e}");
    assert!(err_att < tol, "{what}: att relative error {err_att:.3e} >= {tol:.0e}");

    // Probabilities: exactly zero above the diagonal, non-negative, each row summing to 1.
    for (r, row) in att.chunks(t).enumerate() {
        let t1 = r % t;
        assert!(row[t1 + 1..].iter().all(|&p| p == 0.0), "{what}: row {r} (t={t1}) has mass above the diagonal");
        assert!(row[..=t1].iter().all(|&p| p >= 0.0), "{what}: row {r} has a negative probability");
        let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{what}: row {r} sums to {sum}");
    }
}

const SHAPES: &[(usize, usize, usize, usize)] = &[(1, 1, 64, 4), (2, 17, 64, 4), (1, 33, 24, 3), (2, 64, 768, 12)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6174_7465_6e74_0001);
    for &shape in SHAPES {
        check(&gpu, &blas, &mut rng, shape, 1e-5);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_tf32_is_close() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, true).expect("Blas::new");
    let mut rng = Rng::new(0x6174_7465_6e74_0002);
    for &shape in &[(2usize, 17usize, 64usize, 4usize), (2, 64, 768, 12)] {
        check(&gpu, &blas, &mut rng, shape, 2e-2);
    }
}

/// `attention_forward::<T>` rejects a scratch one element short and NH not dividing C.
fn assert_forward_rejects_bad_shapes<T: Float>() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let (b, t, c, nh) = (1usize, 4usize, 64usize, 4usize);
    let qkv = stream.alloc_zeros::<T>(b * t * 3 * c).unwrap();
    let mut out = stream.alloc_zeros::<T>(b * t * c).unwrap();
    let mut att = stream.alloc_zeros::<T>(b * nh * t * t).unwrap();
    let mut short = stream.alloc_zeros::<T>(scratch_len(b, t, c) - 1).unwrap();
    assert!(attention_forward(&gpu, &blas, &mut out, &mut short, &mut att, &qkv, b, t, c, nh).is_err());
    let mut scratch = stream.alloc_zeros::<T>(scratch_len(b, t, c)).unwrap();
    assert!(attention_forward(&gpu, &blas, &mut out, &mut scratch, &mut att, &qkv, b, t, c, 5).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_rejects_bad_shapes() {
    assert_forward_rejects_bad_shapes::<f32>();
}

// ---- bf16 storage, fp32 math ----
//
// qkv is generated in f32, rounded to bf16 and uploaded as bf16; the f64 reference runs on the
// rounded values, so only the GPU's own roundings are measured. u = 2^-8 is bf16's unit
// roundoff (relative error of one round-to-nearest-even).
//
// Unlike the matmul, bf16 attention rounds at three points, and the first two feed later math:
//  1. the scores q·k^T (GEMM output, bf16): a logit s gets an error up to u|s|. With these
//     inputs (2*U(-1,1)) the scaled logits reach |s| ~ 5, i.e. logit errors up to ~0.02;
//  2. the probabilities (softmax output, bf16), computed from the rounded logits. To first
//     order a probability moves by p_i (ds_i - sum_j p_j ds_j), up to 2 u max|s| p_i from
//     step 1, plus its own rounding u p_i;
//  3. y = att·v (fp32 accumulation of the rounded probabilities), rounded once more to bf16;
//     its error is sum_j |dp_j| |v_j| <= max|v| (2 max|s| + 1) u plus u |y|.
// The worst-case bounds (~11u for att, ~20u relative to max|out|) assume every error lines up;
// the errors have random signs and mostly cancel. Simulating exactly these roundings in f64
// (numpy, 5 draws per shape, up to B=4, T=128, C=768) gave at most 1.6u for att and 2.9u for
// out, relative to the max of the reference. The bounds below, 4u for att and 8u for out, give
// ~2.5x headroom over that for the fp32 accumulation order and the GPU's expf, while an error
// that is not rounding (a wrong mask, a missed row, bf16 accumulation, a mis-strided GEMM) is
// O(0.1-1) and fails by far.

/// att: two roundings that compound (see above).
const BF16_ATT_TOL: f64 = 4.0 * BF16_U;
/// out: three roundings, the last through the att·v product (see above).
const BF16_OUT_TOL: f64 = 8.0 * BF16_U;

fn check_bf16(gpu: &Gpu, blas: &Blas, rng: &mut Rng, (b, t, c, nh): (usize, usize, usize, usize)) {
    let qkv: Vec<bf16> = round(&qkv_values(rng, b * t * 3 * c));
    let qkv64 = to_f64(&widen(&qkv));
    let mut want_out = vec![0.0f64; b * t * c];
    let mut want_att = vec![0.0f64; b * nh * t * t];
    cpu::attention::attention_forward(&mut want_out, &mut want_att, &qkv64, b, t, c, nh);

    let stream = gpu.stream();
    let d_qkv = stream.clone_htod(&qkv).unwrap();
    let mut d_out = nan_buffer::<bf16>(gpu, b * t * c);
    let mut d_att = nan_buffer::<bf16>(gpu, b * nh * t * t);
    let mut d_scratch = nan_buffer::<bf16>(gpu, scratch_len(b, t, c));
    attention_forward(gpu, blas, &mut d_out, &mut d_scratch, &mut d_att, &d_qkv, b, t, c, nh).unwrap();
    gpu.synchronize().unwrap();
    let out = widen(&stream.clone_dtoh(&d_out).unwrap());
    let att = widen(&stream.clone_dtoh(&d_att).unwrap());

    let what = format!("attention bf16 B={b} T={t} C={c} NH={nh} tf32={}", blas.allow_tf32());
    let err_out = rel_error(&out, &want_out, &format!("{what} out"));
    let err_att = rel_error(&att, &want_att, &format!("{what} att"));
    println!(
        "{what}: out rel err {err_out:.3e} = {:.2}u, att rel err {err_att:.3e} = {:.2}u (u = 2^-8)",
        err_out / BF16_U,
        err_att / BF16_U
    );
    assert!(err_out <= BF16_OUT_TOL, "{what}: out relative error {err_out:.3e} > {BF16_OUT_TOL:.3e}");
    assert!(err_att <= BF16_ATT_TOL, "{what}: att relative error {err_att:.3e} > {BF16_ATT_TOL:.3e}");

    // Probabilities: exactly zero above the diagonal, non-negative, and each row summing to 1
    // within the rounding of its probabilities (each off by at most u p, so the sum by u).
    for (r, row) in att.chunks(t).enumerate() {
        let t1 = r % t;
        assert!(row[t1 + 1..].iter().all(|&p| p == 0.0), "{what}: row {r} (t={t1}) has mass above the diagonal");
        assert!(row[..=t1].iter().all(|&p| p >= 0.0), "{what}: row {r} has a negative probability");
        let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
        assert!((sum - 1.0).abs() <= BF16_U + 1e-5, "{what}: row {r} sums to {sum}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_matches_cpu_bf16() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6174_7465_6e74_0003);
    // TF32 must make no difference to bf16 GEMMs (they always compute in plain fp32).
    for allow_tf32 in [false, true] {
        let blas = Blas::new(&gpu, allow_tf32).expect("Blas::new");
        // SHAPES plus an odd head size (hs = 6: GEMM leading dimensions of 12 bytes).
        for &shape in SHAPES.iter().chain(&[(3usize, 7usize, 18usize, 3usize)]) {
            check_bf16(&gpu, &blas, &mut rng, shape);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_bf16_rejects_bad_shapes() {
    assert_forward_rejects_bad_shapes::<bf16>();
}

// ---- attention_decode: one new position over the KV cache ----

/// f64 reference for one position: per head h, `out_h = softmax(q_h · k_h[t] / sqrt(hs))_t · v_h`
/// over the first `n_ctx` cache rows (row stride C).
fn decode_reference(q: &[f32], kcache: &[f32], vcache: &[f32], n_ctx: usize, c: usize, nh: usize) -> Vec<f64> {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut out = vec![0.0f64; c];
    for h in 0..nh {
        let cols = h * hs..(h + 1) * hs;
        let scores: Vec<f64> = (0..n_ctx)
            .map(|t| {
                let k = &kcache[t * c..][cols.clone()];
                q[cols.clone()].iter().zip(k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() * scale
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (t, &et) in e.iter().enumerate() {
            let v = &vcache[t * c..][cols.clone()];
            for (o, &vi) in out[cols.clone()].iter_mut().zip(v) {
                *o += et / sum * f64::from(vi);
            }
        }
    }
    out
}

/// Runs `attention_decode::<T>` with caches of `max_t` rows whose rows from `n_ctx` on are NaN
/// (so reading past n_ctx shows), and returns (GPU out, f64 reference on the rounded inputs).
fn run_decode<T: Float>(
    gpu: &Gpu,
    rng: &mut Rng,
    (n_ctx, max_t, c, nh): (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f64>) {
    let q: Vec<T> = round(&qkv_values(rng, c));
    let mut kcache: Vec<T> = round(&qkv_values(rng, max_t * c));
    let mut vcache: Vec<T> = round(&qkv_values(rng, max_t * c));
    let want = decode_reference(&widen(&q), &widen(&kcache), &widen(&vcache), n_ctx, c, nh);
    for x in kcache[n_ctx * c..].iter_mut().chain(&mut vcache[n_ctx * c..]) {
        *x = T::from_f32(f32::NAN);
    }

    let stream = gpu.stream();
    let d_q = stream.clone_htod(&q).unwrap();
    let d_k = stream.clone_htod(&kcache).unwrap();
    let d_v = stream.clone_htod(&vcache).unwrap();
    let mut d_out = nan_buffer::<T>(gpu, c);
    attention_decode(gpu, &mut d_out, &d_q, &d_k, &d_v, n_ctx, c, nh).unwrap();
    gpu.synchronize().unwrap();
    (widen(&stream.clone_dtoh(&d_out).unwrap()), want)
}

const DECODE_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 4, 64, 4), (7, 9, 24, 3), (64, 64, 768, 12), (300, 320, 768, 12), (1024, 1024, 768, 12)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_decode_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6174_7465_6e74_0004);
    for &shape in DECODE_SHAPES {
        let (got, want) = run_decode::<f32>(&gpu, &mut rng, shape);
        let what = format!("attention_decode fp32 (n_ctx, maxT, C, NH) = {shape:?}");
        let err = rel_error(&got, &want, &what);
        println!("{what}: rel err {err:.3e}");
        assert!(err < 1e-5, "{what}: relative error {err:.3e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_decode_matches_cpu_bf16() {
    // Scores, softmax and the weighted sum are fp32 in the kernel (nothing intermediate is
    // rounded to bf16), so the only bf16 rounding is the output's: per element at most
    // u |ref| (u = 2^-8), plus 1e-4 max|ref| for the fp32 math (the fp32 test passes at 1e-5).
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6174_7465_6e74_0005);
    for &shape in DECODE_SHAPES {
        let (got, want) = run_decode::<bf16>(&gpu, &mut rng, shape);
        // Per element u |ref| + 1e-4 max|ref|; a NaN is an element not written, or read past n_ctx.
        let what = format!("attention_decode bf16 (n_ctx, maxT, C, NH) = {shape:?}");
        let err = check_bf16_close(&got, &want, None, 1e-4, &what);
        println!("{what}: max abs err / max |ref| = {err:.3e}");
    }
}

// ---- backward (fp32): dqkv += d(attention)/d(qkv) . dout ----
//
// att comes from the CPU forward (f64, rounded to f32 for upload) so the test isolates the
// backward; the f64 reference backward runs on exactly the uploaded (f32) values. dqkv starts
// from random values (the backward accumulates), the scratch from NaN (every element must be
// written before it is read). Errors are relative to max |ref| of each third (dq, dk, dv) of
// dqkv, with TF32 off.

/// Inputs of one backward case, as uploaded (widened to f32): every value is drawn in f32 and
/// rounded through the storage type `T` of [`AttnBackwardCase::new`] (the identity for f32).
struct AttnBackwardCase {
    shape: (usize, usize, usize, usize),
    dout: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    dqkv0: Vec<f32>,
}

impl AttnBackwardCase {
    fn new<T: Float>(rng: &mut Rng, (b, t, c, nh): (usize, usize, usize, usize)) -> Self {
        let through_t = |v: &[f32]| widen(&round::<T>(v));
        let qkv = through_t(&qkv_values(rng, b * t * 3 * c));
        let qkv64 = to_f64(&qkv);
        let mut out = vec![0.0f64; b * t * c];
        let mut att64 = vec![0.0f64; b * nh * t * t];
        cpu::attention::attention_forward(&mut out, &mut att64, &qkv64, b, t, c, nh);
        let att = through_t(&att64.iter().map(|&x| x as f32).collect::<Vec<f32>>());
        let dout = through_t(&rng.uniform_vec(b * t * c));
        let dqkv0 = through_t(&rng.uniform_vec(b * t * 3 * c));
        AttnBackwardCase { shape: (b, t, c, nh), dout, qkv, att, dqkv0 }
    }

    fn reference(&self) -> Vec<f64> {
        let (b, t, c, nh) = self.shape;
        let mut dqkv = to_f64(&self.dqkv0);
        cpu::attention::attention_backward(
            &mut dqkv,
            &to_f64(&self.dout),
            &to_f64(&self.qkv),
            &to_f64(&self.att),
            b,
            t,
            c,
            nh,
        );
        dqkv
    }

    /// Runs `attention_backward::<T>` (every buffer uploaded as `T`, exactly: the case was built
    /// with the same `T`; the scratch poisoned with NaN), dqkv written as `store` says, and
    /// returns dqkv widened to f32.
    fn run<T: Float>(&self, gpu: &Gpu, blas: &Blas, store: Dinp) -> Vec<f32> {
        let (b, t, c, nh) = self.shape;
        let stream = gpu.stream();
        let d_dout = stream.clone_htod(&round::<T>(&self.dout)).unwrap();
        let d_qkv = stream.clone_htod(&round::<T>(&self.qkv)).unwrap();
        let d_att = stream.clone_htod(&round::<T>(&self.att)).unwrap();
        let mut d_dqkv = stream.clone_htod(&round::<T>(&self.dqkv0)).unwrap();
        let mut d_scratch = nan_buffer::<T>(gpu, attention_backward_scratch_len(b, t, c, nh));
        attention_backward(gpu, blas, &mut d_dqkv, &mut d_scratch, &d_dout, &d_qkv, &d_att, b, t, c, nh, store)
            .unwrap();
        gpu.synchronize().unwrap();
        widen(&stream.clone_dtoh(&d_dqkv).unwrap())
    }
}

/// Splits a (B,T,3C) buffer into its q, k and v thirds (each (B,T,C), flattened).
fn thirds<F: Copy>(v: &[F], c: usize) -> [Vec<F>; 3] {
    std::array::from_fn(|part| v.chunks(3 * c).flat_map(|row| row[part * c..(part + 1) * c].iter().copied()).collect())
}

const BACKWARD_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 1, 64, 4), (2, 17, 64, 4), (1, 33, 24, 3), (3, 7, 18, 3), (2, 64, 768, 12)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_matches_cpu_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(0x6174_7465_6e74_0101);
    for &shape in BACKWARD_SHAPES {
        let case = AttnBackwardCase::new::<f32>(&mut rng, shape);
        let want = case.reference();
        let got = case.run::<f32>(&gpu, &blas, Dinp::Accumulate);
        let c = shape.2;
        let what = format!("attention_backward (B,T,C,NH) = {shape:?}");
        let errs: Vec<f64> = thirds(&got, c)
            .iter()
            .zip(thirds(&want, c).iter())
            .zip(["dq", "dk", "dv"])
            .map(|((g, w), name)| rel_error(g, w, &format!("{what} {name}")))
            .collect();
        println!("{what}: rel err dq {:.3e}, dk {:.3e}, dv {:.3e}", errs[0], errs[1], errs[2]);
        for (err, name) in errs.iter().zip(["dq", "dk", "dv"]) {
            assert!(*err < 1e-5, "{what}: {name} relative error {err:.3e} >= 1e-5");
        }
    }
}

/// Runs each case twice with `T` storage (TF32 off) and asserts dqkv repeats bit for bit (widened
/// to f32: bf16 -> f32 widening is exact and injective, so equal f32 bits mean equal bf16 bits).
/// `label` names the op in the message.
fn assert_backward_deterministic<T: Float>(seed: u64, label: &str) {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let mut rng = Rng::new(seed);
    for &shape in &[(2usize, 64usize, 768usize, 12usize), (3, 7, 18, 3)] {
        let case = AttnBackwardCase::new::<T>(&mut rng, shape);
        let first = case.run::<T>(&gpu, &blas, Dinp::Accumulate);
        let second = case.run::<T>(&gpu, &blas, Dinp::Accumulate);
        assert_same_bits(&format!("{label} {shape:?}: dqkv of the second run"), &second, &first);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_is_deterministic() {
    assert_backward_deterministic::<f32>(0x6174_7465_6e74_0102, "attention_backward");
}

/// `attention_backward::<T>` rejects a scratch, an att or a dqkv one element short and NH not
/// dividing C.
fn assert_backward_rejects_bad_shapes<T: Float>() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    let stream = gpu.stream();
    let (b, t, c, nh) = (1usize, 4usize, 64usize, 4usize);
    let qkv = stream.alloc_zeros::<T>(b * t * 3 * c).unwrap();
    let dout = stream.alloc_zeros::<T>(b * t * c).unwrap();
    let att = stream.alloc_zeros::<T>(b * nh * t * t).unwrap();
    let mut dqkv = stream.alloc_zeros::<T>(b * t * 3 * c).unwrap();
    let len = attention_backward_scratch_len(b, t, c, nh);
    let acc = Dinp::Accumulate;
    let mut short = stream.alloc_zeros::<T>(len - 1).unwrap();
    assert!(attention_backward(&gpu, &blas, &mut dqkv, &mut short, &dout, &qkv, &att, b, t, c, nh, acc).is_err());
    let mut scratch = stream.alloc_zeros::<T>(len).unwrap();
    assert!(attention_backward(&gpu, &blas, &mut dqkv, &mut scratch, &dout, &qkv, &att, b, t, c, 5, acc).is_err());
    let short_att = stream.alloc_zeros::<T>(b * nh * t * t - 1).unwrap();
    assert!(
        attention_backward(&gpu, &blas, &mut dqkv, &mut scratch, &dout, &qkv, &short_att, b, t, c, nh, acc).is_err()
    );
    let mut short_dqkv = stream.alloc_zeros::<T>(b * t * 3 * c - 1).unwrap();
    assert!(
        attention_backward(&gpu, &blas, &mut short_dqkv, &mut scratch, &dout, &qkv, &att, b, t, c, nh, acc).is_err()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_rejects_bad_shapes() {
    assert_backward_rejects_bad_shapes::<f32>();
}

// ---- backward, bf16 storage (every buffer bf16, fp32 math) ----
//
// qkv, dout and dqkv's prefill are drawn in f32 and rounded to bf16 (`round::<bf16>`, `widen`);
// att is the f64 CPU forward on the rounded qkv, rounded to bf16. The f64 reference backward
// (`cpu::attention::attention_backward`, at least as exact as an f32 one) runs on exactly those
// uploaded values, so only the GPU's own roundings are measured. dqkv starts from random bf16
// values (checks `+=`), the scratch from NaN.
//
// Roundings on the GPU (u = 2^-8, bf16's unit roundoff: 8 significant bits, so half an ulp is
// between 2^-9 and 2^-8 of the value):
//  1. datt = dy·v^T and dv = att^T·dy (GEMM outputs, fp32 accumulation, one rounding each);
//  2. dpreatt = scale * p * (datt - sum p datt), in fp32 from the rounded datt, then rounded.
//     datt's rounding is relative to |datt|, not to |datt - dot|, which can be much smaller:
//     the error of dpreatt is relative to its ROW's magnitude (scale p u max|datt|), not to
//     the element's;
//  3. dq = dpreatt·k and dk = dpreatt^T·q (GEMM outputs) sum those row-relative errors over T
//     and round once more;
//  4. dqkv = bf16(dqkv + d{q,k,v}), the add in fp32: one rounding, u |ref| per element.
// So per element |got - ref| <= u |ref| + K u max|ref| (max over that third of dqkv): the first
// term is step 4's rounding, the second the errors of steps 1-3 carried into it, which are
// relative to the magnitudes of whole rows and so measured against max|ref|. dv has only one
// such rounding (<= u max|dv|); dq and dk sum several with random signs. Simulating exactly
// these roundings in f64 (numpy, inputs drawn as here: BACKWARD_SHAPES 20 draws each, plus
// T = 256 and 1024) gave at most 1.15u for the second term (0.47u for dv) and at most 2.2u for
// max|err| / max|ref|. K = 3 leaves ~2.5x headroom for the fp32 accumulation order (or one
// extra rounding inside cuBLAS), while a real error (a wrong mask or stride, a missed row, bf16
// accumulation in a GEMM) is O(0.1-1) of max|ref| and fails by far.

/// bf16 backward: the K of the bound above.
const BF16_BACKWARD_K: f64 = 3.0;

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_matches_cpu_bf16() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut rng = Rng::new(0x6174_7465_6e74_0201);
    // TF32 must make no difference to bf16 GEMMs (they always compute in plain fp32).
    for allow_tf32 in [false, true] {
        let blas = Blas::new(&gpu, allow_tf32).expect("Blas::new");
        for &shape in BACKWARD_SHAPES {
            let case = AttnBackwardCase::new::<bf16>(&mut rng, shape);
            let want = case.reference();
            let got = case.run::<bf16>(&gpu, &blas, Dinp::Accumulate);
            let c = shape.2;
            let what = format!("attention_backward bf16 (B,T,C,NH) = {shape:?} tf32={allow_tf32}");
            let errs: Vec<f64> = thirds(&got, c)
                .iter()
                .zip(thirds(&want, c).iter())
                .zip(["dq", "dk", "dv"])
                .map(|((g, w), name)| check_bf16_close(g, w, None, BF16_BACKWARD_K * BF16_U, &format!("{what} {name}")))
                .collect();
            println!(
                "{what}: max abs err / max |ref| dq {:.2}u, dk {:.2}u, dv {:.2}u (u = 2^-8)",
                errs[0] / BF16_U,
                errs[1] / BF16_U,
                errs[2] / BF16_U
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_is_deterministic_bf16() {
    assert_backward_deterministic::<bf16>(0x6174_7465_6e74_0202, "attention_backward bf16");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_rejects_bad_shapes_bf16() {
    assert_backward_rejects_bad_shapes::<bf16>();
}

// ---- --kernels vector: the _vec permutes ----

/// `attention_forward::<T>` on `qkv` with the GPU set to `kernels` (outputs and scratch NaN
/// first): (out, att) widened to f32.
fn run_forward_with<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    kernels: Kernels,
    qkv: &[f32],
    (b, t, c, nh): (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let stream = gpu.stream();
    let d_qkv = stream.clone_htod(&round::<T>(qkv)).unwrap();
    let mut d_out = nan_buffer::<T>(gpu, b * t * c);
    let mut d_att = nan_buffer::<T>(gpu, b * nh * t * t);
    let mut d_scratch = nan_buffer::<T>(gpu, scratch_len(b, t, c));
    gpu.set_kernels(kernels);
    let r = attention_forward(gpu, blas, &mut d_out, &mut d_scratch, &mut d_att, &d_qkv, b, t, c, nh);
    gpu.set_kernels(Kernels::Scalar);
    r.unwrap();
    gpu.synchronize().unwrap();
    (widen(&stream.clone_dtoh(&d_out).unwrap()), widen(&stream.clone_dtoh(&d_att).unwrap()))
}

/// Head sizes 8, 16, 32 and 64 (whole packs in f32 and bf16), T not a multiple of 4, so the
/// softmax stays the scalar kernel (its _vec version reorders sums; tested below).
const VEC_SHAPES: &[(usize, usize, usize, usize)] = &[(1, 5, 32, 4), (2, 17, 64, 4), (1, 9, 96, 3), (2, 63, 768, 12)];

/// With T not a multiple of the vector width the permutes are the only _vec kernels. They only move values (and the backward's unpermute does the scalar kernel's single f32
/// add, rounded once), so with --kernels vector attention forward and backward give the scalar
/// path's bits exactly (the GEMMs and the softmax are the same launches), in f32 and bf16; the f32
/// forward and backward are also held to the CPU reference with the scalar tests' 1e-5.
fn check_vec<T: Float>(gpu: &Gpu, blas: &Blas, seed: u64) {
    let mut rng = Rng::new(seed);
    for &shape in VEC_SHAPES {
        let (b, t, c, nh) = shape;
        let what = format!("attention vec{} (B,T,C,NH) = {shape:?}", T::SUFFIX);
        let qkv = qkv_values(&mut rng, b * t * 3 * c);
        let (s_out, s_att) = run_forward_with::<T>(gpu, blas, Kernels::Scalar, &qkv, shape);
        let (v_out, v_att) = run_forward_with::<T>(gpu, blas, Kernels::Vector, &qkv, shape);
        assert_same_bits(&format!("{what}: out vs scalar"), &v_out, &s_out);
        assert_same_bits(&format!("{what}: att vs scalar"), &v_att, &s_att);

        let case = AttnBackwardCase::new::<T>(&mut rng, shape);
        let scalar = case.run::<T>(gpu, blas, Dinp::Accumulate);
        gpu.set_kernels(Kernels::Vector);
        let vector = case.run::<T>(gpu, blas, Dinp::Accumulate);
        gpu.set_kernels(Kernels::Scalar);
        assert_same_bits(&format!("{what}: dqkv vs scalar"), &vector, &scalar);
        if T::BYTES == 4 {
            let mut want_out = vec![0.0f64; b * t * c];
            let mut want_att = vec![0.0f64; b * nh * t * t];
            cpu::attention::attention_forward(&mut want_out, &mut want_att, &to_f64(&qkv), b, t, c, nh);
            let err_out = rel_error(&v_out, &want_out, &format!("{what} out"));
            assert!(err_out < 1e-5, "{what}: out relative error {err_out:.3e}");
            let want = case.reference();
            for ((g, w), name) in thirds(&vector, c).iter().zip(thirds(&want, c).iter()).zip(["dq", "dk", "dv"]) {
                let err = rel_error(g, w, &format!("{what} {name}"));
                assert!(err < 1e-5, "{what}: {name} relative error {err:.3e} >= 1e-5");
            }
        }
        println!("{what}: forward and backward bit-identical to the scalar kernels");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_vec_permutes_match_scalar_bitwise() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    check_vec::<f32>(&gpu, &blas, 0x6174_7665_6300_0001);
    check_vec::<bf16>(&gpu, &blas, 0x6174_7665_6300_0002);
    // Head size 6 (C = 18, NH = 3) is not a whole number of packs: refused, naming the fix.
    let qkv = qkv_values(&mut Rng::new(3), 3 * 7 * 18);
    let stream = gpu.stream();
    let d_qkv = stream.clone_htod(&qkv).unwrap();
    let (mut out, mut att, mut scratch) = (
        nan_buffer::<f32>(&gpu, 7 * 18),
        nan_buffer::<f32>(&gpu, 3 * 49),
        nan_buffer::<f32>(&gpu, scratch_len(1, 7, 18)),
    );
    gpu.set_kernels(Kernels::Vector);
    let e = attention_forward(&gpu, &blas, &mut out, &mut scratch, &mut att, &d_qkv, 1, 7, 18, 3).unwrap_err();
    assert!(e.to_string().contains("head size 6 is not a multiple of 4"), "{e}");
}

/// T a multiple of 8: with --kernels vector the softmaxes are the _vec ones too.
const VEC_SOFTMAX_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 8, 32, 4), (2, 64, 64, 4), (1, 32, 96, 3), (2, 64, 768, 12)];

/// --kernels vector with the _vec causal softmaxes (T a multiple of 8): they add the row sums in
/// another order than the scalar kernels, so they are held to the CPU reference with the scalar
/// tests' tolerances and checks (f32 forward and backward 1e-5 relative, the probabilities zero
/// above the diagonal, non-negative, rows summing to 1; bf16 forward BF16_ATT_TOL / BF16_OUT_TOL and
/// backward BF16_BACKWARD_K u), which a reordered f32 sum of at most T terms stays well inside.
/// Outputs and scratch start as NaN, so an unwritten element fails. And two runs give the same bits.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_vec_softmax_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    gpu.set_kernels(Kernels::Vector);
    let mut rng = Rng::new(0x6174_736d_7665_6301);
    for &shape in VEC_SOFTMAX_SHAPES {
        check(&gpu, &blas, &mut rng, shape, 1e-5);
        check_bf16(&gpu, &blas, &mut rng, shape);
        let c = shape.2;
        let case = AttnBackwardCase::new::<f32>(&mut rng, shape);
        let (want, got) = (case.reference(), case.run::<f32>(&gpu, &blas, Dinp::Accumulate));
        for ((g, w), name) in thirds(&got, c).iter().zip(thirds(&want, c).iter()).zip(["dq", "dk", "dv"]) {
            let err = rel_error(g, w, &format!("vec backward {shape:?} {name}"));
            assert!(err < 1e-5, "vec backward {shape:?}: {name} relative error {err:.3e} >= 1e-5");
        }
        assert_same_bits(
            &format!("vec backward {shape:?}: second run"),
            &case.run::<f32>(&gpu, &blas, Dinp::Accumulate),
            &got,
        );
        let case = AttnBackwardCase::new::<bf16>(&mut rng, shape);
        let (want, got) = (case.reference(), case.run::<bf16>(&gpu, &blas, Dinp::Accumulate));
        for ((g, w), name) in thirds(&got, c).iter().zip(thirds(&want, c).iter()).zip(["dq", "dk", "dv"]) {
            check_bf16_close(g, w, None, BF16_BACKWARD_K * BF16_U, &format!("vec backward bf16 {shape:?} {name}"));
        }
        println!("attention vec softmax {shape:?}: f32 and bf16 forward and backward within the scalar tolerances");
    }
}

// ---- dqkv overwritten (Dinp::Overwrite: attention_backward_unpermute[_vec]; used with --kernels vector) ----

/// attention_backward writes each element of dqkv once, so overwriting it must give the bits of
/// accumulating onto a zeroed dqkv (a zero's sign aside, see [`assert_overwrite_bits`]): the same
/// case in `T` run with dqkv prefilled with zeros and accumulated into, and prefilled with NaN and
/// overwritten (any read of the old dqkv, even a 0 * old, would carry the NaN into the result), on
/// the scalar kernels and on the vector ones (head sizes whole packs; the last shape has T a
/// multiple of 8, so the _vec softmax too).
fn check_backward_overwrite<T: Float>(gpu: &Gpu, blas: &Blas, seed: u64) {
    let mut rng = Rng::new(seed);
    for kernels in [Kernels::Scalar, Kernels::Vector] {
        for &shape in &[(1usize, 5usize, 32usize, 4usize), (2, 17, 64, 4), (2, 64, 768, 12)] {
            let mut case = AttnBackwardCase::new::<T>(&mut rng, shape);
            let len = case.dqkv0.len();
            gpu.set_kernels(kernels);
            case.dqkv0 = vec![0.0; len];
            let zeroed = case.run::<T>(gpu, blas, Dinp::Accumulate);
            case.dqkv0 = vec![f32::NAN; len];
            let overwritten = case.run::<T>(gpu, blas, Dinp::Overwrite);
            gpu.set_kernels(Kernels::Scalar);
            let what = format!("attention_backward overwrite{} ({kernels}) (B,T,C,NH) = {shape:?}", T::SUFFIX);
            assert_overwrite_bits(&format!("{what}: dqkv vs accumulating onto zeros"), &overwritten, &zeroed);
            println!("{what}: bit-identical to accumulating onto zeros");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_backward_overwrite_matches_accumulating_onto_zeros() {
    let Some(gpu) = gpu_or_skip() else { return };
    let blas = Blas::new(&gpu, false).expect("Blas::new");
    check_backward_overwrite::<f32>(&gpu, &blas, 0x6174_6f77_7200_0001);
    check_backward_overwrite::<bf16>(&gpu, &blas, 0x6174_6f77_7200_0002);
}
