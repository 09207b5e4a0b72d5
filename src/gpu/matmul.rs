//! Matmul forward on cuBLASLt: `out = inp @ weight^T (+ bias) (then GELU)`, the CUDA counterpart
//! of `src/cpu/matmul.rs`, with bias and GELU fused into the GEMM epilogue.
//!
//! Row-major to column-major: a row-major (R, C) matrix is, byte for byte, a column-major (C, R)
//! matrix with leading dimension C. So cuBLASLt computes the transposed problem
//!   out^T (OC, N) = weight (OC, C) · inp^T (C, N)
//! where, in column-major terms, the weight buffer is a (C, OC) matrix (ld C) used transposed
//! (`transa = T`), the input buffer is a (C, N) matrix (ld C) used as is (`transb = N`), and the
//! output buffer is (OC, N) with ld OC: m = OC, n = N, k = C. The bias (length m = OC) is added
//! per output channel by the BIAS / GELU / GELU_BIAS epilogue (cuBLASLt's GELU is the tanh form).
//!
//! Generic over the storage type ([`Float`]): f32, or bf16 for every operand (input, weight, bias,
//! output) with fp32 accumulation, bias and GELU applied in fp32 and one rounding to bf16 at the
//! end (`CUBLAS_COMPUTE_32F`; see [`super::blas::GemmDtype`]).

use std::sync::Arc;

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut};

use super::blas::{Blas, Epilogue, GemmDtype, LtGemm};
use super::device::Gpu;
use super::Float;

/// `out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC)`, then tanh-GELU when `gelu`, queued on
/// `gpu.stream()`. All buffers row-major; `out` is overwritten (never read).
/// The bias and GELU run in the GEMM epilogue (BIAS, GELU or GELU_BIAS). `T` is `f32` or
/// `half::bf16` (all operands the same type, fp32 accumulation either way).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    out: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    bias: Option<&CudaView<'_, T>>,
    n: usize,
    c: usize,
    oc: usize,
    gelu: bool,
) -> Result<()> {
    ensure!(c > 0, "matmul_forward: C must be positive");
    ensure!(out.len() >= n * oc, "matmul_forward: out has {} < N*OC = {}", out.len(), n * oc);
    ensure!(inp.len() >= n * c, "matmul_forward: inp has {} < N*C = {}", inp.len(), n * c);
    ensure!(weight.len() >= oc * c, "matmul_forward: weight has {} < OC*C = {}", weight.len(), oc * c);
    if let Some(bias) = bias {
        ensure!(bias.len() >= oc, "matmul_forward: bias has {} < OC = {oc}", bias.len());
    }
    ensure!(
        Arc::ptr_eq(blas.stream(), gpu.stream()),
        "matmul_forward: blas was created for a different stream than gpu"
    );
    let dtype = GemmDtype::of::<T>()?;
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let epilogue = match (bias.is_some(), gelu) {
        (false, false) => Epilogue::None,
        (false, true) => Epilogue::Gelu,
        (true, false) => Epilogue::Bias,
        (true, true) => Epilogue::GeluBias,
    };

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (w_ptr, _w_guard) = weight.device_ptr(stream);
    let bias_guarded = bias.map(|b| b.device_ptr(stream));
    let bias_ptr = bias_guarded.as_ref().map_or(0, |(p, _)| *p);

    let gemm = LtGemm {
        m: oc,
        n,
        k: c,
        trans_a: true,
        trans_b: false,
        a: w_ptr,
        lda: c,
        b: inp_ptr,
        ldb: c,
        d: out_ptr,
        ldd: oc,
        bias: bias_ptr,
        epilogue,
        accumulate: false,
        dtype,
    };
    // SAFETY: the lengths checked above cover every element the GEMM reads or writes (weight
    // OC*C, inp N*C, out N*OC, bias OC); the guards keep the buffers stream-ordered until after
    // the work is queued on the same stream `blas` uses.
    unsafe { blas.lt_matmul(&gemm) }
        .with_context(|| format!("matmul_forward<{dtype:?}> N={n} C={c} OC={oc} bias={} gelu={gelu}", bias.is_some()))
}
