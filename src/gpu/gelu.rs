//! GELU forward and backward on the GPU (`kernels/gelu.cu`): the tanh approximation with the
//! constants of `cpu::gelu`, in f32 or bf16 (computed in f32, rounded to bf16 once).

use anyhow::{Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::device::{grid_for, Gpu};
use super::launch::Launch;
use super::{Dinp, Float, Kernels};

// inp (N) -> out (N)
/// `out[i] = gelu(inp[i])` for `i < n`, queued on [`Gpu::stream`]. Buffers may be longer than `n`.
pub fn gelu_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "gelu_forward";
    let vector = gpu.kernels() == Kernels::Vector;
    let name = if vector { T::kernel("gelu_forward_vec") } else { T::kernel(OP) };
    let k = Launch::new(gpu, &name, &[("out", out.len(), n), ("inp", inp.len(), n)])?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let k = k.write(out).read(inp).arg(n64);
    if vector {
        // SAFETY: as below; the _vec kernel touches the same elements, in 16-byte packs at
        // 16-byte aligned pointers (checked) with the last N % VEC one at a time.
        return unsafe { k.aligned16(&[0, 1])?.run(grid_for(n.div_ceil(T::VEC))?) };
    }
    // SAFETY: (T*, const T*, long long); the kernel touches out[i] and inp[i] for i < N.
    unsafe { k.run(grid_for(n)?) }
}

// inp (N), dout (N) -> dinp (N) += or =
/// `dinp[i] += gelu'(inp[i]) * dout[i]` for `i < n` ([`Dinp::Accumulate`]; the tanh form's
/// derivative, the formula of `cpu::gelu::gelu_backward`), or `dinp[i] = gelu'(inp[i]) * dout[i]`
/// ([`Dinp::Overwrite`]: the old dinp is never read, so it needs no zeroing; the bits of
/// accumulating onto zeros), queued on [`Gpu::stream`]. `inp` is the forward's input. Buffers may
/// be longer than `n`. All arithmetic is f32; with `T = bf16` each `dinp` value is its old value
/// plus the f32 product (or the product alone), rounded to bf16 once.
pub fn gelu_backward<T: Float>(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    dout: &impl DevicePtr<T>,
    n: usize,
    store: Dinp,
) -> Result<()> {
    const OP: &str = "gelu_backward";
    let lens = [("dinp", dinp.len(), n), ("inp", inp.len(), n), ("dout", dout.len(), n)];
    let vector = gpu.kernels() == Kernels::Vector;
    let name = match (store, vector) {
        (Dinp::Accumulate, false) => T::kernel(OP),
        (Dinp::Accumulate, true) => T::kernel("gelu_backward_vec"),
        (Dinp::Overwrite, false) => T::kernel("gelu_backward_overwrite"),
        (Dinp::Overwrite, true) => T::kernel("gelu_backward_overwrite_vec"),
    };
    let k = Launch::new(gpu, &name, &lens)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    let k = k.write(dinp).read(inp).read(dout).arg(n64);
    if vector {
        // SAFETY: as below, in 16-byte packs at 16-byte aligned pointers (checked), the last
        // N % VEC one at a time.
        return unsafe { k.aligned16(&[0, 1, 2])?.run(grid_for(n.div_ceil(T::VEC))?) };
    }
    // SAFETY: (T*, const T*, const T*, long long); the kernel touches index i < N of each buffer.
    unsafe { k.run(grid_for(n)?) }
}
