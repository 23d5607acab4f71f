// `blt eval` and `blt generate` on a backend B (tessera::cpu or tessera::cuda): load a model folder onto B
// (read on the host, uploaded on CUDA), then evaluate bits per byte or continue a prompt. inference.cpp
// instantiates these for the CPU and prints the results; cuda_commands.cpp instantiates them for CUDA.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "device.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/models/blt/generate.hpp"

namespace bltapp {

/// What `blt eval` measured.
struct EvalResult {
  double bpb = 0;  // bits per predicted byte
  int64_t windows = 0, patches = 0;
  double seconds = 0;
  /// Mean next-byte loss in nats (bpb * ln 2).
  double loss() const { return bpb * std::log(2.0); }
};

/// Inference in precision p: bf16 layers cast their weights once (freeze_bf16_weights: the cast every
/// forward would give the same numbers, at three times the weight traffic of the bf16 products); with frozen
/// weights, cached decoding also takes the fused small products (norms and residuals folded in).
template <class M>
void set_inference_precision(M& model, tessera::Precision p) {
  tessera::set_compute_precision(model, p);
  if (p == tessera::Precision::bf16) tessera::freeze_bf16_weights(model);
}

/// The BLT in folder `dir` on backend B, set up for inference in precision p (set_inference_precision).
template <class B>
std::unique_ptr<BltLm<B>> load_blt_for_inference(const std::string& dir, tessera::Precision p) {
  auto lm = load_blt<B>(dir);
  set_inference_precision(*lm, p);
  return lm;
}

/// Bits per byte of the model (BLT or entropy model) in a.model on a.data, on backend B. Windows are built on
/// the host and uploaded on CUDA; the BLT patches each batch with its own entropy model.
template <class B>
EvalResult evaluate(const EvalArgs& a, const Target& t) {
  const ModelFiles f = resolve_model_dir(a.model);
  const bool entropy_only = is_entropy_config(tessera::io::read_json_file(f.config.string()));
  const std::vector<uint8_t> bytes = load_bytes({a.data});
  const auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  BackendIds<B> xs, ys;
  if (entropy_only) {
    auto m = load_entropy<B>(a.model);
    set_inference_precision(*m, t.precision);
    r.bpb = heldout_bpb(bytes, a.batch, a.seq_len, a.max_windows,
                        [&](const int64_t* x, const int64_t* y, int64_t rows, int64_t T) {
                          r.windows += rows;
                          m->forward(xs.put(x, rows * T), rows, T);
                          return m->loss(ys.put(y, rows * T));
                        });
  } else {
    auto lm = load_blt_for_inference<B>(a.model, t.precision);
    r.bpb = heldout_bpb(bytes, a.batch, a.seq_len, a.max_windows,
                        [&](const int64_t* x, const int64_t* y, int64_t rows, int64_t T) {
                          r.windows += rows;
                          const int64_t* xd = xs.put(x, rows * T);
                          const tessera::blt::PatchLengths pl =
                              lm->model.compute_patch_lengths(xd, rows, T, x);
                          for (int64_t len : pl.lengths) r.patches += len > 0;
                          lm->forward(xd, rows, T, pl.lengths.data(), pl.P);
                          return lm->loss(ys.put(y, rows * T));
                        });
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

/// The sampling options of `blt generate`.
inline tessera::blt::GenerateOptions generate_options(const GenerateArgs& a) {
  tessera::blt::GenerateOptions o;
  o.max_new_tokens = a.n;
  o.temperature = a.temp;
  o.top_k = a.top_k;
  o.top_p = a.top_p > 0 ? a.top_p : 1.0;  // 0 and 1 both mean "off" here
  o.seed = a.seed;
  o.stop_at_eos = !a.ignore_eos;
  return o;
}

/// Continue `prompt` (ids: BOS + bytes) with the BLT in a.model on backend B, in a.precision (checked by
/// select_target first). Cached (entropy model, encoder, global and decoder caches; on the
/// device on CUDA) unless --no-cache asks for the reference's generate_nocache (a full re-patching forward
/// per byte). Prompt and generated ids are host memory.
template <class B>
tessera::blt::GenerateResult generate(const GenerateArgs& a, const std::vector<int64_t>& prompt) {
  auto lm = load_blt_for_inference<B>(a.model, tessera::parse_precision(a.precision));
  const tessera::blt::GenerateOptions o = generate_options(a);
  return a.no_cache ? tessera::blt::generate_uncached(*lm, {prompt}, o)
                    : tessera::blt::generate_cached(*lm, {prompt}, o);
}

// Instantiated once per backend, in cpu_commands.cpp and cuda_commands.cpp (the blt_commands library).
extern template EvalResult evaluate<tessera::cpu>(const EvalArgs&, const Target&);
extern template tessera::blt::GenerateResult generate<tessera::cpu>(const GenerateArgs&,
                                                                    const std::vector<int64_t>&);
#if TESSERA_BLT_CUDA
extern template EvalResult evaluate<tessera::cuda>(const EvalArgs&, const Target&);
extern template tessera::blt::GenerateResult generate<tessera::cuda>(const GenerateArgs&,
                                                                     const std::vector<int64_t>&);
#endif

}  // namespace bltapp
