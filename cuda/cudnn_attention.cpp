// cuDNN's fused attention for the bf16 attention ops (see cudnn_attention.hpp): the library is opened at run
// time and the SDPA operation graphs are built with cuDNN's backend API (tensor, pointwise, reduction, matmul
// and reshape descriptors, an operation graph, heuristics, an execution plan), once per shape and thread, and
// kept. The graphs are the ones cuDNN's fused flash-attention engines are written for (the decomposition that
// NVIDIA's cudnn-frontend emits for SDPA with a causal mask):
//
//   forward:  S = Q K^T; S *= scale; S = (row >= col) ? S : -inf (a sliding window of W keys also:
//             (col + W > row) ? S : -inf); M = rowmax S; E = exp(S - M);
//             Z = rowsum E; stats = M + log Z (= lse); P = E / Z (bf16); O = P V.
//   backward: Dsum = rowsum(dO * O) (fp32, written to a buffer the engine reads back); S as above, then
//             P = exp(S - stats) (masked to -inf before the exp); dV = P^T dO (P^T in bf16);
//             dP = dO V^T; dS = P (dP - Dsum) scale; dK = dS^T Q (dS^T in bf16); dQ = dS K.
//
// Tensors are [b, h, s, d] with explicit strides, so tessera's token-major rows ([B, T, H, D] with a token
// stride: fused q/k/v buffers included) are described in place; K and V enter the products transposed by
// their strides alone. Scalars (the scale, -inf, 1) are passed by value at execution.
#include "cudnn_attention.hpp"

#include <dlfcn.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "env_choice.hpp"
#include "scratch.cuh"
#include "tessera/core/error.hpp"

// (Under tools/cuda-emu, whose emulated runtime replaces CUDA's headers, cuDNN's header cannot be used.)
#if __has_include(<cudnn_graph.h>) && !defined(TESSERA_CUDA_EMU)
#include <cudnn_graph.h>  // types and enums only: every function is resolved from the library at run time
#define TESSERA_CUDNN_HEADERS 1
#else
#define TESSERA_CUDNN_HEADERS 0
#endif

namespace tessera::cuda_detail {

namespace {

EnvChoice<AttnBf16Backend, parse_attention_bf16_backend> g_backend{"TESSERA_ATTN_BF16_BACKEND"};
thread_local AttnBf16Backend t_last_backend = AttnBf16Backend::Auto;
thread_local std::string t_last_error;
std::atomic<int64_t> g_calls[2] = {0, 0};  // Tessera, Cudnn
std::atomic<int> g_deterministic{-1};      // -1: the environment's choice

}  // namespace

AttnBf16Backend parse_attention_bf16_backend(const char* value) {
  static constexpr EnvName<AttnBf16Backend> kNames[] = {{"auto", AttnBf16Backend::ByLength},
                                                        {"tessera", AttnBf16Backend::Tessera},
                                                        {"cudnn", AttnBf16Backend::Cudnn}};
  return parse_env_choice("TESSERA_ATTN_BF16_BACKEND", value, AttnBf16Backend::ByLength, kNames);
}

void set_attention_bf16_backend(AttnBf16Backend b) {
  g_backend.set(b);
}

AttnBf16Backend attention_bf16_backend() {
  return g_backend.get();
}

bool cudnn_attention_chosen(const AttnArgs& a) {
  switch (attention_bf16_backend()) {
    case AttnBf16Backend::Cudnn:
      return true;
    case AttnBf16Backend::ByLength:
      return a.Tk >= kCudnnMinKeys;
    default:
      return false;
  }
}

void set_cudnn_attention_deterministic(int deterministic) {
  g_deterministic.store(deterministic);
}

bool cudnn_attention_deterministic() {
  const int d = g_deterministic.load();
  if (d >= 0) return d != 0;
  static constexpr EnvName<bool> kNames[] = {{"1", true}, {"0", false}};
  static const bool from_env = parse_env_choice(
      "TESSERA_CUDNN_ATTN_DETERMINISTIC", std::getenv("TESSERA_CUDNN_ATTN_DETERMINISTIC"), true, kNames);
  return from_env;
}

AttnBf16Backend last_attention_bf16_backend() {
  return t_last_backend;
}

void note_attention_bf16_backend(AttnBf16Backend b) {
  t_last_backend = b;
  g_calls[b == AttnBf16Backend::Cudnn ? 1 : 0].fetch_add(1);
}

int64_t attention_bf16_calls(AttnBf16Backend b) {
  return b == AttnBf16Backend::Cudnn     ? g_calls[1].load()
         : b == AttnBf16Backend::Tessera ? g_calls[0].load()
                                         : 0;
}

AttnArgs as_cudnn_call(AttnArgs a) {
  if (a.mask == AttnMask::SlidingWindow && a.mask_param >= a.Tk) {
    a.mask = AttnMask::Causal;
    a.mask_param = 0;
  }
  return a;
}

std::string last_cudnn_attention_error() {
  return t_last_error;
}

std::string cudnn_attention_unsupported(const AttnArgs& a, [[maybe_unused]] bool backward,
                                        const void* const* ptrs, int n_ptrs) {
  if (a.mask != AttnMask::Causal && a.mask != AttnMask::SlidingWindow)
    return "mask is neither causal nor a sliding window (cuDNN graphs here: those two)";
  if (a.mask == AttnMask::SlidingWindow && a.mask_param < a.Tk && a.mask_param > kMaxExactWindow)
    return str("sliding window of ", a.mask_param, " keys (cuDNN graphs here: up to 2^24, exact in fp32)");
  if (a.q_offset != 0 || a.Tq != a.Tk)
    return str("causal with q_offset ", a.q_offset, ", Tq ", a.Tq, ", Tk ", a.Tk,
               " (cuDNN graphs here: q_offset 0 and Tq == Tk)");
  if (a.B < 1 || a.Tq < 1) return "empty call";
  if (a.Dh != a.Dv || a.Dh % 8 != 0 || a.Dh > 128)
    return str("head dims Dh ", a.Dh, ", Dv ", a.Dv,
               " (cuDNN graphs here: Dh == Dv, a multiple of 8 up to 128)");
  if (a.q_stride % 8 != 0 || a.k_stride % 8 != 0 || a.v_stride % 8 != 0 || a.o_stride % 8 != 0)
    return "token strides not multiples of 8 elements";
  for (int i = 0; i < n_ptrs; ++i)
    if (reinterpret_cast<uintptr_t>(ptrs[i]) % 16 != 0) return "a tensor is not 16-byte aligned";
  return "";
}

#if TESSERA_CUDNN_HEADERS

namespace {

/// The functions used, resolved from libcudnn.so.9.
struct CudnnApi {
  decltype(&cudnnGetVersion) get_version = nullptr;
  decltype(&cudnnCreate) create = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnGetLastErrorString) last_error_string = nullptr;
  decltype(&cudnnBackendCreateDescriptor) create_desc = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy_desc = nullptr;
  decltype(&cudnnBackendSetAttribute) set_attr = nullptr;
  decltype(&cudnnBackendGetAttribute) get_attr = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  std::string error;  // why the library is unusable ("" when loaded)
  int64_t version = 0;
};

/// The library, loaded once per process: TESSERA_CUDNN_LIBRARY if set, else libcudnn.so.9 from the loader's
/// path, else the CUDA toolkit's lib64.
const CudnnApi& api() {
  static const CudnnApi a = [] {
    CudnnApi r;
    std::vector<std::string> names;
    if (const char* env = std::getenv("TESSERA_CUDNN_LIBRARY"); env && *env) names.emplace_back(env);
    names.emplace_back("libcudnn.so.9");
    names.emplace_back("/usr/local/cuda/lib64/libcudnn.so.9");
    void* lib = nullptr;
    std::string tried;
    for (const auto& n : names) {
      lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      const char* why = dlerror();
      tried += str(tried.empty() ? "" : "; ", n, ": ", why ? why : "not found");
    }
    if (!lib) {
      r.error = str("cuDNN not loaded (", tried, ")");
      return r;
    }
    bool ok = true;
    std::string missing;
    auto bind = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) {
        ok = false;
        missing += str(missing.empty() ? "" : ", ", name);
      }
    };
    bind(r.get_version, "cudnnGetVersion");
    bind(r.create, "cudnnCreate");
    bind(r.set_stream, "cudnnSetStream");
    bind(r.error_string, "cudnnGetErrorString");
    bind(r.last_error_string, "cudnnGetLastErrorString");
    bind(r.create_desc, "cudnnBackendCreateDescriptor");
    bind(r.destroy_desc, "cudnnBackendDestroyDescriptor");
    bind(r.set_attr, "cudnnBackendSetAttribute");
    bind(r.get_attr, "cudnnBackendGetAttribute");
    bind(r.finalize, "cudnnBackendFinalize");
    bind(r.execute, "cudnnBackendExecute");
    if (!ok) {
      r.error = str("cuDNN library lacks ", missing);
      return r;
    }
    r.version = static_cast<int64_t>(r.get_version());
    if (r.version < 90000) r.error = str("cuDNN ", r.version, " is older than 9.0");
    return r;
  }();
  return a;
}

/// A failed cuDNN call: the call, its status and cuDNN's own last message.
struct CudnnFailure {
  std::string what;
};

void check(cudnnStatus_t s, const char* what) {
  if (s == CUDNN_STATUS_SUCCESS) return;
  char msg[512] = {0};
  api().last_error_string(msg, sizeof(msg));
  throw CudnnFailure{str(what, ": ", api().error_string(s), msg[0] ? str(" (", msg, ")") : std::string())};
}

/// An owned backend descriptor.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t type, const char* what) : what_(what) {
    check(api().create_desc(type, &d_), what);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)), what_(o.what_) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    what_ = o.what_;
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  ~Desc() {
    if (d_) api().destroy_desc(d_);
  }
  cudnnBackendDescriptor_t get() const { return d_; }

  template <class T>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T& value) {
    check(api().set_attr(d_, name, type, 1, &value), what_);
    return *this;
  }
  Desc& set_many(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n,
                 const void* v) {
    check(api().set_attr(d_, name, type, n, v), what_);
    return *this;
  }
  Desc& desc(cudnnBackendAttributeName_t name, const Desc& other) {
    cudnnBackendDescriptor_t o = other.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, o);
  }
  Desc& finalize() {
    check(api().finalize(d_), what_);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  const char* what_ = "cuDNN descriptor";
};

using Dims = std::array<int64_t, 4>;

/// The dims and strides of a [b, h, s, d] tensor.
struct Layout {
  Dims dims, strides;
};

/// The descriptors of one operation graph under construction, kept alive with the plan built from it.
class GraphBuilder {
 public:
  /// A tensor: real (a variant-pack pointer), by value (a host scalar) or virtual (inside the fused graph).
  const Desc& tensor(int64_t uid, cudnnDataType_t type, Dims dims, Dims strides, bool is_virtual,
                     bool by_value = false) {
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "cuDNN tensor descriptor");
    const int64_t alignment = 16;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, type)
        .set_many(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
        .set_many(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, alignment);
    if (is_virtual) t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, true);
    if (by_value) t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, true);
    t.finalize();
    keep_.push_back(std::move(t));
    return keep_.back();
  }
  /// A virtual tensor with a fresh uid.
  const Desc& temp(cudnnDataType_t type, Dims dims, Dims strides) {
    return tensor(next_uid_++, type, dims, strides, true);
  }
  /// A by-value fp32 scalar.
  const Desc& scalar(int64_t uid) {
    return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }
  /// A new virtual tensor of `type` and layout `l` holding mode(x[, b[, t]]), computed in `prec`.
  const Desc& apply(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, cudnnDataType_t type, Layout l,
                    cudnnDataType_t prec = CUDNN_DATA_FLOAT, const Desc* t = nullptr, int64_t axis = -1) {
    const Desc& y = temp(type, l.dims, l.strides);
    pointwise(mode, prec, x, b, y, t, axis);
    return y;
  }
  /// A new virtual tensor (type, layout) holding a b, or reduce(x).
  const Desc& product(const Desc& a, const Desc& b, cudnnDataType_t type, Layout l) {
    const Desc& c = temp(type, l.dims, l.strides);
    matmul(a, b, c);
    return c;
  }
  const Desc& reduced(cudnnReduceTensorOp_t mode, const Desc& x, Layout l) {
    const Desc& y = temp(CUDNN_DATA_FLOAT, l.dims, l.strides);
    reduction(mode, x, y);
    return y;
  }

  /// y = mode(x[, b[, t]]) elementwise (broadcasting b); `prec` is the computation's type; GEN_INDEX takes
  /// the axis.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, const Desc& x, const Desc* b, const Desc& y,
                 const Desc* t = nullptr, int64_t axis = -1) {
    Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "cuDNN pointwise descriptor");
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, mode)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, prec);
    if (axis >= 0) pw.set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, axis);
    pw.finalize();
    Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "cuDNN pointwise operation");
    const float one = 1.f;
    op.desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw).desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) op.desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    if (t) op.desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t);
    op.desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y)
        .set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, one)
        .set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, one)
        .finalize();
    keep_.push_back(std::move(pw));
    add_op(std::move(op));
  }
  /// c = a b over the last two dims (batched over the first two; fp32 accumulation).
  void matmul(const Desc& a, const Desc& b, const Desc& c) {
    Desc mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "cuDNN matmul descriptor");
    mm.set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT).finalize();
    Desc op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "cuDNN matmul operation");
    op.desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm)
        .finalize();
    keep_.push_back(std::move(mm));
    add_op(std::move(op));
  }
  /// y = reduce(x) over the dims where y has extent 1 (fp32).
  void reduction(cudnnReduceTensorOp_t mode, const Desc& x, const Desc& y) {
    Desc red(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "cuDNN reduction descriptor");
    red.set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT)
        .set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, mode)
        .finalize();
    Desc op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "cuDNN reduction operation");
    op.desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, red)
        .desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)
        .desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)
        .finalize();
    keep_.push_back(std::move(red));
    add_op(std::move(op));
  }
  /// y = x viewed through y's dims and strides (a transpose of the last two dims here).
  void reshape(const Desc& x, const Desc& y) {
    Desc op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "cuDNN reshape operation");
    op.desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x).desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y).finalize();
    add_op(std::move(op));
  }

  /// The operation graph, the heuristics' engine configurations (mode A, then the fallback list) and the
  /// first execution plan that finalizes. Throws CudnnFailure naming what rejected the graph.
  /// Device-less (`handle` null, `device` a finalized device-properties descriptor): the same, for the GPU
  /// that descriptor describes, without one (cuDNN 9.8 and later); the plan cannot run.
  void build(cudnnHandle_t handle, const Desc* device = nullptr) {
    std::vector<cudnnBackendDescriptor_t> ops;
    for (const auto& o : ops_) ops.push_back(o.get());
    Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "cuDNN operation graph");
    if (handle) graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, handle);
    graph
        .set_many(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                  static_cast<int64_t>(ops.size()), ops.data())
        .finalize();
    std::string rejected;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      std::vector<Desc> cfgs;
      try {
        Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "cuDNN engine heuristics");
        heur.desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
            .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, mode);
        if (device) heur.desc(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, *device);
        heur.finalize();
        int64_t count = 0;
        check(api().get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                             &count, nullptr),
              "cuDNN heuristics result count");
        if (count <= 0) {
          rejected += str(rejected.empty() ? "" : "; ", "heuristics mode ", int(mode), ": no engine");
          continue;
        }
        std::vector<cudnnBackendDescriptor_t> raw;
        for (int64_t i = 0; i < count; ++i) {
          cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "cuDNN engine configuration");
          raw.push_back(cfgs.back().get());
        }
        int64_t got = 0;
        check(api().get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                             &got, raw.data()),
              "cuDNN heuristics results");
        cfgs.resize(static_cast<size_t>(got));
        if (got <= 0)
          rejected += str(rejected.empty() ? "" : "; ", "heuristics mode ", int(mode), ": ", count,
                          " engine(s) announced, none returned");
      } catch (const CudnnFailure& f) {
        rejected += str(rejected.empty() ? "" : "; ", f.what);
        continue;
      }
      for (auto& cfg : cfgs) {
        try {
          Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "cuDNN execution plan");
          if (handle) plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, handle);
          plan.desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg).finalize();
          int64_t ws = 0, n = 0;
          check(api().get_attr(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                               &ws),
                "cuDNN plan workspace size");
          workspace_ = ws;
          plan_ = std::move(plan);
          keep_.push_back(std::move(cfg));
          keep_.push_back(std::move(graph));
          return;
        } catch (const CudnnFailure& f) {
          rejected += str(rejected.empty() ? "" : "; ", f.what);
        }
      }
    }
    throw CudnnFailure{str("no cuDNN engine runs this attention graph (", rejected, ")")};
  }

  const Desc& plan() const { return plan_; }
  int64_t workspace() const { return workspace_; }

 private:
  void add_op(Desc op) { ops_.push_back(std::move(op)); }

  std::deque<Desc> keep_;  // tensors, op descriptors: alive as long as the plan (a deque: stable references)
  std::deque<Desc> ops_;
  Desc plan_;
  int64_t workspace_ = 0;
  int64_t next_uid_ = 1000;
};

// Variant-pack uids of the real and by-value tensors.
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kDO,
  kDQ,
  kDK,
  kDV,
  kDsum,
  kDqAcc,
  kScale,
  kNegInf,
  kOne,
  kWindow,
};

Dims bhsd(int64_t B, int64_t H, int64_t T, int64_t D) {
  return {B, H, T, D};
}
/// Strides of [b, h, s, d] over token-major rows: token stride `ts`, head width `d`.
Dims rows(int64_t T, int64_t ts, int64_t d) {
  return {T * ts, d, ts, 1};
}
/// ... and of the transposed view [b, h, d, s].
Dims rows_t(int64_t T, int64_t ts, int64_t d) {
  return {T * ts, d, 1, ts};
}
/// The scores [B, Hq, T, T] and per-row values [B, Hq, T, 1] (lse, rowsums) inside the graphs.
Layout scores(const AttnArgs& a) {
  return {{a.B, a.Hq, a.Tq, a.Tq}, {a.Hq * a.Tq * a.Tq, a.Tq * a.Tq, a.Tq, 1}};
}
Layout row_values(const AttnArgs& a) {
  return {{a.B, a.Hq, a.Tq, 1}, {a.Hq * a.Tq, a.Tq, 1, 1}};
}

/// The score positions of `s` along `axis` (2: the query's row, 3: the key's column), as int32.
const Desc& position(GraphBuilder& g, const Desc& s, int64_t axis, Layout l) {
  return g.apply(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, CUDNN_DATA_INT32, l, CUDNN_DATA_FLOAT, nullptr, axis);
}

/// keep ? s : -inf.
const Desc& masked(GraphBuilder& g, const Desc& s, const Desc& neg_inf, const Desc& keep, Layout l) {
  return g.apply(CUDNN_POINTWISE_BINARY_SELECT, s, &neg_inf, CUDNN_DATA_FLOAT, l, CUDNN_DATA_FLOAT, &keep);
}

/// The call's mask on the scores s ([B, H, T, T] fp32): causal, (row >= col) ? s : -inf; for a sliding window
/// of W keys also its left edge, (col + W > row) ? s : -inf (W a by-value fp32 scalar: exact below 2^24).
/// Each edge takes its own positions, as cuDNN's frontend builds the two.
const Desc& apply_mask(GraphBuilder& g, const AttnArgs& a, const Desc& s, const Desc& neg_inf, Layout l) {
  const Desc& row = position(g, s, 2, l);
  const Desc& col = position(g, s, 3, l);
  const Desc& c =
      masked(g, s, neg_inf,
             g.apply(CUDNN_POINTWISE_CMP_GE, row, &col, CUDNN_DATA_BOOLEAN, l, CUDNN_DATA_BOOLEAN), l);
  if (a.mask != AttnMask::SlidingWindow) return c;
  const Desc& w = g.scalar(kWindow);
  const Desc& wrow = position(g, c, 2, l);
  const Desc& wcol = position(g, c, 3, l);
  const Desc& colw =
      g.apply(CUDNN_POINTWISE_ADD, wcol, &w, CUDNN_DATA_FLOAT, l, CUDNN_DATA_FLOAT, nullptr, 3);
  return masked(g, c, neg_inf,
                g.apply(CUDNN_POINTWISE_CMP_GT, colw, &wrow, CUDNN_DATA_BOOLEAN, l, CUDNN_DATA_BOOLEAN), l);
}

/// The forward's operations; with a handle, also its plan (without one: only the descriptors, which cuDNN
/// checks without a device).
std::unique_ptr<GraphBuilder> build_forward(cudnnHandle_t handle, const AttnArgs& a) {
  auto g = std::make_unique<GraphBuilder>();
  const int64_t B = a.B, H = a.Hq, Hk = a.Hkv, T = a.Tq;
  const Desc& q = g->tensor(kQ, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dh), rows(T, a.q_stride, a.Dh), false);
  const Desc& kt = g->tensor(kK, CUDNN_DATA_BFLOAT16, {B, Hk, a.Dh, T}, rows_t(T, a.k_stride, a.Dh), false);
  const Desc& v = g->tensor(kV, CUDNN_DATA_BFLOAT16, bhsd(B, Hk, T, a.Dv), rows(T, a.v_stride, a.Dv), false);
  const Desc& o = g->tensor(kO, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dv), rows(T, a.o_stride, a.Dv), false);
  const Layout sl = scores(a), rl = row_values(a);
  const Desc& stats = g->tensor(kStats, CUDNN_DATA_FLOAT, rl.dims, rl.strides, false);
  const Desc& scale = g->scalar(kScale);
  const Desc& neg_inf = g->scalar(kNegInf);

  constexpr cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  const Desc& s = g->apply(CUDNN_POINTWISE_MUL, g->product(q, kt, f32, sl), &scale, f32, sl);
  const Desc& sm = apply_mask(*g, a, s, neg_inf, sl);
  const Desc& mx = g->reduced(CUDNN_REDUCE_TENSOR_MAX, sm, rl);
  const Desc& e =
      g->apply(CUDNN_POINTWISE_EXP, g->apply(CUDNN_POINTWISE_SUB, sm, &mx, f32, sl), nullptr, f32, sl);
  const Desc& z = g->reduced(CUDNN_REDUCE_TENSOR_ADD, e, rl);
  g->pointwise(CUDNN_POINTWISE_ADD, f32, mx, &g->apply(CUDNN_POINTWISE_LOG, z, nullptr, f32, rl), stats);
  const Desc& p = g->apply(CUDNN_POINTWISE_DIV, e, &z, CUDNN_DATA_BFLOAT16, sl);  // P enters P V as bf16
  g->matmul(p, v, o);
  if (handle) g->build(handle);
  return g;
}

/// The backward's operations; with a handle, also its plan.
std::unique_ptr<GraphBuilder> build_backward(cudnnHandle_t handle, const AttnArgs& a, bool deterministic) {
  auto g = std::make_unique<GraphBuilder>();
  const int64_t B = a.B, H = a.Hq, Hk = a.Hkv, T = a.Tq;
  const bool gqa = Hk != H;
  const Desc& q = g->tensor(kQ, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dh), rows(T, a.q_stride, a.Dh), false);
  const Desc& kt = g->tensor(kK, CUDNN_DATA_BFLOAT16, {B, Hk, a.Dh, T}, rows_t(T, a.k_stride, a.Dh), false);
  const Desc& vt = g->tensor(kV, CUDNN_DATA_BFLOAT16, {B, Hk, a.Dv, T}, rows_t(T, a.v_stride, a.Dv), false);
  const Desc& o = g->tensor(kO, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dv), rows(T, a.o_stride, a.Dv), false);
  const Desc& dout =
      g->tensor(kDO, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dv), rows(T, a.o_stride, a.Dv), false);
  const Layout sl = scores(a), rl = row_values(a);
  const Desc& stats = g->tensor(kStats, CUDNN_DATA_FLOAT, rl.dims, rl.strides, false);
  const Desc& dq = g->tensor(kDQ, CUDNN_DATA_BFLOAT16, bhsd(B, H, T, a.Dh), rows(T, a.q_stride, a.Dh), false);
  const Desc& dk =
      g->tensor(kDK, CUDNN_DATA_BFLOAT16, bhsd(B, Hk, T, a.Dh), rows(T, a.k_stride, a.Dh), false);
  const Desc& dv =
      g->tensor(kDV, CUDNN_DATA_BFLOAT16, bhsd(B, Hk, T, a.Dv), rows(T, a.v_stride, a.Dv), false);
  // GQA: dK and dV per query head ([B, Hq, T, D], rounded to bf16 inside the graph as cuDNN's frontend builds
  // it), then summed over each group in fp32 and rounded once more.
  auto per_query_head = [&](const Desc& out, int64_t D, auto&& product) {
    if (!gqa) return product(out);
    const Desc& full = g->temp(CUDNN_DATA_BFLOAT16, bhsd(B, H, T, D), {H * T * D, T * D, D, 1});
    product(full);
    g->reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
  };
  const Desc& dsum = g->tensor(kDsum, CUDNN_DATA_FLOAT, rl.dims, rl.strides, false);  // rowsum(dO * O): ours
  const Desc& scale = g->scalar(kScale);
  const Desc& neg_inf = g->scalar(kNegInf);
  const Desc& one = g->scalar(kOne);

  constexpr cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
  // Dsum = rowsum(dO * O).
  const Layout ol{bhsd(B, H, T, a.Dv), {H * T * a.Dv, T * a.Dv, H * a.Dv, 1}};
  const Desc& rsum =
      g->reduced(CUDNN_REDUCE_TENSOR_ADD, g->apply(CUDNN_POINTWISE_MUL, dout, &o, f32, ol), rl);
  g->pointwise(CUDNN_POINTWISE_MUL, f32, rsum, &one, dsum);

  // P = exp(scale Q K^T - stats), masked.
  const Layout tl{sl.dims, {H * T * T, T * T, 1, T}};  // the transposed view [b, h, key, query]
  const Desc& s = g->apply(CUDNN_POINTWISE_MUL, g->product(q, kt, f32, sl), &scale, f32, sl);
  const Desc& sm = apply_mask(*g, a, g->apply(CUDNN_POINTWISE_SUB, s, &stats, f32, sl), neg_inf, sl);
  const Desc& p = g->apply(CUDNN_POINTWISE_EXP, sm, nullptr, f32, sl);

  // dV = P^T dO.
  const Desc& pt = g->temp(CUDNN_DATA_BFLOAT16, tl.dims, tl.strides);
  g->reshape(p, pt);
  per_query_head(dv, a.Dv, [&](const Desc& out) { g->matmul(pt, dout, out); });

  // dS = P (dO V^T - Dsum) scale.
  const Desc& dp = g->apply(CUDNN_POINTWISE_SUB, g->product(dout, vt, f32, sl), &dsum, f32, sl);
  const Desc& ds =
      g->apply(CUDNN_POINTWISE_MUL, g->apply(CUDNN_POINTWISE_MUL, dp, &p, f32, sl), &scale, f32, sl);

  // dK = dS^T Q.
  const Desc& dst = g->temp(CUDNN_DATA_BFLOAT16, tl.dims, tl.strides);
  g->reshape(ds, dst);
  per_query_head(dk, a.Dh, [&](const Desc& out) { g->matmul(dst, q, out); });

  // dQ = dS K (K as [b, h, key, d] again, by a reshape of K^T). Deterministic: written directly (cuDNN keeps
  // dP in its workspace and gives every dq element one owner). Otherwise through an fp32 accumulator that
  // cuDNN's kernels add into (atomics: the sum order, hence the rounding, varies between runs).
  const Desc& k = g->temp(CUDNN_DATA_BFLOAT16, bhsd(B, Hk, T, a.Dh), rows(T, a.k_stride, a.Dh));
  g->reshape(kt, k);
  if (deterministic) {
    g->matmul(ds, k, dq);
  } else {
    const Desc& acc =
        g->tensor(kDqAcc, CUDNN_DATA_FLOAT, bhsd(B, H, T, a.Dh), {H * T * a.Dh, T * a.Dh, a.Dh, 1}, false);
    g->matmul(ds, k, acc);
    g->pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, acc, nullptr, dq);
  }
  if (handle) g->build(handle);
  return g;
}

/// Per thread: a handle per device and the plans built (or refused) per call shape.
struct ThreadState {
  std::map<int, cudnnHandle_t> handles;
  std::map<std::vector<int64_t>, std::unique_ptr<GraphBuilder>> plans;
  std::map<std::vector<int64_t>, std::string> refused;
  std::map<std::vector<int64_t>, int> family_plans;  // plans built per family: the key without B, Tq, Tk
};

/// Plans one family (the same heads, head dims, strides, mask and direction; any B and T) may build. A
/// fused-attention plan compiles its kernel when it is built (about a second of CPU; cuDNN's SDPA backward
/// engines take no dynamic shapes), so inputs whose length changes at every step (BLT's patch counts) would
/// compile at every step: past this many lengths a family's new shapes run tessera's kernels.
constexpr int kPlansPerFamily = 8;

/// Never destroyed, like the handles: its plans hold cuDNN's compiled kernels, which must not be released
/// after the CUDA runtime has torn down its context at exit.
ThreadState& state() {
  thread_local ThreadState* s = new ThreadState;
  return *s;
}

/// The current device's handle on this thread (made on first use, bound to the legacy default stream that
/// tessera's kernels run on). Throws CudnnFailure.
cudnnHandle_t handle_for(int device) {
  auto& hs = state().handles;
  if (auto it = hs.find(device); it != hs.end()) return it->second;
  cudnnHandle_t h = nullptr;
  check(api().create(&h), "cudnnCreate");
  check(api().set_stream(h, nullptr), "cudnnSetStream");
  hs.emplace(device, h);
  return h;
}

int current_device() {
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

std::vector<int64_t> key_of(const AttnArgs& a, bool backward, bool deterministic, int device) {
  return {backward,   deterministic, device,     a.B,        a.Tq,
          a.Tk,       a.Hq,          a.Hkv,      a.Dh,       a.Dv,
          a.q_stride, a.k_stride,    a.v_stride, a.o_stride, static_cast<int64_t>(a.mask)};
}

/// The plan for this call, built on first use; nullptr (reason in t_last_error, printed once per shape when
/// cuDNN was asked for) when cuDNN cannot run it.
GraphBuilder* plan_for(const AttnArgs& a, bool backward, bool deterministic) {
  if (!api().error.empty()) {
    t_last_error = api().error;
    return nullptr;
  }
  const int device = current_device();
  const auto key = key_of(a, backward, deterministic, device);
  auto& st = state();
  if (auto it = st.plans.find(key); it != st.plans.end()) return it->second.get();
  if (auto it = st.refused.find(key); it != st.refused.end()) {
    t_last_error = it->second;
    return nullptr;
  }
  auto family = key;
  family[3] = family[4] = family[5] = 0;  // B, Tq, Tk
  if (st.family_plans[family] >= kPlansPerFamily) {
    const std::string why =
        str("cuDNN attention: ", kPlansPerFamily, " lengths of this shape family have plans already",
            " (each compiles its kernel); tessera's kernels run new lengths");
    if (st.refused.size() < 10000) st.refused.emplace(key, why);
    if (st.family_plans[family]++ == kPlansPerFamily) std::fprintf(stderr, "tessera: %s\n", why.c_str());
    t_last_error = why;
    return nullptr;
  }
  ++st.family_plans[family];  // attempts count: a graph the engines refuse costs its heuristics too
  try {
    cudnnHandle_t h = handle_for(device);
    auto g = backward ? build_backward(h, a, deterministic) : build_forward(h, a);
    return st.plans.emplace(key, std::move(g)).first->second.get();
  } catch (const CudnnFailure& f) {
    const char* what = !backward ? "forward" : deterministic ? "backward" : "backward (fp32 dq accumulator)";
    const std::string why = str("cuDNN attention ", what, " for B ", a.B, " T ", a.Tq, " H ", a.Hq, "/",
                                a.Hkv, " D ", a.Dh, "/", a.Dv, ": ", f.what);
    st.refused.emplace(key, why);
    std::fprintf(stderr, "tessera: %s; tessera's kernels run this shape\n", why.c_str());
    t_last_error = why;
    return nullptr;
  }
}

/// Execute `g` with the given (uid, pointer) pairs plus its scalars, on a workspace from tessera's allocator
/// (with the backward's Dsum buffer, `dsum_floats` > 0, carved from the same reservation); false, nothing
/// run, when that memory cannot be had or cuDNN fails.
bool execute(GraphBuilder& g, const AttnArgs& a, std::vector<std::pair<int64_t, void*>> ptrs,
             int64_t dsum_floats, int64_t dq_acc_floats) {
  const bool backward = dsum_floats > 0;
  float scale = static_cast<float>(a.scale), neg_inf = -std::numeric_limits<float>::infinity(), one = 1.f,
        window = static_cast<float>(a.mask_param);
  DeviceScratch scratch;
  const size_t ws_bytes = DeviceScratch::bytes_for<char>(g.workspace());
  const size_t bytes = ws_bytes + DeviceScratch::bytes_for<float>(dsum_floats) +
                       DeviceScratch::bytes_for<float>(dq_acc_floats);
  if (!scratch.try_reserve(bytes)) {  // tessera's kernels need far less: let them run the call
    t_last_error = str("cuDNN attention: its workspace of ", bytes, " bytes could not be allocated");
    return false;
  }
  void* ws = g.workspace() > 0 ? scratch.carve<char>(g.workspace()) : nullptr;
  if (dsum_floats > 0) ptrs.emplace_back(kDsum, scratch.carve<float>(dsum_floats));
  if (dq_acc_floats > 0) {  // cuDNN 9.6 and later initialise the accumulator themselves
    float* acc = scratch.carve<float>(dq_acc_floats);
    if (api().version < 90600)
      TESSERA_CUDA_CHECK(
          cudaMemsetAsync(acc, 0, static_cast<size_t>(dq_acc_floats) * sizeof(float), nullptr));
    ptrs.emplace_back(kDqAcc, acc);
  }
  ptrs.emplace_back(kScale, &scale);
  ptrs.emplace_back(kNegInf, &neg_inf);
  if (backward) ptrs.emplace_back(kOne, &one);
  if (a.mask == AttnMask::SlidingWindow) ptrs.emplace_back(kWindow, &window);
  std::vector<int64_t> uids;
  std::vector<void*> data;
  for (auto& [u, p] : ptrs) {
    uids.push_back(u);
    data.push_back(p);
  }
  try {
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "cuDNN variant pack");
    pack.set_many(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
                  uids.data())
        .set_many(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                  static_cast<int64_t>(data.size()), data.data())
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, ws)
        .finalize();
    check(api().execute(handle_for(current_device()), g.plan().get(), pack.get()), "cudnnBackendExecute");
  } catch (const CudnnFailure& f) {
    t_last_error = f.what;
    std::fprintf(stderr, "tessera: cuDNN attention failed at execution: %s\n", f.what.c_str());
    return false;
  }
  return true;
}

}  // namespace

std::string cudnn_unavailable_reason() {
  if (!api().error.empty()) return api().error;
  try {
    handle_for(current_device());
  } catch (const CudnnFailure& f) {
    return f.what;
  } catch (const Error& e) {  // no device (cudaGetDevice failed)
    return e.what();
  }
  return "";
}

int64_t cudnn_loaded_version() {
  return api().error.empty() ? api().version : 0;
}

std::string cudnn_device_properties_json() {
  if (!api().error.empty()) return "";
  try {
    Desc prop(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "cuDNN device properties");
    const int32_t device = current_device();
    prop.set(CUDNN_ATTR_DEVICEPROP_DEVICE_ID, CUDNN_TYPE_INT32, device).finalize();
    int64_t n = 0;
    check(api().get_attr(prop.get(), CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, 0, &n,
                         nullptr),
          "cuDNN device properties size");
    std::string json(static_cast<size_t>(n), '\0');
    check(api().get_attr(prop.get(), CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, n, &n,
                         json.data()),
          "cuDNN device properties");
    json.resize(static_cast<size_t>(n));
    while (!json.empty() && json.back() == '\0') json.pop_back();
    return json;
  } catch (const CudnnFailure&) {
    return "";
  }
}

std::string cudnn_attention_plan_check(const AttnArgs& call, bool backward, const std::string& device_json,
                                       int64_t* workspace) {
  const AttnArgs a = as_cudnn_call(call);
  if (!api().error.empty()) return api().error;
  if (std::string why = cudnn_attention_unsupported(a, backward, nullptr, 0); !why.empty()) return why;
  try {
    Desc device(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "cuDNN device properties");
    device
        .set_many(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                  static_cast<int64_t>(device_json.size()), device_json.data())
        .finalize();
    auto g =
        backward ? build_backward(nullptr, a, cudnn_attention_deterministic()) : build_forward(nullptr, a);
    g->build(nullptr, &device);
    if (workspace) *workspace = g->workspace();
  } catch (const CudnnFailure& f) {
    return f.what;
  }
  return "";
}

std::string cudnn_attention_graph_check(const AttnArgs& call, bool backward) {
  const AttnArgs a = as_cudnn_call(call);
  if (!api().error.empty()) return api().error;
  if (std::string why = cudnn_attention_unsupported(a, backward, nullptr, 0); !why.empty()) return why;
  try {
    (void)(backward ? build_backward(nullptr, a, true) : build_forward(nullptr, a));
    if (backward) (void)build_backward(nullptr, a, false);
  } catch (const CudnnFailure& f) {
    return f.what;
  }
  return "";
}

bool cudnn_attention_forward(const AttnArgs& call, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             uint16_t* o, float* lse) {
  const AttnArgs a = as_cudnn_call(call);
  // Every tensor, lse too: the graph declares 16-byte alignment for each (checked here, null lse: below).
  const void* ptrs[] = {q, k, v, o, lse};
  if (std::string why = cudnn_attention_unsupported(a, false, ptrs, 5); !why.empty()) {
    t_last_error = why;
    return false;
  }
  TESSERA_CHECK(lse != nullptr, "attention_forward(cuda, bf16, cuDNN): lse is null (cuDNN writes it)");
  GraphBuilder* g = plan_for(a, false, true);
  if (!g) return false;
  if (!execute(*g, a,
               {{kQ, const_cast<uint16_t*>(q)},
                {kK, const_cast<uint16_t*>(k)},
                {kV, const_cast<uint16_t*>(v)},
                {kO, o},
                {kStats, lse}},
               0, 0))
    return false;
  t_last_error.clear();
  return true;
}

bool cudnn_attention_backward(const AttnArgs& call, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                              uint16_t* dk, uint16_t* dv) {
  const AttnArgs a = as_cudnn_call(call);
  const void* ptrs[] = {q, k, v, o, dout, dq, dk, dv, lse};
  if (std::string why = cudnn_attention_unsupported(a, true, ptrs, 9); !why.empty()) {
    t_last_error = why;
    return false;
  }
  const bool det = cudnn_attention_deterministic();
  GraphBuilder* g = plan_for(a, true, det);
  if (!g) return false;
  if (!execute(*g, a,
               {{kQ, const_cast<uint16_t*>(q)},
                {kK, const_cast<uint16_t*>(k)},
                {kV, const_cast<uint16_t*>(v)},
                {kO, const_cast<uint16_t*>(o)},
                {kDO, const_cast<uint16_t*>(dout)},
                {kStats, const_cast<float*>(lse)},
                {kDQ, dq},
                {kDK, dk},
                {kDV, dv}},
               a.B * a.Hq * a.Tq, det ? 0 : a.B * a.Hq * a.Tq * a.Dh))
    return false;
  t_last_error.clear();
  return true;
}

#else  // no cuDNN headers at build time

std::string cudnn_unavailable_reason() {
  return "tessera was built without cuDNN's headers (cudnn_graph.h)";
}
int64_t cudnn_loaded_version() {
  return 0;
}
std::string cudnn_attention_graph_check(const AttnArgs&, bool) {
  return cudnn_unavailable_reason();
}
std::string cudnn_device_properties_json() {
  return "";
}
std::string cudnn_attention_plan_check(const AttnArgs&, bool, const std::string&, int64_t*) {
  return cudnn_unavailable_reason();
}
bool cudnn_attention_forward(const AttnArgs&, const uint16_t*, const uint16_t*, const uint16_t*, uint16_t*,
                             float*) {
  t_last_error = cudnn_unavailable_reason();
  return false;
}
bool cudnn_attention_backward(const AttnArgs&, const uint16_t*, const uint16_t*, const uint16_t*,
                              const uint16_t*, const float*, const uint16_t*, uint16_t*, uint16_t*,
                              uint16_t*) {
  t_last_error = cudnn_unavailable_reason();
  return false;
}

#endif

}  // namespace tessera::cuda_detail
