//! Matmul with bias, the workhorse: every projection in the model. Weights are stored (out, in),
//! so the forward is `inp @ weight^T`. The inner products run in the `gemm` crate (runtime-dispatched
//! AVX2/FMA/AVX-512 microkernels, parallel through rayon); transposes are expressed as strides.

use super::Real;
use gemm::Parallelism;

/// A row-major or transposed view for [`gemm_into`]: element (i, j) is at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, F> {
    pub data: &'a [F],
    pub rs: isize,
    pub cs: isize,
}

impl<'a, F> View<'a, F> {
    /// A (rows, cols) row-major matrix.
    pub fn rows(data: &'a [F], cols: usize) -> Self {
        View { data, rs: cols as isize, cs: 1 }
    }
    /// The transpose of a (rows, cols) row-major matrix, seen as (cols, rows).
    pub fn transposed(data: &'a [F], cols: usize) -> Self {
        View { data, rs: 1, cs: cols as isize }
    }
}

fn span(m: usize, n: usize, rs: isize, cs: isize) -> usize {
    if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * rs.unsigned_abs() + (n - 1) * cs.unsigned_abs() + 1
    }
}

/// dst (m,n) row-major = [dst +] a (m,k) @ b (k,n).
pub(crate) fn gemm_into<F: Real>(
    dst: &mut [F],
    a: View<F>,
    b: View<F>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n, "gemm: dst too small");
    assert!(a.data.len() >= span(m, k, a.rs, a.cs), "gemm: lhs too small");
    assert!(b.data.len() >= span(k, n, b.rs, b.cs), "gemm: rhs too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(F::ZERO);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the asserts above bound every index gemm touches; F is f32 or f64 (the Real impls),
    // both of which gemm supports; dst does not alias a or b (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            F::ONE,
            F::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

// inp (N,C), weight (OC,C), bias (OC) -> out (N,OC)
pub fn matmul_forward<F: Real>(
    out: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    n: usize,
    c: usize,
    oc: usize,
) {
    assert!(out.len() == n * oc && inp.len() == n * c && weight.len() >= oc * c);
    if let Some(bias) = bias {
        for row in out.chunks_mut(oc) {
            row.copy_from_slice(&bias[..oc]);
        }
    }
    gemm_into(out, View::rows(inp, c), View::transposed(weight, c), n, c, oc, bias.is_some());
}

// dout (N,OC) -> dinp (N,C) +=, dweight (OC,C) +=, dbias (OC) +=
pub fn matmul_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    weight: &[F],
    n: usize,
    c: usize,
    oc: usize,
) {
    assert!(dinp.len() == n * c && dout.len() == n * oc && inp.len() == n * c);
    // dinp (N,C) += dout (N,OC) @ weight (OC,C)
    gemm_into(dinp, View::rows(dout, oc), View::rows(weight, c), n, oc, c, true);
    // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
    gemm_into(dweight, View::transposed(dout, oc), View::rows(inp, c), oc, n, c, true);
    if let Some(dbias) = dbias {
        for row in dout.chunks(oc) {
            for (db, &g) in dbias.iter_mut().zip(row) {
                *db += g;
            }
        }
    }
}
