//! A run's settings: [`RunConfig`] (saved in every checkpoint), its defaults, the one merge of what
//! a command line gave with a saved run ([`RunChoices::resolve`]), and what may change on resume.

use crate::model::ModelConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The settings that define a run. Saved in every checkpoint; on resume the model shape and
/// sequence length must match, everything else may change (and the change is logged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: ModelConfig,
    /// Prepared dataset directory.
    pub data: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr_frac: f64,
    pub warmup: u64,
    pub weight_decay: f32,
    pub grad_clip: f64,
    /// Evaluate every N steps (0: only at the start, at checkpoints and at the end).
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Write a checkpoint every N steps (0: only at the end and when stopped).
    pub ckpt_every: u64,
    /// Checkpoints kept: the newest `keep` plus the one with the best validation loss.
    pub keep: usize,
    pub seed: u64,
    /// Weights the run started from instead of a random init.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

impl RunConfig {
    /// A new run of `model` on the dataset in `data` with every other setting at its default: 1000
    /// steps, batch 8, the model's context (at most 1024), no accumulation, lr 6e-4 decaying to 10%,
    /// warmup 5% of the steps (at most 700), weight decay 0.1, clipping at 1.0, validation every 100
    /// steps over 20 batches, a checkpoint every 250 steps keeping 3, seed 1337.
    pub fn new(model: ModelConfig, data: PathBuf) -> Self {
        let steps = 1000;
        RunConfig {
            model,
            data,
            steps,
            batch: 8,
            seq: model.max_seq_len.min(1024),
            grad_accum: 1,
            lr: 6e-4,
            min_lr_frac: 0.1,
            warmup: default_warmup(steps),
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            ckpt_every: 250,
            keep: 3,
            seed: 1337,
            init_from: None,
        }
    }
}

/// Warmup steps when none are given: 5% of the run, at most 700.
pub fn default_warmup(steps: u64) -> u64 {
    (steps / 20).min(700)
}

/// The run settings a command line gave (`None`: not given). [`resolve`](Self::resolve) merges them
/// with a saved run's and the defaults.
#[derive(Clone, Debug, Default)]
pub struct RunChoices {
    pub steps: Option<u64>,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub grad_accum: Option<usize>,
    pub lr: Option<f64>,
    pub min_lr_frac: Option<f64>,
    pub warmup: Option<u64>,
    pub weight_decay: Option<f32>,
    pub grad_clip: Option<f64>,
    pub eval_every: Option<u64>,
    pub eval_batches: Option<usize>,
    pub ckpt_every: Option<u64>,
    pub keep: Option<usize>,
    pub seed: Option<u64>,
    pub init_from: Option<PathBuf>,
}

impl RunChoices {
    /// The given numbers in their ranges, before any work starts (the same rules as a run's).
    pub fn check(&self) -> Result<()> {
        let any = ModelConfig::preset("tiny").expect("a preset");
        check_numbers(&self.resolve(any, PathBuf::new(), None))
    }

    /// The run of `model` on `data`: each setting as given, else the saved run's (when resuming),
    /// else [`RunConfig::new`]'s default. A new run's default warmup follows its `steps`.
    pub fn resolve(&self, model: ModelConfig, data: PathBuf, saved: Option<&RunConfig>) -> RunConfig {
        let base = match saved {
            Some(s) => RunConfig { model, data, ..s.clone() },
            None => RunConfig::new(model, data),
        };
        let steps = self.steps.unwrap_or(base.steps);
        let warmup = match saved {
            Some(s) => self.warmup.unwrap_or(s.warmup),
            None => self.warmup.unwrap_or(default_warmup(steps)),
        };
        RunConfig {
            steps,
            batch: self.batch.unwrap_or(base.batch),
            seq: self.seq.unwrap_or(base.seq),
            grad_accum: self.grad_accum.unwrap_or(base.grad_accum),
            lr: self.lr.unwrap_or(base.lr),
            min_lr_frac: self.min_lr_frac.unwrap_or(base.min_lr_frac),
            warmup,
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            grad_clip: self.grad_clip.unwrap_or(base.grad_clip),
            eval_every: self.eval_every.unwrap_or(base.eval_every),
            eval_batches: self.eval_batches.unwrap_or(base.eval_batches),
            ckpt_every: self.ckpt_every.unwrap_or(base.ckpt_every),
            keep: self.keep.unwrap_or(base.keep),
            seed: self.seed.unwrap_or(base.seed),
            init_from: self.init_from.clone().or(base.init_from.clone()),
            ..base
        }
    }
}

pub(super) fn check_config(o: &RunConfig) -> Result<()> {
    o.model.validate().map_err(anyhow::Error::msg)?;
    o.model.check_gpt2_vocab().map_err(anyhow::Error::msg)?;
    if o.seq == 0 || o.seq > o.model.max_seq_len {
        bail!("--seq {} must be between 1 and the model's context {}", o.seq, o.model.max_seq_len);
    }
    check_numbers(o)
}

/// The numeric settings in their ranges, each error naming the option, its value and the range.
fn check_numbers(o: &RunConfig) -> Result<()> {
    if o.batch == 0 || o.grad_accum == 0 || o.steps == 0 {
        bail!("--batch, --grad-accum and --steps must be at least 1");
    }
    let in_range = |name: &str, v: f64, ok: bool, range: &str| -> Result<()> {
        if v.is_finite() && ok {
            Ok(())
        } else {
            bail!("--{name} {v}: expected {range}")
        }
    };
    in_range("lr", o.lr, o.lr > 0.0, "a finite learning rate above 0, e.g. 6e-4")?;
    in_range("min-lr-frac", o.min_lr_frac, (0.0..=1.0).contains(&o.min_lr_frac), "a fraction from 0 to 1")?;
    let wd = o.weight_decay as f64;
    in_range("weight-decay", wd, wd >= 0.0, "a finite number from 0 up (0 = no decay)")?;
    in_range("grad-clip", o.grad_clip, o.grad_clip >= 0.0, "a finite norm from 0 up (0 = no clipping)")?;
    if o.eval_batches == 0 {
        bail!("--eval-batches 0: expected at least 1 (validation runs at the start, every --eval-every steps and at checkpoints)");
    }
    Ok(())
}

/// Lines describing what changed between the saved run settings and these; an error for changes
/// that cannot continue the run.
pub(super) fn resume_changes(saved: &RunConfig, now: &RunConfig, out: &Path) -> Result<Vec<String>> {
    if saved.model != now.model {
        bail!(
            "{} holds a run of a different model ({}) than requested ({}); resume with the same --model, \
             or start over with --fresh (the old run is moved to {}/previous-N/), or use another --out",
            out.display(),
            saved.model,
            now.model,
            out.display()
        );
    }
    if saved.seq != now.seq {
        bail!(
            "{} was trained with --seq {} and cannot resume with --seq {} (the data position counts windows \
             of that length); use --seq {} or --fresh",
            out.display(),
            saved.seq,
            now.seq,
            saved.seq
        );
    }
    let mut changes = Vec::new();
    let mut note = |name: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{name} {a} -> {b}"));
        }
    };
    note("steps", saved.steps.to_string(), now.steps.to_string());
    note("lr", format!("{:e}", saved.lr), format!("{:e}", now.lr));
    note("min-lr-frac", saved.min_lr_frac.to_string(), now.min_lr_frac.to_string());
    note("warmup", saved.warmup.to_string(), now.warmup.to_string());
    note("weight-decay", saved.weight_decay.to_string(), now.weight_decay.to_string());
    note("grad-clip", saved.grad_clip.to_string(), now.grad_clip.to_string());
    note("batch", saved.batch.to_string(), now.batch.to_string());
    note("grad-accum", saved.grad_accum.to_string(), now.grad_accum.to_string());
    note("eval-every", saved.eval_every.to_string(), now.eval_every.to_string());
    note("eval-batches", saved.eval_batches.to_string(), now.eval_batches.to_string());
    note("ckpt-every", saved.ckpt_every.to_string(), now.ckpt_every.to_string());
    note("keep", saved.keep.to_string(), now.keep.to_string());
    note("seed", saved.seed.to_string(), now.seed.to_string());
    // The same directory spelled differently (an old run's relative path, now resolved) is no change.
    if !same_dir(&saved.data, &now.data) {
        note("data", saved.data.display().to_string(), now.data.display().to_string());
    }
    Ok(changes)
}

/// Whether `a` and `b` name the same directory (resolved against the working directory).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
