//! Softmax cross-entropy over (padded) logits on the GPU (`kernels/classifier.cu`), with the logits'
//! gradient optionally written in place by the same kernel. Logits (and so dlogits) are `f32` or
//! `bf16` ([`Float`]); the arithmetic and the losses are f32.
//!
//! Unlike `cpu::classifier`, which fuses the logits matmul in, this takes the logits (N,Vp) that
//! the lm-head matmul produced; only the first V of each row are the real vocabulary.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{to_i32, Gpu};
use super::launch::Launch;
use super::{Float, Kernels};

/// Most threads per row block (the kernel's `__launch_bounds__`).
const MAX_BLOCK: usize = 1024;

// logits (N,Vp), targets (N) -> losses (N); with dlogits_scale also logits (N,Vp) := dlogits
/// Per row `n`: `losses[n] = log(sum_{v<V} exp(logits[n,v])) - logits[n, targets[n]]`, computed with
/// the row max subtracted. Queued on [`Gpu::stream`].
///
/// With `dlogits_scale = Some(s)` the kernel also overwrites each row in place with the gradient of
/// `s * loss`: `s * (softmax - onehot(target))` over the first V entries and 0 in the padding
/// `V..Vp`, each computed in f32 and (for `T = bf16`) rounded to bf16 once. With `None` the logits
/// are only read.
///
/// A target outside `0..V` (negative, or in the padding `V..Vp`, or beyond) is never used as an
/// index: that row's loss is NaN, so the bad data shows up in the mean loss, and its dlogits row is
/// `s * softmax` without the one-hot term. `logits` holds at least N*Vp floats, `targets` and
/// `losses` at least N.
#[allow(clippy::too_many_arguments)]
pub fn classifier_forward<T: Float>(
    gpu: &Gpu,
    losses: &mut impl DevicePtrMut<f32>,
    logits: &mut impl DevicePtrMut<T>,
    targets: &impl DevicePtr<i32>,
    n: usize,
    v: usize,
    vp: usize,
    dlogits_scale: Option<f32>,
) -> Result<()> {
    const OP: &str = "classifier_forward";
    ensure!(v > 0 && v <= vp, "{OP}: need 0 < V <= Vp, got V = {v}, Vp = {vp}");
    let nvp = n.checked_mul(vp).with_context(|| format!("{OP}: N*Vp overflows"))?;
    let lens = [("logits", logits.len(), nvp), ("losses", losses.len(), n), ("targets", targets.len(), n)];
    let vector = gpu.kernels() == Kernels::Vector;
    ensure!(
        !vector || vp.is_multiple_of(T::VEC),
        "{OP} (--kernels vector): Vp = {vp} is not a multiple of {} (one 128-bit access); use --kernels scalar",
        T::VEC
    );
    let name = if vector { T::kernel("classifier_forward_vec") } else { T::kernel(OP) };
    let k = Launch::new(gpu, &name, &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (ni, vi, vpi) = (to_i32(n, "N")?, to_i32(v, "V")?, to_i32(vp, "Vp")?);
    let (write_dlogits, scale) = match dlogits_scale {
        Some(s) => (1i32, s),
        None => (0i32, 0.0f32),
    };
    // A multiple of 32 (the kernel reduces whole warps), no more threads than logits in a row.
    let threads = v.div_ceil(32).clamp(1, MAX_BLOCK / 32) * 32;
    let cfg = LaunchConfig { grid_dim: (ni as u32, 1, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 };
    let k = k.write(losses).write(logits).read(targets).arg(ni).arg(vi).arg(vpi).arg(scale).arg(write_dlogits);
    // logits in packs (losses and targets one value per row).
    let k = if vector { k.aligned16(&[1])? } else { k };
    // SAFETY: (float*, T*, const int*, int, int, int, float, int); the kernel touches rows < N,
    // columns < Vp, and a target only once it is checked to be in 0..V; whole warps, at most
    // MAX_BLOCK threads (its __launch_bounds__). The _vec kernel touches the same elements in
    // 16-byte packs (Vp a multiple of VEC, pointers aligned: checked).
    unsafe { k.run(cfg) }
}
