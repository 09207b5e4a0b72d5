//! llm.c model files: a 1024-byte header of 256 little-endian i32, then the 16 parameter tensors in
//! [`ParamLayout`] order (exactly our flat buffer).
//!
//! Header: `[0]` magic 20240326, `[1]` version (3 = fp32, 5 = bf16), `[2]` max_seq_len, `[3]` vocab,
//! `[4]` layers, `[5]` heads, `[6]` channels, `[7]` padded vocab; the rest is zero. We write fp32
//! (version 3) and read both fp32 and bf16 (converted to f32).

use crate::model::{Field, ModelConfig, ParamLayout};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// llm.c's model-file magic number.
pub const MAGIC: i32 = 20240326;
/// Version of an fp32 model file.
pub const VERSION_FP32: i32 = 3;
/// Version of a bf16 model file.
pub const VERSION_BF16: i32 = 5;
/// Header ints (1024 bytes).
pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

fn header_int(path: &Path, name: &str, x: usize) -> Result<i32> {
    i32::try_from(x).with_context(|| format!("{}: {name} = {x} does not fit the llm.c header", path.display()))
}

/// Writes `params` (laid out by `cfg`) as an llm.c fp32 model file atomically (`crate::util::write_atomic`:
/// `<path>.tmp`, fsync, rename, directory fsync), so a crash never leaves a half-written file at `path`.
pub fn write_model(path: &Path, cfg: &ModelConfig, params: &[f32]) -> Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let layout = ParamLayout::new(cfg);
    if params.len() != layout.total {
        bail!(
            "{}: parameter buffer has {} floats but the model {cfg} needs {}",
            path.display(),
            params.len(),
            layout.total
        );
    }
    let mut header = [0i32; HEADER_INTS];
    header[0] = MAGIC;
    header[1] = VERSION_FP32;
    header[2] = header_int(path, "max_seq_len", cfg.max_seq_len)?;
    header[3] = header_int(path, "vocab_size", cfg.vocab_size)?;
    header[4] = header_int(path, "num_layers", cfg.num_layers)?;
    header[5] = header_int(path, "num_heads", cfg.num_heads)?;
    header[6] = header_int(path, "channels", cfg.channels)?;
    header[7] = header_int(path, "padded_vocab_size", cfg.padded_vocab_size)?;

    let mut bytes = Vec::with_capacity(HEADER_BYTES + params.len() * 4);
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for p in params {
        bytes.extend_from_slice(&p.to_le_bytes());
    }

    crate::util::write_atomic(path, &bytes)
}

/// What an llm.c header says: the model shape, the version and bytes per parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlmcHeader {
    pub config: ModelConfig,
    /// [`VERSION_FP32`] or [`VERSION_BF16`].
    pub version: i32,
    /// 4 (fp32) or 2 (bf16).
    pub elem_bytes: usize,
}

impl LlmcHeader {
    /// The exact length of a file with this header: the header and every parameter.
    pub fn file_bytes(&self) -> u64 {
        // ModelConfig::new checked that the parameter bytes fit in 64 bits.
        HEADER_BYTES as u64 + ParamLayout::new(&self.config).total as u64 * self.elem_bytes as u64
    }
}

/// What the llm.c header calls each [`ModelConfig`] field, for errors.
fn header_name(f: Field) -> String {
    let (i, name) = match f {
        Field::MaxSeqLen => (2, "max_seq_len"),
        Field::VocabSize => (3, "vocab_size"),
        Field::NumLayers => (4, "num_layers"),
        Field::NumHeads => (5, "num_heads"),
        Field::Channels => (6, "channels"),
        Field::PaddedVocabSize => (7, "padded_vocab_size"),
    };
    format!("{name} (header int {i})")
}

/// Reads and checks the 1024-byte header of the llm.c model file at `path` (magic, version, a model
/// shape [`ModelConfig::new`] accepts) and checks the file's length against it: everything
/// [`read_model`] checks before it reads the parameters, and what `genesis verify` runs.
pub fn read_header(path: &Path) -> Result<(LlmcHeader, u64)> {
    let p = path.display();
    let mut f = File::open(path).with_context(|| format!("cannot open model file {p}"))?;
    let file_len = f.metadata().with_context(|| format!("cannot stat {p}"))?.len();
    if file_len < HEADER_BYTES as u64 {
        bail!("{p}: too short for an llm.c model file: {file_len} bytes, the header alone is {HEADER_BYTES}; copy it again");
    }
    let mut bytes = [0u8; HEADER_BYTES];
    f.read_exact(&mut bytes).with_context(|| format!("cannot read the header of {p}"))?;
    let header: Vec<i32> = bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if header[0] != MAGIC {
        bail!("{p}: bad magic number {} (expected {MAGIC}); not an llm.c model file", header[0]);
    }
    let elem_bytes = match header[1] {
        VERSION_FP32 => 4,
        VERSION_BF16 => 2,
        v => bail!("{p}: unknown llm.c model version {v} (supported: {VERSION_FP32} = fp32, {VERSION_BF16} = bf16)"),
    };
    let field = |i: usize, f: Field| -> Result<usize> {
        usize::try_from(header[i])
            .ok()
            .with_context(|| format!("{p}: {} is {}; it must be positive", header_name(f), header[i]))
    };
    let config = ModelConfig::new(
        field(2, Field::MaxSeqLen)?,
        field(3, Field::VocabSize)?,
        field(7, Field::PaddedVocabSize)?,
        field(4, Field::NumLayers)?,
        field(5, Field::NumHeads)?,
        field(6, Field::Channels)?,
    )
    .map_err(|e| anyhow::anyhow!("{p}: {}", e.message(header_name)))?;
    let h = LlmcHeader { config, version: header[1], elem_bytes };
    let want = h.file_bytes();
    if file_len < want {
        bail!(
            "{p}: truncated (size mismatch): the header ({config}) implies {want} bytes but the file has {file_len}; copy it again"
        );
    }
    if file_len > want {
        bail!(
            "{p}: size mismatch: the header ({config}) implies {want} bytes but the file has {file_len} ({} extra)",
            file_len - want
        );
    }
    Ok((h, file_len))
}

/// Reads an llm.c model file (fp32 v3 or bf16 v5) into its config and an f32 parameter buffer. The
/// header and the file's length are checked ([`read_header`]) before the parameters are read.
pub fn read_model(path: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let (h, _) = read_header(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading model file {}", path.display()))?;
    if bytes.len() as u64 != h.file_bytes() {
        bail!("{}: the file changed while it was being read; try again", path.display());
    }
    let data = &bytes[HEADER_BYTES..];
    let params: Vec<f32> = if h.elem_bytes == 4 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        data.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
    };
    Ok((h.config, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gpt::init_params;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("genesis-llmc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("model.bin")
    }

    #[test]
    fn round_trip_is_exact() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let params = init_params(&cfg, 1337);
        let path = scratch("roundtrip");
        write_model(&path, &cfg, &params).unwrap();
        assert!(!crate::util::tmp_path(&path).exists());
        let (cfg2, params2) = read_model(&path).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(params2.len(), params.len());
        assert!(params.iter().zip(&params2).all(|(a, b)| a.to_bits() == b.to_bits()));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + params.len() * 4);
        assert_eq!(&bytes[..4], &MAGIC.to_le_bytes());
        assert_eq!(&bytes[4..8], &3i32.to_le_bytes());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn reads_bf16() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let params = init_params(&cfg, 3);
        let path = scratch("bf16");
        write_model(&path, &cfg, &params).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut out = bytes[..HEADER_BYTES].to_vec();
        out[4..8].copy_from_slice(&VERSION_BF16.to_le_bytes());
        for p in &params {
            out.extend_from_slice(&half::bf16::from_f32(*p).to_bits().to_le_bytes());
        }
        std::fs::write(&path, out).unwrap();
        let (cfg2, params2) = read_model(&path).unwrap();
        assert_eq!(cfg2, cfg);
        for (a, b) in params.iter().zip(&params2) {
            assert!((a - b).abs() <= a.abs() / 128.0, "{a} vs {b}");
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn truncated_file_is_an_error_naming_the_sizes() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let params = init_params(&cfg, 1);
        let path = scratch("truncated");
        write_model(&path, &cfg, &params).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = format!("{:#}", read_model(&path).unwrap_err());
        assert!(err.contains("size mismatch"), "{err}");
        assert!(err.contains(&bytes.len().to_string()), "{err}");
        assert!(err.contains(&(bytes.len() - 10).to_string()), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(format!("{:#}", read_model(&path).unwrap_err()).contains("too short"));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn bad_magic_and_version_are_errors() {
        let path = scratch("header");
        let mut header = vec![0u8; HEADER_BYTES];
        header[..4].copy_from_slice(&1234i32.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        let err = format!("{:#}", read_model(&path).unwrap_err());
        assert!(err.contains("bad magic") && err.contains(&path.display().to_string()), "{err}");
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&7i32.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        let err = format!("{:#}", read_model(&path).unwrap_err());
        assert!(err.contains("unknown llm.c model version 7"), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
