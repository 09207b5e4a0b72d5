//! The GPT-2 tokenizer: tiktoken's `r50k_base` byte-level BPE (50,257 tokens, the last being
//! `<|endoftext|>` = 50256). The vocabulary ships inside `tiktoken-rs`, so nothing is downloaded.

use std::sync::OnceLock;

use anyhow::Result;
use tiktoken_rs::CoreBPE;

use crate::model::{EOT_TOKEN, VOCAB_SIZE};

static GPT2_BPE: OnceLock<CoreBPE> = OnceLock::new();

/// A cheap handle to the process-wide GPT-2 BPE (built once, on first use; building takes a while).
#[derive(Clone, Copy)]
pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(gpt2 / r50k_base)")
    }
}

impl Tokenizer {
    /// The GPT-2 tokenizer. The first call builds the BPE tables; later calls are free.
    pub fn gpt2() -> Result<Self> {
        if let Some(bpe) = GPT2_BPE.get() {
            return Ok(Tokenizer { bpe });
        }
        let built = tiktoken_rs::r50k_base()
            .map_err(|e| anyhow::anyhow!("cannot build the GPT-2 (r50k_base) tokenizer: {e}"))?;
        // Two threads may race to build it; whichever lands first is kept, both are identical.
        let _ = GPT2_BPE.set(built);
        Ok(Tokenizer { bpe: GPT2_BPE.get().expect("set above") })
    }

    /// Encodes ordinary text. A literal `<|endoftext|>` in `text` is encoded as the characters it
    /// is made of, never as the special token; documents are separated by [`EOT_TOKEN`] explicitly.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The raw bytes of one token, or `None` if the id is outside the vocabulary.
    pub fn token_bytes(&self, token: u32) -> Option<Vec<u8>> {
        if token as usize >= VOCAB_SIZE {
            return None;
        }
        self.bpe.decode_bytes(&[token]).ok()
    }

    /// Decodes tokens to text. Invalid UTF-8 (e.g. a multi-byte character cut in half) and ids
    /// outside the vocabulary become U+FFFD. [`EOT_TOKEN`] decodes as `<|endoftext|>`.
    pub fn decode(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }

    /// The concatenated bytes of `tokens`; ids outside the vocabulary contribute U+FFFD's bytes.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        if tokens.iter().all(|&t| (t as usize) < VOCAB_SIZE) {
            if let Ok(bytes) = self.bpe.decode_bytes(tokens) {
                return bytes;
            }
        }
        let mut out = Vec::with_capacity(tokens.len() * 4);
        for &t in tokens {
            match self.token_bytes(t) {
                Some(b) => out.extend_from_slice(&b),
                None => out.extend_from_slice(REPLACEMENT.as_bytes()),
            }
        }
        out
    }

    /// The end-of-text token id (50256).
    pub fn eot(&self) -> u32 {
        EOT_TOKEN
    }

    /// A decoder that turns a stream of sampled tokens into text as it becomes complete.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder { tokenizer: *self, pending: Vec::new() }
    }
}

const REPLACEMENT: &str = "\u{FFFD}";

/// Incremental decoding for printing samples token by token.
///
/// A GPT-2 token can end in the middle of a multi-byte UTF-8 character; the bytes of an incomplete
/// character are held back until the tokens that complete it arrive. Bytes that can never become
/// valid UTF-8 are emitted as U+FFFD, so output is never delayed by garbage.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    pending: Vec<u8>,
}

impl Default for StreamDecoder {
    /// A stream decoder for the GPT-2 tokenizer.
    ///
    /// # Panics
    /// If the GPT-2 tables bundled in `tiktoken-rs` fail to load, which cannot happen with an
    /// intact build; call [`Tokenizer::gpt2`] first to get that as an error instead.
    fn default() -> Self {
        Tokenizer::gpt2().expect("the GPT-2 vocabulary bundled in tiktoken-rs always loads").stream_decoder()
    }
}

impl StreamDecoder {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        tokenizer.stream_decoder()
    }

    /// Adds one token and returns the text it completed (possibly empty).
    pub fn push(&mut self, token: u32) -> String {
        match self.tokenizer.token_bytes(token) {
            Some(bytes) => self.pending.extend_from_slice(&bytes),
            None => {
                // An invalid id ends whatever character was in progress.
                let mut out = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                out.push_str(REPLACEMENT);
                return out;
            }
        }
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).expect("valid"));
                    start += valid;
                    match e.error_len() {
                        // Invalid bytes: replace them and keep going.
                        Some(n) => {
                            out.push_str(REPLACEMENT);
                            start += n;
                        }
                        // An incomplete character at the end: hold it back.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        let tok = Tokenizer::gpt2().unwrap();
        let text = "héllo wörld, 日本語のテキスト 🦀🦀 done";
        let tokens = tok.encode(text);
        assert_eq!(tok.decode(&tokens), text);
        let mut dec = tok.stream_decoder();
        let mut out = String::new();
        let mut saw_hold = false;
        for &t in &tokens {
            let piece = dec.push(t);
            saw_hold |= dec.pending_bytes() > 0;
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&dec.finish());
        assert_eq!(out, text);
        assert!(saw_hold, "expected at least one token to split a character");
    }

    #[test]
    fn invalid_ids_decode_lossily() {
        let tok = Tokenizer::gpt2().unwrap();
        let mut t = tok.encode("ab");
        t.push(60000);
        assert_eq!(tok.decode(&t), "ab\u{FFFD}");
        let mut dec = StreamDecoder::default();
        assert_eq!(dec.push(60000), "\u{FFFD}");
        assert_eq!(tok.decode(&[EOT_TOKEN]), "<|endoftext|>");
    }
}
