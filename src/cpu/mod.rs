//! The CPU reference: every op as a `*_forward` / `*_backward` pair over plain slices, generic over
//! f32 (training, sampling) and f64 (finite-difference gradient checks), plus the GPT model built from
//! them and a KV-cache sampler.
//!
//! Conventions, as in llm.c: shapes are named in a one-line comment above each pair; `_backward`
//! functions *accumulate* (`+=`) into their gradient outputs, so callers zero them first.

// Numeric kernels index several arrays with one loop variable and take llm.c-style argument lists.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

pub mod adamw;
pub mod attention;
pub mod classifier;
pub mod embedding;
pub mod flash_attention;
pub mod gelu;
pub mod gpt;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod sample;

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The float types the reference runs in: f32 for real work, f64 for gradient checks.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
}

macro_rules! impl_real {
    ($t:ty, $exp:path, $tanh:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
impl_real!(f32, fast::exp_f32, fast::tanh_f32);
impl_real!(f64, f64::exp, f64::tanh);

/// Branch-free f32 `exp` and `tanh` (Cephes-style range reduction and minimax polynomials, within a
/// few ulp of the true value over the whole range; the unit test bounds both at 4). Unlike libm calls
/// they inline, so the loops of GELU and softmax vectorise.
#[allow(clippy::excessive_precision)] // published coefficients, kept as written
pub mod fast {
    /// e^x; underflows to 0 below -87.3 and saturates to +inf above 88.7, like `f32::exp`.
    #[inline(always)]
    pub fn exp_f32(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to the nearest integer
        let xc = x.clamp(-87.3, 88.7);
        let n = (xc * LOG2E + ROUND) - ROUND;
        let r = xc - n * LN2_HI - n * LN2_LO;
        let p = 1.987_569_1e-4f32;
        let p = p * r + 1.398_2e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 5.000_000_1e-1;
        let y = p * r * r + r + 1.0;
        // Scale by 2^n in two halves so n up to 128 stays representable.
        let half = (n as i32) >> 1;
        let s1 = f32::from_bits(((half + 127) as u32) << 23);
        let s2 = f32::from_bits((((n as i32 - half) + 127) as u32) << 23);
        let out = y * s1 * s2;
        if x > 88.7 {
            f32::INFINITY
        } else if x < -87.3 {
            0.0
        } else {
            out
        }
    }

    /// tanh(x): an odd polynomial near zero, 1 - 2/(e^{2|x|} + 1) beyond, sign restored.
    #[inline(always)]
    pub fn tanh_f32(x: f32) -> f32 {
        let z = x.abs();
        let s = x * x;
        let small = ((((-5.704_988_7e-3 * s + 2.063_908_9e-2) * s - 5.373_971_6e-2) * s + 1.333_144_2e-1) * s
            - 3.333_328_2e-1)
            * s
            * x
            + x;
        let big = 1.0 - 2.0 / (exp_f32((2.0 * z).min(88.0)) + 1.0);
        if z < 0.625 {
            small
        } else {
            big.copysign(x)
        }
    }
}

/// Rows per rayon task for row-wise ops: big enough to amortise scheduling, small enough to balance.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    (rows / (4 * rayon::current_num_threads())).clamp(1, 256)
}

#[cfg(test)]
mod tests {
    use super::fast::{exp_f32, tanh_f32};

    fn ulps(a: f32, b: f64) -> f64 {
        (a as f64 - b).abs() / (f32::EPSILON as f64 * b.abs().max(f32::MIN_POSITIVE as f64))
    }

    #[test]
    fn fast_exp_and_tanh_are_within_a_few_ulp() {
        let (mut worst_exp, mut worst_tanh) = (0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x < 88.0 {
            worst_exp = worst_exp.max(ulps(exp_f32(x), (x as f64).exp()));
            x += 0.00731;
        }
        let mut x = -12.0f32;
        while x < 12.0 {
            let t = (x as f64).tanh();
            // Relative ulps, except near zero crossing where absolute error vs 1 matters.
            let err = (tanh_f32(x) as f64 - t).abs() / (f32::EPSILON as f64 * t.abs().max(1e-3));
            worst_tanh = worst_tanh.max(err);
            x += 0.000917;
        }
        assert!(worst_exp < 4.0, "exp error {worst_exp} ulp");
        assert!(worst_tanh < 4.0, "tanh error {worst_tanh} ulp");
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(tanh_f32(50.0), 1.0);
        assert_eq!(tanh_f32(-50.0), -1.0);
        assert_eq!(tanh_f32(0.0), 0.0);
    }
}
