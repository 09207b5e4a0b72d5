//! The `genesis` command line: prepare data, train, sample, benchmark.

mod cmd;

use anyhow::{bail, Context, Result};
use argh::FromArgs;
use genesis::cpu::sample::{sample_token, Decoder, SamplingParams};
use genesis::data::datasets;
use genesis::data::download::DownloadOptions;
use genesis::data::manifest::{self, Split};
use genesis::data::prepare::{prepare, Input, PrepareConfig};
use genesis::data::shard::Shard;
use genesis::data::source::{expand_inputs, Docs, SourceOptions};
use genesis::data::tokenizer::{StreamDecoder, Tokenizer};
use genesis::gpu::gpt::GpuModel;
use genesis::gpu::sample::GpuDecoder;
use genesis::gpu::Precision;
use genesis::model::{ModelConfig, EOT_TOKEN, PRESETS};
use genesis::rng::Rng;
use genesis::train::{self, train, RunConfig, TrainOptions};
use genesis::util::sha256_file;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Genesis trains GPT-2-class language models from scratch and samples from them.
#[derive(FromArgs)]
#[argh(
    example = "genesis prepare wikitext-103\ngenesis prepare --input corpus.txt --name corpus\ngenesis train --model tiny --data corpus --out runs/first\ngenesis sample --checkpoint runs/first/step_00001000.ckpt --prompt \"Once upon\"",
    note = "Models (--model): tiny (tests), gpt2-124m, genesis-150m, gpt2-350m. Training, eval, sample and bench forward run on the GPU when one works (--device); bf16 training is still to come (GPU training is fp32 with TF32 matmuls). Every command has its own --help.\n\nThe path: genesis doctor (is this machine ready?), genesis prepare, genesis train (resumes by itself; plot RUN draws its loss), genesis eval, genesis export (a Hugging Face GPT-2 directory to take home), genesis verify (after the download), genesis sample."
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
    Data(DataCmd),
    Train(TrainCmd),
    Sample(SampleCmd),
    Eval(cmd::eval::EvalCmd),
    Plot(cmd::plot::PlotCmd),
    Export(cmd::export::ExportCmd),
    Import(cmd::import::ImportCmd),
    Verify(cmd::verify::VerifyCmd),
    Doctor(cmd::doctor::DoctorCmd),
    Info(cmd::info::InfoCmd),
    Bench(BenchCmd),
}

/// Turn a corpus into GPT-2 token shards that `genesis train` finds by name.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "prepare",
    example = "genesis prepare wikitext-103\ngenesis prepare wikitext-103 --from ~/Downloads/wikitext\ngenesis prepare --input ../shared/data/tinyshakespeare.txt --name shakespeare --docs paragraphs\ngenesis prepare --input 'corpus/*.jsonl' --field content --name mycorpus",
    note = "DATASET is wikitext-103 or wikitext-2: the raw Salesforce/wikitext parquet files are downloaded from Hugging Face at a pinned revision (resumable, retried, each file checked against its pinned sha256) into data/NAME/raw/, and wikitext's train/validation/test splits become the train/val/test shards, one document per article. Set HF_ENDPOINT to use a mirror; without network use --from DIR with the parquet files fetched elsewhere.\n\nWith --input, inputs are .txt/.text/.raw/.md (UTF-8; CRLF becomes LF), .jsonl/.ndjson (the --field string of each line) and .parquet (the --field column of each row) files, directories (searched recursively) and quoted globs. --docs says what a document is: whole (a text file, a jsonl line or a parquet row; the default), paragraphs (blank-line-separated blocks of a text file) or wikitext (articles under ` = Title = ` headings). Every --val-fraction-th document, evenly spread, is held out as the val split.\n\nOutput goes to data/NAME/ (--out to override; $GENESIS_DATA_DIR moves data/): train_000000.bin, val_000000.bin, ... in llm.c's shard format (a 1024-byte header, then uint16 tokens; 100M tokens per shard) and manifest.json (tokenizer, tokens per split and shard, sources with size and sha256), written last. Each document starts with the end-of-text token 50256. Encoding runs on all cores with bounded memory and gives the same bytes whatever the thread count.\n\nSafe to interrupt: shards are written under temporary names, fsynced and renamed, and a journal records progress after every batch; running the same command again finishes the work (byte-identical to an uninterrupted run), and running it after success does nothing. A directory without manifest.json is never used for training."
)]
struct PrepareCmd {
    /// a dataset to download and prepare: wikitext-103 or wikitext-2
    #[argh(positional)]
    dataset: Option<String>,
    /// a file, directory or glob to prepare (repeat for several)
    #[argh(option)]
    input: Vec<String>,
    /// the dataset's name: it goes to data/NAME and trains with --data NAME (default: the first input's file name)
    #[argh(option)]
    name: Option<String>,
    /// output directory (default data/NAME)
    #[argh(option)]
    out: Option<PathBuf>,
    /// what a document is: whole, paragraphs or wikitext (default whole)
    #[argh(option, default = "String::from(\"whole\")")]
    docs: String,
    /// the jsonl field or parquet column holding the text (default text)
    #[argh(option, default = "String::from(\"text\")")]
    field: String,
    /// share of documents held out for validation (default 0.1)
    #[argh(option, default = "0.1")]
    val_fraction: f64,
    /// tokens per shard (default 100000000)
    #[argh(option, default = "100_000_000")]
    shard_tokens: usize,
    /// for a DATASET: a directory holding its parquet files, instead of downloading
    #[argh(option)]
    from: Option<PathBuf>,
    /// replace a dataset already prepared in the output directory from other inputs or settings
    #[argh(switch)]
    force: bool,
}

/// Look inside prepared datasets.
#[derive(FromArgs)]
#[argh(subcommand, name = "data")]
struct DataCmd {
    #[argh(subcommand)]
    what: DataWhat,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum DataWhat {
    Inspect(DataInspect),
}

/// Print a dataset's manifest summary and decode a random window of its tokens.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "inspect",
    example = "genesis data inspect wikitext-103\ngenesis data inspect data/shakespeare --split val --tokens 200",
    note = "The end-of-text token between documents is shown as <|endoftext|>. Checks the split's shards against the manifest (sizes, headers, token range) first, and with --verify every shard's sha256, so a damaged dataset is reported here rather than in training."
)]
struct DataInspect {
    /// dataset name (looked up in data/) or directory
    #[argh(positional)]
    dataset: String,
    /// split to show: train, val or test (default train)
    #[argh(option, default = "String::from(\"train\")")]
    split: String,
    /// tokens to decode (default 128)
    #[argh(option, default = "128")]
    tokens: usize,
    /// seed choosing the window (default: a different one every run)
    #[argh(option)]
    seed: Option<u64>,
    /// also check every shard of every split against the sha256 in the manifest
    #[argh(switch)]
    verify: bool,
}

/// Train a model on prepared shards, on the GPU when one works (else the CPU). Resumes by itself.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "train",
    example = "genesis train --model tiny --data shakespeare --out runs/shakespeare --steps 600 --batch 16\ngenesis train --out runs/shakespeare                 # resume it where it stopped\ngenesis train --out runs/shakespeare --steps 1200    # resume and train longer\ngenesis train --model gpt2-124m --out runs/gpt2      # wikitext-103, prepared first if absent\ngenesis train --out runs/ft --init-from gpt2/model.safetensors --data shakespeare --lr 1e-4",
    note = "RUN DIRECTORY (--out): step_NNNNNNNN.ckpt full checkpoints (weights, AdamW moments, step, data position, settings), metrics.jsonl (one JSON record per step and evaluation; genesis plot RUN draws it) and main.log (a copy of everything printed). Checkpoints are written every --ckpt-every steps, at the end, and when stopped by a signal; each goes to a temporary file, is fsynced, checksummed per section and renamed, so a kill at any moment leaves the previous checkpoint whole. The newest --keep checkpoints and the one with the best validation loss are kept.\n\nRESUME: run the same command again, or just genesis train --out RUN: training continues from the newest whole checkpoint (a damaged one is reported, renamed *.corrupt and the previous one used) and gives bit-for-bit the losses of a run that never stopped. Options not given are taken from the run; --steps, --lr and the other schedule and evaluation settings may change (each change is logged); --model and --seq may not. --fresh starts over, moving the earlier run into RUN/previous-N/.\n\nSTOPPING: Ctrl-C, SIGTERM or SIGHUP (a dropped ssh session) finish the current step, write a checkpoint and exit 0 with the command that resumes; a second Ctrl-C exits at once. A step whose loss or gradient norm is NaN or infinite is skipped (not applied, never saved) and logged; --max-bad-steps in a row stop the run and name the last good checkpoint.\n\nEach step prints loss, learning rate, gradient norm, tokens/s, time per step, elapsed time and ETA; the validation loss is printed every --eval-every steps and at each checkpoint. AdamW (beta1 0.9, beta2 0.95, eps 1e-8) with weight decay on the 2-D weights only, linear warmup then cosine decay to --min-lr-frac of --lr."
)]
struct TrainCmd {
    /// model preset: tiny, gpt2-124m, genesis-150m, gpt2-350m (default tiny, or the run's when resuming, or --init-from's shape)
    #[argh(option)]
    model: Option<String>,
    /// prepared dataset: a name in data/ or a directory (default wikitext-103, downloaded and prepared first if absent)
    #[argh(option)]
    data: Option<String>,
    /// run directory: checkpoints, metrics.jsonl, main.log (created if missing; resumed if it holds checkpoints)
    #[argh(option)]
    out: PathBuf,
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
    #[argh(option, default = "String::from(\"auto\")")]
    device: String,
    /// on the GPU: fp32 (TF32 matmuls; the default) or bf16 (mixed precision: bf16 activations and matmuls, f32 gradients, AdamW moments and master weights, stochastic rounding); checkpoints hold f32 weights either way
    #[argh(option, default = "String::from(\"fp32\")")]
    precision: String,
}

/// Generate text from a checkpoint or an exported model on the CPU, streaming it as it is produced.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "sample",
    example = "genesis sample --checkpoint runs/shakespeare/step_00000600.ckpt --prompt \"ROMEO:\"",
    note = "Decoding uses a KV cache. Generation stops at the end-of-text token, after --max-tokens, or when the model's context is full. The same --seed gives the same text."
)]
struct SampleCmd {
    /// model to sample from: a checkpoint (*.ckpt), an export directory (genesis export), a Hugging Face GPT-2 model.safetensors or an llm.c .bin
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
    /// where to run: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    device: String,
    /// on the GPU: fp32 or bf16 (default auto: bf16)
    #[argh(option, default = "String::from(\"auto\")")]
    precision: String,
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
struct BenchForward {
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
    #[argh(option, default = "String::from(\"auto\")")]
    precision: String,
}

/// MB/s of `genesis prepare` on all cores against single-thread tiktoken-rs.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "prepare",
    example = "genesis bench prepare\ngenesis bench prepare --input ../shared/data/wikitext-test.raw --repeat 40",
    note = "Builds a corpus of --repeat copies of the input in a temporary directory, prepares it with the full pipeline (reading, wikitext article splitting, parallel encoding, shard writing with fsync) and reports MB of text per second, then encodes the same text with tiktoken-rs on one thread for comparison."
)]
struct BenchPrepare {
    /// text file to encode (default ../shared/data/wikitext-test.raw)
    #[argh(option, default = "PathBuf::from(\"../shared/data/wikitext-test.raw\")")]
    input: PathBuf,
    /// copies of the input in the corpus (default 20)
    #[argh(option, default = "20")]
    repeat: usize,
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
    note = "Reports ms per step, tokens/s and achieved GFLOP/s (6N + 12LCT FLOPs per token). On a GPU (--device auto or cuda): full steps in fp32 with TF32 matmuls or, with --precision bf16, in bf16 mixed precision; MFU against the GPU's bf16 peak and the device memory the run holds. The PyTorch reference: python3 ../shared/bench/torch_reference.py train [--compile]."
)]
struct BenchTrain {
    /// where to run: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
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
    /// on the GPU: fp32 (TF32 matmuls; default) or bf16 (mixed precision, as train --precision bf16)
    #[argh(option, default = "String::from(\"fp32\")")]
    precision: String,
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
        Command::Prepare(c) => prepare_cmd(c),
        Command::Data(c) => match c.what {
            DataWhat::Inspect(i) => data_inspect(i),
        },
        Command::Train(c) => train_cmd(c),
        Command::Sample(c) => sample(c),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Plot(c) => cmd::plot::run(c),
        Command::Export(c) => cmd::export::run(c),
        Command::Import(c) => cmd::import::run(c),
        Command::Verify(c) => cmd::verify::run(c),
        Command::Doctor(c) => cmd::doctor::run(c),
        Command::Info(c) => cmd::info::run(c),
        Command::Bench(c) => match c.what {
            BenchWhat::Forward(b) => bench_forward(b),
            BenchWhat::Prepare(b) => bench_prepare(b),
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

fn prepare_cmd(c: PrepareCmd) -> Result<()> {
    let docs = match c.docs.as_str() {
        "whole" => Docs::Whole,
        "paragraphs" => Docs::Paragraphs,
        "wikitext" => Docs::Wikitext,
        other => bail!("--docs {other}: expected whole, paragraphs or wikitext"),
    };
    let report = match (&c.dataset, c.input.is_empty()) {
        (Some(name), true) => {
            let Some(ds) = datasets::named(name) else {
                bail!(
                    "unknown dataset {name:?}; the built-in ones are {}. To prepare your own files use --input PATH",
                    manifest::NAMES.join(", ")
                );
            };
            if c.name.is_some() {
                bail!("--name is for --input; a built-in dataset is called by its own name (use --out to put it elsewhere)");
            }
            let out = c.out.clone().unwrap_or_else(|| manifest::data_root().join(name));
            let mut cfg = PrepareConfig::new(name);
            cfg.shard_tokens = c.shard_tokens;
            cfg.force = c.force;
            eprintln!("prepare {name}: about {} MB from {}", ds.download_mb, datasets::hf_endpoint());
            let r = ds.prepare(&out, &datasets::hf_endpoint(), c.from.as_deref(), cfg, &DownloadOptions::default())?;
            (r, out, name.clone())
        }
        (Some(_), false) => bail!("give either a dataset name or --input PATH, not both"),
        (None, true) => bail!(
            "nothing to prepare: name a dataset ({}) or pass --input PATH (see genesis prepare --help)",
            manifest::NAMES.join(", ")
        ),
        (None, false) => {
            let files = expand_inputs(&c.input)?;
            let name = match &c.name {
                Some(n) => n.clone(),
                None => files[0].path.file_stem().and_then(|s| s.to_str()).unwrap_or("corpus").to_string(),
            };
            if !manifest::is_dataset_name(&name) {
                bail!(
                    "--name {name:?} must be a plain name (no '/', not starting with '.'); use --out for a directory"
                );
            }
            let out = c.out.clone().unwrap_or_else(|| manifest::data_root().join(&name));
            let mut cfg = PrepareConfig::new(&name);
            cfg.source = SourceOptions { field: c.field.clone(), docs };
            cfg.val_fraction = c.val_fraction;
            cfg.shard_tokens = c.shard_tokens;
            cfg.force = c.force;
            let inputs: Vec<Input> = files.into_iter().map(Input::local).collect();
            (prepare(&inputs, &out, &cfg)?, out, name)
        }
    };
    let (r, out, name) = report;
    let m = &r.manifest;
    if r.already_done {
        println!("{} already holds {name}, prepared from the same inputs; nothing to do", out.display());
    } else {
        println!(
            "prepared {name}{}: {:.1} MB of text in {:.1} s ({:.1} MB/s, {} threads)",
            if r.resumed { " (resumed)" } else { "" },
            r.text_bytes as f64 / 1e6,
            r.seconds,
            r.text_bytes as f64 / 1e6 / r.seconds.max(1e-9),
            rayon::current_num_threads()
        );
    }
    print_splits(m);
    let data_arg = if out == manifest::data_root().join(&name) { name } else { out.display().to_string() };
    println!("next: genesis train --data {data_arg}");
    Ok(())
}

/// One line per split: tokens, documents, shards.
fn print_splits(m: &manifest::Manifest) {
    for (split, s) in &m.splits {
        println!("  {split:<5} {:>12} tokens  {:>9} documents  {} shard(s)", s.tokens, s.documents, s.shards.len());
    }
}

/// The dataset directory for `genesis train --data`; with no --data, wikitext-103, prepared first
/// when absent.
fn train_data(data: Option<&str>) -> Result<PathBuf> {
    let Some(data) = data else {
        let dir = manifest::data_root().join("wikitext-103");
        if !dir.join(manifest::MANIFEST_FILE).exists() {
            eprintln!("no --data given: training on wikitext-103, which is not prepared yet; preparing it first");
            prepare_cmd(PrepareCmd {
                dataset: Some("wikitext-103".into()),
                input: Vec::new(),
                name: None,
                out: None,
                docs: "whole".into(),
                field: "text".into(),
                val_fraction: 0.0,
                shard_tokens: genesis::data::prepare::SHARD_TOKENS,
                from: None,
                force: false,
            })?;
        }
        return Ok(dir);
    };
    let dir = manifest::resolve(data);
    manifest::Manifest::load(&dir)?;
    Ok(dir)
}

fn data_inspect(c: DataInspect) -> Result<()> {
    let split = match c.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        other => bail!("--split {other}: expected train, val or test"),
    };
    let dir = manifest::resolve(&c.dataset);
    let m = manifest::Manifest::load(&dir)?;
    println!("dataset {} in {}", m.name, dir.display());
    if let Some(origin) = &m.origin {
        println!("  origin     {origin}");
    }
    println!(
        "  tokenizer  {} (vocab {}, end-of-text {})",
        m.tokenizer.name, m.tokenizer.vocab_size, m.tokenizer.eot_token
    );
    println!(
        "  prepared   by Genesis {} with docs={:?} field={} val-fraction={} shard-tokens={}",
        m.genesis_version, m.settings.docs, m.settings.field, m.settings.val_fraction, m.settings.shard_tokens
    );
    println!("  sources    {} file(s), {:.1} MB", m.sources.len(), m.source_bytes() as f64 / 1e6);
    for s in m.sources.iter().take(8) {
        println!("    {} ({} bytes, sha256 {}…)", s.path, s.bytes, &s.sha256[..s.sha256.len().min(16)]);
    }
    if m.sources.len() > 8 {
        println!("    … and {} more", m.sources.len() - 8);
    }
    print_splits(&m);
    if c.verify {
        for (name, s) in &m.splits {
            for shard in &s.shards {
                let actual = sha256_file(&dir.join(&shard.file))?;
                if actual != shard.sha256 {
                    bail!(
                        "{}: sha256 {actual}, but the manifest records {}; the {name} split is damaged: prepare the dataset again with --force",
                        dir.join(&shard.file).display(),
                        shard.sha256
                    );
                }
            }
        }
        println!("  verified   every shard's sha256 matches the manifest");
    }
    let paths = m.shard_paths(&dir, split)?;
    let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;
    let total: usize = shards.iter().map(Shard::len).sum();
    let seed = c.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    // A uniformly random token of the split, then its shard.
    let mut at = rng.below(total as u64) as usize;
    let mut k = 0;
    while at >= shards[k].len() {
        at -= shards[k].len();
        k += 1;
    }
    let shard = &shards[k];
    let start = at.min(shard.len().saturating_sub(c.tokens));
    let window: Vec<u32> =
        shard.tokens()[start..(start + c.tokens).min(shard.len())].iter().map(|&t| t as u32).collect();
    let tok = Tokenizer::gpt2()?;
    let name = shard.path().file_name().and_then(|n| n.to_str()).unwrap_or("?");
    println!("\n{} tokens of {split} from {name} at token {start} (--seed {seed}):\n", window.len());
    // The end-of-text token decodes as "<|endoftext|>".
    println!("{}", tok.decode(&window));
    Ok(())
}

fn bench_prepare(b: BenchPrepare) -> Result<()> {
    let r = genesis::bench::bench_prepare(&b.input, b.repeat)?;
    println!(
        "bench prepare: {:.1} MB of text, pipeline {:.2} MB/s on {} threads, tiktoken-rs single thread {:.2} MB/s ({:.2}x)",
        r.bytes as f64 / 1e6,
        r.pipeline_mb_per_sec,
        r.threads,
        r.single_thread_mb_per_sec,
        r.pipeline_mb_per_sec / r.single_thread_mb_per_sec
    );
    Ok(())
}

fn train_cmd(c: TrainCmd) -> Result<()> {
    let saved = if c.fresh { None } else { train::saved_run_config(&c.out) };
    // The shape of --init-from's weights, only when nothing else names the model (train loads them again).
    let init = match (&c.init_from, &saved, &c.model) {
        (Some(path), None, None) => Some(genesis::weights::load(path)?.config),
        _ => None,
    };
    let model = match (&c.model, &saved, init) {
        (Some(name), _, _) => preset(name)?,
        (None, Some(s), _) => s.model,
        (None, None, Some(cfg)) => cfg,
        (None, None, None) => preset("tiny")?,
    };
    let data = match (&c.data, &saved) {
        (None, Some(s)) => s.data.clone(),
        (data, _) => train_data(data.as_deref())?,
    };
    let gpu = genesis::gpu::select_device(&c.device)?;
    let precision = Precision::parse(&c.precision)?;
    if gpu.is_none() && precision == Precision::Bf16 {
        eprintln!("note: --precision bf16 applies to GPU training; the CPU trains in f32");
    }
    let seq = c.seq.or(saved.as_ref().map(|s| s.seq)).unwrap_or(model.max_seq_len.min(1024));
    let (batch, grad_accum) = match c.tokens_per_step {
        Some(tps) if c.batch.is_some() || c.grad_accum.is_some() => {
            bail!("--tokens-per-step {tps} chooses --batch and --grad-accum; give one or the others")
        }
        Some(tps) => micro_batch_for(&model, seq, tps, gpu, precision)?,
        None => (c.batch, c.grad_accum),
    };
    let steps = c.steps.or(saved.as_ref().map(|s| s.steps)).unwrap_or(1000);
    let pick = |mine: Option<f64>, theirs: Option<f64>, default: f64| mine.or(theirs).unwrap_or(default);
    let s = saved.as_ref();
    let run = RunConfig {
        model,
        data,
        steps,
        batch: batch.or(s.map(|s| s.batch)).unwrap_or(8),
        seq,
        grad_accum: grad_accum.or(s.map(|s| s.grad_accum)).unwrap_or(1),
        lr: pick(c.lr, s.map(|s| s.lr), 6e-4),
        min_lr_frac: pick(c.min_lr_frac, s.map(|s| s.min_lr_frac), 0.1),
        warmup: c.warmup.or(s.map(|s| s.warmup)).unwrap_or((steps / 20).min(700)),
        weight_decay: c.weight_decay.or(s.map(|s| s.weight_decay)).unwrap_or(0.1),
        grad_clip: pick(c.grad_clip, s.map(|s| s.grad_clip), 1.0),
        eval_every: c.eval_every.or(s.map(|s| s.eval_every)).unwrap_or(100),
        eval_batches: c.eval_batches.or(s.map(|s| s.eval_batches)).unwrap_or(20),
        ckpt_every: c.ckpt_every.or(s.map(|s| s.ckpt_every)).unwrap_or(250),
        keep: c.keep.or(s.map(|s| s.keep)).unwrap_or(3),
        seed: c.seed.or(s.map(|s| s.seed)).unwrap_or(1337),
        init_from: c.init_from.clone().or(s.and_then(|s| s.init_from.clone())),
    };
    let mut opts = TrainOptions::new(run, c.out.clone());
    opts.fresh = c.fresh;
    opts.verbose = true;
    opts.max_bad_steps = c.max_bad_steps.max(1);
    opts.stop = Some(stop_on_signals()?);
    opts.gpu = gpu;
    opts.precision = precision;
    let s = train(&opts)?;
    let mut out = std::io::stdout().lock();
    let resume = format!("genesis train --out {}", c.out.display());
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
            writeln!(out, "best val loss {v:.4} at step {step}: {}", train::checkpoint_path(&c.out, step).display());
    }
    let _ = writeln!(out, "sample from it: genesis sample --checkpoint {} --prompt \"...\"", s.checkpoint.display());
    Ok(())
}

/// (micro-batch, accumulation) reaching `tokens_per_step`: on the GPU the largest micro-batch the
/// memory plan fits in its free memory at `precision`, on the CPU 8 sequences.
fn micro_batch_for(
    model: &ModelConfig,
    seq: usize,
    tokens_per_step: usize,
    gpu: Option<usize>,
    precision: Precision,
) -> Result<(Option<usize>, Option<usize>)> {
    let Some(ordinal) = gpu else {
        let batch = 8.min(tokens_per_step.div_ceil(seq));
        return Ok((Some(batch), Some(tokens_per_step.div_ceil(batch * seq))));
    };
    let (free, _) = genesis::gpu::device::Gpu::new(ordinal)?.memory()?;
    let p = genesis::gpu::plan::plan(model, seq, tokens_per_step, free as u64, precision == Precision::Bf16)?;
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
/// step, checkpoints and returns. A second signal exits at once.
fn stop_on_signals() -> Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let flag = Arc::clone(&stop);
        let action = move || {
            if flag.swap(sig as usize, Ordering::SeqCst) != 0 {
                signal_hook::low_level::exit(128 + sig);
            }
        };
        // SAFETY: the action only does an atomic swap and _exit, both async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, action) }.context("cannot install signal handlers")?;
    }
    Ok(stop)
}

fn sample(c: SampleCmd) -> Result<()> {
    let device = genesis::gpu::select_device(&c.device)?;
    let w = genesis::weights::load(&c.checkpoint)?;
    let (cfg, params) = (w.config, w.params);
    let tok = Tokenizer::gpt2()?;
    let mut prompt = vec![EOT_TOKEN];
    prompt.extend(tok.encode(&c.prompt));
    if prompt.len() >= cfg.max_seq_len {
        bail!("the prompt is {} tokens but the model's context is {}; shorten it", prompt.len(), cfg.max_seq_len);
    }
    let params_s = SamplingParams { temperature: c.temperature, top_k: c.top_k, top_p: c.top_p };
    let mut rng = Rng::new(c.seed);
    let (model32, model16);
    let mut step: Box<dyn FnMut(u32) -> Result<Vec<f32>>> = match (device, Precision::parse(&c.precision)?) {
        (Some(ordinal), Precision::Fp32) => {
            model32 = GpuModel::<f32>::new(&cfg, &params, ordinal, false)?;
            let mut dec = GpuDecoder::new(&model32)?;
            Box::new(move |t| Ok(dec.step(t)?.to_vec()))
        }
        (Some(ordinal), Precision::Bf16) => {
            model16 = GpuModel::<half::bf16>::new(&cfg, &params, ordinal, false)?;
            let mut dec = GpuDecoder::new(&model16)?;
            Box::new(move |t| Ok(dec.step(t)?.to_vec()))
        }
        (None, _) => {
            let mut dec = Decoder::new(&cfg, &params);
            Box::new(move |t| Ok(dec.step(t).to_vec()))
        }
    };
    let mut stream = StreamDecoder::default();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", c.prompt)?;
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = step(t)?;
    }
    // `position`: tokens fed to the model so far.
    for position in (prompt.len()..).take(c.max_tokens) {
        let next = sample_token(&logits, &params_s, &mut rng);
        if next == EOT_TOKEN || position >= cfg.max_seq_len {
            break;
        }
        write!(out, "{}", stream.push(next))?;
        out.flush()?;
        logits = step(next)?;
    }
    writeln!(out, "{}", stream.finish()).context("writing to stdout")?;
    Ok(())
}

fn bench_forward(b: BenchForward) -> Result<()> {
    let cfg = preset(&b.model)?;
    if b.seq == 0 || b.seq > cfg.max_seq_len || b.batch == 0 || b.steps == 0 {
        bail!("need 1 <= --seq <= {} and --batch, --steps >= 1", cfg.max_seq_len);
    }
    genesis::gpu::select_device("cuda")?;
    let precision = Precision::parse(&b.precision)?;
    let r = match precision {
        Precision::Fp32 => genesis::bench::bench_forward_gpu::<f32>(&cfg, b.batch, b.seq, b.steps, b.tf32)?,
        Precision::Bf16 => genesis::bench::bench_forward_gpu::<half::bf16>(&cfg, b.batch, b.seq, b.steps, b.tf32)?,
    };
    println!(
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
        println!("  {name:<24} {ms:>8.3} ms  {:>5.1}%", 100.0 * ms / total.max(1e-9));
    }
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
    let cfg = preset(&b.model)?;
    if b.seq == 0 || b.seq > cfg.max_seq_len || b.batch == 0 || b.steps == 0 {
        bail!("need 1 <= --seq <= {} and --batch, --steps >= 1", cfg.max_seq_len);
    }
    if genesis::gpu::select_device(&b.device)?.is_some() {
        let precision = Precision::parse(&b.precision)?;
        let r = match precision {
            Precision::Fp32 => genesis::bench::bench_train_gpu::<f32>(&cfg, b.batch, b.seq, b.steps)?,
            Precision::Bf16 => genesis::bench::bench_train_gpu::<half::bf16>(&cfg, b.batch, b.seq, b.steps)?,
        };
        println!(
            "bench train {} on {} ({}), batch {} seq {}: {:.1} ms/step, {:.0} tokens/s, {:.1} TFLOP/s{}, {:.2} GB of device memory",
            b.model,
            r.device,
            if precision == Precision::Bf16 { "bf16 mixed precision" } else { "fp32, TF32 matmuls" },
            b.batch,
            b.seq,
            r.ms_per_step,
            r.tokens_per_sec,
            r.tflops,
            r.mfu.map(|m| format!(", MFU {:.1}%", 100.0 * m)).unwrap_or_default(),
            r.memory_gb
        );
        return Ok(());
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
