//! `genesis train`: train a model on prepared shards, on the GPU when one works, resuming by itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use argh::FromArgs;
use genesis::data::manifest;
use genesis::gpu::{Attention, BiasGrad, Device, GeluFusion, Kernels, Precision, StepSync};
use genesis::model::ModelConfig;
use genesis::train::runlog::RunLog;
use genesis::train::{self, rundir, train, RunChoices, TrainOptions};
use genesis::util::{shell_path, DirLock};

/// Train a model on prepared shards, on the GPU when one works (else the CPU). Resumes by itself.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "train",
    example = "genesis train --model tiny --data shakespeare --out runs/shakespeare --steps 600 --batch 16\ngenesis train --out runs/shakespeare                 # resume it where it stopped\ngenesis train --out runs/shakespeare --steps 1200    # resume and train longer\ngenesis train --model gpt2-124m --out runs/gpt2      # wikitext-103, prepared first if absent\ngenesis train --out runs/ft --init-from gpt2/model.safetensors --data shakespeare --lr 1e-4",
    note = "RUN DIRECTORY (--out; without it runs/DATA-MODEL, e.g. runs/wikitext-103-tiny, named in the first line, so the same command finds the same run again): step_NNNNNNNN.ckpt full checkpoints (weights, AdamW moments, step, data position, settings), run.json (the settings, written at the start), metrics.jsonl (one JSON record per step and evaluation; genesis plot RUN draws it) and main.log (a copy of everything printed, and the error that ends a run). One genesis train at a time uses a run directory: a second one stops at once, naming the first. Checkpoints are written every --ckpt-every steps, at the end, and when stopped by a signal; each goes to a temporary file, is fsynced, checksummed per section and renamed, so a kill at any moment leaves the previous checkpoint whole. The newest --keep checkpoints and the one with the best validation loss are kept.\n\nRESUME: run the same command again, or just genesis train --out RUN: training continues from the newest whole checkpoint (a damaged one is reported, renamed *.corrupt and the previous one used) and gives bit-for-bit the losses of a run that never stopped. Options not given are taken from the run (its run.json when no checkpoint is whole yet; a run whose settings cannot be read is refused); --steps, --lr and the other schedule and evaluation settings may change (each change is logged); --model and --seq may not. --fresh starts over, moving the earlier run into RUN/previous-N/.\n\nSTOPPING: Ctrl-C, SIGTERM or SIGHUP (a dropped ssh session) finish the current step, write a checkpoint and exit 0 with the command that resumes; a second Ctrl-C exits at once, saying the step in progress was not saved. A step whose loss or gradient norm is NaN or infinite is skipped (not applied, never saved) and logged; --max-bad-steps in a row stop the run and name the last good checkpoint.\n\nEach step prints loss, learning rate, gradient norm, tokens/s, time per step, elapsed time and ETA; the validation loss is printed every --eval-every steps and at each checkpoint. AdamW (beta1 0.9, beta2 0.95, eps 1e-8) with weight decay on the 2-D weights only, linear warmup then cosine decay to --min-lr-frac of --lr."
)]
pub struct TrainCmd {
    /// model preset: tiny, gpt2-124m, genesis-150m, gpt2-350m (default tiny, or the run's when resuming, or --init-from's shape)
    #[argh(option)]
    model: Option<String>,
    /// prepared dataset: a name in data/ or a directory (default wikitext-103, downloaded and prepared first if absent)
    #[argh(option)]
    data: Option<String>,
    /// run directory: checkpoints, metrics.jsonl, main.log (created if missing; resumed if it holds checkpoints; default runs/DATA-MODEL, e.g. runs/wikitext-103-tiny)
    #[argh(option)]
    out: Option<PathBuf>,
    /// start over even if --out holds a run (the earlier run is moved to RUN/previous-N/)
    #[argh(switch)]
    fresh: bool,
    /// start from these weights instead of a random init: a checkpoint, an export directory, a Hugging Face GPT-2 model.safetensors or an llm.c .bin
    #[argh(option)]
    init_from: Option<PathBuf>,
    /// optimizer steps in the whole run (default 1000)
    #[argh(option)]
    steps: Option<u64>,
    /// sequences per micro-batch (default 8)
    #[argh(option)]
    batch: Option<usize>,
    /// tokens per sequence (default: the model's context, at most 1024)
    #[argh(option)]
    seq: Option<usize>,
    /// micro-batches accumulated per step (default 1)
    #[argh(option)]
    grad_accum: Option<usize>,
    /// tokens per optimizer step, e.g. 524288 (GPT-2's recipe): on a GPU the largest micro-batch that fits its free memory is chosen and accumulated to reach it (instead of --batch and --grad-accum)
    #[argh(option)]
    tokens_per_step: Option<usize>,
    /// peak learning rate (default 6e-4)
    #[argh(option)]
    lr: Option<f64>,
    /// final learning rate as a fraction of the peak (default 0.1)
    #[argh(option)]
    min_lr_frac: Option<f64>,
    /// linear warmup steps (default: 5% of --steps, at most 700)
    #[argh(option)]
    warmup: Option<u64>,
    /// weight decay of AdamW on the 2-D weights (default 0.1)
    #[argh(option)]
    weight_decay: Option<f32>,
    /// clip the global gradient norm to this (0 = off; default 1.0)
    #[argh(option)]
    grad_clip: Option<f64>,
    /// evaluate the validation loss every N steps (0 = only at the start, checkpoints and the end; default 100)
    #[argh(option)]
    eval_every: Option<u64>,
    /// validation batches per evaluation (default 20)
    #[argh(option)]
    eval_batches: Option<usize>,
    /// write a checkpoint every N steps (0 = only at the end; default 250)
    #[argh(option)]
    ckpt_every: Option<u64>,
    /// checkpoints to keep besides the best one (default 3)
    #[argh(option)]
    keep: Option<usize>,
    /// seed for initialisation and batch order (default 1337)
    #[argh(option)]
    seed: Option<u64>,
    /// stop after this many consecutive steps with a non-finite loss or gradient norm (default 5)
    #[argh(option, default = "5")]
    max_bad_steps: u64,
    /// where to train: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "Device::Auto")]
    device: Device,
    /// on the GPU: fp32 (everything f32, TF32 matmuls; the default) or bf16 (mixed precision: bf16 activations and matmuls, f32 gradients, AdamW moments and master weights, stochastic rounding); checkpoints hold f32 weights either way
    #[argh(option, default = "Precision::Fp32")]
    precision: Precision,
    /// on the GPU: materialized (the default: stores the T x T attention probabilities, cuBLAS products; fp32 or bf16) or flash (bf16 only: the tiled tensor-core kernel, no T x T matrix, so a larger micro-batch fits; not yet verified on a GPU). Either may be chosen on each resume: it does not change the model
    #[argh(option, default = "Attention::Materialized")]
    attention: Attention,
    /// on the GPU: scalar (the verified kernels; default) or vector (128-bit vectorised elementwise and row kernels; the backward overwrites single-producer activation gradients instead of zeroing them; one attproj and one fcproj buffer for all layers; not yet verified on a GPU)
    #[argh(option, default = "Kernels::Scalar")]
    kernels: Kernels,
    /// on the GPU: micro (the default: each micro-batch's loss and the gradient norm come back to the host before AdamW) or step (the whole step is queued and one record read back at its end: pinned token buffers, loss sum, norm, clipping and the skip decided on the device, one AdamW launch, on a stream of its own; the same weights bit for bit, not yet verified on a GPU) or graph (step, with each micro-batch's forward and backward captured once as a CUDA graph and replayed; not yet verified on a GPU)
    #[argh(option, default = "StepSync::Micro")]
    sync: StepSync,
    /// on the GPU: off (the default: the GELU is a kernel of its own after the fc matmul, its backward one after the fcproj matmul's), forward (the fc matmul's cuBLASLt epilogue applies the GELU and keeps the pre-GELU values for the backward: GELU_AUX_BIAS, one launch fewer per layer) or both (forward, and the fcproj matmul's backward applies the GELU backward in its epilogue: DGELU, another launch fewer); llm.c found the fused GELU slower on some GPUs, so measure both ways; not yet verified on a GPU. Either may be chosen on each resume: it does not change the model
    #[argh(option, default = "GeluFusion::Off")]
    gelu_fusion: GeluFusion,
    /// on the GPU: reduce (the default: the bias gradients of the qkv, attproj, fc and fcproj matmuls from a deterministic two-kernel reduction of their own) or epilogue (the dweight GEMM's cuBLASLt epilogue computes them as well: BGRADB, dout read once instead of twice, then a small kernel adds them to the accumulated gradient); kept only where a GPU shows it deterministic and faster; not yet verified on a GPU. Either may be chosen on each resume: it does not change the model
    #[argh(option, default = "BiasGrad::Reduce")]
    bias_grad: BiasGrad,
}

/// The dataset directory for `genesis train --data`, resolved to an absolute path (so the run resumes
/// from any working directory), and the path as given for the log; with no --data, wikitext-103,
/// prepared first when absent.
pub(super) fn train_data(data: Option<&str>) -> Result<(PathBuf, String)> {
    let Some(data) = data else {
        let dir = manifest::data_root().join("wikitext-103");
        if !dir.join(manifest::MANIFEST_FILE).exists() {
            eprintln!("no --data given: training on wikitext-103, which is not prepared yet; preparing it first");
            super::prepare::run(super::prepare::PrepareCmd::named("wikitext-103"))?;
        }
        return Ok((absolute(&dir)?, dir.display().to_string()));
    };
    let dir = manifest::resolve(data);
    if data == genesis::data::datasets::SHAKESPEARE && !dir.join(manifest::MANIFEST_FILE).exists() {
        eprintln!("--data shakespeare is not prepared yet; preparing the built-in copy first (no network needed)");
        super::prepare::run(super::prepare::PrepareCmd::named(data))?;
    }
    manifest::Manifest::load(&dir)?;
    Ok((absolute(&dir)?, data.to_string()))
}

/// `dir` made absolute with symbolic links resolved.
fn absolute(dir: &Path) -> Result<PathBuf> {
    dir.canonicalize().with_context(|| format!("cannot resolve the dataset path {}", dir.display()))
}

/// Trains, and appends the error that ends `genesis train`, if one does, to `RUN/main.log` as well
/// (when this process holds the run directory).
pub fn run(c: TrainCmd) -> Result<()> {
    let choices = RunChoices {
        steps: c.steps,
        batch: c.batch,
        seq: c.seq,
        grad_accum: c.grad_accum,
        lr: c.lr,
        min_lr_frac: c.min_lr_frac,
        warmup: c.warmup,
        weight_decay: c.weight_decay,
        grad_clip: c.grad_clip,
        eval_every: c.eval_every,
        eval_batches: c.eval_batches,
        ckpt_every: c.ckpt_every,
        keep: c.keep,
        seed: c.seed,
        init_from: c.init_from.clone(),
    };
    choices.check()?;
    // Refused wherever it would run (before any data is prepared): the combination is never valid.
    c.attention.check(c.precision)?;
    if c.max_bad_steps == 0 {
        bail!("--max-bad-steps 0: expected at least 1 (the consecutive non-finite steps that stop the run)");
    }
    // The shape of --init-from's weights, when nothing names the model: the default run directory
    // is named after it. (Without --out; with --out it is loaded only when the run does not say.)
    let mut init = None;
    let out = match &c.out {
        Some(out) => out.clone(),
        None => {
            if let (Some(path), None) = (&c.init_from, &c.model) {
                let w = genesis::weights::load(path)?;
                super::sample::cfg_gpt2_vocab(&w)?;
                init = Some(w.config);
            }
            let out = default_run_dir(c.data.as_deref(), c.model.as_deref(), init.as_ref());
            eprintln!("no --out given: the run directory is {}", out.display());
            out
        }
    };
    // An existing run directory is locked at once, so a second process refuses before any work.
    let mut lock = if out.is_dir() { Some(DirLock::acquire(&out, "genesis train")?) } else { None };
    let result = run_locked(c, &out, init, choices, &mut lock);
    if let (Err(e), Some(_)) = (&result, &lock) {
        RunLog::open(&out, false).line(&format!("error: {e:#}"));
    }
    result
}

/// `runs/DATA-MODEL`, the run directory `genesis train` uses when no --out is given: the dataset's
/// name (wikitext-103 when no --data is given; for a directory, the name its manifest gives, else
/// the directory's) and the model's preset (tiny when none is given; for --init-from weights, the
/// preset of their shape, else LAYERSxWIDTH). The same command picks the same directory, so it
/// resumes the same way.
fn default_run_dir(data: Option<&str>, model: Option<&str>, init: Option<&ModelConfig>) -> PathBuf {
    let data = match data {
        None => "wikitext-103".to_string(),
        Some(d) if manifest::is_dataset_name(d) => d.to_string(),
        Some(d) => {
            let dir = Path::new(d);
            let named = manifest::Manifest::load(dir).ok().map(|m| m.name).filter(|n| manifest::is_dataset_name(n));
            let base = dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            named.or(base).unwrap_or_else(|| "data".to_string())
        }
    };
    let model = match (model, init) {
        (Some(m), _) => m.to_string(),
        (None, Some(cfg)) => genesis::model::PRESETS
            .iter()
            .map(|p| p.0)
            .find(|&name| ModelConfig::preset(name).as_ref() == Ok(cfg))
            .map_or_else(|| format!("{}x{}", cfg.num_layers, cfg.channels), str::to_string),
        (None, None) => "tiny".to_string(),
    };
    Path::new("runs").join(format!("{data}-{model}"))
}

fn run_locked(
    c: TrainCmd,
    out_dir: &Path,
    init: Option<ModelConfig>,
    mut choices: RunChoices,
    lock: &mut Option<DirLock>,
) -> Result<()> {
    let saved = if c.fresh { None } else { train::saved_run_config(out_dir) };
    if saved.is_none() && !c.fresh && (c.model.is_none() || c.data.is_none()) && rundir::holds_a_run(out_dir) {
        let (out, n) = (out_dir.display(), rundir::list_checkpoints(out_dir).len());
        let unreadable = format!("its settings cannot be read (no whole checkpoint, no readable {})", rundir::RUN_FILE);
        if n > 0 {
            bail!(
                "{out} holds a run, but {unreadable}, so resuming it could start a different run; start it over \
                 with --fresh and its --model and --data (its {n} damaged checkpoint(s) and other files move to \
                 {out}/previous-N/)"
            );
        }
        bail!(
            "{out} holds a run, but {unreadable}, so resuming it could start a different run; give its --model and \
             --data to train it again from step 0, or add --fresh to move its files to {out}/previous-N/ first"
        );
    }
    // The shape of --init-from's weights, only when nothing else names the model (train loads them again).
    let init = match (&c.init_from, &saved, &c.model, init) {
        (Some(_), None, None, Some(cfg)) => Some(cfg),
        (Some(path), None, None, None) => {
            let w = genesis::weights::load(path)?;
            super::sample::cfg_gpt2_vocab(&w)?;
            Some(w.config)
        }
        _ => None,
    };
    let model = match (&c.model, &saved, init) {
        (Some(name), _, _) => ModelConfig::preset(name).map_err(anyhow::Error::msg)?,
        (None, Some(s), _) => s.model,
        (None, None, Some(cfg)) => cfg,
        (None, None, None) => ModelConfig::preset("tiny").map_err(anyhow::Error::msg)?,
    };
    let (data, data_label) = match (&c.data, &saved) {
        // Old runs stored the path as given: relative to the working directory, as then.
        (None, Some(s)) => (s.data.canonicalize().unwrap_or_else(|_| s.data.clone()), s.data.display().to_string()),
        (data, _) => train_data(data.as_deref())?,
    };
    let device = genesis::gpu::select_device(c.device)?;
    let gpu = device.gpu;
    if gpu.is_some() {
        // Refused before the run directory is touched (the epilogues need an even width).
        c.gelu_fusion.check(model.channels)?;
    }
    let seq = c.seq.or(saved.as_ref().map(|s| s.seq)).unwrap_or(model.max_seq_len.min(1024));
    let (batch, grad_accum) = match c.tokens_per_step {
        Some(tps) if c.batch.is_some() || c.grad_accum.is_some() => {
            bail!("--tokens-per-step {tps} chooses --batch and --grad-accum; give one or the others")
        }
        Some(tps) => micro_batch_for(&model, seq, tps, gpu, c.precision, c.attention, c.kernels)?,
        None => (c.batch, c.grad_accum),
    };
    choices.seq = Some(seq);
    (choices.batch, choices.grad_accum) = (batch, grad_accum);
    let run = choices.resolve(model, data, saved.as_ref());
    if lock.is_none() {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create run directory {}", out_dir.display()))?;
        *lock = Some(DirLock::acquire(out_dir, "genesis train")?);
    }
    // The arguments are checked and the run directory is ours: say where it trains, once.
    device.note();
    if gpu.is_none() && c.precision == Precision::Bf16 {
        eprintln!("note: --precision bf16 applies to GPU training; the CPU trains in f32");
    }
    if gpu.is_none() && c.attention == Attention::Flash {
        eprintln!("note: --attention flash applies to GPU training; the CPU computes attention in full");
    }
    if gpu.is_none() && c.kernels == Kernels::Vector {
        eprintln!("note: --kernels vector applies to GPU training; the CPU has one implementation");
    }
    if gpu.is_none() && c.sync != StepSync::Micro {
        eprintln!("note: --sync {} applies to GPU training; the CPU has no device to wait for", c.sync);
    }
    if gpu.is_none() && c.gelu_fusion != GeluFusion::Off {
        eprintln!("note: --gelu-fusion {} applies to GPU training; the CPU has one GELU", c.gelu_fusion);
    }
    if gpu.is_none() && c.bias_grad != BiasGrad::Reduce {
        eprintln!("note: --bias-grad {} applies to GPU training; the CPU sums the bias gradients itself", c.bias_grad);
    }
    let mut opts = TrainOptions::new(run, out_dir.to_path_buf());
    opts.data_label = Some(data_label);
    opts.fresh = c.fresh;
    opts.verbose = true;
    opts.max_bad_steps = c.max_bad_steps;
    opts.stop = Some(stop_on_signals(out_dir)?);
    opts.gpu = gpu;
    opts.precision = c.precision;
    opts.attention = c.attention;
    opts.kernels = c.kernels;
    opts.sync = c.sync;
    opts.gelu_fusion = c.gelu_fusion;
    opts.bias_grad = c.bias_grad;
    let s = train(&opts)?;
    let mut out = std::io::stdout().lock();
    let resume = format!("genesis train --out {}", shell_path(out_dir));
    if let Some(sig) = &s.stopped_by {
        let _ = writeln!(
            out,
            "stopped by {sig} after step {}; {} holds it. Resume with: {resume}",
            s.step,
            s.checkpoint.display()
        );
        return Ok(());
    }
    if let (Some(first), Some(last)) = (s.val_losses.first(), s.val_losses.last()) {
        let _ = writeln!(
            out,
            "done: step {}, val loss {:.4} -> {:.4}, {:.0} tokens/s",
            s.step, first.1, last.1, s.tokens_per_sec
        );
    }
    if let Some((step, v)) = s.best {
        let _ =
            writeln!(out, "best val loss {v:.4} at step {step}: {}", train::checkpoint_path(out_dir, step).display());
    }
    match &s.recommended {
        Some(p) if *p != s.checkpoint => {
            let _ = writeln!(
                out,
                "the last checkpoint's validation loss is not finite (the run diverged); sample from the newest \
                 sound one: genesis sample --checkpoint {} --prompt \"...\"",
                shell_path(p)
            );
        }
        Some(p) => {
            let _ = writeln!(out, "sample from it: genesis sample --checkpoint {} --prompt \"...\"", shell_path(p));
        }
        None => {
            let _ = writeln!(
                out,
                "no checkpoint has a finite validation loss (the run diverged); start over with a lower --lr and --fresh"
            );
        }
    }
    Ok(())
}

/// (micro-batch, accumulation) reaching `tokens_per_step`: on the GPU the largest micro-batch the
/// memory plan fits in its free memory at `precision` with the attention and kernels modes, on the
/// CPU 8 sequences.
fn micro_batch_for(
    model: &ModelConfig,
    seq: usize,
    tokens_per_step: usize,
    gpu: Option<usize>,
    precision: Precision,
    attention: Attention,
    kernels: Kernels,
) -> Result<(Option<usize>, Option<usize>)> {
    let Some(ordinal) = gpu else {
        let batch = 8.min(tokens_per_step.div_ceil(seq));
        return Ok((Some(batch), Some(tokens_per_step.div_ceil(batch * seq))));
    };
    let (free, _) = genesis::gpu::device::Gpu::new(ordinal)?.memory()?;
    let p = genesis::gpu::plan::plan_with(
        model,
        seq,
        tokens_per_step,
        free as u64,
        precision == Precision::Bf16,
        attention,
        kernels,
    )?;
    eprintln!(
        "memory plan: micro-batch {} x seq {seq} x accum {} = {} tokens/step, {:.1} GB of the {:.1} GB free (genesis info shows the breakdown)",
        p.micro_batch,
        p.grad_accum,
        p.micro_batch * seq * p.grad_accum,
        p.total as f64 / 1e9,
        free as f64 / 1e9
    );
    Ok((Some(p.micro_batch), Some(p.grad_accum)))
}

/// SIGINT, SIGTERM and SIGHUP set the returned flag (to the signal number): training finishes its
/// step, checkpoints and returns. A second signal exits at once, saying on stderr that the step in
/// progress was not saved and where the run resumes.
fn stop_on_signals(out: &Path) -> Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = Arc::new(AtomicUsize::new(0));
    // Built here, once: the handler may only write these bytes, not format or allocate.
    let message: &'static [u8] = Box::leak(
        format!(
            "\nsecond signal: stopped at once; no checkpoint was written for the current step. The newest \
             checkpoint in {} (if any) is where it resumes: genesis train --out {}\n",
            out.display(),
            shell_path(out)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let flag = Arc::clone(&stop);
        let action = move || {
            if flag.swap(sig as usize, Ordering::SeqCst) != 0 {
                // SAFETY: write(2) of a static buffer is async-signal-safe; its result does not matter.
                unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
                signal_hook::low_level::exit(128 + sig);
            }
        };
        // SAFETY: the action only does an atomic swap, write(2) and _exit, all async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, action) }.context("cannot install signal handlers")?;
    }
    Ok(stop)
}
