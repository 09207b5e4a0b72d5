#!/usr/bin/env bash
# CPU emulation of kernels/flash_attention.cu, no GPU needed: strips the inline-PTX helpers
# (smem_u32 .. mma) from the kernel, puts the emulated ones (emu_ops.h) in their place, builds
# with g++ (C++20) and runs forward + backward for several T in both cp.async modes, comparing
# with an f64 reference (bf16 tolerances). Exit status non-zero on any failure.
# It checks index arithmetic, fragment maps, masking, softmax, scales, slots and barrier /
# wait_group placement as far as a thread-level emulation can; not timing or bank conflicts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$root/kernels/flash_attention.cu" "$work/kernel_emu.cpp" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = s.index('__device__ __forceinline__ uint32_t smem_u32')
b = s.index('// Two f32 -> bf16x2')
s = s[:a] + '#include "emu_ops.h"\n' + s[b:]
s = s.replace('#include <cuda_bf16.h>', '#include "emu_rt.h"')
open(sys.argv[2], 'w').write(s)
PY
cp "$here"/emu_rt.h "$here"/emu_ops.h "$here"/harness.cpp "$work"/
g++ -std=c++20 -O2 -pthread -I"$work" -o "$work/harness" "$work/harness.cpp"
status=0
# FLASH_EMU_T: the sequence lengths to run (default all below); FLASH_EMU_EAGER=0 skips the
# eager cp.async mode (the test in tests/ops/flash_attention.rs runs a short list that way).
for t in ${FLASH_EMU_T:-1 7 64 65 128 130 191 257}; do
    "$work/harness" "$t" || status=1
    if [ "${FLASH_EMU_EAGER:-1}" = 1 ]; then
        EMU_EAGER=1 "$work/harness" "$t" || status=1
    fi
done
exit $status
