#!/usr/bin/env python3
"""Issue 15's bf16 quality check: compare the validation losses of two `genesis train` runs.

  python3 scripts/quality_check.py FP32_RUN/metrics.jsonl BF16_RUN/metrics.jsonl

Passes (exit 0) when the bf16 validation loss is within 2% of the fp32 one at every evaluation
both runs made, and within 1% at the last; prints one line per evaluation and a verdict.
"""
import json
import sys


def val_losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("kind") == "val":
                out[r["step"]] = float(r["loss"])  # a resumed run's later record wins
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    fp32, bf16 = val_losses(sys.argv[1]), val_losses(sys.argv[2])
    steps = sorted(set(fp32) & set(bf16))
    if not steps:
        print("no evaluation step in common")
        return 1
    ok = True
    for s in steps:
        rel = abs(bf16[s] - fp32[s]) / fp32[s]
        last = s == steps[-1]
        limit = 0.01 if last else 0.02
        good = rel <= limit
        ok &= good
        print(f"step {s:>5}: fp32 {fp32[s]:.4f}  bf16 {bf16[s]:.4f}  {100 * rel:.2f}% (limit {100 * limit:.0f}%) {'ok' if good else 'FAIL'}")
    print("quality check:", "passed" if ok else "FAILED", f"({len(steps)} evaluations, last at step {steps[-1]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
