//! Model weights from any file Genesis reads, as one f32 buffer in
//! [`ParamLayout`](crate::model::ParamLayout) order:
//! Genesis checkpoints (`*.ckpt`, full or not), `genesis export` directories and Hugging Face GPT-2
//! `model.safetensors` files (with their `config.json`), and llm.c model files (`gpt2_124M.bin`,
//! fp32 version 3 or bf16 version 5). `genesis sample`, `eval`, `import` and `train --init-from` all
//! load through [`load`].

use crate::checkpoint;
use crate::model::ModelConfig;
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

/// The file to read for `path` (a directory's `model.safetensors`) and its format: by its first bytes,
/// else a `.safetensors` name. [`load`] and [`verify`] both decide through here, so `verify` never
/// calls whole a file `load` would not read.
fn sniff(path: &Path) -> Result<(PathBuf, WeightsFormat)> {
    if path.is_dir() {
        let st = path.join(crate::hf::MODEL_FILE);
        if !st.exists() {
            bail!(
                "{} is a directory without {}; give a checkpoint file (*.ckpt), an export directory \
                 (from genesis export), a Hugging Face GPT-2 model.safetensors or an llm.c .bin file",
                path.display(),
                crate::hf::MODEL_FILE
            );
        }
        return Ok((st, WeightsFormat::Safetensors));
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let head = &head[..n];
    let format = if head.starts_with(checkpoint::MAGIC) {
        WeightsFormat::Checkpoint
    } else if head.len() >= 4 && head[..4] == crate::llmc::MAGIC.to_le_bytes() {
        WeightsFormat::LlmC
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        WeightsFormat::Safetensors
    } else {
        return Err(unrecognised(path, head));
    };
    Ok((path.to_path_buf(), format))
}

/// The error for a file whose first bytes (`head`) name no format Genesis reads: the format its
/// extension promises, and what the file starts with instead.
fn unrecognised(path: &Path, head: &[u8]) -> anyhow::Error {
    let p = path.display();
    let starts = if head.is_empty() {
        "the file is empty".to_string()
    } else if head.iter().all(|&b| b == 0) {
        "it starts with zero bytes".to_string()
    } else {
        format!("it starts with the bytes {}", head.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("ckpt") => anyhow::anyhow!(
            "{p} is not a Genesis checkpoint: a checkpoint starts with GENESIS, but {starts}; the file is \
             damaged or was not written by genesis train: copy it again, or use an earlier checkpoint"
        ),
        Some("bin") => {
            let magic = (head.len() >= 4).then(|| i32::from_le_bytes([head[0], head[1], head[2], head[3]]));
            let found = magic.map_or(starts, |m| format!("its magic number is {m}"));
            anyhow::anyhow!(
                "{p} is not an llm.c model file: one starts with the magic number {} (version 3 fp32 or 5 bf16), but \
                 {found}; the file is damaged or is not an llm.c model (llm.c's token shards and state files are \
                 not models): copy it again or give the model file",
                crate::llmc::MAGIC
            )
        }
        _ => anyhow::anyhow!(
            "{p} is not a model file Genesis knows ({starts}): expected a Genesis checkpoint (starts with GENESIS), \
             an llm.c model file (magic {}), a .safetensors file or an export directory",
            crate::llmc::MAGIC
        ),
    }
}

/// Loads weights from `path`, recognising the format by content (a directory is read as an export
/// directory holding `model.safetensors`).
pub fn load(path: &Path) -> Result<Weights> {
    let (file, format) = sniff(path)?;
    match format {
        WeightsFormat::Checkpoint => {
            let (info, params) = checkpoint::load_params(&file)?;
            Ok(Weights {
                config: info.config,
                params,
                format: WeightsFormat::Checkpoint,
                path: file,
                step: Some(info.step),
            })
        }
        WeightsFormat::LlmC => {
            let (config, params) = crate::llmc::read_model(&file)?;
            Ok(Weights { config, params, format: WeightsFormat::LlmC, path: file, step: None })
        }
        WeightsFormat::Safetensors => load_safetensors(&file),
    }
}

/// A Hugging Face GPT-2 safetensors file; its `config.json` is looked for beside it (and `genesis.json`,
/// for the step and exact padded vocabulary of a `genesis export`).
fn load_safetensors(path: &Path) -> Result<Weights> {
    let (config, params, export) = crate::hf::load(path)?;
    Ok(Weights {
        config,
        params,
        format: WeightsFormat::Safetensors,
        path: path.to_path_buf(),
        step: export.and_then(|e| e.step),
    })
}

/// What [`verify`] found in a whole file.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub format: WeightsFormat,
    pub config: ModelConfig,
    pub step: Option<u64>,
    /// What was checked, e.g. "every section's CRC-32" or "sha256 matches genesis.json".
    pub checked: String,
}

/// Checks that the model file (or export directory) at `path` is whole without loading it for use,
/// running every check [`load`] runs before it reads the values (so a file called whole loads): a
/// Genesis checkpoint's header (a model shape `ModelConfig::new` accepts, sections in bounds and not
/// overlapping) and every section's CRC-32; a safetensors file's header, tensor extents (each
/// shape's byte size, without overflow, equal to its byte range), exact length, `config.json`,
/// expected GPT-2 tensors and shapes, a tied `lm_head`, and the sha256 recorded in `genesis.json`
/// when present; an llm.c file's header and size. The error names the file and the broken part.
pub fn verify(path: &Path) -> Result<VerifyReport> {
    let (st, format) = sniff(path)?;
    match format {
        WeightsFormat::Checkpoint => {
            let info = checkpoint::verify(&st)?;
            let names: Vec<&str> = info.sections.iter().map(|s| s.name.as_str()).collect();
            Ok(VerifyReport {
                format: WeightsFormat::Checkpoint,
                config: info.config,
                step: Some(info.step),
                checked: format!("CRC-32 of every section ({}) matches", names.join(", ")),
            })
        }
        WeightsFormat::LlmC => {
            let (h, _) = crate::llmc::read_header(&st)?;
            Ok(VerifyReport {
                format: WeightsFormat::LlmC,
                config: h.config,
                step: None,
                checked: format!("version {}, size matches the header", h.version),
            })
        }
        WeightsFormat::Safetensors => verify_safetensors(&st),
    }
}

/// Structure of a GPT-2 safetensors file, and its sha256 against `genesis.json` when there is one.
fn verify_safetensors(path: &Path) -> Result<VerifyReport> {
    let g = crate::hf::check_gpt2(path)?;
    let dtypes: std::collections::BTreeSet<&str> = g.tensors.iter().map(|(_, i)| i.dtype.as_str()).collect();
    let dtypes = dtypes.into_iter().collect::<Vec<_>>().join("+");
    let mut checked = format!("{dtypes}, {} tensors with the right shapes, length exact", g.tensors.len());
    match &g.export {
        Some(e) => {
            let actual = crate::util::sha256_file(path)?;
            let json = path.with_file_name(crate::hf::GENESIS_FILE);
            if actual != e.sha256 {
                bail!(
                    "{}: sha256 is {actual} but {} records {}: the file is damaged or was changed; copy or download it again",
                    path.display(),
                    json.display(),
                    e.sha256
                );
            }
            checked.push_str(", sha256 matches genesis.json");
        }
        None => checked.push_str(", no genesis.json so no sha256 to compare"),
    }
    Ok(VerifyReport {
        format: WeightsFormat::Safetensors,
        config: g.config,
        step: g.export.as_ref().and_then(|e| e.step),
        checked,
    })
}
