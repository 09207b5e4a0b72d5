//! `genesis train` on the GPU, in fp32 and in bf16 mixed precision: the same losses as the CPU
//! (within TF32 or bf16 rounding), resume that gives the same bits as an unbroken GPU run, and a
//! checkpoint the CPU evaluates to the same loss.

use super::common::{assert_same_bits, assert_same_state, loss_bits, paragraph_dataset, temp_dir, tiny_run, val_loss};
use super::gpu_or_skip;
use genesis::checkpoint;
use genesis::gpu::{BiasGrad, GeluFusion, Kernels, Precision, StepSync};
use genesis::train::{train, RunConfig, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

fn dataset(dir: &Path) -> PathBuf {
    let text: String = (0..3000)
        .map(|i| format!("Line {i}: the {} fox jumps over {} lazy dogs near river {}.\n\n", i % 7, i % 13, i % 5))
        .collect();
    paragraph_dataset(dir, "t", &text)
}

/// [`tiny_run`] with 2 warm-up steps, on the GPU (device 0) or the CPU.
fn options(data: &Path, out: &Path, steps: u64, gpu: bool) -> TrainOptions {
    let run = RunConfig { warmup: 2, ..tiny_run(data, steps) };
    let mut o = TrainOptions::new(run, out.to_path_buf());
    o.gpu = gpu.then_some(0);
    o
}

/// Trains on the GPU in `precision` next to the CPU and checks: losses within `loss_tol` (relative)
/// of the CPU's, a run stopped twice and resumed gives the unbroken run's bits (losses, f32
/// weights, moments), and the CPU evaluates the GPU checkpoint to the GPU's validation loss within
/// `val_tol`.
fn follows_and_resumes(tag: &str, precision: Precision, loss_tol: f64, val_tol: f64) {
    follows_and_resumes_with(tag, precision, Kernels::Scalar, loss_tol, val_tol)
}

/// [`follows_and_resumes`] with the GPU runs on `kernels`.
fn follows_and_resumes_with(tag: &str, precision: Precision, kernels: Kernels, loss_tol: f64, val_tol: f64) {
    follows_and_resumes_synced(tag, precision, kernels, StepSync::Micro, loss_tol, val_tol)
}

/// [`follows_and_resumes_with`] with the GPU's training steps synchronised as `sync` says.
fn follows_and_resumes_synced(
    tag: &str,
    precision: Precision,
    kernels: Kernels,
    sync: StepSync,
    loss_tol: f64,
    val_tol: f64,
) {
    let dir = temp_dir(&format!("gpu-train-{tag}"));
    let data = dataset(&dir);
    let on_gpu = |out: &str| {
        let mut o = options(&data, &dir.join(out), 8, true);
        o.precision = precision;
        o.kernels = kernels;
        o.sync = sync;
        o
    };
    let cpu = train(&options(&data, &dir.join("cpu"), 8, false)).unwrap();
    let gpu = train(&on_gpu("gpu")).unwrap();
    for ((s, c), (_, g)) in cpu.train_losses.iter().zip(&gpu.train_losses) {
        assert!((c - g).abs() < loss_tol * c, "{precision:?} step {s}: GPU loss {g} vs CPU {c}");
    }
    assert_eq!(gpu.train_losses.len(), 8);

    // Stopped (as by a signal) after steps 1 and 2, resumed to 8: the same bits as the unbroken run.
    let mut losses = Vec::new();
    for _ in 0..2 {
        let mut o = on_gpu("gpu-resumed");
        o.stop = Some(Arc::new(AtomicUsize::new(15)));
        losses.extend(train(&o).unwrap().train_losses);
    }
    let rest = train(&on_gpu("gpu-resumed")).unwrap();
    assert_eq!(rest.resumed_from, Some(2));
    losses.extend(rest.train_losses);
    assert_eq!(loss_bits(&losses), loss_bits(&gpu.train_losses), "{precision:?}: GPU resume changed the losses");
    // The unbroken and the resumed GPU run end with the same step, weights and moments.
    assert_same_state(&gpu.checkpoint, &rest.checkpoint);

    // The GPU-trained checkpoint on the CPU: the same validation loss as the GPU measured.
    let ckpt = checkpoint::load(&gpu.checkpoint).unwrap();
    let cpu_val = val_loss(&options(&data, &dir.join("x"), 8, false).run, ckpt.params());
    let gpu_val = gpu.val_losses.last().unwrap().1;
    assert!(
        (cpu_val - gpu_val).abs() < val_tol * cpu_val,
        "{precision:?}: CPU val loss {cpu_val} of the GPU checkpoint vs {gpu_val}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_follows_the_cpu_and_resumes_bit_exact() {
    if gpu_or_skip().is_none() {
        return;
    }
    // TF32 matmuls on the GPU: about 1e-3 relative per product, a little more after 8 updates.
    follows_and_resumes("follow", Precision::Fp32, 5e-3, 2e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bf16_training_follows_the_cpu_and_resumes_bit_exact() {
    if gpu_or_skip().is_none() {
        return;
    }
    // bf16 activations: about 1% gradient noise per step (see tests/gpu_ops/gpt.rs), so the losses
    // stay within 3% over 8 steps; the checkpoint holds the f32 master weights, which the CPU
    // evaluates in f32 while the GPU evaluated their bf16 working copy with bf16 activations: 2%.
    follows_and_resumes("follow-bf16", Precision::Bf16, 3e-2, 2e-2);
}

/// The host-sync counter `bench train --profile` reports is real: a stream synchronize and a
/// gradient download each count one; a training step counts at least one (it returns the loss on
/// the host); and a profiled step charges time to the backward, gradient-norm and AdamW families,
/// every name it records having a family in the cost model.
#[test]
#[ignore = "needs a CUDA GPU"]
fn host_syncs_are_counted_and_a_profiled_step_covers_every_phase() {
    use genesis::gpu::engine::gpu_engine;
    use genesis::gpu::profile::family;
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = genesis::model::ModelConfig::preset("tiny").unwrap();
    let params = genesis::cpu::gpt::init_params(&cfg, 1);
    let mut model = gpu_engine(&cfg, &params, 0, Precision::Bf16, true, StepSync::Micro).unwrap();
    model.enable_training(&params, 0).unwrap();
    let (b, t) = (2, 16);
    let inputs: Vec<u32> = (0..b * t).map(|i| (i * 37 % 50257) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 91 % 50257) as u32).collect();
    let count = |m: &dyn genesis::gpu::engine::GpuEngine| m.gpu().host_syncs();

    let before = count(model.as_ref());
    model.gpu().synchronize().unwrap();
    assert_eq!(count(model.as_ref()).0, before.0 + 1, "a synchronize");
    let before = count(model.as_ref());
    model.download_moments().unwrap();
    assert_eq!(count(model.as_ref()).0, before.0 + 1, "a download");

    model.set_profiling(true);
    let before = count(model.as_ref());
    model.mark("step start").unwrap();
    model.zero_grads().unwrap();
    model.forward_backward(&inputs, &targets, b, t, 1.0 / (b * t) as f32).unwrap();
    model.clip_grad_norm(1.0).unwrap();
    model.adamw_update(genesis::cpu::adamw::AdamWConfig::default(), 1, 1e-4).unwrap();
    let after = count(model.as_ref());
    let profile = model.take_profile().unwrap();
    assert!(after.0 > before.0, "a training step counted no host sync, yet it returns the loss");
    assert!(after.1 >= before.1 + 2, "token and embedding-bucket uploads not counted");
    let families: Vec<&str> = profile.iter().map(|(name, _)| family(name)).collect();
    for want in ["matmul fwd", "matmul bwd", "attention bwd", "layernorm bwd", "gelu bwd", "grad norm", "adamw"] {
        assert!(families.contains(&want), "no {want} in the profile {profile:?}");
    }
    assert!(!families.contains(&"other"), "a mark without a family: {profile:?}");
    assert!(profile.iter().all(|(_, ms)| *ms >= 0.0));
}

/// --kernels vector on the tiny model (C = 64, head size 16: every _vec kernel applies): training
/// follows the CPU within the scalar path's tolerances (the vector kernels compute the same values,
/// LayerNorm's row sums only in another order), and a run stopped twice and resumed gives the
/// unbroken run's bits, so the vector path (the one-pass LayerNorm backward included) is
/// deterministic. Each step accumulates 2 micro-batches, so the second runs its backward over the
/// first's activation gradients, which the vector path overwrites instead of zeroing.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_with_vector_kernels_follows_the_cpu_and_resumes_bit_exact() {
    if gpu_or_skip().is_none() {
        return;
    }
    follows_and_resumes_with("follow-vec", Precision::Fp32, Kernels::Vector, 5e-3, 2e-3);
    follows_and_resumes_with("follow-vec-bf16", Precision::Bf16, Kernels::Vector, 3e-2, 2e-2);
}

/// `--sync step` (the whole step queued, one record read back) against the verified micro path on
/// the tiny model, in fp32 and bf16, with the scalar and the vector kernels: three steps of two
/// micro-batches, clipping active, the second step poisoned. Both give the same weights and AdamW
/// moments bit for bit, the same norms (bits) and skip decisions, and losses within f64 rounding
/// (the step path sums them on the device in another order); the step path waits on the stream
/// exactly once per step and uploads nothing from pageable memory. `--sync graph` (the second
/// micro-batch captured, the rest replayed) gives the step path's bits exactly, losses included.
/// The same holds with `--gelu-fusion both` (the fused GEMMs captured like the rest), and with
/// `--bias-grad epilogue` as well (the BGRADB GEMMs and the add kernels captured; the choice is
/// part of the graph's key).
#[test]
#[ignore = "needs a CUDA GPU"]
fn step_sync_updates_the_weights_like_the_micro_path() {
    use genesis::cpu::adamw::AdamWConfig;
    use genesis::gpu::engine::gpu_engine;
    use genesis::gpu::gpt::TrainStep;
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = genesis::model::ModelConfig::preset("tiny").unwrap();
    let params = genesis::cpu::gpt::init_params(&cfg, 5);
    let (b, t) = (2, 32);
    for precision in [Precision::Fp32, Precision::Bf16] {
        for (kernels, fusion, bias_grad) in [
            (Kernels::Scalar, GeluFusion::Off, BiasGrad::Reduce),
            (Kernels::Vector, GeluFusion::Off, BiasGrad::Reduce),
            (Kernels::Scalar, GeluFusion::Both, BiasGrad::Reduce),
            (Kernels::Scalar, GeluFusion::Both, BiasGrad::Epilogue),
        ] {
            let run = |sync: StepSync| {
                let mut model = gpu_engine(&cfg, &params, 0, precision, true, sync).unwrap();
                model.set_kernels(kernels);
                model.set_gelu_fusion(fusion).unwrap();
                model.set_bias_grad(bias_grad);
                model.enable_training(&params, 0).unwrap();
                let mut k = 0u32;
                let mut next = |i: &mut [u32], tg: &mut [u32]| {
                    // Repeated tokens, so the embedding backward has heavy buckets.
                    for (j, (x, y)) in i.iter_mut().zip(tg.iter_mut()).enumerate() {
                        *x = if j % 3 == 0 { 11 } else { (j as u32 * 37 + k * 101) % 50257 };
                        *y = (j as u32 * 91 + k * 7) % 50257;
                    }
                    k += 1;
                };
                let mut outcomes = Vec::new();
                let mut adam_t = 0;
                for step in 0..3 {
                    let s = TrainStep {
                        batch: b,
                        seq: t,
                        accum: 2,
                        dloss: 1.0 / (2 * b * t) as f32,
                        max_norm: 0.05,
                        adam: AdamWConfig { weight_decay: 0.1, ..Default::default() },
                        t: adam_t + 1,
                        lr: 1e-3,
                        poison: step == 1,
                    };
                    let before = model.gpu().host_syncs();
                    let outcome = model.train_step(&mut next, &s).unwrap();
                    let after = model.gpu().host_syncs();
                    if sync != StepSync::Micro {
                        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0), "host syncs, pageable uploads");
                    }
                    adam_t += outcome.applied as u64;
                    outcomes.push(outcome);
                }
                let (m, v) = model.download_moments().unwrap();
                (outcomes, model.download_weights().unwrap(), m, v)
            };
            let (micro, step, graph) = (run(StepSync::Micro), run(StepSync::Step), run(StepSync::Graph));
            let what = format!("{precision:?} {kernels:?} gelu fusion {fusion} bias grad {bias_grad}");
            // The captured and replayed micro-batches give the uncaptured path's bits, losses too.
            assert_eq!(format!("{:?}", graph.0), format!("{:?}", step.0), "{what}: graph vs step outcomes");
            assert_same_bits(&format!("{what}: graph weights"), &graph.1, &step.1);
            assert_same_bits(&format!("{what}: graph m"), &graph.2, &step.2);
            assert_same_bits(&format!("{what}: graph v"), &graph.3, &step.3);
            for (i, (a, s)) in micro.0.iter().zip(&step.0).enumerate() {
                assert_eq!(a.applied, s.applied, "{what} step {i}: applied");
                assert_eq!(a.norm.to_bits(), s.norm.to_bits(), "{what} step {i}: norm");
                if i == 1 {
                    assert!(a.loss.is_nan() && s.loss.is_nan() && !s.applied, "{what}: the poisoned step");
                } else {
                    assert!((a.loss - s.loss).abs() <= 1e-13 * a.loss.abs(), "{what} step {i}: {a:?} vs {s:?}");
                    assert!(a.applied && 0.05 < a.norm, "{what} step {i}: clipping must be active: {a:?}");
                }
            }
            assert_same_bits(&format!("{what}: weights"), &step.1, &micro.1);
            assert_same_bits(&format!("{what}: m"), &step.2, &micro.2);
            assert_same_bits(&format!("{what}: v"), &step.3, &micro.3);
        }
    }
}

/// `genesis train --sync step` (and `graph`) through the training loop: follows the CPU as the micro
/// path does, resumes bit-exact after two stops, and the CPU evaluates its checkpoint to its
/// validation loss.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_with_step_sync_follows_the_cpu_and_resumes_bit_exact() {
    if gpu_or_skip().is_none() {
        return;
    }
    follows_and_resumes_synced("follow-step", Precision::Fp32, Kernels::Scalar, StepSync::Step, 5e-3, 2e-3);
    follows_and_resumes_synced("follow-step-bf16", Precision::Bf16, Kernels::Scalar, StepSync::Step, 3e-2, 2e-2);
    follows_and_resumes_synced("follow-graph", Precision::Fp32, Kernels::Scalar, StepSync::Graph, 5e-3, 2e-3);
}

/// What each `--gelu-fusion` launches, seen in a profiled step's op names: off runs the GELU and
/// its backward as kernels of their own ("gelu", "gelu bwd"); forward replaces the fc matmul and
/// the GELU kernel by one fused GEMM ("matmul fc + gelu"); both also replaces the fcproj backward
/// and the GELU backward kernel by one ("matmul bwd fcproj + dgelu"). Every name has a family, and
/// the engine names the choice in `describe()`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_fusion_launches_what_it_says() {
    use genesis::gpu::engine::gpu_engine;
    use genesis::gpu::profile::family;
    if gpu_or_skip().is_none() {
        return;
    }
    let cfg = genesis::model::ModelConfig::preset("tiny").unwrap();
    let params = genesis::cpu::gpt::init_params(&cfg, 1);
    let (b, t) = (2, 16);
    let inputs: Vec<u32> = (0..b * t).map(|i| (i * 37 % 50257) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 91 % 50257) as u32).collect();
    for precision in [Precision::Fp32, Precision::Bf16] {
        for (fusion, present, absent, said) in [
            (
                GeluFusion::Off,
                ["matmul fc", "gelu", "matmul bwd fcproj", "gelu bwd"],
                ["matmul fc + gelu", "matmul bwd fcproj + dgelu"],
                None,
            ),
            (
                GeluFusion::Forward,
                ["matmul fc + gelu", "matmul bwd fcproj", "gelu bwd", "matmul bwd fc"],
                ["gelu", "matmul fc"],
                Some("GELU fused into the fc matmul"),
            ),
            (
                GeluFusion::Both,
                ["matmul fc + gelu", "matmul bwd fcproj + dgelu", "matmul bwd fc", "layernorm bwd"],
                ["gelu", "gelu bwd"],
                Some("GELU and its backward fused into the matmuls"),
            ),
        ] {
            let mut model = gpu_engine(&cfg, &params, 0, precision, true, StepSync::Micro).unwrap();
            model.set_gelu_fusion(fusion).unwrap();
            model.enable_training(&params, 0).unwrap();
            let described = model.describe();
            match said {
                Some(said) => assert!(described.contains(said), "{fusion}: {described}"),
                None => assert!(!described.contains("GELU"), "{fusion}: {described}"),
            }
            model.set_profiling(true);
            model.mark("step start").unwrap();
            model.zero_grads().unwrap();
            model.forward_backward(&inputs, &targets, b, t, 1.0 / (b * t) as f32).unwrap();
            let names: Vec<&str> = model.take_profile().unwrap().iter().map(|(name, _)| *name).collect();
            for want in present {
                assert!(names.contains(&want), "{precision:?} {fusion}: no {want:?} in {names:?}");
            }
            for unwanted in absent {
                assert!(!names.contains(&unwanted), "{precision:?} {fusion}: {unwanted:?} in {names:?}");
            }
            assert!(
                names.iter().all(|n| family(n) != "other"),
                "{precision:?} {fusion}: a mark without a family: {names:?}"
            );
        }
    }
}
