// Internal to tessera::cuda, host compiler only: the public AttnDims -> the launchers' AttnArgs, after the CPU
// op's dimension checks. Shared by the attention bindings (ops.cpp, ops_blt.cpp, ops_attention_bf16.cpp).
#pragma once
#include "launch_megalodon.hpp"
#include "tessera/ops/attention.hpp"

namespace tessera::ops::attn_detail {

inline cuda_detail::AttnArgs to_attn_args(const AttnDims& d, const char* who,
                                         cuda_detail::AttnMask kind = cuda_detail::AttnMask::Causal,
                                         int64_t param = 0) {
  check_dims(d, who);
  cuda_detail::AttnArgs a;
  a.B = d.B;
  a.Tq = d.Tq;
  a.Tk = d.Tk;
  a.Hq = d.Hq;
  a.Hkv = d.Hkv;
  a.Dh = d.Dh;
  a.Dv = d.dv();
  a.q_stride = d.q_stride;
  a.k_stride = d.k_stride;
  a.v_stride = d.v_stride;
  a.o_stride = d.o_stride;
  a.q_offset = d.q_offset;
  a.scale = d.scale;
  a.mask = kind;
  a.mask_param = param;
  return a;
}

}  // namespace tessera::ops::attn_detail
