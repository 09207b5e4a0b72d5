//! GELU, tanh approximation (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

use super::Real;
use rayon::prelude::*;

const GELU_SCALE: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
const GELU_CUBE: f64 = 0.044715;

// inp (N) -> out (N)
pub fn gelu_forward<F: Real>(out: &mut [F], inp: &[F]) {
    assert_eq!(out.len(), inp.len());
    let (s, k, half) = (F::from_f64(GELU_SCALE), F::from_f64(GELU_CUBE), F::from_f64(0.5));
    out.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14)).for_each(|(o, x)| {
        for i in 0..o.len() {
            let x = x[i];
            o[i] = half * x * (F::ONE + (s * (x + k * x * x * x)).tanh());
        }
    });
}

// dout (N) -> dinp (N) +=   (needs the forward's input)
pub fn gelu_backward<F: Real>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    assert!(dinp.len() == inp.len() && dout.len() == inp.len());
    let (s, k, half) = (F::from_f64(GELU_SCALE), F::from_f64(GELU_CUBE), F::from_f64(0.5));
    let three_k = F::from_f64(3.0 * GELU_CUBE);
    dinp.par_chunks_mut(1 << 14).zip(inp.par_chunks(1 << 14).zip(dout.par_chunks(1 << 14))).for_each(|(d, (x, g))| {
        for i in 0..d.len() {
            let x = x[i];
            let th = (s * (x + k * x * x * x)).tanh();
            let sech2 = F::ONE - th * th;
            let local = half * (F::ONE + th) + half * x * sech2 * s * (F::ONE + three_k * x * x);
            d[i] += local * g[i];
        }
    });
}
