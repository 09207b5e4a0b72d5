use super::*;
use genesis::cpu::matmul::{matmul_backward, matmul_forward};

fn objective(inp: &[f64], weight: &[f64], bias: Option<&[f64]>, w: &[f64], n: usize, c: usize, oc: usize) -> f64 {
    let mut out = vec![0.0; n * oc];
    matmul_forward(&mut out, inp, weight, bias, n, c, oc);
    dot(&out, w)
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = Rng::new(6);
    let (n, c, oc) = (5, 7, 9);
    let (inp, weight, bias) = (randn(&mut rng, n * c, 1.0), randn(&mut rng, oc * c, 1.0), randn(&mut rng, oc, 1.0));
    let w = randn(&mut rng, n * oc, 1.0);
    let (mut dinp, mut dweight, mut dbias) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
    matmul_backward(&mut dinp, &mut dweight, Some(&mut dbias), &w, &inp, &weight, n, c, oc);
    check_grad("matmul", "inp", &inp, &dinp, |x| objective(x, &weight, Some(&bias), &w, n, c, oc));
    check_grad("matmul", "weight", &weight, &dweight, |x| objective(&inp, x, Some(&bias), &w, n, c, oc));
    check_grad("matmul", "bias", &bias, &dbias, |x| objective(&inp, &weight, Some(x), &w, n, c, oc));
}

#[test]
fn matmul_forward_matches_naive_loops_at_blocking_sizes() {
    // Sizes past gemm's block sizes and odd, in f32, against an f64 triple loop.
    let mut rng = Rng::new(7);
    let (n, c, oc) = (67, 300, 133);
    let inp: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let weight: Vec<f32> = (0..oc * c).map(|_| rng.normal() as f32).collect();
    let bias: Vec<f32> = (0..oc).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0.0f32; n * oc];
    matmul_forward(&mut out, &inp, &weight, Some(&bias), n, c, oc);
    for i in 0..n {
        for o in 0..oc {
            let exact: f64 =
                bias[o] as f64 + (0..c).map(|k| inp[i * c + k] as f64 * weight[o * c + k] as f64).sum::<f64>();
            assert!((out[i * oc + o] as f64 - exact).abs() < 1e-3, "({i},{o}): {} vs {exact}", out[i * oc + o]);
        }
    }
}

#[test]
fn matmul_backward_accumulates() {
    let mut rng = Rng::new(8);
    let (n, c, oc) = (3, 4, 5);
    let (inp, weight, dout) = (randn(&mut rng, n * c, 1.0), randn(&mut rng, oc * c, 1.0), randn(&mut rng, n * oc, 1.0));
    let (mut d1, mut w1, mut b1) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
    matmul_backward(&mut d1, &mut w1, Some(&mut b1), &dout, &inp, &weight, n, c, oc);
    let (mut d2, mut w2, mut b2) = (d1.clone(), w1.clone(), b1.clone());
    matmul_backward(&mut d2, &mut w2, Some(&mut b2), &dout, &inp, &weight, n, c, oc);
    for (a, b) in d1.iter().chain(&w1).chain(&b1).zip(d2.iter().chain(&w2).chain(&b2)) {
        assert!((2.0 * a - b).abs() < 1e-12);
    }
}
