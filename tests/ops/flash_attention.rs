//! The flash-attention CPU model (`src/cpu/flash_attention.rs`, the bf16 kernel's specification)
//! against the attention reference (`src/cpu/attention.rs`) run in f64, forward and backward.
//!
//! The model rounds to bf16 at the kernel's points, so it cannot match f64 closely; each output
//! element is checked against an a-priori error bound built, element by element, from the f64
//! reference's own quantities (see `bounds`), instead of one loose tolerance for the whole tensor.
//! Inputs (qkv, dout) are random normal numbers rounded to bf16, none zero, so model and reference
//! see identical inputs and all the error comes from the rounding points.
//!
//! What these checks can and cannot see: any error larger than the bf16 rounding budget (a wrong
//! mask, a dropped rescale, D or lse wrong, an element not written, nondeterminism) fails them; a
//! *missing* rounding point does not (dropping the bf16 rounding of dS only makes the model more
//! accurate, and it passes). That the model rounds where the kernel does is for the kernel's GPU
//! test against this model to show: there the two should agree to about one bf16 ulp.

use super::*;
use genesis::cpu::attention::{attention_backward, attention_forward};
use genesis::cpu::flash_attention::{
    flash_attention_backward, flash_attention_forward, query_tile_of_block, round_bf16, softmax_scale, z_scale, BC, BR,
};

/// Unit roundoff of bf16 with round to nearest even: 8 significant bits, |bf16(x) - x| <= 2^-8 |x|.
const U: f64 = 1.0 / 256.0;
/// All the f32 arithmetic of the model, relative to the sum of the absolute values of the terms
/// that make up a value: f32 sums of at most T + hs <= 1088 terms err by <= 1088 * 2^-24 < 2^-13.9
/// of their absolute sum; P = exp2(z - lse) inherits the error of z (an f32 dot of 64 bf16 products,
/// <= 66 * 2^-24 * zs * sum|q k| < 2^-16 at the sum|q k| < 100 of these inputs) and of lse (< 2^-13,
/// below), so its relative error is < ln2 * 2^-12.8 < 2^-13.3. 2^-11 leaves a margin of 4 over
/// their sum; it is 1/8 of U, so the bounds are dominated by the bf16 rounding points.
const E: f64 = 1.0 / 2048.0;

/// Random normal values times `scale`, rounded to bf16, none zero.
fn bf16_randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let x = round_bf16((rng.normal() * scale) as f32);
            if x != 0.0 {
                break x;
            }
        })
        .collect()
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

struct Model {
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

/// The model's forward and backward; dqkv is poisoned with NaN first, so an element the backward
/// does not write stays NaN.
fn run_model(qkv: &[f32], dout: &[f32], b: usize, t: usize, c: usize, nh: usize) -> Model {
    let (mut out, mut lse) = (vec![f32::NAN; b * t * c], vec![f32::NAN; b * nh * t]);
    flash_attention_forward(&mut out, &mut lse, qkv, b, t, c, nh);
    let mut dqkv = vec![f32::NAN; b * t * 3 * c];
    flash_attention_backward(&mut dqkv, dout, qkv, &out, &lse, b, t, c, nh);
    Model { out, lse, dqkv }
}

struct Reference {
    out: Vec<f64>,
    att: Vec<f64>,
    dqkv: Vec<f64>,
}

fn run_reference(qkv: &[f64], dout: &[f64], b: usize, t: usize, c: usize, nh: usize) -> Reference {
    let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention_forward(&mut out, &mut att, qkv, b, t, c, nh);
    let mut dqkv = vec![0.0; b * t * 3 * c];
    attention_backward(&mut dqkv, dout, qkv, &att, b, t, c, nh);
    Reference { out, att, dqkv }
}

/// The exact lse (B,NH,T) in the model's units: log2 of the softmax denominator of z = s * log2(e),
/// i.e. (max s + ln sum exp(s - max s)) * log2(e) with s = q·k / sqrt(hs), in f64.
/// Also the largest zs * sum_d |q_d k_d| of each row (the size of the f32 error of z).
fn reference_lse(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let (mut lse, mut zabs) = (vec![0.0; b * nh * t], vec![0.0; b * nh * t]);
    for bi in 0..b {
        for h in 0..nh {
            let q = |ti: usize| &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
            let k = |ti: usize| &qkv[(bi * t + ti) * 3 * c + c + h * hs..][..hs];
            for t1 in 0..t {
                let s: Vec<f64> = (0..=t1).map(|t2| dot(q(t1), k(t2)) * scale).collect();
                let m = s.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                let sum: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let row = (bi * nh + h) * t + t1;
                lse[row] = (m + sum.ln()) * std::f64::consts::LOG2_E;
                zabs[row] = (0..=t1)
                    .map(|t2| q(t1).iter().zip(k(t2)).map(|(x, y)| (x * y).abs()).sum::<f64>())
                    .fold(0.0, f64::max)
                    * scale
                    * std::f64::consts::LOG2_E;
            }
        }
    }
    (lse, zabs)
}

/// Error bounds for the model's out (B,T,C) and dqkv (B,T,3C), element by element, from the exact
/// (f64) attention P, out and gradients. Each bf16 rounding point contributes U times the absolute
/// value rounded; a rounding inside a sum contributes U times the sum of the absolute values of its
/// terms (the worst case: all the rounding errors of the same sign). With s = 1/sqrt(hs):
/// - out = bf16(sum_k bf16(P_k) V_k / l):  |e| <= U |out| + (U + E) sum_k P_k |V_k|
/// - D = dout · bf16(out):                 |e_D| <= sum_d |dout_d| bound(out_d) + E sum_d |dout_d out_d|
/// - dS = bf16(P (dP - D)):                |e_dS| <= U |dS| + P (e_D + E (|dP| + |D| + sum_d |dout_d v_d|))
/// - dv = bf16(sum_q bf16(P) dout_q):      |e| <= U |dv| + (U + E) sum_q P |dout_q|
/// - dk = bf16(s sum_q bf16(dS) q_q):      |e| <= U |dk| + s sum_q (e_dS + E |dS|) |q_q|
/// - dq = bf16(s sum_k bf16(dS) k_k):      |e| <= U |dq| + s sum_k (e_dS + E |dS|) |k_k|
///
/// each times (1 + U) for the rounding of a value that is itself off by its bound (second order).
fn bounds(qkv: &[f64], dout: &[f64], r: &Reference, b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
    let hs = c / nh;
    let s = 1.0 / (hs as f64).sqrt();
    let (mut ob, mut gb) = (vec![0.0; b * t * c], vec![0.0; b * t * 3 * c]);
    for bi in 0..b {
        for h in 0..nh {
            let at = |ti: usize, part: usize| (bi * t + ti) * 3 * c + part * c + h * hs;
            let row = |ti: usize| (bi * t + ti) * c + h * hs;
            let (q, k, v) = (
                |ti: usize| &qkv[at(ti, 0)..][..hs],
                |ti: usize| &qkv[at(ti, 1)..][..hs],
                |ti: usize| &qkv[at(ti, 2)..][..hs],
            );
            let dy = |ti: usize| &dout[row(ti)..][..hs];
            let p = &r.att[(bi * nh + h) * t * t..][..t * t];
            // out, and the error of D through it.
            let mut ed = vec![0.0; t];
            let mut dd = vec![0.0; t];
            for t1 in 0..t {
                let y = &r.out[row(t1)..][..hs];
                let mut e_d = 0.0;
                for e in 0..hs {
                    let a: f64 = (0..=t1).map(|t2| p[t1 * t + t2] * v(t2)[e].abs()).sum();
                    let bound = (1.0 + U) * (U * y[e].abs() + (U + E) * a);
                    ob[row(t1) + e] = bound;
                    e_d += dy(t1)[e].abs() * (bound + E * y[e].abs());
                }
                ed[t1] = e_d;
                dd[t1] = dot(dy(t1), y);
            }
            // dS and its bound, then the three gradients.
            let (mut dkb, mut dvb, mut dqb) = (vec![0.0; t * hs], vec![0.0; t * hs], vec![0.0; t * hs]);
            for t1 in 0..t {
                for t2 in 0..=t1 {
                    let pk = p[t1 * t + t2];
                    let dp = dot(dy(t1), v(t2));
                    let dp_abs: f64 = dy(t1).iter().zip(v(t2)).map(|(x, y)| (x * y).abs()).sum();
                    let ds = pk * (dp - dd[t1]);
                    let e_ds = (1.0 + U) * (U * ds.abs() + pk * (ed[t1] + E * (dp.abs() + dd[t1].abs() + dp_abs)));
                    let w = e_ds + E * ds.abs();
                    for e in 0..hs {
                        dvb[t2 * hs + e] += (U + E) * pk * dy(t1)[e].abs();
                        dkb[t2 * hs + e] += s * w * q(t1)[e].abs();
                        dqb[t1 * hs + e] += s * w * k(t2)[e].abs();
                    }
                }
            }
            for ti in 0..t {
                for e in 0..hs {
                    let i = ti * hs + e;
                    gb[at(ti, 0) + e] = (1.0 + U) * (U * r.dqkv[at(ti, 0) + e].abs() + dqb[i]);
                    gb[at(ti, 1) + e] = (1.0 + U) * (U * r.dqkv[at(ti, 1) + e].abs() + dkb[i]);
                    gb[at(ti, 2) + e] = (1.0 + U) * (U * r.dqkv[at(ti, 2) + e].abs() + dvb[i]);
                }
            }
        }
    }
    (ob, gb)
}

/// a / b, and 0 for 0 / 0 (T = 1 has dq = dk = 0 exactly, in the model as in the reference).
fn frac(a: f64, b: f64) -> f64 {
    if a == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Fails naming the worst element of `model` against `reference` unless every error is within its
/// bound (NaN fails). Prints the worst error as a fraction of its bound, the max error relative to the
/// tensor's largest magnitude, and the RMS error relative to the tensor's RMS, for the record.
fn check_within(
    case: &str,
    what: &str,
    model: &[f32],
    reference: &[f64],
    bound: &[f64],
    names: impl Fn(usize) -> String,
) {
    assert_eq!(model.len(), reference.len());
    let mut worst = (0.0f64, usize::MAX);
    let (mut max_err, mut max_ref, mut se, mut sr) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for i in 0..model.len() {
        let err = (model[i] as f64 - reference[i]).abs();
        let ratio = if err == 0.0 { 0.0 } else { err / bound[i] };
        if ratio.is_nan() || ratio > worst.0 {
            worst = (ratio, i);
        }
        max_err = max_err.max(err);
        max_ref = max_ref.max(reference[i].abs());
        se += err * err;
        sr += reference[i] * reference[i];
    }
    eprintln!(
        "{case} {what}: worst error {:.3} of its bound, max error {:.2e} of max |ref|, rms error {:.2e} of rms",
        worst.0,
        frac(max_err, max_ref),
        frac(se, sr).sqrt()
    );
    if worst.0.is_nan() || worst.0 > 1.0 {
        let i = worst.1;
        panic!(
            "{case}: {what}[{}] model {:e} vs f64 reference {:e}: error {:.3e} exceeds its bound {:.3e} ({:.1}x)",
            names(i),
            model[i],
            reference[i],
            (model[i] as f64 - reference[i]).abs(),
            bound[i],
            worst.0
        );
    }
}

/// The whole comparison for one shape: forward (out, lse) and backward (dq, dk, dv) against the f64
/// reference within the bounds; every dqkv element written; two backward runs bit-identical.
fn compare(seed: u64, b: usize, t: usize, nh: usize, hs: usize) {
    let c = nh * hs;
    let case = format!("B={b} T={t} NH={nh} hs={hs}");
    let mut rng = Rng::new(seed);
    let qkv = bf16_randn(&mut rng, b * t * 3 * c, 1.0);
    let dout = bf16_randn(&mut rng, b * t * c, 1.0);
    let m = run_model(&qkv, &dout, b, t, c, nh);
    let (qkv64, dout64) = (to_f64(&qkv), to_f64(&dout));
    let r = run_reference(&qkv64, &dout64, b, t, c, nh);
    let (lse_ref, zabs) = reference_lse(&qkv64, b, t, c, nh);
    let (ob, gb) = bounds(&qkv64, &dout64, &r, b, t, c, nh);

    let at_btc = |i: usize| format!("b{} t{} h{} d{}", i / (t * c), i / c % t, i % c / hs, i % hs);
    check_within(&case, "out", &m.out, &r.out, &ob, at_btc);
    // lse: z carries the f32 error of a 64-term dot (<= 66 * 2^-24 * zabs < 2^-17.9 zabs), the sum l
    // of at most T f32 terms errs by < T * 2^-24 <= 2^-14 relative (2^-13.5 after log2), and
    // m + log2(l) rounds once more (2^-24 |lse|); the bound doubles each term.
    let lse_bound: Vec<f64> = (0..lse_ref.len())
        .map(|i| 2.0 * (zabs[i] * 66.0 / 16777216.0 + 1.0 / 11585.0 + lse_ref[i].abs() / 16777216.0))
        .collect();
    check_within(&case, "lse", &m.lse, &lse_ref, &lse_bound, |i| {
        format!("b{} h{} t{}", i / (nh * t), i / t % nh, i % t)
    });
    // Every element written by the backward (dqkv was NaN before it), then each slot within bounds.
    if let Some(i) = m.dqkv.iter().position(|x| x.is_nan()) {
        panic!("{case}: dqkv[{i}] was not written by the backward (still the NaN poison)");
    }
    let slot = |part: usize| -> Vec<usize> { (0..b * t * 3 * c).filter(|i| i % (3 * c) / c == part).collect() };
    for (part, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        let idx = slot(part);
        let pick32 = |x: &[f32]| idx.iter().map(|&i| x[i]).collect::<Vec<f32>>();
        let pick64 = |x: &[f64]| idx.iter().map(|&i| x[i]).collect::<Vec<f64>>();
        check_within(&case, name, &pick32(&m.dqkv), &pick64(&r.dqkv), &pick64(&gb), |j| {
            let i = idx[j];
            format!("b{} t{} h{} d{}", i / (t * 3 * c), i / (3 * c) % t, i % c / hs, i % hs)
        });
    }
    // Determinism: a second forward and backward give the same bits.
    let again = run_model(&qkv, &dout, b, t, c, nh);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert!(bits(&again.out) == bits(&m.out) && bits(&again.lse) == bits(&m.lse), "{case}: forward not deterministic");
    assert!(bits(&again.dqkv) == bits(&m.dqkv), "{case}: backward not deterministic");
}

#[test]
fn flash_attention_t1() {
    compare(161, 2, 1, 2, 64);
}

#[test]
fn flash_attention_odd_t() {
    compare(162, 1, 7, 1, 64);
}

#[test]
fn flash_attention_t_not_a_multiple_of_the_tile() {
    compare(163, 1, 100, 2, 64);
}

#[test]
fn flash_attention_tile_edges() {
    // One full tile, one row past it, two full tiles.
    for (seed, t) in [(164, BR), (165, BR + 1), (166, 2 * BR)] {
        compare(seed, 1, t, 1, 64);
    }
}

#[test]
fn flash_attention_several_batches_and_heads() {
    compare(167, 2, 70, 3, 64);
}

#[test]
fn flash_attention_t1024() {
    compare(168, 1, 1024, 1, 64);
}

#[test]
fn flash_attention_other_head_size() {
    // The kernel has hs = 64 only; the model takes any (scale 1/sqrt(hs)).
    compare(169, 1, 90, 2, 32);
}

/// The f64 reference used above is `src/cpu/attention.rs` instantiated at f64; its f32 instance (what
/// the CPU engine trains with) agrees with it to f32 accuracy, on the same bf16 inputs.
#[test]
fn flash_attention_reference_in_f64_matches_the_f32_reference() {
    let (b, t, nh, hs) = (2, 70, 2, 64);
    let c = nh * hs;
    let mut rng = Rng::new(170);
    let qkv = bf16_randn(&mut rng, b * t * 3 * c, 1.0);
    let dout = bf16_randn(&mut rng, b * t * c, 1.0);
    let r = run_reference(&to_f64(&qkv), &to_f64(&dout), b, t, c, nh);
    let (mut out, mut att) = (vec![0.0f32; b * t * c], vec![0.0f32; b * nh * t * t]);
    attention_forward(&mut out, &mut att, &qkv, b, t, c, nh);
    let mut dqkv = vec![0.0f32; b * t * 3 * c];
    attention_backward(&mut dqkv, &dout, &qkv, &att, b, t, c, nh);
    // f32 sums of <= T + hs terms and the fast exp (4 ulp): well under 1e-4 of the largest value.
    for (name, x, y) in [("out", &out, &r.out), ("dqkv", &dqkv, &r.dqkv)] {
        let max = y.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = x.iter().zip(y.iter()).fold(0.0f64, |a, (&p, &q)| a.max((p as f64 - q).abs()));
        assert!(err <= 1e-4 * max, "{name}: f32 reference off the f64 one by {err:e} (max |value| {max:e})");
    }
}

#[test]
fn flash_attention_constants_and_block_order() {
    assert_eq!((BR, BC), (64, 64));
    assert_eq!(z_scale(64), (0.125 * std::f64::consts::LOG2_E) as f32);
    assert_eq!(softmax_scale(64), 0.125);
    // Longest first: block 0 gets the last query tile (the one with the most key tiles), and the
    // blocks cover every tile once.
    let tiles = 1024 / BR;
    let order: Vec<usize> = (0..tiles).map(|blk| query_tile_of_block(blk, tiles)).collect();
    assert_eq!(order[0], tiles - 1);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..tiles).collect::<Vec<_>>());
    assert!(order.windows(2).all(|w| w[0] > w[1]));
}

/// The kernel's own source (`kernels/flash_attention.cu`), with only its inline-PTX helpers
/// (ldmatrix, mma.sync, cp.async, shuffles) swapped for CPU emulations, run by
/// `scripts/flash_emu/run.sh` as 128 threads per block with real barriers, forward and backward,
/// against an f64 reference at bf16 tolerance, every output element checked to be written. A short
/// list here (T = 1, 65, 130, about 10 s); the script's default list and its eager cp.async mode
/// (which tests the refill barriers) run by hand. It catches a missing barrier, a wrong
/// wait_group count, swapped fragment registers or a dropped scale (each planted once and seen to
/// fail); it cannot see tensor-core rounding, real timing or bank conflicts. Needs bash, python3
/// and g++ (C++20).
#[test]
fn flash_attention_kernel_source_passes_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/flash_emu/run.sh"))
        .env("FLASH_EMU_T", "1 65 130")
        .env("FLASH_EMU_EAGER", "0")
        .output()
        .expect("bash runs scripts/flash_emu/run.sh (it needs python3 and g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the flash-attention kernel failed its CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{text}");
    println!("{text}");
}
