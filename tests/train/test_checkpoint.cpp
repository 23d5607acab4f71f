// Checkpoints (round trip, `latest`, keep-last, errors) and the trainer: log format, metrics, and exact
// resume — a run interrupted after k steps and resumed in fresh objects ends bit-identical to an
// uninterrupted run.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "support/temp_dir.hpp"
#include "tessera/train/train.hpp"

using namespace tessera;
using namespace tessera::train;
namespace fs = std::filesystem;

using tessera::testing::TempDir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A tiny byte-level LM: logits[i] = out_w · emb[x_i] + out_b, softmax cross-entropy over 256 bytes.
struct ByteLm {
  static constexpr int64_t V = 256, D = 8;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<float>, emb), (Param<float>, out_w), (Param<float>, out_b));
  };
  Params params;
  explicit ByteLm(uint64_t seed) {
    params.emb.resize({V, D});
    params.out_w.resize({V, D});
    params.out_b.resize({V});
    Rng rng(seed);
    tessera::testing::fill_normal(params.emb.value, rng, 0.5);
    tessera::testing::fill_normal(params.out_w.value, rng, 0.1);
    tessera::testing::fill_normal(params.out_b.value, rng, 0.1);
    allocate_grads(*this);
  }
};

/// Mean cross-entropy over the batch; with `grad`, zeroes and fills the gradients (hand-written backward).
double lm_loss(ByteLm& m, const ByteBatch& b, bool grad) {
  constexpr int64_t V = ByteLm::V, D = ByteLm::D;
  const int64_t n = b.tokens();
  if (grad) zero_grads(m);
  const float* E = m.params.emb.value.data();
  const float* W = m.params.out_w.value.data();
  const float* bias = m.params.out_b.value.data();
  std::vector<float> logits(V), h(D);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x = b.inputs[i], y = b.targets[i];
    for (int64_t d = 0; d < D; ++d) h[static_cast<size_t>(d)] = E[x * D + d];
    float mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      float z = bias[v];
      for (int64_t d = 0; d < D; ++d) z += W[v * D + d] * h[static_cast<size_t>(d)];
      logits[static_cast<size_t>(v)] = z;
      mx = std::max(mx, z);
    }
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[static_cast<size_t>(v)] - mx));
    total += std::log(sum) + mx - logits[static_cast<size_t>(y)];
    if (!grad) continue;
    float* gE = m.params.emb.grad.data();
    float* gW = m.params.out_w.grad.data();
    float* gb = m.params.out_b.grad.data();
    for (int64_t v = 0; v < V; ++v) {
      const float p =
          static_cast<float>(std::exp(static_cast<double>(logits[static_cast<size_t>(v)] - mx)) / sum);
      const float dz = (p - (v == y ? 1.0f : 0.0f)) / static_cast<float>(n);
      gb[v] += dz;
      for (int64_t d = 0; d < D; ++d) {
        gW[v * D + d] += dz * h[static_cast<size_t>(d)];
        gE[x * D + d] += dz * W[v * D + d];
      }
    }
  }
  return total / static_cast<double>(n);
}

std::vector<uint8_t> sample_text() {
  const std::string s =
      "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
      "Colorless green ideas sleep furiously. To be, or not to be, that is the question. ";
  std::vector<uint8_t> out;
  for (int r = 0; r < 20; ++r) out.insert(out.end(), s.begin(), s.end());
  return out;
}

ByteLoaderConfig loader_cfg() {
  return {.batch = 4, .seq_len = 16, .seed = 5, .id_offset = 0};
}

TrainConfig train_cfg(const fs::path& out, int64_t steps) {
  TrainConfig c;
  c.steps = steps;
  c.warmup = 2;
  c.lr = 3e-2;
  c.min_lr = 3e-3;
  c.weight_decay = 0.1;
  c.grad_clip = 0.2;  // small enough to clip at the start, so clipping is part of what must resume exactly
  c.log_every = 1;
  c.out_dir = out.string();
  c.seed = 1;
  return c;
}

bool same_bytes(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * 4) == 0;
}
bool same_bytes(const Tensor<float>* a, const Tensor<float>* b) {
  return a && b && same_bytes(*a, *b);
}
bool same_model(ByteLm& a, ByteLm& b) {
  return same_bytes(a.params.emb.value, b.params.emb.value) &&
         same_bytes(a.params.out_w.value, b.params.out_w.value) &&
         same_bytes(a.params.out_b.value, b.params.out_b.value);
}

}  // namespace

TEST(Checkpoint, RoundTripLatestAndKeepLast) {
  TempDir d("ckpt_rt");
  ByteLm m(1);
  AdamW<float> opt({.lr = 1e-2, .weight_decay = 0.1});
  ByteLoader loader(sample_text(), loader_cfg());
  for (int i = 0; i < 3; ++i) {
    lm_loss(m, loader.next(), true);
    opt.step(m, 1e-2);
  }
  EXPECT_FALSE(find_latest(d.path / "nothing_here").has_value());
  EXPECT_FALSE(find_latest(d.path).has_value());
  const auto dir = save_checkpoint(d.path, 3, m, opt, {{"loader", loader.state_json()}, {"note", "x"}});
  EXPECT_EQ(dir, d.path / "step_00000003");
  EXPECT_EQ(read_text(d.path / "latest"), "step_00000003\n");
  ASSERT_TRUE(find_latest(d.path).has_value());
  EXPECT_EQ(*find_latest(d.path), dir);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::is_regular_file(dir / f)) << f;
  EXPECT_FALSE(fs::exists(d.path / ".step_00000003.tmp"));

  // Fresh objects (different init) restored from the checkpoint.
  ByteLm m2(99);
  AdamW<float> opt2({.lr = 1e-2, .weight_decay = 0.1});
  ByteLoader loader2(sample_text(), loader_cfg());
  const auto st = load_checkpoint(dir, m2, opt2);
  loader2.set_state_json(st["loader"]);
  EXPECT_EQ(st["step"], 3);
  EXPECT_EQ(st["note"], "x");
  EXPECT_TRUE(same_model(m, m2));
  EXPECT_EQ(opt2.steps(), 3);
  EXPECT_TRUE(same_bytes(opt.m("out_w"), opt2.m("out_w")));
  EXPECT_TRUE(same_bytes(opt.v("emb"), opt2.v("emb")));
  const auto b1 = loader.next(), b2 = loader2.next();
  EXPECT_EQ(0, std::memcmp(b1.inputs.data(), b2.inputs.data(), static_cast<size_t>(b1.tokens()) * 8));

  // keep_last = 1 removes older checkpoints; re-saving an existing step replaces it.
  save_checkpoint(d.path, 5, m, opt, {}, /*keep_last=*/1);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(read_text(d.path / "latest"), "step_00000005\n");
  save_checkpoint(d.path, 5, m, opt, {{"again", true}}, 1);
  EXPECT_EQ(io::read_json_file((d.path / "step_00000005" / "trainer_state.json").string())["again"], true);

  // Without `latest`, the newest complete step folder is used; incomplete ones are ignored.
  fs::remove(d.path / "latest");
  fs::create_directories(d.path / "step_00000009");
  ASSERT_TRUE(find_latest(d.path).has_value());
  EXPECT_EQ(*find_latest(d.path), d.path / "step_00000005");
}

TEST(Checkpoint, ClearErrorsNameTheFile) {
  TempDir d("ckpt_err");
  ByteLm m(1);
  AdamW<float> opt({.lr = 1e-2});
  ByteLoader loader(sample_text(), loader_cfg());
  lm_loss(m, loader.next(), true);
  opt.step(m, 1e-2);
  const auto dir = save_checkpoint(d.path, 1, m, opt, {});

  io::write_text_atomic((d.path / "latest").string(), "garbage\n");
  auto msg = error_of([&] { find_latest(d.path); });
  EXPECT_NE(msg.find((d.path / "latest").string()), std::string::npos) << msg;
  io::write_text_atomic((d.path / "latest").string(), "step_00000007\n");
  msg = error_of([&] { find_latest(d.path); });
  EXPECT_NE(msg.find("step_00000007"), std::string::npos) << msg;
  io::write_text_atomic((d.path / "latest").string(), "step_00000001\n");

  // Corrupt trainer state / optimizer file / missing model file.
  const std::string good_state = read_text(dir / "trainer_state.json");
  io::write_text_atomic((dir / "trainer_state.json").string(), "{\"step\": ");
  msg = error_of([&] { load_checkpoint(dir, m, opt); });
  EXPECT_NE(msg.find("trainer_state.json"), std::string::npos) << msg;
  io::write_text_atomic((dir / "trainer_state.json").string(), good_state);

  io::write_text_atomic((dir / "optimizer.safetensors").string(), "not a safetensors file");
  msg = error_of([&] { load_checkpoint(dir, m, opt); });
  EXPECT_NE(msg.find("optimizer.safetensors"), std::string::npos) << msg;

  fs::remove(dir / "model.safetensors");
  msg = error_of([&] { find_latest(d.path); });
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  msg = error_of([&] { load_checkpoint(dir, m, opt); });
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  msg = error_of([&] { load_checkpoint(d.path / "step_00000042", m, opt); });
  EXPECT_NE(msg.find("step_00000042"), std::string::npos) << msg;
}

TEST(Trainer, StepExtrasJoinTheProgressLineAndMetrics) {
  TempDir d("trainer_extras");
  ByteLm m(1);
  ByteLoader loader(sample_text(), loader_cfg());
  auto cfg = train_cfg(d.path, 4);
  cfg.log_every = 2;
  Trainer<ByteLm> trainer(cfg, m, loader,
                          [](ByteLm& mm, const ByteBatch& b) { return lm_loss(mm, b, true); });
  trainer.set_step_extras([](ByteLm&, int64_t step) {
    return nlohmann::json{{"bytes_per_s", 1000 * step}, {"mean_patch_len", 0.5 * static_cast<double>(step)}};
  });
  ::testing::internal::CaptureStdout();
  trainer.run();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(step 2/4 \| .* ms \| bytes_per_s 2000 \| mean_patch_len 1\.0000\n)")))
      << out;
  EXPECT_EQ(out.find("step 3/4"), std::string::npos) << "only every log_every steps: " << out;
  std::ifstream in(d.path / "metrics.jsonl");
  int n = 0;
  for (std::string l; std::getline(in, l); ++n) {
    const auto r = nlohmann::json::parse(l);
    EXPECT_EQ(r["bytes_per_s"], 1000 * r["step"].get<int64_t>());  // every step, logged or not
  }
  EXPECT_EQ(n, 4);
}

TEST(Trainer, LogLineFormatMetricsAndEval) {
  TempDir d("trainer_log");
  ByteLm m(1);
  const auto text = sample_text();
  const auto split = split_corpus(text, 0.2);
  ByteLoader loader(split.train, loader_cfg());
  auto cfg = train_cfg(d.path, 6);
  cfg.eval_every = 3;
  Trainer<ByteLm> trainer(cfg, m, loader,
                          [](ByteLm& mm, const ByteBatch& b) { return lm_loss(mm, b, true); });
  trainer.set_eval([&](ByteLm& mm, int64_t) {
    EvalWindows ev(split.heldout, 4, 16);
    ByteBatch b;
    double nll = 0;
    while (ev.next(b)) nll += lm_loss(mm, b, false) * static_cast<double>(b.tokens());
    return nlohmann::json{{"val_bpb", bits_per_byte(nll, ev.num_targets())}};
  });
  ::testing::internal::CaptureStdout();
  const auto res = trainer.run();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(res.steps_done, 6);
  EXPECT_FALSE(res.stopped);
  const std::regex line(
      R"(step 3/6 \| loss \d+\.\d{4} \| lr \d\.\de-0\d \| grad norm \d+\.\d{3} \| \d+ tok/s \| \d+\.\d ms\n)");
  EXPECT_TRUE(std::regex_search(out, line)) << out;
  EXPECT_NE(out.find("lr 3.0e-02"), std::string::npos) << out;  // step 2 (index 1) ends the 2-step warmup
  EXPECT_NE(out.find("eval step 6 | val_bpb "), std::string::npos) << out;

  std::ifstream in(d.path / "metrics.jsonl");
  std::vector<nlohmann::json> recs;
  for (std::string l; std::getline(in, l);) recs.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(recs.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(recs[i]["step"], static_cast<int64_t>(i + 1));
    for (const char* f : {"loss", "lr", "grad_norm", "tokens_per_s", "ms"})
      EXPECT_TRUE(recs[i][f].is_number()) << f;
    EXPECT_EQ(recs[i].contains("eval"), i == 2 || i == 5);
  }
  EXPECT_DOUBLE_EQ(recs[0]["lr"].get<double>(), 1.5e-2);
  EXPECT_LT(recs[5]["loss"].get<double>(), recs[0]["loss"].get<double>());  // it learns
  EXPECT_EQ(res.last_eval["val_bpb"], recs[5]["eval"]["val_bpb"]);
  EXPECT_EQ(*find_latest(d.path), d.path / "step_00000006");

  // Starting a fresh run in a folder that holds checkpoints is refused (it would mix two runs).
  ByteLm m2(1);
  ByteLoader loader2(split.train, loader_cfg());
  Trainer<ByteLm> again(cfg, m2, loader2,
                        [](ByteLm& mm, const ByteBatch& b) { return lm_loss(mm, b, true); });
  EXPECT_NE(error_of([&] { again.run(); }).find("already holds checkpoints"), std::string::npos);
}

TEST(Trainer, NonFiniteLossStopsWithError) {
  TempDir d("trainer_nan");
  ByteLm m(1);
  ByteLoader loader(sample_text(), loader_cfg());
  auto cfg = train_cfg(d.path, 5);
  cfg.log_every = 0;
  int calls = 0;
  Trainer<ByteLm> t(cfg, m, loader, [&](ByteLm& mm, const ByteBatch& b) {
    return ++calls == 3 ? NAN : lm_loss(mm, b, true);
  });
  const auto msg = error_of([&] { t.run(); });
  EXPECT_NE(msg.find("step 3: loss is nan"), std::string::npos) << msg;
}

// The central guarantee: 2N steps straight == N steps, crash, fresh process objects resume, N more steps.
TEST(Trainer, ExactResumeIsBitIdentical) {
  constexpr int64_t N = 6;
  TempDir d("trainer_resume");
  const auto text = sample_text();
  auto step_fn = [](ByteLm& mm, const ByteBatch& b) { return lm_loss(mm, b, true); };

  // Uninterrupted reference run.
  ByteLm ref(1);
  ByteLoader ref_loader(text, loader_cfg());
  auto cfg_a = train_cfg(d.path / "a", 2 * N);
  cfg_a.log_every = 0;
  Trainer<ByteLm> ta(cfg_a, ref, ref_loader, step_fn);
  ta.run();

  // Interrupted run: checkpoints every N steps, "crashes" inside step N+2 (after step N+1 logged its
  // metrics).
  auto cfg_b = train_cfg(d.path / "b", 2 * N);
  cfg_b.log_every = 0;
  cfg_b.ckpt_every = N;
  {
    ByteLm mb(1);
    ByteLoader lb(text, loader_cfg());
    int calls = 0;
    Trainer<ByteLm> tb(cfg_b, mb, lb, [&](ByteLm& mm, const ByteBatch& b) {
      if (++calls == N + 2) throw std::runtime_error("simulated crash");
      return lm_loss(mm, b, true);
    });
    EXPECT_THROW(tb.run(), std::runtime_error);
  }
  ASSERT_EQ(*find_latest(d.path / "b"), d.path / "b" / "step_00000006");

  // "Process restart": new model (other init), optimizer and loader, all restored from the checkpoint.
  ByteLm mc(12345);
  ByteLoader lc(text, loader_cfg());
  cfg_b.resume = true;
  Trainer<ByteLm> tc(cfg_b, mc, lc, step_fn);
  ::testing::internal::CaptureStdout();
  const auto res = tc.run();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  EXPECT_EQ(res.start_step, N);
  EXPECT_EQ(res.steps_done, 2 * N);

  EXPECT_TRUE(same_model(ref, mc)) << "resumed weights differ from the uninterrupted run";
  for (const char* p : {"emb", "out_w", "out_b"}) {
    EXPECT_TRUE(same_bytes(ta.optimizer().m(p), tc.optimizer().m(p))) << p;
    EXPECT_TRUE(same_bytes(ta.optimizer().v(p), tc.optimizer().v(p))) << p;
  }
  EXPECT_EQ(ref_loader.state_json(), lc.state_json());
  // The final checkpoints agree byte for byte too.
  EXPECT_EQ(read_text(d.path / "a" / "step_00000012" / "model.safetensors"),
            read_text(d.path / "b" / "step_00000012" / "model.safetensors"));

  // metrics.jsonl has each step once (the crashed run's step 7 record was dropped on resume) and equal
  // losses.
  std::vector<nlohmann::json> ra, rb;
  for (auto [dir, v] : {std::pair{d.path / "a", &ra}, std::pair{d.path / "b", &rb}}) {
    std::ifstream in(dir / "metrics.jsonl");
    for (std::string l; std::getline(in, l);) v->push_back(nlohmann::json::parse(l));
  }
  ASSERT_EQ(ra.size(), static_cast<size_t>(2 * N));
  ASSERT_EQ(rb.size(), static_cast<size_t>(2 * N));
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(rb[i]["step"], static_cast<int64_t>(i + 1));
    EXPECT_EQ(ra[i]["loss"], rb[i]["loss"]) << i;
    EXPECT_EQ(ra[i]["grad_norm"], rb[i]["grad_norm"]) << i;
  }
  EXPECT_GT(ra[0]["grad_norm"].get<double>(), 0.2);  // clipping was active
}

TEST(Trainer, StopFlagCheckpointsAndResumes) {
  constexpr int64_t N = 4;
  TempDir d("trainer_stop");
  const auto text = sample_text();
  auto step_fn = [](ByteLm& mm, const ByteBatch& b) { return lm_loss(mm, b, true); };
  ByteLm ref(3);
  ByteLoader ref_loader(text, loader_cfg());
  auto cfg_a = train_cfg(d.path / "a", 2 * N);
  cfg_a.log_every = 0;
  Trainer<ByteLm>(cfg_a, ref, ref_loader, step_fn).run();

  auto cfg = train_cfg(d.path / "b", 2 * N);
  cfg.log_every = 0;
  std::atomic<bool> stop{false};
  {
    ByteLm m(3);
    ByteLoader l(text, loader_cfg());
    int calls = 0;
    Trainer<ByteLm> t(cfg, m, l, [&](ByteLm& mm, const ByteBatch& b) {
      if (++calls == N) stop = true;  // as a SIGINT handler would, during step N
      return lm_loss(mm, b, true);
    });
    t.set_stop_flag(&stop);
    ::testing::internal::CaptureStdout();
    const auto r = t.run();
    ::testing::internal::GetCapturedStdout();
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.steps_done, N);
  }
  ASSERT_EQ(*find_latest(d.path / "b"), d.path / "b" / "step_00000004");
  ByteLm m(7);
  ByteLoader l(text, loader_cfg());
  cfg.resume = true;
  Trainer<ByteLm> t(cfg, m, l, step_fn);
  ::testing::internal::CaptureStdout();
  t.run();
  ::testing::internal::GetCapturedStdout();
  EXPECT_TRUE(same_model(ref, m));
}
