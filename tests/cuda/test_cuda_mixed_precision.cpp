// bf16 mixed-precision compute on CUDA (layers/precision.hpp): the cast ops, a Linear layer against an exact
// product of the same bf16-rounded operands, and a whole Llama-style model in bf16 against the fp32 CPU model
// (logits, loss, every gradient, AdamW steps). Skips without a device.
//
// Tolerances, and why:
//  - Linear vs the exact product of the bf16-rounded x and W (double on the host): only the fp32 accumulation
//    differs, K <= 96 terms -> 1e-5 relative (max |d| / max |ref|). Against the fp32 product the error is the
//    operand rounding, 2^-9 relative per operand: at most ~2^-8 relative and, with random signs, clearly
//    above 1e-5 — checked both ways, so a Linear that silently stayed fp32 fails.
//  - Whole model vs fp32: every GEMM and attention product rounds its operands (2^-9 each), the attention
//    kernel rounds P and its outputs; errors compound over 2 blocks and the backward's chain rule.
//    Measured (emulated tensor cores): logits 4.5e-3, loss 1e-5 relative, gradients <= 1.0e-2 of their
//    largest entry at the first step. Bounds: logits 1e-2, loss 5e-3, gradients 3e-2 — room for other
//    summation orders, yet any real error (a wrong transpose, a stale weight copy, a missing gradient term)
//    is O(1). After AdamW steps the two models' weights differ (Adam turns tiny gradient differences into
//    lr-sized steps), so later steps check the training trajectory: loss within 5e-3, logits within 2e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "../../cuda/launch_core.hpp"  // internal: the small products' x route
#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/layers/feed_forward.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/models/megalodon/megalodon.hpp"
#include "tessera/ops/rope.hpp"
#include "tessera/train/adamw.hpp"

using namespace tessera;
using tessera::testing::download;
using tessera::testing::rel_err;
using tessera::testing::upload;

namespace {

double round_bf16(float f) { return static_cast<float>(bf16(f)); }
std::vector<float> normals(int64_t n, uint64_t seed, double sd = 1.0) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal() * sd);
  return v;
}

}  // namespace

TEST(CudaMixedPrecision, CpuModelsTakeBf16WeightsForInferenceOnly) {
  // On the CPU, bf16 means bf16 weights for inference (tests/layers: LinearBf16WeightsOnTheCpu); double
  // models refuse it.
  Linear<float> l;
  l.setup(4, 4);
  EXPECT_NO_THROW(set_compute_precision(l, Precision::bf16));
  Linear<float>::Saved s;
  Tensor<float> x({2, 4}), y, dx;
  l.forward(SeqContext{}, x, y, s);
  EXPECT_THROW(l.backward(SeqContext{}, y, dx, s), Error);
  EXPECT_NO_THROW(set_compute_precision(l, Precision::fp32));
  Linear<double> d;
  d.setup(4, 4);
  EXPECT_THROW(set_compute_precision(d, Precision::bf16), Error);
  EXPECT_EQ(parse_precision("bf16"), Precision::bf16);
  EXPECT_THROW(parse_precision("fp16"), Error);
}

// n = 1001: the per-element cast kernels; n = 1000 (a multiple of 8, allocations 16-byte aligned): the
// 8-wide ones.
TEST(CudaMixedPrecision, CastRoundsToNearestEvenAndBackExactly) {
  TESSERA_NEED_GPU();
  for (const int64_t n : {int64_t{1001}, int64_t{1000}}) {
    SCOPED_TRACE(n);
    std::vector<float> x = normals(n, 1);
    x[0] = 1.0f + 1.0f / 256;  // exactly half-way between two bf16 values: ties to even (1.0)
    x[1] = 1.0f + 3.0f / 256;  // half-way, rounds up to the even 1 + 4/256
    x[2] = -0.0f;
    x[3] = std::numeric_limits<float>::infinity();
    x[4] = 3.0e38f;                 // large but finite in bf16 (max ~3.39e38)
    x[n - 1] = -1.0f - 1.0f / 256;  // the last element (a vector kernel's last lane)
    auto xd = upload(x);
    Tensor<bf16, cuda> h({n});
    ops::cast(cuda{}, h.data(), xd.data(), n);
    const auto hb = download(h.data(), n);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(hb[i].bits, bf16(x[i]).bits) << "element " << i;
    EXPECT_EQ(static_cast<float>(hb[0]), 1.0f);
    EXPECT_EQ(static_cast<float>(hb[1]), 1.0f + 4.0f / 256);
    EXPECT_EQ(static_cast<float>(hb[n - 1]), -1.0f);
    Tensor<float, cuda> back({n});
    ops::cast(cuda{}, back.data(), h.data(), n);
    const auto fb = download(back.data(), n);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(fb[i], static_cast<float>(hb[i])) << "element " << i;
  }
}

TEST(CudaMixedPrecision, LinearMultipliesBf16OperandsWithFp32Accumulation) {
  TESSERA_NEED_GPU();
  const int64_t n = 37, in = 96, out = 40;
  Linear<float, cuda> l;
  l.setup(in, out, /*bias=*/true);
  const auto w = normals(out * in, 2, 0.5), b = normals(out, 3), x = normals(n * in, 4), dy = normals(n * out, 5);
  cuda_mem::to_device(l.params.weight.value.data(), w.data(), w.size() * 4);
  cuda_mem::to_device(l.params.bias.value.data(), b.data(), b.size() * 4);
  allocate_grads(l);
  set_compute_precision(l, Precision::bf16);
  auto xd = upload(x), dyd = upload(dy);
  Tensor<float, cuda> y, dx;
  Linear<float, cuda>::Saved s;
  SeqContext ctx;
  l.forward(ctx, TensorView<const float>(xd.data(), {n, in}), y, s);
  l.backward(ctx, TensorView<const float>(dyd.data(), {n, out}), dx, s);

  // References in double: on the bf16-rounded operands (what the layer must compute) and on the fp32 ones.
  std::vector<double> y16(n * out), y32(n * out), dx16(n * in), dx32(n * in), dw16(out * in), dw32(out * in);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double a = b[o], c = b[o];
      for (int64_t k = 0; k < in; ++k) {
        a += round_bf16(x[i * in + k]) * round_bf16(w[o * in + k]);
        c += double(x[i * in + k]) * w[o * in + k];
      }
      y16[i * out + o] = a, y32[i * out + o] = c;
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < in; ++k) {
      double a = 0, c = 0;
      for (int64_t o = 0; o < out; ++o) {
        a += round_bf16(dy[i * out + o]) * round_bf16(w[o * in + k]);
        c += double(dy[i * out + o]) * w[o * in + k];
      }
      dx16[i * in + k] = a, dx32[i * in + k] = c;
    }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k) {
      double a = 0, c = 0;
      for (int64_t i = 0; i < n; ++i) {
        a += round_bf16(dy[i * out + o]) * round_bf16(x[i * in + k]);
        c += double(dy[i * out + o]) * x[i * in + k];
      }
      dw16[o * in + k] = a, dw32[o * in + k] = c;
    }
  const auto yg = download(y.data(), y.numel()), dxg = download(dx.data(), dx.numel()),
             dwg = download(l.params.weight.grad.data(), out * in), dbg = download(l.params.bias.grad.data(), out);
  EXPECT_LE(rel_err(yg, y16), 1e-5);
  EXPECT_LE(rel_err(dxg, dx16), 1e-5);
  EXPECT_LE(rel_err(dwg, dw16), 1e-5);
  // The operands really were rounded: visibly off the fp32 products, within the bf16 bound.
  for (auto [got, ref] : {std::pair{&yg, &y32}, {&dxg, &dx32}, {&dwg, &dw32}}) {
    const double e = rel_err(*got, *ref);
    EXPECT_GT(e, 1e-5);
    EXPECT_LT(e, 1.0 / 128);
  }
  std::vector<double> db(out, 0.0);  // bias gradient: fp32 column sums of the unrounded dy
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) db[o] += dy[i * out + o];
  EXPECT_LE(rel_err(dbg, db), 1e-6);
}

// n = 12 rows: more than ops::kSmallLinearRows, so frozen and unfrozen forwards take the same cuBLAS route
// and agree bit for bit (the decoding-size route is tested below).
TEST(CudaMixedPrecision, FrozenBf16WeightsAreCastOnceForInference) {
  TESSERA_NEED_GPU();
  const int64_t n = 12, in = 32, out = 24;
  Linear<float, cuda> l;
  l.setup(in, out);
  auto w1 = normals(out * in, 6), w2 = normals(out * in, 7), x = normals(n * in, 8);
  cuda_mem::to_device(l.params.weight.value.data(), w1.data(), w1.size() * 4);
  allocate_grads(l);
  set_compute_precision(l, Precision::bf16);
  auto xd = upload(x);
  const TensorView<const float> xv(xd.data(), {n, in});
  SeqContext ctx;
  Linear<float, cuda>::Saved s;
  Tensor<float, cuda> y;
  auto run = [&] {
    l.forward(ctx, xv, y, s);
    return download(y.data(), y.numel());
  };
  const auto y1 = run();
  freeze_bf16_weights(l);
  EXPECT_EQ(run(), y1);  // the frozen copy is the same cast
  cuda_mem::to_device(l.params.weight.value.data(), w2.data(), w2.size() * 4);
  EXPECT_EQ(run(), y1) << "frozen: the new fp32 weights are not read until the next freeze";
  Tensor<float, cuda> dx;
  EXPECT_THROW(l.backward(ctx, TensorView<const float>(y.data(), {n, out}), dx, s), Error);
  freeze_bf16_weights(l);
  const auto y2 = run();
  EXPECT_NE(y2, y1);
  set_compute_precision(l, Precision::bf16);  // unfrozen: every forward casts again
  cuda_mem::to_device(l.params.weight.value.data(), w1.data(), w1.size() * 4);
  EXPECT_EQ(run(), y1);
}

// ops::linear_small_bf16 / swiglu_small_bf16 (the decoding-size products) against the exact products of the
// bf16-rounded operands: every row count 1..8 and each columns-per-warp variant (1, 2, 4 output columns per
// warp, chosen by the total column count and M), K not a multiple of a warp's 256-element stride, groups of
// different widths, a bias on one of them. Tolerance 1e-5 (fp32 sums of <= 264 terms); against the
// unrounded fp32 operands the error must be visibly larger, so an x that was not rounded fails. The fused
// neighbours: an RMSNorm in front (the reference normalises in fp32 as rmsnorm_forward does, then rounds),
// and a residual added to one output: into a separate y, in place (y aliasing the residual), and twice. The
// gated (SwiGLU) products round gate and up to bf16 before silu(gate) * up. Every case runs on both routes
// of x: staged in shared memory (the default; the norm's sum of squares reduced over the block) and read
// from global memory in the inner loop; the last cases (M * K * 2 bytes over 47 KB) cannot be staged and
// take the second route either way (no norm there: at K in the thousands the fp32 sum of squares may move a
// normalised x across a bf16 rounding boundary, against the reference's double sum).
TEST(CudaMixedPrecision, SmallProductsMultiplyBf16OperandsWithFp32Accumulation) {
  TESSERA_NEED_GPU();
  struct Restore {
    bool on;
    ~Restore() { cuda_detail::set_small_linear_staged(on); }
  } const restore{cuda_detail::set_small_linear_staged(true)};
  struct Case {
    int64_t M, K;
    std::vector<int64_t> n;
    bool gated;
    bool norm = false;
    int residual = 0;  // 0: none; 1: on the last output, separate y; 2: on the last output, in place; 3: as
                       // 1, added twice (BLT's 2·x + o)
  };
  const std::vector<Case> cases = {{1, 72, {40, 8, 17}, false},
                                   {3, 264, {33}, false},
                                   {8, 72, {40, 8, 17}, false},
                                   {2, 16, {16400}, false},
                                   {6, 16, {5000}, false},
                                   {4, 24, {2000, 2000, 500}, false},
                                   {5, 8, {1}, false},
                                   {7, 40, {3, 9}, false},
                                   {1, 264, {24}, true},
                                   {5, 72, {24}, true},
                                   {2, 16, {4100}, true},
                                   {8, 16, {4100}, true},
                                   {3, 264, {33, 16}, false, true, 1},
                                   {1, 72, {40}, false, true, 2},
                                   {2, 72, {24}, true, true},
                                   {8, 16, {4100}, false, false, 2},
                                   {2, 72, {40, 24}, false, true, 3},
                                   {8, 3008, {8}, false},  // 47 KB of x: the largest staged
                                   {8, 3080, {24, 9}, false, false, 2},
                                   {5, 5000, {16}, false}};
  uint64_t seed = 100;
  for (const bool staged : {true, false})
    for (const Case& c : cases) {
      cuda_detail::set_small_linear_staged(staged);
      SCOPED_TRACE(::testing::Message()
                   << (staged ? "staged x, " : "x from global memory, ") << "M=" << c.M << " K=" << c.K
                   << " groups=" << c.n.size() << " first n=" << c.n[0] << (c.gated ? " gated" : "")
                   << (c.norm ? " norm" : "") << " residual " << c.residual);
      const auto x_in = normals(c.M * c.K, ++seed, 3.0);
      const auto xd = upload(x_in);
      const auto gain = normals(c.K, ++seed);
      const auto gain_d = upload(gain);
      // What the products multiply: x, or RMSNorm(x) in fp32 as rmsnorm_forward_kernel computes it.
      std::vector<float> x = x_in;
      if (c.norm) {
        for (int64_t r = 0; r < c.M; ++r) {
          double ss = 0;
          for (int64_t k = 0; k < c.K; ++k) ss += double(x_in[r * c.K + k]) * x_in[r * c.K + k];
          const float rs = static_cast<float>(1.0 / std::sqrt(ss / c.K + 1e-5));
          for (int64_t k = 0; k < c.K; ++k) x[r * c.K + k] = x_in[r * c.K + k] * rs * gain[k];
        }
      }
      const ops::SmallLinearNorm norm{c.norm ? gain_d.data() : nullptr, 1e-5};
      ASSERT_TRUE(ops::small_linear_supported(cuda{}, xd.data(), c.M, c.K));
      const size_t G = c.gated ? 2 : c.n.size();  // gated: gate and up weights of one width
      std::vector<std::vector<float>> w(G), bias(G), res(G);
      std::vector<Tensor<bf16, cuda>> w16(G);
      std::vector<Tensor<float, cuda>> bd(G), y(c.gated ? 1 : G);
      std::vector<ops::SmallLinearOut> outs;
      Tensor<float, cuda> rd;
      for (size_t g = 0; g < G; ++g) {
        const int64_t n = c.gated ? c.n[0] : c.n[g];
        w[g] = normals(n * c.K, ++seed, 0.5);
        auto wd = upload(w[g]);
        w16[g] = Tensor<bf16, cuda>({n, c.K});
        ops::cast(cuda{}, w16[g].data(), wd.data(), n * c.K);
        if (!c.gated && g == 0) {
          bias[g] = normals(n, ++seed);
          bd[g] = upload(bias[g]);
        }
        if (!c.gated) {
          y[g] = Tensor<float, cuda>({c.M, n});
          outs.push_back({w16[g].data(), g == 0 ? bd[g].data() : nullptr, y[g].data(), n});
          if (c.residual && g + 1 == G) {
            res[g] = normals(c.M * n, ++seed);
            cuda_mem::to_device(y[g].data(), res[g].data(), res[g].size() * 4);
            outs.back().residual = y[g].data();  // in place
            if (c.residual == 3) outs.back().residual_adds = 2;
            if (c.residual == 1 || c.residual == 3) {
              rd = upload(res[g]);
              outs.back().residual = rd.data();
              ops::fill(cuda{}, y[g].data(), 1e30f, y[g].numel());  // a separate y is overwritten, not read
            }
          }
        }
      }
      if (c.gated) {
        y[0] = Tensor<float, cuda>({c.M, c.n[0]});
        ops::swiglu_small_bf16(cuda{}, xd.data(), c.M, c.K, w16[0].data(), w16[1].data(), c.n[0], y[0].data(),
                               norm);
      } else {
        ops::linear_small_bf16(cuda{}, xd.data(), c.M, c.K, outs.data(), static_cast<int>(outs.size()), norm);
      }
      // References in double: products of the rounded operands, and of the fp32 ones.
      auto product = [&](size_t g, int64_t r, int64_t j, bool rounded) {
        double a = 0;
        for (int64_t k = 0; k < c.K; ++k) {
          const float xv = x[r * c.K + k], wv = w[g][j * c.K + k];
          a += rounded ? round_bf16(xv) * round_bf16(wv) : double(xv) * wv;
        }
        return a;
      };
      auto silu_times = [](double g, double u) { return g / (1 + std::exp(-g)) * u; };
      // Gated: gate and up are rounded to bf16 before the SwiGLU (as the all-bf16 SwiGlu's GEMMs write them).
      // A product within 1e-5 of a bf16 rounding midpoint may round either way after the kernel's fp32 sum:
      // such elements (rare) are left out of the comparison.
      auto near_midpoint = [](double v) {
        const double nearest = round_bf16(static_cast<float>(v));
        if (nearest == 0) return false;
        const double ulp = std::ldexp(1.0, std::ilogb(nearest) - 7);  // bf16: 8 significant bits
        return std::abs(std::abs(v - nearest) - ulp / 2) < 1e-5 * std::abs(v);
      };
      for (size_t o = 0; o < y.size(); ++o) {
        const int64_t n = y[o].size(1);
        std::vector<double> ref16(c.M * n), ref32(c.M * n);
        std::vector<bool> skip(c.M * n, false);
        for (int64_t r = 0; r < c.M; ++r)
          for (int64_t j = 0; j < n; ++j) {
            const double b = (bias[o].empty() ? 0.0 : bias[o][j]) +
                             (res[o].empty() ? 0.0 : (c.residual == 3 ? 2.0 : 1.0) * res[o][r * n + j]);
            if (c.gated) {
              const double pg = product(0, r, j, true), pu = product(1, r, j, true);
              ref16[r * n + j] =
                  silu_times(round_bf16(static_cast<float>(pg)), round_bf16(static_cast<float>(pu)));
              skip[r * n + j] = near_midpoint(pg) || near_midpoint(pu);
            } else {
              ref16[r * n + j] = product(o, r, j, true) + b;
            }
            ref32[r * n + j] = c.gated ? silu_times(product(0, r, j, false), product(1, r, j, false))
                                       : product(o, r, j, false) + b;
          }
        auto got = download(y[o].data(), y[o].numel());
        for (size_t i = 0; i < got.size(); ++i)
          if (skip[i]) got[i] = static_cast<float>(ref16[i]);
        EXPECT_LE(rel_err(got, ref16), 1e-5) << "output " << o;
        if (c.K >= 16 && c.M * n >= 16) {
          EXPECT_GT(rel_err(got, ref32), 1e-5) << "output " << o << ": x not rounded?";
        }
      }
    }
}

// RoPE in the small products' epilogue (a decoding step's q/k/v, rotation and KV-cache append in one launch):
// the rotated q and k equal the plain products (bias included) rotated by rope_qk, v is the plain product bit
// for bit (each column's sum is the same lane order whatever the column-to-warp mapping), and the cache rows'
// segment ids are zeroed — or copied from given ids. Both pair layouts, 1 and 3 tokens, Hq 4 / Hkv 2 heads of
// 16.
TEST(CudaMixedPrecision, SmallProductsRotateQueriesAndKeysForTheCache) {
  TESSERA_NEED_GPU();
  const int64_t K = 72, Dh = 16, Hq = 4, Hk = 2, qw = Hq * Dh, kw = Hk * Dh;
  uint64_t seed = 300;
  for (const int64_t M : {int64_t{1}, int64_t{3}}) {
    for (const auto style : {ops::RopeStyle::Half, ops::RopeStyle::Interleaved}) {
      SCOPED_TRACE(::testing::Message()
                   << "M=" << M << (style == ops::RopeStyle::Half ? " half" : " interleaved"));
      const auto x = upload(normals(M * K, ++seed));
      std::vector<Tensor<bf16, cuda>> w;
      for (const int64_t n : {qw, kw, kw}) {
        const auto wf = upload(normals(n * K, ++seed, 0.5));
        w.emplace_back(Shape{n, K});
        ops::cast(cuda{}, w.back().data(), wf.data(), n * K);
      }
      const auto bias = upload(normals(qw, ++seed));
      std::vector<int64_t> pos_h(static_cast<size_t>(M));
      for (int64_t r = 0; r < M; ++r) pos_h[static_cast<size_t>(r)] = 1000 + 37 * r;
      Tensor<int64_t, cuda> pos({M});
      cuda_mem::to_device(pos.data(), pos_h.data(), pos_h.size() * sizeof(int64_t));
      // Reference: the plain products, then rope_qk in place.
      Tensor<float, cuda> rq({M, qw}), rk({M, kw}), rv({M, kw});
      const ops::SmallLinearOut plain[] = {{w[0].data(), bias.data(), rq.data(), qw},
                                           {w[1].data(), nullptr, rk.data(), kw},
                                           {w[2].data(), nullptr, rv.data(), kw}};
      ops::linear_small_bf16(cuda{}, x.data(), M, K, plain, 3);
      ops::rope_qk(cuda{}, rq.data(), rk.data(), rq.data(), rk.data(), pos.data(), M, Hq, Hk, Dh, 1e4, style,
                   false);
      // Fused: q rotated, k and v into "cache rows", their segment ids zeroed.
      Tensor<float, cuda> q({M, qw}), kc({M, kw}), vc({M, kw});
      Tensor<int64_t, cuda> seg({M});
      const std::vector<int64_t> sevens(static_cast<size_t>(M), 7);
      cuda_mem::to_device(seg.data(), sevens.data(), sevens.size() * sizeof(int64_t));
      const ops::SmallLinearOut fused[] = {{w[0].data(), bias.data(), q.data(), qw},
                                           {w[1].data(), nullptr, kc.data(), kw},
                                           {w[2].data(), nullptr, vc.data(), kw}};
      ops::linear_small_bf16(cuda{}, x.data(), M, K, fused, 3, {},
                             {pos.data(), Dh, 1e4, style == ops::RopeStyle::Interleaved, 2},
                             {nullptr, seg.data()});
      EXPECT_LE(rel_err(download(q.data(), M * qw), download(rq.data(), M * qw)), 1e-6);
      EXPECT_LE(rel_err(download(kc.data(), M * kw), download(rk.data(), M * kw)), 1e-6);
      EXPECT_EQ(download(vc.data(), M * kw), download(rv.data(), M * kw));
      std::vector<int64_t> seg_h(static_cast<size_t>(M));
      cuda_mem::to_host(seg_h.data(), seg.data(), seg_h.size() * sizeof(int64_t));
      EXPECT_EQ(seg_h, std::vector<int64_t>(static_cast<size_t>(M), 0));
      // Segment ids copied instead (the decoder's cross-attention memory), no RoPE: k and v as plain
      // products.
      Tensor<int64_t, cuda> ids({M});
      cuda_mem::to_device(ids.data(), pos_h.data(), pos_h.size() * sizeof(int64_t));
      const ops::SmallLinearOut kv[] = {{w[1].data(), nullptr, kc.data(), kw},
                                        {w[2].data(), nullptr, vc.data(), kw}};
      ops::linear_small_bf16(cuda{}, x.data(), M, K, kv, 2, {}, {}, {ids.data(), seg.data()});
      cuda_mem::to_host(seg_h.data(), seg.data(), seg_h.size() * sizeof(int64_t));
      EXPECT_EQ(seg_h, pos_h);
      EXPECT_EQ(download(vc.data(), M * kw), download(rv.data(), M * kw));
      // A rotated output takes whole heads and no residual.
      ops::SmallLinearOut with_res[] = {fused[0], fused[1], fused[2]};
      with_res[0].residual = q.data();
      EXPECT_THROW(
          ops::linear_small_bf16(cuda{}, x.data(), M, K, with_res, 3, {}, {pos.data(), Dh, 1e4, false, 2}),
          Error);
      EXPECT_THROW(
          ops::linear_small_bf16(cuda{}, x.data(), M, K, fused, 3, {}, {pos.data(), 24, 1e4, false, 2}),
          Error);
    }
  }
}

TEST(CudaMixedPrecision, SmallProductsRejectWhatTheyDoNotCover) {
  TESSERA_NEED_GPU();
  Tensor<float, cuda> x({9, 16}), y({9, 8});
  Tensor<bf16, cuda> w({8, 16});
  EXPECT_TRUE(ops::small_linear_supported(cuda{}, x.data(), 8, 16));
  EXPECT_FALSE(ops::small_linear_supported(cuda{}, x.data(), 9, 16))
      << "more rows than a small product takes";
  EXPECT_FALSE(ops::small_linear_supported(cuda{}, x.data(), 0, 16));
  EXPECT_FALSE(ops::small_linear_supported(cuda{}, x.data(), 1, 12)) << "K not a multiple of 8";
  EXPECT_FALSE(ops::small_linear_supported(cuda{}, x.data() + 1, 1, 16)) << "x not 16-byte aligned";
  const ops::SmallLinearOut o{w.data(), nullptr, y.data(), 8};
  EXPECT_THROW(ops::linear_small_bf16(cuda{}, x.data(), 9, 16, &o, 1), Error);
  EXPECT_THROW(ops::linear_small_bf16(cuda{}, x.data(), 1, 12, &o, 1), Error);
  EXPECT_THROW(ops::linear_small_bf16(cuda{}, x.data(), 1, 16, &o, 0), Error);
  const ops::SmallLinearOut four[] = {o, o, o, o};
  EXPECT_THROW(ops::linear_small_bf16(cuda{}, x.data(), 1, 16, four, 4), Error);
}

// Frozen bf16 layers route decoding-size inputs (<= 8 rows) to the small products by themselves: Linear
// (with a bias), SwiGLU (gate, up and the product in one launch) and the cached self-attention's q/k/v (in
// the BLT generation test of test_cuda_blt_bf16.cpp). Same operands as the cast + cuBLAS route of the
// unfrozen layer, so the outputs agree to fp32 summation order; 9 rows stay on cuBLAS (bit-equal). The SwiGLU
// rounds gate and up to bf16 on both routes (the all-bf16 SwiGlu's GEMMs write them in bf16); summed in
// another order, an element next to a rounding boundary can round the other way (~1e-4 of z each), hence 5e-4
// for z, while leaving out that rounding on one route is 1.8e-3 (n = 1) and 3.4e-3 (n = 8).
TEST(CudaMixedPrecision, FrozenLayersUseTheSmallProductsForDecodingSizes) {
  TESSERA_NEED_GPU();
  const int64_t in = 48, out = 40, hidden = 56;
  Linear<float, cuda> l;
  l.setup(in, out, /*bias=*/true);
  SwiGlu<float, cuda> f;
  f.setup(in, hidden);
  uint64_t seed = 40;
  auto fill = [&](auto& layer) {
    for_each_param(layer, [&](const std::string&, auto& p) {
      const auto v = normals(p.value.numel(), ++seed, 0.3);
      cuda_mem::to_device(p.value.data(), v.data(), v.size() * 4);
    });
  };
  fill(l);
  fill(f);
  set_compute_precision(l, Precision::bf16);
  set_compute_precision(f, Precision::bf16);
  SeqContext ctx;
  for (const int64_t n : {int64_t{1}, int64_t{8}, int64_t{9}}) {
    SCOPED_TRACE(n);
    const auto xd = upload(normals(n * in, ++seed));
    const TensorView<const float> xv(xd.data(), {n, in});
    auto run = [&] {
      Tensor<float, cuda> y, z;
      Linear<float, cuda>::Saved ls;
      SwiGlu<float, cuda>::Saved fs;
      l.forward(ctx, xv, y, ls);
      f.forward(ctx, xv, z, fs);
      return std::pair{download(y.data(), y.numel()), download(z.data(), z.numel())};
    };
    set_compute_precision(l, Precision::bf16);
    set_compute_precision(f, Precision::bf16);
    const auto [y_cast, z_cast] = run();
    freeze_bf16_weights(l);
    freeze_bf16_weights(f);
    const auto [y_small, z_small] = run();
    if (n <= ops::kSmallLinearRows) {
      EXPECT_LE(rel_err(y_small, y_cast), 1e-5);
      EXPECT_LE(rel_err(z_small, z_cast), 5e-4);
    } else {
      EXPECT_EQ(y_small, y_cast);
      EXPECT_EQ(z_small, z_cast);
    }
  }
}

// forward_bf16_input (the all-bf16 attention / SwiGLU paths feed o_proj and down_proj this way): the same y
// as a forward from fp32 x whose cast is that input, the same gradients when its backward gets the input
// again, an error without it, and an error on an fp32 layer.
TEST(CudaMixedPrecision, Bf16InputForwardMatchesTheCastPathAndNeedsItsInput) {
  TESSERA_NEED_GPU();
  const int64_t n = 7, in = 40, out = 24;
  Linear<float, cuda> l;
  l.setup(in, out);
  const auto w = normals(out * in, 9), x = normals(n * in, 10), dy = normals(n * out, 11);
  cuda_mem::to_device(l.params.weight.value.data(), w.data(), w.size() * 4);
  allocate_grads(l);
  SeqContext ctx;
  auto xd = upload(x), dyd = upload(dy);
  const TensorView<const float> xv(xd.data(), {n, in}), dyv(dyd.data(), {n, out});
  Tensor<bf16, cuda> x16({n, in});
  ops::cast(cuda{}, x16.data(), xd.data(), n * in);
  Linear<float, cuda>::Saved s;
  Tensor<float, cuda> y, dx;
  EXPECT_THROW(l.forward_bf16_input(ctx, x16.data(), n, y, s), Error);  // fp32 compute
  set_compute_precision(l, Precision::bf16);

  l.forward(ctx, xv, y, s);
  const auto y_cast = download(y.data(), y.numel());
  zero_grads(l);
  l.backward(ctx, dyv, dx, s);
  const auto dx_cast = download(dx.data(), dx.numel());
  const auto dw_cast = download(l.params.weight.grad.data(), out * in);

  Linear<float, cuda>::Saved s16;
  l.forward_bf16_input(ctx, x16.data(), n, y, s16);
  EXPECT_EQ(download(y.data(), y.numel()), y_cast);
  zero_grads(l);
  l.backward(ctx, dyv, dx, s16, false, x16.data());
  EXPECT_EQ(download(dx.data(), dx.numel()), dx_cast);
  EXPECT_EQ(download(l.params.weight.grad.data(), out * in), dw_cast);
  EXPECT_THROW(l.backward(ctx, dyv, dx, s16), Error);  // the input exists only as x16
}

namespace {

models::LlamaConfig tiny_config(int64_t window) {
  models::LlamaConfig c;
  c.vocab_size = 64;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_hidden = 96;
  c.window = window;
  return c;
}
std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
  return ids;
}

}  // namespace

// The Llama attention masks have the bf16 kernel (so the test below covers it); BLT's window + document mask
// has it where the context is one document (mask::PositionOnly); document cuts alone do not.
static_assert(SelfAttention<float, rope::Interleaved, mask::SlidingWindow, cuda>::has_bf16_attention);
static_assert(
    SelfAttention<float, rope::Interleaved, mask::All<mask::SlidingWindow, mask::Document>, cuda>::has_bf16_attention);
static_assert(!SelfAttention<float, rope::Interleaved, mask::Document, cuda>::has_bf16_attention);
static_assert(!SelfAttention<float, rope::Interleaved, mask::SlidingWindow, cpu>::has_bf16_attention);

class CudaMixedPrecisionLlama : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaMixedPrecisionLlama, Bf16TrainingTracksTheFp32Model) {
  TESSERA_NEED_GPU();
  const auto cfg = tiny_config(GetParam());
  models::Llama<float> h(cfg);
  models::Llama<float, cuda> d(cfg);
  Rng rng(11);
  for_each_param(h, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.1); });
  copy_params(d, h);
  set_compute_precision(d, Precision::bf16);
  allocate_grads(h);
  allocate_grads(d);
  train::AdamW<float> opt_h({1e-2, 0.9, 0.95, 1e-8, 0.1});
  train::AdamW<float, cuda> opt_d({1e-2, 0.9, 0.95, 1e-8, 0.1});
  const int64_t batch = 2, seq = 24, rows = batch * seq;
  const auto ids = random_ids(rows, cfg.vocab_size, 12), targets = random_ids(rows, cfg.vocab_size, 13);
  auto ids_d = upload(ids), targets_d = upload(targets);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    zero_grads(h);
    zero_grads(d);
    const Tensor<float>& lh = h.forward(ids.data(), batch, seq);
    const Tensor<float, cuda>& ld = d.forward(ids_d.data(), batch, seq);
    const double logit_err = rel_err(download(ld.data(), ld.numel()), lh.data(), lh.numel());
    EXPECT_LE(logit_err, step == 0 ? 1e-2 : 2e-2);
    const double loss_h = h.loss(targets.data()), loss_d = d.loss(targets_d.data());
    EXPECT_NEAR(loss_d, loss_h, 5e-3 * loss_h);
    h.backward(targets.data());
    d.backward(targets_d.data());
    double worst = 0;
    std::string worst_name;
    for (const auto& g : tessera::testing::gradient_errors(h, d)) {
      if (step == 0) {
        EXPECT_LE(g.err, 3e-2) << g.name;  // later steps compare models whose weights differ
      }
      if (g.err > worst) worst = g.err, worst_name = g.name;
    }
    std::printf("step %d: logits %.2e, loss %.6f vs %.6f, worst gradient %.2e (%s)\n", step, logit_err, loss_d,
                loss_h, worst, worst_name.c_str());
    opt_h.step(h);
    opt_d.step(d);
  }
}

// PreNormResidual over an all-bf16 inner layer takes the bf16 route: the RMSNorm writes bf16(norm(x))
// straight into the inner layer's bf16 input (no fp32 normed tensor) and the output GEMM adds the residual in
// its epilogue. Its numbers are the cast route's (fp32 norm, cast, GEMM, separate add): the same bf16
// operands and the same fp32 sums, up to the GEMMs' summation order (cuBLASLt with C -> D against cuBLAS),
// for the forward, dx and every parameter gradient; measured 0 on the emulator, bound 1e-5.
TEST(CudaMixedPrecision, PreNormResidualBf16RouteHasTheCastRoutesNumbers) {
  TESSERA_NEED_GPU();
  const auto cfg = tiny_config(0);
  models::LlamaBlock<float, mask::SlidingWindow, cuda> blk;
  blk.setup(cfg.layer());
  Rng rng(21);
  for_each_param(blk, [&](const std::string&, auto& p) {
    Tensor<float> h(p.value.shape());
    tessera::testing::fill_normal(h, rng, 0.2);
    for (int64_t i = 0; i < h.numel(); ++i) h.data()[i] += 1.0f;  // norm gains near 1, other weights too
    cuda_mem::to_device(p.value.data(), h.data(), static_cast<size_t>(h.numel()) * 4);
  });
  set_compute_precision(blk, Precision::bf16);
  allocate_grads(blk);
  SeqContext ctx;
  ctx.batch = 2, ctx.seq = 24;
  const int64_t rows = ctx.rows(), dim = cfg.dim;
  auto xd = upload(normals(rows * dim, 22)), dyd = upload(normals(rows * dim, 23, 0.1));
  const TensorView<const float> xv(xd.data(), {rows, dim}), dyv(dyd.data(), {rows, dim});
  auto check = [&](auto& part, const char* what) {
    SCOPED_TRACE(what);
    using Part = std::remove_reference_t<decltype(part)>;
    auto grads = [&] {
      std::vector<std::vector<float>> g;
      for_each_param(
          part, [&](const std::string&, auto& p) { g.push_back(download(p.grad.data(), p.grad.numel())); });
      return g;
    };
    // bf16 route (what forward() takes)
    typename Part::Saved s1;
    Tensor<float, cuda> y1, dx1;
    ASSERT_TRUE(detail::unnamed(part.inner).takes_bf16_input(ctx));
    part.forward(ctx, xv, y1, s1);
    EXPECT_EQ(s1.normed.numel(), 0) << "the fp32 normed tensor should not exist on the bf16 route";
    zero_grads(part);
    part.backward(ctx, dyv, dx1, s1);
    const auto g1 = grads();
    // cast route, composed by hand: fp32 norm, the inner layer's forward (which casts), a separate add
    typename Part::Saved s2;
    Tensor<float, cuda> y2, dx2;
    part.norm.forward(ctx, xv, s2.normed, s2.norm_s);
    part.inner.forward(ctx, s2.normed, y2, s2.inner_s);
    ops::add_inplace(cuda{}, y2.data(), xd.data(), rows * dim);
    zero_grads(part);
    part.backward(ctx, dyv, dx2, s2);
    const auto g2 = grads();
    const auto y2h = download(y2.data(), y2.numel()), dx2h = download(dx2.data(), dx2.numel());
    EXPECT_LE(rel_err(download(y1.data(), y1.numel()), y2h.data(), y2.numel()), 1e-5);
    EXPECT_LE(rel_err(download(dx1.data(), dx1.numel()), dx2h.data(), dx2.numel()), 1e-5);
    ASSERT_EQ(g1.size(), g2.size());
    for (size_t i = 0; i < g1.size(); ++i)
      EXPECT_LE(rel_err(g1[i], g2[i].data(), static_cast<int64_t>(g2[i].size())), 1e-5) << "parameter " << i;
  };
  check(std::get<0>(blk.layers), "attention");
  check(std::get<1>(blk.layers), "mlp");
}

INSTANTIATE_TEST_SUITE_P(Masks, CudaMixedPrecisionLlama, ::testing::Values(int64_t{0}, int64_t{8}),
                         [](const auto& i) { return i.param ? "SlidingWindow" : "Causal"; });

// keep_bf16_weight_copies: AdamW writes bf16(p) with its update and the next forward multiplies with that
// copy instead of casting the fp32 master. The copy is the cast's rounding, so training is the same to the
// bit; the forward reads the copy (a master changed behind the optimizer's back does not show) until
// mark_values_changed, and the library's copies and loads mark by themselves.
TEST(CudaMixedPrecision, Bf16WeightCopiesFromAdamWTrainLikeTheCastEveryForward) {
  TESSERA_NEED_GPU();
  const auto cfg = tiny_config(0);
  models::Llama<float> h(cfg), h2(cfg);
  Rng rng(21);
  for_each_param(h, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.1); });
  for_each_param(h2, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.1); });
  models::Llama<float, cuda> cast(cfg), kept(cfg);
  for (auto* m : {&cast, &kept}) {
    copy_params(*m, h);
    set_compute_precision(*m, Precision::bf16);
    allocate_grads(*m);
  }
  keep_bf16_weight_copies(kept);
  int64_t copies = 0;
  for_each_param(kept, [&](const std::string&, auto& p) { copies += p.value_bf16.numel() > 0; });
  EXPECT_EQ(copies, 2 * 7 + 1) << "q, k, v, o, gate, up, down per block and the output head";
  train::AdamW<float, cuda> opt_cast({1e-2, 0.9, 0.95, 1e-8, 0.1}), opt_kept({1e-2, 0.9, 0.95, 1e-8, 0.1});
  const int64_t batch = 2, seq = 24, rows = batch * seq;
  const auto ids = random_ids(rows, cfg.vocab_size, 22), targets = random_ids(rows, cfg.vocab_size, 23);
  auto ids_d = upload(ids), targets_d = upload(targets);
  auto step = [&](models::Llama<float, cuda>& m, train::AdamW<float, cuda>& opt) {
    zero_grads(m);
    m.forward(ids_d.data(), batch, seq);
    const double loss = m.loss(targets_d.data());
    m.backward(targets_d.data());
    opt.step(m);
    return loss;
  };
  for (int s = 0; s < 3; ++s) EXPECT_EQ(step(cast, opt_cast), step(kept, opt_kept)) << "step " << s;
  for_each_param(kept, [&](const std::string& name, auto& p) {
    if (p.value_bf16.numel() > 0) {
      EXPECT_TRUE(p.value_bf16_current) << name;
    }
  });
  std::map<std::string, std::vector<float>> want;
  for_each_param(cast, [&](const std::string& name, auto& p) { want[name] = download(p.value); });
  for_each_param(kept,
                 [&](const std::string& name, auto& p) { EXPECT_EQ(download(p.value), want[name]) << name; });
  const auto logits = [&](models::Llama<float, cuda>& m) {
    const Tensor<float, cuda>& l = m.forward(ids_d.data(), batch, seq);
    return download(l);
  };
  const std::vector<float> expected = logits(cast);
  EXPECT_EQ(logits(kept), expected);

  // A master written behind the optimizer's back: the forward still reads the copy ...
  Tensor<float, cuda>& w = kept.lm_head.params.weight.value;
  ops::fill(cuda{}, w.data(), 0.25f, w.numel());
  EXPECT_EQ(logits(kept), expected) << "the forward must read the optimizer's copy";
  // ... until the change is marked: then it casts the master again.
  mark_values_changed(kept);
  EXPECT_NE(logits(kept), expected);
  // copy_params marks by itself: the kept model then computes what the cast model does with the new weights.
  copy_params(kept, h2);
  copy_params(cast, h2);
  EXPECT_EQ(logits(kept), logits(cast));
}

// Megalodon with bf16 compute: its Linears (the gated attention's projections, the FFN, the untied output
// head) run bf16 GEMMs; CEMA, TimestepNorm and the chunk attention stay fp32. One training step against the
// fp32 CPU model. Measured (emulated tensor cores): logits 6.4e-3 of their largest entry, loss 3.5e-4
// relative, gradients at most 2.4e-2; bounds logits 2e-2, loss 5e-3, every gradient 5e-2 (real errors are O(1)).
TEST(CudaMixedPrecision, MegalodonBf16TrainingStepTracksTheFp32Model) {
  TESSERA_NEED_GPU();
  models::MegalodonConfig c;
  c.num_layers = 2, c.model_dim = 32, c.z_dim = 16, c.value_dim = 24, c.num_heads = 2, c.ffn_hidden_dim = 40;
  c.cema_ndim = 4, c.chunk_size = 8, c.vocab_size = 48, c.norm_num_groups = 4;
  models::Megalodon<float> h(c);
  Rng rng(21);
  h.init(rng);
  for_each_param(h, [&](const std::string&, auto& p) {  // signal through the zero-initialised offsets too
    for (auto& v : p.value) v += static_cast<float>(0.05 * rng.normal());
  });
  models::Megalodon<float, cuda> d(c);
  copy_params(d, h);
  set_compute_precision(d, Precision::bf16);
  allocate_grads(h);
  allocate_grads(d);
  const int64_t batch = 2, seq = 16, rows = batch * seq;
  const auto ids = random_ids(rows, c.vocab_size, 22), targets = random_ids(rows, c.vocab_size, 23);
  auto ids_d = upload(ids), targets_d = upload(targets);
  const Tensor<float>& lh = h.forward(ids.data(), batch, seq);
  const Tensor<float, cuda>& ld = d.forward(ids_d.data(), batch, seq);
  const double le = rel_err(download(ld.data(), ld.numel()), lh.data(), lh.numel());
  EXPECT_LE(le, 2e-2) << "logits";
  EXPECT_GT(le, 1e-6) << "logits identical to fp32: the bf16 path was not taken";
  const double loss_h = h.loss(targets.data()), loss_d = d.loss(targets_d.data());
  EXPECT_NEAR(loss_d, loss_h, 5e-3 * loss_h);
  h.backward(targets.data());
  d.backward(targets_d.data());
  double worst = 0;
  std::string worst_name;
  for (const auto& g : tessera::testing::gradient_errors(h, d)) {
    EXPECT_LE(g.err, 5e-2) << g.name;
    if (g.err > worst) worst = g.err, worst_name = g.name;
  }
  std::printf("megalodon bf16: logits %.2e, loss %.6f vs %.6f, worst gradient %.2e (%s)\n", le, loss_d, loss_h,
              worst, worst_name.c_str());
}

// Cached decoding of a Llama model with frozen bf16 weights: each block's norms, projections, SwiGLU and
// residual adds ride in the small products (llama_block_forward_cached), against the same model unfrozen,
// whose decode takes the separate norm / cast + cuBLAS / add route with the same bf16 operands.
// Teacher-forced tokens (2 sequences, then 1; a 6-token prompt, then 10 single-token steps).
// Agreement up to fp32 summation order and an occasional bf16 operand rounding the other way (measured with
// emulated tensor cores: 1.1e-7 of the largest logit); bound 1e-2, while a wrong gain, a missing norm or
// residual is O(1) (checked: the attention fed the MLP norm's gain fails).
TEST(CudaMixedPrecision, FrozenLlamaDecodesLikeTheCastRoute) {
  TESSERA_NEED_GPU();
  const auto cfg = tiny_config(0);
  models::Llama<float> h(cfg);
  Rng rng(77);
  for_each_param(h, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.3); });
  models::Llama<float, cuda> frozen(cfg), cast(cfg);
  copy_params(frozen, h);
  copy_params(cast, h);
  set_compute_precision(frozen, Precision::bf16);
  set_compute_precision(cast, Precision::bf16);
  freeze_bf16_weights(frozen);
  using DL = models::Llama<float, cuda>;
  const int64_t prompt = 6, steps = 10, V = cfg.vocab_size;
  double worst = 0;
  // Two sequences, and one (where q/k/v, RoPE and the cache append are one launch, the prompt included).
  for (const int64_t batch : {int64_t{2}, int64_t{1}}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    std::vector<DL::Cache> fc, cc;
    for (int64_t b = 0; b < batch; ++b) fc.push_back(frozen.make_cache()), cc.push_back(cast.make_cache());
    std::vector<DL::Cache*> fp, cp;
    for (int64_t b = 0; b < batch; ++b) fp.push_back(&fc[b]), cp.push_back(&cc[b]);
    DL::DecodeScratch fs, cs;
    const std::vector<int64_t> tokens = random_ids(batch * (prompt + steps), V, 78);
    for (int64_t t = 0; t <= steps; ++t) {
      const int64_t n = t == 0 ? prompt : 1;
      std::vector<int64_t> in;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t at = b * (prompt + steps) + (t == 0 ? 0 : prompt + t - 1);
        in.insert(in.end(), tokens.begin() + at, tokens.begin() + at + n);
      }
      const auto in_d = upload(in);
      const auto lf =
          download(frozen.forward_cached(in_d.data(), batch, n, fp.data(), fs).data(), batch * n * V);
      const auto lc =
          download(cast.forward_cached(in_d.data(), batch, n, cp.data(), cs).data(), batch * n * V);
      const double e = rel_err(lf, lc.data(), static_cast<int64_t>(lc.size()));
      worst = std::max(worst, e);
      EXPECT_LE(e, 1e-2) << "step " << t;
    }
  }
  std::cout << "[cuda-mixed] frozen Llama decoding vs the cast route: max logits rel err " << worst << "\n";
}

// The bf16-in / bf16-out entry points of Linear (the all-bf16 attention and SwiGLU paths use them) give the
// numbers of the fp32-interface calls bit for bit: forward_to_bf16 = bf16(forward), backward_from_bf16(dy16)
// = backward(float(dy16)) (dx, dW, db), backward_to_bf16 = bf16(backward's dx) with the same dW, db — with a
// bias (whose fp32 add / sum takes the fallback route) and without.
TEST(CudaMixedPrecision, Bf16EntryPointsOfLinearMatchTheFp32Interface) {
  TESSERA_NEED_GPU();
  const int64_t n = 11, in = 40, out = 24;
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    Linear<float, cuda> a, b;
    a.setup(in, out, bias);
    b.setup(in, out, bias);
    const auto w = normals(out * in, 90), bv = normals(out, 91), x = normals(n * in, 92),
               dy = normals(n * out, 93);
    for (auto* l : {&a, &b}) {
      cuda_mem::to_device(l->params.weight.value.data(), w.data(), w.size() * 4);
      if (bias) cuda_mem::to_device(l->params.bias.value.data(), bv.data(), bv.size() * 4);
      allocate_grads(*l);
      set_compute_precision(*l, Precision::bf16);
    }
    // dy exactly representable in bf16, so that backward(float(dy16)) sees the same dy.
    std::vector<float> dy_r(dy.size());
    for (size_t i = 0; i < dy.size(); ++i) dy_r[i] = static_cast<float>(round_bf16(dy[i]));
    const auto xd = upload(x), dyd = upload(dy_r);
    Tensor<bf16, cuda> dy16({n, out});
    ops::cast(cuda{}, dy16.data(), dyd.data(), n * out);
    const TensorView<const float> xv(xd.data(), {n, in}), dyv(dyd.data(), {n, out});
    SeqContext ctx;
    auto bits16 = [](const Tensor<bf16, cuda>& t) {
      std::vector<uint16_t> r;
      for (const bf16 v : download(t.data(), t.numel())) r.push_back(v.bits);
      return r;
    };
    auto cast16 = [&](const Tensor<float, cuda>& t) {
      Tensor<bf16, cuda> c(t.shape());
      ops::cast(cuda{}, c.data(), t.data(), t.numel());
      return bits16(c);
    };
    auto grads = [&](Linear<float, cuda>& l) {
      auto g = download(l.params.weight.grad.data(), out * in);
      if (bias) {
        const auto gb = download(l.params.bias.grad.data(), out);
        g.insert(g.end(), gb.begin(), gb.end());
      }
      return g;
    };
    Linear<float, cuda>::Saved sa, sb;
    Tensor<float, cuda> y, dx_a, dx_b;
    Tensor<bf16, cuda> y16, dx16;
    a.forward(ctx, xv, y, sa);
    b.forward_to_bf16(ctx, xv, y16, sb);
    EXPECT_EQ(bits16(y16), cast16(y)) << "forward_to_bf16";
    a.backward(ctx, dyv, dx_a, sa);
    b.backward_from_bf16(ctx, dy16.data(), dx_b, sb);
    EXPECT_EQ(download(dx_b.data(), dx_b.numel()), download(dx_a.data(), dx_a.numel()))
        << "backward_from_bf16 dx";
    EXPECT_EQ(grads(b), grads(a)) << "backward_from_bf16 dW, db";
    a.backward(ctx, dyv, dx_a, sa);
    b.backward_to_bf16(ctx, dyv, dx16, sb);
    EXPECT_EQ(bits16(dx16), cast16(dx_a)) << "backward_to_bf16 dx";
    EXPECT_EQ(grads(b), grads(a)) << "backward_to_bf16 dW, db (accumulated twice)";
  }
}
