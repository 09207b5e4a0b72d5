//! Every CUDA kernel against its CPU reference, one file per op family (named like
//! `src/cpu/<op>.rs`, `src/gpu/<op>.rs` and `kernels/<op>.cu`).
//!
//! Without a usable GPU each test prints `skipping: <reason>` and passes, unless
//! `GENESIS_REQUIRE_GPU=1`, in which case it fails.

mod adamw;
mod attention;
mod classifier;
mod embedding;
mod gelu;
mod gpt;
mod layernorm;
mod matmul;
mod sample;
mod train;

use genesis::gpu::device::{cuda_available, Gpu};
use genesis::gpu::Float;

/// `Some(gpu)` when CUDA works here; otherwise skips (or panics when `GENESIS_REQUIRE_GPU=1`).
pub fn gpu_or_skip() -> Option<Gpu> {
    let require = std::env::var("GENESIS_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1");
    if let Err(reason) = cuda_available() {
        if require {
            panic!("GENESIS_REQUIRE_GPU=1 but CUDA is unavailable: {reason}");
        }
        println!("skipping: {reason}");
        return None;
    }
    Some(Gpu::new(0).expect("CUDA reported available but Gpu::new(0) failed"))
}

/// Small deterministic generator (splitmix64).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values uniform in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

/// Rounds to `T` (round-to-nearest-even for bf16).
pub fn round<T: Float>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Widens `T` values to f32 (exact).
pub fn widen<T: Float>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Whether `a` and `b` hold the same f32 values bit for bit (same length; -0.0 differs from 0.0,
/// NaNs compare by payload). For comparing two runs of a deterministic op.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
