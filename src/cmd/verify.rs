//! `genesis verify`: is a checkpoint or export whole after a copy or download?

use super::outln;
use anyhow::Result;
use argh::FromArgs;
use std::path::PathBuf;

/// Check that a checkpoint, export directory or model file is whole (after a copy or download).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "verify",
    example = "genesis verify runs/gpt2/step_00010000.ckpt\ngenesis verify gpt2-export\ngenesis verify gpt2/model.safetensors",
    note = "Genesis checkpoint: the header checksum and every section's CRC-32 (the error names the damaged section). Export directory or model.safetensors: the header parses, every tensor lies inside the file, the file is exactly as long as the header says, every GPT-2 tensor is present with the shape config.json implies, and the sha256 recorded in genesis.json matches (when there is one). llm.c model file: the header and the file size. Prints one line \"FILE: whole (...)\" and exits 0, or says what is broken and exits 1."
)]
pub struct VerifyCmd {
    /// checkpoint, export directory, model.safetensors or llm.c .bin
    #[argh(positional)]
    file: PathBuf,
}

pub fn run(c: VerifyCmd) -> Result<()> {
    let r = genesis::weights::verify(&c.file)?;
    let step = r.step.map_or(String::new(), |s| format!(", step {s}"));
    outln!("{}: whole ({}, {}{step}; {})", c.file.display(), r.format, r.config, r.checked);
    Ok(())
}
