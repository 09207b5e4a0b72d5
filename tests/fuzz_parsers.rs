//! Mutation fuzzing of every parser of a file Genesis did not write itself: the checkpoint header,
//! the safetensors header, `config.json` and `genesis.json`, the llm.c header, the token shard
//! header and the dataset manifest. Small valid files are made here, then mutated thousands of times
//! with a seeded RNG: bit flips, byte writes, inserts, deletes, truncation, and field-level edits
//! (a JSON number or string replaced by an extreme one, a header int set to an extreme), with the
//! length prefix and checksum repaired half the time so the mutation reaches the parser behind them.
//!
//! Every result must be `Ok` or a clean `Err`: a panic fails the test with the target, seed and
//! mutation. No call may make a single allocation larger than twice the bytes of the files it reads
//! plus [`SLACK`] (the global allocator below records the largest, and stops the process naming the
//! case at any allocation above [`HARD_CAP`]), and `verify` may never call whole a file `load`
//! refuses. `GENESIS_FUZZ_VERBOSE=1` prints each case before it runs, `GENESIS_FUZZ_ITERS=N` changes
//! the count per target.

mod common;

use common::temp_dir;
use genesis::checkpoint::{self, Checkpoint};
use genesis::cpu::gpt::init_params;
use genesis::data::loader::DataLoader;
use genesis::data::manifest::{Manifest, Settings, ShardInfo, Split, SplitInfo, TokenizerInfo, MANIFEST_VERSION};
use genesis::data::shard::{write_shard, Shard};
use genesis::data::source::Docs;
use genesis::model::ModelConfig;
use genesis::rng::Rng;
use genesis::safetensors::{self, Dtype, SafetensorsFile};
use genesis::{hf, llmc, weights};
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

/// What a reader may allocate beyond twice its input (bf16 and f16 widen 2 bytes to an f32's 4):
/// small fixed-size tables, a GPT-2 tensor list, JSON values.
const SLACK: u64 = 1 << 20;
/// Mutated inputs per target (each is read by every parser of that target).
const DEFAULT_ITERS: usize = 5000;

/// No single allocation in this test may be larger (the files are a few KiB): a request above it is
/// a reader sized by a crafted header, and the process stops there naming the case.
const HARD_CAP: usize = 1 << 30;

/// The system allocator, recording the largest single allocation and refusing any above
/// [`HARD_CAP`].
struct Recording;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The case being run, for the message when an allocation is refused (no allocating there).
static CASE: [AtomicU8; 512] = [const { AtomicU8::new(0) }; 512];
static CASE_LEN: AtomicUsize = AtomicUsize::new(0);

fn set_case(case: &str) {
    let n = case.len().min(CASE.len());
    for (slot, &b) in CASE.iter().zip(&case.as_bytes()[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    CASE_LEN.store(n, Ordering::Relaxed);
}

fn record(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size > HARD_CAP {
        let mut buf = [0u8; 600];
        let head = b"fuzz_parsers: refused an allocation above 1 GiB in: ";
        buf[..head.len()].copy_from_slice(head);
        let n = CASE_LEN.load(Ordering::Relaxed);
        for i in 0..n {
            buf[head.len() + i] = CASE[i].load(Ordering::Relaxed);
        }
        buf[head.len() + n] = b'\n';
        // SAFETY: writes a stack buffer to stderr and aborts; neither allocates.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), head.len() + n + 1);
            libc::abort();
        }
    }
}

// SAFETY: every call goes straight to `System`; the additions are atomics and, past the cap, abort.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

fn small() -> ModelConfig {
    ModelConfig { max_seq_len: 8, vocab_size: 100, padded_vocab_size: 128, num_layers: 1, num_heads: 2, channels: 8 }
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// Where a file's header is, for mutations aimed at it.
#[derive(Clone, Copy)]
enum Shape {
    /// A Genesis checkpoint: JSON at 16..16+hlen (u32 at 12), its CRC-32 after it.
    Checkpoint,
    /// safetensors: u64 length, then JSON.
    Safetensors,
    /// A whole JSON file.
    Json,
    /// 256 little-endian i32 header words, `used` of them meaningful; `sized` says how long a file
    /// those words imply (so a mutation can make the length agree and reach the reader behind it).
    Ints { used: usize, sized: fn(&[i32]) -> Option<u64> },
}

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "2",
    "3",
    "7",
    "127",
    "128",
    "1023",
    "1024",
    "16384",
    "16385",
    "65536",
    "65537",
    "1048577",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "4611686018427387904",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e308",
    "1e999",
    "-1e308",
    "0.5",
    "1.0",
    "1e-5",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "\"7\"",
    "[]",
    "{}",
    "[1,2]",
];

const STRINGS: &[&str] = &[
    "F32",
    "F16",
    "BF16",
    "U8",
    "I64",
    "F64",
    "BOOL",
    "",
    "params",
    "m",
    "v",
    "gpt2",
    "gelu_new",
    "relu",
    "f32",
    "train",
    "val",
    "test",
    "whole",
    "text",
    "__metadata__",
    "../../etc/passwd",
    "train_000000.bin",
    "\u{0}",
];

const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    64,
    127,
    128,
    255,
    256,
    1023,
    1024,
    16384,
    16385,
    65535,
    65536,
    65537,
    1 << 20,
    (1 << 20) + 1,
    1 << 30,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    20240326,
    20240520,
];

/// Spans of the JSON number and string tokens in `text` (strings without their quotes).
fn json_tokens(text: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                out.push((start, i.min(text.len()), false));
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                out.push((start, i, true));
            }
            _ => i += 1,
        }
    }
    out
}

/// The header region of `bytes` (start, end), if it has one that can be found.
fn json_region(shape: Shape, bytes: &[u8]) -> Option<(usize, usize)> {
    match shape {
        Shape::Checkpoint if bytes.len() >= 16 => {
            let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
            (16 + hlen <= bytes.len()).then(|| (16, 16 + hlen))
        }
        Shape::Safetensors if bytes.len() >= 8 => {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            (n <= (bytes.len() - 8) as u64).then(|| (8, 8 + n as usize))
        }
        Shape::Json => Some((0, bytes.len())),
        _ => None,
    }
}

/// Replaces the header JSON `a..b` of `bytes` with `new`, repairing the length prefix (and for a
/// checkpoint the CRC, taking or giving zero padding so the sections keep their offsets).
fn replace_json(shape: Shape, bytes: &[u8], (a, b): (usize, usize), new: &[u8]) -> Vec<u8> {
    match shape {
        Shape::Checkpoint => {
            let mut out = bytes[..12].to_vec();
            out.extend_from_slice(&(new.len() as u32).to_le_bytes());
            out.extend_from_slice(new);
            out.extend_from_slice(&crc32fast::hash(new).to_le_bytes());
            let mut tail = &bytes[(b + 4).min(bytes.len())..];
            if new.len() <= b - a {
                out.resize(out.len() + (b - a - new.len()), 0);
            } else {
                let grow = new.len() - (b - a);
                let zeros = tail.iter().take_while(|&&x| x == 0).count();
                tail = &tail[grow.min(zeros)..];
            }
            out.extend_from_slice(tail);
            out
        }
        Shape::Safetensors => {
            let mut out = (new.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(new);
            out.extend_from_slice(&bytes[b..]);
            out
        }
        _ => {
            let mut out = bytes[..a].to_vec();
            out.extend_from_slice(new);
            out.extend_from_slice(&bytes[b..]);
            out
        }
    }
}

/// Recomputes a checkpoint's header CRC where the header lies inside the file.
fn fix_checkpoint_crc(bytes: &mut [u8]) {
    if let Some((a, b)) = json_region(Shape::Checkpoint, bytes) {
        if b + 4 <= bytes.len() {
            let crc = crc32fast::hash(&bytes[a..b]);
            bytes[b..b + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// A position in `bytes`, three times in four inside `0..hot` (the header).
fn position(rng: &mut Rng, len: usize, hot: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let hot = hot.clamp(1, len);
    if rng.below(4) < 3 {
        rng.below(hot as u64) as usize
    } else {
        rng.below(len as u64) as usize
    }
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}

/// One seeded mutation of `base`: the mutated bytes and what was done.
fn mutate(shape: Shape, base: &[u8], seed: u64) -> (Vec<u8>, String) {
    let mut rng = Rng::new(seed);
    let mut b = base.to_vec();
    let hot = match (shape, json_region(shape, base)) {
        (Shape::Ints { used, .. }, _) => 4 * used,
        (_, Some((_, end))) => end + 4,
        _ => 64,
    };
    let mut what = Vec::new();
    // One to three mutations on top of each other.
    for _ in 0..1 + rng.below(3) {
        let kind = rng.below(9);
        match kind {
            0 => {
                let p = position(&mut rng, b.len(), hot);
                if p < b.len() {
                    let bit = rng.below(8);
                    b[p] ^= 1 << bit;
                    what.push(format!("flip bit {bit} of byte {p}"));
                }
            }
            1 => {
                let p = position(&mut rng, b.len(), hot);
                let any = rng.below(256) as u8;
                let v = *pick(&mut rng, &[0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'"', b'{', b'-', any]);
                if p < b.len() {
                    b[p] = v;
                    what.push(format!("byte {p} = {v:#x}"));
                }
            }
            2 => {
                let p = position(&mut rng, b.len() + 1, hot);
                let n = 1 + rng.below(16) as usize;
                let ins: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                b.splice(p..p, ins);
                what.push(format!("insert {n} bytes at {p}"));
            }
            3 => {
                let p = position(&mut rng, b.len(), hot);
                let n = (1 + rng.below(64) as usize).min(b.len() - p.min(b.len()));
                b.drain(p..p + n);
                what.push(format!("delete {n} bytes at {p}"));
            }
            4 => {
                let n = position(&mut rng, b.len() + 1, hot);
                b.truncate(n);
                what.push(format!("truncate to {n}"));
            }
            5 | 6 if !matches!(shape, Shape::Ints { .. }) => {
                let Some((a, e)) = json_region(shape, &b) else { continue };
                let json = b[a..e].to_vec();
                let tokens = json_tokens(&json);
                let want_number = kind == 5;
                let spans: Vec<_> = tokens.iter().filter(|t| t.2 == want_number).collect();
                if spans.is_empty() {
                    continue;
                }
                let &&(s, t, _) = pick(&mut rng, &spans);
                let new_token =
                    if want_number { pick(&mut rng, NUMBERS).to_string() } else { pick(&mut rng, STRINGS).to_string() };
                let mut new = json[..s].to_vec();
                new.extend_from_slice(new_token.as_bytes());
                new.extend_from_slice(&json[t..]);
                what.push(format!("JSON {:?} -> {new_token:?}", String::from_utf8_lossy(&json[s..t])));
                b = replace_json(shape, &b, (a, e), &new);
            }
            _ => {
                // A header integer set to an extreme (or a neighbour of its value).
                let (offset, width) = match shape {
                    Shape::Ints { used, .. } => (4 * rng.below(used as u64) as usize, 4),
                    Shape::Checkpoint => (*pick(&mut rng, &[8usize, 12]), 4),
                    Shape::Safetensors => (0, 8),
                    Shape::Json => continue,
                };
                if offset + width > b.len() {
                    continue;
                }
                let old = if width == 4 {
                    i32::from_le_bytes(b[offset..offset + 4].try_into().unwrap()) as i64
                } else {
                    u64::from_le_bytes(b[offset..offset + 8].try_into().unwrap()) as i64
                };
                let v = match rng.below(3) {
                    0 => old.wrapping_add(1),
                    1 => old.wrapping_sub(1),
                    _ => *pick(&mut rng, INTS),
                };
                if width == 4 {
                    b[offset..offset + 4].copy_from_slice(&(v as i32).to_le_bytes());
                } else {
                    b[offset..offset + 8].copy_from_slice(&(v as u64).to_le_bytes());
                }
                what.push(format!("header int at byte {offset} {old} -> {v}"));
            }
        }
    }
    // Half the time make the file as long as its (mutated) header says, when that is small.
    if let Shape::Ints { sized, .. } = shape {
        if b.len() >= 1024 && rng.below(2) == 0 {
            let words: Vec<i32> =
                b[..1024].chunks_exact(4).map(|w| i32::from_le_bytes(w.try_into().unwrap())).collect();
            if let Some(n) = sized(&words).filter(|&n| n <= 1 << 20) {
                b.resize(n as usize, 0);
                what.push(format!("resized to {n} bytes"));
            }
        }
    }
    if matches!(shape, Shape::Checkpoint) && rng.below(2) == 0 {
        fix_checkpoint_crc(&mut b);
        what.push("header CRC repaired".into());
    }
    if what.is_empty() {
        what.push("unchanged".into());
    }
    (b, what.join("; "))
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// A parser under test: its name and a call returning how many values it loaded (0 when it loads
/// none).
type Parser = (&'static str, Box<dyn Fn() -> anyhow::Result<usize>>);

/// The length of an llm.c file with header `w`, computed as an unchecked reader would not: in u128.
fn llmc_size(w: &[i32]) -> Option<u64> {
    let [t, l, c, vp] = [w[2], w[4], w[6], w[7]].map(|x| u128::try_from(x).unwrap_or(0));
    let elem = match w[1] {
        3 => 4,
        5 => 2,
        _ => return None,
    };
    let params = vp * c + t * c + l * (12 * c * c + 13 * c) + 2 * c;
    u64::try_from(1024 + params * elem).ok()
}

/// The length of a shard whose header says `w[2]` tokens.
fn shard_size(w: &[i32]) -> Option<u64> {
    u64::try_from(w[2]).ok().map(|n| 1024 + 2 * n)
}

/// One file to mutate and the parsers that read it.
struct Target {
    name: &'static str,
    /// The file mutated in place (its valid bytes are restored after the run).
    file: PathBuf,
    shape: Shape,
    /// Files read alongside, counted in the allocation bound.
    companions: Vec<PathBuf>,
    parsers: Vec<Parser>,
    /// Pairs (verify, load) of parser indices: when the first is Ok the second must be.
    implies: Vec<(usize, usize)>,
}

fn parser(name: &'static str, f: impl Fn() -> anyhow::Result<usize> + 'static) -> Parser {
    (name, Box::new(f))
}

fn targets(root: &Path) -> Vec<Target> {
    let cfg = small();
    let params = init_params(&cfg, 1);
    let mut out = Vec::new();

    // A full checkpoint: params and both AdamW moments, with metadata.
    let ckpt = root.join("x.ckpt");
    let moments: Vec<f32> = params.iter().map(|x| x * 0.5).collect();
    let mut c = Checkpoint::new(cfg, 7, params.clone());
    c.sections.push(("m".into(), moments.clone()));
    c.sections.push(("v".into(), moments));
    c.meta = serde_json::json!({"note": "fuzz", "n": 3});
    checkpoint::save(&ckpt, &c).unwrap();
    let (a, b, d, e, f) = (ckpt.clone(), ckpt.clone(), ckpt.clone(), ckpt.clone(), ckpt.clone());
    out.push(Target {
        name: "checkpoint",
        file: ckpt.clone(),
        shape: Shape::Checkpoint,
        companions: vec![],
        parsers: vec![
            parser("checkpoint::read_info", move || checkpoint::read_info(&a).map(|_| 0)),
            parser("checkpoint::verify", move || checkpoint::verify(&b).map(|_| 0)),
            parser("checkpoint::load", move || {
                checkpoint::load(&d).map(|c| c.sections.iter().map(|s| s.1.len()).sum())
            }),
            parser("weights::verify", move || weights::verify(&e).map(|_| 0)),
            parser("weights::load", move || weights::load(&f).map(|w| w.params.len())),
        ],
        implies: vec![(1, 2), (3, 4)],
    });

    // An export without genesis.json (so verify reads past the sha256), and one with it.
    for (name, keep_genesis_json) in [("safetensors", false), ("genesis.json", true)] {
        let dir = root.join(name.replace('.', "_"));
        let from = hf::Provenance { source: "fuzz".into(), source_format: "test".into(), step: Some(3) };
        hf::export(&dir, &cfg, &params, Dtype::F32, &from).unwrap();
        if !keep_genesis_json {
            std::fs::remove_file(dir.join(hf::GENESIS_FILE)).unwrap();
        }
        let st = dir.join(hf::MODEL_FILE);
        let (a, b, d, e, f, g) = (st.clone(), st.clone(), st.clone(), st.clone(), st.clone(), dir.clone());
        let mut parsers = vec![
            parser("safetensors::read_header", move || safetensors::read_header(&a).map(|_| 0)),
            parser("SafetensorsFile::open", move || SafetensorsFile::open(&b).map(|_| 0)),
            parser("hf::open_gpt2", move || hf::open_gpt2(&d).map(|_| 0)),
            parser("weights::verify", move || weights::verify(&e).map(|_| 0)),
            parser("hf::load", move || hf::load(&f).map(|x| x.1.len())),
            parser("weights::load", move || weights::load(&g).map(|w| w.params.len())),
        ];
        let (file, shape) = if keep_genesis_json {
            let gj = dir.join(hf::GENESIS_FILE);
            let gj2 = gj.clone();
            parsers.push(parser("hf::read_export_info", move || {
                hf::read_export_info(&gj2.with_file_name(hf::MODEL_FILE)).map(|_| 0)
            }));
            (gj, Shape::Json)
        } else {
            (st.clone(), Shape::Safetensors)
        };
        let companions = [hf::MODEL_FILE, hf::CONFIG_FILE, hf::GENESIS_FILE]
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| *p != file)
            .collect();
        out.push(Target { name, file, shape, companions, parsers, implies: vec![(3, 4), (3, 5)] });
    }

    // config.json beside a valid model.safetensors.
    let dir = root.join("config_json");
    let from = hf::Provenance { source: "fuzz".into(), source_format: "test".into(), step: None };
    hf::export(&dir, &cfg, &params, Dtype::BF16, &from).unwrap();
    std::fs::remove_file(dir.join(hf::GENESIS_FILE)).unwrap();
    let config = dir.join(hf::CONFIG_FILE);
    let st = dir.join(hf::MODEL_FILE);
    let (a, b, d) = (config.clone(), st.clone(), st.clone());
    out.push(Target {
        name: "config.json",
        file: config,
        shape: Shape::Json,
        companions: vec![st],
        parsers: vec![
            parser("hf::read_config", move || hf::read_config(&a).map(|_| 0)),
            parser("weights::verify", move || weights::verify(&b).map(|_| 0)),
            parser("weights::load", move || weights::load(&d).map(|w| w.params.len())),
        ],
        implies: vec![(1, 2)],
    });

    // An llm.c file.
    let bin = root.join("x.bin");
    llmc::write_model(&bin, &cfg, &params).unwrap();
    let (a, b, d, e) = (bin.clone(), bin.clone(), bin.clone(), bin.clone());
    out.push(Target {
        name: "llm.c",
        file: bin,
        shape: Shape::Ints { used: 8, sized: llmc_size },
        companions: vec![],
        parsers: vec![
            parser("llmc::read_header", move || llmc::read_header(&a).map(|_| 0)),
            parser("llmc::read_model", move || llmc::read_model(&b).map(|x| x.1.len())),
            parser("weights::verify", move || weights::verify(&d).map(|_| 0)),
            parser("weights::load", move || weights::load(&e).map(|w| w.params.len())),
        ],
        implies: vec![(0, 1), (2, 3)],
    });

    // A prepared dataset: two shards and their manifest.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut splits = std::collections::BTreeMap::new();
    for (split, n) in [("train", 600usize), ("val", 100)] {
        let tokens: Vec<u16> = (0..n).map(|i| (i * 7919 % 50257) as u16).collect();
        let file = format!("{split}_000000.bin");
        write_shard(&data.join(&file), &tokens).unwrap();
        let shards = vec![ShardInfo { file, tokens: n as u64, sha256: String::new() }];
        splits.insert(split.to_string(), SplitInfo { documents: 1, tokens: n as u64, shards });
    }
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: "fuzz".into(),
        genesis_version: "test".into(),
        tokenizer: TokenizerInfo::gpt2(),
        settings: Settings { docs: Docs::Whole, field: "text".into(), val_fraction: 0.1, shard_tokens: 1000 },
        origin: None,
        sources: Vec::new(),
        splits,
    };
    manifest.save(&data).unwrap();
    let shard = data.join("val_000000.bin");
    let a = shard.clone();
    out.push(Target {
        name: "shard",
        file: shard,
        shape: Shape::Ints { used: 3, sized: shard_size },
        companions: vec![],
        parsers: vec![parser("Shard::open", move || Shard::open(&a).map(|s| s.tokens().len()))],
        implies: vec![],
    });
    let (a, b) = (data.clone(), data.clone());
    out.push(Target {
        name: "manifest",
        file: data.join("manifest.json"),
        shape: Shape::Json,
        companions: vec![data.join("train_000000.bin"), data.join("val_000000.bin")],
        parsers: vec![
            parser("Manifest::load + shard_paths", move || {
                let m = Manifest::load(&a)?;
                Ok(m.shard_paths(&a, Split::Train)?.len() + m.shard_paths(&a, Split::Val)?.len())
            }),
            parser("DataLoader::open", move || DataLoader::open(&b, Split::Train, 2, 8, 1).map(|_| 0)),
        ],
        implies: vec![],
    });
    out
}

/// Replaces the contents of `path` in place. (Not `fs::write`: truncating to zero makes ext4 flush the
/// file on close, which turns thousands of tiny writes into seconds of waiting for the disk.)
fn overwrite(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
}

#[test]
fn mutated_files_give_ok_or_a_clean_error_and_allocate_within_their_size() {
    let iters: usize = std::env::var("GENESIS_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_ITERS);
    let verbose = std::env::var_os("GENESIS_FUZZ_VERBOSE").is_some();
    let root = temp_dir("fuzz");
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut total = 0;
    for (t, target) in targets(&root).into_iter().enumerate() {
        let base = std::fs::read(&target.file).unwrap();
        let companions: u64 = target.companions.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
        let (mut ok, mut err) = (0usize, 0usize);
        let t0 = Instant::now();
        for i in 0..iters {
            let seed = (t as u64) << 32 | i as u64;
            let (bytes, what) = mutate(target.shape, &base, seed);
            overwrite(&target.file, &bytes);
            let input = bytes.len() as u64 + companions;
            let mut results = Vec::new();
            for (name, call) in &target.parsers {
                let case = format!("{} seed {seed:#x} ({what}): {name}", target.name);
                if verbose {
                    eprintln!("{case}");
                }
                set_case(&case);
                LARGEST.store(0, Ordering::Relaxed);
                let r = catch_unwind(AssertUnwindSafe(call));
                let largest = LARGEST.load(Ordering::Relaxed) as u64;
                match &r {
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                        failures.push(format!("{case} panicked: {}", msg.unwrap_or_default()));
                    }
                    Ok(Ok(values)) if *values as u64 * 4 > 2 * input + SLACK => {
                        failures.push(format!("{case} loaded {values} values from {input} bytes"))
                    }
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(e)) => {
                        err += 1;
                        let msg = format!("{e:#}");
                        if msg.contains('\n') || msg.is_empty() {
                            failures.push(format!("{case}: the error is not one line: {msg:?}"));
                        }
                    }
                }
                if largest > 2 * input + SLACK {
                    failures.push(format!("{case} allocated {largest} bytes at once for {input} bytes of input"));
                }
                results.push(matches!(r, Ok(Ok(_))));
            }
            for &(v, l) in &target.implies {
                if results[v] && !results[l] {
                    failures.push(format!(
                        "{} seed {seed:#x} ({what}): {} accepts the file but {} refuses it",
                        target.name, target.parsers[v].0, target.parsers[l].0
                    ));
                }
            }
            total += 1;
        }
        std::fs::write(&target.file, &base).unwrap();
        println!(
            "{:<13} {iters} mutated inputs x {} parsers: {ok} Ok, {err} Err, {:.2} s",
            target.name,
            target.parsers.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    println!("total: {total} mutated inputs in {:.2} s", start.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&root);
    failures.truncate(40);
    assert!(failures.is_empty(), "{} failures (first 40):\n{}", failures.len(), failures.join("\n"));
}
