//! A newcomer's first hour (issue 14), through the binary as a user types it: `genesis train`
//! without --out picks `runs/DATA-MODEL` and resumes there; every hint Genesis prints (`next:`,
//! `Resume with:`, `sample from it:`) runs as printed; `--data d` finds what `prepare --out d` wrote;
//! a parse error names the subcommand's --help; `eval --split test` on a dataset without one says
//! what to do instead; the CPU note comes once, after the arguments are checked; a failed download
//! leaves no empty directories behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{output_text, temp_dir, text};

const CPU_NOTE: &str = "note: running on the CPU (";

/// `genesis ARGS` run in `cwd`, with an empty data root of its own and no network.
fn genesis_in(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genesis"));
    c.current_dir(cwd).env("GENESIS_DATA_DIR", cwd.join("data-root")).env("HF_ENDPOINT", "http://127.0.0.1:9");
    c
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    genesis_in(cwd).args(args).output().unwrap()
}

/// The words of a command as a POSIX shell splits them (plain words, '...' and "..." quoting).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The command after `label` in `output` (`next: genesis train --data d` -> `["train", "--data",
/// "d"]`): the rest of the line, which must start with `genesis `.
fn hint(output: &str, label: &str) -> Vec<String> {
    let line = output.lines().find_map(|l| l.split_once(label).map(|(_, rest)| rest.trim()));
    let line = line.unwrap_or_else(|| panic!("no {label:?} hint in:\n{output}"));
    let words = shell_words(line);
    assert_eq!(words.first().map(String::as_str), Some("genesis"), "the hint is not a genesis command: {line}");
    words[1..].to_vec()
}

fn strs(words: &[String]) -> Vec<&str> {
    words.iter().map(String::as_str).collect()
}

/// Starts `genesis ARGS` in `cwd` and stops it with SIGINT once it has logged to `run_dir/main.log`
/// a step after `after` (a text it must log first, e.g. "resuming from step"); returns everything it
/// printed.
fn interrupt_after_a_step(cwd: &Path, args: &[&str], run_dir: &Path, after: &str) -> String {
    let log = || fs::read_to_string(run_dir.join("main.log")).unwrap_or_default();
    let before = log().len();
    let mut child: Child = genesis_in(cwd).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let new = log().split_off(before);
        if new.find(after).is_some_and(|at| new[at..].contains("| loss ")) {
            break;
        }
        if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("genesis {} logged no step after {after:?}:\n{}", args.join(" "), output_text(&finish(child)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = Command::new("kill").args(["-s", "INT", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -s INT failed");
    let out = finish(child);
    assert!(out.status.success(), "genesis {} after SIGINT: {:?} {}", args.join(" "), out.status, output_text(&out));
    output_text(&out)
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// A small paragraph corpus in `dir/notes.txt`.
fn write_notes(dir: &Path) {
    let corpus: String = (0..80)
        .map(|i| format!("Paragraph {i} talks about the number {} in plain words.\nIt has a second line.\n\n", i * 7))
        .collect();
    fs::write(dir.join("notes.txt"), corpus).unwrap();
}

/// Whether this machine has a GPU `--device auto` takes (then no CPU note is due).
fn auto_is_cpu() -> bool {
    genesis::gpu::device::cuda_available().is_err()
}

#[test]
fn train_without_out_picks_its_run_directory_and_every_hint_runs_as_printed() {
    let dir = temp_dir("first-hour");
    write_notes(&dir);
    // prepare --out d, then its hint: `--data d` finds ./d (not data-root/d).
    let out = run(&dir, &["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--out", "d"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let next = hint(&text(&out.stdout), "next: ");
    assert_eq!(next, ["train", "--data", "d"]);

    // The hint, on the CPU with small batches (the options after it only make it quick), and no
    // --out: the run directory is runs/d-tiny, said first.
    let quick = ["--device", "cpu", "--batch", "2", "--seq", "16", "--eval-batches", "1", "--eval-every", "0"];
    let first: Vec<&str> = [&strs(&next)[..], &quick, &["--steps", "100000"]].concat();
    let run_dir = dir.join("runs").join("d-tiny");
    let said = interrupt_after_a_step(&dir, &first, &run_dir, "==>");
    assert_eq!(
        said.lines().find(|l| l.starts_with("no --out")),
        Some("no --out given: the run directory is runs/d-tiny"),
        "{said}"
    );
    let stderr_first = {
        let out = run(&dir, &["train", "--data", "nothing-here"]);
        text(&out.stderr).lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(stderr_first, "no --out given: the run directory is runs/nothing-here-tiny");
    assert!(!dir.join("runs").join("nothing-here-tiny").exists(), "a run that never started left its directory");
    assert!(said.contains("stopped by SIGINT after step"), "{said}");

    // `Resume with:` as printed resumes runs/d-tiny ...
    let resume = hint(&said, "Resume with: ");
    assert_eq!(resume, ["train", "--out", "runs/d-tiny"]);
    let resumed = interrupt_after_a_step(&dir, &strs(&resume), &run_dir, "resuming from step");
    assert!(resumed.contains("resuming from step"), "{resumed}");
    // ... and so does the first command again: the same command picks the same directory.
    let again = interrupt_after_a_step(&dir, &first, &run_dir, "resuming from step");
    assert!(again.contains("no --out given: the run directory is runs/d-tiny"), "{again}");
    assert!(again.contains("resuming from step"), "{again}");
    let stopped_at: u64 = again
        .lines()
        .find_map(|l| l.split("stopped by SIGINT after step ").nth(1))
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no stop line in {again}"));

    // A finished run's `sample from it:` as printed, on --device auto: the CPU note comes once.
    let steps = (stopped_at + 2).to_string();
    let ended = run(&dir, &[&strs(&resume)[..], &["--steps", &steps]].concat());
    assert!(ended.status.success(), "{}", output_text(&ended));
    let sample = hint(&text(&ended.stdout), "sample from it: ");
    assert_eq!(sample[..2], ["sample", "--checkpoint"]);
    let sampled = run(&dir, &strs(&sample));
    assert!(sampled.status.success(), "{}", output_text(&sampled));
    assert!(text(&sampled.stdout).starts_with("..."), "{}", text(&sampled.stdout));
    let notes = text(&sampled.stderr).matches(CPU_NOTE).count();
    assert_eq!(notes, usize::from(auto_is_cpu()), "{}", text(&sampled.stderr));

    // eval on --device auto: the note once, and not before an error.
    let ckpt = &sample[2];
    let evaluated = run(&dir, &["eval", "--checkpoint", ckpt, "--data", "d", "--seq", "16"]);
    assert!(evaluated.status.success(), "{}", output_text(&evaluated));
    assert_eq!(text(&evaluated.stderr).matches(CPU_NOTE).count(), usize::from(auto_is_cpu()));

    // export's and import's hints, as printed.
    let exported = run(&dir, &["export", "--checkpoint", ckpt, "--out", "export/d"]);
    assert!(exported.status.success(), "{}", output_text(&exported));
    let verify = hint(&text(&exported.stdout), "check a copy with: ");
    assert_eq!(verify, ["verify", "export/d"]);
    let verified = run(&dir, &strs(&verify));
    assert!(verified.status.success(), "{}", output_text(&verified));
    let imported = run(&dir, &["import", "export/d", "--out", "back.ckpt"]);
    assert!(imported.status.success(), "{}", output_text(&imported));
    let sample = hint(&text(&imported.stdout), "sample from it: ");
    let sampled = run(&dir, &strs(&sample));
    assert!(sampled.status.success(), "{}", output_text(&sampled));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_readme_installs_genesis_before_it_uses_it() {
    let root = common::repo_root();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    // The first command block installs it, before any block runs `genesis ...`.
    let first_block = readme.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    assert!(first_block.contains("cargo install --path ."), "the first command block is {first_block:?}");
    let install = readme.find("```sh").unwrap();
    let first_use = readme
        .match_indices('\n')
        .map(|(at, _)| at + 1)
        .find(|&at| readme[at..].starts_with("genesis "))
        .expect("a genesis command in the README");
    assert!(install < first_use, "the README runs genesis before it installs it");
    // What train without --out and the README's export write is not for git.
    let ignored = fs::read_to_string(root.join(".gitignore")).unwrap();
    for dir in ["/runs", "/export"] {
        assert!(ignored.lines().any(|l| l.trim() == dir), ".gitignore lacks {dir}");
    }
}

#[test]
fn a_dataset_directory_in_the_working_directory_wins_over_the_data_root() {
    let dir = temp_dir("first-hour-data");
    write_notes(&dir);
    let root = dir.join("data-root");
    // data-root/d holds a dataset called d; ./d one called local.
    for args in [
        vec!["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "d"],
        vec!["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "local", "--out", "d"],
    ] {
        let out = run(&dir, &args);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    assert!(root.join("d").join("manifest.json").is_file() && dir.join("d").join("manifest.json").is_file());
    let shown = run(&dir, &["data", "inspect", "d", "--tokens", "8"]);
    assert!(text(&shown.stdout).contains("dataset local"), "{}", output_text(&shown));
    // The name still finds the data root from elsewhere, and its hint says which one to use.
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let shown = genesis_in(&elsewhere).env("GENESIS_DATA_DIR", &root).args(["data", "inspect", "d"]).output().unwrap();
    assert!(text(&shown.stdout).contains("dataset d"), "{}", output_text(&shown));
    // Prepared into data-root/d while ./d shadows that name: the hint gives the path instead.
    let again = run(&dir, &["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "d"]);
    let next = hint(&text(&again.stdout), "next: ");
    assert_eq!(next, ["train", "--data", &*root.join("d").display().to_string()]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_parse_error_names_the_subcommand_help() {
    let dir = temp_dir("first-hour-args");
    for (args, help) in [
        (&["train", "--bogus"][..], "Run genesis train --help for more information."),
        (&["--threads", "2", "eval", "--data", "x"], "Run genesis eval --help for more information."),
        (&["bench", "train", "--steps", "many"], "Run genesis bench train --help for more information."),
        (&["data", "inspect"], "Run genesis data inspect --help for more information."),
        (&["frobnicate"], "Run genesis --help for more information."),
        (&[], "Run genesis --help for more information."),
    ] {
        let out = run(&dir, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "genesis {}: {err}", args.join(" "));
        assert_eq!(err.lines().last(), Some(help), "genesis {}:\n{err}", args.join(" "));
        assert_eq!(err.matches("for more information").count(), 1, "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = run(&dir, &["eval"]);
    assert!(text(&out.stderr).starts_with("Required options not provided:\n    --checkpoint"), "{}", text(&out.stderr));
    // --help: the help on stdout, status 0.
    let out = run(&dir, &["train", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("Usage: genesis train"), "{}", text(&out.stdout));
    assert!(out.stderr.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_split_test_without_one_says_what_exists() {
    let dir = temp_dir("first-hour-test-split");
    write_notes(&dir);
    for args in [
        vec!["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "notes"],
        vec!["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "noval", "--val-fraction", "0"],
    ] {
        let out = run(&dir, &args);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    // The data is checked before the model file, so no model is needed to see the message.
    let out = run(&dir, &["eval", "--checkpoint", "missing.ckpt", "--data", "notes", "--split", "test"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    for part in ["has no test split", "(its manifest lists: train, val)", "--split val", "wikitext-103 and wikitext-2"]
    {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    assert!(!err.contains("--val-fraction"), "{err}");
    // Without a val split either: how to get one, then --split val.
    let out = run(&dir, &["eval", "--checkpoint", "missing.ckpt", "--data", "noval", "--split", "test"]);
    let err = text(&out.stderr);
    for part in ["has no test split", "no val split either", "genesis prepare --input", "--force", "--split val"] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    // And the val split that does exist is then what eval reads past the data check.
    let out = run(&dir, &["eval", "--checkpoint", "missing.ckpt", "--data", "notes", "--split", "val"]);
    assert!(text(&out.stderr).contains("missing.ckpt"), "{}", text(&out.stderr));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_cpu_note_before_an_error() {
    let dir = temp_dir("first-hour-note");
    write_notes(&dir);
    let out = run(&dir, &["prepare", "--input", "notes.txt", "--docs", "paragraphs", "--name", "notes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for args in [
        &["eval", "--device", "auto", "--checkpoint", "missing.ckpt", "--data", "notes"][..],
        &["eval", "--device", "auto", "--checkpoint", "missing.ckpt", "--data", "nothing-here"],
        &["sample", "--device", "auto", "--checkpoint", "missing.ckpt"],
        &["sample", "--checkpoint", "missing.ckpt", "--top-p", "2"],
        &["train", "--device", "auto", "--data", "nothing-here", "--out", "run"],
    ] {
        let out = run(&dir, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "genesis {}: {err}", args.join(" "));
        assert!(err.contains("error: "), "{err}");
        assert!(!err.contains(CPU_NOTE), "genesis {}:\n{err}", args.join(" "));
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// The directories under `dir`, relative, sorted.
fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                found.push(p.strip_prefix(dir).unwrap().to_path_buf());
                todo.push(p);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn a_failed_download_leaves_no_empty_directories() {
    let dir = temp_dir("first-hour-offline");
    // Offline (HF_ENDPOINT on a closed port), the first attempt fails ...
    for args in [&["prepare", "wikitext-2"][..], &["train"], &["prepare", "wikitext-103", "--out", "w/103"]] {
        let out = run(&dir, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "genesis {}: {err}", args.join(" "));
        assert!(err.contains("cannot reach 127.0.0.1"), "{err}");
        // ... and leaves nothing: no data-root/wikitext-2/raw/, no data-root/, no runs/, no w/.
        assert_eq!(dirs_under(&dir), Vec::<PathBuf>::new(), "after genesis {}", args.join(" "));
    }
    // `genesis train` alone says first where it will train.
    let out = run(&dir, &["train"]);
    let err = text(&out.stderr);
    assert_eq!(err.lines().next(), Some("no --out given: the run directory is runs/wikitext-103-tiny"), "{err}");
    // A directory that was there before stays.
    fs::create_dir(dir.join("data-root")).unwrap();
    assert_eq!(run(&dir, &["prepare", "wikitext-2"]).status.code(), Some(1));
    assert_eq!(dirs_under(&dir), [PathBuf::from("data-root")]);
    fs::remove_dir_all(&dir).unwrap();
}
