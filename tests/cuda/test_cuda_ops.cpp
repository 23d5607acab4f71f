// CPU vs CUDA parity for the ops of tessera::cuda: the CPU implementation (tessera::ops with cpu{}) and the
// CUDA one run on the same random fp32 inputs and must agree to float rounding. Every test skips itself
// (with a message) when no CUDA device is visible, so this binary passes on machines without a GPU.
//
// Tolerance: |gpu - cpu| <= kRtol * |cpu| + kRtol * max|cpu| (elementwise). The two sides sum in different
// orders (cuBLAS vs Eigen/OpenBLAS tiles, CUB tree reductions vs Eigen's vectorised sums), so each element
// differs by a few ulp of the partial sums; the second term keeps entries that cancel to near zero from
// being judged by their own tiny magnitude. kRtol = 1e-5 is ~80 ulp of fp32: loose enough for sums of a
// few thousand terms, tight enough that any indexing or transpose mistake fails by orders of magnitude.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/launch.hpp"  // internal: the bound of the tuned cuBLASLt GEMMs
#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/softmax.hpp"

using namespace tessera;

using tessera::testing::download;
using tessera::testing::upload;

namespace {

constexpr double kRtol = 1e-5;

class Cuda : public tessera::testing::CudaTest {};

using Host = std::vector<float>;

Host randn(int64_t n, Rng& rng, double scale = 1.0) {
  Host v(static_cast<size_t>(n));
  tessera::testing::fill_normal(v.data(), n, rng, scale);
  return v;
}

void expect_close(const std::string& what, const Host& gpu, const Host& ref, double rtol = kRtol) {
  tessera::testing::expect_elementwise_close(what, gpu, ref, rtol);
}

}  // namespace

// ---- memory ------------------------------------------------------------------------------------------

TEST_F(Cuda, MemoryRoundTripCloneAndZero) {
  Rng rng(1);
  const Host h = randn(1000, rng);
  Tensor<float, cuda> d = upload(h);
  EXPECT_EQ(download(d), h);
  Tensor<float, cuda> c = d.clone();  // device -> device
  d.zero();
  EXPECT_EQ(download(c), h);
  EXPECT_EQ(download(d), Host(1000, 0.0f));
}

TEST_F(Cuda, AllocationFailureIsATesseraError) {
  try {
    Allocator<cuda>::allocate(size_t(1) << 62);  // 4 EiB
    ADD_FAILURE() << "expected tessera::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cudaMalloc"), std::string::npos) << e.what();
  }
  // The failure is not sticky: the device stays usable.
  Tensor<float, cuda> t({4});
  EXPECT_EQ(download(t), Host(4, 0.0f));
}

// Freed tensors stay cached in the device's memory pool (cuda/memory.cu); an allocation that only fits once
// that cache is handed back must still succeed: 60 % of the free memory is allocated and freed (cached), then
// 70 % is asked for.
TEST_F(Cuda, CachedPoolMemoryIsHandedBackWhenAnAllocationNeedsIt) {
#ifdef TESSERA_CUDA_EMU
  GTEST_SKIP() << "the CPU emulation of the runtime has no device memory limit";
#endif
  size_t free_b = 0, total_b = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
  const size_t first = free_b / 10 * 6, second = free_b / 10 * 7;
  Allocator<cuda>::deallocate(Allocator<cuda>::allocate(first));
  void* p = nullptr;
  EXPECT_NO_THROW(p = Allocator<cuda>::allocate(second));
  EXPECT_NE(p, nullptr);
  Allocator<cuda>::deallocate(p);
  Tensor<float, cuda> t({4});  // and the device stays usable
  EXPECT_EQ(download(t), Host(4, 0.0f));
}

// ---- gemm --------------------------------------------------------------------------------------------

// All transposes, padded leading dimensions, alpha and beta, odd sizes that are not multiples of any tile.
TEST_F(Cuda, GemmAllTransposesMatchCpu) {
  Rng rng(2);
  const int64_t M = 37, N = 29, K = 53, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
      const int64_t lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
      const Host A = randn(arows * lda, rng), B = randn(brows * ldb, rng);
      Host C = randn(M * ldc, rng);
      auto dA = upload(A), dB = upload(B), dC = upload(C);
      ops::gemm(cpu{}, ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      ops::gemm(cuda{}, ta, tb, M, N, K, 0.75f, dA.data(), lda, dB.data(), ldb, 0.5f, dC.data(), ldc);
      // Padding columns of C are compared too: both sides must leave them untouched.
      expect_close("gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), download(dC), C);
    }
}

// Strided batches with beta = 0 over a NaN-filled C (beta = 0 must overwrite, not scale).
TEST_F(Cuda, GemmBatchedMatchesCpu) {
  Rng rng(3);
  const int64_t M = 16, N = 24, K = 40, batch = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = ta ? M : K, ldb = tb ? K : N, sa = M * K + 5, sb = K * N + 7, sc = M * N + 1;
      const Host A = randn(sa * batch, rng), B = randn(sb * batch, rng);
      Host C(static_cast<size_t>(sc * batch), std::numeric_limits<float>::quiet_NaN());
      for (int64_t i = 0; i < batch; ++i) C[static_cast<size_t>(i * sc + M * N)] = 7.0f;  // gaps stay as is
      auto dA = upload(A), dB = upload(B), dC = upload(C);
      ops::gemm_batched(cpu{}, ta, tb, M, N, K, 1.0f, A.data(), lda, sa, B.data(), ldb, sb, 0.0f, C.data(), N,
                        sc, batch);
      ops::gemm_batched(cuda{}, ta, tb, M, N, K, 1.0f, dA.data(), lda, sa, dB.data(), ldb, sb, 0.0f,
                        dC.data(), N, sc, batch);
      expect_close("gemm_batched ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), download(dC), C);
    }
}

// K = 0 gives C = beta C; M = 0 is a no-op; a too-small leading dimension is a clear error.
TEST_F(Cuda, GemmEdgeCases) {
  Host C = {1, 2, 3, 4};
  auto dC = upload(C);
  ops::gemm(cuda{}, false, false, 2, 2, 0, 1.0f, nullptr, 0, nullptr, 2, 0.5f, dC.data(), 2);
  EXPECT_EQ(download(dC), (Host{0.5f, 1, 1.5f, 2}));
  ops::gemm(cuda{}, false, false, 0, 2, 3, 1.0f, nullptr, 3, nullptr, 2, 0.0f, dC.data(), 2);
  EXPECT_EQ(download(dC), (Host{0.5f, 1, 1.5f, 2}));
  try {
    ops::gemm(cuda{}, false, false, 2, 2, 3, 1.0f, dC.data(), 2, dC.data(), 2, 0.0f, dC.data(), 2);
    ADD_FAILURE() << "expected tessera::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lda=2"), std::string::npos) << e.what();
  }
}

// bf16 operands through cuBLASLt (cuda/gemm.cu): the tuned path (its size bound lowered to 0 here, so these
// small products take it: heuristic candidates timed once per shape) and D = alpha op(A) op(B) + beta C with
// C and D distinct (gemm_add), with odd sizes and padded rows (alignments below 16 bytes). Reference: the
// same bf16 values multiplied in double on the host; fp32 accumulation of exact bf16 products stays within
// 1e-5.
TEST_F(Cuda, GemmBf16TunedAndSeparateOutputMatchCpu) {
  struct Bound {  // restores the default bound when the test ends
    double old = cuda_detail::set_gemm_tuned_min_macs(0.0);
    ~Bound() { cuda_detail::set_gemm_tuned_min_macs(old); }
  } bound;
  Rng rng(21);
  auto to_bf16 = [](const Host& h) {
    std::vector<bf16> r(h.size());
    for (size_t i = 0; i < h.size(); ++i) r[i] = bf16(h[i]);
    return r;
  };
  auto upload16 = [](const std::vector<bf16>& h) {
    Tensor<bf16, cuda> t;
    t.resize_uninit({static_cast<int64_t>(h.size())});
    cuda_mem::to_device(t.data(), h.data(), h.size() * sizeof(bf16));
    return t;
  };
  const int64_t M = 37, N = 29, K = 53, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const std::string tag = " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb);
      const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
      const int64_t lda = acols + pad, ldb = bcols + pad, ldc = N + pad, ldd = N + 2 * pad + 1;
      const std::vector<bf16> A = to_bf16(randn(arows * lda, rng)), B = to_bf16(randn(brows * ldb, rng));
      const Host C = randn(M * ldc, rng), D0 = randn(M * ldd, rng);
      const float alpha = 0.75f, beta = 0.5f;
      // Reference: D = alpha op(A) op(B) + beta C on the rows' first N entries; padding left as it was.
      auto reference = [&](const Host& c_in, int64_t ldc_in, Host out, int64_t ld_out, float b) {
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double acc = 0;
            for (int64_t l = 0; l < K; ++l)
              acc += double(float(A[size_t(ta ? l * lda + i : i * lda + l)])) *
                     double(float(B[size_t(tb ? j * ldb + l : l * ldb + j)]));
            out[size_t(i * ld_out + j)] = float(alpha * acc + b * double(c_in[size_t(i * ldc_in + j)]));
          }
        return out;
      };
      auto dA = upload16(A), dB = upload16(B);
      {  // in place, tuned: C = alpha op(A) op(B) + beta C
        auto dC = upload(C);
        ops::gemm(cuda{}, ta, tb, M, N, K, alpha, dA.data(), lda, dB.data(), ldb, beta, dC.data(), ldc);
        expect_close("tuned gemm" + tag, download(dC), reference(C, ldc, C, ldc, beta));
      }
      {  // C -> D, distinct, different row strides; C is left as it was
        auto dC = upload(C), dD = upload(D0);
        ops::gemm_add(cuda{}, ta, tb, M, N, K, alpha, dA.data(), lda, dB.data(), ldb, beta, dC.data(), ldc,
                      dD.data(), ldd);
        expect_close("gemm_add C->D" + tag, download(dD), reference(C, ldc, D0, ldd, beta));
        EXPECT_EQ(download(dC), C) << "gemm_add must not write C" << tag;
      }
      {  // C == D through gemm_add
        auto dC = upload(C);
        ops::gemm_add(cuda{}, ta, tb, M, N, K, alpha, dA.data(), lda, dB.data(), ldb, beta, dC.data(), ldc,
                      dC.data(), ldc);
        expect_close("gemm_add C==D" + tag, download(dC), reference(C, ldc, C, ldc, beta));
      }
      {  // beta = 0 with C -> D: C is not read (NaN there must not reach D)
        const Host nan_c(C.size(), std::numeric_limits<float>::quiet_NaN());
        auto dC = upload(nan_c), dD = upload(D0);
        ops::gemm_add(cuda{}, ta, tb, M, N, K, alpha, dA.data(), lda, dB.data(), ldb, 0.0f, dC.data(), ldc,
                      dD.data(), ldd);
        expect_close("gemm_add beta=0" + tag, download(dD),
                     reference(Host(C.size(), 0.f), ldc, D0, ldd, 0.f));
      }
    }
  try {  // C == D needs one row stride
    Tensor<float, cuda> c({8 * 8});
    Tensor<bf16, cuda> a({8 * 8});
    ops::gemm_add(cuda{}, false, false, 4, 4, 4, 1.f, a.data(), 8, a.data(), 8, 1.f, c.data(), 8, c.data(),
                  6);
    ADD_FAILURE() << "expected tessera::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ldd=6"), std::string::npos) << e.what();
  }
}

// ---- linear ------------------------------------------------------------------------------------------

TEST_F(Cuda, LinearForwardBackwardMatchCpu) {
  Rng rng(4);
  const int64_t N = 19, in = 33, out = 21;
  const Host x = randn(N * in, rng), w = randn(out * in, rng, 0.2), dy = randn(N * out, rng);
  for (bool with_bias : {false, true}) {
    SCOPED_TRACE(with_bias ? "with bias" : "no bias");
    const Host b = randn(out, rng);
    Host y(static_cast<size_t>(N * out)), dx(static_cast<size_t>(N * in)), dw = randn(out * in, rng),
        db = randn(out, rng);
    auto d_x = upload(x), d_w = upload(w), d_dy = upload(dy), d_y = upload(y), d_dx = upload(dx),
         d_dw = upload(dw), d_b = upload(b), d_db = upload(db);
    const float* bias = with_bias ? b.data() : nullptr;
    const float* d_bias = with_bias ? d_b.data() : nullptr;

    ops::linear_forward(cpu{}, y.data(), x.data(), w.data(), bias, N, in, out);
    ops::linear_forward(cuda{}, d_y.data(), d_x.data(), d_w.data(), d_bias, N, in, out);
    expect_close("linear y", download(d_y), y);

    // dw and db start non-zero: backward accumulates into them.
    ops::linear_backward(cpu{}, dx.data(), dw.data(), with_bias ? db.data() : nullptr, dy.data(), x.data(), w.data(),
                         N, in, out);
    ops::linear_backward(cuda{}, d_dx.data(), d_dw.data(), with_bias ? d_db.data() : nullptr, d_dy.data(),
                         d_x.data(), d_w.data(), N, in, out);
    expect_close("linear dx", download(d_dx), dx);
    expect_close("linear dw", download(d_dw), dw);
    expect_close("linear db", download(d_db), db);
  }
}

// ---- rmsnorm -----------------------------------------------------------------------------------------

// Both kernel families: vectorised rows (D a multiple of 4 up to 8192; a warp or several per row, several
// rows per block for short rows) and the row-wise kernels (warp per row for D <= 1024, block per row above),
// which take every other D (not a multiple of 4, above 8192) and all rows when the vectorised ones are
// switched off. N large enough that dw is reduced over several slots, and N not a multiple of a block's rows.
TEST_F(Cuda, RmsNormForwardBackwardMatchCpu) {
  Rng rng(5);
  struct Case {
    int64_t N, D;
    bool affine, in_place;  // in_place: CUDA backward overwrites dy with dx (allowed there, not on the CPU)
    bool vectorised;        // switched on (the kernels still fall back to row-wise where D does not fit)
  };
  // clang-format off
  for (const Case c : {Case{5, 64, true, false, true}, Case{37, 1000, true, true, true},
                       Case{300, 96, true, false, true}, Case{9, 3000, true, true, true},
                       Case{130, 2048, false, false, true}, Case{700, 40, true, true, true},
                       Case{3, 768, true, false, true}, Case{1100, 4096, true, true, true},
                       Case{2, 8192, true, false, true}, Case{3, 8196, true, true, true},
                       Case{41, 1001, true, false, true}, Case{66, 30, true, true, true},
                       Case{37, 1000, true, true, false}, Case{300, 96, true, false, false},
                       Case{130, 2048, false, false, false}, Case{700, 40, true, true, false}}) {
    // clang-format on
    const bool previous = cuda_detail::set_rmsnorm_vectorised(c.vectorised);
    struct Restore {
      bool on;
      ~Restore() { cuda_detail::set_rmsnorm_vectorised(on); }
    } restore{previous};
    const std::string tag = "N=" + std::to_string(c.N) + " D=" + std::to_string(c.D) +
                            (c.in_place ? " in place" : "") + (c.vectorised ? "" : " row-wise");
    const int64_t n = c.N * c.D;
    const Host x = randn(n, rng, 2.0), dy = randn(n, rng);
    Host w = c.affine ? randn(c.D, rng) : Host{};
    for (float& v : w) v += 1.0f;
    const float* wp = c.affine ? w.data() : nullptr;
    Host y(static_cast<size_t>(n)), rstd(static_cast<size_t>(c.N)), dx(static_cast<size_t>(n));
    Host dw = randn(c.D, rng);  // accumulated into
    auto d_x = upload(x), d_dy = upload(dy), d_w = upload(w), d_y = upload(y), d_rstd = upload(rstd);
    auto d_dx = upload(c.in_place ? dy : dx), d_dw = upload(dw);
    const float* d_wp = c.affine ? d_w.data() : nullptr;
    float* d_dw_arg = c.affine ? d_dw.data() : nullptr;

    ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), wp, c.N, c.D, 1e-5);
    ops::rmsnorm_forward(cuda{}, d_y.data(), d_rstd.data(), d_x.data(), d_wp, c.N, c.D, 1e-5);
    expect_close("rmsnorm y " + tag, download(d_y), y);
    expect_close("rmsnorm rstd " + tag, download(d_rstd), rstd);

    ops::rmsnorm_backward(cpu{}, dx.data(), c.affine ? dw.data() : nullptr, dy.data(), x.data(), wp,
                          rstd.data(), c.N, c.D);
    ops::rmsnorm_backward(cuda{}, d_dx.data(), d_dw_arg, c.in_place ? d_dx.data() : d_dy.data(), d_x.data(),
                          d_wp, d_rstd.data(), c.N, c.D);
    expect_close("rmsnorm dx " + tag, download(d_dx), dx);
    expect_close("rmsnorm dw " + tag, download(d_dw), dw);

    // With a residual gradient (PreNormResidual's skip branch): exactly the plain dx plus it, added once.
    const Host res = randn(n, rng);
    auto d_res = upload(res), d_dx_plain = upload(dx), d_dx_res = upload(dx);
    ops::rmsnorm_backward(cuda{}, d_dx_plain.data(), nullptr, d_dy.data(), d_x.data(), d_wp, d_rstd.data(),
                          c.N, c.D);
    ops::rmsnorm_backward(cuda{}, d_dx_res.data(), nullptr, d_dy.data(), d_x.data(), d_wp, d_rstd.data(), c.N,
                          c.D, d_res.data());
    const Host plain = download(d_dx_plain), with_res = download(d_dx_res);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(with_res[static_cast<size_t>(i)], plain[static_cast<size_t>(i)] + res[static_cast<size_t>(i)])
          << "rmsnorm dx + residual " << tag << " [" << i << "]";
    // ... also accumulated in place (dx is the residual).
    auto d_acc = upload(res);
    ops::rmsnorm_backward(cuda{}, d_acc.data(), nullptr, d_dy.data(), d_x.data(), d_wp, d_rstd.data(), c.N,
                          c.D, d_acc.data());
    const Host acc = download(d_acc);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(acc[static_cast<size_t>(i)], with_res[static_cast<size_t>(i)])
          << "rmsnorm dx += in place " << tag << " [" << i << "]";

    // bf16 output: each element is the fp32 output rounded once, and rstd is the same.
    Tensor<bf16, cuda> d_y16({n});
    auto d_rstd16 = upload(rstd);
    ops::rmsnorm_forward(cuda{}, d_y.data(), d_rstd.data(), d_x.data(), d_wp, c.N, c.D, 1e-5);
    ops::rmsnorm_forward(cuda{}, d_y16.data(), d_rstd16.data(), d_x.data(), d_wp, c.N, c.D, 1e-5);
    std::vector<bf16> y16(static_cast<size_t>(n));
    cuda_mem::to_host(y16.data(), d_y16.data(), y16.size() * sizeof(bf16));
    const Host y32 = download(d_y);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(y16[static_cast<size_t>(i)].bits, bf16(y32[static_cast<size_t>(i)]).bits)
          << "rmsnorm bf16 y " << tag << " [" << i << "]";
    EXPECT_EQ(download(d_rstd16), download(d_rstd)) << "rmsnorm bf16 rstd " << tag;
  }
}

namespace {
/// dw of one backward, run twice: bitwise identical.
void rmsnorm_dw_twice_is_identical() {
  Rng rng(6);
  const int64_t N = 4096, D = 256;
  const Host x = randn(N * D, rng), dy = randn(N * D, rng), w = randn(D, rng);
  Host rstd(static_cast<size_t>(N)), y(static_cast<size_t>(N * D));
  auto d_x = upload(x), d_dy = upload(dy), d_w = upload(w), d_y = upload(y), d_rstd = upload(rstd);
  ops::rmsnorm_forward(cuda{}, d_y.data(), d_rstd.data(), d_x.data(), d_w.data(), N, D, 1e-6);
  Host first;
  for (int run = 0; run < 2; ++run) {
    Tensor<float, cuda> d_dw({D});
    ops::rmsnorm_backward(cuda{}, nullptr, d_dw.data(), d_dy.data(), d_x.data(), d_w.data(), d_rstd.data(), N,
                          D);
    if (run == 0)
      first = download(d_dw);
    else
      EXPECT_EQ(download(d_dw), first);
  }
}
}  // namespace

// dw is reduced without atomics in a fixed order: two runs give bitwise identical results.
TEST_F(Cuda, RmsNormDwIsDeterministic) {
  for (const bool vectorised : {true, false}) {
    const bool previous = cuda_detail::set_rmsnorm_vectorised(vectorised);
    SCOPED_TRACE(vectorised ? "vectorised" : "row-wise");
    rmsnorm_dw_twice_is_identical();
    cuda_detail::set_rmsnorm_vectorised(previous);
  }
}

// ---- softmax -----------------------------------------------------------------------------------------

// Includes D = 1, both kernel shapes around the 1024 switch, large logits (the max must be subtracted) and
// in-place operation (y aliasing x, dx aliasing dy), which the CPU version allows too.
TEST_F(Cuda, SoftmaxForwardBackwardMatchCpu) {
  Rng rng(7);
  for (const int64_t D : {1, 50, 1024, 1025, 5000}) {
    const int64_t N = 13, n = N * D;
    const std::string tag = "D=" + std::to_string(D);
    const Host x = randn(n, rng, 30.0), dy = randn(n, rng);
    Host y(static_cast<size_t>(n)), dx(static_cast<size_t>(n));
    ops::softmax_forward(cpu{}, y.data(), x.data(), N, D);
    ops::softmax_backward(cpu{}, dx.data(), dy.data(), y.data(), N, D);

    auto d_y = upload(x);  // in place: y overwrites x
    ops::softmax_forward(cuda{}, d_y.data(), d_y.data(), N, D);
    const Host gy = download(d_y);
    expect_close("softmax y " + tag, gy, y);
    for (int64_t r = 0; r < N; ++r) {
      double s = 0;
      for (int64_t i = 0; i < D; ++i) s += gy[static_cast<size_t>(r * D + i)];
      EXPECT_NEAR(s, 1.0, 1e-5) << tag << " row " << r;
    }

    auto d_dx = upload(dy);         // in place: dx overwrites dy
    const auto d_yref = upload(y);  // same y on both sides, so backward is compared on its own
    ops::softmax_backward(cuda{}, d_dx.data(), d_dx.data(), d_yref.data(), N, D);
    expect_close("softmax dx " + tag, download(d_dx), dx);
  }
}

TEST_F(Cuda, BadSizesAreTesseraErrors) {
  Tensor<float, cuda> t({8});
  EXPECT_THROW(ops::softmax_forward(cuda{}, t.data(), t.data(), 2, 0), Error);
  EXPECT_THROW(ops::rmsnorm_forward(cuda{}, t.data(), nullptr, t.data(), nullptr, -1, 4, 1e-5), Error);
}
