// Forwarder: the bf16 type of the CUDA emulation (wmma_emu.hpp).
#pragma once
#include "wmma_emu.hpp"
