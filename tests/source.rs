//! Integration tests for `genesis::data::source`: input formats, input expansion and document pieces.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use common::{err_string, shared_file, temp_dir, write_parquet_bytes, write_parquet_int64, write_parquet_text};
use genesis::data::source::{
    expand_inputs, expand_inputs_detailed, format_of, is_wikitext_heading, read_pieces, Docs, Format, Piece,
    SourceFile, SourceOptions, MAX_UNCUT_BYTES,
};
use genesis::data::tokenizer::Tokenizer;

/// Reads `file` and regroups its pieces into documents, checking the `doc_start` flags.
fn read_docs(file: &SourceFile, opts: &SourceOptions, max_piece_bytes: usize) -> Result<Vec<String>> {
    Ok(read_all(file, opts, max_piece_bytes)?.0)
}

/// The documents and the raw pieces of `file`.
fn read_all(file: &SourceFile, opts: &SourceOptions, max_piece_bytes: usize) -> Result<(Vec<String>, Vec<Piece>)> {
    let mut pieces = Vec::new();
    let count = read_pieces(file, opts, max_piece_bytes, &mut |piece| {
        pieces.push(piece);
        Ok(())
    })?;
    let mut docs: Vec<String> = Vec::new();
    for piece in &pieces {
        assert!(!piece.text.is_empty(), "empty piece");
        if piece.doc_start {
            docs.push(String::new());
        }
        docs.last_mut().expect("the first piece starts a document").push_str(&piece.text);
    }
    assert_eq!(count, docs.len() as u64, "returned document count");
    Ok((docs, pieces))
}

fn opts(docs: Docs) -> SourceOptions {
    SourceOptions { docs, ..SourceOptions::default() }
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> SourceFile {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, contents).unwrap();
    // (Files with unsupported extensions are written for the expansion tests; their format is moot.)
    SourceFile { format: format_of(&path).unwrap_or(Format::Text), path }
}

fn paths(files: &[SourceFile]) -> Vec<PathBuf> {
    files.iter().map(|f| f.path.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// format_of

#[test]
fn format_from_extension() {
    for (name, format) in [
        ("a.txt", Format::Text),
        ("a.text", Format::Text),
        ("wiki.test.raw", Format::Text),
        ("README.md", Format::Text),
        ("A.TXT", Format::Text),
        ("a.jsonl", Format::Jsonl),
        ("a.ndjson", Format::Jsonl),
        ("dir/train-00000-of-00001.parquet", Format::Parquet),
    ] {
        assert_eq!(format_of(Path::new(name)).unwrap(), format, "{name}");
    }
}

#[test]
fn format_errors_name_the_file_and_the_way_out() {
    for name in ["data.txt.gz", "data.jsonl.zst", "corpus.bz2"] {
        let e = err_string(format_of(Path::new(name)));
        assert!(e.contains(name) && e.contains("decompress"), "{e}");
        assert!(e.contains(".jsonl") && e.contains(".parquet"), "lists the supported extensions: {e}");
    }
    let e = err_string(format_of(Path::new("data.json")));
    assert!(e.contains("data.json") && e.contains("JSON Lines") && e.contains(".jsonl"), "{e}");
    let e = err_string(format_of(Path::new("corpus")));
    assert!(e.contains("corpus") && e.contains("no file extension") && e.contains(".txt"), "{e}");
    let e = err_string(format_of(Path::new("table.csv")));
    assert!(e.contains("table.csv") && e.contains(".csv") && e.contains(".parquet"), "{e}");
}

#[test]
fn formats_serialize_lowercase() {
    assert_eq!(serde_json::to_string(&Format::Parquet).unwrap(), "\"parquet\"");
    assert_eq!(serde_json::to_string(&Docs::Wikitext).unwrap(), "\"wikitext\"");
    assert_eq!(serde_json::from_str::<Docs>("\"paragraphs\"").unwrap(), Docs::Paragraphs);
    let d = SourceOptions::default();
    assert_eq!((d.field.as_str(), d.docs), ("text", Docs::Whole));
}

// ---------------------------------------------------------------------------------------------
// expand_inputs

/// dir/{b.txt, a/2.jsonl, a/1.parquet, a/deep/x.md, notes.csv, .hidden.txt, .git/config.txt, a/.cache/y.txt}
fn tree(dir: &Path) {
    for name in
        ["b.txt", "a/2.jsonl", "a/1.parquet", "a/deep/x.md", "notes.csv", ".hidden.txt", ".git/c.txt", "a/.cache/y.txt"]
    {
        write(dir, name, "x");
    }
}

#[test]
fn expands_a_directory_tree_sorted_without_hidden_or_unsupported_files() {
    let dir = temp_dir("source-tree");
    tree(&dir);
    let found = expand_inputs_detailed(&[dir.display().to_string()]).unwrap();
    let expected: Vec<PathBuf> =
        ["a/1.parquet", "a/2.jsonl", "a/deep/x.md", "b.txt"].iter().map(|p| dir.join(p)).collect();
    assert_eq!(paths(&found.files), expected);
    let formats: Vec<Format> = found.files.iter().map(|f| f.format).collect();
    assert_eq!(formats, [Format::Parquet, Format::Jsonl, Format::Text, Format::Text]);
    assert_eq!(found.skipped, [dir.join("notes.csv")]);
    assert_eq!(paths(&expand_inputs(&[dir.display().to_string()]).unwrap()), expected);
}

#[test]
fn a_directory_without_usable_files_is_an_error() {
    let dir = temp_dir("source-unusable");
    write(&dir, "x.csv", "1");
    write(&dir, "y.json", "[]");
    write(&dir, ".z.txt", "hidden");
    let e = err_string(expand_inputs(&[dir.display().to_string()]));
    assert!(e.contains(&dir.display().to_string()) && e.contains("2 file(s) with unsupported extensions"), "{e}");
    assert!(e.contains("x.csv") && e.contains("y.json"), "{e}");
    let empty = temp_dir("source-empty-dir");
    let e = err_string(expand_inputs(&[empty.display().to_string()]));
    assert!(e.contains(&empty.display().to_string()) && e.contains("no files"), "{e}");
}

#[test]
fn expands_globs_sorted_and_directories_they_match() {
    let dir = temp_dir("source-glob");
    tree(&dir);
    write(&dir, "c.txt", "x");
    let txt = expand_inputs(&[format!("{}/*.txt", dir.display())]).unwrap();
    assert_eq!(paths(&txt), [dir.join("b.txt"), dir.join("c.txt")]);
    // `*` matches the directory `a` (expanded recursively) and the files; not the hidden ones.
    let all = expand_inputs(&[format!("{}/*", dir.display())]).unwrap();
    let expected: Vec<PathBuf> =
        ["a/1.parquet", "a/2.jsonl", "a/deep/x.md", "b.txt", "c.txt"].iter().map(|p| dir.join(p)).collect();
    assert_eq!(paths(&all), expected);
}

#[test]
fn a_glob_matching_nothing_is_an_error() {
    let dir = temp_dir("source-glob-none");
    write(&dir, "a.txt", "x");
    let pattern = format!("{}/*.parquet", dir.display());
    let e = err_string(expand_inputs(std::slice::from_ref(&pattern)));
    assert!(e.contains(&pattern) && e.contains("matched nothing"), "{e}");
    let pattern = format!("{}/*.csv*", dir.display());
    write(&dir, "t.csv", "x");
    let e = err_string(expand_inputs(std::slice::from_ref(&pattern)));
    assert!(e.contains(&pattern) && e.contains("unsupported"), "{e}");
}

#[test]
fn missing_empty_and_unsupported_inputs_are_errors() {
    let dir = temp_dir("source-missing");
    let missing = dir.join("nope.txt").display().to_string();
    let e = err_string(expand_inputs(std::slice::from_ref(&missing)));
    assert!(e.contains(&format!("input {missing} does not exist")), "{e}");
    let e = err_string(expand_inputs(&[]));
    assert!(e.contains("no inputs"), "{e}");
    let csv = write(&dir, "t.csv", "x").path.display().to_string();
    let e = err_string(expand_inputs(std::slice::from_ref(&csv)));
    assert!(e.contains(&csv) && e.contains("unsupported extension"), "{e}");
}

#[test]
fn duplicates_are_kept_once_at_their_first_occurrence() {
    let dir = temp_dir("source-dedup");
    write(&dir, "a.txt", "x");
    write(&dir, "b.txt", "x");
    let d = dir.display().to_string();
    let inputs = [format!("{d}/b.txt"), d.clone(), format!("{d}/./a.txt"), format!("{d}/*.txt"), format!("{d}/b.txt")];
    let files = expand_inputs(&inputs).unwrap();
    assert_eq!(paths(&files), [dir.join("b.txt"), dir.join("a.txt")]);
}

// ---------------------------------------------------------------------------------------------
// Text files

#[test]
fn text_whole_is_one_document_with_crlf_normalised() {
    let dir = temp_dir("source-text-whole");
    let file = write(&dir, "a.txt", "Hello,\r\nworld.\r\n\r\nBye\ra\n");
    assert_eq!(read_docs(&file, &opts(Docs::Whole), 1 << 20).unwrap(), ["Hello,\nworld.\n\nBye\ra\n"]);
    let file = write(&dir, "b.txt", "no newline at the end");
    assert_eq!(read_docs(&file, &opts(Docs::Whole), 1 << 20).unwrap(), ["no newline at the end"]);
    // A byte order mark at the start is dropped.
    let file = write(&dir, "bom.txt", "\u{feff} = Title = \r\nbody\r\n");
    assert_eq!(read_docs(&file, &opts(Docs::Wikitext), 1 << 20).unwrap(), [" = Title = \nbody\n"]);
}

#[test]
fn text_paragraphs_drop_blank_lines() {
    let dir = temp_dir("source-text-para");
    let file = write(&dir, "p.txt", "\n  \nfirst line\nsecond line\n\n \t \n\nnext\r\n\r\nlast");
    let docs = read_docs(&file, &opts(Docs::Paragraphs), 1 << 20).unwrap();
    assert_eq!(docs, ["first line\nsecond line\n", "next\n", "last"]);
}

#[test]
fn text_wikitext_groups_lines_into_articles() {
    let dir = temp_dir("source-text-wiki");
    let text = "preamble\n = Alpha = \n a line\n = = History = = \n more\n\n = Beta =\n b = c = \n = Gamma = \n";
    let file = write(&dir, "w.raw", text);
    let docs = read_docs(&file, &opts(Docs::Wikitext), 1 << 20).unwrap();
    assert_eq!(
        docs,
        ["preamble\n", " = Alpha = \n a line\n = = History = = \n more\n\n", " = Beta =\n b = c = \n", " = Gamma = \n"]
    );
    // A whitespace-only preamble is not a document.
    let file = write(&dir, "w2.raw", " \n\n = Alpha = \n x\n");
    assert_eq!(read_docs(&file, &opts(Docs::Wikitext), 1 << 20).unwrap(), [" = Alpha = \n x\n"]);
    assert!(is_wikitext_heading(" = Robert Boulter = \n"));
    assert!(!is_wikitext_heading(" = = Career = = \n"));
}

/// A text with the things BPE is sensitive to: runs of spaces and newlines, punctuation,
/// contractions, digits, non-ASCII letters.
fn varied_text(bytes: usize) -> String {
    let parts = [
        "The quick brown fox's jump",
        "  double  spaced ",
        "\n\n",
        "Numbers 12345 and 3.14159!",
        " \n \n",
        "Ünïcödé — naïve café 😀 日本語",
        "\t tabbed\t",
        "don't we'll I'm",
        "\n",
        "   ",
        "a-b_c/d",
        "end.",
    ];
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < bytes {
        text.push_str(parts[(i * 7 + i / 3) % parts.len()]);
        text.push(if i.is_multiple_of(5) { '\n' } else { ' ' });
        i += 1;
    }
    text
}

#[test]
fn long_documents_are_cut_without_changing_the_tokens() {
    let dir = temp_dir("source-long");
    let text = varied_text(60_000);
    let file = write(&dir, "long.txt", &text);
    let (docs, pieces) = read_all(&file, &opts(Docs::Whole), 1000).unwrap();
    assert_eq!(docs, std::slice::from_ref(&text));
    assert!(pieces.len() > 20, "only {} pieces", pieces.len());
    assert!(pieces.iter().skip(1).all(|p| !p.doc_start));
    assert!(pieces.iter().all(|p| p.text.len() < 3000), "pieces stay near the target size");
    let tokenizer = Tokenizer::gpt2().unwrap();
    let piecewise: Vec<u32> = pieces.iter().flat_map(|p| tokenizer.encode(&p.text)).collect();
    assert_eq!(piecewise, tokenizer.encode(&text));
}

#[test]
fn lines_longer_than_the_read_buffer_keep_their_text() {
    // One 3 MiB line of multi-byte characters (read in 1 MiB parts), CRLF endings.
    let dir = temp_dir("source-long-line");
    let mut line = String::new();
    while line.len() < 3 << 20 {
        line.push_str("héllo wörld 😀 ");
    }
    line.push('x');
    let raw = format!("{line}\r\n = Next = \r\nlast\r\n");
    let file = write(&dir, "big.txt", &raw);
    let expected = raw.replace("\r\n", "\n");
    let (docs, pieces) = read_all(&file, &opts(Docs::Whole), 64 << 10).unwrap();
    assert_eq!(docs, [expected]);
    assert!(pieces.len() > 40);
    let docs = read_docs(&file, &opts(Docs::Wikitext), 64 << 10).unwrap();
    assert_eq!(docs, [format!("{line}\n"), " = Next = \nlast\n".to_string()]);
}

#[test]
fn a_document_without_cut_points_is_cut_at_the_size_limit() {
    let dir = temp_dir("source-uncut");
    let text = format!("a{}", "é".repeat(MAX_UNCUT_BYTES / 2 + 1000));
    let file = write(&dir, "word.txt", &text);
    let (docs, pieces) = read_all(&file, &opts(Docs::Whole), 1 << 20).unwrap();
    assert!(pieces.len() >= 2);
    assert!(pieces.iter().all(|p| p.text.len() <= MAX_UNCUT_BYTES));
    assert!(docs.len() == 1 && docs[0] == text, "the pieces concatenate to the document");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_sink_stops_the_reading() {
    let dir = temp_dir("source-sink");
    let file = write(&dir, "long.txt", varied_text(20_000));
    let mut calls = 0;
    let result = read_pieces(&file, &opts(Docs::Whole), 100, &mut |_| {
        calls += 1;
        anyhow::bail!("disk full")
    });
    assert!(err_string(result).contains("disk full"));
    assert_eq!(calls, 1);
}

#[test]
fn invalid_utf8_names_the_file_line_and_offset() {
    let dir = temp_dir("source-utf8");
    let file = write(&dir, "bad.txt", b"line one\r\nline two\nab\xffcd\nmore\n");
    let name = file.path.display().to_string();
    for docs in [Docs::Whole, Docs::Paragraphs, Docs::Wikitext] {
        let e = err_string(read_docs(&file, &opts(docs), 1 << 20));
        assert!(e.contains(&format!("{name}:3: invalid UTF-8 (byte offset 2 in the line)")), "{e}");
    }
}

#[test]
fn empty_and_whitespace_files_are_errors() {
    let dir = temp_dir("source-empty");
    for (name, contents) in [("empty.txt", ""), ("blank.txt", " \r\n\n\t \n")] {
        let file = write(&dir, name, contents);
        for docs in [Docs::Whole, Docs::Paragraphs, Docs::Wikitext] {
            let e = err_string(read_docs(&file, &opts(docs), 1 << 20));
            assert!(e.contains(&format!("{} is empty", file.path.display())), "{e}");
        }
    }
    let missing = SourceFile { path: dir.join("gone.txt"), format: Format::Text };
    let e = err_string(read_docs(&missing, &opts(Docs::Whole), 1 << 20));
    assert!(e.contains(&format!("input {} does not exist", missing.path.display())), "{e}");
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

#[test]
fn jsonl_documents_come_from_the_field() {
    let dir = temp_dir("source-jsonl");
    let lines = [
        r#"{"text": "first doc\nwith two lines", "id": 1}"#,
        "",
        r#"  {"id": 2, "text": "caf\u00e9 \ud83d\ude00"}  "#,
        r#"{"text": ""}"#,
        r#"{"text": "third", "meta": {"text": "nested"}}"#,
    ];
    let file = write(&dir, "d.jsonl", format!("\u{feff}{}", lines.join("\r\n")));
    assert_eq!(
        read_docs(&file, &opts(Docs::Whole), 1 << 20).unwrap(),
        ["first doc\nwith two lines", "café 😀", "third"]
    );
    let file = write(&dir, "c.ndjson", "{\"content\": \"x y\"}\n{\"content\": \"z\"}\n");
    let custom = SourceOptions { field: "content".into(), docs: Docs::Whole, tail_from: None };
    assert_eq!(read_docs(&file, &custom, 1 << 20).unwrap(), ["x y", "z"]);
}

#[test]
fn jsonl_errors_name_the_file_and_line() {
    let dir = temp_dir("source-jsonl-bad");
    let good = r#"{"text": "ok"}"#;
    let cases: [(&str, &str, &[&str]); 5] = [
        ("json.jsonl", r#"{"text": "unterminated}"#, &["not valid JSON", "EOF"]),
        ("array.jsonl", r#"["text"]"#, &["expected a JSON object", "an array"]),
        ("missing.jsonl", r#"{"body": "x", "title": "t"}"#, &["no field \"text\"", "body", "title", "--field"]),
        ("number.jsonl", r#"{"text": 42}"#, &["field \"text\" is a number", "not a string"]),
        ("null.jsonl", r#"{"text": null}"#, &["field \"text\" is null"]),
    ];
    for (name, bad, expected) in cases {
        let file = write(&dir, name, format!("{good}\n\n{bad}\n{good}\n"));
        let e = err_string(read_docs(&file, &opts(Docs::Whole), 1 << 20));
        assert!(e.contains(&format!("{}:3: ", file.path.display())), "{e}");
        for part in expected {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
    }
    let file = write(&dir, "utf8.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"a\xc3\"}\n");
    let e = err_string(read_docs(&file, &opts(Docs::Whole), 1 << 20));
    assert!(e.contains(&format!("{}:2: invalid UTF-8 (byte offset 11 in the line)", file.path.display())), "{e}");
}

#[test]
fn jsonl_rejects_other_docs_modes_and_files_without_documents() {
    let dir = temp_dir("source-jsonl-modes");
    let file = write(&dir, "d.jsonl", "{\"text\": \"x\"}\n");
    for docs in [Docs::Paragraphs, Docs::Wikitext] {
        let e = err_string(read_docs(&file, &opts(docs), 1 << 20));
        assert!(e.contains(&file.path.display().to_string()) && e.contains("one document per line"), "{e}");
    }
    for (name, contents) in [("empty.jsonl", ""), ("blank.jsonl", "{\"text\": \"\"}\n\n{\"text\": \"\"}\n")] {
        let file = write(&dir, name, contents);
        let e = err_string(read_docs(&file, &opts(Docs::Whole), 1 << 20));
        assert!(e.contains(&format!("{} has no documents", file.path.display())), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet

fn parquet(dir: &Path, name: &str, rows: &[Option<&str>], rows_per_group: usize) -> SourceFile {
    let path = dir.join(name);
    write_parquet_text(&path, "text", rows, rows_per_group);
    SourceFile { path, format: Format::Parquet }
}

#[test]
fn parquet_rows_are_documents_nulls_skipped() {
    let dir = temp_dir("source-parquet");
    let rows = [Some("one"), None, Some("two\nlines"), Some(""), None, Some("three"), Some("four"), None, Some("5")];
    let file = parquet(&dir, "p.parquet", &rows, 2);
    assert_eq!(read_docs(&file, &opts(Docs::Whole), 1 << 20).unwrap(), ["one", "two\nlines", "three", "four", "5"]);
}

#[test]
fn parquet_reads_many_batches_and_row_groups() {
    let dir = temp_dir("source-parquet-many");
    let texts: Vec<String> = (0..20_000).map(|i| format!("row {i}")).collect();
    let rows: Vec<Option<&str>> = texts.iter().enumerate().map(|(i, t)| (i % 3 != 1).then_some(t.as_str())).collect();
    let file = parquet(&dir, "many.parquet", &rows, 9000);
    let docs = read_docs(&file, &opts(Docs::Whole), 1 << 20).unwrap();
    let expected: Vec<String> = rows.iter().flatten().map(|s| s.to_string()).collect();
    assert_eq!(docs, expected);
}

#[test]
fn parquet_wikitext_rows_are_lines_of_articles() {
    let dir = temp_dir("source-parquet-wiki");
    let rows = [
        Some(""),
        Some(" = Valkyria Chronicles III = \n"),
        Some(""),
        Some(" Senjō no Valkyria 3 ...\n"),
        Some(" = = Gameplay = = \n"),
        None,
        Some(" More text .\n"),
        Some(" = Tower Building = \n"),
        Some(" The building .\n"),
    ];
    let file = parquet(&dir, "wiki.parquet", &rows, 4);
    let docs = read_docs(&file, &opts(Docs::Wikitext), 1 << 20).unwrap();
    assert_eq!(
        docs,
        [
            " = Valkyria Chronicles III = \n Senjō no Valkyria 3 ...\n = = Gameplay = = \n More text .\n",
            " = Tower Building = \n The building .\n",
        ]
    );
    let e = err_string(read_docs(&file, &opts(Docs::Paragraphs), 1 << 20));
    assert!(e.contains(&file.path.display().to_string()) && e.contains("--docs paragraphs"), "{e}");
}

#[test]
fn parquet_column_errors() {
    let dir = temp_dir("source-parquet-bad");
    let file = parquet(&dir, "p.parquet", &[Some("x")], 1);
    let content = SourceOptions { field: "content".into(), docs: Docs::Whole, tail_from: None };
    let e = err_string(read_docs(&file, &content, 1 << 20));
    assert!(e.contains(&file.path.display().to_string()) && e.contains("no column \"content\""), "{e}");
    assert!(e.contains("its columns: text"), "{e}");

    let ints = dir.join("ints.parquet");
    write_parquet_int64(&ints, "text", &[1, 2, 3]);
    let e = err_string(read_docs(&SourceFile { path: ints.clone(), format: Format::Parquet }, &opts(Docs::Whole), 100));
    assert!(e.contains(&ints.display().to_string()) && e.contains("INT64") && e.contains("BYTE_ARRAY"), "{e}");

    let bytes = dir.join("bytes.parquet");
    let rows: [Option<&[u8]>; 6] = [Some(b"ok"), None, Some(b"fine"), Some(b"x"), Some(b"bad \xff"), Some(b"y")];
    write_parquet_bytes(&bytes, "text", &rows, 3);
    let e =
        err_string(read_docs(&SourceFile { path: bytes.clone(), format: Format::Parquet }, &opts(Docs::Whole), 100));
    assert!(e.contains(&format!("{}: row 5: invalid UTF-8", bytes.display())), "{e}");
}

#[test]
fn parquet_invalid_files_and_no_documents() {
    let dir = temp_dir("source-parquet-invalid");
    for (name, contents) in [("text.parquet", &b"this is not parquet at all, just text"[..]), ("empty.parquet", b"")] {
        let file = write(&dir, name, contents);
        let e = err_string(read_docs(&file, &opts(Docs::Whole), 100));
        assert!(e.contains(&format!("{} is not a valid parquet file", file.path.display())), "{e}");
    }
    let file = parquet(&dir, "nulls.parquet", &[None, Some(""), None], 2);
    let e = err_string(read_docs(&file, &opts(Docs::Whole), 100));
    assert!(e.contains(&format!("{} has no documents", file.path.display())), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The real wikitext file

#[test]
fn wikitext_raw_file_splits_into_articles() {
    let path = shared_file("wikitext-test.raw");
    let file = SourceFile { format: format_of(&path).unwrap(), path: path.clone() };
    let (docs, pieces) = read_all(&file, &opts(Docs::Wikitext), 16 << 10).unwrap();
    assert!(docs.len() > 50, "only {} articles", docs.len());
    for doc in &docs {
        let first_line = doc.split_inclusive('\n').next().unwrap();
        assert!(is_wikitext_heading(first_line), "an article starts with {first_line:?}");
    }
    assert!(pieces.len() > docs.len(), "long articles come in several pieces");
    let raw = fs::read_to_string(&path).unwrap();
    assert_eq!(docs.concat(), raw.replace("\r\n", "\n"));
}
