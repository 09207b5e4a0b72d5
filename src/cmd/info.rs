//! `genesis info`: how training a model would use a GPU's memory, without needing the GPU.

use anyhow::Result;
use argh::FromArgs;
use genesis::gpu::plan::{self, gib, MemoryPlan, USABLE_FRACTION};
use genesis::gpu::{Attention, Kernels, Precision};
use genesis::model::ModelConfig;

/// GPU memory assumed when neither --gpu-mem is given nor a GPU is found.
const DEFAULT_GPU_GIB: f64 = 24.0;

/// Show how training a model fits in GPU memory: bytes per component, micro-batch and accumulation.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "info",
    example = "genesis info --model genesis-150m --gpu-mem 24\ngenesis info --model gpt2-350m --gpu-mem 80 --precision bf16\ngenesis info --model genesis-150m --gpu-mem 24 --precision bf16 --attention flash\ngenesis info --model genesis-150m --gpu-mem 24 --kernels vector\ngenesis info --model gpt2-124m --seq 512 --tokens-per-step 262144",
    note = "Pure arithmetic: no GPU is needed. Parameters are in the training precision (bf16: 2 bytes, fp32: 4); gradients, AdamW's m and v, and in bf16 the master copy of the weights, are f32. Activations are the forward's tensors as the GPU engine lays them out plus the pre-GELU buffer the backward needs; activation grads is the backward's scratch; the logits' gradient reuses the logits. With --attention materialized (the default) both hold T x T attention matrices, (L,B,NH,T,T) probabilities and one (B,NH,T,T) gradient; with --attention flash (bf16 only) neither exists, only an (L,B,NH,T) f32 log-sum-exp and a (B,NH,T) f32 row sum. With --kernels vector the attention and MLP projections' outputs (attproj, fcproj) are one (B,T,C) buffer each for all layers instead of one per layer. The micro-batch is the largest power of two up to 64 (and no more sequences than a step needs) whose total fits in 90% of the GPU's memory; grad accum makes up --tokens-per-step. Sizes are GiB (2^30 bytes), as GPU memory is quoted; without --gpu-mem the first GPU's memory is used, or 24 when there is none."
)]
pub struct InfoCmd {
    /// model preset: tiny, gpt2-124m, genesis-150m or gpt2-350m
    #[argh(option)]
    model: String,
    /// sequence length (default: 1024, or the model's context if shorter)
    #[argh(option)]
    seq: Option<usize>,
    /// GPU memory in GiB (default: the first GPU's, else 24)
    #[argh(option)]
    gpu_mem: Option<f64>,
    /// tokens per optimizer step (default 524288)
    #[argh(option, default = "524_288")]
    tokens_per_step: usize,
    /// training precision: fp32 (the default, as genesis train) or bf16
    #[argh(option, default = "Precision::Fp32")]
    precision: Precision,
    /// attention as genesis train --attention: materialized (the default; T x T matrices) or flash (bf16 only; none)
    #[argh(option, default = "Attention::Materialized")]
    attention: Attention,
    /// kernels as genesis train --kernels: scalar (the default) or vector (one attproj and one fcproj buffer for all layers, not per layer)
    #[argh(option, default = "Kernels::Scalar")]
    kernels: Kernels,
}

pub fn run(c: InfoCmd) -> Result<()> {
    let cfg = ModelConfig::preset(&c.model).map_err(anyhow::Error::msg)?;
    let bf16 = c.precision == Precision::Bf16;
    c.attention.check(c.precision)?;
    let seq = c.seq.unwrap_or(cfg.max_seq_len.min(1024));
    let (gpu_bytes, source) = match c.gpu_mem {
        Some(g) => {
            anyhow::ensure!(g.is_finite() && g > 0.0, "--gpu-mem {g}: expected a positive size in GiB");
            ((g * (1u64 << 30) as f64) as u64, "--gpu-mem".to_string())
        }
        None => match genesis::gpu::device::cuda_available() {
            Ok(()) => {
                let info = genesis::gpu::device::probe_device(0)
                    .map_err(|e| anyhow::anyhow!("reading GPU 0's memory size: {e}"))?;
                (info.total as u64, info.name)
            }
            Err(why) => {
                eprintln!("note: no GPU here ({why}); planning for {DEFAULT_GPU_GIB} GiB, --gpu-mem chooses");
                ((DEFAULT_GPU_GIB * (1u64 << 30) as f64) as u64, "assumed".to_string())
            }
        },
    };
    let p = plan::plan_with(&cfg, seq, c.tokens_per_step, gpu_bytes, bf16, c.attention, c.kernels)?;
    let mut s = table(&c.model, &cfg, seq, (bf16, c.attention, c.kernels), gpu_bytes, &source, c.tokens_per_step, &p);
    let b = p.micro_batch;
    if bf16 {
        // What the T x T matrices of materialised attention cost at this micro-batch.
        let at = |a: Attention| plan::layout_with(&cfg, seq, b, true, a, c.kernels).total;
        let saving = at(Attention::Materialized) - at(Attention::Flash);
        s.push_str(&match c.attention {
            Attention::Materialized => match plan::plan_with(&cfg, seq, c.tokens_per_step, gpu_bytes, true, Attention::Flash, c.kernels) {
                Ok(f) => format!(
                    "--attention flash would need {} less at micro-batch {b} (no T x T matrices) and fits micro-batch {}\n",
                    gib(saving),
                    f.micro_batch
                ),
                Err(_) => String::new(),
            },
            Attention::Flash => format!(
                "flash attention saves {} at micro-batch {b}: the T x T matrices materialized attention keeps\n",
                gib(saving)
            ),
        });
    }
    if c.kernels == Kernels::Vector {
        let with = |k: Kernels| plan::layout_with(&cfg, seq, b, bf16, c.attention, k).total;
        s.push_str(&format!(
            "vector kernels save {} at micro-batch {b}: one attproj and one fcproj buffer for all {} layers\n",
            gib(with(Kernels::Scalar) - with(Kernels::Vector)),
            cfg.num_layers
        ));
    }
    super::write_stdout(format_args!("{s}"), false)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn table(
    name: &str,
    cfg: &ModelConfig,
    seq: usize,
    (bf16, attention, kernels): (bool, Attention, Kernels),
    gpu_bytes: u64,
    source: &str,
    tokens_per_step: usize,
    p: &MemoryPlan,
) -> String {
    let gb = |b: u64| if b == 0 { format!("{:>8}", "-") } else { format!("{:>8.2}", b as f64 / (1u64 << 30) as f64) };
    let mut s = format!("model      {name}: {cfg}\n");
    s.push_str(&format!(
        "precision  {}, seq {seq}, {attention} attention, {kernels} kernels\n",
        if bf16 { "bf16" } else { "fp32" }
    ));
    s.push_str(&format!(
        "gpu        {} ({source}); the plan uses up to {:.0}%: {}\n\n",
        gib(gpu_bytes),
        USABLE_FRACTION * 100.0,
        gib((gpu_bytes as f64 * USABLE_FRACTION) as u64)
    ));
    s.push_str(&format!("{:<22}{:>8}\n", "component", "GiB"));
    for (label, bytes) in p.parts() {
        s.push_str(&format!("{label:<22}{}\n", gb(bytes)));
    }
    s.push_str(&format!("{:<22}{}\n\n", "total", gb(p.total)));
    let per_micro = p.micro_batch * seq;
    s.push_str(&format!(
        "micro-batch {} x seq {seq} = {per_micro} tokens; grad accum {} -> {} tokens/step (asked {tokens_per_step})\n",
        p.micro_batch,
        p.grad_accum,
        per_micro * p.grad_accum
    ));
    s
}
