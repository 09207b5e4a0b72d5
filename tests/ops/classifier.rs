use super::*;
use genesis::cpu::classifier::{classifier_backward, classifier_forward, logits_scratch_len};

#[test]
fn classifier_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let (n, c, v, vp) = (6, 5, 13, 16);
    let x = randn(&mut rng, n * c, 1.0);
    let mut wte = randn(&mut rng, vp * c, 1.0);
    wte[v * c..].fill(0.0);
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    // Objective: a weighted sum of per-row losses, so dloss differs by row... the op takes one
    // scalar dloss, so use L = dloss * sum(losses).
    let dloss = 0.37;
    let f = |x: &[f64], wte: &[f64]| {
        let mut losses = vec![0.0; n];
        classifier_forward(&mut losses, &mut vec![0.0; n * v], x, wte, &targets, n, c, v);
        dloss * losses.iter().sum::<f64>()
    };
    let (mut dx, mut dwte, mut losses) = (vec![0.0; n * c], vec![0.0; vp * c], vec![0.0; n]);
    classifier_backward(&mut dx, &mut dwte, &mut losses, &mut vec![0.0; n * v], &x, &wte, &targets, dloss, n, c, v);
    assert!(
        (dloss * losses.iter().sum::<f64>() - f(&x, &wte)).abs() < 1e-12,
        "backward's losses differ from forward's"
    );
    check_grad("classifier", "x", &x, &dx, |p| f(p, &wte));
    check_grad("classifier", "wte", &wte[..v * c], &dwte[..v * c], |p| {
        let mut full = wte.clone();
        full[..v * c].copy_from_slice(p);
        f(&x, &full)
    });
    assert!(dwte[v * c..].iter().all(|&g| g == 0.0), "padded vocabulary rows must get no gradient");
}

#[test]
fn classifier_loss_is_cross_entropy() {
    // One row, C=1, wte = [0, ln 2, ln 3]: logits are (0, ln2, ln3)*x with x = 1,
    // so p = (1, 2, 3)/6 and the loss for target 2 is ln(6/3) = ln 2.
    let (x, wte) = (vec![1.0f64], vec![0.0, 2f64.ln(), 3f64.ln()]);
    let mut losses = vec![0.0];
    classifier_forward(&mut losses, &mut [0.0; 3], &x, &wte, &[2], 1, 1, 3);
    assert!((losses[0] - 2f64.ln()).abs() < 1e-12);
}

#[test]
fn classifier_chunks_agree_with_one_pass() {
    // More rows than fit one chunk at a large vocabulary: results must not depend on chunking.
    let mut rng = Rng::new(12);
    let (n, c, v) = (700, 4, 50_000); // CHUNK_ELEMS / v = 335 rows per chunk
    let x: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let wte: Vec<f32> = (0..v * c).map(|_| rng.normal() as f32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let mut losses = vec![0.0f32; n];
    let mut scratch = vec![0.0f32; logits_scratch_len(n, v)];
    assert!(scratch.len() < n * v, "the test must span several chunks");
    classifier_forward(&mut losses, &mut scratch, &x, &wte, &targets, n, c, v);
    for i in [0, 334, 335, 699] {
        let mut one = [0.0f32];
        classifier_forward(&mut one, &mut scratch, &x[i * c..(i + 1) * c], &wte, &targets[i..i + 1], 1, c, v);
        assert!((one[0] - losses[i]).abs() < 1e-4, "row {i}: {} vs {}", one[0], losses[i]);
    }
}
