#!/usr/bin/env python3
"""Build tests/fixtures/hf_tiny/: a small random GPT-2 saved by Hugging Face transformers, and the loss
and logits transformers computes on a fixed token sequence, for tests/export.rs to check that
`weights::load` reads real Hugging Face files and the Genesis CPU forward agrees with transformers.

Regenerate (needs torch and transformers):

    python3 scripts/make_hf_fixture.py tests/fixtures/hf_tiny

The model: GPT2LMHeadModel with n_layer 2, n_embd 64, n_head 4, n_positions 64 and vocab_size 500
(not a multiple of 128, so Genesis pads it to 512), saved with save_pretrained(safe_serialization=True)
in float32 (about 0.55 MB). Every parameter is redrawn from seed 1234 with a larger spread than GPT-2's
init (weights N(0, 0.1), LayerNorm scales 1 + N(0, 0.1), biases N(0, 0.1)) so that a transposed or
misplaced tensor changes the loss visibly.

expected.json: "tokens" (33 ids drawn from seed 99), "loss" (the mean cross-entropy of predicting
tokens[1:] from tokens[:-1], as transformers' labels=tokens computes it, checked against it), "logits" as [position, token, value] triples,
and the library versions. The reference numbers are computed in float64 from the stored float32
weights, so they carry no float32 rounding of their own.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB, N_POS, N_EMBD, N_LAYER, N_HEAD = 500, 64, 64, 2, 4
SEQ = 33
LOGIT_POSITIONS = [0, 5, 17, 31]
LOGIT_TOKENS = [0, 1, 42, 250, 498, 499]


def build_model() -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(1234)
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.1
            if ".ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    return model.eval()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf_tiny")
    out.mkdir(parents=True, exist_ok=True)
    model = build_model()
    model.save_pretrained(out, safe_serialization=True)

    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(99))
    ref = GPT2LMHeadModel.from_pretrained(out).to(torch.float64).eval()
    with torch.no_grad():
        res = ref(input_ids=tokens, labels=tokens)
    logits = res.logits[0]
    # transformers' loss upcasts to float32 internally; recompute the same mean cross-entropy in float64.
    loss = torch.nn.functional.cross_entropy(logits[:-1], tokens[0, 1:]).item()
    assert abs(loss - res.loss.item()) < 1e-5 * abs(loss), (loss, res.loss.item())
    expected = {
        "tokens": tokens[0].tolist(),
        "loss": loss,
        "logits": [[p, t, logits[p, t].item()] for p in LOGIT_POSITIONS for t in LOGIT_TOKENS],
        "note": "loss: mean cross-entropy of tokens[1:] given tokens[:-1]; logits[p][t] at input position p; float64 reference",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}: loss {expected['loss']:.6f}")


if __name__ == "__main__":
    main()
