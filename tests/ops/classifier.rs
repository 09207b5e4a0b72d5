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

#[test]
fn classifier_backward_chunks_agree_with_smaller_pieces() {
    // The backward over more rows than one logits chunk holds (256 rows at V = 65536: chunks of
    // 256 and 44) against the same rows in pieces of 50, each inside one chunk: dx row for row and
    // dwte summed over the pieces must agree, so every chunk uses its own rows of x and targets.
    let mut rng = Rng::new(14);
    let (n, c, v, piece) = (300, 4, 1 << 16, 50);
    let x: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let wte: Vec<f32> = (0..v * c).map(|_| rng.normal() as f32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let dloss = 1.0 / n as f32;
    let mut scratch = vec![0.0f32; logits_scratch_len(n, v)];
    assert!(scratch.len() < n * v, "the test must span several chunks");
    let (mut dx, mut dwte, mut losses) = (vec![0.0f32; n * c], vec![0.0f32; v * c], vec![0.0f32; n]);
    classifier_backward(&mut dx, &mut dwte, &mut losses, &mut scratch, &x, &wte, &targets, dloss, n, c, v);
    let (mut dx_p, mut dwte_p, mut losses_p) = (vec![0.0f32; n * c], vec![0.0f32; v * c], vec![0.0f32; n]);
    for s in (0..n).step_by(piece) {
        let rows = s..s + piece;
        classifier_backward(
            &mut dx_p[s * c..(s + piece) * c],
            &mut dwte_p,
            &mut losses_p[rows.clone()],
            &mut scratch,
            &x[s * c..(s + piece) * c],
            &wte,
            &targets[rows],
            dloss,
            piece,
            c,
            v,
        );
    }
    // Same products summed in another grouping: f32 rounding of a few hundred terms, far below the
    // O(dloss * |x|) = O(3e-3) that one row's gradient contributes.
    let close = |a: &[f32], b: &[f32], what: &str| {
        let scale = b.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let worst = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(scale > 0.0 && worst <= 1e-4 * scale, "{what}: differs by {worst} (scale {scale})");
    };
    close(&losses, &losses_p, "losses");
    close(&dx, &dx_p, "dx");
    close(&dwte, &dwte_p, "dwte");
}

/// The never-run `classifier_forward_vec[_bf16]`'s own source (`kernels/classifier.cu`), compiled
/// for the CPU by `scripts/kernel_emu/run.sh classifier` (g++ against a small CUDA stand-in: real
/// threads per block, __syncthreads, warp shuffles through per-warp barriers; a barrier some threads
/// skip by returning is reported) and launched as `src/gpu/classifier.rs` launches it (one block
/// per row, ceil(V/32)*32 threads up to 1024), with and without dlogits, against the verified
/// scalar kernel: losses and dlogits (the row sum in another order) within first-order rounding
/// bounds, doubled (`classifier.cpp` derives them); the NaN loss of an out-of-range target, the
/// padding's zero dlogits and read-only logits bit for bit. V = 4999 of Vp = 5056 (threads go
/// round the row) and V = 37 of 40; NaN padding, the row max in the last live column, targets at
/// the last live column, -1 and in the padding. Planted bugs each fail it (the partial last pack
/// dropped, a padding column read into the sum, the one-hot one column off, the padding not
/// written, column 0's gradient zeroed, either __syncthreads removed). It cannot see the GPU's
/// memory system, timing, or nvcc's FMA contraction. Needs bash and g++ (C++20).
#[test]
fn classifier_vec_kernel_passes_the_cpu_emulation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/kernel_emu/run.sh"))
        .arg("classifier")
        .env_remove("KERNEL_EMU_SRC")
        .output()
        .expect("bash runs scripts/kernel_emu/run.sh classifier (it needs g++)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the classifier kernel failed its CPU emulation:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 8, "{text}");
}
