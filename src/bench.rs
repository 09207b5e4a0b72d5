//! Benchmarks behind `genesis bench`: numbers to hold against PyTorch, never asserted in tests.

use crate::cpu::adamw::{clip_grad_norm, AdamW, AdamWConfig};
use crate::cpu::gpt::{self, Activations};
use crate::cpu::sample::{convert_params, Decoder, Weight, WeightType};
use crate::data::loader::DataLoader;
use crate::data::manifest::Split;
use crate::gpu::engine::{gpu_engine, GpuEngine};
use crate::gpu::gpt::TrainStep;
use crate::gpu::profile::{family_rows, Ceilings, FamilyRow, Paths};
use crate::gpu::{Attention, BiasGrad, GeluFusion, Kernels, Precision, StepSync};
use crate::model::{ModelConfig, ParamLayout};
use crate::rng::Rng;
use half::bf16;
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

pub struct SampleBench {
    pub weights: WeightType,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    /// Weight bytes streamed per token over the measured time (GB/s).
    pub weight_gb_per_sec: f64,
    /// What this machine reads from memory on all threads (GB/s), measured in the same run.
    pub read_gb_per_sec: f64,
}

/// KV-cache decoding speed of `cfg` with random weights held as `weights`: `tokens` decode steps
/// after one warmup step; then the machine's read bandwidth to hold the weight traffic against.
pub fn bench_sample(cfg: &ModelConfig, tokens: usize, weights: WeightType) -> SampleBench {
    let params = gpt::init_params(cfg, 1);
    let tokens = tokens.min(cfg.max_seq_len - 1);
    let seconds = match weights {
        WeightType::F32 => time_decoding(cfg, &params, tokens),
        WeightType::Bf16 => {
            let narrow = convert_params::<bf16>(&params);
            drop(params);
            time_decoding(cfg, &narrow, tokens)
        }
    };
    // Every weight is read once per token except the padded vocabulary rows and all but one row
    // of the position embedding.
    let streamed = ParamLayout::new(cfg).total
        - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels
        - (cfg.max_seq_len - 1) * cfg.channels;
    let bytes_per_token = (weights.bytes() * streamed) as f64;
    SampleBench {
        weights,
        tokens,
        seconds,
        tokens_per_sec: tokens as f64 / seconds,
        weight_gb_per_sec: bytes_per_token * tokens as f64 / seconds / 1e9,
        read_gb_per_sec: read_bandwidth(1 << 30, 5),
    }
}

/// Seconds for `tokens` decode steps of random tokens after one warmup step.
fn time_decoding<W: Weight>(cfg: &ModelConfig, params: &[W], tokens: usize) -> f64 {
    let mut dec = Decoder::new(cfg, params);
    let mut rng = Rng::new(7);
    dec.step(0);
    let start = Instant::now();
    for _ in 0..tokens {
        dec.step(rng.below(cfg.vocab_size as u64) as u32);
    }
    start.elapsed().as_secs_f64()
}

/// Memory read bandwidth in GB/s: the best of `passes` sums of a `bytes` buffer (written first, so
/// every page is real memory) on all threads.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    const CHUNK: usize = 1 << 16; // u64s per task: 512 KiB
    let mut buf = vec![0u64; bytes / 8];
    buf.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| c.iter_mut().enumerate().for_each(|(j, x)| *x = (i ^ j) as u64 | 1));
    let mut best = 0.0f64;
    for _ in 0..passes {
        let start = Instant::now();
        let sum = buf
            .par_chunks(CHUNK)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.max((buf.len() * 8) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

pub struct TrainBench {
    /// Milliseconds per full step (forward, backward, clipping, AdamW), one per measured step.
    pub step_ms: Vec<f64>,
    /// Mean milliseconds in forward, backward, and clipping+AdamW.
    pub phase_ms: [f64; 3],
    pub tokens_per_sec: f64,
    /// Achieved training FLOP/s by the 6N + 12LCT formula.
    pub gflops: f64,
}

/// Where a training benchmark's batches come from: uniform random tokens, or the train split of a
/// prepared dataset (real text, as `genesis train` reads it).
pub enum BenchTokens {
    Random(Rng),
    Data(Box<DataLoader>),
}

impl BenchTokens {
    /// Random tokens, or the train split of the prepared dataset in `data`, for (batch, seq) batches.
    pub fn new(data: Option<&Path>, batch: usize, seq: usize) -> anyhow::Result<Self> {
        Ok(match data {
            None => BenchTokens::Random(Rng::new(3)),
            Some(dir) => BenchTokens::Data(Box::new(DataLoader::open(dir, Split::Train, batch, seq, 1)?)),
        })
    }

    /// Fills `inputs` and `targets` (B*T each) with the next batch; random tokens are below
    /// `vocab` (a dataset's are GPT-2 tokens, below every preset's vocabulary).
    pub fn fill(&mut self, vocab: usize, inputs: &mut [u32], targets: &mut [u32]) {
        match self {
            BenchTokens::Random(rng) => {
                for x in inputs.iter_mut().chain(targets.iter_mut()) {
                    *x = rng.below(vocab as u64) as u32;
                }
            }
            BenchTokens::Data(loader) => loader.next_batch(inputs, targets),
        }
    }
}

/// Full CPU training steps of `cfg` on `tokens`: one warmup step, then `steps` measured.
pub fn bench_train_cpu(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    steps: usize,
    tokens: &mut BenchTokens,
) -> TrainBench {
    let layout = ParamLayout::new(cfg);
    let mut params = gpt::init_params(cfg, 1);
    let mut grads = vec![0.0f32; layout.total];
    let mut opt = AdamW::new(AdamWConfig::default(), layout.total);
    let mut acts = Activations::<f32>::new(cfg, batch, seq);
    let n = batch * seq;
    let mut step_ms = Vec::new();
    let mut phase_ms = [0.0; 3];
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    for i in 0..=steps {
        tokens.fill(cfg.vocab_size, &mut inputs, &mut targets);
        let t0 = Instant::now();
        grads.fill(0.0);
        gpt::forward(cfg, &layout, &params, &mut acts, &inputs);
        let t1 = Instant::now();
        gpt::backward(cfg, &layout, &params, &mut grads, &mut acts, &inputs, &targets, 1.0 / n as f32);
        let t2 = Instant::now();
        clip_grad_norm(&mut grads, 1.0);
        opt.update(&layout, &mut params, &grads, 1e-4);
        if i > 0 {
            let t3 = Instant::now();
            step_ms.push((t3 - t0).as_secs_f64() * 1e3);
            for (p, d) in phase_ms.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                *p += d.as_secs_f64() * 1e3 / steps as f64;
            }
        }
    }
    let mean_s = step_ms.iter().sum::<f64>() / step_ms.len() as f64 / 1e3;
    let tokens_per_sec = n as f64 / mean_s;
    TrainBench { step_ms, phase_ms, tokens_per_sec, gflops: tokens_per_sec * cfg.flops_per_token(seq) / 1e9 }
}

pub struct PrepareBench {
    /// Text bytes prepared.
    pub bytes: u64,
    pub threads: usize,
    pub pipeline_mb_per_sec: f64,
    pub single_thread_mb_per_sec: f64,
}

/// `genesis prepare` speed on `repeat` copies of `input` (as wikitext articles) against encoding
/// the same text with tiktoken-rs on one thread.
pub fn bench_prepare(input: &std::path::Path, repeat: usize) -> anyhow::Result<PrepareBench> {
    use crate::data::prepare::{prepare, Input, PrepareConfig};
    use crate::data::source::{Docs, Format, SourceFile};
    use anyhow::Context;

    let bytes = std::fs::read(input).with_context(|| {
        format!("bench prepare reads {}; pass --input with a text file (the default is the wikitext test split in ../shared/data)", input.display())
    })?;
    let dir = std::env::temp_dir().join(format!("genesis-bench-prepare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, bytes.repeat(repeat.max(1)))
        .with_context(|| format!("cannot write {}", corpus.display()))?;
    let mut cfg = PrepareConfig::new("bench");
    cfg.source.docs = Docs::Wikitext;
    cfg.val_fraction = 0.0;
    cfg.progress = false;
    let start = Instant::now();
    let result = prepare(&[Input::local(SourceFile { path: corpus, format: Format::Text })], &dir.join("out"), &cfg);
    let seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;

    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
    let tok = crate::data::tokenizer::Tokenizer::gpt2()?;
    let copies = repeat.clamp(1, 4);
    let start = Instant::now();
    for _ in 0..copies {
        std::hint::black_box(tok.encode(&text));
    }
    let single = (text.len() * copies) as f64 / 1e6 / start.elapsed().as_secs_f64();
    Ok(PrepareBench {
        bytes: report.text_bytes,
        threads: rayon::current_num_threads(),
        pipeline_mb_per_sec: report.text_bytes as f64 / 1e6 / seconds,
        single_thread_mb_per_sec: single,
    })
}

/// What `genesis bench forward` measured on the GPU.
pub struct ForwardBench {
    pub device: String,
    pub ms_per_forward: f64,
    pub tokens_per_sec: f64,
    /// Achieved TFLOP/s with 2N + 4LCT FLOPs per token (a third of the training formula).
    pub tflops: f64,
    /// Milliseconds per op family in one profiled forward.
    pub per_op: Vec<(&'static str, f64)>,
    pub activation_gb: f64,
}

/// Times whole forward passes (with the loss) of random weights on random tokens on GPU 0, in
/// `precision` (`tf32`: fp32 matmuls on TF32 tensor cores).
pub fn bench_forward_gpu(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    steps: usize,
    precision: Precision,
    tf32: bool,
    kernels: Kernels,
) -> anyhow::Result<ForwardBench> {
    let params = gpt::init_params(cfg, 1);
    let mut model = gpu_engine(cfg, &params, 0, precision, tf32, StepSync::Micro)?;
    model.set_kernels(kernels);
    let mut rng = Rng::new(3);
    let n = batch * seq;
    let inputs: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    model.forward(&inputs, Some(&targets), batch, seq)?;
    model.gpu().synchronize()?;
    let start = Instant::now();
    for _ in 0..steps {
        model.forward(&inputs, Some(&targets), batch, seq)?;
    }
    model.gpu().synchronize()?;
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    model.set_profiling(true);
    model.forward(&inputs, Some(&targets), batch, seq)?;
    let per_op = model.take_profile()?;
    let tokens_per_sec = n as f64 / secs;
    Ok(ForwardBench {
        device: model.gpu().describe(),
        ms_per_forward: secs * 1e3,
        tokens_per_sec,
        tflops: tokens_per_sec * cfg.flops_per_token(seq) / 3.0 / 1e12,
        per_op,
        activation_gb: model.activation_bytes(batch, seq) as f64 / 1e9,
    })
}

/// What `genesis bench train --device cuda --profile` measured after the timed steps.
pub struct TrainProfile {
    /// Steps profiled (times are per step).
    pub steps: usize,
    /// Per op family: time, modelled bytes or FLOPs, achieved rate.
    pub rows: Vec<FamilyRow>,
    pub ceilings: Ceilings,
    /// Host waits on the stream per step (synchronizes and device-to-host copies), counted.
    pub host_syncs_per_step: f64,
    /// Uploads from pageable host memory per step, counted.
    pub pageable_uploads_per_step: f64,
    pub tokens_per_step: usize,
}

/// What `genesis bench train --device cuda` measured.
pub struct GpuTrainBench {
    pub device: String,
    pub ms_per_step: f64,
    pub tokens_per_sec: f64,
    /// Against the device's bf16 peak, when known (6N + 12LCT FLOPs per token).
    pub mfu: Option<f64>,
    pub tflops: f64,
    /// Device memory in use by the run (weights, gradients, moments, activations, scratch, cuBLAS).
    pub memory_gb: f64,
    /// With `profile`: the per-family table of a few profiled steps run after the timed ones.
    pub profile: Option<TrainProfile>,
}

/// Steps `bench train --profile` profiles after the timed ones.
const PROFILED_STEPS: usize = 3;

/// Full GPU training steps (forward, backward, clipping, AdamW) of `cfg` on `tokens`, in fp32
/// with TF32 matmuls or bf16 mixed precision, with `attention` (flash: bf16 only): one warmup
/// step, then `steps` timed. With `profile`, then [`PROFILED_STEPS`] steps with an event after every op, the host syncs they make counted,
/// and the device's ceilings measured, for the per-family table (the timed steps are unprofiled).
/// `gelu_fusion` and `bias_grad` choose the epilogue paths as `genesis train` does (the table's
/// cost model, `profile::Paths`, prices each).
#[allow(clippy::too_many_arguments)]
pub fn bench_train_gpu(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    steps: usize,
    precision: Precision,
    attention: Attention,
    kernels: Kernels,
    sync: StepSync,
    gelu_fusion: GeluFusion,
    bias_grad: BiasGrad,
    tokens: &mut BenchTokens,
    profile: bool,
) -> anyhow::Result<GpuTrainBench> {
    let free_before = crate::gpu::device::free_memory();
    let params = gpt::init_params(cfg, 1);
    let mut model = gpu_engine(cfg, &params, 0, precision, true, sync)?;
    model.set_attention(attention)?;
    model.set_kernels(kernels);
    model.set_gelu_fusion(gelu_fusion)?;
    model.set_bias_grad(bias_grad);
    let free_before = if free_before == 0 { model.gpu().memory()?.0 } else { free_before };
    model.enable_training(&params, 0)?;
    let n = batch * seq;
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    // Random tokens: one batch for every step, as before --data existed; a dataset: the next batch
    // each step, read on the host inside the timed loop as `genesis train` does.
    let random = matches!(tokens, BenchTokens::Random(_));
    tokens.fill(cfg.vocab_size, &mut inputs, &mut targets);
    let vocab = cfg.vocab_size;
    let mut step = |model: &mut dyn GpuEngine, t: u64| -> anyhow::Result<()> {
        let s = TrainStep {
            batch,
            seq,
            accum: 1,
            dloss: 1.0 / n as f32,
            max_norm: 1.0,
            adam: AdamWConfig::default(),
            t,
            lr: 1e-4,
            poison: false,
        };
        let mut next = |i: &mut [u32], tg: &mut [u32]| {
            if random {
                i.copy_from_slice(&inputs);
                tg.copy_from_slice(&targets);
            } else {
                tokens.fill(vocab, i, tg);
            }
        };
        model.train_step(&mut next, &s)?;
        Ok(())
    };
    step(model.as_mut(), 1)?;
    model.gpu().synchronize()?;
    let start = Instant::now();
    for t in 0..steps {
        step(model.as_mut(), t as u64 + 2)?;
    }
    model.gpu().synchronize()?;
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    let free_after = model.gpu().memory()?.0;
    let profile = if profile {
        let elem = if precision == Precision::Bf16 { 2 } else { 4 };
        model.set_profiling(true);
        let syncs_before = model.gpu().host_syncs();
        model.mark("step start")?;
        for t in 0..PROFILED_STEPS {
            step(model.as_mut(), (steps + t) as u64 + 2)?;
        }
        let syncs_after = model.gpu().host_syncs();
        let measured = model.take_profile()?;
        model.set_profiling(false);
        let per_step = |a: u64, b: u64| (b - a) as f64 / PROFILED_STEPS as f64;
        Some(TrainProfile {
            steps: PROFILED_STEPS,
            rows: family_rows(
                cfg,
                batch,
                seq,
                elem,
                Paths { attention, kernels, sync, gelu_fusion, bias_grad },
                &measured,
                PROFILED_STEPS,
            ),
            ceilings: model.ceilings()?,
            host_syncs_per_step: per_step(syncs_before.0, syncs_after.0),
            pageable_uploads_per_step: per_step(syncs_before.1, syncs_after.1),
            tokens_per_step: n,
        })
    } else {
        None
    };
    let tokens_per_sec = n as f64 / secs;
    let device = model.gpu().describe();
    let flops = tokens_per_sec * cfg.flops_per_token(seq);
    Ok(GpuTrainBench {
        mfu: crate::gpu::peak_bf16_tflops(&device).map(|peak| flops / (peak * 1e12)),
        device,
        ms_per_step: secs * 1e3,
        tokens_per_sec,
        tflops: flops / 1e12,
        memory_gb: free_before.saturating_sub(free_after) as f64 / 1e9,
        profile,
    })
}
