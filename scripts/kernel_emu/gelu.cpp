// Runs kernels/gelu.cu on the CPU (cuda_rt.h) and holds its never-run kernels to the verified ones
// of the same file, launched as src/gpu/gelu.rs launches them (256 threads, grid_for(N) blocks for
// the scalar kernels and grid_for(ceil(N / V)) for the _vec ones, V = 4 f32 or 8 bf16):
//
//   gelu_forward_vec[_bf16]              bits of gelu_forward[_bf16]
//   gelu_backward_vec[_bf16]             bits of gelu_backward[_bf16] (accumulating onto the same
//                                        non-zero dinp)
//   gelu_backward_overwrite[_vec][_bf16] bits of gelu_backward[_bf16] onto a zeroed dinp (a zero's
//                                        sign may differ: 0 + -0 = +0), dinp starting as NaN, so
//                                        reading the old value shows
//
// The header of gelu.cu says the arithmetic is per element and the same expression in all of them,
// so every comparison is bit for bit. N = 3001 (not a multiple of V, of the block, or of V * block:
// whole packs and a tail), N = 7 (fewer than one bf16 pack; one f32 pack and a tail), and N = 3001
// on a 2-block grid (the grid-stride loops go round; the kernels allow any grid). Outputs start as
// NaN, every element must be written, and 64-byte guards on both sides must stay untouched.
#include "kernel_src.cpp"
#include "emu_check.h"

static unsigned blocks_for(long long n) { return (unsigned)((n + 255) / 256); }

template <typename T>
static void run(long long N, unsigned cap) {
    constexpr long long V = 16 / sizeof(T);
    std::mt19937 rng((unsigned)N * 31 + sizeof(T) + cap);
    const Buf<T> inp = random_buf<T>(rng, N, -5.0f, 5.0f);
    const Buf<T> dout = random_buf<T>(rng, N, -2.0f, 2.0f);
    const Buf<T> old = random_buf<T>(rng, N, -1.0f, 1.0f);
    const unsigned scalar_grid = cap ? cap : blocks_for(N), vec_grid = cap ? cap : blocks_for((N + V - 1) / V);
    const bool f = std::is_same_v<T, float>;
    char tag[96];
    std::snprintf(tag, sizeof tag, "%s N=%lld grid=%u/%u", type_name<T>(), N, scalar_grid, vec_grid);

    // Forward.
    Buf<T> want(N), got(N);
    launch(scalar_grid, 1, 256, [&] {
        if constexpr (f) gelu_forward(want.data(), inp.data(), N);
        else gelu_forward_bf16(want.data(), inp.data(), N);
    });
    check_written("gelu_forward (reference)", want);
    launch(vec_grid, 1, 256, [&] {
        if constexpr (f) gelu_forward_vec(got.data(), inp.data(), N);
        else gelu_forward_vec_bf16(got.data(), inp.data(), N);
    });
    check_written("gelu_forward_vec", got);
    check_bits("gelu_forward_vec", got, want);
    finish(std::string("gelu_forward_vec ") + tag);

    // Backward, accumulating: the verified kernel onto `old`, and onto zeros.
    Buf<T> acc = old, zero_acc(N, from_f32<T>(0.0f));
    launch(scalar_grid, 1, 256, [&] {
        if constexpr (f) gelu_backward(acc.data(), inp.data(), dout.data(), N);
        else gelu_backward_bf16(acc.data(), inp.data(), dout.data(), N);
    });
    launch(scalar_grid, 1, 256, [&] {
        if constexpr (f) gelu_backward(zero_acc.data(), inp.data(), dout.data(), N);
        else gelu_backward_bf16(zero_acc.data(), inp.data(), dout.data(), N);
    });
    size_t same = 0;
    for (long long i = 0; i < N; ++i) same += bits(acc[i]) == bits(old[i]);
    CHECK(same <= (size_t)N / 2, "gelu_backward (reference) left %zu of %lld elements as they were", same, N);

    Buf<T> acc_vec = old;
    launch(vec_grid, 1, 256, [&] {
        if constexpr (f) gelu_backward_vec(acc_vec.data(), inp.data(), dout.data(), N);
        else gelu_backward_vec_bf16(acc_vec.data(), inp.data(), dout.data(), N);
    });
    check_bits("gelu_backward_vec", acc_vec, acc);
    finish(std::string("gelu_backward_vec ") + tag);

    Buf<T> over(N);
    launch(scalar_grid, 1, 256, [&] {
        if constexpr (f) gelu_backward_overwrite(over.data(), inp.data(), dout.data(), N);
        else gelu_backward_overwrite_bf16(over.data(), inp.data(), dout.data(), N);
    });
    check_written("gelu_backward_overwrite", over);
    check_bits("gelu_backward_overwrite", over, zero_acc, true);
    finish(std::string("gelu_backward_overwrite ") + tag);

    Buf<T> over_vec(N);
    launch(vec_grid, 1, 256, [&] {
        if constexpr (f) gelu_backward_overwrite_vec(over_vec.data(), inp.data(), dout.data(), N);
        else gelu_backward_overwrite_vec_bf16(over_vec.data(), inp.data(), dout.data(), N);
    });
    check_written("gelu_backward_overwrite_vec", over_vec);
    check_bits("gelu_backward_overwrite_vec", over_vec, zero_acc, true);
    finish(std::string("gelu_backward_overwrite_vec ") + tag);
}

int main() {
    for (long long N : {3001LL, 7LL}) {
        run<float>(N, 0);
        run<bf16>(N, 0);
    }
    run<float>(3001, 2);
    run<bf16>(3001, 2);
    return finish_all();
}
