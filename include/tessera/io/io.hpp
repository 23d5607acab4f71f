// I/O module: safetensors reading/writing, model checkpoints by parameter name, atomic files, JSON configs,
// JSONL metrics.
#pragma once
#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/jsonl.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
