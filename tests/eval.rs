//! `genesis eval`: split metrics and HellaSwag scores checked against independent computations
//! (plain per-window and per-candidate forward passes written here), error messages, and the CLI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_mentions, err_string, genesis, shared_file, temp_dir, text};
use genesis::checkpoint::{self, Checkpoint};
use genesis::cpu::gpt::{self, Activations};
use genesis::data::manifest::{Manifest, Split};
use genesis::data::prepare::{prepare, Input, PrepareConfig};
use genesis::data::shard::Shard;
use genesis::data::source::{Docs, Format, SourceFile};
use genesis::data::tokenizer::Tokenizer;
use genesis::eval::{
    self, evaluate_hellaswag, evaluate_split, read_hellaswag, EvalOptions, HellaSwagItem, HellaSwagOptions,
};
use genesis::model::{ModelConfig, ParamLayout, EOT_TOKEN};
use genesis::rng::Rng;
use serde_json::{json, Value};

fn tiny() -> (ModelConfig, Vec<f32>) {
    let cfg = ModelConfig::preset("tiny").unwrap();
    (cfg, gpt::init_params(&cfg, 11))
}

/// The first `bytes` of a shared file, cut at a line end.
fn shared_prefix(shared: &str, bytes: usize) -> String {
    let text = fs::read_to_string(shared_file(shared)).unwrap();
    let end = text[..bytes].rfind('\n').unwrap() + 1;
    text[..end].to_string()
}

/// Real wikitext paragraphs regrouped into short articles (two paragraphs under a ` = Title = `
/// heading each), so that a few hundred tokens of the val split span document boundaries.
fn short_wikitext_articles(articles: usize) -> String {
    let text = fs::read_to_string(shared_file("wikitext-test.raw")).unwrap();
    let paragraphs: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('=')).take(2 * articles).collect();
    paragraphs.chunks(2).enumerate().map(|(k, p)| format!(" = Article {k} = \n\n{}\n{}\n", p[0], p[1])).collect()
}

/// Prepares `text` as dataset `name` in `root`, half of the documents held out as val, in shards of
/// `shard_tokens` tokens.
fn prepare_text(root: &Path, text: &str, name: &str, docs: Docs, shard_tokens: usize) -> PathBuf {
    let input = root.join(format!("{name}.txt"));
    fs::write(&input, text).unwrap();
    let mut cfg = PrepareConfig::new(name);
    cfg.source.docs = docs;
    cfg.val_fraction = 0.5;
    cfg.shard_tokens = shard_tokens;
    cfg.progress = false;
    let out = root.join(name);
    prepare(&[Input::local(SourceFile { path: input, format: Format::Text })], &out, &cfg).unwrap();
    out
}

/// All tokens of a split, shards concatenated in manifest order.
fn split_tokens(dir: &Path, split: Split) -> Vec<u32> {
    let m = Manifest::load(dir).unwrap();
    let paths = m.shard_paths(dir, split).unwrap();
    paths.iter().flat_map(|p| Shard::open(p).unwrap().tokens().iter().map(|&t| t as u32).collect::<Vec<_>>()).collect()
}

/// Per-token losses of one sequence, forward with batch 1.
fn losses(cfg: &ModelConfig, params: &[f32], inputs: &[u32], targets: &[u32]) -> Vec<f64> {
    let layout = ParamLayout::new(cfg);
    let mut acts = Activations::<f32>::new(cfg, 1, inputs.len());
    gpt::forward(cfg, &layout, params, &mut acts, inputs);
    gpt::loss(cfg, &layout, params, &mut acts, targets);
    acts.losses.iter().map(|&l| l as f64).collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

/// Words as runs of non-whitespace characters: counted by scanning for word starts (a different
/// algorithm from the library's), with end-of-text as a separator.
fn words_by_scan(text_pieces: &[String]) -> u64 {
    let mut n = 0;
    for piece in text_pieces {
        let mut in_word = false;
        for ch in piece.chars() {
            let ws = ch.is_whitespace();
            if !ws && !in_word {
                n += 1;
            }
            in_word = !ws;
        }
    }
    n
}

/// Mean loss, perplexity, bits per byte and word-level perplexity equal a plain loop over the same
/// windows (one forward per window) and byte/word counts taken from the decoded text; the windows
/// cross shard boundaries; the last batch is partial.
#[test]
fn split_metrics_match_an_independent_computation() {
    let root = temp_dir("eval-split");
    let dir = prepare_text(&root, &short_wikitext_articles(12), "wt-mini", Docs::Wikitext, 700);
    let (cfg, params) = tiny();
    let m = Manifest::load(&dir).unwrap();
    assert!(m.splits["val"].shards.len() >= 3, "the test needs windows that cross shards: {:?}", m.splits["val"]);
    let (seq, windows) = (32usize, 16usize);
    let opts = EvalOptions {
        split: Split::Val,
        seq: Some(seq),
        batch: Some(3),
        max_tokens: Some((windows * seq + seq - 1) as u64),
        progress: false,
    };
    let r = evaluate_split(&cfg, &params, &dir, &opts).unwrap();
    assert_eq!((r.windows, r.tokens, r.seq, r.batch), (windows as u64, (windows * seq) as u64, seq, 3));

    let stream = split_tokens(&dir, Split::Val);
    assert_eq!(r.split_tokens, stream.len() as u64);
    let mut nats = 0.0;
    for w in 0..windows {
        let win = &stream[w * seq..(w + 1) * seq + 1];
        nats += losses(&cfg, &params, &win[..seq], &win[1..]).iter().sum::<f64>();
    }
    let n = (windows * seq) as f64;
    assert!(close(r.loss, nats / n, 1e-5), "loss {} vs independent {}", r.loss, nats / n);
    assert!(close(r.perplexity, (nats / n).exp(), 1e-4));
    assert!(r.loss > 10.0 && r.loss < 11.5, "an untrained model reads about ln(50257) = 10.8, got {}", r.loss);

    // The scored text: targets 1..=windows*seq, documents separated by end-of-text.
    let tok = Tokenizer::gpt2().unwrap();
    let scored = &stream[1..=windows * seq];
    let bytes: usize = scored.split(|&t| t == EOT_TOKEN).map(|d| tok.decode_bytes(d).len()).sum();
    let pieces: Vec<String> = scored.split(|&t| t == EOT_TOKEN).map(|d| tok.decode(d)).collect();
    assert!(scored.contains(&EOT_TOKEN), "the scored range should span a document boundary");
    assert_eq!(r.bytes, bytes as u64);
    let bpb = nats / std::f64::consts::LN_2 / bytes as f64;
    assert!(close(r.bits_per_byte, bpb, 1e-5), "bpb {} vs {bpb}", r.bits_per_byte);
    let words = words_by_scan(&pieces);
    assert_eq!(r.words, Some(words));
    let ratio = words as f64 / n;
    assert!((0.5..0.95).contains(&ratio), "wikitext has about 1 word per 1.14 tokens, got {ratio}");
    let wppl = r.word_perplexity.unwrap();
    assert!(close(wppl, (nats / words as f64).exp(), 1e-4), "word ppl {wppl}");

    // The same windows in one batch of 16, or one at a time, give the same loss.
    for batch in [1, 16] {
        let r2 = evaluate_split(&cfg, &params, &dir, &EvalOptions { batch: Some(batch), ..opts.clone() }).unwrap();
        assert!(close(r2.loss, r.loss, 1e-6), "batch {batch}: {} vs {}", r2.loss, r.loss);
        assert_eq!(r2.batch, batch.min(windows));
    }
    fs::remove_dir_all(&root).unwrap();
}

/// --max-tokens takes whole windows and no more; without it every full window of the split counts;
/// the test split, too-long windows and too-small limits are handled with clear errors; word-level
/// perplexity is reported for wikitext only.
#[test]
fn windows_limits_and_errors() {
    let root = temp_dir("eval-limits");
    let dir = prepare_text(&root, &shared_prefix("tinyshakespeare.txt", 6_000), "shakes", Docs::Paragraphs, 100_000);
    let (cfg, params) = tiny();
    let n = split_tokens(&dir, Split::Val).len();
    let opts = EvalOptions { seq: Some(64), ..EvalOptions::default() };
    let all = evaluate_split(&cfg, &params, &dir, &opts).unwrap();
    assert_eq!(all.seq, 64, "default is the model context");
    assert_eq!(all.windows, ((n - 1) / 64) as u64);
    assert_eq!(all.tokens, all.windows * 64);
    assert_eq!((all.words, all.word_perplexity), (None, None), "not a wikitext dataset");
    assert_eq!(all.dataset, "shakes");

    for (limit, want) in [(64 * 3, 3), (64 * 3 + 63, 3), (64, 1), (u64::MAX, all.windows)] {
        let r = evaluate_split(&cfg, &params, &dir, &EvalOptions { max_tokens: Some(limit), ..opts.clone() }).unwrap();
        assert_eq!(r.windows, want, "--max-tokens {limit}");
        assert!(r.tokens <= limit);
    }
    let defaults = evaluate_split(&cfg, &params, &dir, &EvalOptions { max_tokens: Some(128), ..Default::default() });
    assert_eq!(defaults.unwrap().seq, cfg.max_seq_len.min(1024));

    let e = err_string(evaluate_split(&cfg, &params, &dir, &EvalOptions { max_tokens: Some(10), ..opts.clone() }));
    assert_mentions(&e, &["--max-tokens 10", "--seq"]);
    let e = err_string(evaluate_split(&cfg, &params, &dir, &EvalOptions { seq: Some(65), ..opts.clone() }));
    assert_mentions(&e, &["--seq 65", "64"]);
    let e = err_string(evaluate_split(&cfg, &params, &dir, &EvalOptions { split: Split::Test, ..opts.clone() }));
    assert_mentions(&e, &["no test split"]);
    let e = err_string(evaluate_split(&cfg, &params, &root.join("nothing"), &opts));
    assert_mentions(&e, &["nothing", "genesis prepare"]);
    fs::remove_dir_all(&root).unwrap();
}

/// A random GPT-2-looking sentence of `words` words.
fn sentence(rng: &mut Rng, words: usize) -> String {
    const VOCAB: &[&str] = &[
        "the",
        "a",
        "man",
        "woman",
        "dog",
        "runs",
        "across",
        "field",
        "then",
        "picks",
        "up",
        "ball",
        "and",
        "throws",
        "it",
        "kitchen",
        "knife",
        "slowly",
        "carefully",
        "water",
        "into",
        "bowl",
        "he",
        "she",
        "they",
        "laughs",
    ];
    (0..words).map(|_| VOCAB[rng.below(VOCAB.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

/// Per-ending (summed loss, tokens) computed directly: one forward per ending over
/// ctx ++ " " + ending, cut from the left to the model's context, scoring the ending tokens.
fn direct_scores(cfg: &ModelConfig, params: &[f32], tok: &Tokenizer, item: &HellaSwagItem) -> Vec<(f64, usize)> {
    let ctx = tok.encode(&item.ctx);
    item.endings
        .iter()
        .map(|e| {
            let full: Vec<u32> = ctx.iter().copied().chain(tok.encode(&format!(" {e}"))).collect();
            let cut = full.len().saturating_sub(cfg.max_seq_len + 1);
            let l = losses(cfg, params, &full[cut..full.len() - 1], &full[cut + 1..]);
            // Target j predicts full[cut + 1 + j]; ending tokens start at full[ctx.len()].
            let scored: Vec<f64> =
                l.iter().enumerate().filter(|(j, _)| cut + 1 + j >= ctx.len()).map(|p| *p.1).collect();
            (scored.iter().sum(), scored.len())
        })
        .collect()
}

fn first_min(xs: &[f64]) -> usize {
    (0..xs.len()).fold(0, |best, i| if xs[i] < xs[best] { i } else { best })
}

/// acc and acc_norm equal a direct per-candidate computation on synthetic items (long contexts cut
/// from the left, ctx_a/ctx_b and string labels), including items where the two pick differently.
#[test]
fn hellaswag_matches_direct_scoring() {
    let root = temp_dir("eval-hellaswag");
    let (cfg, params) = tiny();
    let tok = Tokenizer::gpt2().unwrap();
    let mut rng = Rng::new(5);
    // Endings of very different lengths make the summed and the mean loss disagree.
    let mut items: Vec<HellaSwagItem> = (0..8)
        .map(|i| HellaSwagItem {
            line: 0,
            ctx: sentence(&mut rng, if i == 0 { 90 } else { 6 + i }),
            endings: [1, 3, 8, 14].iter().map(|&w| sentence(&mut rng, w + (i % 3))).collect(),
            label: 0,
        })
        .collect();
    assert!(tok.encode(&items[0].ctx).len() > cfg.max_seq_len, "item 0 must need cutting");

    let scores: Vec<Vec<(f64, usize)>> = items.iter().map(|it| direct_scores(&cfg, &params, &tok, it)).collect();
    let pick = |s: &[(f64, usize)]| {
        let sums: Vec<f64> = s.iter().map(|x| x.0).collect();
        let means: Vec<f64> = s.iter().map(|x| x.0 / x.1 as f64).collect();
        (first_min(&sums), first_min(&means))
    };
    let disagree: Vec<usize> = (0..items.len()).filter(|&i| pick(&scores[i]).0 != pick(&scores[i]).1).collect();
    assert!(disagree.len() >= 2, "the test needs items where acc and acc_norm pick differently: {disagree:?}");
    // Labels: the sum's pick on even items, the mean's pick on odd ones, so acc != acc_norm.
    for (i, it) in items.iter_mut().enumerate() {
        let (by_sum, by_mean) = pick(&scores[i]);
        it.label = if i % 2 == 0 { by_sum } else { by_mean };
    }
    let (mut want_acc, mut want_norm) = (0u64, 0u64);
    for (it, s) in items.iter().zip(&scores) {
        let (by_sum, by_mean) = pick(s);
        want_acc += u64::from(by_sum == it.label);
        want_norm += u64::from(by_mean == it.label);
    }
    assert_ne!(want_acc, want_norm);

    // The library's batched scores equal the direct ones per candidate.
    let mut scorer = eval::CpuScorer::new(&cfg, &params).unwrap();
    for (it, s) in items.iter().zip(&scores) {
        let got = eval::score_candidates(&mut scorer, &eval::item_candidates(&tok, it, cfg.max_seq_len)).unwrap();
        for (g, d) in got.iter().zip(s) {
            assert_eq!(g.tokens, d.1);
            assert!(close(g.sum, d.0, 1e-5), "candidate loss {} vs direct {}", g.sum, d.0);
        }
    }

    // Written as jsonl: item 1 in the ctx_a/ctx_b form, item 2 with a string label, a blank line.
    let path = root.join("hellaswag.jsonl");
    let mut lines: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, it)| match i {
            1 => {
                let (a, b) = it.ctx.split_at(it.ctx.find(' ').unwrap());
                json!({"ctx_a": a, "ctx_b": b.trim_start(), "endings": it.endings, "label": it.label}).to_string()
            }
            2 => json!({"ctx": it.ctx, "endings": it.endings, "label": it.label.to_string()}).to_string(),
            _ => json!({"ind": i, "ctx": it.ctx, "endings": it.endings, "label": it.label}).to_string(),
        })
        .collect();
    lines.insert(3, String::new());
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    let read = read_hellaswag(&path, None).unwrap();
    assert_eq!(
        read.iter().map(|r| (&r.ctx, r.label)).collect::<Vec<_>>(),
        items.iter().map(|r| (&r.ctx, r.label)).collect::<Vec<_>>()
    );
    assert_eq!(read[4].line, 6, "line numbers count the blank line");

    let r = evaluate_hellaswag(&cfg, &params, &path, &HellaSwagOptions::default()).unwrap();
    assert_eq!((r.items, r.correct, r.correct_norm), (items.len() as u64, want_acc, want_norm));
    assert!(close(r.acc, want_acc as f64 / items.len() as f64, 1e-12));
    assert!(close(r.acc_norm, want_norm as f64 / items.len() as f64, 1e-12));

    let r = evaluate_hellaswag(&cfg, &params, &path, &HellaSwagOptions { limit: Some(3), progress: false }).unwrap();
    assert_eq!(r.items, 3);
    fs::remove_dir_all(&root).unwrap();
}

/// Bad HellaSwag files: the error names the file and the line, and what was expected.
#[test]
fn bad_hellaswag_files_name_file_and_line() {
    let root = temp_dir("eval-hellaswag-bad");
    let good = r#"{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1}"#;
    let cases: &[(&str, &[&str])] = &[
        (r#"{"ctx": "A man", "endings": ["a", "b""#, &["not valid JSON"]),
        (r#"{"endings": ["a", "b", "c", "d"], "label": 1}"#, &["\"ctx\""]),
        (r#"{"ctx": "A man", "label": 1}"#, &["\"endings\""]),
        (r#"{"ctx": "A man", "endings": ["a", "b", "c"], "label": 1}"#, &["4 strings"]),
        (r#"{"ctx": "A man", "endings": ["a", "b", "c", 4], "label": 1}"#, &["4 strings"]),
        (r#"{"ctx": "A man", "endings": ["a", "b", "c", "d"]}"#, &["\"label\""]),
        (r#"{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}"#, &["label 4", "out of range", "0 to 3"]),
        (r#"{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": -1}"#, &["out of range"]),
        (r#"[1, 2]"#, &["JSON object"]),
    ];
    for (i, (bad, parts)) in cases.iter().enumerate() {
        let path = root.join(format!("bad{i}.jsonl"));
        fs::write(&path, format!("{good}\n{good}\n{bad}\n{good}\n")).unwrap();
        let e = err_string(read_hellaswag(&path, None));
        assert_mentions(&e, &[&format!("{}:3:", path.display())]);
        assert_mentions(&e, parts);
        // A limit that stops before the bad line reads fine.
        assert_eq!(read_hellaswag(&path, Some(2)).unwrap().len(), 2);
    }
    let empty = root.join("empty.jsonl");
    fs::write(&empty, "\n").unwrap();
    assert_mentions(&err_string(read_hellaswag(&empty, None)), &["empty.jsonl", "no HellaSwag items"]);
    assert_mentions(&err_string(read_hellaswag(&root.join("missing.jsonl"), None)), &["missing.jsonl"]);
    fs::remove_dir_all(&root).unwrap();
}

/// The CLI prints the report, --json parses and matches the library, bad arguments explain themselves.
#[test]
fn cli_prints_the_report_and_json() {
    let root = temp_dir("eval-cli");
    let dir = prepare_text(&root, &shared_prefix("wikitext-test.raw", 30_000), "wt-cli", Docs::Wikitext, 100_000);
    let (cfg, params) = tiny();
    let ckpt = root.join("model.ckpt");
    checkpoint::save(&ckpt, &Checkpoint::new(cfg, 7, params.clone())).unwrap();
    let hs = root.join("hs.jsonl");
    let item = json!({"ctx": "The cat sat", "endings": ["on the mat.", "x", "in a hat and more", "ran"], "label": 0});
    fs::write(&hs, format!("{item}\n{item}\n{item}\n")).unwrap();
    let (c, d, h) = (ckpt.to_str().unwrap(), dir.to_str().unwrap(), hs.to_str().unwrap());
    // --device cpu: the numbers are compared with the CPU library (on a GPU machine auto picks the GPU).
    let base = ["eval", "--device", "cpu", "--checkpoint", c, "--data", d, "--seq", "16", "--max-tokens", "64"];

    let out = genesis(&[&base[..], &["--hellaswag", h, "--hellaswag-limit", "2"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for label in ["model", "data", "loss", "ppl", "bpb", "word ppl", "hellaswag"] {
        assert!(s.lines().any(|l| l.starts_with(&format!("{label} "))), "no {label:?} line in\n{s}");
    }
    assert_mentions(&s, &["step 7", "64 tokens in 4 windows of 16", "/2), acc_norm"]);

    let out = genesis(&[&base[..], &["--json", "--split", "val"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).expect("--json prints one JSON object");
    let lib = evaluate_split(
        &cfg,
        &params,
        &dir,
        &EvalOptions { seq: Some(16), max_tokens: Some(64), ..EvalOptions::default() },
    )
    .unwrap();
    assert_eq!(v["data"]["tokens"], 64);
    assert_eq!(v["step"], 7);
    assert!(v["hellaswag"].is_null());
    for key in ["loss", "perplexity", "bits_per_byte", "word_perplexity"] {
        let got = v["data"][key].as_f64().unwrap_or_else(|| panic!("no data.{key} in {v}"));
        let want = serde_json::to_value(&lib).unwrap()[key].as_f64().unwrap();
        assert!(close(got, want, 1e-9), "{key}: CLI {got} vs library {want}");
    }

    let out = genesis(&["eval", "--device", "cpu", "--checkpoint", c, "--hellaswag", h, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["hellaswag"]["items"], 3);
    assert!(v["data"].is_null());

    let fails = |args: &[&str], parts: &[&str]| {
        let out = genesis(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_mentions(&text(&out.stderr), parts);
    };
    fails(&["eval", "--checkpoint", c], &["--data", "--hellaswag"]);
    fails(&["eval", "--checkpoint", c, "--data", root.join("nope").to_str().unwrap()], &["nope", "genesis prepare"]);
    fails(&["eval", "--checkpoint", c, "--data", d, "--split", "train"], &["val or test"]);
    fails(&["eval", "--checkpoint", c, "--data", d, "--split", "test"], &["no test split"]);
    fails(&["eval", "--checkpoint", c, "--hellaswag", root.join("no.jsonl").to_str().unwrap()], &["no.jsonl"]);
    fails(&["eval", "--checkpoint", root.join("no.ckpt").to_str().unwrap(), "--data", d], &["no.ckpt"]);
    let help = genesis(&["eval", "--help"]);
    assert_mentions(&text(&help.stdout), &["bits per byte", "acc_norm", "word", "sliding-window"]);
    fs::remove_dir_all(&root).unwrap();
}
