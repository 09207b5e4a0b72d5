//! Model shape (`ModelConfig`) and where every parameter tensor lives in the flat buffer (`ParamLayout`).
//!
//! Parameters, gradients and both AdamW moments are one flat buffer each, all with this layout; CPU, GPU
//! and checkpoint code find tensors only through it. The 16 tensors follow llm.c's order and shapes;
//! weights are stored (out, in), row-major, output dimension first.

use std::fmt;

/// GPT-2 BPE vocabulary size (r50k_base): 50,256 merges plus `<|endoftext|>`.
pub const VOCAB_SIZE: usize = 50257;
/// Vocabulary padded to a multiple of 128 for fast matmuls; rows past `VOCAB_SIZE` stay zero.
pub const PADDED_VOCAB_SIZE: usize = 50304;
/// The `<|endoftext|>` token that separates documents.
pub const EOT_TOKEN: u32 = 50256;

/// The shape of a GPT-2 model: pre-LayerNorm blocks, learned positions, tied embeddings, tanh GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Longest context the position embedding covers (T max).
    pub max_seq_len: usize,
    /// Real vocabulary size (V).
    pub vocab_size: usize,
    /// Vocabulary rows in the buffer (Vp >= V).
    pub padded_vocab_size: usize,
    /// Transformer blocks (L).
    pub num_layers: usize,
    /// Attention heads (NH); `channels` must divide by it.
    pub num_heads: usize,
    /// Width of the residual stream (C).
    pub channels: usize,
}

/// Names accepted by `--model`, with what they are.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", "2 layers, 64 wide, 4 heads, context 64 (tests)"),
    ("gpt2-124m", "12 layers, 768 wide, 12 heads (GPT-2 small)"),
    ("genesis-150m", "16 layers, 768 wide, 12 heads (about 152.8M parameters)"),
    ("gpt2-350m", "24 layers, 1024 wide, 16 heads (GPT-2 medium)"),
];

impl ModelConfig {
    fn gpt2(num_layers: usize, channels: usize, num_heads: usize, max_seq_len: usize) -> Self {
        ModelConfig {
            max_seq_len,
            vocab_size: VOCAB_SIZE,
            padded_vocab_size: PADDED_VOCAB_SIZE,
            num_layers,
            num_heads,
            channels,
        }
    }

    /// Look a preset up by name (see [`PRESETS`]); an unknown name is an error listing them all.
    pub fn preset(name: &str) -> Result<Self, String> {
        match name {
            "tiny" => Ok(Self::gpt2(2, 64, 4, 64)),
            "gpt2-124m" => Ok(Self::gpt2(12, 768, 12, 1024)),
            "genesis-150m" => Ok(Self::gpt2(16, 768, 12, 1024)),
            "gpt2-350m" => Ok(Self::gpt2(24, 1024, 16, 1024)),
            _ => Err(format!(
                "unknown model '{name}'; choose one of: {}\n{}",
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", "),
                PRESETS.iter().map(|(n, d)| format!("  {n}: {d}")).collect::<Vec<_>>().join("\n")
            )),
        }
    }

    /// Check the invariants every op relies on.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.max_seq_len > 0
            && self.vocab_size > 0
            && self.padded_vocab_size >= self.vocab_size
            && self.num_layers > 0
            && self.num_heads > 0
            && self.channels > 0
            && self.channels.is_multiple_of(self.num_heads);
        if ok {
            Ok(())
        } else {
            Err(format!("invalid model config {self:?}: need all sizes > 0, padded vocab >= vocab and channels divisible by heads"))
        }
    }

    pub fn head_size(&self) -> usize {
        self.channels / self.num_heads
    }

    pub fn num_params(&self) -> usize {
        ParamLayout::new(self).total
    }

    /// Training FLOPs per token: 6N for the matmuls' forward and backward plus 12*L*C*T for attention.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.num_params() as f64 + 12.0 * (self.num_layers * self.channels * seq_len) as f64
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} layers, {} channels, {} heads, context {}, vocab {} (padded {}), {:.2}M parameters",
            self.num_layers,
            self.channels,
            self.num_heads,
            self.max_seq_len,
            self.vocab_size,
            self.padded_vocab_size,
            self.num_params() as f64 / 1e6
        )
    }
}

/// The 16 parameter tensors, in buffer order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Wte,
    Wpe,
    Ln1w,
    Ln1b,
    Qkvw,
    Qkvb,
    AttProjw,
    AttProjb,
    Ln2w,
    Ln2b,
    Fcw,
    Fcb,
    FcProjw,
    FcProjb,
    Lnfw,
    Lnfb,
}

pub const NUM_PARAM_TENSORS: usize = 16;

impl Param {
    pub const ALL: [Param; NUM_PARAM_TENSORS] = [
        Param::Wte,
        Param::Wpe,
        Param::Ln1w,
        Param::Ln1b,
        Param::Qkvw,
        Param::Qkvb,
        Param::AttProjw,
        Param::AttProjb,
        Param::Ln2w,
        Param::Ln2b,
        Param::Fcw,
        Param::Fcb,
        Param::FcProjw,
        Param::FcProjb,
        Param::Lnfw,
        Param::Lnfb,
    ];

    /// llm.c's name for the tensor.
    pub fn name(self) -> &'static str {
        [
            "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
            "fcprojw", "fcprojb", "lnfw", "lnfb",
        ][self as usize]
    }

    /// Whether AdamW applies weight decay: the 2-D weight matrices only (embeddings included).
    pub fn decays(self) -> bool {
        matches!(self, Param::Wte | Param::Wpe | Param::Qkvw | Param::AttProjw | Param::Fcw | Param::FcProjw)
    }

    /// Whether one copy exists per layer (the tensor's shape then starts with L).
    pub fn per_layer(self) -> bool {
        !matches!(self, Param::Wte | Param::Wpe | Param::Lnfw | Param::Lnfb)
    }
}

/// One tensor's place in the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub param: Param,
    /// Full shape, e.g. `[L, 3C, C]` for qkvw.
    pub shape: Vec<usize>,
    /// Offset in elements from the start of the buffer.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl TensorSpec {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Elements of one layer's slice of a per-layer tensor.
    pub fn layer_len(&self) -> usize {
        if self.param.per_layer() {
            self.len / self.shape[0]
        } else {
            self.len
        }
    }

    /// Range of layer `l`'s slice (the whole tensor for tensors that are not per layer).
    pub fn layer_range(&self, l: usize) -> std::ops::Range<usize> {
        let n = self.layer_len();
        let start = self.offset + if self.param.per_layer() { l * n } else { 0 };
        start..start + n
    }
}

/// Offsets and shapes of all 16 tensors in one flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    pub tensors: Vec<TensorSpec>,
    /// Total elements in the buffer.
    pub total: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (vp, t, l, c) = (cfg.padded_vocab_size, cfg.max_seq_len, cfg.num_layers, cfg.channels);
        let mut offset = 0;
        let tensors = Param::ALL
            .iter()
            .map(|&param| {
                let shape = match param {
                    Param::Wte => vec![vp, c],
                    Param::Wpe => vec![t, c],
                    Param::Ln1w | Param::Ln1b | Param::Ln2w | Param::Ln2b => vec![l, c],
                    Param::Qkvw => vec![l, 3 * c, c],
                    Param::Qkvb => vec![l, 3 * c],
                    Param::AttProjw => vec![l, c, c],
                    Param::AttProjb | Param::FcProjb => vec![l, c],
                    Param::Fcw => vec![l, 4 * c, c],
                    Param::Fcb => vec![l, 4 * c],
                    Param::FcProjw => vec![l, c, 4 * c],
                    Param::Lnfw | Param::Lnfb => vec![c],
                };
                let len = shape.iter().product();
                let spec = TensorSpec { param, shape, offset, len };
                offset += len;
                spec
            })
            .collect();
        ParamLayout { tensors, total: offset }
    }

    pub fn get(&self, p: Param) -> &TensorSpec {
        &self.tensors[p as usize]
    }

    /// The whole of tensor `p` within `buf`.
    pub fn slice<'a, T>(&self, buf: &'a [T], p: Param) -> &'a [T] {
        &buf[self.get(p).range()]
    }

    pub fn slice_mut<'a, T>(&self, buf: &'a mut [T], p: Param) -> &'a mut [T] {
        &mut buf[self.get(p).range()]
    }

    /// Layer `l`'s slice of tensor `p` within `buf` (the whole tensor if `p` is not per layer).
    pub fn layer<'a, T>(&self, buf: &'a [T], p: Param, l: usize) -> &'a [T] {
        &buf[self.get(p).layer_range(l)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_reference() {
        // V*C + T*C + L*(12*C*C + 13*C) + 2*C with V padded to 50304.
        let expect = [("gpt2-124m", 124_475_904), ("genesis-150m", 152_827_392), ("gpt2-350m", 354_871_296)];
        for (name, n) in expect {
            assert_eq!(ModelConfig::preset(name).unwrap().num_params(), n, "{name}");
        }
    }

    #[test]
    fn layout_is_contiguous_in_llmc_order() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&cfg);
        let mut end = 0;
        for (i, t) in layout.tensors.iter().enumerate() {
            assert_eq!(t.param, Param::ALL[i]);
            assert_eq!(t.offset, end);
            end += t.len;
        }
        assert_eq!(end, layout.total);
        assert_eq!(layout.get(Param::Qkvw).shape, vec![2, 192, 64]);
        assert_eq!(layout.get(Param::Qkvw).layer_range(1).start, layout.get(Param::Qkvw).offset + 192 * 64);
    }

    #[test]
    fn flops_per_token_matches_reference() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let gflop = cfg.flops_per_token(1024) / 1e9;
        assert!((gflop - 0.860).abs() < 0.001, "{gflop}");
    }
}
