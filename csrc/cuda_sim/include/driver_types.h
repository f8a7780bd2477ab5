// driver_types.h — the CUDA simulator's stand-in: the runtime types live in cuda_runtime.h.
#pragma once
#include "cuda_runtime.h"
