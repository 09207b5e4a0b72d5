//! The safetensors container: a JSON header naming each tensor's dtype, shape and byte range, then
//! the tensors' bytes. Read through a checked memory map ([`SafetensorsFile`]) and written
//! atomically in one streaming pass ([`write_safetensors`]). Which tensors a model needs, and under
//! what names, is for the caller (GPT-2's are in [`hf`](crate::hf)).
//!
//! Layout (written and read here by hand; the format is three lines of spec):
//! ```text
//! u64 LE  N                 header length
//! N bytes JSON header       {"__metadata__": {..}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..}
//! data                      the tensors' bytes, row-major little-endian, offsets relative to the end of the header
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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
        // Checked: a shape such as [2^32, 2^32] must not wrap to a size that matches its bytes.
        let want = t.shape.iter().try_fold(elem, |a, &d| a.checked_mul(d as u64)).with_context(|| {
            format!(
                "{p}: tensor {} has shape {:?}, whose size in bytes does not fit in 64 bits; the header is damaged or crafted",
                t.name, t.shape
            )
        })?;
        if t.end < t.begin || t.end - t.begin != want {
            bail!(
                "{p}: tensor {} ({} {:?}) should hold {want} bytes but its offsets {}..{} give {}",
                t.name,
                t.dtype,
                t.shape,
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
    if let Some(i) = header.tensors.iter().position(|t| header.data_start.saturating_add(t.end) > file_len) {
        let t = &header.tensors[i];
        let more = header.tensors.len() - i - 1;
        bail!(
            "{p}: truncated: tensor {} needs bytes {}..{} but the file has {file_len}{}; the copy or download was cut short, fetch it again",
            t.name,
            header.data_start.saturating_add(t.begin),
            header.data_start.saturating_add(t.end),
            if more > 0 { format!(" ({more} more tensors lie past the end)") } else { String::new() }
        );
    }
    // Every tensor ends inside the file (checked above), so this cannot overflow.
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

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never, once opened: the header alone is 8 bytes).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
