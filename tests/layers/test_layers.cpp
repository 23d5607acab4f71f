// Every layer and composite: finite-difference gradient checks in double (input and every parameter),
// reflected names, and reference values for the simplest cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/layers/kv_cache.hpp"
#include "tessera/layers/layers.hpp"

using namespace tessera;
using tessera::testing::expect_grad_close;
using tessera::testing::fill_normal;

namespace {

LayerConfig small_config() {
  LayerConfig c;
  c.dim = 8;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_hidden = 12;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

/// Checks d(sum(y ∘ R))/dx and d/dθ for every parameter of `layer` against central differences.
template <class L>
void check_layer_grads(L& layer, const SeqContext& ctx, int64_t in_dim, uint64_t seed = 1) {
  Rng rng(seed);
  init_normal(layer, rng, 0.3);
  for_each_param(layer, [&](const std::string&, auto& p) {  // perturb norm gains away from 1
    if (p.value.rank() == 1) fill_normal(p.value, rng, 0.5);
  });
  allocate_grads(layer);
  Tensor<double> x({ctx.rows(), in_dim});
  fill_normal(x, rng);
  typename L::Saved s;
  Tensor<double> y, dx;
  layer.forward(ctx, x, y, s);
  Tensor<double> r(y.shape());
  fill_normal(r, rng);
  auto loss = [&] {
    typename L::Saved s2;
    Tensor<double> y2;
    layer.forward(ctx, x, y2, s2);
    double l = 0;
    for (int64_t i = 0; i < y2.numel(); ++i) l += y2[i] * r[i];
    return l;
  };
  layer.forward(ctx, x, y, s);
  layer.backward(ctx, r, dx, s);
  Tensor<double> dx_copy = dx.clone();
  expect_grad_close("dx", x.data(), dx_copy.data(), x.numel(), loss);
  for_each_param(layer, [&](const std::string& name, auto& p) {
    Tensor<double> g = p.grad.clone();
    expect_grad_close(name, p.value.data(), g.data(), p.value.numel(), loss);
  });
}

SeqContext ctx_for(int64_t b, int64_t t) {
  SeqContext c;
  c.batch = b;
  c.seq = t;
  return c;
}

}  // namespace

TEST(Layers, LinearGradAndValues) {
  Linear<double> lin;
  lin.setup(3, 2, /*bias=*/true);
  check_layer_grads(lin, ctx_for(1, 4), 3);
  // y = x Wᵀ + b by hand.
  Linear<double> l2;
  l2.setup(2, 1, true);
  l2.params.weight.value[0] = 2;
  l2.params.weight.value[1] = -1;
  l2.params.bias.value[0] = 0.5;
  auto x = make_tensor<double>({1, 2}, {3, 4});
  Tensor<double> y;
  Linear<double>::Saved s;
  l2.forward(ctx_for(1, 1), x, y, s);
  EXPECT_DOUBLE_EQ(y[0], 2 * 3 - 4 + 0.5);
}

// bf16 on the CPU (layers/precision.hpp): a float Linear multiplies with bf16-rounded weights — the fp32
// layer given those rounded weights, up to the order of the sums — frozen or cast per forward alike; the
// residual is added; there is no backward; double models refuse bf16.
TEST(Layers, LinearBf16WeightsOnTheCpu) {
  Rng rng(3);
  for (const int64_t rows : {int64_t{1}, int64_t{5}, int64_t{40}}) {  // decoding-size and panel routes
    Linear<float> lin, rounded;
    lin.setup(70, 33, /*bias=*/true);
    rounded.setup(70, 33, true);
    fill_normal(lin.params.weight.value, rng, 0.5);
    fill_normal(lin.params.bias.value, rng, 0.5);
    for (int64_t i = 0; i < lin.params.weight.value.numel(); ++i)
      rounded.params.weight.value[i] = static_cast<float>(bf16(lin.params.weight.value[i]));
    rounded.params.bias.value = lin.params.bias.value.clone();
    Tensor<float> x({rows, 70}), res({rows, 33});
    fill_normal(x, rng, 1.0);
    fill_normal(res, rng, 1.0);
    Tensor<float> want, want_res, y, y_frozen, y_fp32;
    Linear<float>::Saved s;
    rounded.forward(ctx_for(1, rows), x, want, s);
    rounded.forward(ctx_for(1, rows), x, want_res, s, nullptr, res.data());
    lin.forward(ctx_for(1, rows), x, y_fp32, s);
    set_compute_precision(lin, Precision::bf16);
    lin.forward(ctx_for(1, rows), x, y, s);  // cast at this forward
    freeze_bf16_weights(lin);
    lin.forward(ctx_for(1, rows), x, y_frozen, s);
    double moved = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      EXPECT_NEAR(y[i], want[i], 2e-5) << rows << " rows, element " << i;
      EXPECT_EQ(y_frozen[i], y[i]) << rows << " rows, element " << i;
      moved = std::max(moved, std::abs(static_cast<double>(y[i]) - y_fp32[i]));
    }
    EXPECT_GT(moved, 1e-5) << "the weights were not rounded";  // bf16 weights do change the result
    lin.forward(ctx_for(1, rows), x, y, s, nullptr, res.data());
    for (int64_t i = 0; i < want.numel(); ++i) EXPECT_NEAR(y[i], want_res[i], 2e-5) << "with residual, " << i;
    Tensor<float> dx;
    EXPECT_THROW(lin.backward(ctx_for(1, rows), y, dx, s), Error);
    EXPECT_THROW(lin.backward_params(y, s), Error);
    set_compute_precision(lin, Precision::fp32);  // back to the fp32 masters
    lin.forward(ctx_for(1, rows), x, y, s);
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], y_fp32[i]);
  }
  Linear<double> d;
  d.setup(2, 2);
  EXPECT_THROW(set_compute_precision(d, Precision::bf16), Error);
}

TEST(Layers, NormsGrad) {
  RmsNorm<double> rms;
  rms.setup(small_config());
  check_layer_grads(rms, ctx_for(2, 3), 8);
  LayerNorm<double> ln;
  ln.setup(small_config());
  check_layer_grads(ln, ctx_for(2, 3), 8);
}

TEST(Layers, SwiGluGrad) {
  SwiGlu<double> ffn;
  ffn.setup(small_config());
  check_layer_grads(ffn, ctx_for(2, 3), 8);
}

TEST(Layers, SelfAttentionGradCausalGqa) {
  SelfAttention<double, rope::Interleaved, mask::Causal> attn;
  attn.setup(small_config());
  check_layer_grads(attn, ctx_for(2, 5), 8);
}

TEST(Layers, SelfAttentionGradSlidingWindowHalfRope) {
  SelfAttention<double, rope::Half, mask::SlidingWindow> attn;
  attn.setup(small_config());
  auto ctx = ctx_for(1, 9);
  ctx.window = 3;
  check_layer_grads(attn, ctx, 8);
}

TEST(Layers, SelfAttentionDocumentMaskBlocksLeakage) {
  // Tokens of document 1 must not change when document 0's tokens change.
  SelfAttention<double, rope::Interleaved, mask::All<mask::Causal, mask::Document>> attn;
  attn.setup(small_config());
  Rng rng(3);
  init_normal(attn, rng, 0.3);
  std::vector<int64_t> docs = {0, 0, 0, 1, 1, 1};
  SeqContext ctx = ctx_for(1, 6);
  ctx.doc_ids = docs.data();
  Tensor<double> x({6, 8}), y1, y2;
  fill_normal(x, rng);
  decltype(attn)::Saved s;
  attn.forward(ctx, x, y1, s);
  for (int i = 0; i < 3 * 8; ++i) x[i] += 1.0;
  attn.forward(ctx, x, y2, s);
  for (int i = 3 * 8; i < 6 * 8; ++i) EXPECT_DOUBLE_EQ(y1[i], y2[i]);
  EXPECT_NE(y1[0], y2[0]);
  check_layer_grads(attn, ctx, 8);
}

using Block = Sequence<PreNormResidual<Named<"input_layernorm", RmsNorm<double>>,
                                       Named<"self_attn", SelfAttention<double, rope::Interleaved, mask::Causal>>>,
                       PreNormResidual<Named<"post_attention_layernorm", RmsNorm<double>>,
                                       Named<"mlp", SwiGlu<double>>>>;

TEST(Layers, ComposedBlockGradAndNames) {
  Block block;
  block.setup(small_config());
  std::vector<std::string> names;
  for_each_param(block, "layers.0", [&](const std::string& n, auto&) { names.push_back(n); });
  const std::vector<std::string> expected = {
      "layers.0.input_layernorm.weight",          "layers.0.self_attn.q_proj.weight",
      "layers.0.self_attn.k_proj.weight",         "layers.0.self_attn.v_proj.weight",
      "layers.0.self_attn.o_proj.weight",         "layers.0.post_attention_layernorm.weight",
      "layers.0.mlp.gate_proj.weight",            "layers.0.mlp.up_proj.weight",
      "layers.0.mlp.down_proj.weight"};
  EXPECT_EQ(names, expected);
  check_layer_grads(block, ctx_for(2, 4), 8);
}

TEST(Layers, StackAndPostNormGrad) {
  Stack<Block> stack;
  stack.setup(small_config());
  EXPECT_EQ(stack.size(), 2u);
  int n = 0;
  for_each_param(stack, [&](const std::string& name, auto&) {
    if (n++ == 9) {
      EXPECT_EQ(name, "1.input_layernorm.weight");
    }
  });
  check_layer_grads(stack, ctx_for(1, 4), 8);
  PostNormResidual<Named<"norm", RmsNorm<double>>, Named<"ffn", SwiGlu<double>>> post;
  post.setup(small_config());
  check_layer_grads(post, ctx_for(1, 3), 8);
}

TEST(Layers, CrossAttentionGradAndSegmentMask) {
  LayerConfig c = small_config();
  c.kv_dim = 6;
  CrossAttention<double, mask::SegmentMatch> ca;
  ca.setup(c);
  Rng rng(5);
  init_normal(ca, rng, 0.3);
  allocate_grads(ca);
  // 2 rows; 5 bytes attend to the 3 patch slots of their own segment.
  std::vector<int64_t> qseg = {0, 0, 1, 1, 2, 0, 1, 1, 1, 2}, kseg = {0, 1, 2, 0, 1, 2};
  SeqContext q = ctx_for(2, 5), k = ctx_for(2, 3);
  q.segment_ids = qseg.data();
  k.segment_ids = kseg.data();
  Tensor<double> x({10, 8}), src({6, 6}), y, dx, dsrc;
  fill_normal(x, rng);
  fill_normal(src, rng);
  decltype(ca)::Saved s;
  ca.forward(q, x, k, src, y, s);
  Tensor<double> r(y.shape());
  fill_normal(r, rng);
  auto loss = [&] {
    decltype(ca)::Saved s2;
    Tensor<double> y2;
    ca.forward(q, x, k, src, y2, s2);
    double l = 0;
    for (int64_t i = 0; i < y2.numel(); ++i) l += y2[i] * r[i];
    return l;
  };
  ca.backward(q, r, dx, dsrc, s);
  Tensor<double> dxc = dx.clone(), dsc = dsrc.clone();
  expect_grad_close("dx", x.data(), dxc.data(), x.numel(), loss);
  expect_grad_close("dsrc", src.data(), dsc.data(), src.numel(), loss);
  for_each_param(ca, [&](const std::string& name, auto& p) {
    Tensor<double> g = p.grad.clone();
    expect_grad_close(name, p.value.data(), g.data(), p.value.numel(), loss);
  });
  // Segment masking: with one key per segment, each query's attention output is exactly that key's value
  // projection, so changing key 0 of row 0 only moves queries of segment 0 in row 0.
  Tensor<double> y1 = y.clone();
  for (int j = 0; j < 6; ++j) src[j] += 1.0;
  ca.forward(q, x, k, src, y, s);
  for (int i = 0; i < 10; ++i) {
    const bool affected = i < 5 && qseg[i] == 0;
    for (int d = 0; d < 8; ++d)
      if (!affected) {
        EXPECT_DOUBLE_EQ(y[i * 8 + d], y1[i * 8 + d]) << i;
      }
  }
  EXPECT_NE(y[0], y1[0]);
}

// KvCache against a plain list of rows under a random mix of appends (copied or written in place through
// append_rows), keep_last, pop_back and clear: the cached rows are always the newest rows of the list, with
// their segment ids, and a windowed cache keeps at least what the next query can see (window - 1 rows before
// the first new one). Covers the front offset (keep_last and the window skip rows instead of moving them),
// the compaction at the end of the buffer and the growth; copies are deep.
TEST(Layers, KvCacheKeepsTheNewestRowsThroughEveryOperation) {
  for (const int64_t window : {int64_t{0}, int64_t{5}, int64_t{12}}) {
    SCOPED_TRACE("window " + std::to_string(window));
    constexpr int64_t kw = 3, vw = 2;
    KvCache<double> c(kw, vw, window);
    struct Row {
      double k[kw], v[vw];
      int64_t seg;
    };
    std::vector<Row> ref;
    Rng rng(11 + static_cast<uint64_t>(window));
    double next = 0;
    auto check = [&](const KvCache<double>& cache, const std::string& when) {
      ASSERT_LE(cache.size(), static_cast<int64_t>(ref.size())) << when;
      const int64_t skip = static_cast<int64_t>(ref.size()) - cache.size();
      for (int64_t r = 0; r < cache.size(); ++r) {
        const Row& w = ref[static_cast<size_t>(skip + r)];
        for (int64_t j = 0; j < kw; ++j) ASSERT_EQ(cache.k()[r * kw + j], w.k[j]) << when << " row " << r;
        for (int64_t j = 0; j < vw; ++j) ASSERT_EQ(cache.v()[r * vw + j], w.v[j]) << when << " row " << r;
        ASSERT_EQ(cache.segments()[r], w.seg) << when << " row " << r;
      }
      ref.erase(ref.begin(), ref.begin() + skip);  // what the cache dropped is gone for good
    };
    for (int step = 0; step < 400; ++step) {
      const uint64_t op = rng.below(10);
      if (op < 6) {  // append 1..5 rows
        const int64_t n = 1 + static_cast<int64_t>(rng.below(5));
        std::vector<Row> rows(static_cast<size_t>(n));
        for (Row& r : rows) {
          for (double& x : r.k) x = next++;
          for (double& x : r.v) x = -(next++);
          r.seg = static_cast<int64_t>(rng.below(4));
        }
        const int64_t before = static_cast<int64_t>(ref.size());
        if (op < 3) {
          std::vector<double> k, v;
          std::vector<int64_t> seg;
          for (const Row& r : rows) {
            k.insert(k.end(), r.k, r.k + kw);
            k.push_back(99);  // a stride wider than the row
            v.insert(v.end(), r.v, r.v + vw);
            seg.push_back(r.seg);
          }
          c.append(k.data(), kw + 1, v.data(), vw, n, seg.data());
        } else {
          const auto slots = c.append_rows(n);
          for (int64_t i = 0; i < n; ++i) {
            const Row& r = rows[static_cast<size_t>(i)];
            std::copy_n(r.k, kw, slots.k + i * kw);
            std::copy_n(r.v, vw, slots.v + i * vw);
            slots.seg[i] = r.seg;
          }
        }
        ref.insert(ref.end(), rows.begin(), rows.end());
        const int64_t total = before + n;
        EXPECT_GE(c.size(), window > 0 ? std::min(total, window - 1 + n) : total);
        check(c, "append " + std::to_string(step));
      } else if (op < 8) {
        const int64_t keep = static_cast<int64_t>(rng.below(8));
        c.keep_last(keep);
        EXPECT_EQ(c.size(), std::min(keep, static_cast<int64_t>(ref.size())));
        check(c, "keep_last " + std::to_string(step));
      } else if (op < 9) {
        const int64_t drop = std::min<int64_t>(static_cast<int64_t>(rng.below(3)), c.size());
        c.pop_back(drop);
        ref.resize(ref.size() - static_cast<size_t>(drop));
        check(c, "pop_back " + std::to_string(step));
      } else if (step % 3 == 0) {
        c.clear();
        ref.clear();
        EXPECT_EQ(c.size(), 0);
      } else {  // a copy is deep: appending to it leaves the original alone
        KvCache<double> copy = c;
        const double k[kw] = {-1, -2, -3}, v[vw] = {-4, -5};
        copy.append(k, kw, v, vw, 1);
        EXPECT_EQ(copy.k()[(copy.size() - 1) * kw], -1.0);
        check(c, "copy " + std::to_string(step));
      }
    }
  }
}
