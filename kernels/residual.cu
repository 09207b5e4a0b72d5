// a (N), b (N) -> out (N)
//
// Residual add, forward pass: out[i] = a[i] + b[i].
//
// One thread per element in a grid-stride loop with a 64-bit index, so N may
// exceed 2^31 and any grid size covers it. A single f32 add, so the result is
// bit-identical to the CPU reference.
//
// Two kernels from one template over the storage type T: residual_forward
// (float) and residual_forward_bf16 (__nv_bfloat16). The bf16 one loads both
// values as float, adds them in f32 and rounds the sum to bf16 once
// (round-to-nearest-even), so it equals the CPU's f32 sum rounded to bf16.
//
// Launch: any blockDim.x (256 is typical), grid = ceil(N / blockDim.x) (capped;
// the stride loop covers the rest), no shared memory.
//
// Backward (f32 only), accumulating as the CPU reference:
//   dinp1[i] += dout[i],  dinp2[i] += dout[i]
// Same launch as the forward; one f32 add each, so bit-identical to the CPU.
// dinp1 and dinp2 must not alias (the Rust wrapper takes two &mut).

#include <cuda_bf16.h>

namespace residual_detail {

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ void forward(T* out, const T* a, const T* b, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        store(&out[i], load(a[i]) + load(b[i]));
    }
}

__device__ __forceinline__ void backward(float* dinp1, float* dinp2, const float* dout, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float g = dout[i];
        dinp1[i] += g;
        dinp2[i] += g;
    }
}

}  // namespace residual_detail

extern "C" __global__ void residual_forward(float* out, const float* a, const float* b, long long N) {
    residual_detail::forward(out, a, b, N);
}

extern "C" __global__ void residual_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* a,
                                                 const __nv_bfloat16* b, long long N) {
    residual_detail::forward(out, a, b, N);
}

extern "C" __global__ void residual_backward(float* dinp1, float* dinp2, const float* dout, long long N) {
    residual_detail::backward(dinp1, dinp2, dout, N);
}
