//! Matmul forward on cuBLASLt: `out = inp @ weight^T (+ bias) (then GELU)`, the CUDA counterpart
//! of `src/cpu/matmul.rs`, with bias and GELU fused into the GEMM epilogue; and the backward
//! ([`matmul_backward`]: two cuBLASLt GEMMs, dweight accumulating and dinp accumulating or
//! overwritten, and a deterministic bias reduction in `kernels/matmul.cu`). Behind
//! `--gelu-fusion` (not yet verified on a GPU), two variants move the training GELU into the
//! epilogues as well: [`matmul_forward_gelu_aux`] (GELU_AUX_BIAS: the GELU output and the
//! pre-GELU values from one GEMM) and [`matmul_backward_dgelu`] (DGELU: the GELU backward in the
//! dinp GEMM). Behind `--bias-grad epilogue` (not yet verified on a GPU), either backward takes
//! the bias gradient from the dweight GEMM's BGRADB epilogue instead of the reduction kernels
//! ([`BiasGrad`]).
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
//! end (`CUBLAS_COMPUTE_32F`; see [`super::blas::GemmDtype`]). In the backward the parameter
//! gradients (dweight, dbias) are f32 whatever the storage type; dinp has the storage type.

use std::sync::Arc;

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig};

use super::blas::{Blas, Epilogue, GemmDtype, LtGemm};
use super::device::{to_i32, Gpu};
use super::launch::Launch;
use super::{BiasGrad, Dinp, Float};

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
    forward_gemm(gpu, blas, out, None::<&mut CudaSlice<T>>, inp, weight, bias, n, c, oc, gelu)
}

/// `pre (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC)` and `out (N,OC) = gelu_tanh(pre)` from
/// one GEMM, queued on `gpu.stream()` (`--gelu-fusion forward|both`, not yet verified on a GPU):
/// the GELU_AUX_BIAS epilogue writes the GELU's output to `out` and its input, which the GELU
/// backward needs, to `pre`, so no `gelu_forward` kernel reads `pre` back. Both row-major and
/// overwritten (never read); cuBLASLt needs OC (their leading dimension) to be a multiple of 8
/// (refused otherwise). `pre` is what [`matmul_forward`] with the bias and without GELU writes,
/// the same GEMM; `out` is GELU applied to the fp32 result before it is rounded to `T`, where
/// `gelu_forward` on `pre` applies it to the rounded value (so in bf16 the two differ by up to
/// about one bf16 rounding of the output; in f32 they agree to fp32 rounding).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_gelu_aux<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    out: &mut impl DevicePtrMut<T>,
    pre: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    bias: &CudaView<'_, T>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    forward_gemm(gpu, blas, out, Some(pre), inp, weight, Some(bias), n, c, oc, true)
}

/// The one GEMM of [`matmul_forward`] (`pre` = None: epilogue None, BIAS, GELU or GELU_BIAS) and
/// of [`matmul_forward_gelu_aux`] (`pre` given, with a bias and `gelu`: GELU_AUX_BIAS writing
/// the pre-GELU values to `pre`).
#[allow(clippy::too_many_arguments)]
fn forward_gemm<T: Float, P: DevicePtrMut<T>>(
    gpu: &Gpu,
    blas: &Blas,
    out: &mut impl DevicePtrMut<T>,
    pre: Option<&mut P>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    bias: Option<&CudaView<'_, T>>,
    n: usize,
    c: usize,
    oc: usize,
    gelu: bool,
) -> Result<()> {
    let op = if pre.is_some() { "matmul_forward_gelu_aux" } else { "matmul_forward" };
    ensure!(c > 0, "{op}: C must be positive");
    ensure!(out.len() >= n * oc, "{op}: out has {} < N*OC = {}", out.len(), n * oc);
    if let Some(pre) = pre.as_ref() {
        ensure!(pre.len() >= n * oc, "{op}: pre has {} < N*OC = {}", pre.len(), n * oc);
    }
    ensure!(inp.len() >= n * c, "{op}: inp has {} < N*C = {}", inp.len(), n * c);
    ensure!(weight.len() >= oc * c, "{op}: weight has {} < OC*C = {}", weight.len(), oc * c);
    if let Some(bias) = bias {
        ensure!(bias.len() >= oc, "{op}: bias has {} < OC = {oc}", bias.len());
    }
    ensure!(Arc::ptr_eq(blas.stream(), gpu.stream()), "{op}: blas was created for a different stream than gpu");
    let dtype = GemmDtype::of::<T>()?;
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let epilogue = match (bias.is_some(), gelu, pre.is_some()) {
        (false, false, false) => Epilogue::None,
        (false, true, false) => Epilogue::Gelu,
        (true, false, false) => Epilogue::Bias,
        (true, true, false) => Epilogue::GeluBias,
        (true, true, true) => Epilogue::GeluAuxBias,
        (_, _, true) => anyhow::bail!("{op}: keeping the pre-GELU values needs a bias and GELU"),
    };

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (w_ptr, _w_guard) = weight.device_ptr(stream);
    let bias_guarded = bias.map(|b| b.device_ptr(stream));
    let bias_ptr = bias_guarded.as_ref().map_or(0, |(p, _)| *p);
    let pre_guarded = pre.map(|p| p.device_ptr_mut(stream));
    let aux_ptr = pre_guarded.as_ref().map_or(0, |(p, _)| *p);

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
        aux: aux_ptr,
        epilogue,
        accumulate: false,
        dtype,
        d_dtype: dtype,
    };
    // SAFETY: the lengths checked above cover every element the GEMM reads or writes (weight
    // OC*C, inp N*C, out N*OC, bias OC, and pre N*OC with the same (OC,N) ld OC layout as out);
    // the guards keep the buffers stream-ordered until after the work is queued on the same
    // stream `blas` uses.
    unsafe { blas.lt_matmul(&gemm) }.with_context(|| match epilogue {
        Epilogue::GeluAuxBias => format!("{op}<{dtype:?}> N={n} C={c} OC={oc}"),
        _ => format!("{op}<{dtype:?}> N={n} C={c} OC={oc} bias={} gelu={gelu}", bias.is_some()),
    })
}

/// Rows of `dout` per chunk of the deterministic bias-gradient reduction (see
/// `kernels/matmul.cu`): each chunk's column sums go to one row of the scratch.
const BIAS_ROWS_PER_CHUNK: usize = 256;
/// Threads per block of `matmul_bias_grad_partial`: 32 columns x 8 row lanes (the kernel's
/// shared array is sized for at most 8 row lanes).
const BIAS_BLOCK: (u32, u32, u32) = (32, 8, 1);
/// Threads per block of `matmul_bias_grad_finish`.
const BIAS_FINISH_BLOCK: u32 = 256;
/// Threads per block of `matmul_bias_grad_add` (one per element of dbias).
const BIAS_ADD_BLOCK: u32 = 256;

/// Elements of f32 scratch [`matmul_backward`] needs for the bias gradient of an (N, OC)
/// `dout` with [`BiasGrad::Reduce`] (the default): one row of OC partial column sums per chunk of
/// [`BIAS_ROWS_PER_CHUNK`] rows. Used only when a `dbias` is given.
pub fn matmul_backward_scratch_len(n: usize, oc: usize) -> usize {
    n.div_ceil(BIAS_ROWS_PER_CHUNK) * oc
}

/// Elements of f32 scratch [`matmul_backward`] and [`matmul_backward_dgelu`] need for the bias
/// gradient of an (N, OC) `dout` computed as `bias_grad` says: [`matmul_backward_scratch_len`]
/// for `Reduce`; for `Epilogue` the OC sums the BGRADB epilogue writes (none when N = 0, as
/// nothing is computed then). Never more for `Epilogue` than for `Reduce` (N >= 1 rows take at
/// least one chunk), so a scratch sized for the reduction serves both.
pub fn bias_grad_scratch_len(n: usize, oc: usize, bias_grad: BiasGrad) -> usize {
    match bias_grad {
        BiasGrad::Reduce => matmul_backward_scratch_len(n, oc),
        BiasGrad::Epilogue if n == 0 => 0,
        BiasGrad::Epilogue => oc,
    }
}

/// Matmul backward, queued on `gpu.stream()`, accumulating into the parameter gradients like
/// `cpu::matmul::matmul_backward`, and into dinp or over it as `store` says:
/// - `dinp (N,C) += dout (N,OC) @ weight (OC,C)` ([`Dinp::Accumulate`], as the CPU), or
///   `dinp = dout @ weight` ([`Dinp::Overwrite`]: beta = 0, dinp's old contents are never read,
///   so it needs no zeroing; the same GEMM plan, so the bits of accumulating onto zeros)
/// - `dweight (OC,C) += dout^T @ inp (N,C)`
/// - `dbias (OC) += column sums of dout`, when given, computed as `bias_grad` says (`scratch`
///   then needs [`bias_grad_scratch_len`] elements; otherwise it is not touched).
///
/// `T` (`f32` or `half::bf16`) is the storage type of `dout`, `inp`, `weight` and `dinp`; the
/// parameter gradients `dweight` and `dbias` (and the scratch) are f32 either way. With bf16 the
/// GEMMs compute in fp32 (`CUBLAS_COMPUTE_32F`): dinp is `bf16(dinp + fp32 GEMM)`, dweight
/// `dweight + fp32 GEMM` (bf16 inputs, fp32 C/D), and the bias reduction widens each bf16
/// `dout` on load and sums in fp32.
///
/// Both GEMMs run on cuBLASLt with C = D = the gradient buffer, updated in place: beta = 1, or
/// beta = 0 for an overwritten dinp.
/// In column-major terms (a row-major (R,K) buffer is a column-major (K,R) matrix, ld K):
/// - `dinp^T (C,N) = weight^T (C,OC) · dout^T (OC,N)`: A = weight buffer (C,OC) ld C as is,
///   B = dout buffer (OC,N) ld OC as is, D = dinp (C,N) ld C; m = C, n = N, k = OC.
/// - `dweight^T (C,OC) = inp^T (C,N) · dout (N,OC)`: A = inp buffer (C,N) ld C as is,
///   B = dout buffer (OC,N) ld OC transposed, D = dweight (C,OC) ld C; m = C, n = OC, k = N.
///
/// The bias gradient, with [`BiasGrad::Reduce`] (the default, the verified path), is a
/// fixed-order two-pass reduction (no atomics), so the whole backward is bit-for-bit reproducible
/// for a given GPU, cuBLAS and shape. With [`BiasGrad::Epilogue`] the dweight GEMM's BGRADB
/// epilogue writes the column sums (cuBLAS's order) into `scratch`, and `matmul_bias_grad_add`
/// adds them to dbias; whether that repeats bit for bit is for a GPU to show (see
/// `tests/gpu_ops/matmul.rs`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    dinp: &mut impl DevicePtrMut<T>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: Option<&mut CudaViewMut<'_, f32>>,
    scratch: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    n: usize,
    c: usize,
    oc: usize,
    store: Dinp,
    bias_grad: BiasGrad,
) -> Result<()> {
    let pre_gelu = None::<&CudaSlice<T>>;
    backward_gemms(gpu, blas, dinp, dweight, dbias, scratch, dout, inp, weight, pre_gelu, n, c, oc, store, bias_grad)
}

/// [`matmul_backward`] for a matmul whose input `inp` is `gelu_tanh(pre_gelu)` (the fcproj matmul
/// after the fc matmul's GELU), with the GELU backward applied in the dinp GEMM's epilogue
/// (DGELU; `--gelu-fusion both`, not yet verified on a GPU):
/// - `dinp (N,C) = (dout (N,OC) @ weight (OC,C)) * gelu_tanh'(pre_gelu (N,C))`, overwritten (beta
///   = 0; dinp is never read, so it needs no zeroing, whatever `--kernels` says): the gradient of
///   the GELU's input, what `matmul_backward` into a scratch followed by `gelu_backward` gives,
///   in one GEMM and without the scratch. cuBLASLt needs C (dinp's and pre_gelu's leading
///   dimension) to be a multiple of 8 (refused otherwise). In bf16 the product is not rounded
///   to bf16 before the GELU derivative multiplies it (one rounding instead of two).
/// - `dweight` and `dbias` accumulate exactly as in [`matmul_backward`] (the same GEMM and
///   bias gradient, `bias_grad` choosing it likewise: independent of the DGELU, which is the
///   dinp GEMM's epilogue, while BGRADB is the dweight GEMM's).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_dgelu<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    dinp: &mut impl DevicePtrMut<T>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: Option<&mut CudaViewMut<'_, f32>>,
    scratch: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    pre_gelu: &impl DevicePtr<T>,
    n: usize,
    c: usize,
    oc: usize,
    bias_grad: BiasGrad,
) -> Result<()> {
    let (pre_gelu, store) = (Some(pre_gelu), Dinp::Overwrite);
    backward_gemms(gpu, blas, dinp, dweight, dbias, scratch, dout, inp, weight, pre_gelu, n, c, oc, store, bias_grad)
}

/// The body of [`matmul_backward`] (`pre_gelu` = None: the dinp GEMM without an epilogue,
/// accumulating or overwriting as `store` says) and of [`matmul_backward_dgelu`] (`pre_gelu`
/// given, `store` = Overwrite: the dinp GEMM with the DGELU epilogue reading it); the bias
/// gradient as `bias_grad` says. The model calls it directly with its optional pre-GELU input (the
/// DGELU epilogue refuses to accumulate: `LtGemm::check`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_gemms<T: Float, P: DevicePtr<T>>(
    gpu: &Gpu,
    blas: &Blas,
    dinp: &mut impl DevicePtrMut<T>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: Option<&mut CudaViewMut<'_, f32>>,
    scratch: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    pre_gelu: Option<&P>,
    n: usize,
    c: usize,
    oc: usize,
    store: Dinp,
    bias_grad: BiasGrad,
) -> Result<()> {
    let op = if pre_gelu.is_some() { "matmul_backward_dgelu" } else { "matmul_backward" };
    ensure!(dinp.len() >= n * c, "{op}: dinp has {} < N*C = {}", dinp.len(), n * c);
    ensure!(dweight.len() >= oc * c, "{op}: dweight has {} < OC*C = {}", dweight.len(), oc * c);
    ensure!(dout.len() >= n * oc, "{op}: dout has {} < N*OC = {}", dout.len(), n * oc);
    ensure!(inp.len() >= n * c, "{op}: inp has {} < N*C = {}", inp.len(), n * c);
    ensure!(weight.len() >= oc * c, "{op}: weight has {} < OC*C = {}", weight.len(), oc * c);
    if let Some(pre) = pre_gelu {
        ensure!(pre.len() >= n * c, "{op}: pre_gelu has {} < N*C = {}", pre.len(), n * c);
        ensure!(store == Dinp::Overwrite, "{op}: the DGELU epilogue overwrites dinp; it cannot accumulate");
    }
    if let Some(dbias) = dbias.as_ref() {
        ensure!(dbias.len() >= oc, "{op}: dbias has {} < OC = {oc}", dbias.len());
        let need = bias_grad_scratch_len(n, oc, bias_grad);
        ensure!(scratch.len() >= need, "{op}: scratch has {} < {need}", scratch.len());
    }
    ensure!(Arc::ptr_eq(blas.stream(), gpu.stream()), "{op}: blas was created for a different stream than gpu");
    let dtype = GemmDtype::of::<T>()?;
    // (dinp would be a sum over an empty set, zeros, which no GEMM writes.)
    ensure!(
        oc > 0 || n * c == 0 || store == Dinp::Accumulate,
        "{op}: OC = 0 cannot overwrite dinp; use Dinp::Accumulate on a zeroed dinp"
    );
    // Every gradient is a sum over an empty set: nothing to add.
    if n == 0 || c == 0 || oc == 0 {
        return Ok(());
    }

    let stream = &**gpu.stream();
    let (dinp_ptr, _dinp_guard) = dinp.device_ptr_mut(stream);
    let (dw_ptr, _dw_guard) = dweight.device_ptr_mut(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (w_ptr, _w_guard) = weight.device_ptr(stream);
    let pre_guarded = pre_gelu.map(|p| p.device_ptr(stream));
    let pre_ptr = pre_guarded.as_ref().map_or(0, |(p, _)| *p);

    // dinp^T (C,N) (+)= weight^T (C,OC) · dout^T (OC,N), with DGELU: times gelu'(pre_gelu^T (C,N),
    // ld C, laid out as dinp).
    let dinp_gemm = LtGemm {
        m: c,
        n,
        k: oc,
        trans_a: false,
        trans_b: false,
        a: w_ptr,
        lda: c,
        b: dout_ptr,
        ldb: oc,
        d: dinp_ptr,
        ldd: c,
        bias: 0,
        aux: pre_ptr,
        epilogue: if pre_gelu.is_some() { Epilogue::DGelu } else { Epilogue::None },
        accumulate: store == Dinp::Accumulate,
        dtype,
        d_dtype: dtype,
    };
    // SAFETY: weight covers OC*C, dout N*OC, dinp N*C elements (checked above), exactly what the
    // (C,OC)·(OC,N) -> (C,N) GEMM with these leading dimensions touches, and pre_gelu N*C read
    // with dinp's layout; the guards keep them stream-ordered until the work is queued on the
    // stream `blas` uses.
    unsafe { blas.lt_matmul(&dinp_gemm) }
        .with_context(|| format!("{op}<{dtype:?}> dinp ({store:?}) N={n} C={c} OC={oc}"))?;

    // dweight^T (C,OC) += inp^T (C,N) · dout (N,OC); inputs T, the gradient f32. With
    // --bias-grad epilogue (and a dbias) its BGRADB epilogue also reduces op(B) = dout (N,OC) over
    // k = N, writing dout's OC column sums, this call's bias gradient, to the scratch (f32; OC
    // elements checked above, the address 16-byte aligned or refused by `LtGemm::check`).
    let bgradb = dbias.is_some() && bias_grad == BiasGrad::Epilogue;
    let bgrad_guarded = bgradb.then(|| scratch.device_ptr_mut(stream));
    let bgrad_ptr = bgrad_guarded.as_ref().map_or(0, |(p, _)| *p);
    let dweight_gemm = LtGemm {
        m: c,
        n: oc,
        k: n,
        trans_a: false,
        trans_b: true,
        a: inp_ptr,
        lda: c,
        b: dout_ptr,
        ldb: oc,
        d: dw_ptr,
        ldd: c,
        bias: bgrad_ptr,
        aux: 0,
        epilogue: if bgradb { Epilogue::BGradB } else { Epilogue::None },
        accumulate: true,
        dtype,
        d_dtype: GemmDtype::F32,
    };
    // SAFETY: inp covers N*C, dout N*OC (read as (OC,N) ld OC, transposed), dweight OC*C
    // (checked above), and with BGRADB the scratch OC floats (checked above); guards held as for
    // the first GEMM, the scratch's until the GEMM is queued.
    unsafe { blas.lt_matmul(&dweight_gemm) }.with_context(|| match bgradb {
        false => format!("{op}<{dtype:?}> dweight N={n} C={c} OC={oc}"),
        true => {
            let how = "the BGRADB bias gradient (--bias-grad epilogue; --bias-grad reduce does without it)";
            format!("{op}<{dtype:?}> dweight with {how} N={n} C={c} OC={oc}")
        }
    })?;
    drop(bgrad_guarded);

    // The bias gradient. Reduce (the default, verified): kernels of their own, a fixed-order
    // two-pass column sum of dout added to dbias, bit for bit reproducible. Epilogue: the BGRADB
    // epilogue above WROTE the column sums to the scratch (cuBLASLt overwrites its bias output;
    // it cannot add to it), and dbias accumulates over micro-batches, so one more small kernel
    // adds them in: dbias[o] += scratch[o], one fp32 add per element. dout is then read once
    // for both parameter gradients instead of once more here; the sums are in cuBLAS's order, so
    // whether they repeat bit for bit (issue 15 §3 requires it of whatever is kept) is for a GPU
    // to show (`tests/gpu_ops/matmul.rs`), as is whether it is faster.
    let Some(dbias) = dbias else { return Ok(()) };
    if bgradb {
        let oci = to_i32(oc, "OC")?;
        let lens = [("dbias", dbias.len(), oc), ("scratch", scratch.len(), oc)];
        let add = Launch::new(gpu, "matmul_bias_grad_add", &lens)?;
        let blocks = u32::try_from(oc.div_ceil(BIAS_ADD_BLOCK as usize)).context("matmul_backward: OC too large")?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BIAS_ADD_BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (float*, const float*, int); thread i < OC reads scratch[i] (written by the GEMM
        // queued above on this stream) and updates dbias[i], both of at least OC elements
        // (checked); any block shape.
        unsafe { add.write(dbias).write(scratch).arg(oci).run(cfg) }?;
    } else {
        let (ni, oci) = (to_i32(n, "N")?, to_i32(oc, "OC")?);
        let rows = to_i32(BIAS_ROWS_PER_CHUNK, "rows per chunk")?;
        let chunks = n.div_ceil(BIAS_ROWS_PER_CHUNK);
        let chunks_i = to_i32(chunks, "bias chunks")?;
        let grid_x = u32::try_from(oc.div_ceil(32)).context("matmul_backward: OC too large")?;
        let grid_y = u32::try_from(chunks).ok().filter(|&y| y <= 65_535).context("matmul_backward: N too large")?;
        let partial = Launch::new(gpu, &T::kernel("matmul_bias_grad_partial"), &[])?;
        let cfg = LaunchConfig { grid_dim: (grid_x, grid_y, 1), block_dim: BIAS_BLOCK, shared_mem_bytes: 0 };
        let partial = partial.write(scratch).ptr(dout_ptr).arg(ni).arg(oci).arg(rows);
        // SAFETY: (float*, const T*, int, int, int); the kernel reads N*OC elements of dout (guard
        // held above) and writes chunks*OC = matmul_backward_scratch_len(N, OC) floats of scratch
        // (both checked); block (32, 8, 1) as its shared array requires.
        unsafe { partial.run(cfg) }?;

        let finish = Launch::new(gpu, "matmul_bias_grad_finish", &[])?;
        let blocks = u32::try_from(oc.div_ceil(BIAS_FINISH_BLOCK as usize)).context("matmul_backward: OC too large")?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BIAS_FINISH_BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (float*, const float*, int, int); the kernel reads (only) chunks*OC elements of scratch
        // and updates OC of dbias (both checked).
        unsafe { finish.write(dbias).write(scratch).arg(chunks_i).arg(oci).run(cfg) }?;
    }
    Ok(())
}
