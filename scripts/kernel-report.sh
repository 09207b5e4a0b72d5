#!/usr/bin/env bash
# Resource report of the CUDA kernels, per architecture and kernel (no GPU needed):
#   registers, shared memory, spill stores/loads  (nvcc -Xptxas -v)
#   global loads/stores by width, HMMA count      (cuobjdump -sass)
#
# Usage: bash scripts/kernel-report.sh [sm_80 sm_86 sm_90 ...]    (default: sm_80 sm_86 sm_90)
#
# The kernels are compiled as build.rs compiles them: every kernels/*.cu #included, in name order,
# into one translation unit, -O3 -std=c++17 -I kernels; here to one cubin per architecture.
# nvcc is looked up as build.rs does (PATH, then ~/.cache/genesis/nvcc/nvidia/cu13/bin). cuobjdump
# is the pinned wheel of scripts/nvcc-requirements.txt: next to nvcc (a fresh install of that file
# puts it there) or, when missing, installed on demand into ~/.cache/genesis/cuobjdump.
# Prints one markdown table per architecture (kernels/PERF.md keeps a copy).
set -euo pipefail
cd "$(dirname "$0")/.."

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(sm_80 sm_86 sm_90)

pip_bin="$HOME/.cache/genesis/nvcc/nvidia/cu13/bin"
nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || nvcc="$pip_bin/nvcc"
[ -x "$nvcc" ] || { echo "kernel-report: no nvcc (install it: pip install --target ~/.cache/genesis/nvcc -r scripts/nvcc-requirements.txt)" >&2; exit 2; }

# cuobjdump runs nvdisasm: both must be in one directory, which goes on PATH.
cuobjdump=""
for d in "$(dirname "$nvcc")" "$pip_bin" "$HOME/.cache/genesis/cuobjdump/nvidia/cu13/bin"; do
  if [ -x "$d/cuobjdump" ] && [ -x "$d/nvdisasm" ]; then cuobjdump=$d/cuobjdump; break; fi
done
if [ -z "$cuobjdump" ]; then
  pin=$(grep -E "^nvidia-cuda-(cuobjdump|nvdisasm)==" scripts/nvcc-requirements.txt | tr "\n" " ")
  echo "kernel-report: installing the pinned $pin into ~/.cache/genesis/cuobjdump" >&2
  pip install --quiet --target "$HOME/.cache/genesis/cuobjdump" $pin >&2
  cuobjdump="$HOME/.cache/genesis/cuobjdump/nvidia/cu13/bin/cuobjdump"
fi
export PATH="$(dirname "$cuobjdump"):$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unit="$work/all_kernels.cu"
echo "// kernel-report.sh: every kernels/*.cu in one unit, as build.rs makes it." >"$unit"
for f in $(ls kernels/*.cu | LC_ALL=C sort); do
  echo "#include \"$PWD/$f\"" >>"$unit"
done

echo "nvcc: $("$nvcc" --version | tail -n 1); cuobjdump: $("$cuobjdump" --version | tail -n 1)"
for arch in "${archs[@]}"; do
  "$nvcc" -cubin -O3 -std=c++17 -I kernels -arch="$arch" -Xptxas -v -o "$work/$arch.cubin" "$unit" \
    >"$work/$arch.ptxas" 2>&1 || { cat "$work/$arch.ptxas" >&2; exit 1; }
  "$cuobjdump" -sass "$work/$arch.cubin" >"$work/$arch.sass"
  python3 - "$arch" "$work/$arch.ptxas" "$work/$arch.sass" <<'PY'
import re, sys
arch, ptxas_path, sass_path = sys.argv[1:]
info = {}
cur = None
for line in open(ptxas_path):
    m = re.search(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_0-9]+)'?", line)
    if m:
        cur = info.setdefault(m.group(1), {})
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        cur["stack"], cur["spill_st"], cur["spill_ld"] = m.groups()
    m = re.search(r"Used (\d+) registers", line)
    if m:
        cur["regs"] = m.group(1)
        s = re.search(r"(\d+) bytes smem", line)
        cur["smem"] = s.group(1) if s else "0"
# SASS: "Function : name" starts a kernel; count global memory instructions by width.
counts = {}
cur = None
for line in open(sass_path):
    m = re.search(r"Function : ([A-Za-z_0-9]+)", line)
    if m:
        cur = counts.setdefault(m.group(1), {"ldg128": 0, "ldg64": 0, "ldg32-": 0, "stg128": 0, "stg64": 0, "stg32-": 0, "hmma": 0})
        continue
    if cur is None:
        continue
    m = re.search(r"\b(LDG|STG)(\.[A-Z0-9_.]+)?\s", line)
    if m:
        op, mods = m.group(1).lower(), (m.group(2) or "")
        width = "128" if ".128" in mods else "64" if ".64" in mods else "32-"
        cur[op + width] += 1
    if re.search(r"\bHMMA\b", line):
        cur["hmma"] += 1
names = sorted(set(info) | set(counts))
print(f"\n### {arch}\n")
print("| kernel | regs | smem B | stack B | spill st/ld B | LDG 128/64/<=32 | STG 128/64/<=32 | HMMA |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    i, c = info.get(n, {}), counts.get(n, {})
    g = lambda k: str(c.get(k, "?"))
    print(f"| {n} | {i.get('regs', '?')} | {i.get('smem', '?')} | {i.get('stack', '?')} | "
          f"{i.get('spill_st', '?')}/{i.get('spill_ld', '?')} | {g('ldg128')}/{g('ldg64')}/{g('ldg32-')} | "
          f"{g('stg128')}/{g('stg64')}/{g('stg32-')} | {g('hmma')} |")
spills = [n for n in names if info.get(n, {}).get("spill_st", "0") != "0" or info.get(n, {}).get("spill_ld", "0") != "0"]
print(f"\nspilling kernels on {arch}: {', '.join(spills) if spills else 'none'}")
PY
done
