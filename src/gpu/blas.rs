//! cuBLAS and cuBLASLt: library loading, handles bound to the [`Gpu`] stream, and a small
//! cuBLASLt wrapper with the epilogues cudarc's safe API lacks.
//!
//! cudarc (`dynamic-loading`) opens `libcublas`/`libcublasLt` by bare name the first time a
//! symbol is needed and panics when none of its candidate names loads. [`load_libraries`]
//! therefore locates the libraries first with [`find_cuda_library`] (`$CUDA_HOME/lib64`,
//! `/usr/local/cuda/lib64`, `$LD_LIBRARY_PATH`, the ldconfig cache) and `dlopen`s them by full
//! path with `RTLD_GLOBAL`. The dynamic linker then answers cudarc's later bare-name request
//! (`libcublas.so.13`, `libcublasLt.so.13`, ...) with the object already loaded, matched by its
//! soname, so no `LD_LIBRARY_PATH` setup is needed. `libcublasLt` is loaded first so that
//! `libcublas`'s own dependency on it resolves to the same copy.
//!
//! Every matrix here is column-major, as cuBLAS sees it; the row-major callers
//! (`src/gpu/matmul.rs`, `src/gpu/attention.rs`) do the transposition bookkeeping.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, ensure, Context as _, Result};
use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::cublaslt::{result as lt_result, sys as lt_sys};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::device::{find_cuda_library, Gpu};
use super::Float;

/// Bytes of device workspace shared by cuBLAS and cuBLASLt (32 MiB, enough for Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

const CUBLAS_NAMES: &[&str] = &["libcublas.so.13", "libcublas.so.12"];
const CUBLASLT_NAMES: &[&str] = &["libcublasLt.so.13", "libcublasLt.so.12"];

/// `Ok(())` once libcublasLt and libcublas are loaded (done once per process), else why not.
/// Never panics.
pub fn load_libraries() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(load_libraries_once).clone().map_err(|e| anyhow!(e))
}

fn load_libraries_once() -> Result<(), String> {
    preload(CUBLASLT_NAMES)?;
    preload(CUBLAS_NAMES)?;
    // SAFETY: these only dlopen cudarc's candidate names and drop the handles.
    let (lt_ok, blas_ok) = unsafe { (lt_sys::is_culib_present(), blas_sys::is_culib_present()) };
    if !lt_ok || !blas_ok {
        return Err(format!(
            "{} was loaded by path but cudarc still cannot open it by name; set LD_LIBRARY_PATH to its directory",
            if lt_ok { "libcublas" } else { "libcublasLt" }
        ));
    }
    Ok(())
}

/// Finds the first of `names` and dlopens it by full path (`RTLD_NOW | RTLD_GLOBAL`). The handle
/// is deliberately never closed: the library stays loaded for the life of the process.
fn preload(names: &[&str]) -> Result<(), String> {
    let path = find_cuda_library(names).ok_or_else(|| {
        format!(
            "{} not found in $CUDA_HOME/lib64, $CUDA_PATH/lib64, /usr/local/cuda/lib64, $LD_LIBRARY_PATH \
             or the ldconfig cache; install CUDA 13 (cuBLAS) or set CUDA_HOME",
            names.join(" / ")
        )
    })?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("library path {} contains a NUL byte", path.display()))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call. Loading runs the
    // library's initialisers, which for cuBLAS only set up internal state.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns null or a NUL-terminated message valid until the next dl* call.
        let err = unsafe { libc::dlerror() };
        let reason = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated (see above); copied out immediately.
            unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(format!("loading {} failed: {reason}", path.display()));
    }
    Ok(())
}

/// Storage type of every matrix (and the bias) of one GEMM. Scaling (alpha/beta) and
/// accumulation are fp32 either way: `Bf16` always computes in `CUBLAS_COMPUTE_32F` (TF32 does
/// not apply to bf16 inputs), `F32` in fp32 or TF32 as chosen at [`Blas::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmDtype {
    /// `float` matrices (`CUDA_R_32F`).
    F32,
    /// `__nv_bfloat16` matrices (`CUDA_R_16BF`).
    Bf16,
}

impl GemmDtype {
    /// The GEMM storage type for the element type `T` (`f32` or `half::bf16`).
    pub fn of<T: Float>() -> Result<GemmDtype> {
        use std::any::TypeId;
        let id = TypeId::of::<T>();
        if id == TypeId::of::<f32>() {
            Ok(GemmDtype::F32)
        } else if id == TypeId::of::<half::bf16>() {
            Ok(GemmDtype::Bf16)
        } else {
            anyhow::bail!("no cuBLAS data type for {}", std::any::type_name::<T>())
        }
    }

    fn lt(self) -> lt_sys::cudaDataType {
        match self {
            GemmDtype::F32 => lt_sys::cudaDataType::CUDA_R_32F,
            GemmDtype::Bf16 => lt_sys::cudaDataType::CUDA_R_16BF,
        }
    }

    fn blas(self) -> blas_sys::cudaDataType {
        match self {
            GemmDtype::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            GemmDtype::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// What cuBLASLt applies to `op(A)·op(B)` before writing D (and, for [`Epilogue::BGradB`], what
/// it writes besides D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// D = op(A)·op(B) (+ D when accumulating).
    None,
    /// D = op(A)·op(B) + bias, bias of length m broadcast along the n columns.
    Bias,
    /// D = gelu_tanh(op(A)·op(B)).
    Gelu,
    /// D = gelu_tanh(op(A)·op(B) + bias).
    GeluBias,
    /// D = gelu_tanh(op(A)·op(B) + bias), and the pre-GELU values op(A)·op(B) + bias written to
    /// the aux buffer (`LtGemm::aux`, an (m,n) matrix like D with leading dimension `ldd`, of D's
    /// type): `CUBLASLT_EPILOGUE_GELU_AUX_BIAS`, the training forward's fc matmul keeping what
    /// the GELU backward needs.
    GeluAuxBias,
    /// D = op(A)·op(B) * gelu_tanh'(aux), aux the pre-GELU input (read, an (m,n) matrix like D
    /// with leading dimension `ldd`, of D's type): `CUBLASLT_EPILOGUE_DGELU`, the GELU backward
    /// applied to the gradient the GEMM computes. Overwrite only (beta = 0; refused with
    /// `accumulate`).
    DGelu,
    /// D = op(A)·op(B) (+ D when accumulating), and the bias gradient of B: the sums of op(B)
    /// over k, one per column of D (n values), WRITTEN (not added) to the bias buffer
    /// (`LtGemm::bias`, f32): `CUBLASLT_EPILOGUE_BGRADB`, on the dweight GEMM of a matmul backward,
    /// where op(B) is dout transposed and the sums are dout's column sums, dbias
    /// (`--bias-grad epilogue`). cuBLASLt reduces a transposed B only (`trans_b`; it answers
    /// NOT_SUPPORTED otherwise); the sums are f32, D's type, so D must be f32 (the dweight GEMM's
    /// is, for both input types). See [`LtGemm::check`].
    BGradB,
}

impl Epilogue {
    fn raw(self) -> lt_sys::cublasLtEpilogue_t {
        use lt_sys::cublasLtEpilogue_t as E;
        match self {
            Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::Gelu => E::CUBLASLT_EPILOGUE_GELU,
            Epilogue::GeluBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
            Epilogue::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Epilogue::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
            Epilogue::BGradB => E::CUBLASLT_EPILOGUE_BGRADB,
        }
    }

    /// Whether the epilogue reads the bias vector (`LtGemm::bias` must then be non-null).
    pub fn uses_bias(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::GeluBias | Epilogue::GeluAuxBias)
    }

    /// Whether the epilogue writes or reads the aux matrix (`LtGemm::aux` must then be non-null,
    /// and is 0 otherwise).
    pub fn uses_aux(self) -> bool {
        matches!(self, Epilogue::GeluAuxBias | Epilogue::DGelu)
    }

    /// Whether the epilogue writes a bias gradient (n f32 values) to the bias buffer
    /// (`LtGemm::bias` must then be non-null): [`Epilogue::BGradB`].
    pub fn writes_bias(self) -> bool {
        self == Epilogue::BGradB
    }
}

/// One cuBLASLt matmul in column-major terms:
/// `D (m,n) = epilogue(op(A) (m,k) · op(B) (k,n) [+ D])`, A, B and the bias stored as `dtype`,
/// C = D stored as `d_dtype`, accumulated in fp32 (see [`GemmDtype`]).
///
/// Supported `(dtype, d_dtype)`: `(F32, F32)`, `(Bf16, Bf16)`, and `(Bf16, F32)`: bf16 inputs
/// with an fp32 output, as for the fp32 weight gradient of a bf16 matmul (`CUBLAS_COMPUTE_32F`,
/// beta = 1 accumulating into the fp32 buffer). An epilogue bias is always `dtype`.
///
/// A is stored `(k,m)` with leading dimension `lda` when `trans_a` (else `(m,k)`), B is stored
/// `(n,k)` when `trans_b` (else `(k,n)`), D is `(m,n)` with leading dimension `ldd`.
/// Pointers are raw device addresses; the caller keeps the buffers alive and stream-ordered.
#[derive(Clone, Copy, Debug)]
pub struct LtGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a: CUdeviceptr,
    pub lda: usize,
    pub b: CUdeviceptr,
    pub ldb: usize,
    pub d: CUdeviceptr,
    pub ldd: usize,
    /// Bias vector (length m) when `epilogue.uses_bias()`; the bias gradient (n f32 values,
    /// written) when `epilogue.writes_bias()`; else 0.
    pub bias: CUdeviceptr,
    /// The epilogue's aux matrix when `epilogue.uses_aux()` (the pre-GELU values: written by
    /// [`Epilogue::GeluAuxBias`], read by [`Epilogue::DGelu`]), else 0: (m,n) of `d_dtype` with
    /// leading dimension `ldd`, which must then be a multiple of 8.
    pub aux: CUdeviceptr,
    pub epilogue: Epilogue,
    /// `D += ...` (beta = 1) instead of `D = ...` (beta = 0).
    pub accumulate: bool,
    /// Storage type of A, B and the bias.
    pub dtype: GemmDtype,
    /// Storage type of C = D.
    pub d_dtype: GemmDtype,
}

impl LtGemm {
    /// The checks [`Blas::lt_matmul`] makes before any CUDA call: dimensions, leading dimensions,
    /// the pointers each epilogue needs (and no aux without an aux epilogue), the supported type
    /// pairs, the aux epilogues' own rules (the aux leading dimension, `ldd`, a multiple of 8;
    /// D and the inputs of one type; DGELU overwriting only) and BGRADB's: B transposed (cuBLASLt
    /// reduces op(B) over k only for op(B) = B^T, and answers NOT_SUPPORTED for op(B) = B), D in
    /// f32 (the bias gradient is f32, and cuBLASLt's bias type defaults to D's; the f32 gradient
    /// of a bf16- or f32-input GEMM is what it is used for, and no other pairing is), and the bias
    /// gradient buffer 16-byte aligned (what every caller gives, the backward's scratch being
    /// 256-byte aligned; a vector less aligned than that is refused rather than tried, as no
    /// caller needs it and the cuBLASLt documentation promises nothing for it).
    pub fn check(&self) -> Result<()> {
        let g = self;
        ensure!(g.m > 0 && g.n > 0 && g.k > 0, "cuBLASLt matmul with an empty dimension ({g:?})");
        ensure!(g.lda >= if g.trans_a { g.k } else { g.m }, "cuBLASLt: lda too small ({g:?})");
        ensure!(g.ldb >= if g.trans_b { g.n } else { g.k }, "cuBLASLt: ldb too small ({g:?})");
        ensure!(g.ldd >= g.m, "cuBLASLt: ldd too small ({g:?})");
        ensure!(!g.epilogue.uses_bias() || g.bias != 0, "cuBLASLt: epilogue {:?} needs a bias", g.epilogue);
        ensure!(
            !(g.dtype == GemmDtype::F32 && g.d_dtype == GemmDtype::Bf16),
            "cuBLASLt: fp32 inputs with a bf16 output are not supported ({g:?})"
        );
        if g.epilogue.uses_aux() {
            ensure!(g.aux != 0, "cuBLASLt: epilogue {:?} needs an aux buffer (the pre-GELU values)", g.epilogue);
            ensure!(
                g.ldd.is_multiple_of(8),
                "cuBLASLt: epilogue {:?} needs the aux leading dimension (ldd = {}) to be a multiple of 8",
                g.epilogue,
                g.ldd
            );
            ensure!(
                g.dtype == g.d_dtype,
                "cuBLASLt: epilogue {:?} needs D of the inputs' type (the aux buffer is D's type) ({g:?})",
                g.epilogue
            );
        } else {
            ensure!(g.aux == 0, "cuBLASLt: an aux buffer was given to epilogue {:?}, which has none", g.epilogue);
        }
        ensure!(
            !(g.epilogue == Epilogue::DGelu && g.accumulate),
            "cuBLASLt: epilogue DGelu overwrites D (beta = 0); it cannot accumulate ({g:?})"
        );
        if g.epilogue.writes_bias() {
            ensure!(
                g.bias != 0,
                "cuBLASLt: epilogue {:?} needs a bias gradient buffer (n = {} floats)",
                g.epilogue,
                g.n
            );
            ensure!(
                g.trans_b,
                "cuBLASLt: epilogue {:?} reduces op(B) over k and needs B transposed (trans_b); cuBLASLt has no \
                 kernel for it with op(B) = B ({g:?})",
                g.epilogue
            );
            ensure!(
                g.d_dtype == GemmDtype::F32,
                "cuBLASLt: epilogue {:?} writes an f32 bias gradient and needs D in f32 (the bias type is D's) ({g:?})",
                g.epilogue
            );
            ensure!(
                g.bias.is_multiple_of(16),
                "cuBLASLt: epilogue {:?} needs its bias gradient buffer 16-byte aligned (address {:#x})",
                g.epilogue,
                g.bias
            );
        }
        Ok(())
    }
}

/// One cuBLAS strided-batched GEMM in column-major terms, for `i in 0..batch`:
/// `C_i (m,n) = alpha * op(A_i) (m,k) · op(B_i) (k,n) + beta * C_i`, with `X_i = X + i*stride_x`
/// (strides in elements). Storage conventions as in [`LtGemm`]; A, B, C stored as `dtype`,
/// alpha/beta and accumulation fp32.
#[derive(Clone, Copy, Debug)]
pub struct StridedBatchedGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub a: CUdeviceptr,
    pub lda: usize,
    pub stride_a: usize,
    pub b: CUdeviceptr,
    pub ldb: usize,
    pub stride_b: usize,
    pub beta: f32,
    pub c: CUdeviceptr,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// Storage type of A, B and C.
    pub dtype: GemmDtype,
}

/// cuBLAS + cuBLASLt handles on the [`Gpu`] stream, their shared workspace, and the cuBLASLt
/// plans (descriptors + chosen algorithm) cached per shape.
pub struct Blas {
    stream: Arc<CudaStream>,
    allow_tf32: bool,
    cublas: Mutex<CublasHandle>,
    lt: LtHandle,
    /// Cached plans; the lock also serialises every call on the cuBLASLt handle.
    plans: Mutex<HashMap<PlanKey, Plan>>,
    workspace_ptr: CUdeviceptr,
    // Keeps the workspace allocated; dropped after the handles (field order).
    _workspace: CudaSlice<u8>,
}

// SAFETY: the raw handles are only used through `&self` methods that hold `cublas`'s or
// `plans`'s mutex (cuBLAS handles may move between threads but must not be used concurrently),
// and the stream/workspace are cudarc types that are themselves Send + Sync.
unsafe impl Send for Blas {}
// SAFETY: see above.
unsafe impl Sync for Blas {}

impl Blas {
    /// Loads the libraries (see the module docs), creates both handles on `gpu.stream()` and a
    /// [`WORKSPACE_BYTES`] workspace. `allow_tf32 = false` computes in exact fp32
    /// (`CUBLAS_COMPUTE_32F`); `true` lets fp32 GEMMs use TF32 tensor cores
    /// (`CUBLAS_COMPUTE_32F_FAST_TF32`). Errors (never panics) when cuBLAS is unavailable.
    pub fn new(gpu: &Gpu, allow_tf32: bool) -> Result<Blas> {
        load_libraries().context("cuBLAS unavailable")?;
        let stream = gpu.stream().clone();
        stream.context().bind_to_thread().context("binding the CUDA context")?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).context("allocating the cuBLAS workspace")?;
        let workspace_ptr = {
            let (ptr, _guard) = workspace.device_ptr(&stream);
            ptr
        };
        // cudarc panics if a symbol is missing from the loaded library (e.g. a too-old cuBLAS).
        let created = catch_unwind(AssertUnwindSafe(|| -> Result<(CublasHandle, LtHandle)> {
            let cublas = CublasHandle(blas_result::create_handle().map_err(|e| anyhow!("cublasCreate: {e:?}"))?);
            // SAFETY: valid handle; the stream outlives it (Blas holds an Arc to it); the workspace
            // stays allocated for the handle's life and is only used on this same stream.
            unsafe {
                blas_result::set_stream(cublas.0, stream.cu_stream() as blas_sys::cudaStream_t)
                    .map_err(|e| anyhow!("cublasSetStream: {e:?}"))?;
                blas_sys::cublasSetWorkspace_v2(cublas.0, workspace_ptr as *mut c_void, WORKSPACE_BYTES)
                    .result()
                    .map_err(|e| anyhow!("cublasSetWorkspace: {e:?}"))?;
            }
            let lt = LtHandle(lt_result::create_handle().map_err(|e| anyhow!("cublasLtCreate: {e:?}"))?);
            Ok((cublas, lt))
        }));
        let (cublas, lt) = match created {
            Ok(r) => r.context("creating cuBLAS handles")?,
            Err(_) => anyhow::bail!("cuBLAS is unusable: a required symbol is missing (cudarc panicked loading it)"),
        };
        Ok(Blas {
            stream,
            allow_tf32,
            cublas: Mutex::new(cublas),
            lt,
            plans: Mutex::new(HashMap::new()),
            workspace_ptr,
            _workspace: workspace,
        })
    }

    /// Whether fp32 GEMMs may use TF32 tensor cores (bf16 GEMMs ignore it).
    pub fn allow_tf32(&self) -> bool {
        self.allow_tf32
    }

    /// The stream both handles queue work on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Queues one cuBLASLt matmul (see [`LtGemm`]) on the stream.
    ///
    /// # Safety
    /// `a`, `b`, `d` (and `bias` and `aux` when the epilogue uses them; aux is an (m,n) matrix
    /// with leading dimension `ldd`, like D) must be live device allocations of
    /// this context, large enough for the described shapes and leading dimensions, and stay
    /// alive and unaliased by other writers until the queued work completes (hold the cudarc
    /// guards across the call on the same stream).
    pub unsafe fn lt_matmul(&self, g: &LtGemm) -> Result<()> {
        g.check()?;
        self.stream.context().bind_to_thread().context("binding the CUDA context")?;

        let key = PlanKey::of(g);
        let mut plans = self.plans.lock().map_err(|_| anyhow!("cuBLASLt plan cache poisoned"))?;
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.make_plan(g).with_context(|| format!("planning cuBLASLt matmul {g:?}"))?),
        };
        if g.epilogue.uses_bias() || g.epilogue.writes_bias() {
            // (For BGRADB the address the bias gradient is written to.)
            let bias = g.bias as *const c_void;
            // SAFETY: plan.desc is a live descriptor; the value is a pointer-sized device address.
            // The descriptor is read at enqueue time, and the plans lock is held until then.
            unsafe {
                plan.desc.set(lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            }
        }
        if g.epilogue.uses_aux() {
            // Like the bias: the plan is cached per shape, the aux buffer is this call's.
            let aux = g.aux as *const c_void;
            // SAFETY: as for the bias pointer above.
            unsafe {
                plan.desc
                    .set(lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux)?;
            }
        }
        let alpha = 1.0f32;
        let beta = if g.accumulate { 1.0f32 } else { 0.0f32 };
        // SAFETY: descriptors, layouts and algo come from a plan built for exactly this shape; the
        // caller guarantees the buffers (see # Safety); the workspace is WORKSPACE_BYTES on this
        // stream. C = D (beta = 0 means C is not read).
        unsafe {
            lt_result::matmul(
                self.lt.0,
                plan.desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                g.a as *const c_void,
                plan.a.0,
                g.b as *const c_void,
                plan.b.0,
                g.d as *const c_void,
                plan.d.0,
                g.d as *mut c_void,
                plan.d.0,
                &plan.algo,
                self.workspace_ptr as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as lt_sys::cudaStream_t,
            )
        }
        .map_err(|e| anyhow!("cublasLtMatmul failed: {e:?} ({g:?})"))
    }

    fn compute_type_lt(&self, dtype: GemmDtype) -> lt_sys::cublasComputeType_t {
        if self.allow_tf32 && dtype == GemmDtype::F32 {
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }

    fn make_plan(&self, g: &LtGemm) -> Result<Plan> {
        use lt_sys::cublasLtMatmulDescAttributes_t as D;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        // The scale type (alpha, beta) is fp32 for both storage types.
        let f32_type = lt_sys::cudaDataType::CUDA_R_32F;
        let desc = MatmulDesc(
            lt_result::create_matmul_desc(self.compute_type_lt(g.dtype), f32_type)
                .map_err(|e| anyhow!("cublasLtMatmulDescCreate: {e:?}"))?,
        );
        // cublasOperation_t values: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1; the attributes are int32.
        let (ta, tb) = (i32::from(g.trans_a), i32::from(g.trans_b));
        let epilogue = g.epilogue.raw() as u32;
        // SAFETY: live descriptor; each value has the type the attribute documents.
        unsafe {
            desc.set(D::CUBLASLT_MATMUL_DESC_TRANSA, &ta)?;
            desc.set(D::CUBLASLT_MATMUL_DESC_TRANSB, &tb)?;
            desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if g.epilogue.uses_bias() {
                let bias = g.bias as *const c_void;
                desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
                if g.dtype == GemmDtype::Bf16 {
                    // The bias is bf16 (`dtype`, like D in the bf16 forward). Said explicitly
                    // rather than relying on the default (-1, "like D" for most type
                    // combinations); the attribute is int32. fp32 keeps the default, which is
                    // fp32.
                    let bias_type = g.dtype.lt() as i32;
                    desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type)?;
                }
            }
            if g.epilogue.writes_bias() {
                // BGRADB: the bias gradient's address (the heuristic reads its alignment;
                // lt_matmul sets it again on every call) and its type, f32 for both input types:
                // D's type (`LtGemm::check` made D f32), which is cuBLASLt's default, said
                // explicitly as for the forward's bf16 bias; the attribute is int32.
                let bias = g.bias as *const c_void;
                desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
                let bias_type = GemmDtype::F32.lt() as i32;
                desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type)?;
            }
            if g.epilogue.uses_aux() {
                // The heuristic reads the aux pointer's alignment (lt_matmul sets it again on
                // every call), its leading dimension (int64; `LtGemm::check` made it a multiple
                // of 8) and, for bf16, its type (int32, said explicitly as for the bias: D's).
                let aux = g.aux as *const c_void;
                desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux)?;
                let aux_ld = i64::try_from(g.ldd).context("cuBLASLt: ldd does not fit in an int64")?;
                desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld)?;
                if g.d_dtype == GemmDtype::Bf16 {
                    let aux_type = g.d_dtype.lt() as i32;
                    desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &aux_type)?;
                }
            }
        }
        let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let a = Layout::new(g.dtype, a_rows, a_cols, g.lda)?;
        let b = Layout::new(g.dtype, b_rows, b_cols, g.ldb)?;
        let d = Layout::new(g.d_dtype, g.m, g.n, g.ldd)?;

        let pref =
            Preference(lt_result::create_matmul_pref().map_err(|e| anyhow!("cublasLtMatmulPreferenceCreate: {e:?}"))?);
        let max_ws = WORKSPACE_BYTES as u64;
        let (align_a, align_b, align_d) = (alignment(g.a), alignment(g.b), alignment(g.d));
        // SAFETY: live preference; the workspace size is uint64, the alignments uint32.
        unsafe {
            pref.set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d)?;
            if g.dtype == GemmDtype::Bf16 {
                // Keep split-K partial sums in fp32: without this mask the heuristic may pick
                // the INPLACE or OUTPUT_TYPE reduction schemes, which add the partial results
                // up in bf16 and so round more than once. (NONE is always allowed; fp32 GEMMs
                // are left as they were, their output type being the compute type. bf16 inputs
                // with an fp32 output get the mask too: harmless there, and the same scheme
                // choice for every bf16 GEMM.)
                let schemes = lt_sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
                pref.set(P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes)?;
            }
        }
        // SAFETY: every descriptor is live; C and D share D's layout.
        let heuristic = unsafe { lt_result::get_matmul_algo_heuristic(self.lt.0, desc.0, a.0, b.0, d.0, d.0, pref.0) }
            .map_err(|e| match g.epilogue {
                Epilogue::BGradB => anyhow!(
                    "cuBLASLt has no algorithm for the BGRADB bias-gradient epilogue on this GPU and shape ({e:?}); \
                     use --bias-grad reduce"
                ),
                _ => anyhow!("no cuBLASLt algorithm for this shape/epilogue: {e:?}"),
            })?;
        Ok(Plan { desc, a, b, d, algo: heuristic.algo })
    }

    /// Queues one cuBLAS strided-batched GEMM (see [`StridedBatchedGemm`]) on the stream. fp32
    /// storage computes in fp32 or TF32 as chosen at [`Blas::new`], bf16 storage in fp32.
    ///
    /// # Safety
    /// As [`Blas::lt_matmul`]: every batch's A, B, C must lie inside live device allocations of
    /// this context that stay alive until the queued work completes.
    pub unsafe fn gemm_strided_batched(&self, g: &StridedBatchedGemm) -> Result<()> {
        ensure!(g.m > 0 && g.n > 0 && g.k > 0 && g.batch > 0, "cuBLAS batched GEMM with an empty dimension ({g:?})");
        ensure!(g.lda >= if g.trans_a { g.k } else { g.m }, "cuBLAS: lda too small ({g:?})");
        ensure!(g.ldb >= if g.trans_b { g.n } else { g.k }, "cuBLAS: ldb too small ({g:?})");
        ensure!(g.ldc >= g.m, "cuBLAS: ldc too small ({g:?})");
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| anyhow!("cuBLAS batched GEMM: {what} = {v} does not fit in an int"))
        };
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = if self.allow_tf32 && g.dtype == GemmDtype::F32 {
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let data_type = g.dtype.blas();
        let (m, n, k) = (int(g.m, "m")?, int(g.n, "n")?, int(g.k, "k")?);
        let (lda, ldb, ldc) = (int(g.lda, "lda")?, int(g.ldb, "ldb")?, int(g.ldc, "ldc")?);
        let batch = int(g.batch, "batch")?;
        self.stream.context().bind_to_thread().context("binding the CUDA context")?;
        let handle = self.cublas.lock().map_err(|_| anyhow!("cuBLAS handle lock poisoned"))?;
        // SAFETY: live handle bound to our stream; alpha/beta are host f32 (default host pointer
        // mode); the caller guarantees the buffers (see # Safety).
        unsafe {
            blas_result::gemm_strided_batched_ex(
                handle.0,
                op(g.trans_a),
                op(g.trans_b),
                m,
                n,
                k,
                (&g.alpha as *const f32).cast(),
                g.a as *const c_void,
                data_type,
                lda,
                g.stride_a as i64,
                g.b as *const c_void,
                data_type,
                ldb,
                g.stride_b as i64,
                (&g.beta as *const f32).cast(),
                g.c as *mut c_void,
                data_type,
                ldc,
                g.stride_c as i64,
                batch,
                compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cublasGemmStridedBatchedEx failed: {e:?} ({g:?})"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // Handle and descriptor destruction needs the context current; errors are ignored.
        let _ = self.stream.context().bind_to_thread();
        let _ = self.stream.synchronize();
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
    }
}

/// Largest power of two (at most 256) dividing a device address: the base alignment the
/// cuBLASLt heuristic may assume.
fn alignment(ptr: CUdeviceptr) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    lda: usize,
    ldb: usize,
    ldd: usize,
    epilogue: Epilogue,
    align: (u32, u32, u32),
    /// The aux buffer's alignment (256, that of address 0, for the epilogues without one).
    aux_align: u32,
    /// The written bias gradient's alignment (BGRADB; 256 for every other epilogue, whose keys are
    /// as they were: a read bias's address is not part of the key).
    bias_grad_align: u32,
    dtype: GemmDtype,
    d_dtype: GemmDtype,
}

impl PlanKey {
    fn of(g: &LtGemm) -> PlanKey {
        PlanKey {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            lda: g.lda,
            ldb: g.ldb,
            ldd: g.ldd,
            epilogue: g.epilogue,
            align: (alignment(g.a), alignment(g.b), alignment(g.d)),
            aux_align: alignment(g.aux),
            bias_grad_align: if g.epilogue.writes_bias() { alignment(g.bias) } else { 256 },
            dtype: g.dtype,
            d_dtype: g.d_dtype,
        }
    }
}

/// Everything cuBLASLt needs for one shape: descriptor, layouts (C shares D's) and algorithm.
struct Plan {
    desc: MatmulDesc,
    a: Layout,
    b: Layout,
    d: Layout,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

struct CublasHandle(blas_sys::cublasHandle_t);

impl Drop for CublasHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate and destroyed exactly once, here.
        let _ = unsafe { blas_result::destroy_handle(self.0) };
    }
}

struct LtHandle(lt_sys::cublasLtHandle_t);

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate and destroyed exactly once, here.
        let _ = unsafe { lt_result::destroy_handle(self.0) };
    }
}

struct MatmulDesc(lt_sys::cublasLtMatmulDesc_t);

impl MatmulDesc {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: lt_sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
        // SAFETY: live descriptor; `value` points at size_of::<T>() readable bytes.
        unsafe { lt_result::set_matmul_desc_attribute(self.0, attr, (value as *const T).cast(), size_of::<T>()) }
            .map_err(|e| anyhow!("cublasLtMatmulDescSetAttribute({attr:?}): {e:?}"))
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate and destroyed exactly once, here.
        let _ = unsafe { lt_result::destroy_matmul_desc(self.0) };
    }
}

struct Layout(lt_sys::cublasLtMatrixLayout_t);

impl Layout {
    /// A column-major `(rows, cols)` matrix of `dtype` with leading dimension `ld`.
    fn new(dtype: GemmDtype, rows: usize, cols: usize, ld: usize) -> Result<Layout> {
        lt_result::create_matrix_layout(dtype.lt(), rows as u64, cols as u64, ld as i64)
            .map(Layout)
            .map_err(|e| anyhow!("cublasLtMatrixLayoutCreate({rows}x{cols}, ld {ld}): {e:?}"))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate and destroyed exactly once, here.
        let _ = unsafe { lt_result::destroy_matrix_layout(self.0) };
    }
}

struct Preference(lt_sys::cublasLtMatmulPreference_t);

impl Preference {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: lt_sys::cublasLtMatmulPreferenceAttributes_t, value: &T) -> Result<()> {
        // SAFETY: live preference; `value` points at size_of::<T>() readable bytes.
        unsafe { lt_result::set_matmul_pref_attribute(self.0, attr, (value as *const T).cast(), size_of::<T>()) }
            .map_err(|e| anyhow!("cublasLtMatmulPreferenceSetAttribute({attr:?}): {e:?}"))
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate and destroyed exactly once, here.
        let _ = unsafe { lt_result::destroy_matmul_pref(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0), 256);
        assert_eq!(alignment(4096), 256);
        assert_eq!(alignment(4096 + 4), 4);
        assert_eq!(alignment(4096 + 16), 16);
        assert_eq!(alignment(4096 + 128), 128);
    }

    /// The fc matmul of the training forward as `matmul::matmul_forward_gelu_aux` builds it
    /// (N = 6, C = 16, OC = 64), with made-up addresses: `check` never touches them.
    fn fc_gemm(epilogue: Epilogue) -> LtGemm {
        LtGemm {
            m: 64,
            n: 6,
            k: 16,
            trans_a: true,
            trans_b: false,
            a: 0x1000,
            lda: 16,
            b: 0x2000,
            ldb: 16,
            d: 0x3000,
            ldd: 64,
            bias: if epilogue.uses_bias() { 0x4000 } else { 0 },
            aux: if epilogue.uses_aux() { 0x5000 } else { 0 },
            epilogue,
            accumulate: false,
            dtype: GemmDtype::Bf16,
            d_dtype: GemmDtype::Bf16,
        }
    }

    fn refusal(g: LtGemm) -> String {
        let e = g.check().expect_err("accepted").to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn epilogues_say_what_they_use() {
        use Epilogue::*;
        let all = [None, Bias, Gelu, GeluBias, GeluAuxBias, DGelu, BGradB];
        let bias: Vec<Epilogue> = all.into_iter().filter(|e| e.uses_bias()).collect();
        let aux: Vec<Epilogue> = all.into_iter().filter(|e| e.uses_aux()).collect();
        let bias_grad: Vec<Epilogue> = all.into_iter().filter(|e| e.writes_bias()).collect();
        assert_eq!(bias, [Bias, GeluBias, GeluAuxBias]);
        assert_eq!(aux, [GeluAuxBias, DGelu]);
        assert_eq!(bias_grad, [BGradB]);
        use lt_sys::cublasLtEpilogue_t as E;
        assert_eq!(GeluAuxBias.raw(), E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
        assert_eq!(DGelu.raw(), E::CUBLASLT_EPILOGUE_DGELU);
        assert_eq!(BGradB.raw(), E::CUBLASLT_EPILOGUE_BGRADB);
        // The four the verified path uses are unchanged.
        assert_eq!(
            [None.raw(), Bias.raw(), Gelu.raw(), GeluBias.raw()],
            [
                E::CUBLASLT_EPILOGUE_DEFAULT,
                E::CUBLASLT_EPILOGUE_BIAS,
                E::CUBLASLT_EPILOGUE_GELU,
                E::CUBLASLT_EPILOGUE_GELU_BIAS
            ]
        );
    }

    /// What `lt_matmul` refuses before any CUDA call, each in one line: the aux epilogues without
    /// their buffer, with a leading dimension cuBLASLt does not take, with mixed types, DGELU
    /// accumulating, and an aux buffer given to an epilogue without one. Every epilogue of the
    /// verified path (aux 0) still passes.
    #[test]
    fn aux_epilogues_are_checked_before_any_cuda_call() {
        for e in [Epilogue::None, Epilogue::Bias, Epilogue::Gelu, Epilogue::GeluBias, Epilogue::GeluAuxBias] {
            fc_gemm(e).check().unwrap_or_else(|err| panic!("{e:?}: {err}"));
        }
        let dgelu = LtGemm { accumulate: false, ..fc_gemm(Epilogue::DGelu) };
        dgelu.check().unwrap();
        let mut f32_both = fc_gemm(Epilogue::GeluAuxBias);
        (f32_both.dtype, f32_both.d_dtype) = (GemmDtype::F32, GemmDtype::F32);
        f32_both.check().unwrap();

        for e in [Epilogue::GeluAuxBias, Epilogue::DGelu] {
            let e_no_aux = refusal(LtGemm { aux: 0, ..fc_gemm(e) });
            assert!(e_no_aux.contains(&format!("epilogue {e:?} needs an aux buffer")), "{e_no_aux}");
            // ldd 68 >= m = 64, but not a multiple of 8.
            let e_ld = refusal(LtGemm { ldd: 68, ..fc_gemm(e) });
            assert!(e_ld.contains("aux leading dimension (ldd = 68) to be a multiple of 8"), "{e_ld}");
            let e_mixed = refusal(LtGemm { d_dtype: GemmDtype::F32, ..fc_gemm(e) });
            assert!(e_mixed.contains("needs D of the inputs' type"), "{e_mixed}");
            // The same ldd without an aux epilogue is fine: the rule is the aux buffer's.
            LtGemm { ldd: 68, aux: 0, bias: 0x4000, epilogue: Epilogue::Bias, ..fc_gemm(e) }.check().unwrap();
        }
        let e_acc = refusal(LtGemm { accumulate: true, ..fc_gemm(Epilogue::DGelu) });
        assert!(e_acc.contains("epilogue DGelu overwrites D (beta = 0); it cannot accumulate"), "{e_acc}");
        let e_bias = refusal(LtGemm { bias: 0, ..fc_gemm(Epilogue::GeluAuxBias) });
        assert!(e_bias.contains("epilogue GeluAuxBias needs a bias"), "{e_bias}");
        for e in [Epilogue::None, Epilogue::Bias, Epilogue::Gelu, Epilogue::GeluBias] {
            let e_stray = refusal(LtGemm { aux: 0x5000, ..fc_gemm(e) });
            assert!(e_stray.contains(&format!("an aux buffer was given to epilogue {e:?}")), "{e_stray}");
        }
        // The checks the verified path already had still hold.
        assert!(refusal(LtGemm { ldd: 63, ..fc_gemm(Epilogue::Bias) }).contains("ldd too small"));
        assert!(refusal(LtGemm { m: 0, ..fc_gemm(Epilogue::None) }).contains("empty dimension"));
        let fp32_in_bf16_out = LtGemm { dtype: GemmDtype::F32, ..fc_gemm(Epilogue::None) };
        assert!(refusal(fp32_in_bf16_out).contains("fp32 inputs with a bf16 output"));
    }

    /// The plan cache tells aux buffers of different alignment apart (the heuristic depends on
    /// it), and an epilogue without one keys as before (address 0: 256).
    #[test]
    fn plan_key_includes_the_aux_alignment() {
        let g = fc_gemm(Epilogue::GeluAuxBias);
        assert_ne!(PlanKey::of(&g), PlanKey::of(&LtGemm { aux: 0x5004, ..g }));
        assert_eq!(PlanKey::of(&fc_gemm(Epilogue::Bias)).aux_align, 256);
    }

    /// The dweight GEMM of a matmul backward as `matmul::matmul_backward` builds it (N = 6, C = 16,
    /// OC = 64: m = C, n = OC, k = N; A the input (C,N) ld C as is, B dout (OC,N) ld OC
    /// transposed, D dweight (C,OC) ld C, f32, accumulated), with made-up addresses and, for
    /// BGRADB, the scratch at 0x4000.
    fn dweight_gemm(epilogue: Epilogue) -> LtGemm {
        LtGemm {
            m: 16,
            n: 64,
            k: 6,
            trans_a: false,
            trans_b: true,
            a: 0x1000,
            lda: 16,
            b: 0x2000,
            ldb: 64,
            d: 0x3000,
            ldd: 16,
            bias: if epilogue.writes_bias() { 0x4000 } else { 0 },
            aux: 0,
            epilogue,
            accumulate: true,
            dtype: GemmDtype::Bf16,
            d_dtype: GemmDtype::F32,
        }
    }

    /// What `lt_matmul` refuses of BGRADB before any CUDA call, each in one line: no bias
    /// gradient buffer, B not transposed (cuBLASLt has no such kernel), a bf16 D (the gradient
    /// is f32, D's type), a buffer not 16-byte aligned, an aux buffer. The dweight GEMM as the
    /// backward builds it passes, in both precisions, accumulating or not, and so does the plain
    /// GEMM of the verified path.
    #[test]
    fn bgradb_is_checked_before_any_cuda_call() {
        for (dtype, accumulate) in [(GemmDtype::Bf16, true), (GemmDtype::F32, true), (GemmDtype::Bf16, false)] {
            let g = LtGemm { dtype, accumulate, ..dweight_gemm(Epilogue::BGradB) };
            g.check().unwrap_or_else(|e| panic!("{g:?}: {e}"));
            LtGemm { dtype, accumulate, ..dweight_gemm(Epilogue::None) }.check().unwrap();
        }
        let e_none = refusal(LtGemm { bias: 0, ..dweight_gemm(Epilogue::BGradB) });
        assert!(e_none.contains("epilogue BGradB needs a bias gradient buffer (n = 64 floats)"), "{e_none}");
        // B (OC,N) ld 64 >= k = 6 untransposed is a valid GEMM, but not one BGRADB has a kernel for.
        let e_trans = refusal(LtGemm { trans_b: false, ..dweight_gemm(Epilogue::BGradB) });
        assert!(e_trans.contains("epilogue BGradB reduces op(B) over k and needs B transposed (trans_b)"), "{e_trans}");
        LtGemm { trans_b: false, ..dweight_gemm(Epilogue::None) }.check().unwrap();
        let bf16_d = LtGemm { d_dtype: GemmDtype::Bf16, ..dweight_gemm(Epilogue::BGradB) };
        let e_d = refusal(bf16_d);
        assert!(e_d.contains("epilogue BGradB writes an f32 bias gradient and needs D in f32"), "{e_d}");
        for misaligned in [0x4004, 0x4008, 0x400c] {
            let e_align = refusal(LtGemm { bias: misaligned, ..dweight_gemm(Epilogue::BGradB) });
            let want =
                format!("epilogue BGradB needs its bias gradient buffer 16-byte aligned (address {misaligned:#x})");
            assert!(e_align.contains(&want), "{e_align}");
        }
        LtGemm { bias: 0x4010, ..dweight_gemm(Epilogue::BGradB) }.check().unwrap();
        let e_aux = refusal(LtGemm { aux: 0x5000, ..dweight_gemm(Epilogue::BGradB) });
        assert!(e_aux.contains("an aux buffer was given to epilogue BGradB"), "{e_aux}");
    }

    /// BGRADB plans are keyed by the bias gradient's alignment (the heuristic reads it from the
    /// address set at planning), while the read bias of the forward epilogues keys as before:
    /// not at all (constant 256), so the verified path plans exactly as often as it did.
    #[test]
    fn plan_key_includes_the_bias_gradient_alignment_for_bgradb_only() {
        let g = dweight_gemm(Epilogue::BGradB);
        assert_eq!(PlanKey::of(&g).bias_grad_align, 256);
        assert_ne!(PlanKey::of(&g), PlanKey::of(&LtGemm { bias: 0x4010, ..g }));
        assert_ne!(PlanKey::of(&g), PlanKey::of(&dweight_gemm(Epilogue::None)));
        let fwd = fc_gemm(Epilogue::Bias);
        assert_eq!(PlanKey::of(&fwd), PlanKey::of(&LtGemm { bias: 0x4004, ..fwd }));
        assert_eq!(PlanKey::of(&fwd).bias_grad_align, 256);
        assert_eq!(PlanKey::of(&dweight_gemm(Epilogue::None)).bias_grad_align, 256);
    }

    #[test]
    fn loading_never_panics() {
        // Ok on a machine with cuBLAS, a one-line reason elsewhere; never a panic.
        match load_libraries() {
            Ok(()) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
