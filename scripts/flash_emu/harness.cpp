// Lockstep CPU emulation of kernels/flash_attention.cu (see run.sh): each block runs as 128
// std::threads, __syncthreads is a std::barrier, and the warp collectives (ldmatrix, mma.sync,
// __shfl_xor_sync) exchange through per-warp barriers with the PTX lane maps (the same maps as
// src/gpu/mma_layout.rs). cp.async copies land at cp.async.wait_group (default: checks the
// commit/wait counts) or at issue (EMU_EAGER=1: checks the barriers that guard a buffer before it
// is refilled). The result is compared with an f64 reference of causal attention.
#include "kernel_emu.cpp"
#include <thread>
#include <cstdio>
#include <random>
thread_local dim3e threadIdx, blockIdx;
dim3e blockDim;
WarpX* g_warps;
bool flash_detail::g_eager = getenv("EMU_EAGER") != nullptr;
thread_local std::vector<std::vector<flash_detail::CpReq>> flash_detail::t_groups;
thread_local std::vector<flash_detail::CpReq> flash_detail::t_pending;
static std::barrier<>* g_block;
void __syncthreads() { g_block->arrive_and_wait(); }
float __shfl_xor_sync(unsigned, float v, int m) {
    const int lane = threadIdx.x & 31; WarpX& w = g_warps[threadIdx.x >> 5];
    w.f[lane] = v; w.bar->arrive_and_wait(); float r = w.f[lane ^ m]; w.bar->arrive_and_wait(); return r;
}
void launch(unsigned gx, unsigned gy, unsigned bx, std::function<void()> k) {
    blockDim = {bx, 1, 1};
    int nw = bx / 32;
    std::vector<WarpX> ws(nw);
    std::vector<std::barrier<>*> bars;
    for (auto& w : ws) w.bar = new std::barrier<>(32);
    g_warps = ws.data();
    std::barrier<> blk(bx); g_block = &blk;
    for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        std::vector<std::thread> th;
        for (unsigned t = 0; t < bx; ++t) th.emplace_back([&, t, x, y] {
            threadIdx = {t, 0, 0}; blockIdx = {x, y, 0};
            flash_detail::t_groups.clear(); flash_detail::t_pending.clear();
            k();
            if (!flash_detail::t_groups.empty() || !flash_detail::t_pending.empty()) { printf("uncompleted cp.async at exit\n"); }
        });
        for (auto& t : th) t.join();
    }
    for (auto& w : ws) delete w.bar;
}
typedef __nv_bfloat16 bf;
int main(int argc, char** argv) {
    int B = 2, NH = 2, T = argc > 1 ? atoi(argv[1]) : 130, C = NH * 64;
    std::mt19937 rng(T);
    std::normal_distribution<float> nd(0, 1);
    std::vector<bf> qkv((size_t)B * T * 3 * C), dout((size_t)B * T * C), out((size_t)B * T * C, {0xffff}), dqkv(qkv.size(), {0xffff});
    for (auto& x : qkv) x.v = f2bf(nd(rng) * 1.5f);
    for (auto& x : dout) x.v = f2bf(nd(rng));
    std::vector<float> lse((size_t)B * NH * T, NAN), D((size_t)B * NH * T, NAN);
    int nq = (T + 63) / 64;
    launch(B * NH, nq, 128, [&] { flash_attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH); });
    launch((B * T * NH + 7) / 8, 1, 256, [&] { flash_attention_backward_preprocess(D.data(), dout.data(), out.data(), B, T, NH); });
    launch(B * NH, nq, 128, [&] { flash_attention_backward_dkdv(dqkv.data(), dout.data(), qkv.data(), lse.data(), D.data(), B, T, NH); });
    launch(B * NH, nq, 128, [&] { flash_attention_backward_dq(dqkv.data(), dout.data(), qkv.data(), lse.data(), D.data(), B, T, NH); });
    // f64 reference
    double eo = 0, mo = 0, el = 0, eq[3] = {0, 0, 0}, mq[3] = {0, 0, 0}; long bad = 0;
    for (int b = 0; b < B; ++b) for (int h = 0; h < NH; ++h) {
        auto Q = [&](int t, int d) { return (double)bf2f(qkv[((size_t)b * T + t) * 3 * C + h * 64 + d].v); };
        auto K = [&](int t, int d) { return (double)bf2f(qkv[((size_t)b * T + t) * 3 * C + C + h * 64 + d].v); };
        auto V = [&](int t, int d) { return (double)bf2f(qkv[((size_t)b * T + t) * 3 * C + 2 * C + h * 64 + d].v); };
        auto dO = [&](int t, int d) { return (double)bf2f(dout[((size_t)b * T + t) * C + h * 64 + d].v); };
        std::vector<double> P((size_t)T * T, 0), O((size_t)T * 64, 0), dQ((size_t)T * 64, 0), dK((size_t)T * 64, 0), dV((size_t)T * 64, 0);
        for (int i = 0; i < T; ++i) {
            double m = -1e300; std::vector<double> s(i + 1);
            for (int j = 0; j <= i; ++j) { double x = 0; for (int d = 0; d < 64; ++d) x += Q(i, d) * K(j, d); s[j] = x * 0.125; m = std::max(m, s[j]); }
            double l = 0; for (int j = 0; j <= i; ++j) l += exp(s[j] - m);
            for (int j = 0; j <= i; ++j) P[(size_t)i * T + j] = exp(s[j] - m) / l;
            double lse_ref = (m + log(l)) / log(2.0);
            el = std::max(el, fabs(lse_ref - lse[((size_t)b * NH + h) * T + i]));
            for (int d = 0; d < 64; ++d) { double o = 0; for (int j = 0; j <= i; ++j) o += P[(size_t)i * T + j] * V(j, d); O[i * 64 + d] = o;
                double got = bf2f(out[((size_t)b * T + i) * C + h * 64 + d].v); eo = std::max(eo, fabs(got - o)); mo = std::max(mo, fabs(o)); }
        }
        for (int i = 0; i < T; ++i) {
            double Di = 0; for (int d = 0; d < 64; ++d) Di += dO(i, d) * O[i * 64 + d];
            for (int j = 0; j <= i; ++j) {
                double dp = 0; for (int d = 0; d < 64; ++d) dp += dO(i, d) * V(j, d);
                double p = P[(size_t)i * T + j], ds = p * (dp - Di) * 0.125;
                for (int d = 0; d < 64; ++d) { dV[j * 64 + d] += p * dO(i, d); dQ[i * 64 + d] += ds * K(j, d); dK[j * 64 + d] += ds * Q(i, d); }
            }
        }
        for (int t = 0; t < T; ++t) for (int d = 0; d < 64; ++d) {
            double ref[3] = {dQ[t * 64 + d], dK[t * 64 + d], dV[t * 64 + d]};
            for (int s3 = 0; s3 < 3; ++s3) {
                uint16_t g = dqkv[((size_t)b * T + t) * 3 * C + s3 * C + h * 64 + d].v;
                if (g == 0xffff) ++bad;
                double got = bf2f(g);
                eq[s3] = std::max(eq[s3], std::isnan(got) ? 1e9 : fabs(got - ref[s3])); mq[s3] = std::max(mq[s3], fabs(ref[s3]));
            }
        }
    }
    long unset = 0; for (auto& x : out) unset += x.v == 0xffff;
    for (auto& x : lse) unset += std::isnan(x);
    const bool ok = el <= 1e-4 && eo <= 0.025 * mo + 0.02 && bad == 0 && unset == 0 &&
                    eq[0] <= 0.025 * mq[0] + 0.02 && eq[1] <= 0.025 * mq[1] + 0.02 && eq[2] <= 0.025 * mq[2] + 0.02;
    printf("%s T=%d out err %.3g (max %.3g) lse err %.3g | dq %.3g/%.3g dk %.3g/%.3g dv %.3g/%.3g | unwritten dqkv %ld out/lse %ld\n", ok ? "ok  " : "FAIL", T, eo, mo, el, eq[0], mq[0], eq[1], mq[1], eq[2], mq[2], bad, unset);
    return ok ? 0 : 1;
}
