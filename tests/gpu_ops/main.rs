//! Every CUDA kernel against its CPU reference, one file per op family (named like
//! `src/cpu/<op>.rs`, `src/gpu/<op>.rs` and `kernels/<op>.cu`).
//!
//! Every test that needs a GPU is `#[ignore = "needs a CUDA GPU"]`, so a plain `cargo test`
//! reports it as ignored rather than passed; on a GPU machine run them with
//! `cargo test --release --test gpu_ops -- --include-ignored` (`scripts/gpu-verify.sh` and
//! `gpu-stage`'s `run-tests.sh` do). Included without a usable GPU, each prints `skipping: <reason>`
//! and passes, unless `GENESIS_REQUIRE_GPU=1`, in which case it fails.

mod adamw;
mod attention;
mod classifier;
mod embedding;
mod flash_attention;
mod gelu;
mod gpt;
mod layernorm;
mod matmul;
mod sample;
mod train;

#[path = "../common/mod.rs"]
mod common;

use cudarc::driver::CudaSlice;
use genesis::gpu::device::{cuda_available, Gpu};
use genesis::gpu::Float;
use genesis::rng::Rng;
use half::bf16;

/// The tests here that need no GPU (they check how Genesis behaves without one); every other test
/// must be ignored by default. [`gpu_tests_are_marked_ignored`] holds the files to that.
const RUN_WITHOUT_GPU: [&str; 3] = [
    "cuda_available_reports_instead_of_panicking",
    "fatbin_present_iff_built_with_kernels",
    "gpu_new_errors_cleanly_without_cuda",
];

#[test]
fn gpu_tests_are_marked_ignored() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpu_ops");
    let mut unmarked = Vec::new();
    let mut tests = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() != "#[test]" {
                continue;
            }
            tests += 1;
            let name = lines[i + 1..].iter().find_map(|l| l.trim().strip_prefix("fn ")).unwrap_or("?");
            let name = name.split('(').next().unwrap();
            let ignored = lines[i + 1].trim() == "#[ignore = \"needs a CUDA GPU\"]";
            if !ignored && !RUN_WITHOUT_GPU.contains(&name) && name != "gpu_tests_are_marked_ignored" {
                unmarked.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(tests > 70, "found only {tests} tests in {}", dir.display());
    assert!(unmarked.is_empty(), "GPU tests without #[ignore = \"needs a CUDA GPU\"]: {unmarked:?}");
}

/// `Some(gpu)` when CUDA works here; otherwise skips (or panics when `GENESIS_REQUIRE_GPU=1`).
pub fn gpu_or_skip() -> Option<Gpu> {
    let require = std::env::var("GENESIS_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1");
    if let Err(reason) = cuda_available() {
        if require {
            panic!("GENESIS_REQUIRE_GPU=1 but CUDA is unavailable: {reason}");
        }
        println!("skipping: {reason}");
        return None;
    }
    Some(Gpu::new(0).expect("CUDA reported available but Gpu::new(0) failed"))
}

/// The kernel tests' random inputs, drawn from `genesis::rng::Rng`.
pub trait Uniform {
    /// Uniform in [-1, 1), a multiple of 2^-23 (24 random bits), so exact in f32.
    fn uniform(&mut self) -> f32;

    /// `n` values of [`Uniform::uniform`].
    fn uniform_vec(&mut self, n: usize) -> Vec<f32>;
}

impl Uniform for Rng {
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// Rounds to `T` (round-to-nearest-even for bf16).
pub fn round<T: Float>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Widens `T` values to f32 (exact).
pub fn widen<T: Float>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// `x` rounded to bf16, and those values back in f32 (exact) for a CPU reference.
pub fn to_bf16(x: &[f32]) -> (Vec<bf16>, Vec<f32>) {
    let h: Vec<bf16> = round(x);
    let back = widen(&h);
    (h, back)
}

/// f32 values in f64 (exact), for the f64 references.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

// ---- device buffers ----

/// Extra elements past the end of a buffer (poisoned outputs, pre-filled gradients, padded
/// inputs) that the kernels must leave alone.
pub const TAIL: usize = 5;

/// A device buffer of `len` NaNs: an output element the kernel fails to write stays NaN.
pub fn nan_buffer<T: Float>(gpu: &Gpu, len: usize) -> CudaSlice<T> {
    gpu.stream().clone_htod(&vec![T::from_f32(f32::NAN); len]).unwrap()
}

/// A device buffer of `len + TAIL` NaNs, so an element the kernel fails to write (or writes past)
/// shows; read it back with [`download`].
pub fn poisoned<T: Float>(gpu: &Gpu, len: usize) -> CudaSlice<T> {
    nan_buffer(gpu, len + TAIL)
}

/// The first `len` elements of `buf` as f32 (exact for bf16), after checking that every element
/// past them is still NaN (as [`poisoned`] left it).
pub fn download<T: Float>(gpu: &Gpu, what: &str, buf: &CudaSlice<T>, len: usize) -> Vec<f32> {
    let host = gpu.stream().clone_dtoh(buf).unwrap();
    assert!(host[len..].iter().all(|x| x.to_f32().is_nan()), "{what}: written past its first {len} elements");
    widen(&host[..len])
}

/// Asserts that `got`, a gradient a backward op overwrote ([`genesis::gpu::Dinp::Overwrite`]), has
/// the bits of `want`, the same gradient accumulated onto zeros, except that a zero may differ in
/// sign: accumulating adds onto +0, and +0 + -0 = +0, while the overwrite stores the -0 as it is.
pub fn assert_overwrite_bits(what: &str, got: &[f32], want: &[f32]) {
    let unsigned_zero = |v: &[f32]| v.iter().map(|&x| if x == 0.0 { 0.0 } else { x }).collect::<Vec<f32>>();
    common::assert_same_bits(what, &unsigned_zero(got), &unsigned_zero(want));
}

// ---- closeness of GPU results (f32, or bf16 widened) to f64 references ----
//
// Two measures, kept apart because their bounds were reasoned differently:
// - relative to the whole tensor: max |got - want| against max |want| ([`rel_error`], for the
//   caller to bound strictly, `err < tol`; [`assert_close`] and [`assert_close_floor`], which
//   bound it themselves, `<=`, optionally against a floor for sums that can cancel);
// - per element: |got - want| against a bound of that element's own |want| plus a share of the
//   tensor's ([`assert_elementwise`], [`check_bf16_close`]), for bf16 outputs whose last rounding
//   is relative to each value.

/// bf16's unit roundoff: round-to-nearest moves a value by at most this times its magnitude (8
/// significant bits: half an ulp is 2^-9 to 2^-8 of the value, so 2^-8 is the bound).
pub const BF16_U: f64 = 1.0 / 256.0;

/// The largest |want| (0 for none; NaNs are passed over).
pub fn max_ref(want: &[f64]) -> f64 {
    want.iter().fold(0.0f64, |m, w| m.max(w.abs()))
}

/// The index and size of the largest |got - want| (the first of equals; NaN differences are passed
/// over, and (0, 0.0) when there is none).
pub fn max_abs_error(got: &[f32], want: &[f64]) -> (usize, f64) {
    let errors = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs());
    errors.enumerate().fold((0, 0.0f64), |best, (i, e)| if e > best.1 { (i, e) } else { best })
}

/// The largest |a - b| over the pairs, each difference taken in f64 (exact for f32 values); compare
/// `common::max_abs_diff`, which rounds each difference to f32.
pub fn max_abs_diff_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((f64::from(x) - f64::from(y)).abs()))
}

/// max |got - want| / max |want|, panicking on any non-finite value (an unwritten NaN) and on an
/// all-zero reference. The caller bounds it (strictly).
pub fn rel_error(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (expected {w}): not written?");
    }
    let max_ref = max_ref(want);
    assert!(max_ref > 0.0, "{what}: reference is all zeros");
    max_abs_error(got, want).1 / max_ref
}

/// [`assert_close_floor`] without a floor: max |got - want| <= tol * max |want|.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    assert_close_floor(what, got, want, tol, 0.0)
}

/// Asserts max |got - want| <= tol * max(max |want|, `floor`) and returns max |got - want| relative
/// to that scale (0 when the scale is 0). Every `got` must be finite, except where `want` is NaN:
/// there `got` must be NaN too, and the element is left out of the comparison. `floor` is for
/// sums that can cancel to near zero while their rounding errors scale with the terms added.
pub fn assert_close_floor(what: &str, got: &[f32], want: &[f64], tol: f64, floor: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} is {g}, expected NaN");
        } else {
            assert!(g.is_finite(), "{what}: element {i} is {g} (unwritten?), expected {w}");
        }
    }
    let max_ref = max_ref(want).max(floor);
    let (worst, max_err) = max_abs_error(got, want);
    assert!(
        max_err <= tol * max_ref,
        "{what}: max abs error {max_err:e} at {worst} (gpu {} vs ref {}) exceeds {tol:e} * max |ref| {max_ref}",
        got[worst],
        want[worst]
    );
    if max_ref > 0.0 {
        max_err / max_ref
    } else {
        0.0
    }
}

/// Asserts every `got` is finite and |got - want| <= rtol |want| + atol per element; returns the
/// worst error as a fraction of its bound. For a bf16 output, rtol is [`BF16_U`] (its one rounding)
/// or more, and atol the f32 arithmetic's error before it, in units of max |want|.
pub fn assert_elementwise(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (unwritten?), expected {w}");
        let err = (f64::from(g) - w).abs();
        let tol = rtol * w.abs() + atol;
        assert!(err <= tol, "{what}: at {i}: gpu {g} vs ref {w}, error {err:e} > {tol:e}");
        worst = worst.max(err / tol);
    }
    worst
}

/// Checks `|got - want| <= 2^-8 (|want| + 1.2 |acc|) + slack * max|want|` for every element and
/// returns max |got - want| / max |want| (unlike [`assert_elementwise`], which returns the worst
/// fraction of the bound). `acc` is a GEMM's product before its epilogue (bias, GELU): cuBLASLt
/// rounds it to bf16 before applying a bias epilogue (seen on an H200: an element of -0.0209 made
/// of a product near 0.5 and a bias near -0.52 came back 1.3e-3 off), so that rounding, carried
/// through GELU (slope at most 1.13), bounds the error too. Without an epilogue pass `acc = None`.
/// Panics on a non-finite value (an unwritten NaN) and on an all-zero reference.
pub fn check_bf16_close(got: &[f32], want: &[f64], acc: Option<&[f64]>, slack: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max_ref = max_ref(want);
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

/// ||a - b|| / ||b|| over a tensor.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        n += (y as f64).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}
