// cublasLt.h — the CUDA simulator's cuBLASLt: the compile-check stand-in's declarations (the real
// enumerator values and payload types), defined by csrc/cuda_sim/cublaslt.cpp as a reference GEMM
// that also checks every attribute's payload size as cuBLASLt does.
#pragma once
#define PEFTKIT_CUBLASLT_STANDIN 1
#include "../../cuda/compile_check/cublasLt.h"
