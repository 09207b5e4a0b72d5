//! Hugging Face GPT-2 files: `model.safetensors` with GPT-2's tensor names, its `config.json`, and the
//! `genesis.json` that `genesis export` writes beside them (provenance and the sha256 that proves a
//! downloaded `model.safetensors` whole). The container format itself is [`crate::safetensors`];
//! this module knows which tensors GPT-2 has, their names and shapes, and where each lives in our
//! flat parameter buffer.
//!
//! GPT-2's `Conv1D` weights are stored (in, out), transposed relative to our (out, in); the vocabulary
//! is unpadded and `lm_head.weight` is tied to `wte`, so it is not stored.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{ConfigError, Field, ModelConfig, Param, ParamLayout, RawModelConfig};
use crate::safetensors::{write_safetensors, Dtype, SafetensorsFile, TensorInfo, TensorOut};

/// The weights file of an export directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The Hugging Face model config beside it.
pub const CONFIG_FILE: &str = "config.json";
/// Genesis's provenance record beside it.
pub const GENESIS_FILE: &str = "genesis.json";
/// `format` field of `genesis.json`.
pub const EXPORT_FORMAT: &str = "genesis-export";
/// The only LayerNorm epsilon Genesis computes with.
pub const LAYER_NORM_EPS: f64 = 1e-5;

// ---------------------------------------------------------------------------------------------
// GPT-2 names and shapes
// ---------------------------------------------------------------------------------------------

/// One Hugging Face GPT-2 tensor and where it lives in our flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfTensor {
    /// Full name with the `transformer.` prefix, e.g. `transformer.h.3.mlp.c_fc.weight`.
    pub name: String,
    pub param: Param,
    /// Layer for per-layer tensors (0 otherwise).
    pub layer: usize,
    /// Shape in the Hugging Face file (unpadded vocabulary; Conv1D weights (in, out)).
    pub shape: Vec<usize>,
    /// Whether the file holds the transpose of our (out, in) matrix.
    pub transposed: bool,
}

/// The Hugging Face suffix of a per-layer tensor (after `transformer.h.{i}.`).
fn layer_suffix(p: Param) -> &'static str {
    match p {
        Param::Ln1w => "ln_1.weight",
        Param::Ln1b => "ln_1.bias",
        Param::Qkvw => "attn.c_attn.weight",
        Param::Qkvb => "attn.c_attn.bias",
        Param::AttProjw => "attn.c_proj.weight",
        Param::AttProjb => "attn.c_proj.bias",
        Param::Ln2w => "ln_2.weight",
        Param::Ln2b => "ln_2.bias",
        Param::Fcw => "mlp.c_fc.weight",
        Param::Fcb => "mlp.c_fc.bias",
        Param::FcProjw => "mlp.c_proj.weight",
        Param::FcProjb => "mlp.c_proj.bias",
        Param::Wte | Param::Wpe | Param::Lnfw | Param::Lnfb => unreachable!("not a per-layer tensor"),
    }
}

/// Every tensor of a GPT-2 model of shape `cfg` in Hugging Face's order: wte, wpe, the blocks, ln_f.
pub fn gpt2_tensors(cfg: &ModelConfig) -> Vec<HfTensor> {
    let (v, t, c) = (cfg.vocab_size, cfg.max_seq_len, cfg.channels);
    let one = |name: &str, param, shape: Vec<usize>| HfTensor {
        name: name.into(),
        param,
        layer: 0,
        shape,
        transposed: false,
    };
    // wte (Vp, C) -> transformer.wte.weight (V, C); wpe (T, C) -> transformer.wpe.weight (T, C)
    let mut out = vec![
        one("transformer.wte.weight", Param::Wte, vec![v, c]),
        one("transformer.wpe.weight", Param::Wpe, vec![t, c]),
    ];
    for l in 0..cfg.num_layers {
        for p in Param::ALL.into_iter().filter(|p| p.per_layer()) {
            // Conv1D weights: ours (out, in) -> theirs (in, out); vectors keep their shape.
            let (shape, transposed) = match p {
                Param::Qkvw => (vec![c, 3 * c], true),
                Param::AttProjw => (vec![c, c], true),
                Param::Fcw => (vec![c, 4 * c], true),
                Param::FcProjw => (vec![4 * c, c], true),
                Param::Qkvb => (vec![3 * c], false),
                Param::Fcb => (vec![4 * c], false),
                _ => (vec![c], false),
            };
            out.push(HfTensor {
                name: format!("transformer.h.{l}.{}", layer_suffix(p)),
                param: p,
                layer: l,
                shape,
                transposed,
            });
        }
    }
    // lnfw (C), lnfb (C) -> transformer.ln_f.{weight,bias}
    out.push(one("transformer.ln_f.weight", Param::Lnfw, vec![c]));
    out.push(one("transformer.ln_f.bias", Param::Lnfb, vec![c]));
    out
}

/// Our part of the flat buffer holding `t` (for wte: the first V rows only).
fn our_range(layout: &ParamLayout, t: &HfTensor) -> std::ops::Range<usize> {
    let r = layout.get(t.param).layer_range(t.layer);
    r.start..r.start + t.shape.iter().product::<usize>()
}

/// `src` viewed as (rows, cols) row-major, transposed into (cols, rows).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    out
}

/// Vocabulary rows Genesis keeps for a real vocabulary of `vocab`: rounded up to a multiple of 128
/// (50257 -> 50304). Saturates instead of wrapping for an absurd `vocab` (which
/// [`ModelConfig::new`] then refuses).
pub fn padded_vocab(vocab: usize) -> usize {
    vocab.div_ceil(128).saturating_mul(128)
}

/// What `config.json` calls each [`ModelConfig`] field, for errors.
pub fn config_json_name(f: Field) -> String {
    match f {
        Field::MaxSeqLen => "n_positions".into(),
        Field::VocabSize => "vocab_size".into(),
        Field::PaddedVocabSize => "padded vocabulary (vocab_size rounded up to a multiple of 128)".into(),
        Field::NumLayers => "n_layer".into(),
        Field::NumHeads => "n_head".into(),
        Field::Channels => "n_embd".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

/// The `config.json` `genesis export` writes: what `GPT2LMHeadModel.from_pretrained` needs.
pub fn config_json(cfg: &ModelConfig, dtype: Dtype) -> Value {
    let eot = crate::model::EOT_TOKEN as usize;
    let special = if eot < cfg.vocab_size { json!(eot) } else { Value::Null };
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.channels,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "add_cross_attention": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": special,
        "eos_token_id": special,
        "torch_dtype": dtype.torch_name(),
        "dtype": dtype.torch_name(),
    })
}

/// What Genesis takes from a Hugging Face GPT-2 `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HfConfig {
    /// The model shape (vocabulary padded by [`padded_vocab`]).
    pub config: ModelConfig,
    /// `tie_word_embeddings` (default true).
    pub tied: bool,
}

/// Reads a GPT-2 `config.json` and refuses, naming the file and the field, what Genesis cannot run.
pub fn read_config(path: &Path) -> Result<HfConfig> {
    let p = path.display();
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {p}: a Hugging Face model needs its config.json beside model.safetensors (download it too)"
        )
    })?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{p} is not valid JSON"))?;
    let get = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null()));
    let size = |keys: &[&str]| -> Result<usize> {
        let x =
            get(keys).with_context(|| format!("{p}: field {} is missing; is this a GPT-2 config.json?", keys[0]))?;
        x.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .with_context(|| format!("{p}: field {} is {x}; expected a positive integer", keys[0]))
    };
    if let Some(mt) = get(&["model_type"]) {
        if mt != "gpt2" {
            bail!("{p}: field model_type is {mt}; Genesis runs GPT-2 models only (model_type \"gpt2\")");
        }
    }
    check_config_field(
        path,
        &v,
        "activation_function",
        |x| matches!(x.as_str(), Some("gelu_new" | "gelu_pytorch_tanh")),
        "gelu_new or gelu_pytorch_tanh (the tanh GELU Genesis computes)",
    )?;
    check_config_field(
        path,
        &v,
        "layer_norm_epsilon",
        |x| x.as_f64().is_some_and(|e| (e - LAYER_NORM_EPS).abs() < 1e-12),
        "1e-5 (the epsilon Genesis computes with)",
    )?;
    check_config_field(path, &v, "scale_attn_weights", |x| x.as_bool() == Some(true), "true")?;
    check_config_field(path, &v, "scale_attn_by_inverse_layer_idx", |x| x.as_bool() == Some(false), "false")?;
    check_config_field(path, &v, "add_cross_attention", |x| x.as_bool() == Some(false), "false")?;
    let vocab_size = size(&["vocab_size"])?;
    let config = ModelConfig::new(
        size(&["n_positions", "max_position_embeddings", "n_ctx"])?,
        vocab_size,
        padded_vocab(vocab_size),
        size(&["n_layer", "num_hidden_layers"])?,
        size(&["n_head", "num_attention_heads"])?,
        size(&["n_embd", "hidden_size"])?,
    )
    .map_err(|e: ConfigError| anyhow::anyhow!("{p}: {}", e.message(config_json_name)))?;
    let c4 = 4 * config.channels;
    check_config_field(path, &v, "n_inner", |x| x.as_u64() == Some(c4 as u64), &format!("null or 4 x n_embd = {c4}"))?;
    let tied = get(&["tie_word_embeddings"]).is_none_or(|x| x.as_bool() != Some(false));
    Ok(HfConfig { config, tied })
}

/// Errors naming `path` and `field` when the field is present, not null and fails `ok`.
fn check_config_field(path: &Path, v: &Value, field: &str, ok: impl Fn(&Value) -> bool, expected: &str) -> Result<()> {
    match v.get(field) {
        Some(x) if !x.is_null() && !ok(x) => bail!(
            "{}: field {field} is {x}, but Genesis needs {expected}; this model is not one Genesis can run",
            path.display()
        ),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// genesis.json, export and load
// ---------------------------------------------------------------------------------------------

/// `genesis.json`: where an export came from and the sha256 that proves its `model.safetensors` whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// Version of Genesis that wrote the export.
    pub genesis_version: String,
    /// The file exported from, as given on the command line.
    pub source: String,
    /// What the source was (e.g. "Genesis checkpoint").
    pub source_format: String,
    /// Training step of the source, when it records one.
    pub step: Option<u64>,
    /// Element type of the weights: f32, bf16 or f16.
    pub dtype: String,
    /// The model shape, padded vocabulary included (so a re-import restores it exactly).
    pub config: ModelConfig,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
    /// sha256 (hex) of `model.safetensors`.
    pub sha256: String,
}

/// Where an export came from, for `genesis.json`.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub source: String,
    pub source_format: String,
    pub step: Option<u64>,
}

/// Writes `params` (laid out by `cfg`) as a Hugging Face GPT-2 directory `dir`: `model.safetensors` in
/// `dtype`, `config.json` and `genesis.json` (written last, since it vouches for the other two). Each
/// file is written to a temporary name, fsynced and renamed. Returns what `genesis.json` records.
pub fn export(dir: &Path, cfg: &ModelConfig, params: &[f32], dtype: Dtype, from: &Provenance) -> Result<ExportInfo> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let layout = ParamLayout::new(cfg);
    if params.len() != layout.total {
        bail!("cannot export: the parameters hold {} values but the model {cfg} needs {}", params.len(), layout.total);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the export directory {}", dir.display()))?;
    let tensors = gpt2_tensors(cfg);
    let outs: Vec<TensorOut> =
        tensors.iter().map(|t| TensorOut { name: t.name.clone(), dtype, shape: t.shape.clone() }).collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let (bytes, sha256) = write_safetensors(&dir.join(MODEL_FILE), &metadata, &outs, |i, buf| {
        let t = &tensors[i];
        let ours = &params[our_range(&layout, t)];
        if t.transposed {
            // ours (out, in) = (shape[1], shape[0]) -> theirs (in, out)
            dtype.encode(&transpose(ours, t.shape[1], t.shape[0]), buf);
        } else {
            dtype.encode(ours, buf);
        }
        Ok(())
    })?;
    let config = serde_json::to_vec_pretty(&config_json(cfg, dtype))?;
    crate::util::write_atomic(&dir.join(CONFIG_FILE), &config)?;
    let info = ExportInfo {
        format: EXPORT_FORMAT.into(),
        genesis_version: env!("CARGO_PKG_VERSION").into(),
        source: from.source.clone(),
        source_format: from.source_format.clone(),
        step: from.step,
        dtype: dtype.to_string(),
        config: *cfg,
        bytes,
        sha256,
    };
    crate::util::write_atomic(&dir.join(GENESIS_FILE), &serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

/// Reads `genesis.json` beside `model_file`, if there is one.
pub fn read_export_info(model_file: &Path) -> Result<Option<ExportInfo>> {
    let path = model_file.with_file_name(GENESIS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let unreadable =
        || format!("{} is not a genesis.json Genesis can read (damaged? export again or delete it)", path.display());
    let value: Value = serde_json::from_slice(&text).with_context(unreadable)?;
    // The model shape first, so an impossible one is named as such.
    if let Some(Ok(raw)) = value.get("config").map(RawModelConfig::deserialize) {
        ModelConfig::try_from(raw).map_err(|e| anyhow::anyhow!("{}: field config: {e}", path.display()))?;
    }
    let info: ExportInfo = serde_json::from_value(value).with_context(unreadable)?;
    if info.format != EXPORT_FORMAT {
        bail!("{}: field format is {:?}, expected {EXPORT_FORMAT:?}", path.display(), info.format);
    }
    Ok(Some(info))
}

/// A checked Hugging Face GPT-2 file: its shape, where each expected tensor is, and its provenance.
pub struct Gpt2File {
    pub file: SafetensorsFile,
    pub config: ModelConfig,
    pub tied: bool,
    /// The expected tensors, each with the entry of the file that holds it.
    pub tensors: Vec<(HfTensor, TensorInfo)>,
    /// A `lm_head.weight` stored in the file, if any.
    pub lm_head: Option<TensorInfo>,
    pub export: Option<ExportInfo>,
}

/// Tensors a Hugging Face GPT-2 file may carry that Genesis does not need: attention-mask buffers.
fn is_ignored_buffer(name: &str) -> bool {
    let name = name.strip_prefix("transformer.").unwrap_or(name);
    name.starts_with("h.") && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias"))
}

/// Opens `path` (a `model.safetensors` with `config.json` beside it) and checks its structure: header,
/// extent, config, and every GPT-2 tensor present with the right shape and a readable dtype. Tensor
/// values are not read.
pub fn open_gpt2(path: &Path) -> Result<Gpt2File> {
    let file = SafetensorsFile::open(path)?;
    let hf = read_config(&path.with_file_name(CONFIG_FILE))?;
    let export = read_export_info(path)?;
    let mut config = hf.config;
    if let Some(e) = &export {
        // A Genesis export records its padded vocabulary; keep it so a round trip is exact.
        if e.config.padded_vocab_size >= config.vocab_size {
            let c = config;
            config = ModelConfig::new(
                c.max_seq_len,
                c.vocab_size,
                e.config.padded_vocab_size,
                c.num_layers,
                c.num_heads,
                c.channels,
            )
            .map_err(|err| {
                anyhow::anyhow!(
                    "{} with vocab_size {} from {CONFIG_FILE}: {err}",
                    path.with_file_name(GENESIS_FILE).display(),
                    c.vocab_size
                )
            })?;
        }
    }
    let p = path.display();
    let mut tensors = Vec::new();
    for t in gpt2_tensors(&config) {
        let short = &t.name["transformer.".len()..];
        let Some(info) = file.header.get(&t.name).or_else(|| file.header.get(short)) else {
            bail!("{p}: tensor {} is missing (expected shape {:?} for {})", t.name, t.shape, config);
        };
        if info.shape != t.shape {
            bail!(
                "{p}: tensor {} has shape {:?}, expected {:?} (from {CONFIG_FILE}: {config})",
                info.name,
                info.shape,
                t.shape
            );
        }
        if Dtype::parse(&info.dtype).is_none() {
            bail!("{p}: tensor {} has dtype {}; Genesis reads F32, BF16 and F16", info.name, info.dtype);
        }
        tensors.push((t, info.clone()));
    }
    let known: std::collections::HashSet<&str> = tensors.iter().map(|(_, i)| i.name.as_str()).collect();
    let mut lm_head = None;
    for t in &file.header.tensors {
        if known.contains(t.name.as_str()) || is_ignored_buffer(&t.name) {
            continue;
        }
        if t.name == "lm_head.weight"
            && t.shape == [config.vocab_size, config.channels]
            && Dtype::parse(&t.dtype).is_some()
        {
            lm_head = Some(t.clone());
            continue;
        }
        bail!(
            "{p}: unexpected tensor {} {:?}; Genesis reads GPT-2 language models (GPT2LMHeadModel) only",
            t.name,
            t.shape
        );
    }
    if !hf.tied && lm_head.is_none() {
        bail!(
            "{p}: {CONFIG_FILE} says tie_word_embeddings false but there is no lm_head.weight; the file is incomplete"
        );
    }
    check_allocation(path, &config, file.len())?;
    Ok(Gpt2File { file, config, tied: hf.tied, tensors, lm_head, export })
}

/// Refuses a model whose f32 parameter buffer the file cannot justify: each stored value widens to at
/// most 4 bytes from at least 2 (bf16, f16), and the padded vocabulary rows Genesis adds as zeros are
/// at most [`crate::model::MAX_VOCAB_PADDING`] rows. (The tensor checks before it already imply this;
/// it is checked once more, on the numbers themselves, before [`load`] allocates.)
fn check_allocation(path: &Path, cfg: &ModelConfig, file_len: u64) -> Result<()> {
    let need = (ParamLayout::new(cfg).total as u64).checked_mul(4);
    let padding = ((cfg.padded_vocab_size - cfg.vocab_size) as u64 * cfg.channels as u64).saturating_mul(4);
    let justified = file_len.saturating_mul(2).saturating_add(padding);
    match need {
        Some(n) if n <= justified => Ok(()),
        _ => bail!(
            "{}: the model its {CONFIG_FILE} describes ({cfg}) needs more memory than a file of {file_len} bytes can hold; the file is damaged or does not belong to this config.json",
            path.display()
        ),
    }
}

/// A stored `lm_head.weight` must equal `wte` (Genesis ties the output layer to the token
/// embedding). Reads both tensors.
fn check_tied(g: &Gpt2File) -> Result<()> {
    let Some(head) = &g.lm_head else { return Ok(()) };
    let wte = g.tensors.iter().find(|(t, _)| t.param == Param::Wte).map(|(_, info)| info);
    let wte = wte.context("internal error: no wte tensor")?;
    if g.file.values(head)? != g.file.values(wte)? {
        bail!(
            "{}: lm_head.weight differs from transformer.wte.weight; Genesis ties the output layer to the token embedding and cannot run an untied model",
            g.file.path.display()
        );
    }
    Ok(())
}

/// Everything [`load`] checks before it allocates the parameters: structure ([`open_gpt2`]) and the
/// tied output layer. `genesis verify` runs exactly this, so a file it calls whole loads.
pub fn check_gpt2(path: &Path) -> Result<Gpt2File> {
    let g = open_gpt2(path)?;
    check_tied(&g)?;
    Ok(g)
}

/// Loads a Hugging Face GPT-2 `model.safetensors` (with `config.json` beside it) into our flat f32
/// buffer: names with or without the `transformer.` prefix, F32/BF16/F16, Conv1D weights transposed,
/// vocabulary rows padded with zeros. Returns the shape, the parameters and `genesis.json` if present.
pub fn load(path: &Path) -> Result<(ModelConfig, Vec<f32>, Option<ExportInfo>)> {
    let g = check_gpt2(path)?;
    let layout = ParamLayout::new(&g.config);
    let mut params = vec![0.0f32; layout.total];
    for (t, info) in &g.tensors {
        let values = g.file.values(info)?;
        let dst = &mut params[our_range(&layout, t)];
        if t.transposed {
            // theirs (in, out) = (shape[0], shape[1]) -> ours (out, in)
            dst.copy_from_slice(&transpose(&values, t.shape[0], t.shape[1]));
        } else {
            dst.copy_from_slice(&values);
        }
    }
    Ok((g.config, params, g.export))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_vocab_rounds_up_to_128() {
        assert_eq!(padded_vocab(50257), 50304);
        assert_eq!(padded_vocab(500), 512);
        assert_eq!(padded_vocab(512), 512);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let (rows, cols) = (37, 70); // not multiples of the block size
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&src, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], src[r * cols + c]);
            }
        }
        assert_eq!(transpose(&t, cols, rows), src);
    }

    #[test]
    fn gpt2_tensors_cover_every_parameter_once() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&cfg);
        let tensors = gpt2_tensors(&cfg);
        assert_eq!(tensors.len(), 4 + 12 * cfg.num_layers);
        let covered: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        let padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels;
        assert_eq!(covered + padding, layout.total);
        let names: std::collections::HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), tensors.len());
        assert!(names.contains("transformer.h.1.mlp.c_proj.weight"));
    }
}
