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
    ensure!(c > 0, "{OP}: C must be positive");
    let bt = b.checked_mul(t).with_context(|| format!("{OP}: B*T overflows"))?;
    let btc = bt.checked_mul(c).with_context(|| format!("{OP}: B*T*C overflows"))?;
    let tc = t * c;
    check_lens(OP, &[("inputs", inputs.len(), bt), ("dout", dout.len(), btc), ("dwpe", dwpe.len(), tc)])?;
    ensure!(
        dwte.len() % c == 0 && !DeviceSlice::is_empty(dwte),
        "{OP}: dwte length {} is not a positive multiple of C = {c}",
        dwte.len()
    );
    let vp = dwte.len() / c;
    let inputs = &inputs[..bt];
    if let Some((i, tok)) = inputs.iter().enumerate().find(|(_, &tok)| tok as usize >= vp) {
        anyhow::bail!("{OP}: inputs[{i}] = {tok} is not below Vp = {vp}");
    }
    if bt == 0 {
        return Ok(());
    }
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    let buckets = TokenRows::new(inputs);
    let csr = buckets.packed()?;
    let u = buckets.tokens.len();
    let ui = to_i32(u, "distinct tokens")?;
    let blocks = u
        .checked_add(tc.div_ceil(THREADS as usize))
        .filter(|&n| n <= i32::MAX as usize)
        .with_context(|| format!("{OP}: B = {b}, T = {t}, C = {c} needs too many blocks"))?;
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let d_csr = gpu.stream().clone_htod(&csr).with_context(|| format!("{OP}: uploading the token buckets"))?;
    let k = Launch::new(gpu, &T::kernel(OP), &[("csr", d_csr.len(), csr.len())])?;
    let k = k.write(dwte).write(dwpe).read(dout).read(&d_csr).arg(ui).arg(bi).arg(ti).arg(ci);
    // SAFETY: (float*, float*, const T*, const int*, int, int, int, int). csr holds 2U + 1 + B*T
    // ints as the kernel reads them; every token is below Vp = dwte.len() / C and every row below
    // B*T (both checked above), so the dwte and dout rows touched are in bounds, as are
    // dwpe[t*C + c] for t < T, c < C. d_csr is freed stream-ordered after the launch.
    unsafe { k.run(cfg) }
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
}
