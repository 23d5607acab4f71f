// Megalodon (megalodon spec): config, gated attention with CEMA and TimestepNorm, blocks, model, checkpoints.
#pragma once
#include "tessera/models/megalodon/block.hpp"
#include "tessera/models/megalodon/checkpoint.hpp"
#include "tessera/models/megalodon/config.hpp"
#include "tessera/models/megalodon/gated_attention.hpp"
#include "tessera/models/megalodon/model.hpp"
