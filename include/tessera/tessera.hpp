// Umbrella header: everything of tessera's host-side library.
#pragma once
#include "tessera/core/core.hpp"
