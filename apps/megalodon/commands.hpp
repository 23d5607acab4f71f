// The subcommands of `megalodon` (main.cpp parses the flags; train.cpp and inference.cpp implement them). Each
// throws tessera::Error on bad input and writes its output files only once everything succeeded.
#pragma once
#include <cstdint>
#include <string>

#include "sampling.hpp"

namespace mglapp {

struct TrainArgs {
  std::string config;  // JSON config file
  std::string data;    // overrides data.path when set
  std::string out;     // output folder
  int64_t steps = 0;   // overrides train.steps when > 0
  bool resume = false;
};
int cmd_train(const TrainArgs& a);

struct EvalArgs {
  std::string model, data;
  int64_t seq_len = 256, batch = 8, max_windows = 0, max_bytes = 0;
  bool stream = false;  // one pass over the whole text with carried state (unlimited context)
};
int cmd_eval(const EvalArgs& a);

struct GenerateArgs {
  std::string model, prompt = "The ";
  int64_t n = 200;
  SamplingOptions sampling{.temperature = 0.8};
};
int cmd_generate(const GenerateArgs& a);

struct LogitsArgs {
  std::string model, ids, out;
};
int cmd_logits(const LogitsArgs& a);

}  // namespace mglapp
