// The `cuda` overloads declared in the public op headers, bound to the launchers of the .cu files
// (see launch.hpp for why this file exists). Compiled by the host compiler.
#include "attn_args.hpp"
#include "launch.hpp"
#include "launch_megalodon.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/softmax.hpp"
#include "tessera/ops/timestep_norm.hpp"

#include <complex>
#include <type_traits>

namespace tessera::ops {

void gemm(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cuda_detail::gemm_f32(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void gemm_batched(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C,
                  int64_t ldc, int64_t sc, int64_t batch) {
  cuda_detail::gemm_f32(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

void gemm_add(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
              int64_t lda, const bf16* B, int64_t ldb, float beta, const float* C, int64_t ldc, float* D,
              int64_t ldd) {
  static_assert(sizeof(bf16) == sizeof(uint16_t));
  cuda_detail::gemm_bf16_cd(ta, tb, M, N, K, alpha, reinterpret_cast<const uint16_t*>(A), lda,
                            reinterpret_cast<const uint16_t*>(B), ldb, beta, C, ldc, D, ldd);
}

void rmsnorm_forward(cuda, float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     double eps) {
  cuda_detail::rmsnorm_forward_f32(y, rstd, x, w, N, D, eps);
}

void rmsnorm_forward(cuda, bf16* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     double eps) {
  cuda_detail::rmsnorm_forward_bf16out(reinterpret_cast<uint16_t*>(y), rstd, x, w, N, D, eps);
}

void rmsnorm_backward(cuda, float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D, const float* residual) {
  cuda_detail::rmsnorm_backward_f32(dx, dw, dy, x, w, rstd, N, D, residual);
}

void softmax_forward(cuda, float* y, const float* x, int64_t N, int64_t D) {
  cuda_detail::softmax_forward_f32(y, x, N, D);
}

void softmax_backward(cuda, float* dx, const float* dy, const float* y, int64_t N, int64_t D) {
  cuda_detail::softmax_backward_f32(dx, dy, y, N, D);
}

// ---- CEMA (cema.cu) ----------------------------------------------------------------------------------
// The CPU op's checks run first, so both backends reject the same inputs with the same messages.

namespace {

cuda_detail::CemaArgs cema_args(const CemaDims& dm, const CemaParams<float>& prm) {
  return {dm.B, dm.L, dm.D, dm.N, prm.alpha, prm.delta, prm.theta, prm.gamma, prm.omega};
}
// std::complex<float> arrays are arrays of (re, im) float pairs ([complex.numbers.general]).
const float* floats(const std::complex<float>* p) { return reinterpret_cast<const float*>(p); }
float* floats(std::complex<float>* p) { return reinterpret_cast<float*>(p); }

}  // namespace

void cema_forward(cuda, const CemaDims& dm, const CemaParams<float>& prm, const float* u,
                  const std::complex<float>* hx, float* y, std::complex<float>* h_out, CemaMode) {
  constexpr const char* op = "cema_forward";
  cema_detail::check_dims(op, dm);
  cema_detail::check_params(op, prm);
  TESSERA_CHECK(u, op, ": u is null");
  TESSERA_CHECK(y, op, ": y is null");
  cuda_detail::cema_forward_f32(cema_args(dm, prm), u, floats(hx), y, floats(h_out));
}

void cema_backward(cuda, const CemaDims& dm, const CemaParams<float>& prm, const float* u,
                   const std::complex<float>* hx, const float* dy, const std::complex<float>* dh_out, float* du,
                   std::complex<float>* dhx, const CemaGrads<float>& grads, CemaMode) {
  constexpr const char* op = "cema_backward";
  cema_detail::check_dims(op, dm);
  cema_detail::check_params(op, prm);
  TESSERA_CHECK(u, op, ": u is null");
  TESSERA_CHECK(dy, op, ": dy is null");
  TESSERA_CHECK(du, op, ": du is null");
  cuda_detail::cema_backward_f32(cema_args(dm, prm), u, floats(hx), dy, floats(dh_out), du, floats(dhx),
                                 grads.alpha, grads.delta, grads.theta, grads.gamma, grads.omega);
}

void cema_coeffs(cuda, const CemaParams<float>& prm, int64_t D, int64_t N, float* p, std::complex<float>* q,
                 std::complex<float>* g) {
  constexpr const char* op = "cema_coeffs";
  cema_detail::check_dims(op, CemaDims{1, 1, D, N});
  cema_detail::check_params(op, prm);
  cuda_detail::cema_coeffs_f32(cema_args(CemaDims{0, 0, D, N}, prm), p, floats(q), floats(g));
}

void cema_forward(cuda, const CemaDims& dm, const float* p, const std::complex<float>* q,
                  const std::complex<float>* g, const float* omega, const float* u,
                  const std::complex<float>* hx, float* y, std::complex<float>* h_out) {
  constexpr const char* op = "cema_forward";
  cema_detail::check_dims(op, dm);
  TESSERA_CHECK(p && q && g, op, ": coefficients p, q or g are null (compute them with cema_coeffs)");
  TESSERA_CHECK(omega, op, ": omega is null");
  TESSERA_CHECK(u, op, ": u is null");
  TESSERA_CHECK(y, op, ": y is null");
  cuda_detail::CemaArgs a{dm.B, dm.L, dm.D, dm.N};
  a.omega = omega;
  cuda_detail::cema_forward_coeffs_f32(a, p, floats(q), floats(g), u, floats(hx), y, floats(h_out));
}

// ---- Megalodon's elementwise pieces (megalodon_layers.cu) ---------------------------------------------

void mega_qk_forward(cuda, float* q, float* k, const float* zn, const float* gamma, const float* beta,
                     int64_t n, int64_t Z, int64_t dz) {
  cuda_detail::mega_qk_forward_f32(q, k, zn, gamma, beta, n, Z, dz);
}
void mega_qk_backward(cuda, float* dzn, float* dgamma, float* dbeta, const float* dq, const float* dk,
                      const float* zn, const float* gamma, int64_t n, int64_t Z, int64_t dz) {
  cuda_detail::mega_qk_backward_f32(dzn, dgamma, dbeta, dq, dk, zn, gamma, n, Z, dz);
}
void gate_mul_forward(cuda, float* y, const float* a, const float* b, int64_t n) {
  cuda_detail::gate_mul_forward_f32(y, a, b, n);
}
void gate_mul_backward(cuda, float* da, float* db, const float* g, const float* a, const float* b,
                       int64_t n) {
  cuda_detail::gate_mul_backward_f32(da, db, g, a, b, n);
}
void rescale_residual_forward(cuda, float* out, const float* h, const float* alpha, const float* res,
                              int64_t n, int64_t D) {
  cuda_detail::rescale_residual_forward_f32(out, h, alpha, res, n, D);
}
void rescale_residual_backward(cuda, float* dh, float* dalpha, const float* g, const float* h,
                               const float* alpha, int64_t n, int64_t D) {
  cuda_detail::rescale_residual_backward_f32(dh, dalpha, g, h, alpha, n, D);
}
void offset_scale(cuda, float* y, const float* w, int64_t n) {
  cuda_detail::offset_scale_f32(y, w, n);
}
void add_row_bias(cuda, float* y, const float* bias, int64_t n, int64_t D) {
  cuda_detail::add_row_bias_f32(y, bias, n, D);
}
void row_bias_backward(cuda, float* dbias, const float* dy, int64_t n, int64_t D) {
  cuda_detail::row_bias_backward_f32(dbias, dy, n, D);
}

// ---- TimestepNorm (timestep_norm.cu) -----------------------------------------------------------------
// The CPU op's checks, except prev_count >= 0 (device memory).

void timestep_norm_forward(cuda, const TsnDims& d, const float* x, const int64_t* prev_count,
                           const float* prev_mean, const float* prev_var, const float* weight, const float* bias,
                           double eps, float* y, int64_t* count, float* mean, float* var, float* cummean,
                           float* cumrstd) {
  constexpr const char* op = "timestep_norm_forward";
  tsn_detail::check_dims(op, d);  // prev_count lives on the device: its sign is not checked here
  TESSERA_CHECK(x, op, ": x is null");
  TESSERA_CHECK(y, op, ": y is null");
  TESSERA_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  cuda_detail::timestep_norm_forward_f32(d.B, d.L, d.D, d.G, x, prev_count, prev_mean, prev_var, weight, bias,
                                         eps, y, count, mean, var, cummean, cumrstd);
}

void timestep_norm_backward(cuda, const TsnDims& d, const float* dy, const float* dmean, const float* dvar,
                            const float* x, const int64_t* prev_count, const float* prev_mean,
                            const float* cummean, const float* cumrstd, const float* weight, float* dx,
                            float* dprev_mean, float* dprev_var, float* dweight, float* dbias) {
  constexpr const char* op = "timestep_norm_backward";
  tsn_detail::check_dims(op, d);
  TESSERA_CHECK(dy, op, ": dy is null");
  TESSERA_CHECK(x, op, ": x is null");
  TESSERA_CHECK(cummean, op, ": cummean is null (save it in the forward)");
  TESSERA_CHECK(cumrstd, op, ": cumrstd is null (save it in the forward)");
  TESSERA_CHECK(dx, op, ": dx is null");
  cuda_detail::timestep_norm_backward_f32(d.B, d.L, d.D, d.G, dy, dmean, dvar, x, prev_count, prev_mean, cummean,
                                          cumrstd, weight, dx, dprev_mean, dprev_var, dweight, dbias);
}

// ---- attention (attention.cu) ------------------------------------------------------------------------
// The CPU op's dimension checks and mask binding (which validates W and C) run first. The id policies are
// bound with k_sorted cleared (null checks only: their ids are device memory and are never read here); a
// declared k_sorted is verified by attention.cu on the device.

namespace {

using cuda_detail::AttnMask;

cuda_detail::AttnArgs attn_args(const AttnDims& d, const char* who, AttnMask kind, int64_t param) {
  return attn_detail::to_attn_args(d, who, kind, param);
}

template <class Mask>
cuda_detail::AttnArgs attn_args(const AttnDims& d, const Mask& m, const char* who) {
  const Mask bound = mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  if constexpr (std::is_same_v<Mask, mask::Causal>)
    return attn_args(d, who, AttnMask::Causal, 0);
  else if constexpr (std::is_same_v<Mask, mask::SlidingWindow>)
    return attn_args(d, who, AttnMask::SlidingWindow, bound.W);
  else
    return attn_args(d, who, AttnMask::ChunkLocal, bound.C);
}

/// Bound-for-checks copy of an id policy: null checks and layout, no read of the (device) ids.
template <class Mask>
Mask checked_ids(const AttnDims& d, Mask m) {
  m.k_sorted = false;
  return mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
}

/// DocumentCuts, alone or under All<Causal, DocumentCuts> (causal = true).
void id_forward(const AttnDims& d, const mask::DocumentCuts& m, bool causal, const float* q, const float* k,
                const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_forward_id_equal_f32(a, m.q_doc, m.k_doc, m.k_sorted, causal, false, q, k, v, o, lse);
}
void id_backward(const AttnDims& d, const mask::DocumentCuts& m, bool causal, const float* q, const float* k,
                 const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                 float* dv) {
  const auto a = attn_args(d, "attention_backward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_backward_id_equal_f32(a, m.q_doc, m.k_doc, m.k_sorted, causal, false, q, k, v, o, lse,
                                               dout, dq, dk, dv);
}

template <class Mask>
void attention_forward_cuda(const AttnDims& d, const Mask& m, const float* q, const float* k, const float* v,
                            float* o, float* lse) {
  cuda_detail::attention_forward_f32(attn_args(d, m, "attention_forward"), q, k, v, o, lse);
}

template <class Mask>
void attention_backward_cuda(const AttnDims& d, const Mask& m, const float* q, const float* k, const float* v,
                             const float* o, const float* lse, const float* dout, float* dq, float* dk,
                             float* dv) {
  cuda_detail::attention_backward_f32(attn_args(d, m, "attention_backward"), q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace

void attention_forward(cuda, const AttnDims& d, const mask::Causal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  attention_forward_cuda(d, m, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  attention_forward_cuda(d, m, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  attention_forward_cuda(d, m, q, k, v, o, lse);
}

void attention_backward(cuda, const AttnDims& d, const mask::Causal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  attention_backward_cuda(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  attention_backward_cuda(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  attention_backward_cuda(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}

bool attention_forward_chunks_bf16(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q,
                                   const float* k, const float* v, float* o, float* lse) {
  return cuda_detail::chunk_attention_forward_gemm(attn_args(d, m, "attention_forward"), q, k, v, o, lse);
}
bool attention_backward_chunks_bf16(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q,
                                    const float* k, const float* v, const float* o, const float* lse,
                                    const float* dout, float* dq, float* dk, float* dv) {
  return cuda_detail::chunk_attention_backward_gemm(attn_args(d, m, "attention_backward"), q, k, v, o, lse,
                                                    dout, dq, dk, dv);
}

// Id masks: every id / validity pointer is device memory.
void attention_forward(cuda, const AttnDims& d, const mask::DocumentCuts& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  id_forward(d, m, false, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::All<mask::Causal, mask::DocumentCuts>& m,
                       const float* q, const float* k, const float* v, float* o, float* lse) {
  id_forward(d, std::get<1>(m.parts), true, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::SegmentEqual& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_forward_id_equal_f32(a, m.q_seg, m.k_seg, m.k_sorted, false, true, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::BlockCausal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_forward_block_causal_f32(a, m.q_seg, m.k_seg, m.k_sorted, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::KeyValid& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward", AttnMask::Causal, 0);
  mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  cuda_detail::attention_forward_key_valid_f32(a, m.valid, q, k, v, o, lse);
}

void attention_backward(cuda, const AttnDims& d, const mask::DocumentCuts& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  id_backward(d, m, false, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::All<mask::Causal, mask::DocumentCuts>& m,
                        const float* q, const float* k, const float* v, const float* o, const float* lse,
                        const float* dout, float* dq, float* dk, float* dv) {
  id_backward(d, std::get<1>(m.parts), true, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::SegmentEqual& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  const auto a = attn_args(d, "attention_backward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_backward_id_equal_f32(a, m.q_seg, m.k_seg, m.k_sorted, false, true, q, k, v, o, lse,
                                               dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::BlockCausal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  const auto a = attn_args(d, "attention_backward", AttnMask::Causal, 0);
  checked_ids(d, m);
  cuda_detail::attention_backward_block_causal_f32(a, m.q_seg, m.k_seg, m.k_sorted, q, k, v, o, lse, dout, dq,
                                                   dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::KeyValid& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  const auto a = attn_args(d, "attention_backward", AttnMask::Causal, 0);
  mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  cuda_detail::attention_backward_key_valid_f32(a, m.valid, q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace tessera::ops
