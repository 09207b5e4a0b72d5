// qkv (B,T,3C) -> q,k,v (B,NH,T,HS); att (B,NH,T,T) in place; y (B,NH,T,HS) -> out (B,T,C)
//
// The non-GEMM pieces of causal self-attention (C = NH*HS). The host side
// (src/gpu/attention.rs) runs, per forward:
//   1. attention_permute:          q[b,h,t,d] = qkv[b,t,0*C + h*HS + d]  (k: +C, v: +2C)
//   2. cuBLAS batched GEMM:        att[b,h,t1,t2] = q[b,h,t1,:] . k[b,h,t2,:]
//   3. attention_softmax_forward:  att[b,h,t1,:] = causal softmax(scale * att[b,h,t1,:])
//   4. cuBLAS batched GEMM:        y[b,h,t1,:] = sum_t2 att[b,h,t1,t2] * v[b,h,t2,:]
//   5. attention_unpermute:        out[b,t,h*HS + d] = y[b,h,t,d]
//
// Index arithmetic is 64-bit so B*T*C and B*NH*T*T may exceed 2^31.

// Launch: grid = ceil(B*NH*T*HS / blockDim.x), any blockDim.x (256 is typical).
extern "C" __global__ void attention_permute(float* q, float* k, float* v, const float* qkv, int B,
                                             int T, int NH, int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, h, t, d) in the permuted layout.
        const int d = (int)(idx % HS);
        const long long bht = idx / HS;
        const int t = (int)(bht % T);
        const long long bh = bht / T;
        const int h = (int)(bh % NH);
        const long long b = bh / NH;
        const long long src = (b * T + t) * 3 * C + (long long)h * HS + d;
        q[idx] = qkv[src];
        k[idx] = qkv[src + C];
        v[idx] = qkv[src + 2 * C];
    }
}

// Launch: grid = ceil(B*NH*T*HS / blockDim.x), any blockDim.x (256 is typical).
extern "C" __global__ void attention_unpermute(float* out, const float* y, int B, int T, int NH,
                                               int HS) {
    const long long C = (long long)NH * HS;
    const long long n = (long long)B * T * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        // idx enumerates (b, t, c) in the output layout, c = h*HS + d.
        const int c = (int)(idx % C);
        const long long bt = idx / C;
        const int t = (int)(bt % T);
        const long long b = bt / T;
        const int h = c / HS;
        const int d = c - h * HS;
        out[idx] = y[((b * NH + h) * T + t) * HS + d];
    }
}

namespace {

__device__ __forceinline__ float attention_warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    }
    return x;
}

__device__ __forceinline__ float attention_warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;
}

}  // namespace

// att (rows = B*NH*T, T) in place: row r belongs to query position t1 = r % T.
//   att[r, t2] = exp(scale*att[r,t2] - m) / sum_{t2' <= t1} exp(scale*att[r,t2'] - m)  for t2 <= t1
//   att[r, t2] = 0                                                                       for t2 > t1
// where m is the row maximum of scale*att[r, 0..=t1]. Max and sum are fp32 warp reductions.
//
// One warp per row. Launch: blockDim.x a multiple of 32 (256 is typical),
// grid = ceil(rows / (blockDim.x / 32)).
extern "C" __global__ void attention_softmax_forward(float* att, long long rows, int T,
                                                     float scale) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) {
        return;  // whole warp exits together: row is uniform across the warp
    }
    const int t1 = (int)(row % T);
    float* x = att + row * T;

    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t1; t2 += 32) {
        maxv = fmaxf(maxv, scale * x[t2]);
    }
    maxv = attention_warp_max(maxv);

    float sum = 0.0f;
    for (int t2 = lane; t2 <= t1; t2 += 32) {
        const float e = expf(scale * x[t2] - maxv);
        x[t2] = e;
        sum += e;
    }
    sum = attention_warp_sum(sum);
    const float inv = 1.0f / sum;

    for (int t2 = lane; t2 < T; t2 += 32) {
        x[t2] = t2 <= t1 ? x[t2] * inv : 0.0f;
    }
}

// q (C), kcache (maxT,C), vcache (maxT,C) -> out (C): one new position attending over the
// first n_ctx cached positions (its own included), for KV-cache decoding.
//
// One block per head (grid = NH), any multiple of 32 threads; dynamic shared memory of n_ctx
// floats holds the scores. Scores, max and sum are fp32, as in the batched softmax.
static __device__ float decode_block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    for (int o = 16; o > 0; o /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : (is_max ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    return v;
}

extern "C" __global__ void attention_decode(float* out, const float* q, const float* kcache,
                                            const float* vcache, int n_ctx, int C, int NH) {
    extern __shared__ float scores[];
    const int h = blockIdx.x;
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const float* qh = q + (long long)h * hs;
    float local_max = -INFINITY;
    for (int t = threadIdx.x; t < n_ctx; t += blockDim.x) {
        const float* k = kcache + (long long)t * C + (long long)h * hs;
        float s = 0.0f;
        for (int i = 0; i < hs; i++) s += qh[i] * k[i];
        s *= scale;
        scores[t] = s;
        local_max = fmaxf(local_max, s);
    }
    const float m = decode_block_reduce(local_max, true);
    float local_sum = 0.0f;
    for (int t = threadIdx.x; t < n_ctx; t += blockDim.x) {
        const float e = expf(scores[t] - m);
        scores[t] = e;
        local_sum += e;
    }
    const float inv = 1.0f / decode_block_reduce(local_sum, false);
    __syncthreads();  // every score written before any thread reads them all
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < n_ctx; t++) acc += scores[t] * vcache[(long long)t * C + (long long)h * hs + i];
        out[(long long)h * hs + i] = acc * inv;
    }
}
