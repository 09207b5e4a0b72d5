//! KV-cache decoding on the GPU against the CPU decoder: the logits after every token.

use super::common::{max_abs, max_abs_diff};
use super::gpu_or_skip;
use genesis::cpu::gpt;
use genesis::cpu::sample::Decoder;
use genesis::gpu::gpt::GpuModel;
use genesis::gpu::sample::GpuDecoder;
use genesis::model::ModelConfig;
use genesis::rng::Rng;

fn check(cfg: &ModelConfig, steps: usize) {
    let params = gpt::init_params(cfg, 21);
    let model = GpuModel::<f32>::new(cfg, &params, 0, false).expect("GpuModel::new");
    let mut gpu = GpuDecoder::new(&model).unwrap();
    let mut cpu = Decoder::new(cfg, &params);
    let mut rng = Rng::new(9);
    for pos in 0..steps {
        let token = rng.below(cfg.vocab_size as u64) as u32;
        let want = cpu.step(token).to_vec();
        let got = gpu.step(token).unwrap();
        assert_eq!(got.len(), want.len());
        let (max_ref, err) = (max_abs(&want), max_abs_diff(got, &want));
        assert!(
            err <= 1e-4 * max_ref.max(1.0),
            "{cfg}: position {pos}: logits differ by {err} (max |logit| {max_ref})"
        );
    }
    assert_eq!(gpu.position(), steps);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_decoder_matches_the_cpu_decoder() {
    if gpu_or_skip().is_none() {
        return;
    }
    let tiny = ModelConfig::preset("tiny").unwrap();
    check(&tiny, tiny.max_seq_len);
    let mut wide = ModelConfig::preset("gpt2-124m").unwrap();
    wide.num_layers = 2;
    check(&wide, 40);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_gpu_decoder_tracks_the_bf16_forward() {
    if gpu_or_skip().is_none() {
        return;
    }
    // The decoder and the batched forward use the same bf16 kernels, so after every token the
    // decoder's logits equal the full forward's last row up to bf16 rounding of the (differently
    // batched) matmuls.
    let cfg = ModelConfig::preset("tiny").unwrap();
    let params = gpt::init_params(&cfg, 21);
    let mut model = GpuModel::<half::bf16>::new(&cfg, &params, 0, false).unwrap();
    let mut rng = Rng::new(9);
    let tokens: Vec<u32> = (0..24).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    model.forward(&tokens, None, 1, tokens.len()).unwrap();
    let full = model.logits().unwrap();
    let v = cfg.vocab_size;
    let mut dec = GpuDecoder::new(&model).unwrap();
    for (pos, &tok) in tokens.iter().enumerate() {
        let got = dec.step(tok).unwrap();
        let want = &full[pos * v..(pos + 1) * v];
        let (max_ref, err) = (max_abs(want), max_abs_diff(got, want));
        assert!(err <= 2e-2 * max_ref.max(1.0), "position {pos}: decoder logits differ by {err} (max {max_ref})");
    }
}
