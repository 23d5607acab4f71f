// Internal to tessera::cuda: turn CUDA runtime / cuBLAS status codes into tessera::Error naming the call; the
// per-kernel profiler (TESSERA_CUDA_PROFILE=1) those checks feed; the shared-memory attribute helper.
#pragma once
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::cuda_detail {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw Error(
      str(call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":", line));
}
[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw Error(str(call, " failed: ", cublasGetStatusName(s), " (", cublasGetStatusString(s), ") at ", file,
                  ":", line));
}

// ---- TESSERA_CUDA_PROFILE=1: where the GPU time goes, per kernel ------------------------------------------
// Every checked kernel launch (TESSERA_CUDA_CHECK_LAUNCH) and cuBLAS call (TESSERA_CUBLAS_CHECK) then records
// a CUDA event on the default stream; the time between consecutive events is charged to the operation that
// ends the interval, so gaps (launch latency, host synchronisation, copies) count towards the next operation
// — exactly the per-operation cost of a launch-bound decoding loop. Events are folded every 4096 operations
// (one synchronisation) and a table sorted by total time goes to stderr at exit. Off (one branch per launch)
// unless the variable is set. TESSERA_CUDA_PROFILE=trace also prints each operation's name as it is issued
// (the sequence of launches of, say, one decoding step). A caller that names the phases of its work
// (phase_end: every operation since the previous phase_end belongs to this phase, e.g. BltModel::on_phase in
// blt_cuda_bench) gets a second table: per phase its total and its costliest operations.
class Profiler {
 public:
  static Profiler& get() {
    static Profiler p;
    return p;
  }
  bool on() const { return on_; }
  void mark(const char* name) {
    const std::lock_guard<std::mutex> lock(mu_);
    if (trace_) std::fprintf(stderr, "TESSERA_CUDA_TRACE %s\n", name);
    if (!started_) {
      started_ = true;
      prev_ = make_event();
      (void)cudaEventRecord(prev_, nullptr);
    }
    cudaEvent_t e = make_event();
    (void)cudaEventRecord(e, nullptr);
    pending_.push_back({name, e, static_cast<int64_t>(phases_.size())});
    if (pending_.size() >= 4096) fold();
  }
  /// The operations marked since the previous phase_end (or the start) belong to phase `name`.
  void phase_end(const char* name) {
    if (!on_) return;
    const std::lock_guard<std::mutex> lock(mu_);
    phases_.emplace_back(name);
  }
  /// Forget what was counted so far (e.g. warm-up steps, one-time algorithm tuning); the next operation
  /// starts a fresh interval.
  void restart() {
    if (!on_) return;
    const std::lock_guard<std::mutex> lock(mu_);
    fold();
    stats_.clear();
    by_phase_.clear();
    phases_.clear();
    count_ = 0;
    if (started_) free_.push_back(prev_);
    prev_ = nullptr;
    started_ = false;
  }
  ~Profiler() {
    if (!on_ || !started_) return;
    const std::lock_guard<std::mutex> lock(mu_);
    fold();
    struct Row {
      std::string name;
      Stat s;
    };
    std::vector<Row> rows;
    double total = 0;
    for (const auto& [n, st] : stats_) rows.push_back({n, st}), total += st.ms;
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.s.ms > b.s.ms; });
    std::fprintf(stderr, "TESSERA_CUDA_PROFILE: %.3f ms over %lld operations (gaps charged to the next one)\n",
                 total, static_cast<long long>(count_));
    std::fprintf(stderr, "%-48s %10s %12s %7s %10s\n", "operation", "calls", "total ms", "%", "mean us");
    for (const Row& r : rows)
      std::fprintf(stderr, "%-48.48s %10lld %12.3f %6.1f%% %10.2f\n", r.name.c_str(),
                   static_cast<long long>(r.s.calls), r.s.ms, total > 0 ? 100.0 * r.s.ms / total : 0.0,
                   r.s.calls ? 1e3 * r.s.ms / double(r.s.calls) : 0.0);
    print_phases();
    for (cudaEvent_t e : free_) (void)cudaEventDestroy(e);
    (void)cudaEventDestroy(prev_);
  }

 private:
  struct Stat {
    int64_t calls = 0;
    double ms = 0;
  };
  Profiler() {
    const char* v = std::getenv("TESSERA_CUDA_PROFILE");
    on_ = v && (v[0] == '1' || std::string_view(v) == "trace");
    trace_ = on_ && v[0] == 't';
  }
  cudaEvent_t make_event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    (void)cudaEventCreate(&e);
    return e;
  }
  void fold() {
    if (pending_.empty()) return;
    if (cudaEventSynchronize(pending_.back().e) != cudaSuccess) return;
    for (const Pending& op : pending_) {
      float ms = 0;
      (void)cudaEventElapsedTime(&ms, prev_, op.e);
      std::string key(op.name);
      if (const size_t paren = key.find('('); paren != std::string::npos) key.resize(paren);  // cuBLAS calls
      for (Stat* st : {&stats_[key], &by_phase_[op.phase][key]}) {
        ++st->calls;
        st->ms += ms;
      }
      ++count_;
      free_.push_back(prev_);
      prev_ = op.e;
    }
    pending_.clear();
  }
  /// Per named phase (phases of the same name merged, in order of first appearance): its total and its
  /// costliest operations. Operations after the last phase_end are "(after the last phase)".
  void print_phases() const {
    if (phases_.empty()) return;
    std::vector<std::string> order;
    std::map<std::string, std::map<std::string, Stat>> merged;
    for (const auto& [index, ops] : by_phase_) {
      const std::string name = index < static_cast<int64_t>(phases_.size())
                                   ? phases_[index]
                                   : std::string("(after the last phase)");
      if (!merged.count(name)) order.push_back(name);
      for (const auto& [op, st] : ops) {
        Stat& m = merged[name][op];
        m.calls += st.calls;
        m.ms += st.ms;
      }
    }
    std::fprintf(stderr, "TESSERA_CUDA_PROFILE by phase (the costliest operations of each):\n");
    for (const std::string& name : order) {
      std::vector<std::pair<std::string, Stat>> ops(merged[name].begin(), merged[name].end());
      std::sort(ops.begin(), ops.end(),
                [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
      double total = 0;
      for (const auto& [op, st] : ops) total += st.ms;
      std::fprintf(stderr, "phase %-42.42s %23.3f ms\n", name.c_str(), total);
      for (size_t i = 0; i < ops.size() && i < 8; ++i)
        std::fprintf(stderr, "  %-46.46s %10lld %12.3f %6.1f%% %10.2f\n", ops[i].first.c_str(),
                     static_cast<long long>(ops[i].second.calls), ops[i].second.ms,
                     total > 0 ? 100.0 * ops[i].second.ms / total : 0.0,
                     ops[i].second.calls ? 1e3 * ops[i].second.ms / double(ops[i].second.calls) : 0.0);
    }
  }
  bool on_ = false, trace_ = false, started_ = false;
  std::mutex mu_;
  cudaEvent_t prev_ = nullptr;
  struct Pending {
    const char* name;
    cudaEvent_t e;
    int64_t phase;  // index into phases_ (the phase is named when it ends)
  };
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  std::map<std::string, Stat> stats_;
  std::map<int64_t, std::map<std::string, Stat>> by_phase_;
  std::vector<std::string> phases_;
  int64_t count_ = 0;
};

inline void profile_mark(const char* name) {
  Profiler& p = Profiler::get();
  if (p.on()) p.mark(name);
}

}  // namespace tessera::cuda_detail

#define TESSERA_CUDA_CHECK(call)                                                   \
  do {                                                                             \
    const cudaError_t tessera_err_ = (call);                                       \
    if (tessera_err_ != cudaSuccess)                                               \
      ::tessera::cuda_detail::throw_cuda(tessera_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define TESSERA_CUBLAS_CHECK(call) TESSERA_CUBLAS_CHECK_AS(call, #call)

/// The same, with the name the profile gives the call (e.g. its operand type: fp32 and bf16 products go
/// through the same cuBLAS entry point).
#define TESSERA_CUBLAS_CHECK_AS(call, profile_name)                                 \
  do {                                                                              \
    const cublasStatus_t tessera_st_ = (call);                                      \
    if (tessera_st_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::tessera::cuda_detail::throw_cublas(tessera_st_, #call, __FILE__, __LINE__); \
    ::tessera::cuda_detail::profile_mark(profile_name);                             \
  } while (0)

/// After a kernel launch: report launch-configuration errors with the kernel's name.
#define TESSERA_CUDA_CHECK_LAUNCH(kernel_name)                                                        \
  do {                                                                                                \
    const cudaError_t tessera_err_ = cudaGetLastError();                                              \
    if (tessera_err_ != cudaSuccess)                                                                  \
      ::tessera::cuda_detail::throw_cuda(tessera_err_, "launch of " kernel_name, __FILE__, __LINE__); \
    ::tessera::cuda_detail::profile_mark(kernel_name);                                                \
  } while (0)

#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

namespace tessera::cuda_detail {

/// Raise a kernel's dynamic shared-memory limit to `bytes`, once per (kernel, device): the driver call costs
/// microseconds, which adds up when decoding launches attention kernels thousands of times per second.
inline void allow_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> raised;
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mu);
  size_t& have = raised[{kernel, dev}];
  if (have >= bytes) return;
  TESSERA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  have = bytes;
}

}  // namespace tessera::cuda_detail
