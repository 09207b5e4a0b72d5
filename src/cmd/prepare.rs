//! `genesis prepare`: a corpus (a named dataset or local files) to GPT-2 token shards.

use std::path::{Path, PathBuf};

use super::outln;
use anyhow::{bail, Context, Result};
use argh::FromArgs;
use genesis::data::datasets;
use genesis::data::download::DownloadOptions;
use genesis::data::manifest;
use genesis::data::prepare::{prepare, Input, PrepareConfig};
use genesis::data::source::{expand_inputs, Docs, SourceOptions};
use genesis::util::{create_dirs, remove_empty_dirs, DirLock};

/// Turn a corpus into GPT-2 token shards that `genesis train` finds by name.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "prepare",
    example = "genesis prepare shakespeare\ngenesis prepare wikitext-103\ngenesis prepare wikitext-103 --from ~/Downloads/wikitext\ngenesis prepare --input ../shared/data/tinyshakespeare.txt --name shakespeare --docs paragraphs\ngenesis prepare --input 'corpus/*.jsonl' --field content --name mycorpus",
    note = "DATASET is shakespeare, wikitext-103 or wikitext-2. shakespeare is tiny Shakespeare (1.1 MB, public domain), built into Genesis: no network needed; the whole play is one document and its last --val-fraction (default 10%) is the val split. wikitext-103 and wikitext-2: the raw Salesforce/wikitext parquet files are downloaded from Hugging Face at a pinned revision (resumable, retried, each file checked against its pinned sha256) into data/NAME/raw/, and wikitext's train/validation/test splits become the train/val/test shards, one document per article. Set HF_ENDPOINT to use a mirror; without network use --from DIR with the parquet files fetched elsewhere.\n\nWith --input, inputs are .txt/.text/.raw/.md (UTF-8; CRLF becomes LF), .jsonl/.ndjson (the --field string of each line) and .parquet (the --field column of each row) files, directories (searched recursively) and quoted globs. --docs says what a document is: whole (a text file, a jsonl line or a parquet row; the default), paragraphs (blank-line-separated blocks of a text file) or wikitext (articles under ` = Title = ` headings). Every --val-fraction-th document, evenly spread, is held out as the val split; a single text file read whole is one document, so its last --val-fraction (cut at a paragraph or line start) is held out instead.\n\nOutput goes to data/NAME/ (--out to override; $GENESIS_DATA_DIR moves data/): train_000000.bin, val_000000.bin, ... in llm.c's shard format (a 1024-byte header, then uint16 tokens; 100M tokens per shard) and manifest.json (tokenizer, tokens per split and shard, sources with size and sha256), written last. Each document starts with the end-of-text token 50256. Encoding runs on all cores with bounded memory and gives the same bytes whatever the thread count.\n\nSafe to interrupt: shards are written under temporary names, fsynced and renamed, and a journal records progress after every batch; running the same command again finishes the work (byte-identical to an uninterrupted run), and running it after success does nothing. A directory without manifest.json is never used for training. One genesis prepare at a time uses an output directory (a lock file, .genesis.lock); a second one stops at once, naming the first."
)]
pub struct PrepareCmd {
    /// a built-in dataset: shakespeare (no download), wikitext-103 or wikitext-2
    #[argh(positional)]
    dataset: Option<String>,
    /// a file, directory or glob to prepare (repeat for several)
    #[argh(option)]
    input: Vec<String>,
    /// the dataset's name: it goes to data/NAME and trains with --data NAME (default: the first input's file name)
    #[argh(option)]
    name: Option<String>,
    /// output directory (default data/NAME)
    #[argh(option)]
    out: Option<PathBuf>,
    /// what a document is: whole, paragraphs or wikitext (default whole)
    #[argh(option, default = "String::from(\"whole\")")]
    docs: String,
    /// the jsonl field or parquet column holding the text (default text)
    #[argh(option, default = "String::from(\"text\")")]
    field: String,
    /// share of documents held out for validation (default 0.1)
    #[argh(option, default = "0.1")]
    val_fraction: f64,
    /// tokens per shard (default 100000000)
    #[argh(option, default = "100_000_000")]
    shard_tokens: usize,
    /// for a DATASET: a directory holding its parquet files, instead of downloading
    #[argh(option)]
    from: Option<PathBuf>,
    /// replace a dataset already prepared in the output directory from other inputs or settings
    #[argh(switch)]
    force: bool,
}

impl PrepareCmd {
    /// `genesis prepare DATASET` with every option at its default.
    pub fn named(dataset: &str) -> PrepareCmd {
        PrepareCmd {
            dataset: Some(dataset.into()),
            input: Vec::new(),
            name: None,
            out: None,
            docs: "whole".into(),
            field: "text".into(),
            val_fraction: 0.1,
            shard_tokens: genesis::data::prepare::SHARD_TOKENS,
            from: None,
            force: false,
        }
    }
}

pub fn run(c: PrepareCmd) -> Result<()> {
    let docs = match c.docs.as_str() {
        "whole" => Docs::Whole,
        "paragraphs" => Docs::Paragraphs,
        "wikitext" => Docs::Wikitext,
        other => bail!("--docs {other}: expected whole, paragraphs or wikitext"),
    };
    let report = match (&c.dataset, c.input.is_empty()) {
        (Some(name), true) if name == datasets::SHAKESPEARE => {
            if c.name.is_some() {
                bail!("--name is for --input; a built-in dataset is called by its own name (use --out to put it elsewhere)");
            }
            let out = c.out.clone().unwrap_or_else(|| manifest::data_root().join(name));
            let mut cfg = PrepareConfig::new(name);
            cfg.val_fraction = c.val_fraction;
            cfg.shard_tokens = c.shard_tokens;
            cfg.force = c.force;
            let r = locked(&out, || datasets::prepare_shakespeare(&out, cfg))?;
            (r, out, name.clone())
        }
        (Some(name), true) => {
            let Some(ds) = datasets::named(name) else {
                bail!(
                    "unknown dataset {name:?}; the built-in ones are {}. To prepare your own files use --input PATH",
                    manifest::NAMES.join(", ")
                );
            };
            if c.name.is_some() {
                bail!("--name is for --input; a built-in dataset is called by its own name (use --out to put it elsewhere)");
            }
            let out = c.out.clone().unwrap_or_else(|| manifest::data_root().join(name));
            let mut cfg = PrepareConfig::new(name);
            cfg.shard_tokens = c.shard_tokens;
            cfg.force = c.force;
            eprintln!("prepare {name}: about {} MB from {}", ds.download_mb, datasets::hf_endpoint());
            let r = locked(&out, || {
                ds.prepare(&out, &datasets::hf_endpoint(), c.from.as_deref(), cfg, &DownloadOptions::default())
            })?;
            (r, out, name.clone())
        }
        (Some(_), false) => bail!("give either a dataset name or --input PATH, not both"),
        (None, true) => bail!(
            "nothing to prepare: name a dataset ({}) or pass --input PATH (see genesis prepare --help)",
            manifest::NAMES.join(", ")
        ),
        (None, false) => {
            let files = expand_inputs(&c.input)?;
            let name = match &c.name {
                Some(n) => n.clone(),
                None => files[0].path.file_stem().and_then(|s| s.to_str()).unwrap_or("corpus").to_string(),
            };
            if !manifest::is_dataset_name(&name) {
                bail!(
                    "--name {name:?} must be a plain name (no '/', not starting with '.'); use --out for a directory"
                );
            }
            let out = c.out.clone().unwrap_or_else(|| manifest::data_root().join(&name));
            let mut cfg = PrepareConfig::new(&name);
            cfg.source = SourceOptions { field: c.field.clone(), docs, tail_from: None };
            cfg.val_fraction = c.val_fraction;
            cfg.shard_tokens = c.shard_tokens;
            cfg.force = c.force;
            let inputs: Vec<Input> = files.into_iter().map(Input::local).collect();
            (locked(&out, || prepare(&inputs, &out, &cfg))?, out, name)
        }
    };
    let (r, out, name) = report;
    let m = &r.manifest;
    if r.already_done {
        outln!("{} already holds {name}, prepared from the same inputs; nothing to do", out.display());
    } else {
        outln!(
            "prepared {name}{}: {:.1} MB of text in {:.1} s ({:.1} MB/s, {} threads)",
            if r.resumed { " (resumed)" } else { "" },
            r.text_bytes as f64 / 1e6,
            r.seconds,
            r.text_bytes as f64 / 1e6 / r.seconds.max(1e-9),
            rayon::current_num_threads()
        );
    }
    print_splits(m)?;
    // The name when train finds this directory by it, else the path (see manifest::resolve).
    let data_arg = if manifest::resolve(&name) == out { name } else { out.display().to_string() };
    outln!("next: genesis train --data {}", genesis::util::shell_word(&data_arg));
    Ok(())
}

/// Runs `work` with the output directory `out` created (when missing) and locked against other
/// genesis processes for as long as it runs. The directories this call created (`out`, and `data/`
/// when it was missing) are removed again when `work` fails and leaves them empty.
fn locked<T>(out: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let created = create_dirs(out).with_context(|| format!("cannot create output directory {}", out.display()))?;
    let lock = DirLock::acquire(out, "genesis prepare")?;
    let result = work();
    drop(lock);
    if result.is_err() {
        remove_empty_dirs(&created);
    }
    result
}

/// One line per split: tokens, documents, shards.
pub fn print_splits(m: &manifest::Manifest) -> Result<()> {
    for (split, s) in &m.splits {
        outln!("  {split:<5} {:>12} tokens  {:>9} documents  {} shard(s)", s.tokens, s.documents, s.shards.len());
    }
    Ok(())
}
