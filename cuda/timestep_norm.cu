// TimestepNorm (Megalodon's causal group norm, spec §2) on the GPU, float.
//
// Forward:
//   moments:   one warp (or block, rows.cuh) per (b, t, g) row of Dg = D/G features: two-pass group mean
//              and population variance.
//   scan:      one thread per (b, g) merges the per-step moments into the running (count, mean, var) with
//              Kahan-compensated Welford updates (as the official CUDA kernel) and writes cummean, cumrstd.
//   normalise: elementwise y = (x - mean_t) * rstd_t * (1 + w) + bias.
// Backward (spec §2.4):
//   row terms: one warp per row: group mean of x, sum dy*w'*(x - mean_t), sum dy*w'.
//   scan:      one thread per (b, g) walks t downwards carrying (dmean, dvar) and stores the gradients of the
//              step's group mean and variance; the final carries are dprev_mean, dprev_var.
//   dx:        elementwise.  dweight, dbias: deterministic two-stage column sums (no atomics).
#include <algorithm>
#include <climits>

#include "check.hpp"
#include "launch_megalodon.hpp"
#include "rows.cuh"
#include "scratch.cuh"
#include "timestep_norm_kernels.cuh"

namespace tessera::cuda_detail {
namespace {

void check_dims(const char* op, int64_t B, int64_t L, int64_t D, int64_t G) {
  TESSERA_CHECK(B >= 0 && L >= 0 && D >= 1 && G >= 1 && D <= INT_MAX, op, "(cuda): bad TsnDims B=", B, " L=", L,
                " D=", D, " G=", G);
  TESSERA_CHECK(D % G == 0, op, "(cuda): TsnDims D (", D, ") must be a multiple of G (", G, ")");
}

unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>(std::clamp<int64_t>((total + 255) / 256, 1, 65536));
}

}  // namespace

void timestep_norm_forward_f32(int64_t B, int64_t L, int64_t D, int64_t G, const float* x,
                               const int64_t* prev_count, const float* prev_mean, const float* prev_var,
                               const float* weight, const float* bias, double eps, float* y, int64_t* count,
                               float* mean, float* var, float* cummean, float* cumrstd) {
  constexpr const char* op = "timestep_norm_forward";
  check_dims(op, B, L, D, G);
  if (B == 0) return;
  const int64_t rows = B * L * G, total = B * L * D;
  TESSERA_CHECK(rows == 0 || (x && y), op, "(cuda): x or y is null");
  const int Dg = static_cast<int>(D / G), Gi = static_cast<int>(G), Di = static_cast<int>(D);

  DeviceScratch scratch;
  scratch.reserve(2 * DeviceScratch::bytes_for<float>(rows) +
                  (cummean ? 0 : DeviceScratch::bytes_for<float>(rows)) +
                  (cumrstd ? 0 : DeviceScratch::bytes_for<float>(rows)));
  float* gm = scratch.carve<float>(rows);
  float* gv = scratch.carve<float>(rows);
  float* cm = cummean ? cummean : scratch.carve<float>(rows);
  float* cr = cumrstd ? cumrstd : scratch.carve<float>(rows);

  if (rows > 0) {
    dispatch_rows(Dg, [&](auto row) {
      using Row = decltype(row);
      tsn_moments_kernel<Row><<<row_blocks<Row>(rows), dim3(Row::kThreads, Row::kRows)>>>(x, rows, Dg, gm, gv);
    });
    TESSERA_CUDA_CHECK_LAUNCH("tsn_moments_kernel");
  }
  // The scan also runs for L = 0: it copies the carried state to the outputs.
  tsn_scan_kernel<<<grid_for(B * G, 128, op), 128>>>(B, L, Gi, gm, gv, prev_count, prev_mean, prev_var,
                                                     static_cast<float>(eps), cm, cr, count, mean, var);
  TESSERA_CUDA_CHECK_LAUNCH("tsn_scan_kernel");
  if (total > 0) {
    tsn_normalize_kernel<<<elementwise_blocks(total), 256>>>(total, Di, Dg, Gi, x, cm, cr, weight, bias, y);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_normalize_kernel");
  }
}

void timestep_norm_backward_f32(int64_t B, int64_t L, int64_t D, int64_t G, const float* dy, const float* dmean,
                                const float* dvar, const float* x, const int64_t* prev_count,
                                const float* prev_mean, const float* cummean, const float* cumrstd,
                                const float* weight, float* dx, float* dprev_mean, float* dprev_var,
                                float* dweight, float* dbias) {
  constexpr const char* op = "timestep_norm_backward";
  check_dims(op, B, L, D, G);
  if (B == 0) return;
  const int64_t rows = B * L * G, tok = B * L, total = B * L * D;
  TESSERA_CHECK(rows == 0 || (dy && x && cummean && cumrstd), op,
                "(cuda): dy, x, cummean or cumrstd is null");
  const int Dg = static_cast<int>(D / G), Gi = static_cast<int>(G), Di = static_cast<int>(D);
  // Enough token-row groups to fill the GPU, at least 64 rows each; capped to bound the scratch.
  const int groups = static_cast<int>(std::clamp<int64_t>((tok + 63) / 64, 1, 256));
  const bool want_wb = (dweight || dbias) && tok > 0;

  DeviceScratch scratch;
  scratch.reserve(3 * DeviceScratch::bytes_for<float>(rows) +
                  (want_wb ? DeviceScratch::bytes_for<float>(2 * static_cast<int64_t>(groups) * D) : 0));
  float* ux = scratch.carve<float>(rows);
  float* ds = scratch.carve<float>(rows);
  float* db = scratch.carve<float>(rows);

  if (rows > 0) {
    dispatch_rows(Dg, [&](auto row) {
      using Row = decltype(row);
      tsn_row_terms_kernel<Row><<<row_blocks<Row>(rows), dim3(Row::kThreads, Row::kRows)>>>(
          x, dy, cummean, weight, rows, Dg, Gi, ux, ds, db);
    });
    TESSERA_CUDA_CHECK_LAUNCH("tsn_row_terms_kernel");
  }
  tsn_backward_scan_kernel<<<grid_for(B * G, 128, op), 128>>>(B, L, Gi, dmean, dvar, prev_count, prev_mean,
                                                              cummean, cumrstd, ux, ds, db, dprev_mean,
                                                              dprev_var);
  TESSERA_CUDA_CHECK_LAUNCH("tsn_backward_scan_kernel");
  if (dx && total > 0) {
    tsn_dx_kernel<<<elementwise_blocks(total), 256>>>(total, Di, Dg, Gi, x, dy, cumrstd, weight, ux, ds, db, dx);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_dx_kernel");
  }
  if (want_wb) {
    float* part = scratch.carve<float>(2 * static_cast<int64_t>(groups) * D);
    const dim3 grid(static_cast<unsigned>((Di + kTileCols - 1) / kTileCols), static_cast<unsigned>(groups));
    tsn_dwb_partial_kernel<<<grid, dim3(kTileCols, kTileRows)>>>(tok, Di, Dg, Gi, x, dy, cummean, cumrstd, part);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_dwb_partial_kernel");
    tsn_dwb_sum_kernel<<<(Di + 255) / 256, 256>>>(groups, Di, part, dweight, dbias);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_dwb_sum_kernel");
  }
}

}  // namespace tessera::cuda_detail
