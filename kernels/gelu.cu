// inp (N) -> out (N)
//
// GELU, tanh approximation (as GPT-2), forward pass:
//   out[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),  x = inp[i]
// with the same constants as the CPU reference (src/cpu/gelu.rs). tanhf is the
// accurate libdevice version (no fast-math), within a few ulp.
//
// One thread per element in a grid-stride loop with a 64-bit index, so N may
// exceed 2^31.
//
// Launch: any blockDim.x (256 is typical), grid = ceil(N / blockDim.x) (capped;
// the stride loop covers the rest), no shared memory.

namespace gelu_detail {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCube = 0.044715f;
}  // namespace gelu_detail

extern "C" __global__ void gelu_forward(float* out, const float* inp, long long N) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        const float x = inp[i];
        const float inner = gelu_detail::kSqrt2OverPi * (x + gelu_detail::kCube * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(inner));
    }
}
