//! The fused classifier: logits = x @ wte^T over the real vocabulary, softmax, cross-entropy, and in
//! the backward the gradient of both matmul inputs. Logits are only ever held for one chunk of rows
//! (at most [`CHUNK_ELEMS`] floats), never for the whole batch; padded vocabulary rows are ignored.

use super::matmul::{gemm_into, View};
use super::{rows_per_task, Real};
use rayon::prelude::*;

/// Upper bound on the logits held at once (64 MiB in f32).
pub const CHUNK_ELEMS: usize = 1 << 24;

fn chunk_rows(n: usize, v: usize) -> usize {
    (CHUNK_ELEMS / v).clamp(1, n.max(1))
}

/// Length of the `logits` scratch buffer the classifier needs for N rows over a vocabulary of V.
pub fn logits_scratch_len(n: usize, v: usize) -> usize {
    chunk_rows(n, v) * v
}

/// Turns each row of `logits` (rows, V) into probabilities in place and returns -log p(target) per row.
fn softmax_rows<F: Real>(logits: &mut [F], targets: &[u32], losses: &mut [F], v: usize) {
    let rows = rows_per_task(losses.len());
    logits.par_chunks_mut(rows * v).zip(losses.par_chunks_mut(rows).zip(targets.par_chunks(rows))).for_each(
        |(lg, (ls, tg))| {
            for (j, row) in lg.chunks_mut(v).enumerate() {
                let maxv = row.iter().copied().fold(F::from_f64(f64::NEG_INFINITY), F::max);
                let mut sum = F::ZERO;
                for x in row.iter_mut() {
                    *x = (*x - maxv).exp();
                    sum += *x;
                }
                let inv = F::ONE / sum;
                let target = tg[j] as usize;
                assert!(target < v, "target token {target} outside the vocabulary ({v})");
                for x in row.iter_mut() {
                    *x *= inv;
                }
                ls[j] = -row[target].ln();
            }
        },
    );
}

// x (N,C), wte (Vp,C), targets (N) -> losses (N)      (softmax over the first V rows of wte only)
/// `logits` is scratch of at least [`logits_scratch_len`] elements.
pub fn classifier_forward<F: Real>(
    losses: &mut [F],
    logits: &mut [F],
    x: &[F],
    wte: &[F],
    targets: &[u32],
    n: usize,
    c: usize,
    v: usize,
) {
    assert!(losses.len() == n && x.len() == n * c && targets.len() == n && wte.len() >= v * c);
    let rows = chunk_rows(n, v);
    assert!(logits.len() >= rows * v, "classifier: logits scratch too small");
    for start in (0..n).step_by(rows) {
        let m = rows.min(n - start);
        let lg = &mut logits[..m * v];
        gemm_into(lg, View::rows(&x[start * c..(start + m) * c], c), View::transposed(wte, c), m, c, v, false);
        softmax_rows(lg, &targets[start..start + m], &mut losses[start..start + m], v);
    }
}

/// The forward's arguments plus the gradients: writes losses (N) as the forward does, then
/// dx (N,C) = dlogits @ wte and dwte (Vp,C) += dlogits^T @ x, where dlogits = dloss * (probs - onehot).
/// `dloss` is d(objective)/d(loss_i), e.g. 1/(B*T*grad_accum) for a mean.
// x (N,C), wte (Vp,C), targets (N) -> losses (N), dx (N,C) =, dwte (Vp,C) +=
pub fn classifier_backward<F: Real>(
    dx: &mut [F],
    dwte: &mut [F],
    losses: &mut [F],
    logits: &mut [F],
    x: &[F],
    wte: &[F],
    targets: &[u32],
    dloss: F,
    n: usize,
    c: usize,
    v: usize,
) {
    assert!(dx.len() == n * c && dwte.len() >= v * c);
    assert!(losses.len() == n && x.len() == n * c && targets.len() == n && wte.len() >= v * c);
    let rows = chunk_rows(n, v);
    assert!(logits.len() >= rows * v, "classifier: logits scratch too small");
    for start in (0..n).step_by(rows) {
        let m = rows.min(n - start);
        let xs = &x[start * c..(start + m) * c];
        let lg = &mut logits[..m * v];
        gemm_into(lg, View::rows(xs, c), View::transposed(wte, c), m, c, v, false);
        softmax_rows(lg, &targets[start..start + m], &mut losses[start..start + m], v);
        lg.par_chunks_mut(v).zip(&targets[start..start + m]).for_each(|(row, &tg)| {
            row[tg as usize] -= F::ONE;
            for p in row.iter_mut() {
                *p *= dloss;
            }
        });
        gemm_into(&mut dx[start * c..(start + m) * c], View::rows(lg, v), View::rows(wte, c), m, v, c, false);
        gemm_into(&mut dwte[..v * c], View::transposed(lg, v), View::rows(xs, c), v, m, c, true);
    }
}
