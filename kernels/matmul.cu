// dout (N,OC) -> dbias (OC) +=   (the bias gradient of the matmul backward)
//
// dbias[o] += sum_{n < N} dout[n, o], deterministically (no float atomics): the same inputs
// give the same bits on every run, whatever the scheduling. Two kernels, run in order by
// src/gpu/matmul.rs:
//   1. matmul_bias_grad_partial: rows are split into fixed chunks of rows_per_chunk rows;
//      block (x = column tile of 32, y = chunk) writes partial[chunk, o] = sum of its rows.
//      Within a block, thread (tx, ty) sums rows ty, ty + blockDim.y, ... of the chunk in
//      order, then thread ty = 0 adds the blockDim.y partial sums in ty order.
//   2. matmul_bias_grad_finish: one thread per column adds the chunks' partials in chunk
//      order and adds the total to dbias[o].
// All sums are fp32. Index arithmetic is 64-bit (N*OC may exceed 2^31).
//
// With --bias-grad epilogue the column sums come instead from cuBLASLt's BGRADB epilogue on the
// dweight GEMM, which writes them (it cannot add) to an fp32 scratch of OC values; then
//   3. matmul_bias_grad_add: one thread per column, dbias[o] += grad[o] (one fp32 add: as
//      deterministic as the sums it adds).
//
// The partial kernel is one template over the storage type T of dout, emitted twice:
// matmul_bias_grad_partial (float) and matmul_bias_grad_partial_bf16 (__nv_bfloat16, widened
// to float on load). Parameter gradients are always fp32, so the partial sums, the finish
// kernel and dbias are fp32 for both. Helpers live in matmul_detail (one translation unit for
// every kernel).

#include <cuda_bf16.h>

namespace matmul_detail {

// Rows per thread-column of a block in matmul_bias_grad_partial (= blockDim.y).
constexpr int kBiasRowsPerBlockY = 8;

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }

// Launch: block (32, 8), grid (ceil(OC / 32), ceil(N / rows_per_chunk)); partial holds
// gridDim.y * OC floats, laid out (chunk, OC).
template <typename T>
__device__ __forceinline__ void bias_grad_partial(float* partial, const T* dout, int N, int OC,
                                                  int rows_per_chunk) {
    __shared__ float sums[kBiasRowsPerBlockY][33];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const long long col = (long long)blockIdx.x * 32 + tx;
    const long long chunk = blockIdx.y;
    const long long row0 = chunk * rows_per_chunk;
    long long row_end = row0 + rows_per_chunk;
    if (row_end > N) row_end = N;
    float acc = 0.0f;
    if (col < OC) {
        for (long long r = row0 + ty; r < row_end; r += blockDim.y) {
            acc += load(dout[r * OC + col]);
        }
    }
    sums[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && col < OC) {
        float total = 0.0f;
        for (int y = 0; y < (int)blockDim.y; y++) total += sums[y][tx];
        partial[chunk * OC + col] = total;
    }
}

}  // namespace matmul_detail

extern "C" __global__ void matmul_bias_grad_partial(float* partial, const float* dout, int N,
                                                    int OC, int rows_per_chunk) {
    matmul_detail::bias_grad_partial(partial, dout, N, OC, rows_per_chunk);
}

extern "C" __global__ void matmul_bias_grad_partial_bf16(float* partial, const __nv_bfloat16* dout,
                                                         int N, int OC, int rows_per_chunk) {
    matmul_detail::bias_grad_partial(partial, dout, N, OC, rows_per_chunk);
}

// Launch: grid-stride over OC columns, any blockDim.x.
extern "C" __global__ void matmul_bias_grad_finish(float* dbias, const float* partial, int chunks,
                                                   int OC) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x; col < OC;
         col += stride) {
        float total = 0.0f;
        for (int ch = 0; ch < chunks; ch++) total += partial[(long long)ch * OC + col];
        dbias[col] += total;
    }
}

// Launch: one thread per column, grid ceil(OC / blockDim.x), any blockDim.x; grad holds OC
// floats (the BGRADB epilogue's output), dbias OC.
extern "C" __global__ void matmul_bias_grad_add(float* dbias, const float* grad, int OC) {
    const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (col < OC) dbias[col] += grad[col];
}
