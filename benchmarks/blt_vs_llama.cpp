// BLT against a byte-level Llama at equal training FLOPs on GCIDE (benchmarks/blt_vs_llama.md).
//
//   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 build/benchmarks/blt_vs_llama [--json results.json]
//   build/benchmarks/blt_vs_llama --check-only        # only the FLOP-formula assertions
//
// 1. The FLOP formulas (blt_flops.hpp) are checked against a hand-computed case and against a brute-force
// count
//    over a real model's parameters and a real patch layout's masks (exits non-zero on a mismatch).
// 2. An entropy model (models::Llama, ids byte + 4 with BOS, window 512) is trained on the training split; a
//    global entropy threshold is calibrated on training windows for a target mean patch length.
// 3. BLT is trained with patches from the frozen entropy model (recomputed each step); its FLOPs are counted
//    per step from each row's actual number of patches.
// 4. A byte-level Llama (same ids, same batches) sized to about BLT's FLOPs/byte is trained for the number of
//    steps that makes its total training FLOPs equal to BLT's; both are evaluated on the same held-out
//    windows at the same FLOP budgets (1/4, 1/2, all of BLT's total).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "blt_flops.hpp"
#include "tessera/layers/init.hpp"
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/train/train.hpp"

using namespace tessera;
using bench::BltFlops;
using nlohmann::json;
using Blt = blt::BltForCausalLM<float>;
using Llama = models::Llama<float>;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// SwiGLU hidden width: 8d/3 rounded up to a multiple of 16.
int64_t ffn_for(int64_t d) {
  return (8 * d / 3 + 15) / 16 * 16;
}

// ---- FLOP-formula checks ------------------------------------------------------------------------------

int g_failures = 0;
void expect_close(double got, double want, const std::string& what) {
  const double rel = std::abs(got - want) / std::max(1.0, std::abs(want));
  const bool ok = rel < 1e-12;
  std::printf("  %-58s %14.0f  expected %14.0f  %s\n", what.c_str(), got, want, ok ? "ok" : "MISMATCH");
  if (!ok) ++g_failures;
}

/// Rows a BLT linear weight is applied to, from its parameter name (0 = a lookup table); unknown names throw
/// so that a new layer cannot silently go uncounted.
double blt_rows(const std::string& n, double T, double P, double k) {
  auto starts = [&](const char* p) { return n.rfind(p, 0) == 0; };
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (has("embed_tokens") || has("encoder_hash_tok_embedding")) return 0;
  if (starts("model.local_encoder.layers.")) return T;
  if (starts("model.local_encoder.patch_embedding_projection.")) return P;
  if (starts("model.local_encoder.cross_attn_layers."))
    return has("q_proj") || has("o_proj") ? P * k : T;  // queries: k slots per patch; keys/values: bytes
  if (starts("model.global_transformer.")) return P;
  if (starts("model.local_decoder.patch_embedding_projection.")) return P;
  if (starts("model.local_decoder.cross_attn_layers."))
    return has("q_proj") || has("o_proj") ? T
                                          : P * k;  // queries: bytes; keys/values: k memory slots per patch
  if (starts("model.local_decoder.layers.")) return T;
  if (starts("lm_head.")) return T;
  throw Error(str("blt_vs_llama: no FLOP rule for parameter '", n, "'"));
}

/// Brute-force forward FLOPs of a batch: 2·rows·numel over every linear weight of the model, plus 4·d per
/// attended pair, with the pairs enumerated from the layout's masks (real patches only; padding excluded).
double blt_brute_force(Blt& lm, const blt::PatchLayout& L, int64_t window) {
  const auto& c = lm.config();
  std::vector<double> Pb(L.B, 0);
  for (int64_t b = 0; b < L.B; ++b)
    for (int64_t p = 0; p < L.P; ++p) Pb[b] += L.lengths[b * L.P + p] > 0;
  double P = 0;
  for (double x : Pb) P += x;
  const double T = static_cast<double>(L.B * L.T), k = static_cast<double>(c.cross_attn_k);
  double flops = 0;
  for_each_param(lm, [&](const std::string& n, auto& p) {
    if (p.value.rank() == 2) flops += 2.0 * static_cast<double>(p.value.numel()) * blt_rows(n, T, P, k);
  });
  double self_pairs = 0, enc_pairs = 0, dec_pairs = 0, glob_pairs = 0;
  for (int64_t b = 0; b < L.B; ++b) {
    for (int64_t i = 0; i < L.T; ++i)
      for (int64_t j = 0; j <= i; ++j) self_pairs += window <= 0 || i - j < window;
    for (int64_t s = 0; s < L.P * L.k; ++s)
      for (int64_t j = 0; j < L.T; ++j)
        enc_pairs += L.patch_id[b * L.T + j] == L.slot_patch[b * L.P * L.k + s];
    for (int64_t i = 0; i < L.T; ++i)
      for (int64_t s = 0; s < L.P * L.k; ++s)
        dec_pairs += L.slot_patch[b * L.P * L.k + s] == L.dec_patch[b * L.T + i];
    for (int64_t p = 0; p < L.P; ++p)
      for (int64_t q = 0; q <= p; ++q) glob_pairs += L.lengths[b * L.P + p] > 0 && L.lengths[b * L.P + q] > 0;
  }
  const double n_dec_cross = c.decoder.cross_attn_all_layers ? static_cast<double>(c.decoder.n_layers) : 1.0;
  flops += 4.0 * static_cast<double>(c.encoder.dim * c.encoder.n_layers) * self_pairs;
  flops += 4.0 * static_cast<double>(c.decoder.dim * c.decoder.n_layers) * self_pairs;
  flops += 4.0 * static_cast<double>(c.encoder.dim) * enc_pairs;
  flops += 4.0 * static_cast<double>(c.decoder.dim) * n_dec_cross * dec_pairs;
  flops += 4.0 * static_cast<double>(c.global.dim * c.global.n_layers) * glob_pairs;
  return flops;
}

/// The same brute force for a Llama: every rank-2 weight except the embedding on every token.
double llama_brute_force(Llama& m, int64_t B, int64_t T) {
  double flops = 0;
  for_each_param(m, [&](const std::string& n, auto& p) {
    if (p.value.rank() == 2 && n.find("embed_tokens") == std::string::npos)
      flops += 2.0 * static_cast<double>(p.value.numel() * B * T);
  });
  double pairs = 0;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j <= i; ++j) pairs += m.config.window <= 0 || i - j < m.config.window;
  return flops + 4.0 * static_cast<double>(B * m.config.dim * m.config.n_layers) * pairs;
}

blt::BltConfig tiny_blt_config() {
  blt::BltConfig c;
  c.vocab_size = 10;
  c.encoder.dim = c.decoder.dim = 4;
  c.encoder.n_heads = c.encoder.n_kv_heads = c.encoder.cross_heads = 1;
  c.decoder.n_heads = c.decoder.n_kv_heads = c.decoder.cross_heads = 1;
  c.encoder.ffn_hidden = c.decoder.ffn_hidden = 8;
  c.encoder.n_layers = c.decoder.n_layers = 1;
  c.decoder.cross_attn_all_layers = true;
  c.global.dim = 8, c.global.n_layers = 1, c.global.n_heads = c.global.n_kv_heads = 1,
  c.global.ffn_hidden = 16;
  c.cross_attn_k = 2;  // k·d_e = 8 = d_g: no global input projection
  c.hash_sizes = {3};
  c.hash_vocab = 7;
  c.patch_in_forward = false;
  return c;
}

/// Returns the number of failed checks.
int check_flop_formulas(const blt::BltConfig& experiment) {
  std::printf("FLOP formula checks\n");
  // Hand-computed Llama: V 10, d 4, 1 layer, 1 head, ffn 8, T 4, no window. Per token: matmuls 2·(2·16 + 2·16
  // + 3·32) = 320, head 2·4·10 = 80; attention 4·d·pairs = 4·4·(1+2+3+4) = 160 per row. Row: 4·400 + 160 =
  // 1760.
  models::LlamaConfig lc;
  lc.vocab_size = 10, lc.dim = 4, lc.n_layers = 1, lc.n_heads = 1, lc.n_kv_heads = 1, lc.ffn_hidden = 8;
  expect_close(bench::llama_forward_flops_row(lc, 4), 1760, "hand: Llama row forward (T 4)");
  expect_close(bench::kTrainFactor * bench::llama_forward_flops_per_token(lc, 4), 1320,
               "hand: Llama train/token");
  // Window 2 over T 4: pairs 1 + 2 + 2 + 2 = 7.
  expect_close(bench::causal_pairs(4, 2), 7, "hand: causal pairs T 4, window 2");
  expect_close(bench::causal_pairs(4, 0), 10, "hand: causal pairs T 4, no window");
  // Hand-computed BLT row: T 4 bytes, P 2 patches, d_e = d_d = 4, d_g = 8, k 2, V 10, one layer each.
  //   encoder    4·320 + 4·4·10                                   = 1440
  //   enc cross  P·(2·4·2·4 + 4·2·16) + T·(4·16 + 4·4·2)           = 384 + 384 = 768
  //   global     P·2·(2·64 + 2·64 + 3·8·16) + 4·8·(2·3/2)          = 2560 + 96 = 2656
  //   dec cross  P·2·8·2·4 + T·(4·16 + 4·4·2) + P·4·2·16           = 256 + 384 + 256 = 896
  //   decoder    1440,  head 4·2·4·10 = 320                        total 7520
  const blt::BltConfig tc = tiny_blt_config();
  const BltFlops hf = bench::blt_forward_flops_row(tc, 4, 2);
  expect_close(hf.encoder, 1440, "hand: BLT encoder");
  expect_close(hf.encoder_cross, 768, "hand: BLT encoder cross-attention");
  expect_close(hf.global, 2656, "hand: BLT global");
  expect_close(hf.decoder_cross, 896, "hand: BLT decoder cross-attention");
  expect_close(hf.decoder, 1440, "hand: BLT decoder");
  expect_close(hf.head, 320, "hand: BLT head");
  expect_close(hf.total(), 7520, "hand: BLT row total");

  // Brute force over real models and real layouts: three rows with different patch counts (one ending in a
  // one-byte patch holding only the next byte), on the tiny config and on the experiment's config (global
  // input projection, several decoder cross layers, hash tables), with and without a local window.
  auto brute = [&](blt::BltConfig c, int64_t window, const std::string& label) {
    c.local_window = window;
    Blt lm(c);
    lm.model.walk_patcher = false;  // the entropy model is not part of BLT's training FLOPs
    const int64_t B = 3, T = 12, P = 5;
    // HF form (sum T) and original form (sum T + 1) rows, zero-padded; the layout normalises both.
    const std::vector<int64_t> lens = {1, 3, 4, 4, 0, /**/ 1, 1, 2, 3, 6, /**/ 1, 11, 0, 0, 0};
    std::vector<int64_t> ids(B * T, 5);
    blt::PatchLayout L;
    L.build(ids.data(), lens.data(), B, T, P, c.cross_attn_k, false, c.eos_id);
    BltFlops want;
    for (int64_t b = 0; b < B; ++b) {
      double Pb = 0;
      for (int64_t p = 0; p < P; ++p) Pb += L.lengths[b * P + p] > 0;
      want += bench::blt_forward_flops_row(c, T, Pb);
    }
    expect_close(blt_brute_force(lm, L, window), want.total(), "brute force: BLT " + label);
  };
  brute(tc, 0, "tiny, no window");
  brute(tc, 5, "tiny, window 5");
  brute(experiment, 0, "experiment config");
  brute(experiment, 7, "experiment config, window 7");
  for (int64_t w : {0, 6}) {
    models::LlamaConfig c = lc;
    c.dim = 32, c.n_heads = 4, c.n_kv_heads = 2, c.ffn_hidden = 48, c.n_layers = 2, c.window = w,
    c.vocab_size = 260;
    Llama m(c);
    expect_close(llama_brute_force(m, 3, 16), 3 * bench::llama_forward_flops_row(c, 16),
                 str("brute force: Llama GQA, window ", w));
  }
  std::printf("%s\n", g_failures ? "FLOP checks FAILED" : "FLOP checks passed");
  return g_failures;
}

// ---- data -------------------------------------------------------------------------------------------------

/// Loader rows (ids byte + 4) -> BOS-prefixed inputs [BOS, w0..w_{T-2}] and targets w0..w_{T-1}: every row
/// predicts T bytes, the first from BOS alone (as at inference).
void prepend_bos(const train::ByteBatch& in, std::vector<int64_t>& ids, std::vector<int64_t>& tgt) {
  const int64_t B = in.rows(), T = in.tokens() / B;
  ids.resize(B * T);
  tgt.assign(in.inputs.data(), in.inputs.data() + B * T);
  for (int64_t b = 0; b < B; ++b) {
    ids[b * T] = blt::BOS;
    std::copy_n(in.inputs.data() + b * T, T - 1, ids.data() + b * T + 1);
  }
}

/// Patches the global model processes in each row (non-zero lengths of the layout, which holds every row in
/// the include-next-byte form).
std::vector<int64_t> patches_per_row(const blt::PatchLayout& L) {
  std::vector<int64_t> out(L.B, 0);
  for (int64_t b = 0; b < L.B; ++b)
    for (int64_t p = 0; p < L.P; ++p) out[b] += L.lengths[b * L.P + p] > 0;
  return out;
}

struct Eval {
  double bpb = 0;
  int64_t bytes = 0, patches = 0;  // held-out bytes predicted; patches (BLT only)
};

/// Held-out bits per byte over the first `windows` non-overlapping BOS-prefixed windows. `fwd(ids, tgt,
/// rows)` returns the mean loss in nats and the number of patches (0 for a Llama).
template <class F>
Eval heldout(std::span<const uint8_t> bytes, int64_t batch, int64_t T, int64_t windows, F&& fwd) {
  train::EvalWindows ev(bytes, batch, T, blt::OFFSET, windows);
  train::ByteBatch b;
  std::vector<int64_t> ids, tgt;
  double nll = 0;
  Eval e;
  while (ev.next(b)) {
    prepend_bos(b, ids, tgt);
    const auto [loss, patches] = fwd(ids.data(), tgt.data(), b.rows());
    nll += loss * static_cast<double>(b.tokens());
    e.patches += patches;
  }
  e.bytes = ev.num_targets();
  e.bpb = train::bits_per_byte(nll, e.bytes);
  return e;
}

// ---- training -------------------------------------------------------------------------------------------

struct Hyper {
  double lr = 2e-3, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
};

struct EvalPoint {
  int64_t step = 0, bytes_seen = 0;
  double flops = 0, bpb = 0, train_loss = 0, wall_s = 0;
};

/// One training run: `step_fn(batch)` zeroes gradients, runs forward + backward, returns {loss, forward
/// FLOPs of the batch}; clipping and AdamW (weight decay on every matrix) follow. `eval_at(step, flops)` says
/// whether to evaluate after that step; `eval_fn()` returns held-out bpb. Wall time excludes evaluation.
template <class Model, class StepFn, class EvalAt, class EvalFn>
std::vector<EvalPoint> train_run(const char* name, Model& model, train::ByteLoader& loader, int64_t steps,
                                 const Hyper& h, StepFn&& step_fn, EvalAt&& eval_at, EvalFn&& eval_fn,
                                 double& wall_total, int64_t log_every = 25) {
  const train::Schedule sched =
      train::Schedule::cosine(h.lr, h.lr * h.min_lr_ratio, std::max<int64_t>(1, steps / 10), steps);
  train::AdamW<float> opt({h.lr, 0.9, 0.95, 1e-8, h.weight_decay});
  train::ByteBatch batch;
  std::vector<EvalPoint> out;
  double flops = 0, wall = 0, loss_avg = 0;
  int64_t bytes = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const auto t0 = Clock::now();
    loader.next(batch);
    const auto [loss, fwd_flops] = step_fn(batch);
    TESSERA_CHECK(std::isfinite(loss), name, ": loss is ", loss, " at step ", s + 1);
    train::clip_grad_norm(model, h.clip);
    opt.step(model, sched.lr_at(s));
    wall += seconds_since(t0);
    flops += bench::kTrainFactor * fwd_flops;
    bytes += batch.tokens();
    loss_avg = s == 0 ? loss : 0.9 * loss_avg + 0.1 * loss;
    if (log_every > 0 && ((s + 1) % log_every == 0 || s == 0))
      std::printf("  %s step %lld/%lld | loss %.4f (avg %.4f) | %.2e FLOPs | %.1f s\n", name,
                  static_cast<long long>(s + 1), static_cast<long long>(steps), loss, loss_avg, flops, wall);
    if (eval_at(s + 1, flops)) {
      EvalPoint p{s + 1, bytes, flops, eval_fn(), loss_avg, wall};
      std::printf("  %s eval at step %lld: held-out %.4f bpb (%.3e training FLOPs, %lld bytes)\n", name,
                  static_cast<long long>(s + 1), p.bpb, flops, static_cast<long long>(bytes));
      std::fflush(stdout);
      out.push_back(p);
    }
  }
  wall_total = wall;
  return out;
}

/// The patching threshold giving `target` bytes per patch on `n` evenly spaced BOS-prefixed training windows
/// (spec §2.4). Patches per row = 2 forced starts (BOS, first byte) + #{p in 1..T-1 : H_p > θ}, the last
/// possibly holding only the next byte. Returns θ and the mean patch length it gives on those windows.
std::pair<double, double> calibrate(Blt& lm, std::span<const uint8_t> bytes, int64_t T, int64_t n,
                                    double target) {
  const int64_t room = static_cast<int64_t>(bytes.size()) - T;
  std::vector<int64_t> ids(n * T);
  for (int64_t w = 0; w < n; ++w) {
    const int64_t o = w * (room / n);
    ids[w * T] = blt::BOS;
    for (int64_t t = 1; t < T; ++t) ids[w * T + t] = bytes[o + t - 1] + blt::OFFSET;
  }
  const auto H = blt::entropies(lm.model.patcher, ids.data(), n, T, blt::EntropyOptions::hf());
  std::vector<float> deciding;
  for (int64_t w = 0; w < n; ++w)
    deciding.insert(deciding.end(), H.begin() + w * T + 1, H.begin() + (w + 1) * T);
  std::sort(deciding.begin(), deciding.end(), std::greater<>());
  const int64_t above = std::llround((static_cast<double>(T) / target - 2.0) * static_cast<double>(n));
  const size_t idx =
      static_cast<size_t>(std::clamp<int64_t>(above, 0, static_cast<int64_t>(deciding.size()) - 1));
  lm.model.config.patching_threshold =
      deciding[idx];  // exactly `above` entropies are strictly greater (no ties)
  // Measure with the model's own patcher, as training uses it.
  const blt::PatchLengths pl = lm.model.compute_patch_lengths(ids.data(), n, T);
  int64_t patches = 0;
  for (int64_t x : pl.lengths) patches += x > 0;
  return {lm.model.config.patching_threshold, static_cast<double>(n * T) / static_cast<double>(patches)};
}

struct Options {
  std::string data = "/usr/share/dictd/gcide.dict.dz", json_out;
  double heldout = 0.01, target_patch = 4.0;
  int64_t seq = 256, batch = 16, eval_batch = 16, eval_windows = 128, calib_windows = 64;
  int64_t entropy_steps = 500, blt_steps = 600, llama_dim = 0, llama_layers = 0;
  uint64_t seed = 1;
  Hyper hyper;
  bool check_only = false;
};

blt::BltConfig experiment_config(int64_t vocab) {
  blt::BltConfig c;
  c.vocab_size = vocab;
  blt::LocalConfig l;
  l.dim = 64, l.n_heads = l.n_kv_heads = l.cross_heads = 4, l.ffn_hidden = ffn_for(64);
  c.encoder = l;
  c.encoder.n_layers = 1;
  c.encoder.cross_attn_all_layers = false;
  c.decoder = l;
  c.decoder.n_layers = 2;
  c.decoder.cross_attn_all_layers = true;
  c.global.dim = 256, c.global.n_layers = 3, c.global.n_heads = c.global.n_kv_heads = 4;
  c.global.ffn_hidden = ffn_for(256);
  c.cross_attn_k = 2;  // k·d_e = 128 -> projected to 256
  c.hash_sizes = {3, 4, 5, 6, 7, 8};
  c.hash_vocab = 4096;
  c.hash_functions = 1;
  c.local_window = 0;
  c.eos_document_cuts = false;
  c.patch_in_forward = true;
  c.patching_mode = "entropy";
  c.patcher.vocab_size = vocab;
  c.patcher.dim = 64, c.patcher.n_layers = 2, c.patcher.n_heads = c.patcher.n_kv_heads = 4;
  c.patcher.ffn_hidden = ffn_for(64);
  c.patcher.window = 512;
  c.patcher.rope_theta = 10000.0;
  return c;
}

/// The Llama (head_dim 32) whose training FLOPs per byte are closest to `target` (log distance).
models::LlamaConfig size_llama(double target_fpb, int64_t T, int64_t vocab, int64_t dim, int64_t layers) {
  models::LlamaConfig best;
  double best_d = 1e300;
  for (int64_t d : {64, 96, 128, 160, 192, 256}) {
    if (dim > 0 && d != dim) continue;
    for (int64_t L = 1; L <= 12; ++L) {
      if (layers > 0 && L != layers) continue;
      models::LlamaConfig c;
      c.vocab_size = vocab, c.dim = d, c.n_layers = L, c.n_heads = c.n_kv_heads = d / 32,
      c.ffn_hidden = ffn_for(d);
      c.window = 0;
      const double dist =
          std::abs(std::log(bench::kTrainFactor * bench::llama_forward_flops_per_token(c, T) / target_fpb));
      if (dist < best_d) best_d = dist, best = c;
    }
  }
  TESSERA_CHECK(best_d < 1e300, "no Llama size matches --llama-dim ", dim, " --llama-layers ", layers);
  return best;
}

json config_json(const blt::BltConfig& c) {
  auto local = [](const blt::LocalConfig& l) {
    return json{{"dim", l.dim}, {"layers", l.n_layers}, {"heads", l.n_heads}, {"ffn", l.ffn_hidden}};
  };
  return {{"encoder", local(c.encoder)},
          {"decoder", local(c.decoder)},
          {"global",
           {{"dim", c.global.dim},
            {"layers", c.global.n_layers},
            {"heads", c.global.n_heads},
            {"ffn", c.global.ffn_hidden}}},
          {"k", c.cross_attn_k},
          {"hash_sizes", c.hash_sizes},
          {"hash_rows", c.hash_vocab},
          {"entropy_model", c.patcher.to_json()},
          {"threshold", c.patching_threshold}};
}

int run(const Options& o) {
  const int64_t V = 260, T = o.seq, B = o.batch;
  blt::BltConfig cfg = experiment_config(V);
  if (check_flop_formulas(cfg) != 0) return 1;
  if (o.check_only) return 0;

  const auto t_all = Clock::now();
  auto split = train::split_corpus(train::load_corpus(o.data).bytes, o.heldout);
  std::printf("\ndata: %s | %zu train bytes | %zu held-out bytes | eval: first %lld windows of %lld bytes\n",
              o.data.c_str(), split.train.size(), split.heldout.size(),
              static_cast<long long>(o.eval_windows), static_cast<long long>(T));
  const std::span<const uint8_t> held(split.heldout);

  // ---- (a) entropy model ------------------------------------------------------------------------------
  Blt lm(cfg);
  Rng rng_e(o.seed);
  init_normal(lm.model.patcher, rng_e, 0.02);
  allocate_grads(lm.model.patcher);
  Llama& em = lm.model.patcher;
  std::printf("\n(a) entropy model: %lld parameters (dim %lld, %lld layers, window %lld)\n",
              static_cast<long long>(count_params(em)), static_cast<long long>(em.config.dim),
              static_cast<long long>(em.config.n_layers), static_cast<long long>(em.config.window));
  const double em_fwd_per_byte = bench::llama_forward_flops_per_token(em.config, T);
  std::vector<int64_t> ids, tgt;
  double wall_entropy = 0;
  Eval em_eval;
  {
    train::ByteLoader loader(split.train, {B, T, o.seed + 20, blt::OFFSET});
    auto step = [&](const train::ByteBatch& b) {
      prepend_bos(b, ids, tgt);
      zero_grads(em);
      em.forward(ids.data(), b.rows(), T);
      em.backward(tgt.data());
      return std::pair{em.loss(tgt.data()),
                       static_cast<double>(b.rows()) * bench::llama_forward_flops_row(em.config, T)};
    };
    auto ev = [&] {
      em_eval =
          heldout(held, o.eval_batch, T, o.eval_windows, [&](const int64_t* x, const int64_t* y, int64_t r) {
            em.forward(x, r, T);
            return std::pair{em.loss(y), int64_t(0)};
          });
      return em_eval.bpb;
    };
    train_run(
        "entropy", em, loader, o.entropy_steps, o.hyper, step,
        [&](int64_t s, double) { return s == o.entropy_steps; }, ev, wall_entropy, 50);
  }

  // ---- (b) threshold ----------------------------------------------------------------------------------
  const auto [theta, calib_len] = calibrate(lm, split.train, T, o.calib_windows, o.target_patch);
  std::printf(
      "\n(b) threshold %.5f nats: mean patch length %.3f bytes on %lld training windows (target %.2f)\n",
      theta, calib_len, static_cast<long long>(o.calib_windows), o.target_patch);

  // ---- (c) BLT ----------------------------------------------------------------------------------------
  lm.model.walk_patcher = false;  // optimizer, clipping, zero_grads and init see the BLT only
  Rng rng_b(o.seed + 1);
  init_normal(lm, rng_b, 0.02);
  allocate_grads(lm);
  const int64_t blt_params = count_params(lm);
  const BltFlops nominal = bench::blt_forward_flops_per_byte(lm.config(), T, calib_len);
  std::printf(
      "\n(c) BLT: %lld trainable parameters; nominal forward FLOPs/byte at %.2f bytes/patch: %.0f "
      "(encoder %.0f, enc cross %.0f, global %.0f, dec cross %.0f, decoder %.0f, head %.0f); entropy model "
      "forward %.0f/byte (not counted)\n",
      static_cast<long long>(blt_params), calib_len, nominal.total(), nominal.encoder, nominal.encoder_cross,
      nominal.global, nominal.decoder_cross, nominal.decoder, nominal.head, em_fwd_per_byte);
  const int64_t S = o.blt_steps;
  const std::vector<int64_t> blt_eval_steps = {S / 4, S / 2, S};
  BltFlops blt_fwd;  // summed forward FLOPs of the training batches
  int64_t train_patches = 0;
  double wall_patching = 0, wall_blt = 0;
  Eval blt_last_eval;
  std::vector<EvalPoint> blt_points;
  {
    train::ByteLoader loader(split.train, {B, T, o.seed + 10, blt::OFFSET});
    auto step = [&](const train::ByteBatch& b) {
      prepend_bos(b, ids, tgt);
      const auto t0 = Clock::now();
      const blt::PatchLengths pl = lm.model.compute_patch_lengths(ids.data(), b.rows(), T);
      wall_patching += seconds_since(t0);
      zero_grads(lm);
      lm.forward(ids.data(), b.rows(), T, pl.lengths.data(), pl.P);
      lm.backward(tgt.data());
      BltFlops f;
      for (int64_t p : patches_per_row(lm.model.layout())) {
        f += bench::blt_forward_flops_row(lm.config(), T, static_cast<double>(p));
        train_patches += p;
      }
      blt_fwd += f;
      return std::pair{lm.loss(tgt.data()), f.total()};
    };
    auto ev = [&] {
      blt_last_eval =
          heldout(held, o.eval_batch, T, o.eval_windows, [&](const int64_t* x, const int64_t* y, int64_t r) {
            lm.forward(x, r, T);  // patches from the entropy model
            int64_t p = 0;
            for (int64_t n : patches_per_row(lm.model.layout())) p += n;
            return std::pair{lm.loss(y), p};
          });
      return blt_last_eval.bpb;
    };
    blt_points = train_run(
        "BLT", lm, loader, S, o.hyper, step,
        [&](int64_t s, double) {
          return std::find(blt_eval_steps.begin(), blt_eval_steps.end(), s) != blt_eval_steps.end();
        },
        ev, wall_blt);
  }
  const int64_t blt_bytes = S * B * T;
  const double blt_total = bench::kTrainFactor * blt_fwd.total();
  const double blt_fpb = blt_total / static_cast<double>(blt_bytes);
  const double train_patch_len = static_cast<double>(blt_bytes) / static_cast<double>(train_patches);
  const double held_patch_len =
      static_cast<double>(blt_last_eval.bytes) / static_cast<double>(blt_last_eval.patches);

  // ---- (c') Llama at equal training FLOPs
  // ------------------------------------------------------------------
  const models::LlamaConfig llc = size_llama(blt_fpb, T, V, o.llama_dim, o.llama_layers);
  const double llama_fpb = bench::kTrainFactor * bench::llama_forward_flops_per_token(llc, T);
  const int64_t S_llama =
      std::max<int64_t>(1, std::llround(blt_total / (llama_fpb * static_cast<double>(B * T))));
  Llama llama(llc);
  Rng rng_l(o.seed + 2);
  init_normal(llama, rng_l, 0.02);
  allocate_grads(llama);
  std::printf(
      "\n(c') Llama: %lld parameters (dim %lld, %lld layers, ffn %lld); training FLOPs/byte %.0f vs BLT %.0f "
      "-> %lld steps for BLT's %.3e FLOPs\n",
      static_cast<long long>(count_params(llama)), static_cast<long long>(llc.dim),
      static_cast<long long>(llc.n_layers), static_cast<long long>(llc.ffn_hidden), llama_fpb, blt_fpb,
      static_cast<long long>(S_llama), blt_total);
  double wall_llama = 0;
  std::vector<EvalPoint> llama_points;
  {
    train::ByteLoader loader(split.train, {B, T, o.seed + 10, blt::OFFSET});  // the same batches as BLT
    const double per_step = llama_fpb * static_cast<double>(B * T);
    std::vector<int64_t> eval_steps;  // first step whose cumulative FLOPs reach BLT's at each evaluation
    for (size_t i = 0; i < blt_points.size(); ++i)
      eval_steps.push_back(i + 1 == blt_points.size()
                               ? S_llama
                               : std::min<int64_t>(S_llama, static_cast<int64_t>(std::ceil(
                                                                blt_points[i].flops / per_step - 1e-9))));
    auto step = [&](const train::ByteBatch& b) {
      prepend_bos(b, ids, tgt);
      zero_grads(llama);
      llama.forward(ids.data(), b.rows(), T);
      llama.backward(tgt.data());
      return std::pair{llama.loss(tgt.data()),
                       static_cast<double>(b.rows()) * bench::llama_forward_flops_row(llc, T)};
    };
    auto ev = [&] {
      return heldout(held, o.eval_batch, T, o.eval_windows,
                     [&](const int64_t* x, const int64_t* y, int64_t r) {
                       llama.forward(x, r, T);
                       return std::pair{llama.loss(y), int64_t(0)};
                     })
          .bpb;
    };
    llama_points = train_run(
        "Llama", llama, loader, S_llama, o.hyper, step,
        [&](int64_t s, double) {
          return std::find(eval_steps.begin(), eval_steps.end(), s) != eval_steps.end();
        },
        ev, wall_llama);
  }
  const double total_wall = seconds_since(t_all);

  // ---- (d) report -----------------------------------------------------------------------------------------
  const double blt_fpb_nominal = bench::kTrainFactor * nominal.total();
  std::printf(
      "\nSummary (held-out: first %lld windows x %lld bytes = %lld predicted bytes of the 1%% split)\n",
      static_cast<long long>(o.eval_windows), static_cast<long long>(T),
      static_cast<long long>(blt_last_eval.bytes));
  std::printf("entropy model: held-out %.4f bpb after %lld steps (%.1f s); forward %.0f FLOPs/byte\n",
              em_eval.bpb, static_cast<long long>(o.entropy_steps), wall_entropy, em_fwd_per_byte);
  std::printf(
      "patching: threshold %.5f; mean patch length %.3f (calibration), %.3f (training batches), %.3f "
      "(held-out)\n",
      theta, calib_len, train_patch_len, held_patch_len);
  std::printf(
      "\n| model | params | train FLOPs/byte | bytes seen | total train FLOPs | steps | wall s | held-out "
      "bpb @1/4 | @1/2 | @1 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  auto row = [&](const char* name, int64_t params, double fpb, const std::vector<EvalPoint>& pts,
                 int64_t steps, double wall) {
    std::printf("| %s | %lld | %.3e | %lld | %.3e | %lld | %.0f |", name, static_cast<long long>(params), fpb,
                static_cast<long long>(pts.back().bytes_seen), pts.back().flops,
                static_cast<long long>(steps), wall);
    for (const auto& p : pts) std::printf(" %.4f (%.2e) |", p.bpb, p.flops);
    std::printf("\n");
  };
  row("BLT", blt_params, blt_fpb, blt_points, S, wall_blt);
  row("Llama", count_params(llama), llama_fpb, llama_points, S_llama, wall_llama);
  std::printf(
      "\nBLT wall time includes %.1f s of entropy-model patching (forward %.3e FLOPs, not counted); total "
      "program wall time %.0f s\n",
      wall_patching, em_fwd_per_byte * static_cast<double>(blt_bytes), total_wall);

  if (!o.json_out.empty()) {
    auto points = [](const std::vector<EvalPoint>& pts) {
      json a = json::array();
      for (const auto& p : pts)
        a.push_back({{"step", p.step},
                     {"bytes_seen", p.bytes_seen},
                     {"train_flops", p.flops},
                     {"heldout_bpb", p.bpb},
                     {"train_loss_avg", p.train_loss},
                     {"wall_s", p.wall_s}});
      return a;
    };
    const BltFlops per_byte = blt_fwd.scaled(1.0 / static_cast<double>(blt_bytes));
    json j = {{"data", o.data},
              {"train_bytes", split.train.size()},
              {"heldout_bytes", split.heldout.size()},
              {"eval_bytes", blt_last_eval.bytes},
              {"seq_len", T},
              {"batch", B},
              {"seed", o.seed},
              {"hyper",
               {{"lr", o.hyper.lr},
                {"min_lr_ratio", o.hyper.min_lr_ratio},
                {"weight_decay", o.hyper.weight_decay},
                {"clip", o.hyper.clip}}},
              {"entropy",
               {{"params", count_params(em)},
                {"steps", o.entropy_steps},
                {"heldout_bpb", em_eval.bpb},
                {"forward_flops_per_byte", em_fwd_per_byte},
                {"wall_s", wall_entropy}}},
              {"patching",
               {{"threshold", theta},
                {"target", o.target_patch},
                {"mean_len_calibration", calib_len},
                {"mean_len_train", train_patch_len},
                {"mean_len_heldout", held_patch_len}}},
              {"blt",
               {{"config", config_json(lm.config())},
                {"params", blt_params},
                {"steps", S},
                {"train_flops_per_byte", blt_fpb},
                {"train_flops_per_byte_nominal", blt_fpb_nominal},
                {"forward_flops_per_byte",
                 {{"encoder", per_byte.encoder},
                  {"encoder_cross", per_byte.encoder_cross},
                  {"global", per_byte.global},
                  {"decoder_cross", per_byte.decoder_cross},
                  {"decoder", per_byte.decoder},
                  {"head", per_byte.head}}},
                {"total_train_flops", blt_total},
                {"bytes_seen", blt_bytes},
                {"wall_s", wall_blt},
                {"wall_patching_s", wall_patching},
                {"evals", points(blt_points)}}},
              {"llama",
               {{"config", llc.to_json()},
                {"params", count_params(llama)},
                {"steps", S_llama},
                {"train_flops_per_byte", llama_fpb},
                {"total_train_flops", llama_points.back().flops},
                {"bytes_seen", llama_points.back().bytes_seen},
                {"wall_s", wall_llama},
                {"evals", points(llama_points)}}},
              {"total_wall_s", total_wall}};
    std::ofstream(o.json_out) << j.dump(2) << "\n";
    std::printf("wrote %s\n", o.json_out.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"BLT vs a byte-level Llama at equal training FLOPs (GCIDE, CPU fp32)"};
  Options o;
  app.add_option("--data", o.data, "corpus (gzip/dictzip file, text file or folder)")->capture_default_str();
  app.add_option("--heldout", o.heldout, "held-out fraction (the end of the corpus)")->capture_default_str();
  app.add_option("--seq", o.seq, "bytes per row")->capture_default_str();
  app.add_option("--batch", o.batch, "rows per training batch")->capture_default_str();
  app.add_option("--eval-windows", o.eval_windows, "held-out windows evaluated")->capture_default_str();
  app.add_option("--calib-windows", o.calib_windows, "training windows for threshold calibration")
      ->capture_default_str();
  app.add_option("--target-patch", o.target_patch, "target mean patch length (bytes)")->capture_default_str();
  app.add_option("--entropy-steps", o.entropy_steps, "entropy model steps")->capture_default_str();
  app.add_option("--blt-steps", o.blt_steps, "BLT steps (the Llama's follow from equal FLOPs)")
      ->capture_default_str();
  app.add_option("--llama-dim", o.llama_dim, "fix the Llama width (0 = pick by FLOPs/byte)");
  app.add_option("--llama-layers", o.llama_layers, "fix the Llama depth (0 = pick by FLOPs/byte)");
  app.add_option("--lr", o.hyper.lr, "peak learning rate (all three models)")->capture_default_str();
  app.add_option("--seed", o.seed, "seed")->capture_default_str();
  app.add_option("--json", o.json_out, "write the results as JSON");
  app.add_flag("--check-only", o.check_only, "only run the FLOP-formula checks");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
