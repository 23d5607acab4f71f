// Flash attention on tensor cores: bf16 Q, K, V, O (and dO, dQ, dK, dV), fp32 accumulation and softmax, for
// the position-only masks (Causal, SlidingWindow, ChunkLocal), with the semantics of the CPU op in
// include/tessera/ops/attention.hpp (strided token rows, GQA, Dv != Dh, any scale, q_offset, lse [B, Hq, Tq]
// fp32 with -inf and a zero output row for fully masked rows). Head dims up to 128 (kernels for 64 and 128;
// smaller or odd dims run zero-padded). The precision contract is in include/tessera/ops/attention_bf16.hpp.
//
// Two kernel families, same contract, either backward reading either forward's o and lse: mma.sync (the
// default; FlashAttention-2's layout with scores, softmax, P, dP and dS in registers, mma m16n8k16 + ldmatrix
// from mma_sm80.cuh: forward attention_bf16_mma.cuh, backward attention_bf16_mma_bwd.cuh) and WMMA (below).
// TESSERA_ATTN_BF16_KERNEL=wmma (read once) or set_attention_bf16_kernel (launch_attention_bf16.hpp) picks
// WMMA. A call that cuDNN's fused attention covers, of at least kCudnnMinKeys keys (or of any length with
// TESSERA_ATTN_BF16_BACKEND=cudnn; none with =tessera), runs there instead (cudnn_attention.hpp; after the
// same argument checks).
//
// WMMA kernels (attention_bf16_kernels.cuh): WMMA 16x16x16 bf16 fragments, fp32 accumulators; 128 threads = 4
// warps per block; tiles of 64 query rows x 64 keys in shared memory (row stride Dh + 8: 16-byte rows whose
// banks are staggered for the fragment loads), filled by cp.async (16-byte copies, all in flight at once);
// every warp owns 16 rows of the block tile. Score tiles go through shared memory in fp32 (WMMA hides the
// accumulator layout); the elementwise phases give lanes 2r, 2r+1 row r and 8-column runs, so every shared
// access there is 16 bytes wide.
//   forward:  block per (b, h, 64 query rows), heaviest query tiles first (causal load balance). Per key tile
//             in the block's mask key range: S = Q K^T (tensor cores, only the 16-key sub-tiles the warp's
//             rows can see), stored to shared memory; online softmax in fp32 (exp2 with the scale folded into
//             log2 units; per-element mask tests only on tiles the mask cuts); P rounded to bf16; the O
//             accumulator rescaled per row through an index fragment; O += P V. Fully masked key tiles are
//             never visited.
//   backward: D = rowsum(dO * O) (one warp per row and head), then two kernels that recompute P from lse, so
//             that every gradient element has one owner: no atomics and bitwise-deterministic results.
//             dK/dV kernel: block per (b, kv head, 64 keys), over every query head of the group and every
//             query tile whose key range meets the key tile: S^T = K Q^T, P^T (bf16), dV += P^T dO,
//             dP^T = V dO^T, dS^T = P^T (dP^T - D) scale (bf16), dK += dS^T Q.
//             dQ kernel: block per (b, h, 64 query rows): S, P, dP, dS as above, dQ += dS K.
//             That is 7 tile products per (query tile, key tile) instead of 5 with atomics into an fp32 dQ.
//             (The mma.sync family's default instead stores dS from the dK/dV kernel and computes dQ = dS K
//             from it: 5 products, still no atomics; see attention_bf16_mma_bwd.cuh.)
// WMMA measured on an H100 (benchmarks/bench_cuda, B=4 T=4096 H=16 causal): forward 69 (Dh 64) / 83 (Dh 128)
// TFLOP/s, backward 61 / 64 TFLOP/s: 9-12x (forward) and ~5.4x (backward) the fp32 flash kernels, ~4-6x
// below PyTorch SDPA on the same card. The limits seen in Nsight Compute and the SASS: nvcc lowers bf16 WMMA
// fragment loads to generic 32-bit loads (LD.E, plus MOVM transposes) instead of ldmatrix, the S/P round
// trips through shared memory, and 8-12 resident warps per SM issuing ~0.5 instructions per cycle per
// scheduler — hence the mma.sync kernels; benchmarks/bench_cuda times both families side by side.
#include <cuda_runtime_api.h>

#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include "attention_bf16_kernels.cuh"
#include "attention_bf16_mma.cuh"
#include "attention_bf16_mma_bwd.cuh"
#include "check.hpp"
#include "cudnn_attention.hpp"
#include "env_choice.hpp"
#include "launch_attention_bf16.hpp"
#include "launch_megalodon.hpp"
#include "mma_sm80.cuh"
#include "scratch.cuh"

namespace tessera::cuda_detail {

/// Largest head dim (Dh and Dv) of the bf16 kernels.
inline constexpr int64_t kAttnBf16MaxHeadDim = 128;

namespace {

EnvChoice<AttnBf16Kernel, parse_attention_bf16_kernel> g_kernel{"TESSERA_ATTN_BF16_KERNEL"};
EnvChoice<AttnBf16Dq, parse_attention_bf16_dq> g_dq_mode{"TESSERA_ATTN_BF16_DQ"};
std::atomic<int> g_last_dq{static_cast<int>(AttnBf16Dq::Auto)};

/// The dQ mode the next backward uses: the setter's, else the environment's, else Auto.
AttnBf16Dq dq_mode() {
  return g_dq_mode.get();
}

/// A quarter of the current device's memory: the largest dS buffer Auto allocates (read once per device,
/// not on every backward call).
size_t ds_budget_bytes() {
  static std::mutex mu;
  static std::map<int, size_t> budget;
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mu);
  auto it = budget.find(dev);
  if (it == budget.end()) {
    size_t free_b = 0, total_b = 0;
    TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    it = budget.emplace(dev, total_b / 4).first;
  }
  return it->second;
}

BDims make_bdims(const AttnArgs& a, const char* op, std::initializer_list<const void*> ptrs) {
  TESSERA_CHECK(a.B >= 0 && a.Tq >= 0 && a.Tk >= 0, op, "(cuda, bf16): AttnDims B, Tq, Tk must be >= 0");
  TESSERA_CHECK(a.Hq >= 1 && a.Hkv >= 1 && a.Dh >= 1 && a.Dv >= 1 && a.Hq % a.Hkv == 0, op,
                "(cuda, bf16): bad AttnDims heads/dims Hq=", a.Hq, " Hkv=", a.Hkv, " Dh=", a.Dh,
                " Dv=", a.Dv);
  TESSERA_CHECK(a.Dh <= kAttnBf16MaxHeadDim && a.Dv <= kAttnBf16MaxHeadDim, op,
                "(cuda, bf16): head dims Dh=", a.Dh, " Dv=", a.Dv, " exceed the bf16 attention limit of ",
                kAttnBf16MaxHeadDim);
  TESSERA_CHECK(a.q_stride >= a.Hq * a.Dh && a.k_stride >= a.Hkv * a.Dh && a.v_stride >= a.Hkv * a.Dv &&
                    a.o_stride >= a.Hq * a.Dv,
                op, "(cuda, bf16): AttnDims strides too small (q ", a.q_stride, ", k ", a.k_stride, ", v ",
                a.v_stride, ", o ", a.o_stride, ")");
  TESSERA_CHECK(a.q_offset >= 0 && std::isfinite(a.scale), op, "(cuda, bf16): bad q_offset ", a.q_offset,
                " or scale ", a.scale);
  if (a.mask == AttnMask::SlidingWindow)
    TESSERA_CHECK(a.mask_param >= 1, "mask::SlidingWindow: window W must be >= 1, got ", a.mask_param);
  if (a.mask == AttnMask::ChunkLocal)
    TESSERA_CHECK(a.mask_param >= 1, "mask::ChunkLocal: chunk size C must be >= 1, got ", a.mask_param);
  // 16-byte accesses need 8-element multiples everywhere and 16-byte aligned base pointers.
  bool vec = a.q_stride % 8 == 0 && a.k_stride % 8 == 0 && a.v_stride % 8 == 0 && a.o_stride % 8 == 0 &&
             a.Dh % 8 == 0 && a.Dv % 8 == 0;
  for (const void* p : ptrs) vec = vec && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  const float scale = static_cast<float>(a.scale);
  return BDims{a.B,        a.Tq,       a.Tk,       a.Hq,       a.Hkv, a.Dh,           a.Dv, a.q_stride,
               a.k_stride, a.v_stride, a.o_stride, a.q_offset, scale, scale * kLog2e, vec};
}

unsigned block_count(int64_t n, const char* op) {
  TESSERA_CHECK(n >= 1 && n <= INT_MAX, op, "(cuda, bf16): ", n, " thread blocks exceed the grid limit");
  return static_cast<unsigned>(n);
}

/// Run f(integral_constant<kD>) for the smallest kD in {64, 128} >= max(Dh, Dv).
template <class F>
void dispatch_dim(const AttnArgs& a, F&& f) {
  if ((a.Dh > a.Dv ? a.Dh : a.Dv) <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

template <class F>
void dispatch_mask(const AttnArgs& a, F&& f) {
  switch (a.mask) {
    case AttnMask::Causal:
      f(CausalMaskB{});
      break;
    case AttnMask::SlidingWindow:
      f(WindowMaskB{a.mask_param});
      break;
    case AttnMask::ChunkLocal:
      f(ChunkMaskB{a.mask_param});
      break;
  }
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

template <class Mask>
void forward_impl(const AttnArgs& a, const Mask& mask, const uint16_t* q, const uint16_t* k,
                  const uint16_t* v, uint16_t* o, float* lse) {
  constexpr const char* op = "attention_forward";
  const BDims d = make_bdims(a, op, {q, k, v, o});
  if (d.B * d.Tq == 0) return;
  TESSERA_CHECK(q && o && (d.Tk == 0 || (k && v)), op, "(cuda, bf16): q, k, v or o is null");
  if (lse && cudnn_attention_chosen(a) && cudnn_attention_forward(a, q, k, v, o, lse)) {
    note_attention_bf16_backend(AttnBf16Backend::Cudnn);
    return;
  }
  note_attention_bf16_backend(AttnBf16Backend::Tessera);
  const unsigned blocks = block_count(d.B * d.Hq * ((d.Tq + kTile - 1) / kTile), op);
  const bool use_mma = attention_bf16_kernel() == AttnBf16Kernel::Mma;
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    if (use_mma) {
      auto kernel = attn_bf16_fwd_mma_kernel<kD, Mask>;
      constexpr size_t smem = MmaFwdSmem<kD>::bytes;
      allow_smem(kernel, smem);
      kernel<<<blocks, kThreads, smem>>>(d, mask, q, k, v, o, lse);
      TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_fwd_mma_kernel");
    } else {
      auto kernel = attn_bf16_fwd_kernel<kD, Mask>;
      constexpr size_t smem = FwdSmem<kD>::bytes;
      allow_smem(kernel, smem);
      kernel<<<blocks, kThreads, smem>>>(d, mask, q, k, v, o, lse);
      TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_fwd_kernel");
    }
  });
}

template <class Mask>
void backward_impl(const AttnArgs& a, const Mask& mask, const uint16_t* q, const uint16_t* k,
                   const uint16_t* v, const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                   uint16_t* dk, uint16_t* dv) {
  constexpr const char* op = "attention_backward";
  const BDims d = make_bdims(a, op, {q, k, v, o, dout, dq, dk, dv});
  const bool has_q = d.B * d.Tq > 0, has_k = d.B * d.Tk > 0;
  TESSERA_CHECK(!has_q || (q && o && lse && dout && dq), op, "(cuda, bf16): q, o, lse, dout or dq is null");
  TESSERA_CHECK(!has_k || (k && v && dk && dv), op, "(cuda, bf16): k, v, dk or dv is null");
  if (!has_q && !has_k) return;
  if (has_q && has_k && cudnn_attention_chosen(a) &&
      cudnn_attention_backward(a, q, k, v, o, lse, dout, dq, dk, dv)) {
    note_attention_bf16_backend(AttnBf16Backend::Cudnn);
    return;
  }
  note_attention_bf16_backend(AttnBf16Backend::Tessera);

  DeviceScratch scratch;
  scratch.reserve(DeviceScratch::bytes_for<float>(d.B * d.Hq * d.Tq));
  float* Dd = scratch.carve<float>(d.B * d.Hq * d.Tq);
  if (has_q) {
    const RowdotShape rs = rowdot_shape(d, o, dout);
    attn_bf16_rowdot_kernel<<<grid_for(d.B * d.Tq * d.Hq * rs.lanes, 128, op), 128>>>(d, rs, o, dout, Dd);
    TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_rowdot_kernel");
  }
  const bool use_mma = attention_bf16_kernel() == AttnBf16Kernel::Mma;

  // Stored-dS dQ (mma family; see AttnBf16Dq): the dS tile slots per (b, h) and their buffer.
  const int64_t nqb = (d.Tq + kTile - 1) / kTile;
  DeviceScratch ds_scratch;
  uint16_t* ds = nullptr;
  int64_t* tile_off = nullptr;
  int64_t n_tiles = 0;
  const AttnBf16Dq mode = dq_mode();
  if (use_mma && has_q && has_k && mode != AttnBf16Dq::Recompute) {
    for (int64_t i = 0; i < nqb; ++i) {
      const Range r = query_tile_key_tiles(mask, i, d.Tq, d.Tk, d.q_offset);
      n_tiles += r.hi - r.lo;
    }
    const size_t bytes = DeviceScratch::bytes_for<int64_t>(nqb + 1) +
                         DeviceScratch::bytes_for<uint16_t>(d.B * d.Hq * n_tiles * kTile * kTile);
    bool have = false;
    if (mode == AttnBf16Dq::Stored) {
      ds_scratch.reserve(bytes);
      have = true;
    } else if (bytes <= ds_budget_bytes()) {
      have = ds_scratch.try_reserve(bytes);
    }
    if (have) {
      tile_off = ds_scratch.carve<int64_t>(nqb + 1);
      ds = ds_scratch.carve<uint16_t>(d.B * d.Hq * n_tiles * kTile * kTile);
      attn_ds_tile_offsets_kernel<<<1, 32>>>(mask, nqb, d.Tq, d.Tk, d.q_offset, tile_off);
      TESSERA_CUDA_CHECK_LAUNCH("attn_ds_tile_offsets_kernel");
    }
  }
  if (use_mma && has_q) g_last_dq.store(static_cast<int>(ds ? AttnBf16Dq::Stored : AttnBf16Dq::Recompute));

  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    const unsigned kblocks = has_k ? block_count(d.B * d.Hkv * ((d.Tk + kTile - 1) / kTile), op) : 0;
    const unsigned qblocks = has_q ? block_count(d.B * d.Hq * ((d.Tq + kTile - 1) / kTile), op) : 0;
    if (use_mma) {
      if (has_k) {
        auto kernel = attn_bf16_bwd_dkdv_mma_kernel<kD, Mask>;
        constexpr size_t smem = MmaBwdSmem<kD>::dkdv_bytes;
        allow_smem(kernel, smem);
        kernel<<<kblocks, kThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dk, dv, ds, tile_off, n_tiles);
        TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_bwd_dkdv_mma_kernel");
      }
      if (has_q && ds) {
        auto kernel = attn_bf16_bwd_dq_stored_kernel<kD, Mask>;
        constexpr size_t smem = DqStoredSmem<kD>::bytes;
        allow_smem(kernel, smem);
        kernel<<<qblocks, kThreads, smem>>>(d, mask, k, ds, tile_off, n_tiles, dq);
        TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_bwd_dq_stored_kernel");
      } else if (has_q) {
        auto kernel = attn_bf16_bwd_dq_mma_kernel<kD, Mask>;
        constexpr size_t smem = MmaBwdSmem<kD>::dq_bytes;
        allow_smem(kernel, smem);
        kernel<<<qblocks, kThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dq);
        TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_bwd_dq_mma_kernel");
      }
      return;
    }
    constexpr size_t smem = BwdSmem<kD>::bytes;
    if (has_k) {
      auto kernel = attn_bf16_bwd_dkdv_kernel<kD, Mask>;
      allow_smem(kernel, smem);
      kernel<<<kblocks, kThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dk, dv);
      TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_bwd_dkdv_kernel");
    }
    if (has_q) {
      auto kernel = attn_bf16_bwd_dq_kernel<kD, Mask>;
      allow_smem(kernel, smem);
      kernel<<<qblocks, kThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dq);
      TESSERA_CUDA_CHECK_LAUNCH("attn_bf16_bwd_dq_kernel");
    }
  });
}

// One warp: the primitives of mma_sm80.cuh on 16 x 16 operands staged in shared memory with a padded row
// stride (see mma_selftest in launch_attention_bf16.hpp). Accumulators are read and written through the documented C
// layout, so a wrong layout assumption anywhere shows up as misplaced results.
__global__ void mma_selftest_kernel(const uint16_t* a, const uint16_t* bt, const uint16_t* b, const float* c,
                                    const float* x, float* d_nk, float* d_kn, float* d_chain,
                                    uint32_t* packed) {
  constexpr int kLd = 24;  // elements per staged row: 48 bytes, 16-byte aligned rows
  extern __shared__ __align__(128) float smem_f[];
  uint16_t* As = reinterpret_cast<uint16_t*>(smem_f);
  uint16_t* Bts = As + 16 * kLd;
  uint16_t* Bs = Bts + 16 * kLd;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int e = lane; e < 256; e += 32) {
    As[e / 16 * kLd + e % 16] = a[e];
    Bts[e / 16 * kLd + e % 16] = bt[e];
    Bs[e / 16 * kLd + e % 16] = b[e];
  }
  __syncthreads();
  uint32_t fa[4], fbt[4], fb[4];
  mma::load_a(fa, As, kLd);
  mma::load_b_nk(fbt, Bts, kLd);
  mma::load_b_kn(fb, Bs, kLd);
  float acc_nk[2][4], acc_kn[2][4], chain[2][4];
  auto at = [&](int nt, int e) { return (g + 8 * (e / 2)) * 16 + 8 * nt + 2 * t + e % 2; };  // C layout
  for (int nt = 0; nt < 2; ++nt)
    for (int e = 0; e < 4; ++e) {
      acc_nk[nt][e] = acc_kn[nt][e] = c[at(nt, e)];
      chain[nt][e] = 0.f;
    }
  for (int nt = 0; nt < 2; ++nt) {
    mma::mma_nt(acc_nk[nt], fa, fbt, nt);
    mma::mma_nt(acc_kn[nt], fa, fb, nt);
  }
  uint32_t pa[4];
  mma::acc_to_a(pa, acc_nk[0], acc_nk[1]);
  for (int nt = 0; nt < 2; ++nt) mma::mma_nt(chain[nt], pa, fb, nt);
  for (int nt = 0; nt < 2; ++nt)
    for (int e = 0; e < 4; ++e) {
      d_nk[at(nt, e)] = acc_nk[nt][e];
      d_kn[at(nt, e)] = acc_kn[nt][e];
      d_chain[at(nt, e)] = chain[nt][e];
    }
  packed[lane] = mma::pack_bf16x2(x[2 * lane], x[2 * lane + 1]);
}

}  // namespace

AttnBf16Kernel parse_attention_bf16_kernel(const char* value) {
  static constexpr EnvName<AttnBf16Kernel> kNames[] = {{"mma", AttnBf16Kernel::Mma},
                                                       {"wmma", AttnBf16Kernel::Wmma}};
  return parse_env_choice("TESSERA_ATTN_BF16_KERNEL", value, AttnBf16Kernel::Mma, kNames);
}

AttnBf16Dq parse_attention_bf16_dq(const char* value) {
  static constexpr EnvName<AttnBf16Dq> kNames[] = {{"stored", AttnBf16Dq::Stored},
                                                   {"recompute", AttnBf16Dq::Recompute}};
  return parse_env_choice("TESSERA_ATTN_BF16_DQ", value, AttnBf16Dq::Auto, kNames);
}

void set_attention_bf16_dq(AttnBf16Dq mode) {
  g_dq_mode.set(mode);
}

AttnBf16Dq last_attention_bf16_dq() {
  return static_cast<AttnBf16Dq>(g_last_dq.load());
}

void set_attention_bf16_kernel(AttnBf16Kernel k) {
  g_kernel.set(k);
}

AttnBf16Kernel attention_bf16_kernel() {
  return g_kernel.get();
}

void mma_selftest(const uint16_t* a, const uint16_t* bt, const uint16_t* b, const float* c, const float* x,
                  float* d_nk, float* d_kn, float* d_chain, uint32_t* packed) {
  TESSERA_CHECK(a && bt && b && c && x && d_nk && d_kn && d_chain && packed, "mma_selftest: null pointer");
  constexpr size_t smem = 3 * 16 * 24 * sizeof(uint16_t);
  mma_selftest_kernel<<<1, 32, smem>>>(a, bt, b, c, x, d_nk, d_kn, d_chain, packed);
  TESSERA_CUDA_CHECK_LAUNCH("mma_selftest_kernel");
  TESSERA_CUDA_CHECK(cudaDeviceSynchronize());
}

// Host entry points, declared in launch_attention_bf16.hpp (bf16 as uint16_t bit patterns; device pointers).
void attention_forward_bf16(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                            uint16_t* o, float* lse) {
  dispatch_mask(a, [&](auto mask) { forward_impl(a, mask, q, k, v, o, lse); });
}

void attention_backward_bf16(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                             uint16_t* dk, uint16_t* dv) {
  dispatch_mask(a, [&](auto mask) { backward_impl(a, mask, q, k, v, o, lse, dout, dq, dk, dv); });
}

}  // namespace tessera::cuda_detail
