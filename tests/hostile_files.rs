//! Crafted model files: absurd dimensions whose sizes would wrap to match the file's length, zero-byte
//! tensors of astronomically large shapes, configs with zero, negative or huge fields. Every command
//! that reads a model (`verify`, `sample`, `eval`, `export`, `import`, `train --init-from`) must exit
//! non-zero with one line `error: ...` naming the file, never panic, never abort on an allocation,
//! and `verify` must never call such a file whole.

mod common;

use common::temp_dir;
use genesis::checkpoint::{self, Checkpoint};
use genesis::cpu::gpt::init_params;
use genesis::hf;
use genesis::llmc;
use genesis::model::ModelConfig;
use genesis::safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A valid model small enough that its files are a few KiB.
fn small() -> ModelConfig {
    ModelConfig { max_seq_len: 8, vocab_size: 100, padded_vocab_size: 128, num_layers: 1, num_heads: 2, channels: 8 }
}

/// The checkpoint header's config object for `cfg`, with `set` fields replaced (raw JSON values).
fn config_value(cfg: &ModelConfig, set: &[(&str, Value)]) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap();
    for (k, x) in set {
        v[*k] = x.clone();
    }
    v
}

/// A Genesis checkpoint written by hand: any header config, the given sections, valid CRCs.
fn raw_checkpoint(path: &Path, config: Value, sections: &[(&str, &[u8])]) {
    const DATA_START: usize = 4096;
    let mut offset = DATA_START;
    let mut infos = Vec::new();
    for (name, data) in sections {
        infos.push(json!({"name": name, "dtype": "f32", "offset": offset, "bytes": data.len(),
                          "crc32": crc32fast::hash(data)}));
        offset = (offset + data.len()).div_ceil(64) * 64;
    }
    let header = serde_json::to_vec(&json!({"config": config, "step": 1, "meta": null, "sections": infos})).unwrap();
    assert!(16 + header.len() + 4 <= DATA_START);
    let mut out = checkpoint::MAGIC.to_vec();
    out.extend_from_slice(&checkpoint::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    for (info, (_, data)) in infos.iter().zip(sections) {
        out.resize(info["offset"].as_u64().unwrap() as usize, 0);
        out.extend_from_slice(data);
    }
    std::fs::write(path, out).unwrap();
}

/// A safetensors file written by hand: each entry (name, dtype, shape, bytes) takes the next `bytes`
/// bytes of data (zeros), whatever its shape says.
fn raw_safetensors(path: &Path, entries: &[(String, &str, Vec<u64>, u64)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, bytes) in entries {
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let json = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.resize(out.len() + offset as usize, 0);
    std::fs::write(path, out).unwrap();
}

/// The GPT-2 tensor entries for a model of `c` channels, `l` layers, context `t` and vocabulary `v`,
/// each F32 of `bytes(shape)` bytes. `3c` and `4c` wrap, as an unchecked reader computes them.
fn gpt2_entries(
    v: u64,
    t: u64,
    l: u64,
    c: u64,
    bytes: impl Fn(&[u64]) -> u64,
) -> Vec<(String, &'static str, Vec<u64>, u64)> {
    let mut shapes: Vec<(String, Vec<u64>)> =
        vec![("transformer.wte.weight".into(), vec![v, c]), ("transformer.wpe.weight".into(), vec![t, c])];
    for i in 0..l {
        let p = |s: &str| format!("transformer.h.{i}.{s}");
        shapes.extend([
            (p("ln_1.weight"), vec![c]),
            (p("ln_1.bias"), vec![c]),
            (p("attn.c_attn.weight"), vec![c, 3u64.wrapping_mul(c)]),
            (p("attn.c_attn.bias"), vec![3u64.wrapping_mul(c)]),
            (p("attn.c_proj.weight"), vec![c, c]),
            (p("attn.c_proj.bias"), vec![c]),
            (p("ln_2.weight"), vec![c]),
            (p("ln_2.bias"), vec![c]),
            (p("mlp.c_fc.weight"), vec![c, 4u64.wrapping_mul(c)]),
            (p("mlp.c_fc.bias"), vec![4u64.wrapping_mul(c)]),
            (p("mlp.c_proj.weight"), vec![4u64.wrapping_mul(c), c]),
            (p("mlp.c_proj.bias"), vec![c]),
        ]);
    }
    shapes.push(("transformer.ln_f.weight".into(), vec![c]));
    shapes.push(("transformer.ln_f.bias".into(), vec![c]));
    shapes
        .into_iter()
        .map(|(n, s)| {
            let b = bytes(&s);
            (n, "F32", s, b)
        })
        .collect()
}

/// `config.json` for `small()` with `set` fields replaced.
fn write_config(dir: &Path, set: &[(&str, Value)]) {
    let mut v = hf::config_json(&small(), Dtype::F32);
    for (k, x) in set {
        v[*k] = x.clone();
    }
    std::fs::write(dir.join(hf::CONFIG_FILE), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A valid export of `small()` in `dir`.
fn valid_export(dir: &Path) {
    let cfg = small();
    let from = hf::Provenance { source: "test".into(), source_format: "test".into(), step: Some(1) };
    hf::export(dir, &cfg, &init_params(&cfg, 1), Dtype::F32, &from).unwrap();
}

/// An llm.c file: the header ints [magic, version, T, V, L, NH, C, Vp], then `data`.
fn raw_llmc(path: &Path, ints: [i32; 8], data: &[u8]) {
    let mut out = vec![0u8; llmc::HEADER_BYTES];
    for (i, x) in ints.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn llmc_ints(cfg: &ModelConfig) -> [i32; 8] {
    let c = cfg;
    [
        llmc::MAGIC,
        llmc::VERSION_FP32,
        c.max_seq_len as i32,
        c.vocab_size as i32,
        c.num_layers as i32,
        c.num_heads as i32,
        c.channels as i32,
        c.padded_vocab_size as i32,
    ]
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One crafted file: a name, the path the commands are given, and what the error must mention.
struct Case {
    name: &'static str,
    path: PathBuf,
    mentions: Vec<&'static str>,
}

/// Writes every crafted file under `root`.
fn cases(root: &Path) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, mentions: &[&'static str], make: &dyn Fn(&Path) -> PathBuf| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        out.push(Case { name, path: make(&dir), mentions: mentions.to_vec() });
    };
    const C62: u64 = 1 << 62;

    // --- safetensors + config.json ---------------------------------------------------------
    // n_embd 2^62: every tensor's byte count (numel x 4) wraps to 0, so zero-byte tensors "fit".
    // (c_attn.bias, [3 x 2^62], is what gives it away: its byte size does not fit in 64 bits.)
    add("st_n_embd_2e62", &["model.safetensors", "c_attn.bias", "does not fit in 64 bits"], &|d| {
        raw_safetensors(&d.join(hf::MODEL_FILE), &gpt2_entries(4, 4, 1, C62, |_| 0));
        write_config(
            d,
            &[
                ("n_embd", json!(C62)),
                ("n_head", json!(1)),
                ("vocab_size", json!(4)),
                ("n_positions", json!(4)),
                ("n_ctx", json!(4)),
                ("n_layer", json!(1)),
            ],
        );
        d.to_path_buf()
    });
    // A valid model plus a zero-byte attn.bias buffer declared [2^32, 2^32] (2^64 elements wrap to 0).
    add("st_attn_bias_2e64", &["model.safetensors", "h.0.attn.bias"], &|d| {
        let cfg = small();
        let (v, t, c) = (cfg.vocab_size as u64, cfg.max_seq_len as u64, cfg.channels as u64);
        let mut e = gpt2_entries(v, t, 1, c, |s| s.iter().product::<u64>() * 4);
        e.push(("h.0.attn.bias".into(), "F32", vec![1 << 32, 1 << 32], 0));
        raw_safetensors(&d.join(hf::MODEL_FILE), &e);
        write_config(d, &[]);
        d.join(hf::MODEL_FILE)
    });
    // The header lists every tensor but the file stops after the first one's bytes.
    add("st_more_tensors_than_bytes", &["model.safetensors", "truncated"], &|d| {
        let cfg = small();
        let (v, t, c) = (cfg.vocab_size as u64, cfg.max_seq_len as u64, cfg.channels as u64);
        let e = gpt2_entries(v, t, 1, c, |s| s.iter().product::<u64>() * 4);
        raw_safetensors(&d.join(hf::MODEL_FILE), &e);
        let bytes = std::fs::read(d.join(hf::MODEL_FILE)).unwrap();
        let keep = bytes.len() - (e.iter().skip(1).map(|x| x.3).sum::<u64>() as usize);
        std::fs::write(d.join(hf::MODEL_FILE), &bytes[..keep]).unwrap();
        write_config(d, &[]);
        d.to_path_buf()
    });
    // A header length of u64::MAX.
    add("st_header_len_max", &["model.safetensors", "header length"], &|d| {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(d.join(hf::MODEL_FILE), bytes).unwrap();
        write_config(d, &[]);
        d.to_path_buf()
    });
    // config.json fields Genesis cannot run, beside a valid model.safetensors.
    let bad_configs: [(&'static str, &'static str, Value, &'static [&'static str]); 10] = [
        ("cfg_n_embd_2e62", "n_embd", json!(C62), &["config.json", "n_embd", "4611686018427387904", "16384"]),
        ("cfg_n_head_0", "n_head", json!(0), &["config.json", "n_head", "0"]),
        ("cfg_n_head_3", "n_head", json!(3), &["config.json", "n_embd", "8", "n_head", "3"]),
        ("cfg_vocab_0", "vocab_size", json!(0), &["config.json", "vocab_size", "0"]),
        ("cfg_n_layer_negative", "n_layer", json!(-1), &["config.json", "n_layer", "-1"]),
        ("cfg_n_layer_huge", "n_layer", json!(u64::MAX), &["config.json", "n_layer", "18446744073709551615"]),
        ("cfg_n_positions_float", "n_positions", json!(1e300), &["config.json", "n_positions"]),
        ("cfg_n_embd_string", "n_embd", json!("8"), &["config.json", "n_embd"]),
        ("cfg_vocab_2e40", "vocab_size", json!(1u64 << 40), &["config.json", "vocab_size", "1099511627776"]),
        ("cfg_n_positions_2e20", "n_positions", json!(1 << 20), &["config.json", "n_positions", "1048576", "65536"]),
    ];
    for (name, field, value, mentions) in bad_configs {
        add(name, mentions, &move |d| {
            valid_export(d);
            write_config(d, &[(field, value.clone())]);
            d.to_path_buf()
        });
    }
    // A genesis.json asking for 2^40 padded vocabulary rows (zeros the reader would allocate).
    add("st_genesis_json_padded_2e40", &["genesis.json", "padded_vocab_size", "1099511627776", "1024"], &|d| {
        valid_export(d);
        let path = d.join(hf::GENESIS_FILE);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["config"]["padded_vocab_size"] = json!(1u64 << 40);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        d.to_path_buf()
    });

    // An lm_head.weight that is not wte: loading refuses it, so verify must too.
    add("st_lm_head_untied", &["model.safetensors", "lm_head.weight", "untied"], &|d| {
        let cfg = small();
        let (v, t, c) = (cfg.vocab_size as u64, cfg.max_seq_len as u64, cfg.channels as u64);
        let mut e = gpt2_entries(v, t, 1, c, |s| s.iter().product::<u64>() * 4);
        e.push(("lm_head.weight".into(), "F32", vec![v, c], v * c * 4));
        raw_safetensors(&d.join(hf::MODEL_FILE), &e);
        // wte is all zeros; make lm_head differ.
        let mut bytes = std::fs::read(d.join(hf::MODEL_FILE)).unwrap();
        let n = bytes.len();
        bytes[n - 2] = 0x3f;
        std::fs::write(d.join(hf::MODEL_FILE), bytes).unwrap();
        write_config(d, &[]);
        d.to_path_buf()
    });
    // A valid safetensors file under a name that is not *.safetensors: loading refuses it, so verify
    // must too, naming the format the .bin name claims.
    add("st_misnamed", &["weights.bin", "is not an llm.c model file"], &|d| {
        valid_export(d);
        std::fs::rename(d.join(hf::MODEL_FILE), d.join("weights.bin")).unwrap();
        d.join("weights.bin")
    });

    // --- Genesis checkpoints ---------------------------------------------------------------
    // channels 2^62 and an empty params section: the parameter count x 4 wraps to 0.
    add("ckpt_channels_2e62", &["x.ckpt", "channels", "4611686018427387904", "16384"], &|d| {
        let cfg = config_value(
            &small(),
            &[
                ("channels", json!(C62)),
                ("num_heads", json!(1)),
                ("padded_vocab_size", json!(128)),
                ("max_seq_len", json!(4)),
            ],
        );
        raw_checkpoint(&d.join("x.ckpt"), cfg, &[("params", &[])]);
        d.join("x.ckpt")
    });
    // max_seq_len 7 * 2^61 + 8: wpe's T x C (C = 8) wraps to the 64 of T = 8, so real parameters fit.
    add("ckpt_max_seq_len_near_2e64", &["x.ckpt", "max_seq_len", "16140901064495857672", "65536"], &|d| {
        let params = f32_bytes(&init_params(&small(), 2));
        let cfg = config_value(&small(), &[("max_seq_len", json!(7u64 * (1 << 61) + 8))]);
        raw_checkpoint(&d.join("x.ckpt"), cfg, &[("params", &params)]);
        d.join("x.ckpt")
    });
    let bad_ckpt: [(&'static str, &'static str, Value, &'static [&'static str]); 5] = [
        ("ckpt_heads_0", "num_heads", json!(0), &["x.ckpt", "num_heads", "0"]),
        ("ckpt_heads_3", "num_heads", json!(3), &["x.ckpt", "channels", "num_heads", "3"]),
        ("ckpt_padded_below_vocab", "padded_vocab_size", json!(64), &["x.ckpt", "padded_vocab_size", "64"]),
        ("ckpt_layers_1000", "num_layers", json!(1000), &["x.ckpt", "num_layers", "1000", "256"]),
        ("ckpt_channels_negative", "channels", json!(-8), &["x.ckpt", "-8"]),
    ];
    for (name, field, value, mentions) in bad_ckpt {
        add(name, mentions, &move |d| {
            let params = f32_bytes(&init_params(&small(), 3));
            raw_checkpoint(
                &d.join("x.ckpt"),
                config_value(&small(), &[(field, value.clone())]),
                &[("params", &params)],
            );
            d.join("x.ckpt")
        });
    }
    // Two sections over the same bytes (a reader would allocate each).
    add("ckpt_sections_overlap", &["x.ckpt", "overlap"], &|d| {
        let cfg = small();
        let params = init_params(&cfg, 4);
        let path = d.join("x.ckpt");
        checkpoint::save(&path, &Checkpoint::new(cfg, 1, params)).unwrap();
        let info = checkpoint::read_info(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let s = &info.sections[0];
        let data = bytes[s.offset as usize..(s.offset + s.bytes) as usize].to_vec();
        let config = serde_json::to_value(cfg).unwrap();
        // Written normally, then the second section's offset pointed at the first's bytes.
        raw_checkpoint(&path, config.clone(), &[("params", &data), ("m", &data)]);
        let mut b = std::fs::read(&path).unwrap();
        let hlen = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
        let mut h: Value = serde_json::from_slice(&b[16..16 + hlen]).unwrap();
        h["sections"][1]["offset"] = h["sections"][0]["offset"].clone();
        let mut new = serde_json::to_vec(&h).unwrap();
        new.resize(hlen, b' ');
        b[16..16 + hlen].copy_from_slice(&new);
        let crc = crc32fast::hash(&b[16..16 + hlen]);
        b[16 + hlen..20 + hlen].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, b).unwrap();
        path
    });

    // --- llm.c files ---------------------------------------------------------------------
    // Header only, channels 2^30: with T + Vp + 2 + 13 L = 2^32 the parameter bytes wrap to 0.
    add("llmc_channels_2e30", &["x.bin", "channels", "1073741824", "16384"], &|d| {
        let l = 1i32;
        let vp = i32::MAX;
        let t = (((1u64 << 32) - 2 - 13 * l as u64) - vp as u64) as i32;
        raw_llmc(&d.join("x.bin"), [llmc::MAGIC, llmc::VERSION_FP32, t, 4, l, 1, 1 << 30, vp], &[]);
        d.join("x.bin")
    });
    let bad_llmc: [(&'static str, usize, i32, &'static [&'static str]); 5] = [
        ("llmc_layers_negative", 4, -1, &["x.bin", "num_layers", "-1"]),
        ("llmc_heads_0", 5, 0, &["x.bin", "num_heads", "0"]),
        ("llmc_heads_3", 5, 3, &["x.bin", "channels", "num_heads", "3"]),
        ("llmc_vocab_max", 3, i32::MAX, &["x.bin", "vocab_size", "2147483647"]),
        ("llmc_seq_max", 2, i32::MAX, &["x.bin", "max_seq_len", "2147483647"]),
    ];
    for (name, index, value, mentions) in bad_llmc {
        add(name, mentions, &move |d| {
            let mut ints = llmc_ints(&small());
            ints[index] = value;
            raw_llmc(&d.join("x.bin"), ints, &f32_bytes(&init_params(&small(), 5)));
            d.join("x.bin")
        });
    }
    add("llmc_header_cut", &["x.bin", "1024"], &|d| {
        let mut b = llmc::MAGIC.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 100]);
        std::fs::write(d.join("x.bin"), b).unwrap();
        d.join("x.bin")
    });
    out
}

/// Most address space a command may use: far more than these tiny files justify, far less than the
/// machine has, so an allocation sized by a crafted header fails here instead of swapping.
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;
/// Longest a command may take on these tiny files.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `genesis ARGS` under [`ADDRESS_SPACE_LIMIT`] and [`COMMAND_TIMEOUT`] and returns (exit code,
/// stdout, stderr); a command still running at the timeout is killed and reported as exit `None`.
fn genesis(args: &[&str]) -> (Option<i32>, String, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genesis"));
    cmd.args(args).env("RUST_BACKTRACE", "0").stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches nothing but the child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE_LIMIT, rlim_max: ADDRESS_SPACE_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run the genesis binary");
    let start = Instant::now();
    while child.try_wait().expect("wait for genesis").is_none() {
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("collect the output of genesis");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn every_command_refuses_every_crafted_file_with_one_clean_line() {
    let root = temp_dir("hostile");
    let hellaswag = root.join("hellaswag.jsonl");
    std::fs::write(&hellaswag, "{}\n").unwrap();
    let hs = hellaswag.to_str().unwrap();
    let mut failures = Vec::new();
    let all = cases(&root);
    for case in &all {
        let f = case.path.to_str().unwrap();
        let work = root.join(format!("{}-out", case.name));
        let w = |s: &str| work.join(s).to_str().unwrap().to_string();
        let commands: Vec<Vec<String>> = [
            vec!["verify", f],
            vec!["sample", "--checkpoint", f, "--device", "cpu", "--max-tokens", "2"],
            vec!["eval", "--checkpoint", f, "--hellaswag", hs, "--device", "cpu"],
            vec!["export", "--checkpoint", f, "--out", &w("export")],
            vec!["import", f, "--out", &w("imported.ckpt")],
            vec![
                "train",
                "--out",
                &w("run"),
                "--init-from",
                f,
                "--data",
                &w("no-data"),
                "--device",
                "cpu",
                "--steps",
                "1",
            ],
        ]
        .into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect();
        for args in commands {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, stdout, stderr) = genesis(&argv);
            let lines: Vec<&str> = stderr.lines().collect();
            let line = lines.first().copied().unwrap_or("");
            let mut wrong = Vec::new();
            if code == Some(0) || code.is_none() {
                wrong.push(format!("exit {code:?}"));
            }
            if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
                wrong.push("a panic".into());
            }
            if lines.len() != 1 || !line.starts_with("error: ") {
                wrong.push(format!("{} stderr lines", lines.len()));
            }
            for m in &case.mentions {
                if !line.contains(m) {
                    wrong.push(format!("no mention of {m:?}"));
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} / genesis {}: {}\n  stderr: {}\n  stdout: {}",
                    case.name,
                    argv[0],
                    wrong.join(", "),
                    stderr.trim_end().replace('\n', "\n          "),
                    stdout.trim_end()
                ));
            }
        }
        println!("{}: {}", case.name, genesis(&["verify", f]).2.trim_end());
    }
    assert!(failures.is_empty(), "{} of {} runs went wrong:\n{}", failures.len(), all.len() * 6, failures.join("\n"));
}

/// The crafted files are what the issue describes: before the checks, their sizes wrapped to match.
#[test]
fn the_crafted_sizes_really_wrap() {
    // n_embd 2^62 in f32: every GPT-2 tensor's numel x 4 is a multiple of 2^64.
    for shape in [vec![4u64, 1 << 62], vec![1 << 62], vec![1 << 62, 3 << 62]] {
        let bytes = shape.iter().fold(4u64, |a, &d| a.wrapping_mul(d));
        assert_eq!(bytes, 0, "{shape:?}");
    }
    // llm.c channels 2^30 with T + Vp + 2 + 13 L = 2^32: the parameter bytes wrap to 0.
    let (c, l, vp) = (1u64 << 30, 1u64, i32::MAX as u64);
    let t = (1u64 << 32) - 2 - 13 * l - vp;
    let total = (vp * c)
        .wrapping_add(t * c)
        .wrapping_add(l.wrapping_mul(12u64.wrapping_mul(c).wrapping_mul(c)).wrapping_add(13 * l * c))
        .wrapping_add(2 * c);
    assert_eq!(total.wrapping_mul(4), 0);
    // max_seq_len 7 * 2^61 + 8 at C = 8 gives wpe the 64 elements of T = 8.
    assert_eq!((7u64 * (1 << 61) + 8).wrapping_mul(8), 64);
}

/// A whole model with fewer tokens than the GPT-2 tokenizer: `verify`, `export` and `import` take it,
/// but `sample`, `eval` and `train` would feed it GPT-2 tokens past its embedding and refuse it.
#[test]
fn commands_that_feed_gpt2_tokens_refuse_a_smaller_vocabulary() {
    let root = temp_dir("small-vocab");
    let ckpt = root.join("small.ckpt");
    checkpoint::save(&ckpt, &Checkpoint::new(small(), 1, init_params(&small(), 1))).unwrap();
    let hellaswag = root.join("hellaswag.jsonl");
    std::fs::write(&hellaswag, r#"{"ctx": "The cat", "endings": ["sat.", "ran.", "ate.", "slept."], "label": 0}"#)
        .unwrap();
    let (f, hs) = (ckpt.to_str().unwrap(), hellaswag.to_str().unwrap());
    let (run, nodata) = (root.join("run"), root.join("no-data"));
    let nodata = nodata.to_str().unwrap();
    assert_eq!(genesis(&["verify", f]).0, Some(0));
    for args in [
        vec!["sample", "--checkpoint", f, "--device", "cpu", "--max-tokens", "2"],
        vec!["eval", "--checkpoint", f, "--hellaswag", hs, "--device", "cpu"],
        vec![
            "train",
            "--out",
            run.to_str().unwrap(),
            "--init-from",
            f,
            "--data",
            nodata,
            "--device",
            "cpu",
            "--steps",
            "1",
        ],
    ] {
        let (code, _, stderr) = genesis(&args);
        assert_eq!(code, Some(1), "genesis {}: {stderr}", args[0]);
        assert!(!stderr.contains("panicked"), "genesis {}: {stderr}", args[0]);
        assert_eq!(stderr.lines().count(), 1, "genesis {}: {stderr}", args[0]);
        for m in ["error: ", "small.ckpt", "vocabulary has 100 tokens", "50257"] {
            assert!(stderr.contains(m), "genesis {}: {stderr:?} should mention {m:?}", args[0]);
        }
    }
}
