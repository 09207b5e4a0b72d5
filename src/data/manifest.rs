//! `manifest.json`: what a prepared dataset directory holds, written last by `genesis prepare`.
//!
//! A directory is a usable dataset only when its manifest exists and every shard it lists is present
//! with the size its token count implies. `prepare` writes the manifest after every shard is
//! fsynced and renamed into place, so a half-prepared directory has no manifest and is refused.
//!
//! Datasets are found by name: `--data wikitext-103` means `data/wikitext-103/` (the data root is
//! `data/` in the current directory, or `$GENESIS_DATA_DIR`); anything that looks like a path
//! (contains a `/`, or starts with `.`) is used as a directory as it is.
//!
//! The manifest also owns the names the rest of the data layer reads: [`Split`] (train / val /
//! test), the file names inside a dataset directory ([`MANIFEST_FILE`], [`JOURNAL_FILE`]) and the
//! built-in dataset names ([`NAMES`]), so it imports none of the modules that use them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::shard::HEADER_BYTES;
use crate::data::source::{Docs, Format};

/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the manifest's meaning changes incompatibly.
pub const MANIFEST_VERSION: u32 = 1;
/// The journal of an unfinished `prepare`, inside the output directory.
pub const JOURNAL_FILE: &str = "prepare.journal.json";
/// The names `genesis prepare NAME` accepts: the built-in datasets, whose files `datasets::named`
/// pins. A missing one's error ([`missing_hint`]) names that command.
pub const NAMES: [&str; 2] = ["wikitext-103", "wikitext-2"];

/// A dataset split: `train_*.bin`, `val_*.bin` or `test_*.bin` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// The shard file prefix: `"train"`, `"val"` or `"test"`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The tokenizer that made the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `"gpt2"`: tiktoken's `r50k_base` byte-level BPE.
    pub name: String,
    pub vocab_size: u32,
    /// Separates documents; every document starts with it.
    pub eot_token: u32,
}

impl TokenizerInfo {
    pub fn gpt2() -> Self {
        TokenizerInfo {
            name: "gpt2".into(),
            vocab_size: crate::model::VOCAB_SIZE as u32,
            eot_token: crate::model::EOT_TOKEN,
        }
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The path as given (or where a download was stored).
    pub path: String,
    /// Where it was downloaded from, for named datasets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub format: Format,
    /// The split every document of this file goes to; `None` when `val_fraction` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    pub bytes: u64,
    pub sha256: String,
}

/// One written shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the dataset directory, e.g. `train_000000.bin`.
    pub file: String,
    pub tokens: u64,
    pub sha256: String,
}

/// One split's shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<ShardInfo>,
}

/// The options that decide the shards' contents (same options + same inputs = same bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub docs: Docs,
    /// The jsonl field / parquet column holding the text.
    pub field: String,
    pub val_fraction: f64,
    pub shard_tokens: u64,
}

/// The whole manifest. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub name: String,
    pub genesis_version: String,
    pub tokenizer: TokenizerInfo,
    pub settings: Settings,
    /// For named datasets: where they come from (`Salesforce/wikitext@REVISION wikitext-103-raw-v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub sources: Vec<SourceInfo>,
    /// Keyed by split name: `train`, `val`, `test`.
    pub splits: BTreeMap<String, SplitInfo>,
}

impl Manifest {
    /// The split's entry, if it has any tokens.
    pub fn split(&self, split: Split) -> Option<&SplitInfo> {
        self.splits.get(split.prefix()).filter(|s| s.tokens > 0)
    }

    /// Total input bytes.
    pub fn source_bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes).sum()
    }

    /// Writes `dir/manifest.json` atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("cannot serialise the manifest")?;
        crate::util::write_atomic(&dir.join(MANIFEST_FILE), format!("{json}\n").as_bytes())
    }

    /// Reads `dir/manifest.json`. A missing manifest is an error that says how to prepare the data
    /// (see [`missing_hint`]).
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}", missing_hint(dir)),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
        };
        let m: Manifest = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid Genesis manifest; re-run `genesis prepare` for this dataset", path.display())
        })?;
        if m.manifest_version != MANIFEST_VERSION {
            bail!(
                "{}: manifest version {} but this Genesis reads version {MANIFEST_VERSION}; re-run `genesis prepare`",
                path.display(),
                m.manifest_version
            );
        }
        Ok(m)
    }

    /// The shard paths of `split`, after checking each exists with the size its token count
    /// implies (contents are validated when the loader maps them).
    pub fn shard_paths(&self, dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
        let Some(info) = self.split(split) else {
            bail!(
                "{} has no {split} split (its manifest lists: {}); prepare it with a validation share, \
                 e.g. `--val-fraction 0.05`",
                dir.display(),
                self.splits
                    .iter()
                    .filter(|(_, s)| s.tokens > 0)
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let mut paths = Vec::with_capacity(info.shards.len());
        for s in &info.shards {
            let path = dir.join(&s.file);
            // Checked: a damaged manifest's count must not wrap to the file's size.
            let Some(expected) = s.tokens.checked_mul(2).and_then(|b| b.checked_add(HEADER_BYTES as u64)) else {
                bail!(
                    "{}: the manifest says {} holds {} tokens, more than any file can; the dataset is damaged: \
                     re-run `genesis prepare` for it",
                    dir.join(MANIFEST_FILE).display(),
                    s.file,
                    s.tokens
                );
            };
            match fs::metadata(&path) {
                Ok(md) if md.len() == expected => {}
                Ok(md) => bail!(
                    "{}: {} bytes, but the manifest says {} tokens ({expected} bytes); the dataset is damaged: \
                     re-run `genesis prepare` for it",
                    path.display(),
                    md.len(),
                    s.tokens
                ),
                Err(_) => bail!(
                    "{} is listed in {} but missing; the dataset is damaged: re-run `genesis prepare` for it",
                    path.display(),
                    dir.join(MANIFEST_FILE).display()
                ),
            }
            paths.push(path);
        }
        Ok(paths)
    }
}

/// The directory holding prepared datasets: `$GENESIS_DATA_DIR`, else `data` (relative to the
/// current directory).
pub fn data_root() -> PathBuf {
    std::env::var_os("GENESIS_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"))
}

/// Whether `data` names a dataset (`wikitext-103`) rather than a path (`./x`, `data/x`, `/tmp/x`).
pub fn is_dataset_name(data: &str) -> bool {
    !data.is_empty() && !data.contains('/') && !data.contains('\\') && !data.starts_with('.')
}

/// Where the dataset `data` lives: `data_root()/NAME` for a name, the path itself otherwise.
pub fn resolve(data: &str) -> PathBuf {
    if is_dataset_name(data) {
        data_root().join(data)
    } else {
        PathBuf::from(data)
    }
}

/// The error text for a directory with no manifest: what is wrong and the command that fixes it.
pub fn missing_hint(dir: &Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("NAME");
    let named = NAMES.contains(&name);
    let journal = dir.join(JOURNAL_FILE).exists();
    let what = if journal {
        format!("{} holds an unfinished `genesis prepare` (no {MANIFEST_FILE} yet)", dir.display())
    } else if dir.exists() {
        format!("{} has no {MANIFEST_FILE}, so it is not a prepared dataset", dir.display())
    } else {
        format!("no prepared dataset at {}", dir.display())
    };
    let out = if dir == data_root().join(name) { String::new() } else { format!(" --out {}", dir.display()) };
    if named {
        format!("{what}; prepare it with: genesis prepare {name}{out}")
    } else {
        format!("{what}; prepare it with: genesis prepare --input PATH... --name {name}{out}")
    }
}
