//! Evaluation that compares with published numbers: held-out loss, perplexity, bits per byte and
//! word-level perplexity on a prepared dataset split, and HellaSwag accuracy.
//!
//! Both evaluations are pure functions of a model (config + flat f32 parameters) and their inputs,
//! so `genesis eval` and the training loop call the same code: [`evaluate_split`] and
//! [`evaluate_hellaswag`].
//!
//! # Language modelling ([`evaluate_split`])
//!
//! The split's shards are read in order as one token stream and cut into non-overlapping windows:
//! window `w` feeds tokens `[w*seq, (w+1)*seq)` and predicts tokens `[w*seq + 1, (w+1)*seq + 1)`,
//! so every token after the first is predicted exactly once, with between 0 and `seq - 1` tokens of
//! context. Only full windows are used (at most `max_tokens / seq` of them). From the summed
//! cross-entropy `nats` over the `tokens` predicted tokens:
//!
//! - loss = nats / tokens (nats per GPT-2 BPE token), perplexity = exp(loss);
//! - bits per byte = nats / ln 2 / bytes, where bytes is the UTF-8 length of the predicted tokens'
//!   text (each token decoded to its exact bytes; the end-of-text token counts 0 bytes). It does not
//!   depend on the tokenizer, so it compares across vocabularies;
//! - for wikitext datasets, word-level perplexity = exp(nats / words), where words is the number of
//!   whitespace-separated words in the predicted tokens' text (end-of-text separates words). This is
//!   the convention of EleutherAI's lm-evaluation-harness (`word_perplexity`); the GPT-2 paper
//!   reports 37.50 for GPT-2 124M zero-shot on wikitext-103.
//!
//! Non-overlapping windows give the early tokens of each window little context, so the numbers read
//! somewhat higher (worse) than the sliding-window evaluations papers report, in which every token
//! sees nearly a full context. Genesis also scores the raw wikitext as prepared (` @-@ `, spaces
//! before punctuation), without the detokenisation some papers apply first.
//!
//! # HellaSwag ([`evaluate_hellaswag`])
//!
//! Completion-style scoring of the official validation jsonl: for each of an item's 4 endings the
//! model reads `encode(ctx) ++ encode(" " + ending)` and only the ending's tokens are scored. `acc`
//! picks the ending with the lowest summed loss (highest log-likelihood); `acc_norm` picks the one with
//! the lowest mean loss per ending token (length-normalised, as llm.c and nanoGPT do). Ties go to
//! the first ending. The 4 candidates of an item run as one padded batch.

use crate::util::duration;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::cpu::gpt::{self, Activations};
use crate::data::manifest::{Manifest, Split};
use crate::data::shard::Shard;
use crate::data::source::Docs;
use crate::data::tokenizer::Tokenizer;
use crate::gpu::engine::GpuEngine;
use crate::model::{ModelConfig, ParamLayout, EOT_TOKEN, VOCAB_SIZE};

/// The longest window used when `seq` is not given: GPT-2's context.
pub const DEFAULT_MAX_SEQ: usize = 1024;
/// Activation memory the automatic batch size stays within.
pub const AUTO_BATCH_BYTES: usize = 2 << 30;
/// The automatic batch size never exceeds this many rows.
pub const AUTO_BATCH_MAX: usize = 8;
/// Endings per HellaSwag item.
pub const HELLASWAG_ENDINGS: usize = 4;

/// What [`evaluate_split`] evaluates. `Default` gives the val split, the model's context (at most
/// 1024) as window, an automatic batch, every full window and no progress output.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub split: Split,
    /// Window length in tokens (default: the model's context, at most [`DEFAULT_MAX_SEQ`]).
    pub seq: Option<usize>,
    /// Windows per forward pass (default: [`auto_batch`]).
    pub batch: Option<usize>,
    /// Evaluate at most this many predicted tokens (whole windows only).
    pub max_tokens: Option<u64>,
    /// Print a progress line to stderr every few seconds.
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { split: Split::Val, seq: None, batch: None, max_tokens: None, progress: false }
    }
}

/// The result of [`evaluate_split`]. See the module docs for the definitions.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The dataset's name from its manifest.
    pub dataset: String,
    pub dir: PathBuf,
    pub split: Split,
    /// Tokens in the split.
    pub split_tokens: u64,
    /// Window length and windows per forward pass used.
    pub seq: usize,
    pub batch: usize,
    pub windows: u64,
    /// Predicted (scored) tokens: windows * seq.
    pub tokens: u64,
    /// Summed cross-entropy over the scored tokens, in nats.
    pub total_nats: f64,
    /// Mean loss in nats per BPE token, and its exponential.
    pub loss: f64,
    pub perplexity: f64,
    /// UTF-8 bytes of the scored tokens' text (end-of-text counts 0), and nats / ln 2 / bytes.
    pub bytes: u64,
    pub bits_per_byte: f64,
    /// Wikitext datasets only: whitespace-separated words of the scored text, and exp(nats / words).
    pub words: Option<u64>,
    pub word_perplexity: Option<f64>,
    pub seconds: f64,
}

/// Per-position losses of a batch: what evaluation needs from an engine (the CPU reference or a
/// model on the GPU in either precision).
pub trait Scorer {
    fn config(&self) -> &ModelConfig;
    /// Cross-entropy of predicting `targets` from `inputs`, both (B,T) row-major: (B*T) losses.
    fn losses(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    /// The largest batch worth running at sequence length `seq`.
    fn auto_batch(&self, seq: usize) -> usize;
}

/// The CPU reference as a [`Scorer`].
pub struct CpuScorer<'a> {
    cfg: ModelConfig,
    layout: ParamLayout,
    params: &'a [f32],
    acts: Option<Activations<f32>>,
}

impl<'a> CpuScorer<'a> {
    pub fn new(cfg: &ModelConfig, params: &'a [f32]) -> Result<Self> {
        check_params(cfg, params)?;
        Ok(CpuScorer { cfg: *cfg, layout: ParamLayout::new(cfg), params, acts: None })
    }
}

impl Scorer for CpuScorer<'_> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn losses(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        if self.acts.as_ref().is_none_or(|a| a.b != b || a.t != t) {
            self.acts = None;
            check_cpu_memory(&self.cfg, b, t, crate::util::available_memory())?;
            self.acts = Some(Activations::new(&self.cfg, b, t));
        }
        let acts = self.acts.as_mut().expect("allocated above");
        gpt::forward(&self.cfg, &self.layout, self.params, acts, inputs);
        gpt::loss(&self.cfg, &self.layout, self.params, acts, targets);
        Ok(acts.losses.clone())
    }

    fn auto_batch(&self, seq: usize) -> usize {
        auto_batch(&self.cfg, seq)
    }
}

/// Refuses a CPU batch of `b` windows of `t` tokens whose activations would not fit in `available`
/// bytes (instead of aborting in the allocator), naming both figures and the option to change.
fn check_cpu_memory(cfg: &ModelConfig, b: usize, t: usize, available: Option<u64>) -> Result<()> {
    let need = Activations::<f32>::bytes(cfg, b, t);
    match available {
        Some(avail) if need > avail as u128 => bail!(
            "evaluating {b} windows of {t} tokens at once on the CPU needs about {} of activations, but {} is \
             available; use a smaller --batch (or leave it out: the automatic batch keeps within {})",
            crate::util::gb(need),
            crate::util::gb(avail as u128),
            crate::util::gb(AUTO_BATCH_BYTES as u128)
        ),
        _ => Ok(()),
    }
}

/// A model on the GPU as a [`Scorer`].
impl Scorer for Box<dyn GpuEngine> {
    fn config(&self) -> &ModelConfig {
        GpuEngine::config(&**self)
    }

    fn losses(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        GpuEngine::losses(&mut **self, inputs, targets, b, t)
    }

    fn auto_batch(&self, seq: usize) -> usize {
        GpuEngine::auto_batch(&**self, seq)
    }
}

/// Evaluates the model on one split of the prepared dataset in `dir` on the CPU. See the module docs.
pub fn evaluate_split(cfg: &ModelConfig, params: &[f32], dir: &Path, opts: &EvalOptions) -> Result<EvalReport> {
    evaluate_split_with(&mut CpuScorer::new(cfg, params)?, dir, opts)
}

/// [`evaluate_split`] with any engine.
pub fn evaluate_split_with(scorer: &mut dyn Scorer, dir: &Path, opts: &EvalOptions) -> Result<EvalReport> {
    let cfg = &scorer.config().clone();
    let start = Instant::now();
    let manifest = Manifest::load(dir)?;
    let stream = TokenStream::open(&manifest, dir, opts.split)?;
    let seq = window_len(cfg, opts.seq)?;
    let windows = plan_windows(&stream, dir, opts, seq)?;
    let batch = match opts.batch {
        Some(0) => bail!("--batch must be at least 1"),
        Some(b) => b,
        None => scorer.auto_batch(seq),
    }
    .min(windows as usize);

    let mut progress = Progress::new(opts.progress, "tokens", windows * seq as u64);
    let mut total_nats = 0.0f64;
    let mut window = vec![0u32; seq + 1];
    let mut w = 0u64;
    while w < windows {
        let rows = batch.min((windows - w) as usize);
        let mut inputs = Vec::with_capacity(rows * seq);
        let mut targets = Vec::with_capacity(rows * seq);
        for r in 0..rows {
            stream.copy((w as usize + r) * seq, &mut window);
            inputs.extend_from_slice(&window[..seq]);
            targets.extend_from_slice(&window[1..]);
        }
        let losses = scorer.losses(&inputs, &targets, rows, seq)?;
        total_nats += losses.iter().map(|&l| l as f64).sum::<f64>();
        w += rows as u64;
        progress.update(w * seq as u64);
    }
    progress.finish();

    let tokens = windows * seq as u64;
    let mut scored = vec![0u32; tokens as usize];
    stream.copy(1, &mut scored);
    let tokenizer = Tokenizer::gpt2()?;
    let bytes = text_bytes(&tokenizer, &scored);
    let words = is_wikitext(&manifest, dir).then(|| count_words(&tokenizer, &scored));
    let loss = total_nats / tokens as f64;
    Ok(EvalReport {
        dataset: manifest.name.clone(),
        dir: dir.to_path_buf(),
        split: opts.split,
        split_tokens: stream.len as u64,
        seq,
        batch,
        windows,
        tokens,
        total_nats,
        loss,
        perplexity: loss.exp(),
        bytes,
        bits_per_byte: total_nats / std::f64::consts::LN_2 / bytes as f64,
        words,
        word_perplexity: words.map(|n| (total_nats / n as f64).exp()),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Refuses a parameter buffer that does not match the config's layout.
fn check_params(cfg: &ModelConfig, params: &[f32]) -> Result<()> {
    let want = ParamLayout::new(cfg).total;
    if params.len() != want {
        bail!("the model has {} parameters but its config ({cfg}) needs {want}", params.len());
    }
    Ok(())
}

/// The window length: `seq` if given (checked against the model's context), else the context capped
/// at [`DEFAULT_MAX_SEQ`].
fn window_len(cfg: &ModelConfig, seq: Option<usize>) -> Result<usize> {
    match seq {
        None => Ok(cfg.max_seq_len.min(DEFAULT_MAX_SEQ)),
        Some(0) => bail!("--seq must be at least 1"),
        Some(s) if s > cfg.max_seq_len => {
            bail!("--seq {s} is longer than the model's context of {} tokens; use at most that", cfg.max_seq_len)
        }
        Some(s) => Ok(s),
    }
}

/// How many full windows to evaluate: all of them, or as many as `max_tokens` holds.
fn plan_windows(stream: &TokenStream, dir: &Path, opts: &EvalOptions, seq: usize) -> Result<u64> {
    let full = (stream.len.saturating_sub(1) / seq) as u64;
    if full == 0 {
        bail!(
            "the {} split of {} holds {} tokens, fewer than one window of {seq} tokens plus the one it predicts; \
             pass a smaller --seq or prepare more text",
            opts.split,
            dir.display(),
            stream.len
        );
    }
    match opts.max_tokens {
        None => Ok(full),
        Some(n) if n < seq as u64 => {
            bail!("--max-tokens {n} is less than one window of {seq} tokens; raise it or pass a smaller --seq")
        }
        Some(n) => Ok(full.min(n / seq as u64)),
    }
}

/// Bytes of activations [`gpt::forward`] keeps per batch row of `t` tokens.
pub fn activation_bytes_per_row(cfg: &ModelConfig, t: usize) -> usize {
    let (l, c, nh) = (cfg.num_layers, cfg.channels, cfg.num_heads);
    // Per token: the embedding output; per layer 18 C-wide tensors (ln1, qkv 3C, atty, attproj,
    // residual2, ln2, fch 4C, fch_gelu 4C, fcproj, residual3), 4 LayerNorm statistics and one
    // attention row per head; then lnf, its statistics and the loss.
    let per_token = c + l * (18 * c + 4 + nh * t) + c + 3;
    per_token * t * std::mem::size_of::<f32>()
}

/// The default batch: as many rows as fit in [`AUTO_BATCH_BYTES`] of activations, between 1 and
/// [`AUTO_BATCH_MAX`].
pub fn auto_batch(cfg: &ModelConfig, seq: usize) -> usize {
    (AUTO_BATCH_BYTES / activation_bytes_per_row(cfg, seq).max(1)).clamp(1, AUTO_BATCH_MAX)
}

/// Whether word-level perplexity applies: the dataset was cut into wikitext articles, or its name
/// (in the manifest or the directory's) starts with `wikitext`.
fn is_wikitext(manifest: &Manifest, dir: &Path) -> bool {
    let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    manifest.settings.docs == Docs::Wikitext
        || manifest.name.starts_with("wikitext")
        || dir_name.starts_with("wikitext")
}

/// UTF-8 bytes of `tokens`' text: each token's exact bytes; the end-of-text token counts 0.
pub fn text_bytes(tokenizer: &Tokenizer, tokens: &[u32]) -> u64 {
    let lens: Vec<u32> = (0..VOCAB_SIZE as u32)
        .map(|t| if t == EOT_TOKEN { 0 } else { tokenizer.token_bytes(t).map_or(0, |b| b.len() as u32) })
        .collect();
    tokens.iter().map(|&t| lens.get(t as usize).copied().unwrap_or(0) as u64).sum()
}

/// Whitespace-separated words of `tokens`' text. The end-of-text token separates words (it stands
/// between documents); bytes that are not valid UTF-8 count as text.
pub fn count_words(tokenizer: &Tokenizer, tokens: &[u32]) -> u64 {
    tokens
        .split(|&t| t == EOT_TOKEN)
        .map(|doc| String::from_utf8_lossy(&tokenizer.decode_bytes(doc)).split_whitespace().count() as u64)
        .sum()
}

/// One split's shards, in order, read as a single token stream.
struct TokenStream {
    shards: Vec<Shard>,
    /// Stream offset of each shard's first token.
    offsets: Vec<usize>,
    len: usize,
}

impl TokenStream {
    fn open(manifest: &Manifest, dir: &Path, split: Split) -> Result<Self> {
        let paths = manifest.shard_paths(dir, split)?;
        let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;
        let mut offsets = Vec::with_capacity(shards.len());
        let mut len = 0;
        for s in &shards {
            offsets.push(len);
            len += s.len();
        }
        Ok(TokenStream { shards, offsets, len })
    }

    /// Fills `out` with the tokens at stream positions `start..start + out.len()`.
    fn copy(&self, start: usize, out: &mut [u32]) {
        assert!(start + out.len() <= self.len, "token range past the end of the split");
        let mut shard = self.offsets.partition_point(|&o| o <= start) - 1;
        let (mut pos, mut done) = (start - self.offsets[shard], 0);
        while done < out.len() {
            let tokens = self.shards[shard].tokens();
            let n = (tokens.len() - pos).min(out.len() - done);
            for (o, &t) in out[done..done + n].iter_mut().zip(&tokens[pos..pos + n]) {
                *o = t as u32;
            }
            done += n;
            shard += 1;
            pos = 0;
        }
    }
}

/// A progress line on stderr every few seconds: done/total, rate and time left.
struct Progress {
    enabled: bool,
    unit: &'static str,
    total: u64,
    start: Instant,
    last: Instant,
    printed: bool,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    fn new(enabled: bool, unit: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Progress { enabled, unit, total, start: now, last: now, printed: false }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        self.printed = true;
        let secs = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = (self.total - done.min(self.total)) as f64 / rate.max(1e-9);
        let pct = 100.0 * done as f64 / self.total.max(1) as f64;
        let line = format!(
            "eval: {done}/{} {} ({pct:.1}%), {rate:.1} {}/s, {} left",
            self.total,
            self.unit,
            self.unit,
            duration(eta)
        );
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    /// A final line with the total time, if progress lines were printed at all.
    fn finish(&self) {
        if self.printed {
            eprintln!("eval: {} {} in {}", self.total, self.unit, duration(self.start.elapsed().as_secs_f64()));
        }
    }
}

/// One HellaSwag item: a context, candidate endings and the index of the right one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HellaSwagItem {
    /// 1-based line in the file it came from.
    pub line: usize,
    pub ctx: String,
    pub endings: Vec<String>,
    pub label: usize,
}

/// Parses one jsonl line: `ctx` (or `ctx_a` and `ctx_b`, joined with a space), `endings` (4
/// strings) and `label` (an integer 0..=3, or a string holding one as in the Hugging Face copy).
/// The error says what was wrong, without the file and line (the caller adds them).
pub fn parse_hellaswag_line(text: &str, line: usize) -> std::result::Result<HellaSwagItem, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    let ctx = match (v.get("ctx"), v.get("ctx_a")) {
        (Some(Value::String(c)), _) => c.clone(),
        (None, Some(Value::String(a))) => match v.get("ctx_b") {
            Some(Value::String(b)) if !b.is_empty() => format!("{a} {b}"),
            None | Some(Value::String(_)) => a.clone(),
            Some(_) => return Err("\"ctx_b\" is not a string".into()),
        },
        (Some(_), _) => return Err("\"ctx\" is not a string".into()),
        (None, _) => return Err("no \"ctx\" string field (nor \"ctx_a\")".into()),
    };
    let endings = match v.get("endings") {
        Some(Value::Array(a)) if a.len() == HELLASWAG_ENDINGS && a.iter().all(Value::is_string) => {
            a.iter().map(|e| e.as_str().unwrap_or_default().to_string()).collect()
        }
        Some(_) => return Err(format!("\"endings\" must be an array of {HELLASWAG_ENDINGS} strings")),
        None => return Err("no \"endings\" field".into()),
    };
    let label = match v.get("label") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
        None => return Err("no \"label\" field".into()),
    };
    let label = match label {
        Some(l) if (0..HELLASWAG_ENDINGS as i64).contains(&l) => l as usize,
        _ => {
            return Err(format!(
                "label {} is out of range: expected an integer from 0 to {} (the index of the right ending)",
                v["label"],
                HELLASWAG_ENDINGS - 1
            ))
        }
    };
    Ok(HellaSwagItem { line, ctx, endings, label })
}

/// Reads a HellaSwag jsonl file (blank lines skipped), at most `limit` items. Errors name the file
/// and line.
pub fn read_hellaswag(path: &Path, limit: Option<usize>) -> Result<Vec<HellaSwagItem>> {
    let file = File::open(path).with_context(|| {
        format!("cannot open HellaSwag file {}; give the official hellaswag_val.jsonl", path.display())
    })?;
    let mut items = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        let line =
            line.with_context(|| format!("{}:{}: cannot read the line (is it UTF-8 text?)", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_hellaswag_line(&line, i + 1).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: {e}; expected one HellaSwag item per line with \"ctx\", \"endings\" and \"label\" \
                 (the official hellaswag_val.jsonl format)",
                path.display(),
                i + 1
            )
        })?;
        items.push(item);
    }
    if items.is_empty() {
        bail!("{} holds no HellaSwag items; give the official hellaswag_val.jsonl", path.display());
    }
    Ok(items)
}

/// One candidate's tokens as the model sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Context then ending, cut from the left to at most context + 1 tokens.
    pub tokens: Vec<u32>,
    /// Index into the targets (`tokens[1..]`) of the first ending token scored.
    pub scored_from: usize,
}

impl Candidate {
    /// `ctx ++ ending`, keeping the last `context + 1` tokens (the model reads all but the last).
    /// An empty context becomes the end-of-text token, so the first ending token has something to
    /// follow. Ending tokens cut off with the context are not scored.
    pub fn new(ctx: &[u32], ending: &[u32], context: usize) -> Self {
        let ctx = if ctx.is_empty() { &[EOT_TOKEN][..] } else { ctx };
        let mut all = Vec::with_capacity(ctx.len() + ending.len());
        all.extend_from_slice(ctx);
        all.extend_from_slice(ending);
        let cut = all.len().saturating_sub(context + 1);
        // Target j is all[cut + j + 1]; the ending starts at all[ctx.len()].
        let scored_from = ctx.len().saturating_sub(cut + 1);
        Candidate { tokens: all.split_off(cut), scored_from }
    }

    /// Targets (predicted tokens).
    pub fn targets(&self) -> usize {
        self.tokens.len() - 1
    }

    /// Ending tokens scored.
    pub fn scored(&self) -> usize {
        self.targets() - self.scored_from
    }
}

/// The summed loss (nats) over a candidate's scored ending tokens, and how many there were.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CandidateScore {
    pub sum: f64,
    pub tokens: usize,
}

impl CandidateScore {
    /// Mean loss per ending token.
    pub fn mean(&self) -> f64 {
        self.sum / self.tokens.max(1) as f64
    }
}

/// The candidates of one item: `encode(ctx) ++ encode(" " + ending)` for each ending.
pub fn item_candidates(tokenizer: &Tokenizer, item: &HellaSwagItem, context: usize) -> Vec<Candidate> {
    let ctx = tokenizer.encode(&item.ctx);
    item.endings.iter().map(|e| Candidate::new(&ctx, &tokenizer.encode(&format!(" {e}")), context)).collect()
}

/// Scores candidates in one forward pass: rows padded with end-of-text to the longest, padding
/// ignored (causal attention keeps it from affecting the real positions).
pub fn score_candidates(scorer: &mut dyn Scorer, candidates: &[Candidate]) -> Result<Vec<CandidateScore>> {
    let t = candidates.iter().map(Candidate::targets).max().unwrap_or(1).max(1);
    let rows = candidates.len();
    let mut inputs = vec![EOT_TOKEN; rows * t];
    let mut targets = vec![EOT_TOKEN; rows * t];
    for (r, c) in candidates.iter().enumerate() {
        let n = c.targets();
        inputs[r * t..r * t + n].copy_from_slice(&c.tokens[..n]);
        targets[r * t..r * t + n].copy_from_slice(&c.tokens[1..]);
    }
    let all = scorer.losses(&inputs, &targets, rows, t)?;
    Ok(candidates
        .iter()
        .enumerate()
        .map(|(r, c)| {
            let losses = &all[r * t + c.scored_from..r * t + c.targets()];
            CandidateScore { sum: losses.iter().map(|&l| l as f64).sum(), tokens: losses.len() }
        })
        .collect())
}

/// The index of the smallest value; the first one on ties.
pub fn argmin(values: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, v) in values.into_iter().enumerate() {
        if v < best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// What [`evaluate_hellaswag`] evaluates.
#[derive(Clone, Debug, Default)]
pub struct HellaSwagOptions {
    /// Only the first N items.
    pub limit: Option<usize>,
    /// Print a progress line to stderr every few seconds.
    pub progress: bool,
}

/// The result of [`evaluate_hellaswag`].
#[derive(Clone, Debug, Serialize)]
pub struct HellaSwagReport {
    pub file: PathBuf,
    pub items: u64,
    /// Items where the lowest summed ending loss is the right ending, and their share.
    pub correct: u64,
    pub acc: f64,
    /// Items where the lowest mean loss per ending token is the right ending, and their share.
    pub correct_norm: u64,
    pub acc_norm: f64,
    pub seconds: f64,
}

/// HellaSwag accuracy of the model on the jsonl file at `path`. See the module docs.
pub fn evaluate_hellaswag(
    cfg: &ModelConfig,
    params: &[f32],
    path: &Path,
    opts: &HellaSwagOptions,
) -> Result<HellaSwagReport> {
    evaluate_hellaswag_with(&mut CpuScorer::new(cfg, params)?, path, opts)
}

/// [`evaluate_hellaswag`] with any engine.
pub fn evaluate_hellaswag_with(
    scorer: &mut dyn Scorer,
    path: &Path,
    opts: &HellaSwagOptions,
) -> Result<HellaSwagReport> {
    let context = scorer.config().max_seq_len;
    let start = Instant::now();
    let items = read_hellaswag(path, opts.limit)?;
    let tokenizer = Tokenizer::gpt2()?;
    let mut progress = Progress::new(opts.progress, "items", items.len() as u64);
    let (mut correct, mut correct_norm) = (0u64, 0u64);
    for (i, item) in items.iter().enumerate() {
        let candidates = item_candidates(&tokenizer, item, context);
        let scores = score_candidates(scorer, &candidates)?;
        correct += u64::from(argmin(scores.iter().map(|s| s.sum)) == item.label);
        correct_norm += u64::from(argmin(scores.iter().map(CandidateScore::mean)) == item.label);
        progress.update(i as u64 + 1);
    }
    progress.finish();
    let n = items.len() as u64;
    Ok(HellaSwagReport {
        file: path.to_path_buf(),
        items: n,
        correct,
        acc: correct as f64 / n as f64,
        correct_norm,
        acc_norm: correct_norm as f64 / n as f64,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU batch whose activations exceed the available memory is refused naming both figures and
    /// --batch; one that fits, or an unknown amount of memory, passes.
    #[test]
    fn a_cpu_batch_too_large_for_memory_is_refused() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let need = Activations::<f32>::bytes(&cfg, 64, 1024);
        let e = check_cpu_memory(&cfg, 64, 1024, Some((need - 1) as u64)).unwrap_err().to_string();
        assert!(e.contains("64 windows of 1024 tokens") && e.contains("smaller --batch"), "{e}");
        assert!(e.contains(&crate::util::gb(need)) && e.contains(&crate::util::gb(need - 1)), "{e}");
        check_cpu_memory(&cfg, 64, 1024, Some(need as u64)).unwrap();
        check_cpu_memory(&cfg, 64, 1024, None).unwrap();
    }

    #[test]
    fn candidates_cut_from_the_left() {
        let c = Candidate::new(&[1, 2, 3], &[4, 5], 10);
        assert_eq!((c.tokens.clone(), c.scored_from, c.scored()), (vec![1, 2, 3, 4, 5], 2, 2));
        // Context 3: keep 4 tokens [2,3,4,5]; targets [3,4,5]; the ending's targets start at 1.
        let c = Candidate::new(&[1, 2, 3], &[4, 5], 3);
        assert_eq!((c.tokens.clone(), c.scored_from, c.scored()), (vec![2, 3, 4, 5], 1, 2));
        // The ending alone overflows: its first token loses its context and is not scored.
        let c = Candidate::new(&[1, 2, 3], &[4, 5, 6, 7], 2);
        assert_eq!((c.tokens.clone(), c.scored_from, c.scored()), (vec![5, 6, 7], 0, 2));
        let c = Candidate::new(&[], &[4], 8);
        assert_eq!((c.tokens.clone(), c.scored_from), (vec![EOT_TOKEN, 4], 0));
    }

    #[test]
    fn labels_and_contexts() {
        let item = parse_hellaswag_line(r#"{"ctx_a":"A","ctx_b":"b","endings":["1","2","3","4"],"label":"2"}"#, 7);
        assert_eq!(
            item.unwrap(),
            HellaSwagItem {
                line: 7,
                ctx: "A b".into(),
                endings: vec!["1".into(), "2".into(), "3".into(), "4".into()],
                label: 2
            }
        );
        let bad = parse_hellaswag_line(r#"{"ctx":"A","endings":["1","2","3","4"],"label":4}"#, 1);
        assert!(bad.unwrap_err().contains("out of range"));
        assert_eq!(argmin([3.0, 1.0, 1.0, 2.0]), 1);
    }
}
