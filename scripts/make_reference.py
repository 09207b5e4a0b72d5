#!/usr/bin/env python3
"""Build the PyTorch reference fixture that tests/pytorch_reference.rs checks Genesis against.

Regenerate (needs PyTorch; nothing else beyond the standard library):

    cargo run --release --example write_tiny_reference_inputs -- /tmp/ref && python3 scripts/make_reference.py /tmp/ref tests/fixtures/tiny_reference.safetensors

Inputs, written by the example: IN_DIR/model.bin (llm.c v3 fp32 model file of init_params(tiny, 1337))
and IN_DIR/tokens.bin (little-endian u32, B=4 rows of T+1=33 tokens).

The model is a small GPT-2 written here from scratch (no transformers), run in float64 from the f32
weights: pre-LN blocks, LayerNorm eps 1e-5, tanh GELU, causal attention scaled by 1/sqrt(head_size),
logits = ln_f(x) @ wte[:V].T over the real vocabulary only, mean cross-entropy over the B*T positions.
On the fixed batch it records the logits, the loss and the gradient of every one of the 16 parameter
tensors (llm.c order; padded wte rows included), then takes 10 AdamW steps on the same batch
(torch.optim.AdamW lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight decay 0.1 on wte, wpe, qkvw, attprojw,
fcw, fcprojw and 0 on the rest, clip_grad_norm_(1.0) before each step, constant lr), recording the loss
and the pre-clip gradient norm before each update and the parameters after the last one.

Stored tensors: "tokens" (I32, B x 33), "logits", "loss" ([1]), "grad.<name>" for the 16 tensors,
"adamw_losses" (10), "adamw_grad_norms" (10) and "adamw_final.<name>" for the 16 tensors.

Output: a safetensors file written by hand (u64 LE header length, JSON header, data), every float stored
as F32. Tensors with more than 65536 elements are subsampled: every k-th element of the flattened tensor
from 0, k = ceil(len / 65536), with k recorded in the metadata as "stride.<name>" (and the full shape as
"shape.<name>"). The metadata's "weights_crc32" is zlib.crc32 of model.bin after its 1024-byte header.
"""

import json
import math
import struct
import sys
import zlib
from pathlib import Path

import torch

MAGIC = 20240326
HEADER_BYTES = 1024
B, T = 4, 32
SEED = 1337
TOKEN_SEED = 7
LR = 1e-3
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
STEPS = 10
LN_EPS = 1e-5
MAX_STORED = 65536
COMMAND = (
    "cargo run --release --example write_tiny_reference_inputs -- /tmp/ref && "
    "python3 scripts/make_reference.py /tmp/ref tests/fixtures/tiny_reference.safetensors"
)

NAMES = [
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
]
DECAYS = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}


def shapes(cfg):
    vp, t, l, c = cfg["padded_vocab_size"], cfg["max_seq_len"], cfg["num_layers"], cfg["channels"]
    return {
        "wte": [vp, c], "wpe": [t, c],
        "ln1w": [l, c], "ln1b": [l, c],
        "qkvw": [l, 3 * c, c], "qkvb": [l, 3 * c],
        "attprojw": [l, c, c], "attprojb": [l, c],
        "ln2w": [l, c], "ln2b": [l, c],
        "fcw": [l, 4 * c, c], "fcb": [l, 4 * c],
        "fcprojw": [l, c, 4 * c], "fcprojb": [l, c],
        "lnfw": [c], "lnfb": [c],
    }


def read_model(path):
    raw = Path(path).read_bytes()
    if len(raw) < HEADER_BYTES:
        sys.exit(f"{path}: too short for an llm.c model file ({len(raw)} bytes)")
    header = struct.unpack("<256i", raw[:HEADER_BYTES])
    if header[0] != MAGIC:
        sys.exit(f"{path}: bad magic {header[0]} (expected {MAGIC})")
    if header[1] != 3:
        sys.exit(f"{path}: version {header[1]}; this script reads fp32 (version 3) files only")
    cfg = {
        "max_seq_len": header[2], "vocab_size": header[3], "num_layers": header[4],
        "num_heads": header[5], "channels": header[6], "padded_vocab_size": header[7],
    }
    data = raw[HEADER_BYTES:]
    shp = shapes(cfg)
    total = sum(math.prod(s) for s in shp.values())
    if len(data) != 4 * total:
        sys.exit(f"{path}: size mismatch: expected {HEADER_BYTES + 4 * total} bytes, found {len(raw)}")
    if sys.byteorder != "little":
        sys.exit("this script assumes a little-endian host (torch.frombuffer reads native order)")
    flat = torch.frombuffer(bytearray(data), dtype=torch.float32)
    params, off = {}, 0
    for name in NAMES:
        n = math.prod(shp[name])
        params[name] = flat[off:off + n].reshape(shp[name]).to(torch.float64).clone()
        off += n
    return cfg, params, zlib.crc32(data)


def read_tokens(path):
    raw = Path(path).read_bytes()
    if len(raw) != 4 * B * (T + 1):
        sys.exit(f"{path}: expected {4 * B * (T + 1)} bytes ({B} x {T + 1} u32), found {len(raw)}")
    toks = struct.unpack(f"<{B * (T + 1)}I", raw)
    return torch.tensor(toks, dtype=torch.int64).reshape(B, T + 1)


def layernorm(x, w, b):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, p, inputs):
    """inputs (B,T) -> logits (B,T,V) over the real vocabulary."""
    bsz, t = inputs.shape
    c, nh, v = cfg["channels"], cfg["num_heads"], cfg["vocab_size"]
    hs = c // nh
    x = p["wte"][inputs] + p["wpe"][:t]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for l in range(cfg["num_layers"]):
        h = layernorm(x, p["ln1w"][l], p["ln1b"][l])
        qkv = h @ p["qkvw"][l].T + p["qkvb"][l]
        q, k, vv = qkv.split(c, dim=-1)
        q, k, vv = (z.reshape(bsz, t, nh, hs).transpose(1, 2) for z in (q, k, vv))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ vv).transpose(1, 2).reshape(bsz, t, c)
        x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
        h = layernorm(x, p["ln2w"][l], p["ln2b"][l])
        f = gelu_tanh(h @ p["fcw"][l].T + p["fcb"][l])
        x = x + f @ p["fcprojw"][l].T + p["fcprojb"][l]
    x = layernorm(x, p["lnfw"], p["lnfb"])
    return x @ p["wte"][:v].T


def mean_loss(logits, targets):
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), reduction="mean")


class SafetensorsWriter:
    def __init__(self):
        self.entries = []  # (name, dtype, shape, bytes)
        self.metadata = {}

    def add_f32(self, name, tensor, subsample=True):
        flat = tensor.detach().reshape(-1).to(torch.float64)
        n = flat.numel()
        if subsample and n > MAX_STORED:
            k = -(-n // MAX_STORED)
            flat = flat[::k]
            self.metadata[f"stride.{name}"] = str(k)
            self.metadata[f"shape.{name}"] = json.dumps(list(tensor.shape))
            shape = [flat.numel()]
        else:
            shape = list(tensor.shape)
        vals = flat.tolist()
        self.entries.append((name, "F32", shape, struct.pack(f"<{len(vals)}f", *vals)))

    def add_i32(self, name, tensor):
        vals = tensor.reshape(-1).tolist()
        self.entries.append((name, "I32", list(tensor.shape), struct.pack(f"<{len(vals)}i", *vals)))

    def write(self, path):
        header, off = {}, 0
        for name, dtype, shape, data in self.entries:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
            off += len(data)
        header["__metadata__"] = self.metadata
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * (-len(hbytes) % 8)  # pad so the data starts 8-byte aligned
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for _, _, _, data in self.entries:
                f.write(data)
        tmp.replace(path)
        return 8 + len(hbytes) + off


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} IN_DIR OUT.safetensors\n\n{__doc__}")
    in_dir, out = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)  # nothing here is random; set anyway so the run is reproducible
    cfg, init, crc = read_model(in_dir / "model.bin")
    tokens = read_tokens(in_dir / "tokens.bin")
    inputs, targets = tokens[:, :T], tokens[:, 1:]
    if int(tokens.max()) >= cfg["vocab_size"]:
        sys.exit("token outside the vocabulary")

    # Forward, loss and gradients at the initial weights.
    params = {n: init[n].clone().requires_grad_(True) for n in NAMES}
    logits = forward(cfg, params, inputs)
    loss = mean_loss(logits, targets)
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in NAMES}
    print(f"loss {loss.item():.10f}")

    # 10 AdamW steps on the same batch, in float64.
    params = [init[n].clone().requires_grad_(True) for n in NAMES]
    by_name = dict(zip(NAMES, params))
    opt = torch.optim.AdamW(
        [
            {"params": [by_name[n] for n in NAMES if n in DECAYS], "weight_decay": WEIGHT_DECAY},
            {"params": [by_name[n] for n in NAMES if n not in DECAYS], "weight_decay": 0.0},
        ],
        lr=LR, betas=BETAS, eps=EPS,
    )
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        step_loss = mean_loss(forward(cfg, by_name, inputs), targets)
        step_loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        losses.append(step_loss.item())
        norms.append(norm.item())
        print(f"step {step}: loss {losses[-1]:.10f} grad norm {norms[-1]:.6f}")

    w = SafetensorsWriter()
    w.add_i32("tokens", tokens)
    w.add_f32("logits", logits)
    w.add_f32("loss", loss.detach().reshape(1))
    for n in NAMES:
        w.add_f32(f"grad.{n}", grads[n])
    w.add_f32("adamw_losses", torch.tensor(losses, dtype=torch.float64))
    w.add_f32("adamw_grad_norms", torch.tensor(norms, dtype=torch.float64))
    for n in NAMES:
        w.add_f32(f"adamw_final.{n}", by_name[n])
    w.metadata.update({
        "weights_crc32": str(crc),
        "config": json.dumps(cfg, sort_keys=True),
        "model": "tiny",
        "B": str(B),
        "T": str(T),
        "seed": str(SEED),
        "token_seed": str(TOKEN_SEED),
        "lr": repr(LR),
        "betas": json.dumps(list(BETAS)),
        "eps": repr(EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "max_grad_norm": repr(MAX_GRAD_NORM),
        "adamw_steps": str(STEPS),
        "decayed": ",".join(n for n in NAMES if n in DECAYS),
        "reference_dtype": "float64",
        "torch_version": torch.__version__,
        "command": COMMAND,
    })
    size = w.write(out)
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main()
