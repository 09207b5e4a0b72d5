//! `genesis prepare`: text files -> token shards.
//!
//! Every input file is one document. Each document is tokenized and preceded by
//! [`EOT_TOKEN`](crate::model::EOT_TOKEN); documents are concatenated in input order, the last
//! `val_fraction` of the tokens becomes the validation split, and both splits are written as
//! `train_NNNNNN.bin` / `val_NNNNNN.bin` shards of at most [`SHARD_TOKENS`] tokens.
//!
//! # Parallel tokenization
//!
//! Documents are cut into ~1 MB chunks that are encoded in parallel and concatenated in order. The
//! cut points are chosen so that chunked encoding is *identical* to encoding the whole text (and so
//! independent of the thread count). GPT-2 BPE first splits text with the regex
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+$ | \s+(?!\S) | \s
//! ```
//!
//! and byte-pair merges never cross a piece, so two encodings agree when their pieces agree. We cut
//! at byte `p` only when `text[p]` is `'\n'` or `' '` and the character before `p` is not
//! whitespace. Then:
//!
//! - In the whole text a piece ends at `p`: the piece holding `text[p-1]` contains a non-space
//!   character, and every such alternative contains whitespace only as a single leading space, so it
//!   cannot reach past `text[p-1]` into the whitespace at `p`.
//! - The left chunk segments exactly like the whole text: it ends in a non-space, so its whitespace
//!   runs are followed by the same non-space character either way (`\s+$` and `(?!\S)` see the same
//!   thing), and non-space pieces stop at `p` in both cases.
//! - The right chunk starts a piece at its first byte, exactly as the whole text does at `p`; the
//!   regex has no look-behind, `^` or `\b`, so matching from `p` onward is the same.
//!
//! (Cutting after a newline is *not* safe in general: in `"a\n\nb"` the whole text gives the pieces
//! `"\n"`, `"\n"` while a chunk ending in `"\n\n"` gives one piece `"\n\n"` via `\s+$`.) Cuts just
//! before the newline that ends a line are preferred, so chunks follow lines when the text has them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::data::shard::{self, write_shard};
use crate::data::tokenizer::Tokenizer;
use crate::model::{EOT_TOKEN, VOCAB_SIZE};

/// The most tokens written to one shard (as in llm.c's dataset scripts).
pub const SHARD_TOKENS: usize = 100_000_000;
/// Target size of the text chunks encoded in parallel.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How far past the target a chunk may grow while looking for a line boundary (at most a quarter
/// of the target).
const LINE_SEARCH_BYTES: usize = 64 << 10;
/// Text read before a round of parallel encoding (bounds the text held in memory).
const GROUP_BYTES: usize = 256 << 20;

/// What [`prepare_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareSummary {
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub documents: usize,
    /// Every shard written, train shards first, in order.
    pub files: Vec<PathBuf>,
}

/// Tokenizes `inputs` (one document each) into `out_dir/train_*.bin` and `out_dir/val_*.bin`,
/// with at most [`SHARD_TOKENS`] tokens per shard. See the module docs.
pub fn prepare_files(inputs: &[PathBuf], out_dir: &Path, val_fraction: f64) -> Result<PrepareSummary> {
    prepare_files_sharded(inputs, out_dir, val_fraction, SHARD_TOKENS)
}

/// [`prepare_files`] with a custom shard size limit (useful to exercise multi-shard datasets).
///
/// Memory use is about 2 bytes per token for the whole corpus plus one group of text.
pub fn prepare_files_sharded(
    inputs: &[PathBuf],
    out_dir: &Path,
    val_fraction: f64,
    max_shard_tokens: usize,
) -> Result<PrepareSummary> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        bail!("val_fraction must be strictly between 0 and 1, got {val_fraction}");
    }
    if max_shard_tokens == 0 || max_shard_tokens > i32::MAX as usize {
        bail!("max_shard_tokens must be between 1 and {}, got {max_shard_tokens}", i32::MAX);
    }
    if inputs.is_empty() {
        bail!("no input files given");
    }
    let tokenizer = Tokenizer::gpt2()?;

    let mut tokens: Vec<u16> = Vec::new();
    let mut next = 0;
    while next < inputs.len() {
        // Read documents until the group is big enough, then encode the whole group in parallel.
        let mut group: Vec<String> = Vec::new();
        let mut group_bytes = 0;
        while next < inputs.len() && (group.is_empty() || group_bytes < GROUP_BYTES) {
            let text = read_document(&inputs[next])?;
            group_bytes += text.len();
            group.push(text);
            next += 1;
        }
        let pieces: Vec<(bool, &str)> = group
            .iter()
            .flat_map(|doc| {
                split_for_encoding(doc, CHUNK_BYTES).into_iter().enumerate().map(|(i, chunk)| (i == 0, chunk))
            })
            .collect();
        let encoded: Vec<Vec<u32>> = pieces.par_iter().map(|&(_, chunk)| tokenizer.encode(chunk)).collect();
        for (&(doc_start, _), enc) in pieces.iter().zip(&encoded) {
            if doc_start {
                tokens.push(EOT_TOKEN as u16);
            }
            tokens.extend(enc.iter().map(|&t| {
                debug_assert!((t as usize) < VOCAB_SIZE);
                t as u16
            }));
        }
    }

    let total = tokens.len();
    let val_tokens = (total as f64 * val_fraction).round() as usize;
    let train_tokens = total - val_tokens.min(total);
    if val_tokens == 0 || train_tokens == 0 {
        bail!(
            "the inputs hold only {total} tokens; a val_fraction of {val_fraction} leaves \
             {train_tokens} for training and {val_tokens} for validation, and both need at least one"
        );
    }

    fs::create_dir_all(out_dir).with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let (train, val) = tokens.split_at(train_tokens);
    let mut files = write_split(out_dir, "train", train, max_shard_tokens)?;
    files.extend(write_split(out_dir, "val", val, max_shard_tokens)?);

    // Shards left over from an earlier run that produced more of them.
    for prefix in ["train", "val"] {
        for old in shard::list_shards(out_dir, prefix)? {
            if !files.contains(&old) {
                fs::remove_file(&old).with_context(|| format!("cannot remove stale shard {}", old.display()))?;
            }
        }
    }

    Ok(PrepareSummary { train_tokens, val_tokens, documents: inputs.len(), files })
}

fn write_split(dir: &Path, prefix: &str, tokens: &[u16], max: usize) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, chunk) in tokens.chunks(max).enumerate() {
        let path = dir.join(shard::shard_file_name(prefix, i));
        write_shard(&path, chunk)?;
        files.push(path);
    }
    Ok(files)
}

/// Reads one input document: it must exist, be non-empty and be valid UTF-8.
pub fn read_document(path: &Path) -> Result<String> {
    let name = path.display();
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("input file {name} does not exist"),
        _ => anyhow::Error::new(e).context(format!("cannot read input file {name}")),
    })?;
    if bytes.is_empty() {
        bail!("input file {name} is empty");
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        anyhow::anyhow!("input file {name} is not valid UTF-8: invalid byte sequence at byte offset {offset}")
    })
}

/// Whether cutting `text` at byte `p` leaves the BPE encoding unchanged (see the module docs).
pub fn is_cut_point(text: &str, p: usize) -> bool {
    let bytes = text.as_bytes();
    p > 0
        && p < bytes.len()
        && (bytes[p] == b'\n' || bytes[p] == b' ')
        && text[..p].chars().next_back().is_some_and(|c| !c.is_whitespace())
}

/// Cuts `text` into chunks of roughly `target_bytes` (at least one cut point past the target) that
/// encode, one by one and concatenated, exactly like the whole text. Prefers cutting before the
/// newline that ends a line; falls back to cutting before a space. A text with no cut point stays
/// in one piece. `target_bytes` of 1 cuts at every possible point.
pub fn split_for_encoding(text: &str, target_bytes: usize) -> Vec<&str> {
    let target = target_bytes.max(1);
    let bytes = text.as_bytes();
    let mut chunks = Vec::with_capacity(text.len() / target + 1);
    let mut start = 0;
    while text.len() - start > target {
        let from = start + target;
        let line_end = (from + LINE_SEARCH_BYTES.min(target / 4)).min(text.len());
        let newline_cut = (from..line_end).find(|&p| bytes[p] == b'\n' && is_cut_point(text, p));
        let cut = newline_cut.or_else(|| (from..text.len()).find(|&p| is_cut_point(text, p)));
        let Some(cut) = cut else { break };
        chunks.push(&text[start..cut]);
        start = cut;
    }
    chunks.push(&text[start..]);
    chunks
}

/// Encodes `text` by cutting it with [`split_for_encoding`] and encoding the chunks in parallel.
/// The result equals `tokenizer.encode(text)` for any chunk size and thread count.
pub fn encode_parallel(tokenizer: &Tokenizer, text: &str, chunk_bytes: usize) -> Vec<u32> {
    let chunks = split_for_encoding(text, chunk_bytes);
    let encoded: Vec<Vec<u32>> = chunks.par_iter().map(|c| tokenizer.encode(c)).collect();
    encoded.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_text_and_respect_the_rule() {
        let text = "ab cd\n\nef  gh\n ij\tkl \nmn";
        let chunks = split_for_encoding(text, 1);
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunks, ["ab", " cd", "\n\nef", "  gh", "\n ij\tkl", " \nmn"]);
        assert_eq!(split_for_encoding("", 4), [""]);
        assert_eq!(split_for_encoding("abc", 100), ["abc"]);
    }

    #[test]
    fn prefers_line_ends() {
        let text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh\niiii jjjj";
        assert_eq!(split_for_encoding(text, 32), ["aaaa bbbb cccc dddd eeee ffff gggg hhhh", "\niiii jjjj"]);
        // Too far away: fall back to the next space.
        assert_eq!(split_for_encoding(text, 20), ["aaaa bbbb cccc dddd eeee", " ffff gggg hhhh\niiii", " jjjj"]);
    }
}
