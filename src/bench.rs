//! Benchmarks behind `genesis bench`: numbers to hold against PyTorch, never asserted in tests.

use crate::cpu::gpt::{self, Activations};
use crate::cpu::sample::Decoder;
use crate::model::{ModelConfig, ParamLayout};
use crate::rng::Rng;
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use std::time::Instant;

pub struct SampleBench {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    /// Weight bytes streamed per token over the measured time (GB/s).
    pub weight_gb_per_sec: f64,
}

/// KV-cache decoding speed of `cfg` with random weights: `tokens` decode steps after one warmup step.
pub fn bench_sample(cfg: &ModelConfig, tokens: usize) -> SampleBench {
    let params = gpt::init_params(cfg, 1);
    let mut dec = Decoder::new(cfg, &params);
    let mut rng = Rng::new(7);
    let tokens = tokens.min(cfg.max_seq_len - 1);
    dec.step(0);
    let start = Instant::now();
    for _ in 0..tokens {
        dec.step(rng.below(cfg.vocab_size as u64) as u32);
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes_per_token = 4.0
        * (params.len() - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels - cfg.max_seq_len * cfg.channels)
            as f64;
    SampleBench {
        tokens,
        seconds,
        tokens_per_sec: tokens as f64 / seconds,
        weight_gb_per_sec: bytes_per_token * tokens as f64 / seconds / 1e9,
    }
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

/// Full CPU training steps of `cfg` on random tokens: one warmup step, then `steps` measured.
pub fn bench_train_cpu(cfg: &ModelConfig, batch: usize, seq: usize, steps: usize) -> TrainBench {
    let layout = ParamLayout::new(cfg);
    let mut params = gpt::init_params(cfg, 1);
    let mut grads = vec![0.0f32; layout.total];
    let mut opt = AdamW::new(AdamWConfig::default(), layout.total);
    let mut acts = Activations::<f32>::new(cfg, batch, seq);
    let mut rng = Rng::new(3);
    let n = batch * seq;
    let mut step_ms = Vec::new();
    let mut phase_ms = [0.0; 3];
    for i in 0..=steps {
        let inputs: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        let t0 = Instant::now();
        grads.fill(0.0);
        gpt::forward(cfg, &layout, &params, &mut acts, &inputs);
        let t1 = Instant::now();
        gpt::backward(cfg, &layout, &params, &mut grads, &mut acts, &inputs, &targets, 1.0 / n as f32);
        let t2 = Instant::now();
        clip_grad_norm(&mut grads, 1.0);
        opt.step(&layout, &mut params, &grads, 1e-4);
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
