//! `genesis sample`: stream text from any model file, on the GPU when one works or the CPU.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::cpu::sample::{convert_params, sample_token, Decoder, SamplingParams, TokenDecoder, WeightType};
use genesis::data::tokenizer::{StreamDecoder, Tokenizer};
use genesis::gpu::engine::gpu_engine;
use genesis::gpu::{Device, Precision, StepSync};
use genesis::model::EOT_TOKEN;
use genesis::rng::Rng;
use half::bf16;

use super::stdout_error;

/// Generate text from a checkpoint or an exported model, streaming it as it is produced (on the GPU when one works, else the CPU).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "sample",
    example = "genesis sample --checkpoint runs/shakespeare/step_00000600.ckpt --prompt \"ROMEO:\"",
    note = "Decoding uses a KV cache. Generation stops at the end-of-text token, after --max-tokens, or when the model's context is full. The same --seed gives the same text."
)]
pub struct SampleCmd {
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
    /// keep generating past the end-of-text token (it starts a new document) up to --max-tokens
    #[argh(switch)]
    ignore_eot: bool,
    /// where to run: auto (the GPU when one works), cpu or cuda (default auto)
    #[argh(option, default = "Device::Auto")]
    device: Device,
    /// on the GPU: fp32 or bf16 (default auto: bf16)
    #[argh(option, default = "Precision::Bf16")]
    precision: Precision,
    /// on the CPU: weights held as bf16 (half the memory and half the bytes read per token; sums stay f32) or f32 (default bf16); on the GPU --precision decides
    #[argh(option, default = "WeightType::Bf16")]
    weights: WeightType,
}

/// The model file's vocabulary must cover the GPT-2 tokenizer's (prompts and samples are GPT-2 tokens).
pub(crate) fn cfg_gpt2_vocab(w: &genesis::weights::Weights) -> Result<()> {
    w.config.check_gpt2_vocab().map_err(|e| anyhow::anyhow!("{}: {e}", w.path.display()))
}

pub fn run(c: SampleCmd) -> Result<()> {
    let params_s = SamplingParams { temperature: c.temperature, top_k: c.top_k, top_p: c.top_p };
    params_s.check().map_err(anyhow::Error::msg)?;
    let device = genesis::gpu::select_device(c.device)?;
    let w = genesis::weights::load(&c.checkpoint)?;
    cfg_gpt2_vocab(&w)?;
    let (cfg, params) = (w.config, w.params);
    let tok = Tokenizer::gpt2()?;
    let mut prompt = vec![EOT_TOKEN];
    prompt.extend(tok.encode(&c.prompt));
    if prompt.len() >= cfg.max_seq_len {
        bail!("the prompt is {} tokens but the model's context is {}; shorten it", prompt.len(), cfg.max_seq_len);
    }
    // The arguments and the model file are sound: say where it runs, once.
    device.note();
    let mut rng = Rng::new(c.seed);
    let (engine, narrow);
    let mut decoder: Box<dyn TokenDecoder + '_> = match (device.gpu, c.weights) {
        (Some(ordinal), _) => {
            engine = gpu_engine(&cfg, &params, ordinal, c.precision, false, StepSync::Micro)?;
            engine.decoder()?
        }
        (None, WeightType::F32) => Box::new(Decoder::new(&cfg, &params)),
        (None, WeightType::Bf16) => {
            // Rounded once; the f32 copy goes before decoding so the model takes half the memory.
            narrow = convert_params::<bf16>(&params);
            drop(params);
            Box::new(Decoder::new(&cfg, &narrow))
        }
    };
    let mut stream = StreamDecoder::default();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", c.prompt).map_err(stdout_error)?;
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = decoder.step(t)?.to_vec();
    }
    // `position`: tokens fed to the model so far.
    for position in (prompt.len()..).take(c.max_tokens) {
        if position >= cfg.max_seq_len {
            eprintln!("note: stopped at the model's context of {} tokens", cfg.max_seq_len);
            break;
        }
        let next = sample_token(&logits, &params_s, &mut rng);
        if next == EOT_TOKEN && !c.ignore_eot {
            let written = position - prompt.len();
            eprintln!("note: the model ended the text (end-of-text) after {written} tokens; --ignore-eot keeps going");
            break;
        }
        write!(out, "{}", stream.push(next)).and_then(|()| out.flush()).map_err(stdout_error)?;
        logits = decoder.step(next)?.to_vec();
    }
    writeln!(out, "{}", stream.finish()).and_then(|()| out.flush()).map_err(stdout_error)?;
    Ok(())
}
