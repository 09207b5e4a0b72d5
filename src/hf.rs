//! Hugging Face GPT-2 files: `model.safetensors` with GPT-2's tensor names, its `config.json`, and the
//! `genesis.json` that `genesis export` writes beside them (provenance and the sha256 that proves a
//! downloaded `model.safetensors` whole).
//!
//! safetensors layout (written and read here by hand; the format is three lines of spec):
//! ```text
//! u64 LE  N                 header length
//! N bytes JSON header       {"__metadata__": {..}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..}
//! data                      the tensors' bytes, row-major little-endian, offsets relative to the end of the header
//! ```
//! GPT-2's `Conv1D` weights are stored (in, out), transposed relative to our (out, in); the vocabulary
//! is unpadded and `lm_head.weight` is tied to `wte`, so it is not stored.

use crate::model::{ModelConfig, Param, ParamLayout};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
/// Largest safetensors header we accept (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Element types of the tensors Genesis reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    BF16,
    F16,
}

impl Dtype {
    /// The safetensors name (`F32`, `BF16`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
        }
    }

    /// The PyTorch name used in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::BF16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }

    /// Parses a safetensors dtype name.
    pub fn parse(name: &str) -> Option<Dtype> {
        match name {
            "F32" => Some(Dtype::F32),
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            _ => None,
        }
    }

    /// Parses a `--dtype` argument: bf16, f16 or f32.
    pub fn from_arg(arg: &str) -> Option<Dtype> {
        match arg.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Dtype::F32),
            "bf16" | "bfloat16" => Some(Dtype::BF16),
            "f16" | "fp16" | "float16" => Some(Dtype::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
        }
    }

    /// Appends `values` to `out` in this dtype (little-endian; round to nearest even).
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            Dtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Dtype::BF16 => values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
            Dtype::F16 => values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        }
    }

    /// The values stored in `bytes` (little-endian, this dtype), as f32.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::BF16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

/// Bytes per element of any safetensors dtype (so files holding tensors we do not read still check).
fn dtype_bytes(name: &str) -> Option<u64> {
    match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => Some(1),
        "U16" | "I16" | "F16" | "BF16" => Some(2),
        "U32" | "I32" | "F32" => Some(4),
        "U64" | "I64" | "F64" => Some(8),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors container
// ---------------------------------------------------------------------------------------------

/// One tensor entry of a safetensors header. `begin..end` are relative to the data start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

/// A parsed safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Tensors in data order.
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// File offset of the first data byte (8 + header length).
    pub data_start: u64,
}

impl Header {
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes of data the header implies (the end of the last tensor).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0)
    }
}

/// Reads and parses the header of the safetensors file at `path` (the tensor data is not read) and
/// returns it with the file's length.
pub fn read_header(path: &Path) -> Result<(Header, u64)> {
    let p = path.display();
    let mut f = File::open(path).with_context(|| format!("cannot open {p}"))?;
    let file_len = f.metadata().with_context(|| format!("cannot stat {p}"))?.len();
    if file_len < 8 {
        bail!("{p}: truncated: {file_len} bytes, too short for a safetensors file (8-byte header length first); copy it again");
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(|| format!("cannot read {p}"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        bail!("{p}: header length {n} is implausible (limit {MAX_HEADER_BYTES}); not a safetensors file");
    }
    if 8 + n > file_len {
        bail!("{p}: truncated: the header needs bytes 8..{} but the file has {file_len}; copy it again", 8 + n);
    }
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json).with_context(|| format!("cannot read the header of {p}"))?;
    let header = parse_header_json(path, &json, 8 + n)?;
    Ok((header, file_len))
}

/// Parses the JSON header (tensor entries sorted by data offset).
fn parse_header_json(path: &Path, json: &[u8], data_start: u64) -> Result<Header> {
    let p = path.display();
    let value: Value = serde_json::from_slice(json)
        .with_context(|| format!("{p}: the safetensors header is not valid JSON (a damaged file?)"))?;
    let Value::Object(map) = value else { bail!("{p}: the safetensors header is not a JSON object") };
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            for (k, v) in entry.as_object().into_iter().flatten() {
                metadata.insert(k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string));
            }
            continue;
        }
        tensors.push(parse_entry(path, name, &entry)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    Ok(Header { tensors, metadata, data_start })
}

/// One `"name": {"dtype", "shape", "data_offsets"}` entry.
fn parse_entry(path: &Path, name: String, entry: &Value) -> Result<TensorInfo> {
    let bad = || anyhow::anyhow!("{}: header entry for tensor {name} is malformed: {entry}", path.display());
    let dtype = entry.get("dtype").and_then(Value::as_str).ok_or_else(bad)?.to_string();
    let ints = |key: &str| -> Result<Vec<u64>> {
        let arr = entry.get(key).and_then(Value::as_array).ok_or_else(bad)?;
        arr.iter().map(|v| v.as_u64().ok_or_else(bad)).collect()
    };
    let shape: Vec<usize> = ints("shape")?.into_iter().map(|d| d as usize).collect();
    let offsets = ints("data_offsets")?;
    let [begin, end] = offsets[..] else { return Err(bad()) };
    Ok(TensorInfo { name, dtype, shape, begin, end })
}

/// Checks that every tensor's bytes lie inside the file, that tensors neither overlap nor leave gaps,
/// that each holds exactly `numel x dtype size` bytes, and that the file is exactly as long as the
/// header implies. Errors name the file and the first tensor that is broken.
pub fn check_extent(path: &Path, header: &Header, file_len: u64) -> Result<()> {
    let p = path.display();
    let mut expected_begin = 0;
    for t in &header.tensors {
        let elem =
            dtype_bytes(&t.dtype).with_context(|| format!("{p}: tensor {} has unknown dtype {}", t.name, t.dtype))?;
        let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
        if t.end < t.begin || t.end - t.begin != numel * elem {
            bail!(
                "{p}: tensor {} ({} {:?}) should hold {} bytes but its offsets {}..{} give {}",
                t.name,
                t.dtype,
                t.shape,
                numel * elem,
                t.begin,
                t.end,
                t.end.saturating_sub(t.begin)
            );
        }
        if t.begin != expected_begin {
            bail!("{p}: tensor {} starts at data offset {} but the previous tensor ends at {expected_begin} (overlapping or gapped data)", t.name, t.begin);
        }
        expected_begin = t.end;
    }
    if let Some(i) = header.tensors.iter().position(|t| header.data_start + t.end > file_len) {
        let t = &header.tensors[i];
        let more = header.tensors.len() - i - 1;
        bail!(
            "{p}: truncated: tensor {} needs bytes {}..{} but the file has {file_len}{}; the copy or download was cut short, fetch it again",
            t.name,
            header.data_start + t.begin,
            header.data_start + t.end,
            if more > 0 { format!(" ({more} more tensors lie past the end)") } else { String::new() }
        );
    }
    let want = header.data_start + header.data_bytes();
    if file_len != want {
        bail!(
            "{p}: the header implies {want} bytes but the file has {file_len} ({} extra bytes at the end)",
            file_len - want
        );
    }
    Ok(())
}

/// An opened, structure-checked safetensors file (memory-mapped).
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub header: Header,
    map: memmap2::Mmap,
}

impl SafetensorsFile {
    /// Opens `path`, parses its header and checks its extent ([`check_extent`]).
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let (header, file_len) = read_header(path)?;
        check_extent(path, &header, file_len)?;
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: model files are replaced by rename, never modified in place while we read them.
        let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
        if map.len() as u64 != file_len {
            bail!("{}: the file changed while it was being opened; try again", path.display());
        }
        Ok(SafetensorsFile { path: path.to_path_buf(), header, map })
    }

    /// The raw bytes of tensor `t`.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_start + t.begin) as usize;
        &self.map[start..start + (t.end - t.begin) as usize]
    }

    /// Tensor `t` converted to f32 (F32, BF16 and F16 only).
    pub fn values(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let dtype = Dtype::parse(&t.dtype).with_context(|| {
            format!("{}: tensor {} has dtype {}; Genesis reads F32, BF16 and F16", self.path.display(), t.name, t.dtype)
        })?;
        Ok(dtype.decode(self.bytes(t)))
    }
}

/// A tensor to write: its name, dtype and shape (its bytes come from the writer's callback).
#[derive(Clone, Debug)]
pub struct TensorOut {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// Writes a safetensors file at `path` atomically (`<path>.tmp`, fsync, rename, directory fsync),
/// streaming: `fill(i, buf)` appends the bytes of `tensors[i]` to an empty `buf`. Tensors are stored in
/// the given order; the header is padded with spaces so the data starts 8-byte aligned. Returns the
/// file's size and sha256 (hex), computed while writing.
pub fn write_safetensors(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[TensorOut],
    mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<(u64, String)> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0u64;
    for t in tensors {
        let bytes = t.shape.iter().product::<usize>() as u64 * t.dtype.size() as u64;
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&Value::Object(header))?;
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let tmp = crate::util::tmp_path(path);
    let result = (|| -> Result<(u64, String)> {
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w =
            HashingWriter { inner: std::io::BufWriter::with_capacity(1 << 20, file), hash: Sha256::new(), n: 0 };
        let io = |e: std::io::Error| anyhow::Error::new(e).context(format!("cannot write {}", tmp.display()));
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(io)?;
        let mut buf = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            buf.clear();
            fill(i, &mut buf)?;
            let want = t.shape.iter().product::<usize>() * t.dtype.size();
            if buf.len() != want {
                bail!(
                    "internal error writing {}: tensor {} produced {} bytes, expected {want}",
                    path.display(),
                    t.name,
                    buf.len()
                );
            }
            w.write_all(&buf).map_err(io)?;
        }
        let HashingWriter { inner, hash, n } = w;
        let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok((n, crate::util::hex(&hash.finalize())))
    })();
    let done = result.and_then(|r| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(r)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let r = done?;
    crate::util::sync_parent_dir(path)?;
    Ok(r)
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

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
/// (50257 -> 50304).
pub fn padded_vocab(vocab: usize) -> usize {
    vocab.div_ceil(128) * 128
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
    let config = ModelConfig {
        max_seq_len: size(&["n_positions", "max_position_embeddings", "n_ctx"])?,
        vocab_size,
        padded_vocab_size: padded_vocab(vocab_size),
        num_layers: size(&["n_layer", "num_hidden_layers"])?,
        num_heads: size(&["n_head", "num_attention_heads"])?,
        channels: size(&["n_embd", "hidden_size"])?,
    };
    let c4 = 4 * config.channels;
    check_config_field(path, &v, "n_inner", |x| x.as_u64() == Some(c4 as u64), &format!("null or 4 x n_embd = {c4}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
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
    let info: ExportInfo = serde_json::from_slice(&text).with_context(|| {
        format!("{} is not a genesis.json Genesis can read (damaged? export again or delete it)", path.display())
    })?;
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
            config.padded_vocab_size = e.config.padded_vocab_size;
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
    Ok(Gpt2File { file, config, tied: hf.tied, tensors, lm_head, export })
}

/// Loads a Hugging Face GPT-2 `model.safetensors` (with `config.json` beside it) into our flat f32
/// buffer: names with or without the `transformer.` prefix, F32/BF16/F16, Conv1D weights transposed,
/// vocabulary rows padded with zeros. Returns the shape, the parameters and `genesis.json` if present.
pub fn load(path: &Path) -> Result<(ModelConfig, Vec<f32>, Option<ExportInfo>)> {
    let g = open_gpt2(path)?;
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
    if let Some(head) = &g.lm_head {
        let wte = &params[..g.config.vocab_size * g.config.channels];
        if g.file.values(head)? != wte {
            bail!(
                "{}: lm_head.weight differs from transformer.wte.weight; Genesis ties the output layer to the token embedding and cannot run an untied model",
                path.display()
            );
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
    fn dtypes_round_trip_their_own_values() {
        let values = [0.0f32, -1.5, 3.140625, 1e-3, 65504.0];
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            let mut bytes = Vec::new();
            dtype.encode(&values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let once = dtype.decode(&bytes);
            let mut again = Vec::new();
            dtype.encode(&once, &mut again);
            assert_eq!(again, bytes, "{dtype}");
            assert_eq!(Dtype::parse(dtype.name()), Some(dtype));
            assert_eq!(Dtype::from_arg(&dtype.to_string()), Some(dtype));
        }
        let mut exact = Vec::new();
        Dtype::F32.encode(&values, &mut exact);
        assert_eq!(Dtype::F32.decode(&exact), values);
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
