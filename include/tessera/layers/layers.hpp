// Layers module umbrella.
#pragma once
#include "tessera/layers/attention.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/layers/cross_attention.hpp"
#include "tessera/layers/embedding.hpp"
#include "tessera/layers/feed_forward.hpp"
#include "tessera/layers/init.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/masks.hpp"
#include "tessera/layers/named.hpp"
#include "tessera/layers/norm.hpp"
#include "tessera/layers/residual.hpp"
#include "tessera/layers/sequence.hpp"
