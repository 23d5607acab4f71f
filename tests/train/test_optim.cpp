// AdamW (against torch.optim.AdamW values and a hand-written double reference), lr schedules, clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "support/gradcheck.hpp"
#include "support/temp_dir.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"
#include "tessera/train/schedule.hpp"

using namespace tessera;
using namespace tessera::train;

namespace {

template <class T>
struct Tiny {
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T>, weight), (Param<T>, bias));
  };
  Params params;
  Tiny() {
    params.weight.value = make_tensor<T>({2, 3}, {0.5, -1.0, 2.0, 0.1, 0.2, -0.3});
    params.bias.value = make_tensor<T>({2}, {0.3, -0.7});
    allocate_grads(*this);
  }
};

// Gradients and learning rates of three steps (the same in tools: see the torch script in the comment below).
const double kGradW[3][6] = {
    {0.1, -0.2, 0.3, -0.4, 0.5, -0.6}, {-0.3, 0.1, 0.0, 0.2, 0.2, 0.9}, {0.05, 0.05, -0.5, 1.5, -0.1, 0.0}};
const double kGradB[3][2] = {{1.0, -2.0}, {0.5, 0.25}, {-1.0, 3.0}};
const double kLr[3] = {0.1, 0.05, 0.02};

template <class T>
void set_grads(Tiny<T>& m, int step) {
  for (int i = 0; i < 6; ++i) m.params.weight.grad[i] = static_cast<T>(kGradW[step][i]);
  for (int i = 0; i < 2; ++i) m.params.bias.grad[i] = static_cast<T>(kGradB[step][i]);
}

template <class T>
void run3(Tiny<T>& m, AdamW<T>& opt) {
  for (int s = 0; s < 3; ++s) {
    set_grads(m, s);
    opt.step(m, kLr[s]);
  }
}

// Literal transcription of torch's _single_tensor_adamw, in double, for one tensor over the three steps.
std::vector<double> reference(std::vector<double> p, const double (*g)[6], double wd) {
  std::vector<double> m(p.size(), 0.0), v(p.size(), 0.0);
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8;
  for (int t = 1; t <= 3; ++t) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double gi = g[t - 1][i];
      p[i] *= 1 - kLr[t - 1] * wd;
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= kLr[t - 1] * mhat / (std::sqrt(vhat) + eps);
    }
  }
  return p;
}

}  // namespace

/* Reference values: PyTorch 1.13, float32:
   w = Parameter([[0.5,-1,2],[0.1,0.2,-0.3]]); b = Parameter([0.3,-0.7])
   opt = AdamW([{'params':[w],'weight_decay':0.1},{'params':[b],'weight_decay':0.0 (or 0.1)}],
               lr=0.1, betas=(0.9,0.95), eps=1e-8, foreach=False)
   three steps with the grads above and lr 0.1, 0.05, 0.02 set on the param groups before each step. */
TEST(AdamW, MatchesTorchDefaultNoDecayForVectors) {
  Tiny<float> m;
  AdamW<float> opt({.lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1});
  run3(m, opt);
  const double w_ref[6] = {0.422217011, -0.86913693, 1.83856034, 0.200163484, 0.0405053161, -0.211784393};
  const double b_ref[2] = {0.150820017, -0.576638222};
  const double m_ref[6] = {-0.0139000015, -0.00220000022, -0.025700001,
                           0.135600001,   0.048499994,    0.0323999971};
  const double v_ref[6] = {0.00485124998, 0.00240500015, 0.0165612511,
                           0.121620007,   0.0136812497,  0.0547199994};
  // Tolerance: torch rounds to fp32 after each sub-operation, we once per stored value (~1 ulp per op).
  EXPECT_LT(tessera::testing::max_rel_err(m.params.weight.value.data(), w_ref, 6), 2e-6);
  EXPECT_LT(tessera::testing::max_rel_err(m.params.bias.value.data(), b_ref, 2), 2e-6);
  ASSERT_NE(opt.m("weight"), nullptr);
  ASSERT_NE(opt.v("weight"), nullptr);
  EXPECT_LT(tessera::testing::max_rel_err(opt.m("weight")->data(), m_ref, 6), 2e-6);
  EXPECT_LT(tessera::testing::max_rel_err(opt.v("weight")->data(), v_ref, 6), 2e-6);
  EXPECT_EQ(opt.steps(), 3);
}

TEST(AdamW, CustomDecayFilterDecaysVectorsToo) {
  Tiny<float> m;
  AdamW<float> opt({.lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1},
                   [](const std::string&, const Shape&) { return true; });
  run3(m, opt);
  const double w_ref[6] = {0.422217011, -0.86913693, 1.83856034, 0.200163484, 0.0405053161, -0.211784393};
  const double b_ref[2] = {0.146536931, -0.565551162};
  EXPECT_LT(tessera::testing::max_rel_err(m.params.weight.value.data(), w_ref, 6), 2e-6);
  EXPECT_LT(tessera::testing::max_rel_err(m.params.bias.value.data(), b_ref, 2), 2e-6);
}

TEST(AdamW, DoubleMatchesHandReferenceWithAndWithoutDecay) {
  for (double wd : {0.0, 0.3}) {
    Tiny<double> m;
    // Decay only parameters named "bias" (the opposite of the default), to see the filter is honoured.
    AdamW<double> opt({.lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = wd},
                      [](const std::string& name, const Shape&) { return name == "bias"; });
    run3(m, opt);
    const auto w = reference({0.5, -1.0, 2.0, 0.1, 0.2, -0.3}, kGradW, 0.0);
    double gbp[3][6] = {};
    for (int s = 0; s < 3; ++s)
      for (int i = 0; i < 2; ++i) gbp[s][i] = kGradB[s][i];
    auto b = reference({0.3, -0.7}, gbp, wd);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(m.params.weight.value[i], w[static_cast<size_t>(i)], 1e-14) << i;
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(m.params.bias.value[i], b[static_cast<size_t>(i)], 1e-14) << i;
    if (wd > 0) {  // the decay really changed the bias relative to no decay
      const auto b0 = reference({0.3, -0.7}, gbp, 0.0);
      EXPECT_GT(std::abs(b[0] - b0[0]), 1e-4);
    }
  }
}

TEST(AdamW, DecayFilterHelpers) {
  EXPECT_TRUE(decay_rank_ge2("layers.0.attn.wq", Shape{4, 4}));
  EXPECT_FALSE(decay_rank_ge2("layers.0.attn_norm.weight", Shape{4}));
  const auto f = decay_rank_ge2_except({"norm.weight", "tok_emb"});
  EXPECT_TRUE(f("layers.0.ffn.w1", Shape{4, 8}));
  EXPECT_FALSE(f("layers.0.ffn.bias", Shape{8}));
  EXPECT_FALSE(f("group_norm.weight", Shape{4, 8}));
  EXPECT_FALSE(f("tok_emb", Shape{256, 8}));
  // In use: with every rank-2 parameter excluded, the weight is not decayed (matches the wd = 0 reference).
  Tiny<double> m;
  AdamW<double> opt({.lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.5},
                    decay_rank_ge2_except({"weight"}));
  run3(m, opt);
  const auto w = reference({0.5, -1.0, 2.0, 0.1, 0.2, -0.3}, kGradW, 0.0);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(m.params.weight.value[i], w[static_cast<size_t>(i)], 1e-14) << i;
}

TEST(AdamW, FirstStepIsSignTimesLr) {
  // With bias correction, step 1 moves every element by lr * g/|g| (up to eps) when wd = 0.
  Tiny<double> m;
  AdamW<double> opt({.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-12, .weight_decay = 0.0});
  set_grads(m, 0);
  opt.step(m, 0.01);
  const double w0[6] = {0.5, -1.0, 2.0, 0.1, 0.2, -0.3};
  for (int i = 0; i < 6; ++i)
    EXPECT_NEAR(m.params.weight.value[i], w0[i] - 0.01 * (kGradW[0][i] > 0 ? 1 : -1), 1e-10);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  const tessera::testing::TempDir tmp("adamw");
  const auto path = tmp.path / "state.safetensors";
  Tiny<float> a, b;
  AdamW<float> opt_a({.lr = 0.1, .weight_decay = 0.1});
  set_grads(a, 0);
  opt_a.step(a, 0.1);
  {
    io::SafeTensorsWriter w;
    opt_a.save_state(w);
    w.write(path.string());
  }
  // b: same weights as a after one step, fresh optimizer loaded from the file.
  for (int i = 0; i < 6; ++i) b.params.weight.value[i] = a.params.weight.value[i];
  for (int i = 0; i < 2; ++i) b.params.bias.value[i] = a.params.bias.value[i];
  AdamW<float> opt_b({.lr = 0.1, .weight_decay = 0.1});
  {
    io::SafeTensorsFile f(path.string());
    EXPECT_TRUE(f.contains("m.weight") && f.contains("v.bias"));
    EXPECT_EQ(f.metadata().at("step"), "1");
    opt_b.load_state(f, b);
  }
  EXPECT_EQ(opt_b.steps(), 1);
  for (int s = 1; s < 3; ++s) {
    set_grads(a, s);
    set_grads(b, s);
    opt_a.step(a, kLr[s]);
    opt_b.step(b, kLr[s]);
  }
  EXPECT_EQ(0, std::memcmp(a.params.weight.value.data(), b.params.weight.value.data(), 6 * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.params.bias.value.data(), b.params.bias.value.data(), 2 * sizeof(float)));

  // A state whose shapes do not match the model is an error naming the key.
  {
    io::SafeTensorsWriter w;
    w.add("m.weight", Tensor<float>({3, 2}));
    w.add("v.weight", Tensor<float>({3, 2}));
    w.set_metadata("step", "1");
    w.write(path.string());
    io::SafeTensorsFile f(path.string());
    try {
      opt_b.load_state(f, b);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("m.weight"), std::string::npos) << e.what();
    }
  }
}

TEST(AdamW, RejectsBadConfig) {
  EXPECT_THROW(AdamW<float>({.lr = 0.1, .beta1 = 1.0}), Error);
  EXPECT_THROW(AdamW<float>({.lr = 0.1, .eps = 0.0}), Error);
  EXPECT_THROW(AdamW<float>({.lr = 0.1, .weight_decay = -1}), Error);
}

TEST(Schedule, WarmupCosineValues) {
  const auto s = Schedule::cosine(1e-3, 1e-4, 10, 110);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1e-4);       // 1e-3 * 1/10
  EXPECT_DOUBLE_EQ(s.lr_at(4), 5e-4);       // 1e-3 * 5/10
  EXPECT_DOUBLE_EQ(s.lr_at(9), 1e-3);       // last warmup step reaches lr
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1e-3);      // decay ratio 0
  EXPECT_NEAR(s.lr_at(60), 5.5e-4, 1e-15);  // ratio 1/2: min + (max-min)/2
  EXPECT_NEAR(s.lr_at(35), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-15);
  EXPECT_GT(s.lr_at(109), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(110), 1e-4);  // end: min_lr, and it stays there
  EXPECT_DOUBLE_EQ(s.lr_at(1000), 1e-4);
  for (int64_t i = 10; i < 110; ++i) EXPECT_LE(s.lr_at(i + 1), s.lr_at(i));
}

TEST(Schedule, ConstantAndErrors) {
  const auto c = Schedule::constant(2e-4, 4);
  EXPECT_DOUBLE_EQ(c.lr_at(0), 5e-5);
  EXPECT_DOUBLE_EQ(c.lr_at(3), 2e-4);
  EXPECT_DOUBLE_EQ(c.lr_at(1000000), 2e-4);
  EXPECT_DOUBLE_EQ(Schedule::constant(1e-3).lr_at(0), 1e-3);
  EXPECT_THROW(Schedule::cosine(1e-3, 1e-4, 10, 10), Error);
  EXPECT_THROW(Schedule::cosine(1e-3, 2e-3, 0, 10), Error);
  EXPECT_THROW(Schedule::parse_kind("linear"), Error);
}

// Clipping folded into the step (what the Trainer runs): AdamW::step(m, lr, clip_coefficient(grad_norm(m),
// max)) must give exactly the weights and moments of clip_grad_norm(m, max) then step(m, lr), and leave the
// gradients unscaled. Three steps, clipping active in each (norms ~2.4 > 1) and inactive (max 10).
TEST(Clip, CoefficientFoldedIntoTheStepMatchesClipThenStep) {
  EXPECT_EQ(clip_coefficient(5.0, 10.0), 1.0f);  // below the threshold
  EXPECT_EQ(clip_coefficient(5.0, 0.0), 1.0f);   // clipping off
  EXPECT_EQ(clip_coefficient(std::nan(""), 1.0), 1.0f);
  EXPECT_FLOAT_EQ(clip_coefficient(3.0, 1.0), static_cast<float>(1.0 / (3.0 + 1e-6)));
  for (const double max_norm : {1.0, 10.0}) {
    Tiny<float> a, b;
    AdamW<float> oa, ob;
    for (int s = 0; s < 3; ++s) {
      set_grads(a, s);
      set_grads(b, s);
      clip_grad_norm(a, max_norm);
      oa.step(a, kLr[s]);
      const float coef = clip_coefficient(grad_norm(b), max_norm);
      if (max_norm == 1.0) {
        EXPECT_LT(coef, 1.0f);
      }
      ob.step(b, kLr[s], coef);
      EXPECT_FLOAT_EQ(b.params.bias.grad[1], static_cast<float>(kGradB[s][1]))
          << "gradients must stay unscaled";
    }
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(a.params.weight.value[i], b.params.weight.value[i]) << "weight " << i << " max " << max_norm;
      EXPECT_EQ((*oa.m("weight"))[i], (*ob.m("weight"))[i]) << "m " << i;
      EXPECT_EQ((*oa.v("weight"))[i], (*ob.v("weight"))[i]) << "v " << i;
    }
    for (int i = 0; i < 2; ++i) EXPECT_EQ(a.params.bias.value[i], b.params.bias.value[i]) << "bias " << i;
  }
}

TEST(Clip, GlobalNormAndScaling) {
  Tiny<float> m;
  set_grads(m, 0);  // sum of squares: 0.91 + 5 = 5.91
  const double norm = std::sqrt(0.01 + 0.04 + 0.09 + 0.16 + 0.25 + 0.36 + 1.0 + 4.0);
  EXPECT_NEAR(grad_norm(m), norm, 1e-7);
  // Below the threshold: unchanged, pre-clip norm returned.
  EXPECT_NEAR(clip_grad_norm(m, 10.0), norm, 1e-7);
  EXPECT_FLOAT_EQ(m.params.bias.grad[1], -2.0f);
  // Above: scaled by max/(norm+1e-6), so the new norm is max_norm (to 1e-6 relative).
  EXPECT_NEAR(clip_grad_norm(m, 1.0), norm, 1e-7);
  const double c = 1.0 / (norm + 1e-6);
  EXPECT_NEAR(m.params.weight.grad[2], 0.3 * c, 1e-7);
  EXPECT_NEAR(m.params.bias.grad[1], -2.0 * c, 1e-7);
  EXPECT_NEAR(grad_norm(m), 1.0, 2e-6);
  // max_norm <= 0: no clipping.
  set_grads(m, 0);
  EXPECT_NEAR(clip_grad_norm(m, 0.0), norm, 1e-7);
  EXPECT_FLOAT_EQ(m.params.bias.grad[1], -2.0f);
}
