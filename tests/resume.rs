//! Runs that never lose work, on the CPU with the `tiny` model: full checkpoints, resume that is
//! bit-exact, damaged checkpoints, retention, --fresh, the non-finite guard, and (through the
//! binary) SIGKILL at random moments and clean stops on SIGINT/SIGTERM/SIGHUP.

mod common;

use common::{
    assert_same_state, err_string, loss_bits, output_text, paragraph_dataset, shared_file, temp_dir, tiny_run, val_loss,
};
use genesis::checkpoint;
use genesis::model::ModelConfig;
use genesis::rng::Rng;
use genesis::train::metrics::{self, Record};
use genesis::train::rundir::list_checkpoints;
use genesis::train::{checkpoint_path, train, RunConfig, TrainOptions, TrainState};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small dataset: the first 150 kB of tiny Shakespeare, split into paragraphs.
fn dataset(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(shared_file("tinyshakespeare.txt")).unwrap();
    let cut = text[..150_000].rfind("\n\n").unwrap();
    paragraph_dataset(dir, "shakespeare", &text[..cut])
}

fn options(run: RunConfig, out: &Path) -> TrainOptions {
    TrainOptions::new(run, out.to_path_buf())
}

/// Options whose stop flag is already raised (as by SIGTERM): the run does one step, saves and returns.
fn one_step_then_stop(run: RunConfig, out: &Path) -> TrainOptions {
    let mut o = options(run, out);
    o.stop = Some(Arc::new(AtomicUsize::new(15)));
    o
}

fn main_log(out: &Path) -> String {
    fs::read_to_string(out.join("main.log")).unwrap_or_default()
}

#[test]
fn resume_gives_the_same_bits_as_an_unbroken_run() {
    let dir = temp_dir("resume-exact");
    let data = dataset(&dir);
    let straight = train(&options(tiny_run(&data, 10), &dir.join("a"))).unwrap();
    assert_eq!(straight.train_losses.len(), 10);

    // The same run, stopped after steps 1, 2 and 3 (as by a signal), then resumed to the end with a
    // different checkpoint interval (allowed, and logged).
    let b = dir.join("b");
    let mut losses = Vec::new();
    for expect in 1..=3 {
        let s = train(&one_step_then_stop(tiny_run(&data, 10), &b)).unwrap();
        assert_eq!((s.step, s.stopped_by.as_deref()), (expect, Some("SIGTERM")));
        assert_eq!(s.resumed_from, (expect > 1).then_some(expect - 1));
        losses.extend(s.train_losses);
    }
    let mut rest = tiny_run(&data, 10);
    rest.ckpt_every = 4;
    let s = train(&options(rest, &b)).unwrap();
    assert_eq!(s.resumed_from, Some(3));
    losses.extend(s.train_losses);
    assert_eq!(loss_bits(&losses), loss_bits(&straight.train_losses), "losses differ after resuming");
    assert_same_state(&straight.checkpoint, &s.checkpoint);
    let log = main_log(&b);
    assert!(log.contains("resuming from step 3 (768 tokens seen, train loss"), "{log}");
    assert!(log.contains("settings changed on resume: ckpt-every 0 -> 4"), "{log}");

    // metrics.jsonl holds each step once, in order, with the same losses.
    let recs = metrics::read(&b.join("metrics.jsonl")).unwrap();
    let train_steps: Vec<u64> =
        recs.iter().filter_map(|r| if let Record::Train { step, .. } = r { Some(*step) } else { None }).collect();
    assert_eq!(train_steps, (1..=10).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_checkpoint_holds_the_whole_training_state() {
    let dir = temp_dir("resume-state");
    let data = dataset(&dir);
    let s = train(&options(tiny_run(&data, 3), &dir.join("run"))).unwrap();
    let ckpt = checkpoint::load(&s.checkpoint).unwrap();
    let names: Vec<&str> = ckpt.sections.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["params", "adam_m", "adam_v"]);
    let state: TrainState = serde_json::from_value(ckpt.meta).unwrap();
    assert_eq!((state.adam_t, state.tokens, state.skipped), (3, 3 * 2 * 4 * 32, 0));
    assert_eq!(state.run, tiny_run(&data, 3));
    assert_eq!(state.loss.to_bits(), s.train_losses[2].1.to_bits());
    assert_eq!(state.val_loss.map(f64::to_bits), s.val_losses.last().map(|v| v.1.to_bits()));
    assert!(state.loader.position > 0 || state.loader.shard > 0, "loader position not saved: {:?}", state.loader);
    let size = fs::metadata(&s.checkpoint).unwrap().len();
    let want = checkpoint::full_checkpoint_bytes(&ckpt.config);
    assert!(size <= want && want - size < 8192, "full checkpoint is {size} bytes, estimate {want}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used() {
    let dir = temp_dir("resume-damaged");
    let data = dataset(&dir);
    let straight = train(&options(tiny_run(&data, 8), &dir.join("a"))).unwrap();

    let b = dir.join("b");
    let mut cfg = tiny_run(&data, 6);
    cfg.ckpt_every = 2;
    train(&options(cfg, &b)).unwrap();
    let newest = checkpoint_path(&b, 6);
    let mut bytes = fs::read(&newest).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x40;
    fs::write(&newest, bytes).unwrap();
    // A leftover temporary from a killed write is removed too.
    fs::write(b.join("step_00000007.ckpt.tmp"), b"half a checkpoint").unwrap();

    let s = train(&options(tiny_run(&data, 8), &b)).unwrap();
    assert_eq!(s.resumed_from, Some(4));
    let log = main_log(&b);
    assert!(log.contains("step_00000006.ckpt is damaged") && log.contains("section 'adam_v'"), "{log}");
    assert!(log.contains("removed step_00000007.ckpt.tmp"), "{log}");
    assert!(b.join("step_00000006.ckpt.corrupt").exists());
    assert!(!b.join("step_00000007.ckpt.tmp").exists());
    assert_eq!(loss_bits(&s.train_losses), loss_bits(&straight.train_losses[4..]));
    assert_same_state(&straight.checkpoint, &s.checkpoint);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn changing_the_model_or_sequence_on_resume_is_an_error_and_fresh_starts_over() {
    let dir = temp_dir("resume-refuse");
    let data = dataset(&dir);
    let out = dir.join("run");
    train(&options(tiny_run(&data, 2), &out)).unwrap();

    let mut wider = tiny_run(&data, 4);
    wider.model.channels = 128;
    let e = err_string(train(&options(wider.clone(), &out)));
    assert!(e.contains("different model") && e.contains("--fresh"), "{e}");
    let mut longer = tiny_run(&data, 4);
    longer.seq = 16;
    let e = err_string(train(&options(longer, &out)));
    assert!(e.contains("--seq 32") && e.contains("--seq 16"), "{e}");

    let mut fresh = options(wider, &out);
    fresh.fresh = true;
    let s = train(&fresh).unwrap();
    assert_eq!((s.resumed_from, s.step), (None, 4));
    assert!(out.join("previous-1").join("step_00000002.ckpt").exists(), "--fresh must keep the old run aside");
    assert!(main_log(&out).contains("--fresh: moved the earlier run"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keeps_the_newest_checkpoints_and_the_best() {
    let dir = temp_dir("resume-keep");
    let data = dataset(&dir);
    let out = dir.join("run");
    let mut cfg = tiny_run(&data, 12);
    cfg.ckpt_every = 1;
    cfg.keep = 2;
    // A learning rate high enough that validation loss rises again after a few steps.
    cfg.lr = 0.05;
    cfg.warmup = 1;
    let s = train(&options(cfg, &out)).unwrap();
    let best = s.val_losses.iter().filter(|v| v.0 > 0).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    assert_eq!(s.best.map(|b| b.0), Some(best));
    let mut want = vec![12, 11];
    if best < 11 {
        want.push(best);
    }
    let kept: Vec<u64> = list_checkpoints(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(kept, want, "val losses {:?}", s.val_losses);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_steps_are_skipped_and_never_saved() {
    let dir = temp_dir("resume-nan");
    let data = dataset(&dir);
    let mut o = options(tiny_run(&data, 6), &dir.join("a"));
    o.poison_steps = vec![3];
    let s = train(&o).unwrap();
    let steps: Vec<u64> = s.train_losses.iter().map(|l| l.0).collect();
    assert_eq!(steps, [1, 2, 4, 5, 6]);
    let ckpt = checkpoint::load(&s.checkpoint).unwrap();
    let state: TrainState = serde_json::from_value(ckpt.meta.clone()).unwrap();
    assert_eq!((state.adam_t, state.skipped), (5, 1));
    assert!(ckpt.params().iter().all(|p| p.is_finite()));
    let recs = metrics::read(&dir.join("a").join("metrics.jsonl")).unwrap();
    assert!(recs.iter().any(|r| matches!(r, Record::Skip { step: 3, .. })), "{recs:?}");
    assert!(main_log(&dir.join("a")).contains("not finite: update skipped"));

    // Several in a row stop the run and name the last good checkpoint.
    let mut cfg = tiny_run(&data, 20);
    cfg.ckpt_every = 2;
    let mut o = options(cfg, &dir.join("b"));
    o.poison_steps = (5..=20).collect();
    o.max_bad_steps = 3;
    let e = err_string(train(&o));
    assert!(e.contains("3 steps in a row") && e.contains("step_00000006.ckpt") && e.contains("--lr"), "{e}");
    let kept: Vec<u64> = list_checkpoints(&dir.join("b")).into_iter().map(|c| c.0).collect();
    assert_eq!(kept, [6, 4, 2]);
    // Steps 5 and 6 were skipped, so the step-6 checkpoint holds step 4's weights.
    let (p4, p6) = (checkpoint_path(&dir.join("b"), 4), checkpoint_path(&dir.join("b"), 6));
    let (w4, w6) = (checkpoint::load_params(&p4).unwrap().1, checkpoint::load_params(&p6).unwrap().1);
    assert!(w4.iter().zip(&w6).all(|(a, b)| a.to_bits() == b.to_bits()));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_to_write_non_finite_values() {
    let dir = temp_dir("resume-refuse-nan");
    let cfg = ModelConfig::preset("tiny").unwrap();
    let mut params = genesis::cpu::gpt::init_params(&cfg, 1);
    params[17] = f32::NAN;
    let path = dir.join("x.ckpt");
    let e = err_string(checkpoint::write(&path, &cfg, 1, &serde_json::Value::Null, &[("params", &params)]));
    assert!(e.contains("non-finite") && e.contains("index 17"), "{e}");
    assert!(!path.exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// Infinities are refused as NaN is, in any section (a checkpoint must reload to finite weights).
#[test]
fn refuses_to_write_infinities() {
    let dir = temp_dir("resume-refuse-inf");
    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = genesis::cpu::gpt::init_params(&cfg, 1);
    let path = dir.join("x.ckpt");
    for (section, bad) in [("params", f32::INFINITY), ("adam_v", f32::NEG_INFINITY)] {
        let (mut p, mut v) = (params.clone(), vec![0.5f32; params.len()]);
        if section == "params" {
            p[23] = bad;
        } else {
            v[23] = bad;
        }
        let e =
            err_string(checkpoint::write(&path, &cfg, 1, &serde_json::Value::Null, &[("params", &p), ("adam_v", &v)]));
        assert!(e.contains("non-finite") && e.contains(&format!("'{section}'")) && e.contains("index 23"), "{e}");
        assert!(!path.exists());
    }
    fs::remove_dir_all(&dir).unwrap();
}

// ---- through the binary -----------------------------------------------------------------------

const CLI_STEPS: &str = "24";

fn spawn_train(data: &Path, out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(["--threads", "1", "train", "--model", "tiny", "--batch", "4", "--seq", "32", "--eval-batches", "1"])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), output_text(&out))
}

#[test]
fn sigkill_at_random_moments_always_resumes_to_the_same_result() {
    let dir = temp_dir("resume-kill");
    let data = dataset(&dir);
    let args = ["--steps", CLI_STEPS, "--ckpt-every", "1", "--eval-every", "0"];
    let (code, text) = finish(spawn_train(&data, &dir.join("straight"), &args));
    assert_eq!(code, 0, "{text}");

    let out = dir.join("killed");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = Rng::new(seed);
    let mut kills = 0;
    for attempt in 0..40 {
        let mut child = spawn_train(&data, &out, &args);
        if attempt >= 6 {
            let (code, text) = finish(child);
            assert_eq!(code, 0, "seed {seed}: final resume failed\n{text}");
            break;
        }
        // Kill at a random moment: during start-up, a step, or a checkpoint write.
        let delay = Duration::from_millis(50 + rng.below(1200));
        let t0 = Instant::now();
        while t0.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let (_, text) = finish(child);
        assert!(!text.contains("error"), "seed {seed}, attempt {attempt}: {text}");
        // Whatever was killed, the newest checkpoint on disk is whole.
        if let Some((_, newest)) = list_checkpoints(&out).first() {
            checkpoint::verify(newest).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        }
    }
    assert!(kills > 0, "seed {seed}: no run was still going when killed");
    let final_ckpt = checkpoint_path(&out, 24);
    assert_same_state(&checkpoint_path(&dir.join("straight"), 24), &final_ckpt);
    let losses = |run: &str| -> Vec<(u64, u64)> {
        metrics::read(&dir.join(run).join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter_map(|r| if let Record::Train { step, loss, .. } = r { Some((step, loss.to_bits())) } else { None })
            .collect()
    };
    assert_eq!(losses("straight"), losses("killed"), "seed {seed}: logged losses differ");
    fs::remove_dir_all(&dir).unwrap();
}

/// Waits until the run has logged a completed step.
fn wait_for_a_step(out: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !main_log(out).contains("| loss ") {
        assert!(child.try_wait().unwrap().is_none(), "training exited before its first step");
        assert!(t0.elapsed() < Duration::from_secs(60), "no step logged within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(child: &Child, signal: &str) {
    let ok = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -s {signal} failed");
}

#[test]
fn signals_finish_the_step_checkpoint_and_exit_cleanly() {
    let dir = temp_dir("resume-signals");
    let data = dataset(&dir);
    for signal in ["TERM", "HUP", "INT"] {
        let out = dir.join(signal);
        let mut child = spawn_train(&data, &out, &["--steps", "100000", "--eval-every", "0"]);
        wait_for_a_step(&out, &mut child);
        send(&child, signal);
        let (code, text) = finish(child);
        assert_eq!(code, 0, "SIG{signal}: {text}");
        assert!(text.contains(&format!("stopped by SIG{signal} after step")), "{text}");
        assert!(text.contains(&format!("Resume with: genesis train --out {}", out.display())), "{text}");
        let (step, path) = list_checkpoints(&out).into_iter().next().expect("no checkpoint written on stop");
        assert!(step >= 1);
        checkpoint::verify(&path).unwrap();
        // And the run resumes from there.
        let (code, text) = finish(spawn_train(&data, &out, &["--steps", &(step + 1).to_string()]));
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(&format!("resuming from step {step} ")), "{text}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_sigint_exits_at_once() {
    let dir = temp_dir("resume-double-int");
    let data = dataset(&dir);
    let out = dir.join("run");
    // Big steps (about a second each on one thread), so both signals land inside one step.
    let mut child = Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(["--threads", "1", "train", "--model", "tiny", "--batch", "16", "--seq", "64", "--grad-accum", "2"])
        .args(["--steps", "1000", "--eval-every", "0", "--eval-batches", "1"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_step(&out, &mut child);
    send(&child, "INT");
    std::thread::sleep(Duration::from_millis(20));
    send(&child, "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a second SIGINT must exit at once with 130");
    assert!(list_checkpoints(&out).is_empty(), "it must not have finished the step and saved");
    // It says so, and where the run resumes.
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let said = format!(
        "second signal: stopped at once; no checkpoint was written for the current step. The newest checkpoint \
         in {} (if any) is where it resumes: genesis train --out {}",
        out.display(),
        out.display()
    );
    assert!(err.contains(&said), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokens_per_step_sets_batch_and_accumulation() {
    let dir = temp_dir("resume-tps");
    let data = dataset(&dir);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_genesis"))
            .args(["train", "--device", "cpu", "--model", "tiny", "--seq", "32", "--steps", "1", "--eval-batches", "1"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.join("run"))
            .args(extra)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    // On the CPU: 8 sequences of 32, accumulated 4 times to reach at least 1000 tokens.
    let (ok, text) = run(&["--tokens-per-step", "1000", "--fresh"]);
    assert!(ok, "{text}");
    assert!(text.contains("batch 8 x seq 32 x accum 4 = 1024 tokens/step"), "{text}");
    let (ok, text) = run(&["--tokens-per-step", "1000", "--batch", "2", "--fresh"]);
    assert!(!ok && text.contains("--tokens-per-step 1000 chooses --batch and --grad-accum"), "{text}");
    // --precision is checked, and on the CPU bf16 says it does not apply.
    let (ok, text) = run(&["--precision", "fp8", "--fresh"]);
    assert!(!ok && text.contains("'--precision' with value 'fp8': expected auto, fp32 or bf16"), "{text}");
    let (ok, text) = run(&["--precision", "bf16", "--fresh"]);
    assert!(ok && text.contains("--precision bf16 applies to GPU training; the CPU trains in f32"), "{text}");
    // So is --sync, which the CPU notes and ignores.
    let (ok, text) = run(&["--sync", "async", "--fresh"]);
    assert!(!ok && text.contains("'--sync' with value 'async': expected micro, step or graph"), "{text}");
    let (ok, text) = run(&["--sync", "step", "--fresh"]);
    assert!(ok && text.contains("--sync step applies to GPU training"), "{text}");
    // And --gelu-fusion: off (the default) says nothing; forward and both are noted on the CPU.
    assert!(!text.contains("--gelu-fusion"), "{text}");
    let (ok, text) = run(&["--gelu-fusion", "fused", "--fresh"]);
    assert!(!ok && text.contains("'--gelu-fusion' with value 'fused': expected off, forward or both"), "{text}");
    for fusion in ["forward", "both"] {
        let (ok, text) = run(&["--gelu-fusion", fusion, "--fresh"]);
        let note = format!("note: --gelu-fusion {fusion} applies to GPU training; the CPU has one GELU");
        assert!(ok && text.contains(&note), "{text}");
        // And --bias-grad: reduce (the default) says nothing; epilogue is noted on the CPU.
        assert!(!text.contains("--bias-grad"), "{text}");
    }
    let (ok, text) = run(&["--bias-grad", "bgradb", "--fresh"]);
    assert!(!ok && text.contains("'--bias-grad' with value 'bgradb': expected reduce or epilogue"), "{text}");
    let (ok, text) = run(&["--bias-grad", "reduce", "--fresh"]);
    assert!(ok && !text.contains("--bias-grad"), "{text}");
    let (ok, text) = run(&["--bias-grad", "epilogue", "--gelu-fusion", "both", "--fresh"]);
    let note = "note: --bias-grad epilogue applies to GPU training; the CPU sums the bias gradients itself";
    assert!(ok && text.contains(note) && text.contains("--gelu-fusion both applies to GPU training"), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_from_starts_from_the_given_weights() {
    let dir = temp_dir("resume-init");
    let data = dataset(&dir);
    // Weights trained a little, saved as an llm.c file (any model file works through weights::load).
    let first = train(&options(tiny_run(&data, 3), &dir.join("a"))).unwrap();
    let trained = checkpoint::load(&first.checkpoint).unwrap();
    let bin = dir.join("start.bin");
    genesis::llmc::write_model(&bin, &trained.config, trained.params()).unwrap();

    let mut cfg = tiny_run(&data, 2);
    cfg.init_from = Some(bin.clone());
    let s = train(&options(cfg.clone(), &dir.join("b"))).unwrap();
    // The step-0 validation loss is the given weights', not a fresh init's.
    let want = val_loss(&cfg, trained.params());
    assert_eq!(s.val_losses[0].1.to_bits(), want.to_bits(), "step 0 did not start from {}", bin.display());
    assert!(main_log(&dir.join("b")).contains("initial weights:"));

    // Weights of another shape are refused, naming the file.
    cfg.model.channels = 128;
    let e = err_string(train(&options(cfg, &dir.join("c"))));
    assert!(e.contains("--init-from") && e.contains("start.bin"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

/// The learning rate each step logs is the schedule's at that step (0-based: step 1 uses `at(0)`),
/// through the warmup, the decay and a resume.
#[test]
fn each_step_logs_the_scheduled_learning_rate() {
    use genesis::train::schedule::LrSchedule;
    let dir = temp_dir("resume-lr");
    let data = dataset(&dir);
    let out = dir.join("run");
    let mut cfg = tiny_run(&data, 9);
    cfg.warmup = 3;
    cfg.eval_every = 0;
    train(&one_step_then_stop(cfg.clone(), &out)).unwrap();
    train(&options(cfg.clone(), &out)).unwrap();
    let sched = LrSchedule { max_lr: cfg.lr, min_lr: cfg.lr * cfg.min_lr_frac, warmup: cfg.warmup, total: cfg.steps };
    let text = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let logged: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| match serde_json::from_str::<Record>(l).unwrap() {
            Record::Train { step, lr, .. } => Some((step, lr)),
            _ => None,
        })
        .collect();
    assert_eq!(logged.iter().map(|x| x.0).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    for (step, lr) in logged {
        assert_eq!(
            lr.to_bits(),
            sched.at(step - 1).to_bits(),
            "step {step}: lr {lr:e}, schedule {:e}",
            sched.at(step - 1)
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// A run that diverges on resume (a learning rate of 1e30) keeps its sound checkpoints: the
/// diverged ones never push them out of `--keep`, and the one recommended is sound.
#[test]
fn a_diverged_resume_never_costs_the_sound_checkpoints() {
    let dir = temp_dir("resume-diverged");
    let data = dataset(&dir);
    let out = dir.join("run");
    let mut cfg = tiny_run(&data, 4);
    cfg.ckpt_every = 1;
    cfg.keep = 2;
    train(&options(cfg.clone(), &out)).unwrap();
    cfg.steps = 10;
    cfg.lr = 1e30;
    let mut o = options(cfg, &out);
    o.max_bad_steps = 100;
    let s = train(&o).unwrap();
    assert!(s.val_losses.iter().all(|v| !v.1.is_finite()), "the run did not diverge: {:?}", s.val_losses);
    // The two newest sound checkpoints stay beside the two newest diverged ones.
    let kept: Vec<u64> = list_checkpoints(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(kept, vec![10, 9, 4, 3], "{}", main_log(&out));
    assert_eq!(s.recommended.as_deref(), Some(checkpoint_path(&out, 4).as_path()));
    assert!(main_log(&out).contains("its validation loss is not finite"));
    fs::remove_dir_all(&dir).unwrap();
}

/// `genesis train ARGS` on the CPU, with no network and an empty data root (so a run that wrongly
/// falls back to wikitext-103 fails), in `cwd` when given.
fn genesis_train(dir: &Path, cwd: Option<&Path>, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genesis"));
    c.args(["--threads", "1", "train", "--device", "cpu"])
        .args(args)
        .env("GENESIS_DATA_DIR", dir.join("no-data-here"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9");
    if let Some(cwd) = cwd {
        c.current_dir(cwd);
    }
    let out = c.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The settings stored in `out`'s newest checkpoint.
fn stored_run(out: &Path) -> RunConfig {
    let (_, newest) = list_checkpoints(out).into_iter().next().expect("a checkpoint");
    serde_json::from_value::<TrainState>(checkpoint::load(&newest).unwrap().meta).unwrap().run
}

#[test]
fn a_run_without_a_whole_checkpoint_resumes_with_its_own_settings_or_refuses() {
    let dir = temp_dir("resume-runjson");
    let data = dataset(&dir);
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    // Killed before its first checkpoint: run.json holds the settings.
    let mut child = spawn_train(&data, &out, &["--steps", "100000", "--ckpt-every", "0", "--eval-every", "0"]);
    wait_for_a_step(&out, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(list_checkpoints(&out).is_empty());
    let saved: RunConfig = serde_json::from_slice(&fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!((saved.batch, saved.seq, saved.data.clone()), (4, 32, data.canonicalize().unwrap()));

    // `genesis train --out RUN` trains that run (its data, batch and sequence), not wikitext-103.
    let (ok, text) = genesis_train(&dir, None, &["--out", o, "--steps", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("batch 4 x seq 32 x accum 1") && !text.contains("wikitext"), "{text}");
    assert_eq!(stored_run(&out).data, data.canonicalize().unwrap());

    // Every checkpoint damaged: the run's own settings, and the checkpoint problem, are what it says.
    let ckpt = checkpoint_path(&out, 2);
    fs::write(&ckpt, vec![0u8; 4096]).unwrap();
    let (ok, text) = genesis_train(&dir, None, &["--out", o, "--steps", "4"]);
    assert!(!ok && text.contains("none of the 1 checkpoints") && text.contains("--fresh"), "{text}");
    assert!(!text.contains("wikitext"), "{text}");

    // And with no settings to read at all, it refuses rather than start something else, and what it
    // says to do works.
    fs::remove_file(out.join("run.json")).unwrap();
    let (ok, text) = genesis_train(&dir, None, &["--out", o, "--steps", "4"]);
    let want = format!(
        "error: {o} holds a run, but its settings cannot be read (no whole checkpoint, no readable run.json), so \
         resuming it could start a different run; start it over with --fresh and its --model and --data (its 1 \
         damaged checkpoint(s) and other files move to {o}/previous-N/)"
    );
    assert!(!ok && text.contains(&want), "{text}");
    let d = data.to_str().unwrap();
    let (ok, text) =
        genesis_train(&dir, None, &["--out", o, "--steps", "1", "--fresh", "--model", "tiny", "--data", d]);
    assert!(ok && out.join("previous-1").join("step_00000002.ckpt").exists(), "{text}");

    // No checkpoint at all (an older run killed before its first one, without run.json).
    fs::remove_file(out.join("run.json")).unwrap();
    fs::remove_file(checkpoint_path(&out, 1)).unwrap();
    let (ok, text) = genesis_train(&dir, None, &["--out", o, "--steps", "1"]);
    let want = format!(
        "error: {o} holds a run, but its settings cannot be read (no whole checkpoint, no readable run.json), so \
         resuming it could start a different run; give its --model and --data to train it again from step 0, or \
         add --fresh to move its files to {o}/previous-N/ first"
    );
    assert!(!ok && text.contains(&want), "{text}");
    let (ok, text) = genesis_train(&dir, None, &["--out", o, "--steps", "1", "--model", "tiny", "--data", d]);
    assert!(ok && !text.contains("resuming"), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Whether the log says the data changed on resume.
fn data_changed(log: &str) -> bool {
    log.lines().any(|l| l.starts_with("settings changed on resume") && l.contains("data"))
}

#[test]
fn a_run_resumes_from_any_working_directory() {
    let dir = temp_dir("resume-cwd");
    let data = dataset(&dir);
    let args = ["--model", "tiny", "--batch", "4", "--seq", "32", "--eval-batches", "1", "--eval-every", "0"];
    let (ok, text) =
        genesis_train(&dir, Some(&dir), &[&args[..], &["--data", "./data", "--out", "run", "--steps", "1"]].concat());
    assert!(ok, "{text}");
    let out = dir.join("run");
    // The checkpoint stores where the data is; the log shows it as given.
    assert_eq!(stored_run(&out).data, data.canonicalize().unwrap());
    assert!(main_log(&out).contains("data: ./data ("), "{}", main_log(&out));

    // From another directory, `--out` alone finds the data.
    let elsewhere = dir.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let (ok, text) = genesis_train(&dir, Some(&elsewhere), &["--out", "../run", "--steps", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("resuming from step 1 ") && !data_changed(&text), "{text}");

    // A run saved before paths were resolved holds `--data` as given; it still resumes from where
    // it was given (and the path, now resolved, is no change of data).
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = PathBuf::from(format!("{up}{}", data.display().to_string().trim_start_matches('/')));
    assert!(relative.is_relative() && relative.join("manifest.json").is_file(), "{}", relative.display());
    let old = dir.join("old");
    train(&options(tiny_run(&relative, 1), &old)).unwrap();
    assert_eq!(stored_run(&old).data, relative);
    let (ok, text) = genesis_train(&dir, Some(&cwd), &["--out", old.to_str().unwrap(), "--steps", "2"]);
    assert!(ok, "{text}");
    assert!(text.contains("resuming from step 1 ") && !data_changed(&text), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_error_that_stops_train_goes_to_main_log_too() {
    let dir = temp_dir("resume-error-log");
    let data = dataset(&dir);
    let out = dir.join("run");
    // A directory where the checkpoint's temporary file goes: the write fails, as on a full disk.
    fs::create_dir_all(out.join("step_00000001.ckpt.tmp")).unwrap();
    let (code, text) = finish(spawn_train(&data, &out, &["--steps", "1"]));
    assert_eq!(code, 1, "{text}");
    let printed = text.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error in {text}"));
    assert!(printed.contains("step_00000001.ckpt.tmp"), "{printed}");
    let log = main_log(&out);
    assert_eq!(log.lines().last(), Some(printed), "main.log does not end with the error:\n{log}");
    fs::remove_dir_all(&dir).unwrap();
}

/// `metrics.jsonl` without what legitimately differs between two runs of the same steps: the start
/// records and the timing fields.
fn without_timings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("{\"kind\":\"start\""))
        .map(|l| {
            let mut l = l.to_string();
            for field in ["tokens_per_sec", "mfu", "elapsed_s"] {
                let key = format!(",\"{field}\":");
                if let Some(at) = l.find(&key) {
                    let end = l[at + 1..].find([',', '}']).map_or(l.len(), |e| at + 1 + e);
                    l.replace_range(at..end, "");
                }
            }
            l
        })
        .collect()
}

#[test]
fn resumed_metrics_equal_an_unbroken_run_byte_for_byte_but_for_timings() {
    let dir = temp_dir("resume-metrics");
    let data = dataset(&dir);
    let mut cfg = tiny_run(&data, 8);
    cfg.eval_every = 3;
    train(&options(cfg.clone(), &dir.join("a"))).unwrap();
    let straight = fs::read_to_string(dir.join("a").join("metrics.jsonl")).unwrap();

    let b = dir.join("b");
    let metrics_b = b.join("metrics.jsonl");
    for _ in 0..2 {
        train(&one_step_then_stop(cfg.clone(), &b)).unwrap();
    }
    // A line that is no record (kept and reported), and a record torn by a kill after the
    // checkpoint (dropped with the steps trained again).
    let before = fs::read_to_string(&metrics_b).unwrap();
    let lines: Vec<&str> = before.lines().collect();
    let junk = "this line is not a record";
    let mut damaged = format!("{}\n{junk}\n{}\n", lines[..2].join("\n"), lines[2..].join("\n"));
    damaged.push_str("{\"kind\":\"train\",\"step\":3,\"tok");
    fs::write(&metrics_b, &damaged).unwrap();
    let kept = &damaged[..damaged.rfind('\n').unwrap() + 1];
    train(&options(cfg, &b)).unwrap();
    let resumed = fs::read_to_string(&metrics_b).unwrap();
    assert!(resumed.starts_with(kept), "the kept part was rewritten:\n{kept}\n---\n{resumed}");
    let log = main_log(&b);
    assert!(log.contains("metrics.jsonl: line 3 is not a metrics record; kept as it is"), "{log}");
    assert!(log.contains("metrics.jsonl: removed 1 line(s) after step 2, which is trained again"), "{log}");

    let resumed: Vec<String> = without_timings(&resumed).into_iter().filter(|l| l != junk).collect();
    assert_eq!(resumed, without_timings(&straight));
    fs::remove_dir_all(&dir).unwrap();
}
