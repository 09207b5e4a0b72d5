//! llm.c token shards.
//!
//! Layout: a 1024-byte header of 256 little-endian `i32`s, of which `[0]` is the magic
//! [`SHARD_MAGIC`], `[1]` the version [`SHARD_VERSION`] and `[2]` the token count `n`; the rest are
//! zero. Then `n` little-endian `u16` tokens. The file is exactly `1024 + 2 * n` bytes.
//!
//! Shards are written atomically ([`write_shard`]) and read through a memory map ([`Shard`]) that
//! is fully validated on open, so the training loop can index tokens without further checks.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::model::VOCAB_SIZE;
use crate::util::{sync_parent_dir, tmp_path};

/// First header word of every shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// Second header word: the format version.
pub const SHARD_VERSION: i32 = 1;
/// Header size in bytes (256 `i32`s).
pub const HEADER_BYTES: usize = 1024;
const HEADER_INTS: usize = HEADER_BYTES / 4;

// The token payload starts at byte 1024 of a page-aligned map, so viewing it as `u16`s is aligned,
// and the bytes are little-endian on disk, which is what a plain cast reads on these targets.
#[cfg(not(target_endian = "little"))]
compile_error!("token shards are read by casting little-endian bytes; big-endian hosts are not supported");

/// The shard file name for `prefix` ("train" / "val") and a shard index: `train_000003.bin`.
pub fn shard_file_name(prefix: &str, index: usize) -> String {
    format!("{prefix}_{index:06}.bin")
}

/// Whether `name` looks like `{prefix}_<digits>.bin` (so `train_000000.bin.tmp` does not count).
pub fn is_shard_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|rest| rest.strip_suffix(".bin"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// All `{prefix}_<digits>.bin` files directly in `dir`, sorted by name.
///
/// A missing directory is an error that names it.
pub fn list_shards(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        if dir.exists() {
            bail!("{} is not a directory", dir.display());
        }
        bail!("data directory {} does not exist", dir.display());
    }
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list directory {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_shard_name(name, prefix) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `tokens` as a shard at `path`, atomically: the data goes to `<path>.tmp`, is fsynced,
/// renamed over `path`, and the directory is fsynced. A crash leaves either the old file or the new
/// one at `path`, never a partial one.
///
/// Refuses tokens outside the GPT-2 vocabulary, so every written shard passes [`Shard::open`].
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    if tokens.len() > i32::MAX as usize {
        bail!("{}: {} tokens do not fit in one shard (the header count is an i32)", path.display(), tokens.len());
    }
    if let Some(i) = tokens.iter().position(|&t| t as usize >= VOCAB_SIZE) {
        bail!(
            "{}: refusing to write token {} at position {i}; the GPT-2 vocabulary has {VOCAB_SIZE} tokens",
            path.display(),
            tokens[i]
        );
    }
    let tmp = tmp_path(path);
    let result = write_file(&tmp, tokens).and_then(|()| {
        fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent_dir(path)
}

/// The 1024-byte shard header for `count` tokens.
pub fn header_bytes(count: i32) -> Vec<u8> {
    let mut header = [0i32; HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = count;
    header.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn write_file(tmp: &Path, tokens: &[u16]) -> Result<()> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| anyhow::Error::new(e).context(format!("cannot write {}", tmp.display()));
    w.write_all(&header_bytes(tokens.len() as i32)).map_err(io)?;
    for chunk in tokens.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// A validated, memory-mapped token shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    len: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl Shard {
    /// Maps `path` and checks magic, version, file size against the header count, and that every
    /// token is inside the GPT-2 vocabulary. Errors name the file and say what was expected.
    pub fn open(path: &Path) -> Result<Shard> {
        let name = path.display();
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{name}: shard file does not exist")
            } else {
                anyhow::Error::new(e).context(format!("{name}: cannot open shard"))
            }
        })?;
        let size = file.metadata().with_context(|| format!("{name}: cannot read file metadata"))?.len();
        if size < HEADER_BYTES as u64 {
            bail!(
                "{name}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header; \
                 the file is truncated or not a Genesis/llm.c shard"
            );
        }
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody truncating or
        // rewriting the file in place while it is open (write_shard replaces files by rename).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{name}: cannot mmap"))?;
        let word = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap());
        let (magic, version, count) = (word(0), word(1), word(2));
        if magic != SHARD_MAGIC {
            bail!(
                "{name}: magic number is {magic}, expected {SHARD_MAGIC}; \
                 this is not a Genesis/llm.c token shard"
            );
        }
        if version != SHARD_VERSION {
            bail!("{name}: shard version is {version}, expected {SHARD_VERSION}");
        }
        if count < 0 {
            bail!("{name}: header says {count} tokens; the header is corrupt");
        }
        let len = count as usize;
        let expected = HEADER_BYTES as u64 + 2 * len as u64;
        if size != expected {
            let what = if size < expected {
                "the file is truncated or not a Genesis/llm.c shard"
            } else {
                "the file has trailing bytes or is not a Genesis/llm.c shard"
            };
            bail!(
                "{name}: file is {size} bytes but its header says {len} tokens \
                 (expected {expected} bytes); {what}"
            );
        }
        let shard = Shard { path: path.to_path_buf(), map, len };
        if let Some(i) = shard.tokens().iter().position(|&t| t as usize >= VOCAB_SIZE) {
            bail!(
                "{name}: the token at position {i} (byte offset {}) is {}, but the GPT-2 vocabulary \
                 has {VOCAB_SIZE} tokens; re-run `genesis prepare`",
                HEADER_BYTES + 2 * i,
                shard.tokens()[i]
            );
        }
        Ok(shard)
    }

    /// The tokens, straight from the map.
    pub fn tokens(&self) -> &[u16] {
        bytemuck::cast_slice(&self.map[HEADER_BYTES..HEADER_BYTES + 2 * self.len])
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(shard_file_name("train", 3), "train_000003.bin");
        assert!(is_shard_name("train_000003.bin", "train"));
        assert!(is_shard_name("val_1234567.bin", "val"));
        assert!(!is_shard_name("train_000003.bin.tmp", "train"));
        assert!(!is_shard_name("train_.bin", "train"));
        assert!(!is_shard_name("train_00a.bin", "train"));
        assert!(!is_shard_name("val_000000.bin", "train"));
        assert!(!is_shard_name("trainx_000000.bin", "train"));
    }
}
