//! LayerNorm forward on the GPU (`kernels/layernorm.cu`), matching `cpu::layernorm`: eps 1e-5,
//! biased variance, and the per-row mean and rstd saved for the backward pass. Activations and
//! parameters are `f32` or `bf16` ([`Float`]); the arithmetic, and the saved mean and rstd, are f32.
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
