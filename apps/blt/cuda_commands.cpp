// The CUDA instantiations of the backend-generic commands (train_impl.hpp, eval_impl.hpp). Compiled only when
// tessera::cuda is built (apps/blt/CMakeLists.txt), in its own translation unit so that it builds in parallel
// with the CPU ones; train.cpp and inference.cpp see them through the headers' extern template declarations.
#include "eval_impl.hpp"
#include "train_impl.hpp"

namespace bltapp {

template int train_entropy<tessera::cuda>(const TrainArgs&, const Target&);
template int train_blt<tessera::cuda>(const TrainArgs&, const Target&);
template EvalResult evaluate<tessera::cuda>(const EvalArgs&, const Target&);
template tessera::blt::GenerateResult generate<tessera::cuda>(const GenerateArgs&,
                                                              const std::vector<int64_t>&);

}  // namespace bltapp
