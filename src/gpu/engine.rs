//! One model on the GPU whatever its element type: [`GpuEngine`] is what training, evaluation,
//! sampling and the benchmarks need from a [`GpuModel`], and [`gpu_engine`] is the one place a
//! [`Precision`] picks `f32` or `bf16`.

use super::adamw::StepOutcome;
use super::device::Gpu;
use super::gpt::{GpuModel, TrainStep};
use super::profile::{measure_ceilings, Ceilings};
use super::sample::GpuDecoder;
use super::{Attention, BiasGrad, Float, GeluFusion, Kernels, Precision, StepSync};
use crate::cpu::adamw::AdamWConfig;
use crate::cpu::sample::TokenDecoder;
use crate::model::ModelConfig;
use anyhow::Result;

/// A [`GpuModel`] in fp32 or bf16. Each method is the model's own, documented there.
pub trait GpuEngine {
    fn config(&self) -> &ModelConfig;
    /// The device and the precision, for logs, e.g. `NVIDIA H200 (sm_90), bf16 mixed precision`.
    fn describe(&self) -> String;
    /// The device, to wait for it or read its memory.
    fn gpu(&self) -> &Gpu;
    /// How attention is computed; flash is refused (one line naming both options) in fp32.
    fn set_attention(&mut self, attention: Attention) -> Result<()>;

    // Forward, evaluation and benchmarks.
    fn forward(&mut self, inputs: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<()>;
    /// The per-position losses (B*T) of `inputs` against `targets` (B,T).
    fn losses(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    /// The mean loss of `inputs` against `targets` (B,T), without gradients.
    fn mean_loss(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64>;
    /// The largest batch worth evaluating at sequence length `seq`: activations within half the
    /// free memory, at most 64 rows.
    fn auto_batch(&self, seq: usize) -> usize;
    /// Bytes of activations for a batch of `b` rows of `t` tokens.
    fn activation_bytes(&self, b: usize, t: usize) -> usize;
    fn set_profiling(&mut self, on: bool);
    /// Which kernel versions to launch from now on (`--kernels`; default scalar, the verified ones).
    fn set_kernels(&mut self, kernels: Kernels);
    /// How much of the training GELU runs in the matmul epilogues from now on (`--gelu-fusion`;
    /// default off, the verified path); a model with an odd width is refused in one line.
    fn set_gelu_fusion(&mut self, fusion: GeluFusion) -> Result<()>;
    /// How the backward computes the matmuls' bias gradients from now on (`--bias-grad`; default
    /// reduce, the verified path).
    fn set_bias_grad(&mut self, bias_grad: BiasGrad);
    fn take_profile(&mut self) -> Result<Vec<(&'static str, f64)>>;
    /// Records a profiling mark (when profiling): the anchor before a profiled step.
    fn mark(&self, name: &'static str) -> Result<()>;
    /// The device's copy bandwidth and the GEMM rate in this engine's element type.
    fn ceilings(&self) -> Result<Ceilings>;

    // Sampling.
    /// A token-by-token decoder with a KV cache on the device.
    fn decoder(&self) -> Result<Box<dyn TokenDecoder + '_>>;

    // Training.
    fn enable_training(&mut self, weights: &[f32], step: u64) -> Result<()>;
    fn upload_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()>;
    fn zero_grads(&mut self) -> Result<()>;
    fn forward_backward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, dloss: f32) -> Result<f64>;
    /// One whole optimizer step, its micro-batches from `next_batch` (see [`GpuModel::train_step`]).
    fn train_step(&mut self, next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]), s: &TrainStep) -> Result<StepOutcome>;
    fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64>;
    fn adamw_update(&mut self, cfg: AdamWConfig, t: u64, lr: f32) -> Result<()>;
    fn download_weights(&self) -> Result<Vec<f32>>;
    fn download_moments(&self) -> Result<(Vec<f32>, Vec<f32>)>;
}

/// Uploads `params` to GPU `ordinal` in `precision`. `allow_tf32` lets fp32 matmuls use TF32 tensor
/// cores (bf16 ones always accumulate in f32). Training steps talk to the host as `sync` says
/// (evaluation and sampling: [`StepSync::Micro`]).
pub fn gpu_engine(
    cfg: &ModelConfig,
    params: &[f32],
    ordinal: usize,
    precision: Precision,
    allow_tf32: bool,
    sync: StepSync,
) -> Result<Box<dyn GpuEngine>> {
    Ok(match precision {
        Precision::Fp32 => Box::new(GpuModel::<f32>::open(cfg, params, ordinal, allow_tf32, sync)?),
        Precision::Bf16 => Box::new(GpuModel::<half::bf16>::open(cfg, params, ordinal, allow_tf32, sync)?),
    })
}

impl<T: Float> GpuEngine for GpuModel<T> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn describe(&self) -> String {
        let precision = if T::BYTES == 2 { "bf16 mixed precision" } else { "fp32, TF32 matmuls" };
        let mut kernels = if self.gpu.kernels() == Kernels::Vector { ", vectorised kernels" } else { "" }.to_string();
        match self.sync() {
            StepSync::Micro => {}
            StepSync::Step => kernels.push_str(", one host sync per step"),
            StepSync::Graph => kernels.push_str(", one host sync per step, CUDA graphs"),
        }
        match self.gelu_fusion() {
            GeluFusion::Off => {}
            GeluFusion::Forward => kernels.push_str(", GELU fused into the fc matmul"),
            GeluFusion::Both => kernels.push_str(", GELU and its backward fused into the matmuls"),
        }
        match self.bias_grad() {
            BiasGrad::Reduce => {}
            BiasGrad::Epilogue => kernels.push_str(", bias gradients from the dweight GEMMs' epilogue"),
        }
        match self.attention() {
            Attention::Flash => format!("{}, {precision}, flash attention{kernels}", self.gpu.describe()),
            Attention::Materialized => format!("{}, {precision}{kernels}", self.gpu.describe()),
        }
    }
    fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    fn set_attention(&mut self, attention: Attention) -> Result<()> {
        GpuModel::set_attention(self, attention)
    }
    fn forward(&mut self, inputs: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<()> {
        GpuModel::forward(self, inputs, targets, b, t)
    }
    fn losses(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        GpuModel::forward(self, inputs, Some(targets), b, t)?;
        GpuModel::losses(self)
    }
    fn mean_loss(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        let losses = GpuEngine::losses(self, inputs, targets, b, t)?;
        Ok(losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64)
    }
    fn auto_batch(&self, seq: usize) -> usize {
        let free = self.gpu.memory().map(|(free, _)| free).unwrap_or(1 << 30);
        let per_row = self.activation_bytes_here(1, seq).max(1);
        (free / 2 / per_row).clamp(1, 64)
    }
    fn activation_bytes(&self, b: usize, t: usize) -> usize {
        self.activation_bytes_here(b, t)
    }
    fn set_profiling(&mut self, on: bool) {
        GpuModel::set_profiling(self, on)
    }
    fn set_kernels(&mut self, kernels: Kernels) {
        self.gpu.set_kernels(kernels)
    }
    fn set_gelu_fusion(&mut self, fusion: GeluFusion) -> Result<()> {
        GpuModel::set_gelu_fusion(self, fusion)
    }
    fn set_bias_grad(&mut self, bias_grad: BiasGrad) {
        GpuModel::set_bias_grad(self, bias_grad)
    }
    fn take_profile(&mut self) -> Result<Vec<(&'static str, f64)>> {
        GpuModel::take_profile(self)
    }
    fn mark(&self, name: &'static str) -> Result<()> {
        GpuModel::mark(self, name)
    }
    fn ceilings(&self) -> Result<Ceilings> {
        measure_ceilings::<T>(&self.gpu, self.blas())
    }
    fn decoder(&self) -> Result<Box<dyn TokenDecoder + '_>> {
        Ok(Box::new(GpuDecoder::new(self)?))
    }
    fn enable_training(&mut self, weights: &[f32], step: u64) -> Result<()> {
        GpuModel::enable_training(self, weights, step)
    }
    fn upload_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        GpuModel::upload_moments(self, m, v)
    }
    fn zero_grads(&mut self) -> Result<()> {
        GpuModel::zero_grads(self)
    }
    fn forward_backward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, dloss: f32) -> Result<f64> {
        GpuModel::forward_backward(self, inputs, targets, b, t, dloss)
    }
    fn train_step(&mut self, next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]), s: &TrainStep) -> Result<StepOutcome> {
        GpuModel::train_step(self, next_batch, s)
    }
    fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        GpuModel::clip_grad_norm(self, max_norm)
    }
    fn adamw_update(&mut self, cfg: AdamWConfig, t: u64, lr: f32) -> Result<()> {
        GpuModel::adamw_update(self, cfg, t, lr)
    }
    fn download_weights(&self) -> Result<Vec<f32>> {
        GpuModel::download_weights(self)
    }
    fn download_moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        GpuModel::download_moments(self)
    }
}
