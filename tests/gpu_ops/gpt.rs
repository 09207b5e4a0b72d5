//! The whole forward on the GPU (fp32, TF32 off) against the CPU reference: logits and loss, for
//! `tiny` and for a 2-layer 768-wide model with GPT-2's vocabulary.

use super::gpu_or_skip;
use genesis::cpu::gpt::{self, Activations};
use genesis::gpu::gpt::GpuModel;
use genesis::model::{ModelConfig, ParamLayout};
use genesis::rng::Rng;

fn check(cfg: &ModelConfig, b: usize, t: usize, tf32: bool, tol: f64) {
    let layout = ParamLayout::new(cfg);
    let params = gpt::init_params(cfg, 11);
    let mut rng = Rng::new(5);
    let mut tokens = || (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect::<Vec<u32>>();
    let (inputs, targets) = (tokens(), tokens());

    let mut acts = Activations::<f32>::new(cfg, b, t);
    gpt::forward(cfg, &layout, &params, &mut acts, &inputs);
    let cpu_loss = gpt::loss(cfg, &layout, &params, &mut acts, &targets);
    let cpu_logits = gpt::logits(cfg, &layout, &params, &acts);

    let mut model = GpuModel::<f32>::new(cfg, &params, 0, tf32).expect("GpuModel::new");
    model.forward(&inputs, Some(&targets), b, t).unwrap();
    let losses = model.losses().unwrap();
    let gpu_loss = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
    let logits = model.logits().unwrap();
    assert_eq!(logits.len(), cpu_logits.len());
    assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits");
    let max_ref = cpu_logits.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    let max_err = logits.iter().zip(&cpu_logits).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    assert!(max_err / max_ref < tol, "{cfg}: logits differ by {max_err} (max |logit| {max_ref}), tolerance {tol}");
    let rel = (gpu_loss - cpu_loss).abs() / cpu_loss;
    assert!(rel < tol, "{cfg}: GPU loss {gpu_loss} vs CPU {cpu_loss} (relative {rel})");
    for (i, (&g, &c)) in losses.iter().zip(&acts.losses).enumerate() {
        assert!(((g - c) as f64).abs() < tol * 10.0 * (c as f64).abs().max(1.0), "position {i}: loss {g} vs {c}");
    }
}

#[test]
fn tiny_forward_matches_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    check(&ModelConfig::preset("tiny").unwrap(), 3, 37, false, 1e-5);
}

#[test]
fn two_layer_768_forward_matches_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let mut cfg = ModelConfig::preset("gpt2-124m").unwrap();
    cfg.num_layers = 2;
    check(&cfg, 2, 128, false, 1e-5);
    // TF32 matmuls: about 1e-3.
    check(&cfg, 2, 128, true, 3e-3);
}

/// bf16 parameters and activations against the CPU in f32 on the bf16-rounded parameters. Every
/// activation is rounded to an 8-bit mantissa (2^-9 relative) about ten times per block, and the
/// logits are dot products over C bf16 inputs, so logits carry errors of a few 1e-3 of their scale;
/// the mean loss averages them out (llm.c holds its bf16 loss to 0.05).
fn check_bf16(cfg: &ModelConfig, b: usize, t: usize) {
    let layout = ParamLayout::new(cfg);
    let params: Vec<f32> = gpt::init_params(cfg, 11).iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    let mut rng = Rng::new(5);
    let mut tokens = || (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect::<Vec<u32>>();
    let (inputs, targets) = (tokens(), tokens());
    let mut acts = Activations::<f32>::new(cfg, b, t);
    gpt::forward(cfg, &layout, &params, &mut acts, &inputs);
    let cpu_loss = gpt::loss(cfg, &layout, &params, &mut acts, &targets);
    let cpu_logits = gpt::logits(cfg, &layout, &params, &acts);

    let mut model = GpuModel::<half::bf16>::new(cfg, &params, 0, false).expect("GpuModel::new");
    model.forward(&inputs, Some(&targets), b, t).unwrap();
    let losses = model.losses().unwrap();
    let gpu_loss = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
    let logits = model.logits().unwrap();
    assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits");
    let max_ref = cpu_logits.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    let max_err = logits.iter().zip(&cpu_logits).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    println!("{cfg}: bf16 logits max error {max_err:.3e} of {max_ref:.3e}; loss {gpu_loss} vs {cpu_loss}");
    assert!(max_err / max_ref < 3e-2, "{cfg}: bf16 logits differ by {max_err} (max |logit| {max_ref})");
    assert!((gpu_loss - cpu_loss).abs() < 0.02, "{cfg}: bf16 loss {gpu_loss} vs CPU {cpu_loss}");
}

#[test]
fn bf16_forward_is_close_to_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    check_bf16(&ModelConfig::preset("tiny").unwrap(), 3, 37);
    let mut cfg = ModelConfig::preset("gpt2-124m").unwrap();
    cfg.num_layers = 2;
    check_bf16(&cfg, 2, 128);
}

#[test]
fn parameters_come_back_from_the_gpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = gpt::init_params(&cfg, 4);
    let back = GpuModel::<f32>::new(&cfg, &params, 0, false).unwrap().download_params().unwrap();
    assert!(back.iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits()), "f32 round trip changed bits");
    let back = GpuModel::<half::bf16>::new(&cfg, &params, 0, false).unwrap().download_params().unwrap();
    assert!(back.iter().zip(&params).all(|(&a, &b)| a == half::bf16::from_f32(b).to_f32()), "bf16 round trip");
}

#[test]
fn gpu_evaluation_matches_the_cpu_evaluation() {
    if gpu_or_skip().is_none() {
        return;
    }
    use genesis::data::prepare::{prepare, Input, PrepareConfig};
    use genesis::data::source::{Docs, Format, SourceFile};
    use genesis::eval::{evaluate_split, evaluate_split_with, EvalOptions};
    let dir = std::env::temp_dir().join(format!("genesis-gpu-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = (0..400).map(|i| format!("Paragraph {i} counts {} sheep in the field.\n\n", i * 3)).collect();
    std::fs::write(dir.join("t.txt"), text).unwrap();
    let mut pc = PrepareConfig::new("t");
    pc.source.docs = Docs::Paragraphs;
    pc.progress = false;
    let data = dir.join("data");
    prepare(&[Input::local(SourceFile { path: dir.join("t.txt"), format: Format::Text })], &data, &pc).unwrap();

    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = gpt::init_params(&cfg, 2);
    let opts = EvalOptions { seq: Some(32), batch: Some(4), progress: false, ..EvalOptions::default() };
    let cpu = evaluate_split(&cfg, &params, &data, &opts).unwrap();
    let mut gpu = GpuModel::<f32>::new(&cfg, &params, 0, false).unwrap();
    let got = evaluate_split_with(&mut gpu, &data, &opts).unwrap();
    assert_eq!((got.tokens, got.bytes), (cpu.tokens, cpu.bytes));
    assert!((got.loss - cpu.loss).abs() < 1e-5 * cpu.loss, "GPU eval loss {} vs CPU {}", got.loss, cpu.loss);
    std::fs::remove_dir_all(&dir).unwrap();
}
