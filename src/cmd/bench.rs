//! `genesis bench`: speed of the forward pass, data preparation, sampling and training steps.

use std::path::PathBuf;

use super::outln;
use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::cpu::sample::WeightType;
use genesis::gpu::{Attention, BiasGrad, Device, GeluFusion, Kernels, Precision, StepSync};
use genesis::model::ModelConfig;

/// Measure speed: `genesis bench sample` or `genesis bench train`.
#[derive(FromArgs)]
#[argh(subcommand, name = "bench")]
pub struct BenchCmd {
    #[argh(subcommand)]
    what: BenchWhat,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum BenchWhat {
    Forward(BenchForward),
    Prepare(BenchPrepare),
    Sample(BenchSample),
    Train(BenchTrain),
}

/// Tokens/s and TFLOP/s of the forward pass (with the loss) on the GPU, and where the time goes.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "forward",
    example = "genesis bench forward --model gpt2-124m --batch 8 --seq 1024\ngenesis bench forward --model gpt2-124m --batch 8 --seq 1024 --tf32",
    note = "Random weights and tokens on GPU 0, fp32 activations and weights. Reports ms per forward, tokens/s, achieved TFLOP/s (2N + 4LCT FLOPs per token: a third of the 6N + 12LCT training formula) and the time per op family from CUDA events in one profiled forward. --tf32 lets cuBLAS use TF32 tensor cores for the matmuls (about 1e-3 relative error)."
)]
pub struct BenchForward {
    /// model preset (default gpt2-124m)
    #[argh(option, default = "String::from(\"gpt2-124m\")")]
    model: String,
    /// sequences per forward (default 8)
    #[argh(option, default = "8")]
    batch: usize,
    /// tokens per sequence (default 1024)
    #[argh(option, default = "1024")]
    seq: usize,
    /// timed forwards after one warmup (default 10)
    #[argh(option, default = "10")]
    steps: usize,
    /// allow TF32 matmuls (fp32 only)
    #[argh(switch)]
    tf32: bool,
    /// fp32 or bf16 (default auto: bf16)
    #[argh(option, default = "Precision::Bf16")]
    precision: Precision,
    /// scalar (the verified kernels; default) or vector (128-bit vectorised elementwise and row kernels; one attproj and one fcproj buffer for all layers; not yet verified on a GPU)
    #[argh(option, default = "Kernels::Scalar")]
    kernels: Kernels,
}

/// MB/s of `genesis prepare` on all cores against single-thread tiktoken-rs.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "prepare",
    example = "genesis bench prepare\ngenesis bench prepare --input ../shared/data/wikitext-test.raw --repeat 40",
    note = "Builds a corpus of --repeat copies of the input in a temporary directory, prepares it with the full pipeline (reading, wikitext article splitting, parallel encoding, shard writing with fsync) and reports MB of text per second, then encodes the same text with tiktoken-rs on one thread for comparison."
)]
pub struct BenchPrepare {
    /// text file to encode (default ../shared/data/wikitext-test.raw)
    #[argh(option, default = "PathBuf::from(\"../shared/data/wikitext-test.raw\")")]
    input: PathBuf,
    /// copies of the input in the corpus (default 20)
    #[argh(option, default = "20")]
    repeat: usize,
}

/// Tokens/s of KV-cache decoding on the CPU with random weights.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "sample",
    example = "genesis bench sample --model gpt2-124m\ngenesis bench sample --model gpt2-124m --weights f32",
    note = "Decoding streams every weight once per token, so its speed is the memory bandwidth it gets: the report gives the GB/s of weights read against what this machine reads (the best of five all-thread sums of a 1 GiB buffer, measured after decoding)."
)]
pub struct BenchSample {
    /// model preset (default gpt2-124m)
    #[argh(option, default = "String::from(\"gpt2-124m\")")]
    model: String,
    /// tokens to decode (default 64)
    #[argh(option, default = "64")]
    tokens: usize,
    /// weights held as f32 or bf16 (half the bytes per token; default bf16)
    #[argh(option, default = "WeightType::Bf16")]
    weights: WeightType,
}

/// Time full training steps (forward, backward, clipping, AdamW) on random tokens or a dataset.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "train",
    example = "genesis bench train --device cpu --model gpt2-124m --batch 4 --seq 64\ngenesis bench train --device cuda --batch 16 --seq 1024 --precision bf16 --profile\ngenesis bench train --device cuda --batch 16 --seq 1024 --data shakespeare",
    note = "Reports ms per step, tokens/s and achieved GFLOP/s (6N + 12LCT FLOPs per token). On a GPU (--device auto or cuda): full steps in fp32 with TF32 matmuls or, with --precision bf16, in bf16 mixed precision; MFU against the GPU's bf16 peak and the device memory the run holds. The PyTorch reference: python3 ../shared/bench/torch_reference.py train [--compile].\n\n--profile (GPU): after the timed steps, which it leaves undisturbed, runs 3 more with a CUDA event after every op and prints per op family the ms per step, its share, the bytes or FLOPs a step moves (a model from the shapes, src/gpu/profile.rs), the achieved GB/s or TFLOP/s and the per cent of the ceilings measured in the same run (a 1 GiB device-to-device copy; an 8192-cubed cuBLAS GEMM in the run's precision), the bandwidth-bound total, and the host syncs per step.\n\n--data NAME: batches from the train split of a prepared dataset (a name in data/ or a directory; shakespeare is prepared first when absent) instead of uniform random tokens."
)]
pub struct BenchTrain {
    /// where to run: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "Device::Auto")]
    device: Device,
    /// model preset (default gpt2-124m)
    #[argh(option, default = "String::from(\"gpt2-124m\")")]
    model: String,
    /// sequences per step (default 4)
    #[argh(option, default = "4")]
    batch: usize,
    /// tokens per sequence (default 64)
    #[argh(option, default = "64")]
    seq: usize,
    /// measured steps after one warmup step (default 3)
    #[argh(option, default = "3")]
    steps: usize,
    /// on the GPU: fp32 (TF32 matmuls; default) or bf16 (mixed precision, as train --precision bf16)
    #[argh(option, default = "Precision::Fp32")]
    precision: Precision,
    /// on the GPU: after the timed steps, a per-op-family table of time, bytes or FLOPs and rates
    #[argh(switch)]
    profile: bool,
    /// prepared dataset to take batches from: a name in data/ or a directory (default random tokens)
    #[argh(option)]
    data: Option<String>,
    /// on the GPU: materialized (default) or flash (bf16 only), as train --attention
    #[argh(option, default = "Attention::Materialized")]
    attention: Attention,
    /// on the GPU: scalar (the verified kernels; default) or vector (128-bit vectorised elementwise and row kernels; the backward overwrites single-producer activation gradients instead of zeroing them; one attproj and one fcproj buffer for all layers; not yet verified on a GPU)
    #[argh(option, default = "Kernels::Scalar")]
    kernels: Kernels,
    /// on the GPU: micro (default), step (one host sync per step) or graph (step with CUDA graphs), as train --sync
    #[argh(option, default = "StepSync::Micro")]
    sync: StepSync,
    /// on the GPU: off (default: GELU and its backward as kernels of their own), forward (the fc matmul's cuBLASLt epilogue applies the GELU and keeps the pre-GELU values) or both (forward, and the fcproj matmul's backward applies the GELU backward in its epilogue), as train --gelu-fusion; not yet verified on a GPU
    #[argh(option, default = "GeluFusion::Off")]
    gelu_fusion: GeluFusion,
    /// on the GPU: reduce (default: the matmuls' bias gradients from a reduction kernel of their own) or epilogue (the dweight GEMM's cuBLASLt epilogue computes them: BGRADB, then a small kernel adds them to the gradient), as train --bias-grad; not yet verified on a GPU
    #[argh(option, default = "BiasGrad::Reduce")]
    bias_grad: BiasGrad,
}

pub fn run(c: BenchCmd) -> Result<()> {
    match c.what {
        BenchWhat::Forward(b) => forward(b),
        BenchWhat::Prepare(b) => prepare(b),
        BenchWhat::Sample(b) => sample(b),
        BenchWhat::Train(b) => train(b),
    }
}

fn prepare(b: BenchPrepare) -> Result<()> {
    let r = genesis::bench::bench_prepare(&b.input, b.repeat)?;
    outln!(
        "bench prepare: {:.1} MB of text, pipeline {:.2} MB/s on {} threads, tiktoken-rs single thread {:.2} MB/s ({:.2}x)",
        r.bytes as f64 / 1e6,
        r.pipeline_mb_per_sec,
        r.threads,
        r.single_thread_mb_per_sec,
        r.pipeline_mb_per_sec / r.single_thread_mb_per_sec
    );
    Ok(())
}

fn forward(b: BenchForward) -> Result<()> {
    let cfg = ModelConfig::preset(&b.model).map_err(anyhow::Error::msg)?;
    if b.seq == 0 || b.seq > cfg.max_seq_len || b.batch == 0 || b.steps == 0 {
        bail!("need 1 <= --seq <= {} and --batch, --steps >= 1", cfg.max_seq_len);
    }
    genesis::gpu::select_device(Device::Cuda)?;
    let precision = b.precision;
    let r = genesis::bench::bench_forward_gpu(&cfg, b.batch, b.seq, b.steps, precision, b.tf32, b.kernels)?;
    outln!(
        "bench forward {} on {} ({}), batch {} seq {}: {:.2} ms/forward, {:.0} tokens/s, {:.1} TFLOP/s, activations {:.2} GB",
        b.model,
        r.device,
        match (precision, b.tf32) {
            (Precision::Bf16, _) => "bf16",
            (Precision::Fp32, true) => "fp32, TF32 matmuls",
            (Precision::Fp32, false) => "fp32",
        },
        b.batch,
        b.seq,
        r.ms_per_forward,
        r.tokens_per_sec,
        r.tflops,
        r.activation_gb
    );
    let total: f64 = r.per_op.iter().map(|o| o.1).sum();
    for (name, ms) in &r.per_op {
        outln!("  {name:<24} {ms:>8.3} ms  {:>5.1}%", 100.0 * ms / total.max(1e-9));
    }
    Ok(())
}

fn sample(b: BenchSample) -> Result<()> {
    let cfg = ModelConfig::preset(&b.model).map_err(anyhow::Error::msg)?;
    if b.tokens == 0 {
        bail!("need --tokens >= 1");
    }
    let r = genesis::bench::bench_sample(&cfg, b.tokens, b.weights);
    outln!(
        "bench sample {} ({} weights, {} threads): {} tokens in {:.2} s = {:.1} tokens/s, {:.1} GB/s of weights ({:.0}% of the {:.1} GB/s this machine reads)",
        b.model,
        r.weights,
        rayon::current_num_threads(),
        r.tokens,
        r.seconds,
        r.tokens_per_sec,
        r.weight_gb_per_sec,
        100.0 * r.weight_gb_per_sec / r.read_gb_per_sec,
        r.read_gb_per_sec
    );
    Ok(())
}

fn train(b: BenchTrain) -> Result<()> {
    let cfg = ModelConfig::preset(&b.model).map_err(anyhow::Error::msg)?;
    if b.seq == 0 || b.seq > cfg.max_seq_len || b.batch == 0 || b.steps == 0 {
        bail!("need 1 <= --seq <= {} and --batch, --steps >= 1", cfg.max_seq_len);
    }
    b.attention.check(b.precision)?;
    let device = genesis::gpu::select_device(b.device)?;
    device.note();
    if device.gpu.is_none() && b.gelu_fusion != GeluFusion::Off {
        eprintln!("note: --gelu-fusion {} applies to GPU training; the CPU has one GELU", b.gelu_fusion);
    }
    if device.gpu.is_none() && b.bias_grad != BiasGrad::Reduce {
        eprintln!("note: --bias-grad {} applies to GPU training; the CPU sums the bias gradients itself", b.bias_grad);
    }
    if b.profile && device.gpu.is_none() {
        bail!("--profile times GPU kernels and needs --device cuda (a CPU run already reports forward, backward and optimizer times)");
    }
    let dir = match &b.data {
        Some(name) => Some(super::train::train_data(Some(name))?.0),
        None => None,
    };
    let mut tokens = genesis::bench::BenchTokens::new(dir.as_deref(), b.batch, b.seq)?;
    let source = match &b.data {
        Some(name) => format!(", tokens from {name}"),
        None => String::new(),
    };
    if device.gpu.is_some() {
        let precision = b.precision;
        let r = genesis::bench::bench_train_gpu(
            &cfg,
            b.batch,
            b.seq,
            b.steps,
            precision,
            b.attention,
            b.kernels,
            b.sync,
            b.gelu_fusion,
            b.bias_grad,
            &mut tokens,
            b.profile,
        )?;
        // Named only when on, so the default line stays as scripts/bench_table.py reads it.
        let mut fusion = match b.gelu_fusion {
            GeluFusion::Off => String::new(),
            f => format!(", gelu fusion {f}"),
        };
        if b.bias_grad != BiasGrad::Reduce {
            fusion.push_str(&format!(", bias grad {}", b.bias_grad));
        }
        outln!(
            "bench train {} on {} ({}, {} attention, {} kernels, {} sync{}), batch {} seq {}{}: {:.1} ms/step, {:.0} tokens/s, {:.1} TFLOP/s{}, {:.2} GB of device memory",
            b.model,
            r.device,
            if precision == Precision::Bf16 { "bf16 mixed precision" } else { "fp32, TF32 matmuls" },
            b.attention,
            b.kernels,
            b.sync,
            fusion,
            b.batch,
            b.seq,
            source,
            r.ms_per_step,
            r.tokens_per_sec,
            r.tflops,
            r.mfu.map(|m| format!(", MFU {:.1}%", 100.0 * m)).unwrap_or_default(),
            r.memory_gb
        );
        if let Some(p) = &r.profile {
            outln!(
                "profile of {} more steps (an event after every op; per step):\n{}",
                p.steps,
                genesis::gpu::profile::format_table(&p.rows, &p.ceilings, p.tokens_per_step)
            );
            outln!(
                "host syncs per step: {} (stream synchronizes and device-to-host copies), plus {} uploads from pageable memory",
                p.host_syncs_per_step,
                p.pageable_uploads_per_step
            );
        }
        return Ok(());
    }
    let r = genesis::bench::bench_train_cpu(&cfg, b.batch, b.seq, b.steps, &mut tokens);
    let mean = r.step_ms.iter().sum::<f64>() / r.step_ms.len() as f64;
    let steps: Vec<String> = r.step_ms.iter().map(|m| format!("{m:.0}")).collect();
    outln!(
        "bench train cpu {} batch {} seq {}{}: {:.0} ms/step (steps: {} ms; forward {:.0}, backward {:.0}, optimizer {:.0}), {:.0} tokens/s, {:.1} GFLOP/s, {} threads",
        b.model,
        b.batch,
        b.seq,
        source,
        mean,
        steps.join(", "),
        r.phase_ms[0],
        r.phase_ms[1],
        r.phase_ms[2],
        r.tokens_per_sec,
        r.gflops,
        rayon::current_num_threads()
    );
    Ok(())
}
