// A CPU stand-in for the CUDA runtime pieces the kernels in kernels/ (and kernels/vec.cuh) use, so
// their source compiles with g++ and runs on the host: thread and block indices (thread_local, set
// by `launch`), __syncthreads (a barrier of the block's threads), the warp shuffles (the lanes of a
// warp exchange values through a per-warp buffer between two barriers of that warp), the correctly
// rounded intrinsics (plain IEEE operations: g++ -ffp-contract=off keeps them unfused, as the
// kernels' _rn intrinsics are), bf16 as its 16 bits, and int4 for the 128-bit packs.
//
// `launch` runs each block's threads as real threads. A thread that returns from the kernel leaves
// its block's and its warp's barriers; a __syncthreads or a shuffle that then goes ahead without it
// (divergent exit before a barrier, a shuffle reading a lane that has exited) is reported and makes
// the launch exit the program with status 3.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static thread_local_block

struct dim3e {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim, gridDim;
constexpr int warpSize = 32;

// Errors the emulation itself detects (see the top); `launch` exits with status 3 after a block that
// had any.
inline std::atomic<int> g_emu_errors{0};
inline void emu_error(const char* what) {
    std::fprintf(stderr, "emulation error: %s (block %u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, threadIdx.x);
    ++g_emu_errors;
}

// Runs when every participant of a barrier phase has arrived or left: a phase that some of the
// participants completed by waiting while others had left (returned from the kernel) is the
// divergent barrier CUDA leaves undefined. When all have left, nobody waited: no error.
struct EmuPhaseCheck {
    std::atomic<unsigned>* exited;
    unsigned count;
    const char* what;
    void operator()() noexcept {
        const unsigned e = exited->load();
        if (e > 0 && e < count) {
            std::fprintf(stderr, "emulation error: %s with %u of %u threads returned\n", what, e, count);
            ++g_emu_errors;
        }
    }
};
using EmuBarrier = std::barrier<EmuPhaseCheck>;

inline EmuBarrier* g_block_barrier = nullptr;
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }

// One warp of the running block: `lanes` threads (32, fewer for the last warp of a block whose size
// is not a multiple of 32), a barrier of them, and one exchange slot per lane.
struct EmuWarp {
    unsigned lanes = 32;
    std::atomic<unsigned> exited{0};
    std::unique_ptr<EmuBarrier> bar;
    uint64_t slot[32] = {};
    bool gone[32] = {};
};
inline EmuWarp* g_warps = nullptr;

// Every lane of the warp stores v, waits for the others, reads lane src's value, waits again (so
// no slot is overwritten before all have read). All lanes of the warp must take part (the kernels
// use the full mask; a partial mask is reported).
template <typename T>
inline T emu_exchange(unsigned mask, T v, unsigned src) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move up to 64 bits");
    const unsigned lane = threadIdx.x % 32;
    EmuWarp& w = g_warps[threadIdx.x / 32];
    if (mask != 0xffffffffu) emu_error("shuffle with a partial mask (not emulated)");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.bar->arrive_and_wait();
    T r = v;
    if (src >= w.lanes || w.gone[src]) {
        emu_error("shuffle reads a lane that does not exist or has returned");
    } else {
        bits = w.slot[src];
        memcpy(&r, &bits, sizeof(T));
    }
    w.bar->arrive_and_wait();
    return r;
}
// The PTX shfl.sync lane rules: width a power of two up to 32 splits the warp into segments; a
// source outside the lane's segment (up, down, bfly) gives the lane its own value.
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32, lo = lane & ~(unsigned)(width - 1);
    return emu_exchange(mask, v, lo | ((unsigned)src & (unsigned)(width - 1)));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32, lo = lane & ~(unsigned)(width - 1);
    return emu_exchange(mask, v, (int)lane - (int)delta >= (int)lo ? lane - delta : lane);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32, hi = (lane & ~(unsigned)(width - 1)) + (unsigned)width - 1;
    return emu_exchange(mask, v, lane + delta <= hi ? lane + delta : lane);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32, hi = (lane & ~(unsigned)(width - 1)) + (unsigned)width - 1;
    const unsigned j = lane ^ (unsigned)lane_mask;
    return emu_exchange(mask, v, j <= hi ? j : lane);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu_error("__syncwarp with a partial mask (not emulated)");
    g_warps[threadIdx.x / 32].bar->arrive_and_wait();
}

// `__shared__ T s[N]` becomes `static thread_local_block T s[N]`: one array per block, shared by
// its threads (blocks run one after another, so one static array serves them all).
#define thread_local_block

struct alignas(16) int4 {
    int x, y, z, w;
};
// run.sh turns each reinterpret_cast<[const] int4*>(p) of the kernel source into emu_int4_ptr(p):
// the same pointer, after checking the 16-byte alignment a 128-bit access needs on the GPU.
template <typename T>
inline auto* emu_int4_ptr(T* p) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
        std::fprintf(stderr, "emulation error: 128-bit access at %p, not 16-byte aligned\n", (const void*)p);
        std::fflush(nullptr);
        std::_Exit(3);
    }
    if constexpr (std::is_const_v<T>) {
        return reinterpret_cast<const int4*>(p);
    } else {
        return reinterpret_cast<int4*>(p);
    }
}
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return {x}; }
inline float __int_as_float(int x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}
inline double __longlong_as_double(long long x) {
    double d;
    memcpy(&d, &x, 8);
    return d;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline float __double2float_rn(double a) { return (float)a; }
using std::fmin;
using std::isfinite;
using std::max;
using std::min;
// `extern __shared__ T name[];` (dynamic shared memory) becomes `T* name = emu_dynamic_shared<T>();`
// in run.sh: one buffer for the running block, sized by `launch`'s `shared_bytes`.
inline std::vector<unsigned char> g_dynamic_shared;
template <typename T>
inline T* emu_dynamic_shared() {
    return reinterpret_cast<T*>(g_dynamic_shared.data());
}

// Runs `kernel` over grid (gx, gy) of blocks of `threads` threads: blocks one after another, the
// threads of a block as real threads (one pool for the launch) meeting at __syncthreads and
// exchanging at warp shuffles. `shared_bytes` sizes the dynamic shared memory (extern __shared__).
inline void launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& kernel,
                   size_t shared_bytes = 0) {
    gridDim = {gx, gy, 1};
    blockDim = {threads, 1, 1};
    g_dynamic_shared.assign(shared_bytes + 16, 0xff);
    const unsigned nwarps = (threads + 31) / 32;
    // The pool and the launching thread meet at `start` before each block and at `end` after it;
    // in between the block's threads run the kernel with a fresh block barrier and warps.
    std::barrier<> start((std::ptrdiff_t)threads + 1), end((std::ptrdiff_t)threads + 1);
    std::atomic<unsigned> exited{0};
    std::unique_ptr<EmuBarrier> bar;
    std::unique_ptr<EmuWarp[]> warps;
    unsigned bx = 0, by = 0;
    bool done = false;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (;;) {
                start.arrive_and_wait();
                if (done) return;
                threadIdx = {t, 0, 0};
                blockIdx = {bx, by, 0};
                kernel();
                // Leave the warp and the block: their later phases go on without this thread.
                EmuWarp& w = warps[t / 32];
                w.gone[t % 32] = true;
                ++w.exited;
                w.bar->arrive_and_drop();
                ++exited;
                bar->arrive_and_drop();
                end.arrive_and_wait();
            }
        });
    }
    for (by = 0; by < gy; ++by) {
        for (bx = 0; bx < gx; ++bx) {
            exited = 0;
            bar = std::make_unique<EmuBarrier>((std::ptrdiff_t)threads, EmuPhaseCheck{&exited, threads, "__syncthreads"});
            g_block_barrier = bar.get();
            warps.reset(new EmuWarp[nwarps]);
            for (unsigned w = 0; w < nwarps; ++w) {
                warps[w].lanes = std::min(32u, threads - 32 * w);
                warps[w].bar = std::make_unique<EmuBarrier>(
                    (std::ptrdiff_t)warps[w].lanes, EmuPhaseCheck{&warps[w].exited, warps[w].lanes, "warp shuffle"});
            }
            g_warps = warps.get();
            start.arrive_and_wait();
            end.arrive_and_wait();
            if (g_emu_errors.load()) {
                std::fprintf(stderr, "emulation errors in block (%u,%u): stopping\n", bx, by);
                std::fflush(nullptr);
                std::_Exit(3);
            }
        }
    }
    done = true;
    start.arrive_and_wait();
    for (auto& th : pool) th.join();
    g_warps = nullptr;
    g_block_barrier = nullptr;
}
