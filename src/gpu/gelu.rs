//! GELU forward and backward on the GPU (`kernels/gelu.cu`): the tanh approximation with the
//! constants of `cpu::gelu`, in f32 or bf16 (computed in f32, rounded to bf16 once).

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

use super::device::{grid_for, Gpu};
use super::Float;

// inp (N) -> out (N)
/// `out[i] = gelu(inp[i])` for `i < n`, queued on [`Gpu::stream`]. Buffers may be longer than `n`.
pub fn gelu_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "gelu_forward";
    ensure!(out.len() >= n, "{OP}: out has {} < N = {n}", out.len());
    ensure!(inp.len() >= n, "{OP}: inp has {} < N = {n}", inp.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(&T::kernel(OP))?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&out_ptr).arg(&inp_ptr).arg(&n64);
    // SAFETY: the argument list matches the kernel signature (T*, const T*, long long) with T float or
    // __nv_bfloat16 as T::kernel picks; the kernel touches indices < N, which the lengths checked above cover. The guards keep the
    // buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(grid_for(n)?) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
}

// inp (N), dout (N) -> dinp (N) +=
/// `dinp[i] += gelu'(inp[i]) * dout[i]` for `i < n` (the tanh form's derivative, the formula of
/// `cpu::gelu::gelu_backward`), queued on [`Gpu::stream`]. `inp` is the forward's input. Buffers
/// may be longer than `n`. All arithmetic is f32; with `T = bf16` each `dinp` value is its old
/// value plus the f32 product, rounded to bf16 once.
pub fn gelu_backward<T: Float>(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    dout: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "gelu_backward";
    ensure!(dinp.len() >= n, "{OP}: dinp has {} < N = {n}", dinp.len());
    ensure!(inp.len() >= n, "{OP}: inp has {} < N = {n}", inp.len());
    ensure!(dout.len() >= n, "{OP}: dout has {} < N = {n}", dout.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(&T::kernel(OP))?;

    let stream = &**gpu.stream();
    let (dinp_ptr, _dinp_guard) = dinp.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&dinp_ptr).arg(&inp_ptr).arg(&dout_ptr).arg(&n64);
    // SAFETY: the argument list matches the kernel signature (T*, const T*, const T*, long long)
    // with T float or __nv_bfloat16 as T::kernel picks; the kernel touches indices < N, which the
    // lengths checked above cover. dinp is a `&mut` borrow, so it aliases neither input. The guards
    // keep the buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(grid_for(n)?) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
}
