//! The `genesis` command line: prepare data, train, sample, benchmark.

use anyhow::{bail, Context, Result};
use argh::FromArgs;
use genesis::cpu::sample::{sample_token, Decoder, SamplingParams};
use genesis::data::prepare::prepare_files;
use genesis::data::tokenizer::{StreamDecoder, Tokenizer};
use genesis::model::{ModelConfig, EOT_TOKEN, PRESETS};
use genesis::rng::Rng;
use genesis::train::{checkpoint, train, TrainOptions};
use std::io::Write;
use std::path::PathBuf;

/// Genesis trains GPT-2-class language models from scratch and samples from them.
#[derive(FromArgs)]
#[argh(
    example = "genesis prepare --input corpus.txt --out data/corpus\ngenesis train --model tiny --data data/corpus --out runs/first\ngenesis sample --checkpoint runs/first/step_00001000.ckpt --prompt \"Once upon\"",
    note = "Models (--model): tiny (tests), gpt2-124m, genesis-150m, gpt2-350m. Training runs on the CPU today; the CUDA engine is under construction. Every command has its own --help."
)]
struct Cli {
    /// worker threads for CPU work (default: all cores)
    #[argh(option)]
    threads: Option<usize>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Prepare(PrepareCmd),
    Train(TrainCmd),
    Sample(SampleCmd),
    Bench(BenchCmd),
}

/// Tokenize text files with the GPT-2 BPE into train and validation shards.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "prepare",
    example = "genesis prepare --input ../shared/data/tinyshakespeare.txt --out data/shakespeare",
    note = "Each input file is one document; documents are separated by the end-of-text token (50256). The last --val-fraction of the tokens become the validation split. Shards use llm.c's format (a 1024-byte header, then uint16 tokens), are named train_000000.bin, val_000000.bin, ..., and are written atomically (temporary file, fsync, rename)."
)]
struct PrepareCmd {
    /// a UTF-8 text file to tokenize (repeat for several)
    #[argh(option)]
    input: Vec<PathBuf>,
    /// directory to write the shards into (created if missing)
    #[argh(option)]
    out: PathBuf,
    /// fraction of the tokens held out for validation (default 0.1)
    #[argh(option, default = "0.1")]
    val_fraction: f64,
}

/// Train a model on prepared shards (on the CPU; the CUDA engine is not built yet).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "train",
    example = "genesis train --model tiny --data data/shakespeare --out runs/shakespeare --steps 600 --batch 16",
    note = "Prints one line per step (loss, learning rate, gradient norm, tokens/s) and the validation loss every --eval-every steps. Writes checkpoints to --out as step_NNNNNNNN.ckpt every --ckpt-every steps and at the end; each is written to a temporary file, fsynced, checksummed and renamed. AdamW (beta1 0.9, beta2 0.95, eps 1e-8) with weight decay on the 2-D weights only, linear warmup then cosine decay to --min-lr-frac of --lr."
)]
struct TrainCmd {
    /// model preset: tiny, gpt2-124m, genesis-150m, gpt2-350m (default tiny)
    #[argh(option, default = "String::from(\"tiny\")")]
    model: String,
    /// directory with train_*.bin and val_*.bin shards (from `genesis prepare`)
    #[argh(option)]
    data: PathBuf,
    /// run directory for checkpoints (created if missing)
    #[argh(option)]
    out: PathBuf,
    /// optimizer steps (default 1000)
    #[argh(option, default = "1000")]
    steps: u64,
    /// sequences per micro-batch (default 8)
    #[argh(option, default = "8")]
    batch: usize,
    /// tokens per sequence (default: the model's context, at most 1024)
    #[argh(option)]
    seq: Option<usize>,
    /// micro-batches accumulated per step (default 1)
    #[argh(option, default = "1")]
    grad_accum: usize,
    /// peak learning rate (default 6e-4)
    #[argh(option, default = "6e-4")]
    lr: f64,
    /// final learning rate as a fraction of the peak (default 0.1)
    #[argh(option, default = "0.1")]
    min_lr_frac: f64,
    /// linear warmup steps (default: 5% of --steps, at most 700)
    #[argh(option)]
    warmup: Option<u64>,
    /// weight decay of AdamW on the 2-D weights (default 0.1)
    #[argh(option, default = "0.1")]
    weight_decay: f32,
    /// clip the global gradient norm to this (0 = off; default 1.0)
    #[argh(option, default = "1.0")]
    grad_clip: f64,
    /// evaluate the validation loss every N steps (0 = only at the start and end; default 100)
    #[argh(option, default = "100")]
    eval_every: u64,
    /// validation batches per evaluation (default 20)
    #[argh(option, default = "20")]
    eval_batches: usize,
    /// write a checkpoint every N steps (0 = only at the end; default 0)
    #[argh(option, default = "0")]
    ckpt_every: u64,
    /// seed for initialisation and batch order (default 1337)
    #[argh(option, default = "1337")]
    seed: u64,
}

/// Generate text from a checkpoint on the CPU, streaming it as it is produced.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "sample",
    example = "genesis sample --checkpoint runs/shakespeare/step_00000600.ckpt --prompt \"ROMEO:\"",
    note = "Decoding uses a KV cache. Generation stops at the end-of-text token, after --max-tokens, or when the model's context is full. The same --seed gives the same text."
)]
struct SampleCmd {
    /// checkpoint file written by `genesis train`
    #[argh(option)]
    checkpoint: PathBuf,
    /// text to continue (default: start from end-of-text, i.e. a new document)
    #[argh(option, default = "String::new()")]
    prompt: String,
    /// most tokens to generate (default 256)
    #[argh(option, default = "256")]
    max_tokens: usize,
    /// softmax temperature; 0 = always the most likely token (default 0.8)
    #[argh(option, default = "0.8")]
    temperature: f32,
    /// sample among the k most likely tokens only; 0 = all (default 200)
    #[argh(option, default = "200")]
    top_k: usize,
    /// nucleus sampling: smallest set of tokens with this much probability (default 0.95)
    #[argh(option, default = "0.95")]
    top_p: f32,
    /// random seed (default 42)
    #[argh(option, default = "42")]
    seed: u64,
}

/// Measure speed: `genesis bench sample` or `genesis bench train`.
#[derive(FromArgs)]
#[argh(subcommand, name = "bench")]
struct BenchCmd {
    #[argh(subcommand)]
    what: BenchWhat,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum BenchWhat {
    Sample(BenchSample),
    Train(BenchTrain),
}

/// Tokens/s of KV-cache decoding on the CPU with random weights.
#[derive(FromArgs)]
#[argh(subcommand, name = "sample", example = "genesis bench sample --model gpt2-124m")]
struct BenchSample {
    /// model preset (default gpt2-124m)
    #[argh(option, default = "String::from(\"gpt2-124m\")")]
    model: String,
    /// tokens to decode (default 64)
    #[argh(option, default = "64")]
    tokens: usize,
}

/// Time full training steps (forward, backward, clipping, AdamW) on random tokens.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "train",
    example = "genesis bench train --device cpu --model gpt2-124m --batch 4 --seq 64",
    note = "Reports ms per step, tokens/s and achieved GFLOP/s (6N + 12LCT FLOPs per token)."
)]
struct BenchTrain {
    /// where to run: cpu (the only engine built so far)
    #[argh(option, default = "String::from(\"cpu\")")]
    device: String,
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
}

fn main() {
    let cli: Cli = argh::from_env();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global()?;
    }
    match cli.command {
        Command::Prepare(c) => prepare(c),
        Command::Train(c) => train_cmd(c),
        Command::Sample(c) => sample(c),
        Command::Bench(c) => match c.what {
            BenchWhat::Sample(b) => bench_sample(b),
            BenchWhat::Train(b) => bench_train(b),
        },
    }
}

fn preset(name: &str) -> Result<ModelConfig> {
    ModelConfig::preset(name).map_err(|e| {
        let list: Vec<String> = PRESETS.iter().map(|(n, d)| format!("  {n}: {d}")).collect();
        anyhow::anyhow!("{e}\n{}", list.join("\n"))
    })
}

fn prepare(c: PrepareCmd) -> Result<()> {
    if c.input.is_empty() {
        bail!("no input files; pass one or more --input FILE");
    }
    let s = prepare_files(&c.input, &c.out, c.val_fraction)?;
    println!(
        "prepared {} documents: {} train tokens, {} val tokens in {} shards under {}",
        s.documents,
        s.train_tokens,
        s.val_tokens,
        s.files.len(),
        c.out.display()
    );
    println!("next: genesis train --data {} --out runs/NAME", c.out.display());
    Ok(())
}

fn train_cmd(c: TrainCmd) -> Result<()> {
    let model = preset(&c.model)?;
    let seq = c.seq.unwrap_or(model.max_seq_len.min(1024));
    let opts = TrainOptions {
        model,
        data: c.data,
        out: c.out,
        steps: c.steps,
        batch: c.batch,
        seq,
        grad_accum: c.grad_accum,
        lr: c.lr,
        min_lr_frac: c.min_lr_frac,
        warmup: c.warmup.unwrap_or((c.steps / 20).min(700)),
        weight_decay: c.weight_decay,
        grad_clip: c.grad_clip,
        eval_every: c.eval_every,
        eval_batches: c.eval_batches,
        ckpt_every: c.ckpt_every,
        seed: c.seed,
        verbose: true,
    };
    let s = train(&opts)?;
    let (first, last) = (s.val_losses.first().unwrap().1, s.val_losses.last().unwrap().1);
    println!("done: val loss {first:.4} -> {last:.4}, {:.0} tokens/s", s.tokens_per_sec);
    println!("sample from it: genesis sample --checkpoint {} --prompt \"...\"", s.checkpoint.display());
    Ok(())
}

fn sample(c: SampleCmd) -> Result<()> {
    let ckpt = checkpoint::load(&c.checkpoint)?;
    let cfg = ckpt.config;
    let params = ckpt.into_params();
    let tok = Tokenizer::gpt2()?;
    let mut prompt = vec![EOT_TOKEN];
    prompt.extend(tok.encode(&c.prompt));
    if prompt.len() >= cfg.max_seq_len {
        bail!("the prompt is {} tokens but the model's context is {}; shorten it", prompt.len(), cfg.max_seq_len);
    }
    let params_s = SamplingParams { temperature: c.temperature, top_k: c.top_k, top_p: c.top_p };
    let mut rng = Rng::new(c.seed);
    let mut dec = Decoder::new(&cfg, &params);
    let mut stream = StreamDecoder::default();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", c.prompt)?;
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = dec.step(t).to_vec();
    }
    for _ in 0..c.max_tokens {
        let next = sample_token(&logits, &params_s, &mut rng);
        if next == EOT_TOKEN || dec.position() >= cfg.max_seq_len {
            break;
        }
        write!(out, "{}", stream.push(next))?;
        out.flush()?;
        logits = dec.step(next).to_vec();
    }
    writeln!(out, "{}", stream.finish()).context("writing to stdout")?;
    Ok(())
}

fn bench_sample(b: BenchSample) -> Result<()> {
    let cfg = preset(&b.model)?;
    let r = genesis::bench::bench_sample(&cfg, b.tokens);
    println!(
        "bench sample {}: {} tokens in {:.2} s = {:.1} tokens/s ({:.1} GB/s of weights, {} threads)",
        b.model,
        r.tokens,
        r.seconds,
        r.tokens_per_sec,
        r.weight_gb_per_sec,
        rayon::current_num_threads()
    );
    Ok(())
}

fn bench_train(b: BenchTrain) -> Result<()> {
    if b.device != "cpu" {
        bail!("--device {}: only the CPU engine exists so far; use --device cpu", b.device);
    }
    let cfg = preset(&b.model)?;
    if b.seq == 0 || b.seq > cfg.max_seq_len || b.batch == 0 || b.steps == 0 {
        bail!("need 1 <= --seq <= {} and --batch, --steps >= 1", cfg.max_seq_len);
    }
    let r = genesis::bench::bench_train_cpu(&cfg, b.batch, b.seq, b.steps);
    let mean = r.step_ms.iter().sum::<f64>() / r.step_ms.len() as f64;
    let steps: Vec<String> = r.step_ms.iter().map(|m| format!("{m:.0}")).collect();
    println!(
        "bench train cpu {} batch {} seq {}: {:.0} ms/step (steps: {} ms; forward {:.0}, backward {:.0}, optimizer {:.0}), {:.0} tokens/s, {:.1} GFLOP/s, {} threads",
        b.model,
        b.batch,
        b.seq,
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
