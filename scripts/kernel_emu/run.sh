#!/usr/bin/env bash
# CPU emulation of CUDA kernel source, no GPU needed: kernels/<file>.cu (with kernels/vec.cuh) is
# compiled with g++ against cuda_rt.h (thread and block indices, block barriers, the correctly
# rounded intrinsics as plain IEEE operations under -ffp-contract=off, bf16 as its 16 bits) and
# linked with a harness here that launches its kernels as the Rust launchers do.
#
#   run.sh adamw                   --sync step's optimizer kernels against the verified path from
#                                  the same file (adamw.cpp); prints "ok <case>" per case
#   run.sh embedding IN OUT        the embedding backward kernels on a problem the Rust test wrote
#                                  to IN (embedding.cpp says the layout); writes dwte, dwpe to OUT
#
# Exit status non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
which=${1:?usage: run.sh adamw | run.sh embedding IN OUT}
shift
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed 's|#include <cuda_bf16.h>|#include "cuda_rt.h"|' "$root/kernels/vec.cuh" >"$work/vec.cuh"
sed 's|#include <cuda_bf16.h>|#include "cuda_rt.h"|' "$root/kernels/$which.cu" >"$work/kernel_src.cpp"
cp "$here/cuda_rt.h" "$here/$which.cpp" "$work/"
g++ -std=c++20 -O2 -ffp-contract=off -pthread -I"$work" -o "$work/harness" "$work/$which.cpp"
"$work/harness" "$@"
