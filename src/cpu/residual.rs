//! Residual add: the skip connection around each attention and MLP sub-block.

use super::Real;
use rayon::prelude::*;

// inp1 (N), inp2 (N) -> out (N)
pub fn residual_forward<F: Real>(out: &mut [F], inp1: &[F], inp2: &[F]) {
    assert!(out.len() == inp1.len() && out.len() == inp2.len());
    out.par_chunks_mut(1 << 14).zip(inp1.par_chunks(1 << 14).zip(inp2.par_chunks(1 << 14))).for_each(|(o, (a, b))| {
        for i in 0..o.len() {
            o[i] = a[i] + b[i];
        }
    });
}

// dout (N) -> dinp1 (N) +=, dinp2 (N) +=
pub fn residual_backward<F: Real>(dinp1: &mut [F], dinp2: &mut [F], dout: &[F]) {
    assert!(dinp1.len() == dout.len() && dinp2.len() == dout.len());
    for i in 0..dout.len() {
        dinp1[i] += dout[i];
        dinp2[i] += dout[i];
    }
}
