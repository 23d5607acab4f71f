#!/usr/bin/python3
"""PyTorch eager baselines for tessera's CPU benchmarks, and the report that puts both side by side.

  /usr/bin/python3 benchmarks/compare_pytorch.py measure --threads N [--steps 15] > torch_N.json
  /usr/bin/python3 benchmarks/compare_pytorch.py table --tessera-dir DIR --torch torch_1.json torch_2.json

`measure` times, with N intra-op threads:
  * the same training step as benchmarks/bench_train_step.cpp: a plain torch.nn Llama-style byte model with the
    lm app's default shapes (vocab 256, dim 192, 4 layers, 6 heads, 2 kv heads, ffn 512, batch 16, seq 128):
    interleaved RoPE, GQA by repeating kv heads, RMSNorm, SwiGLU, no biases, untied head, attention written
    as matmul + masked softmax (torch 1.13 has no F.scaled_dot_product_attention); zero_grad, forward,
    cross-entropy, backward, clip_grad_norm_(1.0), AdamW(foreach=False) — and the same phases alone;
  * square fp32 matmuls and the linear-layer products of that step (bench_gemm.cpp's shapes);
  * attention forward / backward for bench_attention.cpp's shapes.
Each number is the median over >= 10 timed repetitions after warm-up. Output: one JSON object on stdout.

`table` reads Google Benchmark JSON files (DIR/<bench>_<N>.json) and the torch JSON files and prints Markdown.
The thread count must be fixed before torch (and OpenBLAS, which reads OPENBLAS_NUM_THREADS once at load) is
imported, so `measure` sets OMP_NUM_THREADS / OPENBLAS_NUM_THREADS itself when they are not set.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


# ---------------------------------------------------------------------------------------------------------
# measure
# ---------------------------------------------------------------------------------------------------------

def build_model(torch, cfg):
    nn, F = torch.nn, torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rope_tables(T, Dh, theta):
        inv = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # [T, Dh/2]
        return torch.cos(ang).float(), torch.sin(ang).float()

    def rope(x, cos, sin):
        # x [B, T, H, Dh]; interleaved pairs (2i, 2i+1) rotated by pos * theta^(-2i/Dh).
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.h, self.kv, self.dh = c["n_heads"], c["n_kv_heads"], c["dim"] // c["n_heads"]
            self.q_proj = nn.Linear(c["dim"], self.h * self.dh, bias=False)
            self.k_proj = nn.Linear(c["dim"], self.kv * self.dh, bias=False)
            self.v_proj = nn.Linear(c["dim"], self.kv * self.dh, bias=False)
            self.o_proj = nn.Linear(self.h * self.dh, c["dim"], bias=False)

        def forward(self, x, cos, sin, mask):
            B, T, _ = x.shape
            q = rope(self.q_proj(x).view(B, T, self.h, self.dh), cos, sin)
            k = rope(self.k_proj(x).view(B, T, self.kv, self.dh), cos, sin)
            v = self.v_proj(x).view(B, T, self.kv, self.dh)
            rep = self.h // self.kv  # GQA: query head h reads kv head h // rep
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, Dh]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, self.h * self.dh)
            return self.o_proj(y)

    class SwiGLU(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.gate_proj = nn.Linear(c["dim"], c["ffn_hidden"], bias=False)
            self.up_proj = nn.Linear(c["dim"], c["ffn_hidden"], bias=False)
            self.down_proj = nn.Linear(c["ffn_hidden"], c["dim"], bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.input_layernorm = RMSNorm(c["dim"], c["norm_eps"])
            self.self_attn = Attention(c)
            self.post_attention_layernorm = RMSNorm(c["dim"], c["norm_eps"])
            self.mlp = SwiGLU(c)

        def forward(self, x, cos, sin, mask):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Llama(nn.Module):
        def __init__(self, c, T):
            super().__init__()
            self.embed_tokens = nn.Embedding(c["vocab_size"], c["dim"])
            self.layers = nn.ModuleList([Block(c) for _ in range(c["n_layers"])])
            self.norm = RMSNorm(c["dim"], c["norm_eps"])
            self.lm_head = nn.Linear(c["dim"], c["vocab_size"], bias=False)
            cos, sin = rope_tables(T, c["dim"] // c["n_heads"], c["rope_theta"])
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1), persistent=False)

        def forward(self, ids, targets):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin, self.mask)
            logits = self.lm_head(self.norm(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return Llama(cfg, cfg["seq"])


def median_ms(fn, warmup, reps, inner=1):
    """Median wall time of `inner` calls of fn, in ms per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times), times


def measure_train_step(torch, steps, foreach):
    cfg = {"vocab_size": 256, "dim": 192, "n_layers": 4, "n_heads": 6, "n_kv_heads": 2, "ffn_hidden": 512,
           "norm_eps": 1e-5, "rope_theta": 10000.0, "batch": 16, "seq": 128}
    torch.manual_seed(1)
    model = build_model(torch, cfg)
    for p in model.parameters():  # as tessera::init_normal: matrices N(0, 0.02), vectors keep 1
        if p.dim() >= 2:
            torch.nn.init.normal_(p, 0.0, 0.02)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=2e-3, betas=(0.9, 0.95), eps=1e-8, foreach=foreach)
    B, T = cfg["batch"], cfg["seq"]
    stream = torch.randint(0, 256, (B * T + 1,))
    ids, targets = stream[:-1].view(B, T).clone(), stream[1:].view(B, T).clone()
    params = list(model.parameters())

    def forward_loss():
        return model(ids, targets)

    def forward_backward():
        opt.zero_grad(set_to_none=False)
        loss = model(ids, targets)
        loss.backward()
        return loss

    def clip_adamw():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def step():
        forward_backward()
        clip_adamw()

    out = {"params": sum(p.numel() for p in params), "tokens_per_step": B * T}
    for name, fn in (("train_step", step), ("forward_loss", forward_loss),
                     ("forward_backward", forward_backward), ("clip_adamw", clip_adamw)):
        ms, times = median_ms(fn, warmup=3, reps=steps)
        out[name] = {"ms": ms, "tokens_per_s": B * T / ms * 1e3, "times_ms": [round(t, 3) for t in times]}
    return out


def gemm_cases():
    """(name, ta, tb, M, N, K): bench_gemm.cpp's benchmarks, same names."""
    cases = [(f"gemm_square/NN/{n}", False, False, n, n, n) for n in (128, 256, 512, 1024, 2048)]
    for what, i, o in (("q_o_proj", 192, 192), ("kv_proj", 192, 64), ("gate_up_proj", 192, 512),
                       ("down_proj", 512, 192), ("lm_head", 192, 256)):
        shape = f"2048x{i}->{o}"
        cases += [(f"gemm_linear/{what}/fwd_NT/{shape}", False, True, 2048, o, i),
                  (f"gemm_linear/{what}/bwd_dx_NN/{shape}", False, False, 2048, i, o),
                  (f"gemm_linear/{what}/bwd_dW_TN/{shape}", True, False, o, i, 2048)]
    return cases


def measure_gemm(torch, reps):
    out = {}
    for name, ta, tb, M, N, K in gemm_cases():
        a = torch.rand(K, M) - 0.5 if ta else torch.rand(M, K) - 0.5
        b = torch.rand(N, K) - 0.5 if tb else torch.rand(K, N) - 0.5
        a_op, b_op = (a.t() if ta else a), (b.t() if tb else b)
        c = torch.empty(M, N)
        inner = max(1, int(2e8 / (2 * M * N * K)))  # ~0.2 GFLOP per timing
        ms, _ = median_ms(lambda: torch.mm(a_op, b_op, out=c), warmup=2, reps=reps, inner=inner)
        out[name] = {"ms": ms, "gflops": 2 * M * N * K / ms * 1e-6}
    return out


def allowed_pairs(T, W):
    return sum(min(i + 1, W) if W else i + 1 for i in range(T))


def attention_cases():
    """(mask name, B, T, W): bench_attention.cpp's cases (6 query heads, 2 kv heads, Dh 32)."""
    cases = [("causal", 16, 128, 0)]
    for T in (1024, 2048):
        cases += [("causal", 2048 // T, T, 0), ("window256", 2048 // T, T, 256)]
    return cases


def measure_attention(torch, reps):
    """Attention as a user writes it in torch 1.13: repeat kv heads, matmul, masked_fill, softmax, matmul."""
    H, KV, Dh = 6, 2, 32
    out = {}
    for mask_name, B, T, W in attention_cases():
        q = torch.randn(B, H, T, Dh, requires_grad=True)
        k = torch.randn(B, KV, T, Dh, requires_grad=True)
        v = torch.randn(B, KV, T, Dh, requires_grad=True)
        i = torch.arange(T)
        allowed = i[None, :] <= i[:, None]
        if W:
            allowed &= i[None, :] > i[:, None] - W
        masked = ~allowed
        dout = torch.randn(B, H, T, Dh)

        def fwd():
            kk, vv = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
            att = ((q @ kk.transpose(-2, -1)) * (1.0 / math.sqrt(Dh))).masked_fill(masked, float("-inf"))
            return att.softmax(dim=-1) @ vv

        y = fwd()

        def bwd():
            y.backward(dout, retain_graph=True)

        shape = f"B{B}_T{T}_H6_KV2_D32"
        pairs = B * H * allowed_pairs(T, W)
        for kind, fn, flop in (("fwd", fwd, 4 * Dh * pairs), ("bwd", bwd, 8 * Dh * pairs)):
            ms, _ = median_ms(fn, warmup=2, reps=reps)
            out[f"attention_{kind}/{mask_name}/{shape}"] = {
                "ms": ms, "tokens_per_s": B * T / ms * 1e3, "gflops": flop / ms * 1e-6}
    return out


def cmd_measure(args):
    n = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", n)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", n)
    import torch  # after the environment is set: OpenBLAS reads it when loaded

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    res = {
        "threads": args.threads,
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "blas": blas_info(),
        "train": {"eager": measure_train_step(torch, args.steps, foreach=False)},
    }
    if not args.quick:
        res["train"]["eager_foreach_adamw"] = measure_train_step(torch, args.steps, foreach=True)
        res["gemm"] = measure_gemm(torch, reps=10)
        res["attention"] = measure_attention(torch, reps=10)
    json.dump(res, sys.stdout, indent=1)
    print()


def blas_info():
    """OpenBLAS as loaded into this process (torch links it through libblas.so.3): core type and threads."""
    import ctypes
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        lib.openblas_get_config.restype = ctypes.c_char_p
        return {"corename": lib.openblas_get_corename().decode(), "config": lib.openblas_get_config().decode(),
                "threads": lib.openblas_get_num_threads()}
    except OSError as e:
        return {"error": str(e)}


# ---------------------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------------------

def load_gbench(path):
    """Google Benchmark JSON -> {name: row}; for repeated runs the median aggregate under the base name."""
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") != "median":
                continue
            name = b["run_name"].split("/iterations:")[0]
        elif b.get("run_type") == "iteration" and b.get("repetitions", 1) <= 1:
            name = b["name"].split("/real_time")[0]
        else:
            continue
        rows[name] = b
    return rows, data.get("context", {})


def ms_of(row):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[row.get("time_unit", "ns")]
    return row["real_time"] * scale


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cmd_table(args):
    torch_runs = {}
    for path in args.torch:
        with open(path) as f:
            r = json.load(f)
        torch_runs[r["threads"]] = r
    threads = sorted(torch_runs)
    tess = {n: {} for n in threads}
    for n in threads:
        for bench in ("bench_train_step", "bench_gemm", "bench_attention"):
            p = os.path.join(args.tessera_dir, f"{bench}_{n}.json")
            if os.path.exists(p):
                tess[n][bench] = load_gbench(p)[0]
    out = []
    w = out.append

    w("### Training step (lm default: 4 layers, dim 192, 6/2 heads, ffn 512, batch 16 x seq 128)\n")
    w("Median over the timed steps. Ratio = tessera tokens/s ÷ PyTorch tokens/s (> 1: tessera faster).\n")
    w("| threads | phase | tessera ms | tessera tok/s | PyTorch ms | PyTorch tok/s | ratio |")
    w("|---|---|---|---|---|---|---|")
    for n in threads:
        rows = tess[n].get("bench_train_step", {})
        tr = torch_runs[n]["train"]["eager"]
        for phase in ("train_step", "forward_loss", "forward_backward", "clip_adamw"):
            row = rows.get(f"BM_{phase}")
            t_ms = ms_of(row) if row else None
            p_ms = tr[phase]["ms"]
            tok = 2048
            w(f"| {n} | {phase} | {fmt(t_ms)} | {fmt(tok / t_ms * 1e3 if t_ms else None, 0)} | {fmt(p_ms)} | "
              f"{fmt(tok / p_ms * 1e3, 0)} | {fmt(ratio(p_ms, t_ms), 2)} |")
        fe = torch_runs[n]["train"].get("eager_foreach_adamw")
        if fe:
            row = rows.get("BM_train_step")
            t_ms = ms_of(row) if row else None
            w(f"| {n} | train_step vs torch AdamW(foreach=True) | {fmt(t_ms)} | "
              f"{fmt(2048 / t_ms * 1e3 if t_ms else None, 0)} | {fmt(fe['train_step']['ms'])} | "
              f"{fmt(fe['train_step']['tokens_per_s'], 0)} | {fmt(ratio(fe['train_step']['ms'], t_ms), 2)} |")
    w("")

    w("### GEMM, fp32 (GFLOP/s; tessera::ops::gemm vs torch.mm at the same thread count)\n")
    head = "| product | " + " | ".join(f"tessera {n}T | PyTorch {n}T | ratio {n}T" for n in threads) + " |"
    w(head)
    w("|---|" + "---|" * (3 * len(threads)))
    names = gemm_cases()
    for name, *_ in names:
        cells = []
        for n in threads:
            row = tess[n].get("bench_gemm", {}).get(name)
            tg = row.get("GFLOP/s") if row else None  # the JSON holds the rate already divided by the time
            pg = torch_runs[n].get("gemm", {}).get(name, {}).get("gflops")
            cells += [fmt(tg), fmt(pg), fmt(ratio(tg, pg), 2)]
        w(f"| {name} | " + " | ".join(cells) + " |")
    w("")

    w("### Attention (6 query heads, 2 kv heads, Dh 32; tessera blockwise kernel vs torch matmul + masked "
      "softmax)\n")
    w("GFLOP/s counts useful work only (fwd 4·Dh, bwd 8·Dh per allowed query-key pair). Ratio = torch ms ÷ "
      "tessera ms.\n")
    w("| case | " + " | ".join(f"tessera {n}T ms | PyTorch {n}T ms | ratio {n}T" for n in threads) + " |")
    w("|---|" + "---|" * (3 * len(threads)))
    for mask_name, B, T, W in attention_cases():
        for kind in ("fwd", "bwd"):
            name = f"attention_{kind}/{mask_name}/B{B}_T{T}_H6_KV2_D32"
            cells = []
            for n in threads:
                row = tess[n].get("bench_attention", {}).get(name)
                t_ms = ms_of(row) if row else None
                p_ms = torch_runs[n].get("attention", {}).get(name, {}).get("ms")
                cells += [fmt(t_ms, 2), fmt(p_ms, 2), fmt(ratio(p_ms, t_ms), 2)]
            w(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--steps", type=int, default=15, help="timed repetitions per measurement (>= 10)")
    m.add_argument("--quick", action="store_true", help="training step only")
    t = sub.add_parser("table")
    t.add_argument("--tessera-dir", required=True, help="folder with bench_*_<threads>.json")
    t.add_argument("--torch", nargs="+", required=True, help="JSON files written by `measure`")
    args = ap.parse_args()
    if args.cmd == "measure":
        if args.steps < 10:
            ap.error("--steps must be >= 10")
        cmd_measure(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    main()
