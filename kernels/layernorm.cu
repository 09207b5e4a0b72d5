// inp (N,C), weight (C), bias (C) -> out (N,C), mean (N), rstd (N)
// a (N,C), b (N,C), weight (C), bias (C) -> residual (N,C), out (N,C), mean (N), rstd (N)
//
// LayerNorm over the channel dimension, forward pass (eps 1e-5, biased variance):
//   mean[n]   = sum_c x[n,c] / C
//   rstd[n]   = 1 / sqrt(sum_c (x[n,c] - mean[n])^2 / C + 1e-5)
//   out[n,c]  = (x[n,c] - mean[n]) * rstd[n] * weight[c] + bias[c]
// layernorm_forward normalises x = inp. residual_layernorm_forward first forms
// x = residual = a + b (written out, a single f32 add like the CPU residual) in
// the same pass that sums it, then normalises it.
//
// One warp per row. Each lane walks the row with stride 32 (coalesced), keeps a
// sequential fp32 partial, and the partials are combined with a butterfly of
// full-mask __shfl_xor_sync, so every lane ends with the row total. Two passes
// (mean first, then the sum of squared deviations about it) keep the variance
// free of the cancellation a one-pass E[x^2] - E[x]^2 would suffer. A third pass
// writes out. The row is re-read from global memory (L1/L2 resident for the row
// sizes of GPT-2), so any C works and no shared memory is needed. In the fused
// kernel each lane re-reads exactly the residual elements it wrote itself, so no
// synchronisation is needed between the passes.
//
// Two kernels of each from one template over the storage type T of out,
// residual, inp, a, b, weight and bias: NAME (float) and NAME_bf16
// (__nv_bfloat16); mean and rstd are f32 in both. The bf16 kernels load every
// value as float, do all arithmetic in f32, and round each stored value to
// bf16 once (round-to-nearest-even). In the fused bf16 kernel the statistics
// are those of the residual as stored (a + b rounded to bf16), the same values
// the later passes re-read, so the normalisation is of exactly that tensor.
//
// Launch: blockDim.x a multiple of 32 (256 is typical: 8 rows per block),
// grid = ceil(N / (blockDim.x / 32)), no shared memory. Row offsets are 64-bit,
// so N*C may exceed 2^31. Warps past the last row return at once (warp-uniform,
// and there is no __syncthreads).
//
// Backward, all three gradients ACCUMULATED (+=) as the CPU reference:
//   dnorm[c]  = dout[n,c] * weight[c],   norm[c] = (inp[n,c] - mean[n]) * rstd[n]
//   dinp[n,c] += (dnorm[c] - mean_c(dnorm) - norm[c] * mean_c(dnorm * norm)) * rstd[n]
//   dweight[c] += sum_n norm[n,c] * dout[n,c],   dbias[c] += sum_n dout[n,c]
// Deterministic without atomics: the dweight/dbias reductions over N use a
// fixed partition of the rows into G chunks of R rows (R, G a function of N
// only, chosen on the host), so the same inputs give the same bits every run.
// layernorm_backward has two block roles, decided per block (uniform):
//  - blocks [0, row_blocks): one warp per row (row_blocks = ceil(N / warps per
//    block)), the two row means by warp butterfly as in the forward, then
//    dinp += ... for the row.
//  - blocks [row_blocks, row_blocks + G * ceil(C / blockDim.x)): one thread per
//    (chunk g, channel c), summing its chunk's rows sequentially in row order
//    into scratch[g*C + c] (dweight part) and scratch[(G + g)*C + c] (dbias
//    part). Plain stores: every slot has exactly one writer.
// layernorm_backward_reduce then has one thread per channel sum the G slots in
// order g = 0..G-1 and add the totals into dweight and dbias.
// layernorm_backward (float) and layernorm_backward_bf16 come from one template
// over the storage type T of dinp, dout, inp and weight; dweight, dbias, scratch,
// mean and rstd are f32 in both (parameter gradients are always f32), so there
// is a single layernorm_backward_reduce. The bf16 kernel loads every value as
// float and does all arithmetic in f32 exactly as the float one; the only bf16
// rounding is of each dinp value, loaded as float, accumulated in f32 and
// rounded to bf16 once (round-to-nearest-even). Its dweight/dbias partials are
// the f32 kernel's on the same (widened) values.
// None of the backward kernels uses shared memory or __syncthreads, so threads
// past the end (rows >= N, channels >= C) simply return.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace layernorm_detail {

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float round_to(float, float v) { return v; }
__device__ __forceinline__ __nv_bfloat16 round_to(__nv_bfloat16, float v) { return __float2bfloat16_rn(v); }
// v converted to T (a no-op for float, round-to-nearest-even for bf16).
template <typename T>
__device__ __forceinline__ T to(float v) {
    return round_to(T(), v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Normalises one row x (C values) into out, given the sum of x already reduced
// across the warp; lane 0 stores the row's mean and rstd.
template <typename T>
__device__ __forceinline__ void normalize_row(T* out, float* mean, float* rstd, const T* x, const T* weight,
                                              const T* bias, float row_sum, long long row, int C, int lane) {
    const float mu = row_sum / (float)C;
    float sq = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float d = load(x[i]) - mu;
        sq += d * d;
    }
    const float var = warp_sum(sq) / (float)C;
    const float rs = 1.0f / sqrtf(var + 1e-5f);
    for (int i = lane; i < C; i += 32) {
        out[i] = to<T>((load(x[i]) - mu) * rs * load(weight[i]) + load(bias[i]));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T>
__device__ __forceinline__ void forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                        const T* bias, int N, int C) {
    const int warps_per_block = blockDim.x / 32;
    const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) {
        return;
    }
    const T* x = inp + row * C;
    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        sum += load(x[i]);
    }
    sum = warp_sum(sum);
    normalize_row(out + row * C, mean, rstd, x, weight, bias, sum, row, C, lane);
}

template <typename T>
__device__ __forceinline__ void residual_forward(T* residual, T* out, float* mean, float* rstd, const T* a,
                                                 const T* b, const T* weight, const T* bias, int N, int C) {
    const int warps_per_block = blockDim.x / 32;
    const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) {
        return;
    }
    const long long base = row * C;
    T* r = residual + base;
    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        // Sum the value as stored (rounded to T), which is what the later passes re-read.
        const T v = to<T>(load(a[base + i]) + load(b[base + i]));
        r[i] = v;
        sum += load(v);
    }
    sum = warp_sum(sum);
    normalize_row(out + base, mean, rstd, r, weight, bias, sum, row, C, lane);
}

// dinp for one row (one warp): dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd.
template <typename T>
__device__ __forceinline__ void backward_dinp_row(T* dinp, const T* dout, const T* inp, const T* weight, float mu,
                                                  float rs, int C, int lane) {
    float dnorm_sum = 0.0f;
    float dnorm_norm_sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float norm = (load(inp[i]) - mu) * rs;
        const float dnorm = load(dout[i]) * load(weight[i]);
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * norm;
    }
    const float inv_c = 1.0f / (float)C;
    const float dnorm_mean = warp_sum(dnorm_sum) * inv_c;
    const float dnorm_norm_mean = warp_sum(dnorm_norm_sum) * inv_c;
    for (int i = lane; i < C; i += 32) {
        const float norm = (load(inp[i]) - mu) * rs;
        const float dnorm = load(dout[i]) * load(weight[i]);
        // Accumulate in f32 onto the old value, then round once (a plain += for float).
        dinp[i] = to<T>(load(dinp[i]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs);
    }
}

// See the header: role by block, rows_per_chunk = R, chunks = G.
template <typename T>
__device__ __forceinline__ void backward(T* dinp, float* scratch, const T* dout, const T* inp, const T* weight,
                                         const float* mean, const float* rstd, int N, int C, int rows_per_chunk,
                                         int chunks) {
    const int warps_per_block = blockDim.x / 32;
    const int row_blocks = (N + warps_per_block - 1) / warps_per_block;
    if ((int)blockIdx.x < row_blocks) {
        const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
        if (row >= N) {
            return;
        }
        const long long base = row * C;
        backward_dinp_row(dinp + base, dout + base, inp + base, weight, mean[row], rstd[row], C, threadIdx.x % 32);
        return;
    }
    const int channel_blocks = (C + blockDim.x - 1) / blockDim.x;
    const int b = (int)blockIdx.x - row_blocks;
    const int g = b / channel_blocks;
    const int c = (b % channel_blocks) * blockDim.x + threadIdx.x;
    if (g >= chunks || c >= C) {
        return;
    }
    const long long r0 = (long long)g * rows_per_chunk;
    const long long r1 = min(r0 + rows_per_chunk, (long long)N);
    float dw = 0.0f;
    float db = 0.0f;
    for (long long r = r0; r < r1; ++r) {
        const float g_rc = load(dout[r * C + c]);
        dw += (load(inp[r * C + c]) - mean[r]) * rstd[r] * g_rc;
        db += g_rc;
    }
    scratch[(long long)g * C + c] = dw;
    scratch[((long long)chunks + g) * C + c] = db;
}

__device__ __forceinline__ void backward_reduce(float* dweight, float* dbias, const float* scratch, int C,
                                                int chunks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) {
        return;
    }
    float dw = 0.0f;
    float db = 0.0f;
    for (int g = 0; g < chunks; ++g) {
        dw += scratch[(long long)g * C + c];
        db += scratch[((long long)chunks + g) * C + c];
    }
    dweight[c] += dw;
    dbias[c] += db;
}

// ---- The _vec kernels (behind --kernels vector) ----
// Same formulas, 128-bit accesses: C must be a multiple of V (4 float, 8 bf16) and every pointer
// 16-byte aligned (both checked on the host), so each row is P = C / V whole packs. In a row,
// lane l owns the packs l, l + 32, ... and sums their elements in order, then the warp butterfly
// as before. That partition differs from the scalar kernels' (lane l owns elements l, l + 32, ...),
// so the row sums (mean, variance, and in the backward the two dnorm means) are added in another
// order: the outputs agree with the scalar kernels to rounding, not bit for bit.
template <typename T>
__device__ __forceinline__ void normalize_row_vec(T* out, float* mean, float* rstd, const T* x, const T* weight,
                                                  const T* bias, float row_sum, long long row, int C, int lane) {
    constexpr int V = vec::Pack<T>::N;
    const int P = C / V;
    const float mu = row_sum / (float)C;
    float sq = 0.0f;
    for (int p = lane; p < P; p += 32) {
        const vec::Pack<T> xp = vec::load(x + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float d = vec::f32(xp.v[k]) - mu;
            sq += d * d;
        }
    }
    const float var = warp_sum(sq) / (float)C;
    const float rs = 1.0f / sqrtf(var + 1e-5f);
    for (int p = lane; p < P; p += 32) {
        const vec::Pack<T> xp = vec::load(x + p * V);
        const vec::Pack<T> wp = vec::load(weight + p * V);
        const vec::Pack<T> bp = vec::load(bias + p * V);
        vec::Pack<T> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(o.v[k], (vec::f32(xp.v[k]) - mu) * rs * vec::f32(wp.v[k]) + vec::f32(bp.v[k]));
        }
        vec::store(out + p * V, o);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T>
__device__ __forceinline__ void forward_vec(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                            const T* bias, int N, int C) {
    constexpr int V = vec::Pack<T>::N;
    const int warps_per_block = blockDim.x / 32;
    const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) {
        return;
    }
    const T* x = inp + row * C;
    float sum = 0.0f;
    for (int p = lane; p < C / V; p += 32) {
        const vec::Pack<T> xp = vec::load(x + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            sum += vec::f32(xp.v[k]);
        }
    }
    sum = warp_sum(sum);
    normalize_row_vec(out + row * C, mean, rstd, x, weight, bias, sum, row, C, lane);
}

template <typename T>
__device__ __forceinline__ void residual_forward_vec(T* residual, T* out, float* mean, float* rstd, const T* a,
                                                     const T* b, const T* weight, const T* bias, int N, int C) {
    constexpr int V = vec::Pack<T>::N;
    const int warps_per_block = blockDim.x / 32;
    const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) {
        return;
    }
    const long long base = row * C;
    T* r = residual + base;
    float sum = 0.0f;
    for (int p = lane; p < C / V; p += 32) {
        const vec::Pack<T> ap = vec::load(a + base + p * V);
        const vec::Pack<T> bp = vec::load(b + base + p * V);
        vec::Pack<T> rp;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            // Sum the value as stored (rounded to T), which is what the later passes re-read.
            vec::set(rp.v[k], vec::f32(ap.v[k]) + vec::f32(bp.v[k]));
            sum += vec::f32(rp.v[k]);
        }
        vec::store(r + p * V, rp);
    }
    sum = warp_sum(sum);
    // Each lane re-reads only the packs it wrote itself.
    normalize_row_vec(out + base, mean, rstd, r, weight, bias, sum, row, C, lane);
}

template <typename T>
__device__ __forceinline__ void backward_dinp_row_vec(T* dinp, const T* dout, const T* inp, const T* weight,
                                                      float mu, float rs, int C, int lane) {
    constexpr int V = vec::Pack<T>::N;
    const int P = C / V;
    float dnorm_sum = 0.0f;
    float dnorm_norm_sum = 0.0f;
    for (int p = lane; p < P; p += 32) {
        const vec::Pack<T> xp = vec::load(inp + p * V);
        const vec::Pack<T> gp = vec::load(dout + p * V);
        const vec::Pack<T> wp = vec::load(weight + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float norm = (vec::f32(xp.v[k]) - mu) * rs;
            const float dnorm = vec::f32(gp.v[k]) * vec::f32(wp.v[k]);
            dnorm_sum += dnorm;
            dnorm_norm_sum += dnorm * norm;
        }
    }
    const float inv_c = 1.0f / (float)C;
    const float dnorm_mean = warp_sum(dnorm_sum) * inv_c;
    const float dnorm_norm_mean = warp_sum(dnorm_norm_sum) * inv_c;
    for (int p = lane; p < P; p += 32) {
        const vec::Pack<T> xp = vec::load(inp + p * V);
        const vec::Pack<T> gp = vec::load(dout + p * V);
        const vec::Pack<T> wp = vec::load(weight + p * V);
        vec::Pack<T> d = vec::load(dinp + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float norm = (vec::f32(xp.v[k]) - mu) * rs;
            const float dnorm = vec::f32(gp.v[k]) * vec::f32(wp.v[k]);
            vec::set(d.v[k], vec::f32(d.v[k]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs);
        }
        vec::store(dinp + p * V, d);
    }
}

// One pass: block g (of G = chunks, a function of N only) owns the rows of chunk g,
// [g*R, min((g+1)*R, N)). Its warps first write dinp for those rows (warp w takes rows
// g*R + w, g*R + w + W, ...), then its threads sum the chunk's dweight/dbias partials, thread t
// taking the packs t, t + blockDim.x, ... of V channels and adding the rows in increasing order
// into scratch[g*C + c] and scratch[(G + g)*C + c] (plain stores: one writer per slot). The second
// part reads only inputs, so it needs no synchronisation with the first. Per channel that is the
// scalar kernel's order exactly (rows in order within a chunk, layernorm_backward_reduce then
// sums the chunks in order), so dweight and dbias are bit-identical to the scalar path; only
// dinp's row means change order (see above).
template <typename T>
__device__ __forceinline__ void backward_vec(T* dinp, float* scratch, const T* dout, const T* inp, const T* weight,
                                             const float* mean, const float* rstd, int N, int C, int rows_per_chunk,
                                             int chunks) {
    constexpr int V = vec::Pack<T>::N;
    const int g = blockIdx.x;
    if (g >= chunks) {
        return;
    }
    const long long r0 = (long long)g * rows_per_chunk;
    const long long r1 = min(r0 + rows_per_chunk, (long long)N);
    const int warps_per_block = blockDim.x / 32;
    const int lane = threadIdx.x % 32;
    for (long long row = r0 + threadIdx.x / 32; row < r1; row += warps_per_block) {
        const long long base = row * C;
        backward_dinp_row_vec(dinp + base, dout + base, inp + base, weight, mean[row], rstd[row], C, lane);
    }
    for (int p = threadIdx.x; p < C / V; p += blockDim.x) {
        float dw[V];
        float db[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            dw[k] = 0.0f;
            db[k] = 0.0f;
        }
        for (long long r = r0; r < r1; ++r) {
            const vec::Pack<T> gp = vec::load(dout + r * C + p * V);
            const vec::Pack<T> xp = vec::load(inp + r * C + p * V);
            const float mu = mean[r];
            const float rs = rstd[r];
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float g_rc = vec::f32(gp.v[k]);
                dw[k] += (vec::f32(xp.v[k]) - mu) * rs * g_rc;
                db[k] += g_rc;
            }
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
            scratch[(long long)g * C + p * V + k] = dw[k];
            scratch[((long long)chunks + g) * C + p * V + k] = db[k];
        }
    }
}

}  // namespace layernorm_detail

extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                             const float* weight, const float* bias, int N, int C) {
    layernorm_detail::forward(out, mean, rstd, inp, weight, bias, N, C);
}

extern "C" __global__ void layernorm_forward_bf16(__nv_bfloat16* out, float* mean, float* rstd,
                                                  const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                                  const __nv_bfloat16* bias, int N, int C) {
    layernorm_detail::forward(out, mean, rstd, inp, weight, bias, N, C);
}

extern "C" __global__ void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,
                                                      const float* a, const float* b, const float* weight,
                                                      const float* bias, int N, int C) {
    layernorm_detail::residual_forward(residual, out, mean, rstd, a, b, weight, bias, N, C);
}

extern "C" __global__ void residual_layernorm_forward_bf16(__nv_bfloat16* residual, __nv_bfloat16* out,
                                                           float* mean, float* rstd, const __nv_bfloat16* a,
                                                           const __nv_bfloat16* b, const __nv_bfloat16* weight,
                                                           const __nv_bfloat16* bias, int N, int C) {
    layernorm_detail::residual_forward(residual, out, mean, rstd, a, b, weight, bias, N, C);
}

// Launch: blockDim.x a multiple of 32 (256), grid = ceil(N / (blockDim.x / 32)) + G * ceil(C / blockDim.x),
// scratch holds 2 * G * C floats, G = ceil(N / rows_per_chunk).
extern "C" __global__ void layernorm_backward(float* dinp, float* scratch, const float* dout, const float* inp,
                                              const float* weight, const float* mean, const float* rstd, int N,
                                              int C, int rows_per_chunk, int chunks) {
    layernorm_detail::backward(dinp, scratch, dout, inp, weight, mean, rstd, N, C, rows_per_chunk, chunks);
}

// As layernorm_backward with dinp, dout, inp and weight in bf16 (scratch, mean and rstd f32).
extern "C" __global__ void layernorm_backward_bf16(__nv_bfloat16* dinp, float* scratch, const __nv_bfloat16* dout,
                                                   const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                                   const float* mean, const float* rstd, int N, int C,
                                                   int rows_per_chunk, int chunks) {
    layernorm_detail::backward(dinp, scratch, dout, inp, weight, mean, rstd, N, C, rows_per_chunk, chunks);
}

// Launch after layernorm_backward or layernorm_backward_bf16 (same stream; both leave f32 partials):
// any blockDim.x, grid = ceil(C / blockDim.x).
extern "C" __global__ void layernorm_backward_reduce(float* dweight, float* dbias, const float* scratch, int C,
                                                     int chunks) {
    layernorm_detail::backward_reduce(dweight, dbias, scratch, C, chunks);
}

// The _vec kernels: blockDim.x a multiple of 32 (256), C a multiple of 4 (float) or 8 (bf16),
// every pointer 16-byte aligned. Forward: grid = ceil(N / (blockDim.x / 32)) as the scalar ones.
// Backward: grid = G = chunks (one block per chunk of rows), scratch as the scalar one, then
// layernorm_backward_reduce.
extern "C" __global__ void layernorm_forward_vec(float* out, float* mean, float* rstd, const float* inp,
                                                 const float* weight, const float* bias, int N, int C) {
    layernorm_detail::forward_vec(out, mean, rstd, inp, weight, bias, N, C);
}

extern "C" __global__ void layernorm_forward_vec_bf16(__nv_bfloat16* out, float* mean, float* rstd,
                                                      const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                                      const __nv_bfloat16* bias, int N, int C) {
    layernorm_detail::forward_vec(out, mean, rstd, inp, weight, bias, N, C);
}

extern "C" __global__ void residual_layernorm_forward_vec(float* residual, float* out, float* mean, float* rstd,
                                                          const float* a, const float* b, const float* weight,
                                                          const float* bias, int N, int C) {
    layernorm_detail::residual_forward_vec(residual, out, mean, rstd, a, b, weight, bias, N, C);
}

extern "C" __global__ void residual_layernorm_forward_vec_bf16(__nv_bfloat16* residual, __nv_bfloat16* out,
                                                               float* mean, float* rstd, const __nv_bfloat16* a,
                                                               const __nv_bfloat16* b,
                                                               const __nv_bfloat16* weight,
                                                               const __nv_bfloat16* bias, int N, int C) {
    layernorm_detail::residual_forward_vec(residual, out, mean, rstd, a, b, weight, bias, N, C);
}

extern "C" __global__ void layernorm_backward_vec(float* dinp, float* scratch, const float* dout,
                                                  const float* inp, const float* weight, const float* mean,
                                                  const float* rstd, int N, int C, int rows_per_chunk,
                                                  int chunks) {
    layernorm_detail::backward_vec(dinp, scratch, dout, inp, weight, mean, rstd, N, C, rows_per_chunk, chunks);
}

extern "C" __global__ void layernorm_backward_vec_bf16(__nv_bfloat16* dinp, float* scratch,
                                                       const __nv_bfloat16* dout, const __nv_bfloat16* inp,
                                                       const __nv_bfloat16* weight, const float* mean,
                                                       const float* rstd, int N, int C, int rows_per_chunk,
                                                       int chunks) {
    layernorm_detail::backward_vec(dinp, scratch, dout, inp, weight, mean, rstd, N, C, rows_per_chunk, chunks);
}
