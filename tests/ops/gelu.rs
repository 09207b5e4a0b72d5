use super::*;
use genesis::cpu::gelu::{gelu_backward, gelu_forward};

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let n = 300;
    let (x, w) = (randn(&mut rng, n, 2.0), randn(&mut rng, n, 1.0));
    let mut dx = vec![0.0; n];
    gelu_backward(&mut dx, &x, &w);
    check_grad("gelu", "inp", &x, &dx, |x| {
        let mut out = vec![0.0; n];
        gelu_forward(&mut out, x);
        dot(&out, &w)
    });
}

#[test]
fn gelu_forward_matches_known_values() {
    // tanh-approximated GELU at a few points (values from the closed form).
    let x = [-3.0f64, -1.0, 0.0, 0.5, 2.0];
    let mut out = [0.0f64; 5];
    gelu_forward(&mut out, &x);
    let expect = [-0.003637392, -0.158808009, 0.0, 0.345714010, 1.954597694];
    for (o, e) in out.iter().zip(expect) {
        assert!((o - e).abs() < 1e-8, "{o} vs {e}");
    }
}
