// `blt train-entropy` and `blt train`: pick the backend (--device, --precision) and run the training of
// train_impl.hpp on it (instantiated in cpu_commands.cpp and cuda_commands.cpp).
#include "commands.hpp"
#include "device.hpp"
#include "train_impl.hpp"

namespace bltapp {

int cmd_train_entropy(const TrainArgs& a) {
  const Target t = select_target(a.device, a.precision);
#if TESSERA_BLT_CUDA
  if (t.device == Device::cuda) return train_entropy<tessera::cuda>(a, t);
#endif
  return train_entropy<tessera::cpu>(a, t);
}

int cmd_train(const TrainArgs& a) {
  const Target t = select_target(a.device, a.precision);
#if TESSERA_BLT_CUDA
  if (t.device == Device::cuda) return train_blt<tessera::cuda>(a, t);
#endif
  return train_blt<tessera::cpu>(a, t);
}

}  // namespace bltapp
