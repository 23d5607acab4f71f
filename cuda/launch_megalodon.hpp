// Internal to tessera::cuda: host entry points of cema.cu, timestep_norm.cu, megalodon_layers.cu and
// attention.cu, in plain C++ (no CUDA types, no public op headers); ops.cpp binds the public `cuda`
// overloads to them (see launch.hpp).
// All pointers are device pointers; complex arrays are interleaved (re, im) floats, which is the layout of
// std::complex<float>. Work is queued on the legacy default stream.
#pragma once
#include <cstdint>
#include <string>

namespace tessera::cuda_detail {

// ---- cema.cu (spec §1) -------------------------------------------------------------------------------

struct CemaArgs {
  int64_t B = 0, L = 0, D = 0, N = 0;
  const float* alpha = nullptr;  // [D, N]
  const float* delta = nullptr;  // [D, N]
  const float* theta = nullptr;  // [D]
  const float* gamma = nullptr;  // [D, N, 2]
  const float* omega = nullptr;  // [D]
};

/// y [B,L,D] = CEMA(u [B,L,D]); hx, h_out [B,D,N] complex (nullable).
void cema_forward_f32(const CemaArgs& a, const float* u, const float* hx, float* y, float* h_out);

/// The coefficients of spec §1.2 into device buffers p [D,N], q [D,N,2], g [D,N,2] (for decoding caches).
void cema_coeffs_f32(const CemaArgs& a, float* p, float* q, float* g);

/// cema_forward_f32 with precomputed coefficients (a's parameter pointers are not read except omega).
void cema_forward_coeffs_f32(const CemaArgs& a, const float* p, const float* q, const float* g, const float* u,
                             const float* hx, float* y, float* h_out);

/// du overwritten; dhx overwritten when not null; d* parameter gradients accumulated when not null.
void cema_backward_f32(const CemaArgs& a, const float* u, const float* hx, const float* dy, const float* dh_out,
                       float* du, float* dhx, float* dalpha, float* ddelta, float* dtheta, float* dgamma,
                       float* domega);

// ---- timestep_norm.cu (spec §2) ----------------------------------------------------------------------

void timestep_norm_forward_f32(int64_t B, int64_t L, int64_t D, int64_t G, const float* x,
                               const int64_t* prev_count, const float* prev_mean, const float* prev_var,
                               const float* weight, const float* bias, double eps, float* y, int64_t* count,
                               float* mean, float* var, float* cummean, float* cumrstd);

void timestep_norm_backward_f32(int64_t B, int64_t L, int64_t D, int64_t G, const float* dy, const float* dmean,
                                const float* dvar, const float* x, const int64_t* prev_count,
                                const float* prev_mean, const float* cummean, const float* cumrstd,
                                const float* weight, float* dx, float* dprev_mean, float* dprev_var,
                                float* dweight, float* dbias);

// ---- megalodon_layers.cu (the elementwise pieces of ops/megalodon_elementwise.hpp) -----------------------

void mega_qk_forward_f32(float* q, float* k, const float* zn, const float* gamma, const float* beta, int64_t n,
                         int64_t Z, int64_t dz);
void mega_qk_backward_f32(float* dzn, float* dgamma, float* dbeta, const float* dq, const float* dk,
                          const float* zn, const float* gamma, int64_t n, int64_t Z, int64_t dz);
void gate_mul_forward_f32(float* y, const float* a, const float* b, int64_t n);
void gate_mul_backward_f32(float* da, float* db, const float* g, const float* a, const float* b, int64_t n);
void rescale_residual_forward_f32(float* out, const float* h, const float* alpha, const float* res, int64_t n,
                                  int64_t D);
void rescale_residual_backward_f32(float* dh, float* dalpha, const float* g, const float* h, const float* alpha,
                                   int64_t n, int64_t D);
void offset_scale_f32(float* y, const float* w, int64_t n);
void add_row_bias_f32(float* y, const float* bias, int64_t n, int64_t D);
void row_bias_backward_f32(float* dbias, const float* dy, int64_t n, int64_t D);

// ---- attention.cu ------------------------------------------------------------------------------------

enum class AttnMask { Causal, SlidingWindow, ChunkLocal };

/// The fields of ops::AttnDims (Dv already resolved: never 0) plus the mask and its parameter (W or C).
struct AttnArgs {
  int64_t B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, Dh = 0, Dv = 0;
  int64_t q_stride = 0, k_stride = 0, v_stride = 0, o_stride = 0, q_offset = 0;
  double scale = 0;
  AttnMask mask = AttnMask::Causal;
  int64_t mask_param = 0;  // SlidingWindow: W; ChunkLocal: C; unused for Causal
};

/// Largest head dim (Dh and Dv) the CUDA attention kernels support.
inline constexpr int64_t kAttnMaxHeadDim = 256;

void attention_forward_f32(const AttnArgs& a, const float* q, const float* k, const float* v, float* o,
                           float* lse);
void attention_backward_f32(const AttnArgs& a, const float* q, const float* k, const float* v, const float* o,
                            const float* lse, const float* dout, float* dq, float* dk, float* dv);

// chunk_attention.cu: mask::ChunkLocal in bf16 mixed precision through batched bf16 GEMMs (fp32 interface, as
// the fp32 op's). Calls outside its coverage, or whose score buffers (B T C fp32 + bf16) cannot be allocated,
// return false with nothing written.
inline constexpr int64_t kChunkAttentionMaxChunk = 4096;
/// "" when the GEMM route covers the call (chunk-local, q_offset 0, Tq == Tk a multiple of C <= 4096, Hq ==
/// Hkv), else why not.
std::string chunk_attention_gemm_unsupported(const AttnArgs& a);
bool chunk_attention_forward_gemm(const AttnArgs& a, const float* q, const float* k, const float* v, float* o,
                                  float* lse);
bool chunk_attention_backward_gemm(const AttnArgs& a, const float* q, const float* k, const float* v,
                                   const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                   float* dv);

// The id-based masks: q_id/k_id (document or segment ids, equal ids attend; `causal` adds k <= q), block-causal
// segments, key validity bytes. Device pointers.
void attention_forward_id_equal_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted,
                                    bool causal, bool segments, const float* q, const float* k, const float* v,
                                    float* o, float* lse);
void attention_backward_id_equal_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted,
                                     bool causal, bool segments, const float* q, const float* k, const float* v,
                                     const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                     float* dv);
void attention_forward_block_causal_f32(const AttnArgs& a, const int64_t* q_seg, const int64_t* k_seg,
                                        bool k_sorted, const float* q, const float* k, const float* v, float* o,
                                        float* lse);
void attention_backward_block_causal_f32(const AttnArgs& a, const int64_t* q_seg, const int64_t* k_seg,
                                         bool k_sorted, const float* q, const float* k, const float* v,
                                         const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                         float* dv);
void attention_forward_key_valid_f32(const AttnArgs& a, const uint8_t* valid, const float* q, const float* k,
                                     const float* v, float* o, float* lse);
void attention_backward_key_valid_f32(const AttnArgs& a, const uint8_t* valid, const float* q, const float* k,
                                      const float* v, const float* o, const float* lse, const float* dout,
                                      float* dq, float* dk, float* dv);

}  // namespace tessera::cuda_detail
