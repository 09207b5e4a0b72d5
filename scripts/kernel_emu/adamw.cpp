// Runs kernels/adamw.cu on the CPU (cuda_rt.h) and checks the --sync step kernels (and the
// per-tensor adamw_update_vec[_bf16] of --kernels vector) against the
// verified path built from the same file: step_loss_accumulate + global_norm + step_decide +
// adamw_step[_vec][_bf16] must give the bits of global_norm + grad_scale + adamw_update[_vec][_bf16],
// leave every element outside the table's tensors alone, write nothing for a skipped step, and
// record the loss mean, the norm and the clip factor the host would compute.
#include <cstdio>
#include <random>

#include "kernel_src.cpp"

static int failures = 0;
#define CHECK(cond, ...)                             \
    do {                                             \
        if (!(cond)) {                               \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                \
            std::printf("\n");                       \
            ++failures;                              \
        }                                            \
    } while (0)

// Runs a kernel without barriers: blocks and threads one after another on this thread.
static void launch_seq(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& kernel) {
    gridDim = {gx, gy, 1};
    blockDim = {threads, 1, 1};
    for (unsigned by = 0; by < gy; ++by)
        for (unsigned bx = 0; bx < gx; ++bx)
            for (unsigned t = 0; t < threads; ++t) {
                threadIdx = {t, 0, 0};
                blockIdx = {bx, by, 0};
                kernel();
            }
}

struct Tensor {
    long long offset, len;
    bool decays;
};

static uint32_t bits(float x) { return __float_as_uint(x); }

// The host's clip factor (cpu::adamw::clip_factor).
static float clip_factor(double norm, double max_norm) {
    if (max_norm > 0.0 && std::isfinite(norm)) return (float)std::fmin(max_norm / (norm + 1e-6), 1.0);
    return 1.0f;
}

struct Buffers {
    std::vector<float> p, m, v;
    std::vector<__nv_bfloat16> copy;
};

// One case: `tensors` inside a buffer of `total` floats, clipped to `max_norm`, AdamW step `t`.
static void run_case(const char* name, const std::vector<Tensor>& tensors, long long total, double max_norm,
                     bool bf16, bool vec, bool poison) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> g(total), p0(total), m0(total), v0(total);
    for (long long i = 0; i < total; ++i) {
        g[i] = u(rng) * (i % 5 == 0 ? 30.0f : 0.5f);
        p0[i] = 0.2f * u(rng);
        m0[i] = 0.01f * u(rng);
        v0[i] = 0.001f * std::fabs(u(rng));
    }
    const float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, lr = 6e-4f, wd = 0.1f;
    const unsigned long long t = 3;
    const double bc1 = 1.0 - std::pow((double)beta1, (double)t), bc2 = 1.0 - std::pow((double)beta2, (double)t);
    const float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / std::sqrt(bc2));
    const float decay = 1.0f - lr * wd;
    const unsigned seed = (unsigned)(t ^ (t >> 32));
    const int nblocks = 8;  // the GPU uses 1024; any fixed grid gives both paths the same sum

    // The verified path: norm read back, grads scaled on the host's word, AdamW per tensor.
    Buffers want{p0, m0, v0, std::vector<__nv_bfloat16>(total, __nv_bfloat16{0xdead})};
    std::vector<float> gs = g;
    std::vector<double> partial(nblocks + 1);
    launch(nblocks, 1, 256, [&] { global_norm_partials(gs.data(), total, partial.data()); });
    launch(1, 1, 256, [&] { global_norm_final(partial.data(), nblocks); });
    const double norm = std::sqrt(partial[nblocks]);
    const float coef = clip_factor(norm, max_norm);
    if (coef < 1.0f) {
        launch_seq((unsigned)((total + 255) / 256), 1, 256, [&] { grad_scale(gs.data(), coef, total); });
    }
    // Per tensor, as src/gpu/adamw.rs launches it: the 128-bit kernel (`per_tensor_vec`) where
    // --kernels vector asks and the tensor's pointers are 16-byte aligned, 4 elements per thread.
    auto per_tensor = [&](Buffers& out, bool per_tensor_vec) {
        for (const Tensor& s : tensors) {
            const float d = s.decays ? decay : 1.0f;
            const bool v16 = per_tensor_vec && s.offset % 8 == 0;
            const unsigned blocks = (unsigned)(((v16 ? (s.len + 3) / 4 : s.len) + 255) / 256);
            float *pp = out.p.data() + s.offset, *mm = out.m.data() + s.offset, *vv = out.v.data() + s.offset;
            const float* gg = gs.data() + s.offset;
            __nv_bfloat16* cc = out.copy.data() + s.offset;
            launch_seq(blocks, 1, 256, [&] {
                if (bf16 && v16)
                    adamw_update_vec_bf16(pp, cc, gg, mm, vv, s.len, beta1, beta2, eps, d, step_size, inv_sqrt_bc2,
                                          seed, s.offset);
                else if (bf16)
                    adamw_update_bf16(pp, cc, gg, mm, vv, s.len, beta1, beta2, eps, d, step_size, inv_sqrt_bc2, seed,
                                      s.offset);
                else if (v16)
                    adamw_update_vec(pp, gg, mm, vv, s.len, beta1, beta2, eps, d, step_size, inv_sqrt_bc2);
                else
                    adamw_update(pp, gg, mm, vv, s.len, beta1, beta2, eps, d, step_size, inv_sqrt_bc2);
            });
        }
    };
    per_tensor(want, false);
    if (vec) {
        // The per-tensor 128-bit kernels (--sync micro --kernels vector) against the scalar ones.
        Buffers want_vec{p0, m0, v0, std::vector<__nv_bfloat16>(total, __nv_bfloat16{0xdead})};
        per_tensor(want_vec, true);
        long long diff = -1;
        for (long long i = 0; i < total && diff < 0; ++i) {
            if (bits(want_vec.p[i]) != bits(want.p[i]) || bits(want_vec.m[i]) != bits(want.m[i]) ||
                bits(want_vec.v[i]) != bits(want.v[i]) || want_vec.copy[i].bits != want.copy[i].bits)
                diff = i;
        }
        CHECK(diff < 0, "%s: adamw_update_vec differs from adamw_update at element %lld", name, diff);
    }
    if (poison) want = Buffers{p0, m0, v0, std::vector<__nv_bfloat16>(total, __nv_bfloat16{0xdead})};

    // The step path: losses summed and the step decided on the device, one AdamW launch.
    std::vector<std::vector<float>> losses = {std::vector<float>(1000), std::vector<float>(333)};
    double host_loss = 0.0;
    for (auto& l : losses) {
        double sum = 0.0;
        for (auto& x : l) sum += (x = 5.0f + u(rng));
        host_loss += sum / (double)l.size();
    }
    host_loss /= 2.0;
    std::vector<double> state(4, 0.0);
    for (auto& l : losses) launch(1, 1, 256, [&] { step_loss_accumulate(l.data(), (long long)l.size(), state.data()); });
    std::vector<double> partial2(nblocks + 1);
    launch(nblocks, 1, 256, [&] { global_norm_partials(g.data(), total, partial2.data()); });
    launch(1, 1, 256, [&] { global_norm_final(partial2.data(), nblocks); });
    launch_seq(1, 1, 1, [&] { step_decide(state.data(), partial2.data() + nblocks, max_norm, 2, poison ? 1 : 0); });
    CHECK(bits((float)state[2]) == bits(coef), "%s: clip factor %.9g vs host %.9g", name, state[2], (double)coef);
    CHECK(state[1] == norm, "%s: norm %.17g vs %.17g", name, state[1], norm);
    CHECK(poison ? std::isnan(state[0]) : std::fabs(state[0] - host_loss) <= 1e-14 * host_loss,
          "%s: loss %.17g vs host %.17g", name, state[0], host_loss);
    CHECK(state[3] == (poison ? 0.0 : 1.0), "%s: applied %g", name, state[3]);

    std::vector<long long> table;
    long long longest = 0;
    for (const Tensor& s : tensors) {
        table.insert(table.end(), {s.offset, s.len, (long long)s.decays});
        longest = std::max(longest, s.len);
    }
    Buffers got{p0, m0, v0, std::vector<__nv_bfloat16>(total, __nv_bfloat16{0xdead})};
    const long long per_thread = vec ? (bf16 ? 8 : 4) : 1;
    const unsigned blocks = (unsigned)std::min(1024LL, std::max(1LL, ((longest + per_thread - 1) / per_thread + 255) / 256));
    const unsigned rows = (unsigned)tensors.size();
    if (bf16) {
        auto k = vec ? adamw_step_vec_bf16 : adamw_step_bf16;
        launch_seq(blocks, rows, 256, [&] {
            k(got.p.data(), got.copy.data(), g.data(), got.m.data(), got.v.data(), table.data(), state.data(), beta1,
              beta2, eps, decay, step_size, inv_sqrt_bc2, seed);
        });
    } else {
        auto k = vec ? adamw_step_vec : adamw_step;
        launch_seq(blocks, rows, 256, [&] {
            k(got.p.data(), g.data(), got.m.data(), got.v.data(), table.data(), state.data(), beta1, beta2, eps, decay,
              step_size, inv_sqrt_bc2);
        });
    }
    long long bad = -1;
    for (long long i = 0; i < total && bad < 0; ++i) {
        if (bits(got.p[i]) != bits(want.p[i]) || bits(got.m[i]) != bits(want.m[i]) ||
            bits(got.v[i]) != bits(want.v[i]) || got.copy[i].bits != want.copy[i].bits)
            bad = i;
    }
    CHECK(bad < 0, "%s: element %lld differs: p %.9g vs %.9g, copy %04x vs %04x", name, bad, bad < 0 ? 0.0 : got.p[bad],
          bad < 0 ? 0.0 : want.p[bad], bad < 0 ? 0 : got.copy[bad].bits, bad < 0 ? 0 : want.copy[bad].bits);
    CHECK(coef < 1.0f || max_norm != 1.0, "%s: the case must clip (norm %g)", name, norm);
    std::printf("%s %s\n", failures ? "after failures:" : "ok", name);
}

int main() {
    // Offsets that are multiples of 8 (the _vec kernels' condition), lengths that are not, and
    // gaps between tensors that no tensor owns (they must stay as they were).
    const std::vector<Tensor> tensors = {
        {0, 1000, true}, {1000, 37, false}, {1040, 4096, true}, {5136, 8, false}, {5144, 777, true}, {5928, 3, false}};
    const long long total = 5936;
    for (bool bf16 : {false, true})
        for (bool vec : {false, true})
            for (double max_norm : {1.0, 1e9, 0.0})
                for (bool poison : {false, true}) {
                    char name[128];
                    std::snprintf(name, sizeof name, "adamw_step bf16=%d vec=%d max_norm=%g poison=%d", bf16, vec,
                                  max_norm, poison);
                    run_case(name, tensors, total, max_norm, bf16, vec, poison);
                }
    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    return 0;
}
