// Decoding-size products with bf16 weights: y_g = bf16(x) W_gᵀ (+ b_g) for M <= 8 rows of fp32 x and up to
// three bf16 weights sharing x (q/k/v), and SwiGLU's silu(bf16(x) W_gateᵀ) * (bf16(x) W_upᵀ) in the same
// launch as its two products. Optionally fused around them: the RMSNorm in front (x normalised row by row
// before its rounding, as rmsnorm_forward_kernel computes it) and a residual added to the output.
//
// Why by hand: when one token is decoded, a Linear is a matrix-vector product bound by the weight bytes, and
// the cuBLAS route costs two launches per weight (a cast of x to bf16, then the GEMM) plus the elementwise
// kernels around it (SwiGLU, and one GEMM per projection of the same input) — at a few microseconds each,
// the launches, not the bytes, set the speed of a decoding step. Here one warp computes C output columns for
// all M rows: each lane walks the reduction dimension 8 elements at a time with one 16-byte load per weight
// row (the rows are read exactly once, coalesced), rounds its 8 x values per row to bf16 in registers (the
// same operands as the cuBLAS route: x rounded once, fp32 products and sums), and a warp shuffle sums the
// lanes. Only the summation order differs from cuBLAS.
#include <algorithm>
#include <cstdint>

#include "core_util.cuh"
#include "launch_core.hpp"
#include "pdl.cuh"

namespace tessera::cuda_detail {
namespace {

constexpr int kWarps = 8;  // warps per block (256 threads)

struct SmallGroup {
  const uint16_t* w;      // [n, K] bf16
  const uint16_t* w_up;   // gated: SwiGLU's up weight [n, K] (w is the gate's)
  const float* bias;      // [n] or null (not gated)
  const float* residual;  // [M, n] or null: y = residual + product (may alias y), added residual_adds times
  int residual_adds;
  float* y;  // [M, n]
  int64_t n;
  int64_t tiles_end;  // cumulative warp tiles up to and including this group
};
struct SmallArgs {
  SmallGroup g[kSmallLinearMaxGroups];
  int groups;
  const float* x;  // [M, K] fp32
  int64_t K;
  const float* norm_w;  // RMSNorm gain [K], or null: no normalisation
  double norm_eps;
  SmallLinearEpilogue
      epi;  // epi.groups > 0: the first epi.groups outputs are rotated (C == 2: a pair a warp)
};

__device__ inline float lo_bf16(uint32_t w) {
  return __uint_as_float(w << 16);
}
__device__ inline float hi_bf16(uint32_t w) {
  return __uint_as_float(w & 0xffff0000u);
}
__device__ inline float round_bf16(float f) {
  return bf16_to_float(bf16_bits(f));
}

/// acc += dot(xs[0..8), the 8 bf16 of wv).
__device__ inline float dot8(const float* xs, uint4 wv, float acc) {
  acc = fmaf(xs[0], lo_bf16(wv.x), acc);
  acc = fmaf(xs[1], hi_bf16(wv.x), acc);
  acc = fmaf(xs[2], lo_bf16(wv.y), acc);
  acc = fmaf(xs[3], hi_bf16(wv.y), acc);
  acc = fmaf(xs[4], lo_bf16(wv.z), acc);
  acc = fmaf(xs[5], hi_bf16(wv.z), acc);
  acc = fmaf(xs[6], lo_bf16(wv.w), acc);
  acc = fmaf(xs[7], hi_bf16(wv.w), acc);
  return acc;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// One warp: C columns of one group (col[], below), all M rows. Gated: acc = gate products, acc_up = up
/// products.
template <int M, int C, bool Gated>
__global__ void __launch_bounds__(kWarps * 32) linear_small_kernel(SmallArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  pdl_launch_dependents();  // the next kernel may start its own weight loads (cuda/pdl.cuh)
  int g = 0;
  while (g + 1 < a.groups && tile >= a.g[g].tiles_end) ++g;
  if (tile >= a.g[g].tiles_end) return;  // the whole warp: the tile is per warp
  const SmallGroup grp = a.g[g];
  const int64_t t = tile - (g > 0 ? a.g[g - 1].tiles_end : 0), K = a.K;
  // The warp's output columns: C consecutive ones, or for a rotated output one RoPE pair (C == 2) — columns
  // 2i, 2i + 1 of a head (interleaved) or i, i + Dh/2 (halves), i the pair's index in its head.
  const bool rotated = C == 2 && g < a.epi.groups;
  const int64_t half = a.epi.head_dim / 2;
  int64_t col[C];
#pragma unroll
  for (int c = 0; c < C; ++c) col[c] = t * C + c;
  if (rotated && !a.epi.interleaved) {
    col[0] = t / half * a.epi.head_dim + t % half;
    col[C - 1] = col[0] + half;
  }

  // Each lane reads 8 elements of every weight row per chunk, chunk j at k = lane * 8 + 256 j. U chunks are
  // loaded before any is used: one 16-byte load in flight per lane and weight row is far too little to cover
  // HBM latency at decoding grid sizes (a 2048 x 2048 product has 2048 warps, ~16 per SM). Per lane the sums
  // still run over its chunks in order, so U does not change the results. The first U chunks load before
  // pdl_wait(): weights are no other kernel's output, so under PDL they stream in while the kernel before
  // (which wrote x) finishes.
  constexpr int U = M <= 2 ? 4 : M <= 4 ? 2 : 1;
  constexpr int64_t kStep = 32 * 8 * U;
  uint4 wv[U][C], uv[U][C];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * 32 * 8;
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const bool in = col[c] < grp.n && k < K;
        wv[u][c] = in ? *reinterpret_cast<const uint4*>(grp.w + col[c] * K + k) : make_uint4(0, 0, 0, 0);
        if constexpr (Gated)
          uv[u][c] = in ? *reinterpret_cast<const uint4*>(grp.w_up + col[c] * K + k) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  int64_t k0 = lane * 8;
  load(k0);
  pdl_wait();  // x, the norm gain's input and the outputs belong to the kernels before this one
  if (tile == 0 && a.epi.seg_dst && lane < M) a.epi.seg_dst[lane] = a.epi.seg_src ? a.epi.seg_src[lane] : 0;

  // RMSNorm in front: each warp computes the M rows' 1/rms itself (M * K reads, next to the weights' C * K).
  float rstd[M];
#pragma unroll
  for (int r = 0; r < M; ++r) rstd[r] = 1.f;
  if (a.norm_w) {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float ss = 0.f;
#pragma unroll 4
      for (int64_t k = lane * 4; k < K; k += 32 * 4) {  // K % 8 == 0, x 16-byte aligned
        const float4 v = *reinterpret_cast<const float4*>(a.x + r * K + k);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
      ss = warp_sum(ss);
      rstd[r] = static_cast<float>(1.0 / sqrt(static_cast<double>(ss) / static_cast<double>(K) + a.norm_eps));
    }
  }

  float acc[M][C], acc_up[M][C];
#pragma unroll
  for (int r = 0; r < M; ++r)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[r][c] = acc_up[r][c] = 0.f;

  for (;;) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * 32 * 8;
      if (k >= K) break;
      float g[8] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f};
      if (a.norm_w) {
        const float4 g0 = *reinterpret_cast<const float4*>(a.norm_w + k);
        const float4 g1 = *reinterpret_cast<const float4*>(a.norm_w + k + 4);
        g[0] = g0.x, g[1] = g0.y, g[2] = g0.z, g[3] = g0.w, g[4] = g1.x, g[5] = g1.y, g[6] = g1.z,
        g[7] = g1.w;
      }
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const float4 p = *reinterpret_cast<const float4*>(a.x + r * K + k);
        const float4 q = *reinterpret_cast<const float4*>(a.x + r * K + k + 4);
        const float v[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
        float xs[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) xs[e] = round_bf16(a.norm_w ? v[e] * rstd[r] * g[e] : v[e]);
#pragma unroll
        for (int c = 0; c < C; ++c) {
          acc[r][c] = dot8(xs, wv[u][c], acc[r][c]);
          if constexpr (Gated) acc_up[r][c] = dot8(xs, uv[u][c], acc_up[r][c]);
        }
      }
    }
    k0 += kStep;
    if (k0 >= K) break;
    load(k0);
  }

  if constexpr (C == 2 && !Gated) {
    if (rotated) {  // bias, then the rotation of the pair (as rope_qk_kernel: angle in double, fp32 products)
      const int64_t i = a.epi.interleaved ? (col[0] % a.epi.head_dim) / 2 : t % half;
      const double inv_freq =
          pow(a.epi.theta, -2.0 * static_cast<double>(i) / static_cast<double>(a.epi.head_dim));
#pragma unroll
      for (int r = 0; r < M; ++r) {
        float va = warp_sum(acc[r][0]), vb = warp_sum(acc[r][1]);
        if (lane == r) {
          if (grp.bias) va += grp.bias[col[0]], vb += grp.bias[col[1]];
          double sd, cd;
          sincos(static_cast<double>(a.epi.positions[r]) * inv_freq, &sd, &cd);
          const float cs = static_cast<float>(cd), sn = static_cast<float>(sd);
          grp.y[r * grp.n + col[0]] = va * cs - vb * sn;
          grp.y[r * grp.n + col[1]] = va * sn + vb * cs;
        }
      }
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r)
#pragma unroll
    for (int c = 0; c < C; ++c) {
      float v = warp_sum(acc[r][c]);
      if constexpr (Gated) {
        // gate and up rounded to bf16 first, as the all-bf16 SwiGlu's GEMMs write them (forward_to_bf16).
        const float u = round_bf16(warp_sum(acc_up[r][c]));
        v = round_bf16(v);
        v = v / (1.f + expf(-v)) * u;  // as swiglu_forward_kernel
      }
      if (lane == (r * C + c) % 32 && col[c] < grp.n) {
        if constexpr (!Gated) {
          if (grp.bias) v += grp.bias[col[c]];
        }
        if (grp.residual) {
          const float res = grp.residual[r * grp.n + col[c]];
          for (int n = 0; n < grp.residual_adds; ++n) v = res + v;
        }
        grp.y[r * grp.n + col[c]] = v;
      }
    }
}

template <int M, int C, bool Gated>
void launch(const SmallArgs& a) {
  const int64_t tiles = a.g[a.groups - 1].tiles_end;
  const unsigned blocks = static_cast<unsigned>((tiles + kWarps - 1) / kWarps);
  launch_pdl(linear_small_kernel<M, C, Gated>, dim3(blocks), dim3(kWarps * 32), 0, a);
  if constexpr (Gated)
    TESSERA_CUDA_CHECK_LAUNCH("swiglu_small_kernel");
  else
    TESSERA_CUDA_CHECK_LAUNCH("linear_small_kernel");
}

/// Columns per warp: enough warps to cover the SMs several times, and at most 2 * M * C accumulators.
int columns_per_warp(int64_t total_cols, int M, bool gated) {
  int c = total_cols >= 16384 ? 4 : total_cols >= 4096 ? 2 : 1;
  if (M > 4 || gated) c = std::min(c, 2);
  if (M > 4 && gated) c = 1;
  return c;
}

template <int C, bool Gated>
void dispatch_rows(int M, const SmallArgs& a) {
  switch (M) {
    case 1:
      return launch<1, C, Gated>(a);
    case 2:
      return launch<2, C, Gated>(a);
    case 3:
      return launch<3, C, Gated>(a);
    case 4:
      return launch<4, C, Gated>(a);
    case 5:
      return launch<5, C, Gated>(a);
    case 6:
      return launch<6, C, Gated>(a);
    case 7:
      return launch<7, C, Gated>(a);
    default:
      return launch<8, C, Gated>(a);
  }
}

void run(SmallArgs& a, int64_t rows, bool gated, const char* op) {
  TESSERA_CHECK(rows >= 1 && rows <= kSmallLinearMaxRows, op, "(cuda): ", rows, " rows (1..",
                kSmallLinearMaxRows, " supported)");
  const int M = static_cast<int>(rows);
  TESSERA_CHECK(small_linear_supported(a.x, a.K), op, "(cuda): K=", a.K,
                " must be a positive multiple of 8 and x 16-byte aligned");
  TESSERA_CHECK(!a.norm_w || reinterpret_cast<uintptr_t>(a.norm_w) % 16 == 0, op,
                "(cuda): the norm weight must be 16-byte aligned");
  int64_t total = 0;
  for (int g = 0; g < a.groups; ++g) total += a.g[g].n;
  const int C = a.epi.groups > 0 ? 2 : columns_per_warp(total, M, gated);
  if (a.epi.groups > 0) {
    TESSERA_CHECK(!gated && a.epi.groups <= a.groups && a.epi.positions && a.epi.head_dim > 0 &&
                      a.epi.head_dim % 2 == 0 && a.epi.theta > 0,
                  op, "(cuda): RoPE needs positions, an even head dimension and theta > 0");
    for (int g = 0; g < a.epi.groups; ++g)
      TESSERA_CHECK(a.g[g].n % a.epi.head_dim == 0 && !a.g[g].residual, op, "(cuda): rotated output ", g,
                    " must be whole heads without a residual");
  }
  int64_t tiles = 0;
  for (int g = 0; g < a.groups; ++g) {
    const SmallGroup& s = a.g[g];
    TESSERA_CHECK(s.n > 0 && s.w && s.y && (!gated || s.w_up), op, "(cuda): group ", g, " is empty");
    TESSERA_CHECK(reinterpret_cast<uintptr_t>(s.w) % 16 == 0 &&
                      (!gated || reinterpret_cast<uintptr_t>(s.w_up) % 16 == 0),
                  op, "(cuda): weights must be 16-byte aligned");
    tiles += (s.n + C - 1) / C;
    a.g[g].tiles_end = tiles;
  }
  TESSERA_CHECK(tiles <= int64_t{INT32_MAX} * kWarps, op, "(cuda): too many output columns");
  if (gated) {
    if (C == 1) return dispatch_rows<1, true>(M, a);
    return dispatch_rows<2, true>(M, a);
  }
  if (C == 1) return dispatch_rows<1, false>(M, a);
  if (C == 2) return dispatch_rows<2, false>(M, a);
  return dispatch_rows<4, false>(M, a);
}

}  // namespace

bool small_linear_supported(const float* x, int64_t K) {
  return K > 0 && K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void linear_small_bf16(const float* x, int64_t M, int64_t K, const SmallLinearGroup* groups, int n_groups,
                       const float* norm_w, double norm_eps, const SmallLinearEpilogue& epilogue) {
  TESSERA_CHECK(n_groups >= 1 && n_groups <= kSmallLinearMaxGroups, "linear_small_bf16(cuda): ", n_groups,
                " weights (1..", kSmallLinearMaxGroups, ")");
  SmallArgs a{};
  a.groups = n_groups;
  a.x = x;
  a.K = K;
  a.norm_w = norm_w;
  a.norm_eps = norm_eps;
  a.epi = epilogue;
  for (int g = 0; g < n_groups; ++g)
    a.g[g] = {groups[g].w, nullptr, groups[g].bias, groups[g].residual, groups[g].residual_adds, groups[g].y,
              groups[g].n, 0};
  run(a, M, false, "linear_small_bf16");
}

void swiglu_small_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w_gate, const uint16_t* w_up,
                       int64_t N, float* y, const float* norm_w, double norm_eps) {
  SmallArgs a{};
  a.groups = 1;
  a.x = x;
  a.K = K;
  a.norm_w = norm_w;
  a.norm_eps = norm_eps;
  a.g[0] = {w_gate, w_up, nullptr, nullptr, 0, y, N, 0};
  run(a, M, true, "swiglu_small_bf16");
}

}  // namespace tessera::cuda_detail
