//! Which thread holds which element: the lane and fragment maps of the bf16 tensor-core instructions
//! the flash-attention kernel uses (issue 16), modelled on the CPU so that tests can check them
//! without a GPU. Pure Rust, no CUDA.
//!
//! - `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: D (16x8 f32) = A (16x16) B (16x8) + C.
//!   Each of the 32 lanes of a warp holds 4 registers of A (two bf16 each), 2 of B and 4 f32 of C/D;
//!   [`mma_a`], [`mma_b`], [`mma_c`] say which elements (g = lane/4, t4 = lane%4).
//! - `ldmatrix.sync.aligned.m8n8.x4.shared.b16` (optionally `.trans`): four 8x8 b16 matrices, the
//!   8 row addresses of matrix i given by lanes 8i..8i+7; [`ldmatrix_x4`] delivers them to the lanes.
//! - The three shared-memory operand loads of the kernel, from row-major [row][64] tiles padded to a
//!   row stride of [`SMEM_STRIDE`] bf16: [`a_operand_addr`], [`b_operand_addr`], [`b_trans_addr`]
//!   give each lane's row address; [`c_to_a`] turns two C fragments into the next A fragment.
//!
//! The tests at the bottom check that the loads deliver exactly the fragments the mma expects, that
//! every element of a tile is loaded and stored exactly once, and (with [`mma_m16n8k16`], an mma
//! built from these maps) that a warp's S = Q K^T and O = P V come out as the plain matrix products.

// Lane, register and element indices are the subject here: loops over them read as the PTX manual.
#![allow(clippy::needless_range_loop)]

/// Threads in a warp.
pub const WARP: usize = 32;
/// Row stride of the kernel's shared-memory tiles, in bf16 elements: 64 + 8 of padding = 144 bytes,
/// a multiple of 16 (ldmatrix rows are 16-byte aligned) that puts the 8 rows of one 8x8 matrix in 8
/// different groups of 4 banks (144 / 4 = 36 banks = 4 mod 32), so an ldmatrix phase has no conflict.
pub const SMEM_STRIDE: usize = 72;

/// (row, column) of an element of a matrix; for B, (k, n).
pub type Rc = (usize, usize);

/// The two elements (low half first) of the 16x16 row-major A tile in register `reg` (0..4) of `lane`:
/// a0 (g, 2t4..+1), a1 (g+8, 2t4..+1), a2 (g, 2t4+8..+9), a3 (g+8, 2t4+8..+9).
pub fn mma_a(lane: usize, reg: usize) -> [Rc; 2] {
    assert!(lane < WARP && reg < 4);
    let (g, t4) = (lane / 4, lane % 4);
    let row = g + 8 * (reg % 2);
    let col = 2 * t4 + 8 * (reg / 2);
    [(row, col), (row, col + 1)]
}

/// The two elements (k, n) (low half first) of the 16x8 B tile in register `reg` (0..2) of `lane`:
/// b0 (k 2t4..+1, n g), b1 (k 2t4+8..+9, n g).
pub fn mma_b(lane: usize, reg: usize) -> [Rc; 2] {
    assert!(lane < WARP && reg < 2);
    let (g, t4) = (lane / 4, lane % 4);
    let k = 2 * t4 + 8 * reg;
    [(k, g), (k + 1, g)]
}

/// The element (row, col) of the 16x8 f32 C/D tile in value `idx` (0..4) of `lane`:
/// c0, c1 (g, 2t4..+1), c2, c3 (g+8, 2t4..+1).
pub fn mma_c(lane: usize, idx: usize) -> Rc {
    assert!(lane < WARP && idx < 4);
    let (g, t4) = (lane / 4, lane % 4);
    (g + 8 * (idx / 2), 2 * t4 + idx % 2)
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16` (`.trans` when `trans`) on `smem` (b16 elements,
/// any type standing for them): `addr[lane]` is the element offset of the row that lane gives (row
/// `lane % 8` of matrix `lane / 8`), 16-byte aligned. Returns, per lane, the two values of each of
/// its 4 registers: register i of lane L holds matrix i's (row L/4, cols 2(L%4), +1), or with
/// `.trans` (rows 2(L%4), +1; col L/4).
pub fn ldmatrix_x4<T: Copy>(smem: &[T], addr: &[usize; WARP], trans: bool) -> [[[T; 2]; 4]; WARP] {
    for (lane, &a) in addr.iter().enumerate() {
        assert!(a * 2 % 16 == 0, "ldmatrix: lane {lane}'s row address {a} is not 16-byte aligned");
        assert!(a + 8 <= smem.len(), "ldmatrix: lane {lane}'s row address {a} is past shared memory");
    }
    std::array::from_fn(|lane| {
        std::array::from_fn(|reg| {
            std::array::from_fn(|half| {
                let (row, col) =
                    if trans { (2 * (lane % 4) + half, lane / 4) } else { (lane / 4, 2 * (lane % 4) + half) };
                smem[addr[8 * reg + row] + col]
            })
        })
    })
}

/// Element offset of (row, col) in a shared-memory tile of row stride [`SMEM_STRIDE`].
pub fn smem_offset((row, col): Rc) -> usize {
    row * SMEM_STRIDE + col
}

/// A operand, the 16x16 block at (r0, c0) of a row-major tile (Q for S = Q K^T; K for S^T = K Q^T;
/// V for dP^T = V dO^T; dO for dP = dO V^T): lane L gives row r0 + L%16, column c0 + (L/16)*8, and
/// `ldmatrix.x4` delivers a0..a3.
pub fn a_operand_addr(lane: usize, r0: usize, c0: usize) -> Rc {
    (r0 + lane % 16, c0 + (lane / 16) * 8)
}

/// B operand from a [n][k] tile (rows are n, columns k; no transpose), 16 n by 16 k at (n0, k0) (K for
/// S = Q K^T; Q for S^T; dO for dP^T; V for dP): lane L gives row n0 + L%8 + (L/16)*8, column
/// k0 + ((L/8)%2)*8, and `ldmatrix.x4` delivers b0, b1 of the n-tile n0..n0+7 then b0, b1 of
/// n0+8..n0+15.
pub fn b_operand_addr(lane: usize, n0: usize, k0: usize) -> Rc {
    (n0 + lane % 8 + (lane / 16) * 8, k0 + ((lane / 8) % 2) * 8)
}

/// B operand from a [k][n] tile (rows are k, columns n), 16 k by 16 n at (k0, n0), transposed (V for
/// P V; dO for P^T dO; Q for dS^T Q; K for dS K): lane L gives row k0 + L%8 + ((L/8)%2)*8, column
/// n0 + (L/16)*8, and `ldmatrix.x4.trans` delivers b0, b1 of the n-tile n0..n0+7 then b0, b1 of
/// n0+8..n0+15.
pub fn b_trans_addr(lane: usize, k0: usize, n0: usize) -> Rc {
    (k0 + lane % 8 + ((lane / 8) % 2) * 8, n0 + (lane / 16) * 8)
}

/// The C fragments of the adjacent n-tiles 2j and 2j+1 (16 columns of a 16-row f32 result, one lane's
/// c0..c3 of each) as that lane's A fragment for k = 16j..16j+15, pairwise: (c0, c1) of 2j -> a0,
/// (c2, c3) of 2j -> a1, (c0, c1) of 2j+1 -> a2, (c2, c3) of 2j+1 -> a3. The kernel converts each
/// pair to bf16x2 (`round`), which is how P and dS feed the next mma without shared memory.
pub fn c_to_a<T: Copy, U>(even: [T; 4], odd: [T; 4], round: impl Fn(T) -> U) -> [[U; 2]; 4] {
    let [c0, c1, c2, c3] = even;
    let [d0, d1, d2, d3] = odd;
    [[round(c0), round(c1)], [round(c2), round(c3)], [round(d0), round(d1)], [round(d2), round(d3)]]
}

/// One warp's `mma.sync m16n8k16` built from the fragment maps: gathers A (16x16) and B (16x8) from
/// the lanes' registers, computes D = A B + C in f32 (products of bf16 values are exact in f32), and
/// returns each lane's d0..d3.
pub fn mma_m16n8k16(a: &[[[f32; 2]; 4]; WARP], b: &[[[f32; 2]; 2]; WARP], c: &[[f32; 4]; WARP]) -> [[f32; 4]; WARP] {
    let mut am = [[0.0f32; 16]; 16];
    let mut bm = [[0.0f32; 8]; 16];
    for lane in 0..WARP {
        for reg in 0..4 {
            for (half, (r, col)) in mma_a(lane, reg).into_iter().enumerate() {
                am[r][col] = a[lane][reg][half];
            }
        }
        for reg in 0..2 {
            for (half, (k, n)) in mma_b(lane, reg).into_iter().enumerate() {
                bm[k][n] = b[lane][reg][half];
            }
        }
    }
    std::array::from_fn(|lane| {
        std::array::from_fn(|idx| {
            let (r, n) = mma_c(lane, idx);
            c[lane][idx] + (0..16).map(|k| am[r][k] * bm[k][n]).sum::<f32>()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tile rows, columns (head size), warps per block, rows per warp: as in the kernel.
    const ROWS: usize = 64;
    const D: usize = 64;
    const WARPS: usize = 4;

    /// A 64-row shared-memory tile whose every slot holds its own offset: a delivered value names
    /// the element it came from. Padding slots hold their offset too, so a load of padding shows up
    /// as a column >= 64.
    fn labelled_tile() -> Vec<usize> {
        (0..ROWS * SMEM_STRIDE).collect()
    }

    fn rc_of(offset: usize) -> Rc {
        (offset / SMEM_STRIDE, offset % SMEM_STRIDE)
    }

    fn addrs(f: impl Fn(usize) -> Rc) -> [usize; WARP] {
        std::array::from_fn(|lane| smem_offset(f(lane)))
    }

    /// Which operand load, and where in the tile the expected element (i, j) of the fragment is.
    #[derive(Clone, Copy, Debug)]
    enum Load {
        /// A operand at (r0, c0): A[row][col] = tile[r0 + row][c0 + col].
        A,
        /// B from a [n][k] tile at (n0, k0): B[k][n] of n-tile h = tile[n0 + 8h + n][k0 + k].
        B,
        /// B from a [k][n] tile at (k0, n0), transposed: B[k][n] of n-tile h = tile[k0 + k][n0 + 8h + n].
        BTrans,
    }

    impl Load {
        fn load(self, smem: &[usize], x0: usize, y0: usize) -> [[[usize; 2]; 4]; WARP] {
            match self {
                Load::A => ldmatrix_x4(smem, &addrs(|l| a_operand_addr(l, x0, y0)), false),
                Load::B => ldmatrix_x4(smem, &addrs(|l| b_operand_addr(l, x0, y0)), false),
                Load::BTrans => ldmatrix_x4(smem, &addrs(|l| b_trans_addr(l, x0, y0)), true),
            }
        }
        /// The tile element that the mma expects in register `reg`, half `half`, of `lane`.
        fn expected(self, lane: usize, reg: usize, half: usize, x0: usize, y0: usize) -> Rc {
            match self {
                Load::A => {
                    let (r, c) = mma_a(lane, reg)[half];
                    (x0 + r, y0 + c)
                }
                Load::B => {
                    let (k, n) = mma_b(lane, reg % 2)[half];
                    (x0 + 8 * (reg / 2) + n, y0 + k)
                }
                Load::BTrans => {
                    let (k, n) = mma_b(lane, reg % 2)[half];
                    (x0 + k, y0 + 8 * (reg / 2) + n)
                }
            }
        }
    }

    /// (a) For each of the three loads, at every 16x16 block of a 64x64 tile: every lane's registers
    /// hold exactly the fragment elements the mma expects, and the warp receives each element of the
    /// block exactly once (and nothing outside it).
    #[test]
    fn ldmatrix_loads_deliver_the_mma_fragments() {
        let smem = labelled_tile();
        for load in [Load::A, Load::B, Load::BTrans] {
            for x0 in (0..ROWS).step_by(16) {
                for y0 in (0..D).step_by(16) {
                    let regs = load.load(&smem, x0, y0);
                    let mut seen = vec![0u32; ROWS * SMEM_STRIDE];
                    for lane in 0..WARP {
                        for reg in 0..4 {
                            for half in 0..2 {
                                let got = rc_of(regs[lane][reg][half]);
                                let want = load.expected(lane, reg, half, x0, y0);
                                assert_eq!(got, want, "{load:?} at ({x0},{y0}): lane {lane} reg {reg}.{half}");
                                seen[regs[lane][reg][half]] += 1;
                            }
                        }
                    }
                    for (off, &n) in seen.iter().enumerate() {
                        let (r, c) = rc_of(off);
                        let inside = (x0..x0 + 16).contains(&r) && (y0..y0 + 16).contains(&c);
                        assert_eq!(n, inside as u32, "{load:?} at ({x0},{y0}): element ({r},{c}) delivered {n} times");
                    }
                }
            }
        }
    }

    /// The row stride: every lane's row address is 16-byte aligned (ldmatrix_x4 asserts it), and the
    /// 8 rows of each 8x8 matrix (one ldmatrix phase, 8 x 16 bytes) fall in 8 distinct 16-byte bank
    /// groups of the 128-byte bank window, so no load has a bank conflict.
    #[test]
    fn ldmatrix_rows_are_aligned_and_conflict_free() {
        for x0 in (0..ROWS).step_by(16) {
            for y0 in (0..D).step_by(16) {
                for f in [a_operand_addr, b_operand_addr, b_trans_addr] {
                    let a = addrs(|l| f(l, x0, y0));
                    for m in 0..4 {
                        let mut groups: Vec<usize> = a[8 * m..8 * m + 8].iter().map(|&o| (o * 2 / 16) % 8).collect();
                        assert!(a[8 * m..8 * m + 8].iter().all(|&o| o * 2 % 16 == 0));
                        groups.sort();
                        groups.dedup();
                        assert_eq!(groups.len(), 8, "matrix {m} at ({x0},{y0}): bank groups collide");
                    }
                }
            }
        }
    }

    /// (b) The C fragment covers the 16x8 tile once; the O store (each lane writes c0..c3 of each of
    /// the 8 n-tiles of d) writes each of a warp's 16x64 output elements once.
    #[test]
    fn c_fragment_and_output_store_cover_once() {
        let mut seen = [[0u32; 8]; 16];
        for lane in 0..WARP {
            for idx in 0..4 {
                let (r, c) = mma_c(lane, idx);
                seen[r][c] += 1;
            }
        }
        assert!(seen.iter().flatten().all(|&n| n == 1), "C fragment: {seen:?}");
        let mut out = [[0u32; D]; 16];
        for nt in 0..D / 8 {
            for lane in 0..WARP {
                for idx in 0..4 {
                    let (r, c) = mma_c(lane, idx);
                    out[r][8 * nt + c] += 1;
                }
            }
        }
        assert!(out.iter().flatten().all(|&n| n == 1), "O store: {out:?}");
        // The A and B fragments cover their tiles once too.
        let mut a = [[0u32; 16]; 16];
        let mut b = [[0u32; 8]; 16];
        for lane in 0..WARP {
            for reg in 0..4 {
                for (r, c) in mma_a(lane, reg) {
                    a[r][c] += 1;
                }
            }
            for reg in 0..2 {
                for (k, n) in mma_b(lane, reg) {
                    b[k][n] += 1;
                }
            }
        }
        assert!(a.iter().flatten().all(|&n| n == 1), "A fragment: {a:?}");
        assert!(b.iter().flatten().all(|&n| n == 1), "B fragment: {b:?}");
    }

    /// (c) The C fragments of n-tiles 2j and 2j+1 of a 16-row result, passed through `c_to_a`, are
    /// exactly the A fragment of its 16x16 block at columns 16j.
    #[test]
    fn c_fragments_reused_as_a_fragment() {
        for j in 0..D / 16 {
            for lane in 0..WARP {
                // Each C value labelled with its (row, column) in the 16x64 result.
                let frag = |nt: usize| -> [Rc; 4] {
                    std::array::from_fn(|idx| {
                        let (r, c) = mma_c(lane, idx);
                        (r, 8 * nt + c)
                    })
                };
                let a = c_to_a(frag(2 * j), frag(2 * j + 1), |x| x);
                for reg in 0..4 {
                    for half in 0..2 {
                        let (r, c) = mma_a(lane, reg)[half];
                        assert_eq!(a[reg][half], (r, 16 * j + c), "block {j}: lane {lane} a{reg}.{half}");
                    }
                }
            }
        }
    }

    /// (d) A block's loop structure: 4 warps x 16 query rows; for S = Q_i K_j^T the j-loop over 16-wide
    /// k-steps of d (A from Q, B from K in pairs of n-tiles of 8 keys), for O += P V over 16-wide
    /// k-steps of keys (B from V transposed, pairs of n-tiles of 8 d's). Each element of Q_i (64x64) is
    /// loaded once by the block, each element of K_j and V_j once by each warp, and each element of the
    /// 64x64 output tile stored once.
    #[test]
    fn whole_tiles_loaded_and_stored_once() {
        let smem = labelled_tile();
        let count = |seen: &mut [u32], regs: &[[[usize; 2]; 4]; WARP]| {
            for v in regs.iter().flatten().flatten() {
                seen[*v] += 1;
            }
        };
        let (mut q, mut k, mut v) = (vec![0u32; smem.len()], vec![0u32; smem.len()], vec![0u32; smem.len()]);
        let mut o = vec![0u32; ROWS * D];
        for w in 0..WARPS {
            for ks in 0..D / 16 {
                count(&mut q, &Load::A.load(&smem, 16 * w, 16 * ks));
                for np in 0..ROWS / 16 {
                    count(&mut k, &Load::B.load(&smem, 16 * np, 16 * ks));
                }
            }
            for ks in 0..ROWS / 16 {
                for np in 0..D / 16 {
                    count(&mut v, &Load::BTrans.load(&smem, 16 * ks, 16 * np));
                }
            }
            for nt in 0..D / 8 {
                for lane in 0..WARP {
                    for idx in 0..4 {
                        let (r, c) = mma_c(lane, idx);
                        o[(16 * w + r) * D + 8 * nt + c] += 1;
                    }
                }
            }
        }
        for off in 0..smem.len() {
            let (_, c) = rc_of(off);
            let real = c < D; // padding columns must never be loaded
            assert_eq!(q[off], real as u32, "Q element {:?} loaded {} times", rc_of(off), q[off]);
            assert_eq!(k[off], WARPS as u32 * real as u32, "K element {:?} loaded {} times", rc_of(off), k[off]);
            assert_eq!(v[off], WARPS as u32 * real as u32, "V element {:?} loaded {} times", rc_of(off), v[off]);
        }
        assert!(o.iter().all(|&n| n == 1), "output tile: some element stored other than once");
    }

    /// One warp's S = Q K^T (16 rows x 64 keys) and O = P V (16 x 64) through the loads, the mma and the
    /// C-to-A reuse, against the plain matrix products: the maps fit together, not just each alone.
    #[test]
    fn warp_products_through_the_fragments_match_plain_products() {
        // Small integers (exact in bf16 and in f32 sums) so equality is exact.
        let val = |seed: usize, r: usize, c: usize| ((r * 7 + c * 13 + seed * 5) % 9) as f32 - 4.0;
        let tile = |seed: usize| -> Vec<f32> {
            (0..ROWS * SMEM_STRIDE)
                .map(|o| if o % SMEM_STRIDE < D { val(seed, o / SMEM_STRIDE, o % SMEM_STRIDE) } else { f32::NAN })
                .collect()
        };
        let (qs, ks, vs) = (tile(1), tile(2), tile(3));
        let at = |t: &[f32], r: usize, c: usize| t[r * SMEM_STRIDE + c];
        let w = 2; // rows 32..48
                   // S = Q K^T: 8 n-tiles of 8 keys, accumulated over 4 k-steps of 16 d's.
        let mut s = [[[0.0f32; 4]; WARP]; 8];
        for kstep in 0..D / 16 {
            let a = ldmatrix_x4(&qs, &addrs(|l| a_operand_addr(l, 16 * w, 16 * kstep)), false);
            for np in 0..4 {
                let b = ldmatrix_x4(&ks, &addrs(|l| b_operand_addr(l, 16 * np, 16 * kstep)), false);
                for h in 0..2 {
                    let bh: [[[f32; 2]; 2]; WARP] = std::array::from_fn(|l| [b[l][2 * h], b[l][2 * h + 1]]);
                    s[2 * np + h] = mma_m16n8k16(&a, &bh, &s[2 * np + h]);
                }
            }
        }
        for nt in 0..8 {
            for lane in 0..WARP {
                for idx in 0..4 {
                    let (r, c) = mma_c(lane, idx);
                    let (qr, key) = (16 * w + r, 8 * nt + c);
                    let want: f32 = (0..D).map(|d| at(&qs, qr, d) * at(&ks, key, d)).sum();
                    assert_eq!(s[nt][lane][idx], want, "S[{qr}][{key}]");
                }
            }
        }
        // P = S / 64 (a stand-in for the softmax; exact, as every sum here is) fed as A via c_to_a;
        // O = P V: 8 n-tiles of 8 d's, 4 k-steps of 16 keys.
        let mut o = [[[0.0f32; 4]; WARP]; 8];
        for kstep in 0..ROWS / 16 {
            let a: [[[f32; 2]; 4]; WARP] =
                std::array::from_fn(|l| c_to_a(s[2 * kstep][l], s[2 * kstep + 1][l], |x: f32| x / 64.0));
            for np in 0..4 {
                let b = ldmatrix_x4(&vs, &addrs(|l| b_trans_addr(l, 16 * kstep, 16 * np)), true);
                for h in 0..2 {
                    let bh: [[[f32; 2]; 2]; WARP] = std::array::from_fn(|l| [b[l][2 * h], b[l][2 * h + 1]]);
                    o[2 * np + h] = mma_m16n8k16(&a, &bh, &o[2 * np + h]);
                }
            }
        }
        for nt in 0..8 {
            for lane in 0..WARP {
                for idx in 0..4 {
                    let (r, c) = mma_c(lane, idx);
                    let (qr, d) = (16 * w + r, 8 * nt + c);
                    let p = |key: usize| (0..D).map(|e| at(&qs, qr, e) * at(&ks, key, e)).sum::<f32>() / 64.0;
                    let want: f32 = (0..ROWS).map(|key| p(key) * at(&vs, key, d)).sum();
                    assert_eq!(o[nt][lane][idx], want, "O[{qr}][{d}]");
                }
            }
        }
    }
}
