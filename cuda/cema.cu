// CEMA (Megalodon's complex exponential moving average, spec §1) on the GPU, float, by direct recurrence:
//   h_t = p x_t + q h_{t-1} (h_{-1} = hx),   y_t = sum_n Re(g_n h_{t,n}) + omega x_t,
// per batch b, channel d and state n, with p real and q, g complex (coefficients from the raw parameters).
//
// Kernels (all on the legacy default stream):
//   coeffs:   one thread per (d, n) turns alpha, delta, theta, gamma into p, q, g (float, as the CPU op);
//             per call, or once into caller-owned buffers for decoding (cema_coeffs_f32 +
//             cema_forward_coeffs_f32).
//   forward:  one thread per (b, d, n) state runs the recurrence over t. A block holds DB channels x N states
//             of one batch row and works in chunks of TC steps: the block loads the chunk's inputs into
//             shared memory together (a step then waits on no global load: the recurrence is a few dependent
//             flops, a load ~0.5 us), the threads walk it parking Re(g h_t) in shared memory, and the block
//             sums those over n (fixed order, deterministic) to write y for the chunk.
//   backward: the reverse adjoint scan (PyTorch convention G_z = dl/dRe z + i dl/dIm z):
//               lambda_t = dy_t conj(g) + conj(q) lambda_{t+1}   (lambda_L "=" dh_out, i.e. carry = dh_out)
//               du_t = sum_n p Re(lambda_t) + omega dy_t,   G_hx = conj(q) lambda_0,
//               G_q = sum_t conj(h_{t-1}) lambda_t,  dl/dp = sum_t x_t Re(lambda_t),  G_g = sum_t dy_t
//               conj(h_t).
//             The scan needs h_{t-1} while walking t downwards: a checkpoint kernel stores the state entering
//             every chunk of TCB steps; the backward kernel recomputes a chunk's states into shared memory
//             and walks it in reverse. Both stage each chunk's inputs (and dy) in shared memory first.
//             Per-(b, d, n) parameter sums (double) go to a scratch buffer and a last kernel (one thread per
//             d) reduces them over b in a fixed order and chains them to the raw parameters (spec §1.8): no
//             atomics, deterministic.
#include <algorithm>
#include <climits>
#include <cmath>

#include "cema_kernels.cuh"
#include "check.hpp"
#include "launch_megalodon.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

void check_args(const CemaArgs& a, const char* op) {
  TESSERA_CHECK(a.B >= 0 && a.L >= 0 && a.D >= 1 && a.N >= 1, op, "(cuda): bad CemaDims B=", a.B, " L=", a.L,
                " D=", a.D, " N=", a.N, " (need B, L >= 0 and D, N >= 1)");
  TESSERA_CHECK(a.N <= kMaxN, op, "(cuda): CemaDims N=", a.N, " exceeds the CUDA limit of ", kMaxN,
                " states per channel");
  TESSERA_CHECK(a.D <= INT_MAX / kMaxN, op, "(cuda): CemaDims D=", a.D, " is too large");
  TESSERA_CHECK(a.alpha && a.delta && a.theta && a.gamma && a.omega, op,
                "(cuda): a CemaParams pointer (alpha, delta, theta, gamma, omega) is null");
}

// Launch shape of the scan kernels: DB channels per block, T = N * DB threads, chunk of TC steps.
struct ScanShape {
  int DB, T, TC;
};
ScanShape scan_shape(int N, int target_threads, int max_chunk_cells) {
  ScanShape s{};
  s.DB = std::max(1, target_threads / N);
  s.T = N * s.DB;
  s.TC = std::max(1, std::min(32, max_chunk_cells / s.T));
  return s;
}

struct Coeffs {
  float *p, *q, *g;
};

Coeffs compute_coeffs(const CemaArgs& a, DeviceScratch& scratch) {
  const int64_t DN = a.D * a.N;
  Coeffs c{scratch.carve<float>(DN), scratch.carve<float>(2 * DN), scratch.carve<float>(2 * DN)};
  cema_coeffs_kernel<<<grid_for(DN, 256, "cema"), 256>>>(DN, static_cast<int>(a.N), a.alpha, a.delta, a.theta,
                                                         a.gamma, c.p, c.q, c.g);
  TESSERA_CUDA_CHECK_LAUNCH("cema_coeffs_kernel");
  return c;
}

size_t coeff_bytes(const CemaArgs& a) {
  const int64_t DN = a.D * a.N;
  return DeviceScratch::bytes_for<float>(DN) + 2 * DeviceScratch::bytes_for<float>(2 * DN);
}

dim3 scan_grid(const CemaArgs& a, const ScanShape& s) {
  return dim3(static_cast<unsigned>((a.D + s.DB - 1) / s.DB),
              static_cast<unsigned>(std::min<int64_t>(a.B, kMaxGridY)));
}

}  // namespace

namespace {

/// The forward scan with coefficients already on the device.
void forward_scan(const CemaArgs& a, const float* p, const float* q, const float* g, const float* u,
                  const float* hx, float* y, float* h_out) {
  const int D = static_cast<int>(a.D), N = static_cast<int>(a.N);
  const ScanShape s = scan_shape(N, 128, 4096);
  const size_t smem = static_cast<size_t>(s.TC) * (s.T + s.DB) * sizeof(float);  // <= 32 KiB
  cema_forward_kernel<<<scan_grid(a, s), s.T, smem>>>(a.B, a.L, D, N, s.DB, s.TC, p, q, g, a.omega, u, hx, y,
                                                      h_out);
  TESSERA_CUDA_CHECK_LAUNCH("cema_forward_kernel");
}

}  // namespace

void cema_forward_f32(const CemaArgs& a, const float* u, const float* hx, float* y, float* h_out) {
  constexpr const char* op = "cema_forward";
  check_args(a, op);
  if (a.B == 0) return;
  TESSERA_CHECK(a.L == 0 || (u && y), op, "(cuda): u or y is null");
  DeviceScratch scratch;
  scratch.reserve(coeff_bytes(a));
  const Coeffs c = compute_coeffs(a, scratch);
  forward_scan(a, c.p, c.q, c.g, u, hx, y, h_out);
}

void cema_coeffs_f32(const CemaArgs& a, float* p, float* q, float* g) {
  constexpr const char* op = "cema_coeffs";
  check_args(a, op);
  TESSERA_CHECK(p && q && g, op, "(cuda): an output pointer (p, q, g) is null");
  const int64_t DN = a.D * a.N;
  cema_coeffs_kernel<<<grid_for(DN, 256, op), 256>>>(DN, static_cast<int>(a.N), a.alpha, a.delta, a.theta,
                                                     a.gamma, p, q, g);
  TESSERA_CUDA_CHECK_LAUNCH("cema_coeffs_kernel");
}

void cema_forward_coeffs_f32(const CemaArgs& a, const float* p, const float* q, const float* g,
                             const float* u, const float* hx, float* y, float* h_out) {
  constexpr const char* op = "cema_forward";
  TESSERA_CHECK(a.B >= 0 && a.L >= 0 && a.D >= 1 && a.N >= 1 && a.N <= kMaxN && a.D <= INT_MAX / kMaxN, op,
                "(cuda): bad CemaDims B=", a.B, " L=", a.L, " D=", a.D, " N=", a.N);
  TESSERA_CHECK(p && q && g && a.omega, op, "(cuda): a coefficient pointer (p, q, g) or omega is null");
  if (a.B == 0) return;
  TESSERA_CHECK(a.L == 0 || (u && y), op, "(cuda): u or y is null");
  forward_scan(a, p, q, g, u, hx, y, h_out);
}

void cema_backward_f32(const CemaArgs& a, const float* u, const float* hx, const float* dy, const float* dh_out,
                       float* du, float* dhx, float* dalpha, float* ddelta, float* dtheta, float* dgamma,
                       float* domega) {
  constexpr const char* op = "cema_backward";
  check_args(a, op);
  if (a.B == 0) return;
  TESSERA_CHECK(a.L == 0 || (u && dy && du), op, "(cuda): u, dy or du is null");
  const int D = static_cast<int>(a.D), N = static_cast<int>(a.N);
  const ScanShape s = scan_shape(N, 64, 2048);
  const int64_t nchunks = (a.L + s.TC - 1) / s.TC;
  const int64_t BDN = a.B * a.D * a.N;

  DeviceScratch scratch;
  scratch.reserve(coeff_bytes(a) + DeviceScratch::bytes_for<float>(2 * nchunks * BDN) +
                  DeviceScratch::bytes_for<double>(BDN) + 2 * DeviceScratch::bytes_for<double>(2 * BDN) +
                  DeviceScratch::bytes_for<double>(a.B * a.D));
  const Coeffs c = compute_coeffs(a, scratch);
  float* ckpt = scratch.carve<float>(2 * nchunks * BDN);
  double* gp = scratch.carve<double>(BDN);
  double* gq = scratch.carve<double>(2 * BDN);
  double* gg = scratch.carve<double>(2 * BDN);
  double* gw = scratch.carve<double>(a.B * a.D);

  if (nchunks > 0) {
    cema_checkpoint_kernel<<<scan_grid(a, s), s.T, static_cast<size_t>(s.TC) * s.DB * sizeof(float)>>>(
        a.B, a.L, D, N, s.DB, s.TC, nchunks, c.p, c.q, c.g, u, hx, ckpt);
    TESSERA_CUDA_CHECK_LAUNCH("cema_checkpoint_kernel");
  }
  const size_t smem = static_cast<size_t>(s.TC) * (3 * s.T + 2 * s.DB) * sizeof(float);  // <= 40 KiB
  cema_backward_kernel<<<scan_grid(a, s), s.T, smem>>>(a.B, a.L, D, N, s.DB, s.TC, nchunks, c.p, c.q, c.g,
                                                       a.omega, u, dy, dh_out, ckpt, du, dhx, gp, gq, gg, gw);
  TESSERA_CUDA_CHECK_LAUNCH("cema_backward_kernel");
  if (dalpha || ddelta || dtheta || dgamma || domega) {
    cema_param_grads_kernel<<<grid_for(a.D, 128, op), 128>>>(a.B, D, N, a.alpha, a.delta, a.theta, gp, gq, gg,
                                                              gw, dalpha, ddelta, dtheta, dgamma, domega);
    TESSERA_CUDA_CHECK_LAUNCH("cema_param_grads_kernel");
  }
}

}  // namespace tessera::cuda_detail
