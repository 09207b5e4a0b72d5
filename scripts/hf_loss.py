#!/usr/bin/env python3
"""Print the loss Hugging Face transformers computes for a GPT-2 directory on a token sequence.

    python3 scripts/hf_loss.py DIR TOKEN TOKEN ...

Loads DIR with GPT2LMHeadModel.from_pretrained in float32 (a bf16 export is upcast, so the arithmetic
is float32 on the bf16-rounded weights), runs the tokens with labels=tokens (mean cross-entropy of
predicting tokens[1:] from tokens[:-1]) and prints one JSON line: {"loss": ..., "transformers": version}.
tests/export.rs runs it to check a `genesis export` against transformers.
"""

import json
import sys

import torch
import transformers
from transformers import GPT2LMHeadModel


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit("usage: hf_loss.py DIR TOKEN TOKEN ... (at least two tokens)")
    path, tokens = sys.argv[1], [int(t) for t in sys.argv[2:]]
    try:
        model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    ids = torch.tensor([tokens])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    print(json.dumps({"loss": loss, "dtype": str(next(model.parameters()).dtype), "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
