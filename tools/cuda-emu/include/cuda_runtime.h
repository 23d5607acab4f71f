// Forwarding header for the CPU emulation: every CUDA/CUB/cuBLAS name lives in cuda_emu.hpp.
#pragma once
#include "cuda_emu.hpp"
