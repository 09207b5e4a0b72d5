//! One writer per directory: a second `genesis prepare` or `genesis train` on a directory another
//! process is using refuses at once and names it; a lock left by a killed process never blocks; the
//! lock file disturbs nothing that lists the directory.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{shared_file, temp_dir};
use genesis::data::manifest::{JOURNAL_FILE, MANIFEST_FILE};
use genesis::train::rundir::list_checkpoints;
use genesis::util::{DirLock, LOCK_FILE};

fn genesis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genesis"));
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a second process must say, word for word.
fn in_use(dir: &Path, what: &str, pid: u32) -> String {
    format!(
        "error: {} is in use by another {what} (pid {pid}); wait for it to finish or use another --out",
        dir.display()
    )
}

/// A text of 60 paragraphs.
fn corpus(dir: &Path) -> PathBuf {
    let text: String = (0..60).map(|i| format!("Paragraph {i} says something about {}.\n\n", i * 3)).collect();
    let path = dir.join("notes.txt");
    fs::write(&path, text).unwrap();
    path
}

fn prepare_cmd(input: &Path, out: &Path) -> Command {
    let mut c = genesis();
    c.args(["prepare", "--docs", "paragraphs", "--input"]).arg(input).arg("--out").arg(out);
    c
}

#[test]
fn a_second_prepare_refuses_at_once_while_the_first_holds_the_directory() {
    let dir = temp_dir("lock-prepare");
    let input = corpus(&dir);
    let out = dir.join("x");
    fs::create_dir_all(&out).unwrap();
    let held = DirLock::acquire(&out, "genesis prepare").unwrap();
    let t0 = Instant::now();
    let o = prepare_cmd(&input, &out).output().unwrap();
    assert!(!o.status.success());
    assert_eq!(stderr(&o).trim_end(), in_use(&out, "genesis prepare", std::process::id()));
    assert!(t0.elapsed() < Duration::from_secs(20), "refusing took {:?}", t0.elapsed());
    assert!(!out.join(MANIFEST_FILE).exists() && !out.join(JOURNAL_FILE).exists(), "it must not have written");

    // Released: it runs, and leaves no lock file behind.
    drop(held);
    let o = prepare_cmd(&input, &out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join(MANIFEST_FILE).is_file() && !out.join(LOCK_FILE).exists());

    // A stale lock file (its process gone) changes nothing: the same command has nothing to do.
    fs::write(out.join(LOCK_FILE), "999999999 genesis prepare\n").unwrap();
    let o = prepare_cmd(&input, &out).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"), "{}", stderr(&o));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_prepare_processes_on_one_directory_and_a_killed_holder() {
    let dir = temp_dir("lock-prepare-two");
    let text = fs::read(shared_file("wikitext-test.raw")).unwrap();
    let input = dir.join("corpus.raw");
    fs::write(&input, text.repeat(6)).unwrap();
    let out = dir.join("x");
    let prepare = || {
        let mut c = genesis();
        c.args(["--threads", "1", "prepare", "--docs", "wikitext", "--shard-tokens", "50000", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .env("GENESIS_PREPARE_BATCH_BYTES", "65536");
        c
    };
    let mut first = prepare().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !out.join(JOURNAL_FILE).exists() {
        assert!(first.try_wait().unwrap().is_none(), "the first prepare finished before it could be interrupted");
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = prepare().output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(still_running, "the first prepare ended before the second one was refused; make the corpus bigger");
    assert!(!second.status.success());
    assert_eq!(stderr(&second).trim_end(), in_use(&out, "genesis prepare", first.id()));

    // The killed process's lock file is still there, and blocks nothing: the run finishes.
    assert!(out.join(LOCK_FILE).exists());
    let o = prepare().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(resumed)"));
    assert!(!out.join(LOCK_FILE).exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// A prepared dataset (through the binary) for the train tests.
fn dataset(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(shared_file("tinyshakespeare.txt")).unwrap();
    let cut = text[..150_000].rfind("\n\n").unwrap();
    let src = dir.join("shakespeare.txt");
    fs::write(&src, &text[..cut]).unwrap();
    let data = dir.join("data");
    let o = prepare_cmd(&src, &data).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    data
}

fn train_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = genesis();
    c.args(["--threads", "1", "train", "--device", "cpu", "--model", "tiny", "--batch", "4", "--seq", "32"])
        .args(["--eval-batches", "1", "--eval-every", "0", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn wait_for_a_step(out: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !fs::read_to_string(out.join("main.log")).unwrap_or_default().contains("| loss ") {
        assert!(child.try_wait().unwrap().is_none(), "training exited before its first step");
        assert!(t0.elapsed() < Duration::from_secs(60), "no step logged within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_train_refuses_at_once_and_a_killed_holder_never_blocks() {
    let dir = temp_dir("lock-train");
    let data = dataset(&dir);
    let out = dir.join("run");

    // Held by this process: refused before anything is written.
    fs::create_dir_all(&out).unwrap();
    let held = DirLock::acquire(&out, "genesis train").unwrap();
    let o = train_cmd(&data, &out, &["--steps", "1"]).output().unwrap();
    assert!(!o.status.success());
    assert_eq!(stderr(&o).trim_end(), in_use(&out, "genesis train", std::process::id()));
    let names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, [LOCK_FILE], "the refused run must not write into the directory");
    drop(held);

    // Two real processes: the first trains (and checkpoints nothing yet), the second is refused.
    let mut first = train_cmd(&data, &out, &["--steps", "100000", "--ckpt-every", "0"]).spawn().unwrap();
    wait_for_a_step(&out, &mut first);
    let t0 = Instant::now();
    let second = train_cmd(&data, &out, &["--steps", "3"]).output().unwrap();
    assert!(first.try_wait().unwrap().is_none(), "the first run must still be going");
    assert!(!second.status.success());
    assert_eq!(stderr(&second).trim_end(), in_use(&out, "genesis train", first.id()));
    assert!(t0.elapsed() < Duration::from_secs(20), "refusing took {:?}", t0.elapsed());
    let log = fs::read_to_string(out.join("main.log")).unwrap();
    assert!(!log.contains("in use by another"), "the refused run wrote to the first one's log:\n{log}");

    // SIGKILL leaves the lock file, which blocks nothing: --fresh moves the run aside (but not the
    // lock file) and trains.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(out.join(LOCK_FILE).exists());
    let o = train_cmd(&data, &out, &["--steps", "2", "--fresh"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let previous = out.join("previous-1");
    assert!(previous.join("main.log").is_file() && previous.join("run.json").is_file());
    assert!(!previous.join(LOCK_FILE).exists());
    assert_eq!(list_checkpoints(&out).first().map(|c| c.0), Some(2));
    assert!(!out.join(LOCK_FILE).exists());
    fs::remove_dir_all(&dir).unwrap();
}
