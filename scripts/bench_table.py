#!/usr/bin/env python3
"""The closing table of scripts/gpu-verify.sh: one row per benchmark log in a directory.

  python3 scripts/bench_table.py OUT_DIR

Reads OUT_DIR/bench-*.log (the last `bench train ...` line genesis prints; *-profile logs are left
out, their headline repeats another row) and OUT_DIR/torch-*.log (the last JSON line of
../shared/bench/torch_reference.py train), and prints engine/config, tokens/s, MFU, memory and the
ratio of tokens/s to torch.compile's. A log that is missing or holds no result (a failed step)
gives a row of "-". MFU of the PyTorch rows uses the bf16 peak that the Genesis rows imply
(TFLOP/s over MFU); memory is GB (1e9 bytes): for Genesis the device memory the run holds, for
PyTorch its peak allocated (converted from GiB).
"""
import glob
import json
import os
import re
import sys

GENESIS = re.compile(
    r"bench train (?P<model>\S+) on .*?\((?P<prec>[^()]*)\), batch (?P<batch>\d+) seq (?P<seq>\d+)(?P<extra>[^:]*): "
    r"(?P<ms>[\d.]+) ms/step, (?P<tok>[\d.]+) tokens/s, (?P<tflops>[\d.]+) TFLOP/s(?:, MFU (?P<mfu>[\d.]+)%)?, "
    r"(?P<mem>[\d.]+) GB of device memory"
)


def last_match(path, pattern):
    found = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = pattern.search(line)
                if m:
                    found = m
    except OSError:
        pass
    return found


def last_json(path):
    found = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    if d.get("bench") == "torch-train":
                        found = d
    except OSError:
        pass
    return found


def rows(out_dir):
    """[(name, tokens/s or None, tflops or None, mfu % or None, memory GB or None)], Genesis first."""
    result = []
    for path in sorted(glob.glob(os.path.join(out_dir, "bench-*.log"))):
        name = os.path.basename(path)[len("bench-") : -len(".log")]
        if name.endswith("profile"):
            continue
        m = last_match(path, GENESIS)
        if m is None:
            result.append(("genesis " + name, None, None, None, None))
            continue
        mfu = float(m["mfu"]) if m["mfu"] else None
        result.append(("genesis " + name, float(m["tok"]), float(m["tflops"]), mfu, float(m["mem"])))
    for path in sorted(glob.glob(os.path.join(out_dir, "torch-*.log"))):
        name = os.path.basename(path)[: -len(".log")]
        d = last_json(path)
        if d is None:
            result.append((name, None, None, None, None))
            continue
        mem = d.get("peak_mem_gib")
        result.append((name, float(d["tokens_per_s"]), float(d["tflops"]), None, mem * 2**30 / 1e9 if mem else None))
    return result


def table(out_dir):
    rs = rows(out_dir)
    peaks = [tf / (mfu / 100) for _, _, tf, mfu, _ in rs if tf and mfu]
    peak = peaks[0] if peaks else None
    compiled = next((tok for name, tok, *_ in rs if name == "torch-compile" and tok), None)
    fmt = lambda x, spec, unit="": "-" if x is None else format(x, spec) + unit
    lines = [
        f"{'engine/config':<28} {'tokens/s':>10} {'MFU':>7} {'memory GB':>10} {'vs torch.compile':>17}",
    ]
    for name, tok, tf, mfu, mem in rs:
        if mfu is None and tf is not None and peak:
            mfu = 100 * tf / peak
        ratio = tok / compiled if tok and compiled else None
        lines.append(
            f"{name:<28} {fmt(tok, '.0f'):>10} {fmt(mfu, '.1f', '%'):>7} {fmt(mem, '.2f'):>10} {fmt(ratio, '.2f', 'x'):>17}"
        )
    if not rs:
        lines.append("(no bench-*.log or torch-*.log in " + out_dir + ")")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(sys.argv[1]))
