// The training loop: schedule -> step_fn (forward+backward) -> clip -> AdamW, with one log line per step,
// metrics.jsonl, periodic evaluation, atomic checkpoints and exact resume.
#pragma once
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/jsonl.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/byte_loader.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/clip.hpp"
#include "tessera/train/schedule.hpp"

namespace tessera::train {

struct TrainConfig {
  int64_t steps = 1000;             // total optimizer steps
  int64_t warmup = 0;               // linear warmup steps
  std::string schedule = "cosine";  // "cosine" (to min_lr at `steps`) or "constant"
  double lr = 3e-4;
  double min_lr = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // applied to the parameters the decay filter selects (default: rank >= 2)
  double grad_clip = 1.0;     // global L2 norm; <= 0 disables clipping
  int64_t log_every = 1;      // stdout line every n steps (plus the first and last); 0 = silent
  int64_t eval_every = 0;     // 0 = only at the end (if an eval function is set)
  int64_t ckpt_every = 0;     // 0 = only at the end (if out_dir is set)
  int keep_last = 0;          // keep only the newest k checkpoints; 0 = keep all
  std::string out_dir;        // metrics.jsonl and checkpoints; empty = neither
  uint64_t seed = 0;          // echoed into trainer_state.json (the app seeds init and loader with it)
  bool resume = false;        // continue from <out_dir>/latest if it exists

  Schedule make_schedule() const {
    return Schedule::parse_kind(schedule) == Schedule::Kind::constant
               ? Schedule::constant(lr, warmup)
               : Schedule::cosine(lr, min_lr, warmup, steps);
  }
  AdamWConfig adamw() const { return {lr, beta1, beta2, eps, weight_decay}; }

  nlohmann::json to_json() const {
    return {{"steps", steps},
            {"warmup", warmup},
            {"schedule", schedule},
            {"lr", lr},
            {"min_lr", min_lr},
            {"beta1", beta1},
            {"beta2", beta2},
            {"eps", eps},
            {"weight_decay", weight_decay},
            {"grad_clip", grad_clip},
            {"log_every", log_every},
            {"eval_every", eval_every},
            {"ckpt_every", ckpt_every},
            {"keep_last", keep_last},
            {"out_dir", out_dir},
            {"seed", std::to_string(seed)},
            {"resume", resume}};
  }
  /// Read from a JSON object; absent fields keep their defaults, present ones are type-checked. `where` names
  /// the config section in errors. ("seed" may be a number or a decimal string.)
  static TrainConfig from_json(const nlohmann::json& j, std::string_view where = "train") {
    TrainConfig c;
    c.steps = io::get_or<int64_t>(j, "steps", c.steps, where);
    c.warmup = io::get_or<int64_t>(j, "warmup", c.warmup, where);
    c.schedule = io::get_or<std::string>(j, "schedule", c.schedule, where);
    c.lr = io::get_or<double>(j, "lr", c.lr, where);
    c.min_lr = io::get_or<double>(j, "min_lr", c.min_lr, where);
    c.beta1 = io::get_or<double>(j, "beta1", c.beta1, where);
    c.beta2 = io::get_or<double>(j, "beta2", c.beta2, where);
    c.eps = io::get_or<double>(j, "eps", c.eps, where);
    c.weight_decay = io::get_or<double>(j, "weight_decay", c.weight_decay, where);
    c.grad_clip = io::get_or<double>(j, "grad_clip", c.grad_clip, where);
    c.log_every = io::get_or<int64_t>(j, "log_every", c.log_every, where);
    c.eval_every = io::get_or<int64_t>(j, "eval_every", c.eval_every, where);
    c.ckpt_every = io::get_or<int64_t>(j, "ckpt_every", c.ckpt_every, where);
    c.keep_last = io::get_or<int>(j, "keep_last", c.keep_last, where);
    c.out_dir = io::get_or<std::string>(j, "out_dir", c.out_dir, where);
    if (j.contains("seed") && j["seed"].is_string()) {
      const auto& s = j["seed"].get_ref<const std::string&>();
      TESSERA_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos, "config ", where,
                    ": field 'seed' must be a non-negative integer, found '", s, "'");
      c.seed = std::stoull(s);
    } else {
      c.seed = io::get_or<uint64_t>(j, "seed", c.seed, where);
    }
    c.resume = io::get_or<bool>(j, "resume", c.resume, where);
    c.validate();
    return c;
  }
  void validate() const {
    TESSERA_CHECK(steps > 0, "train config: steps must be > 0, got ", steps);
    TESSERA_CHECK(warmup >= 0 && warmup <= steps, "train config: warmup must be in [0, steps], got ", warmup);
    TESSERA_CHECK(log_every >= 0 && eval_every >= 0 && ckpt_every >= 0 && keep_last >= 0,
                  "train config: log_every, eval_every, ckpt_every and keep_last must be >= 0");
    if (Schedule::parse_kind(schedule) == Schedule::Kind::cosine)
      TESSERA_CHECK(warmup < steps, "train config: cosine schedule needs warmup (", warmup, ") < steps (",
                    steps, ")");
    make_schedule();
    AdamW<float> check(adamw());  // validates betas, eps, weight decay
  }
};

struct TrainResult {
  int64_t start_step = 0;  // 0, or the step resumed from
  int64_t steps_done = 0;  // completed optimizer steps at the end (== config.steps unless stopped)
  double last_loss = NAN;
  double last_grad_norm = NAN;
  nlohmann::json last_eval;     // the last eval function result (null when none ran)
  std::string last_checkpoint;  // folder of the last checkpoint written or resumed from ("" if none)
  bool stopped = false;         // the stop flag ended the run early (a checkpoint was written)
};

/// Drives training of `Model` (parameters Param<T, B>) on batches from `Loader`.
///
/// Loader needs: `Batch`, `next(Batch&)`, `tokens_per_batch()`, `state_json()`, `set_state_json(json)`
/// (ByteLoader has them). The step function gets the model and a batch, must zero the gradients, run forward
/// and backward (gradients complete on return) and return the mean loss. The optional eval function returns a
/// JSON object of numbers (e.g. {"val_bpb": 1.23}); it is recorded under "eval" in that step's metrics line.
///
/// Steps are 0-based internally (step s uses schedule.lr_at(s)); "step k" in logs, metrics and checkpoints is
/// the number of completed steps. Resuming from a checkpoint of step k restores the weights, AdamW state and
/// loader position, so steps k+1.. are bit-identical to an uninterrupted run.
template <class Model, class Loader = ByteLoader, class T = float, class B = cpu>
class Trainer {
 public:
  using Batch = typename Loader::Batch;
  using StepFn = std::function<double(Model&, const Batch&)>;
  using EvalFn = std::function<nlohmann::json(Model&, int64_t step)>;
  using ExtrasFn = std::function<nlohmann::json(Model&, int64_t step)>;

  Trainer(TrainConfig cfg, Model& model, Loader& loader, StepFn step_fn, DecayFilter decay = decay_rank_ge2)
      : cfg_(std::move(cfg)),
        model_(model),
        loader_(loader),
        step_fn_(std::move(step_fn)),
        schedule_((cfg_.validate(), cfg_.make_schedule())),
        opt_(cfg_.adamw(), std::move(decay)) {
    TESSERA_CHECK(step_fn_, "trainer: the step function is empty");
  }

  void set_eval(EvalFn f) { eval_ = std::move(f); }
  /// Extra numbers of every step (a JSON object, e.g. {"bytes_per_s": ..., "mean_patch_len": ...}), called
  /// after the optimizer step: appended to the progress line as " | key value" and recorded in the step's
  /// metrics line.
  void set_step_extras(ExtrasFn f) { extras_ = std::move(f); }
  /// Extra JSON stored as "app" in every trainer_state.json (e.g. the model config, for the record).
  void set_app_state(nlohmann::json j) { app_state_ = std::move(j); }
  /// When *flag becomes true (e.g. from a SIGINT handler), the loop checkpoints after the current step and
  /// returns with stopped = true.
  void set_stop_flag(const std::atomic<bool>* flag) { stop_ = flag; }

  AdamW<T, B>& optimizer() { return opt_; }
  const Schedule& schedule() const { return schedule_; }
  const TrainConfig& config() const { return cfg_; }

  TrainResult run() {
    namespace fs = std::filesystem;
    TrainResult res;
    const bool has_out = !cfg_.out_dir.empty();
    const fs::path out = cfg_.out_dir;
    int64_t start = 0;
    if (has_out) {
      const auto latest = find_latest(out);
      if (cfg_.resume && latest) {
        nlohmann::json st = load_checkpoint(*latest, model_, opt_);
        TESSERA_CHECK(st.contains("loader"), "checkpoint: '", (*latest / kTrainerStateFile).string(),
                      "' has no 'loader' field");
        with_context(str("checkpoint: '", (*latest / kTrainerStateFile).string(), "'"),
                     [&] { loader_.set_state_json(st["loader"]); });
        start = st["step"].get<int64_t>();
        TESSERA_CHECK(opt_.steps() == start, "checkpoint: '", latest->string(), "': optimizer step ",
                      opt_.steps(), " differs from trainer step ", start);
        res.last_checkpoint = latest->string();
        std::printf("resumed from %s at step %lld\n", latest->string().c_str(),
                    static_cast<long long>(start));
        truncate_metrics(out / "metrics.jsonl", start);
      } else {
        TESSERA_CHECK(!latest, "trainer: '", out.string(), "' already holds checkpoints (latest: '",
                      latest->string(), "'); resume it or choose another output folder");
        if (cfg_.resume) std::printf("no checkpoint in %s, starting from step 0\n", out.string().c_str());
        std::error_code ec;
        fs::create_directories(out, ec);
        TESSERA_CHECK(!ec, "trainer: cannot create output folder '", out.string(), "': ", ec.message());
        truncate_metrics(out / "metrics.jsonl", 0);
      }
    }
    res.start_step = start;
    res.steps_done = start;
    std::optional<io::JsonlWriter> metrics;
    if (has_out) metrics.emplace((out / "metrics.jsonl").string());

    Batch batch;
    int64_t last_saved = has_out && start > 0 ? start : -1;
    for (int64_t s = start; s < cfg_.steps; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      loader_.next(batch);
      const double loss = step_fn_(model_, batch);
      const int64_t done = s + 1;
      TESSERA_CHECK(
          std::isfinite(loss), "trainer: step ", done, ": loss is ", loss, "; stopping (",
          last_saved >= 0 ? str("last checkpoint: step ", last_saved) : std::string("no checkpoint"), ")");
      // Clipping folded into the optimizer step (clip_coefficient): the same update as clip_grad_norm then
      // step, one pass over the gradients fewer; the gradients keep their unclipped values.
      const double gn = grad_norm(model_);
      TESSERA_CHECK(
          std::isfinite(gn), "trainer: step ", done, ": gradient norm is ", gn, "; stopping (",
          last_saved >= 0 ? str("last checkpoint: step ", last_saved) : std::string("no checkpoint"), ")");
      const double lr = schedule_.lr_at(s);
      opt_.step(model_, lr, clip_coefficient<T>(gn, cfg_.grad_clip));
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tok_s = static_cast<double>(loader_.tokens_per_batch()) / std::max(sec, 1e-12);
      res.steps_done = done;
      res.last_loss = loss;
      res.last_grad_norm = gn;

      nlohmann::json rec = {{"step", done},    {"loss", loss},          {"lr", lr},
                            {"grad_norm", gn}, {"tokens_per_s", tok_s}, {"ms", sec * 1e3}};
      nlohmann::json extras;
      if (extras_) {
        extras = extras_(model_, done);
        TESSERA_CHECK(extras.is_object() || extras.is_null(), "trainer: step extras must be a JSON object");
        if (extras.is_object())
          for (const auto& [k, v] : extras.items()) rec[k] = v;
      }
      const bool last = done == cfg_.steps;
      if (cfg_.log_every > 0 && (done % cfg_.log_every == 0 || done == start + 1 || last)) {
        std::printf("step %lld/%lld | loss %.4f | lr %.1e | grad norm %.3f | %.0f tok/s | %.1f ms%s\n",
                    static_cast<long long>(done), static_cast<long long>(cfg_.steps), loss, lr, gn, tok_s,
                    sec * 1e3, format_fields(extras).c_str());
        std::fflush(stdout);
      }
      if (eval_ && ((cfg_.eval_every > 0 && done % cfg_.eval_every == 0) || last)) {
        nlohmann::json ev = eval_(model_, done);
        print_eval(done, ev);
        rec["eval"] = ev;
        res.last_eval = std::move(ev);
      }
      if (metrics) metrics->write(rec);

      const bool stop = stop_ && stop_->load();
      if (has_out && ((cfg_.ckpt_every > 0 && done % cfg_.ckpt_every == 0) || last || stop)) {
        nlohmann::json st = {{"loader", loader_.state_json()}, {"config", cfg_.to_json()}};
        if (!app_state_.is_null()) st["app"] = app_state_;
        res.last_checkpoint =
            save_checkpoint(out, done, model_, opt_, std::move(st), cfg_.keep_last).string();
        last_saved = done;
      }
      if (stop) {
        std::printf("stopped at step %lld%s%s\n", static_cast<long long>(done),
                    has_out ? "; checkpoint " : "", has_out ? res.last_checkpoint.c_str() : "");
        std::fflush(stdout);
        res.stopped = true;
        break;
      }
    }
    return res;
  }

 private:
  /// " | key value" for every field of a JSON object (floats with 4 decimals); "" for null.
  static std::string format_fields(const nlohmann::json& fields) {
    std::string line;
    if (fields.is_object()) {
      for (const auto& [k, v] : fields.items()) {
        char buf[64];
        if (v.is_number_float())
          std::snprintf(buf, sizeof buf, "%.4f", v.template get<double>());
        else
          std::snprintf(buf, sizeof buf, "%s", v.dump().substr(0, 60).c_str());
        line += str(" | ", k, " ", buf);
      }
    } else if (!fields.is_null()) {
      line += str(" | ", fields.dump());
    }
    return line;
  }
  static void print_eval(int64_t step, const nlohmann::json& ev) {
    std::printf("eval step %lld%s\n", static_cast<long long>(step), format_fields(ev).c_str());
    std::fflush(stdout);
  }

  /// Keep only the records with step <= `keep` (dropping the tail a crashed run wrote after its last
  /// checkpoint, and any partial last line), so a resumed run's metrics have each step once.
  static void truncate_metrics(const std::filesystem::path& path, int64_t keep) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return;
    std::ifstream in(path);
    TESSERA_CHECK(in, "trainer: cannot read '", path.string(), "'");
    std::string kept, line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() <= keep)
        kept += line + "\n";
    }
    io::write_text_atomic(path.string(), kept);
  }

  TrainConfig cfg_;
  Model& model_;
  Loader& loader_;
  StepFn step_fn_;
  Schedule schedule_;
  AdamW<T, B> opt_;
  EvalFn eval_;
  ExtrasFn extras_;
  nlohmann::json app_state_;
  const std::atomic<bool>* stop_ = nullptr;
};

}  // namespace tessera::train
