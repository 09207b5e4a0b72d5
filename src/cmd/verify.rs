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
    note = "Every file is checked as sample, eval, import, export and train --init-from load it (a file called whole loads), model shape included: at most 256 layers and 256 heads, at most 16384 channels (divisible by the heads), a context of at most 65536, a vocabulary of at most 1048576 padded by at most 1024 rows.\n\nGenesis checkpoint: the header checksum, sections in bounds and not overlapping, and every section's CRC-32 (the error names the damaged section). Export directory or model.safetensors: the header parses, every tensor's shape gives exactly its bytes and lies inside the file, the file is exactly as long as the header says, every GPT-2 tensor is present with the shape config.json implies, a stored lm_head equals wte, and the sha256 recorded in genesis.json matches (when there is one). llm.c model file: the header and the file size. Prints one line \"FILE: whole (...)\" and exits 0, or says what is broken and exits 1."
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
