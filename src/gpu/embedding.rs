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
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::device::{grid_for, to_i32, Gpu};
use super::Float;

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
    let n = b * t * c;
    ensure!(c > 0, "embedding_forward: C must be positive");
    ensure!(out.len() >= n, "embedding_forward: out has {} < B*T*C = {n}", out.len());
    ensure!(inp.len() >= b * t, "embedding_forward: inp has {} < B*T = {}", inp.len(), b * t);
    ensure!(wpe.len() >= t * c, "embedding_forward: wpe has {} < T*C = {}", wpe.len(), t * c);
    ensure!(
        wte.len() % c == 0 && !DeviceSlice::is_empty(wte),
        "embedding_forward: wte length {} is not a positive multiple of C = {c}",
        wte.len()
    );
    if n == 0 {
        return Ok(());
    }
    let (bi, ti, ci) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);
    let cfg = grid_for(n)?;
    let func = gpu.function(&T::kernel("embedding_forward"))?;

    let stream = &**gpu.stream();
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    let (inp_ptr, _inp_guard) = inp.device_ptr(stream);
    let (wte_ptr, _wte_guard) = wte.device_ptr(stream);
    let (wpe_ptr, _wpe_guard) = wpe.device_ptr(stream);
    let mut launch = gpu.stream().launch_builder(&func);
    launch.arg(&out_ptr).arg(&inp_ptr).arg(&wte_ptr).arg(&wpe_ptr).arg(&bi).arg(&ti).arg(&ci);
    // SAFETY: the argument list matches the kernel signature
    // (T*, const int*, const T*, const T*, int, int, int) with T float or
    // __nv_bfloat16 as T::kernel picks, and
    // the lengths checked above bound every index the kernel touches given
    // in-range token ids. The guards keep the buffers' stream ordering
    // until after the launch is queued.
    unsafe { launch.launch(cfg) }.with_context(|| format!("launching {}", T::kernel("embedding_forward")))?;
    Ok(())
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
    ensure!(inputs.len() >= bt, "{OP}: inputs has {} < B*T = {bt}", inputs.len());
    ensure!(dout.len() >= btc, "{OP}: dout has {} < B*T*C = {btc}", dout.len());
    ensure!(dwpe.len() >= tc, "{OP}: dwpe has {} < T*C = {tc}", dwpe.len());
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
    let func = gpu.function(&T::kernel(OP))?;

    let stream = gpu.stream();
    gpu.note_pageable_upload();
    let d_csr = stream.clone_htod(&csr).with_context(|| format!("{OP}: uploading the token buckets"))?;
    let stream = &**stream;
    let (dwte_ptr, _dwte_guard) = dwte.device_ptr_mut(stream);
    let (dwpe_ptr, _dwpe_guard) = dwpe.device_ptr_mut(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let (csr_ptr, _csr_guard) = d_csr.device_ptr(stream);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&dwte_ptr).arg(&dwpe_ptr).arg(&dout_ptr).arg(&csr_ptr).arg(&ui).arg(&bi).arg(&ti).arg(&ci);
    // SAFETY: the argument list matches the kernel signature (float*, float*, const T*,
    // const int*, int, int, int, int) with T float or __nv_bfloat16 as T::kernel picks (dwte and
    // dwpe are f32 for both). csr holds 2U + 1 + B*T ints as the kernel reads them; every token is
    // below Vp = dwte.len() / C (checked above) and every row below B*T, so the dwte rows and dout
    // rows touched are in bounds, as are dwpe[t*C + c] for t < T, c < C. dwte and dwpe are
    // distinct `&mut` borrows. The guards keep the buffers' stream ordering until after the launch
    // is queued; d_csr is freed stream-ordered after it.
    unsafe { launch.launch(cfg) }.with_context(|| format!("launching {}", T::kernel(OP)))?;
    Ok(())
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
