#!/usr/bin/env bash
# CPU emulation of CUDA kernel source, no GPU needed: kernels/<file>.cu (with kernels/vec.cuh) is
# compiled with g++ against cuda_rt.h (thread and block indices, block barriers, warp shuffles, the
# correctly rounded intrinsics as plain IEEE operations under -ffp-contract=off, bf16 as its 16
# bits) and linked with a harness here that launches its kernels as the Rust launchers do. Every
# reinterpret_cast to int4 (the 128-bit packs of vec.cuh) goes through emu_int4_ptr, which stops the
# run at an address that is not 16-byte aligned.
#
#   run.sh adamw                   --sync step's optimizer kernels against the verified path from
#                                  the same file (adamw.cpp); prints "ok <case>" per case
#   run.sh embedding IN OUT        the embedding backward kernels on a problem the Rust test wrote
#                                  to IN (embedding.cpp says the layout); writes dwte, dwpe to OUT
#   run.sh gelu | layernorm | attention | classifier
#                                  the 128-bit (_vec) and overwriting kernels of that file against
#                                  its scalar accumulating ones (<file>.cpp says what and how close);
#                                  prints "ok <case>" per case
#
# KERNEL_EMU_SRC=DIR takes the kernel files from DIR instead of kernels/ (to run a copy with a
# planted bug).
#
# Exit status non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
which=${1:?usage: run.sh adamw | gelu | layernorm | attention | classifier | run.sh embedding IN OUT}
shift
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="${KERNEL_EMU_SRC:-$root/kernels}"
# extern __shared__ T name[] (dynamic shared memory) -> T* name = emu_dynamic_shared<T>() (cuda_rt.h);
# reinterpret_cast<[const ]int4*>(p) -> emu_int4_ptr(p) (cuda_rt.h: checks the alignment).
edit=(-e 's|#include <cuda_bf16.h>|#include "cuda_rt.h"|'
    -e 's|extern __shared__ \([A-Za-z_0-9]*\) \([A-Za-z_0-9]*\)\[\];|\1* \2 = emu_dynamic_shared<\1>();|'
    -e 's|reinterpret_cast<\(const \)\{0,1\}int4 *\*>(\([^()]*\))|emu_int4_ptr(\2)|g')
sed "${edit[@]}" "$src/vec.cuh" >"$work/vec.cuh"
sed "${edit[@]}" "$src/$which.cu" >"$work/kernel_src.cpp"
if grep -n 'reinterpret_cast<[^>]*int4' "$work/vec.cuh" "$work/kernel_src.cpp" >&2; then
    echo "run.sh: these 128-bit accesses escaped emu_int4_ptr; update the sed" >&2
    exit 2
fi
cp "$here/cuda_rt.h" "$here/emu_check.h" "$here/$which.cpp" "$work/"
g++ -std=c++20 -O2 -ffp-contract=off -pthread -I"$work" -o "$work/harness" "$work/$which.cpp"
# A kernel whose threads wait on each other forever (a shuffle or barrier some never reach) would
# hang the emulation: stop it after KERNEL_EMU_TIMEOUT seconds (default 600).
timeout "${KERNEL_EMU_TIMEOUT:-600}" "$work/harness" "$@"
