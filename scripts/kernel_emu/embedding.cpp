// Runs the embedding backward kernels of kernels/embedding.cu on the CPU (cuda_rt.h), launched as
// src/gpu/embedding.rs launches them, on a problem the Rust test (tests/ops/embedding.rs) wrote:
//
//   IN, little-endian: 11 int64 B, T, C, Vp, balanced (0/1), bf16 (0/1), n_ints, items (distinct
//   tokens, or chunks), combine_at, combines, slots; then n_ints int32 (BackwardPlan::ints); then
//   f32 dout (B*T*C; with bf16 each value is bf16-exact and is stored to the kernel as bf16), dwte
//   (Vp*C) and dwpe (T*C) as they stand before the backward (it accumulates).
//   OUT: f32 dwte (Vp*C) then dwpe (T*C) after it.
#include <cstdio>

#include "kernel_src.cpp"

static void launch_seq(unsigned gx, unsigned threads, const std::function<void()>& kernel) {
    gridDim = {gx, 1, 1};
    blockDim = {threads, 1, 1};
    for (unsigned bx = 0; bx < gx; ++bx)
        for (unsigned t = 0; t < threads; ++t) {
            threadIdx = {t, 0, 0};
            blockIdx = {bx, 0, 0};
            kernel();
        }
}

template <typename X>
static std::vector<X> read(FILE* f, size_t n) {
    std::vector<X> v(n);
    if (n && fread(v.data(), sizeof(X), n, f) != n) {
        std::fprintf(stderr, "embedding harness: input too short\n");
        std::exit(2);
    }
    return v;
}

// The 128-bit forward (--kernels vector) against the scalar one, launched as embedding_forward
// launches each (one thread per element, or per pack of 4 f32 / 8 bf16; C a multiple of the
// pack), on random tokens, wte and wpe, the output pre-filled with NaN: bit for bit (one f32 add
// and, in bf16, one rounding either way). Returns the number of mismatches.
template <typename X>
static int check_forward_vec(const char* name, X (*cast)(float)) {
    const int B = 3, T = 7, C = 24, V = 50;
    std::vector<int> inp(B * T);
    std::vector<X> wte(V * C), wpe(T * C), scalar(B * T * C, cast(NAN)), packed(B * T * C, cast(NAN));
    uint32_t z = 12345;
    auto next = [&] { return z = z * 1664525u + 1013904223u; };
    for (auto& x : inp) x = (int)(next() % V);
    for (auto& x : wte) x = cast((float)(int)(next() % 2001 - 1000) / 997.0f);
    for (auto& x : wpe) x = cast((float)(int)(next() % 2001 - 1000) / 991.0f);
    const int n = B * T * C, pack = 16 / (int)sizeof(X);
    launch_seq((n + 255) / 256, 256, [&] {
        if constexpr (sizeof(X) == 4) embedding_forward(scalar.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
        else embedding_forward_bf16(scalar.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
    });
    launch_seq((n / pack + 255) / 256, 256, [&] {
        if constexpr (sizeof(X) == 4) embedding_forward_vec(packed.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
        else embedding_forward_vec_bf16(packed.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
    });
    int bad = 0;
    for (int i = 0; i < n; ++i) bad += std::memcmp(&scalar[i], &packed[i], sizeof(X)) != 0;
    std::printf("%s embedding forward_vec %s\n", bad ? "FAIL" : "ok", name);
    return bad;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: run.sh embedding IN OUT\n");
        return 2;
    }
    if (check_forward_vec<float>("f32", [](float x) { return x; }) +
        check_forward_vec<__nv_bfloat16>("bf16", [](float x) { return __float2bfloat16_rn(x); })) {
        return 1;
    }
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    auto h = read<long long>(in, 11);
    const int B = (int)h[0], T = (int)h[1], C = (int)h[2];
    const long long Vp = h[3];
    const bool balanced = h[4], bf16 = h[5];
    const long long n_ints = h[6], items = h[7], combine_at = h[8], combines = h[9], slots = h[10];
    auto ints = read<int>(in, n_ints);
    auto dout = read<float>(in, (size_t)B * T * C);
    auto dwte = read<float>(in, Vp * C);
    auto dwpe = read<float>(in, (size_t)T * C);
    std::fclose(in);
    std::vector<__nv_bfloat16> dout16(dout.size());
    for (size_t i = 0; i < dout.size(); ++i) dout16[i] = __float2bfloat16_rn(dout[i]);

    // grid_with_dwpe: one block per item, then ceil(T*C / 256) blocks for dwpe; 256 threads.
    const unsigned threads = 256, grid = (unsigned)(items + ((long long)T * C + threads - 1) / threads);
    if (!balanced) {
        launch_seq(grid, threads, [&] {
            if (bf16)
                embedding_backward_bf16(dwte.data(), dwpe.data(), dout16.data(), ints.data(), (int)items, B, T, C);
            else
                embedding_backward(dwte.data(), dwpe.data(), dout.data(), ints.data(), (int)items, B, T, C);
        });
    } else {
        // Partial sums start as garbage: every slot must be written before it is read.
        std::vector<float> partials(std::max(slots, 1LL) * C, std::nanf(""));
        launch_seq(grid, threads, [&] {
            if (bf16)
                embedding_backward_chunks_bf16(dwte.data(), dwpe.data(), partials.data(), dout16.data(), ints.data(),
                                               (int)items, B, T, C);
            else
                embedding_backward_chunks(dwte.data(), dwpe.data(), partials.data(), dout.data(), ints.data(),
                                          (int)items, B, T, C);
        });
        if (combines > 0) {
            launch_seq((unsigned)combines, threads,
                       [&] { embedding_backward_combine(dwte.data(), partials.data(), ints.data() + combine_at, C); });
        }
    }
    FILE* out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    std::fwrite(dwte.data(), sizeof(float), dwte.size(), out);
    std::fwrite(dwpe.data(), sizeof(float), dwpe.size(), out);
    std::fclose(out);
    std::printf("ok embedding backward balanced=%d bf16=%d items=%lld combines=%lld\n", balanced, bf16, items, combines);
    return 0;
}
