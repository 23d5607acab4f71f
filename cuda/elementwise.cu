// Elementwise and gather/scatter ops on the GPU: embedding, SiLU, GELU, SwiGLU, add/scale, fill, strided row
// copies, RoPE and its position fill.
//
// Elementwise kernels are grid-stride loops with int64 indices, one element per thread and iteration;
// activations use expf/erff/tanhf (not the fast intrinsics) for parity with the CPU.
// Embedding backward is deterministic and atomic-free: (id, row) pairs are radix-sorted by id with CUB
// (stable, so each id's rows stay in row order), then the first row of each run of equal ids owns that
// table row and adds the run's gradient rows in order, exactly the CPU's summation order.
// RoPE: one thread per (token, pair) computes the angle, cos and sin in double like the CPU (then rounds to
// float) and rotates that pair in every head of the token.
#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <initializer_list>
#include <type_traits>

#include "core_util.cuh"
#include "launch_core.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;
__device__ inline float nan_f() {
  return __int_as_float(0x7fc00000);
}

// ---- embedding ----------------------------------------------------------------------------------------

__global__ void embedding_forward_kernel(float* __restrict__ out, const int64_t* __restrict__ ids,
                                         const float* __restrict__ table, int64_t N, int64_t V, int64_t D) {
  TESSERA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, d = i - n * D, id = ids[n];
    out[i] = (id >= 0 && id < V) ? table[id * D + d] : nan_f();
  }
}

// Sort keys: the id, or V for an id outside [0, V) (sorted last, skipped). Values: the row.
__global__ void embedding_keys_kernel(uint32_t* __restrict__ keys, int32_t* __restrict__ rows,
                                      const int64_t* __restrict__ ids, int64_t N, int64_t V) {
  TESSERA_GRID_STRIDE(n, N) {
    const int64_t id = ids[n];
    keys[n] = static_cast<uint32_t>((id >= 0 && id < V) ? id : V);
    rows[n] = static_cast<int32_t>(n);
  }
}

// Block x = sorted position i, block y * blockDim.x + thread = column d. Only the first position of a run of
// equal keys does work: it owns table row `key`, so no two threads write the same element.
__global__ void embedding_accumulate_kernel(float* __restrict__ dtable, const float* __restrict__ dout,
                                            const uint32_t* __restrict__ keys,
                                            const int32_t* __restrict__ rows, int N, uint32_t V, int D) {
  const int i = blockIdx.x;
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  const uint32_t key = keys[i];
  if (d >= D || key >= V || (i > 0 && keys[i - 1] == key)) return;
  float* dst = dtable + static_cast<int64_t>(key) * D + d;
  float acc = *dst;  // start from the table's gradient: same additions, same order as the CPU loop
  for (int j = i; j < N && keys[j] == key; ++j) acc += dout[static_cast<int64_t>(rows[j]) * D + d];
  *dst = acc;
}

// ---- activations ---------------------------------------------------------------------------------------

constexpr float kSqrt2Inv = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluCubic = 0.044715f;

__device__ inline float sigmoid(float x) {
  return 1.f / (1.f + expf(-x));
}

__global__ void silu_forward_kernel(float* y, const float* x, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = v / (1.f + expf(-v));
  }
}

__global__ void silu_backward_kernel(float* dx, const float* dy, const float* x, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i], s = sigmoid(v);
    dx[i] = dy[i] * s * (1.f + v * (1.f - s));  // d/dx [x s(x)]
  }
}

__global__ void gelu_forward_kernel(float* y, const float* x, int64_t n, bool tanh_approx) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = tanh_approx ? 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v)))
                       : 0.5f * v * (1.f + erff(v * kSqrt2Inv));
  }
}

__global__ void gelu_backward_kernel(float* dx, const float* dy, const float* x, int64_t n,
                                     bool tanh_approx) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i];
    float g;
    if (tanh_approx) {
      const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
      g = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
    } else {
      g = 0.5f * (1.f + erff(v * kSqrt2Inv)) + v * kInvSqrt2Pi * expf(-0.5f * v * v);  // Phi(x) + x phi(x)
    }
    dx[i] = dy[i] * g;
  }
}


// Out = float, or uint16_t when the result feeds a bf16 GEMM (the hidden activation, the gate/up gradients):
// the same fp32 value rounded once, without an fp32 round trip through memory and a cast.
__device__ __forceinline__ float swiglu_value(float g, float u) {
  return g / (1.f + expf(-g)) * u;
}
__device__ __forceinline__ void swiglu_grads(float g, float u, float d, float& dg, float& du) {
  const float s = sigmoid(g);
  du = d * g * s;
  dg = d * u * s * (1.f + g * (1.f - s));
}

template <class Out>
__global__ void swiglu_forward_kernel(Out* out, const float* gate, const float* up, int64_t N, int64_t H,
                                      int64_t ld) {
  TESSERA_GRID_STRIDE(i, N * H) {
    const int64_t n = i / H, j = n * ld + (i - n * H);
    store_value(out + i, swiglu_value(gate[j], up[j]));
  }
}

template <class Out>
__global__ void swiglu_backward_kernel(Out* dgate, Out* dup, const float* dout, const float* gate,
                                       const float* up, int64_t N, int64_t H, int64_t ld) {
  TESSERA_GRID_STRIDE(i, N * H) {
    const int64_t n = i / H, j = n * ld + (i - n * H);
    float dg, du;
    swiglu_grads(gate[j], up[j], dout[i], dg, du);
    store_value(dup + j, du);
    store_value(dgate + j, dg);
  }
}

// The same SwiGLU forward / backward, row by row, four columns per thread with 16-byte loads of fp32 and
// 16-byte (fp32) or 8-byte (bf16) stores, and no per-element index division: for H and the row stride
// multiples of 4 and pointers aligned to that (the launchers check). Same per-element arithmetic, same bits.
__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(uint16_t* p, float a, float b, float c, float d) {
  *reinterpret_cast<uint64_t*>(p) = pack_bf16x4(a, b, c, d);
}

template <class Out>
__global__ void swiglu_forward_x4_kernel(Out* out, const float* gate, const float* up, int64_t N, int64_t H,
                                         int64_t ld) {
  const int64_t h4 = H / 4;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float4* g4 = reinterpret_cast<const float4*>(gate + n * ld);
    const float4* u4 = reinterpret_cast<const float4*>(up + n * ld);
    Out* o = out + n * H;
    for (int64_t c = threadIdx.x; c < h4; c += blockDim.x) {
      const float4 g = g4[c], u = u4[c];
      store4(o + 4 * c, swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
             swiglu_value(g.w, u.w));
    }
  }
}

template <class Out>
__global__ void swiglu_backward_x4_kernel(Out* dgate, Out* dup, const float* dout, const float* gate,
                                          const float* up, int64_t N, int64_t H, int64_t ld) {
  const int64_t h4 = H / 4;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float4* g4 = reinterpret_cast<const float4*>(gate + n * ld);
    const float4* u4 = reinterpret_cast<const float4*>(up + n * ld);
    const float4* d4 = reinterpret_cast<const float4*>(dout + n * H);
    for (int64_t c = threadIdx.x; c < h4; c += blockDim.x) {
      const float4 g = g4[c], u = u4[c], d = d4[c];
      float dg[4], du[4];
      swiglu_grads(g.x, u.x, d.x, dg[0], du[0]);
      swiglu_grads(g.y, u.y, d.y, dg[1], du[1]);
      swiglu_grads(g.z, u.z, d.z, dg[2], du[2]);
      swiglu_grads(g.w, u.w, d.w, dg[3], du[3]);
      store4(dup + n * ld + 4 * c, du[0], du[1], du[2], du[3]);
      store4(dgate + n * ld + 4 * c, dg[0], dg[1], dg[2], dg[3]);
    }
  }
}

/// The row kernels apply: H and ld multiples of 4, every pointer aligned to 4 of its elements.
template <class... P>
bool swiglu_x4_ok(int64_t H, int64_t ld, const P*... ptrs) {
  return H % 4 == 0 && ld % 4 == 0 && (aligned_to(ptrs, 4 * sizeof(P)) && ...);
}
unsigned row_blocks(int64_t N) {
  return static_cast<unsigned>(std::clamp<int64_t>(N, 1, 65535));
}

// The SwiGLU with bf16 gate/up (the all-bf16 feed-forward saves its gate/up products in bf16): the same
// per-element fp32 arithmetic on the exactly widened inputs, bf16 outputs rounded once. Row kernels, V
// columns per thread: V = 8 (16-byte bf16 loads and stores, two 16-byte fp32 loads of dout), V = 4 (8-byte
// bf16 accesses) or V = 1 (the fallback for any width, stride or alignment), no index division either way.
template <int V>
__device__ __forceinline__ void load_bf16(const uint16_t* p, float (&v)[V]) {
  if constexpr (V == 1) {
    v[0] = bf16_to_float(*p);
  } else {
    uint32_t w[V / 2];
    if constexpr (V == 8) {
      const uint4 q = *reinterpret_cast<const uint4*>(p);
      w[0] = q.x, w[1] = q.y, w[2] = q.z, w[3] = q.w;
    } else {
      static_assert(V == 4);
      const uint64_t q = *reinterpret_cast<const uint64_t*>(p);
      w[0] = static_cast<uint32_t>(q), w[1] = static_cast<uint32_t>(q >> 32);
    }
#pragma unroll
    for (int i = 0; i < V / 2; ++i) {  // the first element in the low half (memory order)
      v[2 * i] = bf16_to_float(static_cast<uint16_t>(w[i]));
      v[2 * i + 1] = bf16_to_float(static_cast<uint16_t>(w[i] >> 16));
    }
  }
}
template <int V>
__device__ __forceinline__ void store_bf16(uint16_t* p, const float (&v)[V]) {
  if constexpr (V == 1) {
    *p = bf16_bits(v[0]);
  } else if constexpr (V == 4) {
    *reinterpret_cast<uint64_t*>(p) = pack_bf16x4(v[0], v[1], v[2], v[3]);
  } else {
    static_assert(V == 8);
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = bf16_bits(v[2 * i]) | uint32_t{bf16_bits(v[2 * i + 1])} << 16;
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}
template <int V>
__device__ __forceinline__ void load_f32(const float* p, float (&v)[V]) {
  if constexpr (V == 1) {
    v[0] = *p;
  } else {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + i);
      v[i] = q.x, v[i + 1] = q.y, v[i + 2] = q.z, v[i + 3] = q.w;
    }
  }
}

template <int V>
__global__ void swiglu_forward_bf16in_kernel(uint16_t* out, const uint16_t* gate, const uint16_t* up,
                                             int64_t N, int64_t H, int64_t ld) {
  const int64_t hv = H / V;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const uint16_t* g_row = gate + n * ld;
    const uint16_t* u_row = up + n * ld;
    uint16_t* o_row = out + n * H;
    for (int64_t c = threadIdx.x; c < hv; c += blockDim.x) {
      float g[V], u[V], o[V];
      load_bf16<V>(g_row + V * c, g);
      load_bf16<V>(u_row + V * c, u);
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = swiglu_value(g[i], u[i]);
      store_bf16<V>(o_row + V * c, o);
    }
  }
}

template <int V>
__global__ void swiglu_backward_bf16in_kernel(uint16_t* dgate, uint16_t* dup, const float* dout,
                                              const uint16_t* gate, const uint16_t* up, int64_t N, int64_t H,
                                              int64_t ld) {
  const int64_t hv = H / V;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const uint16_t* g_row = gate + n * ld;
    const uint16_t* u_row = up + n * ld;
    const float* d_row = dout + n * H;
    for (int64_t c = threadIdx.x; c < hv; c += blockDim.x) {
      float g[V], u[V], d[V], dg[V], du[V];
      load_bf16<V>(g_row + V * c, g);
      load_bf16<V>(u_row + V * c, u);
      load_f32<V>(d_row + V * c, d);
#pragma unroll
      for (int i = 0; i < V; ++i) swiglu_grads(g[i], u[i], d[i], dg[i], du[i]);
      store_bf16<V>(dup + n * ld + V * c, du);
      store_bf16<V>(dgate + n * ld + V * c, dg);
    }
  }
}

/// Columns per thread for the bf16-input kernels: 8 or 4 where H and ld are multiples of it and every bf16
/// pointer is aligned to that many elements (dout, when given, to 16 bytes for its float4 loads), else 1.
template <class... P>
int swiglu_bf16in_width(int64_t H, int64_t ld, const float* dout, const P*... bf16_ptrs) {
  for (const int v : {8, 4}) {
    if (H % v == 0 && ld % v == 0 && (!dout || aligned_to(dout, 16)) &&
        (aligned_to(bf16_ptrs, v * sizeof(uint16_t)) && ...))
      return v;
  }
  return 1;
}

// The simple elementwise kernels take four floats per access where every pointer is 16-byte aligned (vec4):
// for_each_x4 (core_util.cuh).
__device__ inline float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

__global__ void add_inplace_kernel(float* y, const float* x, int64_t n, bool vec4) {
  float4* y4 = reinterpret_cast<float4*>(y);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  for_each_x4(
      n, vec4, [&](int64_t i) { y4[i] = add4(y4[i], x4[i]); }, [&](int64_t i) { y[i] += x[i]; });
}
__global__ void add_kernel(float* z, const float* x, const float* y, int64_t n, bool vec4) {
  float4* z4 = reinterpret_cast<float4*>(z);
  const float4 *x4 = reinterpret_cast<const float4*>(x), *y4 = reinterpret_cast<const float4*>(y);
  for_each_x4(
      n, vec4, [&](int64_t i) { z4[i] = add4(x4[i], y4[i]); }, [&](int64_t i) { z[i] = x[i] + y[i]; });
}
__global__ void scale_inplace_kernel(float* y, float a, int64_t n, bool vec4) {
  float4* y4 = reinterpret_cast<float4*>(y);
  for_each_x4(
      n, vec4,
      [&](int64_t i) {
        const float4 v = y4[i];
        y4[i] = make_float4(v.x * a, v.y * a, v.z * a, v.w * a);
      },
      [&](int64_t i) { y[i] *= a; });
}
__global__ void fill_kernel(float* y, float a, int64_t n, bool vec4) {
  float4* y4 = reinterpret_cast<float4*>(y);
  for_each_x4(
      n, vec4, [&](int64_t i) { y4[i] = make_float4(a, a, a, a); }, [&](int64_t i) { y[i] = a; });
}

/// Grid and float4 choice of the simple elementwise kernels over n elements.
struct X4Launch {
  unsigned blocks;
  bool vec4;
};
X4Launch x4_launch(int64_t n, std::initializer_list<const void*> ptrs) {
  bool vec4 = n >= 4;
  for (const void* p : ptrs) vec4 = vec4 && aligned_to(p, 16);
  return {stride_blocks(vec4 ? n / 4 + n % 4 : n), vec4};
}
__global__ void cast_f32_to_bf16_kernel(uint16_t* __restrict__ dst, const float* __restrict__ src, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) dst[i] = bf16_bits(src[i]);
}
__global__ void cast_bf16_to_f32_kernel(float* __restrict__ dst, const uint16_t* __restrict__ src, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) dst[i] = bf16_to_float(src[i]);
}
// The same casts 8 elements per thread (two 16-byte loads, one 16-byte store, or the reverse) when both
// pointers are 16-byte aligned and n is a multiple of 8: the casts are memory-bound, and 2-byte stores per
// thread reach about half the bandwidth.
__global__ void cast_f32_to_bf16_x8_kernel(uint4* __restrict__ dst, const float4* __restrict__ src,
                                           int64_t n8) {
  TESSERA_GRID_STRIDE(i, n8) {
    const float4 a = src[2 * i], b = src[2 * i + 1];
    uint4 o;
    o.x = bf16_bits(a.x) | uint32_t{bf16_bits(a.y)} << 16;
    o.y = bf16_bits(a.z) | uint32_t{bf16_bits(a.w)} << 16;
    o.z = bf16_bits(b.x) | uint32_t{bf16_bits(b.y)} << 16;
    o.w = bf16_bits(b.z) | uint32_t{bf16_bits(b.w)} << 16;
    dst[i] = o;
  }
}
__global__ void cast_bf16_to_f32_x8_kernel(float4* __restrict__ dst, const uint4* __restrict__ src,
                                           int64_t n8) {
  TESSERA_GRID_STRIDE(i, n8) {
    const uint4 u = src[i];
    auto lo = [](uint32_t w) { return bf16_to_float(static_cast<uint16_t>(w & 0xffffu)); };
    auto hi = [](uint32_t w) { return bf16_to_float(static_cast<uint16_t>(w >> 16)); };
    dst[2 * i] = make_float4(lo(u.x), hi(u.x), lo(u.y), hi(u.y));
    dst[2 * i + 1] = make_float4(lo(u.z), hi(u.z), lo(u.w), hi(u.w));
  }
}
inline bool vec8_ok(const void* a, const void* b, int64_t n) {
  return n % 8 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
}
__global__ void copy_rows_kernel(float* __restrict__ dst, int64_t dst_stride, const float* __restrict__ src,
                                 int64_t src_stride, int64_t rows, int64_t cols) {
  TESSERA_GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[r * dst_stride + c] = src[r * src_stride + c];
  }
}
__global__ void fill_positions_kernel(int64_t* pos, int64_t seq, int64_t n, int64_t offset, int64_t modulo) {
  TESSERA_GRID_STRIDE(i, n) {
    const int64_t p = offset + i % seq;
    pos[i] = modulo > 0 ? p % modulo : p;
  }
}

// ---- RoPE ---------------------------------------------------------------------------------------------

/// One pair (a, b) rotated by the angle whose cosine and sine are (c, s): the arithmetic every RoPE kernel
/// here shares, so that they round alike.
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float& x, float& y) {
  x = a * c - b * s;
  y = a * s + b * c;
}

/// cos and sign * sin of RoPE pair i of a token at position pos, as the CPU computes them: inv_freq =
/// theta^(-2i/Dh) and the angle pos * inv_freq in double, then rounded to float.
__device__ __forceinline__ void rope_cos_sin(int64_t pos, int i, int Dh, double theta, double sign, float& c,
                                             float& s) {
  const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(Dh));
  double sd, cd;
  sincos(static_cast<double>(pos) * inv_freq, &sd, &cd);
  c = static_cast<float>(cd);
  s = static_cast<float>(sign * sd);
}

/// The rope kernels' head order: heads [h0, h1) in runs of kRun, load(u, hh) for every head hh of a run (u
/// its place in the run) before store(u, hh) for any. The output may alias the input (in place), so loads and
/// stores of one head after the other would wait on each other: too few loads in flight per thread to keep
/// HBM busy at training sizes. Each element is read and written by its thread only, so reading ahead is safe.
template <int kRun, class Load, class Store>
__device__ __forceinline__ void in_head_runs(int h0, int h1, Load&& load, Store&& store) {
  for (int h = h0; h < h1; h += kRun) {
#pragma unroll
    for (int u = 0; u < kRun && h + u < h1; ++u) load(u, h + u);
#pragma unroll
    for (int u = 0; u < kRun && h + u < h1; ++u) store(u, h + u);
  }
}

__global__ void rope_kernel(float* x, int64_t stride, const int64_t* __restrict__ positions, int64_t N, int H,
                            int Dh, double theta, bool interleaved, double sign) {
  const int half = Dh / 2;
  TESSERA_GRID_STRIDE(k, N * half) {
    const int64_t n = k / half;
    const int i = static_cast<int>(k - n * half);
    float c, s;
    rope_cos_sin(positions[n], i, Dh, theta, sign, c, s);
    float* tok = x + n * stride;
    const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : half + i;
    constexpr int kRun = 8;
    float a[kRun], b[kRun];
    in_head_runs<kRun>(
        0, H,
        [&](int u, int hh) {
          const float* v = tok + static_cast<int64_t>(hh) * Dh;
          a[u] = v[ia], b[u] = v[ib];
        },
        [&](int u, int hh) {
          float* v = tok + static_cast<int64_t>(hh) * Dh;
          rotate_pair(a[u], b[u], c, s, v[ia], v[ib]);
        });
  }
}

// Queries and keys of one attention call in one launch: both head sets share the positions, so a thread
// computes a pair's cos/sin once and rotates it in several heads. The heads are split into `groups` runs
// with a thread each: one run (every head) when there are enough pairs to fill the device (training), one
// head per thread for the single token of a decoding step, where a thread walking all 2·H heads one after the
// other would wait on 2·H dependent loads. In/Out: float, or uint16_t (bf16 bits: loads widen exactly, stores
// round to nearest even once, after the rotation).

/// The heads of one item group of the rope_qk kernels: token n and its joint head range [h0, h1) (queries,
/// then keys), for the group ng = n * groups + group of `groups` runs of ceil(H / groups) heads.
struct RopeHeads {
  int64_t n;
  int h0, h1;
};
__device__ __forceinline__ RopeHeads rope_heads(int64_t ng, int groups, int H) {
  const int per = (H + groups - 1) / groups;
  const int64_t n = ng / groups;
  const int h0 = static_cast<int>(ng - n * groups) * per;
  return {n, h0, min(H, h0 + per)};
}
/// Joint head hh of token n (queries, then keys): its offset in q / k (and q_out / k_out).
__device__ __forceinline__ int64_t rope_head_offset(int64_t n, int hh, int Hq, int Hk, int Dh) {
  return hh < Hq ? (n * Hq + hh) * Dh : (n * Hk + (hh - Hq)) * Dh;
}

/// Item t = (n * groups + group) * half + i of rope_qk_kernel (i fastest: coalesced): pair i of token n in
/// the group's heads, from q / k to q_out / k_out.
template <class In, class Out>
__device__ inline void rope_qk_item(int64_t t, const In* q, const In* k, Out* q_out, Out* k_out,
                                    const int64_t* __restrict__ positions, int Hq, int Hk, int Dh,
                                    double theta, bool interleaved, double sign, int groups) {
  const int half = Dh / 2;
  const int i = static_cast<int>(t % half);
  const RopeHeads hs = rope_heads(t / half, groups, Hq + Hk);
  const int64_t n = hs.n;
  float c, s;
  rope_cos_sin(positions[n], i, Dh, theta, sign, c, s);
  const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : half + i;
  constexpr int kRun = 8;
  float a[kRun], b[kRun];
  in_head_runs<kRun>(
      hs.h0, hs.h1,
      [&](int u, int hh) {
        const In* src = (hh < Hq ? q : k) + rope_head_offset(n, hh, Hq, Hk, Dh);
        a[u] = load_value(src + ia), b[u] = load_value(src + ib);
      },
      [&](int u, int hh) {
        Out* dst = (hh < Hq ? q_out : k_out) + rope_head_offset(n, hh, Hq, Hk, Dh);
        float x, y;
        rotate_pair(a[u], b[u], c, s, x, y);
        store_value(dst + ia, x);
        store_value(dst + ib, y);
      });
}

template <class In, class Out>
__global__ void rope_qk_kernel(const In* q, const In* k, Out* q_out, Out* k_out,
                               const int64_t* __restrict__ positions, int64_t N, int Hq, int Hk, int Dh,
                               double theta, bool interleaved, double sign, int groups) {
  TESSERA_GRID_STRIDE(t, N * groups * (Dh / 2)) {
    rope_qk_item(t, q, k, q_out, k_out, positions, Hq, Hk, Dh, theta, interleaved, sign, groups);
  }
}

/// Eight bf16 values of one 16-byte word (the first in the lowest bits: memory order) and back.
__device__ __forceinline__ void unpack_bf16x8(const uint4& w, float (&f)[8]) {
  const uint32_t v[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = bf16_to_float(static_cast<uint16_t>(v[j] & 0xffffu));
    f[2 * j + 1] = bf16_to_float(static_cast<uint16_t>(v[j] >> 16));
  }
}
__device__ __forceinline__ uint4 pack_bf16x8(const float (&f)[8]) {
  uint32_t v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = uint32_t{bf16_bits(f[2 * j])} | uint32_t{bf16_bits(f[2 * j + 1])} << 16;
  return make_uint4(v[0], v[1], v[2], v[3]);
}

/// rope_qk_kernel for bf16 in and out with 16-byte accesses: item t = (n * groups + group) * chunks + c (c
/// fastest) rotates pairs 8c .. 8c+7 of token n in the group's heads. Half style: the pairs' first elements
/// are one 16-byte word at 8c, their partners one at Dh/2 + 8c; interleaved: the pairs are the 16 elements
/// from 16c, two words. cos / sin once per pair for all the thread's heads. Heads in runs of kRun, every load
/// of a run before its stores (in place: each word is read and written by this thread only), so a thread has
/// 2 kRun 16-byte loads in flight; rope_qk_item moves 2-byte values, one pair per thread, whose in-place
/// stores the compiler must order before the next head's loads. The same rotations, bit for bit.
/// Needs Dh a multiple of 16 and 16-byte aligned q, k, q_out, k_out.
__global__ void rope_qk_bf16x8_kernel(const uint16_t* q, const uint16_t* k, uint16_t* q_out, uint16_t* k_out,
                                      const int64_t* __restrict__ positions, int64_t N, int Hq, int Hk,
                                      int Dh, double theta, bool interleaved, double sign, int groups) {
  const int half = Dh / 2, chunks = half / 8;
  TESSERA_GRID_STRIDE(t, N * groups * chunks) {
    const int c = static_cast<int>(t % chunks);
    const RopeHeads hs = rope_heads(t / chunks, groups, Hq + Hk);
    const int64_t n = hs.n;
    float cs[8], sn[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) rope_cos_sin(positions[n], 8 * c + j, Dh, theta, sign, cs[j], sn[j]);
    const int e0 = interleaved ? 16 * c : 8 * c, e1 = interleaved ? 16 * c + 8 : half + 8 * c;
    constexpr int kRun = 4;
    uint4 w0[kRun], w1[kRun];
    in_head_runs<kRun>(
        hs.h0, hs.h1,
        [&](int u, int hh) {
          const uint16_t* src = (hh < Hq ? q : k) + rope_head_offset(n, hh, Hq, Hk, Dh);
          w0[u] = *reinterpret_cast<const uint4*>(src + e0);
          w1[u] = *reinterpret_cast<const uint4*>(src + e1);
        },
        [&](int u, int hh) {
          float f0[8], f1[8], r0[8], r1[8];
          unpack_bf16x8(w0[u], f0);
          unpack_bf16x8(w1[u], f1);
          if (interleaved) {  // word 0: pairs 0-3 as (even, odd) elements; word 1: pairs 4-7
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              rotate_pair(f0[2 * j], f0[2 * j + 1], cs[j], sn[j], r0[2 * j], r0[2 * j + 1]);
              rotate_pair(f1[2 * j], f1[2 * j + 1], cs[4 + j], sn[4 + j], r1[2 * j], r1[2 * j + 1]);
            }
          } else {  // word 0: the pairs' first elements, word 1 their partners
#pragma unroll
            for (int j = 0; j < 8; ++j) rotate_pair(f0[j], f1[j], cs[j], sn[j], r0[j], r1[j]);
          }
          uint16_t* dst = (hh < Hq ? q_out : k_out) + rope_head_offset(n, hh, Hq, Hk, Dh);
          *reinterpret_cast<uint4*>(dst + e0) = pack_bf16x8(r0);
          *reinterpret_cast<uint4*>(dst + e1) = pack_bf16x8(r1);
        });
  }
}

/// rope_qk_append: the rotation items first (q in place, k into the cache rows), then v's elements, then the
/// rows' segment ids.
__global__ void rope_qk_append_kernel(float* q, const float* __restrict__ k, const float* __restrict__ v,
                                      const int64_t* __restrict__ positions, int64_t N, int Hq, int Hk,
                                      int Dh, int64_t vw, double theta, bool interleaved, int groups,
                                      float* __restrict__ k_dst, float* __restrict__ v_dst,
                                      int64_t* __restrict__ seg_dst) {
  const int64_t n_rot = N * groups * (Dh / 2), n_v = N * vw;
  TESSERA_GRID_STRIDE(t, n_rot + n_v + N) {
    if (t < n_rot)
      rope_qk_item(t, static_cast<const float*>(q), k, q, k_dst, positions, Hq, Hk, Dh, theta, interleaved,
                   1.0, groups);
    else if (t < n_rot + n_v)
      v_dst[t - n_rot] = v[t - n_rot];
    else
      seg_dst[t - n_rot - n_v] = 0;
  }
}

/// Head runs per token for rope_qk_kernel: enough threads for ~64K in flight, at most one head per thread.
int rope_head_groups(int64_t N, int half, int H) {
  constexpr int64_t kTargetThreads = 65536;
  const int64_t pairs = std::max<int64_t>(N * half, 1);
  return static_cast<int>(std::clamp<int64_t>((kTargetThreads + pairs - 1) / pairs, 1, H));
}

std::atomic<bool> g_rope_vectorised{true};

template <class In, class Out>
void launch_rope_qk(const void* q, const void* k, void* q_out, void* k_out, const int64_t* positions,
                    int64_t N, int Hq, int Hk, int Dh, double theta, bool interleaved, double sign) {
  if constexpr (std::is_same_v<In, uint16_t> && std::is_same_v<Out, uint16_t>) {
    if (Dh % 16 == 0 && g_rope_vectorised.load() && aligned_to(q, 16) && aligned_to(k, 16) &&
        aligned_to(q_out, 16) && aligned_to(k_out, 16)) {
      // Threads per token: Dh / 16 chunks of 8 pairs, times head groups until ~64K threads are in flight.
      const int chunks = Dh / 16, groups = rope_head_groups(N, chunks, Hq + Hk);
      rope_qk_bf16x8_kernel<<<stride_blocks(N * groups * chunks), kThreads>>>(
          static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k), static_cast<uint16_t*>(q_out),
          static_cast<uint16_t*>(k_out), positions, N, Hq, Hk, Dh, theta, interleaved, sign, groups);
      TESSERA_CUDA_CHECK_LAUNCH("rope_qk_bf16x8_kernel");
      return;
    }
  }
  const int groups = rope_head_groups(N, Dh / 2, Hq + Hk);
  rope_qk_kernel<In, Out><<<stride_blocks(N * groups * (Dh / 2)), kThreads>>>(
      static_cast<const In*>(q), static_cast<const In*>(k), static_cast<Out*>(q_out),
      static_cast<Out*>(k_out), positions, N, Hq, Hk, Dh, theta, interleaved, sign, groups);
  TESSERA_CUDA_CHECK_LAUNCH("rope_qk_kernel");
}

__global__ void append_kv_kernel(float* __restrict__ kdst, const float* __restrict__ k, int64_t k_stride,
                                 int64_t kw, float* __restrict__ vdst, const float* __restrict__ v,
                                 int64_t v_stride, int64_t vw, int64_t* __restrict__ seg_dst,
                                 const int64_t* __restrict__ seg, int64_t rows) {
  const int64_t nk = rows * kw, nv = rows * vw;
  TESSERA_GRID_STRIDE(i, nk + nv + rows) {
    if (i < nk) {
      const int64_t r = i / kw, c = i - r * kw;
      kdst[r * kw + c] = k[r * k_stride + c];
    } else if (i < nk + nv) {
      const int64_t j = i - nk, r = j / vw, c = j - r * vw;
      vdst[r * vw + c] = v[r * v_stride + c];
    } else {
      const int64_t r = i - nk - nv;
      seg_dst[r] = seg ? seg[r] : 0;
    }
  }
}

void check_n(const char* op, int64_t n) {
  TESSERA_CHECK(n >= 0, op, "(cuda): negative element count ", n);
}

}  // namespace

// ---- embedding ----------------------------------------------------------------------------------------

void embedding_forward_f32(float* out, const int64_t* ids, const float* table, int64_t N, int64_t V,
                           int64_t D) {
  TESSERA_CHECK(N >= 0 && V > 0 && D > 0, "embedding_forward(cuda): bad sizes N=", N, " V=", V, " D=", D);
  if (N == 0) return;
  embedding_forward_kernel<<<stride_blocks(N * D), kThreads>>>(out, ids, table, N, V, D);
  TESSERA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

void embedding_backward_f32(float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V,
                            int64_t D) {
  constexpr const char* op = "embedding_backward";
  TESSERA_CHECK(N >= 0 && V > 0 && D > 0, op, "(cuda): bad sizes N=", N, " V=", V, " D=", D);
  check_int_range(op, "N", N);
  check_int_range(op, "V", V);  // keys are uint32 with V as the invalid-id key
  check_int_range(op, "D", D);
  if (N == 0) return;
  const int n = static_cast<int>(N);
  const int end_bit = std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(V))));  // keys <= V
  size_t sort_bytes = 0;
  TESSERA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n, 0, end_bit));
  OpTemp temp(2 * OpTemp::bytes<uint32_t>(N) + 2 * OpTemp::bytes<int32_t>(N) +
              OpTemp::bytes<char>(sort_bytes));
  uint32_t* keys_in = temp.carve<uint32_t>(N);
  uint32_t* keys = temp.carve<uint32_t>(N);
  int32_t* rows_in = temp.carve<int32_t>(N);
  int32_t* rows = temp.carve<int32_t>(N);
  void* sort_temp = temp.carve<char>(static_cast<int64_t>(sort_bytes));

  embedding_keys_kernel<<<stride_blocks(N), kThreads>>>(keys_in, rows_in, ids, N, V);
  TESSERA_CUDA_CHECK_LAUNCH("embedding_keys_kernel");
  TESSERA_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys_in, keys, rows_in, rows, n, 0, end_bit));
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (D + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((D + threads - 1) / threads));
  TESSERA_CHECK(grid.y <= 65535, op, "(cuda): D=", D, " is too large");
  embedding_accumulate_kernel<<<grid, threads>>>(dtable, dout, keys, rows, n, static_cast<uint32_t>(V),
                                                 static_cast<int>(D));
  TESSERA_CUDA_CHECK_LAUNCH("embedding_accumulate_kernel");
}

// ---- activations ---------------------------------------------------------------------------------------

void silu_forward_f32(float* y, const float* x, int64_t n) {
  check_n("silu_forward", n);
  if (n == 0) return;
  silu_forward_kernel<<<stride_blocks(n), kThreads>>>(y, x, n);
  TESSERA_CUDA_CHECK_LAUNCH("silu_forward_kernel");
}

void silu_backward_f32(float* dx, const float* dy, const float* x, int64_t n) {
  check_n("silu_backward", n);
  if (n == 0) return;
  silu_backward_kernel<<<stride_blocks(n), kThreads>>>(dx, dy, x, n);
  TESSERA_CUDA_CHECK_LAUNCH("silu_backward_kernel");
}

void gelu_forward_f32(float* y, const float* x, int64_t n, bool tanh_approx) {
  check_n("gelu_forward", n);
  if (n == 0) return;
  gelu_forward_kernel<<<stride_blocks(n), kThreads>>>(y, x, n, tanh_approx);
  TESSERA_CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

void gelu_backward_f32(float* dx, const float* dy, const float* x, int64_t n, bool tanh_approx) {
  check_n("gelu_backward", n);
  if (n == 0) return;
  gelu_backward_kernel<<<stride_blocks(n), kThreads>>>(dx, dy, x, n, tanh_approx);
  TESSERA_CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}

template <class Out>
void swiglu_forward_any(Out* out, const float* gate, const float* up, int64_t N, int64_t H, int64_t ld) {
  TESSERA_CHECK(N >= 0 && H > 0, "swiglu_forward(cuda): bad sizes N=", N, " H=", H);
  TESSERA_CHECK(ld >= H, "swiglu_forward(cuda): gate/up row stride ", ld, " is smaller than the width ", H);
  if (N == 0) return;
  if (swiglu_x4_ok(H, ld, out, gate, up)) {
    swiglu_forward_x4_kernel<Out><<<row_blocks(N), kThreads>>>(out, gate, up, N, H, ld);
    TESSERA_CUDA_CHECK_LAUNCH("swiglu_forward_x4_kernel");
    return;
  }
  swiglu_forward_kernel<Out><<<stride_blocks(N * H), kThreads>>>(out, gate, up, N, H, ld);
  TESSERA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}
void swiglu_forward_f32(float* out, const float* gate, const float* up, int64_t N, int64_t H, int64_t ld) {
  swiglu_forward_any(out, gate, up, N, H, ld);
}
void swiglu_forward_bf16out(uint16_t* out, const float* gate, const float* up, int64_t N, int64_t H,
                            int64_t ld) {
  swiglu_forward_any(out, gate, up, N, H, ld);
}

template <class Out>
void swiglu_backward_any(Out* dgate, Out* dup, const float* dout, const float* gate, const float* up,
                         int64_t N, int64_t H, int64_t ld) {
  TESSERA_CHECK(N >= 0 && H > 0, "swiglu_backward(cuda): bad sizes N=", N, " H=", H);
  TESSERA_CHECK(ld >= H, "swiglu_backward(cuda): gate/up row stride ", ld, " is smaller than the width ", H);
  if (N == 0) return;
  if (swiglu_x4_ok(H, ld, dgate, dup, dout, gate, up)) {
    swiglu_backward_x4_kernel<Out><<<row_blocks(N), kThreads>>>(dgate, dup, dout, gate, up, N, H, ld);
    TESSERA_CUDA_CHECK_LAUNCH("swiglu_backward_x4_kernel");
    return;
  }
  swiglu_backward_kernel<Out><<<stride_blocks(N * H), kThreads>>>(dgate, dup, dout, gate, up, N, H, ld);
  TESSERA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}
void swiglu_backward_f32(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                         int64_t N, int64_t H, int64_t ld) {
  swiglu_backward_any(dgate, dup, dout, gate, up, N, H, ld);
}
void swiglu_backward_bf16out(uint16_t* dgate, uint16_t* dup, const float* dout, const float* gate,
                             const float* up, int64_t N, int64_t H, int64_t ld) {
  swiglu_backward_any(dgate, dup, dout, gate, up, N, H, ld);
}

void swiglu_forward_bf16(uint16_t* out, const uint16_t* gate, const uint16_t* up, int64_t N, int64_t H,
                         int64_t ld) {
  TESSERA_CHECK(N >= 0 && H > 0, "swiglu_forward(cuda): bad sizes N=", N, " H=", H);
  TESSERA_CHECK(ld >= H, "swiglu_forward(cuda): gate/up row stride ", ld, " is smaller than the width ", H);
  if (N == 0) return;
  switch (swiglu_bf16in_width(H, ld, nullptr, out, gate, up)) {
    case 8:
      swiglu_forward_bf16in_kernel<8><<<row_blocks(N), kThreads>>>(out, gate, up, N, H, ld);
      break;
    case 4:
      swiglu_forward_bf16in_kernel<4><<<row_blocks(N), kThreads>>>(out, gate, up, N, H, ld);
      break;
    default:
      swiglu_forward_bf16in_kernel<1><<<row_blocks(N), kThreads>>>(out, gate, up, N, H, ld);
  }
  TESSERA_CUDA_CHECK_LAUNCH("swiglu_forward_bf16in_kernel");
}
void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, int64_t H, int64_t ld) {
  TESSERA_CHECK(N >= 0 && H > 0, "swiglu_backward(cuda): bad sizes N=", N, " H=", H);
  TESSERA_CHECK(ld >= H, "swiglu_backward(cuda): gate/up row stride ", ld, " is smaller than the width ", H);
  if (N == 0) return;
  switch (swiglu_bf16in_width(H, ld, dout, dgate, dup, gate, up)) {
    case 8:
      swiglu_backward_bf16in_kernel<8><<<row_blocks(N), kThreads>>>(dgate, dup, dout, gate, up, N, H, ld);
      break;
    case 4:
      swiglu_backward_bf16in_kernel<4><<<row_blocks(N), kThreads>>>(dgate, dup, dout, gate, up, N, H, ld);
      break;
    default:
      swiglu_backward_bf16in_kernel<1><<<row_blocks(N), kThreads>>>(dgate, dup, dout, gate, up, N, H, ld);
  }
  TESSERA_CUDA_CHECK_LAUNCH("swiglu_backward_bf16in_kernel");
}

void add_inplace_f32(float* y, const float* x, int64_t n) {
  check_n("add_inplace", n);
  if (n == 0) return;
  const X4Launch l = x4_launch(n, {y, x});
  add_inplace_kernel<<<l.blocks, kThreads>>>(y, x, n, l.vec4);
  TESSERA_CUDA_CHECK_LAUNCH("add_inplace_kernel");
}

void add_f32(float* z, const float* x, const float* y, int64_t n) {
  check_n("add", n);
  if (n == 0) return;
  const X4Launch l = x4_launch(n, {z, x, y});
  add_kernel<<<l.blocks, kThreads>>>(z, x, y, n, l.vec4);
  TESSERA_CUDA_CHECK_LAUNCH("add_kernel");
}

void scale_inplace_f32(float* y, float a, int64_t n) {
  check_n("scale_inplace", n);
  if (n == 0) return;
  const X4Launch l = x4_launch(n, {y});
  scale_inplace_kernel<<<l.blocks, kThreads>>>(y, a, n, l.vec4);
  TESSERA_CUDA_CHECK_LAUNCH("scale_inplace_kernel");
}

void fill_f32(float* y, float a, int64_t n) {
  check_n("fill", n);
  if (n == 0) return;
  const X4Launch l = x4_launch(n, {y});
  fill_kernel<<<l.blocks, kThreads>>>(y, a, n, l.vec4);
  TESSERA_CUDA_CHECK_LAUNCH("fill_kernel");
}

void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  check_n("cast", n);
  if (n == 0) return;
  if (vec8_ok(dst, src, n)) {
    cast_f32_to_bf16_x8_kernel<<<stride_blocks(n / 8), kThreads>>>(
        reinterpret_cast<uint4*>(dst), reinterpret_cast<const float4*>(src), n / 8);
    TESSERA_CUDA_CHECK_LAUNCH("cast_f32_to_bf16_x8_kernel");
    return;
  }
  cast_f32_to_bf16_kernel<<<stride_blocks(n), kThreads>>>(dst, src, n);
  TESSERA_CUDA_CHECK_LAUNCH("cast_f32_to_bf16_kernel");
}
void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n) {
  check_n("cast", n);
  if (n == 0) return;
  if (vec8_ok(dst, src, n)) {
    cast_bf16_to_f32_x8_kernel<<<stride_blocks(n / 8), kThreads>>>(
        reinterpret_cast<float4*>(dst), reinterpret_cast<const uint4*>(src), n / 8);
    TESSERA_CUDA_CHECK_LAUNCH("cast_bf16_to_f32_x8_kernel");
    return;
  }
  cast_bf16_to_f32_kernel<<<stride_blocks(n), kThreads>>>(dst, src, n);
  TESSERA_CUDA_CHECK_LAUNCH("cast_bf16_to_f32_kernel");
}

void copy_rows_f32(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                   int64_t cols) {
  TESSERA_CHECK(rows >= 0 && cols >= 0 && dst_stride >= cols && src_stride >= cols,
                "copy_rows(cuda): bad sizes rows=", rows, " cols=", cols, " dst_stride=", dst_stride,
                " src_stride=", src_stride);
  if (rows * cols == 0) return;
  copy_rows_kernel<<<stride_blocks(rows * cols), kThreads>>>(dst, dst_stride, src, src_stride, rows, cols);
  TESSERA_CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

// ---- RoPE ---------------------------------------------------------------------------------------------

void fill_positions_i64(int64_t* positions, int64_t batch, int64_t seq, int64_t offset, int64_t modulo) {
  TESSERA_CHECK(batch >= 0 && seq >= 0 && modulo >= 0, "fill_positions: bad sizes batch=", batch,
                " seq=", seq, " modulo=", modulo);
  const int64_t n = batch * seq;
  if (n == 0) return;
  fill_positions_kernel<<<stride_blocks(n), kThreads>>>(positions, seq, n, offset, modulo);
  TESSERA_CUDA_CHECK_LAUNCH("fill_positions_kernel");
}

void rope_f32(float* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
              double theta, bool interleaved, double sign) {
  const char* op = sign > 0 ? "rope_forward" : "rope_backward";
  // The CPU op's checks and messages.
  TESSERA_CHECK(Dh > 0 && Dh % 2 == 0, op, ": head dimension must be positive and even, got ", Dh);
  TESSERA_CHECK(H > 0, op, ": number of heads must be positive, got ", H);
  TESSERA_CHECK(stride >= H * Dh, op, ": token stride ", stride, " is smaller than heads*head_dim ", H * Dh);
  TESSERA_CHECK(theta > 0, op, ": theta must be positive, got ", theta);
  TESSERA_CHECK(N >= 0, op, "(cuda): negative token count ", N);
  check_int_range(op, "H", H);
  check_int_range(op, "Dh", Dh);
  if (N == 0) return;
  rope_kernel<<<stride_blocks(N * (Dh / 2)), kThreads>>>(x, stride, positions, N, static_cast<int>(H),
                                                         static_cast<int>(Dh), theta, interleaved, sign);
  TESSERA_CUDA_CHECK_LAUNCH("rope_kernel");
}

bool set_rope_vectorised(bool on) {
  return g_rope_vectorised.exchange(on);
}

void rope_qk(const void* q, const void* k, void* q_out, void* k_out, bool src_bf16, bool dst_bf16,
             const int64_t* positions, int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta,
             bool interleaved, double sign) {
  const char* op = sign > 0 ? "rope_forward" : "rope_backward";
  TESSERA_CHECK(Dh > 0 && Dh % 2 == 0, op, ": head dimension must be positive and even, got ", Dh);
  TESSERA_CHECK(Hq > 0 && Hk > 0, op, ": numbers of heads must be positive, got ", Hq, " and ", Hk);
  TESSERA_CHECK(theta > 0, op, ": theta must be positive, got ", theta);
  TESSERA_CHECK(N >= 0, op, "(cuda): negative token count ", N);
  TESSERA_CHECK(src_bf16 != dst_bf16 || (q == q_out && k == k_out) || (q != q_out && k != k_out), op,
                "(cuda): q and k must both be in place or both not");
  check_int_range(op, "heads", Hq + Hk);
  check_int_range(op, "Dh", Dh);
  if (N == 0) return;
  const int hq = static_cast<int>(Hq), hk = static_cast<int>(Hk), dh = static_cast<int>(Dh);
  if (!src_bf16 && !dst_bf16)
    launch_rope_qk<float, float>(q, k, q_out, k_out, positions, N, hq, hk, dh, theta, interleaved, sign);
  else if (!src_bf16)
    launch_rope_qk<float, uint16_t>(q, k, q_out, k_out, positions, N, hq, hk, dh, theta, interleaved, sign);
  else if (!dst_bf16)
    launch_rope_qk<uint16_t, float>(q, k, q_out, k_out, positions, N, hq, hk, dh, theta, interleaved, sign);
  else
    launch_rope_qk<uint16_t, uint16_t>(q, k, q_out, k_out, positions, N, hq, hk, dh, theta, interleaved,
                                       sign);
}

void append_kv_f32(float* kdst, const float* k, int64_t k_stride, int64_t kw, float* vdst, const float* v,
                   int64_t v_stride, int64_t vw, int64_t* seg_dst, const int64_t* seg, int64_t rows) {
  TESSERA_CHECK(rows >= 0 && kw > 0 && vw > 0 && k_stride >= kw && v_stride >= vw,
                "append_kv(cuda): bad sizes rows=", rows, " widths ", kw, "/", vw, " strides ", k_stride, "/",
                v_stride);
  if (rows == 0) return;
  append_kv_kernel<<<stride_blocks(rows * (kw + vw + 1)), kThreads>>>(kdst, k, k_stride, kw, vdst, v,
                                                                      v_stride, vw, seg_dst, seg, rows);
  TESSERA_CUDA_CHECK_LAUNCH("append_kv_kernel");
}

void rope_qk_append_f32(float* q, const float* k, const float* v, const int64_t* positions, int64_t N,
                        int64_t Hq, int64_t Hk, int64_t Dh, int64_t vw, double theta, bool interleaved,
                        float* k_dst, float* v_dst, int64_t* seg_dst) {
  constexpr const char* op = "rope_qk_append";
  TESSERA_CHECK(Dh > 0 && Dh % 2 == 0, op, ": head dimension must be positive and even, got ", Dh);
  TESSERA_CHECK(Hq > 0 && Hk > 0 && vw > 0, op, ": heads and widths must be positive, got ", Hq, ", ", Hk,
                ", ", vw);
  TESSERA_CHECK(theta > 0, op, ": theta must be positive, got ", theta);
  TESSERA_CHECK(N >= 0, op, "(cuda): negative token count ", N);
  check_int_range(op, "heads", Hq + Hk);
  check_int_range(op, "Dh", Dh);
  if (N == 0) return;
  const int hq = static_cast<int>(Hq), hk = static_cast<int>(Hk), dh = static_cast<int>(Dh);
  const int groups = rope_head_groups(N, dh / 2, hq + hk);
  rope_qk_append_kernel<<<stride_blocks(N * (groups * (Dh / 2) + vw + 1)), kThreads>>>(
      q, k, v, positions, N, hq, hk, dh, vw, theta, interleaved, groups, k_dst, v_dst, seg_dst);
  TESSERA_CUDA_CHECK_LAUNCH("rope_qk_append_kernel");
}

}  // namespace tessera::cuda_detail
