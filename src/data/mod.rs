//! The data layer: text in, batches of token ids out.
//!
//! - [`tokenizer`]: the GPT-2 byte-level BPE (tiktoken's `r50k_base`, bundled, no network), plus a
//!   streaming decoder for printing samples token by token.
//! - [`shard`]: the llm.c token shard format (a 1024-byte header of 256 little-endian `i32`s:
//!   magic 20240520, version 1, token count; then the tokens as little-endian `u16`), written
//!   atomically and read through a validated memory map.
//! - [`cut`]: where text may be cut without changing its encoding.
//! - [`source`]: input files (text, JSON Lines, Parquet) -> documents, streamed as pieces.
//! - [`manifest`]: `manifest.json`, what a prepared dataset directory holds, and the names the
//!   other modules share (splits, file names, dataset names).
//! - [`loader`]: batches of `(inputs, targets)` windows over the shards of one split: seeded random
//!   windows for training, a fixed sequential pass for validation.
//! - [`prepare`]: text files -> EOT-separated token stream -> `train_NNNNNN.bin` / `val_NNNNNN.bin`
//!   shards, tokenized in parallel with output independent of the thread count.
//! - [`download`]: resumable, checked HTTP downloads.
//! - [`datasets`]: the datasets known by name, downloaded, checked and prepared.
//!
//! Each module imports only modules above it in this list: `tokenizer`, `shard`, `cut` and
//! `download` import none of the others, `source` only `cut`; `manifest` reads `shard` and
//! `source`; `loader` and `prepare` read `manifest`; `datasets` sits on top.

pub mod cut;
pub mod datasets;
pub mod download;
pub mod loader;
pub mod manifest;
pub mod prepare;
pub mod shard;
pub mod source;
pub mod tokenizer;
