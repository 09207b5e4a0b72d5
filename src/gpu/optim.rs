//! The optimizer on the GPU (`kernels/optim.cu`), fp32: the global gradient norm, clipping and AdamW,
//! mirroring `train::optim` on the CPU.
//!
//! - [`global_norm`] sums squares in f64 with a fixed grid ([`NORM_BLOCKS`] blocks of
//!   [`NORM_THREADS`] threads whatever the device), a fixed per-thread order and fixed trees, so it
//!   gives the same bits on every run and every GPU. It differs from the CPU's sum only in the order
//!   of the f64 additions (relative difference around 1e-15).
//! - [`scale`] and [`adamw_update`] are elementwise and use the CPU's float expressions with every
//!   operation correctly rounded and nothing fused, so they are bit-identical to the CPU.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{grid_for, Gpu};
use crate::model::ParamLayout;
use crate::train::optim::AdamWConfig;

/// Blocks of the norm's first pass: fixed, so the summation order does not depend on the device.
pub const NORM_BLOCKS: usize = 1024;
/// Threads per block of both norm passes (the kernels' shared arrays are this size).
pub const NORM_THREADS: u32 = 256;

/// f64 elements the `scratch` of [`global_norm`] needs: one partial sum per block plus the total.
pub fn global_norm_scratch_len() -> usize {
    NORM_BLOCKS + 1
}

/// The L2 norm of `grads[..n]`: squares summed in f64 in a fixed order on the device, the square root
/// taken on the host. `scratch` holds at least [`global_norm_scratch_len`] values. Waits for the
/// stream (the result comes back to the host).
pub fn global_norm(
    gpu: &Gpu,
    grads: &impl DevicePtr<f32>,
    scratch: &mut impl DevicePtrMut<f64>,
    n: usize,
) -> Result<f64> {
    ensure!(grads.len() >= n, "global_norm: grads has {} < N = {n}", grads.len());
    let (g_ptr, _g_guard) = grads.device_ptr(gpu.stream());
    Ok(sum_of_squares(gpu, g_ptr, scratch, n)?.sqrt())
}

/// The f64 sum of squares of the `n` floats at `g_ptr` (a live device buffer the caller holds), by the
/// fixed-order two-pass reduction. Waits for the stream.
fn sum_of_squares(
    gpu: &Gpu,
    g_ptr: cudarc::driver::sys::CUdeviceptr,
    scratch: &mut impl DevicePtrMut<f64>,
    n: usize,
) -> Result<f64> {
    ensure!(
        scratch.len() >= global_norm_scratch_len(),
        "global_norm: scratch has {} < {} values",
        scratch.len(),
        global_norm_scratch_len()
    );
    if n == 0 {
        return Ok(0.0);
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let nblocks = NORM_BLOCKS as i32;
    let partials = gpu.function("global_norm_partials")?;
    let last = gpu.function("global_norm_final")?;

    let stream = &**gpu.stream();
    let mut sum = [0.0f64];
    {
        let (s_ptr, _s_guard) = scratch.device_ptr_mut(stream);
        let mut launch = stream.launch_builder(&partials);
        launch.arg(&g_ptr).arg(&n64).arg(&s_ptr);
        let cfg =
            LaunchConfig { grid_dim: (NORM_BLOCKS as u32, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match (const float*, long long, double*); the kernel reads g[i] for
        // i < N (the caller's buffer holds N floats) and writes partial[blockIdx.x] for
        // blockIdx.x < NORM_BLOCKS, which the scratch length covers. The block size is the kernels'
        // NORM_THREADS.
        unsafe { launch.launch(cfg) }.context("launching global_norm_partials")?;

        let mut launch = stream.launch_builder(&last);
        launch.arg(&s_ptr).arg(&nblocks);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match (double*, int); the kernel reads partial[0..NORM_BLOCKS) and
        // writes partial[NORM_BLOCKS], all within the scratch length checked above.
        unsafe { launch.launch(cfg) }.context("launching global_norm_final")?;

        gpu.ctx().bind_to_thread().context("binding the CUDA context")?;
        let total = s_ptr + (NORM_BLOCKS * std::mem::size_of::<f64>()) as u64;
        // SAFETY: `total` points at scratch[NORM_BLOCKS], a live f64 of the scratch allocation; the
        // copy is queued on the same stream after the kernels, and the stream is synchronized below
        // before `sum` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut sum[..], total, stream.cu_stream()) }
            .context("copying the gradient norm to the host")?;
    }
    gpu.synchronize()?;
    Ok(sum[0])
}

/// `grads[i] *= coef` for `i < n`, queued on [`Gpu::stream`] (one correctly rounded multiply, as the CPU).
pub fn scale(gpu: &Gpu, grads: &mut impl DevicePtrMut<f32>, coef: f32, n: usize) -> Result<()> {
    const OP: &str = "grad_scale";
    ensure!(grads.len() >= n, "{OP}: grads has {} < N = {n}", grads.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(OP)?;
    let stream = &**gpu.stream();
    let (g_ptr, _g_guard) = grads.device_ptr_mut(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&g_ptr).arg(&coef).arg(&n64);
    // SAFETY: the arguments match (float*, float, long long); the kernel touches indices < N, which the
    // length checked above covers.
    unsafe { launch.launch(grid_for(n)?) }.context("launching grad_scale")?;
    Ok(())
}

/// Scales `grads[..n]` so their global norm is at most `max_norm`, as `train::optim::clip_grad_norm`:
/// coef = min(1, max_norm / (norm + 1e-6)) applied only when below 1 and the norm is finite;
/// `max_norm <= 0` disables clipping. Returns the norm before clipping. Waits for the stream.
pub fn clip_grad_norm(
    gpu: &Gpu,
    grads: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f64>,
    n: usize,
    max_norm: f64,
) -> Result<f64> {
    ensure!(grads.len() >= n, "clip_grad_norm: grads has {} < N = {n}", grads.len());
    let norm = {
        let (g_ptr, _g_guard) = grads.device_ptr_mut(gpu.stream());
        sum_of_squares(gpu, g_ptr, scratch, n)?.sqrt()
    };
    if max_norm > 0.0 && norm.is_finite() {
        let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        if coef < 1.0 {
            scale(gpu, grads, coef, n)?;
        }
    }
    Ok(norm)
}

/// One AdamW update of `params[..n]` (and its moments `m`, `v`) from `grads[..n]`, queued on
/// [`Gpu::stream`]. `decay` is `1 - lr*weight_decay` for decaying tensors and `1.0` otherwise,
/// `step_size` is `lr/bc1` and `inv_sqrt_bc2` is `1/sqrt(bc2)`, as the CPU computes them.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    gpu: &Gpu,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    n: usize,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
) -> Result<()> {
    const OP: &str = "adamw_update";
    ensure!(params.len() >= n, "{OP}: params has {} < N = {n}", params.len());
    ensure!(grads.len() >= n, "{OP}: grads has {} < N = {n}", grads.len());
    ensure!(m.len() >= n, "{OP}: m has {} < N = {n}", m.len());
    ensure!(v.len() >= n, "{OP}: v has {} < N = {n}", v.len());
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let func = gpu.function(OP)?;
    let stream = &**gpu.stream();
    let (p_ptr, _p_guard) = params.device_ptr_mut(stream);
    let (g_ptr, _g_guard) = grads.device_ptr(stream);
    let (m_ptr, _m_guard) = m.device_ptr_mut(stream);
    let (v_ptr, _v_guard) = v.device_ptr_mut(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&p_ptr).arg(&g_ptr).arg(&m_ptr).arg(&v_ptr).arg(&n64);
    launch.arg(&beta1).arg(&beta2).arg(&eps).arg(&decay).arg(&step_size).arg(&inv_sqrt_bc2);
    // SAFETY: the arguments match (float*, const float*, float*, float*, long long, float x6); the
    // kernel touches indices < N, which the lengths checked above cover.
    unsafe { launch.launch(grid_for(n)?) }.context("launching adamw_update")?;
    Ok(())
}

/// One AdamW step over the whole flat buffer, as `train::optim::AdamW::step` with its step counter
/// already at `t`: bias corrections in f64 as the CPU, then one [`adamw_update`] per tensor of
/// `layout` (weight decay only where `Param::decays`). Queued on [`Gpu::stream`].
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    gpu: &Gpu,
    layout: &ParamLayout,
    params: &mut CudaSlice<f32>,
    grads: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    cfg: AdamWConfig,
    t: u64,
    lr: f32,
) -> Result<()> {
    let total = layout.total;
    ensure!(
        params.len() >= total && grads.len() >= total && m.len() >= total && v.len() >= total,
        "adamw_step: buffers hold {}, {}, {}, {} values; the layout needs {total}",
        params.len(),
        grads.len(),
        m.len(),
        v.len()
    );
    ensure!(t >= 1, "adamw_step: t is the step count after incrementing, so at least 1");
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
    let step_size = (lr as f64 / bc1) as f32;
    let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
    for spec in &layout.tensors {
        let decay = if spec.param.decays() { 1.0 - lr * cfg.weight_decay } else { 1.0 };
        let r = spec.range();
        adamw_update(
            gpu,
            &mut params.slice_mut(r.clone()),
            &grads.slice(r.clone()),
            &mut m.slice_mut(r.clone()),
            &mut v.slice_mut(r),
            spec.len,
            cfg.beta1,
            cfg.beta2,
            cfg.eps,
            decay,
            step_size,
            inv_sqrt_bc2,
        )?;
    }
    Ok(())
}
