// Shared pieces of the harnesses that hold a file's _vec and overwriting kernels to its scalar
// accumulating ones (gelu.cpp, layernorm.cpp, attention.cpp, classifier.cpp): guarded buffers,
// bit comparisons, tolerance comparisons and the "ok <case>" / FAIL report.
#pragma once
#include <cstdio>
#include <random>
#include <string>

static int failures = 0;
static int case_failures = 0;

// Reports a failed check (at most a few per case, the count is kept).
#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (!(cond)) {                                                   \
            if (case_failures < 5) {                                     \
                std::printf("FAIL %s:%d: ", __FILE__, __LINE__);         \
                std::printf(__VA_ARGS__);                                \
                std::printf("\n");                                       \
            }                                                            \
            ++failures;                                                  \
            ++case_failures;                                             \
        }                                                                \
    } while (0)

// Ends a case: "ok <name>" when none of its checks failed.
static void finish(const std::string& name) {
    if (case_failures == 0) {
        std::printf("ok %s\n", name.c_str());
    } else {
        std::printf("FAILED %s (%d checks)\n", name.c_str(), case_failures);
    }
    case_failures = 0;
}

static int finish_all() {
    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    return 0;
}

using bf16 = __nv_bfloat16;
static uint32_t bits(float x) { return __float_as_uint(x); }
static uint32_t bits(bf16 x) { return x.bits; }
static uint32_t bits(int x) { return (uint32_t)x; }
static float f32(float x) { return x; }
static float f32(bf16 x) { return __bfloat162float(x); }
template <typename T>
static T from_f32(float x);
template <>
float from_f32<float>(float x) {
    return x;
}
template <>
bf16 from_f32<bf16>(float x) {
    return __float2bfloat16_rn(x);
}
template <typename T>
static const char* type_name();
template <>
const char* type_name<float>() {
    return "f32";
}
template <>
const char* type_name<bf16>() {
    return "bf16";
}
// A NaN with a payload no kernel writes: what outputs hold before a kernel writes them.
template <typename T>
static T poison();
template <>
float poison<float>() {
    return __int_as_float(0x7fa5a5a5);
}
template <>
bf16 poison<bf16>() {
    return bf16{0x7fa5};
}
template <>
int poison<int>() {
    return (int)0xa5a5a5a5;
}

constexpr double kU = 1.0 / (1 << 24);  // f32 unit roundoff, 2^-24
constexpr double kBf16Ulp = 1.0 / 128;  // one bf16 ulp relative to the value it rounds, at most 2^-7

// n elements of T at a 64-byte aligned address, between two 64-byte guards that hold the poison and
// must still hold it after every launch (nothing written past either end).
template <typename T>
struct Buf {
    static constexpr size_t G = 64 / sizeof(T);
    std::vector<T> store;
    T* base;
    size_t n;
    explicit Buf(size_t n_, T fill = poison<T>()) : n(n_) {
        store.assign(n + 2 * G + 64 / sizeof(T), poison<T>());
        const uintptr_t a = reinterpret_cast<uintptr_t>(store.data());
        base = store.data() + ((64 - a % 64) % 64) / sizeof(T);
        for (size_t i = 0; i < n; ++i) base[G + i] = fill;
    }
    Buf(const Buf& o) : Buf(o.n) { copy_from(o); }
    Buf& operator=(const Buf& o) {
        if (this != &o) {
            *this = Buf(o.n);
            copy_from(o);
        }
        return *this;
    }
    Buf(Buf&& o) = default;
    Buf& operator=(Buf&&) = default;
    void copy_from(const Buf& o) {
        for (size_t i = 0; i < n; ++i) base[G + i] = o[i];
    }
    T* data() { return base + G; }
    const T* data() const { return base + G; }
    T& operator[](size_t i) { return base[G + i]; }
    const T& operator[](size_t i) const { return base[G + i]; }
    // The guards still hold the poison.
    bool guards_intact() const {
        for (size_t i = 0; i < G; ++i) {
            if (bits(base[i]) != bits(poison<T>()) || bits(base[G + n + i]) != bits(poison<T>())) return false;
        }
        return true;
    }
};

// Random values in [lo, hi) (never exactly zero), rounded to T.
template <typename T>
static Buf<T> random_buf(std::mt19937& rng, size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    Buf<T> b(n);
    for (size_t i = 0; i < n; ++i) {
        float x = u(rng);
        if (f32(from_f32<T>(x)) == 0.0f) x = 0.5f * (hi > 0 ? hi : lo);
        b[i] = from_f32<T>(x);
    }
    return b;
}

// got and want hold the same bits in every element (both zeros of either sign also count as equal
// when zero_sign is true: "0 + -0 = +0" is the one difference the overwriting kernels may show);
// reports the first difference. Also checks got's guards.
template <typename T>
static void check_bits(const std::string& what, const Buf<T>& got, const Buf<T>& want, bool zero_sign = false) {
    CHECK(got.n == want.n, "%s: lengths %zu vs %zu", what.c_str(), got.n, want.n);
    size_t diffs = 0, first = 0;
    for (size_t i = 0; i < got.n; ++i) {
        const bool zeros = zero_sign && f32(got[i]) == 0.0f && f32(want[i]) == 0.0f;
        if (bits(got[i]) != bits(want[i]) && !zeros) {
            if (diffs++ == 0) first = i;
        }
    }
    CHECK(diffs == 0, "%s: %zu elements differ, first [%zu]: %08x (%.9g) vs %08x (%.9g)", what.c_str(), diffs, first,
          bits(got[first]), (double)f32(got[first]), bits(want[first]), (double)f32(want[first]));
    CHECK(got.guards_intact(), "%s: written outside its %zu elements", what.c_str(), got.n);
}

// No element holds the poison any more (every element written).
template <typename T>
static void check_written(const std::string& what, const Buf<T>& got) {
    size_t left = 0, first = 0;
    for (size_t i = 0; i < got.n; ++i) {
        if (bits(got[i]) == bits(poison<T>()) && left++ == 0) first = i;
    }
    CHECK(left == 0, "%s: %zu elements never written, first [%zu]", what.c_str(), left, first);
}

// Largest |got - want| / tol over the elements, for the report; fails (with the first offender) when
// any element is past its tolerance or either value is not finite where the other is.
struct TolStats {
    size_t n = 0, differ = 0, bad = 0, first_bad = 0;
    double worst = 0.0;  // max |got - want| / tol
    double got_bad = 0, want_bad = 0, tol_bad = 0;
    void add(size_t i, double got, double want, double tol) {
        ++n;
        if (got == want) return;
        ++differ;
        const double r = std::fabs(got - want) / tol;
        if (!(r <= 1.0)) {
            if (bad++ == 0) {
                first_bad = i;
                got_bad = got;
                want_bad = want;
                tol_bad = tol;
            }
        }
        if (r > worst || r != r) worst = r;
    }
};
static void report_tol(const std::string& what, const TolStats& s) {
    CHECK(s.bad == 0, "%s: %zu of %zu past tolerance, first [%zu]: %.9g vs %.9g (tolerance %.3g)", what.c_str(), s.bad,
          s.n, s.first_bad, s.got_bad, s.want_bad, s.tol_bad);
    if (std::getenv("KERNEL_EMU_VERBOSE")) {
        std::printf("  %s: %zu of %zu differ, worst |diff|/tolerance %.3g\n", what.c_str(), s.differ, s.n, s.worst);
    }
}
