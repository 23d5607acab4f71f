// cuDNN's fused-attention engines take tessera's SDPA graphs (cuda/cudnn_attention.cpp) for an H200, checked
// WITHOUT a GPU: cuDNN (9.8 and later) builds graphs, runs its heuristics and compiles the chosen engine's
// kernels for the GPU a device-properties descriptor describes. Each graph is built for the H200 of
// tests/fixtures/cudnn/h200_deviceprop.json; the check passes when cuDNN's heuristics return an engine for it
// and the engine's kernel compiles, i.e. when the plan fails at nothing but loading that kernel into a
// driver.
//
// On a machine without an NVIDIA driver cuDNN refuses to compile at all (it needs libcuda's symbols), so the
// test first loads the CUDA toolkit's stub libcuda (the link-time stand-in every toolkit ships): its
// functions exist and fail, so cuDNN compiles the kernel and then fails to load it (cuLibraryLoadData: error
// 34, CUDA_ERROR_STUB_LIBRARY) — the state this test accepts. Where a real driver is present the plan must
// finalize outright (or fail at that load when the GPU is not an sm_90 part). A graph cuDNN's engines do not
// recognise fails earlier, in the heuristics ("engine(s) announced, none returned") or the engine's own
// support check. Its own executable: the stub must be loaded before anything else asks for libcuda.
//
// The device description is written from the H200's properties (132 SMs, 1980 MHz SM and 3201 MHz memory
// clocks as the GPU runs print them, 227 KB of shared memory per block and 32 blocks per SM for Hopper); its
// keys are those cuDNN 9.19 requires. The GPU test (test_cuda_attention_bf16) prints cuDNN's own description
// of the card it runs on.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "../../cuda/cudnn_attention.hpp"

using namespace tessera;
using cuda_detail::AttnArgs;
using cuda_detail::AttnMask;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// A real driver, else the toolkit's stub; "" when either is loaded, else why not.
std::string load_libcuda() {
  if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) return "";
  const std::string stub = TESSERA_CUDA_STUB_LIBCUDA;
  if (dlopen(stub.c_str(), RTLD_NOW | RTLD_GLOBAL)) return "";
  const char* e = dlerror();
  return "no libcuda.so.1 and no stub at " + stub + " (" + (e ? e : "?") + ")";
}

AttnArgs llama_1b() {
  AttnArgs a;
  a.B = 4, a.Tq = a.Tk = 4096, a.Hq = a.Hkv = 16, a.Dh = a.Dv = 128;
  a.q_stride = a.k_stride = a.v_stride = 3 * 16 * 128, a.o_stride = 16 * 128, a.scale = 0.0884;
  return a;
}

/// The plan check's verdict: "" (ran, or compiled and failed only at loading the kernel) or the failure.
std::string engines_take(const AttnArgs& a, bool backward, const std::string& device) {
  int64_t ws = -1;
  const std::string r = cuda_detail::cudnn_attention_plan_check(a, backward, device, &ws);
  if (r.empty()) {
    std::printf("  plan finalized, workspace %lld bytes\n", static_cast<long long>(ws));
    return "";
  }
  if (r.find("cuLibraryLoadData") != std::string::npos) return "";  // compiled; the stub cannot load it
  return r;
}

class CudnnPlans : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = load_libcuda(); !why.empty()) GTEST_SKIP() << why;
    if (cuda_detail::cudnn_loaded_version() < 90800)
      GTEST_SKIP() << "cuDNN 9.8 or later is needed to build plans without a GPU (loaded: "
                   << cuda_detail::cudnn_loaded_version() << ")";
    device_ = read_file(std::string(TESSERA_TEST_FIXTURES) + "/cudnn/h200_deviceprop.json");
    ASSERT_FALSE(device_.empty()) << "tests/fixtures/cudnn/h200_deviceprop.json";
  }
  std::string device_;
};

}  // namespace

TEST_F(CudnnPlans, LlamaAttentionForwardAndBackward) {
  const AttnArgs a = llama_1b();
  EXPECT_EQ(engines_take(a, false, device_), "") << "forward";
  EXPECT_EQ(engines_take(a, true, device_), "") << "backward (deterministic)";
  cuda_detail::set_cudnn_attention_deterministic(0);
  EXPECT_EQ(engines_take(a, true, device_), "") << "backward (fp32 dq accumulator)";
  cuda_detail::set_cudnn_attention_deterministic(-1);
}

TEST_F(CudnnPlans, BltLocalWindowAndGqa) {
  AttnArgs w;  // BLT's local layers: a 512-byte window over 4096 bytes
  w.B = 1, w.Tq = w.Tk = 4096, w.Hq = w.Hkv = 16, w.Dh = w.Dv = 64;
  w.q_stride = w.k_stride = w.v_stride = 3 * 16 * 64, w.o_stride = 16 * 64, w.scale = 0.125;
  w.mask = AttnMask::SlidingWindow, w.mask_param = 512;
  EXPECT_EQ(engines_take(w, false, device_), "") << "forward, window 512";
  EXPECT_EQ(engines_take(w, true, device_), "") << "backward, window 512";
  AttnArgs g;  // GQA 4/2, padded rows, a length off cuDNN's tiles
  g.B = 2, g.Tq = g.Tk = 80, g.Hq = 4, g.Hkv = 2, g.Dh = g.Dv = 64;
  g.q_stride = 4 * 64 + 8, g.k_stride = g.v_stride = 2 * 64 + 8, g.o_stride = 4 * 64, g.scale = 0.125;
  EXPECT_EQ(engines_take(g, false, device_), "") << "forward, GQA";
  EXPECT_EQ(engines_take(g, true, device_), "") << "backward, GQA (dK, dV summed over each group)";
  AttnArgs l = llama_1b();  // a Llama-3-style GQA: 16 query heads, 4 key/value heads
  l.Hkv = 4, l.k_stride = l.v_stride = l.q_stride = (16 + 2 * 4) * 128;
  EXPECT_EQ(engines_take(l, true, device_), "") << "backward, GQA 16/4";
}

TEST_F(CudnnPlans, AGpuWithoutTheEnginesIsRefused) {
  // The device-less check must be able to fail: a device that is not a GPU cuDNN knows is refused (so a
  // passing check above is not an artefact of a check that accepts anything).
  std::string bad = device_;
  const std::string key = "\"deviceVer\": 900";
  const size_t at = bad.find(key);
  ASSERT_NE(at, std::string::npos) << "the fixture names deviceVer";
  bad.replace(at, key.size(), "\"deviceVer\": 500");
  const std::string why = engines_take(llama_1b(), false, bad);
  EXPECT_NE(why, "");
  std::printf("  refused: %s\n", why.substr(0, 300).c_str());
}
