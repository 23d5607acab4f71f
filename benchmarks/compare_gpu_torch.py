#!/usr/bin/env python3
"""PyTorch / transformers baselines on the GPU for tessera's CUDA backend (scripts/gpu-check runs it when torch
with CUDA is importable; by hand: `python3 benchmarks/compare_gpu_torch.py --parts attention,llama,blt`).

Parts (each prints markdown table rows starting with '|', like bench_cuda, and one JSON line per measurement
starting with 'json:'):
- attention: torch SDPA (flash backend), bf16, causal, B=4 T=4096 H=16 Dh in {64, 128}; forward and forward +
  backward, TFLOP/s with bench_cuda's convention (forward 4 Dh FLOPs per allowed (query, key) pair, backward
  2.5x the forward).
- llama: the Llama-style stack of the CUDA issue at 1B shape (d 2048, 25 layers, 16 heads, SwiGLU 5632, vocab
  256, no biases, RMSNorm, RoPE), batch 4 x 4096, one training step = forward + cross-entropy + backward +
  global-norm clipping (1.0) + fused AdamW — the step tessera's model_cuda_step times; the runs before
  2026-11-28 left the clipping out on this side only — PyTorch eager with SDPA. --llama-dtype bf16 (default): autocast bf16 compute, fp32 master weights and
  optimizer state (the mixed-precision recipe); fp32: fp32 everything, TF32 off (the same arithmetic as
  tessera's fp32 CUDA path). Reports ms/step, tokens/s and MFU against the card's dense bf16 peak.
- blt: transformers' BltForCausalLM at BLT-1B's shape (spec blt.md 7.1: local 1024, global 2048 x 25, decoder
  9 layers, 6 hash tables of 500002 rows, entropy model 768 x 14) with random bf16 weights: forward bytes/s at
  T=4096 (patcher included), generate(use_cache=False) bytes/s (what the HF BLT docs require), and one training
  step (forward with labels + backward) in ms.

Timing: CUDA events around each call, median of --repeats after --warmup calls, torch.cuda.synchronize() first.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def emit(row, record):
    print(row, flush=True)
    print("json: " + json.dumps(record), flush=True)


# ---- attention ------------------------------------------------------------------------------------------


def part_attention(args):
    B, T, H = 4, args.attn_seq, 16
    pairs = B * H * T * (T + 1) // 2  # causal
    for Dh in (64, 128):
        q, k, v = (torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16)
        fwd_flops = 4 * Dh * pairs
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            t_f = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.warmup, args.repeats)

            def fb():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                o.backward(do)

            t_fb = timed(fb, args.warmup, args.repeats)
        t_b = max(t_fb - t_f, 1e-9)
        shape = f"B={B} T={T} H={H} Dh={Dh} causal"
        emit(f"| torch SDPA flash fwd bf16 | {shape} | {t_f * 1e3:.3f} ms | {fwd_flops / t_f / 1e12:.1f} TFLOP/s |",
             {"part": "attention", "dir": "fwd", "Dh": Dh, "T": T, "seconds": t_f,
              "tflops": fwd_flops / t_f / 1e12})
        emit(f"| torch SDPA flash bwd bf16 | {shape} | {t_b * 1e3:.3f} ms | "
             f"{2.5 * fwd_flops / t_b / 1e12:.1f} TFLOP/s |",
             {"part": "attention", "dir": "bwd", "Dh": Dh, "T": T, "seconds": t_b,
              "tflops": 2.5 * fwd_flops / t_b / 1e12})
        del q, k, v, do
        torch.cuda.empty_cache()


# ---- Llama-style stack ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rope_tables(T, Dh, theta, device):
    inv = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float64, device=device) / Dh)
    ang = torch.arange(T, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):  # interleaved pairs (Meta layout); x [B, H, T, Dh]
    x2 = x.float().unflatten(-1, (-1, 2))
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(a)
        g, u = self.gate_up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, vocab, d, layers, heads, ffn):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.dh = d // heads

    def forward(self, ids):
        cos, sin = rope_tables(ids.shape[1], self.dh, 10000.0, ids.device)
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.head(self.norm(x))


def part_llama(args):
    d, L, H, ffn, V = 2048, args.llama_layers, 16, 5632, 256
    B, T = args.llama_batch, args.llama_seq
    torch.manual_seed(0)
    model = Llama(V, d, L, H, ffn).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, V, (B, T), device="cuda")
    tgt = torch.randint(0, V, (B, T), device="cuda")
    bf16 = args.llama_dtype == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids)
            loss = F.cross_entropy(logits.float().view(-1, V), tgt.view(-1))
        loss.backward()
        # The same step as tessera's model_cuda_step: global-norm clipping to 1.0 before AdamW.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = timed(step, args.warmup, args.repeats)
    tokens = B * T
    flops = 6 * n_params * tokens + 3 * L * 4 * d * B * T * (T + 1) // 2  # matmuls + causal attention
    peak = args.peak_tflops * 1e12
    emit(f"| torch Llama-1B step {args.llama_dtype} (eager, SDPA, clip, fused AdamW) | d{d} L{L} H{H} ffn{ffn}, "
         f"{B}x{T} | {t * 1e3:.1f} ms | {tokens / t:,.0f} tok/s, MFU {flops / t / peak * 100:.1f}% |",
         {"part": "llama", "dtype": args.llama_dtype, "params": n_params, "batch": B, "seq": T, "seconds": t,
          "tokens_per_s": tokens / t, "mfu": flops / t / peak, "peak_memory_gib":
          torch.cuda.max_memory_allocated() / 2**30})
    del model, opt
    torch.cuda.empty_cache()


# ---- BLT through transformers -----------------------------------------------------------------------------


def blt_1b_config(hash_vocab):
    from transformers import BltConfig
    rope = {"rope_theta": 500000.0, "rope_type": "default"}

    def sub(d, heads, layers, ffn, **kw):
        c = {"hidden_size": d, "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": d // heads,
             "num_hidden_layers": layers, "intermediate_size": ffn, "rms_norm_eps": 1e-5, "rope_parameters": rope,
             "vocab_size": 260, "max_position_embeddings": 24576}
        c.update(kw)
        return c

    return BltConfig(
        vocab_size=260, cross_attn_k=2, patch_in_forward=True, patch_size=4, patching_mode="entropy",
        patching_threshold=1.335442066192627, encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=hash_vocab, encoder_hash_byte_group_nb_functions=1,
        encoder_config=sub(1024, 16, 1, 2816, hidden_size_global=2048, cross_attn_all_layers=False, cross_attn_k=2),
        decoder_config=sub(1024, 16, 9, 2816, hidden_size_global=2048, cross_attn_all_layers=True, cross_attn_k=2),
        global_config=sub(2048, 16, 25, 5632, max_position_embeddings=4096),
        patcher_config=sub(768, 12, 14, 2048, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                           max_position_embeddings=8192),
        tie_word_embeddings=False)


def part_blt(args):
    from transformers import BltForCausalLM
    torch.manual_seed(0)
    cfg = blt_1b_config(args.blt_hash_vocab)
    with torch.device("cuda"):
        model = BltForCausalLM(cfg).to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    T = args.blt_seq
    ids = torch.randint(4, 260, (1, T), device="cuda")
    with torch.no_grad():
        t_fwd = timed(lambda: model(input_ids=ids, use_cache=False), args.warmup, args.repeats)
    emit(f"| transformers BltForCausalLM forward bf16 | BLT-1B shape ({n_params / 1e9:.2f} B params), T={T} | "
         f"{t_fwd * 1e3:.1f} ms | {T / t_fwd:,.0f} bytes/s |",
         {"part": "blt", "what": "forward", "params": n_params, "T": T, "seconds": t_fwd, "bytes_per_s": T / t_fwd})
    prompt = ids[:, : args.blt_gen_prompt]
    new = args.blt_gen_new
    with torch.no_grad():
        t_gen = timed(lambda: model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                             use_cache=False, pad_token_id=0), 1, max(1, args.repeats // 3))
    emit(f"| transformers BltForCausalLM generate(use_cache=False) bf16 | prompt {prompt.shape[1]}, {new} new | "
         f"{t_gen * 1e3:.0f} ms | {new / t_gen:.2f} bytes/s |",
         {"part": "blt", "what": "generate", "prompt": prompt.shape[1], "new": new, "seconds": t_gen,
          "bytes_per_s": new / t_gen})
    model.train()

    def train_step():
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        t_train = timed(train_step, 1, max(1, args.repeats // 2))
        emit(f"| transformers BltForCausalLM train step bf16 (fwd + bwd) | T={T} | {t_train * 1e3:.1f} ms | "
             f"{T / t_train:,.0f} bytes/s |",
             {"part": "blt", "what": "train", "T": T, "seconds": t_train, "bytes_per_s": T / t_train})
    except torch.OutOfMemoryError as e:
        emit(f"| transformers BltForCausalLM train step bf16 | T={T} | OOM | - |",
             {"part": "blt", "what": "train", "error": str(e)[:200]})
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="attention,llama,blt")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attn-seq", type=int, default=4096)
    ap.add_argument("--llama-layers", type=int, default=25)
    ap.add_argument("--llama-batch", type=int, default=4)
    ap.add_argument("--llama-seq", type=int, default=4096)
    ap.add_argument("--llama-dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM)")
    ap.add_argument("--blt-seq", type=int, default=4096)
    ap.add_argument("--blt-hash-vocab", type=int, default=500002)
    ap.add_argument("--blt-gen-prompt", type=int, default=128)
    ap.add_argument("--blt-gen-new", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("compare_gpu_torch: torch sees no CUDA device, skipping", flush=True)
        return 0
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, torch {torch.__version__}", flush=True)
    print("| baseline | shape | time | rate |\n|---|---|---|---|", flush=True)
    parts = {"attention": part_attention, "llama": part_llama, "blt": part_blt}
    rc = 0
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            parts[name](args)
        except Exception as e:  # one part failing must not hide the others
            print(f"| {name} | FAILED: {type(e).__name__}: {str(e)[:160]} | - | - |", flush=True)
            rc = 1
        print(f"compare_gpu_torch: {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
