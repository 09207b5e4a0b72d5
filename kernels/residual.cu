// a (N), b (N) -> out (N)
//
// Residual add, forward pass: out[i] = a[i] + b[i].
//
// One thread per element in a grid-stride loop with a 64-bit index, so N may
// exceed 2^31 and any grid size covers it. A single f32 add, so the result is
// bit-identical to the CPU reference.
//
// Launch: any blockDim.x (256 is typical), grid = ceil(N / blockDim.x) (capped;
// the stride loop covers the rest), no shared memory.

extern "C" __global__ void residual_forward(float* out, const float* a, const float* b, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        out[i] = a[i] + b[i];
    }
}
