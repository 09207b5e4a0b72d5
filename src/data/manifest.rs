//! `manifest.json`: what a prepared dataset directory holds, written last by `genesis prepare`.
//!
//! A directory is a usable dataset only when its manifest exists and every shard it lists is present
//! with the size its token count implies. `prepare` writes the manifest after every shard is
//! fsynced and renamed into place, so a half-prepared directory has no manifest and is refused.
//!
//! Datasets are found by name: `--data wikitext-103` means `data/wikitext-103/` (the data root is
//! `data/` in the current directory, or `$GENESIS_DATA_DIR`), unless the current directory has a
//! directory of that name holding a manifest (`genesis prepare --out d`); anything that looks like a
//! path (contains a `/`, or starts with `.`) is used as a directory as it is.
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
use crate::data::source::{count_documents, Docs, Format, SourceFile, SourceOptions};
use crate::util::shell_word;

/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the manifest's meaning changes incompatibly.
pub const MANIFEST_VERSION: u32 = 1;
/// The journal of an unfinished `prepare`, inside the output directory.
pub const JOURNAL_FILE: &str = "prepare.journal.json";
/// The names `genesis prepare NAME` accepts: the built-in datasets (`shakespeare` ships inside the
/// binary; `datasets::named` pins the others' files). A missing one's error ([`missing_hint`])
/// names that command.
pub const NAMES: [&str; 3] = ["shakespeare", "wikitext-103", "wikitext-2"];

/// Where a test split comes from, for the error of a dataset without one.
const WIKITEXT_TEST: &str = "of the built-in datasets, wikitext-103 and wikitext-2 have a test split";

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
        // Shards live in the dataset directory under their split's name (`train_000000.bin`): a
        // manifest naming `../x`, `/etc/passwd` or another split's file is damaged or hostile, and
        // nothing outside the directory may be read (or hashed by `data inspect --verify`).
        for (split, info) in &m.splits {
            if let Some(s) = info.shards.iter().find(|s| !crate::data::shard::is_shard_name(&s.file, split)) {
                bail!(
                    "{}: the {split} split lists the shard {:?}, which is not a {split}_NNNNNN.bin file in the \
                     dataset directory; the manifest is damaged: re-run `genesis prepare` for this dataset",
                    path.display(),
                    s.file
                );
            }
        }
        Ok(m)
    }

    /// The shard paths of `split`, after checking each exists with the size its token count
    /// implies (contents are validated when the loader maps them).
    pub fn shard_paths(&self, dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
        let Some(info) = self.split(split) else {
            let listed: Vec<&str> = self.splits.iter().filter(|(_, s)| s.tokens > 0).map(|(k, _)| k.as_str()).collect();
            let what = format!("{} has no {split} split (its manifest lists: {})", dir.display(), listed.join(", "));
            match split {
                Split::Val => bail!("{what}; {}", self.val_split_advice(dir)),
                Split::Test if self.split(Split::Val).is_some() => bail!(
                    "{what}; `genesis prepare --input` makes only train and val splits, so evaluate the val split \
                     with --split val ({WIKITEXT_TEST})"
                ),
                Split::Test => bail!(
                    "{what}; `genesis prepare --input` makes only train and val splits, and this dataset has no val \
                     split either: {}, then evaluate it with --split val ({WIKITEXT_TEST})",
                    self.val_split_advice(dir)
                ),
                Split::Train => bail!("{what}; prepare it again from its inputs"),
            }
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

impl Manifest {
    /// How to prepare this dataset (in `dir`) again so that it has a val split: a command that
    /// works for its documents (see [`val_split_options`]).
    fn val_split_advice(&self, dir: &Path) -> String {
        let documents: u64 = self.splits.values().map(|s| s.documents).sum();
        let files: Vec<SourceFile> = self
            .sources
            .iter()
            .map(|s| SourceFile { path: PathBuf::from(&s.path), format: s.format })
            .filter(|f| f.path.is_file())
            .collect();
        let files = if files.len() == self.sources.len() { files } else { Vec::new() };
        let opts = SourceOptions { field: self.settings.field.clone(), docs: self.settings.docs, tail_from: None };
        let options = val_split_options(&files, &opts, documents, 0.0);
        let Some(flags) = options.works.first() else {
            return format!(
                "its {documents} document(s) are too few to hold one out (no --val-fraction can), and more \
                 documents cannot be cut from its inputs; prepare it again from more documents ({})",
                options.more
            );
        };
        let mut cmd = String::from("genesis prepare");
        if self.sources.len() <= 4 {
            for s in &self.sources {
                cmd.push_str(&format!(" --input {}", shell_word(&s.path)));
            }
        } else {
            cmd.push_str(" --input ...");
        }
        let named = dir == data_root().join(&self.name);
        if !named {
            cmd.push_str(&format!(" --out {}", shell_word(&dir.display().to_string())));
        }
        cmd.push_str(&format!(" --name {}", shell_word(&self.name)));
        if !flags.contains("--docs") && self.settings.docs != Docs::Whole {
            cmd.push_str(&format!(" --docs {}", self.settings.docs.name()));
        }
        if self.settings.field != "text" {
            cmd.push_str(&format!(" --field {}", shell_word(&self.settings.field)));
        }
        if self.settings.shard_tokens != 100_000_000 {
            cmd.push_str(&format!(" --shard-tokens {}", self.settings.shard_tokens));
        }
        cmd.push_str(&format!(" {flags} --force"));
        let inputs = if self.sources.len() <= 4 { "" } else { " (with the same inputs as before)" };
        format!("hold out a validation share by preparing it again{inputs}: `{cmd}`")
    }
}

/// The changes to a `genesis prepare` command that give a val split, found by [`val_split_options`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValSplitOptions {
    /// Flags that work, best first, e.g. `--docs paragraphs` or `--val-fraction 0.5`.
    pub works: Vec<String>,
    /// `--docs` modes that would not give enough documents, e.g. `--docs paragraphs gives 1 document`.
    pub would_not: Vec<String>,
    /// How many documents more input needs: `at least 10 documents in all`.
    pub more: String,
}

/// Documents needed to hold out one at `fraction`: the smallest `n` with [`held_out_count`] 1.
pub fn documents_needed(fraction: f64) -> u64 {
    let mut n = (1.0 / fraction).ceil().max(1.0) as u64;
    while n > 1 && held_out_count(n - 1, fraction) >= 1 {
        n -= 1;
    }
    while held_out_count(n, fraction) == 0 {
        n += 1;
    }
    n
}

/// Documents held out of `n` at `fraction`: every `1/fraction`-th, evenly spread.
pub fn held_out_count(n: u64, fraction: f64) -> u64 {
    (n as f64 * fraction).floor() as u64
}

/// The smallest round fraction that holds out at least one of `n >= 2` documents (and keeps one
/// for training): 0.5 for 2, 0.34 for 3, 0.02 for 50.
pub fn fraction_for(n: u64) -> f64 {
    let scale = 10f64.powi((n.max(2) as f64).log10().ceil() as i32).max(10.0);
    let mut f = (scale / n as f64).ceil() / scale;
    while held_out_count(n, f) == 0 {
        f += 1.0 / scale;
    }
    f
}

/// What gives a val split when `files` cut as `opts` says hold `documents` documents, too few for
/// `val_fraction` (0: none asked, 0.1 is aimed at): every other `--docs` mode that applies to all
/// the files is tried by counting its documents (reading stops once there are enough), and a
/// larger `--val-fraction` is offered where at least two documents exist. Only options that work
/// for these files are listed in `works`.
pub fn val_split_options(
    files: &[SourceFile],
    opts: &SourceOptions,
    documents: u64,
    val_fraction: f64,
) -> ValSplitOptions {
    let target = if val_fraction > 0.0 { val_fraction } else { 0.1 };
    let needed = documents_needed(target);
    let mut works = Vec::new();
    let mut would_not = Vec::new();
    let at =
        |f: f64| if val_fraction == 0.0 || f != val_fraction { format!(" --val-fraction {f}") } else { String::new() };
    let mut consider = |docs: Docs, count: u64| {
        let other = docs != opts.docs;
        if other && count <= documents {
            // No more documents than now: what works now works as well without this mode.
            if docs == Docs::Paragraphs {
                let n = if count == 1 { "1 document".to_string() } else { format!("{count} documents") };
                would_not.push(format!(
                    "--docs paragraphs would give only {n} (the text has too few blank-line-separated paragraphs)"
                ));
            }
            return;
        }
        let mode = if other { format!("--docs {}", docs.name()) } else { String::new() };
        let flags = if count >= needed {
            format!("{mode}{}", at(target))
        } else if count >= 2 {
            format!("{mode}{}", at(fraction_for(count)))
        } else {
            return;
        };
        works.push(flags.trim().to_string());
    };
    consider(opts.docs, documents);
    for docs in [Docs::Paragraphs, Docs::Wikitext, Docs::Whole] {
        let applies = files.iter().all(|f| match docs {
            Docs::Paragraphs => f.format == Format::Text,
            Docs::Wikitext => f.format != Format::Jsonl,
            Docs::Whole => true,
        });
        if docs == opts.docs || files.is_empty() || !applies {
            continue;
        }
        let other = SourceOptions { docs, ..opts.clone() };
        let mut count = 0u64;
        for f in files {
            if let Ok(n) = count_documents(f, &other, needed - count) {
                count += n;
            }
            if count >= needed {
                break;
            }
        }
        consider(docs, count);
    }
    works.retain(|w| !w.is_empty());
    works.dedup();
    ValSplitOptions { works, would_not, more: format!("at least {needed} documents in all") }
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

/// Where the dataset `data` lives: the path itself for a path; for a name, the directory of that
/// name in the working directory when it holds a [`MANIFEST_FILE`] (what `genesis prepare --out NAME`
/// wrote), else `data_root()/NAME`.
pub fn resolve(data: &str) -> PathBuf {
    if is_dataset_name(data) && !Path::new(data).join(MANIFEST_FILE).is_file() {
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
