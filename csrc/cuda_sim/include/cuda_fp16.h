// cuda_fp16.h — the CUDA simulator's stand-in (pk_sim_half.h).
#pragma once
#include "pk_sim_half.h"
