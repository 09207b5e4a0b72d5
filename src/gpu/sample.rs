//! Token-by-token decoding on the GPU with a KV cache on the device: the GPU twin of
//! `cpu::sample::Decoder`. Each step runs one position through every block with the batched
//! forward's own block function ([`GpuModel::block`], with one row), whose attention appends the
//! position's keys and values to the cache and attends over the cached positions with
//! `attention_decode`; the logits come back to the host, where
//! `cpu::sample::sample_token` picks the next token, so sampling options and seeds behave the same.

use super::attention::attention_decode;
use super::embedding::embedding_forward;
use super::gpt::{BlockRegions, GpuModel, Region};
use super::layernorm::layernorm_forward;
use super::matmul::matmul_forward;
use super::Float;
use crate::model::Param;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// One-row buffers for a decoding step and the two caches (the LayerNorm statistics are apart, in f32).
#[derive(Clone, Copy)]
enum Buf {
    X,
    Ln,
    Qkv,
    Atty,
    Attproj,
    Res2,
    Res3,
    Fch,
    Fcproj,
    Logits,
    KCache,
    VCache,
}

pub struct GpuDecoder<'m, T: Float> {
    model: &'m GpuModel<T>,
    buf: CudaSlice<T>,
    stats: CudaSlice<f32>,
    offsets: Vec<(usize, usize)>,
    tokens: CudaSlice<i32>,
    pos: usize,
    logits: Vec<f32>,
}

impl<'m, T: Float> GpuDecoder<'m, T> {
    pub fn new(model: &'m GpuModel<T>) -> Result<Self> {
        let cfg = model.cfg;
        let (c, vp) = (cfg.channels, cfg.padded_vocab_size);
        let cache = cfg.num_layers * cfg.max_seq_len * c;
        let sizes = [c, c, 3 * c, c, c, c, c, 4 * c, c, vp, cache, cache];
        let mut offsets = Vec::new();
        let mut off = 0;
        for n in sizes {
            offsets.push((off, n));
            off += n.div_ceil(64) * 64;
        }
        let stream = model.gpu.stream();
        let buf = stream.alloc_zeros::<T>(off).context("allocating the KV cache")?;
        let stats = stream.alloc_zeros::<f32>(2)?;
        let tokens = stream.alloc_zeros::<i32>(1)?;
        Ok(GpuDecoder { model, buf, stats, offsets, tokens, pos: 0, logits: vec![0.0; cfg.vocab_size] })
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn region(&self, b: Buf, start: usize, len: Option<usize>) -> Region<T> {
        let (off, n) = self.offsets[b as usize];
        let len = len.unwrap_or(n - start);
        assert!(start + len <= n);
        let (base, _g) = self.buf.device_ptr(self.model.gpu.stream());
        Region::new(base + ((off + start) * T::BYTES) as u64, len, Arc::clone(self.model.gpu.stream()))
    }

    /// The LayerNorm mean (0) or rstd (1) of the current row.
    fn stat(&self, i: usize) -> Region<f32> {
        let (base, _g) = self.stats.device_ptr(self.model.gpu.stream());
        Region::new(base + (i * 4) as u64, 1, Arc::clone(self.model.gpu.stream()))
    }

    /// Feeds `token` at the next position and returns the logits (V) for the position after it.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        let m = self.model;
        let cfg = m.cfg;
        let (c, nh, t_max) = (cfg.channels, cfg.num_heads, cfg.max_seq_len);
        ensure!(self.pos < t_max, "the context of {t_max} tokens is full");
        ensure!((token as usize) < cfg.vocab_size, "token {token} is outside the vocabulary");
        let (gpu, blas, layout, params) = (&m.gpu, m.blas(), m.layout(), m.params());
        let p = |prm: Param| params.slice(layout.get(prm).range());
        let pl = |prm: Param, l: usize| params.slice(layout.get(prm).layer_range(l));
        gpu.stream().memcpy_htod(&[token as i32], &mut self.tokens)?;
        let wpe = layout.get(Param::Wpe).offset + self.pos * c;
        let mut x = self.region(Buf::X, 0, None);
        embedding_forward(gpu, &mut x, &self.tokens, &p(Param::Wte), &params.slice(wpe..wpe + c), 1, 1, c)?;
        let (mut ln, mut mean, mut rstd) = (self.region(Buf::Ln, 0, None), self.stat(0), self.stat(1));
        layernorm_forward(gpu, &mut ln, &mut mean, &mut rstd, &x, &pl(Param::Ln1w, 0), &pl(Param::Ln1b, 0), 1, c)?;
        for l in 0..cfg.num_layers {
            // One row each; ln1, ln2 and the next LayerNorm share Buf::Ln (and the statistics),
            // the block's input x and its residual3 share Buf::Res3 after the first block.
            let row = |b: Buf| self.region(b, 0, None);
            let mut regions = BlockRegions {
                x: row(if l == 0 { Buf::X } else { Buf::Res3 }),
                ln1: row(Buf::Ln),
                qkv: row(Buf::Qkv),
                atty: row(Buf::Atty),
                attproj: row(Buf::Attproj),
                res2: row(Buf::Res2),
                ln2: row(Buf::Ln),
                ln2_mean: self.stat(0),
                ln2_rstd: self.stat(1),
                fch: None,
                fch_gelu: row(Buf::Fch),
                fcproj: row(Buf::Fcproj),
                res3: row(Buf::Res3),
                ln_next: row(Buf::Ln),
                ln_next_mean: self.stat(0),
                ln_next_rstd: self.stat(1),
            };
            // Attention over the cache, q, k and v read by parts from the same Buf::Qkv row.
            let attend = |_qkv: &Region<T>, atty: &mut Region<T>| {
                // Append this position's key and value to layer l's cache.
                let at = (l * t_max + self.pos) * c;
                let (k, v) = (self.region(Buf::Qkv, c, Some(c)), self.region(Buf::Qkv, 2 * c, Some(c)));
                gpu.stream().memcpy_dtod(&k, &mut self.region(Buf::KCache, at, Some(c)))?;
                gpu.stream().memcpy_dtod(&v, &mut self.region(Buf::VCache, at, Some(c)))?;
                let q = self.region(Buf::Qkv, 0, Some(c));
                let (kc, vc) = (
                    self.region(Buf::KCache, l * t_max * c, Some(t_max * c)),
                    self.region(Buf::VCache, l * t_max * c, Some(t_max * c)),
                );
                attention_decode(gpu, atty, &q, &kc, &vc, self.pos + 1, c, nh)
            };
            m.block(l, 1, &mut regions, attend, |_| Ok(()))?;
        }
        let mut logits = self.region(Buf::Logits, 0, None);
        matmul_forward(gpu, blas, &mut logits, &ln, &p(Param::Wte), None, 1, c, cfg.padded_vocab_size, false)?;
        let real = self.region(Buf::Logits, 0, Some(cfg.vocab_size));
        let mut host = vec![T::default(); cfg.vocab_size];
        gpu.note_host_sync().stream().memcpy_dtoh(&real, &mut host).context("copying the logits back")?;
        for (dst, src) in self.logits.iter_mut().zip(host) {
            *dst = src.to_f32();
        }
        self.pos += 1;
        Ok(&self.logits)
    }
}

impl<T: Float> crate::cpu::sample::TokenDecoder for GpuDecoder<'_, T> {
    fn step(&mut self, token: u32) -> Result<&[f32]> {
        GpuDecoder::step(self, token)
    }
}
