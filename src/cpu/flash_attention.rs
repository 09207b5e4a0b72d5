//! Flash attention, the CPU model of the bf16 tensor-core kernel (issue 16): causal multi-head
//! self-attention over a packed qkv tensor, computed tile by tile with an online softmax, never
//! forming the (T,T) attention matrix. It is the kernel's executable specification: the same tiles,
//! the same three backward passes, exp2 with the scale folded with log2(e), the log-sum-exp in base 2,
//! and bf16 rounding (round to nearest even) at exactly the kernel's points and nowhere else:
//! - inputs `qkv`, `dout` and `out` hold bf16 values (the caller rounds them);
//! - P before P·V (forward) and P^T·dO (dV); dS before dS^T·Q (dK) and dS·K (dQ);
//! - the stored `out`, dq, dk, dv.
//!
//! Everything else is f32 (S, z, m, l, the O/dK/dV/dQ accumulators, D, lse), as in the kernel's
//! registers. Only the order of the f32 sums differs from the tensor cores (which add their 16-term
//! k-steps in an order of their own), so model and kernel agree to f32 rounding, not bit for bit.
//!
//! Unlike the other `_backward` functions of `src/cpu/`, the backward *writes* (`=`) every element
//! of `dqkv` exactly once, as the kernel does (no float atomics, so two runs give identical bits).
//! The kernel supports head size 64 only; the model takes any head size (scale 1/sqrt(hs)).

use half::bf16;

/// Query rows per tile (the kernel: 4 warps x 16 rows, 128 threads per block).
pub const BR: usize = 64;
/// Keys per tile.
pub const BC: usize = 64;

/// x rounded to the nearest bf16, ties to even (the kernel's `__float2bfloat16_rn`), as an f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The factor from S = q·k to z, the exponent of 2: (1/sqrt(hs)) * log2(e), rounded once to f32
/// (0.125 * 1.4426950408889634 for hs = 64). Softmax in z units is exp2(z - max).
pub fn z_scale(hs: usize) -> f32 {
    (1.0 / (hs as f64).sqrt() * std::f64::consts::LOG2_E) as f32
}

/// The softmax scale 1/sqrt(hs) (0.125 for hs = 64), applied to dQ and dK at the end.
pub fn softmax_scale(hs: usize) -> f32 {
    (1.0 / (hs as f64).sqrt()) as f32
}

/// The query tile that block `block` of `tiles` works on: longest first, so the tile with the most
/// key tiles (the last one, i = tiles - 1, with `tiles` key tiles) gets the lowest blockIdx.
pub fn query_tile_of_block(block: usize, tiles: usize) -> usize {
    tiles - 1 - block
}

/// f32 dot product, summed in order.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// One (batch, head) of the packed tensors: rows of q, k, v (from qkv, stride 3C) and of a (B,T,C)
/// tensor such as out or dout (stride C).
struct Head<'a> {
    qkv: &'a [f32],
    base3: usize,
    base1: usize,
    c: usize,
    off: usize,
    hs: usize,
}

impl<'a> Head<'a> {
    fn new(qkv: &'a [f32], bi: usize, h: usize, t: usize, c: usize, hs: usize) -> Self {
        Head { qkv, base3: bi * t * 3 * c, base1: bi * t * c, c, off: h * hs, hs }
    }
    fn q(&self, ti: usize) -> &'a [f32] {
        &self.qkv[self.base3 + ti * 3 * self.c + self.off..][..self.hs]
    }
    fn k(&self, ti: usize) -> &'a [f32] {
        &self.qkv[self.base3 + ti * 3 * self.c + self.c + self.off..][..self.hs]
    }
    fn v(&self, ti: usize) -> &'a [f32] {
        &self.qkv[self.base3 + ti * 3 * self.c + 2 * self.c + self.off..][..self.hs]
    }
    /// Index of row `ti` of this head in a (B,T,C) tensor.
    fn row(&self, ti: usize) -> usize {
        self.base1 + ti * self.c + self.off
    }
    /// Index of row `ti` of this head's q slot in the (B,T,3C) tensor; + C for k, + 2C for v.
    fn row3(&self, ti: usize) -> usize {
        self.base3 + ti * 3 * self.c + self.off
    }
}

/// The valid keys of key tile `j` for query `qi`: those <= qi (causal) and < T. Keys outside it have
/// z = -inf, P = 0. (Keys >= T only occur in the last tile, where they are also > every query < T.)
fn keys_for(j: usize, qi: usize, t: usize) -> std::ops::Range<usize> {
    let k0 = j * BC;
    k0..(k0 + BC).min(t).min(qi + 1)
}

// qkv (B,T,3C) -> out (B,T,C), lse (B,NH,T) base-2 log-sum-exp of z = q·k/sqrt(hs)*log2(e)
pub fn flash_attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
    assert!(c.is_multiple_of(nh), "C = {c} is not a multiple of NH = {nh}");
    assert!(out.len() == b * t * c && lse.len() == b * nh * t && qkv.len() == b * t * 3 * c);
    let hs = c / nh;
    let zs = z_scale(hs);
    let tiles = t.div_ceil(BR);
    for bi in 0..b {
        for h in 0..nh {
            let head = Head::new(qkv, bi, h, t, c, hs);
            let lse_bh = &mut lse[(bi * nh + h) * t..][..t];
            for block in 0..tiles {
                forward_tile(&head, query_tile_of_block(block, tiles), t, zs, out, lse_bh);
            }
        }
    }
}

/// One block of the forward: query tile `i` against key tiles 0 ..= i.
fn forward_tile(head: &Head, i: usize, t: usize, zs: f32, out: &mut [f32], lse: &mut [f32]) {
    let hs = head.hs;
    let q0 = i * BR;
    let rows = BR.min(t - q0); // rows >= T are computed by the kernel but never stored: skipped here
    let mut m = [f32::NEG_INFINITY; BR];
    let mut l = [0.0f32; BR];
    let mut o = vec![0.0f32; BR * hs];
    let mut z = [0.0f32; BC];
    for j in 0..=i {
        let k0 = j * BC;
        for r in 0..rows {
            let qi = q0 + r;
            // z = (Q_i K_j^T) * scale * log2(e), masked to -inf where key > query or key >= T.
            z.fill(f32::NEG_INFINITY);
            for key in keys_for(j, qi, t) {
                z[key - k0] = dot(head.q(qi), head.k(key)) * zs;
            }
            // Online softmax: the new running max, the factor that rescales what came before.
            let m_new = z.iter().fold(m[r], |a, &x| a.max(x));
            let alpha = if m[r] == f32::NEG_INFINITY { 0.0 } else { (m[r] - m_new).exp2() };
            let mut p = [0.0f32; BC];
            for (pc, &zc) in p.iter_mut().zip(&z) {
                *pc = (zc - m_new).exp2(); // exp2(-inf) = 0 for masked keys
            }
            l[r] = l[r] * alpha + p.iter().sum::<f32>();
            // O = O * alpha + bf16(P) · V_j
            let orow = &mut o[r * hs..(r + 1) * hs];
            for x in orow.iter_mut() {
                *x *= alpha;
            }
            for key in keys_for(j, qi, t) {
                let pb = round_bf16(p[key - k0]);
                for (x, &vd) in orow.iter_mut().zip(head.v(key)) {
                    *x += pb * vd;
                }
            }
            m[r] = m_new;
        }
    }
    for r in 0..rows {
        let qi = q0 + r;
        let dst = &mut out[head.row(qi)..][..hs];
        for (y, &x) in dst.iter_mut().zip(&o[r * hs..(r + 1) * hs]) {
            *y = round_bf16(x / l[r]);
        }
        lse[qi] = m[r] + l[r].log2();
    }
}

// dout (B,T,C) -> dqkv (B,T,3C) =   (needs the forward's qkv, out and lse; writes, not +=)
pub fn flash_attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert!(c.is_multiple_of(nh), "C = {c} is not a multiple of NH = {nh}");
    assert!(dqkv.len() == b * t * 3 * c && qkv.len() == b * t * 3 * c);
    assert!(dout.len() == b * t * c && out.len() == b * t * c && lse.len() == b * nh * t);
    let hs = c / nh;
    let (zs, scale) = (z_scale(hs), softmax_scale(hs));
    let tiles = t.div_ceil(BR);
    // Pass 1: D[b,h,t] = dout · out over the head's dims, in f32 from the bf16 values.
    let mut d = vec![0.0f32; b * nh * t];
    for bi in 0..b {
        for h in 0..nh {
            let head = Head::new(qkv, bi, h, t, c, hs);
            for ti in 0..t {
                let r = head.row(ti);
                d[(bi * nh + h) * t + ti] = dot(&dout[r..r + hs], &out[r..r + hs]);
            }
        }
    }
    for bi in 0..b {
        for h in 0..nh {
            let head = Head::new(qkv, bi, h, t, c, hs);
            let bh = (bi * nh + h) * t;
            let (lse_bh, d_bh) = (&lse[bh..bh + t], &d[bh..bh + t]);
            // Pass 2: dK, dV per key tile j. Pass 3: dQ per query tile i.
            for j in 0..tiles {
                backward_dkdv_tile(&head, j, t, zs, scale, dout, lse_bh, d_bh, dqkv);
            }
            for block in 0..tiles {
                backward_dq_tile(&head, query_tile_of_block(block, tiles), t, zs, scale, dout, lse_bh, d_bh, dqkv);
            }
        }
    }
}

/// Pass 2, one block: key tile `j` against query tiles j (the diagonal) ..= the last.
fn backward_dkdv_tile(
    head: &Head,
    j: usize,
    t: usize,
    zs: f32,
    scale: f32,
    dout: &[f32],
    lse: &[f32],
    d: &[f32],
    dqkv: &mut [f32],
) {
    let hs = head.hs;
    let k0 = j * BC;
    let cols = BC.min(t - k0);
    let mut dk = vec![0.0f32; BC * hs];
    let mut dv = vec![0.0f32; BC * hs];
    for i in j..t.div_ceil(BR) {
        let q0 = i * BR;
        for qi in q0..(q0 + BR).min(t) {
            let dorow = &dout[head.row(qi)..][..hs];
            // Keys of this tile the query sees (key <= query); the others have P^T = 0.
            for key in keys_for(j, qi, t) {
                let cidx = key - k0;
                // P^T = exp2(z^T - lse_i) with S^T = K_j Q_i^T.
                let p = (dot(head.k(key), head.q(qi)) * zs - lse[qi]).exp2();
                // dV += bf16(P^T) · dO_i
                let pb = round_bf16(p);
                for (x, &g) in dv[cidx * hs..(cidx + 1) * hs].iter_mut().zip(dorow) {
                    *x += pb * g;
                }
                // dP^T = V_j dO_i^T; dS^T = P^T ∘ (dP^T - D_i); dK += bf16(dS^T) · Q_i
                let dp = dot(head.v(key), dorow);
                let ds = round_bf16(p * (dp - d[qi]));
                for (x, &qd) in dk[cidx * hs..(cidx + 1) * hs].iter_mut().zip(head.q(qi)) {
                    *x += ds * qd;
                }
            }
        }
    }
    let c = head.c;
    for cidx in 0..cols {
        let r = head.row3(k0 + cidx);
        for e in 0..hs {
            dqkv[r + c + e] = round_bf16(dk[cidx * hs + e] * scale);
            dqkv[r + 2 * c + e] = round_bf16(dv[cidx * hs + e]);
        }
    }
}

/// Pass 3, one block: query tile `i` against key tiles 0 ..= i.
fn backward_dq_tile(
    head: &Head,
    i: usize,
    t: usize,
    zs: f32,
    scale: f32,
    dout: &[f32],
    lse: &[f32],
    d: &[f32],
    dqkv: &mut [f32],
) {
    let hs = head.hs;
    let q0 = i * BR;
    let rows = BR.min(t - q0);
    let mut dq = vec![0.0f32; BR * hs];
    for j in 0..=i {
        for r in 0..rows {
            let qi = q0 + r;
            let dorow = &dout[head.row(qi)..][..hs];
            for key in keys_for(j, qi, t) {
                // P = exp2(z - lse_i), dP = dO_i V_j^T, dS = P ∘ (dP - D_i), dQ += bf16(dS) · K_j
                let p = (dot(head.q(qi), head.k(key)) * zs - lse[qi]).exp2();
                let dp = dot(dorow, head.v(key));
                let ds = round_bf16(p * (dp - d[qi]));
                for (x, &kd) in dq[r * hs..(r + 1) * hs].iter_mut().zip(head.k(key)) {
                    *x += ds * kd;
                }
            }
        }
    }
    for r in 0..rows {
        let dst = head.row3(q0 + r);
        for e in 0..hs {
            dqkv[dst + e] = round_bf16(dq[r * hs + e] * scale);
        }
    }
}
