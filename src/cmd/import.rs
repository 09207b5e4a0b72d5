//! `genesis import`: any model file Genesis reads, as a Genesis checkpoint.

use super::outln;
use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::checkpoint::{self, Checkpoint};
use std::path::PathBuf;

/// Convert a model file (Hugging Face GPT-2, llm.c, export, checkpoint) into a Genesis checkpoint.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "import",
    example = "genesis import gpt2/model.safetensors --out gpt2.ckpt\ngenesis import gpt2_124M.bin --out gpt2.ckpt\ngenesis import my-export --out from-export.ckpt",
    note = "FILE is a Hugging Face GPT-2 model.safetensors (config.json beside it; F32, BF16 or F16) or a directory holding both (such as a `genesis export`), an llm.c model file (fp32 version 3 or bf16 version 5) or a Genesis checkpoint. The result holds the parameters only (no optimizer state), at step 0; a Hugging Face vocabulary is padded with zero rows to a multiple of 128 (50257 -> 50304); genesis sample, eval and train --init-from read it. Hugging Face configs Genesis cannot run (another activation, LayerNorm epsilon or architecture) are refused with the field that differs. The checkpoint is written to a temporary file, fsynced and renamed; an existing --out is only replaced with --force."
)]
pub struct ImportCmd {
    /// the model file or directory to convert
    #[argh(positional)]
    file: PathBuf,
    /// checkpoint file to write
    #[argh(option)]
    out: PathBuf,
    /// replace --out if it exists
    #[argh(switch)]
    force: bool,
}

pub fn run(c: ImportCmd) -> Result<()> {
    if c.out.exists() && !c.force {
        bail!("{} already exists; choose another --out or add --force to replace it", c.out.display());
    }
    let w = genesis::weights::load(&c.file)?;
    let mut ckpt = Checkpoint::new(w.config, 0, w.params);
    ckpt.meta = serde_json::json!({
        "imported_from": c.file.display().to_string(),
        "source_format": w.format.to_string(),
        "source_step": w.step,
    });
    checkpoint::save(&c.out, &ckpt)?;
    outln!("imported {} ({}) to {}", c.file.display(), w.format, c.out.display());
    outln!("  model {}", w.config);
    outln!("sample from it: genesis sample --checkpoint {}", genesis::util::shell_path(&c.out));
    Ok(())
}
