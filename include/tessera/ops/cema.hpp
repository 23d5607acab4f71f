// CEMA: Megalodon's complex exponential moving average (spec megalodon.md §1), CPU forward and backward.
//
// Per channel d and state n (N states per channel), with coefficients from the real parameters (§1.2):
//   p = sigmoid(alpha),  q = (1 - p sigmoid(delta)) e^{i phi},  phi = (n+1) (2 pi / N) sigmoid(theta),
//   g = gamma / sqrt(N);
//   h_t = p x_t + q h_{t-1}  (h_{-1} = hx, complex),   y_t = Re(sum_n g_n h_{t,n}) + omega x_t.
// u and y are [B, L, D] token rows (channels contiguous); hx, h_out, dh_out, dhx are [B, D, N] complex.
//
// Two exact algorithms behind one API (CemaMode):
//   Scan: the recurrence itself, vectorised across a block of channels (the state is kept as [N][channel]
//         planes of real and imaginary parts so each step is a few FMAs per SIMD lane), parallel over
//         (b, channel block). Its backward is the reverse-time adjoint scan
//         a_t = dy_t conj(g) + conj(q) a_{t+1}, with the forward states recomputed per time chunk from
//         checkpoints, so memory stays O(L/chunk * N * D).
//   Fft:  the official training path (§1.4): kernel k[d,j] = sum_n Re(p g q^j), bias from hx, causal linear
//         convolution by real FFTs of length 2 next_pow2(L) (Eigen's FFT module, kissfft backend), final
//         state by the closed form; backward by FFT correlation for du and dk, then the ema_parameters /
//         ema_hidden gradient formulas of §1.8.
// Auto runs Scan: on the CPU it is 8-19x faster than Fft at every length measured (numbers at resolve()).
// Powers q^j are formed as q^(mK) * q^r (K = 64) from double-precision tables (repeated multiplication in
// double, rounded to T), so every power carries ~1 rounding of T whatever j is.
// Gradient convention for complex tensors (hx, h_out): PyTorch's, G_z = dl/dRe z + i dl/dIm z.
// Parameter gradients are reduced in double and accumulated (+=) into CemaGrads; du and dhx are overwritten.
#pragma once
#include <Eigen/Core>
#include <unsupported/Eigen/FFT>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

struct CemaDims {
  int64_t B = 0, L = 0, D = 0, N = 0;  // u, y are [B, L, D] row-major token rows (row b*L+t)
};
/// Official parameter shapes, row-major.
template <class T>
struct CemaParams {
  const T* alpha;  // [D, N]
  const T* delta;  // [D, N]
  const T* theta;  // [D]
  const T* gamma;  // [D, N, 2]  (re, im)
  const T* omega;  // [D]
};
/// Parameter gradients, accumulated (+=); any may be null.
template <class T>
struct CemaGrads {
  T* alpha;
  T* delta;
  T* theta;
  T* gamma;
  T* omega;
};
/// Coefficients of §1.2 ([D, N] row-major each), g = gamma / sqrt(N). Cache them for decoding.
template <class T>
struct CemaCoeffs {
  int64_t D = 0, N = 0;
  std::vector<T> p;
  std::vector<std::complex<T>> q, g;
};
enum class CemaMode { Auto, Fft, Scan };

namespace cema_detail {

inline constexpr int64_t kMaxN = 64;
inline constexpr int64_t kPow = 64;    // K: q^j = q^(mK) * q^r
inline constexpr int64_t kChunk = 64;  // timesteps per scan tile (and per backward checkpoint)
inline constexpr int64_t kParallelMin = int64_t(1) << 16;  // B*L*D*N before OpenMP pays
inline constexpr int64_t kDirectMaxL = 8;  // segments up to this length skip the channel-block relayout

/// Channels per scan task: two SIMD registers' worth at AVX-512 (two independent dependency chains per step).
template <class T>
inline constexpr int kScanBlock = static_cast<int>(128 / sizeof(T));
/// Channels per FFT task: one cache line of a token row.
template <class T>
inline constexpr int kFftBlock = static_cast<int>(64 / sizeof(T));

template <class T>
using Lane = Eigen::Array<T, kScanBlock<T>, 1>;
template <class T>
using LaneMap = Eigen::Map<Lane<T>>;
template <class T>
using CLaneMap = Eigen::Map<const Lane<T>>;

inline int64_t next_pow2(int64_t n) {
  int64_t m = 1;
  while (m < n) m <<= 1;
  return m;
}
inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
inline double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

inline void check_dims(const char* op, const CemaDims& d) {
  TESSERA_CHECK(d.B > 0, op, ": B must be positive, got ", d.B);
  TESSERA_CHECK(d.L > 0, op, ": L must be positive, got ", d.L);
  TESSERA_CHECK(d.D > 0, op, ": D must be positive, got ", d.D);
  TESSERA_CHECK(d.N > 0 && d.N <= kMaxN, op, ": N must be in [1, ", kMaxN, "], got ", d.N);
}
template <class T>
void check_params(const char* op, const CemaParams<T>& p) {
  TESSERA_CHECK(p.alpha, op, ": params.alpha is null");
  TESSERA_CHECK(p.delta, op, ": params.delta is null");
  TESSERA_CHECK(p.theta, op, ": params.theta is null");
  TESSERA_CHECK(p.gamma, op, ": params.gamma is null");
  TESSERA_CHECK(p.omega, op, ": params.omega is null");
}
template <class T>
void check_coeffs(const char* op, const CemaCoeffs<T>& c, const CemaDims& d) {
  TESSERA_CHECK(c.D == d.D && c.N == d.N, op, ": coeffs are for D=", c.D, " N=", c.N,
                " but dims have D=", d.D, " N=", d.N);
  const auto n = static_cast<size_t>(d.D * d.N);
  TESSERA_CHECK(c.p.size() == n && c.q.size() == n && c.g.size() == n, op,
                ": coeffs.p/q/g must hold D*N = ", n, " values");
}

// Auto mode. Measured with benchmarks/bench_cema.cpp (float, D=1024 N=16 B=1, OMP_NUM_THREADS=1, AMD EPYC
// Zen 4 with AVX-512, a shared 2-core machine; median CPU time per token, official-init parameters / all
// |q| ~ 0.998):
//                      L=256          1024           4096           16384
//   forward      Scan   2.1 / 2.2 us   2.0 / 2.1 us   2.3 / 2.3 us   2.5 / 2.5 us
//                Fft    41 / 41 us     34 / 38 us     35 / 41 us     41 / 46 us
//   fwd + bwd    Scan   10 / 10 us     10 / 10 us     9.6 / 9.4 us   10 / 11 us
//                Fft   107 / 108 us    88 / 106 us    88 / 112 us   100 / 124 us
// There is no crossover: the scan is a handful of FMAs per (token, channel, state), ~2.2 ns per (token,
// channel) at N=16, while the FFT path spends ~20-40 ns per (token, channel) in kissfft alone (two to four
// real transforms of length 2 next_pow2(L) per channel and batch row) before its O(N L) kernel, bias and
// state sums. Only the scan grows fully linearly with N, but at N=64 (L=1024, no state) it still costs 6.6 ns
// (forward) and 25 ns (backward) per (token, channel) against 37 and 61 ns for Fft. Auto therefore always
// runs the scan on the CPU; Fft is kept as the official algorithm (parity reference, cross-check) and runs
// only when asked for.
inline CemaMode resolve(CemaMode m) {
  return m == CemaMode::Auto ? CemaMode::Scan : m;
}

// ---- powers q^j --------------------------------------------------------------------------------------

/// q_n^j for j <= Lmax and the N states of one channel: Pr/Pi [N][K] hold q^r (r < K), Q [N][nb] holds q^(mK)
/// (m <= Lmax/K). Built in double by repeated multiplication (error ~ (K + Lmax/K) ulp of double), stored in
/// T. alive[n] is the number of blocks m before |q^(mK)| drops below the denormal guard (later terms are 0).
template <class T>
struct Powers {
  int64_t N = 0, nb = 0;
  std::vector<T> Pr, Pi;
  std::vector<std::complex<T>> Q;
  std::vector<int64_t> alive;

  void build(const std::complex<T>* q, int64_t n_states, int64_t Lmax) {
    N = n_states;
    nb = Lmax / kPow + 1;
    Pr.resize(N * kPow);
    Pi.resize(N * kPow);
    Q.resize(N * nb);
    alive.assign(N, nb);
    // Below this, products with O(1) coefficients are far under T's precision and may be denormal (slow).
    const double guard2 = static_cast<double>(std::numeric_limits<T>::min());  // |z|^2 bound
    for (int64_t n = 0; n < N; ++n) {
      const std::complex<double> qd(q[n].real(), q[n].imag());
      std::complex<double> w(1.0, 0.0);
      for (int64_t r = 0; r < kPow; ++r) {
        Pr[n * kPow + r] = static_cast<T>(w.real());
        Pi[n * kPow + r] = static_cast<T>(w.imag());
        w *= qd;
      }
      const std::complex<double> qk = w;  // q^K
      std::complex<double> z(1.0, 0.0);
      for (int64_t m = 0; m < nb; ++m) {
        Q[n * nb + m] = std::complex<T>(static_cast<T>(z.real()), static_cast<T>(z.imag()));
        if (alive[n] == nb && std::norm(z) < guard2) alive[n] = m;
        z *= qk;
      }
    }
  }
  std::complex<T> at(int64_t n, int64_t j) const {
    const int64_t m = j / kPow, r = j % kPow;
    return Q[n * nb + m] * std::complex<T>(Pr[n * kPow + r], Pi[n * kPow + r]);
  }

  /// f[i] = sum_n Re(c_n q_n^i) for i < L (overwrites f[0..L)).
  void eval(const std::complex<T>* c, T* f, int64_t L) const {
    std::fill(f, f + L, T(0));
    for (int64_t n = 0; n < N; ++n) {
      if (c[n] == std::complex<T>(0)) continue;
      const T* pr = Pr.data() + n * kPow;
      const T* pi = Pi.data() + n * kPow;
      const int64_t mend = std::min(alive[n], ceil_div(L, kPow));
      for (int64_t m = 0; m < mend; ++m) {
        const std::complex<T> cm = c[n] * Q[n * nb + m];
        const T cr = cm.real(), ci = cm.imag();
        T* fm = f + m * kPow;
        const int64_t len = std::min(kPow, L - m * kPow);
#pragma omp simd
        for (int64_t r = 0; r < len; ++r) fm[r] += cr * pr[r] - ci * pi[r];
      }
    }
  }

  /// S_n = sum_{j < L} w_j q_n^j for every n (accumulated in double).
  void wsum(const T* w, int64_t L, std::complex<double>* S) const {
    for (int64_t n = 0; n < N; ++n) {
      const T* pr = Pr.data() + n * kPow;
      const T* pi = Pi.data() + n * kPow;
      const int64_t mend = std::min(alive[n], ceil_div(L, kPow));
      std::complex<double> s(0.0, 0.0);
      for (int64_t m = 0; m < mend; ++m) {
        const T* wm = w + m * kPow;
        const int64_t len = std::min(kPow, L - m * kPow);
        T sr = 0, si = 0;
#pragma omp simd reduction(+ : sr, si)
        for (int64_t r = 0; r < len; ++r) {
          sr += wm[r] * pr[r];
          si += wm[r] * pi[r];
        }
        const std::complex<T> qm = Q[n * nb + m];
        s += std::complex<double>(qm.real(), qm.imag()) * std::complex<double>(sr, si);
      }
      S[n] = s;
    }
  }
};

// ---- scan mode ---------------------------------------------------------------------------------------

/// One task's view of a block of Dc = kScanBlock channels (zero-padded past the last channel): coefficients
/// and state as [N][Dc] planes, token tiles as [kChunk][Dc].
template <class T>
struct ScanBlock {
  static constexpr int64_t Dc = kScanBlock<T>;
  int64_t N = 0, d0 = 0, dc = 0;
  std::vector<T> p, qr, qi, gr, gi, hr, hi, xt, yt;

  explicit ScanBlock(int64_t n_states) : N(n_states) {
    for (auto* v : {&p, &qr, &qi, &gr, &gi, &hr, &hi}) v->assign(N * Dc, T(0));
    xt.assign(kChunk * Dc, T(0));
    yt.assign(kChunk * Dc, T(0));
  }
  void load_coeffs(const CemaCoeffs<T>& c, int64_t first, int64_t count) {
    d0 = first;
    dc = count;
    for (auto* v : {&p, &qr, &qi, &gr, &gi}) std::fill(v->begin(), v->end(), T(0));
    for (int64_t j = 0; j < dc; ++j)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t s = (d0 + j) * N + n, o = n * Dc + j;
        p[o] = c.p[s];
        qr[o] = c.q[s].real();
        qi[o] = c.q[s].imag();
        gr[o] = c.g[s].real();
        gi[o] = c.g[s].imag();
      }
  }
  /// [N][Dc] planes <- h[d0 + j, n] of one batch row of a [D, N] complex array (null: zeros).
  void load_state(const std::complex<T>* h, int64_t D, T* re, T* im) const {
    std::fill(re, re + N * Dc, T(0));
    std::fill(im, im + N * Dc, T(0));
    if (!h) return;
    for (int64_t j = 0; j < dc; ++j)
      for (int64_t n = 0; n < N; ++n) {
        re[n * Dc + j] = h[(d0 + j) * N + n].real();
        im[n * Dc + j] = h[(d0 + j) * N + n].imag();
      }
  }
  void store_state(std::complex<T>* h, const T* re, const T* im) const {
    for (int64_t j = 0; j < dc; ++j)
      for (int64_t n = 0; n < N; ++n) h[(d0 + j) * N + n] = std::complex<T>(re[n * Dc + j], im[n * Dc + j]);
  }
  /// tile[t][j] <- rows[t * D + d0 + j] for t < tb (padding lanes stay 0).
  void load_tile(T* tile, const T* rows, int64_t tb, int64_t D) const {
    for (int64_t t = 0; t < tb; ++t) std::copy(rows + t * D + d0, rows + t * D + d0 + dc, tile + t * Dc);
  }
};

/// tb steps of the recurrence for state n of a block: h <- p x_t + q h, and yt[t] += Re(g h) when yt is set.
/// The Dc lanes are two (AVX-512) registers: two independent dependency chains per step.
template <class T>
inline void scan_steps(const ScanBlock<T>& s, int64_t n, T* hr, T* hi, const T* xt, T* yt, int64_t tb) {
  constexpr int64_t Dc = ScanBlock<T>::Dc;
  using A = Lane<T>;
  const int64_t o = n * Dc;
  const A P = CLaneMap<T>(s.p.data() + o), QR = CLaneMap<T>(s.qr.data() + o),
          QI = CLaneMap<T>(s.qi.data() + o);
  const A GR = CLaneMap<T>(s.gr.data() + o), GI = CLaneMap<T>(s.gi.data() + o);
  A HR = CLaneMap<T>(hr), HI = CLaneMap<T>(hi);
  for (int64_t t = 0; t < tb; ++t) {
    const A X = CLaneMap<T>(xt + t * Dc);
    const A NR = P * X + QR * HR - QI * HI;
    const A NI = QR * HI + QI * HR;
    HR = NR;
    HI = NI;
    if (yt) LaneMap<T>(yt + t * Dc) += GR * HR - GI * HI;
  }
  LaneMap<T>{hr} = HR;
  LaneMap<T>{hi} = HI;
}

/// The scan for short segments (decoding): straight from the [D, N] coefficient and [B, D, N] state layouts,
/// vectorised across the N states of one channel, with no per-call relayout into channel blocks (which costs
/// as much as ~20 tokens of the blocked scan).
template <class T>
void scan_forward_direct(const CemaDims& dm, const CemaCoeffs<T>& c, const T* omega, const T* u,
                         const std::complex<T>* hx, T* y, std::complex<T>* h_out) {
  const int64_t B = dm.B, L = dm.L, D = dm.D, N = dm.N;
#pragma omp parallel for schedule(static) if (B * L * D * N >= kParallelMin)
  for (int64_t bd = 0; bd < B * D; ++bd) {
    const int64_t b = bd / D, d = bd % D;
    T hr[kMaxN], hi[kMaxN];
    for (int64_t n = 0; n < N; ++n) {
      hr[n] = hx ? hx[bd * N + n].real() : T(0);
      hi[n] = hx ? hx[bd * N + n].imag() : T(0);
    }
    const T* p = c.p.data() + d * N;
    const T* q = reinterpret_cast<const T*>(c.q.data() + d * N);  // (re, im) pairs
    const T* g = reinterpret_cast<const T*>(c.g.data() + d * N);
    for (int64_t t = 0; t < L; ++t) {
      const T x = u[(b * L + t) * D + d];
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t n = 0; n < N; ++n) {
        const T nr = p[n] * x + q[2 * n] * hr[n] - q[2 * n + 1] * hi[n];
        const T ni = q[2 * n] * hi[n] + q[2 * n + 1] * hr[n];
        hr[n] = nr;
        hi[n] = ni;
        acc += g[2 * n] * nr - g[2 * n + 1] * ni;
      }
      y[(b * L + t) * D + d] = acc + omega[d] * x;
    }
    if (h_out)
      for (int64_t n = 0; n < N; ++n) h_out[bd * N + n] = std::complex<T>(hr[n], hi[n]);
  }
}

template <class T>
void scan_forward(const CemaDims& dm, const CemaCoeffs<T>& c, const T* omega, const T* u,
                  const std::complex<T>* hx, T* y, std::complex<T>* h_out) {
  const int64_t B = dm.B, L = dm.L, D = dm.D, N = dm.N;
  if (L <= kDirectMaxL) return scan_forward_direct(dm, c, omega, u, hx, y, h_out);
  constexpr int64_t Dc = ScanBlock<T>::Dc;
  const int64_t nblk = ceil_div(D, Dc), ntask = B * nblk;
#pragma omp parallel if (B * L * D * N >= kParallelMin && ntask > 1)
  {
    ScanBlock<T> s(N);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t b = task / nblk, d0 = (task % nblk) * Dc;
      s.load_coeffs(c, d0, std::min(Dc, D - d0));
      s.load_state(hx ? hx + b * D * N : nullptr, D, s.hr.data(), s.hi.data());
      for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
        const int64_t tb = std::min(kChunk, L - t0);
        s.load_tile(s.xt.data(), u + (b * L + t0) * D, tb, D);
        std::fill(s.yt.begin(), s.yt.begin() + tb * Dc, T(0));
        for (int64_t n = 0; n < N; ++n)
          scan_steps(s, n, s.hr.data() + n * Dc, s.hi.data() + n * Dc, s.xt.data(), s.yt.data(), tb);
        for (int64_t t = 0; t < tb; ++t) {
          T* yr = y + (b * L + t0 + t) * D + d0;
          const T* yt = s.yt.data() + t * Dc;
          const T* xt = s.xt.data() + t * Dc;
          for (int64_t j = 0; j < s.dc; ++j) yr[j] = yt[j] + omega[d0 + j] * xt[j];
        }
      }
      if (h_out) s.store_state(h_out + b * D * N, s.hr.data(), s.hi.data());
    }
  }
}

/// Raw gradients of one backward pass, in double: w.r.t. p (real), q and g (complex, PyTorch convention), per
/// [D, N]; omega per [D]. Scan mode fills one slice per batch row (summed afterwards), FFT mode one slice.
struct RawGrads {
  int64_t DN = 0, D = 0;
  std::vector<double> gp, gqr, gqi, ggr, ggi, gomega;
  void init(int64_t slices, int64_t dn, int64_t d) {
    DN = dn;
    D = d;
    for (auto* v : {&gp, &gqr, &gqi, &ggr, &ggi}) v->assign(slices * dn, 0.0);
    gomega.assign(slices * d, 0.0);
  }
  /// Sum slices 1.. into slice 0.
  void reduce(int64_t slices) {
    for (auto* v : {&gp, &gqr, &gqi, &ggr, &ggi})
      for (int64_t s = 1; s < slices; ++s)
        for (int64_t i = 0; i < DN; ++i) (*v)[i] += (*v)[s * DN + i];
    for (int64_t s = 1; s < slices; ++s)
      for (int64_t i = 0; i < D; ++i) gomega[i] += gomega[s * D + i];
  }
};

/// Reverse-time adjoint of the scan. Per task (b, channel block): a forward pass stores the state before
/// every kChunk-step chunk; then chunks are visited backwards, each recomputing its states (kept in a small
/// tile) and running the adjoint a <- conj(q) (a + dy_t conj(g)) with
///   du_t += p Re(a_t), dp += x_t Re(a_t), G_q += conj(h_{t-1}) a_t, G_g += dy_t conj(h_t),
/// starting from a = dh_out; dhx = conj(q) a_0. Per-chunk partial sums are in T, flushed to double.
template <class T>
void scan_backward(const CemaDims& dm, const CemaCoeffs<T>& c, const T* omega, const T* u,
                   const std::complex<T>* hx, const T* dy, const std::complex<T>* dh_out, T* du,
                   std::complex<T>* dhx, RawGrads& rg) {
  const int64_t B = dm.B, L = dm.L, D = dm.D, N = dm.N;
  constexpr int64_t Dc = ScanBlock<T>::Dc;
  using A = Lane<T>;
  const int64_t nblk = ceil_div(D, Dc), ntask = B * nblk, nchunk = ceil_div(L, kChunk);
  rg.init(B, D * N, D);
#pragma omp parallel if (B * L * D * N >= kParallelMin && ntask > 1)
  {
    ScanBlock<T> s(N);
    std::vector<T> ckr(nchunk * N * Dc), cki(nchunk * N * Dc);  // state before each chunk
    std::vector<T> ar(N * Dc), ai(N * Dc);                      // adjoint carry
    std::vector<T> htr(kChunk * Dc), hti(kChunk * Dc);          // states of one chunk, one n
    std::vector<T> dyt(kChunk * Dc, T(0));
    std::vector<double> acc(5 * N * Dc), aom(Dc);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t b = task / nblk, d0 = (task % nblk) * Dc;
      s.load_coeffs(c, d0, std::min(Dc, D - d0));
      // Forward: checkpoints.
      s.load_state(hx ? hx + b * D * N : nullptr, D, s.hr.data(), s.hi.data());
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        const int64_t t0 = ch * kChunk, tb = std::min(kChunk, L - t0);
        std::copy(s.hr.begin(), s.hr.end(), ckr.begin() + ch * N * Dc);
        std::copy(s.hi.begin(), s.hi.end(), cki.begin() + ch * N * Dc);
        if (ch + 1 == nchunk) break;  // the last chunk's end state is not needed
        s.load_tile(s.xt.data(), u + (b * L + t0) * D, tb, D);
        for (int64_t n = 0; n < N; ++n)
          scan_steps<T>(s, n, s.hr.data() + n * Dc, s.hi.data() + n * Dc, s.xt.data(), nullptr, tb);
      }
      // Backward.
      s.load_state(dh_out ? dh_out + b * D * N : nullptr, D, ar.data(), ai.data());
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(aom.begin(), aom.end(), 0.0);
      for (int64_t ch = nchunk - 1; ch >= 0; --ch) {
        const int64_t t0 = ch * kChunk, tb = std::min(kChunk, L - t0);
        s.load_tile(s.xt.data(), u + (b * L + t0) * D, tb, D);
        s.load_tile(dyt.data(), dy + (b * L + t0) * D, tb, D);
        T* dut = s.yt.data();
        std::fill(dut, dut + tb * Dc, T(0));
        for (int64_t n = 0; n < N; ++n) {
          const int64_t o = n * Dc;
          const A P = CLaneMap<T>(s.p.data() + o), QR = CLaneMap<T>(s.qr.data() + o);
          const A QI = CLaneMap<T>(s.qi.data() + o), GR = CLaneMap<T>(s.gr.data() + o);
          const A GI = CLaneMap<T>(s.gi.data() + o);
          const T* h0r = ckr.data() + ch * N * Dc + o;
          const T* h0i = cki.data() + ch * N * Dc + o;
          {  // recompute the chunk's states
            A HR = CLaneMap<T>(h0r), HI = CLaneMap<T>(h0i);
            for (int64_t t = 0; t < tb; ++t) {
              const A X = CLaneMap<T>(s.xt.data() + t * Dc);
              const A NR = P * X + QR * HR - QI * HI;
              const A NI = QR * HI + QI * HR;
              HR = NR;
              HI = NI;
              LaneMap<T>(htr.data() + t * Dc) = HR;
              LaneMap<T>(hti.data() + t * Dc) = HI;
            }
          }
          A AR = CLaneMap<T>(ar.data() + o), AI = CLaneMap<T>(ai.data() + o);
          A sp = A::Zero(), sqr = A::Zero(), sqi = A::Zero(), sgr = A::Zero(), sgi = A::Zero();
          for (int64_t t = tb - 1; t >= 0; --t) {
            const A DY = CLaneMap<T>(dyt.data() + t * Dc);
            const A X = CLaneMap<T>(s.xt.data() + t * Dc);
            const A HR = CLaneMap<T>(htr.data() + t * Dc), HI = CLaneMap<T>(hti.data() + t * Dc);
            const A PR = CLaneMap<T>(t > 0 ? htr.data() + (t - 1) * Dc : h0r);
            const A PI = CLaneMap<T>(t > 0 ? hti.data() + (t - 1) * Dc : h0i);
            AR += DY * GR;
            AI -= DY * GI;
            LaneMap<T>(dut + t * Dc) += P * AR;
            sp += X * AR;
            sqr += PR * AR + PI * AI;
            sqi += PR * AI - PI * AR;
            sgr += DY * HR;
            sgi -= DY * HI;
            const A NR = QR * AR + QI * AI;
            const A NI = QR * AI - QI * AR;
            AR = NR;
            AI = NI;
          }
          LaneMap<T>(ar.data() + o) = AR;
          LaneMap<T>(ai.data() + o) = AI;
          double* a5 = acc.data() + 5 * o;
          for (int64_t j = 0; j < Dc; ++j) {
            a5[j] += sp[j];
            a5[Dc + j] += sqr[j];
            a5[2 * Dc + j] += sqi[j];
            a5[3 * Dc + j] += sgr[j];
            a5[4 * Dc + j] += sgi[j];
          }
        }
        for (int64_t t = 0; t < tb; ++t) {
          T* dur = du + (b * L + t0 + t) * D + d0;
          const T* dyr = dyt.data() + t * Dc;
          const T* xr = s.xt.data() + t * Dc;
          const T* dr = dut + t * Dc;
          for (int64_t j = 0; j < s.dc; ++j) {
            dur[j] = dr[j] + omega[d0 + j] * dyr[j];
            aom[j] += static_cast<double>(dyr[j]) * static_cast<double>(xr[j]);
          }
        }
      }
      if (dhx) s.store_state(dhx + b * D * N, ar.data(), ai.data());
      const int64_t base = b * D * N;
      for (int64_t j = 0; j < s.dc; ++j) {
        for (int64_t n = 0; n < N; ++n) {
          const int64_t i = base + (d0 + j) * N + n;
          const double* a5 = acc.data() + 5 * n * Dc;
          rg.gp[i] = a5[j];
          rg.gqr[i] = a5[Dc + j];
          rg.gqi[i] = a5[2 * Dc + j];
          rg.ggr[i] = a5[3 * Dc + j];
          rg.ggi[i] = a5[4 * Dc + j];
        }
        rg.gomega[b * D + d0 + j] = aom[j];
      }
    }
  }
  rg.reduce(B);
}

// ---- FFT mode ----------------------------------------------------------------------------------------

/// This thread's FFT object (half-spectrum real transforms, unscaled). kissfft caches one plan (twiddles) per
/// length in it, so plans survive across calls on the same (OpenMP pool) thread.
template <class T>
Eigen::FFT<T>& fft_engine() {
  thread_local Eigen::FFT<T> f = [] {
    Eigen::FFT<T> e;
    e.SetFlag(Eigen::FFT<T>::HalfSpectrum);
    e.SetFlag(Eigen::FFT<T>::Unscaled);
    return e;
  }();
  return f;
}

/// a * b and a * conj(b) on interleaved complex arrays, in plain real arithmetic (std::complex's operator*
/// checks for NaN/inf results and does not vectorise).
template <class T>
inline void cmul(const std::complex<T>* a, const std::complex<T>* b, std::complex<T>* out, int64_t n) {
  const T* x = reinterpret_cast<const T*>(a);
  const T* y = reinterpret_cast<const T*>(b);
  T* o = reinterpret_cast<T*>(out);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xr = x[2 * i], xi = x[2 * i + 1], yr = y[2 * i], yi = y[2 * i + 1];
    o[2 * i] = xr * yr - xi * yi;
    o[2 * i + 1] = xr * yi + xi * yr;
  }
}
template <class T>
inline void cmul_conj_acc(const std::complex<T>* a, const std::complex<T>* b, std::complex<T>* out,
                          int64_t n) {
  const T* x = reinterpret_cast<const T*>(a);
  const T* y = reinterpret_cast<const T*>(b);
  T* o = reinterpret_cast<T*>(out);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xr = x[2 * i], xi = x[2 * i + 1], yr = y[2 * i], yi = y[2 * i + 1];
    o[2 * i] += xr * yr + xi * yi;
    o[2 * i + 1] += xi * yr - xr * yi;
  }
}

/// Per-thread FFT workspace for one block of Db = kFftBlock channels.
template <class T>
struct FftBlock {
  using C = std::complex<T>;
  static constexpr int64_t Db = kFftBlock<T>;
  int64_t L = 0, N = 0, nfft = 0, nbins = 0, d0 = 0, db = 0;
  Eigen::FFT<T>& fft;
  std::vector<Powers<T>> pw;                 // per channel of the block
  std::vector<C> kf;                         // [Db][nbins] kernel spectra
  std::vector<T> ut, vt, wt;                 // [Db][L] tiles (u, dy / y, du)
  std::vector<T> pad, f, w;                  // [nfft], [L], [L]
  std::vector<C> spec, spec2;                // [nbins]
  std::vector<C> cn;                         // [N]
  std::vector<std::complex<double>> s0, s1;  // [N]

  FftBlock(int64_t L_, int64_t N_) : L(L_), N(N_), fft(fft_engine<T>()) {
    nfft = 2 * next_pow2(L);
    nbins = nfft / 2 + 1;
    pw.resize(Db);
    kf.resize(Db * nbins);
    ut.resize(Db * L);
    vt.resize(Db * L);
    wt.resize(Db * L);
    pad.assign(nfft, T(0));
    f.resize(L);
    w.resize(L);
    spec.resize(nbins);
    spec2.resize(nbins);
    cn.resize(N);
    s0.resize(N);
    s1.resize(N);
  }
  /// Powers and kernel spectrum for every channel of the block starting at first.
  void prepare(const CemaCoeffs<T>& c, int64_t first, int64_t count) {
    d0 = first;
    db = count;
    for (int64_t ch = 0; ch < db; ++ch) {
      const int64_t d = d0 + ch;
      pw[ch].build(c.q.data() + d * N, N, L);
      for (int64_t n = 0; n < N; ++n) cn[n] = c.p[d * N + n] * c.g[d * N + n];
      pw[ch].eval(cn.data(), f.data(), L);  // k[d, j] = sum_n Re(p g q^j)
      rfft(f.data(), kf.data() + ch * nbins);
    }
  }
  /// Spectrum of x[0..L) zero-padded to nfft.
  void rfft(const T* x, C* out) {
    std::copy(x, x + L, pad.begin());
    std::fill(pad.begin() + L, pad.end(), T(0));
    fft.fwd(out, pad.data(), nfft);
  }
  /// out[0..L) = (inverse of the half spectrum)[0..L) / nfft.
  void irfft(const C* in, T* out) {
    fft.inv(pad.data(), in, nfft);
    const T s = T(1) / static_cast<T>(nfft);
    for (int64_t t = 0; t < L; ++t) out[t] = pad[t] * s;
  }
  /// tile[ch][t] <- rows[t * D + d0 + ch]
  void gather(T* tile, const T* rows, int64_t D) const {
    for (int64_t t = 0; t < L; ++t) {
      const T* r = rows + t * D + d0;
      for (int64_t ch = 0; ch < db; ++ch) tile[ch * L + t] = r[ch];
    }
  }
  void scatter(const T* tile, T* rows, int64_t D) const {
    for (int64_t t = 0; t < L; ++t) {
      T* r = rows + t * D + d0;
      for (int64_t ch = 0; ch < db; ++ch) r[ch] = tile[ch * L + t];
    }
  }
};

template <class T>
void fft_forward(const CemaDims& dm, const CemaCoeffs<T>& c, const T* omega, const T* u,
                 const std::complex<T>* hx, T* y, std::complex<T>* h_out) {
  using C = std::complex<T>;
  const int64_t B = dm.B, L = dm.L, D = dm.D, N = dm.N;
  constexpr int64_t Db = FftBlock<T>::Db;
  const int64_t nblk = ceil_div(D, Db);
#pragma omp parallel if (B * L * D * N >= kParallelMin && nblk > 1)
  {
    FftBlock<T> w(L, N);
#pragma omp for schedule(dynamic)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      w.prepare(c, blk * Db, std::min(Db, D - blk * Db));
      for (int64_t b = 0; b < B; ++b) {
        w.gather(w.ut.data(), u + b * L * D, D);
        for (int64_t ch = 0; ch < w.db; ++ch) {
          const int64_t d = w.d0 + ch;
          const T* uc = w.ut.data() + ch * L;
          T* yc = w.vt.data() + ch * L;
          const C* kf = w.kf.data() + ch * w.nbins;
          w.rfft(uc, w.spec.data());
          cmul(w.spec.data(), kf, w.spec.data(), w.nbins);
          w.irfft(w.spec.data(), yc);
          for (int64_t t = 0; t < L; ++t) yc[t] += omega[d] * uc[t];
          const C* hxc = hx ? hx + (b * D + d) * N : nullptr;
          if (hxc) {  // bias b[t] = sum_n Re(g hx q^(t+1))
            for (int64_t n = 0; n < N; ++n) w.cn[n] = c.g[d * N + n] * hxc[n] * c.q[d * N + n];
            w.pw[ch].eval(w.cn.data(), w.f.data(), L);
            for (int64_t t = 0; t < L; ++t) yc[t] += w.f[t];
          }
          if (h_out) {  // h_L = p sum_i u_{L-1-i} q^i + q^L hx
            for (int64_t i = 0; i < L; ++i) w.w[i] = uc[L - 1 - i];
            w.pw[ch].wsum(w.w.data(), L, w.s0.data());
            for (int64_t n = 0; n < N; ++n) {
              std::complex<double> h = static_cast<double>(c.p[d * N + n]) * w.s0[n];
              if (hxc) {
                const C qL = w.pw[ch].at(n, L);
                h += std::complex<double>(qL.real(), qL.imag()) *
                     std::complex<double>(hxc[n].real(), hxc[n].imag());
              }
              h_out[(b * D + d) * N + n] = C(static_cast<T>(h.real()), static_cast<T>(h.imag()));
            }
          }
        }
        w.scatter(w.vt.data(), y + b * L * D, D);
      }
    }
  }
}

template <class T>
std::complex<double> to_cd(std::complex<T> z) {
  return {static_cast<double>(z.real()), static_cast<double>(z.imag())};
}

/// FFT-mode backward: du by FFT correlation with k, dk by FFT correlation of dy with u, then the
/// ema_parameters (kernel and bias) and ema_hidden gradient formulas of spec §1.8. Channel-parallel, so the
/// raw gradients need no reduction over threads.
template <class T>
void fft_backward(const CemaDims& dm, const CemaCoeffs<T>& c, const T* omega, const T* u,
                  const std::complex<T>* hx, const T* dy, const std::complex<T>* dh_out, T* du,
                  std::complex<T>* dhx, RawGrads& rg) {
  using C = std::complex<T>;
  using CD = std::complex<double>;
  const int64_t B = dm.B, L = dm.L, D = dm.D, N = dm.N;
  constexpr int64_t Db = FftBlock<T>::Db;
  const int64_t nblk = ceil_div(D, Db);
  rg.init(1, D * N, D);
  const bool need_t = hx || dhx;  // bias-path sums T0, T1
#pragma omp parallel if (B * L * D * N >= kParallelMin && nblk > 1)
  {
    FftBlock<T> w(L, N);
    std::vector<C> dkf(Db * w.nbins), spec_u(w.nbins);
    std::vector<T> dk(L), w1(L);
    std::vector<CD> t0(N), t1(N);
#pragma omp for schedule(dynamic)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      w.prepare(c, blk * Db, std::min(Db, D - blk * Db));
      std::fill(dkf.begin(), dkf.end(), C(0));
      for (int64_t b = 0; b < B; ++b) {
        w.gather(w.ut.data(), u + b * L * D, D);
        w.gather(w.vt.data(), dy + b * L * D, D);
        for (int64_t ch = 0; ch < w.db; ++ch) {
          const int64_t d = w.d0 + ch, dn = d * N;
          const T* uc = w.ut.data() + ch * L;
          const T* gc = w.vt.data() + ch * L;
          T* duc = w.wt.data() + ch * L;
          const C* kf = w.kf.data() + ch * w.nbins;
          const Powers<T>& pw = w.pw[ch];
          // du = corr(dy, k) + omega dy;  dk += corr(dy, u) (accumulated as a spectrum over b).
          w.rfft(gc, w.spec.data());
          w.rfft(uc, spec_u.data());
          C* dkc = dkf.data() + ch * w.nbins;
          std::fill(w.spec2.begin(), w.spec2.end(), C(0));
          cmul_conj_acc(w.spec.data(), kf, w.spec2.data(), w.nbins);  // DY conj(K)
          cmul_conj_acc(w.spec.data(), spec_u.data(), dkc, w.nbins);  // DY conj(U), summed over b
          w.irfft(w.spec2.data(), duc);
          double dom = 0;
          for (int64_t t = 0; t < L; ++t) {
            duc[t] += omega[d] * gc[t];
            dom += static_cast<double>(gc[t]) * static_cast<double>(uc[t]);
          }
          rg.gomega[d] += dom;
          const C* hxc = hx ? hx + (b * D + d) * N : nullptr;
          C* dhxc = dhx ? dhx + (b * D + d) * N : nullptr;
          // Bias b_j = sum_n Re(g hx q^(j+1)), upstream dy:  T0 = sum_j dy_j q^j, T1 = sum_j (j+1) dy_j q^j.
          if (need_t) {
            pw.wsum(gc, L, t0.data());
            if (hxc) {
              for (int64_t j = 0; j < L; ++j) w1[j] = static_cast<T>(j + 1) * gc[j];
              pw.wsum(w1.data(), L, t1.data());
            }
            for (int64_t n = 0; n < N; ++n) {
              const CD q = to_cd(c.q[dn + n]), g = to_cd(c.g[dn + n]);
              if (hxc) {
                const CD h = to_cd(hxc[n]);
                const CD gq = std::conj(g * h * t1[n]), gg = std::conj(q * h * t0[n]);
                rg.gqr[dn + n] += gq.real();
                rg.gqi[dn + n] += gq.imag();
                rg.ggr[dn + n] += gg.real();
                rg.ggi[dn + n] += gg.imag();
              }
              if (dhxc) {
                const CD gh = std::conj(q * g * t0[n]);
                dhxc[n] = C(static_cast<T>(gh.real()), static_cast<T>(gh.imag()));
              }
            }
          }
          // Final state h_L = p sum_j q^(L-1-j) u_j + q^L hx, upstream G_h = dh_out.
          const C* ghc = dh_out ? dh_out + (b * D + d) * N : nullptr;
          if (ghc) {
            for (int64_t n = 0; n < N; ++n) w.cn[n] = std::conj(ghc[n]) * c.p[dn + n];
            pw.eval(w.cn.data(), w.f.data(), L);  // du_j += sum_n Re(conj(G) p q^(L-1-j))
            for (int64_t i = 0; i < L; ++i) duc[L - 1 - i] += w.f[i];
            // R0 = sum_i v_i q^i, R1 = sum_i (i+1) v_{i+1} q^i with v_i = u_{L-1-i}.
            for (int64_t i = 0; i < L; ++i) w.w[i] = uc[L - 1 - i];
            for (int64_t i = 0; i + 1 < L; ++i) w1[i] = static_cast<T>(i + 1) * w.w[i + 1];
            pw.wsum(w.w.data(), L, w.s0.data());
            pw.wsum(w1.data(), L - 1, w.s1.data());
            for (int64_t n = 0; n < N; ++n) {
              const CD gh = to_cd(ghc[n]), p = static_cast<double>(c.p[dn + n]);
              rg.gp[dn + n] += (std::conj(gh) * w.s0[n]).real();
              CD dq = p * w.s1[n];
              if (hxc) dq += static_cast<double>(L) * to_cd(pw.at(n, L - 1)) * to_cd(hxc[n]);
              const CD gq = std::conj(std::conj(gh) * dq);
              rg.gqr[dn + n] += gq.real();
              rg.gqi[dn + n] += gq.imag();
              if (dhxc) {
                const CD add = gh * std::conj(to_cd(pw.at(n, L)));
                dhxc[n] += C(static_cast<T>(add.real()), static_cast<T>(add.imag()));
              }
            }
          }
        }
        w.scatter(w.wt.data(), du + b * L * D, D);
      }
      // Kernel k_j = sum_n Re(p g q^j), upstream dk:  S0 = sum_j dk_j q^j, S1 = sum_j (j+1) dk_{j+1} q^j.
      for (int64_t ch = 0; ch < w.db; ++ch) {
        const int64_t d = w.d0 + ch, dn = d * N;
        w.irfft(dkf.data() + ch * w.nbins, dk.data());
        for (int64_t j = 0; j + 1 < L; ++j) w1[j] = static_cast<T>(j + 1) * dk[j + 1];
        w.pw[ch].wsum(dk.data(), L, w.s0.data());
        w.pw[ch].wsum(w1.data(), L - 1, w.s1.data());
        for (int64_t n = 0; n < N; ++n) {
          const CD g = to_cd(c.g[dn + n]);
          const double p = static_cast<double>(c.p[dn + n]);
          rg.gp[dn + n] += (g * w.s0[n]).real();
          const CD gq = std::conj(p * g * w.s1[n]), gg = std::conj(p * w.s0[n]);
          rg.gqr[dn + n] += gq.real();
          rg.gqi[dn + n] += gq.imag();
          rg.ggr[dn + n] += gg.real();
          rg.ggi[dn + n] += gg.imag();
        }
      }
    }
  }
}

/// Chain (dp, G_q, G_g, domega) to the real parameters (spec §1.8), accumulating into grads. Recomputes the
/// sigmoids in double. With r = 1 - p sd, q = r e^{i phi}: dr = Re(conj(G_q) e^{i phi}),
/// dphi = -Im(conj(G_q) q); dalpha = (dp - sd dr) p (1-p); ddelta = -p dr sd (1-sd);
/// dtheta = sum_n dphi_n (n+1) (2 pi / N) s'(theta); dgamma = G_g / sqrt(N).
template <class T>
void chain(const CemaParams<T>& prm, int64_t D, int64_t N, const RawGrads& rg, const CemaGrads<T>& gr) {
  const double two_pi_n = 2.0 * std::numbers::pi / static_cast<double>(N), scale = std::sqrt(1.0 / N);
  for (int64_t d = 0; d < D; ++d) {
    const double st = sigmoid(static_cast<double>(prm.theta[d]));
    double dth = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = d * N + n;
      const double p = sigmoid(static_cast<double>(prm.alpha[i]));
      const double sd = sigmoid(static_cast<double>(prm.delta[i]));
      const double r = 1.0 - p * sd, phi = static_cast<double>(n + 1) * two_pi_n * st;
      const std::complex<double> e(std::cos(phi), std::sin(phi)), gq(rg.gqr[i], rg.gqi[i]);
      const double dr = (std::conj(gq) * e).real();
      const double dphi = -(std::conj(gq) * (r * e)).imag();
      if (gr.alpha) gr.alpha[i] += static_cast<T>((rg.gp[i] - sd * dr) * p * (1.0 - p));
      if (gr.delta) gr.delta[i] += static_cast<T>(-p * dr * sd * (1.0 - sd));
      if (gr.gamma) {
        gr.gamma[2 * i] += static_cast<T>(rg.ggr[i] * scale);
        gr.gamma[2 * i + 1] += static_cast<T>(rg.ggi[i] * scale);
      }
      dth += dphi * static_cast<double>(n + 1) * two_pi_n;
    }
    if (gr.theta) gr.theta[d] += static_cast<T>(dth * st * (1.0 - st));
    if (gr.omega) gr.omega[d] += static_cast<T>(rg.gomega[d]);
  }
}

}  // namespace cema_detail

/// Coefficients of spec §1.2, computed in T in the official order of operations.
template <class T>
void cema_coeffs(cpu, const CemaParams<T>& prm, int64_t D, int64_t N, CemaCoeffs<T>& out) {
  TESSERA_CHECK(D > 0, "cema_coeffs: D must be positive, got ", D);
  TESSERA_CHECK(N > 0 && N <= cema_detail::kMaxN, "cema_coeffs: N must be in [1, ", cema_detail::kMaxN,
                "], got ", N);
  cema_detail::check_params("cema_coeffs", prm);
  out.D = D;
  out.N = N;
  out.p.resize(D * N);
  out.q.resize(D * N);
  out.g.resize(D * N);
  const T two_pi_n = static_cast<T>(2.0 * std::numbers::pi / static_cast<double>(N));
  const T scale = static_cast<T>(std::sqrt(1.0 / static_cast<double>(N)));
  auto sig = [](T x) { return T(1) / (T(1) + std::exp(-x)); };
  for (int64_t d = 0; d < D; ++d) {
    const T base = sig(prm.theta[d]) * two_pi_n;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = d * N + n;
      const T p = sig(prm.alpha[i]), sd = sig(prm.delta[i]);
      const T phi = static_cast<T>(n + 1) * base, r = T(1) - p * sd;
      out.p[i] = p;
      out.q[i] = std::complex<T>(r * std::cos(phi), r * std::sin(phi));
      out.g[i] = std::complex<T>(prm.gamma[2 * i], prm.gamma[2 * i + 1]) * scale;
    }
  }
}

/// y = CEMA(u) with cached coefficients (the decode path: L = 1 with Scan costs D*N complex updates).
/// omega [D]; hx [B, D, N] (null = 0); h_out [B, D, N] (null = not needed).
template <class T>
void cema_forward(cpu, const CemaDims& dm, const CemaCoeffs<T>& c, const std::type_identity_t<T>* omega,
                  const std::type_identity_t<T>* u, const std::complex<std::type_identity_t<T>>* hx,
                  std::type_identity_t<T>* y, std::complex<std::type_identity_t<T>>* h_out,
                  CemaMode mode = CemaMode::Auto) {
  constexpr const char* op = "cema_forward";
  cema_detail::check_dims(op, dm);
  cema_detail::check_coeffs(op, c, dm);
  TESSERA_CHECK(omega, op, ": omega is null");
  TESSERA_CHECK(u, op, ": u is null");
  TESSERA_CHECK(y, op, ": y is null");
  if (cema_detail::resolve(mode) == CemaMode::Fft)
    cema_detail::fft_forward(dm, c, omega, u, hx, y, h_out);
  else
    cema_detail::scan_forward(dm, c, omega, u, hx, y, h_out);
}

/// y = CEMA(u) (spec §1.3); hx [B, D, N] carried state (null = 0); h_out [B, D, N] final state (null = not
/// needed).
template <class T>
void cema_forward(cpu, const CemaDims& dm, const CemaParams<T>& prm, const std::type_identity_t<T>* u,
                  const std::complex<std::type_identity_t<T>>* hx, std::type_identity_t<T>* y,
                  std::complex<std::type_identity_t<T>>* h_out, CemaMode mode = CemaMode::Auto) {
  cema_detail::check_dims("cema_forward", dm);
  cema_detail::check_params("cema_forward", prm);
  CemaCoeffs<T> c;
  cema_coeffs(cpu{}, prm, dm.D, dm.N, c);
  cema_forward(cpu{}, dm, c, prm.omega, u, hx, y, h_out, mode);
}

/// Backward. dy [B, L, D]; dh_out [B, D, N] (null = 0). du overwritten; dhx [B, D, N] overwritten (null = not
/// needed); parameter gradients accumulated.
template <class T>
void cema_backward(cpu, const CemaDims& dm, const CemaParams<T>& prm, const std::type_identity_t<T>* u,
                   const std::complex<std::type_identity_t<T>>* hx, const std::type_identity_t<T>* dy,
                   const std::complex<std::type_identity_t<T>>* dh_out, std::type_identity_t<T>* du,
                   std::complex<std::type_identity_t<T>>* dhx, const CemaGrads<T>& grads,
                   CemaMode mode = CemaMode::Auto) {
  constexpr const char* op = "cema_backward";
  cema_detail::check_dims(op, dm);
  cema_detail::check_params(op, prm);
  TESSERA_CHECK(u, op, ": u is null");
  TESSERA_CHECK(dy, op, ": dy is null");
  TESSERA_CHECK(du, op, ": du is null");
  CemaCoeffs<T> c;
  cema_coeffs(cpu{}, prm, dm.D, dm.N, c);
  cema_detail::RawGrads rg;
  if (cema_detail::resolve(mode) == CemaMode::Fft)
    cema_detail::fft_backward(dm, c, prm.omega, u, hx, dy, dh_out, du, dhx, rg);
  else
    cema_detail::scan_backward(dm, c, prm.omega, u, hx, dy, dh_out, du, dhx, rg);
  cema_detail::chain(prm, dm.D, dm.N, rg, grads);
}

// CUDA (cuda/cema.cu), float only, same semantics, all pointers device memory. The GPU has one algorithm (the
// scan); `mode` is accepted for a backend-generic call and ignored.
void cema_forward(cuda, const CemaDims&, const CemaParams<float>&, const float* u,
                  const std::complex<float>* hx, float* y, std::complex<float>* h_out,
                  CemaMode mode = CemaMode::Auto);
void cema_backward(cuda, const CemaDims&, const CemaParams<float>&, const float* u,
                   const std::complex<float>* hx, const float* dy, const std::complex<float>* dh_out,
                   float* du, std::complex<float>* dhx, const CemaGrads<float>& grads,
                   CemaMode mode = CemaMode::Auto);
/// The coefficients of §1.2 into device buffers: p [D, N], q and g [D, N] complex (the decoding cache).
void cema_coeffs(cuda, const CemaParams<float>& prm, int64_t D, int64_t N, float* p, std::complex<float>* q,
                 std::complex<float>* g);
/// y = CEMA(u) with device coefficients from cema_coeffs (the decode path: no exp/sin/cos per step).
void cema_forward(cuda, const CemaDims&, const float* p, const std::complex<float>* q,
                  const std::complex<float>* g, const float* omega, const float* u, const std::complex<float>* hx,
                  float* y, std::complex<float>* h_out);

}  // namespace tessera::ops
