//! Integration tests for the data layer: shards, tokenizer, prepare and the loader.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_mentions, err_string, shared_file};

use genesis::data::cut::split_for_encoding;
use genesis::data::loader::DataLoader;
use genesis::data::manifest::{Manifest, Settings, ShardInfo, Split, SplitInfo, TokenizerInfo, MANIFEST_VERSION};
use genesis::data::prepare::{encode_parallel, CHUNK_BYTES};
use genesis::data::shard::{write_shard, Shard, SHARD_MAGIC};
use genesis::data::source::Docs;
use genesis::data::tokenizer::Tokenizer;
use genesis::model::{EOT_TOKEN, VOCAB_SIZE};
use genesis::rng::Rng;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        TempDir(common::temp_dir(name))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Raw shard bytes with an arbitrary header, for corrupt-file tests.
fn raw_shard(magic: i32, version: i32, count: i32, tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    let mut bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    bytes
}

#[test]
fn write_shard_round_trip_and_refuses_bad_tokens() {
    let tmp = TempDir::new("write");
    let p = tmp.path().join("train_000000.bin");
    let tokens: Vec<u16> = (0..1000u32).map(|i| (i * 97 % VOCAB_SIZE as u32) as u16).collect();
    write_shard(&p, &tokens).unwrap();
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.tokens(), &tokens[..]);
    assert_eq!(s.len(), 1000);
    // Overwriting works and leaves no temp file.
    write_shard(&p, &tokens[..10]).unwrap();
    assert_eq!(Shard::open(&p).unwrap().tokens(), &tokens[..10]);
    assert!(!tmp.path().join("train_000000.bin.tmp").exists());
    // Empty shards are valid files.
    let e = tmp.path().join("empty.bin");
    write_shard(&e, &[]).unwrap();
    assert!(Shard::open(&e).unwrap().is_empty());

    let msg = err_string(write_shard(&p, &[1, 2, 50257]));
    assert_mentions(&msg, &["train_000000.bin", "50257"]);
    // The failed write did not touch the existing shard.
    assert_eq!(Shard::open(&p).unwrap().tokens(), &tokens[..10]);
}

#[test]
fn bad_shards_give_clear_errors() {
    let tmp = TempDir::new("badshard");
    let good: Vec<u16> = (0..20).collect();

    let p = tmp.file("magic.bin", &raw_shard(12345, 1, 20, &good));
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["magic.bin", "12345", &SHARD_MAGIC.to_string()]);

    let p = tmp.file("version.bin", &raw_shard(SHARD_MAGIC, 7, 20, &good));
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["version.bin", "version is 7", "expected 1"]);

    // Header says 600 tokens, the file holds 513.
    let tokens: Vec<u16> = (0..513).collect();
    let p = tmp.file("truncated.bin", &raw_shard(SHARD_MAGIC, 1, 600, &tokens));
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["truncated.bin", "2050 bytes", "600 tokens", "2224 bytes", "truncated"]);

    let p = tmp.file("trailing.bin", &raw_shard(SHARD_MAGIC, 1, 10, &good));
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["trailing.bin", "10 tokens", "1044 bytes"]);

    let p = tmp.file("short.bin", &[0u8; 100]);
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["short.bin", "100 bytes", "1024-byte"]);

    let mut bad = good.clone();
    bad[12] = 60000;
    let p = tmp.file("vocab.bin", &raw_shard(SHARD_MAGIC, 1, 20, &bad));
    let msg = err_string(Shard::open(&p));
    assert_mentions(&msg, &["vocab.bin", "60000", "position 12", "50257", "genesis prepare"]);

    let msg = err_string(Shard::open(&tmp.path().join("nope.bin")));
    assert_mentions(&msg, &["nope.bin", "does not exist"]);

    // The loader passes shard errors through, naming the file.
    let dir = TempDir::new("badloader");
    fs::write(dir.path().join("train_000000.bin"), raw_shard(SHARD_MAGIC, 1, 20, &bad)).unwrap();
    write_manifest(dir.path(), &[("train", vec![("train_000000.bin", 20)])]);
    let msg = err_string(DataLoader::open(dir.path(), Split::Train, 1, 4, 0));
    assert_mentions(&msg, &["train_000000.bin", "60000"]);
}

/// The first id outside the vocabulary (50257, one past the last token) is refused like any larger one.
#[test]
fn a_token_one_past_the_vocabulary_is_refused() {
    let tmp = TempDir::new("vocabedge");
    let mut tokens: Vec<u16> = (0..20).collect();
    tokens[5] = (VOCAB_SIZE - 1) as u16;
    let p = tmp.file("last.bin", &raw_shard(SHARD_MAGIC, 1, 20, &tokens));
    assert_eq!(Shard::open(&p).unwrap().tokens()[5] as usize, VOCAB_SIZE - 1);
    tokens[5] = VOCAB_SIZE as u16;
    let p = tmp.file("past.bin", &raw_shard(SHARD_MAGIC, 1, 20, &tokens));
    assert_mentions(&err_string(Shard::open(&p)), &["past.bin", "position 5", "is 50257"]);
}

#[test]
fn loader_open_errors() {
    let tmp = TempDir::new("loadererr");
    let missing = tmp.path().join("missing");
    let msg = err_string(DataLoader::open(&missing, Split::Train, 2, 8, 0));
    assert_mentions(
        &msg,
        &["no prepared dataset at", &missing.display().to_string(), "genesis prepare --input PATH... --name missing"],
    );

    // Shards without a manifest are not a dataset (an interrupted prepare looks like this).
    write_shard(&tmp.path().join("train_000000.bin"), &[1; 10]).unwrap();
    let msg = err_string(DataLoader::open(tmp.path(), Split::Train, 2, 8, 0));
    assert_mentions(&msg, &["has no manifest.json", "genesis prepare"]);
    fs::write(tmp.path().join("prepare.journal.json"), "{}").unwrap();
    let msg = err_string(DataLoader::open(tmp.path(), Split::Train, 2, 8, 0));
    assert_mentions(&msg, &["unfinished `genesis prepare`"]);
    fs::remove_file(tmp.path().join("prepare.journal.json")).unwrap();

    // Two shards of 10 and 6 tokens: a window of seq 16 needs 17.
    write_shard(&tmp.path().join("train_000001.bin"), &[1; 6]).unwrap();
    write_manifest(tmp.path(), &[("train", vec![("train_000000.bin", 10), ("train_000001.bin", 6)])]);
    let msg = err_string(DataLoader::open(tmp.path(), Split::Train, 2, 16, 0));
    assert_mentions(&msg, &[&tmp.path().display().to_string(), "16 tokens", "10", "17"]);
    // seq 9 fits in the first shard only.
    let loader = DataLoader::open(tmp.path(), Split::Train, 2, 9, 0).unwrap();
    assert_eq!(loader.total_tokens(), 16);
    assert_eq!(loader.num_shards(), 2);

    // No val split in the manifest.
    let msg = err_string(DataLoader::open(tmp.path(), Split::Val, 2, 8, 0));
    assert_mentions(&msg, &["has no val split", "--val-fraction"]);

    // A shard whose size disagrees with the manifest, and a missing one.
    write_manifest(tmp.path(), &[("train", vec![("train_000000.bin", 11), ("train_000001.bin", 6)])]);
    let msg = err_string(DataLoader::open(tmp.path(), Split::Train, 2, 4, 0));
    assert_mentions(&msg, &["train_000000.bin", "1044 bytes", "11 tokens", "damaged"]);
    write_manifest(tmp.path(), &[("train", vec![("train_000000.bin", 10), ("train_000007.bin", 6)])]);
    let msg = err_string(DataLoader::open(tmp.path(), Split::Train, 2, 4, 0));
    assert_mentions(&msg, &["train_000007.bin", "missing", "damaged"]);

    // A manifest naming a file outside the directory, or another split's shard, is refused before
    // anything is opened (the outside file exists and has the size the manifest claims).
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    write_shard(&outside.join("train_000000.bin"), &[1; 10]).unwrap();
    let dataset = tmp.path().join("dataset");
    fs::create_dir_all(&dataset).unwrap();
    write_shard(&dataset.join("val_000000.bin"), &[1; 10]).unwrap();
    for name in ["../outside/train_000000.bin", "val_000000.bin"] {
        write_manifest(&dataset, &[("train", vec![(name, 10)])]);
        let msg = err_string(DataLoader::open(&dataset, Split::Train, 2, 4, 0));
        assert_mentions(&msg, &["manifest.json", name, "not a train_NNNNNN.bin file", "re-run `genesis prepare`"]);
    }
}

/// A manifest listing the given shards (names and token counts) per split.
fn write_manifest(dir: &Path, splits: &[(&str, Vec<(&str, u64)>)]) {
    let m = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: "test".into(),
        genesis_version: "test".into(),
        tokenizer: TokenizerInfo::gpt2(),
        settings: Settings { docs: Docs::Whole, field: "text".into(), val_fraction: 0.1, shard_tokens: 1000 },
        origin: None,
        sources: Vec::new(),
        splits: splits
            .iter()
            .map(|(name, shards)| {
                let shards: Vec<ShardInfo> = shards
                    .iter()
                    .map(|(f, n)| ShardInfo { file: f.to_string(), tokens: *n, sha256: String::new() })
                    .collect();
                let tokens = shards.iter().map(|s| s.tokens).sum();
                (name.to_string(), SplitInfo { documents: 1, tokens, shards })
            })
            .collect(),
    };
    m.save(dir).unwrap();
}

/// Shards whose tokens encode (shard, position) so a window's origin can be checked.
fn synthetic_shards(dir: &Path, prefix: &str, lens: &[usize]) -> Vec<Vec<u16>> {
    lens.iter()
        .enumerate()
        .map(|(k, &len)| {
            let tokens: Vec<u16> = (0..len).map(|i| (k * 10_000 + i) as u16).collect();
            write_shard(&dir.join(format!("{prefix}_{k:06}.bin")), &tokens).unwrap();
            tokens
        })
        .collect()
}

fn synthetic_dataset(dir: &Path, prefix: &str, lens: &[usize]) -> Vec<Vec<u16>> {
    let shards = synthetic_shards(dir, prefix, lens);
    let names: Vec<String> = (0..lens.len()).map(|k| format!("{prefix}_{k:06}.bin")).collect();
    let list: Vec<(&str, u64)> = names.iter().zip(lens).map(|(n, &l)| (n.as_str(), l as u64)).collect();
    write_manifest(dir, &[(prefix, list)]);
    shards
}

fn batches(loader: &mut DataLoader, n: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let len = loader.batch() * loader.seq();
    (0..n)
        .map(|_| {
            let (mut x, mut y) = (vec![0; len], vec![0; len]);
            loader.next_batch(&mut x, &mut y);
            (x, y)
        })
        .collect()
}

#[test]
fn train_loader_is_deterministic_and_shifts_targets() {
    let tmp = TempDir::new("train");
    let lens = [300, 5, 1000, 64];
    synthetic_dataset(tmp.path(), "train", &lens);
    let (b, t) = (4, 32);
    let mut l1 = DataLoader::open(tmp.path(), Split::Train, b, t, 1337).unwrap();
    let mut l2 = DataLoader::open(tmp.path(), Split::Train, b, t, 1337).unwrap();
    let mut l3 = DataLoader::open(tmp.path(), Split::Train, b, t, 1338).unwrap();
    assert_eq!(l1.total_tokens(), 1369);
    let (a, same, other) = (batches(&mut l1, 100), batches(&mut l2, 100), batches(&mut l3, 100));
    assert_eq!(a, same);
    assert_ne!(a, other);

    let mut shards_seen = [0usize; 4];
    for (x, y) in &a {
        for r in 0..b {
            let (xr, yr) = (&x[r * t..][..t], &y[r * t..][..t]);
            let shard = (xr[0] / 10_000) as usize;
            shards_seen[shard] += 1;
            for i in 0..t {
                // Consecutive tokens of one shard, targets shifted by one.
                assert_eq!(xr[i], xr[0] + i as u32);
                assert_eq!(yr[i], xr[i] + 1);
            }
            let start = (xr[0] % 10_000) as usize;
            assert!(start + t < lens[shard], "window past the end of shard {shard}");
        }
    }
    assert_eq!(shards_seen[1], 0, "a shard shorter than seq+1 was sampled");
    assert!(shards_seen[0] > 0 && shards_seen[2] > shards_seen[0] && shards_seen[3] > 0);
    // reset() restarts at epoch 0.
    l1.reset();
    assert_eq!(batches(&mut l1, 100), a);
}

/// The windows of each epoch: every shard's non-overlapping windows exactly once, in a shuffled
/// order that differs between epochs, and the state save/restore continues the identical sequence
/// across epoch boundaries.
#[test]
fn train_loader_epochs_and_state_restore() {
    let tmp = TempDir::new("epochs");
    let lens = [301, 97, 1000, 40];
    synthetic_dataset(tmp.path(), "train", &lens);
    let (b, t) = (1, 16);
    // Windows per shard for a start offset o < (n-1) % t + 1: floor((n-1-o)/t) = floor((n-1)/t).
    let per_epoch: usize = lens.iter().map(|n| (n - 1) / t).sum();
    let mut l = DataLoader::open(tmp.path(), Split::Train, b, t, 5).unwrap();
    let mut epochs: Vec<Vec<(usize, usize)>> = Vec::new();
    for e in 0..3 {
        let rows: Vec<(usize, usize)> = batches(&mut l, per_epoch)
            .iter()
            .map(|(x, _)| ((x[0] / 10_000) as usize, (x[0] % 10_000) as usize))
            .collect();
        // Per shard: all windows, non-overlapping, one offset.
        for (k, &n) in lens.iter().enumerate() {
            let mut starts: Vec<usize> = rows.iter().filter(|r| r.0 == k).map(|r| r.1).collect();
            starts.sort();
            assert_eq!(starts.len(), (n - 1) / t, "epoch {e} shard {k}");
            assert!(starts.windows(2).all(|w| w[1] - w[0] == t), "epoch {e} shard {k}: {starts:?}");
            assert!(starts[0] < t);
        }
        epochs.push(rows);
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);
    // The position moves to the next epoch when its first window is taken.
    assert_eq!(l.state().epoch, 2);
    batches(&mut l, 1);
    assert_eq!((l.state().epoch, l.state().shard, l.state().position), (3, 0, 1));
    assert!(l.epoch_progress() > 3.0 && l.epoch_progress() < 3.5);

    // Save mid-shard, mid-epoch and right at an epoch boundary; restore into a fresh loader.
    for skip in [1, 7, per_epoch - 1, per_epoch, per_epoch + 20] {
        let mut a = DataLoader::open(tmp.path(), Split::Train, 2, t, 9).unwrap();
        batches(&mut a, skip);
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let want = batches(&mut a, 2 * per_epoch);
        let mut fresh = DataLoader::open(tmp.path(), Split::Train, 2, t, 9).unwrap();
        fresh.restore(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(batches(&mut fresh, 2 * per_epoch), want, "restored after {skip} batches");
    }
    // A state that cannot belong to this data is refused.
    let mut bad = l.state();
    bad.shard = 99;
    assert_mentions(&err_string(l.restore(bad)), &["shard 99", "4 shards"]);
}

#[test]
fn val_loader_order_is_fixed() {
    let tmp = TempDir::new("val");
    let shards = synthetic_dataset(tmp.path(), "val", &[41, 10, 30]);
    let (b, t) = (2, 8);
    let mut v = DataLoader::open(tmp.path(), Split::Val, b, t, 1).unwrap();
    // Shard 0: starts 0, 8, 16, 24, 32 (32 + 9 = 41); shard 1: start 0 (0 + 9 <= 10);
    // shard 2: starts 0, 8, 16 (16 + 9 = 25 <= 30; 24 + 9 > 30). 9 rows -> 4 full batches.
    let expected_rows: Vec<(usize, usize)> =
        vec![(0, 0), (0, 8), (0, 16), (0, 24), (0, 32), (1, 0), (2, 0), (2, 8), (2, 16)];
    assert_eq!(v.num_val_batches(), 4);
    let rows_of = |batches: &[(Vec<u32>, Vec<u32>)]| -> Vec<(Vec<u32>, Vec<u32>)> {
        batches
            .iter()
            .flat_map(|(x, y)| (0..b).map(move |r| (x[r * t..][..t].to_vec(), y[r * t..][..t].to_vec())))
            .collect()
    };
    // Two passes plus a bit: the order wraps around after the last window.
    let got = rows_of(&batches(&mut v, 10));
    for (i, (x, y)) in got.iter().enumerate() {
        let (k, s) = expected_rows[i % expected_rows.len()];
        let want: Vec<u32> = shards[k][s..s + t + 1].iter().map(|&x| x as u32).collect();
        assert_eq!(x[..], want[..t], "row {i}");
        assert_eq!(y[..], want[1..], "row {i}");
    }
    // Independent of the seed, and reset() goes back to the start.
    let mut w = DataLoader::open(tmp.path(), Split::Val, b, t, 999).unwrap();
    let first = batches(&mut w, 4);
    v.reset();
    assert_eq!(batches(&mut v, 4), first);
    assert_eq!(rows_of(&first), got[..8].to_vec());
}

/// Shards whose lengths are multiples of seq: a window needs seq + 1 tokens, so a shard of k * seq
/// tokens holds k - 1 windows. The val loader stops there (never reading past the end), counts
/// them so, and a dataset whose only shard holds exactly seq tokens has no window at all.
#[test]
fn windows_stop_one_token_before_the_shard_end() {
    let tmp = TempDir::new("shardend");
    let shards = synthetic_dataset(tmp.path(), "val", &[16, 24]);
    let t = 8;
    let mut v = DataLoader::open(tmp.path(), Split::Val, 1, t, 0).unwrap();
    assert_eq!(v.num_val_batches(), 3);
    // Shard 0: start 0 only (8 + 9 > 16); shard 1: starts 0 and 8 (16 + 9 > 24); then around again.
    for (i, (k, s)) in [(0, 0), (1, 0), (1, 8), (0, 0)].into_iter().enumerate() {
        let (mut x, mut y) = (vec![0; t], vec![0; t]);
        v.next_batch(&mut x, &mut y);
        let want: Vec<u32> = shards[k][s..s + t + 1].iter().map(|&x| x as u32).collect();
        assert_eq!((x, y), (want[..t].to_vec(), want[1..].to_vec()), "row {i}");
    }
    let exact = TempDir::new("shardexact");
    synthetic_dataset(exact.path(), "train", &[8]);
    assert_mentions(&err_string(DataLoader::open(exact.path(), Split::Train, 1, 8, 0)), &["8 tokens", "needs 9"]);
}

fn tinyshakespeare() -> String {
    fs::read_to_string(shared_file("tinyshakespeare.txt")).unwrap()
}

#[test]
fn chunked_parallel_encoding_equals_single_pass() {
    let text = tinyshakespeare();
    let tok = Tokenizer::gpt2().unwrap();
    let whole = tok.encode(&text);
    assert!(whole.len() > 300_000, "tinyshakespeare looks too small: {}", whole.len());
    for chunk in [CHUNK_BYTES, 64 << 10, 4096, 1] {
        let pieces = split_for_encoding(&text, chunk);
        assert_eq!(pieces.concat(), text);
        if chunk < text.len() / 4 {
            assert!(pieces.len() > 4, "chunk {chunk}: expected many pieces, got {}", pieces.len());
        }
        assert!(encode_parallel(&tok, &text, chunk) == whole, "chunk size {chunk} changed the encoding");
    }
    // Chunks prefer to end at a line end when the target allows it.
    let lines = split_for_encoding(&text, 4096);
    assert!(lines[1..].iter().all(|p| p.starts_with('\n')));
}

#[test]
fn chunked_encoding_equals_single_pass_on_tricky_whitespace() {
    let tok = Tokenizer::gpt2().unwrap();
    let alphabet = [
        "a", "b", "Z", " ", " ", "\n", "\n\n", "\t", "\r\n", "'s", "'", "1", "23", ".", "!?", "é", "日", "\u{a0}",
        "\u{3000}", "🦀", "  ", " \n",
    ];
    let mut rng = Rng::new(7);
    for _ in 0..300 {
        let n = 1 + rng.below(60) as usize;
        let text: String = (0..n).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
        for chunk in [1, 3, 7] {
            assert_eq!(encode_parallel(&tok, &text, chunk), tok.encode(&text), "{text:?} chunk {chunk}");
        }
    }
}

#[test]
fn tokenizer_basics_and_streaming() {
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
    let with_marker = tok.encode("a<|endoftext|>b");
    assert!(!with_marker.contains(&EOT_TOKEN));
    assert_eq!(tok.decode(&with_marker), "a<|endoftext|>b");
    assert_eq!(tok.decode(&[EOT_TOKEN]), "<|endoftext|>");

    let text = "Streaming: naïve 日本語 🦀 text.";
    let tokens = tok.encode(text);
    let mut dec = tok.stream_decoder();
    let mut out = String::new();
    for &t in &tokens {
        let piece = dec.push(t);
        assert!(!piece.contains('\u{FFFD}'));
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);

    // A character cut off at the end is flushed lossily by finish().
    let crab = tok.encode("🦀");
    assert!(crab.len() > 1, "expected the crab to span several tokens");
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(crab[0]), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
}
