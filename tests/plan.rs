//! The GPU memory plan (`train::plan`) and `genesis info`, which prints it without a GPU.

mod common;

use common::{genesis, text};
use genesis::gpu::gpt::{Act, ActLayout, ACTS};
use genesis::gpu::plan::{
    layout_for, layout_with, plan, plan_with, MemoryPlan, MAX_MICRO_BATCH, USABLE_FRACTION, WORKSPACE_BYTES,
};
use genesis::gpu::{Attention, Kernels};
use genesis::model::ModelConfig;

const GIB: u64 = 1 << 30;
const MODELS: [&str; 4] = ["tiny", "gpt2-124m", "genesis-150m", "gpt2-350m"];

fn model(name: &str) -> ModelConfig {
    ModelConfig::preset(name).unwrap()
}

fn sum(p: &MemoryPlan) -> u64 {
    p.params + p.grads + p.adam + p.master + p.activations + p.activation_grads + p.logits + p.workspace
}

#[test]
fn totals_add_up() {
    for name in MODELS {
        let cfg = model(name);
        let n = cfg.num_params() as u64;
        for bf16 in [false, true] {
            let p = plan(&cfg, cfg.max_seq_len.min(1024), 524_288, 80 * GIB, bf16).unwrap();
            assert_eq!(p.total, sum(&p), "{name} bf16={bf16}");
            assert_eq!(p.parts().iter().map(|x| x.1).sum::<u64>(), p.total);
            let e = if bf16 { 2 } else { 4 };
            // Gradients are f32 in both precisions (bf16 mode keeps only activations and the working
            // copy of the weights in bf16).
            assert_eq!((p.params, p.grads, p.adam), (n * e, n * 4, n * 8), "{name}");
            assert_eq!(p.master, if bf16 { n * 4 } else { 0 }, "{name}");
            assert_eq!(p.workspace, WORKSPACE_BYTES);
            assert!(p.total as f64 <= 80.0 * GIB as f64 * USABLE_FRACTION, "{name}: {p:?}");
            // The batch-dependent parts grow linearly (up to alignment) with the micro-batch.
            let one = layout_for(&cfg, cfg.max_seq_len.min(1024), 1, bf16);
            // (up to the 256-byte alignment of each buffer and the LayerNorm reduction's row chunks)
            let linear = one.activation_grads * p.micro_batch as u64;
            assert!(p.activation_grads.abs_diff(linear) <= linear / 100, "{name}: {} vs {linear}", p.activation_grads);
            let per_row = one.activations + one.logits;
            let acts = p.activations + p.logits;
            assert!(acts.abs_diff(per_row * p.micro_batch as u64) <= 256 * 32 * p.micro_batch as u64, "{name}");
        }
    }
}

#[test]
fn more_memory_never_gives_a_smaller_batch() {
    for name in MODELS {
        let cfg = model(name);
        for bf16 in [false, true] {
            let mut last = 0;
            for gib in (1..=160).map(|g| g as u64 * GIB / 2) {
                if let Ok(p) = plan(&cfg, cfg.max_seq_len.min(1024), 524_288, gib, bf16) {
                    assert!(p.micro_batch >= last, "{name} bf16={bf16} at {gib} bytes: {} < {last}", p.micro_batch);
                    assert!(p.micro_batch.is_power_of_two() && p.micro_batch <= MAX_MICRO_BATCH);
                    last = p.micro_batch;
                } else {
                    assert_eq!(last, 0, "{name}: fits in less memory but not in {gib} bytes");
                }
            }
            assert!(last > 0, "{name} bf16={bf16} never fits in 80 GiB");
        }
    }
}

#[test]
fn accumulation_covers_the_tokens_per_step() {
    for name in MODELS {
        let cfg = model(name);
        for seq in [cfg.max_seq_len / 4, cfg.max_seq_len] {
            for tokens in [1usize, 1000, seq, 3 * seq + 1, 65_536, 524_288, 1_000_000] {
                for mem in [24 * GIB, 80 * GIB] {
                    let p = plan(&cfg, seq, tokens, mem, true).unwrap();
                    let covered = p.grad_accum * p.micro_batch * seq;
                    assert!(covered >= tokens, "{name} seq {seq} tokens {tokens}: {p:?}");
                    // No whole micro-batch more than needed.
                    assert!(
                        (p.grad_accum - 1) * p.micro_batch * seq < tokens,
                        "{name} seq {seq} tokens {tokens}: {p:?}"
                    );
                    // No more sequences per micro-batch than the step needs.
                    assert!(p.micro_batch <= tokens.div_ceil(seq), "{name} seq {seq} tokens {tokens}: {p:?}");
                }
            }
        }
    }
}

#[test]
fn genesis_150m_fits_a_24gb_gpu() {
    let cfg = model("genesis-150m");
    for bf16 in [true, false] {
        let p = plan(&cfg, 1024, 524_288, 24 * GIB, bf16).unwrap();
        assert!(p.total as f64 <= 24.0 * GIB as f64 * 0.9, "{p:?}");
        assert!(p.micro_batch >= 4, "bf16={bf16}: micro-batch {}", p.micro_batch);
        assert_eq!(p.grad_accum * p.micro_batch * 1024, 524_288);
        // The next batch up would not fit.
        if p.micro_batch < MAX_MICRO_BATCH {
            assert!(layout_for(&cfg, 1024, p.micro_batch * 2, bf16).total as f64 > 24.0 * GIB as f64 * 0.9);
        }
        println!("genesis-150m 24 GiB bf16={bf16}: {p:?}");
    }
}

#[test]
fn a_tiny_gpu_is_an_error_naming_the_requirement() {
    let cfg = model("genesis-150m");
    let need = layout_for(&cfg, 1024, 1, false).total;
    let e = plan(&cfg, 1024, 524_288, GIB, false).unwrap_err().to_string();
    assert!(e.contains("micro-batch 1") && e.contains(&format!("{:.2} GiB", need as f64 / GIB as f64)), "{e}");
    assert!(e.contains("--precision bf16"), "{e}");
    assert!(plan(&cfg, 2048, 524_288, 80 * GIB, true).unwrap_err().to_string().contains("--seq 2048"));
    assert!(plan(&cfg, 1024, 0, 80 * GIB, true).is_err());
}

#[test]
fn info_prints_the_table_without_a_gpu() {
    let out = genesis(&["info", "--model", "genesis-150m", "--gpu-mem", "24"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    // The default precision is genesis train's: fp32.
    let p = plan(&model("genesis-150m"), 1024, 524_288, 24 * GIB, false).unwrap();
    for part in [
        "genesis-150m",
        "fp32",
        "parameters",
        "gradients",
        "adamw m+v",
        "master weights",
        "activations",
        "activation grads",
        "logits",
        "workspace",
        "total",
        &format!("micro-batch {} x seq 1024", p.micro_batch),
        &format!("grad accum {}", p.grad_accum),
        &format!("{:.2}", p.total as f64 / GIB as f64),
    ] {
        assert!(stdout.contains(part), "info output lacks {part:?}:\n{stdout}");
    }

    let bf16 = genesis(&["info", "--model", "genesis-150m", "--gpu-mem", "24", "--precision", "bf16", "--seq", "512"]);
    assert!(bf16.status.success());
    let shown = text(&bf16.stdout);
    let p = plan(&model("genesis-150m"), 512, 524_288, 24 * GIB, true).unwrap();
    assert!(
        shown.contains("bf16, seq 512") && shown.contains(&format!("micro-batch {} x seq 512", p.micro_batch)),
        "{shown}"
    );

    let small = genesis(&["info", "--model", "gpt2-350m", "--gpu-mem", "2", "--precision", "fp32"]);
    assert!(!small.status.success());
    assert!(text(&small.stderr).contains("needs at least"));
}

/// With flash attention the activation layout holds no T x T tensor (the (L,B,NH,T,T)
/// probabilities and the permute scratch are empty, an (L,B,NH,T) f32 log-sum-exp appears), the
/// backward's scratch loses its (B,NH,T,T) gradient, and so genesis-150m at seq 1024 in bf16 fits
/// a larger micro-batch on a 24 GiB GPU.
#[test]
fn flash_attention_plans_no_t_by_t_tensor() {
    let cfg = model("genesis-150m");
    let (b, t, nh, l) = (4usize, 1024usize, cfg.num_heads, cfg.num_layers);
    let mat = ActLayout::build(&cfg, b, t, 2, true, Attention::Materialized, Kernels::Scalar);
    let flash = ActLayout::build(&cfg, b, t, 2, true, Attention::Flash, Kernels::Scalar);
    assert_eq!(mat.place(Act::Att, 0, 2).1, b * nh * t * t);
    assert_eq!(mat.place(Act::Lse, 0, 4).1, 0);
    assert_eq!(flash.place(Act::Att, 0, 2).1, 0, "flash keeps the probabilities");
    assert_eq!(flash.place(Act::Scratch, 0, 2).1, 0, "flash keeps the permute scratch");
    assert_eq!(flash.place(Act::Lse, 0, 4).1, b * nh * t);
    // The whole difference is the T x T matrices and the scratch, less the log-sum-exp.
    let att_bytes = l * b * nh * t * t * 2;
    let scratch_bytes = 4 * b * t * cfg.channels * 2;
    let lse_bytes = l * b * nh * t * 4;
    assert_eq!(mat.bytes() - flash.bytes(), att_bytes + scratch_bytes - lse_bytes);
    // Backward scratch: the (B,NH,T,T) gradient and four (B,T,C) blocks go, a (B,NH,T) f32 comes.
    let (pm, pf) = (
        layout_with(&cfg, t, b, true, Attention::Materialized, Kernels::Scalar),
        layout_with(&cfg, t, b, true, Attention::Flash, Kernels::Scalar),
    );
    assert_eq!(pm, layout_for(&cfg, t, b, true));
    let grad_saving = (b * nh * t * t + 4 * b * t * cfg.channels) * 2 - b * nh * t * 4;
    assert_eq!(pm.activation_grads - pf.activation_grads, grad_saving as u64);
    assert!(pf.activation_grads < pm.activation_grads / 2, "{pf:?}");

    let m24 = plan_with(&cfg, 1024, 524_288, 24 * GIB, true, Attention::Materialized, Kernels::Scalar).unwrap();
    let f24 = plan_with(&cfg, 1024, 524_288, 24 * GIB, true, Attention::Flash, Kernels::Scalar).unwrap();
    assert_eq!(m24, plan(&cfg, 1024, 524_288, 24 * GIB, true).unwrap());
    assert!(f24.micro_batch > m24.micro_batch, "flash {f24:?} vs materialized {m24:?}");
    assert!(f24.total as f64 <= 24.0 * GIB as f64 * USABLE_FRACTION);
    println!("genesis-150m 24 GiB bf16: micro-batch {} materialized, {} flash", m24.micro_batch, f24.micro_batch);
}

/// `genesis info --attention flash` prints the smaller plan; with fp32 it is refused in one line
/// naming both options.
#[test]
fn info_shows_the_flash_plan() {
    let args = ["info", "--model", "genesis-150m", "--gpu-mem", "24", "--precision", "bf16"];
    let mat = genesis(&args);
    assert!(mat.status.success(), "{}", text(&mat.stderr));
    let flash = genesis(&[&args[..], &["--attention", "flash"]].concat());
    assert!(flash.status.success(), "{}", text(&flash.stderr));
    let (mat, flash) = (text(&mat.stdout), text(&flash.stdout));
    assert!(mat.contains("materialized attention") && mat.contains("micro-batch 16 x seq 1024"), "{mat}");
    assert!(flash.contains("flash attention") && flash.contains("micro-batch 32 x seq 1024"), "{flash}");
    assert!(mat.contains("--attention flash would need") && mat.contains("fits micro-batch 32"), "{mat}");
    assert!(flash.contains("flash attention saves") && flash.contains("at micro-batch 32"), "{flash}");
    let fp32 = genesis(&["info", "--model", "genesis-150m", "--gpu-mem", "24", "--attention", "flash"]);
    assert!(!fp32.status.success());
    let e = text(&fp32.stderr);
    assert!(e.contains("--attention flash needs --precision bf16") && e.trim().lines().count() == 1, "{e}");
}

/// The byte ranges `[start, end)` of every tensor of `lay` (activations of `elem` bytes): one per
/// layer for a per-layer tensor, one for a tensor the layers share or that has no layers; empty
/// tensors left out.
fn tensor_ranges(lay: &ActLayout, cfg: &ModelConfig, elem: usize) -> Vec<(Act, usize, usize)> {
    let mut out = Vec::new();
    for a in ACTS {
        let e = if a.is_f32() { 4 } else { elem };
        for l in 0..cfg.num_layers {
            let (off, n) = lay.place(a, l, e);
            if n > 0 && !out.contains(&(a, off, off + n * e)) {
                out.push((a, off, off + n * e));
            }
        }
    }
    out
}

/// Asserts no two tensors of `lay` overlap and all lie within its total.
fn assert_disjoint_within_total(lay: &ActLayout, cfg: &ModelConfig, elem: usize, what: &str) {
    let mut ranges = tensor_ranges(lay, cfg, elem);
    ranges.sort_by_key(|r| r.1);
    for pair in ranges.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "{what}: {:?} overlaps {:?}", pair[0], pair[1]);
    }
    let last = ranges.last().unwrap();
    assert!(last.2 <= lay.bytes(), "{what}: {last:?} ends past the total {}", lay.bytes());
}

/// With --kernels vector attproj and fcproj are one (B,T,C) buffer each, at the same place for
/// every layer; every other tensor keeps its size; the allocation shrinks by exactly the two
/// per-layer buffers less the shared ones (each rounded up to the 256-byte alignment); and in both
/// layouts no two tensors overlap and all lie within the total. Over both attention modes, training
/// and evaluation, both element sizes and a few shapes.
#[test]
fn vector_kernels_lay_out_one_attproj_and_fcproj() {
    let round = |bytes: usize| bytes.div_ceil(256) * 256;
    for (name, b, t) in [("tiny", 2usize, 16usize), ("tiny", 3, 37), ("gpt2-124m", 2, 64), ("genesis-150m", 1, 1024)] {
        let cfg = model(name);
        let (c, l) = (cfg.channels, cfg.num_layers);
        for (elem, train, attention) in [
            (4, true, Attention::Materialized),
            (4, false, Attention::Materialized),
            (2, true, Attention::Materialized),
            (2, true, Attention::Flash),
            (2, false, Attention::Flash),
        ] {
            let what = format!("{name} B={b} T={t} elem {elem} train {train} {attention}");
            let scalar = ActLayout::build(&cfg, b, t, elem, train, attention, Kernels::Scalar);
            let vector = ActLayout::build(&cfg, b, t, elem, train, attention, Kernels::Vector);
            assert_eq!((scalar.kernels, vector.kernels), (Kernels::Scalar, Kernels::Vector));
            for a in ACTS {
                let e = if a.is_f32() { 4 } else { elem };
                assert_eq!(vector.place(a, 0, e).1, scalar.place(a, 0, e).1, "{what}: {a:?} changed size");
            }
            for a in [Act::Attproj, Act::Fcproj] {
                let shared = vector.place(a, 0, elem);
                assert_eq!(shared.1, b * t * c, "{what}: {a:?}");
                for layer in 1..l {
                    assert_eq!(vector.place(a, layer, elem), shared, "{what}: {a:?} of layer {layer} elsewhere");
                    assert_eq!(scalar.place(a, layer, elem).0, scalar.place(a, 0, elem).0 + layer * b * t * c * elem);
                }
            }
            let per_tensor = round(l * b * t * c * elem) - round(b * t * c * elem);
            assert_eq!(scalar.bytes() - vector.bytes(), 2 * per_tensor, "{what}");
            assert_disjoint_within_total(&scalar, &cfg, elem, &format!("{what} scalar"));
            assert_disjoint_within_total(&vector, &cfg, elem, &format!("{what} vector"));
        }
    }
}

/// The plan for --kernels vector: activations smaller by exactly the two shared buffers' saving,
/// every other part the same; so never a smaller micro-batch, and `plan` is the scalar plan.
#[test]
fn vector_kernels_plan_smaller_activations() {
    let cfg = model("genesis-150m");
    let (b, t) = (4usize, 1024usize);
    for (bf16, attention) in
        [(false, Attention::Materialized), (true, Attention::Materialized), (true, Attention::Flash)]
    {
        let elem = if bf16 { 2 } else { 4 };
        let s = layout_with(&cfg, t, b, bf16, attention, Kernels::Scalar);
        let v = layout_with(&cfg, t, b, bf16, attention, Kernels::Vector);
        let saving = 2 * (cfg.num_layers - 1) * b * t * cfg.channels * elem;
        assert_eq!(s.activations - v.activations, saving as u64, "bf16={bf16} {attention}");
        assert_eq!(s.total - v.total, saving as u64);
        let unchanged =
            |p: &MemoryPlan| (p.params, p.grads, p.adam, p.master, p.activation_grads, p.logits, p.workspace);
        assert_eq!(unchanged(&s), unchanged(&v));
        for gpu in [12 * GIB, 24 * GIB, 80 * GIB] {
            let ps = plan_with(&cfg, t, 524_288, gpu, bf16, attention, Kernels::Scalar).unwrap();
            let pv = plan_with(&cfg, t, 524_288, gpu, bf16, attention, Kernels::Vector).unwrap();
            assert!(pv.micro_batch >= ps.micro_batch, "vector {pv:?} vs scalar {ps:?}");
            if attention == Attention::Materialized {
                assert_eq!(ps, plan(&cfg, t, 524_288, gpu, bf16).unwrap());
            }
        }
    }
}

/// `genesis info --kernels vector` plans for the shared buffers and says what they save; the
/// default (scalar) says nothing about it; a misspelt mode is refused naming both.
#[test]
fn info_shows_the_vector_kernels_plan() {
    let cfg = model("genesis-150m");
    let args = ["info", "--model", "genesis-150m", "--gpu-mem", "24", "--precision", "bf16"];
    let scalar = genesis(&args);
    let vector = genesis(&[&args[..], &["--kernels", "vector"]].concat());
    assert!(scalar.status.success() && vector.status.success(), "{}", text(&vector.stderr));
    let (scalar, vector) = (text(&scalar.stdout), text(&vector.stdout));
    let p = plan_with(&cfg, 1024, 524_288, 24 * GIB, true, Attention::Materialized, Kernels::Vector).unwrap();
    let b = p.micro_batch;
    let saving = layout_with(&cfg, 1024, b, true, Attention::Materialized, Kernels::Scalar).total
        - layout_with(&cfg, 1024, b, true, Attention::Materialized, Kernels::Vector).total;
    let line = format!("vector kernels save {:.2} GiB at micro-batch {b}", saving as f64 / GIB as f64);
    assert!(vector.contains("materialized attention, vector kernels") && vector.contains(&line), "{vector}");
    assert!(vector.contains(&format!("{:>8.2}", p.activations as f64 / GIB as f64)), "{vector}");
    assert!(scalar.contains("scalar kernels") && !scalar.contains("vector kernels save"), "{scalar}");
    let bad = genesis(&["info", "--model", "tiny", "--kernels", "vec"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("scalar or vector"), "{}", text(&bad.stderr));
}
