// Core module: dtypes, shapes, tensors, backends, RNG, errors, parameter reflection.
#pragma once
#include "tessera/core/allocator.hpp"
#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/param.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/shape.hpp"
#include "tessera/core/tensor.hpp"
