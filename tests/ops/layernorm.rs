use super::*;
use genesis::cpu::layernorm::{layernorm_backward, layernorm_forward};

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let (n, c) = (7, 16);
    let x: Vec<f64> = randn(&mut rng, n * c, 2.0).iter().map(|v| v + 0.5).collect();
    let (weight, bias) = (randn(&mut rng, c, 1.0), randn(&mut rng, c, 1.0));
    let w = randn(&mut rng, n * c, 1.0);
    let f = |x: &[f64], weight: &[f64], bias: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, weight, bias, n, c);
        (dot(&out, &w), mean, rstd)
    };
    let (_, mean, rstd) = f(&x, &weight, &bias);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &weight, &mean, &rstd, n, c);
    check_grad("layernorm", "inp", &x, &dx, |v| f(v, &weight, &bias).0);
    check_grad("layernorm", "weight", &weight, &dw, |v| f(&x, v, &bias).0);
    check_grad("layernorm", "bias", &bias, &db, |v| f(&x, &weight, v).0);
}

#[test]
fn layernorm_forward_normalises_rows() {
    let mut rng = Rng::new(5);
    let (n, c) = (3, 64);
    let x = randn(&mut rng, n * c, 3.0);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &vec![1.0; c], &vec![0.0; c], n, c);
    for row in out.chunks(c) {
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        assert!(mu.abs() < 1e-12 && (var - 1.0).abs() < 1e-3, "mean {mu} var {var}");
    }
}
