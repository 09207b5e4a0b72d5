// Optimizer kernels (f32 gradients, moments and master weights): the global gradient norm, gradient scaling (clipping) and the AdamW update.
//
// global_norm_partials: g (N) -> partial (gridDim.x) doubles, sum of g*g per block.
// global_norm_final:    partial (nblocks) -> partial[nblocks] = sum of the partials.
//
// Deterministic by construction: the host launches global_norm_partials with a fixed grid
// (OPTIM_NORM_BLOCKS blocks of OPTIM_NORM_THREADS threads, independent of the device), so thread
// `gid` always sums elements gid, gid + G, gid + 2G, ... (G = total threads) in that order, in
// double; each block then reduces its threads' sums with a fixed shared-memory tree, and one block
// reduces the per-block sums with a fixed strided pass and the same tree. The same input gives the
// same bits on every GPU and every run. A float squared is exact in double (24 + 24 bits < 53).
//
// grad_scale: g[i] *= coef, one correctly rounded multiply (bit-identical to the CPU's `g * coef`).
//
// adamw_update: per element, in the CPU reference's expression order (src/cpu/adamw.rs):
//   m = b1*m + (1-b1)*g
//   v = b2*v + ((1-b2)*g)*g
//   denom = sqrt(v)*inv_sqrt_bc2 + eps
//   p = p*decay - (step_size*m)/denom
// Every operation goes through a round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fsub_rn,
// __fsqrt_rn, __fdiv_rn) so nvcc cannot contract a multiply and an add into an FMA; Rust never
// fuses, so the results are bit-identical to the CPU step.
//
// adamw_update_bf16: the same update of the f32 master weights (bit-identical to adamw_update),
// then the bf16 working copy the forward and backward read is written from the new master value
// with stochastic rounding: params[i] = sr(master[i], sr_bits(index_base + i, seed)).
// params_round_bf16 writes the working copy of a whole buffer the same way without an update, so
// a resumed run re-creates, bit for bit, the copy its last AdamW step wrote (same seed, same flat
// indices): the checkpoint needs only the f32 master weights.
//
// Stochastic rounding to bf16 keeps the top 16 bits of the float after adding 16 random bits to
// the low half: it rounds up (in magnitude) with probability (low 16 bits) / 2^16, so the rounded
// value equals x in expectation and small updates are not lost to round-to-nearest. Inf and NaN go
// through __float2bfloat16_rn; a carry that would turn the largest finite value into inf keeps the
// truncated value. The random bits are a pure function of (seed, flat index): a splitmix64
// finaliser of index + seed * 0x9E3779B97F4A7C15, low 32 bits. src/gpu/adamw.rs mirrors both on the
// host (sr_bits, stochastic_round_bf16) and the tests compare them bit for bit.
//
// Launch (grad_scale, adamw_update*, params_round_bf16): any blockDim.x, grid-stride loop with
// 64-bit indices.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace adamw_detail {

constexpr int NORM_THREADS = 256;  // must equal the host's OPTIM_NORM_THREADS

// Sums `s[0..NORM_THREADS)` into s[0] with a fixed tree; every thread of the block must call it.
__device__ __forceinline__ void block_tree_sum(double* s) {
    for (int width = NORM_THREADS / 2; width > 0; width >>= 1) {
        if ((int)threadIdx.x < width) {
            s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + width]);
        }
        __syncthreads();
    }
}

// 32 random bits for element `index` under `seed` (mirrored by sr_bits in src/gpu/adamw.rs).
__device__ __forceinline__ unsigned int sr_bits(unsigned long long index, unsigned int seed) {
    unsigned long long z = index + (unsigned long long)seed * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (unsigned int)z;
}

// x rounded to bf16 up or down at random, unbiased (see the header).
__device__ __forceinline__ __nv_bfloat16 round_stochastic(float x, unsigned int r) {
    const unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
    unsigned int up = bits + (r & 0xffffu);
    if ((up & 0x7f800000u) == 0x7f800000u) up = bits;
    return __ushort_as_bfloat16((unsigned short)(up >> 16));
}

// The AdamW update of one element (CPU expression order, no contraction); returns the new weight.
__device__ __forceinline__ float adamw_element(float p, float g, float* m, float* v, float beta1, float beta2,
                                               float one_minus_b1, float one_minus_b2, float eps, float decay,
                                               float step_size, float inv_sqrt_bc2) {
    const float mi = __fadd_rn(__fmul_rn(beta1, *m), __fmul_rn(one_minus_b1, g));
    const float vi = __fadd_rn(__fmul_rn(beta2, *v), __fmul_rn(__fmul_rn(one_minus_b2, g), g));
    *m = mi;
    *v = vi;
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bc2), eps);
    return __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(step_size, mi), denom));
}

}  // namespace adamw_detail

extern "C" __global__ void __launch_bounds__(adamw_detail::NORM_THREADS)
    global_norm_partials(const float* g, long long N, double* partial) {
    __shared__ double s[adamw_detail::NORM_THREADS];
    const long long stride = (long long)gridDim.x * blockDim.x;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const double x = (double)g[i];
        acc = __dadd_rn(acc, __dmul_rn(x, x));
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    adamw_detail::block_tree_sum(s);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = s[0];
    }
}

// One block of NORM_THREADS threads. Thread t sums partials t, t + NORM_THREADS, ... in order,
// then the tree; the total goes to partial[nblocks] (after every partial has been read).
extern "C" __global__ void __launch_bounds__(adamw_detail::NORM_THREADS)
    global_norm_final(double* partial, int nblocks) {
    __shared__ double s[adamw_detail::NORM_THREADS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) {
        acc = __dadd_rn(acc, partial[i]);
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    adamw_detail::block_tree_sum(s);
    if (threadIdx.x == 0) {
        partial[nblocks] = s[0];
    }
}

extern "C" __global__ void grad_scale(float* g, float coef, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        g[i] = __fmul_rn(g[i], coef);
    }
}

extern "C" __global__ void adamw_update(float* params, const float* grads, float* m, float* v, long long N,
                                        float beta1, float beta2, float eps, float decay, float step_size,
                                        float inv_sqrt_bc2) {
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        params[i] = adamw_detail::adamw_element(params[i], grads[i], &m[i], &v[i], beta1, beta2, one_minus_b1,
                                                one_minus_b2, eps, decay, step_size, inv_sqrt_bc2);
    }
}

// master, grads, m, v (N) f32 -> master, m, v updated; params (N) bf16 = sr(master).
// index_base: the flat index of element 0 (the tensor's offset in the parameter buffer).
extern "C" __global__ void adamw_update_bf16(float* master, __nv_bfloat16* params, const float* grads, float* m,
                                             float* v, long long N, float beta1, float beta2, float eps,
                                             float decay, float step_size, float inv_sqrt_bc2,
                                             unsigned int seed, long long index_base) {
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float p = adamw_detail::adamw_element(master[i], grads[i], &m[i], &v[i], beta1, beta2,
                                                    one_minus_b1, one_minus_b2, eps, decay, step_size,
                                                    inv_sqrt_bc2);
        master[i] = p;
        params[i] = adamw_detail::round_stochastic(
            p, adamw_detail::sr_bits((unsigned long long)(index_base + i), seed));
    }
}

// master (N) f32 -> params (N) bf16 = sr(master), flat indices 0..N.
extern "C" __global__ void params_round_bf16(__nv_bfloat16* params, const float* master, long long N,
                                             unsigned int seed) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        params[i] = adamw_detail::round_stochastic(master[i], adamw_detail::sr_bits((unsigned long long)i, seed));
    }
}

// The _vec AdamW (behind --kernels vector): the same correctly rounded per-element update
// (adamw_element, round_stochastic), so bit-identical to adamw_update / adamw_update_bf16, with
// 128-bit accesses. adamw_update_vec: thread q updates elements [4q, 4q + 4) with one float4 load
// of each of params, grads, m, v and a float4 store of params, m, v. adamw_update_vec_bf16: thread q
// updates [8q, 8q + 8), two float4 accesses per f32 array and one 128-bit store of 8 bf16. The
// last N % 4 (N % 8) elements one per thread. Every pointer 16-byte aligned (checked on the host,
// which launches the scalar kernel for a tensor whose offset is not). Launch: grid-stride, any
// blockDim.x, grid = ceil(N / V / blockDim.x).
namespace adamw_detail {
template <int V>
__device__ __forceinline__ void update_pack(float* params, const float* grads, float* m, float* v, long long i,
                                            float beta1, float beta2, float one_minus_b1, float one_minus_b2,
                                            float eps, float decay, float step_size, float inv_sqrt_bc2,
                                            float coef, float (&updated)[V]) {
#pragma unroll
    for (int h = 0; h < V / 4; ++h) {
        vec::Pack<float> p = vec::load(params + i + 4 * h);
        const vec::Pack<float> g = vec::load(grads + i + 4 * h);
        vec::Pack<float> mm = vec::load(m + i + 4 * h);
        vec::Pack<float> vv = vec::load(v + i + 4 * h);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            p.v[k] = adamw_element(p.v[k], __fmul_rn(g.v[k], coef), &mm.v[k], &vv.v[k], beta1, beta2, one_minus_b1,
                                   one_minus_b2, eps, decay, step_size, inv_sqrt_bc2);
            updated[4 * h + k] = p.v[k];
        }
        vec::store(params + i + 4 * h, p);
        vec::store(m + i + 4 * h, mm);
        vec::store(v + i + 4 * h, vv);
    }
}
}  // namespace adamw_detail

extern "C" __global__ void adamw_update_vec(float* params, const float* grads, float* m, float* v, long long N,
                                            float beta1, float beta2, float eps, float decay, float step_size,
                                            float inv_sqrt_bc2) {
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long packs = N / 4;
    for (long long q = tid; q < packs; q += stride) {
        float updated[4];
        adamw_detail::update_pack<4>(params, grads, m, v, 4 * q, beta1, beta2, one_minus_b1, one_minus_b2, eps,
                                     decay, step_size, inv_sqrt_bc2, 1.0f, updated);
    }
    for (long long i = 4 * packs + tid; i < N; i += stride) {
        params[i] = adamw_detail::adamw_element(params[i], grads[i], &m[i], &v[i], beta1, beta2, one_minus_b1,
                                                one_minus_b2, eps, decay, step_size, inv_sqrt_bc2);
    }
}

extern "C" __global__ void adamw_update_vec_bf16(float* master, __nv_bfloat16* params, const float* grads,
                                                 float* m, float* v, long long N, float beta1, float beta2,
                                                 float eps, float decay, float step_size, float inv_sqrt_bc2,
                                                 unsigned int seed, long long index_base) {
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long packs = N / 8;
    for (long long q = tid; q < packs; q += stride) {
        const long long i = 8 * q;
        float updated[8];
        adamw_detail::update_pack<8>(master, grads, m, v, i, beta1, beta2, one_minus_b1, one_minus_b2, eps, decay,
                                     step_size, inv_sqrt_bc2, 1.0f, updated);
        vec::Pack<__nv_bfloat16> out;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            out.v[k] = adamw_detail::round_stochastic(
                updated[k], adamw_detail::sr_bits((unsigned long long)(index_base + i + k), seed));
        }
        vec::store(params + i, out);
    }
    for (long long i = 8 * packs + tid; i < N; i += stride) {
        const float p = adamw_detail::adamw_element(master[i], grads[i], &m[i], &v[i], beta1, beta2, one_minus_b1,
                                                    one_minus_b2, eps, decay, step_size, inv_sqrt_bc2);
        master[i] = p;
        params[i] = adamw_detail::round_stochastic(p, adamw_detail::sr_bits((unsigned long long)(index_base + i), seed));
    }
}

// One optimizer step decided on the device (`--sync step`, never run on a GPU yet): the host queues
// a whole step and reads back one record at its end, the f64 `state`:
//   state[0] loss: the sum of the micro-batches' mean losses, then (after step_decide) their mean
//   state[1] the gradient norm before clipping
//   state[2] the clip factor (an f32 value), 1 when no clipping applies
//   state[3] 1 when the update is applied, 0 when the step is skipped (a non-finite loss or norm)
//
// step_loss_accumulate: losses (N) f32 -> state[0] += (sum in f64) / N. One block of NORM_THREADS:
//   thread t sums losses t, t + NORM_THREADS, ... in order, then the fixed tree. The host path sums
//   the same values in f64 left to right, so the two differ only in the order of f64 additions.
// step_decide: one thread. From state[0], the norm's sum of squares (global_norm_final's total),
//   max_norm, the number of micro-batches and a poison flag (a test hook that makes the loss NaN),
//   the same f64 expressions as the host (src/gpu/adamw.rs clip_factor): loss = sum / accum,
//   norm = sqrt(sumsq), coef = f32(min(max_norm / (norm + 1e-6), 1)) when max_norm > 0 and the norm
//   is finite, applied = loss and norm finite.
// adamw_step[_vec][_bf16]: the AdamW update of every tensor in one launch. blockIdx.y picks the
//   tensor from `table` (offset, length, decays: 3 long longs per tensor); the blocks of one row
//   stride over its elements. Each gradient is first multiplied by the clip factor (one correctly
//   rounded multiply, as grad_scale; by 1 it is the identity), then adamw_element, so the result
//   is bit-identical to grad_scale + adamw_update[_bf16]. Nothing is written when state[3] is 0.
//   _vec: 128-bit accesses as adamw_update_vec[_bf16]; every tensor offset a multiple of 8
//   (checked on the host, which otherwise launches the scalar kernels).
extern "C" __global__ void __launch_bounds__(adamw_detail::NORM_THREADS)
    step_loss_accumulate(const float* losses, long long N, double* state) {
    __shared__ double s[adamw_detail::NORM_THREADS];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < N; i += blockDim.x) {
        acc = __dadd_rn(acc, (double)losses[i]);
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    adamw_detail::block_tree_sum(s);
    if (threadIdx.x == 0) {
        state[0] = __dadd_rn(state[0], __ddiv_rn(s[0], (double)N));
    }
}

extern "C" __global__ void step_decide(double* state, const double* norm_sumsq, double max_norm, int accum,
                                       int poison) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double loss = __ddiv_rn(state[0], (double)accum);
    if (poison) loss = __longlong_as_double(0x7ff8000000000000ll);
    const double norm = __dsqrt_rn(norm_sumsq[0]);
    double coef = 1.0;
    if (max_norm > 0.0 && isfinite(norm)) {
        coef = fmin(__ddiv_rn(max_norm, __dadd_rn(norm, 1e-6)), 1.0);
    }
    state[0] = loss;
    state[1] = norm;
    state[2] = (double)__double2float_rn(coef);
    state[3] = (isfinite(loss) && isfinite(norm)) ? 1.0 : 0.0;
}

namespace adamw_detail {
// One element of adamw_step: the clipped gradient, the update, and (bf16) the working copy.
template <bool BF16>
__device__ __forceinline__ void step_element(float* master, __nv_bfloat16* params, const float* grads, float* m,
                                             float* v, long long i, float coef, float beta1, float beta2,
                                             float one_minus_b1, float one_minus_b2, float eps, float decay,
                                             float step_size, float inv_sqrt_bc2, unsigned int seed) {
    const float p = adamw_element(master[i], __fmul_rn(grads[i], coef), &m[i], &v[i], beta1, beta2, one_minus_b1,
                                  one_minus_b2, eps, decay, step_size, inv_sqrt_bc2);
    master[i] = p;
    if (BF16) params[i] = round_stochastic(p, sr_bits((unsigned long long)i, seed));
}

template <bool BF16, bool VEC>
__device__ __forceinline__ void adamw_step(float* master, __nv_bfloat16* params, const float* grads, float* m,
                                           float* v, const long long* table, const double* state, float beta1,
                                           float beta2, float eps, float decay, float step_size,
                                           float inv_sqrt_bc2, unsigned int seed) {
    if (state[3] == 0.0) return;
    const float coef = (float)state[2];
    const long long off = table[3 * blockIdx.y], n = table[3 * blockIdx.y + 1];
    const float d = table[3 * blockIdx.y + 2] ? decay : 1.0f;
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    constexpr int V = BF16 ? 8 : 4;
    const long long packs = VEC ? n / V : 0;
    for (long long q = tid; q < packs; q += stride) {
        const long long i = off + V * q;
        float updated[V];
        update_pack<V>(master, grads, m, v, i, beta1, beta2, one_minus_b1, one_minus_b2, eps, d, step_size,
                       inv_sqrt_bc2, coef, updated);
        if (BF16) {
            vec::Pack<__nv_bfloat16> out;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                out.v[k] = round_stochastic(updated[k], sr_bits((unsigned long long)(i + k), seed));
            }
            vec::store(params + i, out);
        }
    }
    for (long long i = V * packs + tid; i < n; i += stride) {
        step_element<BF16>(master, params, grads, m, v, off + i, coef, beta1, beta2, one_minus_b1, one_minus_b2,
                           eps, d, step_size, inv_sqrt_bc2, seed);
    }
}
}  // namespace adamw_detail

#define GENESIS_ADAMW_STEP_F32(NAME, VEC)                                                                       \
    extern "C" __global__ void NAME(float* params, const float* grads, float* m, float* v,                     \
                                    const long long* table, const double* state, float beta1, float beta2,     \
                                    float eps, float decay, float step_size, float inv_sqrt_bc2) {             \
        adamw_detail::adamw_step<false, VEC>(params, nullptr, grads, m, v, table, state, beta1, beta2, eps,    \
                                             decay, step_size, inv_sqrt_bc2, 0u);                              \
    }
#define GENESIS_ADAMW_STEP_BF16(NAME, VEC)                                                                      \
    extern "C" __global__ void NAME(float* master, __nv_bfloat16* params, const float* grads, float* m,        \
                                    float* v, const long long* table, const double* state, float beta1,        \
                                    float beta2, float eps, float decay, float step_size, float inv_sqrt_bc2,  \
                                    unsigned int seed) {                                                       \
        adamw_detail::adamw_step<true, VEC>(master, params, grads, m, v, table, state, beta1, beta2, eps, decay, \
                                            step_size, inv_sqrt_bc2, seed);                                    \
    }
GENESIS_ADAMW_STEP_F32(adamw_step, false)
GENESIS_ADAMW_STEP_F32(adamw_step_vec, true)
GENESIS_ADAMW_STEP_BF16(adamw_step_bf16, false)
GENESIS_ADAMW_STEP_BF16(adamw_step_vec_bf16, true)
