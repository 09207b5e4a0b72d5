//! Fast CPU decoding with a KV cache: one token at a time, each step a chain of matrix-vector
//! products that stream the weights once. Decoding is memory-bound, so the matvec is written to keep
//! both cores streaming (AVX2/FMA when the CPU has it, picked at run time).

use super::gelu::gelu_forward;
use super::layernorm::layernorm_forward;
use crate::model::{ModelConfig, Param, ParamLayout};
use crate::rng::Rng;
use rayon::prelude::*;

/// Token-by-token decoding with a KV cache: the CPU's [`Decoder`] and its GPU twin
/// (`gpu::sample::GpuDecoder`), so `genesis sample` drives either the same way.
pub trait TokenDecoder {
    /// Feeds `token` at the next position and returns the logits (V) for the position after it.
    fn step(&mut self, token: u32) -> anyhow::Result<&[f32]>;
}

impl TokenDecoder for Decoder<'_> {
    fn step(&mut self, token: u32) -> anyhow::Result<&[f32]> {
        Ok(Decoder::step(self, token))
    }
}

/// How to pick the next token from the logits.
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p (1.0 = no limit).
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

/// A model plus its KV cache, decoding one position at a time.
pub struct Decoder<'a> {
    cfg: ModelConfig,
    layout: ParamLayout,
    params: &'a [f32],
    kcache: Vec<f32>, // (L, maxT, C)
    vcache: Vec<f32>, // (L, maxT, C)
    pos: usize,
    x: Vec<f32>,      // (C) residual stream
    ln: Vec<f32>,     // (C)
    qkv: Vec<f32>,    // (3C)
    atty: Vec<f32>,   // (C)
    proj: Vec<f32>,   // (C)
    fch: Vec<f32>,    // (4C)
    fch_g: Vec<f32>,  // (4C)
    scores: Vec<f32>, // (maxT)
    logits: Vec<f32>, // (V)
}

impl<'a> Decoder<'a> {
    pub fn new(cfg: &ModelConfig, params: &'a [f32]) -> Self {
        let layout = ParamLayout::new(cfg);
        assert_eq!(params.len(), layout.total, "parameter buffer does not match the model config");
        let (l, t, c) = (cfg.num_layers, cfg.max_seq_len, cfg.channels);
        Decoder {
            cfg: *cfg,
            layout,
            params,
            kcache: vec![0.0; l * t * c],
            vcache: vec![0.0; l * t * c],
            pos: 0,
            x: vec![0.0; c],
            ln: vec![0.0; c],
            qkv: vec![0.0; 3 * c],
            atty: vec![0.0; c],
            proj: vec![0.0; c],
            fch: vec![0.0; 4 * c],
            fch_g: vec![0.0; 4 * c],
            scores: vec![0.0; t],
            logits: vec![0.0; cfg.vocab_size],
        }
    }

    /// Positions consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forget the cache and start a new sequence.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feed one token at the next position; returns the logits (V) for the token after it.
    pub fn step(&mut self, token: u32) -> &[f32] {
        let cfg = self.cfg;
        let (c, nh, tmax) = (cfg.channels, cfg.num_heads, cfg.max_seq_len);
        let hs = c / nh;
        assert!(self.pos < tmax, "context of {tmax} tokens is full");
        assert!((token as usize) < cfg.vocab_size, "token {token} outside the vocabulary");
        let (layout, params, pos) = (&self.layout, self.params, self.pos);
        let p = |name: Param, l: usize| layout.layer(params, name, l);
        let (wte, wpe) = (p(Param::Wte, 0), p(Param::Wpe, 0));
        for i in 0..c {
            self.x[i] = wte[token as usize * c + i] + wpe[pos * c + i];
        }
        let (mut mean, mut rstd) = ([0.0f32], [0.0f32]);
        for l in 0..cfg.num_layers {
            layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, p(Param::Ln1w, l), p(Param::Ln1b, l), 1, c);
            matvec(&mut self.qkv, p(Param::Qkvw, l), Some(p(Param::Qkvb, l)), &self.ln);
            let cache = l * tmax * c;
            self.kcache[cache + pos * c..][..c].copy_from_slice(&self.qkv[c..2 * c]);
            self.vcache[cache + pos * c..][..c].copy_from_slice(&self.qkv[2 * c..]);
            let scale = 1.0 / (hs as f32).sqrt();
            for h in 0..nh {
                let q = &self.qkv[h * hs..(h + 1) * hs];
                let scores = &mut self.scores[..=pos];
                let mut maxv = f32::NEG_INFINITY;
                for (t2, s) in scores.iter_mut().enumerate() {
                    let k = &self.kcache[cache + t2 * c + h * hs..][..hs];
                    *s = dot(q, k) * scale;
                    maxv = maxv.max(*s);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - maxv).exp();
                    sum += *s;
                }
                let y = &mut self.atty[h * hs..(h + 1) * hs];
                y.fill(0.0);
                for (t2, s) in scores.iter().enumerate() {
                    let v = &self.vcache[cache + t2 * c + h * hs..][..hs];
                    let w = s / sum;
                    for i in 0..hs {
                        y[i] += w * v[i];
                    }
                }
            }
            matvec(&mut self.proj, p(Param::AttProjw, l), Some(p(Param::AttProjb, l)), &self.atty);
            add_in_place(&mut self.x, &self.proj);
            layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, p(Param::Ln2w, l), p(Param::Ln2b, l), 1, c);
            matvec(&mut self.fch, p(Param::Fcw, l), Some(p(Param::Fcb, l)), &self.ln);
            gelu_forward(&mut self.fch_g, &self.fch);
            matvec(&mut self.proj, p(Param::FcProjw, l), Some(p(Param::FcProjb, l)), &self.fch_g);
            add_in_place(&mut self.x, &self.proj);
        }
        layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, p(Param::Lnfw, 0), p(Param::Lnfb, 0), 1, c);
        matvec(&mut self.logits, &wte[..cfg.vocab_size * c], None, &self.ln);
        self.pos += 1;
        &self.logits
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// out (O) = w (O,I) @ x (I) + bias (O); rows of w split across threads.
pub fn matvec(out: &mut [f32], w: &[f32], bias: Option<&[f32]>, x: &[f32]) {
    let n_in = x.len();
    assert_eq!(w.len(), out.len() * n_in);
    const ROWS: usize = 64;
    out.par_chunks_mut(ROWS).enumerate().for_each(|(chunk, o)| {
        let base = chunk * ROWS;
        for (j, oj) in o.iter_mut().enumerate() {
            let row = &w[(base + j) * n_in..(base + j + 1) * n_in];
            *oj = dot(row, x) + bias.map_or(0.0, |b| b[base + j]);
        }
    });
}

/// Dot product, using AVX2+FMA when the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * j));
            let y = _mm256_loadu_ps(pb.add(i + 8 * j));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    total
}

impl SamplingParams {
    /// The options in their ranges, each error naming the option, its value and the range.
    pub fn check(&self) -> Result<(), String> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(format!(
                "--temperature {t}: expected a finite number from 0 up (0 = always the most likely token)"
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("--top-p {p}: expected a probability above 0 and at most 1 (1 = no nucleus cut)"));
        }
        Ok(())
    }
}

/// Pick the next token from `logits` (V) as `params` says.
pub fn sample_token(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let inv_t = 1.0 / params.temperature as f64;
    let maxv = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(f64, u32)> =
        logits.iter().enumerate().map(|(i, &x)| (((x as f64 - maxv) * inv_t).exp(), i as u32)).collect();
    // Most likely first; ties broken by token id so the order (and the sample) is deterministic.
    probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if params.top_k > 0 {
        probs.truncate(params.top_k.max(1));
    }
    let total: f64 = probs.iter().map(|p| p.0).sum();
    if params.top_p < 1.0 {
        let (mut cum, mut keep) = (0.0, 0);
        for p in &probs {
            cum += p.0 / total;
            keep += 1;
            if cum >= params.top_p as f64 {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|p| p.0).sum();
    let mut r = rng.next_f64() * total;
    for &(p, tok) in &probs {
        if r < p {
            return tok;
        }
        r -= p;
    }
    probs.last().unwrap().1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_portable_on_odd_lengths() {
        let a: Vec<f32> = (0..103).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..103).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - exact).abs() < 1e-4);
        assert!((dot_portable(&a, &b) as f64 - exact).abs() < 1e-4);
    }

    #[test]
    fn sampling_respects_greedy_top_k_and_top_p() {
        let logits = [1.0, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(0);
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample_token(&logits, &greedy, &mut rng), 1);
        let top1 = SamplingParams { top_k: 1, ..Default::default() };
        assert!((0..50).all(|_| sample_token(&logits, &top1, &mut rng) == 1));
        let top2 = SamplingParams { top_k: 2, ..Default::default() };
        let seen: std::collections::BTreeSet<u32> = (0..200).map(|_| sample_token(&logits, &top2, &mut rng)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        // p(1) = 0.66 of the mass: top_p 0.5 keeps only token 1.
        let nucleus = SamplingParams { top_p: 0.5, ..Default::default() };
        assert!((0..50).all(|_| sample_token(&logits, &nucleus, &mut rng) == 1));
    }

    #[test]
    fn temperature_divides_the_logits() {
        // Logits (0, ln 4): p(token 1) = 4^(1/T) / (1 + 4^(1/T)), so 4/5 at T = 1, 2/3 at T = 2 and
        // 16/17 at T = 0.5 (scaling by T instead would swap the last two). 20000 seeded draws put
        // the frequency within 0.01 (3 standard deviations at 2/3; the seed makes it exact anyway).
        let logits = [0.0f32, 4f32.ln()];
        for (t, want) in [(1.0f32, 0.8), (2.0, 2.0 / 3.0), (0.5, 16.0 / 17.0)] {
            let params = SamplingParams { temperature: t, ..Default::default() };
            let mut rng = Rng::new(21);
            let n = 20_000;
            let ones = (0..n).filter(|_| sample_token(&logits, &params, &mut rng) == 1).count();
            let freq = ones as f64 / n as f64;
            assert!((freq - want).abs() < 0.01, "T = {t}: token 1 drawn {freq}, expected {want}");
        }
    }

    /// The tokens `params` ever picks from `logits` over many draws.
    fn support(logits: &[f32], params: SamplingParams) -> Vec<u32> {
        let mut rng = Rng::new(11);
        let seen: std::collections::BTreeSet<u32> =
            (0..2000).map(|_| sample_token(logits, &params, &mut rng)).collect();
        seen.into_iter().collect()
    }

    #[test]
    fn the_nucleus_is_the_smallest_set_reaching_top_p() {
        // Probabilities 0.657, 0.242, 0.089, 0.012 (tokens 1, 2, 0, 3): 0.8 needs tokens 1 and 2.
        let nucleus = SamplingParams { top_p: 0.8, ..Default::default() };
        assert_eq!(support(&[1.0, 3.0, 2.0, -1.0], nucleus), vec![1, 2]);
        // Four equal tokens of exactly 0.25: the mass reaches 0.5 exactly at the second (ties go to
        // the lower id), so tokens 0 and 1 are the nucleus, 2 and 3 never drawn.
        let half = SamplingParams { top_p: 0.5, ..Default::default() };
        assert_eq!(support(&[0.0; 4], half), vec![0, 1]);
        // 1.0 is no cut at all.
        assert_eq!(support(&[0.0; 4], SamplingParams::default()), vec![0, 1, 2, 3]);
    }

    #[test]
    fn sampling_options_out_of_range_are_refused() {
        let ok = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 };
        assert!(ok.check().is_ok());
        for (t, p, needle) in [
            (f32::NAN, 0.9, "--temperature NaN"),
            (-1.0, 0.9, "--temperature -1"),
            (f32::INFINITY, 0.9, "--temperature inf"),
            (0.8, 2.0, "--top-p 2"),
            (0.8, f32::NAN, "--top-p NaN"),
            (0.8, 0.0, "--top-p 0"),
        ] {
            let e = SamplingParams { temperature: t, top_k: 0, top_p: p }.check().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
