// BLT umbrella: tokenizer, hash n-gram embeddings, entropy model, configuration, model and checkpoints.
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include "tessera/models/blt/checkpoint.hpp"
#include "tessera/models/blt/config.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/global_transformer.hpp"
#include "tessera/models/blt/hash_embedding.hpp"
#include "tessera/models/blt/local_decoder.hpp"
#include "tessera/models/blt/local_encoder.hpp"
#include "tessera/models/blt/model.hpp"
#include "tessera/models/blt/tokenizer.hpp"
