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

/// Most transformer blocks a model may have (GPT-2 XL has 48, GPT-3 175B 96).
pub const MAX_LAYERS: usize = 256;
/// Most attention heads (GPT-2 XL has 25, GPT-3 175B 96).
pub const MAX_HEADS: usize = 256;
/// Widest residual stream (GPT-2 XL is 1600 wide, GPT-3 175B 12288).
pub const MAX_CHANNELS: usize = 16384;
/// Longest context the position embedding may cover (GPT-2: 1024).
pub const MAX_SEQ_LEN: usize = 65536;
/// Largest vocabulary, real or padded (GPT-2: 50257, padded to 50304).
pub const MAX_VOCAB: usize = 1 << 20;
/// Most padding rows past the real vocabulary (llm.c and Genesis pad to a multiple of 128, so at most
/// 127; the bound keeps a reader from allocating zero rows that the file does not hold).
pub const MAX_VOCAB_PADDING: usize = 1024;

/// The shape of a GPT-2 model: pre-LayerNorm blocks, learned positions, tied embeddings, tanh GELU.
///
/// Every reader builds it through [`ModelConfig::new`] (a file's config is deserialized through it
/// too), so a config from a file is within the `MAX_*` bounds and its sizes cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawModelConfig")]
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

/// The six numbers as a file states them, before [`ModelConfig::new`] checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawModelConfig {
    pub max_seq_len: usize,
    pub vocab_size: usize,
    pub padded_vocab_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub channels: usize,
}

impl TryFrom<RawModelConfig> for ModelConfig {
    type Error = ConfigError;
    fn try_from(r: RawModelConfig) -> Result<Self, ConfigError> {
        ModelConfig::new(r.max_seq_len, r.vocab_size, r.padded_vocab_size, r.num_layers, r.num_heads, r.channels)
    }
}

impl From<ModelConfig> for RawModelConfig {
    fn from(c: ModelConfig) -> Self {
        RawModelConfig {
            max_seq_len: c.max_seq_len,
            vocab_size: c.vocab_size,
            padded_vocab_size: c.padded_vocab_size,
            num_layers: c.num_layers,
            num_heads: c.num_heads,
            channels: c.channels,
        }
    }
}

/// A field of [`ModelConfig`], for errors (each file format names it its own way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    MaxSeqLen,
    VocabSize,
    PaddedVocabSize,
    NumLayers,
    NumHeads,
    Channels,
}

impl Field {
    /// The field's name in [`ModelConfig`] (and in checkpoint and `genesis.json` headers).
    pub fn name(self) -> &'static str {
        match self {
            Field::MaxSeqLen => "max_seq_len",
            Field::VocabSize => "vocab_size",
            Field::PaddedVocabSize => "padded_vocab_size",
            Field::NumLayers => "num_layers",
            Field::NumHeads => "num_heads",
            Field::Channels => "channels",
        }
    }
}

/// What is wrong with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Below the smallest value allowed.
    BelowMin(usize),
    /// Above the largest value allowed (a `MAX_*` constant).
    AboveMax(usize),
    /// Not a multiple of the other field's value.
    NotDivisibleBy(Field, usize),
    /// Below the other field's value.
    BelowField(Field, usize),
    /// More than this far above the other field's value.
    TooFarAbove(Field, usize, usize),
    /// The model's parameter count (or its bytes) does not fit in 64 bits.
    Overflow,
}

/// Why [`ModelConfig::new`] refused a config: the field, its value and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: Field,
    pub value: usize,
    pub problem: Problem,
}

impl ConfigError {
    /// The message with each field called what `name` says (a file format's own names).
    pub fn message(&self, name: impl Fn(Field) -> String) -> String {
        let (f, v) = (name(self.field), self.value);
        let what = match self.problem {
            Problem::BelowMin(min) => format!("{f} {v} is below the minimum {min}"),
            Problem::AboveMax(max) => format!("{f} {v} is above the limit {max}"),
            Problem::NotDivisibleBy(g, x) => format!("{f} {v} is not divisible by {} {x}", name(g)),
            Problem::BelowField(g, x) => format!("{f} {v} is below {} {x}", name(g)),
            Problem::TooFarAbove(g, x, d) => format!("{f} {v} is more than {d} above {} {x}", name(g)),
            Problem::Overflow => format!("the parameter count of a model with {f} {v} overflows"),
        };
        format!("{what}; this is not a GPT-2 model this build can load")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(|g| g.name().to_string()))
    }
}

impl std::error::Error for ConfigError {}

/// Names accepted by `--model`, with what they are.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", "2 layers, 64 wide, 4 heads, context 64 (tests)"),
    ("gpt2-124m", "12 layers, 768 wide, 12 heads (GPT-2 small)"),
    ("genesis-150m", "16 layers, 768 wide, 12 heads (about 152.8M parameters)"),
    ("gpt2-350m", "24 layers, 1024 wide, 16 heads (GPT-2 medium)"),
];

impl ModelConfig {
    /// The one validating constructor: every reader builds its config here. Checks, in this order,
    /// each field against its bounds (layers 1..=[`MAX_LAYERS`], heads 1..=[`MAX_HEADS`], channels
    /// 1..=[`MAX_CHANNELS`] and divisible by heads, context 1..=[`MAX_SEQ_LEN`], vocabulary
    /// 1..=[`MAX_VOCAB`], padded vocabulary from the vocabulary to [`MAX_VOCAB_PADDING`] rows above
    /// it and at most [`MAX_VOCAB`]) and that the parameter count and its bytes fit in 64 bits.
    pub fn new(
        max_seq_len: usize,
        vocab_size: usize,
        padded_vocab_size: usize,
        num_layers: usize,
        num_heads: usize,
        channels: usize,
    ) -> Result<Self, ConfigError> {
        let cfg = ModelConfig { max_seq_len, vocab_size, padded_vocab_size, num_layers, num_heads, channels };
        cfg.validate()?;
        Ok(cfg)
    }

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

    /// The checks of [`ModelConfig::new`], for a config built otherwise (presets, tests).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value, problem| Err(ConfigError { field, value, problem });
        let range = |field, value: usize, max: usize| {
            if value < 1 {
                err(field, value, Problem::BelowMin(1))
            } else if value > max {
                err(field, value, Problem::AboveMax(max))
            } else {
                Ok(())
            }
        };
        range(Field::NumLayers, self.num_layers, MAX_LAYERS)?;
        range(Field::NumHeads, self.num_heads, MAX_HEADS)?;
        range(Field::Channels, self.channels, MAX_CHANNELS)?;
        if !self.channels.is_multiple_of(self.num_heads) {
            return err(Field::Channels, self.channels, Problem::NotDivisibleBy(Field::NumHeads, self.num_heads));
        }
        range(Field::MaxSeqLen, self.max_seq_len, MAX_SEQ_LEN)?;
        range(Field::VocabSize, self.vocab_size, MAX_VOCAB)?;
        let vp = self.padded_vocab_size;
        if vp < self.vocab_size {
            return err(Field::PaddedVocabSize, vp, Problem::BelowField(Field::VocabSize, self.vocab_size));
        }
        if vp - self.vocab_size > MAX_VOCAB_PADDING {
            return err(
                Field::PaddedVocabSize,
                vp,
                Problem::TooFarAbove(Field::VocabSize, self.vocab_size, MAX_VOCAB_PADDING),
            );
        }
        range(Field::PaddedVocabSize, vp, MAX_VOCAB)?;
        // Within the bounds above this cannot fail; checked all the same, so no size ever wraps.
        let total = ParamLayout::try_new(self)?.total;
        if total.checked_mul(3 * 4).is_none() {
            return err(Field::Channels, self.channels, Problem::Overflow);
        }
        Ok(())
    }

    /// Refuses a model whose vocabulary is smaller than the GPT-2 tokenizer's: sampling, evaluation
    /// and training feed it GPT-2 tokens (up to [`EOT_TOKEN`]), which need an embedding row each.
    pub fn check_gpt2_vocab(&self) -> Result<(), String> {
        if self.vocab_size < VOCAB_SIZE {
            return Err(format!(
                "the model's vocabulary has {} tokens, fewer than the {VOCAB_SIZE} of the GPT-2 tokenizer Genesis \
                 encodes text with; sample, eval and train need a model with the GPT-2 vocabulary",
                self.vocab_size
            ));
        }
        Ok(())
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
            ParamLayout::try_new(self).map_or(f64::NAN, |l| l.total as f64 / 1e6)
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
    /// The layout of a config that passed [`ModelConfig::validate`] (presets, and every config read
    /// from a file). Panics only if given an unchecked config whose sizes overflow.
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::try_new(cfg).unwrap_or_else(|e| panic!("ParamLayout::new on an unchecked model config: {e}"))
    }

    /// The layout, every size computed with checked arithmetic: an error instead of a wrapped size.
    pub fn try_new(cfg: &ModelConfig) -> Result<Self, ConfigError> {
        let (vp, t, l, c) = (cfg.padded_vocab_size, cfg.max_seq_len, cfg.num_layers, cfg.channels);
        let overflow = ConfigError { field: Field::Channels, value: c, problem: Problem::Overflow };
        let (c3, c4) = (c.checked_mul(3).ok_or(overflow)?, c.checked_mul(4).ok_or(overflow)?);
        let mut offset = 0usize;
        let mut tensors = Vec::with_capacity(NUM_PARAM_TENSORS);
        for param in Param::ALL {
            let shape = match param {
                Param::Wte => vec![vp, c],
                Param::Wpe => vec![t, c],
                Param::Ln1w | Param::Ln1b | Param::Ln2w | Param::Ln2b => vec![l, c],
                Param::Qkvw => vec![l, c3, c],
                Param::Qkvb => vec![l, c3],
                Param::AttProjw => vec![l, c, c],
                Param::AttProjb | Param::FcProjb => vec![l, c],
                Param::Fcw => vec![l, c4, c],
                Param::Fcb => vec![l, c4],
                Param::FcProjw => vec![l, c, c4],
                Param::Lnfw | Param::Lnfb => vec![c],
            };
            let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(overflow)?;
            tensors.push(TensorSpec { param, shape, offset, len });
            offset = offset.checked_add(len).ok_or(overflow)?;
        }
        Ok(ParamLayout { tensors, total: offset })
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
    fn new_takes_each_limit_and_refuses_one_past_it() {
        let max = ModelConfig::new(
            MAX_SEQ_LEN,
            MAX_VOCAB - MAX_VOCAB_PADDING,
            MAX_VOCAB,
            MAX_LAYERS,
            MAX_HEADS,
            MAX_CHANNELS,
        );
        assert!(max.unwrap().num_params() > 0);
        for (name, _) in PRESETS {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
        let t = ModelConfig::preset("tiny").unwrap();
        let refused = [
            (ModelConfig { num_layers: MAX_LAYERS + 1, ..t }, "num_layers 257 is above the limit 256"),
            (ModelConfig { num_layers: 0, ..t }, "num_layers 0 is below the minimum 1"),
            (ModelConfig { num_heads: MAX_HEADS + 1, ..t }, "num_heads 257 is above the limit 256"),
            (ModelConfig { channels: MAX_CHANNELS + 4, ..t }, "channels 16388 is above the limit 16384"),
            (ModelConfig { channels: 1 << 62, num_heads: 1, ..t }, "channels 4611686018427387904 is above"),
            (ModelConfig { channels: 66, ..t }, "channels 66 is not divisible by num_heads 4"),
            (ModelConfig { max_seq_len: MAX_SEQ_LEN + 1, ..t }, "max_seq_len 65537 is above the limit 65536"),
            (ModelConfig { max_seq_len: usize::MAX, ..t }, "max_seq_len 18446744073709551615 is above"),
            (ModelConfig { vocab_size: 0, ..t }, "vocab_size 0 is below the minimum 1"),
            (ModelConfig { vocab_size: MAX_VOCAB + 1, ..t }, "vocab_size 1048577 is above the limit 1048576"),
            (
                ModelConfig { padded_vocab_size: VOCAB_SIZE - 1, ..t },
                "padded_vocab_size 50256 is below vocab_size 50257",
            ),
            (
                ModelConfig { padded_vocab_size: VOCAB_SIZE + MAX_VOCAB_PADDING + 1, ..t },
                "padded_vocab_size 51282 is more than 1024 above vocab_size 50257",
            ),
        ];
        for (cfg, want) in refused {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with(want), "{cfg:?}: {e}");
            assert!(e.ends_with("this is not a GPT-2 model this build can load"), "{e}");
            let c = cfg;
            let again = ModelConfig::new(
                c.max_seq_len,
                c.vocab_size,
                c.padded_vocab_size,
                c.num_layers,
                c.num_heads,
                c.channels,
            );
            assert_eq!(again.unwrap_err().to_string(), e);
        }
        // A file format's own field names.
        let e = ModelConfig { channels: 66, ..t }.validate().unwrap_err();
        assert!(e
            .message(|f| format!("<{}>", f.name()))
            .starts_with("<channels> 66 is not divisible by <num_heads> 4"));
        // Sizes are computed in checked arithmetic, whatever the config.
        let wraps = ModelConfig { channels: 1 << 62, num_heads: 1, ..t };
        assert_eq!(ParamLayout::try_new(&wraps).unwrap_err().problem, Problem::Overflow);
        // Deserializing goes through the same checks.
        let json = serde_json::to_string(&ModelConfig { num_heads: 0, ..t }).unwrap();
        let e = serde_json::from_str::<ModelConfig>(&json).unwrap_err().to_string();
        assert!(e.contains("num_heads 0 is below the minimum 1"), "{e}");
        assert_eq!(serde_json::from_str::<ModelConfig>(&serde_json::to_string(&t).unwrap()).unwrap(), t);
    }

    #[test]
    fn flops_per_token_matches_reference() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let gflop = cfg.flops_per_token(1024) / 1e9;
        assert!((gflop - 0.860).abs() < 0.001, "{gflop}");
    }
}
