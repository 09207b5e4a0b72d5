//! Input files -> documents, streamed as pieces.
//!
//! `genesis prepare` accepts three formats, chosen by extension ([`format_of`]):
//!
//! - **text** (`.txt .text .raw .md`): UTF-8 text, cut into documents by [`Docs`];
//! - **JSON Lines** (`.jsonl .ndjson`): one JSON object per line, the document is a string field;
//! - **Parquet** (`.parquet`): one string column, one document per row (or one line per row for
//!   [`Docs::Wikitext`]). Only uncompressed and snappy column chunks can be read.
//!
//! [`expand_inputs`] turns the `--input` arguments (files, directories, glob patterns) into a list
//! of [`SourceFile`]s, and [`read_pieces`] streams the documents of one file as [`Piece`]s.
//!
//! # Streaming and memory
//!
//! Nothing here reads a whole file into memory. Text files are read line by line (a line longer than
//! 1 MiB is read in 1 MiB parts), JSON Lines one line at a time (at most 256 MiB per line), Parquet
//! one batch of 8192 values of one row group at a time. A document is handed out in pieces of about
//! `max_piece_bytes` (a little more: a piece ends at the first cut point past the target).
//!
//! # Cutting documents without changing their tokenization
//!
//! Pieces are cut only where [`is_cut_point`] holds (before a `'\n'` or `' '` that follows a
//! non-whitespace character), using [`split_for_encoding`], so encoding the pieces one by one and
//! concatenating gives exactly the tokens of the whole document. A document with no cut point for
//! [`MAX_UNCUT_BYTES`] (64 MiB: one enormous "word", or a huge run of whitespace) is cut at a char
//! boundary instead, to bound memory; only such pathological inputs tokenize differently at the cut.
//! Concatenating a document's pieces always gives exactly the document text.
//!
//! # Text normalisation and empty documents
//!
//! In text files a CRLF line ending becomes LF, so Windows files (and wikitext's raw files, which
//! have CRLF endings) tokenize like their LF versions; a lone `'\r'` is kept. A UTF-8 byte order mark
//! at the start of a text or JSON Lines file is dropped. JSON and Parquet strings are passed through
//! unchanged. A document holding nothing but whitespace (an empty JSON string, a
//! run of blank lines before the first wikitext heading) is skipped and not counted.
//!
//! Lines longer than 1 MiB are never recognised as blank lines or wikitext headings; they are
//! always ordinary text.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use parquet::basic::{Compression, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::SchemaDescriptor;

use crate::data::cut::{is_cut_point, split_for_encoding};

/// A document with no cut point for this many bytes is cut at a char boundary (see the module docs).
pub const MAX_UNCUT_BYTES: usize = 64 << 20;
/// The longest JSON Lines line accepted (one document must fit in memory, with its parsed copy).
pub const MAX_JSONL_LINE_BYTES: usize = 256 << 20;
/// Text lines longer than this are read in parts of this size.
const LINE_PART_BYTES: usize = 1 << 20;
/// Values read from a Parquet column at a time.
const PARQUET_BATCH: usize = 8192;

const TEXT_EXTENSIONS: &[&str] = &["txt", "text", "raw", "md"];
const JSONL_EXTENSIONS: &[&str] = &["jsonl", "ndjson"];
const PARQUET_EXTENSIONS: &[&str] = &["parquet"];
const COMPRESSED_EXTENSIONS: &[&str] =
    &["gz", "tgz", "zst", "zstd", "bz2", "xz", "lz4", "lzma", "br", "zip", "7z", "tar", "snappy", "sz"];
/// The byte order mark some Windows tools put at the start of UTF-8 files; dropped there.
const BOM: char = '\u{feff}';
const SUPPORTED: &str = ".txt .text .raw .md (text), .jsonl .ndjson (JSON Lines), .parquet";

/// An input file format, chosen from the file extension by [`format_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// UTF-8 text.
    Text,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// Apache Parquet with a string column.
    Parquet,
}

/// How a file's text is cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Docs {
    /// text: the whole file is one document; jsonl: each line; parquet: each row.
    Whole,
    /// text only: documents are separated by one or more blank (empty or whitespace-only) lines;
    /// the blank lines themselves are dropped.
    Paragraphs,
    /// text or parquet (where each row is one line, as in Hugging Face's wikitext): lines are grouped
    /// into articles, each starting at a top-level heading line ` = Title = ` (see
    /// [`is_wikitext_heading`]); subsection lines like ` = = History = = ` are not article starts.
    /// Text before the first heading is its own document. For jsonl this is an error.
    Wikitext,
}

impl Docs {
    /// The `--docs` value: `whole`, `paragraphs` or `wikitext`.
    pub fn name(self) -> &'static str {
        match self {
            Docs::Whole => "whole",
            Docs::Paragraphs => "paragraphs",
            Docs::Wikitext => "wikitext",
        }
    }
}

/// Options for reading documents out of a file.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The JSON Lines field and the Parquet column holding the text (default `"text"`).
    pub field: String,
    /// How the text is cut into documents (default [`Docs::Whole`]).
    pub docs: Docs,
    /// A text file read with [`Docs::Whole`] only: a second document starts at the first paragraph
    /// (a line after a blank one) that begins at or after this many bytes of its text, or at the
    /// first line start once [`TAIL_PARAGRAPH_SEARCH`] more bytes pass without one. `prepare` holds
    /// that tail out as the val split of a single text file.
    pub tail_from: Option<u64>,
}

/// How far past [`SourceOptions::tail_from`] a paragraph start is looked for before a line start will do.
pub const TAIL_PARAGRAPH_SEARCH: u64 = 64 << 10;

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { field: "text".to_string(), docs: Docs::Whole, tail_from: None }
    }
}

/// One input file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: Format,
}

/// One piece of a document, in order. `doc_start` is true for the first piece of each document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub doc_start: bool,
    pub text: String,
}

/// The format from the extension (case-insensitive): `.txt .text .raw .md` -> Text;
/// `.jsonl .ndjson` -> Jsonl; `.parquet` -> Parquet. Anything else is an error naming the file and
/// listing the supported extensions (compressed files: decompress them first).
pub fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    let ext = ext.as_str();
    if TEXT_EXTENSIONS.contains(&ext) {
        return Ok(Format::Text);
    }
    if JSONL_EXTENSIONS.contains(&ext) {
        return Ok(Format::Jsonl);
    }
    if PARQUET_EXTENSIONS.contains(&ext) {
        return Ok(Format::Parquet);
    }
    let name = path.display();
    if COMPRESSED_EXTENSIONS.contains(&ext) {
        bail!(
            "{name} is compressed (.{ext}), which prepare cannot read; decompress it first (for example \
             `gunzip`, `zstd -d`, `bunzip2`, `xz -d`) and pass the decompressed file. Supported extensions: {SUPPORTED}"
        );
    }
    if ext == "json" {
        bail!(
            "{name}: .json files are not supported; use JSON Lines instead (one object per line, named .jsonl), \
             e.g. `jq -c '.[]' {name} > out.jsonl`. Supported extensions: {SUPPORTED}"
        );
    }
    if ext.is_empty() {
        bail!("{name} has no file extension, so its format is unknown; rename it with one of: {SUPPORTED}");
    }
    bail!("{name} has the unsupported extension .{ext}; supported extensions: {SUPPORTED}")
}

/// What [`expand_inputs_detailed`] found: the usable files and the files it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Usable files, in the order of the arguments, each directory's and glob's files sorted by path.
    pub files: Vec<SourceFile>,
    /// Files inside directories (or matched by globs) skipped for an unsupported extension.
    pub skipped: Vec<PathBuf>,
}

/// Expands `--input` arguments, in the order given, into the files to read:
///
/// - an existing file: its format comes from its extension (an unsupported one is an error);
/// - a directory: all files below it, recursively, sorted by path; hidden files and directories
///   (name starting with `.`) are skipped, so are files with unsupported extensions (see
///   [`expand_inputs_detailed`]); a directory with no usable file is an error;
/// - otherwise, an argument containing `*`, `?` or `[` is a glob pattern (sorted matches; matched
///   directories are expanded like directories; leading dots must be matched literally); a pattern
///   matching nothing usable is an error.
///
/// A file reached twice (by any route) is kept once, at its first occurrence. A missing file and an
/// empty argument list are errors.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<SourceFile>> {
    Ok(expand_inputs_detailed(inputs)?.files)
}

/// [`expand_inputs`], also reporting the files skipped for an unsupported extension.
pub fn expand_inputs_detailed(inputs: &[String]) -> Result<Expansion> {
    if inputs.is_empty() {
        bail!("no inputs given; pass at least one --input FILE, DIRECTORY or GLOB");
    }
    let mut out = Expansion::default();
    let mut seen = HashSet::new();
    for arg in inputs {
        let found = expand_one(arg)?;
        for file in found.files {
            let key = fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
            if seen.insert(key) {
                out.files.push(file);
            }
        }
        out.skipped.extend(found.skipped);
    }
    Ok(out)
}

fn expand_one(arg: &str) -> Result<Expansion> {
    if arg.is_empty() {
        bail!("an --input argument is empty; pass a file, a directory or a glob pattern");
    }
    let path = Path::new(arg);
    if path.is_dir() {
        let found = expand_dir(path)?;
        if found.files.is_empty() {
            bail!("directory {arg} {}", describe_unusable(&found.skipped));
        }
        return Ok(found);
    }
    if path.exists() {
        let format = format_of(path)?;
        return Ok(Expansion { files: vec![SourceFile { path: path.to_path_buf(), format }], skipped: vec![] });
    }
    if arg.contains(['*', '?', '[']) {
        return expand_glob(arg);
    }
    bail!("input {arg} does not exist; check the path (a directory or a glob pattern with * ? [ also works)")
}

/// Says what an input that yielded no usable file contained.
fn describe_unusable(skipped: &[PathBuf]) -> String {
    if skipped.is_empty() {
        return "contains no files (hidden files and directories are ignored)".to_string();
    }
    let shown: Vec<String> = skipped.iter().take(5).map(|p| p.display().to_string()).collect();
    let more = if skipped.len() > 5 { format!(" and {} more", skipped.len() - 5) } else { String::new() };
    format!(
        "contains no supported input file: {} file(s) with unsupported extensions ({}{more}); supported extensions: \
         {SUPPORTED}",
        skipped.len(),
        shown.join(", ")
    )
}

/// All non-hidden files below `dir`, sorted by path, split into usable and skipped ones.
fn expand_dir(dir: &Path) -> Result<Expansion> {
    let mut paths = Vec::new();
    let mut visited = HashSet::new();
    walk_dir(dir, &mut paths, &mut visited)?;
    paths.sort();
    let mut out = Expansion::default();
    for path in paths {
        classify(path, &mut out);
    }
    Ok(out)
}

fn classify(path: PathBuf, out: &mut Expansion) {
    match format_of(&path) {
        Ok(format) => out.files.push(SourceFile { path, format }),
        Err(_) => out.skipped.push(path),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Collects the files below `dir` (following symbolic links, visiting each directory once).
fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) -> Result<()> {
    let real = fs::canonicalize(dir).with_context(|| format!("cannot open directory {}", dir.display()))?;
    if !visited.insert(real) {
        return Ok(());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list directory {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list directory {}", dir.display()))?.path();
        if is_hidden(&path) {
            continue;
        }
        let Ok(meta) = fs::metadata(&path) else { continue }; // a dangling link
        if meta.is_dir() {
            walk_dir(&path, files, visited)?;
        } else if meta.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

fn expand_glob(pattern: &str) -> Result<Expansion> {
    let options =
        glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
    let paths = glob::glob_with(pattern, options).with_context(|| format!("invalid glob pattern {pattern}"))?;
    let mut matched = Vec::new();
    for entry in paths {
        matched.push(entry.with_context(|| format!("cannot read a path matched by {pattern}"))?);
    }
    if matched.is_empty() {
        bail!("glob pattern {pattern} matched nothing; check the pattern (quote it so the shell does not expand it)");
    }
    matched.sort();
    let mut out = Expansion::default();
    for path in matched {
        if path.is_dir() {
            let found = expand_dir(&path)?;
            out.files.extend(found.files);
            out.skipped.extend(found.skipped);
        } else {
            classify(path, &mut out);
        }
    }
    if out.files.is_empty() {
        bail!("glob pattern {pattern} matched nothing usable: it {}", describe_unusable(&out.skipped));
    }
    Ok(out)
}

/// Whether `line` (with or without its line ending) is a top-level wikitext heading ` = Title = `:
/// it starts with `" = "`, ends with `" ="` or `" = "`, and the title between them is not blank and
/// does not itself start or end with `'='` (so ` = = History = = ` is not one).
pub fn is_wikitext_heading(line: &str) -> bool {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some(rest) = line.strip_prefix(" = ") else { return false };
    let Some(title) = rest.strip_suffix(" = ").or_else(|| rest.strip_suffix(" =")) else { return false };
    !title.trim().is_empty() && !title.starts_with('=') && !title.ends_with('=')
}

/// Streams the documents of one file as pieces of at most about `max_piece_bytes` bytes, in order,
/// calling `sink` for each; stops and returns the sink's error if it fails. Returns the number of
/// documents. See the module docs for the cutting rules, and [`Docs`] for what a document is.
pub fn read_pieces(
    file: &SourceFile,
    opts: &SourceOptions,
    max_piece_bytes: usize,
    sink: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<u64> {
    let path = &file.path;
    check_docs_mode(file, opts.docs)?;
    let mut docs = DocWriter::new(max_piece_bytes, sink);
    match file.format {
        Format::Text => read_text(path, opts.docs, opts.tail_from, &mut docs)?,
        Format::Jsonl => read_jsonl(path, &opts.field, &mut docs)?,
        Format::Parquet => read_parquet(path, opts, &mut docs)?,
    }
    if docs.count == 0 {
        bail!("{} has no documents; remove it from the inputs", path.display());
    }
    Ok(docs.count)
}

/// The documents `file` holds when cut as `opts` says, reading only until `enough` are found (then
/// the answer is `enough`). Errors as [`read_pieces`] does, e.g. for a `--docs` mode that does not
/// apply to the file.
pub fn count_documents(file: &SourceFile, opts: &SourceOptions, enough: u64) -> Result<u64> {
    let mut found = 0u64;
    let result = read_pieces(file, opts, 1 << 20, &mut |piece| {
        found += u64::from(piece.doc_start);
        if found >= enough {
            bail!("found enough documents");
        }
        Ok(())
    });
    match result {
        Ok(count) => Ok(count),
        Err(_) if found >= enough => Ok(enough),
        Err(e) => Err(e),
    }
}

fn check_docs_mode(file: &SourceFile, docs: Docs) -> Result<()> {
    let allowed = match file.format {
        Format::Text => true,
        Format::Jsonl => docs == Docs::Whole,
        Format::Parquet => docs != Docs::Paragraphs,
    };
    if !allowed {
        let what = match file.format {
            Format::Jsonl => "JSON Lines files always hold one document per line; use --docs whole",
            _ => "Parquet files hold one document per row (--docs whole) or one line per row (--docs wikitext)",
        };
        bail!("{}: --docs {} does not apply to this file: {what}", file.path.display(), docs.name());
    }
    Ok(())
}

fn open_input(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("input {} does not exist", path.display()),
        _ => anyhow::Error::new(e).context(format!("cannot open input {}", path.display())),
    })
}

// ---------------------------------------------------------------------------------------------
// Documents -> pieces

/// Collects the text of the current document and hands it to the sink in pieces cut at
/// tokenization-safe points.
struct DocWriter<'s> {
    sink: &'s mut dyn FnMut(Piece) -> Result<()>,
    max: usize,
    /// Text of the current document not yet handed out.
    buf: String,
    /// Positions of `buf` below this (and at or past `max`) are known not to be cut points.
    scanned: usize,
    /// Whether a piece of the current document was handed out.
    started: bool,
    /// Documents finished so far.
    count: u64,
}

impl<'s> DocWriter<'s> {
    fn new(max_piece_bytes: usize, sink: &'s mut dyn FnMut(Piece) -> Result<()>) -> Self {
        DocWriter { sink, max: max_piece_bytes.max(1), buf: String::new(), scanned: 0, started: false, count: 0 }
    }

    /// Appends text to the current document, handing out the pieces that are ready.
    fn push(&mut self, text: &str) -> Result<()> {
        self.buf.push_str(text);
        if self.buf.len() > self.max {
            self.emit_ready()?;
        }
        Ok(())
    }

    /// Ends the current document. A document of whitespace only that was not handed out yet is dropped.
    fn end_doc(&mut self) -> Result<()> {
        let text = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if !self.started && !has_text(&text) {
            return Ok(());
        }
        if !text.is_empty() {
            self.emit(text)?;
        }
        self.started = false;
        self.count += 1;
        Ok(())
    }

    fn emit(&mut self, text: String) -> Result<()> {
        let piece = Piece { doc_start: !self.started, text };
        self.started = true;
        (self.sink)(piece)
    }

    /// Hands out every chunk of `buf` but the last when `buf` has a cut point past `max`; forces a
    /// cut when it has grown to [`MAX_UNCUT_BYTES`] without one.
    fn emit_ready(&mut self) -> Result<()> {
        let from = self.scanned.max(self.max);
        let has_cut = (from..self.buf.len()).any(|p| is_cut_point(&self.buf, p));
        self.scanned = self.buf.len();
        if has_cut {
            let lengths: Vec<usize> = {
                let chunks = split_for_encoding(&self.buf, self.max);
                chunks[..chunks.len() - 1].iter().map(|c| c.len()).collect()
            };
            let mut start = 0;
            for len in lengths {
                let piece = self.buf[start..start + len].to_string();
                self.emit(piece)?;
                start += len;
            }
            self.buf.drain(..start);
            self.scanned = self.buf.len();
        }
        let hard = MAX_UNCUT_BYTES.max(self.max);
        while self.buf.len() >= hard {
            let cut = floor_char_boundary(&self.buf, hard);
            let piece = self.buf[..cut].to_string();
            self.emit(piece)?;
            self.buf.drain(..cut);
            self.scanned = self.buf.len();
        }
        Ok(())
    }
}

/// Whether `text` has a character other than whitespace.
fn has_text(text: &str) -> bool {
    text.chars().any(|c| !c.is_whitespace())
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

// ---------------------------------------------------------------------------------------------
// Text files

/// A line of a text file, or part of a line longer than [`LINE_PART_BYTES`].
struct LinePart {
    /// The text, with a CRLF line ending replaced by LF.
    text: String,
    /// Whether this part starts its line.
    first: bool,
    /// Whether this part ends its line (or the file).
    last: bool,
}

/// Reads a text file in lines (long lines in parts), validating UTF-8 and normalising CRLF.
struct LineReader<'p, R> {
    reader: R,
    path: &'p Path,
    /// The number of the current line, from 1.
    line: u64,
    /// Bytes of the current line already returned.
    offset: usize,
    /// Bytes read but not returned yet (a held-back `'\r'` or incomplete UTF-8 sequence).
    pending: Vec<u8>,
}

impl<'p, R: BufRead> LineReader<'p, R> {
    fn new(reader: R, path: &'p Path) -> Self {
        LineReader { reader, path, line: 1, offset: 0, pending: Vec::new() }
    }

    fn next_part(&mut self) -> Result<Option<LinePart>> {
        let room = LINE_PART_BYTES - self.pending.len();
        let read = (&mut self.reader)
            .take(room as u64)
            .read_until(b'\n', &mut self.pending)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if self.pending.is_empty() {
            return Ok(None);
        }
        let ends_line = self.pending.ends_with(b"\n") || read < room;
        let mut bytes = if ends_line {
            std::mem::take(&mut self.pending)
        } else {
            let rest = self.pending.split_off(safe_cut(&self.pending));
            std::mem::replace(&mut self.pending, rest)
        };
        let first = self.offset == 0;
        let len = bytes.len();
        if ends_line && bytes.ends_with(b"\r\n") {
            bytes.truncate(len - 2);
            bytes.push(b'\n');
        }
        let mut text = String::from_utf8(bytes).map_err(|e| {
            let offset = self.offset + e.utf8_error().valid_up_to();
            anyhow!(
                "{}:{}: invalid UTF-8 (byte offset {offset} in the line); convert the file to UTF-8",
                self.path.display(),
                self.line
            )
        })?;
        if self.line == 1 && first && text.starts_with(BOM) {
            text.drain(..BOM.len_utf8());
        }
        if ends_line {
            self.line += 1;
            self.offset = 0;
        } else {
            self.offset += len;
        }
        Ok(Some(LinePart { text, first, last: ends_line }))
    }
}

/// Where to cut a full buffer in the middle of a line: not after a `'\r'` (it may start a CRLF) and
/// not inside a UTF-8 sequence.
fn safe_cut(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    if end > 1 && bytes[end - 1] == b'\r' {
        end -= 1;
    }
    let mut lead = end;
    while lead > 0 && end - lead < 3 && bytes[lead - 1] & 0xC0 == 0x80 {
        lead -= 1;
    }
    if lead == 0 {
        return end;
    }
    let lead = lead - 1;
    let needed = match bytes[lead] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if lead > 0 && lead + needed > end {
        lead
    } else {
        end
    }
}

fn read_text(path: &Path, mode: Docs, tail_from: Option<u64>, docs: &mut DocWriter) -> Result<()> {
    let reader = BufReader::with_capacity(1 << 16, open_input(path)?);
    let mut lines = LineReader::new(reader, path);
    let mut any_text = false;
    // For `tail_from`: bytes of text so far, whether the last whole line was blank, and whether the
    // tail has started.
    let (mut offset, mut after_blank, mut cut) = (0u64, false, tail_from.is_none());
    while let Some(part) = lines.next_part()? {
        any_text = any_text || has_text(&part.text);
        let whole_line = part.first && part.last;
        if let (false, Some(from), true) = (cut, tail_from, part.first) {
            if offset >= from && (after_blank || offset >= from + TAIL_PARAGRAPH_SEARCH) && any_text {
                docs.end_doc()?;
                cut = true;
            }
        }
        offset += part.text.len() as u64;
        if part.first {
            after_blank = whole_line && !has_text(&part.text);
        }
        match mode {
            Docs::Whole => docs.push(&part.text)?,
            Docs::Paragraphs if whole_line && !has_text(&part.text) => docs.end_doc()?,
            Docs::Paragraphs => docs.push(&part.text)?,
            Docs::Wikitext => {
                if whole_line && is_wikitext_heading(&part.text) {
                    docs.end_doc()?;
                }
                docs.push(&part.text)?;
            }
        }
    }
    if !any_text {
        bail!("{} is empty (it holds no text other than whitespace); remove it from the inputs", path.display());
    }
    docs.end_doc()
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

fn read_jsonl(path: &Path, field: &str, docs: &mut DocWriter) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, open_input(path)?);
    let name = path.display();
    let mut bytes = Vec::new();
    let mut line_no = 0u64;
    loop {
        bytes.clear();
        let limit = MAX_JSONL_LINE_BYTES as u64 + 1;
        let read =
            (&mut reader).take(limit).read_until(b'\n', &mut bytes).with_context(|| format!("cannot read {name}"))?;
        if read == 0 {
            return Ok(());
        }
        line_no += 1;
        if read as u64 == limit && !bytes.ends_with(b"\n") {
            bail!("{name}:{line_no}: line longer than {} MiB; split the document", MAX_JSONL_LINE_BYTES >> 20);
        }
        let line = std::str::from_utf8(&bytes).map_err(|e| {
            anyhow!(
                "{name}:{line_no}: invalid UTF-8 (byte offset {} in the line); convert the file to UTF-8",
                e.valid_up_to()
            )
        })?;
        let line = if line_no == 1 { line.trim_start_matches(BOM) } else { line };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let text = jsonl_document(line, field).map_err(|e| anyhow!("{name}:{line_no}: {e}"))?;
        if !text.is_empty() {
            docs.push(&text)?;
            docs.end_doc()?;
        }
    }
}

/// The string in `field` of the JSON object on `line`; errors say what is wrong without the location.
fn jsonl_document(line: &str, field: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        anyhow!("not valid JSON ({e}); each line must be one JSON object such as {{\"{field}\": \"...\"}}")
    })?;
    let serde_json::Value::Object(mut object) = value else {
        bail!("expected a JSON object such as {{\"{field}\": \"...\"}}, found {}", json_type(&value));
    };
    match object.remove(field) {
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(other) => {
            bail!("field \"{field}\" is {}, not a string; choose the text field with --field", json_type(&other))
        }
        None => {
            let mut fields: Vec<&str> = object.keys().map(String::as_str).take(20).collect();
            if object.len() > 20 {
                fields.push("...");
            }
            let fields = if fields.is_empty() { "none".to_string() } else { fields.join(", ") };
            bail!("the object has no field \"{field}\" (its fields: {fields}); choose the text field with --field")
        }
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet

fn read_parquet(path: &Path, opts: &SourceOptions, docs: &mut DocWriter) -> Result<()> {
    let name = path.display();
    let reader = SerializedFileReader::new(open_input(path)?).map_err(|e| {
        anyhow!(
            "{name} is not a valid parquet file ({e}); check that it is complete (re-download it) and really parquet"
        )
    })?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let column = find_column(schema, &opts.field).map_err(|e| anyhow!("{name}: {e}"))?;
    let descr = schema.column(column);
    let field = &opts.field;
    if descr.physical_type() != PhysicalType::BYTE_ARRAY {
        bail!(
            "{name}: column \"{field}\" has physical type {}, not BYTE_ARRAY (strings); choose a text column with --field",
            descr.physical_type()
        );
    }
    if descr.max_rep_level() > 0 {
        bail!("{name}: column \"{field}\" is repeated (a list); choose a column with one string per row with --field");
    }
    let max_def = descr.max_def_level();
    let mut row = 0u64;
    let mut values = Vec::new();
    let mut defs = Vec::new();
    for group in 0..reader.num_row_groups() {
        let row_group =
            reader.get_row_group(group).with_context(|| format!("{name}: cannot read row group {group}"))?;
        check_codec(row_group.metadata().column(column).compression()).map_err(|e| anyhow!("{name}: {e}"))?;
        let context = || format!("{name}: cannot read column \"{field}\" in row group {group} (is the file corrupt?)");
        let ColumnReader::ByteArrayColumnReader(mut column_reader) =
            row_group.get_column_reader(column).with_context(context)?
        else {
            bail!("{name}: column \"{field}\" is not a BYTE_ARRAY column");
        };
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) =
                column_reader.read_records(PARQUET_BATCH, Some(&mut defs), None, &mut values).with_context(context)?;
            if records == 0 {
                break;
            }
            let mut present = values.iter();
            for i in 0..records {
                row += 1;
                if max_def > 0 && defs.get(i) != Some(&max_def) {
                    continue; // null
                }
                let value =
                    present.next().ok_or_else(|| anyhow!("{name}: row {row}: value missing (corrupt file?)"))?;
                let text =
                    std::str::from_utf8(value.data()).map_err(|_| anyhow!("{name}: row {row}: invalid UTF-8"))?;
                parquet_row(text, opts.docs, docs)?;
            }
        }
    }
    docs.end_doc()
}

/// One non-null row: a whole document, or one line of a wikitext article.
fn parquet_row(text: &str, mode: Docs, docs: &mut DocWriter) -> Result<()> {
    if mode == Docs::Wikitext {
        if is_wikitext_heading(text) {
            docs.end_doc()?;
        }
        return docs.push(text);
    }
    if !text.is_empty() {
        docs.push(text)?;
        docs.end_doc()?;
    }
    Ok(())
}

/// The index of the leaf column named `field` (its full dotted path, or its name when unique).
fn find_column(schema: &SchemaDescriptor, field: &str) -> Result<usize> {
    let columns = schema.columns();
    if let Some(i) = columns.iter().position(|c| c.path().string() == field) {
        return Ok(i);
    }
    let by_name: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].name() == field).collect();
    if let [i] = by_name[..] {
        return Ok(i);
    }
    let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
    bail!("no column \"{field}\" (its columns: {}); choose the text column with --field", names.join(", "))
}

fn check_codec(codec: Compression) -> Result<()> {
    let name = match codec {
        Compression::UNCOMPRESSED | Compression::SNAPPY => return Ok(()),
        Compression::GZIP(_) => "GZIP",
        Compression::LZO => "LZO",
        Compression::BROTLI(_) => "BROTLI",
        Compression::LZ4 => "LZ4",
        Compression::ZSTD(_) => "ZSTD",
        Compression::LZ4_RAW => "LZ4_RAW",
    };
    bail!(
        "it is compressed with the {name} codec, which this build cannot read (only snappy and uncompressed); \
         rewrite it with snappy, e.g. in Python: pyarrow.parquet.write_table(pyarrow.parquet.read_table(src), dst, \
         compression='snappy')"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings() {
        assert!(is_wikitext_heading(" = Valkyria Chronicles III = \n"));
        assert!(is_wikitext_heading(" = Title =\r\n"));
        assert!(is_wikitext_heading(" = A = B = "));
        assert!(!is_wikitext_heading(" = = History = = \n"));
        assert!(!is_wikitext_heading(" = = = Sub = = = \n"));
        assert!(!is_wikitext_heading(" = = "));
        assert!(!is_wikitext_heading(" Text = more = \n"));
        assert!(!is_wikitext_heading("= Title =\n"));
    }

    #[test]
    fn safe_cuts() {
        assert_eq!(safe_cut(b"abc"), 3);
        assert_eq!(safe_cut(b"abc\r"), 3);
        assert_eq!(safe_cut("abé".as_bytes()), 4);
        assert_eq!(safe_cut(&"abé".as_bytes()[..3]), 2);
        assert_eq!(safe_cut(&"ab😀".as_bytes()[..5]), 2);
        assert_eq!(safe_cut("ab😀".as_bytes()), 6);
    }
}
