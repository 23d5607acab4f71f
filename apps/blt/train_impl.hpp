// `blt train-entropy` and `blt train` on a backend B (tessera::cpu or tessera::cuda): the entropy model (a
// Llama-style byte LM, ids = byte + 4, 512-byte sliding window) and the BLT on top of it, trained with
// tessera::train::Trainer (AdamW, cosine schedule, clipping, metrics.jsonl, atomic step_N checkpoints, exact
// --resume). train.cpp instantiates these for the CPU, cuda_commands.cpp for CUDA.
//
// Every BLT step computes the patch lengths of its batch with the frozen entropy model, then runs forward,
// loss and backward. The entropy weights are part of the BLT (model.patcher.*, so that checkpoints are
// complete transformers checkpoints), but they never get a gradient buffer: clipping and AdamW skip
// parameters without one, so they are neither updated nor weight-decayed.
//
// On CUDA the model, its gradients and the AdamW moments live on the device; every batch's ids and targets
// are built on the host (BOS-prefixed rows) and uploaded, and the patch rule runs on the host with the
// entropies the device computed (BltModel::compute_patch_lengths). Checkpoints are the same files on both
// backends (weights and moments are downloaded to be written and uploaded when read: io::save_model /
// load_model, AdamW::save_state / load_state), so a run can be resumed on the other device. Weights are
// initialised on the host from the seed on both backends (init_normal), so CPU and CUDA runs start equal.
//
// Output folder: config.json (transformers layout), metrics.jsonl, step_N/ (model.safetensors, optimizer,
// trainer state), and at the end model.safetensors — the folder is then a from_pretrained folder.
#pragma once
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "device.hpp"
#include "tessera/layers/precision.hpp"
#include "train_config.hpp"

namespace bltapp {

namespace train = tessera::train;

namespace detail {
inline std::atomic<bool> g_stop{false};
}  // namespace detail
extern "C" inline void bltapp_on_sigint(int) {
  detail::g_stop = true;
}

/// What a training config holds besides the model.
struct RunConfig {
  DataConfig data;
  train::TrainConfig train;
  int64_t log_every = 1, eval_every = 0;  // ours (the Trainer's own are repurposed, see run_training)
  std::vector<uint8_t> train_bytes, heldout;
};

inline RunConfig read_run(const nlohmann::json& j, const TrainArgs& a, const std::string& path) {
  RunConfig r;
  TESSERA_CHECK(j.contains("train"), "config ", path, ": missing field 'train'");
  r.data = DataConfig::from_json(j.value("data", nlohmann::json::object()), path + " data");
  check_keys(j["train"],
             {"steps", "warmup", "schedule", "lr", "min_lr", "beta1", "beta2", "eps", "weight_decay",
              "grad_clip", "log_every", "eval_every", "ckpt_every", "keep_last", "seed"},
             path + " train");
  r.train = train::TrainConfig::from_json(j["train"], path + " train");
  if (!a.data.empty()) r.data.paths = {a.data};
  if (a.steps > 0) {
    r.train.steps = a.steps;
    if (r.train.warmup >= a.steps) {  // a short run from a long run's config: shorten the warmup too
      r.train.warmup = a.steps / 10;
      std::printf("note: --steps %lld is not longer than train.warmup; warmup shortened to %lld steps\n",
                  static_cast<long long>(a.steps), static_cast<long long>(r.train.warmup));
    }
  }
  r.train.out_dir = a.out;
  r.train.resume = a.resume;
  r.train.validate();
  r.log_every = r.train.log_every;
  r.eval_every = r.train.eval_every;
  TESSERA_CHECK(r.log_every == 0 || r.eval_every % r.log_every == 0, "config ", path, " train: eval_every (",
                r.eval_every, ") must be a multiple of log_every (", r.log_every, ")");
  TESSERA_CHECK(!a.out.empty(), "no output folder given (-o)");

  auto split = train::split_corpus(load_bytes(r.data.paths, r.data.max_bytes), r.data.heldout);
  r.train_bytes = std::move(split.train);
  r.heldout = std::move(split.heldout);
  std::string names;
  for (const auto& p : r.data.paths) names += (names.empty() ? "" : ", ") + p;
  std::printf("data: %s | %zu train bytes | %zu held-out bytes\n", names.c_str(), r.train_bytes.size(),
              r.heldout.size());
  // Fail now, before anything is written, if the held-out part cannot hold one evaluation window.
  train::EvalWindows(r.heldout, r.data.batch, r.data.seq_len, tessera::blt::OFFSET, 1);
  return r;
}

/// Per-step numbers the step function leaves for the progress line.
struct StepStats {
  std::chrono::steady_clock::time_point t0;
  double loss = NAN;
  int64_t bytes = 0, patches = 0;
};

/// "device: cuda (bf16 compute)" on CUDA; nothing on the CPU (its output stays as it always was).
template <class B>
void print_device(const Target& t) {
  if constexpr (!tessera::is_cpu_v<B>)
    std::printf("device: %s (%s compute)\n", B::name, tessera::precision_name(t.precision));
}

/// Run the Trainer. Every step adds {bpb, bytes_per_s[, patches_per_s, mean_patch_len]} to the Trainer's
/// progress line and metrics.jsonl (step extras); held-out val_bpb comes from the eval hook every eval_every
/// steps and at the end.
/// `write_config` writes out/config.json; `save_final` exports out/config.json + out/model.safetensors.
template <class Model, class Step, class Heldout, class WriteConfig, class SaveFinal>
int run_training(RunConfig& rc, Model& model, StepStats& st, Step&& step, Heldout&& heldout,
                 WriteConfig&& write_config, SaveFinal&& save_final, nlohmann::json app_state) {
  using B = typename Model::backend;
  const fs::path out = rc.train.out_dir;
  TESSERA_CHECK(rc.train.resume || !train::find_latest(out), "output folder '", out.string(),
                "' already holds checkpoints; use --resume to continue, or choose another folder");
  train::ByteLoader loader(std::move(rc.train_bytes),
                           {rc.data.batch, rc.data.seq_len, rc.train.seed + 1, tessera::blt::OFFSET});
  const bool resuming = rc.train.resume && train::find_latest(out).has_value();
  if (!resuming) std::printf("held-out bpb at start: %.4f\n", heldout(model));

  train::TrainConfig tc = rc.train;
  // Weight decay on every parameter, as the reference (spec §10).
  train::Trainer<Model, train::ByteLoader, float, B> trainer(
      tc, model, loader, std::forward<Step>(step),
      [](const std::string&, const tessera::Shape&) { return true; });
  trainer.set_step_extras([&](Model&, int64_t) {
    const double sec =
        std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - st.t0).count());
    nlohmann::json r = {
        {"bpb", st.loss / std::log(2.0)},
        {"bytes_per_s", static_cast<int64_t>(std::llround(static_cast<double>(st.bytes) / sec))}};
    if (st.patches > 0) {
      r["patches_per_s"] = static_cast<int64_t>(std::llround(static_cast<double>(st.patches) / sec));
      r["mean_patch_len"] = static_cast<double>(st.bytes) / static_cast<double>(st.patches);
    }
    return r;
  });
  trainer.set_eval([&](Model& m, int64_t) { return nlohmann::json{{"val_bpb", heldout(m)}}; });
  trainer.set_app_state(std::move(app_state));
  detail::g_stop = false;
  trainer.set_stop_flag(&detail::g_stop);
  auto old = std::signal(SIGINT, bltapp_on_sigint);

  std::error_code ec;
  fs::create_directories(out, ec);
  TESSERA_CHECK(!ec, "cannot create output folder '", out.string(), "': ", ec.message());
  write_config(out);
  const train::TrainResult res = trainer.run();
  std::signal(SIGINT, old);
  if (res.last_eval.is_object() && res.last_eval.contains("val_bpb"))
    std::printf("held-out bpb at end: %.4f (step %lld)\n", res.last_eval["val_bpb"].get<double>(),
                static_cast<long long>(res.steps_done));
  save_final(out);
  std::printf("saved %s/config.json and %s/model.safetensors (step %lld)\n", out.c_str(), out.c_str(),
              static_cast<long long>(res.steps_done));
  return 0;
}

/// The patching threshold giving about `target` bytes per patch on `windows` evenly spaced windows of the
/// training bytes (spec §2.4: tune θ until the mean patch length matches). Position t's entropy decides
/// whether byte t+1 starts a patch; BOS and the first byte always start one. The entropies come from the
/// entropy model on B (the windows are uploaded on CUDA).
template <class B>
double calibrate_threshold(BltLm<B>& lm, std::span<const uint8_t> bytes, int64_t T, int64_t windows,
                           double target) {
  const int64_t room = static_cast<int64_t>(bytes.size()) - (T - 1);
  TESSERA_CHECK(room > 0, "patching calibration: ", bytes.size(), " training bytes is less than one window");
  const int64_t n = std::min(windows, room);
  std::vector<int64_t> ids(static_cast<size_t>(n * T));
  for (int64_t w = 0; w < n; ++w) {
    const int64_t o = n > 1 ? w * (room - 1) / (n - 1) : 0;
    ids[w * T] = tessera::blt::BOS;
    for (int64_t t = 1; t < T; ++t)
      ids[w * T + t] = static_cast<int64_t>(bytes[o + t - 1]) + tessera::blt::OFFSET;
  }
  BackendIds<B> dev;
  const auto H = tessera::blt::entropies(lm.model.patcher, dev.put(ids), n, T,
                                         tessera::blt::EntropyOptions::hf(), ids.data());
  std::vector<float> deciding;  // H_1 .. H_{T-1} of every window
  for (int64_t w = 0; w < n; ++w)
    deciding.insert(deciding.end(), H.begin() + w * T + 1, H.begin() + (w + 1) * T);
  std::sort(deciding.begin(), deciding.end(), std::greater<>());
  // Patches per window = 2 forced starts + the entropies above θ.
  const double want_above = std::max(0.0, static_cast<double>(T) / target - 2.0) * static_cast<double>(n);
  const auto k = std::min<int64_t>(static_cast<int64_t>(std::llround(want_above)),
                                   static_cast<int64_t>(deciding.size()) - 1);
  double theta = deciding[static_cast<size_t>(std::max<int64_t>(k, 0))];
  if (k <= 0) theta = deciding.front();  // no entropy strictly above the largest: only the forced starts

  lm.model.config.patching_threshold = theta;
  const auto rule = lm.model.entropy_patcher();
  int64_t patches = 0;
  for (int64_t w = 0; w < n; ++w)
    for (int64_t len : rule.patch_lengths(std::span<const int64_t>(ids.data() + w * T, T),
                                          std::span<const float>(H.data() + w * T, T)))
      patches += len > 0;
  std::printf(
      "patching: threshold %.6f nats, mean patch length %.3f on %lld calibration windows (target %.2f)\n",
      theta, static_cast<double>(n * T) / static_cast<double>(patches), static_cast<long long>(n), target);
  return theta;
}

/// `blt train-entropy` on backend B (t: checked by select_target).
template <class B>
int train_entropy(const TrainArgs& a, const Target& t) {
  const nlohmann::json j = tessera::io::read_json_file(a.config);
  check_keys(j, {"model", "data", "train"}, a.config);
  TESSERA_CHECK(j.contains("model"), "config ", a.config, ": missing field 'model'");
  const auto mcfg = entropy_model_config(j["model"], a.config + " model");
  RunConfig rc = read_run(j, a, a.config);

  EntropyModel<B> model(mcfg);
  tessera::Rng rng(rc.train.seed);
  tessera::init_normal(model, rng, 0.02);
  tessera::allocate_grads(model);
  tessera::set_compute_precision(model, t.precision);
  tessera::keep_bf16_weight_copies(model);  // bf16: AdamW writes the bf16 weights with its update
  print_device<B>(t);
  std::printf("entropy model: %lld parameters, dim %lld, %lld layers, window %lld\n",
              static_cast<long long>(tessera::count_params(model)), static_cast<long long>(mcfg.dim),
              static_cast<long long>(mcfg.n_layers), static_cast<long long>(mcfg.window));

  const int64_t T = rc.data.seq_len;
  std::vector<int64_t> ids, tgt;
  BackendIds<B> ids_b, tgt_b, eval_x, eval_y;
  StepStats st;
  auto step = [&](EntropyModel<B>& m, const train::ByteBatch& b) {
    st.t0 = std::chrono::steady_clock::now();
    prepend_bos(b, ids, tgt);
    const int64_t* x = ids_b.put(ids);
    const int64_t* y = tgt_b.put(tgt);
    auto zeroing = zero_existing_grads_async(m);  // CUDA: alongside the forward
    m.forward(x, b.rows(), T);
    zeroing.join();
    m.backward(y);
    st.loss = m.loss(y);
    st.bytes = b.tokens();
    return st.loss;
  };
  auto heldout = [&](EntropyModel<B>& m) {
    return heldout_bpb(rc.heldout, rc.data.batch, T, rc.data.eval_windows,
                       [&](const int64_t* x, const int64_t* y, int64_t rows, int64_t seq) {
                         m.forward(eval_x.put(x, rows * seq), rows, seq);
                         return m.loss(eval_y.put(y, rows * seq));
                       });
  };
  auto write_config = [&](const fs::path& out) {
    tessera::io::write_text_atomic((out / "config.json").string(), entropy_hf_json(mcfg).dump(2) + "\n");
  };
  auto save_final = [&](const fs::path& out) { save_entropy(model, out); };
  return run_training(rc, model, st, step, heldout, write_config, save_final,
                      {{"entropy_model", mcfg.to_json()},
                       {"device", B::name},
                       {"precision", tessera::precision_name(t.precision)}});
}

/// `blt train` on backend B (t: checked by select_target).
template <class B>
int train_blt(const TrainArgs& a, const Target& t) {
  const nlohmann::json j = tessera::io::read_json_file(a.config);
  check_keys(j, {"entropy_model", "model", "patching", "data", "train"}, a.config);
  TESSERA_CHECK(j.contains("model"), "config ", a.config, ": missing field 'model'");
  const std::string edir = tessera::io::require<std::string>(j, "entropy_model", a.config);
  tessera::blt::BltConfig cfg = blt_model_config(j["model"], a.config + " model");
  const PatchingConfig pc =
      PatchingConfig::from_json(j.value("patching", nlohmann::json::object()), a.config + " patching");

  // The frozen entropy model (a `blt train-entropy` folder).
  const ModelFiles ef = tessera::with_context(str("config ", a.config, ": entropy_model"),
                                              [&] { return resolve_model_dir(edir); });
  const nlohmann::json ej = tessera::io::read_json_file(ef.config.string());
  TESSERA_CHECK(is_entropy_config(ej), ef.config.string(),
                ": not an entropy model folder (expected model_type \"blt_patcher\", as `blt train-entropy` "
                "writes)");
  cfg.patch_in_forward = true;
  cfg.patching_mode = "entropy";
  cfg.patcher = tessera::with_context(ef.config.string(), [&] {
    return tessera::blt::entropy_config_from_hf(ej, sliding_window_of(ej, ef.config.string()));
  });
  cfg.max_patch_length = pc.max_patch_length;
  if (!std::isnan(pc.threshold)) cfg.patching_threshold = pc.threshold;
  cfg.validate(a.config + " model");

  RunConfig rc = read_run(j, a, a.config);
  BltLm<B> lm(cfg);
  tessera::Rng rng(rc.train.seed);
  lm.model.walk_patcher = false;  // initialise and give gradients to the BLT only
  tessera::init_normal(lm, rng, 0.02);
  tessera::allocate_grads(lm);
  const int64_t n_blt = tessera::count_params(lm);
  lm.model.walk_patcher = true;
  tessera::io::load_model(lm.model.patcher, ef.weights.string());
  tessera::set_compute_precision(lm, t.precision);
  lm.model.walk_patcher = false;  // bf16: AdamW writes the BLT's bf16 weights with its update (the entropy
  tessera::keep_bf16_weight_copies(lm);  // model is frozen: it keeps casting)
  lm.model.walk_patcher = true;
  print_device<B>(t);
  std::printf("BLT: %lld trainable parameters (+%lld frozen in the entropy model from %s)\n",
              static_cast<long long>(n_blt), static_cast<long long>(tessera::count_params(lm) - n_blt),
              edir.c_str());
  std::printf("  encoder %lldx%lld, global %lldx%lld, decoder %lldx%lld, k %lld, hash tables %lld x %lld\n",
              static_cast<long long>(cfg.encoder.n_layers), static_cast<long long>(cfg.encoder.dim),
              static_cast<long long>(cfg.global.n_layers), static_cast<long long>(cfg.global.dim),
              static_cast<long long>(cfg.decoder.n_layers), static_cast<long long>(cfg.decoder.dim),
              static_cast<long long>(cfg.cross_attn_k), static_cast<long long>(cfg.hash_tables()),
              static_cast<long long>(cfg.hash_vocab));

  const int64_t T = rc.data.seq_len;
  const fs::path saved_cfg = fs::path(a.out) / "config.json";
  if (std::isnan(pc.threshold)) {
    std::error_code ec;
    if (a.resume && fs::exists(saved_cfg, ec)) {  // keep the threshold the run started with
      const nlohmann::json sj = tessera::io::read_json_file(saved_cfg.string());
      lm.model.config.patching_threshold =
          tessera::io::require<double>(sj, "patching_threshold", saved_cfg.string());
      std::printf("patching: threshold %.6f nats (from %s)\n", lm.model.config.patching_threshold,
                  saved_cfg.c_str());
    } else {
      calibrate_threshold(lm, rc.train_bytes, T, pc.calibration_windows, pc.target_patch_length);
    }
  } else {
    std::printf("patching: threshold %.6f nats (from the config)\n", cfg.patching_threshold);
  }

  std::vector<int64_t> ids, tgt;
  BackendIds<B> ids_b, tgt_b, eval_x, eval_y;
  StepStats st;
  auto step = [&](BltLm<B>& m, const train::ByteBatch& b) {
    st.t0 = std::chrono::steady_clock::now();
    prepend_bos(b, ids, tgt);
    const int64_t rows = b.rows();
    const int64_t* x = ids_b.put(ids);
    const int64_t* y = tgt_b.put(tgt);
    auto zeroing = zero_existing_grads_async(m);  // CUDA: alongside the entropy model and the forward
    const tessera::blt::PatchLengths pl = m.model.compute_patch_lengths(x, rows, T, ids.data());
    st.patches = 0;
    for (int64_t len : pl.lengths) st.patches += len > 0;
    m.forward(x, rows, T, pl.lengths.data(), pl.P);
    zeroing.join();
    m.backward(y);
    st.loss = m.loss(y);
    st.bytes = b.tokens();
    return st.loss;
  };
  auto heldout = [&](BltLm<B>& m) {
    return heldout_bpb(rc.heldout, rc.data.batch, T, rc.data.eval_windows,
                       [&](const int64_t* x, const int64_t* y, int64_t rows, int64_t seq) {
                         m.forward(eval_x.put(x, rows * seq), rows, seq);
                         return m.loss(eval_y.put(y, rows * seq));
                       });
  };
  auto write_config = [&](const fs::path& out) {
    tessera::io::write_text_atomic((out / "config.json").string(), blt_hf_json(lm.config()).dump(2) + "\n");
  };
  auto save_final = [&](const fs::path& out) { save_blt(lm, out); };
  return run_training(rc, lm, st, step, heldout, write_config, save_final,
                      {{"blt", blt_hf_json(lm.config())},
                       {"entropy_model", edir},
                       {"device", B::name},
                       {"precision", tessera::precision_name(t.precision)}});
}

// Instantiated once per backend, in cpu_commands.cpp and cuda_commands.cpp (the blt_commands library).
extern template int train_entropy<tessera::cpu>(const TrainArgs&, const Target&);
extern template int train_blt<tessera::cpu>(const TrainArgs&, const Target&);
#if TESSERA_BLT_CUDA
extern template int train_entropy<tessera::cuda>(const TrainArgs&, const Target&);
extern template int train_blt<tessera::cuda>(const TrainArgs&, const Target&);
#endif

}  // namespace bltapp
