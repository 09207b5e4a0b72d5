//! The whole model's backward against finite differences, in f64, on a micro config.
use super::*;
use genesis::cpu::gpt::{backward, forward, init_params, loss, Activations};
use genesis::model::{ModelConfig, Param, ParamLayout};

#[test]
fn gpt_backward_matches_finite_differences() {
    let cfg =
        ModelConfig { max_seq_len: 6, vocab_size: 19, padded_vocab_size: 24, num_layers: 2, num_heads: 2, channels: 8 };
    let layout = ParamLayout::new(&cfg);
    // Larger-than-GPT-2 init so every path carries signal; biases and LN params randomised too.
    let mut rng = Rng::new(13);
    let mut params: Vec<f64> = init_params(&cfg, 5).iter().map(|&p| p as f64 * 10.0).collect();
    for p in [Param::Qkvb, Param::AttProjb, Param::Fcb, Param::FcProjb, Param::Ln1b, Param::Ln2b, Param::Lnfb] {
        for x in &mut params[layout.get(p).range()] {
            *x = rng.normal() * 0.1;
        }
    }
    for p in [Param::Ln1w, Param::Ln2w, Param::Lnfw] {
        for x in &mut params[layout.get(p).range()] {
            *x = 1.0 + rng.normal() * 0.1;
        }
    }
    let (b, t) = (2, 5);
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(19) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(19) as u32).collect();
    let mut acts = Activations::<f64>::new(&cfg, b, t);
    let dloss = 1.0 / (b * t) as f64;
    forward(&cfg, &layout, &params, &mut acts, &inputs);
    let mut grads = vec![0.0; layout.total];
    let l_back = backward(&cfg, &layout, &params, &mut grads, &mut acts, &inputs, &targets, dloss);
    let objective = |p: &[f64]| {
        let mut a = Activations::<f64>::new(&cfg, b, t);
        forward(&cfg, &layout, p, &mut a, &inputs);
        loss(&cfg, &layout, p, &mut a, &targets)
    };
    assert!((objective(&params) - l_back).abs() < 1e-12);
    for spec in &layout.tensors {
        let r = spec.range();
        let name = spec.param.name();
        // Padded vocabulary rows and unused positions (t..max_seq_len) get no gradient by design.
        let r = match spec.param {
            Param::Wte => r.start..r.start + cfg.vocab_size * cfg.channels,
            Param::Wpe => r.start..r.start + t * cfg.channels,
            _ => r,
        };
        let base = params.clone();
        check_grad("gpt", name, &params[r.clone()], &grads[r.clone()], |x| {
            let mut p = base.clone();
            p[r.clone()].copy_from_slice(x);
            objective(&p)
        });
    }
}
