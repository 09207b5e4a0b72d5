//! The CPU reference: every op as a `*_forward` / `*_backward` pair over plain slices, generic over
//! f32 (training, sampling) and f64 (finite-difference gradient checks), plus the GPT model built from
//! them and a KV-cache sampler.
//!
//! Conventions, as in llm.c: shapes are named in a one-line comment above each pair; `_backward`
//! functions *accumulate* (`+=`) into their gradient outputs, so callers zero them first.

// Numeric kernels index several arrays with one loop variable and take llm.c-style argument lists.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

pub mod attention;
pub mod classifier;
pub mod embedding;
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
    ($t:ty) => {
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
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// Rows per rayon task for row-wise ops: big enough to amortise scheduling, small enough to balance.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    (rows / (4 * rayon::current_num_threads())).clamp(1, 256)
}
