// TimestepNorm (Megalodon's causal group norm, spec §2) on the GPU, float.
//
// Forward:
//   moments:   one warp (or block, rows.cuh) per (b, t, g) row of Dg = D/G features: two-pass group mean
//              and population variance.
//   scan:      the running (count, mean, var) over t with Kahan-compensated Welford updates (as the official
//              CUDA kernel), cut into chunks of steps so that thousands of threads share the walk
//              (timestep_norm_kernels.cuh: chunk moments, their prefix merge, then every chunk walked from
//              its entering state); writes cummean, cumrstd.
//   normalise: elementwise y = (x - mean_t) * rstd_t * (1 + w) + bias.
// Backward (spec §2.4):
//   row terms: one warp per row: group mean of x, sum dy*w'*(x - mean_t), sum dy*w'.
//   scan:      t downwards carrying (dmean, dvar), storing the gradients of the step's group mean and
//   variance;
//              the carry's update is affine, so chunks compose (their maps, the maps' prefix, every chunk
//              walked from its entering carry); the final carries are dprev_mean, dprev_var.
//   dx:        elementwise.  dweight, dbias: deterministic two-stage column sums (no atomics).
#include <algorithm>
#include <climits>
#include <cmath>

#include "check.hpp"
#include "column_sum.cuh"
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

/// Chunks of the scans over t: up to enough (b, chunk, g) threads to fill the GPU (~16K), chunks of at least
/// 16 steps and of at least sqrt(L / 2) (a thread walks its chunk twice and one per (b, g) walks the chunks
/// once, so 2 C + K steps one after the other: least near C = sqrt(L / 2)); one chunk for short sequences or
/// many (b, g). A function of the sizes only (the results do not depend on the device).
TsnChunks tsn_chunks(int64_t B, int64_t L, int64_t G) {
  const int64_t seqs = std::max<int64_t>(B * G, 1);
  const int64_t want = std::max<int64_t>(16384 / seqs, 1);
  const auto root = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(L) / 2)));
  const int64_t C = std::max({(L + want - 1) / want, root, int64_t{16}});
  return {L, C, std::max<int64_t>((L + C - 1) / C, 1), static_cast<int>(G)};
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

  const TsnChunks ch = tsn_chunks(B, L, G);
  const int64_t chunk_states = ch.K > 1 ? B * ch.K * G : 0;
  DeviceScratch scratch;
  scratch.reserve(
      2 * DeviceScratch::bytes_for<float>(rows) + (cummean ? 0 : DeviceScratch::bytes_for<float>(rows)) +
      (cumrstd ? 0 : DeviceScratch::bytes_for<float>(rows)) +
      2 * DeviceScratch::bytes_for<double>(chunk_states) + 2 * DeviceScratch::bytes_for<float>(chunk_states));
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
  float *emean = nullptr, *evar = nullptr;
  if (ch.K > 1) {
    double* kmean = scratch.carve<double>(chunk_states);
    double* kvar = scratch.carve<double>(chunk_states);
    emean = scratch.carve<float>(chunk_states);
    evar = scratch.carve<float>(chunk_states);
    tsn_chunk_moments_kernel<<<grid_for(B * (ch.K - 1) * G, 128, op), 128>>>(B, ch, gm, gv, kmean, kvar);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_moments_kernel");
    tsn_chunk_prefix_kernel<<<grid_for(B * G, 128, op), 128>>>(B, ch, prev_count, prev_mean, prev_var, kmean,
                                                               kvar, emean, evar);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_prefix_kernel");
  }
  // The scan also runs for L = 0: it copies the carried state to the outputs.
  tsn_chunk_scan_kernel<<<grid_for(B * ch.K * G, 128, op), 128>>>(
      B, ch, gm, gv, prev_count, prev_mean, prev_var, emean, evar, static_cast<float>(eps), cm, cr, count,
      mean, var);
  TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_scan_kernel");
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

  const TsnChunks ch = tsn_chunks(B, L, G);
  const int64_t chunk_states = ch.K > 1 ? B * ch.K * G : 0;
  DeviceScratch scratch;
  scratch.reserve(3 * DeviceScratch::bytes_for<float>(rows) +
                  (want_wb ? DeviceScratch::bytes_for<float>(2 * static_cast<int64_t>(groups) * D) : 0) +
                  DeviceScratch::bytes_for<double>(5 * chunk_states) +
                  2 * DeviceScratch::bytes_for<float>(chunk_states));
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
  float *edu = nullptr, *edv = nullptr;
  if (ch.K > 1) {
    double* map = scratch.carve<double>(5 * chunk_states);
    edu = scratch.carve<float>(chunk_states);
    edv = scratch.carve<float>(chunk_states);
    tsn_chunk_back_map_kernel<<<grid_for(B * (ch.K - 1) * G, 128, op), 128>>>(
        B, ch, prev_count, prev_mean, cummean, cumrstd, ux, ds, db, map);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_back_map_kernel");
    tsn_chunk_back_prefix_kernel<<<grid_for(B * G, 128, op), 128>>>(B, ch, dmean, dvar, map, edu, edv);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_back_prefix_kernel");
  }
  tsn_chunk_back_scan_kernel<<<grid_for(B * ch.K * G, 128, op), 128>>>(B, ch, dmean, dvar, prev_count,
                                                                       prev_mean, cummean, cumrstd, ux, edu,
                                                                       edv, ds, db, dprev_mean, dprev_var);
  TESSERA_CUDA_CHECK_LAUNCH("tsn_chunk_back_scan_kernel");
  if (dx && total > 0) {
    tsn_dx_kernel<<<elementwise_blocks(total), 256>>>(total, Di, Dg, Gi, x, dy, cumrstd, weight, ux, ds, db, dx);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_dx_kernel");
  }
  if (want_wb) {
    float* part = scratch.carve<float>(2 * static_cast<int64_t>(groups) * D);
    const dim3 grid(static_cast<unsigned>((Di + kTileCols - 1) / kTileCols), static_cast<unsigned>(groups));
    tsn_dwb_partial_kernel<<<grid, dim3(kTileCols, kTileRows)>>>(tok, Di, Dg, Gi, x, dy, cummean, cumrstd, part);
    TESSERA_CUDA_CHECK_LAUNCH("tsn_dwb_partial_kernel");
    // part holds, per group, the dweight row then the dbias row.
    launch_column_sum<float>({part, dweight, 2 * D}, {part + D, dbias, 2 * D}, groups, D);
  }
}

}  // namespace tessera::cuda_detail
