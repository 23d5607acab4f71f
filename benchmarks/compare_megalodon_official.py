#!/usr/bin/env python3
"""Megalodon speed on the CPU: tessera against the official PyTorch code, same config, batch, threads, run.

Times one training step (forward, cross-entropy, backward, clip 1.0, AdamW with weight decay on every
parameter) on random bytes, and cached decoding one token at a time after a 256-token prompt (the official
inference cache path, as its generation.py drives it). The official code runs on the CPU the way
tools/reference/megalodon_reference.py sets it up (its CPU reference ops compiled into an extension, torch.fft
convolution, plain attention); tessera's side is benchmarks/megalodon_step.

    /work/venv-mgl/bin/python benchmarks/compare_megalodon_official.py --megalodon-src DIR \
        --tessera build/benchmarks/megalodon_step [--config benchmarks/configs/mvl_megalodon.json] [--threads 1]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "reference"))
import megalodon_reference as ref  # noqa: E402  (setup helpers: extension build, shims, process group)


def official_times(src, model_cfg, batch, seq, steps, warmup, prompt, decode):
    ref.install_apex_shim()
    ref.build_extension(src, ref.DEFAULT_BUILD, False)
    sys.path.insert(0, src)
    from megalodon.config import ModelConf
    from megalodon.model.mega import Mega
    from megalodon.utils import init_cache

    tmp = tempfile.mkdtemp(prefix="megalodon-bench-")
    ref.init_distributed(tmp)
    cfg = ModelConf(**model_cfg)
    torch.manual_seed(1)
    with ref.cuda_to_cpu():
        model = Mega(cfg)
    model.float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    targets = torch.roll(ids.flatten(), -1).view(batch, seq)

    def step():
        opt.zero_grad(set_to_none=False)
        logits, _ = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    step_ms = (time.perf_counter() - t0) / steps * 1e3

    model.eval()
    with torch.no_grad():
        with ref.cuda_to_cpu():
            cache = init_cache(1, model, torch.float32)
        _, cache = model(ids[:1, :prompt], cache=cache)
        tok = torch.tensor([[65]])
        t1 = time.perf_counter()
        for _ in range(decode):
            logits, cache = model(tok, cache=cache)
            tok = logits[:, -1:].argmax(-1)
        tok_ms = (time.perf_counter() - t1) / decode * 1e3
    n_params = sum(p.numel() for p in model.parameters())
    return {"impl": "official (PyTorch)", "params": n_params, "step_ms": step_ms,
            "tokens_per_s": batch * seq / step_ms * 1e3, "decode_ms_per_token": tok_ms, "loss": loss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megalodon-src", required=True, help="checkout of github.com/XuezheMax/megalodon at cff8ba5")
    ap.add_argument("--tessera", required=True, help="path of the megalodon_step benchmark binary")
    ap.add_argument("--config", default=os.path.join(HERE, "configs", "mvl_megalodon.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--decode", type=int, default=100)
    args = ap.parse_args()
    model_cfg = json.load(open(args.config))["model"]
    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([args.tessera, "--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq),
                          "--steps", str(args.steps), "--decode", str(args.decode)], env=env, check=True,
                         capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    theirs = official_times(os.path.abspath(args.megalodon_src), model_cfg, args.batch, args.seq, args.steps, 3,
                            256, args.decode)
    print(f"threads {args.threads}, batch {args.batch} x {args.seq}, config {os.path.relpath(args.config)}, "
          f"torch {torch.__version__}")
    print("| implementation | parameters | train step ms | tokens/s | decode ms/token |")
    print("|---|---|---|---|---|")
    for r in (ours, theirs):
        print(f"| {r['impl']} | {r['params']:,} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['decode_ms_per_token']:.3f} |")
    print(f"| tessera / official | | {theirs['step_ms'] / ours['step_ms']:.2f}x faster | | "
          f"{theirs['decode_ms_per_token'] / ours['decode_ms_per_token']:.1f}x faster |")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
