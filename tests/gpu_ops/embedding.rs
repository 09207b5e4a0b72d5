//! CUDA embedding forward vs. an inline CPU reference; backward vs. `cpu::embedding`.

use super::common::assert_same_bits;
use super::{download, gpu_or_skip, poisoned, round, widen, Uniform, TAIL};
use genesis::cpu;
use genesis::gpu::device::{cuda_available, Gpu};
use genesis::gpu::embedding::{embedding_backward, embedding_backward_balanced, embedding_forward};
use genesis::gpu::kernels;
use genesis::gpu::{Float, Kernels};
use genesis::rng::Rng;
use half::bf16;

fn cpu_embedding_forward(inp: &[i32], wte: &[f32], wpe: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b * t * c];
    for bi in 0..b {
        for ti in 0..t {
            let token = inp[bi * t + ti] as usize;
            let row = &mut out[(bi * t + ti) * c..][..c];
            for (ci, o) in row.iter_mut().enumerate() {
                *o = wte[token * c + ci] + wpe[ti * c + ci];
            }
        }
    }
    out
}

/// Asserts the forward's output `got` equals `expected` bit for bit, naming the (b, t, c) of the
/// first mismatch.
fn assert_forward_bits(got: &[f32], expected: &[f32], t: usize, c: usize) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "mismatch at flat index {i} (b={}, t={}, c={}): gpu {g} vs cpu {e}",
            i / (t * c),
            (i / c) % t,
            i % c
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (b, t, c, vp) = (3usize, 17usize, 64usize, 128usize);
    let mut rng = Rng::new(0x0067_656e_6573_6973);
    let inp = tokens(&mut rng, b * t, vp);
    let wte = rng.uniform_vec(vp * c);
    let wpe = rng.uniform_vec(t * c);
    let expected = cpu_embedding_forward(&inp, &wte, &wpe, b, t, c);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_wte = stream.clone_htod(&wte).unwrap();
    let d_wpe = stream.clone_htod(&wpe).unwrap();
    let mut d_out = stream.alloc_zeros::<f32>(b * t * c).unwrap();
    embedding_forward(&gpu, &mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c).unwrap();
    gpu.synchronize().unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();
    assert_forward_bits(&got, &expected, t, c);
    println!("embedding_forward on {}: {} values bit-identical", gpu.describe(), got.len());
}

/// bf16 storage: the kernel loads both values as f32, adds them in f32 and rounds the sum to bf16
/// once (round-to-nearest-even, as `bf16::from_f32`). The CPU does the same f32 add on the same
/// bf16 inputs and the same rounding, so the comparison is exact (bit for bit), not a tolerance.
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (b, t, c, vp) = (3usize, 17usize, 64usize, 128usize);
    let mut rng = Rng::new(0x6266_3136_656d_6264);
    let inp = tokens(&mut rng, b * t, vp);
    // Different scales so that the sums need rounding (and some cancel).
    let wte: Vec<bf16> = round(&rng.uniform_vec(vp * c));
    let wpe: Vec<bf16> = round(&(0..t * c).map(|_| 0.37 * rng.uniform()).collect::<Vec<f32>>());
    let expected: Vec<bf16> = round(&cpu_embedding_forward(&inp, &widen(&wte), &widen(&wpe), b, t, c));

    let n = b * t * c;
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_wte = stream.clone_htod(&wte).unwrap();
    let d_wpe = stream.clone_htod(&wpe).unwrap();
    let mut d_out = poisoned::<bf16>(&gpu, n);
    embedding_forward(&gpu, &mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c).unwrap();
    gpu.synchronize().unwrap();
    // Widened to f32, exactly and injectively: equal f32 bits are equal bf16 bits.
    let got = download(&gpu, "embedding_forward_bf16", &d_out, n);
    assert_forward_bits(&got, &widen(&expected), t, c);
    println!("embedding_forward_bf16 on {}: {n} values bit-identical", gpu.describe());
}

#[test]
fn fatbin_present_iff_built_with_kernels() {
    let fatbin = kernels::fatbin();
    assert_eq!(fatbin.is_some(), cfg!(genesis_kernels));
    if let Some(bin) = fatbin {
        // Fatbin container magic 0xBA55ED50, little-endian.
        assert!(bin.len() > 16, "fatbin is only {} bytes", bin.len());
        assert_eq!(&bin[..4], &[0x50, 0xed, 0x55, 0xba]);
        assert_eq!(kernels::kernel_archs(), "sm_80,sm_86,sm_89,sm_90,compute_90");
        println!("embedded fatbin: {} bytes for {}", bin.len(), kernels::kernel_archs());
    } else {
        assert_eq!(kernels::kernel_archs(), "");
    }
}

#[test]
fn cuda_available_reports_instead_of_panicking() {
    // Must return (Ok on a GPU machine, Err with a reason elsewhere), never panic.
    match cuda_available() {
        Ok(()) => println!("CUDA available"),
        Err(reason) => {
            assert!(!reason.is_empty());
            println!("CUDA unavailable: {reason}");
        }
    }
}

#[test]
fn gpu_new_errors_cleanly_without_cuda() {
    if cuda_available().is_err() {
        let err = Gpu::new(0).err().expect("Gpu::new must fail when CUDA is unavailable");
        assert!(err.to_string().contains("CUDA unavailable"), "{err}");
    }
}

/// `n` token ids uniform in 0..Vp.
fn tokens(rng: &mut Rng, n: usize, vp: usize) -> Vec<i32> {
    (0..n).map(|_| rng.below(vp as u64) as i32).collect()
}

/// One embedding backward problem: token ids (many repeated, plus 0 and Vp - 1), dout, and the
/// gradients pre-filled with random values. `dwte` is exactly Vp*C (its length defines Vp) but lives
/// in a device buffer [`TAIL`] longer; `dwpe` has `max_t` > T rows plus a tail. Everything past
/// what the op may touch must come back unchanged.
///
/// Built for the storage type `T` of `dout` (`BackwardCase::new::<T>`): `dout` is rounded to `T`
/// and kept widened back to f32 (exact), so [`BackwardCase::run`] uploads exactly those values and
/// the reference adds exactly them. The gradients are f32 for every `T`.
struct BackwardCase {
    b: usize,
    t: usize,
    c: usize,
    vp: usize,
    inputs: Vec<u32>,
    dout: Vec<f32>,
    dwte: Vec<f32>,
    dwpe: Vec<f32>,
}

impl BackwardCase {
    fn new<T: Float>(rng: &mut Rng, b: usize, t: usize, c: usize, vp: usize) -> BackwardCase {
        let mut inputs: Vec<u32> = (0..b * t)
            .map(|_| {
                let r = rng.next_u64();
                // Half the ids from a handful of hot tokens, so rows repeat a lot.
                if r & 1 == 0 {
                    ((r >> 8) % 7.min(vp as u64)) as u32
                } else {
                    ((r >> 8) % vp as u64) as u32
                }
            })
            .collect();
        inputs[0] = (vp - 1) as u32;
        if b * t > 2 {
            inputs[b * t - 1] = 0;
            inputs[b * t / 2] = (vp - 1) as u32;
        }
        let max_t = t + 3;
        BackwardCase {
            b,
            t,
            c,
            vp,
            inputs,
            dout: widen(&round::<T>(&rng.uniform_vec(b * t * c))),
            dwte: rng.uniform_vec(vp * c + TAIL),
            dwpe: rng.uniform_vec(max_t * c + TAIL),
        }
    }

    /// `cpu::embedding::embedding_backward` in f32: the GPU adds in the same order, so the result
    /// is the same bit for bit. Returns full buffers (tails unchanged).
    /// With `balanced`, `cpu::embedding::embedding_backward_balanced`, the order of the balanced
    /// kernel.
    fn reference(&self, balanced: bool) -> (Vec<f32>, Vec<f32>) {
        let (mut dwte, mut dwpe) = (self.dwte.clone(), self.dwpe.clone());
        let n = self.vp * self.c;
        let (b, t, c) = (self.b, self.t, self.c);
        if balanced {
            cpu::embedding::embedding_backward_balanced(&mut dwte[..n], &mut dwpe, &self.dout, &self.inputs, b, t, c);
        } else {
            cpu::embedding::embedding_backward(&mut dwte[..n], &mut dwpe, &self.dout, &self.inputs, b, t, c);
        }
        (dwte, dwpe)
    }

    /// The GPU backward with `dout` in `T` (the `T` the case was built for).
    fn run<T: Float>(&self, gpu: &Gpu, balanced: bool) -> (Vec<f32>, Vec<f32>) {
        let stream = gpu.stream();
        let d_dout = stream.clone_htod(&round::<T>(&self.dout)).unwrap();
        let mut d_dwte = stream.clone_htod(&self.dwte).unwrap();
        let mut d_dwpe = stream.clone_htod(&self.dwpe).unwrap();
        let n = self.vp * self.c;
        let (b, t, c) = (self.b, self.t, self.c);
        {
            let mut dwte = d_dwte.slice_mut(0..n);
            if balanced {
                embedding_backward_balanced(gpu, &mut dwte, &mut d_dwpe, &d_dout, &self.inputs, b, t, c).unwrap();
            } else {
                embedding_backward(gpu, &mut dwte, &mut d_dwpe, &d_dout, &self.inputs, b, t, c).unwrap();
            }
        }
        gpu.synchronize().unwrap();
        (stream.clone_dtoh(&d_dwte).unwrap(), stream.clone_dtoh(&d_dwpe).unwrap())
    }
}

/// (B, T, C, Vp): a single row, odd C with few tokens (heavy repetition), GPT-2 small, and tokens
/// with hundreds of rows (several chunks of the balanced backward each, one chunk ending short).
const BACKWARD_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 1, 1, 3), (1, 1, 768, 50304), (3, 17, 37, 11), (2, 33, 100, 1), (4, 64, 768, 50304), (4, 251, 96, 5)];

/// [`assert_same_bits`] on the first `len` elements (the gradient) and, separately, on the rest
/// (outside the gradient: a difference there was written past it).
fn assert_bits(what: &str, got: &[f32], want: &[f32], len: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_same_bits(what, &got[..len], &want[..len]);
    assert_same_bits(
        &format!("{what} past element {len} (outside the gradient: written past it)"),
        &got[len..],
        &want[len..],
    );
}

/// Every [`BACKWARD_SHAPES`] case with `dout` in `T` against the f32 CPU backward on the same
/// (widened) values: bit for bit, tails included. `label` starts the printed line.
fn check_backward<T: Float>(seed: u64, label: &str, balanced: bool) {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(seed);
    for &(b, t, c, vp) in BACKWARD_SHAPES {
        let case = BackwardCase::new::<T>(&mut rng, b, t, c, vp);
        let (want_dwte, want_dwpe) = case.reference(balanced);
        let (dwte, dwpe) = case.run::<T>(&gpu, balanced);
        let shape = format!("B={b} T={t} C={c} Vp={vp}");
        assert_bits(&format!("dwte ({shape})"), &dwte, &want_dwte, vp * c);
        assert_bits(&format!("dwpe ({shape})"), &dwpe, &want_dwpe, t * c);
        println!("{label} {shape}: bit-identical to the CPU");
    }
}

/// A GPT-2-sized case with `dout` in `T`, run three times: every bit of both gradients (tails
/// included) repeats. `label` starts the printed line.
fn assert_backward_deterministic<T: Float>(seed: u64, label: &str, balanced: bool) {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(seed);
    let case = BackwardCase::new::<T>(&mut rng, 4, 256, 768, 50304);
    let first = case.run::<T>(&gpu, balanced);
    for run in 1..3 {
        let again = case.run::<T>(&gpu, balanced);
        assert_bits(&format!("dwte run {run}"), &again.0, &first.0, again.0.len());
        assert_bits(&format!("dwpe run {run}"), &again.1, &first.1, again.1.len());
    }
    println!("{label}: three runs bit-identical");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_matches_cpu() {
    check_backward::<f32>(0x656d_6262_6163_6b01, "embedding_backward", false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_is_deterministic() {
    assert_backward_deterministic::<f32>(0x656d_6264_6574_0002, "embedding_backward", false);
}

/// bf16 `dout`, f32 gradients. The tolerance is zero, i.e. |gpu - ref| <= 0 + 0 * |ref|: the
/// kernel widens each bf16 value to f32 (exact) and then does the f32 kernel's additions in the
/// same order (the CPU's row order), starting from the same pre-filled f32 gradients. The
/// reference is `cpu::embedding::embedding_backward` in f32 on those widened values, so every f32
/// rounding is the same on both sides and the results are equal bit for bit, the same argument as
/// the f32 test's (which an H200 confirmed). The pre-filled values and the tails (which must stay
/// as they are) check that the op accumulates and stays in bounds.
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_bf16_matches_cpu() {
    check_backward::<bf16>(0x656d_6262_6631_3603, "embedding_backward_bf16 (dout widened)", false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_bf16_is_deterministic() {
    assert_backward_deterministic::<bf16>(0x656d_6264_6266_0004, "embedding_backward_bf16", false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_rejects_bad_tokens() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (b, t, c, vp) = (1usize, 4usize, 8usize, 10usize);
    let stream = gpu.stream();
    let d_dout = stream.clone_htod(&vec![1.0f32; b * t * c]).unwrap();
    let mut d_dwte = stream.alloc_zeros::<f32>(vp * c).unwrap();
    let mut d_dwpe = stream.alloc_zeros::<f32>(t * c).unwrap();
    let err = embedding_backward(&gpu, &mut d_dwte, &mut d_dwpe, &d_dout, &[1, 2, 10, 3], b, t, c)
        .expect_err("token 10 >= Vp must be rejected");
    assert!(err.to_string().contains("not below Vp"), "{err}");
    let err = embedding_backward(&gpu, &mut d_dwte, &mut d_dwpe, &d_dout, &[1, 2, 3], b, t, c)
        .expect_err("too few token ids must be rejected");
    assert!(err.to_string().contains("inputs"), "{err}");
}

/// The balanced backward (heavy tokens cut into chunks, never run on a GPU yet) against
/// `cpu::embedding::embedding_backward_balanced`, its order on the CPU: bit for bit, f32 `dout`,
/// for the reason the unbalanced test gives (every f32 addition is the same on both sides).
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_balanced_matches_cpu() {
    check_backward::<f32>(0x656d_6262_616c_0005, "embedding_backward_balanced", true);
}

/// As above with bf16 `dout` (widened exactly, then the f32 additions).
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_balanced_bf16_matches_cpu() {
    check_backward::<bf16>(0x656d_6262_616c_0006, "embedding_backward_balanced bf16", true);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_backward_balanced_is_deterministic() {
    assert_backward_deterministic::<bf16>(0x656d_6262_616c_0007, "embedding_backward_balanced bf16", true);
}

/// The embedding forward in `T` with the GPU set to `kernels`, output poisoned (tail checked).
#[allow(clippy::too_many_arguments)]
fn run_forward<T: Float>(
    gpu: &Gpu,
    kernels: Kernels,
    inp: &[i32],
    wte: &[T],
    wpe: &[T],
    b: usize,
    t: usize,
    c: usize,
) -> Vec<f32> {
    let stream = gpu.stream();
    let (d_inp, d_wte, d_wpe) =
        (stream.clone_htod(inp).unwrap(), stream.clone_htod(wte).unwrap(), stream.clone_htod(wpe).unwrap());
    let mut d_out = poisoned::<T>(gpu, b * t * c);
    gpu.set_kernels(kernels);
    let r = embedding_forward(gpu, &mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c);
    gpu.set_kernels(Kernels::Scalar);
    r.unwrap();
    gpu.synchronize().unwrap();
    download(gpu, "embedding_forward", &d_out, b * t * c)
}

/// --kernels vector: embedding_forward_vec does the same single f32 add per element (rounded once
/// to bf16 in bf16), so it is bit for bit the CPU's (on the same rounded inputs) and the scalar
/// kernel's, in f32 and bf16, for C of one pack and of several; a C that is not a whole number of
/// packs is refused.
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_vec_matches_cpu_and_scalar_bitwise() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut rng = Rng::new(0x656d_6276_6563_0001);
    for (b, t, c, vp) in [(3usize, 17usize, 64usize, 128usize), (2, 5, 8, 11), (4, 33, 768, 300)] {
        let inp = tokens(&mut rng, b * t, vp);
        let (wte, wpe) = (rng.uniform_vec(vp * c), (0..t * c).map(|_| 0.37 * rng.uniform()).collect::<Vec<f32>>());
        let expected = cpu_embedding_forward(&inp, &wte, &wpe, b, t, c);
        let got = run_forward(&gpu, Kernels::Vector, &inp, &wte, &wpe, b, t, c);
        assert_forward_bits(&got, &expected, t, c);
        assert_same_bits("f32 vector vs scalar", &got, &run_forward(&gpu, Kernels::Scalar, &inp, &wte, &wpe, b, t, c));
        let (wte16, wpe16): (Vec<bf16>, Vec<bf16>) = (round(&wte), round(&wpe));
        let expected16 = widen(&round::<bf16>(&cpu_embedding_forward(&inp, &widen(&wte16), &widen(&wpe16), b, t, c)));
        let got16 = run_forward(&gpu, Kernels::Vector, &inp, &wte16, &wpe16, b, t, c);
        assert_forward_bits(&got16, &expected16, t, c);
        let scalar16 = run_forward(&gpu, Kernels::Scalar, &inp, &wte16, &wpe16, b, t, c);
        assert_same_bits("bf16 vector vs scalar", &got16, &scalar16);
        println!(
            "embedding_forward_vec B={b} T={t} C={c}: f32 and bf16 bit-identical to the CPU and the scalar kernel"
        );
    }
    // C = 12: 3 packs of f32, not a whole number of 8-bf16 packs.
    let (b, t, c) = (1, 2, 12);
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&[0i32, 1]).unwrap();
    let (d_wte, d_wpe) = (poisoned::<bf16>(&gpu, 2 * c), poisoned::<bf16>(&gpu, t * c));
    let mut d_out = poisoned::<bf16>(&gpu, b * t * c);
    gpu.set_kernels(Kernels::Vector);
    let e = embedding_forward(&gpu, &mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c).unwrap_err().to_string();
    assert!(e.contains("C = 12 is not a multiple of 8"), "{e}");
}
