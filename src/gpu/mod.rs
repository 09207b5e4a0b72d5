//! CUDA support: device discovery and the kernels embedded at build time.
//!
//! `build.rs` compiles every `kernels/*.cu` with nvcc into one fatbin (SASS for
//! sm_80/86/89/90 plus compute_90 PTX) and embeds it in the binary. When no
//! nvcc was found at build time the crate is CPU-only: [`kernels::fatbin`]
//! returns `None` and [`device::cuda_available`] says why.
//!
//! cudarc loads the CUDA driver (and later cuBLAS) dynamically, so a binary
//! built here runs on machines without a GPU or driver; every entry point
//! reports that as an error instead of panicking.
//!
//! - [`kernels`]: the embedded fatbin and the architectures it was built for.
//! - [`device`]: driver/device probing, [`device::Gpu`] (context, stream,
//!   module) and the kernel launch wrappers.

pub mod adamw;
pub mod attention;
pub mod blas;
pub mod classifier;
pub mod device;
pub mod embedding;
pub mod engine;
pub mod flash_attention;
pub mod gelu;
pub mod gpt;
pub mod kernels;
pub(crate) mod launch;
pub mod layernorm;
pub mod matmul;
pub mod mma_layout;
pub mod plan;
pub mod profile;
pub mod sample;

/// Where to run, from `--device auto|cpu|cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The GPU when one works, else the CPU (saying why on stderr).
    Auto,
    Cpu,
    /// The GPU or an error.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err("expected auto, cpu or cuda".into()),
        }
    }
}

/// Where a command runs, as [`select_device`] chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The GPU's ordinal, or `None` for the CPU.
    pub gpu: Option<usize>,
    /// Why `--device auto` fell back to the CPU (`None` when it did not): the command says so with
    /// [`Selected::note`] once, after its arguments are checked.
    pub fallback: Option<String>,
}

impl Selected {
    /// The line saying why `--device auto` runs on the CPU, if it fell back.
    pub fn fallback_note(&self) -> Option<String> {
        self.fallback.as_ref().map(|why| format!("note: running on the CPU ({why}); --device cuda insists on the GPU"))
    }

    /// Prints [`Selected::fallback_note`] on stderr, if there is one.
    pub fn note(&self) {
        if let Some(line) = self.fallback_note() {
            eprintln!("{line}");
        }
    }
}

/// Where to run: the GPU (`gpu: Some(ordinal)`) or the CPU (`None`). `Auto` takes the GPU when one
/// works and otherwise the CPU, keeping the reason in `fallback` (printed by the command with
/// [`Selected::note`], not here, so that it comes once and after the arguments are checked);
/// `Cuda` demands the GPU.
pub fn select_device(choice: Device) -> anyhow::Result<Selected> {
    let (gpu, fallback) = match choice {
        Device::Cpu => (None, None),
        Device::Cuda => match device::cuda_available() {
            Ok(()) => (Some(0), None),
            Err(why) => anyhow::bail!("--device cuda: {why}; run genesis doctor, or use --device cpu"),
        },
        Device::Auto => match device::cuda_available() {
            Ok(()) => (Some(0), None),
            Err(why) => (None, Some(why)),
        },
    };
    Ok(Selected { gpu, fallback })
}

/// The element types GPU activations and weights come in: `f32` (exact comparison with the CPU)
/// and `bf16` (half the memory and bandwidth; LayerNorm statistics and losses stay f32). Kernels
/// exist in both, the bf16 one named with a `_bf16` suffix.
pub trait Float: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default + 'static {
    /// Elements per 128-bit access of the `_vec` kernels (4 f32, 8 bf16).
    const VEC: usize = 16 / Self::BYTES;
    /// Appended to a kernel's name for this type.
    const SUFFIX: &'static str;
    /// Bytes per element.
    const BYTES: usize;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The kernel named `name` for this type, e.g. `layernorm_forward_bf16`.
    fn kernel(name: &str) -> String {
        format!("{name}{}", Self::SUFFIX)
    }
}

impl Float for f32 {
    const SUFFIX: &'static str = "";
    const BYTES: usize = 4;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for half::bf16 {
    const SUFFIX: &'static str = "_bf16";
    const BYTES: usize = 2;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// Dense bf16 tensor-core peak in TFLOP/s of the GPUs Genesis targets, from the device name (the
/// denominator of MFU); `None` for others.
pub fn peak_bf16_tflops(name: &str) -> Option<f64> {
    const PEAKS: [(&str, f64); 9] = [
        ("H200", 989.0),
        ("H100", 989.0),
        ("A100", 312.0),
        ("A10", 125.0),
        ("L40", 181.0),
        ("L4", 121.0),
        ("4090", 165.0),
        ("3090", 71.0),
        ("A6000", 155.0),
    ];
    PEAKS.iter().find(|(key, _)| name.contains(key)).map(|p| p.1)
}

/// Which versions of the bandwidth-bound kernels a GPU run launches, from `--kernels scalar|vector`.
/// `Scalar` (the default) is the verified path: one element per thread per access. `Vector` uses
/// the `_vec` kernels, which move 128 bits per access (4 f32 or 8 bf16); they stay behind this
/// option until a GPU run has verified them (issue 15 §3). Only the kernels that have a `_vec`
/// version change; the rest launch as with `Scalar`. The training step on `Vector` also takes
/// the other unverified memory savings of issue 15: the backward overwrites the activation
/// gradients that have one producer instead of zeroing them and accumulating ([`Dinp`]), and the
/// forward keeps one (B,T,C) attproj and one fcproj buffer for all layers (`gpt::ActLayout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    #[default]
    Scalar,
    Vector,
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scalar" => Ok(Kernels::Scalar),
            "vector" => Ok(Kernels::Vector),
            _ => Err("expected scalar or vector".into()),
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernels::Scalar => "scalar",
            Kernels::Vector => "vector",
        })
    }
}

/// How a GPU training step talks to the host, from `--sync micro|step`. `Micro` (the default, the
/// verified path) reads each micro-batch's loss and the gradient norm back before AdamW, uploads
/// tokens from pageable memory and runs on the legacy default stream. `Step` queues a whole
/// optimizer step and reads one record back at its end: tokens and the embedding backward's
/// buckets go up from pinned buffers allocated once, the losses are summed and the norm, clip
/// factor and skip decided on the device, AdamW is one launch reading the clip factor from device
/// memory, all on a stream Genesis creates. `Graph` is `Step` with each micro-batch's forward and
/// backward (everything between the token upload and the embedding backward, whose launch shape
/// depends on the tokens) captured once as a CUDA graph and replayed, so the host queues one graph
/// instead of some hundred kernels. All three give the same weights bit for bit (`Step` and
/// `Graph` the same losses too); `Step` and `Graph` stay behind this option until a GPU run has
/// verified them (issue 15 §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepSync {
    #[default]
    Micro,
    Step,
    Graph,
}

impl StepSync {
    /// Whether the whole step is queued with one read back at its end (`Step` or `Graph`).
    pub fn queues_whole_steps(self) -> bool {
        self != StepSync::Micro
    }
}

impl std::str::FromStr for StepSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "micro" => Ok(StepSync::Micro),
            "step" => Ok(StepSync::Step),
            "graph" => Ok(StepSync::Graph),
            _ => Err("expected micro, step or graph".into()),
        }
    }
}

impl std::fmt::Display for StepSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepSync::Micro => "micro",
            StepSync::Step => "step",
            StepSync::Graph => "graph",
        })
    }
}

/// How much of the training GELU runs in cuBLASLt's matmul epilogues, from `--gelu-fusion
/// off|forward|both` (issue 15 §3; llm.c's `gelu_fusion` 0/1/2, which it found slower on Ampere
/// and Ada, so each run chooses). `Off` (the default, the verified path): the fc matmul writes the
/// pre-GELU values with a BIAS epilogue and `gelu_forward` writes the GELU's output from them; the
/// backward's fcproj matmul writes the GELU output's gradient and `gelu_backward` the input's.
/// `Forward`: the fc matmul writes both the GELU output and the pre-GELU values from one GEMM
/// (GELU_AUX_BIAS), with no `gelu_forward` launch. `Both`: `Forward`, and the fcproj matmul's
/// dinp GEMM applies the GELU backward itself (DGELU, reading the pre-GELU values) and writes
/// the GELU input's gradient directly (overwriting it, so it is never zeroed, whatever
/// `--kernels` says), with no `gelu_backward` launch. Only training changes (evaluation and
/// sampling already fuse the GELU, keeping no pre-GELU values). Not yet verified on a GPU; not
/// part of a run's settings (the model is the same), so a resumed run may choose another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluFusion {
    #[default]
    Off,
    Forward,
    Both,
}

impl GeluFusion {
    /// Whether the training forward's fc matmul also applies the GELU (`Forward` or `Both`).
    pub fn forward(self) -> bool {
        self != GeluFusion::Off
    }

    /// Whether the backward's fcproj matmul also applies the GELU backward (`Both`).
    pub fn backward(self) -> bool {
        self == GeluFusion::Both
    }

    /// The one-line refusal of a model the epilogues cannot serve: cuBLASLt needs the pre-GELU
    /// matrix's leading dimension, 4 x `channels`, to be a multiple of 8 (so `channels` even).
    pub fn check(self, channels: usize) -> anyhow::Result<()> {
        if self != GeluFusion::Off && !(4 * channels).is_multiple_of(8) {
            anyhow::bail!(
                "--gelu-fusion {self} needs an even number of channels (cuBLASLt's GELU epilogues need 4 x channels \
                 = {} to be a multiple of 8); this model has {channels}; use --gelu-fusion off",
                4 * channels
            );
        }
        Ok(())
    }
}

impl std::str::FromStr for GeluFusion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(GeluFusion::Off),
            "forward" => Ok(GeluFusion::Forward),
            "both" => Ok(GeluFusion::Both),
            _ => Err("expected off, forward or both".into()),
        }
    }
}

impl std::fmt::Display for GeluFusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GeluFusion::Off => "off",
            GeluFusion::Forward => "forward",
            GeluFusion::Both => "both",
        })
    }
}

/// How the training backward computes the bias gradient of the matmuls with a bias (qkv, attproj,
/// fc, fcproj), from `--bias-grad reduce|epilogue` (issue 15 §3). `Reduce` (the default, the
/// verified path): a kernel pair of its own after the dweight GEMM (`matmul_bias_grad_partial` and
/// `matmul_bias_grad_finish`, a fixed-order two-pass column sum of dout, added to dbias).
/// `Epilogue`: the dweight GEMM's cuBLASLt epilogue BGRADB reduces dout over the GEMM's k (the
/// N rows) into an f32 scratch of OC values, which `matmul_bias_grad_add` then adds to dbias
/// (BGRADB writes its result rather than adding it, and dbias accumulates over micro-batches):
/// dout is read once for both gradients instead of twice. The sum is then cuBLAS's, in cuBLAS's
/// order; it is kept only if a GPU shows it deterministic and faster on that architecture. Not yet
/// verified on a GPU; not part of a run's settings (the model is the same), so a resumed run may
/// choose another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BiasGrad {
    #[default]
    Reduce,
    Epilogue,
}

impl std::str::FromStr for BiasGrad {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reduce" => Ok(BiasGrad::Reduce),
            "epilogue" => Ok(BiasGrad::Epilogue),
            _ => Err("expected reduce or epilogue".into()),
        }
    }
}

impl std::fmt::Display for BiasGrad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BiasGrad::Reduce => "reduce",
            BiasGrad::Epilogue => "epilogue",
        })
    }
}

/// How a backward op writes the activation gradient it produces (`dinp`; attention's `dqkv`).
/// `Accumulate` adds to what the buffer holds (`+=`, as the CPU reference), so the buffer must be
/// initialised (zeroed) first; `Overwrite` stores the gradient (`=`) and never reads the old
/// contents, so a buffer with this one producer needs no zeroing. The training backward overwrites
/// under `--kernels vector` and accumulates into zeroed buffers otherwise (the verified path).
/// Parameter gradients (dweight, dbias) always accumulate: they sum over micro-batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dinp {
    Accumulate,
    Overwrite,
}

/// The element type of a GPU run, from `--precision auto|fp32|bf16`. `auto` is bf16: every GPU
/// Genesis supports (sm_80 and newer) has bf16 tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "bf16" | "auto" => Ok(Precision::Bf16),
            _ => Err("expected auto, fp32 or bf16".into()),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// How GPU attention is computed, from `--attention flash|materialized`. `Materialized` (the
/// default, verified on GPUs) stores the (B,NH,T,T) probabilities and uses cuBLAS for the two
/// products; `Flash` (bf16 only, head size 64) is the tiled tensor-core kernel of
/// [`flash_attention`], which stores no T x T matrix. The choice does not change the model, so a
/// run may resume with the other one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Attention {
    #[default]
    Materialized,
    Flash,
}

impl std::str::FromStr for Attention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "materialized" | "materialised" => Ok(Attention::Materialized),
            "flash" => Ok(Attention::Flash),
            _ => Err("expected flash or materialized".into()),
        }
    }
}

impl std::fmt::Display for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attention::Materialized => "materialized",
            Attention::Flash => "flash",
        })
    }
}

impl Attention {
    /// The one-line refusal of a combination the kernels do not support: flash attention is bf16
    /// only.
    pub fn check(self, precision: Precision) -> anyhow::Result<()> {
        if self == Attention::Flash && precision != Precision::Bf16 {
            anyhow::bail!(
                "--attention flash needs --precision bf16 (the flash kernel is bf16 only); use --attention materialized with --precision {precision}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices() {
        assert_eq!(select_device(Device::Cpu).unwrap(), Selected { gpu: None, fallback: None });
        match device::cuda_available() {
            Ok(()) => {
                assert_eq!(select_device(Device::Cuda).unwrap().gpu, Some(0));
                assert_eq!(select_device(Device::Auto).unwrap(), Selected { gpu: Some(0), fallback: None });
            }
            Err(why) => {
                let e = select_device(Device::Cuda).unwrap_err().to_string();
                assert!(e.contains(&why) && e.contains("--device cpu"), "{e}");
                let auto = select_device(Device::Auto).unwrap();
                assert_eq!(auto.gpu, None);
                let note = auto.fallback_note().unwrap();
                assert!(note.starts_with("note: running on the CPU (") && note.contains(&why), "{note}");
            }
        }
        assert!("tpu".parse::<Device>().unwrap_err().contains("auto, cpu or cuda"));
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!("flash".parse::<Attention>().unwrap(), Attention::Flash);
        assert_eq!("materialized".parse::<Attention>().unwrap(), Attention::Materialized);
        assert_eq!(Attention::default(), Attention::Materialized);
        assert!("fast".parse::<Attention>().unwrap_err().contains("flash or materialized"));
        let e = Attention::Flash.check(Precision::Fp32).unwrap_err().to_string();
        assert!(e.contains("--attention flash") && e.contains("--precision bf16") && !e.contains('\n'), "{e}");
        assert!(
            Attention::Flash.check(Precision::Bf16).is_ok() && Attention::Materialized.check(Precision::Fp32).is_ok()
        );
        assert_eq!("vector".parse::<Kernels>().unwrap(), Kernels::Vector);
        assert_eq!("scalar".parse::<Kernels>().unwrap(), Kernels::Scalar);
        assert_eq!(Kernels::default(), Kernels::Scalar);
        assert!("vec".parse::<Kernels>().unwrap_err().contains("scalar or vector"));
        assert_eq!("step".parse::<StepSync>().unwrap(), StepSync::Step);
        assert_eq!("micro".parse::<StepSync>().unwrap(), StepSync::Micro);
        assert_eq!(StepSync::default(), StepSync::Micro);
        assert_eq!("graph".parse::<StepSync>().unwrap(), StepSync::Graph);
        assert!(StepSync::Graph.queues_whole_steps() && StepSync::Step.queues_whole_steps());
        assert!(!StepSync::Micro.queues_whole_steps());
        assert!("async".parse::<StepSync>().unwrap_err().contains("micro, step or graph"));
    }

    #[test]
    fn gelu_fusion_choices() {
        assert_eq!(GeluFusion::default(), GeluFusion::Off);
        for (text, fusion) in [("off", GeluFusion::Off), ("forward", GeluFusion::Forward), ("both", GeluFusion::Both)] {
            assert_eq!(text.parse::<GeluFusion>().unwrap(), fusion);
            assert_eq!(fusion.to_string(), text);
        }
        for bad in ["on", "backward", "Both", "1", ""] {
            assert!(bad.parse::<GeluFusion>().unwrap_err().contains("expected off, forward or both"), "{bad:?}");
        }
        assert!(!GeluFusion::Off.forward() && !GeluFusion::Off.backward());
        assert!(GeluFusion::Forward.forward() && !GeluFusion::Forward.backward());
        assert!(GeluFusion::Both.forward() && GeluFusion::Both.backward());
    }

    #[test]
    fn bias_grad_choices() {
        assert_eq!(BiasGrad::default(), BiasGrad::Reduce);
        for (text, choice) in [("reduce", BiasGrad::Reduce), ("epilogue", BiasGrad::Epilogue)] {
            assert_eq!(text.parse::<BiasGrad>().unwrap(), choice);
            assert_eq!(choice.to_string(), text);
        }
        for bad in ["bgradb", "Reduce", "kernel", "1", ""] {
            assert!(bad.parse::<BiasGrad>().unwrap_err().contains("expected reduce or epilogue"), "{bad:?}");
        }
    }

    /// The epilogues' aux leading dimension is 4C: every fusion takes an even C, and an odd C is
    /// refused in one line naming the option and the way out, unless fusion is off.
    #[test]
    fn gelu_fusion_refuses_an_odd_width() {
        for fusion in [GeluFusion::Off, GeluFusion::Forward, GeluFusion::Both] {
            for c in [2, 64, 768, 1024, 1026] {
                assert!(fusion.check(c).is_ok(), "{fusion} with C = {c}");
            }
        }
        assert!(GeluFusion::Off.check(33).is_ok());
        for fusion in [GeluFusion::Forward, GeluFusion::Both] {
            for c in [1, 33, 765] {
                let e = fusion.check(c).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("--gelu-fusion {fusion} needs an even number of channels"))
                        && e.contains(&format!("this model has {c}"))
                        && e.contains(&format!("4 x channels = {}", 4 * c))
                        && e.contains("use --gelu-fusion off")
                        && !e.contains('\n'),
                    "{e}"
                );
            }
        }
    }
}
