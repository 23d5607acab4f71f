// `megalodon train`: a Megalodon LM on text (GCIDE by default) with tessera::train::Trainer (AdamW, cosine
// schedule, clipping, one progress line per step, metrics.jsonl, atomic step_N checkpoints, exact --resume).
//
// Config (JSON): {"model": {official ModelConf arguments; vocab_size defaults to the tokenizer's},
//                 "data": {"path": FILE_OR_FOLDER or [...], "heldout_fraction", "batch", "seq_len",
//                          "eval_windows", "max_bytes", "carry_state", "tokenizer": {"sentencepiece": FILE}},
//                 "train": {tessera::train::TrainConfig fields}}
// Unknown fields are errors. The output folder gets config.json (official names) at the start, tokenizer.model
// (a copy of the sentencepiece model, if any), and model.safetensors (official names and buffers) at the end,
// so it is then a model folder for eval/generate/logits (and for the official code's load_state_dict).
//
// data.carry_state: rows of consecutive batches continue the same text (loader.hpp) and the model's state
// (TimestepNorm statistics, CEMA states) is carried from one window to the next, detached: training sees
// unlimited context, as in the paper. seq_len must then be a multiple of chunk_size.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "carry.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "loader.hpp"

namespace mglapp {

namespace train = tessera::train;
using nlohmann::json;

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_sigint(int) {
  g_stop = true;
}

struct DataConfig {
  std::vector<std::string> paths = {"/usr/share/dictd/gcide.dict.dz"};
  double heldout = 0.01;
  int64_t batch = 8, seq_len = 256, eval_windows = 32, max_bytes = 0;
  bool carry_state = false;
  std::string sentencepiece;  // empty: bytes

  static DataConfig from_json(const json& j, const std::string& where) {
    using tessera::io::get_or;
    check_keys(j,
               {"path", "heldout_fraction", "batch", "seq_len", "eval_windows", "max_bytes", "carry_state",
                "tokenizer"},
               where);
    DataConfig d;
    if (j.contains("path") && j["path"].is_array())
      d.paths = tessera::io::require<std::vector<std::string>>(j, "path", where);
    else if (j.contains("path"))
      d.paths = {tessera::io::require<std::string>(j, "path", where)};
    TESSERA_CHECK(!d.paths.empty(), "config ", where, ": field 'path' is an empty list");
    d.heldout = get_or<double>(j, "heldout_fraction", d.heldout, where);
    d.batch = get_or<int64_t>(j, "batch", d.batch, where);
    d.seq_len = get_or<int64_t>(j, "seq_len", d.seq_len, where);
    d.eval_windows = get_or<int64_t>(j, "eval_windows", d.eval_windows, where);
    d.max_bytes = get_or<int64_t>(j, "max_bytes", d.max_bytes, where);
    d.carry_state = get_or<bool>(j, "carry_state", d.carry_state, where);
    if (j.contains("tokenizer") && !j["tokenizer"].is_null()) {
      const auto& t = j["tokenizer"];
      if (t.is_string()) {
        TESSERA_CHECK(t.get<std::string>() == "bytes", "config ", where,
                      ": field 'tokenizer' must be \"bytes\" or {\"sentencepiece\": FILE}, found ", t.dump());
      } else {
        check_keys(t, {"sentencepiece"}, where + ".tokenizer");
        d.sentencepiece = tessera::io::require<std::string>(t, "sentencepiece", where + ".tokenizer");
        TESSERA_CHECK(!d.sentencepiece.empty(), "config ", where, ".tokenizer: field 'sentencepiece' is empty");
      }
    }
    TESSERA_CHECK(d.heldout > 0 && d.heldout < 1, "config ", where,
                  ": field 'heldout_fraction' must be in (0, 1), found ", d.heldout);
    TESSERA_CHECK(d.batch > 0, "config ", where, ": field 'batch' must be positive, found ", d.batch);
    TESSERA_CHECK(d.seq_len > 0, "config ", where, ": field 'seq_len' must be positive, found ", d.seq_len);
    TESSERA_CHECK(d.eval_windows >= 0, "config ", where, ": field 'eval_windows' must be >= 0");
    TESSERA_CHECK(d.max_bytes >= 0, "config ", where, ": field 'max_bytes' must be >= 0");
    return d;
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TESSERA_CHECK(in, "cannot read '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  TESSERA_CHECK(!in.bad(), "error while reading '", path, "'");
  return ss.str();
}

train::TrainConfig read_train_config(const json& j, const TrainArgs& a, const std::string& where) {
  check_keys(j,
             {"steps", "warmup", "schedule", "lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip",
              "log_every", "eval_every", "ckpt_every", "keep_last", "seed"},
             where);
  train::TrainConfig tc = train::TrainConfig::from_json(j, where);
  if (a.steps > 0) {
    tc.steps = a.steps;
    if (tc.warmup >= a.steps) {  // a short run from a long run's config: shorten the warmup too
      tc.warmup = a.steps / 10;
      std::printf("note: --steps %lld is not longer than train.warmup; warmup shortened to %lld steps\n",
                  static_cast<long long>(a.steps), static_cast<long long>(tc.warmup));
    }
  }
  tc.out_dir = a.out;
  tc.resume = a.resume;
  tc.validate();
  return tc;
}

}  // namespace

int cmd_train(const TrainArgs& a) {
  // ---- everything is read and checked before anything is written --------------------------------------------
  TESSERA_CHECK(!a.out.empty(), "no output folder given (-o)");
  const json j = tessera::io::read_json_file(a.config);
  check_keys(j, {"model", "data", "train"}, a.config);
  for (const char* s : {"model", "train"})
    TESSERA_CHECK(j.contains(s), "config ", a.config, ": missing field '", s, "'");
  DataConfig dc = DataConfig::from_json(j.value("data", json::object()), a.config + " data");
  if (!a.data.empty()) dc.paths = {a.data};
  const train::TrainConfig tc = read_train_config(j["train"], a, a.config + " train");

  const Tokenizer tok = dc.sentencepiece.empty() ? Tokenizer::bytes() : Tokenizer::sentencepiece(dc.sentencepiece);
  json mj = j["model"];
  check_model_keys(mj, a.config + " model");
  if (!mj.contains("vocab_size")) mj["vocab_size"] = tok.vocab_size();
  const ModelConfig cfg = ModelConfig::from_json(mj, "config " + a.config + " model");
  if (tok.is_bytes())
    TESSERA_CHECK(cfg.vocab_size >= 256, "config ", a.config, " model: vocab_size ", cfg.vocab_size,
                  " is below 256, too small for the byte vocabulary (or set data.tokenizer)");
  else
    TESSERA_CHECK(cfg.vocab_size == tok.vocab_size(), "config ", a.config, " model: vocab_size ", cfg.vocab_size,
                  " differs from the ", tok.vocab_size(), " pieces of sentencepiece model '", tok.file(),
                  "' (they must be equal; leave vocab_size out to take the tokenizer's)");
  if (dc.carry_state)
    TESSERA_CHECK(dc.seq_len % cfg.chunk_size == 0, "config ", a.config, ": data.carry_state needs seq_len (",
                  dc.seq_len, ") to be a multiple of model.chunk_size (", cfg.chunk_size, ")");

  const fs::path out = a.out;
  const bool resuming = a.resume && train::find_latest(out).has_value();
  TESSERA_CHECK(a.resume || !train::find_latest(out), "output folder '", out.string(),
                "' already holds checkpoints; use --resume to continue, or choose another folder");

  const std::string text = load_text(dc.paths, dc.max_bytes);
  const auto split = train::split_corpus(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                                         dc.heldout);
  const auto as_view = [](const std::vector<uint8_t>& v) {
    return std::string_view(reinterpret_cast<const char*>(v.data()), v.size());
  };
  std::vector<int32_t> train_tokens = tok.encode(as_view(split.train));
  const std::vector<int32_t> heldout = tok.encode(as_view(split.heldout));
  // Bytes of text per token of the held-out part: converts the loss per token into bits per byte.
  const double bytes_per_token =
      heldout.empty() ? 1.0 : static_cast<double>(split.heldout.size()) / static_cast<double>(heldout.size());
  std::string names;
  for (const auto& p : dc.paths) names += (names.empty() ? "" : ", ") + p;
  std::printf("data: %s | %zu train bytes | %zu held-out bytes | tokenizer: %s\n", names.c_str(),
              split.train.size(), split.heldout.size(), tok.describe().c_str());
  if (!tok.is_bytes())
    std::printf("      %zu train tokens | %zu held-out tokens (%.3f bytes per token)\n", train_tokens.size(),
                heldout.size(), bytes_per_token);
  // Fail now, before anything is written, if the held-out part cannot hold one evaluation window.
  const int64_t T = dc.seq_len;
  TESSERA_CHECK(static_cast<int64_t>(heldout.size()) >= T + 1, "held-out data: ", heldout.size(),
                " tokens is too little for one evaluation window of seq_len + 1 = ", T + 1,
                " tokens (raise data.heldout_fraction or use more text)");
  TokenLoader loader(std::move(train_tokens), {dc.batch, T, tc.seed + 1, dc.carry_state});

  Model model(cfg);
  tessera::Rng rng(tc.seed);
  model.init(rng);
  tessera::allocate_grads(model);
  std::printf("model: %lld parameters | %lld layers, model_dim %lld, z_dim %lld, value_dim %lld, %lld heads, "
              "chunk_size %lld, cema_ndim %lld%s\n",
              static_cast<long long>(tessera::count_params(model)), static_cast<long long>(cfg.num_layers),
              static_cast<long long>(cfg.model_dim), static_cast<long long>(cfg.z_dim),
              static_cast<long long>(cfg.value_dim), static_cast<long long>(cfg.num_heads),
              static_cast<long long>(cfg.chunk_size), static_cast<long long>(cfg.cema_ndim),
              dc.carry_state ? " | state carried across windows" : "");

  // ---- training ---------------------------------------------------------------------------------------------
  Model::State carried;  // data.carry_state only
  if (dc.carry_state) {
    std::printf("carry_state: %lld lanes of %lld tokens, %lld windows of %lld per lane before they restart\n",
                static_cast<long long>(dc.batch), static_cast<long long>(loader.lane_size()),
                static_cast<long long>(loader.windows_per_lane()), static_cast<long long>(T));
    loader.save_extra = [&] { return carried_state_json(carried); };
    loader.load_extra = [&](const json& s) { carried_state_from_json(model, s, carried); };
  }
  auto step = [&](Model& m, const TokenBatch& b) {
    tessera::zero_grads(m);
    Model::State* st = nullptr;
    if (dc.carry_state) {
      if (b.fresh) carried = Model::State{};
      st = &carried;
    }
    m.forward(b.inputs.data(), b.rows(), T, st);
    m.backward(b.targets.data());
    return m.loss(b.targets.data());
  };
  auto heldout_eval = [&](Model& m) {
    const Nll r = window_nll(m, heldout, dc.batch, T, dc.eval_windows);
    json e = {{"val_bpb", r.bits_per_byte(bytes_per_token)}};
    if (!tok.is_bytes()) e["val_bits_per_token"] = r.bits_per_token();
    return e;
  };
  // Weight decay on every parameter, as the official optimizer (spec §9, item 9).
  train::Trainer<Model, TokenLoader> trainer(tc, model, loader, step,
                                             [](const std::string&, const tessera::Shape&) { return true; });
  trainer.set_eval([&](Model& m, int64_t) { return heldout_eval(m); });
  trainer.set_app_state({{"model", cfg.to_json()},
                         {"tokenizer", tok.is_bytes() ? json("bytes") : json{{"sentencepiece", tok.file()}}},
                         {"carry_state", dc.carry_state}});
  if (!resuming) std::printf("held-out bpb at start: %.4f\n", heldout_eval(model)["val_bpb"].get<double>());

  std::error_code ec;
  fs::create_directories(out, ec);
  TESSERA_CHECK(!ec, "cannot create output folder '", out.string(), "': ", ec.message());
  tessera::io::write_text_atomic((out / "config.json").string(), cfg.to_json().dump(2) + "\n");
  if (!tok.is_bytes()) {
    const std::string spm = read_file(tok.file());
    tessera::io::write_bytes_atomic((out / kTokenizerFile).string(), spm.data(), spm.size());
  }
  g_stop = false;
  trainer.set_stop_flag(&g_stop);
  auto old = std::signal(SIGINT, on_sigint);
  const train::TrainResult res = trainer.run();
  std::signal(SIGINT, old);
  if (res.last_eval.is_object() && res.last_eval.contains("val_bpb"))
    std::printf("held-out bpb at end: %.4f (step %lld)\n", res.last_eval["val_bpb"].get<double>(),
                static_cast<long long>(res.steps_done));
  tessera::models::save_megalodon(model, out.string());
  std::printf("saved %s/config.json and %s/model.safetensors (step %lld)\n", out.c_str(), out.c_str(),
              static_cast<long long>(res.steps_done));
  return 0;
}

}  // namespace mglapp
