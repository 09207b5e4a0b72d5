//! `genesis plot`: reading metrics.jsonl (resume duplicates, torn lines), the SVG it draws (points,
//! axes, log and linear ticks) and its errors, through the library and the binary.

mod common;

use std::fs;

use common::{assert_mentions, err_string, genesis, temp_dir, text};
use genesis::plot::{self, PlotOptions, Point, RunData};
use genesis::train::metrics::Record;

const TOKENS_PER_STEP: u64 = 4096;

fn train(step: u64, loss: f64) -> Record {
    Record::Train {
        step,
        tokens: step * TOKENS_PER_STEP,
        loss,
        lr: 6e-4,
        grad_norm: 1.0,
        tokens_per_sec: 1e4,
        mfu: None,
        elapsed_s: step as f64,
    }
}

fn val(step: u64, loss: f64) -> Record {
    Record::Val { step, tokens: step * TOKENS_PER_STEP, loss }
}

fn start(step: u64) -> Record {
    Record::Start {
        step,
        tokens: step * TOKENS_PER_STEP,
        model: "tiny".into(),
        params: 1_234_567,
        tokens_per_step: TOKENS_PER_STEP,
        device: "cpu".into(),
    }
}

/// A loss curve falling from about 10.8 towards 3.2.
fn loss_at(step: u64) -> f64 {
    3.2 + 7.6 * (-(step as f64) / 15.0).exp() + 0.05 * ((step * 7919) % 13) as f64 / 13.0
}

/// The synthetic run: 60 steps with step 25 skipped, validation every 10 steps, a resume from step
/// 40 that logs steps 41..=50 again (with `resumed_loss` for them), and a torn last line.
fn synthetic_records(resumed_loss: f64) -> (Vec<Record>, String) {
    let mut recs = vec![start(0), val(0, 10.9)];
    for s in 1..=50 {
        if s == 25 {
            recs.push(Record::Skip { step: s, tokens: s * TOKENS_PER_STEP, loss: f64::NAN, grad_norm: f64::INFINITY });
        } else {
            recs.push(train(s, loss_at(s)));
        }
        if s % 10 == 0 {
            recs.push(val(s, loss_at(s) + 0.1));
        }
    }
    recs.push(start(40));
    for s in 41..=60 {
        recs.push(train(s, if s <= 50 { resumed_loss } else { loss_at(s) }));
        if s % 10 == 0 {
            recs.push(val(s, loss_at(s) + 0.1));
        }
    }
    let mut text: String = recs.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    text.push_str("{\"kind\":\"train\",\"step\":61,\"tokens\":2"); // torn by a kill
    (recs, text)
}

/// A run directory holding the synthetic metrics.
fn synthetic_run(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag).join("my-run");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("metrics.jsonl"), synthetic_records(3.0).1).unwrap();
    dir
}

/// The number of "x,y" pairs in the `points` attribute of the polyline with class `class`.
fn polyline_points(svg: &str, class: &str) -> usize {
    let tag = format!("<polyline class=\"{class}\"");
    let at = svg.find(&tag).unwrap_or_else(|| panic!("no polyline {class} in the SVG"));
    let rest = &svg[at..];
    let pts = &rest[rest.find("points=\"").unwrap() + 8..];
    pts[..pts.find('"').unwrap()].split_whitespace().count()
}

/// (value label, y pixel) of every y-axis tick.
fn y_ticks(svg: &str) -> Vec<(f64, f64)> {
    svg.match_indices("<text class=\"ytick\"")
        .map(|(i, _)| {
            let el = &svg[i..i + svg[i..].find("</text>").unwrap()];
            let y: f64 = attr(el, "y").parse().unwrap();
            let label: f64 = el[el.rfind('>').unwrap() + 1..].parse().unwrap();
            (label, y)
        })
        .collect()
}

fn attr<'a>(el: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let v = &el[el.find(&key).unwrap() + key.len()..];
    &v[..v.find('"').unwrap()]
}

#[test]
fn resume_duplicates_keep_the_last_record_and_torn_lines_are_ignored() {
    let dir = synthetic_run("plot-read");
    let data = plot::load_run(&dir).unwrap();
    // Steps 1..=60 once each, less the skipped step 25; the torn step 61 is not there.
    assert_eq!(data.train.len(), 59);
    assert_eq!(data.train.last().unwrap().step, 60);
    assert!(data.train.windows(2).all(|w| w[0].step < w[1].step));
    // Steps 41..=50 come from the resumed run.
    for p in data.train.iter().filter(|p| (41..=50).contains(&p.step)) {
        assert_eq!(p.loss, 3.0, "step {} should carry the resumed run's loss", p.step);
    }
    assert_eq!(data.val.iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 10, 20, 30, 40, 50, 60]);
    assert_eq!(data.skips.iter().map(|p| p.step).collect::<Vec<_>>(), vec![25]);
    assert!(data.skips[0].loss.is_nan(), "the skipped step's NaN loss is read back");
    assert_eq!(data.model, Some(("tiny".to_string(), 1_234_567)));
    let best = data.best_val().unwrap();
    let want = data.val.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min);
    assert_eq!(best.loss, want);
}

#[test]
fn svg_has_every_point_axis_labels_and_log_ticks() {
    let dir = synthetic_run("plot-svg");
    let data = plot::load_run(&dir).unwrap();
    let svg = plot::render_svg(&data, &PlotOptions { title: "my-run".into(), linear: false });
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(polyline_points(&svg, "train-raw"), data.train.len());
    assert_eq!(polyline_points(&svg, "train-smooth"), data.train.len());
    assert_eq!(polyline_points(&svg, "val"), data.val.len());
    assert_eq!(svg.matches("<circle class=\"val-point\"").count(), data.val.len());
    assert_eq!(svg.matches("<path class=\"skip\"").count(), 1);
    assert_mentions(&svg, &[">tokens<", "loss (nats/token", "my-run", "tiny", "1.2M params", "best val loss"]);
    // Losses span 3..11, more than 2x: a log axis.
    assert!(svg.contains("data-scale=\"log\""));
    let ticks = y_ticks(&svg);
    assert!(ticks.len() >= 4, "{ticks:?}");
    // On a log axis the pixel position is linear in ln(value): fit it on the outer ticks.
    let ((v0, y0), (v1, y1)) = (ticks[0], ticks[ticks.len() - 1]);
    for &(v, y) in &ticks {
        let want = y0 + (v.ln() - v0.ln()) / (v1.ln() - v0.ln()) * (y1 - y0);
        assert!((y - want).abs() < 0.3, "tick {v} at {y}, a log axis puts it at {want:.1}: {ticks:?}");
    }
    assert!(ticks.iter().any(|t| t.0 == 10.0) && ticks.iter().any(|t| t.0 == 4.0), "{ticks:?}");
    // x ticks are token counts with suffixes.
    assert!(svg.contains(">100k<") || svg.contains(">50k<"), "x tick labels should use k suffixes");
}

#[test]
fn linear_flag_gives_evenly_spaced_ticks() {
    let data = plot::load_run(&synthetic_run("plot-linear")).unwrap();
    let svg = plot::render_svg(&data, &PlotOptions { title: "x".into(), linear: true });
    assert!(svg.contains("data-scale=\"linear\""));
    let ticks = y_ticks(&svg);
    assert!(ticks.len() >= 3, "{ticks:?}");
    let gaps: Vec<f64> = ticks.windows(2).map(|w| w[0].1 - w[1].1).collect();
    let steps: Vec<f64> = ticks.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.iter().all(|g| (g - gaps[0]).abs() < 0.3), "pixel gaps {gaps:?}");
    assert!(steps.iter().all(|s| (s - steps[0]).abs() < 1e-9), "value steps {steps:?}");
}

#[test]
fn a_narrow_range_stays_linear() {
    let recs: Vec<Record> = (1..=20).map(|s| train(s, 3.0 + 0.01 * s as f64)).collect();
    let data = RunData::from_records(&recs);
    assert!(plot::render_svg(&data, &PlotOptions::default()).contains("data-scale=\"linear\""));
    assert!(!plot::use_log_scale(3.0, 5.9, false));
    assert!(plot::use_log_scale(3.0, 6.1, false));
    assert!(!plot::use_log_scale(3.0, 11.0, true));
}

#[test]
fn title_names_the_preset_for_a_model_description() {
    let cfg = genesis::model::ModelConfig::preset("genesis-150m").unwrap();
    assert_eq!(plot::model_label(&cfg.to_string(), 152_816_640), "genesis-150m, 152.8M params");
    assert_eq!(plot::model_label("tiny", 123_456), "tiny, 123k params");
    assert_eq!(plot::model_label("3 layers, 12.5M parameters", 1), "3 layers, 12.5M parameters");
}

#[test]
fn tick_helpers_give_round_values() {
    assert_eq!(plot::format_tokens(0.0), "0");
    assert_eq!(plot::format_tokens(750.0), "750");
    assert_eq!(plot::format_tokens(250_000.0), "250k");
    assert_eq!(plot::format_tokens(1_500_000.0), "1.5M");
    assert_eq!(plot::format_tokens(2e9), "2B");
    assert_eq!(plot::format_loss(3.5), "3.5");
    assert_eq!(plot::format_loss(10.0), "10");
    let lin = plot::linear_ticks(0.0, 1.0e6, 8);
    assert_eq!(lin.first(), Some(&0.0));
    assert!(lin.iter().all(|v| (v / 1e5).fract() == 0.0 || (v / 1.25e5).fract() == 0.0), "{lin:?}");
    let log = plot::log_ticks(2.8, 11.5);
    assert!(log.len() >= 4 && log.iter().all(|v| (2.8..=11.5).contains(v)), "{log:?}");
    assert!(log.contains(&3.0) && log.contains(&10.0), "{log:?}");
}

#[test]
fn smoothing_follows_the_data() {
    assert_eq!(plot::moving_average(&[4.0; 10], 3), vec![4.0; 10]);
    let noisy: Vec<f64> = (0..200).map(|i| 5.0 + if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let s = plot::moving_average(&noisy, plot::smoothing_half_width(noisy.len()));
    assert_eq!(s.len(), noisy.len());
    assert!(s[100..190].iter().all(|v| (v - 5.0).abs() < 0.4), "{:?}", &s[100..110]);
    assert_eq!(s[0], noisy[0], "the first step is drawn as it is");
    // A straight line is followed without lag (a centred window).
    let line: Vec<f64> = (0..100).map(|i| 10.0 - 0.05 * i as f64).collect();
    let m = plot::moving_average(&line, 10);
    assert!(m[..90].iter().zip(&line).all(|(a, b)| (a - b).abs() < 1e-9));
    // The end stays smoothed: the last point averages the preceding window.
    assert!((s[199] - 5.0).abs() < 0.4, "{}", s[199]);
}

#[test]
fn long_runs_are_thinned_but_keep_spikes() {
    let pts: Vec<Point> =
        (0..20_000u64).map(|s| Point { step: s, tokens: s * 10, loss: if s == 12_345 { 9.0 } else { 3.0 } }).collect();
    let kept = plot::decimate(&pts);
    assert!(kept.len() <= plot::MAX_RAW_POINTS + 1 && kept.len() > plot::MAX_RAW_POINTS / 2, "{}", kept.len());
    assert!(kept.iter().any(|p| p.loss == 9.0), "the spike must survive thinning");
    assert_eq!(kept.last(), pts.last());
    assert!(kept.windows(2).all(|w| w[0].step < w[1].step));
}

#[test]
fn cli_writes_loss_svg_and_prints_its_path() {
    let dir = synthetic_run("plot-cli");
    let out = genesis(&["plot", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.join("loss.svg");
    assert_eq!(text(&out.stdout).trim(), path.display().to_string());
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.contains("data-scale=\"log\"") && svg.contains("my-run"));

    let custom = dir.join("custom.svg");
    let out = genesis(&["plot", dir.to_str().unwrap(), "--out", custom.to_str().unwrap(), "--linear"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read_to_string(&custom).unwrap().contains("data-scale=\"linear\""));
}

#[test]
fn errors_say_what_to_do() {
    let root = temp_dir("plot-errors");
    let missing = root.join("nope");
    assert_mentions(&err_string(plot::load_run(&missing)), &["does not exist", "genesis train --out"]);

    let empty = root.join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert_mentions(&err_string(plot::load_run(&empty)), &["metrics.jsonl not found", "has not logged"]);

    // A parent of runs: point at them.
    let run = root.join("runs").join("a");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("metrics.jsonl"), serde_json::to_string(&train(1, 5.0)).unwrap() + "\n").unwrap();
    assert_mentions(&err_string(plot::load_run(&root.join("runs"))), &["genesis plot", &run.display().to_string()]);

    // Only a start record: nothing to plot yet.
    let fresh = root.join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    fs::write(fresh.join("metrics.jsonl"), serde_json::to_string(&start(0)).unwrap() + "\n").unwrap();
    assert_mentions(&err_string(plot::load_run(&fresh)), &["no training steps"]);

    let out = genesis(&["plot", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_mentions(&text(&out.stderr), &["has not logged"]);
    assert!(!empty.join("loss.svg").exists());
}

#[test]
fn metrics_file_itself_is_accepted() {
    let dir = synthetic_run("plot-file");
    let file = dir.join("metrics.jsonl");
    assert_eq!(plot::metrics_path(&file), file);
    assert_eq!(plot::run_name(&file), "my-run");
    let (a, b) = (plot::load_run(&file).unwrap(), plot::load_run(&dir).unwrap());
    assert_eq!((a.train, a.val, a.model), (b.train, b.val, b.model));
    assert_eq!(a.skips.len(), b.skips.len());
}
