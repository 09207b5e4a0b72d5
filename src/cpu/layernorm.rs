//! LayerNorm over the channel dimension, eps 1e-5, with learned scale and shift.

use super::{rows_per_task, Real};
use rayon::prelude::*;

pub const LN_EPS: f64 = 1e-5;

// inp (N,C), weight (C), bias (C) -> out (N,C), mean (N), rstd (N)
pub fn layernorm_forward<F: Real>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: &[F],
    n: usize,
    c: usize,
) {
    assert!(out.len() == n * c && inp.len() == n * c && mean.len() == n && rstd.len() == n);
    let rows = rows_per_task(n);
    let inv_c = F::from_f64(1.0 / c as f64);
    out.par_chunks_mut(rows * c)
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .zip(inp.par_chunks(rows * c))
        .for_each(|((o, (m, r)), x)| {
            for j in 0..m.len() {
                let x = &x[j * c..(j + 1) * c];
                let mu = x.iter().copied().sum::<F>() * inv_c;
                let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<F>() * inv_c;
                let rs = F::ONE / (var + F::from_f64(LN_EPS)).sqrt();
                let o = &mut o[j * c..(j + 1) * c];
                for i in 0..c {
                    o[i] = (x[i] - mu) * rs * weight[i] + bias[i];
                }
                m[j] = mu;
                r[j] = rs;
            }
        });
}

// dout (N,C) -> dinp (N,C) +=, dweight (C) +=, dbias (C) +=
pub fn layernorm_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    mean: &[F],
    rstd: &[F],
    n: usize,
    c: usize,
) {
    assert!(dinp.len() == n * c && dout.len() == n * c && inp.len() == n * c);
    let rows = rows_per_task(n);
    let inv_c = F::from_f64(1.0 / c as f64);
    // dinp: rows are independent.
    dinp.par_chunks_mut(rows * c).enumerate().for_each(|(chunk, di)| {
        for j in 0..di.len() / c {
            let row = chunk * rows + j;
            let (x, g) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
            let (mu, rs) = (mean[row], rstd[row]);
            // dnorm = dout * weight; dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
            let mut dnorm_mean = F::ZERO;
            let mut dnorm_norm_mean = F::ZERO;
            for i in 0..c {
                let norm = (x[i] - mu) * rs;
                let dnorm = g[i] * weight[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean *= inv_c;
            dnorm_norm_mean *= inv_c;
            let di = &mut di[j * c..(j + 1) * c];
            for i in 0..c {
                let norm = (x[i] - mu) * rs;
                let dnorm = g[i] * weight[i];
                di[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs;
            }
        }
    });
    // dweight, dbias: reductions over rows, in a fixed order so results do not depend on threads.
    for row in 0..n {
        let (x, g) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
        let (mu, rs) = (mean[row], rstd[row]);
        for i in 0..c {
            dweight[i] += (x[i] - mu) * rs * g[i];
            dbias[i] += g[i];
        }
    }
}
