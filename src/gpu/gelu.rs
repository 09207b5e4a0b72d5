//! GELU forward and backward on the GPU (`kernels/gelu.cu`): the tanh approximation with the
//! constants of `cpu::gelu`, in f32 or bf16 (computed in f32, rounded to bf16 once).

use anyhow::{Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::device::{grid_for, Gpu};
use super::launch::Launch;
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
    let k = Launch::new(gpu, &T::kernel(OP), &[("out", out.len(), n), ("inp", inp.len(), n)])?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    // SAFETY: (T*, const T*, long long); the kernel touches out[i] and inp[i] for i < N.
    unsafe { k.write(out).read(inp).arg(n64).run(grid_for(n)?) }
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
    let lens = [("dinp", dinp.len(), n), ("inp", inp.len(), n), ("dout", dout.len(), n)];
    let k = Launch::new(gpu, &T::kernel(OP), &lens)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = i64::try_from(n).context("N does not fit in an i64")?;
    // SAFETY: (T*, const T*, const T*, long long); the kernel touches index i < N of each buffer.
    unsafe { k.write(dinp).read(inp).read(dout).arg(n64).run(grid_for(n)?) }
}
