//! The `genesis` binary: where prepare writes, where train looks, and what it says when data is
//! missing; `genesis data inspect`.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use common::{temp_dir, text};

/// Runs `genesis ARGS` with `data_root` as the data directory and no network (an HF endpoint on a
/// closed local port).
fn genesis(data_root: &Path, args: &[&str]) -> Output {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(args)
        .env("GENESIS_DATA_DIR", data_root)
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap()
}

#[test]
fn prepare_writes_where_train_and_inspect_look() {
    let dir = temp_dir("cli-prepare");
    let root = dir.join("data");
    let corpus: String = (0..60)
        .map(|i| format!("Paragraph {i} talks about the number {} in plain words.\nIt has a second line.\n\n", i * 7))
        .collect();
    fs::write(dir.join("notes.txt"), &corpus).unwrap();
    let input = dir.join("notes.txt").display().to_string();

    let out = genesis(&root, &["prepare", "--input", &input, "--docs", "paragraphs", "--name", "notes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("next: genesis train --data notes"), "{stdout}");
    assert!(root.join("notes").join("manifest.json").is_file());
    assert!(root.join("notes").join("train_000000.bin").is_file());

    // The same command again does nothing.
    let again = genesis(&root, &["prepare", "--input", &input, "--docs", "paragraphs", "--name", "notes"]);
    assert!(text(&again.stdout).contains("nothing to do"), "{}", text(&again.stdout));

    let inspect = genesis(&root, &["data", "inspect", "notes", "--seed", "3", "--tokens", "40"]);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    let shown = text(&inspect.stdout);
    for part in ["dataset notes", "tokenizer  gpt2", "train", "val", "documents", "notes.txt", "40 tokens of train"] {
        assert!(shown.contains(part), "inspect output lacks {part:?}:\n{shown}");
    }
    // The decoded window is real text from the corpus (between end-of-text markers).
    let window = shown.split("(--seed 3):\n\n").nth(1).unwrap().trim_end_matches('\n');
    for part in window.split("<|endoftext|>").filter(|p| !p.is_empty()) {
        assert!(corpus.contains(part), "decoded {part:?} is not in the corpus");
    }
    assert!(window.len() > 100, "window too short: {window:?}");

    // --verify hashes every shard; one flipped byte is caught and named.
    let ok = genesis(&root, &["data", "inspect", "notes", "--verify"]);
    assert!(text(&ok.stdout).contains("every shard's sha256 matches"), "{}", text(&ok.stderr));
    let val = root.join("notes").join("val_000000.bin");
    let mut bytes = fs::read(&val).unwrap();
    bytes[1030] ^= 1;
    fs::write(&val, &bytes).unwrap();
    let bad = genesis(&root, &["data", "inspect", "notes", "--verify"]);
    let err = text(&bad.stderr);
    assert!(!bad.status.success() && err.contains("val_000000.bin") && err.contains("damaged"), "{err}");
    bytes[1030] ^= 1;
    fs::write(&val, &bytes).unwrap();

    // Training on it starts (one step, CPU, tiny model).
    let run = dir.join("run");
    let train = genesis(
        &root,
        &["train", "--data", "notes", "--steps", "1", "--batch", "2", "--seq", "16", "--eval-batches", "1", "--out"]
            .into_iter()
            .chain([run.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(train.status.success(), "{}", text(&train.stderr));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_data_says_which_command_prepares_it() {
    let dir = temp_dir("cli-missing");
    let root = dir.join("data");
    let out = genesis(&root, &["train", "--data", "mycorpus", "--out", "unused"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no prepared dataset at") && err.contains("mycorpus"), "{err}");
    assert!(err.contains("genesis prepare --input PATH... --name mycorpus"), "{err}");

    let out = genesis(&root, &["train", "--data", "wikitext-2", "--out", "unused"]);
    assert!(text(&out.stderr).contains("prepare it with: genesis prepare wikitext-2"), "{}", text(&out.stderr));

    // A half-prepared directory (shards, no manifest) is refused, not trained on.
    fs::create_dir_all(root.join("half")).unwrap();
    fs::write(root.join("half").join("train_000000.bin"), [0u8; 1024]).unwrap();
    let out = genesis(&root, &["train", "--data", "half", "--out", "unused"]);
    assert!(text(&out.stderr).contains("has no manifest.json"), "{}", text(&out.stderr));

    // With no --data, train prepares wikitext-103 first; offline that fails in one clear line.
    let out = genesis(&root, &["train", "--out", "unused"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(
        line.contains("cannot reach 127.0.0.1") && line.contains("genesis prepare wikitext-103 --from DIR"),
        "{err}"
    );
    assert!(!root.join("wikitext-103").join("manifest.json").exists());

    let out = genesis(&root, &["prepare", "openwebtext"]);
    let err = text(&out.stderr);
    assert!(err.contains("unknown dataset") && err.contains("wikitext-103, wikitext-2"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// `genesis ARGS` whose standard output is a pipe nobody reads (closed before the command starts,
/// as when `| head -1` has exited): every write to it fails with a broken pipe.
fn genesis_closed_stdout(data_root: &Path, args: &[&str]) -> Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(args)
        .env("GENESIS_DATA_DIR", data_root)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap()
}

#[test]
fn every_command_stops_quietly_when_its_output_is_closed() {
    let dir = temp_dir("cli-pipe");
    let root = dir.join("data");
    let corpus: String = (0..60).map(|i| format!("Paragraph {i} is about the number {}.\n\n", i * 7)).collect();
    fs::write(dir.join("notes.txt"), &corpus).unwrap();
    let input = dir.join("notes.txt").display().to_string();
    let prepare = ["prepare", "--input", &input, "--docs", "paragraphs", "--name", "notes"];
    assert!(genesis(&root, &prepare).status.success());
    let run = dir.join("run").display().to_string();
    let train = ["train", "--device", "cpu", "--data", "notes", "--steps", "2", "--batch", "2", "--seq", "16"];
    let trained = genesis(&root, &[&train[..], &["--eval-batches", "1", "--out", &run]].concat());
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let ckpt = dir.join("run").join("step_00000002.ckpt").display().to_string();
    let export = dir.join("export").display().to_string();
    let imported = dir.join("back.ckpt").display().to_string();
    let again = dir.join("again").display().to_string();

    let commands: Vec<Vec<&str>> = vec![
        prepare.to_vec(),
        vec!["data", "inspect", "notes", "--tokens", "20"],
        [&train[..], &["--eval-batches", "1", "--out", &again]].concat(),
        vec!["eval", "--checkpoint", &ckpt, "--data", "notes", "--seq", "16", "--device", "cpu"],
        vec!["eval", "--checkpoint", &ckpt, "--data", "notes", "--seq", "16", "--device", "cpu", "--json"],
        vec!["info", "--model", "tiny", "--gpu-mem", "10"],
        vec!["verify", &ckpt],
        vec!["doctor", "--offline", "--model", "tiny"],
        vec!["plot", &run],
        vec!["export", "--checkpoint", &ckpt, "--out", &export],
        vec!["import", &export, "--out", &imported],
        vec!["sample", "--checkpoint", &ckpt, "--prompt", "Paragraph", "--max-tokens", "5", "--device", "cpu"],
        vec!["bench", "sample", "--model", "tiny", "--tokens", "2"],
    ];
    for args in commands {
        let out = genesis_closed_stdout(&root, &args);
        let err = text(&out.stderr);
        assert!(
            out.status.code() == Some(0) && !err.contains("panicked") && !err.contains("error"),
            "genesis {} with its output closed: {:?}\n{err}",
            args.join(" "),
            out.status
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// The built-in tiny Shakespeare needs no file and no network: `train --data shakespeare` prepares
/// it first (the whole play as one document, its last 10% the val split), and sampling the result
/// prints text and says why it stopped.
#[test]
fn train_data_shakespeare_prepares_the_built_in_copy_offline() {
    let dir = temp_dir("cli-shakespeare");
    let root = dir.join("data");
    let run = dir.join("run");
    let args = ["train", "--device", "cpu", "--data", "shakespeare", "--steps", "1", "--batch", "2", "--seq", "16"];
    let out = genesis(&root, &[&args[..], &["--eval-batches", "1", "--out", run.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("preparing the built-in copy"), "{}", text(&out.stderr));
    let m = genesis::data::manifest::Manifest::load(&root.join("shakespeare")).unwrap();
    assert_eq!((m.splits["train"].documents, m.splits["val"].documents), (1, 1));
    let share = m.splits["val"].tokens as f64 / (m.splits["train"].tokens + m.splits["val"].tokens) as f64;
    assert!((0.08..0.12).contains(&share), "val is {share:.3} of the tokens");
    let again = genesis(&root, &["prepare", "shakespeare"]);
    assert!(text(&again.stdout).contains("nothing to do"), "{}", text(&again.stdout));

    let ckpt = run.join("step_00000001.ckpt");
    let sample = ["sample", "--device", "cpu", "--checkpoint", ckpt.to_str().unwrap(), "--prompt", "ROMEO:"];
    let out = genesis(&root, &[&sample[..], &["--max-tokens", "5", "--temperature", "0"]].concat());
    assert!(out.status.success() && text(&out.stdout).starts_with("ROMEO:"), "{}", text(&out.stderr));
    let eot = genesis(&root, &[&sample[..], &["--max-tokens", "3", "--ignore-eot"]].concat());
    assert!(eot.status.success(), "{}", text(&eot.stderr));
    fs::remove_dir_all(&dir).unwrap();
}

/// `bench train --data` takes its batches from a prepared dataset (by name in the data directory
/// or by path) instead of random tokens: the batches are the dataset's windows (each target row is
/// its input row shifted by one token, which random tokens are not), the CPU run through the binary
/// succeeds and says where its tokens came from, and an unknown dataset is refused.
#[test]
fn bench_train_data_takes_batches_from_a_prepared_dataset() {
    let dir = temp_dir("cli-bench-data");
    let root = dir.join("data");
    let corpus: String =
        (0..60).map(|i| format!("Line {i} counts {} apples and {} pears.\n\n", i * 3, i + 11)).collect();
    fs::write(dir.join("notes.txt"), &corpus).unwrap();
    let input = dir.join("notes.txt").display().to_string();
    let out = genesis(&root, &["prepare", "--input", &input, "--docs", "paragraphs", "--name", "notes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (b, t) = (2, 16);
    let mut tokens = genesis::bench::BenchTokens::new(Some(&root.join("notes")), b, t).unwrap();
    let mut loader =
        genesis::data::loader::DataLoader::open(&root.join("notes"), genesis::data::manifest::Split::Train, b, t, 1)
            .unwrap();
    let (mut inputs, mut targets) = (vec![0u32; b * t], vec![0u32; b * t]);
    let (mut want_in, mut want_tg) = (vec![0u32; b * t], vec![0u32; b * t]);
    for _ in 0..3 {
        tokens.fill(50257, &mut inputs, &mut targets);
        loader.next_batch(&mut want_in, &mut want_tg);
        assert_eq!((&inputs, &targets), (&want_in, &want_tg));
        for row in 0..b {
            let (i, g) = (&inputs[row * t..(row + 1) * t], &targets[row * t..(row + 1) * t]);
            assert_eq!(i[1..], g[..t - 1], "row {row}: targets are not the inputs shifted by one");
        }
    }

    let notes_dir = root.join("notes").display().to_string();
    for data in ["notes", notes_dir.as_str()] {
        let args =
            ["bench", "train", "--device", "cpu", "--model", "tiny", "--batch", "2", "--seq", "16", "--steps", "1"];
        let out = genesis(&root, &[&args[..], &["--data", data]].concat());
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert!(stdout.contains(&format!("tokens from {data}")) && stdout.contains("tokens/s"), "{stdout}");
    }
    let out =
        genesis(&root, &["bench", "train", "--device", "cpu", "--model", "tiny", "--steps", "1", "--data", "nosuch"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nosuch"), "{}", text(&out.stderr));
    // --profile times GPU kernels: on the CPU it is refused, saying why.
    let out = genesis(&root, &["bench", "train", "--device", "cpu", "--model", "tiny", "--steps", "1", "--profile"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--device cuda"), "{}", text(&out.stderr));
    fs::remove_dir_all(&dir).unwrap();
}
