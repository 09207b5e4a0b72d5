//! Token plus position embedding: the first op of the model.

use super::Real;
use rayon::prelude::*;

// inp (B,T) token ids, wte (Vp,C), wpe (maxT,C) -> out (B,T,C)
pub fn embedding_forward<F: Real>(out: &mut [F], inp: &[u32], wte: &[F], wpe: &[F], b: usize, t: usize, c: usize) {
    assert!(out.len() == b * t * c && inp.len() == b * t && wpe.len() >= t * c);
    out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
        let tok = inp[row] as usize;
        let pos = row % t;
        let (e, p) = (&wte[tok * c..(tok + 1) * c], &wpe[pos * c..(pos + 1) * c]);
        for i in 0..c {
            o[i] = e[i] + p[i];
        }
    });
}

// dout (B,T,C) -> dwte (Vp,C) +=, dwpe (maxT,C) +=
pub fn embedding_backward<F: Real>(
    dwte: &mut [F],
    dwpe: &mut [F],
    dout: &[F],
    inp: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert!(dout.len() == b * t * c && inp.len() == b * t);
    for row in 0..b * t {
        let (tok, pos) = (inp[row] as usize, row % t);
        let d = &dout[row * c..(row + 1) * c];
        for i in 0..c {
            dwte[tok * c + i] += d[i];
            dwpe[pos * c + i] += d[i];
        }
    }
}
