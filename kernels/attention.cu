// qkv (B,T,3C) -> q,k,v (B,NH,T,HS); att (B,NH,T,T) in place; y (B,NH,T,HS) -> out (B,T,C)
// backward: dout (B,T,C), qkv, att -> dqkv (B,T,3C) +=
//
// The non-GEMM pieces of causal self-attention (C = NH*HS). The host side
// (src/gpu/attention.rs) runs, per forward:
//   1. attention_permute:          q[b,h,t,d] = qkv[b,t,0*C + h*HS + d]  (k: +C, v: +2C)
//   2. cuBLAS batched GEMM:        att[b,h,t1,t2] = q[b,h,t1,:] . k[b,h,t2,:]
//   3. attention_softmax_forward:  att[b,h,t1,:] = causal softmax(scale * att[b,h,t1,:])
//   4. cuBLAS batched GEMM:        y[b,h,t1,:] = sum_t2 att[b,h,t1,t2] * v[b,h,t2,:]
//   5. attention_unpermute:        out[b,t,h*HS + d] = y[b,h,t,d]
//
// Index arithmetic is 64-bit so B*T*C and B*NH*T*T may exceed 2^31.
//
// Every kernel is one template over the storage type T, emitted twice: NAME (float) and
// NAME_bf16 (__nv_bfloat16). The math is fp32 in both: bf16 values are widened on load and
// rounded to bf16 (round-to-nearest-even) once on store. Helpers live in attention_detail so
// they cannot clash with the other kernel files compiled into the same translation unit.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace attention_detail {

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Launch: grid = ceil(B*NH*T*HS / blockDim.x), any blockDim.x (256 is typical).
template <typename T>
__device__ __forceinline__ void permute(T* q, T* k, T* v, const T* qkv, int B, int T_, int NH,
                                        int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T_ * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, h, t, d) in the permuted layout.
        const int d = (int)(idx % HS);
        const long long bht = idx / HS;
        const int t = (int)(bht % T_);
        const long long bh = bht / T_;
        const int h = (int)(bh % NH);
        const long long b = bh / NH;
        const long long src = (b * T_ + t) * 3 * C + (long long)h * HS + d;
        q[idx] = qkv[src];
        k[idx] = qkv[src + C];
        v[idx] = qkv[src + 2 * C];
    }
}

// Launch: grid = ceil(B*NH*T*HS / blockDim.x), any blockDim.x (256 is typical).
template <typename T>
__device__ __forceinline__ void unpermute(T* out, const T* y, int B, int T_, int NH, int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T_ * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, t, c) in the output layout, c = h*HS + d.
        const int c = (int)(idx % C);
        const long long bt = idx / C;
        const int t = (int)(bt % T_);
        const long long b = bt / T_;
        const int h = c / HS;
        const int d = c - h * HS;
        out[idx] = y[((b * NH + h) * T_ + t) * HS + d];
    }
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    }
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;
}

// att (rows = B*NH*T, T) in place: row r belongs to query position t1 = r % T.
//   att[r, t2] = exp(scale*att[r,t2] - m) / sum_{t2' <= t1} exp(scale*att[r,t2'] - m)  for t2 <= t1
//   att[r, t2] = 0                                                                       for t2 > t1
// where m is the row maximum of scale*att[r, 0..=t1]. Max and sum are fp32 warp reductions.
// The exponentials are recomputed in the last pass rather than stored in att between passes,
// so bf16 rows are rounded only once (the probability); for float the result is the same.
//
// One warp per row. Launch: blockDim.x a multiple of 32 (256 is typical),
// grid = ceil(rows / (blockDim.x / 32)).
template <typename T>
__device__ __forceinline__ void softmax_forward(T* att, long long rows, int T_, float scale) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) {
        return;  // whole warp exits together: row is uniform across the warp
    }
    const int t1 = (int)(row % T_);
    T* x = att + row * T_;

    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t1; t2 += 32) {
        maxv = fmaxf(maxv, scale * load(x[t2]));
    }
    maxv = warp_max(maxv);

    float sum = 0.0f;
    for (int t2 = lane; t2 <= t1; t2 += 32) {
        sum += expf(scale * load(x[t2]) - maxv);
    }
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;

    for (int t2 = lane; t2 < T_; t2 += 32) {
        store(&x[t2], t2 <= t1 ? expf(scale * load(x[t2]) - maxv) * inv : 0.0f);
    }
}

// Block-wide max (is_max) or sum of v; every thread gets the result.
__device__ float decode_block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    for (int o = 16; o > 0; o /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : (is_max ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    return v;
}

// q (C), kcache (maxT,C), vcache (maxT,C) -> out (C): one new position attending over the
// first n_ctx cached positions (its own included), for KV-cache decoding.
//
// One block per head (grid = NH), any multiple of 32 threads; dynamic shared memory of n_ctx
// floats holds the scores. Scores, max, sum and the weighted sum are fp32 (also for bf16
// storage: the probabilities are never rounded); only out is stored as T.
template <typename T>
__device__ __forceinline__ void decode(T* out, const T* q, const T* kcache, const T* vcache,
                                       int n_ctx, int C, int NH) {
    extern __shared__ float attention_decode_scores[];
    float* scores = attention_decode_scores;
    const int h = blockIdx.x;
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const T* qh = q + (long long)h * hs;
    float local_max = -INFINITY;
    for (int t = threadIdx.x; t < n_ctx; t += blockDim.x) {
        const T* k = kcache + (long long)t * C + (long long)h * hs;
        float s = 0.0f;
        for (int i = 0; i < hs; i++) s += load(qh[i]) * load(k[i]);
        s *= scale;
        scores[t] = s;
        local_max = fmaxf(local_max, s);
    }
    const float m = decode_block_reduce(local_max, true);
    float local_sum = 0.0f;
    for (int t = threadIdx.x; t < n_ctx; t += blockDim.x) {
        const float e = expf(scores[t] - m);
        scores[t] = e;
        local_sum += e;
    }
    const float inv = 1.0f / decode_block_reduce(local_sum, false);
    __syncthreads();  // every score written before any thread reads them all
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < n_ctx; t++) {
            acc += scores[t] * load(vcache[(long long)t * C + (long long)h * hs + i]);
        }
        store(&out[(long long)h * hs + i], acc * inv);
    }
}


// ---- backward ----
//
// The host side (attention_backward in src/gpu/attention.rs) runs, per backward:
//   1. attention_backward_permute:  q, k, v from qkv as in the forward, dy[b,h,t,d] = dout[b,t,h*HS+d]
//   2. cuBLAS batched GEMM:         datt[b,h,t1,t2] = dy[b,h,t1,:] . v[b,h,t2,:]
//   3. cuBLAS batched GEMM:         dv[b,h,t2,:] = sum_t1 att[b,h,t1,t2] * dy[b,h,t1,:]
//   4. attention_softmax_backward:  datt -> dpreatt in place (below)
//   5. cuBLAS batched GEMMs:        dq = dpreatt . k,  dk = dpreatt^T . q
//   6. attention_backward_unpermute_add: dqkv[b,t,part*C + h*HS + d] += d{q,k,v}[b,h,t,d]
//      (or attention_backward_unpermute: dqkv[...] = d{q,k,v}[...], dqkv never read)
//
// Templates over the storage type T like the forward: with bf16 every buffer (dout, qkv, att,
// the scratch q/k/v/dy/datt/dq/dk/dv and dqkv) is __nv_bfloat16; the kernels load as float,
// compute in fp32 and round each stored value once. The permute only copies (exact).

// Launch: grid = ceil(B*NH*T*HS / blockDim.x), any blockDim.x (256 is typical).
template <typename T>
__device__ __forceinline__ void backward_permute(T* q, T* k, T* v, T* dy, const T* qkv,
                                                 const T* dout, int B, int T_, int NH, int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T_ * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, h, t, d) in the permuted layout.
        const int d = (int)(idx % HS);
        const long long bht = idx / HS;
        const int t = (int)(bht % T_);
        const long long bh = bht / T_;
        const int h = (int)(bh % NH);
        const long long b = bh / NH;
        const long long bt = b * T_ + t;
        const long long src = bt * 3 * C + (long long)h * HS + d;
        q[idx] = qkv[src];
        k[idx] = qkv[src + C];
        v[idx] = qkv[src + 2 * C];
        dy[idx] = dout[bt * C + (long long)h * HS + d];
    }
}

// datt (rows = B*NH*T, T) -> dpreatt in place, given the forward's probabilities att (same
// layout); row r belongs to query position t1 = r % T:
//   dpreatt[r, t2] = scale * att[r,t2] * (datt[r,t2] - sum_{t2' <= t1} att[r,t2'] datt[r,t2'])
// for t2 <= t1, and 0 above the diagonal (where datt is whatever the GEMM produced). The dot
// product is an fp32 warp reduction in a fixed order (deterministic). For bf16, datt and att are
// widened on load, the dot product and every dpreatt are computed in fp32 exactly as for float,
// and each dpreatt is rounded to bf16 once when stored. Each element is read and then written by
// the same lane only, so updating datt in place is race-free.
//
// One warp per row. Launch: blockDim.x a multiple of 32 (256 is typical),
// grid = ceil(rows / (blockDim.x / 32)).
template <typename T>
__device__ __forceinline__ void softmax_backward(T* datt, const T* att, long long rows, int T_,
                                                 float scale) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) {
        return;  // whole warp exits together: row is uniform across the warp
    }
    const int t1 = (int)(row % T_);
    T* g = datt + row * T_;
    const T* p = att + row * T_;

    float dot = 0.0f;
    for (int t2 = lane; t2 <= t1; t2 += 32) {
        dot += load(p[t2]) * load(g[t2]);
    }
    dot = warp_sum(dot);

    for (int t2 = lane; t2 < T_; t2 += 32) {
        store(&g[t2], t2 <= t1 ? scale * load(p[t2]) * (load(g[t2]) - dot) : 0.0f);
    }
}

// dq, dk, dv (B,NH,T,HS) -> dqkv (B,T,3C) += (Add) or = (a copy), each thread one element of
// dqkv (coalesced). For bf16 the old dqkv value and the addend are widened, added in fp32 and
// rounded once. Each element of dqkv is written once, so the copy gives the bits of adding onto a
// zeroed dqkv (0 + x = x; only a zero's sign can differ, 0 + -0 = +0).
// Launch: grid = ceil(B*T*3C / blockDim.x), any blockDim.x (256 is typical).
template <bool Add, typename T>
__device__ __forceinline__ void backward_unpermute_add(T* dqkv, const T* dq, const T* dk,
                                                       const T* dv, int B, int T_, int NH,
                                                       int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T_ * 3 * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, t, c3) in dqkv, c3 = part*C + h*HS + d.
        const long long c3 = idx % (3 * C);
        const long long bt = idx / (3 * C);
        const int t = (int)(bt % T_);
        const long long b = bt / T_;
        const int part = (int)(c3 / C);
        const int c = (int)(c3 - part * C);
        const int h = c / HS;
        const int d = c - h * HS;
        const T* src = part == 0 ? dq : (part == 1 ? dk : dv);
        if (Add) {
            store(&dqkv[idx], load(dqkv[idx]) + load(src[((b * NH + h) * T_ + t) * HS + d]));
        } else {
            dqkv[idx] = src[((b * NH + h) * T_ + t) * HS + d];
        }
    }
}

// ---- The _vec permutes (behind --kernels vector) ----
// The same copies (and, in backward_unpermute_add, the same f32 add rounded once), one thread per
// pack of V = 4 (float) or 8 (bf16) consecutive elements with 128-bit loads and stores. HS must be
// a multiple of V, so a pack never crosses a head (and C = NH*HS never splits one); every pointer
// is 16-byte aligned. Both checked on the host. Bit-identical to the scalar kernels.
// Launch: grid-stride, grid = ceil(elements / V / blockDim.x), any blockDim.x.
template <typename T>
__device__ __forceinline__ void permute_vec(T* q, T* k, T* v, T* dy, const T* qkv, const T* dout, int B, int T_,
                                            int NH, int HS) {
    constexpr int V = vec::Pack<T>::N;
    const long long C = (long long)NH * HS;
    const long long packs = (long long)B * T_ * C / V;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long pi = (long long)blockIdx.x * blockDim.x + threadIdx.x; pi < packs; pi += stride) {
        const long long idx = pi * V;  // (b, h, t, d) in the permuted layout, d a multiple of V
        const int d = (int)(idx % HS);
        const long long bht = idx / HS;
        const int t = (int)(bht % T_);
        const long long bh = bht / T_;
        const int h = (int)(bh % NH);
        const long long b = bh / NH;
        const long long bt = b * T_ + t;
        const long long src = bt * 3 * C + (long long)h * HS + d;
        vec::store(q + idx, vec::load(qkv + src));
        vec::store(k + idx, vec::load(qkv + src + C));
        vec::store(v + idx, vec::load(qkv + src + 2 * C));
        if (dy != nullptr) {
            vec::store(dy + idx, vec::load(dout + bt * C + (long long)h * HS + d));
        }
    }
}

template <typename T>
__device__ __forceinline__ void unpermute_vec(T* out, const T* y, int B, int T_, int NH, int HS) {
    constexpr int V = vec::Pack<T>::N;
    const long long C = (long long)NH * HS;
    const long long packs = (long long)B * T_ * C / V;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long pi = (long long)blockIdx.x * blockDim.x + threadIdx.x; pi < packs; pi += stride) {
        const long long idx = pi * V;  // (b, t, c) in the output layout, c = h*HS + d
        const int c = (int)(idx % C);
        const long long bt = idx / C;
        const int t = (int)(bt % T_);
        const long long b = bt / T_;
        const int h = c / HS;
        const int d = c - h * HS;
        vec::store(out + idx, vec::load(y + ((b * NH + h) * T_ + t) * HS + d));
    }
}

template <bool Add, typename T>
__device__ __forceinline__ void backward_unpermute_add_vec(T* dqkv, const T* dq, const T* dk, const T* dv, int B,
                                                           int T_, int NH, int HS) {
    constexpr int V = vec::Pack<T>::N;
    const long long C = (long long)NH * HS;
    const long long packs = (long long)B * T_ * 3 * C / V;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long pi = (long long)blockIdx.x * blockDim.x + threadIdx.x; pi < packs; pi += stride) {
        const long long idx = pi * V;  // (b, t, c3) in dqkv, c3 = part*C + h*HS + d
        const long long c3 = idx % (3 * C);
        const long long bt = idx / (3 * C);
        const int t = (int)(bt % T_);
        const long long b = bt / T_;
        const int part = (int)(c3 / C);
        const int c = (int)(c3 - part * C);
        const int h = c / HS;
        const int d = c - h * HS;
        const T* src = part == 0 ? dq : (part == 1 ? dk : dv);
        const vec::Pack<T> add = vec::load(src + ((b * NH + h) * T_ + t) * HS + d);
        if (!Add) {
            vec::store(dqkv + idx, add);
            continue;
        }
        vec::Pack<T> acc = vec::load(dqkv + idx);
#pragma unroll
        for (int e = 0; e < V; ++e) {
            vec::set(acc.v[e], vec::f32(acc.v[e]) + vec::f32(add.v[e]));
        }
        vec::store(dqkv + idx, acc);
    }
}

// ---- The _vec causal softmaxes (behind --kernels vector, used when T is a multiple of V) ----
// The scalar kernels' formulas with 128-bit accesses: lane l owns the packs l, l + 32, ... of
// V = 4 (float) or 8 (bf16) consecutive columns; the row max is order-independent (fmaxf), but
// the sum of exponentials (forward) and the dot product (backward) are added in another order
// than the scalar kernels' (lane l owns columns l, l + 32, ...), so results agree with them to
// rounding, not bit for bit. Columns past the diagonal inside the last pack are excluded from the
// reductions and written as 0. Rows start at row * T, 16-byte aligned because T is a multiple of V
// and the buffers are aligned (checked on the host). Launch as the scalar kernels.
template <typename T>
__device__ __forceinline__ void softmax_forward_vec(T* att, long long rows, int T_, float scale) {
    constexpr int V = vec::Pack<T>::N;
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) {
        return;  // whole warp exits together
    }
    const int t1 = (int)(row % T_);
    T* x = att + row * T_;
    const int last = t1 / V;  // the pack holding the diagonal

    float maxv = -INFINITY;
    for (int p = lane; p <= last; p += 32) {
        const vec::Pack<T> xp = vec::load(x + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            if (p * V + k <= t1) {
                maxv = fmaxf(maxv, scale * vec::f32(xp.v[k]));
            }
        }
    }
    maxv = warp_max(maxv);

    float sum = 0.0f;
    for (int p = lane; p <= last; p += 32) {
        const vec::Pack<T> xp = vec::load(x + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            if (p * V + k <= t1) {
                sum += expf(scale * vec::f32(xp.v[k]) - maxv);
            }
        }
    }
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;

    for (int p = lane; p < T_ / V; p += 32) {
        vec::Pack<T> xp = vec::load(x + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(xp.v[k], p * V + k <= t1 ? expf(scale * vec::f32(xp.v[k]) - maxv) * inv : 0.0f);
        }
        vec::store(x + p * V, xp);
    }
}

template <typename T>
__device__ __forceinline__ void softmax_backward_vec(T* datt, const T* att, long long rows, int T_, float scale) {
    constexpr int V = vec::Pack<T>::N;
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) {
        return;  // whole warp exits together
    }
    const int t1 = (int)(row % T_);
    T* g = datt + row * T_;
    const T* pr = att + row * T_;
    const int last = t1 / V;

    float dot = 0.0f;
    for (int p = lane; p <= last; p += 32) {
        const vec::Pack<T> pp = vec::load(pr + p * V);
        const vec::Pack<T> gp = vec::load(g + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            if (p * V + k <= t1) {
                dot += vec::f32(pp.v[k]) * vec::f32(gp.v[k]);
            }
        }
    }
    dot = warp_sum(dot);

    for (int p = lane; p < T_ / V; p += 32) {
        const vec::Pack<T> pp = vec::load(pr + p * V);
        vec::Pack<T> gp = vec::load(g + p * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(gp.v[k], p * V + k <= t1 ? scale * vec::f32(pp.v[k]) * (vec::f32(gp.v[k]) - dot) : 0.0f);
        }
        vec::store(g + p * V, gp);
    }
}

}  // namespace attention_detail

extern "C" __global__ void attention_permute(float* q, float* k, float* v, const float* qkv, int B,
                                             int T, int NH, int HS) {
    attention_detail::permute(q, k, v, qkv, B, T, NH, HS);
}

extern "C" __global__ void attention_permute_bf16(__nv_bfloat16* q, __nv_bfloat16* k,
                                                  __nv_bfloat16* v, const __nv_bfloat16* qkv,
                                                  int B, int T, int NH, int HS) {
    attention_detail::permute(q, k, v, qkv, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute(float* out, const float* y, int B, int T, int NH,
                                               int HS) {
    attention_detail::unpermute(out, y, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute_bf16(__nv_bfloat16* out, const __nv_bfloat16* y,
                                                    int B, int T, int NH, int HS) {
    attention_detail::unpermute(out, y, B, T, NH, HS);
}

extern "C" __global__ void attention_softmax_forward(float* att, long long rows, int T,
                                                     float scale) {
    attention_detail::softmax_forward(att, rows, T, scale);
}

extern "C" __global__ void attention_softmax_forward_bf16(__nv_bfloat16* att, long long rows,
                                                          int T, float scale) {
    attention_detail::softmax_forward(att, rows, T, scale);
}

extern "C" __global__ void attention_decode(float* out, const float* q, const float* kcache,
                                            const float* vcache, int n_ctx, int C, int NH) {
    attention_detail::decode(out, q, kcache, vcache, n_ctx, C, NH);
}

extern "C" __global__ void attention_decode_bf16(__nv_bfloat16* out, const __nv_bfloat16* q,
                                                 const __nv_bfloat16* kcache,
                                                 const __nv_bfloat16* vcache, int n_ctx, int C,
                                                 int NH) {
    attention_detail::decode(out, q, kcache, vcache, n_ctx, C, NH);
}

extern "C" __global__ void attention_backward_permute(float* q, float* k, float* v, float* dy,
                                                      const float* qkv, const float* dout, int B,
                                                      int T, int NH, int HS) {
    attention_detail::backward_permute(q, k, v, dy, qkv, dout, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_permute_bf16(__nv_bfloat16* q, __nv_bfloat16* k,
                                                           __nv_bfloat16* v, __nv_bfloat16* dy,
                                                           const __nv_bfloat16* qkv,
                                                           const __nv_bfloat16* dout, int B,
                                                           int T, int NH, int HS) {
    attention_detail::backward_permute(q, k, v, dy, qkv, dout, B, T, NH, HS);
}

extern "C" __global__ void attention_softmax_backward(float* datt, const float* att,
                                                      long long rows, int T, float scale) {
    attention_detail::softmax_backward(datt, att, rows, T, scale);
}

extern "C" __global__ void attention_softmax_backward_bf16(__nv_bfloat16* datt,
                                                           const __nv_bfloat16* att,
                                                           long long rows, int T, float scale) {
    attention_detail::softmax_backward(datt, att, rows, T, scale);
}

extern "C" __global__ void attention_backward_unpermute_add(float* dqkv, const float* dq,
                                                            const float* dk, const float* dv,
                                                            int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add<true>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_add_bf16(__nv_bfloat16* dqkv,
                                                                 const __nv_bfloat16* dq,
                                                                 const __nv_bfloat16* dk,
                                                                 const __nv_bfloat16* dv, int B,
                                                                 int T, int NH, int HS) {
    attention_detail::backward_unpermute_add<true>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute(float* dqkv, const float* dq, const float* dk,
                                                        const float* dv, int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add<false>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_bf16(__nv_bfloat16* dqkv, const __nv_bfloat16* dq,
                                                             const __nv_bfloat16* dk, const __nv_bfloat16* dv,
                                                             int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add<false>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_vec(float* dqkv, const float* dq, const float* dk,
                                                            const float* dv, int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add_vec<false>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_vec_bf16(__nv_bfloat16* dqkv, const __nv_bfloat16* dq,
                                                                 const __nv_bfloat16* dk, const __nv_bfloat16* dv,
                                                                 int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add_vec<false>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_permute_vec(float* q, float* k, float* v, const float* qkv, int B, int T,
                                                 int NH, int HS) {
    attention_detail::permute_vec<float>(q, k, v, nullptr, qkv, nullptr, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute_vec(float* out, const float* y, int B, int T, int NH, int HS) {
    attention_detail::unpermute_vec(out, y, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_permute_vec(float* q, float* k, float* v, float* dy,
                                                          const float* qkv, const float* dout, int B, int T,
                                                          int NH, int HS) {
    attention_detail::permute_vec(q, k, v, dy, qkv, dout, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_add_vec(float* dqkv, const float* dq, const float* dk,
                                                                const float* dv, int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add_vec<true>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_permute_vec_bf16(__nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v, const __nv_bfloat16* qkv, int B, int T,
                                                 int NH, int HS) {
    attention_detail::permute_vec<__nv_bfloat16>(q, k, v, nullptr, qkv, nullptr, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute_vec_bf16(__nv_bfloat16* out, const __nv_bfloat16* y, int B, int T, int NH, int HS) {
    attention_detail::unpermute_vec(out, y, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_permute_vec_bf16(__nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v, __nv_bfloat16* dy,
                                                          const __nv_bfloat16* qkv, const __nv_bfloat16* dout, int B, int T,
                                                          int NH, int HS) {
    attention_detail::permute_vec(q, k, v, dy, qkv, dout, B, T, NH, HS);
}

extern "C" __global__ void attention_backward_unpermute_add_vec_bf16(__nv_bfloat16* dqkv, const __nv_bfloat16* dq, const __nv_bfloat16* dk,
                                                                const __nv_bfloat16* dv, int B, int T, int NH, int HS) {
    attention_detail::backward_unpermute_add_vec<true>(dqkv, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_softmax_forward_vec(float* att, long long rows, int T, float scale) {
    attention_detail::softmax_forward_vec(att, rows, T, scale);
}

extern "C" __global__ void attention_softmax_backward_vec(float* datt, const float* att, long long rows, int T,
                                                          float scale) {
    attention_detail::softmax_backward_vec(datt, att, rows, T, scale);
}

extern "C" __global__ void attention_softmax_forward_vec_bf16(__nv_bfloat16* att, long long rows, int T, float scale) {
    attention_detail::softmax_forward_vec(att, rows, T, scale);
}

extern "C" __global__ void attention_softmax_backward_vec_bf16(__nv_bfloat16* datt, const __nv_bfloat16* att, long long rows, int T,
                                                          float scale) {
    attention_detail::softmax_backward_vec(datt, att, rows, T, scale);
}
