//! The training loop: batches from the loader, forward/backward with gradient accumulation, clipping,
//! AdamW on a warmup+cosine schedule, periodic validation, and a run directory that never loses work.
//!
//! A run is its directory (see [`rundir`]). Every checkpoint is *full*: parameters, both AdamW
//! moments, the step, the data loader's position (including its RNG) and the run's settings, so
//! `train` on a directory that holds checkpoints continues from the newest whole one and produces
//! the same bits as a run that was never stopped. The only randomness in training is the batch
//! order (the initial weights come from the seed once); there is no dropout.

mod config;
pub mod metrics;
pub mod rundir;
pub mod runlog;
pub mod schedule;

use crate::checkpoint;
use crate::cpu::adamw::{clip_grad_norm, AdamW, AdamWConfig};
use crate::cpu::gpt::{self, Activations};
use crate::data::loader::{DataLoader, LoaderState};
use crate::data::manifest::Split;
use crate::gpu::adamw::StepOutcome;
use crate::gpu::engine::{gpu_engine, GpuEngine};
use crate::gpu::gpt::TrainStep;
use crate::gpu::{Attention, BiasGrad, GeluFusion, Kernels, Precision, StepSync};
use crate::model::{ModelConfig, ParamLayout};
use anyhow::{bail, Context, Result};
use metrics::{MetricsLog, Record};
use runlog::RunLog;
use schedule::LrSchedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use config::{check_config, resume_changes};
pub use config::{default_warmup, RunChoices, RunConfig};
pub use rundir::checkpoint_path;

/// A run: its settings, where it lives, and how it is driven.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub run: RunConfig,
    pub out: PathBuf,
    /// Start over even if `out` holds checkpoints (they are moved to `out/previous-N/`).
    pub fresh: bool,
    /// Echo the log to stdout (it always goes to `out/main.log`).
    pub verbose: bool,
    /// Set (to the signal number) by a signal handler: finish the step, checkpoint, return.
    pub stop: Option<Arc<AtomicUsize>>,
    /// Stop the run after this many consecutive non-finite steps (default 5).
    pub max_bad_steps: u64,
    /// Tests only: treat the loss of these (1-based) steps as NaN.
    #[doc(hidden)]
    pub poison_steps: Vec<u64>,
    /// Train on this GPU instead of the CPU.
    pub gpu: Option<usize>,
    /// On the GPU: fp32 (TF32 matmuls) or bf16 mixed precision (bf16 activations and matmuls; f32
    /// gradients, moments and master weights). The CPU always trains in f32.
    pub precision: Precision,
    /// On the GPU: materialised attention (the default) or flash attention (bf16 only). Not part
    /// of the run's settings: it does not change the model, so a resumed run may use the other.
    pub attention: Attention,
    /// On the GPU: the verified scalar kernels (default) or the 128-bit vectorised ones (`--kernels`).
    pub kernels: Kernels,
    /// On the GPU: read each micro-batch's loss back (default) or one record per step (`--sync`).
    pub sync: StepSync,
    /// On the GPU: the GELU as kernels of its own (default) or in the matmul epilogues
    /// (`--gelu-fusion`). Not part of the run's settings: it does not change the model, so a
    /// resumed run may use another.
    pub gelu_fusion: GeluFusion,
    /// On the GPU: the matmuls' bias gradients from a reduction of their own (default) or from
    /// the dweight GEMMs' BGRADB epilogue (`--bias-grad`). Not part of the run's settings: it does
    /// not change the model, so a resumed run may use another.
    pub bias_grad: BiasGrad,
    /// The dataset as the user named it, for the log (default: `run.data`, which is resolved).
    pub data_label: Option<String>,
}

impl TrainOptions {
    pub fn new(run: RunConfig, out: PathBuf) -> Self {
        TrainOptions {
            run,
            out,
            fresh: false,
            verbose: false,
            stop: None,
            max_bad_steps: 5,
            poison_steps: Vec::new(),
            gpu: None,
            precision: Precision::Fp32,
            attention: Attention::Materialized,
            kernels: Kernels::Scalar,
            sync: StepSync::Micro,
            gelu_fusion: GeluFusion::Off,
            bias_grad: BiasGrad::Reduce,
            data_label: None,
        }
    }
}

/// Where training stands, saved as a checkpoint's metadata next to the parameter and moment sections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub run: RunConfig,
    /// Training tokens consumed after this step.
    pub tokens: u64,
    /// AdamW updates taken (skipped steps take none).
    pub adam_t: u64,
    /// The train loader's position, including its RNG.
    pub loader: LoaderState,
    /// Train loss of the last step.
    pub loss: f64,
    /// Validation loss measured at this step, if it was.
    pub val_loss: Option<f64>,
    /// Best validation loss of the checkpoints written so far: (step, loss).
    pub best: Option<(u64, f64)>,
    /// Steps skipped for a non-finite loss or gradient norm.
    pub skipped: u64,
    /// Training time so far, over all sessions.
    pub elapsed_s: f64,
    pub genesis_version: String,
    /// The validation loss measured at this step was not finite: the weights are saved, but this
    /// checkpoint is never recommended and never pushes a sound one out of `--keep`.
    #[serde(default)]
    pub diverged: bool,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// Train loss of each step this session ran, as (step, loss); skipped steps are absent.
    pub train_losses: Vec<(u64, f64)>,
    /// (step, validation loss) measured this session.
    pub val_losses: Vec<(u64, f64)>,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// The newest checkpoint whose validation loss was finite: the one to sample from.
    pub recommended: Option<PathBuf>,
    /// The step training resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The last step completed.
    pub step: u64,
    /// Set when a signal stopped the run early: its name.
    pub stopped_by: Option<String>,
    pub best: Option<(u64, f64)>,
    pub tokens_per_sec: f64,
}

/// Mean validation loss over `batches` batches from the start of the val split, on the CPU.
pub fn evaluate(
    cfg: &ModelConfig,
    params: &[f32],
    val: &mut DataLoader,
    acts: &mut Activations<f32>,
    batches: usize,
) -> f64 {
    let layout = ParamLayout::new(cfg);
    let mean_loss = |inputs: &[u32], targets: &[u32]| -> Result<f64> {
        gpt::forward(cfg, &layout, params, acts, inputs);
        Ok(gpt::loss(cfg, &layout, params, acts, targets))
    };
    evaluate_with(val, batches, mean_loss).expect("the CPU forward cannot fail")
}

/// Mean over `batches` batches from the start of the val split of `mean_loss(inputs, targets)`, the
/// batch's mean loss on whichever engine computes it.
fn evaluate_with(
    val: &mut DataLoader,
    batches: usize,
    mut mean_loss: impl FnMut(&[u32], &[u32]) -> Result<f64>,
) -> Result<f64> {
    let n = val.batch() * val.seq();
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    val.reset();
    let batches = batches.min(val.num_val_batches()).max(1);
    let mut total = 0.0;
    for _ in 0..batches {
        val.next_batch(&mut inputs, &mut targets);
        total += mean_loss(&inputs, &targets)?;
    }
    Ok(total / batches as f64)
}

/// The run settings saved in the newest readable checkpoint of `out` (header only), else in its
/// `run.json` (a run stopped before its first checkpoint, or whose checkpoints are all damaged), to
/// fill in the options a resumed `genesis train --out RUN` was not given.
pub fn saved_run_config(out: &Path) -> Option<RunConfig> {
    let from_checkpoint = rundir::list_checkpoints(out).into_iter().find_map(|(_, p)| {
        let info = checkpoint::read_info(&p).ok()?;
        serde_json::from_value::<TrainState>(info.meta).ok().map(|s| s.run)
    });
    from_checkpoint.or_else(|| rundir::read_run_config(out))
}

/// The name of a stop signal, for the log.
pub fn signal_name(sig: usize) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Model, optimizer and data position: everything a step changes.
struct Trainer {
    params: Vec<f32>,
    opt: AdamW,
    state: TrainState,
    step: u64,
}

/// Finds the newest whole checkpoint in `out` and restores the trainer from it; damaged ones are
/// reported and set aside. `Ok(None)` when `out` holds no checkpoints.
fn resume(o: &TrainOptions, log: &mut RunLog) -> Result<Option<(Trainer, Vec<String>)>> {
    let found = rundir::list_checkpoints(&o.out);
    if found.is_empty() {
        return Ok(None);
    }
    let mut damaged = Vec::new();
    for (step, path) in &found {
        let ckpt = match checkpoint::load(path) {
            Ok(c) => c,
            Err(e) => {
                log.line(&format!("checkpoint {} is damaged ({e:#}); trying the previous one", path.display()));
                damaged.push(path.clone());
                continue;
            }
        };
        let Ok(state) = serde_json::from_value::<TrainState>(ckpt.meta.clone()) else {
            bail!(
                "{} holds no training state (a parameters-only checkpoint); continue from its weights with \
                 genesis train --out NEW_RUN --init-from {}",
                path.display(),
                path.display()
            );
        };
        let changes = resume_changes(&state.run, &o.run, &o.out)?;
        let take = |name: &str| {
            ckpt.sections
                .iter()
                .find(|s| s.0 == name)
                .map(|s| s.1.clone())
                .with_context(|| format!("{} has no '{name}' section; it is not a full checkpoint", path.display()))
        };
        let (params, m, v) = (take("params")?, take("adam_m")?, take("adam_v")?);
        let mut opt = AdamW::new(adamw_config(&o.run), params.len());
        (opt.m, opt.v, opt.t) = (m, v, state.adam_t);
        for d in &damaged {
            let to = rundir::set_aside(d)?;
            log.line(&format!("moved the damaged checkpoint to {}", to.display()));
        }
        return Ok(Some((Trainer { params, opt, state, step: *step }, changes)));
    }
    bail!(
        "none of the {} checkpoints in {} is whole (see above); start over with --fresh (they are moved to {}/previous-N/)",
        found.len(),
        o.out.display(),
        o.out.display()
    )
}

fn adamw_config(r: &RunConfig) -> AdamWConfig {
    AdamWConfig { weight_decay: r.weight_decay, ..Default::default() }
}

/// A new run: weights from `--init-from` or the seed.
fn start_fresh(o: &TrainOptions, loader: &DataLoader, log: &mut RunLog) -> Result<Trainer> {
    let r = &o.run;
    let params = match &r.init_from {
        Some(path) => {
            let w = crate::weights::load(path)?;
            if w.config != r.model {
                bail!(
                    "--init-from {}: it holds {} but the run is configured for {}",
                    path.display(),
                    w.config,
                    r.model
                );
            }
            log.line(&format!("initial weights: {} ({})", path.display(), w.format));
            w.params
        }
        None => gpt::init_params(&r.model, r.seed),
    };
    let state = TrainState {
        run: r.clone(),
        tokens: 0,
        adam_t: 0,
        loader: loader.state(),
        loss: f64::NAN,
        val_loss: None,
        best: None,
        skipped: 0,
        elapsed_s: 0.0,
        genesis_version: env!("CARGO_PKG_VERSION").to_string(),
        diverged: false,
    };
    let opt = AdamW::new(adamw_config(r), params.len());
    Ok(Trainer { params, opt, state, step: 0 })
}

/// Whether the checkpoint at `path` records a diverged step (a header read; unreadable counts as not).
fn diverged(path: &Path) -> bool {
    checkpoint::read_info(path).is_ok_and(|i| i.meta.get("diverged").and_then(|d| d.as_bool()) == Some(true))
}

/// The newest checkpoint in `out` that did not diverge, to recommend.
fn newest_sound_checkpoint(out: &Path) -> Option<PathBuf> {
    rundir::list_checkpoints(out).into_iter().map(|c| c.1).find(|p| !diverged(p))
}

/// Writes a full checkpoint for the trainer's current step and prunes old ones.
fn save_checkpoint(o: &TrainOptions, t: &mut Trainer, log: &mut RunLog) -> Result<PathBuf> {
    if let Some(v) = t.state.val_loss {
        if t.state.best.is_none_or(|(_, b)| v < b) {
            t.state.best = Some((t.step, v));
        }
    }
    t.state.diverged = t.state.val_loss.is_some_and(|v| !v.is_finite());
    let path = checkpoint_path(&o.out, t.step);
    let meta = serde_json::to_value(&t.state)?;
    let sections: [(&str, &[f32]); 3] = [("params", &t.params), ("adam_m", &t.opt.m), ("adam_v", &t.opt.v)];
    checkpoint::write(&path, &o.run.model, t.step, &meta, &sections)?;
    let pruned = rundir::prune(&o.out, o.run.keep, t.state.best.map(|b| b.0), diverged);
    let mut line = format!("step {:>6} | saved {}", t.step, path.display());
    if t.state.diverged {
        line.push_str(" (its validation loss is not finite: kept apart, never recommended)");
    }
    if !pruned.is_empty() {
        line.push_str(&format!(" (removed step {})", pruned.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")));
    }
    log.line(&line);
    Ok(path)
}

/// Where the steps run. The trainer's host copies of the weights and moments are the truth on the
/// CPU; on the GPU they are refreshed from the device before every checkpoint.
enum Engine {
    /// The gradients, the activations and one micro-batch's (inputs, targets), allocated once.
    Cpu {
        grads: Vec<f32>,
        acts: Box<Activations<f32>>,
        batch: (Vec<u32>, Vec<u32>),
    },
    Gpu(Box<dyn GpuEngine>),
}

impl Engine {
    fn new(o: &TrainOptions, t: &Trainer) -> Result<Self> {
        let r = &o.run;
        Ok(match o.gpu {
            None => Engine::Cpu {
                grads: vec![0.0; ParamLayout::new(&r.model).total],
                acts: Box::new(Activations::new(&r.model, r.batch, r.seq)),
                batch: (vec![0; r.batch * r.seq], vec![0; r.batch * r.seq]),
            },
            // Ready to continue from the trainer's weights, step and moments (TF32 for fp32 matmuls).
            Some(ordinal) => {
                let mut g = gpu_engine(&r.model, &t.params, ordinal, o.precision, true, o.sync)?;
                g.set_attention(o.attention)?;
                g.set_kernels(o.kernels);
                g.set_gelu_fusion(o.gelu_fusion)?;
                g.set_bias_grad(o.bias_grad);
                g.enable_training(&t.params, t.opt.t)?;
                g.upload_moments(&t.opt.m, &t.opt.v)?;
                Engine::Gpu(g)
            }
        })
    }

    fn device(&self) -> String {
        match self {
            Engine::Cpu { .. } => "cpu".into(),
            Engine::Gpu(g) => g.describe(),
        }
    }

    /// One optimizer step over `r.grad_accum` micro-batches: gradients, clipping to `r.grad_clip`,
    /// and AdamW at `lr` unless the loss (NaN when `poison`) or the norm is not finite. Returns the
    /// mean loss, the norm before clipping and whether the weights were updated.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        t: &mut Trainer,
        cfg: &ModelConfig,
        layout: &ParamLayout,
        data: &mut DataLoader,
        r: &RunConfig,
        dloss: f32,
        lr: f32,
        poison: bool,
    ) -> Result<StepOutcome> {
        let outcome = match self {
            Engine::Cpu { grads, acts, batch: (inputs, targets) } => {
                grads.fill(0.0);
                let mut loss = 0.0;
                for _ in 0..r.grad_accum {
                    data.next_batch(inputs, targets);
                    gpt::forward(cfg, layout, &t.params, acts, inputs);
                    loss += gpt::backward(cfg, layout, &t.params, grads, acts, inputs, targets, dloss);
                }
                let loss = if poison { f64::NAN } else { loss / r.grad_accum as f64 };
                let outcome = StepOutcome::decide(loss, clip_grad_norm(grads, r.grad_clip));
                if outcome.applied {
                    t.opt.update(layout, &mut t.params, grads, lr);
                }
                outcome
            }
            Engine::Gpu(g) => {
                let s = TrainStep {
                    batch: r.batch,
                    seq: r.seq,
                    accum: r.grad_accum,
                    dloss,
                    max_norm: r.grad_clip,
                    adam: t.opt.cfg,
                    t: t.opt.t + 1,
                    lr,
                    poison,
                };
                let outcome = g.train_step(&mut |inputs, targets| data.next_batch(inputs, targets), &s)?;
                if outcome.applied {
                    t.opt.t += 1;
                }
                outcome
            }
        };
        Ok(outcome)
    }

    fn evaluate(&mut self, t: &Trainer, cfg: &ModelConfig, val: &mut DataLoader, batches: usize) -> Result<f64> {
        match self {
            Engine::Cpu { acts, .. } => Ok(evaluate(cfg, &t.params, val, acts, batches)),
            Engine::Gpu(g) => {
                let (b, s) = (val.batch(), val.seq());
                evaluate_with(val, batches, |inputs, targets| g.mean_loss(inputs, targets, b, s))
            }
        }
    }

    /// Brings the device's weights and moments into the trainer (before a checkpoint).
    fn sync_to_host(&mut self, t: &mut Trainer) -> Result<()> {
        if let Engine::Gpu(g) = self {
            t.params = g.download_weights()?;
            (t.opt.m, t.opt.v) = g.download_moments()?;
        }
        Ok(())
    }

    /// Model FLOP utilisation against the device's bf16 peak, when known.
    fn mfu(&self, cfg: &ModelConfig, seq: usize, tokens_per_sec: f64) -> Option<f64> {
        match self {
            Engine::Cpu { .. } => None,
            Engine::Gpu(g) => crate::gpu::peak_bf16_tflops(&g.describe())
                .map(|peak| tokens_per_sec * cfg.flops_per_token(seq) / (peak * 1e12)),
        }
    }
}

/// Refuses a CPU run whose weights, gradients, AdamW moments and activations would not fit in the
/// memory this machine has available, naming both figures (instead of aborting in the allocator).
fn check_cpu_memory(r: &RunConfig) -> Result<()> {
    let Some(available) = crate::util::available_memory() else { return Ok(()) };
    let params = ParamLayout::new(&r.model).total as u128;
    // Weights, gradients, m and v in f32, the activations, and the backward's scratch (14 C per token).
    let scratch = (r.batch * r.seq) as u128 * r.model.channels as u128 * 14 * 4;
    let need = params * 16 + Activations::bytes(&r.model, r.batch, r.seq) + scratch;
    if need > available as u128 {
        bail!(
            "training {} on the CPU at --batch {} --seq {} needs about {} of memory, but {} is available; \
             use a smaller --batch (and --grad-accum to keep the tokens per step) or a shorter --seq",
            r.model,
            r.batch,
            r.seq,
            crate::util::gb(need),
            crate::util::gb(available as u128)
        );
    }
    Ok(())
}

/// Notes a validation loss in the state, the summary, the log and the metrics.
fn record_val(
    t: &mut Trainer,
    v: f64,
    metrics: &mut MetricsLog,
    log: &mut RunLog,
    summary: &mut TrainSummary,
) -> Result<()> {
    t.state.val_loss = Some(v);
    summary.val_losses.push((t.step, v));
    log.line(&format!("step {:>6} | val loss {v:.4}", t.step));
    metrics.write(&Record::Val { step: t.step, tokens: t.state.tokens, loss: v })
}

pub fn train(o: &TrainOptions) -> Result<TrainSummary> {
    let r = &o.run;
    check_config(r)?;
    if o.gpu.is_none() {
        check_cpu_memory(r)?;
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create run directory {}", o.out.display()))?;
    let removed = rundir::remove_stale_temporaries(&o.out);
    let archived = if o.fresh { rundir::archive(&o.out)? } else { None };
    let mut log = RunLog::open(&o.out, o.verbose);
    log.line(&format!(
        "==> {} genesis {} train, run {}",
        crate::util::utc_now(),
        env!("CARGO_PKG_VERSION"),
        o.out.display()
    ));
    if let Some(dest) = archived {
        log.line(&format!("--fresh: moved the earlier run in {} to {}", o.out.display(), dest.display()));
    }
    for name in removed {
        log.line(&format!("removed {name}, a checkpoint write that was interrupted"));
    }
    let mut train_data = DataLoader::open(&r.data, Split::Train, r.batch, r.seq, r.seed)?;
    let mut val_data = DataLoader::open(&r.data, Split::Val, r.batch, r.seq, r.seed)?;

    let resumed = if o.fresh { None } else { resume(o, &mut log)? };
    let resumed_from = resumed.as_ref().map(|(t, _)| t.step);
    let mut t = match resumed {
        Some((mut t, changes)) => {
            train_data.restore(t.state.loader).with_context(|| format!("resuming from step {}", t.step))?;
            log.line(&format!(
                "resuming from step {} ({} tokens seen, train loss {:.4}{}) in {}",
                t.step,
                t.state.tokens,
                t.state.loss,
                t.state.val_loss.map(|v| format!(", val loss {v:.4}")).unwrap_or_default(),
                o.out.display()
            ));
            if !changes.is_empty() {
                log.line(&format!("settings changed on resume: {}", changes.join(", ")));
            }
            if t.step >= r.steps {
                log.line(&format!(
                    "the run already reached step {} of {}; raise --steps to train further",
                    t.step, r.steps
                ));
            }
            t.state.run = r.clone();
            t
        }
        None => start_fresh(o, &train_data, &mut log)?,
    };
    rundir::write_run_config(&o.out, r)?;

    let cfg = r.model;
    let layout = ParamLayout::new(&cfg);
    let sched = LrSchedule { max_lr: r.lr, min_lr: r.lr * r.min_lr_frac, warmup: r.warmup, total: r.steps };
    let mut engine = Engine::new(o, &t)?;
    let n = r.batch * r.seq;
    let tokens_per_step = (n * r.grad_accum) as u64;
    let (mut metrics, notes) = MetricsLog::open(&o.out, resumed_from)?;
    for note in notes {
        log.line(&note);
    }
    metrics.write(&Record::Start {
        step: t.step,
        tokens: t.state.tokens,
        model: cfg.to_string(),
        params: layout.total as u64,
        tokens_per_step,
        device: engine.device(),
    })?;
    let mut summary = TrainSummary { resumed_from, ..Default::default() };
    log.line(&format!(
        "model: {cfg}\ndevice: {}\ndata: {} ({} train tokens, {} val tokens)\nbatch {} x seq {} x accum {} = {} tokens/step, {} steps, checkpoints {} (keep {} + best)",
        engine.device(),
        o.data_label.clone().unwrap_or_else(|| r.data.display().to_string()),
        train_data.total_tokens(),
        val_data.total_tokens(),
        r.batch,
        r.seq,
        r.grad_accum,
        tokens_per_step,
        r.steps,
        if r.ckpt_every == 0 { "at the end".to_string() } else { format!("every {} steps", r.ckpt_every) },
        r.keep
    ));

    if resumed_from.is_none() {
        let v = engine.evaluate(&t, &cfg, &mut val_data, r.eval_batches)?;
        record_val(&mut t, v, &mut metrics, &mut log, &mut summary)?;
    }

    let session_start = Instant::now();
    let elapsed_before = t.state.elapsed_s;
    let mut step_time = None::<f64>;
    let mut bad_in_a_row = 0;
    let mut last_saved: Option<PathBuf> = rundir::list_checkpoints(&o.out).first().map(|c| c.1.clone());
    let mut session_tokens = 0u64;
    while t.step < r.steps {
        let t0 = Instant::now();
        let dloss = 1.0 / tokens_per_step as f32;
        let lr = sched.at(t.step);
        let poison = o.poison_steps.contains(&(t.step + 1));
        let StepOutcome { loss, norm, applied } =
            engine.step(&mut t, &cfg, &layout, &mut train_data, r, dloss, lr as f32, poison)?;
        t.step += 1;
        t.state.tokens += tokens_per_step;
        session_tokens += tokens_per_step;
        t.state.loader = train_data.state();
        if !applied {
            bad_in_a_row += 1;
            t.state.skipped += 1;
            log.line(&format!(
                "step {:>6}/{} | loss {loss} | norm {norm} | not finite: update skipped ({bad_in_a_row} in a row)",
                t.step, r.steps
            ));
            metrics.write(&Record::Skip { step: t.step, tokens: t.state.tokens, loss, grad_norm: norm })?;
            if bad_in_a_row >= o.max_bad_steps {
                let last = match &last_saved {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                bail!(
                    "{bad_in_a_row} steps in a row (up to step {}) had a non-finite loss or gradient norm, so the run \
                     stopped; {last}. Resume with a lower learning rate: genesis train --out {} --lr {:e}",
                    t.step,
                    crate::util::shell_path(&o.out),
                    r.lr / 2.0
                );
            }
        } else {
            bad_in_a_row = 0;
            t.state.adam_t = t.opt.t;
            t.state.loss = loss;
            summary.train_losses.push((t.step, loss));
            let dt = t0.elapsed().as_secs_f64();
            let avg = step_time.map_or(dt, |a: f64| 0.9 * a + 0.1 * dt);
            step_time = Some(avg);
            let elapsed = elapsed_before + session_start.elapsed().as_secs_f64();
            let tok_s = tokens_per_step as f64 / dt;
            let mfu = engine.mfu(&cfg, r.seq, tok_s);
            log.line(&format!(
                "step {:>6}/{} | epoch {:.2} | loss {loss:.4} | lr {lr:.2e} | norm {norm:.3} | {tok_s:.0} tok/s{} | {:.1} ms | elapsed {} | eta {}",
                t.step,
                r.steps,
                train_data.epoch_progress(),
                mfu.map(|m| format!(" | MFU {:.1}%", 100.0 * m)).unwrap_or_default(),
                dt * 1e3,
                crate::util::duration(elapsed),
                crate::util::duration(avg * (r.steps - t.step) as f64)
            ));
            metrics.write(&Record::Train {
                step: t.step,
                tokens: t.state.tokens,
                loss,
                lr,
                grad_norm: norm,
                tokens_per_sec: tok_s,
                mfu,
                elapsed_s: elapsed,
            })?;
        }
        t.state.val_loss = None;
        t.state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
        let stop = o.stop.as_ref().map(|s| s.load(Ordering::SeqCst)).filter(|&s| s != 0);
        let last = t.step == r.steps;
        let ckpt_due = last || (r.ckpt_every > 0 && t.step.is_multiple_of(r.ckpt_every));
        if stop.is_none() && ((r.eval_every > 0 && t.step.is_multiple_of(r.eval_every)) || ckpt_due) {
            let v = engine.evaluate(&t, &cfg, &mut val_data, r.eval_batches)?;
            record_val(&mut t, v, &mut metrics, &mut log, &mut summary)?;
        }
        if ckpt_due || stop.is_some() {
            engine.sync_to_host(&mut t)?;
            let path = save_checkpoint(o, &mut t, &mut log)?;
            last_saved = Some(path.clone());
            summary.checkpoint = path;
        }
        if let Some(sig) = stop {
            summary.stopped_by = Some(signal_name(sig));
            break;
        }
    }
    summary.step = t.step;
    summary.best = t.state.best;
    if summary.checkpoint.as_os_str().is_empty() {
        summary.checkpoint = last_saved.unwrap_or_default();
    }
    summary.recommended = newest_sound_checkpoint(&o.out);
    summary.tokens_per_sec = session_tokens as f64 / session_start.elapsed().as_secs_f64().max(1e-9);
    Ok(summary)
}
