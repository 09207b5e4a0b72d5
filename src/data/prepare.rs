//! `genesis prepare`: documents -> GPT-2 tokens -> shards, streaming, in parallel, resumable.
//!
//! # The pipeline
//!
//! A reader thread walks the inputs in order and cuts their documents into pieces of about
//! [`PIECE_BYTES`] ([`read_pieces`](crate::data::source::read_pieces)), gathering pieces into
//! batches of about `batch_bytes` of text. The main thread encodes each batch's pieces in parallel
//! (rayon), then appends them in order to the split they belong to, each document preceded by
//! end-of-text ([`EOT_TOKEN`]). Only two batches are in memory at once, so memory is bounded by the
//! batch size whatever the corpus size. Batch and piece boundaries depend only on the text, never
//! on the thread count, and cutting a document into pieces does not change its encoding (see
//! [`cut`](crate::data::cut)), so the shards are byte-for-byte the same on every machine.
//!
//! # Splits
//!
//! Inputs of a named dataset carry their split (wikitext's own train / validation / test). Other
//! inputs are split by whole documents: document `i` (counting from 0 over all inputs) is held out
//! for validation when `floor((i+1)·f) > floor(i·f)` for `f = val_fraction`, i.e. every `1/f`-th
//! document, evenly spread.
//!
//! # Shards and interruption
//!
//! Each split is written as `{split}_NNNNNN.bin` shards of `shard_tokens` tokens (llm.c's format;
//! the last shard holds the rest). The open shard grows in `{name}.tmp`; a full one gets its header
//! count, is fsynced and renamed. After every batch the open shards are fsynced and a journal
//! ([`JOURNAL_FILE`]) records the input position, the split of the open document and each split's
//! shards, atomically. The manifest is written last and the journal removed. A re-run after a
//! crash or kill reads the journal, cuts the open shards back to the lengths it records, skips the
//! pieces already consumed (reading them, not encoding them) and carries on; because everything is
//! deterministic the result is byte-identical to an uninterrupted run.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::cut::split_for_encoding;
use crate::data::manifest::{
    held_out_count, val_split_options, Manifest, Settings, ShardInfo, SourceInfo, Split, SplitInfo, TokenizerInfo,
    JOURNAL_FILE, MANIFEST_FILE, MANIFEST_VERSION,
};
use crate::data::shard::{header_bytes, is_shard_name, shard_file_name, HEADER_BYTES};
use crate::data::source::{read_pieces, Docs, Format, Piece, SourceFile, SourceOptions};
use crate::data::tokenizer::Tokenizer;
use crate::model::EOT_TOKEN;
use crate::util::sha256_file;
use crate::util::{sync_parent_dir, tmp_path};

/// Tokens per shard (as in llm.c's dataset scripts): 200 MB files.
pub const SHARD_TOKENS: usize = 100_000_000;
/// Target size of the pieces encoded in parallel.
pub const PIECE_BYTES: usize = 1 << 20;
/// Text gathered before a round of parallel encoding; two batches are in memory at once.
pub const BATCH_BYTES: usize = 8 << 20;
/// Target chunk size of [`encode_parallel`].
pub const CHUNK_BYTES: usize = PIECE_BYTES;
/// All splits, in the order they are written.
const SPLITS: [Split; 3] = [Split::Train, Split::Val, Split::Test];

/// One input file of a run.
#[derive(Debug, Clone)]
pub struct Input {
    pub file: SourceFile,
    /// Every document of the file goes to this split; `None`: `val_fraction` decides.
    pub split: Option<Split>,
    /// Where the file was downloaded from (recorded in the manifest).
    pub url: Option<String>,
    /// The file's sha256 when already known (checked downloads), to avoid hashing it again.
    pub sha256: Option<String>,
}

impl Input {
    /// A local file whose documents are split by `val_fraction`.
    pub fn local(file: SourceFile) -> Self {
        Input { file, split: None, url: None, sha256: None }
    }
}

/// How to prepare. [`PrepareConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// The dataset's name, recorded in the manifest.
    pub name: String,
    pub source: SourceOptions,
    /// Share of documents held out for validation (inputs without a fixed split).
    pub val_fraction: f64,
    pub shard_tokens: usize,
    /// Text per round of parallel encoding (and per journal update).
    pub batch_bytes: usize,
    pub piece_bytes: usize,
    /// Recorded in the manifest for named datasets.
    pub origin: Option<String>,
    /// Replace a finished dataset made from other inputs or settings.
    pub force: bool,
    /// Print progress lines on stderr.
    pub progress: bool,
}

impl PrepareConfig {
    pub fn new(name: &str) -> Self {
        PrepareConfig {
            name: name.to_string(),
            source: SourceOptions::default(),
            val_fraction: 0.1,
            shard_tokens: SHARD_TOKENS,
            batch_bytes: batch_bytes_from_env(),
            piece_bytes: PIECE_BYTES,
            origin: None,
            force: false,
            progress: true,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            docs: self.source.docs,
            field: self.source.field.clone(),
            val_fraction: self.val_fraction,
            shard_tokens: self.shard_tokens as u64,
        }
    }
}

/// `GENESIS_PREPARE_BATCH_BYTES` overrides [`BATCH_BYTES`] (tests use small batches to interrupt a
/// run between journal updates). Batches decide only when work is done and recorded, never the
/// output bytes.
fn batch_bytes_from_env() -> usize {
    std::env::var("GENESIS_PREPARE_BATCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(BATCH_BYTES)
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub manifest: Manifest,
    /// The directory already held this dataset; nothing was done.
    pub already_done: bool,
    /// An interrupted run was continued.
    pub resumed: bool,
    /// Text bytes encoded by this run (less than the corpus when resumed).
    pub text_bytes: u64,
    pub seconds: f64,
}

/// Everything that decides the output bytes; a journal is only resumed under the same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    inputs: Vec<PlanInput>,
    settings: Settings,
    /// Positions are counted in pieces, whose size depends on this (the tokens do not).
    piece_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PlanInput {
    path: String,
    format: Format,
    split: Option<Split>,
    bytes: u64,
    modified_ns: u128,
}

/// One split's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SplitState {
    documents: u64,
    /// Tokens in finished shards and the open one.
    tokens: u64,
    finished: Vec<ShardInfo>,
    /// Tokens in the open shard (`{next shard}.tmp`).
    open_tokens: u64,
}

/// The resume point, written after every batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Journal {
    plan: Plan,
    /// Input being read, and how many of its pieces are already in the shards.
    file: usize,
    pieces: u64,
    /// Documents started so far, over all inputs (decides the val hold-out).
    documents: u64,
    /// Split of the document in progress.
    current: Option<Split>,
    splits: BTreeMap<String, SplitState>,
}

/// Tokenizes `inputs` into `out/{train,val,test}_NNNNNN.bin` plus `out/manifest.json`. See the
/// module docs. Re-running after an interruption finishes the work; re-running after success does
/// nothing.
pub fn prepare(inputs: &[Input], out: &Path, cfg: &PrepareConfig) -> Result<PrepareReport> {
    let start = Instant::now();
    check_config(inputs, cfg)?;
    let tail = tail_holdout(inputs, cfg);
    let with_tail;
    let cfg = match tail {
        Some(from) => {
            with_tail =
                PrepareConfig { source: SourceOptions { tail_from: Some(from), ..cfg.source.clone() }, ..cfg.clone() };
            if cfg.progress {
                eprintln!(
                    "prepare: {} is one document, so its last {}% (from the first paragraph, or line, after byte {from}) \
                     is held out as the val split",
                    inputs[0].file.path.display(),
                    cfg.val_fraction * 100.0
                );
            }
            &with_tail
        }
        None => cfg,
    };
    fs::create_dir_all(out).with_context(|| format!("cannot create output directory {}", out.display()))?;
    let plan = make_plan(inputs, cfg)?;

    match Manifest::load(out) {
        Ok(m) if same_dataset(&m, &plan) && !cfg.force => {
            return Ok(PrepareReport { manifest: m, already_done: true, resumed: false, text_bytes: 0, seconds: 0.0 });
        }
        Ok(_) if !cfg.force => bail!(
            "{} already holds a prepared dataset made from other inputs or settings; pass --force to replace it, \
             or choose another --name",
            out.display()
        ),
        Ok(_) => fs::remove_file(out.join(MANIFEST_FILE))
            .with_context(|| format!("cannot remove the old manifest in {}", out.display()))?,
        Err(_) if out.join(MANIFEST_FILE).exists() && !cfg.force => {
            bail!("{} is unreadable; pass --force to prepare the dataset again", out.join(MANIFEST_FILE).display())
        }
        Err(_) => {}
    }

    let (mut journal, resumed) = match read_journal(out) {
        Some(j) if j.plan == plan => (j, true),
        old => {
            if old.is_some() && cfg.progress {
                eprintln!(
                    "prepare: the inputs or settings changed since the interrupted run in {}; starting over",
                    out.display()
                );
            }
            clean_dir(out)?;
            let splits = SPLITS.iter().map(|s| (s.prefix().to_string(), SplitState::default())).collect();
            (Journal { plan, file: 0, pieces: 0, documents: 0, current: None, splits }, false)
        }
    };
    if resumed && cfg.progress {
        eprintln!(
            "prepare: resuming the interrupted run in {} at input {} of {} ({} documents done)",
            out.display(),
            journal.file + 1,
            inputs.len(),
            journal.documents
        );
    }
    let mut writers = Vec::new();
    for split in SPLITS {
        let state = journal.splits.get(split.prefix()).cloned().unwrap_or_default();
        writers.push(SplitWriter::resume(out, split, cfg.shard_tokens, state)?);
    }

    let tokenizer = Tokenizer::gpt2()?;
    let mut text_bytes = 0u64;
    let mut last_report = Instant::now();
    let (tx, rx) = sync_channel::<Result<Batch>>(1);
    std::thread::scope(|scope| -> Result<()> {
        let (first, skip) = (journal.file, journal.pieces);
        scope.spawn(move || read_batches(inputs, first, skip, cfg, tx));
        for batch in rx {
            let batch = batch?;
            let encoded: Vec<Vec<u32>> = batch.pieces.par_iter().map(|p| tokenizer.encode(&p.text)).collect();
            for ((piece, &input), tokens) in batch.pieces.iter().zip(&batch.input_of).zip(&encoded) {
                if piece.doc_start {
                    let split = inputs[input].split.unwrap_or_else(|| {
                        // A single document's tail is the second document.
                        if tail.is_some() && journal.documents > 0
                            || tail.is_none() && held_out(journal.documents, cfg.val_fraction)
                        {
                            Split::Val
                        } else {
                            Split::Train
                        }
                    });
                    journal.documents += 1;
                    journal.current = Some(split);
                    let w = &mut writers[split_index(split)];
                    w.state.documents += 1;
                    w.push(&[EOT_TOKEN])?;
                }
                let split =
                    journal.current.ok_or_else(|| anyhow!("internal error: a document continues before it starts"))?;
                writers[split_index(split)].push(tokens)?;
            }
            text_bytes += batch.bytes as u64;
            (journal.file, journal.pieces) = batch.end;
            for w in &mut writers {
                w.sync()?;
                journal.splits.insert(w.split.prefix().to_string(), w.state.clone());
            }
            write_journal(out, &journal)?;
            if cfg.progress && last_report.elapsed().as_secs_f64() >= 2.0 {
                last_report = Instant::now();
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "prepare: input {}/{}, {:.1} MB encoded, {} documents, {} tokens, {:.1} MB/s",
                    journal.file + 1,
                    inputs.len(),
                    text_bytes as f64 / 1e6,
                    journal.documents,
                    writers.iter().map(|w| w.state.tokens).sum::<u64>(),
                    text_bytes as f64 / 1e6 / secs
                );
            }
        }
        Ok(())
    })?;

    for w in &mut writers {
        w.finish()?;
    }
    let states: Vec<SplitState> = writers.iter().map(|w| w.state.clone()).collect();
    check_splits(inputs, cfg, &states, journal.documents)?;

    let mut sources = Vec::with_capacity(inputs.len());
    for (input, p) in inputs.iter().zip(&journal.plan.inputs) {
        let sha256 = match &input.sha256 {
            Some(h) => h.clone(),
            None => sha256_file(&input.file.path)?,
        };
        sources.push(SourceInfo {
            path: p.path.clone(),
            url: input.url.clone(),
            format: p.format,
            split: p.split,
            bytes: p.bytes,
            sha256,
        });
    }
    let splits = SPLITS
        .iter()
        .zip(states)
        .filter(|(_, s)| s.tokens > 0)
        .map(|(split, s)| {
            (split.prefix().to_string(), SplitInfo { documents: s.documents, tokens: s.tokens, shards: s.finished })
        })
        .collect();
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: cfg.name.clone(),
        genesis_version: env!("CARGO_PKG_VERSION").to_string(),
        tokenizer: TokenizerInfo::gpt2(),
        settings: cfg.settings(),
        origin: cfg.origin.clone(),
        sources,
        splits,
    };
    manifest.save(out)?;
    fs::remove_file(out.join(JOURNAL_FILE))
        .with_context(|| format!("cannot remove {}", out.join(JOURNAL_FILE).display()))?;
    sync_parent_dir(&out.join(JOURNAL_FILE))?;
    Ok(PrepareReport { manifest, already_done: false, resumed, text_bytes, seconds: start.elapsed().as_secs_f64() })
}

fn check_config(inputs: &[Input], cfg: &PrepareConfig) -> Result<()> {
    if inputs.is_empty() {
        bail!("no inputs to prepare; pass --input PATH (files, directories or globs) or a dataset name");
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        bail!("--val-fraction must be at least 0 and below 1, got {}", cfg.val_fraction);
    }
    if cfg.shard_tokens == 0 || cfg.shard_tokens > i32::MAX as usize {
        bail!("--shard-tokens must be between 1 and {}, got {}", i32::MAX, cfg.shard_tokens);
    }
    // The one case known before reading anything: every text file is a single document (a single
    // file's tail is held out instead: see `tail_holdout`).
    let local: Vec<&Input> = inputs.iter().filter(|i| i.split.is_none()).collect();
    if cfg.val_fraction > 0.0
        && tail_holdout(inputs, cfg).is_none()
        && cfg.source.docs == Docs::Whole
        && !local.is_empty()
        && local.iter().all(|i| i.file.format == Format::Text)
        && held_out_count(local.len() as u64, cfg.val_fraction) == 0
    {
        bail!(
            "cannot hold out {}% of the documents for validation: each text file is one document and there {} only \
             {}. {}",
            cfg.val_fraction * 100.0,
            if local.len() == 1 { "is" } else { "are" },
            local.len(),
            too_few_documents(inputs, cfg, local.len() as u64)
        );
    }
    Ok(())
}

/// Where the held-out tail of a single text document starts: with one local text file read whole
/// and a `val_fraction`, its last `val_fraction` of bytes (cut at a paragraph or line start) is the
/// val split, as nanoGPT users expect.
fn tail_holdout(inputs: &[Input], cfg: &PrepareConfig) -> Option<u64> {
    let [only] = inputs else { return None };
    if only.split.is_some() || only.file.format != Format::Text || cfg.source.docs != Docs::Whole {
        return None;
    }
    if cfg.val_fraction <= 0.0 {
        return None;
    }
    let bytes = fs::metadata(&only.file.path).ok()?.len();
    Some((bytes as f64 * (1.0 - cfg.val_fraction)) as u64)
}

fn check_splits(inputs: &[Input], cfg: &PrepareConfig, states: &[SplitState], documents: u64) -> Result<()> {
    if states[split_index(Split::Train)].tokens == 0 {
        bail!("the inputs produced no training documents; check that they hold text");
    }
    if cfg.source.tail_from.is_some() && states[split_index(Split::Val)].tokens == 0 {
        bail!(
            "cannot hold out {}% of {} for validation: it is one document with no line start in its last {}% to cut \
             at. {}",
            cfg.val_fraction * 100.0,
            inputs[0].file.path.display(),
            cfg.val_fraction * 100.0,
            too_few_documents(inputs, cfg, documents)
        );
    }
    let by_fraction = inputs.iter().any(|i| i.split.is_none());
    if by_fraction && cfg.val_fraction > 0.0 && states[split_index(Split::Val)].tokens == 0 {
        bail!(
            "the inputs hold {documents} document{} (--docs {}), too few to hold out {}% of them for validation. {}",
            if documents == 1 { "" } else { "s" },
            cfg.source.docs.name(),
            cfg.val_fraction * 100.0,
            too_few_documents(inputs, cfg, documents)
        );
    }
    Ok(())
}

/// What to do when the `documents` documents of `inputs` (cut as `cfg` says) are too few to hold
/// out `cfg.val_fraction` of them: only changes that work for these inputs (see
/// [`val_split_options`]), each a flag in backquotes for the same command.
fn too_few_documents(inputs: &[Input], cfg: &PrepareConfig, documents: u64) -> String {
    let files: Vec<SourceFile> = inputs.iter().filter(|i| i.split.is_none()).map(|i| i.file.clone()).collect();
    let o = val_split_options(&files, &cfg.source, documents, cfg.val_fraction);
    let all_text = files.iter().all(|f| f.format == Format::Text);
    let mut text = String::new();
    if !o.would_not.is_empty() {
        text.push_str(&format!("{}. ", o.would_not.join(" and ")));
    }
    let per_file = if all_text { "; with --docs whole each text file is one" } else { "" };
    let more = format!("more input ({}{per_file})", o.more);
    if o.works.is_empty() {
        text.push_str(&format!("Give {more}"));
        if all_text {
            text.push_str(", or put blank lines between the documents of the text and pass --docs paragraphs");
        }
        text.push('.');
    } else {
        let with: Vec<String> = o.works.iter().map(|w| format!("`{w}`")).collect();
        text.push_str(&format!("Run the same command with {}, or give {more}.", with.join(" or with ")));
    }
    text.push_str(" (--val-fraction 0 would leave no validation split, which genesis train needs.)");
    text
}

/// Whether document `i` is held out: every `1/f`-th document, evenly spread.
fn held_out(i: u64, f: f64) -> bool {
    f > 0.0 && ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

fn split_index(split: Split) -> usize {
    SPLITS.iter().position(|&s| s == split).expect("every split is listed")
}

fn make_plan(inputs: &[Input], cfg: &PrepareConfig) -> Result<Plan> {
    let mut plan_inputs = Vec::with_capacity(inputs.len());
    for input in inputs {
        let path = &input.file.path;
        let md =
            fs::metadata(path).with_context(|| format!("input {} does not exist or cannot be read", path.display()))?;
        let modified_ns =
            md.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        plan_inputs.push(PlanInput {
            path: path.display().to_string(),
            format: input.file.format,
            split: input.split,
            bytes: md.len(),
            modified_ns,
        });
    }
    Ok(Plan { inputs: plan_inputs, settings: cfg.settings(), piece_bytes: cfg.piece_bytes })
}

/// Whether a finished manifest was made from these inputs and settings.
fn same_dataset(m: &Manifest, plan: &Plan) -> bool {
    m.settings == plan.settings
        && m.sources.len() == plan.inputs.len()
        && m.sources
            .iter()
            .zip(&plan.inputs)
            .all(|(s, p)| s.path == p.path && s.bytes == p.bytes && s.format == p.format && s.split == p.split)
}

fn read_journal(out: &Path) -> Option<Journal> {
    let text = fs::read_to_string(out.join(JOURNAL_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_journal(out: &Path, journal: &Journal) -> Result<()> {
    let json = serde_json::to_vec(journal).context("cannot serialise the prepare journal")?;
    crate::util::write_atomic(&out.join(JOURNAL_FILE), &json)
}

/// Removes what an earlier run left: shards (finished or not), journal and manifest.
fn clean_dir(out: &Path) -> Result<()> {
    let entries = fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", out.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let base = name.strip_suffix(".tmp").unwrap_or(name);
        let ours =
            SPLITS.iter().any(|s| is_shard_name(base, s.prefix())) || base == JOURNAL_FILE || base == MANIFEST_FILE;
        if ours {
            fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A batch of pieces and where reading stopped after it.
struct Batch {
    pieces: Vec<Piece>,
    /// `inputs` index of each piece.
    input_of: Vec<usize>,
    bytes: usize,
    /// (input, pieces of it consumed) after the last piece.
    end: (usize, u64),
}

/// The reader thread: sends batches of pieces, starting at input `first` after skipping `skip`
/// of its pieces. Stops when the receiver hangs up.
fn read_batches(
    inputs: &[Input],
    first: usize,
    skip: u64,
    cfg: &PrepareConfig,
    tx: std::sync::mpsc::SyncSender<Result<Batch>>,
) {
    let new_batch = |end| Batch { pieces: Vec::new(), input_of: Vec::new(), bytes: 0, end };
    let mut batch = new_batch((first, skip));
    for (i, input) in inputs.iter().enumerate().skip(first) {
        let skip = if i == first { skip } else { 0 };
        let mut k = 0u64;
        let result = read_pieces(&input.file, &cfg.source, cfg.piece_bytes, &mut |piece| {
            k += 1;
            if k <= skip {
                return Ok(());
            }
            batch.bytes += piece.text.len();
            batch.pieces.push(piece);
            batch.input_of.push(i);
            batch.end = (i, k);
            if batch.bytes >= cfg.batch_bytes {
                let full = std::mem::replace(&mut batch, new_batch((i, k)));
                tx.send(Ok(full)).map_err(|_| anyhow!("prepare stopped"))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            let _ = tx.send(Err(e));
            return;
        }
    }
    if !batch.pieces.is_empty() {
        let _ = tx.send(Ok(batch));
    }
}

/// Appends one split's tokens to its shards. See the module docs.
struct SplitWriter {
    split: Split,
    dir: PathBuf,
    shard_tokens: u64,
    state: SplitState,
    /// The open shard's temporary file.
    open: Option<BufWriter<File>>,
    buf: Vec<u8>,
}

impl SplitWriter {
    /// Continues from `state`: the open shard is cut back to the tokens the journal recorded
    /// (recovering it from its final name if a crash hit between its rename and the journal), and
    /// anything past it is removed.
    fn resume(dir: &Path, split: Split, shard_tokens: usize, state: SplitState) -> Result<Self> {
        let index = state.finished.len();
        let final_path = dir.join(shard_file_name(split.prefix(), index));
        let tmp = tmp_path(&final_path);
        let mut open = None;
        if state.open_tokens > 0 {
            if !tmp.exists() && final_path.exists() {
                fs::rename(&final_path, &tmp)
                    .with_context(|| format!("cannot rename {} back to {}", final_path.display(), tmp.display()))?;
            }
            let want = HEADER_BYTES as u64 + 2 * state.open_tokens;
            let file = OpenOptions::new().read(true).write(true).open(&tmp).with_context(|| {
                format!(
                    "{} is missing but the prepare journal needs it; delete {} and run again",
                    tmp.display(),
                    dir.join(JOURNAL_FILE).display()
                )
            })?;
            let have = file.metadata().with_context(|| format!("cannot read {}", tmp.display()))?.len();
            if have < want {
                bail!(
                    "{} holds {have} bytes but the prepare journal recorded {want}; delete {} and run again",
                    tmp.display(),
                    dir.join(JOURNAL_FILE).display()
                );
            }
            file.set_len(want).with_context(|| format!("cannot truncate {}", tmp.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.seek(SeekFrom::End(0)).with_context(|| format!("cannot seek in {}", tmp.display()))?;
            open = Some(w);
        } else {
            remove_if_exists(&tmp)?;
            remove_if_exists(&final_path)?;
        }
        // Shards past the open one belong to the part of the run being redone.
        for later in index + 1.. {
            let path = dir.join(shard_file_name(split.prefix(), later));
            let (a, b) = (path.exists(), tmp_path(&path).exists());
            if !a && !b {
                break;
            }
            remove_if_exists(&path)?;
            remove_if_exists(&tmp_path(&path))?;
        }
        Ok(SplitWriter {
            split,
            dir: dir.to_path_buf(),
            shard_tokens: shard_tokens as u64,
            state,
            open,
            buf: Vec::new(),
        })
    }

    fn open_path(&self) -> PathBuf {
        self.dir.join(shard_file_name(self.split.prefix(), self.state.finished.len()))
    }

    fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            if self.open.is_none() {
                let tmp = tmp_path(&self.open_path());
                let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
                let mut w = BufWriter::with_capacity(1 << 20, file);
                w.write_all(&header_bytes(0)).with_context(|| format!("cannot write {}", tmp.display()))?;
                self.open = Some(w);
            }
            let room = (self.shard_tokens - self.state.open_tokens) as usize;
            let (now, rest) = tokens.split_at(room.min(tokens.len()));
            self.buf.clear();
            self.buf.extend(now.iter().flat_map(|&t| (t as u16).to_le_bytes()));
            let w = self.open.as_mut().expect("opened above");
            w.write_all(&self.buf)
                .with_context(|| format!("cannot write {}", tmp_path(&self.open_path()).display()))?;
            self.state.open_tokens += now.len() as u64;
            self.state.tokens += now.len() as u64;
            tokens = rest;
            if self.state.open_tokens == self.shard_tokens {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    /// Makes the open shard's bytes durable (before the journal records them).
    fn sync(&mut self) -> Result<()> {
        let tmp = tmp_path(&self.open_path());
        if let Some(w) = &mut self.open {
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        Ok(())
    }

    /// Writes the header count, fsyncs, renames to the final name and records the shard.
    fn close_shard(&mut self) -> Result<()> {
        let Some(w) = self.open.take() else { return Ok(()) };
        let path = self.open_path();
        let tmp = tmp_path(&path);
        let io = |e: std::io::Error| anyhow::Error::new(e).context(format!("cannot write {}", tmp.display()));
        let mut file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header_bytes(self.state.open_tokens as i32)).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        sync_parent_dir(&path)?;
        let sha256 = sha256_file(&path)?;
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        self.state.finished.push(ShardInfo { file, tokens: self.state.open_tokens, sha256 });
        self.state.open_tokens = 0;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.state.open_tokens > 0 {
            self.close_shard()?;
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Encodes `text` by cutting it with [`split_for_encoding`] and encoding the chunks in parallel.
/// The result equals `tokenizer.encode(text)` for any chunk size and thread count.
pub fn encode_parallel(tokenizer: &Tokenizer, text: &str, chunk_bytes: usize) -> Vec<u32> {
    let chunks = split_for_encoding(text, chunk_bytes);
    let encoded: Vec<Vec<u32>> = chunks.par_iter().map(|c| tokenizer.encode(c)).collect();
    encoded.concat()
}
