#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <barrier>
#include <vector>
#include <functional>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct dim3e { unsigned x = 0, y = 0, z = 0; };
extern thread_local dim3e threadIdx, blockIdx;
extern dim3e blockDim;
struct __nv_bfloat16 { uint16_t v; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0;
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
inline float bf2f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {{f2bf(a)}, {f2bf(b)}}; }
inline float __low2float(__nv_bfloat162 v) { return bf2f(v.x.v); }
inline float __high2float(__nv_bfloat162 v) { return bf2f(v.y.v); }
void __syncthreads();
float __shfl_xor_sync(unsigned, float, int);
// warp collectives
struct WarpX {
    std::barrier<> *bar;
    const void* addr[32];
    uint32_t a[32][4], b[32][2];
    float c[32][4];
    float f[32];
};
extern WarpX* g_warps;  // 4 (or blockDim/32) per block
