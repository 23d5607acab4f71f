// The `blt` app's backend-generic commands (apps/blt/train_impl.hpp, eval_impl.hpp) with B = cuda against
// B = cpu, on a tiny corpus and tiny models, through the same functions `blt --device cpu|cuda` calls (config
// files in, output folders out):
//   - train-entropy and train: the losses of every step and the final weights of a CUDA run equal the CPU
//     run's (same seed: both initialise on the host), and the patching calibration gives the same threshold;
//   - checkpoints move between devices: a CUDA checkpoint resumed on the CPU (and a CPU one on CUDA)
//     continues with the uninterrupted run's losses and ends at its weights; a CUDA-trained model evaluates
//     to the same loss on the CPU as on the device (BLT and entropy model);
//   - greedy generation on CUDA gives the CPU's bytes; bf16 evaluation stays close to fp32, and bf16
//     generation runs the frozen bf16 weights.
// Skips without a device. Under tools/cuda-emu (`tools/cuda-emu/run blt_app`) it runs on the emulator.
//
// Tolerances: fp32 on both sides with different summation orders (cuBLAS vs Eigen GEMMs, flash vs blockwise
// attention): 1e-4 relative for losses and eval results, the bound of the other model tests. Weights after a
// few AdamW steps: 1e-4 for each tensor's relative L2 difference |d| / |ref|, and 1e-3 for its largest
// element (max |d| / max |ref|): AdamW's normalised update m / (sqrt(v) + eps) amplifies the backends'
// rounding differences in the few gradient elements that are near eps (1e-8), so single weights drift more
// than the rest (under tools/cuda-emu: worst element 1.7e-4 of its tensor's largest weight, worst tensor L2
// difference 1.4e-5). Patches compare entropies with the threshold; CUDA runs use the CPU run's calibrated
// threshold so that both devices apply one rule. bf16: 2e-2 relative on the loss (8-bit mantissas of the GEMM
// operands, fp32 accumulation).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <memory>
#include <string>
#include <vector>

// clang-format off (BLT first: it declares the CUDA mask overloads before any layer header, see blt_cuda.hpp)
#include "tessera/models/blt/blt.hpp"
// clang-format on

#include "blt/eval_impl.hpp"
#include "blt/train_impl.hpp"
#include "support/temp_dir.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/io/safetensors.hpp"

using namespace tessera;
namespace fs = std::filesystem;
using bltapp::Device;
using bltapp::Target;

namespace {

constexpr double kTol = 1e-4;
const Target kCpu{Device::cpu, Precision::fp32};
const Target kCuda{Device::cuda, Precision::fp32};

/// A scratch folder with the corpus and configs of the CLI test (tests/apps/test_blt_cli.sh), made smaller
/// for the emulator: 4 steps of 2 x 32 bytes, checkpoints every 2 steps.
class BltAppOnCuda : public ::testing::Test {
 protected:
  std::unique_ptr<tessera::testing::TempDir> tmp;
  fs::path dir;

  void SetUp() override {
    if (cuda_mem::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount reports none";
    tmp = std::make_unique<tessera::testing::TempDir>("cuda-blt-app");
    dir = tmp->path;
    std::ofstream c(dir / "corpus.txt");
    for (int i = 1; i <= 300; ++i)
      c << "Line " << i << ": the quick brown fox jumps over the lazy dog; a dictionary defines words by "
        << "other words.\n";
    write("entropy.json",
          R"({"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
              "data": {"heldout_fraction": 0.1, "batch": 2, "seq_len": 32, "eval_windows": 2},
              "train": {"steps": 4, "warmup": 1, "lr": 3e-3, "min_lr": 3e-4, "eval_every": 2,
                        "ckpt_every": 2, "seed": 7}})");
  }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir / name) << text; }
  /// The BLT config on top of entropy model folder `ent`; patching: a fixed threshold or the calibration.
  void write_blt(const std::string& name, const std::string& ent, const std::string& patching) {
    write(name, R"({"entropy_model": ")" + (dir / ent).string() + R"(",
      "model": {"encoder": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
                "global": {"dim": 64, "n_layers": 1, "n_heads": 2, "ffn_hidden": 128},
                "decoder": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
                "cross_attn_k": 2, "hash_vocab": 257},
      "patching": )" +
                    patching + R"(,
      "data": {"heldout_fraction": 0.1, "batch": 2, "seq_len": 32, "eval_windows": 2},
      "train": {"steps": 4, "warmup": 1, "lr": 3e-3, "min_lr": 3e-4, "eval_every": 2, "ckpt_every": 2,
                "seed": 7}})");
  }
  bltapp::TrainArgs args(const std::string& config, const std::string& out, bool resume = false) const {
    bltapp::TrainArgs a;
    a.config = (dir / config).string();
    a.data = (dir / "corpus.txt").string();
    a.out = (dir / out).string();
    a.resume = resume;
    return a;
  }
  bltapp::EvalArgs eval_args(const std::string& model) const {
    bltapp::EvalArgs a;
    a.model = (dir / model).string();
    a.data = (dir / "corpus.txt").string();
    a.seq_len = 48;
    a.batch = 2;
    a.max_windows = 3;
    return a;
  }
  /// `dst` holding only checkpoint `step` of `src` (and its config.json): what --resume continues from.
  void copy_checkpoint(const std::string& src, int64_t step, const std::string& dst) {
    const std::string name = train::step_dir_name(step);
    fs::create_directories(dir / dst);
    fs::copy(dir / src / name, dir / dst / name, fs::copy_options::recursive);
    fs::copy_file(dir / src / "config.json", dir / dst / "config.json");
    std::ofstream(dir / dst / "latest") << name << "\n";
  }

  /// step -> loss of a run's metrics.jsonl.
  std::map<int64_t, double> losses(const std::string& run) const {
    std::map<int64_t, double> out;
    std::ifstream in(dir / run / "metrics.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) {
        const auto j = nlohmann::json::parse(line);
        out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
      }
    return out;
  }
  /// The losses of steps first..last of two runs agree within kTol relative.
  void expect_losses_close(const std::string& ref, const std::string& run, int64_t first, int64_t last) {
    const auto a = losses(ref), b = losses(run);
    for (int64_t s = first; s <= last; ++s) {
      ASSERT_TRUE(a.count(s) && b.count(s)) << "step " << s << " missing in " << ref << " or " << run;
      EXPECT_NEAR(b.at(s), a.at(s), kTol * std::abs(a.at(s))) << run << " vs " << ref << ", step " << s;
    }
  }
  /// Every tensor of two model files agrees: |d| / |ref| <= kTol (L2) and max |d| / max |ref| <= 10 kTol (see
  /// the file comment); returns the worst L2 error.
  double expect_weights_close(const std::string& ref, const std::string& run) {
    const io::SafeTensorsFile a((dir / ref).string()), b((dir / run).string());
    EXPECT_EQ(a.tensors().size(), b.tensors().size());
    double worst = 0;
    for (const auto& t : a.tensors()) {
      if (!b.contains(t.name)) {
        ADD_FAILURE() << run << " lacks " << t.name;
        continue;
      }
      const Tensor<float> x = a.read<float>(t.name), y = b.read<float>(t.name);
      EXPECT_EQ(x.shape(), y.shape()) << t.name;
      if (x.shape() != y.shape()) continue;
      double num = 0, den = 0, dmax = 0, xmax = 0;
      for (int64_t i = 0; i < x.numel(); ++i) {
        const double d = double(x[i]) - double(y[i]);
        num += d * d;
        den += double(x[i]) * double(x[i]);
        dmax = std::max(dmax, std::abs(d));
        xmax = std::max(xmax, std::abs(double(x[i])));
      }
      const double e = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
      worst = std::max(worst, e);
      EXPECT_LE(e, kTol) << run << " vs " << ref << ": " << t.name << " (L2)";
      EXPECT_LE(xmax > 0 ? dmax / xmax : dmax, 10 * kTol)
          << run << " vs " << ref << ": " << t.name << " (max)";
    }
    return worst;
  }
  double threshold_of(const std::string& run) const {
    return io::read_json_file((dir / run / "config.json").string()).at("patching_threshold").get<double>();
  }
};

}  // namespace

TEST_F(BltAppOnCuda, TrainEvalResumeAndGenerateMatchTheCpu) {
  // The entropy model on both devices: same losses, same weights.
  ASSERT_EQ(bltapp::train_entropy<cpu>(args("entropy.json", "ent_cpu"), kCpu), 0);
  ASSERT_EQ(bltapp::train_entropy<cuda>(args("entropy.json", "ent_cuda"), kCuda), 0);
  expect_losses_close("ent_cpu", "ent_cuda", 1, 4);
  std::cout << "[blt-app] entropy model weights, worst L2 rel err "
            << expect_weights_close("ent_cpu/model.safetensors", "ent_cuda/model.safetensors") << "\n";

  // The BLT on the CPU with a calibrated threshold (run A), then on CUDA with A's threshold (run G).
  write_blt("calibrated.json", "ent_cpu", R"({"target_patch_length": 4.0, "calibration_windows": 8})");
  ASSERT_EQ(bltapp::train_blt<cpu>(args("calibrated.json", "a"), kCpu), 0);
  const double theta = threshold_of("a");
  write_blt("fixed.json", "ent_cpu", str(R"({"threshold": )", nlohmann::json(theta).dump(), "}"));
  ASSERT_EQ(bltapp::train_blt<cuda>(args("fixed.json", "g"), kCuda), 0);
  EXPECT_EQ(threshold_of("g"), theta);
  expect_losses_close("a", "g", 1, 4);
  std::cout << "[blt-app] BLT weights after 4 steps, worst L2 rel err "
            << expect_weights_close("a/model.safetensors", "g/model.safetensors") << "\n";
  // The frozen entropy model stays the entropy model's checkpoint on the device too.
  {
    const io::SafeTensorsFile g((dir / "g/model.safetensors").string()),
        e((dir / "ent_cpu/model.safetensors").string());
    const Tensor<float> x = g.read<float>("model.patcher.lm_head.weight"),
                        y = e.read<float>("lm_head.weight");
    ASSERT_EQ(x.numel(), y.numel());
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x[i], y[i]) << "entropy model changed by CUDA training";
  }

  // The calibration on the device finds the CPU's threshold (the same ranked entropy, computed in fp32).
  {
    auto h = bltapp::load_blt<cpu>((dir / "a").string());
    auto d = bltapp::load_blt<cuda>((dir / "a").string());
    const auto bytes = bltapp::load_bytes({(dir / "corpus.txt").string()});
    const double th = bltapp::calibrate_threshold(*h, bytes, 32, 8, 4.0);
    const double td = bltapp::calibrate_threshold(*d, bytes, 32, 8, 4.0);
    EXPECT_NEAR(td, th, kTol * std::abs(th)) << "calibrated threshold";
  }

  // Checkpoints across devices: G's step 2 resumed on the CPU, A's step 2 resumed on CUDA.
  copy_checkpoint("g", 2, "g_on_cpu");
  ASSERT_EQ(bltapp::train_blt<cpu>(args("fixed.json", "g_on_cpu", true), kCpu), 0);
  expect_losses_close("g", "g_on_cpu", 3, 4);
  expect_weights_close("g/model.safetensors", "g_on_cpu/model.safetensors");
  copy_checkpoint("a", 2, "a_on_cuda");
  ASSERT_EQ(bltapp::train_blt<cuda>(args("calibrated.json", "a_on_cuda", true), kCuda), 0);
  EXPECT_EQ(threshold_of("a_on_cuda"), theta) << "a resumed run keeps its threshold";
  expect_losses_close("a", "a_on_cuda", 3, 4);
  expect_weights_close("a/model.safetensors", "a_on_cuda/model.safetensors");

  // A CUDA-trained checkpoint evaluates to the same loss on both devices (BLT and entropy model).
  for (const char* m : {"g", "ent_cuda"}) {
    const bltapp::EvalResult h = bltapp::evaluate<cpu>(eval_args(m), kCpu);
    const bltapp::EvalResult d = bltapp::evaluate<cuda>(eval_args(m), kCuda);
    EXPECT_EQ(d.windows, 3);
    EXPECT_EQ(d.windows, h.windows) << m;
    EXPECT_EQ(d.patches, h.patches) << m;
    EXPECT_GT(h.bpb, 0.5) << m;
    EXPECT_NEAR(d.bpb, h.bpb, kTol * h.bpb) << m << ": eval cpu vs cuda";
    std::cout << std::setprecision(9) << "[blt-app] eval " << m << ": bpb " << h.bpb << " (cpu) vs " << d.bpb
              << " (cuda)\n";
  }

  // bf16 mixed precision on the device: close to fp32.
  {
    Target bf16 = kCuda;
    bf16.precision = Precision::bf16;
    const double f32 = bltapp::evaluate<cuda>(eval_args("g"), kCuda).bpb;
    const double b16 = bltapp::evaluate<cuda>(eval_args("g"), bf16).bpb;
    EXPECT_NEAR(b16, f32, 2e-2 * f32) << "eval bf16 vs fp32";
    EXPECT_NE(b16, f32) << "--precision bf16 changed nothing: is the precision set on the model?";
    std::cout << "[blt-app] eval g on cuda: bpb " << f32 << " (fp32) vs " << b16 << " (bf16)\n";
  }

  // Greedy generation on the device: the CPU's bytes, cached and uncached.
  bltapp::GenerateArgs ga;
  ga.model = (dir / "g").string();
  ga.n = 10;
  ga.temp = 0;
  ga.ignore_eos = true;
  const std::vector<int64_t> prompt = blt::encode("Line 1");
  const auto want = bltapp::generate<cpu>(ga, prompt).tokens.at(0);
  EXPECT_EQ(static_cast<int64_t>(want.size()), ga.n);
  EXPECT_EQ(bltapp::generate<cuda>(ga, prompt).tokens.at(0), want) << "cached greedy bytes";
  ga.no_cache = true;
  EXPECT_EQ(bltapp::generate<cuda>(ga, prompt).tokens.at(0), want) << "uncached greedy bytes";

  // --precision bf16: every Linear (the entropy model's too) holds its bf16 weights once, and generation
  // takes the frozen-weight decoding route: the bytes of that route run by the library itself.
  ga.no_cache = false;
  ga.precision = "bf16";
  auto lm = bltapp::load_blt_for_inference<cuda>(ga.model, Precision::bf16);
  EXPECT_NE(lm->lm_head.frozen_weight_bf16(), nullptr) << "lm_head not frozen in bf16";
  EXPECT_NE(lm->model.patcher.lm_head.frozen_weight_bf16(), nullptr) << "entropy model not frozen in bf16";
  EXPECT_EQ(bltapp::load_blt_for_inference<cuda>(ga.model, Precision::fp32)->lm_head.frozen_weight_bf16(),
            nullptr);
  const auto bf16_want = blt::generate_cached(*lm, {prompt}, bltapp::generate_options(ga)).tokens.at(0);
  EXPECT_EQ(static_cast<int64_t>(bf16_want.size()), ga.n);
  EXPECT_EQ(bltapp::generate<cuda>(ga, prompt).tokens.at(0), bf16_want) << "bf16 cached greedy bytes";
}

TEST(BltAppDevice, RefusesWhatTheBuildOrMachineCannotRun) {
  // select_target: the CPU always; bf16 only with cuda; unknown names are errors.
  EXPECT_EQ(bltapp::select_target("cpu").device, Device::cpu);
  EXPECT_THROW(bltapp::select_target("cpu", "bf16"), Error);
  EXPECT_THROW(bltapp::select_target("cpu", "fp8"), Error);
  EXPECT_THROW(bltapp::select_target("tpu"), Error);
  // This program links blt_commands as the blt tool does (TESSERA_BLT_CUDA=1): cuda is taken where a device
  // is visible and refused, naming the reason, where none is (tests/apps/test_blt_cli.sh checks the refusal
  // of a build without the CUDA backend).
  static_assert(TESSERA_BLT_CUDA == 1);
  if (cuda_mem::device_count() > 0) {
    EXPECT_EQ(bltapp::select_target("cuda", "bf16").device, Device::cuda);
    EXPECT_EQ(bltapp::select_target("cuda", "bf16").precision, Precision::bf16);
  } else {
    try {
      bltapp::select_target("cuda");
      ADD_FAILURE() << "--device cuda accepted without a CUDA device";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
  }
}
