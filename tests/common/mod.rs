//! Helpers shared by the integration tests (declare `mod common;` at the top of a test file).
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// A fresh, empty directory under the system temp dir, unique per process and call. Not removed
/// automatically (the OS cleans the temp dir); tests may remove it when done.
pub fn temp_dir(tag: &str) -> PathBuf {
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

/// `../shared/data/NAME` beside the repository (found at run time from CARGO_MANIFEST_DIR); panics
/// naming the path it looked for when the shared test data is missing.
pub fn shared_file(name: &str) -> PathBuf {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run the tests through cargo"));
    let path = root.join("../shared/data").join(name);
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
