//! Causal flash attention on the GPU (`kernels/flash_attention.cu`): bf16 only, head size 64
//! only. Reads q, k, v straight from the (B,T,3C) qkv activation and writes the (B,T,C) output
//! and the per-row log-sum-exp; nothing of size T x T is stored, forward or backward. The CPU
//! model of the same arithmetic is `src/cpu/flash_attention.rs`; the materialised path
//! ([`super::attention`]) stays the default until a GPU run has verified this one.
//!
//! The backward is three kernels without atomics (`D = rowsum(dO * O)`, then dK/dV per key
//! tile, then dQ per query tile), so it is bit-for-bit reproducible, and it writes every element
//! of `dqkv` with `=`: unlike `attention_backward`, it does not accumulate.

use anyhow::{bail, ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{to_i32, Gpu};
use super::Float;

/// The only head size the kernels support.
pub const HEAD_SIZE: usize = 64;
/// Queries (and keys) per tile; one block of [`THREADS`] threads per tile.
const TILE: usize = 64;
const THREADS: u32 = 128;
/// Threads per block of the D preprocessing kernel (one warp per (b, t, h) row).
const PREPROCESS_BLOCK: u32 = 256;

/// f32 elements of the backward's `scratch_d` (and of `lse`): B*NH*T.
pub fn lse_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t
}

/// The checks both directions share: bf16, head size 64, shapes that fit the grid.
fn check_shape<T: Float>(op: &str, b: usize, t: usize, c: usize, nh: usize) -> Result<LaunchConfig> {
    if T::BYTES != 2 {
        bail!("{op}: flash attention is bf16 only (--attention flash needs --precision bf16)");
    }
    ensure!(
        nh > 0 && c == nh * HEAD_SIZE,
        "{op}: head size must be {HEAD_SIZE}, but C = {c} with NH = {nh}; use --attention materialized"
    );
    ensure!(b > 0 && t > 0, "{op}: empty batch (B = {b}, T = {t})");
    let tiles = t.div_ceil(TILE);
    let grid_y =
        u32::try_from(tiles).ok().filter(|&y| y <= 65535).with_context(|| format!("{op}: T = {t} too long"))?;
    let grid_x = u32::try_from(b * nh)
        .ok()
        .filter(|&x| x <= i32::MAX as u32)
        .with_context(|| format!("{op}: B*NH = {} too large", b * nh))?;
    to_i32(b, "B")?;
    to_i32(t, "T")?;
    to_i32(nh, "NH")?;
    Ok(LaunchConfig { grid_dim: (grid_x, grid_y, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// cp.async copies 16 bytes at a time: tile sources must be 16-byte aligned.
fn check_aligned(op: &str, name: &str, ptr: u64) -> Result<()> {
    ensure!(ptr.is_multiple_of(16), "{op}: {name} at {ptr:#x} is not 16-byte aligned");
    Ok(())
}

// qkv (B,T,3C) -> out (B,T,C), lse (B,NH,T)
/// Causal attention forward, queued on `gpu.stream()`: `out (B,T,C)` (bf16) and `lse (B,NH,T)`
/// (f32, base 2 in units of `q.k * 0.125 * log2 e`) from `qkv (B,T,3C)` (bf16). `T` must be
/// `half::bf16` and C = NH * 64. Buffers may be longer than needed.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    lse: &mut impl DevicePtrMut<f32>,
    qkv: &impl DevicePtr<T>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    const WHAT: &str = "flash_attention_forward";
    let cfg = check_shape::<T>(WHAT, b, t, c, nh)?;
    let btc = b * t * c;
    ensure!(out.len() >= btc, "{WHAT}: out has {} < B*T*C = {btc}", out.len());
    ensure!(lse.len() >= lse_len(b, t, nh), "{WHAT}: lse has {} < B*NH*T = {}", lse.len(), lse_len(b, t, nh));
    ensure!(qkv.len() >= 3 * btc, "{WHAT}: qkv has {} < 3*B*T*C = {}", qkv.len(), 3 * btc);
    let (bi, ti, nhi) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?);
    let func = gpu.function("flash_attention_forward")?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (lse_ptr, _lse_guard) = lse.device_ptr_mut(stream);
    let (qkv_ptr, _qkv_guard) = qkv.device_ptr(stream);
    check_aligned(WHAT, "qkv", qkv_ptr)?;
    check_aligned(WHAT, "out", out_ptr)?;
    let mut launch = stream.launch_builder(&func);
    launch.arg(&out_ptr).arg(&lse_ptr).arg(&qkv_ptr).arg(&bi).arg(&ti).arg(&nhi);
    // SAFETY: the arguments match (__nv_bfloat16*, float*, const __nv_bfloat16*, int, int, int)
    // and T is bf16 (checked), so the element sizes agree. Block (x, y) reads rows < T of one
    // (b, h) of qkv (3*B*T*C elements, checked) and writes rows < T of out (B*T*C, checked) and
    // lse (B*NH*T, checked); qkv is 16-byte aligned for cp.async (checked; C = NH*64 keeps every
    // row aligned). Grid (B*NH, ceil(T/64)), 128 threads, 45 KB static shared memory. The guards
    // keep the buffers stream-ordered until the launch is queued.
    unsafe { launch.launch(cfg) }.context("launching flash_attention_forward")?;
    Ok(())
}

// dout (B,T,C), qkv (B,T,3C), out (B,T,C), lse (B,NH,T) -> dqkv (B,T,3C) =
/// Causal attention backward, queued on `gpu.stream()`: writes (does NOT accumulate) every
/// element of `dqkv (B,T,3C)` from the output gradient `dout (B,T,C)`, the forward's input
/// `qkv`, output `out` and `lse`. `scratch_d` holds [`lse_len`] f32 (D = rowsum(dout * out)).
/// Bit-for-bit reproducible (no atomics). `T` must be `half::bf16` and C = NH * 64.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward<T: Float>(
    gpu: &Gpu,
    dqkv: &mut impl DevicePtrMut<T>,
    dout: &impl DevicePtr<T>,
    qkv: &impl DevicePtr<T>,
    out: &impl DevicePtr<T>,
    lse: &impl DevicePtr<f32>,
    scratch_d: &mut impl DevicePtrMut<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    const WHAT: &str = "flash_attention_backward";
    let cfg = check_shape::<T>(WHAT, b, t, c, nh)?;
    let btc = b * t * c;
    let rows = lse_len(b, t, nh);
    ensure!(dqkv.len() >= 3 * btc, "{WHAT}: dqkv has {} < 3*B*T*C = {}", dqkv.len(), 3 * btc);
    ensure!(dout.len() >= btc, "{WHAT}: dout has {} < B*T*C = {btc}", dout.len());
    ensure!(qkv.len() >= 3 * btc, "{WHAT}: qkv has {} < 3*B*T*C = {}", qkv.len(), 3 * btc);
    ensure!(out.len() >= btc, "{WHAT}: out has {} < B*T*C = {btc}", out.len());
    ensure!(lse.len() >= rows, "{WHAT}: lse has {} < B*NH*T = {rows}", lse.len());
    ensure!(scratch_d.len() >= rows, "{WHAT}: scratch_d has {} < B*NH*T = {rows}", scratch_d.len());
    let (bi, ti, nhi) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?);

    let stream = &**gpu.stream();
    let (dqkv_ptr, _dqkv_guard) = dqkv.device_ptr_mut(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let (qkv_ptr, _qkv_guard) = qkv.device_ptr(stream);
    let (out_ptr, _out_guard) = out.device_ptr(stream);
    let (lse_ptr, _lse_guard) = lse.device_ptr(stream);
    let (d_ptr, _d_guard) = scratch_d.device_ptr_mut(stream);
    for (name, ptr) in [("dqkv", dqkv_ptr), ("dout", dout_ptr), ("qkv", qkv_ptr), ("out", out_ptr)] {
        check_aligned(WHAT, name, ptr)?;
    }

    // 1. D = rowsum(dout * out), one warp per (b, t, h).
    let warps = (PREPROCESS_BLOCK / 32) as usize;
    let blocks = u32::try_from(rows.div_ceil(warps)).context("flash_attention_backward: too many rows")?;
    let pre_cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (PREPROCESS_BLOCK, 1, 1), shared_mem_bytes: 0 };
    let pre = gpu.function("flash_attention_backward_preprocess")?;
    let mut launch = stream.launch_builder(&pre);
    launch.arg(&d_ptr).arg(&dout_ptr).arg(&out_ptr).arg(&bi).arg(&ti).arg(&nhi);
    // SAFETY: the arguments match (float*, const __nv_bfloat16*, const __nv_bfloat16*, int, int,
    // int); it reads B*T*C elements of dout and out and writes B*NH*T of scratch_d (all checked);
    // whole warps per block.
    unsafe { launch.launch(pre_cfg) }.context("launching flash_attention_backward_preprocess")?;

    // 2. dK, dV per key tile; 3. dQ per query tile. Both read D (queued before, same stream).
    let dkdv = gpu.function("flash_attention_backward_dkdv")?;
    let dq = gpu.function("flash_attention_backward_dq")?;
    for (name, func) in [("flash_attention_backward_dkdv", dkdv), ("flash_attention_backward_dq", dq)] {
        let mut launch = stream.launch_builder(&func);
        launch.arg(&dqkv_ptr).arg(&dout_ptr).arg(&qkv_ptr).arg(&lse_ptr).arg(&d_ptr);
        launch.arg(&bi).arg(&ti).arg(&nhi);
        // SAFETY: the arguments match (__nv_bfloat16*, const __nv_bfloat16*, const
        // __nv_bfloat16*, const float*, const float*, int, int, int) and T is bf16 (checked).
        // Each block reads rows < T of one (b, h) of qkv and dout and of lse and D (lengths
        // checked), and writes rows < T of its own tile's k and v slots (dkdv) or q slot (dq) of
        // dqkv (3*B*T*C, checked): no two blocks write the same element. Sources are 16-byte
        // aligned (checked). Grid (B*NH, ceil(T/64)), 128 threads, at most 37 KB static shared.
        unsafe { launch.launch(cfg) }.with_context(|| format!("launching {name}"))?;
    }
    Ok(())
}
