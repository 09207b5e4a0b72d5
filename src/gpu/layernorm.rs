//! LayerNorm forward and backward on the GPU (`kernels/layernorm.cu`), matching `cpu::layernorm`:
//! eps 1e-5, biased variance, and the per-row mean and rstd saved for the backward pass.
//! Activations, their gradients and parameters are `f32` or `bf16` ([`Float`]); the arithmetic,
//! the saved mean and rstd, and the parameter gradients (dweight, dbias) are f32.
//! [`residual_layernorm_forward`] fuses the residual add that precedes each LayerNorm into the
//! same pass over the row.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{to_i32, Gpu};
use super::Float;

/// Rows per block: the kernels run one warp per row.
const ROWS_PER_BLOCK: u32 = 8;

/// One warp per row, [`ROWS_PER_BLOCK`] rows per block.
fn row_launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROWS_PER_BLOCK as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * ROWS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// N*C, after checking C > 0 and that the product fits.
fn checked_nc(op: &str, n: usize, c: usize) -> Result<usize> {
    ensure!(c > 0, "{op}: C must be positive");
    n.checked_mul(c).with_context(|| format!("{op}: N*C overflows"))
}

/// Checks every `(name, length, required, required as a shape)`.
fn check_lens(op: &str, lens: &[(&str, usize, usize, &str)]) -> Result<()> {
    for &(name, len, need, shape) in lens {
        ensure!(len >= need, "{op}: {name} has {len} < {shape} = {need}");
    }
    Ok(())
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
        ("out", out.len(), nc, "N*C"),
        ("mean", mean.len(), n, "N"),
        ("rstd", rstd.len(), n, "N"),
        ("inp", inp.len(), nc, "N*C"),
        ("weight", weight.len(), c, "C"),
        ("bias", bias.len(), c, "C"),
    ];
    check_lens(OP, &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, ci) = (to_i32(n, "N")?, to_i32(c, "C")?);
    let func = gpu.function(&T::kernel(OP))?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (mean_ptr, _mean_guard) = mean.device_ptr_mut(stream);
    let (rstd_ptr, _rstd_guard) = rstd.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (weight_ptr, _weight_guard) = weight.device_ptr(stream);
    let (bias_ptr, _bias_guard) = bias.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&out_ptr).arg(&mean_ptr).arg(&rstd_ptr).arg(&inp_ptr).arg(&weight_ptr).arg(&bias_ptr).arg(&ni).arg(&ci);
    // SAFETY: the argument list matches the kernel signature (T*, float*, float*, const T*,
    // const T*, const T*, int, int) with T float or __nv_bfloat16 as T::kernel picks; the lengths
    // checked above cover every index the kernel touches (rows < N, channels < C). The output
    // buffers are distinct `&mut` borrows, so they alias neither each other nor the inputs. The
    // guards keep the buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(row_launch(n)) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
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
        ("residual", residual.len(), nc, "N*C"),
        ("out", out.len(), nc, "N*C"),
        ("mean", mean.len(), n, "N"),
        ("rstd", rstd.len(), n, "N"),
        ("a", a.len(), nc, "N*C"),
        ("b", b.len(), nc, "N*C"),
        ("weight", weight.len(), c, "C"),
        ("bias", bias.len(), c, "C"),
    ];
    check_lens(OP, &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, ci) = (to_i32(n, "N")?, to_i32(c, "C")?);
    let func = gpu.function(&T::kernel(OP))?;

    let stream = &**gpu.stream();
    let (residual_ptr, _residual_guard) = residual.device_ptr_mut(stream);
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (mean_ptr, _mean_guard) = mean.device_ptr_mut(stream);
    let (rstd_ptr, _rstd_guard) = rstd.device_ptr_mut(stream);
    let (a_ptr, _a_guard) = a.device_ptr(stream);
    let (b_ptr, _b_guard) = b.device_ptr(stream);
    let (weight_ptr, _weight_guard) = weight.device_ptr(stream);
    let (bias_ptr, _bias_guard) = bias.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&residual_ptr)
        .arg(&out_ptr)
        .arg(&mean_ptr)
        .arg(&rstd_ptr)
        .arg(&a_ptr)
        .arg(&b_ptr)
        .arg(&weight_ptr)
        .arg(&bias_ptr)
        .arg(&ni)
        .arg(&ci);
    // SAFETY: the argument list matches the kernel signature (T*, T*, float*, float*, const T*,
    // const T*, const T*, const T*, int, int) with T float or __nv_bfloat16 as T::kernel picks; the
    // lengths checked above
    // cover every index the kernel touches. The four outputs are distinct `&mut` borrows, so none
    // aliases another buffer. The guards keep the buffers' stream ordering until after the launch
    // is queued.
    unsafe { launch.launch(row_launch(n)) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
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
    let scratch_len = layernorm_backward_scratch_len(n, c);
    let lens = [
        ("dinp", dinp.len(), nc, "N*C"),
        ("dweight", dweight.len(), c, "C"),
        ("dbias", dbias.len(), c, "C"),
        ("scratch", scratch.len(), scratch_len, "layernorm_backward_scratch_len(N, C)"),
        ("dout", dout.len(), nc, "N*C"),
        ("inp", inp.len(), nc, "N*C"),
        ("weight", weight.len(), c, "C"),
        ("mean", mean.len(), n, "N"),
        ("rstd", rstd.len(), n, "N"),
    ];
    check_lens(OP, &lens)?;
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
    let func = gpu.function(&T::kernel(OP))?;
    let reduce = gpu.function("layernorm_backward_reduce")?;

    let stream = &**gpu.stream();
    {
        let (dinp_ptr, _dinp_guard) = dinp.device_ptr_mut(stream);
        let (scratch_ptr, _scratch_guard) = scratch.device_ptr_mut(stream);
        let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
        let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
        let (weight_ptr, _weight_guard) = weight.device_ptr(stream);
        let (mean_ptr, _mean_guard) = mean.device_ptr(stream);
        let (rstd_ptr, _rstd_guard) = rstd.device_ptr(stream);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&dinp_ptr)
            .arg(&scratch_ptr)
            .arg(&dout_ptr)
            .arg(&inp_ptr)
            .arg(&weight_ptr)
            .arg(&mean_ptr)
            .arg(&rstd_ptr)
            .arg(&ni)
            .arg(&ci)
            .arg(&rpc)
            .arg(&chunks_i);
        // SAFETY: the argument list matches the kernel signature (T*, float*, const T*, const T*,
        // const T*, const float*, const float*, int, int, int, int) with T float or __nv_bfloat16
        // as T::kernel picks. The lengths checked above cover every index the kernel touches:
        // rows < N and channels < C of the (N,C), (N) and (C) buffers, and scratch slots
        // < 2 * chunks * C = layernorm_backward_scratch_len. dinp and scratch are distinct `&mut`
        // borrows, so they alias neither each other nor the inputs. The guards keep the buffers'
        // stream ordering until after the launch is queued.
        unsafe { launch.launch(main_cfg) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    }
    let (dweight_ptr, _dweight_guard) = dweight.device_ptr_mut(stream);
    let (dbias_ptr, _dbias_guard) = dbias.device_ptr_mut(stream);
    let (scratch_ptr, _scratch_guard) = scratch.device_ptr_mut(stream);
    let mut launch = stream.launch_builder(&reduce);
    launch.arg(&dweight_ptr).arg(&dbias_ptr).arg(&scratch_ptr).arg(&ci).arg(&chunks_i);
    // SAFETY: the argument list matches (float*, float*, const float*, int, int) for every T (the
    // gradients and scratch are f32; scratch is only read, borrowed mutably because the wrapper
    // takes it so); channels < C of dweight and dbias and scratch slots < 2 * chunks * C, all
    // checked above. Queued on the same stream after the partial sums it reads. dweight and dbias
    // are distinct `&mut` borrows.
    unsafe { launch.launch(reduce_cfg) }.with_context(|| "launching layernorm_backward_reduce".to_string())?;
    Ok(())
}
