// The bf16 `cuda` attention overloads of include/tessera/ops/attention_bf16.hpp, bound to the launchers of
// attention_bf16.cu (see launch.hpp for why binding files exist). Compiled by the host compiler.
#include <cstdint>
#include <type_traits>

#include "attn_args.hpp"
#include "launch_attention_bf16.hpp"
#include "tessera/ops/attention_bf16.hpp"

namespace tessera::ops {
namespace {

static_assert(sizeof(bf16) == sizeof(uint16_t) && std::is_standard_layout_v<bf16>,
              "tessera::bf16 must be its 16 bits");

/// The CPU op's dimension checks and mask binding (which validates W and C), then the launch arguments.
template <class Mask>
cuda_detail::AttnArgs args(const AttnDims& d, const Mask& m, const char* who) {
  cuda_detail::AttnArgs a = attn_detail::to_attn_args(d, who);
  const Mask bound = mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  if constexpr (std::is_same_v<Mask, mask::Causal>) {
    a.mask = cuda_detail::AttnMask::Causal;
  } else if constexpr (std::is_same_v<Mask, mask::SlidingWindow>) {
    a.mask = cuda_detail::AttnMask::SlidingWindow;
    a.mask_param = bound.W;
  } else {
    static_assert(std::is_same_v<Mask, mask::ChunkLocal>);
    a.mask = cuda_detail::AttnMask::ChunkLocal;
    a.mask_param = bound.C;
  }
  return a;
}

const uint16_t* bits(const bf16* p) {
  return reinterpret_cast<const uint16_t*>(p);
}
uint16_t* bits(bf16* p) {
  return reinterpret_cast<uint16_t*>(p);
}

template <class Mask>
void forward(const AttnDims& d, const Mask& m, const bf16* q, const bf16* k, const bf16* v, bf16* o,
             float* lse) {
  cuda_detail::attention_forward_bf16(args(d, m, "attention_forward"), bits(q), bits(k), bits(v), bits(o),
                                      lse);
}

template <class Mask>
void backward(const AttnDims& d, const Mask& m, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
              const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv) {
  cuda_detail::attention_backward_bf16(args(d, m, "attention_backward"), bits(q), bits(k), bits(v), bits(o),
                                       lse, bits(dout), bits(dq), bits(dk), bits(dv));
}

}  // namespace

void attention_forward(cuda, const AttnDims& d, const mask::Causal& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse) {
  forward(d, m, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse) {
  forward(d, m, q, k, v, o, lse);
}
void attention_forward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse) {
  forward(d, m, q, k, v, o, lse);
}

void attention_backward(cuda, const AttnDims& d, const mask::Causal& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv) {
  backward(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv) {
  backward(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}
void attention_backward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv) {
  backward(d, m, q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace tessera::ops
