// Internal to tessera::cuda, plain C++ (no CUDA types): cuDNN's fused attention (its FlashAttention-style
// SDPA graphs, cuDNN 9) as a second implementation of the bf16 ops::attention_forward / attention_backward,
// for the calls whose mask and layout it covers. The two are interchangeable (same o, lse, dq, dk, dv
// contract: lse in natural-log units of the scaled scores; either backward reads either forward's o and lse),
// and the project keeps whichever is faster for its shapes: `bench_cuda --only=attn` and
// `model_cuda_step` time both in one run (cuDNN for calls of kCudnnMinKeys keys or more, see
// AttnBf16Backend). cuDNN is loaded at run time (dlopen of libcudnn.so.9, or the file TESSERA_CUDNN_LIBRARY
// names), so a machine without it builds and runs everything else; every reason it cannot serve a call (not
// installed, a mask it has no graph for, a layout, a graph its engines reject) is recorded and the call runs
// tessera's kernels.
//
// What cuDNN runs here (cuda/cudnn_attention.cpp builds the operation graphs with the backend API):
//   forward:  causal or a causal sliding window (top-left: q_offset 0, Tq == Tk), GQA allowed; o and lse
//             (cuDNN's "stats").
//   backward: the same masks, GQA too; dq written directly (no fp32 dq accumulator: cuDNN's deterministic
//   path;
//             TESSERA_CUDNN_ATTN_DETERMINISTIC=0 builds the accumulator graph instead).
//   Dh == Dv, a multiple of 8 up to 128; token strides multiples of 8; 16-byte aligned pointers.
#pragma once
#include <cstdint>
#include <string>

#include "launch_megalodon.hpp"  // AttnArgs

namespace tessera::cuda_detail {

/// Which implementation runs the bf16 attention ops: tessera's kernels (attention_bf16.cu) or cuDNN's.
/// ByLength (the default): cuDNN for the calls it covers with at least kCudnnMinKeys keys, tessera's kernels
/// for the rest. On an H200 (benchmarks/RESULTS.md, runs 9 and 10) cuDNN's graphs run causal T 4096 in
/// 0.475 / 1.60 ms (forward / backward, Dh 128) against 1.07 / 3.94 ms for tessera's kernels, while each new
/// shape costs cuDNN a plan (its kernels are compiled then: ~0.1-1 s); short calls (decoding, small models,
/// tests) keep tessera's kernels, which need no plan.
enum class AttnBf16Backend { Auto, Tessera, Cudnn, ByLength };
inline constexpr int64_t kCudnnMinKeys = 1024;

/// The backend named by a value of TESSERA_ATTN_BF16_BACKEND: "tessera", "cudnn" (every call it covers),
/// "auto", null or empty: ByLength. Anything else throws tessera::Error naming the variable.
AttnBf16Backend parse_attention_bf16_backend(const char* value);

/// Process-wide choice for the following calls; Auto (the initial state) means TESSERA_ATTN_BF16_BACKEND,
/// read once, else ByLength. A Cudnn choice still runs tessera's kernels for calls cuDNN does not cover.
void set_attention_bf16_backend(AttnBf16Backend b);
AttnBf16Backend attention_bf16_backend();

/// Whether the backend chosen now sends this call to cuDNN first (cuDNN may still refuse it: the call then
/// runs tessera's kernels).
bool cudnn_attention_chosen(const AttnArgs& a);

/// What the last bf16 attention forward or backward call on this thread ran (Tessera or Cudnn; Auto before
/// any), for tests.
AttnBf16Backend last_attention_bf16_backend();
void note_attention_bf16_backend(AttnBf16Backend b);

/// bf16 attention calls (forward and backward, all threads) run so far by `b` (Tessera or Cudnn).
int64_t attention_bf16_calls(AttnBf16Backend b);

/// Whether cuDNN's backward is built deterministic (the default: dq written directly, bitwise reproducible)
/// or with cuDNN's fp32 dq accumulator (atomic adds: the last bits vary between runs). The accumulator graph
/// is what cuDNN's frontend builds by default; TESSERA_CUDNN_ATTN_DETERMINISTIC=0 or the setter (1 / 0; -1:
/// back to the environment's) chooses it, for the benchmark's A/B.
void set_cudnn_attention_deterministic(int deterministic);
bool cudnn_attention_deterministic();

/// "" when cuDNN's library is loaded and a handle can be made on the current device, else why not.
std::string cudnn_unavailable_reason();

/// The version of the loaded cuDNN (e.g. 91900), 0 when none is loaded.
int64_t cudnn_loaded_version();

/// Build this call's operation graph up to its operations, without a device or handle: "" when cuDNN accepts
/// every tensor and operation descriptor (shapes, types, attributes), else cuDNN's complaint (or why the
/// library is not loaded). The engine choice and the plan need a GPU.
std::string cudnn_attention_graph_check(const AttnArgs& a, bool backward);

/// Build this call's graph, engine choice and execution plan for the GPU that `device_json` describes (what
/// cudnn_device_properties_json returns there), without a GPU or handle (cuDNN 9.8 and later): "" when
/// cuDNN's heuristics find an engine that takes the graph and its plan finalizes (its workspace in
/// `workspace`), else cuDNN's complaints. The plan is not run.
std::string cudnn_attention_plan_check(const AttnArgs& a, bool backward, const std::string& device_json,
                                       int64_t* workspace = nullptr);

/// cuDNN's description of the current GPU (CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, cuDNN 9.8 and later),
/// "" where there is none: what cuDNN's device-less graph building for that GPU starts from.
std::string cudnn_device_properties_json();

/// The largest sliding window the graphs take: the window's edge is compared in fp32, exact to 2^24.
inline constexpr int64_t kMaxExactWindow = int64_t{1} << 24;

/// The call as cuDNN's graphs take it: a sliding window at least as wide as the keys (W >= Tk: with
/// q_offset 0 and Tq == Tk no query is more than Tk - 1 positions from a key) is the plain causal mask.
/// Models ask for "no window" as a window of INT64_MAX / 4 keys (layers/masks.hpp), beyond the graph's fp32
/// window.
AttnArgs as_cudnn_call(AttnArgs a);

/// "" when cuDNN's graphs cover this call (mask, dims, strides, alignment), else why not. `backward`: the
/// backward's coverage (at present the forward's). Pointers: every tensor the call reads or writes.
std::string cudnn_attention_unsupported(const AttnArgs& a, bool backward, const void* const* ptrs,
                                        int n_ptrs);

/// Run the call on cuDNN: true when it ran; false when it did not (nothing written), with the reason in
/// last_cudnn_attention_error(). Arguments as attention_forward_bf16 / attention_backward_bf16 (validated).
bool cudnn_attention_forward(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             uint16_t* o, float* lse);
bool cudnn_attention_backward(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                              uint16_t* dk, uint16_t* dv);

/// Why the last cudnn_attention_* call on this thread returned false ("" after one that ran).
std::string last_cudnn_attention_error();

}  // namespace tessera::cuda_detail
