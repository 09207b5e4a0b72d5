use super::*;
use genesis::cpu::embedding::{embedding_backward, embedding_backward_balanced, embedding_forward, CHUNK_ROWS};

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

/// The balanced order (the GPU's balanced kernel's) adds exactly what `embedding_backward` adds:
/// bit for bit when no token has more than [`CHUNK_ROWS`] rows, and to f64 rounding when tokens
/// repeat hundreds of times (the sums are regrouped by chunk); the regrouping is real: in f32 the
/// heavy case differs in some bits.
#[test]
fn embedding_backward_balanced_regroups_only_heavy_tokens() {
    let mut rng = Rng::new(5);
    let (c, vp, maxt) = (24, 9, 300);
    let run = |inp: &[u32], b: usize, t: usize, dout: &[f64], balanced: bool| {
        let (mut dwte, mut dwpe) = (randn(&mut Rng::new(8), vp * c, 1.0), randn(&mut Rng::new(9), maxt * c, 1.0));
        if balanced {
            embedding_backward_balanced(&mut dwte, &mut dwpe, dout, inp, b, t, c);
        } else {
            embedding_backward(&mut dwte, &mut dwpe, dout, inp, b, t, c);
        }
        (dwte, dwpe)
    };
    // Light: every token at most CHUNK_ROWS times -> identical bits.
    let (b, t) = (2, 60);
    let light: Vec<u32> = (0..b * t).map(|i| (i % vp) as u32).collect();
    assert!(light.iter().filter(|&&x| x == 0).count() <= CHUNK_ROWS);
    let dout = randn(&mut rng, b * t * c, 1.0);
    assert_eq!(run(&light, b, t, &dout, true), run(&light, b, t, &dout, false));
    // Heavy: token 3 on 5 rows of 6, so it has several chunks.
    let (b, t) = (4, 250);
    let heavy: Vec<u32> = (0..b * t).map(|i| if i % 6 != 0 { 3 } else { (i % vp) as u32 }).collect();
    assert!(heavy.iter().filter(|&&x| x == 3).count() > 4 * CHUNK_ROWS);
    let dout = randn(&mut rng, b * t * c, 1.0);
    let (got, want) = (run(&heavy, b, t, &dout, true), run(&heavy, b, t, &dout, false));
    for (g, w) in got.0.iter().zip(&want.0).chain(got.1.iter().zip(&want.1)) {
        assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}");
    }
    assert_eq!(got.1, want.1, "dwpe keeps the unbalanced order");
    // In f32 the regrouped sums of token 3 are not all the same bits: the order really changed.
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (d32, mut a, mut b32) =
        (to32(&dout), (vec![0f32; vp * c], vec![0f32; maxt * c]), (vec![0f32; vp * c], vec![0f32; maxt * c]));
    embedding_backward_balanced(&mut a.0, &mut a.1, &d32, &heavy, b, t, c);
    embedding_backward(&mut b32.0, &mut b32.1, &d32, &heavy, b, t, c);
    assert_ne!(a.0[3 * c..4 * c], b32.0[3 * c..4 * c]);
}

/// The embedding backward kernels' own source (`kernels/embedding.cu`), compiled for the CPU by
/// `scripts/kernel_emu/run.sh embedding` and launched as `src/gpu/embedding.rs` launches them, on the
/// plan `gpu::embedding::BackwardPlan` builds: the plain (one block per distinct token) and the
/// balanced (chunks of `CHUNK_ROWS`, partial sums, combine) backward, with f32 and bf16 `dout`,
/// accumulate onto non-zero gradients bit for bit as `cpu::embedding::embedding_backward` and
/// `embedding_backward_balanced` do. One token fills a third of the rows, so the balanced plan cuts
/// it into several chunks; C = 20 is not a multiple of the block, T*C is not either. The partial
/// sums start as NaN in the emulation, so a slot read before it is written fails. The harness also
/// holds the 128-bit forward (`embedding_forward_vec[_bf16]`, `--kernels vector`) to the scalar one
/// bit for bit. Needs bash and g++ (C++20).
#[test]
fn embedding_backward_kernel_source_passes_the_cpu_emulation() {
    use genesis::gpu::embedding::BackwardPlan;
    let (b, t, c, vp) = (4usize, 100usize, 20usize, 64usize);
    let mut rng = Rng::new(0x656d_6265_6400_0001);
    let inputs: Vec<u32> = (0..b * t).map(|i| if i % 3 == 0 { 13 } else { rng.below(vp as u64) as u32 }).collect();
    // bf16-exact values, so the bf16 kernels read exactly what the f32 reference adds.
    let exact = |rng: &mut Rng| half::bf16::from_f32((2.0 * rng.next_f64() - 1.0) as f32).to_f32();
    let dout: Vec<f32> = (0..b * t * c).map(|_| exact(&mut rng)).collect();
    let dwte0: Vec<f32> = (0..vp * c).map(|_| (2.0 * rng.next_f64() - 1.0) as f32).collect();
    let dwpe0: Vec<f32> = (0..t * c).map(|_| (2.0 * rng.next_f64() - 1.0) as f32).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("genesis-embedding-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for balanced in [false, true] {
        let plan = BackwardPlan::new(&inputs, balanced).unwrap();
        let (items, combine_at, combines, slots) = plan.shape();
        assert!(!balanced || combines > 0, "the balanced plan must combine chunks: {:?}", plan.shape());
        for bf16 in [false, true] {
            let mut bytes = Vec::new();
            let header =
                [b, t, c, vp, balanced as usize, bf16 as usize, plan.ints.len(), items, combine_at, combines, slots];
            header.iter().for_each(|&x| bytes.extend((x as i64).to_le_bytes()));
            plan.ints.iter().for_each(|x| bytes.extend(x.to_le_bytes()));
            [&dout, &dwte0, &dwpe0].iter().for_each(|v| v.iter().for_each(|x| bytes.extend(x.to_le_bytes())));
            let (input, output) = (dir.join("in.bin"), dir.join("out.bin"));
            std::fs::write(&input, &bytes).unwrap();
            let out = std::process::Command::new("bash")
                .arg(root.join("scripts/kernel_emu/run.sh"))
                .args(["embedding".as_ref(), input.as_os_str(), output.as_os_str()])
                .output()
                .expect("bash runs scripts/kernel_emu/run.sh (it needs g++)");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "the embedding kernels failed their CPU emulation:\n{text}");
            for forward in ["ok embedding forward_vec f32", "ok embedding forward_vec bf16"] {
                assert!(text.contains(forward), "no {forward:?} line:\n{text}");
            }
            let got: Vec<f32> =
                std::fs::read(&output).unwrap().chunks(4).map(|x| f32::from_le_bytes(x.try_into().unwrap())).collect();
            let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
            if balanced {
                embedding_backward_balanced(&mut dwte, &mut dwpe, &dout, &inputs, b, t, c);
            } else {
                embedding_backward(&mut dwte, &mut dwpe, &dout, &inputs, b, t, c);
            }
            let want: Vec<f32> = dwte.iter().chain(&dwpe).copied().collect();
            assert_eq!(got.len(), want.len());
            let bad = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
            assert!(bad.is_none(), "balanced={balanced} bf16={bf16}: element {bad:?} differs ({text})");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
