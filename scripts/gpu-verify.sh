#!/usr/bin/env bash
# Everything a GPU session should check, in one device call (device time is scarce).
#
# Here (no GPU needed):   ../shared/tools/gpu-stage, then keep .gpu/tests/gpu_ops-* and the
#                         CLI-spawning test binaries (resume-*) so .gpu stays under 64 MiB, and
#                         copy ../shared/data/*.{txt,raw} into .gpu/shared-data/ and
#                         ../shared/bench/torch_reference.py into .gpu/shared-bench/ (../shared
#                         does not travel to the device).
# There (device run):     bash scripts/gpu-verify.sh        (carry [".gpu"]; logs land in $OUT)
#
# Steps, each logged to <step>.log and summarised in summary.txt, in $OUT (the logs packed into
# $OUT/logs.tgz at the end, as the device tool returns at most 8 files), in order of importance,
# each later one only if the 570 s budget still has room for it (`maybe`):
#   1. every GPU test (fp32 and bf16; --include-ignored, as they are #[ignore]d where no GPU is;
#      GENESIS_REQUIRE_GPU=1, so a skip is a failure), at most 360 s
#   2. the CLI tests that train through the binary (--device auto picks the GPU there)
#   3. genesis bench train, gpt2-124m seq 1024 batch 16: bf16 and fp32+TF32; PyTorch eager and
#      compiled on the same GPU
#   4. the opt-in paths: bf16 with --sync step, --sync graph, --kernels vector, --gelu-fusion
#      forward and both, --bias-grad epilogue (alone and with both), --attention flash,
#      all of them at batch 32; bf16 at batch 32; the per-family profiles (scalar micro, and vector
#      under --sync step, whose host syncs per step should read 1)
#   5. the bf16/fp32 quality check (300 steps each; scripts/quality_check.py), then
#      compute-sanitizer racecheck of flash attention
#   6. one closing table of every bench-*.log and torch-*.log (scripts/bench_table.py): tokens/s,
#      MFU, memory and the ratio to torch.compile; "-" where a step failed or was skipped
# A failing step does not stop the later ones; the exit status says whether any failed.
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -x .gpu/bin/genesis ] || ! command -v nvidia-smi >/dev/null; then
  echo "gpu-verify: run it on the GPU machine after ../shared/tools/gpu-stage (needs .gpu/bin/genesis and nvidia-smi)" >&2
  exit 2
fi
out=${OUT:-/tmp/gpu-verify}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
rc=0
step() {
  local name=$1
  shift
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then
    echo "ok    $name ($((SECONDS - t0)) s)" >>"$summary"
  else
    echo "FAIL  $name ($((SECONDS - t0)) s): see $name.log" >>"$summary"
    rc=1
  fi
}
# The device tool gives one call 600 s; the script keeps 30 s for the table and the packing.
# `maybe NEED name cmd...` runs a step only when at least NEED seconds of that are left (the
# steps come in order of importance), and otherwise says it was skipped for time.
budget=${GPU_VERIFY_BUDGET:-570}
maybe() {
  local need=$1
  shift
  if [ $((budget - SECONDS)) -ge "$need" ]; then
    step "$@"
  else
    echo "skip  $1: under $need s of the ${budget} s budget left" >>"$summary"
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$summary" 2>&1
if [ -d .gpu/shared-data ]; then
  mkdir -p ../shared/data && cp -n .gpu/shared-data/* ../shared/data/ 2>/dev/null
fi
# Tests that spawn the CLI look for it where cargo builds it.
mkdir -p target/release && cp .gpu/bin/genesis target/release/

for t in .gpu/tests/gpu_ops-*; do
  step gpu-tests timeout 360 bash .gpu/env.sh "$t" --test-threads=1 --include-ignored
done
for t in .gpu/tests/resume-*; do
  [ -e "$t" ] && step cli-resume bash .gpu/env.sh "$t" --test-threads=1 --include-ignored
done

bench() { bash .gpu/env.sh .gpu/bin/genesis bench train --device cuda --model gpt2-124m --seq 1024 --steps 10 "$@"; }
maybe 30 bench-bf16-b16 bench --batch 16 --precision bf16
maybe 30 bench-fp32-b16 bench --batch 16 --precision fp32
ref=.gpu/shared-bench/torch_reference.py
[ -f "$ref" ] || ref=../shared/bench/torch_reference.py
if [ -f "$ref" ]; then
  maybe 40 torch-eager python3 "$ref" train --batch 16 --seq 1024
  maybe 120 torch-compile python3 "$ref" train --batch 16 --seq 1024 --compile
else
  echo "skip  torch reference: $ref not found" >>"$summary"
fi
# Issue 15 §2/§3 and issue 16, opt-in until verified: the whole step queued with one host sync
# (step), the same with CUDA graphs (graph), the vectorised kernels, flash attention, and all of
# them together at batch 32; then the per-family profiles (host syncs per step: 1 under step).
maybe 30 bench-bf16-b16-step bench --batch 16 --precision bf16 --sync step
maybe 30 bench-bf16-b16-graph bench --batch 16 --precision bf16 --sync graph
maybe 30 bench-bf16-b16-vector bench --batch 16 --precision bf16 --kernels vector
maybe 30 bench-bf16-b16-gelu-forward bench --batch 16 --precision bf16 --gelu-fusion forward
maybe 30 bench-bf16-b16-gelu-both bench --batch 16 --precision bf16 --gelu-fusion both
maybe 30 bench-bf16-b16-bgrad bench --batch 16 --precision bf16 --bias-grad epilogue
maybe 30 bench-bf16-b16-gelu-both-bgrad bench --batch 16 --precision bf16 --gelu-fusion both --bias-grad epilogue
maybe 30 bench-bf16-flash-b16 bench --batch 16 --precision bf16 --attention flash
maybe 40 bench-bf16-flash-b32-all bench --batch 32 --precision bf16 --attention flash --kernels vector --sync graph --gelu-fusion both --bias-grad epilogue
maybe 40 bench-bf16-b32 bench --batch 32 --precision bf16
maybe 40 bench-bf16-b16-profile bench --batch 16 --precision bf16 --profile
maybe 40 bench-bf16-b16-vector-step-profile bench --batch 16 --precision bf16 --kernels vector --sync step --profile
# Issue 15's quality check: gpt2-124m, seq 1024, 300 steps on the built-in tiny Shakespeare, same
# seed, fp32 then bf16; bf16's val loss within 2% of fp32's at every evaluation, 1% at the end.
# Runs live in /tmp (a checkpoint is 1.5 GB); their metrics and loss plots come back in $OUT.
quality() {
  bash .gpu/env.sh .gpu/bin/genesis train --device cuda --model gpt2-124m --seq 1024 --batch 16 \
    --steps 300 --data shakespeare --eval-every 50 --eval-batches 10 --ckpt-every 0 --keep 1 \
    --seed 1 --out "/tmp/quality-$1" --fresh --precision "$1" || return 1
  cp "/tmp/quality-$1/metrics.jsonl" "$out/quality-$1.jsonl"
  bash .gpu/env.sh .gpu/bin/genesis plot "/tmp/quality-$1" --out "$out/quality-$1.svg"
}
maybe 150 quality-fp32 quality fp32
maybe 90 quality-bf16 quality bf16
maybe 5 quality-check python3 scripts/quality_check.py "$out/quality-fp32.jsonl" "$out/quality-bf16.jsonl"
# Last, as it is slow and optional: a race check of the flash kernels on the small test shapes
# (T <= 200), when compute-sanitizer is there and the 10-minute call has time left.
if command -v compute-sanitizer >/dev/null && [ $((budget - SECONDS)) -ge 120 ]; then
  for t in .gpu/tests/gpu_ops-*; do
    GENESIS_FLASH_SMALL=1 step flash-racecheck timeout $((budget - SECONDS)) bash .gpu/env.sh compute-sanitizer \
      --tool racecheck --error-exitcode 1 "$t" --test-threads=1 --include-ignored \
      flash_attention_forward_matches flash_attention_backward_matches
  done
else
  echo "skip  flash-racecheck: no compute-sanitizer, or under 2 minutes of the budget left" >>"$summary"
fi
grep -h "bench train\|tokens/s" "$out"/bench-*.log "$out"/torch-*.log >>"$summary" 2>/dev/null
cat "$out/quality-check.log" >>"$summary" 2>/dev/null
{
  echo
  echo "closing table (gpt2-124m, seq 1024):"
  python3 scripts/bench_table.py "$out" 2>&1 || echo "bench_table.py failed"
} >>"$summary"
cat "$summary"
# The device tool brings back at most 8 files from $OUT: keep summary.txt, pack every log, metrics
# file and plot into logs.tgz.
(cd "$out" && tar czf /tmp/gpu-verify-logs.tgz --exclude=./summary.txt . &&
  find . -type f ! -name summary.txt -delete && find . -mindepth 1 -type d -empty -delete &&
  mv /tmp/gpu-verify-logs.tgz logs.tgz) || echo "gpu-verify: could not pack the logs in $out" >&2
exit $rc
