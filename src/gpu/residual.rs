//! Residual add forward on the GPU (`kernels/residual.cu`) in f32, bit-identical to
//! `cpu::residual::residual_forward`, or in bf16: the f32 sum of the two values rounded to bf16 once.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

use super::device::{grid_for, Gpu};
use super::Float;

// a (N), b (N) -> out (N)
/// `out[i] = a[i] + b[i]` for `i < n`, queued on [`Gpu::stream`]. Buffers may be longer than `n`.
pub fn residual_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "residual_forward";
    ensure!(out.len() >= n, "{OP}: out has {} < N = {n}", out.len());
    ensure!(a.len() >= n, "{OP}: a has {} < N = {n}", a.len());
    ensure!(b.len() >= n, "{OP}: b has {} < N = {n}", b.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(&T::kernel(OP))?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (a_ptr, _a_guard) = a.device_ptr(stream);
    let (b_ptr, _b_guard) = b.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&out_ptr).arg(&a_ptr).arg(&b_ptr).arg(&n64);
    // SAFETY: the argument list matches the kernel signature (T*, const T*, const T*, long long) with
    // T float or __nv_bfloat16 as T::kernel picks; the kernel touches indices < N, which the lengths checked above cover. The guards
    // keep the buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(grid_for(n)?) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
}

// dout (N) -> dinp1 (N) +=, dinp2 (N) +=
/// `dinp1[i] += dout[i]; dinp2[i] += dout[i]` for `i < n` in f32, queued on [`Gpu::stream`];
/// bit-identical to `cpu::residual::residual_backward`. Buffers may be longer than `n`.
pub fn residual_backward(
    gpu: &Gpu,
    dinp1: &mut impl DevicePtrMut<f32>,
    dinp2: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<f32>,
    n: usize,
) -> Result<()> {
    const OP: &str = "residual_backward";
    ensure!(dinp1.len() >= n, "{OP}: dinp1 has {} < N = {n}", dinp1.len());
    ensure!(dinp2.len() >= n, "{OP}: dinp2 has {} < N = {n}", dinp2.len());
    ensure!(dout.len() >= n, "{OP}: dout has {} < N = {n}", dout.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(OP)?;

    let stream = &**gpu.stream();
    let (dinp1_ptr, _dinp1_guard) = dinp1.device_ptr_mut(stream);
    let (dinp2_ptr, _dinp2_guard) = dinp2.device_ptr_mut(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&dinp1_ptr).arg(&dinp2_ptr).arg(&dout_ptr).arg(&n64);
    // SAFETY: the argument list matches the kernel signature (float*, float*, const float*, long
    // long); the kernel touches indices < N, which the lengths checked above cover. dinp1 and dinp2
    // are distinct `&mut` borrows, so they alias neither each other nor dout. The guards keep the
    // buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(grid_for(n)?) }.with_context(|| format!("launching {OP}"))?;
    Ok(())
}
