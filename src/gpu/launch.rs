//! One kernel launch, in one place: [`Launch`] checks the buffer lengths, takes the device pointers
//! (holding cudarc's stream-ordering guards), the scalars and the grid, and launches with the kernel
//! named in any error. Every launcher in `src/gpu` uses it, so a launcher reads as its arguments:
//!
//! ```ignore
//! let k = Launch::new(gpu, &name, &[("out", out.len(), n), ("inp", inp.len(), n)])?;
//! // SAFETY: the kernel touches out[i] and inp[i] for i < N.
//! unsafe { k.write(out).read(inp).arg(n64).run(grid_for(n)?) }
//! ```
//!
//! **What the guards do.** `DevicePtr::device_ptr` / `DevicePtrMut::device_ptr_mut` return the raw
//! pointer and a `SyncOnDrop` guard. Taking the pointer makes the stream wait for the buffer's last
//! write (and, for a write, its last reads) when the context manages multi-stream synchronisation;
//! dropping the guard records the buffer's read (write) event on the stream, so it must be dropped
//! only *after* the kernel that uses the pointer is queued. [`Launch`] keeps every guard it took
//! until [`Launch::run`] has queued the kernel, then drops them. The borrows it holds (`&` for a
//! read, `&mut` for a write) last as long as the builder, so one buffer cannot be passed as an
//! output and again as anything else.
//!
//! **The safety argument, stated once.** [`Launch::run`] is `unsafe` because the driver cannot
//! check a launch. It is sound when (1) the arguments pushed match the kernel's parameter list in
//! order and type (pointers are 64-bit device addresses of the element type the kernel declares;
//! `i32` for `int`, `i64` for `long long`, `u32` for `unsigned int`, `f32` for `float`, `f64` for `double`); (2) every
//! index the kernel touches lies inside the buffers whose lengths were checked (or, for a raw
//! [`Launch::ptr`], inside a live allocation the caller keeps guarded); (3) the block shape is one
//! the kernel accepts (a whole number of warps where it reduces warps, at most its
//! `__launch_bounds__`, its shared memory). The checked lengths and (1) are this module's and the
//! caller's code; each call site's `// SAFETY:` comment says what its kernel touches.

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::device::Gpu;

/// One scalar or pointer kernel argument, held by value until the launch.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    F64(f64),
}

impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Arg {
        Arg::F64(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}

/// Checks every `(name, have, need)`: buffer `name` holds `have` elements and the op needs `need`.
pub(crate) fn check_lens(op: &str, lens: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, have, need) in lens {
        ensure!(have >= need, "{op}: {name} has {have} elements < {need} needed");
    }
    Ok(())
}

/// A kernel launch being assembled: the function, its arguments in order and the guards of the
/// buffers they point into. See the module documentation for the guards and the safety argument.
#[must_use = "a Launch does nothing until run"]
pub(crate) struct Launch<'a> {
    gpu: &'a Gpu,
    name: String,
    func: CudaFunction,
    args: Vec<Arg>,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Launch<'a> {
    /// The kernel `name` from the fatbin, after checking `lens` ([`check_lens`], errors naming
    /// `name`).
    pub(crate) fn new(gpu: &'a Gpu, name: &str, lens: &[(&str, usize, usize)]) -> Result<Launch<'a>> {
        check_lens(name, lens)?;
        let func = gpu.function(name)?;
        Ok(Launch { gpu, name: name.to_string(), func, args: Vec::new(), guards: Vec::new() })
    }

    /// A buffer the kernel only reads.
    pub(crate) fn read<T>(mut self, buf: &'a impl DevicePtr<T>) -> Self {
        let (ptr, guard) = buf.device_ptr(self.gpu.stream());
        self.guards.push(guard);
        self.args.push(Arg::Ptr(ptr));
        self
    }

    /// A buffer the kernel writes (and may read).
    pub(crate) fn write<T>(mut self, buf: &'a mut impl DevicePtrMut<T>) -> Self {
        let (ptr, guard) = buf.device_ptr_mut(self.gpu.stream());
        self.guards.push(guard);
        self.args.push(Arg::Ptr(ptr));
        self
    }

    /// A raw device address (an offset into a buffer whose guard the caller holds past the launch).
    pub(crate) fn ptr(mut self, ptr: u64) -> Self {
        self.args.push(Arg::Ptr(ptr));
        self
    }

    /// A scalar argument.
    pub(crate) fn arg(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Checks that the pointer arguments at positions `which` (0-based, those the kernel accesses
    /// 128 bits at a time) are 16-byte aligned, as the `_vec` kernels require: an error naming the
    /// kernel and the argument otherwise.
    pub(crate) fn aligned16(self, which: &[usize]) -> Result<Self> {
        for &i in which {
            match self.args.get(i) {
                Some(Arg::Ptr(p)) => {
                    ensure!(p.is_multiple_of(16), "{}: pointer argument {i} ({p:#x}) is not 16-byte aligned", self.name)
                }
                other => anyhow::bail!("{}: argument {i} is {other:?}, not a pointer", self.name),
            }
        }
        Ok(self)
    }

    /// Queues the kernel on [`Gpu::stream`] with `cfg`, then releases the guards.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters, every index it touches is inside the checked
    /// (or caller-guarded) buffers, and `cfg` is a block shape it accepts: see the module docs.
    pub(crate) unsafe fn run(self, cfg: LaunchConfig) -> Result<()> {
        let Launch { gpu, name, func, args, guards } = self;
        let stream = &**gpu.stream();
        let mut launch = stream.launch_builder(&func);
        for a in &args {
            match a {
                Arg::Ptr(p) => launch.arg(p),
                Arg::I32(v) => launch.arg(v),
                Arg::I64(v) => launch.arg(v),
                Arg::U32(v) => launch.arg(v),
                Arg::F32(v) => launch.arg(v),
                Arg::F64(v) => launch.arg(v),
            };
        }
        // SAFETY: the caller's contract (above); `args` outlives the launch call.
        let result = unsafe { launch.launch(cfg) }.with_context(|| format!("launching {name}"));
        // The guards record the buffers' events only now, after the kernel is queued.
        drop(guards);
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lens_names_the_op_and_the_short_buffer() {
        assert!(check_lens("gelu_forward_bf16", &[("out", 8, 8), ("inp", 9, 8)]).is_ok());
        let e = check_lens("gelu_forward_bf16", &[("out", 8, 8), ("inp", 7, 8)]).unwrap_err().to_string();
        assert_eq!(e, "gelu_forward_bf16: inp has 7 elements < 8 needed");
        assert!(check_lens("x", &[]).is_ok());
    }
}
