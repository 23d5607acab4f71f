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
//
// Staged x (the default where M * K bf16 values fit in 47 KB of shared memory): the block first rounds its M
// rows of x (normalised if the RMSNorm rides along, 1/rms from one block reduction instead of one per warp)
// to bf16 into shared memory, while the warps' first weight loads are in flight. Without it every chunk of
// weights waited for a dependent load of x from L1/L2 (ncu on an H200: 60 % of the stalls, DRAM at 22-45 %
// of peak for Llama-1B's decoding products). Each lane keeps U chunks of weights in flight and reloads a
// chunk's registers as soon as it has used them (a rolling prefetch), so a row is streamed without a pause
// between rounds. set_small_linear_staged(false) keeps x in global memory (the A/B in bench_cuda).
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
  bool round;  // y rounded to bf16 values after bias and residual (not with the rotation)
  float* y;    // [M, n]
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

/// x' [M, K] rounded to bf16 (normalised first if a.norm_w is set) into xs [M][K / 8] words of 8 values, by
/// the whole block; rstd as the per-warp route computes it, its sum of squares reduced over the block.
template <int M>
__device__ void stage_x(const SmallArgs& a, uint4* xs) {
  __shared__ float partial[kWarps][M];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t K = a.K, K8 = K / 8;
  float rstd[M];
#pragma unroll
  for (int r = 0; r < M; ++r) rstd[r] = 1.f;
  if (a.norm_w) {
    float ss[M];
#pragma unroll
    for (int r = 0; r < M; ++r) ss[r] = 0.f;
    for (int64_t k = tid * 4; k < K; k += kWarps * 32 * 4) {  // K % 8 == 0, x 16-byte aligned
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const float4 v = *reinterpret_cast<const float4*>(a.x + r * K + k);
        ss[r] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
      ss[r] = warp_sum(ss[r]);
      if (lane == 0) partial[warp][r] = ss[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += partial[w][r];
      rstd[r] =
          static_cast<float>(1.0 / sqrt(static_cast<double>(total) / static_cast<double>(K) + a.norm_eps));
    }
  }
  for (int64_t c8 = tid; c8 < K8; c8 += kWarps * 32) {
    const int64_t k = c8 * 8;
    float g[8] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f};
    if (a.norm_w) {
      const float4 g0 = *reinterpret_cast<const float4*>(a.norm_w + k);
      const float4 g1 = *reinterpret_cast<const float4*>(a.norm_w + k + 4);
      g[0] = g0.x, g[1] = g0.y, g[2] = g0.z, g[3] = g0.w, g[4] = g1.x, g[5] = g1.y, g[6] = g1.z, g[7] = g1.w;
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const float4 p = *reinterpret_cast<const float4*>(a.x + r * K + k);
      const float4 q = *reinterpret_cast<const float4*>(a.x + r * K + k + 4);
      const float v[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float lo = a.norm_w ? v[2 * e] * rstd[r] * g[2 * e] : v[2 * e];
        const float hi = a.norm_w ? v[2 * e + 1] * rstd[r] * g[2 * e + 1] : v[2 * e + 1];
        w[e] = uint32_t{bf16_bits(lo)} | uint32_t{bf16_bits(hi)} << 16;
      }
      xs[r * K8 + c8] = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
  __syncthreads();
}

/// Weight chunks each lane keeps in flight: staged, as many as the registers allow (x costs none there);
/// otherwise fewer, as the rows' x values are held too.
template <int M, int C, bool Gated, bool Staged>
__host__ __device__ constexpr int chunks_in_flight() {
  if constexpr (Staged) {
    constexpr int loads = (M <= 2 ? 8 : M <= 4 ? 4 : 2) / (Gated ? 2 : 1);
    return loads / C > 0 ? loads / C : 1;
  } else {
    return M <= 2 ? 4 : M <= 4 ? 2 : 1;
  }
}

/// One warp: C columns of one group (col[], below), all M rows. Gated: acc = gate products, acc_up = up
/// products. Staged: x' comes from shared memory (stage_x; dynamic shared memory M * K * 2 bytes).
template <int M, int C, bool Gated, bool Staged>
__global__ void __launch_bounds__(kWarps * 32) linear_small_kernel(SmallArgs a) {
  extern __shared__ uint4 xs[];  // staged x': [M][K / 8] words of 8 bf16
  const int lane = threadIdx.x & 31;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  pdl_launch_dependents();  // the next kernel may start its own weight loads (cuda/pdl.cuh)
  int g = 0;
  while (g + 1 < a.groups && tile >= a.g[g].tiles_end) ++g;
  // A warp past the last tile loads nothing (its columns are past its group's n) but, staged, still helps
  // to stage x before it leaves.
  const bool active = tile < a.g[g].tiles_end;
  if (!Staged && !active) return;  // the whole warp: the tile is per warp
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

  // Each lane reads 8 elements of every weight row per chunk, chunk j at k = lane * 8 + 256 j, U chunks in
  // flight: one 16-byte load in flight per lane and weight row is far too little to cover HBM latency at
  // decoding grid sizes (a 2048 x 2048 product has 2048 warps, ~16 per SM). A chunk's registers take the
  // chunk U positions later as soon as they have been used. Per lane the sums run over its chunks in order,
  // so U does not change the results. The first U chunks load before pdl_wait(): weights are no other
  // kernel's output, so under PDL they stream in while the kernel before (which wrote x) finishes.
  constexpr int U = chunks_in_flight<M, C, Gated, Staged>();
  constexpr int64_t kStep = 32 * 8 * U;
  uint4 wv[U][C], uv[U][C];
  auto load = [&](int u, int64_t k) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const bool in = col[c] < grp.n && k < K;
      wv[u][c] = in ? *reinterpret_cast<const uint4*>(grp.w + col[c] * K + k) : make_uint4(0, 0, 0, 0);
      if constexpr (Gated)
        uv[u][c] = in ? *reinterpret_cast<const uint4*>(grp.w_up + col[c] * K + k) : make_uint4(0, 0, 0, 0);
    }
  };
  const int64_t k0 = lane * 8;
#pragma unroll
  for (int u = 0; u < U; ++u) load(u, k0 + u * 32 * 8);
  pdl_wait();  // x, the norm gain's input and the outputs belong to the kernels before this one
  if (tile == 0 && a.epi.seg_dst && lane < M) a.epi.seg_dst[lane] = a.epi.seg_src ? a.epi.seg_src[lane] : 0;

  float rstd[M];
#pragma unroll
  for (int r = 0; r < M; ++r) rstd[r] = 1.f;
  if constexpr (Staged) {
    stage_x<M>(a, xs);
    if (!active) return;
  } else if (a.norm_w) {
    // RMSNorm in front: each warp computes the M rows' 1/rms itself (M * K reads, next to the weights' C *
    // K).
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

  for (int64_t base = k0; base < K; base += kStep) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = base + u * 32 * 8;
      if (k >= K) continue;
      float g[8] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f};
      if (!Staged && a.norm_w) {
        const float4 g0 = *reinterpret_cast<const float4*>(a.norm_w + k);
        const float4 g1 = *reinterpret_cast<const float4*>(a.norm_w + k + 4);
        g[0] = g0.x, g[1] = g0.y, g[2] = g0.z, g[3] = g0.w, g[4] = g1.x, g[5] = g1.y, g[6] = g1.z,
        g[7] = g1.w;
      }
#pragma unroll
      for (int r = 0; r < M; ++r) {
        float xr[8];
        if constexpr (Staged) {
          const uint4 q = xs[r * (K / 8) + k / 8];
          xr[0] = lo_bf16(q.x), xr[1] = hi_bf16(q.x), xr[2] = lo_bf16(q.y), xr[3] = hi_bf16(q.y);
          xr[4] = lo_bf16(q.z), xr[5] = hi_bf16(q.z), xr[6] = lo_bf16(q.w), xr[7] = hi_bf16(q.w);
        } else {
          const float4 p = *reinterpret_cast<const float4*>(a.x + r * K + k);
          const float4 q = *reinterpret_cast<const float4*>(a.x + r * K + k + 4);
          const float v[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) xr[e] = round_bf16(a.norm_w ? v[e] * rstd[r] * g[e] : v[e]);
        }
#pragma unroll
        for (int c = 0; c < C; ++c) {
          acc[r][c] = dot8(xr, wv[u][c], acc[r][c]);
          if constexpr (Gated) acc_up[r][c] = dot8(xr, uv[u][c], acc_up[r][c]);
        }
      }
      load(u, k + kStep);  // the rolling prefetch: this chunk's registers take the chunk U positions on
    }
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
        grp.y[r * grp.n + col[c]] = grp.round ? round_bf16(v) : v;
      }
    }
}

/// Staged x and stage_x's partial sums fit the 48 KB of shared memory a block may have without opting in.
constexpr int64_t kStagedBytes = 47 * 1024;
bool g_staged = true;

template <int M, int C, bool Gated>
void launch(const SmallArgs& a) {
  const int64_t tiles = a.g[a.groups - 1].tiles_end;
  const unsigned blocks = static_cast<unsigned>((tiles + kWarps - 1) / kWarps);
  const int64_t staged_bytes = int64_t{M} * a.K * 2;
  if (g_staged && staged_bytes <= kStagedBytes)
    launch_pdl(linear_small_kernel<M, C, Gated, true>, dim3(blocks), dim3(kWarps * 32),
               static_cast<size_t>(staged_bytes), a);
  else
    launch_pdl(linear_small_kernel<M, C, Gated, false>, dim3(blocks), dim3(kWarps * 32), 0, a);
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
      TESSERA_CHECK(a.g[g].n % a.epi.head_dim == 0 && !a.g[g].residual && !a.g[g].round, op,
                    "(cuda): rotated output ", g, " must be whole heads without a residual or rounding");
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

bool set_small_linear_staged(bool on) {
  const bool was = g_staged;
  g_staged = on;
  return was;
}

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
    a.g[g] = {groups[g].w,
              nullptr,
              groups[g].bias,
              groups[g].residual,
              groups[g].residual_adds,
              groups[g].round_bf16,
              groups[g].y,
              groups[g].n,
              0};
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
  a.g[0] = {w_gate, w_up, nullptr, nullptr, 0, false, y, N, 0};
  run(a, M, true, "swiglu_small_bf16");
}

}  // namespace tessera::cuda_detail
