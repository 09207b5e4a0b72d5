//! Nonsense numbers on the command line are refused before any work starts, each with the option's
//! name and the range it takes.

mod common;

use common::{genesis, output_text, paragraph_dataset, temp_dir};

/// Runs `genesis args`, expects it to fail, and returns what it printed.
fn refused(args: &[&str]) -> String {
    let out = genesis(args);
    let text = output_text(&out);
    assert!(!out.status.success(), "{args:?} was accepted:\n{text}");
    assert!(!text.contains("panicked"), "{args:?} panicked:\n{text}");
    text
}

#[test]
fn training_numbers_out_of_range_are_refused_naming_the_option() {
    let dir = temp_dir("options-train");
    let data = paragraph_dataset(&dir, "notes", &"Some words to train on.\n\nAnd a second paragraph.\n\n".repeat(40));
    let data = data.to_str().unwrap();
    for (option, value, range) in [
        ("--lr", "nan", "above 0"),
        ("--lr", "inf", "above 0"),
        ("--lr", "-1", "above 0"),
        ("--lr", "0", "above 0"),
        ("--min-lr-frac", "-5", "from 0 to 1"),
        ("--min-lr-frac", "1.5", "from 0 to 1"),
        ("--weight-decay", "nan", "from 0 up"),
        ("--weight-decay", "-0.1", "from 0 up"),
        ("--grad-clip", "-1", "from 0 up"),
        ("--grad-clip", "nan", "from 0 up"),
        ("--eval-batches", "0", "at least 1"),
        ("--max-bad-steps", "0", "at least 1"),
    ] {
        let out = dir.join(format!("run{option}{value}"));
        let args = ["train", "--device", "cpu", "--data", data, "--out", out.to_str().unwrap(), option, value];
        let text = refused(&args);
        let shown = format!("{option} {}", value.replace("nan", "NaN"));
        assert!(text.contains(&shown) && text.contains(range), "{option} {value}: {text}");
        assert!(!out.exists(), "{option} {value}: the run directory was created before the check");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cpu_batch_beyond_the_memory_is_refused_with_both_figures() {
    let dir = temp_dir("options-memory");
    let data = paragraph_dataset(&dir, "notes", &"Some words to train on.\n\nAnd a second paragraph.\n\n".repeat(40));
    let out = dir.join("run");
    let text = refused(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "1000000",
    ]);
    // About 133 GB of attention scores alone: more than any machine this runs on has.
    assert!(text.contains("--batch 1000000") && text.contains("GB of memory") && text.contains("available"), "{text}");
    assert!(!out.join("step_00000000.ckpt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_and_thread_numbers_out_of_range_are_refused() {
    for (option, value, needle) in [
        ("--temperature", "nan", "--temperature NaN"),
        ("--temperature", "-1", "--temperature -1"),
        ("--top-p", "2", "--top-p 2"),
        ("--top-p", "nan", "--top-p NaN"),
    ] {
        // Checked before the model file is even opened: this one does not exist.
        let text = refused(&["sample", "--device", "cpu", "--checkpoint", "missing.ckpt", option, value]);
        assert!(text.contains(needle) && !text.contains("missing.ckpt"), "{option} {value}: {text}");
    }
    // --weights names its choices, on sample and on bench sample.
    for args in [&["sample", "--checkpoint", "missing.ckpt"][..], &["bench", "sample", "--model", "tiny"]] {
        let text = refused(&[args, &["--weights", "fp8"]].concat());
        assert!(text.contains("'--weights' with value 'fp8': expected f32 or bf16"), "{text}");
    }
    for threads in ["0", "100000"] {
        let text = refused(&["--threads", threads, "info", "--model", "tiny", "--gpu-mem", "24"]);
        assert!(text.contains(&format!("--threads {threads}: expected 1 to")), "{text}");
    }
}

/// `--attention flash` is bf16 only: with fp32 (the default precision) train, bench train and info
/// refuse it in one line naming both options, before any work (here, before the dataset is even
/// looked at), on any device.
#[test]
fn flash_attention_without_bf16_is_refused_naming_both_options() {
    let dir = temp_dir("options-flash");
    let out = dir.join("run");
    for args in [
        vec!["train", "--data", "no-such-dataset", "--out", out.to_str().unwrap(), "--attention", "flash"],
        vec!["train", "--device", "cpu", "--precision", "fp32", "--attention", "flash", "--data", "no-such-dataset"],
        vec!["bench", "train", "--device", "cpu", "--attention", "flash"],
        vec!["info", "--model", "tiny", "--gpu-mem", "24", "--attention", "flash"],
    ] {
        let text = refused(&args);
        assert!(
            text.contains("--attention flash needs --precision bf16") && text.contains("--attention materialized"),
            "{args:?}: {text}"
        );
        assert!(!text.contains("no-such-dataset"), "{args:?} looked at the data first: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
    }
    assert!(!out.exists(), "a refused run created its directory");
    let text = refused(&["train", "--attention", "fast"]);
    assert!(text.contains("expected flash or materialized"), "{text}");
}

/// `--gelu-fusion off|forward|both` on train and bench train: a bad value is refused naming the
/// choices, the help says what each does and that it is not yet verified on a GPU, and on the CPU
/// bench train accepts it with a note (train's note: tests/resume.rs).
#[test]
fn gelu_fusion_is_parsed_documented_and_noted_on_the_cpu() {
    for args in [&["train"][..], &["bench", "train", "--device", "cpu"]] {
        let text = refused(&[args, &["--gelu-fusion", "on"]].concat());
        assert!(text.contains("'--gelu-fusion' with value 'on': expected off, forward or both"), "{args:?}: {text}");
        let help = output_text(&genesis(&[args, &["--help"]].concat()));
        // The option's own description: from its entry in the options list (indented; the usage
        // line has it in brackets) to the next option, --help.
        let at = help.find("  --gelu-fusion ").unwrap_or_else(|| panic!("{args:?} --help: {help}"));
        let own = help[at..].split("--help").next().unwrap();
        let said: String = own.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in ["off (", "forward (", "both (", "GELU_AUX_BIAS", "not yet verified on a GPU"] {
            let want = if args[0] == "bench" && want == "GELU_AUX_BIAS" { "cuBLASLt epilogue" } else { want };
            assert!(said.contains(want), "{args:?} --help does not say {want:?}: {said}");
        }
    }
    let bench = ["bench", "train", "--device", "cpu", "--model", "tiny", "--batch", "1", "--seq", "8", "--steps", "1"];
    for fusion in ["forward", "both"] {
        let out = genesis(&[&bench[..], &["--gelu-fusion", fusion]].concat());
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        let note = format!("note: --gelu-fusion {fusion} applies to GPU training; the CPU has one GELU");
        assert!(text.contains(&note) && text.contains("bench train cpu tiny"), "{text}");
    }
    let out = genesis(&bench);
    assert!(out.status.success() && !output_text(&out).contains("--gelu-fusion"), "{}", output_text(&out));
}

/// `--bias-grad reduce|epilogue` on train and bench train: a bad value is refused naming the
/// choices, the help says what each does and that it is not yet verified on a GPU, and on the CPU
/// bench train accepts it with a note (train's note: tests/resume.rs), saying nothing for the
/// default.
#[test]
fn bias_grad_is_parsed_documented_and_noted_on_the_cpu() {
    for args in [&["train"][..], &["bench", "train", "--device", "cpu"]] {
        let text = refused(&[args, &["--bias-grad", "bgradb"]].concat());
        assert!(text.contains("'--bias-grad' with value 'bgradb': expected reduce or epilogue"), "{args:?}: {text}");
        let help = output_text(&genesis(&[args, &["--help"]].concat()));
        // The option's own description: from its entry in the options list (indented; the usage
        // line has it in brackets) to the next option, --help.
        let at = help.find("  --bias-grad ").unwrap_or_else(|| panic!("{args:?} --help: {help}"));
        let own = help[at..].split("--help").next().unwrap();
        let said: String = own.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in ["reduce (", "epilogue (", "BGRADB", "not yet verified on a GPU"] {
            assert!(said.contains(want), "{args:?} --help does not say {want:?}: {said}");
        }
    }
    let bench = ["bench", "train", "--device", "cpu", "--model", "tiny", "--batch", "1", "--seq", "8", "--steps", "1"];
    let out = genesis(&[&bench[..], &["--bias-grad", "epilogue"]].concat());
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let note = "note: --bias-grad epilogue applies to GPU training; the CPU sums the bias gradients itself";
    assert!(text.contains(note) && text.contains("bench train cpu tiny"), "{text}");
    for quiet in [&[][..], &["--bias-grad", "reduce"]] {
        let out = genesis(&[&bench[..], quiet].concat());
        assert!(out.status.success() && !output_text(&out).contains("--bias-grad"), "{}", output_text(&out));
    }
}
