// tessera-lm: a Llama-style byte-level LM (tessera::models::Llama, composed from library layers) that trains
// on real text (GCIDE by default), reports held-out bits per byte, samples text, and resumes exactly.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "tessera/io/io.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/train/train.hpp"
#include "sampling.hpp"

namespace fs = std::filesystem;
using namespace tessera;
using Model = models::Llama<float>;

namespace {

struct DataConfig {
  std::string path;
  double heldout = 0.01;
  int64_t batch = 16, seq_len = 128, eval_windows = 64, max_bytes = 0;
  static DataConfig from_json(const nlohmann::json& j) {
    DataConfig d;
    d.path = io::require<std::string>(j, "path", "data");
    d.heldout = io::get_or<double>(j, "heldout_fraction", d.heldout, "data");
    d.batch = io::get_or<int64_t>(j, "batch", d.batch, "data");
    d.seq_len = io::get_or<int64_t>(j, "seq_len", d.seq_len, "data");
    d.eval_windows = io::get_or<int64_t>(j, "eval_windows", d.eval_windows, "data");
    d.max_bytes = io::get_or<int64_t>(j, "max_bytes", d.max_bytes, "data");
    return d;
  }
};

/// Held-out bits per byte over (at most `max_windows`) non-overlapping windows.
double heldout_bpb(Model& m, std::span<const uint8_t> bytes, int64_t batch, int64_t seq, int64_t max_windows) {
  train::EvalWindows ev(bytes, batch, seq, 0, max_windows);
  train::ByteBatch b;
  double nll = 0;
  while (ev.next(b)) {
    m.forward(b.inputs.data(), b.rows(), seq);
    nll += m.loss(b.targets.data()) * static_cast<double>(b.tokens());
  }
  return train::bits_per_byte(nll, ev.num_targets());
}

/// A trained model: `dir` is a training output folder (uses its latest checkpoint) or a checkpoint folder.
Model load_trained(const fs::path& dir) {
  fs::path ckpt = dir;
  if (auto latest = train::find_latest(dir)) ckpt = *latest;
  const fs::path cfg_file = fs::exists(ckpt / "config.json") ? ckpt / "config.json" : ckpt.parent_path() / "config.json";
  Model m(models::LlamaConfig::from_json(io::read_json_file(cfg_file.string()), cfg_file.string()));
  io::load_model(m, (ckpt / "model.safetensors").string());
  return m;
}

int cmd_train(const std::string& config_path, const std::string& data_override, const std::string& out,
              int64_t steps, bool resume) {
  const auto j = io::read_json_file(config_path);
  const auto mcfg = models::LlamaConfig::from_json(io::require<nlohmann::json>(j, "model", config_path), "model");
  auto dcfg = DataConfig::from_json(io::require<nlohmann::json>(j, "data", config_path));
  auto tcfg = train::TrainConfig::from_json(io::require<nlohmann::json>(j, "train", config_path), "train");
  if (!data_override.empty()) dcfg.path = data_override;
  if (steps > 0) tcfg.steps = steps;
  tcfg.out_dir = out;
  tcfg.resume = resume;
  tcfg.validate();

  train::CorpusOptions copt;
  copt.max_bytes = dcfg.max_bytes;
  auto split = train::split_corpus(train::load_corpus(dcfg.path, copt).bytes, dcfg.heldout);
  std::printf("data: %s | %zu train bytes | %zu held-out bytes\n", dcfg.path.c_str(), split.train.size(),
              split.heldout.size());
  Model model(mcfg);
  Rng rng(tcfg.seed);
  init_normal(model, rng, 0.02);
  allocate_grads(model);
  std::printf("model: %lld parameters, dim %lld, %lld layers\n", static_cast<long long>(count_params(model)),
              static_cast<long long>(mcfg.dim), static_cast<long long>(mcfg.n_layers));
  train::ByteLoader loader(std::move(split.train), {dcfg.batch, dcfg.seq_len, tcfg.seed + 1, 0});
  const int64_t T = dcfg.seq_len;
  train::Trainer<Model> trainer(tcfg, model, loader, [T](Model& m, const train::ByteBatch& b) {
    zero_grads(m);
    m.forward(b.inputs.data(), b.rows(), T);
    m.backward(b.targets.data());
    return m.loss(b.targets.data());
  });
  trainer.set_eval([&](Model& m, int64_t) {
    return nlohmann::json{{"val_bpb", heldout_bpb(m, split.heldout, dcfg.batch, T, dcfg.eval_windows)}};
  });
  trainer.set_app_state({{"model", mcfg.to_json()}});
  fs::create_directories(out);
  io::write_text_atomic((fs::path(out) / "config.json").string(), mcfg.to_json().dump(2));
  const double bpb0 = resume ? NAN : heldout_bpb(model, split.heldout, dcfg.batch, T, dcfg.eval_windows);
  if (!resume) std::printf("held-out bpb at start: %.4f\n", bpb0);
  const auto res = trainer.run();
  if (res.last_eval.is_object())
    std::printf("held-out bpb at end: %.4f (step %lld)\n", res.last_eval.value("val_bpb", NAN),
                static_cast<long long>(res.steps_done));
  std::printf("sample: %s\n", lm::sample_text(model, "The ", 160, 0.8, 40, tcfg.seed).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera-lm: train, evaluate and sample a byte-level Llama-style transformer"};
  app.require_subcommand(1);
  std::string config, data, out = "runs/lm", model_dir, prompt = "The ";
  int64_t steps = 0, n = 200, top_k = 0, eval_windows = 0, seq = 128;
  double temp = 0.8;
  uint64_t seed = 0;
  bool resume = false;
  auto* tr = app.add_subcommand("train", "train on text (a .dz/.gz file, a text file or a folder)");
  tr->add_option("-c,--config", config, "JSON config with model, data and train sections")->required();
  tr->add_option("--data", data, "override data.path");
  tr->add_option("-o,--out", out, "output folder: metrics.jsonl, config.json, checkpoints")->capture_default_str();
  tr->add_option("--steps", steps, "override train.steps");
  tr->add_flag("--resume", resume, "continue from the latest checkpoint in --out");
  auto* ev = app.add_subcommand("eval", "bits per byte of a trained model on a text file or folder");
  ev->add_option("-m,--model", model_dir, "training output or checkpoint folder")->required();
  ev->add_option("--data", data, "text to evaluate")->required();
  ev->add_option("--seq-len", seq, "window length")->capture_default_str();
  ev->add_option("--max-windows", eval_windows, "evaluate at most this many windows (0 = all)");
  auto* sa = app.add_subcommand("sample", "generate text from a trained model");
  sa->add_option("-m,--model", model_dir, "training output or checkpoint folder")->required();
  sa->add_option("-p,--prompt", prompt, "prompt text")->capture_default_str();
  sa->add_option("-n", n, "bytes to generate")->capture_default_str();
  sa->add_option("--temp", temp, "temperature (0 = greedy)")->capture_default_str();
  sa->add_option("--top-k", top_k, "sample among the k most likely bytes (0 = all)");
  sa->add_option("--seed", seed, "sampling seed");
  CLI11_PARSE(app, argc, argv);
  try {
    if (*tr) return cmd_train(config, data, out, steps, resume);
    Model m = load_trained(model_dir);
    if (*ev) {
      const auto bytes = train::load_corpus(data).bytes;
      std::printf("bpb: %.4f\n", heldout_bpb(m, bytes, 8, seq, eval_windows));
    } else {
      std::printf("%s\n", lm::sample_text(m, prompt, n, temp, top_k, seed).c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
