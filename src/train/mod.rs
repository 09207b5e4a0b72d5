//! The training loop: batches from the loader, forward/backward with gradient accumulation, clipping,
//! AdamW on a warmup+cosine schedule, periodic validation and checkpoints.

pub mod checkpoint;
pub mod metrics;
pub mod optim;

use crate::cpu::gpt::{self, Activations};
use crate::data::loader::{DataLoader, Split};
use crate::model::{ModelConfig, ParamLayout};
use anyhow::{bail, Context, Result};
use checkpoint::Checkpoint;
use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a CPU training run needs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: ModelConfig,
    pub data: PathBuf,
    pub out: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr_frac: f64,
    pub warmup: u64,
    pub weight_decay: f32,
    pub grad_clip: f64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub ckpt_every: u64,
    pub seed: u64,
    /// Print one line per step (and per evaluation) to stdout.
    pub verbose: bool,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    pub train_losses: Vec<f64>,
    /// (step, validation loss), including one before the first step and one after the last.
    pub val_losses: Vec<(u64, f64)>,
    pub checkpoint: PathBuf,
    pub tokens_per_sec: f64,
}

/// Mean validation loss over `batches` batches from the start of the val split.
pub fn evaluate(
    cfg: &ModelConfig,
    params: &[f32],
    val: &mut DataLoader,
    acts: &mut Activations<f32>,
    batches: usize,
) -> f64 {
    let layout = ParamLayout::new(cfg);
    let n = acts.b * acts.t;
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    val.reset();
    let batches = batches.min(val.num_val_batches()).max(1);
    let mut total = 0.0;
    for _ in 0..batches {
        val.next_batch(&mut inputs, &mut targets);
        gpt::forward(cfg, &layout, params, acts, &inputs);
        total += gpt::loss(cfg, &layout, params, acts, &targets);
    }
    total / batches as f64
}

/// File name of the checkpoint written at `step`.
pub fn checkpoint_path(out: &Path, step: u64) -> PathBuf {
    out.join(format!("step_{step:08}.ckpt"))
}

pub fn train(o: &TrainOptions) -> Result<TrainSummary> {
    let cfg = o.model;
    cfg.validate().map_err(anyhow::Error::msg)?;
    if o.seq == 0 || o.seq > cfg.max_seq_len {
        bail!("--seq {} must be between 1 and the model's context {}", o.seq, cfg.max_seq_len);
    }
    if o.batch == 0 || o.grad_accum == 0 || o.steps == 0 {
        bail!("--batch, --grad-accum and --steps must be at least 1");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create run directory {}", o.out.display()))?;
    let mut train_data = DataLoader::open(&o.data, Split::Train, o.batch, o.seq, o.seed)?;
    let mut val_data = DataLoader::open(&o.data, Split::Val, o.batch, o.seq, o.seed)?;

    let layout = ParamLayout::new(&cfg);
    let mut params = gpt::init_params(&cfg, o.seed);
    let mut grads = vec![0.0f32; layout.total];
    let mut opt = AdamW::new(AdamWConfig { weight_decay: o.weight_decay, ..Default::default() }, layout.total);
    let sched = LrSchedule { max_lr: o.lr, min_lr: o.lr * o.min_lr_frac, warmup: o.warmup, total: o.steps };
    let mut acts = Activations::<f32>::new(&cfg, o.batch, o.seq);
    let n = o.batch * o.seq;
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    let tokens_per_step = (n * o.grad_accum) as f64;
    let mut summary = TrainSummary::default();
    let say = |s: String| {
        if o.verbose {
            println!("{s}");
        }
    };
    say(format!(
        "model: {cfg}\ndata: {} ({} train tokens, {} val tokens)\nbatch {} x seq {} x accum {} = {} tokens/step, {} steps",
        o.data.display(),
        train_data.total_tokens(),
        val_data.total_tokens(),
        o.batch,
        o.seq,
        o.grad_accum,
        tokens_per_step,
        o.steps
    ));

    let v0 = evaluate(&cfg, &params, &mut val_data, &mut acts, o.eval_batches);
    summary.val_losses.push((0, v0));
    say(format!("step {:>6} | val loss {v0:.4}", 0));
    let run_start = Instant::now();
    for step in 0..o.steps {
        let t0 = Instant::now();
        grads.fill(0.0);
        let dloss = 1.0 / tokens_per_step as f32;
        let mut loss = 0.0;
        for _ in 0..o.grad_accum {
            train_data.next_batch(&mut inputs, &mut targets);
            gpt::forward(&cfg, &layout, &params, &mut acts, &inputs);
            loss += gpt::backward(&cfg, &layout, &params, &mut grads, &mut acts, &inputs, &targets, dloss);
        }
        loss /= o.grad_accum as f64;
        let norm = clip_grad_norm(&mut grads, o.grad_clip);
        let lr = sched.at(step);
        if !loss.is_finite() || !norm.is_finite() {
            bail!("step {}: loss {loss} or gradient norm {norm} is not finite; try a lower --lr", step + 1);
        }
        opt.step(&layout, &mut params, &grads, lr as f32);
        let dt = t0.elapsed().as_secs_f64();
        summary.train_losses.push(loss);
        say(format!(
            "step {:>6}/{} | epoch {:.2} | loss {loss:.4} | lr {lr:.2e} | norm {norm:.3} | {:.0} tok/s | {:.1} ms",
            step + 1,
            o.steps,
            train_data.epoch_progress(),
            tokens_per_step / dt,
            dt * 1e3
        ));
        let done = step + 1;
        if (o.eval_every > 0 && done % o.eval_every == 0) || done == o.steps {
            let v = evaluate(&cfg, &params, &mut val_data, &mut acts, o.eval_batches);
            summary.val_losses.push((done, v));
            say(format!("step {done:>6} | val loss {v:.4}"));
        }
        if (o.ckpt_every > 0 && done % o.ckpt_every == 0) || done == o.steps {
            let path = checkpoint_path(&o.out, done);
            checkpoint::save(&path, &Checkpoint::new(cfg, done, params.clone()))?;
            say(format!("step {done:>6} | saved {}", path.display()));
            summary.checkpoint = path;
        }
    }
    summary.tokens_per_sec = tokens_per_step * o.steps as f64 / run_start.elapsed().as_secs_f64();
    Ok(summary)
}
