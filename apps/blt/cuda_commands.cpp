// The CUDA instantiations of the backend-generic commands (train_impl.hpp, eval_impl.hpp), compiled into
// blt_commands only when tessera::cuda is built (apps/blt/CMakeLists.txt), in their own translation unit so
// that they build in parallel with the CPU ones (cpu_commands.cpp); every other translation unit sees them
// through the headers' extern template declarations.
#include "eval_impl.hpp"
#include "train_impl.hpp"

namespace bltapp {

template int train_entropy<tessera::cuda>(const TrainArgs&, const Target&);
template int train_blt<tessera::cuda>(const TrainArgs&, const Target&);
template EvalResult evaluate<tessera::cuda>(const EvalArgs&, const Target&);
template tessera::blt::GenerateResult generate<tessera::cuda>(const GenerateArgs&,
                                                              const std::vector<int64_t>&);

}  // namespace bltapp
