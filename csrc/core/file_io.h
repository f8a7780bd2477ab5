// file_io.h — move bytes between a file and a tensor's memory without an intermediate copy.
//
// Why: checkpoint loaders (safetensors) stream each tensor's byte range straight into native
// tensor storage, so a load never holds the weights twice (once in a JS Buffer, once natively).
// Every call validates the range against the file size and the tensor's byte count first.
// No N-API here: csrc/addon/bind_io.cpp exposes these as readFileInto / writeFileFrom.
#pragma once
#include <cstdint>
#include <string>
#include "tensor.h"

namespace pk {

// Size of a file in bytes (throws pk::Error naming the path when it cannot be stat'ed).
uint64_t file_size(const std::string& path);

// Read bytes [offset, offset + dst.nbytes()) of `path` into `dst` (contiguous, CPU). Throws when
// the range runs past the end of the file ("truncated") or the read fails.
void read_file_into(const std::string& path, uint64_t offset, const Tensor& dst);

// Write `src`'s bytes (contiguous CPU, else a contiguous copy is made) to `path` at `offset`.
// The file must exist (created by the caller); it is not truncated.
void write_file_from(const std::string& path, uint64_t offset, const Tensor& src);

}  // namespace pk
