// logits (N,Vp), targets (N) int32 -> losses (N); with write_dlogits != 0 also
// logits (N,Vp) overwritten in place with dlogits
//
// Softmax cross-entropy over the first V of Vp (padded) logits per row:
//   max[n]    = max_{v<V} logits[n,v]
//   sum[n]    = sum_{v<V} exp(logits[n,v] - max[n])
//   losses[n] = log(sum[n]) + max[n] - logits[n, targets[n]]
// When write_dlogits != 0 the row is then overwritten in the same kernel with the
// gradient of scale * loss:
//   logits[n,v] = scale * (softmax[n,v] - (v == targets[n]))   for v < V
//   logits[n,v] = 0                                             for V <= v < Vp
// When write_dlogits == 0 the logits are only read.
//
// Out-of-range targets (< 0 or >= V, including the padded V..Vp) are never used
// as an index: that row's loss is NaN (so a bad target poisons the mean loss
// visibly instead of silently reading padding or out of bounds) and its dlogits
// row is scale * softmax with no one-hot term.
//
// One block per row. Pass 1: each thread runs an online (max, sum-of-exp) pair
// over its strided share of the V logits (one expf per element; the sum is
// rescaled when the max grows), then the pairs are merged with full-mask
// __shfl_xor_sync within each warp and through shared memory across warps, and
// the block's result is broadcast through shared memory. Thread 0 reads the
// target logit before the reduction's first __syncthreads, so it is ordered
// before any thread overwrites the row in pass 2 (the dlogits write, which
// re-reads each logit once more).
//
// Two kernels from one template over the storage type T of the logits (and so
// of the dlogits written over them): classifier_forward (float) and
// classifier_forward_bf16 (__nv_bfloat16); losses are f32 in both. The bf16
// kernel loads each logit as float, does all arithmetic in f32 and rounds each
// dlogit to bf16 once (round-to-nearest-even) when it stores it.
//
// Launch: grid = N, blockDim.x a multiple of 32 up to 1024, no dynamic shared
// memory. Row offsets are 64-bit, so N*Vp may exceed 2^31.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace classifier_detail {

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Merges the (max, sum of exp(x - max)) pair (m2, s2) into (m, s).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) {
        // Both sides empty: keep (-inf, 0) rather than computing exp(-inf - -inf) = NaN.
        m = mx;
        s = 0.0f;
        return;
    }
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

__device__ __forceinline__ void warp_merge(float& m, float& s) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, m2, s2);
    }
}

// Adds one logit v to a thread's running (max, sum of exp(x - max)) pair.
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else {
        s += expf(v - m);
    }
}

// dloss * (softmax - onehot) of the logit v in column i < V.
__device__ __forceinline__ float dlogit(float v, int i, int target, float row_max, float inv_sum, float scale) {
    const float p = expf(v - row_max) * inv_sum;
    return scale * (i == target ? p - 1.0f : p);
}

// VEC (the _vec kernels, behind --kernels vector): the same online max/sum, loss and dlogits, with
// 128-bit accesses. Thread t walks the packs t, t + blockDim.x, ... of V = 4 (float) or 8 (bf16)
// columns of the padded row (Vp a multiple of V and the pointers 16-byte aligned, both checked on
// the host); columns >= V take no part in the softmax and get dlogits 0, as in the scalar kernel.
// Each thread's share of the row is another set of columns in another order, so the row sum (and
// with it the loss and the probabilities) agrees with the scalar kernel to rounding, not bit for
// bit. Same launch as the scalar kernel.
template <typename T, bool VEC>
__device__ __forceinline__ void forward(float* losses, T* logits, const int* targets, int N, int V, int Vp,
                                        float scale, int write_dlogits) {
    __shared__ float warp_max[32];
    __shared__ float warp_sum[32];
    __shared__ float block_max;
    __shared__ float block_sum;

    const long long row = blockIdx.x;
    if (row >= N) {
        return;  // block-uniform, before any barrier
    }
    T* x = logits + row * Vp;
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int num_warps = blockDim.x / 32;
    const int target = targets[row];
    const bool valid = target >= 0 && target < V;

    float target_logit = 0.0f;
    if (tid == 0 && valid) {
        target_logit = load(x[target]);
    }

    float m = -INFINITY;
    float s = 0.0f;
    if constexpr (VEC) {
        constexpr int W = vec::Pack<T>::N;
        const int live_packs = (V + W - 1) / W;
        for (int p = tid; p < live_packs; p += blockDim.x) {
            const vec::Pack<T> xp = vec::load(x + p * W);
#pragma unroll
            for (int k = 0; k < W; ++k) {
                if (p * W + k < V) {
                    online_add(m, s, vec::f32(xp.v[k]));
                }
            }
        }
    } else {
        for (int i = tid; i < V; i += blockDim.x) {
            online_add(m, s, load(x[i]));
        }
    }
    warp_merge(m, s);
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < num_warps ? warp_max[lane] : -INFINITY;
        s = lane < num_warps ? warp_sum[lane] : 0.0f;
        warp_merge(m, s);
        if (lane == 0) {
            block_max = m;
            block_sum = s;
        }
    }
    __syncthreads();
    const float row_max = block_max;
    const float row_sum = block_sum;

    if (tid == 0) {
        losses[row] = valid ? logf(row_sum) + (row_max - target_logit) : __int_as_float(0x7fc00000);
    }
    if (write_dlogits) {
        const float inv_sum = 1.0f / row_sum;
        if constexpr (VEC) {
            constexpr int W = vec::Pack<T>::N;
            for (int p = tid; p < Vp / W; p += blockDim.x) {
                vec::Pack<T> xp = vec::load(x + p * W);
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    const int i = p * W + k;
                    vec::set(xp.v[k], i < V ? dlogit(vec::f32(xp.v[k]), i, target, row_max, inv_sum, scale) : 0.0f);
                }
                vec::store(x + p * W, xp);
            }
        } else {
            for (int i = tid; i < Vp; i += blockDim.x) {
                store(&x[i], i < V ? dlogit(load(x[i]), i, target, row_max, inv_sum, scale) : 0.0f);
            }
        }
    }
}

}  // namespace classifier_detail

extern "C" __global__ void __launch_bounds__(1024)
    classifier_forward(float* losses, float* logits, const int* targets, int N, int V, int Vp, float scale,
                         int write_dlogits) {
    classifier_detail::forward<float, false>(losses, logits, targets, N, V, Vp, scale, write_dlogits);
}

extern "C" __global__ void __launch_bounds__(1024)
    classifier_forward_bf16(float* losses, __nv_bfloat16* logits, const int* targets, int N, int V, int Vp,
                              float scale, int write_dlogits) {
    classifier_detail::forward<__nv_bfloat16, false>(losses, logits, targets, N, V, Vp, scale, write_dlogits);
}

extern "C" __global__ void __launch_bounds__(1024)
    classifier_forward_vec(float* losses, float* logits, const int* targets, int N, int V, int Vp, float scale,
                           int write_dlogits) {
    classifier_detail::forward<float, true>(losses, logits, targets, N, V, Vp, scale, write_dlogits);
}

extern "C" __global__ void __launch_bounds__(1024)
    classifier_forward_vec_bf16(float* losses, __nv_bfloat16* logits, const int* targets, int N, int V, int Vp, float scale,
                           int write_dlogits) {
    classifier_detail::forward<__nv_bfloat16, true>(losses, logits, targets, N, V, Vp, scale, write_dlogits);
}
