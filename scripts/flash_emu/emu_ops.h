// emulated helpers (inside namespace flash_detail)
struct CpReq { bf16* dst; const bf16* src; bool valid; };
extern thread_local std::vector<std::vector<CpReq>> t_groups;  // committed groups
extern thread_local std::vector<CpReq> t_pending;
extern bool g_eager;
inline void cp_async16(bf16* dst, const bf16* src, bool valid) {
    if (g_eager) { if (valid) memcpy(dst, src, 16); else memset(dst, 0, 16); return; }
    t_pending.push_back({dst, src, valid});
}
inline void cp_async_commit() { t_groups.push_back(t_pending); t_pending.clear(); }
inline void run_group(std::vector<CpReq>& g) {
    for (auto& r : g) { if (r.valid) memcpy(r.dst, r.src, 16); else memset(r.dst, 0, 16); }
}
template <int N> inline void cp_async_wait() {
    while ((int)t_groups.size() > N) { run_group(t_groups.front()); t_groups.erase(t_groups.begin()); }
}
inline void ldsm_common(uint32_t (&r)[4], const bf16* p, bool trans) {
    const int lane = threadIdx.x & 31; WarpX& w = g_warps[threadIdx.x >> 5];
    w.addr[lane] = p; w.bar->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        uint16_t h[2];
        for (int e = 0; e < 2; ++e) {
            int row, col;
            if (trans) { row = 2 * (lane % 4) + e; col = lane / 4; } else { row = lane / 4; col = 2 * (lane % 4) + e; }
            h[e] = ((const bf16*)w.addr[8 * i + row])[col].v;
        }
        r[i] = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
    }
    w.bar->arrive_and_wait();
}
inline void ldsm_x4(uint32_t (&r)[4], const bf16* p) { ldsm_common(r, p, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) { ldsm_common(r, p, true); }
inline void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const int lane = threadIdx.x & 31; WarpX& w = g_warps[threadIdx.x >> 5];
    for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
    w.b[lane][0] = b0; w.b[lane][1] = b1;
    w.bar->arrive_and_wait();
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; ++L) {
        int g = L / 4, t4 = L % 4;
        for (int reg = 0; reg < 4; ++reg) for (int e = 0; e < 2; ++e) {
            int row = g + 8 * (reg % 2), col = 2 * t4 + 8 * (reg / 2) + e;
            A[row][col] = bf2f((uint16_t)(w.a[L][reg] >> (16 * e)));
        }
        for (int reg = 0; reg < 2; ++reg) for (int e = 0; e < 2; ++e) {
            int k = 2 * t4 + 8 * reg + e;
            B[k][g] = bf2f((uint16_t)(w.b[L][reg] >> (16 * e)));
        }
    }
    w.bar->arrive_and_wait();
    int g = lane / 4, t4 = lane % 4;
    for (int idx = 0; idx < 4; ++idx) {
        int r = g + 8 * (idx / 2), n = 2 * t4 + idx % 2;
        float s = 0; for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][n];
        d[idx] += s;
    }
}
