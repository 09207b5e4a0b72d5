// Runs kernels/classifier.cu on the CPU (cuda_rt.h: real threads, __syncthreads, warp shuffles
// through per-warp barriers) and holds its never-run classifier_forward_vec[_bf16] to the verified
// classifier_forward[_bf16] of the same file, launched as src/gpu/classifier.rs launches both: one
// block per row, ceil(V / 32) * 32 threads clamped to [32, 1024], with and without write_dlogits.
//
// The header says each thread's share of the row is another set of columns in another order, so
// the row sum (and with it the loss and the probabilities) agrees to rounding; the max is
// order-free and the target logit is read alike, so only the sum differs. Tolerances (first-order
// bounds, doubled): each computed sum is within e = 6 (L + 10) u of the exact one (u = 2^-24; L the
// longest chain of elements one thread adds, 10 the warp and block merge levels; every step is an
// expf of at most 2 ulp, a multiply and an add), so two differ by 2e relative;
//   loss = fl(logf(sum)) + (max - target): 2e plus the roundings of logf and the add on each side;
//   dlogit = fl(scale fl(fl(expf(x - max)) fl(1 / sum) - onehot)): p (2e + 4u) through the sum plus
//   the roundings of the subtraction and the scale on each side; a bf16 store adds one bf16 ulp.
// Bit for bit: the NaN loss of a row whose target is out of range (-1, or in the padding V..Vp),
// dlogits 0 in the padding, and without write_dlogits the logits left exactly as they were.
//
// Shapes: N = 5, V = 4999, Vp = 5056 (1024 threads; 1250 f32 / 625 bf16 live packs, the last one
// partial: threads go round the row more than once in f32) and N = 5, V = 37, Vp = 40 (64 threads,
// fewer packs than threads). The padding holds NaN (never to be read into the softmax), the
// largest logit of some rows sits in the last live column, targets include the last live column,
// -1 and the padding. Losses start as NaN; 64-byte guards on both sides must stay untouched.
#include "kernel_src.cpp"
#include "emu_check.h"

template <typename T>
static void run(int N, int V, int Vp, bool write) {
    constexpr int W = 16 / sizeof(T);
    const bool f = std::is_same_v<T, float>;
    std::mt19937 rng(N * 7 + V + Vp + sizeof(T));
    Buf<T> logits = random_buf<T>(rng, (size_t)N * Vp, -8.0f, 8.0f);
    for (int r = 0; r < N; ++r) {
        for (int c = V; c < Vp; ++c) logits[(size_t)r * Vp + c] = poison<T>();
        // The row's largest logit in its last live column (rows 0, 2, 4) or its first (1, 3).
        logits[(size_t)r * Vp + (r % 2 ? 0 : V - 1)] = from_f32<T>(9.0f);
    }
    Buf<int> targets(N);
    const int picks[5] = {(int)(rng() % V), V - 1, -1, V < Vp ? V : V + 1, 0};
    for (int r = 0; r < N; ++r) targets[r] = picks[r % 5];
    const float scale = 1.0f / 96.0f;
    const unsigned threads = (unsigned)std::clamp((V + 31) / 32, 1, 32) * 32;
    char tag[80];
    std::snprintf(tag, sizeof tag, "%s N=%d V=%d Vp=%d write_dlogits=%d", type_name<T>(), N, V, Vp, write);

    Buf<T> want = logits, got = logits;
    Buf<float> loss_s(N), loss_v(N);
    launch((unsigned)N, 1, threads, [&] {
        if constexpr (f) classifier_forward(loss_s.data(), want.data(), targets.data(), N, V, Vp, scale, write);
        else classifier_forward_bf16(loss_s.data(), want.data(), targets.data(), N, V, Vp, scale, write);
    });
    check_written("classifier_forward (reference) losses", loss_s);
    launch((unsigned)N, 1, threads, [&] {
        if constexpr (f) classifier_forward_vec(loss_v.data(), got.data(), targets.data(), N, V, Vp, scale, write);
        else classifier_forward_vec_bf16(loss_v.data(), got.data(), targets.data(), N, V, Vp, scale, write);
    });
    check_written("classifier_forward_vec losses", loss_v);
    CHECK(loss_v.guards_intact(), "classifier_forward_vec: written outside losses");

    // The longest chain of elements one thread sums: scalar ceil(V / threads), _vec whole packs.
    const int live = (V + W - 1) / W;
    const int L = std::max((V + (int)threads - 1) / (int)threads, ((live + (int)threads - 1) / (int)threads) * W);
    const double e = 6.0 * (L + 10) * kU;
    TolStats ls, gs;
    for (int r = 0; r < N; ++r) {
        const int tg = targets[r];
        const bool valid = tg >= 0 && tg < V;
        if (!valid) {
            CHECK(bits(loss_v[r]) == 0x7fc00000u && bits(loss_s[r]) == 0x7fc00000u,
                  "row %d (target %d): loss %08x vs %08x, not the NaN the kernels write", r, tg, bits(loss_v[r]),
                  bits(loss_s[r]));
        }
        double m = -INFINITY, sum = 0.0;
        for (int c = 0; c < V; ++c) m = std::max(m, (double)f32(logits[(size_t)r * Vp + c]));
        for (int c = 0; c < V; ++c) sum += std::exp(f32(logits[(size_t)r * Vp + c]) - m);
        if (valid) {
            const double lse = std::log(sum), loss = std::fabs((double)loss_s[r]);
            ls.add(r, loss_v[r], loss_s[r], 2.0 * (2.0 * e + 2.0 * kU * (2.0 * lse + 2.0 * loss)));
        }
        for (int c = 0; c < Vp; ++c) {
            const size_t i = (size_t)r * Vp + c;
            if (!write) continue;
            if (c >= V) {
                CHECK(bits(got[i]) == 0 && bits(want[i]) == 0, "row %d: padding column %d not +0", r, c);
                continue;
            }
            const double p = std::exp(f32(logits[i]) - m) / sum, o = std::fabs(f32(want[i]));
            const double one = c == tg ? 1.0 : 0.0;
            double tol = 2.0 * (scale * (p * (2.0 * e + 4.0 * kU) + 2.0 * kU * std::fabs(p - one)) + 2.0 * kU * o) + 1e-38;
            if constexpr (!f) tol += kBf16Ulp * std::max(o, (double)std::fabs(f32(got[i])));
            gs.add(i, f32(got[i]), f32(want[i]), tol);
        }
    }
    report_tol("classifier_forward_vec loss", ls);
    if (write) {
        check_written("classifier_forward_vec dlogits", got);
        report_tol("classifier_forward_vec dlogits", gs);
        CHECK(got.guards_intact(), "classifier_forward_vec: written outside logits");
    } else {
        check_bits("classifier_forward_vec logits (only read)", got, logits);
        check_bits("classifier_forward (reference) logits (only read)", want, logits);
    }
    finish(std::string("classifier_forward_vec ") + tag);
}

int main() {
    for (bool write : {false, true}) {
        run<float>(5, 4999, 5056, write);
        run<bf16>(5, 4999, 5056, write);
        run<float>(5, 37, 40, write);
        run<bf16>(5, 37, 40, write);
    }
    return finish_all();
}
