//! The optimizer on the GPU (`kernels/adamw.cu`): the global gradient norm, clipping and AdamW over
//! f32 gradients, moments and weights, mirroring `cpu::adamw` on the CPU. In bf16 training the f32
//! weights are the master copy and AdamW also writes the bf16 working copy with stochastic rounding
//! ([`stochastic_round_bf16`]).
//!
//! - [`global_norm`] sums squares in f64 with a fixed grid ([`NORM_BLOCKS`] blocks of
//!   [`NORM_THREADS`] threads whatever the device), a fixed per-thread order and fixed trees, so it
//!   gives the same bits on every run and every GPU. It differs from the CPU's sum only in the order
//!   of the f64 additions (relative difference around 1e-15).
//! - [`scale`] and [`adamw_update`] are elementwise and use the CPU's float expressions with every
//!   operation correctly rounded and nothing fused, so they are bit-identical to the CPU.
//! - The bf16 working copy is a pure function of the master weights and the step ([`sr_seed`]), so a
//!   resumed run rebuilds it exactly with [`params_round_bf16`] and checkpoints hold only f32.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{grid_for, Gpu};
use super::launch::Launch;
use super::Kernels;
use crate::cpu::adamw::{clip_factor, AdamWConfig};
use crate::model::ParamLayout;

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
    if n == 0 {
        return Ok(0.0);
    }
    let stream = &**gpu.stream();
    let mut sum = [0.0f64];
    {
        // Held until the copy of the total below is queued.
        let s_len = scratch.len();
        let (s_ptr, _s_guard) = scratch.device_ptr_mut(stream);
        queue_sum_of_squares(gpu, g_ptr, s_ptr, s_len, n)?;
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

/// Queues the fixed-order two-pass sum of squares of the `n > 0` floats at `g_ptr` into
/// `scratch[NORM_BLOCKS]` (the scratch at `s_ptr` holds `s_len` f64), without waiting: the caller
/// holds both buffers' guards until this returns.
fn queue_sum_of_squares(
    gpu: &Gpu,
    g_ptr: cudarc::driver::sys::CUdeviceptr,
    s_ptr: cudarc::driver::sys::CUdeviceptr,
    s_len: usize,
    n: usize,
) -> Result<()> {
    ensure!(
        s_len >= global_norm_scratch_len(),
        "global_norm: scratch has {s_len} < {} values",
        global_norm_scratch_len()
    );
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let nblocks = NORM_BLOCKS as i32;
    let partials = Launch::new(gpu, "global_norm_partials", &[])?;
    let last = Launch::new(gpu, "global_norm_final", &[])?;
    let cfg =
        LaunchConfig { grid_dim: (NORM_BLOCKS as u32, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: (const float*, long long, double*); the kernel reads g[i] for i < N (the caller's
    // buffer holds N floats) and writes partial[blockIdx.x] for blockIdx.x < NORM_BLOCKS, inside
    // the scratch length checked above. The block size is the kernels' NORM_THREADS.
    unsafe { partials.ptr(g_ptr).arg(n64).ptr(s_ptr).run(cfg) }?;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: (double*, int); the kernel reads partial[0..NORM_BLOCKS) and writes
    // partial[NORM_BLOCKS], all within the scratch length checked above.
    unsafe { last.ptr(s_ptr).arg(nblocks).run(cfg) }
}

/// `grads[i] *= coef` for `i < n`, queued on [`Gpu::stream`] (one correctly rounded multiply, as the CPU).
pub fn scale(gpu: &Gpu, grads: &mut impl DevicePtrMut<f32>, coef: f32, n: usize) -> Result<()> {
    const OP: &str = "grad_scale";
    let k = Launch::new(gpu, OP, &[("grads", grads.len(), n)])?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    // SAFETY: (float*, float, long long); the kernel touches indices < N.
    unsafe { k.write(grads).arg(coef).arg(n64).run(grid_for(n)?) }
}

/// Scales `grads[..n]` so their global norm is at most `max_norm`, as `cpu::adamw::clip_grad_norm`:
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
    let coef = clip_factor(norm, max_norm);
    if coef < 1.0 {
        scale(gpu, grads, coef, n)?;
    }
    Ok(norm)
}

/// The stochastic-rounding seed of AdamW step `t` (the count after the update): the working copy
/// after step `t` is `stochastic_round_bf16(master[i], sr_bits(i, sr_seed(t)))` for flat index `i`.
pub fn sr_seed(t: u64) -> u32 {
    (t ^ (t >> 32)) as u32
}

/// 32 random bits for flat index `index` under `seed`: the kernels' `sr_bits` (a splitmix64
/// finaliser of `index + seed * 0x9E3779B97F4A7C15`, low half).
pub fn sr_bits(index: u64, seed: u32) -> u32 {
    let mut z = index.wrapping_add((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

/// `x` rounded to bf16 stochastically with random bits `r`, as the kernels do: the low 16 bits of
/// `r` are added to the float's bits and the top half kept, so `x` rounds up in magnitude with
/// probability (its dropped bits) / 2^16 and is unbiased. Inf and NaN round to nearest; a carry into
/// inf keeps the truncated value.
pub fn stochastic_round_bf16(x: f32, r: u32) -> half::bf16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return half::bf16::from_f32(x);
    }
    let mut up = bits.wrapping_add(r & 0xffff);
    if up & 0x7f80_0000 == 0x7f80_0000 {
        up = bits;
    }
    half::bf16::from_bits((up >> 16) as u16)
}

/// The bf16 working copy of `master` under `seed`, computed on the host: what [`params_round_bf16`]
/// (and the AdamW step whose seed this is) writes on the device, bit for bit.
pub fn round_params_host(master: &[f32], seed: u32) -> Vec<half::bf16> {
    master.iter().enumerate().map(|(i, &x)| stochastic_round_bf16(x, sr_bits(i as u64, seed))).collect()
}

/// `params[i] = stochastic_round_bf16(master[i], sr_bits(i, seed))` for `i < n`: the bf16 working
/// copy of f32 master weights, as the AdamW step with this seed writes it.
pub fn params_round_bf16(
    gpu: &Gpu,
    params: &mut impl DevicePtrMut<half::bf16>,
    master: &impl DevicePtr<f32>,
    n: usize,
    seed: u32,
) -> Result<()> {
    const OP: &str = "params_round_bf16";
    let k = Launch::new(gpu, OP, &[("params", params.len(), n), ("master", master.len(), n)])?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    // SAFETY: (__nv_bfloat16*, const float*, long long, unsigned int); indices < N of both.
    unsafe { k.write(params).read(master).arg(n64).arg(seed).run(grid_for(n)?) }
}

/// One AdamW step over the whole flat buffer, as `cpu::adamw::AdamW::update` with its step counter
/// already at `t`: bias corrections in f64 as the CPU, then one update kernel per tensor of
/// `layout` (weight decay only where `Param::decays`). Queued on [`Gpu::stream`].
///
/// `params` are the f32 weights (the master copy in bf16 training). With `bf16 = Some(copy)` the
/// kernel also writes `copy` (the bf16 working copy) from the new weights with stochastic rounding
/// under [`sr_seed`]`(t)`; the f32 update is the same either way.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    gpu: &Gpu,
    layout: &ParamLayout,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    cfg: AdamWConfig,
    t: u64,
    lr: f32,
    bf16: Option<&mut dyn DevicePtrMut<half::bf16>>,
) -> Result<()> {
    let total = layout.total;
    ensure!(
        params.len() >= total && grads.len() >= total && m.len() >= total && v.len() >= total,
        "adamw_update: buffers hold {}, {}, {}, {} values; the layout needs {total}",
        params.len(),
        grads.len(),
        m.len(),
        v.len()
    );
    if let Some(copy) = bf16.as_ref() {
        ensure!(copy.len() >= total, "adamw_update: the bf16 copy holds {} < {total} values", copy.len());
    }
    let (step_size, inv_sqrt_bc2) = bias_corrections(cfg, t, lr)?;
    let seed = sr_seed(t);
    let stream = &**gpu.stream();
    // Guards held over the whole loop: each launch gets offsets into these buffers.
    let (p_ptr, _p_guard) = params.device_ptr_mut(stream);
    let (g_ptr, _g_guard) = grads.device_ptr(stream);
    let (m_ptr, _m_guard) = m.device_ptr_mut(stream);
    let (v_ptr, _v_guard) = v.device_ptr_mut(stream);
    let copy = bf16.map(|c| c.device_ptr_mut(stream));
    let copy_ptr = copy.as_ref().map(|c| c.0);
    for spec in &layout.tensors {
        if spec.len == 0 {
            continue;
        }
        let decay = if spec.param.decays() { 1.0 - lr * cfg.weight_decay } else { 1.0 };
        let (off4, n64) = ((spec.offset * 4) as u64, i64::try_from(spec.len).context("tensor too large")?);
        // --kernels vector: the 128-bit kernel where this tensor's pointers are 16-byte aligned.
        let aligned = [p_ptr + off4, g_ptr + off4, m_ptr + off4, v_ptr + off4]
            .into_iter()
            .chain(copy_ptr.map(|c| c + (spec.offset * 2) as u64))
            .all(|p| p.is_multiple_of(16));
        let vector = aligned && gpu.kernels() == Kernels::Vector;
        let k = match (copy_ptr.is_some(), vector) {
            (false, false) => Launch::new(gpu, "adamw_update", &[])?,
            (true, false) => Launch::new(gpu, "adamw_update_bf16", &[])?,
            (false, true) => Launch::new(gpu, "adamw_update_vec", &[])?,
            (true, true) => Launch::new(gpu, "adamw_update_vec_bf16", &[])?,
        };
        let k = match copy_ptr {
            None => k.ptr(p_ptr + off4),
            Some(c) => k.ptr(p_ptr + off4).ptr(c + (spec.offset * 2) as u64),
        };
        let k = k.ptr(g_ptr + off4).ptr(m_ptr + off4).ptr(v_ptr + off4).arg(n64);
        let k = k.arg(cfg.beta1).arg(cfg.beta2).arg(cfg.eps).arg(decay).arg(step_size).arg(inv_sqrt_bc2);
        let k = if copy_ptr.is_some() { k.arg(seed).arg(spec.offset as i64) } else { k };
        // SAFETY: adamw_update[_vec] (float*, const float*, float*, float*, long long, float x6) or
        // adamw_update[_vec]_bf16 (float*, __nv_bfloat16*, const float*, float*, float*, long long,
        // float x6, unsigned int, long long); each pointer is the tensor's offset into a buffer of
        // at least layout.total elements (checked), and the kernel touches its spec.len elements
        // (the _vec ones in 16-byte packs at the 16-byte aligned pointers checked above).
        let threads = if vector { spec.len.div_ceil(4) } else { spec.len };
        unsafe { k.run(grid_for(threads)?) }.with_context(|| format!("AdamW for {:?}", spec.param))?;
    }
    Ok(())
}

/// AdamW's step size and 1/sqrt(bias correction 2) for step `t` (the count after the update), in
/// f64 then rounded to f32, as `cpu::adamw::AdamW::update`.
fn bias_corrections(cfg: AdamWConfig, t: u64, lr: f32) -> Result<(f32, f32)> {
    ensure!(t >= 1, "adamw_update: t is the step count after incrementing, so at least 1");
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
    Ok(((lr as f64 / bc1) as f32, (1.0 / bc2.sqrt()) as f32))
}

// ---- One optimizer step queued whole, read back once (`--sync step`; never run on a GPU yet) ----

/// f64 values of the device's step record: [loss, norm, clip factor, applied] (`kernels/adamw.cu`).
pub const STEP_STATE_LEN: usize = 4;

/// What one optimizer step did, as the host learns it at the end of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The mean loss over the step's micro-batches (NaN when poisoned).
    pub loss: f64,
    /// The gradient norm before clipping.
    pub norm: f64,
    /// Whether AdamW updated the weights: false for a step with a non-finite loss or norm.
    pub applied: bool,
}

impl StepOutcome {
    /// The outcome the host path decides from a loss and a norm: applied when both are finite.
    pub fn decide(loss: f64, norm: f64) -> StepOutcome {
        StepOutcome { loss, norm, applied: loss.is_finite() && norm.is_finite() }
    }

    /// The outcome the device recorded in its step state ([`STEP_STATE_LEN`] values).
    pub fn from_state(state: &[f64]) -> StepOutcome {
        StepOutcome { loss: state[0], norm: state[1], applied: state[3] != 0.0 }
    }
}

/// The table `adamw_step` reads: (offset, length, decays 0/1) for every non-empty tensor of
/// `layout`, in layout order; and whether every offset is a multiple of 8, which the `_vec` kernels
/// need (their packs are 4 f32 or 8 bf16 from the tensor's start).
pub fn adamw_table(layout: &ParamLayout) -> Result<(Vec<i64>, bool)> {
    let mut table = Vec::new();
    let mut packed = true;
    for spec in layout.tensors.iter().filter(|s| s.len > 0) {
        table.push(i64::try_from(spec.offset).context("parameter offset does not fit in an i64")?);
        table.push(i64::try_from(spec.len).context("tensor too large")?);
        table.push(spec.param.decays() as i64);
        packed &= spec.offset.is_multiple_of(8);
    }
    Ok((table, packed))
}

/// `state[0] += mean(losses[..n])` on the device (f64, a fixed-order block reduction): one
/// micro-batch's loss added to the step's sum without a round trip to the host.
pub fn step_loss_accumulate(
    gpu: &Gpu,
    state: &mut impl DevicePtrMut<f64>,
    losses: &impl DevicePtr<f32>,
    n: usize,
) -> Result<()> {
    const OP: &str = "step_loss_accumulate";
    let k = Launch::new(gpu, OP, &[("state", state.len(), STEP_STATE_LEN), ("losses", losses.len(), n)])?;
    ensure!(n > 0, "{OP}: no losses");
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: (const float*, long long, double*); one block of NORM_THREADS (the kernel's shared
    // array) reads losses[i < N] and writes state[0], inside the lengths checked above.
    unsafe { k.read(losses).arg(n64).write(state).run(cfg) }
}

/// Queues the end of a step's gradient phase on the device: the global norm of `grads[..n]` (the
/// fixed-order sum of squares into `scratch`), then `step_decide`, which turns the step's loss sum
/// over `accum` micro-batches into its mean (NaN when `poison`), records the norm and the clip
/// factor ([`clip_factor`]'s expression, `max_norm <= 0` disabling it), and marks the step applied
/// when loss and norm are finite. Nothing comes back to the host.
#[allow(clippy::too_many_arguments)]
pub fn step_decide(
    gpu: &Gpu,
    state: &mut impl DevicePtrMut<f64>,
    grads: &impl DevicePtr<f32>,
    scratch: &mut impl DevicePtrMut<f64>,
    n: usize,
    max_norm: f64,
    accum: usize,
    poison: bool,
) -> Result<()> {
    const OP: &str = "step_decide";
    let lens = [("state", state.len(), STEP_STATE_LEN), ("grads", grads.len(), n)];
    let k = Launch::new(gpu, OP, &lens)?;
    ensure!(n > 0 && accum > 0, "{OP}: no gradients or no micro-batches");
    let accum = i32::try_from(accum).context("--grad-accum does not fit in an i32")?;
    let stream = &**gpu.stream();
    let (g_ptr, _g_guard) = grads.device_ptr(stream);
    let s_len = scratch.len();
    let (s_ptr, _s_guard) = scratch.device_ptr_mut(stream);
    queue_sum_of_squares(gpu, g_ptr, s_ptr, s_len, n)?;
    let total = s_ptr + (NORM_BLOCKS * std::mem::size_of::<f64>()) as u64;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: (double*, const double*, double, int, int); one thread writes state[0..4) (length
    // checked) and reads scratch[NORM_BLOCKS], inside the scratch checked by queue_sum_of_squares
    // and guarded until this function returns.
    unsafe { k.write(state).ptr(total).arg(max_norm).arg(accum).arg(poison as i32).run(cfg) }
}

/// Blocks per tensor row of `adamw_step`'s grid (the blocks stride over longer tensors).
const STEP_BLOCKS: usize = 1024;

/// AdamW over the whole flat buffer in one launch, as [`adamw_update`] after clipping (bit for bit):
/// each gradient is multiplied by the clip factor `state` holds, and nothing is written when
/// `state` marks the step skipped. `table` is [`adamw_table`]`(layout)` on the device (`packed`
/// its second value). With `bf16 = Some(copy)` the bf16 working copy is written as by
/// [`adamw_update`]. `--kernels vector` takes the 128-bit kernels when every tensor offset and
/// pointer allows.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    gpu: &Gpu,
    layout: &ParamLayout,
    table: &impl DevicePtr<i64>,
    packed: bool,
    state: &impl DevicePtr<f64>,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    cfg: AdamWConfig,
    t: u64,
    lr: f32,
    bf16: Option<&mut dyn DevicePtrMut<half::bf16>>,
) -> Result<()> {
    let total = layout.total;
    let tensors = layout.tensors.iter().filter(|s| s.len > 0).count();
    let longest = layout.tensors.iter().map(|s| s.len).max().unwrap_or(0);
    let mut lens = vec![
        ("table", table.len(), 3 * tensors),
        ("state", state.len(), STEP_STATE_LEN),
        ("params", params.len(), total),
        ("grads", grads.len(), total),
        ("m", m.len(), total),
        ("v", v.len(), total),
    ];
    if let Some(copy) = bf16.as_ref() {
        lens.push(("bf16 copy", copy.len(), total));
    }
    crate::gpu::launch::check_lens("adamw_step", &lens)?;
    if tensors == 0 {
        return Ok(());
    }
    let (step_size, inv_sqrt_bc2) = bias_corrections(cfg, t, lr)?;
    let decay = 1.0 - lr * cfg.weight_decay;
    let vector = packed && gpu.kernels() == Kernels::Vector;
    let k = match (bf16.is_some(), vector) {
        (false, false) => Launch::new(gpu, "adamw_step", &[])?,
        (true, false) => Launch::new(gpu, "adamw_step_bf16", &[])?,
        (false, true) => Launch::new(gpu, "adamw_step_vec", &[])?,
        (true, true) => Launch::new(gpu, "adamw_step_vec_bf16", &[])?,
    };
    let is_bf16 = bf16.is_some();
    // Held until the launch is queued.
    let copy = bf16.map(|c| c.device_ptr_mut(gpu.stream()));
    let k = match copy.as_ref() {
        None => k.write(params),
        Some((c, _)) => k.write(params).ptr(*c),
    };
    let k = k.read(grads).write(m).write(v).read(table).read(state);
    let k = if vector { k.aligned16(&[0, 1, 2, 3, 4])? } else { k };
    let k = k.arg(cfg.beta1).arg(cfg.beta2).arg(cfg.eps).arg(decay).arg(step_size).arg(inv_sqrt_bc2);
    let k = if is_bf16 { k.arg(sr_seed(t)) } else { k };
    let per_thread = if vector {
        if is_bf16 {
            8
        } else {
            4
        }
    } else {
        1
    };
    let blocks = longest.div_ceil(per_thread).div_ceil(256).clamp(1, STEP_BLOCKS) as u32;
    let grid = LaunchConfig { grid_dim: (blocks, tensors as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: adamw_step[_vec] (float*, const float*, float*, float*, const long long*, const
    // double*, float x6) or adamw_step[_vec]_bf16 (float*, __nv_bfloat16*, const float*, float*,
    // float*, const long long*, const double*, float x6, unsigned int). Row y of the grid updates
    // table entry y: offset + length within layout.total (adamw_table over this layout), inside
    // every buffer (lengths checked); the _vec kernels' packs start at offsets that are multiples
    // of 8 (`packed`) from 16-byte aligned pointers (checked).
    let launched = unsafe { k.run(grid) };
    drop(copy);
    launched
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-launch AdamW's table lists every non-empty tensor once, in layout order, each
    /// (offset, length) the layout's and the decay flag `Param::decays`; together they cover the
    /// flat buffer without overlap. gpt2-124m's offsets allow the 128-bit kernels; a model with an
    /// odd channel count does not, and says so.
    #[test]
    fn adamw_table_covers_every_tensor_once_with_its_decay() {
        for (name, packed_want) in [("gpt2-124m", true), ("tiny", true)] {
            let layout = ParamLayout::new(&crate::model::ModelConfig::preset(name).unwrap());
            let (table, packed) = adamw_table(&layout).unwrap();
            let specs: Vec<_> = layout.tensors.iter().filter(|s| s.len > 0).collect();
            assert_eq!(table.len(), 3 * specs.len());
            let mut covered = 0;
            for (row, spec) in table.chunks(3).zip(&specs) {
                assert_eq!(row, [spec.offset as i64, spec.len as i64, spec.param.decays() as i64], "{name}");
                covered += spec.len;
            }
            let mut ranges: Vec<(i64, i64)> = table.chunks(3).map(|r| (r[0], r[0] + r[1])).collect();
            ranges.sort();
            assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "{name}: tensors overlap");
            assert_eq!(covered, layout.total, "{name}: the table misses part of the buffer");
            assert!(table.chunks(3).any(|r| r[2] == 1) && table.chunks(3).any(|r| r[2] == 0));
            assert_eq!(packed, packed_want, "{name}");
        }
        let mut odd = crate::model::ModelConfig::preset("tiny").unwrap();
        odd.channels = 68;
        odd.num_heads = 4;
        let (_, packed) = adamw_table(&ParamLayout::new(&odd)).unwrap();
        assert!(!packed, "C = 68 puts a tensor at an offset that is not a multiple of 8");
    }

    /// The record the host reads at the end of a `--sync step` step: applied only when the loss
    /// and the norm are both finite, as the host path decides.
    #[test]
    fn step_outcomes_apply_only_finite_steps() {
        assert!(StepOutcome::decide(2.5, 0.3).applied);
        assert!(!StepOutcome::decide(f64::NAN, 0.3).applied);
        assert!(!StepOutcome::decide(2.5, f64::INFINITY).applied);
        let s = StepOutcome::from_state(&[2.5, 0.3, 1.0, 1.0]);
        assert_eq!(s, StepOutcome::decide(2.5, 0.3));
        assert!(!StepOutcome::from_state(&[f64::NAN, 0.3, 1.0, 0.0]).applied);
    }

    /// Stochastic rounding gives one of the two bf16 neighbours, keeps bf16 values exact, and is
    /// unbiased: over many random draws the mean of the rounded values is the input.
    #[test]
    fn stochastic_rounding_is_unbiased_and_brackets_the_value() {
        for (k, &x) in [1.0f32 + 1.0 / 1024.0, -3.3, 1e-3, 7.77e5, -2.0e-30, 0.1].iter().enumerate() {
            let lo = half::bf16::from_bits((x.to_bits() >> 16) as u16).to_f32();
            let hi_bits = (x.to_bits() >> 16) as u16 + 1;
            let hi = half::bf16::from_bits(hi_bits).to_f32();
            let draws = 200_000u64;
            let mut sum = 0.0f64;
            for i in 0..draws {
                let r = stochastic_round_bf16(x, sr_bits(i, sr_seed(k as u64 + 1))).to_f32();
                assert!(r == lo || r == hi, "{x}: {r} is not {lo} or {hi}");
                sum += r as f64;
            }
            let mean = sum / draws as f64;
            // The mean of `draws` Bernoulli choices between lo and hi: standard error
            // |hi - lo| / (2 sqrt(draws)); allow 5 of them.
            let tol = 5.0 * (hi - lo).abs() as f64 / (2.0 * (draws as f64).sqrt());
            assert!((mean - x as f64).abs() < tol, "{x}: mean {mean} (tolerance {tol})");
            // Round-to-nearest would always give the same one of the two.
            assert!(mean != lo as f64 && mean != hi as f64, "{x}: never rounded both ways");
        }
        for x in [0.0f32, -0.0, 1.0, -2.5, 0.15625, f32::INFINITY, f32::NEG_INFINITY] {
            for i in 0..100 {
                let r = stochastic_round_bf16(x, sr_bits(i, 7));
                assert_eq!(r.to_f32().to_bits(), x.to_bits(), "{x} is a bf16 value and must stay exact");
            }
        }
        assert!(stochastic_round_bf16(f32::NAN, 12345).is_nan());
        // The largest finite float never carries into infinity.
        for i in 0..1000 {
            assert!(stochastic_round_bf16(f32::MAX, sr_bits(i, 1)).to_f32().is_finite());
        }
    }

    /// The random bits differ between indices and between steps (seeds), and their low 16 bits
    /// (what the rounding uses) are roughly uniform.
    #[test]
    fn rounding_bits_vary_with_index_and_step() {
        let n = 1u64 << 16;
        let mean = (0..n).map(|i| (sr_bits(i, sr_seed(3)) & 0xffff) as f64).sum::<f64>() / n as f64;
        assert!((mean - 32767.5).abs() < 400.0, "low bits mean {mean}");
        let same_index = (0..1000).filter(|&i| sr_bits(i, sr_seed(1)) == sr_bits(i, sr_seed(2))).count();
        assert_eq!(same_index, 0, "steps 1 and 2 draw the same bits");
        assert_ne!(sr_bits(0, 0), sr_bits(1, 0));
        assert_ne!(sr_seed(1), sr_seed(2));
    }
}
