//! The data layer: text in, batches of token ids out.
//!
//! - [`tokenizer`]: the GPT-2 byte-level BPE (tiktoken's `r50k_base`, bundled, no network), plus a
//!   streaming decoder for printing samples token by token.
//! - [`shard`]: the llm.c token shard format (a 1024-byte header of 256 little-endian `i32`s:
//!   magic 20240520, version 1, token count; then the tokens as little-endian `u16`), written
//!   atomically and read through a validated memory map.
//! - [`prepare`]: text files -> EOT-separated token stream -> `train_NNNNNN.bin` / `val_NNNNNN.bin`
//!   shards, tokenized in parallel with output independent of the thread count.
//! - [`loader`]: batches of `(inputs, targets)` windows over the shards of one split: seeded random
//!   windows for training, a fixed sequential pass for validation.

pub mod datasets;
pub mod download;
pub mod loader;
pub mod manifest;
pub mod prepare;
pub mod shard;
pub mod source;
pub mod tokenizer;
