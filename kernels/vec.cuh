// 128-bit loads and stores for the `_vec` kernels (issue 15 §3): one access moves a Pack of 16
// bytes, 4 floats or 8 bf16, which the compiler emits as LDG.E.128 / STG.E.128 when the address
// is 16-byte aligned (the launchers check every pointer; the activation tensors are 256-byte
// aligned in ActLayout, cudaMalloc'd buffers too). Arithmetic stays per element in f32, as in the
// scalar kernels; only the memory access is wider.
//
// Included by several kernel files of the one translation unit build.rs generates, so it is
// guarded and everything lives in namespace vec.
#pragma once
#include <cuda_bf16.h>

namespace vec {

template <typename T>
struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

// One 128-bit load of p[0..N); p must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ Pack<T> load(const T* p) {
    Pack<T> r;
    *reinterpret_cast<int4*>(r.v) = *reinterpret_cast<const int4*>(p);
    return r;
}

// One 128-bit store to p[0..N); p must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void store(T* p, const Pack<T>& x) {
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(x.v);
}

__device__ __forceinline__ float f32(float x) { return x; }
__device__ __forceinline__ float f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void set(float& d, float v) { d = v; }
// Round to nearest even, as the scalar kernels' stores.
__device__ __forceinline__ void set(__nv_bfloat16& d, float v) { d = __float2bfloat16_rn(v); }

}  // namespace vec
