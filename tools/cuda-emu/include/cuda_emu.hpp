// CPU emulation of the CUDA built-ins used by tessera's kernels (cuda/*.cu, *.cuh), for checking kernel logic
// without a GPU. The launch model: one std::thread per CUDA thread of a block (the same threads are reused for
// every block), __syncthreads = a block-wide std::barrier, warp shuffles through a per-warp exchange array and a
// warp barrier. Blocks run one after another (EMU_REVERSE=1: in reverse order, so a result that depends on the
// block order shows up as a difference). Shared memory: `__shared__` becomes `static` (one copy per kernel
// instantiation, valid because blocks never overlap), dynamic shared memory is emu::smem, filled with NaN.
//
// Also here: the CUDA runtime calls the sources use (host malloc, memcpy, streams/events as no-ops),
// host shims of cub::DeviceScan / DeviceRadixSort / DeviceReduce, strict fakes of cub::BlockReduce and
// cub::WarpReduce (result only in thread/lane 0, as CUB documents), and a cuBLAS fake whose GEMMs abort.
// Forwarding headers with the real names (cuda_runtime_api.h, cub/..., cublas_v2.h) include this file.
#pragma once
// Sources that need their own emulated variant of device-only code (cuda/mma_sm80.cuh) test this macro.
#define TESSERA_CUDA_EMU 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------------------
// Launch model: thread / block indices, barriers, shuffles.
struct uint3_ {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local uint3_ threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)

namespace emu {
inline std::unique_ptr<std::barrier<>> block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
inline std::vector<unsigned long long> xch;  // [warps][32] raw 8-byte shuffle slots
inline thread_local int my_warp = 0, my_lane = 0;
inline std::vector<float> smem;  // dynamic shared memory of the running block
inline long long launches = 0;
// Host-visible CUDA traffic, for spotting per-step overheads (allocations, copies, synchronisations) in
// decoding loops; EMU_STATS=1 prints the totals at exit. Counted on the host thread(s) calling the runtime.
inline std::atomic<long long> n_malloc{0}, n_memcpy_h2d{0}, n_memcpy_d2h{0}, n_memcpy_d2d{0}, n_gemm{0},
    n_func_attr{0};

inline bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v && v[0] == '1';
}
// EMU_SKIP_KERNELS=1: launches and GEMMs are checked and counted but not run (results are garbage). What is
// left is the host side of the program — its own bookkeeping plus the runtime calls — to time and profile.
inline const bool skip_kernels = env_on("EMU_SKIP_KERNELS");

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "EMU: %s\n", what);
  std::abort();
}

// kernel<<<grid, block, smem_bytes, stream>>>(args) is rewritten to launch(grid, block, smem_bytes, [&]{...}).
template <class F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F&& body) {
  ++launches;
  const long long T = (long long)block.x * block.y * block.z;
  if (T < 1 || T > 1024 || block.z > 64 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u ||
      grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "EMU: bad launch config grid (%u,%u,%u) block (%u,%u,%u)\n", grid.x, grid.y, grid.z,
                 block.x, block.y, block.z);
    std::abort();
  }
  if (skip_kernels) return;
  const bool rev = env_on("EMU_REVERSE");
  gridDim = grid;
  blockDim = block;
  block_bar = std::make_unique<std::barrier<>>(T);
  const int warps = int((T + 31) / 32);
  warp_bar.clear();
  for (int w = 0; w < warps; ++w)
    warp_bar.push_back(std::make_unique<std::barrier<>>(std::min<long long>(32, T - 32 * w)));
  xch.assign(size_t(warps) * 32, 0);
  smem.assign(smem_bytes / sizeof(float) + 1, std::nanf(""));  // uninitialised shared memory reads as NaN
  const long long nb = (long long)grid.x * grid.y * grid.z;
  std::vector<std::thread> th;
  th.reserve(size_t(T));
  for (int t = 0; t < T; ++t)
    th.emplace_back([&, t] {
      threadIdx.x = t % block.x;
      threadIdx.y = (t / block.x) % block.y;
      threadIdx.z = t / (block.x * block.y);
      my_warp = t / 32;
      my_lane = t % 32;
      for (long long k = 0; k < nb; ++k) {
        const long long b = rev ? nb - 1 - k : k;
        blockIdx.x = unsigned(b % grid.x);
        blockIdx.y = unsigned((b / grid.x) % grid.y);
        blockIdx.z = unsigned(b / ((long long)grid.x * grid.y));
        body();
        block_bar->arrive_and_wait();  // the block is complete before the next one starts
      }
    });
  for (auto& x : th) x.join();
}
}  // namespace emu

inline void __syncthreads() { emu::block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_bar[emu::my_warp]->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T>
inline T __ldcg(const T* p) {  // a load that bypasses L1: plain here (one coherent memory)
  return *p;
}

// Full-warp shuffles only (every lane of the warp must take part, as the kernels' masks say).
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
  static_assert(sizeof(T) <= 8);
  unsigned long long* x = emu::xch.data() + emu::my_warp * 32;
  unsigned long long raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  x[emu::my_lane] = raw;
  emu::warp_bar[emu::my_warp]->arrive_and_wait();
  raw = x[src & 31];
  emu::warp_bar[emu::my_warp]->arrive_and_wait();
  T r;
  std::memcpy(&r, &raw, sizeof(T));
  return r;
}
// Warp vote over the full warp: nonzero iff any lane's predicate is.
inline int __any_sync(unsigned, int pred) {
  unsigned long long* x = emu::xch.data() + emu::my_warp * 32;
  x[emu::my_lane] = pred != 0;
  emu::warp_bar[emu::my_warp]->arrive_and_wait();
  int any = 0;
  for (int i = 0; i < 32; ++i) any |= x[i] != 0;
  emu::warp_bar[emu::my_warp]->arrive_and_wait();
  return any;
}
template <class T>
inline T __shfl_xor_sync(unsigned m, T v, int o) {
  return __shfl_sync(m, v, emu::my_lane ^ o);
}
template <class T>
inline T __shfl_down_sync(unsigned m, T v, unsigned d) {
  const int s = emu::my_lane + int(d);
  const T r = __shfl_sync(m, v, s & 31);
  return s < 32 ? r : v;
}
using std::max;
using std::min;
using std::isfinite;
using std::isnan;

// ---------------------------------------------------------------------------------------------------------
// Device intrinsics. The _rn forms go through volatile so that no FMA contraction can merge them.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
inline double __ddiv_rn(double a, double b) { volatile double r = a / b; return r; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// Atomics are real atomics: the threads of a block run concurrently.
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
template <class T>
inline T emu_atomic_max(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {}
  return old;
}
template <class T>
inline T emu_atomic_min(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {}
  return old;
}
inline int atomicMax(int* p, int v) { return emu_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return emu_atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return emu_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return emu_atomic_min(p, v); }
inline int atomicCAS(int* p, int cmp, int v) {
  std::atomic_ref<int>(*p).compare_exchange_strong(cmp, v);
  return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  std::atomic_ref<unsigned long long>(*p).compare_exchange_strong(cmp, v);
  return cmp;
}

// ---------------------------------------------------------------------------------------------------------
// CUDA runtime: host memory. Fresh allocations are filled with 0xFF bytes (NaN floats, -1 integers), so
// reads of memory nobody wrote show up in the results.
typedef int cudaError_t;
typedef struct EmuStream* cudaStream_t;
// The 16-byte vector types of vector_types.h that the kernels use.
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
typedef struct EmuEvent* cudaEvent_t;
enum : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation"
                                                                            : "cudaErrorInvalidValue";
}
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize();
// No memory accounting: an empty 80 GiB device (benchmark programs print the memory in use).
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  *free_b = *total_b = size_t(80) << 30;
  return cudaSuccess;
}
enum cudaDeviceAttr {
  cudaDevAttrMemoryPoolsSupported,
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrComputeCapabilityMajor
};
namespace emu {
inline const int pools = env_on("EMU_NOPOOLS") ? 0 : 1;  // EMU_NOPOOLS=1: exercise the cudaMalloc fallbacks
inline std::atomic<long long> live_async{0}, live_sync{0};
constexpr size_t kMaxAlloc = size_t(1) << 40;  // larger requests fail like an out-of-memory cudaMalloc
inline void* alloc(size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) fail("host malloc failed");
  // 0xFF bytes: NaN floats, -1 ints, so reads of memory nobody wrote show. With EMU_SKIP_KERNELS nobody
  // writes anything: 0x40 bytes read as 3.0 in fp32 and bf16 (finite logits; entropies above BLT's
  // threshold).
  std::memset(p, skip_kernels ? 0x40 : 0xFF, n);
  return p;
}
// Device allocations still live at exit are reported (a temp buffer that is never freed is a leak on a GPU).
inline struct AllocCheck {
  ~AllocCheck() {
    if (env_on("EMU_STATS"))
      std::fprintf(stderr,
                   "EMU stats: %lld kernel launches, %lld cuBLAS GEMMs, %lld device allocations, memcpy H2D %lld / "
                   "D2H %lld / D2D %lld, %lld cudaFuncSetAttribute\n",
                   launches, n_gemm.load(), n_malloc.load(), n_memcpy_h2d.load(), n_memcpy_d2h.load(),
                   n_memcpy_d2d.load(), n_func_attr.load());
    if (live_async != 0 || live_sync != 0)
      std::fprintf(stderr, "EMU: device allocations live at exit: async %lld, cudaMalloc %lld\n",
                   live_async.load(), live_sync.load());
  }
} alloc_check;
}  // namespace emu
// The SM count of an H100 SXM (132), so that launch heuristics take the same paths as there.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? 132 : a == cudaDevAttrComputeCapabilityMajor ? 9 : emu::pools;
  return cudaSuccess;
}
// cudaLaunchKernelEx with launch attributes (tessera sets only programmatic stream serialization, which has
// nothing to do here: kernels run one after the other anyway, and griddepcontrol is compiled out).
enum cudaLaunchAttributeID { cudaLaunchAttributeProgrammaticStreamSerialization = 6 };
struct cudaLaunchAttributeValue {
  int programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
template <class... Params, class... Args>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* c, void (*kernel)(Params...),
                                      Args&&... args) {
  for (unsigned i = 0; i < c->numAttrs; ++i)
    if (c->attrs[i].id != cudaLaunchAttributeProgrammaticStreamSerialization)
      emu::fail("cudaLaunchKernelEx: attribute");
  emu::launch(c->gridDim, c->blockDim, c->dynamicSmemBytes, [&] { kernel(std::forward<Args>(args)...); });
  return cudaSuccess;
}
inline cudaError_t cudaMalloc(void** p, size_t n) {
  if (n > emu::kMaxAlloc) { *p = nullptr; return cudaErrorMemoryAllocation; }
  *p = emu::alloc(n);
  ++emu::live_sync;
  ++emu::n_malloc;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (p) { std::free(p); --emu::live_sync; }
  return cudaSuccess;
}
// Only the legacy default stream exists in tessera: another stream is a bug.
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s) {
  if (s != nullptr) emu::fail("cudaMallocAsync on a non-default stream");
  if (!emu::pools) emu::fail("cudaMallocAsync without memory-pool support");
  if (n > emu::kMaxAlloc) { *p = nullptr; return cudaErrorMemoryAllocation; }
  *p = emu::alloc(n);
  ++emu::live_async;
  ++emu::n_malloc;
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (s != nullptr) emu::fail("cudaFreeAsync on a non-default stream");
  if (p) { std::free(p); --emu::live_async; }
  return cudaSuccess;
}
// The device's default memory pool (Allocator<cuda> raises its release threshold and trims it on OOM).
typedef struct EmuMemPool* cudaMemPool_t;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  static int the_pool = 0;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return emu::pools ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr, void* value) {
  return pool && value ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t) { return pool ? cudaSuccess : cudaErrorInvalidValue; }
// The typed overloads of cuda_runtime.h's C++ API.
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
template <class T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t s) { return cudaMallocAsync(reinterpret_cast<void**>(p), n, s); }
inline cudaError_t cudaMemset(void* p, int v, size_t n) { if (n) std::memset(p, v, n); return cudaSuccess; }
// Streams: work runs at once, except on a stream created with cudaStreamNonBlocking, whose memsets wait in
// its queue until something orders them before later work (cudaStreamWaitEvent on an event recorded there, a
// synchronisation, the stream's destruction): the latest point a GPU may run them. Code that uses such a
// stream's results without that ordering then reads what was there before, as it could on a GPU.
struct EmuStream {
  bool deferred = false;
  std::vector<std::function<void()>> queue;
  void flush() {
    auto q = std::move(queue);
    queue.clear();
    for (auto& f : q) f();
  }
};
struct EmuEvent {
  EmuStream* recorded_on = nullptr;
};
namespace emu {
inline std::vector<EmuStream*>& deferred_streams() {
  static std::vector<EmuStream*> v;
  return v;
}
inline void flush_all_streams() {
  for (EmuStream* s : deferred_streams()) s->flush();
}
}  // namespace emu
enum : unsigned { cudaStreamDefault = 0, cudaStreamNonBlocking = 1 };
enum : unsigned { cudaEventDefault = 0, cudaEventBlockingSync = 1, cudaEventDisableTiming = 2 };
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s = nullptr) {
  if (s && s->deferred) {
    s->queue.push_back([p, v, n] { (void)cudaMemset(p, v, n); });
    return cudaSuccess;
  }
  return cudaMemset(p, v, n);
}
enum cudaMemcpyKind {
  cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault
};
// EMU_TRACE=1: every copy and synchronisation call on stderr ("EMU_TRACE ..."), interleaved with
// TESSERA_CUDA_PROFILE=trace's launches: where a loop synchronises with the host.
inline bool emu_trace_on() {
  static const bool on = emu::env_on("EMU_TRACE");
  return on;
}
inline void emu_trace(const char* what, size_t n = 0) {
  if (emu_trace_on()) std::fprintf(stderr, "EMU_TRACE %s %zu\n", what, n);
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  emu_trace(k == cudaMemcpyHostToDevice   ? "memcpy_h2d"
            : k == cudaMemcpyDeviceToHost ? "memcpy_d2h"
                                          : "memcpy_other",
            n);
  if (k == cudaMemcpyHostToDevice) ++emu::n_memcpy_h2d;
  if (k == cudaMemcpyDeviceToHost) ++emu::n_memcpy_d2h;
  if (k == cudaMemcpyDeviceToDevice) ++emu::n_memcpy_d2d;
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, n, k);
}
inline cudaError_t cudaMemcpy2DAsync(void* d, size_t dpitch, const void* s, size_t spitch, size_t width,
                                     size_t height, cudaMemcpyKind k, cudaStream_t = nullptr) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
  for (size_t r = 0; r < height; ++r)
    (void)cudaMemcpy(static_cast<char*>(d) + r * dpitch, static_cast<const char*>(s) + r * spitch, width, k);
  return cudaSuccess;
}
// Streams and events: kernels run synchronously; only a non-blocking stream's memsets wait (see EmuStream).
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  *s = new EmuStream;
  (*s)->deferred = (flags & cudaStreamNonBlocking) != 0;
  if ((*s)->deferred) emu::deferred_streams().push_back(*s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidValue;
  s->flush();
  auto& v = emu::deferred_streams();
  v.erase(std::remove(v.begin(), v.end(), s), v.end());
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  emu_trace("stream_synchronize");
  if (s) s->flush();  // the legacy default stream's wait does not cover a non-blocking stream
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
  emu_trace("device_synchronize");
  emu::flush_all_streams();
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new EmuEvent;
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  return cudaEventCreateWithFlags(e, cudaEventDefault);
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  if (!e) return cudaErrorInvalidValue;
  e->recorded_on = s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned = 0) {
  if (!e) return cudaErrorInvalidValue;
  if (e->recorded_on) e->recorded_on->flush();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  emu_trace("event_synchronize");
  if (e && e->recorded_on) e->recorded_on->flush();
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) { *ms = 0.f; return cudaSuccess; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
// The opt-in limit of an H100 (227 KiB); the emulation itself does not bound shared memory.
template <class K>
cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int v) {
  ++emu::n_func_attr;
  return v < 0 || v > 232448 ? cudaErrorInvalidValue : cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// CUB. Block/warp primitives are strict: only thread/lane 0 gets the result (others get garbage), and the
// block reduction has no barrier after it (reusing TempStorage needs a __syncthreads, as with CUB; TSan
// reports a missing one). Device-wide algorithms are host shims with CUB's two-phase temp-storage query.
namespace cub {
template <class T>
struct WarpReduce {
  struct TempStorage {};
  explicit WarpReduce(TempStorage&) {}
  template <class Op>
  T Reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(~0u, v, o));
    return emu::my_lane == 0 ? v : T(-12345);
  }
  T Sum(T v) { return Reduce(v, [](T a, T b) { return a + b; }); }
};

template <class T, int N>
struct BlockReduce {
  struct TempStorage {
    T arr[N];
  };
  TempStorage& s;
  explicit BlockReduce(TempStorage& st) : s(st) {}
  static int tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
  template <class Op>
  T Reduce(T v, Op op) {
    if (int(blockDim.x * blockDim.y * blockDim.z) != N) emu::fail("cub::BlockReduce: block size != BLOCK_DIM_X");
    s.arr[tid()] = v;
    __syncthreads();
    if (tid() != 0) return T(-12345);
    T r = s.arr[0];
    for (int i = 1; i < N; ++i) r = op(r, s.arr[i]);
    return r;
  }
  T Sum(T v) { return Reduce(v, [](T a, T b) { return a + b; }); }
};

namespace emu_detail {
inline void check_call(void* temp, size_t bytes, size_t need, cudaStream_t stream, long long n, const char* who) {
  if (stream != nullptr || bytes < need || n < 0) {
    std::fprintf(stderr, "EMU: %s misuse (bytes %zu need %zu, n %lld, stream %p)\n", who, bytes, need, n,
                 (void*)stream);
    std::abort();
  }
  std::memset(temp, 0xAB, bytes);  // the real algorithm scribbles over its temp storage
}
}  // namespace emu_detail

struct DeviceScan {
  template <class In, class Out, class NumItemsT>
  static cudaError_t InclusiveSum(void* temp, size_t& bytes, In in, Out out, NumItemsT n, cudaStream_t stream = 0) {
    const size_t need = 1024;
    if (temp == nullptr) { bytes = need; return cudaSuccess; }
    emu_detail::check_call(temp, bytes, need, stream, (long long)n, "DeviceScan::InclusiveSum");
    if (n > 0) {
      auto acc = in[0];
      out[0] = acc;
      for (long long i = 1; i < (long long)n; ++i) { acc = acc + in[i]; out[i] = acc; }
    }
    return cudaSuccess;
  }
  template <class In, class Out, class NumItemsT>
  static cudaError_t ExclusiveSum(void* temp, size_t& bytes, In in, Out out, NumItemsT n, cudaStream_t stream = 0) {
    const size_t need = 1024;
    if (temp == nullptr) { bytes = need; return cudaSuccess; }
    emu_detail::check_call(temp, bytes, need, stream, (long long)n, "DeviceScan::ExclusiveSum");
    if (n > 0) {
      std::vector<std::remove_cvref_t<decltype(in[0])>> v(in, in + n);
      decltype(v[0] + v[0]) acc{};
      for (long long i = 0; i < (long long)n; ++i) { out[i] = acc; acc = acc + v[i]; }
    }
    return cudaSuccess;
  }
};

struct DeviceReduce {
  template <class In, class Out, class NumItemsT>
  static cudaError_t Sum(void* temp, size_t& bytes, In in, Out out, NumItemsT n, cudaStream_t stream = 0) {
    const size_t need = 512;
    if (temp == nullptr) { bytes = need; return cudaSuccess; }
    emu_detail::check_call(temp, bytes, need, stream, (long long)n, "DeviceReduce::Sum");
    std::remove_cvref_t<decltype(out[0])> acc{};
    for (long long i = 0; i < (long long)n; ++i) acc = acc + in[i];
    out[0] = acc;
    return cudaSuccess;
  }
  template <class In, class Out, class NumItemsT>
  static cudaError_t Max(void* temp, size_t& bytes, In in, Out out, NumItemsT n, cudaStream_t stream = 0) {
    const size_t need = 512;
    if (temp == nullptr) { bytes = need; return cudaSuccess; }
    emu_detail::check_call(temp, bytes, need, stream, (long long)n, "DeviceReduce::Max");
    if (n <= 0) emu::fail("DeviceReduce::Max of no items");
    auto acc = in[0];
    for (long long i = 1; i < (long long)n; ++i) acc = acc < in[i] ? in[i] : acc;
    out[0] = acc;
    return cudaSuccess;
  }
};

// SortPairs: a stable ascending sort by key bits [begin_bit, end_bit). Keys with bits outside that range abort
// (CUB would silently ignore them: a wrong end_bit is a real bug).
struct DeviceRadixSort {
  template <class K, class V, class NumItemsT>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, NumItemsT n,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t stream = 0) {
    const size_t need = 4096 + size_t(n) * 8;
    if (temp == nullptr) { bytes = need; return cudaSuccess; }
    if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit >= end_bit) emu::fail("SortPairs: bad bit range");
    emu_detail::check_call(temp, bytes, need, stream, (long long)n, "DeviceRadixSort::SortPairs");
    using U = unsigned long long;
    const U mask = (end_bit >= 64 ? ~U(0) : ((U(1) << end_bit) - 1)) & ~((U(1) << begin_bit) - 1);
    std::vector<long long> idx((size_t)n);
    std::iota(idx.begin(), idx.end(), 0);
    for (long long i = 0; i < (long long)n; ++i)
      if ((U(kin[i]) & ~mask) != 0) {
        std::fprintf(stderr, "EMU: SortPairs key %llu has bits outside [%d, %d)\n", U(kin[i]), begin_bit, end_bit);
        std::abort();
      }
    std::stable_sort(idx.begin(), idx.end(),
                     [&](long long a, long long b) { return (U(kin[a]) & mask) < (U(kin[b]) & mask); });
    std::vector<K> ks((size_t)n);
    std::vector<V> vs((size_t)n);
    for (long long i = 0; i < (long long)n; ++i) { ks[i] = kin[idx[i]]; vs[i] = vin[idx[i]]; }
    std::copy(ks.begin(), ks.end(), kout);
    std::copy(vs.begin(), vs.end(), vout);
    return cudaSuccess;
  }
};
}  // namespace cub

// ---------------------------------------------------------------------------------------------------------
// cuBLAS: handles and the two GEMM entry points tessera calls (cublasGemmEx_64, cublasGemmStridedBatchedEx_64),
// column-major as cuBLAS defines them, computed on the host in double and rounded once to C's type (fp32 or
// bf16). Only the operand types gemm.cu passes are accepted (A, B fp32 or bf16, C fp32 or bf16, alpha/beta
// float); anything else aborts. beta == 0 overwrites C (NaN in C does not survive), as cuBLAS does.
typedef int cublasStatus_t;
enum : int { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
inline const char* cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_EMU"; }
inline const char* cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS"; }
typedef struct EmuCublas* cublasHandle_t;
enum cublasOperation_t { CUBLAS_OP_N, CUBLAS_OP_T };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32 };
enum cudaDataType_t { CUDA_R_32F, CUDA_R_16BF };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT };
inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = reinterpret_cast<cublasHandle_t>(std::malloc(1)); return 0; }
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { std::free(h); return 0; }
namespace emu {
inline double gemm_load(const void* p, cudaDataType_t t, int64_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
  const uint32_t bits = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void gemm_store(void* p, cudaDataType_t t, int64_t i, double v) {
  const float f = static_cast<float>(v);
  if (t == CUDA_R_32F) {
    static_cast<float*>(p)[i] = f;
    return;
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) bits = 0x7fc00000u;           // NaN stays NaN
  else bits += 0x7fffu + ((bits >> 16) & 1u);                            // round to nearest even
  static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(bits >> 16);
}
// One column-major GEMM: C[m x n] = alpha op(A) op(B) + beta C.
inline void gemm_colmajor(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                          const void* A, cudaDataType_t at, int64_t lda, const void* B, cudaDataType_t bt, int64_t ldb,
                          float beta, void* C, cudaDataType_t ct, int64_t ldc) {
  ++n_gemm;
  if (m < 0 || n < 0 || k < 0) fail("cublasGemmEx: negative size");
  if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
    fail("cublasGemmEx: leading dimension too small");
  if (skip_kernels) return;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l) {
        const double a = gemm_load(A, at, ta == CUBLAS_OP_N ? i + l * lda : l + i * lda);
        const double b = gemm_load(B, bt, tb == CUBLAS_OP_N ? l + j * ldb : j + l * ldb);
        acc += a * b;
      }
      double c = double(alpha) * acc;
      if (beta != 0.f) c += double(beta) * gemm_load(C, ct, i + j * ldc);
      gemm_store(C, ct, i + j * ldc, c);
    }
}
}  // namespace emu
inline cublasStatus_t cublasGemmEx_64(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                                      int64_t n, int64_t k, const void* alpha, const void* A, cudaDataType_t at,
                                      int64_t lda, const void* B, cudaDataType_t bt, int64_t ldb, const void* beta,
                                      void* C, cudaDataType_t ct, int64_t ldc, cublasComputeType_t,
                                      cublasGemmAlgo_t) {
  emu::gemm_colmajor(ta, tb, m, n, k, *static_cast<const float*>(alpha), A, at, lda, B, bt, ldb,
                     *static_cast<const float*>(beta), C, ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasGemmStridedBatchedEx_64(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb,
                                                    int64_t m, int64_t n, int64_t k, const void* alpha,
                                                    const void* A, cudaDataType_t at, int64_t lda, int64_t sa,
                                                    const void* B, cudaDataType_t bt, int64_t ldb, int64_t sb,
                                                    const void* beta, void* C, cudaDataType_t ct, int64_t ldc,
                                                    int64_t sc, int64_t batch, cublasComputeType_t,
                                                    cublasGemmAlgo_t) {
  auto off = [](const void* p, cudaDataType_t t, int64_t i) {
    return static_cast<const char*>(p) + i * (t == CUDA_R_32F ? 4 : 2);
  };
  for (int64_t b = 0; b < batch; ++b)
    emu::gemm_colmajor(ta, tb, m, n, k, *static_cast<const float*>(alpha), off(A, at, b * sa), at, lda,
                       off(B, bt, b * sb), bt, ldb, *static_cast<const float*>(beta),
                       const_cast<char*>(off(C, ct, b * sc)), ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------------
// cuBLASLt: the calls gemm.cu makes (handle, matmul descriptor with transposes, matrix layouts, preferences,
// heuristic query, matmul with separate C and D). The heuristic offers two candidates so that the tuning loop
// runs (event times are 0 here, so the first wins). cublasLtMatmul checks that the layouts agree with the
// operation's shapes and computes D = alpha op(A) op(B) + beta C with the reference GEMM above.
typedef struct EmuLt* cublasLtHandle_t;
struct EmuLtDesc {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
typedef EmuLtDesc* cublasLtMatmulDesc_t;
struct EmuLtLayout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
typedef EmuLtLayout* cublasLtMatrixLayout_t;
typedef struct EmuLtPref* cublasLtMatmulPreference_t;
typedef struct {
  uint64_t data[8];
} cublasLtMatmulAlgo_t;
typedef struct {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;
enum cublasLtMatmulDescAttributes_t { CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4 };
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};
enum : uint32_t {
  CUBLASLT_REDUCTION_SCHEME_NONE = 0,
  CUBLASLT_REDUCTION_SCHEME_INPLACE = 1,
  CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2,
  CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE = 4,
};
namespace emu {
constexpr uint64_t kLtAlgoMagic = 0x4c54414c474fULL;
inline int n_lt_matmul = 0;
}  // namespace emu
inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = reinterpret_cast<cublasLtHandle_t>(std::malloc(1));
  return 0;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { std::free(h); return 0; }
inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t, cudaDataType_t) {
  *d = new EmuLtDesc;
  return 0;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return 0; }
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a,
                                                     const void* v, size_t n) {
  if (n != sizeof(cublasOperation_t)) emu::fail("cublasLtMatmulDescSetAttribute: size");
  (a == CUBLASLT_MATMUL_DESC_TRANSA ? d->ta : d->tb) = *static_cast<const cublasOperation_t*>(v);
  return 0;
}
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t t, uint64_t rows,
                                                 uint64_t cols, int64_t ld) {
  if (ld < static_cast<int64_t>(rows)) emu::fail("cublasLtMatrixLayoutCreate: ld smaller than rows");
  *l = new EmuLtLayout{t, rows, cols, ld};
  return 0;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return 0; }
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = reinterpret_cast<cublasLtMatmulPreference_t>(std::malloc(1));
  return 0;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { std::free(p); return 0; }
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t,
                                                           cublasLtMatmulPreferenceAttributes_t, const void*,
                                                           size_t) {
  return 0;
}
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                                     cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                                     cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int requested,
                                                     cublasLtMatmulHeuristicResult_t* res, int* returned) {
  const int n = requested < 2 ? requested : 2;
  for (int i = 0; i < n; ++i) {
    res[i] = {};
    res[i].algo.data[0] = emu::kLtAlgoMagic;
    res[i].algo.data[1] = static_cast<uint64_t>(i);
    res[i].state = CUBLAS_STATUS_SUCCESS;
  }
  *returned = n;
  return 0;
}
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                                     cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b,
                                     const void* beta, const void* C, cublasLtMatrixLayout_t c, void* D,
                                     cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t* algo, void* workspace,
                                     size_t workspace_bytes, cudaStream_t) {
  ++emu::n_lt_matmul;
  if (!algo || algo->data[0] != emu::kLtAlgoMagic) emu::fail("cublasLtMatmul: algorithm not from the heuristic");
  if (workspace_bytes && !workspace) emu::fail("cublasLtMatmul: null workspace");
  const int64_t m = static_cast<int64_t>(d->rows), n = static_cast<int64_t>(d->cols);
  const int64_t am = op->ta == CUBLAS_OP_N ? a->rows : a->cols, ak = op->ta == CUBLAS_OP_N ? a->cols : a->rows;
  const int64_t bk = op->tb == CUBLAS_OP_N ? b->rows : b->cols, bn = op->tb == CUBLAS_OP_N ? b->cols : b->rows;
  if (am != m || bn != n || ak != bk || c->rows != d->rows || c->cols != d->cols || c->type != d->type)
    emu::fail("cublasLtMatmul: layouts do not match the operation's shapes");
  if (C == D && c->ld != d->ld) emu::fail("cublasLtMatmul: C == D with different leading dimensions");
  const float bt = *static_cast<const float*>(beta);
  if (C != D && bt != 0.f) {  // D = C first, then the in-place GEMM
    const size_t e = d->type == CUDA_R_32F ? 4 : 2;
    for (int64_t j = 0; j < n; ++j)
      std::memmove(static_cast<char*>(D) + j * d->ld * e, static_cast<const char*>(C) + j * c->ld * e,
                   static_cast<size_t>(m) * e);
  }
  emu::gemm_colmajor(op->ta, op->tb, m, n, ak, *static_cast<const float*>(alpha), A, a->type, a->ld, B, b->type,
                     b->ld, bt, D, d->type, d->ld);
  return CUBLAS_STATUS_SUCCESS;
}
