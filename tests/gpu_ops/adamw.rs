//! CUDA optimizer (`kernels/adamw.cu`) vs. `cpu::adamw`: the global norm (both f64, only the
//! summation order differs), clipping and AdamW (bit-identical: the same correctly rounded f32
//! operations in the same order, nothing fused), and run-to-run determinism.

use super::common::assert_same_bits;
use super::{download, gpu_or_skip, Uniform, TAIL};
use genesis::cpu::adamw::{self as cpu_adamw, AdamW, AdamWConfig};
use genesis::gpu::adamw::{
    adamw_update, clip_grad_norm, global_norm, global_norm_scratch_len, params_round_bf16, round_params_host, scale,
    sr_seed,
};
use genesis::gpu::device::Gpu;
use genesis::gpu::Kernels;
use genesis::model::{ModelConfig, ParamLayout};
use genesis::rng::Rng;

/// Gradients with a spread of magnitudes (so the squares span many binades).
fn grads(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|i| rng.uniform() * [1e-3, 0.1, 1.0, 30.0][i % 4]).collect()
}

/// `g` with [`TAIL`] NaNs after it, which the kernels must neither count nor write.
fn nan_padded(g: &[f32]) -> Vec<f32> {
    let mut padded = g.to_vec();
    padded.extend([f32::NAN; TAIL]);
    padded
}

/// The GPU norm of `g`, with a NaN-poisoned tail past `n` that must not count.
fn gpu_norm(gpu: &Gpu, g: &[f32]) -> f64 {
    let stream = gpu.stream();
    let d_g = stream.clone_htod(&nan_padded(g)).unwrap();
    let mut scratch = stream.alloc_zeros::<f64>(global_norm_scratch_len()).unwrap();
    global_norm(gpu, &d_g, &mut scratch, g.len()).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn global_norm_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6e6f_726d_0000_0001);
    assert_eq!(gpu_norm(&gpu, &[]), 0.0);
    for n in [1usize, 255, 1000, 262_151, 5_000_003] {
        let g = grads(&mut rng, n);
        let want = cpu_adamw::global_norm(&g);
        let got = gpu_norm(&gpu, &g);
        let rel = (got - want).abs() / want;
        assert!(rel <= 1e-9, "N={n}: gpu {got} vs cpu {want} (relative {rel:e})");
        println!("global_norm N={n}: gpu {got} cpu {want} relative {rel:e}");
    }
    // Exact cases: a single value, and 3-4-5.
    assert_eq!(gpu_norm(&gpu, &[-2.5]), 2.5);
    assert_eq!(gpu_norm(&gpu, &[3.0, 4.0]), 5.0);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn global_norm_is_deterministic() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x6e6f_726d_0000_0002);
    let g = grads(&mut rng, 3_000_017);
    let stream = gpu.stream();
    let d_g = stream.clone_htod(&g).unwrap();
    let mut scratch = stream.alloc_zeros::<f64>(global_norm_scratch_len()).unwrap();
    let first = global_norm(&gpu, &d_g, &mut scratch, g.len()).unwrap();
    for run in 0..5 {
        let again = global_norm(&gpu, &d_g, &mut scratch, g.len()).unwrap();
        assert_eq!(again.to_bits(), first.to_bits(), "run {run}: {again} vs {first}");
    }
    assert!(global_norm(&gpu, &d_g, &mut stream.alloc_zeros::<f64>(3).unwrap(), g.len()).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scale_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x7363_616c_6500_0001);
    let n = 100_003;
    let g = grads(&mut rng, n);
    let coef = 0.123_456_7f32;
    let mut d_g = gpu.stream().clone_htod(&nan_padded(&g)).unwrap();
    scale(&gpu, &mut d_g, coef, n).unwrap();
    let got = download(&gpu, "scale", &d_g, n);
    assert_same_bits("scale", &got, &g.iter().map(|y| y * coef).collect::<Vec<f32>>());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn clip_grad_norm_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x636c_6970_0000_0001);
    let stream = gpu.stream();
    let mut scratch = stream.alloc_zeros::<f64>(global_norm_scratch_len()).unwrap();
    let n = 262_147;
    let g = grads(&mut rng, n);
    let norm = cpu_adamw::global_norm(&g);
    // Clipping (max below the norm), no clipping (max above it), and disabled (max <= 0).
    for max_norm in [1.0, norm / 3.0, norm * 2.0, 0.0, -1.0] {
        let mut want = g.clone();
        let want_norm = cpu_adamw::clip_grad_norm(&mut want, max_norm);
        let mut d_g = stream.clone_htod(&g).unwrap();
        let got_norm = clip_grad_norm(&gpu, &mut d_g, &mut scratch, n, max_norm).unwrap();
        let got = stream.clone_dtoh(&d_g).unwrap();
        assert!((got_norm - want_norm).abs() <= 1e-9 * want_norm, "max {max_norm}: norm {got_norm} vs {want_norm}");
        // The GPU applies exactly the CPU's rule with its own norm: bitwise equal to that.
        let coef = (max_norm / (got_norm + 1e-6)).min(1.0) as f32;
        let clipped = max_norm > 0.0 && coef < 1.0;
        for (i, (x, y)) in got.iter().zip(&g).enumerate() {
            let e = if clipped { y * coef } else { *y };
            assert_eq!(x.to_bits(), e.to_bits(), "max {max_norm}: mismatch at {i} against the GPU norm's coefficient");
        }
        // And the CPU's clipped values: identical when both norms round to the same f32 coefficient
        // (the norms differ only in the order of the f64 additions), else within 2 ulp.
        let cpu_coef = (max_norm / (want_norm + 1e-6)).min(1.0) as f32;
        let max_ulps = if cpu_coef == coef { 0 } else { 2 };
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            let ulps = (x.to_bits() as i64 - y.to_bits() as i64).abs();
            assert!(ulps <= max_ulps, "max {max_norm}: {x} vs cpu {y} at {i} ({ulps} ulp)");
        }
        if clipped {
            let after = cpu_adamw::global_norm(&got);
            assert!((after - max_norm).abs() <= 1e-5 * max_norm, "max {max_norm}: clipped norm {after}");
        } else {
            assert_eq!(got, g, "max {max_norm}: no clipping expected");
        }
    }
}

/// `steps` AdamW steps on the GPU from `p0` with the gradients `gs` and learning rates `lrs`,
/// returning (params, m, v) after each step.
fn gpu_adamw(
    gpu: &Gpu,
    layout: &ParamLayout,
    cfg: AdamWConfig,
    p0: &[f32],
    gs: &[Vec<f32>],
    lrs: &[f32],
) -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let stream = gpu.stream();
    let n = layout.total;
    let mut p = stream.clone_htod(p0).unwrap();
    let mut m = stream.alloc_zeros::<f32>(n).unwrap();
    let mut v = stream.alloc_zeros::<f32>(n).unwrap();
    let mut out = Vec::new();
    for (t, (g, &lr)) in gs.iter().zip(lrs).enumerate() {
        let d_g = stream.clone_htod(g).unwrap();
        adamw_update(gpu, layout, &mut p, &d_g, &mut m, &mut v, cfg, t as u64 + 1, lr, None).unwrap();
        gpu.synchronize().unwrap();
        out.push((stream.clone_dtoh(&p).unwrap(), stream.clone_dtoh(&m).unwrap(), stream.clone_dtoh(&v).unwrap()));
    }
    out
}

/// The AdamW tests' problem: the tiny model's layout, weight decay 0.1, and, drawn from `seed`,
/// initial weights in 0.2 U(-1, 1) and three steps' gradients ([`grads`]), with their learning rates.
struct AdamWCase {
    layout: ParamLayout,
    cfg: AdamWConfig,
    p0: Vec<f32>,
    gs: Vec<Vec<f32>>,
    lrs: [f32; 3],
}

impl AdamWCase {
    fn new(seed: u64) -> AdamWCase {
        AdamWCase::for_model(seed, &ModelConfig::preset("tiny").unwrap())
    }

    fn for_model(seed: u64, model: &ModelConfig) -> AdamWCase {
        let layout = ParamLayout::new(model);
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut rng = Rng::new(seed);
        let p0: Vec<f32> = (0..layout.total).map(|_| 0.2 * rng.uniform()).collect();
        let gs: Vec<Vec<f32>> = (0..3).map(|_| grads(&mut rng, layout.total)).collect();
        AdamWCase { layout, cfg, p0, gs, lrs: [6e-4, 3e-4, 1.7e-3] }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_matches_cpu_bitwise_and_is_deterministic() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_adamw(&gpu, AdamWCase::new(0x6164_616d_7700_0001));
}

/// AdamW on `case` against the CPU's AdamW bit for bit over three steps, and a rerun bit for bit.
fn check_adamw(gpu: &Gpu, case: AdamWCase) {
    let AdamWCase { layout, cfg, p0, gs, lrs } = case;

    let mut opt = AdamW::new(cfg, layout.total);
    let mut p = p0.clone();
    let got = gpu_adamw(gpu, &layout, cfg, &p0, &gs, &lrs);
    for (step, ((g, &lr), (gp, gm, gv))) in gs.iter().zip(&lrs).zip(&got).enumerate() {
        opt.update(&layout, &mut p, g, lr);
        assert_same_bits(&format!("step {} m", step + 1), gm, &opt.m);
        assert_same_bits(&format!("step {} v", step + 1), gv, &opt.v);
        assert_same_bits(&format!("step {} params", step + 1), gp, &p);
    }
    assert!(p.iter().zip(&p0).any(|(a, b)| a != b), "the parameters did not move");
    println!("adamw: 3 steps on the tiny layout ({} values), bit-identical to the CPU", layout.total);

    let again = gpu_adamw(gpu, &layout, cfg, &p0, &gs, &lrs);
    for (step, ((p1, m1, v1), (p2, m2, v2))) in got.iter().zip(&again).enumerate() {
        assert_same_bits(&format!("rerun step {} params", step + 1), p2, p1);
        assert_same_bits(&format!("rerun step {} m", step + 1), m2, m1);
        assert_same_bits(&format!("rerun step {} v", step + 1), v2, v1);
    }
}

/// The bf16 copy a step with seed `seed` writes for the f32 weights `w` (the host mirror).
fn rounded(w: &[f32], seed: u32) -> Vec<u16> {
    round_params_host(w, seed).iter().map(|x| x.to_bits()).collect()
}

/// bf16 training's AdamW: the f32 master weights and moments are bit-identical to the CPU AdamW
/// (the same update as fp32), and the bf16 working copy is exactly the host mirror of the
/// stochastic rounding with step t's seed at every flat index; a rerun gives the same bits.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_bf16_updates_master_like_the_cpu_and_rounds_the_copy_stochastically() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    check_adamw_bf16(&gpu, AdamWCase::new(0x6164_616d_7700_0002));
}

/// bf16 AdamW on `case`: master and moments bit for bit the CPU's, the copy the host mirror of
/// the stochastic rounding, a rerun bit for bit.
fn check_adamw_bf16(gpu: &Gpu, case: AdamWCase) {
    let AdamWCase { layout, cfg, p0, gs, lrs } = case;
    let n = layout.total;
    let run = || {
        let stream = gpu.stream();
        let mut master = stream.clone_htod(&p0).unwrap();
        let mut copy = stream.alloc_zeros::<half::bf16>(n).unwrap();
        let mut m = stream.alloc_zeros::<f32>(n).unwrap();
        let mut v = stream.alloc_zeros::<f32>(n).unwrap();
        let mut out = Vec::new();
        for (t, (g, &lr)) in gs.iter().zip(&lrs).enumerate() {
            let d_g = stream.clone_htod(g).unwrap();
            adamw_update(gpu, &layout, &mut master, &d_g, &mut m, &mut v, cfg, t as u64 + 1, lr, Some(&mut copy))
                .unwrap();
            gpu.synchronize().unwrap();
            let c: Vec<half::bf16> = stream.clone_dtoh(&copy).unwrap();
            out.push((stream.clone_dtoh(&master).unwrap(), c.iter().map(|x| x.to_bits()).collect::<Vec<u16>>()));
        }
        out
    };
    let got = run();
    let mut opt = AdamW::new(cfg, n);
    let mut p = p0.clone();
    for (step, ((g, &lr), (master, copy))) in gs.iter().zip(&lrs).zip(&got).enumerate() {
        opt.update(&layout, &mut p, g, lr);
        assert_same_bits(&format!("bf16 step {} master", step + 1), master, &p);
        let want = rounded(&p, sr_seed(step as u64 + 1));
        let bad = copy.iter().zip(&want).position(|(a, b)| a != b);
        assert!(bad.is_none(), "step {}: bf16 copy differs from the host mirror at {bad:?}", step + 1);
        // Stochastic, not nearest: some values round away from their nearest bf16.
        let away = p.iter().zip(copy).filter(|(x, c)| half::bf16::from_f32(**x).to_bits() != **c).count();
        assert!(away > n / 20, "step {}: only {away} of {n} values differ from round-to-nearest", step + 1);
    }
    let again = run();
    for (step, (a, b)) in got.iter().zip(&again).enumerate() {
        assert_same_bits(&format!("rerun bf16 step {} master", step + 1), &b.0, &a.0);
        assert_eq!(a.1, b.1, "rerun bf16 step {}: copy differs", step + 1);
    }
}

/// `params_round_bf16` (what a resumed bf16 run uses to rebuild its working copy) gives exactly the
/// bits the host mirror gives, for ordinary values, tiny and huge ones, exact bf16 values and
/// infinities.
#[test]
#[ignore = "needs a CUDA GPU"]
fn params_round_bf16_matches_the_host_mirror() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x7372_0000_0000_0001);
    let mut w: Vec<f32> = (0..100_000).map(|_| rng.uniform() * 10f32.powi(rng.below(20) as i32 - 10)).collect();
    w.extend([0.0, -0.0, 1.0, -2.5, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY]);
    let stream = gpu.stream();
    let master = stream.clone_htod(&w).unwrap();
    for seed in [sr_seed(0), sr_seed(1), sr_seed(123_456)] {
        let mut copy = stream.alloc_zeros::<half::bf16>(w.len()).unwrap();
        params_round_bf16(&gpu, &mut copy, &master, w.len(), seed).unwrap();
        let got: Vec<u16> = stream.clone_dtoh(&copy).unwrap().iter().map(|x| x.to_bits()).collect();
        let want = rounded(&w, seed);
        let bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(bad.is_none(), "seed {seed}: differs at {bad:?} ({:?})", bad.map(|i| (w[i], got[i], want[i])));
    }
}

/// A model whose tensors have odd sizes (C = 21, Vp = 103): lengths with tails past the last pack
/// (of 4 f32 and of 8 bf16) and offsets that leave some tensors' pointers not 16-byte aligned, so
/// --kernels vector runs adamw_update_vec[_bf16] on some tensors (with their scalar tails) and falls
/// back to the scalar kernels on others.
fn odd_model() -> ModelConfig {
    ModelConfig::new(7, 101, 103, 1, 3, 21).unwrap()
}

/// --kernels vector: adamw_update_vec (and the scalar fallback per tensor) bit for bit the CPU
/// AdamW (every operation correctly rounded, nothing fused: the same expressions as the scalar
/// kernel), on the tiny layout (every tensor aligned, whole packs) and the odd one; reruns identical.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_vec_matches_cpu_bitwise() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    gpu.set_kernels(Kernels::Vector);
    check_adamw(&gpu, AdamWCase::new(0x6164_616d_7665_6301));
    check_adamw(&gpu, AdamWCase::for_model(0x6164_616d_7665_6302, &odd_model()));
}

/// --kernels vector in bf16 training: adamw_update_vec_bf16 gives the CPU's master weights and
/// moments bit for bit and the host mirror's stochastically rounded copy, on both layouts.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_vec_bf16_matches_cpu_and_the_rounding_mirror() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    gpu.set_kernels(Kernels::Vector);
    check_adamw_bf16(&gpu, AdamWCase::new(0x6164_616d_7665_6303));
    check_adamw_bf16(&gpu, AdamWCase::for_model(0x6164_616d_7665_6304, &odd_model()));
}

/// `--sync step` on the device against the host path it replaces: after two micro-batches' losses
/// are summed on the device (`step_loss_accumulate`), `step_decide` records their mean (within f64
/// rounding of the host's left-to-right sum), the norm `clip_grad_norm` returns (same bits, same
/// kernels) and its clip factor (`cpu::adamw::clip_factor`, bit for bit); then the one-launch
/// `adamw_step` gives the bits of clipping plus the per-tensor `adamw_update`: weights, moments and,
/// in bf16, the working copy, with the scalar and the vector kernels. A poisoned step is marked
/// skipped and `adamw_step` then writes nothing.
#[test]
#[ignore = "needs a CUDA GPU"]
fn step_decide_and_adamw_step_match_clipping_and_adamw_update() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    use genesis::gpu::adamw::{adamw_step, adamw_table, step_decide, step_loss_accumulate, STEP_STATE_LEN};
    for kernels in [Kernels::Scalar, Kernels::Vector] {
        gpu.set_kernels(kernels);
        for bf16 in [false, true] {
            let AdamWCase { layout, cfg, p0, gs, lrs } = AdamWCase::new(0x7374_6570_0000_0001);
            let (n, g, lr, t) = (layout.total, &gs[0], lrs[0], 3u64);
            let max_norm = 0.5 * cpu_adamw::global_norm(g);
            let stream = gpu.stream();
            let fresh = || {
                let p = stream.clone_htod(&p0).unwrap();
                let copy = stream.alloc_zeros::<half::bf16>(n).unwrap();
                let m = stream.clone_htod(&vec![0.01f32; n]).unwrap();
                let v = stream.clone_htod(&vec![0.02f32; n]).unwrap();
                (p, copy, m, v)
            };
            type Slice<T> = cudarc::driver::CudaSlice<T>;
            let read_back = |p: &Slice<f32>, copy: &Slice<half::bf16>, m: &Slice<f32>, v: &Slice<f32>| {
                let c: Vec<u16> = stream.clone_dtoh(copy).unwrap().iter().map(|x| x.to_bits()).collect();
                (download(&gpu, "p", p, n), c, download(&gpu, "m", m, n), download(&gpu, "v", v, n))
            };

            // The host path: clip (reads the norm back), then one AdamW launch per tensor.
            let (mut p, mut copy, mut m, mut v) = fresh();
            let mut d_g = stream.clone_htod(g).unwrap();
            let mut scratch = stream.alloc_zeros::<f64>(global_norm_scratch_len()).unwrap();
            let norm = clip_grad_norm(&gpu, &mut d_g, &mut scratch, n, max_norm).unwrap();
            let bf = if bf16 { Some(&mut copy as &mut dyn cudarc::driver::DevicePtrMut<half::bf16>) } else { None };
            adamw_update(&gpu, &layout, &mut p, &d_g, &mut m, &mut v, cfg, t, lr, bf).unwrap();
            let want = read_back(&p, &copy, &m, &v);

            // The device path: losses summed, the step decided, one AdamW launch.
            let mut rng = Rng::new(7);
            let losses: Vec<Vec<f32>> =
                [1000usize, 333].iter().map(|&k| (0..k).map(|_| 5.0 + rng.uniform()).collect()).collect();
            let host_loss =
                losses.iter().map(|l| l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64).sum::<f64>() / 2.0;
            let decide = |poison: bool| {
                let mut state = stream.alloc_zeros::<f64>(STEP_STATE_LEN).unwrap();
                for l in &losses {
                    step_loss_accumulate(&gpu, &mut state, &stream.clone_htod(l).unwrap(), l.len()).unwrap();
                }
                let d_g = stream.clone_htod(g).unwrap();
                let mut scratch = stream.alloc_zeros::<f64>(global_norm_scratch_len()).unwrap();
                step_decide(&gpu, &mut state, &d_g, &mut scratch, n, max_norm, 2, poison).unwrap();
                (state, d_g)
            };
            let (state, d_g) = decide(false);
            let record: Vec<f64> = stream.clone_dtoh(&state).unwrap();
            assert_eq!(record[1].to_bits(), norm.to_bits(), "step_decide's norm vs clip_grad_norm's");
            assert_eq!(record[2] as f32, cpu_adamw::clip_factor(norm, max_norm), "clip factor");
            assert!(record[2] < 1.0, "the test must clip: factor {}", record[2]);
            assert!((record[0] - host_loss).abs() <= 1e-14 * host_loss, "loss {} vs host {host_loss}", record[0]);
            assert_eq!(record[3], 1.0, "a finite step is applied");
            let (table, packed) = adamw_table(&layout).unwrap();
            let d_table = stream.clone_htod(&table).unwrap();
            let (mut p, mut copy, mut m, mut v) = fresh();
            let bf = if bf16 { Some(&mut copy as &mut dyn cudarc::driver::DevicePtrMut<half::bf16>) } else { None };
            adamw_step(&gpu, &layout, &d_table, packed, &state, &mut p, &d_g, &mut m, &mut v, cfg, t, lr, bf).unwrap();
            let got = read_back(&p, &copy, &m, &v);
            let what = format!("{kernels:?} bf16={bf16}");
            assert_same_bits(&format!("{what}: weights"), &got.0, &want.0);
            assert_same_bits(&format!("{what}: m"), &got.2, &want.2);
            assert_same_bits(&format!("{what}: v"), &got.3, &want.3);
            assert_eq!(got.1, want.1, "{what}: bf16 working copy");

            // Poisoned: recorded as skipped, and AdamW writes nothing.
            let (state, d_g) = decide(true);
            let record: Vec<f64> = stream.clone_dtoh(&state).unwrap();
            assert!(record[0].is_nan() && record[3] == 0.0, "poisoned step record {record:?}");
            let (mut p, mut copy, mut m, mut v) = fresh();
            let bf = if bf16 { Some(&mut copy as &mut dyn cudarc::driver::DevicePtrMut<half::bf16>) } else { None };
            adamw_step(&gpu, &layout, &d_table, packed, &state, &mut p, &d_g, &mut m, &mut v, cfg, t, lr, bf).unwrap();
            let skipped = read_back(&p, &copy, &m, &v);
            assert_same_bits(&format!("{what}: skipped step weights"), &skipped.0, &p0);
            assert!(skipped.1.iter().all(|&x| x == 0), "{what}: a skipped step wrote the bf16 copy");
            assert!(skipped.2.iter().all(|&x| x == 0.01), "{what}: a skipped step wrote m");
        }
    }
    gpu.set_kernels(Kernels::Scalar);
}
