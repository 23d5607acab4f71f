// Next-token choice for `megalodon generate`: the library's shared sampler (tessera/models/sampling.hpp).
#pragma once
#include "tessera/models/sampling.hpp"

namespace mglapp {
using tessera::models::Sampler;
using tessera::models::SamplingOptions;
}  // namespace mglapp
