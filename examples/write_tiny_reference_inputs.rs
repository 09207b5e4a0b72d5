//! Writes the inputs of the PyTorch reference fixture (see `scripts/make_reference.py`):
//!
//! - `DIR/model.bin`: llm.c v3 (fp32) model file holding `init_params(tiny, 1337)`;
//! - `DIR/tokens.bin`: raw little-endian u32, B = 4 rows of T + 1 = 33 tokens drawn with
//!   `Rng::new(7).below(50257)`; inputs are `row[..32]`, targets `row[1..]`.
//!
//! Usage: `cargo run --release --example write_tiny_reference_inputs -- DIR`

use anyhow::{bail, Context, Result};
use genesis::cpu::gpt::init_params;
use genesis::model::{ModelConfig, VOCAB_SIZE};
use genesis::rng::Rng;
use std::path::PathBuf;

const SEED: u64 = 1337;
const TOKEN_SEED: u64 = 7;
const B: usize = 4;
const T: usize = 32;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 1 {
        bail!("usage: write_tiny_reference_inputs DIR");
    }
    let dir = PathBuf::from(&args[0]);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let cfg = ModelConfig::preset("tiny").map_err(anyhow::Error::msg)?;
    let params = init_params(&cfg, SEED);
    let model = dir.join("model.bin");
    genesis::llmc::write_model(&model, &cfg, &params)?;

    let mut rng = Rng::new(TOKEN_SEED);
    let tokens: Vec<u32> = (0..B * (T + 1)).map(|_| rng.below(VOCAB_SIZE as u64) as u32).collect();
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let tok_path = dir.join("tokens.bin");
    std::fs::write(&tok_path, bytes).with_context(|| format!("writing {}", tok_path.display()))?;

    println!(
        "wrote {} ({} parameters, crc32 {:08x} of the data) and {} ({B} x {} tokens)",
        model.display(),
        params.len(),
        crc32fast::hash(bytemuck::cast_slice(&params)),
        tok_path.display(),
        T + 1
    );
    Ok(())
}
