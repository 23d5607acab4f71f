#!/usr/bin/env python3
"""CPU speed of Hugging Face transformers' BltForCausalLM, the baseline for tessera's BLT (run by hand).

Needs the virtual environment of tools/reference/README.md (torch + transformers from PyPI):

    /work/venv-blt/bin/python benchmarks/compare_blt_hf.py                    # both models, 1 and 2 threads
    /work/venv-blt/bin/python benchmarks/compare_blt_hf.py --models tiny --threads 1

Measures, for each model and each thread count (torch.set_num_threads(N)), fp32, batch 1:
- prefill: one `model(input_ids=ids, use_cache=False)` forward over a --prompt-bytes prompt (patcher included),
  reported as bytes/s = prompt ids / seconds; the patcher alone is timed too;
- generation: `model.generate(ids, max_new_tokens=64, do_sample=False, use_cache=False)` from a
  --gen-prompt-bytes prompt, reported as new bytes/s. use_cache=False is what the HF BLT docs require: every
  step is a full forward (patcher + encoder + global + decoder) over the whole sequence.
Each number is the median of --repeats runs after one warm-up. Prints one JSON object. Every (model, threads)
pair runs in a fresh child process with OMP_NUM_THREADS=N: with torch 2.11, raising set_num_threads from 1 to 2
inside one process after work at 1 thread made the tiny prefill ~50x slower (60 ms -> 2.9 s, reproducible). The machine has 2 cores:
time on a quiet machine (the JSON records the 1-minute load average); with other jobs running, the 2-thread
numbers collapse (OpenMP threads wait for a descheduled peer).

Models:
- `tiny`: tests/fixtures/blt-hf-tiny (~1.1M parameters).
- `bench`: a randomly initialised BltConfig of BLT-1B's shape but smaller (local 512, global 1024, see
  BENCH_SHAPE), created once with a fixed seed and saved with save_pretrained into --bench-dir (outside the
  repository) together with bench_prompt.bin, so that tessera can time exactly the same weights and bytes.
  Its patcher's lm_head is scaled x8 (as for the tiny fixture) and its threshold is set to the 78% quantile of
  the entropies of the calibration text, giving ~4.5 bytes per patch like the released models.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import transformers
from transformers import BltConfig, BltForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY_DIR = os.path.join(ROOT, "tests", "fixtures", "blt-hf-tiny")
SEED = 20240
BENCH_SHAPE = {  # sub-config overrides on top of the tiny fixture's config (same RoPE/eps/hash settings)
    "encoder_config": {"hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 1,
                       "intermediate_size": 1536, "hidden_size_global": 1024},
    "decoder_config": {"hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 4,
                       "intermediate_size": 1536, "hidden_size_global": 1024},
    "global_config": {"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 8,
                      "intermediate_size": 2816, "max_position_embeddings": 4096},
    "patcher_config": {"hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 4,
                       "intermediate_size": 1536},
}
BENCH_HASH_VOCAB = 50021   # rows per hash table (released: 500002); 6 tables x 50021 x 512
BENCH_QUANTILE = 0.78


def prompt_bytes(n):
    """Deterministic English/UTF-8/code text of exactly n bytes (the tiny fixture's case texts, repeated)."""
    from safetensors import safe_open
    with safe_open(os.path.join(TINY_DIR, "cases.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["info"])
    text = b"\n".join(bytes.fromhex(c["bytes_hex"]) for c in info["cases"][:4]) + b"\n"
    return (text * (n // len(text) + 1))[:n]


def to_ids(data):
    return torch.tensor([[1] + [b + 4 for b in data]], dtype=torch.int64)


def build_bench_model(out_dir):
    d = BltConfig.from_pretrained(TINY_DIR).to_dict()
    for sub, over in BENCH_SHAPE.items():
        d[sub].update(over)
        if "head_dim" in d[sub]:
            d[sub]["head_dim"] = d[sub]["hidden_size"] // d[sub]["num_attention_heads"]
    d["encoder_hash_byte_group_vocab"] = BENCH_HASH_VOCAB
    for k in ("transformers_version", "architectures", "model_type", "dtype"):
        d.pop(k, None)
    cfg = BltConfig(**d)
    torch.manual_seed(SEED)
    model = BltForCausalLM(cfg).float().eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(8.0)
        ent, _, _ = model.model.patcher(to_ids(prompt_bytes(1023)))
        cfg.patching_threshold = float(torch.quantile(ent[0, 1:].double(), BENCH_QUANTILE))
    model.config.patching_threshold = cfg.patching_threshold
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "bench_prompt.bin"), "wb") as f:
        f.write(prompt_bytes(4096))
    return out_dir


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_model(name, model, threads, args):
    cfg = model.config
    max_local = min(cfg.encoder_config.max_position_embeddings, cfg.decoder_config.max_position_embeddings)
    n_prompt = min(args.prompt_bytes, max_local - 1)     # ids = BOS + bytes must fit the local models
    ids = to_ids(prompt_bytes(n_prompt))
    gen_ids = to_ids(prompt_bytes(args.gen_prompt_bytes))
    with torch.no_grad():
        _, lengths, _ = model.model.patcher(ids, patch_size=cfg.patch_size, threshold=cfg.patching_threshold)
    results = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            t_fwd, all_fwd = median_time(lambda: model(input_ids=ids, use_cache=False), args.repeats)
            t_pat, _ = median_time(lambda: model.model.patcher(ids, patch_size=cfg.patch_size,
                                                               threshold=cfg.patching_threshold), args.repeats)
            out = model.generate(gen_ids, max_new_tokens=args.new_tokens, do_sample=False, use_cache=False,
                                 pad_token_id=0)
            new = out.shape[1] - gen_ids.shape[1]
            t_gen, all_gen = median_time(
                lambda: model.generate(gen_ids, max_new_tokens=args.new_tokens, do_sample=False,
                                       use_cache=False, pad_token_id=0), args.gen_repeats)
        results.append({
            "model": name, "threads": n, "loadavg_1min_after": os.getloadavg()[0],
            "prefill": {"ids": ids.shape[1], "patches": int((lengths > 0).sum()), "seconds": t_fwd,
                        "bytes_per_s": ids.shape[1] / t_fwd, "patcher_seconds": t_pat,
                        "runs": all_fwd},
            "generate": {"prompt_ids": gen_ids.shape[1], "new_bytes": new, "seconds": t_gen,
                         "bytes_per_s": new / t_gen, "runs": all_gen},
        })
        print(f"[{name} threads={n}] prefill {ids.shape[1]} ids: {t_fwd * 1e3:.1f} ms "
              f"({ids.shape[1] / t_fwd:.0f} B/s, patcher {t_pat * 1e3:.1f} ms); generate {new} bytes: "
              f"{t_gen:.2f} s ({new / t_gen:.1f} B/s)", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", default="tiny,bench")
    ap.add_argument("--prompt-bytes", type=int, default=1023, help="prefill prompt bytes (ids = bytes + BOS)")
    ap.add_argument("--gen-prompt-bytes", type=int, default=127)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gen-repeats", type=int, default=2)
    ap.add_argument("--bench-dir", default="/work/blt-bench-model")
    ap.add_argument("--rebuild", action="store_true", help="re-create the bench model even if it exists")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if not args.child:   # parent: build the bench model once, then one child process per (model, threads)
        if "bench" in args.models.split(",") and (args.rebuild or not os.path.exists(
                os.path.join(args.bench_dir, "config.json"))):
            t0 = time.perf_counter()
            build_bench_model(args.bench_dir)
            print(f"[bench] built and saved {args.bench_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
        report = None
        for name in args.models.split(","):
            for n in args.threads:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--models", name, "--threads", str(n)]
                for opt in ("prompt_bytes", "gen_prompt_bytes", "new_tokens", "repeats", "gen_repeats",
                            "bench_dir"):
                    cmd += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
                env = dict(os.environ, OMP_NUM_THREADS=str(n), PYTHONDONTWRITEBYTECODE="1")
                out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
                child = json.loads(out[out.index("\n{") + 1:])
                for line in out[:out.index("\n{")].splitlines():
                    if line.startswith("["):
                        print(line, flush=True)
                if report is None:
                    report = child
                else:
                    report["models"].update(child["models"])
                    report["results"] += child["results"]
        print(json.dumps(report, indent=1))
        return

    report = {"transformers": transformers.__version__, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "dtype": "float32", "batch": 1,
              "attn_implementation": None, "models": {}, "results": []}
    try:
        with open("/proc/cpuinfo") as f:
            report["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for name in args.models.split(","):
        if name == "tiny":
            path = TINY_DIR
        elif name == "bench":
            path = args.bench_dir
        else:
            raise SystemExit(f"unknown model {name!r} (tiny, bench)")
        model = BltForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        report["attn_implementation"] = model.config._attn_implementation
        n_all = sum(p.numel() for p in model.parameters())
        n_patcher = sum(p.numel() for p in model.model.patcher.parameters())
        n_hash = model.model.encoder_hash_tok_embedding.weight.numel()
        report["models"][name] = {"path": path, "params": n_all, "patcher_params": n_patcher,
                                  "hash_embedding_params": n_hash,
                                  "threshold": model.config.patching_threshold}
        report["results"] += bench_model(name, model, args.threads, args)
        del model
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
