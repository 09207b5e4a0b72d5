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
    const OP: &str = "embedding_backward";
    let inputs = check_backward_args(OP, dwte.len(), dwpe.len(), dout.len(), inputs, b, t, c)?;
    if inputs.is_empty() {
        return Ok(());
    }
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    let buckets = TokenRows::new(inputs);
    let csr = buckets.packed()?;
    let u = buckets.tokens.len();
    let ui = to_i32(u, "distinct tokens")?;
    let cfg = grid_with_dwpe(OP, u, t, c)?;
    gpu.note_pageable_upload();
    let d_csr = gpu.stream().clone_htod(&csr).with_context(|| format!("{OP}: uploading the token buckets"))?;
    let k = Launch::new(gpu, &T::kernel(OP), &[("csr", d_csr.len(), csr.len())])?;
    let k = k.write(dwte).write(dwpe).read(dout).read(&d_csr).arg(ui).arg(bi).arg(ti).arg(ci);
    // SAFETY: (float*, float*, const T*, const int*, int, int, int, int). csr holds 2U + 1 + B*T
    // ints as the kernel reads them; every token is below Vp = dwte.len() / C and every row below
    // B*T (both checked above), so the dwte and dout rows touched are in bounds, as are
    // dwpe[t*C + c] for t < T, c < C. d_csr is freed stream-ordered after the launch.
    unsafe { k.run(cfg) }
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
    const OP: &str = "embedding_backward_chunks";
    let inputs = check_backward_args(OP, dwte.len(), dwpe.len(), dout.len(), inputs, b, t, c)?;
    if inputs.is_empty() {
        return Ok(());
    }
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    let plan = ChunkPlan::new(inputs, crate::cpu::embedding::CHUNK_ROWS);
    let (items, combine) = plan.packed()?;
    let n_items = to_i32(plan.chunks.len(), "chunks")?;
    let cfg = grid_with_dwpe(OP, plan.chunks.len(), t, c)?;
    gpu.note_pageable_upload();
    let d_items = gpu.stream().clone_htod(&items).with_context(|| format!("{OP}: uploading the chunks"))?;
    let mut d_partials = gpu
        .stream()
        .alloc_zeros::<f32>(plan.slots.max(1) * c)
        .with_context(|| format!("{OP}: allocating {} partial sums", plan.slots))?;
    let k = Launch::new(gpu, &T::kernel(OP), &[("items", d_items.len(), items.len())])?;
    let k = k.write(dwte).write(dwpe).write(&mut d_partials).read(dout).read(&d_items);
    // SAFETY: (float*, float*, float*, const T*, const int*, int, int, int, int). items holds 4 ints
    // per chunk and then the B*T rows, as the kernel reads them; every token is below
    // Vp = dwte.len() / C and every row below B*T (checked / built above), every slot below
    // plan.slots, and partials holds max(slots, 1) * C floats; dwpe[t*C + c] for t < T, c < C is in
    // bounds. d_items and d_partials are freed stream-ordered after the launches that use them.
    unsafe { k.arg(n_items).arg(bi).arg(ti).arg(ci).run(cfg)? };
    if plan.combine.is_empty() {
        return Ok(());
    }
    gpu.note_pageable_upload();
    let d_combine = gpu.stream().clone_htod(&combine).with_context(|| format!("{OP}: uploading the combine list"))?;
    let n = u32::try_from(plan.combine.len()).context("too many tokens to combine")?;
    let cfg = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let k = Launch::new(gpu, "embedding_backward_combine", &[("combine", d_combine.len(), combine.len())])?;
    // SAFETY: (float*, const float*, const int*, int): combine holds 3 ints per block, each token
    // below Vp and each slot range inside the plan.slots * C partials the kernel above wrote, in
    // stream order after it.
    unsafe { k.write(dwte).read(&d_partials).read(&d_combine).arg(ci).run(cfg) }
}

#[cfg(test)]
mod tests {
    use super::*;

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
