#!/usr/bin/env python3
"""BLT training-gradient fixture from Hugging Face transformers' BltForCausalLM (run by hand, never in CI).

Needs the virtual environment described in tools/reference/README.md (torch + transformers + safetensors from
PyPI, pinned in tools/reference/blt_requirements.txt), NOT Debian's /usr/bin/python3:

    /work/venv-blt/bin/python tools/reference/blt_reference.py            # verify env, write the fixture
    /work/venv-blt/bin/python tools/reference/blt_reference.py --check    # also print fp32-vs-fp64 drift

Steps:
1. Load tests/fixtures/blt-hf-tiny (fp32, CPU) and check that this environment reproduces every case of its
   cases.safetensors (logits <= 1e-5, entropies, patch lengths, greedy continuation); abort otherwise.
2. Training batch: B = 2 rows, T = 64 ids each = the first 64 ids of case0 / case1 ([BOS=1] + byte + 4).
   `loss = model(input_ids=ids, labels=ids, use_cache=False).loss` exactly as a user would call it, then
   `loss.backward()`. Writes tests/fixtures/blt_grads_tiny.safetensors (contents: see README.md).
"""
import argparse
import hashlib
import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import BltForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "tests", "fixtures", "blt-hf-tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "blt_grads_tiny.safetensors")
T = 64                      # ids per row, BOS included
ROWS = (0, 1)               # fixture cases whose texts are used (both >= 64 bytes)
SPARSE = "model.encoder_hash_tok_embedding.weight"   # stored as (rows, values): only touched rows are nonzero
LOGITS_TOL = 1e-5


def load_model(dtype=torch.float32):
    model = BltForCausalLM.from_pretrained(MODEL_DIR, dtype=dtype)
    model.to("cpu")
    return model


def patcher_lengths(model, ids):
    """Entropies and patch lengths exactly as BltModel.forward computes them (same call, same arguments)."""
    cfg = model.config
    with torch.no_grad():
        ent, lengths, _ = model.model.patcher(ids, patch_size=cfg.patch_size, threshold=cfg.patching_threshold,
                                              max_patch_length=cfg.max_patch_length)
    return ent, lengths


def verify_cases(model, cases):
    """Reproduce cases.safetensors; returns a dict of the worst errors. Raises if the environment differs."""
    worst = {"logits": 0.0, "entropies": 0.0}
    n = len({k.split(".")[0] for k in cases})
    for i in range(n):
        ids = cases[f"case{i}.ids"][None]
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0]
        ent, lengths = patcher_lengths(model, ids)
        e_log = (logits - cases[f"case{i}.logits"]).abs().max().item()
        e_ent = (ent[0] - cases[f"case{i}.entropies"]).abs().max().item()
        same_pl = torch.equal(lengths[0], cases[f"case{i}.patch_lengths"])
        greedy = model.generate(ids, max_new_tokens=24, do_sample=False, use_cache=False,
                                pad_token_id=0)[0, ids.shape[1]:]
        same_greedy = torch.equal(greedy, cases[f"case{i}.greedy"])
        print(f"[verify] case{i}: T={ids.shape[1]} logits max|d|={e_log:.2e} entropies max|d|={e_ent:.2e} "
              f"patch_lengths {'equal' if same_pl else 'DIFFER'} greedy {'equal' if same_greedy else 'DIFFER'}")
        if e_log > LOGITS_TOL or not same_pl or not same_greedy:
            sys.exit(f"environment does not reproduce {MODEL_DIR}/cases.safetensors (case{i})")
        worst["logits"] = max(worst["logits"], e_log)
        worst["entropies"] = max(worst["entropies"], e_ent)
    return worst


def training_step(model, ids):
    """The user-level training call. Returns (loss, logits, grads dict name -> tensor)."""
    model.train()
    model.zero_grad(set_to_none=True)
    if model.dtype == torch.float32:
        out = model(input_ids=ids, labels=ids, use_cache=False)
        loss, logits = out.loss, out.logits
    else:  # BltForCausalLM casts logits to fp32 (`.float()`); for the fp64 drift check keep everything in fp64
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    return loss.detach(), logits.detach(), grads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="also repeat the step in float64 and print the drift")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    model = load_model()
    cases = load_file(os.path.join(MODEL_DIR, "cases.safetensors"))
    worst = verify_cases(model, cases)

    ids = torch.stack([cases[f"case{r}.ids"][:T] for r in ROWS])        # [B, T] int64
    ent, lengths = patcher_lengths(model, ids)
    for r in range(ids.shape[0]):                                       # rows are patched independently
        _, single = patcher_lengths(model, ids[r:r + 1])
        assert torch.equal(single[0], lengths[r]), "batch rows have different patch counts (see README)"

    loss, logits, grads = training_step(model, ids)

    # The loss transformers computes (ForCausalLMLoss): labels padded with -100 on the right and shifted by one,
    # i.e. mean cross-entropy of logits[b, t] against ids[b, t + 1] over b < B, t < T - 1.
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert abs(manual.item() - loss.item()) <= 1e-6 * abs(loss.item()), (manual.item(), loss.item())
    with torch.no_grad():                                               # explicit patch lengths: same loss
        explicit = model(input_ids=ids, labels=ids, patch_lengths=lengths, use_cache=False).loss
    assert explicit.item() == loss.item(), (explicit.item(), loss.item())
    # Row-by-row calls give the same logits as the batch.
    with torch.no_grad():
        row_err = max((model(input_ids=ids[r:r + 1], use_cache=False).logits[0] - logits[r]).abs().max().item()
                      for r in range(ids.shape[0]))

    names = [n for n, _ in model.named_parameters()]
    no_grad = [n for n in names if n not in grads]
    assert all(n.startswith("model.patcher.") for n in no_grad), no_grad
    assert all(not n.startswith("model.patcher.") for n in grads)

    tensors = {"input_ids": ids.contiguous(), "patch_lengths": lengths.contiguous(),
               "entropies": ent.contiguous(), "logits": logits.contiguous(), "loss": loss.reshape(())}
    for n, g in grads.items():
        if n == SPARSE:
            rows = torch.nonzero(g.abs().sum(dim=1) != 0).flatten()
            tensors[f"grad.{n}.rows"] = rows.to(torch.int64).contiguous()
            tensors[f"grad.{n}.values"] = g[rows].contiguous()
        else:
            tensors[f"grad.{n}"] = g.contiguous()

    texts = [bytes((cases[f"case{r}.ids"][1:T] - 4).tolist()).hex() for r in ROWS]
    info = {
        "generator": "tools/reference/blt_reference.py",
        "model_dir": "tests/fixtures/blt-hf-tiny",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": "cpu, torch.set_num_threads(1), use_deterministic_algorithms(True), fp32",
        "attn_implementation": model.config._attn_implementation,
        "B": ids.shape[0], "T": T,
        "rows_from_cases": list(ROWS),
        "texts_hex": texts,
        "ids": "input_ids[b] = [1 (BOS)] + [byte + 4 for the first T-1 bytes of text b]; no EOS, no padding",
        "call": "out = BltForCausalLM(input_ids=input_ids, labels=input_ids, use_cache=False); "
                "out.loss.backward()  (model.train(); dropout is 0)",
        "loss": "transformers ForCausalLMLoss: labels padded with -100 on the right, shifted left by one; "
                "loss = mean over b < B, t < T-1 of cross_entropy(logits[b, t], input_ids[b, t+1]) "
                f"= mean over B*(T-1) = {ids.shape[0] * (T - 1)} positions; logits[b, T-1] has no target",
        "patch_lengths": "from model.model.patcher(input_ids, patch_size, threshold) exactly as BltModel.forward "
                         "calls it; passing them explicitly gives a bit-identical loss. Both rows have the same "
                         "patch count; row 1 ends in a zero-length patch (entropy at its last byte > threshold)",
        "patch_lengths_batch_quirk": "not exercised here: when rows of one batch have different patch counts, "
                                     "HF pads the shorter row as [..., last+1, 0, ..., 0, -1] (sum still T); "
                                     "its logits still match a single-row call to ~1e-6",
        "use_cache": "use_cache=False is required: with the config default (True) BltModel.forward raises "
                     "AttributeError ('BltConfig' object has no attribute 'num_hidden_layers') in 5.17",
        "patching_threshold": model.config.patching_threshold,
        "entropies": "patcher prediction entropies in nats, [B, T]",
        "grads": "grad.<HF parameter name> for every parameter that receives a gradient (all outside "
                 "model.patcher.*), fp32, same shape as the parameter",
        "sparse_grad": f"grad.{SPARSE} is stored as grad.{SPARSE}.rows (I64 [R], sorted) and .values "
                       f"(F32 [R, dim]); every other row of that gradient is exactly 0",
        "params_without_grad": no_grad,
        "why_no_grad": "the patcher only produces integer patch lengths, so no autograd path reaches it; "
                       "after from_pretrained its parameters have requires_grad=True (BltModel.__init__ sets "
                       "False, loading resets it) but .grad stays None",
        "params_with_grad": sorted(grads),
        "verify_cases_max_abs_err": worst,
        "batch_vs_single_row_logits_max_abs_err": row_err,
    }
    save_file(tensors, OUT, metadata={"info": json.dumps(info)})
    digest = hashlib.sha256(open(OUT, "rb").read()).hexdigest()[:16]
    print(f"[fixture] loss={loss.item():.8f} (manual {manual.item():.8f}) patches/row={lengths.shape[1]} "
          f"grads={len(grads)} no-grad={len(no_grad)} batch-vs-row logits {row_err:.2e}")
    print(f"[fixture] wrote {OUT} ({os.path.getsize(OUT)} bytes, sha256 {digest}…)")

    if args.check:
        m64 = load_model(torch.float64)
        l64, lg64, g64 = training_step(m64, ids)
        rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        print(f"[check] fp32 vs fp64: logits {rel(logits, lg64):.2e} (max|b|={lg64.abs().max().item():.2f}), "
              f"loss {abs(loss.item() - l64.item()) / abs(l64.item()):.2e}, "
              f"grads max over params {max(rel(grads[n], g64[n]) for n in grads):.2e}")


if __name__ == "__main__":
    main()
