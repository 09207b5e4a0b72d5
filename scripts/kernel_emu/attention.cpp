// Runs kernels/attention.cu on the CPU (cuda_rt.h: real threads, warp shuffles through per-warp
// barriers) and holds its never-run _vec and overwriting kernels to the verified scalar ones of the
// same file, launched as src/gpu/attention.rs launches them: the permutes on grid_for(B*T*C / P)
// (3*B*T*C / P for the dqkv unpermutes) blocks of 256 threads, P = 1 scalar or V = 4 f32 / 8 bf16
// for _vec; the softmaxes one warp per row, 256 threads, ceil(B*NH*T / 8) blocks, the _vec ones
// only when T is a multiple of V (as the launcher picks them). f32 and bf16.
//
// Bit for bit (the header: the same copies and the same f32 add rounded once):
//   attention_permute_vec, attention_unpermute_vec, attention_backward_permute_vec,
//   attention_backward_unpermute_add_vec (accumulating onto the same non-zero dqkv)
//   attention_backward_unpermute[_vec] (overwriting a NaN dqkv) against the accumulating scalar
//   kernel onto zeros (a zero's sign may differ: 0 + -0 = +0)
// Within a tolerance (the header: the sum of exponentials and the backward's dot product are added
// in another order; the max is order-free, so the exponentials are the same):
//   attention_softmax_forward_vec: p = fl(e * fl(1 / sum)) with the sum of n = t1 + 1 positive
//   terms; two orders differ by at most 2 (n-1) u sum (u = 2^-24, first order), so p by p times
//   that plus its two roundings on each side.
//   attention_softmax_backward_vec: fl(fl(scale p) fl(g - dot)) with dot a sum of n products; two
//   orders differ by at most 2 (n-1) u sum |p g|, which carries into g - dot, plus the roundings of
//   the subtraction and the product on each side.
//   Both bounds are doubled for second-order terms; a bf16 store adds one bf16 ulp (2^-7 relative).
//   Above the diagonal both must write exactly 0.
//
// Shapes: permutes B=2, T=13, NH=3, HS=40 (10 f32 / 5 bf16 packs per head; element and pack counts
// not multiples of the block) and B=1, T=3, NH=2, HS=8; softmaxes T=132 f32 / 264 bf16 (33 packs
// per row: lanes go round twice; 132 rows are not a multiple of 8 per block) and B=2, NH=3, T=8 (one
// or two packs per row). Outputs start as NaN, the softmax inputs hold NaN above the diagonal (never
// to be read into a sum), and 64-byte guards on both sides must stay untouched.
#include "kernel_src.cpp"
#include "emu_check.h"

static double gamma_n(double n) { return n * kU / (1.0 - n * kU); }
static unsigned blocks_for(long long n) { return (unsigned)((n + 255) / 256); }

template <typename T>
static void permutes(int B, int T_, int NH, int HS) {
    constexpr long long V = 16 / sizeof(T);
    const bool f = std::is_same_v<T, float>;
    const long long C = (long long)NH * HS, btc = (long long)B * T_ * C;
    std::mt19937 rng(B * 1000 + T_ * 10 + HS + sizeof(T));
    const Buf<T> qkv = random_buf<T>(rng, 3 * btc, -2.0f, 2.0f), dout = random_buf<T>(rng, btc, -2.0f, 2.0f);
    char tag[80];
    std::snprintf(tag, sizeof tag, "%s B=%d T=%d NH=%d HS=%d", type_name<T>(), B, T_, NH, HS);
    const std::string t = tag;

    // Forward permute: q, k, v.
    Buf<T> q(btc), k(btc), v(btc), qv(btc), kv(btc), vv(btc);
    launch(blocks_for(btc), 1, 256, [&] {
        if constexpr (f) attention_permute(q.data(), k.data(), v.data(), qkv.data(), B, T_, NH, HS);
        else attention_permute_bf16(q.data(), k.data(), v.data(), qkv.data(), B, T_, NH, HS);
    });
    check_written("attention_permute (reference) v", v);
    launch(blocks_for(btc / V), 1, 256, [&] {
        if constexpr (f) attention_permute_vec(qv.data(), kv.data(), vv.data(), qkv.data(), B, T_, NH, HS);
        else attention_permute_vec_bf16(qv.data(), kv.data(), vv.data(), qkv.data(), B, T_, NH, HS);
    });
    check_bits("attention_permute_vec q", qv, q);
    check_bits("attention_permute_vec k", kv, k);
    check_bits("attention_permute_vec v", vv, v);
    finish("attention_permute_vec " + t);

    // Unpermute: out (B,T,C) from y (B,NH,T,HS); y = the permuted q.
    Buf<T> out(btc), outv(btc);
    launch(blocks_for(btc), 1, 256, [&] {
        if constexpr (f) attention_unpermute(out.data(), q.data(), B, T_, NH, HS);
        else attention_unpermute_bf16(out.data(), q.data(), B, T_, NH, HS);
    });
    check_written("attention_unpermute (reference)", out);
    for (long long i = 0; i < btc; ++i) CHECK(bits(out[i]) == bits(qkv[(i / C) * 3 * C + i % C]), "unpermute(permute(q)) [%lld]", i);
    launch(blocks_for(btc / V), 1, 256, [&] {
        if constexpr (f) attention_unpermute_vec(outv.data(), q.data(), B, T_, NH, HS);
        else attention_unpermute_vec_bf16(outv.data(), q.data(), B, T_, NH, HS);
    });
    check_bits("attention_unpermute_vec", outv, out);
    finish("attention_unpermute_vec " + t);

    // Backward permute: q, k, v and dy.
    Buf<T> bq(btc), bk(btc), bv(btc), dy(btc), bqv(btc), bkv(btc), bvv(btc), dyv(btc);
    launch(blocks_for(btc), 1, 256, [&] {
        if constexpr (f) attention_backward_permute(bq.data(), bk.data(), bv.data(), dy.data(), qkv.data(), dout.data(), B, T_, NH, HS);
        else attention_backward_permute_bf16(bq.data(), bk.data(), bv.data(), dy.data(), qkv.data(), dout.data(), B, T_, NH, HS);
    });
    check_written("attention_backward_permute (reference) dy", dy);
    launch(blocks_for(btc / V), 1, 256, [&] {
        if constexpr (f) attention_backward_permute_vec(bqv.data(), bkv.data(), bvv.data(), dyv.data(), qkv.data(), dout.data(), B, T_, NH, HS);
        else attention_backward_permute_vec_bf16(bqv.data(), bkv.data(), bvv.data(), dyv.data(), qkv.data(), dout.data(), B, T_, NH, HS);
    });
    check_bits("attention_backward_permute_vec q", bqv, bq);
    check_bits("attention_backward_permute_vec k", bkv, bk);
    check_bits("attention_backward_permute_vec v", bvv, bv);
    check_bits("attention_backward_permute_vec dy", dyv, dy);
    finish("attention_backward_permute_vec " + t);

    // dq, dk, dv (B,NH,T,HS) into dqkv (B,T,3C): accumulating onto a non-zero dqkv and onto zeros.
    const Buf<T> dq = random_buf<T>(rng, btc, -1.0f, 1.0f), dk = random_buf<T>(rng, btc, -1.0f, 1.0f),
                 dv = random_buf<T>(rng, btc, -1.0f, 1.0f);
    const Buf<T> dqkv0 = random_buf<T>(rng, 3 * btc, -1.0f, 1.0f);
    Buf<T> acc = dqkv0, accv = dqkv0, zero_acc(3 * btc, from_f32<T>(0.0f)), over(3 * btc), overv(3 * btc);
    auto add = [&](Buf<T>& d) {
        launch(blocks_for(3 * btc), 1, 256, [&] {
            if constexpr (f) attention_backward_unpermute_add(d.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
            else attention_backward_unpermute_add_bf16(d.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
        });
    };
    add(acc);
    add(zero_acc);
    launch(blocks_for(3 * btc / V), 1, 256, [&] {
        if constexpr (f) attention_backward_unpermute_add_vec(accv.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
        else attention_backward_unpermute_add_vec_bf16(accv.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
    });
    check_bits("attention_backward_unpermute_add_vec", accv, acc);
    finish("attention_backward_unpermute_add_vec " + t);

    launch(blocks_for(3 * btc), 1, 256, [&] {
        if constexpr (f) attention_backward_unpermute(over.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
        else attention_backward_unpermute_bf16(over.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
    });
    check_written("attention_backward_unpermute", over);
    check_bits("attention_backward_unpermute", over, zero_acc, true);
    finish("attention_backward_unpermute " + t);

    launch(blocks_for(3 * btc / V), 1, 256, [&] {
        if constexpr (f) attention_backward_unpermute_vec(overv.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
        else attention_backward_unpermute_vec_bf16(overv.data(), dq.data(), dk.data(), dv.data(), B, T_, NH, HS);
    });
    check_written("attention_backward_unpermute_vec", overv);
    check_bits("attention_backward_unpermute_vec", overv, zero_acc, true);
    finish("attention_backward_unpermute_vec " + t);
}

template <typename T>
static void softmaxes(int B, int NH, int T_) {
    constexpr int V = 16 / sizeof(T);
    const bool f = std::is_same_v<T, float>;
    if (T_ % V != 0) {
        std::printf("FAIL: T = %d is not a multiple of %d: the launcher would run the scalar softmax\n", T_, V);
        ++failures;
        return;
    }
    const long long rows = (long long)B * NH * T_;
    const size_t n = (size_t)rows * T_;
    const float scale = 1.0f / std::sqrt(64.0f);
    const unsigned grid = (unsigned)((rows + 7) / 8);
    std::mt19937 rng(B * 100 + NH * 10 + T_ + sizeof(T));
    // Pre-softmax scores below and on the diagonal, NaN above it.
    Buf<T> pre = random_buf<T>(rng, n, -30.0f, 30.0f);
    for (long long r = 0; r < rows; ++r)
        for (int c = (int)(r % T_) + 1; c < T_; ++c) pre[(size_t)r * T_ + c] = poison<T>();
    char tag[64];
    std::snprintf(tag, sizeof tag, "%s B=%d NH=%d T=%d", type_name<T>(), B, NH, T_);
    const std::string t = tag;

    Buf<T> att = pre, attv = pre;
    launch(grid, 1, 256, [&] {
        if constexpr (f) attention_softmax_forward(att.data(), rows, T_, scale);
        else attention_softmax_forward_bf16(att.data(), rows, T_, scale);
    });
    check_written("attention_softmax_forward (reference)", att);
    launch(grid, 1, 256, [&] {
        if constexpr (f) attention_softmax_forward_vec(attv.data(), rows, T_, scale);
        else attention_softmax_forward_vec_bf16(attv.data(), rows, T_, scale);
    });
    check_written("attention_softmax_forward_vec", attv);
    CHECK(attv.guards_intact(), "attention_softmax_forward_vec: written outside att");
    TolStats fs;
    for (long long r = 0; r < rows; ++r) {
        const int t1 = (int)(r % T_);
        for (int c = 0; c < T_; ++c) {
            const size_t i = (size_t)r * T_ + c;
            if (c > t1) {
                CHECK(bits(attv[i]) == 0 && bits(att[i]) == 0, "softmax forward: [%lld, %d] above the diagonal not +0", r, c);
                continue;
            }
            const double p = f32(att[i]);
            double tol = 2.0 * p * (2.0 * gamma_n(t1) + 6.0 * kU) + 1e-38;
            if constexpr (!f) tol += kBf16Ulp * std::max(p, (double)f32(attv[i]));
            fs.add(i, f32(attv[i]), p, tol);
        }
    }
    report_tol("attention_softmax_forward_vec", fs);
    finish("attention_softmax_forward_vec " + t);

    // Backward from the scalar forward's probabilities; datt is NaN above the diagonal.
    Buf<T> datt = random_buf<T>(rng, n, -1.0f, 1.0f);
    for (long long r = 0; r < rows; ++r)
        for (int c = (int)(r % T_) + 1; c < T_; ++c) datt[(size_t)r * T_ + c] = poison<T>();
    Buf<T> g = datt, gv = datt;
    launch(grid, 1, 256, [&] {
        if constexpr (f) attention_softmax_backward(g.data(), att.data(), rows, T_, scale);
        else attention_softmax_backward_bf16(g.data(), att.data(), rows, T_, scale);
    });
    check_written("attention_softmax_backward (reference)", g);
    launch(grid, 1, 256, [&] {
        if constexpr (f) attention_softmax_backward_vec(gv.data(), att.data(), rows, T_, scale);
        else attention_softmax_backward_vec_bf16(gv.data(), att.data(), rows, T_, scale);
    });
    check_written("attention_softmax_backward_vec", gv);
    CHECK(gv.guards_intact(), "attention_softmax_backward_vec: written outside datt");
    TolStats bs;
    for (long long r = 0; r < rows; ++r) {
        const int t1 = (int)(r % T_);
        double dot = 0.0, abs_dot = 0.0;
        for (int c = 0; c <= t1; ++c) {
            const double pg = (double)f32(att[(size_t)r * T_ + c]) * f32(datt[(size_t)r * T_ + c]);
            dot += pg;
            abs_dot += std::fabs(pg);
        }
        const double ddot = 2.0 * gamma_n(t1) * abs_dot;
        for (int c = 0; c < T_; ++c) {
            const size_t i = (size_t)r * T_ + c;
            if (c > t1) {
                CHECK(bits(gv[i]) == 0 && bits(g[i]) == 0, "softmax backward: [%lld, %d] above the diagonal not +0", r, c);
                continue;
            }
            const double sp = scale * (double)f32(att[i]), gd = std::fabs(f32(datt[i]) - dot), o = std::fabs(f32(g[i]));
            double tol = 2.0 * (sp * (ddot + 2.0 * kU * gd) + 4.0 * kU * o) + 1e-38;
            if constexpr (!f) tol += kBf16Ulp * std::max(o, (double)std::fabs(f32(gv[i])));
            bs.add(i, f32(gv[i]), f32(g[i]), tol);
        }
    }
    report_tol("attention_softmax_backward_vec", bs);
    finish("attention_softmax_backward_vec " + t);
}

int main() {
    permutes<float>(2, 13, 3, 40);
    permutes<bf16>(2, 13, 3, 40);
    permutes<float>(1, 3, 2, 8);
    permutes<bf16>(1, 3, 2, 8);
    softmaxes<float>(1, 1, 132);
    softmaxes<bf16>(1, 1, 264);
    softmaxes<float>(2, 3, 8);
    softmaxes<bf16>(2, 3, 8);
    return finish_all();
}
