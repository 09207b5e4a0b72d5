//! `genesis plot`: a run's loss curves as a self-contained SVG, written by hand.
//!
//! [`load_run`] reads `RUN/metrics.jsonl` (see [`crate::train::metrics`]) into a [`RunData`]: the
//! last record of each (kind, step), since a resumed run may log a step twice. [`render_svg`] draws
//! it against training tokens: the raw train loss as a thin light line, a centred moving average
//! over it, the validation loss as a line with point markers, and skipped (non-finite)
//! steps as marks on the x axis. The y axis is logarithmic when the losses span more than
//! [`LOG_RATIO`] (unless [`PlotOptions::linear`]), with ticks at round values either way.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::train::metrics::{self, Record, METRICS_FILE};

/// The y axis turns logarithmic when the largest loss shown is more than this times the smallest.
pub const LOG_RATIO: f64 = 2.0;
/// At most this many points of the raw train line are drawn; longer runs keep each bucket's
/// first, lowest and highest point so that spikes survive.
pub const MAX_RAW_POINTS: usize = 2000;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 32.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 70.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";
const RAW_COLOR: &str = "#9ecae1";
const SMOOTH_COLOR: &str = "#1f63b4";
const VAL_COLOR: &str = "#e0561b";
const SKIP_COLOR: &str = "#c4161c";

/// One point of a loss curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
}

/// What a run logged, one entry per step and kind (the last logged), sorted by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunData {
    /// Training steps with a finite loss.
    pub train: Vec<Point>,
    /// Validation evaluations.
    pub val: Vec<Point>,
    /// Steps whose update was skipped because the loss or gradient norm was not finite.
    pub skips: Vec<Point>,
    /// Model name and parameter count from the latest start record.
    pub model: Option<(String, u64)>,
}

impl RunData {
    /// Builds the curves from records in file order; a later record of the same kind and step
    /// replaces an earlier one (a resumed run trains those steps again).
    pub fn from_records(records: &[Record]) -> RunData {
        let (mut train, mut val, mut skips) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let mut model = None;
        for r in records {
            match r {
                Record::Start { model: m, params, .. } => model = Some((m.clone(), *params)),
                Record::Train { step, tokens, loss, .. } => {
                    skips.remove(step);
                    train.insert(*step, Point { step: *step, tokens: *tokens, loss: *loss });
                }
                Record::Val { step, tokens, loss } => {
                    val.insert(*step, Point { step: *step, tokens: *tokens, loss: *loss });
                }
                Record::Skip { step, tokens, loss, .. } => {
                    train.remove(step);
                    skips.insert(*step, Point { step: *step, tokens: *tokens, loss: *loss });
                }
            }
        }
        let finite = |m: BTreeMap<u64, Point>| m.into_values().filter(|p| p.loss.is_finite()).collect::<Vec<_>>();
        RunData { train: finite(train), val: finite(val), skips: skips.into_values().collect(), model }
    }

    /// The validation point with the lowest loss (the earliest of equals).
    pub fn best_val(&self) -> Option<Point> {
        self.val.iter().copied().fold(None, |best: Option<Point>, p| match best {
            Some(b) if b.loss <= p.loss => Some(b),
            _ => Some(p),
        })
    }
}

/// Where a run's metrics live: `RUN/metrics.jsonl`, or `RUN` itself when it is that file.
pub fn metrics_path(run: &Path) -> PathBuf {
    if run.is_file() {
        run.to_path_buf()
    } else {
        run.join(METRICS_FILE)
    }
}

/// Reads a run's metrics, with errors that say what to do: a missing directory, a run that has not
/// logged yet (naming run directories found below `run`), or a log without training steps.
pub fn load_run(run: &Path) -> Result<RunData> {
    let path = metrics_path(run);
    if !run.exists() {
        bail!(
            "{} does not exist; give the directory passed to `genesis train --out` (runs/DATA-MODEL when it \
             was given none)",
            run.display()
        );
    }
    if !path.is_file() {
        let below = runs_below(run);
        if below.is_empty() {
            bail!(
                "{} not found: {} has not logged any training yet (genesis train writes {METRICS_FILE} into its \
                 --out directory from the first step on), or it is not a run directory",
                path.display(),
                run.display()
            );
        }
        let list: Vec<String> = below.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{} has no {METRICS_FILE}, but these directories in it do: {}; plot one of them, e.g. genesis plot {}",
            run.display(),
            list.join(", "),
            crate::util::shell_path(&below[0])
        );
    }
    let data = RunData::from_records(&metrics::read(&path)?);
    if data.train.is_empty() {
        bail!(
            "{} holds no training steps yet{}; plot again once training has logged a step",
            path.display(),
            if data.skips.is_empty() { "" } else { " (only skipped, non-finite ones)" }
        );
    }
    Ok(data)
}

/// Subdirectories of `dir` (one level down) that hold a `metrics.jsonl`, sorted.
fn runs_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut runs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join(METRICS_FILE).is_file()).collect();
    runs.sort();
    runs
}

/// A readable name for the run: the directory's own name (resolving `.` and friends).
pub fn run_name(run: &Path) -> String {
    let dir = if run.is_file() { run.parent().unwrap_or(Path::new(".")) } else { run };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// How to draw.
#[derive(Clone, Debug, Default)]
pub struct PlotOptions {
    /// Shown in the title, usually [`run_name`].
    pub title: String,
    /// Force a linear y axis (otherwise logarithmic when the range exceeds [`LOG_RATIO`]).
    pub linear: bool,
}

/// Whether the y axis is logarithmic for losses in `lo..=hi`.
pub fn use_log_scale(lo: f64, hi: f64, linear: bool) -> bool {
    !linear && lo > 0.0 && hi / lo > LOG_RATIO
}

/// The line drawn over the raw train loss: a centred moving average whose half-width grows with
/// the step index (a fifth of it) up to `max_half`, so that the steep start is followed without
/// the lag of an EMA while the long tail is smoothed well. Near the end the window is cut short on
/// the right only, so the last points stay smoothed (at the cost of a little lag there).
pub fn moving_average(values: &[f64], max_half: usize) -> Vec<f64> {
    let n = values.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in values {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    (0..n)
        .map(|i| {
            let h = (i / 5).min(max_half);
            let (lo, hi) = (i - h, (i + h).min(n - 1));
            (prefix[hi + 1] - prefix[lo]) / (hi + 1 - lo) as f64
        })
        .collect()
}

/// Half-width of [`moving_average`] for `n` points: about 1/50 of the run, at most 250 steps.
pub fn smoothing_half_width(n: usize) -> usize {
    (n / 50).min(250)
}

/// Round tick values covering `lo..=hi` on a linear axis: steps of 1, 2 or 5 times a power of ten,
/// about `target` of them.
pub fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| clean(i as f64 * step)).collect()
}

/// Round tick values for `lo..=hi` (both > 0) on a log axis: mantissas from the sparsest set that
/// gives at least five ticks (1; 1, 2, 5; 1, 2, 3, 5, 7; ...).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const SETS: [&[f64]; 5] = [
        &[1.0],
        &[1.0, 2.0, 5.0],
        &[1.0, 2.0, 3.0, 5.0, 7.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
        &[1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ];
    if lo <= 0.0 || hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let mut ticks = Vec::new();
    for set in SETS {
        ticks.clear();
        for exp in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
            let base = 10f64.powi(exp);
            ticks.extend(set.iter().map(|m| clean(m * base)).filter(|v| *v >= lo && *v <= hi));
        }
        if ticks.len() >= 5 {
            break;
        }
    }
    ticks
}

/// Removes floating-point noise from a tick value (0.30000000000000004 becomes 0.3).
fn clean(v: f64) -> f64 {
    format!("{v:.10e}").parse().unwrap_or(v)
}

/// A loss tick label: as few decimals as the value needs (`3`, `3.5`, `0.25`).
pub fn format_loss(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A token count with a k/M/B suffix: `0`, `750`, `250k`, `1.5M`, `2B`.
pub fn format_tokens(v: f64) -> String {
    let (scaled, unit) = if v.abs() >= 1e9 {
        (v / 1e9, "B")
    } else if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{scaled:.2}");
    format!("{}{unit}", s.trim_end_matches('0').trim_end_matches('.'))
}

/// A parameter count such as `152.8M params`.
fn format_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B params", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M params", n as f64 / 1e6)
    } else {
        format!("{}k params", (n as f64 / 1e3).round())
    }
}

/// The model as the title shows it: `genesis-150m, 152.8M params` when the start record's
/// description is a preset's, else the description (with the count when it lacks one).
pub fn model_label(model: &str, params: u64) -> String {
    let preset = crate::model::PRESETS
        .iter()
        .map(|p| p.0)
        .find(|n| *n == model || crate::model::ModelConfig::preset(n).is_ok_and(|c| c.to_string() == model));
    match preset {
        Some(name) => format!("{name}, {}", format_params(params)),
        None if model.contains("param") => model.to_string(),
        None => format!("{model}, {}", format_params(params)),
    }
}

/// Escapes text for SVG.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Maps data coordinates to pixels inside the plot area.
struct Frame {
    x_max: f64,
    y_lo: f64,
    y_hi: f64,
    log: bool,
}

impl Frame {
    fn plot_w() -> f64 {
        WIDTH - LEFT - RIGHT
    }

    fn plot_h() -> f64 {
        HEIGHT - TOP - BOTTOM
    }

    fn x(&self, tokens: f64) -> f64 {
        LEFT + tokens / self.x_max * Self::plot_w()
    }

    fn y(&self, loss: f64) -> f64 {
        let f = |v: f64| if self.log { v.ln() } else { v };
        let t = (f(loss) - f(self.y_lo)) / (f(self.y_hi) - f(self.y_lo));
        TOP + (1.0 - t) * Self::plot_h()
    }

    /// Frames the losses with a little headroom on either side.
    fn new(data: &RunData, linear: bool) -> Frame {
        let losses = data.train.iter().chain(&data.val).map(|p| p.loss);
        let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let hi = if hi > lo { hi } else { lo + lo.abs().max(1.0) * 0.1 };
        let log = use_log_scale(lo, hi, linear);
        let (y_lo, y_hi) = if log {
            let pad = (hi / lo).ln() * 0.04;
            (lo * (-pad).exp(), hi * pad.exp())
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        };
        let x_last = data.train.iter().chain(&data.val).chain(&data.skips).map(|p| p.tokens).max().unwrap_or(0);
        Frame { x_max: (x_last as f64 * 1.01).max(1.0), y_lo, y_hi, log }
    }
}

/// The raw train points drawn: all of them, or for long runs each bucket's first, lowest and
/// highest point in order (at most about [`MAX_RAW_POINTS`]).
pub fn decimate(points: &[Point]) -> Vec<Point> {
    if points.len() <= MAX_RAW_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_RAW_POINTS / 3);
    let mut out = Vec::new();
    for chunk in points.chunks(per) {
        let lo = chunk.iter().enumerate().min_by(|a, b| a.1.loss.total_cmp(&b.1.loss)).map_or(0, |m| m.0);
        let hi = chunk.iter().enumerate().max_by(|a, b| a.1.loss.total_cmp(&b.1.loss)).map_or(0, |m| m.0);
        let mut keep = vec![0, lo, hi];
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| chunk[i]));
    }
    if out.last() != points.last() {
        out.push(*points.last().expect("more than MAX_RAW_POINTS points"));
    }
    out
}

/// `points="x,y x,y ..."` of a polyline.
fn polyline(frame: &Frame, pts: impl Iterator<Item = (f64, f64)>) -> String {
    let mut s = String::new();
    for (t, l) in pts {
        let _ = write!(s, "{:.1},{:.1} ", frame.x(t), frame.y(l));
    }
    s.trim_end().to_string()
}

/// The whole SVG document for `data`.
pub fn render_svg(data: &RunData, opts: &PlotOptions) -> String {
    let frame = Frame::new(data, opts.linear);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" data-scale="{}">"#,
        if frame.log { "log" } else { "linear" }
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    header(&mut svg, data, opts);
    axes(&mut svg, &frame);
    curves(&mut svg, data, &frame);
    legend(&mut svg, data);
    svg.push_str("</svg>\n");
    svg
}

/// Title and the line beneath it (steps, tokens, best validation loss).
fn header(svg: &mut String, data: &RunData, opts: &PlotOptions) {
    let mut title = opts.title.clone();
    if let Some((model, params)) = &data.model {
        let _ = write!(title, " \u{2014} {}", model_label(model, *params));
    }
    let last = data.train.last().expect("load_run refuses runs without train steps");
    let mut sub = format!("{} steps, {} tokens", last.step, format_tokens(last.tokens as f64));
    let _ = write!(sub, ", last train loss {:.3}", last.loss);
    if let Some(best) = data.best_val() {
        let _ = write!(
            sub,
            ", best val loss {:.4} at step {} ({} tokens)",
            best.loss,
            best.step,
            format_tokens(best.tokens as f64)
        );
    }
    if !data.skips.is_empty() {
        let _ = write!(sub, ", {} skipped step(s)", data.skips.len());
    }
    let _ = writeln!(
        svg,
        r##"<text class="title" x="{LEFT}" y="32" font-size="20" font-weight="600" fill="#222">{}</text>"##,
        xml(&title)
    );
    let _ =
        writeln!(svg, r##"<text class="subtitle" x="{LEFT}" y="56" font-size="13" fill="#555">{}</text>"##, xml(&sub));
}

/// Grid lines, ticks, tick labels and axis titles.
fn axes(svg: &mut String, frame: &Frame) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    let yt = if frame.log { log_ticks(frame.y_lo, frame.y_hi) } else { linear_ticks(frame.y_lo, frame.y_hi, 6) };
    for v in yt {
        let y = frame.y(v);
        let _ = writeln!(
            svg,
            r##"<line class="grid" x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e6e6e6" stroke-width="1"/><text class="ytick" x="{:.1}" y="{:.1}" font-size="12" fill="#444" text-anchor="end">{}</text>"##,
            x0 - 8.0,
            y + 4.0,
            format_loss(v)
        );
    }
    for v in linear_ticks(0.0, frame.x_max, 8) {
        let x = frame.x(v);
        let _ = writeln!(
            svg,
            r##"<line class="grid" x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#e6e6e6" stroke-width="1"/><text class="xtick" x="{x:.1}" y="{:.1}" font-size="12" fill="#444" text-anchor="middle">{}</text>"##,
            y1 + 18.0,
            format_tokens(v)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{:.1}" height="{:.1}" fill="none" stroke="#999" stroke-width="1"/>"##,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        svg,
        r##"<text class="xlabel" x="{:.1}" y="{:.1}" font-size="14" fill="#222" text-anchor="middle">tokens</text>"##,
        (x0 + x1) / 2.0,
        HEIGHT - 22.0
    );
    let (lx, ly) = (22.0, (y0 + y1) / 2.0);
    let scale = if frame.log { ", log scale" } else { "" };
    let _ = writeln!(
        svg,
        r##"<text class="ylabel" x="{lx}" y="{ly:.1}" font-size="14" fill="#222" text-anchor="middle" transform="rotate(-90 {lx} {ly:.1})">loss (nats/token{scale})</text>"##
    );
}

/// Raw and smoothed train loss, validation loss with markers, skipped steps and the best point.
fn curves(svg: &mut String, data: &RunData, frame: &Frame) {
    let _ = writeln!(
        svg,
        r#"<clipPath id="plot-area"><rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}"/></clipPath>"#,
        Frame::plot_w(),
        Frame::plot_h()
    );
    svg.push_str(
        "<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\" stroke-linecap=\"round\">\n",
    );
    let raw = decimate(&data.train);
    let _ = writeln!(
        svg,
        r#"<polyline class="train-raw" stroke="{RAW_COLOR}" stroke-width="1" points="{}"/>"#,
        polyline(frame, raw.iter().map(|p| (p.tokens as f64, p.loss)))
    );
    let losses: Vec<f64> = data.train.iter().map(|p| p.loss).collect();
    let smooth = moving_average(&losses, smoothing_half_width(losses.len()));
    let smooth_pts: Vec<Point> = data.train.iter().zip(&smooth).map(|(p, &loss)| Point { loss, ..*p }).collect();
    let _ = writeln!(
        svg,
        r#"<polyline class="train-smooth" stroke="{SMOOTH_COLOR}" stroke-width="2.2" points="{}"/>"#,
        polyline(frame, decimate(&smooth_pts).iter().map(|p| (p.tokens as f64, p.loss)))
    );
    if !data.val.is_empty() {
        let _ = writeln!(
            svg,
            r#"<polyline class="val" stroke="{VAL_COLOR}" stroke-width="2" points="{}"/>"#,
            polyline(frame, data.val.iter().map(|p| (p.tokens as f64, p.loss)))
        );
    }
    svg.push_str("</g>\n");
    for p in &data.val {
        let _ = writeln!(
            svg,
            r##"<circle class="val-point" cx="{:.1}" cy="{:.1}" r="3.5" fill="#fff" stroke="{VAL_COLOR}" stroke-width="1.8"><title>step {}: val loss {:.4}</title></circle>"##,
            frame.x(p.tokens as f64),
            frame.y(p.loss),
            p.step,
            p.loss
        );
    }
    if let Some(best) = data.best_val() {
        let (x, y) = (frame.x(best.tokens as f64), frame.y(best.loss));
        let _ = writeln!(
            svg,
            r##"<circle class="best-val" cx="{x:.1}" cy="{y:.1}" r="7" fill="none" stroke="{VAL_COLOR}" stroke-width="1.2"/><text class="best-label" x="{:.1}" y="{:.1}" font-size="12" font-weight="600" fill="{VAL_COLOR}" stroke="#fff" stroke-width="3" paint-order="stroke" text-anchor="{}">best {:.4}</text>"##,
            if x > WIDTH - RIGHT - 90.0 { x - 10.0 } else { x + 10.0 },
            if y - 14.0 > TOP + 12.0 { y - 14.0 } else { y + 20.0 },
            if x > WIDTH - RIGHT - 90.0 { "end" } else { "start" },
            best.loss
        );
    }
    let base = HEIGHT - BOTTOM;
    for p in &data.skips {
        let x = frame.x(p.tokens as f64);
        let _ = writeln!(
            svg,
            r#"<path class="skip" d="M{x:.1},{:.1} l-4,7 h8 z" fill="{SKIP_COLOR}"><title>step {}: skipped (loss {})</title></path>"#,
            base - 8.0,
            p.step,
            p.loss
        );
    }
}

/// The legend box in the top-right corner of the plot area.
fn legend(svg: &mut String, data: &RunData) {
    let mut items: Vec<(&str, String)> = vec![
        ("train loss", format!(r#"<line x1="0" y1="0" x2="24" y2="0" stroke="{RAW_COLOR}" stroke-width="1.5"/>"#)),
        (
            "train loss, moving average",
            format!(r#"<line x1="0" y1="0" x2="24" y2="0" stroke="{SMOOTH_COLOR}" stroke-width="2.2"/>"#),
        ),
    ];
    if !data.val.is_empty() {
        items.push((
            "validation loss",
            format!(
                r##"<line x1="0" y1="0" x2="24" y2="0" stroke="{VAL_COLOR}" stroke-width="2"/><circle cx="12" cy="0" r="3.5" fill="#fff" stroke="{VAL_COLOR}" stroke-width="1.8"/>"##
            ),
        ));
    }
    if !data.skips.is_empty() {
        items.push(("skipped step (non-finite)", format!(r#"<path d="M12,-5 l-4,7 h8 z" fill="{SKIP_COLOR}"/>"#)));
    }
    let (w, h) = (214.0, 12.0 + 20.0 * items.len() as f64);
    let (x, y) = (WIDTH - RIGHT - w - 10.0, TOP + 10.0);
    let _ = writeln!(svg, r#"<g class="legend" transform="translate({x},{y})">"#);
    let _ = writeln!(
        svg,
        r##"<rect width="{w}" height="{h}" rx="4" fill="#ffffff" fill-opacity="0.9" stroke="#cccccc"/>"##
    );
    for (i, (label, mark)) in items.iter().enumerate() {
        let row = 16.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r##"<g transform="translate(10,{row})">{mark}</g><text x="42" y="{:.1}" font-size="12.5" fill="#333">{label}</text>"##,
            row + 4.0
        );
    }
    svg.push_str("</g>\n");
}
