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

/// The most rows of one token that one block of the GPU's balanced embedding backward adds: the
/// frequent tokens of real text (" the", ",") are cut into chunks of this many rows.
pub const CHUNK_ROWS: usize = 64;

// dout (B,T,C) -> dwte (Vp,C) +=, dwpe (maxT,C) +=
/// [`embedding_backward`] in the order of the GPU's balanced kernel, and bit-identical to it: each
/// token's rows, in increasing order, are cut into chunks of [`CHUNK_ROWS`]. The first chunk is
/// added into the token's `dwte` row as [`embedding_backward`] adds; every later chunk is summed
/// from zero on its own, and those sums are then added to the row in chunk order. A token with at
/// most `CHUNK_ROWS` rows gets exactly the additions of [`embedding_backward`]; `dwpe` always does.
pub fn embedding_backward_balanced<F: Real>(
    dwte: &mut [F],
    dwpe: &mut [F],
    dout: &[F],
    inp: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert!(dout.len() == b * t * c && inp.len() == b * t);
    let mut rows: Vec<usize> = (0..b * t).collect();
    rows.sort_by_key(|&r| inp[r]); // stable: each token's rows stay in increasing order
    for token_rows in rows.chunk_by(|&x, &y| inp[x] == inp[y]) {
        let tok = inp[token_rows[0]] as usize;
        let mut chunks = token_rows.chunks(CHUNK_ROWS);
        let first = chunks.next().expect("chunk_by yields non-empty groups");
        let partials: Vec<Vec<F>> = chunks
            .map(|chunk| {
                let mut sum = vec![F::default(); c];
                for &r in chunk {
                    for (s, &d) in sum.iter_mut().zip(&dout[r * c..(r + 1) * c]) {
                        *s += d;
                    }
                }
                sum
            })
            .collect();
        let row = &mut dwte[tok * c..(tok + 1) * c];
        for &r in first {
            for (w, &d) in row.iter_mut().zip(&dout[r * c..(r + 1) * c]) {
                *w += d;
            }
        }
        for sum in &partials {
            for (w, &s) in row.iter_mut().zip(sum) {
                *w += s;
            }
        }
    }
    for row in 0..b * t {
        let pos = row % t;
        for (w, &d) in dwpe[pos * c..(pos + 1) * c].iter_mut().zip(&dout[row * c..(row + 1) * c]) {
            *w += d;
        }
    }
}
