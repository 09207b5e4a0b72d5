//! `genesis prepare` end to end: round trips, splits, manifests, determinism, interruption, errors.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_mentions, err_string, shared_file, temp_dir, write_parquet_text};
use genesis::data::loader::DataLoader;
use genesis::data::manifest::{Manifest, Split, JOURNAL_FILE, MANIFEST_FILE};
use genesis::data::prepare::{prepare, Input, PrepareConfig};
use genesis::data::shard::Shard;
use genesis::data::source::{expand_inputs, Docs, Format, SourceFile};
use genesis::data::tokenizer::Tokenizer;
use genesis::model::EOT_TOKEN;
use genesis::util::sha256_file;

fn config(name: &str) -> PrepareConfig {
    let mut cfg = PrepareConfig::new(name);
    cfg.progress = false;
    cfg
}

fn local(path: &Path) -> Input {
    let format = genesis::data::source::format_of(path).unwrap();
    Input::local(SourceFile { path: path.to_path_buf(), format })
}

fn split_tokens(dir: &Path, split: Split) -> Vec<u32> {
    let m = Manifest::load(dir).unwrap();
    m.shard_paths(dir, split)
        .unwrap()
        .iter()
        .flat_map(|p| Shard::open(p).unwrap().tokens().iter().map(|&t| t as u32).collect::<Vec<_>>())
        .collect()
}

/// Every file of a dataset directory by name -> bytes (the manifest excluded: it holds paths).
fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().unwrap() != MANIFEST_FILE)
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Text, jsonl and parquet inputs -> shards -> decoded text equals the documents, each preceded by
/// end-of-text; every third document (evenly spread) is held out whole; the manifest describes it.
#[test]
fn round_trip_documents_splits_and_manifest() {
    let dir = temp_dir("prepare-roundtrip");
    let docs_a = "First document.\nIt has two lines and a literal <|endoftext|> marker.\n";
    let docs_b = "Second: café, naïve, 日本語, 🦀.\n\n  Indented line.";
    fs::write(dir.join("a.txt"), docs_a).unwrap();
    fs::write(dir.join("b.txt"), docs_b).unwrap();
    let jsonl = ["third from jsonl", "fourth, with \"quotes\" and\nnewlines", "fifth"];
    let lines: Vec<String> = jsonl.iter().map(|t| serde_json::json!({ "id": 1, "text": t }).to_string()).collect();
    fs::write(dir.join("c.jsonl"), lines.join("\n") + "\n").unwrap();
    let rows = [Some("sixth, a parquet row"), None, Some("seventh"), Some("eighth"), Some("ninth and last")];
    write_parquet_text(&dir.join("d.parquet"), "text", &rows, 2);
    let documents: Vec<&str> =
        [docs_a, docs_b].into_iter().chain(jsonl).chain(rows.iter().flatten().copied()).collect();
    assert_eq!(documents.len(), 9);

    let inputs: Vec<Input> = ["a.txt", "b.txt", "c.jsonl", "d.parquet"].iter().map(|f| local(&dir.join(f))).collect();
    let out = dir.join("out");
    let mut cfg = config("mixed");
    cfg.val_fraction = 1.0 / 3.0;
    cfg.shard_tokens = 7;
    let report = prepare(&inputs, &out, &cfg).unwrap();
    assert!(!report.already_done && !report.resumed);

    let tok = Tokenizer::gpt2().unwrap();
    let joined = |idx: &[usize]| idx.iter().map(|&i| format!("<|endoftext|>{}", documents[i])).collect::<String>();
    // Documents 2, 5 and 8 (0-based) are every third one.
    let (train, val) = (split_tokens(&out, Split::Train), split_tokens(&out, Split::Val));
    assert_eq!(tok.decode(&train), joined(&[0, 1, 3, 4, 6, 7]));
    assert_eq!(tok.decode(&val), joined(&[2, 5, 8]));
    // The literal marker is text, not the special token: one EOT per document.
    assert_eq!(train.iter().filter(|&&t| t == EOT_TOKEN).count(), 6);

    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.name, "mixed");
    assert_eq!(m.tokenizer.name, "gpt2");
    assert_eq!(m.genesis_version, env!("CARGO_PKG_VERSION"));
    let (mt, mv) = (&m.splits["train"], &m.splits["val"]);
    assert_eq!((mt.documents, mv.documents), (6, 3));
    assert_eq!((mt.tokens as usize, mv.tokens as usize), (train.len(), val.len()));
    assert!(!m.splits.contains_key("test"));
    assert!(mt.shards.len() > 3);
    for (i, s) in mt.shards.iter().enumerate() {
        assert_eq!(s.file, format!("train_{i:06}.bin"));
        assert!(s.tokens <= 7 && (s.tokens == 7 || i == mt.shards.len() - 1));
        assert_eq!(s.sha256, sha256_file(&out.join(&s.file)).unwrap());
    }
    assert_eq!(m.sources.len(), 4);
    for (s, f) in m.sources.iter().zip(["a.txt", "b.txt", "c.jsonl", "d.parquet"]) {
        let path = dir.join(f);
        assert_eq!(s.path, path.display().to_string());
        assert_eq!(s.bytes, fs::metadata(&path).unwrap().len());
        assert_eq!(s.sha256, sha256_file(&path).unwrap());
    }
    assert_eq!(m.sources[3].format, Format::Parquet);
    // Nothing but shards and the manifest is left.
    let leftovers: Vec<String> = dir_bytes(&out).into_iter().map(|(n, _)| n).filter(|n| !n.ends_with(".bin")).collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    fs::remove_dir_all(&dir).unwrap();
}

/// The same bytes for 1 or 2 threads, tiny or default batches, and tiny or default pieces.
#[test]
fn output_is_independent_of_threads_batches_and_pieces() {
    let dir = temp_dir("prepare-determinism");
    let input = local(&shared_file("wikitext-test.raw"));
    let run = |threads: usize, batch_bytes: usize, piece_bytes: usize, name: &str| {
        let mut cfg = config("wt");
        cfg.source.docs = Docs::Wikitext;
        cfg.val_fraction = 0.1;
        cfg.shard_tokens = 40_000;
        cfg.batch_bytes = batch_bytes;
        cfg.piece_bytes = piece_bytes;
        let out = dir.join(name);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| prepare(std::slice::from_ref(&input), &out, &cfg)).unwrap();
        out
    };
    let a = run(1, 64 << 10, 4096, "a");
    let b = run(2, 32 << 20, 1 << 20, "b");
    let files = dir_bytes(&a);
    assert!(files.len() > 5, "expected several shards, got {}", files.len());
    assert!(files == dir_bytes(&b), "shards differ between thread counts / batch sizes");
    let (ma, mb) = (Manifest::load(&a).unwrap(), Manifest::load(&b).unwrap());
    assert_eq!(ma.splits, mb.splits);
    // 60-odd articles: every tenth is held out.
    let docs = ma.splits["train"].documents + ma.splits["val"].documents;
    assert!(docs > 50, "only {docs} wikitext articles found");
    assert_eq!(ma.splits["val"].documents, docs / 10);
    fs::remove_dir_all(&dir).unwrap();
}

/// `genesis prepare` killed (SIGKILL) several times mid-run, then run to the end, writes the same
/// bytes as an uninterrupted run; in between, the directory is never usable for training.
#[test]
fn killed_prepare_resumes_to_identical_shards() {
    let dir = temp_dir("prepare-kill");
    let text = fs::read(shared_file("wikitext-test.raw")).unwrap();
    let corpus = dir.join("corpus.raw");
    fs::write(&corpus, text.repeat(6)).unwrap();
    let shard_tokens = 50_000;

    let reference = dir.join("reference");
    let mut cfg = config("corpus");
    cfg.source.docs = Docs::Wikitext;
    cfg.val_fraction = 0.1;
    cfg.shard_tokens = shard_tokens;
    prepare(&[local(&corpus)], &reference, &cfg).unwrap();

    let out = dir.join("killed");
    let genesis = |threads: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_genesis"));
        c.args(["--threads", threads, "prepare", "--input"])
            .arg(&corpus)
            .args(["--docs", "wikitext", "--val-fraction", "0.1", "--shard-tokens", &shard_tokens.to_string(), "--out"])
            .arg(&out)
            .env("GENESIS_PREPARE_BATCH_BYTES", "65536");
        c
    };
    let mut kills = 0;
    for (round, min_shards) in [1usize, 3, 6].into_iter().enumerate() {
        let mut child = genesis(if round % 2 == 0 { "2" } else { "1" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shards = fs::read_dir(&out)
                .map(|d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".bin")).count())
                .unwrap_or(0);
            if out.join(JOURNAL_FILE).exists() && shards >= min_shards {
                break;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        if !out.join(MANIFEST_FILE).exists() {
            // Half-prepared: refused for training, with the way out in the message.
            let msg = err_string(DataLoader::open(&out, Split::Train, 1, 8, 0));
            assert_mentions(&msg, &["unfinished `genesis prepare`"]);
        }
    }
    assert!(kills >= 2, "the corpus prepared too fast to interrupt ({kills} kills); make it bigger");

    let finish = genesis("2").output().unwrap();
    let stdout = String::from_utf8_lossy(&finish.stdout);
    assert!(finish.status.success(), "re-run failed: {}", String::from_utf8_lossy(&finish.stderr));
    assert!(stdout.contains("(resumed)"), "the re-run did not resume: {stdout}");
    let (want, got) = (dir_bytes(&reference), dir_bytes(&out));
    assert_eq!(want.iter().map(|f| &f.0).collect::<Vec<_>>(), got.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert!(want == got, "resumed shards differ from an uninterrupted run");
    assert_eq!(Manifest::load(&reference).unwrap().splits, Manifest::load(&out).unwrap().splits);
    fs::remove_dir_all(&dir).unwrap();
}

/// A second run with the same inputs does nothing; other inputs need --force.
#[test]
fn rerun_is_a_no_op_and_replacing_needs_force() {
    let dir = temp_dir("prepare-rerun");
    let text: String =
        (0..40).map(|i| format!("Paragraph number {i} has a few words.\nAnd a second line.\n\n")).collect();
    fs::write(dir.join("p.txt"), &text).unwrap();
    let out = dir.join("out");
    let mut cfg = config("p");
    cfg.source.docs = Docs::Paragraphs;
    let first = prepare(&[local(&dir.join("p.txt"))], &out, &cfg).unwrap();
    assert_eq!(first.manifest.splits["train"].documents + first.manifest.splits["val"].documents, 40);
    assert_eq!(first.manifest.splits["val"].documents, 4);
    let bytes = dir_bytes(&out);
    let again = prepare(&[local(&dir.join("p.txt"))], &out, &cfg).unwrap();
    assert!(again.already_done);
    assert!(dir_bytes(&out) == bytes);

    cfg.val_fraction = 0.2;
    let msg = err_string(prepare(&[local(&dir.join("p.txt"))], &out, &cfg));
    assert_mentions(&msg, &[&out.display().to_string(), "other inputs or settings", "--force"]);
    cfg.force = true;
    let forced = prepare(&[local(&dir.join("p.txt"))], &out, &cfg).unwrap();
    assert_eq!(forced.manifest.splits["val"].documents, 8);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_settings_and_inputs_are_clear_errors() {
    let dir = temp_dir("prepare-errors");
    fs::write(dir.join("one.txt"), "just one document").unwrap();
    let out = dir.join("out");
    let one = || vec![local(&dir.join("one.txt"))];

    // One text file is one document: nothing to hold out.
    let msg = err_string(prepare(&one(), &out, &config("x")));
    assert_mentions(&msg, &["cannot hold out 10%", "--docs paragraphs", "--val-fraction 0"]);
    // ... unless asked for no validation split.
    let mut cfg = config("x");
    cfg.val_fraction = 0.0;
    let r = prepare(&one(), &out, &cfg).unwrap();
    assert!(r.manifest.split(Split::Val).is_none());

    for bad in [1.0, -0.5, f64::NAN] {
        let mut cfg = config("x");
        cfg.val_fraction = bad;
        assert_mentions(&err_string(prepare(&one(), &dir.join("o2"), &cfg)), &["--val-fraction"]);
    }
    let mut cfg = config("x");
    cfg.shard_tokens = 0;
    assert_mentions(&err_string(prepare(&one(), &dir.join("o2"), &cfg)), &["--shard-tokens"]);
    assert_mentions(&err_string(prepare(&[], &dir.join("o2"), &config("x"))), &["no inputs"]);
    assert!(!dir.join("o2").exists() || fs::read_dir(dir.join("o2")).unwrap().next().is_none());

    // Errors from reading an input name the file and line, and leave no manifest behind.
    fs::write(dir.join("bad.jsonl"), "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n").unwrap();
    let inputs = expand_inputs(&[dir.join("bad.jsonl").display().to_string()]).unwrap();
    let mut cfg = config("bad");
    cfg.val_fraction = 0.0;
    let msg = err_string(prepare(&inputs.into_iter().map(Input::local).collect::<Vec<_>>(), &dir.join("o3"), &cfg));
    assert_mentions(&msg, &["bad.jsonl:2", "text"]);
    assert!(!dir.join("o3").join(MANIFEST_FILE).exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// `genesis prepare ARGS` through the binary, data root `root`: (success, stdout and stderr).
fn prepare_bin(root: &Path, args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_genesis"))
        .arg("prepare")
        .args(args)
        .env("GENESIS_DATA_DIR", root)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The flags a message tells to add to the same command: each `--...` in backquotes.
fn suggested_flags(msg: &str) -> Vec<Vec<String>> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("--"))
        .map(|s| s.split_whitespace().map(String::from).collect())
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Whether the dataset in `dir` has the val split training needs.
fn trains(dir: &Path) -> bool {
    DataLoader::open(dir, Split::Val, 1, 4, 0).is_ok()
}

/// Too few documents for a val split: every suggestion in the message, run as suggested, gives a
/// dataset that trains; none suggests a dead end (--docs paragraphs on text without blank lines,
/// --val-fraction 0).
#[test]
fn every_val_split_suggestion_works_when_run() {
    let dir = temp_dir("prepare-advice");
    let root = dir.join("data");
    let paragraphs = |n: usize| -> String { (0..n).map(|i| format!("Paragraph {i} has some words.\n\n")).collect() };
    let input = |name: &str, text: &str| -> String {
        fs::write(dir.join(name), text).unwrap();
        dir.join(name).display().to_string()
    };
    // Runs `base` + each suggested flag set; all must prepare a dataset with a val split.
    let check = |base: Vec<String>, out: &Path, want: &[&[&str]]| {
        let (ok, msg) = prepare_bin(&root, &base);
        assert!(!ok, "{msg}");
        assert!(
            !msg.contains("`--val-fraction 0`") && msg.contains("--val-fraction 0 would leave no validation split")
        );
        let flags = suggested_flags(&msg);
        assert_eq!(flags, want.iter().map(|w| strings(w)).collect::<Vec<_>>(), "{msg}");
        for f in flags {
            let (ok, text) = prepare_bin(&root, &[base.clone(), f.clone()].concat());
            assert!(ok && trains(out), "{f:?} was suggested but: {text}");
        }
        msg
    };

    // One line of text: no --docs mode gives more documents. More input works, and so does text
    // with blank lines between documents with --docs paragraphs.
    let one = input("one.txt", "just one document\n");
    let out = dir.join("one");
    let base = strings(&["--input", &one, "--out", out.to_str().unwrap()]);
    let msg = check(base.clone(), &out, &[]);
    assert_mentions(&msg, &["--docs paragraphs would give only 1 document", "more input (at least 10 documents"]);
    let many = dir.join("many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..10 {
        fs::write(many.join(format!("doc{i}.txt")), format!("Document {i}.\n")).unwrap();
    }
    let more = dir.join("more");
    let (ok, text) =
        prepare_bin(&root, &strings(&["--input", many.to_str().unwrap(), "--out", more.to_str().unwrap()]));
    assert!(ok && trains(&more), "{text}");
    fs::write(&one, paragraphs(10)).unwrap();
    let (ok, text) = prepare_bin(&root, &[base, strings(&["--docs", "paragraphs"])].concat());
    assert!(ok && trains(&out), "{text}");

    // --docs paragraphs on lines without blank lines is one document: it is not suggested again.
    let lines = input("lines.txt", "line one\nline two\nline three\n");
    let out = dir.join("lines");
    let msg = check(strings(&["--input", &lines, "--out", out.to_str().unwrap(), "--docs", "paragraphs"]), &out, &[]);
    assert_mentions(&msg, &["the inputs hold 1 document (--docs paragraphs)", "more input"]);

    // Two such files: two documents, so a larger share works.
    let lines2 = input("lines2.txt", "more lines\nand more\n");
    let out = dir.join("lines2");
    let base =
        strings(&["--input", &lines, "--input", &lines2, "--out", out.to_str().unwrap(), "--docs", "paragraphs"]);
    check(base, &out, &[&["--val-fraction", "0.5"]]);

    // Paragraphs in one file: --docs paragraphs, with a share that holds one of them out.
    let five = input("five.txt", &paragraphs(5));
    let out = dir.join("five");
    check(
        strings(&["--input", &five, "--out", out.to_str().unwrap()]),
        &out,
        &[&["--docs", "paragraphs", "--val-fraction", "0.2"]],
    );
    // Thirty paragraphs in one file read whole: the file's tail is held out, no advice needed.
    let thirty = input("thirty.txt", &paragraphs(30));
    let out = dir.join("thirty");
    let (ok, text) = prepare_bin(&root, &strings(&["--input", &thirty, "--out", out.to_str().unwrap()]));
    assert!(ok && trains(&out) && text.contains("is held out as the val split"), "{text}");

    // A dataset prepared with no val split: train's error gives a prepare command that works.
    let (ok, text) = prepare_bin(
        &root,
        &strings(&["--input", &thirty, "--name", "noval", "--docs", "paragraphs", "--val-fraction", "0"]),
    );
    assert!(ok, "{text}");
    let train = || {
        Command::new(env!("CARGO_BIN_EXE_genesis"))
            .args(["train", "--device", "cpu", "--data", "noval", "--steps", "1", "--batch", "1", "--seq", "4"])
            .args(["--eval-batches", "1", "--out"])
            .arg(dir.join("run"))
            .env("GENESIS_DATA_DIR", &root)
            .output()
            .unwrap()
    };
    let failed = train();
    let msg = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success() && msg.contains("has no val split"), "{msg}");
    let command = msg.split('`').nth(1).unwrap_or_else(|| panic!("no command in {msg}"));
    let want = format!("genesis prepare --input {thirty} --name noval --docs paragraphs --val-fraction 0.1 --force");
    assert_eq!(command, want);
    let args: Vec<String> = command.split_whitespace().skip(2).map(String::from).collect();
    let (ok, text) = prepare_bin(&root, &args);
    assert!(ok, "{text}");
    let trained = train();
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    fs::remove_dir_all(&dir).unwrap();
}

/// One text file, read whole, is one document: its last `--val-fraction` is held out as val, cut at
/// the start of a paragraph, and train and val decode back to the head and the tail of the text.
#[test]
fn a_single_text_file_holds_out_its_tail() {
    let dir = temp_dir("prepare-tail");
    let text: String = (0..400).map(|i| format!("Speaker {i}:\nLine {i} of the play, and more words.\n\n")).collect();
    fs::write(dir.join("play.txt"), &text).unwrap();
    let out = dir.join("out");
    let r = prepare(&[local(&dir.join("play.txt"))], &out, &config("play")).unwrap();
    let (train, val) = (r.manifest.split(Split::Train).unwrap(), r.manifest.split(Split::Val).unwrap());
    assert_eq!((train.documents, val.documents), (1, 1));
    let decode = |split: &str| -> String {
        let shard = Shard::open(&out.join(format!("{split}_000000.bin"))).unwrap();
        let tokens: Vec<u32> = shard.tokens().iter().map(|&t| t as u32).collect();
        assert_eq!(tokens[0], EOT_TOKEN);
        Tokenizer::gpt2().unwrap().decode(&tokens[1..])
    };
    let (head, tail) = (decode("train"), decode("val"));
    assert_eq!(format!("{head}{tail}"), text, "the two splits are not the text cut in two");
    assert!(tail.starts_with("Speaker ") && head.ends_with("\n\n"), "not cut at a paragraph: {:?}", &tail[..20]);
    let share = tail.len() as f64 / text.len() as f64;
    assert!((0.08..=0.1).contains(&share), "held out {share:.3} of the text, not about 10%");
    fs::remove_dir_all(&dir).unwrap();
}
