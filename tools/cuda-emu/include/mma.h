// Forwarder: the WMMA emulation (wmma_emu.hpp).
#pragma once
#include "wmma_emu.hpp"
