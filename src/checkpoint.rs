//! The checkpoint file: one self-describing file that is either whole or absent.
//!
//! Layout (little-endian):
//! ```text
//! b"GENESIS\0"            8 bytes magic
//! u32 format version      (FORMAT_VERSION)
//! u32 header length H
//! H bytes of JSON         {"config": ModelConfig, "step": .., "meta": {..}, "sections": [{name, dtype, offset, bytes, crc32}]}
//! u32 crc32 of the JSON
//! zero padding to a 64-byte boundary, then each section's bytes at its offset (64-byte aligned)
//! ```
//! Every section carries its own CRC-32, so damage is reported with the section it hit. Files are written
//! to `<name>.tmp`, fsynced, renamed into place and the directory fsynced: a crash at any moment leaves
//! either the old file or the new one, never a torn one.

use crate::model::{ModelConfig, ParamLayout, RawModelConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"GENESIS\0";
pub const FORMAT_VERSION: u32 = 1;
const ALIGN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionInfo {
    pub name: String,
    pub dtype: String,
    pub offset: u64,
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    /// Checked by [`ModelConfig::new`] after reading, so the error can name the file.
    config: RawModelConfig,
    step: u64,
    #[serde(default)]
    meta: serde_json::Value,
    sections: Vec<SectionInfo>,
}

/// A loaded checkpoint: the model config, the step it was taken at, free-form metadata and its
/// named f32 sections ("params" always; later formats add optimizer state).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub step: u64,
    pub meta: serde_json::Value,
    pub sections: Vec<(String, Vec<f32>)>,
}

impl Checkpoint {
    pub fn new(config: ModelConfig, step: u64, params: Vec<f32>) -> Self {
        Checkpoint { config, step, meta: serde_json::Value::Null, sections: vec![("params".to_string(), params)] }
    }

    pub fn section(&self, name: &str) -> Option<&[f32]> {
        self.sections.iter().find(|s| s.0 == name).map(|s| s.1.as_slice())
    }

    pub fn params(&self) -> &[f32] {
        self.section("params").expect("checkpoints always hold params")
    }

    pub fn into_params(self) -> Vec<f32> {
        self.sections.into_iter().find(|s| s.0 == "params").map(|s| s.1).expect("checkpoints always hold params")
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Writes `ckpt` to `path` atomically (temporary file, fsync, rename, directory fsync).
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let sections: Vec<(&str, &[f32])> = ckpt.sections.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    write(path, &ckpt.config, ckpt.step, &ckpt.meta, &sections)
}

/// Writes a checkpoint from borrowed sections (no copy of the buffers) atomically: temporary file,
/// fsync, rename, directory fsync. Refuses non-finite values and a "params" section that does not
/// fit `config`.
pub fn write(
    path: &Path,
    config: &ModelConfig,
    step: u64,
    meta: &serde_json::Value,
    sections: &[(&str, &[f32])],
) -> Result<()> {
    let layout = ParamLayout::new(config);
    match sections.iter().find(|s| s.0 == "params") {
        Some((_, p)) if p.len() == layout.total => {}
        Some((_, p)) => bail!("refusing to save: params hold {} values but the model needs {}", p.len(), layout.total),
        None => bail!("refusing to save a checkpoint without a 'params' section"),
    }
    for (name, data) in sections {
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!(
                "refusing to save {}: section '{name}' holds a non-finite value ({}) at index {i}",
                path.display(),
                data[i]
            );
        }
    }
    // Offsets depend on the header length, which depends on the offsets' digits: fix them with
    // a generous fixed-size preamble estimate, then pad the header to it.
    let mut header = Header { config: (*config).into(), step, meta: meta.clone(), sections: vec![] };
    for (name, data) in sections {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        header.sections.push(SectionInfo {
            name: name.to_string(),
            dtype: "f32".into(),
            offset: 0,
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    let mut data_start = align(16 + serde_json::to_vec(&header)?.len() + 64 * sections.len() + 256);
    let json = loop {
        let mut off = data_start;
        for s in &mut header.sections {
            s.offset = off as u64;
            off = align(off + s.bytes as usize);
        }
        let json = serde_json::to_vec(&header)?;
        if 16 + json.len() + 4 <= data_start {
            break json;
        }
        data_start = align(16 + json.len() + 4);
    };

    let tmp = crate::util::tmp_path(path);
    let write = || -> Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&FORMAT_VERSION.to_le_bytes())?;
        f.write_all(&(json.len() as u32).to_le_bytes())?;
        f.write_all(&json)?;
        f.write_all(&crc32fast::hash(&json).to_le_bytes())?;
        let mut pos = 16 + json.len() + 4;
        for (s, (_, data)) in header.sections.iter().zip(sections) {
            f.write_all(&vec![0u8; s.offset as usize - pos])?;
            f.write_all(bytemuck::cast_slice(data))?;
            pos = s.offset as usize + s.bytes as usize;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("writing checkpoint {}", tmp.display())));
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    // Best effort: not every filesystem lets a directory be opened and fsynced.
    let _ = crate::util::sync_parent_dir(path);
    Ok(())
}

/// What a checkpoint's header says: enough to list, compare and size checkpoints without reading them.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub config: ModelConfig,
    pub step: u64,
    pub meta: serde_json::Value,
    pub sections: Vec<SectionInfo>,
    /// Size of the whole file in bytes.
    pub file_bytes: u64,
}

/// Bytes of a full training checkpoint (parameters and both AdamW moments in f32) for `cfg`, within
/// a few KiB of header.
pub fn full_checkpoint_bytes(cfg: &ModelConfig) -> u64 {
    3 * 4 * ParamLayout::new(cfg).total as u64 + 8192
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = File::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    // SAFETY: checkpoints are only ever replaced by rename, never modified in place.
    unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map checkpoint {}", path.display()))
}

/// Parses and checks the header: magic, version, header checksum, a valid config, and every
/// section inside the file. Section contents are not read.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<CheckpointInfo> {
    let p = path.display();
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        bail!("{p} is not a Genesis checkpoint (it does not start with the GENESIS magic)");
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        bail!("{p} has checkpoint format version {version}; this Genesis reads version {FORMAT_VERSION}. Use the Genesis version that wrote it.");
    }
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    if bytes.len() < 16 + hlen + 4 {
        bail!("{p} is truncated: it ends inside the header ({} bytes, header needs {})", bytes.len(), 16 + hlen + 4);
    }
    let json = &bytes[16..16 + hlen];
    let stored = u32::from_le_bytes(bytes[16 + hlen..20 + hlen].try_into().unwrap());
    if crc32fast::hash(json) != stored {
        bail!("{p}: header checksum mismatch; the file is corrupt");
    }
    let header: Header = serde_json::from_slice(json).with_context(|| {
        format!("{p}: the header does not parse; the file is damaged or was not written by this Genesis")
    })?;
    let config = ModelConfig::try_from(header.config).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
    // Sections lie after the header, in order, without overlapping (as `write` lays them out), so
    // reading them all allocates no more than the file holds.
    let mut end_of_previous = 20 + hlen as u64;
    for (i, s) in header.sections.iter().enumerate() {
        let end = s.offset.saturating_add(s.bytes);
        if end > bytes.len() as u64 {
            bail!(
                "{p} is truncated: section '{}' needs bytes {}..{end} but the file has {} bytes (an interrupted copy or download? copy it again)",
                s.name,
                s.offset,
                bytes.len()
            );
        }
        if s.offset < end_of_previous {
            bail!(
                "{p}: section '{}' starts at byte {} and so overlaps the header or the section before it (which ends at byte {end_of_previous}); the file is damaged",
                s.name,
                s.offset
            );
        }
        end_of_previous = end;
        if header.sections[..i].iter().any(|t| t.name == s.name) {
            bail!("{p}: section '{}' appears twice; the file is damaged", s.name);
        }
        if s.dtype != "f32" || s.bytes % 4 != 0 {
            bail!("{p}: section '{}' has dtype {} and {} bytes; expected f32", s.name, s.dtype, s.bytes);
        }
    }
    // `validate` checked that the parameter bytes fit in 64 bits.
    let want = ParamLayout::new(&config).total as u64 * 4;
    match header.sections.iter().find(|s| s.name == "params") {
        Some(s) if s.bytes == want => {}
        Some(s) => bail!("{p}: params hold {} values but its config needs {}", s.bytes / 4, want / 4),
        None => bail!("{p}: no 'params' section"),
    }
    Ok(CheckpointInfo {
        config,
        step: header.step,
        meta: header.meta,
        sections: header.sections,
        file_bytes: bytes.len() as u64,
    })
}

/// The section's bytes after checking its CRC-32.
fn section_bytes<'a>(path: &Path, bytes: &'a [u8], s: &SectionInfo) -> Result<&'a [u8]> {
    let data = &bytes[s.offset as usize..(s.offset + s.bytes) as usize];
    if crc32fast::hash(data) != s.crc32 {
        bail!(
            "{}: section '{}' fails its checksum; the file is corrupt (copy it again or use an earlier checkpoint)",
            path.display(),
            s.name
        );
    }
    Ok(data)
}

fn to_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Reads only the header (checked against its checksum; sections are not read or verified).
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    parse_header(path, &map(path)?)
}

/// Checks the whole file: header and every section's checksum. Returns the header.
pub fn verify(path: &Path) -> Result<CheckpointInfo> {
    let bytes = map(path)?;
    let info = parse_header(path, &bytes)?;
    for s in &info.sections {
        section_bytes(path, &bytes, s)?;
    }
    Ok(info)
}

/// Reads and fully verifies a checkpoint: magic, version, header checksum, each section's bounds and
/// checksum, and that the parameters fit the model config.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = map(path)?;
    let info = parse_header(path, &bytes)?;
    let mut sections = Vec::new();
    for s in &info.sections {
        sections.push((s.name.clone(), to_f32(section_bytes(path, &bytes, s)?)));
    }
    Ok(Checkpoint { config: info.config, step: info.step, meta: info.meta, sections })
}

/// Reads the header and the parameters only (checked against their checksum): what sampling and
/// evaluation need, without the optimizer state.
pub fn load_params(path: &Path) -> Result<(CheckpointInfo, Vec<f32>)> {
    let bytes = map(path)?;
    let info = parse_header(path, &bytes)?;
    let s = info.sections.iter().find(|s| s.name == "params").expect("parse_header checks params");
    let params = to_f32(section_bytes(path, &bytes, s)?);
    Ok((info, params))
}
