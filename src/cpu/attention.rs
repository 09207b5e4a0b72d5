//! Causal multi-head self-attention over a packed qkv tensor: softmax(q k^T / sqrt(hs)) v per head.

use super::Real;
use rayon::prelude::*;

// qkv (B,T,3C) -> out (B,T,C), att (B,NH,T,T) softmax probabilities (zero above the diagonal)
pub fn attention_forward<F: Real>(out: &mut [F], att: &mut [F], qkv: &[F], b: usize, t: usize, c: usize, nh: usize) {
    assert!(out.len() == b * t * c && att.len() == b * nh * t * t && qkv.len() == b * t * 3 * c);
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    // One task per (batch, head): it owns that head's (T,T) block of att and writes its (T,hs)
    // output into a local buffer, scattered into `out` afterwards.
    let heads: Vec<Vec<F>> = att
        .par_chunks_mut(t * t)
        .enumerate()
        .map(|(bh, a)| {
            let (bi, h) = (bh / nh, bh % nh);
            let base = bi * t * 3 * c;
            let q = |ti: usize| &qkv[base + ti * 3 * c + h * hs..][..hs];
            let k = |ti: usize| &qkv[base + ti * 3 * c + c + h * hs..][..hs];
            let v = |ti: usize| &qkv[base + ti * 3 * c + 2 * c + h * hs..][..hs];
            let mut y = vec![F::ZERO; t * hs];
            for t1 in 0..t {
                let row = &mut a[t1 * t..(t1 + 1) * t];
                let qt = q(t1);
                let mut maxv = F::from_f64(f64::NEG_INFINITY);
                for t2 in 0..=t1 {
                    let s = qt.iter().zip(k(t2)).map(|(&x, &y)| x * y).sum::<F>() * scale;
                    row[t2] = s;
                    maxv = maxv.max(s);
                }
                let mut sum = F::ZERO;
                for x in row[..=t1].iter_mut() {
                    *x = (*x - maxv).exp();
                    sum += *x;
                }
                let inv = F::ONE / sum;
                for x in row[..=t1].iter_mut() {
                    *x *= inv;
                }
                row[t1 + 1..].fill(F::ZERO);
                let yt = &mut y[t1 * hs..(t1 + 1) * hs];
                for t2 in 0..=t1 {
                    let (p, vt) = (row[t2], v(t2));
                    for i in 0..hs {
                        yt[i] += p * vt[i];
                    }
                }
            }
            y
        })
        .collect();
    for (bh, y) in heads.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        for ti in 0..t {
            out[(bi * t + ti) * c + h * hs..][..hs].copy_from_slice(&y[ti * hs..(ti + 1) * hs]);
        }
    }
}

// dout (B,T,C) -> dqkv (B,T,3C) +=   (needs the forward's qkv and att)
pub fn attention_backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    att: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert!(dqkv.len() == b * t * 3 * c && dout.len() == b * t * c && att.len() == b * nh * t * t);
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    // Per (batch, head): gradients of its q, k, v slices, as three (T,hs) blocks.
    let grads: Vec<Vec<F>> = (0..b * nh)
        .into_par_iter()
        .map(|bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let base = bi * t * 3 * c;
            let q = |ti: usize| &qkv[base + ti * 3 * c + h * hs..][..hs];
            let k = |ti: usize| &qkv[base + ti * 3 * c + c + h * hs..][..hs];
            let v = |ti: usize| &qkv[base + ti * 3 * c + 2 * c + h * hs..][..hs];
            let a = &att[bh * t * t..(bh + 1) * t * t];
            let mut g = vec![F::ZERO; 3 * t * hs];
            let (dq, rest) = g.split_at_mut(t * hs);
            let (dk, dv) = rest.split_at_mut(t * hs);
            let mut datt = vec![F::ZERO; t];
            for t1 in 0..t {
                let dy = &dout[(bi * t + t1) * c + h * hs..][..hs];
                let arow = &a[t1 * t..(t1 + 1) * t];
                // y = att @ v: datt = dy . v, dv += att * dy
                for t2 in 0..=t1 {
                    datt[t2] = dy.iter().zip(v(t2)).map(|(&x, &y)| x * y).sum();
                    let dvt = &mut dv[t2 * hs..(t2 + 1) * hs];
                    for i in 0..hs {
                        dvt[i] += arow[t2] * dy[i];
                    }
                }
                // softmax: dpre = att * (datt - sum(att * datt))
                let dot: F = (0..=t1).map(|t2| arow[t2] * datt[t2]).sum();
                let qt = q(t1);
                for t2 in 0..=t1 {
                    let dpre = arow[t2] * (datt[t2] - dot) * scale;
                    let kt = k(t2);
                    let dqt = &mut dq[t1 * hs..(t1 + 1) * hs];
                    for i in 0..hs {
                        dqt[i] += dpre * kt[i];
                    }
                    let dkt = &mut dk[t2 * hs..(t2 + 1) * hs];
                    for i in 0..hs {
                        dkt[i] += dpre * qt[i];
                    }
                }
            }
            g
        })
        .collect();
    for (bh, g) in grads.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        for ti in 0..t {
            let row = &mut dqkv[(bi * t + ti) * 3 * c..][..3 * c];
            for part in 0..3 {
                let src = &g[part * t * hs + ti * hs..][..hs];
                let dst = &mut row[part * c + h * hs..][..hs];
                for i in 0..hs {
                    dst[i] += src[i];
                }
            }
        }
    }
}
