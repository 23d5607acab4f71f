// The subcommands of `blt` (main.cpp parses the flags; train.cpp and inference.cpp implement them, the
// training, eval and generation generic over the backend: train_impl.hpp, eval_impl.hpp). Each throws
// tessera::Error on bad input (a refused --device / --precision before reading or writing anything) and
// writes its output files only once everything succeeded.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace bltapp {

struct TrainArgs {
  std::string config;  // JSON config file
  std::string data;    // overrides data.path when set
  std::string out;     // output folder
  int64_t steps = 0;   // overrides train.steps when > 0
  bool resume = false;
  std::string device = "cpu";      // cpu | cuda (device.hpp)
  std::string precision = "fp32";  // fp32 | bf16 (bf16 training: cuda only)
};
int cmd_train_entropy(const TrainArgs& a);
int cmd_train(const TrainArgs& a);

struct EvalArgs {
  std::string model, data;
  int64_t seq_len = 256, batch = 8, max_windows = 0;
  std::string device = "cpu", precision = "fp32";
};
int cmd_eval(const EvalArgs& a);

struct GenerateArgs {
  std::string model;
  std::optional<std::string> prompt, prompt_hex;
  int64_t n = 64;
  double temp = 0.8, top_p = 0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  bool no_cache = false;
  std::string ids_out;
  std::string device = "cpu", precision = "fp32";  // bf16: frozen bf16 weight copies
};
int cmd_generate(const GenerateArgs& a);

struct PatchArgs {
  std::string model;
  std::optional<std::string> text, file;
  std::string png;
};
int cmd_patch(const PatchArgs& a);

struct LogitsArgs {
  std::string model, ids_hex, out;
};
int cmd_logits(const LogitsArgs& a);

}  // namespace bltapp
