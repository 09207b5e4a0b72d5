use super::*;
use genesis::cpu::attention::{attention_backward, attention_forward};

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let (b, t, c, nh) = (2, 5, 8, 2);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let w = randn(&mut rng, b * t * c, 1.0);
    let f = |qkv: &[f64]| {
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention_forward(&mut out, &mut att, qkv, b, t, c, nh);
        (dot(&out, &w), att)
    };
    let (_, att) = f(&qkv);
    let mut dqkv = vec![0.0; b * t * 3 * c];
    attention_backward(&mut dqkv, &w, &qkv, &att, b, t, c, nh);
    check_grad("attention", "qkv", &qkv, &dqkv, |x| f(x).0);
}

#[test]
fn attention_is_causal_and_rows_sum_to_one() {
    let mut rng = Rng::new(10);
    let (b, t, c, nh) = (1, 6, 8, 2);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention_forward(&mut out, &mut att, &qkv, b, t, c, nh);
    for row in att.chunks(t).enumerate() {
        let (t1, r) = (row.0 % t, row.1);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(r[t1 + 1..].iter().all(|&p| p == 0.0));
    }
    // Changing a later token's k/v must not change an earlier output.
    let mut later = qkv.clone();
    for x in &mut later[(t - 1) * 3 * c..] {
        *x += 1.0;
    }
    let (mut out2, mut att2) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention_forward(&mut out2, &mut att2, &later, b, t, c, nh);
    assert_eq!(&out[..(t - 1) * c], &out2[..(t - 1) * c]);
}
