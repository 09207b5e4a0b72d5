//! `genesis export`: a trained model as a Hugging Face GPT-2 directory for inference elsewhere.

use super::outln;
use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::hf::{self, Provenance};
use genesis::safetensors::Dtype;
use std::path::PathBuf;

/// Write a model as a Hugging Face GPT-2 directory (model.safetensors, config.json, genesis.json).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "export",
    example = "genesis export --checkpoint runs/gpt2/step_00010000.ckpt --out gpt2-export\ngenesis verify gpt2-export   # after copying it to the laptop\ngenesis sample --checkpoint gpt2-export --prompt \"Once upon\"\npython3 -c \"from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('gpt2-export')\"",
    note = "The export is inference-only: the parameters without the optimizer state, so a bf16 export of a 124M model is about 250 MB instead of the 1.5 GB training checkpoint. It is what Hugging Face transformers' GPT2LMHeadModel.from_pretrained(DIR) loads, and genesis sample, eval, import and train --init-from read it too.\n\nDIR/model.safetensors holds the weights under GPT-2's Hugging Face names (vocabulary unpadded, lm_head tied to wte so not stored); DIR/config.json is the matching GPT-2 config; DIR/genesis.json records the source file, its step, the dtype, the Genesis version and the sha256 of model.safetensors, which `genesis verify DIR` checks after a copy or download. Each file is written to a temporary name, fsynced and renamed, so an interrupted export never leaves a half-written file.\n\n--checkpoint takes any model file Genesis reads (a checkpoint, an export directory, a Hugging Face model.safetensors or an llm.c .bin), so export also converts between formats. --dtype bf16 halves the size and rounds each weight to 8 significant bits (the loss moves slightly, by 3e-4 on the random tiny model of the tests); f32 is bit-exact; f16 is there for tools that want it."
)]
pub struct ExportCmd {
    /// the model to export: a checkpoint, an export directory, a model.safetensors or an llm.c .bin
    #[argh(option)]
    checkpoint: PathBuf,
    /// output directory (created if missing; files in it are replaced)
    #[argh(option)]
    out: PathBuf,
    /// weight type: bf16 (default), f16 or f32
    #[argh(option, default = "String::from(\"bf16\")")]
    dtype: String,
}

pub fn run(c: ExportCmd) -> Result<()> {
    let Some(dtype) = Dtype::from_arg(&c.dtype) else {
        bail!("--dtype {}: expected bf16, f16 or f32", c.dtype);
    };
    if c.out.is_file() {
        bail!("--out {} is a file; export writes a directory (give a new or existing directory)", c.out.display());
    }
    let w = genesis::weights::load(&c.checkpoint)?;
    let from =
        Provenance { source: c.checkpoint.display().to_string(), source_format: w.format.to_string(), step: w.step };
    let info = hf::export(&c.out, &w.config, &w.params, dtype, &from)?;
    let step = info.step.map_or(String::new(), |s| format!(" at step {s}"));
    outln!("exported {} ({}{step}) to {}", c.checkpoint.display(), w.format, c.out.display());
    outln!("  model   {}", w.config);
    outln!("  {}  {} bytes, {dtype}, sha256 {}", hf::MODEL_FILE, info.bytes, info.sha256);
    outln!("check a copy with: genesis verify {}", genesis::util::shell_path(&c.out));
    Ok(())
}
