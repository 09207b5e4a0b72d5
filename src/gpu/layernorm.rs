//! LayerNorm forward and backward on the GPU (`kernels/layernorm.cu`), matching `cpu::layernorm`:
//! eps 1e-5, biased variance, and the per-row mean and rstd saved for the backward pass.
//! Activations, their gradients and parameters are `f32` or `bf16` ([`Float`]); the arithmetic,
//! the saved mean and rstd, and the parameter gradients (dweight, dbias) are f32.
//! [`residual_layernorm_forward`] fuses the residual add that precedes each LayerNorm into the
//! same pass over the row.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{to_i32, Gpu};
use super::launch::Launch;
use super::{Float, Kernels};

/// Rows per block: the kernels run one warp per row.
const ROWS_PER_BLOCK: u32 = 8;

/// One warp per row, [`ROWS_PER_BLOCK`] rows per block.
fn row_launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROWS_PER_BLOCK as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * ROWS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// With `--kernels vector`: the `_vec` kernel's name, after checking that C is a whole number of
/// 128-bit packs ([`Float::VEC`] elements), which those kernels require. `None` for the scalar path.
fn vec_kernel<T: Float>(gpu: &Gpu, name: &str, c: usize) -> Result<Option<String>> {
    if gpu.kernels() != Kernels::Vector {
        return Ok(None);
    }
    ensure!(
        c.is_multiple_of(T::VEC),
        "{name} (--kernels vector): C = {c} is not a multiple of {} (one 128-bit access); use --kernels scalar",
        T::VEC
    );
    Ok(Some(T::kernel(name)))
}

/// N*C, after checking C > 0 and that the product fits.
fn checked_nc(op: &str, n: usize, c: usize) -> Result<usize> {
    ensure!(c > 0, "{op}: C must be positive");
    n.checked_mul(c).with_context(|| format!("{op}: N*C overflows"))
}

// inp (N,C), weight (C), bias (C) -> out (N,C), mean (N), rstd (N)
/// `out = (inp - mean) * rstd * weight + bias` row by row, queued on [`Gpu::stream`]. Every buffer
/// holds at least its shape's element count (longer buffers are fine; only the prefix is used).
/// With `T = bf16` each output is computed in f32 and rounded to bf16 once.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    mean: &mut impl DevicePtrMut<f32>,
    rstd: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    bias: &impl DevicePtr<T>,
    n: usize,
    c: usize,
) -> Result<()> {
    const OP: &str = "layernorm_forward";
    let nc = checked_nc(OP, n, c)?;
    let lens = [
        ("out", out.len(), nc),
        ("mean", mean.len(), n),
        ("rstd", rstd.len(), n),
        ("inp", inp.len(), nc),
        ("weight", weight.len(), c),
        ("bias", bias.len(), c),
    ];
    let vec = vec_kernel::<T>(gpu, "layernorm_forward_vec", c)?;
    let k = Launch::new(gpu, vec.as_deref().unwrap_or(&T::kernel(OP)), &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, ci) = (to_i32(n, "N")?, to_i32(c, "C")?);
    let k = k.write(out).write(mean).write(rstd).read(inp).read(weight).read(bias).arg(ni).arg(ci);
    // out, inp, weight, bias in packs (mean and rstd one value per row).
    let k = if vec.is_some() { k.aligned16(&[0, 3, 4, 5])? } else { k };
    // SAFETY: (T*, float*, float*, const T*, const T*, const T*, int, int); the kernel touches
    // rows < N and channels < C of each buffer; one warp per row. The _vec kernel touches the same
    // elements in 16-byte packs (C a multiple of VEC, pointers aligned: checked).
    unsafe { k.run(row_launch(n)) }
}

// a (N,C), b (N,C), weight (C), bias (C) -> residual (N,C), out (N,C), mean (N), rstd (N)
/// `residual = a + b`, then `out = layernorm(residual)` as [`layernorm_forward`], in one kernel.
/// With `T = bf16` the residual is the f32 sum rounded to bf16, and it is that stored residual
/// which is normalised.
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward<T: Float>(
    gpu: &Gpu,
    residual: &mut impl DevicePtrMut<T>,
    out: &mut impl DevicePtrMut<T>,
    mean: &mut impl DevicePtrMut<f32>,
    rstd: &mut impl DevicePtrMut<f32>,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    bias: &impl DevicePtr<T>,
    n: usize,
    c: usize,
) -> Result<()> {
    const OP: &str = "residual_layernorm_forward";
    let nc = checked_nc(OP, n, c)?;
    let lens = [
        ("residual", residual.len(), nc),
        ("out", out.len(), nc),
        ("mean", mean.len(), n),
        ("rstd", rstd.len(), n),
        ("a", a.len(), nc),
        ("b", b.len(), nc),
        ("weight", weight.len(), c),
        ("bias", bias.len(), c),
    ];
    let vec = vec_kernel::<T>(gpu, "residual_layernorm_forward_vec", c)?;
    let k = Launch::new(gpu, vec.as_deref().unwrap_or(&T::kernel(OP)), &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, ci) = (to_i32(n, "N")?, to_i32(c, "C")?);
    let k = k.write(residual).write(out).write(mean).write(rstd).read(a).read(b).read(weight).read(bias);
    let k = if vec.is_some() { k.aligned16(&[0, 1, 4, 5, 6, 7])? } else { k };
    // SAFETY: (T*, T*, float*, float*, const T*, const T*, const T*, const T*, int, int); the kernel
    // touches rows < N and channels < C of each buffer; one warp per row. The _vec kernel touches
    // the same elements in 16-byte packs (C a multiple of VEC, pointers aligned: checked).
    unsafe { k.arg(ni).arg(ci).run(row_launch(n)) }
}

/// Rows each dweight/dbias partial sum covers in [`layernorm_backward`]: at least 32, and enough
/// that there are at most 512 chunks. A function of N only, so the summation order (and with it
/// every bit of the result) does not depend on the device.
fn rows_per_chunk(n: usize) -> usize {
    n.div_ceil(512).max(32)
}

/// The number of row chunks (partial sums per channel) for N rows.
fn chunks(n: usize) -> usize {
    n.div_ceil(rows_per_chunk(n))
}

/// f32 elements of the `scratch` buffer [`layernorm_backward`] needs for N rows of C channels:
/// two partial sums (dweight, dbias) per channel per chunk of rows.
pub fn layernorm_backward_scratch_len(n: usize, c: usize) -> usize {
    2 * chunks(n) * c
}

// dout (N,C), inp (N,C), weight (C), mean (N), rstd (N) -> dinp (N,C) +=, dweight (C) +=, dbias (C) +=
/// LayerNorm backward, ACCUMULATING into `dinp`, `dweight` and `dbias` as
/// `cpu::layernorm::layernorm_backward`, queued on [`Gpu::stream`]. `mean` and `rstd` are those the
/// forward saved. `scratch` holds at least [`layernorm_backward_scratch_len`] elements; its
/// contents on entry do not matter and are overwritten.
///
/// `dinp`, `dout`, `inp` and `weight` are `T` (`f32` or `bf16`); the parameter gradients `dweight`
/// and `dbias`, the statistics and `scratch` are f32 either way, and all arithmetic is f32. With
/// `T = bf16` each `dinp` value is its old value plus the f32 update, rounded to bf16 once.
///
/// Deterministic: dweight and dbias are summed over a fixed partition of the rows (one partial per
/// channel per chunk of [`rows_per_chunk`] rows, summed in row order into its own `scratch` slot),
/// then a second kernel sums the chunks in order and adds the totals. No atomics, so the same
/// inputs give bit-identical outputs on every run.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Float>(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<T>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inp: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    mean: &impl DevicePtr<f32>,
    rstd: &impl DevicePtr<f32>,
    n: usize,
    c: usize,
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    let nc = checked_nc(OP, n, c)?;
    let lens = [
        ("dinp", dinp.len(), nc),
        ("dweight", dweight.len(), c),
        ("dbias", dbias.len(), c),
        ("scratch", scratch.len(), layernorm_backward_scratch_len(n, c)),
        ("dout", dout.len(), nc),
        ("inp", inp.len(), nc),
        ("weight", weight.len(), c),
        ("mean", mean.len(), n),
        ("rstd", rstd.len(), n),
    ];
    let vec = vec_kernel::<T>(gpu, "layernorm_backward_vec", c)?;
    let main = Launch::new(gpu, vec.as_deref().unwrap_or(&T::kernel(OP)), &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, ci) = (to_i32(n, "N")?, to_i32(c, "C")?);
    let (rows_per_chunk, chunks) = (rows_per_chunk(n), chunks(n));
    let (rpc, chunks_i) = (to_i32(rows_per_chunk, "rows per chunk")?, to_i32(chunks, "chunks")?);
    // Row blocks (one warp per row) followed by the partial-sum blocks (one thread per channel per chunk).
    const THREADS: u32 = 32 * ROWS_PER_BLOCK;
    let row_blocks = n.div_ceil(ROWS_PER_BLOCK as usize);
    let channel_blocks = c.div_ceil(THREADS as usize);
    let blocks = chunks
        .checked_mul(channel_blocks)
        .and_then(|p| p.checked_add(row_blocks))
        .filter(|&b| b <= i32::MAX as usize)
        .with_context(|| format!("{OP}: N = {n}, C = {c} needs too many blocks"))?;
    let main_cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let reduce_cfg = LaunchConfig {
        grid_dim: (c.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let main = main.write(dinp).write(scratch).read(dout).read(inp).read(weight).read(mean).read(rstd);
    let main = main.arg(ni).arg(ci).arg(rpc).arg(chunks_i);
    if vec.is_some() {
        // One block per chunk of rows (the same chunks, so the same scratch slots and order).
        let cfg = LaunchConfig { grid_dim: (chunks_i as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as below; block g touches the rows of chunk g and scratch slots g*C + c and
        // (chunks + g)*C + c, in 16-byte packs of the (N,C) and (C) buffers (C a multiple of VEC,
        // pointers aligned: checked).
        // dinp, dout, inp, weight in packs (scratch, mean and rstd one value at a time).
        unsafe { main.aligned16(&[0, 2, 3, 4])?.run(cfg) }?;
    } else {
        // SAFETY: (T*, float*, const T*, const T*, const T*, const float*, const float*, int, int,
        // int, int); the kernel touches rows < N and channels < C of the (N,C), (N) and (C) buffers
        // and scratch slots < 2 * chunks * C = layernorm_backward_scratch_len.
        unsafe { main.run(main_cfg) }?;
    }
    let reduce = Launch::new(gpu, "layernorm_backward_reduce", &[])?;
    // SAFETY: (float*, float*, const float*, int, int); channels < C of dweight and dbias, scratch
    // slots < 2 * chunks * C (lengths checked above; scratch is only read). Queued after the
    // partial sums it reads, on the same stream.
    unsafe { reduce.write(dweight).write(dbias).write(scratch).arg(ci).arg(chunks_i).run(reduce_cfg) }
}
