// Umbrella header: everything of tessera's host-side library. Prefer the module headers
// (tessera/core/core.hpp, tessera/ops/ops.hpp, tessera/layers/layers.hpp, tessera/io/io.hpp,
// tessera/train/train.hpp, tessera/models/...) in code that cares about compile time.
#pragma once
#include "tessera/core/core.hpp"
#include "tessera/io/io.hpp"
#include "tessera/layers/layers.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/ops/ops.hpp"
#include "tessera/train/train.hpp"
