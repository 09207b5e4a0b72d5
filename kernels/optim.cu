// Optimizer kernels, fp32: the global gradient norm, gradient scaling (clipping) and the AdamW update.
//
// global_norm_partials: g (N) -> partial (gridDim.x) doubles, sum of g*g per block.
// global_norm_final:    partial (nblocks) -> partial[nblocks] = sum of the partials.
//
// Deterministic by construction: the host launches global_norm_partials with a fixed grid
// (OPTIM_NORM_BLOCKS blocks of OPTIM_NORM_THREADS threads, independent of the device), so thread
// `gid` always sums elements gid, gid + G, gid + 2G, ... (G = total threads) in that order, in
// double; each block then reduces its threads' sums with a fixed shared-memory tree, and one block
// reduces the per-block sums with a fixed strided pass and the same tree. The same input gives the
// same bits on every GPU and every run. A float squared is exact in double (24 + 24 bits < 53).
//
// grad_scale: g[i] *= coef, one correctly rounded multiply (bit-identical to the CPU's `g * coef`).
//
// adamw_update: per element, in the CPU reference's expression order (src/train/optim.rs):
//   m = b1*m + (1-b1)*g
//   v = b2*v + ((1-b2)*g)*g
//   denom = sqrt(v)*inv_sqrt_bc2 + eps
//   p = p*decay - (step_size*m)/denom
// Every operation goes through a round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fsub_rn,
// __fsqrt_rn, __fdiv_rn) so nvcc cannot contract a multiply and an add into an FMA; Rust never
// fuses, so the results are bit-identical to the CPU step.
//
// Launch (grad_scale, adamw_update): any blockDim.x, grid-stride loop with 64-bit indices.

namespace optim_detail {

constexpr int NORM_THREADS = 256;  // must equal the host's OPTIM_NORM_THREADS

// Sums `s[0..NORM_THREADS)` into s[0] with a fixed tree; every thread of the block must call it.
__device__ __forceinline__ void block_tree_sum(double* s) {
    for (int width = NORM_THREADS / 2; width > 0; width >>= 1) {
        if ((int)threadIdx.x < width) {
            s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + width]);
        }
        __syncthreads();
    }
}

}  // namespace optim_detail

extern "C" __global__ void __launch_bounds__(optim_detail::NORM_THREADS)
    global_norm_partials(const float* g, long long N, double* partial) {
    __shared__ double s[optim_detail::NORM_THREADS];
    const long long stride = (long long)gridDim.x * blockDim.x;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const double x = (double)g[i];
        acc = __dadd_rn(acc, __dmul_rn(x, x));
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    optim_detail::block_tree_sum(s);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = s[0];
    }
}

// One block of NORM_THREADS threads. Thread t sums partials t, t + NORM_THREADS, ... in order,
// then the tree; the total goes to partial[nblocks] (after every partial has been read).
extern "C" __global__ void __launch_bounds__(optim_detail::NORM_THREADS)
    global_norm_final(double* partial, int nblocks) {
    __shared__ double s[optim_detail::NORM_THREADS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) {
        acc = __dadd_rn(acc, partial[i]);
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    optim_detail::block_tree_sum(s);
    if (threadIdx.x == 0) {
        partial[nblocks] = s[0];
    }
}

extern "C" __global__ void grad_scale(float* g, float coef, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        g[i] = __fmul_rn(g[i], coef);
    }
}

extern "C" __global__ void adamw_update(float* params, const float* grads, float* m, float* v, long long N,
                                        float beta1, float beta2, float eps, float decay, float step_size,
                                        float inv_sqrt_bc2) {
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float g = grads[i];
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_b1, g));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, g), g));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bc2), eps);
        params[i] = __fsub_rn(__fmul_rn(params[i], decay), __fdiv_rn(__fmul_rn(step_size, mi), denom));
    }
}
