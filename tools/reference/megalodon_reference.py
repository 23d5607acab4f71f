#!/usr/bin/env python3
"""Parity fixture for tessera's Megalodon, made by running the OFFICIAL Megalodon code on the CPU in fp32.

The official repository (github.com/XuezheMax/megalodon, commit cff8ba5, MIT) is imported from a checkout given
with --megalodon-src; nothing of it is copied here. What this script adds at run time (spec §11):

  * compiles the official CPU reference ops megalodon/csrc/ops/{ema_parameters,ema_hidden,timestep_norm}.cc,
    unchanged, into a torch extension named `megalodon_extension` with a small binding source written into the
    build directory (the CUDA entry points and the CUDA-only ops are stubs that raise);
  * an import shim for NVIDIA apex (not installable from PyPI): on CPU tensors megalodon only calls
    `apex.normalization.fused_layer_norm.manual_rms_norm`, re-implemented below with apex's formula;
  * a gloo process group of world size 1 and the repository's own model/chunk-parallel groups of size 1;
  * redirects the `.cuda()` calls / device="cuda" allocations that the official code makes (CEMA init,
    init_cache) to the CPU, by monkeypatching torch while those calls run.

It writes tests/fixtures/megalodon-tiny/{config.json, model.safetensors, cases.safetensors}; see
tools/reference/README.md ("megalodon_reference.py") for the contents and the exact command.

Needs a venv made from Debian's python (torch 1.13 CPU) with fairscale and safetensors:

    /usr/bin/python3 -m venv --system-site-packages /work/venv-mgl
    /work/venv-mgl/bin/pip install --no-build-isolation -r tools/reference/megalodon_requirements.txt
    /work/venv-mgl/bin/python tools/reference/megalodon_reference.py --megalodon-src DIR [--out DIR] [--check]

Deterministic: fixed seeds, one intra-op thread, no timestamps or paths in the files.
"""
import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import types

import torch
import torch.distributed
import torch.nn.functional as F

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "megalodon-tiny")
DEFAULT_BUILD = os.path.join(tempfile.gettempdir(), "megalodon-reference-build")

OFFICIAL_COMMIT = "cff8ba5f607a2176bbd0166afc09842984433f93"
# git blob ids at OFFICIAL_COMMIT of the files whose behaviour the fixture records (checked before running).
OFFICIAL_BLOBS = {
    "megalodon/config.py": "af7588b6294acd2928e8b796b6fc4bbc1db141fa",
    "megalodon/csrc/ops/ema_hidden.cc": "7ad01b1e98073d7d6cafa2ba3e1cfc8b01e67365",
    "megalodon/csrc/ops/ema_parameters.cc": "9625800e5628f5225ecc0fe8e3f520b87938ffcb",
    "megalodon/csrc/ops/timestep_norm.cc": "d574b8a53e050651ad11e6a84e87020920dbae95",
    "megalodon/csrc/utils.h": "8ec9a2d6a1b8e1803e146042afeb721c438e8b82",
    "megalodon/model/mega.py": "33e789d059c699d6a8034a55141ccba0cb60f5f4",
    "megalodon/modules/complex_exponential_moving_average.py": "2e60827a235f40989bc2ce91af41bb6e9ca31967",
    "megalodon/modules/fused_ops/ema_hidden.py": "9a9aeae4a89eb8a989818f508fd8f083e0b73578",
    "megalodon/modules/fused_ops/ema_parameters.py": "073d5015c6ab7341e53795e3fe0bfc8967c28bfe",
    "megalodon/modules/fused_ops/fftconv.py": "c5dd293ab3fb7494f55d6205d94b366971fdc6c2",
    "megalodon/modules/layer_norm.py": "39c55b3ee433e2399cc4179477045df55c8ab87c",
    "megalodon/modules/moving_average_gated_attention.py": "1ebb90e789beef8c1b80554095e780ddf93c9b95",
    "megalodon/modules/normalized_feedforward_network.py": "816e358424a690c6858b9fc23eac36e3869dad49",
    "megalodon/modules/rotary_positional_embedding.py": "021b76194a1d3c6c22ff7c274640dbb3742c94bb",
    "megalodon/modules/timestep_norm.py": "18301398c9598cfab2b9da52400f488d6cd6a2c9",
    "megalodon/utils.py": "563e1782518391ba86e81dd78ef1b6c7648a6634",
}

# ModelConf fields that differ from the official defaults; everything else keeps its default (config.json
# records all fields).
CONFIG = dict(num_layers=2, model_dim=32, z_dim=16, value_dim=32, num_heads=2, ffn_hidden_dim=48, cema_ndim=8,
              chunk_size=16, norm_num_groups=4, vocab_size=64, swiglu=True, rope_base=None, norm_eps=1e-5)
SEED = 20240417          # torch.manual_seed before building the model (official init uses the global RNG)
PERTURB_STD = 0.1        # N(0, 0.1) added to every tensor the official init leaves exactly zero
B, T = 2, 32             # model / layer cases
CEMA_B, CEMA_L = 2, 40   # op cases (L not a power of two)
STREAM_PIECES = (32, 5, 1, 1, 1)

# ---------------------------------------------------------------------------------------------------------
# Build of the official CPU ops
# ---------------------------------------------------------------------------------------------------------
# Our binding: registers the official dispatch functions (declared in the official headers) under the names
# the Python modules call (megalodon_extension.ops.<name>). Their CUDA branches link to the stubs below, and
# the CUDA-only ops (fftconv, swift attention, attention softmax) are registered as functions that raise; on
# CPU tensors none of them is reached (fftconv falls back to torch.fft, attention is plain PyTorch).
BINDING_SOURCE = r"""
// Generated by tools/reference/megalodon_reference.py (tessera). CPU-only binding of the official
// megalodon_extension ops; the official ops/*.cc files are compiled unchanged next to this file.
#include <torch/extension.h>

#include <stdexcept>
#include <string>

#include "ops/ema_hidden.h"
#include "ops/ema_parameters.h"
#include "ops/timestep_norm.h"

namespace megalodon {
namespace ops {
namespace {
[[noreturn]] void CudaOnly(const char* name) {
  TORCH_CHECK(false, name, ": CUDA kernel not available in this CPU-only build of megalodon_extension "
              "(tools/reference/megalodon_reference.py); pass CPU tensors");
}
}  // namespace

using Opt = c10::optional<torch::Tensor>;
using T = torch::Tensor;

std::tuple<T, Opt, Opt> EMAParametersCUDAFwd(const T&, const T&, const T&, const Opt&, int64_t) {
  CudaOnly("EMAParametersCUDAFwd");
}
std::tuple<T, T, T, Opt> EMAParametersCUDABwd(const T&, const Opt&, const T&, const T&, const T&, const Opt&,
                                              const Opt&) {
  CudaOnly("EMAParametersCUDABwd");
}
std::tuple<T, Opt> EMAHiddenCUDAFwd(const T&, const T&, const T&, const Opt&) { CudaOnly("EMAHiddenCUDAFwd"); }
std::tuple<T, T, T, Opt> EMAHiddenCUDABwd(const T&, const T&, const T&, const T&, const Opt&, const Opt&) {
  CudaOnly("EMAHiddenCUDABwd");
}
std::tuple<T, T, T, T, T, T> TimestepNormCUDAFwd(const T&, const T&, const T&, const T&, const T&, const T&,
                                                 const Opt&, double) {
  CudaOnly("TimestepNormCUDAFwd");
}
std::tuple<T, T, T, T, T> TimestepNormCUDABwd(const T&, const T&, const T&, const T&, const T&, const T&,
                                              const T&, const T&, const T&, const Opt&) {
  CudaOnly("TimestepNormCUDABwd");
}
std::tuple<T, T, T, T, T, T> GroupTimestepNormCUDAFwd(const T&, const T&, const T&, const T&, const T&,
                                                      const T&, const Opt&, int64_t, double) {
  CudaOnly("GroupTimestepNormCUDAFwd");
}
std::tuple<T, T, T, T, T> GroupTimestepNormCUDABwd(const T&, const T&, const T&, const T&, const T&, const T&,
                                                   const T&, const T&, const T&, const Opt&, int64_t) {
  CudaOnly("GroupTimestepNormCUDABwd");
}

}  // namespace ops
}  // namespace megalodon

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace mo = megalodon::ops;
  py::module o = m.def_submodule("ops", "official CPU reference ops (CPU-only build)");
  o.def("ema_parameters_fwd", &mo::EMAParametersFwd);
  o.def("ema_parameters_bwd", &mo::EMAParametersBwd);
  o.def("ema_hidden_fwd", &mo::EMAHiddenFwd);
  o.def("ema_hidden_bwd", &mo::EMAHiddenBwd);
  o.def("timestep_norm_fwd", &mo::TimestepNormFwd);
  o.def("timestep_norm_bwd", &mo::TimestepNormBwd);
  o.def("group_timestep_norm_fwd", &mo::GroupTimestepNormFwd);
  o.def("group_timestep_norm_bwd", &mo::GroupTimestepNormBwd);
  for (const char* name : {"rfft", "fftconv_fwd", "fftconv_bwd", "attention_fwd", "attention_bwd",
                           "attention_softmax_fwd", "attention_softmax_bwd"}) {
    const std::string n(name);
    o.def(name, [n](py::args, py::kwargs) -> py::object {
      throw std::runtime_error(n + ": CUDA-only op, not built in this CPU-only megalodon_extension");
    });
  }
}
"""

OFFICIAL_OPS = ("ema_parameters.cc", "ema_hidden.cc", "timestep_norm.cc")


def git_blob_id(path):
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_official_tree(src, allow_other):
    bad = []
    for rel, blob in OFFICIAL_BLOBS.items():
        p = os.path.join(src, rel)
        if not os.path.isfile(p):
            bad.append(f"{rel}: missing")
        elif git_blob_id(p) != blob:
            bad.append(f"{rel}: differs from {OFFICIAL_COMMIT[:7]}")
    if bad:
        msg = "--megalodon-src is not the official checkout at " + OFFICIAL_COMMIT + ":\n  " + "\n  ".join(bad)
        if not allow_other:
            sys.exit(msg + "\n(use --allow-other-commit to run anyway)")
        print("WARNING: " + msg, file=sys.stderr)
    return not bad


def build_extension(src, build_dir, verbose):
    from torch.utils.cpp_extension import load
    csrc = os.path.join(src, "megalodon", "csrc")
    os.makedirs(build_dir, exist_ok=True)
    binding = os.path.join(build_dir, "megalodon_cpu_binding.cpp")
    if not os.path.exists(binding) or open(binding).read() != BINDING_SOURCE:
        with open(binding, "w") as f:
            f.write(BINDING_SOURCE)
    sources = [binding] + [os.path.join(csrc, "ops", name) for name in OFFICIAL_OPS]
    # Flags as in the official setup.py (cxx: -O3 -std=c++17, no fast-math).
    ext = load(name="megalodon_extension", sources=sources, extra_include_paths=[csrc],
               extra_cflags=["-O3", "-std=c++17"], build_directory=build_dir, verbose=verbose)
    # `import megalodon_extension.ops as megalodon_ops` needs both names in sys.modules (ops is a pybind
    # submodule, not a package member).
    sys.modules["megalodon_extension"] = ext
    sys.modules["megalodon_extension.ops"] = ext.ops
    return ext


# ---------------------------------------------------------------------------------------------------------
# Run-time shims and patches (nothing in --megalodon-src is modified)
# ---------------------------------------------------------------------------------------------------------
def install_apex_shim():
    """megalodon/modules/layer_norm.py imports apex (NVIDIA apex 23.08, built with CUDA extensions; not on PyPI)
    and the module fused_layer_norm_cuda. On CPU tensors the layers only call manual_rms_norm (FusedRMSNorm)
    and torch.nn.functional.layer_norm (FusedLayerNorm); everything else is a stub that raises."""

    def manual_rms_norm(input, normalized_shape, weight, eps):
        # apex's CPU/reference RMSNorm: mean of squares over the normalized dims in float32,
        # x * rsqrt(ms + eps), then (cast to a half weight dtype if needed) weight * x.
        dims = tuple(range(-len(normalized_shape), 0))
        ms = input.to(torch.float32).pow(2).mean(dims, keepdim=True)
        out = input * torch.rsqrt(ms + eps)
        if weight is None:
            return out
        if weight.dtype in (torch.float16, torch.bfloat16):
            out = out.to(weight.dtype)
        return weight * out

    def cuda_only(name):
        def f(*args, **kwargs):
            raise RuntimeError(f"apex shim: {name} needs apex's CUDA extension (not available on CPU)")
        return f

    apex = types.ModuleType("apex")
    apex.__path__ = []
    normalization = types.ModuleType("apex.normalization")
    normalization.__path__ = []
    fln = types.ModuleType("apex.normalization.fused_layer_norm")
    fln.manual_rms_norm = manual_rms_norm
    for name in ("fused_layer_norm_affine", "fused_layer_norm", "fused_rms_norm_affine", "fused_rms_norm"):
        setattr(fln, name, cuda_only("apex.normalization.fused_layer_norm." + name))
    apex.normalization = normalization
    normalization.fused_layer_norm = fln
    cuda_ext = types.ModuleType("fused_layer_norm_cuda")
    cuda_ext.__getattr__ = lambda name: cuda_only("fused_layer_norm_cuda." + name)
    sys.modules.update({"apex": apex, "apex.normalization": normalization,
                        "apex.normalization.fused_layer_norm": fln, "fused_layer_norm_cuda": cuda_ext})


@contextlib.contextmanager
def cuda_to_cpu():
    """While active, Tensor.cuda() returns the tensor unchanged and torch.empty(..., device="cuda") allocates on
    the CPU. Used around the official calls that hard-code CUDA: the CEMA init's permutation broadcast
    (`idx.cuda()`) and megalodon.utils.init_cache (K/V cache allocation)."""
    orig_cuda, orig_empty = torch.Tensor.cuda, torch.empty

    def cuda(self, *args, **kwargs):
        return self

    def empty(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return orig_empty(*args, device=device, **kwargs)

    torch.Tensor.cuda, torch.empty = cuda, empty
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.empty = orig_cuda, orig_empty


def init_distributed(tmp_dir):
    import torch.distributed as dist
    from megalodon.distributed import initialize_model_parallel
    store = os.path.join(tmp_dir, "gloo_store")
    dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
    initialize_model_parallel(1, 1)


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
def gen(k):
    return torch.Generator().manual_seed(SEED * 10 + k)


def randn(shape, g, std=1.0, dtype=torch.float32):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)


def perturb_zero_init(model, g):
    """Add N(0, PERTURB_STD) to every parameter tensor the official init leaves exactly zero, and set the
    imaginary part of each CEMA gamma (official init: 0). Returns the names touched."""
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("cema.gamma"):
                assert torch.count_nonzero(p[:, :, 1]) == 0, name
                p[:, :, 1] = randn(p[:, :, 1].shape, g, PERTURB_STD)
                touched.append(name + "[:, :, 1]")
            elif torch.count_nonzero(p) == 0:
                p.copy_(randn(p.shape, g, PERTURB_STD))
                touched.append(name)
        for name, p in model.named_parameters():
            assert torch.count_nonzero(p) == p.numel(), f"{name} still has exact zeros"
    return touched


def maxabs(a, b):
    return (a.double() - b.double()).abs().max().item()


def rel(a, b):
    """max|a - b| / max|b|."""
    return maxabs(a, b) / max(b.double().abs().max().item(), 1e-30)


def put(cases, key, t):
    assert key not in cases, key
    t = t.detach()
    if torch.is_complex(t):
        t = torch.view_as_real(t)
    assert t.dtype in (torch.float32, torch.int64), (key, t.dtype)
    cases[key] = t.contiguous().clone()


# ---------------------------------------------------------------------------------------------------------
# Independent float64 references for the two custom ops (sanity only; not written)
# ---------------------------------------------------------------------------------------------------------
def cema_naive(alpha, delta, theta, gamma, omega, u, hx):
    """Sequential CEMA (spec 1.3) in complex128: h_t = p x_t + q h_{t-1}, y_t = Re(sum_n g_n h_t,n) + omega x_t."""
    D, N, _ = alpha.shape
    p = torch.sigmoid(alpha[..., 0])
    decay = 1.0 - p * torch.sigmoid(delta[..., 0])
    angle = torch.arange(1, N + 1, dtype=torch.float64)[None, :] * (torch.sigmoid(theta[:, 0, :]) * 2 * math.pi / N)
    q = torch.polar(decay, angle)
    g = torch.view_as_complex(gamma) * math.sqrt(1.0 / N)
    h = torch.zeros(u.shape[0], D, N, dtype=torch.complex128) if hx is None else hx
    ys = []
    for t in range(u.shape[-1]):
        h = p * u[:, :, t, None] + q * h
        ys.append((g * h).sum(-1).real + omega[:, 0] * u[:, :, t])
    return torch.stack(ys, -1), h


def tsn_naive(x, prev_count, prev_mean, prev_var, weight, bias, groups, eps):
    """Group timestep norm (spec 2) from cumulative sums in float64; each step adds one count per group."""
    Bx, L, D = x.shape
    xg = x.view(Bx, L, groups, D // groups)
    gm, gv = xg.mean(-1), xg.var(-1, unbiased=False)
    c0 = prev_count.to(torch.float64)[:, None, None]
    cnt = c0 + torch.arange(1, L + 1, dtype=torch.float64)[None, :, None]
    mean = (c0 * prev_mean[:, None, :] + gm.cumsum(1)) / cnt
    m2 = (c0 * (prev_var + prev_mean ** 2)[:, None, :] + (gv + gm ** 2).cumsum(1)) / cnt
    var = m2 - mean ** 2
    y = ((xg - mean[..., None]) * torch.rsqrt(var[..., None] + eps)).reshape(Bx, L, D) * (1.0 + weight) + bias
    return y, mean[:, -1], var[:, -1]


# ---------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------
def model_batch():
    g = gen(1)
    seq = torch.randint(0, CONFIG["vocab_size"], (B, T + 1), generator=g)
    tokens, targets = seq[:, :T].contiguous(), seq[:, 1:].clone()
    targets[0, :3] = -100
    targets[1, 13] = -100
    targets[1, T - 4:] = -100
    return tokens, targets


def loss_fn(logits, targets):
    # mean cross-entropy over the targets != -100, from the fp32 logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def run_model_case(model, cases):
    tokens, targets = model_batch()
    model.train()
    model.zero_grad(set_to_none=True)
    logits, _ = model(tokens)
    loss = loss_fn(logits, targets)
    loss.backward()
    put(cases, "tokens", tokens)
    put(cases, "targets", targets)
    put(cases, "logits", logits)
    put(cases, "loss", loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        put(cases, "grad." + name, p.grad)
    model.zero_grad(set_to_none=True)
    return loss.item()


def causal_mask(n, cache_len, like):
    # exactly as Mega.forward builds it (efficient_attn unset)
    mask = torch.full((1, 1, n, n + cache_len), float("-inf"))
    return torch.triu(mask, diagonal=cache_len + 1).type_as(like)


def run_layer_case(model, cases):
    g = gen(2)
    block = model.layers[0]
    C = model.chunk_size
    x = randn((B, T, CONFIG["model_dim"]), g).requires_grad_(True)
    dy = randn((B, T, CONFIG["model_dim"]), g)
    model.train()
    model.zero_grad(set_to_none=True)
    freqs_cis = model.rope.get_freqs_cis(0, min(T, C))
    y, _ = block(x, freqs_cis, causal_mask(min(T, C), 0, x), None)
    y.backward(dy)
    put(cases, "layer.x", x)
    put(cases, "layer.y", y)
    put(cases, "layer.dy", dy)
    put(cases, "layer.grad.x", x.grad)
    for name, p in block.named_parameters():
        assert p.grad is not None, f"no gradient for layers.0.{name}"
        put(cases, "layer.grad." + name, p.grad)
    model.zero_grad(set_to_none=True)


def fresh_cema(MultiHeadComplexEMA, D, N, g):
    """A MultiHeadComplexEMA built by the official constructor, then given fresh random parameters with a wider
    spread than the official init (|q| from 0.33 to 0.99 here, so the carried state hx still matters at t = 40)."""
    with cuda_to_cpu():
        cema = MultiHeadComplexEMA(D, ndim=N)
    with torch.no_grad():
        cema.alpha.copy_(randn((D, N, 1), g, 1.0))
        cema.delta.copy_(randn((D, N, 1), g, 1.0))
        cema.theta.copy_(randn((D, 1, 1), g, 1.0))
        cema.gamma.copy_(randn((D, N, 2), g, 1.0))
        cema.omega.copy_(randn((D, 1), g, 0.5))
    return cema.float().train()


def run_cema_case(cema, cases, prefix, with_hx, g):
    D, N = cema.embed_dim, cema.ndim
    u = randn((CEMA_B, D, CEMA_L), g).requires_grad_(True)
    hx_r = randn((CEMA_B, D, N, 2), g, 0.5).requires_grad_(True) if with_hx else None
    dy = randn((CEMA_B, D, CEMA_L), g)
    dh = randn((CEMA_B, D, N, 2), g)
    cema.zero_grad(set_to_none=True)
    hx = torch.view_as_complex(hx_r) if with_hx else None
    y, h = cema(u, hx, compute_last_state=True)
    torch.autograd.backward([y, torch.view_as_real(h)], [dy, dh])
    for pname in ("alpha", "delta", "theta", "gamma", "omega"):
        put(cases, f"{prefix}.{pname}", getattr(cema, pname))
    put(cases, f"{prefix}.u", u)
    if with_hx:
        put(cases, f"{prefix}.hx", hx_r)
    put(cases, f"{prefix}.y", y)
    put(cases, f"{prefix}.h", h)
    put(cases, f"{prefix}.dy", dy)
    put(cases, f"{prefix}.dh", dh)
    put(cases, f"{prefix}.grad.u", u.grad)
    if with_hx:
        put(cases, f"{prefix}.grad.hx", hx_r.grad)
    for pname in ("alpha", "delta", "theta", "gamma", "omega"):
        put(cases, f"{prefix}.grad.{pname}", getattr(cema, pname).grad)

    # sanity: the same computation as a plain float64 recurrence with autograd
    prm = {k: getattr(cema, k).detach().double().requires_grad_(True)
           for k in ("alpha", "delta", "theta", "gamma", "omega")}
    u64 = u.detach().double().requires_grad_(True)
    hx64 = hx_r.detach().double().requires_grad_(True) if with_hx else None
    y64, h64 = cema_naive(prm["alpha"], prm["delta"], prm["theta"], prm["gamma"], prm["omega"], u64,
                          None if hx64 is None else torch.view_as_complex(hx64))
    torch.autograd.backward([y64, torch.view_as_real(h64)], [dy.double(), dh.double()])
    errs = {"y": rel(y, y64), "h": rel(torch.view_as_real(h), torch.view_as_real(h64)),
            "grad.u": rel(u.grad, u64.grad)}
    if with_hx:
        errs["grad.hx"] = rel(hx_r.grad, hx64.grad)
    for k, v in prm.items():
        errs["grad." + k] = rel(getattr(cema, k).grad, v.grad)
    return errs


def run_tsn_case(TimestepNorm, cases, prefix, with_state, g):
    D, G, eps = CONFIG["model_dim"], CONFIG["norm_num_groups"], CONFIG["norm_eps"]
    tsn = TimestepNorm(D, G, eps=eps).float().train()   # as the official layers build it
    with torch.no_grad():
        tsn.weight.copy_(randn((D,), g, 0.3))
        tsn.bias.copy_(randn((D,), g, 0.3))
    x = (randn((CEMA_B, CEMA_L, D), g, 1.3) + randn((1, 1, D), g, 0.7)).requires_grad_(True)
    if with_state:
        prev_count = torch.tensor([7, 23], dtype=torch.int64)
        prev_mean = randn((CEMA_B, G), g, 0.5).requires_grad_(True)
        prev_var = (0.5 + 1.5 * torch.rand((CEMA_B, G), generator=g, dtype=torch.float64)).float()
        prev_var.requires_grad_(True)
        y, count, mean, var = tsn(x, prev_count, prev_mean, prev_var)
    else:
        y, count, mean, var = tsn(x)
    dy = randn((CEMA_B, CEMA_L, D), g)
    dmean = randn((CEMA_B, G), g)
    dvar = randn((CEMA_B, G), g)
    torch.autograd.backward([y, mean, var], [dy, dmean, dvar])
    put(cases, f"{prefix}.x", x)
    if with_state:
        put(cases, f"{prefix}.prev_count", prev_count)
        put(cases, f"{prefix}.prev_mean", prev_mean)
        put(cases, f"{prefix}.prev_var", prev_var)
    put(cases, f"{prefix}.weight", tsn.weight)
    put(cases, f"{prefix}.bias", tsn.bias)
    put(cases, f"{prefix}.y", y)
    put(cases, f"{prefix}.count", count)
    put(cases, f"{prefix}.mean", mean)
    put(cases, f"{prefix}.var", var)
    put(cases, f"{prefix}.dy", dy)
    put(cases, f"{prefix}.dmean", dmean)
    put(cases, f"{prefix}.dvar", dvar)
    put(cases, f"{prefix}.grad.x", x.grad)
    if with_state:
        put(cases, f"{prefix}.grad.prev_mean", prev_mean.grad)
        put(cases, f"{prefix}.grad.prev_var", prev_var.grad)
    put(cases, f"{prefix}.grad.weight", tsn.weight.grad)
    put(cases, f"{prefix}.grad.bias", tsn.bias.grad)

    # sanity: float64 reference from cumulative sums
    x64 = x.detach().double().requires_grad_(True)
    w64 = tsn.weight.detach().double().requires_grad_(True)
    b64 = tsn.bias.detach().double().requires_grad_(True)
    if with_state:
        pc, pm64, pv64 = prev_count, prev_mean.detach().double().requires_grad_(True), \
            prev_var.detach().double().requires_grad_(True)
    else:
        pc = tsn.prior_count.expand(CEMA_B)
        pm64 = tsn.prior_mean.double().expand(CEMA_B, -1)
        pv64 = tsn.prior_logv.double().exp().expand(CEMA_B, -1)
    y64, m64, v64 = tsn_naive(x64, pc, pm64, pv64, w64, b64, G, eps)
    torch.autograd.backward([y64, m64, v64], [dy.double(), dmean.double(), dvar.double()])
    assert torch.equal(count, pc + CEMA_L), "count"
    errs = {"y": rel(y, y64), "mean": rel(mean, m64), "var": rel(var, v64), "grad.x": rel(x.grad, x64.grad),
            "grad.weight": rel(tsn.weight.grad, w64.grad), "grad.bias": rel(tsn.bias.grad, b64.grad)}
    if with_state:
        errs["grad.prev_mean"] = rel(prev_mean.grad, pm64.grad)
        errs["grad.prev_var"] = rel(prev_var.grad, pv64.grad)
    return errs


def run_stream_case(model, init_cache, cases):
    """The official inference-cache path (as generation.py drives it): model(tokens, cache) fed in pieces."""
    g = gen(5)
    n = sum(STREAM_PIECES)
    C = model.chunk_size
    n_full = -(-n // C) * C   # 48: a plain forward needs a length that is a multiple of the chunk size
    tokens_full = torch.randint(0, CONFIG["vocab_size"], (1, n_full), generator=g)
    tokens = tokens_full[:, :n].contiguous()
    model.eval()
    with torch.no_grad():
        with cuda_to_cpu():
            cache = init_cache(1, model, torch.float32)
        outs, pos = [], 0
        for k in STREAM_PIECES:
            logits, cache = model(tokens[:, pos:pos + k], cache=cache)
            outs.append(logits)
            pos += k
        stream = torch.cat(outs, dim=1)
        full32, _ = model(tokens[:, :STREAM_PIECES[0]])
        full48, _ = model(tokens_full)
    model.train()
    put(cases, "stream.tokens", tokens)
    put(cases, "stream.logits", stream)
    return {"stream[:, :32] vs plain forward(32 tokens)": maxabs(stream[:, :32], full32),
            f"stream[:, :{n}] vs plain forward({n_full} tokens)[:, :{n}]": maxabs(stream, full48[:, :n])}


def fp64_check(model, tokens, targets, cases):
    """Same weights in float64 (the official code still does RoPE and the RMSNorm statistic in fp32)."""
    m64 = copy.deepcopy(model).double().train()
    m64.zero_grad(set_to_none=True)
    logits, _ = m64(tokens)
    loss = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    worst = max((rel(cases["grad." + n], p.grad), n) for n, p in m64.named_parameters())
    print(f"[check] fp32 vs fp64 (same official code): logits max|a-b|/max|b| {rel(cases['logits'], logits):.2e}, "
          f"loss rel {abs(cases['loss'].item() - loss.item()) / abs(loss.item()):.2e}, "
          f"gradients max over params of max|a-b|/max|b| {worst[0]:.2e} ({worst[1]})")


# ---------------------------------------------------------------------------------------------------------
def save(path, tensors, info):
    from safetensors.torch import save_file
    # one metadata key only: safetensors serialises the metadata map in hash order
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"info": json.dumps(info, sort_keys=True, separators=(",", ":"))})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megalodon-src", required=True, help="checkout of github.com/XuezheMax/megalodon at cff8ba5")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"fixture directory (default {DEFAULT_OUT})")
    ap.add_argument("--build-dir", default=DEFAULT_BUILD, help="where the extension is compiled (reused)")
    ap.add_argument("--check", action="store_true", help="also print fp32-vs-fp64 drift of the model case")
    ap.add_argument("--allow-other-commit", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="show the extension build")
    args = ap.parse_args()
    src = os.path.abspath(args.megalodon_src)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    official = check_official_tree(src, args.allow_other_commit)

    install_apex_shim()
    build_extension(src, args.build_dir, args.verbose)
    sys.path.insert(0, src)
    from megalodon.config import ModelConf
    from megalodon.model.mega import Mega
    from megalodon.modules import TimestepNorm
    from megalodon.modules.complex_exponential_moving_average import MultiHeadComplexEMA
    from megalodon.utils import init_cache
    import megalodon
    assert os.path.dirname(os.path.abspath(megalodon.__file__)) == os.path.join(src, "megalodon"), megalodon.__file__

    tmp = tempfile.mkdtemp(prefix="megalodon-ref-")
    init_distributed(tmp)

    cfg = ModelConf(**CONFIG)
    torch.manual_seed(SEED)
    with cuda_to_cpu():
        model = Mega(cfg)
    model.float()
    touched = perturb_zero_init(model, gen(0))

    cases = {}
    loss = run_model_case(model, cases)
    run_layer_case(model, cases)
    g = gen(3)
    cema = fresh_cema(MultiHeadComplexEMA, CONFIG["model_dim"], CONFIG["cema_ndim"], g)
    cema_errs = run_cema_case(cema, cases, "cema", True, g)
    cema_nohx_errs = run_cema_case(cema, cases, "cema_nohx", False, g)
    g = gen(4)
    tsn_errs = run_tsn_case(TimestepNorm, cases, "tsn", True, g)
    tsn_nostate_errs = run_tsn_case(TimestepNorm, cases, "tsn_nostate", False, g)
    stream_diffs = run_stream_case(model, init_cache, cases)

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    param_names = {n for n, _ in model.named_parameters()}
    buffers = sorted(set(state) - param_names)

    os.makedirs(args.out, exist_ok=True)
    conf = dataclasses.asdict(cfg)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
        f.write("\n")
    info = {"generator": "tools/reference/megalodon_reference.py", "official_commit": OFFICIAL_COMMIT,
            "official_tree_verified": official, "torch": torch.__version__, "seed": SEED,
            "perturbed": {"std": PERTURB_STD, "tensors": touched}, "buffers": buffers}
    save(os.path.join(args.out, "model.safetensors"), state, info)
    info_cases = dict(info, loss="mean cross-entropy over targets != -100 of the fp32 logits",
                      stream_pieces=list(STREAM_PIECES),
                      cema="fresh MultiHeadComplexEMA(32, ndim=8) with random parameters (standard deviations: "
                           "alpha, delta, theta, gamma (both parts) 1, omega 0.5); the same for cema and cema_nohx",
                      tsn="fresh TimestepNorm(32, 4) (as the layers build it) with weight, bias of std 0.3")
    save(os.path.join(args.out, "cases.safetensors"), cases, info_cases)

    # summary
    print(f"official tree at {OFFICIAL_COMMIT[:7]} verified: {official}; torch {torch.__version__}")
    print(f"perturbed (N(0,{PERTURB_STD})): {', '.join(touched)}")
    print(f"buffers in model.safetensors: {', '.join(buffers)}")
    print(f"model.safetensors: {len(state)} tensors, {sum(v.numel() for v in state.values())} values")
    print(f"cases.safetensors: {len(cases)} tensors")
    for k in sorted(cases):
        if not (k.startswith("grad.") or k.startswith("layer.grad.") and k != "layer.grad.x"):
            v = cases[k]
            print(f"  {k:28s} {str(list(v.shape)):16s} {str(v.dtype)[6:]:8s}",
                  v.flatten()[:3].tolist() if v.is_floating_point() else "")
    print(f"  (+ {sum(k.startswith('grad.') for k in cases)} grad.<param>, "
          f"{sum(k.startswith('layer.grad.') for k in cases) - 1} layer.grad.<param>)")
    print(f"loss = {loss:.8f}   (ln 64 = {math.log(64):.4f})")
    for k, v in stream_diffs.items():
        print(f"[sanity] {k}: max|diff| = {v:.3e}")
    for name, errs in (("cema", cema_errs), ("cema_nohx", cema_nohx_errs), ("tsn", tsn_errs),
                       ("tsn_nostate", tsn_nostate_errs)):
        print(f"[sanity] {name} official fp32 vs float64 naive (max|a-b|/max|b|): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    if args.check:
        fp64_check(model, cases["tokens"], cases["targets"], cases)
    for f in ("config.json", "model.safetensors", "cases.safetensors"):
        p = os.path.join(args.out, f)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    torch.distributed.destroy_process_group()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
