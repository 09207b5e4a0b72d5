//! Causal multi-head self-attention on the GPU, the CUDA counterpart of
//! `src/cpu/attention.rs`: permute kernel, cuBLAS batched GEMMs and a causal softmax kernel
//! (kernels in `kernels/attention.cu`); the backward is [`attention_backward`]. The correct-first
//! version: it materialises the full (B,NH,T,T) attention matrix, which the backward pass needs
//! anyway.
//!
//! Scratch layout (elements, each block B*T*C long, laid out (B,NH,T,hs)): `[q | k | v | y]`.
//!
//! Generic over the storage type ([`Float`]): f32, or bf16 for qkv, scratch, att and out. With
//! bf16 the kernels compute in fp32 (loads widened, one rounding on store) and the GEMMs
//! accumulate in fp32, so the bf16 roundings are: the scores (q·k^T output), the probabilities
//! (softmax output, which feeds att·v) and y/out. The backward is generic the same way (see
//! [`attention_backward`] for its roundings).
//!
//! GEMMs, per (b, h), in cuBLAS's column-major terms (a row-major (R, C) buffer is a column-major
//! (C, R) matrix with ld C):
//! - `preatt (T,T) = q (T,hs) · k^T`: column-major `att^T (T,T) = k · q^T`, i.e. A = k buffer
//!   seen as (hs, T) ld hs used transposed, B = q buffer (hs, T) ld hs as is; m = n = T, k = hs.
//! - `y (T,hs) = att (T,T) · v (T,hs)`: column-major `y^T (hs,T) = v^T · att^T`, i.e. A = v
//!   buffer (hs, T) ld hs as is, B = att buffer (T, T) ld T as is; m = hs, n = T, k = T.

use std::sync::Arc;

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::blas::{Blas, GemmDtype, StridedBatchedGemm};
use super::device::{grid_for, to_i32, Gpu};
use super::launch::Launch;
use super::{Dinp, Float, Kernels};

/// Threads per block of the softmax kernel (one warp per row).
const SOFTMAX_BLOCK: u32 = 256;

/// With `--kernels vector`: true (the `_vec` permutes), after checking the head size is a whole
/// number of 128-bit packs ([`Float::VEC`] elements), which those kernels require.
fn vector<T: Float>(gpu: &Gpu, op: &str, hs: usize) -> Result<bool> {
    if gpu.kernels() != Kernels::Vector {
        return Ok(false);
    }
    ensure!(
        hs.is_multiple_of(T::VEC),
        "{op} (--kernels vector): head size {hs} is not a multiple of {} (one 128-bit access); use --kernels scalar",
        T::VEC
    );
    Ok(true)
}

/// The kernel `name` in `T`, or its `_vec` version (and the elements per thread) when `vector`.
fn pick<T: Float>(name: &str, vector: bool) -> (String, usize) {
    if vector {
        (T::kernel(&format!("{name}_vec")), T::VEC)
    } else {
        (T::kernel(name), 1)
    }
}

/// Elements of scratch [`attention_forward`] needs: q, k, v and y, each B*T*C.
pub fn scratch_len(b: usize, t: usize, c: usize) -> usize {
    4 * b * t * c
}

/// Causal self-attention forward, queued on `gpu.stream()`:
/// `qkv (B,T,3C)` -> `out (B,T,C)`, with `att (B,NH,T,T)` the softmax probabilities (zero above
/// the diagonal) and `scratch` ([`scratch_len`] elements) holding q, k, v, y as (B,NH,T,hs).
/// `T` is `f32` or `half::bf16` for every buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    out: &mut impl DevicePtrMut<T>,
    scratch: &mut impl DevicePtrMut<T>,
    att: &mut impl DevicePtrMut<T>,
    qkv: &impl DevicePtr<T>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    ensure!(nh > 0 && c.is_multiple_of(nh), "attention_forward: C = {c} is not a positive multiple of NH = {nh}");
    let hs = c / nh;
    ensure!(hs > 0, "attention_forward: head size must be positive");
    let btc = b * t * c;
    ensure!(out.len() >= btc, "attention_forward: out has {} < B*T*C = {btc}", out.len());
    ensure!(qkv.len() >= 3 * btc, "attention_forward: qkv has {} < 3*B*T*C = {}", qkv.len(), 3 * btc);
    ensure!(
        scratch.len() >= scratch_len(b, t, c),
        "attention_forward: scratch has {} < 4*B*T*C = {}",
        scratch.len(),
        scratch_len(b, t, c)
    );
    let att_len = b * nh * t * t;
    ensure!(att.len() >= att_len, "attention_forward: att has {} < B*NH*T*T = {att_len}", att.len());
    ensure!(
        Arc::ptr_eq(blas.stream(), gpu.stream()),
        "attention_forward: blas was created for a different stream than gpu"
    );
    let dtype = GemmDtype::of::<T>()?;
    if btc == 0 {
        return Ok(());
    }
    let (bi, ti, nhi, hsi) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?, to_i32(hs, "HS")?);
    to_i32(c, "C")?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (scratch_ptr, _scratch_guard) = scratch.device_ptr_mut(stream);
    let (att_ptr, _att_guard) = att.device_ptr_mut(stream);
    let (qkv_ptr, _qkv_guard) = qkv.device_ptr(stream);
    let block = (btc * T::BYTES) as u64;
    let (q_ptr, k_ptr, v_ptr, y_ptr) =
        (scratch_ptr, scratch_ptr + block, scratch_ptr + 2 * block, scratch_ptr + 3 * block);

    // 1. qkv (B,T,3C) -> q, k, v (B,NH,T,hs).
    let vector = vector::<T>(gpu, "attention_forward", hs)?;
    // (The _vec kernels: attention_permute_vec, attention_unpermute_vec.)
    let (name, per_thread) = pick::<T>("attention_permute", vector);
    let k = Launch::new(gpu, &name, &[])?;
    let k = k.ptr(q_ptr).ptr(k_ptr).ptr(v_ptr).ptr(qkv_ptr).arg(bi).arg(ti).arg(nhi).arg(hsi);
    let k = if vector { k.aligned16(&[0, 1, 2, 3])? } else { k };
    // SAFETY: (T*, T*, T*, const T*, int, int, int, int), q..y T-sized offsets into scratch (guards
    // held above); the kernel touches B*T*C elements of each of q, k, v (inside scratch, checked)
    // and 3*B*T*C of qkv (checked); the _vec one the same in 16-byte packs (HS a multiple of VEC,
    // pointers aligned: checked).
    unsafe { k.run(grid_for(btc / per_thread)?) }?;

    // 2. att[bh] (T,T) = q[bh] · k[bh]^T  (unscaled; the softmax applies 1/sqrt(hs)).
    let per_head = t * hs;
    let preatt = StridedBatchedGemm {
        m: t,
        n: t,
        k: hs,
        trans_a: true,
        trans_b: false,
        alpha: 1.0,
        a: k_ptr,
        lda: hs,
        stride_a: per_head,
        b: q_ptr,
        ldb: hs,
        stride_b: per_head,
        beta: 0.0,
        c: att_ptr,
        ldc: t,
        stride_c: t * t,
        batch: b * nh,
        dtype,
    };
    // SAFETY: batch i reads q/k rows [i*T*hs, (i+1)*T*hs) inside scratch and writes att
    // [i*T*T, (i+1)*T*T), all within the lengths checked above; same stream, guards held.
    unsafe { blas.gemm_strided_batched(&preatt) }.context("attention_forward: q·k^T")?;

    // 3. Causal softmax of each att row, in place.
    let rows = (b * nh * t) as i64;
    let scale = 1.0f32 / (hs as f32).sqrt();
    let warps_per_block = (SOFTMAX_BLOCK / 32) as usize;
    let blocks = u32::try_from((b * nh * t).div_ceil(warps_per_block))
        .context("attention_forward: too many softmax rows for one grid")?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (SOFTMAX_BLOCK, 1, 1), shared_mem_bytes: 0 };
    // The _vec softmax when each row is a whole number of packs (T varies with the batch, so
    // otherwise the scalar one rather than an error).
    let vec_rows = vector && t.is_multiple_of(T::VEC);
    let (name, _) = pick::<T>("attention_softmax_forward", vec_rows);
    let k = Launch::new(gpu, &name, &[])?.ptr(att_ptr).arg(rows).arg(ti).arg(scale);
    let k = if vec_rows { k.aligned16(&[0])? } else { k };
    // SAFETY: (T*, long long, int, float); the kernel touches rows*T = B*NH*T*T elements of att
    // (checked); a whole number of warps per block (the _vec one in aligned 16-byte packs, T a
    // multiple of VEC).
    unsafe { k.run(cfg) }?;

    // 4. y[bh] (T,hs) = att[bh] (T,T) · v[bh] (T,hs).
    let av = StridedBatchedGemm {
        m: hs,
        n: t,
        k: t,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        a: v_ptr,
        lda: hs,
        stride_a: per_head,
        b: att_ptr,
        ldb: t,
        stride_b: t * t,
        beta: 0.0,
        c: y_ptr,
        ldc: hs,
        stride_c: per_head,
        batch: b * nh,
        dtype,
    };
    // SAFETY: batch i reads v and att blocks and writes the y block i, all inside the checked
    // scratch/att lengths; same stream, guards held.
    unsafe { blas.gemm_strided_batched(&av) }.context("attention_forward: att·v")?;

    // 5. y (B,NH,T,hs) -> out (B,T,C).
    let (name, per_thread) = pick::<T>("attention_unpermute", vector);
    let k = Launch::new(gpu, &name, &[])?.ptr(out_ptr).ptr(y_ptr).arg(bi).arg(ti).arg(nhi).arg(hsi);
    let k = if vector { k.aligned16(&[0, 1])? } else { k };
    // SAFETY: (T*, const T*, int, int, int, int); the kernel writes B*T*C elements of out and
    // reads B*T*C of y (inside scratch), both checked (the _vec one in aligned 16-byte packs).
    unsafe { k.run(grid_for(btc / per_thread)?) }
}

/// One new position attending over the first `n_ctx` cached positions, for KV-cache decoding.
/// `T` is `f32` or `half::bf16` for q, the caches and out; scores, softmax and the weighted sum
/// are fp32 either way (bf16 rounds only the output).
// q (C), kcache (maxT,C), vcache (maxT,C) -> out (C)
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    q: &impl DevicePtr<T>,
    kcache: &impl DevicePtr<T>,
    vcache: &impl DevicePtr<T>,
    n_ctx: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    ensure!(nh > 0 && c.is_multiple_of(nh), "attention_decode: C = {c} must divide by NH = {nh}");
    ensure!(n_ctx >= 1, "attention_decode: no cached positions");
    ensure!(out.len() >= c && q.len() >= c, "attention_decode: out and q need C = {c} elements");
    ensure!(
        kcache.len() >= n_ctx * c && vcache.len() >= n_ctx * c,
        "attention_decode: the caches hold fewer than n_ctx * C = {} elements",
        n_ctx * c
    );
    // The scores are fp32 in shared memory whatever T is.
    let shared = u32::try_from(n_ctx * std::mem::size_of::<f32>()).context("attention_decode: n_ctx too large")?;
    let cfg = LaunchConfig { grid_dim: (nh as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: shared };
    let (n, ci, nhi) = (to_i32(n_ctx, "n_ctx")?, to_i32(c, "C")?, to_i32(nh, "NH")?);
    let k = Launch::new(gpu, &T::kernel("attention_decode"), &[])?;
    let k = k.write(out).read(q).read(kcache).read(vcache).arg(n).arg(ci).arg(nhi);
    // SAFETY: (T*, const T*, const T*, const T*, int, int, int); the lengths checked above bound
    // every index it touches, and its dynamic shared memory holds n_ctx floats.
    unsafe { k.run(cfg) }
}

/// Elements (of the storage type `T`) of scratch [`attention_backward`] needs: four (B,NH,T,hs)
/// blocks of B*T*C (`[q | k | v | dy]`, later holding dk, dv, dq in place of k, v, dy) and one
/// (B,NH,T,T) block for datt / dpreatt.
pub fn attention_backward_scratch_len(b: usize, t: usize, c: usize, nh: usize) -> usize {
    4 * b * t * c + b * nh * t * t
}

/// Causal self-attention backward, queued on `gpu.stream()`, accumulating into `dqkv` like
/// `cpu::attention::attention_backward` ([`Dinp::Accumulate`]): `dqkv (B,T,3C) += d(out)/d(qkv)^T
/// · dout (B,T,C)`, given the forward's input `qkv (B,T,3C)` and probabilities `att (B,NH,T,T)`;
/// or, with [`Dinp::Overwrite`], `dqkv = ...`: each element of dqkv is written once (the last
/// step), so overwriting gives the bits of accumulating onto zeros and dqkv needs no zeroing.
///
/// `T` is `f32` or `half::bf16` for every buffer (dqkv, scratch, dout, qkv, att); dqkv holds
/// activation gradients, not parameter gradients, so it has the storage type too. With bf16 the
/// GEMMs accumulate in fp32 and the kernels compute in fp32, and these values are rounded to
/// bf16 once each: datt and dv (GEMM outputs), dpreatt (softmax backward), dq and dk (GEMM
/// outputs), and each dqkv element after its fp32 `+=` (overwritten: dq, dk, dv copied exactly).
///
/// `scratch` ([`attention_backward_scratch_len`] elements) is overwritten; nothing is kept from
/// the forward's scratch (q, k, v are permuted again from `qkv`). Its slots (B*T*C each, laid
/// out (B,NH,T,hs)) and what they hold, in order:
/// `[q | k, then dk | v, then dv | dy, then dq | datt, then dpreatt (B*NH*T*T)]`.
/// Each slot is overwritten only after its last reader is queued (same stream, so in order):
/// v is last read by datt before dv is written; dy by dv before dq; k by dq before dk.
///
/// Per (b, h), with the row-major (T,hs) blocks seen by cuBLAS as column-major (hs,T) ld hs and
/// the (T,T) blocks as column-major (T,T) ld T holding the transpose:
/// - `datt = dy · v^T`:  `datt^T (T,T) = v · dy^T`: A = v transposed (lda hs), B = dy as is
///   (ldb hs); m = n = T, k = hs (the forward's q·k^T mapping).
/// - `dv = att^T · dy`:  `dv^T (hs,T) = dy^T · att`: A = dy as is (lda hs), B = att transposed
///   (ldb T); m = hs, n = T, k = T.
/// - `dq = dpreatt · k`: `dq^T (hs,T) = k^T · dpreatt^T`: A = k as is, B = dpreatt as is;
///   m = hs, n = T, k = T (the forward's att·v mapping).
/// - `dk = dpreatt^T · q`: `dk^T (hs,T) = q^T · dpreatt`: A = q as is, B = dpreatt transposed;
///   m = hs, n = T, k = T.
///
/// The softmax backward and the permutes are fixed-order kernels (no atomics), so the result is
/// bit-for-bit reproducible for a given GPU, cuBLAS and shape.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    gpu: &Gpu,
    blas: &Blas,
    dqkv: &mut impl DevicePtrMut<T>,
    scratch: &mut impl DevicePtrMut<T>,
    dout: &impl DevicePtr<T>,
    qkv: &impl DevicePtr<T>,
    att: &impl DevicePtr<T>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    store: Dinp,
) -> Result<()> {
    ensure!(nh > 0 && c.is_multiple_of(nh), "attention_backward: C = {c} is not a positive multiple of NH = {nh}");
    let hs = c / nh;
    ensure!(hs > 0, "attention_backward: head size must be positive");
    let btc = b * t * c;
    ensure!(dqkv.len() >= 3 * btc, "attention_backward: dqkv has {} < 3*B*T*C = {}", dqkv.len(), 3 * btc);
    ensure!(dout.len() >= btc, "attention_backward: dout has {} < B*T*C = {btc}", dout.len());
    ensure!(qkv.len() >= 3 * btc, "attention_backward: qkv has {} < 3*B*T*C = {}", qkv.len(), 3 * btc);
    let att_len = b * nh * t * t;
    ensure!(att.len() >= att_len, "attention_backward: att has {} < B*NH*T*T = {att_len}", att.len());
    let need = attention_backward_scratch_len(b, t, c, nh);
    ensure!(scratch.len() >= need, "attention_backward: scratch has {} < {need}", scratch.len());
    ensure!(
        Arc::ptr_eq(blas.stream(), gpu.stream()),
        "attention_backward: blas was created for a different stream than gpu"
    );
    let dtype = GemmDtype::of::<T>()?;
    if btc == 0 {
        return Ok(());
    }
    let (bi, ti, nhi, hsi) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?, to_i32(hs, "HS")?);
    to_i32(3 * c, "3C")?;

    let stream = &**gpu.stream();
    let (dqkv_ptr, _dqkv_guard) = dqkv.device_ptr_mut(stream);
    let (scratch_ptr, _scratch_guard) = scratch.device_ptr_mut(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let (qkv_ptr, _qkv_guard) = qkv.device_ptr(stream);
    let (att_ptr, _att_guard) = att.device_ptr(stream);
    let block = (btc * std::mem::size_of::<T>()) as u64;
    let (q_ptr, k_ptr, v_ptr, dy_ptr, datt_ptr) =
        (scratch_ptr, scratch_ptr + block, scratch_ptr + 2 * block, scratch_ptr + 3 * block, scratch_ptr + 4 * block);
    // Slots reused once their previous contents are dead (see the doc comment).
    let (dk_ptr, dv_ptr, dq_ptr) = (k_ptr, v_ptr, dy_ptr);
    let per_head = t * hs;
    let batch = b * nh;

    // 1. qkv (B,T,3C) -> q, k, v and dout (B,T,C) -> dy, all (B,NH,T,hs).
    let vector = vector::<T>(gpu, "attention_backward", hs)?;
    // (The _vec kernels: attention_backward_permute_vec, attention_backward_unpermute_add_vec.)
    let (name, per_thread) = pick::<T>("attention_backward_permute", vector);
    let k = Launch::new(gpu, &name, &[])?;
    let k = k.ptr(q_ptr).ptr(k_ptr).ptr(v_ptr).ptr(dy_ptr).ptr(qkv_ptr).ptr(dout_ptr);
    let k = if vector { k.aligned16(&[0, 1, 2, 3, 4, 5])? } else { k };
    // SAFETY: (T*, T*, T*, T*, const T*, const T*, int, int, int, int), the slots T-sized offsets
    // into scratch (guards held above); the kernel writes B*T*C elements of each of the first four
    // scratch slots (inside scratch, checked) and reads 3*B*T*C of qkv and B*T*C of dout (checked);
    // the _vec one the same in aligned 16-byte packs.
    unsafe { k.arg(bi).arg(ti).arg(nhi).arg(hsi).run(grid_for(btc / per_thread)?) }?;

    // 2. datt[bh] (T,T) = dy[bh] · v[bh]^T.
    let datt_gemm = StridedBatchedGemm {
        m: t,
        n: t,
        k: hs,
        trans_a: true,
        trans_b: false,
        alpha: 1.0,
        a: v_ptr,
        lda: hs,
        stride_a: per_head,
        b: dy_ptr,
        ldb: hs,
        stride_b: per_head,
        beta: 0.0,
        c: datt_ptr,
        ldc: t,
        stride_c: t * t,
        batch,
        dtype,
    };
    // SAFETY: batch i reads the v and dy blocks i (T*hs each, inside scratch) and writes the
    // datt block i (T*T, inside scratch's last slot), all within the checked scratch length.
    unsafe { blas.gemm_strided_batched(&datt_gemm) }.context("attention_backward: dy·v^T")?;

    // 3. dv[bh] (T,hs) = att[bh]^T · dy[bh], into v's slot (v's last reader was step 2).
    let dv_gemm = StridedBatchedGemm {
        m: hs,
        n: t,
        k: t,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        a: dy_ptr,
        lda: hs,
        stride_a: per_head,
        b: att_ptr,
        ldb: t,
        stride_b: t * t,
        beta: 0.0,
        c: dv_ptr,
        ldc: hs,
        stride_c: per_head,
        batch,
        dtype,
    };
    // SAFETY: batch i reads the dy block i (scratch) and att block i (B*NH*T*T checked) and
    // writes the dv block i (scratch); no operand aliases the output.
    unsafe { blas.gemm_strided_batched(&dv_gemm) }.context("attention_backward: att^T·dy")?;

    // 4. datt -> dpreatt in place (softmax backward, scaled, zero above the diagonal).
    let rows = (b * nh * t) as i64;
    let scale = 1.0f32 / (hs as f32).sqrt();
    let warps_per_block = (SOFTMAX_BLOCK / 32) as usize;
    let blocks = u32::try_from((b * nh * t).div_ceil(warps_per_block))
        .context("attention_backward: too many softmax rows for one grid")?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (SOFTMAX_BLOCK, 1, 1), shared_mem_bytes: 0 };
    let vec_rows = vector && t.is_multiple_of(T::VEC);
    let (name, _) = pick::<T>("attention_softmax_backward", vec_rows);
    let k = Launch::new(gpu, &name, &[])?.ptr(datt_ptr).ptr(att_ptr).arg(rows).arg(ti).arg(scale);
    let k = if vec_rows { k.aligned16(&[0, 1])? } else { k };
    // SAFETY: (T*, const T*, long long, int, float); the kernel touches rows*T = B*NH*T*T elements
    // of datt (scratch) and att (both checked); whole warps per block (the _vec one in aligned
    // 16-byte packs, T a multiple of VEC).
    unsafe { k.run(cfg) }?;

    // 5a. dq[bh] (T,hs) = dpreatt[bh] · k[bh], into dy's slot (dy's last reader was step 3).
    let dq_gemm = StridedBatchedGemm {
        m: hs,
        n: t,
        k: t,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        a: k_ptr,
        lda: hs,
        stride_a: per_head,
        b: datt_ptr,
        ldb: t,
        stride_b: t * t,
        beta: 0.0,
        c: dq_ptr,
        ldc: hs,
        stride_c: per_head,
        batch,
        dtype,
    };
    // SAFETY: batch i reads the k and dpreatt blocks i and writes the dq block i, all inside the
    // checked scratch; the output slot (dy's) is read by neither operand.
    unsafe { blas.gemm_strided_batched(&dq_gemm) }.context("attention_backward: dpreatt·k")?;

    // 5b. dk[bh] (T,hs) = dpreatt[bh]^T · q[bh], into k's slot (k's last reader was step 5a).
    let dk_gemm = StridedBatchedGemm {
        m: hs,
        n: t,
        k: t,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        a: q_ptr,
        lda: hs,
        stride_a: per_head,
        b: datt_ptr,
        ldb: t,
        stride_b: t * t,
        beta: 0.0,
        c: dk_ptr,
        ldc: hs,
        stride_c: per_head,
        batch,
        dtype,
    };
    // SAFETY: batch i reads the q and dpreatt blocks i and writes the dk block i, all inside
    // the checked scratch; the output slot (k's) is read by neither operand.
    unsafe { blas.gemm_strided_batched(&dk_gemm) }.context("attention_backward: dpreatt^T·q")?;

    // 6. dqkv (B,T,3C) += (or =) dq, dk, dv (B,NH,T,hs) in their thirds.
    let (name, per_thread) = match store {
        Dinp::Accumulate => pick::<T>("attention_backward_unpermute_add", vector),
        Dinp::Overwrite => pick::<T>("attention_backward_unpermute", vector),
    };
    let k = Launch::new(gpu, &name, &[])?;
    let k = k.ptr(dqkv_ptr).ptr(dq_ptr).ptr(dk_ptr).ptr(dv_ptr).arg(bi).arg(ti).arg(nhi).arg(hsi);
    let k = if vector { k.aligned16(&[0, 1, 2, 3])? } else { k };
    // SAFETY: (T*, const T*, const T*, const T*, int, int, int, int); the kernel updates (or
    // writes) 3*B*T*C elements of dqkv (checked) and reads B*T*C of each of dq, dk, dv (scratch slots, checked);
    // the _vec one the same in aligned 16-byte packs.
    unsafe { k.run(grid_for(3 * btc / per_thread)?) }
}
