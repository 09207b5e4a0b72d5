//! Helpers shared by the integration tests (declare `mod common;` at the top of a test file).
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use genesis::checkpoint;
use genesis::cpu::gpt::Activations;
use genesis::data::loader::DataLoader;
use genesis::data::manifest::Split;
use genesis::data::prepare::{prepare, Input, PrepareConfig};
use genesis::data::source::{Docs, Format, SourceFile};
use genesis::model::ModelConfig;
use genesis::train::RunConfig;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// A fresh, empty directory under the system temp dir, unique per process and call. Tests may
/// remove it when done; what a test left (one that failed or did not clean up) is removed by the
/// first `temp_dir` of a later test process once the process that made it has exited, so repeated
/// runs do not fill the temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_dead_processes_temp_dirs);
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("genesis-test-{tag}-{}-{n}-{nanos}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes `genesis-test-{tag}-{pid}-{n}-{nanos}` directories whose process is gone (Linux: no
/// `/proc/{pid}`); elsewhere it does nothing.
fn remove_dead_processes_temp_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_prefix("genesis-test-")) else { continue };
        let Some(pid) = name.rsplit('-').nth(2).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The repository's root (CARGO_MANIFEST_DIR, read at run time).
pub fn repo_root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run the tests through cargo"))
}

/// `../shared/data/NAME` beside the repository (found at run time from CARGO_MANIFEST_DIR); panics
/// naming the path it looked for when the shared test data is missing.
pub fn shared_file(name: &str) -> PathBuf {
    let path = repo_root().join("../shared/data").join(name);
    assert!(
        path.is_file(),
        "test data missing: looked for {} (../shared/data/{name} beside the repository)",
        path.display()
    );
    path
}

/// The error of `r`, with its whole context chain, as one string.
pub fn err_string<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// Asserts that `msg` contains every one of `parts`.
pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

/// Runs the `genesis` binary with `args` and returns what it printed and its status.
pub fn genesis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_genesis")).args(args).output().expect("run the genesis binary")
}

/// A child's stdout or stderr as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A child's stdout followed by its stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

// ---- comparisons of f32 values, for CPU and GPU tests alike ----

/// Asserts that `got` holds the same f32 values as `want` bit for bit (same length; -0.0 differs
/// from 0.0, NaNs compare by payload), naming the first element that differs.
pub fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        let (g, w) = (got[i], want[i]);
        panic!("{what}: element {i} is {g} but should be {w} (bits {:#010x} vs {:#010x})", g.to_bits(), w.to_bits());
    }
}

/// The largest |x| (0 for no values; NaNs are passed over).
pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The largest |a - b| over the pairs, each difference rounded to f32 (NaNs are passed over).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

// ---- datasets and training runs ----

/// Prepares the text file `src` as dataset `name` in `data`, one document per paragraph, without
/// a progress bar.
pub fn prepare_paragraphs(src: &Path, name: &str, data: &Path) {
    let mut cfg = PrepareConfig::new(name);
    cfg.source.docs = Docs::Paragraphs;
    cfg.progress = false;
    prepare(&[Input::local(SourceFile { path: src.to_path_buf(), format: Format::Text })], data, &cfg).unwrap();
}

/// Writes `text` to `dir/NAME.txt` and prepares it ([`prepare_paragraphs`]) into `dir/data`, which
/// it returns.
pub fn paragraph_dataset(dir: &Path, name: &str, text: &str) -> PathBuf {
    let src = dir.join(format!("{name}.txt"));
    fs::write(&src, text).unwrap();
    let data = dir.join("data");
    prepare_paragraphs(&src, name, &data);
    data
}

/// The short training run of the `tiny` model the tests start from: `steps` steps on the dataset
/// prepared in `data`, batches of 4 sequences of 32 tokens accumulated twice, learning rate 3e-3
/// (3 warm-up steps, decaying to 10%), weight decay 0.1, gradients clipped at 1.0, evaluation on 2
/// val batches only at the start, at checkpoints and at the end, one checkpoint at the end (3
/// kept), seed 7, a random init. A test that needs other settings changes them with
/// `RunConfig { field: value, ..tiny_run(data, steps) }`.
pub fn tiny_run(data: &Path, steps: u64) -> RunConfig {
    RunConfig {
        model: ModelConfig::preset("tiny").unwrap(),
        data: data.to_path_buf(),
        steps,
        batch: 4,
        seq: 32,
        grad_accum: 2,
        lr: 3e-3,
        min_lr_frac: 0.1,
        warmup: 3,
        weight_decay: 0.1,
        grad_clip: 1.0,
        eval_every: 0,
        eval_batches: 2,
        ckpt_every: 0,
        keep: 3,
        seed: 7,
        init_from: None,
    }
}

/// The CPU's validation loss of `params` over `run.eval_batches` batches of `run.batch` x
/// `run.seq` tokens from the val split of `run.data`, the loader seeded with `run.seed`.
pub fn val_loss(run: &RunConfig, params: &[f32]) -> f64 {
    let mut val = DataLoader::open(&run.data, Split::Val, run.batch, run.seq, run.seed).unwrap();
    let mut acts = Activations::<f32>::new(&run.model, run.batch, run.seq);
    genesis::train::evaluate(&run.model, params, &mut val, &mut acts, run.eval_batches)
}

/// (step, loss bits) of each logged loss, to compare two runs bit for bit.
pub fn loss_bits(losses: &[(u64, f64)]) -> Vec<(u64, u64)> {
    losses.iter().map(|&(s, l)| (s, l.to_bits())).collect()
}

/// Asserts that two checkpoints are of the same step and hold bit-identical parameters and AdamW
/// moments.
pub fn assert_same_state(a: &Path, b: &Path) {
    let (ca, cb) = (checkpoint::load(a).unwrap(), checkpoint::load(b).unwrap());
    assert_eq!(ca.step, cb.step);
    for name in ["params", "adam_m", "adam_v"] {
        let (x, y) = (ca.section(name).unwrap(), cb.section(name).unwrap());
        let differ = x.iter().zip(y).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        assert_eq!(differ, 0, "{name}: {differ} values differ between {} and {}", a.display(), b.display());
    }
}

// ---- parquet files ----

/// Writes `rows` as a parquet file with one OPTIONAL BYTE_ARRAY (UTF8) column named `column`
/// (`None` is a null), SNAPPY-compressed, in row groups of `rows_per_group` rows.
pub fn write_parquet_text(path: &Path, column: &str, rows: &[Option<&str>], rows_per_group: usize) {
    let rows: Vec<Option<&[u8]>> = rows.iter().map(|r| r.map(str::as_bytes)).collect();
    write_parquet_bytes(path, column, &rows, rows_per_group);
}

/// [`write_parquet_text`] with raw bytes, to write values that are not valid UTF-8.
pub fn write_parquet_bytes(path: &Path, column: &str, rows: &[Option<&[u8]>], rows_per_group: usize) {
    let schema = format!("message schema {{ OPTIONAL BYTE_ARRAY {column} (UTF8); }}");
    let mut writer = parquet_writer(path, &schema);
    for group in rows.chunks(rows_per_group.max(1)) {
        let values: Vec<ByteArray> = group.iter().flatten().map(|v| ByteArray::from(v.to_vec())).collect();
        let defs: Vec<i16> = group.iter().map(|r| i16::from(r.is_some())).collect();
        let mut row_group = writer.next_row_group().unwrap();
        let mut col = row_group.next_column().unwrap().expect("one column");
        col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
        col.close().unwrap();
        row_group.close().unwrap();
    }
    writer.close().unwrap();
}

/// Writes a parquet file with one REQUIRED INT64 column named `column`, in one row group.
pub fn write_parquet_int64(path: &Path, column: &str, values: &[i64]) {
    let mut writer = parquet_writer(path, &format!("message schema {{ REQUIRED INT64 {column}; }}"));
    let mut row_group = writer.next_row_group().unwrap();
    let mut col = row_group.next_column().unwrap().expect("one column");
    col.typed::<Int64Type>().write_batch(values, None, None).unwrap();
    col.close().unwrap();
    row_group.close().unwrap();
    writer.close().unwrap();
}

fn parquet_writer(path: &Path, schema: &str) -> SerializedFileWriter<File> {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap()
}
