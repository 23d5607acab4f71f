// The `cuda` overloads of the core and BLT ops (embedding, activations, elementwise, fills, RoPE,
// cross-entropy, LayerNorm, segment pooling, patch ids, hash n-gram ids, entropies, AdamW, clipping, bf16
// GEMM), bound to the launchers of elementwise.cu, loss.cu, segment.cu, hash.cu, adamw.cu and gemm.cu
// (launch_core.hpp). Compiled by the host compiler, so a signature that drifts from its public declaration
// fails to compile here.
#include <cstdint>
#include <type_traits>

#include "launch_core.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/hash_embedding.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/embedding.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/rope.hpp"
#include "tessera/ops/segment.hpp"
#include "tessera/patchers/patcher.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

namespace tessera {

// bf16 arrays cross into the .cu files as their bit patterns.
static_assert(sizeof(bf16) == sizeof(uint16_t) && std::is_standard_layout_v<bf16>,
              "bf16 must be 16 raw bits");

namespace {
const uint16_t* bits(const bf16* p) {
  return reinterpret_cast<const uint16_t*>(p);
}
uint16_t* bits(bf16* p) {
  return reinterpret_cast<uint16_t*>(p);
}
}  // namespace

namespace ops {

// ---- embedding, activations, elementwise, RoPE (elementwise.cu) ---------------------------------------

void embedding_forward(cuda, float* out, const int64_t* ids, const float* table, int64_t N, int64_t V,
                       int64_t D) {
  cuda_detail::embedding_forward_f32(out, ids, table, N, V, D);
}

void embedding_backward(cuda, float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V,
                        int64_t D) {
  cuda_detail::embedding_backward_f32(dtable, dout, ids, N, V, D);
}

void silu_forward(cuda, float* y, const float* x, int64_t n) {
  cuda_detail::silu_forward_f32(y, x, n);
}

void silu_backward(cuda, float* dx, const float* dy, const float* x, int64_t n) {
  cuda_detail::silu_backward_f32(dx, dy, x, n);
}

void gelu_forward(cuda, float* y, const float* x, int64_t n, GeluApprox approx) {
  cuda_detail::gelu_forward_f32(y, x, n, approx == GeluApprox::Tanh);
}

void gelu_backward(cuda, float* dx, const float* dy, const float* x, int64_t n, GeluApprox approx) {
  cuda_detail::gelu_backward_f32(dx, dy, x, n, approx == GeluApprox::Tanh);
}

void swiglu_forward(cuda, float* out, const float* gate, const float* up, int64_t N, int64_t H,
                    int64_t gu_stride) {
  cuda_detail::swiglu_forward_f32(out, gate, up, N, H, gu_stride ? gu_stride : H);
}

void swiglu_backward(cuda, float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t N, int64_t H, int64_t gu_stride) {
  cuda_detail::swiglu_backward_f32(dgate, dup, dout, gate, up, N, H, gu_stride ? gu_stride : H);
}

void swiglu_forward(cuda, bf16* out, const float* gate, const float* up, int64_t N, int64_t H,
                    int64_t gu_stride) {
  cuda_detail::swiglu_forward_bf16out(bits(out), gate, up, N, H, gu_stride ? gu_stride : H);
}

void swiglu_backward(cuda, bf16* dgate, bf16* dup, const float* dout, const float* gate, const float* up,
                     int64_t N, int64_t H, int64_t gu_stride) {
  cuda_detail::swiglu_backward_bf16out(bits(dgate), bits(dup), dout, gate, up, N, H,
                                       gu_stride ? gu_stride : H);
}

void swiglu_forward(cuda, bf16* out, const bf16* gate, const bf16* up, int64_t N, int64_t H,
                    int64_t gu_stride) {
  cuda_detail::swiglu_forward_bf16(bits(out), bits(gate), bits(up), N, H, gu_stride ? gu_stride : H);
}

void swiglu_backward(cuda, bf16* dgate, bf16* dup, const float* dout, const bf16* gate, const bf16* up,
                     int64_t N, int64_t H, int64_t gu_stride) {
  cuda_detail::swiglu_backward_bf16(bits(dgate), bits(dup), dout, bits(gate), bits(up), N, H,
                                    gu_stride ? gu_stride : H);
}

void add_inplace(cuda, float* y, const float* x, int64_t n) {
  cuda_detail::add_inplace_f32(y, x, n);
}
void add(cuda, float* z, const float* x, const float* y, int64_t n) {
  cuda_detail::add_f32(z, x, y, n);
}
void scale_inplace(cuda, float* y, float a, int64_t n) {
  cuda_detail::scale_inplace_f32(y, a, n);
}
void fill(cuda, float* y, float value, int64_t n) {
  cuda_detail::fill_f32(y, value, n);
}
void cast(cuda, bf16* dst, const float* src, int64_t n) {
  cuda_detail::cast_f32_to_bf16(reinterpret_cast<uint16_t*>(dst), src, n);
}
void cast(cuda, float* dst, const bf16* src, int64_t n) {
  cuda_detail::cast_bf16_to_f32(dst, reinterpret_cast<const uint16_t*>(src), n);
}
void copy_rows(cuda, float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
               int64_t cols) {
  cuda_detail::copy_rows_f32(dst, dst_stride, src, src_stride, rows, cols);
}

void fill_positions(cuda, int64_t* positions, int64_t batch, int64_t seq, int64_t offset, int64_t modulo) {
  cuda_detail::fill_positions_i64(positions, batch, seq, offset, modulo);
}

void rope_forward(cuda, float* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
                  double theta, RopeStyle style) {
  cuda_detail::rope_f32(x, stride, positions, N, H, Dh, theta, style == RopeStyle::Interleaved, 1.0);
}

void rope_backward(cuda, float* dx, int64_t stride, const int64_t* positions, int64_t N, int64_t H,
                   int64_t Dh, double theta, RopeStyle style) {
  cuda_detail::rope_f32(dx, stride, positions, N, H, Dh, theta, style == RopeStyle::Interleaved, -1.0);
}

namespace {
/// The four rope_qk overloads: fp32 or bf16 (bit patterns) on each side, told to the launcher by type.
template <class In, class Out>
void rope_qk_any(const In* q, const In* k, Out* q_out, Out* k_out, const int64_t* positions, int64_t N,
                 int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  cuda_detail::rope_qk(q, k, q_out, k_out, std::is_same_v<In, bf16>, std::is_same_v<Out, bf16>, positions, N, Hq,
                       Hk, Dh, theta, style == RopeStyle::Interleaved, inverse ? -1.0 : 1.0);
}
}  // namespace

void rope_qk(cuda, const float* q, const float* k, float* q_out, float* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  rope_qk_any(q, k, q_out, k_out, positions, N, Hq, Hk, Dh, theta, style, inverse);
}
void rope_qk(cuda, const float* q, const float* k, bf16* q_out, bf16* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  rope_qk_any(q, k, q_out, k_out, positions, N, Hq, Hk, Dh, theta, style, inverse);
}
void rope_qk(cuda, const bf16* q, const bf16* k, float* q_out, float* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  rope_qk_any(q, k, q_out, k_out, positions, N, Hq, Hk, Dh, theta, style, inverse);
}
void rope_qk(cuda, const bf16* q, const bf16* k, bf16* q_out, bf16* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  rope_qk_any(q, k, q_out, k_out, positions, N, Hq, Hk, Dh, theta, style, inverse);
}

void append_kv(cuda, float* kdst, const float* k, int64_t k_stride, int64_t kw, float* vdst, const float* v,
               int64_t v_stride, int64_t vw, int64_t* seg_dst, const int64_t* seg, int64_t rows) {
  cuda_detail::append_kv_f32(kdst, k, k_stride, kw, vdst, v, v_stride, vw, seg_dst, seg, rows);
}
void rope_qk_append(cuda, float* q, const float* k, const float* v, const int64_t* positions, int64_t N,
                    int64_t Hq, int64_t Hk, int64_t Dh, int64_t vw, double theta, RopeStyle style,
                    float* k_dst, float* v_dst, int64_t* seg_dst) {
  cuda_detail::rope_qk_append_f32(q, k, v, positions, N, Hq, Hk, Dh, vw, theta,
                                  style == RopeStyle::Interleaved, k_dst, v_dst, seg_dst);
}

// ---- cross-entropy, LayerNorm (loss.cu) ------------------------------------------------------------------

double cross_entropy_forward(cuda, float* losses, const float* logits, const int64_t* targets, int64_t N,
                             int64_t V, int64_t ignore_index) {
  return cuda_detail::cross_entropy_forward_f32(losses, logits, targets, N, V, ignore_index);
}

void cross_entropy_backward(cuda, float* dlogits, const float* logits, const int64_t* targets, int64_t N,
                            int64_t V, double dloss, int64_t ignore_index) {
  cuda_detail::cross_entropy_backward_f32(dlogits, logits, targets, N, V, dloss, ignore_index);
}

void layernorm_forward(cuda, float* y, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t D, double eps) {
  cuda_detail::layernorm_forward_f32(y, mean, rstd, x, w, b, N, D, eps);
}

void layernorm_backward(cuda, float* dx, float* dw, float* db, const float* dy, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N, int64_t D) {
  cuda_detail::layernorm_backward_f32(dx, dw, db, dy, x, w, mean, rstd, N, D);
}

// ---- segment pooling (segment.cu) ----------------------------------------------------------------------

void segment_max_forward(cuda, float* out, int64_t* argmax, const float* x, const int64_t* seg, int64_t N,
                         int64_t S, int64_t D) {
  cuda_detail::segment_max_forward_f32(out, argmax, x, seg, N, S, D);
}

void segment_max_backward(cuda, float* dx, const float* dout, const int64_t* argmax, int64_t S, int64_t D) {
  cuda_detail::segment_max_backward_f32(dx, dout, argmax, S, D);
}

void segment_mean_forward(cuda, float* out, const float* x, const int64_t* seg, int64_t N, int64_t S,
                          int64_t D) {
  cuda_detail::segment_mean_forward_f32(out, x, seg, N, S, D);
}

void segment_mean_backward(cuda, float* dx, const float* dout, const int64_t* seg, int64_t N, int64_t S,
                           int64_t D) {
  cuda_detail::segment_mean_backward_f32(dx, dout, seg, N, S, D);
}

// ---- bf16 GEMM (gemm.cu) -------------------------------------------------------------------------------

void detail::gemm_bf16(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
                       int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cuda_detail::gemm_bf16(ta, tb, M, N, K, alpha, bits(A), lda, 0, bits(B), ldb, 0, beta, C, false, ldc, 0, 1);
}

void detail::gemm_bf16(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
                       int64_t lda, const bf16* B, int64_t ldb, float beta, bf16* C, int64_t ldc) {
  cuda_detail::gemm_bf16(ta, tb, M, N, K, alpha, bits(A), lda, 0, bits(B), ldb, 0, beta, bits(C), true, ldc,
                         0, 1);
}

// ---- decoding-size bf16 products (linear_small.cu)
// ----------------------------------------------------------

static_assert(kSmallLinearRows == cuda_detail::kSmallLinearMaxRows);

bool small_linear_supported(cuda, const float* x, int64_t M, int64_t K) {
  return M >= 1 && M <= kSmallLinearRows && cuda_detail::small_linear_supported(x, K);
}

void linear_small_bf16(cuda, const float* x, int64_t M, int64_t K, const SmallLinearOut* outs, int n_outs,
                       SmallLinearNorm norm, SmallLinearRope rope, SmallLinearSegments seg) {
  TESSERA_CHECK(n_outs >= 1 && n_outs <= cuda_detail::kSmallLinearMaxGroups,
                "linear_small_bf16(cuda): ", n_outs, " weights (1..", cuda_detail::kSmallLinearMaxGroups,
                ")");
  cuda_detail::SmallLinearGroup g[cuda_detail::kSmallLinearMaxGroups];
  for (int i = 0; i < n_outs; ++i) {
    TESSERA_CHECK(!outs[i].residual || (outs[i].residual_adds >= 1 && outs[i].residual_adds <= 4),
                  "linear_small_bf16(cuda): residual_adds must be in 1..4, got ", outs[i].residual_adds);
    g[i] = {bits(outs[i].w),  outs[i].bias,          outs[i].y,         outs[i].n,
            outs[i].residual, outs[i].residual_adds, outs[i].round_bf16};
  }
  cuda_detail::linear_small_bf16(
      x, M, K, g, n_outs, norm.weight, norm.eps,
      {rope.positions, rope.head_dim, rope.theta, rope.interleaved, rope.outputs, seg.src, seg.dst});
}

void swiglu_small_bf16(cuda, const float* x, int64_t M, int64_t K, const bf16* w_gate, const bf16* w_up,
                       int64_t N, float* y, SmallLinearNorm norm) {
  cuda_detail::swiglu_small_bf16(x, M, K, bits(w_gate), bits(w_up), N, y, norm.weight, norm.eps);
}

}  // namespace ops

// ---- patch ids (segment.cu) ------------------------------------------------------------------------------

void patchers::patch_ids_from_lengths(cuda, const int64_t* lengths, int64_t batch, int64_t n_patches,
                                      int64_t n_tokens, int64_t* out) {
  cuda_detail::patch_ids_from_lengths_i64(lengths, batch, n_patches, n_tokens, out);
}

// ---- BLT hash embedding (hash.cu), entropies (loss.cu) ---------------------------------------------------

void blt::hash_ngram_ids_batch(cuda, const int64_t* ids, int64_t B, int64_t T, int n, int64_t table_size,
                               int64_t* out, int64_t prime) {
  cuda_detail::hash_ngram_ids_i64(ids, B, T, n, table_size, prime, 0, out);
}

void blt::stacked_hash_ids(cuda, const HashConfig& c, const int64_t* ids, int64_t B, int64_t T,
                           int64_t* out) {
  const int64_t N = B * T;
  for (int64_t t = 0; t < c.n_tables(); ++t)
    cuda_detail::hash_ngram_ids_i64(ids, B, T, c.group_size(t), c.table_size, c.prime(t), t * c.table_size,
                                    out + t * N);
}

void blt::hash_embedding_forward(cuda, float* y, const int64_t* ids, const int64_t* hash_ids,
                                 const float* byte_table, const float* hash_table, int64_t N,
                                 int64_t n_tables, int64_t vocab, int64_t D) {
  cuda_detail::hash_embedding_forward_f32(y, ids, hash_ids, byte_table, hash_table, N, n_tables, vocab, D);
}

void blt::hash_embedding_backward(cuda, float* dbyte_table, float* dhash_table, const float* dy,
                                  const int64_t* ids, const int64_t* hash_ids, int64_t N, int64_t n_tables,
                                  int64_t vocab, int64_t hash_rows, int64_t D) {
  cuda_detail::embedding_backward_f32(dbyte_table, dy, ids, N, vocab, D);
  for (int64_t t = 0; t < n_tables; ++t)
    cuda_detail::embedding_backward_f32(dhash_table, dy, hash_ids + t * N, N, hash_rows, D);
}

void blt::entropies_from_logits(cuda, const float* logits, int64_t rows, int64_t V, float* out) {
  cuda_detail::row_entropies_f32(out, logits, rows, V);
}

// ---- optimizer (adamw.cu) --------------------------------------------------------------------------------

void train::adamw_update(cuda, float* p, const float* g, float* m, float* v, int64_t n, double lr,
                         double beta1, double beta2, double eps, double wd, int64_t t, bf16* p_bf16,
                         float grad_scale) {
  cuda_detail::adamw_update_f32(p, g, m, v, n, lr, beta1, beta2, eps, wd, t, bits(p_bf16), grad_scale);
}

void train::grad_sumsq(cuda, double* sumsq, const float* g, int64_t n) {
  cuda_detail::grad_sumsq_f32(sumsq, g, n);
}

void train::grad_sumsq(cuda, double* sumsq, std::span<const float* const> g, std::span<const int64_t> n) {
  TESSERA_CHECK(g.size() == n.size(), "grad_sumsq(cuda): ", g.size(), " gradients but ", n.size(), " sizes");
  cuda_detail::grad_sumsq_many_f32(sumsq, g.data(), n.data(), static_cast<int64_t>(g.size()));
}

void train::clip_scale_grads(cuda, float* g, int64_t n, const double* sumsq, double max_norm) {
  cuda_detail::clip_scale_grads_f32(g, n, sumsq, max_norm);
}

}  // namespace tessera
