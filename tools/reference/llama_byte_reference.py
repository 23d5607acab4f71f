#!/usr/bin/python3
"""Reference fixture for tessera's Llama-style byte transformer (the llm.c pattern).

A tiny Llama (RMSNorm pre-norm, interleaved RoPE, grouped-query causal attention, SwiGLU, untied lm_head)
written from scratch in plain torch.nn, run in fp32 on the CPU. It writes one safetensors file with the
initial weights, a byte batch, the logits, the loss, every parameter gradient and a 5-step AdamW trajectory;
tests/models/test_llama_parity.cpp loads it into tessera::models::Llama and compares.

Run by hand with Debian's python (torch 1.13 CPU; no internet, no transformers, no safetensors needed):

    /usr/bin/python3 tools/reference/llama_byte_reference.py            # writes tests/fixtures/llama_byte_tiny.safetensors
    /usr/bin/python3 tools/reference/llama_byte_reference.py --check    # also reports fp32-vs-fp64 drift

The output is deterministic (fixed seed, one intra-op thread, no timestamps): two runs give identical bytes.
See tools/reference/README.md for the exact numerical conventions the C++ side must follow.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = {
    "vocab_size": 256,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "ffn_hidden": 160,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
SEED = 1234
B, T = 2, 32
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Tessera composes neural networks from small, tested building blocks.",
]
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "clip": 1.0, "steps": 5}

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "llama_byte_tiny.safetensors")


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x * rsqrt(mean(x^2) + eps) * w, in the input dtype (fp32 for the fixture).
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_table(T, head_dim, theta, dtype):
    """cos/sin of pos * theta^(-2i/head_dim) for pos < T, i < head_dim/2: computed in float64, cast to dtype."""
    half = head_dim // 2
    cos = torch.empty(T, half, dtype=torch.float64)
    sin = torch.empty(T, half, dtype=torch.float64)
    for i in range(half):
        inv_freq = math.pow(theta, -2.0 * i / head_dim)
        for p in range(T):
            a = p * inv_freq
            cos[p, i] = math.cos(a)
            sin[p, i] = math.sin(a)
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x, cos, sin):
    """Meta's interleaved layout: x [B, T, H, Dh], pairs (x[2i], x[2i+1]) rotated by angle pos * freq_i."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h, kv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, d // h
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin):
        Bn, Tn, _ = x.shape
        q = self.q_proj(x).view(Bn, Tn, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(Bn, Tn, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(Bn, Tn, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: query head h reads kv head h // (n_heads / n_kv_heads).
        rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask = torch.ones(Tn, Tn, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(Bn, Tn, self.n_heads * self.head_dim)  # head-major features
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["dim"], cfg["ffn_hidden"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["dim"])
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.norm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.lm_head = nn.Linear(cfg["dim"], cfg["vocab_size"], bias=False)

    def forward(self, ids):
        head_dim = self.cfg["dim"] // self.cfg["n_heads"]
        dtype = self.embed_tokens.weight.dtype
        cos, sin = rope_table(ids.shape[1], head_dim, self.cfg["rope_theta"], dtype)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def init_weights(model):
    """N(0, 0.02) for matrices, 1 + 0.1 N(0, 1) for norm weights (so their gradients are non-trivial).
    Drawn in named_parameters() order after torch.manual_seed(SEED)."""
    torch.manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
            else:
                p.copy_(0.02 * torch.randn(p.shape))


def make_batch():
    rows = [s.encode("utf-8") for s in SENTENCES]
    assert len(rows) == B and all(len(r) >= T + 1 for r in rows)
    data = torch.tensor([list(r[: T + 1]) for r in rows], dtype=torch.int64)
    return data[:, :T].contiguous(), data[:, 1 : T + 1].contiguous()


def loss_fn(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # mean over B*T


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": ADAMW["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"], foreach=False)


def run(dtype, initial=None):
    """Forward/backward at the initial weights, then the AdamW trajectory. Returns a dict of tensors."""
    model = Llama(CONFIG)
    init_weights(model)
    if initial is not None:
        model.load_state_dict(initial)
    model = model.to(dtype)
    inputs, targets = make_batch()
    out = {name: p.detach().clone() for name, p in model.named_parameters()}
    out["inputs"], out["targets"] = inputs, targets

    logits = model(inputs)
    loss = loss_fn(logits, targets)
    loss.backward()
    out["logits"] = logits.detach().clone()
    out["loss"] = loss.detach().clone().reshape(())
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.detach().clone()

    opt = make_optimizer(model)
    losses = []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=False)
        step_loss = loss_fn(model(inputs), targets)
        losses.append(step_loss.item())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ADAMW["clip"])
        opt.step()
    out["adamw.losses"] = torch.tensor(losses, dtype=dtype)
    for name, p in model.named_parameters():
        out["adamw.final." + name] = p.detach().clone()
    return model, out


# ---------------------------------------------------------------------------------------------------------
# safetensors writer (pure python; the `safetensors` package is not required)
# ---------------------------------------------------------------------------------------------------------
_DTYPES = {torch.float32: ("F32", "<f4"), torch.float64: ("F64", "<f8"), torch.int64: ("I64", "<i8")}


def write_safetensors(path, tensors, metadata):
    """8-byte LE header length, JSON header (space-padded to 8 bytes), then the raw little-endian data in
    insertion order."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors.items():
        dtype, np_dtype = _DTYPES[t.dtype]
        data = t.detach().contiguous().numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """Reads the file back (round-trip check of the writer)."""
    import numpy as np

    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    np_types = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np_types[h["dtype"]]).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


# ---------------------------------------------------------------------------------------------------------
def rel_to_max(a, b):
    """max |a - b| / max |b| over the tensor (the norm the C++ test uses for gradients and weights)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rel_elementwise(a, b, floor=1e-3):
    """max |a - b| / max(|b|, floor) (the norm the C++ test uses for logits and losses)."""
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(floor)).max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="rerun in float64 and report the fp32 drift")
    args = ap.parse_args()

    torch.set_num_threads(1)  # identical reductions on every machine -> byte-identical output
    torch.use_deterministic_algorithms(True)

    model, out = run(torch.float32)
    names = [n for n, _ in model.named_parameters()]
    ordered = {}
    for n in names:
        ordered[n] = out[n]
    for k in ("inputs", "targets", "logits", "loss"):
        ordered[k] = out[k]
    for n in names:
        ordered["grad." + n] = out["grad." + n]
    ordered["adamw.losses"] = out["adamw.losses"]
    for n in names:
        ordered["adamw.final." + n] = out["adamw.final." + n]
    ordered["logits"] = ordered["logits"].reshape(B, T, CONFIG["vocab_size"])

    metadata = {
        "config": json.dumps(CONFIG, sort_keys=True),
        "generator": "tools/reference/llama_byte_reference.py",
        "torch": torch.__version__,
        "seed": str(SEED),
        "batch": json.dumps({"B": B, "T": T, "sentences": SENTENCES}),
        "adamw": json.dumps(ADAMW),
    }
    write_safetensors(args.out, ordered, metadata)

    back, meta = read_safetensors(args.out)
    assert meta == metadata and list(back) == list(ordered)
    for k, v in ordered.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    n_params = sum(out[n].numel() for n in names)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes, {len(ordered)} tensors, {n_params} parameters")
    print(f"loss {out['loss'].item():.7f}; adamw losses " + " ".join(f"{x:.7f}" for x in out["adamw.losses"].tolist()))

    if args.check:
        # Same initial fp32 weights, everything else in float64: how far fp32 rounding alone moves each quantity.
        initial = {n: out[n] for n in names}
        _, ref = run(torch.float64, initial)
        print("fp32 vs fp64 (same initial weights):")
        print(f"  logits   max|a-b|/max(|b|,1e-3) = {rel_elementwise(out['logits'], ref['logits']):.3e}")
        print(f"  loss     rel                    = {rel_elementwise(out['loss'], ref['loss']):.3e}")
        g = max(rel_to_max(out['grad.' + n], ref['grad.' + n]) for n in names)
        print(f"  grads    max over params of max|a-b|/max|b| = {g:.3e}")
        print(f"  adamw losses rel                = {rel_elementwise(out['adamw.losses'], ref['adamw.losses']):.3e}")
        w = [(rel_to_max(out['adamw.final.' + n], ref['adamw.final.' + n]), n) for n in names]
        print(f"  adamw final weights max|a-b|/max|b| = {max(w)[0]:.3e} ({max(w)[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
