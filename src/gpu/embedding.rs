//! Token + position embedding on the GPU (`kernels/embedding.cu`). [`embedding_forward`] in f32 or
//! bf16; the backward takes `dout` in f32 or bf16 ([`Float`]), the parameter gradients `dwte` and
//! `dwpe` are always f32.
//!
//! Deterministic without float atomics: the host buckets the B*T rows by token ([`TokenRows`], a
//! CSR of the distinct tokens and, for each, its rows in increasing order) and uploads it; one
//! block per distinct token then adds that token's `dout` rows into its `dwte` row in that order,
//! and one thread per `(t, c)` adds `dout[b, t, c]` into `dwpe[t, c]` for `b` in order. That is
//! the CPU's order of additions too, so the result is bit-identical to
//! `cpu::embedding::embedding_backward` (for a bf16 `dout`, to it on `dout` widened to f32).

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig};

use super::device::{grid_for, to_i32, Gpu};
use super::launch::{check_lens, Launch};
use super::{Float, Kernels};

/// Threads per block.
const THREADS: u32 = 256;

/// `out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]`, queued on [`Gpu::stream`]; in f32, or in bf16
/// (the f32 sum rounded to bf16 once).
///
/// `out` holds at least `b*t*c` values, `inp` at least `b*t` token ids,
/// `wpe` at least `t*c` values and `wte` a whole number of `c`-wide rows.
/// Token ids must lie in `0..wte.len()/c`; they are not checked on the device.
#[allow(clippy::too_many_arguments)]
pub fn embedding_forward<T: Float>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<i32>,
    wte: &impl DevicePtr<T>,
    wpe: &impl DevicePtr<T>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    const OP: &str = "embedding_forward";
    ensure!(c > 0, "{OP}: C must be positive");
    let n = b * t * c;
    ensure!(
        wte.len() % c == 0 && !DeviceSlice::is_empty(wte),
        "{OP}: wte length {} is not a positive multiple of C = {c}",
        wte.len()
    );
    let lens = [("out", out.len(), n), ("inp", inp.len(), b * t), ("wpe", wpe.len(), t * c)];
    let vector = gpu.kernels() == Kernels::Vector;
    ensure!(
        !vector || c.is_multiple_of(T::VEC),
        "{OP} (--kernels vector): C = {c} is not a multiple of {} (one 128-bit access); use --kernels scalar",
        T::VEC
    );
    let name = if vector { T::kernel("embedding_forward_vec") } else { T::kernel(OP) };
    let k = Launch::new(gpu, &name, &lens)?;
    if n == 0 {
        return Ok(());
    }
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    if vector {
        // out, wte, wpe in packs (the token ids one at a time).
        let k = k.write(out).read(inp).read(wte).read(wpe).aligned16(&[0, 2, 3])?;
        // SAFETY: as below, in 16-byte packs of V channels (C a multiple of VEC, pointers aligned:
        // checked), one thread per pack.
        return unsafe { k.arg(bi).arg(ti).arg(ci).run(grid_for(n / T::VEC)?) };
    }
    // SAFETY: (T*, const int*, const T*, const T*, int, int, int); the kernel writes out[i] for
    // i < B*T*C, reads inp[b*T + t], wpe[t*C + c] and wte[inp[b,t]*C + c], in bounds for in-range
    // token ids (the caller's contract: ids below wte.len() / C).
    unsafe { k.write(out).read(inp).read(wte).read(wpe).arg(bi).arg(ti).arg(ci).run(grid_for(n)?) }
}

/// The rows `0..tokens.len()` bucketed by token: `tokens` the distinct tokens in increasing order,
/// the rows holding `tokens[u]` are `rows[offsets[u]..offsets[u + 1]]`, in increasing order.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenRows {
    pub tokens: Vec<u32>,
    pub offsets: Vec<usize>,
    pub rows: Vec<usize>,
}

impl TokenRows {
    pub fn new(inputs: &[u32]) -> TokenRows {
        let mut rows: Vec<usize> = (0..inputs.len()).collect();
        // Stable: rows of one token keep their increasing order.
        rows.sort_by_key(|&r| inputs[r]);
        let (mut tokens, mut offsets) = (Vec::new(), Vec::new());
        for (j, &r) in rows.iter().enumerate() {
            if tokens.last() != Some(&inputs[r]) {
                tokens.push(inputs[r]);
                offsets.push(j);
            }
        }
        offsets.push(rows.len());
        TokenRows { tokens, offsets, rows }
    }

    /// `[tokens (U) | offsets (U + 1) | rows (B*T)]` as the kernel reads it.
    fn packed(&self) -> Result<Vec<i32>> {
        let mut out = Vec::with_capacity(2 * self.tokens.len() + 1 + self.rows.len());
        for &tok in &self.tokens {
            out.push(i32::try_from(tok).context("token id does not fit in an i32")?);
        }
        for &v in self.offsets.iter().chain(&self.rows) {
            out.push(to_i32(v, "B*T")?);
        }
        Ok(out)
    }
}

/// The checks both embedding backwards make: positive C, sizes that fit, `inputs` (at least B*T
/// ids, each below `Vp = dwte_len / C`), `dout` (B*T*C), `dwpe` (T*C) and `dwte` (whole rows).
/// Returns the B*T token ids used.
#[allow(clippy::too_many_arguments)]
fn check_backward_args<'a>(
    op: &str,
    dwte_len: usize,
    dwpe_len: usize,
    dout_len: usize,
    inputs: &'a [u32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<&'a [u32]> {
    ensure!(c > 0, "{op}: C must be positive");
    let bt = b.checked_mul(t).with_context(|| format!("{op}: B*T overflows"))?;
    let btc = bt.checked_mul(c).with_context(|| format!("{op}: B*T*C overflows"))?;
    check_lens(op, &[("inputs", inputs.len(), bt), ("dout", dout_len, btc), ("dwpe", dwpe_len, t * c)])?;
    ensure!(
        dwte_len.is_multiple_of(c) && dwte_len > 0,
        "{op}: dwte length {dwte_len} is not a positive multiple of C = {c}"
    );
    let vp = dwte_len / c;
    let inputs = &inputs[..bt];
    if let Some((i, tok)) = inputs.iter().enumerate().find(|(_, &tok)| tok as usize >= vp) {
        anyhow::bail!("{op}: inputs[{i}] = {tok} is not below Vp = {vp}");
    }
    Ok(inputs)
}

/// `dwte_blocks` blocks for the dwte rows, then one thread per (t, c) of dwpe.
fn grid_with_dwpe(op: &str, dwte_blocks: usize, t: usize, c: usize) -> Result<LaunchConfig> {
    let blocks = dwte_blocks
        .checked_add((t * c).div_ceil(THREADS as usize))
        .filter(|&n| n <= i32::MAX as usize)
        .with_context(|| format!("{op}: T = {t}, C = {c} with {dwte_blocks} dwte blocks needs too many blocks"))?;
    Ok(LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

// dout (B,T,C), inputs (B,T) on the host -> dwte (Vp,C) +=, dwpe (maxT,C) +=
/// `dwte[inputs[b,t], :] += dout[b,t,:]` and `dwpe[t, :] += dout[b,t,:]` in f32, ACCUMULATING as
/// `cpu::embedding::embedding_backward` (and bit-identical to it), queued on [`Gpu::stream`].
/// `dout` is `T` (`f32` or `bf16`, widened to f32 exactly); `dwte` and `dwpe` are f32 either way.
///
/// `inputs` (the token ids, on the host) holds at least `b*t` ids, each below `Vp = dwte.len() / c`
/// (checked); `dwte` is a whole number of `c`-wide rows, `dwpe` holds at least `t*c` values and
/// `dout` at least `b*t*c`. Uploads the token buckets from pageable memory, which waits for the
/// work already queued on the stream.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward<T: Float>(
    gpu: &Gpu,
    dwte: &mut impl DevicePtrMut<f32>,
    dwpe: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inputs: &[u32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    let inputs = check_backward_args("embedding_backward", dwte.len(), dwpe.len(), dout.len(), inputs, b, t, c)?;
    upload_and_launch(gpu, dwte, dwpe, dout, &BackwardPlan::new(inputs, false)?, b, t, c)
}

/// Uploads `plan` (and allocates its partial sums) stream-ordered, then launches it.
#[allow(clippy::too_many_arguments)]
fn upload_and_launch<T: Float>(
    gpu: &Gpu,
    dwte: &mut impl DevicePtrMut<f32>,
    dwpe: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    plan: &BackwardPlan,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    gpu.note_pageable_upload();
    let d_plan = gpu.stream().clone_htod(&plan.ints).context("embedding backward: uploading the token buckets")?;
    let mut partials = match plan.partials(c) {
        0 => None,
        n => Some(gpu.stream().alloc_zeros::<f32>(n).context("embedding backward: allocating the partial sums")?),
    };
    // d_plan and the partials are freed stream-ordered after the launches that use them.
    embedding_backward_planned(gpu, dwte, dwpe, dout, plan, &d_plan, partials.as_mut(), b, t, c)
}

/// The host half of an embedding backward: the rows of `inputs` bucketed by token and packed as
/// the kernels read them, for [`embedding_backward`] (one block per distinct token, a
/// [`TokenRows`] CSR) or [`embedding_backward_balanced`] (a [`ChunkPlan`]'s chunks, then its
/// combine list). Built on the host before a micro-batch, it can be uploaded with the tokens.
#[derive(Debug)]
pub struct BackwardPlan {
    /// What goes to the device: `[tokens (U) | offsets (U + 1) | rows (B*T)]`, or
    /// `[4 ints per chunk | rows (B*T) | 3 ints per combined token]`.
    pub ints: Vec<i32>,
    kind: PlanKind,
}

#[derive(Debug)]
enum PlanKind {
    Csr { distinct: usize },
    Chunks { chunks: usize, combine_at: usize, combines: usize, slots: usize },
}

impl BackwardPlan {
    /// The plan of `inputs` for the plain (`balanced` false) or the balanced backward.
    pub fn new(inputs: &[u32], balanced: bool) -> Result<BackwardPlan> {
        if !balanced {
            let buckets = TokenRows::new(inputs);
            return Ok(BackwardPlan {
                ints: buckets.packed()?,
                kind: PlanKind::Csr { distinct: buckets.tokens.len() },
            });
        }
        let plan = ChunkPlan::new(inputs, crate::cpu::embedding::CHUNK_ROWS);
        let (mut ints, combine) = plan.packed()?;
        let combine_at = ints.len();
        ints.extend(combine);
        let kind =
            PlanKind::Chunks { chunks: plan.chunks.len(), combine_at, combines: plan.combine.len(), slots: plan.slots };
        Ok(BackwardPlan { ints, kind })
    }

    /// What the launches need besides the ints: (blocks of the first launch, that is distinct tokens
    /// or chunks; where the combine list starts in the ints; tokens to combine; partial-sum slots),
    /// the last three 0 for the plain plan.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        match self.kind {
            PlanKind::Csr { distinct } => (distinct, 0, 0, 0),
            PlanKind::Chunks { chunks, combine_at, combines, slots } => (chunks, combine_at, combines, slots),
        }
    }

    /// Whether there is nothing to add (no tokens).
    pub fn is_empty(&self) -> bool {
        match self.kind {
            PlanKind::Csr { distinct } => distinct == 0,
            PlanKind::Chunks { chunks, .. } => chunks == 0,
        }
    }

    /// f32 partial sums the backward needs for channels `c` (0 for the plain one).
    pub fn partials(&self, c: usize) -> usize {
        match self.kind {
            PlanKind::Csr { .. } => 0,
            PlanKind::Chunks { slots, .. } => slots.max(1) * c,
        }
    }

    /// The most ints a plan of `n` tokens takes, either kind: 3n + 1 for the CSR, at most 4n (chunks)
    /// + n (rows) + 3n (combine) for the balanced one. Sizes buffers allocated once.
    pub fn max_ints(n: usize) -> usize {
        8 * n + 1
    }

    /// The most f32 partial sums a plan of `n` tokens needs for channels `c`: a token's later chunks
    /// each hold more than [`CHUNK_ROWS`](crate::cpu::embedding::CHUNK_ROWS) rows before them.
    pub fn max_partials(n: usize, c: usize) -> usize {
        (n / crate::cpu::embedding::CHUNK_ROWS).max(1) * c
    }
}

// dout (B,T,C), plan of inputs (B,T) on the device -> dwte (Vp,C) +=, dwpe (maxT,C) +=
/// The device half of the embedding backward: launches `plan`, whose [`BackwardPlan::ints`] are
/// already on the device in `d_plan`, with `partials` holding at least
/// [`BackwardPlan::partials`]`(c)` floats when that is not 0. The plan must come from inputs that
/// passed `check_backward_args` for these buffers (token ids below Vp, B*T rows).
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward_planned<T: Float>(
    gpu: &Gpu,
    dwte: &mut impl DevicePtrMut<f32>,
    dwpe: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    plan: &BackwardPlan,
    d_plan: &impl DevicePtr<i32>,
    partials: Option<&mut impl DevicePtrMut<f32>>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    check_lens("embedding_backward", &[("dout", dout.len(), b * t * c), ("dwpe", dwpe.len(), t * c)])?;
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    match plan.kind {
        PlanKind::Csr { distinct } => {
            const OP: &str = "embedding_backward";
            let ui = to_i32(distinct, "distinct tokens")?;
            let cfg = grid_with_dwpe(OP, distinct, t, c)?;
            let k = Launch::new(gpu, &T::kernel(OP), &[("csr", d_plan.len(), plan.ints.len())])?;
            let k = k.write(dwte).write(dwpe).read(dout).read(d_plan).arg(ui).arg(bi).arg(ti).arg(ci);
            // SAFETY: (float*, float*, const T*, const int*, int, int, int, int). csr holds 2U + 1 + B*T
            // ints as the kernel reads them; every token is below Vp = dwte.len() / C and every row below
            // B*T (the caller's checked inputs), so the dwte and dout rows touched are in bounds, as are
            // dwpe[t*C + c] for t < T, c < C.
            unsafe { k.run(cfg) }
        }
        PlanKind::Chunks { chunks, combine_at, combines, .. } => {
            const OP: &str = "embedding_backward_chunks";
            let partials = partials.with_context(|| format!("{OP}: no partial-sum buffer"))?;
            let lens = [("items", d_plan.len(), plan.ints.len()), ("partials", partials.len(), plan.partials(c))];
            let n_items = to_i32(chunks, "chunks")?;
            let cfg = grid_with_dwpe(OP, chunks, t, c)?;
            let k = Launch::new(gpu, &T::kernel(OP), &lens)?;
            let stream = &**gpu.stream();
            // Held past both launches: the combine list is an offset into d_plan.
            let (plan_ptr, _plan_guard) = d_plan.device_ptr(stream);
            let (part_ptr, _part_guard) = partials.device_ptr_mut(stream);
            let k = k.write(dwte).write(dwpe).ptr(part_ptr).read(dout).ptr(plan_ptr);
            // SAFETY: (float*, float*, float*, const T*, const int*, int, int, int, int). items holds 4
            // ints per chunk and then the B*T rows, as the kernel reads them; every token is below
            // Vp = dwte.len() / C and every row below B*T (the caller's checked inputs), every slot
            // below the plan's slots, whose partial sums fit (checked); dwpe[t*C + c] for t < T, c < C
            // is in bounds.
            unsafe { k.arg(n_items).arg(bi).arg(ti).arg(ci).run(cfg)? };
            if combines == 0 {
                return Ok(());
            }
            let n = u32::try_from(combines).context("too many tokens to combine")?;
            let cfg = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            let k = Launch::new(gpu, "embedding_backward_combine", &[])?;
            let combine = plan_ptr + (combine_at * 4) as u64;
            // SAFETY: (float*, const float*, const int*, int): the combine list (3 ints per block) lies
            // at combine_at in d_plan (length checked above), each token below Vp and each slot range
            // inside the partials the kernel above wrote, in stream order after it.
            unsafe { k.write(dwte).ptr(part_ptr).ptr(combine).arg(ci).run(cfg) }
        }
    }
}

/// One chunk of the balanced backward: rows `rows[begin..end]` of `token`, written to the token's
/// `dwte` row (`slot: None`, its first chunk) or to partial-sum slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub token: u32,
    pub begin: usize,
    pub end: usize,
    pub slot: Option<usize>,
}

/// The balanced backward's work ([`embedding_backward_balanced`]): each token's rows ([`TokenRows`])
/// cut into chunks of at most `chunk_rows`, heaviest chunks first; `combine` lists, for each token
/// with more than one chunk, its token, first slot and slot count (the slots of one token are
/// consecutive, in chunk order).
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub chunks: Vec<Chunk>,
    pub rows: Vec<usize>,
    pub combine: Vec<(u32, usize, usize)>,
    pub slots: usize,
}

impl ChunkPlan {
    pub fn new(inputs: &[u32], chunk_rows: usize) -> ChunkPlan {
        assert!(chunk_rows > 0);
        let buckets = TokenRows::new(inputs);
        let (mut chunks, mut combine, mut slots) = (Vec::new(), Vec::new(), 0);
        for (u, &token) in buckets.tokens.iter().enumerate() {
            let (lo, hi) = (buckets.offsets[u], buckets.offsets[u + 1]);
            let first_slot = slots;
            for (k, begin) in (lo..hi).step_by(chunk_rows).enumerate() {
                let slot = (k > 0).then(|| {
                    slots += 1;
                    slots - 1
                });
                chunks.push(Chunk { token, begin, end: (begin + chunk_rows).min(hi), slot });
            }
            if slots > first_slot {
                combine.push((token, first_slot, slots - first_slot));
            }
        }
        // Stable: among equal sizes the token order stays. The largest chunks start first.
        chunks.sort_by_key(|ch| std::cmp::Reverse(ch.end - ch.begin));
        ChunkPlan { chunks, rows: buckets.rows, combine, slots }
    }

    /// `[token, begin, end, slot (-1: the dwte row)]` per chunk, then the rows; and
    /// `[token, first_slot, count]` per combined token: as the kernels read them.
    fn packed(&self) -> Result<(Vec<i32>, Vec<i32>)> {
        let mut items = Vec::with_capacity(4 * self.chunks.len() + self.rows.len());
        for ch in &self.chunks {
            items.push(i32::try_from(ch.token).context("token id does not fit in an i32")?);
            items.push(to_i32(ch.begin, "B*T")?);
            items.push(to_i32(ch.end, "B*T")?);
            items.push(match ch.slot {
                Some(s) => to_i32(s, "chunks")?,
                None => -1,
            });
        }
        for &r in &self.rows {
            items.push(to_i32(r, "B*T")?);
        }
        let mut combine = Vec::with_capacity(3 * self.combine.len());
        for &(token, first, count) in &self.combine {
            combine.push(i32::try_from(token).context("token id does not fit in an i32")?);
            combine.push(to_i32(first, "chunks")?);
            combine.push(to_i32(count, "chunks")?);
        }
        Ok((items, combine))
    }
}

// dout (B,T,C), inputs (B,T) on the host -> dwte (Vp,C) +=, dwpe (maxT,C) +=
/// [`embedding_backward`] with each token's rows cut into chunks of
/// [`cpu::embedding::CHUNK_ROWS`](crate::cpu::embedding::CHUNK_ROWS), so a frequent token is added by
/// many blocks, not one; bit-identical to `cpu::embedding::embedding_backward_balanced`, which sums
/// in the same order (and equals [`embedding_backward`] when no token has more rows than a chunk).
/// Same arguments and checks as [`embedding_backward`]. Never run on a GPU yet: the default path
/// uses [`embedding_backward`].
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward_balanced<T: Float>(
    gpu: &Gpu,
    dwte: &mut impl DevicePtrMut<f32>,
    dwpe: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inputs: &[u32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    let inputs = check_backward_args("embedding_backward_chunks", dwte.len(), dwpe.len(), dout.len(), inputs, b, t, c)?;
    upload_and_launch(gpu, dwte, dwpe, dout, &BackwardPlan::new(inputs, true)?, b, t, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backward plan is what the launchers uploaded before it existed (the CSR, or the chunk items
    /// followed by the combine list), and never needs more than the buffers `--sync step` allocates
    /// once: [`BackwardPlan::max_ints`] ints and [`BackwardPlan::max_partials`] partial sums, on
    /// the worst inputs for each (every token distinct; one token everywhere; real-text-like skew).
    #[test]
    fn backward_plans_fit_the_buffers_allocated_once() {
        let mut rng = crate::rng::Rng::new(5);
        let skewed: Vec<u32> = (0..4096)
            .map(|i| {
                if i % 4 == 0 {
                    13
                } else if i % 7 == 0 {
                    11
                } else {
                    rng.below(50_000) as u32
                }
            })
            .collect();
        let cases: [(&str, Vec<u32>); 5] = [
            ("distinct", (0..4096).collect()),
            ("one token", vec![7; 4096]),
            ("skewed", skewed),
            ("one row", vec![3]),
            ("a chunk and one", vec![9; crate::cpu::embedding::CHUNK_ROWS + 1]),
        ];
        for (name, inputs) in &cases {
            let n = inputs.len();
            let plain = BackwardPlan::new(inputs, false).unwrap();
            assert_eq!(plain.ints, TokenRows::new(inputs).packed().unwrap(), "{name}");
            assert_eq!(plain.partials(64), 0);
            let balanced = BackwardPlan::new(inputs, true).unwrap();
            let chunks = ChunkPlan::new(inputs, crate::cpu::embedding::CHUNK_ROWS);
            let (items, combine) = chunks.packed().unwrap();
            assert_eq!(balanced.ints, [items, combine].concat(), "{name}");
            for plan in [&plain, &balanced] {
                assert!(plan.ints.len() <= BackwardPlan::max_ints(n), "{name}: {} ints", plan.ints.len());
                assert!(plan.partials(64) <= BackwardPlan::max_partials(n, 64), "{name}: {}", plan.partials(64));
                assert!(!plan.is_empty());
            }
        }
        assert!(BackwardPlan::new(&[], false).unwrap().is_empty() && BackwardPlan::new(&[], true).unwrap().is_empty());
    }

    #[test]
    fn buckets_rows_by_token_in_order() {
        let b = TokenRows::new(&[5, 2, 5, 7, 2, 5]);
        assert_eq!(b.tokens, vec![2, 5, 7]);
        assert_eq!(b.offsets, vec![0, 2, 5, 6]);
        assert_eq!(b.rows, vec![1, 4, 0, 2, 5, 3]);
        assert_eq!(b.packed().unwrap(), vec![2, 5, 7, 0, 2, 5, 6, 1, 4, 0, 2, 5, 3]);
        let empty = TokenRows::new(&[]);
        assert_eq!((empty.tokens.len(), empty.offsets, empty.rows.len()), (0, vec![0], 0));
    }

    /// Every row lands in exactly one chunk of its own token, chunks hold at most `chunk_rows`
    /// consecutive rows of the token's (increasing) rows, the first chunk of each token writes the
    /// dwte row and the later ones consecutive slots in chunk order, and the largest chunks come
    /// first.
    #[test]
    fn chunk_plan_covers_every_row_once_heaviest_first() {
        let inputs: Vec<u32> = (0..300u32).map(|i| if i % 3 == 0 { 9 } else { i % 7 }).collect();
        let plan = ChunkPlan::new(&inputs, 16);
        let mut seen = vec![0; inputs.len()];
        for ch in &plan.chunks {
            assert!(ch.end > ch.begin && ch.end - ch.begin <= 16, "{ch:?}");
            for &r in &plan.rows[ch.begin..ch.end] {
                assert_eq!(inputs[r], ch.token);
                seen[r] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "every row exactly once: {seen:?}");
        assert!(plan.chunks.windows(2).all(|w| w[0].end - w[0].begin >= w[1].end - w[1].begin));
        // Token 9 has 100 rows: chunks of 16, 16, ..., 4; first writes dwte, then slots in order.
        let mut nine: Vec<Chunk> = plan.chunks.iter().copied().filter(|ch| ch.token == 9).collect();
        nine.sort_by_key(|ch| ch.begin);
        assert_eq!(nine.len(), 7);
        assert_eq!(nine[0].slot, None);
        let (_, first, count) = *plan.combine.iter().find(|e| e.0 == 9).unwrap();
        assert_eq!(count, 6);
        for (k, ch) in nine[1..].iter().enumerate() {
            assert_eq!(ch.slot, Some(first + k));
        }
        assert_eq!(plan.slots, plan.combine.iter().map(|e| e.2).sum::<usize>());
        // Tokens with at most one chunk are not combined.
        let light = ChunkPlan::new(&[1, 2, 1], 16);
        assert!(light.combine.is_empty() && light.slots == 0 && light.chunks.iter().all(|ch| ch.slot.is_none()));
    }
}
