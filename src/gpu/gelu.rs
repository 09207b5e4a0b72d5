//! GELU forward on the GPU in fp32 (`kernels/gelu.cu`): the tanh approximation with the constants
//! of `cpu::gelu`.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

use super::device::{grid_for, Gpu};

// inp (N) -> out (N)
/// `out[i] = gelu(inp[i])` for `i < n`, queued on [`Gpu::stream`]. Buffers may be longer than `n`.
pub fn gelu_forward(gpu: &Gpu, out: &mut impl DevicePtrMut<f32>, inp: &impl DevicePtr<f32>, n: usize) -> Result<()> {
    const OP: &str = "gelu_forward";
    ensure!(out.len() >= n, "{OP}: out has {} < N = {n}", out.len());
    ensure!(inp.len() >= n, "{OP}: inp has {} < N = {n}", inp.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(OP)?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&out_ptr).arg(&inp_ptr).arg(&n64);
    // SAFETY: the argument list matches the kernel signature (float*, const float*, long long); the
    // kernel touches indices < N, which the lengths checked above cover. The guards keep the
    // buffers' stream ordering until after the launch is queued.
    unsafe { launch.launch(grid_for(n)?) }.context("launching gelu_forward")?;
    Ok(())
}
