//! CUDA embedding forward vs. an inline CPU reference.

use super::{gpu_or_skip, SplitMix};
use genesis::gpu::device::{cuda_available, Gpu};
use genesis::gpu::kernels;
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

#[test]
fn embedding_forward_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let (b, t, c, vp) = (3usize, 17usize, 64usize, 128usize);
    let mut rng = SplitMix(0x0067_656e_6573_6973);
    let inp: Vec<i32> = (0..b * t).map(|_| (rng.next_u64() % vp as u64) as i32).collect();
    let wte: Vec<f32> = (0..vp * c).map(|_| rng.next_f32()).collect();
    let wpe: Vec<f32> = (0..t * c).map(|_| rng.next_f32()).collect();
    let expected = cpu_embedding_forward(&inp, &wte, &wpe, b, t, c);

    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_wte = stream.clone_htod(&wte).unwrap();
    let d_wpe = stream.clone_htod(&wpe).unwrap();
    let mut d_out = stream.alloc_zeros::<f32>(b * t * c).unwrap();
    gpu.embedding_forward(&mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c).unwrap();
    gpu.synchronize().unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();

    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "mismatch at flat index {i} (b={}, t={}, c={}): gpu {g} vs cpu {e}",
            i / (t * c),
            (i / c) % t,
            i % c
        );
    }
    println!("embedding_forward on {}: {} values bit-identical", gpu.describe(), got.len());
}

/// bf16 storage: the kernel loads both values as f32, adds them in f32 and rounds the sum to bf16
/// once (round-to-nearest-even, as `bf16::from_f32`). The CPU does the same f32 add on the same
/// bf16 inputs and the same rounding, so the comparison is exact (bit for bit), not a tolerance.
#[test]
fn embedding_forward_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    const TAIL: usize = 5;
    let (b, t, c, vp) = (3usize, 17usize, 64usize, 128usize);
    let mut rng = SplitMix(0x6266_3136_656d_6264);
    let inp: Vec<i32> = (0..b * t).map(|_| (rng.next_u64() % vp as u64) as i32).collect();
    // Different scales so that the sums need rounding (and some cancel).
    let wte: Vec<bf16> = (0..vp * c).map(|_| bf16::from_f32(rng.next_f32())).collect();
    let wpe: Vec<bf16> = (0..t * c).map(|_| bf16::from_f32(0.37 * rng.next_f32())).collect();
    let wte_f32: Vec<f32> = wte.iter().map(|x| x.to_f32()).collect();
    let wpe_f32: Vec<f32> = wpe.iter().map(|x| x.to_f32()).collect();
    let expected: Vec<bf16> =
        cpu_embedding_forward(&inp, &wte_f32, &wpe_f32, b, t, c).into_iter().map(bf16::from_f32).collect();

    let n = b * t * c;
    let stream = gpu.stream();
    let d_inp = stream.clone_htod(&inp).unwrap();
    let d_wte = stream.clone_htod(&wte).unwrap();
    let d_wpe = stream.clone_htod(&wpe).unwrap();
    let mut d_out = stream.clone_htod(&vec![bf16::NAN; n + TAIL]).unwrap();
    gpu.embedding_forward(&mut d_out, &d_inp, &d_wte, &d_wpe, b, t, c).unwrap();
    gpu.synchronize().unwrap();
    let got = stream.clone_dtoh(&d_out).unwrap();

    assert!(got[n..].iter().all(|x| x.is_nan()), "written past the end");
    for (i, (g, e)) in got[..n].iter().zip(&expected).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "mismatch at flat index {i} (b={}, t={}, c={}): gpu {g} vs cpu {e}",
            i / (t * c),
            (i / c) % t,
            i % c
        );
    }
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
