//! How GPU training fits in memory: bytes per component for a model, sequence length and precision,
//! the largest micro-batch that fits, and the gradient accumulation that makes up the tokens per
//! step. Pure arithmetic (no GPU needed), so `genesis info` can answer before one is rented.
//!
//! The parts, for micro-batch B and sequence length T:
//! - parameters in the training dtype (bf16: 2 bytes, fp32: 4);
//! - gradients and AdamW's m and v in f32, and in bf16 mode an f32 master copy of the weights;
//! - the forward's activations as the GPU engine lays them out ([`ActLayout`]) plus one
//!   (L,B,T,4C) pre-GELU buffer the backward needs, the logits split out (their gradient is written
//!   over them in place);
//! - the backward's activation gradients and scratch exactly as the GPU engine allocates them
//!   ([`grad_scratch_bytes`]: (B,T,C)*10 + (B,T,4C)*2 + (B,NH,T,T) values plus small f32 reductions);
//! - with `--attention flash` neither the forward's (L,B,NH,T,T) probabilities and permute scratch
//!   nor the backward's (B,NH,T,T) gradient exist: an (L,B,NH,T) f32 log-sum-exp and a (B,NH,T)
//!   f32 row sum take their place;
//! - with `--kernels vector` the forward's attproj and fcproj are one (B,T,C) buffer each for all
//!   layers instead of (L,B,T,C) each;
//! - a fixed cuBLASLt/kernel workspace ([`WORKSPACE_BYTES`]).

use crate::gpu::gpt::{grad_scratch_bytes, Act, ActLayout};
use crate::gpu::{Attention, Kernels};
use crate::model::ModelConfig;
use anyhow::{bail, ensure, Result};

/// cuBLASLt and kernel workspace.
pub const WORKSPACE_BYTES: u64 = 64 << 20;
/// The largest micro-batch considered.
pub const MAX_MICRO_BATCH: usize = 64;
/// The plan keeps this share of the GPU's memory (the rest: CUDA context, allocator slack).
pub const USABLE_FRACTION: f64 = 0.9;

/// Bytes of every part of a training step's GPU memory, and the batch shape that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub params: u64,
    pub grads: u64,
    /// AdamW m and v (f32).
    pub adam: u64,
    /// The f32 master weights (bf16 mode only; 0 in fp32).
    pub master: u64,
    /// Forward activations (without the logits) plus the pre-GELU buffer.
    pub activations: u64,
    /// Backward scratch for the activation gradients.
    pub activation_grads: u64,
    /// The (B,T,Vp) logits (their gradient reuses them).
    pub logits: u64,
    pub workspace: u64,
    /// The sum of the above.
    pub total: u64,
    /// Sequences per forward/backward.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
}

impl MemoryPlan {
    /// The components with their names, in table order (total excluded).
    pub fn parts(&self) -> [(&'static str, u64); 8] {
        [
            ("parameters", self.params),
            ("gradients (f32)", self.grads),
            ("adamw m+v (f32)", self.adam),
            ("master weights (f32)", self.master),
            ("activations", self.activations),
            ("activation grads", self.activation_grads),
            ("logits", self.logits),
            ("workspace", self.workspace),
        ]
    }
}

/// The memory of one training step at micro-batch `b` (`grad_accum` left at 1), `bf16` or fp32,
/// with materialised attention and the scalar kernels.
pub fn layout_for(cfg: &ModelConfig, seq: usize, b: usize, bf16: bool) -> MemoryPlan {
    layout_with(cfg, seq, b, bf16, Attention::Materialized, Kernels::Scalar)
}

/// [`layout_for`] with attention computed as `attention` says, on `kernels`.
pub fn layout_with(
    cfg: &ModelConfig,
    seq: usize,
    b: usize,
    bf16: bool,
    attention: Attention,
    kernels: Kernels,
) -> MemoryPlan {
    let elem = if bf16 { 2 } else { 4 };
    let n = cfg.num_params() as u64;
    let e = elem as u64;
    let acts = ActLayout::build(cfg, b, seq, elem, true, attention, kernels);
    let (_, logit_elems) = acts.place(Act::Logits, 0, elem);
    // As ActLayout pads it: whole 256-byte units.
    let logits = (logit_elems as u64 * e).div_ceil(256) * 256;
    let activations = acts.bytes() as u64 - logits;
    let activation_grads = grad_scratch_bytes(cfg, b, seq, elem, attention) as u64;
    let mut p = MemoryPlan {
        params: n * e,
        grads: n * 4,
        adam: n * 8,
        master: if bf16 { n * 4 } else { 0 },
        activations,
        activation_grads,
        logits,
        workspace: WORKSPACE_BYTES,
        total: 0,
        micro_batch: b,
        grad_accum: 1,
    };
    p.total = p.parts().iter().map(|x| x.1).sum();
    p
}

/// The plan for training `cfg` on sequences of `seq` tokens, `tokens_per_step` tokens per optimizer
/// step, on a GPU of `gpu_bytes`: the largest power-of-two micro-batch (at most [`MAX_MICRO_BATCH`],
/// and no more sequences than one step needs) whose total fits in [`USABLE_FRACTION`] of the memory,
/// and grad_accum = ceil(tokens_per_step / (micro_batch * seq)). An error names the smallest
/// requirement when not even a micro-batch of 1 fits.
pub fn plan(cfg: &ModelConfig, seq: usize, tokens_per_step: usize, gpu_bytes: u64, bf16: bool) -> Result<MemoryPlan> {
    plan_with(cfg, seq, tokens_per_step, gpu_bytes, bf16, Attention::Materialized, Kernels::Scalar)
}

/// [`plan`] with attention computed as `attention` says (flash: no T x T tensors), on `kernels`
/// (vector: one attproj and one fcproj buffer for all layers).
pub fn plan_with(
    cfg: &ModelConfig,
    seq: usize,
    tokens_per_step: usize,
    gpu_bytes: u64,
    bf16: bool,
    attention: Attention,
    kernels: Kernels,
) -> Result<MemoryPlan> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    ensure!(
        seq >= 1 && seq <= cfg.max_seq_len,
        "--seq {seq} must be between 1 and the model's context {}",
        cfg.max_seq_len
    );
    ensure!(tokens_per_step >= 1, "--tokens-per-step must be at least 1");
    let budget = (gpu_bytes as f64 * USABLE_FRACTION) as u64;
    // More sequences per micro-batch than a whole step needs would only overshoot the step's tokens.
    let cap = tokens_per_step.div_ceil(seq).min(MAX_MICRO_BATCH);
    let mut best: Option<MemoryPlan> = None;
    let mut b = 1;
    while b <= cap {
        let p = layout_with(cfg, seq, b, bf16, attention, kernels);
        if p.total > budget {
            break;
        }
        best = Some(p);
        b *= 2;
    }
    let Some(mut p) = best else {
        let need = layout_with(cfg, seq, 1, bf16, attention, kernels).total;
        bail!(
            "training this model at seq {seq} in {} needs at least {} (micro-batch 1), but {:.0}% of the GPU's {} \
             is {}; use a GPU with at least {}{}, a shorter --seq or a smaller --model",
            if bf16 { "bf16" } else { "fp32" },
            gib(need),
            USABLE_FRACTION * 100.0,
            gib(gpu_bytes),
            gib(budget),
            gib((need as f64 / USABLE_FRACTION).ceil() as u64),
            if bf16 { "" } else { ", --precision bf16" }
        );
    };
    p.grad_accum = tokens_per_step.div_ceil(p.micro_batch * seq);
    Ok(p)
}

/// `bytes` in GiB with two decimals, e.g. `"21.60 GiB"`.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
