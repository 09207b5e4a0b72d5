// inp (N) -> out (N)
//
// GELU, tanh approximation (as GPT-2), forward pass:
//   out[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),  x = inp[i]
// with the same constants as the CPU reference (src/cpu/gelu.rs). tanhf is the
// accurate libdevice version (no fast-math), within a few ulp.
//
// One thread per element in a grid-stride loop with a 64-bit index, so N may
// exceed 2^31.
//
// Two kernels from one template over the storage type T: gelu_forward (float)
// and gelu_forward_bf16 (__nv_bfloat16). The bf16 one loads x as float,
// computes in f32 and rounds the result to bf16 once (round-to-nearest-even).
//
// Launch: any blockDim.x (256 is typical), grid = ceil(N / blockDim.x) (capped;
// the stride loop covers the rest), no shared memory.
//
// Backward, the CPU reference's formula:
//   th = tanh(sqrt(2/pi) (x + 0.044715 x^3)),  sech2 = 1 - th^2
//   local = 0.5 (1 + th) + 0.5 x sech2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//   gelu_backward:            dinp[i] += local * dout[i]   (accumulating, as the CPU reference)
//   gelu_backward_overwrite:  dinp[i]  = local * dout[i]   (dinp never read, so never zeroed)
// Each in float and _bf16 (dinp, inp and dout all __nv_bfloat16) from one
// template, as the forward. The bf16 ones load x, dout (and the old dinp) as
// float, compute (and add) in f32, and round the new dinp to bf16 once
// (round-to-nearest-even). Overwriting gives the bits of accumulating onto a
// zeroed dinp: old + local * dout with old = 0 is local * dout, whether or not
// the compiler fuses it into an fma (only a zero's sign can differ: 0 + -0 = +0).
// Same launch as the forward.

#include <cuda_bf16.h>

#include "vec.cuh"

namespace gelu_detail {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCube = 0.044715f;
constexpr float kThreeCube = 0.134145f;  // 3 * 0.044715

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// gelu_tanh(x), in f32.
__device__ __forceinline__ float gelu_one(float x) {
    const float inner = kSqrt2OverPi * (x + kCube * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

// gelu_tanh'(x) * g in f32, added to old (Add: accumulate onto the old value, then the caller
// rounds once) or not.
template <bool Add>
__device__ __forceinline__ float backward_one(float x, float g, float old) {
    const float th = tanhf(kSqrt2OverPi * (x + kCube * x * x * x));
    const float sech2 = 1.0f - th * th;
    const float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * kSqrt2OverPi * (1.0f + kThreeCube * x * x);
    return Add ? old + local * g : local * g;
}

template <typename T>
__device__ __forceinline__ void forward(T* out, const T* inp, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        store(&out[i], gelu_one(load(inp[i])));
    }
}

// Add: dinp += (gelu_backward); otherwise dinp = (gelu_backward_overwrite).
template <bool Add, typename T>
__device__ __forceinline__ void backward(T* dinp, const T* inp, const T* dout, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        store(&dinp[i], backward_one<Add>(load(inp[i]), load(dout[i]), Add ? load(dinp[i]) : 0.0f));
    }
}

// The _vec kernels (behind --kernels vector): the same per-element expressions, with 128-bit
// accesses. Thread p handles elements [p*V, p*V + V) (V = 4 float or 8 bf16) in a grid-stride
// loop over the N / V whole packs, then the last N % V elements one per thread. Every pointer is
// 16-byte aligned (checked on the host). Same launch as the scalar kernels, sized for N / V packs.
template <typename T>
__device__ __forceinline__ void forward_vec(T* out, const T* inp, long long N) {
    constexpr int V = vec::Pack<T>::N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long packs = N / V;
    for (long long p = tid; p < packs; p += stride) {
        const vec::Pack<T> in = vec::load(inp + p * V);
        vec::Pack<T> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(o.v[k], gelu_one(vec::f32(in.v[k])));
        }
        vec::store(out + p * V, o);
    }
    for (long long i = packs * V + tid; i < N; i += stride) {
        store(&out[i], gelu_one(load(inp[i])));
    }
}

// The new dinp value: old + local * g (Add), or local * g (old unused).

// Add as in backward; without it dinp is only stored, never loaded.
template <bool Add, typename T>
__device__ __forceinline__ void backward_vec(T* dinp, const T* inp, const T* dout, long long N) {
    constexpr int V = vec::Pack<T>::N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long packs = N / V;
    for (long long p = tid; p < packs; p += stride) {
        const vec::Pack<T> x = vec::load(inp + p * V);
        const vec::Pack<T> g = vec::load(dout + p * V);
        vec::Pack<T> d = Add ? vec::load(dinp + p * V) : vec::Pack<T>{};
#pragma unroll
        for (int k = 0; k < V; ++k) {
            vec::set(d.v[k], backward_one<Add>(vec::f32(x.v[k]), vec::f32(g.v[k]), vec::f32(d.v[k])));
        }
        vec::store(dinp + p * V, d);
    }
    for (long long i = packs * V + tid; i < N; i += stride) {
        store(&dinp[i], backward_one<Add>(load(inp[i]), load(dout[i]), Add ? load(dinp[i]) : 0.0f));
    }
}

}  // namespace gelu_detail

extern "C" __global__ void gelu_forward(float* out, const float* inp, long long N) {
    gelu_detail::forward(out, inp, N);
}

extern "C" __global__ void gelu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp, long long N) {
    gelu_detail::forward(out, inp, N);
}

extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout, long long N) {
    gelu_detail::backward<true>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                              const __nv_bfloat16* dout, long long N) {
    gelu_detail::backward<true>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_overwrite(float* dinp, const float* inp, const float* dout, long long N) {
    gelu_detail::backward<false>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_overwrite_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                                        const __nv_bfloat16* dout, long long N) {
    gelu_detail::backward<false>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_forward_vec(float* out, const float* inp, long long N) {
    gelu_detail::forward_vec(out, inp, N);
}

extern "C" __global__ void gelu_forward_vec_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp, long long N) {
    gelu_detail::forward_vec(out, inp, N);
}

extern "C" __global__ void gelu_backward_vec(float* dinp, const float* inp, const float* dout, long long N) {
    gelu_detail::backward_vec<true>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_vec_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                                  const __nv_bfloat16* dout, long long N) {
    gelu_detail::backward_vec<true>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_overwrite_vec(float* dinp, const float* inp, const float* dout,
                                                       long long N) {
    gelu_detail::backward_vec<false>(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_overwrite_vec_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                                            const __nv_bfloat16* dout, long long N) {
    gelu_detail::backward_vec<false>(dinp, inp, dout, N);
}
