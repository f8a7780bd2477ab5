// cuComplex.h — the CUDA simulator's stand-in (the cuBLASLt stand-in includes it; nothing used).
#pragma once
