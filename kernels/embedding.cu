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

#include <cuda_bf16.h>

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
