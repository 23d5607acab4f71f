// All op families (tessera::ops): forward/backward pairs over raw row-major buffers, CPU and CUDA.
#pragma once

#include "tessera/ops/activation.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/embedding.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/rope.hpp"
#include "tessera/ops/segment.hpp"
#include "tessera/ops/softmax.hpp"
#include "tessera/ops/timestep_norm.hpp"
