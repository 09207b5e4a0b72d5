// inp (B,T) int32, wte (Vp,C), wpe (T,C) -> out (B,T,C)
//
// Token + position embedding, forward pass:
//   out[b, t, c] = wte[inp[b, t], c] + wpe[t, c]
//
// One thread per output element. The index arithmetic is done in 64 bits so
// B*T*C may exceed 2^31. The result is a single f32 add of the two loaded
// values, so it is bit-identical to the CPU reference.
//
// Two kernels from one template over the storage type T: embedding_forward
// (float) and embedding_forward_bf16 (__nv_bfloat16). The bf16 one loads both
// values as float, adds them in f32 and rounds the sum to bf16 once
// (round-to-nearest-even), so it equals the CPU's f32 sum rounded to bf16.
//
// Launch: grid = ceil(B*T*C / blockDim.x), any blockDim.x (256 is typical).
//
// Backward, accumulating as the CPU reference:
//   dwte[inp[b,t], c] += dout[b,t,c],  dwpe[t, c] += dout[b,t,c]
// embedding_backward (float dout) and embedding_backward_bf16 (__nv_bfloat16
// dout) from one template over dout's type; dwte and dwpe, parameter gradients,
// are f32 in both. The bf16 one widens each dout value to float (exact) and
// adds in f32 exactly as the float one, so its result is the f32 kernel's on
// the widened dout.
// Deterministic without atomics, and bit-identical to the CPU (which adds the
// rows into the gradient one at a time in row order b*T + t): the host buckets
// the B*T row indices by token (CSR, built in src/gpu/embedding.rs) into one
// int array  csr = [tokens (U) | offsets (U + 1) | rows (B*T)]  with the U
// distinct tokens, offsets[u]..offsets[u+1] the range of rows holding tokens[u],
// and each token's rows in increasing order. Two block roles (block-uniform):
//  - blocks [0, U): block u owns dwte row tokens[u] (no other block writes it);
//    its threads stride over the C channels, each starting from the existing
//    dwte value and adding dout[row, c] for the token's rows in order.
//  - blocks [U, U + ceil(T*C / blockDim.x)): one thread per (t, c) of dwpe,
//    starting from dwpe[t, c] and adding dout[b, t, c] for b = 0..B-1 in order.
// Launch: any blockDim.x (256), grid = U + ceil(T*C / blockDim.x), no shared memory.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace embedding_detail {

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ void forward(T* out, const int* inp, const T* wte, const T* wpe, int B, int T_,
                                        int C) {
    const long long n = (long long)B * T_ * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        const long long bt = idx / C;
        const int c = (int)(idx - bt * C);
        const int t = (int)(bt % T_);
        const long long token = (long long)inp[bt];
        store(&out[idx], load(wte[token * C + c]) + load(wpe[(long long)t * C + c]));
    }
}

// One thread per (t, c) of dwpe (idx = t*C + c; past T*C it does nothing): dwpe[t, c] plus
// dout[b, t, c] for b = 0..B-1 in order, the CPU's order.
template <typename T>
__device__ __forceinline__ void backward_dwpe(float* dwpe, const T* dout, long long idx, int B, int T_, int C) {
    if (idx >= (long long)T_ * C) {
        return;
    }
    const long long t = idx / C;
    const long long c = idx - t * C;
    float acc = dwpe[idx];
    for (int b = 0; b < B; ++b) {
        acc += load(dout[((long long)b * T_ + t) * C + c]);
    }
    dwpe[idx] = acc;
}

template <typename T>
__device__ __forceinline__ void backward(float* dwte, float* dwpe, const T* dout, const int* csr, int U, int B, int T_,
                                         int C) {
    if ((int)blockIdx.x < U) {
        const int* tokens = csr;
        const int* offsets = csr + U;
        const int* rows = csr + 2 * (long long)U + 1;
        const long long token = (long long)tokens[blockIdx.x];
        const int start = offsets[blockIdx.x];
        const int end = offsets[blockIdx.x + 1];
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = dwte[token * C + c];
            for (int j = start; j < end; ++j) {
                acc += load(dout[(long long)rows[j] * C + c]);
            }
            dwte[token * C + c] = acc;
        }
        return;
    }
    backward_dwpe(dwpe, dout, (long long)(blockIdx.x - U) * blockDim.x + threadIdx.x, B, T_, C);
}

// The _vec forward (behind --kernels vector): one thread per pack of V = 4 (float) or 8 (bf16)
// channels, 128-bit loads of the wte and wpe packs and a 128-bit store. C must be a multiple of V
// and the pointers 16-byte aligned (checked on the host). The same single f32 add per element, so
// it is bit-identical to the scalar kernel. Launch: grid = ceil(B*T*C/V / blockDim.x).
template <typename T>
__device__ __forceinline__ void forward_vec(T* out, const int* inp, const T* wte, const T* wpe, int B, int T_,
                                            int C) {
    constexpr int V = vec::Pack<T>::N;
    const int P = C / V;
    const long long packs = (long long)B * T_ * P;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < packs; idx += stride) {
        const long long bt = idx / P;
        const int c = (int)(idx - bt * P) * V;
        const int t = (int)(bt % T_);
        const long long token = (long long)inp[bt];
        const vec::Pack<T> w = vec::load(wte + token * C + c);
        const vec::Pack<T> p = vec::load(wpe + (long long)t * C + c);
        vec::Pack<T> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(o.v[k], vec::f32(w.v[k]) + vec::f32(p.v[k]));
        }
        vec::store(out + bt * C + c, o);
    }
}

}  // namespace embedding_detail

extern "C" __global__ void embedding_forward(float* out, const int* inp, const float* wte,
                                             const float* wpe, int B, int T, int C) {
    embedding_detail::forward(out, inp, wte, wpe, B, T, C);
}

extern "C" __global__ void embedding_forward_bf16(__nv_bfloat16* out, const int* inp,
                                                  const __nv_bfloat16* wte, const __nv_bfloat16* wpe,
                                                  int B, int T, int C) {
    embedding_detail::forward(out, inp, wte, wpe, B, T, C);
}

extern "C" __global__ void embedding_backward(float* dwte, float* dwpe, const float* dout, const int* csr, int U,
                                              int B, int T, int C) {
    embedding_detail::backward(dwte, dwpe, dout, csr, U, B, T, C);
}

// As embedding_backward with dout in bf16; dwte and dwpe stay f32.
extern "C" __global__ void embedding_backward_bf16(float* dwte, float* dwpe, const __nv_bfloat16* dout, const int* csr,
                                                   int U, int B, int T, int C) {
    embedding_detail::backward(dwte, dwpe, dout, csr, U, B, T, C);
}

// Balanced backward (embedding_backward_balanced): the same sums in the order of
// cpu::embedding::embedding_backward_balanced, so that one frequent token (" the", ",") does not
// leave one block adding hundreds of rows while the rest of the GPU idles. Each token's rows, in
// increasing order, are cut by the host into chunks of at most CHUNK_ROWS (64) rows:
//  - embedding_backward_chunks: one block per chunk, heaviest chunks first (lowest blockIdx).
//    items = [token, begin, end, slot] per chunk (4 ints), then rows; the chunk adds
//    dout[rows[begin..end]] in order. The first chunk of a token (slot -1) starts from and writes
//    the token's dwte row; a later chunk (slot s >= 0) starts from 0 and writes partials[s*C ..].
//    Blocks [n_items, n_items + ceil(T*C / blockDim.x)) do dwpe as embedding_backward does.
//  - embedding_backward_combine, launched after it on the same stream: one block per token with
//    later chunks; combine = [token, first_slot, count] per token (3 ints); it adds
//    partials[first_slot .. first_slot + count) to the dwte row in slot (= chunk) order.
// Launch: blockDim.x 256, no shared memory; grid = n_items + ceil(T*C / 256), then n_combine.
namespace embedding_detail {
template <typename T>
__device__ __forceinline__ void backward_chunks(float* dwte, float* dwpe, float* partials, const T* dout,
                                                const int* items, int n_items, int B, int T_, int C) {
    if ((int)blockIdx.x < n_items) {
        const int* item = items + 4 * (long long)blockIdx.x;
        const int* rows = items + 4 * (long long)n_items;
        const long long token = (long long)item[0];
        const int begin = item[1];
        const int end = item[2];
        const int slot = item[3];
        float* dst = slot < 0 ? dwte + token * C : partials + (long long)slot * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = slot < 0 ? dst[c] : 0.0f;
            for (int j = begin; j < end; ++j) {
                acc += load(dout[(long long)rows[j] * C + c]);
            }
            dst[c] = acc;
        }
        return;
    }
    backward_dwpe(dwpe, dout, (long long)(blockIdx.x - n_items) * blockDim.x + threadIdx.x, B, T_, C);
}
}  // namespace embedding_detail

extern "C" __global__ void embedding_backward_chunks(float* dwte, float* dwpe, float* partials, const float* dout,
                                                     const int* items, int n_items, int B, int T, int C) {
    embedding_detail::backward_chunks(dwte, dwpe, partials, dout, items, n_items, B, T, C);
}

extern "C" __global__ void embedding_backward_chunks_bf16(float* dwte, float* dwpe, float* partials,
                                                          const __nv_bfloat16* dout, const int* items, int n_items,
                                                          int B, int T, int C) {
    embedding_detail::backward_chunks(dwte, dwpe, partials, dout, items, n_items, B, T, C);
}

extern "C" __global__ void embedding_backward_combine(float* dwte, const float* partials, const int* combine, int C) {
    const int* entry = combine + 3 * (long long)blockIdx.x;
    const long long token = (long long)entry[0];
    const long long first = (long long)entry[1];
    const int count = entry[2];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dwte[token * C + c];
        for (int s = 0; s < count; ++s) {
            acc += partials[(first + s) * C + c];
        }
        dwte[token * C + c] = acc;
    }
}

extern "C" __global__ void embedding_forward_vec(float* out, const int* inp, const float* wte, const float* wpe,
                                                 int B, int T, int C) {
    embedding_detail::forward_vec(out, inp, wte, wpe, B, T, C);
}

extern "C" __global__ void embedding_forward_vec_bf16(__nv_bfloat16* out, const int* inp,
                                                      const __nv_bfloat16* wte, const __nv_bfloat16* wpe, int B,
                                                      int T, int C) {
    embedding_detail::forward_vec(out, inp, wte, wpe, B, T, C);
}
