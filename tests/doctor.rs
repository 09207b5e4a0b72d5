//! `genesis doctor`: each check's verdict on this machine (with or without a GPU), the disk
//! comparison with injected numbers, datasets prepared in a temporary data root, an unreachable and
//! a reachable hub, the layout, and the binary end to end (environment set on the child only).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{assert_mentions, genesis, temp_dir, text};
use genesis::checkpoint::{self, Checkpoint};
use genesis::data::manifest::Manifest;
use genesis::doctor::{self, Check, Status};
use genesis::model::ModelConfig;

/// Prepares a small dataset called `name` under `root` through the binary.
fn prepare(root: &Path, name: &str) {
    let src = root.parent().unwrap().join(format!("{name}.txt"));
    let corpus: String = (0..40).map(|i| format!("Paragraph {i} is about the number {}.\n\n", i * 3)).collect();
    fs::write(&src, corpus).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(["prepare", "--input", src.to_str().unwrap(), "--docs", "paragraphs", "--name", name])
        .env("GENESIS_DATA_DIR", root)
        .output()
        .unwrap();
    assert!(out.status.success(), "prepare failed: {}", text(&out.stderr));
}

/// `genesis doctor ARGS` with `envs` set on the child and no network (a closed local port as hub).
fn doctor_cli(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genesis"));
    cmd.arg("doctor").args(args).env("HF_ENDPOINT", "http://127.0.0.1:1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn gpu_check_answers_without_panicking() {
    let checks = doctor::check_gpu();
    assert!(!checks.is_empty());
    assert_eq!(checks[0].name, "gpu");
    match genesis::gpu::device::device_count() {
        Err(reason) => {
            // No driver (this CI machine): one warning that says so and what to install.
            assert_eq!(checks.len(), 1, "{checks:?}");
            assert_eq!(checks[0].status, Status::Warn);
            assert_mentions(&checks[0].detail, &["no usable GPU", &reason]);
            assert_mentions(checks[0].fix.as_deref().unwrap(), &["NVIDIA driver", "CPU"]);
        }
        Ok(0) => assert_eq!(checks[0].status, Status::Warn),
        Ok(n) => {
            // A GPU machine: the driver line, then one line per device with its name and memory.
            assert_mentions(&checks[0].detail, &["CUDA", &format!("{n} device(s)")]);
            assert_eq!(checks.len(), n + 1, "{checks:?}");
            for (i, c) in checks[1..].iter().enumerate() {
                assert_eq!(c.name, format!("gpu {i}"));
                assert_mentions(&c.detail, &["sm_", "GiB total", "GiB free"]);
            }
        }
    }
}

#[test]
fn kernel_architectures_match_devices_like_the_driver_does() {
    let archs = "sm_80,sm_86,sm_89,sm_90,compute_90";
    assert!(doctor::kernels_run_on(archs, 8, 0));
    assert!(doctor::kernels_run_on(archs, 8, 7), "sm_86 SASS runs on 8.7");
    assert!(doctor::kernels_run_on(archs, 9, 0));
    assert!(doctor::kernels_run_on(archs, 12, 0), "compute_90 PTX is JIT-compiled on newer GPUs");
    assert!(!doctor::kernels_run_on(archs, 7, 5));
    assert!(!doctor::kernels_run_on("sm_80", 9, 0), "SASS does not cross major versions");
    assert!(!doctor::kernels_run_on("", 9, 0));
}

#[test]
fn cuda_version_reads_like_nvidia_smi() {
    assert_eq!(doctor::cuda_version(13000), "13.0");
    assert_eq!(doctor::cuda_version(12040), "12.4");
}

#[test]
fn disk_verdict_compares_free_space_with_the_checkpoints_kept() {
    let gb = 1_000_000_000;
    // keep 3: the last three, the best and one being written = 5 checkpoints.
    assert_eq!(doctor::disk_verdict(5 * gb, gb, 3), Status::Ok);
    assert_eq!(doctor::disk_verdict(5 * gb - 1, gb, 3), Status::Warn);
    assert_eq!(doctor::disk_verdict(gb, gb, 3), Status::Warn);
    assert_eq!(doctor::disk_verdict(gb - 1, gb, 3), Status::Fail);
    assert_eq!(doctor::disk_verdict(2 * gb, gb, 0), Status::Ok);
    assert_eq!(doctor::disk_verdict(u64::MAX, u64::MAX, usize::MAX), Status::Ok, "no overflow");
}

#[test]
fn disk_check_reads_real_free_space() {
    let dir = temp_dir("doctor-disk");
    let tiny = ModelConfig::preset("tiny").unwrap();
    let per = checkpoint::full_checkpoint_bytes(&tiny);
    let free = doctor::free_bytes(&dir).unwrap();
    assert!(free > 0);

    let ok = doctor::check_disk(&dir, "tiny", 3);
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    assert_mentions(&ok.detail, &[&dir.display().to_string(), "tiny", &doctor::format_bytes(5 * per)]);

    // A run directory that does not exist yet: its nearest existing parent is measured.
    let deeper = dir.join("a/b/c");
    let c = doctor::check_disk(&deeper, "tiny", 3);
    assert_mentions(&c.detail, &[&format!("free at {}", dir.display())]);

    // More checkpoints kept than fit, though one does: a warning with the fix.
    let keep = (free / per) as usize + 10;
    let w = doctor::check_disk(&dir, "tiny", keep);
    assert_eq!(w.status, Status::Warn, "{w:?}");
    assert_mentions(w.fix.as_deref().unwrap(), &["--keep", "--out"]);

    // A model whose single checkpoint is larger than any disk.
    let huge = ModelConfig { num_layers: 2000, channels: 65536, num_heads: 512, ..tiny };
    assert!(checkpoint::full_checkpoint_bytes(&huge) > free);
    let f = doctor::check_disk_for(&dir, &huge, "huge", 3);
    assert_eq!(f.status, Status::Fail, "{f:?}");
    assert_mentions(f.fix.as_deref().unwrap(), &["not even one checkpoint"]);

    assert_eq!(doctor::check_disk(&dir, "no-such-model", 3).status, Status::Fail);
}

#[test]
fn disk_check_sizes_by_the_runs_own_checkpoints() {
    let dir = temp_dir("doctor-ckpt");
    let tiny = ModelConfig::preset("tiny").unwrap();
    let params = vec![0.0f32; tiny.num_params()];
    checkpoint::save(&dir.join("step_00000010.ckpt"), &Checkpoint::new(tiny, 10, params)).unwrap();
    let c = doctor::check_disk(&dir, "gpt2-350m", 1);
    assert_mentions(
        &c.detail,
        &["tiny, from step_00000010.ckpt", &doctor::format_bytes(3 * checkpoint::full_checkpoint_bytes(&tiny))],
    );
    assert!(!c.detail.contains("gpt2-350m"), "{}", c.detail);
}

#[test]
fn data_checks_list_prepared_datasets_and_say_how_to_prepare_missing_ones() {
    let root = temp_dir("doctor-data").join("data");
    let empty = doctor::check_datasets(&root);
    assert_eq!(empty.status, Status::Warn);
    assert_mentions(empty.fix.as_deref().unwrap(), &["genesis prepare", "GENESIS_DATA_DIR"]);

    prepare(&root, "notes");
    let m = Manifest::load(&root.join("notes")).unwrap();
    let train_tokens = m.splits["train"].tokens;
    let listed = doctor::check_datasets(&root);
    assert_eq!(listed.status, Status::Ok, "{listed:?}");
    assert_mentions(&listed.detail, &["notes (", "train", "val", &train_tokens.to_string()]);

    let found = doctor::check_data(&root, "notes");
    assert_eq!(found.status, Status::Ok, "{found:?}");
    assert_mentions(&found.detail, &["notes prepared", &train_tokens.to_string()]);
    let by_path = doctor::check_data(&root, root.join("notes").to_str().unwrap());
    assert_eq!(by_path.status, Status::Ok, "{by_path:?}");

    let missing = doctor::check_data(&root, "wikitext-103");
    assert_eq!(missing.status, Status::Warn);
    assert_mentions(missing.fix.as_deref().unwrap(), &["genesis prepare wikitext-103"]);
    let own = doctor::check_data(&root, "mycorpus");
    assert_mentions(own.fix.as_deref().unwrap(), &["genesis prepare", "--name mycorpus"]);
}

#[test]
fn unreachable_hub_is_reported_quickly_with_the_offline_fix() {
    let t = Instant::now();
    let c = doctor::check_hub("http://127.0.0.1:1", Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert_mentions(&c.detail, &["cannot reach http://127.0.0.1:1"]);
    assert_mentions(c.fix.as_deref().unwrap(), &["--from DIR", "HF_ENDPOINT"]);
}

#[test]
fn reachable_hub_is_ok_and_server_errors_warn() {
    for (status_line, want) in
        [("200 OK", Status::Ok), ("302 Found", Status::Ok), ("503 Service Unavailable", Status::Warn)]
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let reply = format!("HTTP/1.1 {status_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        let c = doctor::check_hub(&url, Duration::from_secs(5));
        let request = server.join().unwrap();
        assert!(request.starts_with("HEAD / "), "{request}");
        assert_eq!(c.status, want, "{status_line}: {c:?}");
    }
}

#[test]
fn render_aligns_marks_and_indents_fixes() {
    let checks = vec![
        Check { name: "cpu".into(), status: Status::Ok, detail: "2 threads".into(), fix: None },
        Check { name: "datasets".into(), status: Status::Warn, detail: "none".into(), fix: Some("prepare one".into()) },
        Check {
            name: "disk".into(),
            status: Status::Fail,
            detail: "1 GB free".into(),
            fix: Some(format!("free space\n$ {}", "x ".repeat(80))),
        },
    ];
    let out = doctor::render(&checks);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ok    cpu      2 threads");
    assert_eq!(lines[1], "warn  datasets none");
    assert_eq!(lines[2], "               fix: prepare one");
    assert_eq!(lines[3], "FAIL  disk     1 GB free");
    assert_eq!(lines[4], "               fix: free space");
    assert!(lines[5].starts_with("                    $ x x"), "a command stays on one line: {}", lines[5]);
    assert_mentions(lines.last().unwrap(), &["1 ok, 1 warn, 1 FAIL", "disk"]);
    assert!(doctor::any_failed(&checks));
    assert!(!doctor::any_failed(&checks[..2]));
}

#[test]
fn cli_prints_every_section_and_exits_zero_without_a_gpu() {
    let dir = temp_dir("doctor-cli");
    let root = dir.join("data");
    prepare(&root, "notes");
    // A fake nvcc and a fake CUDA toolkit: doctor reports what it finds where it was told to look.
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let nvcc = bin.join("nvcc");
    fs::write(&nvcc, "#!/bin/sh\necho 'Cuda compilation tools, release 99.9, V99.9.1'\n").unwrap();
    fs::set_permissions(&nvcc, fs::Permissions::from_mode(0o755)).unwrap();
    let cuda = dir.join("cuda");
    fs::create_dir_all(cuda.join("lib64")).unwrap();
    fs::write(cuda.join("lib64/libcublas.so.13"), b"").unwrap();
    fs::write(cuda.join("lib64/libcublasLt.so.13"), b"").unwrap();

    let run = dir.join("runs/new");
    let t = Instant::now();
    let out = doctor_cli(
        &["--out", run.to_str().unwrap(), "--data", "notes", "--model", "tiny"],
        &[("GENESIS_DATA_DIR", &root), ("NVCC", &nvcc), ("CUDA_HOME", &cuda)],
    );
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for name in ["cpu", "gpu", "cublas", "cublasLt", "kernels", "nvcc", "disk", "datasets", "data", "hub"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().nth(1) == Some(name)),
            "no line for the {name} check in:\n{stdout}"
        );
    }
    assert_mentions(
        &stdout,
        &[
            &cuda.join("lib64/libcublas.so.13").display().to_string(),
            &cuda.join("lib64/libcublasLt.so.13").display().to_string(),
            "99.9, V99.9.1",
            "notes prepared",
            "cannot reach http://127.0.0.1:1",
            "--from DIR",
            &format!("free at {}", dir.display()),
            " FAIL: ",
        ],
    );
    if genesis::gpu::device::device_count().is_err() {
        assert_mentions(&stdout, &["warn  gpu", "no usable GPU"]);
    }

    let offline = doctor_cli(&["--offline", "--data", "notes"], &[("GENESIS_DATA_DIR", &root)]);
    assert!(offline.status.success());
    assert_mentions(&text(&offline.stdout), &["skip  hub"]);
}

#[test]
fn cli_rejects_an_unknown_model_and_documents_its_exit_status() {
    let out = doctor_cli(&["--offline", "--model", "gpt5"], &[]);
    assert!(!out.status.success());
    assert_mentions(&text(&out.stderr), &["gpt5", "genesis-150m"]);
    let help = genesis(&["doctor", "--help"]);
    assert_mentions(&text(&help.stdout), &["Exit status", "FAIL", "--offline", "--keep"]);
}

/// One pinned nvcc command everywhere: doctor's fix, the README (and build.rs's warning, built from
/// the same file) name exact versions, and `.ci/run` installs from that file.
#[test]
fn the_nvcc_install_hint_is_one_pinned_command() {
    let cmd = doctor::nvcc_pip_install();
    assert!(cmd.contains("\"nvidia-cuda-nvcc==13.0.88\"") && !cmd.contains('*'), "{cmd}");
    // cuobjdump (scripts/kernel-report.sh) is pinned the same way, in the same command.
    assert!(cmd.contains("\"nvidia-cuda-cuobjdump==13.2.51\""), "{cmd}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&cmd), "README does not show {cmd}");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(ci.contains("-r scripts/nvcc-requirements.txt"), ".ci/run does not install the pinned nvcc");
}

/// The closing table of `scripts/gpu-verify.sh` (scripts/bench_table.py) reads what `genesis bench
/// train` and `torch_reference.py train` print: tokens/s, MFU (PyTorch's from the peak the Genesis
/// rows imply), memory in GB and the ratio to torch.compile; a failed step is a row of "-", and the
/// --profile log is left out.
#[test]
fn the_gpu_verify_closing_table_parses_both_benchmarks() {
    let dir = common::temp_dir("bench-table");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        "bench-bf16-b16.log",
        "note: using GPU 0\nbench train gpt2-124m on NVIDIA H200 (sm_90) (bf16 mixed precision, materialized attention, scalar kernels, micro sync), batch 16 seq 1024: \
         124.1 ms/step, 132020 tokens/s, 113.6 TFLOP/s, MFU 11.5%, 12.34 GB of device memory\n",
    );
    write(
        "bench-fp32-b16.log",
        "bench train gpt2-124m on NVIDIA H200 (sm_90) (fp32, TF32 matmuls), batch 16 seq 1024, tokens from \
         shakespeare: 104.1 ms/step, 158000 tokens/s, 135.9 TFLOP/s, MFU 13.7%, 20.00 GB of device memory\n",
    );
    write("bench-bf16-b32.log", "error: out of memory\n");
    write("bench-bf16-b16-profile.log", "bench train gpt2-124m on X (bf16 mixed precision), batch 16 seq 1024: 1.0 ms/step, 1 tokens/s, 1.0 TFLOP/s, 1.00 GB of device memory\n");
    write(
        "torch-compile.log",
        "{\"bench\": \"torch-train\", \"compile\": true, \"tokens_per_s\": 409600, \"tflops\": 352.3, \"peak_mem_gib\": 15.0}\n",
    );
    write("torch-eager.log", "Traceback (most recent call last):\n");
    let out = std::process::Command::new("python3")
        .arg(common::repo_root().join("scripts/bench_table.py"))
        .arg(&dir)
        .output()
        .expect("python3 runs scripts/bench_table.py (CI installs nvcc with pip, so it has python3)");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let table = common::text(&out.stdout);
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{table}"));
        line[name.len()..].split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("genesis bf16-b16"), ["132020", "11.5%", "12.34", "0.32x"], "{table}");
    assert_eq!(row("genesis fp32-b16"), ["158000", "13.7%", "20.00", "0.39x"], "{table}");
    assert_eq!(row("genesis bf16-b32"), ["-", "-", "-", "-"], "{table}");
    // 352.3 TFLOP/s over the 113.6 / 11.5% = 987.8 the Genesis row implies; 15 GiB = 16.11 GB.
    assert_eq!(row("torch-compile"), ["409600", "35.7%", "16.11", "1.00x"], "{table}");
    assert_eq!(row("torch-eager"), ["-", "-", "-", "-"], "{table}");
    assert!(!table.contains("profile"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `scripts/quality_check.py` (issue 15's bf16 check in `scripts/gpu-verify.sh`) passes when the
/// bf16 validation loss is within 2% of fp32's at every common evaluation and within 1% at the last,
/// and fails naming the evaluation otherwise.
#[test]
fn the_bf16_quality_check_holds_both_limits() {
    let dir = common::temp_dir("quality-check");
    let metrics = |name: &str, losses: &[(u64, f64)]| {
        let mut text = String::from("{\"kind\":\"start\",\"step\":0}\n");
        for &(step, loss) in losses {
            text += &format!("{{\"kind\":\"val\",\"step\":{step},\"tokens\":0,\"loss\":{loss}}}\n");
            text += &format!("{{\"kind\":\"train\",\"step\":{},\"loss\":99.0}}\n", step + 1);
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let fp32 = metrics("fp32.jsonl", &[(0, 10.0), (100, 6.0), (200, 5.0)]);
    let check = |bf16: &[(u64, f64)]| {
        let out = std::process::Command::new("python3")
            .arg(common::repo_root().join("scripts/quality_check.py"))
            .arg(&fp32)
            .arg(metrics("bf16.jsonl", bf16))
            .output()
            .expect("python3 runs scripts/quality_check.py");
        (out.status.success(), common::text(&out.stdout))
    };
    let (ok, text) = check(&[(0, 10.0), (100, 6.1), (200, 5.04)]);
    assert!(ok && text.contains("passed (3 evaluations, last at step 200)"), "{text}");
    let (ok, text) = check(&[(0, 10.0), (100, 6.15), (200, 5.0)]);
    assert!(!ok && text.contains("step   100") && text.contains("2.50% (limit 2%) FAIL"), "{text}");
    let (ok, text) = check(&[(0, 10.0), (100, 6.0), (200, 5.06)]);
    assert!(!ok && text.contains("1.20% (limit 1%) FAIL"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
