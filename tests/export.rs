//! Taking a model home: `genesis export` (Hugging Face GPT-2 directories), reading Hugging Face and
//! llm.c files through `weights::load`, `genesis import` and `genesis verify`, checked against
//! transformers itself (a committed fixture, and live when Python has transformers).

mod common;

use common::{assert_mentions, assert_same_bits, err_string, genesis, output_text, repo_root, temp_dir, text};
use genesis::checkpoint::{self, Checkpoint};
use genesis::cpu::gpt::{self, Activations};
use genesis::hf::{self, Provenance};
use genesis::llmc;
use genesis::model::{ModelConfig, Param, ParamLayout};
use genesis::rng::Rng;
use genesis::safetensors::{self, Dtype, TensorOut};
use genesis::weights::{self, WeightsFormat};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn tiny() -> ModelConfig {
    ModelConfig::preset("tiny").unwrap()
}

/// Parameters with every tensor non-trivial (biases and LayerNorm too), so a misplaced or transposed
/// tensor changes values and losses: N(0, 0.1), LayerNorm scales 1 + N(0, 0.1), padded vocab rows 0.
fn random_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut p: Vec<f32> = (0..layout.total).map(|_| (rng.normal() * 0.1) as f32).collect();
    for name in [Param::Ln1w, Param::Ln2w, Param::Lnfw] {
        layout.slice_mut(&mut p, name).iter_mut().for_each(|x| *x += 1.0);
    }
    layout.slice_mut(&mut p, Param::Wte)[cfg.vocab_size * cfg.channels..].fill(0.0);
    p
}

fn provenance() -> Provenance {
    Provenance { source: "test".into(), source_format: "test params".into(), step: Some(42) }
}

fn export_tiny(dir: &Path, params: &[f32], dtype: Dtype) -> hf::ExportInfo {
    hf::export(dir, &tiny(), params, dtype, &provenance()).unwrap()
}

/// Genesis's mean loss of predicting `tokens[1..]` from `tokens[..n-1]` (one sequence, f32 forward).
fn genesis_loss(cfg: &ModelConfig, params: &[f32], tokens: &[u32]) -> (f64, Vec<f32>) {
    let t = tokens.len() - 1;
    let layout = ParamLayout::new(cfg);
    let mut acts = Activations::<f32>::new(cfg, 1, t);
    gpt::forward(cfg, &layout, params, &mut acts, &tokens[..t]);
    let loss = gpt::loss(cfg, &layout, params, &mut acts, &tokens[1..]);
    (loss, gpt::logits(cfg, &layout, params, &acts))
}

#[test]
fn f32_export_loads_bit_identical_with_padded_rows_zero() {
    let cfg = tiny();
    let params = random_params(&cfg, 1);
    let mut dirty = params.clone();
    // Padded vocab rows are not exported: whatever they held, they come back as zeros.
    ParamLayout::new(&cfg).slice_mut(&mut dirty, Param::Wte)[cfg.vocab_size * cfg.channels..].fill(3.0);
    let dir = temp_dir("export-f32");
    let info = export_tiny(&dir, &dirty, Dtype::F32);
    let w = weights::load(&dir).unwrap();
    assert_eq!(w.config, cfg);
    assert_eq!(w.format, WeightsFormat::Safetensors);
    assert_eq!(w.step, Some(42));
    assert_same_bits("f32 export round trip", &w.params, &params);
    // The file itself: unpadded vocabulary, no lm_head, the sha256 genesis.json records.
    let (header, len) = safetensors::read_header(&dir.join(hf::MODEL_FILE)).unwrap();
    assert_eq!(header.get("transformer.wte.weight").unwrap().shape, vec![cfg.vocab_size, cfg.channels]);
    assert!(header.get("lm_head.weight").is_none());
    assert_eq!(header.tensors.len(), 4 + 12 * cfg.num_layers);
    assert_eq!(len, info.bytes);
    assert_eq!(genesis::util::sha256_file(&dir.join(hf::MODEL_FILE)).unwrap(), info.sha256);
    // Only the three files, no temporaries left behind.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "genesis.json", "model.safetensors"]);
}

#[test]
fn export_stores_conv1d_weights_transposed_with_hf_config() {
    let cfg = tiny();
    let params = random_params(&cfg, 2);
    let dir = temp_dir("export-layout");
    export_tiny(&dir, &params, Dtype::F32);
    let file = safetensors::SafetensorsFile::open(&dir.join(hf::MODEL_FILE)).unwrap();
    let c = cfg.channels;
    let layout = ParamLayout::new(&cfg);
    // Every Conv1D weight of every layer: ours (out, in) is theirs (in, out) transposed, element for
    // element (a square attn.c_proj left untransposed keeps its shape, so only the values tell).
    let conv1d = [
        ("attn.c_attn", Param::Qkvw, c, 3 * c),
        ("attn.c_proj", Param::AttProjw, c, c),
        ("mlp.c_fc", Param::Fcw, c, 4 * c),
        ("mlp.c_proj", Param::FcProjw, 4 * c, c),
    ];
    for l in 0..cfg.num_layers {
        for (name, param, inp, out) in conv1d {
            let t = file.header.get(&format!("transformer.h.{l}.{name}.weight")).unwrap().clone();
            assert_eq!(t.shape, vec![inp, out], "{name}");
            let theirs = file.values(&t).unwrap();
            let ours = layout.layer(&params, param, l);
            for o in 0..out {
                for i in 0..inp {
                    assert_eq!(
                        theirs[i * out + o].to_bits(),
                        ours[o * inp + i].to_bits(),
                        "h.{l}.{name}.weight[{i}][{o}]"
                    );
                }
            }
        }
    }
    let bias = file.values(file.header.get("transformer.h.0.attn.c_attn.bias").unwrap()).unwrap();
    assert_same_bits("c_attn.bias", &bias, layout.layer(&params, Param::Qkvb, 0));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(hf::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(config["n_embd"], c);
    assert_eq!(config["n_layer"], cfg.num_layers);
    assert_eq!(config["n_head"], cfg.num_heads);
    assert_eq!(config["n_positions"], cfg.max_seq_len);
    assert_eq!(config["vocab_size"], cfg.vocab_size);
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["eos_token_id"], 50256);
    assert_eq!(config["torch_dtype"], "float32");
    let info: hf::ExportInfo = serde_json::from_slice(&std::fs::read(dir.join(hf::GENESIS_FILE)).unwrap()).unwrap();
    assert_eq!((info.dtype.as_str(), info.step, info.config), ("f32", Some(42), cfg));
    assert_eq!(info.source, "test");
}

#[test]
fn bf16_export_holds_the_bf16_rounding_of_each_value() {
    let cfg = tiny();
    let params = random_params(&cfg, 3);
    let (d32, d16) = (temp_dir("export-bf16-a"), temp_dir("export-bf16-b"));
    let i32_ = export_tiny(&d32, &params, Dtype::F32);
    let i16_ = export_tiny(&d16, &params, Dtype::BF16);
    let w = weights::load(&d16.join(hf::MODEL_FILE)).unwrap();
    let rounded: Vec<f32> = params.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_same_bits("bf16 export", &w.params, &rounded);
    assert!(rounded.iter().zip(&params).any(|(a, b)| a != b), "rounding should change some values");
    // Half the bytes, give or take the header.
    assert!(i16_.bytes * 2 - i32_.bytes < 16 * 1024, "{} vs {}", i16_.bytes, i32_.bytes);
}

/// Rewrites the f32 export at `dir` the way the Hugging Face hub's `gpt2` file is laid out: names
/// without `transformer.`, `h.{i}.attn.bias` / `attn.masked_bias` buffers, in `dtype`; plus
/// `lm_head.weight` when `lm_head` gives it.
fn write_hub_style(dir: &Path, out: &Path, dtype: Dtype, lm_head: Option<&[f32]>) {
    let file = safetensors::SafetensorsFile::open(&dir.join(hf::MODEL_FILE)).unwrap();
    let cfg = tiny();
    let mut outs = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    for t in &file.header.tensors {
        outs.push(TensorOut { name: t.name["transformer.".len()..].to_string(), dtype, shape: t.shape.clone() });
        data.push(file.values(t).unwrap());
    }
    let n = cfg.max_seq_len;
    for l in 0..cfg.num_layers {
        outs.push(TensorOut { name: format!("h.{l}.attn.bias"), dtype, shape: vec![1, 1, n, n] });
        data.push((0..n * n).map(|i| f32::from(u8::from(i % n <= i / n))).collect());
        outs.push(TensorOut { name: format!("h.{l}.attn.masked_bias"), dtype, shape: vec![] });
        data.push(vec![-1e4]);
    }
    if let Some(head) = lm_head {
        outs.push(TensorOut { name: "lm_head.weight".into(), dtype, shape: vec![cfg.vocab_size, cfg.channels] });
        data.push(head.to_vec());
    }
    std::fs::create_dir_all(out).unwrap();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::write_safetensors(&out.join(hf::MODEL_FILE), &meta, &outs, |i, buf| {
        dtype.encode(&data[i], buf);
        Ok(())
    })
    .unwrap();
    std::fs::copy(dir.join(hf::CONFIG_FILE), out.join(hf::CONFIG_FILE)).unwrap();
}

#[test]
fn hub_style_files_load_in_f32_bf16_and_f16() {
    let cfg = tiny();
    let params = random_params(&cfg, 4);
    let dir = temp_dir("hub-src");
    export_tiny(&dir, &params, Dtype::F32);
    for (dtype, round) in [
        (Dtype::F32, (|x| x) as fn(f32) -> f32),
        (Dtype::BF16, |x| half::bf16::from_f32(x).to_f32()),
        (Dtype::F16, |x| half::f16::from_f32(x).to_f32()),
    ] {
        let hub = temp_dir("hub");
        write_hub_style(&dir, &hub, dtype, None);
        let w = weights::load(&hub.join(hf::MODEL_FILE)).unwrap();
        assert_eq!(w.config.padded_vocab_size, 50304, "vocab 50257 pads to 50304");
        assert_eq!(w.step, None);
        let want: Vec<f32> = params.iter().map(|&x| round(x)).collect();
        assert_same_bits(&format!("hub-style {dtype}"), &w.params, &want);
    }
    // A stored lm_head equal to wte (tied) loads; a different one is refused.
    let wte = &params[..cfg.vocab_size * cfg.channels];
    let hub = temp_dir("hub-lmhead");
    write_hub_style(&dir, &hub, Dtype::F32, Some(wte));
    assert_same_bits("hub with tied lm_head", &weights::load(&hub).unwrap().params, &params);
    let mut other = wte.to_vec();
    other[7] += 1.0;
    write_hub_style(&dir, &hub, Dtype::F32, Some(&other));
    assert_mentions(&err_string(weights::load(&hub)), &["model.safetensors", "lm_head.weight", "untied"]);
}

#[test]
fn refuses_configs_and_tensors_genesis_cannot_run() {
    let cfg = tiny();
    let dir = temp_dir("refuse");
    export_tiny(&dir, &random_params(&cfg, 5), Dtype::F32);
    let config_path = dir.join(hf::CONFIG_FILE);
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut c = original.clone();
        c[field] = value;
        std::fs::write(&config_path, serde_json::to_vec(&c).unwrap()).unwrap();
        err_string(weights::load(&dir))
    };
    let cp = config_path.display().to_string();
    assert_mentions(&with("activation_function", "relu".into()), &[&cp, "activation_function", "relu", "gelu_new"]);
    assert_mentions(&with("layer_norm_epsilon", 1e-6.into()), &[&cp, "layer_norm_epsilon", "1e-5"]);
    assert_mentions(&with("model_type", "llama".into()), &[&cp, "model_type", "llama"]);
    // config says a context of 32, the file's wpe has 64 rows.
    let msg = with("n_positions", 32.into());
    assert_mentions(&msg, &["model.safetensors", "transformer.wpe.weight", "[64, 64]", "[32, 64]"]);
    std::fs::write(&config_path, serde_json::to_vec(&original).unwrap()).unwrap();
    std::fs::remove_file(&config_path).unwrap();
    assert_mentions(&err_string(weights::load(&dir)), &[&cp, "config.json"]);
    std::fs::write(&config_path, serde_json::to_vec(&original).unwrap()).unwrap();
    // A missing tensor: drop one from the file.
    let file = safetensors::SafetensorsFile::open(&dir.join(hf::MODEL_FILE)).unwrap();
    let kept: Vec<_> = file.header.tensors.iter().filter(|t| t.name != "transformer.h.1.ln_2.bias").cloned().collect();
    let outs: Vec<TensorOut> =
        kept.iter().map(|t| TensorOut { name: t.name.clone(), dtype: Dtype::F32, shape: t.shape.clone() }).collect();
    let data: Vec<Vec<f32>> = kept.iter().map(|t| file.values(t).unwrap()).collect();
    drop(file);
    std::fs::remove_file(dir.join(hf::GENESIS_FILE)).unwrap();
    safetensors::write_safetensors(&dir.join(hf::MODEL_FILE), &BTreeMap::new(), &outs, |i, buf| {
        Dtype::F32.encode(&data[i], buf);
        Ok(())
    })
    .unwrap();
    assert_mentions(&err_string(weights::load(&dir)), &["model.safetensors", "transformer.h.1.ln_2.bias", "missing"]);
}

/// The config.json fields that change what GPT-2 computes in ways Genesis does not (attention
/// scaling, cross-attention, an MLP width other than 4 x n_embd) are refused naming the file and field.
#[test]
fn refuses_attention_and_mlp_variants_genesis_does_not_compute() {
    let dir = temp_dir("refuse-variants");
    export_tiny(&dir, &random_params(&tiny(), 10), Dtype::F32);
    let config_path = dir.join(hf::CONFIG_FILE);
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let cp = config_path.display().to_string();
    for (field, value) in [
        ("scale_attn_weights", false.into()),
        ("scale_attn_by_inverse_layer_idx", true.into()),
        ("add_cross_attention", true.into()),
        ("n_inner", 128.into()),
    ] {
        let mut c = original.clone();
        c[field] = value;
        std::fs::write(&config_path, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_mentions(&err_string(weights::load(&dir)), &[&cp, &format!("field {field} is")]);
    }
    // The values Genesis does compute load: n_inner 4 x n_embd as well as null.
    let mut c = original.clone();
    c["n_inner"] = (4 * tiny().channels).into();
    std::fs::write(&config_path, serde_json::to_vec(&c).unwrap()).unwrap();
    weights::load(&dir).unwrap();
}

#[test]
fn llmc_fp32_and_bf16_files_load_and_import() {
    let cfg = tiny();
    let params = random_params(&cfg, 6);
    let dir = temp_dir("llmc");
    let f32_path = dir.join("model_fp32.bin");
    llmc::write_model(&f32_path, &cfg, &params).unwrap();
    // bf16 (version 5): the fp32 file's header with the version changed, then bf16 values.
    let bytes = std::fs::read(&f32_path).unwrap();
    let mut bf16 = bytes[..llmc::HEADER_BYTES].to_vec();
    bf16[4..8].copy_from_slice(&llmc::VERSION_BF16.to_le_bytes());
    for p in &params {
        bf16.extend_from_slice(&half::bf16::from_f32(*p).to_bits().to_le_bytes());
    }
    let bf16_path = dir.join("model_bf16.bin");
    std::fs::write(&bf16_path, &bf16).unwrap();
    let rounded: Vec<f32> = params.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    for (path, want) in [(&f32_path, &params), (&bf16_path, &rounded)] {
        let w = weights::load(path).unwrap();
        assert_eq!((w.config, w.format), (cfg, WeightsFormat::LlmC));
        assert_same_bits(&path.display().to_string(), &w.params, want);
        let ckpt = dir.join(format!("{}.ckpt", path.file_stem().unwrap().to_str().unwrap()));
        let out = genesis(&["import", path.to_str().unwrap(), "--out", ckpt.to_str().unwrap()]);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_mentions(&output_text(&out), &["2 layers, 64 channels", "llm.c"]);
        let c = checkpoint::load(&ckpt).unwrap();
        assert_eq!((c.config, c.step), (cfg, 0));
        assert_same_bits("imported checkpoint", c.params(), want);
        let again = genesis(&["import", path.to_str().unwrap(), "--out", ckpt.to_str().unwrap()]);
        assert!(!again.status.success(), "import must not replace an existing checkpoint without --force");
        assert_mentions(&output_text(&again), &["already exists", "--force"]);
    }
}

#[test]
fn verify_passes_whole_files() {
    let cfg = tiny();
    let params = random_params(&cfg, 7);
    let dir = temp_dir("verify-whole");
    export_tiny(&dir.join("export"), &params, Dtype::BF16);
    let r = weights::verify(&dir.join("export")).unwrap();
    assert_eq!((r.format, r.config, r.step), (WeightsFormat::Safetensors, cfg, Some(42)));
    assert_mentions(&r.checked, &["BF16", "sha256 matches"]);
    let ckpt = dir.join("a.ckpt");
    checkpoint::save(&ckpt, &Checkpoint::new(cfg, 9, params.clone())).unwrap();
    let r = weights::verify(&ckpt).unwrap();
    assert_eq!((r.format, r.step), (WeightsFormat::Checkpoint, Some(9)));
    let bin = dir.join("m.bin");
    llmc::write_model(&bin, &cfg, &params).unwrap();
    assert_eq!(weights::verify(&bin).unwrap().format, WeightsFormat::LlmC);
    let fixture = repo_root().join("tests/fixtures/hf_tiny");
    assert_mentions(&weights::verify(&fixture).unwrap().checked, &["no genesis.json"]);
}

/// `genesis verify` sizes an llm.c bf16 file (version 5) at two bytes a parameter: the whole file
/// passes, one parameter short is reported truncated.
#[test]
fn verify_sizes_llmc_bf16_files_by_their_version() {
    let cfg = tiny();
    let params = random_params(&cfg, 9);
    let dir = temp_dir("verify-bf16");
    let bin = dir.join("m.bin");
    llmc::write_model(&bin, &cfg, &params).unwrap();
    let mut bf16 = std::fs::read(&bin).unwrap()[..llmc::HEADER_BYTES].to_vec();
    bf16[4..8].copy_from_slice(&llmc::VERSION_BF16.to_le_bytes());
    for p in &params {
        bf16.extend_from_slice(&half::bf16::from_f32(*p).to_bits().to_le_bytes());
    }
    std::fs::write(&bin, &bf16).unwrap();
    let r = weights::verify(&bin).unwrap();
    assert_eq!((r.format, r.config), (WeightsFormat::LlmC, cfg));
    assert_mentions(&r.checked, &["version 5"]);
    std::fs::write(&bin, &bf16[..bf16.len() - 2]).unwrap();
    let msg = err_string(weights::verify(&bin));
    assert_mentions(&msg, &[&bin.display().to_string(), "truncated", &format!("implies {} bytes", bf16.len())]);
}

#[test]
fn verify_names_what_is_broken() {
    let cfg = tiny();
    let params = random_params(&cfg, 8);
    let dir = temp_dir("verify-broken");
    let export = dir.join("export");
    export_tiny(&export, &params, Dtype::BF16);
    let st = export.join(hf::MODEL_FILE);
    let good = std::fs::read(&st).unwrap();
    let (header, _) = safetensors::read_header(&st).unwrap();
    let st_name = st.display().to_string();

    // Truncated in the middle of a tensor: the message names it and its byte range.
    let t = header.get("transformer.h.1.mlp.c_fc.weight").unwrap();
    let (a, b) = (header.data_start + t.begin, header.data_start + t.end);
    let cut = a + 10;
    std::fs::write(&st, &good[..cut as usize]).unwrap();
    let msg = err_string(weights::verify(&export));
    assert_mentions(&msg, &[&st_name, "truncated", &t.name, &format!("{a}..{b}"), &format!("has {cut}")]);
    assert_mentions(&err_string(weights::load(&export)), &["truncated", &t.name]);
    // One byte too many.
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&st, &longer).unwrap();
    assert_mentions(&err_string(weights::verify(&export)), &[&st_name, "1 extra bytes"]);
    // A flipped byte inside a tensor: the structure is fine, the sha256 is not.
    let mut flipped = good.clone();
    flipped[(a + 100) as usize] ^= 0x40;
    std::fs::write(&st, &flipped).unwrap();
    assert_mentions(&err_string(weights::verify(&export)), &[&st_name, "sha256", "genesis.json", "again"]);
    std::fs::write(&st, &good).unwrap();
    weights::verify(&export).unwrap();

    // Checkpoints: truncation and a flipped byte each name the 'params' section.
    let ckpt = dir.join("b.ckpt");
    checkpoint::save(&ckpt, &Checkpoint::new(cfg, 3, params.clone())).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    let section = checkpoint::read_info(&ckpt).unwrap().sections[0].clone();
    let ck_name = ckpt.display().to_string();
    std::fs::write(&ckpt, &bytes[..bytes.len() - 1000]).unwrap();
    assert_mentions(&err_string(weights::verify(&ckpt)), &[&ck_name, "truncated", "'params'"]);
    let mut flipped = bytes.clone();
    flipped[section.offset as usize + 12_345] ^= 1;
    std::fs::write(&ckpt, &flipped).unwrap();
    assert_mentions(&err_string(weights::verify(&ckpt)), &[&ck_name, "'params'", "checksum"]);

    // llm.c: size against the header.
    let bin = dir.join("m.bin");
    llmc::write_model(&bin, &cfg, &params).unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 4]).unwrap();
    let msg = err_string(weights::verify(&bin));
    assert_mentions(&msg, &[&bin.display().to_string(), "truncated", &bytes.len().to_string()]);
}

/// The committed fixture, made by transformers (scripts/make_hf_fixture.py): Genesis's CPU forward on
/// the loaded weights gives transformers' loss and logits.
#[test]
fn hf_fixture_matches_transformers() {
    let dir = repo_root().join("tests/fixtures/hf_tiny");
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("expected.json"))
            .expect("tests/fixtures/hf_tiny/expected.json missing; run python3 scripts/make_hf_fixture.py"),
    )
    .unwrap();
    let w = weights::load(&dir).unwrap();
    let cfg = w.config;
    assert_eq!((cfg.vocab_size, cfg.padded_vocab_size, cfg.num_layers, cfg.channels), (500, 512, 2, 64));
    let wte = ParamLayout::new(&cfg).slice(&w.params, Param::Wte).to_vec();
    assert!(wte[500 * 64..].iter().all(|&x| x == 0.0), "padded rows must be zero");
    let tokens: Vec<u32> = expected["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let (loss, logits) = genesis_loss(&cfg, &w.params, &tokens);
    let want = expected["loss"].as_f64().unwrap();
    println!("fixture: Genesis loss {loss}, transformers {want} (difference {:.2e})", loss - want);
    assert!((loss - want).abs() <= 1e-5 * want.abs(), "loss {loss} vs transformers {want}");
    for entry in expected["logits"].as_array().unwrap() {
        let (p, t, v) =
            (entry[0].as_u64().unwrap() as usize, entry[1].as_u64().unwrap() as usize, entry[2].as_f64().unwrap());
        let got = logits[p * cfg.vocab_size + t] as f64;
        assert!(
            (got - v).abs() <= 1e-4 * (1.0 + v.abs()),
            "logit at position {p}, token {t}: {got} vs transformers {v}"
        );
    }
}

/// transformers' loss for the directory `dir` on `tokens` (scripts/hf_loss.py).
fn transformers_loss(dir: &Path, tokens: &[u32]) -> f64 {
    let script = repo_root().join("scripts/hf_loss.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(dir).args(tokens.iter().map(u32::to_string));
    let out = cmd.output().expect("run python3");
    assert!(out.status.success(), "scripts/hf_loss.py failed:\n{}", output_text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or("")).expect("hf_loss.py prints JSON");
    v["loss"].as_f64().unwrap()
}

/// Live round trip: a Genesis `tiny` model exported in f32 and bf16, loaded by transformers'
/// GPT2LMHeadModel.from_pretrained, gives Genesis's loss.
#[test]
#[ignore = "needs python3 with transformers and torch"]
fn transformers_loads_exports_with_the_same_loss() {
    let probe = Command::new("python3").args(["-c", "import transformers, torch"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string();
            println!("skipped the live transformers round trip: python3 cannot import transformers ({why})");
            return;
        }
        Err(e) => {
            println!("skipped the live transformers round trip: python3 is not available ({e})");
            return;
        }
    }
    let cfg = tiny();
    let params = random_params(&cfg, 9);
    let mut rng = Rng::new(10);
    let tokens: Vec<u32> = (0..33).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let rounded: Vec<f32> = params.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    for (dtype, ours) in [(Dtype::F32, &params), (Dtype::BF16, &rounded)] {
        let dir = temp_dir("live");
        export_tiny(&dir, &params, dtype);
        let (want, _) = genesis_loss(&cfg, ours, &tokens);
        let got = transformers_loss(&dir, &tokens);
        println!("live {dtype}: Genesis loss {want}, transformers {got} (difference {:.2e})", got - want);
        assert!((got - want).abs() <= 2e-5 * want, "{dtype}: transformers loss {got} vs Genesis {want}");
    }
}

/// The user's path through the binary: export (default bf16), verify, sample from the export, import
/// it back, and verify failing with exit 1 on a damaged copy.
#[test]
fn cli_export_verify_sample_import() {
    let cfg = tiny();
    let dir = temp_dir("cli");
    let ckpt = dir.join("run.ckpt");
    checkpoint::save(&ckpt, &Checkpoint::new(cfg, 77, random_params(&cfg, 11))).unwrap();
    let export = dir.join("home");
    let (c, e) = (ckpt.to_str().unwrap(), export.to_str().unwrap());
    let out = genesis(&["export", "--checkpoint", c, "--out", e]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_mentions(&output_text(&out), &["step 77", "bf16", "genesis verify"]);
    let out = genesis(&["verify", e]);
    assert!(out.status.success(), "{}", output_text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with(&format!("{e}: whole (")), "{line}");
    assert_mentions(&line, &["step 77", "sha256 matches"]);
    let out = genesis(&["sample", "--checkpoint", e, "--max-tokens", "5", "--seed", "1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // The export is bf16, so the CPU's bf16 weights (the default) are exactly the file's values and
    // f32 weights hold the same numbers: only the order of the sums differs, and the text does not.
    let wide = genesis(&["sample", "--checkpoint", e, "--max-tokens", "5", "--seed", "1", "--weights", "f32"]);
    assert!(wide.status.success(), "{}", output_text(&wide));
    assert_eq!(text(&wide.stdout), text(&out.stdout), "bf16 and f32 weights sample different text");
    let back = dir.join("back.ckpt");
    let out = genesis(&["import", e, "--out", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(genesis(&["verify", back.to_str().unwrap()]).status.success());
    let st = export.join(hf::MODEL_FILE);
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&st, &bytes).unwrap();
    let out = genesis(&["verify", e]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_mentions(&output_text(&out), &["model.safetensors", "sha256"]);
    let out = genesis(&["export", "--checkpoint", c, "--out", e, "--dtype", "int8"]);
    assert!(!out.status.success());
    assert_mentions(&output_text(&out), &["--dtype int8", "bf16"]);
}

/// A file that is not what its extension says is reported as not being that format, by `verify`
/// and by everything that loads weights: a zeroed checkpoint, one that reads like /dev/zero, and an
/// llm.c file with the wrong magic.
#[test]
fn verify_names_the_format_the_file_claims() {
    let dir = temp_dir("verify-claims");
    let zeroed = dir.join("zeroed.ckpt");
    std::fs::write(&zeroed, vec![0u8; 4096]).unwrap();
    let endless = dir.join("endless.ckpt");
    std::os::unix::fs::symlink("/dev/zero", &endless).unwrap();
    let bin = dir.join("model.bin");
    let mut bytes = vec![0u8; 2048];
    bytes[..4].copy_from_slice(&12345i32.to_le_bytes());
    std::fs::write(&bin, &bytes).unwrap();

    for ckpt in [&zeroed, &endless] {
        let want = format!(
            "{} is not a Genesis checkpoint: a checkpoint starts with GENESIS, but it starts with zero bytes; the \
             file is damaged or was not written by genesis train: copy it again, or use an earlier checkpoint",
            ckpt.display()
        );
        assert_eq!(err_string(weights::verify(ckpt)), want);
        assert_eq!(err_string(weights::load(ckpt)), want);
        let out = genesis(&["verify", ckpt.to_str().unwrap()]);
        assert!(
            !out.status.success() && output_text(&out).contains(&want) && !output_text(&out).contains("safetensors")
        );
    }
    let msg = err_string(weights::verify(&bin));
    assert_mentions(
        &msg,
        &[&bin.display().to_string(), "is not an llm.c model file", "20240326", "magic number is 12345"],
    );
    assert!(!msg.contains("safetensors"), "{msg}");
    assert_eq!(err_string(weights::load(&bin)), msg);
    let out = genesis(&["verify", bin.to_str().unwrap()]);
    assert!(!out.status.success() && output_text(&out).contains(&msg), "{}", output_text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}
