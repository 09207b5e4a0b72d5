// Runs kernels/layernorm.cu on the CPU (cuda_rt.h: real threads, warp shuffles through per-warp
// barriers) and holds its never-run _vec kernels to the verified scalar ones of the same file,
// launched as src/gpu/layernorm.rs launches them: 256 threads (8 warps, one row each), grid
// ceil(N / 8) for the forwards; the scalar backward on ceil(N / 8) + G * ceil(C / 256) blocks, the
// _vec backward on G blocks (G = chunks, R = rows per chunk: max(32, ceil(N / 512))), each followed
// by layernorm_backward_reduce on ceil(C / 256) blocks. f32 and bf16.
//
// Bit for bit, where the header says the arithmetic is identical:
//   residual_layernorm_forward_vec's residual (one add, rounded once)
//   layernorm_backward_vec's scratch partials and, after the reduce, dweight and dbias (per channel
//   the rows in order within a chunk, the chunks in order: the scalar kernel's order)
// Within a tolerance, where the header says the row sums are added in another order (lane l owns
// packs l, l + 32, ... instead of elements l, l + 32, ...):
//   mean, rstd and out of layernorm_forward_vec and residual_layernorm_forward_vec, and
//   layernorm_backward_vec's dinp. The tolerances are first-order rounding-error bounds, doubled
//   (see the functions below): a sum of n terms in any order is within (n-1)u sum|terms| of the
//   exact one (u = 2^-24), so two orders differ by at most twice that; what follows the sum
//   differs through it (the observed mean and rstd differences carry into out) plus one rounding
//   per operation on each side; a bf16 store adds one bf16 ulp (2^-7 relative).
//
// Shapes: C = 264 (66 f32 packs, 33 bf16 packs: lanes go round more than once; 2 channel blocks in
// the scalar backward) with N = 75 (not a multiple of 8 rows; 3 chunks of 32, 32, 11 rows), and
// C = 8, N = 3 (one bf16 pack, fewer packs than lanes). Outputs start as NaN (every element must be
// written) with 64-byte guards (nothing written past either end); scratch starts as NaN in both
// paths; dinp, dweight and dbias start non-zero (they accumulate).
#include "kernel_src.cpp"
#include "emu_check.h"

static double gamma_n(double n) { return n * kU / (1.0 - n * kU); }

struct Shape {
    int N, C;
};

template <typename T>
struct Forward {
    Buf<T> out, residual;
    Buf<float> mean, rstd;
};

// Tolerances for a forward row (x the normalised row as the kernels read it) and the comparison of
// the _vec kernel's mean, rstd and out with the scalar one's.
template <typename T>
static void compare_forward(const std::string& name, const Forward<T>& got, const Forward<T>& want, const Buf<T>& x,
                            const Buf<T>& w, Shape s) {
    TolStats mean_s, rstd_s, out_s;
    for (int r = 0; r < s.N; ++r) {
        double abs_sum = 0.0, mu = want.mean[r];
        for (int c = 0; c < s.C; ++c) abs_sum += std::fabs(f32(x[(size_t)r * s.C + c]));
        // mean = fl(sum / C): the two sums differ by at most 2 gamma_n(C-1) sum|x|; the division
        // rounds once on each side.
        const double tol_mu = 2.0 * (2.0 * gamma_n(s.C - 1) * abs_sum / s.C + 2.0 * kU * std::fabs(mu));
        mean_s.add(r, got.mean[r], want.mean[r], tol_mu);
        // var = fl(sum fl(x - mu)^2 / C) with mu off by dmu (observed): each d = fl(x - mu) moves by at
        // most dmu + u|d| on each side, d^2 by 2|d| that + its own rounding, then the sum's order.
        const double dmu = std::fabs((double)got.mean[r] - mu);
        double sum_abs_d = 0.0, sum_d2 = 0.0;
        for (int c = 0; c < s.C; ++c) {
            const double d = f32(x[(size_t)r * s.C + c]) - mu;
            sum_abs_d += std::fabs(d);
            sum_d2 += d * d;
        }
        const double var = sum_d2 / s.C;
        const double dvar = (2.0 * sum_abs_d * dmu + s.C * dmu * dmu + (2.0 * gamma_n(s.C + 1) + 6.0 * kU) * sum_d2) / s.C +
                            2.0 * kU * var;
        // rstd = fl(1 / fl(sqrt(fl(var + eps)))): relative change half that of var + eps, plus three
        // roundings on each side.
        const double rs = want.rstd[r];
        const double tol_rs = 2.0 * rs * (0.5 * (dvar + 2.0 * kU * (var + 1e-5)) / (var + 1e-5) + 6.0 * kU);
        rstd_s.add(r, got.rstd[r], want.rstd[r], tol_rs);
        const double drs = std::fabs((double)got.rstd[r] - rs);
        for (int c = 0; c < s.C; ++c) {
            const size_t i = (size_t)r * s.C + c;
            const double xc = f32(x[i]), wc = f32(w[c]);
            const double prod = std::fabs((xc - mu) * rs * wc), o = std::fabs(f32(want.out[i]));
            // out = fl(fl(fl(x - mu) rs) w) + b: through mu and rstd (observed differences), and four
            // roundings on each side.
            double tol = 2.0 * ((dmu * rs + std::fabs(xc - mu) * drs) * std::fabs(wc) + 2.0 * (3.0 * kU * prod + kU * o)) +
                         1e-30;
            if constexpr (std::is_same_v<T, bf16>) tol += kBf16Ulp * std::max(o, (double)std::fabs(f32(got.out[i])));
            out_s.add(i, f32(got.out[i]), f32(want.out[i]), tol);
        }
    }
    report_tol(name + " mean", mean_s);
    report_tol(name + " rstd", rstd_s);
    report_tol(name + " out", out_s);
    CHECK(got.mean.guards_intact() && got.rstd.guards_intact() && got.out.guards_intact(),
          "%s: written outside mean, rstd or out", name.c_str());
}

template <typename T>
static void run(Shape s) {
    const bool f = std::is_same_v<T, float>;
    const int N = s.N, C = s.C;
    const size_t NC = (size_t)N * C;
    std::mt19937 rng(N * 1000 + C + sizeof(T));
    // Rows with a non-zero mean, weights away from zero, small biases.
    Buf<T> a = random_buf<T>(rng, NC, -1.0f, 1.5f), bb = random_buf<T>(rng, NC, -1.0f, 1.0f);
    Buf<T> w = random_buf<T>(rng, C, 0.5f, 1.5f), bias = random_buf<T>(rng, C, -0.5f, 0.5f);
    for (int c = 0; c < C; c += 3) w[c] = from_f32<T>(-f32(w[c]));
    const unsigned rows_grid = (unsigned)((N + 7) / 8);
    char tag[64];
    std::snprintf(tag, sizeof tag, "%s N=%d C=%d", type_name<T>(), N, C);
    const std::string t = tag;

    // layernorm_forward on x = a.
    Forward<T> want{Buf<T>(NC), Buf<T>(0), Buf<float>(N), Buf<float>(N)};
    Forward<T> got{Buf<T>(NC), Buf<T>(0), Buf<float>(N), Buf<float>(N)};
    launch(rows_grid, 1, 256, [&] {
        if constexpr (f) layernorm_forward(want.out.data(), want.mean.data(), want.rstd.data(), a.data(), w.data(), bias.data(), N, C);
        else layernorm_forward_bf16(want.out.data(), want.mean.data(), want.rstd.data(), a.data(), w.data(), bias.data(), N, C);
    });
    check_written("layernorm_forward (reference) out", want.out);
    launch(rows_grid, 1, 256, [&] {
        if constexpr (f) layernorm_forward_vec(got.out.data(), got.mean.data(), got.rstd.data(), a.data(), w.data(), bias.data(), N, C);
        else layernorm_forward_vec_bf16(got.out.data(), got.mean.data(), got.rstd.data(), a.data(), w.data(), bias.data(), N, C);
    });
    check_written("layernorm_forward_vec out", got.out);
    check_written("layernorm_forward_vec mean", got.mean);
    check_written("layernorm_forward_vec rstd", got.rstd);
    compare_forward("layernorm_forward_vec", got, want, a, w, s);
    finish("layernorm_forward_vec " + t);

    // residual_layernorm_forward on a + b.
    Forward<T> rwant{Buf<T>(NC), Buf<T>(NC), Buf<float>(N), Buf<float>(N)};
    Forward<T> rgot{Buf<T>(NC), Buf<T>(NC), Buf<float>(N), Buf<float>(N)};
    launch(rows_grid, 1, 256, [&] {
        if constexpr (f) residual_layernorm_forward(rwant.residual.data(), rwant.out.data(), rwant.mean.data(), rwant.rstd.data(), a.data(), bb.data(), w.data(), bias.data(), N, C);
        else residual_layernorm_forward_bf16(rwant.residual.data(), rwant.out.data(), rwant.mean.data(), rwant.rstd.data(), a.data(), bb.data(), w.data(), bias.data(), N, C);
    });
    check_written("residual_layernorm_forward (reference) out", rwant.out);
    launch(rows_grid, 1, 256, [&] {
        if constexpr (f) residual_layernorm_forward_vec(rgot.residual.data(), rgot.out.data(), rgot.mean.data(), rgot.rstd.data(), a.data(), bb.data(), w.data(), bias.data(), N, C);
        else residual_layernorm_forward_vec_bf16(rgot.residual.data(), rgot.out.data(), rgot.mean.data(), rgot.rstd.data(), a.data(), bb.data(), w.data(), bias.data(), N, C);
    });
    check_written("residual_layernorm_forward_vec residual", rgot.residual);
    check_written("residual_layernorm_forward_vec out", rgot.out);
    check_written("residual_layernorm_forward_vec mean", rgot.mean);
    check_written("residual_layernorm_forward_vec rstd", rgot.rstd);
    check_bits("residual_layernorm_forward_vec residual", rgot.residual, rwant.residual);
    compare_forward("residual_layernorm_forward_vec", rgot, rwant, rwant.residual, w, s);
    finish("residual_layernorm_forward_vec " + t);

    // Backward of the forward above (x = a, its mean and rstd), accumulating.
    const Buf<T> dout = random_buf<T>(rng, NC, -1.0f, 1.0f);
    const Buf<T> dinp0 = random_buf<T>(rng, NC, -0.5f, 0.5f);
    const Buf<float> dw0 = random_buf<float>(rng, C, -1.0f, 1.0f), db0 = random_buf<float>(rng, C, -1.0f, 1.0f);
    const int rpc = std::max((N + 511) / 512, 32), chunks = (N + rpc - 1) / rpc;
    const size_t scratch_len = 2 * (size_t)chunks * C;
    Buf<T> dinp_s = dinp0, dinp_v = dinp0;
    Buf<float> dw_s = dw0, db_s = db0, dw_v = dw0, db_v = db0, scratch_s(scratch_len), scratch_v(scratch_len);
    const unsigned main_grid = rows_grid + (unsigned)chunks * (unsigned)((C + 255) / 256);
    launch(main_grid, 1, 256, [&] {
        if constexpr (f) layernorm_backward(dinp_s.data(), scratch_s.data(), dout.data(), a.data(), w.data(), want.mean.data(), want.rstd.data(), N, C, rpc, chunks);
        else layernorm_backward_bf16(dinp_s.data(), scratch_s.data(), dout.data(), a.data(), w.data(), want.mean.data(), want.rstd.data(), N, C, rpc, chunks);
    });
    launch((unsigned)((C + 255) / 256), 1, 256,
           [&] { layernorm_backward_reduce(dw_s.data(), db_s.data(), scratch_s.data(), C, chunks); });
    check_written("layernorm_backward (reference) scratch", scratch_s);
    launch((unsigned)chunks, 1, 256, [&] {
        if constexpr (f) layernorm_backward_vec(dinp_v.data(), scratch_v.data(), dout.data(), a.data(), w.data(), want.mean.data(), want.rstd.data(), N, C, rpc, chunks);
        else layernorm_backward_vec_bf16(dinp_v.data(), scratch_v.data(), dout.data(), a.data(), w.data(), want.mean.data(), want.rstd.data(), N, C, rpc, chunks);
    });
    launch((unsigned)((C + 255) / 256), 1, 256,
           [&] { layernorm_backward_reduce(dw_v.data(), db_v.data(), scratch_v.data(), C, chunks); });
    check_written("layernorm_backward_vec scratch", scratch_v);
    check_bits("layernorm_backward_vec scratch", scratch_v, scratch_s);
    check_bits("layernorm_backward_vec dweight", dw_v, dw_s);
    check_bits("layernorm_backward_vec dbias", db_v, db_s);

    // dinp: the two row sums (of dnorm and of dnorm * norm, C terms each, then times fl(1/C)) in
    // another order; everything else per element as the scalar kernel.
    TolStats dinp_stats;
    const double inv_c = 1.0f / (float)C;
    for (int r = 0; r < N; ++r) {
        const double mu = want.mean[r], rs = want.rstd[r];
        double s1 = 0, s2 = 0, a1 = 0, a2 = 0;
        for (int c = 0; c < C; ++c) {
            const size_t i = (size_t)r * C + c;
            const double norm = (f32(a[i]) - mu) * rs, dnorm = f32(dout[i]) * f32(w[c]);
            s1 += dnorm;
            s2 += dnorm * norm;
            a1 += std::fabs(dnorm);
            a2 += std::fabs(dnorm * norm);
        }
        const double dm = s1 * inv_c, dnm = s2 * inv_c;
        const double ddm = 2.0 * gamma_n(C - 1) * a1 * inv_c + 2.0 * kU * std::fabs(dm);
        const double ddnm = 2.0 * gamma_n(C + 1) * a2 * inv_c + 2.0 * kU * std::fabs(dnm);
        for (int c = 0; c < C; ++c) {
            const size_t i = (size_t)r * C + c;
            const double norm = (f32(a[i]) - mu) * rs, dnorm = f32(dout[i]) * f32(w[c]);
            const double inner = dnorm - dm - norm * dnm, o = std::fabs(f32(dinp_s[i]));
            // Through the two means, then the roundings of -, *, -, * rs and the add on each side.
            double tol = 2.0 * ((ddm + std::fabs(norm) * ddnm) * rs +
                                2.0 * kU * (rs * (std::fabs(dnorm - dm) + std::fabs(norm * dnm) + std::fabs(inner)) +
                                            std::fabs(inner * rs) + o)) +
                         1e-30;
            if constexpr (std::is_same_v<T, bf16>) tol += kBf16Ulp * std::max(o, (double)std::fabs(f32(dinp_v[i])));
            dinp_stats.add(i, f32(dinp_v[i]), f32(dinp_s[i]), tol);
        }
    }
    report_tol("layernorm_backward_vec dinp", dinp_stats);
    CHECK(dinp_v.guards_intact(), "layernorm_backward_vec: written outside dinp");
    size_t same = 0;
    for (size_t i = 0; i < NC; ++i) same += bits(dinp_v[i]) == bits(dinp0[i]);
    CHECK(same <= NC / 4, "layernorm_backward_vec left %zu of %zu dinp elements as they were", same, NC);
    finish("layernorm_backward_vec " + t);
}

// The emulation's own warp shuffles against the PTX lane rules, on two warps: xor, down, up and
// indexed, full width and in segments of 8 and 16 (a source outside the lane's segment gives the
// lane its own value).
static void shuffle_self_check() {
    std::vector<int> got(64 * 6, -1);
    launch(1, 1, 64, [&] {
        const int t = (int)threadIdx.x;
        const float v = 1000.0f + t;
        int* g = got.data() + t * 6;
        g[0] = (int)__shfl_xor_sync(0xffffffffu, v, 5);
        g[1] = (int)__shfl_xor_sync(0xffffffffu, v, 12, 8);
        g[2] = __shfl_down_sync(0xffffffffu, t, 3);
        g[3] = __shfl_up_sync(0xffffffffu, t, 3, 8);
        g[4] = __shfl_sync(0xffffffffu, t, 21, 16);
        g[5] = (int)__shfl_down_sync(0xffffffffu, (long long)t << 33 >> 33, 16, 16);
    });
    for (int t = 0; t < 64; ++t) {
        const int lane = t % 32, w = t - lane;
        const int x12 = lane ^ 12;
        const int want[6] = {1000 + w + (lane ^ 5),
                             1000 + w + (x12 <= (lane | 7) ? x12 : lane),
                             w + (lane + 3 <= 31 ? lane + 3 : lane),
                             w + (lane % 8 >= 3 ? lane - 3 : lane),
                             w + (lane & ~15) + (21 & 15),
                             w + lane};
        for (int k = 0; k < 6; ++k)
            CHECK(got[t * 6 + k] == want[k], "shuffle %d at thread %d: %d, want %d", k, t, got[t * 6 + k], want[k]);
    }
    finish("warp shuffles (emulation self-check)");
}

int main() {
    shuffle_self_check();
    for (Shape s : {Shape{75, 264}, Shape{3, 8}}) {
        run<float>(s);
        run<bf16>(s);
    }
    return finish_all();
}
