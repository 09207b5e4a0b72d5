//! Where a training step's time goes: the bytes and FLOPs each op family moves in one step (a model
//! from the shapes, no device needed), the ceilings to hold them against (device-to-device copy
//! bandwidth and the cuBLAS GEMM rate, measured on the device), and the per-family table
//! `genesis bench train --profile` prints.
//!
//! The op names are those [`GpuModel`](super::gpt::GpuModel) records a CUDA event after when
//! profiling; [`family`] groups them. Byte counts are the traffic of the kernels as they are today
//! (reads plus writes of every tensor each kernel touches, once), so they are the floor of the
//! current algorithm: a fused or flash kernel moves fewer, and its model must change with it.

use super::blas::Blas;
use super::device::Gpu;
use super::matmul::matmul_forward;
use super::{Attention, BiasGrad, Float, GeluFusion, Kernels, StepSync};
use crate::model::ModelConfig;
use anyhow::{Context, Result};
use cudarc::driver::sys;

/// What limits a family: memory bandwidth, the tensor cores, or the host (copies over PCIe and
/// waits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Memory,
    Compute,
    Host,
}

/// Bytes read plus written and FLOPs of one op (or family) over one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub bytes: f64,
    pub flops: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.bytes += o.bytes;
        self.flops += o.flops;
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(mut self, o: Cost) -> Cost {
        self += o;
        self
    }
}

/// The family of the op `name` (the name of a profiling mark), or `"other"`.
pub fn family(name: &str) -> &'static str {
    match name {
        "start" => "token upload",
        "embedding" => "embedding fwd",
        "embedding bwd" => "embedding bwd",
        "layernorm (+residual)" => "layernorm fwd",
        "layernorm bwd" => "layernorm bwd",
        "matmul qkv" | "matmul attproj" | "matmul fc" | "matmul fc + gelu" | "matmul fcproj" | "matmul logits" => {
            "matmul fwd"
        }
        "matmul bwd logits"
        | "matmul bwd fcproj"
        | "matmul bwd fcproj + dgelu"
        | "matmul bwd fc"
        | "matmul bwd attproj"
        | "matmul bwd qkv" => "matmul bwd",
        "attention" => "attention fwd",
        "attention bwd" => "attention bwd",
        "gelu" => "gelu fwd",
        "gelu bwd" => "gelu bwd",
        "classifier" => "classifier",
        "memset" => "memset",
        "loss readback" => "loss readback",
        "loss sum" => "loss sum",
        "grad norm" => "grad norm",
        "adamw" => "adamw",
        _ => "other",
    }
}

/// The kind of `family`: matmuls and attention (built on cuBLAS GEMMs) are `Compute`, copies to
/// and from the host `Host`, everything else `Memory` (the bandwidth-bound total of issue 15). What
/// limits a family on a given device is [`FamilyRow::limit`] (the attention that materialises
/// its T x T scores is limited by memory despite its kind).
pub fn bound(family: &str) -> Bound {
    match family {
        "matmul fwd" | "matmul bwd" | "attention fwd" | "attention bwd" => Bound::Compute,
        "token upload" | "loss readback" => Bound::Host,
        _ => Bound::Memory,
    }
}

/// The code paths a GPU training step takes, as `train` and `bench train` choose them: what the
/// cost model prices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paths {
    pub attention: Attention,
    pub kernels: Kernels,
    pub sync: StepSync,
    pub gelu_fusion: GeluFusion,
    pub bias_grad: BiasGrad,
}

/// Per op name, the cost of one training step (forward with the loss, backward, gradient norm,
/// AdamW) of `cfg` on a (b, t) batch with activations of `elem` bytes (4 fp32, 2 bf16); gradients,
/// moments and master weights are f32. In first-run order; each name once with its total.
/// `paths` picks the attention rows' model (materialised, or the flash kernels), whether the
/// backward overwrites its activation gradients instead of clearing them first (`--kernels
/// vector`), whether the loss is summed on the device and clipping folded into AdamW
/// (`--sync step|graph`), and where GELU runs (`--gelu-fusion`: in the fc GEMM's epilogue, which
/// also writes the pre-GELU aux; its derivative in the fcproj dinp GEMM's, which reads it), and
/// how the bias gradients are summed (`--bias-grad`: a pass of their own over dout, or the dweight
/// GEMM's BGRADB epilogue, which reads dout anyway, then an add of OC f32 values).
pub fn train_step_costs(cfg: &ModelConfig, b: usize, t: usize, elem: usize, paths: Paths) -> Vec<(&'static str, Cost)> {
    let (attention, overwrite, queued) =
        (paths.attention, paths.kernels == Kernels::Vector, paths.sync.queues_whole_steps());
    let f = |x: usize| x as f64;
    let (n, c, l, vp, nh) = (f(b * t), f(cfg.channels), f(cfg.num_layers), f(cfg.padded_vocab_size), f(cfg.num_heads));
    let (e, tt, bb) = (f(elem), f(t), f(b));
    let p = f(crate::model::ParamLayout::new(cfg).total);
    let nc = n * c;
    let mem = |bytes: f64| Cost { bytes, flops: 0.0 };
    // out (N,OC) = inp (N,IC) W^T + bias: read inp, W, bias, write out.
    let mm_fwd = |ic: f64, oc: f64, bias: bool| Cost {
        bytes: e * (n * ic + ic * oc + n * oc + if bias { oc } else { 0.0 }),
        flops: 2.0 * n * ic * oc,
    };
    // dinp += dout W (read dout, W, dinp; write dinp; overwriting, dinp is not read); dW +=
    // dout^T inp (read dout, inp; f32 dW read and written); dbias: dout read once more.
    let epilogue_bias = paths.bias_grad == BiasGrad::Epilogue;
    let bias_bytes = |oc: f64| if epilogue_bias { 4.0 * oc + 12.0 * oc } else { e * n * oc };
    let mm_bwd_passes = |ic: f64, oc: f64, bias: bool, dinp_passes: f64| Cost {
        bytes: e * (2.0 * n * oc + dinp_passes * n * ic + oc * ic)
            + 8.0 * oc * ic
            + if bias { bias_bytes(oc) } else { 0.0 },
        flops: 4.0 * n * ic * oc,
    };
    let mm_bwd = |ic: f64, oc: f64, bias: bool| mm_bwd_passes(ic, oc, bias, if overwrite { 2.0 } else { 3.0 });
    let (fuse_fwd, fuse_bwd) = (paths.gelu_fusion.forward(), paths.gelu_fusion.backward());
    let (attn_fwd, attn_bwd) = match attention {
        // Materialised: (B,NH,T,T) scores. Forward: qkv permuted into q, k, v (read 3NC, write
        // 3NC); q k^T written (B*NH*T*T), softmax reads and rewrites it, att v reads it again with
        // v (NC) and writes y (NC), unpermuted (read and write NC). FLOPs: the two batched GEMMs
        // over the full square, 2 * 2*B*T*T*C. Backward: datt (written), att read for dv, softmax
        // backward reads att and datt and writes dpreatt, which the dq and dk GEMMs read twice: 7
        // passes over the square; permutes of dy, q, k, v and the unpermute-add into dqkv: about
        // 12 NC. FLOPs: four GEMMs over the square.
        Attention::Materialized => {
            let att_sq = bb * nh * tt * tt;
            (
                Cost { bytes: e * (6.0 * nc + 4.0 * att_sq + 2.0 * nc + 2.0 * nc), flops: 4.0 * bb * tt * tt * c },
                Cost { bytes: e * (12.0 * nc + 7.0 * att_sq), flops: 8.0 * bb * tt * tt * c },
            )
        }
        // Flash (kernels/flash_attention.cu), square tiles, only tiles on or below the diagonal: of
        // the nq x nq tile square, nq(nq+1)/2 run. FLOPs as executed, recomputation included: 2
        // products of 2*T*T*hs per (b, h) forward, 7 backward (dK/dV: S^T, dV, dP^T, dK; dQ: S,
        // dP, dQ). Bytes are each tensor once: the tiles read again by later query (key) tiles of
        // the same head come from L2 (one head's K and V are 256 KB at T = 1024), so only the first
        // read is counted. Forward: qkv read, out and the f32 lse written. Backward: D reads out
        // and dout, writes D; dK/dV reads qkv, dout, lse and D, writes dk and dv; dQ reads qkv,
        // dout, lse, D, writes dq.
        Attention::Flash => {
            let nq = f(t.div_ceil(crate::cpu::flash_attention::BR));
            let frac = (nq + 1.0) / (2.0 * nq);
            let rows = bb * nh * tt; // lse and D, f32
            (
                Cost { bytes: e * 4.0 * nc + 4.0 * rows, flops: 4.0 * frac * bb * tt * tt * c },
                Cost {
                    bytes: (e * 2.0 * nc + 4.0 * rows) + (e * 6.0 * nc + 8.0 * rows) + (e * 5.0 * nc + 8.0 * rows),
                    flops: 14.0 * frac * bb * tt * tt * c,
                },
            )
        }
    };
    // LayerNorm forward: read x (N,C) and the two (C) parameters, write out and the f32 mean and
    // rstd (N each). The fused residual variant also reads the second input and writes the sum.
    let ln = mem(e * (2.0 * nc + 2.0 * c) + 8.0 * n);
    let res_ln = mem(e * (4.0 * nc + 2.0 * c) + 8.0 * n);
    // LayerNorm backward: read dout, inp, the weight, mean and rstd, read and write dinp; per
    // chunk of rows one f32 partial of dweight and dbias written then read, and the f32 dweight
    // and dbias read and written.
    let ln_chunks = f((b * t).div_ceil((b * t).div_ceil(512).max(32)));
    let ln_bwd = mem(e * (4.0 * nc + c) + 8.0 * n + 16.0 * ln_chunks * c + 16.0 * c);
    // Embedding backward: dout read; at most min(N, V) distinct wte rows read and written in f32,
    // the wpe gradient (T,C) read and written, the token buckets (about 3N ints) uploaded.
    let distinct = n.min(f(cfg.vocab_size));
    let emb_bwd = mem(e * nc + 8.0 * distinct * c + 8.0 * tt * c + 12.0 * n);
    // Gradient zeroing: all P f32 gradients, then the activation gradients the backward clears
    // (dresidual and dln once; per layer dfch_gelu and dfch (4C each), dln twice, datty, dqkv;
    // overwriting, only dresidual).
    // DGELU writes dfch straight from dout: dfch_gelu and dfch (8C per layer) are not cleared.
    let cleared = if overwrite { nc } else { 2.0 * nc + l * if fuse_bwd { 3.0 } else { 11.0 } * nc };
    let memset = mem(4.0 * p + e * cleared);
    // AdamW reads weights, gradients and both moments, writes weights and moments (f32), and in
    // bf16 also writes the bf16 working copy of the weights.
    let adamw = mem(28.0 * p + if elem == 2 { 2.0 * p } else { 0.0 });
    let times = |k: f64, x: Cost| Cost { bytes: k * x.bytes, flops: k * x.flops };
    let mut ln_fwd = ln;
    ln_fwd += times(2.0 * l, res_ln);
    let mut costs = vec![
        ("start", mem(8.0 * n)),
        ("embedding", mem(4.0 * n + e * (2.0 * nc + tt * c))),
        ("layernorm (+residual)", ln_fwd),
        ("matmul qkv", times(l, mm_fwd(c, 3.0 * c, true))),
        ("attention", times(l, attn_fwd)),
        ("matmul attproj", times(l, mm_fwd(c, c, true))),
        // Fused: one GEMM writes the GELU output and the pre-GELU aux (4C each), no GELU kernel.
        if fuse_fwd {
            ("matmul fc + gelu", times(l, mm_fwd(c, 4.0 * c, true) + mem(e * 4.0 * nc)))
        } else {
            ("matmul fc", times(l, mm_fwd(c, 4.0 * c, true)))
        },
        ("gelu", times(l, mem(e * 8.0 * nc))),
        ("matmul fcproj", times(l, mm_fwd(4.0 * c, c, true))),
        ("matmul logits", mm_fwd(c, vp, false)),
        // Reads the logits and overwrites them with dloss * (softmax - onehot); targets, losses.
        ("classifier", mem(e * 2.0 * n * vp + 8.0 * n)),
        ("memset", memset),
        ("matmul bwd logits", mm_bwd(c, vp, false)),
        ("layernorm bwd", times(2.0 * l + 1.0, ln_bwd)),
        // Fused: DGELU overwrites dfch (not read) and reads the pre-GELU aux (4C), no GELU kernel.
        if fuse_bwd {
            ("matmul bwd fcproj + dgelu", times(l, mm_bwd_passes(4.0 * c, c, true, 2.0) + mem(e * 4.0 * nc)))
        } else {
            ("matmul bwd fcproj", times(l, mm_bwd(4.0 * c, c, true)))
        },
        // dinp += gelu'(inp) * dout over (N,4C): read inp and dout, read (unless overwriting) and
        // write dinp.
        ("gelu bwd", times(l, mem(e * if overwrite { 12.0 } else { 16.0 } * nc))),
        ("matmul bwd fc", times(l, mm_bwd(c, 4.0 * c, true))),
        ("matmul bwd attproj", times(l, mm_bwd(c, c, true))),
        ("attention bwd", times(l, attn_bwd)),
        ("matmul bwd qkv", times(l, mm_bwd(c, 3.0 * c, true))),
        ("embedding bwd", emb_bwd),
        // The f32 losses: copied to the host, or summed on the device.
        (if queued { "loss sum" } else { "loss readback" }, mem(4.0 * n)),
        // Sum of squares reads the P gradients (a clip then reads and writes them once more, which
        // a queued step folds into AdamW).
        ("grad norm", mem(4.0 * p)),
        ("adamw", adamw),
    ];
    costs.retain(|(name, _)| !(fuse_fwd && *name == "gelu" || fuse_bwd && *name == "gelu bwd"));
    costs
}

/// [`train_step_costs`] summed per [`family`], in first-seen order.
pub fn family_costs(cfg: &ModelConfig, b: usize, t: usize, elem: usize, paths: Paths) -> Vec<(&'static str, Cost)> {
    let mut out: Vec<(&'static str, Cost)> = Vec::new();
    for (name, cost) in train_step_costs(cfg, b, t, elem, paths) {
        let fam = family(name);
        match out.iter_mut().find(|(f, _)| *f == fam) {
            Some(e) => e.1 += cost,
            None => out.push((fam, cost)),
        }
    }
    out
}

/// What the device can do, measured in the same run.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    /// Device-to-device copy of a 1 GiB buffer, bytes read plus written per second (GB/s), the
    /// median of several.
    pub copy_gb_per_sec: f64,
    /// A large square GEMM through the same cuBLASLt path as the model's matmuls, in the model's
    /// element type (bf16, or fp32 with TF32 when allowed), TFLOP/s, the median of several.
    pub gemm_tflops: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Milliseconds `work` takes on the stream, from CUDA events around it.
fn time_ms(gpu: &Gpu, work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = gpu.stream().record_event(flags)?;
    work()?;
    let end = gpu.stream().record_event(flags)?;
    Ok(start.elapsed_ms(&end)? as f64)
}

/// Measures the [`Ceilings`] on `gpu` for matmuls of type `T` through `blas`: a 1 GiB
/// device-to-device copy and an 8192-cubed GEMM, each timed with events, one warmup and the median
/// of five. Allocates about 1.5 GiB (fp32: 2.75 GiB) for the duration.
pub fn measure_ceilings<T: Float>(gpu: &Gpu, blas: &Blas) -> Result<Ceilings> {
    let stream = gpu.stream();
    let copy_gb_per_sec = {
        let bytes = 1usize << 30;
        let src = stream.alloc_zeros::<u8>(bytes).context("allocating 1 GiB to measure the copy bandwidth")?;
        let mut dst = stream.alloc_zeros::<u8>(bytes).context("allocating 1 GiB to measure the copy bandwidth")?;
        let mut runs = Vec::new();
        for i in 0..6 {
            let ms = time_ms(gpu, || Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
            if i > 0 {
                runs.push(2.0 * bytes as f64 / (ms * 1e-3) / 1e9);
            }
        }
        median(runs)
    };
    let gemm_tflops = {
        // Random operands: tensor cores run faster on zeros (the H200 notes: 894 against 788
        // TFLOP/s), which would flatter the ceiling.
        let m = 8192usize;
        let mut rng = crate::rng::Rng::new(11);
        let host: Vec<T> = (0..m * m).map(|_| T::from_f32(rng.below(2001) as f32 / 1000.0 - 1.0)).collect();
        let a = stream.clone_htod(&host).context("uploading the GEMM operands")?;
        let w = stream.clone_htod(&host[..]).context("uploading the GEMM operands")?;
        drop(host);
        let mut out = stream.alloc_zeros::<T>(m * m).context("allocating the GEMM output")?;
        let mut runs = Vec::new();
        for i in 0..6 {
            let ms = time_ms(gpu, || matmul_forward(gpu, blas, &mut out, &a, &w, None, m, m, m, false))?;
            if i > 0 {
                runs.push(2.0 * (m as f64).powi(3) / (ms * 1e-3) / 1e12);
            }
        }
        median(runs)
    };
    Ok(Ceilings { copy_gb_per_sec, gemm_tflops })
}

/// One row of the profile table.
#[derive(Clone, Debug)]
pub struct FamilyRow {
    pub family: &'static str,
    pub ms_per_step: f64,
    pub cost: Cost,
    pub bound: Bound,
}

impl FamilyRow {
    /// Achieved GB/s (memory- and host-bound) or TFLOP/s (compute-bound).
    /// What limits this family on a device with `ceil`: host copies are `Host`; otherwise the
    /// larger of its two floors (bytes over the copy bandwidth, FLOPs over the GEMM rate).
    pub fn limit(&self, ceil: &Ceilings) -> Bound {
        if self.bound == Bound::Host {
            Bound::Host
        } else if self.cost.flops / (ceil.gemm_tflops * 1e12) >= self.cost.bytes / (ceil.copy_gb_per_sec * 1e9) {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }

    /// Achieved TFLOP/s (limited by compute) or GB/s (by memory or the host).
    pub fn achieved(&self, ceil: &Ceilings) -> f64 {
        let s = self.ms_per_step * 1e-3;
        match self.limit(ceil) {
            Bound::Compute => self.cost.flops / s / 1e12,
            Bound::Memory | Bound::Host => self.cost.bytes / s / 1e9,
        }
    }

    /// Per cent of the ceiling that limits this family (none for host copies).
    pub fn of_ceiling(&self, ceil: &Ceilings) -> Option<f64> {
        match self.limit(ceil) {
            Bound::Compute => Some(100.0 * self.achieved(ceil) / ceil.gemm_tflops),
            Bound::Memory => Some(100.0 * self.achieved(ceil) / ceil.copy_gb_per_sec),
            Bound::Host => None,
        }
    }

    /// Milliseconds this family would take at its ceilings, the larger of its two floors (host
    /// copies: none).
    pub fn floor_ms(&self, ceil: &Ceilings) -> Option<f64> {
        match self.bound {
            Bound::Host => None,
            _ => Some(
                (self.cost.flops / (ceil.gemm_tflops * 1e12)).max(self.cost.bytes / (ceil.copy_gb_per_sec * 1e9)) * 1e3,
            ),
        }
    }
}

/// Joins measured milliseconds per op name over `steps` profiled steps with the cost model: one
/// row per family, in the model's order, then any measured name the model lacks (as `other`).
pub fn family_rows(
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    elem: usize,
    paths: Paths,
    measured: &[(&'static str, f64)],
    steps: usize,
) -> Vec<FamilyRow> {
    let mut rows: Vec<FamilyRow> = family_costs(cfg, b, t, elem, paths)
        .into_iter()
        .map(|(family, cost)| FamilyRow { family, ms_per_step: 0.0, cost, bound: bound(family) })
        .collect();
    for &(name, ms) in measured {
        let fam = family(name);
        let ms = ms / steps.max(1) as f64;
        match rows.iter_mut().find(|r| r.family == fam) {
            Some(r) => r.ms_per_step += ms,
            None => rows.push(FamilyRow { family: fam, ms_per_step: ms, cost: Cost::default(), bound: Bound::Memory }),
        }
    }
    rows
}

/// The table `bench train --profile` prints: per family ms/step, share, GB or GFLOP per step,
/// achieved rate and per cent of the ceiling; then the bandwidth-bound total (everything but the
/// matmul and attention GEMMs and the host copies) and its floor.
pub fn format_table(rows: &[FamilyRow], ceil: &Ceilings, tokens: usize) -> String {
    use std::fmt::Write;
    let total: f64 = rows.iter().map(|r| r.ms_per_step).sum::<f64>().max(1e-12);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ceilings measured here: device copy {:.0} GB/s (read + write), GEMM {:.1} TFLOP/s",
        ceil.copy_gb_per_sec, ceil.gemm_tflops
    );
    let _ = writeln!(
        s,
        "  {:<15} {:>9} {:>6} {:>12} {:>14} {:>9} {:>9}",
        "family", "ms/step", "share", "moved/step", "achieved", "% ceil", "floor ms"
    );
    let _ = writeln!(
        s,
        "  (moved/step: bytes read + written, or FLOPs where those limit; floor: the larger of bytes over the copy rate and FLOPs over the GEMM rate)"
    );
    for r in rows {
        let (moved, rate) = match r.limit(ceil) {
            Bound::Compute => (format!("{:.1} GFLOP", r.cost.flops / 1e9), format!("{:.1} TFLOP/s", r.achieved(ceil))),
            _ => (format!("{:.3} GB", r.cost.bytes / 1e9), format!("{:.0} GB/s", r.achieved(ceil))),
        };
        let pct = r.of_ceiling(ceil).map_or("-".to_string(), |p| format!("{p:.0}%"));
        let floor = r.floor_ms(ceil).map_or("-".to_string(), |f| format!("{f:.3}"));
        let _ = writeln!(
            s,
            "  {:<15} {:>9.3} {:>5.1}% {:>12} {:>14} {:>9} {:>9}",
            r.family,
            r.ms_per_step,
            100.0 * r.ms_per_step / total,
            moved,
            rate,
            pct,
            floor
        );
    }
    let bw: Vec<&FamilyRow> = rows.iter().filter(|r| r.bound == Bound::Memory).collect();
    let bw_ms: f64 = bw.iter().map(|r| r.ms_per_step).sum();
    let bw_floor: f64 = bw.iter().filter_map(|r| r.floor_ms(ceil)).sum();
    let per16k = 16384.0 / tokens.max(1) as f64;
    let _ = writeln!(
        s,
        "  bandwidth-bound total (all but the matmul/attention GEMMs and host copies): {:.3} ms/step = {:.3} ms per 16K tokens (floor {:.3} ms; issue 15 target <= 4 ms per 16K tokens)",
        bw_ms,
        bw_ms * per16k,
        bw_floor
    );
    let _ = write!(s, "  total {total:.3} ms/step in the profiled steps");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamLayout};

    fn sum(costs: &[(&'static str, Cost)], pred: impl Fn(&str) -> bool) -> Cost {
        let mut c = Cost::default();
        for (name, x) in costs {
            if pred(name) {
                c += *x;
            }
        }
        c
    }

    /// The matmul FLOPs of a step are 6 * (matmul weights) * tokens and the attention ones the
    /// 12*L*C*T per token of `flops_per_token`; what `flops_per_token` counts beyond them is 6 per
    /// token for each parameter that is not a matmul weight (biases, LayerNorms, wpe).
    #[test]
    fn matmul_and_attention_flops_match_the_training_formula() {
        for (preset, b, t) in [("gpt2-124m", 16, 1024), ("tiny", 3, 17)] {
            let cfg = ModelConfig::preset(preset).unwrap();
            let (c, l, vp) = (cfg.channels as f64, cfg.num_layers as f64, cfg.padded_vocab_size as f64);
            let tokens = (b * t) as f64;
            let costs = train_step_costs(&cfg, b, t, 2, Paths::default());
            let mm = sum(&costs, |n| matches!(family(n), "matmul fwd" | "matmul bwd")).flops;
            let matmul_weights = l * 12.0 * c * c + vp * c;
            assert_eq!(mm, 6.0 * matmul_weights * tokens, "{preset}");
            let att = sum(&costs, |n| family(n).starts_with("attention")).flops;
            assert_eq!(att, 12.0 * l * c * t as f64 * tokens, "{preset}");
            let other_params = ParamLayout::new(&cfg).total as f64 - matmul_weights;
            let formula = cfg.flops_per_token(t) * tokens;
            assert!((formula - mm - att - 6.0 * other_params * tokens).abs() < 1e-6 * formula, "{preset}");
            // Only the GEMM families do FLOPs in the model.
            assert_eq!(sum(&costs, |_| true).flops, mm + att);
        }
    }

    /// Flash attention's executed FLOPs: 9 T x T x hs products per (layer, b, h), over the
    /// nq(nq+1)/2 tiles on or below the diagonal (nq = 16 at T = 1024: 136 of 256); its bytes are
    /// under a tenth of the materialised path's (no T x T tensor), and nothing else changes.
    /// `--kernels vector` prices what it stops doing (the activation-gradient memsets, the reads
    /// of dinp before accumulating into it) and nothing else; `--sync step` prices a device loss
    /// sum instead of a readback, the same bytes.
    #[test]
    fn overwriting_and_queued_steps_change_only_what_they_remove() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let (b, t) = (16, 1024);
        let base = train_step_costs(&cfg, b, t, 2, Paths::default());
        let vector = train_step_costs(&cfg, b, t, 2, Paths { kernels: Kernels::Vector, ..Default::default() });
        let get = |costs: &[(&str, Cost)], name: &str| costs.iter().find(|c| c.0 == name).map(|c| c.1.bytes);
        let (n, c, l) = ((b * t) as f64, cfg.channels as f64, cfg.num_layers as f64);
        let saved = get(&base, "memset").unwrap() - get(&vector, "memset").unwrap();
        assert_eq!(saved, 2.0 * (n * c + l * 11.0 * n * c), "memset bytes saved: all but dresidual");
        assert_eq!(get(&base, "gelu bwd").unwrap() - get(&vector, "gelu bwd").unwrap(), l * 2.0 * 4.0 * n * c);
        // One dinp read less per backward matmul: qkv, attproj, fc (C wide) and fcproj (4C).
        let mm = |costs: &[(&str, Cost)]| {
            ["matmul bwd fcproj", "matmul bwd fc", "matmul bwd attproj", "matmul bwd qkv", "matmul bwd logits"]
                .iter()
                .map(|name| get(costs, name).unwrap())
                .sum::<f64>()
        };
        assert_eq!(mm(&base) - mm(&vector), 2.0 * (l * (4.0 * n * c + 3.0 * n * c) + n * c));
        for (name, cost) in &base {
            if !["memset", "gelu bwd"].contains(name) && !name.starts_with("matmul bwd") {
                assert_eq!(get(&vector, name), Some(cost.bytes), "{name} changed under vector");
            }
        }
        // GELU in the epilogues: its kernels are gone, the fused GEMMs move the aux once more, and
        // (scalar kernels) dfch and dfch_gelu are not cleared.
        let fused = train_step_costs(&cfg, b, t, 2, Paths { gelu_fusion: GeluFusion::Both, ..Default::default() });
        assert!(get(&fused, "gelu").is_none() && get(&fused, "gelu bwd").is_none());
        let aux = l * 2.0 * 4.0 * n * c;
        assert_eq!(get(&fused, "matmul fc + gelu").unwrap() - get(&base, "matmul fc").unwrap(), aux);
        let unread_dinp = l * 2.0 * 4.0 * n * c;
        let dgelu = get(&fused, "matmul bwd fcproj + dgelu").unwrap();
        assert_eq!(dgelu - get(&base, "matmul bwd fcproj").unwrap(), aux - unread_dinp);
        assert_eq!(get(&base, "memset").unwrap() - get(&fused, "memset").unwrap(), l * 2.0 * 8.0 * n * c);
        let forward = train_step_costs(&cfg, b, t, 2, Paths { gelu_fusion: GeluFusion::Forward, ..Default::default() });
        assert!(get(&forward, "gelu").is_none() && get(&forward, "gelu bwd") == get(&base, "gelu bwd"));
        // BGRADB: the bias gradients cost no pass over dout, only the OC-long epilogue write and
        // the add (read scratch and dbias, write dbias: 16 bytes per value).
        let bgrad = train_step_costs(&cfg, b, t, 2, Paths { bias_grad: BiasGrad::Epilogue, ..Default::default() });
        let biased = l * (3.0 * c + c + 4.0 * c + c);
        assert_eq!(mm(&base) - mm(&bgrad), 2.0 * n * biased - 16.0 * biased);
        let queued = train_step_costs(&cfg, b, t, 2, Paths { sync: StepSync::Step, ..Default::default() });
        assert_eq!(get(&queued, "loss sum"), get(&base, "loss readback"));
        assert!(get(&queued, "loss readback").is_none() && get(&base, "loss sum").is_none());
    }

    #[test]
    fn flash_attention_costs_the_tiles_it_runs() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let (b, t) = (16, 1024);
        let flash = train_step_costs(&cfg, b, t, 2, Paths { attention: Attention::Flash, ..Default::default() });
        let mat = train_step_costs(&cfg, b, t, 2, Paths::default());
        let att = |costs: &[(&'static str, Cost)]| sum(costs, |n| family(n).starts_with("attention"));
        let (l, nh, hs) = (cfg.num_layers as f64, cfg.num_heads as f64, (cfg.channels / cfg.num_heads) as f64);
        let product = 2.0 * (t * t) as f64 * hs * 136.0 / 256.0;
        assert_eq!(att(&flash).flops, 9.0 * product * l * b as f64 * nh);
        assert!(att(&flash).bytes < 0.1 * att(&mat).bytes, "{} vs {}", att(&flash).bytes, att(&mat).bytes);
        let rest = |costs: &[(&'static str, Cost)]| sum(costs, |n| !family(n).starts_with("attention"));
        assert_eq!((rest(&flash).bytes, rest(&flash).flops), (rest(&mat).bytes, rest(&mat).flops));
    }

    /// The LayerNorm forward bytes of a tiny shape, counted by hand: B=2, T=3, C=4, L=2, bf16.
    #[test]
    fn layernorm_forward_bytes_by_hand() {
        let cfg = ModelConfig {
            num_layers: 2,
            channels: 4,
            num_heads: 1,
            max_seq_len: 8,
            ..ModelConfig::preset("tiny").unwrap()
        };
        let costs = train_step_costs(&cfg, 2, 3, 2, Paths::default());
        let ln = costs.iter().find(|(n, _)| *n == "layernorm (+residual)").unwrap().1;
        // Plain ln1: x read (6 rows * 4 * 2 B = 48) + out written (48) + w, b (2 * 4 * 2 = 16) +
        // mean, rstd (2 * 6 * 4 = 48) = 160. Each of the 2L = 4 fused ones also reads the second
        // input (48) and writes the sum (48): 256 each. 160 + 4 * 256 = 1184.
        assert_eq!(ln.bytes, 1184.0);
        assert_eq!(ln.flops, 0.0);
    }

    /// Every op name `GpuModel` marks has a family, and every family the model prices is a name
    /// the model marks: the table's rows and the source cannot drift apart.
    #[test]
    fn every_mark_in_the_model_has_a_family_and_a_cost() {
        let src = include_str!("gpt.rs");
        // Names are recorded by `mark("...")`, and the backward's matmuls pass theirs to
        // `matmul_grads("...", ...)`.
        let mut marked: Vec<&str> = src.split("mark(\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
        for call in src.split("matmul_grads(").skip(1) {
            if let Some(rest) = call.trim_start().strip_prefix('"') {
                marked.push(&rest[..rest.find('"').unwrap()]);
            }
        }
        assert!(marked.len() > 15, "{marked:?}");
        let cfg = ModelConfig::preset("tiny").unwrap();
        let costs = train_step_costs(&cfg, 2, 8, 4, Paths::default());
        for name in &marked {
            assert_ne!(family(name), "other", "mark {name:?} has no family");
        }
        for (name, _) in &costs {
            // "start" is recorded before the first op; the rest are recorded by name.
            assert!(marked.contains(name), "the cost model prices {name:?}, which gpt.rs never marks");
        }
    }

    /// With the H200's measured ceilings, gpt2-124m's matmuls are limited by the tensor cores and
    /// the attention that materialises its scores by memory (its floor is its bytes, not FLOPs).
    #[test]
    fn the_roofline_picks_the_limit() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let rows = family_rows(&cfg, 16, 1024, 2, Paths::default(), &[], 1);
        let ceil = Ceilings { copy_gb_per_sec: 4300.0, gemm_tflops: 788.0 };
        let get = |f: &str| rows.iter().find(|r| r.family == f).unwrap();
        assert_eq!(get("matmul bwd").limit(&ceil), Bound::Compute);
        assert_eq!(get("attention fwd").limit(&ceil), Bound::Memory);
        assert_eq!(get("layernorm fwd").limit(&ceil), Bound::Memory);
        assert_eq!(get("token upload").limit(&ceil), Bound::Host);
        let a = get("attention bwd");
        assert_eq!(a.floor_ms(&ceil).unwrap(), a.cost.bytes / 4300e9 * 1e3);
    }

    /// Rows join measured times to costs per family, and the table has the bandwidth-bound line.
    #[test]
    fn rows_and_table() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let measured = [("matmul qkv", 2.0), ("matmul fc", 4.0), ("gelu", 1.0), ("adamw", 3.0), ("mystery", 1.0)];
        let rows = family_rows(&cfg, 2, 8, 2, Paths::default(), &measured, 2);
        let get = |f: &str| rows.iter().find(|r| r.family == f).unwrap();
        assert_eq!(get("matmul fwd").ms_per_step, 3.0);
        assert_eq!(get("gelu fwd").ms_per_step, 0.5);
        assert_eq!(get("other").ms_per_step, 0.5);
        let ceil = Ceilings { copy_gb_per_sec: 1000.0, gemm_tflops: 100.0 };
        let table = format_table(&rows, &ceil, 16);
        assert!(table.contains("bandwidth-bound total"), "{table}");
        // gelu + adamw + other = 0.5 + 1.5 + 0.5 ms per step.
        assert!(table.contains("2.500 ms/step"), "{table}");
    }
}
