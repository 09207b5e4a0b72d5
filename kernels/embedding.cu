// inp (B,T) int32, wte (Vp,C), wpe (T,C) -> out (B,T,C)
//
// Token + position embedding, forward pass:
//   out[b, t, c] = wte[inp[b, t], c] + wpe[t, c]
//
// One thread per output element. The index arithmetic is done in 64 bits so
// B*T*C may exceed 2^31. The result is a single f32 add of the two loaded
// values, so it is bit-identical to the CPU reference.
//
// Launch: grid = ceil(B*T*C / blockDim.x), any blockDim.x (256 is typical).

extern "C" __global__ void embedding_forward(float* out, const int* inp, const float* wte,
                                             const float* wpe, int B, int T, int C) {
    const long long n = (long long)B * T * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += stride) {
        const long long bt = idx / C;
        const int c = (int)(idx - bt * C);
        const int t = (int)(bt % T);
        const long long token = (long long)inp[bt];
        out[idx] = wte[token * C + c] + wpe[(long long)t * C + c];
    }
}
