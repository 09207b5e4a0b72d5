//! The GPT-2 forward pass on the GPU, in fp32 or bf16 ([`Float`]), over the same [`ParamLayout`] as
//! the CPU reference. In bf16, parameters and activations are stored in bf16 and every kernel
//! computes in fp32; LayerNorm statistics and losses are fp32.
//!
//! One device allocation holds the parameters (carved by `ParamLayout`), one holds every activation
//! (carved by [`ActLayout`] for a given batch, sequence length and element size), and the token ids live in two
//! small integer buffers. Every op is a kernel named like its CPU reference (`src/gpu/<op>.rs`,
//! `kernels/<op>.cu`); matmuls go through cuBLASLt with the bias (and GELU) fused as epilogues.
//!
//! The residual stream is fused into the LayerNorms: each block's second LayerNorm also writes
//! `residual2 = x + attproj`, and the next block's first LayerNorm (or the final one) writes
//! `residual3 = residual2 + fcproj`.

use super::adamw::StepOutcome;
use super::attention;
use super::blas::Blas;
use super::classifier::classifier_forward;
use super::device::Gpu;
use super::embedding::embedding_forward;
use super::embedding::BackwardPlan;
use super::flash_attention;
use super::gelu::gelu_forward;
use super::layernorm::{layernorm_forward, residual_layernorm_forward};
use super::matmul::{matmul_forward, matmul_forward_gelu_aux};
use super::{Attention, BiasGrad, Dinp, Float, GeluFusion, Kernels, StepSync};
use crate::model::{ModelConfig, Param, ParamLayout};
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{
    sys, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, PinnedHostSlice, SyncOnDrop,
};
use std::cell::RefCell;
use std::sync::Arc;

/// A stretch of a device allocation owned by a [`GpuModel`]: usable wherever cudarc wants a device
/// buffer. All work is queued on the model's one stream, so no cross-stream synchronisation is
/// needed. It must not outlive the model that made it (the model owns the memory).
pub struct Region<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
    elem: std::marker::PhantomData<T>,
}

impl<T> Region<T> {
    /// `len` elements at device address `ptr`, which must stay allocated while the region is used.
    pub(crate) fn new(ptr: sys::CUdeviceptr, len: usize, stream: Arc<CudaStream>) -> Self {
        Region { ptr, len, stream, elem: std::marker::PhantomData }
    }
}

impl<T> DeviceSlice<T> for Region<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for Region<T> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for Region<T> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

/// The activation tensors of one forward pass. Per-layer ones lead with L.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Encoded,   // (B,T,C)
    Ln1,       // (L,B,T,C)
    Ln1Mean,   // (L,B,T)
    Ln1Rstd,   // (L,B,T)
    Qkv,       // (L,B,T,3C)
    Atty,      // (L,B,T,C)
    Att,       // (L,B,NH,T,T) probabilities: materialised attention only (empty with flash)
    Lse,       // (L,B,NH,T) f32 log-sum-exp per row: flash attention only (empty otherwise)
    Attproj,   // (L,B,T,C), or one (B,T,C) for all layers with --kernels vector (see ActLayout::build)
    Residual2, // (L,B,T,C)
    Ln2,       // (L,B,T,C)
    Ln2Mean,   // (L,B,T)
    Ln2Rstd,   // (L,B,T)
    Fch,       // (L,B,T,4C) before GELU: kept for the backward only (empty when not training)
    FchGelu,   // (L,B,T,4C)
    Fcproj,    // (L,B,T,C), or one (B,T,C) for all layers with --kernels vector
    Residual3, // (L,B,T,C)
    Lnf,       // (B,T,C)
    LnfMean,   // (B,T)
    LnfRstd,   // (B,T)
    Logits,    // (B,T,Vp)
    Losses,    // (B,T)
    Scratch,   // attention's permuted q, k, v and its output (materialised attention only)
}

/// Every [`Act`], in the order [`ActLayout`] places them.
pub const ACTS: [Act; 23] = [
    Act::Encoded,
    Act::Ln1,
    Act::Ln1Mean,
    Act::Ln1Rstd,
    Act::Qkv,
    Act::Atty,
    Act::Att,
    Act::Lse,
    Act::Attproj,
    Act::Residual2,
    Act::Ln2,
    Act::Ln2Mean,
    Act::Ln2Rstd,
    Act::Fch,
    Act::FchGelu,
    Act::Fcproj,
    Act::Residual3,
    Act::Lnf,
    Act::LnfMean,
    Act::LnfRstd,
    Act::Logits,
    Act::Losses,
    Act::Scratch,
];

impl Act {
    /// LayerNorm statistics and losses are f32 whatever the activations' type.
    pub fn is_f32(self) -> bool {
        matches!(
            self,
            Act::Ln1Mean
                | Act::Ln1Rstd
                | Act::Ln2Mean
                | Act::Ln2Rstd
                | Act::LnfMean
                | Act::LnfRstd
                | Act::Losses
                | Act::Lse
        )
    }
}

/// Where each activation tensor lives in the one activation allocation, for batch `b`, length `t`
/// and activations of `elem` bytes.
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    /// (byte offset, elements per layer or in all, per-layer?) for each [`Act`], in `ACTS` order.
    entries: Vec<(usize, usize, bool)>,
    /// Bytes of the whole allocation.
    pub total: usize,
    /// Laid out for training: the pre-GELU activations are kept.
    pub train: bool,
    /// Materialised attention keeps the (L,B,NH,T,T) probabilities and a permute scratch; flash
    /// attention keeps only the (L,B,NH,T) f32 log-sum-exp.
    pub attention: Attention,
    /// With [`Kernels::Vector`] attproj and fcproj are one (B,T,C) buffer each, shared by the layers.
    pub kernels: Kernels,
}

impl ActLayout {
    /// The layout for evaluation (no pre-GELU copy).
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, elem: usize) -> Self {
        Self::build(cfg, b, t, elem, false, Attention::Materialized, Kernels::Scalar)
    }

    /// The layout for training: also the pre-GELU activations the backward needs.
    pub fn for_training(cfg: &ModelConfig, b: usize, t: usize, elem: usize) -> Self {
        Self::build(cfg, b, t, elem, true, Attention::Materialized, Kernels::Scalar)
    }

    /// The layout for evaluation (`train` false) or training with attention computed as
    /// `attention` says: with [`Attention::Flash`] no tensor of size T x T is allocated. With
    /// [`Kernels::Vector`] attproj and fcproj are one (B,T,C) buffer each for all layers: each
    /// layer's is read only by the residual LayerNorm right after it (the backward reads neither),
    /// so keeping L of them is (L-1)*B*T*C elements of memory each for nothing. The verified
    /// scalar path keeps them per layer until a GPU run has checked the shared ones.
    pub fn build(
        cfg: &ModelConfig,
        b: usize,
        t: usize,
        elem: usize,
        train: bool,
        attention: Attention,
        kernels: Kernels,
    ) -> Self {
        let flash = attention == Attention::Flash;
        let per_layer_proj = kernels == Kernels::Scalar;
        let (c, nh, bt) = (cfg.channels, cfg.num_heads, b * t);
        let mut entries = Vec::new();
        let mut off = 0;
        for a in ACTS {
            let (n, per_layer) = match a {
                Act::Encoded | Act::Lnf => (bt * c, false),
                Act::LnfMean | Act::LnfRstd | Act::Losses => (bt, false),
                Act::Logits => (bt * cfg.padded_vocab_size, false),
                Act::Scratch => (if flash { 0 } else { attention::scratch_len(b, t, c) }, false),
                Act::Ln1Mean | Act::Ln1Rstd | Act::Ln2Mean | Act::Ln2Rstd => (bt, true),
                Act::Qkv => (bt * 3 * c, true),
                Act::Att => (if flash { 0 } else { b * nh * t * t }, true),
                Act::Lse => (if flash { flash_attention::lse_len(b, t, nh) } else { 0 }, true),
                Act::FchGelu => (bt * 4 * c, true),
                Act::Fch => (if train { bt * 4 * c } else { 0 }, true),
                Act::Attproj | Act::Fcproj => (bt * c, per_layer_proj),
                Act::Ln1 | Act::Atty | Act::Residual2 | Act::Ln2 | Act::Residual3 => (bt * c, true),
            };
            entries.push((off, n, per_layer));
            let bytes = (if per_layer { n * cfg.num_layers } else { n }) * if a.is_f32() { 4 } else { elem };
            // Keep every tensor 256-byte aligned for cuBLASLt and vector loads.
            off += bytes.div_ceil(256) * 256;
        }
        ActLayout { b, t, entries, total: off, train, attention, kernels }
    }

    /// Byte offset and element count of `a` (layer `l` for per-layer tensors; ignored otherwise),
    /// for elements of `elem` bytes.
    pub fn place(&self, a: Act, l: usize, elem: usize) -> (usize, usize) {
        let (off, n, per_layer) = self.entries[ACTS.iter().position(|&x| x == a).expect("every Act is listed")];
        (if per_layer { off + l * n * elem } else { off }, n)
    }

    /// Bytes of the activation allocation.
    pub fn bytes(&self) -> usize {
        self.total
    }
}

/// The regions one transformer block ([`GpuModel::block`]) reads and writes, for N rows: it reads
/// `x` (the residual stream into the block) and `ln1` (its first LayerNorm's output, written
/// before it) and writes the rest in field order. `fch` is where the pre-GELU values are kept for
/// the backward (training); without it the GELU is fused into the fc matmul. `ln_next` and its
/// f32 statistics receive the next block's ln1, or the final LayerNorm after the last block.
/// Regions may alias when one is dead before the other is written: the decoder uses one row for
/// ln1, ln2 and ln_next (and their statistics) and one for x and res3.
pub(crate) struct BlockRegions<T> {
    pub x: Region<T>,
    pub ln1: Region<T>,
    pub qkv: Region<T>,
    pub atty: Region<T>,
    pub attproj: Region<T>,
    pub res2: Region<T>,
    pub ln2: Region<T>,
    pub ln2_mean: Region<f32>,
    pub ln2_rstd: Region<f32>,
    pub fch: Option<Region<T>>,
    pub fch_gelu: Region<T>,
    pub fcproj: Region<T>,
    pub res3: Region<T>,
    pub ln_next: Region<T>,
    pub ln_next_mean: Region<f32>,
    pub ln_next_rstd: Region<f32>,
}

/// A model on the GPU with parameters and activations of type `T`: parameters, activations for one
/// (B,T), and the cuBLAS handles.
pub struct GpuModel<T: Float> {
    pub gpu: Gpu,
    blas: Blas,
    pub cfg: ModelConfig,
    layout: ParamLayout,
    params: CudaSlice<T>,
    acts: Option<(ActLayout, CudaSlice<u8>)>,
    inputs: Option<CudaSlice<i32>>,
    targets: Option<CudaSlice<i32>>,
    /// When profiling: an event recorded after each op, with the op's name.
    marks: Option<RefCell<Vec<(&'static str, CudaEvent)>>>,
    /// Gradients and optimizer state, when training (fp32 only so far).
    train: Option<Training>,
    /// How attention is computed (see [`GpuModel::set_attention`]).
    attention: Attention,
    /// How much of the training GELU runs in the matmul epilogues (see
    /// [`GpuModel::set_gelu_fusion`]).
    gelu_fusion: GeluFusion,
    /// How the backward computes the matmuls' bias gradients (see [`GpuModel::set_bias_grad`]).
    bias_grad: BiasGrad,
    /// How a training step talks to the host (`--sync`; fixed at construction, as it picks the stream).
    sync: StepSync,
    /// The host's copy of the micro-batch [`train_step`](Self::train_step) is feeding.
    batch: (Vec<u32>, Vec<u32>),
    /// `--sync graph`: the captured forward and backward of one micro-batch, and the shape whose
    /// first micro-batch has run uncaptured (capturing starts with the second).
    graph: Option<(GraphKey, cudarc::driver::CudaGraph)>,
    graph_warm: Option<GraphKey>,
}

/// What a captured micro-batch graph depends on besides the buffers (which stay put for a shape):
/// the shape, the loss scale baked into the classifier's launch, and the kernel choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    b: usize,
    t: usize,
    dloss: u32,
    attention: Attention,
    kernels: Kernels,
    gelu_fusion: GeluFusion,
    bias_grad: BiasGrad,
}

impl<T: Float> GpuModel<T> {
    /// Uploads `params` (in `ParamLayout` order) to device `ordinal`. `allow_tf32` lets cuBLAS
    /// round matmul inputs to TF32 (faster, about 1e-3 relative); off gives exact fp32.
    pub fn new(cfg: &ModelConfig, params: &[f32], ordinal: usize, allow_tf32: bool) -> Result<Self> {
        Self::open(cfg, params, ordinal, allow_tf32, StepSync::Micro)
    }

    /// [`new`](Self::new) for training steps synchronised as `sync` says: `Step` and `Graph` also
    /// puts all the model's work on a stream Genesis creates.
    pub fn open(cfg: &ModelConfig, params: &[f32], ordinal: usize, allow_tf32: bool, sync: StepSync) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        ensure!(params.len() == layout.total, "{} parameters given, the model needs {}", params.len(), layout.total);
        let gpu = Gpu::open(ordinal, sync.queues_whole_steps())?;
        let blas = Blas::new(&gpu, allow_tf32)?;
        let converted: Vec<T> = params.iter().map(|&x| T::from_f32(x)).collect();
        let params = gpu.stream().clone_htod(&converted).context("uploading the parameters")?;
        Ok(GpuModel {
            gpu,
            blas,
            cfg: *cfg,
            layout,
            params,
            acts: None,
            inputs: None,
            targets: None,
            marks: None,
            train: None,
            attention: Attention::Materialized,
            gelu_fusion: GeluFusion::Off,
            bias_grad: BiasGrad::Reduce,
            sync,
            batch: (Vec::new(), Vec::new()),
            graph: None,
            graph_warm: None,
        })
    }

    /// Chooses how attention is computed from now on. [`Attention::Flash`] needs bf16 and head
    /// size 64, and is refused otherwise; switching drops the activations and the backward's
    /// scratch, which the next forward lays out again for the new mode.
    pub fn set_attention(&mut self, attention: Attention) -> Result<()> {
        if attention == Attention::Flash {
            let precision = if is_bf16::<T>() { super::Precision::Bf16 } else { super::Precision::Fp32 };
            attention.check(precision)?;
            let hs = self.cfg.channels / self.cfg.num_heads;
            ensure!(
                hs == flash_attention::HEAD_SIZE,
                "--attention flash needs head size {}, this model has {hs}; use --attention materialized",
                flash_attention::HEAD_SIZE
            );
        }
        if attention != self.attention {
            self.attention = attention;
            self.acts = None;
            if let Some(tr) = self.train.as_mut() {
                tr.scratch = None;
            }
        }
        Ok(())
    }

    /// How attention is computed.
    pub fn attention(&self) -> Attention {
        self.attention
    }

    /// Chooses how much of the training GELU runs in the matmul epilogues from now on
    /// ([`GeluFusion`]; default off). Refused (one line) for a model with an odd number of
    /// channels, which cuBLASLt's aux epilogues cannot take. The buffers stay as they are (the
    /// same activations and scratch serve every choice); a captured `--sync graph` micro-batch is
    /// captured again for the new choice (it is part of the graph's key).
    pub fn set_gelu_fusion(&mut self, fusion: GeluFusion) -> Result<()> {
        fusion.check(self.cfg.channels)?;
        self.gelu_fusion = fusion;
        Ok(())
    }

    /// How much of the training GELU runs in the matmul epilogues.
    pub fn gelu_fusion(&self) -> GeluFusion {
        self.gelu_fusion
    }

    /// Chooses how the backward computes the bias gradients of the matmuls with a bias from now
    /// on ([`BiasGrad`]; default reduce): with `Epilogue` the dweight GEMM's BGRADB epilogue
    /// writes them to the matmul scratch (`Grad::MmScratch`, sized for either choice) and a small
    /// kernel adds them to the gradients. The buffers stay as they are; a captured `--sync graph`
    /// micro-batch is captured again for the new choice (it is part of the graph's key).
    pub fn set_bias_grad(&mut self, bias_grad: BiasGrad) {
        self.bias_grad = bias_grad;
    }

    /// How the backward computes the matmuls' bias gradients.
    pub fn bias_grad(&self) -> BiasGrad {
        self.bias_grad
    }

    /// How a training step talks to the host (`--sync`).
    pub fn sync(&self) -> StepSync {
        self.sync
    }

    pub(crate) fn blas(&self) -> &Blas {
        &self.blas
    }

    pub(crate) fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub(crate) fn params(&self) -> &CudaSlice<T> {
        &self.params
    }

    /// The parameters back on the host as f32, in `ParamLayout` order (to save a checkpoint).
    pub fn download_params(&self) -> Result<Vec<f32>> {
        self.gpu.note_host_sync();
        let host: Vec<T> = self.gpu.stream().clone_dtoh(&self.params).context("copying the parameters back")?;
        Ok(host.into_iter().map(T::to_f32).collect())
    }

    /// Turns per-op timing on or off (on: an event after every op; see [`take_profile`](Self::take_profile)).
    pub fn set_profiling(&mut self, on: bool) {
        self.marks = on.then(|| RefCell::new(Vec::new()));
    }

    /// Records that the op `name` was queued (when profiling): the time from the previous mark is
    /// charged to `name` (`profile::family` groups the names).
    pub fn mark(&self, name: &'static str) -> Result<()> {
        if let Some(marks) = &self.marks {
            let ev = self.gpu.stream().record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
            marks.borrow_mut().push((name, ev));
        }
        Ok(())
    }

    /// Milliseconds per op name since the last call, in first-seen order (waits for the GPU).
    pub fn take_profile(&mut self) -> Result<Vec<(&'static str, f64)>> {
        let Some(marks) = &self.marks else { return Ok(Vec::new()) };
        self.gpu.synchronize()?;
        let marks = std::mem::take(&mut *marks.borrow_mut());
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for pair in marks.windows(2) {
            let ms = pair[0].1.elapsed_ms(&pair[1].1)? as f64;
            match out.iter_mut().find(|(n, _)| *n == pair[1].0) {
                Some(e) => e.1 += ms,
                None => out.push((pair[1].0, ms)),
            }
        }
        Ok(out)
    }

    /// A region of the activation allocation, of type `T` (or f32 for statistics and losses).
    fn act<U>(&self, a: Act, l: usize) -> Region<U> {
        let elem = std::mem::size_of::<U>();
        assert_eq!(elem, if a.is_f32() { 4 } else { T::BYTES }, "{a:?} has another element type");
        let (lay, buf) = self.acts.as_ref().expect("activations allocated by ensure_acts");
        let (off, n) = lay.place(a, l, elem);
        assert!(off + n * elem <= buf.len());
        let (base, _guard) = buf.device_ptr(self.gpu.stream());
        Region::new(base + off as u64, n, Arc::clone(self.gpu.stream()))
    }

    /// Allocates activations and token buffers for batches of (b, t), reusing them when they fit.
    fn ensure_acts(&mut self, b: usize, t: usize, train: bool) -> Result<()> {
        ensure!(
            t >= 1 && t <= self.cfg.max_seq_len && b >= 1,
            "sequence length {t} must be within the model's context {}",
            self.cfg.max_seq_len
        );
        // A training layout also serves evaluation (it only adds the pre-GELU copy). The kernels
        // mode is the GPU's, which `Gpu::set_kernels` may change at any time: checked here.
        let kernels = self.gpu.kernels();
        if self.acts.as_ref().is_some_and(|(l, _)| {
            l.b == b && l.t == t && (l.train || !train) && l.attention == self.attention && l.kernels == kernels
        }) {
            return Ok(());
        }
        self.acts = None;
        // A captured graph points into the buffers being replaced.
        (self.graph, self.graph_warm) = (None, None);
        let lay = ActLayout::build(&self.cfg, b, t, T::BYTES, train, self.attention, kernels);
        let stream = self.gpu.stream();
        let buf = stream.alloc_zeros::<u8>(lay.total).with_context(|| {
            format!(
                "allocating {:.2} GB of activations for batch {b} x {t}; try a smaller --batch",
                lay.bytes() as f64 / 1e9
            )
        })?;
        self.acts = Some((lay, buf));
        self.inputs = Some(stream.alloc_zeros::<i32>(b * t)?);
        self.targets = Some(stream.alloc_zeros::<i32>(b * t)?);
        Ok(())
    }

    /// Refuses a token id outside the vocabulary (the kernels index rows by it unchecked).
    fn check_tokens(&self, inputs: &[u32], targets: &[u32]) -> Result<()> {
        let v = self.cfg.vocab_size as u32;
        if let Some(bad) = inputs.iter().chain(targets).find(|&&x| x >= v) {
            bail!("token id {bad} is outside the model's vocabulary of {v}");
        }
        Ok(())
    }

    /// Uploads a batch's tokens; for a training forward under `--sync step|graph`, with the
    /// embedding backward's plan, from pinned memory ([`stage_tokens`](Self::stage_tokens)), unless
    /// [`train_step`](Self::train_step) staged them already.
    fn upload_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>, train: bool) -> Result<()> {
        if let (true, true, Some(targets)) = (train, self.sync.queues_whole_steps(), targets) {
            if self.train.as_ref().and_then(|tr| tr.step.as_ref()).is_some_and(|sb| sb.plan.is_some()) {
                // Staged (and checked) by train_step before the forward (and before a graph capture).
                return Ok(());
            }
            return self.stage_tokens(inputs, targets);
        }
        self.check_tokens(inputs, targets.unwrap_or(&[]))?;
        let stream = Arc::clone(self.gpu.stream());
        let to_i32 = |xs: &[u32]| xs.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        self.gpu.note_pageable_upload();
        stream.memcpy_htod(&to_i32(inputs), self.inputs.as_mut().expect("allocated"))?;
        if let Some(tg) = targets {
            self.gpu.note_pageable_upload();
            stream.memcpy_htod(&to_i32(tg), self.targets.as_mut().expect("allocated"))?;
        }
        Ok(())
    }

    /// Runs the model on `inputs` (B,T) up to the logits `(B,T,Vp)`; with `targets`, also the
    /// per-position losses.
    // inputs (B,T), targets (B,T) -> logits (B,T,Vp), losses (B,T)
    pub fn forward(&mut self, inputs: &[u32], targets: Option<&[u32]>, b: usize, t: usize) -> Result<()> {
        self.forward_impl(inputs, targets, b, t, None)
    }

    /// [`forward`](Self::forward). With `dloss` (training) it keeps what the backward needs (the
    /// pre-GELU activations) and the classifier overwrites the logits with dloss * (softmax - onehot).
    fn forward_impl(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        let train = dloss.is_some();
        ensure!(inputs.len() == b * t, "inputs hold {} tokens, not B*T = {}", inputs.len(), b * t);
        ensure!(targets.is_none_or(|x| x.len() == b * t), "targets must hold B*T = {} tokens", b * t);
        self.ensure_acts(b, t, train)?;
        self.upload_tokens(inputs, targets, train)?;
        let (cfg, gpu, blas) = (self.cfg, &self.gpu, &self.blas);
        let (n, c, nh, l_max) = (b * t, cfg.channels, cfg.num_heads, cfg.num_layers);
        let p = |prm: Param| self.params.slice(self.layout.get(prm).range());
        let pl = |prm: Param, l: usize| self.params.slice(self.layout.get(prm).layer_range(l));
        let wpe_t = self.params.slice(self.layout.get(Param::Wpe).offset..self.layout.get(Param::Wpe).offset + t * c);

        self.mark("start")?;
        let mut encoded = self.act::<T>(Act::Encoded, 0);
        embedding_forward(
            gpu,
            &mut encoded,
            self.inputs.as_ref().expect("allocated"),
            &p(Param::Wte),
            &wpe_t,
            b,
            t,
            c,
        )?;
        self.mark("embedding")?;
        let (mut ln1, mut m, mut r) =
            (self.act::<T>(Act::Ln1, 0), self.act::<f32>(Act::Ln1Mean, 0), self.act::<f32>(Act::Ln1Rstd, 0));
        layernorm_forward(gpu, &mut ln1, &mut m, &mut r, &encoded, &pl(Param::Ln1w, 0), &pl(Param::Ln1b, 0), n, c)?;
        self.mark("layernorm (+residual)")?;
        for l in 0..l_max {
            // Residual stream into this block: the embedding, or the previous block's residual3.
            let x = if l == 0 { self.act::<T>(Act::Encoded, 0) } else { self.act::<T>(Act::Residual3, l - 1) };
            // residual3 is normalised by the next block's ln1, or by lnf after the last block.
            let (next, ln, mean, rstd) = if l + 1 < l_max {
                (l + 1, Act::Ln1, Act::Ln1Mean, Act::Ln1Rstd)
            } else {
                (0, Act::Lnf, Act::LnfMean, Act::LnfRstd)
            };
            let mut regions = BlockRegions {
                x,
                ln1: self.act(Act::Ln1, l),
                qkv: self.act(Act::Qkv, l),
                atty: self.act(Act::Atty, l),
                attproj: self.act(Act::Attproj, l),
                res2: self.act(Act::Residual2, l),
                ln2: self.act(Act::Ln2, l),
                ln2_mean: self.act(Act::Ln2Mean, l),
                ln2_rstd: self.act(Act::Ln2Rstd, l),
                // Training keeps the pre-GELU values for the backward.
                fch: train.then(|| self.act(Act::Fch, l)),
                fch_gelu: self.act(Act::FchGelu, l),
                fcproj: self.act(Act::Fcproj, l),
                res3: self.act(Act::Residual3, l),
                ln_next: self.act(ln, next),
                ln_next_mean: self.act(mean, next),
                ln_next_rstd: self.act(rstd, next),
            };
            let attend = |qkv: &Region<T>, atty: &mut Region<T>| {
                if self.attention == Attention::Flash {
                    let mut lse = self.act::<f32>(Act::Lse, l);
                    flash_attention::flash_attention_forward(gpu, atty, &mut lse, qkv, b, t, c, nh)
                } else {
                    let (mut scratch, mut att) = (self.act::<T>(Act::Scratch, 0), self.act::<T>(Act::Att, l));
                    attention::attention_forward(gpu, blas, atty, &mut scratch, &mut att, qkv, b, t, c, nh)
                }
            };
            self.block(l, n, &mut regions, attend, |name| self.mark(name))?;
        }
        let (lnf, mut logits) = (self.act::<T>(Act::Lnf, 0), self.act::<T>(Act::Logits, 0));
        let vp = cfg.padded_vocab_size;
        matmul_forward(gpu, blas, &mut logits, &lnf, &p(Param::Wte), None, n, c, vp, false)?;
        self.mark("matmul logits")?;
        if targets.is_some() {
            let mut losses = self.act::<f32>(Act::Losses, 0);
            let tg = self.targets.as_ref().expect("allocated");
            classifier_forward(gpu, &mut losses, &mut logits, tg, n, cfg.vocab_size, vp, dloss)?;
            self.mark("classifier")?;
        }
        Ok(())
    }

    /// Transformer block `l` on N rows, into `r` (see [`BlockRegions`]): the qkv matmul,
    /// attention (`attend` reads qkv and writes atty), the attproj matmul, residual + ln2, the fc
    /// matmul and GELU (when `r.fch` is given, keeping the pre-GELU values there: GELU as a kernel
    /// of its own, or with `--gelu-fusion forward|both` in the same GEMM, whose epilogue writes
    /// both; else fused into the matmul), the fcproj matmul, and residual + the next LayerNorm
    /// (block l+1's ln1, or lnf after the last block). The batched forward and the KV-cache
    /// decoder both run it, with their own attention; `mark` records each op when profiling (the
    /// decoder passes a no-op).
    // x, ln1 (N,C) -> qkv (N,3C), atty, attproj, res2, ln2 (N,C), fch, fch_gelu (N,4C), fcproj, res3, ln_next (N,C)
    pub(crate) fn block(
        &self,
        l: usize,
        n: usize,
        r: &mut BlockRegions<T>,
        attend: impl FnOnce(&Region<T>, &mut Region<T>) -> Result<()>,
        mark: impl Fn(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (gpu, blas, c) = (&self.gpu, &self.blas, self.cfg.channels);
        let pl = |prm: Param, l: usize| self.params.slice(self.layout.get(prm).layer_range(l));
        let (w, bias) = (pl(Param::Qkvw, l), pl(Param::Qkvb, l));
        matmul_forward(gpu, blas, &mut r.qkv, &r.ln1, &w, Some(&bias), n, c, 3 * c, false)?;
        mark("matmul qkv")?;
        attend(&r.qkv, &mut r.atty)?;
        mark("attention")?;
        let (w, bias) = (pl(Param::AttProjw, l), pl(Param::AttProjb, l));
        matmul_forward(gpu, blas, &mut r.attproj, &r.atty, &w, Some(&bias), n, c, c, false)?;
        mark("matmul attproj")?;
        let (w, bias) = (pl(Param::Ln2w, l), pl(Param::Ln2b, l));
        let (res2, ln2, mean, rstd) = (&mut r.res2, &mut r.ln2, &mut r.ln2_mean, &mut r.ln2_rstd);
        residual_layernorm_forward(gpu, res2, ln2, mean, rstd, &r.x, &r.attproj, &w, &bias, n, c)?;
        mark("layernorm (+residual)")?;
        let (w, bias) = (pl(Param::Fcw, l), pl(Param::Fcb, l));
        if let (Some(pre), true) = (r.fch.as_mut(), self.gelu_fusion.forward()) {
            // --gelu-fusion forward|both: the GELU output and the pre-GELU values from one GEMM.
            matmul_forward_gelu_aux(gpu, blas, &mut r.fch_gelu, pre, &r.ln2, &w, &bias, n, c, 4 * c)?;
            mark("matmul fc + gelu")?;
        } else if let Some(pre) = r.fch.as_mut() {
            // Keep the pre-GELU values for the backward: GELU as its own kernel.
            matmul_forward(gpu, blas, pre, &r.ln2, &w, Some(&bias), n, c, 4 * c, false)?;
            mark("matmul fc")?;
            gelu_forward(gpu, &mut r.fch_gelu, pre, n * 4 * c)?;
            mark("gelu")?;
        } else {
            matmul_forward(gpu, blas, &mut r.fch_gelu, &r.ln2, &w, Some(&bias), n, c, 4 * c, true)?;
            mark("matmul fc + gelu")?;
        }
        let (w, bias) = (pl(Param::FcProjw, l), pl(Param::FcProjb, l));
        matmul_forward(gpu, blas, &mut r.fcproj, &r.fch_gelu, &w, Some(&bias), n, 4 * c, c, false)?;
        mark("matmul fcproj")?;
        // residual3 = residual2 + fcproj, normalised by the next block's ln1 or by lnf.
        let (w, bias) = if l + 1 < self.cfg.num_layers {
            (pl(Param::Ln1w, l + 1), pl(Param::Ln1b, l + 1))
        } else {
            let p = |prm: Param| self.params.slice(self.layout.get(prm).range());
            (p(Param::Lnfw), p(Param::Lnfb))
        };
        let (res3, ln, mean, rstd) = (&mut r.res3, &mut r.ln_next, &mut r.ln_next_mean, &mut r.ln_next_rstd);
        residual_layernorm_forward(gpu, res3, ln, mean, rstd, &r.res2, &r.fcproj, &w, &bias, n, c)?;
        mark("layernorm (+residual)")
    }

    /// The per-position losses of the last [`forward`](Self::forward) with targets, (B*T).
    pub fn losses(&self) -> Result<Vec<f32>> {
        let lay = &self.acts.as_ref().context("no forward has run")?.0;
        let region = self.act::<f32>(Act::Losses, 0);
        let mut out = vec![0.0f32; lay.b * lay.t];
        self.gpu.note_host_sync();
        self.gpu.stream().memcpy_dtoh(&region, &mut out).context("copying the losses back")?;
        Ok(out)
    }

    /// The logits over the real vocabulary of the last forward, (B*T, V).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let lay = &self.acts.as_ref().context("no forward has run")?.0;
        let (v, vp) = (self.cfg.vocab_size, self.cfg.padded_vocab_size);
        let region = self.act::<T>(Act::Logits, 0);
        let mut padded = vec![T::default(); lay.b * lay.t * vp];
        self.gpu.note_host_sync();
        self.gpu.stream().memcpy_dtoh(&region, &mut padded).context("copying the logits back")?;
        Ok(padded.chunks(vp).flat_map(|row| row[..v].iter().map(|x| x.to_f32())).collect())
    }

    /// Bytes of activations for a batch of `b` rows of `t` tokens.
    pub fn activation_bytes(cfg: &ModelConfig, b: usize, t: usize) -> usize {
        ActLayout::new(cfg, b, t, T::BYTES).bytes()
    }

    /// Bytes of evaluation activations for a batch of `b` rows of `t` tokens with this model's
    /// attention and kernels modes.
    pub fn activation_bytes_here(&self, b: usize, t: usize) -> usize {
        ActLayout::build(&self.cfg, b, t, T::BYTES, false, self.attention, self.gpu.kernels()).bytes()
    }
}

/// The backward's activation gradients (of the activations' type `T`) and its f32 reduction
/// scratch, carved from one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grad {
    Dresidual,  // (B,T,C)
    Dln,        // (B,T,C)
    Datty,      // (B,T,C)
    Dqkv,       // (B,T,3C)
    Dfch,       // (B,T,4C)
    DfchGelu,   // (B,T,4C)
    AttScratch, // materialised attention's backward scratch (empty with flash)
    LnScratch,  // f32
    MmScratch,  // f32
    FlashD,     // f32 (B,NH,T): flash attention's rowsum(dout * out) (empty otherwise)
}

impl Grad {
    fn is_f32(self) -> bool {
        matches!(self, Grad::LnScratch | Grad::MmScratch | Grad::FlashD)
    }
}

/// (B, T, allocation, (byte offset, len) per [`Grad`]).
type GradScratch = (usize, usize, CudaSlice<u8>, Vec<(usize, usize)>);

/// Elements of each [`Grad`] for a batch of (b, t), in declaration order.
fn grad_sizes(cfg: &ModelConfig, b: usize, t: usize, attention: Attention) -> [(Grad, usize); 10] {
    let (n, c) = (b * t, cfg.channels);
    let flash = attention == Attention::Flash;
    [
        (Grad::Dresidual, n * c),
        (Grad::Dln, n * c),
        (Grad::Datty, n * c),
        (Grad::Dqkv, n * 3 * c),
        (Grad::Dfch, n * 4 * c),
        (Grad::DfchGelu, n * 4 * c),
        (Grad::AttScratch, if flash { 0 } else { attention::attention_backward_scratch_len(b, t, c, cfg.num_heads) }),
        (Grad::LnScratch, super::layernorm::layernorm_backward_scratch_len(n, c)),
        (Grad::MmScratch, mm_scratch_len(n, c)),
        (Grad::FlashD, if flash { flash_attention::lse_len(b, t, cfg.num_heads) } else { 0 }),
    ]
}

/// Elements of the matmul backward's f32 scratch (`Grad::MmScratch`) for N = B*T rows of width C:
/// the bias gradient of the widest matmul with a bias (fc, OC = 4C; qkv has 3C, attproj and fcproj
/// C; the logits matmul has no bias) computed either way ([`BiasGrad`]: the reduction's chunk
/// partials, or the OC sums the BGRADB epilogue writes), and at least one element. The reduction
/// needs the most for every N >= 1, so this is the size the scratch always had.
fn mm_scratch_len(n: usize, c: usize) -> usize {
    let widest = 4 * c;
    let need = |g| super::matmul::bias_grad_scratch_len(n, widest, g);
    need(BiasGrad::Reduce).max(need(BiasGrad::Epilogue)).max(1)
}

/// Bytes of the backward's activation gradients and scratch for a batch of (b, t) with activations
/// of `elem` bytes and attention computed as `attention` says (what
/// [`GpuModel::forward_backward`] allocates).
pub fn grad_scratch_bytes(cfg: &ModelConfig, b: usize, t: usize, elem: usize, attention: Attention) -> usize {
    grad_sizes(cfg, b, t, attention)
        .iter()
        .map(|&(g, len)| (len * if g.is_f32() { 4 } else { elem }).div_ceil(256) * 256)
        .sum()
}

/// Gradients, AdamW moments and (bf16) master weights, all f32 in the parameter layout, and the
/// backward's scratch.
struct Training {
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// bf16 training: the f32 master weights; the model's bf16 parameters are their working copy,
    /// rewritten from them by every AdamW step with stochastic rounding.
    master: Option<CudaSlice<f32>>,
    norm_scratch: CudaSlice<f64>,
    scratch: Option<GradScratch>,
    /// `--sync step`'s buffers, for the (B,T) being trained.
    step: Option<StepBuffers>,
}

/// What [`StepSync::Step`] allocates once per (B,T): pinned host staging for a micro-batch's tokens
/// and the embedding backward's plan, their device copy, and the step's record on the device.
struct StepBuffers {
    b: usize,
    t: usize,
    /// `[inputs (B*T) | targets (B*T) | plan ints]`: two, so the host fills one while the device may
    /// still be copying out of the other.
    pinned: [PinnedHostSlice<i32>; 2],
    /// Recorded after the copies out of `pinned[k]`; waited on before `pinned[k]` is written again.
    copied: [CudaEvent; 2],
    /// The staging buffer the next micro-batch uses.
    next: usize,
    /// The embedding backward's plan of the staged micro-batch, taken by the backward.
    plan: Option<BackwardPlan>,
    /// The plan's ints on the device, and the balanced backward's partial sums.
    d_plan: CudaSlice<i32>,
    partials: CudaSlice<f32>,
    /// [loss, norm, clip factor, applied] (`gpu::adamw::STEP_STATE_LEN`) of the step being queued.
    state: CudaSlice<f64>,
    /// `gpu::adamw::adamw_table` on the device, and whether its offsets allow the `_vec` kernels.
    table: CudaSlice<i64>,
    packed: bool,
}

/// One optimizer step for [`GpuModel::train_step`]: `accum` micro-batches of (batch, seq), each
/// loss scaled by `dloss`, gradients clipped to `max_norm` (0: no clipping), then AdamW step `t`
/// (the count after it) at learning rate `lr`. `poison` makes the step's loss NaN (a test hook:
/// the step is then skipped, as a real non-finite loss would be).
#[derive(Clone, Copy, Debug)]
pub struct TrainStep {
    pub batch: usize,
    pub seq: usize,
    pub accum: usize,
    pub dloss: f32,
    pub max_norm: f64,
    pub adam: crate::cpu::adamw::AdamWConfig,
    pub t: u64,
    pub lr: f32,
    pub poison: bool,
}

/// Whether `T` is bf16 (the only 2-byte [`Float`]).
fn is_bf16<T: Float>() -> bool {
    T::BYTES == 2
}

/// Training on the GPU in fp32 or bf16: the backward mirrors `cpu::gpt::backward` op for op.
/// In bf16, activations and their gradients are bf16 (every kernel computes in f32), while the
/// parameter gradients, AdamW moments and master weights are f32.
impl<T: Float> GpuModel<T> {
    /// Allocates zeroed gradients and AdamW moments and sets the weights to `weights` (f32, in
    /// `ParamLayout` order) as they stand after `step` AdamW updates. In bf16 they become the f32
    /// master copy, and the bf16 working copy is rounded from them exactly as AdamW step `step`
    /// would have written it, so a resumed run continues bit for bit.
    pub fn enable_training(&mut self, weights: &[f32], step: u64) -> Result<()> {
        let n = self.layout.total;
        ensure!(weights.len() == n, "{} weights given, the model needs {n}", weights.len());
        let stream = Arc::clone(self.gpu.stream());
        let master = if is_bf16::<T>() {
            let master = stream.clone_htod(weights).context("uploading the master weights")?;
            let (ptr, _guard) = self.params.device_ptr_mut(&stream);
            let mut copy = Region::<half::bf16>::new(ptr, n, Arc::clone(&stream));
            super::adamw::params_round_bf16(&self.gpu, &mut copy, &master, n, super::adamw::sr_seed(step))?;
            Some(master)
        } else {
            let exact: Vec<T> = weights.iter().map(|&x| T::from_f32(x)).collect();
            stream.memcpy_htod(&exact, &mut self.params).context("uploading the weights")?;
            None
        };
        self.train = Some(Training {
            grads: stream.alloc_zeros(n).context("allocating gradients")?,
            m: stream.alloc_zeros(n).context("allocating AdamW moments")?,
            v: stream.alloc_zeros(n).context("allocating AdamW moments")?,
            master,
            norm_scratch: stream.alloc_zeros(super::adamw::global_norm_scratch_len())?,
            scratch: None,
            step: None,
        });
        Ok(())
    }

    /// The weights the optimizer updates, on the host as f32: the master weights in bf16 training,
    /// else the parameters (what a checkpoint stores).
    pub fn download_weights(&self) -> Result<Vec<f32>> {
        match self.train.as_ref().and_then(|t| t.master.as_ref()) {
            Some(master) => {
                Ok(self.gpu.note_host_sync().stream().clone_dtoh(master).context("copying the master weights back")?)
            }
            None => self.download_params(),
        }
    }

    fn training(&self) -> Result<&Training> {
        self.train.as_ref().context("call enable_training first")
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        let tr = self.train.as_mut().context("call enable_training first")?;
        self.gpu.stream().memset_zeros(&mut tr.grads)?;
        self.mark("memset")
    }

    fn ensure_grad_scratch(&mut self, b: usize, t: usize) -> Result<()> {
        let cfg = self.cfg;
        let tr = self.train.as_mut().context("call enable_training first")?;
        if tr.scratch.as_ref().is_some_and(|s| s.0 == b && s.1 == t) {
            // set_attention drops the scratch when the mode changes, so a kept one matches it.
            return Ok(());
        }
        tr.scratch = None;
        // A captured graph points into the scratch being replaced.
        (self.graph, self.graph_warm) = (None, None);
        let mut offsets = Vec::new();
        let mut off = 0;
        for (g, len) in grad_sizes(&cfg, b, t, self.attention) {
            offsets.push((off, len));
            off += (len * if g.is_f32() { 4 } else { T::BYTES }).div_ceil(256) * 256;
        }
        let buf = self.gpu.stream().alloc_zeros::<u8>(off).context("allocating the backward's scratch")?;
        tr.scratch = Some((b, t, buf, offsets));
        Ok(())
    }

    /// A region of the backward's scratch: of type `T` for activation gradients, f32 for reductions.
    fn grad<U>(&self, g: Grad) -> Region<U> {
        assert_eq!(std::mem::size_of::<U>(), if g.is_f32() { 4 } else { T::BYTES }, "{g:?} has another element type");
        let (_, _, buf, offsets) = self.train.as_ref().and_then(|t| t.scratch.as_ref()).expect("scratch allocated");
        let (off, len) = offsets[g as usize];
        let (base, _guard) = buf.device_ptr(self.gpu.stream());
        Region::new(base + off as u64, len, Arc::clone(self.gpu.stream()))
    }

    /// Layer `l`'s gradient of `p` (the whole tensor for non-layer parameters).
    fn dparam(&self, p: Param, l: usize) -> Region<f32> {
        let spec = self.layout.get(p);
        let r = if p.per_layer() { spec.layer_range(l) } else { spec.range() };
        let (base, _guard) = self.training().expect("training enabled").grads.device_ptr(self.gpu.stream());
        Region::new(base + (r.start * 4) as u64, r.len(), Arc::clone(self.gpu.stream()))
    }

    fn zero(&self, g: Grad) -> Result<()> {
        self.gpu.stream().memset_zeros(&mut self.grad::<T>(g))?;
        self.mark("memset")
    }

    /// Readies `g`, an activation gradient with one producer (dln, datty, dqkv, dfch, dfch_gelu),
    /// for that producer and says how it is to write `g`: with `--kernels vector` it overwrites
    /// `g`, so nothing is queued; otherwise (the verified path) `g` is zeroed here and the
    /// producer accumulates into it. (dresidual has several producers that add into it, the
    /// LayerNorm backwards, and is always zeroed.)
    fn ready(&self, g: Grad) -> Result<Dinp> {
        if self.gpu.kernels() == Kernels::Vector {
            return Ok(Dinp::Overwrite);
        }
        self.zero(g)?;
        Ok(Dinp::Accumulate)
    }

    /// `matmul_backward` for weight `w` and bias `bias` of layer `l`, marked as `name`: dinp
    /// readied by [`ready`](Self::ready) (zeroed and accumulated into, or overwritten), the
    /// parameter gradients accumulated.
    #[allow(clippy::too_many_arguments)]
    fn matmul_grads(
        &mut self,
        name: &'static str,
        dinp: Grad,
        w: Param,
        bias: Option<Param>,
        l: usize,
        dout: &Region<T>,
        inp: &Region<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let store = self.ready(dinp)?;
        self.matmul_grads_into(dinp, store, None, w, bias, l, dout, inp, n, c, oc)?;
        self.mark(name)
    }

    /// The backward of the matmul of weight `w` and bias `bias` of layer `l` (unmarked): dinp
    /// written as `store` says, the parameter gradients accumulated. With `pre_gelu` (the GELU's
    /// input, when `inp` is its output; `store` must then be Overwrite) dinp is the gradient of
    /// `pre_gelu` instead, the GELU backward applied in the dinp GEMM (`matmul_backward_dgelu`).
    #[allow(clippy::too_many_arguments)]
    fn matmul_grads_into(
        &mut self,
        dinp: Grad,
        store: Dinp,
        pre_gelu: Option<&Region<T>>,
        w: Param,
        bias: Option<Param>,
        l: usize,
        dout: &Region<T>,
        inp: &Region<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let (mut din, mut dw) = (self.grad::<T>(dinp), self.dparam(w, l));
        let mut scratch = self.grad::<f32>(Grad::MmScratch);
        let weight = self.params.slice(self.layout.get(w).layer_range(l));
        let bias_range = bias.map(|b| self.layout.get(b).layer_range(l));
        let tr = self.train.as_mut().expect("training enabled");
        let mut db = bias_range.map(|r| tr.grads.slice_mut(r));
        let (gpu, blas, bias_grad) = (&self.gpu, &self.blas, self.bias_grad);
        super::matmul::backward_gemms(
            gpu,
            blas,
            &mut din,
            &mut dw,
            db.as_mut(),
            &mut scratch,
            dout,
            inp,
            &weight,
            pre_gelu,
            n,
            c,
            oc,
            store,
            bias_grad,
        )
    }

    /// One micro-batch: forward in training mode and backward, accumulating `dloss`-scaled gradients
    /// of the summed loss into the gradient buffer (as `cpu::gpt::backward`). Returns the mean loss.
    // inputs (B,T), targets (B,T) -> grads +=, mean loss
    pub fn forward_backward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, dloss: f32) -> Result<f64> {
        self.forward_backward_queued(inputs, targets, b, t, dloss)?;
        let losses = GpuModel::losses(self)?;
        self.mark("loss readback")?;
        Ok(losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64)
    }

    /// [`forward_backward`](Self::forward_backward) without reading the loss back: everything is
    /// queued, the per-position losses stay in the activations.
    fn forward_backward_queued(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        dloss: f32,
    ) -> Result<()> {
        self.forward_backward_layers(inputs, targets, b, t, dloss)?;
        self.embedding_grads(inputs, b, t)
    }

    /// The forward and the backward down to the gradient of the embedding's output (in
    /// `Grad::Dresidual`): everything but the embedding backward, whose launch shape depends on the
    /// tokens. Under `--sync graph` this is what a CUDA graph captures: it allocates nothing and
    /// never waits for the device once the buffers for (b, t) exist and the tokens are staged.
    fn forward_backward_layers(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        dloss: f32,
    ) -> Result<()> {
        self.training()?;
        self.forward_impl(inputs, Some(targets), b, t, Some(dloss))?;
        self.ensure_grad_scratch(b, t)?;
        let cfg = self.cfg;
        let (c, nh, n, nl, vp) = (cfg.channels, cfg.num_heads, b * t, cfg.num_layers, cfg.padded_vocab_size);
        let lnb = |m: &Self, dinp: Grad, w: Param, bias: Param, l: usize, inp: Region<T>, mean: Act, rstd: Act| {
            let (mut di, mut dw, mut db) = (m.grad::<T>(dinp), m.dparam(w, l), m.dparam(bias, l));
            let (mut scratch, dout) = (m.grad::<f32>(Grad::LnScratch), m.grad::<T>(Grad::Dln));
            let weight = m.params.slice(m.layout.get(w).layer_range(l));
            let li = if w == Param::Lnfw { 0 } else { l };
            let (mu, rs) = (m.act::<f32>(mean, li), m.act::<f32>(rstd, li));
            super::layernorm::layernorm_backward(
                &m.gpu,
                &mut di,
                &mut dw,
                &mut db,
                &mut scratch,
                &dout,
                &inp,
                &weight,
                &mu,
                &rs,
                n,
                c,
            )?;
            m.mark("layernorm bwd")
        };
        // Classifier: the logits already hold dlogits; dlnf into Dln, dwte +=.
        self.zero(Grad::Dresidual)?;
        let (logits, lnf) = (self.act::<T>(Act::Logits, 0), self.act::<T>(Act::Lnf, 0));
        self.matmul_grads("matmul bwd logits", Grad::Dln, Param::Wte, None, 0, &logits, &lnf, n, c, vp)?;
        lnb(
            self,
            Grad::Dresidual,
            Param::Lnfw,
            Param::Lnfb,
            0,
            self.act(Act::Residual3, nl - 1),
            Act::LnfMean,
            Act::LnfRstd,
        )?;
        for l in (0..nl).rev() {
            let residual = if l == 0 { self.act::<T>(Act::Encoded, 0) } else { self.act(Act::Residual3, l - 1) };
            let dres = self.grad::<T>(Grad::Dresidual);
            let fch_gelu = self.act::<T>(Act::FchGelu, l);
            let dfch = if self.gelu_fusion.backward() {
                // --gelu-fusion both: dfch = (dres @ fcproj_w) * gelu'(fch) from the one GEMM,
                // overwritten whatever --kernels says (DGELU cannot accumulate): no zeroing of
                // dfch, no dfch_gelu, no gelu_backward.
                let fch = self.act::<T>(Act::Fch, l);
                let (fcproj_w, fcproj_b) = (Param::FcProjw, Some(Param::FcProjb));
                let (dfch, store) = (Grad::Dfch, Dinp::Overwrite);
                self.matmul_grads_into(dfch, store, Some(&fch), fcproj_w, fcproj_b, l, &dres, &fch_gelu, n, 4 * c, c)?;
                self.mark("matmul bwd fcproj + dgelu")?;
                self.grad::<T>(Grad::Dfch)
            } else {
                self.matmul_grads(
                    "matmul bwd fcproj",
                    Grad::DfchGelu,
                    Param::FcProjw,
                    Some(Param::FcProjb),
                    l,
                    &dres,
                    &fch_gelu,
                    n,
                    4 * c,
                    c,
                )?;
                let store = self.ready(Grad::Dfch)?;
                let (mut dfch, fch, dfch_gelu) =
                    (self.grad::<T>(Grad::Dfch), self.act::<T>(Act::Fch, l), self.grad::<T>(Grad::DfchGelu));
                super::gelu::gelu_backward(&self.gpu, &mut dfch, &fch, &dfch_gelu, n * 4 * c, store)?;
                self.mark("gelu bwd")?;
                dfch
            };
            let ln2 = self.act::<T>(Act::Ln2, l);
            self.matmul_grads("matmul bwd fc", Grad::Dln, Param::Fcw, Some(Param::Fcb), l, &dfch, &ln2, n, c, 4 * c)?;
            lnb(
                self,
                Grad::Dresidual,
                Param::Ln2w,
                Param::Ln2b,
                l,
                self.act(Act::Residual2, l),
                Act::Ln2Mean,
                Act::Ln2Rstd,
            )?;
            let atty = self.act::<T>(Act::Atty, l);
            self.matmul_grads(
                "matmul bwd attproj",
                Grad::Datty,
                Param::AttProjw,
                Some(Param::AttProjb),
                l,
                &dres,
                &atty,
                n,
                c,
                c,
            )?;
            let (mut dqkv, datty, qkv) =
                (self.grad::<T>(Grad::Dqkv), self.grad::<T>(Grad::Datty), self.act::<T>(Act::Qkv, l));
            if self.attention == Attention::Flash {
                // Writes every element of dqkv (no accumulation), so no zeroing first.
                let (atty, lse, mut d) =
                    (self.act::<T>(Act::Atty, l), self.act::<f32>(Act::Lse, l), self.grad::<f32>(Grad::FlashD));
                flash_attention::flash_attention_backward(
                    &self.gpu, &mut dqkv, &datty, &qkv, &atty, &lse, &mut d, b, t, c, nh,
                )?;
            } else {
                let store = self.ready(Grad::Dqkv)?;
                let (mut scratch, att) = (self.grad::<T>(Grad::AttScratch), self.act::<T>(Act::Att, l));
                attention::attention_backward(
                    &self.gpu,
                    &self.blas,
                    &mut dqkv,
                    &mut scratch,
                    &datty,
                    &qkv,
                    &att,
                    b,
                    t,
                    c,
                    nh,
                    store,
                )?;
            }
            self.mark("attention bwd")?;
            let ln1 = self.act::<T>(Act::Ln1, l);
            self.matmul_grads(
                "matmul bwd qkv",
                Grad::Dln,
                Param::Qkvw,
                Some(Param::Qkvb),
                l,
                &dqkv,
                &ln1,
                n,
                c,
                3 * c,
            )?;
            lnb(self, Grad::Dresidual, Param::Ln1w, Param::Ln1b, l, residual, Act::Ln1Mean, Act::Ln1Rstd)?;
        }
        Ok(())
    }

    /// The embedding backward of `inputs` (B,T) from `Grad::Dresidual` into dwte and dwpe: from the
    /// plan staged with the tokens under `--sync step|graph`, else planned and uploaded here.
    fn embedding_grads(&mut self, inputs: &[u32], b: usize, t: usize) -> Result<()> {
        let c = self.cfg.channels;
        let (mut dwte, mut dwpe, dres) =
            (self.dparam(Param::Wte, 0), self.dparam(Param::Wpe, 0), self.grad::<T>(Grad::Dresidual));
        let staged = self.train.as_mut().and_then(|tr| tr.step.as_mut()).and_then(|sb| sb.plan.take().map(|p| (p, sb)));
        if let Some((plan, sb)) = staged {
            // --sync step|graph: the plan went up with the tokens (stage_tokens).
            let gpu = &self.gpu;
            let partials = Some(&mut sb.partials);
            super::embedding::embedding_backward_planned(
                gpu, &mut dwte, &mut dwpe, &dres, &plan, &sb.d_plan, partials, b, t, c,
            )?;
        } else if self.gpu.kernels() == Kernels::Vector {
            // --kernels vector also takes the balanced backward (frequent tokens cut into chunks),
            // which sums heavy tokens in another (fixed) order: both are deterministic.
            super::embedding::embedding_backward_balanced(&self.gpu, &mut dwte, &mut dwpe, &dres, inputs, b, t, c)?;
        } else {
            super::embedding::embedding_backward(&self.gpu, &mut dwte, &mut dwpe, &dres, inputs, b, t, c)?;
        }
        self.mark("embedding bwd")
    }

    /// [`forward_backward_layers`](Self::forward_backward_layers) for a micro-batch of `s`, under
    /// `--sync graph` as a CUDA graph: the first micro-batch at a shape runs as it is (it allocates
    /// the buffers and plans the cuBLASLt calls), the second is captured, and from then on the
    /// graph is replayed. The graph's kernels read the token buffers the staging just filled and
    /// write the same buffers an uncaptured run writes, so the bits are the same. While profiling
    /// (an event after every op) nothing is captured.
    fn layers_replayed(&mut self, inputs: &[u32], targets: &[u32], s: &TrainStep) -> Result<()> {
        let key = GraphKey {
            b: s.batch,
            t: s.seq,
            dloss: s.dloss.to_bits(),
            attention: self.attention,
            kernels: self.gpu.kernels(),
            gelu_fusion: self.gelu_fusion,
            bias_grad: self.bias_grad,
        };
        if self.sync != StepSync::Graph || self.marks.is_some() {
            return self.forward_backward_layers(inputs, targets, s.batch, s.seq, s.dloss);
        }
        if let Some((k, graph)) = &self.graph {
            if *k == key {
                return graph.launch().context("replaying the micro-batch's CUDA graph");
            }
        }
        if self.graph_warm != Some(key) {
            self.forward_backward_layers(inputs, targets, s.batch, s.seq, s.dloss)?;
            self.graph_warm = Some(key);
            return Ok(());
        }
        self.graph = None;
        let stream = Arc::clone(self.gpu.stream());
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("starting a CUDA graph capture")?;
        let captured = self.forward_backward_layers(inputs, targets, s.batch, s.seq, s.dloss);
        // The capture ends whatever happened, so the stream is usable again.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        captured?;
        let graph = graph.context("ending the CUDA graph capture")?.context("the CUDA graph capture is empty")?;
        graph.launch().context("launching the micro-batch's CUDA graph")?;
        self.graph = Some((key, graph));
        Ok(())
    }

    /// `--sync step`: the tokens (B,T) of a training micro-batch and the embedding backward's plan
    /// of them go up from pinned memory allocated once, without waiting for the queued work (the
    /// host only waits, if at all, for the copies out of the same staging buffer two micro-batches
    /// ago).
    fn stage_tokens(&mut self, inputs: &[u32], targets: &[u32]) -> Result<()> {
        self.check_tokens(inputs, targets)?;
        let n = inputs.len();
        let lay = &self.acts.as_ref().context("activations allocated by ensure_acts")?.0;
        let (b, t) = (lay.b, lay.t);
        self.ensure_step_buffers(b, t)?;
        let plan = BackwardPlan::new(inputs, self.gpu.kernels() == Kernels::Vector)?;
        let stream = Arc::clone(self.gpu.stream());
        let sb = self.train.as_mut().and_then(|tr| tr.step.as_mut()).context("step buffers allocated above")?;
        let k = sb.next;
        sb.next ^= 1;
        sb.copied[k].synchronize().context("waiting for a token upload")?;
        let host = sb.pinned[k].as_mut_slice().context("opening the pinned token buffer")?;
        ensure!(
            host.len() >= 2 * n + plan.ints.len() && sb.d_plan.len() >= plan.ints.len(),
            "the staging buffers for {b} x {t} tokens are too small for this batch's plan"
        );
        for (dst, &src) in host.iter_mut().zip(inputs.iter().chain(targets)) {
            *dst = src as i32;
        }
        host[2 * n..2 * n + plan.ints.len()].copy_from_slice(&plan.ints);
        let copies = [
            (self.inputs.as_mut().context("allocated")?.device_ptr_mut(&stream), 0..n),
            (self.targets.as_mut().context("allocated")?.device_ptr_mut(&stream), n..2 * n),
            (sb.d_plan.device_ptr_mut(&stream), 2 * n..2 * n + plan.ints.len()),
        ];
        self.gpu.ctx().bind_to_thread().context("binding the CUDA context")?;
        for ((dst, _guard), range) in &copies {
            // SAFETY: `dst` is a live device buffer of at least range.len() i32 (inputs and targets
            // hold B*T, d_plan was checked above), guarded until the copies are queued; the source
            // is pinned memory that is not written again before `copied[k]`, recorded below, has
            // been reached.
            unsafe { cudarc::driver::result::memcpy_htod_async(*dst, &host[range.clone()], stream.cu_stream()) }
                .context("uploading a micro-batch's tokens")?;
        }
        drop(copies);
        sb.copied[k].record(&stream).context("recording the token upload")?;
        sb.plan = Some(plan);
        Ok(())
    }

    /// Allocates `--sync step`'s buffers for batches of (b, t), reusing them when they fit.
    fn ensure_step_buffers(&mut self, b: usize, t: usize) -> Result<()> {
        let tr = self.train.as_mut().context("call enable_training first")?;
        if tr.step.as_ref().is_some_and(|sb| sb.b == b && sb.t == t) {
            return Ok(());
        }
        tr.step = None;
        let (n, c) = (b * t, self.cfg.channels);
        let len = 2 * n + BackwardPlan::max_ints(n);
        let (ctx, stream) = (self.gpu.ctx(), self.gpu.stream());
        // SAFETY: the staging buffers are written (tokens, plan) before any copy reads them.
        let pinned = unsafe { [ctx.alloc_pinned::<i32>(len)?, ctx.alloc_pinned::<i32>(len)?] };
        let copied = [ctx.new_event(None)?, ctx.new_event(None)?];
        let (table, packed) = super::adamw::adamw_table(&self.layout)?;
        tr.step = Some(StepBuffers {
            b,
            t,
            pinned,
            copied,
            next: 0,
            plan: None,
            d_plan: stream.alloc_zeros(BackwardPlan::max_ints(n)).context("allocating the token plan")?,
            partials: stream.alloc_zeros(BackwardPlan::max_partials(n, c)).context("allocating partial sums")?,
            state: stream.alloc_zeros(super::adamw::STEP_STATE_LEN)?,
            table: stream.clone_htod(&table).context("uploading the AdamW table")?,
            packed,
        });
        Ok(())
    }

    /// One optimizer step: `s.accum` micro-batches, each filled by `next_batch(inputs, targets)`,
    /// forward and backward into the zeroed gradients, the global norm and clipping, then AdamW,
    /// unless the loss or the norm is not finite (the step is then skipped, the weights untouched).
    ///
    /// [`StepSync::Micro`] reads each micro-batch's loss and the norm back and decides on the host;
    /// [`StepSync::Step`] queues the whole step and reads one record back at its end. Both update
    /// the weights to the same bits; the loss differs only in the order its f64 sum is taken.
    pub fn train_step(
        &mut self,
        next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]),
        s: &TrainStep,
    ) -> Result<StepOutcome> {
        let n = s.batch * s.seq;
        let (mut inputs, mut targets) = std::mem::take(&mut self.batch);
        inputs.resize(n, 0);
        targets.resize(n, 0);
        let outcome = match self.sync {
            StepSync::Micro => self.step_on_host(next_batch, s, &mut inputs, &mut targets),
            StepSync::Step | StepSync::Graph => self.step_on_device(next_batch, s, &mut inputs, &mut targets),
        };
        self.batch = (inputs, targets);
        outcome
    }

    fn step_on_host(
        &mut self,
        next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]),
        s: &TrainStep,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<StepOutcome> {
        self.zero_grads()?;
        let mut loss = 0.0;
        for _ in 0..s.accum {
            next_batch(inputs, targets);
            loss += self.forward_backward(inputs, targets, s.batch, s.seq, s.dloss)?;
        }
        let loss = if s.poison { f64::NAN } else { loss / s.accum as f64 };
        let outcome = StepOutcome::decide(loss, self.clip_grad_norm(s.max_norm)?);
        if outcome.applied {
            self.adamw_update(s.adam, s.t, s.lr)?;
        }
        Ok(outcome)
    }

    fn step_on_device(
        &mut self,
        next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]),
        s: &TrainStep,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<StepOutcome> {
        self.zero_grads()?;
        self.ensure_acts(s.batch, s.seq, true)?;
        self.ensure_step_buffers(s.batch, s.seq)?;
        {
            let sb = self.train.as_mut().and_then(|tr| tr.step.as_mut()).context("step buffers")?;
            self.gpu.stream().memset_zeros(&mut sb.state)?;
        }
        self.ensure_grad_scratch(s.batch, s.seq)?;
        for _ in 0..s.accum {
            next_batch(inputs, targets);
            self.stage_tokens(inputs, targets)?;
            self.layers_replayed(inputs, targets, s)?;
            self.embedding_grads(inputs, s.batch, s.seq)?;
            let losses = self.act::<f32>(Act::Losses, 0);
            let sb = self.train.as_mut().and_then(|tr| tr.step.as_mut()).context("step buffers")?;
            super::adamw::step_loss_accumulate(&self.gpu, &mut sb.state, &losses, s.batch * s.seq)?;
            self.mark("loss sum")?;
        }
        let n = self.layout.total;
        let stream = Arc::clone(self.gpu.stream());
        let tr = self.train.as_mut().context("call enable_training first")?;
        let sb = tr.step.as_mut().context("step buffers")?;
        let accum = s.accum;
        super::adamw::step_decide(
            &self.gpu,
            &mut sb.state,
            &tr.grads,
            &mut tr.norm_scratch,
            n,
            s.max_norm,
            accum,
            s.poison,
        )?;
        self.mark("grad norm")?;
        let (mut weights, mut copy) = self.optimizer_targets()?;
        let tr = self.train.as_mut().context("call enable_training first")?;
        let sb = tr.step.as_ref().context("step buffers")?;
        let (g, m, v) = (&tr.grads, &mut tr.m, &mut tr.v);
        let copy = copy.as_mut().map(|c| c as &mut dyn DevicePtrMut<half::bf16>);
        let (table, state, packed) = (&sb.table, &sb.state, sb.packed);
        super::adamw::adamw_step(
            &self.gpu,
            &self.layout,
            table,
            packed,
            state,
            &mut weights,
            g,
            m,
            v,
            s.adam,
            s.t,
            s.lr,
            copy,
        )?;
        self.mark("adamw")?;
        let sb = self.train.as_ref().and_then(|tr| tr.step.as_ref()).context("step buffers")?;
        let mut state = [0.0f64; super::adamw::STEP_STATE_LEN];
        self.gpu.note_host_sync();
        stream.memcpy_dtoh(&sb.state, &mut state).context("reading the step's loss and norm back")?;
        Ok(StepOutcome::from_state(&state))
    }

    /// Clips the gradient to `max_norm` (0 disables) and returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let n = self.layout.total;
        let tr = self.train.as_mut().context("call enable_training first")?;
        let norm = super::adamw::clip_grad_norm(&self.gpu, &mut tr.grads, &mut tr.norm_scratch, n, max_norm)?;
        self.mark("grad norm")?;
        Ok(norm)
    }

    /// One AdamW update; `t` counts updates including this one.
    pub fn adamw_update(&mut self, cfg: crate::cpu::adamw::AdamWConfig, t: u64, lr: f32) -> Result<()> {
        let (mut weights, mut copy) = self.optimizer_targets()?;
        let tr = self.train.as_mut().context("call enable_training first")?;
        let (g, m, v) = (&tr.grads, &mut tr.m, &mut tr.v);
        let copy = copy.as_mut().map(|c| c as &mut dyn DevicePtrMut<half::bf16>);
        super::adamw::adamw_update(&self.gpu, &self.layout, &mut weights, g, m, v, cfg, t, lr, copy)?;
        self.mark("adamw")
    }

    /// What AdamW writes: the f32 weights (the master copy in bf16 training, else the parameters)
    /// and, in bf16 training, the bf16 working copy (the parameters).
    fn optimizer_targets(&mut self) -> Result<(Region<f32>, Option<Region<half::bf16>>)> {
        let n = self.layout.total;
        let stream = self.gpu.stream();
        let params = self.params.device_ptr_mut(stream).0;
        let tr = self.train.as_mut().context("call enable_training first")?;
        Ok(match tr.master.as_mut() {
            Some(master) => {
                let master = master.device_ptr_mut(stream).0;
                (Region::new(master, n, Arc::clone(stream)), Some(Region::new(params, n, Arc::clone(stream))))
            }
            None => (Region::new(params, n, Arc::clone(stream)), None),
        })
    }

    /// The AdamW moments (m, v) on the host, for a checkpoint.
    pub fn download_moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let tr = self.training()?;
        let stream = self.gpu.note_host_sync().stream();
        Ok((stream.clone_dtoh(&tr.m)?, stream.clone_dtoh(&tr.v)?))
    }

    /// Restores AdamW moments saved in a checkpoint.
    pub fn upload_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        let n = self.layout.total;
        ensure!(m.len() == n && v.len() == n, "moments hold {} and {} values; the model needs {n}", m.len(), v.len());
        let tr = self.train.as_mut().context("call enable_training first")?;
        self.gpu.stream().memcpy_htod(m, &mut tr.m)?;
        self.gpu.stream().memcpy_htod(v, &mut tr.v)?;
        Ok(())
    }

    /// The gradient buffer on the host (parameter layout).
    pub fn download_grads(&self) -> Result<Vec<f32>> {
        Ok(self.gpu.note_host_sync().stream().clone_dtoh(&self.training()?.grads)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matmul scratch holds the bias gradient of every matmul with a bias (OC = C, 3C, 4C)
    /// computed either way (`--bias-grad reduce|epilogue`), and is the size it was before the
    /// epilogue existed (the reduction's chunk partials for OC = 4C, at least one element), so the
    /// default allocates exactly what it did.
    #[test]
    fn matmul_scratch_serves_both_bias_gradients() {
        use super::super::matmul::{bias_grad_scratch_len, matmul_backward_scratch_len};
        for cfg in [ModelConfig::preset("tiny").unwrap(), ModelConfig::preset("gpt2-124m").unwrap()] {
            let c = cfg.channels;
            for (b, t) in [(1, 1), (1, 7), (2, 128), (1, 256), (1, 257), (3, 300), (16, 1024), (64, 1024)] {
                let n = b * t;
                let sizes = grad_sizes(&cfg, b, t, Attention::Materialized);
                let (g, len) = sizes[Grad::MmScratch as usize];
                assert_eq!(g, Grad::MmScratch);
                assert_eq!(len, matmul_backward_scratch_len(n, 4 * c).max(1), "{cfg} B={b} T={t}: the size changed");
                for oc in [c, 3 * c, 4 * c] {
                    for choice in [BiasGrad::Reduce, BiasGrad::Epilogue] {
                        let need = bias_grad_scratch_len(n, oc, choice);
                        assert!(need <= len, "{cfg} B={b} T={t} OC={oc} {choice}: needs {need} > {len}");
                    }
                }
                assert_eq!(bias_grad_scratch_len(n, 4 * c, BiasGrad::Epilogue), 4 * c);
            }
        }
        assert_eq!(bias_grad_scratch_len(0, 64, BiasGrad::Epilogue), 0);
        assert_eq!(bias_grad_scratch_len(300, 64, BiasGrad::Reduce), 2 * 64);
    }
}
