// Internal to tessera::cuda: the device code of cema.cu (see there for the design). A separate header only so
// that the kernels can also be compiled for a CPU-thread emulation of the launch model when checking their
// indexing without a GPU; it includes nothing CUDA-specific, and exactly one .cu file includes it (hence the
// unnamed namespace).
#pragma once
#include <cmath>
#include <cstdint>

namespace tessera::cuda_detail {
namespace {


constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr int kMaxN = 1024;        // one block must hold the N states of a channel
constexpr int kMaxGridY = 65535;   // batch rows beyond this are looped over inside the kernels

__device__ inline double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ inline float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// p [D*N], q [D*N*2], g [D*N*2]; in float in the order of operations of the CPU op (and the official
// _calc_coeffs), so both backends start from the same coefficients up to the last bit of expf/cosf/sinf.
__global__ void cema_coeffs_kernel(int64_t DN, int N, const float* __restrict__ alpha,
                                   const float* __restrict__ delta, const float* __restrict__ theta,
                                   const float* __restrict__ gamma, float* __restrict__ p, float* __restrict__ q,
                                   float* __restrict__ g) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= DN) return;
  const int64_t d = i / N;
  const int n = static_cast<int>(i % N);
  const float two_pi_n = static_cast<float>(kTwoPi / N), scale = static_cast<float>(sqrt(1.0 / N));
  const float base = sigmoid_f(theta[d]) * two_pi_n;
  const float pa = sigmoid_f(alpha[i]), sd = sigmoid_f(delta[i]);
  const float phi = static_cast<float>(n + 1) * base, r = 1.f - pa * sd;
  p[i] = pa;
  q[2 * i] = r * cosf(phi);
  q[2 * i + 1] = r * sinf(phi);
  g[2 * i] = gamma[2 * i] * scale;
  g[2 * i + 1] = gamma[2 * i + 1] * scale;
}

// Thread layout shared by the scan kernels: blockDim.x = N * DB threads; thread tid owns state n = tid % N of
// channel d = blockIdx.x * DB + tid / N (inactive when d >= D); batch rows b = blockIdx.y, += gridDim.y.
struct ScanThread {
  int tid, n, dl, d;
  bool active;
  __device__ ScanThread(int D, int N, int DB) {
    tid = threadIdx.x;
    n = tid % N;
    dl = tid / N;
    d = blockIdx.x * DB + dl;
    active = d < D;
  }
};

// Per-thread coefficients of state (d, n).
struct Coef {
  float p = 0, qr = 0, qi = 0, gr = 0, gi = 0;
  __device__ void load(const float* p_, const float* q_, const float* g_, int64_t i) {
    p = p_[i];
    qr = q_[2 * i];
    qi = q_[2 * i + 1];
    gr = g_[2 * i];
    gi = g_[2 * i + 1];
  }
  // h <- p x + q h
  __device__ void step(float x, float& hr, float& hi) const {
    const float nr = p * x + (qr * hr - qi * hi);
    const float ni = qr * hi + qi * hr;
    hr = nr;
    hi = ni;
  }
};

// After a chunk of nt steps has parked one float per (step, thread) in part[tt * T + tid]: write
// out[row] = sum_n part[...] + omega[d] * skip[row] for the block's channels, row = (b*L + t0 + tt)*D + d,
// with the chunk's skip values already staged in shared memory (skip_s[tt * DB + j], stage_chunk's layout).
__device__ void reduce_chunk(const float* part, int T, int N, int DB, int nt, int d0, int D, int64_t b,
                             int64_t L, int64_t t0, const float* __restrict__ omega, const float* skip_s,
                             float* out) {
  for (int o = threadIdx.x; o < nt * DB; o += T) {
    const int tt = o / DB, j = o % DB, d = d0 + j;
    if (d >= D) continue;
    const float* src = part + static_cast<int64_t>(tt) * T + static_cast<int64_t>(j) * N;
    float s = 0.f;
    for (int m = 0; m < N; ++m) s += src[m];
    out[(b * L + t0 + tt) * D + d] = s + omega[d] * skip_s[o];
  }
}

// Stage rows t0 .. t0+nt-1 of the block's DB channels of src [B, L, D] into dst[tt * DB + j] (0 past D), all
// threads of the block together: the sequential walks then read shared memory instead of waiting on a global
// load at every step (one step's load is otherwise the whole per-step cost: ~0.5 us, 4096 steps ~2 ms).
__device__ inline void stage_chunk(float* dst, const float* __restrict__ src, int nt, int DB, int d0, int D,
                                   int64_t b, int64_t L, int64_t t0) {
  for (int o = threadIdx.x; o < nt * DB; o += blockDim.x) {
    const int tt = o / DB, d = d0 + o % DB;
    dst[o] = d < D ? src[(b * L + t0 + tt) * D + d] : 0.f;
  }
}

// Forward: shared memory part[TC][T], then xs[TC][DB] (the chunk's inputs).
__global__ void cema_forward_kernel(int64_t B, int64_t L, int D, int N, int DB, int TC,
                                    const float* __restrict__ p, const float* __restrict__ q,
                                    const float* __restrict__ g, const float* __restrict__ omega,
                                    const float* __restrict__ u, const float* __restrict__ hx, float* y,
                                    float* __restrict__ h_out) {
  extern __shared__ float part[];
  const int T = blockDim.x;
  float* xs = part + static_cast<int64_t>(TC) * T;
  const ScanThread th(D, N, DB);
  const int d0 = blockIdx.x * DB;
  Coef c;
  if (th.active) c.load(p, q, g, static_cast<int64_t>(th.d) * N + th.n);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t si = (b * D + th.d) * N + th.n;  // state index in [B, D, N]
    float hr = 0.f, hi = 0.f;
    if (th.active && hx) {
      hr = hx[2 * si];
      hi = hx[2 * si + 1];
    }
    for (int64_t t0 = 0; t0 < L; t0 += TC) {
      const int nt = static_cast<int>(min(static_cast<int64_t>(TC), L - t0));
      stage_chunk(xs, u, nt, DB, d0, D, b, L, t0);
      __syncthreads();
      for (int tt = 0; tt < nt; ++tt) {
        c.step(xs[tt * DB + th.dl], hr, hi);
        part[tt * T + th.tid] = c.gr * hr - c.gi * hi;  // Re(g h)
      }
      __syncthreads();
      reduce_chunk(part, T, N, DB, nt, d0, D, b, L, t0, omega, xs, y);
      __syncthreads();  // part and xs are rewritten by the next chunk
    }
    if (th.active && h_out) {
      h_out[2 * si] = hr;
      h_out[2 * si + 1] = hi;
    }
  }
}

// Checkpoints for the backward scan: ckpt[c][b][d][n] (complex) = state entering chunk c, i.e. h_{c*TCB - 1}.
// The forward's layout (ScanThread, batch rows over blockIdx.y); shared memory xs[TCB][DB].
__global__ void cema_checkpoint_kernel(int64_t B, int64_t L, int D, int N, int DB, int TCB, int64_t nchunks,
                                       const float* __restrict__ p, const float* __restrict__ q,
                                       const float* __restrict__ g, const float* __restrict__ u,
                                       const float* __restrict__ hx, float* __restrict__ ckpt) {
  extern __shared__ float xs[];
  const ScanThread th(D, N, DB);
  const int d0 = blockIdx.x * DB;
  const int64_t BDN = B * D * static_cast<int64_t>(N);
  Coef c;
  if (th.active) c.load(p, q, g, static_cast<int64_t>(th.d) * N + th.n);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t si = (b * D + th.d) * N + th.n;
    float hr = th.active && hx ? hx[2 * si] : 0.f, hi = th.active && hx ? hx[2 * si + 1] : 0.f;
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      if (th.active) {
        ckpt[2 * (ch * BDN + si)] = hr;
        ckpt[2 * (ch * BDN + si) + 1] = hi;
      }
      const int64_t t0 = ch * TCB;
      const int nt = static_cast<int>(min(static_cast<int64_t>(TCB), L - t0));
      stage_chunk(xs, u, nt, DB, d0, D, b, L, t0);
      __syncthreads();
      for (int tt = 0; tt < nt; ++tt) c.step(xs[tt * DB + th.dl], hr, hi);
      __syncthreads();  // xs is rewritten by the next chunk
    }
  }
}

// Backward: shared memory hs[TCB][T] (complex), part[TCB][T], then the chunk's inputs xs[TCB][DB] and output
// gradients dys[TCB][DB]. Partial parameter sums per (b, d, n): gp [B*D*N], gq, gg [B*D*N*2], gw [B*D]
// (double).
__global__ void cema_backward_kernel(int64_t B, int64_t L, int D, int N, int DB, int TCB, int64_t nchunks,
                                     const float* __restrict__ p, const float* __restrict__ q,
                                     const float* __restrict__ g, const float* __restrict__ omega,
                                     const float* __restrict__ u, const float* __restrict__ dy,
                                     const float* __restrict__ dh_out, const float* __restrict__ ckpt, float* du,
                                     float* __restrict__ dhx, double* __restrict__ gp, double* __restrict__ gq,
                                     double* __restrict__ gg, double* __restrict__ gw) {
  extern __shared__ float smem[];
  const int T = blockDim.x;
  float* hs = smem;                                        // [TCB][T][2]
  float* part = smem + 2 * static_cast<int64_t>(TCB) * T;  // [TCB][T]
  float* xs = part + static_cast<int64_t>(TCB) * T;        // [TCB][DB]
  float* dys = xs + static_cast<int64_t>(TCB) * DB;        // [TCB][DB]
  const ScanThread th(D, N, DB);
  const int d0 = blockIdx.x * DB;
  const int64_t BDN = B * D * static_cast<int64_t>(N);
  Coef c;
  if (th.active) c.load(p, q, g, static_cast<int64_t>(th.d) * N + th.n);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t si = (b * D + th.d) * N + th.n;
    float cr = 0.f, ci = 0.f;  // carry = conj(q) lambda_{t+1}, starts as dh_out
    if (th.active && dh_out) {
      cr = dh_out[2 * si];
      ci = dh_out[2 * si + 1];
    }
    double Gp = 0, Gqr = 0, Gqi = 0, Ggr = 0, Ggi = 0, Gw = 0;
    for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
      const int64_t t0 = ch * TCB;
      const int nt = static_cast<int>(min(static_cast<int64_t>(TCB), L - t0));
      float h0r = 0.f, h0i = 0.f;  // h_{t0-1}
      if (th.active) {
        h0r = ckpt[2 * (ch * BDN + si)];
        h0i = ckpt[2 * (ch * BDN + si) + 1];
      }
      stage_chunk(xs, u, nt, DB, d0, D, b, L, t0);
      stage_chunk(dys, dy, nt, DB, d0, D, b, L, t0);
      __syncthreads();
      // Recompute h_{t0 .. t0+nt-1}; each thread reads back only its own slots.
      float hr = h0r, hi = h0i;
      for (int tt = 0; tt < nt; ++tt) {
        c.step(xs[tt * DB + th.dl], hr, hi);
        hs[2 * (tt * T + th.tid)] = hr;
        hs[2 * (tt * T + th.tid) + 1] = hi;
      }
      for (int tt = nt - 1; tt >= 0; --tt) {
        const float dyv = dys[tt * DB + th.dl], x = xs[tt * DB + th.dl];  // 0 for inactive threads
        const float lr = dyv * c.gr + cr, li = -dyv * c.gi + ci;  // lambda_t = dy conj(g) + carry
        const float pr = tt > 0 ? hs[2 * ((tt - 1) * T + th.tid)] : h0r;
        const float pi = tt > 0 ? hs[2 * ((tt - 1) * T + th.tid) + 1] : h0i;
        const float hcr = hs[2 * (tt * T + th.tid)], hci = hs[2 * (tt * T + th.tid) + 1];
        Gqr += static_cast<double>(pr) * lr + static_cast<double>(pi) * li;  // conj(h_{t-1}) lambda_t
        Gqi += static_cast<double>(pr) * li - static_cast<double>(pi) * lr;
        Gp += static_cast<double>(x) * lr;
        Ggr += static_cast<double>(dyv) * hcr;  // dy conj(h_t)
        Ggi -= static_cast<double>(dyv) * hci;
        if (th.n == 0) Gw += static_cast<double>(dyv) * x;
        part[tt * T + th.tid] = c.p * lr;
        cr = c.qr * lr + c.qi * li;  // conj(q) lambda_t
        ci = c.qr * li - c.qi * lr;
      }
      __syncthreads();
      reduce_chunk(part, T, N, DB, nt, d0, D, b, L, t0, omega, dys, du);
      __syncthreads();  // hs, part, xs and dys are rewritten by the next chunk
    }
    if (th.active) {
      if (dhx) {
        dhx[2 * si] = cr;
        dhx[2 * si + 1] = ci;
      }
      gp[si] = Gp;
      gq[2 * si] = Gqr;
      gq[2 * si + 1] = Gqi;
      gg[2 * si] = Ggr;
      gg[2 * si + 1] = Ggi;
      if (th.n == 0) gw[b * D + th.d] = Gw;
    }
  }
}

// One thread per channel d: reduce the partial sums over b and chain to the raw parameters (spec §1.8).
// With r = 1 - p delta and q = r e^{i phi}: dl/dr = Re(conj(G_q) e^{i phi}), dl/dphi = -Im(conj(G_q) q).
__global__ void cema_param_grads_kernel(int64_t B, int D, int N, const float* __restrict__ alpha,
                                        const float* __restrict__ delta, const float* __restrict__ theta,
                                        const double* __restrict__ gp, const double* __restrict__ gq,
                                        const double* __restrict__ gg, const double* __restrict__ gw,
                                        float* dalpha, float* ddelta, float* dtheta, float* dgamma,
                                        float* domega) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t DN = static_cast<int64_t>(D) * N;
  const double st = sigmoid_d(theta[d]), s = sqrt(1.0 / N);
  double dth = 0;
  for (int n = 0; n < N; ++n) {
    const int64_t i = static_cast<int64_t>(d) * N + n;
    double Gp = 0, Gqr = 0, Gqi = 0, Ggr = 0, Ggi = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k = b * DN + i;
      Gp += gp[k];
      Gqr += gq[2 * k];
      Gqi += gq[2 * k + 1];
      Ggr += gg[2 * k];
      Ggi += gg[2 * k + 1];
    }
    const double pa = sigmoid_d(alpha[i]), de = sigmoid_d(delta[i]);
    const double phi = (n + 1) * (kTwoPi / N) * st;
    const double r = 1.0 - pa * de, cp = cos(phi), sp = sin(phi);
    const double dr = Gqr * cp + Gqi * sp;
    const double dphi = r * (Gqi * cp - Gqr * sp);
    if (dalpha) dalpha[i] += static_cast<float>((Gp - de * dr) * pa * (1.0 - pa));
    if (ddelta) ddelta[i] += static_cast<float>(-pa * dr * de * (1.0 - de));
    if (dgamma) {
      dgamma[2 * i] += static_cast<float>(Ggr * s);
      dgamma[2 * i + 1] += static_cast<float>(Ggi * s);
    }
    dth += dphi * (n + 1) * (kTwoPi / N);
  }
  if (dtheta) dtheta[d] += static_cast<float>(dth * st * (1.0 - st));
  if (domega) {
    double w = 0;
    for (int64_t b = 0; b < B; ++b) w += gw[b * D + d];
    domega[d] += static_cast<float>(w);
  }
}

}  // namespace
}  // namespace tessera::cuda_detail
