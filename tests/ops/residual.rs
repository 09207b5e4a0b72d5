use super::*;
use genesis::cpu::residual::{residual_backward, residual_forward};

#[test]
fn residual_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    let n = 37;
    let (a, b, w) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0));
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    residual_backward(&mut da, &mut db, &w);
    let f = |a: &[f64], b: &[f64]| {
        let mut out = vec![0.0; n];
        residual_forward(&mut out, a, b);
        dot(&out, &w)
    };
    check_grad("residual", "inp1", &a, &da, |x| f(x, &b));
    check_grad("residual", "inp2", &b, &db, |x| f(&a, x));
}
