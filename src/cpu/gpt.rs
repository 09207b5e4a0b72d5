//! GPT-2 on the CPU: the ops of this module's siblings chained over one flat parameter buffer.
//!
//! `forward` runs the blocks up to the final LayerNorm and keeps every activation the backward needs;
//! `loss` (evaluation) or `backward` (training: loss and gradients in one pass) finish with the fused
//! classifier.

use super::attention::{attention_backward, attention_forward};
use super::classifier::{classifier_backward, classifier_forward, logits_scratch_len};
use super::embedding::{embedding_backward, embedding_forward};
use super::gelu::{gelu_backward, gelu_forward};
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::residual::residual_forward;
use super::Real;
use crate::model::{ModelConfig, Param, ParamLayout};
use crate::rng::Rng;

/// GPT-2 initialisation into a flat buffer: weights N(0, 0.02), the two residual projections
/// (attprojw, fcprojw) N(0, 0.02/sqrt(2L)), LayerNorm scales 1, biases 0, padded vocab rows 0.
/// Draws happen tensor by tensor in layout order, so a seed fixes the weights.
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut params = vec![0.0f32; layout.total];
    let mut rng = Rng::new(seed);
    let proj_std = 0.02 / (2.0 * cfg.num_layers as f64).sqrt();
    for spec in &layout.tensors {
        let buf = &mut params[spec.range()];
        match spec.param {
            Param::Ln1w | Param::Ln2w | Param::Lnfw => buf.fill(1.0),
            Param::Wte => {
                for x in &mut buf[..cfg.vocab_size * cfg.channels] {
                    *x = (rng.normal() * 0.02) as f32;
                }
            }
            Param::Wpe | Param::Qkvw | Param::Fcw => buf.iter_mut().for_each(|x| *x = (rng.normal() * 0.02) as f32),
            Param::AttProjw | Param::FcProjw => buf.iter_mut().for_each(|x| *x = (rng.normal() * proj_std) as f32),
            _ => {} // biases stay zero
        }
    }
    params
}

/// Everything the forward keeps for the backward, for a (B,T) batch. Per-layer tensors lead with L.
pub struct Activations<F> {
    pub b: usize,
    pub t: usize,
    pub encoded: Vec<F>,   // (B,T,C)
    pub ln1: Vec<F>,       // (L,B,T,C)
    pub ln1_mean: Vec<F>,  // (L,B,T)
    pub ln1_rstd: Vec<F>,  // (L,B,T)
    pub qkv: Vec<F>,       // (L,B,T,3C)
    pub atty: Vec<F>,      // (L,B,T,C)
    pub att: Vec<F>,       // (L,B,NH,T,T)
    pub attproj: Vec<F>,   // (L,B,T,C)
    pub residual2: Vec<F>, // (L,B,T,C)
    pub ln2: Vec<F>,       // (L,B,T,C)
    pub ln2_mean: Vec<F>,  // (L,B,T)
    pub ln2_rstd: Vec<F>,  // (L,B,T)
    pub fch: Vec<F>,       // (L,B,T,4C)
    pub fch_gelu: Vec<F>,  // (L,B,T,4C)
    pub fcproj: Vec<F>,    // (L,B,T,C)
    pub residual3: Vec<F>, // (L,B,T,C)
    pub lnf: Vec<F>,       // (B,T,C)
    pub lnf_mean: Vec<F>,  // (B,T)
    pub lnf_rstd: Vec<F>,  // (B,T)
    pub losses: Vec<F>,    // (B,T)
    pub logits: Vec<F>,    // scratch: one chunk of (rows,V) logits for the classifier
}

impl<F: Real> Activations<F> {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Self {
        let (l, c, nh) = (cfg.num_layers, cfg.channels, cfg.num_heads);
        let z = |n: usize| vec![F::ZERO; n];
        let bt = b * t;
        Activations {
            b,
            t,
            encoded: z(bt * c),
            ln1: z(l * bt * c),
            ln1_mean: z(l * bt),
            ln1_rstd: z(l * bt),
            qkv: z(l * bt * 3 * c),
            atty: z(l * bt * c),
            att: z(l * b * nh * t * t),
            attproj: z(l * bt * c),
            residual2: z(l * bt * c),
            ln2: z(l * bt * c),
            ln2_mean: z(l * bt),
            ln2_rstd: z(l * bt),
            fch: z(l * bt * 4 * c),
            fch_gelu: z(l * bt * 4 * c),
            fcproj: z(l * bt * c),
            residual3: z(l * bt * c),
            lnf: z(bt * c),
            lnf_mean: z(bt),
            lnf_rstd: z(bt),
            losses: z(bt),
            logits: z(logits_scratch_len(bt, cfg.vocab_size)),
        }
    }
}

impl Activations<f32> {
    /// Bytes [`Activations::new`] allocates for (b, t), computed without allocating (in u128, so an
    /// absurd batch gives a huge number rather than an overflow).
    pub fn bytes(cfg: &ModelConfig, b: usize, t: usize) -> u128 {
        let (l, c, nh) = (cfg.num_layers as u128, cfg.channels as u128, cfg.num_heads as u128);
        let (b, t) = (b as u128, t as u128);
        let bt = b * t;
        // encoded, lnf; ln1, atty, attproj, residual2, ln2, fcproj, residual3 (C each), qkv (3C),
        // fch and fch_gelu (4C each); the six per-layer statistics and the final two, losses;
        // att (NH*T*T per row of B); the logits scratch.
        let per_token = 2 * c + l * (7 * c + 3 * c + 8 * c) + l * 4 + 3;
        let elems = bt * per_token + l * b * nh * t * t + logits_scratch_len_u128(bt, cfg.vocab_size as u128);
        elems * 4
    }
}

fn logits_scratch_len_u128(n: u128, v: u128) -> u128 {
    match usize::try_from(n) {
        Ok(n) => logits_scratch_len(n, v as usize) as u128,
        Err(_) => n * v,
    }
}

/// Scratch for the backward: one layer's worth of activation gradients, reused layer by layer.
struct GradScratch<F> {
    dresidual: Vec<F>, // (B,T,C) gradient of the residual stream
    dln: Vec<F>,       // (B,T,C)
    datty: Vec<F>,     // (B,T,C)
    dqkv: Vec<F>,      // (B,T,3C)
    dfch: Vec<F>,      // (B,T,4C)
    dfch_gelu: Vec<F>, // (B,T,4C)
}

fn layer<F>(buf: &[F], l: usize, n: usize) -> &[F] {
    &buf[l * n..(l + 1) * n]
}

fn layer_mut<F>(buf: &mut [F], l: usize, n: usize) -> &mut [F] {
    &mut buf[l * n..(l + 1) * n]
}

fn zero<F: Real>(buf: &mut [F]) {
    buf.fill(F::ZERO);
}

/// Runs the model from tokens to the final LayerNorm output (`acts.lnf`).
// inputs (B,T) -> acts
pub fn forward<F: Real>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[F],
    acts: &mut Activations<F>,
    inputs: &[u32],
) {
    let (b, t) = (acts.b, acts.t);
    let (c, nh, bt) = (cfg.channels, cfg.num_heads, acts.b * acts.t);
    assert!(t <= cfg.max_seq_len, "sequence length {t} exceeds the model's context {}", cfg.max_seq_len);
    assert_eq!(inputs.len(), bt);
    if let Some(&bad) = inputs.iter().find(|&&x| x as usize >= cfg.vocab_size) {
        panic!("token id {bad} is outside the vocabulary ({})", cfg.vocab_size);
    }
    let p = |name: Param, l: usize| layout.layer(params, name, l);
    embedding_forward(&mut acts.encoded, inputs, p(Param::Wte, 0), p(Param::Wpe, 0), b, t, c);
    let a = acts;
    for l in 0..cfg.num_layers {
        let residual: &[F] = if l == 0 { &a.encoded } else { layer(&a.residual3, l - 1, bt * c) };
        let ln1 = layer_mut(&mut a.ln1, l, bt * c);
        let (m1, r1) = (layer_mut(&mut a.ln1_mean, l, bt), layer_mut(&mut a.ln1_rstd, l, bt));
        layernorm_forward(ln1, m1, r1, residual, p(Param::Ln1w, l), p(Param::Ln1b, l), bt, c);
        let qkv = layer_mut(&mut a.qkv, l, bt * 3 * c);
        matmul_forward(qkv, layer(&a.ln1, l, bt * c), p(Param::Qkvw, l), Some(p(Param::Qkvb, l)), bt, c, 3 * c);
        let att = layer_mut(&mut a.att, l, b * nh * t * t);
        attention_forward(layer_mut(&mut a.atty, l, bt * c), att, layer(&a.qkv, l, bt * 3 * c), b, t, c, nh);
        let attproj = layer_mut(&mut a.attproj, l, bt * c);
        matmul_forward(
            attproj,
            layer(&a.atty, l, bt * c),
            p(Param::AttProjw, l),
            Some(p(Param::AttProjb, l)),
            bt,
            c,
            c,
        );
        residual_forward(layer_mut(&mut a.residual2, l, bt * c), residual, layer(&a.attproj, l, bt * c));
        let ln2 = layer_mut(&mut a.ln2, l, bt * c);
        let (m2, r2) = (layer_mut(&mut a.ln2_mean, l, bt), layer_mut(&mut a.ln2_rstd, l, bt));
        layernorm_forward(ln2, m2, r2, layer(&a.residual2, l, bt * c), p(Param::Ln2w, l), p(Param::Ln2b, l), bt, c);
        let fch = layer_mut(&mut a.fch, l, bt * 4 * c);
        matmul_forward(fch, layer(&a.ln2, l, bt * c), p(Param::Fcw, l), Some(p(Param::Fcb, l)), bt, c, 4 * c);
        gelu_forward(layer_mut(&mut a.fch_gelu, l, bt * 4 * c), layer(&a.fch, l, bt * 4 * c));
        let fcproj = layer_mut(&mut a.fcproj, l, bt * c);
        matmul_forward(
            fcproj,
            layer(&a.fch_gelu, l, bt * 4 * c),
            p(Param::FcProjw, l),
            Some(p(Param::FcProjb, l)),
            bt,
            4 * c,
            c,
        );
        residual_forward(
            layer_mut(&mut a.residual3, l, bt * c),
            layer(&a.residual2, l, bt * c),
            layer(&a.fcproj, l, bt * c),
        );
    }
    let last = layer(&a.residual3, cfg.num_layers - 1, bt * c);
    layernorm_forward(&mut a.lnf, &mut a.lnf_mean, &mut a.lnf_rstd, last, p(Param::Lnfw, 0), p(Param::Lnfb, 0), bt, c);
}

/// Mean cross-entropy of the batch after [`forward`]; fills `acts.losses`.
// acts.lnf (B,T,C), targets (B,T) -> mean loss
pub fn loss<F: Real>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[F],
    acts: &mut Activations<F>,
    targets: &[u32],
) -> f64 {
    let bt = acts.b * acts.t;
    let wte = layout.slice(params, Param::Wte);
    classifier_forward(&mut acts.losses, &mut acts.logits, &acts.lnf, wte, targets, bt, cfg.channels, cfg.vocab_size);
    mean(&acts.losses)
}

/// Logits over the real vocabulary for every position after [`forward`] (tests and inspection).
// acts.lnf (B,T,C) -> logits (B,T,V)
pub fn logits<F: Real>(cfg: &ModelConfig, layout: &ParamLayout, params: &[F], acts: &Activations<F>) -> Vec<F> {
    let (bt, c, v) = (acts.b * acts.t, cfg.channels, cfg.vocab_size);
    let mut out = vec![F::ZERO; bt * v];
    matmul_forward(&mut out, &acts.lnf, &layout.slice(params, Param::Wte)[..v * c], None, bt, c, v);
    out
}

fn mean<F: Real>(xs: &[F]) -> f64 {
    xs.iter().map(|x| x.to_f64()).sum::<f64>() / xs.len() as f64
}

/// Backward pass after [`forward`]: computes the losses and accumulates `dloss`-scaled gradients of
/// the summed loss into `grads` (same layout as params). Returns the batch's mean loss.
/// Use `dloss = 1 / (B*T*accumulation_steps)` for the gradient of the mean loss.
// acts, inputs (B,T), targets (B,T) -> grads +=, mean loss
pub fn backward<F: Real>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[F],
    grads: &mut [F],
    acts: &mut Activations<F>,
    inputs: &[u32],
    targets: &[u32],
    dloss: F,
) -> f64 {
    let (b, t) = (acts.b, acts.t);
    let (c, nh, bt, nl) = (cfg.channels, cfg.num_heads, b * t, cfg.num_layers);
    assert_eq!(grads.len(), layout.total);
    let z = |n: usize| vec![F::ZERO; n];
    let mut s = GradScratch {
        dresidual: z(bt * c),
        dln: z(bt * c),
        datty: z(bt * c),
        dqkv: z(bt * 3 * c),
        dfch: z(bt * 4 * c),
        dfch_gelu: z(bt * 4 * c),
    };
    let p = |name: Param, l: usize| layout.layer(params, name, l);

    // Classifier: losses, dlnf (into s.dln) and dwte.
    {
        let dwte = &mut grads[layout.get(Param::Wte).range()];
        let wte = layout.slice(params, Param::Wte);
        classifier_backward(
            &mut s.dln,
            dwte,
            &mut acts.losses,
            &mut acts.logits,
            &acts.lnf,
            wte,
            targets,
            dloss,
            bt,
            c,
            cfg.vocab_size,
        );
    }
    let a = &*acts;
    {
        let (dw, db) = grad_pair(grads, layout, Param::Lnfw, Param::Lnfb, 0);
        let last = layer(&a.residual3, nl - 1, bt * c);
        layernorm_backward(&mut s.dresidual, dw, db, &s.dln, last, p(Param::Lnfw, 0), &a.lnf_mean, &a.lnf_rstd, bt, c);
    }
    for l in (0..nl).rev() {
        let residual: &[F] = if l == 0 { &a.encoded } else { layer(&a.residual3, l - 1, bt * c) };
        // residual3 = residual2 + fcproj: both receive dresidual; it flows on unchanged, so only the
        // fcproj branch needs work. Same for residual2 = residual + attproj below.
        zero(&mut s.dfch_gelu);
        {
            let (dw, db) = grad_pair(grads, layout, Param::FcProjw, Param::FcProjb, l);
            let inp = layer(&a.fch_gelu, l, bt * 4 * c);
            matmul_backward(&mut s.dfch_gelu, dw, Some(db), &s.dresidual, inp, p(Param::FcProjw, l), bt, 4 * c, c);
        }
        zero(&mut s.dfch);
        gelu_backward(&mut s.dfch, layer(&a.fch, l, bt * 4 * c), &s.dfch_gelu);
        zero(&mut s.dln);
        {
            let (dw, db) = grad_pair(grads, layout, Param::Fcw, Param::Fcb, l);
            matmul_backward(
                &mut s.dln,
                dw,
                Some(db),
                &s.dfch,
                layer(&a.ln2, l, bt * c),
                p(Param::Fcw, l),
                bt,
                c,
                4 * c,
            );
        }
        {
            let (dw, db) = grad_pair(grads, layout, Param::Ln2w, Param::Ln2b, l);
            let (mean2, rstd2) = (layer(&a.ln2_mean, l, bt), layer(&a.ln2_rstd, l, bt));
            let inp = layer(&a.residual2, l, bt * c);
            layernorm_backward(&mut s.dresidual, dw, db, &s.dln, inp, p(Param::Ln2w, l), mean2, rstd2, bt, c);
        }
        zero(&mut s.datty);
        {
            let (dw, db) = grad_pair(grads, layout, Param::AttProjw, Param::AttProjb, l);
            let inp = layer(&a.atty, l, bt * c);
            matmul_backward(&mut s.datty, dw, Some(db), &s.dresidual, inp, p(Param::AttProjw, l), bt, c, c);
        }
        zero(&mut s.dqkv);
        let att = layer(&a.att, l, b * nh * t * t);
        attention_backward(&mut s.dqkv, &s.datty, layer(&a.qkv, l, bt * 3 * c), att, b, t, c, nh);
        zero(&mut s.dln);
        {
            let (dw, db) = grad_pair(grads, layout, Param::Qkvw, Param::Qkvb, l);
            matmul_backward(
                &mut s.dln,
                dw,
                Some(db),
                &s.dqkv,
                layer(&a.ln1, l, bt * c),
                p(Param::Qkvw, l),
                bt,
                c,
                3 * c,
            );
        }
        {
            let (dw, db) = grad_pair(grads, layout, Param::Ln1w, Param::Ln1b, l);
            let (mean1, rstd1) = (layer(&a.ln1_mean, l, bt), layer(&a.ln1_rstd, l, bt));
            layernorm_backward(&mut s.dresidual, dw, db, &s.dln, residual, p(Param::Ln1w, l), mean1, rstd1, bt, c);
        }
    }
    let (dwte, rest) = grads.split_at_mut(layout.get(Param::Wpe).offset);
    let dwpe = &mut rest[..layout.get(Param::Wpe).len];
    embedding_backward(dwte, dwpe, &s.dresidual, inputs, b, t, c);
    mean(&a.losses)
}

/// Layer `l`'s gradient slices of a (weight, bias) pair, borrowed together.
fn grad_pair<'a, F>(
    grads: &'a mut [F],
    layout: &ParamLayout,
    w: Param,
    bias: Param,
    l: usize,
) -> (&'a mut [F], &'a mut [F]) {
    let (rw, rb) = (layout.get(w).layer_range(l), layout.get(bias).layer_range(l));
    assert!(rw.end <= rb.start, "{} must precede {} in the layout", w.name(), bias.name());
    let (lo, hi) = grads.split_at_mut(rb.start);
    (&mut lo[rw], &mut hi[..rb.len()])
}
