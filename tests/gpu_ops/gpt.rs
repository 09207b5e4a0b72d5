//! The whole model on the GPU against the CPU reference, for `tiny` and for a 2-layer 768-wide model
//! with GPT-2's vocabulary: the forward (logits and loss), a training step's loss and every gradient
//! tensor, ten AdamW steps and determinism, in fp32 (TF32 off) and in bf16 mixed precision.

use super::common::{assert_same_bits, max_abs, max_abs_diff, paragraph_dataset, temp_dir};
use super::{gpu_or_skip, max_abs_diff_f64, rel_l2};
use genesis::cpu::gpt::{self, Activations};
use genesis::gpu::adamw::{round_params_host, sr_seed};
use genesis::gpu::gpt::GpuModel;
use genesis::gpu::{BiasGrad, Float, GeluFusion, Kernels};
use genesis::model::{ModelConfig, ParamLayout};
use genesis::rng::Rng;

/// GPT-2 small cut to 2 layers: 768 wide, GPT-2's vocabulary.
fn two_layer_768() -> ModelConfig {
    let mut cfg = ModelConfig::preset("gpt2-124m").unwrap();
    cfg.num_layers = 2;
    cfg
}

/// One forward of a batch (drawn with seed 5) on the CPU in f32 and on the GPU in `T` (TF32 as
/// `tf32`), both from `params`.
struct Forward {
    cpu_loss: f64,
    /// The CPU's loss at each position.
    cpu_losses: Vec<f32>,
    cpu_logits: Vec<f32>,
    /// The mean of the GPU's per-position losses.
    gpu_loss: f64,
    gpu_losses: Vec<f32>,
    logits: Vec<f32>,
}

impl Forward {
    fn run<T: Float>(cfg: &ModelConfig, params: &[f32], b: usize, t: usize, tf32: bool) -> Forward {
        let layout = ParamLayout::new(cfg);
        let (inputs, targets) = batch(cfg, b * t, 5);
        let mut acts = Activations::<f32>::new(cfg, b, t);
        gpt::forward(cfg, &layout, params, &mut acts, &inputs);
        let cpu_loss = gpt::loss(cfg, &layout, params, &mut acts, &targets);
        let cpu_logits = gpt::logits(cfg, &layout, params, &acts);

        let mut model = GpuModel::<T>::new(cfg, params, 0, tf32).expect("GpuModel::new");
        model.forward(&inputs, Some(&targets), b, t).unwrap();
        let gpu_losses = model.losses().unwrap();
        let gpu_loss = gpu_losses.iter().map(|&l| l as f64).sum::<f64>() / gpu_losses.len() as f64;
        let logits = model.logits().unwrap();
        Forward { cpu_loss, cpu_losses: acts.losses.clone(), cpu_logits, gpu_loss, gpu_losses, logits }
    }

    /// (max |CPU logit|, max |GPU logit - CPU logit|), after checking every GPU logit is finite.
    fn logits_error(&self) -> (f64, f64) {
        assert!(self.logits.iter().all(|x| x.is_finite()), "non-finite logits");
        (f64::from(max_abs(&self.cpu_logits)), max_abs_diff_f64(&self.logits, &self.cpu_logits))
    }
}

fn check(cfg: &ModelConfig, b: usize, t: usize, tf32: bool, tol: f64) {
    let f = Forward::run::<f32>(cfg, &gpt::init_params(cfg, 11), b, t, tf32);
    let (cpu_loss, gpu_loss) = (f.cpu_loss, f.gpu_loss);
    assert_eq!(f.logits.len(), f.cpu_logits.len());
    let (max_ref, max_err) = f.logits_error();
    assert!(max_err / max_ref < tol, "{cfg}: logits differ by {max_err} (max |logit| {max_ref}), tolerance {tol}");
    let rel = (gpu_loss - cpu_loss).abs() / cpu_loss;
    assert!(rel < tol, "{cfg}: GPU loss {gpu_loss} vs CPU {cpu_loss} (relative {rel})");
    for (i, (&g, &c)) in f.gpu_losses.iter().zip(&f.cpu_losses).enumerate() {
        assert!(((g - c) as f64).abs() < tol * 10.0 * (c as f64).abs().max(1.0), "position {i}: loss {g} vs {c}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tiny_forward_matches_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    check(&ModelConfig::preset("tiny").unwrap(), 3, 37, false, 1e-5);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn two_layer_768_forward_matches_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = two_layer_768();
    check(&cfg, 2, 128, false, 1e-5);
    // TF32 matmuls: about 1e-3.
    check(&cfg, 2, 128, true, 3e-3);
}

/// bf16 parameters and activations against the CPU in f32 on the bf16-rounded parameters. Every
/// activation is rounded to an 8-bit mantissa (2^-9 relative) about ten times per block, and the
/// logits are dot products over C bf16 inputs, so logits carry errors of a few 1e-3 of their scale;
/// the mean loss averages them out (llm.c holds its bf16 loss to 0.05).
fn check_bf16(cfg: &ModelConfig, b: usize, t: usize) {
    let params: Vec<f32> = gpt::init_params(cfg, 11).iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    let f = Forward::run::<half::bf16>(cfg, &params, b, t, false);
    let (cpu_loss, gpu_loss) = (f.cpu_loss, f.gpu_loss);
    let (max_ref, max_err) = f.logits_error();
    println!("{cfg}: bf16 logits max error {max_err:.3e} of {max_ref:.3e}; loss {gpu_loss} vs {cpu_loss}");
    assert!(max_err / max_ref < 3e-2, "{cfg}: bf16 logits differ by {max_err} (max |logit| {max_ref})");
    assert!((gpu_loss - cpu_loss).abs() < 0.02, "{cfg}: bf16 loss {gpu_loss} vs CPU {cpu_loss}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_forward_is_close_to_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    check_bf16(&ModelConfig::preset("tiny").unwrap(), 3, 37);
    check_bf16(&two_layer_768(), 2, 128);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn parameters_come_back_from_the_gpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = gpt::init_params(&cfg, 4);
    let back = GpuModel::<f32>::new(&cfg, &params, 0, false).unwrap().download_params().unwrap();
    assert_same_bits("f32 round trip", &back, &params);
    let back = GpuModel::<half::bf16>::new(&cfg, &params, 0, false).unwrap().download_params().unwrap();
    assert!(back.iter().zip(&params).all(|(&a, &b)| a == half::bf16::from_f32(b).to_f32()), "bf16 round trip");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_evaluation_matches_the_cpu_evaluation() {
    if gpu_or_skip().is_none() {
        return;
    }
    use genesis::eval::{evaluate_split, evaluate_split_with, EvalOptions};
    let dir = temp_dir("gpu-eval");
    let text: String = (0..400).map(|i| format!("Paragraph {i} counts {} sheep in the field.\n\n", i * 3)).collect();
    let data = paragraph_dataset(&dir, "t", &text);

    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = gpt::init_params(&cfg, 2);
    let opts = EvalOptions { seq: Some(32), batch: Some(4), progress: false, ..EvalOptions::default() };
    let cpu = evaluate_split(&cfg, &params, &data, &opts).unwrap();
    // As `genesis eval` builds it: the engine for the precision, scored through `Scorer`.
    let mut gpu = genesis::gpu::engine::gpu_engine(
        &cfg,
        &params,
        0,
        genesis::gpu::Precision::Fp32,
        false,
        genesis::gpu::StepSync::Micro,
    )
    .unwrap();
    let got = evaluate_split_with(&mut gpu, &data, &opts).unwrap();
    assert_eq!((got.tokens, got.bytes), (cpu.tokens, cpu.bytes));
    assert!((got.loss - cpu.loss).abs() < 1e-5 * cpu.loss, "GPU eval loss {} vs CPU {}", got.loss, cpu.loss);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- training (fp32) --------------------------------------------------------------------------

use genesis::cpu::adamw::{clip_grad_norm, AdamW, AdamWConfig};
use genesis::model::Param;

fn batch(cfg: &ModelConfig, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut tokens = || (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect::<Vec<u32>>();
    (tokens(), tokens())
}

/// One forward and backward on the CPU from `params`: the loss and the gradients (accumulated from
/// zero) for `dloss` per position.
fn cpu_gradients(
    cfg: &ModelConfig,
    params: &[f32],
    acts: &mut Activations<f32>,
    inputs: &[u32],
    targets: &[u32],
    dloss: f32,
) -> (f64, Vec<f32>) {
    let layout = ParamLayout::new(cfg);
    let mut grads = vec![0.0f32; layout.total];
    gpt::forward(cfg, &layout, params, acts, inputs);
    let loss = gpt::backward(cfg, &layout, params, &mut grads, acts, inputs, targets, dloss);
    (loss, grads)
}

/// One forward+backward on the GPU, on `kernels` with the GELU fused as `fusion` says and the bias
/// gradients computed as `bias_grad` says, against `cpu::gpt::backward`: the loss, and every one
/// of the 16 gradient tensors within 1e-4 of its largest value (fp32 with other summation orders;
/// TF32 off). The fused GELU (cuBLASLt's, in the epilogues) and the BGRADB bias gradients are held
/// to the same bound: `matmul.rs`'s tests hold them to the verified ops to about fp32 rounding,
/// so a failure here with those passing is in the wiring.
fn check_gradients(cfg: &ModelConfig, b: usize, t: usize, kernels: Kernels, fusion: GeluFusion, bias_grad: BiasGrad) {
    let layout = ParamLayout::new(cfg);
    let params = gpt::init_params(cfg, 13);
    let (inputs, targets) = batch(cfg, b * t, 17);
    let dloss = 1.0 / (b * t) as f32;
    let (cpu_loss, want) = cpu_gradients(cfg, &params, &mut Activations::new(cfg, b, t), &inputs, &targets, dloss);

    let mut model = GpuModel::<f32>::new(cfg, &params, 0, false).unwrap();
    model.gpu.set_kernels(kernels);
    model.set_gelu_fusion(fusion).unwrap();
    model.set_bias_grad(bias_grad);
    model.enable_training(&params, 0).unwrap();
    model.zero_grads().unwrap();
    let gpu_loss = model.forward_backward(&inputs, &targets, b, t, dloss).unwrap();
    let got = model.download_grads().unwrap();
    let kernels = format!("{kernels} kernels, gelu fusion {fusion}, bias grad {bias_grad}");
    assert!((gpu_loss - cpu_loss).abs() < 1e-5 * cpu_loss, "{cfg} {kernels}: loss {gpu_loss} vs CPU {cpu_loss}");
    for spec in &layout.tensors {
        let (g, w) = (&got[spec.range()], &want[spec.range()]);
        assert!(g.iter().all(|x| x.is_finite()), "{:?}: non-finite gradient", spec.param);
        let (max_ref, err) = (max_abs(w), max_abs_diff(g, w));
        assert!(max_ref > 0.0 || spec.param == Param::Wpe, "{:?}: zero reference gradient", spec.param);
        assert!(
            err <= 1e-4 * max_ref.max(1e-12),
            "{cfg} {kernels}: {:?} gradient differs by {err} (max {max_ref})",
            spec.param
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_gradients_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    check_gradients(&ModelConfig::preset("tiny").unwrap(), 2, 32, Kernels::Scalar, GeluFusion::Off, BiasGrad::Reduce);
    check_gradients(&two_layer_768(), 2, 64, Kernels::Scalar, GeluFusion::Off, BiasGrad::Reduce);
}

/// `steps` AdamW steps (clipping at 1.0) on the GPU in `T`, the bias gradients as `bias_grad`
/// says; returns the losses and the final f32 weights (the master copy in bf16).
fn gpu_run<T: Float>(cfg: &ModelConfig, steps: usize, bias_grad: BiasGrad) -> (Vec<f64>, Vec<f32>) {
    let params = gpt::init_params(cfg, 13);
    let (b, t) = (2, 32);
    let mut model = GpuModel::<T>::new(cfg, &params, 0, false).unwrap();
    model.set_bias_grad(bias_grad);
    model.enable_training(&params, 0).unwrap();
    let mut losses = Vec::new();
    for step in 0..steps {
        // The same batch every step, so the loss must fall (the model memorises it).
        let (inputs, targets) = batch(cfg, b * t, 100);
        model.zero_grads().unwrap();
        losses.push(model.forward_backward(&inputs, &targets, b, t, 1.0 / (b * t) as f32).unwrap());
        model.clip_grad_norm(1.0).unwrap();
        model.adamw_update(AdamWConfig::default(), step as u64 + 1, 1e-3).unwrap();
    }
    (losses, model.download_weights().unwrap())
}

/// The CPU's losses for [`gpu_run`]'s steps.
fn cpu_run(cfg: &ModelConfig, steps: usize) -> Vec<f64> {
    let layout = ParamLayout::new(cfg);
    let mut params = gpt::init_params(cfg, 13);
    let (b, t) = (2, 32);
    let mut opt = AdamW::new(AdamWConfig::default(), layout.total);
    let mut acts = Activations::<f32>::new(cfg, b, t);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let (inputs, targets) = batch(cfg, b * t, 100);
        let (loss, mut grads) = cpu_gradients(cfg, &params, &mut acts, &inputs, &targets, 1.0 / (b * t) as f32);
        losses.push(loss);
        clip_grad_norm(&mut grads, 1.0);
        opt.update(&layout, &mut params, &grads, 1e-3);
    }
    losses
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ten_adamw_steps_follow_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = ModelConfig::preset("tiny").unwrap();
    let (gpu_losses, _) = gpu_run::<f32>(&cfg, 10, BiasGrad::Reduce);
    for (step, (gl, cl)) in gpu_losses.iter().zip(cpu_run(&cfg, 10)).enumerate() {
        assert!((gl - cl).abs() < 1e-4 * cl, "step {}: GPU loss {gl} vs CPU {cl}", step + 1);
    }
    assert!(gpu_losses[9] < gpu_losses[0], "loss did not fall: {gpu_losses:?}");
}

/// Two identical three-step [`gpu_run`]s in `T` on the 2-layer 768-wide model, the bias gradients
/// as `bias_grad` says, give the same losses and f32 weights bit for bit; `weights` names the
/// weights in the message.
fn assert_training_deterministic<T: Float>(weights: &str, bias_grad: BiasGrad) {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = two_layer_768();
    let (l1, p1) = gpu_run::<T>(&cfg, 3, bias_grad);
    let (l2, p2) = gpu_run::<T>(&cfg, 3, bias_grad);
    assert_eq!(l1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), l2.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_same_bits(&format!("{weights} of the second of two identical runs"), &p2, &p1);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_is_deterministic() {
    assert_training_deterministic::<f32>("parameters", BiasGrad::Reduce);
}

// ---- training (bf16 mixed precision) ----------------------------------------------------------

/// The bf16 working copy `enable_training(weights, 0)` makes: each weight stochastically rounded
/// with step 0's seed (the same function the kernel uses, mirrored on the host).
fn working_copy(weights: &[f32]) -> Vec<f32> {
    round_params_host(weights, sr_seed(0)).iter().map(|x| x.to_f32()).collect()
}

/// One bf16 forward+backward against the CPU in f32 at the same (bf16) weights: the loss within 1%
/// and every gradient tensor within 5% relative L2 error.
///
/// Why these tolerances: the weights are identical (the CPU gets the bf16 working copy), so every
/// difference comes from the activations and activation gradients, which bf16 stores with a
/// relative error of at most 2^-8 (0.4%, half an ulp of 8 significant bits) per value. A gradient tensor sums, over all B*T
/// positions, products of an activation and an activation gradient that went through a chain of
/// about ten such roundings per layer; the roundings are unbiased and mostly independent, so the
/// expected relative error of a tensor is around 1-2% and the loss (one rounding of the logits, then
/// f32) moves by well under 1%. 5% leaves room for the cancellations in small tensors (biases)
/// while any real defect (a wrong index, a missing term, a lost accumulation) gives O(1) errors.
/// The parameter gradients themselves are f32 in both.
///
/// `fusion` puts the GELU in the matmul epilogues, held to the same bounds: it rounds less (the
/// GELU of the fp32 pre-activation; the GELU backward of the fp32 product), not more. So is
/// `bias_grad`: either way the bias gradients are f32 sums of the same bf16 dout.
fn check_gradients_bf16(
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    kernels: Kernels,
    fusion: GeluFusion,
    bias_grad: BiasGrad,
) {
    let layout = ParamLayout::new(cfg);
    let weights = gpt::init_params(cfg, 13);
    let params = working_copy(&weights);
    let (inputs, targets) = batch(cfg, b * t, 17);
    let dloss = 1.0 / (b * t) as f32;
    let (cpu_loss, want) = cpu_gradients(cfg, &params, &mut Activations::new(cfg, b, t), &inputs, &targets, dloss);

    let mut model = GpuModel::<half::bf16>::new(cfg, &weights, 0, false).unwrap();
    model.gpu.set_kernels(kernels);
    model.set_gelu_fusion(fusion).unwrap();
    model.set_bias_grad(bias_grad);
    let kernels = format!("{kernels} kernels, gelu fusion {fusion}, bias grad {bias_grad}");
    model.enable_training(&weights, 0).unwrap();
    // The working copy on the device is exactly the host mirror's.
    assert_eq!(model.download_params().unwrap(), params, "the bf16 working copy differs from the host mirror");
    model.zero_grads().unwrap();
    let gpu_loss = model.forward_backward(&inputs, &targets, b, t, dloss).unwrap();
    let got = model.download_grads().unwrap();
    assert!((gpu_loss - cpu_loss).abs() < 1e-2 * cpu_loss, "{cfg} {kernels}: bf16 loss {gpu_loss} vs CPU {cpu_loss}");
    let mut worst = (0.0, Param::Wte);
    for spec in &layout.tensors {
        let (g, w) = (&got[spec.range()], &want[spec.range()]);
        assert!(g.iter().all(|x| x.is_finite()), "{:?}: non-finite gradient", spec.param);
        let err = rel_l2(g, w);
        assert!(err <= 0.05, "{cfg} {kernels}: bf16 {:?} gradient has relative L2 error {err:.4}", spec.param);
        if err > worst.0 {
            worst = (err, spec.param);
        }
    }
    println!(
        "{cfg} {kernels}: bf16 loss {gpu_loss:.6} vs CPU {cpu_loss:.6}; worst gradient {:?} at {:.4}",
        worst.1, worst.0
    );
    // The f32 weights are the master copy, untouched by the step.
    assert_eq!(model.download_weights().unwrap(), weights);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_gradients_bf16_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let tiny = ModelConfig::preset("tiny").unwrap();
    check_gradients_bf16(&tiny, 2, 32, Kernels::Scalar, GeluFusion::Off, BiasGrad::Reduce);
    check_gradients_bf16(&two_layer_768(), 2, 64, Kernels::Scalar, GeluFusion::Off, BiasGrad::Reduce);
}

/// Ten bf16 AdamW steps follow the CPU's f32 losses within 2% (see `check_gradients_bf16`: about 1%
/// gradient noise per step; AdamW normalises each update, so the noise moves the weights by a
/// fraction of one learning-rate step, and the losses of a run memorising one batch stay close),
/// and the loss falls.
#[test]
#[ignore = "needs a CUDA GPU"]
fn ten_adamw_steps_bf16_follow_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = ModelConfig::preset("tiny").unwrap();
    let (gpu_losses, _) = gpu_run::<half::bf16>(&cfg, 10, BiasGrad::Reduce);
    let cpu_losses = cpu_run(&cfg, 10);
    println!("bf16 losses {gpu_losses:?}\nCPU losses  {cpu_losses:?}");
    for (step, (gl, cl)) in gpu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!((gl - cl).abs() < 2e-2 * cl, "step {}: bf16 loss {gl} vs CPU {cl}", step + 1);
    }
    assert!(gpu_losses[9] < gpu_losses[0], "loss did not fall: {gpu_losses:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_bf16_is_deterministic() {
    assert_training_deterministic::<half::bf16>("master weights", BiasGrad::Reduce);
}

// ---- training with --kernels vector ---------------------------------------------------------

/// --kernels vector on the whole step: the _vec kernels, the backward overwriting the activation
/// gradients that have one producer (no zeroing), and one attproj and one fcproj buffer for all
/// layers. Held to the CPU with the scalar path's tolerances (`check_gradients`,
/// `check_gradients_bf16`): the vector kernels compute the same values, the LayerNorm, softmax and
/// classifier row sums and the balanced embedding backward's sums only in another order, and
/// overwriting is accumulating onto zeros. (So a vector step is not the scalar step's bits: those
/// reordered sums round differently; what is bit-exact is held by
/// [`vector_step_ignores_stale_activation_gradients`] and the per-kernel tests.)
#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_gradients_with_vector_kernels_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let (tiny, off, reduce) = (ModelConfig::preset("tiny").unwrap(), GeluFusion::Off, BiasGrad::Reduce);
    check_gradients(&tiny, 2, 32, Kernels::Vector, off, reduce);
    check_gradients(&two_layer_768(), 2, 64, Kernels::Vector, off, reduce);
    check_gradients_bf16(&tiny, 2, 32, Kernels::Vector, off, reduce);
    check_gradients_bf16(&two_layer_768(), 2, 64, Kernels::Vector, off, reduce);
}

/// The loss and gradients of one micro-batch (batch seed `seed`, B = 2, T = 32) from zeroed
/// gradients.
fn step_gradients<T: Float>(model: &mut GpuModel<T>, seed: u64) -> (f64, Vec<f32>) {
    let (b, t) = (2, 32);
    let (inputs, targets) = batch(&model.cfg, b * t, seed);
    model.zero_grads().unwrap();
    let loss = model.forward_backward(&inputs, &targets, b, t, 1.0 / (b * t) as f32).unwrap();
    (loss, model.download_grads().unwrap())
}

/// On `kernels` with `fusion`, in `T`: a step taken after a step on another batch, when the
/// backward's scratch holds that batch's activation gradients, gives bit for bit the loss and
/// gradients of the same step on a fresh model, whose scratch was zeroed when it was allocated.
fn assert_step_ignores_stale_scratch<T: Float>(cfg: &ModelConfig, kernels: Kernels, fusion: GeluFusion) {
    let params = gpt::init_params(cfg, 13);
    let fresh = || {
        let mut model = GpuModel::<T>::new(cfg, &params, 0, false).unwrap();
        model.gpu.set_kernels(kernels);
        model.set_gelu_fusion(fusion).unwrap();
        model.enable_training(&params, 0).unwrap();
        model
    };
    let mut used = fresh();
    step_gradients(&mut used, 23);
    let (loss, grads) = step_gradients(&mut used, 17);
    let (want_loss, want) = step_gradients(&mut fresh(), 17);
    let what = format!("{cfg} {kernels} gelu fusion {fusion} {}", std::any::type_name::<T>());
    assert_eq!(loss.to_bits(), want_loss.to_bits(), "{what}: loss {loss} after another step vs {want_loss} fresh");
    assert_same_bits(&format!("{what}: gradients after another step vs fresh"), &grads, &want);
}

/// With --kernels vector the backward no longer zeroes dln, datty, dqkv, dfch and dfch_gelu: their
/// one producer each overwrites them. So what they held before a step must not matter: after a
/// step on another batch, a step gives the bits of the same step on a fresh model (scratch zeroed
/// at allocation). A producer that still read its output (a GEMM with beta = 1, an accumulating
/// kernel) would add the other batch's gradients, or in a fresh model its own earlier layer's, and
/// the two would differ. Exact in f32 and in bf16 alike: the same kernels run on the same inputs
/// in the same order (bf16 rounds at the same points; nothing about the comparison is approximate).
/// The scalar path, which zeroes them, holds to the same.
#[test]
#[ignore = "needs a CUDA GPU"]
fn vector_step_ignores_stale_activation_gradients() {
    if gpu_or_skip().is_none() {
        return;
    }
    for cfg in [ModelConfig::preset("tiny").unwrap(), two_layer_768()] {
        for kernels in [Kernels::Vector, Kernels::Scalar] {
            assert_step_ignores_stale_scratch::<f32>(&cfg, kernels, GeluFusion::Off);
            assert_step_ignores_stale_scratch::<half::bf16>(&cfg, kernels, GeluFusion::Off);
        }
    }
}

// ---- training with --gelu-fusion forward|both -------------------------------------------------

/// The GELU in the matmul epilogues (GELU_AUX_BIAS in the forward; with `Both` also DGELU in the
/// fcproj backward) on the whole step, against the CPU with the unfused path's tolerances
/// ([`check_gradients`], [`check_gradients_bf16`]), on the scalar kernels and, for `Both`, on the
/// vector ones too (whose overwriting backward meets the DGELU-written dfch).
#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_gradients_with_gelu_fusion_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let tiny = ModelConfig::preset("tiny").unwrap();
    for (kernels, fusion) in [
        (Kernels::Scalar, GeluFusion::Forward),
        (Kernels::Scalar, GeluFusion::Both),
        (Kernels::Vector, GeluFusion::Both),
    ] {
        check_gradients(&tiny, 2, 32, kernels, fusion, BiasGrad::Reduce);
        check_gradients(&two_layer_768(), 2, 64, kernels, fusion, BiasGrad::Reduce);
        check_gradients_bf16(&tiny, 2, 32, kernels, fusion, BiasGrad::Reduce);
        check_gradients_bf16(&two_layer_768(), 2, 64, kernels, fusion, BiasGrad::Reduce);
    }
}

/// With `--gelu-fusion both` dfch is never zeroed, whatever `--kernels` says: the DGELU epilogue
/// overwrites it (beta = 0), and dfch_gelu is not used at all. So, as for the vector kernels'
/// overwrites, a step after a step on another batch must give the bits of a fresh model's step;
/// a DGELU GEMM that read its destination would carry the other batch's dfch in. Forward alone
/// changes nothing in the backward and is held to the same.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_fusion_step_ignores_stale_activation_gradients() {
    if gpu_or_skip().is_none() {
        return;
    }
    for cfg in [ModelConfig::preset("tiny").unwrap(), two_layer_768()] {
        for (kernels, fusion) in [
            (Kernels::Scalar, GeluFusion::Both),
            (Kernels::Vector, GeluFusion::Both),
            (Kernels::Scalar, GeluFusion::Forward),
        ] {
            assert_step_ignores_stale_scratch::<f32>(&cfg, kernels, fusion);
            assert_step_ignores_stale_scratch::<half::bf16>(&cfg, kernels, fusion);
        }
    }
}

// ---- training with --bias-grad epilogue -------------------------------------------------------

/// The bias gradients from the dweight GEMMs' BGRADB epilogue on the whole step, against the CPU
/// with the reduction's tolerances ([`check_gradients`], [`check_gradients_bf16`]): alone, with
/// `--gelu-fusion both` (DGELU on the fcproj backward's dinp GEMM, BGRADB on its dweight GEMM)
/// and with `--kernels vector` as well (whose overwriting backward meets both).
#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_gradients_with_bias_grad_epilogue_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let tiny = ModelConfig::preset("tiny").unwrap();
    for (kernels, fusion) in
        [(Kernels::Scalar, GeluFusion::Off), (Kernels::Scalar, GeluFusion::Both), (Kernels::Vector, GeluFusion::Both)]
    {
        check_gradients(&tiny, 2, 32, kernels, fusion, BiasGrad::Epilogue);
        check_gradients(&two_layer_768(), 2, 64, kernels, fusion, BiasGrad::Epilogue);
        check_gradients_bf16(&tiny, 2, 32, kernels, fusion, BiasGrad::Epilogue);
        check_gradients_bf16(&two_layer_768(), 2, 64, kernels, fusion, BiasGrad::Epilogue);
    }
}

/// Three AdamW steps with `--bias-grad epilogue` twice give the same losses and weights bit for bit,
/// in fp32 and bf16 (what issue 15 §3 requires of whatever is kept; `matmul.rs`'s
/// `matmul_backward_bgradb_is_deterministic` holds the op itself to it). If this fails on a GPU,
/// `epilogue` must not be kept there.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_with_bias_grad_epilogue_is_deterministic() {
    assert_training_deterministic::<f32>("parameters (--bias-grad epilogue)", BiasGrad::Epilogue);
    assert_training_deterministic::<half::bf16>("master weights (--bias-grad epilogue)", BiasGrad::Epilogue);
}
