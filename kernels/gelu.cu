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
// Backward, accumulating as the CPU reference, same formula:
//   th = tanh(sqrt(2/pi) (x + 0.044715 x^3)),  sech2 = 1 - th^2
//   dinp[i] += (0.5 (1 + th) + 0.5 x sech2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)) * dout[i]
// gelu_backward (float) and gelu_backward_bf16 (dinp, inp and dout all
// __nv_bfloat16) from one template, as the forward. The bf16 one loads x, dout
// and the old dinp as float, computes and adds in f32, and rounds the new dinp
// to bf16 once (round-to-nearest-even).
// Same launch as the forward.

#include <cuda_bf16.h>

namespace gelu_detail {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCube = 0.044715f;
constexpr float kThreeCube = 0.134145f;  // 3 * 0.044715

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ void forward(T* out, const T* inp, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float x = load(inp[i]);
        const float inner = kSqrt2OverPi * (x + kCube * x * x * x);
        store(&out[i], 0.5f * x * (1.0f + tanhf(inner)));
    }
}

template <typename T>
__device__ __forceinline__ void backward(T* dinp, const T* inp, const T* dout, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float x = load(inp[i]);
        const float th = tanhf(kSqrt2OverPi * (x + kCube * x * x * x));
        const float sech2 = 1.0f - th * th;
        const float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * kSqrt2OverPi * (1.0f + kThreeCube * x * x);
        // Accumulate in f32 onto the old value, then round once (a plain += for float;
        // dout is read first, as the right-hand side of += is).
        const float g = load(dout[i]);
        store(&dinp[i], load(dinp[i]) + local * g);
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
    gelu_detail::backward(dinp, inp, dout, N);
}

extern "C" __global__ void gelu_backward_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                              const __nv_bfloat16* dout, long long N) {
    gelu_detail::backward(dinp, inp, dout, N);
}
