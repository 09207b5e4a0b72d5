use super::*;
use genesis::cpu::embedding::{embedding_backward, embedding_forward};

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let (b, t, c, vp, maxt) = (2, 5, 6, 11, 8);
    // Repeated tokens make the scatter-add matter.
    let inp: Vec<u32> = (0..b * t).map(|i| [3, 7, 3, 0, 10][i % 5]).collect();
    let (wte, wpe) = (randn(&mut rng, vp * c, 1.0), randn(&mut rng, maxt * c, 1.0));
    let w = randn(&mut rng, b * t * c, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0; vp * c], vec![0.0; maxt * c]);
    embedding_backward(&mut dwte, &mut dwpe, &w, &inp, b, t, c);
    let f = |wte: &[f64], wpe: &[f64]| {
        let mut out = vec![0.0; b * t * c];
        embedding_forward(&mut out, &inp, wte, wpe, b, t, c);
        dot(&out, &w)
    };
    check_grad("embedding", "wte", &wte, &dwte, |x| f(x, &wpe));
    check_grad("embedding", "wpe", &wpe, &dwpe, |x| f(&wte, x));
}
