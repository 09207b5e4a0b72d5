//! CUDA support: device discovery and the kernels embedded at build time.
//!
//! `build.rs` compiles every `kernels/*.cu` with nvcc into one fatbin (SASS for
//! sm_80/86/89/90 plus compute_90 PTX) and embeds it in the binary. When no
//! nvcc was found at build time the crate is CPU-only: [`kernels::fatbin`]
//! returns `None` and [`device::cuda_available`] says why.
//!
//! cudarc loads the CUDA driver (and later cuBLAS) dynamically, so a binary
//! built here runs on machines without a GPU or driver; every entry point
//! reports that as an error instead of panicking.
//!
//! - [`kernels`]: the embedded fatbin and the architectures it was built for.
//! - [`device`]: driver/device probing, [`device::Gpu`] (context, stream,
//!   module) and the kernel launch wrappers.

pub mod attention;
pub mod blas;
pub mod classifier;
pub mod device;
pub mod gelu;
pub mod gpt;
pub mod kernels;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod sample;

/// Where to run, from `--device auto|cpu|cuda`: `Ok(Some(ordinal))` for the GPU, `Ok(None)` for
/// the CPU. `auto` takes the GPU when one works and otherwise says why on stderr and uses the CPU;
/// `cuda` demands the GPU.
pub fn select_device(choice: &str) -> anyhow::Result<Option<usize>> {
    match choice {
        "cpu" => Ok(None),
        "cuda" | "gpu" => match device::cuda_available() {
            Ok(()) => Ok(Some(0)),
            Err(why) => anyhow::bail!("--device cuda: {why}; run genesis doctor, or use --device cpu"),
        },
        "auto" => match device::cuda_available() {
            Ok(()) => Ok(Some(0)),
            Err(why) => {
                eprintln!("note: running on the CPU ({why}); --device cuda makes that an error");
                Ok(None)
            }
        },
        other => anyhow::bail!("--device {other}: expected auto, cpu or cuda"),
    }
}
