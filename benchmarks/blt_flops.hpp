// Training-FLOP accounting for BLT and a byte-level Llama (benchmarks/blt_vs_llama.md has the derivation).
//
// Convention (Chinchilla / BLT-paper style, logical FLOPs, multiply-add = 2 FLOPs):
//   matmul        2 · rows · in · out for every linear layer (no biases in either model)
//   attention     per attention layer and per attended (query, key) pair: 2·d for q·k plus 2·d for p·v,
//                 d = heads · head_dim; a causal query at position t of a row attends min(t + 1, window) keys
//                 (window 0 = unlimited), so "causal halving" is exact: mean keys (T + 1) / 2 without a
//                 window
//   free          embedding and hash n-gram lookups, norms, RoPE, softmax, SwiGLU's elementwise product,
//                 residual adds, max-pooling, the loss
//   training      3 × forward (backward = 2 × forward)
//
// Per-token stack cost (L layers, width d, kv width d_kv, SwiGLU hidden f, mean attended keys c):
//   2·L·(2·d² + 2·d·d_kv + 3·d·f) + 4·L·d·c
//
// BLT, one row of T bytes cut into P patches (P counts the patches the global model processes; k slots):
//   per byte   encoder stack + encoder cross k/v proj (4·d_e²) + encoder cross attention (each byte is a key
//              of k slots: 4·d_e·k) + decoder stack + per decoder cross layer (q/o proj 4·d_d², attention to
//              k memory slots 4·d_d·k) + head 2·d_d·V
//   per patch  encoder patch projection 2·k·d_e² + encoder cross q/o proj 4·k·d_e² + global input projection
//              (only when k·d_e != d_g) 2·k·d_e·d_g + global stack matmuls + decoder patch projection
//              2·d_g·k·d_d + per decoder cross layer k/v proj 4·k·d_d²
//   global attention 4·L_g·d_g · P(P+1)/2 (causal over the row's patches, no window)
// The entropy model (a Llama, forward only) is counted separately.
#pragma once
#include <algorithm>
#include <cstdint>

#include "tessera/models/blt/config.hpp"
#include "tessera/models/llama.hpp"

namespace tessera::bench {

/// Forward + backward = 3 × forward.
inline constexpr double kTrainFactor = 3.0;

/// Shape of a stack of Llama-style layers (attention + SwiGLU).
struct StackShape {
  int64_t dim = 0, n_layers = 0, n_heads = 1, n_kv_heads = 1, ffn_hidden = 0;
  int64_t kv_dim() const { return n_kv_heads * (dim / n_heads); }
};

inline StackShape stack_of(const models::LlamaConfig& c) {
  return {c.dim, c.n_layers, c.n_heads, c.n_kv_heads ? c.n_kv_heads : c.n_heads, c.ffn_hidden};
}
inline StackShape stack_of(const blt::LocalConfig& c) {
  return {c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden};
}
inline StackShape stack_of(const blt::GlobalConfig& c) {
  return {c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden};
}

/// Number of (query, key) pairs of causal attention over one row of T positions with a sliding window of w
/// keys (w = 0: unlimited): sum over t < T of min(t + 1, w).
inline double causal_pairs(int64_t T, int64_t w) {
  const double Td = static_cast<double>(T);
  if (w <= 0 || w >= T) return Td * (Td + 1) / 2;
  const double wd = static_cast<double>(w);
  return wd * (wd + 1) / 2 + (Td - wd) * wd;  // first w queries ramp up, the rest see w keys
}
/// Mean keys per query (the "context" of the attention term).
inline double mean_keys(int64_t T, int64_t w) {
  return causal_pairs(T, w) / static_cast<double>(T);
}

/// Matmul FLOPs of one token through the stack (q, k, v, o projections and the three SwiGLU matrices).
inline double stack_matmul_flops(const StackShape& s) {
  const double d = static_cast<double>(s.dim), kv = static_cast<double>(s.kv_dim()),
               f = static_cast<double>(s.ffn_hidden);
  return 2.0 * static_cast<double>(s.n_layers) * (2 * d * d + 2 * d * kv + 3 * d * f);
}
/// Attention FLOPs (scores + weighted values) of `pairs` attended pairs in every layer of the stack.
inline double stack_attention_flops(const StackShape& s, double pairs) {
  return 4.0 * static_cast<double>(s.n_layers) * static_cast<double>(s.dim) * pairs;
}

/// Forward FLOPs of one Llama row of T tokens (embedding lookup free, head 2·d·V per token).
inline double llama_forward_flops_row(const models::LlamaConfig& c, int64_t T) {
  const StackShape s = stack_of(c);
  const double Td = static_cast<double>(T);
  return Td * (stack_matmul_flops(s) + 2.0 * static_cast<double>(c.dim * c.vocab_size)) +
         stack_attention_flops(s, causal_pairs(T, c.window));
}
inline double llama_forward_flops_per_token(const models::LlamaConfig& c, int64_t T) {
  return llama_forward_flops_row(c, T) / static_cast<double>(T);
}

/// BLT forward FLOPs of one row, by component.
struct BltFlops {
  double encoder = 0;        // local encoder transformer layers
  double encoder_cross = 0;  // patch projection + cross-attention (projections and attention)
  double global = 0;         // global transformer (input projection, layers, attention over patches)
  double decoder_cross = 0;  // decoder patch projection + every decoder cross-attention
  double decoder = 0;        // local decoder transformer layers
  double head = 0;           // lm_head
  double total() const { return encoder + encoder_cross + global + decoder_cross + decoder + head; }
  BltFlops& operator+=(const BltFlops& o) {
    encoder += o.encoder, encoder_cross += o.encoder_cross, global += o.global;
    decoder_cross += o.decoder_cross, decoder += o.decoder, head += o.head;
    return *this;
  }
  BltFlops scaled(double a) const {
    BltFlops r = *this;
    r.encoder *= a, r.encoder_cross *= a, r.global *= a, r.decoder_cross *= a, r.decoder *= a, r.head *= a;
    return r;
  }
};

/// Forward FLOPs of one BLT row of T bytes and P patches (P may be fractional: T / mean patch length).
inline BltFlops blt_forward_flops_row(const blt::BltConfig& c, int64_t T, double P) {
  const double Td = static_cast<double>(T), k = static_cast<double>(c.cross_attn_k);
  const double de = static_cast<double>(c.encoder.dim), dd = static_cast<double>(c.decoder.dim),
               dg = static_cast<double>(c.global.dim), V = static_cast<double>(c.vocab_size);
  const StackShape enc = stack_of(c.encoder), dec = stack_of(c.decoder), glo = stack_of(c.global);
  const double dec_cross_layers =
      c.decoder.cross_attn_all_layers ? static_cast<double>(c.decoder.n_layers) : 1.0;
  BltFlops f;
  f.encoder = Td * stack_matmul_flops(enc) + stack_attention_flops(enc, causal_pairs(T, c.local_window));
  f.encoder_cross = P * (2 * de * k * de + 4 * k * de * de) + Td * (4 * de * de + 4 * de * k);
  f.global = P * stack_matmul_flops(glo) + stack_attention_flops(glo, P * (P + 1) / 2);
  if (c.has_token_projection()) f.global += P * 2 * k * de * dg;
  f.decoder_cross =
      P * 2 * dg * k * dd + dec_cross_layers * (Td * (4 * dd * dd + 4 * dd * k) + P * 4 * k * dd * dd);
  f.decoder = Td * stack_matmul_flops(dec) + stack_attention_flops(dec, causal_pairs(T, c.local_window));
  f.head = Td * 2 * dd * V;
  return f;
}

/// BLT forward FLOPs per byte for rows of T bytes at a mean patch length of `bytes_per_patch`.
inline BltFlops blt_forward_flops_per_byte(const blt::BltConfig& c, int64_t T, double bytes_per_patch) {
  return blt_forward_flops_row(c, T, static_cast<double>(T) / bytes_per_patch)
      .scaled(1.0 / static_cast<double>(T));
}

}  // namespace tessera::bench
