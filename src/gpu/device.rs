//! CUDA device discovery, the [`Gpu`] handle and kernel launch wrappers.
//!
//! cudarc is built with `dynamic-loading`: `libcuda` is opened on first use
//! and cudarc panics if it is missing. [`cuda_available`] checks for the
//! library first, so callers can probe safely on machines without a driver.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::kernels;
use super::Kernels;

/// Threads per block for the elementwise kernels.
const BLOCK: u32 = 256;

/// `Ok(())` when this binary can run its CUDA kernels here: a driver library
/// is loadable, it initialises, it reports at least one device, and the kernels
/// were compiled in. Otherwise `Err` with a one-line reason. Never panics.
pub fn cuda_available() -> Result<(), String> {
    let count = device_count()?;
    if count == 0 {
        return Err("the CUDA driver reports no devices".to_string());
    }
    if kernels::fatbin().is_none() {
        return Err(format!(
            "{count} CUDA device(s) found, but this binary was built without nvcc, \
             so no CUDA kernels are compiled in (see the build warning)"
        ));
    }
    Ok(())
}

/// Number of CUDA devices the driver reports, or why the driver is unusable.
/// Never panics.
pub fn device_count() -> Result<usize, String> {
    // SAFETY: only tries to dlopen the candidate library names and drops the handle.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) could be loaded; is an NVIDIA driver installed?".to_string());
    }
    // Backstop: cudarc panics if a driver symbol it needs cannot be resolved
    // (e.g. a very old driver); report that as unavailable instead.
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(usize::try_from(n).unwrap_or(0)),
        Ok(Err(e)) => Err(format!("CUDA driver initialisation failed: {e}")),
        Err(_) => Err("the CUDA driver library is unusable (cudarc panicked loading it)".into()),
    }
}

/// The driver's CUDA version (e.g. 13000), if the driver library is loadable. Never panics.
pub fn driver_version() -> Option<i32> {
    if device_count().is_err() {
        return None;
    }
    std::panic::catch_unwind(|| {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: `device_count` loaded the driver library; this writes one int.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
    })
    .ok()
    .flatten()
}

/// What a device reports about itself.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Free device memory in bytes.
    pub free: usize,
    /// Total device memory in bytes.
    pub total: usize,
}

/// The error [`probe_device`] gives when cudarc panics (an old or broken driver).
pub const PROBE_PANICKED: &str = "probing the device panicked inside cudarc";

/// Opens device `ordinal` just long enough to read its name, compute capability and memory, without
/// loading the kernels. Never panics: a driver that makes cudarc panic is reported as an error.
pub fn probe_device(ordinal: usize) -> Result<DeviceInfo, String> {
    let probe = std::panic::catch_unwind(|| -> Result<DeviceInfo, String> {
        let open = |e: cudarc::driver::DriverError| format!("cannot open device {ordinal}: {e}");
        let ctx = CudaContext::new(ordinal).map_err(open)?;
        let name = ctx.name().map_err(open)?;
        let compute_capability = ctx.compute_capability().map_err(open)?;
        let (free, total) = ctx.mem_get_info().map_err(open)?;
        Ok(DeviceInfo { name, compute_capability, free, total })
    });
    probe.unwrap_or_else(|_| Err(PROBE_PANICKED.to_string()))
}

/// Free bytes of device memory in the CUDA context current on this thread (0 when there is none).
pub fn free_memory() -> usize {
    cudarc::driver::result::mem_get_info().map_or(0, |m| m.0)
}

/// One CUDA device with its context, the stream all work is queued on, and the
/// module holding every embedded kernel.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: std::sync::Mutex<std::collections::HashMap<String, CudaFunction>>,
    /// Host waits on the stream so far: synchronizes and device-to-host copies.
    host_syncs: AtomicU64,
    /// Uploads from pageable host memory so far (the driver may wait for the stream).
    pageable_uploads: AtomicU64,
    /// [`Kernels::Vector`] when set: the launchers pick the `_vec` kernels where they exist.
    vector: std::sync::atomic::AtomicBool,
}

impl Gpu {
    /// Opens device `ordinal` (primary context), uses its default stream and
    /// loads the embedded fatbin.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        Gpu::open(ordinal, false)
    }

    /// [`Gpu::new`], queuing all work on a stream Genesis creates (non-blocking, so it does not
    /// serialise with the legacy default stream) when `own_stream`. Everything a model does stays on
    /// that one stream, so no cross-stream synchronisation is needed, and cudarc's per-buffer event
    /// tracking (an event wait and record around every launch once a second stream exists) is
    /// turned off: it would only add driver calls, and its waits on events recorded outside a CUDA
    /// graph capture would break the capture.
    pub fn open(ordinal: usize, own_stream: bool) -> Result<Gpu> {
        cuda_available().map_err(|reason| anyhow!("CUDA unavailable: {reason}"))?;
        let fatbin = kernels::fatbin().context("no CUDA kernels compiled in")?;
        let ctx = CudaContext::new(ordinal).with_context(|| format!("creating a CUDA context on device {ordinal}"))?;
        let stream = if own_stream {
            // SAFETY: every buffer this Gpu's users allocate is used and freed on `stream` alone (the
            // one stream a Gpu exposes), so stream order already orders all accesses.
            unsafe { ctx.disable_event_tracking() };
            ctx.new_stream().context("creating a CUDA stream")?
        } else {
            ctx.default_stream()
        };
        let module = ctx.load_module(Ptx::from_binary(fatbin.to_vec())).with_context(|| {
            let cc = ctx
                .compute_capability()
                .map(|(major, minor)| format!("sm_{major}{minor}"))
                .unwrap_or_else(|_| "unknown".to_string());
            format!("loading the kernel fatbin (built for {}) on device {ordinal} ({cc})", kernels::kernel_archs())
        })?;
        Ok(Gpu {
            ctx,
            stream,
            module,
            functions: Default::default(),
            host_syncs: AtomicU64::new(0),
            pageable_uploads: AtomicU64::new(0),
            vector: Default::default(),
        })
    }

    /// Which kernel versions the launchers pick from now on (default [`Kernels::Scalar`]).
    pub fn set_kernels(&self, kernels: Kernels) {
        self.vector.store(kernels == Kernels::Vector, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn kernels(&self) -> Kernels {
        if self.vector.load(std::sync::atomic::Ordering::Relaxed) {
            Kernels::Vector
        } else {
            Kernels::Scalar
        }
    }

    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn module(&self) -> &Arc<CudaModule> {
        &self.module
    }

    /// The kernel `name` from the embedded fatbin (looked up once, then cached).
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().expect("kernel cache poisoned");
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self.module.load_function(name).with_context(|| format!("kernel `{name}` missing from the fatbin"))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// (free, total) bytes of device memory.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().context("binding the CUDA context")?;
        cudarc::driver::result::mem_get_info().context("querying device memory")
    }

    /// Device name and compute capability, e.g. `"NVIDIA H100 (sm_90)"`.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown device".into());
        match self.ctx.compute_capability() {
            Ok((major, minor)) => format!("{name} (sm_{major}{minor})"),
            Err(_) => name,
        }
    }

    /// Waits for all work queued on the stream (counted in [`host_syncs`](Self::host_syncs)).
    pub fn synchronize(&self) -> Result<()> {
        self.note_host_sync();
        self.stream.synchronize().context("CUDA stream synchronize")
    }

    /// Counts one host wait on the stream that does not go through [`synchronize`](Self::synchronize):
    /// every device-to-host copy into host memory (it returns when the copy, and so all the work
    /// queued before it, is done) calls this first. Returns `self` to chain the copy.
    pub fn note_host_sync(&self) -> &Self {
        self.host_syncs.fetch_add(1, Ordering::Relaxed);
        self
    }

    /// Counts one upload from pageable host memory (which the driver may serialise with the
    /// stream); called before each such copy on a training step's path.
    pub fn note_pageable_upload(&self) -> &Self {
        self.pageable_uploads.fetch_add(1, Ordering::Relaxed);
        self
    }

    /// (host syncs, pageable uploads) counted since the device was opened: the difference over a
    /// training step is what `genesis bench train --profile` reports.
    pub fn host_syncs(&self) -> (u64, u64) {
        (self.host_syncs.load(Ordering::Relaxed), self.pageable_uploads.load(Ordering::Relaxed))
    }
}

pub(crate) fn to_i32(v: usize, name: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{name} = {v} does not fit in an i32 kernel argument"))
}

/// 1-D launch over `n` elements for grid-stride kernels.
pub(crate) fn grid_for(n: usize) -> Result<LaunchConfig> {
    if n == 0 {
        bail!("empty launch");
    }
    let blocks = n.div_ceil(BLOCK as usize).min(i32::MAX as usize) as u32;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// Locates a cuBLAS shared library (`libcublas.so.13` preferred, then `.so.12`); see
/// [`find_cuda_library`]. Does not load it.
pub fn find_cublas() -> Option<PathBuf> {
    find_cuda_library(&["libcublas.so.13", "libcublas.so.12"])
}

/// The first of `names` (in order of preference) found in `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`,
/// `/usr/local/cuda/lib64`, `$LD_LIBRARY_PATH`, the dynamic linker cache (`ldconfig -p`) or the
/// Python `nvidia-*` wheels (`site-packages/nvidia/*/lib` of a virtualenv, the user, pyenv or the
/// system), which is where a `pip install torch` machine keeps cuBLAS.
pub fn find_cuda_library(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(root).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths).filter(|d| !d.as_os_str().is_empty()));
    }
    let cached = ldconfig_libraries();
    let wheels = python_wheel_lib_dirs();
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .or_else(|| cached.iter().find(|p| p.file_name().is_some_and(|f| f == *name) && p.is_file()).cloned())
            .or_else(|| wheels.iter().map(|d| d.join(name)).find(|p| p.is_file()))
    })
}

/// `lib` directories of installed Python `nvidia-*` wheels (e.g. `nvidia/cu13/lib`, `nvidia/cublas/lib`).
fn python_wheel_lib_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<String> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(format!("{}/lib/python3*/site-packages", venv.to_string_lossy()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = home.to_string_lossy();
        roots.push(format!("{home}/.local/lib/python3*/site-packages"));
        roots.push(format!("{home}/.pyenv/versions/*/lib/python3*/site-packages"));
    }
    roots.extend(
        [
            "/usr/local/lib/python3*/dist-packages",
            "/usr/local/lib/python3*/site-packages",
            "/usr/lib/python3/dist-packages",
        ]
        .map(String::from),
    );
    roots.iter().flat_map(|r| glob::glob(&format!("{r}/nvidia/*/lib")).into_iter().flatten().flatten()).collect()
}

/// Paths listed by `ldconfig -p` (empty if ldconfig is unavailable).
fn ldconfig_libraries() -> Vec<PathBuf> {
    for exe in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        let Ok(out) = std::process::Command::new(exe).arg("-p").output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_once("=>"))
            .map(|(_, path)| Path::new(path.trim()).to_path_buf())
            .collect();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics() {
        // Whatever the machine, these return a value rather than panicking.
        let _ = device_count();
        let _ = cuda_available();
        let _ = find_cublas();
    }

    #[test]
    fn grid_covers_all_elements() {
        let cfg = grid_for(1000).unwrap();
        assert_eq!(cfg.grid_dim.0 * cfg.block_dim.0, 1024);
        assert!(grid_for(0).is_err());
    }
}
