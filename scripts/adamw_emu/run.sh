#!/usr/bin/env bash
# CPU emulation of the optimizer kernels of kernels/adamw.cu (with kernels/vec.cuh), no GPU
# needed: the kernel source is compiled with g++ against cuda_rt.h (thread and block indices,
# barriers, the correctly rounded intrinsics as plain IEEE operations, -ffp-contract=off) and
# harness.cpp checks the --sync step kernels against the verified path built from the same file.
# Prints "ok <case>" per case; exit status non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed 's|#include <cuda_bf16.h>|#include "cuda_rt.h"|' "$root/kernels/vec.cuh" >"$work/vec.cuh"
sed 's|#include <cuda_bf16.h>|#include "cuda_rt.h"|' "$root/kernels/adamw.cu" >"$work/kernel_src.cpp"
cp "$here/cuda_rt.h" "$here/harness.cpp" "$work/"
g++ -std=c++20 -O2 -ffp-contract=off -pthread -I"$work" -o "$work/harness" "$work/harness.cpp"
"$work/harness"
