// The CPU instantiations of the backend-generic commands (train_impl.hpp, eval_impl.hpp), compiled once into
// blt_commands (apps/blt/CMakeLists.txt) for the blt tool and test_cuda_blt_app; every other translation unit
// sees them through the headers' extern template declarations.
#include "eval_impl.hpp"
#include "train_impl.hpp"

namespace bltapp {

template int train_entropy<tessera::cpu>(const TrainArgs&, const Target&);
template int train_blt<tessera::cpu>(const TrainArgs&, const Target&);
template EvalResult evaluate<tessera::cpu>(const EvalArgs&, const Target&);
template tessera::blt::GenerateResult generate<tessera::cpu>(const GenerateArgs&,
                                                             const std::vector<int64_t>&);

}  // namespace bltapp
