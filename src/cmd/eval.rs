//! `genesis eval`: held-out loss, perplexity, bits per byte, wikitext word-level perplexity and
//! HellaSwag accuracy of a model file, comparable with published numbers. The work is done by
//! [`genesis::eval`].

use std::path::PathBuf;

use super::outln;
use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::data::manifest::{self, Manifest, Split};
use genesis::eval::{self, EvalOptions, EvalReport, HellaSwagOptions, HellaSwagReport};
use genesis::gpu::engine::gpu_engine;
use genesis::gpu::{Device, Precision, StepSync};
use genesis::weights::{self, Weights};
use serde_json::json;

/// Evaluate a model: loss, perplexity and bits per byte on a prepared dataset split, word-level
/// perplexity on wikitext, HellaSwag accuracy.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "eval",
    example = "genesis eval --checkpoint runs/first/step_00001000.ckpt --data wikitext-103 --split test\ngenesis eval --checkpoint gpt2_124M.bin --data wikitext-103 --split test --max-tokens 100000\ngenesis eval --checkpoint runs/first/step_00001000.ckpt --hellaswag hellaswag_val.jsonl --hellaswag-limit 500\ngenesis eval --checkpoint export/ --data shakespeare --json",
    note = "The --checkpoint FILE is a Genesis checkpoint (*.ckpt), a `genesis export` directory or Hugging Face GPT-2 model.safetensors, or an llm.c model file (gpt2_124M.bin). --data is a dataset prepared by `genesis prepare` (a name in data/ or a directory); give --data, --hellaswag or both.\n\nDataset: the split's shards are read in order as one token stream and cut into non-overlapping windows of --seq tokens (default: the model's context, at most 1024); each window predicts its next --seq tokens, so every token after the first is scored once. Only full windows count (at most --max-tokens / --seq of them).\n  loss: mean cross-entropy in nats per GPT-2 BPE token; ppl: exp(loss), perplexity per token.\n  bpb: bits per byte = total nats / ln 2 / UTF-8 bytes of the scored tokens' text (end-of-text counts 0 bytes); comparable across tokenizers.\n  word ppl (wikitext datasets only): exp(total nats / words), words being the whitespace-separated words of the scored text; lm-evaluation-harness's word_perplexity convention (the GPT-2 paper reports 37.50 for GPT-2 124M zero-shot on wikitext-103). Non-overlapping windows give early tokens little context, so these read somewhat higher than the sliding-window numbers papers report; the raw wikitext text is scored as prepared, without detokenisation.\n\nHellaSwag (--hellaswag, the official hellaswag_val.jsonl: ctx or ctx_a/ctx_b, endings, label per line): completion style, each ending scored on its own tokens after encode(ctx) ++ encode(\" \" + ending), left-truncated to the model's context. acc: the ending with the lowest summed loss is right; acc_norm: the lowest mean loss per ending token (as llm.c and nanoGPT do). GPT-2 124M: acc_norm about 0.295 on the 10,042 validation items.\n\nAn untrained model reads a loss near ln(50257) = 10.8 and HellaSwag near 0.25 (chance). Progress goes to stderr every 10 s on long runs; --json prints one JSON object on stdout instead of the text lines."
)]
pub struct EvalCmd {
    /// model file: a checkpoint, export directory, model.safetensors or llm.c .bin
    #[argh(option)]
    checkpoint: PathBuf,
    /// prepared dataset: a name in data/ or a directory
    #[argh(option)]
    data: Option<String>,
    /// split to evaluate: val or test (default val)
    #[argh(option, default = "String::from(\"val\")")]
    split: String,
    /// window length in tokens (default: the model's context, at most 1024)
    #[argh(option)]
    seq: Option<usize>,
    /// windows per forward pass (default: as many as fit in 2 GiB of activations, at most 8)
    #[argh(option)]
    batch: Option<usize>,
    /// evaluate at most this many tokens (whole windows; default all)
    #[argh(option)]
    max_tokens: Option<u64>,
    /// the HellaSwag validation jsonl to score
    #[argh(option)]
    hellaswag: Option<PathBuf>,
    /// score only the first N HellaSwag items
    #[argh(option)]
    hellaswag_limit: Option<usize>,
    /// print one JSON object instead of text
    #[argh(switch)]
    json: bool,
    /// where to run: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "Device::Auto")]
    device: Device,
    /// on the GPU, let fp32 matmuls use TF32 tensor cores (faster; about 1e-3 relative)
    #[argh(switch)]
    tf32: bool,
    /// on the GPU: fp32 or bf16 (default auto: bf16)
    #[argh(option, default = "Precision::Bf16")]
    precision: Precision,
}

pub fn run(c: EvalCmd) -> Result<()> {
    if c.data.is_none() && c.hellaswag.is_none() {
        bail!("nothing to evaluate: give --data NAME (a prepared dataset), --hellaswag FILE, or both");
    }
    let split = parse_split(&c.split)?;
    // Check the inputs before loading the model, which can take a while.
    let data_dir = c.data.as_deref().map(manifest::resolve);
    if let Some(dir) = &data_dir {
        Manifest::load(dir)?.shard_paths(dir, split)?;
    }
    if let Some(h) = &c.hellaswag {
        if !h.is_file() {
            bail!("HellaSwag file {} does not exist; give the official hellaswag_val.jsonl", h.display());
        }
    }
    let device = genesis::gpu::select_device(c.device)?;
    let w = weights::load(&c.checkpoint)?;
    super::sample::cfg_gpt2_vocab(&w)?;
    // The arguments and the model file are sound: say where it runs, once.
    device.note();
    let mut scorer: Box<dyn eval::Scorer + '_> = match device.gpu {
        Some(ordinal) => Box::new(gpu_engine(&w.config, &w.params, ordinal, c.precision, c.tf32, StepSync::Micro)?),
        None => Box::new(eval::CpuScorer::new(&w.config, &w.params)?),
    };
    let scorer = scorer.as_mut();
    let progress = true; // stderr, every 10 s: harmless beside --json on stdout
    let data = match &data_dir {
        Some(dir) => {
            let opts = EvalOptions { split, seq: c.seq, batch: c.batch, max_tokens: c.max_tokens, progress };
            Some(eval::evaluate_split_with(scorer, dir, &opts)?)
        }
        None => None,
    };
    let hellaswag = match &c.hellaswag {
        Some(path) => {
            let opts = HellaSwagOptions { limit: c.hellaswag_limit, progress };
            Some(eval::evaluate_hellaswag_with(scorer, path, &opts)?)
        }
        None => None,
    };
    if c.json {
        let out = json!({
            "checkpoint": w.path,
            "format": w.format.to_string(),
            "step": w.step,
            "config": w.config,
            "data": data,
            "hellaswag": hellaswag,
        });
        outln!("{out}");
    } else {
        print_text(&w, data.as_ref(), hellaswag.as_ref())?;
    }
    Ok(())
}

fn parse_split(s: &str) -> Result<Split> {
    match s {
        "val" => Ok(Split::Val),
        "test" => Ok(Split::Test),
        "train" => bail!("--split train is not evaluated (it is what the model learned from); use val or test"),
        _ => bail!("unknown split '{s}'; use val or test"),
    }
}

/// The human report: one aligned line per number.
fn print_text(w: &Weights, data: Option<&EvalReport>, hellaswag: Option<&HellaSwagReport>) -> Result<()> {
    let step = w.step.map(|s| format!(", step {s}")).unwrap_or_default();
    outln!("{:<10} {} ({}{step})", "model", w.path.display(), w.format);
    outln!("{:<10} {}", "", w.config);
    if let Some(r) = data {
        outln!(
            "{:<10} {} {}: {} tokens in {} windows of {} (batch {}), {} ({:.0} tokens/s)",
            "data",
            r.dataset,
            r.split,
            r.tokens,
            r.windows,
            r.seq,
            r.batch,
            genesis::util::duration(r.seconds),
            r.tokens as f64 / r.seconds.max(1e-9)
        );
        outln!("{:<10} {:.4} nats per token", "loss", r.loss);
        outln!("{:<10} {:.3} per token", "ppl", r.perplexity);
        outln!("{:<10} {:.4} bits per byte ({} bytes)", "bpb", r.bits_per_byte, r.bytes);
        if let (Some(words), Some(ppl)) = (r.words, r.word_perplexity) {
            outln!("{:<10} {ppl:.3} per word ({words} words, lm-evaluation-harness convention)", "word ppl");
        }
    }
    if let Some(h) = hellaswag {
        outln!(
            "{:<10} acc {:.4} ({}/{}), acc_norm {:.4} ({}/{}), {}",
            "hellaswag",
            h.acc,
            h.correct,
            h.items,
            h.acc_norm,
            h.correct_norm,
            h.items,
            genesis::util::duration(h.seconds)
        );
    }
    Ok(())
}
