// Internal to tessera::cuda: host entry points of elementwise.cu, loss.cu, segment.cu, hash.cu, adamw.cu and
// the bf16 path of gemm.cu, in plain C++ (no CUDA types, no public op headers). ops_core.cpp binds the public
// `cuda` overloads to them (see launch.hpp). Pointers are device pointers; bf16 arrays are passed as their
// uint16_t bit patterns (tessera::bf16 is exactly that). Work is queued on the legacy default stream.
//
// Index arrays (token ids, targets, segment ids, patch lengths) live in device memory, so they are not
// validated on the host (that would cost a synchronisation per call). Kernels never read or write out of
// bounds because of them: an out-of-range id makes the affected forward outputs NaN and is skipped by the
// backward pass (details per op below). Exception: cross_entropy_forward synchronises anyway (it returns the
// mean loss to the host), so it throws on a bad target like the CPU op.
#pragma once
#include <cstdint>

namespace tessera::cuda_detail {

// ---- elementwise.cu ----------------------------------------------------------------------------------

/// out[n, :] = table[ids[n], :]; a row whose id is outside [0, V) is NaN.
void embedding_forward_f32(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V,
                           int64_t D);
/// dtable[ids[n], :] += dout[n, :], deterministic (sort by id, then each id's rows summed in row order);
/// out-of-range ids are skipped.
void embedding_backward_f32(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V,
                            int64_t D);

void silu_forward_f32(float* y, const float* x, int64_t n);
void silu_backward_f32(float* dx, const float* dy, const float* x, int64_t n);
void gelu_forward_f32(float* y, const float* x, int64_t n, bool tanh_approx);
void gelu_backward_f32(float* dx, const float* dy, const float* x, int64_t n, bool tanh_approx);
/// ld = row stride of gate/up/dgate/dup (>= H).
void swiglu_forward_f32(float* out, const float* gate, const float* up, int64_t N, int64_t H, int64_t ld);
void swiglu_backward_f32(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                         int64_t N, int64_t H, int64_t ld);
/// The same with bf16 outputs (bit patterns, rounded once): the inputs of the following bf16 GEMMs.
void swiglu_forward_bf16out(uint16_t* out, const float* gate, const float* up, int64_t N, int64_t H,
                            int64_t ld);
void swiglu_backward_bf16out(uint16_t* dgate, uint16_t* dup, const float* dout, const float* gate,
                             const float* up, int64_t N, int64_t H, int64_t ld);
/// bf16 gate/up in, bf16 out (dout stays fp32): the all-bf16 SwiGLU, whose gate/up products are saved in
/// bf16.
void swiglu_forward_bf16(uint16_t* out, const uint16_t* gate, const uint16_t* up, int64_t N, int64_t H,
                         int64_t ld);
void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, int64_t H, int64_t ld);

void add_inplace_f32(float* y, const float* x, int64_t n);
void add_f32(float* z, const float* x, const float* y, int64_t n);
void scale_inplace_f32(float* y, float a, int64_t n);
void fill_f32(float* y, float a, int64_t n);
/// dst = bf16 bits of src (round to nearest even) / dst = float(src bits); n elements.
void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n);
void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n);
/// dst row r (stride dst_stride) = src row r (stride src_stride), `cols` elements; no overlap.
void copy_rows_f32(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                   int64_t cols);

/// positions[b * seq + t] = offset + t, or (offset + t) % modulo when modulo > 0.
void fill_positions_i64(int64_t* positions, int64_t batch, int64_t seq, int64_t offset, int64_t modulo);

/// In-place rotation of [N, H, Dh] heads with token stride `stride` by sign * pos * theta^(-2i/Dh).
void rope_f32(float* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
              double theta, bool interleaved, double sign);

/// RoPE of one attention call's queries [N, Hq * Dh] and keys [N, Hk * Dh] (same positions) in one launch:
/// q -> q_out, k -> k_out, each fp32 or bf16 bits (src_bf16 / dst_bf16); in place when the pointers are equal
/// (same type). bf16 stores round once, after the rotation.
void rope_qk(const void* q, const void* k, void* q_out, void* k_out, bool src_bf16, bool dst_bf16,
             const int64_t* positions, int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta,
             bool interleaved, double sign);

/// Whether bf16 -> bf16 rope_qk calls that fit them (Dh a multiple of 16, 16-byte aligned pointers) take the
/// kernel with 16-byte accesses (the default) or the per-pair one every call takes; returns the previous
/// setting. For tests and benchmarks, which compare the two.
bool set_rope_vectorised(bool on);

/// A KV cache's append in one launch: kdst [rows, kw] = k rows (stride k_stride), vdst [rows, vw] = v rows,
/// seg_dst[r] = seg ? seg[r] : 0.
void append_kv_f32(float* kdst, const float* k, int64_t k_stride, int64_t kw, float* vdst, const float* v,
                   int64_t v_stride, int64_t vw, int64_t* seg_dst, const int64_t* seg, int64_t rows);
/// RoPE of q (in place) and k (into k_dst) with v copied to v_dst and seg_dst zeroed: rows [N, Hq * Dh],
/// [N, Hk * Dh], [N, vw], all contiguous (ops::rope_qk_append).
void rope_qk_append_f32(float* q, const float* k, const float* v, const int64_t* positions, int64_t N,
                        int64_t Hq, int64_t Hk, int64_t Dh, int64_t vw, double theta, bool interleaved,
                        float* k_dst, float* v_dst, int64_t* seg_dst);

// ---- loss.cu -----------------------------------------------------------------------------------------

/// Mean cross-entropy over the non-ignored rows (0 if none); losses [N] nullable. Synchronises; throws
/// tessera::Error naming the first row whose target is neither in [0, V) nor ignore_index.
double cross_entropy_forward_f32(float* losses, const float* logits, const int64_t* targets, int64_t N,
                                 int64_t V, int64_t ignore_index);
/// dlogits overwritten; a row with an invalid target is NaN (no synchronisation, so no exception).
void cross_entropy_backward_f32(float* dlogits, const float* logits, const int64_t* targets, int64_t N,
                                int64_t V, double dloss, int64_t ignore_index);
/// out[r] = entropy (nats) of softmax(logits[r, :]).
void row_entropies_f32(float* out, const float* logits, int64_t rows, int64_t V);

void layernorm_forward_f32(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                           int64_t N, int64_t D, double eps);
void layernorm_backward_f32(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                            const float* mean, const float* rstd, int64_t N, int64_t D);

// ---- segment.cu --------------------------------------------------------------------------------------
// Segment ids >= S are ignored like negative ones (the CPU op throws on them).

void segment_max_forward_f32(float* out, int64_t* argmax, const float* x, const int64_t* seg, int64_t N,
                             int64_t S, int64_t D);
void segment_max_backward_f32(float* dx, const float* dout, const int64_t* argmax, int64_t S, int64_t D);
void segment_mean_forward_f32(float* out, const float* x, const int64_t* seg, int64_t N, int64_t S,
                              int64_t D);
void segment_mean_backward_f32(float* dx, const float* dout, const int64_t* seg, int64_t N, int64_t S,
                               int64_t D);
/// lengths [B, P] (right-padded with zeros) -> out [B, T] patch ids. Negative lengths give unspecified (but
/// in-range, [0, P)) ids.
void patch_ids_from_lengths_i64(const int64_t* lengths, int64_t B, int64_t P, int64_t T, int64_t* out);

// ---- hash.cu -----------------------------------------------------------------------------------------

/// out[b*T + i] = offset + floor-mod(rolling hash of the n-gram ending at i of row b, M).
void hash_ngram_ids_i64(const int64_t* ids, int64_t B, int64_t T, int n, int64_t M, int64_t prime,
                        int64_t offset, int64_t* out);
/// y[r] = byte_table[ids[r]] + sum_t hash_table[hash_ids[t*N + r]]; a row with an out-of-range byte id is NaN
/// (hash ids are not range-checked: no table size is passed; stacked_hash_ids produces them in range).
void hash_embedding_forward_f32(float* y, const int64_t* ids, const int64_t* hash_ids,
                                const float* byte_table, const float* hash_table, int64_t N, int64_t n_tables,
                                int64_t vocab, int64_t D);

// ---- adamw.cu ----------------------------------------------------------------------------------------

/// One AdamW step (train::adamw_update semantics); p_bf16 (nullable) receives bf16(p) after the update; g
/// is read as float(g * grad_scale).
void adamw_update_f32(float* p, const float* g, float* m, float* v, int64_t n, double lr, double beta1,
                      double beta2, double eps, double wd, int64_t t, uint16_t* p_bf16,
                      float grad_scale = 1.f);
/// How adamw_update_f32 runs its 4-wide path: loads_ahead (the default) on a grid of at most max_blocks
/// blocks (0: 4 per multiprocessor), each thread loading its next four elements while it computes the current
/// four (adamw.cu); or one grid-stride pass without loads ahead (the earlier route, kept for the A/B in
/// bench_cuda). The same bits either way. Returns the previous setting.
struct AdamWRoute {
  bool loads_ahead = true;
  int max_blocks = 0;
};
AdamWRoute set_adamw_route(AdamWRoute r);
/// *sumsq (one device double) += sum g^2, accumulated in double in a fixed order (deterministic).
void grad_sumsq_f32(double* sumsq, const float* g, int64_t n);
/// *sumsq += sum over the `count` tensors g[k] of n[k] floats of g^2: one launch per 64 tensors, one final
/// sum (deterministic for given sizes and alignments).
void grad_sumsq_many_f32(double* sumsq, const float* const* g, const int64_t* n, int64_t count);
/// g *= coef with coef = max_norm / (sqrt(*sumsq) + 1e-6) when that is < 1, the norm finite and max_norm > 0.
void clip_scale_grads_f32(float* g, int64_t n, const double* sumsq, double max_norm);

// ---- gemm.cu (bf16 path) -----------------------------------------------------------------------------

/// Row-major C = alpha op(A) op(B) + beta C with bf16 A, B and fp32 accumulation (CUBLAS_COMPUTE_32F);
/// C is fp32 (c_bf16 false) or bf16 (c_bf16 true).
void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
               int64_t sa, const uint16_t* B, int64_t ldb, int64_t sb, float beta, void* C, bool c_bf16,
               int64_t ldc, int64_t sc, int64_t batch);

// ---- linear_small.cu ---------------------------------------------------------------------------------

inline constexpr int kSmallLinearMaxRows = 8, kSmallLinearMaxGroups = 3;
/// One weight of linear_small_bf16: w [n, K] bf16 (16-byte aligned), bias [n] fp32 or null, y [M, n] fp32 =
/// residual (null: none; may alias y; added residual_adds times) + product + bias.
struct SmallLinearGroup {
  const uint16_t* w;
  const float* bias;
  float* y;
  int64_t n;
  const float* residual;
  int residual_adds;
  bool round_bf16 = false;  // y rounded to bf16 values (kept as fp32) after bias and residual
};
/// Whether the small products stage x in shared memory where it fits (the default) or read it from global
/// memory in their inner loop (the earlier route, kept for the A/B in bench_cuda). Returns the previous
/// setting.
bool set_small_linear_staged(bool on);
/// Whether x [M, K] suits the small products: K a positive multiple of 8, x 16-byte aligned.
bool small_linear_supported(const float* x, int64_t K);
/// What linear_small_bf16 does besides the products (a KV-cache append in the same launch): RoPE — the first
/// `groups` outputs (q, k) rotated by positions [M] (rows are tokens) with head_dim, theta and the pair
/// layout (interleaved or halves), as rope_qk_kernel — and seg_dst [M] (or null) = seg_src [M] (or zeros),
/// the segment ids of the cache rows the products write.
struct SmallLinearEpilogue {
  const int64_t* positions = nullptr;
  int64_t head_dim = 0;
  double theta = 0;
  bool interleaved = false;
  int groups = 0;
  const int64_t* seg_src = nullptr;
  int64_t* seg_dst = nullptr;
};
/// y_g = bf16(x') W_gᵀ (+ b_g) for 1 <= M <= 8 rows and 1..3 weights sharing x, one launch; x' = x, or
/// RMSNorm(x) with gain norm_w [K] (16-byte aligned) and norm_eps when norm_w is set; with epilogue.groups >
/// 0 the first epilogue.groups outputs are rotated (no residual there).
void linear_small_bf16(const float* x, int64_t M, int64_t K, const SmallLinearGroup* groups, int n_groups,
                       const float* norm_w, double norm_eps, const SmallLinearEpilogue& epilogue = {});
/// y [M, N] = silu(bf16(x') W_gateᵀ) * (bf16(x') W_upᵀ), one launch (x' as above).
void swiglu_small_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w_gate, const uint16_t* w_up,
                       int64_t N, float* y, const float* norm_w, double norm_eps);

}  // namespace tessera::cuda_detail
