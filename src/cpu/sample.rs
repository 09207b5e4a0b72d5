//! Fast CPU decoding with a KV cache: one token at a time, each step a chain of matrix-vector
//! products that stream the weights once. Decoding is memory-bound, so the weights can be held in
//! bf16 (half the bytes per token, widened to f32 inside the dot product) and the matvec is written
//! to keep both cores streaming (AVX-512F or AVX2/FMA when the CPU has them, picked at run time).

use super::gelu::gelu_forward;
use super::layernorm::layernorm_forward;
use crate::model::{ModelConfig, Param, ParamLayout, TensorSpec};
use crate::rng::Rng;
use half::bf16;
use rayon::prelude::*;

/// Token-by-token decoding with a KV cache: the CPU's [`Decoder`] and its GPU twin
/// (`gpu::sample::GpuDecoder`), so `genesis sample` drives either the same way.
pub trait TokenDecoder {
    /// Feeds `token` at the next position and returns the logits (V) for the position after it.
    fn step(&mut self, token: u32) -> anyhow::Result<&[f32]>;
}

impl<W: Weight> TokenDecoder for Decoder<'_, W> {
    fn step(&mut self, token: u32) -> anyhow::Result<&[f32]> {
        Ok(Decoder::step(self, token))
    }
}

/// The element type a [`Decoder`] keeps its weights in: f32, or bf16 (half the memory and half the
/// bytes streamed per token). Activations, the KV cache and every sum stay f32; bf16 weights are
/// widened exactly to f32 before they are multiplied.
pub trait Weight: Copy + Send + Sync + 'static {
    /// Bytes per weight.
    const BYTES: usize;
    /// Rounds to nearest (ties to even) where `Self` is narrower than f32.
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Σ w[i] x[i] in f32, through the widest SIMD path the CPU has.
    fn dot(w: &[Self], x: &[f32]) -> f32;
}

impl Weight for f32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        dot(w, x)
    }
}

impl Weight for bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen(self)
    }
    #[inline(always)]
    fn dot(w: &[bf16], x: &[f32]) -> f32 {
        dot_bf16(w, x)
    }
}

/// What `--weights` chooses: the element type the CPU decoder holds its weights in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    F32,
    Bf16,
}

impl std::str::FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(WeightType::F32),
            "bf16" => Ok(WeightType::Bf16),
            _ => Err("expected f32 or bf16".into()),
        }
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightType::F32 => "f32",
            WeightType::Bf16 => "bf16",
        })
    }
}

impl WeightType {
    /// Bytes per weight.
    pub fn bytes(self) -> usize {
        match self {
            WeightType::F32 => f32::BYTES,
            WeightType::Bf16 => bf16::BYTES,
        }
    }
}

/// `params` rounded to nearest (ties to even) in the decoder's weight type, on all threads.
pub fn convert_params<W: Weight>(params: &[f32]) -> Vec<W> {
    params.par_iter().map(|&x| W::from_f32(x)).collect()
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

/// The tensors a decoding step reads whole rather than streams: embeddings and weight matrices
/// are read in `W`; LayerNorm weights and biases are kept widened to f32 (about 0.1% of the model).
fn streamed(p: Param) -> bool {
    matches!(p, Param::Wte | Param::Wpe | Param::Qkvw | Param::AttProjw | Param::Fcw | Param::FcProjw)
}

/// A model plus its KV cache, decoding one position at a time, its weights held in `W` (f32 or bf16).
pub struct Decoder<'a, W: Weight = f32> {
    cfg: ModelConfig,
    layout: ParamLayout,
    params: &'a [W],
    /// The LayerNorm weights and biases widened to f32; `small_layout` says where each lies.
    small: Vec<f32>,
    small_layout: Vec<TensorSpec>,
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

impl<'a, W: Weight> Decoder<'a, W> {
    pub fn new(cfg: &ModelConfig, params: &'a [W]) -> Self {
        let layout = ParamLayout::new(cfg);
        assert_eq!(params.len(), layout.total, "parameter buffer does not match the model config");
        let (l, t, c) = (cfg.num_layers, cfg.max_seq_len, cfg.channels);
        let mut small = Vec::new();
        let small_layout = layout
            .tensors
            .iter()
            .map(|spec| {
                let mut s = spec.clone();
                s.offset = small.len();
                if streamed(spec.param) {
                    s.len = 0;
                } else {
                    small.extend(params[spec.range()].iter().map(|w| w.to_f32()));
                }
                s
            })
            .collect();
        Decoder {
            cfg: *cfg,
            layout,
            params,
            small,
            small_layout,
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
        let (small, small_layout) = (&self.small, &self.small_layout);
        // A streamed tensor in W, and a small one in f32.
        let p = |name: Param, l: usize| layout.layer(params, name, l);
        let s = |name: Param, l: usize| &small[small_layout[name as usize].layer_range(l)];
        let (wte, wpe) = (p(Param::Wte, 0), p(Param::Wpe, 0));
        let (wte_row, wpe_row) = (&wte[token as usize * c..][..c], &wpe[pos * c..][..c]);
        for i in 0..c {
            self.x[i] = wte_row[i].to_f32() + wpe_row[i].to_f32();
        }
        let (mut mean, mut rstd) = ([0.0f32], [0.0f32]);
        for l in 0..cfg.num_layers {
            layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, s(Param::Ln1w, l), s(Param::Ln1b, l), 1, c);
            matvec(&mut self.qkv, p(Param::Qkvw, l), Some(s(Param::Qkvb, l)), &self.ln);
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
            matvec(&mut self.proj, p(Param::AttProjw, l), Some(s(Param::AttProjb, l)), &self.atty);
            add_in_place(&mut self.x, &self.proj);
            layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, s(Param::Ln2w, l), s(Param::Ln2b, l), 1, c);
            matvec(&mut self.fch, p(Param::Fcw, l), Some(s(Param::Fcb, l)), &self.ln);
            gelu_forward(&mut self.fch_g, &self.fch);
            matvec(&mut self.proj, p(Param::FcProjw, l), Some(s(Param::FcProjb, l)), &self.fch_g);
            add_in_place(&mut self.x, &self.proj);
        }
        layernorm_forward(&mut self.ln, &mut mean, &mut rstd, &self.x, s(Param::Lnfw, 0), s(Param::Lnfb, 0), 1, c);
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

/// out (O) = w (O,I) @ x (I) + bias (O); rows of w split across threads, each row's weights widened
/// to f32 inside its dot product.
pub fn matvec<W: Weight>(out: &mut [f32], w: &[W], bias: Option<&[f32]>, x: &[f32]) {
    let n_in = x.len();
    assert_eq!(w.len(), out.len() * n_in);
    const ROWS: usize = 64;
    out.par_chunks_mut(ROWS).enumerate().for_each(|(chunk, o)| {
        let base = chunk * ROWS;
        for (j, oj) in o.iter_mut().enumerate() {
            let row = &w[(base + j) * n_in..(base + j + 1) * n_in];
            *oj = W::dot(row, x) + bias.map_or(0.0, |b| b[base + j]);
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

/// bf16 to f32 is exact: the bf16 bits are the top half of the f32's.
#[inline(always)]
fn widen(w: bf16) -> f32 {
    f32::from_bits((w.to_bits() as u32) << 16)
}

/// Σ w[i] x[i] with bf16 weights widened to f32: AVX-512F (16 at a time) or AVX2+FMA (8 at a time)
/// when the CPU has them, else portable code.
pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_bf16_avx512(w, x) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { dot_bf16_avx2(w, x) };
        }
    }
    dot_bf16_portable(w, x)
}

fn dot_bf16_portable(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cw, cx) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = cw.remainder().iter().zip(cx.remainder()).map(|(a, b)| widen(*a) * b).sum();
    for (a, b) in cw.zip(cx) {
        for i in 0..16 {
            acc[i] += widen(a[i]) * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Eight bf16 (128 bits) at a time: zero-extend each to 32 bits and shift it into the top half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16_avx2(w: &[bf16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len();
    let (pw, px) = (w.as_ptr() as *const u16, x.as_ptr());
    let load = |i: usize| {
        let h = _mm_loadu_si128(pw.add(i) as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(i + 8 * j), _mm256_loadu_ps(px.add(i + 8 * j)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += widen(*w.get_unchecked(i)) * *px.add(i);
        i += 1;
    }
    total
}

/// Sixteen bf16 (256 bits) at a time, as the AVX2 path but twice as wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_bf16_avx512(w: &[bf16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len();
    let (pw, px) = (w.as_ptr() as *const u16, x.as_ptr());
    let load = |i: usize| {
        let h = _mm256_loadu_si256(pw.add(i) as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(load(i + 16 * j), _mm512_loadu_ps(px.add(i + 16 * j)), *acc);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(load(i), _mm512_loadu_ps(px.add(i)), acc[0]);
        i += 16;
    }
    let mut total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    while i < n {
        total += widen(*w.get_unchecked(i)) * *px.add(i);
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
    // The order is total, so with top-k only the k largest need sorting: selecting them first gives
    // the same first k, in the same order, as sorting the whole vocabulary (about 50K entries).
    let order = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if params.top_k > 0 && params.top_k < probs.len() {
        probs.select_nth_unstable_by(params.top_k - 1, order);
        probs.truncate(params.top_k);
    }
    probs.sort_unstable_by(order);
    draw_nucleus(probs, params.top_p, rng)
}

/// Draws a token from `probs` (unnormalised, most likely first): from the smallest prefix whose
/// share of the mass reaches `top_p` (all of them when `top_p` is 1).
fn draw_nucleus(mut probs: Vec<(f64, u32)>, top_p: f32, rng: &mut Rng) -> u32 {
    let total: f64 = probs.iter().map(|p| p.0).sum();
    if top_p < 1.0 {
        let (mut cum, mut keep) = (0.0, 0);
        for p in &probs {
            cum += p.0 / total;
            keep += 1;
            if cum >= top_p as f64 {
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

    /// Random weights and inputs of mixed sign over a few orders of magnitude.
    fn bf16_inputs(n: usize, seed: u64) -> (Vec<bf16>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let val = |rng: &mut Rng| ((rng.next_f64() - 0.5) * 10f64.powf(rng.next_f64() * 4.0 - 2.0)) as f32;
        let w = (0..n).map(|_| bf16::from_f32(val(&mut rng))).collect();
        let x = (0..n).map(|_| val(&mut rng)).collect();
        (w, x)
    }

    /// `dot` against the f64 sum of the exactly widened products (half's own conversion), within
    /// the f32 rounding bound of an n-term sum: n ε Σ|w x|.
    fn check_bf16_dot(name: &str, dot: impl Fn(&[bf16], &[f32]) -> f32) {
        let lengths = (0..=70).chain([255, 256, 257, 768, 1000, 3072, 4099, 50_257]);
        for n in lengths {
            let (w, x) = bf16_inputs(n, n as u64 + 1);
            let exact: f64 = w.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
            let scale: f64 = w.iter().zip(&x).map(|(a, b)| (a.to_f64() * *b as f64).abs()).sum();
            let got = dot(&w, &x) as f64;
            let bound = n as f64 * f32::EPSILON as f64 * scale;
            assert!((got - exact).abs() <= bound, "{name}, length {n}: {got} against {exact} (bound {bound})");
        }
    }

    #[test]
    fn bf16_dot_portable_matches_f64() {
        check_bf16_dot("portable", dot_bf16_portable);
    }

    #[test]
    fn bf16_dot_matches_f64_on_the_path_this_cpu_takes() {
        check_bf16_dot("dispatch", dot_bf16);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_dot_avx2_matches_f64() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        // SAFETY: the CPU has the features, checked above.
        check_bf16_dot("avx2", |w, x| unsafe { dot_bf16_avx2(w, x) });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_dot_avx512_matches_f64() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        // SAFETY: the CPU has the feature, checked above.
        check_bf16_dot("avx512", |w, x| unsafe { dot_bf16_avx512(w, x) });
    }

    #[test]
    fn bf16_weights_widen_exactly_and_round_to_nearest() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 3.140625, 2f32.powi(-100), -1.5 * 2f32.powi(100), f32::INFINITY] {
            let b = <bf16 as Weight>::from_f32(x);
            assert_eq!(b.to_f32(), x, "{x} is a bf16 value and must survive the round trip");
            assert_eq!(Weight::to_f32(b), x);
        }
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to even gives 1; just above rounds up.
        assert_eq!(<bf16 as Weight>::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(<bf16 as Weight>::from_f32(1.0 + 1.0 / 256.0 + 1.0 / 65536.0).to_f32(), 1.0 + 1.0 / 128.0);
        assert_eq!(convert_params::<bf16>(&[1.0, 0.3]), vec![bf16::from_f32(1.0), bf16::from_f32(0.3)]);
    }

    #[test]
    fn weight_type_parses_and_names_its_choices() {
        assert_eq!("bf16".parse::<WeightType>().unwrap(), WeightType::Bf16);
        assert_eq!("f32".parse::<WeightType>().unwrap(), WeightType::F32);
        assert_eq!("fp32".parse::<WeightType>().unwrap(), WeightType::F32);
        let e = "fp8".parse::<WeightType>().unwrap_err();
        assert!(e.contains("f32 or bf16"), "{e}");
        assert_eq!(WeightType::Bf16.to_string(), "bf16");
        assert_eq!((WeightType::F32.bytes(), WeightType::Bf16.bytes()), (4, 2));
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

    /// Selecting the top k before sorting draws exactly what sorting the whole vocabulary drew (the
    /// sampler's top-k before that change, kept here as the reference; the nucleus cut and the draw
    /// after it are `draw_nucleus` for both), for the same random numbers: large
    /// vocabularies with many tied logits, top-k of 1, the default 200 and the whole vocabulary,
    /// with and without a nucleus.
    #[test]
    fn selecting_the_top_k_draws_what_a_full_sort_draws() {
        fn full_sort(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
            let inv_t = 1.0 / params.temperature as f64;
            let maxv = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut probs: Vec<(f64, u32)> =
                logits.iter().enumerate().map(|(i, &x)| (((x as f64 - maxv) * inv_t).exp(), i as u32)).collect();
            probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            if params.top_k > 0 {
                probs.truncate(params.top_k);
            }
            // The nucleus and the draw after the top-k are shared; what changed is the top-k.
            draw_nucleus(probs, params.top_p, rng)
        }
        let mut gen = Rng::new(11);
        // Logits on a coarse grid, so thousands of tokens tie.
        let logits: Vec<f32> = (0..50257).map(|_| (gen.below(64) as f32) / 8.0).collect();
        for params in [
            SamplingParams { temperature: 0.8, top_k: 200, top_p: 0.95 },
            SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 },
            SamplingParams { temperature: 1.3, top_k: 3000, top_p: 1.0 },
            SamplingParams { temperature: 0.5, top_k: 50257, top_p: 0.9 },
            SamplingParams { temperature: 1.0, top_k: 60000, top_p: 1.0 },
        ] {
            let (mut a, mut b) = (Rng::new(5), Rng::new(5));
            for _ in 0..200 {
                assert_eq!(sample_token(&logits, &params, &mut a), full_sort(&logits, &params, &mut b), "{params:?}");
            }
        }
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
