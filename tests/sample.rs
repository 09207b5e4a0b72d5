//! The CPU decoder with bf16 weights against the f32 decoder on the same weights (rounded through
//! bf16 and widened back): the products are then identical and only the order of the f32 sums
//! differs, so the logits agree to about 1e-7 and greedy decoding picks the same tokens.

use genesis::cpu::gpt;
use genesis::cpu::sample::{convert_params, sample_token, Decoder, SamplingParams};
use genesis::model::{ModelConfig, EOT_TOKEN};
use half::bf16;

/// "<|endoftext|>The quick brown fox jumps" in GPT-2 tokens.
const PROMPT: [u32; 6] = [EOT_TOKEN, 464, 2068, 7586, 21831, 18045];
const STEPS: usize = 20;

/// max |a - b| / max |b|.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    diff / b.iter().map(|y| y.abs()).fold(0.0, f32::max)
}

/// Decodes the prompt and `STEPS` greedy tokens with bf16 weights and with f32 weights holding the
/// same values; every step's logits within 1e-5 relative, and the same tokens.
fn bf16_decoder_matches_f32(cfg: &ModelConfig, seed: u64) {
    let params = gpt::init_params(cfg, seed);
    let narrow: Vec<bf16> = convert_params(&params);
    let rounded: Vec<f32> = narrow.iter().map(|w| w.to_f32()).collect();
    assert!(rounded != params, "rounding through bf16 should change some weights");
    let (mut f32_dec, mut bf16_dec) = (Decoder::new(cfg, &rounded), Decoder::new(cfg, &narrow));
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    let mut rng = genesis::rng::Rng::new(0);
    let (mut f32_tokens, mut bf16_tokens) = (PROMPT.to_vec(), PROMPT.to_vec());
    let mut worst = 0.0f32;
    for step in 0..PROMPT.len() + STEPS {
        let want = f32_dec.step(f32_tokens[step]);
        let got = bf16_dec.step(bf16_tokens[step]);
        assert!(got.iter().chain(want).all(|x| x.is_finite()), "step {step}: logits not finite");
        let rel = relative_diff(got, want);
        assert!(rel <= 1e-5, "step {step}: bf16 logits differ from f32 by {rel:e} of the largest logit");
        worst = worst.max(rel);
        if step + 1 >= PROMPT.len() {
            f32_tokens.push(sample_token(want, &greedy, &mut rng));
            bf16_tokens.push(sample_token(got, &greedy, &mut rng));
        }
    }
    assert_eq!(bf16_tokens, f32_tokens, "greedy tokens from bf16 weights differ from f32");
    eprintln!(
        "{} layers x {} channels: worst relative logit difference {worst:e}; tokens {:?}",
        cfg.num_layers,
        cfg.channels,
        &f32_tokens[PROMPT.len()..]
    );
}

#[test]
fn bf16_decoder_matches_f32_on_tiny() {
    bf16_decoder_matches_f32(&ModelConfig::preset("tiny").unwrap(), 5);
}

/// 280 channels: 4x64 + 16 + 8, so each SIMD path runs its main loop, its single-vector loop and
/// its scalar tail in the C-long rows (and 4C = 17x64 + 32 in the MLP projection).
#[test]
fn bf16_decoder_matches_f32_on_a_wider_model() {
    let cfg = ModelConfig { num_layers: 2, channels: 280, num_heads: 4, ..ModelConfig::preset("tiny").unwrap() };
    bf16_decoder_matches_f32(&cfg, 6);
}
